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

/// A test peer process, killed when dropped (also when a test fails).
struct Peer(std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Vigie with destination `pacs` (commitment on, `extra` destination
/// keys, `delivery.commitment_timeout_s` = `timeout_s`) served by
/// `tests/peers/commitment_scp.py` following `plan`; one demo study sent,
/// waited for until every result is delivered and the PACS has logged
/// `logged`. Returns Vigie, the PACS process and the PACS's log lines.
fn commitment_scenario(
    tmp: &std::path::Path,
    extra: &str,
    timeout_s: u32,
    plan: &str,
    logged: &str,
) -> (Vigie, Peer, Vec<serde_json::Value>) {
    let pacs_port = free_port();
    let log = tmp.join("pacs.jsonl");
    let config = config(&format!(
        "[destinations.pacs]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\ncommitment = true\n{extra}"
    ))
    .replace(
        "[delivery]",
        &format!("[delivery]\ncommitment_timeout_s = {timeout_s}"),
    );
    let vigie = Vigie::start(tmp, &config);
    let pacs = Peer(
        Command::new(python())
            .arg(repo_root().join("tests/peers/commitment_scp.py"))
            .args([
                &pacs_port.to_string(),
                "127.0.0.1",
                &vigie.dicom.to_string(),
            ])
            .arg(&log)
            .args(["--plan", plan])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python runs"),
    );
    // Its Storage SCP listens before anything is sent.
    vigie.wait_for("the PACS listening", Duration::from_secs(20), |_| {
        std::net::TcpStream::connect(("127.0.0.1", pacs_port)).is_ok()
    });
    let demo = demo_studies(&tmp.join("demo"), 1);
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", &demo));
    assert!(out.status.success());
    vigie.wait_for("every result committed", Duration::from_secs(120), |v| {
        let d = deliveries(v);
        !d.is_empty() && d.iter().all(|d| d["state"] == "sent")
    });
    // The PACS logs a report's answer once it has released.
    vigie.wait_for("the PACS's log", Duration::from_secs(10), |_| {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(logged))
    });
    let lines = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (vigie, pacs, lines)
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
    let (vigie, _pacs, lines) = commitment_scenario(
        tmp.path(),
        "commitment_wait_s = 1.0",
        3,
        "fail,silent,ok",
        "\"report_status",
    );
    let steps: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
    assert_eq!(steps, ["fail", "silent", "ok"], "{lines:?}");
    // The report on the requesting association was answered Success; the
    // forged ones refused (0110: another AE title; the destination's AE
    // title from another address); the real one, on the PACS's own
    // association, Success.
    let status_of = |key: &str| lines.iter().find_map(|l| l[key].as_u64());
    assert_eq!(status_of("same_association_status"), Some(0), "{lines:?}");
    assert_eq!(status_of("forged_status"), Some(0x0110), "{lines:?}");
    assert_eq!(
        status_of("forged_address_status"),
        Some(0x0110),
        "{lines:?}"
    );
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
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(details(&refused[0])["calling_ae_title"], "ROGUE");
    assert_eq!(details(&refused[1])["calling_ae_title"], "PACS");
    assert!(
        details(&refused[1])["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2"),
        "{refused:?}"
    );
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
}

/// Review finding (2026-12-04): a report of an earlier transaction, once
/// the commitment had been asked again, was answered and ignored, so a
/// PACS slower than `delivery.commitment_timeout_s` never got its results
/// delivered. It now counts while the results await their commitment.
#[test]
fn regression_a_late_report_of_an_earlier_transaction_still_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, _pacs, lines) =
        commitment_scenario(tmp.path(), "", 2, "late,silent", "late_report_status");
    let first = lines
        .iter()
        .find(|l| l["step"] == "late")
        .and_then(|l| l["transaction"].as_str())
        .unwrap()
        .to_string();
    assert!(lines.iter().any(|l| l["step"] == "silent"), "{lines:?}");
    assert_eq!(
        lines.iter().find_map(|l| l["late_report_status"].as_u64()),
        Some(0),
        "{lines:?}"
    );
    for d in deliveries(&vigie) {
        assert_eq!(d["commitment_uid"], first.as_str(), "{d}");
    }
    assert!(
        vigie
            .audit_records("kind=result_commitment&outcome=ignored")
            .is_empty()
    );
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
