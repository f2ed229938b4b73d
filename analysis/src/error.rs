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

impl Error {
    /// A stable, machine-readable code for the kind of failure: the
    /// underlying crate's code for DICOM and model errors (see
    /// [`vigie_dicom_io::Error::code`] and [`vigie_inference::Error::code`]),
    /// `batch_failed` and `not_applicable` for this crate's own.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Dicom(e) => e.code(),
            Error::Inference(e) => e.code(),
            Error::BatchFailed { .. } => "batch_failed",
            Error::NotApplicable { .. } => "not_applicable",
        }
    }

    /// The SOP Instance UID of the instance concerned, when the error knows
    /// it.
    pub fn sop_instance_uid(&self) -> Option<&str> {
        match self {
            Error::Dicom(e) => e.sop_instance_uid(),
            Error::Inference(_) => None,
            Error::BatchFailed {
                sop_instance_uid, ..
            }
            | Error::NotApplicable {
                sop_instance_uid, ..
            } => (!sop_instance_uid.is_empty() && sop_instance_uid != "unknown")
                .then_some(sop_instance_uid.as_str()),
        }
    }
}
