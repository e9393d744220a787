//! The pipeline definition as written in `pipelines/*.yaml` (DESIGN.md 1.2).
//!
//! Every struct denies unknown keys: a misspelt `aprovers:` silently ignored
//! would disable a guard on production. Defaults live here (branch `main`,
//! queue `latest`, one approval...) so consumers never re-derive them.
//! Semantic rules (names, references between stages, URLs) are checked after
//! parsing by `validate`, so that all problems are reported at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gantry_proto::events::StagePlan;
use gantry_proto::Step;
use serde::{Deserialize, Serialize};

use super::duration::{serde_duration, serde_opt_duration};
use super::secret::{EnvValue, HeaderValue, SecretRef};
use super::verify::{ArgoCd, KubernetesTarget, PerfScenario};

/// One promotion pipeline: where its configuration comes from, how it is
/// packaged, and the stages a commit is promoted through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `[a-z0-9-]{1,63}`; used in NATS subjects and URLs.
    pub name: String,
    pub source: Source,
    pub gateway: Gateway,
    /// apim-cli style API configurations promoted by `apimanager` stages.
    #[serde(default)]
    pub apis: Option<Apis>,
    /// Without an image the pipeline stops at packages (a deploy can mount them).
    #[serde(default)]
    pub image: Option<Image>,
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// Who may trigger runs and operate them (cancel, roll back); see
    /// [`Access`]. Absent: any token holder.
    #[serde(default)]
    pub access: Option<Access>,
    /// Where the pipeline's events are sent as they happen (the `notifier`
    /// service; DESIGN.md 1.9).
    #[serde(default)]
    pub notify: Vec<Notify>,
}

/// One notification target (`notify[]`): matching events are POSTed to
/// `url`, signed when `secret` is set, retried, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// `https://…`, or `env:NAME` / `file:/path` for a URL that is itself a
    /// secret (a Slack incoming webhook's is).
    pub url: HeaderValue,
    /// HMAC-SHA256 key of `X-Gantry-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// Event names (`run.failed`, `approval.requested`, …); absent or
    /// empty: every event of the pipeline.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub format: NotifyFormat,
}

/// What a notification's body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// The CloudEvent, in structured mode (`application/cloudevents+json`).
    #[default]
    Cloudevents,
    /// A Slack incoming-webhook message (`{"text": …}`).
    Slack,
}

impl Notify {
    /// Whether events named `name` (`run.failed`) go to this target.
    pub fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == name)
    }
}

/// Groups (or users) from `GANTRY_API_TOKENS` allowed to act on a pipeline.
/// A list that is absent keeps the default: any token holder may trigger and
/// cancel, a stage's approver groups may roll it back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// May start runs by hand (`gantry trigger`, `POST /api/v1/runs`).
    #[serde(default)]
    pub trigger: Option<Vec<String>>,
    /// May cancel runs and roll stages back.
    #[serde(default)]
    pub operate: Option<Vec<String>>,
}

/// The Git repository holding the gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A URL (`https://`, `ssh://`, `git@host:owner/repo`) or an absolute local path.
    pub repo: String,
    /// The branch whose pushes start runs (short name, no `refs/heads/`).
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// The secret a webhook delivery for this repository is signed with.
    #[serde(default)]
    pub webhook_secret: Option<SecretRef>,
    /// The forge's full name (`acme/banking-config`), for when the payload's
    /// URLs cannot match `repo` (e.g. a mirror).
    #[serde(default)]
    pub webhook_repo: Option<String>,
    /// Bounds each git fetch from `repo`; default [`Source::DEFAULT_TIMEOUT`].
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

impl Source {
    /// A fetch that takes longer than this is abandoned.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 60);

    pub fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }
}

