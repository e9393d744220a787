//! Promotion decisions as a pure function (DESIGN.md 2.3).
//!
//! [`decide`] takes a pipeline definition, the current time and the recorded
//! events of *all* runs of that pipeline (stage occupancy and queues span
//! runs), folds them into a state and returns what should be appended next:
//! a list of [`Decision`]s (each one event, see [`Decision::into_event`]) and
//! the time at which the answer could change without any new event
//! ([`Outcome::next_wakeup`]: an approval lapsing, a freeze window beginning
//! or ending for a run ready to enter the stage).
//! It reads no clock and does no I/O; the conductor folds, calls, appends.
//!
//! # What a run's stage goes through
//!
//! Each run follows the stage plan frozen in its `run.started` (order,
//! `after`, steps). A stage's steps run in the order of
//! [`Step::ORDER`](gantry_proto::Step::ORDER): the gates `package`, `image`
//! and `approval` (rules 2 and 6 below), then, after `stage.started`, the
//! promotion's steps (*In the stage*). Stage *settings* that are operational — approval policy,
//! freeze windows, queue policy — are read from the current [`Pipeline`]
//! definition by stage name (a stage no longer defined gets the defaults: no
//! freeze, `latest`, and, if its plan has an `approval` step, one approval).
//! A stage needs approval when its plan has the `approval` step *or* the
//! current definition has an `approval` (the stricter of the two wins).
//!
//! For a run `R` and a stage `S` of its plan that `R` has not started, the
//! gates are checked in this order; the first unmet gate is why it waits:
//!
//! 1. **`after`**: the stage named by `after` must have `env.promoted` this
//!    run. Until then nothing is said about `S` (it is simply pending).
//!    An `after` naming a stage missing from the plan fails the run.
//! 2. **dependencies**: `package.built` for `S` (always) and `image.pushed`
//!    for `S` (when the plan has the `image` step). Waiting here is
//!    recorded once as `stage.queued` reason `dependencies`.
//! 3. **supersession** (`queue: latest` only): `R` is *ready* for `S` once 1
//!    and 2 hold. A ready run is superseded (`run.superseded`, `by_run` the
//!    newest such run) when a run that started later (by `run.started` log
//!    order) has already promoted `S`, or, having no reason to fail, is
//!    promoting into `S` or is ready for it too: only the latest commit
//!    waits, and an older commit never overwrites a newer one. Runs that
//!    started `S` are never superseded.
//! 4. **pause** (stop the line): while the stage is paused (its last
//!    `stage.paused` has no `stage.resumed` after it; these events have no
//!    run), `stage.queued` reason `paused`, `by` who paused it and `detail`
//!    `stage S paused by U: why`. Nothing else is asked for while paused (no
//!    approval request); a pause never interrupts a promotion in progress
//!    (its steps, and a rollback after a failed step, go on) and never
//!    holds a manual rollback run (asking for it is the operator's decision,
//!    as with freezes). Supersession (rule 3) still applies, so under
//!    `latest` only the newest commit waits for the resume.
//! 5. **freeze**: if `now` falls in one of `S`'s windows `[from, to)`,
//!    `stage.queued` reason `freeze`, `until` the end of the window (of the
//!    whole frozen span, when windows touch or overlap). Nothing else is
//!    asked for while frozen (no approval request). Freezes never interrupt
//!    a promotion in progress and never hold a rollback.
//! 6. **approval**: `approval.requested` once per run and stage, with
//!    `expires_at = now + expires`. It is satisfied by the request's
//!    `required` *distinct* users (case-insensitive) in `approval.granted`
//!    events (for that run and stage) recorded before `expires_at`; when
//!    `allow_self` is false a grant whose `user` equals the run author's
//!    `username` or `email` (ASCII case-insensitive; author from
//!    `run.started`, else `commit.received`) does not count. Whether a user
//!    belongs to the allowed groups is checked by whoever records the grant
//!    (the API knows the tokens' groups); this function only sees `user`.
//!    Any `approval.rejected` fails the run. A request still unsatisfied at
//!    `expires_at` fails the run (`approval for S expired ...`): it is not
//!    re-requested, a new run (or trigger) is the way to try again. Once
//!    satisfied, an approval does not lapse while the run waits in a queue.
//!    When a run comes back to waiting for approvals after having waited for
//!    something else, `stage.queued` reason `approval` says so.
//! 7. **queue**: one promotion per stage at a time. The stage is busy while
//!    a run has `stage.started` it and has neither promoted it nor finished
//!    rolling it back (and is not terminal). Ready runs are ordered by
//!    `run.started` order; only the first may start, when the stage is free.
//!    Others wait with `stage.queued` reason `queue`, `behind` the ready run
//!    just ahead of them, or the run in the stage for the first one. With
//!    `fifo` the first ready run waits for its own approval or freeze and
//!    the ones behind it keep waiting too: no overtaking among ready runs (a
//!    run not yet ready — packages missing, earlier stage not promoted — is
//!    not in the queue and does not hold anyone back). With `latest` there is
//!    only ever one ready run per stage (rule 3).
//! 8. **start**: `stage.started` with the run's commit, image
//!    (`repository:tag`) and image digest.
//!
//! A `stage.queued` is emitted only when the reason, `behind` or `until`
//! differs from the last one recorded for that run and stage.
//!
//! # In the stage
//!
//! After `stage.started` the workers act and record `deploy.completed` /
//! `deploy.failed` (a readiness failure is a `deploy.failed`; the plan's
//! `ready` step has no event of its own), `apis.promoted` / `apis.failed`,
//! `smoke.passed` / `smoke.failed`, for the steps `deploy`, `apimanager`,
//! `smoke` present in the plan, each after the one before it
//! ([`Step::starts_after`](gantry_proto::Step::starts_after)). When every
//! present step succeeded:
//! `env.promoted`. The first failure ends the attempt (later results of that
//! attempt are ignored); it is rolled back:
//!
//! - if the stage ran an earlier release (the last `env.promoted`, or the
//!   target of the last `stage.rolled_back`) and the plan has `deploy` or
//!   `apimanager`, a rollback promotion starts: `stage.started` with
//!   `rollback: true` and the earlier release's commit, image and digest.
//!   Step results recorded after it belong to the rollback; when `deploy`
//!   and `apimanager` (those in the plan; smoke results are ignored) have
//!   succeeded, `stage.rolled_back` names the earlier run and commit. If the
//!   rollback itself fails, no `stage.rolled_back` is recorded, the stage is
//!   released, the run fails with both reasons, and the stage's known release
//!   stays the earlier one (the target for the next rollback).
//! - otherwise (nothing deployed before, or nothing this stage changes)
//!   `stage.rolled_back` is recorded at once, with `to_run`/`to_commit` of
//!   the earlier release if any, none otherwise.
//!
//! The stage stays busy until then, so no other run deploys over a rollback.
//!
//! # Deadlines
//!
//! Every step waiting for a worker has a deadline: the stage's
//! `timeouts.<step>` (or the default, [`gantry_pipeline::Timeouts`]) after
//! the event it began at: `run.started` for `package`, `package.built` for
//! `image`, `stage.started` for the promotion's (or rollback's) first step
//! and each success for the next (`deploy`'s includes `ready` when the plan
//! has it). At the deadline, without a result, [`Decision::TimeOut`]
//! records the step's `*.failed` (`timed out after <duration>`, caused by
//! that event), which then counts like a worker's failure. Deadlines are
//! wake-ups ([`Outcome::next_wakeup`]). A result that comes after its
//! step failed changes nothing: a late `package.built` / `image.pushed` is
//! not the stage's, and a result caused by an event of the failed
//! promotion is never counted for the rollback that followed (a result
//! without a known cause counts for the latest attempt).
//!
//! # How runs end
//!
//! A run *holds* a stage while it is promoting into it or rolling it back.
//! Reasons to fail (a `package.failed` / `image.failed` for a stage not yet
//! started, a rejection, an expired approval, a failed step) and a
//! supersession take effect only when the run holds no stage: a promotion in
//! progress in another stage (plans may branch with `after`) runs to its end
//! first, but the run starts nothing new in the meantime. Then, in this order:
//! `run.failed` (stage and reason of the first failure in log order, expiry
//! last), `run.superseded`, or `run.succeeded` once every planned stage has
//! `env.promoted` this run (a plan with no stages succeeds at once).
//! `run.cancelled` is recorded by others; it ends the run at once and
//! releases any stage it held (a deploy already under way is not undone:
//! workers should check the run before acting). Terminal runs get no more
//! decisions, and events recorded for them later are ignored for decisions.
//!
//! # Idempotence
//!
//! [`decide`] applies each decision to its own state before looking for the
//! next one, until nothing is left to do. So calling it again on the same
//! history returns the same decisions, and calling it on the history with
//! those decisions appended returns none.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gantry_proto::events as ev;
use gantry_proto::{CloudEvent, EventName, EventPayload, Step};
use uuid::Uuid;

