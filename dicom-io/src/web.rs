//! The DICOM side of DICOMweb (PS3.18): which attributes a QIDO-RS search
//! matches and returns at each level, how stored values are matched
//! against query values (the C-FIND matching rules of PS3.4 C.2.2.2), how
//! values and whole headers are written in the DICOM JSON model (PS3.18
//! F.2), and transcoding to Explicit VR Little Endian for WADO-RS.
//!
//! The HTTP side (routes, media types, multipart) lives in the server
//! crate; this module only knows DICOM.

use std::collections::BTreeMap;
use std::path::Path;

use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::file::DicomFile;

/// A level of the DICOM information model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Patient and study attributes.
    Study,
    /// Series attributes.
    Series,
    /// Instance attributes.
    Instance,
}

/// An attribute Vigie indexes for QIDO-RS.
#[derive(Debug, Clone, Copy)]
pub struct Attribute {
    /// Its tag.
    pub tag: Tag,
    /// Its keyword.
    pub keyword: &'static str,
    /// Its value representation.
    pub vr: VR,
    /// The level it belongs to.
    pub level: Level,
    /// Returned by default (PS3.18 tables 10.6.3-3 to -5).
    pub default: bool,
}

const fn attr(tag: Tag, keyword: &'static str, vr: VR, level: Level, default: bool) -> Attribute {
    Attribute {
        tag,
        keyword,
        vr,
        level,
        default,
    }
}

/// The attributes read from each stored instance into the search index.
/// Searching on them is supported; others are returned with
/// `includefield` but cannot be matched.
pub const INDEXED: &[Attribute] = &[
    attr(
        tags::SPECIFIC_CHARACTER_SET,
        "SpecificCharacterSet",
        VR::CS,
        Level::Study,
        true,
    ),
    attr(tags::STUDY_DATE, "StudyDate", VR::DA, Level::Study, true),
    attr(tags::STUDY_TIME, "StudyTime", VR::TM, Level::Study, true),
    attr(
        tags::ACCESSION_NUMBER,
        "AccessionNumber",
        VR::SH,
        Level::Study,
        true,
    ),
    attr(
        tags::REFERRING_PHYSICIAN_NAME,
        "ReferringPhysicianName",
        VR::PN,
        Level::Study,
        true,
    ),
    attr(
        tags::TIMEZONE_OFFSET_FROM_UTC,
        "TimezoneOffsetFromUTC",
        VR::SH,
        Level::Study,
        true,
    ),
    attr(
        tags::STUDY_DESCRIPTION,
        "StudyDescription",
        VR::LO,
        Level::Study,
        false,
    ),
    attr(
        tags::PATIENT_NAME,
        "PatientName",
        VR::PN,
        Level::Study,
        true,
    ),
    attr(tags::PATIENT_ID, "PatientID", VR::LO, Level::Study, true),
    attr(
        tags::PATIENT_BIRTH_DATE,
        "PatientBirthDate",
        VR::DA,
        Level::Study,
        true,
    ),
    attr(tags::PATIENT_SEX, "PatientSex", VR::CS, Level::Study, true),
    attr(
        tags::STUDY_INSTANCE_UID,
        "StudyInstanceUID",
        VR::UI,
        Level::Study,
        true,
    ),
    attr(tags::STUDY_ID, "StudyID", VR::SH, Level::Study, true),
    attr(tags::MODALITY, "Modality", VR::CS, Level::Series, true),
    attr(
        tags::SERIES_DESCRIPTION,
        "SeriesDescription",
        VR::LO,
        Level::Series,
        true,
    ),
    attr(
        tags::SERIES_INSTANCE_UID,
        "SeriesInstanceUID",
        VR::UI,
        Level::Series,
        true,
    ),
    attr(
        tags::SERIES_NUMBER,
        "SeriesNumber",
        VR::IS,
        Level::Series,
        true,
    ),
    attr(
        tags::SERIES_DATE,
        "SeriesDate",
        VR::DA,
        Level::Series,
        false,
    ),
    attr(
        tags::BODY_PART_EXAMINED,
        "BodyPartExamined",
        VR::CS,
        Level::Series,
        false,
    ),
    attr(
        tags::MANUFACTURER,
        "Manufacturer",
        VR::LO,
        Level::Series,
        false,
    ),
    attr(
        tags::PERFORMED_PROCEDURE_STEP_START_DATE,
        "PerformedProcedureStepStartDate",
        VR::DA,
        Level::Series,
        true,
    ),
    attr(
        tags::PERFORMED_PROCEDURE_STEP_START_TIME,
        "PerformedProcedureStepStartTime",
        VR::TM,
        Level::Series,
        true,
    ),
    attr(
        tags::SOP_CLASS_UID,
        "SOPClassUID",
        VR::UI,
        Level::Instance,
        true,
    ),
    attr(
        tags::SOP_INSTANCE_UID,
        "SOPInstanceUID",
        VR::UI,
        Level::Instance,
        true,
    ),
    attr(
        tags::INSTANCE_NUMBER,
        "InstanceNumber",
        VR::IS,
        Level::Instance,
        true,
    ),
    attr(tags::ROWS, "Rows", VR::US, Level::Instance, true),
    attr(tags::COLUMNS, "Columns", VR::US, Level::Instance, true),
    attr(
        tags::BITS_ALLOCATED,
        "BitsAllocated",
        VR::US,
        Level::Instance,
        true,
    ),
    attr(
        tags::NUMBER_OF_FRAMES,
        "NumberOfFrames",
        VR::IS,
        Level::Instance,
        true,
    ),
    attr(
        tags::CONTENT_DATE,
        "ContentDate",
        VR::DA,
        Level::Instance,
        false,
    ),
    attr(
        tags::CONTENT_TIME,
        "ContentTime",
        VR::TM,
        Level::Instance,
        false,
    ),
];

