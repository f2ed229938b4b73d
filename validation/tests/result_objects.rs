//! Result objects built from real model outputs: the reference classifier
//! on the 17 demo studies (SR + summary image) and the segmentation fixture
//! on synthetic images (SEG), each checked with dciodvfy and read back with
//! highdicom, values compared with what the model produced.
//!
//! Needs `scripts/setup.sh` (models, pictures, ONNX Runtime, `.venv`,
//! dicom3tools).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;

use vigie_analysis::results::{ResultBuilder, ResultKind};
use vigie_dicom_io::DicomFile;
use vigie_dicom_io::uid::UidGenerator;
use vigie_dicom_io::write::{MrImage, write_part10};
use vigie_inference::backend::{BackendOptions, Device};
use vigie_inference::postprocess::Finding;
use vigie_inference::{Model, ModelPackage};

use vigie_test_support::{repo_root as root, require};

fn model(id: &str) -> Model {
    let lib = require(root().join(".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1"));
    let package =
        ModelPackage::load(require(root().join("models").join(id))).expect("package loads");
    Model::load(package, &BackendOptions::new(Device::Cpu, 2, Some(lib))).expect("model loads")
}

fn dciodvfy_errors(path: &Path) -> Vec<String> {
    vigie_test_support::dciodvfy(path).0
}

#[test]
fn demo_studies_get_conformant_srs_that_match_the_inference() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dataset = common::import_demo(tmp.path());
    let mut model = model("brain-tumour-vgg16");
    let manifest = model.package().manifest().clone();
    let mut builder = ResultBuilder::new("vigie-test", "2.25", true).expect("builder");
    builder.set_review_link(Some("https://vigie.example.org/review#job=3".into()));
    let out = tmp.path().join("results");
    let mut srs = Vec::new();
    let mut expected = Vec::new();
    let mut summaries = 0;
    let mut errors = Vec::new();
    for study in &dataset.studies {
        let file = DicomFile::open(tmp.path().join(&study.files[0])).expect("opens");
        let analysis = vigie_analysis::analyse(&mut model, &file).expect("analysed");
        let result = &analysis.results[0];
        let objects = builder
            .build(&file, 0, 1, &manifest, result)
            .expect("builds");
        assert_eq!(objects.len(), 2, "an SR and a summary image");
        for object in objects {
            assert_eq!(
                object.study_instance_uid,
                file.header().study_instance_uid,
                "same study as the source"
            );
            let path = out.join(format!("{}.dcm", object.sop_instance_uid));
            write_part10(object.dataset, &path).expect("writes");
            errors.extend(dciodvfy_errors(&path));
            match object.kind {
                ResultKind::Sr => {
                    srs.push(path);
                    expected.push((
                        file.header().sop_instance_uid.clone(),
                        result.clone(),
                        study.label.clone(),
                    ));
                }
                ResultKind::Summary => summaries += 1,
                ResultKind::Seg => panic!("no SEG for a classifier"),
            }
        }
    }
    assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
    assert_eq!((srs.len(), summaries), (17, 17));
    let out =
        vigie_test_support::run_ok(vigie_test_support::oracle_command("read_sr.py").args(&srs));
    let docs: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(docs.len(), 17);
    for (doc, (source_uid, result, label)) in docs.iter().zip(&expected) {
        let Finding::Classification(c) = &result.finding else {
            panic!("classification expected")
        };
        assert_eq!(doc["evidence"], serde_json::json!([source_uid]));
        assert_eq!(doc["review_link"], "https://vigie.example.org/review#job=3");
        // One measurement group per class, each with its own finding
        // (#22 part 6: a separate decision group repeated one of them),
        // the decision a qualitative evaluation in the decided class's.
        let groups = doc["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), c.labels.len());
        let findings: std::collections::BTreeSet<&str> = groups
            .iter()
            .map(|g| g["finding"].as_str().expect("finding"))
            .collect();
        assert_eq!(findings.len(), c.labels.len(), "each finding once");
        for (i, p) in c.probabilities.iter().enumerate() {
            let read = groups[i]["probability"].as_f64().expect("probability");
            assert!(
                (read - f64::from(*p)).abs() < 1e-9,
                "class {i}: SR says {read}, model said {p}"
            );
            assert_eq!(groups[i]["source"], serde_json::json!([source_uid]));
            assert_eq!(groups[i]["algorithm"], "brain-tumour-vgg16");
            assert_eq!(groups[i]["algorithm_version"], "0.1.1");
            let decided = c.labels[i] == c.decision;
            assert_eq!(
                groups[i]["qualitative"],
                serde_json::json!([[
                    "AIDECISION",
                    "99VIGIE",
                    if decided { "373066001" } else { "373067005" },
                    "SCT"
                ]]),
                "highdicom reads the decision as the group's qualitative evaluation"
            );
            assert_eq!(groups[i]["decision"], if decided { "Yes" } else { "No" });
        }
        let decided: Vec<&serde_json::Value> =
            groups.iter().filter(|g| g["decision"] == "Yes").collect();
        assert_eq!(decided.len(), 1, "one decided class");
        let code = c.decision.to_ascii_uppercase();
        assert_eq!(decided[0]["finding"].as_str(), Some(code.as_str()));
        assert_eq!(&c.decision, label, "and the decision is right");
        assert_eq!(
            doc["coding_schemes"],
            serde_json::json!([{
                "designator": "99VIGIE",
                "name": "Vigie private codes (docs/results.md)",
                "organization": "Vigie"
            }]),
            "the private scheme is declared"
        );
    }
}

