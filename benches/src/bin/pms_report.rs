//! How long `vigie pms report` takes over a large audit trail: writes
//! N inferences (and their result records, and a review for every second
//! one) into a real audit trail and catalog in a scratch data directory,
//! then times the `vigie` binary making the report of the day. The records
//! are shaped as the service writes them (`population` included).
//!
//! Usage: pms_report VIGIE_BINARY N
//! Prints one JSON object: records written, seconds to write them, seconds
//! the report took (best of three), and its volume.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};
use serde_json::json;
use vigie_audit::sqlite::SqliteAudit;
use vigie_audit::{AuditEvent, AuditLog, EventKind, SIGNING_KEY_FILE, keys};
use vigie_store::sqlite::SqliteCatalog;
use vigie_store::{NewReview, ReviewVia, Reviews, Verdict};

const LABELS: [&str; 4] = ["glioma", "meningioma", "notumor", "pituitary"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let vigie = args.get(1).context("VIGIE_BINARY")?;
    let n: usize = args.get(2).context("N")?.parse()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let key = keys::signing_key(&data.join(SIGNING_KEY_FILE))?;
    let audit = SqliteAudit::open(&data, "bench", key, 10_000)?;
    let catalog = SqliteCatalog::open(&data.join("index.sqlite"))?;
    let started = Instant::now();
    let mut reviews = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(2_000) {
        let mut events = Vec::with_capacity(chunk.len() * 2);
        for &i in chunk {
            let decision = LABELS[i % 4];
            let source = format!("1.2.{i}.1");
            events.push(
                AuditEvent::new(
                    EventKind::Inference,
                    "ok",
                    json!({
                        "job_id": i, "rule": "brain-mr", "decision": decision, "decode_ms": 1.2,
                        "frames": [{"finding": {"kind": "classification", "labels": LABELS,
                                    "probabilities": [0.7, 0.1, 0.1, 0.1], "decision": decision, "rule": "argmax"},
                                    "timings_ms": {"preprocess": 2.0, "inference": 25.0, "postprocess": 0.1},
                                    "raw_output": [0.1, 0.2, 0.3, 0.4]}],
                        "population": {"calling_ae_title": "MODALITY", "manufacturer": if i % 3 == 0 { "GE" } else { "SIEMENS" },
                                       "model_name": "Skyra", "body_part": "BRAIN", "sex": if i % 2 == 0 { "F" } else { "M" },
                                       "age_band": "40-49", "intensity": {"samples": 16384, "mean": 0.3 + (i % 10) as f64 / 100.0,
                                       "sd": 0.2, "p05": 0.0, "p50": 0.3, "p95": 0.8}},
                    }),
                )
                .instance(Some("1.2"), Some(&source))
                .model("brain-tumour-vgg16", "0.1.1"),
            );
            events.push(
                AuditEvent::new(
                    EventKind::ResultCreated,
                    "ok",
                    json!({"job_id": i, "kind": "sr", "source_sop_instance_uid": source}),
                )
                .instance(Some("1.2"), Some(&format!("2.25.{i}")))
                .model("brain-tumour-vgg16", "0.1.1"),
            );
        }
        audit.append_all(&events)?;
        for &i in chunk.iter().filter(|i| *i % 2 == 0) {
            catalog.record_review(
                &NewReview {
                    job_id: i as i64,
                    result_sop_instance_uid: format!("2.25.{i}"),
                    verdict: if i % 10 == 0 {
                        Verdict::Reject
                    } else {
                        Verdict::Accept
                    },
                    label: None,
                    comment: None,
                    reviewer: "Dr A".into(),
                    via: ReviewVia::Api,
                    authenticated_as: "bench".into(),
                    source_sop_instance_uid: None,
                },
                vigie_store::now_ms(),
            )?;
            reviews += 1;
        }
    }
    let written_s = started.elapsed().as_secs_f64();
    drop(audit);
    drop(catalog);
    let today = chrono_today();
    let mut best = f64::INFINITY;
    let mut volume = serde_json::Value::Null;
    for round in 0..3 {
        let out = dir.path().join(format!("report-{round}"));
        let t = Instant::now();
        let run = Command::new(vigie)
            .env_remove("VIGIE_CONFIG")
            .args([
                "pms",
                "report",
                "--model",
                "brain-tumour-vgg16",
                "--data-dir",
            ])
            .arg(&data)
            .args(["--from", &today.0, "--to", &today.1, "--out"])
            .arg(&out)
            .output()?;
        let s = t.elapsed().as_secs_f64();
        ensure!(
            run.status.code() == Some(0) || run.status.code() == Some(1),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        best = best.min(s);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
        volume = report["volume"].clone();
    }
    println!(
        "{}",
        json!({"inferences": n, "reviews": reviews, "write_s": written_s, "report_s_best_of_3": best, "volume": volume})
    );
    Ok(())
}

/// Today and tomorrow (UTC) as YYYY-MM-DD.
fn chrono_today() -> (String, String) {
    let today = chrono::Utc::now().date_naive();
    (
        today.to_string(),
        (today + chrono::Duration::days(1)).to_string(),
    )
}
