//! The Query SCP's answers (C-FIND, PS3.4 C.4.1): a request identifier
//! read into a web-index [`Search`], matched over what the appliance holds
//! (received instances and its own result objects) with the QIDO-RS
//! matching (PS3.4 C.2.2.2: single values, wildcards, UID lists, ranges),
//! and each match written back as a response identifier holding every
//! key asked for (values the index holds; zero length for those it does
//! not).
//!
//! Study Root (STUDY, SERIES, IMAGE levels) and Patient Root (PATIENT,
//! STUDY, SERIES, IMAGE). Keys above the queried level match as given (no
//! hierarchical check that they are unique keys: a relational-style
//! leniency that PS3.4 C.4.1.2.2.1 allows an SCP to offer without
//! negotiating it, at no risk since every key is matched).

use std::collections::BTreeMap;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::scp::{FindAnswer, FindRequest};
use vigie_dicom_io::web::{self, Level};
use vigie_store::query::{Group, MAX_LIMIT, Search, groups};
use vigie_store::{WebIndex, WebScope};

use vigie_dicom_io::net::find::{PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE};

/// Status A900: identifier does not match SOP class.
const IDENTIFIER_MISMATCH: u16 = 0xA900;
/// Status C000: unable to process.
const UNABLE_TO_PROCESS: u16 = 0xC000;

/// The queried level, as the identifier's Query/Retrieve Level says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryLevel {
    /// PATIENT (Patient Root only).
    Patient,
    /// STUDY, SERIES or IMAGE.
    Index(Level),
}

impl QueryLevel {
    /// The level's name as written in (0008,0052).
    pub fn name(self) -> &'static str {
        match self {
            Self::Patient => "PATIENT",
            Self::Index(Level::Study) => "STUDY",
            Self::Index(Level::Series) => "SERIES",
            Self::Index(Level::Instance) => "IMAGE",
        }
    }
}

/// What one request asked, for the audit trail and the log: level and
/// the keywords of its matching keys (never their values: a Patient Name
/// pattern is a patient identifier).
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// The level's name.
    pub level: String,
    /// Keywords (or tags) of the keys with a value.
    pub keys: Vec<String>,
}

