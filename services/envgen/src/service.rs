//! The `envgen` service: `run.started` → one `package.built` or
//! `package.failed` per stage of the run's plan.
//!
//! The run's commit is checked out once from the pipeline's source cache,
//! the project is loaded once, and each stage is validated and packaged with
//! its own values. Every stage gets an answer: a checkout that fails fails
//! every stage with the same clear reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use gantry_pipeline::{GatewayFormat, Pipeline, Timeouts};
use gantry_proto::events::{Diagnostic, PackageBuilt, PackageFailed, RunStarted};
use gantry_proto::Step;
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::git::SourceCache;
use gantry_runtime::worker::{deadline, decode, gave_up, Found, Reply, WorkerContext};
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::packages::PackageStoreError;
use gantry_store::NewEvents;

use crate::package::{package_yaml, RenderMode};
use crate::template::StageEnv;
use crate::values::ValuesSource;
use crate::yamles::{Project, ValidateOptions};

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "envgen";

/// What one stage's packaging came to.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutcome {
    Built(PackageBuilt),
    Failed(PackageFailed),
}

/// A stage packaged in memory, before it is stored: `built` lacks the
/// digest and location the store gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Packaged {
    Built { built: PackageBuilt, bytes: Vec<u8> },
    Failed(PackageFailed),
}

/// Builds the packages of runs.
#[derive(Debug, Clone)]
pub struct Envgen {
    ctx: WorkerContext,
    sources: SourceCache,
    work: PathBuf,
}

impl Envgen {
    /// `data_dir` holds this process's source cache (`git/`) and scratch
    /// checkouts (`work/`); packages go to `packages`, the process's store
    /// (local or NATS), so other services read them wherever they run.
    pub fn new(ctx: &WorkerContext) -> Self {
        Self {
            ctx: ctx.clone(),
            sources: SourceCache::new(ctx.data_dir.join("git")),
            work: ctx.data_dir.join("work"),
        }
    }

