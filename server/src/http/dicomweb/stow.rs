//! STOW-RS (PS3.18 10.5): a `multipart/related; type="application/dicom"`
//! body of Part 10 instances. Each part streams to a staging file (hashed
//! as it is written), its file meta information is checked against what
//! the DICOM listener accepts (SOP class, transfer syntax) and it goes
//! through the same durable ingest as a C-STORE: fsynced, renamed, indexed
//! and audited before it is reported stored.
//!
//! The response (DICOM JSON) lists the stored instances (Referenced SOP
//! Sequence, with their RetrieveURL) and the failed ones (Failed SOP
//! Sequence, with a Failure Reason: A700 out of resources, A900 data set
//! does not match / other study, C000 cannot understand, 0122 SOP class
//! not supported, C122 transfer syntax not supported). Status: 200 all
//! stored, 202 some failed, 409 none stored; 415 for a body that is not
//! `application/dicom` parts, 413 past `http.max_stow_mib` (instances
//! completed before the limit stay stored and are audited).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use vigie_dicom_io::dimse::status;
use vigie_dicom_io::net::scp::ReceivedInstance;

use super::DICOM_JSON;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::{AppState, base_url};
use crate::ingest::Source;
use vigie_dicom_io::multipart::{Event, Parser, media_type, param};

/// Failure Reason: transfer syntax not supported.
const TRANSFER_SYNTAX_NOT_SUPPORTED: u16 = 0xC122;

/// `POST /dicomweb/studies`.
pub async fn store(State(app): State<AppState>, request: Request) -> Response {
    run(app, None, request)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// `POST /dicomweb/studies/{study}`: every instance must belong to it.
pub async fn store_in_study(
    State(app): State<AppState>,
    Path(study): Path<String>,
    request: Request,
) -> Response {
    run(app, Some(study), request)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// What happened to one part.
#[derive(Debug)]
struct Outcome {
    sop_class_uid: String,
    sop_instance_uid: String,
    study_instance_uid: Option<String>,
    series_instance_uid: Option<String>,
    failure: Option<(u16, String)>,
}

/// A part being written.
struct Staged {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    bytes: u64,
    refused: Option<(u16, String)>,
}

async fn run(app: AppState, study: Option<String>, request: Request) -> Result<Response, ApiError> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (essence, params) = media_type(&content_type);
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{what}; STOW-RS here takes multipart/related; type=\"application/dicom\""),
        )
    };
    if essence != "multipart/related" {
        return Err(unsupported(&format!("content type {essence:?}")));
    }
    if let Some(t) = param(&params, "type")
        && !t.eq_ignore_ascii_case("application/dicom")
    {
        return Err(unsupported(&format!(
            "part type {t:?} (metadata and bulk data forms are not supported)"
        )));
    }
    let Some(boundary) = param(&params, "boundary").filter(|b| !b.is_empty() && b.len() <= 256)
    else {
        return Err(ApiError::bad_request(
            "multipart/related without a boundary",
        ));
    };
    let max = app.config.http.max_stow_mib.saturating_mul(1 << 20);
    let headers = request.headers().clone();
    let mut parser = Parser::new(boundary);
    let mut stream = request.into_body().into_data_stream();
    let mut total: u64 = 0;
    let mut current: Option<Staged> = None;
    let mut outcomes = Vec::new();
    // What this request carries; ended when it returns, answered or not
    // (an error, or the client gone and the future dropped).
    let mut carrier = Carrier {
        ingest: app.ingest.clone(),
        id: app.ingest.stow_carrier(),
        answered: false,
    };
    let fail = |current: &mut Option<Staged>, e: ApiError| {
        if let Some(staged) = current.take() {
            let _ = std::fs::remove_file(&staged.path);
        }
        e
    };
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return Err(fail(
                    &mut current,
                    ApiError::bad_request(format!("request body interrupted: {e}")),
                ));
            }
        };
        total += chunk.len() as u64;
        if total > max {
            return Err(fail(
                &mut current,
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "request larger than http.max_stow_mib ({} MiB); {} instance(s) before the limit were stored",
                        max >> 20,
                        outcomes
                            .iter()
                            .filter(|o: &&Outcome| o.failure.is_none())
                            .count()
                    ),
                ),
            ));
        }
        let events = parser
            .feed(&chunk)
            .map_err(|e| fail(&mut current, ApiError::bad_request(e.to_string())))?;
        for event in events {
            match event {
                Event::PartStart(part_headers) => {
                    current = Some(start_part(&app, &part_headers).await);
                }
                Event::Data(data) => {
                    if let Some(staged) = current.as_mut()
                        && staged.refused.is_none()
                    {
                        staged.hasher.update(&data);
                        staged.bytes += data.len() as u64;
                        if let Some(file) = staged.file.as_mut()
                            && let Err(e) = file.write_all(&data).await
                        {
                            staged.refused = Some((
                                status::OUT_OF_RESOURCES,
                                format!("cannot write the staging file: {e}"),
                            ));
                        }
                    }
                }
                Event::PartEnd => {
                    if let Some(staged) = current.take() {
                        let outcome =
                            finish_part(&app, staged, study.clone(), &caller, peer, carrier.id)
                                .await;
                        outcomes.push(outcome);
                    }
                }
            }
        }
    }
    parser
        .finish()
        .map_err(|e| fail(&mut current, ApiError::bad_request(e.to_string())))?;
    if outcomes.is_empty() {
        return Err(ApiError::bad_request("the request holds no instance"));
    }
    // The request carried its studies to their end (with
    // pipeline.release_grace_s, they may close after the grace).
    carrier.answered = true;
    Ok(response(
        &base_url(&app, &headers),
        study.as_deref(),
        &outcomes,
    ))
}

