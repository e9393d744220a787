//! The payload (`data`) of every Gantry event, one struct per event name.
//!
//! Field names are part of the contract (DESIGN.md 1.3): dashboards and other
//! tools read them. Add fields as optional; never rename.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::plan::StagePlan;
use crate::plan::Trigger;
use crate::{EventName, EventPayload};

macro_rules! payload {
    ($ty:ident => $name:ident) => {
        impl EventPayload for $ty {
            const NAME: EventName = EventName::$name;
        }
    };
}

/// A commit author or committer as the webhook or repository reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Person {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The forge account name, when the forge sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl Person {
    /// Whether `who` (a user name or an email address) names this person:
    /// the forge username or the email, compared case-insensitively.
    pub fn is(&self, who: &str) -> bool {
        let who = who.trim();
        !who.is_empty()
            && [&self.username, &self.email]
                .into_iter()
                .flatten()
                .any(|id| id.trim().eq_ignore_ascii_case(who))
    }
}

/// A verified webhook or manual trigger named a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommitReceived {
    /// `github`, `gitlab`, `gitea`, `bitbucket`, `generic` or `manual`.
    pub provider: String,
    /// The forge's delivery id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// The pipeline's `source.repo`.
    pub repository: String,
    pub branch: String,
    /// Full commit sha.
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Person>,
    /// The commit's committer, when it differs from the author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Person>,
    /// Who pushed, as the forge authenticated them (GitHub `pusher`/`sender`,
    /// GitLab `user_*`, Bitbucket `actor`): unlike the commit's metadata, a
    /// pusher cannot be forged by writing another name into the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<Person>,
    /// Who asked for a manual trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
    /// The run this commit starts.
    pub run_id: String,
}
payload!(CommitReceived => CommitReceived);

/// A run exists for (pipeline, commit), with its stage plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStarted {
    pub run_id: String,
    pub commit: String,
    pub branch: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Person>,
    /// Everyone who counts as an author of the run for separation of duties
    /// (`allow_self: false`): the commit's author and committer, the
    /// webhook's pusher/sender, whoever triggered the run by hand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<Person>,
    pub trigger: Trigger,
    pub stages: Vec<StagePlan>,
    /// Set on a manual rollback: this run re-promotes an earlier release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackOf>,
}
payload!(RunStarted => RunStarted);

/// What a rollback run re-promotes, and who asked for it.
///
/// A rollback run has one stage; its package and image are the earlier
/// release's, so nothing is built again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RollbackOf {
    pub stage: String,
    /// The run whose release the stage goes back to.
    pub to_run: String,
    /// That release's package digest for the stage.
    pub package: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub requested_by: String,
    pub reason: String,
}

/// A problem found in the configuration, as precisely located as possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Diagnostic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// The field or placeholder concerned, e.g. `stages[1].deploy.gitops.repo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// An environmentalized package for one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PackageBuilt {
    pub stage: String,
    /// `sha256:<hex>` of the archive.
    pub digest: String,
    pub size: u64,
    pub files: u64,
    /// `yaml`, `fed` or `pol-env`.
    pub format: String,
    /// `sha256:<hex>` of the stage's effective values (secrets excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_digest: Option<String>,
    /// Where the archive is stored, for people: a path under the data dir
    /// in embedded mode, `nats-object://<bucket>/sha256-<hex>` in
    /// distributed mode (never one machine's path). Readers fetch the
    /// package by `digest` from their own package store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The commit the package was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The commit's committer time: the reproducible creation time of what
    /// is built from the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_at: Option<DateTime<Utc>>,
}
payload!(PackageBuilt => PackageBuilt);

/// The stage's package could not be built; every problem found is listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PackageFailed {
    pub stage: String,
    pub reason: String,
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
}
payload!(PackageFailed => PackageFailed);

/// The stage's image is in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePushed {
    pub stage: String,
    pub repository: String,
    pub tag: String,
    /// Manifest digest, `sha256:<hex>`.
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_digest: Option<String>,
    #[serde(default)]
    pub bytes_uploaded: u64,
    #[serde(default)]
    pub bytes_reused: u64,
}
payload!(ImagePushed => ImagePushed);

/// The stage's image could not be built or pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageFailed {
    pub stage: String,
    pub reason: String,
}
payload!(ImageFailed => ImageFailed);

/// A promotion into a stage waits; `reason` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageQueued {
    pub stage: String,
    /// `queue`, `approval`, `freeze` or `dependencies`.
    pub reason: String,
    /// The run ahead of this one in the stage's queue, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<String>,
    /// When a freeze window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Who paused the stage, for reason `paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why it waits, in words, when the reason alone does not say it
    /// (`stage prod paused by rita: incident 4711`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
payload!(StageQueued => StageQueued);

/// A promotion into a stage begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageStarted {
    pub stage: String,
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// True when this promotion re-deploys an earlier release (rollback).
    #[serde(default)]
    pub rollback: bool,
}
payload!(StageStarted => StageStarted);

