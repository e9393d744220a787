//! Errors over HTTP as `application/problem+json` (RFC 9457).

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (RFC 9457 §3.2), flattened into the object.
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            extra: serde_json::Map::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// An internal failure; the detail is logged, not sent (it may hold
    /// connection strings or other internals).
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the server log",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    /// A machine-readable problem type, e.g. `https://gantry.dev/problems/bad-signature`.
    pub fn with_type(mut self, slug: &str) -> Self {
        self.kind = format!("https://gantry.dev/problems/{slug}");
        self
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(value) {
            self.extra.insert(key.to_owned(), v);
        }
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
    }
}

/// The media type of every error answer.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Makes every error answer of `router` a problem (RFC 9457) and bounds
/// what a request may bring:
/// - a body over `max_body` bytes is refused with `413` (by its
///   `Content-Length` before any handler runs, and by the body extractors
///   for bodies without one);
/// - a path or query with a percent-encoded control character (`%00`..`%1F`,
///   `%7F`) is refused with `400`: no identifier has one, and some stores
///   cannot even compare such text;
/// - an error answer that is not `application/problem+json` already (axum's
///   plain-text rejections of a path, query or body, `405`, an empty `404`)
///   becomes one, with the same status and the original text as `detail`.
pub fn harden(router: Router, max_body: usize) -> Router {
    router
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            guard(Some(max_body), req, next)
        }))
}

/// What a whole server's router needs around its merged parts: a `404`
/// problem for paths no part serves, and [`harden`]'s mapping of other
/// error answers (without a body limit of its own: the parts set theirs).
pub fn finish(router: Router) -> Router {
    router
        .fallback(|| async {
            Problem::not_found("no such route; see /api/v1/pipelines, /api/v1/runs, /api/v1/events")
        })
        .layer(middleware::from_fn(|req: Request, next: Next| {
            guard(None, req, next)
        }))
}

async fn guard(max_body: Option<usize>, req: Request, next: Next) -> Response {
    if let Some(max) = max_body {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {max} bytes"),
            )
            .into_response();
        }
    }
    let uri = req.uri();
    if has_encoded_control(uri.path()) || uri.query().is_some_and(has_encoded_control) {
        return Problem::bad_request(
            "the request's path or query has a control character (such as %00); no name or id has one",
        )
        .into_response();
    }
    if !decodes_to_utf8(uri.path()) || uri.query().is_some_and(|q| !decodes_to_utf8(q)) {
        return Problem::bad_request(
            "the request's path or query is not UTF-8 once percent-decoded",
        )
        .into_response();
    }
    as_problem(next.run(req).await).await
}

/// `%00`..`%1F` or `%7F` anywhere in `text`.
fn has_encoded_control(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(3).any(|w| {
        w[0] == b'%'
            && match (hex_value(w[1]), hex_value(w[2])) {
                (Some(hi), Some(lo)) => {
                    let byte = hi * 16 + lo;
                    byte < 0x20 || byte == 0x7f
                }
                _ => false,
            }
    })
}

/// Whether percent-decoding `text` gives UTF-8 (`%` not followed by two
/// hex digits stays as it is).
fn decodes_to_utf8(text: &str) -> bool {
    if !text.contains('%') {
        return true;
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex_value(b[i + 1]), hex_value(b[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::str::from_utf8(&out).is_ok()
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// An error answer as a problem; anything else unchanged.
async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(CONTENT_TYPE));
    // The console's pages say what went wrong themselves.
    let is_page = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_problem || is_page {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such route".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        }
    } else if status.is_server_error() {
        // Internals stay in the log.
        tracing::error!(status = status.as_u16(), error = %text, "request failed");
        "internal error; see the server log".to_owned()
    } else {
        text
    };
    let mut out = Problem::new(status, detail).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    out
}

impl From<gantry_store::StoreError> for Problem {
    fn from(e: gantry_store::StoreError) -> Self {
        Problem::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_control_characters_are_found() {
        assert!(has_encoded_control("/api/v1/runs/%00"));
        assert!(has_encoded_control("a=%1f"));
        assert!(has_encoded_control("a=%7F"));
        assert!(!has_encoded_control("/api/v1/runs/%2F%20%C3%A9"));
        assert!(!has_encoded_control("/api/v1/runs/%"));
        assert!(!has_encoded_control("%zz"));
    }

    #[test]
    fn percent_encoded_text_must_be_utf8() {
        assert!(decodes_to_utf8("/api/v1/runs/%C3%A9"));
        assert!(decodes_to_utf8("a=%2F&b=%"));
        assert!(decodes_to_utf8("a=%4"));
        assert!(!decodes_to_utf8("pipeline=%FF"));
        assert!(!decodes_to_utf8("/x/%C3"));
    }
}
