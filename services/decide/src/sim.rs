//! Property tests: random pipelines, random runs and random worker outcomes,
//! driven through `decide` by a small simulator, against the invariants:
//!
//! 1. no stage ever has two promotions in progress at once;
//! 2. a run never starts a stage before it promoted the stage's `after`
//!    (nor before its package and image exist, nor while the stage is frozen
//!    or paused, nor without the approvals its policy asks for), and no
//!    approval is asked for in a paused stage;
//! 3. the conductor decides nothing for a run after it ended (superseded,
//!    failed, cancelled and succeeded runs never promote again);
//! 4. with workers answering and time passing, every run ends;
//! 5. deciding twice on the same history gives the same decisions, deciding
//!    on the history with them appended gives none, and nothing changes
//!    before `next_wakeup` without new events;
//!
//! plus: a succeeded run promoted every stage, a rollback names the release
//! the stage ran before the failed promotion, supersession is by a newer run,
//! and a manual rollback run (no approval, not held by freezes, nothing
//! built) puts the stage back on the release it names.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use gantry_proto::events as ev;
use gantry_proto::{CloudEvent, EventName, Step};
use proptest::prelude::*;

use super::decide;
use super::fixture::*;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const MAX_RUNS: usize = 5;
const MAX_ROLLBACKS: usize = 2;

#[derive(Debug, Clone)]
struct StageSpec {
    /// Index of an earlier stage to follow instead of the previous one.
    after: Option<u8>,
    deploy: bool,
    apim: bool,
    smoke: bool,
    /// (required, allow_self, expires in hours)
    approval: Option<(u32, bool, Option<i64>)>,
    fifo: bool,
    /// (from, length) in hours after t0
    freeze: Option<(i64, i64)>,
    /// Every step's deadline, in hours (none: longer than any simulation).
    timeouts: Option<u8>,
}

#[derive(Debug, Clone)]
struct Spec {
    image: bool,
    stages: Vec<StageSpec>,
}

impl Spec {
    fn yaml(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.stages.iter().enumerate() {
            out.push_str(&format!("  - name: s{i}\n"));
            if let Some(a) = s.after {
                if i > 0 {
                    out.push_str(&format!("    after: s{}\n", a as usize % i));
                }
            }
            if s.deploy {
                out.push_str(DEPLOY);
            }
            if s.apim {
                out.push_str(APIM);
            }
            if s.smoke {
                out.push_str(SMOKE);
            }
            if let Some((required, allow_self, expires)) = s.approval {
                let expires = expires
                    .map(|h| format!(", expires: {h}h"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "    approval: {{ required: {required}, approvers: [rm], allow_self: {allow_self}{expires} }}\n"
                ));
            }
            if let Some((from, len)) = s.freeze {
                let rfc = |t: DateTime<Utc>| t.to_rfc3339();
                out.push_str(&format!(
                    "    freeze: [ {{ from: \"{}\", to: \"{}\" }} ]\n",
                    rfc(at_hours(from)),
                    rfc(at_hours(from + len))
                ));
            }
            if let Some(h) = s.timeouts {
                out.push_str(&format!(
                    "    timeouts: {{ package: {h}h, image: {h}h, deploy: {h}h, ready: {h}h, apimanager: {h}h, smoke: {h}h }}\n"
                ));
            }
            out.push_str(if s.fifo {
                "    queue: fifo\n"
            } else {
                "    queue: latest\n"
            });
        }
        out
    }
}

fn stage_spec() -> impl Strategy<Value = StageSpec> {
    (
        prop::option::weighted(0.3, any::<u8>()),
        any::<bool>(),
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::option::weighted(0.4, (1u32..=2, any::<bool>(), prop::option::of(1i64..=4))),
        any::<bool>(),
        prop::option::weighted(0.3, (-2i64..8, 1i64..6)),
        prop::option::weighted(0.5, 1u8..4),
    )
        .prop_map(
            |(after, deploy, apim, smoke, approval, fifo, freeze, timeouts)| StageSpec {
                after,
                deploy,
                apim,
                smoke,
                approval,
                fifo,
                freeze,
                timeouts,
            },
        )
}

fn spec() -> impl Strategy<Value = Spec> {
    (any::<bool>(), prop::collection::vec(stage_spec(), 1..=4))
        .prop_map(|(image, stages)| Spec { image, stages })
}

