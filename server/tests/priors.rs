//! Prior studies for a model that compares with them, against Orthanc
//! holding the priors: Vigie asks it by C-FIND (Study Root, STUDY level,
//! by Patient ID within the package's window and modality), retrieves the
//! most recent qualifying study by C-GET on its own association, and gives
//! its image to the model as the second input. The model is the TEST
//! FIXTURE `models/fixture-prior-change` (mean absolute difference of the
//! two images, not a medical model).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vigie, base_config, dcmtk, storescu_args};
use vigie_dicom_io::uid::UidGenerator;
use vigie_dicom_io::write::{MrImage, put_str, write_part10};
use vigie_test_support::{Orthanc, repo_root};

/// A 64x64 image of a bright disk of `radius` on black.
fn disk(radius: f64) -> Vec<u8> {
    (0..64 * 64)
        .map(|i| {
            let (y, x) = ((i / 64) as f64 - 31.5, (i % 64) as f64 - 31.5);
            if x * x + y * y <= radius * radius {
                255
            } else {
                0
            }
        })
        .collect()
}

/// One single-image study of `patient` dated `date`, written to `path`;
/// returns (Study, SOP Instance UID).
fn study(path: &Path, patient: &str, date: &str, radius: f64, modality: &str) -> (String, String) {
    let uids = UidGenerator::new("2.25.7").unwrap();
    let pixels = disk(radius);
    let mut image = MrImage::new(64, 64, &pixels, &uids);
    image.patient_id = patient.into();
    image.patient_name = "SYNTHETIC^PRIOR".into();
    image.date = date.into();
    image.study_description = "Synthetic prior test".into();
    let (study, sop) = (
        image.study_instance_uid.clone(),
        image.sop_instance_uid.clone(),
    );
    let mut object = image.build().unwrap();
    if modality != "MR" {
        put_str(
            &mut object,
            dicom_dictionary_std::tags::MODALITY,
            dicom_core::VR::CS,
            modality,
        );
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_part10(object, path).unwrap();
    (study, sop)
}

fn details(record: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(record["details"].as_str().unwrap()).unwrap()
}

fn config(orthanc: &Orthanc, models_dir: Option<&Path>) -> String {
    let mut config = base_config(&format!(
        r#"
[priors]
from = "pacs"

[destinations.pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {}

[[routing.rules]]
name = "follow-up"
modalities = ["MR"]
models = ["fixture-prior-change"]
"#,
        orthanc.dicom
    ))
    .replace("[pipeline]", "[pipeline]\nmax_attempts = 1");
    if let Some(dir) = models_dir {
        let ours = repo_root().join("models");
        config = config.replace(
            &format!("models_dir = \"{}\"", ours.display()),
            &format!("models_dir = \"{}\"", dir.display()),
        );
    }
    config
}

/// The job of `study`, once it is done or failed.
fn job_of(vigie: &Vigie, study: &str) -> serde_json::Value {
    let find = |v: &Vigie| {
        v.jobs()
            .into_iter()
            .find(|j| j["study_instance_uid"] == study)
    };
    vigie.wait_for("the job to end", Duration::from_secs(120), |v| {
        find(v).is_some_and(|j| j["state"] == "done" || j["state"] == "failed")
    });
    find(vigie).unwrap()
}

fn pixel_hash_min_max(path: &Path) -> String {
    let out = vigie_test_support::oracle("pixel_hash.py", ["--min-max", path.to_str().unwrap()]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn send(vigie: &Vigie, files: &[PathBuf]) {
    let out = dcmtk("storescu", &storescu_args(vigie.dicom, "-xs", files));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_model_compares_with_the_most_recent_prior_retrieved_from_orthanc() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let orthanc = Orthanc::start();
    // Patient PRIOR-1: an MR prior within the year, a later CT study (not
    // the same modality), an MR study too old; the current MR study shows
    // a larger disk.
    let prior = dir.join("pacs/prior.dcm");
    let (prior_study, prior_sop) = study(&prior, "PRIOR-1", "20260301", 10.0, "MR");
    let (ct_study, _) = study(&dir.join("pacs/ct.dcm"), "PRIOR-1", "20260501", 20.0, "CT");
    let (old_study, _) = study(&dir.join("pacs/old.dcm"), "PRIOR-1", "20240101", 20.0, "MR");
    let current = dir.join("current/grown.dcm");
    let (current_study, _) = study(&current, "PRIOR-1", "20260601", 20.0, "MR");
    // Patient PRIOR-2: the same disk in the prior and the current study.
    let (same_prior_study, same_prior_sop) = study(
        &dir.join("pacs/same.dcm"),
        "PRIOR-2",
        "20260401",
        12.0,
        "MR",
    );
    let unchanged = dir.join("current/unchanged.dcm");
    let (unchanged_study, _) = study(&unchanged, "PRIOR-2", "20260601", 12.0, "MR");
    // Patient PRIOR-3: Orthanc holds nothing earlier (another patient's
    // study, whose ID starts alike, does not count).
    let alone = dir.join("current/alone.dcm");
    let (alone_study, _) = study(&alone, "PRIOR-3", "20260601", 20.0, "MR");
    let (_, _) = study(
        &dir.join("pacs/other.dcm"),
        "PRIOR-30",
        "20260501",
        20.0,
        "MR",
    );
    orthanc.upload(&[
        prior.clone(),
        dir.join("pacs/ct.dcm"),
        dir.join("pacs/old.dcm"),
        dir.join("pacs/same.dcm"),
        dir.join("pacs/other.dcm"),
    ]);

    std::fs::create_dir_all(dir.join("vigie")).unwrap();
    let vigie = Vigie::start(&dir.join("vigie"), &config(&orthanc, None));
    // Orthanc answers C-GET to the AEs it knows.
    orthanc.add_modality(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": vigie.dicom}),
    );
    send(&vigie, &[current, unchanged.clone()]);

    // The grown disk: compared with the MR prior of March, "changed".
    let job = job_of(&vigie, &current_study);
    assert_eq!(job["state"], "done", "{job}");
    let notes = job["last_error"].as_str().unwrap();
    assert!(notes.contains(&prior_study), "{notes}");
    let searches = vigie.audit_records("kind=prior_search");
    let search = searches
        .iter()
        .find(|r| r["study_instance_uid"] == current_study.as_str())
        .unwrap();
    assert_eq!(search["outcome"], "used");
    let found = details(search);
    // The CT study is not of the modality, the 2024 one out of the window.
    assert_eq!(found["candidates"], 1, "{found}");
    assert_eq!(found["priors"].as_array().unwrap().len(), 1, "{found}");
    let used = &found["priors"][0];
    assert_eq!(used["study_instance_uid"], prior_study.as_str());
    assert_eq!(used["sop_instance_uid"], prior_sop.as_str());
    assert_eq!(used["study_date"], "20260301");
    assert_eq!(used["pixels_sha256"], pixel_hash_min_max(&prior).as_str());
    assert_eq!(used["file_sha256"].as_str().unwrap().len(), 64, "{used}");
    assert!(!found.to_string().contains(&ct_study));
    assert!(!found.to_string().contains(&old_study));
    // The inference names the prior it compared with.
    let inference = vigie
        .audit_records("kind=inference")
        .into_iter()
        .find(|r| r["study_instance_uid"] == current_study.as_str())
        .unwrap();
    let inference = details(&inference);
    assert_eq!(inference["decision"], "changed", "{inference}");
    assert_eq!(inference["priors"][0], *used);

    // The same disk: "stable", and the prior's pixels hash as those of the
    // current image (the same pixels, decoded the same way).
    let job = job_of(&vigie, &unchanged_study);
    assert_eq!(job["state"], "done", "{job}");
    let inference = vigie
        .audit_records("kind=inference")
        .into_iter()
        .find(|r| r["study_instance_uid"] == unchanged_study.as_str())
        .unwrap();
    let inference = details(&inference);
    assert_eq!(inference["decision"], "stable", "{inference}");
    assert_eq!(
        inference["priors"][0]["study_instance_uid"],
        same_prior_study.as_str()
    );
    assert_eq!(
        inference["priors"][0]["sop_instance_uid"],
        same_prior_sop.as_str()
    );
    assert_eq!(
        inference["priors"][0]["pixels_sha256"],
        inference["input"]["pixels_sha256"]
    );

    // No prior for PRIOR-3: the package says fail, and the job does, with
    // the reason.
    send(&vigie, &[alone]);
    let job = job_of(&vigie, &alone_study);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["last_error"].as_str().unwrap();
    assert!(error.contains("no prior study"), "{error}");
    assert!(error.contains("no earlier study"), "{error}");
    let search = vigie
        .audit_records("kind=prior_search&outcome=missing")
        .into_iter()
        .find(|r| r["study_instance_uid"] == alone_study.as_str())
        .unwrap();
    assert_eq!(details(&search)["candidates"], 0);

    // The priors were never received as studies: no job, no index entry,
    // no file left.
    let studies: Vec<String> = vigie
        .jobs()
        .iter()
        .map(|j| j["study_instance_uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(studies.len(), 3, "{studies:?}");
    for prior in [&prior_study, &same_prior_study] {
        assert!(!studies.contains(prior));
        let qido = vigie.http(
            "GET",
            &format!("/dicomweb/studies?StudyInstanceUID={prior}"),
            Some(common::token("reader")),
            &[],
            b"",
        );
        assert!(
            qido.status == 204 || qido.json().as_array().is_some_and(|a| a.is_empty()),
            "{}",
            String::from_utf8_lossy(&qido.body)
        );
    }
    let left = vigie.data.join("priors");
    assert!(
        !left.exists() || std::fs::read_dir(&left).unwrap().count() == 0,
        "priors left in {}",
        left.display()
    );
    let metrics = vigie.get("/metrics").unwrap();
    assert!(
        metrics.contains(
            r#"vigie_prior_searches_total{model="fixture-prior-change",outcome="used"} 2"#
        ),
        "{metrics}"
    );
    // The Patient ID asked is never in the application log.
    let log = vigie.log_text();
    assert!(
        !log.contains("PRIOR-1") && !log.contains("PRIOR-3"),
        "{log}"
    );
}

/// The fixture's variant with two prior inputs (built by its
/// `make_model.py`), in a models folder of its own, that runs without all
/// its priors: `on_missing = "run"`.
fn two_prior_package(models: &Path) {
    vigie_test_support::prior_fixture_variant(
        &models.join("fixture-prior-change"),
        2,
        &[
            ("max_studies = 2", "max_studies = 3"),
            ("on_missing = \"fail\"", "on_missing = \"run\""),
        ],
    );
}

/// A model taking two priors: the two most recent usable studies, in
/// order, each to its input; a patient with one prior runs with the second
/// input filled with zeros, one with none with both, as the package says
/// (`on_missing = "run"`), and the records say so.
#[test]
fn two_priors_in_order_and_running_without_them_as_the_package_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let orthanc = Orthanc::start();
    two_prior_package(&dir.join("models"));
    // PRIOR-4: two MR priors, the current study as the more recent one.
    let (recent, recent_sop) = study(
        &dir.join("pacs/recent.dcm"),
        "PRIOR-4",
        "20260401",
        20.0,
        "MR",
    );
    let (earlier, earlier_sop) = study(
        &dir.join("pacs/earlier.dcm"),
        "PRIOR-4",
        "20260101",
        10.0,
        "MR",
    );
    // PRIOR-5: one prior only.
    let (single, _) = study(
        &dir.join("pacs/single.dcm"),
        "PRIOR-5",
        "20260301",
        20.0,
        "MR",
    );
    orthanc.upload(&[
        dir.join("pacs/recent.dcm"),
        dir.join("pacs/earlier.dcm"),
        dir.join("pacs/single.dcm"),
    ]);
    std::fs::create_dir_all(dir.join("vigie")).unwrap();
    let vigie = Vigie::start(
        &dir.join("vigie"),
        &config(&orthanc, Some(&dir.join("models"))),
    );
    orthanc.add_modality(
        "vigie",
        &serde_json::json!({"AET": "VIGIE", "Host": "127.0.0.1", "Port": vigie.dicom}),
    );
    let two = dir.join("current/two.dcm");
    let (two_study, _) = study(&two, "PRIOR-4", "20260601", 20.0, "MR");
    let one = dir.join("current/one.dcm");
    let (one_study, _) = study(&one, "PRIOR-5", "20260601", 20.0, "MR");
    let none = dir.join("current/none.dcm");
    let (none_study, _) = study(&none, "PRIOR-6", "20260601", 20.0, "MR");
    send(&vigie, &[two, one, none]);
    let inference_of = |study: &str| {
        let record = vigie
            .audit_records("kind=inference")
            .into_iter()
            .find(|r| r["study_instance_uid"] == study)
            .unwrap();
        details(&record)
    };
    let changed =
        |inference: &serde_json::Value| inference["frames"][0]["raw_output"][1].as_f64().unwrap();
    // sigmoid(40 (d1 / 3 + 2 d2 / 3 - 0.1)), d_k the mean absolute
    // difference with prior k (the variant weighs them so that their order
    // shows).
    let expected = |mean: f64| 1.0 / (1.0 + (-(40.0 * (mean - 0.1))).exp());
    // The disk of 20 against the disk of 20 first (0) and of 10 second.
    let area = |r: f64| disk(r).iter().filter(|&&v| v > 0).count() as f64 / 4096.0;
    let job = job_of(&vigie, &two_study);
    assert_eq!(job["state"], "done", "{job}");
    let inference = inference_of(&two_study);
    let priors = inference["priors"].as_array().unwrap();
    assert_eq!(priors.len(), 2, "{inference}");
    assert_eq!(priors[0]["study_instance_uid"], recent.as_str());
    assert_eq!(priors[0]["sop_instance_uid"], recent_sop.as_str());
    assert_eq!(priors[1]["study_instance_uid"], earlier.as_str());
    assert_eq!(priors[1]["sop_instance_uid"], earlier_sop.as_str());
    let mean = 2.0 * (area(20.0) - area(10.0)) / 3.0;
    assert!(
        (changed(&inference) - expected(mean)).abs() < 1e-3,
        "{inference}"
    );
    let notes = job["last_error"].as_str().unwrap();
    assert!(
        notes.contains(&recent) && notes.contains(&earlier),
        "{notes}"
    );

    // One prior: the second input is zeros (the whole disk differs).
    let job = job_of(&vigie, &one_study);
    assert_eq!(job["state"], "done", "{job}");
    let notes = job["last_error"].as_str().unwrap();
    assert!(notes.contains(&single), "{notes}");
    assert!(
        notes.contains("run without all its prior studies: 1 of 2 priors found"),
        "{notes}"
    );
    let inference = inference_of(&one_study);
    assert_eq!(inference["priors"].as_array().unwrap().len(), 1);
    assert!(
        (changed(&inference) - expected(2.0 * area(20.0) / 3.0)).abs() < 1e-3,
        "{inference}"
    );
    let search = vigie
        .audit_records("kind=prior_search&outcome=partial")
        .into_iter()
        .find(|r| r["study_instance_uid"] == one_study.as_str())
        .unwrap();
    assert_eq!(
        details(&search)["priors"][0]["study_instance_uid"],
        single.as_str()
    );

    // None: both inputs zeros.
    let job = job_of(&vigie, &none_study);
    assert_eq!(job["state"], "done", "{job}");
    let inference = inference_of(&none_study);
    assert_eq!(inference["priors"], serde_json::json!([]), "{inference}");
    assert!(
        (changed(&inference) - expected(area(20.0))).abs() < 1e-3,
        "{inference}"
    );
    let search = vigie
        .audit_records("kind=prior_search&outcome=missing")
        .into_iter()
        .find(|r| r["study_instance_uid"] == none_study.as_str())
        .unwrap();
    let reason = details(&search)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("no earlier study"), "{reason}");
}