/// A 64x64 synthetic MR with a bright disk; returns the file and the disk.
fn disk_image(dir: &Path, index: usize, cx: i32, cy: i32, radius: i32) -> (DicomFile, Vec<u8>) {
    let truth: Vec<u8> = (0..64 * 64_i32)
        .map(|i| u8::from((i % 64 - cx).pow(2) + (i / 64 - cy).pow(2) <= radius * radius))
        .collect();
    let pixels: Vec<u8> = truth
        .iter()
        .enumerate()
        .map(|(i, &t)| if t == 1 { 200 } else { 20 + (i % 7) as u8 })
        .collect();
    let uids = UidGenerator::default();
    let mr = MrImage::new(64, 64, &pixels, &uids);
    let path = dir.join(format!("disk{index}.dcm"));
    write_part10(mr.build().expect("builds"), &path).expect("writes");
    (DicomFile::open(&path).expect("opens"), truth)
}

#[test]
fn fixture_segmentation_becomes_a_seg_whose_masks_equal_the_model_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut model = model("fixture-bright-disk");
    let manifest = model.package().manifest().clone();
    let mut builder = ResultBuilder::new("vigie-test", "2.25", false).expect("builder");
    for (index, (cx, cy, r)) in [(32, 32, 10), (15, 40, 6), (50, 12, 8)]
        .into_iter()
        .enumerate()
    {
        let (file, truth) = disk_image(tmp.path(), index, cx, cy, r);
        let analysis = vigie_analysis::analyse(&mut model, &file).expect("analysed");
        let Finding::Segmentation(s) = &analysis.results[0].finding else {
            panic!("segmentation expected")
        };
        // The fixture does segment the disk.
        let inter = s
            .mask
            .iter()
            .zip(&truth)
            .filter(|(m, t)| **m == 1 && **t == 1)
            .count();
        let union = s
            .mask
            .iter()
            .zip(&truth)
            .filter(|(m, t)| **m == 1 || **t == 1)
            .count();
        assert!(inter as f64 / union as f64 > 0.8, "IoU {inter}/{union}");
        let objects = builder
            .build(&file, 0, 1, &manifest, &analysis.results[0])
            .expect("builds");
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].kind, ResultKind::Seg);
        let path = tmp.path().join(format!("seg{index}.dcm"));
        let object = objects.into_iter().next().expect("seg");
        write_part10(object.dataset, &path).expect("writes");
        let errors = dciodvfy_errors(&path);
        assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
        let prefix = tmp.path().join(format!("mask{index}"));
        let out = vigie_test_support::run_ok(
            vigie_test_support::oracle_command("read_seg.py")
                .arg(&path)
                .arg(&file.header().sop_instance_uid)
                .arg(&prefix),
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(doc["segments"][0]["label"], "bright disk");
        assert_eq!(doc["segments"][0]["category"], "260787004");
        assert_eq!(doc["segments"][0]["algorithm"], "fixture-bright-disk");
        let read = std::fs::read(format!("{}.1.u8", prefix.display())).expect("mask");
        assert_eq!(
            read, s.mask,
            "decoded SEG mask differs from the model output"
        );
    }
}

/// #22 part 6, "SR series on re-analysis": a second job on the same study
/// (a re-analysis, a restart in between) put its SR into a second series
/// with the same Series Number and description. Each result kind now has
/// one series per study and model version, whichever job builds it; another
/// model version or another appliance gets a series of its own.
#[test]
fn regression_a_reanalysis_adds_to_the_result_series_of_the_first_analysis() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dataset = common::import_demo(tmp.path());
    let mut model = model("brain-tumour-vgg16");
    let manifest = model.package().manifest().clone();
    let file = DicomFile::open(tmp.path().join(&dataset.studies[0].files[0])).expect("opens");
    let analysis = vigie_analysis::analyse(&mut model, &file).expect("analysed");
    let result = &analysis.results[0];
    // One builder per job, as `vigie serve` makes them.
    let job = |appliance: &str, manifest: &vigie_inference::manifest::Manifest| {
        let mut builder = ResultBuilder::new(appliance, "2.25", true).expect("builder");
        builder
            .build(&file, 0, 1, manifest, result)
            .expect("builds")
            .into_iter()
            .map(|o| (o.kind, o.series_instance_uid, o.sop_instance_uid))
            .collect::<Vec<_>>()
    };
    let first = job("vigie-test", &manifest);
    let again = job("vigie-test", &manifest);
    assert_eq!(first.len(), 2, "an SR and a summary image: {first:?}");
    for ((kind, series, sop), (kind2, series2, sop2)) in first.iter().zip(&again) {
        assert_eq!(kind, kind2);
        assert_eq!(series, series2, "{kind:?}: the re-analysis's series");
        assert_ne!(sop, sop2, "{kind:?}: a new instance in that series");
    }
    assert_ne!(first[0].1, first[1].1, "SR and summary image in two series");
    let mut newer = manifest.clone();
    newer.model.version = "0.1.2".into();
    let other_version = job("vigie-test", &newer);
    let other_appliance = job("vigie-other", &manifest);
    for (i, (kind, series, _)) in first.iter().enumerate() {
        assert_ne!(
            series, &other_version[i].1,
            "{kind:?}: another model version"
        );
        assert_ne!(series, &other_appliance[i].1, "{kind:?}: another appliance");
    }
}
