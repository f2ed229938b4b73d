//! The embedded catalog: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a committed transaction survives a crash or a
//! power cut. One connection behind a mutex: the statements are short and
//! the appliance's write rate (instances per second) is far below SQLite's.
//! What bounds that rate is the flush each commit costs: received
//! instances, the one write per acknowledged instance, are indexed with
//! group commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

use vigie_durable::GroupCommit;

use super::{
    Delivery, HeldInstance, IndexError, InstanceIndex, InstanceRecord, Job, JobFilter, JobQueue,
    JobState, NewJob, Origin, Outbox, OutboxItem, OutboxStatus, ResetJobs, ResultFile,
    RetryOutcome, SeriesSummary, StableStudy, StoreError, StoreResult, StudyAssembly, StudyStatus,
    WebIndex, WebInstance, WebScope, rfc3339,
};

const BASE: &str = "
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    sop_class_uid       TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    modality            TEXT,
    body_part           TEXT,
    series_description  TEXT,
    transfer_syntax     TEXT NOT NULL,
    calling_ae_title    TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    sha256              TEXT NOT NULL,
    generation          INTEGER NOT NULL,
    received_ms         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid, generation);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    state              TEXT NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 0,
    last_received_ms   INTEGER NOT NULL,
    note               TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid TEXT NOT NULL,
    generation         INTEGER NOT NULL,
    rule               TEXT NOT NULL,
    model              TEXT NOT NULL,
    series             TEXT NOT NULL,
    destinations       TEXT NOT NULL,
    state              TEXT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    not_before_ms      INTEGER NOT NULL,
    last_error         TEXT,
    results            TEXT NOT NULL DEFAULT '[]',
    created_ms         INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL,
    destination      TEXT NOT NULL,
    path             TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    not_before_ms    INTEGER NOT NULL,
    last_error       TEXT,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, not_before_ms);
CREATE TABLE IF NOT EXISTS web_index (
    sop_instance_uid    TEXT PRIMARY KEY,
    sop_class_uid       TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    origin              TEXT NOT NULL,
    transfer_syntax     TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    attributes          TEXT NOT NULL,
    stored_ms           INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS web_index_study ON web_index (study_instance_uid, series_instance_uid);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_instance_uid);
";

/// Migrations after the base schema [`BASE`], which is release 0.1.0's
/// (stored without a version, `user_version` 0). Entry `i` takes the
/// catalog from version `i + 1` to `i + 2`; an upgrade runs every step it
/// needs, and sets the new version, in one transaction. Append only: never
/// edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 2: attempts that were interrupted (the process stopped during the
    // job) are counted apart from attempts that failed.
    "ALTER TABLE jobs ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;",
    // 3: reviews (a radiologist's verdict on a result), and the job that
    // created each result object, filled in for results already stored
    // from the jobs' lists of result files.
    "ALTER TABLE web_index ADD COLUMN job_id INTEGER;
     CREATE TEMP TABLE result_jobs AS
         SELECT e.value AS path, max(j.id) AS job_id
         FROM jobs j, json_each(j.results) e GROUP BY e.value;
     CREATE INDEX temp.result_jobs_path ON result_jobs (path);
     UPDATE web_index SET job_id = (
         SELECT job_id FROM result_jobs WHERE result_jobs.path = web_index.path)
     WHERE origin = 'result';
     DROP TABLE temp.result_jobs;
     CREATE INDEX web_index_job ON web_index (job_id);
     CREATE TABLE reviews (
         id                      INTEGER PRIMARY KEY AUTOINCREMENT,
         job_id                  INTEGER NOT NULL,
         result_sop_instance_uid TEXT NOT NULL,
         verdict                 TEXT NOT NULL,
         label                   TEXT,
         comment                 TEXT,
         reviewer                TEXT NOT NULL,
         via                     TEXT NOT NULL,
         authenticated_as        TEXT NOT NULL,
         source_sop_instance_uid TEXT,
         recorded_ms             INTEGER NOT NULL,
         supersedes              INTEGER
     );
     CREATE INDEX reviews_job ON reviews (job_id, id);
     CREATE INDEX reviews_result ON reviews
         (result_sop_instance_uid, authenticated_as, reviewer, id);
     CREATE INDEX reviews_time ON reviews (recorded_ms);
     CREATE UNIQUE INDEX reviews_source ON reviews (source_sop_instance_uid)
         WHERE source_sop_instance_uid IS NOT NULL;",
    // 4: storage commitment of delivered results: the transaction of the
    // last request (or the one that committed) and when the destination
    // committed (states `stored` and `committing` are new values of
    // `state`); every transaction each item was named in, so that a late
    // report of an earlier one still counts.
    "ALTER TABLE outbox ADD COLUMN commitment_uid TEXT;
     ALTER TABLE outbox ADD COLUMN committed_ms INTEGER;
     CREATE TABLE outbox_commitments (
         transaction_uid TEXT NOT NULL,
         outbox_id       INTEGER NOT NULL,
         requested_ms    INTEGER NOT NULL
     );
     CREATE INDEX outbox_commitments_transaction ON outbox_commitments (transaction_uid);
     CREATE INDEX outbox_commitments_item ON outbox_commitments (outbox_id);",
];

/// The catalog schema version this binary writes.
pub const CATALOG_SCHEMA_VERSION: u32 = 1 + MIGRATIONS.len() as u32;

const SCHEMA: vigie_durable::Schema<'static> = vigie_durable::Schema {
    what: "catalog",
    base: BASE,
    migrations: MIGRATIONS,
};

/// Index an instance for DICOMweb; `job_id` is the job that created a
/// result object (`None` for received instances).
fn index_web(
    tx: &Connection,
    w: &WebInstance,
    job_id: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO web_index (sop_instance_uid, sop_class_uid, study_instance_uid,
            series_instance_uid, origin, transfer_syntax, path, size, attributes, stored_ms,
            job_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            w.sop_instance_uid,
            w.sop_class_uid,
            w.study_instance_uid,
            w.series_instance_uid,
            w.origin.as_str(),
            w.transfer_syntax,
            w.path.to_string_lossy(),
            i64::try_from(w.size).unwrap_or(i64::MAX),
            serde_json::to_string(&w.attributes).unwrap_or_else(|_| "{}".into()),
            now_ms,
            job_id
        ],
    )?;
    Ok(())
}

pub(crate) fn web_from_row(row: &Row<'_>) -> rusqlite::Result<WebInstance> {
    Ok(WebInstance {
        sop_instance_uid: row.get("sop_instance_uid")?,
        sop_class_uid: row.get("sop_class_uid")?,
        study_instance_uid: row.get("study_instance_uid")?,
        series_instance_uid: row.get("series_instance_uid")?,
        origin: if row.get::<_, String>("origin")? == "result" {
            Origin::Result
        } else {
            Origin::Received
        },
        transfer_syntax: row.get("transfer_syntax")?,
        path: PathBuf::from(row.get::<_, String>("path")?),
        size: row.get::<_, i64>("size")?.max(0).unsigned_abs(),
        attributes: serde_json::from_str(&row.get::<_, String>("attributes")?).unwrap_or_default(),
    })
}

/// The SQLite catalog.
#[derive(Debug)]
pub struct SqliteCatalog {
    path: PathBuf,
    connection: Mutex<Connection>,
    /// A read-only connection for the one lookup on the acknowledgement
    /// path (`held_instance`): in WAL mode it reads the last commit without
    /// waiting for the writer's transaction and its flush.
    reader: Mutex<Connection>,
    /// A read-only connection of its own for the web index's searches
    /// (QIDO-RS, WADO-RS, C-FIND, C-MOVE): a long scan there neither holds
    /// the writes of ingest nor its duplicate check (WAL: readers see what
    /// is committed).
    web_reader: Mutex<Connection>,
    /// Received instances waiting to be indexed (group commit: see
    /// `record_instance`).
    received: GroupCommit<(InstanceRecord, i64), rusqlite::Result<()>>,
    migrated: Option<vigie_durable::Migration>,
}

