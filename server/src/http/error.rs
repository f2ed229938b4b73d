//! Errors of the HTTP side: JSON bodies with a stable `code` and a
//! message. 5xx bodies are generic, with a reference to the log line that
//! holds the detail; they never carry internals or patient data.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use vigie_audit::AuditError;
use vigie_store::{Failure, StoreError};

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

/// The stable code of a status, for errors made without one (extractor
/// rejections, timeouts, the body limit).
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::INSUFFICIENT_STORAGE => "insufficient_storage",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

impl ApiError {
    /// An error of `status` with the code that goes with it.
    pub fn of_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, code_for(status), message)
    }

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
            retry_after: matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
            )
            .then_some(5),
        }
    }
}

/// An error and its sources, for the log line of a 5xx.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (code, status) = match e.failure() {
            // Locked or busy: the client may try again shortly.
            Failure::Busy => ("store_busy", StatusCode::SERVICE_UNAVAILABLE),
            Failure::Full => ("store_full", StatusCode::INSUFFICIENT_STORAGE),
            Failure::NewerSchema | Failure::Internal => {
                ("store_failed", StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        Self::internal(code, status, &Chain(&e))
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        // Nothing is served that cannot be audited: the audit trail
        // failing is "unavailable", whatever the cause.
        Self::internal(
            "audit_unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            &Chain(&e),
        )
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

/// Every error answered as JSON: responses that left a handler or a layer
/// as plain text (query-string and path extractor rejections, the body
/// limit, the request timeout, an unknown method) get the same
/// `{"error": {"code", "message"}}` body as the handlers' own errors.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    if json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if status.is_server_error() || text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut error = ApiError::of_status(status, message).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE, header::ALLOW] {
        if let Some(value) = parts.headers.get(&name) {
            error.headers_mut().insert(name, value.clone());
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::Database {
            path: "index.sqlite".into(),
            operation: "claim job",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn catalog_failures_get_the_status_of_their_kind_and_the_log_gets_their_source() {
        let busy = ApiError::from(sqlite(rusqlite::ffi::SQLITE_BUSY));
        assert_eq!(
            (busy.status, busy.code),
            (StatusCode::SERVICE_UNAVAILABLE, "store_busy")
        );
        assert_eq!(busy.retry_after, Some(5));
        let full = ApiError::from(sqlite(rusqlite::ffi::SQLITE_FULL));
        assert_eq!(
            (full.status, full.code),
            (StatusCode::INSUFFICIENT_STORAGE, "store_full")
        );
        let corrupt = ApiError::from(sqlite(rusqlite::ffi::SQLITE_CORRUPT));
        assert_eq!(corrupt.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !corrupt.message.contains("index.sqlite"),
            "no internals in the body"
        );
        let text = Chain(&sqlite(rusqlite::ffi::SQLITE_CORRUPT)).to_string();
        assert!(
            text.starts_with("catalog index.sqlite: claim job: "),
            "{text}"
        );
        assert!(text.contains("malformed"), "{text}");
    }
}
