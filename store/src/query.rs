//! Searches of the web index at a level (study, series, instance), as
//! QIDO-RS (PS3.18 10.6) asks them and as C-FIND (PS3.4 C.2) will: the
//! query parameters parsed into a [`Search`], the index's instances grouped
//! at the queried level ([`groups`]), each group's attribute values as
//! stored or computed (ModalitiesInStudy, NumberOf…, [`Group::value`]) and
//! matched by PS3.4 C.2.2.2 ([`vigie_dicom_io::web::matches`]: single
//! value, wildcards `*` `?`, UID lists, date/time ranges; PN ignores case).
//! Keys of the queried level or above are matched; other keys are listed in
//! [`Search::ignored`], as are `fuzzymatching=true` and attributes the
//! index does not hold. Rendering (DICOM JSON, HTTP headers) is the
//! caller's.

use std::collections::{BTreeMap, BTreeSet};

use dicom_core::Tag;
use vigie_dicom_io::web::{self, Attribute, Level};

use crate::WebInstance;

/// Largest page, and the page when `limit` is not given.
pub const MAX_LIMIT: usize = 1000;

/// Query parameters that cannot be searched with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// `limit` or `offset` is not a number.
    #[error("{parameter}={value:?} is not a number")]
    NotANumber {
        /// `limit` or `offset`.
        parameter: &'static str,
        /// The value given.
        value: String,
    },
    /// `includefield` names no known attribute.
    #[error("includefield {name:?}: unknown attribute")]
    UnknownInclude {
        /// The name given.
        name: String,
    },
    /// A parameter that is neither an attribute nor a search parameter.
    #[error("query parameter {name:?} is neither a DICOM attribute nor a QIDO-RS parameter")]
    UnknownParameter {
        /// The name given.
        name: String,
    },
}

/// A search, parsed.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Matching keys: an attribute of the queried level or above, and its
    /// pattern.
    pub keys: Vec<(&'static Attribute, String)>,
    /// Attributes asked for beyond the defaults (`includefield`).
    pub include: Vec<Tag>,
    /// `includefield=all`.
    pub include_all: bool,
    /// Page size, at most [`MAX_LIMIT`].
    pub limit: usize,
    /// Results skipped before the page.
    pub offset: usize,
    /// Parameters ignored (another level's keys, attributes the index does
    /// not hold, `fuzzymatching=true`), for the caller's warning.
    pub ignored: Vec<String>,
}

impl Search {
    /// Parse the query parameters of a search at `level`.
    pub fn parse(params: Vec<(String, String)>, level: Level) -> Result<Search, QueryError> {
        let mut s = Search {
            limit: MAX_LIMIT,
            ..Search::default()
        };
        for (key, value) in params {
            match key.as_str() {
                "limit" => {
                    s.limit = value
                        .parse::<usize>()
                        .map_err(|_| QueryError::NotANumber {
                            parameter: "limit",
                            value: value.clone(),
                        })?
                        .min(MAX_LIMIT);
                }
                "offset" => {
                    s.offset = value.parse().map_err(|_| QueryError::NotANumber {
                        parameter: "offset",
                        value: value.clone(),
                    })?;
                }
                "fuzzymatching" => {
                    if value == "true" {
                        s.ignored.push("fuzzymatching".into());
                    }
                }
                "includefield" => {
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if name == "all" {
                            s.include_all = true;
                        } else {
                            let tag =
                                web::parse_tag(name).ok_or_else(|| QueryError::UnknownInclude {
                                    name: name.to_string(),
                                })?;
                            s.include.push(tag);
                        }
                    }
                }
                name => match web::attribute(name) {
                    Some(attr) if attr.level <= level => s.keys.push((attr, value)),
                    Some(_) => s.ignored.push(name.to_string()),
                    None if web::parse_tag(name).is_some() => s.ignored.push(name.to_string()),
                    None => {
                        return Err(QueryError::UnknownParameter {
                            name: name.to_string(),
                        });
                    }
                },
            }
        }
        Ok(s)
    }

    /// The attributes a result at `level` carries: the level's defaults,
    /// the matching keys and those `includefield` asks for that the index
    /// holds or computes.
    pub fn returned(&self, level: Level) -> Vec<&'static Attribute> {
        use dicom_dictionary_std::tags;
        let mut out: Vec<&'static Attribute> = web::INDEXED
            .iter()
            .chain(web::COMPUTED)
            .filter(|a| a.level <= level)
            .filter(|a| {
                // Counts and lists over a study mean something only for studies;
                // the series count only for series.
                let study_only = [
                    tags::NUMBER_OF_STUDY_RELATED_SERIES,
                    tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
                    tags::MODALITIES_IN_STUDY,
                    tags::SOP_CLASSES_IN_STUDY,
                ];
                (!study_only.contains(&a.tag) || level == Level::Study)
                    && (a.tag != tags::NUMBER_OF_SERIES_RELATED_INSTANCES || level == Level::Series)
            })
            .filter(|a| {
                self.include_all
                    || a.default
                    || self.include.contains(&a.tag)
                    || self.keys.iter().any(|(k, _)| k.tag == a.tag)
            })
            .collect();
        out.dedup_by_key(|a| a.tag);
        out
    }

    /// Whether `group` matches every key.
    pub fn matches(&self, group: &Group<'_>) -> bool {
        self.keys
            .iter()
            .all(|(attr, pattern)| web::matches(attr.vr, pattern, group.value(attr).as_deref()))
    }
}

