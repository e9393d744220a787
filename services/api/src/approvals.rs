//! `POST /api/v1/runs/{id}/stages/{stage}/approve|reject`.
//!
//! The approver is the API token's user (`GANTRY_API_TOKENS`); only members
//! of the stage's approver groups may decide, and when the stage has
//! `allow_self: false` the commit's author may not approve. Without tokens
//! configured (a local `gantry up`), nobody can be told apart: the body's
//! `user` (default `anonymous`) is recorded and groups are not checked.
//! Every decision is an event; the conductor counts them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gantry_core::auth::Identity;
use gantry_core::trigger::run_stream;
use gantry_core::{ExpectedVersion, Problem};
use gantry_proto::events::{ApprovalGranted, ApprovalRejected, CommitReceived, RunStarted};
use gantry_proto::{CloudEvent, EventName};
use serde::Deserialize;

use crate::Api;

/// Who is calling, as `(user, email)`: with API tokens, the token's user,
/// who must be in one of `groups` (when the stage names any) to `action`;
/// without tokens (nobody can be told apart), the body's `user`, default
/// `anonymous`.
pub(crate) fn caller(
    api: &Api,
    identity: Option<&Identity>,
    body_user: Option<String>,
    groups: &[String],
    action: &str,
) -> Result<(String, Option<String>), Problem> {
    match (identity, &api.tokens) {
        (Some(id), _) => {
            if !groups.is_empty() && !id.groups.iter().any(|g| groups.contains(g)) {
                return Err(Problem::forbidden(format!(
                    "{} may not {action}: only the groups {} may",
                    id.user,
                    groups.join(", ")
                )));
            }
            Ok((id.user.clone(), id.email.clone()))
        }
        (None, Some(_)) => Err(Problem::unauthorized(format!(
            "an API token is needed to {action}"
        ))),
        (None, None) => Ok((body_user.unwrap_or_else(|| "anonymous".into()), None)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    comment: Option<String>,
    reason: Option<String>,
    /// Only without API tokens: who is deciding.
    user: Option<String>,
}

pub(crate) async fn approve(
    state: State<Api>,
    path: Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    decide(state, path, identity, body, true).await
}

pub(crate) async fn reject(
    state: State<Api>,
    path: Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    decide(state, path, identity, body, false).await
}

async fn decide(
    State(api): State<Api>,
    Path((run_id, stage)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
    approve: bool,
) -> Result<Response, Problem> {
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))?
    };
    let events = api.app.store.read_run(&run_id).await?;
    let Some(first) = events.first() else {
        return Err(Problem::not_found(format!("no run `{run_id}`")));
    };
    let pipeline_name = first.event.pipeline.clone();
    if events
        .iter()
        .any(|e| e.event.name().is_some_and(EventName::is_terminal))
    {
        return Err(Problem::conflict(format!(
            "run `{run_id}` has ended; nothing to decide"
        )));
    }
    let started = events
        .iter()
        .find_map(|e| e.event.decode::<RunStarted>().ok())
        .ok_or_else(|| Problem::conflict(format!("run `{run_id}` has not started")))?;
    if !started.stages.iter().any(|s| s.name == stage) {
        return Err(Problem::not_found(format!(
            "run `{run_id}` has no stage `{stage}`"
        )));
    }
    let set = api.app.pipelines.get();
    let policy = set
        .get(&pipeline_name)
        .and_then(|p| p.stage(&stage))
        .and_then(|s| s.approval.clone());
    let Some(policy) = policy else {
        return Err(Problem::conflict(format!(
            "stage `{stage}` of `{pipeline_name}` needs no approval"
        )));
    };

    let (user, email) = caller(
        &api,
        identity.as_ref().map(|Extension(id)| id),
        body.user.clone(),
        &policy.approvers,
        &format!("decide on stage `{stage}`"),
    )?;
    if approve && !policy.allow_self {
        let author = started.author.clone().or_else(|| {
            events
                .iter()
                .find_map(|e| e.event.decode::<CommitReceived>().ok())
                .and_then(|c| c.author)
        });
        if let Some(author) = author {
            let same = |a: &Option<String>, b: &str| {
                a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b))
            };
            let is_author = same(&author.username, &user)
                || same(&author.email, &user)
                || email.as_deref().is_some_and(|e| same(&author.email, e));
            if is_author {
                return Err(Problem::forbidden(format!(
                    "{user} wrote this commit and stage `{stage}` does not allow approving one's own change"
                )));
            }
        }
    }

    let event = if approve {
        CloudEvent::new(
            "api",
            &pipeline_name,
            Some(&run_id),
            &ApprovalGranted {
                stage: stage.clone(),
                user: user.clone(),
                comment: body.comment,
            },
        )
    } else {
        let reason = body
            .reason
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| Problem::bad_request("a rejection needs a `reason`"))?;
        CloudEvent::new(
            "api",
            &pipeline_name,
            Some(&run_id),
            &ApprovalRejected {
                stage: stage.clone(),
                user: user.clone(),
                reason,
            },
        )
    };
    let json = serde_json::to_value(&event).map_err(Problem::internal)?;
    api.app
        .store
        .append(&run_stream(&run_id), ExpectedVersion::Any, vec![event])
        .await?;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    reason: Option<String>,
    /// Only without API tokens: who is cancelling.
    user: Option<String>,
}

/// `POST /api/v1/runs/{id}/cancel`: the run stops where it is; a stage it
/// is promoting into is released (what was deployed stays deployed).
pub(crate) async fn cancel(
    State(api): State<Api>,
    Path(run_id): Path<String>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))?
    };
    let events = api.app.store.read_run(&run_id).await?;
    let Some(first) = events.first() else {
        return Err(Problem::not_found(format!("no run `{run_id}`")));
    };
    if events
        .iter()
        .any(|e| e.event.name().is_some_and(EventName::is_terminal))
    {
        return Err(Problem::conflict(format!(
            "run `{run_id}` has already ended"
        )));
    }
    let user = match identity {
        Some(Extension(id)) => id.user,
        None => body.user.unwrap_or_else(|| "anonymous".into()),
    };
    let event = CloudEvent::new(
        "api",
        &first.event.pipeline.clone(),
        Some(&run_id),
        &gantry_proto::events::RunCancelled {
            user,
            reason: body.reason,
        },
    );
    let json = serde_json::to_value(&event).map_err(Problem::internal)?;
    api.app
        .store
        .append(&run_stream(&run_id), ExpectedVersion::Any, vec![event])
        .await?;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}
