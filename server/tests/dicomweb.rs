//! DICOMweb end to end through the real server: STOW-RS, QIDO-RS and
//! WADO-RS with the `dicomweb-client` package as the client, then with
//! Orthanc's DICOMweb plugin pointed at Vigie as its remote server; STOW
//! refusals with their failure reasons; and the demo studies sent by STOW
//! giving the same results and audit records as the same studies sent by
//! C-STORE.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vigie, base_config, demo_studies, multipart, only_part, send, token, uids};
use vigie_test_support::{oracle, repo_root};

const STUDY_ROUTE: &str = r#"
[[routing.rules]]
name = "brain-mr"
modalities = ["MR"]
"#;

const STOW_TYPE: &str = "multipart/related; type=\"application/dicom\"; boundary=XyZ-42";

fn stow(vigie: &Vigie, path: &str, content_type: &str, body: &[u8]) -> common::HttpResponse {
    vigie.http(
        "POST",
        path,
        Some(token("operator")),
        &[("Content-Type", content_type)],
        body,
    )
}

fn url(vigie: &Vigie) -> String {
    format!("http://127.0.0.1:{}/dicomweb", vigie.http)
}

fn details(record: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(record["details"].as_str().unwrap()).unwrap()
}

#[test]
fn dicomweb_client_stores_searches_and_retrieves_results() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 3);
    let vigie = Vigie::start(tmp.path(), &base_config(STUDY_ROUTE));
    let mut args = vec!["store".to_string(), url(&vigie), token("operator").into()];
    args.extend(demo.iter().map(|p| p.display().to_string()));
    let out = oracle("dicomweb_peer.py", &args);
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stored["referenced"].as_array().unwrap().len(),
        3,
        "{stored}"
    );
    assert!(stored["failed"].as_array().unwrap().is_empty());
    // Stored durably and audited as STOW-RS before the answer.
    let stored_records = vigie.audit_records("kind=instance_stored");
    assert_eq!(stored_records.len(), 3);
    for r in &stored_records {
        let d = details(r);
        assert_eq!(d["source"], "stow-rs");
        assert_eq!(d["calling_ae_title"], "test-operator");
        assert!(Path::new(d["path"].as_str().unwrap()).is_file());
    }
    vigie.wait_for("3 jobs done", Duration::from_secs(120), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 3
    });

    let out = oracle(
        "dicomweb_peer.py",
        ["browse", &url(&vigie), token("reader")],
    );
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let studies = found["studies"].as_array().unwrap();
    assert_eq!(studies.len(), 3, "{found}");
    let expected: BTreeSet<String> = demo.iter().map(|f| uids(f).0).collect();
    let got: BTreeSet<String> = studies
        .iter()
        .map(|s| s["study"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected);
    for s in studies {
        // The received MR series and the SR series Vigie created.
        assert_eq!(s["modalities"], serde_json::json!(["MR", "SR"]), "{s}");
        assert_eq!(s["series_count"], 2);
        for series in s["series"].as_array().unwrap() {
            assert_eq!(series["instances"], series["metadata"], "{series}");
        }
    }
    // Each SR, retrieved by WADO-RS and parsed by highdicom, gives the
    // finding the audit trail recorded for its source image.
    let srs = found["sr"].as_array().unwrap();
    assert_eq!(srs.len(), 3);
    let inferences = vigie.audit_records("kind=inference");
    for sr in srs {
        let finding = &sr["findings"][0];
        let source = finding["source"][0].as_str().unwrap();
        let inference = inferences
            .iter()
            .find(|r| r["sop_instance_uid"] == source)
            .unwrap_or_else(|| panic!("an inference record for {source}"));
        let d = details(inference);
        let probabilities: Vec<f64> = find_key(&d["frames"][0]["finding"], "probabilities")
            .and_then(|p| p.as_array().cloned())
            .unwrap_or_else(|| panic!("probabilities in {d}"))
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        // Every probability the SR reports is one the model produced.
        for f in sr["findings"].as_array().unwrap() {
            let p = f["probability"].as_f64().unwrap();
            assert!(
                probabilities.iter().any(|q| (q - p).abs() < 1e-4),
                "SR probability {p} not among {probabilities:?}"
            );
        }
    }
    // The WADO-RS reads are audited.
    assert!(!vigie.audit_records("kind=dicomweb_retrieve").is_empty());
}

