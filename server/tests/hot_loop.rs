//! The inference loop: decoding and preprocessing run ahead of the model on
//! threads of their own (several, pinned, in the batched run), and a model
//! can take several instances of a job per run (dynamic batching). Batched and one-by-one runs give the same findings; an
//! instance that cannot be analysed does not stop the others.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vigie, base_config, demo_studies, send};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;

/// The demo pictures as one MR series of `n` instances, the last one
/// labelled CT (outside the model's scope).
fn one_series(dir: &Path, n: usize) -> Vec<PathBuf> {
    let demo = demo_studies(&dir.join("demo"), n);
    let out = dir.join("series");
    std::fs::create_dir_all(&out).unwrap();
    demo.iter()
        .enumerate()
        .map(|(i, f)| {
            let mut obj = dicom_object::open_file(f).unwrap();
            let put = |obj: &mut dicom_object::DefaultDicomObject, tag, vr, v: String| {
                obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
            };
            put(
                &mut obj,
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                "2.25.1111".into(),
            );
            put(
                &mut obj,
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                "2.25.1111.1".into(),
            );
            put(&mut obj, tags::INSTANCE_NUMBER, VR::IS, (i + 1).to_string());
            if i == n - 1 {
                put(&mut obj, tags::MODALITY, VR::CS, "CT".into());
            }
            let path = out.join(format!("{i}.dcm"));
            obj.write_to_file(&path).unwrap();
            path
        })
        .collect()
}

fn inferences(v: &Vigie) -> BTreeMap<String, serde_json::Value> {
    v.audit_records("kind=inference")
        .into_iter()
        .map(|r| {
            let sop = r["sop_instance_uid"].as_str().unwrap().to_string();
            let mut d: serde_json::Value =
                serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
            d["outcome"] = r["outcome"].clone();
            (sop, d)
        })
        .collect()
}

#[test]
fn batched_and_single_runs_agree_and_a_bad_instance_does_not_stop_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let series = one_series(tmp.path(), 7);
    let rule = "[[routing.rules]]\nname = \"all\"\n";
    let single_dir = tmp.path().join("single");
    let batched_dir = tmp.path().join("batched");
    std::fs::create_dir_all(&single_dir).unwrap();
    std::fs::create_dir_all(&batched_dir).unwrap();
    let single = Vigie::start(&single_dir, &base_config(rule));
    // Batched, with two decode threads, threads pinned.
    let batched = Vigie::start_with_env(
        &batched_dir,
        &base_config(&format!(
            "{rule}\n[inference.batching.brain-tumour-vgg16]\nmax_batch = 4\nmax_delay_ms = 200\n"
        )),
        &[
            ("VIGIE__INFERENCE__DECODE_THREADS", "2"),
            ("VIGIE__INFERENCE__PIN_THREADS", "true"),
        ],
    );
    for v in [&single, &batched] {
        assert!(send(v.dicom, &series).iter().all(|o| o.delivered()));
        v.wait_for("the job", Duration::from_secs(120), |v| {
            v.jobs().iter().any(|j| j["state"] == "done")
        });
    }
    let (a, b) = (inferences(&single), inferences(&batched));
    assert_eq!(a.len(), 7);
    assert_eq!(b.len(), 7);
    let mut batch_sizes = Vec::new();
    for (sop, x) in &a {
        let y = &b[sop];
        assert_eq!(x["outcome"], y["outcome"], "{sop}");
        if x["outcome"] == "failed" {
            // The CT instance: outside the model's scope, in both runs.
            assert!(
                x["error"]
                    .as_str()
                    .unwrap()
                    .contains("outside the model's scope")
            );
            continue;
        }
        assert_eq!(x["batch_instances"], 1);
        batch_sizes.push(y["batch_instances"].as_u64().unwrap());
        assert_eq!(x["decision"], y["decision"], "{sop}");
        assert_eq!(x["input"]["pixels_sha256"], y["input"]["pixels_sha256"]);
        let (ra, rb) = (
            x["frames"][0]["raw_output"].as_array().unwrap(),
            y["frames"][0]["raw_output"].as_array().unwrap(),
        );
        for (p, q) in ra.iter().zip(rb) {
            let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
            assert!((p - q).abs() < 1e-4, "{sop}: {p} vs {q}");
        }
    }
    // Six analysable instances, in batches of at most four, at least one
    // batch of more than one.
    assert!(
        batch_sizes.iter().all(|n| (1..=4).contains(n)),
        "{batch_sizes:?}"
    );
    assert!(batch_sizes.iter().any(|n| *n > 1), "{batch_sizes:?}");
    // The job is done, with the instance it could not analyse in its notes.
    for v in [&single, &batched] {
        let job = v.jobs().into_iter().find(|j| j["state"] == "done").unwrap();
        assert_eq!(job["results"].as_array().unwrap().len(), 6);
        assert!(
            job["last_error"]
                .as_str()
                .unwrap()
                .contains("1 of 7 instances not analysed"),
            "{job}"
        );
    }
}

