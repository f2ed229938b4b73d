//! The dataset manifest: `dataset.toml` beside the DICOM files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the manifest inside a dataset folder.
pub const DATASET_FILE: &str = "dataset.toml";

/// A labelled dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Human-readable name.
    pub name: String,
    /// What made it (tool and version).
    pub created_by: String,
    /// SHA-256 over every file's (and reference mask's) relative path and
    /// content hash, in order: two datasets with the same hash hold the same
    /// bytes.
    pub content_sha256: String,
    /// Studies.
    #[serde(default)]
    pub studies: Vec<StudyEntry>,
}

/// One study and its ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyEntry {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Ground-truth class label.
    pub label: String,
    /// DICOM files, relative to the dataset folder.
    pub files: Vec<PathBuf>,
    /// SHA-256 of each file, same order.
    pub sha256: Vec<String>,
    /// Where the study came from (e.g. the source picture's name).
    #[serde(default)]
    pub source: Option<String>,
    /// Subgroup attributes given by the dataset's authors (e.g. `site`,
    /// `scanner`); attributes found in the DICOM headers are added by the
    /// validation run.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Reference segmentations, one grayscale PNG per file (same order,
    /// relative to the dataset folder; pixel value = segment label, 0 =
    /// background), for segmentation models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<PathBuf>,
    /// The series its files come from and why they were chosen (datasets
    /// built by `validate import-dicom`; empty for older datasets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesEntry>,
}

/// A series of a study in the dataset: the one the routing rules chose for
/// the model, as `vigie serve` would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesEntry {
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality.
    #[serde(default)]
    pub modality: Option<String>,
    /// Series Description.
    #[serde(default)]
    pub series_description: Option<String>,
    /// The routing rule that took it for the model.
    pub rule: String,
    /// Its images in the dataset.
    pub images: usize,
    /// SOP Instance UIDs of the DICOM SEG objects its reference masks were
    /// taken from (segmentation models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segmentations: Vec<String>,
}

impl Dataset {
    /// Read `dataset.toml` from a folder or a file path.
    pub fn load(path: &Path) -> Result<(PathBuf, Self)> {
        let file = if path.is_dir() {
            path.join(DATASET_FILE)
        } else {
            path.to_path_buf()
        };
        let root = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        let dataset: Dataset = toml::from_str(&text).map_err(|e| Error::Dataset {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        Ok((root, dataset))
    }

    /// Write it as `dir/dataset.toml`, durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(DATASET_FILE);
        let text = toml::to_string_pretty(self).map_err(|e| Error::Dataset {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        vigie_dicom_io::write::write_durably(&path, |w| {
            std::io::Write::write_all(w, text.as_bytes())
        })?;
        Ok(())
    }

    /// Recompute the content hash from the files (and reference masks) on
    /// disk and compare it, and each file's hash, with the manifest.
    pub fn verify(&self, root: &Path) -> Result<()> {
        let mut hashes = Vec::new();
        for study in &self.studies {
            if study.files.len() != study.sha256.len() {
                return Err(Error::Dataset {
                    path: root.join(DATASET_FILE),
                    reason: format!(
                        "study {}: {} files, {} hashes",
                        study.study_instance_uid,
                        study.files.len(),
                        study.sha256.len()
                    ),
                });
            }
            for (file, expected) in study.files.iter().zip(&study.sha256) {
                let path = root.join(file);
                let actual =
                    vigie_inference::package::sha256_file(&path).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                if &actual != expected {
                    return Err(Error::Dataset {
                        path: root.join(DATASET_FILE),
                        reason: format!(
                            "{} has SHA-256 {actual}, the manifest says {expected}",
                            file.display()
                        ),
                    });
                }
                hashes.push((file.clone(), actual));
            }
            // Reference segmentations are ground truth: in the content
            // hash too.
            for reference in &study.references {
                let path = root.join(reference);
                let actual =
                    vigie_inference::package::sha256_file(&path).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                hashes.push((reference.clone(), actual));
            }
        }
        let actual = content_hash(&hashes);
        if actual != self.content_sha256 {
            return Err(Error::Dataset {
                path: root.join(DATASET_FILE),
                reason: format!(
                    "content hash {actual} differs from the manifest's {}",
                    self.content_sha256
                ),
            });
        }
        Ok(())
    }
}

/// The dataset content hash over `(relative path, file SHA-256)` pairs.
pub fn content_hash(files: &[(PathBuf, String)]) -> String {
    let mut sorted: Vec<_> = files.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for (path, hash) in sorted {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(hash.as_bytes());
        hasher.update([b'\n']);
    }
    hex::encode(hasher.finalize())
}