#[derive(Debug, Clone)]
enum Action {
    NewRun {
        author: u8,
    },
    Work {
        pick: u16,
        ok: bool,
    },
    Approve {
        pick: u16,
        user: u8,
    },
    Reject {
        pick: u16,
    },
    Cancel {
        pick: u16,
    },
    Advance {
        hours: u8,
    },
    /// Someone asks for a manual rollback of a stage (to the release before
    /// the current one, or to the release of a picked run).
    Rollback {
        stage: u8,
        to: Option<u16>,
    },
    /// Someone pauses a stage, or resumes it when it is paused.
    Pause {
        stage: u8,
    },
    /// A worker answers (successfully) a step whose deadline passed and
    /// whose failure the conductor recorded.
    Late {
        pick: u16,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => any::<u8>().prop_map(|author| Action::NewRun { author }),
        14 => (any::<u16>(), prop::bool::weighted(0.9)).prop_map(|(pick, ok)| Action::Work { pick, ok }),
        4 => (any::<u16>(), any::<u8>()).prop_map(|(pick, user)| Action::Approve { pick, user }),
        1 => any::<u16>().prop_map(|pick| Action::Reject { pick }),
        1 => any::<u16>().prop_map(|pick| Action::Cancel { pick }),
        2 => (1u8..6).prop_map(|hours| Action::Advance { hours }),
        1 => (any::<u8>(), prop::option::of(any::<u16>())).prop_map(|(stage, to)| Action::Rollback { stage, to }),
        2 => any::<u8>().prop_map(|stage| Action::Pause { stage }),
        2 => any::<u16>().prop_map(|pick| Action::Late { pick }),
    ]
}

/// A worker's next piece of work, as the log says.
#[derive(Debug, Clone, PartialEq)]
enum Task {
    Package(String, String),
    Image(String, String),
    /// A step of the latest promotion (or rollback) into a stage.
    Step(String, String, Step),
}

/// (run, stage)
type Key = (String, String);
/// Step results in order: (step, succeeded).
type Results = Vec<(Step, bool)>;

/// What workers and people can see in the log (independent of `decide`).
#[derive(Default)]
struct Model {
    runs: Vec<String>,
    /// Each run's own stage plan (a rollback run has one stage).
    plans: HashMap<String, Vec<ev::StagePlan>>,
    rollbacks: HashSet<String>,
    authors: HashMap<String, String>,
    terminal: HashSet<String>,
    package: HashMap<(String, String), bool>,
    image: HashMap<(String, String), bool>,
    /// Latest start per (run, stage): rollback?, step results since.
    attempts: HashMap<Key, (bool, Results)>,
    requested: HashSet<(String, String)>,
    granted: HashMap<(String, String), Vec<String>>,
    started: HashSet<(String, String)>,
}

fn is_late(e: &CloudEvent) -> bool {
    e.source == format!("gantry/{LATE}")
}

/// The conductor's timeouts in the log: (run, stage, failure type, cue).
fn timeouts(log: &Log) -> Vec<(String, String, EventName, uuid::Uuid)> {
    log.events
        .iter()
        .filter(|e| e.source == "gantry/conductor")
        .filter_map(|e| {
            let name = e.name()?;
            let failed = matches!(
                name,
                EventName::PackageFailed
                    | EventName::ImageFailed
                    | EventName::DeployFailed
                    | EventName::ApisFailed
                    | EventName::SmokeFailed
                    | EventName::PerfFailed
            );
            let (run, stage) = key(e);
            failed.then_some((run, stage, name, e.causationid?))
        })
        .collect()
}

/// A worker's successful answer to the step a timeout failed, after it.
fn answer_late(log: &mut Log, run: &str, stage: &str, failed: EventName, cause: uuid::Uuid) {
    let stage = stage.to_owned();
    match failed {
        EventName::PackageFailed => log.push_late(
            run,
            ev::PackageBuilt {
                stage,
                digest: "sha256:late".into(),
                size: 1,
                files: 1,
                format: "yaml".into(),
                values_digest: None,
                location: None,
                commit: None,
                committed_at: None,
            },
            cause,
        ),
        EventName::ImageFailed => log.push_late(
            run,
            ev::ImagePushed {
                stage,
                repository: REPO.into(),
                tag: "late".into(),
                digest: "sha256:late".into(),
                parent_digest: None,
                bytes_uploaded: 0,
                bytes_reused: 0,
            },
            cause,
        ),
        EventName::DeployFailed => log.push_late(
            run,
            ev::DeployCompleted {
                stage,
                image: None,
                digest: Some("sha256:late".into()),
                revision: None,
                output: None,
                duration_ms: 0,
            },
            cause,
        ),
        EventName::ApisFailed => log.push_late(
            run,
            ev::ApisPromoted {
                stage,
                changes: Vec::new(),
            },
            cause,
        ),
        _ => log.push_late(
            run,
            ev::SmokePassed {
                stage,
                checks: Vec::new(),
            },
            cause,
        ),
    }
}

