//! The appliance's persistent state: the index of received instances,
//! study assembly, the job queue and the result outbox.
//!
//! Reviews of results (a radiologist's verdict) are kept in [`review`].
//!
//! Everything goes through the [`Catalog`] trait so that a shared database
//! can replace the embedded SQLite one ([`sqlite::SqliteCatalog`]) when a
//! site outgrows one machine. Files live under the data directory
//! ([`layout`]); the catalog records where. Searches of the web index at a
//! study, series or instance level (QIDO-RS today, C-FIND tomorrow) are
//! parsed, grouped and matched in [`query`].

#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod layout;
pub mod query;
pub mod review;
pub mod sqlite;

pub use review::{NewReview, RecordedReview, Review, ReviewFilter, ReviewVia, Reviews, Verdict};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Errors of the catalog. Each names the operation that failed and keeps
/// the database's error as its source; [`StoreError::failure`] says what
/// kind of failure it is, so that HTTP and DICOM can answer with the right
/// status (busy: try again; full: out of resources; otherwise internal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The catalog cannot be opened, its schema is newer than this
    /// release knows, or migrating it failed.
    #[error(transparent)]
    Open(#[from] vigie_durable::Error),
    /// A received instance could not be indexed.
    #[error("catalog {path}: index instance {sop_instance_uid}")]
    Index {
        /// Database file.
        path: PathBuf,
        /// The instance.
        sop_instance_uid: String,
        /// Why.
        #[source]
        source: IndexError,
    },
    /// Another operation failed.
    #[error("catalog {path}: {operation}")]
    Database {
        /// Database file.
        path: PathBuf,
        /// What was being done (`claim job`, `due outbox`, …).
        operation: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
}

/// Why an instance was not indexed: its own entry failed, or the shared
/// transaction it was part of did.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// Its entry was refused (rolled back alone).
    #[error("entry refused")]
    Entry(#[source] rusqlite::Error),
    /// The shared transaction failed.
    #[error(transparent)]
    Commit(#[from] vigie_durable::CommitError<rusqlite::Error>),
}

/// What kind of failure a [`StoreError`] is (exhaustive on purpose: a
/// new kind must be mapped by every caller that answers a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Locked by another process or connection, or busy: worth retrying.
    Busy,
    /// The disk or database is full.
    Full,
    /// The stored schema is newer than this release.
    NewerSchema,
    /// Anything else (I/O, corruption, a defect).
    Internal,
}

impl StoreError {
    /// What kind of failure this is.
    pub fn failure(&self) -> Failure {
        fn of(e: &rusqlite::Error) -> Failure {
            match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    Failure::Busy
                }
                Some(rusqlite::ErrorCode::DiskFull) => Failure::Full,
                _ => Failure::Internal,
            }
        }
        match self {
            Self::Open(vigie_durable::Error::Newer { .. }) => Failure::NewerSchema,
            Self::Open(
                vigie_durable::Error::Open { source, .. }
                | vigie_durable::Error::Migrate { source, .. },
            ) => of(source),
            Self::Open(_) => Failure::Internal,
            Self::Index {
                source: IndexError::Entry(e),
                ..
            }
            | Self::Database { source: e, .. } => of(e),
            Self::Index {
                source: IndexError::Commit(vigie_durable::CommitError::Write(e)),
                ..
            } => of(e),
            Self::Index { .. } => Failure::Internal,
        }
    }
}

/// Result with [`StoreError`].
pub type StoreResult<T> = Result<T, StoreError>;

/// The copy held of a received instance ([`InstanceIndex::held_instance`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldInstance {
    /// Its study.
    pub study_instance_uid: String,
    /// Its series.
    pub series_instance_uid: String,
    /// Where it is stored.
    pub path: PathBuf,
    /// SHA-256 of the file as received.
    pub sha256: String,
    /// Calling AE title (or token name) it came from.
    pub calling_ae_title: String,
}

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
    /// The attributes indexed for DICOMweb searches, by tag
    /// ([`vigie_dicom_io::web::index_attributes`]).
    pub attributes: BTreeMap<String, String>,
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

