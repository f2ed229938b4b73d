//! The one analysis path: DICOM instance → decoded pixels (Modality LUT,
//! VOI, MONOCHROME1 as the manifest asks) → model → result.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use vigie_dicom_io::{
    DicomFile, InstanceHeader, PixelArray, PixelOptions, VoiSelection, WindowFunction,
};
use vigie_inference::manifest::{self, Preprocess};
use vigie_inference::{Image, Model, ModelResult};

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
    /// One result per frame.
    pub results: Vec<ModelResult>,
}

/// Open a file and analyse it.
pub fn analyse_path(model: &mut Model, path: &Path) -> Result<InstanceAnalysis> {
    let file = DicomFile::open(path)?;
    analyse(model, &file)
}

/// An instance's pixels decoded as the model's package asks, and their
/// hash: everything before the model, so that it can run on another thread
/// while the model works on the previous instance.
#[derive(Debug)]
pub struct Decoded {
    /// The decoded pixels.
    pub pixels: PixelArray,
    /// Milliseconds spent decoding.
    pub decode_ms: f64,
    /// SHA-256 of `pixels` (see [`InstanceAnalysis::pixels_sha256`]).
    pub pixels_sha256: String,
}

/// Check that `manifest`'s model applies to `file`, then decode its pixels
/// and hash them. Needs no model: this is the part that runs beside it.
pub fn decode(manifest: &manifest::Manifest, file: &DicomFile) -> Result<Decoded> {
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
    let pixels_sha256 = hash_samples(&pixels.data);
    Ok(Decoded {
        pixels,
        decode_ms,
        pixels_sha256,
    })
}

/// Run the model on every frame of every decoded instance, in batches of
/// the model's size (all frames at once when its batch dimension is free),
/// and give each instance its results.
pub fn infer(model: &mut Model, items: &[(&DicomFile, &Decoded)]) -> Result<Vec<InstanceAnalysis>> {
    fn frames_of(d: &Decoded) -> Vec<Image<'_>> {
        (0..d.pixels.frames)
            .filter_map(|f| d.pixels.frame(f))
            .map(|data| Image {
                rows: d.pixels.rows,
                columns: d.pixels.columns,
                channels: d.pixels.samples_per_pixel,
                data,
            })
            .collect()
    }
    let images: Vec<Image<'_>> = items.iter().flat_map(|(_, d)| frames_of(d)).collect();
    let mut results = model.run(&images)?.into_iter();
    Ok(items
        .iter()
        .map(|(file, d)| InstanceAnalysis {
            path: file.path().to_path_buf(),
            header: file.header().clone(),
            decode_ms: d.decode_ms,
            pixels_sha256: d.pixels_sha256.clone(),
            results: results.by_ref().take(frames_of(d).len()).collect(),
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

/// The hot loop: analyse `paths` in order with `model`, decoding on a
/// thread of its own ahead of the model (at most two batches ahead, so
/// memory stays bounded) and running up to `batching.max_batch` decoded
/// instances per model run. `each` gets every instance's index and outcome
/// as soon as it is known; an error it returns stops the loop and is
/// returned.
pub fn analyse_stream<E>(
    model: &mut Model,
    paths: &[PathBuf],
    batching: Batching,
    mut each: impl FnMut(usize, Result<Streamed>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let manifest = model.package().manifest().clone();
    let max_batch = batching.max_batch.max(1);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_batch * 2);
        let manifest = &manifest;
        scope.spawn(move || {
            for (index, path) in paths.iter().enumerate() {
                let decoded = DicomFile::open(path).map_err(Error::from).and_then(|file| {
                    let decoded = decode(manifest, &file)?;
                    Ok((file, decoded))
                });
                if tx.send((index, decoded)).is_err() {
                    return;
                }
            }
        });
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + batching.max_delay;
            while batch.len() < max_batch {
                let next = match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(_) if batching.max_delay.is_zero() => None,
                    Err(_) => rx
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok(),
                };
                match next {
                    Some(item) => batch.push(item),
                    None => break,
                }
            }
            let mut ready = Vec::new();
            for (index, decoded) in batch {
                match decoded {
                    Ok(pair) => ready.push((index, pair)),
                    Err(e) => each(index, Err(e))?,
                }
            }
            if ready.is_empty() {
                continue;
            }
            let items: Vec<(&DicomFile, &Decoded)> =
                ready.iter().map(|(_, (f, d))| (f, d)).collect();
            let n = ready.len();
            match infer(model, &items) {
                Ok(analyses) => {
                    for ((index, (file, _)), analysis) in ready.into_iter().zip(analyses) {
                        each(
                            index,
                            Ok(Streamed {
                                file,
                                analysis,
                                batch: n,
                            }),
                        )?;
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    for (index, (file, _)) in ready {
                        let failed = Error::BatchFailed {
                            path: file.path().to_path_buf(),
                            sop_instance_uid: file.header().sop_instance_uid.clone(),
                            reason: reason.clone(),
                        };
                        each(index, Err(failed))?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// Analyse an opened instance: check the model applies, decode, run every
/// frame through the model.
pub fn analyse(model: &mut Model, file: &DicomFile) -> Result<InstanceAnalysis> {
    let decoded = decode(model.package().manifest(), file)?;
    let mut analysed = infer(model, &[(file, &decoded)])?;
    analysed.pop().ok_or_else(|| Error::NotApplicable {
        path: file.path().to_path_buf(),
        sop_instance_uid: file.header().sop_instance_uid.clone(),
        model_id: model.package().id().to_string(),
        reason: "the model returned no result".into(),
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