/// The stage runs the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployCompleted {
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The deploy target's revision (a gitops commit sha, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Captured command output, secrets masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
}
payload!(DeployCompleted => DeployCompleted);

/// Deploying (or waiting for readiness) failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployFailed {
    pub stage: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}
payload!(DeployFailed => DeployFailed);

/// One change applied to API Manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiChange {
    /// What changed: an API (`name` + `path`), an organization or an application.
    pub target: String,
    /// `create`, `update`, `republish`, `recreate`, `grant`, `subscribe`, ...
    pub action: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// API Manager data reconciled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApisPromoted {
    pub stage: String,
    #[serde(default)]
    pub changes: Vec<ApiChange>,
}
payload!(ApisPromoted => ApisPromoted);

/// API Manager data could not be reconciled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApisFailed {
    pub stage: String,
    pub reason: String,
    /// Fields that would need a breaking change the stage does not allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaking_fields: Vec<String>,
}
payload!(ApisFailed => ApisFailed);

/// The result of one smoke check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Every smoke check of the stage passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SmokePassed {
    pub stage: String,
    pub checks: Vec<CheckResult>,
}
payload!(SmokePassed => SmokePassed);

/// At least one smoke check failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SmokeFailed {
    pub stage: String,
    pub checks: Vec<CheckResult>,
}
payload!(SmokeFailed => SmokeFailed);

/// The thresholds a perf scenario had to meet, as the stage wrote them
/// (latencies in milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PerfExpect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
}

/// What one perf scenario measured, warm-up excluded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PerfFigures {
    /// The scenario's name (`perf` when the stage has one).
    pub scenario: String,
    /// Requests answered or failed in the measured period.
    pub requests: u64,
    /// Non-2xx answers, transport errors and timeouts among them.
    pub errors: u64,
    pub duration_ms: u64,
    /// Successful requests per second.
    pub tps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    pub expect: PerfExpect,
    /// The thresholds not met (`min_tps`, `max_p95`, `max_p99`,
    /// `max_error_rate`); empty when the scenario passed.
    #[serde(default)]
    pub failed: Vec<String>,
}

/// The stage met every perf threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PerfPassed {
    pub stage: String,
    /// The last scenario's figures (the only one's, usually).
    #[serde(flatten)]
    pub figures: PerfFigures,
    /// Every scenario's figures, when the stage has more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scenarios: Vec<PerfFigures>,
}
payload!(PerfPassed => PerfPassed);

/// A perf threshold was not met, or the load could not be driven.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PerfFailed {
    pub stage: String,
    /// The failing scenario's figures (zero when no load could be driven).
    #[serde(flatten)]
    pub figures: PerfFigures,
    /// Why, in words: each threshold with the figure that missed it, or
    /// what stopped the load.
    pub reason: String,
    /// Every scenario run, when the stage has more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scenarios: Vec<PerfFigures>,
}
payload!(PerfFailed => PerfFailed);

/// A guarded stage waits for approvals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRequested {
    pub stage: String,
    pub required: u32,
    pub approvers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}
payload!(ApprovalRequested => ApprovalRequested);

/// A release manager approved the promotion into a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalGranted {
    pub stage: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}
payload!(ApprovalGranted => ApprovalGranted);

/// A release manager rejected the promotion; the run stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRejected {
    pub stage: String,
    pub user: String,
    pub reason: String,
}
payload!(ApprovalRejected => ApprovalRejected);

/// The stage now runs this run's release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvPromoted {
    pub stage: String,
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}
payload!(EnvPromoted => EnvPromoted);

/// The stage went back to an earlier release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageRolledBack {
    pub stage: String,
    pub reason: String,
    /// The run whose release the stage runs again, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_commit: Option<String>,
}
payload!(StageRolledBack => StageRolledBack);

/// Stop the line: the stage starts no new promotion until it is resumed
/// (a promotion already in it runs to its end). Recorded on the stream
/// `stage-<pipeline>-<stage>`, without a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StagePaused {
    pub stage: String,
    /// Who paused it (the API token's user).
    pub user: String,
    pub reason: String,
}
payload!(StagePaused => StagePaused);

/// The stage promotes again; runs waiting for it go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageResumed {
    pub stage: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
payload!(StageResumed => StageResumed);

/// Terminal: every stage promoted this run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct RunSucceeded {}
payload!(RunSucceeded => RunSucceeded);

/// Terminal: a step failed or an approval was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunFailed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub reason: String,
}
payload!(RunFailed => RunFailed);

/// Terminal: a newer run took this one's place in a `latest` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunSuperseded {
    pub stage: String,
    pub by_run: String,
}
payload!(RunSuperseded => RunSuperseded);

/// Terminal: someone cancelled the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCancelled {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
payload!(RunCancelled => RunCancelled);