/// Attributes computed from the index rather than read from an instance.
pub const COMPUTED: &[Attribute] = &[
    attr(
        tags::MODALITIES_IN_STUDY,
        "ModalitiesInStudy",
        VR::CS,
        Level::Study,
        true,
    ),
    attr(
        tags::SOP_CLASSES_IN_STUDY,
        "SOPClassesInStudy",
        VR::UI,
        Level::Study,
        false,
    ),
    attr(
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        "NumberOfStudyRelatedSeries",
        VR::IS,
        Level::Study,
        true,
    ),
    attr(
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        "NumberOfStudyRelatedInstances",
        VR::IS,
        Level::Study,
        true,
    ),
    attr(
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        "NumberOfSeriesRelatedInstances",
        VR::IS,
        Level::Series,
        true,
    ),
];

/// Index key of a tag: eight upper-case hex digits, as in DICOM JSON.
pub fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// The indexed or computed attribute with this keyword or `ggggeeee` tag.
pub fn attribute(name: &str) -> Option<&'static Attribute> {
    let tag = parse_tag(name);
    INDEXED
        .iter()
        .chain(COMPUTED)
        .find(|a| Some(a.tag) == tag || a.keyword == name)
}

/// A tag named by keyword (standard dictionary) or by eight hex digits.
pub fn parse_tag(name: &str) -> Option<Tag> {
    if name.len() == 8 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        let group = u16::from_str_radix(&name[..4], 16).ok()?;
        let element = u16::from_str_radix(&name[4..], 16).ok()?;
        return Some(Tag(group, element));
    }
    use dicom_core::dictionary::DataDictionary;
    StandardDataDictionary.by_name(name).map(|e| e.tag.inner())
}

/// The indexed attributes of an opened instance, by [`tag_key`]; values
/// keep DICOM's backslash between multiple values.
pub fn index_attributes(file: &DicomFile) -> BTreeMap<String, String> {
    INDEXED
        .iter()
        .filter_map(|a| Some((tag_key(a.tag), file.string(a.tag)?)))
        .collect()
}