async fn start_part(app: &AppState, headers: &[(String, String)]) -> Staged {
    let path = app
        .layout
        .staging()
        .join(format!("stow-{}.part", uuid::Uuid::new_v4().simple()));
    let mut staged = Staged {
        path: path.clone(),
        file: None,
        hasher: Sha256::new(),
        bytes: 0,
        refused: None,
    };
    let part_type = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| media_type(v).0);
    if let Some(t) = part_type.filter(|t| t != "application/dicom") {
        staged.refused = Some((
            status::CANNOT_UNDERSTAND,
            format!("part of type {t:?}, not application/dicom"),
        ));
        return staged;
    }
    // Out of space: not a byte more is written.
    if let Some(outcome) = app.ingest.space_admission() {
        staged.refused = Some((outcome.status, outcome.comment.unwrap_or_default()));
        return staged;
    }
    match tokio::fs::File::create(&path).await {
        Ok(f) => staged.file = Some(f),
        Err(e) => {
            staged.refused = Some((
                status::OUT_OF_RESOURCES,
                format!("cannot create a staging file: {e}"),
            ));
        }
    }
    staged
}

async fn finish_part(
    app: &AppState,
    mut staged: Staged,
    study: Option<String>,
    caller: &str,
    peer: SocketAddr,
    carrier: u64,
) -> Outcome {
    if let Some(mut file) = staged.file.take()
        && let Err(e) = file.flush().await
    {
        staged.refused.get_or_insert((
            status::OUT_OF_RESOURCES,
            format!("cannot write the staging file: {e}"),
        ));
    }
    let app = app.clone();
    let caller = caller.to_string();
    let path = staged.path.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let outcome = check_and_store(&app, staged, study.as_deref(), &caller, peer, carrier);
        if let Some((code, reason)) = &outcome.failure {
            app.ingest.refused(
                Source::Stow,
                &caller,
                &outcome.sop_instance_uid,
                *code,
                reason,
            );
        }
        outcome
    })
    .await;
    joined.unwrap_or_else(|e| {
        let _ = std::fs::remove_file(&path);
        Outcome {
            sop_class_uid: String::new(),
            sop_instance_uid: String::new(),
            study_instance_uid: None,
            series_instance_uid: None,
            failure: Some((status::PROCESSING_FAILURE, format!("internal failure: {e}"))),
        }
    })
}

fn check_and_store(
    app: &AppState,
    staged: Staged,
    study: Option<&str>,
    caller: &str,
    peer: SocketAddr,
    carrier: u64,
) -> Outcome {
    let mut outcome = Outcome {
        sop_class_uid: String::new(),
        sop_instance_uid: String::new(),
        study_instance_uid: None,
        series_instance_uid: None,
        failure: None,
    };
    let refuse = |mut outcome: Outcome, code: u16, reason: String| {
        let _ = std::fs::remove_file(&staged.path);
        outcome.failure = Some((code, reason));
        outcome
    };
    if let Some((code, reason)) = staged.refused.clone() {
        return refuse(outcome, code, reason);
    }
    let meta = match vigie_dicom_io::read_meta(&staged.path) {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                outcome,
                status::CANNOT_UNDERSTAND,
                format!(
                    "not a DICOM Part 10 instance: {}",
                    short(&match &e {
                        vigie_dicom_io::Error::Open { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    })
                ),
            );
        }
    };
    outcome.sop_class_uid = meta.sop_class_uid.clone();
    outcome.sop_instance_uid = meta.sop_instance_uid.clone();
    if !app.acceptance.sop_classes.contains(&meta.sop_class_uid) {
        return refuse(
            outcome,
            status::SOP_CLASS_NOT_SUPPORTED,
            format!("SOP class {} is not accepted", meta.sop_class_uid),
        );
    }
    if !app
        .acceptance
        .transfer_syntaxes
        .contains(&meta.transfer_syntax)
    {
        return refuse(
            outcome,
            TRANSFER_SYNTAX_NOT_SUPPORTED,
            format!("transfer syntax {} is not accepted", meta.transfer_syntax),
        );
    }
    let received = ReceivedInstance {
        path: staged.path.clone(),
        sop_class_uid: meta.sop_class_uid,
        sop_instance_uid: meta.sop_instance_uid,
        transfer_syntax: meta.transfer_syntax,
        calling_ae_title: caller.to_string(),
        peer,
        bytes: staged.bytes,
        sha256: hex::encode(staged.hasher.finalize()),
        association: Some(carrier),
    };
    // One header parse, in the ingest: it checks the study of the URL too.
    let stored = app.ingest.store_checked(received, Source::Stow, study);
    outcome.study_instance_uid = stored.study_instance_uid;
    outcome.series_instance_uid = stored.series_instance_uid;
    let answer = stored.outcome;
    if answer.status != status::SUCCESS {
        outcome.failure = Some((answer.status, answer.comment.unwrap_or_default()));
    }
    outcome
}

