//! From an image (after the DICOM grayscale pipeline) to the model's input
//! tensor, as the manifest's [`Preprocess`] describes: clip, resample,
//! channel adaptation, normalisation, layout.
//!
//! Channel replication happens after resampling: both are linear, so the
//! result is the same and the resampling does a third of the work.

use crate::manifest::{Layout, Normalize, Preprocess, TensorSpec};
use crate::resize::ResizePlan;

/// An image: `rows`×`columns`×`channels` samples, interleaved, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// Height.
    pub rows: usize,
    /// Width.
    pub columns: usize,
    /// Samples per pixel (1 or 3).
    pub channels: usize,
    /// Samples.
    pub data: &'a [f32],
}

/// The parameters actually applied, recorded with every result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AppliedPreprocess {
    /// Input image size, rows × columns × channels.
    pub source: [usize; 3],
    /// Tensor size, height × width × channels.
    pub target: [usize; 3],
}

/// Turns images into input tensors; holds the resampling plan and scratch
/// buffers so that repeated calls allocate nothing.
#[derive(Debug)]
pub struct Preprocessor {
    spec: Preprocess,
    layout: Layout,
    height: usize,
    width: usize,
    channels: usize,
    plan: Option<ResizePlan>,
    scratch: Vec<f32>,
    clipped: Vec<f32>,
    resized: Vec<f32>,
}

impl Preprocessor {
    /// A preprocessor for this manifest's input and preprocessing.
    /// `input.image_dims()` must be valid (the manifest validation checks it).
    pub fn new(spec: &Preprocess, input: &TensorSpec) -> Option<Self> {
        let (height, width, channels) = input.image_dims()?;
        Some(Self {
            spec: spec.clone(),
            layout: input.layout,
            height,
            width,
            channels,
            plan: None,
            scratch: Vec::new(),
            clipped: Vec::new(),
            resized: Vec::new(),
        })
    }

    /// Number of `f32` in one image's tensor.
    pub fn tensor_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Write the tensor of `image` into `out` (length [`Self::tensor_len`]).
    pub fn run_into(
        &mut self,
        image: &Image<'_>,
        out: &mut [f32],
    ) -> Result<AppliedPreprocess, String> {
        let c_in = image.channels;
        if c_in != 1 && c_in != 3 {
            return Err(format!("{c_in} samples per pixel; 1 or 3 are supported"));
        }
        if image.data.len() != image.rows * image.columns * c_in {
            return Err(format!(
                "image has {} samples, {}x{}x{c_in} expected",
                image.data.len(),
                image.rows,
                image.columns
            ));
        }
        if out.len() != self.tensor_len() {
            return Err(format!(
                "output buffer of {} for a tensor of {}",
                out.len(),
                self.tensor_len()
            ));
        }
        let source: &[f32] = match self.spec.clip {
            Some([lo, hi]) => {
                self.clipped.clear();
                self.clipped
                    .extend(image.data.iter().map(|v| v.clamp(lo, hi)));
                &self.clipped
            }
            None => image.data,
        };
        let resized: &[f32] = match &self.spec.resize {
            Some(r) => {
                let stale = self
                    .plan
                    .as_ref()
                    .is_none_or(|p| p.input_size() != (image.rows, image.columns));
                if stale {
                    self.plan = Some(ResizePlan::new(
                        image.rows,
                        image.columns,
                        self.height,
                        self.width,
                        r.filter,
                    ));
                }
                self.resized.resize(self.height * self.width * c_in, 0.0);
                if let Some(plan) = &self.plan {
                    plan.run(source, c_in, &mut self.scratch, &mut self.resized);
                }
                &self.resized
            }
            None => {
                if (image.rows, image.columns) != (self.height, self.width) {
                    return Err(format!(
                        "image is {}x{}, the model takes {}x{} and the manifest has no resize",
                        image.rows, image.columns, self.height, self.width
                    ));
                }
                source
            }
        };
        write_tensor(
            resized,
            c_in,
            self.channels,
            self.layout,
            self.height * self.width,
            &self.spec.normalize,
            out,
        );
        Ok(AppliedPreprocess {
            source: [image.rows, image.columns, c_in],
            target: [self.height, self.width, self.channels],
        })
    }
}

