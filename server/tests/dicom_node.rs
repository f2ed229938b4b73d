//! `vigie serve` as a DICOM node, against DCMTK's echoscu and storescu:
//! native and compressed instances stored unchanged where the layout says,
//! studies assembled and routed, jobs run; bad input answered with the
//! right status while the service keeps running.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Vigie, base_config, dataset_bytes, dcmtk, demo_studies, echo, send, storescu_args, uids, wrap,
};
use vigie_test_support::{oracle, pydicom_test_files};

fn storescu_ok(port: u16, proposal: &str, files: &[PathBuf]) {
    let out = dcmtk("storescu", &storescu_args(port, proposal, files));
    assert!(
        out.status.success(),
        "storescu {proposal} {files:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn storescu_and_echoscu_against_vigie_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 3);
    // Several of pydicom's files are one image in several encodings with
    // the same SOP Instance UID: each must replace the one before.
    let config = base_config("").replace(
        "min_free_mib = 0",
        "min_free_mib = 0\nduplicates = \"replace\"",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    assert!(echo(vigie.dicom), "C-ECHO:\n{}", vigie.log_text());

    storescu_ok(vigie.dicom, "-xe", &demo);
    for file in &demo {
        let (study, series, sop) = uids(file);
        let stored = vigie.stored(&study, &series, &sop);
        assert!(
            stored.is_file(),
            "{} stored at {}",
            file.display(),
            stored.display()
        );
    }

    // pydicom's files, each in its own transfer syntax (several share UIDs,
    // so each is checked before the next is sent).
    let root = pydicom_test_files();
    let cases = [
        ("CT_small.dcm", "-xe"),
        ("MR_small_bigendian.dcm", "-xb"),
        ("image_dfl.dcm", "-xd"),
        ("MR_small_RLE.dcm", "-xr"),
        ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
        ("MR_small_jpeg_ls_lossless.dcm", "-xt"),
        ("JPEG2000.dcm", "-xw"),
    ];
    for (name, proposal) in cases {
        let file = root.join(name);
        storescu_ok(vigie.dicom, proposal, std::slice::from_ref(&file));
        let (study, series, sop) = uids(&file);
        let stored = vigie.stored(&study, &series, &sop);
        let compared: serde_json::Value =
            serde_json::from_slice(&oracle("same_dataset.py", [&file, &stored]).stdout).unwrap();
        assert_eq!(compared["same"], true, "{name}: {compared}");
        let ts = &compared["transfer_syntaxes"];
        assert_eq!(ts[0], ts[1], "{name} kept its transfer syntax");
    }

    // The demo studies are brain MR: each gets a job, which writes an SR.
    vigie.wait_for("the demo jobs", Duration::from_secs(120), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() >= demo.len()
    });
    let jobs = vigie.jobs();
    for file in &demo {
        let (study, _, _) = uids(file);
        let job = jobs
            .iter()
            .find(|j| j["study_instance_uid"] == study.as_str())
            .unwrap_or_else(|| panic!("a job for {study}: {jobs:?}"));
        assert_eq!(job["model"], "brain-tumour-vgg16");
        let results = job["results"].as_array().unwrap();
        assert!(!results.is_empty());
        for result in results {
            let path = PathBuf::from(result.as_str().unwrap());
            assert!(path.starts_with(vigie.data.join("results").join(&study)));
            let sr = vigie_dicom_io::DicomFile::open(&path).unwrap();
            assert_eq!(sr.header().modality.as_deref(), Some("SR"));
        }
    }
    // The CT study matches no model: reported, not dropped.
    let (ct_study, _, _) = uids(&root.join("CT_small.dcm"));
    vigie.wait_for("the CT study to complete", Duration::from_secs(30), |v| {
        v.json("/api/v1/studies")
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["study_instance_uid"] == ct_study.as_str() && s["state"] == "complete")
    });
    let studies = vigie.json("/api/v1/studies");
    let ct = studies
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["study_instance_uid"] == ct_study.as_str())
        .unwrap();
    assert!(
        ct["note"].as_str().unwrap().contains("no routing rule"),
        "{ct}"
    );
    assert!(
        !jobs
            .iter()
            .any(|j| j["study_instance_uid"] == ct_study.as_str())
    );
    let status = vigie.json("/api/v1/status");
    assert_eq!(status["ingest"]["stored"], demo.len() + cases.len());
    assert_eq!(status["ingest"]["refused"], 0);
    assert!(vigie.log_text().contains("study complete, jobs queued"));
}