fn json_list(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get("id")?,
        study_instance_uid: row.get("study_instance_uid")?,
        generation: row.get("generation")?,
        rule: row.get("rule")?,
        model: row.get("model")?,
        series: parse_list(&row.get::<_, String>("series")?),
        destinations: parse_list(&row.get::<_, String>("destinations")?),
        state: JobState::parse(&row.get::<_, String>("state")?),
        attempts: row.get("attempts")?,
        interrupted: row.get("interrupted")?,
        last_error: row.get("last_error")?,
        results: parse_list(&row.get::<_, String>("results")?),
        created_at: rfc3339(row.get("created_ms")?),
        updated_at: rfc3339(row.get("updated_ms")?),
    })
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        sop_instance_uid: row.get("sop_instance_uid")?,
        sop_class_uid: row.get("sop_class_uid")?,
        study_instance_uid: row.get("study_instance_uid")?,
        series_instance_uid: row.get("series_instance_uid")?,
        modality: row.get("modality")?,
        body_part: row.get("body_part")?,
        series_description: row.get("series_description")?,
        transfer_syntax: row.get("transfer_syntax")?,
        calling_ae_title: row.get("calling_ae_title")?,
        path: PathBuf::from(row.get::<_, String>("path")?),
        size: row.get::<_, i64>("size")?.max(0).unsigned_abs(),
        sha256: row.get("sha256")?,
        attributes: BTreeMap::new(),
    })
}

/// Index a received instance: its study (receiving again), the instance,
/// its DICOMweb entry.
fn insert_instance(tx: &Connection, i: &InstanceRecord, now_ms: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO studies (study_instance_uid, state, generation, last_received_ms)
         VALUES (?1, 'receiving', 0, ?2)
         ON CONFLICT (study_instance_uid) DO UPDATE
         SET state = 'receiving', last_received_ms = ?2",
        params![i.study_instance_uid, now_ms],
    )?;
    let generation: i64 = tx.query_row(
        "SELECT generation FROM studies WHERE study_instance_uid = ?1",
        params![i.study_instance_uid],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid,
            study_instance_uid, series_instance_uid, modality, body_part,
            series_description, transfer_syntax, calling_ae_title, path, size,
            sha256, generation, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            i.sop_instance_uid,
            i.sop_class_uid,
            i.study_instance_uid,
            i.series_instance_uid,
            i.modality,
            i.body_part,
            i.series_description,
            i.transfer_syntax,
            i.calling_ae_title,
            i.path.to_string_lossy(),
            i64::try_from(i.size).unwrap_or(i64::MAX),
            i.sha256,
            generation,
            now_ms
        ],
    )?;
    index_web(
        tx,
        &WebInstance {
            sop_instance_uid: i.sop_instance_uid.clone(),
            sop_class_uid: i.sop_class_uid.clone(),
            study_instance_uid: i.study_instance_uid.clone(),
            series_instance_uid: i.series_instance_uid.clone(),
            origin: Origin::Received,
            transfer_syntax: i.transfer_syntax.clone(),
            path: i.path.clone(),
            size: i.size,
            attributes: i.attributes.clone(),
        },
        None,
        now_ms,
    )?;
    Ok(())
}

/// Index received instances in one transaction, each in its own savepoint:
/// one that fails is rolled back and reported alone.
fn index_received(
    connection: &mut Connection,
    received: &[&(InstanceRecord, i64)],
) -> rusqlite::Result<Vec<rusqlite::Result<()>>> {
    let mut tx = connection.transaction()?;
    let mut outcomes = Vec::with_capacity(received.len());
    for (instance, now_ms) in received {
        let savepoint = tx.savepoint()?;
        match insert_instance(&savepoint, instance, *now_ms) {
            Ok(()) => {
                savepoint.commit()?;
                outcomes.push(Ok(()));
            }
            // Dropped without commit: rolled back.
            Err(e) => outcomes.push(Err(e)),
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

impl SqliteCatalog {
    /// The schema version of the catalog at `path`, read without changing
    /// anything (`None` when there is no catalog): tools that read another
    /// appliance's catalog check it before opening.
    pub fn schema_version(path: &Path) -> StoreResult<Option<u32>> {
        Ok(vigie_durable::schema_version(path)?)
    }

    /// Open (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let opened = vigie_durable::open_versioned(path, &SCHEMA)?;
        let read_only = |what: &'static str| {
            Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| {
                c.busy_timeout(std::time::Duration::from_secs(30))?;
                Ok(c)
            })
            .map_err(|source| StoreError::Database {
                path: path.to_path_buf(),
                operation: what,
                source,
            })
        };
        let reader = read_only("open the read connection")?;
        let web_reader = read_only("open the web index read connection")?;
        Ok(Self {
            path: path.to_path_buf(),
            connection: Mutex::new(opened.connection),
            reader: Mutex::new(reader),
            web_reader: Mutex::new(web_reader),
            received: GroupCommit::default(),
            migrated: opened.migrated,
        })
    }

    /// The schema migration done at open, if any (the service records it
    /// in the audit trail).
    pub fn migrated(&self) -> Option<vigie_durable::Migration> {
        self.migrated
    }

    pub(crate) fn with<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        let mut guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard).map_err(|source| StoreError::Database {
            path: self.path.clone(),
            operation,
            source,
        })
    }
}

impl InstanceIndex for SqliteCatalog {
    /// Group commit ([`GroupCommit`]): instances stored by concurrent
    /// associations share one transaction (one flush), each in its own
    /// savepoint, so that one that cannot be indexed fails alone. Returns
    /// once this instance's entry is durable.
    fn record_instance(&self, i: &InstanceRecord, now_ms: i64) -> StoreResult<()> {
        let index_error = |source| StoreError::Index {
            path: self.path.clone(),
            sop_instance_uid: i.sop_instance_uid.clone(),
            source,
        };
        let mut outcome = self
            .received
            .submit(vec![(i.clone(), now_ms)], |all| {
                let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
                index_received(&mut connection, all)
            })
            .map_err(|e| index_error(IndexError::Commit(e)))?;
        match outcome.pop() {
            Some(result) => result.map_err(|e| index_error(IndexError::Entry(e))),
            None => Err(index_error(IndexError::Commit(
                vigie_durable::CommitError::Outputs { got: 0, items: 1 },
            ))),
        }
    }

