//! `vigie validate import-dicom` on a mixed corpus (tests/oracle/import_corpus.py):
//! the 17 demo studies in six encodings in nested folders, studies with
//! several series, a DICOMDIR, a text file, an empty file, a second copy of
//! an instance, an unlabelled study; SEG objects for the segmentation
//! fixture; the appliance's own store as a source. Labels keyed each way,
//! every matching error and malformed CSV.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use vigie_test_support::{oracle, pydicom_test_files};

/// The demo dataset's description series (the rule below takes only it).
const ROUTING_ORIGINAL_SERIES: &str = r#"
[[routing.rules]]
name = "converted-only"
series_description = "converted"
"#;

struct Corpus {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    description: Value,
}

impl Corpus {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // The 17 demo pictures as DICOM studies, made here (the setup step
        // makes them only beside the release build).
        let demo = dir.join("demo");
        assert_eq!(common::demo_studies(&demo, 17).len(), 17);
        let out = oracle(
            "import_corpus.py",
            [
                demo.join("dicom"),
                pydicom_test_files().join("dicomdirtests/DICOMDIR"),
                dir.clone(),
            ],
        );
        let description = serde_json::from_slice(&out.stdout).unwrap();
        Self {
            _tmp: tmp,
            dir,
            description,
        }
    }

    fn studies(&self) -> &Vec<Value> {
        self.description["studies"].as_array().unwrap()
    }

    fn corpus(&self) -> PathBuf {
        self.dir.join("corpus")
    }

    /// A configuration file with `extra` appended.
    fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.join(format!("vigie-{}.toml", extra.len()));
        std::fs::write(&path, common::base_config(extra)).unwrap();
        path
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn vigie(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env_remove("VIGIE_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("vigie runs")
}

fn import(
    config: &Path,
    labels: &Path,
    out: &Path,
    sources: &[&Path],
    extra: &[&str],
) -> (Output, Value) {
    let mut args = vec![
        "validate".to_string(),
        "import-dicom".into(),
        "--json".into(),
        "--labels".into(),
        labels.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(sources.iter().map(|s| s.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = vigie(config, &refs);
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, json)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `validate run` on `dataset`; the report.json.
fn validate_run(config: &Path, dataset: &Path, dir: &Path, extra: &[&str]) -> Value {
    let out = dir.join("report");
    let data = dir.join("data");
    let mut args = vec![
        "validate",
        "run",
        "--dataset",
        dataset.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = vigie(config, &args);
    assert!(run.status.success(), "{}", stderr(&run));
    serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
}

fn skipped_reasons(json: &Value) -> BTreeMap<String, String> {
    json["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                Path::new(s["path"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_mixed_corpus_keyed_by_study_uid_gives_the_routed_series_and_the_original_results() {
    let corpus = Corpus::new();
    let config = corpus.config(ROUTING_ORIGINAL_SERIES);
    let mut csv = String::from("study_instance_uid,label,site\n");
    for s in corpus.studies() {
        csv += &format!(
            "{},{},north\n",
            s["study_instance_uid"].as_str().unwrap(),
            s["label"].as_str().unwrap()
        );
    }
    let labels = corpus.write("labels.csv", &csv);
    let out = corpus.dir.join("dataset");
    let (run, json) = import(&config, &labels, &out, &[&corpus.corpus()], &[]);
    assert!(run.status.success(), "{}\n{json}", stderr(&run));
    assert_eq!(json["complete"], true, "{json}");
    // 17 images, 3 localizers, 1 CT; the second copy is not read twice.
    assert_eq!(json["instances"], 21, "{json}");
    assert_eq!(json["studies_found"], 17);
    let skipped = skipped_reasons(&json);
    assert!(skipped["DICOMDIR"].contains("DICOMDIR"), "{skipped:?}");
    assert!(skipped["notes.txt"].contains("not a DICOM"), "{skipped:?}");
    assert!(skipped["empty.bin"].contains("not a DICOM"), "{skipped:?}");
    assert!(
        skipped
            .values()
            .any(|r| r.contains("a second copy of the instance")),
        "{skipped:?}"
    );
    // Routing chose the original series only: localizers and CT left out.
    let left_out = json["series_left_out"].as_array().unwrap();
    assert_eq!(left_out.len(), 4, "{json}");
    assert!(
        left_out
            .iter()
            .any(|s| s["what"].as_str().unwrap().contains("CT"))
    );
    let dataset = &json["dataset"];
    let studies = dataset["studies"].as_array().unwrap();
    assert_eq!(studies.len(), 17);
    for (study, expected) in studies.iter().zip(corpus.studies()) {
        assert_eq!(
            study["study"], expected["study_instance_uid"],
            "spreadsheet order"
        );
        let series = study["series"].as_array().unwrap();
        assert_eq!(series.len(), 1, "{study}");
        assert_eq!(series[0]["series"], expected["series_instance_uid"]);
        assert_eq!(series[0]["rule"], "converted-only");
    }
    let verify = vigie(&config, &["validate", "verify", out.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let manifest = std::fs::read_to_string(out.join("dataset.toml")).unwrap();
    assert!(manifest.contains("site = \"north\""), "{manifest}");
    assert!(manifest.contains("labels.csv line 2"), "{manifest}");
    assert!(
        !manifest.contains("PAT0001"),
        "no patient identifier in the manifest"
    );

    // Through the production hot loop: every encoding decodes to the same
    // pixels as the original files, so every case equals the original run.
    let imported = validate_run(&config, &out, &corpus.dir.join("imported"), &[]);
    let original = validate_run(
        &config,
        &corpus.dir.join("demo/dicom"),
        &corpus.dir.join("original"),
        &[],
    );
    let by_study = |report: &Value| -> BTreeMap<String, (String, String)> {
        report["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["study_instance_uid"].as_str().unwrap().to_string(),
                    (
                        c["pixels_sha256"].as_str().unwrap().to_string(),
                        c["decision"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    };
    assert_eq!(by_study(&imported).len(), 17);
    assert_eq!(by_study(&imported), by_study(&original));
    assert_eq!(
        imported["metrics"]["accuracy"]["successes"], 17,
        "{}",
        imported["metrics"]
    );
    let series = imported["reproducibility"]["dataset"]["series"]
        .as_array()
        .unwrap();
    assert_eq!(series.len(), 17);
    let md = std::fs::read_to_string(corpus.dir.join("imported/report/report.md")).unwrap();
    assert!(md.contains("## Series used"), "{md}");
    assert!(md.contains(corpus.studies()[0]["series_instance_uid"].as_str().unwrap()));
    // The subgroup from the spreadsheet.
    assert!(
        imported["subgroups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["attribute"] == "site" && g["value"] == "north" && g["n"] == 17),
        "{}",
        imported["subgroups"]
    );
}

#[test]
fn accession_and_patient_keys_match_and_every_matching_problem_is_reported_by_line() {
    let corpus = Corpus::new();
    // Default routing: every MR series of the brain model's scope.
    let config = corpus.config("");
    let studies = corpus.studies();
    let mut by_accession = String::from("accession_number,label\n");
    let mut by_patient = String::from("patient_id,study_date,label,scanner_site\n");
    for s in studies {
        by_accession += &format!(
            "{},{}\n",
            s["accession_number"].as_str().unwrap(),
            s["label"].as_str().unwrap()
        );
        by_patient += &format!(
            "{},{},{},A\n",
            s["patient_id"].as_str().unwrap(),
            s["study_date"].as_str().unwrap(),
            s["label"].as_str().unwrap()
        );
    }
    let accession = corpus.write("by-accession.csv", &by_accession);
    let (run, json) = import(
        &config,
        &accession,
        &corpus.dir.join("a"),
        &[&corpus.corpus()],
        &[],
    );
    assert!(run.status.success(), "{}\n{json}", stderr(&run));
    let imported = json["dataset"]["studies"].as_array().unwrap();
    assert_eq!(imported.len(), 17);
    // Without a series rule the localizers are in the brain model's scope
    // too (MR, BRAIN): studies 1–3 give two series; the CT never.
    let series: Vec<usize> = imported
        .iter()
        .map(|s| s["series"].as_array().unwrap().len())
        .collect();
    assert_eq!(&series[..4], &[2, 2, 2, 1], "{json}");
    assert_eq!(json["series_left_out"].as_array().unwrap().len(), 1);

    let patient = corpus.write("by-patient.csv", &by_patient);
    let (run, json) = import(
        &config,
        &patient,
        &corpus.dir.join("p"),
        &[&corpus.corpus()],
        &[],
    );
    assert!(run.status.success(), "{}\n{json}", stderr(&run));
    assert_eq!(json["dataset"]["studies"].as_array().unwrap().len(), 17);

    // The 18th study shares study 1's patient and date: line 2 matches two
    // studies; nothing is written; no patient identifier is printed.
    let out = corpus.dir.join("p2");
    let (run, json) = import(
        &config,
        &patient,
        &out,
        &[&corpus.corpus(), &corpus.dir.join("extra")],
        &[],
    );
    assert_eq!(run.status.code(), Some(1), "{json}");
    assert_eq!(json["written"], false);
    assert_eq!(
        json["rows_matching_several_studies"][0]["line"], 2,
        "{json}"
    );
    assert_eq!(
        json["rows_matching_several_studies"][0]["studies"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(!out.join("dataset.toml").exists(), "nothing written");
    let p3 = corpus.dir.join("p3");
    let text_run = vigie(
        &config,
        &[
            "validate",
            "import-dicom",
            "--labels",
            patient.to_str().unwrap(),
            "--out",
            p3.to_str().unwrap(),
            corpus.corpus().to_str().unwrap(),
            corpus.dir.join("extra").to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&text_run.stdout);
    assert!(text.contains("labels line 2: matches 2 studies"), "{text}");
    assert!(
        !text.contains("PAT0001") && !stderr(&text_run).contains("PAT0001"),
        "{text}"
    );

    // A row for no study and a study without a row: exit 1 and nothing
    // written, unless allowed; then both are still reported.
    let unmatched = corpus.write(
        "unmatched.csv",
        &(by_accession.clone() + "ACC-NOWHERE,glioma\n"),
    );
    let sources: [&Path; 2] = [&corpus.corpus(), &corpus.dir.join("extra")];
    let (run, json) = import(&config, &unmatched, &corpus.dir.join("u"), &sources, &[]);
    assert_eq!(run.status.code(), Some(1), "{json}");
    assert_eq!(json["rows_matching_no_study"], serde_json::json!([19]));
    assert_eq!(
        json["studies_without_label"],
        serde_json::json!([corpus.description["extra_study"]])
    );
    let (run, json) = import(
        &config,
        &unmatched,
        &corpus.dir.join("u2"),
        &sources,
        &["--allow-unmatched"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(json["complete"], false);
    assert_eq!(json["rows_matching_no_study"], serde_json::json!([19]));
    assert_eq!(json["dataset"]["studies"].as_array().unwrap().len(), 17);

    // Malformed spreadsheets: refused with the line or the reason, no key
    // value repeated.
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "semicolon.csv",
            b"accession_number;label\nACC0001;glioma\n",
            "separated by commas",
        ),
        (
            "nokey.csv",
            b"name,label\nACC0001,glioma\n",
            "no key column",
        ),
        (
            "duplicate.csv",
            b"accession_number,label\nACC0001,glioma\nACC0001,notumor\n",
            "line 3",
        ),
        (
            "latin1.csv",
            b"accession_number,label\nACC0001,m\xe9ningiome\n",
            "UTF-8",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = corpus.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let (run, _) = import(
            &config,
            &path,
            &corpus.dir.join(name).with_extension("out"),
            &[&corpus.corpus()],
            &[],
        );
        assert!(!run.status.success(), "{name}");
        let err = stderr(&run);
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("ACC0001"), "{name}: a key value in {err}");
    }
    // An output folder that already holds something is refused.
    let (run, _) = import(
        &config,
        &accession,
        &corpus.dir.join("a"),
        &[&corpus.corpus()],
        &[],
    );
    assert!(!run.status.success());
    assert!(stderr(&run).contains("not empty"), "{}", stderr(&run));
}

#[test]
fn seg_objects_become_the_reference_masks_of_a_segmentation_model() {
    let corpus = Corpus::new();
    let config = corpus.config(
        r#"
[[routing.rules]]
name = "disks"
models = ["fixture-bright-disk"]
"#,
    );
    let segs = corpus.description["segs"].as_array().unwrap();
    let labels = corpus.write(
        "seg-labels.csv",
        &format!(
            "accession_number,label\n{},disk\n{},disk\n",
            segs[0]["accession_number"].as_str().unwrap(),
            segs[1]["accession_number"].as_str().unwrap()
        ),
    );
    let out = corpus.dir.join("seg-dataset");
    let (run, json) = import(
        &config,
        &labels,
        &out,
        &[&corpus.dir.join("seg")],
        &["--model", "fixture-bright-disk"],
    );
    assert!(run.status.success(), "{}\n{json}", stderr(&run));
    assert_eq!(json["complete"], true, "{json}");
    let notes = json["segmentations"].as_array().unwrap();
    assert_eq!(notes.len(), 2);
    // Binary: three images referenced (the empty third frame omitted);
    // fractional: two.
    let masks: Vec<u64> = notes.iter().map(|n| n["masks"].as_u64().unwrap()).collect();
    assert_eq!(masks, [3, 2], "{json}");
    let manifest: vigie_validation::dataset::Dataset =
        toml::from_str(&std::fs::read_to_string(out.join("dataset.toml")).unwrap()).unwrap();
    let mut compared = 0;
    for study in &manifest.studies {
        assert_eq!(study.files.len(), study.references.len());
        assert_eq!(study.series[0].segmentations.len(), 1);
        for (file, reference) in study.files.iter().zip(&study.references) {
            let sop = vigie_dicom_io::DicomFile::open_header(out.join(file))
                .unwrap()
                .header()
                .sop_instance_uid
                .clone();
            let expected =
                std::fs::read(corpus.dir.join("seg-expected").join(format!("{sop}.u8"))).unwrap();
            let png = image::open(out.join(reference)).unwrap().to_luma8();
            assert_eq!(png.dimensions(), (64, 64));
            assert_eq!(png.as_raw(), &expected, "{}", reference.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 5);
    let report = validate_run(
        &config,
        &out,
        &corpus.dir.join("seg-run"),
        &["--model", "fixture-bright-disk"],
    );
    assert_eq!(report["segmentation"][0]["n"], 5, "{report}");
    let dice = report["segmentation"][0]["dice"]["mean"].as_f64().unwrap();
    assert!(dice > 0.8, "dice {dice}: {report}");
}

#[test]
fn the_appliance_s_own_studies_make_a_dataset_and_the_copy_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let files = common::demo_studies(tmp.path(), 4);
    let vigie_service = common::Vigie::start(tmp.path(), &common::base_config(""));
    let outcomes = common::send(vigie_service.dicom, &files);
    assert!(outcomes.iter().all(|o| o.status == Some(0)), "{outcomes:?}");
    vigie_service.wait_for("four studies analysed", Duration::from_secs(120), |v| {
        v.jobs().iter().filter(|j| j["state"] == "done").count() == 4
    });
    let mut csv = String::from("study_instance_uid,label\n");
    for file in &files {
        let (study, _, _) = common::uids(file);
        let label = if file.to_string_lossy().contains("-gl_") {
            "glioma"
        } else {
            "other"
        };
        csv += &format!("{study},{label}\n");
    }
    let labels = tmp.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    let out = tmp.path().join("retrospective");
    let (run, json) = import(
        &vigie_service.config,
        &labels,
        &out,
        &[],
        &["--from-store", vigie_service.data.to_str().unwrap()],
    );
    assert!(run.status.success(), "{}\n{json}", stderr(&run));
    assert_eq!(
        json["dataset"]["studies"].as_array().unwrap().len(),
        4,
        "{json}"
    );
    // Only received instances: the results the service wrote are not
    // in the index this reads.
    assert_eq!(json["instances"], 4, "{json}");
    let exported = vigie_service.audit_records("kind=dataset_exported");
    assert_eq!(exported.len(), 1, "{exported:?}");
    // The API gives a record's details as its stored JSON text.
    let details: Value = serde_json::from_str(exported[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["content_sha256"], json["dataset"]["content_sha256"]);
    assert_eq!(details["studies"].as_array().unwrap().len(), 4);
    let verify = vigie_service.command(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}
