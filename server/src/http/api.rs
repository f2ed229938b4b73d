//! The JSON API (`/api/v1`), and the one table of every HTTP endpoint:
//! [`endpoints`] lists each route with its handler, the roles it admits,
//! its parameters and responses. The router ([`super::app`]) and the
//! OpenAPI description (`/api/v1/openapi.json`) are both built from it,
//! so the description cannot miss a route or give a route the wrong roles.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Access, Caller};
use super::dicomweb::{frames, qido, rendered, stow, wado};
use super::error::{ApiError, ApiResult};
use super::reviews;
use super::{AppState, blocking, caller_name, free_bytes};
use vigie_audit::{AuditEvent, EventKind, Query as AuditQuery};
use vigie_store::{JobFilter, JobState, NewJob, RetryOutcome};

/// A parameter of an endpoint: name, where (`path` or `query`), what.
pub type Param = (&'static str, &'static str, &'static str);

/// One HTTP endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// `get` or `post`.
    pub method: &'static str,
    /// Route template (`{name}` for path parameters).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Group in the description.
    pub tag: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Query parameters (path parameters come from the template).
    pub query: &'static [Param],
    /// Request body media type, if any.
    pub body: Option<&'static str>,
    /// Responses: status and meaning.
    pub responses: &'static [(u16, &'static str)],
}

const QIDO_QUERY: &[Param] = &[
    (
        "{attribute}",
        "query",
        "Matching key by keyword or tag (PatientID=…, 00100020=…, StudyDate=20240101-20240131, PatientName=Doe*)",
    ),
    (
        "includefield",
        "query",
        "Attributes to return besides the defaults: keywords, tags, or all",
    ),
    (
        "limit",
        "query",
        "At most this many results (default and maximum 1000)",
    ),
    ("offset", "query", "Skip this many results"),
    (
        "fuzzymatching",
        "query",
        "Not supported; ignored with a Warning header",
    ),
];
const QIDO_RESPONSES: &[(u16, &str)] = &[
    (200, "application/dicom+json array of matches"),
    (204, "no match"),
    (400, "unknown parameter or bad value"),
    (406, "Accept does not include application/dicom+json"),
];
const WADO_RESPONSES: &[(u16, &str)] = &[
    (
        200,
        "multipart/related; type=\"application/dicom\" of the instances",
    ),
    (404, "nothing stored under these UIDs"),
    (
        406,
        "the requested media type or transfer syntax cannot be served",
    ),
];
const META_RESPONSES: &[(u16, &str)] = &[
    (
        200,
        "application/dicom+json array, one object per instance (no bulk data)",
    ),
    (404, "nothing stored under these UIDs"),
];
const FRAME_RESPONSES: &[(u16, &str)] = &[
    (
        200,
        "multipart/related; type=\"application/octet-stream\" (or the stored compressed type), one part per frame, each with its transfer-syntax",
    ),
    (
        400,
        "bad frame list or path, or a frame beyond Number of Frames",
    ),
    (
        404,
        "nothing stored under these UIDs, no pixel data, or no such attribute",
    ),
    (
        406,
        "the requested media type or transfer syntax cannot be served",
    ),
    (413, "the frames asked are above the decoded-size limit"),
];
const RENDER_QUERY: &[Param] = &[
    (
        "window",
        "query",
        "center,width[,linear|linear-exact|sigmoid] instead of the file's VOI",
    ),
    (
        "viewport",
        "query",
        "vw,vh[,sx,sy,sw,sh]: fit in vw x vh, optionally a region of the frame",
    ),
    ("quality", "query", "JPEG quality 1-100 (default 90)"),
    (
        "accept",
        "query",
        "media type, in place of the Accept header",
    ),
    (
        "annotation",
        "query",
        "Not supported; ignored with a Warning",
    ),
    (
        "iccprofile",
        "query",
        "Not supported; ignored with a Warning",
    ),
    ("charset", "query", "Ignored"),
];
const RENDER_RESPONSES: &[(u16, &str)] = &[
    (
        200,
        "image/jpeg or image/png; multipart/related of them for several frames, a series or a study",
    ),
    (400, "bad query parameter or frame"),
    (404, "nothing stored under these UIDs"),
    (
        406,
        "not an image, not renderable (palette colour, undecodable), or the media type cannot be served",
    ),
    (413, "more than 2000 frames to render"),
];
const STOW_RESPONSES: &[(u16, &str)] = &[
    (
        200,
        "all instances stored; application/dicom+json store response",
    ),
    (
        202,
        "some instances failed (Failed SOP Sequence, Warning headers with reasons)",
    ),
    (409, "no instance stored"),
    (400, "malformed multipart body"),
    (413, "body larger than http.max_stow_mib"),
    (415, "not multipart/related; type=\"application/dicom\""),
];
const JSON_OK: &[(u16, &str)] = &[(200, "application/json")];

