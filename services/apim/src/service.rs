//! The `apim` service: after a stage is deployed (or at `stage.started` for
//! a stage without `deploy`: the step before `apimanager` in
//! [`Step::ORDER`]), the API Manager configuration of the commit
//! being promoted is reconciled into the stage's API Manager, and
//! `apis.promoted` (every change: target, action, field names) or
//! `apis.failed` (the reason, and the breaking fields when that is why) is
//! recorded.
//!
//! Rollbacks go through here too: the `stage.started` of a rollback names
//! the earlier commit, whose configuration is reconciled back.
//!
//! A redelivered event is recognised by the consumer runner; a repeated
//! reconciliation (a crash between the writes and the append) finds the
//! stage already as configured and writes nothing.
//!
//! `${VAR}` in the configuration is looked up in the stage's `values` file
//! (top-level keys, nested keys joined with `.`; a value `env:NAME` is the
//! stage's declared variable `NAME`), then in the stage's declared variables
//! (`stages[].env`). Both the values file and the configuration are
//! repository content, so nothing else is reachable: not Gantry's
//! environment, not a `file:` (DESIGN.md 1.7). Every secret taken from the
//! stage's variables, and every secret of the pipeline, is masked in what is
//! recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gantry_pipeline::mask::Masker;
use gantry_pipeline::{Pipeline, SecretRef, StageEnv, Timeouts};
use gantry_proto::events::{ApiChange, ApisFailed, ApisPromoted, StageStarted};
use gantry_proto::{CloudEvent, EventName, Step};
use gantry_runtime::git::SourceCache;
use gantry_runtime::worker::{deadline, decode, gave_up, Due, Reply, WorkerContext};
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::store::latest_for_stage;
use gantry_store::NewEvents;
use serde::Serialize;
use serde_json::Value;

use crate::client::{ApiManagerClient, ClientConfig};
use crate::config::{load_stage, LoadOptions};
use crate::desired::DesiredState;
use crate::reconcile::{self, ReconcileOptions};

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "apim";

/// Why a stage's API Manager data could not be promoted (or planned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub breaking_fields: Vec<String>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            breaking_fields: Vec::new(),
        }
    }
}

/// A dry run: what promoting a commit's configuration into a stage would
/// change, without writing anything.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub pipeline: String,
    pub stage: String,
    pub commit: String,
    /// Whether applying would write nothing at all.
    pub noop: bool,
    /// The changes applying would make, in order.
    pub changes: Vec<ApiChange>,
    /// Breaking changes the stage does not allow (`breaking_changes`): the
    /// promotion would fail with these.
    pub refused: Vec<RefusedChange>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedChange {
    pub target: String,
    pub fields: Vec<String>,
}

/// Promotes API Manager data of a commit into a stage.
#[derive(Clone)]
pub struct Apim {
    ctx: WorkerContext,
    sources: SourceCache,
    work: PathBuf,
}

impl Apim {
    /// `data_dir/apim` holds this service's source mirror and checkouts.
    pub fn new(ctx: &WorkerContext) -> Self {
        Self::at(ctx, ctx.data_dir.join("apim"))
    }

    /// For dry runs served by the API: its own mirror (`data_dir/apim-plan`),
    /// so that a plan never fetches into the mirror a promotion in the same
    /// process is using.
    pub fn for_plans(ctx: &WorkerContext) -> Self {
        Self::at(ctx, ctx.data_dir.join("apim-plan"))
    }

    fn at(ctx: &WorkerContext, dir: PathBuf) -> Self {
        Self {
            ctx: ctx.clone(),
            sources: SourceCache::new(dir.join("git")),
            work: dir.join("work"),
        }
    }

