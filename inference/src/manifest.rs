//! The model package manifest, `model.toml`.
//!
//! A new model is a new folder with a manifest and its weights, never new
//! code: everything the pipeline needs to know about a model is here.
//! [`Manifest::validate`] checks the manifest on its own; the backend checks
//! it against the model file at load.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identity and intended use.
    pub model: ModelInfo,
    /// Which studies the model applies to.
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// Backend and weights.
    pub weights: Weights,
    /// Input contract (one tensor).
    pub input: TensorSpec,
    /// From image to input tensor.
    pub preprocess: Preprocess,
    /// Output contract and interpretation (one tensor).
    pub output: OutputSpec,
    /// Prior studies the model compares with, given as a second input
    /// (absent: the model takes the current image alone).
    #[serde(default)]
    pub priors: Option<Priors>,
}

/// Which attribute of the current study a prior must share, besides the
/// Patient ID (and its issuer, when both say one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorMatch {
    /// The same Modality (0008,0060): asked of the PACS as Modalities in
    /// Study, checked again on every image retrieved.
    Modality,
    /// The same Body Part Examined (0018,0015), checked on the images
    /// retrieved (case-insensitively; a series level attribute the PACS
    /// cannot be asked at study level).
    BodyPart,
}

/// What happens when no usable prior is found in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingPrior {
    /// The job fails with the reason (the default: a comparison model is
    /// not run on half its input).
    #[default]
    Fail,
    /// The model runs with the prior input filled as `missing_input`
    /// says; the job's notes and records say that no prior was used.
    Run,
}

/// What the prior input holds when the model runs without a prior.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingInput {
    /// Zeros.
    #[default]
    Zeros,
    /// The current image's own tensor.
    Current,
}

/// The prior studies a model needs (`[priors]`), found by C-FIND on the
/// PACS named by the appliance's `[priors]` configuration and retrieved
/// with C-GET. The usable priors, most recent first, are given to the
/// model, each preprocessed as the current image, as the input tensors
/// `inputs` (each of the same shape as `[input]`): at most
/// `inputs.len()` of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Priors {
    /// Names of the model's prior input tensors: the most recent usable
    /// prior goes to the first, the one before it to the second… (1 to 4).
    pub inputs: Vec<String>,
    /// What a prior must share with the current study besides the
    /// patient (empty: any study of the patient).
    #[serde(default)]
    pub same: Vec<PriorMatch>,
    /// Only studies dated at most this many days before the current one
    /// (1 to 36500).
    pub within_days: u32,
    /// At most this many prior studies are retrieved, most recent first,
    /// until every input has one with a usable image (from `inputs.len()`
    /// to 8; default: `inputs.len()`).
    #[serde(default)]
    pub max_studies: Option<usize>,
    /// Longest wait for the query and the retrievals together, in seconds
    /// (1 to 600).
    #[serde(default = "sixty")]
    pub wait_s: u64,
    /// Without a usable prior in time: fail the job, or run.
    #[serde(default)]
    pub on_missing: OnMissingPrior,
    /// The prior input when running without a prior.
    #[serde(default)]
    pub missing_input: MissingInput,
}

fn sixty() -> u64 {
    60
}

impl Priors {
    /// How many prior studies are retrieved at most.
    pub fn studies(&self) -> usize {
        self.max_studies.unwrap_or(self.inputs.len())
    }
}

/// Identity of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Stable identifier (`[a-z0-9-]`), the name routing rules use.
    pub id: String,
    /// Version of this package.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// Intended use, as the technical documentation states it.
    pub intended_use: String,
    /// Regulatory status, shown with every result (e.g. "not a CE-marked
    /// medical device").
    pub regulatory_status: String,
    /// Manufacturer or author of the model.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Licence of the weights.
    #[serde(default)]
    pub license: Option<String>,
}

/// Which studies a model applies to; empty lists match anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    /// Modality (0008,0060) values.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// Body Part Examined (0018,0015) values.
    #[serde(default)]
    pub body_parts: Vec<String>,
    /// SOP Class UIDs.
    #[serde(default)]
    pub sop_classes: Vec<String>,
}

