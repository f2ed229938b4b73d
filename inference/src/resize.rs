//! Separable resampling with antialiasing, following the convolution scheme
//! of PIL's `Image.resize` (filter support widened by the scale factor when
//! shrinking, pixel centres at +0.5), so that models trained on PIL-resized
//! images see the same input. Works on `f32`, interleaved channels.

use crate::manifest::Filter;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

fn kernel(filter: Filter) -> (f64, fn(f64) -> f64) {
    match filter {
        Filter::Nearest => (0.5, |_| 1.0),
        Filter::Bilinear => (1.0, |x| (1.0 - x.abs()).max(0.0)),
        Filter::Bicubic => (2.0, bicubic),
        Filter::Lanczos3 => (3.0, |x| {
            if x.abs() < 3.0 {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }),
    }
}

/// Weights of one axis: for each output index, the first input index and
/// `taps` weights.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    starts: Vec<usize>,
    lens: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

impl Axis {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        if filter == Filter::Nearest {
            let starts = (0..out_size)
                .map(|i| (((i as f64 + 0.5) * scale) as usize).min(in_size - 1))
                .collect();
            return Self {
                starts,
                lens: vec![1; out_size],
                taps: 1,
                weights: vec![1.0; out_size],
            };
        }
        let (support, f) = kernel(filter);
        let filterscale = scale.max(1.0);
        let support = support * filterscale;
        let taps = support.ceil() as usize * 2 + 1;
        let mut starts = Vec::with_capacity(out_size);
        let mut lens = Vec::with_capacity(out_size);
        let mut weights = vec![0f32; out_size * taps];
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor()).max(0.0) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(in_size);
            let n = xmax.saturating_sub(xmin).min(taps);
            let mut w: Vec<f64> = (0..n)
                .map(|k| f((k as f64 + xmin as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            for (k, v) in w.iter().enumerate() {
                weights[i * taps + k] = *v as f32;
            }
            starts.push(xmin);
            lens.push(n);
        }
        Self {
            starts,
            lens,
            taps,
            weights,
        }
    }
}

/// Rows of a grey image that the horizontal pass takes at once: 16 lanes
/// fill four SSE or two AVX registers, enough independent sums to hide the
/// latency of each addition.
const BLOCK_ROWS: usize = 16;

/// A precomputed resampling from one size to another, reusable for every
/// image of that size.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizePlan {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    horizontal: Axis,
    vertical: Axis,
}