#[test]
fn qido_matching_paging_and_includefield() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 4);
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    let body = multipart(&demo, "XyZ-42");
    let r = stow(&vigie, "/dicomweb/studies", STOW_TYPE, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/dicom+json"));
    assert_eq!(r.json()["00081199"]["Value"].as_array().unwrap().len(), 4);
    let get = |path: &str| {
        vigie.http(
            "GET",
            path,
            Some(token("reader")),
            &[("Accept", "application/dicom+json")],
            b"",
        )
    };

    let all = get("/dicomweb/studies").json();
    assert_eq!(all.as_array().unwrap().len(), 4);
    let first = &all[0];
    assert_eq!(first["00080056"]["Value"][0], "ONLINE");
    let patient = first["00100020"]["Value"][0].as_str().unwrap().to_string();
    let study = first["0020000D"]["Value"][0].as_str().unwrap().to_string();
    // Single value, UID list, wildcard, range and computed attribute.
    let one = get(&format!("/dicomweb/studies?PatientID={patient}")).json();
    assert!(
        one.as_array()
            .unwrap()
            .iter()
            .all(|s| s["00100020"]["Value"][0] == patient.as_str())
    );
    assert_eq!(
        get(&format!(
            "/dicomweb/studies?StudyInstanceUID={study},1.2.3.4"
        ))
        .json()
        .as_array()
        .unwrap()
        .len(),
        1
    );
    let prefix = &patient[..patient.len().min(2)];
    assert!(
        !get(&format!("/dicomweb/studies?00100020={prefix}*"))
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get("/dicomweb/studies?ModalitiesInStudy=MR")
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(get("/dicomweb/studies?ModalitiesInStudy=CT").status, 204);
    assert_eq!(
        get("/dicomweb/studies?StudyDate=19000101-19000102").status,
        204
    );
    // Paging, with a warning saying more remain.
    let page = get("/dicomweb/studies?limit=3&offset=0");
    assert_eq!(page.json().as_array().unwrap().len(), 3);
    assert!(
        page.header("warning")
            .unwrap()
            .contains("1 additional result"),
        "{:?}",
        page.headers
    );
    assert_eq!(
        get("/dicomweb/studies?limit=3&offset=3")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // includefield of an attribute outside the index comes from the header.
    let series = get(&format!(
        "/dicomweb/studies/{study}/series?includefield=ImageType"
    ))
    .json();
    let instances = get(&format!(
        "/dicomweb/studies/{study}/instances?includefield=00080008"
    ))
    .json();
    assert!(series[0].get("0020000E").is_some());
    assert_eq!(instances[0]["00080008"]["vr"], "CS", "{instances}");
    // Unsupported keys: ignored with a warning; unknown ones: 400.
    let fuzzy = get("/dicomweb/studies?fuzzymatching=true");
    assert_eq!(fuzzy.status, 200);
    assert!(fuzzy.header("warning").unwrap().contains("fuzzymatching"));
    assert_eq!(get("/dicomweb/studies?NoSuchKeyword=1").status, 400);
    // A media type it does not serve: 406.
    let xml = vigie.http(
        "GET",
        "/dicomweb/studies",
        Some(token("reader")),
        &[(
            "Accept",
            "multipart/related; type=\"application/dicom+xml\"",
        )],
        b"",
    );
    assert_eq!(xml.status, 406);
    // WADO-RS: the instance as stored, byte for byte.
    let (st, se, sop) = uids(&demo[0]);
    let wado = vigie.http(
        "GET",
        &format!("/dicomweb/studies/{st}/series/{se}/instances/{sop}"),
        Some(token("reader")),
        &[(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )],
        b"",
    );
    assert_eq!(wado.status, 200);
    let original = std::fs::read(&demo[0]).unwrap();
    assert!(
        wado.body
            .windows(original.len())
            .any(|w| w == original.as_slice()),
        "the part holds the stored file"
    );
    let missing = vigie.http(
        "GET",
        &format!("/dicomweb/studies/{st}/series/{se}/instances/1.2.3"),
        Some(token("reader")),
        &[],
        b"",
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    let meta = vigie
        .http(
            "GET",
            &format!("/dicomweb/studies/{st}/metadata"),
            Some(token("reader")),
            &[],
            b"",
        )
        .json();
    assert_eq!(meta[0]["00080018"]["Value"][0], sop.as_str());
    // No bulk data in metadata: Pixel Data is a BulkDataURI (#23).
    let pixel = &meta[0]["7FE00010"];
    assert!(
        pixel.get("Value").is_none() && pixel.get("InlineBinary").is_none(),
        "no bulk data in metadata: {pixel}"
    );
    assert!(
        pixel["BulkDataURI"]
            .as_str()
            .is_some_and(|uri| uri.ends_with(&format!("/instances/{sop}/bulkdata/7FE00010"))),
        "{pixel}"
    );
}

#[test]
fn stow_refusals_carry_their_reasons_and_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let config = base_config("").replace(
        "[http]\nbind = \"127.0.0.1\"",
        "[http]\nbind = \"127.0.0.1\"\nmax_stow_mib = 8\nmax_json_kib = 1",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    let junk = tmp.path().join("junk.dcm");
    std::fs::write(&junk, b"not a DICOM file at all").unwrap();
    let ct = vigie_test_support::pydicom_test_files().join("CT_small.dcm");
    // Into demo[0]'s study: demo[1] belongs to another, junk is not DICOM.
    let (study, _, _) = uids(&demo[0]);
    let files = vec![demo[0].clone(), demo[1].clone(), junk, ct];
    let r = stow(
        &vigie,
        &format!("/dicomweb/studies/{study}"),
        STOW_TYPE,
        &multipart(&files, "XyZ-42"),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["00081199"]["Value"].as_array().unwrap().len(), 1);
    let reasons: BTreeSet<u64> = body["00081198"]["Value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["00081197"]["Value"][0].as_u64().unwrap())
        .collect();
    // Other study: A900; not DICOM: C000; CT_small is in another study too.
    assert_eq!(reasons, BTreeSet::from([0xA900, 0xC000]), "{body}");
    let warnings: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "warning")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("another study")));
    let refused = vigie.audit_records("kind=instance_refused");
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|r| details(r)["source"] == "stow-rs"));
    // Nothing but the accepted instance reached the store.
    let status = vigie.json("/api/v1/status");
    assert_eq!(status["ingest"]["stored"], 1);
    assert_eq!(status["ingest"]["refused"], 3);
    let staging: Vec<_> = std::fs::read_dir(vigie.data.join("staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "no staging file left: {staging:?}");
    // Everything refused: 409.
    let r = stow(
        &vigie,
        &format!("/dicomweb/studies/{study}"),
        STOW_TYPE,
        &multipart(&demo[1..], "XyZ-42"),
    );
    assert_eq!(r.status, 409);
    // Not multipart/related of application/dicom: 415, with a JSON error.
    let r = stow(&vigie, "/dicomweb/studies", "application/dicom", b"x");
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
    let r = stow(
        &vigie,
        "/dicomweb/studies",
        "multipart/related; type=\"application/dicom+json\"; boundary=a",
        b"x",
    );
    assert_eq!(r.status, 415);
    // Truncated body (no closing delimiter): 400.
    let mut cut = multipart(&demo[..1], "XyZ-42");
    cut.truncate(cut.len() - 12);
    let r = stow(&vigie, "/dicomweb/studies", STOW_TYPE, &cut);
    assert_eq!(r.status, 400);
    // Past max_stow_mib (8 MiB): 413. Past max_json_kib on the JSON API: 413.
    let size = std::fs::metadata(&demo[0]).unwrap().len() as usize;
    let big: Vec<PathBuf> = std::iter::repeat_n(demo[0].clone(), (9 << 20) / size + 1).collect();
    let body = multipart(&big, "XyZ-42");
    assert!(body.len() > 8 << 20);
    let r = stow(&vigie, "/dicomweb/studies", STOW_TYPE, &body);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let json = format!("{{\"model\": \"{}\"}}", "x".repeat(2048));
    let r = stow(
        &vigie,
        &format!("/api/v1/studies/{study}/analyses"),
        "application/json",
        json.as_bytes(),
    );
    assert_eq!(r.status, 413);
    let staging: Vec<_> = std::fs::read_dir(vigie.data.join("staging"))
        .unwrap()
        .collect();
    assert!(
        staging.is_empty(),
        "no staging file left after 413: {staging:?}"
    );
}

fn find_key<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        _ => None,
    }
}

