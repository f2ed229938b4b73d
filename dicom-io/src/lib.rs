//! DICOM for Vigie: everything that reads or writes DICOM and nothing else.
//!
//! Modules:
//! - [`dimse`]: DIMSE command sets (C-ECHO, C-STORE) and statuses.
//! - [`file`]: open Part 10 files and read the header attributes the
//!   appliance needs (UIDs, modality, geometry) into [`InstanceHeader`].
//! - [`pixels`]: decode native and compressed pixel data into stored sample
//!   values ([`PixelArray`]); the list of supported transfer syntaxes.
//! - [`net`]: network services on dicom-ul: the DIMSE message layer,
//!   C-ECHO/C-STORE SCP (durable ingest through a handler) and C-STORE SCU.
//! - [`multipart`]: the `multipart/related` bodies DICOMweb carries
//!   instances in (PS3.18 8.6, RFC 2387): a streaming parser fed chunk by
//!   chunk, and media type parameters; bytes in, parts out, no HTTP.
//! - [`lut`]: the grayscale pipeline of PS3.3 C.11 — Modality LUT (rescale or
//!   LUT sequence), VOI LUT (window LINEAR / LINEAR_EXACT / SIGMOID or LUT
//!   sequence), MONOCHROME1 inversion — in that order.
//! - [`volume`]: assemble single-frame instances of a series into a volume
//!   ordered by Image Position (Patient).
//! - [`scan`]: the bounded structural check every file passes before it is
//!   parsed (nesting depth, element count, lengths within the file,
//!   inflated and decoded sizes) and the image pixel module consistency.
//! - [`uid`]: UID validation and generation under a configurable root.
//! - [`web`]: the DICOM side of DICOMweb: indexed and returned attributes
//!   per level, C-FIND matching, the DICOM JSON model, transcoding.
//! - [`write`]: build and write new instances (the synthetic MR images of
//!   the demo dataset), durably.
//!
//! The crate knows nothing of models, HTTP or databases. Errors are
//! [`Error`], with the file and SOP Instance UID they concern.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod dimse;
pub mod error;
pub mod file;
pub mod frames;
pub mod lut;
pub mod multipart;
pub mod net;
pub mod pixels;
pub mod render;
pub mod results;
pub mod review;
pub mod scan;
pub mod uid;
pub mod volume;
pub mod web;
pub mod write;

pub use error::{Error, Result};
pub use file::{DicomFile, FileMeta, InstanceHeader, read_meta};
pub use lut::{PixelOptions, VoiSelection, WindowFunction};
pub use pixels::{Photometric, PixelArray, TransferSyntaxSupport, transfer_syntax_support};
pub use scan::{Limits, Scanned};
