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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixels::Photometric;

    fn slice(uid: &str, z: f64, value: f32) -> (InstanceHeader, PixelArray) {
        (
            InstanceHeader {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: uid.into(),
                study_instance_uid: "2.25.1".into(),
                series_instance_uid: "2.25.2".into(),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                modality: Some("CT".into()),
                body_part_examined: None,
                series_description: None,
                instance_number: None,
                image_position_patient: Some([-10.0, -10.0, z]),
                image_orientation_patient: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                pixel_spacing: Some([0.5, 0.7]),
            },
            PixelArray {
                frames: 1,
                rows: 2,
                columns: 2,
                samples_per_pixel: 1,
                photometric: Photometric::Monochrome2,
                bits_stored: 12,
                signed: false,
                data: vec![value; 4],
            },
        )
    }

    #[test]
    fn slices_are_ordered_along_the_normal_not_by_arrival() {
        let volume = assemble(&[
            slice("2.25.30", 5.0, 3.0),
            slice("2.25.10", -5.0, 1.0),
            slice("2.25.20", 0.0, 2.0),
        ])
        .expect("assembles");
        assert_eq!(volume.sop_instance_uids, ["2.25.10", "2.25.20", "2.25.30"]);
        assert_eq!(volume.spacing, [5.0, 0.5, 0.7]);
        assert_eq!(volume.origin, [-10.0, -10.0, -5.0]);
        assert_eq!(
            &volume.data[..],
            &[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]
        );
    }

    #[test]
    fn duplicates_gaps_and_missing_geometry_are_refused() {
        let dup = assemble(&[slice("2.25.1", 0.0, 0.0), slice("2.25.2", 0.0, 0.0)])
            .expect_err("duplicate");
        assert!(dup.to_string().contains("share a slice position"), "{dup}");
        let gap = assemble(&[
            slice("2.25.1", 0.0, 0.0),
            slice("2.25.2", 1.0, 0.0),
            slice("2.25.3", 3.0, 0.0),
        ])
        .expect_err("gap");
        assert!(gap.to_string().contains("irregular"), "{gap}");
        let mut bad = slice("2.25.4", 2.0, 0.0);
        bad.0.image_position_patient = None;
        let missing = assemble(&[slice("2.25.1", 0.0, 0.0), bad]).expect_err("no position");
        assert!(missing.to_string().contains("Image Position"), "{missing}");
    }
}