macro_rules! endpoint {
    ($method:ident $path:literal, $access:ident, $tag:literal, $summary:literal, $query:expr, $body:expr, $responses:expr, $handler:expr) => {
        (
            Endpoint {
                method: stringify!($method),
                path: $path,
                access: Access::$access,
                tag: $tag,
                summary: $summary,
                query: $query,
                body: $body,
                responses: $responses,
            },
            $method($handler),
        )
    };
}

/// Every endpoint with its handler.
pub fn endpoints() -> Vec<(Endpoint, MethodRouter<AppState>)> {
    vec![
        endpoint!(get "/healthz", Public, "service", "Liveness: answers while the process runs", &[], None, &[(200, "text/plain ok")], super::healthz),
        endpoint!(get "/readyz", Public, "service", "Readiness: store writable with space above the reserve, catalog answering, routed models verified, ONNX Runtime loaded; each check with its reason", &[], None, &[(200, "ready"), (503, "not ready; see checks")], super::readyz),
        endpoint!(get "/api/v1/openapi.json", Public, "service", "This description", &[], None, JSON_OK, openapi),
        endpoint!(get "/metrics", Read, "service", "Prometheus metrics (text format 0.0.4); public when http.metrics_public", &[], None, &[(200, "text/plain; version=0.0.4")], metrics),
        endpoint!(get "/api/v1/status", Read, "service", "Counters: instances stored and refused, jobs by state, outbox by state", &[], None, JSON_OK, status),
        endpoint!(get "/api/v1/studies", Read, "jobs", "Latest studies and their reception state", &[("limit", "query", "At most this many (default 100)")], None, JSON_OK, studies),
        endpoint!(get "/api/v1/jobs", Read, "jobs", "Jobs, newest first", &[
            ("state", "query", "pending, running, done or failed"),
            ("delivery", "query", "failed: only jobs with a result a destination refused for good or that was given up"),
            ("model", "query", "Model package id"),
            ("study", "query", "Study Instance UID"),
            ("since", "query", "Created at or after (RFC 3339 or YYYY-MM-DD)"),
            ("until", "query", "Created before (RFC 3339 or YYYY-MM-DD)"),
            ("limit", "query", "At most this many (default 100, maximum 1000)"),
            ("offset", "query", "Skip this many"),
        ], None, &[(200, "application/json array of jobs"), (400, "bad filter")], list_jobs),
        endpoint!(get "/api/v1/jobs/{id}", Read, "jobs", "One job: state, attempts, stage timings, result instances, deliveries and its audit events", &[], None, &[(200, "application/json"), (404, "no such job")], job_detail),
        endpoint!(post "/api/v1/jobs/{id}/retry", Operate, "jobs", "Retry a failed job (attempts reset), or the failed deliveries of a done one", &[], None, &[(200, "what was requeued"), (404, "no such job"), (409, "nothing failed")], retry_job),
        endpoint!(post "/api/v1/studies/{study}/analyses", Operate, "jobs", "Analyse a stored study again with a model: body {\"model\": id, \"destinations\": [names]}", &[], Some("application/json"), &[(202, "job queued: {job_id}"), (404, "study not stored"), (422, "unknown model or destination"), (503, "analysis backlog full (pipeline.max_backlog), with Retry-After")], submit_analysis),
        endpoint!(post "/api/v1/jobs/{id}/reviews", Review, "reviews", "Record a radiologist's review of a job's result (a new record; the result is never changed): body {\"verdict\": \"accept\"|\"reject\"|\"correct\", \"label\": corrected class (correct only), \"comment\", \"reviewer\" (default: the token's name), \"result\": SOP Instance UID (default: the job's one SR or SEG)}", &[], Some("application/json"), &[(201, "the review recorded (supersedes: the same reviewer's earlier review of that result)"), (404, "no such job"), (409, "the job is not done, or has no result objects"), (422, "the verdict, label, result or a text does not fit, with the reason")], reviews::post_review),
        endpoint!(get "/api/v1/jobs/{id}/reviews", Read, "reviews", "The reviews of a job's results, in the order recorded, each saying whether it counts (its reviewer's latest of that result)", &[], None, &[(200, "application/json array of reviews"), (404, "no such job")], reviews::job_reviews),
        endpoint!(get "/api/v1/reviews", Read, "reviews", "Reviews, in the order recorded", &[
            ("since", "query", "Recorded at or after (RFC 3339 or YYYY-MM-DD)"),
            ("until", "query", "Recorded before (RFC 3339 or YYYY-MM-DD)"),
            ("counting", "query", "true: only the reviews that count (each reviewer's latest of a result)"),
            ("result", "query", "Of this result object (SOP Instance UID)"),
            ("limit", "query", "At most this many (default 1000, maximum 10000)"),
            ("offset", "query", "Skip this many"),
        ], None, &[(200, "application/json array of reviews"), (400, "bad filter")], reviews::list_reviews),
        endpoint!(get "/api/v1/review/worklist", Read, "reviews", "What the review page shows: the latest done jobs with their AI findings, result objects and reviews", &[
            ("limit", "query", "At most this many jobs (default 20, maximum 100)"),
            ("job", "query", "Only this job"),
        ], None, JSON_OK, reviews::worklist),
        endpoint!(get "/api/v1/jobs/{id}/thumbnail", Read, "reviews", "A PNG of a source image of the job with the file's VOI, at most 256 pixels on a side", &[("instance", "query", "SOP Instance UID of the source image (default: the first)")], None, &[(200, "image/png"), (404, "no such job or source image"), (422, "the image cannot be rendered")], reviews::thumbnail),
        endpoint!(get "/review", Public, "reviews", "The review page: the latest results with their source image and AI finding, and accept / reject / correct controls; holds no data (its script asks for a reviewer token)", &[], None, &[(200, "text/html")], reviews::page),
        endpoint!(get "/review/app.js", Public, "reviews", "The review page's script", &[], None, &[(200, "text/javascript")], reviews::script),
        endpoint!(get "/api/v1/models", Read, "models", "Installed model packages: manifest, verified weights hash, routing rules using them", &[], None, JSON_OK, models),
        endpoint!(get "/api/v1/audit", Audit, "audit", "Audit records matching filters, in order (the access itself is audited)", &[
            ("kind", "query", "Event type (inference, instance_stored, …)"),
            ("study", "query", "Study Instance UID"),
            ("model", "query", "Model id"),
            ("model_version", "query", "Model version"),
            ("outcome", "query", "Outcome (ok, refused, failed, …)"),
            ("from", "query", "From (RFC 3339 or YYYY-MM-DD), inclusive"),
            ("to", "query", "Until, exclusive"),
            ("after", "query", "Records after this sequence number"),
            ("limit", "query", "At most this many (default 1000, maximum 10000)"),
        ], None, &[(200, "application/json array of records"), (400, "bad filter")], audit_query),
        endpoint!(post "/api/v1/audit/verify", Audit, "audit", "Verify the whole trail: hash chain, signed checkpoints, head (the verification is audited)", &[], None, &[(200, "report, ok true"), (409, "report, ok false: the first bad record and why")], audit_verify),
        endpoint!(post "/dicomweb/studies", Operate, "dicomweb", "STOW-RS: store instances (multipart/related; type=\"application/dicom\")", &[], Some("multipart/related; type=\"application/dicom\""), STOW_RESPONSES, stow::store),
        endpoint!(post "/dicomweb/studies/{study}", Operate, "dicomweb", "STOW-RS into one study: instances of other studies fail (A900)", &[], Some("multipart/related; type=\"application/dicom\""), STOW_RESPONSES, stow::store_in_study),
        endpoint!(get "/dicomweb/studies", Read, "dicomweb", "QIDO-RS: search studies", QIDO_QUERY, None, QIDO_RESPONSES, qido::search_resource),
        endpoint!(get "/dicomweb/series", Read, "dicomweb", "QIDO-RS: search series of all studies", QIDO_QUERY, None, QIDO_RESPONSES, qido::search_resource),
        endpoint!(get "/dicomweb/instances", Read, "dicomweb", "QIDO-RS: search instances of all studies", QIDO_QUERY, None, QIDO_RESPONSES, qido::search_resource),
        endpoint!(get "/dicomweb/studies/{study}/series", Read, "dicomweb", "QIDO-RS: search the series of a study", QIDO_QUERY, None, QIDO_RESPONSES, qido::search_resource),
        endpoint!(get "/dicomweb/studies/{study}/instances", Read, "dicomweb", "QIDO-RS: search the instances of a study", QIDO_QUERY, None, QIDO_RESPONSES, qido::search_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances", Read, "dicomweb", "QIDO-RS: search the instances of a series", QIDO_QUERY, None, QIDO_RESPONSES, qido::search_resource),
        endpoint!(get "/dicomweb/studies/{study}", Read, "dicomweb", "WADO-RS: retrieve a study's instances", &[], None, WADO_RESPONSES, wado::retrieve_resource),
        endpoint!(get "/dicomweb/studies/{study}/metadata", Read, "dicomweb", "WADO-RS: a study's metadata", &[], None, META_RESPONSES, wado::retrieve_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}", Read, "dicomweb", "WADO-RS: retrieve a series' instances", &[], None, WADO_RESPONSES, wado::retrieve_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/metadata", Read, "dicomweb", "WADO-RS: a series' metadata", &[], None, META_RESPONSES, wado::retrieve_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}", Read, "dicomweb", "WADO-RS: retrieve one instance", &[], None, WADO_RESPONSES, wado::retrieve_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata", Read, "dicomweb", "WADO-RS: one instance's metadata", &[], None, META_RESPONSES, wado::retrieve_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", Read, "dicomweb", "WADO-RS: frames of an instance (1,3,5), uncompressed or as stored (transfer-syntax=*)", &[], None, FRAME_RESPONSES, frames::retrieve_frames),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulkdata/{attribute}", Read, "dicomweb", "WADO-RS: bulk data of a binary attribute that the metadata points to (BulkDataURI); 7FE00010 is the Pixel Data", &[], None, FRAME_RESPONSES, frames::retrieve_bulk),
        endpoint!(get "/dicomweb/studies/{study}/rendered", Read, "dicomweb", "WADO-RS: a study's images rendered (multipart, one part per frame)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/rendered", Read, "dicomweb", "WADO-RS: a series' images rendered (multipart, one part per frame)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered", Read, "dicomweb", "WADO-RS: an instance rendered (one image; multipart for several frames)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", Read, "dicomweb", "WADO-RS: frames rendered (one image; multipart for several frames)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/thumbnail", Read, "dicomweb", "WADO-RS: a study's thumbnail (middle image of its first image series)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/thumbnail", Read, "dicomweb", "WADO-RS: a series' thumbnail (its middle image)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/thumbnail", Read, "dicomweb", "WADO-RS: an instance's thumbnail (its first frame)", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
        endpoint!(get "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", Read, "dicomweb", "WADO-RS: a frame's thumbnail", RENDER_QUERY, None, RENDER_RESPONSES, rendered::rendered_resource),
    ]
}

/// The OpenAPI 3.1 description, from [`endpoints`].
pub fn description() -> Value {
    let mut paths = serde_json::Map::new();
    for (e, _) in endpoints() {
        let mut parameters: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
            })
            .collect();
        parameters.extend(e.query.iter().map(|(name, place, what)| {
            json!({ "name": name, "in": place, "required": false, "description": what, "schema": { "type": "string" } })
        }));
        let mut responses = serde_json::Map::new();
        for (code, what) in e.responses {
            responses.insert(code.to_string(), json!({ "description": what }));
        }
        if e.access != Access::Public {
            responses.insert("401".into(), json!({ "description": "no valid bearer token", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
            responses.insert("403".into(), json!({ "description": "the token's role is not admitted", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
        }
        responses.insert("503".into(), json!({ "description": "overloaded (Retry-After) or store unavailable", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
        let mut operation = json!({
            "summary": e.summary,
            "tags": [e.tag],
            "parameters": parameters,
            "responses": responses,
            "x-vigie-roles": e.access.roles(),
        });
        if e.access == Access::Public {
            operation["security"] = json!([]);
        }
        if let Some(media) = e.body {
            operation["requestBody"] = json!({ "required": true, "content": { media: {} } });
        }
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Vigie appliance API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "DICOMweb (STOW-RS, QIDO-RS, WADO-RS), jobs, models, audit and service endpoints of the Vigie appliance. Bearer tokens carry a role: reader, operator, auditor or admin; x-vigie-roles lists those each operation admits.",
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": {
                        "code": { "type": "string", "description": "stable machine-readable code" },
                        "message": { "type": "string" }
                    } } }
                }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> Json<Value> {
    Json(description())
}

/// The `vigie_pms_*` metrics of the latest post-market surveillance report
/// of each model (`DATA_DIR/pms/<model>.prom`, written by `vigie pms
/// report`), merged family by family; only `vigie_pms_` lines are taken,
/// and at most 64 KiB of each file.
fn pms_metrics(dir: &std::path::Path) -> String {
    use std::collections::BTreeMap;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "prom"))
        .collect();
    files.sort();
    for file in files {
        let mut text = String::new();
        let read = std::fs::File::open(&file).and_then(|f| {
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 64 << 10), &mut text)
        });
        if read.is_err() {
            continue;
        }
        for line in text.lines() {
            let comment = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "));
            let name = comment
                .unwrap_or(line)
                .split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap_or("");
            if !name.starts_with("vigie_pms_") {
                continue;
            }
            if comment.is_some() {
                let known = headers.entry(name.to_string()).or_default();
                if known.len() < 2 && !known.iter().any(|h| h[..6] == line[..6]) {
                    known.push(line.to_string());
                }
            } else if line
                .rsplit(' ')
                .next()
                .is_some_and(|v| v.parse::<f64>().is_ok())
                && line.matches('{').count() <= 1
            {
                // A sample ends in its value; anything else is left out
                // rather than breaking the whole scrape.
                samples
                    .entry(name.to_string())
                    .or_default()
                    .push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (name, lines) in headers {
        out.extend(lines.into_iter().map(|l| l + "\n"));
        for sample in samples.remove(&name).unwrap_or_default() {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<AppState>) -> Response {
    let state = app.clone();
    let scraped = blocking(move || {
        let mut gauges = Vec::new();
        for (job_state, n) in state.catalog.job_counts()? {
            gauges.push((
                "vigie_jobs",
                "Jobs in the queue by state (pending and running are the queue depth).",
                crate::metrics::labels(&[("state", &job_state)]),
                n as f64,
            ));
        }
        let outbox = state.catalog.outbox_status()?;
        for (s, n) in [
            ("pending", outbox.pending),
            ("awaiting_commitment", outbox.awaiting_commitment),
            ("sent", outbox.sent),
            ("failed", outbox.failed),
        ] {
            gauges.push((
                "vigie_outbox",
                "Result deliveries by state (pending is the delivery queue depth; awaiting_commitment: stored by a destination with commitment = true, not yet committed).",
                crate::metrics::labels(&[("state", s)]),
                n as f64,
            ));
        }
        if let Ok(free) = free_bytes(&state.layout) {
            gauges.push((
                "vigie_store_free_bytes",
                "Free space on the data directory's file system.",
                String::new(),
                free as f64,
            ));
        }
        gauges.push((
            "vigie_store_reserve_bytes",
            "Free space below which instances are refused (storage.min_free_mib).",
            String::new(),
            state.config.storage.min_free_mib.saturating_mul(1 << 20) as f64,
        ));
        gauges.push((
            "vigie_studies_receiving",
            "Studies still receiving instances, counted with the jobs against pipeline.max_backlog.",
            String::new(),
            state.backlog.receiving_studies() as f64,
        ));
        gauges.push((
            "vigie_clock_went_back_total",
            "Audit records whose wall-clock time was earlier than the record before them since start (the clock was set back; alarm when above 0).",
            String::new(),
            vigie_audit::clock_went_back() as f64,
        ));
        let stuck = state
            .workers
            .problems(std::time::Duration::from_secs(state.config.pipeline.stuck_after_s.max(1)));
        gauges.push((
            "vigie_workers_unhealthy",
            "Worker threads that have stopped or are stuck on one job longer than pipeline.stuck_after_s (alarm when above 0).",
            String::new(),
            stuck.len() as f64,
        ));
        gauges.push((
            "vigie_uptime_seconds",
            "Seconds since the service started.",
            String::new(),
            state.started.elapsed().as_secs_f64(),
        ));
        Ok((gauges, pms_metrics(&state.layout.root().join("pms"))))
    })
    .await;
    match scraped {
        Ok((gauges, pms)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            app.metrics.render(&gauges) + &pms,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn status(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    use std::sync::atomic::Ordering;
    let state = app.clone();
    let (jobs, outbox) =
        blocking(move || Ok((state.catalog.job_counts()?, state.catalog.outbox_status()?))).await?;
    let stats = &app.ingest.stats;
    Ok(Json(json!({
        "appliance": app.config.appliance.id,
        "version": env!("CARGO_PKG_VERSION"),
        "ingest": {
            "stored": stats.stored.load(Ordering::Relaxed),
            "refused": stats.refused.load(Ordering::Relaxed),
            "bytes": stats.bytes.load(Ordering::Relaxed),
        },
        "jobs": jobs,
        "outbox": outbox,
    })))
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn studies(State(app): State<AppState>, Query(q): Query<Limit>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    let studies = blocking(move || Ok(app.catalog.studies(limit)?)).await?;
    Ok(Json(json!(studies)))
}

/// A time filter: RFC 3339 or a date (midnight UTC), to ms since the epoch.
/// `since`/`until` filters, to ms since the epoch.
pub(super) fn parse_range(
    since: Option<&str>,
    until: Option<&str>,
) -> ApiResult<(Option<i64>, Option<i64>)> {
    Ok((
        since.map(|t| parse_time("since", t)).transpose()?,
        until.map(|t| parse_time("until", t)).transpose()?,
    ))
}

pub(super) fn parse_time(name: &str, text: &str) -> ApiResult<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| {
            ApiError::bad_request(format!("{name}={text:?}: neither RFC 3339 nor YYYY-MM-DD"))
        })
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    state: Option<String>,
    delivery: Option<String>,
    model: Option<String>,
    study: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list_jobs(
    State(app): State<AppState>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Value>> {
    let state = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(JobState::Pending),
        Some("running") => Some(JobState::Running),
        Some("done") => Some(JobState::Done),
        Some("failed") => Some(JobState::Failed),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state={other:?}: pending, running, done or failed"
            )));
        }
    };
    let undelivered = match q.delivery.as_deref() {
        None => false,
        Some("failed") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("delivery={other:?}: failed")));
        }
    };
    let (since_ms, until_ms) = parse_range(q.since.as_deref(), q.until.as_deref())?;
    let filter = JobFilter {
        state,
        undelivered,
        model: q.model,
        study: q.study,
        since_ms,
        until_ms,
        limit: q.limit.unwrap_or(100).min(1000),
        offset: q.offset.unwrap_or(0),
    };
    let jobs = blocking(move || Ok(app.catalog.find_jobs(&filter)?)).await?;
    Ok(Json(json!(jobs)))
}

async fn job_detail(State(app): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let job = app
            .catalog
            .job(id)?
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        let deliveries = app.catalog.deliveries(id)?;
        let records = app.audit.records(&AuditQuery {
            study_instance_uid: Some(job.study_instance_uid.clone()),
            ..AuditQuery::default()
        })?;
        let mine: Vec<(vigie_audit::AuditRecord, Value)> = records
            .into_iter()
            .filter_map(|r| {
                let details: Value = serde_json::from_str(&r.details).ok()?;
                (details.get("job_id").and_then(Value::as_i64) == Some(id)).then_some((r, details))
            })
            .collect();
        let mut stages = serde_json::Map::new();
        let mut results = Vec::new();
        for (r, details) in &mine {
            match r.kind.as_str() {
                "inference" => {
                    for frame in details["frames"].as_array().into_iter().flatten() {
                        if let Some(t) = frame["timings_ms"].as_object() {
                            for (stage, ms) in t {
                                let total = stages.entry(stage.clone()).or_insert(json!(0.0));
                                *total = json!(
                                    total.as_f64().unwrap_or(0.0) + ms.as_f64().unwrap_or(0.0)
                                );
                            }
                        }
                    }
                }
                "result_created" => results.push(json!({
                    "sop_instance_uid": r.sop_instance_uid,
                    "series_instance_uid": details["series_instance_uid"],
                    "kind": details["kind"],
                    "file_sha256": details["file_sha256"],
                })),
                _ => {}
            }
        }
        let events: Vec<Value> = mine
            .iter()
            .map(|(r, _)| {
                json!({
                    "seq": r.seq,
                    "timestamp": r.timestamp,
                    "kind": r.kind,
                    "outcome": r.outcome,
                    "sop_instance_uid": r.sop_instance_uid,
                })
            })
            .collect();
        let wall_ms = match (mine.first(), mine.last()) {
            (Some((a, _)), Some((b, _))) => chrono::DateTime::parse_from_rfc3339(&b.timestamp)
                .ok()
                .zip(chrono::DateTime::parse_from_rfc3339(&a.timestamp).ok())
                .map(|(b, a)| (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0),
            _ => None,
        };
        Ok(Json(json!({
            "job": job,
            "stage_totals_ms": stages,
            "recorded_span_ms": wall_ms,
            "results": results,
            "deliveries": deliveries,
            "events": events,
        })))
    })
    .await
}

async fn retry_job(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let who = caller_name(caller.as_ref().map(|c| &c.0));
    blocking(move || {
        let outcome = app.catalog.retry_job(id, vigie_store::now_ms())?;
        match outcome {
            RetryOutcome::NotFound => return Err(ApiError::not_found(format!("no job {id}"))),
            RetryOutcome::NothingFailed => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "nothing_to_retry",
                    format!("job {id} has neither failed nor failed deliveries"),
                ));
            }
            RetryOutcome::JobRequeued | RetryOutcome::DeliveriesRequeued { .. } => {}
        }
        app.audit.record(AuditEvent::new(
            EventKind::JobRetryRequested,
            "ok",
            json!({ "job_id": id, "token": who, "outcome": outcome }),
        ))?;
        Ok(Json(json!(outcome)))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Analysis {
    model: String,
    #[serde(default)]
    destinations: Vec<String>,
}

async fn submit_analysis(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    Path(study): Path<String>,
    body: Result<Json<Analysis>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = body.map_err(|e| ApiError::of_status(e.status(), e.body_text()))?;
    if let Some(reason) = app.backlog.full() {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", reason);
        e.retry_after = Some(30);
        return Err(e);
    }
    let unprocessable =
        |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m);
    match app.models.iter().find(|m| m.id == request.model) {
        None => {
            return Err(unprocessable(format!(
                "no model package {:?} installed",
                request.model
            )));
        }
        Some(m) if m.error.is_some() => {
            return Err(unprocessable(format!(
                "model package {:?} is not usable: {}",
                request.model,
                m.error.as_deref().unwrap_or_default()
            )));
        }
        Some(_) => {}
    }
    if let Some(d) = request
        .destinations
        .iter()
        .find(|d| !app.config.destinations.contains_key(*d))
    {
        return Err(unprocessable(format!("no destination {d:?} configured")));
    }
    let who = caller_name(caller.as_ref().map(|c| &c.0));
    blocking(move || {
        let job = NewJob {
            rule: format!("api:{who}"),
            model: request.model.clone(),
            series: Vec::new(),
            destinations: request.destinations.clone(),
        };
        let id = app
            .catalog
            .submit_job(&study, &job, vigie_store::now_ms())?
            .ok_or_else(|| ApiError::not_found("no instance of this study is stored"))?;
        app.audit.record(
            AuditEvent::new(
                EventKind::AnalysisRequested,
                "ok",
                json!({ "job_id": id, "token": who, "destinations": request.destinations }),
            )
            .instance(Some(&study), None)
            .model(&request.model, ""),
        )?;
        Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/api/v1/jobs/{id}"))],
            Json(json!({ "job_id": id, "href": format!("/api/v1/jobs/{id}") })),
        )
            .into_response())
    })
    .await
}

