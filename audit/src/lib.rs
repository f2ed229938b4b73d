//! The audit trail: an append-only, hash-chained, signed record of
//! everything the appliance does (MDR performance evaluation, AI Act
//! Art. 12 record keeping). See `docs/traceability.md`.
//!
//! - Every record carries a sequence number, a UTC timestamp, the appliance
//!   id, the software version and git commit, what happened (`kind`,
//!   `outcome`, indexed UIDs and model, and a JSON `details` object), the
//!   SHA-256 of the previous record and its own SHA-256 over all of that.
//! - Every `checkpoint_every` records, at start, at stop and on demand, a
//!   checkpoint (sequence number and hash of the last record) is signed with
//!   the appliance's Ed25519 key and written both into the log and, durably,
//!   into the head file `audit-head.json` beside it. Editing, deleting or
//!   reordering records breaks the chain; rewriting the chain breaks the
//!   signatures; truncating the tail leaves the head pointing past the end.
//! - Patient ID is kept as an HMAC-SHA256 under a site secret by default
//!   (`audit.patient_id = "hmac"`), in clear, or not at all.
//!
//! [`AuditLog`] is the storage trait; [`sqlite::SqliteAudit`] the embedded
//! implementation.

#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod event;
pub mod export;
pub mod keys;
pub mod sqlite;
pub mod syslog;
pub mod verify;

