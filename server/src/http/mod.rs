//! The HTTP side of `vigie serve`, with axum:
//!
//! - [`dicomweb`]: DICOMweb (PS3.18) under `/dicomweb`: STOW-RS into the
//!   same durable ingest as C-STORE, QIDO-RS searches of studies, series and
//!   instances (received and created), WADO-RS retrieval of instances and
//!   metadata.
//! - [`api`]: the JSON API under `/api/v1`: jobs (list, detail, retry,
//!   re-analysis), models, audit (query, verification), status; the
//!   OpenAPI description.
//! - [`reviews`]: radiologists' reviews of results (API, listings, the
//!   review page under `/review`).
//! - `/healthz` (alive), `/readyz` (store writable, models verified, ONNX
//!   Runtime loaded, with reasons) and `/metrics` (Prometheus).
//!
//! Every route group declares its [`auth::Access`]. All middleware is set
//! in [`app`]: per-route body limits, timeouts, a concurrency limit with
//! load shedding (503 + Retry-After), panic catching, request metrics.
//! [`serve`] runs it over plain TCP or TLS (rustls) and stops gracefully
//! with the DICOM listener.

pub mod api;
pub mod auth;
pub mod dicomweb;
pub mod error;
pub mod reviews;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower::ServiceBuilder;

use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use auth::{Access, Tokens, authorize};
use error::ApiError;
use vigie_audit::Audit;
use vigie_store::Catalog;
use vigie_store::layout::Layout;

/// A model package as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Package folder name (the id routing rules use).
    pub id: String,
    /// Its manifest (`model.toml`), when it parses.
    pub manifest: Option<serde_json::Value>,
    /// SHA-256 of the weights as verified at start (routed packages only).
    pub sha256: Option<String>,
    /// Whether the weights were hash-checked at start.
    pub verified: bool,
    /// Used by at least one routing rule.
    pub active: bool,
    /// The routing rules that use it.
    pub rules: Vec<String>,
    /// Why the package cannot be used, if so.
    pub error: Option<String>,
}

/// What the DICOM side accepts, applied to STOW-RS too.
#[derive(Debug, Clone, Default)]
pub struct Acceptance {
    /// Storage SOP classes.
    pub sop_classes: Vec<String>,
    /// Transfer syntaxes.
    pub transfer_syntaxes: Vec<String>,
}