use gantry_pipeline::{format_duration, Pipeline};

mod engine;
mod state;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// The service name decisions are recorded under (`source: gantry/conductor`).
pub const SERVICE: &str = "conductor";

/// Why a promotion into a stage waits (`stage.queued` `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// The stage's package or image is not there yet.
    Dependencies,
    /// A freeze window holds the stage; `until` says when it ends.
    Freeze,
    /// Someone paused the stage (stop the line); `by` and `detail` say who
    /// and why.
    Paused,
    /// Approvals are still missing.
    Approval,
    /// Another run is ahead in the stage's queue; `behind` names it.
    Queue,
}

impl WaitReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            WaitReason::Dependencies => "dependencies",
            WaitReason::Freeze => "freeze",
            WaitReason::Paused => "paused",
            WaitReason::Approval => "approval",
            WaitReason::Queue => "queue",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dependencies" => Some(WaitReason::Dependencies),
            "freeze" => Some(WaitReason::Freeze),
            "paused" => Some(WaitReason::Paused),
            "approval" => Some(WaitReason::Approval),
            "queue" => Some(WaitReason::Queue),
            _ => None,
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event the conductor should append. Every variant is scoped to `run`
/// (the event's subject).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// `stage.queued`: the promotion of `run` into `stage` waits.
    Queue {
        run: String,
        stage: String,
        reason: WaitReason,
        behind: Option<String>,
        until: Option<DateTime<Utc>>,
        /// Who paused the stage (reason `paused`).
        by: Option<String>,
        /// Why, in words, when the reason alone does not say it.
        detail: Option<String>,
    },
    /// `approval.requested`.
    RequestApproval {
        run: String,
        stage: String,
        required: u32,
        approvers: Vec<String>,
        expires_at: Option<DateTime<Utc>>,
    },
    /// `stage.started`: deploy `commit` (its `image` and `digest`) into
    /// `stage`. With `rollback`, the commit is the stage's earlier release.
    Start {
        run: String,
        stage: String,
        commit: String,
        image: Option<String>,
        digest: Option<String>,
        rollback: bool,
    },
    /// `env.promoted`: `stage` now runs this run's release.
    Promote {
        run: String,
        stage: String,
        commit: String,
        image: Option<String>,
        digest: Option<String>,
    },
    /// `stage.rolled_back`: the stage runs `to_run`'s release again (none:
    /// there was no earlier release).
    RollBack {
        run: String,
        stage: String,
        reason: String,
        to_run: Option<String>,
        to_commit: Option<String>,
    },
    /// `run.succeeded`.
    Succeed { run: String },
    /// `run.failed`.
    Fail {
        run: String,
        stage: Option<String>,
        reason: String,
    },
    /// `run.superseded`: `by_run` took this run's place in `stage`.
    Supersede {
        run: String,
        stage: String,
        by_run: String,
    },
    /// The step's `*.failed` (`package.failed`, `image.failed`,
    /// `deploy.failed`, `apis.failed`, `smoke.failed`) with `reason: timed
    /// out after <after>`: its deadline passed without a result. `cause` is
    /// the event that began the step (the worker's cue), recorded as the
    /// failure's `causationid`.
    TimeOut {
        run: String,
        stage: String,
        step: Step,
        after: Duration,
        cause: Option<Uuid>,
    },
}

