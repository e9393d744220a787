//! Test helpers: pipelines from YAML, and a log that records events the way
//! the store would (sequence, time) and appends what `decide` returns.

use chrono::{DateTime, Duration, Utc};
use gantry_proto::events::{self as ev, Person};
use gantry_proto::{CloudEvent, EventPayload, Trigger};

use super::{decide, rollback_target, Decision, Outcome};
use gantry_pipeline::{parse_str, Pipeline, Timeouts};

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
        .expect("valid time")
        .with_timezone(&Utc)
}

pub fn at_hours(h: i64) -> DateTime<Utc> {
    t0() + Duration::hours(h)
}

/// The source of late answers (`gantry/late`).
pub const LATE: &str = "late";

pub const REPO: &str = "registry.example.com/apim/demo";

/// A pipeline named `demo` with the given `stages:` items (YAML, indented by two).
pub fn pipeline(image: bool, stages: &str) -> Pipeline {
    let image = if image {
        format!("image:\n  base: registry.example.com/axway/apigw-emt:7.7\n  repository: {REPO}\n")
    } else {
        String::new()
    };
    let text = format!(
        "name: demo\nsource:\n  repo: /srv/git/demo.git\ngateway:\n  format: yaml\n  path: gateway/\napis:\n  path: apis/\n{image}stages:\n{stages}"
    );
    let mut p = match parse_str("demo.yaml", &text) {
        Ok(p) => p,
        Err(e) => panic!("invalid test pipeline: {e}\n{text}"),
    };
    // Tests move the clock by hours; steps time out only where a test
    // says so (`timeouts:` on the stage).
    for stage in &mut p.stages {
        if stage.timeouts.is_empty() {
            let long = Some(std::time::Duration::from_secs(10_000 * 3600));
            stage.timeouts = Timeouts {
                package: long,
                image: long,
                deploy: long,
                ready: long,
                apimanager: long,
                smoke: long,
                perf: long,
            };
        }
    }
    p
}

pub const DEPLOY: &str = "    deploy: { command: [\"deploy\"] }\n";
pub const APIM: &str = "    apimanager: { url: \"https://apim.example.com:8075\", username: \"env:APIM_USER\", password: \"env:APIM_PASS\" }\n";
pub const SMOKE: &str =
    "    smoke: [ { name: up, request: { url: \"https://gw.example.com/healthcheck\" } } ]\n";

pub fn person(user: &str) -> Person {
    Person {
        name: Some(format!("{user} example")),
        email: Some(format!("{user}@example.com")),
        username: Some(user.to_owned()),
    }
}

pub fn commit_of(run: &str) -> String {
    format!("{run}0000")
}

/// The events of one pipeline, in log order.
pub struct Log {
    pub pipeline: Pipeline,
    pub events: Vec<CloudEvent>,
    pub now: DateTime<Utc>,
}

