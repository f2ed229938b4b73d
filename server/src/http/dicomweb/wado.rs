//! WADO-RS (PS3.18 10.4): retrieve studies, series and instances as
//! `multipart/related; type="application/dicom"`, and their metadata as
//! DICOM JSON.
//!
//! Transfer syntax (PS3.18 8.7.3.5): `transfer-syntax=*` sends each
//! instance as stored; no parameter means Explicit VR Little Endian, as
//! does naming it; stored instances in another syntax are transcoded
//! (compressed pixel data decoded) when the decoders support it, else the
//! request gets 406. Other syntaxes are served only where the stored one
//! matches. Instances stream one after the other: memory does not grow
//! with the size of the study.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use vigie_dicom_io::{TransferSyntaxSupport, transfer_syntax_support};

use super::DICOM_JSON;
use super::qido::accepts_json;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::{AppState, blocking};
use vigie_audit::{AuditEvent, EventKind};
use vigie_dicom_io::multipart::param;
use vigie_store::{WebInstance, WebScope};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Every WADO-RS resource: `/studies/{study}[/series/{series}[/instances/{instance}]]`,
/// each with or without `/metadata`.
pub async fn retrieve_resource(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let mut segments: Vec<&str> = uri
        .path()
        .trim_start_matches("/dicomweb/")
        .split('/')
        .collect();
    let wants_metadata = segments.last() == Some(&"metadata");
    if wants_metadata {
        segments.pop();
    }
    let owned = |s: &&str| Some((*s).to_string());
    let scope = match segments.as_slice() {
        ["studies", study] => WebScope {
            study: owned(study),
            ..WebScope::default()
        },
        ["studies", study, "series", series] => WebScope {
            study: owned(study),
            series: owned(series),
            instance: None,
        },
        ["studies", study, "series", series, "instances", instance] => WebScope {
            study: owned(study),
            series: owned(series),
            instance: owned(instance),
        },
        _ => return ApiError::not_found("no such WADO-RS resource").into_response(),
    };
    if wants_metadata {
        metadata(app, headers, scope).await
    } else {
        retrieve(app, caller, headers, scope).await
    }
}

async fn find(app: &AppState, scope: WebScope) -> ApiResult<Vec<WebInstance>> {
    let state = app.clone();
    let found = blocking(move || Ok(state.catalog.web_instances(&scope)?)).await?;
    if found.is_empty() {
        return Err(ApiError::not_found("no such study, series or instance"));
    }
    Ok(found)
}

