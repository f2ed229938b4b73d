//! The Query SCP (C-FIND, Patient Root and Study Root, `dicom.query`)
//! against real peers: DCMTK `findscu` at every level, with wildcards and
//! UID keys, and Orthanc querying Vigie through its own query/retrieve
//! (`/modalities/vigie/query`); C-MOVE with DCMTK `movescu` and Orthanc;
//! C-GET with DCMTK `getscu`. The answers cover received instances and
//! Vigie's own result objects (the SR of each study).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, demo_studies, storescu_args, uids};
use vigie_test_support::{Orthanc, python};

/// The identifiers `findscu` extracted into `dir` (rsp0001.dcm, …), read
/// by pydicom: one JSON object per response, keyword → value (text).
fn responses(dir: &Path) -> Vec<serde_json::Value> {
    let script = r#"
import json, pathlib, sys
import pydicom
out = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("rsp*.dcm")):
    ds = pydicom.dcmread(path, force=True)
    out.append({e.keyword or str(e.tag): str(e.value) for e in ds if e.tag.group != 2})
print(json.dumps(out))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `findscu` (`-S` Study Root or `-P` Patient Root) with `keys`; the
/// response identifiers.
fn find(vigie: &Vigie, root: &str, keys: &[&str], dir: &Path) -> Vec<serde_json::Value> {
    std::fs::create_dir_all(dir).unwrap();
    let mut args: Vec<String> = [
        root, "-aet", "FINDER", "-aec", "VIGIE", "-to", "10", "-X", "-od",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    for key in keys {
        args.push("-k".into());
        args.push((*key).to_string());
    }
    args.push("127.0.0.1".into());
    args.push(vigie.dicom.to_string());
    let out = dcmtk("findscu", &args);
    assert!(
        out.status.success(),
        "findscu {keys:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    responses(dir)
}

fn config(query: bool) -> String {
    let mut config = base_config(
        r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
"#,
    );
    if query {
        config = config.replace("artim_timeout_s = 5", "artim_timeout_s = 5\nquery = true");
        // Querying needs its callers named.
        for caller in ["MODALITY", "FINDER", "MOVER", "GETTER", "ORTHANC"] {
            config.push_str(&format!(
                "\n[[dicom.allowed_callers]]\nae_title = \"{caller}\"\n"
            ));
        }
    }
    config
}

/// Vigie with `config`, two demo studies sent by `storescu` and analysed.
fn two_analysed_studies(dir: &Path, config: &str) -> (Vigie, Vec<std::path::PathBuf>) {
    let vigie = Vigie::start(dir, config);
    let demo = demo_studies(&dir.join("demo"), 2);
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", &demo));
    assert!(out.status.success());
    vigie.wait_for("both jobs done", Duration::from_secs(90), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 2
    });
    (vigie, demo)
}

#[test]
fn findscu_and_orthanc_query_received_studies_and_vigie_s_results_at_every_level() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, demo) = two_analysed_studies(tmp.path(), &config(true));
    let (study, _, _) = uids(&demo[0]);
    let work = tmp.path().join("find");

    // STUDY level, every study: the MR and the SR Vigie made.
    let studies = find(
        &vigie,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances",
            "AccessionNumber",
        ],
        &work.join("studies"),
    );
    assert_eq!(studies.len(), 2, "{studies:?}");
    for s in &studies {
        assert_eq!(s["QueryRetrieveLevel"], "STUDY");
        let modalities = s["ModalitiesInStudy"].as_str().unwrap();
        assert!(
            modalities.contains("MR") && modalities.contains("SR"),
            "{s}"
        );
        assert_eq!(s["NumberOfStudyRelatedInstances"], "2", "{s}");
        assert!(
            s.get("AccessionNumber").is_some(),
            "every key asked is returned: {s}"
        );
    }

    // SERIES level in one study, by modality: the SR series only.
    let series = find(
        &vigie,
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={study}"),
            "SeriesInstanceUID",
            "Modality=SR",
            "NumberOfSeriesRelatedInstances",
        ],
        &work.join("series"),
    );
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["Modality"], "SR");
    assert_eq!(
        series[0]["NumberOfSeriesRelatedInstances"], "1",
        "{series:?}"
    );
    assert_eq!(series[0]["StudyInstanceUID"], study);

    // IMAGE level, a list of SOP Class UIDs: the MR images, with their
    // Rows as a number (US) and their unique keys though not asked.
    let images = find(
        &vigie,
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            "Rows",
            "SOPClassUID=1.2.840.10008.5.1.4.1.1.4\\1.2.840.10008.5.1.4.1.1.7",
        ],
        &work.join("images"),
    );
    assert_eq!(images.len(), 2, "{images:?}");
    for image in &images {
        let rows: u32 = image["Rows"].as_str().unwrap().parse().unwrap();
        assert!((64..=4096).contains(&rows), "{image}");
        for unique in ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"] {
            assert!(
                image[unique]
                    .as_str()
                    .is_some_and(|u| u.starts_with("2.25.") || u.contains('.')),
                "{unique}: {image}"
            );
        }
    }

    // Several values in a key: either matches.
    let either = find(
        &vigie,
        "-S",
        &["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=CT\\MR"],
        &work.join("either"),
    );
    assert_eq!(either.len(), 2, "{either:?}");

    // Patient Root, PATIENT level, a wildcard on the name.
    let patients = find(
        &vigie,
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            "PatientName=*",
            "PatientID",
            "NumberOfPatientRelatedStudies",
        ],
        &work.join("patients"),
    );
    let related: u64 = patients
        .iter()
        .map(|p| {
            p["NumberOfPatientRelatedStudies"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(related, 2, "{patients:?}");

    // A name that matches nothing: no match, success.
    let none = find(
        &vigie,
        "-S",
        &["QueryRetrieveLevel=STUDY", "PatientName=NOBODY^*"],
        &work.join("none"),
    );
    assert!(none.is_empty());

    // On record, keys without their values.
    let records = vigie.audit_records("kind=dicom_query");
    assert!(records.len() >= 5, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| !r["details"].as_str().unwrap().contains("NOBODY")),
        "query values (patient identifiers) never in the trail"
    );
    assert!(!vigie.log_text().contains("NOBODY"), "nor in the log");

    // Orthanc queries Vigie through its own query/retrieve.
    let orthanc = Orthanc::start();
    orthanc.add_modality(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": vigie.dicom}),
    );
    let query = orthanc.rest(&[
        "-X",
        "POST",
        "-d",
        &serde_json::json!({"Level": "Study", "Query": {"StudyInstanceUID": "", "ModalitiesInStudy": ""}})
            .to_string(),
        &orthanc.url("/modalities/vigie/query"),
    ]);
    let id = query["ID"].as_str().unwrap();
    let answers = orthanc.rest(&[&orthanc.url(&format!("/queries/{id}/answers?expand&simplify"))]);
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a["ModalitiesInStudy"].as_str().unwrap().contains("SR"))
    );
}

