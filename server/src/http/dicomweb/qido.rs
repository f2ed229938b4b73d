//! QIDO-RS (PS3.18 10.6): searches of studies, series and instances in
//! the DICOMweb index (received instances and the results Vigie created).
//!
//! Matching follows PS3.4 C.2.2.2 on the indexed attributes
//! ([`vigie_dicom_io::web::INDEXED`]) and the computed ones
//! (ModalitiesInStudy, NumberOf…): single value, wildcards `*` `?`, UID
//! lists, date/time ranges; PN ignores case. Keys of the queried level
//! or above are matched; other keys are ignored with a `Warning: 299`
//! header, as are `fuzzymatching=true` and attributes the index does not
//! hold. `includefield` takes keywords, tags or `all`; attributes outside
//! the index are read from the instance's header. `limit` (default and
//! maximum 1000) and `offset` page the results; a `Warning` header says
//! when more results remain.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use dicom_core::{Tag, VR};
use serde_json::{Value, json};
use vigie_dicom_io::web::{self, Attribute, Level};

use super::DICOM_JSON;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::{AppState, base_url, blocking};
use vigie_audit::{AuditEvent, EventKind};
use vigie_store::{WebInstance, WebScope};

/// Largest page.
pub const MAX_LIMIT: usize = 1000;

/// Every QIDO-RS resource: the level and scope come from the path
/// (`/studies`, `/series`, `/instances`, `/studies/{study}/series`,
/// `/studies/{study}/instances`,
/// `/studies/{study}/series/{series}/instances`).
pub async fn search_resource(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let segments: Vec<&str> = uri
        .path()
        .trim_start_matches("/dicomweb/")
        .split('/')
        .collect();
    let (level, scope) = match segments.as_slice() {
        ["studies"] => (Level::Study, WebScope::default()),
        ["series"] => (Level::Series, WebScope::default()),
        ["instances"] => (Level::Instance, WebScope::default()),
        ["studies", study, last] => (
            if *last == "series" {
                Level::Series
            } else {
                Level::Instance
            },
            WebScope {
                study: Some((*study).to_string()),
                ..WebScope::default()
            },
        ),
        ["studies", study, "series", series, "instances"] => (
            Level::Instance,
            WebScope {
                study: Some((*study).to_string()),
                series: Some((*series).to_string()),
                instance: None,
            },
        ),
        _ => return ApiError::not_found("no such QIDO-RS resource").into_response(),
    };
    search(app, caller, headers, q, level, scope).await
}

/// A search, parsed.
#[derive(Debug, Default)]
struct Search {
    keys: Vec<(&'static Attribute, String)>,
    include: Vec<Tag>,
    include_all: bool,
    limit: usize,
    offset: usize,
    ignored: Vec<String>,
}

fn parse(params: Vec<(String, String)>, level: Level) -> ApiResult<Search> {
    let mut s = Search {
        limit: MAX_LIMIT,
        ..Search::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "limit" => {
                s.limit = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("limit={value:?} is not a number")))?
                    .min(MAX_LIMIT);
            }
            "offset" => {
                s.offset = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("offset={value:?} is not a number"))
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
                        let tag = web::parse_tag(name).ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "includefield {name:?}: unknown attribute"
                            ))
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
                    return Err(ApiError::bad_request(format!(
                        "query parameter {name:?} is neither a DICOM attribute nor a QIDO-RS parameter"
                    )));
                }
            },
        }
    }
    Ok(s)
}

/// Instances grouped at the queried level.
struct Group<'a> {
    first: &'a WebInstance,
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

fn groups(level: Level, rows: &[WebInstance]) -> Vec<Group<'_>> {
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

/// The text of an attribute for a group, as stored or computed.
fn value(g: &Group<'_>, attr: &Attribute) -> Option<String> {
    use dicom_dictionary_std::tags;
    let i = g.first;
    match attr.tag {
        tags::STUDY_INSTANCE_UID => Some(i.study_instance_uid.clone()),
        tags::SERIES_INSTANCE_UID => Some(i.series_instance_uid.clone()),
        tags::SOP_INSTANCE_UID => Some(i.sop_instance_uid.clone()),
        tags::SOP_CLASS_UID => Some(i.sop_class_uid.clone()),
        tags::MODALITIES_IN_STUDY => {
            Some(g.modalities.iter().cloned().collect::<Vec<_>>().join("\\"))
                .filter(|s| !s.is_empty())
        }
        tags::SOP_CLASSES_IN_STUDY => {
            Some(g.classes.iter().copied().collect::<Vec<_>>().join("\\"))
        }
        tags::NUMBER_OF_STUDY_RELATED_SERIES => Some(g.series.len().to_string()),
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES | tags::NUMBER_OF_SERIES_RELATED_INSTANCES => {
            Some(g.instances.to_string())
        }
        tag => i.attributes.get(&web::tag_key(tag)).cloned(),
    }
}

fn returned(level: Level, search: &Search) -> Vec<&'static Attribute> {
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
            search.include_all
                || a.default
                || search.include.contains(&a.tag)
                || search.keys.iter().any(|(k, _)| k.tag == a.tag)
        })
        .collect();
    out.dedup_by_key(|a| a.tag);
    out
}

