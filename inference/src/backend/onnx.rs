//! ONNX Runtime backend, loaded dynamically from `libonnxruntime.so`.
//!
//! The library is bound once per process. A GPU provider is registered with
//! `error_on_failure`, so a CUDA request that cannot be honoured is an error,
//! never a silent fall-back to the CPU.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep;
use ort::session::Session;
use ort::value::TensorRef;

use super::contract::{
    Backend, BackendOptions, ConvAlgoSearch, Execution, check_name, check_names, check_priors,
    check_shape, input_names,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::package::ModelPackage;

/// Environment variable naming the library, as the `ort` crate reads it.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

static RUNTIME: OnceLock<Mutex<Option<(PathBuf, ort::environment::Environment)>>> = OnceLock::new();

/// Bind the process to the ONNX Runtime library at `path` (first call wins;
/// later calls with another path are refused).
pub fn init_runtime(path: Option<&Path>) -> Result<ort::environment::Environment> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(DYLIB_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| Error::RuntimeUnavailable {
                path: PathBuf::from("(not configured)"),
                reason: format!("neither inference.onnxruntime_library nor {DYLIB_ENV} is set"),
            })?,
    };
    let cell = RUNTIME.get_or_init(|| Mutex::new(None));
    let mut bound = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((existing, environment)) = bound.as_ref() {
        if existing != &path {
            return Err(Error::RuntimeUnavailable {
                path,
                reason: format!("this process already uses {}", existing.display()),
            });
        }
        return Ok(environment.clone());
    }
    if !path.is_file() {
        return Err(Error::RuntimeUnavailable {
            path,
            reason: "no such file".into(),
        });
    }
    let builder = ort::init_from(&path).map_err(|e| Error::RuntimeUnavailable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let environment =
        builder
            .with_name("vigie")
            .build()
            .map_err(|e| Error::RuntimeUnavailable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
    *bound = Some((path, environment.clone()));
    Ok(environment)
}

/// A session on ONNX Runtime.
#[derive(Debug)]
pub struct OnnxBackend {
    model_id: String,
    session: Session,
    input_name: String,
    /// The prior inputs' names, for a model with `[priors]` (else empty).
    prior_names: Vec<String>,
    output_name: String,
    input_dims: Vec<i64>,
    execution: Execution,
}

fn tensor_dims(outlet: &ort::value::Outlet) -> Option<Vec<i64>> {
    outlet.dtype().tensor_shape().map(|s| s.to_vec())
}

impl OnnxBackend {
    /// Create a session for the package, verify its contract.
    pub fn load(package: &ModelPackage, options: &BackendOptions) -> Result<Self> {
        let environment = init_runtime(options.onnxruntime_library.as_deref())?;
        let model_id = package.id().to_string();
        let session_err = |reason: String| Error::SessionCreate {
            model_id: model_id.clone(),
            backend: "onnxruntime",
            path: package.weights_path().to_path_buf(),
            reason,
        };
        let mut builder = Session::builder(&environment).map_err(|e| session_err(e.to_string()))?;
        if options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_threads)
                .map_err(|e| session_err(e.to_string()))?;
            // One CPU per intra-op thread (ONNX Runtime requires exactly
            // that many), reusing the list if it is shorter.
            let cpus: Vec<usize> = (0..options.intra_threads)
                .filter_map(|i| {
                    let n = options.intra_cpus.len();
                    (n > 0).then(|| options.intra_cpus[i % n])
                })
                .collect();
            if let Some(affinities) = intra_op_affinities(&cpus) {
                builder = builder
                    .with_config_entry("session.intra_op_thread_affinities", affinities)
                    .map_err(|e| session_err(e.to_string()))?;
            }
        }
        let provider = match options.device {
            Device::Cpu => {
                builder = builder
                    .with_execution_providers([ep::CPU::default().build().error_on_failure()])
                    .map_err(|e| session_err(e.to_string()))?;
                "CPUExecutionProvider"
            }
            Device::Cuda { device_id } => {
                builder = builder
                    .with_execution_providers([ep::CUDA::default()
                        .with_device_id(device_id)
                        .with_conv_algorithm_search(match options.conv_algo_search {
                            ConvAlgoSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                            ConvAlgoSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                            ConvAlgoSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                        })
                        .build()
                        .error_on_failure()])
                    .map_err(|e| Error::ProviderUnavailable {
                        model_id: model_id.clone(),
                        provider: "CUDAExecutionProvider".into(),
                        reason: e.to_string(),
                    })?;
                "CUDAExecutionProvider"
            }
        };
        let session = builder
            .commit_from_file(package.weights_path())
            .map_err(|e| session_err(e.to_string()))?;
        let manifest = package.manifest();
        let names = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|o| o.name().to_string())
                .collect::<Vec<_>>()
        };
        check_names(
            &model_id,
            "input",
            &input_names(manifest),
            &names(session.inputs()),
        )?;
        check_name(
            &model_id,
            "output",
            &manifest.output.name,
            &names(session.outputs()),
        )?;
        let Some(input) = session
            .inputs()
            .iter()
            .find(|i| i.name() == manifest.input.name)
        else {
            return Err(session_err("input missing".into()));
        };
        let output = &session.outputs()[0];
        let prior_names: Vec<String> = manifest
            .priors
            .as_ref()
            .map(|p| p.inputs.clone())
            .unwrap_or_default();
        // Every name is among the model's inputs (checked above).
        let priors: Vec<&ort::value::Outlet> = session
            .inputs()
            .iter()
            .filter(|i| prior_names.iter().any(|n| n == i.name()))
            .collect();
        let mut outlets = vec![("input", input), ("output", output)];
        outlets.extend(priors.iter().map(|outlet| ("priors.inputs", *outlet)));
        for (what, outlet) in outlets {
            if outlet.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
                return Err(Error::ContractMismatch {
                    model_id: model_id.clone(),
                    field: format!("{what}.dtype"),
                    expected: "float32".into(),
                    found: format!("{:?}", outlet.dtype()),
                });
            }
        }
        let input_dims = tensor_dims(input).unwrap_or_default();
        check_shape(&model_id, "input", &manifest.input.shape, &input_dims)?;
        for outlet in &priors {
            // A prior is preprocessed as the current image: same shape.
            check_shape(
                &model_id,
                "priors.inputs",
                &manifest.input.shape,
                &tensor_dims(outlet).unwrap_or_default(),
            )?;
        }
        check_shape(
            &model_id,
            "output",
            &manifest.output.shape,
            &tensor_dims(output).unwrap_or_default(),
        )?;
        Ok(Self {
            input_name: manifest.input.name.clone(),
            prior_names,
            output_name: manifest.output.name.clone(),
            input_dims,
            execution: Execution {
                backend: "onnxruntime",
                provider: provider.to_string(),
                device: options.device.to_string(),
                intra_threads: options.intra_threads,
                runtime_version: runtime_version(),
            },
            model_id,
            session,
        })
    }
}

