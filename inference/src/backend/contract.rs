//! What every backend shares: the [`Backend`] trait, the options backends
//! are created with, what they report ([`Execution`]), and the checks of a
//! model file's contract against its manifest.

use std::path::PathBuf;

use serde::Serialize;

use crate::device::Device;
use crate::error::Result;

/// How ONNX Runtime's CUDA provider chooses cuDNN's convolution
/// algorithms for each new input shape (its `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvAlgoSearch {
    /// Benchmark every algorithm (ONNX Runtime's default): the fastest
    /// kernels, paid for at the first run of every input shape.
    #[default]
    Exhaustive,
    /// cuDNN's heuristics, no benchmarking.
    Heuristic,
    /// cuDNN's default algorithm.
    Default,
}

/// How to create backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Device.
    pub device: Device,
    /// Threads inside one inference (0: the runtime's default).
    pub intra_threads: usize,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.31.1`).
    pub onnxruntime_library: Option<PathBuf>,
    /// Logical CPUs of the intra-op threads, the calling (model) thread's
    /// first: ONNX Runtime pins its other intra-op threads to the rest (see
    /// [`crate::threads::ThreadPlan`]); the caller pins its own thread.
    /// Empty: not pinned.
    pub intra_cpus: Vec<usize>,
    /// cuDNN convolution algorithm search of ONNX Runtime's CUDA provider
    /// (ignored on CPU and by candle).
    pub conv_algo_search: ConvAlgoSearch,
}

impl BackendOptions {
    /// Options for `device` with `intra_threads` threads and the given
    /// ONNX Runtime library.
    pub fn new(device: Device, intra_threads: usize, onnxruntime_library: Option<PathBuf>) -> Self {
        Self {
            device,
            intra_threads,
            onnxruntime_library,
            intra_cpus: Vec::new(),
            conv_algo_search: ConvAlgoSearch::default(),
        }
    }

    /// The same options with this cuDNN convolution algorithm search.
    pub fn with_conv_algo_search(mut self, search: ConvAlgoSearch) -> Self {
        self.conv_algo_search = search;
        self
    }

    /// The same options with the intra-op threads pinned to `cpus` (the
    /// model thread's first).
    pub fn with_intra_cpus(mut self, cpus: Vec<usize>) -> Self {
        self.intra_cpus = cpus;
        self
    }
}

/// What actually ran, reported with every result and in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Execution {
    /// `onnxruntime` or `candle`.
    pub backend: &'static str,
    /// Execution provider (`CPUExecutionProvider`, `CUDAExecutionProvider`,
    /// `candle-cpu`).
    pub provider: String,
    /// Device.
    pub device: String,
    /// Intra-op threads (0: runtime default).
    pub intra_threads: usize,
    /// Version of the runtime.
    pub runtime_version: String,
}

/// A loaded model on a backend.
pub trait Backend: Send + std::fmt::Debug {
    /// Run one batch: `input` holds `batch` images' tensors back to back.
    /// Returns the output tensor, flattened, and its shape.
    fn run(&mut self, input: &[f32], batch: usize) -> Result<(Vec<usize>, Vec<f32>)>;

    /// Run one batch of a model with prior inputs (its manifest's
    /// `[priors]`): `priors` holds one buffer per prior input, in the
    /// order of `priors.inputs`, each `batch` tensors of the same shape as
    /// `input`'s, back to back.
    fn run_with_priors(
        &mut self,
        input: &[f32],
        priors: &[&[f32]],
        batch: usize,
    ) -> Result<(Vec<usize>, Vec<f32>)>;

    /// What runs this model.
    fn execution(&self) -> &Execution;

    /// Largest batch the model accepts (`None`: any).
    fn max_batch(&self) -> Option<usize>;
}

/// Compare a model file's tensor shape with the manifest's; `-1` (or a
/// symbolic dimension) is free.
pub(crate) fn check_shape(
    model_id: &str,
    what: &str,
    expected: &[i64],
    found: &[i64],
) -> Result<()> {
    if expected != found {
        return Err(crate::Error::ContractMismatch {
            model_id: model_id.to_string(),
            field: format!("{what}.shape"),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        });
    }
    Ok(())
}

/// Compare a tensor name.
pub(crate) fn check_name(
    model_id: &str,
    what: &str,
    expected: &str,
    found: &[String],
) -> Result<()> {
    check_names(model_id, what, &[expected], found)
}

/// Compare a set of tensor names (in any order).
pub(crate) fn check_names(
    model_id: &str,
    what: &str,
    expected: &[&str],
    found: &[String],
) -> Result<()> {
    let mut want: Vec<&str> = expected.to_vec();
    let mut have: Vec<&str> = found.iter().map(String::as_str).collect();
    want.sort_unstable();
    have.sort_unstable();
    if want != have {
        return Err(crate::Error::ContractMismatch {
            model_id: model_id.to_string(),
            field: format!("{what}.name"),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        });
    }
    Ok(())
}

/// Check the prior buffers given for a run: one per prior input, each as
/// long as the current input's.
pub(crate) fn check_priors(
    names: &[String],
    priors: &[&[f32]],
    input_len: usize,
) -> std::result::Result<(), String> {
    if priors.len() != names.len() {
        return Err(format!(
            "{} prior inputs given, the model takes {} ({names:?})",
            priors.len(),
            names.len()
        ));
    }
    if let Some(bad) = priors.iter().find(|p| p.len() != input_len) {
        return Err(format!(
            "prior input of {} values for an input of {input_len}",
            bad.len()
        ));
    }
    Ok(())
}

/// The input tensor names a manifest declares: `input.name`, and
/// `priors.inputs` when the model takes priors.
pub(crate) fn input_names(manifest: &crate::Manifest) -> Vec<&str> {
    let mut names = vec![manifest.input.name.as_str()];
    if let Some(priors) = &manifest.priors {
        names.extend(priors.inputs.iter().map(String::as_str));
    }
    names
}
