//! A loaded model: package + backend + preprocessor. [`Model::run`] is the
//! one code path from images to findings that `vigie infer`, `serve` and
//! `validate` share.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{self, Backend, BackendOptions, Execution};
use crate::error::{Error, Result};
use crate::manifest::BackendKind;
use crate::package::ModelPackage;
use crate::postprocess::{self, Finding};
pub use crate::preprocess::Image;
use crate::preprocess::{AppliedPreprocess, Preprocessor};

/// Milliseconds spent in each stage for one image (batch stages are
/// divided evenly among the batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimings {
    /// Preprocessing.
    pub preprocess_ms: f64,
    /// The backend's run.
    pub inference_ms: f64,
    /// Postprocessing.
    pub postprocess_ms: f64,
}

/// The result for one image, with everything traceability needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelResult {
    /// Model id.
    pub model_id: String,
    /// Model version.
    pub model_version: String,
    /// SHA-256 of the weights.
    pub model_sha256: String,
    /// What ran.
    pub execution: Execution,
    /// Preprocessing sizes.
    pub preprocess: AppliedPreprocess,
    /// The raw output tensor for this image.
    pub raw_output: Vec<f32>,
    /// The interpretation.
    pub finding: Finding,
    /// Timings.
    pub timings: StageTimings,
}

/// One image already turned into the model's input tensor, on whatever
/// thread made it (see [`Preparer`]), waiting for [`Model::run_prepared`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The tensor of one image (length: the model's per-image input size).
    pub tensor: Vec<f32>,
    /// Preprocessing sizes, recorded with the result.
    pub applied: AppliedPreprocess,
    /// Milliseconds spent preprocessing.
    pub preprocess_ms: f64,
}

/// Preprocessing for one model, apart from the model: each decode thread of
/// the hot loop holds one and prepares tensors while the model runs.
#[derive(Debug)]
pub struct Preparer {
    model_id: String,
    preprocessor: Preprocessor,
}

impl Preparer {
    /// Number of `f32` in one image's tensor.
    pub fn tensor_len(&self) -> usize {
        self.preprocessor.tensor_len()
    }

    /// Preprocess `image` into `tensor` (reused: give back a tensor a
    /// previous [`Prepared`] held and nothing is allocated).
    pub fn prepare(&mut self, image: &Image<'_>, mut tensor: Vec<f32>) -> Result<Prepared> {
        let started = Instant::now();
        tensor.resize(self.preprocessor.tensor_len(), 0.0);
        let applied = self
            .preprocessor
            .run_into(image, &mut tensor)
            .map_err(|reason| Error::Preprocess {
                model_id: self.model_id.clone(),
                reason,
            })?;
        Ok(Prepared {
            tensor,
            applied,
            preprocess_ms: ms(started),
        })
    }
}

/// What one prior input of a model with `[priors]` is given, set for each
/// job with [`Model::set_priors`].
#[derive(Debug, Clone, PartialEq)]
pub enum PriorInput {
    /// No prior found for it: the input is filled as the manifest's
    /// `priors.missing_input` says.
    Missing,
    /// The prior image's tensor, preprocessed as the current image (one
    /// image: given with every image of a batch).
    Tensor(Vec<f32>),
}