/// One-image studies that wait together run through one hot loop (jobs of
/// one model are grouped, batched across jobs here), and each job still
/// gets exactly its own results: each SR is in its job's study and
/// references its job's instance; a job whose one instance cannot be
/// analysed fails alone, with its reason, while the others are done.
#[test]
fn jobs_run_together_each_get_their_own_results_and_fail_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut studies = demo_studies(&tmp.path().join("demo"), 6);
    // A seventh study, of a brain MR in an encoding the decoders cannot
    // read (pydicom's 12-bit JPEG Extended, relabelled): routed, then not
    // analysable.
    let bad = tmp.path().join("jpeg12.dcm");
    let mut obj =
        dicom_object::open_file(vigie_test_support::pydicom_test_files().join("JPGExtended.dcm"))
            .unwrap();
    for (tag, value) in [(tags::MODALITY, "MR"), (tags::BODY_PART_EXAMINED, "BRAIN")] {
        obj.put(DataElement::new(tag, VR::CS, PrimitiveValue::from(value)));
    }
    obj.write_to_file(&bad).unwrap();
    let bad_study = common::uids(&bad).0;
    studies.insert(3, bad);
    let config = base_config(
        "[[routing.rules]]\nname = \"all\"\n\n[inference.batching.brain-tumour-vgg16]\nmax_batch = 4\nmax_delay_ms = 100\n",
    );
    let vigie = Vigie::start(tmp.path(), &config);
    assert!(send(vigie.dicom, &studies).iter().all(|o| o.delivered()));
    vigie.wait_for("every job concluded", Duration::from_secs(180), |v| {
        let jobs = v.jobs();
        jobs.len() == 7
            && jobs
                .iter()
                .all(|j| j["state"] == "done" || j["state"] == "failed")
    });
    let jobs = vigie.jobs();
    let failed: Vec<_> = jobs.iter().filter(|j| j["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{jobs:?}");
    assert_eq!(failed[0]["study_instance_uid"], bad_study.as_str());
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("no instance could be analysed"),
        "{}",
        failed[0]
    );
    let sources: BTreeMap<String, String> = studies
        .iter()
        .map(|f| {
            let (study, _, sop) = common::uids(f);
            (study, sop)
        })
        .collect();
    for job in jobs.iter().filter(|j| j["state"] == "done") {
        let study = job["study_instance_uid"].as_str().unwrap();
        let results = job["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{job}");
        let sr = dicom_object::open_file(results[0].as_str().unwrap()).unwrap();
        let text = |tag| {
            sr.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        };
        assert_eq!(text(tags::STUDY_INSTANCE_UID), study, "its job's study");
        let evidence = sr
            .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .element(tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .element(tags::REFERENCED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        assert_eq!(evidence, sources[study], "its job's instance");
    }
    // Every analysed instance has one inference record, with its own job.
    let records = inferences(&vigie);
    assert_eq!(records.len(), 7);
    let by_job: std::collections::BTreeSet<_> =
        records.values().map(|d| d["job_id"].to_string()).collect();
    assert_eq!(by_job.len(), 7, "one job per instance: {records:?}");
}
