//! The one analysis path: DICOM instance → decoded pixels (Modality LUT,
//! VOI, MONOCHROME1 as the manifest asks) → model → result.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use vigie_dicom_io::{
    DicomFile, InstanceHeader, PixelArray, PixelOptions, VoiSelection, WindowFunction,
};
use vigie_inference::manifest::{self, Preprocess};
use vigie_inference::{Image, Model, ModelResult, Prepared, Preparer};

use crate::error::{Error, Result};

/// The DICOM decoding options a manifest's preprocessing implies.
pub fn pixel_options(pre: &Preprocess) -> PixelOptions {
    let voi = match &pre.voi {
        manifest::Voi::None => VoiSelection::None,
        manifest::Voi::File => VoiSelection::FromFile,
        manifest::Voi::MinMax => VoiSelection::MinMax,
        manifest::Voi::Window {
            center,
            width,
            function,
        } => VoiSelection::Window {
            center: *center,
            width: *width,
            function: match function {
                manifest::WindowFunction::Linear => WindowFunction::Linear,
                manifest::WindowFunction::LinearExact => WindowFunction::LinearExact,
                manifest::WindowFunction::Sigmoid => WindowFunction::Sigmoid,
            },
        },
    };
    let mut options = PixelOptions::with_voi(voi);
    options.modality_lut = pre.modality_lut;
    options
}

/// The result of analysing one instance (one result per frame).
#[derive(Debug, Clone, Serialize)]
pub struct InstanceAnalysis {
    /// File analysed.
    pub path: PathBuf,
    /// Its header.
    #[serde(skip)]
    pub header: InstanceHeader,
    /// Milliseconds spent decoding pixel data.
    pub decode_ms: f64,
    /// SHA-256 (hex) of the decoded pixel array the model was given (after
    /// the Modality LUT and VOI of the package's preprocessing; `f32`
    /// little endian, `[frame][row][column][sample]`): which pixels exactly
    /// produced the result.
    pub pixels_sha256: String,
    /// Summary statistics of those pixels (input drift).
    pub intensity: crate::population::IntensityStats,
    /// One result per frame.
    pub results: Vec<ModelResult>,
}

/// Open a file and analyse it.
pub fn analyse_path(model: &mut Model, path: &Path) -> Result<InstanceAnalysis> {
    let file = DicomFile::open(path)?;
    analyse(model, &file)
}

/// An instance's pixels decoded and preprocessed as the model's package
/// asks, and their hash: everything before the model, so that it can run on
/// other threads while the model works on previous instances.
#[derive(Debug)]
pub struct Decoded {
    /// One input tensor per frame.
    pub frames: Vec<Prepared>,
    /// Milliseconds spent decoding (preprocessing is timed per frame).
    pub decode_ms: f64,
    /// SHA-256 of the decoded pixels (see
    /// [`InstanceAnalysis::pixels_sha256`]).
    pub pixels_sha256: String,
    /// Their summary statistics.
    pub intensity: crate::population::IntensityStats,
}

/// Pixels decoded for the model, with what is recorded of them.
struct DecodedPixels {
    pixels: PixelArray,
    decode_ms: f64,
    sha256: String,
    intensity: crate::population::IntensityStats,
}

/// Check that `manifest`'s model applies to `file`, then decode its pixels,
/// hash them and take their summary statistics.
fn decode_pixels(manifest: &manifest::Manifest, file: &DicomFile) -> Result<DecodedPixels> {
    let header = file.header();
    if !manifest.applies_to.matches(
        header.modality.as_deref(),
        header.body_part_examined.as_deref(),
        &header.sop_class_uid,
    ) {
        return Err(Error::NotApplicable {
            path: file.path().to_path_buf(),
            sop_instance_uid: header.sop_instance_uid.clone(),
            model_id: manifest.model.id.clone(),
            reason: format!(
                "modality {:?}, body part {:?}, SOP class {} are outside the model's scope",
                header.modality.as_deref().unwrap_or("-"),
                header.body_part_examined.as_deref().unwrap_or("-"),
                header.sop_class_uid
            ),
        });
    }
    let options = pixel_options(&manifest.preprocess);
    let started = Instant::now();
    let pixels = file.decode(&options)?;
    let decode_ms = started.elapsed().as_secs_f64() * 1000.0;
    let sha256 = hash_samples(&pixels.data);
    let intensity = crate::population::IntensityStats::of(&pixels.data);
    Ok(DecodedPixels {
        pixels,
        decode_ms,
        sha256,
        intensity,
    })
}

/// The frames of decoded pixels as images.
fn frames_of(pixels: &PixelArray) -> impl Iterator<Item = Image<'_>> {
    (0..pixels.frames)
        .filter_map(|f| pixels.frame(f))
        .map(|data| Image {
            rows: pixels.rows,
            columns: pixels.columns,
            channels: pixels.samples_per_pixel,
            data,
        })
}

