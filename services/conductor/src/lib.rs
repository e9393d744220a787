//! The conductor: for every event that can change what happens next, fold
//! the pipeline's history, call [`gantry_decide::decide`], and append
//! its decisions.
//!
//! Two conductors must not both decide: decisions go to the stream
//! `conductor-<pipeline>` with the version read *before* the history, so a
//! conductor that decided on a stale history loses the append with a
//! conflict, and the runner gives it the event again; deciding is
//! idempotent, so the second attempt adds only what is still missing.
//! Time-driven changes (approval expiry, freeze windows, step deadlines:
//! a step past its deadline gets its `*.failed`) come from the
//! `next_wakeup` the decision function returns: one timer task sleeps until
//! the earliest and decides again then, with no polling loop. Timers live in
//! memory, so the timer task first decides once for every pipeline: that
//! re-arms every pending deadline from the log after a restart (and records
//! what fell due while no conductor ran), instead of waiting for the
//! pipeline's next event.
//!
//! Each pipeline's history is folded once and kept ([`Folded`]); for every
//! event only what was recorded since (log positions commit in order) is
//! read and folded, so a decision costs the same on a pipeline's first day
//! and after thousands of runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gantry_decide::{decide_folded, Folded};
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::runtime::Pipelines;
use gantry_runtime::worker::WorkerContext;
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::{EventStore, ExpectedVersion, NewEvents};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "conductor";

/// Every event that can change a decision.
const INPUTS: &[EventName] = &[
    EventName::RunStarted,
    EventName::PackageBuilt,
    EventName::PackageFailed,
    EventName::ImagePushed,
    EventName::ImageFailed,
    EventName::DeployCompleted,
    EventName::DeployFailed,
    EventName::ApisPromoted,
    EventName::ApisFailed,
    EventName::SmokePassed,
    EventName::SmokeFailed,
    EventName::PerfPassed,
    EventName::PerfFailed,
    EventName::ApprovalGranted,
    EventName::ApprovalRejected,
    EventName::RunCancelled,
    EventName::StagePaused,
    EventName::StageResumed,
];

pub fn decisions_stream(pipeline: &str) -> String {
    format!("conductor-{pipeline}")
}

#[derive(Clone)]
pub struct Conductor {
    store: EventStore,
    pipelines: Pipelines,
    timers: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>,
    timer_changed: Arc<Notify>,
    /// Per pipeline: its history folded up to a log position.
    folds: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Fold>>>>>,
}

/// A pipeline's history folded up to log position `through`.
struct Fold {
    folded: Folded,
    through: i64,
}

impl Conductor {
    /// A conductor deciding with `ctx`'s store and pipelines. A pipeline
    /// that is no longer defined gets no decisions: its runs end with the
    /// `*.failed` the workers record for it.
    pub fn new(ctx: &WorkerContext) -> Self {
        Self {
            store: ctx.store.clone(),
            pipelines: ctx.pipelines.clone(),
            timers: Default::default(),
            timer_changed: Arc::new(Notify::new()),
            folds: Default::default(),
        }
    }

    fn fold_of(&self, pipeline: &str) -> Arc<tokio::sync::Mutex<Fold>> {
        let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
        folds
            .entry(pipeline.to_owned())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Fold {
                    folded: Folded::new(pipeline),
                    through: 0,
                }))
            })
            .clone()
    }

    /// What the conductor would append for `pipeline` now, on top of the
    /// version of its decision stream it was computed from.
    pub async fn decide_for(&self, pipeline_name: &str) -> Result<Option<NewEvents>, HandlerError> {
        let Some(pipeline) = self.pipelines.get().get(pipeline_name).cloned() else {
            return Ok(None);
        };
        let stream = decisions_stream(pipeline_name);
        // The version first: a decision appended after this read makes our
        // append conflict instead of duplicating it.
        let version = self.store.stream_version(&stream).await?;
        // One decision at a time per pipeline in this conductor: the fold
        // moves forward in log order.
        let fold = self.fold_of(pipeline_name);
        let mut fold = fold.lock().await;
        for recorded in self
            .store
            .read_pipeline_after(pipeline_name, fold.through)
            .await?
        {
            fold.folded.apply(&recorded.event);
            fold.through = recorded.position;
        }
        let now = Utc::now();
        let outcome = decide_folded(&pipeline, now, &fold.folded);
        drop(fold);
        self.set_timer(pipeline_name, outcome.next_wakeup);
        if outcome.decisions.is_empty() {
            return Ok(None);
        }
        let events: Vec<CloudEvent> = outcome
            .decisions
            .iter()
            .map(|d| d.into_event(pipeline_name))
            .collect();
        for e in &events {
            tracing::info!(pipeline = pipeline_name, run = e.runid.as_deref().unwrap_or(""), stage = e.stage().unwrap_or(""), ty = %e.ty, "decided");
        }
        Ok(Some(NewEvents::new(
            stream,
            ExpectedVersion::Exact(version),
            events,
        )))
    }

    fn set_timer(&self, pipeline: &str, at: Option<DateTime<Utc>>) {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match at {
            Some(at) => timers.insert(pipeline.to_owned(), at) != Some(at),
            None => timers.remove(pipeline).is_some(),
        };
        drop(timers);
        if changed {
            self.timer_changed.notify_one();
        }
    }

    /// Decides once for every pipeline in force and records the decisions:
    /// arms each pipeline's timer from its history. Called at start.
    pub async fn rearm(&self) {
        let names: Vec<String> = self
            .pipelines
            .get()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        for name in &names {
            self.decide_and_record(name).await;
        }
        tracing::info!(
            pipelines = names.len(),
            "conductor timers armed from the log"
        );
    }

    /// Re-arms every timer from the log ([`Conductor::rearm`]), then decides
    /// again for pipelines whose wake-up time has come. Runs until `shutdown`.
    pub async fn run_timers(self, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.rearm() => {}
        }
        loop {
            let next = {
                let timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
                timers
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(p, at)| (p.clone(), *at))
            };
            let sleep = match &next {
                Some((_, at)) => (*at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.timer_changed.notified() => continue,
                _ = tokio::time::sleep(sleep) => {}
            }
            let Some((pipeline, at)) = next else { continue };
            {
                let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
                if timers.get(&pipeline) == Some(&at) {
                    timers.remove(&pipeline);
                }
            }
            self.decide_and_record(&pipeline).await;
        }
    }

    /// Decides for `pipeline` outside of any event and appends the result.
    async fn decide_and_record(&self, pipeline: &str) {
        // Conflicts mean another conductor decided meanwhile: decide again.
        for _ in 0..5 {
            match self.decide_for(pipeline).await {
                Ok(Some(batch)) => match self.store.append_many(vec![batch]).await {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, pipeline, "timed decision not recorded");
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %gantry_store::consumer::chain(&e), pipeline, "timed decision failed");
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Handler for Conductor {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        INPUTS
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        Ok(self
            .decide_for(&event.pipeline)
            .await?
            .into_iter()
            .collect())
    }

    // `gave_up` records nothing: the conductor answers no step, and the
    // pipeline's next event or timer decides again from its whole history.
}

/// The worker, for registering with a runtime (`gantry up` and `gantry
/// serve conductor` keep the [`Conductor`] itself: its timers run beside it).
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(Conductor::new(ctx))
}
