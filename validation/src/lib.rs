//! Validation for Vigie: labelled datasets, statistics, comparisons and
//! the validation reports. The analysis itself is `vigie-analysis`'s hot
//! loop, the same one production runs.
//!
//! Modules:
//! - [`dataset`]: the dataset manifest (`dataset.toml`): studies, their
//!   files and ground truth, and the dataset's content hash.
//! - [`import`]: build a dataset of synthetic DICOM MR studies from
//!   labelled pictures (`vigie validate import-images`).
//! - [`import_dicom`]: build a dataset from the hospital's own DICOM
//!   studies and a labels spreadsheet, the series chosen by the routing
//!   rules as `vigie serve` chooses them, reference masks from SEG objects
//!   (`vigie validate import-dicom`).
//! - [`labels`]: the labels CSV of a dataset from the hospital's own
//!   DICOM (key column, label, subgroup attributes; every problem by line)
//!   and the matching of its rows to studies.
//! - [`compare`]: non-inferiority of a candidate against a baseline, and
//!   of one `report.json` against another.
//! - [`run`]: a validation run through the production hot loop, every
//!   inference recorded in the audit trail, into a typed report; writing
//!   the reports.
//! - [`report`]: the typed report, its JSON, Markdown and HTML (maud).
//! - [`segmentation`]: Dice, IoU, HD95 and ASSD (mm) of a predicted mask.
//! - [`stats`]: classification metrics with 95 % intervals (Wilson,
//!   DeLong), tested against scikit-learn and scipy.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod compare;
pub mod dataset;
pub mod error;
pub mod import;
pub mod import_dicom;
pub mod labels;
pub mod pms;
pub mod report;
pub mod run;
pub mod segmentation;
pub mod stats;

pub use error::{Error, Result};