/// Instances grouped at the queried level.
#[derive(Debug)]
pub struct Group<'a> {
    /// The group's first instance, whose attributes stand for the group's.
    pub first: &'a WebInstance,
    instances: usize,
    series: BTreeSet<&'a str>,
    modalities: BTreeSet<String>,
    classes: BTreeSet<&'a str>,
}

fn group_key(level: Level, i: &WebInstance) -> (&str, &str, &str) {
    match level {
        Level::Study => (&i.study_instance_uid, "", ""),
        Level::Series => (&i.study_instance_uid, &i.series_instance_uid, ""),
        Level::Instance => (
            &i.study_instance_uid,
            &i.series_instance_uid,
            &i.sop_instance_uid,
        ),
    }
}

/// The instances `rows` grouped at `level`; studies ordered by Study Date
/// (newest first), then UID.
pub fn groups(level: Level, rows: &[WebInstance]) -> Vec<Group<'_>> {
    let mut out: BTreeMap<(&str, &str, &str), Group<'_>> = BTreeMap::new();
    // Study-level counts cover the whole study, whatever the level.
    for row in rows {
        let g = out.entry(group_key(level, row)).or_insert_with(|| Group {
            first: row,
            instances: 0,
            series: BTreeSet::new(),
            modalities: BTreeSet::new(),
            classes: BTreeSet::new(),
        });
        g.instances += 1;
        g.series.insert(&row.series_instance_uid);
        g.classes.insert(&row.sop_class_uid);
        if let Some(m) = row
            .attributes
            .get(&web::tag_key(dicom_dictionary_std::tags::MODALITY))
        {
            g.modalities.insert(m.clone());
        }
    }
    let mut groups: Vec<Group<'_>> = out.into_values().collect();
    // Stable order: newest stored last as the index gives them; studies
    // by Study Date then UID for a reproducible listing.
    if level == Level::Study {
        let date = web::tag_key(dicom_dictionary_std::tags::STUDY_DATE);
        groups.sort_by(|a, b| {
            b.first
                .attributes
                .get(&date)
                .cmp(&a.first.attributes.get(&date))
                .then(a.first.study_instance_uid.cmp(&b.first.study_instance_uid))
        });
    }
    groups
}