    fn held_instance(&self, sop_instance_uid: &str) -> StoreResult<Option<HeldInstance>> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        reader
            .query_row(
                "SELECT study_instance_uid, series_instance_uid, path, sha256, calling_ae_title
                 FROM instances WHERE sop_instance_uid = ?1",
                params![sop_instance_uid],
                |r| {
                    Ok(HeldInstance {
                        study_instance_uid: r.get(0)?,
                        series_instance_uid: r.get(1)?,
                        path: PathBuf::from(r.get::<_, String>(2)?),
                        sha256: r.get(3)?,
                        calling_ae_title: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|source| StoreError::Database {
                path: self.path.clone(),
                operation: "held instance",
                source,
            })
    }

    fn known_paths(&self) -> StoreResult<std::collections::HashSet<PathBuf>> {
        self.with("known paths", |c| {
            let mut paths = std::collections::HashSet::new();
            for sql in [
                "SELECT path FROM instances",
                "SELECT path FROM web_index",
                "SELECT path FROM outbox",
            ] {
                let mut stmt = c.prepare(sql)?;
                for path in stmt.query_map([], |r| r.get::<_, String>(0))? {
                    paths.insert(PathBuf::from(path?));
                }
            }
            let mut stmt = c.prepare("SELECT results FROM jobs")?;
            for results in stmt.query_map([], |r| r.get::<_, String>(0))? {
                paths.extend(parse_list(&results?).into_iter().map(PathBuf::from));
            }
            Ok(paths)
        })
    }

    fn clamp_future_receptions(&self, now_ms: i64) -> StoreResult<usize> {
        self.with("clamp future receptions", |c| {
            c.execute(
                "UPDATE studies SET last_received_ms = ?1
                 WHERE state = 'receiving' AND last_received_ms > ?1",
                params![now_ms],
            )
        })
    }

    fn job_instances(&self, job: &Job) -> StoreResult<Vec<InstanceRecord>> {
        self.with("job instances", |c| {
            let mut stmt = c.prepare(
                "SELECT * FROM instances WHERE study_instance_uid = ?1
                    AND (?2 < 0 OR generation = ?2)
                 ORDER BY series_instance_uid, received_ms",
            )?;
            let all: Vec<InstanceRecord> = stmt
                .query_map(
                    params![job.study_instance_uid, job.generation],
                    instance_from_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(all
                .into_iter()
                .filter(|i| job.series.is_empty() || job.series.contains(&i.series_instance_uid))
                .collect())
        })
    }

    fn received_instances(&self) -> StoreResult<Vec<InstanceRecord>> {
        self.with("received instances", |c| {
            let mut stmt = c.prepare(
                "SELECT * FROM instances
                 ORDER BY study_instance_uid, series_instance_uid, received_ms, sop_instance_uid",
            )?;
            stmt.query_map([], instance_from_row)?.collect()
        })
    }
}

/// Fill in the series of the current generation of `studies`.
fn with_series(c: &rusqlite::Connection, studies: &mut [StableStudy]) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "SELECT series_instance_uid, modality, body_part, series_description,
                group_concat(DISTINCT sop_class_uid),
                group_concat(DISTINCT calling_ae_title), count(*)
         FROM instances WHERE study_instance_uid = ?1 AND generation = ?2
         GROUP BY series_instance_uid ORDER BY min(received_ms)",
    )?;
    for study in studies {
        study.series = stmt
            .query_map(params![study.study_instance_uid, study.generation], |r| {
                let split = |s: Option<String>| -> Vec<String> {
                    s.map(|s| s.split(',').map(str::to_string).collect())
                        .unwrap_or_default()
                };
                Ok(SeriesSummary {
                    series_instance_uid: r.get(0)?,
                    modality: r.get(1)?,
                    body_part: r.get(2)?,
                    series_description: r.get(3)?,
                    sop_classes: split(r.get(4)?),
                    calling_ae_titles: split(r.get(5)?),
                    instances: r.get::<_, i64>(6)?.max(0).unsigned_abs() as usize,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(())
}

fn stable_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StableStudy> {
    Ok(StableStudy {
        study_instance_uid: r.get(0)?,
        generation: r.get(1)?,
        series: Vec::new(),
    })
}

impl StudyAssembly for SqliteCatalog {
    fn stable_studies(&self, cutoff_ms: i64) -> StoreResult<Vec<StableStudy>> {
        self.with("stable studies", |c| {
            let mut studies: Vec<StableStudy> = {
                let mut stmt = c.prepare(
                    "SELECT study_instance_uid, generation FROM studies
                     WHERE state = 'receiving' AND last_received_ms <= ?1
                     ORDER BY last_received_ms",
                )?;
                stmt.query_map(params![cutoff_ms], stable_from_row)?
                    .collect::<rusqlite::Result<_>>()?
            };
            with_series(c, &mut studies)?;
            Ok(studies)
        })
    }

    fn stable_study(
        &self,
        study_instance_uid: &str,
        cutoff_ms: i64,
    ) -> StoreResult<Option<StableStudy>> {
        self.with("stable study", |c| {
            let mut studies: Vec<StableStudy> = {
                let mut stmt = c.prepare_cached(
                    "SELECT study_instance_uid, generation FROM studies
                     WHERE study_instance_uid = ?1 AND state = 'receiving'
                       AND last_received_ms <= ?2",
                )?;
                stmt.query_map(params![study_instance_uid, cutoff_ms], stable_from_row)?
                    .collect::<rusqlite::Result<_>>()?
            };
            with_series(c, &mut studies)?;
            Ok(studies.pop())
        })
    }

    fn complete_study(
        &self,
        study: &StableStudy,
        cutoff_ms: i64,
        jobs: &[NewJob],
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.with("complete study", |c| {
            let tx = c.transaction()?;
            let changed = tx.execute(
                "UPDATE studies SET state = 'complete', generation = generation + 1, note = ?4
                 WHERE study_instance_uid = ?1 AND generation = ?2 AND state = 'receiving'
                   AND last_received_ms <= ?3",
                params![study.study_instance_uid, study.generation, cutoff_ms, note],
            )?;
            if changed == 0 {
                return Ok(false);
            }
            for job in jobs {
                tx.execute(
                    "INSERT INTO jobs (study_instance_uid, generation, rule, model, series,
                        destinations, state, not_before_ms, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?7)",
                    params![
                        study.study_instance_uid,
                        study.generation,
                        job.rule,
                        job.model,
                        json_list(&job.series),
                        json_list(&job.destinations),
                        now_ms
                    ],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn studies(&self, limit: usize) -> StoreResult<Vec<StudyStatus>> {
        self.with("studies", |c| {
            let mut stmt = c.prepare(
                "SELECT s.study_instance_uid, s.state, s.generation, s.note, s.last_received_ms,
                    (SELECT count(*) FROM instances i
                     WHERE i.study_instance_uid = s.study_instance_uid)
                 FROM studies s ORDER BY s.last_received_ms DESC LIMIT ?1",
            )?;
            stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(StudyStatus {
                    study_instance_uid: r.get(0)?,
                    state: r.get(1)?,
                    generation: r.get(2)?,
                    note: r.get(3)?,
                    last_received_at: rfc3339(r.get(4)?),
                    instances: r.get::<_, i64>(5)?.max(0).unsigned_abs(),
                })
            })?
            .collect()
        })
    }
}

impl JobQueue for SqliteCatalog {
    fn reset_running_jobs(&self, max_interrupted: u32, now_ms: i64) -> StoreResult<ResetJobs> {
        self.with("reset running jobs", |c| {
            let tx = c.transaction()?;
            let running: Vec<(i64, u32)> = tx
                .prepare("SELECT id, interrupted FROM jobs WHERE state = 'running' ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut reset = ResetJobs::default();
            for (id, interrupted) in running {
                let interrupted = interrupted + 1;
                if interrupted >= max_interrupted {
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', interrupted = ?2, last_error = ?3,
                            updated_ms = ?4 WHERE id = ?1",
                        params![
                            id,
                            interrupted,
                            format!(
                                "quarantined: the service stopped {interrupted} times while running this job (it may crash the appliance); retry it once the cause is known"
                            ),
                            now_ms
                        ],
                    )?;
                    reset.quarantined.push(id);
                } else {
                    tx.execute(
                        "UPDATE jobs SET state = 'pending', interrupted = ?2, updated_ms = ?3
                         WHERE id = ?1",
                        params![id, interrupted, now_ms],
                    )?;
                    reset.requeued.push(id);
                }
            }
            tx.commit()?;
            Ok(reset)
        })
    }

    fn release_running_jobs(&self, now_ms: i64) -> StoreResult<usize> {
        self.with("release running jobs", |c| {
            c.execute(
                "UPDATE jobs SET state = 'pending', updated_ms = ?1 WHERE state = 'running'",
                params![now_ms],
            )
        })
    }

    fn claim_job(&self, now_ms: i64) -> StoreResult<Option<Job>> {
        self.with("claim job", |c| {
            c.query_row(
                "UPDATE jobs SET state = 'running', updated_ms = ?1
                 WHERE id = (SELECT id FROM jobs WHERE state = 'pending' AND not_before_ms <= ?1
                             ORDER BY not_before_ms, id LIMIT 1)
                 RETURNING *",
                params![now_ms],
                job_from_row,
            )
            .optional()
        })
    }

    fn finish_job(
        &self,
        job: &Job,
        results: &[ResultFile],
        notes: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<()> {
        let paths: Vec<String> = results
            .iter()
            .map(|r| r.path.to_string_lossy().into_owned())
            .collect();
        self.with("finish job", |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE jobs SET state = 'done', results = ?2, last_error = ?3, updated_ms = ?4
                 WHERE id = ?1",
                params![job.id, json_list(&paths), notes, now_ms],
            )?;
            for result in results {
                index_web(&tx, result, Some(job.id), now_ms)?;
            }
            for destination in &job.destinations {
                for result in results {
                    tx.execute(
                        "INSERT INTO outbox (job_id, destination, path, sop_instance_uid, state,
                            not_before_ms, created_ms, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5)",
                        params![
                            job.id,
                            destination,
                            result.path.to_string_lossy(),
                            result.sop_instance_uid,
                            now_ms
                        ],
                    )?;
                }
            }
            tx.commit()
        })
    }

    fn job_attempt_failed(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.with("job attempt failed", |c| {
            match retry_at_ms {
                Some(at) => c.execute(
                    "UPDATE jobs SET state = 'pending', attempts = attempts + 1,
                        not_before_ms = ?2, last_error = ?3, updated_ms = ?4 WHERE id = ?1",
                    params![id, at, error, now_ms],
                )?,
                None => c.execute(
                    "UPDATE jobs SET state = 'failed', attempts = attempts + 1, last_error = ?2,
                        updated_ms = ?3 WHERE id = ?1",
                    params![id, error, now_ms],
                )?,
            };
            Ok(())
        })
    }

    fn find_jobs(&self, f: &JobFilter) -> StoreResult<Vec<Job>> {
        self.with("find jobs", |c| {
            let mut stmt = c.prepare(
                "SELECT * FROM jobs
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR model = ?2)
                   AND (?3 IS NULL OR study_instance_uid = ?3)
                   AND (?4 IS NULL OR created_ms >= ?4) AND (?5 IS NULL OR created_ms < ?5)
                   AND (?8 = 0 OR EXISTS (SELECT 1 FROM outbox
                        WHERE outbox.job_id = jobs.id AND outbox.state = 'failed'))
                 ORDER BY id DESC LIMIT ?6 OFFSET ?7",
            )?;
            stmt.query_map(
                params![
                    f.state.map(JobState::as_str),
                    f.model,
                    f.study,
                    f.since_ms,
                    f.until_ms,
                    i64::try_from(f.limit).unwrap_or(i64::MAX),
                    i64::try_from(f.offset).unwrap_or(i64::MAX),
                    f.undelivered
                ],
                job_from_row,
            )?
            .collect()
        })
    }

    fn job(&self, id: i64) -> StoreResult<Option<Job>> {
        self.with("job", |c| {
            c.query_row(
                "SELECT * FROM jobs WHERE id = ?1",
                params![id],
                job_from_row,
            )
            .optional()
        })
    }

    fn retry_job(&self, id: i64, now_ms: i64) -> StoreResult<RetryOutcome> {
        self.with("retry job", |c| {
            let tx = c.transaction()?;
            let state: Option<String> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let outcome = match state.as_deref() {
                None => RetryOutcome::NotFound,
                Some("failed") => {
                    tx.execute(
                        "UPDATE jobs SET state = 'pending', attempts = 0, interrupted = 0,
                            not_before_ms = ?2, updated_ms = ?2 WHERE id = ?1",
                        params![id, now_ms],
                    )?;
                    RetryOutcome::JobRequeued
                }
                Some(_) => {
                    let deliveries = tx.execute(
                        "UPDATE outbox SET state = 'pending', attempts = 0, not_before_ms = ?2,
                            updated_ms = ?2 WHERE job_id = ?1 AND state = 'failed'",
                        params![id, now_ms],
                    )?;
                    if deliveries == 0 {
                        RetryOutcome::NothingFailed
                    } else {
                        RetryOutcome::DeliveriesRequeued { deliveries }
                    }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn submit_job(&self, study: &str, job: &NewJob, now_ms: i64) -> StoreResult<Option<i64>> {
        self.with("submit job", |c| {
            let tx = c.transaction()?;
            let known: i64 = tx.query_row(
                "SELECT count(*) FROM instances WHERE study_instance_uid = ?1",
                params![study],
                |r| r.get(0),
            )?;
            if known == 0 {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO jobs (study_instance_uid, generation, rule, model, series,
                    destinations, state, not_before_ms, created_ms, updated_ms)
                 VALUES (?1, -1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?6)",
                params![
                    study,
                    job.rule,
                    job.model,
                    json_list(&job.series),
                    json_list(&job.destinations),
                    now_ms
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Some(id))
        })
    }

    fn job_counts(&self) -> StoreResult<std::collections::BTreeMap<String, u64>> {
        self.with("job counts", |c| {
            let mut stmt = c.prepare("SELECT state, count(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.max(0).unsigned_abs(),
                ))
            })?;
            rows.collect()
        })
    }
}

/// The states of an item awaiting its commitment.
const AWAITING: &str = "state IN ('stored', 'committing')";

/// An outbox attempt failed: back to `retry_state` at `retry_at_ms`, or
/// failed for good when `None`; only while the item is in the state
/// `guard` says. Whether it was.
fn outbox_attempt_failed(
    c: &Connection,
    id: i64,
    retry_state: &str,
    error: &str,
    retry_at_ms: Option<i64>,
    now_ms: i64,
    guard: &str,
) -> rusqlite::Result<bool> {
    let changed = c.execute(
        &format!(
            "UPDATE outbox SET state = ?2, attempts = attempts + 1, last_error = ?3,
                not_before_ms = coalesce(?4, not_before_ms), updated_ms = ?5
             WHERE id = ?1 AND {guard}"
        ),
        params![
            id,
            if retry_at_ms.is_some() {
                retry_state
            } else {
                "failed"
            },
            error,
            retry_at_ms,
            now_ms
        ],
    )?;
    Ok(changed == 1)
}

/// Outbox items matching `condition` (on `outbox o`; its parameters
/// `?1`, and `?2` the row limit), by destination and age.
fn outbox_items(
    c: &Connection,
    condition: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<OutboxItem>> {
    let mut stmt = c.prepare(&format!(
        "SELECT o.id, o.job_id, o.destination, o.path, o.sop_instance_uid, o.attempts,
                o.created_ms, j.study_instance_uid
         FROM outbox o JOIN jobs j ON j.id = o.job_id
         WHERE {condition}
         ORDER BY o.destination, o.id LIMIT ?2"
    ))?;
    stmt.query_map(params, |r| {
        Ok(OutboxItem {
            id: r.get(0)?,
            job_id: r.get(1)?,
            destination: r.get(2)?,
            path: PathBuf::from(r.get::<_, String>(3)?),
            sop_instance_uid: r.get(4)?,
            attempts: r.get(5)?,
            created_ms: r.get(6)?,
            study_instance_uid: r.get(7)?,
        })
    })?
    .collect()
}

impl Outbox for SqliteCatalog {
    fn due_outbox(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxItem>> {
        self.with("due outbox", |c| {
            outbox_items(
                c,
                "o.state = 'pending' AND o.not_before_ms <= ?1",
                params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
            )
        })
    }

    fn outbox_stored(&self, id: i64, now_ms: i64) -> StoreResult<()> {
        self.with("outbox stored", |c| {
            c.execute(
                "UPDATE outbox SET state = 'stored', attempts = attempts + 1, last_error = NULL,
                    not_before_ms = ?2, updated_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            Ok(())
        })
    }

    fn commitment_due(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxItem>> {
        self.with("commitment due", |c| {
            outbox_items(
                c,
                "o.state IN ('stored', 'committing') AND o.not_before_ms <= ?1",
                params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
            )
        })
    }

    fn commitment_requested(
        &self,
        ids: &[i64],
        transaction_uid: &str,
        deadline_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Vec<i64>> {
        self.with("commitment requested", |c| {
            let tx = c.transaction()?;
            let mut requested = Vec::new();
            for id in ids {
                let changed = tx.execute(
                    "UPDATE outbox SET state = 'committing', commitment_uid = ?2,
                        attempts = attempts + 1, not_before_ms = ?3, updated_ms = ?4
                     WHERE id = ?1 AND state IN ('stored', 'committing')",
                    params![id, transaction_uid, deadline_ms, now_ms],
                )?;
                if changed == 1 {
                    tx.execute(
                        "INSERT INTO outbox_commitments (transaction_uid, outbox_id, requested_ms)
                         VALUES (?1, ?2, ?3)",
                        params![transaction_uid, id, now_ms],
                    )?;
                    requested.push(*id);
                }
            }
            tx.commit()?;
            Ok(requested)
        })
    }

    fn commitment_failed(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.with("commitment failed", |c| {
            outbox_attempt_failed(c, id, "stored", error, retry_at_ms, now_ms, AWAITING)
        })
    }

    fn commitment_refused(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.with("commitment refused", |c| {
            outbox_attempt_failed(c, id, "pending", error, retry_at_ms, now_ms, AWAITING)
        })
    }

    fn in_commitment(&self, transaction_uid: &str) -> StoreResult<Vec<OutboxItem>> {
        self.with("in commitment", |c| {
            outbox_items(
                c,
                "o.state IN ('stored', 'committing') AND o.id IN (
                     SELECT outbox_id FROM outbox_commitments WHERE transaction_uid = ?1)",
                // A transaction names at most a few hundred items.
                params![transaction_uid, 100_000i64],
            )
        })
    }

    fn outbox_committed(&self, id: i64, transaction_uid: &str, now_ms: i64) -> StoreResult<bool> {
        self.with("outbox committed", |c| {
            let changed = c.execute(
                "UPDATE outbox SET state = 'sent', last_error = NULL, committed_ms = ?2,
                    commitment_uid = ?3, updated_ms = ?2
                 WHERE id = ?1 AND state IN ('stored', 'committing')",
                params![id, now_ms, transaction_uid],
            )?;
            Ok(changed == 1)
        })
    }

    fn outbox_sent(&self, id: i64, now_ms: i64) -> StoreResult<()> {
        self.with("outbox sent", |c| {
            c.execute(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, last_error = NULL,
                    updated_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            Ok(())
        })
    }

    fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.with("outbox failed", |c| {
            outbox_attempt_failed(c, id, "pending", error, retry_at_ms, now_ms, "1 = 1").map(|_| ())
        })
    }

    fn deliveries(&self, job_id: i64) -> StoreResult<Vec<Delivery>> {
        self.with("deliveries", |c| {
            let mut stmt = c.prepare(
                "SELECT destination, sop_instance_uid, state, attempts, last_error, updated_ms,
                        commitment_uid, committed_ms
                 FROM outbox WHERE job_id = ?1 ORDER BY id",
            )?;
            stmt.query_map(params![job_id], |r| {
                Ok(Delivery {
                    destination: r.get(0)?,
                    sop_instance_uid: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    last_error: r.get(4)?,
                    updated_at: rfc3339(r.get(5)?),
                    commitment_uid: r.get(6)?,
                    committed_at: r.get::<_, Option<i64>>(7)?.map(rfc3339),
                })
            })?
            .collect()
        })
    }

    fn outbox_status(&self) -> StoreResult<OutboxStatus> {
        self.with("outbox status", |c| {
            let mut status = OutboxStatus::default();
            let mut stmt = c.prepare("SELECT state, count(*) FROM outbox GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                let n = n.max(0).unsigned_abs();
                match state.as_str() {
                    "pending" => status.pending = n,
                    "stored" | "committing" => status.awaiting_commitment += n,
                    "sent" => status.sent = n,
                    _ => status.failed = n,
                }
            }
            Ok(status)
        })
    }
}

impl WebIndex for SqliteCatalog {
    fn web_instances(&self, scope: &WebScope) -> StoreResult<Vec<WebInstance>> {
        let reader = self.web_reader.lock().unwrap_or_else(|p| p.into_inner());
        let run = |c: &Connection| -> rusqlite::Result<Vec<WebInstance>> {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM web_index
                 WHERE (?1 IS NULL OR study_instance_uid = ?1)
                   AND (?2 IS NULL OR series_instance_uid = ?2)
                   AND (?3 IS NULL OR sop_instance_uid = ?3)
                 ORDER BY study_instance_uid, series_instance_uid, stored_ms, sop_instance_uid",
            )?;
            stmt.query_map(
                params![scope.study, scope.series, scope.instance],
                web_from_row,
            )?
            .collect()
        };
        run(&reader).map_err(|source| StoreError::Database {
            path: self.path.clone(),
            operation: "web instances",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewReview, ReviewFilter, ReviewVia, Reviews, Verdict};

    fn instance(study: &str, series: &str, sop: &str) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            modality: Some("MR".into()),
            body_part: Some("BRAIN".into()),
            series_description: Some("T1".into()),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae_title: "PACS".into(),
            path: PathBuf::from(format!("/x/{sop}.dcm")),
            size: 10,
            sha256: "ab".into(),
            attributes: BTreeMap::from([("00100020".into(), "P1".into())]),
        }
    }

    #[test]
    fn instances_stored_at_once_share_a_commit_and_one_that_cannot_be_indexed_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let catalog =
            std::sync::Arc::new(SqliteCatalog::open(&dir.path().join("index.sqlite")).unwrap());
        catalog
            .connection
            .lock()
            .unwrap()
            .execute_batch(
                "CREATE TEMP TRIGGER refuse BEFORE INSERT ON instances
                 WHEN NEW.sop_instance_uid = '1.2.3.bad'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap();
        // Hold the connection as a commit in progress would, until six
        // callers are queued behind it.
        let held = catalog.connection.lock().unwrap();
        let sops = [
            "1.2.3.1",
            "1.2.3.2",
            "1.2.3.bad",
            "1.2.3.4",
            "1.2.3.5",
            "1.2.3.6",
        ];
        let callers: Vec<_> = sops
            .iter()
            .map(|sop| {
                let catalog = catalog.clone();
                let record = instance("1.2", "1.2.3", sop);
                std::thread::spawn(move || catalog.record_instance(&record, 1000))
            })
            .collect();
        while catalog.received.queued() < 6 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        for (sop, caller) in sops.iter().zip(callers) {
            let outcome = caller.join().unwrap();
            if *sop == "1.2.3.bad" {
                let err = outcome.unwrap_err();
                assert!(
                    matches!(&err, StoreError::Index { sop_instance_uid, source: IndexError::Entry(_), .. } if sop_instance_uid == "1.2.3.bad"),
                    "{err:?}"
                );
                let cause = std::error::Error::source(&err).and_then(|e| e.source());
                let cause = cause.map(ToString::to_string).unwrap_or_default();
                assert!(cause.contains("refused by the test"), "{err:?}");
            } else {
                outcome.unwrap();
            }
        }
        // The first writer took what was queued when it started and then
        // waited for the connection; the rest went into one more commit.
        let transactions = catalog.received.transactions();
        assert!((1..=2).contains(&transactions), "{transactions}");
        let indexed: Vec<String> = catalog
            .with("test", |c| {
                c.prepare("SELECT sop_instance_uid FROM instances ORDER BY 1")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap();
        assert_eq!(
            indexed,
            ["1.2.3.1", "1.2.3.2", "1.2.3.4", "1.2.3.5", "1.2.3.6"]
        );
        let web: i64 = catalog
            .with("test", |c| {
                c.query_row("SELECT count(*) FROM web_index", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(web, 5, "the refused instance left nothing behind");
    }

    fn job(series: &str) -> NewJob {
        NewJob {
            rule: "r".into(),
            model: "m".into(),
            series: vec![series.into()],
            destinations: vec!["pacs".into()],
        }
    }

    #[test]
    fn received_instances_lists_the_copy_kept_of_each_by_study_and_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        assert_eq!(SqliteCatalog::schema_version(&path).unwrap(), None);
        let catalog = SqliteCatalog::open(&path).unwrap();
        for (study, series, sop, at) in [
            ("2.1", "2.1.1", "2.1.1.1", 1000),
            ("1.1", "1.1.2", "1.1.2.1", 1001),
            ("1.1", "1.1.1", "1.1.1.1", 1002),
            ("1.1", "1.1.1", "1.1.1.1", 1003),
        ] {
            catalog
                .record_instance(&instance(study, series, sop), at)
                .unwrap();
        }
        let sops: Vec<String> = catalog
            .received_instances()
            .unwrap()
            .into_iter()
            .map(|i| i.sop_instance_uid)
            .collect();
        assert_eq!(sops, ["1.1.1.1", "1.1.2.1", "2.1.1.1"]);
        assert_eq!(
            SqliteCatalog::schema_version(&path).unwrap(),
            Some(CATALOG_SCHEMA_VERSION)
        );
    }

    #[test]
    fn studies_complete_after_quiet_and_late_instances_open_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&dir.path().join("index.sqlite")).unwrap();
        catalog
            .record_instance(&instance("1.1", "1.1.1", "1.1.1.1"), 1000)
            .unwrap();
        catalog
            .record_instance(&instance("1.1", "1.1.1", "1.1.1.2"), 2000)
            .unwrap();
        assert!(
            catalog.stable_studies(1500).unwrap().is_empty(),
            "not quiet yet"
        );
        let stable = catalog.stable_studies(2000).unwrap();
        assert_eq!(stable.len(), 1);
        assert_eq!(stable[0].generation, 0);
        assert_eq!(stable[0].series[0].instances, 2);
        assert_eq!(stable[0].series[0].calling_ae_titles, vec!["PACS"]);
        // An instance arriving between the query and the completion wins.
        catalog
            .record_instance(&instance("1.1", "1.1.1", "1.1.1.3"), 2500)
            .unwrap();
        assert!(
            !catalog
                .complete_study(&stable[0], 2000, &[job("1.1.1")], None, 2600)
                .unwrap()
        );
        let stable = catalog.stable_studies(3000).unwrap();
        assert!(
            catalog
                .complete_study(&stable[0], 3000, &[job("1.1.1")], None, 3000)
                .unwrap()
        );
        let claimed = catalog.claim_job(3000).unwrap().unwrap();
        assert_eq!(catalog.job_instances(&claimed).unwrap().len(), 3);
        assert_eq!(claimed.attempts, 0, "attempts count failures, not claims");
        assert!(catalog.claim_job(3000).unwrap().is_none(), "claimed once");
        // A late instance: a new generation with only itself.
        catalog
            .record_instance(&instance("1.1", "1.1.1", "1.1.1.9"), 9000)
            .unwrap();
        let late = catalog.stable_studies(9000).unwrap();
        assert_eq!(late[0].generation, 1);
        assert_eq!(late[0].series[0].instances, 1);
    }

    /// A catalog as release 0.1.0 (commit 79db11d) left it: its schema,
    /// which is [`SCHEMA`] unchanged, no `user_version`, an instance, a
    /// pending job and one interrupted while running.
    fn release_0_1_0_catalog(path: &Path) {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(BASE).unwrap();
        c.execute_batch(
            "INSERT INTO instances VALUES ('1.2.1.1', '1.2.840.10008.5.1.4.1.1.4', '1.2', '1.2.1',
                 'MR', NULL, NULL, '1.2.840.10008.1.2.1', 'SCU', '/data/studies/1.2/1.2.1/1.2.1.1.dcm',
                 10, 'ab', 0, 5);
             INSERT INTO studies VALUES ('1.2', 'complete', 0, 5, NULL);
             INSERT INTO jobs (study_instance_uid, generation, rule, model, series, destinations,
                 state, attempts, not_before_ms, results, created_ms, updated_ms)
             VALUES ('1.2', 0, 'r', 'm', '[\"1.2.1\"]', '[]', 'pending', 0, 0, '[]', 5, 5),
                    ('1.2', 0, 'r', 'm', '[\"1.2.1\"]', '[]', 'running', 1, 0, '[]', 5, 5),
                    ('1.2', 0, 'r', 'm', '[\"1.2.1\"]', '[]', 'done', 0, 0,
                     '[\"/data/results/1.2/9.1/9.1.1.dcm\"]', 5, 5);
             INSERT INTO web_index VALUES ('9.1.1', '1.2.840.10008.5.1.4.1.1.88.33', '1.2', '9.1',
                 'result', '1.2.840.10008.1.2.1', '/data/results/1.2/9.1/9.1.1.dcm', 10, '{}', 5);",
        )
        .unwrap();
        let version: u32 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0, "0.1.0 wrote no schema version");
    }

    #[test]
    fn a_catalog_of_release_0_1_0_is_migrated_and_keeps_its_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        release_0_1_0_catalog(&path);
        let catalog = SqliteCatalog::open(&path).unwrap();
        let version: u32 = catalog
            .with("test", |c| {
                c.pragma_query_value(None, "user_version", |r| r.get(0))
            })
            .unwrap();
        assert_eq!(version, CATALOG_SCHEMA_VERSION);
        let jobs = catalog.jobs(10).unwrap();
        assert_eq!(jobs.len(), 3, "nothing lost");
        assert!(jobs.iter().all(|j| j.interrupted == 0));
        // Version 3: the result object already stored is linked to the job
        // that made it (from the job's list of result files), so it can be
        // reviewed.
        let done = jobs.iter().find(|j| j.state == JobState::Done).unwrap();
        assert_eq!(catalog.result_job("9.1.1").unwrap(), Some(done.id));
        let results = catalog.job_results(done.id).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].sop_instance_uid, "9.1.1");
        // The interrupted one runs again; then both finish their work.
        let reset = catalog.reset_running_jobs(3, 10).unwrap();
        assert_eq!(reset.requeued.len(), 1);
        let first = catalog.claim_job(20).unwrap().unwrap();
        assert_eq!(catalog.job_instances(&first).unwrap().len(), 1);
        catalog.finish_job(&first, &[], None, 30).unwrap();
        let second = catalog.claim_job(40).unwrap().unwrap();
        assert_eq!(second.interrupted, 1);
        catalog.finish_job(&second, &[], None, 50).unwrap();
        assert!(catalog.claim_job(60).unwrap().is_none());
        drop(catalog);
        // Opening again migrates nothing and keeps the version.
        let catalog = SqliteCatalog::open(&path).unwrap();
        assert!(catalog.migrated().is_none());
        assert_eq!(catalog.jobs(10).unwrap().len(), 3);
    }

    #[test]
    fn a_catalog_newer_than_the_binary_is_refused_by_name_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        drop(SqliteCatalog::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", CATALOG_SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        let error = SqliteCatalog::open(&path).unwrap_err().to_string();
        assert!(
            error.contains(&format!(
                "schema version {} is newer",
                CATALOG_SCHEMA_VERSION + 1
            )),
            "{error}"
        );
    }

    /// Hardening defect 12: attempts were counted when a job was claimed,
    /// so kills and restarts alone took jobs to `max_attempts`. Now they
    /// count apart, and a job that keeps dying is quarantined.
    #[test]
    fn regression_restarts_do_not_use_up_attempts_and_a_job_that_keeps_dying_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let catalog = SqliteCatalog::open(&path).unwrap();
        one_pending_job(&catalog);
        for restart in 1..=3u32 {
            let claimed = catalog.claim_job(0).unwrap();
            assert!(claimed.is_some(), "claimable before restart {restart}");
            assert_eq!(claimed.unwrap().attempts, 0, "no failed attempt");
            let reset = catalog.reset_running_jobs(3, i64::from(restart)).unwrap();
            if restart < 3 {
                assert_eq!(reset.requeued.len(), 1);
            } else {
                assert_eq!(reset.quarantined.len(), 1);
            }
        }
        let jobs = catalog.jobs(10).unwrap();
        assert_eq!(jobs[0].state, JobState::Failed);
        assert_eq!(jobs[0].interrupted, 3);
        assert!(
            jobs[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("quarantined")
        );
        assert!(catalog.claim_job(100).unwrap().is_none());
        // A graceful stop counts nothing.
        assert_eq!(
            catalog.retry_job(jobs[0].id, 200).unwrap(),
            RetryOutcome::JobRequeued
        );
        catalog.claim_job(300).unwrap().unwrap();
        assert_eq!(catalog.release_running_jobs(400).unwrap(), 1);
        let job = catalog.claim_job(500).unwrap().unwrap();
        assert_eq!((job.attempts, job.interrupted), (0, 0));
    }

    /// Hardening defect 10: after a restart with the clock a day earlier,
    /// a study waited about a day in "receiving". Receptions in the future
    /// now count from the present.
    #[test]
    fn regression_a_clock_set_back_does_not_hold_studies_until_it_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&dir.path().join("index.sqlite")).unwrap();
        let day = 86_400_000;
        catalog
            .record_instance(&instance("1.9", "1.9.1", "1.9.1.1"), 10 * day)
            .unwrap();
        // The clock is now a day earlier than the reception.
        let now = 9 * day;
        assert!(catalog.stable_studies(now).unwrap().is_empty());
        assert_eq!(catalog.clamp_future_receptions(now).unwrap(), 1);
        assert_eq!(catalog.clamp_future_receptions(now).unwrap(), 0, "once");
        // Stable one stable age later, not a day later.
        assert!(catalog.stable_studies(now - 1).unwrap().is_empty());
        assert_eq!(catalog.stable_studies(now).unwrap().len(), 1);
    }

    /// One instance of `study` (series `study`.1), complete at `now_ms`,
    /// with `pending` on it.
    fn complete_with(catalog: &SqliteCatalog, study: &str, pending: NewJob, now_ms: i64) {
        let series = format!("{study}.1");
        catalog
            .record_instance(&instance(study, &series, &format!("{series}.1")), 0)
            .unwrap();
        let stable = catalog.stable_studies(0).unwrap();
        catalog
            .complete_study(&stable[0], 0, &[pending], None, now_ms)
            .unwrap();
    }

    /// One instance of study 1.2, complete, with one job pending on it.
    fn one_pending_job(catalog: &SqliteCatalog) {
        complete_with(catalog, "1.2", job("1.2.1"), 0);
    }

    #[test]
    fn jobs_retry_then_fail_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            let catalog = SqliteCatalog::open(&path).unwrap();
            one_pending_job(&catalog);
            let claimed = catalog.claim_job(0).unwrap().unwrap();
            catalog
                .job_attempt_failed(claimed.id, "boom", Some(100), 1)
                .unwrap();
            assert!(
                catalog.claim_job(50).unwrap().is_none(),
                "not before its retry time"
            );
            assert!(catalog.claim_job(100).unwrap().is_some());
            // Crash while running.
        }
        let catalog = SqliteCatalog::open(&path).unwrap();
        let reset = catalog.reset_running_jobs(3, 150).unwrap();
        assert_eq!(reset.requeued.len(), 1);
        let claimed = catalog.claim_job(200).unwrap().unwrap();
        // One failed attempt, one interrupted: they are counted apart.
        assert_eq!((claimed.attempts, claimed.interrupted), (1, 1));
        catalog
            .job_attempt_failed(claimed.id, "still broken", None, 300)
            .unwrap();
        let jobs = catalog.jobs(10).unwrap();
        assert_eq!(jobs[0].state, JobState::Failed);
        assert_eq!(jobs[0].last_error.as_deref(), Some("still broken"));
    }

    /// A catalog with one done job of study 1.3 whose one result (an SR,
    /// 1.9) is queued for two destinations.
    fn one_result_for_two_destinations() -> (tempfile::TempDir, SqliteCatalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&dir.path().join("index.sqlite")).unwrap();
        let mut two = job("1.3.1");
        two.destinations.push("archive".into());
        complete_with(&catalog, "1.3", two, 0);
        let claimed = catalog.claim_job(0).unwrap().unwrap();
        let results = [ResultFile {
            path: PathBuf::from("/r/1.dcm"),
            sop_instance_uid: "1.9".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.22".into(),
            study_instance_uid: "1.3".into(),
            series_instance_uid: "1.3.9".into(),
            origin: Origin::Result,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            size: 1,
            attributes: BTreeMap::new(),
        }];
        catalog.finish_job(&claimed, &results, None, 5).unwrap();
        (dir, catalog)
    }

    #[test]
    fn finished_jobs_fill_the_outbox_per_destination() {
        let (_dir, catalog) = one_result_for_two_destinations();
        // Received and created instances are both served over DICOMweb.
        let web = catalog
            .web_instances(&WebScope {
                study: Some("1.3".into()),
                ..WebScope::default()
            })
            .unwrap();
        assert_eq!(web.len(), 2);
        assert_eq!(web[0].origin, Origin::Received);
        assert_eq!(
            web[0].attributes.get("00100020").map(String::as_str),
            Some("P1")
        );
        assert_eq!(web[1].origin, Origin::Result);
        assert_eq!(web[1].series_instance_uid, "1.3.9");
        assert_eq!(catalog.job_counts().unwrap().get("done"), Some(&1));
        let due = catalog.due_outbox(5, 10).unwrap();
        assert_eq!(due.len(), 2);
        catalog.outbox_sent(due[0].id, 6).unwrap();
        catalog
            .outbox_failed(due[1].id, "refused", Some(1000), 6)
            .unwrap();
        assert!(catalog.due_outbox(999, 10).unwrap().is_empty());
        assert_eq!(catalog.due_outbox(1000, 10).unwrap().len(), 1);
        let status = catalog.outbox_status().unwrap();
        assert_eq!((status.pending, status.sent, status.failed), (1, 1, 0));
    }

    #[test]
    fn stored_items_await_their_commitment_before_they_count_as_sent() {
        let (_dir, catalog) = one_result_for_two_destinations();
        let due = catalog.due_outbox(5, 10).unwrap();
        assert_eq!(due.len(), 2);
        catalog.outbox_stored(due[0].id, 6).unwrap();
        assert!(
            catalog.due_outbox(6, 10).unwrap().len() == 1,
            "stored is not sent again"
        );
        let status = catalog.outbox_status().unwrap();
        assert_eq!((status.awaiting_commitment, status.sent), (1, 0));
        let to_commit = catalog.commitment_due(6, 10).unwrap();
        assert_eq!(
            to_commit.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![due[0].id]
        );
        catalog
            .commitment_requested(&[due[0].id], "2.25.9", 100, 7)
            .unwrap();
        assert!(catalog.commitment_due(99, 10).unwrap().is_empty());
        assert_eq!(
            catalog.commitment_due(100, 10).unwrap().len(),
            1,
            "due again past its deadline"
        );
        assert_eq!(catalog.in_commitment("2.25.9").unwrap().len(), 1);
        assert!(catalog.in_commitment("2.25.8").unwrap().is_empty());
        assert!(
            catalog
                .commitment_failed(due[0].id, "refused", Some(50), 8)
                .unwrap()
        );
        // A report of the earlier transaction still counts while the item
        // awaits its commitment.
        assert_eq!(catalog.in_commitment("2.25.9").unwrap().len(), 1);
        assert_eq!(catalog.commitment_due(50, 10).unwrap().len(), 1);
        assert_eq!(
            catalog
                .commitment_requested(&[due[0].id, due[1].id], "2.25.10", 200, 9)
                .unwrap(),
            vec![due[0].id],
            "only what awaits a commitment is named"
        );
        assert!(catalog.outbox_committed(due[0].id, "2.25.9", 10).unwrap());
        // Once delivered, nothing moves it back.
        assert!(!catalog.outbox_committed(due[0].id, "2.25.10", 11).unwrap());
        assert!(
            !catalog
                .commitment_refused(due[0].id, "late", Some(99), 11)
                .unwrap()
        );
        assert!(
            !catalog
                .commitment_failed(due[0].id, "late", Some(99), 11)
                .unwrap()
        );
        assert!(
            catalog
                .commitment_requested(&[due[0].id], "2.25.11", 300, 12)
                .unwrap()
                .is_empty()
        );
        assert!(catalog.in_commitment("2.25.10").unwrap().is_empty());
        let status = catalog.outbox_status().unwrap();
        assert_eq!((status.awaiting_commitment, status.sent), (0, 1));
        let deliveries = catalog.deliveries(due[0].job_id).unwrap();
        let committed = deliveries
            .iter()
            .find(|d| d.destination == due[0].destination)
            .unwrap();
        assert_eq!(committed.state, "sent");
        assert_eq!(
            committed.commitment_uid.as_deref(),
            Some("2.25.9"),
            "the transaction that committed it"
        );
        assert!(committed.committed_at.is_some());
    }

    #[test]
    fn jobs_are_filtered_retried_and_resubmitted() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&dir.path().join("index.sqlite")).unwrap();
        complete_with(&catalog, "1.4", job("1.4.1"), 10);
        // A late instance in another round: re-analysis covers both.
        catalog
            .record_instance(&instance("1.4", "1.4.2", "1.4.2.1"), 20)
            .unwrap();
        let claimed = catalog.claim_job(10).unwrap().unwrap();
        catalog
            .job_attempt_failed(claimed.id, "broken", None, 11)
            .unwrap();
        let failed = JobFilter {
            state: Some(JobState::Failed),
            ..JobFilter::default()
        };
        assert_eq!(catalog.find_jobs(&failed).unwrap().len(), 1);
        let other_model = JobFilter {
            model: Some("other".into()),
            ..JobFilter::default()
        };
        assert!(catalog.find_jobs(&other_model).unwrap().is_empty());
        let later = JobFilter {
            since_ms: Some(11),
            ..JobFilter::default()
        };
        assert!(catalog.find_jobs(&later).unwrap().is_empty());
        assert_eq!(
            catalog.retry_job(claimed.id, 30).unwrap(),
            RetryOutcome::JobRequeued
        );
        let again = catalog.job(claimed.id).unwrap().unwrap();
        assert_eq!((again.state, again.attempts), (JobState::Pending, 0));
        assert_eq!(
            catalog.retry_job(claimed.id, 31).unwrap(),
            RetryOutcome::NothingFailed
        );
        assert_eq!(catalog.retry_job(999, 31).unwrap(), RetryOutcome::NotFound);
        let whole = NewJob {
            rule: "api".into(),
            model: "m".into(),
            series: Vec::new(),
            destinations: Vec::new(),
        };
        assert_eq!(catalog.submit_job("9.9", &whole, 40).unwrap(), None);
        let id = catalog.submit_job("1.4", &whole, 40).unwrap().unwrap();
        let submitted = catalog.job(id).unwrap().unwrap();
        assert_eq!(catalog.job_instances(&submitted).unwrap().len(), 2);
    }

    fn new_review(job_id: i64, result: &str, verdict: Verdict, reviewer: &str) -> NewReview {
        NewReview {
            job_id,
            result_sop_instance_uid: result.into(),
            verdict,
            label: (verdict == Verdict::Correct).then(|| "glioma".into()),
            comment: None,
            reviewer: reviewer.into(),
            via: ReviewVia::Api,
            authenticated_as: "token".into(),
            source_sop_instance_uid: None,
        }
    }

    #[test]
    fn reviews_are_new_records_a_reviewers_latest_counts_and_an_sr_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let catalog = SqliteCatalog::open(&path).unwrap();
        complete_with(&catalog, "1.4", job("1.4.1"), 0);
        let claimed = catalog.claim_job(0).unwrap().unwrap();
        let result = |sop: &str| ResultFile {
            path: PathBuf::from(format!("/r/{sop}.dcm")),
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.33".into(),
            study_instance_uid: "1.4".into(),
            series_instance_uid: "1.4.9".into(),
            origin: Origin::Result,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            size: 1,
            attributes: BTreeMap::new(),
        };
        catalog
            .finish_job(&claimed, &[result("1.4.9.1"), result("1.4.9.2")], None, 5)
            .unwrap();
        assert_eq!(catalog.result_job("1.4.9.2").unwrap(), Some(claimed.id));
        assert_eq!(catalog.result_job("1.4.1.1").unwrap(), None, "received");
        assert_eq!(catalog.result_job("nothing").unwrap(), None);
        assert_eq!(catalog.job_results(claimed.id).unwrap().len(), 2);

        let first = catalog
            .record_review(
                &new_review(claimed.id, "1.4.9.1", Verdict::Accept, "Dr A"),
                10,
            )
            .unwrap();
        assert!(!first.already_recorded);
        assert_eq!(first.review.supersedes, None);
        assert!(first.review.counts);
        let other = catalog
            .record_review(
                &new_review(claimed.id, "1.4.9.1", Verdict::Reject, "Dr B"),
                11,
            )
            .unwrap();
        assert_eq!(other.review.supersedes, None, "another reviewer");
        let second = catalog
            .record_review(
                &new_review(claimed.id, "1.4.9.1", Verdict::Correct, "Dr A"),
                12,
            )
            .unwrap();
        assert_eq!(second.review.supersedes, Some(first.review.id));
        assert_eq!(second.review.review.label.as_deref(), Some("glioma"));

        let all = catalog
            .reviews(&ReviewFilter {
                job_id: Some(claimed.id),
                ..ReviewFilter::default()
            })
            .unwrap();
        // Nothing was edited: three records, in order; the first no longer
        // counts.
        assert_eq!(
            all.iter()
                .map(|r| (r.review.verdict, r.counts))
                .collect::<Vec<_>>(),
            [
                (Verdict::Accept, false),
                (Verdict::Reject, true),
                (Verdict::Correct, true)
            ]
        );
        let counting = catalog
            .reviews(&ReviewFilter {
                counting_only: true,
                since_ms: Some(11),
                ..ReviewFilter::default()
            })
            .unwrap();
        assert_eq!(counting.len(), 2);

        // A reviewer's SR received twice is one review.
        let mut from_sr = new_review(claimed.id, "1.4.9.2", Verdict::Reject, "Dr C");
        from_sr.via = ReviewVia::Dicom;
        from_sr.source_sop_instance_uid = Some("7.7.7".into());
        let once = catalog.record_review(&from_sr, 20).unwrap();
        let again = catalog.record_review(&from_sr, 21).unwrap();
        assert!(again.already_recorded);
        assert_eq!(again.review, once.review);
        drop(catalog);
        let catalog = SqliteCatalog::open(&path).unwrap();
        let kept = catalog.reviews(&ReviewFilter::default()).unwrap();
        assert_eq!(kept.len(), 4, "durable across a reopen");
        assert_eq!(kept[3].review.via, ReviewVia::Dicom);
        assert_eq!(kept[3].recorded_at, rfc3339(20));
    }
}
