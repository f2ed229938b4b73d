//! WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 8.3.5.1,
//! 8.7.4): `…/rendered` and `…/thumbnail` at study, series, instance and
//! frame level, as `image/jpeg` (the default; baseline 8-bit) or
//! `image/png`.
//!
//! - **rendered**: a single-frame instance, or one frame, is one image; a
//!   multi-frame instance, several frames, a series or a study are a
//!   `multipart/related; type="image/jpeg"` (or png) with one part per
//!   frame, images of a series ordered by Instance Number, series by
//!   Series Number. Instances without pixel data (SR, …) are left out of a
//!   series or study, with a `Warning` saying how many; asked alone, they
//!   are a 406 (rendering SR as text is not served).
//! - **thumbnail**: one image, at most 128 pixels on a side unless a
//!   `viewport` says otherwise: the frame asked; the first frame of an
//!   instance; the middle image of a series; the middle image of a
//!   study's first image series (received images before Vigie's results).
//!
//! Query parameters: `window=center,width[,linear|linear-exact|sigmoid]`
//! (instead of the file's VOI), `viewport=vw,vh[,sx,sy,sw,sh]`,
//! `quality=1..100` (JPEG, default 90), `accept=` (a media type, which
//! takes the place of the Accept header); `annotation` is not supported
//! and is ignored with a `Warning`; `charset` is ignored. Anything else is
//! a 400. Every image is rendered before the response starts: an image
//! that cannot be (palette colour, an undecodable stream) is a 406 naming
//! it, never a body cut short.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::frames::{Part, frame_error, multipart};
use super::wado::{CancelOnDrop, TranscodePermit};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::{AppState, blocking};
use vigie_audit::{AuditEvent, EventKind};
use vigie_dicom_io::frames::parse_frame_list;
use vigie_dicom_io::multipart::param;
use vigie_dicom_io::render::{ImageFormat, RenderParams, parse_viewport, parse_window};
use vigie_store::{Origin, WebInstance, WebScope};

/// Side of a thumbnail when no viewport is asked.
pub const THUMBNAIL_SIDE: u32 = 128;

/// Most frames one rendered request may produce.
pub const MAX_RENDERED_FRAMES: usize = 2000;

/// Most bytes of pixels one rendered request may produce (before
/// encoding), besides `limits.max_decoded_mib`.
pub const MAX_RENDERED_BYTES: u64 = 256 << 20;

/// Rendered requests of several images running at once, service-wide.
const MAX_MULTI_RENDERS: usize = 2;

static RENDERS: super::Slots = super::Slots::new(MAX_MULTI_RENDERS);

/// One of [`MAX_MULTI_RENDERS`], released when dropped.
struct RenderSlot;

impl RenderSlot {
    fn take() -> super::Slot {
        RENDERS.take()
    }
}

/// Default JPEG quality.
const DEFAULT_QUALITY: u8 = 90;

/// Which resource was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Study(String),
    Series(String, String),
    Instance(String, String, String),
    Frames(String, String, String, Vec<u32>),
}

impl Target {
    fn scope(&self) -> WebScope {
        let s = |v: &String| Some(v.clone());
        match self {
            Self::Study(st) => WebScope {
                study: s(st),
                ..WebScope::default()
            },
            Self::Series(st, se) => WebScope {
                study: s(st),
                series: s(se),
                instance: None,
            },
            Self::Instance(st, se, i) | Self::Frames(st, se, i, _) => WebScope {
                study: s(st),
                series: s(se),
                instance: s(i),
            },
        }
    }

    fn study(&self) -> &str {
        match self {
            Self::Study(s) | Self::Series(s, _) | Self::Instance(s, ..) | Self::Frames(s, ..) => s,
        }
    }
}

