//! The fold: a pipeline's events into the state decisions are made from.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gantry_proto::events as ev;
use gantry_proto::events::{Person, StagePlan};
use gantry_proto::{CloudEvent, EventName, RunStatus, Step};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use super::WaitReason;

/// One promotion (or rollback) into a stage: the steps that have succeeded
/// so far (those with results of their own, [`Step::results`]), and when
/// and by which event the step in progress began (its deadline counts
/// from then).
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    pub done: Vec<Step>,
    /// When the step in progress began: `stage.started`, then each success.
    pub since: DateTime<Utc>,
    /// The event that began it (the cue of the worker doing it).
    pub cue: Option<Uuid>,
    /// Every event of this attempt that a worker answers (`stage.started`
    /// and each success): a result caused by one of them belongs here.
    pub ids: Vec<Uuid>,
}

impl Attempt {
    pub fn new(since: DateTime<Utc>, id: Option<Uuid>) -> Self {
        Self {
            done: Vec::new(),
            since,
            cue: id,
            ids: id.into_iter().collect(),
        }
    }

    pub fn succeeded(&self, step: Step) -> bool {
        self.done.contains(&step)
    }

    fn mark(&mut self, step: Step, at: DateTime<Utc>, id: Option<Uuid>) {
        if !self.succeeded(step) {
            self.done.push(step);
            self.since = at;
            self.cue = id;
            self.ids.extend(id);
        }
    }

    /// Whether a result caused by `cause` answers this attempt.
    fn caused(&self, cause: Option<Uuid>) -> bool {
        cause.is_some_and(|c| self.ids.contains(&c))
    }
}

/// What a stage runs: the release a run promoted.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Release {
    pub run: String,
    pub commit: String,
    /// The stage's package digest, when the fold saw it.
    pub package: Option<String>,
    pub image: Option<String>,
    pub digest: Option<String>,
}

/// Why a promotion waits, as last recorded (`stage.queued` or `approval.requested`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Wait {
    pub reason: Option<WaitReason>,
    pub behind: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub by: Option<String>,
    pub detail: Option<String>,
}

impl Wait {
    pub fn new(reason: WaitReason, behind: Option<String>, until: Option<DateTime<Utc>>) -> Self {
        Self {
            reason: Some(reason),
            behind,
            until,
            by: None,
            detail: None,
        }
    }

    /// Waiting for `stage` to be resumed.
    pub fn paused(stage: &str, pause: &Pause) -> Self {
        Self {
            by: Some(pause.user.clone()),
            detail: Some(format!(
                "stage {stage} paused by {}: {}",
                pause.user, pause.reason
            )),
            ..Self::new(WaitReason::Paused, None, None)
        }
    }
}

/// A stage stopped by `stage.paused` (stop the line).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pause {
    pub user: String,
    pub reason: String,
}

/// A pending `approval.requested`.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub required: u32,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One stage of one run.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    pub package: Option<String>,
    /// A `package.failed` was recorded first: a later `package.built` (a
    /// late answer after the deadline) does not count.
    pub package_failed: bool,
    /// When and by which event (`package.built`) the image step began.
    pub image_since: Option<(DateTime<Utc>, Option<Uuid>)>,
    /// `repository:tag` and manifest digest.
    pub image: Option<(String, String)>,
    pub image_failed: bool,
    pub request: Option<Request>,
    /// `(user, recorded at)` of every `approval.granted`.
    pub grants: Vec<(String, DateTime<Utc>)>,
    pub last_wait: Option<Wait>,
    /// The promotion, once `stage.started`.
    pub forward: Option<Attempt>,
    /// Why the promotion failed (its first failed step).
    pub failure: Option<String>,
    /// The rollback promotion, once `stage.started` with `rollback`.
    pub rollback: Option<Attempt>,
    pub rollback_failure: Option<String>,
    pub promoted: bool,
    pub rolled_back: bool,
}

impl Progress {
    /// Whether this run is promoting into (or rolling back) the stage.
    pub fn occupies(&self) -> bool {
        self.forward.is_some()
            && !self.promoted
            && !self.rolled_back
            && self.rollback_failure.is_none()
    }
}

/// A reason for a run to fail, recorded in the log.
#[derive(Debug, Clone)]
pub(super) struct Cause {
    pub stage: Option<String>,
    pub reason: String,
}

