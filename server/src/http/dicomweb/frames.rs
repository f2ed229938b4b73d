//! WADO-RS frames and bulk data (PS3.18 10.4.1.1.4–5, media types of
//! 8.7.3):
//!
//! - `…/instances/{instance}/frames/{list}`: the frames named (`1,3,5`),
//!   one part each, in the order named;
//! - `…/instances/{instance}/bulkdata/{path}`: the value of a binary
//!   attribute that the metadata points to with a BulkDataURI; for Pixel
//!   Data (`7FE00010`), the whole value when native, one part per frame
//!   when sent compressed.
//!
//! Media types (`Accept`, parts of `multipart/related`):
//! `application/octet-stream` with no `transfer-syntax` or Explicit VR
//! Little Endian gets the frames uncompressed (compressed pixel data
//! decoded, two decodes at a time service-wide); `transfer-syntax=*` gets
//! them as stored (the compressed bitstream of each frame), uncompressed
//! when the stored syntax is native or its frames cannot be delimited;
//! the compressed media types (`image/jpeg`, `image/jls`, `image/jp2`,
//! `image/jpx`, `image/jphc`, `image/dicom-rle`) get the stored bitstream
//! of an instance stored in a syntax of that type. Every part says its
//! transfer syntax. Anything else is a 406, decided before a byte is sent.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::wado::{TranscodePermit, short};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::{AppState, base_url, blocking};
use vigie_audit::{AuditEvent, EventKind};
use vigie_dicom_io::frames::{
    BulkPath, EXPLICIT_VR_LITTLE_ENDIAN, FrameForm, Frames, parse_frame_list,
};
use vigie_dicom_io::multipart::param;
use vigie_dicom_io::{TransferSyntaxSupport, transfer_syntax_support};
use vigie_store::{WebInstance, WebScope};

/// Path of an instance resource.
type InstancePath = (String, String, String, String);

/// The media type of a compressed transfer syntax's frames (PS3.18
/// Table 8.7.3-5), `None` for native and unknown syntaxes.
pub fn bulk_media_type(transfer_syntax: &str) -> Option<&'static str> {
    Some(match transfer_syntax {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        _ => return None,
    })
}

/// The transfer syntax a compressed media type stands for when the
/// client names none (PS3.18 Table 8.7.3-5, its default).
fn default_syntax(media: &str) -> Option<&'static str> {
    Some(match media {
        "image/jpeg" => "1.2.840.10008.1.2.4.70",
        "image/jls" => "1.2.840.10008.1.2.4.80",
        "image/jp2" => "1.2.840.10008.1.2.4.90",
        "image/jpx" => "1.2.840.10008.1.2.4.92",
        "image/jphc" => "1.2.840.10008.1.2.4.201",
        "image/dicom-rle" => "1.2.840.10008.1.2.5",
        _ => return None,
    })
}

/// What the client accepts for frames of an instance stored in `stored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    form: FrameForm,
    /// Media type of the parts.
    media: &'static str,
    /// `transfer-syntax=*`: frames that cannot be delimited as stored may
    /// come uncompressed instead.
    any_syntax: bool,
}

fn wanted_form(headers: &HeaderMap, stored: &str) -> ApiResult<Wanted> {
    let octet = |form, any_syntax| Wanted {
        form,
        media: "application/octet-stream",
        any_syntax,
    };
    let Some(ranges) = super::accept_ranges(headers, None) else {
        return Ok(octet(FrameForm::Uncompressed, false));
    };
    let compressed = bulk_media_type(stored);
    for (essence, params) in &ranges {
        let (kind, ts) = match essence.as_str() {
            "multipart/related" => (
                param(params, "type")
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| "application/octet-stream".into()),
                param(params, "transfer-syntax"),
            ),
            "*/*" | "multipart/*" => ("application/octet-stream".into(), None),
            _ => continue,
        };
        match kind.as_str() {
            "application/octet-stream" | "*/*" => match ts {
                None => return Ok(octet(FrameForm::Uncompressed, false)),
                Some(ts) if ts == EXPLICIT_VR_LITTLE_ENDIAN => {
                    return Ok(octet(FrameForm::Uncompressed, false));
                }
                Some("*") => return Ok(octet(FrameForm::AsStored, true)),
                Some(ts) if ts == stored && compressed.is_some() => {
                    return Ok(octet(FrameForm::AsStored, false));
                }
                Some(_) => continue,
            },
            other => {
                // No transfer-syntax: the media type's default syntax only.
                if let Some(media) = compressed.filter(|m| *m == other)
                    && ts.map_or(default_syntax(media) == Some(stored), |ts| {
                        ts == "*" || ts == stored
                    })
                {
                    return Ok(Wanted {
                        form: FrameForm::AsStored,
                        media,
                        any_syntax: false,
                    });
                }
            }
        }
    }
    Err(ApiError::not_acceptable(format!(
        "frames of this instance (stored as {stored}) are served as multipart/related; type=\"application/octet-stream\" (uncompressed, or transfer-syntax=* as stored){}",
        compressed
            .map(|m| format!(" or type=\"{m}\""))
            .unwrap_or_default()
    )))
}