#[test]
fn bad_input_gets_the_right_status_and_the_service_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    let (_, dataset) = dataset_bytes(&demo[0]);
    let (study, series, sop) = uids(&demo[0]);

    // An MR data set sent as a CT instance: A900.
    let mismatch = tmp.path().join("mismatch.dcm");
    wrap(&mismatch, "1.2.840.10008.5.1.4.1.1.2", &sop, &dataset);
    // A data set that is not one: C000.
    let garbage = tmp.path().join("garbage.dcm");
    let mut junk = vec![0x08, 0x00, 0x16, 0x00, b'U', b'I', 0xF0, 0x7F];
    junk.extend_from_slice(b"not a data set at all");
    wrap(&garbage, "1.2.840.10008.5.1.4.1.1.4", "2.25.77", &junk);

    let outcomes = send(vigie.dicom, &[mismatch, garbage, demo[0].clone()]);
    let statuses: Vec<Option<u16>> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(
        statuses,
        vec![Some(0xA900), Some(0xC000), Some(0x0000)],
        "{outcomes:?}"
    );
    assert!(
        outcomes[0]
            .comment
            .as_deref()
            .unwrap()
            .contains("SOP Class")
    );
    // The good one is stored, the bad ones left nothing behind.
    assert!(vigie.stored(&study, &series, &sop).is_file());
    let staging: Vec<_> = std::fs::read_dir(vigie.data.join("staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "staging cleaned: {staging:?}");
    assert!(echo(vigie.dicom), "still serving");
    let log = vigie.log_text();
    assert!(log.contains("instance refused") && log.contains("0xA900") && log.contains("0xC000"));
    // No patient identifiers in the application log.
    let patient = vigie_dicom_io::DicomFile::open(&demo[0])
        .unwrap()
        .string(dicom_dictionary_std::tags::PATIENT_NAME)
        .unwrap();
    assert!(
        !patient.is_empty() && !log.contains(&patient),
        "patient name not logged"
    );

    // Below the free-space reserve: A700, and nothing stored.
    let full_dir = tempfile::tempdir().unwrap();
    let full = Vigie::start(
        full_dir.path(),
        &base_config("").replace("min_free_mib = 0", "min_free_mib = 1099511627776"),
    );
    let outcomes = send(full.dicom, &demo);
    assert_eq!(outcomes[0].status, Some(0xA700), "{outcomes:?}");
    assert!(
        outcomes[0]
            .comment
            .as_deref()
            .unwrap()
            .contains("storage full")
    );
    assert!(!full.stored(&study, &series, &sop).exists());
    assert!(echo(full.dicom), "still serving");
    assert_eq!(full.json("/api/v1/status")["ingest"]["refused"], 1);
}

/// A copy of `from` as another instance of the same series.
fn another_instance(from: &Path, to: &Path, sop: &str) {
    let mut object = dicom_object::open_file(from).unwrap();
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        dicom_core::PrimitiveValue::from(sop),
    ));
    object.update_meta(|m| m.media_storage_sop_instance_uid = sop.to_string());
    object.write_to_file(to).unwrap();
}

#[test]
fn late_instances_start_a_new_job_on_themselves_only() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    storescu_ok(vigie.dicom, "-xe", &demo);
    vigie.wait_for("the first job", Duration::from_secs(60), |v| {
        v.jobs().first().is_some_and(|j| j["state"] == "done")
    });
    // The study is complete; an instance arrives late.
    let late = tmp.path().join("late.dcm");
    another_instance(&demo[0], &late, "2.25.123456789012345678901234567890");
    storescu_ok(vigie.dicom, "-xe", std::slice::from_ref(&late));
    vigie.wait_for("the second job", Duration::from_secs(60), |v| {
        let jobs = v.jobs();
        jobs.len() == 2 && jobs[1]["state"] == "done"
    });
    let jobs = vigie.jobs();
    let (study, _, _) = uids(&demo[0]);
    assert_eq!(jobs[1]["study_instance_uid"], study.as_str());
    assert_eq!(jobs[0]["generation"], 0);
    assert_eq!(jobs[1]["generation"], 1);
    // One SR per analysed instance: the late job analysed the late one only.
    assert_eq!(jobs[1]["results"].as_array().unwrap().len(), 1);
    let sr = PathBuf::from(jobs[1]["results"][0].as_str().unwrap());
    let read: serde_json::Value =
        serde_json::from_slice(&oracle("read_sr.py", [&sr]).stdout).unwrap();
    assert_eq!(
        read["evidence"],
        serde_json::json!(["2.25.123456789012345678901234567890"])
    );
}