/// What [`Catalog::reset_running_jobs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetJobs {
    /// Jobs pending again.
    pub requeued: Vec<i64>,
    /// Jobs quarantined (failed) after too many interruptions.
    pub quarantined: Vec<i64>,
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
    /// Attempts that failed so far (counted against
    /// `pipeline.max_attempts`).
    pub attempts: u32,
    /// Attempts interrupted by the service stopping during them (counted
    /// against `pipeline.max_interrupted`).
    pub interrupted: u32,
    /// Why the last attempt failed, or notes on instances not analysed.
    pub last_error: Option<String>,
    /// Result files written.
    pub results: Vec<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// Where an instance served over DICOMweb comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Received by C-STORE or STOW-RS.
    Received,
    /// Created by Vigie (SR, SEG, SC of a job).
    Result,
}

impl Origin {
    /// Its name in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Result => "result",
        }
    }
}

/// An instance the DICOMweb side can find and serve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebInstance {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Received or created.
    pub origin: Origin,
    /// Transfer syntax of the stored file.
    pub transfer_syntax: String,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Indexed attributes by tag ([`vigie_dicom_io::web::index_attributes`]).
    pub attributes: BTreeMap<String, String>,
}

impl WebInstance {
    /// Read the index entry of a stored file.
    pub fn read(path: &std::path::Path, origin: Origin) -> vigie_dicom_io::Result<Self> {
        let file = vigie_dicom_io::DicomFile::open_header(path)?;
        let h = file.header();
        Ok(Self {
            sop_instance_uid: h.sop_instance_uid.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
            study_instance_uid: h.study_instance_uid.clone(),
            series_instance_uid: h.series_instance_uid.clone(),
            origin,
            transfer_syntax: h.transfer_syntax.clone(),
            path: path.to_path_buf(),
            size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            attributes: vigie_dicom_io::web::index_attributes(&file),
        })
    }
}

/// Which instances a DICOMweb request concerns: every field that is set
/// must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebScope {
    /// Study Instance UID.
    pub study: Option<String>,
    /// Series Instance UID.
    pub series: Option<String>,
    /// SOP Instance UID.
    pub instance: Option<String>,
}

/// A result file written by a job, with its index entry.
pub type ResultFile = WebInstance;

/// Which jobs to list.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFilter {
    /// In this state.
    pub state: Option<JobState>,
    /// Only jobs with at least one result whose delivery failed for good
    /// (refused permanently, or given up).
    pub undelivered: bool,
    /// Of this model package.
    pub model: Option<String>,
    /// On this study.
    pub study: Option<String>,
    /// Created at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Created before (ms since the epoch).
    pub until_ms: Option<i64>,
    /// At most this many, newest first.
    pub limit: usize,
    /// After skipping this many.
    pub offset: usize,
}

impl Default for JobFilter {
    fn default() -> Self {
        Self {
            state: None,
            undelivered: false,
            model: None,
            study: None,
            since_ms: None,
            until_ms: None,
            limit: 100,
            offset: 0,
        }
    }
}

/// One result sent (or to send) to one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// Destination name.
    pub destination: String,
    /// Result instance.
    pub sop_instance_uid: String,
    /// `pending` (to send), `stored` (taken by C-STORE, commitment to
    /// request), `committing` (commitment requested, report awaited),
    /// `sent` (delivered: committed, where the destination asks for
    /// commitment) or `failed`.
    pub state: String,
    /// Sends and commitment requests tried.
    pub attempts: u32,
    /// Why the last send or commitment failed.
    pub last_error: Option<String>,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Transaction UID of the last storage commitment request, if any.
    pub commitment_uid: Option<String>,
    /// When the destination committed it (RFC 3339), if it did.
    pub committed_at: Option<String>,
}

