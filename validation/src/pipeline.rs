//! The one analysis path: DICOM instance → decoded pixels (Modality LUT,
//! VOI, MONOCHROME1 as the manifest asks) → model → result.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use vigie_dicom_io::{DicomFile, InstanceHeader, PixelOptions, VoiSelection, WindowFunction};
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

/// Analyse an opened instance: check the model applies, decode, run every
/// frame through the model.
pub fn analyse(model: &mut Model, file: &DicomFile) -> Result<InstanceAnalysis> {
    let header = file.header();
    let manifest = model.package().manifest();
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
    let images: Vec<Image<'_>> = (0..pixels.frames)
        .filter_map(|f| pixels.frame(f))
        .map(|data| Image {
            rows: pixels.rows,
            columns: pixels.columns,
            channels: pixels.samples_per_pixel,
            data,
        })
        .collect();
    let results = model.run(&images)?;
    Ok(InstanceAnalysis {
        path: file.path().to_path_buf(),
        header: header.clone(),
        decode_ms,
        pixels_sha256,
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
