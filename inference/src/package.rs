//! A model package: a folder with `model.toml` and the weights it names.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// File name of the manifest inside a package folder.
pub const MANIFEST_FILE: &str = "model.toml";

/// A package whose manifest is valid and whose weights match their hash.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    dir: PathBuf,
    manifest: Manifest,
    weights_path: PathBuf,
}

impl ModelPackage {
    /// Load the package in `dir`: parse and validate the manifest, hash the
    /// weights and refuse them if the SHA-256 differs.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::from_file(&dir.join(MANIFEST_FILE))?;
        let weights_path = dir.join(&manifest.weights.file);
        let actual = sha256_file(&weights_path).map_err(|source| Error::WeightsRead {
            model_id: manifest.model.id.clone(),
            path: weights_path.clone(),
            source,
        })?;
        if actual != manifest.weights.sha256 {
            return Err(Error::HashMismatch {
                model_id: manifest.model.id.clone(),
                path: weights_path,
                expected: manifest.weights.sha256.clone(),
                actual,
            });
        }
        Ok(Self {
            dir,
            manifest,
            weights_path,
        })
    }

    /// Every package folder directly under `root` (folders holding a
    /// `model.toml`), sorted by name.
    pub fn discover(root: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// The package folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The verified weights file.
    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    /// SHA-256 of the weights (verified at load).
    pub fn sha256(&self) -> &str {
        &self.manifest.weights.sha256
    }

    /// Model id.
    pub fn id(&self) -> &str {
        &self.manifest.model.id
    }

    /// Model version.
    pub fn version(&self) -> &str {
        &self.manifest.model.version
    }
}

/// SHA-256 of a file, lowercase hex, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
