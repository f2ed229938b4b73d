//! Verification of an audit trail: the chain, the checkpoints and the head.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Serialize;

use super::{AuditRecord, Checkpoint, GENESIS};

/// Everything verification looks at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Records in storage order (by sequence number).
    pub records: Vec<AuditRecord>,
    /// Checkpoints stored in the log, by sequence number.
    pub checkpoints: Vec<Checkpoint>,
    /// The head file: the latest checkpoint, kept outside the database.
    /// `Err` holds why it could not be read.
    pub head: Result<Option<Checkpoint>, String>,
    /// After pruning: the signed anchor (sequence number and hash of the
    /// last pruned record) the remaining chain starts from.
    pub anchor: Option<Checkpoint>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether everything verifies.
    pub ok: bool,
    /// Records examined.
    pub records: usize,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: usize,
    /// Sequence number of the first bad record (or of the record where the
    /// log should have continued), when not ok.
    pub first_bad_record: Option<i64>,
    /// Why, in words.
    pub reason: Option<String>,
    /// Records after the last signed checkpoint (chained, not yet signed).
    pub unsigned_tail: usize,
    /// Records whose timestamp is earlier than the one before them (the
    /// clock was set back): the chain may be intact, but time is not
    /// monotonic there. The first 20.
    pub time_went_backwards: Vec<i64>,
}

fn fail(records: usize, verified: usize, seq: i64, reason: String) -> Report {
    Report {
        ok: false,
        records,
        checkpoints_verified: verified,
        first_bad_record: Some(seq),
        reason: Some(reason),
        unsigned_tail: 0,
        time_went_backwards: Vec::new(),
    }
}

fn check_signature(c: &Checkpoint, key: &VerifyingKey) -> Result<(), String> {
    if !c
        .public_key
        .eq_ignore_ascii_case(&hex::encode(key.as_bytes()))
    {
        return Err(format!(
            "checkpoint at record {} was signed by another key ({})",
            c.seq, c.public_key
        ));
    }
    let bytes = hex::decode(&c.signature).map_err(|e| e.to_string())?;
    let signature = Signature::from_slice(&bytes).map_err(|e| e.to_string())?;
    key.verify(
        &Checkpoint::message(c.seq, &c.hash, &c.timestamp),
        &signature,
    )
    .map_err(|_| format!("checkpoint at record {}: signature does not verify", c.seq))
}