/// Everything the handlers share.
pub struct App {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// The catalog.
    pub catalog: Arc<dyn Catalog>,
    /// The ingest shared with the DICOM listener.
    pub ingest: Arc<Ingest>,
    /// The audit trail.
    pub audit: Audit,
    /// The data directory.
    pub layout: Layout,
    /// Tokens.
    pub tokens: Tokens,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Model packages found at start.
    pub models: Vec<ModelInfo>,
    /// ONNX Runtime: the library loaded, or why not.
    pub onnxruntime: Result<String, String>,
    /// SOP classes and transfer syntaxes accepted.
    pub acceptance: Acceptance,
    /// Served over TLS (for the URLs in responses).
    pub tls: bool,
    /// When the service started.
    pub started: Instant,
    /// Jobs waiting or running.
    pub backlog: Arc<crate::backlog::Backlog>,
    /// The worker threads' health.
    pub workers: Arc<crate::pipeline::WorkerHealth>,
    /// Checks and records reviews (shared with ingest, for reviewers' SRs).
    pub reviews: Arc<crate::reviews::ReviewDesk>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// Shared state of the router.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// Run `f` on the blocking pool (catalog, audit and file work).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// One readiness check.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

async fn readyz(State(app): State<AppState>) -> Response {
    let state = app.clone();
    let checks = blocking(move || Ok(readiness(&state))).await;
    let checks = match checks {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}

/// Free bytes on the data directory's file system.
pub fn free_bytes(layout: &Layout) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(layout.root()).map_err(std::io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn readiness(app: &App) -> Vec<Check> {
    let mut checks = Vec::new();
    let reserve = app.config.storage.min_free_mib.saturating_mul(1 << 20);
    let store = free_bytes(&app.layout)
        .map_err(|e| e.to_string())
        .and_then(|free| {
            let probe = app
                .layout
                .staging()
                .join(format!(".readyz-{}", std::process::id()));
            std::fs::write(&probe, b"ok").map_err(|e| format!("staging not writable: {e}"))?;
            let _ = std::fs::remove_file(&probe);
            if free < reserve {
                Err(format!(
                    "{} MiB free, below the {} MiB reserve: instances are refused",
                    free >> 20,
                    reserve >> 20
                ))
            } else {
                Ok(format!("writable, {} MiB free", free >> 20))
            }
        });
    checks.push(check("store", store));
    checks.push(check(
        "catalog",
        app.catalog
            .job_counts()
            .map(|_| "answers".to_string())
            .map_err(|e| e.to_string()),
    ));
    let broken: Vec<String> = app
        .models
        .iter()
        .filter(|m| m.active && !m.verified)
        .map(|m| m.id.clone())
        .collect();
    let active = app.models.iter().filter(|m| m.active).count();
    checks.push(check(
        "models",
        if broken.is_empty() {
            Ok(format!("{active} routed model package(s) verified"))
        } else {
            Err(format!("not verified: {}", broken.join(", ")))
        },
    ));
    checks.push(check("onnxruntime", app.onnxruntime.clone()));
    let stuck_after = Duration::from_secs(app.config.pipeline.stuck_after_s.max(1));
    let problems = app.workers.problems(stuck_after);
    checks.push(check(
        "workers",
        if problems.is_empty() {
            Ok(format!("{} worker(s) running", app.config.pipeline.workers))
        } else {
            Err(problems.join("; "))
        },
    ));
    checks.push(check(
        "backlog",
        match app.backlog.full() {
            Some(reason) => Err(reason),
            None => Ok(format!(
                "room for more studies ({} receiving)",
                app.backlog.receiving_studies()
            )),
        },
    ));
    checks
}

fn check(name: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

/// Count requests and their latency by route template (never the path
/// itself, which holds UIDs).
async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status();
    app.metrics.inc(
        "vigie_http_requests_total",
        "HTTP requests answered, by route template, method and status.",
        &[
            ("route", &route),
            ("method", &method),
            ("status", status.as_str()),
        ],
    );
    app.metrics.observe(
        "vigie_http_request_duration_seconds",
        "Time to answer HTTP requests (until the response head), by route template.",
        &[("route", &route)],
        started.elapsed().as_secs_f64(),
    );
    response
}

/// 404 for a path no endpoint serves, with a log line (method and path
/// only: a query string may hold patient identifiers), so that a client
/// asking for what Vigie does not serve (a viewer's frames, say) shows in
/// the log.
async fn unknown_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(256).collect();
    tracing::info!(%method, path, "no such endpoint (404)");
    ApiError::not_found("no such endpoint")
}

async fn overloaded(error: tower::BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry later",
        );
        e.retry_after = Some(1);
        e.into_response()
    } else {
        ApiError::internal("internal", StatusCode::INTERNAL_SERVER_ERROR, &error).into_response()
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(
        "internal",
        StatusCode::INTERNAL_SERVER_ERROR,
        &"a request handler panicked",
    )
    .into_response()
}

fn guard(router: Router<AppState>, state: &AppState, access: Access) -> Router<AppState> {
    router.route_layer(middleware::from_fn_with_state(
        (state.clone(), access),
        authorize,
    ))
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let http = &state.config.http;
    let timeout = Duration::from_secs(http.request_timeout_s);
    let json_limit = usize::try_from(http.max_json_kib.saturating_mul(1024)).unwrap_or(usize::MAX);
    let timed = |router: Router<AppState>, limit: Duration| {
        router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limit,
        ))
    };
    let metrics_access = if http.metrics_public {
        Access::Public
    } else {
        Access::Read
    };
    let mut groups: Vec<(Access, bool, Router<AppState>)> = Vec::new();
    for (endpoint, handler) in api::endpoints() {
        let access = if endpoint.path == "/metrics" {
            metrics_access
        } else {
            endpoint.access
        };
        // STOW-RS, and WADO-RS retrieval (which transcodes before its first
        // byte), run under the long timeout.
        // Frames, bulk data and rendered images (which decode before their
        // first byte) too.
        let streaming = endpoint.path.starts_with("/dicomweb/")
            && (endpoint.method == "post"
                || (endpoint.method == "get"
                    && endpoint.path.starts_with("/dicomweb/studies/")
                    && (endpoint.path.ends_with('}')
                        || endpoint.path.ends_with("/rendered")
                        || endpoint.path.ends_with("/thumbnail"))));
        match groups
            .iter_mut()
            .find(|(a, s, _)| *a == access && *s == streaming)
        {
            Some((_, _, router)) => {
                *router = std::mem::take(router).route(endpoint.path, handler);
            }
            None => groups.push((
                access,
                streaming,
                Router::new().route(endpoint.path, handler),
            )),
        }
    }
    let mut rest = Router::new();
    let mut stow = Router::new();
    for (access, streaming, router) in groups {
        let router = guard(router, &state, access);
        if streaming {
            stow = stow.merge(router);
        } else {
            rest = rest.merge(router);
        }
    }
    // STOW-RS streams its body to disk under its own limit and timeout;
    // WADO-RS retrieval shares that timeout.
    let stow =
        timed(stow, Duration::from_secs(http.stow_timeout_s)).layer(DefaultBodyLimit::disable());
    let rest = timed(rest, timeout).layer(DefaultBodyLimit::max(json_limit));
    rest.merge(stow)
        .fallback(unknown_endpoint)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(middleware::from_fn(error::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                // One semaphore for the whole router (a plain concurrency
                // limit layer would give each route its own).
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    http.max_concurrent_requests.max(1),
                )),
        )
        .layer(cors(&http.cors_origins))
        .with_state(state)
}