/// How the gateway configuration is stored in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub format: GatewayFormat,
    /// yaml: project directory; fed: the `.fed` file; pol-env: directory with
    /// `*.pol` and `<stage>.env`. Relative to the repository root.
    pub path: PathBuf,
    /// Copied to `/merge/apigateway` in the image.
    #[serde(default)]
    pub merge_dir: Option<PathBuf>,
    /// yaml only: fill the `{{ ... }}` placeholders at build time rather than
    /// leaving them to the gateway at start.
    #[serde(default)]
    pub render: bool,
    /// yaml only: where in the image the package goes (an absolute path).
    #[serde(default)]
    pub yaml_path: Option<String>,
}

/// Axway configuration formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayFormat {
    /// The YAML Entity Store project tree.
    Yaml,
    /// A deployment package (`.fed`).
    Fed,
    /// A policy package plus per-stage environment packages.
    PolEnv,
}

impl GatewayFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayFormat::Yaml => "yaml",
            GatewayFormat::Fed => "fed",
            GatewayFormat::PolEnv => "pol-env",
        }
    }
}

impl std::fmt::Display for GatewayFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// API Manager configurations in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apis {
    pub path: PathBuf,
}

/// The per-stage image built on an EMT parent image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Parent image reference, or `oci:<dir>:<tag>` for an OCI layout on disk.
    pub base: String,
    /// Where built images are pushed (no tag), or `oci:<dir>`.
    pub repository: String,
    /// Plain HTTP to a non-loopback registry (loopback always is).
    #[serde(default)]
    pub insecure: bool,
    /// `os/arch[/variant]` of the parent to use from a multi-platform index.
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
}

/// Registry credentials, used for both pulling the base and pushing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: SecretRef,
    pub password: SecretRef,
}

/// One environment a commit is promoted into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// The stage this one follows; default: the previous stage in the file.
    /// Use [`Pipeline::stage_plan`] rather than reading it directly.
    #[serde(default)]
    pub after: Option<String>,
    /// yaml only: overlay on the project's `values.yaml`, relative to the repo.
    #[serde(default)]
    pub values: Option<PathBuf>,
    #[serde(default)]
    pub deploy: Option<Deploy>,
    #[serde(default)]
    pub ready: Option<Ready>,
    #[serde(default)]
    pub apimanager: Option<ApiManager>,
    #[serde(default)]
    pub smoke: Vec<SmokeCheck>,
    /// The performance gate after smoke (DESIGN.md 1.10): one scenario or
    /// a list, run one after the other.
    #[serde(
        default,
        with = "crate::verify::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub perf: Vec<PerfScenario>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub freeze: Vec<FreezeWindow>,
    #[serde(default)]
    pub queue: QueuePolicy,
    /// The only variables repository content may use (values files'
    /// `env:NAME`, `{{ env "NAME" }}`, `${NAME}` in API Manager configs),
    /// each a literal or a secret reference read on Gantry's side
    /// (DESIGN.md 1.7). Deploy commands get them in their environment.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Deadlines of the stage's steps; see [`Stage::timeout`].
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
}

/// `stages[].timeouts`: a deadline per step, overriding the defaults
/// (DESIGN.md 1.2). A step past its deadline fails like any failed step, so
/// no run waits forever for an answer that never comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub package: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub deploy: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ready: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub apimanager: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub smoke: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub perf: Option<Duration>,
}

impl Timeouts {
    /// Checkout and packaging of every stage, from `run.started`.
    pub const PACKAGE: Duration = Duration::from_secs(10 * 60);
    /// Pulling the base and pushing the stage image, from `package.built`.
    pub const IMAGE: Duration = Duration::from_secs(30 * 60);
    /// The deploy itself, from `stage.started` (also `deploy.timeout`).
    pub const DEPLOY: Duration = Deploy::DEFAULT_TIMEOUT;
    /// Readiness polling after the deploy (also `ready.timeout`).
    pub const READY: Duration = Duration::from_secs(5 * 60);
    /// API Manager reconciliation, from the step before it.
    pub const APIMANAGER: Duration = Duration::from_secs(10 * 60);
    /// Every smoke check of the stage together, from the step before it.
    pub const SMOKE: Duration = Duration::from_secs(10 * 60);
    /// Every perf scenario of the stage together, warm-ups included.
    pub const PERF: Duration = Duration::from_secs(30 * 60);

