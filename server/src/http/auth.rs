//! Bearer tokens and roles. Tokens are configured by their SHA-256 only
//! (`[[http.tokens]]`); a request's token is hashed and compared in
//! constant time. Each route group declares an [`Access`]; a request
//! without a valid token gets 401, one whose role the route does not admit
//! gets 403, and both are audited (method, path without its query, token
//! name, peer) — never the query string, which may hold patient names.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::config::{Role, TokenConfig};
use vigie_audit::{AuditEvent, EventKind};

/// Who is calling, once authenticated; handlers find it in the request
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Which roles a route admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (liveness, readiness, API description).
    Public,
    /// reader, operator, reviewer, admin.
    Read,
    /// operator, admin.
    Operate,
    /// auditor, admin.
    Audit,
    /// reviewer only (see [`Role::Reviewer`]).
    Review,
}

impl Access {
    /// Whether `role` may call a route with this access.
    pub fn admits(self, role: Role) -> bool {
        match self {
            Self::Public => true,
            Self::Read => matches!(
                role,
                Role::Reader | Role::Operator | Role::Reviewer | Role::Admin
            ),
            Self::Operate => matches!(role, Role::Operator | Role::Admin),
            Self::Audit => matches!(role, Role::Auditor | Role::Admin),
            Self::Review => role == Role::Reviewer,
        }
    }

    /// The roles admitted, for the API description.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            Self::Public => &[],
            Self::Read => &["reader", "operator", "reviewer", "admin"],
            Self::Operate => &["operator", "admin"],
            Self::Audit => &["auditor", "admin"],
            Self::Review => &["reviewer"],
        }
    }
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<(Caller, [u8; 32])>);

impl Tokens {
    /// From the configuration (already validated: 64 hex digits each).
    pub fn new(configured: &[TokenConfig]) -> Self {
        Self(
            configured
                .iter()
                .filter_map(|t| {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(t.sha256.to_ascii_lowercase(), &mut hash).ok()?;
                    Some((
                        Caller {
                            name: t.name.clone(),
                            role: t.role,
                        },
                        hash,
                    ))
                })
                .collect(),
        )
    }

    /// The caller holding `token`, if any.
    pub fn check(&self, token: &str) -> Option<&Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared in full, whatever matches.
        let mut found = None;
        for (caller, expected) in &self.0 {
            let diff = expected
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(caller);
            }
        }
        found
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A new random token (256 bits, URL-safe hex) and its SHA-256.
pub fn new_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let token = format!("vigie_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, hash))
}

fn peer(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

/// The middleware of a route group with `access`.
pub async fn authorize(
    State((app, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let caller = bearer.and_then(|t| app.tokens.check(t)).cloned();
    let denied = match &caller {
        None => Some((
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            if bearer.is_some() {
                "the bearer token is not valid"
            } else {
                "a bearer token is required (Authorization: Bearer …)"
            },
        )),
        Some(c) if !access.admits(c.role) => Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not call this endpoint",
        )),
        Some(_) => None,
    };
    if let Some((status, code, message)) = denied {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let peer = peer(&request);
        tracing::warn!(%method, %path, %peer, status = status.as_u16(), "HTTP request denied");
        app.metrics.inc(
            "vigie_http_denied_total",
            "HTTP requests refused for a missing or invalid token (401) or a role not admitted (403).",
            &[("status", status.as_str())],
        );
        let event = AuditEvent::new(
            EventKind::HttpAccess,
            "denied",
            serde_json::json!({
                "status": status.as_u16(),
                "method": method,
                "path": path,
                "peer": peer,
                "token": caller.as_ref().map(|c| c.name.clone()),
                "role": caller.as_ref().map(|c| c.role.as_str()),
                "required": access.roles(),
            }),
        );
        let audit = app.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.note(event)).await;
        return ApiError::new(status, code, message).into_response();
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_admit_what_they_should() {
        use Role::*;
        let table = [
            (Access::Read, [true, true, false, true, true]),
            (Access::Operate, [false, true, false, false, true]),
            (Access::Audit, [false, false, true, false, true]),
            (Access::Review, [false, false, false, true, false]),
            (Access::Public, [true, true, true, true, true]),
        ];
        for (access, expected) in table {
            let got = [Reader, Operator, Auditor, Reviewer, Admin].map(|r| access.admits(r));
            assert_eq!(got, expected, "{access:?}");
        }
    }

    #[test]
    fn tokens_are_checked_by_hash() {
        let (token, hash) = new_token().unwrap();
        let tokens = Tokens::new(&[TokenConfig {
            name: "viewer".into(),
            role: Role::Reader,
            sha256: hash.to_uppercase(),
        }]);
        assert_eq!(
            tokens.check(&token).map(|c| c.name.as_str()),
            Some("viewer")
        );
        assert!(tokens.check(&format!("{token}x")).is_none());
        assert!(tokens.check(&hash).is_none(), "the hash is not the token");
    }
}