fn key(e: &CloudEvent) -> (String, String) {
    (
        e.runid.clone().unwrap_or_default(),
        e.stage().unwrap_or_default().to_owned(),
    )
}

impl Model {
    fn of(log: &Log) -> Self {
        let mut m = Model::default();
        // Late answers are ignored by the conductor; workers know they are done.
        for e in log.events.iter().filter(|e| !is_late(e)) {
            let k = key(e);
            let name = e.name().expect("known event");
            match name {
                EventName::RunStarted => {
                    let d: ev::RunStarted = e.decode().unwrap();
                    let author = d.author.and_then(|a| a.username).unwrap_or_default();
                    m.authors.insert(d.run_id.clone(), author);
                    if d.rollback.is_some() {
                        m.rollbacks.insert(d.run_id.clone());
                    }
                    m.plans.insert(d.run_id.clone(), d.stages);
                    m.runs.push(d.run_id);
                }
                EventName::PackageBuilt => {
                    m.package.insert(k, true);
                }
                EventName::PackageFailed => {
                    m.package.insert(k, false);
                }
                EventName::ImagePushed => {
                    m.image.insert(k, true);
                }
                EventName::ImageFailed => {
                    m.image.insert(k, false);
                }
                EventName::StageStarted => {
                    let d: ev::StageStarted = e.decode().unwrap();
                    if !d.rollback {
                        m.started.insert(k.clone());
                    }
                    m.attempts.insert(k, (d.rollback, Vec::new()));
                }
                EventName::DeployCompleted
                | EventName::DeployFailed
                | EventName::ApisPromoted
                | EventName::ApisFailed
                | EventName::SmokePassed
                | EventName::SmokeFailed
                | EventName::PerfPassed
                | EventName::PerfFailed => {
                    let Some((step, ok)) = Step::of_result(name) else {
                        continue;
                    };
                    if let Some((_, results)) = m.attempts.get_mut(&k) {
                        results.push((step, ok));
                    }
                }
                EventName::ApprovalRequested => {
                    m.requested.insert(k);
                }
                EventName::ApprovalGranted => {
                    let d: ev::ApprovalGranted = e.decode().unwrap();
                    m.granted.entry(k).or_default().push(d.user);
                }
                n if n.is_terminal() => {
                    m.terminal.insert(k.0);
                }
                _ => {}
            }
        }
        m
    }

    /// Work the workers still have to do, in a stable order. Workers also
    /// answer for runs that ended meanwhile (their results must be ignored).
    fn tasks(&self, log: &Log) -> Vec<Task> {
        let mut tasks = Vec::new();
        for run in &self.runs {
            // Nothing is built for a rollback run: envgen skips it.
            let builds = !self.rollbacks.contains(run);
            for stage in &self.plans[run] {
                let k = (run.clone(), stage.name.clone());
                match self.package.get(&k) {
                    _ if !builds => {}
                    None => tasks.push(Task::Package(k.0.clone(), k.1.clone())),
                    Some(true) if log.pipeline.image.is_some() && !self.image.contains_key(&k) => {
                        tasks.push(Task::Image(k.0.clone(), k.1.clone()))
                    }
                    _ => {}
                }
                if let Some((rollback, results)) = self.attempts.get(&k) {
                    if results.iter().any(|(_, ok)| !ok) {
                        continue;
                    }
                    let chain = [Step::Deploy, Step::ApiManager, Step::Smoke]
                        .into_iter()
                        .filter(|s| stage.has(*s))
                        .filter(|s| !(*rollback && *s == Step::Smoke));
                    let next = chain
                        .into_iter()
                        .find(|s| !results.iter().any(|(done, _)| done == s));
                    if let Some(step) = next {
                        tasks.push(Task::Step(k.0.clone(), k.1.clone(), step));
                    }
                }
            }
        }
        tasks
    }

    /// Approvals people could still give: requested, not started, run going.
    fn pending_approvals(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .requested
            .iter()
            .filter(|k| !self.started.contains(*k) && !self.terminal.contains(&k.0))
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn going(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| !self.terminal.contains(*r))
            .cloned()
            .collect()
    }
}