/// Parse the path: the target and whether a thumbnail is asked.
fn target(path: &str) -> Option<(Target, bool)> {
    // PS3.18 lets the frame list's commas be escaped (%2C).
    let path = path.replace("%2C", ",").replace("%2c", ",");
    let mut segments: Vec<&str> = path.trim_start_matches("/dicomweb/").split('/').collect();
    let thumbnail = match segments.pop()? {
        "rendered" => false,
        "thumbnail" => true,
        _ => return None,
    };
    let o = |s: &&str| (*s).to_string();
    let target = match segments.as_slice() {
        ["studies", st] => Target::Study(o(st)),
        ["studies", st, "series", se] => Target::Series(o(st), o(se)),
        ["studies", st, "series", se, "instances", i] => Target::Instance(o(st), o(se), o(i)),
        ["studies", st, "series", se, "instances", i, "frames", list] => {
            Target::Frames(o(st), o(se), o(i), parse_frame_list(list)?)
        }
        _ => return None,
    };
    Some((target, thumbnail))
}

/// The query parameters, checked.
struct Asked {
    params: RenderParams,
    quality: u8,
    accept: Option<String>,
    warnings: Vec<String>,
}

fn asked(query: &[(String, String)], thumbnail: bool) -> ApiResult<Asked> {
    let mut asked = Asked {
        params: RenderParams::default(),
        quality: DEFAULT_QUALITY,
        accept: None,
        warnings: Vec::new(),
    };
    for (name, value) in query {
        match name.as_str() {
            "window" => {
                asked.params.window = Some(parse_window(value).ok_or_else(|| {
                    ApiError::bad_request(
                        "window is center,width[,function]: numbers, width at least 1, function linear, linear-exact or sigmoid",
                    )
                })?);
            }
            "viewport" => {
                let (viewport, region) = parse_viewport(value).ok_or_else(|| {
                    ApiError::bad_request(
                        "viewport is vw,vh[,sx,sy,sw,sh]: vw and vh from 1 to 4096, the region in pixels",
                    )
                })?;
                asked.params.viewport = Some(viewport);
                asked.params.region = region;
            }
            "quality" => {
                asked.quality = value
                    .parse::<u8>()
                    .ok()
                    .filter(|q| (1..=100).contains(q))
                    .ok_or_else(|| ApiError::bad_request("quality is from 1 to 100"))?;
            }
            "accept" => asked.accept = Some(value.clone()),
            "annotation" => asked
                .warnings
                .push("annotation is not supported: the image has none".into()),
            "iccprofile" => asked
                .warnings
                .push("iccprofile is not supported: no ICC profile is embedded".into()),
            "charset" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} for a rendered resource (window, viewport, quality, accept, annotation, charset)"
                )));
            }
        }
    }
    if thumbnail {
        asked.params.shrink_only = true;
        if asked.params.viewport.is_none() {
            asked.params.viewport = Some((THUMBNAIL_SIDE, THUMBNAIL_SIDE));
        }
    }
    Ok(asked)
}

/// The image format, and whether the images go in a multipart body.
fn negotiate(
    accept: Option<&str>,
    headers: &HeaderMap,
    many: bool,
    quality: u8,
) -> ApiResult<(ImageFormat, bool)> {
    let ranges = super::accept_ranges(headers, accept);
    let format = |t: &str| match t {
        "image/jpeg" | "image/*" | "*/*" => Some(ImageFormat::Jpeg(quality)),
        "image/png" => Some(ImageFormat::Png),
        _ => None,
    };
    let Some(ranges) = ranges else {
        return Ok((ImageFormat::Jpeg(quality), many));
    };
    for (essence, params) in &ranges {
        match essence.as_str() {
            "multipart/related" => {
                let kind = param(params, "type")
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| "image/jpeg".into());
                if let Some(f) = format(&kind) {
                    return Ok((f, true));
                }
            }
            "multipart/*" => return Ok((ImageFormat::Jpeg(quality), true)),
            "*/*" => return Ok((ImageFormat::Jpeg(quality), many)),
            single => {
                if let Some(f) = format(single)
                    && !many
                {
                    return Ok((f, false));
                }
            }
        }
    }
    Err(ApiError::not_acceptable(if many {
        "this resource renders to several images: served as multipart/related; type=\"image/jpeg\" or \"image/png\""
    } else {
        "rendered images are served as image/jpeg or image/png"
    }))
}

