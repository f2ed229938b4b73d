//! Closing a study sooner than the stable age (`pipeline.release_grace_s`):
//! the association (or STOW-RS request) that carried it ended normally,
//! plus the grace. The stable age is 30 s in these tests, so a study that
//! completes within seconds was closed by the release; one that must not
//! close early is checked not to have closed after several seconds.
//! Peers: DCMTK `storescu`, pynetdicom holding an association open
//! (`tests/peers/hold_association.py`), STOW-RS.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, demo_studies, multipart, storescu_args, token, uids};
use vigie_test_support::{python, repo_root};

fn config() -> String {
    base_config(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
"#,
    )
    .replace(
        "stable_age_s = 1.0",
        "stable_age_s = 30.0\nrelease_grace_s = 0.3",
    )
}

fn details(record: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(record["details"].as_str().unwrap()).unwrap()
}

/// The `study_complete` records of a study: (instances, closed_by).
fn completions(vigie: &Vigie, study: &str) -> Vec<(u64, String)> {
    vigie
        .audit_records(&format!("kind=study_complete&study={study}"))
        .iter()
        .map(details)
        .map(|d| {
            (
                d["instances"].as_u64().unwrap(),
                d["closed_by"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// pynetdicom storing `count` instances of `file`'s study on one
/// association, `pause` seconds apart, then releasing (or aborting) it.
fn holder(
    vigie: &Vigie,
    file: &std::path::Path,
    first: u32,
    count: u32,
    pause: f64,
    abort: bool,
) -> std::process::Child {
    let (first, count, pause) = (first.to_string(), count.to_string(), pause.to_string());
    let mut args = vec!["--first", &first, "--count", &count, "--pause", &pause];
    if abort {
        args.push("--abort");
    }
    peer(vigie.dicom, file, &args)
}

/// `tests/peers/hold_association.py` to `port` with `args`.
fn peer(port: u16, file: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(python())
        .arg(repo_root().join("tests/peers/hold_association.py"))
        .args(["127.0.0.1", &port.to_string()])
        .arg(file)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs")
}

/// STOW-RS of `files` in one request, which must succeed.
fn stow(vigie: &Vigie, files: &[std::path::PathBuf]) {
    let response = vigie.http(
        "POST",
        "/dicomweb/studies",
        Some(token("operator")),
        &[(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"; boundary=B-42",
        )],
        &multipart(files, "B-42"),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}

/// Wait until `child` (the peer) has stored its first instance.
fn first_store(child: &mut std::process::Child) {
    use std::io::BufRead;
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "0000", "the first store succeeded");
}

fn finished(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_study_closes_once_the_association_that_carried_it_is_released() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &config());
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, _, _) = uids(&demo[0]);
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", &demo));
    assert!(out.status.success());
    // Within 10 s, against a stable age of 30 s.
    vigie.wait_for(
        "the study closed by the release",
        Duration::from_secs(10),
        |v| !completions(v, &study).is_empty(),
    );
    assert_eq!(
        completions(&vigie, &study),
        [(1, "carrier_ended".to_string())]
    );
    vigie.wait_for("its job done", Duration::from_secs(60), |v| {
        v.jobs().iter().any(|j| j["state"] == "done")
    });
}

#[test]
fn another_association_still_carrying_the_study_keeps_it_open() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &config());
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, _, _) = uids(&demo[0]);
    // One association stores an instance, waits 4 s, stores another.
    let mut long = holder(&vigie, &demo[0], 1, 2, 4.0, false);
    first_store(&mut long);
    // Meanwhile a second one stores a third instance and is released.
    let short = holder(&vigie, &demo[0], 3, 1, 0.0, false);
    assert!(finished(short).contains("released"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        completions(&vigie, &study).is_empty(),
        "closed while the first association was still carrying it"
    );
    assert!(finished(long).contains("released"));
    vigie.wait_for("the study closed", Duration::from_secs(10), |v| {
        !completions(v, &study).is_empty()
    });
    assert_eq!(
        completions(&vigie, &study),
        [(3, "carrier_ended".to_string())],
        "one study of three instances, closed once"
    );
}

#[test]
fn an_aborted_association_leaves_the_study_to_the_stable_age() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &config());
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, _, _) = uids(&demo[0]);
    assert!(finished(holder(&vigie, &demo[0], 1, 1, 0.0, true)).contains("aborted"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        completions(&vigie, &study).is_empty(),
        "an abort does not close the study"
    );
    let kept = vigie
        .audit_records("kind=association&outcome=aborted")
        .len();
    assert_eq!(kept, 1);
}

#[test]
fn a_stow_rs_request_closes_its_studies_when_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &config());
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    stow(&vigie, &demo);
    for file in &demo {
        let (study, _, _) = uids(file);
        vigie.wait_for(
            "the study closed by the request's end",
            Duration::from_secs(10),
            |v| completions(v, &study) == [(1, "carrier_ended".to_string())],
        );
    }
}

#[test]
fn a_study_closes_once_the_instances_the_pacs_announces_have_arrived() {
    let tmp = tempfile::tempdir().unwrap();
    let orthanc = vigie_test_support::Orthanc::start();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, _, _) = uids(&demo[0]);
    // The PACS holds the study: three instances.
    let out = peer(
        orthanc.dicom,
        &demo[0],
        &["--first", "1", "--count", "3", "--called", "ORTHANC"],
    );
    assert!(finished(out).contains("released"));
    let config = base_config(&format!(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]

[destinations.pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {}
"#,
        orthanc.dicom
    ))
    .replace(
        "stable_age_s = 1.0",
        "stable_age_s = 30.0\nexpected_instances_from = \"pacs\"",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    orthanc.add_modality(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": vigie.dicom}),
    );
    // Two of the three arrive, on an association held open: not closed.
    let first = peer(
        vigie.dicom,
        &demo[0],
        &["--first", "1", "--count", "2", "--hold", "3"],
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        completions(&vigie, &study).is_empty(),
        "closed before the announced count arrived:\n{}",
        vigie.log_text()
    );
    assert!(finished(first).contains("released"));
    // The third, on an association held open 20 s: the count closes the
    // study, not the release nor the stable age.
    let last = peer(
        vigie.dicom,
        &demo[0],
        &["--first", "3", "--count", "1", "--hold", "20"],
    );
    let mut last = last;
    vigie.wait_for(
        "the study closed by the count",
        Duration::from_secs(15),
        |v| !completions(v, &study).is_empty(),
    );
    assert!(
        last.try_wait().unwrap().is_none(),
        "closed while the association that carried it was still open"
    );
    assert_eq!(
        completions(&vigie, &study),
        [(3, "expected_count".to_string())]
    );
    assert!(
        vigie
            .log_text()
            .contains("the PACS announces the study's instance count")
    );
    let _ = last.kill();
    let _ = last.wait();
}

/// Review of the early close: a STOW-RS request ending did not look at
/// the associations still carrying its study.
#[test]
fn regression_a_stow_rs_request_ending_does_not_close_a_study_an_association_still_carries() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &config());
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, _, _) = uids(&demo[0]);
    let mut long = holder(&vigie, &demo[0], 1, 2, 4.0, false);
    first_store(&mut long);
    stow(&vigie, &demo);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        completions(&vigie, &study).is_empty(),
        "closed by the STOW-RS request while an association still carried it"
    );
    assert!(finished(long).contains("released"));
    vigie.wait_for("the study closed", Duration::from_secs(10), |v| {
        !completions(v, &study).is_empty()
    });
    assert_eq!(
        completions(&vigie, &study),
        [(3, "carrier_ended".to_string())]
    );
}
