//! QIDO-RS (PS3.18 10.6): searches of studies, series and instances in
//! the DICOMweb index (received instances and the results Vigie created).
//!
//! The search itself (parameters, grouping at the level, PS3.4 C.2.2.2
//! matching on the indexed attributes and the computed ones) is
//! [`vigie_store::query`]; here are the HTTP side and the DICOM JSON of the
//! results. Keys ignored (another level's, `fuzzymatching=true`,
//! attributes the index does not hold) are named in a `Warning: 299`
//! header. `includefield` takes keywords, tags or `all`; attributes
//! outside the index are read from the first instance's header, and an
//! indexed attribute of a lower level (Modality at study level) is left
//! out rather than taken from an arbitrary instance. `limit`
//! (default and maximum 1000) and `offset` page the results; a `Warning`
//! header says when more results remain.

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
use vigie_store::WebScope;
use vigie_store::query::{Group, Search, groups};

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
    let search = match Search::parse(params, level) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let base = base_url(&app, &headers);
    let state = app.clone();
    let caller = caller.map(|c| c.0.name.clone()).unwrap_or_default();
    let result = blocking(move || {
        let rows = state.catalog.web_instances(&scope)?;
        let groups = groups(level, &rows);
        let matched: Vec<&Group<'_>> = groups.iter().filter(|g| search.matches(g)).collect();
        let total = matched.len();
        let attrs = search.returned(level);
        // An attribute asked at a level above its own (Modality at study
        // level, as OHIF asks) is not answered: read from the first
        // instance it would be an arbitrary one's value (PS3.18 lets the
        // origin server leave it out; ModalitiesInStudy is the study's).
        let extra: Vec<Tag> = search
            .include
            .iter()
            .copied()
            .filter(|t| !attrs.iter().any(|a| a.tag == *t))
            .filter(|t| {
                !web::INDEXED
                    .iter()
                    .chain(web::COMPUTED)
                    .any(|a| a.tag == *t && a.level > level)
            })
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
            web::json_element(attr.vr, g.value(attr).as_deref()),
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
    use std::collections::BTreeMap;
    use vigie_store::{Origin, WebInstance};

    fn row(study: &str, series: &str, sop: &str, modality: &str) -> WebInstance {
        let attributes = [("00080060", modality), ("00100010", "Doe^Jane")]
            .map(|(tag, value)| (tag.to_string(), value.to_string()));
        WebInstance {
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            origin: Origin::Received,
            attributes: BTreeMap::from(attributes),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            path: "/nonexistent".into(),
            size: 1,
        }
    }

    /// A study's DICOM JSON: computed counts and lists in their VRs, PN as
    /// an Alphabetic group, the retrieve URL and availability.
    #[test]
    fn a_study_result_is_dicom_json() {
        let rows = vec![
            row("1", "1.1", "1.1.1", "MR"),
            row("1", "1.1", "1.1.2", "MR"),
            row("1", "1.2", "1.2.1", "SR"),
        ];
        let search = Search::parse(vec![], Level::Study).unwrap();
        let groups = groups(Level::Study, &rows);
        let json = item(
            &groups[0],
            Level::Study,
            &search.returned(Level::Study),
            &[],
            "http://h/dicomweb",
        );
        assert_eq!(json["00201206"]["Value"][0], 2);
        assert_eq!(json["00201208"]["Value"][0], 3);
        assert_eq!(json["00080061"]["Value"], json!(["MR", "SR"]));
        assert_eq!(json["00100010"]["Value"][0]["Alphabetic"], "Doe^Jane");
        assert_eq!(json["00081190"]["Value"][0], "http://h/dicomweb/studies/1");
        assert_eq!(json["00080056"]["Value"][0], "ONLINE");
    }
}
