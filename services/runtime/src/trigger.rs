//! Starting runs: one run per (pipeline, commit), however often it is asked for.
//!
//! `commit.received` goes to the stream `commit-<pipeline>-<sha>` with "no
//! stream" expected, and `run.started` to `run-<id>`, in one atomic append.
//! A second webhook delivery, a forge retry or a manual trigger of the same
//! commit loses that race and gets the existing run back.

use gantry_proto::events::{CommitReceived, Person, RollbackOf, RunStarted, StagePlan};
use gantry_proto::{CloudEvent, Trigger};
use serde::Serialize;
use uuid::Uuid;

use gantry_decide::{rollback_target, RollbackError};
use gantry_pipeline::Pipeline;
use gantry_store::store::{EventStore, ExpectedVersion, NewEvents, StoreError};

/// What a commit is known by when it arrives.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// `github`, ..., `generic`, or `manual`.
    pub provider: String,
    pub delivery_id: Option<String>,
    pub commit: String,
    pub branch: String,
    pub message: Option<String>,
    pub author: Option<Person>,
    pub committer: Option<Person>,
    /// Who pushed, as the forge authenticated them.
    pub pusher: Option<Person>,
    /// Who triggered by hand: the token's user (and email).
    pub triggered_by: Option<Person>,
}

