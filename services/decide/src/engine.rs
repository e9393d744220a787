//! The rules (see the module documentation of `decide`), applied to a folded
//! [`State`] one decision at a time until there is nothing left to decide.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use gantry_proto::{CloudEvent, Step};

use super::state::{Attempt, Meta, Progress, Release, Run, State, Wait};
use super::{Decision, Outcome, RollbackError, RollbackTarget, WaitReason};
use gantry_pipeline::{Approval, Pipeline, QueuePolicy, Timeouts};

pub(super) fn decide(pipeline: &Pipeline, now: DateTime<Utc>, history: &[CloudEvent]) -> Outcome {
    decide_state(pipeline, now, State::fold(&pipeline.name, history))
}

/// Decides from an already folded state (consumed: decisions are applied
/// to it while deciding).
pub(super) fn decide_state(pipeline: &Pipeline, now: DateTime<Utc>, mut state: State) -> Outcome {
    let ctx = Ctx { pipeline, now };
    // Every decision changes the state so that it is not taken again; this
    // bound only guards against a rule that would flip-flop.
    let active: usize = state
        .runs
        .iter()
        .filter(|r| r.running())
        .map(|r| r.plan.len() + 1)
        .sum();
    let limit = 256 + 64 * active;
    let mut decisions = Vec::new();
    while let Some(decision) = next(&state, &ctx) {
        let meta = Meta {
            time: now,
            id: None,
            cause: decision.cause(),
        };
        state.apply(decision.run(), decision.name(), &decision.data(), meta);
        decisions.push(decision);
        if decisions.len() > limit {
            debug_assert!(false, "decisions do not converge: {decisions:#?}");
            tracing::error!(
                pipeline = %pipeline.name,
                "promotion decisions do not converge; stopping after {limit}"
            );
            break;
        }
    }
    let next_wakeup = wakeup(&state, &ctx);
    Outcome {
        decisions,
        next_wakeup,
    }
}

struct Ctx<'a> {
    pipeline: &'a Pipeline,
    now: DateTime<Utc>,
}

impl Ctx<'_> {
    fn policy(&self, stage: &str) -> QueuePolicy {
        self.pipeline
            .stage(stage)
            .map(|s| s.queue)
            .unwrap_or_default()
    }

    /// The approval policy of the run's `i`th stage, when it needs approval.
    /// A manual rollback needs none: whoever asked for it was allowed to.
    fn approval(&self, run: &Run, i: usize) -> Option<Approval> {
        if run.rollback.is_some() {
            return None;
        }
        let configured = self
            .pipeline
            .stage(&run.plan[i].name)
            .and_then(|s| s.approval.clone());
        let approval = match configured {
            Some(a) => a,
            None if run.has_step(i, Step::Approval) => Approval {
                required: 1,
                approvers: Vec::new(),
                allow_self: false,
                expires: None,
            },
            None => return None,
        };
        (approval.required > 0).then_some(approval)
    }

    /// The deadline of `step` in the run's `i`th stage, from the current
    /// definition (defaults for a stage no longer defined). The deploy's
    /// includes the readiness wait when the plan has `ready`: the deployer
    /// answers for both at once.
    fn timeout(&self, run: &Run, i: usize, step: Step) -> Option<std::time::Duration> {
        let of = |step: Step| match self.pipeline.stage(&run.plan[i].name) {
            Some(s) => s.timeout(step),
            None => Timeouts::default_for(step),
        };
        let base = of(step)?;
        if step == Step::Deploy && run.has_step(i, Step::Ready) {
            return Some(base.saturating_add(of(Step::Ready).unwrap_or_default()));
        }
        Some(base)
    }

    /// When the freeze holding `stage` now ends (windows that overlap or
    /// touch make one span).
    fn freeze_end(&self, stage: &str) -> Option<DateTime<Utc>> {
        let s = self.pipeline.stage(stage)?;
        let mut end = s.frozen_at(self.now)?.to;
        while let Some(later) = s
            .freeze
            .iter()
            .filter(|w| w.from <= end && end < w.to)
            .map(|w| w.to)
            .max()
        {
            end = later;
        }
        Some(end)
    }
}

