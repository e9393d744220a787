//! The API service: read routes over the projections, manual triggers, and
//! the whole log as Server-Sent Events (DESIGN.md 1.5).
//!
//! List routes answer a bare JSON array; single resources an object; errors
//! `application/problem+json`, also for a malformed path, query or body
//! ([`gantry_runtime::problem::harden`]). When `GANTRY_API_TOKENS` is set, every
//! `/api/...` call needs `Authorization: Bearer <token>` or a console
//! session ([`session`]); the file is read again when it changes and on
//! SIGHUP. The console (`gantry-console`) serves the pages over [`Api`].

mod apis_plan;
mod approvals;
mod diff;
mod events;
mod insights;
mod notifications;
mod pause;
mod previews;
mod rollback;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_pipeline::Pipeline;
use gantry_proto::events::Person;
use gantry_proto::RunStatus;
use gantry_runtime::auth::{Identity, TokenSource};
use gantry_runtime::trigger::{self, CommitInfo};
use gantry_runtime::{App, Problem};

pub use approvals::member;
pub use events::{parse_events_request, EventsRequest};
use gantry_store::projection::RunFilter;
pub use previews::{DiffView, PlanRefused, Previews};
use serde::Deserialize;
use serde_json::json;

/// Largest request body the API takes: its bodies are small JSON objects.
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state of the API routes.
#[derive(Clone)]
pub struct Api {
    pub app: App,
    /// The API tokens in force, when `GANTRY_API_TOKENS` is set.
    pub tokens: Option<TokenSource>,
    /// Mirrors of the pipelines' branches, to check what a manual trigger names.
    pub sources: gantry_runtime::git::SourceCache,
    /// The diff and API Manager plan shown before an approval.
    pub previews: Arc<dyn Previews>,
    /// Signed-in console sessions.
    pub sessions: session::Sessions,
}

impl Api {
    /// The API's state over `app`; the tokens file is watched every
    /// `reload_interval` (and on SIGHUP) until the app shuts down.
    pub fn new(
        app: App,
        previews: Arc<dyn Previews>,
        reload_interval: Duration,
    ) -> Result<Self, gantry_runtime::auth::TokensError> {
        let tokens = match &app.settings.api_tokens {
            Some(path) => Some(TokenSource::load(path)?),
            None => None,
        };
        if let Some(tokens) = &tokens {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokens.watch(reload_interval, app.shutdown.child_token());
            }
        }
        let sources =
            gantry_runtime::git::SourceCache::new(app.settings.data_dir.join("git").join("api"));
        Ok(Api {
            app,
            tokens,
            sources,
            previews,
            sessions: session::Sessions::default(),
        })
    }

    /// Who a console session belongs to, while it lives and its token is
    /// still in force.
    pub fn session_identity(&self, headers: &axum::http::HeaderMap) -> Option<Identity> {
        let id = session::cookie(headers, session::COOKIE)?;
        let digest = self.sessions.digest(id)?;
        self.tokens
            .as_ref()?
            .get()
            .authenticate_digest(&digest)
            .cloned()
    }

    /// Whether session cookies get `Secure` for this request.
    pub fn secure_cookies(&self, headers: &axum::http::HeaderMap) -> bool {
        self.app.settings.secure_cookies || session::forwarded_https(headers)
    }
}

/// The API routes (without the console), ready to merge into a server.
/// The tokens file is watched ([`gantry_runtime::auth::RELOAD_INTERVAL`],
/// SIGHUP) until the app shuts down.
pub fn router(
    app: App,
    previews: Arc<dyn Previews>,
) -> Result<Router, gantry_runtime::auth::TokensError> {
    router_with_reload(app, previews, gantry_runtime::auth::RELOAD_INTERVAL)
}

/// [`router`], looking at the tokens file every `reload_interval`.
pub fn router_with_reload(
    app: App,
    previews: Arc<dyn Previews>,
    reload_interval: Duration,
) -> Result<Router, gantry_runtime::auth::TokensError> {
    Ok(routes(Api::new(app, previews, reload_interval)?))
}