pub use event::EventKind;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash of "no previous record".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Software version written in every record.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = match option_env!("VIGIE_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The audit database cannot be opened, or its schema is newer than
    /// this release knows, or migrating it failed.
    #[error(transparent)]
    Open(#[from] vigie_durable::Error),
    /// A read or write of the audit database failed.
    #[error("audit log {path}: {operation}")]
    Database {
        /// Database file.
        path: std::path::PathBuf,
        /// What was being done (`append`, `checkpoint`, `query`, …).
        operation: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// Appending failed in a shared (group) commit.
    #[error("audit log {path}: append")]
    Append {
        /// Database file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: vigie_durable::CommitError<AuditError>,
    },
    /// The head file cannot be read, written or moved aside.
    #[error("audit head {path}: {operation}")]
    Head {
        /// The head file.
        path: std::path::PathBuf,
        /// What was being done.
        operation: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The head file disagrees with the log: the tail was truncated, the log
    /// restored from an older backup, or the chain rewritten. Nothing
    /// overwrites such a head; `vigie audit accept-restore` is the explicit,
    /// audited way on.
    #[error(
        "audit head {head} disagrees with the log: {reason}. Refusing to go on: investigate (vigie audit verify), restore the missing records, or accept this log with `vigie audit accept-restore --reason TEXT`"
    )]
    HeadDisagrees {
        /// The head file.
        head: std::path::PathBuf,
        /// How it disagrees.
        reason: String,
    },
    /// A key file cannot be read, written or used.
    #[error("audit key {path}: {reason}")]
    Key {
        /// Key file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// A record's details are not the JSON they were written as.
    #[error("audit record {seq}: its details are not JSON")]
    Details {
        /// The record.
        seq: i64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Syslog forwarding cannot be set up.
    #[error("audit syslog forwarding to {target}")]
    Syslog {
        /// The configured `host:port`.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`AuditError`].
pub type AuditResult<T> = Result<T, AuditError>;

/// What happened, to be appended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// What happened (see `docs/traceability.md`).
    pub kind: EventKind,
    /// `ok`, `refused`, `failed`, … (event-specific).
    pub outcome: String,
    /// Study concerned.
    pub study_instance_uid: Option<String>,
    /// Instance concerned.
    pub sop_instance_uid: Option<String>,
    /// Model concerned.
    pub model_id: Option<String>,
    /// Its version.
    pub model_version: Option<String>,
    /// Everything else, as a JSON object.
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// An event of `kind` with `outcome` and `details`.
    pub fn new(kind: EventKind, outcome: &str, details: serde_json::Value) -> Self {
        Self {
            kind,
            outcome: outcome.into(),
            study_instance_uid: None,
            sop_instance_uid: None,
            model_id: None,
            model_version: None,
            details,
        }
    }

    /// With the study and instance.
    pub fn instance(mut self, study: Option<&str>, sop: Option<&str>) -> Self {
        self.study_instance_uid = study.map(str::to_string);
        self.sop_instance_uid = sop.map(str::to_string);
        self
    }

    /// With the model.
    pub fn model(mut self, id: &str, version: &str) -> Self {
        self.model_id = Some(id.into());
        self.model_version = Some(version.into());
        self
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: i64,
    /// UTC time, RFC 3339 with microseconds.
    pub timestamp: String,
    /// Appliance id.
    pub appliance: String,
    /// Software version.
    pub software_version: String,
    /// Git commit.
    pub git_commit: String,
    /// Event type.
    pub kind: String,
    /// Outcome.
    pub outcome: String,
    /// Study.
    pub study_instance_uid: Option<String>,
    /// Instance.
    pub sop_instance_uid: Option<String>,
    /// Model id.
    pub model_id: Option<String>,
    /// Model version.
    pub model_version: Option<String>,
    /// Details, as the exact JSON text that was hashed.
    pub details: String,
    /// SHA-256 of the previous record (GENESIS for the first).
    pub prev_hash: String,
    /// SHA-256 of this record.
    pub hash: String,
}

impl AuditRecord {
    /// The SHA-256 this record must carry: over every field but `hash`, as
    /// a JSON array in a fixed order.
    pub fn compute_hash(&self) -> String {
        let body = serde_json::json!([
            self.seq,
            self.timestamp,
            self.appliance,
            self.software_version,
            self.git_commit,
            self.kind,
            self.outcome,
            self.study_instance_uid,
            self.sop_instance_uid,
            self.model_id,
            self.model_version,
            self.details,
            self.prev_hash,
        ]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

/// A signed checkpoint: the log up to `seq` ends with the record `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Last record covered.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// When it was signed.
    pub timestamp: String,
    /// Ed25519 public key (hex) that signed it.
    pub public_key: String,
    /// Ed25519 signature (hex) of [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes.
    pub fn message(seq: i64, hash: &str, timestamp: &str) -> Vec<u8> {
        format!("vigie-audit-checkpoint\n{seq}\n{hash}\n{timestamp}").into_bytes()
    }
}

/// Filters for reading records back.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// From this time (RFC 3339, inclusive).
    pub from: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    pub to: Option<String>,
    /// Event type.
    pub kind: Option<String>,
    /// Study.
    pub study_instance_uid: Option<String>,
    /// Model id.
    pub model_id: Option<String>,
    /// Model version.
    pub model_version: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Records after this sequence number.
    pub after_seq: Option<i64>,
    /// At most this many, in order.
    pub limit: Option<usize>,
}

/// Storage of the audit trail.
pub trait AuditLog: Send + Sync + 'static {
    /// Append `event` durably (committed and fsynced when this returns);
    /// signs a checkpoint when one is due.
    fn append(&self, event: &AuditEvent) -> AuditResult<AuditRecord>;

    /// Append several events in one durable transaction, in order.
    fn append_all(&self, events: &[AuditEvent]) -> AuditResult<Vec<AuditRecord>>;

    /// Sign a checkpoint of the current end of the log now (no-op when the
    /// last checkpoint already covers it).
    fn checkpoint(&self) -> AuditResult<Option<Checkpoint>>;

    /// Delete records older than `before` (RFC 3339), except the last
    /// record, behind a signed anchor holding the last deleted record's
    /// sequence number and hash; returns (that sequence number, records
    /// deleted), or `None` when nothing was old enough.
    fn prune(&self, before: &str) -> AuditResult<Option<(i64, usize)>>;

    /// Records matching `query`, in sequence order.
    fn records(&self, query: &Query) -> AuditResult<Vec<AuditRecord>>;

    /// Every record and checkpoint, and the head, for verification.
    fn snapshot(&self) -> AuditResult<verify::Snapshot>;

    /// The time of the last record, if any.
    fn newest_timestamp(&self) -> AuditResult<Option<String>>;

    /// How the head disagrees with the log (it covers a record the log
    /// does not have, or with another hash); `None` when they agree or
    /// there is no head yet.
    fn head_problem(&self) -> AuditResult<Option<String>>;

    /// The head as it is on disk, if any.
    fn current_head(&self) -> AuditResult<Option<Checkpoint>>;

    /// Move the head aside (to a `audit-head.superseded-*.json` file) and
    /// return it with where it went; `None` without a head.
    fn supersede_head(&self) -> AuditResult<Option<(Checkpoint, std::path::PathBuf)>>;
}

/// `[audit]` of the configuration: the audit trail owns its section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Sign a checkpoint every this many records.
    pub checkpoint_every: u32,
    /// Also sign one every this many seconds when records were added.
    pub checkpoint_interval_s: u64,
    /// Patient ID in the audit trail: `hmac` (keyed hash under the site
    /// secret), `clear` or `omit`.
    pub patient_id: PatientIdPolicy,
    /// Days records are kept; older ones are pruned (at start and daily)
    /// behind a signed anchor, so the rest still verifies.
    pub retention_days: f64,
    /// Forward every record as a DICOM PS3.15 audit message in RFC 5424
    /// syslog over UDP to this `host:port` (unset: no forwarding).
    pub syslog: Option<String>,
}

impl AuditConfig {
    /// What is wrong with these settings, one line each, named as in the
    /// configuration file (`audit.…`); empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.retention_days.is_finite() || self.retention_days < 0.0 {
            problems.push("audit.retention_days: must be a number, 0 or more".into());
        }
        if let Some(target) = &self.syslog {
            let host_port = target
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !host_port {
                problems.push(format!("audit.syslog: {target:?} is not host:port"));
            }
        }
        if self.checkpoint_every == 0 {
            problems.push("audit.checkpoint_every: must be at least 1".into());
        }
        problems
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval_s: 300,
            patient_id: PatientIdPolicy::Hmac,
            retention_days: 3652.5,
            syslog: None,
        }
    }
}

/// How Patient ID is kept in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatientIdPolicy {
    /// HMAC-SHA256 under the site secret (hex): linkable, not readable.
    Hmac,
    /// In clear.
    Clear,
    /// Not recorded.
    Omit,
}