fn plus(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A step of run `run`'s `i`th stage that is waiting for a result, with its
/// deadline and the event that began it.
struct Pending {
    step: Step,
    after: std::time::Duration,
    deadline: DateTime<Utc>,
    cause: Option<uuid::Uuid>,
}

/// The steps of the stage waiting for a worker's answer: the package and
/// image gates before the promotion, then the current step of the
/// promotion or of its rollback (which is not verified: no smoke, no perf).
fn pending(ctx: &Ctx<'_>, run: &Run, i: usize) -> Vec<Pending> {
    let p = &run.progress[i];
    let mut out = Vec::new();
    let mut push = |step: Step, since: DateTime<Utc>, cause| {
        if let Some(after) = ctx.timeout(run, i, step) {
            out.push(Pending {
                step,
                after,
                deadline: plus(since, after),
                cause,
            });
        }
    };
    if !run.running() {
        return out;
    }
    if p.forward.is_none() && run.rollback.is_none() {
        if p.package.is_none() && !p.package_failed {
            push(Step::Package, run.started_at, run.started_id);
        } else if let (true, None, false, Some((since, cue))) = (
            run.has_step(i, Step::Image),
            &p.image,
            p.image_failed,
            p.image_since,
        ) {
            push(Step::Image, since, cue);
        }
        return out;
    }
    if !p.occupies() {
        return out;
    }
    let (attempt, verify) = match (&p.rollback, &p.forward) {
        (Some(rb), _) if p.rollback_failure.is_none() => (rb, false),
        (None, Some(fw)) if p.failure.is_none() => (fw, true),
        _ => return out,
    };
    let current = run.plan[i].steps.iter().copied().find(|s| {
        s.results().is_some() && (verify || !s.is_verification()) && !attempt.succeeded(*s)
    });
    if let Some(step) = current {
        push(step, attempt.since, attempt.cue);
    }
    out
}

/// The first step of the stage whose deadline has passed.
fn overdue(ctx: &Ctx<'_>, run: &Run, i: usize) -> Option<Decision> {
    pending(ctx, run, i)
        .into_iter()
        .find(|p| ctx.now >= p.deadline)
        .map(|p| Decision::TimeOut {
            run: run.id.clone(),
            stage: run.plan[i].name.clone(),
            step: p.step,
            after: p.after,
            cause: p.cause,
        })
}

fn after_ok(run: &Run, i: usize) -> bool {
    match &run.plan[i].after {
        None => true,
        Some(after) => run
            .stage_index(after)
            .is_some_and(|j| run.progress[j].promoted),
    }
}

fn deps_met(run: &Run, i: usize) -> bool {
    let p = &run.progress[i];
    p.package.is_some() && (!run.has_step(i, Step::Image) || p.image.is_some())
}

/// Ready for stage `i`: may be promoted into it once the gates open.
fn candidate(run: &Run, i: usize) -> bool {
    run.running() && run.progress[i].forward.is_none() && after_ok(run, i) && deps_met(run, i)
}

/// Counts the grants that satisfy `approval` (distinct users, before expiry,
/// not the author unless allowed).
fn granted(run: &Run, i: usize, approval: &Approval) -> (usize, u32) {
    let p = &run.progress[i];
    let Some(request) = &p.request else {
        return (0, approval.required);
    };
    let mut users: Vec<String> = Vec::new();
    for (user, at) in &p.grants {
        if request.expires_at.is_some_and(|e| *at >= e) {
            continue;
        }
        if !approval.allow_self && run.is_author(user) {
            continue;
        }
        let user = user.trim().to_ascii_lowercase();
        if !users.contains(&user) {
            users.push(user);
        }
    }
    (users.len(), request.required)
}

fn satisfied(run: &Run, i: usize, approval: &Approval) -> bool {
    let (count, required) = granted(run, i, approval);
    count >= required as usize
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Why `run` must fail, if it must: the first recorded cause, else an
/// unknown `after`, else an expired approval.
fn cause(run: &Run, ctx: &Ctx<'_>) -> Option<(Option<String>, String)> {
    if let Some(c) = run.causes.first() {
        return Some((c.stage.clone(), c.reason.clone()));
    }
    for plan in &run.plan {
        if let Some(after) = &plan.after {
            if run.stage_index(after).is_none() {
                return Some((
                    Some(plan.name.clone()),
                    format!(
                        "stage {} follows {after}, which is not in the run's plan",
                        plan.name
                    ),
                ));
            }
        }
    }
    for (i, plan) in run.plan.iter().enumerate() {
        let p = &run.progress[i];
        let (Some(request), None) = (&p.request, &p.forward) else {
            continue;
        };
        let Some(expires_at) = request.expires_at else {
            continue;
        };
        let Some(approval) = ctx.approval(run, i) else {
            continue;
        };
        if ctx.now >= expires_at && !satisfied(run, i, &approval) {
            let (count, required) = granted(run, i, &approval);
            return Some((
                Some(plan.name.clone()),
                format!(
                    "approval for {} expired at {} ({count} of {required} approvals)",
                    plan.name,
                    rfc3339(expires_at)
                ),
            ));
        }
    }
    None
}

/// Cross-run facts for one round of decisions.
struct View<'s> {
    /// Per run (by index): why it must fail.
    causes: Vec<Option<(Option<String>, String)>>,
    /// Per run: the stage and the newer run it is superseded by.
    superseded: Vec<Option<(String, String)>>,
    /// Per stage: the run promoting into it or rolling it back.
    occupant: HashMap<&'s str, &'s str>,
    /// Per stage: the runs ready for it and still going, oldest first.
    queue: HashMap<&'s str, Vec<usize>>,
}

impl View<'_> {
    fn doomed(&self, idx: usize) -> bool {
        self.causes[idx].is_some() || self.superseded[idx].is_some()
    }
}