/// Check that `manifest`'s model applies to `file`, decode its pixels, hash
/// them and preprocess every frame with `preparer`, taking tensors from
/// `pool` before allocating. Needs no model: this is the part that runs
/// beside it.
pub fn decode(
    manifest: &manifest::Manifest,
    preparer: &mut Preparer,
    pool: &TensorPool,
    file: &DicomFile,
) -> Result<Decoded> {
    let DecodedPixels {
        pixels,
        decode_ms,
        sha256: pixels_sha256,
        intensity,
    } = decode_pixels(manifest, file)?;
    let mut frames = Vec::with_capacity(pixels.frames);
    for image in frames_of(&pixels) {
        match preparer.prepare(&image, pool.take()) {
            Ok(prepared) => frames.push(prepared),
            Err(e) => {
                pool.give_back(frames);
                return Err(e.into());
            }
        }
    }
    Ok(Decoded {
        frames,
        decode_ms,
        pixels_sha256,
        intensity,
    })
}

/// Input tensors given back after the model ran, for the decode threads to
/// fill again: the hot loop allocates tensors only until as many are in
/// flight as it allows, then reuses them.
#[derive(Debug, Default)]
pub struct TensorPool(std::sync::Mutex<Vec<Vec<f32>>>);

impl TensorPool {
    /// A tensor to fill (empty if the pool has none).
    pub fn take(&self) -> Vec<f32> {
        self.0
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default()
    }

    /// Give back the tensors of prepared frames.
    pub fn give_back(&self, frames: impl IntoIterator<Item = Prepared>) {
        if let Ok(mut free) = self.0.lock() {
            free.extend(frames.into_iter().map(|p| p.tensor));
        }
    }
}

/// Run the model on every frame of every decoded instance, in batches of
/// the model's size (all frames at once when its batch dimension is free),
/// and give each instance its results.
pub fn infer(model: &mut Model, items: &[(&DicomFile, &Decoded)]) -> Result<Vec<InstanceAnalysis>> {
    let frames: Vec<&Prepared> = items.iter().flat_map(|(_, d)| &d.frames).collect();
    let mut results = model.run_prepared(&frames)?.into_iter();
    Ok(items
        .iter()
        .map(|(file, d)| InstanceAnalysis {
            path: file.path().to_path_buf(),
            header: file.header().clone(),
            decode_ms: d.decode_ms,
            pixels_sha256: d.pixels_sha256.clone(),
            intensity: d.intensity,
            results: results.by_ref().take(d.frames.len()).collect(),
        })
        .collect())
}

/// How many instances go through the model together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// At most this many instances per model run (1: no batching).
    pub max_batch: usize,
    /// How long to wait for more decoded instances before running a batch
    /// that is not full.
    pub max_delay: std::time::Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch: 1,
            max_delay: std::time::Duration::ZERO,
        }
    }
}

/// How the hot loop runs: batching, and how many threads decode and
/// preprocess ahead of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotLoop {
    /// Dynamic batching.
    pub batching: Batching,
    /// Threads that open, decode and preprocess instances (at least 1).
    pub decode_threads: usize,
    /// Logical CPUs to pin the decode threads to, one per thread in turn
    /// (empty: not pinned).
    pub decode_cpus: Vec<usize>,
}

impl Default for HotLoop {
    fn default() -> Self {
        Self {
            batching: Batching::default(),
            decode_threads: 1,
            decode_cpus: Vec::new(),
        }
    }
}

/// One instance through the model.
#[derive(Debug)]
pub struct Streamed {
    /// The opened file.
    pub file: DicomFile,
    /// Its analysis.
    pub analysis: InstanceAnalysis,
    /// How many instances shared its model run.
    pub batch: usize,
}

type Ready = (usize, Result<(DicomFile, Decoded)>);

