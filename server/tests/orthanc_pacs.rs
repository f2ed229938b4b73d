//! The hospital loop with Orthanc as the PACS: the demo studies are
//! uploaded to Orthanc, Orthanc sends them to `vigie serve` by C-STORE
//! (REST `/modalities/vigie/store`), Vigie runs the model and sends its
//! result objects back; they are read back through Orthanc's REST API and
//! checked with highdicom. Then Orthanc goes down for a while: results
//! produced meanwhile wait in the outbox and arrive once it is back.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Vigie, base_config, demo_studies, uids};
use vigie_test_support::{Orthanc, oracle};

fn curl_json(orthanc: &Orthanc, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-s", "-f"];
    all.extend_from_slice(args);
    let out = orthanc.curl(&all);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Study Instance UIDs of the studies in Orthanc holding an SR series.
fn studies_with_sr(orthanc: &Orthanc) -> BTreeSet<String> {
    let series = curl_json(orthanc, &[&orthanc.url("/series?expand")]);
    let mut found = BTreeSet::new();
    for s in series.as_array().unwrap() {
        if s["MainDicomTags"]["Modality"] == "SR" {
            let parent = s["ParentStudy"].as_str().unwrap();
            let study = curl_json(orthanc, &[&orthanc.url(&format!("/studies/{parent}"))]);
            found.insert(
                study["MainDicomTags"]["StudyInstanceUID"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    found
}

fn vigie_config(orthanc_port: u16) -> String {
    base_config(&format!(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
destinations = ["pacs"]

[destinations.pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc_port}
"#
    ))
}

#[test]
fn orthanc_sends_studies_and_gets_the_results_back() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 3);
    let orthanc = Orthanc::start();
    let vigie = Vigie::start(tmp.path(), &vigie_config(orthanc.dicom));

    for file in &demo {
        let body = format!("@{}", file.display());
        curl_json(
            &orthanc,
            &[
                "-X",
                "POST",
                "--data-binary",
                &body,
                &orthanc.url("/instances"),
            ],
        );
    }
    let modality = format!(
        r#"{{"AET":"VIGIE","Host":"127.0.0.1","Port":{}}}"#,
        vigie.dicom
    );
    curl_json(
        &orthanc,
        &[
            "-X",
            "PUT",
            "-d",
            &modality,
            &orthanc.url("/modalities/vigie"),
        ],
    );
    let echo = orthanc.curl(&[
        "-s",
        "-f",
        "-X",
        "POST",
        "-d",
        "{}",
        &orthanc.url("/modalities/vigie/echo"),
    ]);
    assert!(echo.status.success(), "Orthanc's C-ECHO to Vigie");
    let studies = curl_json(&orthanc, &[&orthanc.url("/studies")]);
    let ids: Vec<String> = studies
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), demo.len());
    let store = serde_json::json!({ "Resources": ids, "Synchronous": true }).to_string();
    curl_json(
        &orthanc,
        &[
            "-X",
            "POST",
            "-d",
            &store,
            &orthanc.url("/modalities/vigie/store"),
        ],
    );

    let expected: BTreeSet<String> = demo.iter().map(|f| uids(f).0).collect();
    vigie.wait_for("results in Orthanc", Duration::from_secs(120), |_| {
        studies_with_sr(&orthanc) == expected
    });

    // Read one SR back from the PACS and check it with highdicom.
    let series = curl_json(&orthanc, &[&orthanc.url("/series?expand")]);
    let sr_series = series
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["MainDicomTags"]["Modality"] == "SR")
        .unwrap();
    let instance = sr_series["Instances"][0].as_str().unwrap();
    let sr_path = tmp.path().join("from-orthanc.dcm");
    let out = orthanc.curl(&[
        "-s",
        "-f",
        "-o",
        sr_path.to_str().unwrap(),
        &orthanc.url(&format!("/instances/{instance}/file")),
    ]);
    assert!(out.status.success());
    let read: serde_json::Value =
        serde_json::from_slice(&oracle("read_sr.py", [&sr_path]).stdout).unwrap();
    let source_sops: BTreeSet<String> = demo.iter().map(|f| uids(f).2).collect();
    let evidence = read["evidence"][0].as_str().unwrap();
    assert!(source_sops.contains(evidence), "{read}");
    assert!(expected.contains(read["study_instance_uid"].as_str().unwrap()));
    assert_eq!(read["groups"][0]["algorithm"], "brain-tumour-vgg16");
    // Orthanc has them; Vigie records each delivery once the response is in.
    vigie.wait_for("deliveries recorded", Duration::from_secs(10), |v| {
        v.json("/api/v1/status")["outbox"]["sent"] == demo.len()
    });
    assert!(vigie.log_text().contains("results delivered"));
}

#[test]
fn results_wait_in_the_outbox_while_the_pacs_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    // A port where nothing listens yet: the PACS is down.
    let pacs_port = vigie_test_support::free_port();
    let vigie = Vigie::start(tmp.path(), &vigie_config(pacs_port));
    let out = common::dcmtk(
        "storescu",
        &common::storescu_args(vigie.dicom, "-xe", &demo),
    );
    assert!(out.status.success());
    vigie.wait_for("a failed delivery attempt", Duration::from_secs(60), |v| {
        v.log_text().contains("delivery failed, will retry")
    });
    let status = vigie.json("/api/v1/status");
    assert_eq!(status["outbox"]["pending"], 1, "{status}");
    assert_eq!(status["outbox"]["sent"], 0);

    // The PACS comes up on that port: the result arrives.
    let orthanc = Orthanc::start_on_dicom_port(pacs_port);
    let expected: BTreeSet<String> = demo.iter().map(|f| uids(f).0).collect();
    vigie.wait_for(
        "the result after the outage",
        Duration::from_secs(60),
        |_| studies_with_sr(&orthanc) == expected,
    );
    vigie.wait_for("the delivery recorded", Duration::from_secs(10), |v| {
        let outbox = &v.json("/api/v1/status")["outbox"];
        outbox["sent"] == 1 && outbox["pending"] == 0
    });
}