#[test]
fn a_job_that_cannot_run_is_retried_then_failed_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    // A file that is not an ONNX Runtime library: every attempt fails.
    let not_a_library = tmp.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"not a shared library").unwrap();
    let config = base_config("").replace(
        &format!(
            "onnxruntime_library = \"{}\"",
            vigie_test_support::onnxruntime_library().display()
        ),
        &format!("onnxruntime_library = \"{}\"", not_a_library.display()),
    );
    assert!(config.contains(&not_a_library.display().to_string()));
    let config = config.replace(
        "retry_delay_s = 0.5",
        "retry_delay_s = 0.2\nmax_attempts = 2",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    storescu_ok(vigie.dicom, "-xe", &demo);
    vigie.wait_for("the job to fail", Duration::from_secs(60), |v| {
        v.jobs().first().is_some_and(|j| j["state"] == "failed")
    });
    let job = &vigie.jobs()[0];
    assert_eq!(job["attempts"], 2, "{job}");
    let error = job["last_error"].as_str().unwrap();
    assert!(
        error.contains("brain-tumour-vgg16") || error.to_lowercase().contains("onnx"),
        "{error}"
    );
    let log = vigie.log_text();
    assert!(log.contains("job attempt failed, will retry"));
    assert!(log.contains("job failed, giving up"));
    assert!(echo(vigie.dicom), "still serving");
    // And in the audit trail: each failed attempt, and the model refused.
    let audit = rusqlite::Connection::open(vigie.data.join("audit.sqlite")).unwrap();
    let count = |kind: &str, outcome: &str| -> i64 {
        audit
            .query_row(
                "SELECT count(*) FROM records WHERE kind = ?1 AND outcome = ?2",
                [kind, outcome],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(count("job_failed", "will_retry"), 1);
    assert_eq!(count("job_failed", "gave_up"), 1);
    assert_eq!(count("model_refused", "failed"), 2);
}

#[test]
fn a_large_instance_is_streamed_to_disk_not_held_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    // The demo image made into a 128 MiB multi-frame instance.
    let mut object = dicom_object::open_file(&demo[0]).unwrap();
    let rows = object
        .element_by_name("Rows")
        .unwrap()
        .to_int::<usize>()
        .unwrap();
    let columns = object
        .element_by_name("Columns")
        .unwrap()
        .to_int::<usize>()
        .unwrap();
    let frame_bytes = rows * columns * 2;
    let frames = (128usize << 20).div_ceil(frame_bytes);
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::NUMBER_OF_FRAMES,
        dicom_core::VR::IS,
        dicom_core::PrimitiveValue::from(frames.to_string()),
    ));
    let pixels: Vec<u16> = (0..frames * rows * columns)
        .map(|i| (i % 4096) as u16)
        .collect();
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OW,
        dicom_core::PrimitiveValue::U16(pixels.into()),
    ));
    let large = tmp.path().join("large.dcm");
    object.write_to_file(&large).unwrap();
    drop(object);
    let size = std::fs::metadata(&large).unwrap().len();
    assert!(size > 128 << 20);

    let vigie = Vigie::start_with_env(
        tmp.path(),
        &base_config(""),
        &[("VIGIE__PIPELINE__WORKERS", "0")],
    );
    storescu_ok(vigie.dicom, "-xe", std::slice::from_ref(&large));
    let (study, series, sop) = uids(&large);
    let stored = vigie.stored(&study, &series, &sop);
    assert!(stored.is_file());
    let compared: serde_json::Value =
        serde_json::from_slice(&oracle("same_dataset.py", [&large, &stored]).stdout).unwrap();
    assert_eq!(compared["same"], true, "{compared}");
    // The audit trail says why it has no decoded-pixel hash for it.
    vigie.wait_for("the instance_pixels record", Duration::from_secs(10), |v| {
        let audit = rusqlite::Connection::open(v.data.join("audit.sqlite")).unwrap();
        audit
            .query_row(
                "SELECT count(*) FROM records WHERE kind = 'instance_pixels' AND outcome = 'skipped'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    });
    let peak = vigie.peak_memory();
    eprintln!(
        "peak memory of vigie serve: {} MiB for a {} MiB instance",
        peak >> 20,
        size >> 20
    );
    assert!(
        peak < 64 << 20,
        "peak memory {} MiB while receiving a {} MiB instance",
        peak >> 20,
        size >> 20
    );
}

/// #22 part 6, "Missing Modality": `docs/dicom-node.md` promises A900 for
/// an instance without Modality (Type 1 in the General Series module of
/// every image IOD). Checked from a real peer: DCMTK's `storescu` sends one
/// without the attribute and one with it empty; both get A900 naming
/// Modality, neither is stored, each refusal is audited, and a good
/// instance sent after them is stored.
#[test]
fn regression_an_instance_without_modality_is_refused_with_a900() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let vigie = Vigie::start(tmp.path(), &base_config(""));
    let mut files = Vec::new();
    for (name, sop, empty) in [
        ("absent", "2.25.4242001", false),
        ("empty", "2.25.4242002", true),
    ] {
        let path = tmp.path().join(format!("modality-{name}.dcm"));
        another_instance(&demo[0], &path, sop);
        let mut object = dicom_object::open_file(&path).unwrap();
        if empty {
            object.put(dicom_core::DataElement::new(
                dicom_dictionary_std::tags::MODALITY,
                dicom_core::VR::CS,
                dicom_core::PrimitiveValue::Empty,
            ));
        } else {
            object.remove_element(dicom_dictionary_std::tags::MODALITY);
        }
        object.write_to_file(&path).unwrap();
        files.push((path, sop));
    }
    for (path, sop) in &files {
        let mut args = storescu_args(vigie.dicom, "-xe", std::slice::from_ref(path));
        args.insert(0, "-v".into());
        let out = dcmtk("storescu", &args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .to_lowercase();
        // DCMTK's name for 0xA900.
        assert!(
            said.contains("error: datasetdoesnotmatchsopclass"),
            "storescu {sop}: {said}"
        );
        let refused = vigie.audit_records("kind=instance_refused");
        let record = refused
            .iter()
            .find(|r| r["sop_instance_uid"] == *sop)
            .unwrap_or_else(|| panic!("no instance_refused record for {sop}: {refused:?}"));
        assert!(
            record.to_string().contains("Modality"),
            "the record says why: {record}"
        );
    }
    let (study, series, _) = uids(&demo[0]);
    for (_, sop) in &files {
        assert!(
            !vigie.stored(&study, &series, sop).exists(),
            "{sop} not stored"
        );
    }
    storescu_ok(vigie.dicom, "-xe", &demo);
    let (_, _, good) = uids(&demo[0]);
    assert!(vigie.stored(&study, &series, &good).is_file());
}

/// A copy of `from` with the same SOP Instance UID and other content
/// (Image Comments), in `series` when given.
fn other_content(from: &Path, to: &Path, comment: &str, series: Option<&str>) {
    let mut object = dicom_object::open_file(from).unwrap();
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::IMAGE_COMMENTS,
        dicom_core::VR::LT,
        dicom_core::PrimitiveValue::from(comment),
    ));
    if let Some(series) = series {
        object.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from(series),
        ));
    }
    object.write_to_file(to).unwrap();
}