/// What a retry request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum RetryOutcome {
    /// The failed job is pending again, attempts reset.
    JobRequeued,
    /// The job was done; this many failed deliveries are pending again.
    DeliveriesRequeued {
        /// How many.
        deliveries: usize,
    },
    /// Nothing failed: nothing to retry.
    NothingFailed,
    /// No such job.
    NotFound,
}

/// A result to send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxItem {
    /// Id.
    pub id: i64,
    /// Job that produced it.
    pub job_id: i64,
    /// Study of that job.
    pub study_instance_uid: String,
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
    /// Stored by the destination, its storage commitment not yet reported
    /// (`stored` and `committing`).
    pub awaiting_commitment: u64,
    /// Delivered.
    pub sent: u64,
    /// Given up.
    pub failed: u64,
}

/// The index of received instances: the one write on the
/// acknowledgement path (ingest needs nothing else), and what start-up
/// checks against the files.
pub trait InstanceIndex: Send + Sync + 'static {
    /// Record a stored instance (replacing a previous copy), and mark its
    /// study as receiving. Durable when it returns.
    fn record_instance(&self, instance: &InstanceRecord, now_ms: i64) -> StoreResult<()>;

    /// The copy held of the received instance `sop_instance_uid`, if any:
    /// what ingest compares a new arrival with the same UID against (the
    /// duplicate policy, `storage.duplicates`).
    fn held_instance(&self, sop_instance_uid: &str) -> StoreResult<Option<HeldInstance>>;

    /// Every file the catalog refers to: received instances, result
    /// objects (DICOMweb index, outbox, jobs' results). A file under
    /// `studies/` or `results/` that is not here was never acknowledged or
    /// never finished (a crash between writing and committing).
    fn known_paths(&self) -> StoreResult<std::collections::HashSet<PathBuf>>;

    /// Studies still receiving whose last instance is later than
    /// `now_ms` (the clock was set back) get `now_ms` as their last
    /// reception; returns how many.
    fn clamp_future_receptions(&self, now_ms: i64) -> StoreResult<usize>;

    /// Instances of `study`'s generation in `series`.
    fn job_instances(&self, job: &Job) -> StoreResult<Vec<InstanceRecord>>;

    /// Every received instance (the copy kept of each), by study, series
    /// and reception: what a retrospective evaluation reads
    /// (`vigie validate import-dicom --from-store`).
    fn received_instances(&self) -> StoreResult<Vec<InstanceRecord>>;
}

/// Study assembly: studies quiet for the stable age, completed
/// atomically with their jobs.
pub trait StudyAssembly: Send + Sync + 'static {
    /// Studies receiving and quiet since `cutoff_ms`, with their series of
    /// the current generation.
    fn stable_studies(&self, cutoff_ms: i64) -> StoreResult<Vec<StableStudy>>;

    /// One study, when it is receiving and quiet since `cutoff_ms`, with
    /// its series of the current generation (a study closed before the
    /// stable age, `pipeline.release_grace_s`).
    fn stable_study(
        &self,
        study_instance_uid: &str,
        cutoff_ms: i64,
    ) -> StoreResult<Option<StableStudy>>;

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

    /// Latest studies, most recently received first.
    fn studies(&self, limit: usize) -> StoreResult<Vec<StudyStatus>>;
}