fn text(element: &DataElement<InMemDicomObject>) -> String {
    element
        .to_str()
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

/// A request read: its level, search, the index rows in scope, and what it
/// asked (for the trail); or the failure to answer.
struct Prepared {
    level: QueryLevel,
    search_level: Level,
    search: Search,
    rows: Vec<vigie_store::WebInstance>,
    asked: Asked,
    /// A key with a value was not matched (the index does not hold it,
    /// or it is a count of another level): pending status FF01.
    unsupported: bool,
}

/// Most keys in a request identifier.
const MAX_KEYS: usize = 256;
/// Status A700: out of resources.
const OUT_OF_RESOURCES: u16 = 0xA700;

/// Whether the index's value of `tag` means something at `level`: the
/// counts and lists over a study at STUDY level only, the series count at
/// SERIES level only (at another level a group's value would be the wrong
/// aggregate).
fn answered_at(tag: Tag, level: Level) -> bool {
    match tag {
        tags::NUMBER_OF_STUDY_RELATED_SERIES
        | tags::NUMBER_OF_STUDY_RELATED_INSTANCES
        | tags::MODALITIES_IN_STUDY
        | tags::SOP_CLASSES_IN_STUDY => level == Level::Study,
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES => level == Level::Series,
        _ => true,
    }
}

fn prepare(
    index: &dyn WebIndex,
    identifier: &InMemDicomObject,
    model: &str,
) -> Result<Prepared, (u16, String, Asked)> {
    let failure = |code: u16, comment: &str, asked: Asked| Err((code, comment.to_string(), asked));
    let level_text = identifier
        .element(tags::QUERY_RETRIEVE_LEVEL)
        .map(text)
        .unwrap_or_default();
    let patient_root = [PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET]
        .contains(&model.trim_end_matches('\0'));
    let level = match level_text.as_str() {
        "PATIENT" if patient_root => QueryLevel::Patient,
        "STUDY" => QueryLevel::Index(Level::Study),
        "SERIES" => QueryLevel::Index(Level::Series),
        "IMAGE" => QueryLevel::Index(Level::Instance),
        _ => {
            return failure(
                IDENTIFIER_MISMATCH,
                "Query/Retrieve Level missing or not of this model",
                Asked::default(),
            );
        }
    };
    let search_level = match level {
        QueryLevel::Patient => Level::Study,
        QueryLevel::Index(l) => l,
    };
    // The keys, as QIDO-RS parameters named by tag (so that attributes the
    // index does not hold are set aside, not refused).
    let mut params = Vec::new();
    let mut asked = Asked {
        level: level.name().to_string(),
        keys: Vec::new(),
    };
    let mut study_scope = None;
    if identifier.iter().count() > MAX_KEYS {
        return failure(
            OUT_OF_RESOURCES,
            &format!("more than {MAX_KEYS} keys in the identifier"),
            asked,
        );
    }
    let mut unsupported = false;
    for element in identifier.iter() {
        let tag = element.header().tag;
        if tag == tags::QUERY_RETRIEVE_LEVEL || tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        if element.vr() == VR::SQ {
            continue;
        }
        let value = text(element);
        if value.is_empty() {
            continue;
        }
        let keyword = web::attribute(&web::tag_key(tag))
            .map_or_else(|| web::tag_key(tag), |a| a.keyword.to_string());
        if !answered_at(tag, search_level) {
            // A count of another level: not matched, returned empty.
            unsupported = true;
            continue;
        }
        if level == QueryLevel::Patient
            && !matches!(
                tag,
                tags::PATIENT_NAME
                    | tags::PATIENT_ID
                    | tags::PATIENT_BIRTH_DATE
                    | tags::PATIENT_SEX
            )
        {
            continue;
        }
        if tag == tags::STUDY_INSTANCE_UID && !value.contains(['\\', '*', '?', ',']) {
            study_scope = Some(value.clone());
        }
        asked.keys.push(keyword);
        params.push((web::tag_key(tag), value));
    }
    let search = match Search::parse(params, search_level) {
        Ok(s) => s,
        Err(e) => return failure(UNABLE_TO_PROCESS, &e.to_string(), asked),
    };
    let unsupported = unsupported || !search.ignored.is_empty();
    let scope = WebScope {
        study: study_scope,
        series: None,
        instance: None,
    };
    let rows = match index.web_instances(&scope) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "C-FIND: the index cannot be read");
            return failure(UNABLE_TO_PROCESS, "the index cannot be read", asked);
        }
    };
    Ok(Prepared {
        level,
        search_level,
        search,
        rows,
        asked,
        unsupported,
    })
}

/// Answer a C-FIND over `index`.
pub fn answer(index: &dyn WebIndex, request: &FindRequest) -> (FindAnswer, Asked) {
    let Prepared {
        level,
        search_level,
        search,
        rows,
        asked,
        unsupported,
    } = match prepare(index, &request.identifier, &request.model) {
        Ok(p) => p,
        Err((status, comment, asked)) => {
            return (
                FindAnswer {
                    matches: Vec::new(),
                    status,
                    comment: Some(comment),
                    unsupported_keys: false,
                },
                asked,
            );
        }
    };
    let identifier = &request.identifier;
    let grouped = groups(search_level, &rows);
    let matched: Vec<&Group<'_>> = grouped.iter().filter(|g| search.matches(g)).collect();
    let mut matches = Vec::new();
    match level {
        QueryLevel::Patient => {
            let mut patients: BTreeMap<String, Vec<&Group<'_>>> = BTreeMap::new();
            for g in &matched {
                let id = g
                    .value(patient_attribute(tags::PATIENT_ID))
                    .unwrap_or_default();
                patients.entry(id).or_default().push(g);
            }
            for studies in patients.values().take(MAX_LIMIT) {
                matches.push(patient_identifier(identifier, studies));
            }
        }
        QueryLevel::Index(l) => {
            for g in matched.iter().take(MAX_LIMIT) {
                matches.push(group_identifier(identifier, g, l));
            }
        }
    }
    if matched.len() > MAX_LIMIT {
        tracing::warn!(
            matches = matched.len(),
            sent = MAX_LIMIT,
            "C-FIND: more matches than sent"
        );
    }
    (
        FindAnswer {
            matches,
            status: status::SUCCESS,
            comment: None,
            unsupported_keys: unsupported,
        },
        asked,
    )
}

