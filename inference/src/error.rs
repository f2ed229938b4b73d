//! The crate's error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading or running a model. Each variant
/// names the model (and file) so that support can act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest file cannot be read.
    #[error("cannot read model manifest {path}: {source}")]
    ManifestRead {
        /// Manifest path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML for the schema.
    #[error("model manifest {path} is malformed: {reason}")]
    ManifestParse {
        /// Manifest path.
        path: PathBuf,
        /// Parser message, with the line.
        reason: String,
    },
    /// A manifest field has a value that cannot work.
    #[error("model {model_id}: manifest field `{field}` is invalid: {reason}")]
    ManifestInvalid {
        /// Model id.
        model_id: String,
        /// Dotted field name.
        field: String,
        /// Why.
        reason: String,
    },
    /// The weights file is missing or unreadable.
    #[error("model {model_id}: cannot read weights {path}: {source}")]
    WeightsRead {
        /// Model id.
        model_id: String,
        /// Weights path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The weights' SHA-256 differs from the manifest's.
    #[error(
        "model {model_id}: weights {path} have SHA-256 {actual}, the manifest requires {expected}; refusing to load"
    )]
    HashMismatch {
        /// Model id.
        model_id: String,
        /// Weights path.
        path: PathBuf,
        /// Manifest value.
        expected: String,
        /// Computed value.
        actual: String,
    },
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error(
        "ONNX Runtime library {path} cannot be loaded: {reason}. Run scripts/setup.sh, or set inference.onnxruntime_library / ORT_DYLIB_PATH to libonnxruntime.so.1.31.1"
    )]
    RuntimeUnavailable {
        /// Library path tried.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The backend could not create a session for the model.
    #[error("model {model_id}: {backend} cannot load {path}: {reason}")]
    SessionCreate {
        /// Model id.
        model_id: String,
        /// Backend name.
        backend: &'static str,
        /// Weights path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The loaded model's inputs/outputs disagree with the manifest.
    #[error(
        "model {model_id}: {field} in the manifest is {expected}, the model file has {found}; refusing to load"
    )]
    ContractMismatch {
        /// Model id.
        model_id: String,
        /// Which field.
        field: String,
        /// Manifest value.
        expected: String,
        /// Model value.
        found: String,
    },
    /// A requested execution provider could not be registered.
    #[error("model {model_id}: execution provider {provider} is unavailable: {reason}")]
    ProviderUnavailable {
        /// Model id.
        model_id: String,
        /// Provider name.
        provider: String,
        /// Why.
        reason: String,
    },
    /// The model registry cannot give the package asked for.
    #[error("model packages in {root}: {reason}")]
    Registry {
        /// The packages' folder.
        root: PathBuf,
        /// Why.
        #[source]
        reason: crate::registry::RegistryProblem,
    },
    /// The feature needed for a device was not compiled into this build.
    #[error(
        "{backend} was built without {feature} support; rebuild with the `{feature}` feature to use {device}"
    )]
    NotCompiledWith {
        /// Backend.
        backend: &'static str,
        /// Cargo feature.
        feature: &'static str,
        /// Device requested.
        device: String,
    },
    /// The image cannot be turned into the model's input.
    #[error("model {model_id}: preprocessing failed: {reason}")]
    Preprocess {
        /// Model id.
        model_id: String,
        /// Why.
        reason: String,
    },
    /// The backend failed while running.
    #[error("model {model_id}: inference failed: {reason}")]
    Inference {
        /// Model id.
        model_id: String,
        /// Backend message.
        reason: String,
    },
    /// The model's output cannot be interpreted as the manifest says.
    #[error("model {model_id}: output {output} cannot be interpreted: {reason}")]
    Postprocess {
        /// Model id.
        model_id: String,
        /// Output name.
        output: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A stable, machine-readable code for the kind of failure (`snake_case`;
    /// one per variant, never renamed).
    pub fn code(&self) -> &'static str {
        match self {
            Error::ManifestRead { .. } => "manifest_unreadable",
            Error::ManifestParse { .. } => "manifest_malformed",
            Error::ManifestInvalid { .. } => "manifest_invalid",
            Error::WeightsRead { .. } => "weights_unreadable",
            Error::HashMismatch { .. } => "weights_hash_mismatch",
            Error::RuntimeUnavailable { .. } => "runtime_unavailable",
            Error::SessionCreate { .. } => "session_not_created",
            Error::ContractMismatch { .. } => "contract_mismatch",
            Error::ProviderUnavailable { .. } => "provider_unavailable",
            Error::Registry { .. } => "registry_invalid",
            Error::NotCompiledWith { .. } => "not_compiled_with",
            Error::Preprocess { .. } => "preprocessing_failed",
            Error::Inference { .. } => "inference_failed",
            Error::Postprocess { .. } => "postprocessing_failed",
        }
    }
}
