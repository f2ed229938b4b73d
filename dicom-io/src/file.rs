//! Opening Part 10 files and reading the header attributes Vigie needs.

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use crate::error::{Error, Result};
use crate::scan::{Scanned, scan_file};

/// The header attributes of one instance that routing, grouping and
/// preprocessing need. Patient identifiers are deliberately absent: this
/// struct is logged.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InstanceHeader {
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: String,
    /// SOP Instance UID (0008,0018).
    pub sop_instance_uid: String,
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: String,
    /// Transfer syntax of the file (from the file meta group).
    pub transfer_syntax: String,
    /// Modality (0008,0060).
    pub modality: Option<String>,
    /// Body Part Examined (0018,0015).
    pub body_part_examined: Option<String>,
    /// Series Description (0008,103E).
    pub series_description: Option<String>,
    /// Instance Number (0020,0013).
    pub instance_number: Option<i32>,
    /// Image Position (Patient) (0020,0032), millimetres.
    pub image_position_patient: Option<[f64; 3]>,
    /// Image Orientation (Patient) (0020,0037), direction cosines.
    pub image_orientation_patient: Option<[f64; 6]>,
    /// Pixel Spacing (0028,0030): row spacing, column spacing, millimetres.
    pub pixel_spacing: Option<[f64; 2]>,
}

/// The file meta information of a Part 10 file (group 0002).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileMeta {
    /// Media Storage SOP Class UID (0002,0002).
    pub sop_class_uid: String,
    /// Media Storage SOP Instance UID (0002,0003).
    pub sop_instance_uid: String,
    /// Transfer Syntax UID (0002,0010).
    pub transfer_syntax: String,
}

/// Read only the file meta group of a Part 10 file (with or without the
/// 128-byte preamble): what a C-STORE command would say of the instance,
/// for files received other than by DIMSE (STOW-RS, import).
pub fn read_meta(path: impl AsRef<Path>) -> Result<FileMeta> {
    crate::scan::read_file_meta(path)
}

/// An opened DICOM Part 10 file and its header.
#[derive(Debug)]
pub struct DicomFile {
    path: PathBuf,
    object: DefaultDicomObject,
    header: InstanceHeader,
    scanned: Option<Scanned>,
}

impl DicomFile {
    /// Open and parse a Part 10 file (preamble optional, file meta group
    /// required), once it has passed [`scan_file`] with the process-wide
    /// [`crate::scan::limits`]: a data set nested too deep, with lengths
    /// past its end, truncated or inflating beyond the limits is refused
    /// ([`Error::Malformed`], [`Error::Limit`]) before the recursive parser
    /// sees it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let scanned = scan_file(&path, &crate::scan::limits())?;
        let object = OpenFileOptions::new()
            .open_file(&path)
            .map_err(|e| Error::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut file = Self::from_object(path, object)?;
        file.scanned = Some(scanned);
        Ok(file)
    }