/// The API routes over `api`.
pub fn routes(api: Api) -> Router {
    let v1 = Router::new()
        .route("/pipelines", get(list_pipelines))
        .route("/pipelines/{name}", get(get_pipeline))
        .route(
            "/pipelines/{name}/stages/{stage}/rollback",
            post(rollback::rollback),
        )
        .route("/pipelines/{name}/stages/{stage}/pause", post(pause::pause))
        .route(
            "/pipelines/{name}/stages/{stage}/resume",
            post(pause::resume),
        )
        .route("/runs", get(list_runs).post(trigger_run))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/stages/{stage}/diff", get(diff::stage_diff))
        .route("/runs/{id}/stages/{stage}/apis/plan", get(apis_plan::plan))
        .route(
            "/runs/{id}/stages/{stage}/approve",
            post(approvals::approve),
        )
        .route("/runs/{id}/stages/{stage}/reject", post(approvals::reject))
        .route("/runs/{id}/cancel", post(approvals::cancel))
        .route("/events", get(events::stream))
        .route("/insights/dora", get(insights::dora))
        .route("/notifications", get(notifications::list))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api.clone());
    gantry_runtime::problem::harden(Router::new().nest("/api/v1", v1), MAX_BODY)
}

/// The pipeline named `name` in `set`, or 404.
fn pipeline_named<'a>(
    set: &'a gantry_pipeline::PipelineSet,
    name: &str,
) -> Result<&'a gantry_pipeline::Pipeline, Problem> {
    set.get(name)
        .ok_or_else(|| Problem::not_found(format!("no pipeline named `{name}`")))
}

/// The approvers of `pipeline`'s stage `stage` (empty without an
/// approval), or 404 when it has no such stage.
fn stage_approvers(
    pipeline: &gantry_pipeline::Pipeline,
    stage: &str,
) -> Result<Vec<String>, Problem> {
    let stage = pipeline.stage(stage).ok_or_else(|| {
        Problem::not_found(format!(
            "pipeline `{}` has no stage `{stage}`",
            pipeline.name
        ))
    })?;
    Ok(stage
        .approval
        .as_ref()
        .map(|a| a.approvers.clone())
        .unwrap_or_default())
}

/// The `run.started` of a run's `events`, provided its plan has `stage`:
/// 409 before the run started, 404 for a stage it does not have.
fn started_with_stage(
    events: &[gantry_store::RecordedEvent],
    run_id: &str,
    stage: &str,
) -> Result<gantry_proto::events::RunStarted, Problem> {
    let started = events
        .iter()
        .find_map(|e| e.event.decode::<gantry_proto::events::RunStarted>().ok())
        .ok_or_else(|| Problem::conflict(format!("run `{run_id}` has not started")))?;
    if !started.stages.iter().any(|s| s.name == stage) {
        return Err(Problem::not_found(format!(
            "run `{run_id}` has no stage `{stage}`"
        )));
    }
    Ok(started)
}

async fn not_found() -> Problem {
    Problem::not_found("no such API route; see GET /api/v1/runs, /api/v1/pipelines, /api/v1/events")
}

/// Checks the bearer token or console session when tokens are configured,
/// and records who called. A request that changes something is refused
/// when its `Origin` names another site (a page elsewhere cannot act
/// through the browser of someone signed in, or on a loopback Gantry
/// without tokens), and, with a session, when it names no origin at all.
async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let origin = session::origin_matches(req.headers());
    if mutating && origin == Some(false) {
        return cross_origin().into_response();
    }
    if let Some(tokens) = &api.tokens {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let identity = match presented {
            Some(token) => match tokens.get().authenticate(token).cloned() {
                Some(identity) => identity,
                None => return Problem::unauthorized("unknown API token").into_response(),
            },
            None if session::cookie(req.headers(), session::COOKIE).is_some() => {
                let Some(identity) = api.session_identity(req.headers()) else {
                    return Problem::unauthorized(
                        "the console session has ended (signed out, expired or its token revoked); sign in again",
                    )
                    .into_response();
                };
                if mutating && origin != Some(true) {
                    return cross_origin().into_response();
                }
                identity
            }
            None => {
                return Problem::unauthorized(
                    "this API needs `Authorization: Bearer <token>` or a console session",
                )
                .into_response()
            }
        };
        req.extensions_mut().insert(identity);
    }
    next.run(req).await
}