/// The files of the instances a C-MOVE identifier matches (every instance
/// of each matching patient, study or series), in index order; or the
/// failure to answer.
pub fn instances(
    index: &dyn WebIndex,
    identifier: &InMemDicomObject,
    model: &str,
) -> Result<(Vec<std::path::PathBuf>, Asked), (u16, String, Asked)> {
    let Prepared {
        level,
        search_level,
        search,
        rows,
        asked,
        ..
    } = prepare(index, identifier, model)?;
    let key = |row: &vigie_store::WebInstance| -> (String, String, String) {
        match search_level {
            Level::Study => (row.study_instance_uid.clone(), String::new(), String::new()),
            Level::Series => (
                row.study_instance_uid.clone(),
                row.series_instance_uid.clone(),
                String::new(),
            ),
            Level::Instance => (
                row.study_instance_uid.clone(),
                row.series_instance_uid.clone(),
                row.sop_instance_uid.clone(),
            ),
        }
    };
    let grouped = groups(search_level, &rows);
    let matched: std::collections::BTreeSet<(String, String, String)> = match level {
        QueryLevel::Patient => {
            // Every study of each matching patient.
            let patients: std::collections::BTreeSet<String> = grouped
                .iter()
                .filter(|g| search.matches(g))
                .filter_map(|g| g.value(patient_attribute(tags::PATIENT_ID)))
                .collect();
            grouped
                .iter()
                .filter(|g| {
                    g.value(patient_attribute(tags::PATIENT_ID))
                        .is_some_and(|id| patients.contains(&id))
                })
                .map(|g| key(g.first))
                .collect()
        }
        QueryLevel::Index(_) => grouped
            .iter()
            .filter(|g| search.matches(g))
            .map(|g| key(g.first))
            .collect(),
    };
    let files = rows
        .iter()
        .filter(|r| matched.contains(&key(r)))
        .map(|r| r.path.clone())
        .collect();
    Ok((files, asked))
}

fn patient_attribute(tag: Tag) -> &'static web::Attribute {
    // The patient attributes are in the index's table (checked by test).
    web::INDEXED
        .iter()
        .find(|a| a.tag == tag)
        .unwrap_or(&web::INDEXED[0])
}

/// Every part parsed as a `T`, or `None` when one does not parse.
fn parsed<T: std::str::FromStr>(parts: &[&str]) -> Option<Vec<T>> {
    parts.iter().map(|p| p.parse::<T>().ok()).collect()
}

/// An element of `vr` holding `value` (backslash-separated values): text
/// for the string VRs, numbers for the binary ones (a value that does not
/// parse as the VR's number leaves the element empty).
fn element(tag: Tag, vr: VR, value: Option<String>) -> DataElement<InMemDicomObject> {
    let value = value.filter(|v| !v.is_empty());
    if let Some(v) = &value {
        let parts: Vec<&str> = v.split('\\').map(str::trim).collect();
        let numbers = match vr {
            VR::US => parsed::<u16>(&parts).map(|n| PrimitiveValue::U16(n.into())),
            VR::UL => parsed::<u32>(&parts).map(|n| PrimitiveValue::U32(n.into())),
            VR::SS => parsed::<i16>(&parts).map(|n| PrimitiveValue::I16(n.into())),
            VR::SL => parsed::<i32>(&parts).map(|n| PrimitiveValue::I32(n.into())),
            VR::FL => parsed::<f32>(&parts).map(|n| PrimitiveValue::F32(n.into())),
            VR::FD => parsed::<f64>(&parts).map(|n| PrimitiveValue::F64(n.into())),
            VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN | VR::SQ => {
                Some(PrimitiveValue::Empty)
            }
            _ => None,
        };
        if let Some(number) = numbers {
            return DataElement::new(tag, vr, number);
        }
        if matches!(vr, VR::US | VR::UL | VR::SS | VR::SL | VR::FL | VR::FD) {
            return DataElement::new(tag, vr, PrimitiveValue::Empty);
        }
    }
    match value {
        None => DataElement::new(tag, vr, PrimitiveValue::Empty),
        Some(v) if v.contains('\\') => DataElement::new(
            tag,
            vr,
            PrimitiveValue::Strs(v.split('\\').map(str::to_string).collect()),
        ),
        Some(v) => DataElement::new(tag, vr, PrimitiveValue::from(v)),
    }
}