    /// Packages every stage in `stages` at `commit` and stores the packages.
    /// An error is a store that cannot be reached (worth a retry); whatever
    /// is wrong with the configuration is a `Failed` outcome.
    pub async fn package(
        &self,
        pipeline: Pipeline,
        commit: String,
        stages: Vec<String>,
    ) -> Result<Vec<StageOutcome>, PackageStoreError> {
        let this = self.clone();
        let packaged = match tokio::task::spawn_blocking(move || {
            this.build(&pipeline, &commit, &stages)
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                return Err(PackageStoreError::Io {
                    path: self.work.display().to_string(),
                    source: std::io::Error::other(format!("packaging task failed: {e}")),
                })
            }
        };
        let mut outcomes = Vec::with_capacity(packaged.len());
        for p in packaged {
            outcomes.push(match p {
                Packaged::Failed(f) => StageOutcome::Failed(f),
                Packaged::Built { mut built, bytes } => match self.ctx.packages.put(&bytes).await {
                    Ok(stored) => {
                        built.digest = stored.digest;
                        built.size = stored.size;
                        built.location = Some(stored.location);
                        StageOutcome::Built(built)
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => StageOutcome::Failed(PackageFailed {
                        stage: built.stage,
                        reason: e.to_string(),
                        diagnostics: vec![],
                    }),
                },
            });
        }
        Ok(outcomes)
    }

    /// Checks out `commit` and packages every stage in `stages` in memory
    /// (blocking).
    pub fn build(&self, pipeline: &Pipeline, commit: &str, stages: &[String]) -> Vec<Packaged> {
        let fail_all = |reason: String, diagnostics: Vec<Diagnostic>| {
            stages
                .iter()
                .map(|s| {
                    Packaged::Failed(PackageFailed {
                        stage: s.clone(),
                        reason: reason.clone(),
                        diagnostics: diagnostics.clone(),
                    })
                })
                .collect()
        };
        let token = match &pipeline.source.token {
            Some(r) => match r.resolve() {
                Ok(t) => Some(t),
                Err(e) => return fail_all(format!("source.token: {e}"), vec![]),
            },
            None => None,
        };
        if let Err(e) = std::fs::create_dir_all(&self.work) {
            return fail_all(
                format!("cannot create {}: {e}", self.work.display()),
                vec![],
            );
        }
        let checkout_dir = match tempfile::Builder::new()
            .prefix("checkout-")
            .tempdir_in(&self.work)
        {
            Ok(d) => d,
            Err(e) => return fail_all(format!("cannot create a checkout directory: {e}"), vec![]),
        };
        let sources = self
            .sources
            .fetch_within(pipeline.source.timeout_or_default());
        let checkout = match sources.checkout(
            &pipeline.name,
            &pipeline.source.repo,
            &pipeline.source.branch,
            token.as_ref().map(|t| t.expose()),
            commit,
            checkout_dir.path(),
        ) {
            Ok(c) => c,
            Err(e) => return fail_all(e.to_string(), vec![]),
        };
        let root = checkout_dir.path();
        let mut outcomes = match pipeline.gateway.format {
            GatewayFormat::Yaml => self.build_yaml(pipeline, root, stages),
            GatewayFormat::Fed | GatewayFormat::PolEnv => stages
                .iter()
                .map(|stage| self.build_archive_stage(pipeline, root, stage))
                .collect(),
        };
        for o in &mut outcomes {
            if let Packaged::Built { built: b, .. } = o {
                b.commit = Some(checkout.commit.clone());
                b.committed_at = Some(checkout.time);
            }
        }
        outcomes
    }

    /// `fed` and `pol-env`: the archives checked, the stage's values as
    /// `envSettings.props` in the merge directory.
    fn build_archive_stage(&self, pipeline: &Pipeline, root: &Path, stage: &str) -> Packaged {
        let failed = |reason: String, diagnostics: Vec<Diagnostic>| {
            Packaged::Failed(PackageFailed {
                stage: stage.to_owned(),
                reason,
                diagnostics,
            })
        };
        let env = match stage_env(pipeline, stage) {
            Ok(env) => env,
            Err(f) => return Packaged::Failed(f),
        };
        let values_file = pipeline
            .stage(stage)
            .and_then(|s| s.values.as_ref())
            .map(|p| p.display().to_string());
        let values = match &values_file {
            Some(rel) => {
                let text = match std::fs::read_to_string(in_repo(root, Path::new(rel))) {
                    Ok(t) => t,
                    Err(e) => {
                        return failed(
                            format!("stage values file `{rel}` cannot be read at this commit: {e}"),
                            vec![],
                        )
                    }
                };
                match serde_saphyr::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Null) => serde_json::json!({}),
                    Ok(v) => v,
                    Err(e) => {
                        return failed(
                            format!("stage values file `{rel}` is not valid YAML"),
                            vec![Diagnostic {
                                file: Some(rel.clone()),
                                line: None,
                                column: None,
                                field: None,
                                message: e.to_string(),
                            }],
                        )
                    }
                }
            }
            None => serde_json::json!({}),
        };
        let merge_dir = pipeline
            .gateway
            .merge_dir
            .as_ref()
            .map(|p| p.display().to_string());
        let format = pipeline.gateway.format.as_str();
        let built = crate::fed::build_gateway_package_with(
            format,
            root,
            &pipeline.gateway.path.display().to_string(),
            stage,
            &values,
            merge_dir.as_deref(),
            &crate::fed::BuildOptions {
                env: &env,
                values_file: values_file.as_deref().unwrap_or("values"),
            },
        );
        match built {
            Ok(pkg) => Packaged::Built {
                built: PackageBuilt {
                    stage: stage.to_owned(),
                    digest: String::new(),
                    size: pkg.bytes.len() as u64,
                    files: pkg.files,
                    format: format.to_owned(),
                    values_digest: Some(pkg.values_digest),
                    location: None,
                    commit: None,
                    committed_at: None,
                },
                bytes: pkg.bytes,
            },
            Err(diagnostics) => failed(
                format!(
                    "the {format} configuration has {} problem(s) for stage `{stage}`",
                    diagnostics.len()
                ),
                diagnostics,
            ),
        }
    }

    fn build_yaml(&self, pipeline: &Pipeline, root: &Path, stages: &[String]) -> Vec<Packaged> {
        let gateway_path = pipeline.gateway.path.display().to_string();
        let project_dir = in_repo(root, &pipeline.gateway.path);
        let project = match Project::load(&project_dir) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("gateway.path `{gateway_path}`: {e}");
                return stages
                    .iter()
                    .map(|s| {
                        Packaged::Failed(PackageFailed {
                            stage: s.clone(),
                            reason: reason.clone(),
                            diagnostics: vec![Diagnostic {
                                file: Some(gateway_path.clone()),
                                line: None,
                                column: None,
                                field: Some("gateway.path".into()),
                                message: e.to_string(),
                            }],
                        })
                    })
                    .collect();
            }
        };
        let mode = if pipeline.gateway.render {
            RenderMode::Rendered
        } else {
            RenderMode::Placeholders
        };
        stages
            .iter()
            .map(|stage| self.build_yaml_stage(pipeline, root, &project, stage, mode))
            .collect()
    }

    fn build_yaml_stage(
        &self,
        pipeline: &Pipeline,
        root: &Path,
        project: &Project,
        stage: &str,
        mode: RenderMode,
    ) -> Packaged {
        let failed = |reason: String, diagnostics: Vec<Diagnostic>| {
            Packaged::Failed(PackageFailed {
                stage: stage.to_owned(),
                reason,
                diagnostics,
            })
        };
        let env = match stage_env(pipeline, stage) {
            Ok(env) => env,
            Err(f) => return Packaged::Failed(f),
        };
        let overlay_path = pipeline
            .stage(stage)
            .and_then(|s| s.values.as_ref())
            .map(|p| p.display().to_string());
        let overlay_text = match &overlay_path {
            Some(rel) => match std::fs::read_to_string(in_repo(root, Path::new(rel))) {
                Ok(t) => Some(t),
                Err(e) => {
                    return failed(
                        format!("stage values file `{rel}` cannot be read at this commit: {e}"),
                        vec![Diagnostic {
                            file: Some(rel.clone()),
                            line: None,
                            column: None,
                            field: Some(format!("stages[{stage}].values")),
                            message: format!("cannot read the file: {e}"),
                        }],
                    )
                }
            },
            None => None,
        };
        let overlay = match (&overlay_path, &overlay_text) {
            (Some(name), Some(text)) => Some(ValuesSource { name, text }),
            _ => None,
        };
        let values = project.stage_values(overlay, &env);
        if !values.diagnostics().is_empty() {
            return failed(
                format!(
                    "the values for stage `{stage}` have {} problem(s)",
                    values.diagnostics().len()
                ),
                values.diagnostics().to_vec(),
            );
        }
        match package_yaml(project, &values, &env, mode, &ValidateOptions::default()) {
            Ok(pkg) => Packaged::Built {
                built: PackageBuilt {
                    stage: stage.to_owned(),
                    digest: String::new(),
                    size: pkg.size(),
                    files: pkg.files,
                    format: "yaml".into(),
                    values_digest: Some(pkg.values_digest),
                    location: None,
                    commit: None,
                    committed_at: None,
                },
                bytes: pkg.bytes,
            },
            Err(crate::PackageError::Invalid(report)) => failed(
                format!(
                    "the configuration has {} problem(s) for stage `{stage}`",
                    report.errors.len()
                ),
                report.errors,
            ),
            Err(e) => failed(e.to_string(), vec![]),
        }
    }
}