fn work(log: &mut Log, task: &Task, ok: bool) {
    match task {
        Task::Package(run, stage) => {
            if ok {
                log.package(run, stage)
            } else {
                log.push(
                    run,
                    ev::PackageFailed {
                        stage: stage.clone(),
                        reason: "bad placeholder".into(),
                        diagnostics: Vec::new(),
                    },
                )
            }
        }
        Task::Image(run, stage) => {
            if ok {
                log.image(run, stage)
            } else {
                log.push(
                    run,
                    ev::ImageFailed {
                        stage: stage.clone(),
                        reason: "registry down".into(),
                    },
                )
            }
        }
        Task::Step(run, stage, step) => match (*step, ok) {
            (Step::Deploy, true) => log.deployed(run, stage),
            (Step::Deploy, false) => log.deploy_failed(run, stage, "not ready"),
            (Step::ApiManager, true) => log.apis_promoted(run, stage),
            (Step::ApiManager, false) => log.apis_failed(run, stage, "conflict"),
            (_, passed) => log.smoke(run, stage, passed),
        },
    }
}

/// Decides and appends, checking determinism, idempotence and the wakeup.
fn conduct(log: &mut Log) {
    let outcome = log.decide();
    // Folding as a long-lived conductor does gives the same answer.
    let mut folded = super::Folded::new(&log.pipeline.name);
    for e in &log.events {
        folded.apply(e);
    }
    assert_eq!(
        super::decide_folded(&log.pipeline, log.now, &folded),
        outcome,
        "incremental fold differs"
    );
    if let Some(wakeup) = outcome.next_wakeup {
        assert!(wakeup > log.now, "wakeup {wakeup} is not after now");
    }
    log.step();
    // Nothing changes by itself before the wakeup.
    let until = log
        .decide()
        .next_wakeup
        .map(|w| w - Duration::seconds(1))
        .unwrap_or(log.now + Duration::hours(1000));
    if until > log.now {
        let later = decide(&log.pipeline, until, &log.events);
        assert!(
            later.decisions.is_empty(),
            "decisions at {until} before the wakeup: {:#?}",
            later.decisions
        );
    }
}

/// The stages paused now, as the log says.
fn paused_stages(log: &Log) -> Vec<String> {
    let mut paused: Vec<String> = Vec::new();
    for e in &log.events {
        match e.name() {
            Some(EventName::StagePaused) => {
                paused.push(e.stage().unwrap_or_default().to_owned());
            }
            Some(EventName::StageResumed) => {
                paused.retain(|s| Some(s.as_str()) != e.stage());
            }
            _ => {}
        }
    }
    paused.sort();
    paused.dedup();
    paused
}

fn apply(log: &mut Log, runs: &mut usize, action: &Action) {
    let model = Model::of(log);
    match action {
        Action::Pause { stage } => {
            let stages: Vec<String> = log.pipeline.stages.iter().map(|s| s.name.clone()).collect();
            let stage = &stages[*stage as usize % stages.len()];
            if paused_stages(log).contains(stage) {
                log.resume(stage, "sam");
            } else {
                log.pause(stage, "rita", "stop the line");
            }
        }
        Action::Rollback { stage, to } => {
            let stages: Vec<String> = log.pipeline.stages.iter().map(|s| s.name.clone()).collect();
            let stage = &stages[*stage as usize % stages.len()];
            if model.runs.is_empty() {
                return;
            }
            let to = to.map(|t| model.runs[t as usize % model.runs.len()].clone());
            let n = model.rollbacks.len();
            let ok = n < MAX_ROLLBACKS
                && super::rollback_target(&log.pipeline, &log.events, stage, to.as_deref())
                    .is_ok_and(|t| t.pending.is_none());
            if ok {
                log.start_rollback(&format!("rb{}", n + 1), stage, to.as_deref());
            }
        }
        Action::NewRun { author } => {
            if *runs < MAX_RUNS {
                *runs += 1;
                let author = USERS[*author as usize % USERS.len()];
                log.start_run(&format!("r{runs}"), author);
            }
        }
        Action::Work { pick, ok } => {
            let tasks = model.tasks(log);
            if !tasks.is_empty() {
                work(log, &tasks[*pick as usize % tasks.len()], *ok);
            }
        }
        Action::Approve { pick, user } => {
            let pending = model.pending_approvals();
            if !pending.is_empty() {
                let (run, stage) = &pending[*pick as usize % pending.len()];
                let user = match *user as usize % (USERS.len() + 1) {
                    i if i < USERS.len() => USERS[i].to_owned(),
                    _ => format!("{}@example.com", model.authors[run]),
                };
                log.grant(run, stage, &user);
            }
        }
        // Rejections and cancellations are rarer than their weights say.
        Action::Reject { pick } => {
            let pending = model.pending_approvals();
            if !pending.is_empty() && pick % 2 == 0 {
                let (run, stage) = &pending[*pick as usize % pending.len()];
                log.reject(run, stage, "rita");
            }
        }
        Action::Cancel { pick } => {
            let going = model.going();
            if !going.is_empty() && pick % 3 == 0 {
                log.cancel(&going[*pick as usize % going.len()]);
            }
        }
        Action::Advance { hours } => log.now += Duration::hours(i64::from(*hours)),
        Action::Late { pick } => {
            let timeouts = timeouts(log);
            if timeouts.is_empty() {
                return;
            }
            let (run, stage, failed, cause) = timeouts[*pick as usize % timeouts.len()].clone();
            // The late answer changes nothing: the step failed at its deadline.
            let before = log.decide();
            answer_late(log, &run, &stage, failed, cause);
            assert_eq!(
                log.decide(),
                before,
                "a late {failed} answer for {run}/{stage} changed the decisions"
            );
        }
    }
}

