//! The `deployer` service: `stage.started` → `deploy.completed` or
//! `deploy.failed`.
//!
//! A stage without `deploy` gets no answer from this service (the run's plan
//! has no `deploy` step for it, and the conductor waits for none). Otherwise
//! the image `<image.repository>@<digest>` of the `stage.started` event is
//! deployed with the stage's `gitops`, `kubernetes` or `command` target,
//! then, when the stage has `ready`, its checks run (Argo CD, the
//! Kubernetes rollout, the URL); a readiness failure is a `deploy.failed`. The stage's declared `env` is resolved first (a
//! declared secret that cannot be read fails the deploy, naming
//! `stages[<stage>].env.<NAME>`); a command gets it in its otherwise clean
//! environment. What leaves the service (reasons, command output) is masked
//! with the stage's secrets and every secret of every loaded pipeline.
//! Rollbacks (`rollback: true`) are deployed the same way:
//! the event names the earlier release's image.
//!
//! Redelivered events are recognised by the consumer runner; if a deploy is
//! repeated anyway (a crash between the push and the append), the gitops
//! target finds the image already set and commits nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_pipeline::{format_duration, DeployMethod, Pipeline, SecretRef, StageEnv, Timeouts};
use gantry_proto::events::{DeployCompleted, DeployFailed, StageStarted};
use gantry_proto::{CloudEvent, EventName, Step};
use gantry_runtime::worker::{deadline, decode, gave_up, Found, Reply, WorkerContext};
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::NewEvents;

use crate::argocd::{wait_synced, ArgoOptions};
use crate::command::{run_command, CommandOptions, DeployEnv};
use crate::gitops::{deploy_gitops_with, CommitMessage, GitOpsOptions};
use crate::kubernetes::{self, KubeOptions};
use crate::ready::{wait_ready, ReadyOptions};
use gantry_pipeline::mask::Masker;

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "deployer";

/// How long after its deadline a deploy may still report its own failure.
const REPORT_GRACE: Duration = Duration::from_secs(2);

/// Tunables of the deployer (defaults suit production; tests shorten them).
#[derive(Debug, Clone, Default)]
pub struct DeployerOptions {
    pub gitops: GitOpsOptions,
    pub ready: ReadyOptions,
    pub kubernetes: KubeOptions,
    pub argocd: ArgoOptions,
    /// Bytes of command output kept; `None`: [`CommandOptions::DEFAULT_MAX_OUTPUT`].
    pub max_output: Option<usize>,
}

/// What deploying one stage came to.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployOutcome {
    Completed(DeployCompleted),
    Failed(DeployFailed),
}

/// Deploys stage images.
#[derive(Debug, Clone)]
pub struct Deployer {
    ctx: WorkerContext,
    work: PathBuf,
    options: DeployerOptions,
}

impl Deployer {
    /// `data_dir/deploy` holds the cached clones of deploy repositories.
    pub fn new(ctx: &WorkerContext) -> Self {
        Self {
            ctx: ctx.clone(),
            work: ctx.data_dir.join("deploy"),
            options: DeployerOptions::default(),
        }
    }

    pub fn with_options(mut self, options: DeployerOptions) -> Self {
        self.options = options;
        self
    }

    /// Deploys `started` into its stage of `pipeline`; `None` when the stage
    /// has no `deploy`.
    pub async fn deploy(
        &self,
        pipeline: &Pipeline,
        run: &str,
        started: &StageStarted,
    ) -> Option<DeployOutcome> {
        self.deploy_by(pipeline, run, started, None).await
    }

