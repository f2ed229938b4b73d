//! `vigie pms report` on a running appliance's own data: three studies
//! analysed, two results reviewed, the report made beside the running
//! service; its figures trace to the audit records, its run and alarms are
//! in the trail, and the service's `/metrics` exposes `vigie_pms_*`. The
//! method on a synthetic month (drift detection, figures against scipy):
//! `validation/tests/pms.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Vigie, base_config, demo_studies, send, token};
use serde_json::{Value, json};

#[test]
fn the_pms_report_of_a_running_appliance_traces_to_its_records_and_feeds_its_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 3);
    let vigie = Vigie::start(
        tmp.path(),
        &base_config("[[routing.rules]]\nname = \"brain-mr\"\nmodalities = [\"MR\"]\n"),
    );
    assert!(send(vigie.dicom, &demo).iter().all(|o| o.delivered()));
    vigie.wait_for("3 jobs done", Duration::from_secs(120), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 3
    });
    let jobs = vigie.jobs();
    let review = |job: &Value, body: Value| {
        let r = vigie.http(
            "POST",
            &format!("/api/v1/jobs/{}/reviews", job["id"]),
            Some(token("reviewer")),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    };
    review(&jobs[0], json!({"verdict": "accept"}));
    review(
        &jobs[1],
        json!({"verdict": "correct", "label": "pituitary"}),
    );

    let today = chrono::Utc::now().date_naive();
    let out = tmp.path().join("pms");
    let run = vigie.command(&[
        "pms",
        "report",
        "--model",
        "brain-tumour-vgg16",
        "--from",
        &today.to_string(),
        "--to",
        &(today + chrono::Duration::days(1)).to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 inferences, 2 reviewed, 0 alarm(s)"),
        "{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["volume"], 3);
    assert_eq!(report["agreement"]["reviewed"]["successes"], 2);
    assert_eq!(report["agreement"]["agreement"]["successes"], 1);
    assert_eq!(report["agreement"]["agreement"]["n"], 2);
    assert_eq!(
        report["agreement"]["per_class"]["pituitary"]["sensitivity"]["n"], 1,
        "the corrected case's truth is pituitary: {report}"
    );
    // Every case is an inference record of the trail, by sequence number.
    let inferences: Vec<i64> = vigie
        .audit_records("kind=inference")
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    let csv = std::fs::read_to_string(out.join("cases.csv")).unwrap();
    let seqs: Vec<i64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, inferences);
    assert!(csv.lines().next().unwrap().contains("manufacturer"));
    for name in ["pms.md", "pms.html", "pms.prom"] {
        assert!(out.join(name).is_file(), "{name}");
    }
    let html = std::fs::read_to_string(out.join("pms.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Agreement per period"));
    // The run is on record with the hash of each output.
    let reported = vigie.audit_records("kind=pms_reported");
    assert_eq!(reported.len(), 1);
    let details: Value = serde_json::from_str(reported[0]["details"].as_str().unwrap()).unwrap();
    let md = std::fs::read(out.join("pms.md")).unwrap();
    assert_eq!(
        details["outputs"]["pms.md"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&md))
    );
    // The running service exposes the report's indicators.
    let metrics = vigie.get("/metrics").unwrap_or_default();
    assert!(
        metrics.contains(r#"vigie_pms_agreement_rate{model="brain-tumour-vgg16"} 0.5"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"vigie_pms_alarms{model="brain-tumour-vgg16"} 0"#));
    assert_eq!(metrics.matches("# TYPE vigie_pms_alarms gauge").count(), 1);
    assert_eq!(vigie.verify_audit()["ok"], true);
}