fn number(i: &WebInstance, tag: &str) -> i64 {
    i.attributes
        .get(tag)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(i64::MAX)
}

/// Rows, Columns and Bits Allocated, as the index keys them.
const ROWS: &str = "00280010";
const COLUMNS: &str = "00280011";
const BITS_ALLOCATED: &str = "00280100";

/// Whether an instance can be rendered, from what the index holds: pixel
/// data (Rows) of 8 or 16 bits allocated (not a 1-bit SEG, not 32-bit or
/// float data). Palette colour is found when decoding.
fn renderable(i: &WebInstance) -> Result<(), String> {
    if !i.attributes.contains_key(ROWS) {
        return Err("the instance has no pixel data; rendering non-image instances (SR as text/html) is not served".into());
    }
    match i
        .attributes
        .get(BITS_ALLOCATED)
        .and_then(|b| b.trim().parse::<u32>().ok())
    {
        None | Some(8) | Some(16) => Ok(()),
        Some(bits) => Err(format!(
            "images of {bits} bits allocated are not rendered (8 and 16 only)"
        )),
    }
}

/// A region of the viewport parameter lies within the frame.
fn check_region(region: vigie_dicom_io::render::Region, columns: u64, rows: u64) -> ApiResult<()> {
    match region.bounds(columns as f64, rows as f64) {
        Some(_) => Ok(()),
        None => Err(ApiError::bad_request(format!(
            "the viewport region {},{},{},{} is not within the {columns}x{rows} frame",
            region.x, region.y, region.width, region.height
        ))),
    }
}