impl CommitInfo {
    /// Everyone who counts as an author of the run (DESIGN.md 1.7), without
    /// duplicates.
    pub fn authors(&self) -> Vec<Person> {
        let mut out: Vec<Person> = Vec::new();
        for p in [
            &self.author,
            &self.committer,
            &self.pusher,
            &self.triggered_by,
        ]
        .into_iter()
        .flatten()
        {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// A run that a trigger named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRef {
    pub pipeline: String,
    pub run_id: String,
    pub commit: String,
    /// False when the run already existed.
    pub created: bool,
}

pub fn commit_stream(pipeline: &str, commit: &str) -> String {
    format!("commit-{pipeline}-{commit}")
}

pub fn run_stream(run_id: &str) -> String {
    format!("run-{run_id}")
}

/// The stream of a stage's own facts (`stage.paused`, `stage.resumed`):
/// they belong to no run. `/` cannot occur in a pipeline name, so no two
/// (pipeline, stage) pairs share a stream.
pub fn stage_stream(pipeline: &str, stage: &str) -> String {
    format!("stage-{pipeline}/{stage}")
}

/// Starts the run of `pipeline` for `info.commit`, or returns the one that exists.
pub async fn start_run(
    store: &EventStore,
    service: &str,
    pipeline: &Pipeline,
    info: CommitInfo,
) -> Result<RunRef, StoreError> {
    // No read first: the append expecting no commit stream is the check,
    // and a redelivery (the rarer case) looks the run up after its conflict.
    // That keeps a new commit to one trip to the log.
    let commit_stream = commit_stream(&pipeline.name, &info.commit);
    let run_id = Uuid::now_v7().to_string();
    let mut received = CloudEvent::new(
        service,
        &pipeline.name,
        Some(&run_id),
        &CommitReceived {
            provider: info.provider.clone(),
            delivery_id: info.delivery_id.clone(),
            repository: pipeline.source.repo.clone(),
            branch: info.branch.clone(),
            commit: info.commit.clone(),
            message: info.message.clone(),
            author: info.author.clone(),
            committer: info.committer.clone(),
            pusher: info.pusher.clone(),
            triggered_by: info
                .triggered_by
                .as_ref()
                .and_then(|p| p.username.clone().or_else(|| p.name.clone())),
            run_id: run_id.clone(),
        },
    );
    // The run's trace starts here; `caused_by` passes it on.
    received.traceparent = crate::traces::start_run_trace(&pipeline.name, &run_id);
    let started = CloudEvent::new(
        service,
        &pipeline.name,
        Some(&run_id),
        &RunStarted {
            run_id: run_id.clone(),
            commit: info.commit.clone(),
            branch: info.branch.clone(),
            repository: pipeline.source.repo.clone(),
            message: info.message.clone(),
            author: info.author.clone(),
            authors: info.authors(),
            trigger: if info.provider == "manual" {
                Trigger::Manual
            } else {
                Trigger::Webhook
            },
            stages: pipeline.run_plan(),
            rollback: None,
        },
    )
    .caused_by(&received);
    let result = store
        .append_many(vec![
            NewEvents::new(&commit_stream, ExpectedVersion::NoStream, vec![received]),
            NewEvents::new(
                run_stream(&run_id),
                ExpectedVersion::NoStream,
                vec![started],
            ),
        ])
        .await;
    match result {
        Ok(_) => {
            crate::metrics::inc("gantry_runs_started_total", &[("pipeline", &pipeline.name)]);
            Ok(RunRef {
                pipeline: pipeline.name.clone(),
                run_id,
                commit: info.commit,
                created: true,
            })
        }
        // The commit has a run already (a redelivery, or a race).
        Err(e) if e.is_conflict() => match existing_run(store, &commit_stream).await? {
            Some(existing) => Ok(RunRef {
                pipeline: pipeline.name.clone(),
                run_id: existing,
                commit: info.commit,
                created: false,
            }),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

async fn existing_run(
    store: &EventStore,
    commit_stream: &str,
) -> Result<Option<String>, StoreError> {
    let events = store.read_stream(commit_stream).await?;
    Ok(events
        .first()
        .and_then(|e| e.event.decode::<CommitReceived>().ok())
        .map(|c| c.run_id))
}

/// A manual rollback of one stage, as asked for.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub stage: String,
    /// The run whose release to go back to; default: what the stage ran
    /// before its current release.
    pub to_run: Option<String>,
    pub requested_by: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackStartError {
    #[error(transparent)]
    Invalid(#[from] RollbackError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The stream that serializes rollback requests of one stage, so that two
/// concurrent requests do not start two rollback runs.
pub fn rollback_stream(pipeline: &str, stage: &str) -> String {
    format!("rollback-{pipeline}-{stage}")
}

/// Starts a rollback run: a run with one stage that re-promotes an earlier
/// release (its package and image, nothing rebuilt) through the stage's
/// deploy, readiness, API Manager and smoke steps. While a rollback of the
/// stage is still going, asking again returns that run (`created: false`).
pub async fn start_rollback(
    store: &EventStore,
    service: &str,
    pipeline: &Pipeline,
    request: RollbackRequest,
) -> Result<RunRef, RollbackStartError> {
    let guard = rollback_stream(&pipeline.name, &request.stage);
    // Losing the race to another request means that request's run is now
    // the pending one: look again.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let version = store
            .read_stream(&guard)
            .await?
            .last()
            .map(|e| e.stream_version);
        let history: Vec<CloudEvent> = store
            .read_pipeline(&pipeline.name)
            .await?
            .into_iter()
            .map(|e| e.event)
            .collect();
        let target = rollback_target(
            pipeline,
            &history,
            &request.stage,
            request.to_run.as_deref(),
        )?;
        if let Some(pending) = target.pending {
            return Ok(RunRef {
                pipeline: pipeline.name.clone(),
                run_id: pending,
                commit: target.commit,
                created: false,
            });
        }
        let steps = pipeline.rollback_steps(&request.stage);
        let run_id = Uuid::now_v7().to_string();
        let mut started = CloudEvent::new(
            service,
            &pipeline.name,
            Some(&run_id),
            &RunStarted {
                run_id: run_id.clone(),
                commit: target.commit.clone(),
                branch: pipeline.source.branch.clone(),
                repository: pipeline.source.repo.clone(),
                message: Some(format!(
                    "rollback of {} to run {}: {}",
                    request.stage, target.run, request.reason
                )),
                author: None,
                authors: Vec::new(),
                trigger: Trigger::Rollback,
                stages: vec![StagePlan {
                    name: request.stage.clone(),
                    after: None,
                    steps,
                }],
                rollback: Some(RollbackOf {
                    stage: request.stage.clone(),
                    to_run: target.run.clone(),
                    package: target.package.clone(),
                    image: target.image.clone(),
                    digest: target.digest.clone(),
                    requested_by: request.requested_by.clone(),
                    reason: request.reason.clone(),
                }),
            },
        );
        started.traceparent = crate::traces::start_run_trace(&pipeline.name, &run_id);
        let expected = match version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        };
        match store.append(&guard, expected, vec![started]).await {
            Ok(_) => {
                return Ok(RunRef {
                    pipeline: pipeline.name.clone(),
                    run_id,
                    commit: target.commit,
                    created: true,
                })
            }
            Err(e) if e.is_conflict() && attempt < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