async fn metadata(app: AppState, headers: HeaderMap, scope: WebScope) -> Response {
    let run = async {
        accepts_json(&headers)?;
        let instances = find(&app, scope).await?;
        let base = crate::http::base_url(&app, &headers);
        let items = blocking(move || {
            instances
                .iter()
                .map(|i| {
                    let bulk = format!(
                        "{base}/studies/{}/series/{}/instances/{}/bulkdata",
                        i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid
                    );
                    vigie_dicom_io::web::metadata(&i.path, Some(&bulk)).map_err(|e| {
                        ApiError::internal(
                            "unreadable_instance",
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &e,
                        )
                    })
                })
                .collect::<ApiResult<Vec<_>>>()
        })
        .await?;
        Ok::<_, ApiError>(
            (
                [(header::CONTENT_TYPE, DICOM_JSON), (header::VARY, "Accept")],
                serde_json::to_vec(&items).unwrap_or_default(),
            )
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// What the client asked for: a transfer syntax, or `None` for as stored.
fn wanted_syntax(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(accept) = super::accept_ranges(headers, None) else {
        return Ok(Some(EXPLICIT_LE.into()));
    };
    for (essence, params) in &accept {
        let dicom_parts =
            param(params, "type").is_none_or(|t| t.eq_ignore_ascii_case("application/dicom"));
        if (essence == "multipart/related" && dicom_parts)
            || essence == "*/*"
            || essence == "multipart/*"
        {
            return Ok(match param(params, "transfer-syntax") {
                Some("*") => None,
                Some(ts) => Some(ts.to_string()),
                None => Some(EXPLICIT_LE.into()),
            });
        }
    }
    Err(ApiError::not_acceptable(
        "instances are served as multipart/related; type=\"application/dicom\"",
    ))
}

async fn retrieve(
    app: AppState,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    scope: WebScope,
) -> Response {
    let run = async {
        let wanted = wanted_syntax(&headers)?;
        let study = scope.study.clone().unwrap_or_default();
        let instances = find(&app, scope).await?;
        // Everything that cannot be served is refused before streaming.
        if let Some(ts) = &wanted {
            for i in &instances {
                if &i.transfer_syntax == ts {
                    continue;
                }
                let decodable = matches!(
                    transfer_syntax_support(&i.transfer_syntax),
                    TransferSyntaxSupport::Supported { .. }
                );
                if ts != EXPLICIT_LE || !decodable {
                    return Err(ApiError::not_acceptable(format!(
                        "instance {} is stored as {} and cannot be served as {ts}; ask for transfer-syntax=*",
                        i.sop_instance_uid, i.transfer_syntax
                    )));
                }
            }
        }
        // Transcoded before the first byte is sent, each into a file of
        // its own (memory holds one instance at a time): an instance whose
        // pixel data cannot be decoded (12-bit JPEG Extended, a corrupt
        // stream) is a 406 naming it, not a body cut short after a 200.
        // Given up when the request is (a timeout, a client gone): the
        // flag stops the transcodes between two instances.
        let cancelled = CancelOnDrop::default();
        let room = Room {
            layout: app.layout.clone(),
            min_free: app.config.storage.min_free_mib.saturating_mul(1 << 20),
            cancelled: cancelled.0.clone(),
        };
        let wanted_ts = wanted.clone();
        let instances = blocking(move || prepare(instances, wanted_ts.as_deref(), &room)).await?;
        drop(cancelled.disarm());
        let audit = app.audit.clone();
        let event = AuditEvent::new(
            EventKind::DicomwebRetrieve,
            "ok",
            serde_json::json!({
                "token": caller.map(|c| c.0.name.clone()),
                "instances": instances.len(),
                "transfer_syntax": wanted.as_deref().unwrap_or("*"),
            }),
        )
        .instance(Some(&study), None);
        let _ = tokio::task::spawn_blocking(move || audit.note(event)).await;
        let boundary = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let tail = boundary.clone();
        tokio::task::spawn_blocking(move || {
            for prepared in instances {
                let bytes = std::fs::read(prepared.path());
                let ts = prepared.transfer_syntax.clone();
                let head = format!(
                    "--{tail}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\nContent-Length: {}\r\n\r\n",
                    bytes.as_ref().map(Vec::len).unwrap_or(0)
                );
                let failed = bytes.is_err();
                let sent = tx
                    .blocking_send(Ok(Bytes::from(head)))
                    .and_then(|()| tx.blocking_send(bytes.map(Bytes::from)))
                    .and_then(|()| tx.blocking_send(Ok(Bytes::from_static(b"\r\n"))));
                if sent.is_err() || failed {
                    // The client left, or the instance is unreadable: the
                    // stream ends without its closing delimiter.
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(Bytes::from(format!("--{tail}--\r\n"))));
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok::<_, ApiError>(
            (
                [
                    (
                        header::CONTENT_TYPE,
                        format!(
                            "multipart/related; type=\"application/dicom\"; boundary={boundary}"
                        ),
                    ),
                    (header::VARY, "Accept".to_string()),
                ],
                Body::from_stream(stream),
            )
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// An instance ready to be sent: its file as stored, or a transcoded copy
/// in the staging folder, removed once sent (or at the next start).
struct Prepared {
    stored: std::path::PathBuf,
    transcoded: Option<std::path::PathBuf>,
    transfer_syntax: String,
}

impl Prepared {
    fn path(&self) -> &std::path::Path {
        self.transcoded.as_deref().unwrap_or(&self.stored)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(copy) = &self.transcoded {
            let _ = std::fs::remove_file(copy);
        }
    }
}

/// Sets its flag when dropped unless disarmed: the request was given up.
#[derive(Default)]
pub(super) struct CancelOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>, bool);

impl CancelOnDrop {
    /// The flag, to check from the work it stops.
    pub(super) fn flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.0.clone()
    }

    /// Keep the flag down when dropped: the work finished.
    pub(super) fn disarm(mut self) -> Self {
        self.1 = true;
        self
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Where transcoded copies go, and when to stop making them.
struct Room {
    layout: vigie_store::layout::Layout,
    /// Free space to leave (`storage.min_free_mib`): ingest's reserve is
    /// not spent on copies.
    min_free: u64,
    cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Each of `instances` as it will be sent in `wanted` (`None`: as stored),
/// transcoding into the staging folder the ones stored otherwise; the first
/// that cannot be transcoded is a 406 naming it and why. Copies are named
/// `wado-*.dcm.part`, which the start-up cleaning of staging removes if a
/// stop or crash leaves one.
fn prepare(
    instances: Vec<WebInstance>,
    wanted: Option<&str>,
    room: &Room,
) -> ApiResult<Vec<Prepared>> {
    let mut prepared = Vec::with_capacity(instances.len());
    for i in instances {
        if room.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::of_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request was given up",
            ));
        }
        let Some(ts) = wanted.filter(|ts| *ts != i.transfer_syntax) else {
            prepared.push(Prepared {
                stored: i.path,
                transcoded: None,
                transfer_syntax: i.transfer_syntax,
            });
            continue;
        };
        let bytes = {
            let _permit = TranscodePermit::take();
            vigie_dicom_io::web::transcode_to_explicit_le(&i.path)
        }
        .map_err(|e| {
            ApiError::not_acceptable(format!(
                "instance {} is stored as {} and cannot be served as {ts}: {}; ask for transfer-syntax=*",
                i.sop_instance_uid,
                i.transfer_syntax,
                short(&e)
            ))
        })?;
        let free = crate::http::free_bytes(&room.layout).unwrap_or(0);
        if free < room.min_free.saturating_add(bytes.len() as u64) {
            return Err(ApiError::of_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "not enough free space to transcode; ask for transfer-syntax=*",
            ));
        }
        let copy = room
            .layout
            .staging()
            .join(format!("wado-{}.dcm.part", uuid::Uuid::new_v4().simple()));
        std::fs::write(&copy, bytes).map_err(|e| {
            let _ = std::fs::remove_file(&copy);
            ApiError::internal(
                "transcode_not_held",
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot hold the transcoded instance: {e}"),
            )
        })?;
        prepared.push(Prepared {
            stored: i.path,
            transcoded: Some(copy),
            transfer_syntax: ts.to_string(),
        });
    }
    Ok(prepared)
}

/// What a transcoding error says, without the stored file's path (which
/// stays internal).
pub(super) fn short(e: &vigie_dicom_io::Error) -> String {
    let text = match e {
        vigie_dicom_io::Error::Open { reason, .. }
        | vigie_dicom_io::Error::Malformed { reason, .. }
        | vigie_dicom_io::Error::Limit { reason, .. }
        | vigie_dicom_io::Error::DecodePixelData { reason, .. }
        | vigie_dicom_io::Error::UnsupportedPixelData { reason, .. } => reason.clone(),
        other => other.code().to_string(),
    };
    text.chars().take(200).collect()
}

/// Transcodes running at once, service-wide: each holds a whole instance
/// and its decoded pixel data in memory (docs/performance.md, memory
/// bound), so more wait their turn.
const MAX_TRANSCODES: usize = 2;

static TRANSCODES: super::Slots = super::Slots::new(MAX_TRANSCODES);

/// The decodes of WADO-RS (transcodes, frames, bulk data, rendering): one
/// of [`MAX_TRANSCODES`] service-wide, released when dropped.
pub(super) struct TranscodePermit;

impl TranscodePermit {
    /// Wait for a permit.
    pub(super) fn take() -> super::Slot {
        TRANSCODES.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::dicomweb::accept_header as accept;

    #[test]
    fn accept_headers_choose_the_transfer_syntax() {
        assert_eq!(
            wanted_syntax(&HeaderMap::new()).unwrap().as_deref(),
            Some(EXPLICIT_LE)
        );
        assert_eq!(
            wanted_syntax(&accept(
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*"
            ))
            .unwrap(),
            None
        );
        assert_eq!(
            wanted_syntax(&accept("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50"))
                .unwrap()
                .as_deref(),
            Some("1.2.840.10008.1.2.4.50")
        );
        assert_eq!(
            wanted_syntax(&accept("*/*")).unwrap().as_deref(),
            Some(EXPLICIT_LE)
        );
        assert!(wanted_syntax(&accept("application/json")).is_err());
        assert!(wanted_syntax(&accept("multipart/related; type=\"image/jpeg\"")).is_err());
    }
}
