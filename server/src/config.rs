//! Configuration: compiled-in defaults, then the TOML file, then
//! `VIGIE__SECTION__KEY` environment variables; validated field by field,
//! then resolved into runtime settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use vigie_inference::backend::{BackendOptions, Device};

/// Where the setup script puts the ONNX Runtime library.
pub const SETUP_ONNXRUNTIME: &str = ".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The appliance.
    pub appliance: ApplianceConfig,
    /// Models and runtimes.
    pub inference: InferenceConfig,
    /// Result objects.
    pub results: ResultsConfig,
}

/// `[results]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Root under which result UIDs are generated (default: the
    /// UUID-derived root 2.25).
    pub uid_root: String,
    /// Also create a Secondary Capture summary image with the result
    /// burned in, for viewers that do not display SR.
    pub summary_image: bool,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            uid_root: vigie_dicom_io::uid::UUID_ROOT.into(),
            summary_image: false,
        }
    }
}

/// `[appliance]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// Name of this appliance in logs and results.
    pub id: String,
    /// Where the appliance keeps its data.
    pub data_dir: PathBuf,
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
    /// Intra-op threads per inference; 0 = number of cores.
    pub intra_threads: usize,
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        Self {
            id: "vigie".into(),
            data_dir: PathBuf::from("vigie-data"),
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
        }
    }
}

impl Config {
    /// Load defaults, then `file`, then the environment, and validate.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("VIGIE__").split("__"));
        let config: Config = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration:\n  {}", messages.join("\n  "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check values that deserialisation cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Err(e) = parse_device(&self.inference.device) {
            problems.push(format!("inference.device: {e}"));
        }
        if self.appliance.id.trim().is_empty() {
            problems.push("appliance.id: must not be empty".into());
        }
        if let Some(lib) = &self.inference.onnxruntime_library
            && !lib.is_file()
        {
            problems.push(format!(
                "inference.onnxruntime_library: {} does not exist",
                lib.display()
            ));
        }
        if let Err(e) = vigie_dicom_io::uid::UidGenerator::new(&self.results.uid_root) {
            problems.push(format!("results.uid_root: {e}"));
        }
        if !problems.is_empty() {
            bail!("invalid configuration:\n  {}", problems.join("\n  "));
        }
        Ok(())
    }

    /// Resolve backend options: device, threads and the library path.
    pub fn backend_options(&self) -> anyhow::Result<BackendOptions> {
        let device = parse_device(&self.inference.device)?;
        let library = self
            .inference
            .onnxruntime_library
            .clone()
            .or_else(|| {
                std::env::var_os(vigie_inference::backend::onnx::DYLIB_ENV).map(PathBuf::from)
            })
            .or_else(|| Some(PathBuf::from(SETUP_ONNXRUNTIME)).filter(|p| p.is_file()));
        let threads = match self.inference.intra_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        Ok(BackendOptions::new(device, threads, library))
    }

    /// Secrets masked; nothing secret yet, kept as the one way to print.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("serialising the configuration")
    }
}

/// Parse `cpu` or `cuda:N`.
pub fn parse_device(text: &str) -> anyhow::Result<Device> {
    match text.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda { device_id: 0 }),
        other => match other.strip_prefix("cuda:").map(str::parse::<i32>) {
            Some(Ok(device_id)) if device_id >= 0 => Ok(Device::Cuda { device_id }),
            _ => bail!("{other:?} is not `cpu` or `cuda:N`"),
        },
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
    }

    #[test]
    fn file_and_environment_layer_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        std::fs::write(
            &file,
            "[inference]\ndevice = \"cuda:0\"\nintra_threads = 3\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.inference.intra_threads, 3);
        assert_eq!(config.inference.device, "cuda:0");
        assert_eq!(config.appliance.id, "vigie");
        std::fs::write(&file, "[inference]\ndevise = \"cpu\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("devise"), "{err}");
    }
}