impl AppliesTo {
    /// Whether an instance with these attributes is in scope.
    pub fn matches(
        &self,
        modality: Option<&str>,
        body_part: Option<&str>,
        sop_class: &str,
    ) -> bool {
        let ok = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
        };
        ok(&self.modalities, modality)
            && ok(&self.body_parts, body_part)
            && ok(&self.sop_classes, Some(sop_class))
    }
}

/// Which backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime.
    Onnx,
    /// candle, natively in Rust.
    Candle,
}

/// The weights file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Default backend.
    pub backend: BackendKind,
    /// File name, relative to the package folder.
    pub file: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    Float32,
}

/// Memory layout of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Batch, height, width, channels.
    #[serde(rename = "NHWC")]
    Nhwc,
    /// Batch, channels, height, width.
    #[serde(rename = "NCHW")]
    Nchw,
}

/// The model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the model.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; `-1` for a free (batch) dimension.
    pub shape: Vec<i64>,
    /// Layout.
    pub layout: Layout,
}

impl TensorSpec {
    /// Height, width and channels implied by shape and layout.
    pub fn image_dims(&self) -> Option<(usize, usize, usize)> {
        let dims: Vec<usize> = self
            .shape
            .iter()
            .skip(1)
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?;
        match (self.layout, dims.as_slice()) {
            (Layout::Nhwc, [h, w, c]) => Some((*h, *w, *c)),
            (Layout::Nchw, [c, h, w]) => Some((*h, *w, *c)),
            _ => None,
        }
    }
}

/// The VOI step: how stored values become the intensities the model saw in
/// training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Voi {
    /// Modality values (e.g. Hounsfield units), no window.
    None,
    /// The instance's own VOI LUT or window, min-max when it has none.
    /// Output `[0, 1]`.
    File,
    /// A fixed window. Output `[0, 1]`.
    Window {
        /// Window center.
        center: f64,
        /// Window width.
        width: f64,
        /// `linear` (default), `linear_exact` or `sigmoid`.
        #[serde(default)]
        function: WindowFunction,
    },
    /// Min-max of each image. Output `[0, 1]`.
    MinMax,
}

/// VOI LUT function of a fixed window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowFunction {
    /// LINEAR.
    #[default]
    Linear,
    /// LINEAR_EXACT.
    LinearExact,
    /// SIGMOID.
    Sigmoid,
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Triangle filter, antialiased when shrinking.
    Bilinear,
    /// Cubic convolution (a = -0.5), antialiased when shrinking; the
    /// filter PIL's `Image.resize` uses by default.
    Bicubic,
    /// Lanczos, 3 lobes.
    Lanczos3,
}

/// Resampling to the model's input size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// Output width.
    pub width: usize,
    /// Output height.
    pub height: usize,
    /// Filter.
    pub filter: Filter,
}

/// Final intensity scaling, per channel: `(x * scale + offset - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Multiplier applied first.
    #[serde(default = "one")]
    pub scale: f32,
    /// Offset added after scaling.
    #[serde(default)]
    pub offset: f32,
    /// Per-channel mean subtracted (empty: none).
    #[serde(default)]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by (empty: none).
    #[serde(default)]
    pub std: Vec<f32>,
}

fn one() -> f32 {
    1.0
}

impl Default for Normalize {
    fn default() -> Self {
        Self {
            scale: 1.0,
            offset: 0.0,
            mean: Vec::new(),
            std: Vec::new(),
        }
    }
}

/// From decoded pixels to the input tensor, in this order: Modality LUT,
/// VOI, MONOCHROME1 inversion (DICOM side), then clip, channels, resize,
/// normalise, layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Apply the Modality LUT (rescale). Default true.
    #[serde(default = "yes")]
    pub modality_lut: bool,
    /// VOI step.
    pub voi: Voi,
    /// Clip to `[low, high]` after VOI.
    #[serde(default)]
    pub clip: Option<[f32; 2]>,
    /// Resampling; absent means the image must already have the input size.
    #[serde(default)]
    pub resize: Option<Resize>,
    /// Scaling.
    #[serde(default)]
    pub normalize: Normalize,
}

fn yes() -> bool {
    true
}

/// Activation applied to raw outputs before interpretation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The model already outputs probabilities.
    #[default]
    None,
    /// Softmax over the class axis.
    Softmax,
    /// Independent sigmoid per class.
    Sigmoid,
}