#[async_trait]
impl Handler for Envgen {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        &[EventName::RunStarted]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let started: RunStarted = decode(event)?;
        // A rollback run re-promotes a release whose packages exist.
        if started.rollback.is_some() {
            return Ok(Vec::new());
        }
        let run = started.run_id.as_str();
        let reply = Reply::new(SERVICE, event, run);
        let stages: Vec<String> = started.stages.iter().map(|s| s.name.clone()).collect();
        let names: Vec<&str> = stages.iter().map(String::as_str).collect();
        let pipeline = match self.ctx_pipeline(&reply, &names).await? {
            Found::Pipeline(p) => *p,
            Found::Gone(results) => return Ok(results),
        };
        // The packages' deadline (the longest of the stages'): then the
        // work is dropped and the conductor records each late stage's
        // `package.failed` (a fetch on its blocking thread ends by
        // `source.timeout`).
        let timeout = names
            .iter()
            .filter_map(|s| pipeline.stage(s).and_then(|s| s.timeout(Step::Package)))
            .max()
            .unwrap_or(Timeouts::PACKAGE);
        let work = self.package(pipeline, started.commit.clone(), stages.clone());
        let outcomes = match tokio::time::timeout_at(deadline(event, timeout), work).await {
            Ok(done) => {
                done.map_err(|e| HandlerError::transient_from("cannot store the packages", e))?
            }
            Err(_) => {
                tracing::warn!(run, "packaging passed its deadline; stopped");
                return Ok(Vec::new());
            }
        };
        let events: Vec<CloudEvent> = outcomes
            .iter()
            .map(|o| match o {
                StageOutcome::Built(b) => reply.event(b),
                StageOutcome::Failed(f) => reply.event(f),
            })
            .collect();
        for e in &events {
            tracing::info!(run, stage = e.stage().unwrap_or(""), ty = %e.ty, "package result");
        }
        Ok(reply.events(events))
    }

    async fn gave_up(
        &self,
        event: &CloudEvent,
        error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let started: RunStarted = decode(event)?;
        let reply = Reply::new(SERVICE, event, &started.run_id);
        let names: Vec<&str> = started.stages.iter().map(|s| s.name.as_str()).collect();
        self.ctx
            .fail_where_due(
                &reply,
                Step::Package,
                &names,
                &gave_up(error),
                |stage, reason| PackageFailed {
                    stage: stage.to_owned(),
                    reason,
                    diagnostics: vec![],
                },
            )
            .await
    }
}