/// (kind, outcome, study, sop, stable details) of the records that say
/// what was stored, analysed and created, whatever the protocol.
fn comparable(vigie: &Vigie) -> BTreeSet<String> {
    let keep = [
        "instance_stored",
        "instance_pixels",
        "inference",
        "result_created",
        "job_done",
    ];
    let mut out = BTreeSet::new();
    for r in vigie.audit_records("") {
        let kind = r["kind"].as_str().unwrap();
        if !keep.contains(&kind) {
            continue;
        }
        let d = details(&r);
        let stable = match kind {
            // Each appliance keys its own Patient ID pseudonyms.
            "instance_stored" => serde_json::json!([
                d["file_sha256"],
                d["sop_class_uid"],
                d["transfer_syntax"],
                d["patient_id"]["hmac_sha256"].is_string()
            ]),
            "instance_pixels" => serde_json::json!([d["pixels_sha256"], d["file_sha256"]]),
            "inference" => serde_json::json!([
                d["input"]["pixels_sha256"],
                d["frames"][0]["finding"],
                d["frames"][0]["raw_output"]
            ]),
            "result_created" => serde_json::json!([d["kind"], d["source_sop_instance_uid"]]),
            _ => serde_json::json!([d["results"]]),
        };
        // Result objects get new UIDs each run: only sources are compared.
        let sop = if kind == "result_created" {
            serde_json::Value::Null
        } else {
            r["sop_instance_uid"].clone()
        };
        out.insert(format!(
            "{kind} {} {} {sop} {stable}",
            r["outcome"], r["study_instance_uid"]
        ));
    }
    out
}