/// How the classification decision is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decision {
    /// The most probable class.
    Argmax,
    /// `positive` when its probability is at least `threshold`, else
    /// `negative`.
    Threshold {
        /// Label whose probability is compared.
        positive: String,
        /// Label reported otherwise.
        negative: String,
        /// Operating point.
        threshold: f32,
    },
}

/// A coded concept for result objects (DICOM Code Sequence item). Labels
/// without one are reported with the private scheme `99VIGIE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptCode {
    /// Code Value (1 to 16 characters).
    pub value: String,
    /// Coding Scheme Designator (`SCT`, `DCM`, …).
    pub scheme: String,
    /// Code Meaning.
    pub meaning: String,
}

/// What the output tensor means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputKind {
    /// One probability per class.
    Classification {
        /// Class labels in output order.
        labels: Vec<String>,
        /// Activation to apply.
        #[serde(default)]
        activation: Activation,
        /// Decision rule.
        decision: Decision,
        /// Code of each label, for the SR.
        #[serde(default)]
        codes: BTreeMap<String, ConceptCode>,
    },
    /// A per-pixel class map (channels are classes, or one channel
    /// thresholded).
    Segmentation {
        /// Label of each class index (0 is background). TOML keys are
        /// strings: `labels = { 1 = "lesion" }`.
        #[serde(deserialize_with = "index_keys")]
        labels: BTreeMap<u32, String>,
        /// Activation to apply.
        #[serde(default)]
        activation: Activation,
        /// For a single-channel output: foreground at or above this.
        #[serde(default)]
        threshold: Option<f32>,
        /// Segmented property category of each label (CID 7150), for the SEG.
        #[serde(default)]
        categories: BTreeMap<String, ConceptCode>,
        /// Segmented property type of each label (CID 7151), for the SEG.
        #[serde(default)]
        types: BTreeMap<String, ConceptCode>,
    },
}

/// Deserialise a map whose keys are class indices written as strings.
fn index_keys<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeMap<u32, String>, D::Error> {
    let raw: BTreeMap<String, String> = BTreeMap::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim().parse::<u32>().map(|k| (k, v)).map_err(|_| {
                serde::de::Error::custom(format!("label key {k:?} is not a class index"))
            })
        })
        .collect()
}

/// The model's output tensor and its meaning. (Unknown fields are refused
/// by [`OutputKind`], which receives every field not named here.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Tensor name in the model.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; `-1` for a free dimension.
    pub shape: Vec<i64>,
    /// Interpretation.
    #[serde(flatten)]
    pub kind: OutputKind,
}