/// The hot loop: analyse `paths` with `model`, `options.decode_threads`
/// threads opening, decoding and preprocessing ahead of the model (thread
/// `w` takes instances `w`, `w + n`, `w + 2n`…, each at most a few
/// instances ahead, so memory stays bounded), up to
/// `options.batching.max_batch` instances per model run. `each` gets every
/// instance's index and outcome in the order of `paths`, as soon as it is
/// known; an error it returns stops the loop and is returned.
pub fn analyse_stream<E>(
    model: &mut Model,
    paths: &[PathBuf],
    options: &HotLoop,
    mut each: impl FnMut(usize, Result<Streamed>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    if paths.is_empty() {
        return Ok(());
    }
    let manifest = model.package().manifest().clone();
    let batching = options.batching;
    let max_batch = batching.max_batch.max(1);
    let threads = options.decode_threads.clamp(1, paths.len());
    let mut preparers = Vec::with_capacity(threads);
    for _ in 0..threads {
        match model.preparer() {
            Ok(p) => preparers.push(p),
            Err(e) => {
                let reason = e.to_string();
                for (index, path) in paths.iter().enumerate() {
                    let failed = Error::BatchFailed {
                        path: path.clone(),
                        sop_instance_uid: String::new(),
                        reason: reason.clone(),
                    };
                    each(index, Err(failed))?;
                }
                return Ok(());
            }
        }
    }
    // Each thread keeps this many instances ready beyond the one it works
    // on: together, about two batches ahead of the model.
    let ahead = (2 * max_batch).div_ceil(threads).max(1);
    let pool = TensorPool::default();
    std::thread::scope(|scope| {
        let mut queues = Vec::with_capacity(threads);
        for (w, mut preparer) in preparers.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Ready>(ahead);
            queues.push(rx);
            let (manifest, pool) = (&manifest, &pool);
            let cpu = (!options.decode_cpus.is_empty())
                .then(|| options.decode_cpus[w % options.decode_cpus.len()]);
            scope.spawn(move || {
                if let Some(cpu) = cpu {
                    vigie_inference::threads::pin_current_thread(cpu);
                }
                for index in (w..paths.len()).step_by(threads) {
                    let decoded = DicomFile::open(&paths[index])
                        .map_err(Error::from)
                        .and_then(|file| {
                            let decoded = decode(manifest, &mut preparer, pool, &file)?;
                            Ok((file, decoded))
                        });
                    if tx.send((index, decoded)).is_err() {
                        return;
                    }
                }
            });
        }
        // Instance `i` comes from queue `i % threads`: reading the queues
        // in turn gives the instances in order.
        let next_of = |i: usize| &queues[i % threads];
        let mut next = 0;
        while next < paths.len() {
            let Ok(first) = next_of(next).recv() else {
                break;
            };
            let mut batch = vec![first];
            let deadline = Instant::now() + batching.max_delay;
            while batch.len() < max_batch && next + batch.len() < paths.len() {
                let queue = next_of(next + batch.len());
                let item = match queue.try_recv() {
                    Ok(item) => Some(item),
                    Err(_) if batching.max_delay.is_zero() => None,
                    Err(_) => queue
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok(),
                };
                match item {
                    Some(item) => batch.push(item),
                    None => break,
                }
            }
            next += batch.len();
            let items: Vec<(&DicomFile, &Decoded)> = batch
                .iter()
                .filter_map(|(_, d)| d.as_ref().ok().map(|(f, d)| (f, d)))
                .collect();
            let n = items.len();
            let ran = if items.is_empty() {
                Ok(Vec::new())
            } else {
                infer(model, &items)
            };
            let (mut analyses, reason) = match ran {
                Ok(analyses) => (analyses.into_iter(), None),
                Err(e) => (Vec::new().into_iter(), Some(e.to_string())),
            };
            // In the order of `paths`: failures to decode among the results.
            for (index, decoded) in batch {
                let outcome = decoded.and_then(|(file, decoded)| {
                    pool.give_back(decoded.frames);
                    match (&reason, analyses.next()) {
                        (None, Some(analysis)) => Ok(Streamed {
                            file,
                            analysis,
                            batch: n,
                        }),
                        (reason, _) => Err(Error::BatchFailed {
                            path: file.path().to_path_buf(),
                            sop_instance_uid: file.header().sop_instance_uid.clone(),
                            reason: reason
                                .clone()
                                .unwrap_or_else(|| "the model returned no result".into()),
                        }),
                    }
                });
                each(index, outcome)?;
            }
        }
        Ok(())
    })
}

/// Analyse an opened instance: check the model applies, decode, run every
/// frame through the model.
pub fn analyse(model: &mut Model, file: &DicomFile) -> Result<InstanceAnalysis> {
    let decoded = decode_pixels(model.package().manifest(), file)?;
    let images: Vec<Image<'_>> = frames_of(&decoded.pixels).collect();
    let results = model.run(&images)?;
    Ok(InstanceAnalysis {
        path: file.path().to_path_buf(),
        header: file.header().clone(),
        decode_ms: decoded.decode_ms,
        pixels_sha256: decoded.sha256,
        intensity: decoded.intensity,
        results,
    })
}

/// SHA-256 of samples as `f32` little endian.
pub fn hash_samples(samples: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    if cfg!(target_endian = "little") {
        // In memory they already are: hash them in place.
        hasher.update(bytemuck::cast_slice::<f32, u8>(samples));
    } else {
        for v in samples {
            hasher.update(v.to_le_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn the_pixel_hash_is_that_of_the_little_endian_samples() {
        let samples: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            super::hash_samples(&samples),
            hex::encode(Sha256::digest(&bytes))
        );
        assert_ne!(
            super::hash_samples(&samples[1..]),
            super::hash_samples(&samples)
        );
    }
}
