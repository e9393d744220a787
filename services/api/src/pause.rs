//! `POST /api/v1/pipelines/{name}/stages/{stage}/pause|resume`: stop the
//! line (DESIGN.md 1.8).
//!
//! A pause is a fact about a stage, not about a run: `stage.paused` /
//! `stage.resumed` go to the stream `stage-<pipeline>/<stage>` without a
//! run id, and the conductor holds every new promotion into the stage
//! until it is resumed. Appends expect the stream's version read, so two
//! people pausing at once record one pause, and the other is told who was
//! first (`409`). Who may: the pipeline's `access.operate` when it names
//! anyone, else the stage's approvers when it has some, else any token
//! holder (as for rollbacks: stopping a guarded stage is a release
//! manager's call).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use gantry_pipeline::Pipeline;
use gantry_proto::events::{StagePaused, StageResumed};
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::auth::Identity;
use gantry_runtime::trigger::stage_stream;
use gantry_runtime::Problem;
use gantry_store::{ExpectedVersion, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::approvals::caller;
use crate::Api;

/// A stage's pause as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PauseView {
    pub by: String,
    pub reason: String,
    pub since: String,
}

/// The pause in force after `events` (a stage stream, in order), if any.
fn current(events: &[RecordedEvent]) -> Option<PauseView> {
    let last = events.iter().rev().find(|e| {
        matches!(
            e.event.name(),
            Some(EventName::StagePaused | EventName::StageResumed)
        )
    })?;
    let d = last.event.decode::<StagePaused>().ok()?;
    Some(PauseView {
        by: d.user,
        reason: d.reason,
        since: time(last.event.time),
    })
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The pause of every paused stage of `pipelines`, by (pipeline, stage):
/// one read of all their stage streams.
pub(crate) async fn pauses(
    api: &Api,
    pipelines: &[&Pipeline],
) -> Result<HashMap<(String, String), PauseView>, Problem> {
    let mut streams = Vec::new();
    let mut of_stream = HashMap::new();
    for p in pipelines {
        for s in &p.stages {
            let id = stage_stream(&p.name, &s.name);
            of_stream.insert(id.clone(), (p.name.clone(), s.name.clone()));
            streams.push(id);
        }
    }
    // In log order: the last event of each stream says whether it is paused.
    let mut last: HashMap<String, RecordedEvent> = HashMap::new();
    for e in api.app.store.read_streams(&streams).await? {
        last.insert(e.stream_id.clone(), e);
    }
    Ok(last
        .into_iter()
        .filter_map(|(id, e)| Some((of_stream.remove(&id)?, current(std::slice::from_ref(&e))?)))
        .collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PauseBody {
    reason: Option<String>,
    /// Only without API tokens: who is asking.
    user: Option<String>,
}

pub(crate) async fn pause(
    state: State<Api>,
    path: Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    change(state, path, identity, body, true).await
}

pub(crate) async fn resume(
    state: State<Api>,
    path: Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    change(state, path, identity, body, false).await
}

/// Conflicting appends (someone else paused or resumed meanwhile) are
/// decided again on the new stream, at most this often.
const ATTEMPTS: usize = 3;

async fn change(
    State(api): State<Api>,
    Path((pipeline, stage)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
    pause: bool,
) -> Result<Response, Problem> {
    let verb = if pause { "pause" } else { "resume" };
    let body: PauseBody = if body.iter().all(u8::is_ascii_whitespace) {
        PauseBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::bad_request(format!("invalid {verb} request: {e}"))
                .with("example", serde_json::json!({ "reason": "errors in prod" }))
        })?
    };
    let set = api.app.pipelines.get();
    let pipeline = crate::pipeline_named(&set, &pipeline)?;
    let approvers = crate::stage_approvers(pipeline, &stage)?;
    let reason = body
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if pause && reason.is_none() {
        return Err(Problem::bad_request(
            "a pause needs a `reason`: it is shown to everyone whose runs wait",
        )
        .with("example", serde_json::json!({ "reason": "errors in prod" })));
    }
    let operators = pipeline.access.as_ref().and_then(|a| a.operate.clone());
    let (user, _) = caller(
        &api,
        identity.as_ref().map(|Extension(id)| id),
        body.user,
        operators.as_deref().unwrap_or(&approvers),
        &format!("{verb} stage `{stage}`"),
    )?;
    let stream = stage_stream(&pipeline.name, &stage);
    for _ in 0..ATTEMPTS {
        let events = api.app.store.read_stream(&stream).await?;
        let version = events.last().map_or(0, |e| e.stream_version);
        match (pause, current(&events)) {
            (true, Some(p)) => {
                return Err(Problem::conflict(format!(
                    "stage `{stage}` of `{}` is already paused by {} since {}: {}",
                    pipeline.name, p.by, p.since, p.reason
                ))
                .with_type("stage-paused")
                .with("paused", p))
            }
            (false, None) => {
                return Err(Problem::conflict(format!(
                    "stage `{stage}` of `{}` is not paused",
                    pipeline.name
                ))
                .with_type("stage-not-paused"))
            }
            _ => {}
        }
        let event = if pause {
            CloudEvent::new(
                "api",
                &pipeline.name,
                None,
                &StagePaused {
                    stage: stage.clone(),
                    user: user.clone(),
                    reason: reason.clone().unwrap_or_default(),
                },
            )
        } else {
            CloudEvent::new(
                "api",
                &pipeline.name,
                None,
                &StageResumed {
                    stage: stage.clone(),
                    user: user.clone(),
                    reason: reason.clone(),
                },
            )
        };
        let json = serde_json::to_value(&event).map_err(Problem::internal)?;
        match api
            .app
            .store
            .append(&stream, ExpectedVersion::Exact(version), vec![event])
            .await
        {
            Ok(_) => return Ok((StatusCode::CREATED, Json(json)).into_response()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Problem::conflict(format!(
        "stage `{stage}` is being paused and resumed by others right now; look at it and try again"
    )))
}