async fn models(State(app): State<AppState>) -> Json<Value> {
    Json(json!(app.models))
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    kind: Option<String>,
    study: Option<String>,
    model: Option<String>,
    model_version: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
}

fn audit_time(name: &str, text: &str) -> ApiResult<String> {
    let ms = parse_time(name, text)?;
    Ok(chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default())
}

async fn audit_query(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    Query(q): Query<AuditParams>,
) -> ApiResult<Json<Value>> {
    let who = caller_name(caller.as_ref().map(|c| &c.0));
    let query = AuditQuery {
        from: q
            .from
            .as_deref()
            .map(|t| audit_time("from", t))
            .transpose()?,
        to: q.to.as_deref().map(|t| audit_time("to", t)).transpose()?,
        kind: q.kind,
        study_instance_uid: q.study,
        model_id: q.model,
        model_version: q.model_version,
        outcome: q.outcome,
        after_seq: q.after,
        limit: Some(q.limit.unwrap_or(1000).min(10_000)),
    };
    blocking(move || {
        let records = app.audit.records(&query)?;
        app.audit.record(AuditEvent::new(
            EventKind::AuditAccessed,
            "ok",
            json!({
                "who": who,
                "what": "query",
                "via": "http",
                "filters": format!("{query:?}"),
                "records": records.len(),
            }),
        ))?;
        Ok(Json(json!(records)))
    })
    .await
}