#[test]
fn stow_of_the_demo_studies_matches_dimse_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 17);
    assert_eq!(demo.len(), 17);
    let dimse_dir = tmp.path().join("dimse");
    let stow_dir = tmp.path().join("stow");
    std::fs::create_dir_all(&dimse_dir).unwrap();
    std::fs::create_dir_all(&stow_dir).unwrap();
    let dimse = Vigie::start(&dimse_dir, &base_config(STUDY_ROUTE));
    let stow = Vigie::start(&stow_dir, &base_config(STUDY_ROUTE));
    assert!(send(dimse.dicom, &demo).iter().all(|o| o.delivered()));
    let mut args = vec!["store".to_string(), url(&stow), token("operator").into()];
    args.extend(demo.iter().map(|p| p.display().to_string()));
    oracle("dicomweb_peer.py", &args);
    for v in [&dimse, &stow] {
        v.wait_for(
            "17 jobs done and pixels hashed",
            Duration::from_secs(300),
            |v| {
                v.jobs().iter().filter(|j| j["state"] == "done").count() == 17
                    && v.audit_records("kind=instance_pixels").len() == 17
                    // Done in the catalog a moment before `job_done` is noted.
                    && v.audit_records("kind=job_done").len() == 17
            },
        );
    }
    let (a, b) = (comparable(&dimse), comparable(&stow));
    assert_eq!(a.len(), 17 * 5);
    let differ: Vec<&String> = a.symmetric_difference(&b).collect();
    assert!(
        differ.is_empty(),
        "DIMSE and STOW-RS ingest differ: {differ:#?}"
    );
}