/// One run.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub id: String,
    /// Position of its `run.started` among the folded events: runs are
    /// ordered by it (older first).
    pub ordinal: u64,
    /// When `run.started` was recorded, and its id: packaging begins there.
    pub started_at: DateTime<Utc>,
    pub started_id: Option<Uuid>,
    pub commit: String,
    /// Everyone who counts as an author (commit author and committer,
    /// pusher, manual triggerer): none of them may approve under
    /// `allow_self: false`.
    pub authors: Vec<Person>,
    pub plan: Vec<StagePlan>,
    pub progress: Vec<Progress>,
    pub status: RunStatus,
    pub causes: Vec<Cause>,
    /// A manual rollback: the earlier release this run re-promotes.
    pub rollback: Option<ev::RollbackOf>,
}

impl Run {
    pub fn running(&self) -> bool {
        self.status == RunStatus::Running
    }

    pub fn stage_index(&self, stage: &str) -> Option<usize> {
        self.plan.iter().position(|s| s.name == stage)
    }

    pub fn has_step(&self, i: usize, step: Step) -> bool {
        self.plan[i].has(step)
    }

    /// Whether the run is promoting into or rolling back some stage.
    pub fn holds_stage(&self) -> bool {
        self.running() && self.progress.iter().any(Progress::occupies)
    }

    /// Whether `user` is one of the run's authors (forge username or email).
    pub fn is_author(&self, user: &str) -> bool {
        self.authors.iter().any(|a| a.is(user))
    }
}

/// One stage of the pipeline, across runs.
#[derive(Debug, Clone, Default)]
pub(super) struct StageState {
    /// What the stage runs now, as far as Gantry knows.
    pub current: Option<Release>,
    /// Every release promoted into the stage, by run.
    pub releases: HashMap<String, Release>,
    /// The latest run (by ordinal) that promoted the stage.
    pub newest_promoted: Option<(u64, String)>,
    /// Every release the stage ran, in the order it began to run them.
    pub history: Vec<Release>,
    /// Set while the stage is paused.
    pub paused: Option<Pause>,
}

/// When an event was recorded, its id and the event that caused it (none
/// for a decision applied while deciding, before it has an id).
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub time: DateTime<Utc>,
    pub id: Option<Uuid>,
    pub cause: Option<Uuid>,
}

/// Everything decisions depend on.
#[derive(Debug, Clone, Default)]
pub(super) struct State {
    /// In `run.started` order.
    pub runs: Vec<Run>,
    index: HashMap<String, usize>,
    authors: HashMap<String, Person>,
    pub stages: HashMap<String, StageState>,
    next_ordinal: u64,
}

fn decode<P: DeserializeOwned>(data: &Value) -> Option<P> {
    serde_json::from_value(data.clone()).ok()
}

impl State {
    /// Folds `history`, skipping events of other pipelines, events without a
    /// run, and events whose data does not match their type.
    pub fn fold(pipeline: &str, history: &[CloudEvent]) -> Self {
        let mut state = State::default();
        for event in history {
            state.apply_event(pipeline, event);
        }
        state
    }

    /// Folds one more event of the history (see [`State::fold`]).
    pub fn apply_event(&mut self, pipeline: &str, event: &CloudEvent) {
        if event.pipeline != pipeline {
            return;
        }
        let Some(name) = event.name() else {
            return;
        };
        // Pauses belong to a stage, not to a run.
        if matches!(name, EventName::StagePaused | EventName::StageResumed) {
            self.apply_pause(name, &event.data);
            return;
        }
        let Some(run) = event.runid.as_deref().or(event.subject.as_deref()) else {
            return;
        };
        let meta = Meta {
            time: event.time,
            id: Some(event.id),
            cause: event.causationid,
        };
        self.apply(run, name, &event.data, meta);
    }

    /// `stage.paused` / `stage.resumed`: the stage stops or goes on.
    pub fn apply_pause(&mut self, name: EventName, data: &Value) {
        match name {
            EventName::StagePaused => {
                if let Some(d) = decode::<ev::StagePaused>(data) {
                    self.stages.entry(d.stage).or_default().paused = Some(Pause {
                        user: d.user,
                        reason: d.reason,
                    });
                }
            }
            EventName::StageResumed => {
                if let Some(d) = decode::<ev::StageResumed>(data) {
                    self.stages.entry(d.stage).or_default().paused = None;
                }
            }
            _ => {}
        }
    }