/// The job queue: claim, finish, fail and retry jobs; recover those
/// found running at start; search them.
pub trait JobQueue: Send + Sync + 'static {
    /// At start-up: jobs left running by a previous run that stopped
    /// without finishing them (a crash, a kill) count one more interrupted
    /// attempt and are pending again, or quarantined (failed) once they
    /// reach `max_interrupted`.
    fn reset_running_jobs(&self, max_interrupted: u32, now_ms: i64) -> StoreResult<ResetJobs>;

    /// At a graceful stop: jobs still running go back to pending without
    /// counting an interruption.
    fn release_running_jobs(&self, now_ms: i64) -> StoreResult<usize>;

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

    /// Latest jobs, newest first.
    fn jobs(&self, limit: usize) -> StoreResult<Vec<Job>> {
        self.find_jobs(&JobFilter {
            limit,
            ..JobFilter::default()
        })
    }

    /// Jobs matching `filter`, newest first.
    fn find_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;

    /// One job.
    fn job(&self, id: i64) -> StoreResult<Option<Job>>;

    /// Retry a failed job (pending again, attempts reset), or the failed
    /// deliveries of a done one.
    fn retry_job(&self, id: i64, now_ms: i64) -> StoreResult<RetryOutcome>;

    /// Queue a new analysis of every instance of `study` stored so far
    /// (all reception rounds; `job.series` empty for all series). `None`
    /// when the study is not in the store.
    fn submit_job(&self, study: &str, job: &NewJob, now_ms: i64) -> StoreResult<Option<i64>>;

    /// Number of jobs in each state.
    fn job_counts(&self) -> StoreResult<std::collections::BTreeMap<String, u64>>;
}

/// The result outbox: deliveries per destination, retried until sent.
pub trait Outbox: Send + Sync + 'static {
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

    /// An item was stored by a destination that commits: delivered once
    /// committed; its commitment is due now.
    fn outbox_stored(&self, id: i64, now_ms: i64) -> StoreResult<()>;

    /// Items whose commitment is to be requested at `now_ms`: stored, or
    /// requested without a report before their deadline.
    fn commitment_due(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxItem>>;

    /// A commitment is being requested for `ids` under `transaction_uid`;
    /// without a report by `deadline_ms` it is due again. Recorded before
    /// the request goes out (its report may come first). Only items still
    /// awaiting commitment are named: returns their ids.
    fn commitment_requested(
        &self,
        ids: &[i64],
        transaction_uid: &str,
        deadline_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Vec<i64>>;

    /// A commitment request failed: ask again at `retry_at_ms`, or give up
    /// when `None`. Whether the item was still awaiting its commitment.
    fn commitment_failed(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<bool>;

    /// The destination reported an item not committed: send it again at
    /// `retry_at_ms`, or give up when `None`. Whether the item was still
    /// awaiting its commitment.
    fn commitment_refused(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<bool>;

    /// The items still awaiting a commitment that `transaction_uid` named
    /// (the latest request or an earlier one).
    fn in_commitment(&self, transaction_uid: &str) -> StoreResult<Vec<OutboxItem>>;

    /// The destination committed an item in `transaction_uid`: delivered.
    /// Whether it was still awaiting its commitment.
    fn outbox_committed(&self, id: i64, transaction_uid: &str, now_ms: i64) -> StoreResult<bool>;

    /// The deliveries of a job's results.
    fn deliveries(&self, job_id: i64) -> StoreResult<Vec<Delivery>>;

    /// Outbox counts.
    fn outbox_status(&self) -> StoreResult<OutboxStatus>;
}

/// The DICOMweb index of received instances and result objects.
pub trait WebIndex: Send + Sync + 'static {
    /// Instances served over DICOMweb within `scope`, by study, series and
    /// instance number order of storage.
    fn web_instances(&self, scope: &WebScope) -> StoreResult<Vec<WebInstance>>;
}

/// The whole persistent state behind the pipeline: every concern's
/// trait. A consumer takes only the trait it needs (ingest an
/// [`InstanceIndex`], DICOMweb a [`WebIndex`]); the service wiring holds
/// the whole.
pub trait Catalog: InstanceIndex + StudyAssembly + JobQueue + Outbox + WebIndex + Reviews {
    /// This catalog as its instance index.
    fn as_instance_index(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn InstanceIndex>;
    /// This catalog as its DICOMweb index.
    fn as_web_index(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn WebIndex>;
}

impl<T: InstanceIndex + StudyAssembly + JobQueue + Outbox + WebIndex + Reviews> Catalog for T {
    fn as_instance_index(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn InstanceIndex> {
        self
    }
    fn as_web_index(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn WebIndex> {
        self
    }
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
