//! Backends behind one trait. A backend is created for one model package,
//! checks the model file's contract against the manifest, and reports what
//! really ran ([`Execution`]). The trait and what every backend shares are
//! in [`contract`]; this module only picks the implementation, so that the
//! implementations depend on the contract and not on their parent.

pub mod candle;
pub mod contract;
pub mod onnx;

pub use crate::device::Device;
pub use contract::{Backend, BackendOptions, ConvAlgoSearch, Execution};

use crate::error::Result;
use crate::manifest::BackendKind;
use crate::package::ModelPackage;

/// Create the backend `kind` for `package`.
pub fn load(
    package: &ModelPackage,
    kind: BackendKind,
    options: &BackendOptions,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Onnx => Ok(Box::new(onnx::OnnxBackend::load(package, options)?)),
        BackendKind::Candle => Ok(Box::new(candle::CandleBackend::load(package, options)?)),
    }
}
