//! `vigie audit verify|export|public-key`: check and read an appliance's
//! audit trail, from its data directory (the service may be running or
//! stopped). Reading the trail is itself recorded in it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use sha2::Digest;

use crate::cli::{AuditCommand, ExportArgs, ExportFormat, QueryArgs};
use crate::config::Config;
use vigie_audit::sqlite::{DATABASE, SqliteAudit};
use vigie_audit::{AuditEvent, AuditLog, EventKind, Query, SIGNING_KEY_FILE, keys};

pub(crate) fn data_dir(config: &Config, over: Option<&PathBuf>) -> PathBuf {
    over.cloned()
        .unwrap_or_else(|| config.appliance.data_dir.clone())
}

/// Open an existing audit log (never creates one or its key).
pub(crate) fn open_existing(config: &Config, dir: &Path) -> anyhow::Result<SqliteAudit> {
    if !dir.join(DATABASE).is_file() {
        bail!("no audit log in {} ({DATABASE} missing)", dir.display());
    }
    let key_path = dir.join(SIGNING_KEY_FILE);
    if !key_path.is_file() {
        bail!(
            "{} missing: cannot sign the record of this access",
            key_path.display()
        );
    }
    let key = keys::signing_key(&key_path)?;
    Ok(SqliteAudit::open(
        dir,
        &config.appliance.id,
        key,
        config.audit.checkpoint_every,
    )?)
}

/// Append the record of this access, and forward it like the service does.
pub(crate) fn record_access(
    config: &Config,
    audit: &SqliteAudit,
    event: AuditEvent,
) -> anyhow::Result<()> {
    let record = audit.append(&event)?;
    if let Some(target) = &config.audit.syslog {
        vigie_audit::syslog::Forwarder::new(target)
            .with_context(|| format!("syslog forwarding to {target}"))?
            .send(&record);
    }
    Ok(())
}