/// A model ready to run.
#[derive(Debug)]
pub struct Model {
    package: ModelPackage,
    backend: Box<dyn Backend>,
    preprocessor: Preprocessor,
    input: Vec<f32>,
    /// One per prior input; `None`: not set (a model with `[priors]`
    /// then refuses to run).
    priors: Option<Vec<PriorInput>>,
    prior_batches: Vec<Vec<f32>>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Model {
    /// Load `package` on its manifest's backend.
    pub fn load(package: ModelPackage, options: &BackendOptions) -> Result<Self> {
        let kind = package.manifest().weights.backend;
        Self::load_with_backend(package, kind, options)
    }

    /// Load `package` on a chosen backend.
    pub fn load_with_backend(
        package: ModelPackage,
        kind: BackendKind,
        options: &BackendOptions,
    ) -> Result<Self> {
        let manifest = package.manifest();
        let preprocessor =
            Preprocessor::new(&manifest.preprocess, &manifest.input).ok_or_else(|| {
                Error::ManifestInvalid {
                    model_id: package.id().to_string(),
                    field: "input.shape".into(),
                    reason: "not an image tensor".into(),
                }
            })?;
        let backend = backend::load(&package, kind, options)?;
        Ok(Self {
            package,
            backend,
            preprocessor,
            input: Vec::new(),
            priors: None,
            prior_batches: Vec::new(),
        })
    }

    /// Set what the prior inputs hold from now on (for a model with
    /// `[priors]`): one entry per input of `priors.inputs`, in order, or
    /// `None` to unset them (the model then refuses to run). A tensor must
    /// be one image's input tensor (see [`Preparer::prepare`]).
    pub fn set_priors(&mut self, priors: Option<Vec<PriorInput>>) -> Result<()> {
        let refuse = |reason: String| Error::Preprocess {
            model_id: self.package.id().to_string(),
            reason,
        };
        if let Some(priors) = &priors {
            let inputs = self
                .package
                .manifest()
                .priors
                .as_ref()
                .map_or(0, |p| p.inputs.len());
            if priors.len() != inputs {
                return Err(refuse(format!(
                    "{} priors given, the model takes {inputs}",
                    priors.len()
                )));
            }
            let per = self.preprocessor.tensor_len();
            for prior in priors {
                if let PriorInput::Tensor(t) = prior
                    && t.len() != per
                {
                    return Err(refuse(format!(
                        "prior tensor of {} values, the model takes {per}",
                        t.len()
                    )));
                }
            }
        }
        self.priors = priors;
        Ok(())
    }

    /// Whether the model takes a prior input (its manifest has `[priors]`).
    pub fn takes_prior(&self) -> bool {
        self.package.manifest().priors.is_some()
    }

    /// The package.
    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// What runs this model.
    pub fn execution(&self) -> &Execution {
        self.backend.execution()
    }

    /// Run the model on `images` (one batch, or several if the model's
    /// batch size is fixed and smaller).
    pub fn run(&mut self, images: &[Image<'_>]) -> Result<Vec<ModelResult>> {
        let max = self.backend.max_batch().unwrap_or(images.len().max(1));
        let mut results = Vec::with_capacity(images.len());
        for chunk in images.chunks(max.max(1)) {
            results.extend(self.run_batch(chunk)?);
        }
        Ok(results)
    }

    fn run_batch(&mut self, images: &[Image<'_>]) -> Result<Vec<ModelResult>> {
        let n = images.len();
        let per = self.preprocessor.tensor_len();
        let started = Instant::now();
        let mut input = std::mem::take(&mut self.input);
        input.resize(per * n, 0.0);
        let mut applied = Vec::with_capacity(n);
        for (image, slot) in images.iter().zip(input.chunks_exact_mut(per)) {
            match self.preprocessor.run_into(image, slot) {
                Ok(a) => applied.push(a),
                Err(reason) => {
                    self.input = input;
                    return Err(Error::Preprocess {
                        model_id: self.package.id().to_string(),
                        reason,
                    });
                }
            }
        }
        let preprocess_ms = vec![ms(started) / n as f64; n];
        let results = self.infer(&input, applied, &preprocess_ms);
        self.input = input;
        results
    }

    /// A [`Preparer`] for this model: its preprocessing, to run on another
    /// thread.
    pub fn preparer(&self) -> Result<Preparer> {
        let manifest = self.package.manifest();
        let preprocessor =
            Preprocessor::new(&manifest.preprocess, &manifest.input).ok_or_else(|| {
                Error::ManifestInvalid {
                    model_id: self.package.id().to_string(),
                    field: "input.shape".into(),
                    reason: "not an image tensor".into(),
                }
            })?;
        Ok(Preparer {
            model_id: self.package.id().to_string(),
            preprocessor,
        })
    }

    /// Run the model on tensors prepared by a [`Preparer`] (one batch, or
    /// several if the model's batch size is fixed and smaller). A single
    /// tensor goes to the runtime as it is; several are laid end to end in
    /// the model's own input buffer, allocated once.
    pub fn run_prepared(&mut self, items: &[&Prepared]) -> Result<Vec<ModelResult>> {
        let per = self.preprocessor.tensor_len();
        if let Some(bad) = items.iter().find(|p| p.tensor.len() != per) {
            return Err(Error::Preprocess {
                model_id: self.package.id().to_string(),
                reason: format!(
                    "prepared tensor of {} values, the model takes {per}",
                    bad.tensor.len()
                ),
            });
        }
        let max = self.backend.max_batch().unwrap_or(items.len().max(1));
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(max.max(1)) {
            let applied = chunk.iter().map(|p| p.applied.clone()).collect();
            let preprocess_ms: Vec<f64> = chunk.iter().map(|p| p.preprocess_ms).collect();
            if let [one] = chunk {
                results.extend(self.infer(&one.tensor, applied, &preprocess_ms)?);
            } else {
                let mut input = std::mem::take(&mut self.input);
                input.clear();
                for p in chunk {
                    input.extend_from_slice(&p.tensor);
                }
                let ran = self.infer(&input, applied, &preprocess_ms);
                self.input = input;
                results.extend(ran?);
            }
        }
        Ok(results)
    }

    /// The backend and postprocessing on a batch of ready tensors laid end
    /// to end in `input`.
    fn infer(
        &mut self,
        input: &[f32],
        applied: Vec<AppliedPreprocess>,
        preprocess_ms: &[f64],
    ) -> Result<Vec<ModelResult>> {
        let model_id = self.package.id().to_string();
        let n = applied.len();
        let started = Instant::now();
        let (dims, output) = match &self.package.manifest().priors {
            None => self.backend.run(input, n)?,
            Some(manifest_priors) => {
                let Some(priors) = &self.priors else {
                    return Err(Error::Inference {
                        model_id,
                        reason: "the model compares with a prior study and none was given".into(),
                    });
                };
                let per = input.len() / n.max(1);
                // Each prior input: its one tensor repeated for every image
                // of the batch, in buffers reused from run to run.
                let mut batches = std::mem::take(&mut self.prior_batches);
                batches.resize_with(priors.len(), Vec::new);
                for (batch, prior) in batches.iter_mut().zip(priors) {
                    batch.clear();
                    match prior {
                        PriorInput::Tensor(t) => {
                            for _ in 0..n {
                                batch.extend_from_slice(t);
                            }
                        }
                        PriorInput::Missing => match manifest_priors.missing_input {
                            crate::manifest::MissingInput::Zeros => batch.resize(per * n, 0.0),
                            crate::manifest::MissingInput::Current => {
                                batch.extend_from_slice(input)
                            }
                        },
                    }
                }
                let views: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
                let ran = self.backend.run_with_priors(input, &views, n);
                drop(views);
                self.prior_batches = batches;
                ran?
            }
        };
        let inference_ms = ms(started);
        let started = Instant::now();
        let manifest = self.package.manifest();
        let per_out = output.len().checked_div(n).unwrap_or(0);
        if per_out * n != output.len() || dims.first().copied() != Some(n) {
            return Err(Error::Postprocess {
                model_id,
                output: manifest.output.name.clone(),
                reason: format!("output shape {dims:?} for a batch of {n}"),
            });
        }
        let item_dims = &dims[1..];
        let mut findings = Vec::with_capacity(n);
        for raw in output.chunks_exact(per_out) {
            findings.push(
                postprocess::interpret(&manifest.output.kind, raw, item_dims).map_err(
                    |reason| Error::Postprocess {
                        model_id: model_id.clone(),
                        output: manifest.output.name.clone(),
                        reason,
                    },
                )?,
            );
        }
        let postprocess_ms = ms(started);
        let share = |t: f64| t / n as f64;
        Ok(findings
            .into_iter()
            .zip(output.chunks_exact(per_out))
            .zip(applied)
            .zip(preprocess_ms)
            .map(
                |(((finding, raw), preprocess), &preprocess_ms)| ModelResult {
                    model_id: model_id.clone(),
                    model_version: self.package.version().to_string(),
                    model_sha256: self.package.sha256().to_string(),
                    execution: self.backend.execution().clone(),
                    preprocess,
                    raw_output: raw.to_vec(),
                    finding,
                    timings: StageTimings {
                        preprocess_ms,
                        inference_ms: share(inference_ms),
                        postprocess_ms: share(postprocess_ms),
                    },
                },
            )
            .collect())
    }

    /// Preprocess one image into a tensor without running the model (for
    /// cross-checks against other runtimes and for benchmarks).
    pub fn preprocess(&mut self, image: &Image<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.preprocessor.tensor_len()];
        self.preprocessor
            .run_into(image, &mut out)
            .map_err(|reason| Error::Preprocess {
                model_id: self.package.id().to_string(),
                reason,
            })?;
        Ok(out)
    }

    /// Run the backend on a ready tensor (batch of one) and return the raw
    /// output.
    pub fn run_tensor(&mut self, tensor: &[f32]) -> Result<Vec<f32>> {
        if self.takes_prior() {
            return Err(Error::Inference {
                model_id: self.package.id().to_string(),
                reason: "the model takes a prior input: run it through Model::run".into(),
            });
        }
        Ok(self.backend.run(tensor, 1)?.1)
    }
}
