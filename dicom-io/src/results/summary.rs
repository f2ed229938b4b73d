//! A Secondary Capture "summary image": the source image with the result
//! written in a banner below it, for PACS viewers that do not display SR.
//! The source pixels are not covered; the text is burned into the banner
//! (Burned In Annotation YES).

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use font8x8::legacy::BASIC_LEGACY;

use super::{
    NewInstance, SourceImage, copy_patient_and_study, put_grayscale_pixel_module, put_new_instance,
    put_sequence,
};
use crate::error::{Error, Result};
use crate::file::DicomFile;
use crate::pixels::PixelArray;
use crate::write::put_str;

/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// Render `lines` of ASCII text (other characters show as `?`) into an
/// 8-bit grayscale image `columns` wide; returns the banner's rows.
pub fn render_banner(lines: &[String], columns: usize) -> (usize, Vec<u8>) {
    let scale = (columns / 400).max(1);
    let glyph = 8 * scale;
    let line_height = glyph + 2 * scale;
    let margin = 4 * scale;
    let per_line = ((columns.saturating_sub(2 * margin)) / glyph).max(1);
    // Wrap long lines at the character limit.
    let wrapped: Vec<String> = lines
        .iter()
        .flat_map(|l| {
            let chars: Vec<char> = l.chars().collect();
            if chars.is_empty() {
                vec![String::new()]
            } else {
                chars
                    .chunks(per_line)
                    .map(|c| c.iter().collect::<String>())
                    .collect()
            }
        })
        .collect();
    let rows = wrapped.len() * line_height + 2 * margin;
    let mut banner = vec![0u8; rows * columns];
    for (li, line) in wrapped.iter().enumerate() {
        for (ci, ch) in line.chars().enumerate() {
            let code = if ch.is_ascii() && !ch.is_ascii_control() {
                ch as usize
            } else {
                '?' as usize
            };
            let bitmap = BASIC_LEGACY[code];
            let (x0, y0) = (margin + ci * glyph, margin + li * line_height);
            for (gy, bits) in bitmap.iter().enumerate() {
                for gx in 0..8 {
                    if bits >> gx & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let (x, y) = (x0 + gx * scale + dx, y0 + gy * scale + dy);
                                if x < columns && y < rows {
                                    banner[y * columns + x] = 255;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (rows, banner)
}

/// 8-bit grey values of one frame of display pixels (VOI applied: grey
/// values in `[0, 1]`; colour samples as stored, turned into luma): what
/// the summary image and the review page's thumbnails show.
pub fn grey8(display: &PixelArray, frame: &[f32]) -> Vec<u8> {
    match display.samples_per_pixel {
        1 => frame
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
        _ => {
            // Colour sources: luma of values that are stored samples.
            let max = 2f32.powi(i32::from(display.bits_stored)) - 1.0;
            frame
                .chunks_exact(3)
                .map(|p| {
                    ((0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) / max * 255.0)
                        .round()
                        .clamp(0.0, 255.0) as u8
                })
                .collect()
        }
    }
}

/// Build the summary image from the source and its display pixels (frame 0
/// of `display`, VOI already applied: values in `[0, 1]`).
pub fn build_summary_image(
    source: &DicomFile,
    display: &PixelArray,
    lines: &[String],
    new: &NewInstance,
) -> Result<InMemDicomObject> {
    let frame = display.frame(0).ok_or_else(|| Error::Build {
        sop_instance_uid: new.sop_instance_uid.clone(),
        reason: "source has no frame".into(),
    })?;
    let (rows, columns) = (display.rows, display.columns);
    let gray = grey8(display, frame);
    let (banner_rows, banner) = render_banner(lines, columns);
    let total_rows = rows + banner_rows;
    let total_rows_u16 = u16::try_from(total_rows).map_err(|_| Error::Build {
        sop_instance_uid: new.sop_instance_uid.clone(),
        reason: format!("summary image would be {total_rows} rows"),
    })?;
    let mut pixels = gray;
    pixels.extend_from_slice(&banner);
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(&mut obj, source);
    let modality = source
        .header()
        .modality
        .clone()
        .unwrap_or_else(|| "OT".into());
    put_new_instance(&mut obj, SECONDARY_CAPTURE, &modality, new)?;
    // Unknown unless the source says: a derived image inherits it.
    put_str(
        &mut obj,
        tags::LATERALITY,
        VR::CS,
        source.string(tags::LATERALITY).unwrap_or_default(),
    );
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put_str(&mut obj, tags::PATIENT_ORIENTATION, VR::CS, "");
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut obj, tags::RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "NO");
    put_str(
        &mut obj,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        "Source image with the AI result burned in below it",
    );
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    let mut src = SourceImage::of(source).reference();
    let mut purpose = InMemDicomObject::new_empty();
    put_str(&mut purpose, tags::CODE_VALUE, VR::SH, "121324");
    put_str(&mut purpose, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
    put_str(&mut purpose, tags::CODE_MEANING, VR::LO, "Source Image");
    put_sequence(
        &mut src,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![purpose],
    );
    put_sequence(&mut obj, tags::SOURCE_IMAGE_SEQUENCE, vec![src]);
    put_grayscale_pixel_module(
        &mut obj,
        total_rows_u16,
        u16::try_from(columns).unwrap_or(u16::MAX),
        8,
    );
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixels.into()),
    ));
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_draws_glyphs_and_wraps() {
        let (rows, banner) = render_banner(&["I".into()], 64);
        assert_eq!(rows, 8 + 2 + 8);
        assert!(banner.contains(&255), "the glyph is drawn");
        let (rows_wrapped, _) = render_banner(&["X".repeat(20)], 64);
        // 64 columns - 8 margin = 7 glyphs per line: 20 chars need 3 lines.
        assert_eq!(rows_wrapped, 3 * 10 + 8);
        let (_, blank) = render_banner(&[" ".into()], 64);
        assert!(blank.iter().all(|&p| p == 0));
    }
}