    /// Reads the desired state of `stage` at `commit`, then calls `f` with
    /// a logged-in client. Values substituted from variables are masked in
    /// every message.
    async fn with_stage<T, F, Fut>(
        &self,
        pipeline: &Pipeline,
        stage_name: &str,
        commit: &str,
        f: F,
    ) -> Result<(T, DesiredState), Failure>
    where
        F: FnOnce(Arc<ApiManagerClient>, DesiredState, ReconcileOptions) -> Fut,
        Fut: std::future::Future<Output = Result<(T, DesiredState), Failure>>,
    {
        let stage = pipeline.stage(stage_name).ok_or_else(|| {
            Failure::new(format!(
                "stage `{stage_name}` is no longer in pipeline `{}`",
                pipeline.name
            ))
        })?;
        let settings = stage.apimanager.clone().ok_or_else(|| {
            Failure::new(format!("stage `{stage_name}` has no `apimanager` settings"))
        })?;
        let apis_dir = pipeline
            .apis
            .as_ref()
            .map(|a| a.path.clone())
            .ok_or_else(|| {
                Failure::new("the pipeline has no `apis.path`: where are the API Manager configs?")
            })?;
        let substituted = Substituted::default();
        let loaded = self
            .load(
                pipeline,
                stage_name,
                commit,
                &apis_dir,
                stage.values.clone(),
                &substituted,
            )
            .await;
        let masker = substituted.masker().merge(&Masker::for_pipeline(pipeline));
        let desired = loaded.map_err(|e| Failure::new(masker.mask(&e)))?;
        let config = ClientConfig::from_stage(&settings)
            .map_err(|e| Failure::new(masker.mask(&e.to_string())))?;
        let client = Arc::new(
            ApiManagerClient::new(config).map_err(|e| Failure::new(masker.mask(&e.to_string())))?,
        );
        client.login().await.map_err(|e| {
            // Say which API Manager, when the client's message does not.
            let message = e.to_string();
            let message = if message.contains(&settings.url) {
                message
            } else {
                format!("API Manager at {}: {message}", settings.url)
            };
            Failure::new(masker.mask(&message))
        })?;
        let result = f(
            client.clone(),
            desired,
            ReconcileOptions::for_stage(&settings),
        )
        .await;
        if let Err(e) = client.logout().await {
            tracing::debug!(error = %e, "API Manager logout failed");
        }
        match result {
            Ok((value, mut desired)) => {
                for w in &mut desired.warnings {
                    *w = masker.mask(w);
                }
                Ok((value, desired))
            }
            Err(mut failure) => {
                failure.reason = masker.mask(&failure.reason);
                Err(failure)
            }
        }
    }