fn view<'s>(state: &'s State, ctx: &Ctx<'_>) -> View<'s> {
    let causes: Vec<_> = state
        .runs
        .iter()
        .map(|r| if r.running() { cause(r, ctx) } else { None })
        .collect();
    // Per stage: the newest run that reached it (promoted it, is promoting
    // into it, or is ready for it and has no reason to fail).
    let mut reached: HashMap<&str, (u64, &str)> = state
        .stages
        .iter()
        .filter_map(|(stage, st)| {
            st.newest_promoted
                .as_ref()
                .map(|(o, run)| (stage.as_str(), (*o, run.as_str())))
        })
        .collect();
    for (idx, run) in state.runs.iter().enumerate() {
        if !run.running() || causes[idx].is_some() {
            continue;
        }
        for (i, plan) in run.plan.iter().enumerate() {
            if candidate(run, i) || run.progress[i].occupies() {
                let entry = reached
                    .entry(plan.name.as_str())
                    .or_insert((run.ordinal, run.id.as_str()));
                if entry.0 < run.ordinal {
                    *entry = (run.ordinal, run.id.as_str());
                }
            }
        }
    }
    let superseded = state
        .runs
        .iter()
        .map(|run| {
            if !run.running() {
                return None;
            }
            run.plan.iter().enumerate().find_map(|(i, plan)| {
                if !candidate(run, i) || ctx.policy(&plan.name) != QueuePolicy::Latest {
                    return None;
                }
                let (ordinal, by) = reached.get(plan.name.as_str())?;
                (*ordinal > run.ordinal).then(|| (plan.name.clone(), (*by).to_owned()))
            })
        })
        .collect();
    let mut v = View {
        causes,
        superseded,
        occupant: HashMap::new(),
        queue: HashMap::new(),
    };
    for (idx, run) in state.runs.iter().enumerate() {
        if !run.running() {
            continue;
        }
        for (i, plan) in run.plan.iter().enumerate() {
            if run.progress[i].occupies() {
                v.occupant
                    .entry(plan.name.as_str())
                    .or_insert(run.id.as_str());
            } else if !v.doomed(idx) && candidate(run, i) {
                v.queue.entry(plan.name.as_str()).or_default().push(idx);
            }
        }
    }
    v
}