async fn instance(
    app: &AppState,
    study: String,
    series: String,
    sop: String,
) -> ApiResult<WebInstance> {
    let state = app.clone();
    let scope = WebScope {
        study: Some(study),
        series: Some(series),
        instance: Some(sop),
    };
    blocking(move || Ok(state.catalog.web_instances(&scope)?))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("no such study, series or instance"))
}

/// The HTTP answer to a frame or rendering error of dicom-io.
pub fn frame_error(e: &vigie_dicom_io::Error) -> ApiError {
    use vigie_dicom_io::Error as E;
    match e {
        E::NoSuchFrame { frames: 0, .. } => ApiError::not_found("the instance has no pixel data"),
        E::NoSuchFrame { frame, frames, .. } => ApiError::bad_request(format!(
            "no frame {frame}: the instance has {frames} frame(s)"
        )),
        E::Limit { .. } => ApiError::of_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("not served: {}", short(e)),
        ),
        E::UnsupportedTransferSyntax { .. }
        | E::UnsupportedPixelData { .. }
        | E::DecodePixelData { .. }
        | E::FramesNotDelimited { .. } => ApiError::not_acceptable(format!(
            "instance {}: {}",
            e.sop_instance_uid().unwrap_or("?"),
            short(e)
        )),
        other => ApiError::internal(
            "unreadable_instance",
            StatusCode::INTERNAL_SERVER_ERROR,
            other,
        ),
    }
}

/// Files above this size are read under a transcode permit even when
/// nothing is decoded: a large multi-frame instance is held whole (and its
/// frames copied) while its frames are cut, and these reads stay within
/// the memory bound of docs/performance.md.
const LARGE_INSTANCE: u64 = 4 << 20;

/// Whether reading an instance holds more than its file's size: above
/// [`LARGE_INSTANCE`], or deflated (it inflates when read).
fn large(instance: &WebInstance) -> bool {
    instance.size > LARGE_INSTANCE || instance.transfer_syntax == "1.2.840.10008.1.2.1.99"
}

/// Read frames, decoding under a transcode permit when they are wanted
/// uncompressed from a compressed instance (or the file is large); as
/// stored, frames that cannot be delimited fall back to uncompressed when
/// `fallback` (the client accepted any syntax).
fn read(
    instance: &WebInstance,
    numbers: &[u32],
    form: FrameForm,
    fallback: bool,
) -> ApiResult<Frames> {
    let decodes = bulk_media_type(&instance.transfer_syntax).is_some();
    // One permit at most per request (two would deadlock two requests).
    let large = large(instance).then(TranscodePermit::take);
    let uncompressed = |numbers: &[u32]| {
        if decodes
            && !matches!(
                transfer_syntax_support(&instance.transfer_syntax),
                TransferSyntaxSupport::Supported { .. }
            )
        {
            let hint = if form == FrameForm::AsStored {
                " (and its frames cannot be delimited as stored)"
            } else {
                "; ask for transfer-syntax=*"
            };
            return Err(ApiError::not_acceptable(format!(
                "instance {} is stored as {}, which this appliance does not decode{hint}",
                instance.sop_instance_uid, instance.transfer_syntax
            )));
        }
        let _permit = (decodes && large.is_none()).then(TranscodePermit::take);
        vigie_dicom_io::frames::read_frames(&instance.path, numbers, FrameForm::Uncompressed)
            .map_err(|e| frame_error(&e))
    };
    match form {
        FrameForm::Uncompressed => uncompressed(numbers),
        FrameForm::AsStored => {
            match vigie_dicom_io::frames::read_frames(&instance.path, numbers, form) {
                Ok(frames) => Ok(frames),
                Err(vigie_dicom_io::Error::FramesNotDelimited { .. }) if fallback => {
                    uncompressed(numbers)
                }
                Err(e) => Err(frame_error(&e)),
            }
        }
    }
}

/// One part of a multipart/related body.
#[derive(Debug)]
pub struct Part {
    /// Its Content-Type.
    pub content_type: String,
    /// Its Content-Location, when it has one.
    pub location: Option<String>,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// A multipart/related response of `parts`, its `type` parameter `kind`.
pub fn multipart(kind: &str, parts: Vec<Part>, extra: &[(header::HeaderName, String)]) -> Response {
    let boundary = uuid::Uuid::new_v4().simple().to_string();
    let mut body = Vec::with_capacity(parts.iter().map(|p| p.body.len() + 200).sum());
    for part in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {}\r\n", part.content_type).as_bytes(),
        );
        if let Some(location) = &part.location {
            body.extend_from_slice(format!("Content-Location: {location}\r\n").as_bytes());
        }
        body.extend_from_slice(format!("Content-Length: {}\r\n\r\n", part.body.len()).as_bytes());
        body.extend_from_slice(&part.body);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                format!("multipart/related; type=\"{kind}\"; boundary={boundary}"),
            ),
            (header::VARY, "Accept".to_string()),
        ],
        body,
    )
        .into_response();
    for (name, value) in extra {
        if let Ok(value) = value.parse() {
            response.headers_mut().append(name.clone(), value);
        }
    }
    response
}

