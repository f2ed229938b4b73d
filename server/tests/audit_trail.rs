//! The audit trail end to end: every event type appears when its action
//! happens (DICOM in, inference, results out), the chain verifies and
//! exports, tampering is found by `vigie audit verify` at the right record,
//! and SIGKILL at arbitrary points loses no record of anything
//! acknowledged or completed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, demo_studies, storescp, storescu_args, uids};
use rusqlite::Connection;
use sha2::Digest;

fn sha256_file(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// (kind, outcome, study, sop, details) of a record.
type Row = (
    String,
    String,
    Option<String>,
    Option<String>,
    serde_json::Value,
);

/// Every record.
fn records(data: &Path) -> Vec<Row> {
    let c = Connection::open(data.join("audit.sqlite")).unwrap();
    let mut stmt = c
        .prepare("SELECT kind, outcome, study_instance_uid, sop_instance_uid, details FROM records ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        let details: String = r.get(4)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            serde_json::from_str(&details).unwrap(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn config_with_pacs(port: u16, extra: &str) -> String {
    base_config(&format!(
        r#"
[audit]
checkpoint_every = 5
{extra}

[[routing.rules]]
name = "all"
destinations = ["pacs"]

[destinations.pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = {port}
"#
    ))
}

#[test]
fn every_event_type_is_recorded_and_the_trail_verifies_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let pacs = storescp(&tmp.path().join("pacs"));
    // The site's audit repository: a syslog receiver on loopback.
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let syslog = receiver.local_addr().unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let collector = std::thread::spawn(move || {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let mut idle = 0;
        while idle < 20 {
            match receiver.recv(&mut buf) {
                Ok(n) => {
                    idle = 0;
                    messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                Err(_) => idle += 1,
            }
        }
        messages
    });
    let mut vigie = Vigie::start(
        tmp.path(),
        &config_with_pacs(pacs.port, &format!("syslog = \"{syslog}\"")),
    );
    let echo: Vec<String> = ["-aec", "VIGIE", "127.0.0.1", &vigie.dicom.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(dcmtk("echoscu", &echo).status.success());
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xe", &demo));
    assert!(out.status.success());
    // A rejected association (wrong called AE title) and a refused
    // instance (an MR data set sent as a CT: A900).
    let mut wrong = echo.clone();
    wrong[1] = "SOMEONE".into();
    assert!(!dcmtk("echoscu", &wrong).status.success());
    let (_, dataset) = common::dataset_bytes(&demo[0]);
    let mismatch = tmp.path().join("mismatch.dcm");
    common::wrap(&mismatch, "1.2.840.10008.5.1.4.1.1.2", "2.25.99", &dataset);
    assert_eq!(
        common::send(vigie.dicom, &[mismatch])[0].status,
        Some(0xA900)
    );
    vigie.wait_for("both results delivered", Duration::from_secs(120), |v| {
        v.json("/api/v1/status")["outbox"]["sent"] == 2
    });
    vigie.stop();

    let verify = vigie.command(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(text.contains("audit trail OK"), "{text}");

    let csv = tmp.path().join("export.csv");
    let export = vigie.command(&[
        "audit",
        "export",
        "--format",
        "csv",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv_text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "header and one row per analysed image:\n{csv_text}"
    );
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let jsonl = vigie.command(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--model",
        "brain-tumour-vgg16",
    ]);
    assert!(jsonl.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&jsonl.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let model_sha =
        vigie_inference::ModelPackage::load(vigie_test_support::model_dir("brain-tumour-vgg16"))
            .unwrap()
            .sha256()
            .to_string();
    for file in &demo {
        let (study, series, sop) = uids(file);
        let stored = sha256_file(&vigie.stored(&study, &series, &sop));
        let row = rows
            .iter()
            .find(|r| r["sop_instance_uid"] == sop.as_str())
            .unwrap();
        assert_eq!(row["file_sha256"], stored.as_str(), "{row}");
        assert_eq!(row["model_sha256"], model_sha.as_str());
        assert_eq!(row["provider"], "CPUExecutionProvider");
        assert_eq!(row["pixels_sha256"].as_str().unwrap().len(), 64);
        assert!(row["inference_ms"].as_f64().unwrap() > 0.0);
        let csv_row = lines.iter().find(|l| l.contains(&sop)).unwrap();
        let fields: Vec<&str> = csv_row.split(',').collect();
        assert_eq!(fields[col("decision")], row["decision"].as_str().unwrap());
    }

    // Records name the build: version and git commit.
    let build: (String, String) = Connection::open(vigie.data.join("audit.sqlite"))
        .unwrap()
        .query_row(
            "SELECT software_version, git_commit FROM records WHERE seq = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(build.0, env!("CARGO_PKG_VERSION"));
    let commit = build.1.trim_end_matches("-dirty");
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "git commit recorded: {build:?}"
    );

    // Queryable by study, kind and model version.
    let study = uids(&demo[1]).0;
    let query = vigie.command(&[
        "audit",
        "query",
        "--study",
        &study,
        "--kind",
        "inference",
        "--model-version",
        "0.1.1",
    ]);
    assert!(query.status.success());
    let found: Vec<serde_json::Value> = String::from_utf8_lossy(&query.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["study_instance_uid"], study.as_str());
    assert_eq!(found[0]["details"]["input"]["frames"], 1);

    let all = records(&vigie.data);
    let seen: BTreeSet<(String, String)> = all.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    for (kind, outcome) in [
        ("configuration_loaded", "ok"),
        ("service_started", "ok"),
        ("model_verified", "ok"),
        ("association", "accepted"),
        ("association", "released"),
        ("association", "rejected"),
        ("echo", "ok"),
        ("instance_stored", "ok"),
        ("instance_refused", "refused"),
        ("instance_pixels", "ok"),
        ("study_complete", "ok"),
        ("routing_decision", "routed"),
        ("model_loaded", "ok"),
        ("inference", "ok"),
        ("result_created", "ok"),
        ("job_done", "ok"),
        ("result_delivery", "delivered"),
        ("service_stopped", "ok"),
        ("audit_accessed", "verified"),
        ("audit_accessed", "exported"),
        ("audit_accessed", "queried"),
    ] {
        assert!(
            seen.contains(&(kind.to_string(), outcome.to_string())),
            "no {kind}/{outcome} record; seen: {seen:?}"
        );
    }
    // Stored instances: file hash as stored, Patient ID only as a keyed hash.
    let patient_id = vigie_dicom_io::DicomFile::open(&demo[0])
        .unwrap()
        .string(dicom_dictionary_std::tags::PATIENT_ID)
        .unwrap();
    for file in &demo {
        let (study, series, sop) = uids(file);
        let stored = all
            .iter()
            .find(|r| r.0 == "instance_stored" && r.3.as_deref() == Some(sop.as_str()))
            .unwrap();
        assert_eq!(stored.2.as_deref(), Some(study.as_str()));
        assert_eq!(
            stored.4["file_sha256"],
            sha256_file(&vigie.stored(&study, &series, &sop)).as_str()
        );
        assert_eq!(
            stored.4["patient_id"]["hmac_sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
    }
    // The decoded stored pixels of each instance, hashed after the
    // acknowledgement, as pydicom decodes them.
    let expected = vigie_test_support::oracle("pixel_hash.py", &demo);
    let expected: Vec<String> = String::from_utf8(expected.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (file, digest) in demo.iter().zip(&expected) {
        let sop = uids(file).2;
        let pixels = all
            .iter()
            .find(|r| r.0 == "instance_pixels" && r.3.as_deref() == Some(sop.as_str()))
            .unwrap_or_else(|| panic!("instance_pixels record of {sop}"));
        assert_eq!(pixels.1, "ok");
        assert_eq!(pixels.4["pixels_sha256"], digest.as_str(), "{sop}");
    }
    let everything: String = all.iter().map(|r| r.4.to_string()).collect();
    assert!(
        !everything.contains(&patient_id),
        "Patient ID never in clear"
    );
    // The delivered results are those created.
    let created: BTreeSet<&str> = all
        .iter()
        .filter(|r| r.0 == "result_created")
        .map(|r| r.3.as_deref().unwrap())
        .collect();
    let delivered: BTreeSet<&str> = all
        .iter()
        .filter(|r| r.0 == "result_delivery" && r.1 == "delivered")
        .map(|r| r.3.as_deref().unwrap())
        .collect();
    assert_eq!(created, delivered);
    assert_eq!(created.len(), 2);

    // Every record reached the audit repository as a DICOM audit message.
    let messages = collector.join().unwrap();
    let file = tmp.path().join("syslog.json");
    std::fs::write(&file, serde_json::to_string(&messages).unwrap()).unwrap();
    let (checkpoints, parsed): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
        serde_json::from_slice::<Vec<serde_json::Value>>(
            &vigie_test_support::oracle("parse_syslog_audit.py", [&file]).stdout,
        )
        .unwrap()
        .into_iter()
        .partition(|m| m["msgid"] == "vigie-checkpoint");
    // Every signed checkpoint went out of the box too (hardening 9b): each
    // names a record of the trail by its hash.
    assert!(!checkpoints.is_empty(), "checkpoints forwarded");
    let db = Connection::open(vigie.data.join("audit.sqlite")).unwrap();
    for c in &checkpoints {
        let seq = c["checkpoint"]["seq"].as_i64().unwrap();
        let hash: String = db
            .query_row("SELECT hash FROM records WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(c["checkpoint"]["hash"], hash.as_str());
    }
    let forwarded: BTreeSet<i64> = parsed
        .iter()
        .map(|m| m["record"].as_i64().unwrap())
        .collect();
    let total = all.len() as i64;
    assert_eq!(
        forwarded,
        (1..=total).collect::<BTreeSet<i64>>(),
        "one message per record"
    );
    assert!(
        parsed
            .iter()
            .all(|m| m["msgid"] == "DICOM+RFC3881" && m["app"] == "vigie")
    );
    let stored_study = uids(&demo[0]).0;
    assert!(parsed.iter().any(|m| m["event_id"] == "110104"
        && m["action"] == "C"
        && m["outcome"] == "0"
        && m["study"] == stored_study.as_str()));
    assert!(
        parsed
            .iter()
            .any(|m| m["event_id"] == "110100" && m["event_type"] == "110120")
    );
    assert!(
        parsed.iter().any(|m| m["event_id"] == "110101"),
        "audit log use reported"
    );
}

/// A short run: a few associations, then a clean stop; returns the data
/// directory and the configuration file.
fn short_run(dir: &Path) -> Vigie {
    let mut vigie = Vigie::start(dir, &base_config("[audit]\ncheckpoint_every = 4\n"));
    let echo: Vec<String> = ["-aec", "VIGIE", "127.0.0.1", &vigie.dicom.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for _ in 0..3 {
        assert!(dcmtk("echoscu", &echo).status.success());
    }
    vigie.stop();
    vigie
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn vigie_audit_verify_names_the_tampered_record() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = short_run(tmp.path());
    let n: i64 = Connection::open(vigie.data.join("audit.sqlite"))
        .unwrap()
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 12, "{n} records");
    let last = n;
    let rewrite = "rewrite";
    let cases: Vec<(&str, String, i64)> = vec![
        ("edit a field", "UPDATE records SET outcome = 'rejected' WHERE seq = 5".into(), 5),
        ("delete a record", "DELETE FROM records WHERE seq = 6".into(), 6),
        (
            "reorder two records",
            "UPDATE records SET seq = -1 WHERE seq = 7; UPDATE records SET seq = 7 WHERE seq = 8; UPDATE records SET seq = 8 WHERE seq = -1".into(),
            7,
        ),
        (
            "truncate the tail",
            format!("DELETE FROM records WHERE seq > {}", last - 2),
            last - 1,
        ),
        ("rewrite the chain without the key", rewrite.into(), 0),
    ];
    for (what, statement, bad) in cases {
        let copy = tmp.path().join(what.replace(' ', "-"));
        copy_dir(&vigie.data, &copy);
        let c = Connection::open(copy.join("audit.sqlite")).unwrap();
        if statement == rewrite {
            // Change record 2, then recompute every hash after it.
            c.execute("UPDATE records SET outcome = 'refused' WHERE seq = 2", [])
                .unwrap();
            let mut rows: Vec<vigie_audit::AuditRecord> = {
                let mut stmt = c.prepare("SELECT * FROM records ORDER BY seq").unwrap();
                stmt.query_map([], |r| {
                    Ok(vigie_audit::AuditRecord {
                        seq: r.get("seq")?,
                        timestamp: r.get("timestamp")?,
                        appliance: r.get("appliance")?,
                        software_version: r.get("software_version")?,
                        git_commit: r.get("git_commit")?,
                        kind: r.get("kind")?,
                        outcome: r.get("outcome")?,
                        study_instance_uid: r.get("study_instance_uid")?,
                        sop_instance_uid: r.get("sop_instance_uid")?,
                        model_id: r.get("model_id")?,
                        model_version: r.get("model_version")?,
                        details: r.get("details")?,
                        prev_hash: r.get("prev_hash")?,
                        hash: r.get("hash")?,
                    })
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            };
            let mut prev = vigie_audit::GENESIS.to_string();
            for r in &mut rows {
                r.prev_hash = prev.clone();
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                c.execute(
                    "UPDATE records SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
                    rusqlite::params![r.seq, r.prev_hash, r.hash],
                )
                .unwrap();
            }
        } else {
            c.execute_batch(&statement).unwrap();
        }
        drop(c);
        let public_key = String::from_utf8(vigie.command(&["audit", "public-key"]).stdout).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vigie"))
            .env_remove("VIGIE_CONFIG")
            .arg("--config")
            .arg(&vigie.config)
            .args([
                "audit",
                "verify",
                "--json",
                "--public-key",
                public_key.trim(),
                "--data-dir",
            ])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: must fail");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"], false, "{what}");
        if bad > 0 {
            assert_eq!(report["first_bad_record"], bad, "{what}: {report}");
        } else {
            assert!(
                report["reason"].as_str().unwrap().contains("rewritten"),
                "{what}: {report}"
            );
        }
    }
    // The untouched original still verifies.
    let ok = vigie.command(&["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[test]
fn retention_prunes_old_records_and_the_rest_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vigie = short_run(tmp.path());
    let before: i64 = Connection::open(vigie.data.join("audit.sqlite"))
        .unwrap()
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    // Everything so far is older than a retention of ~0.9 s.
    std::thread::sleep(Duration::from_millis(1500));
    let config = std::fs::read_to_string(&vigie.config).unwrap().replace(
        "checkpoint_every = 4",
        "checkpoint_every = 4\nretention_days = 0.00001",
    );
    std::fs::write(&vigie.config, config).unwrap();
    vigie.restart();
    vigie.stop();
    let c = Connection::open(vigie.data.join("audit.sqlite")).unwrap();
    let first: i64 = c
        .query_row("SELECT min(seq) FROM records", [], |r| r.get(0))
        .unwrap();
    let pruned: String = c
        .query_row(
            "SELECT details FROM records WHERE kind = 'audit_pruned'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        first > before - 1,
        "records before the restart pruned (first is {first})"
    );
    let pruned: serde_json::Value = serde_json::from_str(&pruned).unwrap();
    assert!(
        pruned["records_removed"].as_i64().unwrap() >= before - 1,
        "{pruned}"
    );
    let verify = vigie.command(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Start storescu (verbose) sending `files`; returns the child.
fn start_storescu(port: u16, files: &[PathBuf]) -> Child {
    let mut args = storescu_args(port, "-xe", files);
    args.insert(0, "-v".into());
    Command::new("storescu")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The files storescu reports as acknowledged with Success.
fn acknowledged(output: &std::process::Output) -> Vec<PathBuf> {
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let mut current: Option<PathBuf> = None;
    let mut acked = Vec::new();
    for line in text.lines() {
        if let Some(file) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(file.trim()));
        } else if line.contains("Received Store Response (Success)")
            && let Some(file) = current.take()
        {
            acked.push(file);
        }
    }
    acked
}

#[test]
fn sigkill_at_arbitrary_points_loses_no_record_of_what_was_acknowledged_or_done() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 6);
    let mut vigie = Vigie::start(tmp.path(), &base_config("[audit]\ncheckpoint_every = 7\n"));
    let mut acked: BTreeSet<PathBuf> = BTreeSet::new();
    // Kill points spread over reception, assembly and inference.
    for delay_ms in [30u64, 120, 600, 1500, 2600] {
        let sender = start_storescu(vigie.dicom, &demo);
        std::thread::sleep(Duration::from_millis(delay_ms));
        vigie.kill();
        let output = sender.wait_with_output().unwrap();
        acked.extend(acknowledged(&output));
        vigie.restart();
    }
    // Finally everything is sent and processed, then a clean stop.
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xe", &demo));
    assert!(out.status.success());
    vigie.wait_for("all studies analysed", Duration::from_secs(180), |v| {
        let jobs = v.jobs();
        let done: BTreeSet<String> = jobs
            .iter()
            .filter(|j| j["state"] == "done")
            .map(|j| j["study_instance_uid"].as_str().unwrap().to_string())
            .collect();
        done.len() == demo.len()
            && jobs
                .iter()
                .all(|j| j["state"] != "running" && j["state"] != "pending")
    });
    let jobs = vigie.jobs();
    vigie.stop();
    let verify = vigie.command(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let all = records(&vigie.data);
    let stored: BTreeSet<String> = all
        .iter()
        .filter(|r| r.0 == "instance_stored")
        .filter_map(|r| r.3.clone())
        .collect();
    assert!(
        !acked.is_empty(),
        "some instances were acknowledged before a kill"
    );
    for file in &acked {
        let (_, _, sop) = uids(file);
        assert!(stored.contains(&sop), "acknowledged {sop} has its record");
    }
    // Every done job: an inference record per instance of its study, and
    // a record of each result it lists.
    let inferred: BTreeMap<String, usize> = all
        .iter()
        .filter(|r| r.0 == "inference" && r.1 == "ok")
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.2.clone().unwrap()).or_default() += 1;
            m
        });
    let created: BTreeSet<String> = all
        .iter()
        .filter(|r| r.0 == "result_created")
        .map(|r| r.4["path"].as_str().unwrap().to_string())
        .collect();
    for job in jobs.iter().filter(|j| j["state"] == "done") {
        let study = job["study_instance_uid"].as_str().unwrap();
        assert!(
            inferred.get(study).copied().unwrap_or(0) >= 1,
            "inference of {study} recorded"
        );
        for result in job["results"].as_array().unwrap() {
            assert!(
                created.contains(result.as_str().unwrap()),
                "result {result} recorded"
            );
        }
    }
}
