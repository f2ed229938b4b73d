//! Models for Vigie: packages, pre/post-processing as data, backends.
//!
//! Modules:
//! - [`manifest`]: the `model.toml` schema — identity, intended use, which
//!   studies a model applies to, weights and their SHA-256, the input/output
//!   contract, preprocessing and postprocessing as data.
//! - [`package`]: loading a package folder, verifying the weights' hash.
//! - [`preprocess`]: from an image (already through the DICOM grayscale
//!   pipeline) to the model's input tensor: channels, resampling, scaling,
//!   layout. [`resize`] holds the resampling filters.
//! - [`backend`]: one [`backend::Backend`] trait; ONNX Runtime
//!   ([`backend::onnx`]) and candle ([`backend::candle`]) implementations. The
//!   contract of the loaded model is checked against the manifest before it
//!   serves.
//! - [`postprocess`]: activations, labels and decision rules.
//! - [`model`]: [`model::Model`], a loaded package ready to run: the one
//!   code path from image to typed result, with stage timings; its
//!   [`model::Preparer`] runs the preprocessing on other threads.
//! - [`registry`]: the installed packages of a folder, found by id and
//!   loaded on a backend: the one way every command loads a model.
//! - [`device`]: where a model runs ([`device::Device`]), shared by the
//!   thread plan and the backends.
//! - [`threads`]: thread counts derived from the machine, and pinning.
//!
//! The crate knows nothing of DICOM networking, HTTP or configuration files.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod backend;
pub mod device;
pub mod error;
pub mod manifest;
pub mod model;
pub mod package;
pub mod postprocess;
pub mod preprocess;
pub mod registry;
pub mod resize;
pub mod threads;

pub use error::{Error, Result};
pub use manifest::Manifest;
pub use model::{Image, Model, ModelResult, Prepared, Preparer, PriorInput};
pub use package::ModelPackage;
pub use registry::ModelRegistry;