    /// The default deadline of `step` (none for `approval`, which has
    /// `approval.expires`).
    pub const fn default_for(step: Step) -> Option<Duration> {
        match step {
            Step::Package => Some(Self::PACKAGE),
            Step::Image => Some(Self::IMAGE),
            Step::Approval => None,
            Step::Deploy => Some(Self::DEPLOY),
            Step::Ready => Some(Self::READY),
            Step::ApiManager => Some(Self::APIMANAGER),
            Step::Smoke => Some(Self::SMOKE),
            Step::Perf => Some(Self::PERF),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.written().iter().all(|(_, t)| t.is_none())
    }

    /// Every key with its value, for validation (`perf` included).
    pub fn written(&self) -> [(&'static str, Option<Duration>); 7] {
        [
            ("package", self.package),
            ("image", self.image),
            ("deploy", self.deploy),
            ("ready", self.ready),
            ("apimanager", self.apimanager),
            ("smoke", self.smoke),
            ("perf", self.perf),
        ]
    }
}

impl Stage {
    /// The deadline of `step` in this stage: `timeouts.<step>`, else the
    /// step's own setting (`deploy.timeout`, `deploy.kubernetes.timeout`,
    /// `ready.timeout`), else the
    /// default ([`Timeouts::default_for`]). `None` for `approval`.
    pub fn timeout(&self, step: Step) -> Option<Duration> {
        let t = &self.timeouts;
        let written = match step {
            Step::Package => t.package,
            Step::Image => t.image,
            Step::Approval => return None,
            Step::Deploy => t.deploy.or_else(|| {
                let d = self.deploy.as_ref()?;
                d.timeout
                    .or_else(|| d.kubernetes.as_ref().and_then(|k| k.timeout))
            }),
            Step::Ready => t.ready.or_else(|| self.ready.as_ref().map(|r| r.timeout)),
            Step::ApiManager => t.apimanager,
            Step::Smoke => t.smoke,
            Step::Perf => t.perf,
        };
        written.or(Timeouts::default_for(step))
    }

    /// Every secret reference of the stage: its `env` secrets, API Manager
    /// credentials, the gitops token, kubeconfigs, the Argo CD token and
    /// smoke-check and perf headers.
    pub fn secret_refs(&self) -> Vec<&SecretRef> {
        let mut refs: Vec<&SecretRef> =
            self.env.values().filter_map(EnvValue::secret_ref).collect();
        if let Some(a) = &self.apimanager {
            refs.extend([&a.username, &a.password]);
        }
        if let Some(t) = self
            .deploy
            .as_ref()
            .and_then(|d| d.gitops.as_ref())
            .and_then(|g| g.token.as_ref())
        {
            refs.push(t);
        }
        let kubeconfigs = [
            self.deploy.as_ref().and_then(|d| d.kubernetes.as_ref()),
            self.ready.as_ref().and_then(|r| r.kubernetes.as_ref()),
        ];
        refs.extend(
            kubeconfigs
                .into_iter()
                .flatten()
                .filter_map(|k| k.kubeconfig.as_ref()),
        );
        refs.extend(
            self.ready
                .as_ref()
                .and_then(|r| r.argocd.as_ref())
                .map(|a| &a.token),
        );
        let requests = self
            .smoke
            .iter()
            .map(|c| &c.request)
            .chain(self.perf.iter().map(|p| &p.request));
        for request in requests {
            refs.extend(request.headers.values().filter_map(HeaderValue::secret_ref));
        }
        refs
    }

    /// Whether `at` falls inside one of the stage's freeze windows.
    pub fn frozen_at(&self, at: DateTime<Utc>) -> Option<&FreezeWindow> {
        self.freeze.iter().find(|w| w.contains(at))
    }
}

/// How a stage runs an image: exactly one of `gitops`, `kubernetes` or
/// `command` (checked by validation; see [`Deploy::method`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    #[serde(default)]
    pub gitops: Option<GitOpsDeploy>,
    /// Set the Deployment's container image to `<repository>@<digest>`
    /// and wait for its rollout (clusters without GitOps).
    #[serde(default)]
    pub kubernetes: Option<KubernetesTarget>,
    /// Run with `$GANTRY_IMAGE`, `$GANTRY_DIGEST` and `$GANTRY_STAGE` set.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, with = "serde_opt_duration")]
    pub timeout: Option<Duration>,
}

/// A validated view of [`Deploy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployMethod<'a> {
    GitOps(&'a GitOpsDeploy),
    Kubernetes(&'a KubernetesTarget),
    Command(&'a [String]),
}

impl Deploy {
    /// Every step has a timeout; this one applies when none is written.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

    /// Which deploy mechanism to use (validation guarantees exactly one).
    pub fn method(&self) -> DeployMethod<'_> {
        match (&self.gitops, &self.kubernetes) {
            (Some(g), _) => DeployMethod::GitOps(g),
            (None, Some(k)) => DeployMethod::Kubernetes(k),
            (None, None) => DeployMethod::Command(&self.command),
        }
    }

    pub fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }
}

/// Deploy by committing the new image reference to a GitOps repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitOpsDeploy {
    pub repo: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// YAML file in that repository, relative to its root.
    pub file: PathBuf,
    /// Dotted key in that file that holds the image (`apitraffic.image`).
    pub key: String,
    #[serde(default)]
    pub token: Option<SecretRef>,
}