    /// Applies one event of `run_id`.
    pub fn apply(&mut self, run_id: &str, name: EventName, data: &Value, meta: Meta) {
        let time = meta.time;
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        match name {
            EventName::CommitReceived => {
                if let Some(author) = decode::<ev::CommitReceived>(data).and_then(|d| d.author) {
                    self.authors.insert(run_id.to_owned(), author);
                }
                return;
            }
            EventName::RunStarted => {
                if self.index.contains_key(run_id) {
                    return;
                }
                let Some(d) = decode::<ev::RunStarted>(data) else {
                    return;
                };
                let mut authors = d.authors;
                if let Some(a) = d.author.or_else(|| self.authors.get(run_id).cloned()) {
                    if !authors.contains(&a) {
                        authors.insert(0, a);
                    }
                }
                let mut progress = vec![Progress::default(); d.stages.len()];
                // A rollback run brings the earlier release's package and
                // image with it: nothing is built again.
                if let Some(rb) = &d.rollback {
                    if let Some(i) = d.stages.iter().position(|s| s.name == rb.stage) {
                        progress[i].package = Some(rb.package.clone());
                        progress[i].image = rb.image.clone().zip(rb.digest.clone());
                    }
                }
                self.index.insert(run_id.to_owned(), self.runs.len());
                self.runs.push(Run {
                    id: run_id.to_owned(),
                    ordinal,
                    started_at: time,
                    started_id: meta.id,
                    commit: d.commit,
                    authors,
                    progress,
                    plan: d.stages,
                    status: RunStatus::Running,
                    causes: Vec::new(),
                    rollback: d.rollback,
                });
                return;
            }
            _ => {}
        }
        let Some(&idx) = self.index.get(run_id) else {
            return;
        };
        if let Some(status) = RunStatus::after(name) {
            let run = &mut self.runs[idx];
            if run.running() {
                run.status = status;
            }
            return;
        }
        let Some(stage) = data.get("stage").and_then(Value::as_str) else {
            return;
        };
        let Some(i) = self.runs[idx].stage_index(stage) else {
            return;
        };
        let run = &mut self.runs[idx];
        let stage = stage.to_owned();
        let p = &mut run.progress[i];
        match name {
            EventName::PackageBuilt => {
                if let Some(d) = decode::<ev::PackageBuilt>(data) {
                    if !p.package_failed && p.package.is_none() {
                        p.package = Some(d.digest);
                        p.image_since = Some((time, meta.id));
                    }
                }
            }
            EventName::PackageFailed => {
                if let Some(d) = decode::<ev::PackageFailed>(data) {
                    if p.forward.is_none() && p.package.is_none() && !p.package_failed {
                        p.package_failed = true;
                        run.causes.push(Cause {
                            reason: format!("package for {stage} failed: {}", d.reason),
                            stage: Some(stage),
                        });
                    }
                }
            }
            EventName::ImagePushed => {
                if let Some(d) = decode::<ev::ImagePushed>(data) {
                    if !p.image_failed && p.image.is_none() {
                        p.image = Some((format!("{}:{}", d.repository, d.tag), d.digest));
                    }
                }
            }
            EventName::ImageFailed => {
                if let Some(d) = decode::<ev::ImageFailed>(data) {
                    if p.forward.is_none() && p.image.is_none() && !p.image_failed {
                        p.image_failed = true;
                        run.causes.push(Cause {
                            reason: format!("image for {stage} failed: {}", d.reason),
                            stage: Some(stage),
                        });
                    }
                }
            }
            EventName::StageQueued => {
                if let Some(d) = decode::<ev::StageQueued>(data) {
                    p.last_wait = Some(Wait {
                        reason: WaitReason::parse(&d.reason),
                        behind: d.behind,
                        until: d.until,
                        by: d.by,
                        detail: d.detail,
                    });
                }
            }
            EventName::ApprovalRequested => {
                if let Some(d) = decode::<ev::ApprovalRequested>(data) {
                    if p.request.is_none() {
                        p.request = Some(Request {
                            required: d.required,
                            expires_at: d.expires_at,
                        });
                    }
                    p.last_wait = Some(Wait::new(WaitReason::Approval, None, None));
                }
            }
            EventName::ApprovalGranted => {
                // Only a grant for a pending request counts: one given
                // before the request (before anyone could see what they
                // approve) is not a decision on it.
                if let Some(d) = decode::<ev::ApprovalGranted>(data) {
                    if p.request.is_some() {
                        p.grants.push((d.user, time));
                    }
                }
            }
            EventName::ApprovalRejected => {
                if let Some(d) = decode::<ev::ApprovalRejected>(data) {
                    if p.forward.is_none() {
                        run.causes.push(Cause {
                            reason: format!(
                                "approval for {stage} rejected by {}: {}",
                                d.user, d.reason
                            ),
                            stage: Some(stage),
                        });
                    }
                }
            }
            EventName::StageStarted => {
                if let Some(d) = decode::<ev::StageStarted>(data) {
                    if !d.rollback && p.forward.is_none() {
                        p.forward = Some(Attempt::new(time, meta.id));
                        p.last_wait = None;
                    } else if d.rollback
                        && p.forward.is_some()
                        && p.failure.is_some()
                        && p.rollback.is_none()
                    {
                        p.rollback = Some(Attempt::new(time, meta.id));
                    }
                }
            }
            EventName::DeployCompleted
            | EventName::DeployFailed
            | EventName::ApisPromoted
            | EventName::ApisFailed
            | EventName::SmokePassed
            | EventName::SmokeFailed
            | EventName::PerfPassed
            | EventName::PerfFailed => {
                let Some((step, succeeded)) = Step::of_result(name) else {
                    return;
                };
                let failure = match name {
                    EventName::DeployFailed => decode::<ev::DeployFailed>(data)
                        .map(|d| format!("deploy to {stage} failed: {}", d.reason)),
                    EventName::ApisFailed => decode::<ev::ApisFailed>(data)
                        .map(|d| format!("API Manager promotion in {stage} failed: {}", d.reason)),
                    EventName::SmokeFailed => decode::<ev::SmokeFailed>(data).map(|d| {
                        // A check that never ran (attempts 0: the deadline
                        // passed, the pipeline is gone) says why in its message.
                        let failed: Vec<String> = d
                            .checks
                            .iter()
                            .filter(|c| !c.passed)
                            .map(|c| match (&c.message, c.attempts) {
                                (Some(m), 0) => format!("{} ({m})", c.name),
                                _ => c.name.clone(),
                            })
                            .collect();
                        format!("smoke checks in {stage} failed: {}", failed.join(", "))
                    }),
                    EventName::PerfFailed => decode::<ev::PerfFailed>(data)
                        .map(|d| format!("perf gate in {stage} failed: {}", d.reason)),
                    _ => None,
                };
                let failure = failure.unwrap_or_else(|| format!("{name} in {stage}"));
                // A result answers the attempt whose event caused it: a late
                // answer to a promotion that already failed (its deadline
                // passed) must not count for the rollback that followed.
                // Results without a known cause go to the latest attempt.
                let to_forward = p.forward.as_ref().is_some_and(|f| f.caused(meta.cause))
                    && !p.rollback.as_ref().is_some_and(|r| r.caused(meta.cause));
                if let (Some(attempt), false) = (p.rollback.as_mut(), to_forward) {
                    if p.rolled_back || p.rollback_failure.is_some() {
                        return;
                    }
                    if succeeded {
                        attempt.mark(step, time, meta.id);
                    } else {
                        p.rollback_failure = Some(failure);
                    }
                } else if let Some(attempt) = p.forward.as_mut() {
                    if p.failure.is_some() || p.promoted {
                        return;
                    }
                    if succeeded {
                        attempt.mark(step, time, meta.id);
                    } else {
                        p.failure = Some(failure.clone());
                        run.causes.push(Cause {
                            stage: Some(stage),
                            reason: failure,
                        });
                    }
                }
            }
            EventName::EnvPromoted => {
                if let Some(d) = decode::<ev::EnvPromoted>(data) {
                    p.promoted = true;
                    let release = Release {
                        run: run_id.to_owned(),
                        commit: d.commit,
                        package: p.package.clone(),
                        image: d.image,
                        digest: d.digest,
                    };
                    let ordinal = run.ordinal;
                    let st = self.stages.entry(stage).or_default();
                    st.releases.insert(run_id.to_owned(), release.clone());
                    st.history.push(release.clone());
                    st.current = Some(release);
                    if st
                        .newest_promoted
                        .as_ref()
                        .is_none_or(|(o, _)| *o < ordinal)
                    {
                        st.newest_promoted = Some((ordinal, run_id.to_owned()));
                    }
                }
            }
            EventName::StageRolledBack => {
                if let Some(d) = decode::<ev::StageRolledBack>(data) {
                    p.rolled_back = true;
                    let st = self.stages.entry(stage).or_default();
                    st.current = d.to_run.map(|to| {
                        st.releases.get(&to).cloned().unwrap_or(Release {
                            run: to,
                            commit: d.to_commit.unwrap_or_default(),
                            package: None,
                            image: None,
                            digest: None,
                        })
                    });
                    if let Some(current) = &st.current {
                        st.history.push(current.clone());
                    }
                }
            }
            _ => {}
        }
    }
}