    /// Open a Part 10 file reading only the attributes before Pixel Data:
    /// enough for [`DicomFile::header`], and fast on large instances (the
    /// pixel data is neither read nor decoded). Pixel functions then find no
    /// pixel data. The whole file passes [`scan_file`] first, as with
    /// [`DicomFile::open`].
    pub fn open_header(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let scanned = scan_file(&path, &crate::scan::limits())?;
        let object = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(&path)
            .map_err(|e| Error::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut file = Self::from_object(path, object)?;
        file.scanned = Some(scanned);
        Ok(file)
    }

    /// Wrap an object already in memory; `path` names where it came from
    /// in error messages.
    pub fn from_object(path: PathBuf, object: DefaultDicomObject) -> Result<Self> {
        let header = read_header(&path, &object)?;
        Ok(Self {
            path,
            object,
            header,
            scanned: None,
        })
    }

    /// What the structural scan found (element counts, depth, the image
    /// pixel module, the pixel data layout); `None` for an object built in
    /// memory.
    pub fn scanned(&self) -> Option<&Scanned> {
        self.scanned.as_ref()
    }

    /// Where the file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header attributes.
    pub fn header(&self) -> &InstanceHeader {
        &self.header
    }

    /// The parsed object, for callers that need other attributes.
    pub fn object(&self) -> &DefaultDicomObject {
        &self.object
    }

    /// An error about an attribute of this file.
    pub(crate) fn invalid(&self, attribute: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidAttribute {
            path: self.path.clone(),
            sop_instance_uid: self.header.sop_instance_uid.clone(),
            attribute,
            reason: reason.into(),
        }
    }

    /// String value of an attribute, trimmed; `None` when absent or empty.
    pub fn string(&self, tag: Tag) -> Option<String> {
        string_of(&self.object, tag)
    }

    /// All numeric values of a decimal attribute; `None` when absent or empty.
    pub fn floats(&self, tag: Tag, attribute: &'static str) -> Result<Option<Vec<f64>>> {
        floats_of(
            &self.path,
            &self.header.sop_instance_uid,
            &self.object,
            tag,
            attribute,
        )
    }

    /// An integer attribute; `None` when absent or empty.
    pub fn int(&self, tag: Tag, attribute: &'static str) -> Result<Option<i64>> {
        match self.object.get(tag) {
            None => Ok(None),
            Some(e) if e.is_empty() => Ok(None),
            Some(e) => e
                .to_int::<i64>()
                .map(Some)
                .map_err(|err| self.invalid(attribute, err.to_string())),
        }
    }
}

/// The text of an element. Elements read with VR UN (e.g. after a
/// transfer through a node that did not know them) still hold their
/// original text bytes; they are read as text too.
fn text_of(element: &dicom_object::mem::InMemElement) -> Option<String> {
    let text = if element.vr() == dicom_core::VR::UN {
        String::from_utf8_lossy(&element.value().to_bytes().ok()?).into_owned()
    } else {
        element.to_str().ok()?.into_owned()
    };
    let trimmed = text.trim_matches(|c: char| c == ' ' || c == '\0');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn string_of(object: &DefaultDicomObject, tag: Tag) -> Option<String> {
    text_of(object.get(tag)?)
}

fn floats_of(
    path: &Path,
    sop_instance_uid: &str,
    object: &DefaultDicomObject,
    tag: Tag,
    attribute: &'static str,
) -> Result<Option<Vec<f64>>> {
    match object.get(tag) {
        None => Ok(None),
        Some(e) => element_floats(e).map_err(|reason| Error::InvalidAttribute {
            path: path.to_path_buf(),
            sop_instance_uid: sop_instance_uid.to_string(),
            attribute,
            reason,
        }),
    }
}

/// All numeric values of a decimal element, also when it was read as UN.
pub(crate) fn element_floats(
    e: &dicom_object::mem::InMemElement,
) -> std::result::Result<Option<Vec<f64>>, String> {
    if e.is_empty() {
        return Ok(None);
    }
    if e.vr() == dicom_core::VR::UN {
        let Some(text) = text_of(e) else {
            return Ok(None);
        };
        return text
            .split('\\')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|err| format!("{v:?}: {err}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some);
    }
    e.to_multi_float64()
        .map(Some)
        .map_err(|err| err.to_string())
}

fn fixed<const N: usize>(
    path: &Path,
    sop: &str,
    object: &DefaultDicomObject,
    tag: Tag,
    attribute: &'static str,
) -> Result<Option<[f64; N]>> {
    let Some(values) = floats_of(path, sop, object, tag, attribute)? else {
        return Ok(None);
    };
    <[f64; N]>::try_from(values.as_slice())
        .map(Some)
        .map_err(|_| Error::InvalidAttribute {
            path: path.to_path_buf(),
            sop_instance_uid: sop.to_string(),
            attribute,
            reason: format!("expected {N} values, found {}", values.len()),
        })
}

fn read_header(path: &Path, object: &DefaultDicomObject) -> Result<InstanceHeader> {
    let sop_instance_uid = string_of(object, tags::SOP_INSTANCE_UID)
        .or_else(|| {
            let m = object.meta().media_storage_sop_instance_uid();
            let m = m.trim_matches(|c: char| c == ' ' || c == '\0');
            (!m.is_empty()).then(|| m.to_string())
        })
        .ok_or_else(|| Error::MissingAttribute {
            path: path.to_path_buf(),
            sop_instance_uid: "unknown".into(),
            attribute: "SOPInstanceUID",
        })?;
    let required = |tag: Tag, attribute: &'static str| {
        string_of(object, tag).ok_or_else(|| Error::MissingAttribute {
            path: path.to_path_buf(),
            sop_instance_uid: sop_instance_uid.clone(),
            attribute,
        })
    };
    let sop_class_uid = required(tags::SOP_CLASS_UID, "SOPClassUID")?;
    let study_instance_uid = required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series_instance_uid = required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    let transfer_syntax = object
        .meta()
        .transfer_syntax()
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string();
    let sop = sop_instance_uid.as_str();
    let instance_number = match object.get(tags::INSTANCE_NUMBER) {
        Some(e) if !e.is_empty() => e.to_int::<i32>().ok(),
        _ => None,
    };
    Ok(InstanceHeader {
        modality: string_of(object, tags::MODALITY),
        body_part_examined: string_of(object, tags::BODY_PART_EXAMINED),
        series_description: string_of(object, tags::SERIES_DESCRIPTION),
        instance_number,
        image_position_patient: fixed::<3>(
            path,
            sop,
            object,
            tags::IMAGE_POSITION_PATIENT,
            "ImagePositionPatient",
        )?,
        image_orientation_patient: fixed::<6>(
            path,
            sop,
            object,
            tags::IMAGE_ORIENTATION_PATIENT,
            "ImageOrientationPatient",
        )?,
        pixel_spacing: fixed::<2>(path, sop, object, tags::PIXEL_SPACING, "PixelSpacing")?,
        sop_class_uid,
        sop_instance_uid,
        study_instance_uid,
        series_instance_uid,
        transfer_syntax,
    })
}

/// The items of the sequence `tag` in `object` (none when it is absent or
/// not a sequence).
pub fn items(
    object: &dicom_object::InMemDicomObject,
    tag: dicom_core::Tag,
) -> &[dicom_object::InMemDicomObject] {
    object.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

/// The text of `tag` in `object`, trimmed of padding (spaces, NULs);
/// `None` when absent or empty.
pub fn text(object: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let value = object.get(tag)?.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == ' ' || c == '\0');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}
