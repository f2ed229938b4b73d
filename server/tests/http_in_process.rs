//! The HTTP application called in process (tower's `oneshot`), without a
//! socket: the service opened and bound on free ports by the library
//! (`vigie_server::service`), its router asked directly: the auth matrix of
//! every endpoint, error shapes, a clean stop. What needs a real client or
//! received studies (TLS, load shedding, graceful shutdown, the jobs API
//! on studies sent by DCMTK) stays in `http_api.rs`.

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
    request(app, "GET", path, token).await
}

async fn request(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(path);
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

/// Every endpoint the OpenAPI description lists: 401 without a token and
/// with a wrong one (with the Bearer challenge), 403 for a role it does not
/// admit, neither for one it does; every denial on record in the audit
/// trail, with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_enforces_its_roles_and_denials_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::open(Arc::new(config_in(dir.path()))).unwrap();
    let bound = service.bind().await.unwrap();
    let app = bound.app();
    let (status, _, description) = call(&app, "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = description["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    let mut denied = 0;
    let mut checked = 0;
    for (path, operations) in paths {
        // Path parameters get values that exist nowhere.
        let concrete = path
            .replace("{id}", "999999")
            .replace("{study}", "1.2.3")
            .replace("{series}", "1.2.3.4")
            .replace("{instance}", "1.2.3.4.5");
        for (method, op) in operations.as_object().unwrap() {
            let roles: Vec<&str> = op["x-vigie-roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let method = method.to_uppercase();
            let public = op.get("security").is_some();
            assert_eq!(public, roles.is_empty(), "{method} {path}");
            let (status, headers, body) = request(&app, &method, &concrete, None).await;
            if public {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                continue;
            }
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token"
            );
            let challenge = headers.get(header::WWW_AUTHENTICATE).unwrap();
            assert!(challenge.to_str().unwrap().starts_with("Bearer"));
            assert_eq!(body["error"]["code"], "unauthorized");
            let (status, _, _) = request(&app, &method, &concrete, Some("not-a-token")).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a wrong token"
            );
            denied += 2;
            for (role, secret) in common::TOKENS {
                let (status, _, body) = request(&app, &method, &concrete, Some(secret)).await;
                if roles.contains(&role) {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{method} {path} as {role}: {status}"
                    );
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} as {role}");
                    assert_eq!(body["error"]["code"], "forbidden");
                    denied += 1;
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 80, "{checked}");
    // Each denial is on record, with the path but never a query string.
    let auditor = common::token("auditor");
    let (status, _, records) = call(
        &app,
        "/api/v1/audit?limit=10000&kind=http_access&outcome=denied",
        Some(auditor),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), denied);
    let statuses: std::collections::BTreeSet<u64> = records
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r["details"].as_str().unwrap()).unwrap()
                ["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(statuses, [401, 403].into());
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