/// Verify `snapshot` against the appliance's public key.
pub fn verify(snapshot: &Snapshot, key: &VerifyingKey) -> Report {
    let records = &snapshot.records;
    let n = records.len();
    // 1. The chain, from the start or from the signed prune anchor.
    let (mut previous_hash, mut expected_seq) = match &snapshot.anchor {
        None => (GENESIS.to_string(), 1),
        Some(anchor) => {
            if let Err(reason) = check_signature(anchor, key) {
                return fail(n, 0, anchor.seq + 1, format!("prune anchor: {reason}"));
            }
            (anchor.hash.clone(), anchor.seq + 1)
        }
    };
    let first_seq = expected_seq;
    let mut backwards = Vec::new();
    let mut previous_time: Option<&str> = None;
    for record in records {
        // RFC 3339 UTC with microseconds: text order is time order.
        if previous_time.is_some_and(|t| record.timestamp.as_str() < t) && backwards.len() < 20 {
            backwards.push(record.seq);
        }
        previous_time = Some(record.timestamp.as_str());
        if record.seq != expected_seq {
            let reason = if record.seq > expected_seq {
                format!(
                    "sequence jumps from {} to {}: record {expected_seq} is missing",
                    expected_seq - 1,
                    record.seq
                )
            } else {
                format!(
                    "record {} appears where {expected_seq} was expected (reordered or duplicated)",
                    record.seq
                )
            };
            return fail(n, 0, expected_seq, reason);
        }
        if record.prev_hash != previous_hash {
            return fail(
                n,
                0,
                record.seq,
                format!(
                    "record {} does not follow record {} (previous-hash link broken: reordered, inserted or edited)",
                    record.seq,
                    record.seq - 1
                ),
            );
        }
        if record.compute_hash() != record.hash {
            return fail(
                n,
                0,
                record.seq,
                format!("record {} does not match its hash (edited)", record.seq),
            );
        }
        previous_hash = record.hash.clone();
        expected_seq += 1;
    }
    let hash_of = |seq: i64| -> Option<&str> {
        usize::try_from(seq - first_seq)
            .ok()
            .and_then(|i| records.get(i))
            .map(|r| r.hash.as_str())
    };
    let last_seq = expected_seq - 1;
    // 2. The checkpoints.
    let mut verified = 0;
    let mut last_signed = 0;
    for c in &snapshot.checkpoints {
        if let Err(reason) = check_signature(c, key) {
            return fail(n, verified, c.seq, reason);
        }
        match hash_of(c.seq) {
            None => {
                return fail(
                    n,
                    verified,
                    last_seq + 1,
                    format!(
                        "a signed checkpoint covers record {} but the log ends at record {last_seq} (truncated)",
                        c.seq
                    ),
                );
            }
            Some(h) if h != c.hash => {
                return fail(
                    n,
                    verified,
                    c.seq,
                    format!(
                        "record {} differs from what its signed checkpoint says (chain rewritten)",
                        c.seq
                    ),
                );
            }
            Some(_) => {}
        }
        verified += 1;
        last_signed = last_signed.max(c.seq);
    }
    // 3. The head, kept outside the database.
    let head = match &snapshot.head {
        Err(reason) => {
            return fail(
                n,
                verified,
                last_seq + 1,
                format!("head file unreadable: {reason}"),
            );
        }
        Ok(None) if n > 0 => {
            return fail(
                n,
                verified,
                1,
                "head file missing although the log has records (log replaced or head deleted)"
                    .into(),
            );
        }
        Ok(None) => None,
        Ok(Some(head)) => Some(head),
    };
    if let Some(head) = head {
        if let Err(reason) = check_signature(head, key) {
            return fail(n, verified, head.seq, format!("head: {reason}"));
        }
        match hash_of(head.seq) {
            None => {
                return fail(
                    n,
                    verified,
                    last_seq + 1,
                    format!(
                        "the signed head covers record {} but the log ends at record {last_seq} (tail truncated)",
                        head.seq
                    ),
                );
            }
            Some(h) if h != head.hash => {
                return fail(
                    n,
                    verified,
                    head.seq,
                    format!(
                        "record {} differs from the signed head (chain rewritten)",
                        head.seq
                    ),
                );
            }
            Some(_) => {}
        }
        if head.seq < last_signed {
            return fail(
                n,
                verified,
                head.seq,
                format!(
                    "the head file is older than the latest checkpoint in the log ({} < {last_signed}): head rolled back",
                    head.seq
                ),
            );
        }
        last_signed = last_signed.max(head.seq);
    }
    Report {
        ok: true,
        records: n,
        checkpoints_verified: verified,
        first_bad_record: None,
        reason: None,
        unsigned_tail: usize::try_from(last_seq - last_signed).unwrap_or(0),
        time_went_backwards: backwards,
    }
}

/// [`verify`], then check the log against copies of signed checkpoints
/// kept outside the appliance (the syslog repository, a backup of
/// `audit-head.json`): each must verify and name a record the log has,
/// with that hash. A log truncated or rolled back behind such a copy fails,
/// whatever its own head says.
pub fn verify_against(snapshot: &Snapshot, key: &VerifyingKey, outside: &[Checkpoint]) -> Report {
    let report = verify(snapshot, key);
    if !report.ok {
        return report;
    }
    let n = snapshot.records.len();
    for c in outside {
        if let Err(reason) = check_signature(c, key) {
            return fail(
                n,
                report.checkpoints_verified,
                c.seq,
                format!("outside copy: {reason}"),
            );
        }
        let last_seq = snapshot.records.last().map(|r| r.seq).unwrap_or(0);
        match snapshot.records.iter().find(|r| r.seq == c.seq) {
            Some(r) if r.hash == c.hash => {}
            Some(_) => {
                return fail(
                    n,
                    report.checkpoints_verified,
                    c.seq,
                    format!(
                        "record {} differs from an outside copy of its signed checkpoint (chain rewritten)",
                        c.seq
                    ),
                );
            }
            None if snapshot.anchor.as_ref().is_some_and(|a| c.seq <= a.seq) => {}
            None => {
                return fail(
                    n,
                    report.checkpoints_verified,
                    last_seq + 1,
                    format!(
                        "an outside copy of a signed checkpoint covers record {} but the log ends at record {last_seq} (truncated, or an older backup restored)",
                        c.seq
                    ),
                );
            }
        }
    }
    report
}