/// The reason a step's failure gives when its deadline passed.
pub fn timed_out(after: Duration) -> String {
    format!("timed out after {}", format_duration(after))
}

/// What [`decide`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Events to append, in this order.
    pub decisions: Vec<Decision>,
    /// The earliest future time at which, without any new event, decisions
    /// could change (an approval request lapses, a freeze window of a stage
    /// that a run is ready for begins or ends): call [`decide`] again then.
    /// Before it, with no new event, [`decide`] returns nothing.
    pub next_wakeup: Option<DateTime<Utc>>,
}

/// Decides what happens next in `pipeline`, given every recorded event of
/// its runs in log order (`history`; events of other pipelines are ignored)
/// and the current time. Pure: see the module documentation for the rules.
pub fn decide(pipeline: &Pipeline, now: DateTime<Utc>, history: &[CloudEvent]) -> Outcome {
    engine::decide(pipeline, now, history)
}

/// A pipeline's history folded so far. A long-lived service keeps one per
/// pipeline, folds only the events recorded since, and decides with
/// [`decide_folded`]: the same answer as [`decide`] on the whole history,
/// without reading and folding it again for every event.
#[derive(Debug, Clone)]
pub struct Folded {
    pipeline: String,
    state: state::State,
}

impl Folded {
    pub fn new(pipeline: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            state: state::State::default(),
        }
    }

    /// Folds the next event of the history (events of other pipelines, and
    /// events without a run, are skipped as [`decide`] skips them).
    pub fn apply(&mut self, event: &CloudEvent) {
        self.state.apply_event(&self.pipeline, event);
    }
}

