//! The embedded audit log: `audit.sqlite` (WAL, `synchronous=FULL`) in the
//! data directory, and the head file `audit-head.json` beside it. Appends
//! take the database's write lock and read the last record inside the
//! transaction, so several processes (`vigie serve`, `vigie audit export`)
//! extend one chain. Within a process, appends share commits (group
//! commit): one caller at a time writes everything queued in one
//! transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::{Signer, SigningKey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::verify::Snapshot;
use super::{
    AuditError, AuditEvent, AuditLog, AuditRecord, AuditResult, Checkpoint, GENESIS, GIT_COMMIT,
    Query, SOFTWARE_VERSION, timestamp,
};
use vigie_durable::GroupCommit;

const BASE: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq                INTEGER PRIMARY KEY,
    timestamp          TEXT NOT NULL,
    appliance          TEXT NOT NULL,
    software_version   TEXT NOT NULL,
    git_commit         TEXT NOT NULL,
    kind               TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    study_instance_uid TEXT,
    sop_instance_uid   TEXT,
    model_id           TEXT,
    model_version      TEXT,
    details            TEXT NOT NULL,
    prev_hash          TEXT NOT NULL,
    hash               TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_time ON records (timestamp);
CREATE INDEX IF NOT EXISTS records_study ON records (study_instance_uid);
CREATE INDEX IF NOT EXISTS records_model ON records (model_id, model_version);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, outcome);
CREATE TABLE IF NOT EXISTS anchor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    timestamp  TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq        INTEGER PRIMARY KEY,
    hash       TEXT NOT NULL,
    timestamp  TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
";

/// The audit trail's schema: version 1 is release 0.1.0's.
const SCHEMA: vigie_durable::Schema<'static> = vigie_durable::Schema {
    what: "audit trail",
    base: BASE,
    migrations: &[],
};

/// The schema version this release writes.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

/// File names in the data directory.
pub const DATABASE: &str = "audit.sqlite";
/// The head file.
pub const HEAD: &str = "audit-head.json";

/// The SQLite audit log.
pub struct SqliteAudit {
    path: PathBuf,
    head: PathBuf,
    connection: Mutex<Connection>,
    /// Appends waiting to be written (group commit: see `append_all`).
    queue: GroupCommit<AuditEvent, AuditRecord, AuditError>,
    migrated: Option<vigie_durable::Migration>,
    key: SigningKey,
    appliance: String,
    checkpoint_every: i64,
}

impl std::fmt::Debug for SqliteAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAudit")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.get("seq")?,
        timestamp: row.get("timestamp")?,
        appliance: row.get("appliance")?,
        software_version: row.get("software_version")?,
        git_commit: row.get("git_commit")?,
        kind: row.get("kind")?,
        outcome: row.get("outcome")?,
        study_instance_uid: row.get("study_instance_uid")?,
        sop_instance_uid: row.get("sop_instance_uid")?,
        model_id: row.get("model_id")?,
        model_version: row.get("model_version")?,
        details: row.get("details")?,
        prev_hash: row.get("prev_hash")?,
        hash: row.get("hash")?,
    })
}

/// (sequence number, hash) of the last record, inside a transaction.
fn last_record(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Option<(i64, String)>> {
    tx.query_row(
        "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// The last record a checkpoint covers (0 for none).
fn last_checkpoint(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row("SELECT coalesce(max(seq), 0) FROM checkpoints", [], |r| {
        r.get(0)
    })
}

fn checkpoint_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: row.get(0)?,
        hash: row.get(1)?,
        timestamp: row.get(2)?,
        public_key: row.get(3)?,
        signature: row.get(4)?,
    })
}

impl SqliteAudit {
    /// Open (creating) the audit log in `data_dir`, signing with `key`, a
    /// checkpoint every `checkpoint_every` records.
    pub fn open(
        data_dir: &Path,
        appliance: &str,
        key: SigningKey,
        checkpoint_every: u32,
    ) -> AuditResult<Self> {
        let path = data_dir.join(DATABASE);
        let opened = vigie_durable::open_versioned(&path, &SCHEMA)?;
        let connection = Mutex::new(opened.connection);
        Ok(Self {
            head: data_dir.join(HEAD),
            path,
            connection,
            queue: GroupCommit::default(),
            migrated: opened.migrated,
            key,
            appliance: appliance.into(),
            checkpoint_every: i64::from(checkpoint_every.max(1)),
        })
    }

