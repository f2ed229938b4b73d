//! Binary Segmentation (PS3.3 A.51) of a single-frame source image: one
//! frame per segment, bit-packed, with shared and per-frame functional
//! groups, derivation references and coded segment descriptions.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{
    Algorithm, Code, NewInstance, SourceImage, copy_patient_and_study, ds,
    put_grayscale_pixel_module, put_new_instance, put_sequence,
};
use crate::error::{Error, Result};
use crate::file::DicomFile;
use crate::write::{put_str, put_u16};

/// Segmentation Storage.
pub const SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// One segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Segment Number (1-based; the label map's value for this segment).
    pub number: u16,
    /// Segment Label.
    pub label: String,
    /// Segmented Property Category (CID 7150).
    pub category: Code,
    /// Segmented Property Type (CID 7151).
    pub property_type: Code,
}

/// What to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationInput<'a> {
    /// Label map at the source image's size, one value per pixel
    /// (0 = background, otherwise a segment number).
    pub label_map: &'a [u8],
    /// Segments to encode (in this order).
    pub segments: Vec<Segment>,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Identity of the new instance.
    pub instance: NewInstance,
}

fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    Code::new(value, scheme, meaning).item()
}

fn one(tag: Tag, item: InMemDicomObject) -> (Tag, Vec<InMemDicomObject>) {
    (tag, vec![item])
}

fn put_at(obj: &mut InMemDicomObject, tag: Tag, value: Tag) {
    obj.put(DataElement::new(
        tag,
        VR::AT,
        PrimitiveValue::Tags(vec![value].into()),
    ));
}