/// The next decision, if any.
fn next(state: &State, ctx: &Ctx<'_>) -> Option<Decision> {
    let v = view(state, ctx);
    for (idx, run) in state.runs.iter().enumerate() {
        if !run.running() {
            continue;
        }
        for i in 0..run.plan.len() {
            // A step past its deadline fails first, like any failed step.
            if let Some(d) = overdue(ctx, run, i) {
                return Some(d);
            }
            if let Some(d) = in_stage(state, run, i) {
                return Some(d);
            }
        }
        if run.holds_stage() {
            continue;
        }
        if let Some((stage, reason)) = &v.causes[idx] {
            return Some(Decision::Fail {
                run: run.id.clone(),
                stage: stage.clone(),
                reason: with_rollback_failures(run, reason),
            });
        }
        if let Some((stage, by_run)) = &v.superseded[idx] {
            return Some(Decision::Supersede {
                run: run.id.clone(),
                stage: stage.clone(),
                by_run: by_run.clone(),
            });
        }
        if let Some(d) = manual_rollback_done(state, run) {
            return Some(d);
        }
        if run.progress.iter().all(|p| p.promoted) {
            return Some(Decision::Succeed {
                run: run.id.clone(),
            });
        }
    }
    for (idx, run) in state.runs.iter().enumerate() {
        if !run.running() || v.doomed(idx) {
            continue;
        }
        for i in 0..run.plan.len() {
            if let Some(d) = waiting(state, &v, ctx, idx, i) {
                return Some(d);
            }
        }
    }
    None
}

/// A manual rollback that promoted its stage says that the stage went back.
fn manual_rollback_done(state: &State, run: &Run) -> Option<Decision> {
    let rb = run.rollback.as_ref()?;
    let i = run.stage_index(&rb.stage)?;
    let p = &run.progress[i];
    if !p.promoted || p.rolled_back {
        return None;
    }
    let to = state
        .stages
        .get(&rb.stage)
        .and_then(|s| s.releases.get(&rb.to_run));
    Some(Decision::RollBack {
        run: run.id.clone(),
        stage: rb.stage.clone(),
        reason: format!("rolled back by {}: {}", rb.requested_by, rb.reason),
        to_run: Some(rb.to_run.clone()),
        to_commit: Some(to.map_or_else(|| run.commit.clone(), |r| r.commit.clone())),
    })
}

fn with_rollback_failures(run: &Run, reason: &str) -> String {
    let mut reason = reason.to_owned();
    for (plan, p) in run.plan.iter().zip(&run.progress) {
        if let Some(f) = &p.rollback_failure {
            reason.push_str(&format!("; rollback of {} failed: {f}", plan.name));
        }
    }
    reason
}

/// Whether every step of the stage's plan that records results has
/// succeeded in attempt `a`; smoke and perf only when `verify` (a rollback
/// restores what ran before and is not verified).
fn steps_done(run: &Run, i: usize, a: &Attempt, verify: bool) -> bool {
    run.plan[i]
        .steps
        .iter()
        .filter(|s| s.results().is_some() && (verify || !s.is_verification()))
        .all(|s| a.succeeded(*s))
}