#[test]
fn orthanc_dicomweb_plugin_pushes_to_and_pulls_from_vigie() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 2);
    let vigie = Vigie::start(tmp.path(), &base_config(STUDY_ROUTE));
    let orthanc = vigie_test_support::Orthanc::start_with(
        "tests/peers/orthanc-dicomweb.json",
        &[
            ("@VIGIE_URL@", &format!("{}/", url(&vigie))),
            ("@VIGIE_TOKEN@", token("operator")),
        ],
    );
    let curl = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["-s", "-f", "-S"];
        all.extend_from_slice(args);
        let out = orthanc.curl(&all);
        assert!(
            out.status.success(),
            "curl {args:?}: {}\nOrthanc:\n{}\nVigie:\n{}",
            String::from_utf8_lossy(&out.stderr),
            orthanc.log(),
            vigie.log_text()
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let mut orthanc_studies = Vec::new();
    for file in &demo {
        let r = curl(&[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", file.display()),
            &orthanc.url("/instances"),
        ]);
        orthanc_studies.push(r["ParentStudy"].as_str().unwrap().to_string());
    }
    // Orthanc sends its studies to Vigie by STOW-RS…
    let body = serde_json::json!({ "Resources": orthanc_studies }).to_string();
    curl(&[
        "-X",
        "POST",
        "-d",
        &body,
        &orthanc.url("/dicom-web/servers/vigie/stow"),
    ]);
    vigie.wait_for("2 jobs done", Duration::from_secs(120), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 2
    });
    // …finds them with Vigie's results by QIDO-RS through its proxy…
    let body = serde_json::json!({ "Uri": "/studies", "Arguments": { "ModalitiesInStudy": "SR" } })
        .to_string();
    let found = curl(&[
        "-X",
        "POST",
        "-d",
        &body,
        &orthanc.url("/dicom-web/servers/vigie/get"),
    ]);
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    // …and pulls the whole studies back by WADO-RS: now it holds the SRs.
    for file in &demo {
        let (study, _, _) = uids(file);
        let body = serde_json::json!({ "Resources": [{ "Study": study }] }).to_string();
        curl(&[
            "-X",
            "POST",
            "-d",
            &body,
            &orthanc.url("/dicom-web/servers/vigie/retrieve"),
        ]);
    }
    let series = curl(&[&orthanc.url("/series?expand")]);
    let sr = series
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["MainDicomTags"]["Modality"] == "SR")
        .count();
    assert_eq!(sr, 2, "{series}");
    let stored: BTreeMap<String, usize> = vigie
        .audit_records("kind=instance_stored")
        .iter()
        .map(|r| (details(r)["source"].as_str().unwrap().to_string(), 1))
        .fold(BTreeMap::new(), |mut m, (k, n)| {
            *m.entry(k).or_insert(0) += n;
            m
        });
    assert_eq!(stored.get("stow-rs"), Some(&2));
    let _ = repo_root();
}

