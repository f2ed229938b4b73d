//! The crate's error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of dataset handling and of the shared pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or decoding DICOM failed.
    #[error(transparent)]
    Dicom(#[from] vigie_dicom_io::Error),
    /// Loading or running the model failed.
    #[error(transparent)]
    Inference(#[from] vigie_inference::Error),
    /// The dataset manifest is unreadable or inconsistent.
    #[error("dataset {path}: {reason}")]
    Dataset {
        /// Manifest path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A source picture cannot be imported.
    #[error("cannot import {path}: {reason}")]
    Import {
        /// Picture path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model run of a batch of instances failed (each gets this error).
    #[error(
        "{path} (SOP Instance {sop_instance_uid}): the model run of its batch failed: {reason}"
    )]
    BatchFailed {
        /// File.
        path: PathBuf,
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// Why the batch failed.
        reason: String,
    },
    /// The model does not apply to this instance.
    #[error("{path} (SOP Instance {sop_instance_uid}): model {model_id} does not apply: {reason}")]
    NotApplicable {
        /// File.
        path: PathBuf,
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// Model id.
        model_id: String,
        /// Why.
        reason: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
}
