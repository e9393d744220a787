//! `POST /api/v1/pipelines/{name}/stages/{stage}/rollback`: re-promote an
//! earlier release of a stage.
//!
//! The rollback is a run of its own (trigger `rollback`, one stage) that
//! goes through the stage's deploy, readiness, API Manager and smoke steps
//! and ends with `env.promoted` and `stage.rolled_back`. It needs no approval
//! and is not held by freeze windows: asking for it is the decision, so
//! only the pipeline's `access.operate` groups may ask when it names them,
//! else, for a stage with approvers, members of those groups (when API
//! tokens are configured).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gantry_decide::RollbackError;
use gantry_runtime::auth::Identity;
use gantry_runtime::trigger::{self, RollbackRequest, RollbackStartError};
use gantry_runtime::Problem;
use serde::Deserialize;

use crate::approvals::caller;
use crate::Api;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    /// The run whose release to go back to.
    to: Option<String>,
    reason: Option<String>,
    /// Only without API tokens: who is asking.
    user: Option<String>,
}

pub(crate) async fn rollback(
    State(api): State<Api>,
    Path((pipeline, stage)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::bad_request(format!("invalid rollback request: {e}")).with(
                "example",
                serde_json::json!({ "to": "<run id>", "reason": "errors after the release" }),
            )
        })?
    };
    let set = api.app.pipelines.get();
    let pipeline = crate::pipeline_named(&set, &pipeline)?.clone();
    let operators = pipeline.access.as_ref().and_then(|a| a.operate.clone());
    let approvers = crate::stage_approvers(&pipeline, &stage)?;
    let (user, _) = caller(
        &api,
        identity.as_ref().map(|Extension(id)| id),
        body.user.clone(),
        operators.as_deref().unwrap_or(&approvers),
        &format!("roll back stage `{stage}`"),
    )?;
    let request = RollbackRequest {
        stage: stage.clone(),
        to_run: body
            .to
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
        requested_by: user,
        reason: body
            .reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "no reason given".into()),
    };
    let run = trigger::start_rollback(&api.app.store, "api", &pipeline, request)
        .await
        .map_err(|e| match e {
            RollbackStartError::Invalid(e) => match e {
                RollbackError::UnknownStage { .. } => Problem::not_found(e.to_string()),
                RollbackError::NotAReleaseOf { .. } => Problem::bad_request(e.to_string()),
                RollbackError::NoEarlierRelease { .. } | RollbackError::AlreadyRunning { .. } => {
                    Problem::conflict(e.to_string())
                }
            },
            RollbackStartError::Store(e) => e.into(),
        })?;
    let status = if run.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(run)).into_response())
}
