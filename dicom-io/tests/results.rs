//! Result objects (SR, SEG, summary SC) checked by independent tools:
//! DCMTK-independent `dciodvfy` (dicom3tools) for IOD conformance, and
//! pydicom + highdicom reading the values back.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use vigie_dicom_io::DicomFile;
use vigie_dicom_io::results::seg::{Segment, SegmentationInput, build_segmentation};
use vigie_dicom_io::results::sr::{ClassificationReport, build_classification_sr, concepts};
use vigie_dicom_io::results::summary::build_summary_image;
use vigie_dicom_io::results::{Algorithm, Code, DeviceObserver, NewInstance, SourceImage};
use vigie_dicom_io::uid::UidGenerator;
use vigie_dicom_io::write::write_part10;

use vigie_test_support::Orthanc;

/// A source MR instance made by the crate's own writer.
fn source(dir: &Path) -> DicomFile {
    let uids = UidGenerator::default();
    let pixels: Vec<u8> = (0..64 * 48).map(|i| (i % 256) as u8).collect();
    let mut mr = vigie_dicom_io::write::MrImage::new(48, 64, &pixels, &uids);
    mr.patient_name = "TEST^SOURCE".into();
    mr.patient_id = "TEST-0001".into();
    let path = dir.join("source.dcm");
    write_part10(mr.build().expect("builds"), &path).expect("writes");
    DicomFile::open(&path).expect("opens")
}

use vigie_test_support::dciodvfy;

fn report(source: &DicomFile, uids: &UidGenerator, threshold: Option<f64>) -> ClassificationReport {
    ClassificationReport {
        classes: vec![
            (Code::new("GLIOMA", "99VIGIE", "Glioma"), 0.7),
            (Code::new("MENINGIOMA", "99VIGIE", "Meningioma"), 0.2),
            (Code::new("NOTUMOR", "99VIGIE", "No tumour"), 0.1),
        ],
        decision: 0,
        threshold,
        algorithm: Algorithm {
            name: "test-model".into(),
            version: "1.2.3".into(),
            parameters: vec![
                format!("model-sha256={}", "ab".repeat(32)),
                "decision=argmax".into(),
            ],
        },
        observer: DeviceObserver {
            uid: uids.generate(),
            name: "vigie-test".into(),
            manufacturer: "Vigie".into(),
            model_name: "Vigie 0.1.0".into(),
        },
        procedure: concepts::imaging_procedure(),
        sources: vec![SourceImage::of(source)],
        instance: NewInstance {
            series_instance_uid: uids.generate(),
            sop_instance_uid: uids.generate(),
            series_number: 9001,
            series_description: "AI result test-model 1.2.3".into(),
            manufacturer: "Vigie".into(),
            software_version: "0.1.0".into(),
        },
        review_link: Some("https://vigie.example.org/review#job=7".into()),
    }
}

#[test]
fn classification_sr_passes_dciodvfy_and_reads_back_in_highdicom() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = source(tmp.path());
    let uids = UidGenerator::default();
    let report = report(&source, &uids, Some(0.5));
    let sr = build_classification_sr(&source, &report, || uids.generate()).expect("builds");
    let path = tmp.path().join("sr.dcm");
    write_part10(sr, &path).expect("writes");
    let (errors, warnings) = dciodvfy(&path);
    println!("dciodvfy warnings:\n{}", warnings.join("\n"));
    assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
    if std::env::var_os("VIGIE_KEEP_SR").is_some() {
        std::fs::copy(&path, "/tmp/vigie-sr.dcm").expect("copy");
    }
    let out =
        vigie_test_support::run_ok(vigie_test_support::oracle_command("read_sr.py").arg(&path));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["patient_id"], "TEST-0001");
    assert_eq!(
        doc["study_instance_uid"],
        source.header().study_instance_uid.as_str()
    );
    assert_eq!(doc["template"], "1500");
    assert_eq!(doc["observer_type"], "121007");
    assert_eq!(
        doc["evidence"],
        serde_json::json!([source.header().sop_instance_uid])
    );
    // One group per class and no decision group (#22 part 6): the
    // decision is each group's qualitative evaluation, Yes in one.
    let groups = doc["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{groups:?}");
    for (i, ((code, p), g)) in report.classes.iter().zip(groups).enumerate() {
        let decided = i == report.decision;
        assert_eq!(g["decision"], if decided { "Yes" } else { "No" });
        assert_eq!(
            g["threshold"].as_f64(),
            decided.then_some(0.5),
            "the threshold in the decided class's group only"
        );
        assert_eq!(g["finding"], code.value.as_str());
        assert!((g["probability"].as_f64().expect("p") - p).abs() < 1e-12);
        assert_eq!(g["unit"], "1");
        assert_eq!(g["algorithm"], "test-model");
        assert_eq!(g["algorithm_version"], "1.2.3");
        assert_eq!(
            g["source"],
            serde_json::json!([source.header().sop_instance_uid])
        );
    }
    assert_eq!(doc["coding_schemes"][0]["designator"], "99VIGIE");
    assert_eq!(
        doc["review_link"], "https://vigie.example.org/review#job=7",
        "the review page's link, read back by pydicom"
    );
}