fn cross_origin() -> Problem {
    Problem::forbidden(
        "a request that changes something must come from this server's own pages: \
         its Origin header names another site, or none with a session cookie",
    )
    .with_type("cross-origin")
}

fn pipeline_json(
    p: &Pipeline,
    releases: &[gantry_store::projection::Release],
    pauses: &HashMap<(String, String), pause::PauseView>,
) -> serde_json::Value {
    let stages: Vec<_> = p
        .stage_plan()
        .into_iter()
        .map(|planned| {
            let current = releases.iter().find(|r| r.stage == planned.stage.name);
            json!({
                "name": planned.stage.name,
                "after": planned.after,
                "approval": planned.stage.approval.as_ref().map(|a| json!({
                    "required": a.required,
                    "approvers": a.approvers,
                    "allow_self": a.allow_self,
                })),
                "queue": planned.stage.queue,
                "current": current,
                "paused": pauses.get(&(p.name.clone(), planned.stage.name.clone())),
            })
        })
        .collect();
    json!({
        "name": p.name,
        "source": { "repo": p.source.repo, "branch": p.source.branch },
        "gateway": { "format": p.gateway.format.as_str(), "path": p.gateway.path },
        "image": p.image.as_ref().map(|i| json!({ "base": i.base, "repository": i.repository })),
        "stages": stages,
    })
}

async fn list_pipelines(State(api): State<Api>) -> Result<Json<Vec<serde_json::Value>>, Problem> {
    let set = api.app.pipelines.get();
    let all: Vec<&Pipeline> = set.iter().collect();
    let pauses = pause::pauses(&api, &all).await?;
    let mut out = Vec::with_capacity(set.len());
    for p in set.iter() {
        let releases = api.app.projections.releases(&p.name).await?;
        out.push(pipeline_json(p, &releases, &pauses));
    }
    Ok(Json(out))
}

async fn get_pipeline(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let set = api.app.pipelines.get();
    let p = pipeline_named(&set, &name)?;
    let releases = api.app.projections.releases(&name).await?;
    let pauses = pause::pauses(&api, &[p]).await?;
    Ok(Json(pipeline_json(p, &releases, &pauses)))
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_runs(
    State(api): State<Api>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, Problem> {
    if let Some(limit) = q.limit {
        if limit < 1 {
            return Err(Problem::bad_request(format!(
                "limit {limit} is not a positive number of runs (at most 1000 are answered)"
            )));
        }
    }
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<RunStatus>)
        .transpose()
        .map_err(|e| {
            Problem::bad_request(format!("status `{}` is not one of {}", e.value, e.expected))
        })?;
    let runs = api
        .app
        .projections
        .list_runs(&RunFilter {
            pipeline: q.pipeline.filter(|p| !p.is_empty()),
            status,
            limit: q.limit,
        })
        .await?;
    Ok(Json(runs).into_response())
}

async fn get_run(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, Problem> {
    match api.app.projections.get_run(&id).await? {
        Some(run) => Ok(Json(run).into_response()),
        None => Err(Problem::not_found(format!("no run `{id}`"))),
    }
}

async fn run_events(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, Problem> {
    let events = api.app.store.read_run(&id).await?;
    if events.is_empty() {
        return Err(Problem::not_found(format!("no run `{id}`")));
    }
    let events: Vec<_> = events.into_iter().map(|e| e.event).collect();
    Ok(Json(events).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerRequest {
    pipeline: String,
    /// Full sha; the branch head when omitted.
    commit: Option<String>,
    message: Option<String>,
}

async fn trigger_run(
    State(api): State<Api>,
    identity: Option<axum::Extension<Identity>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: TriggerRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(format!("invalid trigger request: {e}")).with(
            "example",
            json!({ "pipeline": "banking", "commit": "<40-hex sha>" }),
        )
    })?;
    let set = api.app.pipelines.get();
    let pipeline = pipeline_named(&set, &req.pipeline)?.clone();
    let identity = identity.map(|axum::Extension(i)| i);
    if let Some(id) = &identity {
        may_trigger(&pipeline, id)?;
    }
    let commit = match req.commit.map(|c| c.trim().to_ascii_lowercase()) {
        Some(c) => {
            if !(c.len() == 40 || c.len() == 64) || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Problem::bad_request(format!(
                    "commit `{c}` is not a full commit id (40 or 64 hex digits)"
                )));
            }
            c
        }
        None => resolve_head(&pipeline).await?,
    };
    let people = commit_on_branch(&api, &pipeline, &commit).await?;
    // Who triggered counts as an author of the run (separation of duties).
    let triggered_by = match identity {
        Some(i) => Person {
            name: None,
            email: i.email,
            username: Some(i.user),
        },
        None => Person {
            name: None,
            email: None,
            username: Some(
                std::env::var("USER")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "anonymous".into()),
            ),
        },
    };
    let signer = |s: gantry_runtime::git::Signer| {
        let p = Person {
            name: s.name,
            email: s.email,
            username: None,
        };
        (p != Person::default()).then_some(p)
    };
    let run = trigger::start_run(
        &api.app.store,
        "api",
        &pipeline,
        CommitInfo {
            provider: "manual".into(),
            delivery_id: None,
            commit,
            branch: pipeline.source.branch.clone(),
            message: req.message,
            author: signer(people.author),
            committer: signer(people.committer),
            pusher: None,
            triggered_by: Some(triggered_by),
        },
    )
    .await?;
    let status = if run.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(run)).into_response())
}

