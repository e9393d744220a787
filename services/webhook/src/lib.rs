//! The webhook service: `POST /webhooks/{github,gitlab,gitea,bitbucket,generic}`.
//!
//! Order of work per delivery, so that nothing unauthenticated is ever
//! recorded or acted on: parse (malformed → 400), find the pipelines that
//! follow the repository, verify the signature with each one's secret (no
//! match → 401), then start one run per following pipeline whose branch was
//! pushed (202), or answer 200 `ignored`. Nothing here fetches a URL taken
//! from a payload.

pub mod payload;
pub mod signature;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use gantry_pipeline::Pipeline;
use gantry_runtime::trigger::{self, CommitInfo};
use gantry_runtime::{App, Problem};
use serde_json::json;

use crate::payload::WebhookEvent;
use crate::signature::Provider;

/// Largest accepted body. GitHub caps payloads at 25 MB, but a push of a
/// configuration repository is tiny; anything this large is not one.
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// The webhook routes, ready to merge into a server.
pub fn router(app: App) -> Router {
    gantry_runtime::problem::harden(
        Router::new()
            .route("/webhooks/{provider}", post(receive))
            .with_state(app),
        MAX_BODY,
    )
}

async fn receive(
    State(app): State<App>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider: Provider = match provider.parse() {
        Ok(p) => p,
        Err(e) => return Problem::not_found(e.to_string()).into_response(),
    };
    gantry_runtime::metrics::inc(
        "gantry_webhooks_received_total",
        &[("provider", provider.as_str())],
    );
    match handle(&app, provider, &headers, &body).await {
        Ok(r) => r,
        Err(p) => {
            gantry_runtime::metrics::inc(
                "gantry_webhooks_rejected_total",
                &[
                    ("provider", provider.as_str()),
                    ("status", &p.status.to_string()),
                ],
            );
            p.into_response()
        }
    }
}

async fn handle(
    app: &App,
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Problem> {
    let push = match payload::parse(provider, headers, body) {
        Ok(WebhookEvent::Push(push)) => push,
        Ok(WebhookEvent::Ping) => {
            return Ok((StatusCode::OK, Json(json!({ "status": "pong" }))).into_response())
        }
        Ok(WebhookEvent::Ignored { kind }) => {
            return Ok(ignored(format!("`{kind}` events start no run")));
        }
        Err(e) => return Err(Problem::bad_request(e.to_string()).with_type("malformed-webhook")),
    };

    let pipelines = app.pipelines.get();
    let urls: Vec<&str> = push.repo_urls.iter().map(String::as_str).collect();
    // Every pipeline that follows this repository, on any branch: the
    // signature is checked before anything depends on the branch.
    let following = pipelines.following_repo(&urls, push.full_name.as_deref());
    if following.is_empty() {
        return Ok(ignored("no pipeline follows this repository".to_owned()));
    }

    let verified: Vec<&Pipeline> = following
        .into_iter()
        .filter(|p| signature_valid(p, provider, headers, body))
        .collect();
    if verified.is_empty() {
        return Err(Problem::unauthorized(
            "signature does not verify with the webhook secret of any pipeline following this repository",
        )
        .with_type("bad-signature"));
    }

    let Some(branch) = push.branch.clone() else {
        return Ok(ignored(format!("`{}` is not a branch", push.git_ref)));
    };
    if push.deleted {
        return Ok(ignored(format!("branch `{branch}` was deleted")));
    }
    let targets: Vec<&Pipeline> = verified
        .into_iter()
        .filter(|p| p.source.branch == branch)
        .collect();
    if targets.is_empty() {
        return Ok(ignored(format!("no pipeline follows branch `{branch}`")));
    }

    let mut runs = Vec::new();
    for pipeline in targets {
        let info = CommitInfo {
            provider: provider.as_str().to_owned(),
            delivery_id: push.delivery_id.clone(),
            commit: push.commit.clone(),
            branch: branch.clone(),
            message: push.message.clone(),
            author: push.author.clone(),
            committer: push.committer.clone(),
            pusher: push.pusher.clone(),
            triggered_by: None,
        };
        runs.push(trigger::start_run(&app.store, "webhook", pipeline, info).await?);
    }
    tracing::info!(provider = provider.as_str(), commit = %push.commit, runs = runs.len(), "webhook accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "runs": runs })),
    )
        .into_response())
}

fn signature_valid(
    pipeline: &Pipeline,
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> bool {
    let Some(secret_ref) = &pipeline.source.webhook_secret else {
        tracing::warn!(pipeline = %pipeline.name, "webhook refused: the pipeline has no source.webhook_secret");
        return false;
    };
    let secret = match secret_ref.resolve() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(pipeline = %pipeline.name, error = %e, "webhook secret cannot be read");
            return false;
        }
    };
    signature::verify(provider, headers, body, secret.expose().as_bytes()).is_ok()
}

fn ignored(reason: String) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "status": "ignored", "reason": reason })),
    )
        .into_response()
}
