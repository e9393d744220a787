//! The one shape of a worker (envgen, imagebuild, deployer, apim, smoke, the
//! conductor): what it is built from, how it reads its cue and how it
//! answers.
//!
//! - Every worker is built from a [`WorkerContext`] (`Worker::new(&ctx)`,
//!   and `handler(&ctx)` for the runtime), and names itself with its crate's
//!   `SERVICE` constant: the handler name, the durable consumer name (kept in
//!   JetStream: never rename one), the CloudEvents `source` and the logs.
//! - [`decode`] and [`run_id`] read the cue; a cue that cannot be read is a
//!   permanent [`HandlerError`] that keeps its cause.
//! - [`Reply`] builds the results: events caused by the cue, on its run's
//!   stream.
//! - [`WorkerContext::pipeline_for`] is the one rule for a pipeline that is
//!   no longer defined (removed or renamed since the run started): every
//!   stage whose frozen plan has the worker's step begin at this cue gets the
//!   step's `*.failed`, with a reason naming the pipeline, so the run ends
//!   visibly instead of waiting for an answer that never comes.

use std::path::{Path, PathBuf};

use gantry_pipeline::Pipeline;
use gantry_proto::events::{RunStarted, StageStarted};
use gantry_proto::{CloudEvent, EventName, EventPayload, Step};
use gantry_store::consumer::HandlerError;
use gantry_store::packages::PackageStore;
use gantry_store::{EventStore, ExpectedVersion, NewEvents, StoreError};

use crate::runtime::Pipelines;
use crate::trigger::run_stream;
use crate::App;

/// What every worker is built from: the same few things for all of them.
#[derive(Clone)]
pub struct WorkerContext {
    pub store: EventStore,
    pub pipelines: Pipelines,
    pub packages: PackageStore,
    /// Where a worker keeps its caches and scratch space, each under its
    /// own subdirectory (`git/`, `work/`, `deploy/`, `apim/`).
    pub data_dir: PathBuf,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("store", &self.store.backend())
            .field("packages", &self.packages.kind())
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl WorkerContext {
    pub fn new(
        store: EventStore,
        pipelines: Pipelines,
        packages: PackageStore,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            store,
            pipelines,
            packages,
            data_dir: data_dir.into(),
        }
    }

    /// The context of `app`'s workers.
    pub fn of(app: &App) -> Self {
        Self::new(
            app.store.clone(),
            app.pipelines.clone(),
            app.packages.clone(),
            &app.settings.data_dir,
        )
    }

    /// A context on its own SQLite log and package directory under
    /// `data_dir` (tests, tools).
    pub async fn local(pipelines: Pipelines, data_dir: &Path) -> Result<Self, StoreError> {
        let store = EventStore::connect(&format!(
            "sqlite://{}",
            data_dir.join("gantry.db").display()
        ))
        .await?;
        store.migrate().await?;
        Ok(Self::new(
            store,
            pipelines,
            PackageStore::local(data_dir),
            data_dir,
        ))
    }

    /// The pipeline `reply`'s cue belongs to, as defined now, for a worker
    /// doing `step` of `stages`.
    ///
    /// When the pipeline is no longer defined, the one rule: each of
    /// `stages` whose plan (frozen in the run's `run.started`) has `step`
    /// begin at this cue gets `failed(stage, reason)`, the reason naming
    /// the pipeline; the other stages nothing (the run was not waiting for
    /// them).
    pub async fn pipeline_for<P: EventPayload>(
        &self,
        reply: &Reply<'_>,
        step: Step,
        stages: &[&str],
        failed: impl Fn(&str, String) -> P,
    ) -> Result<Found, HandlerError> {
        let name = &reply.cause.pipeline;
        if let Some(pipeline) = self.pipelines.get().get(name) {
            return Ok(Found::Pipeline(Box::new(pipeline.clone())));
        }
        let reason = no_longer_defined(name);
        let results = self
            .fail_where_due(reply, step, stages, &reason, failed)
            .await?;
        Ok(Found::Gone(results))
    }