/// Version of the bound ONNX Runtime library.
fn runtime_version() -> String {
    let info = ort::info();
    info.split(',')
        .find_map(|part| part.trim().strip_prefix("git-branch=rel-"))
        .map(str::to_string)
        .unwrap_or_else(|| info.chars().take(60).collect())
}

impl OnnxBackend {
    fn run_inputs(
        &mut self,
        input: &[f32],
        priors: &[&[f32]],
        batch: usize,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let fail = |reason: String| Error::Inference {
            model_id: self.model_id.clone(),
            reason,
        };
        check_priors(&self.prior_names, priors, input.len()).map_err(fail)?;
        let mut shape = self.input_dims.clone();
        if let Some(first) = shape.first_mut() {
            *first = batch as i64;
        }
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(1 + priors.len());
        for (name, data) in std::iter::once((&self.input_name, input))
            .chain(self.prior_names.iter().zip(priors.iter().copied()))
        {
            let tensor = TensorRef::from_array_view((shape.clone(), data))
                .map_err(|e| fail(e.to_string()))?;
            inputs.push((name.as_str(), tensor.into()));
        }
        let outputs = self.session.run(inputs).map_err(|e| fail(e.to_string()))?;
        let value = outputs
            .get(self.output_name.as_str())
            .ok_or_else(|| fail(format!("output {} missing", self.output_name)))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        let dims = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((dims, data.to_vec()))
    }
}

impl Backend for OnnxBackend {
    fn run(&mut self, input: &[f32], batch: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        self.run_inputs(input, &[], batch)
    }

    fn run_with_priors(
        &mut self,
        input: &[f32],
        priors: &[&[f32]],
        batch: usize,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        self.run_inputs(input, priors, batch)
    }

    fn execution(&self) -> &Execution {
        &self.execution
    }

    fn max_batch(&self) -> Option<usize> {
        match self.input_dims.first() {
            Some(&d) if d > 0 => Some(d as usize),
            _ => None,
        }
    }
}

/// ONNX Runtime's `session.intra_op_thread_affinities` for intra-op threads
/// on `cpus` (the calling thread's first, which the runtime leaves alone):
/// one entry per other thread, 1-based logical processor ids,
/// `;`-separated. `None` when there is no other thread to pin.
pub fn intra_op_affinities(cpus: &[usize]) -> Option<String> {
    if cpus.len() < 2 {
        return None;
    }
    let ids: Vec<String> = cpus[1..].iter().map(|cpu| (cpu + 1).to_string()).collect();
    Some(ids.join(";"))
}