/// CORS (the Fetch standard) for the origins of `http.cors_origins`,
/// outside every other layer: a preflight (any OPTIONS request) is
/// answered here, without a token, and every other response — errors,
/// timeouts and load shedding included — carries the headers when its
/// request came from a listed origin. From any other origin the preflight
/// gets no `Access-Control-Allow-Origin`, and the browser stops there.
/// No credentials mode: the bearer token travels in `Authorization`.
/// Origins are compared as browsers serialise them (lower case, no default
/// port: `crate::config::normalise_origin`).
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    let listed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(&crate::config::normalise_origin(o)).ok())
        .collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(listed))
        .allow_methods([Method::GET, Method::POST, Method::HEAD, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE])
        .expose_headers([
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::LOCATION,
            header::RETRY_AFTER,
            header::WARNING,
        ])
        .max_age(Duration::from_secs(600))
}

/// Serve `app` on `listener` (TLS when `tls` is set) until `handle` is
/// told to shut down.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    handle: axum_server::Handle<SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(config) => {
            axum_server::from_tcp_rustls(listener, config)?
                .handle(handle)
                .serve(service)
                .await
        }
        None => {
            axum_server::from_tcp(listener)?
                .handle(handle)
                .serve(service)
                .await
        }
    }
}

/// The TLS configuration from the configured PEM files (ring provider).
pub async fn tls_config(
    tls: &crate::config::TlsConfig,
) -> std::io::Result<axum_server::tls_rustls::RustlsConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.certificate, &tls.private_key).await
}

/// Base URL of the DICOMweb service as the client reached it (for
/// RetrieveURL and BulkDataURI attributes): `http.public_url` when set;
/// else the request's `Host`, and the scheme of `X-Forwarded-Proto`
/// (`http` or `https`, as a reverse proxy terminating TLS sets it;
/// docs/viewers.md), else Vigie's own. Only the client's own answers
/// depend on the headers it sends.
pub fn base_url(app: &App, headers: &axum::http::HeaderMap) -> String {
    let http = &app.config.http;
    dicomweb_base(
        &http.public_url,
        app.tls,
        &format!("{}:{}", http.bind, http.port),
        headers,
    )
}

/// [`base_url`] from its parts: the configured public URL, whether Vigie
/// itself serves TLS, its own address, the request's headers.
fn dicomweb_base(
    public_url: &str,
    tls: bool,
    own: &str,
    headers: &axum::http::HeaderMap,
) -> String {
    let public = public_url.trim().trim_end_matches('/');
    if !public.is_empty() {
        return public.to_string();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| own.to_string());
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .map(|p| p.trim().to_ascii_lowercase());
    let scheme = match forwarded.as_deref() {
        Some("https") => "https",
        Some("http") => "http",
        _ if tls => "https",
        _ => "http",
    };
    format!("{scheme}://{host}/dicomweb")
}

/// A caller's name, for handlers behind [`authorize`].
pub fn caller_name(caller: Option<&auth::Caller>) -> String {
    caller.map(|c| c.name.clone()).unwrap_or_default()
}

#[cfg(test)]
mod base_url_tests {
    use super::dicomweb_base;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_dicomweb_base_follows_the_proxy_or_the_configuration() {
        let own = "127.0.0.1:8080";
        let plain = headers(&[("host", "viewer.example:8443")]);
        assert_eq!(
            dicomweb_base("", false, own, &plain),
            "http://viewer.example:8443/dicomweb"
        );
        assert_eq!(
            dicomweb_base("", true, own, &plain),
            "https://viewer.example:8443/dicomweb"
        );
        // A proxy terminating TLS says so.
        let proxied = headers(&[("host", "viewer.example"), ("x-forwarded-proto", "HTTPS")]);
        assert_eq!(
            dicomweb_base("", false, own, &proxied),
            "https://viewer.example/dicomweb"
        );
        let downgraded = headers(&[("host", "v"), ("x-forwarded-proto", "http")]);
        assert_eq!(
            dicomweb_base("", true, own, &downgraded),
            "http://v/dicomweb"
        );
        // Anything else in the header is ignored; a Host with odd
        // characters is not used.
        let odd = headers(&[("host", "evil.example/x"), ("x-forwarded-proto", "gopher")]);
        assert_eq!(
            dicomweb_base("", false, own, &odd),
            "http://127.0.0.1:8080/dicomweb"
        );
        // The configured public URL wins over every header.
        assert_eq!(
            dicomweb_base(
                "https://viewer.hospital.example/dicomweb/",
                false,
                own,
                &proxied
            ),
            "https://viewer.hospital.example/dicomweb"
        );
    }
}