/// Workers answer (mostly successfully), approvers approve, time passes.
fn drain(log: &mut Log) {
    for round in 0..2000usize {
        conduct(log);
        let model = Model::of(log);
        if model.going().is_empty() {
            return;
        }
        if let Some(task) = model.tasks(log).first() {
            let ok = matches!(task, Task::Package(..) | Task::Image(..)) || round % 7 != 3;
            work(log, task, ok);
            continue;
        }
        // Nothing moves while a stage is paused: someone resumes it.
        if let Some(stage) = paused_stages(log).first() {
            log.resume(stage, "sam");
            continue;
        }
        let pending = model.pending_approvals();
        if let Some((run, stage)) = pending.first() {
            let author = &model.authors[run];
            let given = model.granted.get(&(run.clone(), stage.clone()));
            let user = USERS
                .iter()
                .find(|u| *u != author && !given.is_some_and(|g| g.iter().any(|x| x == *u)));
            if let Some(user) = user {
                log.grant(run, stage, user);
                continue;
            }
        }
        log.now += Duration::hours(1);
    }
    panic!(
        "runs did not end: {:?}\nlog: {:#?}",
        Model::of(log).going(),
        log.events
            .iter()
            .map(|e| (e.runid.clone(), e.ty.clone(), e.data.clone()))
            .collect::<Vec<_>>()
    );
}