/// Whether `value` (stored, backslash-separated values, or `None` when
/// absent) matches the query `pattern` for an attribute of `vr`, following
/// PS3.4 C.2.2.2: an empty pattern matches everything; UI takes a list of
/// UIDs (comma or backslash separated); DA, TM and DT take a single value
/// or a range `a-b`, `-b`, `a-`; other string VRs take `*` and `?`
/// wildcards; PN matching ignores case.
pub fn matches(vr: VR, pattern: &str, value: Option<&str>) -> bool {
    let pattern = pattern.trim();
    // Universal matching: empty, or a lone `*` (which matches an absent
    // value too, PS3.4 C.2.2.2.3).
    if pattern.is_empty() || pattern == "*" {
        return true;
    }
    let Some(value) = value else {
        return false;
    };
    // Several values in the key (backslash): any of them (multiple value
    // matching, PS3.4 C.2.2.2.8); UI lists are split by `matches_one`.
    let patterns: Vec<&str> = if vr == VR::UI {
        vec![pattern]
    } else {
        pattern.split('\\').map(str::trim).collect()
    };
    value
        .split('\\')
        .any(|v| patterns.iter().any(|p| matches_one(vr, p, v.trim())))
}

fn matches_one(vr: VR, pattern: &str, value: &str) -> bool {
    match vr {
        VR::UI => pattern.split([',', '\\']).any(|uid| uid.trim() == value),
        VR::DA | VR::TM | VR::DT => {
            let norm = |s: &str| -> String { s.chars().filter(|c| *c != ':').collect() };
            let value = norm(value);
            match pattern.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (norm(from.trim()), norm(to.trim()));
                    (from.is_empty() || value.as_str() >= from.as_str())
                        && (to.is_empty() || value.as_str() <= upper_bound(&to).as_str())
                }
                None => {
                    let p = norm(pattern);
                    if vr == VR::DA {
                        value == p
                    } else {
                        // A partial time matches every time it prefixes.
                        value.starts_with(&p)
                    }
                }
            }
        }
        VR::IS | VR::DS | VR::US | VR::UL | VR::SS | VR::SL => {
            match (pattern.parse::<f64>(), value.parse::<f64>()) {
                (Ok(p), Ok(v)) => p == v,
                _ => pattern == value,
            }
        }
        VR::PN => wildcard(&pattern.to_uppercase(), &value.to_uppercase()),
        _ => wildcard(pattern, value),
    }
}

/// The largest value with `bound` as prefix, for inclusive upper bounds of
/// partial times.
fn upper_bound(bound: &str) -> String {
    format!("{bound}\u{10FFFF}")
}