/// The response identifier: Query/Retrieve Level, then every key of the
/// request with the group's value (zero length when the index does not
/// hold it, or it belongs to a level below the one queried).
fn group_identifier(
    request: &InMemDicomObject,
    group: &Group<'_>,
    level: Level,
) -> InMemDicomObject {
    let mut out = InMemDicomObject::new_empty();
    let mut non_ascii = false;
    for asked in request.iter() {
        let tag = asked.header().tag;
        if tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        if tag == tags::QUERY_RETRIEVE_LEVEL {
            out.put(asked.clone());
            continue;
        }
        let known = web::attribute(&web::tag_key(tag))
            .filter(|a| a.level <= level && answered_at(a.tag, level));
        let value = known.and_then(|a| group.value(a));
        non_ascii |= value.as_deref().is_some_and(|v| !v.is_ascii());
        let vr = known.map_or(asked.vr(), |a| a.vr);
        out.put(element(tag, vr, value));
    }
    // The unique keys of the level and the levels above, asked for or not
    // (PS3.4 C.4.1.2.2: the SCP returns them), and the Patient ID.
    let first = group.first;
    let mut unique = vec![
        (
            tags::PATIENT_ID,
            VR::LO,
            first
                .attributes
                .get(&web::tag_key(tags::PATIENT_ID))
                .cloned(),
        ),
        (
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            Some(first.study_instance_uid.clone()),
        ),
    ];
    if level != Level::Study {
        unique.push((
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            Some(first.series_instance_uid.clone()),
        ));
    }
    if level == Level::Instance {
        unique.push((
            tags::SOP_INSTANCE_UID,
            VR::UI,
            Some(first.sop_instance_uid.clone()),
        ));
    }
    for (tag, vr, value) in unique {
        if out.element(tag).is_err() {
            non_ascii |= value.as_deref().is_some_and(|v| !v.is_ascii());
            out.put(element(tag, vr, value));
        }
    }
    if non_ascii {
        out.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from("ISO_IR 192"),
        ));
    }
    out
}

/// The response identifier of a patient: its attributes from its first
/// study, and the counts over its studies.
fn patient_identifier(request: &InMemDicomObject, studies: &[&Group<'_>]) -> InMemDicomObject {
    let mut out = InMemDicomObject::new_empty();
    let mut non_ascii = false;
    let first = studies[0];
    for asked in request.iter() {
        let tag = asked.header().tag;
        let value = match tag {
            tags::SPECIFIC_CHARACTER_SET => continue,
            tags::QUERY_RETRIEVE_LEVEL => {
                out.put(asked.clone());
                continue;
            }
            tags::PATIENT_NAME
            | tags::PATIENT_ID
            | tags::PATIENT_BIRTH_DATE
            | tags::PATIENT_SEX => first.value(patient_attribute(tag)),
            tags::NUMBER_OF_PATIENT_RELATED_STUDIES => Some(studies.len().to_string()),
            tags::NUMBER_OF_PATIENT_RELATED_SERIES => Some(
                studies
                    .iter()
                    .filter_map(|g| {
                        g.value(
                            web::COMPUTED
                                .iter()
                                .find(|a| a.tag == tags::NUMBER_OF_STUDY_RELATED_SERIES)?,
                        )
                    })
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
                    .to_string(),
            ),
            tags::NUMBER_OF_PATIENT_RELATED_INSTANCES => Some(
                studies
                    .iter()
                    .filter_map(|g| {
                        g.value(
                            web::COMPUTED
                                .iter()
                                .find(|a| a.tag == tags::NUMBER_OF_STUDY_RELATED_INSTANCES)?,
                        )
                    })
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
                    .to_string(),
            ),
            _ => None,
        };
        non_ascii |= value.as_deref().is_some_and(|v| !v.is_ascii());
        let vr = match tag {
            tags::NUMBER_OF_PATIENT_RELATED_STUDIES
            | tags::NUMBER_OF_PATIENT_RELATED_SERIES
            | tags::NUMBER_OF_PATIENT_RELATED_INSTANCES => VR::IS,
            _ => asked.vr(),
        };
        out.put(element(tag, vr, value));
    }
    if non_ascii {
        out.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from("ISO_IR 192"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patient_attributes_are_in_the_index() {
        for tag in [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
        ] {
            assert_eq!(patient_attribute(tag).tag, tag);
        }
    }
}