/// A manual trigger may only name a commit the pipeline's branch holds
/// (`422` otherwise): other branches and tags are not reviewed for it.
async fn commit_on_branch(
    api: &Api,
    pipeline: &Pipeline,
    commit: &str,
) -> Result<gantry_runtime::git::CommitPeople, Problem> {
    let token = source_token(pipeline)?;
    let (sources, name, repo, branch, commit) = (
        api.sources.clone(),
        pipeline.name.clone(),
        pipeline.source.repo.clone(),
        pipeline.source.branch.clone(),
        commit.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        sources.commit_on_branch(&name, &repo, &branch, token.as_deref(), &commit)
    })
    .await
    .map_err(Problem::internal)?
    .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// `access.trigger` of the pipeline, when set, names the users and groups
/// that may start runs by hand (DESIGN.md 1.7).
fn may_trigger(pipeline: &Pipeline, id: &Identity) -> Result<(), Problem> {
    let Some(allowed) = pipeline.access.as_ref().and_then(|a| a.trigger.as_ref()) else {
        return Ok(());
    };
    let member = allowed.contains(&id.user) || id.groups.iter().any(|g| allowed.contains(g));
    if member {
        return Ok(());
    }
    Err(Problem::forbidden(format!(
        "{} may not trigger pipeline `{}`: its access.trigger allows only {}",
        id.user,
        pipeline.name,
        if allowed.is_empty() {
            "nobody".to_owned()
        } else {
            allowed.join(", ")
        }
    ))
    .with_type("access-denied"))
}

/// The pipeline's git token, read now.
fn source_token(pipeline: &Pipeline) -> Result<Option<String>, Problem> {
    pipeline
        .source
        .token
        .as_ref()
        .map(|r| {
            r.resolve()
                .map(|t| t.expose().to_owned())
                .map_err(|e| Problem::bad_request(format!("source.token: {e}")))
        })
        .transpose()
}

async fn resolve_head(pipeline: &Pipeline) -> Result<String, Problem> {
    let repo = pipeline.source.repo.clone();
    let branch = pipeline.source.branch.clone();
    let token = source_token(pipeline)?;
    tokio::task::spawn_blocking(move || {
        gantry_runtime::git::branch_head(&repo, &branch, token.as_deref())
    })
    .await
    .map_err(Problem::internal)?
    .map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}; pass a commit explicitly"),
        )
    })
}