fn image_comments(path: &Path) -> Option<String> {
    let object = dicom_object::open_file(path).unwrap();
    object
        .element(dicom_dictionary_std::tags::IMAGE_COMMENTS)
        .ok()
        .map(|e| e.to_str().unwrap().trim_end().to_string())
}

/// #22 part 6, "Duplicate SOP Instance UID": an instance received again
/// with the same SOP Instance UID and other content silently replaced the
/// stored copy. Now `storage.duplicates` says what happens — keep the
/// first (the default, as Orthanc's `OverwriteInstances = false` and
/// dcm4chee's `NEVER`), replace, or keep both — each answered Success to
/// DCMTK's storescu (and to STOW-RS), logged as a warning, recorded with
/// both hashes and counted; the same content received again is a plain
/// new reception.
#[test]
fn regression_a_duplicate_sop_instance_uid_follows_the_configured_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_studies(&tmp.path().join("demo"), 1);
    let (study, series, sop) = uids(&demo[0]);
    let first = tmp.path().join("first.dcm");
    other_content(&demo[0], &first, "first copy", None);
    let second = tmp.path().join("second.dcm");
    other_content(&demo[0], &second, "second copy", None);
    let moved_series = "2.25.4242777";
    let elsewhere = tmp.path().join("elsewhere.dcm");
    other_content(&demo[0], &elsewhere, "second copy", Some(moved_series));
    let duplicate_records = |vigie: &Vigie| -> Vec<serde_json::Value> {
        vigie
            .audit_records("kind=instance_stored")
            .into_iter()
            .filter(|r| r["sop_instance_uid"] == sop.as_str())
            .filter(|r| {
                r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("duplicate"))
            })
            .collect()
    };
    let metric = |vigie: &Vigie, outcome: &str| -> bool {
        let text = String::from_utf8(
            vigie
                .http("GET", "/metrics", Some(common::token("reader")), &[], b"")
                .body,
        )
        .unwrap();
        text.contains(&format!(
            "vigie_instances_duplicate_total{{outcome=\"{outcome}\"}} 1"
        ))
    };
    for policy in ["keep_first", "replace", "keep_both"] {
        let dir = tmp.path().join(policy);
        std::fs::create_dir_all(&dir).unwrap();
        let config = base_config("").replace(
            "min_free_mib = 0",
            &format!("min_free_mib = 0\nduplicates = \"{policy}\""),
        );
        let vigie = Vigie::start(&dir, &config);
        storescu_ok(vigie.dicom, "-xe", std::slice::from_ref(&first));
        // The same content again: a new reception, no duplicate.
        storescu_ok(vigie.dicom, "-xe", std::slice::from_ref(&first));
        assert!(duplicate_records(&vigie).is_empty(), "{policy}: identical");
        let other = if policy == "replace" {
            &elsewhere
        } else {
            &second
        };
        storescu_ok(vigie.dicom, "-xe", std::slice::from_ref(other));
        let records = duplicate_records(&vigie);
        assert_eq!(records.len(), 1, "{policy}: {records:?}");
        let details: serde_json::Value =
            serde_json::from_str(records[0]["details"].as_str().unwrap()).unwrap();
        let held_copy = vigie.stored(&study, &series, &sop);
        match policy {
            "keep_first" => {
                assert_eq!(records[0]["outcome"], "duplicate_kept_first");
                assert_eq!(image_comments(&held_copy).as_deref(), Some("first copy"));
                assert_ne!(details["held"]["file_sha256"], details["file_sha256"]);
                assert!(metric(&vigie, "kept_first"));
                // STOW-RS gets the same policy.
                let mut body = b"--B0UNDARY\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
                body.extend(std::fs::read(&second).unwrap());
                body.extend(b"\r\n--B0UNDARY--\r\n");
                let r = vigie.http(
                    "POST",
                    "/dicomweb/studies",
                    Some(common::token("operator")),
                    &[(
                        "Content-Type",
                        "multipart/related; type=\"application/dicom\"; boundary=B0UNDARY",
                    )],
                    &body,
                );
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                assert_eq!(duplicate_records(&vigie).len(), 2);
                assert_eq!(image_comments(&held_copy).as_deref(), Some("first copy"));
            }
            "replace" => {
                assert_eq!(records[0]["outcome"], "duplicate_replaced");
                // Moved into the new copy's series; the earlier file gone.
                let now = vigie.stored(&study, moved_series, &sop);
                assert_eq!(image_comments(&now).as_deref(), Some("second copy"));
                assert!(!held_copy.exists(), "the replaced copy's file is removed");
                assert_eq!(details["replaced"]["series_instance_uid"], series.as_str());
                assert!(metric(&vigie, "replaced"));
            }
            _ => {
                assert_eq!(records[0]["outcome"], "duplicate_kept_both");
                assert_eq!(image_comments(&held_copy).as_deref(), Some("first copy"));
                let kept = Path::new(details["kept_at"].as_str().unwrap());
                assert!(kept.starts_with(vigie.data.join("duplicates").join(&sop)));
                assert_eq!(image_comments(kept).as_deref(), Some("second copy"));
                assert!(metric(&vigie, "kept_both"));
            }
        }
        let log = vigie.log_text();
        assert!(
            log.contains("instance received again with other content"),
            "{policy}: warned"
        );
        assert!(echo(vigie.dicom), "still serving");
    }
}
