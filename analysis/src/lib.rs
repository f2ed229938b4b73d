//! The one analysis path of Vigie, shared by `vigie serve` (its workers),
//! `vigie infer` and `vigie validate run`, so that what is validated is
//! exactly what runs, batching and decode threads included.
//!
//! Modules:
//! - [`hot_loop`]: DICOM instance → decoded pixels (the package's Modality
//!   LUT, VOI, MONOCHROME1) → model → typed result, one instance at a time
//!   ([`hot_loop::analyse`]) or as a stream ([`hot_loop::analyse_stream`]):
//!   decode threads opening, decoding and preprocessing ahead of the model
//!   into pooled tensors, dynamic batching, results in input order.
//! - [`results`]: model results → result objects (TID 1500 SR, binary SEG,
//!   summary Secondary Capture) built with `vigie-dicom-io`.
//! - [`population`]: what post-market surveillance groups and watches
//!   inferences by, recorded with each (subgroup attributes, intensity
//!   statistics of the pixels the model saw).
//! - [`config`]: the `[inference]` section and its one resolve step into
//!   the thread plan, backend options, model registry and each model's
//!   hot loop ([`config::Resolved`]).
//! - [`routing`]: which models run on which series of a complete study
//!   (`[routing]` rules and each package's `[applies_to]`).
//!
//! The crate knows nothing of HTTP, databases, the audit trail or
//! configuration files: its configuration sections are plain serde types
//! that the service's loader fills; callers pass a loaded
//! [`vigie_inference::Model`] and a resolved [`hot_loop::HotLoop`].
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod config;
pub mod error;
pub mod hot_loop;
pub mod population;
pub mod results;
pub mod routing;

pub use error::{Error, Result};
pub use hot_loop::{
    Batching, HotLoop, InstanceAnalysis, Streamed, analyse, analyse_path, analyse_stream,
    hash_samples, pixel_options,
};
pub use results::{ResultBuilder, ResultKind, ResultObject};
