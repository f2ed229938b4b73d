//! Shared helpers for Vigie's benchmarks: where the benchmark inputs are.
//! Benchmarks never run in the test suite; see `benches/README.md`.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

/// The repository root: `VIGIE_ROOT` when set (a copy of the repository
/// on another machine, e.g. the GPU one), else where this crate was built.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("VIGIE_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// The demo DICOM studies made by `scripts/setup.sh`.
pub fn demo_files() -> Vec<PathBuf> {
    let dir = repo_root().join(".cache/vigie/demo/dicom");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// pydicom's test files folder inside `.venv` (for per-syntax decode benches).
pub fn pydicom_test_files() -> Option<PathBuf> {
    let lib = repo_root().join(".venv/lib");
    let python = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .next()?
        .path();
    let dir = python.join("site-packages/pydicom/data/test_files");
    dir.is_dir().then_some(dir)
}