impl Manifest {
    /// Read and validate `model.toml`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ManifestRead {
            path: path.to_path_buf(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| Error::ManifestParse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::ManifestInvalid {
            model_id: self.model.id.clone(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn check_codes(
        &self,
        field: &str,
        labels: &[String],
        codes: &BTreeMap<String, ConceptCode>,
    ) -> Result<()> {
        for (label, code) in codes {
            if !labels.contains(label) {
                return Err(self.invalid(field, format!("{label:?} is not one of the labels")));
            }
            let ok = |s: &str, max: usize| !s.is_empty() && s.chars().count() <= max;
            if !ok(&code.value, 16) || !ok(&code.scheme, 16) || !ok(&code.meaning, 64) {
                return Err(self.invalid(
                    field,
                    format!("code of {label:?}: value and scheme 1-16 characters, meaning 1-64"),
                ));
            }
        }
        Ok(())
    }

    /// Check internal consistency: id syntax, hash syntax, shapes, labels,
    /// preprocessing parameters.
    pub fn validate(&self) -> Result<()> {
        let id = &self.model.id;
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.invalid(
                "model.id",
                "must be non-empty, lowercase letters, digits and '-'",
            ));
        }
        if self.model.version.trim().is_empty() {
            return Err(self.invalid("model.version", "must not be empty"));
        }
        if self.weights.sha256.len() != 64
            || !self
                .weights
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(self.invalid("weights.sha256", "must be 64 lowercase hex digits"));
        }
        if self.weights.file.contains("..") || Path::new(&self.weights.file).is_absolute() {
            return Err(self.invalid("weights.file", "must be a file inside the package folder"));
        }
        if self.input.shape.iter().skip(1).any(|&d| d <= 0)
            || self.input.shape.first().is_some_and(|&d| d == 0 || d < -1)
        {
            return Err(self.invalid("input.shape", "only the batch dimension may be free (-1)"));
        }
        let (h, w, c) = self.input.image_dims().ok_or_else(|| {
            self.invalid(
                "input.shape",
                "must be 4-D [batch, ...] matching input.layout",
            )
        })?;
        if c != 1 && c != 3 {
            return Err(self.invalid("input.shape", format!("{c} channels; 1 or 3 are supported")));
        }
        if let Some(r) = &self.preprocess.resize
            && (r.width != w || r.height != h)
        {
            return Err(self.invalid(
                "preprocess.resize",
                format!(
                    "{}x{} does not produce the input's {w}x{h}",
                    r.width, r.height
                ),
            ));
        }
        let n = &self.preprocess.normalize;
        for (field, list) in [
            ("preprocess.normalize.mean", &n.mean),
            ("preprocess.normalize.std", &n.std),
        ] {
            if !list.is_empty() && list.len() != c {
                return Err(self.invalid(field, format!("{} values for {c} channels", list.len())));
            }
        }
        if n.std.contains(&0.0) {
            return Err(self.invalid("preprocess.normalize.std", "must not contain 0"));
        }
        if let Voi::Window { width, .. } = self.preprocess.voi
            && width <= 0.0
        {
            return Err(self.invalid("preprocess.voi.width", "must be positive"));
        }
        if let Some([lo, hi]) = self.preprocess.clip
            && lo >= hi
        {
            return Err(self.invalid("preprocess.clip", "low must be below high"));
        }
        if let Some(priors) = &self.priors {
            let mut names: Vec<&str> = priors.inputs.iter().map(String::as_str).collect();
            names.sort_unstable();
            names.dedup();
            if !(1..=4).contains(&priors.inputs.len())
                || names.len() != priors.inputs.len()
                || names.iter().any(|n| n.is_empty() || *n == self.input.name)
            {
                return Err(self.invalid(
                    "priors.inputs",
                    "1 to 4 distinct input tensors, none of them input.name",
                ));
            }
            if !(1..=36_500).contains(&priors.within_days) {
                return Err(self.invalid("priors.within_days", "must be within 1 to 36500"));
            }
            if !(priors.inputs.len()..=8).contains(&priors.studies()) {
                return Err(self.invalid(
                    "priors.max_studies",
                    "must be within the number of inputs to 8",
                ));
            }
            if !(1..=600).contains(&priors.wait_s) {
                return Err(self.invalid("priors.wait_s", "must be within 1 to 600"));
            }
        }
        match &self.output.kind {
            OutputKind::Classification {
                labels,
                decision,
                codes,
                ..
            } => {
                self.check_codes("output.codes", labels, codes)?;
                if labels.is_empty() {
                    return Err(self.invalid("output.labels", "must not be empty"));
                }
                if let Some(&last) = self.output.shape.last()
                    && last > 0
                    && last as usize != labels.len()
                {
                    return Err(self.invalid(
                        "output.labels",
                        format!("{} labels for an output of {last} classes", labels.len()),
                    ));
                }
                if let Decision::Threshold {
                    positive,
                    negative,
                    threshold,
                } = decision
                {
                    for (f, l) in [
                        ("output.decision.positive", positive),
                        ("output.decision.negative", negative),
                    ] {
                        if !labels.contains(l) {
                            return Err(self.invalid(f, format!("{l:?} is not one of the labels")));
                        }
                    }
                    if !(0.0..=1.0).contains(threshold) {
                        return Err(
                            self.invalid("output.decision.threshold", "must be within [0, 1]")
                        );
                    }
                }
            }
            OutputKind::Segmentation {
                labels,
                threshold,
                categories,
                types,
                ..
            } => {
                let names: Vec<String> = labels.values().cloned().collect();
                self.check_codes("output.categories", &names, categories)?;
                self.check_codes("output.types", &names, types)?;
                if labels.is_empty() {
                    return Err(self.invalid("output.labels", "must not be empty"));
                }
                if let Some(t) = threshold
                    && !(0.0..=1.0).contains(t)
                {
                    return Err(self.invalid("output.threshold", "must be within [0, 1]"));
                }
            }
        }
        Ok(())
    }
}