async fn search(
    app: AppState,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    params: Vec<(String, String)>,
    level: Level,
    scope: WebScope,
) -> Response {
    if let Err(e) = accepts_json(&headers) {
        return e.into_response();
    }
    let search = match parse(params, level) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let base = base_url(&app, &headers);
    let state = app.clone();
    let caller = caller.map(|c| c.0.name.clone()).unwrap_or_default();
    let result = blocking(move || {
        let rows = state.catalog.web_instances(&scope)?;
        let groups = groups(level, &rows);
        let matched: Vec<&Group<'_>> = groups
            .iter()
            .filter(|g| {
                search.keys.iter().all(|(attr, pattern)| {
                    web::matches(attr.vr, pattern, value(g, attr).as_deref())
                })
            })
            .collect();
        let total = matched.len();
        let attrs = returned(level, &search);
        let extra: Vec<Tag> = search
            .include
            .iter()
            .copied()
            .filter(|t| !attrs.iter().any(|a| a.tag == *t))
            .collect();
        let mut out = Vec::new();
        for g in matched.iter().skip(search.offset).take(search.limit) {
            out.push(item(g, level, &attrs, &extra, &base));
        }
        state.audit.note(AuditEvent::new(
            EventKind::DicomwebQuery,
            "ok",
            json!({
                "token": caller,
                "level": format!("{level:?}").to_lowercase(),
                "keys": search.keys.iter().map(|(a, _)| a.keyword).collect::<Vec<_>>(),
                "results": out.len(),
            }),
        ));
        Ok((out, total, search))
    })
    .await;
    let (items, total, search) = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut warnings = Vec::new();
    if !search.ignored.is_empty() {
        warnings.push(format!(
            "299 vigie \"The following query parameters are not supported and were ignored: {}\"",
            search.ignored.join(", ")
        ));
    }
    let remaining = total.saturating_sub(search.offset + items.len());
    if remaining > 0 {
        warnings.push(format!(
            "299 vigie \"There are {remaining} additional results that can be requested\""
        ));
    }
    let status = if items.is_empty() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = if items.is_empty() {
        status.into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, DICOM_JSON)],
            serde_json::to_vec(&items).unwrap_or_default(),
        )
            .into_response()
    };
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&w) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

fn item(g: &Group<'_>, level: Level, attrs: &[&Attribute], extra: &[Tag], base: &str) -> Value {
    let mut object = serde_json::Map::new();
    for attr in attrs {
        object.insert(
            web::tag_key(attr.tag),
            web::json_element(attr.vr, value(g, attr).as_deref()),
        );
    }
    let i = g.first;
    let url = match level {
        Level::Study => format!("{base}/studies/{}", i.study_instance_uid),
        Level::Series => format!(
            "{base}/studies/{}/series/{}",
            i.study_instance_uid, i.series_instance_uid
        ),
        Level::Instance => format!(
            "{base}/studies/{}/series/{}/instances/{}",
            i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid
        ),
    };
    object.insert("00081190".into(), json!({ "vr": "UR", "Value": [url] }));
    object.insert(
        "00080056".into(),
        json!({ "vr": "CS", "Value": ["ONLINE"] }),
    );
    for tag in extra {
        match web::element_json(&i.path, *tag) {
            Ok(Some(v)) => {
                object.insert(web::tag_key(*tag), v);
            }
            Ok(None) => {
                object.insert(web::tag_key(*tag), json!({ "vr": vr_of(*tag) }));
            }
            Err(e) => {
                tracing::warn!(sop_instance_uid = %i.sop_instance_uid, error = %e, "includefield: header unreadable")
            }
        }
    }
    Value::Object(object)
}

fn vr_of(tag: Tag) -> String {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::UN)
        .to_string()
        .to_string()
}

/// 406 unless the client takes DICOM JSON.
pub fn accepts_json(headers: &HeaderMap) -> ApiResult<()> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(());
    }
    // RFC 9110 §12.5.1: a range with q=0 is "not acceptable".
    let ok = accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused
            && matches!(
                essence.as_str(),
                "application/dicom+json" | "application/json" | "application/*" | "*/*"
            )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(format!(
            "Accept: {}: QIDO-RS here answers application/dicom+json only",
            accept.chars().take(200).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_store::Origin;

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
        let search = parse(
            vec![
                ("ModalitiesInStudy".into(), "SR".into()),
                ("PatientName".into(), "doe*".into()),
                ("StudyDate".into(), "20240101-20240131".into()),
            ],
            Level::Study,
        )
        .unwrap();
        let groups = groups(Level::Study, &rows);
        let matched: Vec<_> = groups
            .iter()
            .filter(|g| {
                search
                    .keys
                    .iter()
                    .all(|(a, p)| web::matches(a.vr, p, value(g, a).as_deref()))
            })
            .collect();
        assert_eq!(matched.len(), 1);
        let json = item(
            matched[0],
            Level::Study,
            &returned(Level::Study, &search),
            &[],
            "http://h/dicomweb",
        );
        assert_eq!(json["00201206"]["Value"][0], 2);
        assert_eq!(json["00201208"]["Value"][0], 3);
        assert_eq!(json["00080061"]["Value"], json!(["MR", "SR"]));
        assert_eq!(json["00100010"]["Value"][0]["Alphabetic"], "Doe^Jane");
        assert_eq!(json["00081190"]["Value"][0], "http://h/dicomweb/studies/1");
    }

    #[test]
    fn parameters_are_checked() {
        assert!(parse(vec![("NotAnAttribute".into(), "x".into())], Level::Study).is_err());
        assert!(parse(vec![("limit".into(), "ten".into())], Level::Study).is_err());
        let s = parse(
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
                    if let Ok(search) = parse(params.clone(), level) {
                        for group in groups(level, &rows) {
                            for (attribute, pattern) in &search.keys {
                                let _ = vigie_dicom_io::web::matches(
                                    attribute.vr,
                                    pattern,
                                    value(&group, attribute).as_deref(),
                                );
                            }
                        }
                        let _ = returned(level, &search);
                    }
                }
            },
        );
        assert!(summary.executions > 4);
    }
}
