//! The crate's error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, decoding or writing DICOM.
///
/// Each variant names the file and, when it is known, the SOP Instance UID,
/// so that a support engineer can find the instance that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read as DICOM Part 10 (not DICOM, truncated
    /// header, unreadable).
    #[error("cannot read {path} as a DICOM file: {reason}")]
    Open {
        /// File that failed.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The data set breaks its own structure: a length past the end of the
    /// file or of its item, an unknown VR, a misplaced delimiter, a
    /// truncated data set.
    #[error("{path}: malformed data set at byte {offset}: {reason}")]
    Malformed {
        /// File concerned.
        path: PathBuf,
        /// Byte offset in the file (in the inflated data set for a
        /// deflated one).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The data set exceeds a limit of [`crate::scan::Limits`] (nesting
    /// depth, number of elements, decoded or inflated size).
    #[error("{path}: data set beyond the limits of this appliance ({limit}): {reason}")]
    Limit {
        /// File concerned.
        path: PathBuf,
        /// Which limit.
        limit: &'static str,
        /// By how much.
        reason: String,
    },
    /// A required attribute is absent or empty.
    #[error("{path} (SOP Instance {sop_instance_uid}): required attribute {attribute} is missing")]
    MissingAttribute {
        /// File concerned.
        path: PathBuf,
        /// SOP Instance UID, or `unknown`.
        sop_instance_uid: String,
        /// Keyword of the attribute.
        attribute: &'static str,
    },
    /// An attribute has a value this code cannot use.
    #[error("{path} (SOP Instance {sop_instance_uid}): attribute {attribute} is invalid: {reason}")]
    InvalidAttribute {
        /// File concerned.
        path: PathBuf,
        /// SOP Instance UID, or `unknown`.
        sop_instance_uid: String,
        /// Keyword of the attribute.
        attribute: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// The transfer syntax is unknown or its pixel data cannot be decoded.
    #[error(
        "{path} (SOP Instance {sop_instance_uid}): unsupported transfer syntax {transfer_syntax} ({name})"
    )]
    UnsupportedTransferSyntax {
        /// File concerned.
        path: PathBuf,
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// Transfer syntax UID.
        transfer_syntax: String,
        /// Its name, or `unknown`.
        name: String,
    },
    /// The pixel format (bit depth, samples, photometric interpretation) is
    /// outside what the appliance handles.
    #[error("{path} (SOP Instance {sop_instance_uid}): unsupported pixel data: {reason}")]
    UnsupportedPixelData {
        /// File concerned.
        path: PathBuf,
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// What is unsupported.
        reason: String,
    },
    /// The pixel data is present but could not be decoded (corrupt stream,
    /// truncated data).
    #[error("{path} (SOP Instance {sop_instance_uid}): cannot decode pixel data: {reason}")]
    DecodePixelData {
        /// File concerned.
        path: PathBuf,
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// What the decoder said.
        reason: String,
    },
    /// Instances cannot be assembled into one volume.
    #[error("cannot assemble series {series_instance_uid} into a volume: {reason}")]
    Volume {
        /// Series concerned.
        series_instance_uid: String,
        /// Why.
        reason: String,
    },
    /// A value is not a valid DICOM UID.
    #[error("invalid UID {value:?}: {reason}")]
    InvalidUid {
        /// The offending value.
        value: String,
        /// Why it is not a UID.
        reason: &'static str,
    },
    /// Building a new instance failed.
    #[error("cannot build instance {sop_instance_uid}: {reason}")]
    Build {
        /// SOP Instance UID of the instance being built.
        sop_instance_uid: String,
        /// Why.
        reason: String,
    },
    /// A frame number beyond the instance's frames.
    #[error("SOP Instance {sop_instance_uid} has {frames} frame(s): no frame {frame}")]
    NoSuchFrame {
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// The frame asked (from 1).
        frame: u32,
        /// Frames the instance has (0: no pixel data).
        frames: u32,
    },
    /// The encapsulated pixel data cannot be cut into frames as stored.
    #[error("SOP Instance {sop_instance_uid}: frames cannot be delimited as stored: {reason}")]
    FramesNotDelimited {
        /// SOP Instance UID.
        sop_instance_uid: String,
        /// Why.
        reason: String,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Destination.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// A stable, machine-readable code for the kind of failure (`snake_case`;
    /// one per variant, never renamed), for tools and reports that group
    /// failures without parsing their text.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Open { .. } => "not_readable_as_dicom",
            Error::Malformed { .. } => "malformed_data_set",
            Error::Limit { .. } => "beyond_limits",
            Error::MissingAttribute { .. } => "missing_attribute",
            Error::InvalidAttribute { .. } => "invalid_attribute",
            Error::UnsupportedTransferSyntax { .. } => "unsupported_transfer_syntax",
            Error::UnsupportedPixelData { .. } => "unsupported_pixel_data",
            Error::DecodePixelData { .. } => "pixel_data_not_decodable",
            Error::Volume { .. } => "volume_not_assembled",
            Error::InvalidUid { .. } => "invalid_uid",
            Error::Build { .. } => "result_not_built",
            Error::NoSuchFrame { .. } => "no_such_frame",
            Error::FramesNotDelimited { .. } => "frames_not_delimited",
            Error::Write { .. } => "write_failed",
        }
    }

    /// The SOP Instance UID of the instance concerned, when the error knows
    /// it (never the `unknown` placeholder).
    pub fn sop_instance_uid(&self) -> Option<&str> {
        let uid = match self {
            Error::MissingAttribute {
                sop_instance_uid, ..
            }
            | Error::InvalidAttribute {
                sop_instance_uid, ..
            }
            | Error::UnsupportedTransferSyntax {
                sop_instance_uid, ..
            }
            | Error::UnsupportedPixelData {
                sop_instance_uid, ..
            }
            | Error::DecodePixelData {
                sop_instance_uid, ..
            }
            | Error::NoSuchFrame {
                sop_instance_uid, ..
            }
            | Error::FramesNotDelimited {
                sop_instance_uid, ..
            } => sop_instance_uid.as_str(),
            _ => return None,
        };
        (!uid.is_empty() && uid != "unknown").then_some(uid)
    }
}