/// Applies the [`PatientIdPolicy`].
#[derive(Clone)]
pub struct Pseudonymiser {
    policy: PatientIdPolicy,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Pseudonymiser {
    /// With this policy and site secret.
    pub fn new(policy: PatientIdPolicy, secret: Vec<u8>) -> Self {
        Self { policy, secret }
    }

    /// The JSON value to record for a Patient ID (`null` when omitted or
    /// absent).
    pub fn patient_id(&self, patient_id: Option<&str>) -> serde_json::Value {
        use hmac::{Mac, SimpleHmac};
        let Some(id) = patient_id.map(str::trim).filter(|s| !s.is_empty()) else {
            return serde_json::Value::Null;
        };
        match self.policy {
            PatientIdPolicy::Omit => serde_json::Value::Null,
            PatientIdPolicy::Clear => serde_json::json!({ "clear": id }),
            PatientIdPolicy::Hmac => {
                let Ok(mut mac) = SimpleHmac::<Sha256>::new_from_slice(&self.secret) else {
                    return serde_json::Value::Null;
                };
                mac.update(id.as_bytes());
                serde_json::json!({ "hmac_sha256": hex::encode(mac.finalize().into_bytes()) })
            }
        }
    }
}

/// File of the checkpoint signing key in the data directory.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// File of the Patient ID HMAC secret in the data directory.
pub const HMAC_KEY_FILE: &str = "audit-hmac.key";

/// The audit trail as the rest of the service uses it.
#[derive(Clone)]
pub struct Audit {
    log: std::sync::Arc<dyn AuditLog>,
    pseudonymiser: Pseudonymiser,
    public_key: String,
    forwarder: Option<std::sync::Arc<syslog::Forwarder>>,
    head_path: std::path::PathBuf,
    clock: TrustedClock,
    clock_file: std::path::PathBuf,
    migrated: Option<vigie_durable::Migration>,
}

/// File of the retention clock in the data directory.
pub const CLOCK_FILE: &str = "audit-clock.json";

/// What retention's clock said at the last checkpoint, and what the wall
/// clock said then.
#[derive(Debug, Serialize, Deserialize)]
struct ClockState {
    trusted: String,
    wall: String,
}

/// A wall clock more than this many days past the newest record at start
/// is taken for a wrong clock.
const MAX_PLAUSIBLE_GAP_DAYS: i64 = 30;

/// The time retention counts from: at open, the wall clock — or the newest
/// record's time when the clock is more than [`MAX_PLAUSIBLE_GAP_DAYS`]
/// past it — then that plus the monotonic time since (a jump within a run
/// changes nothing).
#[derive(Debug, Clone, Copy)]
struct TrustedClock {
    base: chrono::DateTime<chrono::Utc>,
    since: std::time::Instant,
}

impl TrustedClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.base + chrono::Duration::from_std(self.since.elapsed()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Open the embedded audit log of `data_dir` (creating keys at first
    /// use).
    pub fn open(
        data_dir: &std::path::Path,
        appliance: &str,
        config: &AuditConfig,
    ) -> AuditResult<Self> {
        let key = keys::signing_key(&data_dir.join(SIGNING_KEY_FILE))?;
        let secret = keys::load_or_create_secret(&data_dir.join(HMAC_KEY_FILE))?;
        let log = sqlite::SqliteAudit::open(data_dir, appliance, key, config.checkpoint_every)?;
        let forwarder = match &config.syslog {
            Some(target) => Some(std::sync::Arc::new(
                syslog::Forwarder::new(target).map_err(|source| AuditError::Syslog {
                    target: target.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let wall = utc_now();
        let clock_file = data_dir.join(CLOCK_FILE);
        let remembered = std::fs::read_to_string(&clock_file)
            .ok()
            .and_then(|t| serde_json::from_str::<ClockState>(&t).ok())
            .and_then(|c| {
                let parse = |t: &str| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .ok()
                        .map(|t| t.with_timezone(&chrono::Utc))
                };
                Some((parse(&c.trusted)?, parse(&c.wall)?))
            });
        let newest = log
            .newest_timestamp()?
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        // A wall clock far past the newest record is taken for a clock
        // error, not for downtime: retention then counts from the newest
        // record (which keeps records longer, never shorter).
        let base = match (remembered, newest) {
            // The time retention counted at the last checkpoint, advanced
            // by how far the wall clock moved since — unless it moved back,
            // or implausibly far: then from that remembered time. A wrong
            // clock is never believed, however many starts it lasts.
            (Some((trusted, then)), _) => {
                let moved = wall - then;
                if moved < chrono::Duration::zero()
                    || moved > chrono::Duration::days(MAX_PLAUSIBLE_GAP_DAYS)
                {
                    tracing::error!(
                        last_reading = %then.to_rfc3339(),
                        now = %wall.to_rfc3339(),
                        "the clock moved back, or more than {MAX_PLAUSIBLE_GAP_DAYS} days, since the audit trail last read it: retention counts from its last trusted time (check NTP)"
                    );
                    trusted
                } else {
                    trusted + moved
                }
            }
            (None, Some(n)) if wall > n + chrono::Duration::days(MAX_PLAUSIBLE_GAP_DAYS) => {
                tracing::error!(
                    newest_record = %n.to_rfc3339(),
                    now = %wall.to_rfc3339(),
                    "the clock is more than {MAX_PLAUSIBLE_GAP_DAYS} days past the newest audit record: retention counts from that record (check NTP)"
                );
                n
            }
            (None, _) => wall,
        };
        if let Some(n) = newest
            && n > wall + chrono::Duration::seconds(1)
        {
            tracing::error!(
                newest_record = %n.to_rfc3339(),
                now = %wall.to_rfc3339(),
                "the clock is behind the newest audit record: it was set back (check NTP)"
            );
        }
        let migrated = log.migrated();
        Ok(Self {
            migrated,
            clock: TrustedClock {
                base,
                since: std::time::Instant::now(),
            },
            clock_file,
            public_key: log.public_key(),
            log: std::sync::Arc::new(log),
            pseudonymiser: Pseudonymiser::new(config.patient_id, secret.to_vec()),
            forwarder,
            head_path: data_dir.join(sqlite::HEAD),
        })
    }

    /// The audit database's schema migration done at open, if any (the
    /// service records it once the head is checked).
    pub fn migrated(&self) -> Option<vigie_durable::Migration> {
        self.migrated
    }

    /// Append durably; the caller decides what a failure means.
    pub fn record(&self, event: AuditEvent) -> AuditResult<AuditRecord> {
        let record = self.log.append(&event).inspect_err(|e| {
            tracing::error!(kind = %event.kind, error = %e, "audit record not written");
        })?;
        if let Some(f) = &self.forwarder {
            f.send(&record);
        }
        Ok(record)
    }

    /// Append several events in one durable transaction.
    pub fn record_all(&self, events: &[AuditEvent]) -> AuditResult<Vec<AuditRecord>> {
        let records = self.log.append_all(events).inspect_err(|e| {
            tracing::error!(records = events.len(), error = %e, "audit records not written");
        })?;
        if let Some(f) = &self.forwarder {
            for record in &records {
                f.send(record);
            }
        }
        Ok(records)
    }

    /// Append, logging a failure (for events nothing waits on).
    pub fn note(&self, event: AuditEvent) {
        let _ = self.record(event);
    }

    /// Apply the retention period: prune what is older than `days`, record
    /// that, and sign a checkpoint after it.
    pub fn apply_retention(&self, days: f64) -> AuditResult<Option<(i64, usize)>> {
        // Not the wall clock as it is now: a clock 11 years ahead at one
        // start would prune the whole trail. See [`TrustedClock`].
        let trusted = self.clock.now();
        let cutoff = trusted - chrono::Duration::milliseconds((days * 86_400_000.0).round() as i64);
        let before = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let pruned = self.log.prune(&before)?;
        if let Some((seq, removed)) = pruned {
            self.record(AuditEvent::new(
                EventKind::AuditPruned,
                "ok",
                serde_json::json!({
                    "retention_days": days,
                    "before": before,
                    "up_to_record": seq,
                    "records_removed": removed,
                    "counted_from": trusted.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                }),
            ))?;
            self.checkpoint()?;
        }
        Ok(pruned)
    }

    /// Sign a checkpoint now, and send it out of the box too (syslog, when
    /// configured): a copy outside proves a later truncation.
    pub fn checkpoint(&self) -> AuditResult<Option<Checkpoint>> {
        self.remember_clock();
        let checkpoint = self.log.checkpoint()?;
        if let (Some(c), Some(forwarder)) = (&checkpoint, &self.forwarder) {
            forwarder.checkpoint(c);
        }
        Ok(checkpoint)
    }

    /// Keep retention's clock for the next start (best effort: without it
    /// the next start falls back to the newest record's time).
    fn remember_clock(&self) {
        let stamp = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let state = ClockState {
            trusted: stamp(self.clock.now()),
            wall: stamp(utc_now()),
        };
        let Ok(text) = serde_json::to_string(&state) else {
            return;
        };
        if let Err(e) = vigie_durable::file::write_durably(&self.clock_file, |w| {
            std::io::Write::write_all(w, text.as_bytes())
        }) {
            tracing::warn!(error = %e, "cannot keep the retention clock");
        }
    }

    /// Refuse to go on when the head disagrees with the log
    /// ([`AuditError::HeadDisagrees`]); `vigie serve` calls this before
    /// recording anything.
    pub fn check_head(&self) -> AuditResult<()> {
        match self.log.head_problem()? {
            None => Ok(()),
            Some(reason) => Err(AuditError::HeadDisagrees {
                head: self.head_path.clone(),
                reason,
            }),
        }
    }

    /// Accept the log as it is after a restore or a truncation an operator
    /// has investigated: the old head is kept aside, an
    /// `audit_restore_accepted` record names it (sequence number, hash,
    /// signature), the log's end, the reason and who accepted, and a new
    /// checkpoint is signed. Returns that record.
    pub fn accept_restore(&self, reason: &str, who: serde_json::Value) -> AuditResult<AuditRecord> {
        let problem = self.log.head_problem()?;
        // On record first: should anything after fail, the head is still
        // there and the start still refused.
        let record = self.record(AuditEvent::new(
            EventKind::AuditRestoreAccepted,
            "ok",
            serde_json::json!({
                "reason": reason,
                "who": who,
                "head_problem": problem,
                "superseded_head": self.log.current_head()?,
            }),
        ))?;
        if let Some((_, aside)) = self.log.supersede_head()? {
            tracing::warn!(kept = %aside.display(), "audit head superseded by an accepted restore");
        }
        self.checkpoint()?;
        Ok(record)
    }

    /// Records matching `query`, in order.
    pub fn records(&self, query: &Query) -> AuditResult<Vec<AuditRecord>> {
        self.log.records(query)
    }

    /// Verify the whole trail (chain, checkpoint signatures, head) with
    /// the appliance's own key.
    pub fn verify(&self) -> AuditResult<verify::Report> {
        let snapshot = self.log.snapshot()?;
        match keys::verifying_key(&self.public_key) {
            Ok(key) => Ok(verify::verify(&snapshot, &key)),
            Err(reason) => Ok(verify::Report {
                ok: false,
                records: snapshot.records.len(),
                checkpoints_verified: 0,
                first_bad_record: None,
                reason: Some(format!("appliance public key unusable: {reason}")),
                unsigned_tail: 0,
                time_went_backwards: Vec::new(),
            }),
        }
    }

    /// The public key (hex) verifying the checkpoints.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// What to record of a Patient ID.
    pub fn patient_id(&self, id: Option<&str>) -> serde_json::Value {
        self.pseudonymiser.patient_id(id)
    }
}

static CLOCK_WENT_BACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records written since start whose time was earlier than the record
/// before them (the metric `vigie_clock_went_back_total`).
pub fn clock_went_back() -> u64 {
    CLOCK_WENT_BACK.load(std::sync::atomic::Ordering::Relaxed)
}

/// Count one record written with a clock earlier than its predecessor's.
pub(crate) fn note_clock_went_back(previous: &str, now: &str) {
    CLOCK_WENT_BACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(
        previous,
        now,
        "the clock went back: this audit record is timed before the one it follows (check NTP); recorded with the previous time in its details"
    );
}

/// UTC now, RFC 3339 with microseconds.
pub fn timestamp() -> String {
    utc_now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The wall clock as the audit trail reads it (shifted on this thread by
/// the tests' clock offset, to test clock jumps).
fn utc_now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    #[cfg(test)]
    let now = now + chrono::Duration::milliseconds(tests::CLOCK_OFFSET_MS.get());
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_problems_are_named_as_in_the_configuration_file() {
        assert!(AuditConfig::default().problems().is_empty());
        let config = AuditConfig {
            retention_days: -1.0,
            syslog: Some("collector".into()),
            checkpoint_every: 0,
            ..AuditConfig::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("audit.retention_days:"));
        assert!(problems[1].contains("\"collector\" is not host:port"));
        assert!(problems[2].starts_with("audit.checkpoint_every:"));
        let fine = AuditConfig {
            syslog: Some("collector:514".into()),
            ..AuditConfig::default()
        };
        assert!(fine.problems().is_empty());
    }

    thread_local! {
        /// Milliseconds added to the wall clock on this thread.
        pub(super) static CLOCK_OFFSET_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }

    const YEAR_MS: i64 = 365 * 86_400_000;

    /// `n` C-ECHO records, numbered.
    fn echoes(audit: &Audit, n: usize) {
        for n in 0..n {
            audit
                .record(AuditEvent::new(
                    EventKind::Echo,
                    "ok",
                    serde_json::json!({ "n": n }),
                ))
                .unwrap();
        }
    }

    /// Hardening defect 9: a clock 11 years ahead at one start deleted the
    /// whole trail as past retention, with only an INFO line, and verify
    /// said OK; set right again, timestamps ran backwards unnoticed.
    #[test]
    fn regression_a_clock_jump_forward_prunes_nothing_and_a_clock_set_back_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig::default();
        let audit = Audit::open(dir.path(), "test", &config).unwrap();
        echoes(&audit, 10);
        drop(audit);
        // Eleven years ahead at the next start.
        CLOCK_OFFSET_MS.set(11 * YEAR_MS);
        let audit = Audit::open(dir.path(), "test", &config).unwrap();
        audit
            .record(AuditEvent::new(
                EventKind::ServiceStarted,
                "ok",
                serde_json::json!({}),
            ))
            .unwrap();
        assert_eq!(
            audit.apply_retention(3650.0).unwrap(),
            None,
            "nothing pruned"
        );
        assert_eq!(audit.records(&Query::default()).unwrap().len(), 11);
        audit.checkpoint().unwrap();
        drop(audit);
        // Found in review: a second start with the clock still wrong (its
        // newest record is "now" by that clock) prunes nothing either.
        let audit = Audit::open(dir.path(), "test", &config).unwrap();
        assert_eq!(
            audit.apply_retention(3650.0).unwrap(),
            None,
            "still nothing"
        );
        assert_eq!(audit.records(&Query::default()).unwrap().len(), 11);
        audit.checkpoint().unwrap();
        drop(audit);
        // Set right again: the next record is earlier than the one before.
        CLOCK_OFFSET_MS.set(0);
        let before = clock_went_back();
        let audit = Audit::open(dir.path(), "test", &config).unwrap();
        let record = audit
            .record(AuditEvent::new(
                EventKind::ServiceStarted,
                "ok",
                serde_json::json!({}),
            ))
            .unwrap();
        assert!(clock_went_back() > before, "alarm counter");
        let details: serde_json::Value = serde_json::from_str(&record.details).unwrap();
        assert!(details["clock_went_back_from"].is_string(), "{details}");
        audit.checkpoint().unwrap();
        let report = audit.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.time_went_backwards, vec![record.seq]);
        // Retention still counts from real time: the trail is young.
        assert_eq!(audit.apply_retention(3650.0).unwrap(), None);
    }

    /// Hardening defect 9b: after the records and checkpoints past N were
    /// deleted (or an older backup restored), the next start overwrote
    /// `audit-head.json`, the only witness of the tail, and verify said
    /// OK. Now the head is never overwritten, the service refuses to start,
    /// and only an audited `accept-restore` goes on.
    #[test]
    fn regression_a_truncated_tail_is_never_hidden_by_overwriting_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig::default();
        {
            let audit = Audit::open(dir.path(), "test", &config).unwrap();
            echoes(&audit, 20);
            audit.checkpoint().unwrap();
            audit.check_head().unwrap();
        }
        let db = rusqlite::Connection::open(dir.path().join(sqlite::DATABASE)).unwrap();
        db.execute("DELETE FROM records WHERE seq > 12", [])
            .unwrap();
        db.execute("DELETE FROM checkpoints WHERE seq > 12", [])
            .unwrap();
        drop(db);
        let head_before = std::fs::read(dir.path().join(sqlite::HEAD)).unwrap();
        let audit = Audit::open(dir.path(), "test", &config).unwrap();
        let refused = audit.check_head().unwrap_err().to_string();
        assert!(
            refused.contains("covers record 20") && refused.contains("ends at record 12"),
            "{refused}"
        );
        // Neither an explicit checkpoint nor records that would be due for
        // one touch the head.
        assert!(matches!(
            audit.checkpoint(),
            Err(AuditError::HeadDisagrees { .. })
        ));
        echoes(&audit, 40);
        assert_eq!(
            std::fs::read(dir.path().join(sqlite::HEAD)).unwrap(),
            head_before
        );
        assert!(
            audit.check_head().is_err(),
            "still disagrees: record 20 was rewritten"
        );
        assert!(!audit.verify().unwrap().ok);
        // The operator's explicit acceptance is itself on record.
        let record = audit
            .accept_restore(
                "restored backup of 2026-11-30, ticket 42",
                serde_json::json!("tester"),
            )
            .unwrap();
        assert_eq!(record.kind, "audit_restore_accepted");
        let details: serde_json::Value = serde_json::from_str(&record.details).unwrap();
        assert_eq!(details["superseded_head"]["seq"], 20);
        assert!(details["reason"].as_str().unwrap().contains("ticket 42"));
        audit.check_head().unwrap();
        assert!(audit.verify().unwrap().ok);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("audit-head.superseded-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the old head is kept");
    }

    #[test]
    fn patient_ids_are_keyed_hashes_by_default() {
        let p = Pseudonymiser::new(PatientIdPolicy::Hmac, b"site secret".to_vec());
        let a = p.patient_id(Some("12345"));
        assert_eq!(a, p.patient_id(Some("12345 ")), "stable");
        assert_ne!(a, p.patient_id(Some("12346")));
        let other_site = Pseudonymiser::new(PatientIdPolicy::Hmac, b"other".to_vec());
        assert_ne!(a, other_site.patient_id(Some("12345")), "keyed");
        assert!(!a.to_string().contains("12345"));
        assert_eq!(
            Pseudonymiser::new(PatientIdPolicy::Clear, vec![]).patient_id(Some("12345")),
            serde_json::json!({ "clear": "12345" })
        );
        assert!(
            Pseudonymiser::new(PatientIdPolicy::Omit, vec![])
                .patient_id(Some("1"))
                .is_null()
        );
    }
}
