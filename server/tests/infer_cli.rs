//! `vigie infer` as an operator runs it: good inputs are analysed, bad ones
//! are reported one by one with a clear reason and do not stop the others.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vigie_test_support::{repo_root as root, require};

fn vigie(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigie"))
        .current_dir(cwd)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("VIGIE_CONFIG")
        .env("VIGIE__INFERENCE__MODELS_DIR", root().join("models"))
        .args(args)
        .output()
        .expect("vigie runs")
}

fn pydicom_file(name: &str) -> PathBuf {
    vigie_test_support::pydicom_test_files().join(name)
}

#[test]
/// Bad inputs are reported and do not stop the good ones; each failure in
/// `--json` carries the file, the SOP Instance UID and a stable reason code
/// as fields of their own (#22 part 6: they carried only a text).
fn regression_infer_json_failures_carry_file_sop_instance_uid_and_reason_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pictures = tmp.path().join("pictures");
    std::fs::create_dir(&pictures).expect("mkdir");
    for name in ["Te-gl_0010.jpg", "Te-pi_0014.jpg"] {
        std::fs::copy(
            require(root().join(".cache/vigie/demo/images").join(name)),
            pictures.join(name),
        )
        .expect("copy");
    }
    let input = tmp.path().join("input");
    let out = vigie(
        tmp.path(),
        &[
            "validate",
            "import-images",
            pictures.to_str().expect("utf-8"),
            input.to_str().expect("utf-8"),
            "--label-pattern",
            "^Te-(..)_",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A truncated copy, a text file, an unsupported transfer syntax, a CT.
    let good = std::fs::read(input.join("Te-gl_0010.dcm")).expect("read");
    std::fs::write(input.join("truncated.dcm"), &good[..good.len() / 2]).expect("write");
    std::fs::write(input.join("notes.txt"), "not a DICOM file\n").expect("write");
    // pydicom's real 12-bit JPEG Extended file, relabelled as a brain MR so
    // that the model applies and the transfer syntax is what refuses it.
    let mut jpeg12 = dicom_object::open_file(pydicom_file("JPGExtended.dcm")).expect("opens");
    for (tag, value) in [
        (dicom_dictionary_std::tags::MODALITY, "MR"),
        (dicom_dictionary_std::tags::BODY_PART_EXAMINED, "BRAIN"),
    ] {
        jpeg12.put(dicom_core::DataElement::new(
            tag,
            dicom_core::VR::CS,
            dicom_core::PrimitiveValue::from(value),
        ));
    }
    jpeg12
        .write_to_file(input.join("jpeg12.dcm"))
        .expect("write");
    std::fs::copy(pydicom_file("CT_small.dcm"), input.join("ct.dcm")).expect("copy");
    let lib = require(root().join(".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1"));
    let out = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .current_dir(tmp.path())
        .env("VIGIE__INFERENCE__MODELS_DIR", root().join("models"))
        .env("VIGIE__INFERENCE__ONNXRUNTIME_LIBRARY", &lib)
        .args([
            "infer",
            "--json",
            "--results",
            tmp.path().join("results").to_str().expect("utf-8"),
            input.to_str().expect("utf-8"),
        ])
        .output()
        .expect("vigie runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["summary"]["instances"], 2);
    assert_eq!(doc["summary"]["failed"], 4);
    assert_eq!(
        doc["model"]["sha256"],
        "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
    );
    assert_eq!(doc["execution"]["provider"], "CPUExecutionProvider");
    let decisions: Vec<&str> = doc["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            i["results"][0]["finding"]["decision"]
                .as_str()
                .expect("decision")
        })
        .collect();
    assert_eq!(decisions, ["glioma", "pituitary"]);
    let written = doc["results"].as_array().expect("results");
    assert_eq!(
        written.len(),
        2,
        "one SR per analysed instance: {written:?}"
    );
    for w in written {
        assert_eq!(w["kind"], "sr");
        assert!(Path::new(w["path"].as_str().expect("path")).is_file());
    }
    let failures = doc["failures"].as_array().expect("failures");
    // Each failure carries the file, the SOP Instance UID and a stable
    // reason code as fields of their own (#22 part 6).
    let sop_of = |path: &Path| -> String {
        dicom_object::open_file(path)
            .expect("opens")
            .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
            .expect("SOP Instance UID")
            .to_str()
            .expect("text")
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    let fields = |file: &str| -> (serde_json::Value, String) {
        let f = failures
            .iter()
            .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(file)))
            .unwrap_or_else(|| panic!("no failure reported for {file}: {failures:?}"));
        (
            f["sop_instance_uid"].clone(),
            f["reason"].as_str().expect("reason code").to_string(),
        )
    };
    assert_eq!(
        fields("notes.txt"),
        (serde_json::Value::Null, "not_readable_as_dicom".to_string())
    );
    assert_eq!(
        fields("jpeg12.dcm"),
        (
            serde_json::Value::from(sop_of(&input.join("jpeg12.dcm"))),
            "unsupported_transfer_syntax".to_string()
        )
    );
    assert_eq!(
        fields("ct.dcm"),
        (
            serde_json::Value::from(sop_of(&input.join("ct.dcm"))),
            "not_applicable".to_string()
        )
    );
    let (truncated_uid, truncated_reason) = fields("truncated.dcm");
    assert_eq!(
        truncated_uid,
        serde_json::Value::from(sop_of(&input.join("Te-gl_0010.dcm"))),
        "the UID is read from the file meta group the truncation left intact"
    );
    assert_eq!(truncated_reason, "malformed_data_set");
    let reason = |file: &str| -> String {
        failures
            .iter()
            .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(file)))
            .and_then(|f| f["error"].as_str())
            .unwrap_or_else(|| panic!("no failure reported for {file}: {failures:?}"))
            .to_string()
    };
    assert!(
        reason("truncated.dcm").contains("truncated.dcm"),
        "{}",
        reason("truncated.dcm")
    );
    assert!(
        reason("notes.txt").contains("as a DICOM file"),
        "{}",
        reason("notes.txt")
    );
    assert!(
        reason("jpeg12.dcm").contains("unsupported transfer syntax 1.2.840.10008.1.2.4.51"),
        "{}",
        reason("jpeg12.dcm")
    );
    assert!(
        reason("ct.dcm").contains("does not apply") && reason("ct.dcm").contains("\"CT\""),
        "{}",
        reason("ct.dcm")
    );
}

#[test]
fn missing_onnx_runtime_is_explained_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pydicom_ct = pydicom_file("MR_small.dcm");
    let out = vigie(tmp.path(), &["infer", pydicom_ct.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scripts/setup.sh") && stderr.contains("ORT_DYLIB_PATH"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_check_names_the_bad_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("vigie.toml");
    std::fs::write(&file, "[inference]\ndevice = \"tpu\"\n").expect("write");
    let out = vigie(
        tmp.path(),
        &["config", "check", file.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("inference.device") && stderr.contains("tpu"),
        "{stderr}"
    );
    std::fs::write(&file, "[inference]\ndevice = \"cpu\"\nintra_threads = 2\n").expect("write");
    let out = vigie(
        tmp.path(),
        &["config", "check", file.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