    /// Checks out `commit` and loads the stage's configuration from it.
    async fn load(
        &self,
        pipeline: &Pipeline,
        stage: &str,
        commit: &str,
        apis_dir: &Path,
        values: Option<PathBuf>,
        substituted: &Substituted,
    ) -> Result<DesiredState, String> {
        let token = pipeline
            .source
            .token
            .as_ref()
            .map(SecretRef::resolve)
            .transpose()
            .map_err(|e| format!("source.token: {e}"))?;
        std::fs::create_dir_all(&self.work)
            .map_err(|e| format!("cannot create {}: {e}", self.work.display()))?;
        let checkout = tempfile::tempdir_in(&self.work).map_err(|e| {
            format!(
                "cannot create a checkout under {}: {e}",
                self.work.display()
            )
        })?;
        let sources = self
            .sources
            .fetch_within(pipeline.source.timeout_or_default());
        let (name, repo, branch, commit_owned, dest) = (
            pipeline.name.clone(),
            pipeline.source.repo.clone(),
            pipeline.source.branch.clone(),
            commit.to_owned(),
            checkout.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            sources.checkout(
                &name,
                &repo,
                &branch,
                token.as_ref().map(|t| t.expose()),
                &commit_owned,
                &dest,
            )
        })
        .await
        .map_err(|e| format!("checkout task failed: {e}"))?
        .map_err(|e| format!("cannot check out {commit}: {e}"))?;
        let root = checkout.path();
        let values = match values {
            Some(rel) => {
                let text = std::fs::read_to_string(root.join(&rel)).map_err(|e| {
                    format!(
                        "stage values file `{}` cannot be read at this commit: {e}",
                        rel.display()
                    )
                })?;
                let value: Value = serde_saphyr::from_str(&text).map_err(|e| {
                    format!(
                        "stage values file `{}` is not valid YAML: {e}",
                        rel.display()
                    )
                })?;
                flatten(&value)
            }
            None => BTreeMap::new(),
        };
        let env = match pipeline.stage(stage) {
            Some(definition) => StageEnv::resolve(definition).map_err(|e| e.to_string())?,
            None => StageEnv::default(),
        };
        let lookup = |name: &str| -> Option<String> {
            // `env:NAME` in the values file and a name the values file lacks
            // both mean the stage's declared `NAME`; `file:` means nothing.
            let declared = match values.get(name) {
                Some(v) if v.starts_with("file:") => return None,
                Some(v) => v.strip_prefix("env:"),
                None => Some(name),
            };
            let value = match declared {
                Some(var) => {
                    let value = env.get(var)?.to_owned();
                    if env.is_secret(var) {
                        substituted.add(&value);
                    }
                    value
                }
                None => values.get(name)?.clone(),
            };
            Some(value)
        };
        let options = LoadOptions {
            stage,
            vars: &lookup,
        };
        let apis_dir = apis_dir.to_owned();
        load_stage(root, &apis_dir, &options).map_err(|e| e.to_string())
    }

    /// What promoting `commit` into `stage` would change; writes nothing.
    pub async fn plan(
        &self,
        pipeline: &Pipeline,
        stage: &str,
        commit: &str,
    ) -> Result<PlanReport, Failure> {
        let (plan, desired) = self
            .with_stage(
                pipeline,
                stage,
                commit,
                |client, desired, options| async move {
                    match reconcile::plan(&client, &desired, &options).await {
                        Ok(plan) => Ok((plan, desired)),
                        Err(e) => Err(failure_of(&e)),
                    }
                },
            )
            .await?;
        let mut warnings = desired.warnings.clone();
        warnings.extend(plan.warnings.iter().cloned());
        Ok(PlanReport {
            pipeline: pipeline.name.clone(),
            stage: stage.to_owned(),
            commit: commit.to_owned(),
            noop: plan.is_noop(),
            changes: plan.changes(),
            refused: plan
                .refused
                .iter()
                .map(|r| RefusedChange {
                    target: r.target.clone(),
                    fields: r.fields.clone(),
                })
                .collect(),
            warnings,
        })
    }

    /// Reconciles `commit`'s configuration into `stage`: the changes made.
    pub async fn promote(
        &self,
        pipeline: &Pipeline,
        stage: &str,
        commit: &str,
    ) -> Result<Vec<ApiChange>, Failure> {
        let (changes, desired) = self
            .with_stage(
                pipeline,
                stage,
                commit,
                |client, desired, options| async move {
                    match reconcile::reconcile(&client, &desired, &options).await {
                        Ok(changes) => Ok((changes, desired)),
                        Err(e) => Err(failure_of(&e)),
                    }
                },
            )
            .await?;
        for w in &desired.warnings {
            tracing::warn!(pipeline = %pipeline.name, stage, "{w}");
        }
        Ok(changes)
    }

    /// The commit the stage's latest `stage.started` of `run` promotes.
    async fn started_commit(&self, run: &str, stage: &str) -> Result<Option<String>, HandlerError> {
        let events = self.ctx.store.read_run(run).await?;
        Ok(latest_for_stage::<StageStarted>(&events, stage).map(|s| s.commit))
    }
}

fn failure_of(e: &reconcile::Error) -> Failure {
    Failure {
        reason: e.to_string(),
        breaking_fields: e.breaking_fields(),
    }
}

/// `a: {b: 1}` → `a.b = "1"`; top-level scalars by their own name.
fn flatten(value: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            Value::Number(n) => {
                out.insert(prefix.to_owned(), n.to_string());
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), b.to_string());
            }
            Value::Null | Value::Array(_) => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// The values substituted into the configuration while loading it: what
/// to mask in everything recorded afterwards.
#[derive(Default)]
struct Substituted(Mutex<Vec<String>>);

