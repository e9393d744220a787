//! `POST /api/v1/runs/{id}/stages/{stage}/approve|reject`.
//!
//! The approver is the API token's user (`GANTRY_API_TOKENS`); only members
//! of the stage's approver groups may decide, and when the stage has
//! `allow_self: false` none of the run's authors (commit author and
//! committer, the pusher, whoever triggered it by hand) may approve.
//! Without tokens (a local `gantry up`) nobody can be told apart, so an
//! approval is refused (403) for a stage whose `approval` names approvers or
//! needs more than one; otherwise the body's `user` (default `anonymous`)
//! is recorded. An approval counts only while the stage waits for one
//! (`approval.requested`): earlier, nobody could see what they approve.
//! Once the stage has started, neither decision is taken (409).
//! Every decision is an event; the conductor counts them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gantry_proto::events::{ApprovalGranted, ApprovalRejected, CommitReceived};
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::auth::Identity;
use gantry_runtime::trigger::run_stream;
use gantry_runtime::Problem;
use gantry_store::ExpectedVersion;
use serde::Deserialize;

use crate::Api;

/// Who is calling, as `(user, email)`: with API tokens, the token's user,
/// who must be named in `groups` or belong to one of them (when any are
/// named) to `action`;
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
            if !member(id, groups) {
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

/// Whether `id` may act where `groups` (users or groups) are named: any
/// identity when none are.
pub fn member(id: &Identity, groups: &[String]) -> bool {
    groups.is_empty() || groups.contains(&id.user) || id.groups.iter().any(|g| groups.contains(g))
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
    let started = crate::started_with_stage(&events, &run_id, &stage)?;
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

    if approve && api.tokens.is_none() && (!policy.approvers.is_empty() || policy.required > 1) {
        return Err(Problem::forbidden(format!(
            "stage `{stage}` needs {} approval(s) from {}: without API tokens nobody can be told apart, \
             so approvals are refused; set GANTRY_API_TOKENS (see the README, Security model)",
            policy.required,
            if policy.approvers.is_empty() {
                "distinct users".to_owned()
            } else {
                policy.approvers.join(", ")
            }
        ))
        .with_type("api-tokens-required"));
    }
    let (user, email) = caller(
        &api,
        identity.as_ref().map(|Extension(id)| id),
        body.user.clone(),
        &policy.approvers,
        &format!("decide on stage `{stage}`"),
    )?;
    let stage_events = events
        .iter()
        .filter(|e| e.event.stage() == Some(stage.as_str()));
    let mut requested = false;
    let mut started_stage = false;
    for e in stage_events {
        match e.event.name() {
            Some(EventName::ApprovalRequested) => requested = true,
            Some(EventName::StageStarted) => started_stage = true,
            _ => {}
        }
    }
    // Once the stage has started, a decision changes nothing (the conductor
    // no longer counts one), so neither is recorded: a rejection would
    // otherwise show the promoted stage as rejected.
    if started_stage {
        return Err(Problem::conflict(format!(
            "stage `{stage}` of run `{run_id}` has already started; nothing to {}",
            if approve { "approve" } else { "reject" }
        )));
    }
    if approve && !requested {
        return Err(Problem::conflict(format!(
            "stage `{stage}` of run `{run_id}` is not waiting for approval yet; approve once it asks (approval.requested)"
        )));
    }
    if approve && !policy.allow_self {
        let mut authors = started.authors.clone();
        authors.extend(started.author.clone());
        if let Some(c) = events
            .iter()
            .find_map(|e| e.event.decode::<CommitReceived>().ok())
        {
            authors.extend([c.author, c.committer, c.pusher].into_iter().flatten());
        }
        let is_author = authors
            .iter()
            .any(|a| a.is(&user) || email.as_deref().is_some_and(|e| a.is(e)));
        if is_author {
            return Err(Problem::forbidden(format!(
                "{user} is an author of this run (commit author or committer, pusher, or who triggered it) \
                 and stage `{stage}` does not allow approving one's own change"
            )));
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
    // `access.operate` names who may cancel; by default any token holder.
    let operators = api
        .app
        .pipelines
        .get()
        .get(&first.event.pipeline)
        .and_then(|p| p.access.as_ref())
        .and_then(|a| a.operate.clone())
        .unwrap_or_default();
    let (user, _) = caller(
        &api,
        identity.as_ref().map(|Extension(id)| id),
        body.user.clone(),
        &operators,
        &format!("cancel run `{run_id}`"),
    )?;
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