fn frames_of(i: &WebInstance) -> u32 {
    i.attributes
        .get("00280008")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// The images of a series or study in reading order: series by Series
/// Number (received before created), instances by Instance Number.
fn in_order(mut instances: Vec<WebInstance>) -> Vec<WebInstance> {
    instances.sort_by_key(|i| {
        (
            i.origin != Origin::Received,
            number(i, "00200011"),
            i.series_instance_uid.clone(),
            number(i, "00200013"),
        )
    });
    instances
}

/// `GET …/rendered` and `…/thumbnail` at every level.
pub async fn rendered_resource(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let run = async {
        let (target, thumbnail) = target(uri.path()).ok_or_else(|| {
            ApiError::bad_request("the frame list is comma-separated frame numbers from 1")
        })?;
        let asked = asked(&query, thumbnail)?;
        let state = app.clone();
        let scope = target.scope();
        let found = blocking(move || Ok(state.catalog.web_instances(&scope)?)).await?;
        if found.is_empty() {
            return Err(ApiError::not_found("no such study, series or instance"));
        }
        let mut warnings = asked.warnings.clone();
        let study_or_series = matches!(target, Target::Series(..) | Target::Study(..));
        // What to render: each instance once, with its frames in order.
        let jobs: Vec<(WebInstance, Vec<u32>)> = match &target {
            Target::Frames(.., numbers) => {
                let i = &found[0];
                if !i.attributes.contains_key(ROWS) {
                    return Err(ApiError::not_found("the instance has no pixel data"));
                }
                renderable(i).map_err(ApiError::not_acceptable)?;
                let frames = if thumbnail {
                    vec![numbers[0]]
                } else {
                    numbers.clone()
                };
                vec![(i.clone(), frames)]
            }
            Target::Instance(..) => {
                let i = &found[0];
                renderable(i).map_err(ApiError::not_acceptable)?;
                let frames = if thumbnail {
                    vec![1]
                } else {
                    (1..=frames_of(i).min(MAX_RENDERED_FRAMES as u32 + 1)).collect()
                };
                vec![(i.clone(), frames)]
            }
            Target::Series(..) | Target::Study(..) => {
                let total = found.len();
                let images = in_order(
                    found
                        .into_iter()
                        .filter(|i| renderable(i).is_ok())
                        .collect(),
                );
                if images.is_empty() {
                    return Err(ApiError::not_acceptable(
                        "no instance here can be rendered (no pixel data, SEG, or a pixel format that is not rendered)",
                    ));
                }
                if images.len() < total {
                    warnings.push(format!(
                        "{} instance(s) not rendered: no pixel data (SR), or a pixel format that is not rendered (SEG, 1 or 32 bits)",
                        total - images.len()
                    ));
                }
                if thumbnail {
                    let first = images[0].series_instance_uid.clone();
                    let series: Vec<&WebInstance> = images
                        .iter()
                        .filter(|i| i.series_instance_uid == first)
                        .collect();
                    vec![(series[series.len() / 2].clone(), vec![1])]
                } else {
                    let mut left = MAX_RENDERED_FRAMES + 1;
                    let mut jobs = Vec::new();
                    for i in images {
                        if left == 0 {
                            break;
                        }
                        let n = (frames_of(&i) as usize).min(left);
                        left -= n;
                        jobs.push((i, (1..=n as u32).collect()));
                    }
                    jobs
                }
            }
        };
        let count: usize = jobs.iter().map(|(_, f)| f.len()).sum();
        if count > MAX_RENDERED_FRAMES {
            return Err(ApiError::of_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "more than {MAX_RENDERED_FRAMES} frames to render; ask series by series or frame by frame"
                ),
            ));
        }
        // What the images will hold, at most: within the decoded-size limit
        // and at most MAX_RENDERED_BYTES.
        let limit = vigie_dicom_io::scan::limits()
            .max_decoded_bytes
            .min(MAX_RENDERED_BYTES);
        let mut bytes = 0u64;
        for (i, frames) in &jobs {
            let (rows, columns) = (
                number(i, ROWS).max(1) as u64,
                number(i, COLUMNS).max(1) as u64,
            );
            if let Some(region) = asked.params.region {
                check_region(region, columns, rows)?;
            }
            let per_frame = match asked.params.viewport {
                Some((vw, vh)) => u64::from(vw) * u64::from(vh),
                None => rows.saturating_mul(columns),
            };
            bytes = bytes.saturating_add(per_frame.saturating_mul(3 * frames.len() as u64));
        }
        if bytes > limit {
            return Err(ApiError::of_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the images asked would hold {} MiB, above the limit of {} MiB; ask fewer frames or a smaller viewport",
                    bytes >> 20,
                    limit >> 20
                ),
            ));
        }
        let many = !thumbnail && (count > 1 || study_or_series);
        let (format, in_parts) = negotiate(asked.accept.as_deref(), &headers, many, asked.quality)?;
        let params = asked.params.clone();
        // Given up with the request (a timeout, a client gone): the flag
        // stops the rendering between two instances.
        let cancelled = CancelOnDrop::default();
        let flag = cancelled.flag();
        let (images, skipped) = blocking(move || {
            // Requests of several images hold them all until the last is
            // rendered: two such requests at a time.
            let _slot = (count > 1).then(RenderSlot::take);
            let mut images = Vec::with_capacity(count);
            let mut skipped = 0usize;
            for (instance, frames) in &jobs {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(ApiError::of_status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the request was given up",
                    ));
                }
                let rendered = {
                    let _permit = TranscodePermit::take();
                    // Given up while waiting for the permit: nothing decoded.
                    if flag.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(ApiError::of_status(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the request was given up",
                        ));
                    }
                    vigie_dicom_io::render::render_frames(&instance.path, frames, &params)
                };
                let rendered = match rendered {
                    Ok(rendered) => rendered,
                    // An image of a pixel format that is not rendered
                    // (palette colour, …) is left out of a series, as the
                    // instances the index already shows are.
                    Err(vigie_dicom_io::Error::UnsupportedPixelData { .. }) if study_or_series => {
                        skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(frame_error(&e)),
                };
                for image in rendered {
                    images.push(vigie_dicom_io::render::encode(&image, format).map_err(|e| {
                        ApiError::internal("not_encoded", StatusCode::INTERNAL_SERVER_ERROR, &e)
                    })?);
                }
            }
            Ok((images, skipped))
        })
        .await?;
        drop(cancelled.disarm());
        if images.is_empty() {
            return Err(ApiError::not_acceptable(
                "no instance here can be rendered (their pixel format, e.g. palette colour, is not rendered)",
            ));
        }
        if skipped > 0 {
            warnings.push(format!(
                "{skipped} instance(s) not rendered: their pixel format is not rendered (palette colour, …)"
            ));
        }
        let count = images.len();
        let event = AuditEvent::new(
            EventKind::DicomwebRetrieve,
            "ok",
            serde_json::json!({
                "token": caller.as_ref().map(|c| c.0.name.clone()),
                "resource": if thumbnail { "thumbnail" } else { "rendered" },
                "frames": count,
                "media_type": format.media_type(),
            }),
        )
        .instance(Some(target.study()), None);
        let audit = app.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.note(event)).await;
        let extra: Vec<(header::HeaderName, String)> = warnings
            .iter()
            .map(|w| (header::WARNING, format!("299 vigie \"{w}\"")))
            .chain(std::iter::once((
                header::CACHE_CONTROL,
                "private, max-age=300".to_string(),
            )))
            .collect();
        if in_parts {
            let parts = images
                .into_iter()
                .map(|body| Part {
                    content_type: format.media_type().to_string(),
                    location: None,
                    body,
                })
                .collect();
            return Ok(multipart(format.media_type(), parts, &extra));
        }
        let mut response = (
            [
                (header::CONTENT_TYPE, format.media_type()),
                (header::VARY, "Accept"),
            ],
            images.into_iter().next().unwrap_or_default(),
        )
            .into_response();
        for (name, value) in extra {
            if let Ok(value) = value.parse() {
                response.headers_mut().append(name, value);
            }
        }
        Ok::<_, ApiError>(response)
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::dicomweb::accept_header as accept;

    #[test]
    fn targets() {
        assert_eq!(
            target("/dicomweb/studies/1/rendered"),
            Some((Target::Study("1".into()), false))
        );
        assert_eq!(
            target("/dicomweb/studies/1/series/2/instances/3/frames/1,2/thumbnail"),
            Some((
                Target::Frames("1".into(), "2".into(), "3".into(), vec![1, 2]),
                true
            ))
        );
        assert_eq!(
            target("/dicomweb/studies/1/series/2/instances/3/frames/0/rendered"),
            None
        );
        assert_eq!(target("/dicomweb/studies/1/metadata"), None);
    }

    #[test]
    fn negotiation() {
        let none = HeaderMap::new();
        assert_eq!(
            negotiate(None, &none, false, 90).unwrap(),
            (ImageFormat::Jpeg(90), false)
        );
        assert_eq!(
            negotiate(None, &none, true, 90).unwrap(),
            (ImageFormat::Jpeg(90), true)
        );
        assert_eq!(
            negotiate(None, &accept("image/png"), false, 90).unwrap(),
            (ImageFormat::Png, false)
        );
        assert_eq!(
            negotiate(Some("image/png"), &accept("image/jpeg"), false, 90).unwrap(),
            (ImageFormat::Png, false),
            "the accept parameter takes the place of the header"
        );
        assert!(negotiate(None, &accept("image/png"), true, 90).is_err());
        assert_eq!(
            negotiate(
                None,
                &accept("multipart/related; type=\"image/png\""),
                true,
                90
            )
            .unwrap(),
            (ImageFormat::Png, true)
        );
        assert!(negotiate(None, &accept("image/gif"), false, 90).is_err());
        assert!(negotiate(None, &accept("image/jpeg; q=0"), false, 90).is_err());
    }

    #[test]
    fn query_parameters() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let a = asked(&q(&[("window", "40,400"), ("quality", "70")]), false).unwrap();
        assert_eq!(a.quality, 70);
        assert!(a.params.window.is_some());
        assert_eq!(a.params.viewport, None);
        let t = asked(&[], true).unwrap();
        assert_eq!(t.params.viewport, Some((THUMBNAIL_SIDE, THUMBNAIL_SIDE)));
        assert_eq!(
            asked(&q(&[("annotation", "patient")]), false)
                .unwrap()
                .warnings
                .len(),
            1
        );
        assert!(asked(&q(&[("quality", "0")]), false).is_err());
        assert!(asked(&q(&[("frame", "1")]), false).is_err());
    }
}
