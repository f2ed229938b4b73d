//! Reviews over HTTP: `POST /api/v1/jobs/{id}/reviews` (role `reviewer`),
//! the listings, the review worklist and thumbnails the review page reads,
//! and the page itself (`/review`), whose controls post to the same
//! endpoint. Checking and recording is [`crate::reviews::ReviewDesk`]'s.

use std::io::Cursor;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::parse_range;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::{AppState, blocking, caller_name};
use crate::reviews::{Refusal, ReviewError, ReviewRequest};
use vigie_audit::Query as AuditQuery;
use vigie_store::{JobFilter, JobState, ReviewFilter, ReviewVia, Verdict};

/// The body of `POST /api/v1/jobs/{id}/reviews`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// accept, reject or correct.
    pub verdict: Verdict,
    /// The corrected class or finding (`correct` only).
    #[serde(default)]
    pub label: Option<String>,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
    /// Who reviewed (default: the token's name).
    #[serde(default)]
    pub reviewer: Option<String>,
    /// The result object reviewed (default: the job's one SR or SEG).
    #[serde(default)]
    pub result: Option<String>,
    /// `api` (default) or `page`.
    #[serde(default)]
    pub via: Option<String>,
}

fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::UnknownJob(_) | Refusal::UnknownResult(_) => StatusCode::NOT_FOUND,
        Refusal::NotDone { .. } | Refusal::NoResults(_) => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl From<ReviewError> for ApiError {
    fn from(e: ReviewError) -> Self {
        match e {
            ReviewError::Refused(refusal) => {
                let status = refusal_status(&refusal);
                ApiError::new(status, refusal.code(), refusal.to_string())
            }
            ReviewError::Store(e) => e.into(),
            ReviewError::Audit { review_id, source } => {
                let e = ReviewError::Audit { review_id, source };
                ApiError::internal("audit_unavailable", StatusCode::SERVICE_UNAVAILABLE, &e)
            }
        }
    }
}

/// `POST /api/v1/jobs/{id}/reviews`.
pub async fn post_review(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<i64>,
    body: Result<Json<ReviewBody>, JsonRejection>,
) -> ApiResult<Response> {
    let who = caller_name(caller.as_ref().map(|c| &c.0));
    let desk = app.reviews.clone();
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            let status = rejection.status();
            let message = rejection.body_text();
            let reason = format!("malformed review body (HTTP {})", status.as_u16());
            blocking(move || {
                desk.refused_unread(Some(id), ReviewVia::Api, &who, "malformed", &reason);
                Ok(())
            })
            .await?;
            return Err(ApiError::of_status(status, message));
        }
    };
    let via = match body.via.as_deref() {
        None | Some("api") => ReviewVia::Api,
        Some("page") => ReviewVia::Page,
        Some(_) => {
            blocking(move || {
                desk.refused_unread(
                    Some(id),
                    ReviewVia::Api,
                    &who,
                    "malformed",
                    "via is neither api nor page",
                );
                Ok(())
            })
            .await?;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "via: api or page",
            ));
        }
    };
    let request = ReviewRequest {
        job_id: Some(id),
        results: body.result.into_iter().collect(),
        verdict: body.verdict,
        label: body.label,
        comment: body.comment.filter(|c| !c.trim().is_empty()),
        reviewer: body
            .reviewer
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| who.clone()),
        via,
        authenticated_as: who,
        source_sop_instance_uid: None,
    };
    let recorded = blocking(move || Ok(desk.submit(&request)?)).await?;
    let status = if recorded.already_recorded {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!(recorded.review))).into_response())
}

/// `GET /api/v1/jobs/{id}/reviews`.
pub async fn job_reviews(
    State(app): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        if app.catalog.job(id)?.is_none() {
            return Err(ApiError::not_found(format!("no job {id}")));
        }
        let reviews = app.catalog.reviews(&ReviewFilter {
            job_id: Some(id),
            limit: 10_000,
            ..ReviewFilter::default()
        })?;
        Ok(Json(json!(reviews)))
    })
    .await
}

/// Query of `GET /api/v1/reviews`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewsQuery {
    since: Option<String>,
    until: Option<String>,
    counting: Option<bool>,
    result: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// `GET /api/v1/reviews`.
pub async fn list_reviews(
    State(app): State<AppState>,
    Query(q): Query<ReviewsQuery>,
) -> ApiResult<Json<Value>> {
    let (since_ms, until_ms) = parse_range(q.since.as_deref(), q.until.as_deref())?;
    let filter = ReviewFilter {
        job_id: None,
        result_sop_instance_uid: q.result,
        since_ms,
        until_ms,
        counting_only: q.counting.unwrap_or(false),
        limit: q.limit.unwrap_or(1000).min(10_000),
        offset: q.offset.unwrap_or(0),
    };
    let reviews = blocking(move || Ok(app.catalog.reviews(&filter)?)).await?;
    Ok(Json(json!(reviews)))
}

/// Query of `GET /api/v1/review/worklist`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorklistQuery {
    limit: Option<usize>,
    job: Option<i64>,
}

