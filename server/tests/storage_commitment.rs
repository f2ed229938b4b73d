//! Storage commitment of delivered results (`destinations.<name>.commitment`)
//! against real SCPs: Orthanc, which reports on an association of its own
//! (the SCP role negotiated by SCP/SCU Role Selection), and pynetdicom
//! (`tests/peers/commitment_scp.py`) playing a PACS that first fails the
//! commitment on the requesting association, then stays silent, then
//! commits, after a forged report from another AE.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, demo_studies, storescu_args};
use vigie_test_support::{Orthanc, free_port, python, repo_root};

fn config(destination: &str) -> String {
    base_config(&format!(
        r#"
{destination}

[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
destinations = ["pacs"]
"#
    ))
}

/// The deliveries of every job.
fn deliveries(vigie: &Vigie) -> Vec<serde_json::Value> {
    vigie
        .jobs()
        .iter()
        .flat_map(|j| {
            let detail = vigie.json(&format!("/api/v1/jobs/{}", j["id"]));
            detail["deliveries"].as_array().cloned().unwrap_or_default()
        })
        .collect()
}

fn details(record: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(record["details"].as_str().unwrap()).unwrap()
}

#[test]
fn orthanc_commits_the_results_it_stored_on_an_association_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start();
    let vigie = Vigie::start(
        tmp.path(),
        &config(&format!(
            "[destinations.pacs]\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {}\ncommitment = true",
            orthanc.dicom
        ))
        .replace("[delivery]", "[delivery]\ncommitment_timeout_s = 60"),
    );
    // Orthanc reports to the AE that asked, as it knows it.
    orthanc.add_modality(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": vigie.dicom}),
    );
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", &demo));
    assert!(out.status.success());
    vigie.wait_for("every result committed", Duration::from_secs(90), |v| {
        let d = deliveries(v);
        !d.is_empty() && d.iter().all(|d| d["state"] == "sent")
    });
    let deliveries = deliveries(&vigie);
    for d in &deliveries {
        assert!(d["committed_at"].is_string(), "{d}");
        assert!(
            d["commitment_uid"].as_str().unwrap().starts_with("2.25."),
            "{d}"
        );
    }
    // One request named them all; one committed record per result, and
    // the report came from Orthanc on its own association (role selection).
    let requested = vigie.audit_records("kind=result_commitment&outcome=requested");
    assert_eq!(requested.len(), 1, "{requested:?}");
    let request = details(&requested[0]);
    assert_eq!(request["ae_title"], "ORTHANC");
    assert_eq!(
        request["sop_instance_uids"].as_array().unwrap().len(),
        deliveries.len()
    );
    let committed = vigie.audit_records("kind=result_commitment&outcome=committed");
    assert_eq!(committed.len(), deliveries.len(), "{committed:?}");
    assert_eq!(
        details(&committed[0])["transaction_uid"],
        request["transaction_uid"]
    );
    let accepted = vigie.audit_records("kind=association&outcome=accepted");
    assert!(
        accepted
            .iter()
            .any(|r| details(r)["calling_ae_title"] == "ORTHANC"),
        "Orthanc's report association: {accepted:?}"
    );
    let metrics = vigie.get("/metrics").unwrap();
    assert!(
        metrics
            .contains(r#"vigie_result_commitments_total{destination="pacs",outcome="committed"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"vigie_outbox{state="awaiting_commitment"} 0"#));
}

#[test]
fn a_failed_a_silent_and_a_forged_commitment_are_retried_refused_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let log = tmp.path().join("pacs.jsonl");
    let config = config(&format!(
        "[destinations.pacs]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\ncommitment = true\ncommitment_wait_s = 1.0"
    ))
    .replace("[delivery]", "[delivery]\ncommitment_timeout_s = 3");
    let vigie = Vigie::start(tmp.path(), &config);
    let mut pacs = Command::new(python())
        .arg(repo_root().join("tests/peers/commitment_scp.py"))
        .args([
            &pacs_port.to_string(),
            "127.0.0.1",
            &vigie.dicom.to_string(),
        ])
        .arg(&log)
        .args(["--plan", "fail,silent,ok"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python runs");
    // Its Storage SCP listens before anything is sent.
    vigie.wait_for("the PACS listening", Duration::from_secs(20), |_| {
        std::net::TcpStream::connect(("127.0.0.1", pacs_port)).is_ok()
    });
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", &demo));
    assert!(out.status.success());
    vigie.wait_for(
        "every result committed at the third request",
        Duration::from_secs(120),
        |v| {
            let d = deliveries(v);
            !d.is_empty() && d.iter().all(|d| d["state"] == "sent")
        },
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
    assert_eq!(steps, ["fail", "silent", "ok"], "{lines:?}");
    // The report on the requesting association was answered Success; the
    // forged one refused (0124, not the destination's AE); the real one,
    // on the PACS's own association, Success.
    let status_of = |key: &str| lines.iter().find_map(|l| l[key].as_u64());
    assert_eq!(status_of("same_association_status"), Some(0), "{lines:?}");
    assert_eq!(status_of("forged_status"), Some(0x0124), "{lines:?}");
    assert_eq!(status_of("report_status"), Some(0), "{lines:?}");

    let n = deliveries(&vigie).len();
    // Failed: each result sent again (two C-STORE deliveries each).
    let failed = vigie.audit_records("kind=result_commitment&outcome=failed");
    assert_eq!(failed.len(), n, "{failed:?}");
    assert!(
        details(&failed[0])["reason"]
            .as_str()
            .unwrap()
            .contains("processing failure (0x0110)"),
        "{failed:?}"
    );
    let delivered = vigie.audit_records("kind=result_delivery&outcome=delivered");
    assert_eq!(delivered.len(), 2 * n, "sent again after the failure");
    // Silent: asked again after commitment_timeout_s, in a new transaction.
    let requested = vigie.audit_records("kind=result_commitment&outcome=requested");
    assert_eq!(requested.len(), 3, "{requested:?}");
    let transactions: std::collections::BTreeSet<String> = requested
        .iter()
        .map(|r| details(r)["transaction_uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(transactions.len(), 3);
    let refused = vigie.audit_records("kind=result_commitment&outcome=refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(details(&refused[0])["calling_ae_title"], "ROGUE");
    let committed = vigie.audit_records("kind=result_commitment&outcome=committed");
    assert_eq!(committed.len(), n);
    // Each delivery names the transaction that committed it.
    let last = lines
        .iter()
        .filter(|l| l["step"] == "ok")
        .find_map(|l| l["transaction"].as_str())
        .unwrap();
    for d in deliveries(&vigie) {
        assert_eq!(d["commitment_uid"], last, "{d}");
    }
    let _ = pacs.kill();
    let _ = pacs.wait();
}

#[test]
fn without_commitment_storage_commitment_reports_are_refused_at_association() {
    // No destination asks for commitment: the Storage Commitment context
    // is not accepted, even with the SCP role proposed.
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(
        tmp.path(),
        &config("[destinations.pacs]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 9"),
    );
    let script = r#"
import sys
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel
ae = AE(ae_title="PACS")
ae.add_requested_context(StorageCommitmentPushModel)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="VIGIE",
    ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True, scu_role=False)])
print("established" if assoc.is_established else "not established")
if assoc.is_established:
    assoc.release()
"#;
    let out = Command::new(python())
        .args(["-c", script, &vigie.dicom.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The only context refused: pynetdicom gives up on the association.
    assert!(text.contains("not established"), "{text}");
    vigie.wait_for("the association on record", Duration::from_secs(10), |v| {
        v.audit_records("kind=association&outcome=accepted")
            .iter()
            .any(|r| {
                details(r)["calling_ae_title"] == "PACS" && details(r)["presentation_contexts"] == 0
            })
    });
    assert!(vigie.audit_records("kind=result_commitment").is_empty());
}