/// Who runs this command, for the record.
pub(crate) fn who() -> String {
    let uid = rustix::process::getuid().as_raw();
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("{user} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}

pub fn run(config: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            data_dir: over,
            public_key,
            checkpoints,
            json,
        } => {
            let dir = data_dir(config, over.as_ref());
            let audit = open_existing(config, &dir)?;
            let key = match &public_key {
                Some(hex) => {
                    keys::verifying_key(hex).map_err(|e| anyhow::anyhow!("--public-key: {e}"))?
                }
                None => keys::verifying_key(&audit.public_key())
                    .map_err(|e| anyhow::anyhow!("appliance key: {e}"))?,
            };
            let outside = checkpoints
                .iter()
                .map(|path| {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("--checkpoint {}", path.display()))?;
                    serde_json::from_str::<vigie_audit::Checkpoint>(text.trim()).with_context(
                        || format!("--checkpoint {}: not a signed checkpoint", path.display()),
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let report = vigie_audit::verify::verify_against(&audit.snapshot()?, &key, &outside);
            // The verification itself goes on record, after the check and before
            // its result is printed: when the record cannot be written (a full
            // disk), the command fails without having printed "OK".
            record_access(
                config,
                &audit,
                AuditEvent::new(
                    EventKind::AuditAccessed,
                    if report.ok {
                        "verified"
                    } else {
                        "verification_failed"
                    },
                    serde_json::json!({
                        "who": who(),
                        "what": "verify",
                        "records": report.records,
                        "first_bad_record": report.first_bad_record,
                        "reason": report.reason,
                        "outside_checkpoints": outside.len(),
                        "time_went_backwards": report.time_went_backwards,
                        "public_key": hex::encode(key.as_bytes()),
                    }),
                ),
            )?;
            if !json && !report.time_went_backwards.is_empty() {
                println!(
                    "warning: time goes backwards at record(s) {:?} (the clock was set back; records stay in sequence order)",
                    report.time_went_backwards
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.ok {
                println!(
                    "audit trail OK: {} records, {} signed checkpoints verified, {} records after the last checkpoint",
                    report.records, report.checkpoints_verified, report.unsigned_tail
                );
            } else {
                println!(
                    "audit trail NOT OK at record {}: {}",
                    report.first_bad_record.unwrap_or(0),
                    report.reason.as_deref().unwrap_or("")
                );
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::AcceptRestore {
            data_dir: over,
            reason,
        } => {
            let dir = data_dir(config, over.as_ref());
            // The keys must be those of this trail: never created here.
            drop(open_existing(config, &dir)?);
            let _lock = vigie_store::layout::DataDirLock::acquire(&dir)?;
            let audit = vigie_audit::Audit::open(&dir, &config.appliance.id, &config.audit)?;
            if audit.check_head().is_ok() {
                println!("the audit head agrees with the log: nothing to accept");
                return Ok(ExitCode::SUCCESS);
            }
            let record = audit.accept_restore(&reason, serde_json::json!(who()))?;
            println!(
                "accepted: record {} (audit_restore_accepted) holds the superseded head; a new checkpoint is signed",
                record.seq
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::PublicKey { data_dir: over } => {
            let dir = data_dir(config, over.as_ref());
            let key = keys::signing_key_existing(&dir.join(SIGNING_KEY_FILE))?;
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export(args) => export(config, args),
        AuditCommand::Query(args) => query(config, args),
    }
}

/// Accept a date (`2026-11-22`) or an RFC 3339 time.
pub(crate) fn time_bound(text: &str) -> anyhow::Result<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0).context("midnight")?.and_utc();
        return Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    bail!("{text:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time")
}

fn export(config: &Config, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir(config, args.data_dir.as_ref());
    let audit = open_existing(config, &dir)?;
    let query = Query {
        from: args.from.as_deref().map(time_bound).transpose()?,
        to: args.to.as_deref().map(time_bound).transpose()?,
        kind: Some("inference".into()),
        outcome: Some("ok".into()),
        model_id: args.model.clone(),
        ..Query::default()
    };
    let mut all = Vec::new();
    let mut validation = 0;
    for record in audit.records(&query)? {
        if vigie_audit::export::purpose(&record)? == vigie_audit::export::Purpose::Validation {
            validation += 1;
            if !args.include_validation {
                continue;
            }
        }
        all.extend(vigie_audit::export::rows(&record)?);
    }
    let text = match args.format {
        ExportFormat::Jsonl => vigie_audit::export::to_jsonl(&all),
        ExportFormat::Csv => vigie_audit::export::to_csv(&all),
    };
    match &args.out {
        Some(path) => vigie_dicom_io::write::write_durably(path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    record_access(
        config,
        &audit,
        AuditEvent::new(
            EventKind::AuditAccessed,
            "exported",
            serde_json::json!({
                "who": who(),
                "what": "export",
                "from": query.from,
                "to": query.to,
                "model": args.model,
                "format": match args.format { ExportFormat::Jsonl => "jsonl", ExportFormat::Csv => "csv" },
                "rows": all.len(),
                "include_validation": args.include_validation,
                "output": args.out,
                "output_sha256": hex::encode(sha2::Sha256::digest(text.as_bytes())),
            }),
        ),
    )?;
    eprintln!(
        "exported {} inference rows ({validation} inference records of validation runs {})",
        all.len(),
        if args.include_validation {
            "included"
        } else {
            "left out: --include-validation"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn query(config: &Config, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir(config, args.data_dir.as_ref());
    let audit = open_existing(config, &dir)?;
    let query = Query {
        from: args.from.as_deref().map(time_bound).transpose()?,
        to: args.to.as_deref().map(time_bound).transpose()?,
        kind: args.kind.clone(),
        study_instance_uid: args.study.clone(),
        model_id: args.model.clone(),
        model_version: args.model_version.clone(),
        outcome: args.outcome.clone(),
        ..Query::default()
    };
    let records = audit.records(&query)?;
    let mut out = std::io::stdout().lock();
    for record in &records {
        let mut value = serde_json::to_value(record)?;
        // Details as JSON, not as the hashed text.
        value["details"] = serde_json::from_str(&record.details)
            .unwrap_or_else(|_| serde_json::Value::String(record.details.clone()));
        writeln!(out, "{value}")?;
    }
    record_access(
        config,
        &audit,
        AuditEvent::new(
            EventKind::AuditAccessed,
            "queried",
            serde_json::json!({
                "who": who(),
                "what": "query",
                "filters": {
                    "from": query.from, "to": query.to, "kind": query.kind,
                    "study_instance_uid": query.study_instance_uid,
                    "model_id": query.model_id, "model_version": query.model_version,
                    "outcome": query.outcome,
                },
                "records": records.len(),
            }),
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}