/// [`decide`] from a folded history: `folded` must hold the same events, in
/// the same order, as the history `decide` would be given.
pub fn decide_folded(pipeline: &Pipeline, now: DateTime<Utc>, folded: &Folded) -> Outcome {
    debug_assert_eq!(pipeline.name, folded.pipeline, "folded another pipeline");
    engine::decide_state(pipeline, now, folded.state.clone())
}

/// The earlier release a manual rollback of a stage re-promotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTarget {
    pub run: String,
    pub commit: String,
    pub package: String,
    pub image: Option<String>,
    pub digest: Option<String>,
    /// A rollback run of this stage that is still going, if any.
    pub pending: Option<String>,
}

/// Why a stage cannot be rolled back as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("pipeline `{pipeline}` has no stage `{stage}`")]
    UnknownStage { pipeline: String, stage: String },
    #[error("stage `{stage}` has not run an earlier release to go back to")]
    NoEarlierRelease { stage: String },
    #[error("run {run} never promoted stage `{stage}`; pick a run that did (gantry runs --pipeline ...)")]
    NotAReleaseOf { run: String, stage: String },
    #[error("stage `{stage}` already runs the release of run {run}")]
    AlreadyRunning { run: String, stage: String },
}

/// The release a manual rollback of `stage` goes back to: the release of
/// `to` (a run that promoted the stage), or by default the last release the
/// stage ran before the one it runs now.
pub fn rollback_target(
    pipeline: &Pipeline,
    history: &[CloudEvent],
    stage: &str,
    to: Option<&str>,
) -> Result<RollbackTarget, RollbackError> {
    engine::rollback_target(pipeline, history, stage, to)
}

impl Decision {
    /// The run the decision is about (the event's subject).
    pub fn run(&self) -> &str {
        match self {
            Decision::Queue { run, .. }
            | Decision::RequestApproval { run, .. }
            | Decision::Start { run, .. }
            | Decision::Promote { run, .. }
            | Decision::RollBack { run, .. }
            | Decision::Succeed { run }
            | Decision::Fail { run, .. }
            | Decision::Supersede { run, .. }
            | Decision::TimeOut { run, .. } => run,
        }
    }