/// Promotion or rollback of a stage the run is in.
fn in_stage(state: &State, run: &Run, i: usize) -> Option<Decision> {
    let p: &Progress = &run.progress[i];
    if !p.occupies() {
        return None;
    }
    let stage = &run.plan[i].name;
    let current = state.stages.get(stage).and_then(|s| s.current.as_ref());
    if let Some(rollback) = &p.rollback {
        let failure = p.failure.clone().unwrap_or_default();
        return steps_done(run, i, rollback, false).then(|| Decision::RollBack {
            run: run.id.clone(),
            stage: stage.clone(),
            reason: failure,
            to_run: current.map(|c| c.run.clone()),
            to_commit: current.map(|c| c.commit.clone()),
        });
    }
    if let Some(failure) = &p.failure {
        let changes_stage = run.has_step(i, Step::Deploy) || run.has_step(i, Step::ApiManager);
        return Some(match current {
            Some(target) if changes_stage => Decision::Start {
                run: run.id.clone(),
                stage: stage.clone(),
                commit: target.commit.clone(),
                image: target.image.clone(),
                digest: target.digest.clone(),
                rollback: true,
            },
            _ => Decision::RollBack {
                run: run.id.clone(),
                stage: stage.clone(),
                reason: failure.clone(),
                to_run: current.map(|c| c.run.clone()),
                to_commit: current.map(|c| c.commit.clone()),
            },
        });
    }
    let forward = p.forward.as_ref()?;
    steps_done(run, i, forward, true).then(|| Decision::Promote {
        run: run.id.clone(),
        stage: stage.clone(),
        commit: run.commit.clone(),
        image: p.image.as_ref().map(|(image, _)| image.clone()),
        digest: p.image.as_ref().map(|(_, digest)| digest.clone()),
    })
}

/// What a run not yet in stage `i` does about it.
fn waiting(state: &State, v: &View<'_>, ctx: &Ctx<'_>, idx: usize, i: usize) -> Option<Decision> {
    let run = &state.runs[idx];
    let p = &run.progress[i];
    if p.forward.is_some() || !after_ok(run, i) {
        return None;
    }
    let stage = run.plan[i].name.as_str();
    let wait = 'gates: {
        if !deps_met(run, i) {
            break 'gates Wait::new(WaitReason::Dependencies, None, None);
        }
        // A pause stops new promotions, never a rollback someone asked for.
        if let Some(pause) = state
            .stages
            .get(stage)
            .and_then(|s| s.paused.as_ref())
            .filter(|_| run.rollback.is_none())
        {
            break 'gates Wait::paused(stage, pause);
        }
        // Freezes hold promotions, never a rollback.
        if let Some(until) = ctx.freeze_end(stage).filter(|_| run.rollback.is_none()) {
            break 'gates Wait::new(WaitReason::Freeze, None, Some(until));
        }
        if let Some(approval) = ctx.approval(run, i) {
            if p.request.is_none() {
                let expires_at = approval
                    .expires
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .and_then(|d| ctx.now.checked_add_signed(d));
                return Some(Decision::RequestApproval {
                    run: run.id.clone(),
                    stage: stage.to_owned(),
                    required: approval.required,
                    approvers: approval.approvers.clone(),
                    expires_at,
                });
            }
            if !satisfied(run, i, &approval) {
                break 'gates Wait::new(WaitReason::Approval, None, None);
            }
        }
        let queue = v.queue.get(stage).map(Vec::as_slice).unwrap_or_default();
        let behind = match queue.iter().position(|&q| q == idx) {
            Some(pos) if pos > 0 => Some(queue[pos - 1]),
            _ => None,
        };
        let behind = match behind {
            Some(ahead) => Some(state.runs[ahead].id.clone()),
            None => v.occupant.get(stage).map(|r| (*r).to_owned()),
        };
        if behind.is_some() {
            break 'gates Wait::new(WaitReason::Queue, behind, None);
        }
        let (image, digest) = p.image.clone().unzip();
        return Some(Decision::Start {
            run: run.id.clone(),
            stage: stage.to_owned(),
            commit: run.commit.clone(),
            image,
            digest,
            rollback: false,
        });
    };
    if p.last_wait.as_ref() == Some(&wait) {
        return None;
    }
    Some(Decision::Queue {
        run: run.id.clone(),
        stage: stage.to_owned(),
        reason: wait.reason.unwrap_or(WaitReason::Queue),
        behind: wait.behind,
        until: wait.until,
        by: wait.by,
        detail: wait.detail,
    })
}