/// Wait until the stage runs the release: the Argo CD Application synced
/// to the deploy commit and Healthy, the Deployment's rollout of the digest
/// complete, the gateway answering `url` (each when given, in that order;
/// at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesTarget>,
    #[serde(default)]
    pub argocd: Option<ArgoCd>,
    #[serde(default = "default_ready_timeout", with = "serde_duration")]
    pub timeout: Duration,
}

/// Promote API Manager data into this stage's API Manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiManager {
    pub url: String,
    pub username: SecretRef,
    pub password: SecretRef,
    #[serde(default)]
    pub version: ApimVersion,
    /// Skip TLS verification (self-signed API Manager in a test stage).
    #[serde(default)]
    pub insecure: bool,
    /// A CA bundle (PEM file) to trust for this API Manager.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Allow changes that break API consumers (apim-cli's `force`).
    #[serde(default)]
    pub breaking_changes: bool,
}

/// API Manager REST API version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApimVersion {
    #[serde(rename = "v1.3", alias = "1.3")]
    V1_3,
    #[default]
    #[serde(rename = "v1.4", alias = "1.4")]
    V1_4,
}

impl ApimVersion {
    /// The REST API base path, e.g. `/api/portal/v1.4`.
    pub fn base_path(self) -> &'static str {
        match self {
            ApimVersion::V1_3 => "/api/portal/v1.3",
            ApimVersion::V1_4 => "/api/portal/v1.4",
        }
    }
}

/// One HTTP check against the deployed gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCheck {
    pub name: String,
    pub request: SmokeRequest,
    /// Omitted: any 2xx status passes.
    #[serde(default)]
    pub expect: SmokeExpect,
    #[serde(default, with = "serde_opt_duration")]
    pub timeout: Option<Duration>,
    /// Follow redirects (same origin keeps the headers; another origin gets
    /// none of the check's headers). Off by default: a redirect is answered
    /// as it is.
    #[serde(default)]
    pub follow_redirects: bool,
}

impl SmokeCheck {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeRequest {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    /// Literal values or secret references (`KeyId: env:TEST_KEY`).
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    #[serde(default)]
    pub body: Option<String>,
}

/// What a smoke check's response must satisfy; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeExpect {
    /// Exact status; omitted means any 2xx.
    #[serde(default)]
    pub status: Option<u16>,
    /// Header name (case-insensitive) → exact value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON pointer (RFC 6901, e.g. `/0/id`) → expected JSON value.
    #[serde(default)]
    pub json: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default, with = "serde_opt_duration")]
    pub max_latency: Option<Duration>,
}

