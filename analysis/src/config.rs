//! The `[inference]` section of the configuration and its resolve step:
//! raw settings (device, threads, library, batching) turned, once, into
//! the runtime objects every command runs models with ([`Resolved`]).
//! Owned here, beside the hot loop it configures, so that `vigie serve`,
//! `vigie infer` and `vigie validate run` cannot resolve it differently.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vigie_inference::backend::{BackendOptions, ConvAlgoSearch, Device};
use vigie_inference::threads::ThreadPlan;

/// Where the setup script puts the ONNX Runtime library (relative to the
/// working directory), the last place looked for it.
pub const SETUP_ONNXRUNTIME: &str = ".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1";

/// An `[inference]` setting that cannot be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `inference.device` is neither `cpu` nor `cuda:N`.
    #[error("inference.device: {text:?} is not `cpu` or `cuda:N`")]
    Device {
        /// The value given.
        text: String,
    },
}

/// `[inference]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Folder of model packages.
    pub models_dir: PathBuf,
    /// Model used when none is named.
    pub default_model: Option<String>,
    /// ONNX Runtime shared library; unset: `ORT_DYLIB_PATH`, then the
    /// setup script's location.
    pub onnxruntime_library: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// ONNX Runtime intra-op threads per worker; 0 = derived from the
    /// machine: every allowed CPU up to 4, beyond that all but those of the
    /// decode threads.
    pub intra_threads: usize,
    /// Threads per worker that open, decode and preprocess instances ahead
    /// of the model; 0 = derived: 1 on CPU, a quarter of the CPUs (1 to 8)
    /// on a GPU.
    pub decode_threads: usize,
    /// Pin the model thread and intra-op threads to the first allowed CPUs
    /// and the decode threads to the last ones (needs `pipeline.workers =
    /// 1`).
    pub pin_threads: bool,
    /// cuDNN convolution algorithm search of ONNX Runtime's CUDA provider:
    /// `exhaustive` (ONNX Runtime's default), `heuristic` or `default`.
    pub cuda_conv_algo_search: ConvAlgoSearch,
    /// Dynamic batching, by model package id; a model not listed runs one
    /// instance at a time.
    pub batching: BTreeMap<String, BatchConfig>,
}

/// `[inference.batching.<model>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Instances of a job run through the model together, at most.
    pub max_batch: usize,
    /// Milliseconds to wait for more decoded instances before running a
    /// batch that is not full.
    pub max_delay_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 1,
            max_delay_ms: 0,
        }
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            default_model: Some("brain-tumour-vgg16".into()),
            onnxruntime_library: None,
            device: "cpu".into(),
            intra_threads: 0,
            decode_threads: 0,
            pin_threads: false,
            cuda_conv_algo_search: ConvAlgoSearch::default(),
            batching: BTreeMap::new(),
        }
    }
}

impl InferenceConfig {
    /// What is wrong with these settings, one line each, named as in the
    /// configuration file (`inference.…`); empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = parse_device(&self.device) {
            problems.push(e.to_string());
        }
        if let Some(lib) = &self.onnxruntime_library
            && !lib.is_file()
        {
            problems.push(format!(
                "inference.onnxruntime_library: {} does not exist",
                lib.display()
            ));
        }
        for (model, b) in &self.batching {
            if b.max_batch == 0 {
                problems.push(format!(
                    "inference.batching.{model}.max_batch: must be at least 1"
                ));
            }
        }
        problems
    }

    /// Resolve the section, once, into what commands run with (see
    /// [`Resolved`]).
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let threads = self.thread_plan()?;
        Ok(Resolved {
            backend: self.backend_options_for(&threads)?,
            threads,
            registry: vigie_inference::ModelRegistry::new(
                &self.models_dir,
                self.default_model.clone(),
            ),
            batching: self.batching.clone(),
        })
    }

    /// Backend options: device, threads and the library path (this
    /// setting, else `ORT_DYLIB_PATH`, else [`SETUP_ONNXRUNTIME`] when it
    /// exists).
    pub fn backend_options(&self) -> Result<BackendOptions, ConfigError> {
        self.backend_options_for(&self.thread_plan()?)
    }

    fn backend_options_for(&self, plan: &ThreadPlan) -> Result<BackendOptions, ConfigError> {
        let device = parse_device(&self.device)?;
        let library = self
            .onnxruntime_library
            .clone()
            .or_else(|| {
                std::env::var_os(vigie_inference::backend::onnx::DYLIB_ENV).map(PathBuf::from)
            })
            .or_else(|| Some(PathBuf::from(SETUP_ONNXRUNTIME)).filter(|p| p.is_file()));
        Ok(BackendOptions::new(device, plan.intra_threads, library)
            .with_intra_cpus(plan.model_cpus.clone())
            .with_conv_algo_search(self.cuda_conv_algo_search))
    }

    /// Threads of one worker and, with `pin_threads`, their CPUs, from the
    /// settings and the CPUs this process may use.
    pub fn thread_plan(&self) -> Result<ThreadPlan, ConfigError> {
        let device = parse_device(&self.device)?;
        Ok(ThreadPlan::derive(
            &vigie_inference::threads::allowed_cpus(),
            device,
            self.intra_threads,
            self.decode_threads,
            self.pin_threads,
        ))
    }
}

