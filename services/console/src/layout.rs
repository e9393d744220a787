//! The frame every page shares: head, the bar with who is signed in and
//! the live connection's state, and the security headers.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::html::esc;
use crate::viewer::Viewer;

pub const JS: &str = include_str!("../assets/console.js");
pub const CSS: &str = include_str!("../assets/console.css");

/// A short hash of both assets, in their URLs: they are cached for good,
/// and a new build names new URLs.
pub static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    h.update(JS);
    h.update(CSS);
    hex::encode(&h.finalize()[..6])
});

/// No inline script or style: only the console's own files run.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What a page says about itself to the frame.
pub struct Frame<'a> {
    pub title: &'a str,
    pub viewer: Option<&'a Viewer>,
    /// The log position the page shows; live updates start after it.
    pub head: i64,
    /// The events that change this page (`/api/v1/events` query filters).
    pub follow: &'a str,
}

/// A whole page, `status` and the security headers.
pub fn page(status: StatusCode, frame: Frame<'_>, main: &str) -> Response {
    let who = match frame.viewer {
        Some(Viewer::Signed(id)) => format!(
            "<form class=\"who\" method=\"post\" action=\"/console/sign-out\">\
             <span>Signed in as <strong>{}</strong></span> <button type=\"submit\">Sign out</button></form>",
            esc(&id.user)
        ),
        Some(Viewer::Anonymous) => {
            "<span class=\"who\">No sign-in: local Gantry without API tokens</span>".to_owned()
        }
        None => String::new(),
    };
    let live = if frame.viewer.is_some() {
        "<span id=\"live\" class=\"live\" role=\"status\" aria-live=\"polite\">Connecting…</span>"
    } else {
        ""
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Gantry</title>\
         <link rel=\"stylesheet\" href=\"/console/console.css?v={v}\">\
         <script src=\"/console/console.js?v={v}\" defer></script></head>\
         <body data-head=\"{head}\" data-follow=\"{follow}\">\
         <header class=\"bar\"><a class=\"brand\" href=\"/\">Gantry</a>\
         <nav aria-label=\"Console\"><a href=\"/\">Pipelines</a></nav>{live}{who}</header>\
         <main id=\"main\">{main}</main>\
         <footer class=\"foot\">Times in your time zone. Live from the event log.</footer>\
         </body></html>",
        title = esc(frame.title),
        v = *ASSET_VERSION,
        head = frame.head,
        follow = esc(frame.follow),
    );
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure_headers(h);
    resp
}

/// The headers every console answer carries.
pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A page that says what went wrong (an unknown run, a store failure).
pub fn error(status: StatusCode, viewer: Option<&Viewer>, message: &str) -> Response {
    page(
        status,
        Frame {
            title: "Not here",
            viewer,
            head: 0,
            follow: "",
        },
        &format!(
            "<section class=\"panel\"><h1>{}</h1><p>{}</p><p><a href=\"/\">All pipelines</a></p></section>",
            esc(status.canonical_reason().unwrap_or("Error")),
            esc(message)
        ),
    )
}

/// A static asset, cached for good (its URL names its version).
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    secure_headers(h);
    resp
}