/// The earliest future time at which a waiting run's gates change by
/// themselves: a freeze begins or ends, an approval request lapses.
fn wakeup(state: &State, ctx: &Ctx<'_>) -> Option<DateTime<Utc>> {
    let v = view(state, ctx);
    let mut earliest: Option<DateTime<Utc>> = None;
    let mut consider = |t: DateTime<Utc>| {
        if t > ctx.now && earliest.is_none_or(|e| t < e) {
            earliest = Some(t);
        }
    };
    for run in &state.runs {
        for i in 0..run.plan.len() {
            for p in pending(ctx, run, i) {
                consider(p.deadline);
            }
        }
    }
    for (idx, run) in state.runs.iter().enumerate() {
        if !run.running() || v.doomed(idx) {
            continue;
        }
        for (i, p) in run.progress.iter().enumerate() {
            if p.forward.is_some() {
                continue;
            }
            if let Some(Wait {
                reason: Some(WaitReason::Freeze),
                until: Some(until),
                ..
            }) = &p.last_wait
            {
                consider(*until);
            }
            // A freeze that begins holds a ready run before anything else.
            if after_ok(run, i) && deps_met(run, i) {
                let name = &run.plan[i].name;
                if let Some(stage) = ctx.pipeline.stage(name) {
                    let frozen_until = ctx.freeze_end(name).unwrap_or(ctx.now);
                    for w in &stage.freeze {
                        if w.from > frozen_until {
                            consider(w.from);
                        }
                    }
                }
            }
            if let (Some(request), Some(approval)) = (&p.request, ctx.approval(run, i)) {
                if let Some(expires_at) = request.expires_at {
                    if !satisfied(run, i, &approval) {
                        consider(expires_at);
                    }
                }
            }
        }
    }
    earliest
}

pub(super) fn rollback_target(
    pipeline: &Pipeline,
    history: &[CloudEvent],
    stage: &str,
    to: Option<&str>,
) -> Result<RollbackTarget, RollbackError> {
    if pipeline.stage(stage).is_none() {
        return Err(RollbackError::UnknownStage {
            pipeline: pipeline.name.clone(),
            stage: stage.to_owned(),
        });
    }
    let state = State::fold(&pipeline.name, history);
    let st = state.stages.get(stage);
    let current = st.and_then(|s| s.current.as_ref());
    let same = |a: &Release, b: &Release| a.commit == b.commit && a.digest == b.digest;
    let target = match to {
        Some(to) => {
            let release = st.and_then(|s| s.releases.get(to)).ok_or_else(|| {
                RollbackError::NotAReleaseOf {
                    run: to.to_owned(),
                    stage: stage.to_owned(),
                }
            })?;
            if current.is_some_and(|c| same(c, release)) {
                return Err(RollbackError::AlreadyRunning {
                    run: to.to_owned(),
                    stage: stage.to_owned(),
                });
            }
            release
        }
        None => st
            .and_then(|s| {
                let current = current?;
                s.history.iter().rev().find(|r| !same(r, current))
            })
            .ok_or_else(|| RollbackError::NoEarlierRelease {
                stage: stage.to_owned(),
            })?,
    };
    // A release recorded before packages were tracked cannot be re-promoted
    // without rebuilding; say so rather than guess.
    let package = target
        .package
        .clone()
        .ok_or_else(|| RollbackError::NotAReleaseOf {
            run: target.run.clone(),
            stage: stage.to_owned(),
        })?;
    let pending = state
        .runs
        .iter()
        .find(|r| r.running() && r.rollback.as_ref().is_some_and(|rb| rb.stage == stage))
        .map(|r| r.id.clone());
    Ok(RollbackTarget {
        run: target.run.clone(),
        commit: target.commit.clone(),
        package,
        image: target.image.clone(),
        digest: target.digest.clone(),
        pending,
    })
}
