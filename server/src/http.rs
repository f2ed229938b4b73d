//! The HTTP side of `vigie serve` as far as it exists today: liveness and a
//! read-only JSON view of studies, jobs and deliveries for operators and
//! monitoring. DICOMweb and the results API are not implemented yet.
//!
//! - `GET /healthz`: `ok` while the service runs and its catalog answers.
//! - `GET /api/v1/status`: counters (instances stored/refused, jobs by
//!   state, outbox by state).
//! - `GET /api/v1/studies?limit=N`: latest studies and their state.
//! - `GET /api/v1/jobs?limit=N`: latest jobs, their state, errors, results.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::ingest::IngestStats;
use crate::store::Catalog;

/// What the handlers need.
#[derive(Clone)]
pub struct HttpState {
    /// The catalog.
    pub catalog: Arc<dyn Catalog>,
    /// Ingest counters.
    pub ingest: Arc<IngestStats>,
    /// Appliance id.
    pub appliance: String,
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

fn error(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(e)),
        Err(e) => Err(error(e)),
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    match blocking(move || Ok(state.catalog.outbox_status()?)).await {
        Ok(_) => "ok\n".into_response(),
        Err(r) => r,
    }
}

async fn status(State(state): State<HttpState>) -> Response {
    let catalog = state.catalog.clone();
    let result = blocking(move || Ok((catalog.job_counts()?, catalog.outbox_status()?))).await;
    match result {
        Ok((by_state, outbox)) => Json(serde_json::json!({
            "appliance": state.appliance,
            "version": env!("CARGO_PKG_VERSION"),
            "ingest": {
                "stored": state.ingest.stored.load(Ordering::Relaxed),
                "refused": state.ingest.refused.load(Ordering::Relaxed),
                "bytes": state.ingest.bytes.load(Ordering::Relaxed),
            },
            "jobs": by_state,
            "outbox": outbox,
        }))
        .into_response(),
        Err(r) => r,
    }
}

async fn jobs(State(state): State<HttpState>, Query(q): Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(100);
    match blocking(move || Ok(state.catalog.jobs(limit)?)).await {
        Ok(jobs) => Json(jobs).into_response(),
        Err(r) => r,
    }
}

async fn studies(State(state): State<HttpState>, Query(q): Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(100);
    match blocking(move || Ok(state.catalog.studies(limit)?)).await {
        Ok(studies) => Json(studies).into_response(),
        Err(r) => r,
    }
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/studies", get(studies))
        .with_state(state)
}