async fn audit_verify(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
) -> ApiResult<Response> {
    let who = caller_name(caller.as_ref().map(|c| &c.0));
    blocking(move || {
        let report = app.audit.verify()?;
        app.audit.record(AuditEvent::new(
            EventKind::AuditAccessed,
            if report.ok {
                "verified"
            } else {
                "verification_failed"
            },
            json!({
                "who": who,
                "what": "verify",
                "via": "http",
                "records": report.records,
                "first_bad_record": report.first_bad_record,
                "reason": report.reason,
            }),
        ))?;
        let status = if report.ok {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        Ok((status, Json(json!(report))).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The description is part of the interface: a change to a route, a
    /// role or a parameter shows up here and must be accepted on purpose.
    #[test]
    fn the_openapi_description_is_stable() {
        insta::assert_json_snapshot!("openapi", description());
    }

    #[test]
    fn every_route_is_described_once_with_its_roles() {
        let d = description();
        let mut count = 0;
        for (path, ops) in d["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                count += 1;
                assert!(
                    !op["summary"].as_str().unwrap().is_empty(),
                    "{method} {path}"
                );
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                for p in &params {
                    assert!(path.contains(&format!("{{{p}}}")), "{path} {p}");
                }
            }
        }
        assert_eq!(count, endpoints().len());
    }
}