impl Log {
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            events: Vec::new(),
            now: t0(),
        }
    }

    pub fn record(&mut self, mut event: CloudEvent) {
        event.time = self.now;
        event.sequence = Some(self.events.len() as i64 + 1);
        self.events.push(event);
    }

    /// A worker's answer to `cause` (its cue), recorded after the step's
    /// deadline passed.
    pub fn push_late<P: EventPayload>(&mut self, run: &str, payload: P, cause: uuid::Uuid) {
        let mut event = CloudEvent::new(LATE, &self.pipeline.name, Some(run), &payload);
        event.causationid = Some(cause);
        self.record(event);
    }

    pub fn push<P: EventPayload>(&mut self, run: &str, payload: P) {
        let event = CloudEvent::new("worker", &self.pipeline.name, Some(run), &payload);
        self.record(event);
    }

    pub fn start_run(&mut self, run: &str, author: &str) {
        self.start_run_by(run, author, &[]);
    }

    /// A run whose commit `author` wrote and that `others` (committer,
    /// pusher, the user who triggered it) count as authors of too.
    pub fn start_run_by(&mut self, run: &str, author: &str, others: &[&str]) {
        let commit = commit_of(run);
        self.push(
            run,
            ev::CommitReceived {
                provider: "manual".into(),
                delivery_id: None,
                repository: self.pipeline.source.repo.clone(),
                branch: "main".into(),
                commit: commit.clone(),
                message: None,
                author: Some(person(author)),
                committer: None,
                pusher: None,
                triggered_by: None,
                run_id: run.into(),
            },
        );
        let stages = self.pipeline.run_plan();
        self.push(
            run,
            ev::RunStarted {
                run_id: run.into(),
                commit,
                branch: "main".into(),
                repository: self.pipeline.source.repo.clone(),
                message: None,
                author: Some(person(author)),
                authors: others.iter().map(|o| person(o)).collect(),
                trigger: Trigger::Manual,
                stages,
                rollback: None,
            },
        );
    }

    /// A manual rollback run of `stage`, as `gantry_runtime::trigger::start_rollback`
    /// records it.
    pub fn start_rollback(&mut self, run: &str, stage: &str, to: Option<&str>) {
        let target = rollback_target(&self.pipeline, &self.events, stage, to).expect("target");
        let steps = self.pipeline.rollback_steps(stage);
        self.push(
            run,
            ev::RunStarted {
                run_id: run.into(),
                commit: target.commit.clone(),
                branch: "main".into(),
                repository: self.pipeline.source.repo.clone(),
                message: None,
                author: None,
                authors: Vec::new(),
                trigger: Trigger::Rollback,
                stages: vec![ev::StagePlan {
                    name: stage.into(),
                    after: None,
                    steps,
                }],
                rollback: Some(ev::RollbackOf {
                    stage: stage.into(),
                    to_run: target.run,
                    package: target.package,
                    image: target.image,
                    digest: target.digest,
                    requested_by: "rita".into(),
                    reason: "errors".into(),
                }),
            },
        );
    }

    pub fn decide(&self) -> Outcome {
        decide(&self.pipeline, self.now, &self.events)
    }

    /// Decides, checks that deciding again changes nothing, appends.
    pub fn step(&mut self) -> Vec<Decision> {
        let outcome = self.decide();
        assert_eq!(self.decide(), outcome, "decide is deterministic");
        for d in &outcome.decisions {
            let event = d.into_event(&self.pipeline.name);
            self.record(event);
        }
        let again = self.decide();
        assert!(
            again.decisions.is_empty(),
            "decisions repeated after being appended: {:#?}\nfirst: {:#?}",
            again.decisions,
            outcome.decisions
        );
        outcome.decisions
    }

    pub fn package(&mut self, run: &str, stage: &str) {
        self.push(
            run,
            ev::PackageBuilt {
                stage: stage.into(),
                digest: format!("sha256:pkg-{run}-{stage}"),
                size: 1,
                files: 1,
                format: "yaml".into(),
                values_digest: None,
                location: None,
                commit: Some(commit_of(run)),
                committed_at: None,
            },
        );
    }

    pub fn image(&mut self, run: &str, stage: &str) {
        self.push(
            run,
            ev::ImagePushed {
                stage: stage.into(),
                repository: REPO.into(),
                tag: format!("{stage}-{run}"),
                digest: format!("sha256:img-{run}-{stage}"),
                parent_digest: None,
                bytes_uploaded: 0,
                bytes_reused: 0,
            },
        );
    }

    /// Package (and image, when the pipeline has one) of every stage.
    pub fn build_all(&mut self, run: &str) {
        let stages: Vec<String> = self
            .pipeline
            .stages
            .iter()
            .map(|s| s.name.clone())
            .collect();
        for stage in stages {
            self.package(run, &stage);
            if self.pipeline.image.is_some() {
                self.image(run, &stage);
            }
        }
    }

    pub fn deployed(&mut self, run: &str, stage: &str) {
        self.push(
            run,
            ev::DeployCompleted {
                stage: stage.into(),
                image: None,
                digest: None,
                revision: None,
                output: None,
                duration_ms: 1,
            },
        );
    }

    pub fn deploy_failed(&mut self, run: &str, stage: &str, reason: &str) {
        self.push(
            run,
            ev::DeployFailed {
                stage: stage.into(),
                reason: reason.into(),
                output: None,
            },
        );
    }

    pub fn apis_promoted(&mut self, run: &str, stage: &str) {
        self.push(
            run,
            ev::ApisPromoted {
                stage: stage.into(),
                changes: Vec::new(),
            },
        );
    }

    pub fn apis_failed(&mut self, run: &str, stage: &str, reason: &str) {
        self.push(
            run,
            ev::ApisFailed {
                stage: stage.into(),
                reason: reason.into(),
                breaking_fields: Vec::new(),
            },
        );
    }

    pub fn smoke(&mut self, run: &str, stage: &str, passed: bool) {
        let checks = vec![ev::CheckResult {
            name: "up".into(),
            passed,
            status: Some(if passed { 200 } else { 503 }),
            duration_ms: 1,
            attempts: 1,
            message: None,
        }];
        if passed {
            self.push(
                run,
                ev::SmokePassed {
                    stage: stage.into(),
                    checks,
                },
            );
        } else {
            self.push(
                run,
                ev::SmokeFailed {
                    stage: stage.into(),
                    checks,
                },
            );
        }
    }

    pub fn grant(&mut self, run: &str, stage: &str, user: &str) {
        self.push(
            run,
            ev::ApprovalGranted {
                stage: stage.into(),
                user: user.into(),
                comment: None,
            },
        );
    }

    pub fn reject(&mut self, run: &str, stage: &str, user: &str) {
        self.push(
            run,
            ev::ApprovalRejected {
                stage: stage.into(),
                user: user.into(),
                reason: "not now".into(),
            },
        );
    }

    /// `stage.paused` as the API records it: no run.
    pub fn pause(&mut self, stage: &str, user: &str, reason: &str) {
        let payload = ev::StagePaused {
            stage: stage.into(),
            user: user.into(),
            reason: reason.into(),
        };
        let event = CloudEvent::new("api", &self.pipeline.name, None, &payload);
        self.record(event);
    }

    pub fn resume(&mut self, stage: &str, user: &str) {
        let payload = ev::StageResumed {
            stage: stage.into(),
            user: user.into(),
            reason: None,
        };
        let event = CloudEvent::new("api", &self.pipeline.name, None, &payload);
        self.record(event);
    }

    pub fn cancel(&mut self, run: &str) {
        self.push(
            run,
            ev::RunCancelled {
                user: "ops".into(),
                reason: None,
            },
        );
    }
}