impl Envgen {
    /// The run's pipeline; when it is no longer defined, every stage's
    /// `package.failed` ([`WorkerContext::pipeline_for`]).
    async fn ctx_pipeline(
        &self,
        reply: &Reply<'_>,
        stages: &[&str],
    ) -> Result<Found, HandlerError> {
        self.ctx
            .pipeline_for(reply, Step::Package, stages, |stage, reason| {
                PackageFailed {
                    stage: stage.to_owned(),
                    reason,
                    diagnostics: vec![],
                }
            })
            .await
    }
}

/// The stage's declared variables, the only ones its configuration sees;
/// a declared secret that cannot be read fails the stage's package.
fn stage_env(pipeline: &Pipeline, stage: &str) -> Result<StageEnv, PackageFailed> {
    let Some(definition) = pipeline.stage(stage) else {
        return Ok(StageEnv::from_pairs(stage, [], []));
    };
    StageEnv::resolve(definition).map_err(|e| PackageFailed {
        stage: stage.to_owned(),
        reason: e.to_string(),
        diagnostics: vec![Diagnostic {
            file: None,
            line: None,
            column: None,
            field: Some(format!("stages[{stage}].env.{}", e.name)),
            message: e.source.to_string(),
        }],
    })
}

/// A path from the pipeline file, inside the checkout: absolute or `..`
/// components never leave it (validation already refuses them; this is the
/// second line of defence).
fn in_repo(root: &Path, rel: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        if let std::path::Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

/// The worker, for registering with a runtime.
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(Envgen::new(ctx))
}