/// Pack 0/1 bytes into bits, PS3.5 8.1.1 (first pixel in the least
/// significant bit, frames contiguous), padded to an even length.
pub fn pack_bits(bits: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b != 0 {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// Build a binary SEG for a single-frame `source`.
pub fn build_segmentation(
    source: &DicomFile,
    input: &SegmentationInput<'_>,
) -> Result<InMemDicomObject> {
    let fail = |reason: String| Error::Build {
        sop_instance_uid: input.instance.sop_instance_uid.clone(),
        reason,
    };
    let rows = source.int(tags::ROWS, "Rows")?.unwrap_or(0) as usize;
    let columns = source.int(tags::COLUMNS, "Columns")?.unwrap_or(0) as usize;
    if rows == 0 || columns == 0 || input.label_map.len() != rows * columns {
        return Err(fail(format!(
            "label map of {} pixels for a {rows}x{columns} source",
            input.label_map.len()
        )));
    }
    if input.segments.is_empty() {
        return Err(fail("no segments".into()));
    }
    for s in &input.segments {
        s.category.check()?;
        s.property_type.check()?;
        if s.number == 0 {
            return Err(fail("segment numbers start at 1".into()));
        }
    }
    let header = source.header();
    // Geometry is encoded only when the source has all of it; a SEG of a
    // source without a frame of reference (e.g. a secondary capture) is
    // referenced by derivation only.
    let thickness = source
        .floats(tags::SLICE_THICKNESS, "SliceThickness")?
        .and_then(|v| v.first().copied());
    let frame_of_reference = source.string(tags::FRAME_OF_REFERENCE_UID);
    let geometry = match (
        header.image_position_patient,
        header.image_orientation_patient,
        header.pixel_spacing,
        thickness,
        &frame_of_reference,
    ) {
        (Some(p), Some(o), Some(s), Some(t), Some(_)) => Some((p, o, s, t)),
        _ => None,
    };
    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(&mut obj, source);
    put_new_instance(&mut obj, SEGMENTATION, "SEG", &input.instance)?;
    if input.segments.iter().any(|s| {
        s.category.scheme == super::PRIVATE_SCHEME
            || s.property_type.scheme == super::PRIVATE_SCHEME
    }) {
        super::put_private_coding_scheme(&mut obj);
    }
    if let (Some(uid), Some(_)) = (&frame_of_reference, geometry) {
        put_str(&mut obj, tags::FRAME_OF_REFERENCE_UID, VR::UI, uid);
        put_str(
            &mut obj,
            tags::POSITION_REFERENCE_INDICATOR,
            VR::LO,
            source
                .string(tags::POSITION_REFERENCE_INDICATOR)
                .unwrap_or_default(),
        );
    }
    // Enhanced General Equipment.
    put_str(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "Vigie");
    put_str(&mut obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, "vigie");
    // Segmentation Image.
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put_str(&mut obj, tags::CONTENT_LABEL, VR::CS, "AI_SEGMENTATION");
    put_str(
        &mut obj,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        format!("{} {}", input.algorithm.name, input.algorithm.version),
    );
    put_str(&mut obj, tags::CONTENT_CREATOR_NAME, VR::PN, "");
    put_str(&mut obj, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_grayscale_pixel_module(&mut obj, rows as u16, columns as u16, 1);
    let algorithm_family = code_item("123109", "DCM", "Artificial Intelligence");
    let segments: Vec<InMemDicomObject> = input
        .segments
        .iter()
        .map(|s| {
            let mut item = InMemDicomObject::new_empty();
            put_u16(&mut item, tags::SEGMENT_NUMBER, s.number);
            put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &s.label);
            put_sequence(
                &mut item,
                tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                vec![s.category.item()],
            );
            put_sequence(
                &mut item,
                tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                vec![s.property_type.item()],
            );
            put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
            put_str(
                &mut item,
                tags::SEGMENT_ALGORITHM_NAME,
                VR::LO,
                &input.algorithm.name,
            );
            let mut algo = InMemDicomObject::new_empty();
            put_sequence(
                &mut algo,
                tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
                vec![algorithm_family.clone()],
            );
            put_str(
                &mut algo,
                tags::ALGORITHM_NAME,
                VR::LO,
                &input.algorithm.name,
            );
            put_str(
                &mut algo,
                tags::ALGORITHM_VERSION,
                VR::LO,
                &input.algorithm.version,
            );
            if !input.algorithm.parameters.is_empty() {
                put_str(
                    &mut algo,
                    tags::ALGORITHM_PARAMETERS,
                    VR::LT,
                    input.algorithm.parameters.join("; "),
                );
            }
            put_sequence(
                &mut item,
                tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                vec![algo],
            );
            item
        })
        .collect();
    put_sequence(&mut obj, tags::SEGMENT_SEQUENCE, segments);

    // Multi-frame Dimension: segment number, then plane position when the
    // source has geometry.
    let dimension_uid = input.instance.sop_instance_uid.clone() + ".1";
    let dimension_uid = if dimension_uid.len() <= 64 {
        dimension_uid
    } else {
        input.instance.series_instance_uid.clone()
    };
    let mut organization = InMemDicomObject::new_empty();
    put_str(
        &mut organization,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &dimension_uid,
    );
    put_sequence(
        &mut obj,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![organization],
    );
    let mut indices = Vec::new();
    let mut by_segment = InMemDicomObject::new_empty();
    put_str(
        &mut by_segment,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &dimension_uid,
    );
    put_at(
        &mut by_segment,
        tags::DIMENSION_INDEX_POINTER,
        tags::REFERENCED_SEGMENT_NUMBER,
    );
    put_at(
        &mut by_segment,
        tags::FUNCTIONAL_GROUP_POINTER,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
    );
    put_str(
        &mut by_segment,
        tags::DIMENSION_DESCRIPTION_LABEL,
        VR::LO,
        "ReferencedSegmentNumber",
    );
    indices.push(by_segment);
    if geometry.is_some() {
        let mut by_position = InMemDicomObject::new_empty();
        put_str(
            &mut by_position,
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            &dimension_uid,
        );
        put_at(
            &mut by_position,
            tags::DIMENSION_INDEX_POINTER,
            tags::IMAGE_POSITION_PATIENT,
        );
        put_at(
            &mut by_position,
            tags::FUNCTIONAL_GROUP_POINTER,
            tags::PLANE_POSITION_SEQUENCE,
        );
        put_str(
            &mut by_position,
            tags::DIMENSION_DESCRIPTION_LABEL,
            VR::LO,
            "ImagePositionPatient",
        );
        indices.push(by_position);
    }
    put_sequence(&mut obj, tags::DIMENSION_INDEX_SEQUENCE, indices);

    // Shared functional groups: pixel measures and orientation.
    let mut shared = InMemDicomObject::new_empty();
    if let Some((_, o, spacing, thickness)) = geometry {
        let mut measures = InMemDicomObject::new_empty();
        put_str(
            &mut measures,
            tags::PIXEL_SPACING,
            VR::DS,
            format!("{}\\{}", ds(spacing[0]), ds(spacing[1])),
        );
        put_str(&mut measures, tags::SLICE_THICKNESS, VR::DS, ds(thickness));
        let (tag, items) = one(tags::PIXEL_MEASURES_SEQUENCE, measures);
        put_sequence(&mut shared, tag, items);
        let mut orientation = InMemDicomObject::new_empty();
        put_str(
            &mut orientation,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            o.iter().map(|v| ds(*v)).collect::<Vec<_>>().join("\\"),
        );
        let (tag, items) = one(tags::PLANE_ORIENTATION_SEQUENCE, orientation);
        put_sequence(&mut shared, tag, items);
    }
    put_sequence(
        &mut obj,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared],
    );

    // Per-frame groups and pixels: one frame per segment.
    let source_ref = SourceImage::of(source);
    let mut per_frame = Vec::new();
    let mut bits: Vec<u8> = Vec::with_capacity(rows * columns * input.segments.len());
    for s in &input.segments {
        let mut item = InMemDicomObject::new_empty();
        let mut content = InMemDicomObject::new_empty();
        let index = if geometry.is_some() {
            vec![u32::from(s.number), 1]
        } else {
            vec![u32::from(s.number)]
        };
        content.put(DataElement::new(
            tags::DIMENSION_INDEX_VALUES,
            VR::UL,
            PrimitiveValue::U32(index.into()),
        ));
        put_sequence(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
        if let Some((p, ..)) = geometry {
            let mut position = InMemDicomObject::new_empty();
            put_str(
                &mut position,
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                p.iter().map(|v| ds(*v)).collect::<Vec<_>>().join("\\"),
            );
            put_sequence(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
        }
        let mut src = source_ref.reference();
        // The mask is on the source's pixel grid.
        put_str(&mut src, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
        put_sequence(
            &mut src,
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code_item(
                "121322",
                "DCM",
                "Source image for image processing operation",
            )],
        );
        let mut derivation = InMemDicomObject::new_empty();
        put_sequence(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![src]);
        put_sequence(
            &mut derivation,
            tags::DERIVATION_CODE_SEQUENCE,
            vec![code_item("113076", "DCM", "Segmentation")],
        );
        put_sequence(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
        let mut ident = InMemDicomObject::new_empty();
        put_u16(&mut ident, tags::REFERENCED_SEGMENT_NUMBER, s.number);
        put_sequence(
            &mut item,
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![ident],
        );
        per_frame.push(item);
        bits.extend(
            input
                .label_map
                .iter()
                .map(|&v| u8::from(u16::from(v) == s.number)),
        );
    }
    put_str(
        &mut obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        input.segments.len().to_string(),
    );
    put_sequence(
        &mut obj,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    );

    // Common Instance Reference.
    let mut instance = InMemDicomObject::new_empty();
    put_str(
        &mut instance,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &header.sop_class_uid,
    );
    put_str(
        &mut instance,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &header.sop_instance_uid,
    );
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &header.series_instance_uid,
    );
    put_sequence(
        &mut series,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        vec![instance],
    );
    put_sequence(&mut obj, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);

    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pack_bits(&bits).into()),
    ));
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_lsb_first_and_frames_are_contiguous() {
        // 12 pixels: first byte 0b1000_0101, second 0b0000_1000, padded.
        let bits = [1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        assert_eq!(pack_bits(&bits), vec![0b1000_0101, 0b0000_1000]);
        assert_eq!(pack_bits(&[1]), vec![1, 0]);
    }
}