fn part_type(media: &str, transfer_syntax: &str) -> String {
    format!("{media}; transfer-syntax={transfer_syntax}")
}

async fn audited(app: &AppState, caller: Option<&Caller>, study: &str, details: serde_json::Value) {
    let mut details = details;
    details["token"] = serde_json::json!(caller.map(|c| c.name.clone()));
    let event =
        AuditEvent::new(EventKind::DicomwebRetrieve, "ok", details).instance(Some(study), None);
    let audit = app.audit.clone();
    let _ = tokio::task::spawn_blocking(move || audit.note(event)).await;
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}`.
pub async fn retrieve_frames(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    Path((study, series, sop, list)): Path<InstancePath>,
) -> Response {
    let run = async {
        let numbers = parse_frame_list(&list).ok_or_else(|| {
            ApiError::bad_request(
                "the frame list is comma-separated frame numbers from 1 (at most 10000)",
            )
        })?;
        let found = instance(&app, study.clone(), series.clone(), sop.clone()).await?;
        let wanted = wanted_form(&headers, &found.transfer_syntax)?;
        let media = wanted.media;
        let asked = numbers.clone();
        let frames = blocking(move || read(&found, &asked, wanted.form, wanted.any_syntax)).await?;
        let base = format!(
            "{}/studies/{study}/series/{series}/instances/{sop}/frames",
            base_url(&app, &headers)
        );
        audited(
            &app,
            caller.as_ref().map(|c| &c.0),
            &study,
            serde_json::json!({
                "resource": "frames",
                "instances": 1,
                "frames": numbers.len(),
                "transfer_syntax": frames.transfer_syntax,
            }),
        )
        .await;
        let ts = frames.transfer_syntax.clone();
        let parts = frames
            .frames
            .into_iter()
            .zip(&numbers)
            .map(|(body, n)| Part {
                content_type: part_type(media, &ts),
                location: Some(format!("{base}/{n}")),
                body,
            })
            .collect();
        Ok::<_, ApiError>(multipart(media, parts, &[]))
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}`.
pub async fn retrieve_bulk(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    Path((study, series, sop, path)): Path<InstancePath>,
) -> Response {
    let run = async {
        let at = BulkPath::parse(&path).ok_or_else(|| {
            ApiError::bad_request(
                "a bulk data path is TTTTTTTT, or SSSSSSSS.i.TTTTTTTT inside item i of a sequence",
            )
        })?;
        let found = instance(&app, study.clone(), series.clone(), sop.clone()).await?;
        let pixel_data = at.items.is_empty() && at.tag == vigie_dicom_io::frames::PIXEL_DATA;
        let (kind, parts) = if pixel_data {
            let wanted = wanted_form(&headers, &found.transfer_syntax)?;
            let (form, media, fallback) = (wanted.form, wanted.media, wanted.any_syntax);
            let parts = blocking(move || {
                // Any decode (asked, or the fallback) and any large read
                // holds the one permit of this request.
                let compressed = bulk_media_type(&found.transfer_syntax).is_some();
                let _permit = (compressed || large(&found)).then(TranscodePermit::take);
                let read = vigie_dicom_io::frames::pixel_data_bulk(&found.path, form);
                let read = match read {
                    Err(vigie_dicom_io::Error::FramesNotDelimited { .. }) if fallback => {
                        vigie_dicom_io::frames::pixel_data_bulk(
                            &found.path,
                            FrameForm::Uncompressed,
                        )
                    }
                    other => other,
                };
                read.map_err(|e| frame_error(&e))
            })
            .await?;
            let ts = parts.transfer_syntax.clone();
            (
                media,
                parts
                    .frames
                    .into_iter()
                    .map(|body| Part {
                        content_type: part_type(media, &ts),
                        location: None,
                        body,
                    })
                    .collect::<Vec<_>>(),
            )
        } else {
            octet_stream_accepted(&headers)?;
            let stored = found.transfer_syntax.clone();
            let value = blocking(move || {
                let _permit = large(&found).then(TranscodePermit::take);
                vigie_dicom_io::frames::bulk_value(&found.path, &at).map_err(|e| {
                    ApiError::internal("unreadable_instance", StatusCode::INTERNAL_SERVER_ERROR, &e)
                })
            })
            .await?
            .ok_or_else(|| ApiError::not_found("the instance has no binary attribute there"))?;
            // A nested encapsulated value (an icon image) is as stored.
            let syntax = if value.encapsulated {
                stored.as_str()
            } else {
                EXPLICIT_VR_LITTLE_ENDIAN
            };
            (
                "application/octet-stream",
                vec![Part {
                    content_type: part_type("application/octet-stream", syntax),
                    location: None,
                    body: value.bytes,
                }],
            )
        };
        audited(
            &app,
            caller.as_ref().map(|c| &c.0),
            &study,
            serde_json::json!({ "resource": "bulkdata", "instances": 1, "attribute": path }),
        )
        .await;
        Ok::<_, ApiError>(multipart(kind, parts, &[]))
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// Bulk data other than Pixel Data is served as `application/octet-stream`.
fn octet_stream_accepted(headers: &HeaderMap) -> ApiResult<()> {
    let ok = super::accept_ranges(headers, None).is_none_or(|ranges| {
        ranges
            .iter()
            .any(|(essence, params)| match essence.as_str() {
                "*/*" | "multipart/*" => true,
                "multipart/related" => param(params, "type").is_none_or(|t| {
                    t.eq_ignore_ascii_case("application/octet-stream") || t == "*/*"
                }),
                _ => false,
            })
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(
            "bulk data is served as multipart/related; type=\"application/octet-stream\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::dicomweb::accept_header as accept;

    const JPEG: &str = "1.2.840.10008.1.2.4.50";

    #[test]
    fn accept_chooses_the_form() {
        use FrameForm::*;
        let w = |form, media, any_syntax| Wanted {
            form,
            media,
            any_syntax,
        };
        let octet = "application/octet-stream";
        let form = |value: &str, stored: &str| wanted_form(&accept(value), stored);
        assert_eq!(
            wanted_form(&HeaderMap::new(), JPEG).unwrap(),
            w(Uncompressed, octet, false)
        );
        assert_eq!(
            form(
                "multipart/related; type=application/octet-stream; transfer-syntax=*",
                JPEG
            )
            .unwrap(),
            w(AsStored, octet, true)
        );
        // The stored syntax named: as stored, and never another instead.
        assert_eq!(
            form(
                &format!(
                    "multipart/related; type=application/octet-stream; transfer-syntax={JPEG}"
                ),
                JPEG
            )
            .unwrap(),
            w(AsStored, octet, false)
        );
        assert_eq!(
            form(
                &format!("multipart/related; type=\"image/jpeg\"; transfer-syntax={JPEG}"),
                JPEG
            )
            .unwrap(),
            w(AsStored, "image/jpeg", false)
        );
        // image/jpeg alone means its default syntax, JPEG Lossless SV1.
        assert!(form("multipart/related; type=\"image/jpeg\"", JPEG).is_err());
        assert_eq!(
            form(
                "multipart/related; type=\"image/jpeg\"",
                "1.2.840.10008.1.2.4.70"
            )
            .unwrap(),
            w(AsStored, "image/jpeg", false)
        );
        assert_eq!(
            form("multipart/related; type=\"application/octet-stream\"; transfer-syntax=1.2.840.10008.1.2.1", JPEG).unwrap(),
            w(Uncompressed, octet, false)
        );
        // A compressed type the instance is not stored in, then a fallback.
        assert!(form("multipart/related; type=\"image/jls\"", JPEG).is_err());
        assert_eq!(
            form("multipart/related; type=\"image/jls\", multipart/related; type=\"application/octet-stream\"", JPEG).unwrap(),
            w(Uncompressed, octet, false)
        );
        // The weights decide, not the order.
        assert_eq!(
            form("multipart/related; type=\"application/octet-stream\"; q=0.5, multipart/related; type=application/octet-stream; transfer-syntax=*", JPEG).unwrap(),
            w(AsStored, octet, true)
        );
        // Native instances have no compressed form.
        assert!(
            form(
                "multipart/related; type=\"image/jpeg\"",
                EXPLICIT_VR_LITTLE_ENDIAN
            )
            .is_err()
        );
        assert!(form("application/dicom", JPEG).is_err());
        assert!(
            form(
                "multipart/related; type=\"application/octet-stream\"; q=0",
                JPEG
            )
            .is_err()
        );
    }

    #[test]
    fn compressed_syntaxes_have_media_types() {
        assert_eq!(bulk_media_type(JPEG), Some("image/jpeg"));
        assert_eq!(
            bulk_media_type("1.2.840.10008.1.2.5"),
            Some("image/dicom-rle")
        );
        assert_eq!(bulk_media_type(EXPLICIT_VR_LITTLE_ENDIAN), None);
        assert_eq!(bulk_media_type("1.2.840.10008.1.2"), None);
    }
}
