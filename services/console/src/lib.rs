//! The web console (DESIGN.md 1.8): server-rendered pages over the API's
//! state, a small script that follows the event stream and sends the
//! actions to the API, and sign-in sessions. No build step: the script and
//! the stylesheet are embedded in the binary.
//!
//! Pages: `/` (every pipeline's stages: what runs where, what waits and
//! why), `/pipelines/{name}` (runs × stages, freezes, deploy history and
//! rollback), `/runs/{id}` (stages, why they wait, the approval with the
//! diff and API Manager plan beside it, the event timeline). Actions are
//! the API's own routes, called by `console.js` with the session cookie;
//! a refusal shows the API's `detail`.

mod html;
mod layout;
mod overview;
mod pipeline;
mod run;
mod signin;
mod viewer;
mod why;

use axum::extract::FromRequestParts;
use axum::http::request::Parts as RequestParts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use gantry_api::Api;

use viewer::Viewer;

/// The console's routes over the API's state (its tokens and sessions).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/pipelines/{name}", get(pipeline::page))
        .route("/runs/{id}", get(run::page))
        .route("/console/sign-in", post(signin::sign_in))
        .route("/console/sign-out", post(signin::sign_out))
        .route(
            "/console/console.js",
            get(|| async { layout::asset("text/javascript; charset=utf-8", layout::JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { layout::asset("text/css; charset=utf-8", layout::CSS) }),
        )
        .with_state(api)
}

/// The viewer of a page; without a session (tokens configured) the page
/// answers the sign-in form instead, which comes back to it.
impl FromRequestParts<Api> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut RequestParts, api: &Api) -> Result<Self, Response> {
        Viewer::of(api, &parts.headers).ok_or_else(|| {
            let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            signin::page(next, None)
        })
    }
}

/// A store failure as a page; the detail goes to the log only.
fn failed(viewer: &Viewer, error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "console page failed");
    layout::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(viewer),
        "Gantry could not read its state; see the server log.",
    )
}