/// Parse `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, ConfigError> {
    match text.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda { device_id: 0 }),
        other => match other.strip_prefix("cuda:").map(str::parse::<i32>) {
            Some(Ok(device_id)) if device_id >= 0 => Ok(Device::Cuda { device_id }),
            _ => Err(ConfigError::Device {
                text: other.to_string(),
            }),
        },
    }
}

/// The configuration resolved, once, into the runtime objects the
/// commands run with: the thread plan (from the CPUs this process may
/// use), the backend options (device, threads, library), the model
/// registry and each model's batching. `vigie serve`'s workers, `vigie
/// infer` and `vigie validate run` all load and run models through one, so
/// that a model runs the same way whichever command runs it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Threads of one worker and, when pinned, their CPUs.
    pub threads: ThreadPlan,
    /// How backends are created.
    pub backend: BackendOptions,
    /// The installed model packages.
    pub registry: vigie_inference::ModelRegistry,
    batching: BTreeMap<String, BatchConfig>,
}

impl Resolved {
    /// Load model package `id` (or the default one) from the registry, on
    /// `backend` (default: its manifest's).
    pub fn load_model(
        &self,
        id: Option<&str>,
        backend: Option<vigie_inference::manifest::BackendKind>,
    ) -> vigie_inference::Result<vigie_inference::Model> {
        self.registry.load(id, backend, &self.backend)
    }

    /// How the hot loop runs `model`: its `[inference.batching.<model>]`
    /// (none: one instance per run), and the plan's decode threads and
    /// CPUs.
    pub fn hot_loop(&self, model: &str) -> crate::HotLoop {
        let batching = self.batching.get(model).cloned().unwrap_or_default();
        crate::HotLoop {
            batching: crate::Batching {
                max_batch: batching.max_batch.max(1),
                max_delay: std::time::Duration::from_millis(batching.max_delay_ms),
            },
            decode_threads: self.threads.decode_threads,
            decode_cpus: self.threads.decode_cpus.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(
            parse_device("cuda:1").unwrap(),
            Device::Cuda { device_id: 1 }
        );
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:-1").is_err());
        let err = InferenceConfig {
            device: "tpu".into(),
            ..InferenceConfig::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("\"tpu\""), "{err}");
    }

    #[test]
    fn section_problems_are_named_as_in_the_configuration_file() {
        assert!(InferenceConfig::default().problems().is_empty());
        let config = InferenceConfig {
            device: "gpu".into(),
            onnxruntime_library: Some("/nonexistent/libonnxruntime.so".into()),
            batching: BTreeMap::from([(
                "m".to_string(),
                BatchConfig {
                    max_batch: 0,
                    max_delay_ms: 0,
                },
            )]),
            ..InferenceConfig::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("inference.device:"));
        assert!(problems[1].starts_with("inference.onnxruntime_library:"));
        assert!(problems[2].starts_with("inference.batching.m.max_batch:"));
    }

    #[test]
    fn thread_settings_and_batching_reach_the_runtime() {
        let config = InferenceConfig {
            intra_threads: 2,
            decode_threads: 3,
            pin_threads: true,
            batching: BTreeMap::from([(
                "m".to_string(),
                BatchConfig {
                    max_batch: 4,
                    max_delay_ms: 7,
                },
            )]),
            ..InferenceConfig::default()
        };
        let resolved = config.resolve().unwrap();
        let plan = &resolved.threads;
        assert_eq!((plan.intra_threads, plan.decode_threads), (2, 3));
        let cpus = vigie_inference::threads::allowed_cpus();
        assert_eq!(plan.model_cpus, vec![cpus[0], cpus[1 % cpus.len()]]);
        assert_eq!(resolved.backend.intra_threads, 2);
        assert_eq!(resolved.backend.intra_cpus, plan.model_cpus);
        let hot_loop = resolved.hot_loop("m");
        assert_eq!(hot_loop.batching.max_batch, 4);
        assert_eq!(hot_loop.batching.max_delay.as_millis(), 7);
        assert_eq!(hot_loop.decode_threads, 3);
        // A model not listed runs one instance at a time.
        assert_eq!(resolved.hot_loop("other").batching.max_batch, 1);
        // Derived: never zero threads, whatever the machine.
        let derived = InferenceConfig::default().thread_plan().unwrap();
        assert!(derived.intra_threads >= 1 && derived.decode_threads >= 1);
        assert!(derived.model_cpus.is_empty() && derived.decode_cpus.is_empty());
    }
}