    /// The step's `failed(stage, reason)` for each of `stages` whose plan
    /// (frozen in the run's `run.started`) has `step` begin at `reply`'s
    /// cue; nothing for the others (the run does not wait for them). How
    /// a worker ends a step it cannot do: its pipeline is gone, or the
    /// consumer runner gave up on the cue ([`Handler::gave_up`]).
    ///
    /// [`Handler::gave_up`]: gantry_store::consumer::Handler::gave_up
    pub async fn fail_where_due<P: EventPayload>(
        &self,
        reply: &Reply<'_>,
        step: Step,
        stages: &[&str],
        reason: &str,
        failed: impl Fn(&str, String) -> P,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let plan = self.run_plan(reply.cause, reply.run).await?;
        let cue = reply.cause.name();
        let mut events = Vec::new();
        for stage in stages {
            let due = plan
                .iter()
                .find(|p| p.name == *stage)
                .is_some_and(|p| cue.is_some_and(|cue| begins_at(step, cue, &p.steps)));
            if due {
                tracing::warn!(run = reply.run, stage, %reason, "step failed");
                events.push(reply.event(&failed(stage, reason.to_owned())));
            }
        }
        Ok(reply.events(events))
    }

    /// Whether `step` of the cue's stage begins at `reply`'s cue, and with
    /// what: the pipeline as defined now and the stage. Not due when the cue
    /// names no stage, the stage is no longer defined, the stage's steps
    /// begin `step` at another event, or `step` verifies (smoke, perf) a
    /// rollback, which nothing waits for. A pipeline no longer defined gets
    /// [`WorkerContext::pipeline_for`]'s rule.
    pub async fn step_due<P: EventPayload>(
        &self,
        reply: &Reply<'_>,
        step: Step,
        failed: impl Fn(&str, String) -> P,
    ) -> Result<Due, HandlerError> {
        let (Some(cue), Some(stage)) = (reply.cause.name(), reply.cause.stage()) else {
            return Ok(Due::Not);
        };
        let pipeline = match self.pipeline_for(reply, step, &[stage], failed).await? {
            Found::Pipeline(p) => p,
            Found::Gone(results) => return Ok(Due::Gone(results)),
        };
        let Some(definition) = pipeline.stage(stage).cloned() else {
            return Ok(Due::Not);
        };
        if !step.begins_at(cue, &pipeline.steps(&definition))
            || (step.is_verification() && self.is_rollback(reply.run(), stage).await?)
        {
            return Ok(Due::Not);
        }
        Ok(Due::Step {
            pipeline,
            stage: Box::new(definition),
        })
    }

    /// Whether the current promotion of `stage` in `run` is a rollback (its
    /// latest `stage.started` says so): the verification steps (smoke,
    /// perf) skip it, as the conductor waits for neither.
    pub async fn is_rollback(&self, run: &str, stage: &str) -> Result<bool, HandlerError> {
        let events = self.store.read_run(run).await?;
        Ok(
            gantry_store::store::latest_for_stage::<StageStarted>(&events, stage)
                .is_some_and(|s| s.rollback),
        )
    }

    /// The stage plans of the run `cause` belongs to (the cue itself when
    /// it is the `run.started`).
    async fn run_plan(
        &self,
        cause: &CloudEvent,
        run: &str,
    ) -> Result<Vec<gantry_proto::StagePlan>, HandlerError> {
        if let Ok(started) = cause.decode::<RunStarted>() {
            return Ok(started.stages);
        }
        let events = self.store.read_run(run).await?;
        Ok(events
            .iter()
            .find_map(|r| r.event.decode::<RunStarted>().ok())
            .map(|s| s.stages)
            .unwrap_or_default())
    }
}

/// What [`WorkerContext::step_due`] found.
#[derive(Debug)]
pub enum Due {
    /// Do the step: the pipeline as defined now and the cue's stage.
    Step {
        pipeline: Box<Pipeline>,
        stage: Box<gantry_pipeline::Stage>,
    },
    /// The pipeline is no longer defined: record these results.
    Gone(Vec<NewEvents>),
    /// Nothing to do at this cue.
    Not,
}

