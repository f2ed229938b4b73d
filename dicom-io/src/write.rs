//! Building and writing new instances, durably.
//!
//! [`write_durably`] is the one way this crate puts a file on disk: write to
//! a temporary file in the destination folder, fsync it, rename it into
//! place, fsync the folder. A reader never sees a partial file, and once it
//! returns the file survives a power cut.

use std::io::Write;
use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::error::{Error, Result};
use crate::uid;

/// Implementation Class UID written in the file meta group of every file
/// Vigie creates (under the UUID-derived root).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.264381775117626427683931373214419536901";
/// Implementation Version Name written with it.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("VIGIE_", env!("CARGO_PKG_VERSION"));

/// Write `bytes` produced by `fill` to `path` atomically and durably.
pub fn write_durably(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    vigie_durable::file::write_durably(path, fill).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Put a string attribute.
pub fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<String>) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::from(value.into()),
    ));
}

/// Put an unsigned short attribute.
pub fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

/// Put a multi-valued decimal string attribute.
pub fn put_ds(obj: &mut InMemDicomObject, tag: Tag, values: &[f64]) {
    let text = values
        .iter()
        .map(|v| format_ds(*v))
        .collect::<Vec<_>>()
        .join("\\");
    put_str(obj, tag, VR::DS, text);
}

/// Format a number as a DS value (at most 16 characters).
pub fn format_ds(value: f64) -> String {
    let mut text = format!("{value}");
    if text.len() > 16 {
        text = format!("{value:.6e}");
    }
    text
}

/// Wrap a data set with a file meta group and write it durably as Part 10,
/// Explicit VR Little Endian.
pub fn write_part10(obj: InMemDicomObject, path: &Path) -> Result<()> {
    let sop_class = string_value(&obj, tags::SOP_CLASS_UID);
    let sop_instance = string_value(&obj, tags::SOP_INSTANCE_UID);
    let build_err = |reason: String| Error::Build {
        sop_instance_uid: sop_instance.clone(),
        reason,
    };
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class.as_str())
        .media_storage_sop_instance_uid(sop_instance.as_str())
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    let file = obj.with_meta(meta).map_err(|e| build_err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| build_err(e.to_string()))?;
    write_durably(path, |w| w.write_all(&bytes))
}

fn string_value(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0').to_string())
        .unwrap_or_default()
}

/// A single-frame MR image made from an 8-bit grayscale picture, as the
/// demo and test datasets need. Every identifying attribute is supplied by
/// the caller and should be obviously synthetic.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MrImage<'a> {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub columns: u16,
    /// Pixels, row by row, one byte each.
    pub pixels: &'a [u8],
    /// Patient's Name (synthetic).
    pub patient_name: String,
    /// Patient ID (synthetic).
    pub patient_id: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Frame of Reference UID.
    pub frame_of_reference_uid: String,
    /// Study ID and Accession Number.
    pub study_id: String,
    /// Study Description.
    pub study_description: String,
    /// Series Description.
    pub series_description: String,
    /// Study Date and Series Date, `YYYYMMDD`.
    pub date: String,
    /// Derivation Description: where the picture came from.
    pub derivation_description: String,
    /// Pixel Spacing in millimetres.
    pub pixel_spacing: f64,
    /// Slice Thickness in millimetres.
    pub slice_thickness: f64,
}

impl<'a> MrImage<'a> {
    /// An image with fresh UIDs from `uids` and placeholder identifiers that
    /// the caller is expected to overwrite.
    pub fn new(rows: u16, columns: u16, pixels: &'a [u8], uids: &uid::UidGenerator) -> Self {
        Self {
            rows,
            columns,
            pixels,
            patient_name: "SYNTHETIC^PATIENT".into(),
            patient_id: "SYNTH-0000".into(),
            study_instance_uid: uids.generate(),
            series_instance_uid: uids.generate(),
            sop_instance_uid: uids.generate(),
            frame_of_reference_uid: uids.generate(),
            study_id: "SYNTH".into(),
            study_description: "Synthetic study".into(),
            series_description: "Synthetic series".into(),
            date: "20000101".into(),
            derivation_description: String::new(),
            pixel_spacing: 1.0,
            slice_thickness: 1.0,
        }
    }