impl Substituted {
    fn add(&self, value: &str) {
        {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(value.to_owned());
        }
    }

    fn masker(&self) -> Masker {
        Masker::new(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl Handler for Apim {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        &[EventName::StageStarted, EventName::DeployCompleted]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let (Some(name), Some(run)) = (event.name(), event.runid.as_deref()) else {
            return Ok(vec![]);
        };
        let reply = Reply::new(SERVICE, event, run);
        // After the step before this one: the deploy when the stage has
        // one, else when it starts.
        let (pipeline, stage) = match self
            .ctx
            .step_due(&reply, Step::ApiManager, |stage, reason| ApisFailed {
                stage: stage.to_owned(),
                reason,
                breaking_fields: vec![],
            })
            .await?
        {
            Due::Step { pipeline, stage } => (pipeline, stage),
            Due::Gone(results) => return Ok(results),
            Due::Not => return Ok(vec![]),
        };
        let stage_name = stage.name.as_str();
        let commit = match name {
            EventName::StageStarted => decode::<StageStarted>(event)?.commit,
            _ => match self.started_commit(run, stage_name).await? {
                Some(c) => c,
                None => {
                    return Err(HandlerError::permanent(format!(
                        "no stage.started for {stage_name} in run {run}"
                    )))
                }
            },
        };
        // Stopped at the step's deadline; the conductor records
        // `apis.failed` (`timed out after ..`).
        let timeout = stage
            .timeout(Step::ApiManager)
            .unwrap_or(Timeouts::APIMANAGER);
        let promoted = tokio::time::timeout_at(
            deadline(event, timeout),
            self.promote(&pipeline, stage_name, &commit),
        )
        .await;
        let Ok(promoted) = promoted else {
            tracing::warn!(
                run,
                stage = stage_name,
                "API Manager promotion passed its deadline; stopped"
            );
            return Ok(vec![]);
        };
        Ok(match promoted {
            Ok(changes) => {
                tracing::info!(
                    run,
                    stage = stage_name,
                    changes = changes.len(),
                    "API Manager data promoted"
                );
                reply.with(&ApisPromoted {
                    stage: stage_name.to_owned(),
                    changes,
                })
            }
            Err(failure) => {
                tracing::warn!(run, stage = stage_name, reason = %failure.reason, "API Manager promotion failed");
                reply.with(&ApisFailed {
                    stage: stage_name.to_owned(),
                    reason: failure.reason,
                    breaking_fields: failure.breaking_fields,
                })
            }
        })
    }

    async fn gave_up(
        &self,
        event: &CloudEvent,
        error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let (Some(stage), Ok(reply)) = (event.stage(), Reply::to(SERVICE, event)) else {
            return Ok(vec![]);
        };
        self.ctx
            .fail_where_due(
                &reply,
                Step::ApiManager,
                &[stage],
                &gave_up(error),
                |stage, reason| ApisFailed {
                    stage: stage.to_owned(),
                    reason,
                    breaking_fields: vec![],
                },
            )
            .await
    }
}

/// The worker, for registering with a runtime.
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(Apim::new(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_flatten_to_dotted_names() {
        let v: Value = serde_json::json!({
            "host": "api.test.example.com",
            "backend": { "url": "https://b", "port": 8443, "tls": true },
            "list": [1, 2],
            "none": null
        });
        let flat = flatten(&v);
        assert_eq!(flat["host"], "api.test.example.com");
        assert_eq!(flat["backend.url"], "https://b");
        assert_eq!(flat["backend.port"], "8443");
        assert_eq!(flat["backend.tls"], "true");
        assert!(!flat.contains_key("list") && !flat.contains_key("none"));
    }

    #[test]
    fn substituted_values_are_masked() {
        let m = Substituted::default();
        m.add("s3cr3t-password");
        // Too short to be a credential (gantry_pipeline::mask::MIN_SECRET_LEN).
        m.add("yes");
        assert_eq!(
            m.masker().mask("login with s3cr3t-password failed: yes"),
            "login with *** failed: yes"
        );
    }
}
