//! The credential a request presents as `Authorization: Bearer …`: an API key on the meetings
//! API, a join token on photos.

use axum::http::{HeaderMap, header};

/// The bearer credential of `headers`, or "" when there is none.
pub fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}
