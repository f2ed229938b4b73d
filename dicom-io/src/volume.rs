//! Assembling the single-frame instances of a series into a volume ordered
//! by Image Position (Patient) along the slice normal.

use crate::error::{Error, Result};
use crate::file::InstanceHeader;
use crate::pixels::PixelArray;

/// A 3D volume: `data` is `[slice][row][column]`, one sample per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Number of slices.
    pub slices: usize,
    /// Rows per slice.
    pub rows: usize,
    /// Columns per slice.
    pub columns: usize,
    /// Spacing in millimetres: between slices, between rows, between columns.
    pub spacing: [f64; 3],
    /// Image Position (Patient) of the first slice.
    pub origin: [f64; 3],
    /// Image Orientation (Patient) shared by all slices.
    pub orientation: [f64; 6],
    /// SOP Instance UIDs in slice order.
    pub sop_instance_uids: Vec<String>,
    /// Samples.
    pub data: Vec<f32>,
}

/// Relative tolerance on slice spacing before a series is called irregular.
const SPACING_TOLERANCE: f64 = 0.01;

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Assemble a volume from decoded single-frame grayscale slices of one
/// series. Refuses mixed sizes or orientations, missing geometry, duplicate
/// positions and irregular spacing, each with the reason.
pub fn assemble(slices: &[(InstanceHeader, PixelArray)]) -> Result<Volume> {
    let series = slices
        .first()
        .map(|(h, _)| h.series_instance_uid.clone())
        .unwrap_or_default();
    let fail = |reason: String| Error::Volume {
        series_instance_uid: series.clone(),
        reason,
    };
    let (first_header, first_pixels) = slices.first().ok_or_else(|| fail("no instances".into()))?;
    let orientation = first_header.image_orientation_patient.ok_or_else(|| {
        fail(format!(
            "{} has no Image Orientation (Patient)",
            first_header.sop_instance_uid
        ))
    })?;
    let pixel_spacing = first_header.pixel_spacing.ok_or_else(|| {
        fail(format!(
            "{} has no Pixel Spacing",
            first_header.sop_instance_uid
        ))
    })?;
    let normal = cross(
        [orientation[0], orientation[1], orientation[2]],
        [orientation[3], orientation[4], orientation[5]],
    );
    let (rows, columns) = (first_pixels.rows, first_pixels.columns);
    let mut ordered = Vec::with_capacity(slices.len());
    for (header, pixels) in slices {
        if header.series_instance_uid != series {
            return Err(fail(format!(
                "{} belongs to another series",
                header.sop_instance_uid
            )));
        }
        if pixels.frames != 1 || pixels.samples_per_pixel != 1 {
            return Err(fail(format!(
                "{} is not a single-frame grayscale image",
                header.sop_instance_uid
            )));
        }
        if (pixels.rows, pixels.columns) != (rows, columns) {
            return Err(fail(format!(
                "{} is {}x{}, the series is {rows}x{columns}",
                header.sop_instance_uid, pixels.rows, pixels.columns
            )));
        }
        let o = header.image_orientation_patient.ok_or_else(|| {
            fail(format!(
                "{} has no Image Orientation (Patient)",
                header.sop_instance_uid
            ))
        })?;
        if o.iter()
            .zip(orientation.iter())
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(fail(format!(
                "{} has a different orientation",
                header.sop_instance_uid
            )));
        }
        let p = header.image_position_patient.ok_or_else(|| {
            fail(format!(
                "{} has no Image Position (Patient)",
                header.sop_instance_uid
            ))
        })?;
        ordered.push((dot(p, normal), p, header, pixels));
    }
    ordered.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = ordered.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let slice_spacing = if gaps.is_empty() {
        1.0
    } else {
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    if gaps.iter().any(|g| *g <= 1e-6) {
        return Err(fail("two instances share a slice position".into()));
    }
    if gaps
        .iter()
        .any(|g| ((g - slice_spacing) / slice_spacing).abs() > SPACING_TOLERANCE)
    {
        return Err(fail(format!("irregular slice spacing: gaps {gaps:?} mm")));
    }
    let mut data = Vec::with_capacity(ordered.len() * rows * columns);
    for (_, _, _, pixels) in &ordered {
        data.extend_from_slice(&pixels.data);
    }
    Ok(Volume {
        slices: ordered.len(),
        rows,
        columns,
        spacing: [slice_spacing, pixel_spacing[0], pixel_spacing[1]],
        origin: ordered[0].1,
        orientation,
        sop_instance_uids: ordered
            .iter()
            .map(|(_, _, h, _)| h.sop_instance_uid.clone())
            .collect(),
        data,
    })
}
