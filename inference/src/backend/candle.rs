//! candle backend: the ONNX graph evaluated natively in Rust by
//! `candle-onnx`, on candle's CPU kernels.
//!
//! This build has no CUDA support in candle: a CUDA device is refused with
//! [`Error::NotCompiledWith`].

use std::collections::HashMap;

use candle_core::{Device as CandleDevice, Tensor};
use candle_onnx::onnx::{ModelProto, tensor_shape_proto::dimension::Value as Dim, type_proto};

use super::{Backend, BackendOptions, Device, Execution, check_name, check_shape};
use crate::error::{Error, Result};
use crate::package::ModelPackage;

/// An ONNX model evaluated by candle.
#[derive(Debug)]
pub struct CandleBackend {
    model_id: String,
    model: ModelProto,
    input_name: String,
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
        if let Device::Cuda { .. } = options.device {
            return Err(Error::NotCompiledWith {
                backend: "candle",
                feature: "cuda",
                device: options.device.to_string(),
            });
        }
        let model =
            candle_onnx::read_file(package.weights_path()).map_err(|e| Error::SessionCreate {
                model_id: model_id.clone(),
                backend: "candle",
                path: package.weights_path().to_path_buf(),
                reason: e.to_string(),
            })?;
        let graph = model.graph.as_ref().ok_or_else(|| Error::SessionCreate {
            model_id: model_id.clone(),
            backend: "candle",
            path: package.weights_path().to_path_buf(),
            reason: "the file has no graph".into(),
        })?;
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        let manifest = package.manifest();
        check_name(
            &model_id,
            "input",
            &manifest.input.name,
            &inputs.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
        )?;
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
        let input_dims = dims_of(inputs[0]);
        check_shape(&model_id, "input", &manifest.input.shape, &input_dims)?;
        check_shape(
            &model_id,
            "output",
            &manifest.output.shape,
            &dims_of(&graph.output[0]),
        )?;
        Ok(Self {
            input_name: manifest.input.name.clone(),
            output_name: manifest.output.name.clone(),
            input_dims,
            execution: Execution {
                backend: "candle",
                provider: "candle-cpu".into(),
                device: Device::Cpu.to_string(),
                intra_threads: candle_core::utils::get_num_threads(),
                runtime_version: "candle-core 0.11.1".into(),
            },
            model_id,
            model,
        })
    }
}

impl Backend for CandleBackend {
    fn run(&mut self, input: &[f32], batch: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let fail = |reason: String| Error::Inference {
            model_id: self.model_id.clone(),
            reason,
        };
        let mut shape: Vec<usize> = self.input_dims.iter().map(|&d| d.max(0) as usize).collect();
        if let Some(first) = shape.first_mut() {
            *first = batch;
        }
        let tensor = Tensor::from_slice(input, shape, &CandleDevice::Cpu)
            .map_err(|e| fail(e.to_string()))?;
        let inputs = HashMap::from([(self.input_name.clone(), tensor)]);
        let mut outputs =
            candle_onnx::simple_eval(&self.model, inputs).map_err(|e| fail(e.to_string()))?;
        let output = outputs
            .remove(&self.output_name)
            .ok_or_else(|| fail(format!("output {} missing", self.output_name)))?;
        let dims = output.dims().to_vec();
        let data = output
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| fail(e.to_string()))?;
        Ok((dims, data))
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