/// What [`WorkerContext::pipeline_for`] found.
#[derive(Debug)]
pub enum Found {
    /// The pipeline as defined now: do the step.
    Pipeline(Box<Pipeline>),
    /// The pipeline is no longer defined: record these results (the
    /// step's `*.failed` where the run waits for it, else nothing).
    Gone(Vec<NewEvents>),
}

/// The reason recorded when the consumer runner gave up on a cue.
pub fn gave_up(error: &str) -> String {
    format!("could not be processed: {error}")
}

/// When the step that `cue` begins must be done: the cue's time plus the
/// step's timeout. A worker stops its work then; the conductor records the
/// step's failure (`timed out after ..`).
pub fn deadline(cue: &CloudEvent, timeout: std::time::Duration) -> tokio::time::Instant {
    let left = chrono::Duration::from_std(timeout)
        .ok()
        .and_then(|t| cue.time.checked_add_signed(t))
        .map(|end| (end - chrono::Utc::now()).to_std().unwrap_or_default())
        .unwrap_or(timeout);
    tokio::time::Instant::now() + left
}

/// The reason recorded when the pipeline is no longer defined.
pub fn no_longer_defined(pipeline: &str) -> String {
    format!("pipeline `{pipeline}` is no longer defined")
}

/// Whether `event` is the cue of `step` in a stage with `steps`: a gate at
/// the event that makes it possible (`run.started` for the package,
/// `package.built` for the image), a promotion step after the step before
/// it ([`Step::begins_at`]).
pub fn begins_at(step: Step, event: EventName, steps: &[Step]) -> bool {
    match step {
        Step::Package => event == EventName::RunStarted && steps.contains(&step),
        Step::Image => event == EventName::PackageBuilt && steps.contains(&step),
        _ => step.begins_at(event, steps),
    }
}

/// The payload of `event`; one that cannot be read is a permanent error
/// keeping the decoding error as its cause.
pub fn decode<P: EventPayload>(event: &CloudEvent) -> Result<P, HandlerError> {
    event.decode().map_err(|e| {
        HandlerError::permanent_from(format!("cannot read {} {}", event.ty, event.id), e)
    })
}

/// The run `event` belongs to; an event without one is a permanent error.
pub fn run_id(event: &CloudEvent) -> Result<&str, HandlerError> {
    event.runid.as_deref().ok_or_else(|| {
        HandlerError::permanent(format!(
            "{} without a run id",
            event.name().map_or(event.ty.as_str(), |n| n.as_str())
        ))
    })
}

/// A worker's answer to one event (its cue): result events caused by the
/// cue, recorded on the cue's run stream.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    service: &'static str,
    cause: &'a CloudEvent,
    run: &'a str,
}

impl<'a> Reply<'a> {
    /// `service` answering `cause`, of run `run`.
    pub fn new(service: &'static str, cause: &'a CloudEvent, run: &'a str) -> Self {
        Self {
            service,
            cause,
            run,
        }
    }

    /// `service` answering `cause`, of the run it names (a permanent error
    /// without one).
    pub fn to(service: &'static str, cause: &'a CloudEvent) -> Result<Self, HandlerError> {
        Ok(Self::new(service, cause, run_id(cause)?))
    }

    pub fn cause(&self) -> &'a CloudEvent {
        self.cause
    }

    pub fn run(&self) -> &'a str {
        self.run
    }

    /// One result event, caused by the cue.
    pub fn event<P: EventPayload>(&self, payload: &P) -> CloudEvent {
        CloudEvent::new(self.service, &self.cause.pipeline, Some(self.run), payload)
            .caused_by(self.cause)
    }

    /// `events` recorded on the run's stream (nothing when empty).
    pub fn events(&self, events: Vec<CloudEvent>) -> Vec<NewEvents> {
        if events.is_empty() {
            return Vec::new();
        }
        vec![NewEvents::new(
            run_stream(self.run),
            ExpectedVersion::Any,
            events,
        )]
    }

    /// One result, recorded on the run's stream.
    pub fn with<P: EventPayload>(&self, payload: &P) -> Vec<NewEvents> {
        self.events(vec![self.event(payload)])
    }
}