impl Group<'_> {
    /// The text of an attribute for a group, as stored or computed.
    pub fn value(&self, attr: &Attribute) -> Option<String> {
        use dicom_dictionary_std::tags;
        let i = self.first;
        match attr.tag {
            tags::STUDY_INSTANCE_UID => Some(i.study_instance_uid.clone()),
            tags::SERIES_INSTANCE_UID => Some(i.series_instance_uid.clone()),
            tags::SOP_INSTANCE_UID => Some(i.sop_instance_uid.clone()),
            tags::SOP_CLASS_UID => Some(i.sop_class_uid.clone()),
            tags::MODALITIES_IN_STUDY => Some(
                self.modalities
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\\"),
            )
            .filter(|s| !s.is_empty()),
            tags::SOP_CLASSES_IN_STUDY => {
                Some(self.classes.iter().copied().collect::<Vec<_>>().join("\\"))
            }
            tags::NUMBER_OF_STUDY_RELATED_SERIES => Some(self.series.len().to_string()),
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES | tags::NUMBER_OF_SERIES_RELATED_INSTANCES => {
                Some(self.instances.to_string())
            }
            tag => i.attributes.get(&web::tag_key(tag)).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Origin;

    fn row(study: &str, series: &str, sop: &str, modality: &str, name: &str) -> WebInstance {
        WebInstance {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            origin: Origin::Received,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            path: "/nonexistent".into(),
            size: 1,
            attributes: BTreeMap::from([
                ("00080060".to_string(), modality.to_string()),
                ("00100010".to_string(), name.to_string()),
                ("00080020".to_string(), "20240105".to_string()),
            ]),
        }
    }

    #[test]
    fn study_groups_count_and_match() {
        let rows = vec![
            row("1", "1.1", "1.1.1", "MR", "Doe^Jane"),
            row("1", "1.1", "1.1.2", "MR", "Doe^Jane"),
            row("1", "1.2", "1.2.1", "SR", "Doe^Jane"),
            row("2", "2.1", "2.1.1", "CT", "Roe^Rick"),
        ];
        let search = Search::parse(
            vec![
                ("ModalitiesInStudy".into(), "SR".into()),
                ("PatientName".into(), "doe*".into()),
                ("StudyDate".into(), "20240101-20240131".into()),
            ],
            Level::Study,
        )
        .unwrap();
        let groups = groups(Level::Study, &rows);
        let matched: Vec<_> = groups.iter().filter(|g| search.matches(g)).collect();
        assert_eq!(matched.len(), 1);
        let value = |keyword: &str| {
            let attr = web::attribute(keyword).unwrap();
            matched[0].value(attr)
        };
        assert_eq!(value("NumberOfStudyRelatedSeries").as_deref(), Some("2"));
        assert_eq!(value("NumberOfStudyRelatedInstances").as_deref(), Some("3"));
        assert_eq!(value("ModalitiesInStudy").as_deref(), Some("MR\\SR"));
        assert_eq!(value("PatientName").as_deref(), Some("Doe^Jane"));
        assert_eq!(value("StudyInstanceUID").as_deref(), Some("1"));
        let returned: Vec<&str> = search
            .returned(Level::Study)
            .iter()
            .map(|a| a.keyword)
            .collect();
        assert!(returned.contains(&"ModalitiesInStudy"), "{returned:?}");
        assert!(
            !returned.contains(&"NumberOfSeriesRelatedInstances"),
            "{returned:?}"
        );
    }

    #[test]
    fn parameters_are_checked() {
        assert!(Search::parse(vec![("NotAnAttribute".into(), "x".into())], Level::Study).is_err());
        assert!(Search::parse(vec![("limit".into(), "ten".into())], Level::Study).is_err());
        let s = Search::parse(
            vec![
                ("SOPInstanceUID".into(), "1".into()),
                ("fuzzymatching".into(), "true".into()),
                ("limit".into(), "5000".into()),
                ("includefield".into(), "00180050,Manufacturer".into()),
            ],
            Level::Study,
        )
        .unwrap();
        assert_eq!(s.ignored, vec!["SOPInstanceUID", "fuzzymatching"]);
        assert_eq!(s.limit, MAX_LIMIT);
        assert_eq!(s.include.len(), 2);
    }

    /// Bounded, seeded fuzzing of QIDO-RS query parsing and matching
    /// (docs/fuzzing.md): any query string, at any level, is answered or
    /// refused, never a panic.
    #[test]
    fn fuzz_query_parameters_and_matching() {
        use vigie_test_support::fuzz;
        let seeds: Vec<Vec<u8>> = [
            "PatientName=doe*&StudyDate=20240101-20240131&limit=10&offset=2",
            "ModalitiesInStudy=SR\\MR&includefield=all&fuzzymatching=true",
            "00100020=12?4&StudyTime=0800-1100&includefield=00081030,PatientBirthDate",
            "SeriesInstanceUID=1.2,1.3&Modality=CT&limit=0",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let rows = vec![
            row("1", "1.1", "1.1.1", "MR", "Doe^Jane"),
            row("2", "2.1", "2.1.1", "CT", "Roe^Rick"),
        ];
        let summary = fuzz::run(
            "qido",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(6),
            |bytes| {
                let text = String::from_utf8_lossy(bytes);
                let params: Vec<(String, String)> = text
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (pair.to_string(), String::new()),
                    })
                    .collect();
                for level in [Level::Study, Level::Series, Level::Instance] {
                    if let Ok(search) = Search::parse(params.clone(), level) {
                        for group in groups(level, &rows) {
                            let _ = search.matches(&group);
                        }
                        let _ = search.returned(level);
                    }
                }
            },
        );
        assert!(summary.executions > 4);
    }
}