/// #22 part 6, "Reading the SR": dcmqi's `tid1500reader` and highdicom saw
/// the SR's "decision" group as a second measurement group with the same
/// finding. Now: one measurement per class, each finding once, the
/// decision each group's qualitative evaluation (Yes in one), and 99VIGIE
/// declared in the Coding Scheme Identification Sequence.
#[test]
fn regression_readers_tell_the_decision_apart_from_the_class_groups() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = source(tmp.path());
    let uids = UidGenerator::default();
    let report = report(&source, &uids, None);
    let sr = build_classification_sr(&source, &report, || uids.generate()).expect("builds");
    let path = tmp.path().join("sr.dcm");
    write_part10(sr, &path).expect("writes");
    let object = dicom_object::open_file(&path).expect("opens");
    let schemes = object
        .element(dicom_dictionary_std::tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE)
        .expect("Coding Scheme Identification Sequence")
        .items()
        .expect("items");
    assert_eq!(schemes.len(), 1);
    let designator = schemes[0]
        .element(dicom_dictionary_std::tags::CODING_SCHEME_DESIGNATOR)
        .expect("designator")
        .to_str()
        .expect("text");
    assert_eq!(designator.trim_end(), "99VIGIE");
    // dcmqi's tid1500reader.
    let metadata = tmp.path().join("tid1500.json");
    let reader = vigie_test_support::require(
        vigie_test_support::repo_root().join(".venv/bin/tid1500reader"),
    );
    vigie_test_support::run_ok(
        std::process::Command::new(reader)
            .arg("--inputDICOM")
            .arg(&path)
            .arg("--outputMetadata")
            .arg(&metadata),
    );
    let read: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).expect("metadata")).expect("json");
    let measurements = read["Measurements"].as_array().expect("Measurements");
    let seen: Vec<(&str, &str)> = measurements
        .iter()
        .map(|m| {
            let evaluations = m["qualitativeEvaluations"].as_array().expect("evaluations");
            assert_eq!(evaluations.len(), 1, "{m}");
            assert_eq!(evaluations[0]["conceptCode"]["CodeValue"], "AIDECISION");
            (
                m["Finding"]["CodeValue"].as_str().expect("finding"),
                evaluations[0]["conceptValue"]["CodeMeaning"]
                    .as_str()
                    .expect("value"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("GLIOMA", "Yes"), ("MENINGIOMA", "No"), ("NOTUMOR", "No")]
    );
}

fn new_instance(uids: &UidGenerator, description: &str) -> NewInstance {
    NewInstance {
        series_instance_uid: uids.generate(),
        sop_instance_uid: uids.generate(),
        series_number: 9002,
        series_description: description.into(),
        manufacturer: "Vigie".into(),
        software_version: "0.1.0".into(),
    }
}

#[test]
fn segmentation_passes_dciodvfy_and_masks_read_back_equal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = source(tmp.path());
    let uids = UidGenerator::default();
    // Two segments: a disk (1) and a bar (2) on a 48x64 source.
    let label_map: Vec<u8> = (0..48 * 64_i32)
        .map(|i| {
            let (y, x) = (i / 64, i % 64);
            if (x - 20).pow(2) + (y - 24).pow(2) < 100 {
                1
            } else if (40..44).contains(&x) {
                2
            } else {
                0
            }
        })
        .collect();
    let segment = |number, label: &str| Segment {
        number,
        label: label.into(),
        category: Code::new("91723000", "SCT", "Anatomical Structure"),
        property_type: Code::new(&format!("SEG{number}"), "99VIGIE", label),
    };
    let input = SegmentationInput {
        label_map: &label_map,
        segments: vec![segment(1, "disk"), segment(2, "bar")],
        algorithm: Algorithm {
            name: "seg-model".into(),
            version: "0.0.1".into(),
            parameters: vec![],
        },
        instance: new_instance(&uids, "AI segmentation seg-model 0.0.1"),
    };
    let seg = build_segmentation(&source, &input).expect("builds");
    let path = tmp.path().join("seg.dcm");
    write_part10(seg, &path).expect("writes");
    let (errors, warnings) = dciodvfy(&path);
    println!("dciodvfy warnings:\n{}", warnings.join("\n"));
    assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
    let prefix = tmp.path().join("mask");
    let out = vigie_test_support::run_ok(
        vigie_test_support::oracle_command("read_seg.py")
            .arg(&path)
            .arg(&source.header().sop_instance_uid)
            .arg(&prefix),
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["type"], "BINARY");
    assert_eq!(doc["segments"][0]["label"], "disk");
    assert_eq!(doc["segments"][1]["type"], "SEG2");
    assert_eq!(doc["segments"][0]["algorithm"], "seg-model");
    for number in [1u8, 2] {
        let mask = std::fs::read(format!("{}.{number}.u8", prefix.display())).expect("mask");
        let expected: Vec<u8> = label_map.iter().map(|&v| u8::from(v == number)).collect();
        assert_eq!(mask, expected, "segment {number} differs");
        assert!(expected.contains(&1));
    }
}

