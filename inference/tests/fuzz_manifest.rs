//! Bounded, seeded fuzzing of the model manifest parser (`model.toml`,
//! docs/fuzzing.md): a model package comes from outside the appliance, and
//! no manifest, however broken, may make loading it panic.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use vigie_inference::manifest::Manifest;
use vigie_test_support::{fuzz, repo_root};

#[test]
fn fuzz_model_manifests() {
    let seeds: Vec<Vec<u8>> = [
        "models/brain-tumour-vgg16/model.toml",
        "models/fixture-bright-disk/model.toml",
        "models/fixture-prior-change/model.toml",
        "models/candidates/brain-tumour-vgg16-int8/model.toml",
    ]
    .iter()
    .map(|p| std::fs::read(repo_root().join(p)).unwrap())
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    let summary = fuzz::run(
        "manifest",
        &seeds,
        fuzz::iterations(200_000),
        fuzz::budget(6),
        |bytes| {
            std::fs::write(&path, bytes).unwrap();
            if let Ok(manifest) = Manifest::from_file(&path) {
                let _ = manifest.input.image_dims();
            }
        },
    );
    assert!(summary.executions > 3);
}
