//! DICOMweb (PS3.18) under `/dicomweb`:
//!
//! - [`stow`]: `POST /studies[/{study}]`, multipart/related of Part 10
//!   instances, stored by the same durable ingest as C-STORE.
//! - [`qido`]: `GET /studies`, `/series`, `/instances` and their nested
//!   forms; searches received instances and the results Vigie created.
//! - [`wado`]: `GET /studies/{study}[/series/{series}[/instances/{sop}]]`
//!   and `/metadata` (binary values as BulkDataURIs).
//! - [`frames`]: `…/instances/{sop}/frames/{list}` and
//!   `…/instances/{sop}/bulkdata/{path}`.
//! - [`rendered`]: `…/rendered` and `…/thumbnail` at study, series,
//!   instance and frame level (JPEG, PNG).
//!
//! Not implemented: the JSON/XML forms of STOW-RS (metadata plus bulk
//! data), UPS-RS, rendering of non-image instances.

pub mod frames;
pub mod qido;
pub mod rendered;
pub mod stow;
pub mod wado;

/// DICOM JSON media type.
pub const DICOM_JSON: &str = "application/dicom+json";

/// A service-wide count of running works of one kind (decodes, renders),
/// at most `max` at once; more wait their turn.
#[derive(Debug)]
pub struct Slots {
    running: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
    max: usize,
}

impl Slots {
    /// At most `max` at once.
    pub const fn new(max: usize) -> Self {
        Self {
            running: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max,
        }
    }

    /// Wait for a slot (a blocking thread's wait).
    pub fn take(&'static self) -> Slot {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= self.max {
            running = self.freed.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Slot(self)
    }
}

/// A slot of [`Slots`], released when dropped.
#[derive(Debug)]
pub struct Slot(&'static Slots);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        *running = running.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// A media range: its essence (lower case) and parameters.
pub type MediaRange = (String, Vec<(String, String)>);

/// The media ranges a client accepts, by weight (`q`, highest first; the
/// order given among equals), those refused with `q=0` left out: from `text` (the `accept` query parameter of rendered
/// resources, which takes the place of the header) or the `Accept` header
/// fields. `None` when nothing was said (no field, or only empty ones):
/// the resource's default media type then applies.
pub fn accept_ranges(
    headers: &axum::http::HeaderMap,
    text: Option<&str>,
) -> Option<Vec<MediaRange>> {
    use vigie_dicom_io::multipart::{media_type, param, split_unquoted};
    let values: Vec<String> = match text {
        Some(t) => vec![t.to_string()],
        None => headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect(),
    };
    let ranges: Vec<String> = values
        .iter()
        .flat_map(|v| split_unquoted(v, ','))
        .filter(|r| !r.trim().is_empty())
        .collect();
    if ranges.is_empty() {
        return None;
    }
    let q = |params: &[(String, String)]| {
        param(params, "q")
            .and_then(|q| q.parse::<f32>().ok())
            .filter(|q| q.is_finite())
            .unwrap_or(1.0)
    };
    let mut ranges: Vec<MediaRange> = ranges
        .iter()
        .map(|r| media_type(r))
        .filter(|(_, params)| q(params) > 0.0)
        .collect();
    // Most preferred first (RFC 9110 12.4.2); equal weights keep their order.
    ranges.sort_by(|a, b| q(&b.1).total_cmp(&q(&a.1)));
    Some(ranges)
}

/// A header map with one `Accept` field (unit tests of the negotiations).
#[cfg(test)]
pub(crate) fn accept_header(value: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        axum::http::header::ACCEPT,
        value
            .parse()
            .unwrap_or_else(|_| panic!("a header value: {value}")),
    );
    h
}