/// The studies a STOW-RS request carries: ended when dropped, normally
/// once the request was answered (`answered`).
struct Carrier {
    ingest: std::sync::Arc<crate::ingest::Ingest>,
    id: u64,
    answered: bool,
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.ingest.carrier_ended(self.id, self.answered);
    }
}

/// Warning headers with a reason, at most; then one that counts the rest.
const MAX_WARNINGS: usize = 20;

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

fn element(vr: &str, value: Value) -> Value {
    json!({ "vr": vr, "Value": [value] })
}

fn response(base: &str, study: Option<&str>, outcomes: &[Outcome]) -> Response {
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut warnings = Vec::new();
    for o in outcomes {
        let mut item = BTreeMap::new();
        if !o.sop_class_uid.is_empty() {
            item.insert("00081150", element("UI", json!(o.sop_class_uid)));
        }
        if !o.sop_instance_uid.is_empty() {
            item.insert("00081155", element("UI", json!(o.sop_instance_uid)));
        }
        match &o.failure {
            None => {
                if let (Some(st), Some(se)) = (&o.study_instance_uid, &o.series_instance_uid) {
                    item.insert(
                        "00081190",
                        element(
                            "UR",
                            json!(format!(
                                "{base}/studies/{st}/series/{se}/instances/{}",
                                o.sop_instance_uid
                            )),
                        ),
                    );
                }
                referenced.push(item);
            }
            Some((code, reason)) => {
                item.insert("00081197", element("US", json!(code)));
                failed.push(item);
                // Why, in words, in a Warning header (PS3.18 8.4.3): the
                // Failed SOP Sequence has no place for text.
                let text: String = format!(
                    "{} {:04X}: {}",
                    if o.sop_instance_uid.is_empty() {
                        "(unreadable part)"
                    } else {
                        &o.sop_instance_uid
                    },
                    code,
                    short(reason)
                )
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"')
                .collect();
                warnings.push(format!("299 vigie \"{text}\""));
            }
        }
    }
    let mut body = BTreeMap::new();
    let studies: std::collections::BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_none())
        .filter_map(|o| o.study_instance_uid.as_deref())
        .chain(study)
        .collect();
    if studies.len() == 1
        && let Some(s) = studies.first()
    {
        body.insert(
            "00081190",
            element("UR", json!(format!("{base}/studies/{s}"))),
        );
    }
    if !referenced.is_empty() {
        body.insert("00081199", json!({ "vr": "SQ", "Value": referenced }));
    }
    if !failed.is_empty() {
        body.insert("00081198", json!({ "vr": "SQ", "Value": failed }));
    }
    let status = match (referenced.is_empty(), failed.is_empty()) {
        (false, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        _ => StatusCode::CONFLICT,
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, DICOM_JSON)],
        Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
        .into_response();
    // A few reasons in words; the Failed SOP Sequence has every instance
    // and the audit trail every reason. Thousands of headers would make
    // the response unreadable to clients.
    let more = warnings.len().saturating_sub(MAX_WARNINGS);
    for warning in warnings.into_iter().take(MAX_WARNINGS) {
        if let Ok(value) = header::HeaderValue::from_str(&warning) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    if more > 0 {
        let summary = format!(
            "299 vigie \"{more} more instances failed; each is in the Failed SOP Sequence, with its reason in the audit trail\""
        );
        if let Ok(value) = header::HeaderValue::from_str(&summary) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}