/// A human gate before promotion into the stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Distinct approvals needed.
    #[serde(default = "default_required")]
    pub required: u32,
    /// Users or groups (from `GANTRY_API_TOKENS`) allowed to approve.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Whether the commit's author may approve their own change.
    #[serde(default)]
    pub allow_self: bool,
    /// A pending request lapses after this long.
    #[serde(default, with = "serde_opt_duration")]
    pub expires: Option<Duration>,
}

/// A period during which nothing is promoted into the stage: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    #[serde(with = "rfc3339")]
    pub from: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub to: DateTime<Utc>,
}

impl FreezeWindow {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at < self.to
    }
}

/// What happens to runs waiting for a busy stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueuePolicy {
    /// A newer run supersedes queued ones: only the latest commit waits.
    #[default]
    Latest,
    /// Every run waits its turn.
    Fifo,
}

/// A stage with the stage it follows made explicit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedStage<'a> {
    pub stage: &'a Stage,
    /// `None` for the first stage.
    pub after: Option<&'a str>,
}

impl Pipeline {
    /// Stages in file order, each with its effective predecessor: `after`
    /// when written, else the previous stage; the first stage has none.
    pub fn stage_plan(&self) -> Vec<PlannedStage<'_>> {
        self.stages
            .iter()
            .enumerate()
            .map(|(i, stage)| PlannedStage {
                stage,
                after: stage.after.as_deref().or_else(|| {
                    i.checked_sub(1)
                        .and_then(|prev| self.stages.get(prev))
                        .map(|s| s.name.as_str())
                }),
            })
            .collect()
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The steps `stage` has under this definition, in [`Step::ORDER`].
    pub fn steps(&self, stage: &Stage) -> Vec<Step> {
        Step::ORDER
            .iter()
            .copied()
            .filter(|step| match step {
                Step::Package => true,
                Step::Image => self.image.is_some(),
                Step::Approval => stage.approval.is_some(),
                Step::Deploy => stage.deploy.is_some(),
                Step::Ready => stage.ready.is_some(),
                Step::ApiManager => stage.apimanager.is_some(),
                Step::Smoke => !stage.smoke.is_empty(),
                Step::Perf => !stage.perf.is_empty(),
            })
            .collect()
    }

    /// The stage plan a run of this pipeline follows, frozen in its
    /// `run.started` when the run starts: each stage's name, the stage it
    /// follows and its [`steps`](Self::steps).
    pub fn run_plan(&self) -> Vec<StagePlan> {
        self.stage_plan()
            .into_iter()
            .map(|p| StagePlan {
                name: p.stage.name.clone(),
                after: p.after.map(str::to_owned),
                steps: self.steps(p.stage),
            })
            .collect()
    }

    /// The steps of a rollback run of `stage`: the stage's own, less the
    /// gates (the release exists already, and asking was the decision).
    pub fn rollback_steps(&self, stage: &str) -> Vec<Step> {
        self.stage(stage)
            .map(|s| self.steps(s))
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.is_gate())
            .collect()
    }

    /// Every secret reference of the pipeline: source and registry
    /// credentials, and each stage's ([`Stage::secret_refs`]).
    pub fn secret_refs(&self) -> Vec<&SecretRef> {
        let mut refs: Vec<&SecretRef> = [&self.source.token, &self.source.webhook_secret]
            .into_iter()
            .flatten()
            .collect();
        if let Some(auth) = self.image.as_ref().and_then(|i| i.auth.as_ref()) {
            refs.extend([&auth.username, &auth.password]);
        }
        for stage in &self.stages {
            refs.extend(stage.secret_refs());
        }
        for target in &self.notify {
            refs.extend(target.url.secret_ref());
            refs.extend(target.secret.as_ref());
        }
        refs
    }
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_required() -> u32 {
    1
}

fn default_ready_timeout() -> Duration {
    Timeouts::READY
}

/// RFC 3339 timestamps with a clearer error than chrono's.
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                de::Error::custom(format!(
                    "invalid time `{text}` ({e}); write RFC 3339, e.g. `2026-12-24T00:00:00Z`"
                ))
            })
    }
}