#[test]
fn without_dicom_query_c_find_is_not_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &config(false));
    let dir = tmp.path().join("find");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dcmtk(
        "findscu",
        &[
            "-S".into(),
            "-aec".into(),
            "VIGIE".into(),
            "-k".into(),
            "QueryRetrieveLevel=STUDY".into(),
            "127.0.0.1".into(),
            vigie.dicom.to_string(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(vigie.audit_records("kind=dicom_query").is_empty());
}

#[test]
fn movescu_and_orthanc_retrieve_a_study_and_its_results_to_a_configured_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("pacs");
    std::fs::create_dir_all(&received).unwrap();
    let pacs_port = vigie_test_support::free_port();
    let mut storescp = Command::new("storescp")
        .args(["-aet", "PACS", "-od"])
        .arg(&received)
        .arg(pacs_port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("storescp runs");
    let orthanc = Orthanc::start();
    let config = config(true).replace(
        "[[routing.rules]]",
        &format!(
            "[destinations.pacs]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\n[destinations.orthanc]\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {}\n\n[[routing.rules]]",
            orthanc.dicom
        ),
    );
    let vigie = Vigie::start(tmp.path(), &config);
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", &demo));
    assert!(out.status.success());
    vigie.wait_for("both jobs done", Duration::from_secs(90), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 2
    });
    let (study, _, _) = uids(&demo[0]);
    let movescu = |destination: &str| {
        dcmtk(
            "movescu",
            &[
                "-S",
                "-aet",
                "MOVER",
                "-aec",
                "VIGIE",
                "-aem",
                destination,
                "-to",
                "20",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                &format!("StudyInstanceUID={study}"),
                "127.0.0.1",
                &vigie.dicom.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        )
    };
    // To the configured PACS: the MR and the SR of the study, nothing else.
    let out = movescu("PACS");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = || -> Vec<String> {
        std::fs::read_dir(&received)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect()
    };
    vigie.wait_for("two instances at the PACS", Duration::from_secs(20), |_| {
        names().len() == 2
    });
    let names = names();
    assert!(names.iter().any(|n| n.starts_with("MR")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("SR")), "{names:?}");
    let moved = vigie.audit_records("kind=dicom_retrieve&outcome=ok");
    assert_eq!(moved.len(), 1, "{moved:?}");
    let details: serde_json::Value =
        serde_json::from_str(moved[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["completed"], 2);
    assert_eq!(details["failed"], 0);

    // To an AE that is not a destination: refused (A801), nothing sent.
    let _ = movescu("NOWHERE");
    vigie.wait_for("the refusal on record", Duration::from_secs(10), |v| {
        !v.audit_records("kind=dicom_retrieve&outcome=refused")
            .is_empty()
    });

    // Orthanc retrieves the study into itself through its own C-MOVE.
    orthanc.add_modality(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": vigie.dicom}),
    );
    orthanc.rest(&[
        "-X",
        "POST",
        "-d",
        &serde_json::json!({
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": study}],
            "TargetAet": "ORTHANC",
            "Synchronous": true,
        })
        .to_string(),
        &orthanc.url("/modalities/vigie/move"),
    ]);
    vigie.wait_for(
        "the study and its SR in Orthanc",
        Duration::from_secs(20),
        |_| orthanc.series_count("SR") == 1 && orthanc.series_count("MR") == 1,
    );
    let _ = storescp.kill();
    let _ = storescp.wait();
}

#[test]
fn getscu_retrieves_a_study_and_its_results_on_its_own_association() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, demo) = two_analysed_studies(tmp.path(), &config(true));
    let (study, _, _) = uids(&demo[0]);
    let got = tmp.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    let getscu = |root: &str, keys: &[String]| {
        let mut args: Vec<String> = [root, "-aet", "FINDER", "-aec", "VIGIE", "-to", "20", "-od"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(got.display().to_string());
        for key in keys {
            args.push("-k".into());
            args.push(key.clone());
        }
        args.push("127.0.0.1".into());
        args.push(vigie.dicom.to_string());
        dcmtk("getscu", &args)
    };
    // Study Root, STUDY level: the MR and the SR of that study only.
    let out = getscu(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY".into(),
            format!("StudyInstanceUID={study}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&got)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    };
    let first = names();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().any(|n| n.starts_with("MR")), "{first:?}");
    assert!(first.iter().any(|n| n.starts_with("SR")), "{first:?}");
    // What came back is what was stored: the MR byte for byte in its data
    // set (the file DCMTK wrote has its own meta header).
    let mr = got.join(first.iter().find(|n| n.starts_with("MR")).unwrap());
    let (_, _, sop) = uids(&mr);
    assert_eq!(sop, uids(&demo[0]).2);
    let records = vigie.audit_records("kind=dicom_retrieve&outcome=ok");
    assert_eq!(records.len(), 1, "{records:?}");
    let details: serde_json::Value =
        serde_json::from_str(records[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["service"], "C-GET");
    assert_eq!(details["destination"], "FINDER");
    assert_eq!(details["completed"], 2);
    // Patient Root model, STUDY level (Patient ID a wildcard): the other
    // study, MR and SR.
    std::fs::remove_dir_all(&got).unwrap();
    std::fs::create_dir_all(&got).unwrap();
    let out = getscu(
        "-P",
        &[
            "QueryRetrieveLevel=STUDY".into(),
            "PatientID=*".into(),
            format!("StudyInstanceUID={}", uids(&demo[1]).0),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names().len(), 2, "{:?}", names());
    // No match: Success with nothing sent.
    std::fs::remove_dir_all(&got).unwrap();
    std::fs::create_dir_all(&got).unwrap();
    let out = getscu(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY".into(),
            "StudyInstanceUID=1.2.3.4.5.6.7.8.9".into(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(names().is_empty());
}

/// `tests/peers/get_scu.py` (pynetdicom) against `vigie` with `args`; its
/// JSON summary.
fn pynetdicom_get(vigie: &Vigie, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(vigie_test_support::repo_root().join("tests/peers/get_scu.py"))
        .args(["127.0.0.1", &vigie.dicom.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn c_get_counts_an_instance_without_context_as_failed_and_stops_on_c_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let (vigie, demo) = two_analysed_studies(tmp.path(), &config(true));
    let (study, _, mr) = uids(&demo[0]);
    // The requester takes the SCP role for MR only: the SR cannot go.
    let got = pynetdicom_get(&vigie, &["--study", &study, "--classes", "MR"]);
    assert_eq!(got["final"], 0xB000, "{got}");
    assert_eq!(got["completed"], 1, "{got}");
    assert_eq!(got["failed"], 1, "{got}");
    assert_eq!(got["received"], serde_json::json!([mr]), "{got}");
    let failed = got["failed_uids"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{got}");
    assert_ne!(failed[0], mr.as_str(), "the SR is the one that failed");
    // One pending response (after the first sub-operation), with the count
    // remaining.
    assert_eq!(got["statuses"][0], 0xFF00, "{got}");
    // Every study (four instances), cancelled after the first pending
    // response: FE00, fewer than four sent, the rest remaining.
    let got = pynetdicom_get(&vigie, &["--study", "*", "--cancel-after", "1"]);
    assert_eq!(got["final"], 0xFE00, "{got}");
    let completed = got["completed"].as_u64().unwrap();
    assert!((1..4).contains(&completed), "{got}");
    assert_eq!(completed + got["remaining"].as_u64().unwrap(), 4, "{got}");
    assert_eq!(got["received"].as_array().unwrap().len() as u64, completed);
    let records = vigie.audit_records("kind=dicom_retrieve");
    let statuses: Vec<String> = records
        .iter()
        .map(|r| {
            let d: serde_json::Value =
                serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
            d["status"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(statuses, ["0xB000", "0xFE00"], "{records:?}");
}