    /// The stage the decision is about, if any.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Decision::Queue { stage, .. }
            | Decision::RequestApproval { stage, .. }
            | Decision::Start { stage, .. }
            | Decision::Promote { stage, .. }
            | Decision::RollBack { stage, .. }
            | Decision::Supersede { stage, .. }
            | Decision::TimeOut { stage, .. } => Some(stage),
            Decision::Fail { stage, .. } => stage.as_deref(),
            Decision::Succeed { .. } => None,
        }
    }

    /// The event this decision is recorded as.
    pub fn name(&self) -> EventName {
        match self {
            Decision::Queue { .. } => EventName::StageQueued,
            Decision::RequestApproval { .. } => EventName::ApprovalRequested,
            Decision::Start { .. } => EventName::StageStarted,
            Decision::Promote { .. } => EventName::EnvPromoted,
            Decision::RollBack { .. } => EventName::StageRolledBack,
            Decision::Succeed { .. } => EventName::RunSucceeded,
            Decision::Fail { .. } => EventName::RunFailed,
            Decision::Supersede { .. } => EventName::RunSuperseded,
            Decision::TimeOut { step, .. } => match step {
                Step::Package => EventName::PackageFailed,
                Step::Image => EventName::ImageFailed,
                Step::ApiManager => EventName::ApisFailed,
                Step::Smoke => EventName::SmokeFailed,
                Step::Perf => EventName::PerfFailed,
                // `ready` is part of the deploy's answer; `approval` has
                // its own expiry and never times out here.
                Step::Deploy | Step::Ready | Step::Approval => EventName::DeployFailed,
            },
        }
    }

    /// The event that caused the decision, when it is not the history as a
    /// whole (a timed-out step's cue).
    pub fn cause(&self) -> Option<Uuid> {
        match self {
            Decision::TimeOut { cause, .. } => *cause,
            _ => None,
        }
    }

    /// Whether the decision ends its run.
    pub fn is_terminal(&self) -> bool {
        self.name().is_terminal()
    }

    /// The event's `data`.
    pub fn data(&self) -> serde_json::Value {
        self.encode(&DataOnly)
    }

    /// The event to append: source `gantry/conductor`, subject and `runid`
    /// the run, a fresh id and the current time (set `causationid` with
    /// [`CloudEvent::caused_by`], `id` with [`CloudEvent::with_id`] as needed).
    pub fn into_event(&self, pipeline: &str) -> CloudEvent {
        let mut event = self.encode(&ToEvent {
            pipeline,
            run: self.run(),
        });
        event.causationid = self.cause();
        event
    }

    fn encode<E: Encoder>(&self, e: &E) -> E::Out {
        match self {
            Decision::Queue {
                stage,
                reason,
                behind,
                until,
                by,
                detail,
                ..
            } => e.encode(&ev::StageQueued {
                stage: stage.clone(),
                reason: reason.as_str().to_owned(),
                behind: behind.clone(),
                until: *until,
                by: by.clone(),
                detail: detail.clone(),
            }),
            Decision::RequestApproval {
                stage,
                required,
                approvers,
                expires_at,
                ..
            } => e.encode(&ev::ApprovalRequested {
                stage: stage.clone(),
                required: *required,
                approvers: approvers.clone(),
                expires_at: *expires_at,
            }),
            Decision::Start {
                stage,
                commit,
                image,
                digest,
                rollback,
                ..
            } => e.encode(&ev::StageStarted {
                stage: stage.clone(),
                commit: commit.clone(),
                image: image.clone(),
                digest: digest.clone(),
                rollback: *rollback,
            }),
            Decision::Promote {
                stage,
                commit,
                image,
                digest,
                ..
            } => e.encode(&ev::EnvPromoted {
                stage: stage.clone(),
                commit: commit.clone(),
                image: image.clone(),
                digest: digest.clone(),
            }),
            Decision::RollBack {
                stage,
                reason,
                to_run,
                to_commit,
                ..
            } => e.encode(&ev::StageRolledBack {
                stage: stage.clone(),
                reason: reason.clone(),
                to_run: to_run.clone(),
                to_commit: to_commit.clone(),
            }),
            Decision::Succeed { .. } => e.encode(&ev::RunSucceeded {}),
            Decision::Fail { stage, reason, .. } => e.encode(&ev::RunFailed {
                stage: stage.clone(),
                reason: reason.clone(),
            }),
            Decision::Supersede { stage, by_run, .. } => e.encode(&ev::RunSuperseded {
                stage: stage.clone(),
                by_run: by_run.clone(),
            }),
            Decision::TimeOut { stage, after, .. } => {
                let stage = stage.clone();
                let reason = timed_out(*after);
                match self.name() {
                    EventName::PackageFailed => e.encode(&ev::PackageFailed {
                        stage,
                        reason,
                        diagnostics: Vec::new(),
                    }),
                    EventName::ImageFailed => e.encode(&ev::ImageFailed { stage, reason }),
                    EventName::ApisFailed => e.encode(&ev::ApisFailed {
                        stage,
                        reason,
                        breaking_fields: Vec::new(),
                    }),
                    // `smoke.failed` has no reason of its own: one check
                    // that never ran says why (as for a pipeline gone).
                    EventName::SmokeFailed => e.encode(&ev::SmokeFailed {
                        stage,
                        checks: vec![ev::CheckResult {
                            name: "deadline".to_owned(),
                            passed: false,
                            status: None,
                            duration_ms: 0,
                            attempts: 0,
                            message: Some(reason),
                        }],
                    }),
                    EventName::PerfFailed => e.encode(&ev::PerfFailed {
                        stage,
                        figures: ev::PerfFigures::default(),
                        reason,
                        scenarios: Vec::new(),
                    }),
                    _ => e.encode(&ev::DeployFailed {
                        stage,
                        reason,
                        output: None,
                    }),
                }
            }
        }
    }
}

/// Turns a typed payload into something (its JSON, a whole event).
trait Encoder {
    type Out;
    fn encode<P: EventPayload>(&self, payload: &P) -> Self::Out;
}

struct DataOnly;

impl Encoder for DataOnly {
    type Out = serde_json::Value;
    fn encode<P: EventPayload>(&self, payload: &P) -> serde_json::Value {
        serde_json::to_value(payload).expect("event payloads are plain data and always serialize")
    }
}

struct ToEvent<'a> {
    pipeline: &'a str,
    run: &'a str,
}

impl Encoder for ToEvent<'_> {
    type Out = CloudEvent;
    fn encode<P: EventPayload>(&self, payload: &P) -> CloudEvent {
        CloudEvent::new(SERVICE, self.pipeline, Some(self.run), payload)
    }
}