    /// The public key (hex) that verifies this log's checkpoints.
    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The schema migration done at open, if any.
    pub fn migrated(&self) -> Option<vigie_durable::Migration> {
        self.migrated
    }

    fn db_err(&self, operation: &'static str) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
        move |source| AuditError::Database {
            path: self.path.clone(),
            operation,
            source,
        }
    }

    fn head_err(&self, operation: &'static str) -> impl Fn(std::io::Error) -> AuditError + '_ {
        move |source| AuditError::Head {
            path: self.head.clone(),
            operation,
            source,
        }
    }

    /// Append `events` in one transaction on `connection` (one fsync).
    fn write(
        &self,
        connection: &mut Connection,
        events: &[&AuditEvent],
    ) -> AuditResult<Vec<AuditRecord>> {
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err("append"))?;
        let last = last_record(&tx).map_err(self.db_err("append"))?;
        let (mut seq, mut prev_hash) = match last {
            Some((seq, hash)) => (seq, hash),
            None => (0, GENESIS.to_string()),
        };
        let mut written = Vec::with_capacity(events.len());
        let mut previous_time = newest_timestamp(&tx).map_err(self.db_err("append"))?;
        for event in events {
            seq += 1;
            let now = timestamp();
            // A clock set back: the record keeps its real (earlier) time,
            // says so in its details, and raises the alarm metric.
            let mut details = event.details.clone();
            if let Some(previous) = previous_time.as_deref()
                && now.as_str() < previous
            {
                super::note_clock_went_back(previous, &now);
                if let Some(object) = details.as_object_mut() {
                    object.insert("clock_went_back_from".into(), previous.into());
                }
            }
            previous_time = Some(now.clone());
            let mut record = AuditRecord {
                seq,
                timestamp: now,
                appliance: self.appliance.clone(),
                software_version: SOFTWARE_VERSION.into(),
                git_commit: GIT_COMMIT.into(),
                kind: event.kind.as_str().into(),
                outcome: event.outcome.clone(),
                study_instance_uid: event.study_instance_uid.clone(),
                sop_instance_uid: event.sop_instance_uid.clone(),
                model_id: event.model_id.clone(),
                model_version: event.model_version.clone(),
                details: details.to_string(),
                prev_hash: prev_hash.clone(),
                hash: String::new(),
            };
            record.hash = record.compute_hash();
            tx.execute(
                "INSERT INTO records (seq, timestamp, appliance, software_version, git_commit,
                    kind, outcome, study_instance_uid, sop_instance_uid, model_id,
                    model_version, details, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    record.seq,
                    record.timestamp,
                    record.appliance,
                    record.software_version,
                    record.git_commit,
                    record.kind,
                    record.outcome,
                    record.study_instance_uid,
                    record.sop_instance_uid,
                    record.model_id,
                    record.model_version,
                    record.details,
                    record.prev_hash,
                    record.hash
                ],
            )
            .map_err(self.db_err("append"))?;
            prev_hash = record.hash.clone();
            written.push(record);
        }
        let last_checkpoint = last_checkpoint(&tx).map_err(self.db_err("append"))?;
        let mut checkpoint =
            (seq - last_checkpoint >= self.checkpoint_every).then(|| self.sign(seq, &prev_hash));
        // A head that disagrees with the log is never overwritten: the
        // records are kept, unsigned, until an operator decides.
        if checkpoint.is_some()
            && let Some(reason) = self.head_problem_on(&tx)?
        {
            tracing::error!(%reason, "audit head disagrees with the log: no checkpoint signed");
            checkpoint = None;
        }
        if let Some(c) = &checkpoint {
            Self::insert_checkpoint(&tx, c).map_err(self.db_err("append"))?;
        }
        tx.commit().map_err(self.db_err("append"))?;
        if let Some(c) = &checkpoint {
            self.write_head(c)?;
        }
        Ok(written)
    }

    fn sign(&self, seq: i64, hash: &str) -> Checkpoint {
        let timestamp = timestamp();
        let signature = self.key.sign(&Checkpoint::message(seq, hash, &timestamp));
        Checkpoint {
            seq,
            hash: hash.into(),
            timestamp,
            public_key: self.public_key(),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    fn write_head(&self, checkpoint: &Checkpoint) -> AuditResult<()> {
        vigie_durable::file::write_durably(&self.head, |w| {
            serde_json::to_writer_pretty(&mut *w, checkpoint).map_err(std::io::Error::other)
        })
        .map_err(self.head_err("write"))
    }

    fn insert_checkpoint(tx: &rusqlite::Transaction<'_>, c: &Checkpoint) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO checkpoints (seq, hash, timestamp, public_key, signature)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![c.seq, c.hash, c.timestamp, c.public_key, c.signature],
        )?;
        Ok(())
    }

    fn read_head(&self) -> std::io::Result<Option<Checkpoint>> {
        match std::fs::read_to_string(&self.head) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl SqliteAudit {
    fn head_problem_on(&self, tx: &rusqlite::Transaction<'_>) -> AuditResult<Option<String>> {
        let head = match self.read_head() {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(reason) => return Ok(Some(format!("head file unreadable: {reason}"))),
        };
        let last = last_record(tx).map_err(self.db_err("read the head"))?;
        let last_seq = last.map(|(seq, _)| seq).unwrap_or(0);
        if head.seq > last_seq {
            return Ok(Some(format!(
                "the signed head covers record {} but the log ends at record {last_seq} (tail truncated, or an older backup restored)",
                head.seq
            )));
        }
        let hash: Option<String> = tx
            .query_row(
                "SELECT hash FROM records WHERE seq = ?1",
                params![head.seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db_err("read the head"))?;
        Ok(match hash {
            Some(h) if h != head.hash => Some(format!(
                "record {} differs from the signed head (chain rewritten, or another log restored)",
                head.seq
            )),
            // Pruned behind the anchor, or the same record: agrees.
            _ => None,
        })
    }
}

fn newest_timestamp(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Option<String>> {
    tx.query_row(
        "SELECT timestamp FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

impl AuditLog for SqliteAudit {
    fn newest_timestamp(&self) -> AuditResult<Option<String>> {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction().map_err(self.db_err("read"))?;
        newest_timestamp(&tx).map_err(self.db_err("read"))
    }

    fn head_problem(&self) -> AuditResult<Option<String>> {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction().map_err(self.db_err("read the head"))?;
        self.head_problem_on(&tx)
    }

    fn current_head(&self) -> AuditResult<Option<Checkpoint>> {
        self.read_head().map_err(self.head_err("read"))
    }

    fn supersede_head(&self) -> AuditResult<Option<(Checkpoint, std::path::PathBuf)>> {
        let Ok(Some(head)) = self.read_head() else {
            return Ok(None);
        };
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        let aside = self
            .head
            .with_file_name(format!("audit-head.superseded-{stamp}.json"));
        std::fs::rename(&self.head, &aside).map_err(self.head_err("move aside"))?;
        if let Some(dir) = aside.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.head_err("move aside"))?;
        }
        Ok(Some((head, aside)))
    }

    fn append(&self, event: &AuditEvent) -> AuditResult<AuditRecord> {
        let mut records = self.append_all(std::slice::from_ref(event))?;
        records.pop().ok_or_else(|| AuditError::Append {
            path: self.path.clone(),
            source: vigie_durable::CommitError::Outputs { got: 0, items: 1 },
        })
    }

    /// Group commit ([`GroupCommit`]): a caller returns only once its own
    /// records are durable, with its records in its order, and callers that
    /// queued while a commit was in progress share the next one.
    fn append_all(&self, events: &[AuditEvent]) -> AuditResult<Vec<AuditRecord>> {
        self.queue
            .submit(events.to_vec(), |all| {
                let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
                self.write(&mut connection, all)
            })
            .map_err(|source| AuditError::Append {
                path: self.path.clone(),
                source,
            })
    }

    fn checkpoint(&self) -> AuditResult<Option<Checkpoint>> {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err("checkpoint"))?;
        let last = last_record(&tx).map_err(self.db_err("checkpoint"))?;
        let Some((seq, hash)) = last else {
            return Ok(None);
        };
        // Never overwrite a head that is ahead of the log or disagrees
        // with it: it is the only witness of a truncated tail.
        if let Some(reason) = self.head_problem_on(&tx)? {
            return Err(AuditError::HeadDisagrees {
                head: self.head.clone(),
                reason,
            });
        }
        let covered = last_checkpoint(&tx).map_err(self.db_err("checkpoint"))?;
        if covered >= seq
            && self
                .read_head()
                .ok()
                .flatten()
                .is_some_and(|h| h.seq >= seq)
        {
            return Ok(None);
        }
        let checkpoint = self.sign(seq, &hash);
        Self::insert_checkpoint(&tx, &checkpoint).map_err(self.db_err("checkpoint"))?;
        tx.commit().map_err(self.db_err("checkpoint"))?;
        self.write_head(&checkpoint)?;
        Ok(Some(checkpoint))
    }

    fn prune(&self, before: &str) -> AuditResult<Option<(i64, usize)>> {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err("prune"))?;
        // The end of the leading run of records older than the cutoff,
        // never the last record: a record after the first one newer than
        // the cutoff stays, whatever its time says (a clock set back makes
        // recent records look old).
        let found: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM records WHERE timestamp < ?1
                   AND seq < (SELECT max(seq) FROM records)
                   AND seq < coalesce((SELECT min(seq) FROM records WHERE timestamp >= ?1),
                                      (SELECT max(seq) FROM records))
                 ORDER BY seq DESC LIMIT 1",
                params![before],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db_err("prune"))?;
        let Some((seq, hash)) = found else {
            return Ok(None);
        };
        let anchor = self.sign(seq, &hash);
        let removed = tx
            .execute("DELETE FROM records WHERE seq <= ?1", params![seq])
            .map_err(self.db_err("prune"))?;
        tx.execute("DELETE FROM checkpoints WHERE seq <= ?1", params![seq])
            .map_err(self.db_err("prune"))?;
        tx.execute(
            "INSERT OR REPLACE INTO anchor (id, seq, hash, timestamp, public_key, signature)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                anchor.seq,
                anchor.hash,
                anchor.timestamp,
                anchor.public_key,
                anchor.signature
            ],
        )
        .map_err(self.db_err("prune"))?;
        tx.commit().map_err(self.db_err("prune"))?;
        Ok(Some((seq, removed)))
    }

    fn records(&self, query: &Query) -> AuditResult<Vec<AuditRecord>> {
        let guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let mut sql = String::from("SELECT * FROM records WHERE 1 = 1");
        let mut values: Vec<String> = Vec::new();
        let mut filter = |column: &str, op: &str, value: &Option<String>| {
            if let Some(v) = value {
                values.push(v.clone());
                sql.push_str(&format!(" AND {column} {op} ?{}", values.len()));
            }
        };
        filter("timestamp", ">=", &query.from);
        filter("timestamp", "<", &query.to);
        filter("kind", "=", &query.kind);
        filter("study_instance_uid", "=", &query.study_instance_uid);
        filter("model_id", "=", &query.model_id);
        filter("model_version", "=", &query.model_version);
        filter("outcome", "=", &query.outcome);
        filter("seq", ">", &query.after_seq.map(|s| s.to_string()));
        sql.push_str(" ORDER BY seq");
        if let Some(limit) = query.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = guard.prepare(&sql).map_err(self.db_err("query"))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values.iter()), record_from_row)
            .map_err(self.db_err("query"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.db_err("query"))
    }

    fn snapshot(&self) -> AuditResult<Snapshot> {
        let records = self.records(&Query::default())?;
        let guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = guard
            .prepare(
                "SELECT seq, hash, timestamp, public_key, signature FROM checkpoints ORDER BY seq",
            )
            .map_err(self.db_err("read for verification"))?;
        let checkpoints = stmt
            .query_map([], checkpoint_from_row)
            .map_err(self.db_err("read for verification"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.db_err("read for verification"))?;
        let anchor = guard
            .query_row(
                "SELECT seq, hash, timestamp, public_key, signature FROM anchor WHERE id = 1",
                [],
                checkpoint_from_row,
            )
            .optional()
            .map_err(self.db_err("read for verification"))?;
        Ok(Snapshot {
            records,
            checkpoints,
            head: self.read_head().map_err(|e| e.to_string()),
            anchor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;
    use crate::verify::verify;

    fn log(dir: &Path, every: u32) -> SqliteAudit {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        SqliteAudit::open(dir, "test", key, every).unwrap()
    }

    fn fill(audit: &SqliteAudit, n: usize) {
        for i in 0..n {
            audit
                .append(
                    &AuditEvent::new(
                        EventKind::InstanceStored,
                        "ok",
                        serde_json::json!({ "i": i }),
                    )
                    .instance(Some("1.2"), Some(&format!("1.2.{i}"))),
                )
                .unwrap();
        }
    }

    #[test]
    fn appends_that_wait_behind_a_commit_share_the_next_one_and_keep_their_order() {
        // fill() queues one append: 9 queued once the eight callers have.
        let dir = tempfile::tempdir().unwrap();
        let audit = std::sync::Arc::new(log(dir.path(), 1000));
        fill(&audit, 1);
        let before = audit.queue.transactions();
        assert_eq!(before, 1);
        // Hold the connection as a commit in progress would, until eight
        // callers are queued behind it.
        let held = audit.connection.lock().unwrap();
        let callers: Vec<_> = (0..8)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    let events: Vec<AuditEvent> = (0..3)
                        .map(|i| {
                            AuditEvent::new(
                                EventKind::InstanceStored,
                                "ok",
                                serde_json::json!({ "t": t, "i": i }),
                            )
                        })
                        .collect();
                    audit.append_all(&events).unwrap()
                })
            })
            .collect();
        let queued = |a: &SqliteAudit| a.queue.queued();
        while queued(&audit) < 9 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        let mut seqs = Vec::new();
        for caller in callers {
            let records = caller.join().unwrap();
            // Each caller gets its own three records, in its order, adjacent.
            assert_eq!(records.len(), 3);
            let details = |r: &AuditRecord| -> serde_json::Value {
                serde_json::from_str(&r.details).unwrap()
            };
            let t = details(&records[0])["t"].clone();
            for (i, r) in records.iter().enumerate() {
                assert_eq!(details(r)["i"], i);
                assert_eq!(details(r)["t"], t);
            }
            assert_eq!(records[2].seq, records[0].seq + 2);
            seqs.extend(records.iter().map(|r| r.seq));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (2..=25).collect::<Vec<i64>>());
        // The first writer took what was queued when it started (its own
        // events at least) and then waited for the connection; everything
        // queued meanwhile went into one more transaction: 24 records in at
        // most two, and the chain holds.
        let after = audit.queue.transactions();
        assert!(
            (1..=2).contains(&(after - before)),
            "{} transactions",
            after - before
        );
        audit.checkpoint().unwrap();
        let report = verdict(dir.path());
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 25);
    }

    fn sql(dir: &Path, statement: &str) {
        let c = Connection::open(dir.join(DATABASE)).unwrap();
        c.execute_batch(statement).unwrap();
    }

    fn verdict(dir: &Path) -> crate::verify::Report {
        let audit = log(dir, 4);
        verify(&audit.snapshot().unwrap(), &audit.key.verifying_key())
    }

    #[test]
    fn an_untouched_log_verifies_and_records_are_queryable() {
        let dir = tempfile::tempdir().unwrap();
        let audit = log(dir.path(), 4);
        fill(&audit, 10);
        audit.checkpoint().unwrap();
        let report = verdict(dir.path());
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 10);
        assert_eq!(report.checkpoints_verified, 3, "at 4, 8 and 10");
        assert_eq!(report.unsigned_tail, 0);
        let stored = audit
            .records(&Query {
                kind: Some("instance_stored".into()),
                ..Query::default()
            })
            .unwrap();
        assert_eq!(stored.len(), 10);
        assert_eq!(stored[3].sop_instance_uid.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_the_right_record() {
        let cases: &[(&str, i64, &str)] = &[
            (
                "UPDATE records SET outcome = 'refused' WHERE seq = 5",
                5,
                "edited",
            ),
            ("DELETE FROM records WHERE seq = 6", 6, "missing"),
            (
                "UPDATE records SET seq = -1 WHERE seq = 3; UPDATE records SET seq = 3 WHERE seq = 4; UPDATE records SET seq = 4 WHERE seq = -1",
                3,
                "previous-hash",
            ),
            ("DELETE FROM records WHERE seq >= 9", 9, "truncated"),
        ];
        for (statement, seq, words) in cases {
            let dir = tempfile::tempdir().unwrap();
            fill(&log(dir.path(), 4), 10);
            log(dir.path(), 4).checkpoint().unwrap();
            sql(dir.path(), statement);
            let report = verdict(dir.path());
            assert!(!report.ok, "{statement}");
            assert_eq!(
                report.first_bad_record,
                Some(*seq),
                "{statement}: {report:?}"
            );
            assert!(
                report.reason.as_deref().unwrap().contains(words),
                "{statement}: {report:?}"
            );
        }
    }

    #[test]
    fn a_chain_rewritten_without_the_key_is_found() {
        let dir = tempfile::tempdir().unwrap();
        fill(&log(dir.path(), 4), 10);
        // Rewrite record 2 and re-chain everything after it, as someone
        // without the signing key could.
        let c = Connection::open(dir.path().join(DATABASE)).unwrap();
        let mut records: Vec<AuditRecord> = {
            let mut stmt = c.prepare("SELECT * FROM records ORDER BY seq").unwrap();
            stmt.query_map([], record_from_row)
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        records[1].outcome = "refused".into();
        let mut prev = GENESIS.to_string();
        for r in &mut records {
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            c.execute(
                "UPDATE records SET outcome = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
                params![r.seq, r.outcome, r.prev_hash, r.hash],
            )
            .unwrap();
        }
        let report = verdict(dir.path());
        assert!(!report.ok);
        assert_eq!(report.first_bad_record, Some(4), "{report:?}");
        assert!(report.reason.unwrap().contains("rewritten"));
        // Deleting the checkpoints too still leaves the head file.
        sql(dir.path(), "DELETE FROM checkpoints");
        let report = verdict(dir.path());
        assert!(!report.ok);
        assert!(report.reason.unwrap().contains("head"));
    }

    #[test]
    fn pruning_keeps_the_rest_verifiable_and_a_forged_prune_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let audit = log(dir.path(), 4);
        fill(&audit, 10);
        let cutoff = audit.records(&Query::default()).unwrap()[5]
            .timestamp
            .clone();
        assert_eq!(audit.prune(&cutoff).unwrap(), Some((5, 5)));
        fill(&audit, 1);
        audit.checkpoint().unwrap();
        let report = verdict(dir.path());
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 6);
        // Removing the anchor (hiding a deletion) is found.
        sql(dir.path(), "DELETE FROM anchor");
        let report = verdict(dir.path());
        assert!(!report.ok);
        assert_eq!(report.first_bad_record, Some(1), "{report:?}");
    }

    #[test]
    fn another_process_appending_extends_the_same_chain() {
        let dir = tempfile::tempdir().unwrap();
        let a = log(dir.path(), 100);
        let b = log(dir.path(), 100);
        fill(&a, 2);
        fill(&b, 2);
        fill(&a, 1);
        a.checkpoint().unwrap();
        let report = verdict(dir.path());
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 5);
    }
}