/// `*` any run, `?` any one character, the rest literally.
fn wildcard(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One attribute in the DICOM JSON model (PS3.18 F.2.2) from its stored
/// text: PN as `{"Alphabetic", "Ideographic", "Phonetic"}` objects, IS,
/// DS and binary integers as numbers (values that do not parse are left
/// out), the rest as strings. An absent or empty value gives an element
/// with its VR and no `Value`.
pub fn json_element(vr: VR, text: Option<&str>) -> Value {
    let mut element = serde_json::Map::new();
    element.insert("vr".into(), Value::String(vr.to_string().into()));
    let values: Vec<Value> = text
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.split('\\')
                .filter_map(|v| {
                    let v = v.trim_matches(|c: char| c == ' ' || c == '\0');
                    match vr {
                        VR::PN => {
                            let mut groups = v.split('=');
                            let mut name = serde_json::Map::new();
                            for key in ["Alphabetic", "Ideographic", "Phonetic"] {
                                if let Some(g) = groups.next().filter(|g| !g.is_empty()) {
                                    name.insert(key.into(), Value::String(g.into()));
                                }
                            }
                            Some(Value::Object(name))
                        }
                        VR::IS | VR::US | VR::UL | VR::SS | VR::SL => {
                            v.parse::<i64>().ok().map(Value::from)
                        }
                        VR::DS | VR::FL | VR::FD => v
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(Value::Number),
                        _ => Some(Value::String(v.into())),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if !values.is_empty() {
        element.insert("Value".into(), Value::Array(values));
    }
    Value::Object(element)
}

/// The header of a stored instance (everything before Pixel Data, without
/// the file meta group) in the DICOM JSON model, as WADO-RS metadata
/// returns it (PS3.18 F.2). Binary values (OB, OW, OF, OD, OL, OV, UN, at
/// any depth) are not carried: each gets a `BulkDataURI` under `bulk`
/// (the instance's `…/bulkdata` URL) followed by its
/// [`crate::frames::BulkPath`]; so does Pixel Data (`…/bulkdata/7FE00010`,
/// VR OB when encapsulated or 8-bit, else OW) when the instance has it.
/// `bulk` of `None` leaves binary values out.
pub fn metadata(path: &Path, bulk: Option<&str>) -> Result<Value> {
    let file = DicomFile::open_header(path)?;
    // Binary values are emptied before the DICOM JSON writer sees them
    // (it would write each as base64 text, only for it to be dropped).
    let mut object: InMemDicomObject = (**file.object()).clone();
    empty_binary_values(&mut object);
    let mut value = dicom_json::to_value(&object).map_err(|e| Error::Open {
        path: path.to_path_buf(),
        reason: format!("cannot write the header as DICOM JSON: {e}"),
    })?;
    if let Value::Object(map) = &mut value {
        bulk_references(map, bulk, "");
        let layout = file
            .scanned()
            .map(|s| (&s.pixel_data, s.image.bits_allocated));
        if let (Some(base), Some((layout, bits))) = (bulk, layout) {
            let vr = match layout {
                crate::scan::PixelDataLayout::Absent => None,
                crate::scan::PixelDataLayout::Encapsulated { .. } => Some("OB"),
                crate::scan::PixelDataLayout::Native { .. } => {
                    Some(if bits.unwrap_or(16) <= 8 { "OB" } else { "OW" })
                }
            };
            // Float Pixel Data (7FE0,0008/0009) precede Pixel Data and are
            // bulk references already; Pixel Data itself was not read.
            if let Some(vr) =
                vr.filter(|_| !map.contains_key("7FE00008") && !map.contains_key("7FE00009"))
            {
                map.insert(
                    "7FE00010".into(),
                    json!({ "vr": vr, "BulkDataURI": format!("{base}/7FE00010") }),
                );
            }
        }
    }
    Ok(value)
}

/// Replace every non-empty binary value (and nested encapsulated pixel
/// data) of a data set and of its sequences' items by one byte, a marker
/// the JSON writer turns into a short `InlineBinary` that
/// [`bulk_references`] then replaces by a BulkDataURI; empty binary
/// values stay empty (PS3.18 F.2: an empty attribute has only its VR).
fn empty_binary_values(object: &mut InMemDicomObject) {
    use dicom_core::value::{PrimitiveValue, Value as DicomValue};
    let tags: Vec<(Tag, bool)> = object
        .iter()
        .map(|e| {
            let binary = match e.value() {
                DicomValue::PixelSequence(s) => !s.fragments().is_empty(),
                DicomValue::Primitive(p) => {
                    crate::frames::is_bulk_vr(e.vr()) && p.calculate_byte_len() > 0
                }
                DicomValue::Sequence(_) => false,
            };
            (e.header().tag, binary)
        })
        .collect();
    for (tag, binary) in tags {
        object.update_value(tag, |value| {
            if binary {
                *value = DicomValue::Primitive(PrimitiveValue::U8(vec![0u8].into()));
            } else if let Some(items) = value.items_mut() {
                items.iter_mut().for_each(empty_binary_values);
            }
        });
    }
}

/// Replace each binary value of a DICOM JSON data set (and of its
/// sequences' items) by a `BulkDataURI` under `bulk`, or remove it.
fn bulk_references(map: &mut serde_json::Map<String, Value>, bulk: Option<&str>, prefix: &str) {
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let Some(Value::Object(element)) = map.get_mut(&key) else {
            continue;
        };
        let binary = element
            .get("vr")
            .and_then(Value::as_str)
            .and_then(|vr| vr.parse::<VR>().ok())
            .is_some_and(crate::frames::is_bulk_vr)
            && (element.contains_key("InlineBinary") || element.contains_key("Value"));
        if binary {
            element.remove("InlineBinary");
            element.remove("Value");
            match bulk {
                Some(base) => {
                    element.insert(
                        "BulkDataURI".into(),
                        Value::String(format!("{base}/{prefix}{key}")),
                    );
                }
                None => {
                    map.remove(&key);
                }
            }
            continue;
        }
        if let Some(Value::Array(items)) = element.get_mut("Value") {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::Object(item) = item {
                    bulk_references(item, bulk, &format!("{prefix}{key}.{i}."));
                }
            }
        }
    }
}

/// One attribute of a stored instance's header (before Pixel Data) in the
/// DICOM JSON model, for `includefield` of attributes the index does not
/// hold; `None` when the instance has no such attribute.
pub fn element_json(path: &Path, tag: Tag) -> Result<Option<Value>> {
    let file = DicomFile::open_header(path)?;
    let Some(element) = file.object().get(tag) else {
        return Ok(None);
    };
    let mut one = InMemDicomObject::new_empty();
    one.put(element.clone());
    let value = dicom_json::to_value(&one).map_err(|e| Error::Open {
        path: path.to_path_buf(),
        reason: format!("cannot write {} as DICOM JSON: {e}", tag_key(tag)),
    })?;
    Ok(value.get(tag_key(tag)).cloned())
}

/// Convert a stored file into Explicit VR Little Endian (decoding
/// compressed pixel data), as a Part 10 byte stream, for clients that do
/// not accept the stored transfer syntax. The new file is Vigie's: its
/// file meta group names Vigie's Implementation Class UID and Version
/// Name (PS3.10 7.1), not those of the application that wrote the
/// original. A decoder that panics (dicom-rs's, on some corrupt streams)
/// is an error like any other.
pub fn transcode_to_explicit_le(path: &Path) -> Result<Vec<u8>> {
    std::panic::catch_unwind(|| transcode(path)).unwrap_or_else(|panic| {
        Err(Error::DecodePixelData {
            path: path.to_path_buf(),
            sop_instance_uid: "unknown".into(),
            reason: format!(
                "decoder panicked while transcoding: {}",
                crate::pixels::panic_message(&panic)
            ),
        })
    })
}

fn transcode(path: &Path) -> Result<Vec<u8>> {
    let object = transcoded_object(path)?;
    let mut out = Vec::new();
    object.write_all(&mut out).map_err(|e| Error::Open {
        path: path.to_path_buf(),
        reason: format!("cannot write the transcoded file: {e}"),
    })?;
    Ok(out)
}

/// The stored file transcoded to Explicit VR Little Endian, in memory, its
/// file meta group naming Vigie as the writer (see
/// [`transcode_to_explicit_le`], which writes it out; the caller catches
/// decoder panics).
pub(crate) fn transcoded_object(path: &Path) -> Result<dicom_object::DefaultDicomObject> {
    // Decoding happens in memory: the file must pass the scan, and its
    // decoded pixel data stay within the limit, before anything is read.
    let limits = crate::scan::limits();
    let scanned = crate::scan::scan_file(path, &limits)?;
    if let Err(problem) = scanned.check_pixel_data(&limits) {
        return Err(Error::Limit {
            path: path.to_path_buf(),
            limit: "max_decoded_bytes",
            reason: format!("not transcoded: {problem}"),
        });
    }
    let mut object = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| Error::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let failed = |reason: String| Error::Open {
        path: path.to_path_buf(),
        reason,
    };
    let ts = TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| failed("Explicit VR Little Endian unknown to this build".into()))?;
    object.transcode(ts).map_err(|e| {
        failed(format!(
            "cannot transcode to Explicit VR Little Endian: {e}"
        ))
    })?;
    object.update_meta(|meta| {
        meta.implementation_class_uid = crate::write::IMPLEMENTATION_CLASS_UID.to_string();
        meta.implementation_version_name =
            Some(crate::write::IMPLEMENTATION_VERSION_NAME.to_string());
    });
    Ok(object)
}

/// A DICOM JSON element for a computed attribute with several values.
pub fn json_values(vr: VR, values: &[String]) -> Value {
    if values.is_empty() {
        return json!({ "vr": vr.to_string() });
    }
    json_element(vr, Some(&values.join("\\")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_c_find() {
        assert!(matches(VR::PN, "doe*", Some("DOE^JOHN")));
        assert!(matches(VR::PN, "D?E^J*", Some("Doe^John")));
        assert!(!matches(VR::PN, "Smith*", Some("Doe^John")));
        assert!(matches(VR::LO, "", None));
        assert!(!matches(VR::LO, "X", None));
        assert!(matches(VR::CS, "CT", Some("MR\\CT")));
        assert!(!matches(VR::CS, "ct", Some("CT")));
        assert!(matches(VR::SH, "A*1", Some("A0001")));
        assert!(!matches(VR::SH, "A*2", Some("A0001")));
        // Multiple value matching and the universal `*` (C-FIND review).
        assert!(matches(VR::CS, "CT\\MR", Some("MR")));
        assert!(matches(VR::CS, "CT\\MR", Some("SR\\MR")));
        assert!(!matches(VR::CS, "CT\\MR", Some("SR")));
        assert!(
            matches(VR::LO, "*", None),
            "a lone * matches an absent value"
        );
    }

    #[test]
    fn uid_lists_and_ranges() {
        assert!(matches(VR::UI, "1.2,1.3", Some("1.3")));
        assert!(matches(VR::UI, "1.2\\1.3", Some("1.2")));
        assert!(!matches(VR::UI, "1.2,1.3", Some("1.23")));
        assert!(matches(VR::DA, "20200101-20201231", Some("20200615")));
        assert!(!matches(VR::DA, "20200101-20201231", Some("20210101")));
        assert!(matches(VR::DA, "-20200101", Some("20191231")));
        assert!(matches(VR::DA, "20200101-", Some("20200101")));
        assert!(matches(VR::DA, "20200101", Some("20200101")));
        assert!(matches(VR::TM, "10-11", Some("105959.123")));
        assert!(matches(VR::TM, "0800-1100", Some("110030")));
        assert!(!matches(VR::TM, "0800-1100", Some("110100")));
        assert!(matches(VR::TM, "10", Some("103000")));
        assert!(matches(VR::IS, "5", Some("05")));
    }

    #[test]
    fn json_model_encodes_by_vr() {
        assert_eq!(
            json_element(VR::PN, Some("Doe^John=ド^ジ")),
            json!({"vr": "PN", "Value": [{"Alphabetic": "Doe^John", "Ideographic": "ド^ジ"}]})
        );
        assert_eq!(
            json_element(VR::IS, Some("3\\4")),
            json!({"vr": "IS", "Value": [3, 4]})
        );
        assert_eq!(
            json_element(VR::DS, Some("0.5")),
            json!({"vr": "DS", "Value": [0.5]})
        );
        assert_eq!(json_element(VR::LO, None), json!({"vr": "LO"}));
        assert_eq!(
            json_values(VR::CS, &["CT".into(), "SR".into()]),
            json!({"vr": "CS", "Value": ["CT", "SR"]})
        );
    }

    #[test]
    fn attributes_by_keyword_or_tag() {
        assert_eq!(
            attribute("PatientName").map(|a| a.tag),
            Some(tags::PATIENT_NAME)
        );
        assert_eq!(attribute("00100020").map(|a| a.keyword), Some("PatientID"));
        assert_eq!(
            parse_tag("SeriesInstanceUID"),
            Some(tags::SERIES_INSTANCE_UID)
        );
        assert_eq!(parse_tag("NotAKeyword"), None);
    }
}