/// `GET /api/v1/review/worklist`: the latest done jobs, each with one item
/// per result object that carries a finding (SR, SEG): the result, its
/// source image, the finding (from the `inference` audit records) and its
/// reviews.
pub async fn worklist(
    State(app): State<AppState>,
    Query(q): Query<WorklistQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let jobs = match q.job {
            Some(id) => app.catalog.job(id)?.into_iter().collect(),
            None => app.catalog.find_jobs(&JobFilter {
                state: Some(JobState::Done),
                limit: q.limit.unwrap_or(20).clamp(1, 100),
                ..JobFilter::default()
            })?,
        };
        let mut entries = Vec::new();
        for job in jobs {
            let records = app.audit.records(&AuditQuery {
                study_instance_uid: Some(job.study_instance_uid.clone()),
                ..AuditQuery::default()
            })?;
            let mine = records.iter().filter_map(|r| {
                let d: Value = serde_json::from_str(&r.details).ok()?;
                (d["job_id"].as_i64() == Some(job.id)).then_some((r, d))
            });
            // The finding of each source image, and the source of each
            // result object.
            let mut findings = std::collections::BTreeMap::new();
            let mut sources = std::collections::BTreeMap::new();
            for (r, d) in mine {
                let Some(uid) = r.sop_instance_uid.clone() else {
                    continue;
                };
                match (r.kind.as_str(), r.outcome.as_str()) {
                    ("inference", "ok") => {
                        let finding = &d["frames"][0]["finding"];
                        let probability = finding["labels"]
                            .as_array()
                            .and_then(|l| l.iter().position(|l| *l == d["decision"]))
                            .and_then(|i| finding["probabilities"][i].as_f64());
                        findings.insert(
                            uid,
                            json!({
                                "decision": d["decision"],
                                "probability": probability,
                                "rule": finding["rule"],
                            }),
                        );
                    }
                    ("result_created", _) => {
                        if let Some(source) = d["source_sop_instance_uid"].as_str() {
                            sources.insert(uid, source.to_string());
                        }
                    }
                    _ => {}
                }
            }
            let results = app.catalog.job_results(job.id)?;
            let carrying: Vec<_> = results
                .iter()
                .filter(|r| crate::reviews::carries_finding(&r.sop_class_uid))
                .collect();
            let reviewable = if carrying.is_empty() {
                results.iter().collect()
            } else {
                carrying
            };
            let reviews = app.catalog.reviews(&ReviewFilter {
                job_id: Some(job.id),
                ..ReviewFilter::default()
            })?;
            // One item per result object that carries a finding: what a
            // reviewer judges, with its source image.
            let items: Vec<Value> = reviewable
                .iter()
                .map(|r| {
                    let source = sources.get(&r.sop_instance_uid);
                    json!({
                        "result_sop_instance_uid": r.sop_instance_uid,
                        "result_sop_class_uid": r.sop_class_uid,
                        "source_sop_instance_uid": source,
                        "finding": source.and_then(|s| findings.get(s)),
                        "reviews": reviews
                            .iter()
                            .filter(|v| v.review.result_sop_instance_uid == r.sop_instance_uid)
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            entries.push(json!({
                "job_id": job.id,
                "state": job.state,
                "model": job.model,
                "labels": app.reviews.labels(&job.model),
                "study_instance_uid": job.study_instance_uid,
                "updated_at": job.updated_at,
                "items": items,
                "results": results
                    .iter()
                    .map(|r| {
                        json!({
                            "sop_instance_uid": r.sop_instance_uid,
                            "sop_class_uid": r.sop_class_uid,
                            "series_instance_uid": r.series_instance_uid,
                        })
                    })
                    .collect::<Vec<_>>(),
                "reviews": reviews,
            }));
        }
        Ok(Json(json!(entries)))
    })
    .await
}

/// Query of the thumbnail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailQuery {
    instance: Option<String>,
}

/// Largest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

/// `GET /api/v1/jobs/{id}/thumbnail`: a PNG of a source image of the job
/// (its first, or `instance`), with the file's VOI, at most
/// [`THUMBNAIL_SIDE`] pixels on a side.
pub async fn thumbnail(
    State(app): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ThumbnailQuery>,
) -> ApiResult<Response> {
    let png = blocking(move || {
        let job = app
            .catalog
            .job(id)?
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        let instances = app.catalog.job_instances(&job)?;
        let instance = match &q.instance {
            Some(uid) => instances.iter().find(|i| &i.sop_instance_uid == uid),
            None => instances.first(),
        }
        .ok_or_else(|| ApiError::not_found(format!("no such source image in job {id}")))?;
        render_thumbnail(&instance.path).map_err(|reason| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_rendered",
                format!("the source image cannot be rendered: {reason}"),
            )
        })
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        png,
    )
        .into_response())
}

fn render_thumbnail(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use vigie_dicom_io::{PixelOptions, VoiSelection};
    let file = vigie_dicom_io::DicomFile::open(path).map_err(|e| e.to_string())?;
    let display = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        file.decode(&PixelOptions::with_voi(VoiSelection::FromFile))
    }))
    .map_err(|p| vigie_dicom_io::pixels::panic_message(&p))?
    .map_err(|e| e.to_string())?;
    let frame = display.frame(0).ok_or("no frame")?;
    let grey = vigie_dicom_io::results::summary::grey8(&display, frame);
    let (w, h) = (
        u32::try_from(display.columns).map_err(|_| "too wide")?,
        u32::try_from(display.rows).map_err(|_| "too tall")?,
    );
    let image = image::GrayImage::from_raw(w, h, grey).ok_or("pixel count")?;
    let scale = (f64::from(THUMBNAIL_SIDE) / f64::from(w.max(h))).min(1.0);
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = image::imageops::thumbnail(&image, tw, th);
    let mut png = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(png)
}

/// `GET /review`: the review page (no data in it; its script asks for a
/// reviewer token and reads the worklist).
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE_HTML,
    )
        .into_response()
}

/// `GET /review/app.js`: the page's script.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE_SCRIPT,
    )
        .into_response()
}

/// Scripts from this origin only (no inline script: what the worklist
/// holds is text, never markup), images from it and from blobs.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

const PAGE_HTML: &str = include_str!("review_page.html");
const PAGE_SCRIPT: &str = include_str!("review_page.js");