    /// Build the data set (MR Image IOD, PS3.3 A.4).
    ///
    /// Pixels are stored 16 bits allocated, 8 stored, as the MR Image Module
    /// requires Bits Allocated 16; the window 128/256 displays them as the
    /// original picture.
    pub fn build(&self) -> Result<InMemDicomObject> {
        for value in [
            &self.study_instance_uid,
            &self.series_instance_uid,
            &self.sop_instance_uid,
            &self.frame_of_reference_uid,
        ] {
            uid::validate(value)?;
        }
        let expected = usize::from(self.rows) * usize::from(self.columns);
        if self.pixels.len() != expected {
            return Err(Error::Build {
                sop_instance_uid: self.sop_instance_uid.clone(),
                reason: format!(
                    "{} pixels for {}x{}",
                    self.pixels.len(),
                    self.rows,
                    self.columns
                ),
            });
        }
        let mut obj = InMemDicomObject::new_empty();
        let s = |obj: &mut InMemDicomObject, tag, vr, v: &str| put_str(obj, tag, vr, v);
        s(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        s(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            "DERIVED\\SECONDARY\\OTHER",
        );
        s(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::MR_IMAGE_STORAGE,
        );
        s(
            &mut obj,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            &self.sop_instance_uid,
        );
        s(&mut obj, tags::STUDY_DATE, VR::DA, &self.date);
        s(&mut obj, tags::SERIES_DATE, VR::DA, &self.date);
        s(&mut obj, tags::CONTENT_DATE, VR::DA, &self.date);
        s(&mut obj, tags::STUDY_TIME, VR::TM, "120000");
        s(&mut obj, tags::SERIES_TIME, VR::TM, "120000");
        s(&mut obj, tags::CONTENT_TIME, VR::TM, "120000");
        s(&mut obj, tags::ACCESSION_NUMBER, VR::SH, &self.study_id);
        s(&mut obj, tags::MODALITY, VR::CS, "MR");
        s(&mut obj, tags::MANUFACTURER, VR::LO, "Vigie synthetic data");
        s(&mut obj, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
        s(
            &mut obj,
            tags::STUDY_DESCRIPTION,
            VR::LO,
            &self.study_description,
        );
        s(
            &mut obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &self.series_description,
        );
        s(
            &mut obj,
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            &self.derivation_description,
        );
        s(&mut obj, tags::PATIENT_NAME, VR::PN, &self.patient_name);
        s(&mut obj, tags::PATIENT_ID, VR::LO, &self.patient_id);
        s(&mut obj, tags::PATIENT_BIRTH_DATE, VR::DA, "");
        s(&mut obj, tags::PATIENT_SEX, VR::CS, "O");
        s(&mut obj, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        s(
            &mut obj,
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            "Synthetic: no real patient identity",
        );
        s(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "BRAIN");
        // MR Image Module: research-mode acquisition of unknown parameters.
        s(&mut obj, tags::SCANNING_SEQUENCE, VR::CS, "RM");
        s(&mut obj, tags::SEQUENCE_VARIANT, VR::CS, "NONE");
        s(&mut obj, tags::SCAN_OPTIONS, VR::CS, "");
        s(&mut obj, tags::MR_ACQUISITION_TYPE, VR::CS, "2D");
        s(&mut obj, tags::REPETITION_TIME, VR::DS, "");
        s(&mut obj, tags::ECHO_TIME, VR::DS, "");
        s(&mut obj, tags::ECHO_TRAIN_LENGTH, VR::IS, "");
        put_ds(&mut obj, tags::SLICE_THICKNESS, &[self.slice_thickness]);
        s(
            &mut obj,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            &self.study_instance_uid,
        );
        s(
            &mut obj,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &self.series_instance_uid,
        );
        s(&mut obj, tags::STUDY_ID, VR::SH, &self.study_id);
        s(&mut obj, tags::SERIES_NUMBER, VR::IS, "1");
        s(&mut obj, tags::PATIENT_POSITION, VR::CS, "");
        s(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
        s(&mut obj, tags::PATIENT_ORIENTATION, VR::CS, "");
        put_ds(&mut obj, tags::IMAGE_POSITION_PATIENT, &[0.0, 0.0, 0.0]);
        put_ds(
            &mut obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        );
        s(
            &mut obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &self.frame_of_reference_uid,
        );
        s(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
        s(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        put_u16(&mut obj, tags::ROWS, self.rows);
        put_u16(&mut obj, tags::COLUMNS, self.columns);
        put_ds(
            &mut obj,
            tags::PIXEL_SPACING,
            &[self.pixel_spacing, self.pixel_spacing],
        );
        put_u16(&mut obj, tags::BITS_ALLOCATED, 16);
        put_u16(&mut obj, tags::BITS_STORED, 8);
        put_u16(&mut obj, tags::HIGH_BIT, 7);
        put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
        put_ds(&mut obj, tags::WINDOW_CENTER, &[128.0]);
        put_ds(&mut obj, tags::WINDOW_WIDTH, &[256.0]);
        s(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
        s(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "01");
        s(
            &mut obj,
            tags::LOSSY_IMAGE_COMPRESSION_METHOD,
            VR::CS,
            "ISO_10918_1",
        );
        let samples: Vec<u16> = self.pixels.iter().map(|&p| u16::from(p)).collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(samples.into()),
        ));
        Ok(obj)
    }
}