    /// [`Deployer::deploy`] that pushes nothing to a gitops repository after
    /// `deadline` (the step's, from its `stage.started`).
    pub async fn deploy_by(
        &self,
        pipeline: &Pipeline,
        run: &str,
        started: &StageStarted,
        deadline: Option<Instant>,
    ) -> Option<DeployOutcome> {
        let failed = |reason: String, output: Option<String>| {
            Some(DeployOutcome::Failed(DeployFailed {
                stage: started.stage.clone(),
                reason,
                output,
            }))
        };
        let Some(stage) = pipeline.stage(&started.stage) else {
            return failed(
                format!(
                    "stage `{}` is no longer in pipeline `{}`",
                    started.stage, pipeline.name
                ),
                None,
            );
        };
        let deploy = stage.deploy.as_ref()?;
        // A stage with a declared secret that cannot be read must not half-run.
        let stage_env = match StageEnv::resolve(stage) {
            Ok(env) => env,
            Err(e) => {
                return failed(Masker::for_stage(pipeline, None).mask(&e.to_string()), None);
            }
        };
        let masker = Masker::for_stage(pipeline, Some(&stage_env));
        let image = image_reference(pipeline, started);
        let begun = Instant::now();
        let timeout = stage
            .timeout(Step::Deploy)
            .unwrap_or_else(|| deploy.timeout_or_default());
        let mut revision = None;
        let mut output = None;
        match deploy.method() {
            DeployMethod::GitOps(spec) => {
                let Some((image, digest)) = image.clone() else {
                    return failed(
                        "nothing to deploy: stage.started names no image digest (a gitops \
                         deploy needs the pipeline's `image` section)"
                            .into(),
                        None,
                    );
                };
                let token = match spec.token.as_ref().map(SecretRef::resolve).transpose() {
                    Ok(t) => t,
                    Err(e) => return failed(format!("deploy.gitops.token: {e}"), None),
                };
                let msg = CommitMessage {
                    run: run.to_owned(),
                    stage: started.stage.clone(),
                    commit: started.commit.clone(),
                    digest,
                };
                let spec = spec.clone();
                let work = self.work.clone();
                let mut options = self.options.gitops.clone();
                options.deadline = deadline;
                let task = tokio::task::spawn_blocking(move || {
                    deploy_gitops_with(
                        &spec,
                        token.as_ref().map(|t| t.expose()),
                        &image,
                        &msg,
                        &work,
                        &options,
                    )
                });
                match tokio::time::timeout(timeout, task).await {
                    Ok(Ok(Ok(done))) => revision = Some(done.revision),
                    Ok(Ok(Err(e))) => return failed(masker.mask(&e.to_string()), None),
                    Ok(Err(e)) => {
                        return failed(format!("the gitops deploy task failed: {e}"), None)
                    }
                    Err(_) => {
                        return failed(
                            format!(
                                "the gitops deploy did not finish within {}",
                                format_duration(timeout)
                            ),
                            None,
                        )
                    }
                }
            }
            DeployMethod::Kubernetes(target) => {
                let Some((image, digest)) = image.clone() else {
                    return failed(
                        "nothing to deploy: stage.started names no image digest (a kubernetes \
                         deploy needs the pipeline's `image` section)"
                            .into(),
                        None,
                    );
                };
                let rollout = async {
                    let client = kubernetes::client(target).await?;
                    // As a gitops deploy never pushes after its deadline,
                    // nothing is applied once the failure may be recorded.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(kubernetes::KubeError::TooLate);
                    }
                    kubernetes::set_image(&client, target, &image).await?;
                    // The deploy is done when the rollout is: same wait as `ready.kubernetes`.
                    let left = timeout.saturating_sub(begun.elapsed());
                    kubernetes::wait_rollout(
                        &client,
                        target,
                        Some(&digest),
                        left,
                        &self.options.kubernetes,
                    )
                    .await
                };
                match rollout.await {
                    Ok(done) => output = Some(done.message),
                    Err(e) => return failed(masker.mask(&e.to_string()), None),
                }
            }
            DeployMethod::Command(argv) => {
                let env = DeployEnv {
                    image: image
                        .as_ref()
                        .map(|(i, _)| i.clone())
                        .or_else(|| started.image.clone())
                        .unwrap_or_default(),
                    digest: started.digest.clone().unwrap_or_default(),
                    stage: started.stage.clone(),
                    run: run.to_owned(),
                    commit: started.commit.clone(),
                    pipeline: pipeline.name.clone(),
                };
                let mut options = CommandOptions::new(timeout)
                    .with_masker(&masker)
                    .with_env(stage_env.iter());
                if let Some(max) = self.options.max_output {
                    options.max_output = max;
                }
                match run_command(argv, &env, &options).await {
                    Ok(done) => output = Some(done.output),
                    Err(e) => {
                        return failed(masker.mask(&e.to_string()), e.output().map(str::to_owned))
                    }
                }
            }
        }
        if let Some(ready) = &stage.ready {
            let checked = self
                .wait_ready(stage, ready, revision.as_deref(), started.digest.as_deref())
                .await;
            if let Err(reason) = checked {
                return failed(format!("not ready: {}", masker.mask(&reason)), output);
            }
        }
        Some(DeployOutcome::Completed(DeployCompleted {
            stage: started.stage.clone(),
            image: image.map(|(i, _)| i).or_else(|| started.image.clone()),
            digest: started.digest.clone(),
            revision,
            output,
            duration_ms: u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

impl Deployer {
    /// The stage's `ready` checks in turn under one deadline (`timeouts.ready`
    /// over `ready.timeout`): Argo CD synced to `revision` and Healthy, the
    /// Deployment's rollout of `digest` complete, `ready.url` answering.
    async fn wait_ready(
        &self,
        stage: &gantry_pipeline::Stage,
        ready: &gantry_pipeline::Ready,
        revision: Option<&str>,
        digest: Option<&str>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + stage.timeout(Step::Ready).unwrap_or(ready.timeout);
        let left = |own: Option<Duration>| {
            let left = deadline.saturating_duration_since(Instant::now());
            own.map_or(left, |own| own.min(left))
        };
        if let Some(argocd) = &ready.argocd {
            wait_synced(argocd, revision, left(argocd.timeout), &self.options.argocd)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(target) = &ready.kubernetes {
            let client = kubernetes::client(target)
                .await
                .map_err(|e| e.to_string())?;
            kubernetes::wait_rollout(
                &client,
                target,
                digest.filter(|d| !d.is_empty()),
                left(target.timeout),
                &self.options.kubernetes,
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        if let Some(url) = &ready.url {
            wait_ready(url, left(None), &self.options.ready)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// `<repository>@<digest>` and the digest: the repository from the
/// pipeline's `image` section, else from the event's `repository:tag`.
pub fn image_reference(pipeline: &Pipeline, started: &StageStarted) -> Option<(String, String)> {
    let digest = started.digest.clone().filter(|d| !d.is_empty())?;
    let repository = match &pipeline.image {
        Some(image) => image.repository.clone(),
        None => strip_tag(started.image.as_deref()?).to_owned(),
    };
    Some((format!("{repository}@{digest}"), digest))
}

/// `host:port/path:tag` → `host:port/path` (a `:` after the last `/` is a tag).
fn strip_tag(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => &image[..slash + i],
        None => image,
    }
}

#[async_trait]
impl Handler for Deployer {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        &[EventName::StageStarted]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let started: StageStarted = decode(event)?;
        let reply = Reply::to(SERVICE, event)?;
        let run = reply.run();
        let pipeline = match self
            .ctx
            .pipeline_for(&reply, Step::Deploy, &[&started.stage], |stage, reason| {
                DeployFailed {
                    stage: stage.to_owned(),
                    reason,
                    output: None,
                }
            })
            .await?
        {
            Found::Pipeline(p) => *p,
            Found::Gone(results) => return Ok(results),
        };
        // The deploy (and readiness) stop at the step's deadline; the
        // conductor records `deploy.failed` (`timed out after ..`). A gitops
        // deploy on its blocking thread checks the deadline before it
        // pushes, so nothing lands after the failure was recorded.
        let timeout = pipeline
            .stage(&started.stage)
            .map(|s| {
                let deploy = s.timeout(Step::Deploy).unwrap_or(Timeouts::DEPLOY);
                match s.ready {
                    Some(_) => deploy.saturating_add(s.timeout(Step::Ready).unwrap_or_default()),
                    None => deploy,
                }
            })
            .unwrap_or(Timeouts::DEPLOY);
        let until = deadline(event, timeout);
        let work = self.deploy_by(&pipeline, run, &started, Some(until.into_std()));
        // A moment longer for the work itself: a command killed by its own
        // timeout (the same length, started a little later) still reports
        // its output; the conductor ignores whichever failure comes second.
        let Ok(outcome) = tokio::time::timeout_at(until + REPORT_GRACE, work).await else {
            tracing::warn!(run, stage = %started.stage, "deploy passed its deadline; stopped");
            return Ok(vec![]);
        };
        let Some(outcome) = outcome else {
            tracing::debug!(run, stage = %started.stage, "stage has no deploy");
            return Ok(vec![]);
        };
        Ok(match &outcome {
            DeployOutcome::Completed(c) => {
                tracing::info!(run, stage = %c.stage, image = c.image.as_deref().unwrap_or(""), revision = c.revision.as_deref().unwrap_or(""), duration = %format_duration(Duration::from_millis(c.duration_ms)), "deployed");
                reply.with(c)
            }
            DeployOutcome::Failed(f) => {
                tracing::warn!(run, stage = %f.stage, reason = %f.reason, "deploy failed");
                reply.with(f)
            }
        })
    }

    async fn gave_up(
        &self,
        event: &CloudEvent,
        error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let started: StageStarted = decode(event)?;
        let reply = Reply::to(SERVICE, event)?;
        self.ctx
            .fail_where_due(
                &reply,
                Step::Deploy,
                &[&started.stage],
                &gave_up(error),
                |stage, reason| DeployFailed {
                    stage: stage.to_owned(),
                    reason,
                    output: None,
                },
            )
            .await
    }
}

/// The worker, for registering with a runtime.
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(Deployer::new(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stripped_but_ports_kept() {
        assert_eq!(strip_tag("reg:5000/a/b:test-abc"), "reg:5000/a/b");
        assert_eq!(strip_tag("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(strip_tag("a/b@sha256:00"), "a/b");
        assert_eq!(strip_tag("b:1"), "b");
    }
}