impl ResizePlan {
    /// Plan a resampling of `in_h`×`in_w` to `out_h`×`out_w` (all non-zero).
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize, filter: Filter) -> Self {
        Self {
            in_h,
            in_w,
            out_h,
            out_w,
            horizontal: Axis::new(in_w, out_w, filter),
            vertical: Axis::new(in_h, out_h, filter),
        }
    }

    /// Input size this plan was made for.
    pub fn input_size(&self) -> (usize, usize) {
        (self.in_h, self.in_w)
    }

    /// Resample `input` (`in_h`×`in_w`×`channels`) into `output`
    /// (`out_h`×`out_w`×`channels`); `scratch` is reused between calls.
    pub fn run(&self, input: &[f32], channels: usize, scratch: &mut Vec<f32>, output: &mut [f32]) {
        let (in_h, in_w, out_h, out_w) = (self.in_h, self.in_w, self.out_h, self.out_w);
        debug_assert_eq!(input.len(), in_h * in_w * channels);
        debug_assert_eq!(output.len(), out_h * out_w * channels);
        // Horizontal pass first, as PIL does.
        scratch.clear();
        if channels == 1 {
            scratch.resize(in_h * out_w + in_w * BLOCK_ROWS, 0.0);
            let (pass, block) = scratch.split_at_mut(in_h * out_w);
            self.horizontal_grey(input, block, pass);
        } else {
            scratch.resize(in_h * out_w * channels, 0.0);
            self.horizontal_interleaved(input, channels, scratch);
        }
        let v = &self.vertical;
        let stride = out_w * channels;
        for y in 0..out_h {
            let w = &v.weights[y * v.taps..y * v.taps + v.lens[y]];
            let start = v.starts[y];
            let out_row = &mut output[y * stride..(y + 1) * stride];
            out_row.fill(0.0);
            for (k, wk) in w.iter().enumerate() {
                let src = &scratch[(start + k) * stride..(start + k + 1) * stride];
                for (o, s) in out_row.iter_mut().zip(src) {
                    *o += s * wk;
                }
            }
        }
    }

    /// The horizontal pass of a grey image, [`BLOCK_ROWS`] rows at a time:
    /// the block is transposed into `block` so that each tap multiplies a
    /// contiguous run of one column's rows, which the compiler turns into
    /// vector arithmetic. Each output still sums its taps in order from
    /// zero, as [`Self::horizontal_interleaved`] does, so the values are
    /// the same to the bit.
    fn horizontal_grey(&self, input: &[f32], block: &mut [f32], pass: &mut [f32]) {
        let (in_h, in_w, out_w) = (self.in_h, self.in_w, self.out_w);
        let h = &self.horizontal;
        let (block, _) = block.as_chunks_mut::<BLOCK_ROWS>();
        for y0 in (0..in_h).step_by(BLOCK_ROWS) {
            let n = BLOCK_ROWS.min(in_h - y0);
            for r in 0..n {
                let row = &input[(y0 + r) * in_w..(y0 + r + 1) * in_w];
                for (column, v) in block.iter_mut().zip(row) {
                    column[r] = *v;
                }
            }
            for x in 0..out_w {
                let w = &h.weights[x * h.taps..x * h.taps + h.lens[x]];
                let start = h.starts[x];
                let mut acc = [0f32; BLOCK_ROWS];
                for (column, wk) in block[start..].iter().zip(w) {
                    for (a, p) in acc.iter_mut().zip(column) {
                        *a += p * wk;
                    }
                }
                for (r, a) in acc.iter().take(n).enumerate() {
                    pass[(y0 + r) * out_w + x] = *a;
                }
            }
        }
    }

    /// The horizontal pass of interleaved channels, one output sample at a
    /// time.
    fn horizontal_interleaved(&self, input: &[f32], channels: usize, pass: &mut [f32]) {
        let (in_h, in_w, out_w) = (self.in_h, self.in_w, self.out_w);
        let h = &self.horizontal;
        for y in 0..in_h {
            let row = &input[y * in_w * channels..(y + 1) * in_w * channels];
            let out_row = &mut pass[y * out_w * channels..(y + 1) * out_w * channels];
            for x in 0..out_w {
                let w = &h.weights[x * h.taps..x * h.taps + h.lens[x]];
                let start = h.starts[x];
                for c in 0..channels {
                    let mut acc = 0f32;
                    for (k, wk) in w.iter().enumerate() {
                        acc += row[(start + k) * channels + c] * wk;
                    }
                    out_row[x * channels + c] = acc;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grey_fast_path_gives_the_general_path_s_values_to_the_bit() {
        // Heights below, at and above the block of rows, with a partial
        // last block; shrinking and enlarging.
        for (ih, iw, oh, ow) in [
            (37, 53, 11, 19),
            (5, 9, 17, 23),
            (16, 16, 7, 7),
            (512, 512, 240, 240),
        ] {
            let grey: Vec<f32> = (0..ih * iw)
                .map(|i| ((i * 7919) % 1000) as f32 / 7.0)
                .collect();
            // The same image as 3 equal channels goes through the general
            // path.
            let rgb: Vec<f32> = grey.iter().flat_map(|v| [*v, *v, *v]).collect();
            for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3] {
                let plan = ResizePlan::new(ih, iw, oh, ow, filter);
                let mut one = vec![0f32; oh * ow];
                // A scratch left dirty by a larger image must not matter.
                let mut scratch = vec![f32::MAX; 3 * ih * iw];
                plan.run(&grey, 1, &mut scratch, &mut one);
                let mut three = vec![0f32; oh * ow * 3];
                plan.run(&rgb, 3, &mut Vec::new(), &mut three);
                for (i, v) in one.iter().enumerate() {
                    assert_eq!(
                        v.to_bits(),
                        three[i * 3].to_bits(),
                        "{filter:?} {ih}x{iw}->{oh}x{ow} at {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant_with_every_filter() {
        for filter in [
            Filter::Nearest,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos3,
        ] {
            for (ih, iw, oh, ow) in [(17, 23, 5, 9), (5, 9, 17, 23), (512, 512, 240, 240)] {
                let plan = ResizePlan::new(ih, iw, oh, ow, filter);
                let input = vec![0.25f32; ih * iw * 3];
                let mut out = vec![0f32; oh * ow * 3];
                plan.run(&input, 3, &mut Vec::new(), &mut out);
                assert!(
                    out.iter().all(|v| (v - 0.25).abs() < 1e-5),
                    "{filter:?} {ih}x{iw}->{oh}x{ow}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let input: Vec<f32> = (0..48).map(|v| v as f32).collect();
        for filter in [
            Filter::Nearest,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos3,
        ] {
            let plan = ResizePlan::new(6, 8, 6, 8, filter);
            let mut out = vec![0f32; 48];
            plan.run(&input, 1, &mut Vec::new(), &mut out);
            for (a, b) in input.iter().zip(&out) {
                assert!((a - b).abs() < 1e-4, "{filter:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn halving_with_bilinear_averages_pairs() {
        // PIL's antialiased bilinear halving of [0, 2, 4, 6] weights the
        // neighbourhood with a triangle of support 2.
        let plan = ResizePlan::new(1, 4, 1, 2, Filter::Bilinear);
        let mut out = vec![0f32; 2];
        plan.run(&[0.0, 2.0, 4.0, 6.0], 1, &mut Vec::new(), &mut out);
        // Output 0: centre 1.0, taps x=0,1,2 with weights 0.75, 0.75, 0.25
        // (the tap at x=-1 falls outside and is dropped before normalising).
        assert!((out[0] - 2.5 / 1.75).abs() < 1e-6, "{out:?}");
    }
}
