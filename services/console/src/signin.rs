//! Signing in with an API token, and out (DESIGN.md 1.8). The token goes
//! from the form to the server once; the browser keeps only the session
//! cookie, which scripts cannot read.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use gantry_api::{session, Api};
use gantry_runtime::auth::token_digest;
use serde::Deserialize;

use crate::html::esc;
use crate::layout::{self, Frame};

/// The sign-in page, in place of the page at `next`.
pub fn page(next: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    layout::page(
        status,
        Frame {
            title: "Sign in",
            viewer: None,
            head: 0,
            follow: "",
        },
        &format!(
            "<section class=\"panel signin\"><h1>Sign in</h1>\
             <p>This Gantry needs an API token (ask whoever runs it; <code>GANTRY_API_TOKENS</code>).</p>\
             <form method=\"post\" action=\"/console/sign-in\">\
             <label for=\"token\">API token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
             <input type=\"hidden\" name=\"next\" value=\"{}\">\
             <button type=\"submit\">Sign in</button></form>{error}</section>",
            esc(next)
        ),
    )
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: a page of this console, nothing else.
fn local(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn same_origin(headers: &HeaderMap) -> bool {
    session::origin_matches(headers) == Some(true)
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "a sign-in or sign-out must come from this server's own page",
    )
        .into_response()
}

fn redirect(to: &str, cookie: String) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub async fn sign_in(
    State(api): State<Api>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    if !same_origin(&headers) {
        return refused();
    }
    let next = local(&form.next);
    let Some(tokens) = &api.tokens else {
        return redirect(next, session::clear_cookie(false));
    };
    let digest = token_digest(form.token.trim());
    let Some(identity) = tokens.get().authenticate_digest(&digest).cloned() else {
        return page(next, Some("That API token is not known here."));
    };
    let id = api.sessions.create(digest);
    tracing::info!(user = %identity.user, "console sign-in");
    redirect(next, session::set_cookie(&id, api.secure_cookies(&headers)))
}

pub async fn sign_out(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return refused();
    }
    if let Some(id) = session::cookie(&headers, session::COOKIE) {
        api.sessions.end(id);
    }
    redirect("/", session::clear_cookie(api.secure_cookies(&headers)))
}
