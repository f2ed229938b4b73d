//! Validation for Vigie: labelled datasets, and the study analysis function
//! that production and validation share.
//!
//! Modules:
//! - [`dataset`]: the dataset manifest (`dataset.toml`): studies, their
//!   files and ground truth, and the dataset's content hash.
//! - [`import`]: build a dataset of synthetic DICOM MR studies from
//!   labelled pictures (`vigie validate import-images`).
//! - [`reporting`]: model results → SR / SEG / summary image.
//! - [`compare`]: non-inferiority of a candidate against a baseline.
//! - [`segmentation`]: Dice, IoU, HD95 and ASSD (mm) of a predicted mask.
//! - [`stats`]: classification metrics with 95 % intervals (Wilson,
//!   DeLong), tested against scikit-learn and scipy.
//! - [`pipeline`]: DICOM instance → decoded pixels → model → result. The
//!   appliance (`vigie infer`, `vigie serve`) and the validation suite call
//!   this same function, so what is validated is what runs.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod compare;
pub mod dataset;
pub mod error;
pub mod import;
pub mod pipeline;
pub mod reporting;
pub mod segmentation;
pub mod stats;

pub use error::{Error, Result};
