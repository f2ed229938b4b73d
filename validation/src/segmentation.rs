//! Overlap and surface-distance metrics of a predicted 2D mask against a
//! reference mask, in millimetres using the pixel spacing. Definitions as
//! in MedPy (`dc`, `jc`, `hd95`, `assd`), tested against an implementation
//! on scipy.ndimage:
//!
//! - border of a mask: its foreground pixels that a one-pixel erosion with
//!   4-connectivity removes (pixels on the image edge are border pixels);
//! - directed surface distances: from each border pixel of one mask to the
//!   nearest border pixel of the other, Euclidean in mm;
//! - HD95: the 95th percentile (linear interpolation) of both directions'
//!   distances pooled; ASSD: the mean of the two directions' mean distances.

use serde::Serialize;

/// A binary mask, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Mask<'a> {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub columns: usize,
    /// `true` for foreground, `rows × columns` values.
    pub data: &'a [bool],
}

/// The metrics of one prediction against its reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SegmentationScores {
    /// Dice coefficient 2|A∩B| / (|A| + |B|); 1 when both are empty.
    pub dice: f64,
    /// Jaccard index |A∩B| / |A∪B|; 1 when both are empty.
    pub iou: f64,
    /// 95th-percentile Hausdorff distance (mm); `None` when a mask is empty.
    pub hd95_mm: Option<f64>,
    /// Average symmetric surface distance (mm); `None` when a mask is empty.
    pub assd_mm: Option<f64>,
}

fn border(mask: &Mask<'_>) -> Vec<(usize, usize)> {
    let at = |r: usize, c: usize| mask.data[r * mask.columns + c];
    let mut out = Vec::new();
    for r in 0..mask.rows {
        for c in 0..mask.columns {
            if !at(r, c) {
                continue;
            }
            let edge = r == 0 || c == 0 || r + 1 == mask.rows || c + 1 == mask.columns;
            if edge || !at(r - 1, c) || !at(r + 1, c) || !at(r, c - 1) || !at(r, c + 1) {
                out.push((r, c));
            }
        }
    }
    out
}

fn directed(from: &[(usize, usize)], to: &[(usize, usize)], spacing: (f64, f64)) -> Vec<f64> {
    from.iter()
        .map(|(r, c)| {
            to.iter()
                .map(|(r2, c2)| {
                    let dr = (*r as f64 - *r2 as f64) * spacing.0;
                    let dc = (*c as f64 - *c2 as f64) * spacing.1;
                    dr * dr + dc * dc
                })
                .fold(f64::INFINITY, f64::min)
                .sqrt()
        })
        .collect()
}

/// Percentile with linear interpolation (numpy's default), `q` in [0, 1].
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Score `prediction` against `reference` (same size), with pixel spacing
/// (row, column) in mm. `None` when the sizes differ.
pub fn score(
    prediction: &Mask<'_>,
    reference: &Mask<'_>,
    spacing: (f64, f64),
) -> Option<SegmentationScores> {
    if prediction.rows != reference.rows
        || prediction.columns != reference.columns
        || prediction.data.len() != prediction.rows * prediction.columns
        || reference.data.len() != reference.rows * reference.columns
    {
        return None;
    }
    let a = prediction.data.iter().filter(|x| **x).count() as f64;
    let b = reference.data.iter().filter(|x| **x).count() as f64;
    let both = prediction
        .data
        .iter()
        .zip(reference.data)
        .filter(|(x, y)| **x && **y)
        .count() as f64;
    let (dice, iou) = if a + b == 0.0 {
        (1.0, 1.0)
    } else {
        (2.0 * both / (a + b), both / (a + b - both))
    };
    let (pa, pb) = (border(prediction), border(reference));
    let (hd95_mm, assd_mm) = if pa.is_empty() || pb.is_empty() {
        (None, None)
    } else {
        let ab = directed(&pa, &pb, spacing);
        let ba = directed(&pb, &pa, spacing);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let pooled: Vec<f64> = ab.iter().chain(&ba).copied().collect();
        (
            percentile(&pooled, 0.95),
            Some((mean(&ab) + mean(&ba)) / 2.0),
        )
    };
    Some(SegmentationScores {
        dice,
        iou,
        hd95_mm,
        assd_mm,
    })
}

/// A mean with a seeded bootstrap 95 % percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanCi {
    /// Mean.
    pub mean: f64,
    /// 2.5th and 97.5th percentiles of 2000 bootstrap means (seed fixed, so
    /// the report is reproducible).
    pub ci95: crate::stats::Interval,
    /// Values.
    pub n: usize,
}

