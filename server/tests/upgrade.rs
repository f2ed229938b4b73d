//! Upgrade from release 0.1.0 (commit 79db11d): a data directory it wrote
//! (`tests/data/upgrade-0.1.0/data.tar.gz`, made by `make.sh` there with
//! that release's binary, synthetic data only) opens under this build:
//! nothing is lost, pending work completes, the migration is on record and
//! the audit trail verifies across it. A data directory of a newer schema
//! is refused with exit status 2, naming both versions.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Vigie, base_config, storescp};

/// Where 0.1.0 wrote it: its catalog holds absolute paths, so the data
/// directory is unpacked where it was made (see `make.sh`).
const FIXTURE_ROOT: &str = "/tmp/vigie-upgrade-0.1.0";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/upgrade-0.1.0/data.tar.gz")
}

/// Unpack the fixture at its path; the files it holds (relative to the
/// data directory).
fn unpack() -> BTreeSet<String> {
    let root = Path::new(FIXTURE_ROOT);
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-xzf")
        .arg(fixture())
        .status()
        .unwrap();
    assert!(status.success());
    files_under(&root.join("data"))
}

fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    files
}

fn config(pacs: u16) -> String {
    base_config(&format!(
        r#"
[[routing.rules]]
name = "mr"
modalities = ["MR"]
models = ["fixture-bright-disk"]
destinations = ["pacs", "archive"]

[destinations.pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs}

[destinations.archive]
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {pacs}
"#
    ))
}

fn schema_version(path: &Path) -> u32 {
    rusqlite::Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn a_data_directory_of_release_0_1_0_opens_keeps_everything_and_finishes_its_work() {
    let before = unpack();
    let root = Path::new(FIXTURE_ROOT);
    let data = root.join("data");
    assert_eq!(
        schema_version(&data.join("index.sqlite")),
        0,
        "0.1.0 wrote no version"
    );
    // What 0.1.0 left: one job done, one pending, a study still receiving,
    // two deliveries sent and two pending.
    {
        let c = rusqlite::Connection::open(data.join("index.sqlite")).unwrap();
        let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM jobs WHERE state = 'done'"), 1);
        assert_eq!(
            count("SELECT count(*) FROM jobs WHERE state = 'pending'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM studies WHERE state = 'receiving'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM outbox WHERE state = 'pending'"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM outbox WHERE state = 'sent'"), 2);
        assert_eq!(count("SELECT count(*) FROM instances"), 5);
    }
    let pacs = storescp(&root.join("pacs"));
    let mut vigie = Vigie::start_with_env(
        root,
        &config(pacs.port),
        &[("VIGIE__APPLIANCE__ID", "vigie-upgrade-fixture")],
    );
    assert_eq!(
        schema_version(&data.join("index.sqlite")),
        vigie_store::sqlite::CATALOG_SCHEMA_VERSION
    );
    // The migration is on record, once, with both versions.
    let migrated = vigie.audit_records("kind=schema_migrated");
    assert_eq!(migrated.len(), 1, "{migrated:?}");
    let details: serde_json::Value =
        serde_json::from_str(migrated[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["database"], "catalog");
    assert_eq!(details["from_version"], 1);
    assert_eq!(
        details["to_version"],
        vigie_store::sqlite::CATALOG_SCHEMA_VERSION
    );
    // Pending work completes: B's pending job and C's study (complete once
    // quiet), and every delivery, the two left pending by 0.1.0 included.
    vigie.wait_for("every job done", Duration::from_secs(60), |v| {
        let jobs = v.jobs();
        jobs.len() == 3 && jobs.iter().all(|j| j["state"] == "done")
    });
    vigie.wait_for("every delivery sent", Duration::from_secs(60), |v| {
        let outbox = &v.json("/api/v1/status")["outbox"];
        outbox["pending"] == 0 && outbox["failed"] == 0 && outbox["sent"].as_u64() >= Some(6)
    });
    let jobs = vigie.jobs();
    let studies: BTreeSet<_> = jobs
        .iter()
        .map(|j| j["study_instance_uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(studies.len(), 3, "one job per study: {jobs:?}");
    // Nothing lost: every instance still indexed and served, every file
    // 0.1.0 wrote still where it was (none taken for an orphan).
    let qido = vigie.http(
        "GET",
        "/dicomweb/instances",
        Some(common::token("reader")),
        &[("Accept", "application/dicom+json")],
        b"",
    );
    assert_eq!(qido.status, 200);
    let instances = qido.json();
    let received = instances
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["00080060"]["Value"][0] == "MR")
        .count();
    assert_eq!(received, 5, "{instances}");
    // The result 0.1.0 wrote is linked to its job by the migration (catalog
    // version 3): it can be reviewed.
    let first = jobs
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .min()
        .unwrap();
    let entry = vigie.json(&format!("/api/v1/review/worklist?job={first}"))[0].clone();
    assert!(
        !entry["results"].as_array().unwrap().is_empty(),
        "the 0.1.0 job's results: {entry}"
    );
    let post = |body: serde_json::Value| {
        vigie.http(
            "POST",
            &format!("/api/v1/jobs/{first}/reviews"),
            Some(common::token("reviewer")),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    // Its two images gave two SRs: the page shows one item each, with its
    // own source image, and a review must say which.
    let items = entry["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{entry}");
    assert_ne!(
        items[0]["source_sop_instance_uid"],
        items[1]["source_sop_instance_uid"]
    );
    assert!(
        items
            .iter()
            .all(|i| i["source_sop_instance_uid"].is_string())
    );
    let ambiguous = post(serde_json::json!({"verdict": "accept"}));
    assert_eq!(ambiguous.status, 422);
    assert_eq!(ambiguous.json()["error"]["code"], "ambiguous_result");
    let result = entry["results"][0]["sop_instance_uid"].clone();
    let review = post(serde_json::json!({"verdict": "accept", "result": result}));
    assert_eq!(
        review.status,
        201,
        "{}",
        String::from_utf8_lossy(&review.body)
    );
    vigie.stop();
    let after = files_under(&data);
    let missing: Vec<_> = before
        .iter()
        .filter(|f| !f.ends_with("-wal") && !f.ends_with("-shm"))
        .filter(|f| !after.contains(*f))
        .collect();
    assert!(missing.is_empty(), "files lost in the upgrade: {missing:?}");
    assert!(
        !after.iter().any(|f| f.starts_with("orphaned/")),
        "{after:?}"
    );
    // The audit trail verifies across the migration record.
    let verify = vigie.command(&["audit", "verify"]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && out.contains("audit trail OK"),
        "{out}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_data_directory_of_a_newer_schema_is_refused_with_both_versions_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let newer = vigie_store::sqlite::CATALOG_SCHEMA_VERSION + 7;
    {
        let c = rusqlite::Connection::open(data.join("index.sqlite")).unwrap();
        c.pragma_update(None, "user_version", newer).unwrap();
    }
    std::fs::write(dir.path().join("vigie.toml"), base_config("")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env_remove("VIGIE_CONFIG")
        .args(["serve", "--config"])
        .arg(dir.path().join("vigie.toml"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--dicom-port", "0", "--http-port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("catalog {}", data.join("index.sqlite").display()))
            && stderr.contains(&format!("schema version {newer} is newer"))
            && stderr.contains(&format!(
                "(version {})",
                vigie_store::sqlite::CATALOG_SCHEMA_VERSION
            )),
        "{stderr}"
    );
    assert_eq!(schema_version(&data.join("index.sqlite")), newer);
    let c = rusqlite::Connection::open(data.join("index.sqlite")).unwrap();
    let tables: u32 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0, "nothing written to a newer catalog");
}
