//! Errors of the HTTP side: JSON bodies with a stable `code` and a
//! message. 5xx bodies are generic, with a reference to the log line that
//! holds the detail; they never carry internals or patient data.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::audit::AuditError;
use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`unauthorized`, `not_found`, …).
    pub code: &'static str,
    /// What happened, for a human; generic for 5xx.
    pub message: String,
    /// Seconds after which to retry (503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A client error (4xx) with its code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 406.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, "not_acceptable", message)
    }

    /// A server-side failure: the detail goes to the log under a reference
    /// that the body gives, the body says nothing more.
    pub fn internal(
        code: &'static str,
        status: StatusCode,
        detail: &dyn std::fmt::Display,
    ) -> Self {
        let reference = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(reference, code, error = %detail, "request failed");
        Self {
            status,
            code,
            message: format!(
                "internal error; the service log has the detail under reference {reference}"
            ),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(5),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The catalog's errors are all "the database cannot answer now".
        Self::internal("store_unavailable", StatusCode::SERVICE_UNAVAILABLE, &e)
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        Self::internal("audit_unavailable", StatusCode::SERVICE_UNAVAILABLE, &e)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal("internal", StatusCode::INTERNAL_SERVER_ERROR, &e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vigie\""),
            );
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
