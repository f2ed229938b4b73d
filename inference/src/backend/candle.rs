//! candle backend: the ONNX graph evaluated natively in Rust by
//! `candle-onnx`, on candle's CPU kernels or (built with the `cuda` feature)
//! on a CUDA device.
//!
//! The graph's initializers (the weights) are converted to tensors once, at
//! load, on the chosen device, and handed to every evaluation as named
//! values: `candle-onnx` would otherwise rebuild every weight tensor from
//! the protobuf at each run, and always on the CPU. Without the `cuda`
//! feature a CUDA device is refused with [`Error::NotCompiledWith`]; with
//! it, a device that cannot be opened (no driver, no GPU, bad ordinal) is
//! [`Error::ProviderUnavailable`], never a silent CPU fallback.

use std::collections::HashMap;

use candle_core::{Device as CandleDevice, Tensor};
use candle_onnx::onnx::{ModelProto, tensor_shape_proto::dimension::Value as Dim, type_proto};

use super::contract::{
    Backend, BackendOptions, Execution, check_name, check_names, check_priors, check_shape,
    input_names,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::package::ModelPackage;

/// An ONNX model evaluated by candle.
#[derive(Debug)]
pub struct CandleBackend {
    model_id: String,
    /// The graph without its initializers.
    model: ModelProto,
    /// The initializers, converted once, on `device`.
    weights: HashMap<String, Tensor>,
    device: CandleDevice,
    input_name: String,
    /// The prior inputs' names, for a model with `[priors]` (else empty).
    prior_names: Vec<String>,
    output_name: String,
    input_dims: Vec<i64>,
    execution: Execution,
}

fn dims_of(value: &candle_onnx::onnx::ValueInfoProto) -> Vec<i64> {
    let Some(type_proto::Value::TensorType(t)) =
        value.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Vec::new();
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(v)) => v,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default()
}

impl CandleBackend {
    /// Parse the model, verify its contract.
    pub fn load(package: &ModelPackage, options: &BackendOptions) -> Result<Self> {
        let model_id = package.id().to_string();
        let device = open_device(&model_id, options.device)?;
        let load_failed = |reason: String| Error::SessionCreate {
            model_id: model_id.clone(),
            backend: "candle",
            path: package.weights_path().to_path_buf(),
            reason,
        };
        let mut model =
            candle_onnx::read_file(package.weights_path()).map_err(|e| load_failed(reason(e)))?;
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| load_failed("the file has no graph".into()))?;
        let weights = std::mem::take(&mut graph.initializer)
            .iter()
            .map(|t| {
                candle_onnx::eval::get_tensor(t, &t.name)
                    .and_then(|w| w.to_device(&device))
                    .map(|w| (t.name.clone(), w))
                    .map_err(|e| load_failed(format!("initializer {}: {}", t.name, reason(e))))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let graph = &*graph;
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !weights.contains_key(&i.name))
            .collect();
        let manifest = package.manifest();
        check_names(
            &model_id,
            "input",
            &input_names(manifest),
            &inputs.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
        )?;
        let Some(input) = inputs.iter().find(|i| i.name == manifest.input.name) else {
            return Err(load_failed("input missing".into()));
        };
        let prior_names: Vec<String> = manifest
            .priors
            .as_ref()
            .map(|p| p.inputs.clone())
            .unwrap_or_default();
        for name in &prior_names {
            let Some(outlet) = inputs.iter().find(|i| &i.name == name) else {
                return Err(load_failed(format!("prior input {name} missing")));
            };
            // A prior is preprocessed as the current image: same shape.
            check_shape(
                &model_id,
                "priors.inputs",
                &manifest.input.shape,
                &dims_of(outlet),
            )?;
        }
        check_name(
            &model_id,
            "output",
            &manifest.output.name,
            &graph
                .output
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>(),
        )?;
        let input_dims = dims_of(input);
        check_shape(&model_id, "input", &manifest.input.shape, &input_dims)?;
        check_shape(
            &model_id,
            "output",
            &manifest.output.shape,
            &dims_of(&graph.output[0]),
        )?;
        Ok(Self {
            input_name: manifest.input.name.clone(),
            prior_names,
            output_name: manifest.output.name.clone(),
            input_dims,
            execution: Execution {
                backend: "candle",
                provider: match options.device {
                    Device::Cpu => "candle-cpu".into(),
                    Device::Cuda { .. } => "candle-cuda".into(),
                },
                device: options.device.to_string(),
                intra_threads: candle_core::utils::get_num_threads(),
                runtime_version: "candle-core 0.11.1".into(),
            },
            model_id,
            model,
            weights,
            device,
        })
    }
}

/// What went wrong, without the stack trace candle attaches to its errors
/// when `RUST_BACKTRACE` is set (support wants the reason in one line).
fn reason(error: candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => reason(*inner),
        other => other.to_string(),
    }
}

/// The candle device for `device`.
fn open_device(model_id: &str, device: Device) -> Result<CandleDevice> {
    match device {
        Device::Cpu => Ok(CandleDevice::Cpu),
        #[cfg(feature = "cuda")]
        Device::Cuda { device_id } => {
            let ordinal = usize::try_from(device_id).map_err(|_| Error::ProviderUnavailable {
                model_id: model_id.to_string(),
                provider: "candle-cuda".into(),
                reason: format!("CUDA device ordinal {device_id} is negative"),
            })?;
            CandleDevice::new_cuda(ordinal).map_err(|e| Error::ProviderUnavailable {
                model_id: model_id.to_string(),
                provider: "candle-cuda".into(),
                reason: format!("CUDA device {ordinal} cannot be opened: {}", reason(e)),
            })
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda { .. } => {
            let _ = model_id;
            Err(Error::NotCompiledWith {
                backend: "candle",
                feature: "cuda",
                device: device.to_string(),
            })
        }
    }
}

impl CandleBackend {
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
        let mut shape: Vec<usize> = self.input_dims.iter().map(|&d| d.max(0) as usize).collect();
        if let Some(first) = shape.first_mut() {
            *first = batch;
        }
        let tensor =
            Tensor::from_slice(input, shape.clone(), &self.device).map_err(|e| fail(reason(e)))?;
        // Cloning the map clones names and reference-counted tensors, not
        // the weights themselves.
        let mut inputs = self.weights.clone();
        inputs.insert(self.input_name.clone(), tensor);
        for (name, prior) in self.prior_names.iter().zip(priors) {
            let prior = Tensor::from_slice(prior, shape.clone(), &self.device)
                .map_err(|e| fail(reason(e)))?;
            inputs.insert(name.clone(), prior);
        }
        let mut outputs =
            candle_onnx::simple_eval(&self.model, inputs).map_err(|e| fail(reason(e)))?;
        let output = outputs
            .remove(&self.output_name)
            .ok_or_else(|| fail(format!("output {} missing", self.output_name)))?;
        let dims = output.dims().to_vec();
        let data = output
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| fail(reason(e)))?;
        Ok((dims, data))
    }
}

impl Backend for CandleBackend {
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
