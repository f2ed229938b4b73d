//! Errors of dataset handling, validation runs and reports.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What failed in this crate, with its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A DICOM file (dataset image, reference mask, written report) failed.
    #[error(transparent)]
    Dicom(#[from] vigie_dicom_io::Error),
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
    /// Analysing an instance failed.
    #[error(transparent)]
    Analysis(#[from] vigie_analysis::Error),
    /// The audit trail cannot record the run.
    #[error(transparent)]
    Audit(#[from] vigie_audit::AuditError),
    /// An option of the run is malformed.
    #[error("{option} {value:?}: {reason}")]
    Option {
        /// The option (`--claim`, `--operating-point`).
        option: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The report cannot be serialised.
    #[error("report: {0}")]
    Report(#[from] serde_json::Error),
    /// A file is not a classification `report.json`.
    #[error("{path} is not a classification report.json")]
    NotAReport {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
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