/// Channel adaptation, normalisation and layout in one pass.
fn write_tensor(
    src: &[f32],
    c_in: usize,
    c_out: usize,
    layout: Layout,
    pixels: usize,
    n: &Normalize,
    out: &mut [f32],
) {
    let coef: Vec<(f32, f32)> = (0..c_out)
        .map(|c| {
            let mean = n.mean.get(c).copied().unwrap_or(0.0);
            let std = n.std.get(c).copied().unwrap_or(1.0);
            // (x * scale + offset - mean) / std  ==  x * a + b
            (n.scale / std, (n.offset - mean) / std)
        })
        .collect();
    let grey = |rgb: &[f32]| 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
    // Each case is its own loop over slices, without an index or a branch
    // per value, so that the compiler vectorises it; every value is still
    // `sample * a + b`.
    match layout {
        Layout::Nhwc => {
            let pixels_out = out[..pixels * c_out].chunks_exact_mut(c_out);
            match (c_in, c_out) {
                (1, _) => {
                    for (o, s) in pixels_out.zip(&src[..pixels]) {
                        for (v, (a, b)) in o.iter_mut().zip(&coef) {
                            *v = s * a + b;
                        }
                    }
                }
                (3, 1) => {
                    let (a, b) = coef[0];
                    for (o, rgb) in pixels_out.zip(src.chunks_exact(3)) {
                        o[0] = grey(rgb) * a + b;
                    }
                }
                _ => {
                    for (o, s) in pixels_out.zip(src.chunks_exact(c_in)) {
                        for ((v, x), (a, b)) in o.iter_mut().zip(s).zip(&coef) {
                            *v = x * a + b;
                        }
                    }
                }
            }
        }
        Layout::Nchw => {
            for (c, (a, b)) in coef.iter().enumerate() {
                let plane = &mut out[c * pixels..(c + 1) * pixels];
                match (c_in, c_out) {
                    (1, _) => {
                        for (o, s) in plane.iter_mut().zip(&src[..pixels]) {
                            *o = s * a + b;
                        }
                    }
                    (3, 1) => {
                        for (o, rgb) in plane.iter_mut().zip(src.chunks_exact(3)) {
                            *o = grey(rgb) * a + b;
                        }
                    }
                    _ => {
                        for (o, s) in plane.iter_mut().zip(src.chunks_exact(c_in)) {
                            *o = s[c] * a + b;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{DType, Filter, Resize, Voi};

    fn spec(
        layout: Layout,
        shape: Vec<i64>,
        normalize: Normalize,
        resize: Option<Resize>,
    ) -> (Preprocess, TensorSpec) {
        (
            Preprocess {
                modality_lut: true,
                voi: Voi::None,
                clip: None,
                resize,
                normalize,
            },
            TensorSpec {
                name: "x".into(),
                dtype: DType::Float32,
                shape,
                layout,
            },
        )
    }

    #[test]
    fn gray_is_replicated_and_normalised_in_both_layouts() {
        let data = [0.0f32, 0.5, 1.0, 0.25];
        let image = Image {
            rows: 2,
            columns: 2,
            channels: 1,
            data: &data,
        };
        let norm = Normalize {
            scale: 2.0,
            offset: 0.0,
            mean: vec![1.0, 0.0, 0.0],
            std: vec![1.0, 1.0, 2.0],
        };
        let (p, t) = spec(Layout::Nchw, vec![1, 3, 2, 2], norm.clone(), None);
        let mut pre = Preprocessor::new(&p, &t).expect("valid spec");
        let mut out = vec![0f32; pre.tensor_len()];
        pre.run_into(&image, &mut out).expect("runs");
        assert_eq!(
            out,
            vec![
                -1.0, 0.0, 1.0, -0.5, 0.0, 1.0, 2.0, 0.5, 0.0, 0.5, 1.0, 0.25
            ]
        );
        let (p, t) = spec(Layout::Nhwc, vec![1, 2, 2, 3], norm, None);
        let mut pre = Preprocessor::new(&p, &t).expect("valid spec");
        let mut out = vec![0f32; pre.tensor_len()];
        pre.run_into(&image, &mut out).expect("runs");
        assert_eq!(&out[..6], &[-1.0, 0.0, 0.0, 0.0, 1.0, 0.5]);
    }

    #[test]
    fn wrong_size_without_resize_is_an_error() {
        let (p, t) = spec(Layout::Nhwc, vec![-1, 4, 4, 1], Normalize::default(), None);
        let mut pre = Preprocessor::new(&p, &t).expect("valid spec");
        let data = vec![0f32; 9];
        let mut out = vec![0f32; 16];
        let err = pre
            .run_into(
                &Image {
                    rows: 3,
                    columns: 3,
                    channels: 1,
                    data: &data,
                },
                &mut out,
            )
            .unwrap_err();
        assert!(err.contains("no resize"), "{err}");
    }

    #[test]
    fn resize_plan_is_rebuilt_when_the_input_size_changes() {
        let resize = Some(Resize {
            width: 2,
            height: 2,
            filter: Filter::Bilinear,
        });
        let (p, t) = spec(Layout::Nhwc, vec![1, 2, 2, 1], Normalize::default(), resize);
        let mut pre = Preprocessor::new(&p, &t).expect("valid spec");
        let mut out = vec![0f32; 4];
        pre.run_into(
            &Image {
                rows: 4,
                columns: 4,
                channels: 1,
                data: &[1.0; 16],
            },
            &mut out,
        )
        .expect("runs");
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-6));
        pre.run_into(
            &Image {
                rows: 3,
                columns: 5,
                channels: 1,
                data: &[2.0; 15],
            },
            &mut out,
        )
        .expect("runs");
        assert!(out.iter().all(|v| (v - 2.0).abs() < 1e-6));
    }
}