/// #23's defects "WADO-RS cut short" and "Implementation Class UID after
/// transcoding": WADO-RS of an instance that cannot be transcoded (pydicom's
/// 12-bit JPEG Extended file, which STOW-RS accepts) answered 200 and then
/// cut the body; now it is a 406 naming the instance before anything is
/// sent, at instance and at study level, and `transfer-syntax=*` still
/// serves it whole. A transcoded instance (RLE Lossless to Explicit VR
/// Little Endian) is Vigie's file: its meta group names Vigie's
/// Implementation Class UID and Version Name, not the sender's.
#[test]
fn regression_wado_rs_decides_before_sending_and_names_vigie_in_what_it_transcodes() {
    let tmp = tempfile::tempdir().unwrap();
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    let files = vigie_test_support::pydicom_test_files();
    let jpeg12 = files.join("JPGExtended.dcm");
    let rle = files.join("MR_small_RLE.dcm");
    let r = stow(
        &vigie,
        "/dicomweb/studies",
        STOW_TYPE,
        &multipart(&[jpeg12.clone(), rle.clone()], "XyZ-42"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let get = |path: &str, accept: &str| {
        vigie.http(
            "GET",
            path,
            Some(token("reader")),
            &[("Accept", accept)],
            b"",
        )
    };
    let default = "multipart/related; type=\"application/dicom\"";
    let (st, se, sop) = uids(&jpeg12);
    for path in [
        format!("/dicomweb/studies/{st}/series/{se}/instances/{sop}"),
        format!("/dicomweb/studies/{st}"),
    ] {
        let r = get(&path, default);
        assert_eq!(
            r.status,
            406,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(&sop) && message.contains("transfer-syntax=*"),
            "{message}"
        );
        assert!(
            !message.contains(&*vigie.data.to_string_lossy()),
            "no path: {message}"
        );
    }
    let whole = get(
        &format!("/dicomweb/studies/{st}/series/{se}/instances/{sop}"),
        "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
    );
    assert_eq!(whole.status, 200);
    let part = only_part(&whole);
    let original = std::fs::read(&jpeg12).unwrap();
    assert_eq!(part.len(), original.len(), "served whole, as stored");
    // Nothing transcoded is left behind in the staging folder.
    let staged: Vec<_> = std::fs::read_dir(vigie.data.join("staging"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("wado-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");

    let (st, se, sop) = uids(&rle);
    let transcoded = get(
        &format!("/dicomweb/studies/{st}/series/{se}/instances/{sop}"),
        default,
    );
    assert_eq!(transcoded.status, 200);
    let copy = tmp.path().join("transcoded.dcm");
    std::fs::write(&copy, only_part(&transcoded)).unwrap();
    let object = dicom_object::open_file(&copy).unwrap();
    let meta = object.meta();
    assert_eq!(meta.transfer_syntax(), "1.2.840.10008.1.2.1");
    let trimmed = |text: &str| text.trim_end_matches(['\0', ' ']).to_string();
    assert_eq!(
        trimmed(&meta.implementation_class_uid),
        vigie_dicom_io::write::IMPLEMENTATION_CLASS_UID
    );
    assert_eq!(
        meta.implementation_version_name.as_deref().map(trimmed),
        Some(vigie_dicom_io::write::IMPLEMENTATION_VERSION_NAME.to_string())
    );
    let sender = dicom_object::open_file(&rle).unwrap();
    assert_ne!(
        trimmed(&sender.meta().implementation_class_uid),
        trimmed(&meta.implementation_class_uid),
        "the sender's identifiers are not kept"
    );
}

/// #23, "Attributes asked at the wrong level": OHIF asks for Modality
/// (0008,0060) at study level, and it came back from one arbitrary
/// instance. Now a series- or instance-level attribute asked at study level
/// is left out; ModalitiesInStudy says what the study holds, and at series
/// level Modality is the series' own.
#[test]
fn regression_modality_asked_at_study_level_is_not_taken_from_an_arbitrary_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    let r = stow(
        &vigie,
        "/dicomweb/studies",
        STOW_TYPE,
        &multipart(&demo, "XyZ-42"),
    );
    assert_eq!(r.status, 200);
    let get = |path: &str| {
        vigie
            .http(
                "GET",
                path,
                Some(token("reader")),
                &[("Accept", "application/dicom+json")],
                b"",
            )
            .json()
    };
    let studies = get("/dicomweb/studies?includefield=00081030,00080060,SeriesNumber");
    let study = &studies[0];
    assert!(study.get("00080060").is_none(), "{study}");
    assert!(study.get("00200011").is_none(), "{study}");
    assert_eq!(study["00080061"]["Value"][0], "MR", "{study}");
    let (st, _, _) = uids(&demo[0]);
    let series = get(&format!(
        "/dicomweb/studies/{st}/series?includefield=00080060"
    ));
    assert_eq!(series[0]["00080060"]["Value"][0], "MR", "{series}");
}