/// Walks the whole log and checks the invariants.
fn check(log: &Log, spec: &Spec) {
    let plan = log.pipeline.run_plan();
    let mut order: HashMap<String, usize> = HashMap::new();
    let mut authors: HashMap<String, ev::Person> = HashMap::new();
    let mut terminal: HashMap<String, EventName> = HashMap::new();
    let mut occupant: HashMap<String, String> = HashMap::new();
    let mut rolling: HashSet<(String, String)> = HashSet::new();
    let mut promoted: HashSet<(String, String)> = HashSet::new();
    let mut current: HashMap<String, String> = HashMap::new();
    let mut newest_promoted: HashMap<String, String> = HashMap::new();
    let mut before: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut built: HashSet<(String, String, Step)> = HashSet::new();
    let mut requested: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut grants: HashMap<Key, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    let mut rejected: HashSet<(String, String)> = HashSet::new();
    let mut plans: HashMap<String, Vec<ev::StagePlan>> = HashMap::new();
    let mut rollback_of: HashMap<String, ev::RollbackOf> = HashMap::new();
    // Per (stage, run): the commit that run's promotion put there.
    let mut release_commit: HashMap<(String, String), String> = HashMap::new();
    // Step results since the latest start (promotion or rollback).
    let mut results: HashMap<Key, Results> = HashMap::new();
    let steps_ok = |results: &HashMap<Key, Results>, k: &Key, steps: &[Step]| {
        let r = results.get(k).map(Vec::as_slice).unwrap_or_default();
        let i = plan.iter().position(|p| p.name == k.1).unwrap();
        r.iter().all(|(_, ok)| *ok)
            && steps
                .iter()
                .filter(|s| plan[i].has(**s))
                .all(|s| r.iter().any(|(done, _)| done == s))
    };
    let ctx = |e: &CloudEvent| format!("at #{:?} {} {}", e.sequence, e.ty, e.data);
    let mut paused: HashSet<String> = HashSet::new();

    for e in log.events.iter().filter(|e| !is_late(e)) {
        match e.name() {
            Some(EventName::StagePaused) => {
                paused.insert(e.stage().unwrap_or_default().to_owned());
                continue;
            }
            Some(EventName::StageResumed) => {
                paused.remove(e.stage().unwrap_or_default());
                continue;
            }
            _ => {}
        }
        let run = e.runid.clone().expect("run id");
        let k = key(e);
        let name = e.name().expect("known");
        if e.source == "gantry/conductor" {
            assert!(
                !terminal.contains_key(&run),
                "decision for ended run {run} ({:?}) {}",
                terminal.get(&run),
                ctx(e)
            );
        }
        let release = |occupant: &mut HashMap<String, String>, stage: &str, run: &str| {
            if occupant.get(stage).is_some_and(|r| r == run) {
                occupant.remove(stage);
            }
        };
        if let Some((step, ok)) = Step::of_result(name) {
            results.entry(k.clone()).or_default().push((step, ok));
        }
        match name {
            EventName::RunStarted => {
                let d: ev::RunStarted = e.decode().unwrap();
                order.insert(run.clone(), order.len());
                authors.insert(run.clone(), d.author.unwrap_or_default());
                if let Some(rb) = d.rollback {
                    assert!(
                        release_commit.get(&(rb.stage.clone(), rb.to_run.clone()))
                            == Some(&d.commit),
                        "rollback run for another commit than its target's release {}",
                        ctx(e)
                    );
                    rollback_of.insert(run.clone(), rb);
                }
                plans.insert(run.clone(), d.stages);
            }
            EventName::PackageBuilt => {
                built.insert((k.0, k.1, Step::Package));
            }
            EventName::ImagePushed => {
                built.insert((k.0, k.1, Step::Image));
            }
            EventName::ApprovalRequested => {
                assert!(
                    !paused.contains(&k.1),
                    "approval asked for in a paused stage {}",
                    ctx(e)
                );
                requested.entry(k).or_insert(e.time);
            }
            EventName::ApprovalGranted => {
                let d: ev::ApprovalGranted = e.decode().unwrap();
                grants.entry(k).or_default().push((d.user, e.time));
            }
            EventName::ApprovalRejected => {
                rejected.insert(k);
            }
            EventName::StageStarted => {
                let d: ev::StageStarted = e.decode().unwrap();
                let (_, stage) = &k;
                results.remove(&k);
                if d.rollback {
                    assert_eq!(
                        occupant.get(stage),
                        Some(&run),
                        "rollback of a stage the run is not in {}",
                        ctx(e)
                    );
                    rolling.insert(k.clone());
                    continue;
                }
                // (1) one promotion per stage at a time.
                assert!(
                    !occupant.contains_key(stage),
                    "{run} starts {stage} while {:?} is in it {}",
                    occupant.get(stage),
                    ctx(e)
                );
                let s = log.pipeline.stage(stage).unwrap();
                if let Some(rb) = rollback_of.get(&run) {
                    // A manual rollback: nothing built, no approval, no
                    // freeze; it deploys the release it names.
                    assert_eq!(&rb.stage, stage, "rollback run in another stage {}", ctx(e));
                    assert_eq!(
                        d.digest,
                        rb.digest,
                        "rollback deploys its target {}",
                        ctx(e)
                    );
                    before.insert(k.clone(), current.get(stage).cloned());
                    occupant.insert(stage.clone(), run.clone());
                    continue;
                }
                // (2) after, dependencies, pause, freeze, approvals.
                assert!(
                    !paused.contains(stage),
                    "{run} starts {stage} while it is paused {}",
                    ctx(e)
                );
                let i = plan.iter().position(|p| &p.name == stage).unwrap();
                if let Some(after) = &plan[i].after {
                    assert!(
                        promoted.contains(&(run.clone(), after.clone())),
                        "{run} starts {stage} before promoting {after} {}",
                        ctx(e)
                    );
                }
                assert!(
                    built.contains(&(run.clone(), stage.clone(), Step::Package)),
                    "no package {}",
                    ctx(e)
                );
                if spec.image {
                    assert!(
                        built.contains(&(run.clone(), stage.clone(), Step::Image)),
                        "no image {}",
                        ctx(e)
                    );
                }
                assert!(
                    s.frozen_at(e.time).is_none(),
                    "started while frozen {}",
                    ctx(e)
                );
                if let Some(a) = &s.approval {
                    let at = requested.get(&k).copied().expect("approval requested");
                    let deadline = a.expires.map(|d| at + Duration::from_std(d).unwrap());
                    let author = &authors[&run];
                    let mut users: Vec<String> = grants
                        .get(&k)
                        .into_iter()
                        .flatten()
                        .filter(|(_, t)| deadline.is_none_or(|d| *t < d))
                        .map(|(u, _)| u.to_ascii_lowercase())
                        .filter(|u| {
                            a.allow_self
                                || (Some(u) != author.username.as_ref()
                                    && Some(u) != author.email.as_ref())
                        })
                        .collect();
                    users.sort();
                    users.dedup();
                    assert!(
                        users.len() >= a.required as usize,
                        "{run} started {stage} with approvals {users:?} {}",
                        ctx(e)
                    );
                    assert!(
                        !rejected.contains(&k),
                        "started after a rejection {}",
                        ctx(e)
                    );
                }
                // `latest` never puts an older commit over a newer one.
                if !s.queue.eq(&gantry_pipeline::QueuePolicy::Fifo) {
                    if let Some(newest) = newest_promoted.get(stage) {
                        assert!(
                            order[&run] > order[newest],
                            "{run} starts {stage} after the newer {newest} promoted it {}",
                            ctx(e)
                        );
                    }
                }
                before.insert(k.clone(), current.get(stage).cloned());
                occupant.insert(stage.clone(), run.clone());
            }
            EventName::DeployFailed | EventName::ApisFailed if rolling.contains(&k) => {
                release(&mut occupant, &k.1, &run);
            }
            EventName::EnvPromoted => {
                assert_eq!(
                    occupant.get(&k.1),
                    Some(&run),
                    "promoted without being in the stage {}",
                    ctx(e)
                );
                assert!(
                    !rolling.contains(&k),
                    "promoted while rolling back {}",
                    ctx(e)
                );
                assert!(
                    steps_ok(&results, &k, &[Step::Deploy, Step::ApiManager, Step::Smoke]),
                    "promoted with steps {:?} {}",
                    results.get(&k),
                    ctx(e)
                );
                release(&mut occupant, &k.1, &run);
                let d: ev::EnvPromoted = e.decode().unwrap();
                release_commit.insert((k.1.clone(), run.clone()), d.commit);
                current.insert(k.1.clone(), run.clone());
                let newest = newest_promoted
                    .entry(k.1.clone())
                    .or_insert_with(|| run.clone());
                if order[&run] > order[newest.as_str()] {
                    *newest = run.clone();
                }
                promoted.insert(k);
            }
            EventName::StageRolledBack
                if rollback_of.contains_key(&run) && promoted.contains(&k) =>
            {
                // A manual rollback that promoted its stage names its target.
                let d: ev::StageRolledBack = e.decode().unwrap();
                let rb = &rollback_of[&run];
                assert_eq!(d.to_run.as_ref(), Some(&rb.to_run), "{}", ctx(e));
                assert_eq!(current.get(&k.1), Some(&run), "{}", ctx(e));
                current.insert(k.1.clone(), rb.to_run.clone());
            }
            EventName::StageRolledBack => {
                let d: ev::StageRolledBack = e.decode().unwrap();
                assert_eq!(
                    occupant.get(&k.1),
                    Some(&run),
                    "rolled back a stage it is not in {}",
                    ctx(e)
                );
                assert_eq!(
                    before.get(&k).cloned().flatten(),
                    d.to_run,
                    "rolled back to another release than the one before {}",
                    ctx(e)
                );
                if rolling.contains(&k) {
                    assert!(
                        steps_ok(&results, &k, &[Step::Deploy, Step::ApiManager]),
                        "rolled back with steps {:?} {}",
                        results.get(&k),
                        ctx(e)
                    );
                } else {
                    assert!(
                        results.get(&k).is_some_and(|r| r.iter().any(|(_, ok)| !ok)),
                        "rolled back without a failure {}",
                        ctx(e)
                    );
                }
                release(&mut occupant, &k.1, &run);
                match d.to_run {
                    Some(to) => current.insert(k.1.clone(), to),
                    None => current.remove(&k.1),
                };
            }
            n if n.is_terminal() => {
                assert!(!terminal.contains_key(&run), "{run} ends twice {}", ctx(e));
                if n == EventName::RunSucceeded {
                    for p in &plans[&run] {
                        assert!(
                            promoted.contains(&(run.clone(), p.name.clone())),
                            "{run} succeeded without promoting {}",
                            p.name
                        );
                    }
                }
                if n == EventName::RunSuperseded {
                    let d: ev::RunSuperseded = e.decode().unwrap();
                    assert!(
                        order[&d.by_run] > order[&run],
                        "superseded by an older run {}",
                        ctx(e)
                    );
                }
                terminal.insert(run.clone(), n);
                occupant.retain(|_, r| *r != run);
            }
            _ => {}
        }
    }
}

