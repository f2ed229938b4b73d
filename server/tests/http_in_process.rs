//! The HTTP application called in process (tower's `oneshot`), without a
//! socket: the service opened and bound on free ports by the library
//! (`vigie_server::service`), its router asked directly. What needs a real
//! client (TLS, load shedding, graceful shutdown) stays in `http_api.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use vigie_server::config::Config;
use vigie_server::service::Service;

async fn call(
    app: &axum::Router,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (parts.status, parts.headers, json)
}

/// The test configuration with its data in `dir` and free ports.
fn config_in(dir: &std::path::Path) -> Config {
    let file = dir.join("vigie.toml");
    std::fs::write(&file, common::base_config("")).unwrap();
    let mut config = Config::load(Some(&file)).unwrap();
    config.appliance.data_dir = dir.join("data");
    config.dicom.port = 0;
    config.http.port = 0;
    config.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_app_is_tested_in_process_with_its_auth_and_error_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::open(Arc::new(config_in(dir.path()))).unwrap();
    let bound = service.bind().await.unwrap();
    assert_ne!(
        bound.http_addr().unwrap().port(),
        0,
        "a free port was taken"
    );
    let app = bound.app();

    let (status, _, _) = call(&app, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);

    // No token: 401, JSON, with the challenge.
    let (status, headers, body) = call(&app, "/api/v1/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    // A reader reads the status; the audit trail is not for readers.
    let reader = common::token("reader");
    let (status, _, body) = call(&app, "/api/v1/status", Some(reader)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["appliance"], "vigie-test");
    assert_eq!(body["ingest"]["stored"], 0);
    let (status, _, body) = call(&app, "/api/v1/audit", Some(reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    // An unknown path and a malformed query: JSON errors too.
    let (status, _, body) = call(&app, "/api/v1/nothing-here", Some(reader)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let (status, _, body) = call(&app, "/api/v1/jobs?limit=many", Some(reader)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
}

/// Defect found in the redesign: with one cancellation token, the DICOM
/// listener ends as soon as the token is cancelled, and the service's own
/// wait picked, at random, "the listener ended" over "the token was
/// cancelled": a clean SIGTERM then exited with status 2 about half the
/// time. Twenty clean stops in a row must all be clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_requested_stop_is_never_taken_for_a_listener_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.http.shutdown_grace_s = 0;
    let config = Arc::new(config);
    for round in 0..20 {
        let bound = Service::open(config.clone()).unwrap().bind().await.unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(bound.run(token.clone()));
        token.cancel();
        let outcome = running.await.unwrap();
        assert!(outcome.is_ok(), "round {round}: {outcome:?}");
    }
}