#[test]
fn summary_image_passes_dciodvfy_and_keeps_the_source_pixels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = source(tmp.path());
    let uids = UidGenerator::default();
    let display = source
        .decode(&vigie_dicom_io::PixelOptions::with_voi(
            vigie_dicom_io::VoiSelection::FromFile,
        ))
        .expect("decodes");
    let lines = vec![
        "AI result: glioma (p = 0.97)".to_string(),
        "Not for diagnostic use without radiologist review".to_string(),
    ];
    let sc = build_summary_image(
        &source,
        &display,
        &lines,
        &new_instance(&uids, "AI summary"),
    )
    .expect("builds");
    let path = tmp.path().join("sc.dcm");
    write_part10(sc, &path).expect("writes");
    let (errors, warnings) = dciodvfy(&path);
    println!("dciodvfy warnings:\n{}", warnings.join("\n"));
    assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
    let back = DicomFile::open(&path)
        .expect("opens")
        .decode_stored()
        .expect("decodes");
    assert_eq!(back.columns, 64);
    assert!(back.rows > 48, "a banner is added below the image");
    let original: Vec<f32> = display.data.iter().map(|v| (v * 255.0).round()).collect();
    assert_eq!(
        &back.data[..48 * 64],
        &original[..],
        "source pixels are kept"
    );
    assert!(
        back.data[48 * 64..].contains(&255.0),
        "text is drawn in the banner"
    );
}

#[test]
fn synthetic_mr_source_passes_dciodvfy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = source(tmp.path());
    let (errors, warnings) = dciodvfy(source.path());
    println!("dciodvfy warnings:\n{}", warnings.join("\n"));
    assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
}

#[test]
fn result_objects_go_through_orthanc_unchanged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = source(tmp.path());
    let uids = UidGenerator::default();
    let sr = build_classification_sr(&source, &report(&source, &uids, None), || uids.generate())
        .expect("sr");
    let label_map: Vec<u8> = (0..48 * 64).map(|i| u8::from(i % 64 < 10)).collect();
    let seg = build_segmentation(
        &source,
        &SegmentationInput {
            label_map: &label_map,
            segments: vec![Segment {
                number: 1,
                label: "band".into(),
                category: Code::new("91723000", "SCT", "Anatomical Structure"),
                property_type: Code::new("BAND", "99VIGIE", "Band"),
            }],
            algorithm: Algorithm {
                name: "m".into(),
                version: "1".into(),
                parameters: vec![],
            },
            instance: new_instance(&uids, "AI SEG"),
        },
    )
    .expect("seg");
    let display = source
        .decode(&vigie_dicom_io::PixelOptions::with_voi(
            vigie_dicom_io::VoiSelection::FromFile,
        ))
        .expect("decodes");
    let sc = build_summary_image(
        &source,
        &display,
        &["result".to_string()],
        &new_instance(&uids, "AI summary"),
    )
    .expect("sc");
    let orthanc = Orthanc::start();
    for (name, object) in [("sr", sr), ("seg", seg), ("sc", sc)] {
        let path = tmp.path().join(format!("{name}.dcm"));
        write_part10(object, &path).expect("writes");
        let sent = std::fs::read(&path).expect("read");
        let out = orthanc.curl(&[
            "-f",
            "-s",
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", path.display()),
            &orthanc.url("/instances"),
        ]);
        assert!(
            out.status.success(),
            "{name}: upload refused: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(answer["Status"], "Success", "{name}: {answer}");
        let id = answer["ID"].as_str().expect("id");
        let back = orthanc.curl(&["-f", "-s", &orthanc.url(&format!("/instances/{id}/file"))]);
        assert!(back.status.success());
        assert_eq!(
            back.stdout, sent,
            "{name}: Orthanc returned different bytes"
        );
        let tags = orthanc.curl(&[
            "-f",
            "-s",
            &orthanc.url(&format!("/instances/{id}/simplified-tags")),
        ]);
        let tags: serde_json::Value = serde_json::from_slice(&tags.stdout).expect("json");
        assert_eq!(
            tags["StudyInstanceUID"],
            source.header().study_instance_uid.as_str(),
            "{name}: filed in the source's study"
        );
    }
}
