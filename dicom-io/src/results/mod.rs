//! DICOM result objects: what radiologists see in their PACS viewer.
//!
//! - [`sr`]: Comprehensive SR following TID 1500 (Measurement Report) for
//!   classification results.
//! - [`seg`]: binary Segmentation for label maps.
//! - [`summary`]: a Secondary Capture of the source image with the result
//!   burned in, for viewers that do not display SR.
//!
//! The inputs are plain data ([`Code`], [`SourceImage`], [`Algorithm`],
//! [`DeviceObserver`]): this crate knows nothing of models. Patient and
//! study attributes are copied from the source instance, the series is new.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::error::{Error, Result};
use crate::file::DicomFile;
use crate::write::put_str;

pub mod seg;
pub mod sr;
pub mod summary;

/// A coded concept (PS3.3 Table 8.8-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// Code Value (at most 16 characters).
    pub value: String,
    /// Coding Scheme Designator (`DCM`, `SCT`, `UCUM`, `99VIGIE`, …).
    pub scheme: String,
    /// Code Meaning.
    pub meaning: String,
}

impl Code {
    /// A code.
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Self {
        Self {
            value: value.into(),
            scheme: scheme.into(),
            meaning: meaning.into(),
        }
    }

    /// The code as a Code Sequence item.
    pub fn item(&self) -> InMemDicomObject {
        let mut item = InMemDicomObject::new_empty();
        put_str(&mut item, tags::CODE_VALUE, VR::SH, &self.value);
        put_str(
            &mut item,
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            &self.scheme,
        );
        put_str(&mut item, tags::CODE_MEANING, VR::LO, &self.meaning);
        item
    }

    fn check(&self) -> Result<()> {
        if self.value.is_empty()
            || self.value.len() > 16
            || self.scheme.is_empty()
            || self.scheme.len() > 16
            || self.meaning.is_empty()
            || self.meaning.len() > 64
        {
            return Err(Error::Build {
                sop_instance_uid: String::new(),
                reason: format!(
                    "code {self:?} does not fit SH/SH/LO (value and scheme 1-16, meaning 1-64 characters)"
                ),
            });
        }
        Ok(())
    }
}

/// Private coding scheme for concepts with no standard code, documented in
/// `docs/results.md`.
pub const PRIVATE_SCHEME: &str = "99VIGIE";

/// Declare [`PRIVATE_SCHEME`] in the SOP Common module's Coding Scheme
/// Identification Sequence (0008,0110), PS3.3 C.12.1.1.3: Coding Scheme
/// Designator, Name, Version and Responsible Organization, so that a reader
/// meeting a 99VIGIE code knows whose it is (PS3.16 8.2: a private
/// scheme's designator begins with "99" and should be declared there).
pub fn put_private_coding_scheme(obj: &mut InMemDicomObject) {
    let mut scheme = InMemDicomObject::new_empty();
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        PRIVATE_SCHEME,
    );
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        "Vigie private codes (docs/results.md)",
    );
    put_str(&mut scheme, tags::CODING_SCHEME_VERSION, VR::SH, "1");
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        "Vigie",
    );
    put_sequence(
        obj,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![scheme],
    );
}

/// An instance a result was derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Frame numbers (1-based) for multi-frame sources; empty for all.
    pub frames: Vec<u32>,
}

impl SourceImage {
    /// The source described by an opened file.
    pub fn of(file: &DicomFile) -> Self {
        let h = file.header();
        Self {
            sop_class_uid: h.sop_class_uid.clone(),
            sop_instance_uid: h.sop_instance_uid.clone(),
            series_instance_uid: h.series_instance_uid.clone(),
            frames: Vec::new(),
        }
    }

    /// A Referenced SOP Sequence item.
    fn reference(&self) -> InMemDicomObject {
        let mut item = InMemDicomObject::new_empty();
        put_str(
            &mut item,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            &self.sop_class_uid,
        );
        put_str(
            &mut item,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &self.sop_instance_uid,
        );
        if !self.frames.is_empty() {
            let frames: Vec<String> = self.frames.iter().map(u32::to_string).collect();
            put_str(
                &mut item,
                tags::REFERENCED_FRAME_NUMBER,
                VR::IS,
                frames.join("\\"),
            );
        }
        item
    }
}

/// The algorithm that produced a result (TID 4019).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithm {
    /// Algorithm name (the model id).
    pub name: String,
    /// Algorithm version (the model version).
    pub version: String,
    /// Parameters, e.g. `model-sha256=…`, `decision=argmax`.
    pub parameters: Vec<String>,
}

/// The device that made the observation (TID 1004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceObserver {
    /// Device Observer UID.
    pub uid: String,
    /// Device Observer Name (the appliance id).
    pub name: String,
    /// Device Observer Manufacturer.
    pub manufacturer: String,
    /// Device Observer Model Name.
    pub model_name: String,
}

/// The new series a result object goes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Number.
    pub series_number: i32,
    /// Series Description (at most 64 characters).
    pub series_description: String,
    /// Manufacturer written in General Equipment.
    pub manufacturer: String,
    /// Software Versions.
    pub software_version: String,
}

/// Put a sequence attribute.
pub fn put_sequence(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(
        tag,
        VR::SQ,
        DataSetSequence::new(items, Length::UNDEFINED),
    ));
}

/// Copy attributes from the source when present (Type 2 ones are written
/// empty when absent).
fn copy_from(obj: &mut InMemDicomObject, source: &DicomFile, attributes: &[(Tag, VR, bool)]) {
    for (tag, vr, type2) in attributes {
        match source.object().get(*tag) {
            Some(e) => {
                obj.put(DataElement::new(*tag, *vr, e.value().clone()));
            }
            None if *type2 => put_str(obj, *tag, *vr, ""),
            None => {}
        }
    }
}