/// Mean and bootstrap interval of `values`; `None` when empty.
pub fn mean_ci(values: &[f64]) -> Option<MeanCi> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut state: u64 = 0x00C0_FFEE_2026_1122;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    };
    let means: Vec<f64> = (0..2000)
        .map(|_| {
            (0..n)
                .map(|_| values[(next() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    Some(MeanCi {
        mean,
        ci95: crate::stats::Interval {
            lower: percentile(&means, 0.025).unwrap_or(mean),
            upper: percentile(&means, 0.975).unwrap_or(mean),
        },
        n,
    })
}

/// Read a reference mask from an 8- or 16-bit grayscale PNG: the pixel
/// values (0 = background).
pub fn load_mask(path: &std::path::Path) -> crate::Result<(usize, usize, Vec<u16>)> {
    let image = image::open(path)
        .map_err(|e| crate::Error::Dataset {
            path: path.to_path_buf(),
            reason: format!("reference mask: {e}"),
        })?
        .into_luma16();
    let (w, h) = image.dimensions();
    let scale = if image.pixels().all(|p| p.0[0] % 257 == 0) {
        257
    } else {
        1
    };
    Ok((
        h as usize,
        w as usize,
        image.pixels().map(|p| p.0[0] / scale).collect(),
    ))
}

/// Nearest-neighbour resampling of a label map (pixel centres aligned).
pub fn resample_nearest(
    labels: &[u8],
    rows: usize,
    columns: usize,
    to_rows: usize,
    to_columns: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(to_rows * to_columns);
    for r in 0..to_rows {
        let sr = (((r as f64 + 0.5) * rows as f64 / to_rows as f64) as usize)
            .min(rows.saturating_sub(1));
        for c in 0..to_columns {
            let sc = (((c as f64 + 0.5) * columns as f64 / to_columns as f64) as usize)
                .min(columns.saturating_sub(1));
            out.push(labels.get(sr * columns + sc).copied().unwrap_or(0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(rows: usize, cols: usize, cr: f64, cc: f64, radius: f64) -> Vec<bool> {
        (0..rows * cols)
            .map(|i| {
                let (r, c) = ((i / cols) as f64, (i % cols) as f64);
                (r - cr).powi(2) + (c - cc).powi(2) <= radius * radius
            })
            .collect()
    }

    #[test]
    fn bootstrap_intervals_are_reproducible_and_contain_the_mean() {
        let v = [0.9, 0.8, 0.95, 0.7, 0.85];
        let a = mean_ci(&v).unwrap();
        assert_eq!(a, mean_ci(&v).unwrap());
        assert!(a.ci95.lower <= a.mean && a.mean <= a.ci95.upper);
        assert!((a.mean - 0.84).abs() < 1e-12);
        let one = mean_ci(&[0.5]).unwrap();
        assert_eq!((one.ci95.lower, one.ci95.upper), (0.5, 0.5));
        assert_eq!(
            resample_nearest(&[1, 2, 3, 4], 2, 2, 4, 4)[..4],
            [1, 1, 2, 2]
        );
    }

    #[test]
    fn identical_masks_score_perfectly_and_shifted_ones_by_the_shift() {
        let a = disk(40, 40, 20.0, 20.0, 8.0);
        let m = Mask {
            rows: 40,
            columns: 40,
            data: &a,
        };
        let s = score(&m, &m, (0.5, 0.5)).unwrap();
        assert_eq!(
            (s.dice, s.iou, s.hd95_mm, s.assd_mm),
            (1.0, 1.0, Some(0.0), Some(0.0))
        );
        // Shifted by 3 columns at 2 mm per column: the largest surface
        // distance is the shift, 6 mm.
        let b = disk(40, 40, 20.0, 23.0, 8.0);
        let s = score(
            &m,
            &Mask {
                rows: 40,
                columns: 40,
                data: &b,
            },
            (1.0, 2.0),
        )
        .unwrap();
        assert!(s.dice < 1.0 && s.dice > 0.5);
        assert!(s.hd95_mm.unwrap() <= 6.0 + 1e-9);
        let empty = vec![false; 1600];
        let s = score(
            &m,
            &Mask {
                rows: 40,
                columns: 40,
                data: &empty,
            },
            (1.0, 1.0),
        )
        .unwrap();
        assert_eq!(s.dice, 0.0);
        assert!(s.hd95_mm.is_none());
    }
}
