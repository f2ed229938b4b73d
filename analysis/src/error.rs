//! The crate's error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the analysis of an instance and of the making of its result
/// objects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or decoding DICOM, or building a result object, failed.
    #[error(transparent)]
    Dicom(#[from] vigie_dicom_io::Error),
    /// Loading or running the model failed.
    #[error(transparent)]
    Inference(#[from] vigie_inference::Error),
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
}
