//! The appliance's persistent state: the index of received instances,
//! study assembly, the job queue and the result outbox.
//!
//! Everything goes through the [`Catalog`] trait so that a shared database
//! can replace the embedded SQLite one ([`sqlite::SqliteCatalog`]) when a
//! site outgrows one machine. Files live under the data directory
//! ([`layout`]); the catalog records where.

pub mod layout;
pub mod sqlite;

use std::path::PathBuf;

use serde::Serialize;

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (I/O, corruption, locked).
    #[error("catalog database {path}: {reason}")]
    Database {
        /// Database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Result with [`StoreError`].
pub type StoreResult<T> = Result<T, StoreError>;

/// A received, durably stored instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRecord {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality.
    pub modality: Option<String>,
    /// Body Part Examined.
    pub body_part: Option<String>,
    /// Series Description.
    pub series_description: Option<String>,
    /// Transfer syntax as stored.
    pub transfer_syntax: String,
    /// Who sent it.
    pub calling_ae_title: String,
    /// Where it is.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the file as received.
    pub sha256: String,
}

/// One series of a study as routing sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSummary {
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality.
    pub modality: Option<String>,
    /// Body Part Examined.
    pub body_part: Option<String>,
    /// Series Description.
    pub series_description: Option<String>,
    /// Distinct SOP classes.
    pub sop_classes: Vec<String>,
    /// Distinct calling AE titles.
    pub calling_ae_titles: Vec<String>,
    /// Instances.
    pub instances: usize,
}

/// A study (or its late part) that has been quiet for the stable age.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StableStudy {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Which reception round: 0 for the first, then one more for each batch
    /// of late instances.
    pub generation: i64,
    /// Its series with instances of this generation.
    pub series: Vec<SeriesSummary>,
}

/// A job to create.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewJob {
    /// Rule that matched.
    pub rule: String,
    /// Model package id.
    pub model: String,
    /// Series it runs on.
    pub series: Vec<String>,
    /// Destination names for the results.
    pub destinations: Vec<String>,
}

/// State of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (or for its retry time).
    Pending,
    /// A worker has it.
    Running,
    /// Finished; results written and queued for delivery.
    Done,
    /// Gave up; see `last_error`.
    Failed,
}

impl JobState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// A persisted job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// Id.
    pub id: i64,
    /// Study.
    pub study_instance_uid: String,
    /// Reception round of the study it covers.
    pub generation: i64,
    /// Rule that created it.
    pub rule: String,
    /// Model package id.
    pub model: String,
    /// Series it runs on.
    pub series: Vec<String>,
    /// Destination names.
    pub destinations: Vec<String>,
    /// State.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Why the last attempt failed, or notes on instances not analysed.
    pub last_error: Option<String>,
    /// Result files written.
    pub results: Vec<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// A result file written by a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultFile {
    /// Where.
    pub path: PathBuf,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
}

/// A result to send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxItem {
    /// Id.
    pub id: i64,
    /// Job that produced it.
    pub job_id: i64,
    /// Destination name.
    pub destination: String,
    /// File.
    pub path: PathBuf,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Sends tried.
    pub attempts: u32,
    /// When it was queued (ms since the epoch).
    pub created_ms: i64,
}

/// A study as the status API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyStatus {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// `receiving` or `complete`.
    pub state: String,
    /// Instances stored.
    pub instances: u64,
    /// Reception rounds completed.
    pub generation: i64,
    /// Routing outcome of the last completion (e.g. no rule matched).
    pub note: Option<String>,
    /// Last instance received (RFC 3339).
    pub last_received_at: String,
}

/// Outbox counts by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStatus {
    /// Waiting to be sent (including retries).
    pub pending: u64,
    /// Delivered.
    pub sent: u64,
    /// Given up.
    pub failed: u64,
}

/// The persistent state behind the pipeline.
pub trait Catalog: Send + Sync + 'static {
    /// Record a stored instance (replacing a previous copy), and mark its
    /// study as receiving. Durable when it returns.
    fn record_instance(&self, instance: &InstanceRecord, now_ms: i64) -> StoreResult<()>;

    /// Studies receiving and quiet since `cutoff_ms`, with their series of
    /// the current generation.
    fn stable_studies(&self, cutoff_ms: i64) -> StoreResult<Vec<StableStudy>>;

    /// Atomically: create `jobs` for `study` (generation `generation`),
    /// mark it complete with `note`, open the next generation. Does nothing
    /// and returns false if an instance arrived after `cutoff_ms`.
    fn complete_study(
        &self,
        study: &StableStudy,
        cutoff_ms: i64,
        jobs: &[NewJob],
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool>;

    /// Instances of `study`'s generation in `series`.
    fn job_instances(&self, job: &Job) -> StoreResult<Vec<InstanceRecord>>;

    /// Put jobs left running by a previous run back to pending.
    fn reset_running_jobs(&self) -> StoreResult<usize>;

    /// Take the oldest pending job due at `now_ms`, marking it running.
    fn claim_job(&self, now_ms: i64) -> StoreResult<Option<Job>>;

    /// Finish a job: record its results and notes, queue each result for
    /// each destination, atomically.
    fn finish_job(
        &self,
        job: &Job,
        results: &[ResultFile],
        notes: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<()>;

    /// A failed attempt: back to pending until `not_before_ms`, or failed
    /// for good when `retry_at_ms` is `None`.
    fn job_attempt_failed(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<()>;

    /// Outbox items due at `now_ms`, oldest first.
    fn due_outbox(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxItem>>;

    /// An item was delivered.
    fn outbox_sent(&self, id: i64, now_ms: i64) -> StoreResult<()>;

    /// A send failed: retry at `retry_at_ms`, or give up when `None`.
    fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<()>;

    /// Latest jobs, newest first.
    fn jobs(&self, limit: usize) -> StoreResult<Vec<Job>>;

    /// Latest studies, most recently received first.
    fn studies(&self, limit: usize) -> StoreResult<Vec<StudyStatus>>;

    /// Outbox counts.
    fn outbox_status(&self) -> StoreResult<OutboxStatus>;

    /// Number of jobs in each state.
    fn job_counts(&self) -> StoreResult<std::collections::BTreeMap<String, u64>>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 text of a time in ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