/// Patient, General Study and Patient Study attributes copied from the
/// source, so the result files into the same patient and study.
pub(crate) fn copy_patient_and_study(obj: &mut InMemDicomObject, source: &DicomFile) {
    copy_from(
        obj,
        source,
        &[
            (tags::PATIENT_NAME, VR::PN, true),
            (tags::PATIENT_ID, VR::LO, true),
            (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
            (tags::PATIENT_BIRTH_DATE, VR::DA, true),
            (tags::PATIENT_SEX, VR::CS, true),
            (tags::PATIENT_AGE, VR::AS, false),
            (tags::PATIENT_IDENTITY_REMOVED, VR::CS, false),
            (tags::DEIDENTIFICATION_METHOD, VR::LO, false),
            (tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, VR::SQ, false),
            (tags::STUDY_INSTANCE_UID, VR::UI, true),
            (tags::STUDY_DATE, VR::DA, true),
            (tags::STUDY_TIME, VR::TM, true),
            (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
            (tags::STUDY_ID, VR::SH, true),
            (tags::ACCESSION_NUMBER, VR::SH, true),
            (tags::STUDY_DESCRIPTION, VR::LO, false),
        ],
    );
}

/// Series, equipment and SOP common attributes of a new instance.
pub(crate) fn put_new_instance(
    obj: &mut InMemDicomObject,
    sop_class_uid: &str,
    modality: &str,
    new: &NewInstance,
) -> Result<()> {
    for uid in [&new.series_instance_uid, &new.sop_instance_uid] {
        crate::uid::validate(uid)?;
    }
    if new.series_description.chars().count() > 64 {
        return Err(Error::Build {
            sop_instance_uid: new.sop_instance_uid.clone(),
            reason: "series description longer than 64 characters".into(),
        });
    }
    let now = chrono::Utc::now();
    let (date, time) = (
        now.format("%Y%m%d").to_string(),
        now.format("%H%M%S").to_string(),
    );
    put_str(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_str(obj, tags::SOP_CLASS_UID, VR::UI, sop_class_uid);
    put_str(obj, tags::SOP_INSTANCE_UID, VR::UI, &new.sop_instance_uid);
    put_str(obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    put_str(obj, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000");
    put_str(obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(obj, tags::SERIES_DATE, VR::DA, &date);
    put_str(obj, tags::SERIES_TIME, VR::TM, &time);
    put_str(obj, tags::MODALITY, VR::CS, modality);
    put_str(
        obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &new.series_instance_uid,
    );
    put_str(
        obj,
        tags::SERIES_NUMBER,
        VR::IS,
        new.series_number.to_string(),
    );
    put_str(
        obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &new.series_description,
    );
    put_str(obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(obj, tags::MANUFACTURER, VR::LO, &new.manufacturer);
    put_str(obj, tags::SOFTWARE_VERSIONS, VR::LO, &new.software_version);
    Ok(())
}

/// Image Pixel attributes of an unsigned MONOCHROME2 image with `bits`
/// bits per sample (1 for bit-packed segmentations, 8 for captures).
pub(crate) fn put_grayscale_pixel_module(
    obj: &mut InMemDicomObject,
    rows: u16,
    columns: u16,
    bits: u16,
) {
    crate::write::put_u16(obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    crate::write::put_u16(obj, tags::ROWS, rows);
    crate::write::put_u16(obj, tags::COLUMNS, columns);
    crate::write::put_u16(obj, tags::BITS_ALLOCATED, bits);
    crate::write::put_u16(obj, tags::BITS_STORED, bits);
    crate::write::put_u16(obj, tags::HIGH_BIT, bits - 1);
    crate::write::put_u16(obj, tags::PIXEL_REPRESENTATION, 0);
}

/// Evidence sequence items (Hierarchical SOP Instance Reference Macro),
/// grouped by series, for one study.
pub(crate) fn evidence(study_instance_uid: &str, sources: &[SourceImage]) -> Vec<InMemDicomObject> {
    let mut series: Vec<(&str, Vec<InMemDicomObject>)> = Vec::new();
    for s in sources {
        let mut item = InMemDicomObject::new_empty();
        put_str(
            &mut item,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            &s.sop_class_uid,
        );
        put_str(
            &mut item,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &s.sop_instance_uid,
        );
        match series
            .iter_mut()
            .find(|(uid, _)| *uid == s.series_instance_uid)
        {
            Some((_, items)) => items.push(item),
            None => series.push((&s.series_instance_uid, vec![item])),
        }
    }
    let series_items = series
        .into_iter()
        .map(|(uid, sops)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::SERIES_INSTANCE_UID, VR::UI, uid);
            put_sequence(&mut item, tags::REFERENCED_SOP_SEQUENCE, sops);
            item
        })
        .collect();
    let mut study = InMemDicomObject::new_empty();
    put_str(
        &mut study,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        study_instance_uid,
    );
    put_sequence(&mut study, tags::REFERENCED_SERIES_SEQUENCE, series_items);
    vec![study]
}

/// Format a value for a DS element (at most 16 characters), keeping as
/// many significant digits as fit.
pub fn ds(value: f64) -> String {
    for precision in (1..=10).rev() {
        let text = format!("{value:.precision$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        };
        if text.len() <= 16 {
            return text;
        }
    }
    format!("{value:.3e}")
}