fn simulate(spec: &Spec, actions: &[Action]) -> Log {
    let mut log = Log::new(pipeline(spec.image, &spec.yaml()));
    let mut runs = 0;
    for action in actions {
        apply(&mut log, &mut runs, action);
        conduct(&mut log);
    }
    drain(&mut log);
    log
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=5000 for a longer search.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn promotion_invariants_hold(spec in spec(), actions in prop::collection::vec(action(), 0..80)) {
        let log = simulate(&spec, &actions);
        check(&log, &spec);
        let model = Model::of(&log);
        prop_assert!(model.going().is_empty());
        // Every run that was started ended exactly once (checked in `check`).
        prop_assert_eq!(model.terminal.len(), model.runs.len());
    }
}

/// A busy, deterministic history: every kind of decision shows up.
#[test]
fn a_long_simulation_reaches_every_decision() {
    let spec = Spec {
        image: true,
        stages: vec![
            StageSpec {
                after: None,
                deploy: true,
                apim: true,
                smoke: true,
                approval: None,
                fifo: false,
                freeze: None,
                timeouts: None,
            },
            StageSpec {
                after: None,
                deploy: true,
                apim: false,
                smoke: true,
                approval: Some((2, false, Some(3))),
                fifo: true,
                freeze: Some((2, 3)),
                timeouts: Some(2),
            },
        ],
    };
    let mut actions = Vec::new();
    for i in 0..200u16 {
        actions.push(match i % 9 {
            0 if i < 60 => Action::NewRun { author: i as u8 },
            1 | 2 | 3 | 5 => Action::Work {
                pick: i.wrapping_mul(7919),
                ok: i % 11 != 0,
            },
            4 | 6 => Action::Approve {
                pick: i,
                user: (i / 9) as u8,
            },
            7 if i % 5 == 0 => Action::Advance { hours: 1 },
            8 if i % 4 == 0 && i > 60 => Action::Rollback {
                stage: (i / 8) as u8,
                to: None,
            },
            _ => Action::Work { pick: i, ok: true },
        });
    }
    let log = simulate(&spec, &actions);
    check(&log, &spec);
    // Manual rollbacks happened, and at least one went through.
    let model = Model::of(&log);
    assert!(!model.rollbacks.is_empty(), "no rollback run");
    assert!(
        log.events
            .iter()
            .any(|e| e.name() == Some(EventName::StageRolledBack)
                && model
                    .rollbacks
                    .contains(e.runid.as_deref().unwrap_or_default())
                && e.data["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("rolled back by"))),
        "no manual rollback completed"
    );
    let kinds: HashSet<EventName> = log
        .events
        .iter()
        .filter(|e| e.source == "gantry/conductor")
        .filter_map(CloudEvent::name)
        .collect();
    for kind in [
        EventName::StageQueued,
        EventName::StageStarted,
        EventName::EnvPromoted,
        EventName::ApprovalRequested,
        EventName::RunSucceeded,
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
}

/// The same busy history with prod paused and resumed now and then: runs
/// reaching it wait and say why, and the invariants hold throughout.
#[test]
fn a_long_simulation_with_pauses_holds_runs_and_says_why() {
    let stage = |approval, fifo| StageSpec {
        after: None,
        deploy: true,
        apim: false,
        smoke: true,
        approval,
        fifo,
        freeze: None,
        timeouts: None,
    };
    let spec = Spec {
        image: true,
        stages: vec![stage(None, false), stage(Some((2, false, None)), true)],
    };
    let mut actions = Vec::new();
    for i in 0..240u16 {
        actions.push(match i % 10 {
            0 if i < 80 => Action::NewRun { author: i as u8 },
            // prod paused at 5, 25, 45, ... and resumed at 15, 35, ...
            5 => Action::Pause { stage: 1 },
            4 | 8 => Action::Approve {
                pick: i,
                user: (i / 10) as u8,
            },
            _ => Action::Work {
                pick: i.wrapping_mul(7919),
                ok: i % 13 != 0,
            },
        });
    }
    let log = simulate(&spec, &actions);
    check(&log, &spec);
    let waits = log
        .events
        .iter()
        .filter(|e| {
            e.name() == Some(EventName::StageQueued)
                && e.data["reason"] == "paused"
                && e.data["detail"] == "stage s1 paused by rita: stop the line"
        })
        .count();
    assert!(waits > 0, "no run waited for the paused stage");
    let model = Model::of(&log);
    assert_eq!(model.terminal.len(), model.runs.len());
}
