//! The `imagebuild` service: `package.built` → `image.pushed` or `image.failed`.
//!
//! For pipelines with an `image` section, each stage's package becomes one
//! layer on top of `image.base`, pushed to `image.repository` as
//! `<stage>-<short sha>`. A pipeline without `image` stops at packages, and
//! this service records nothing for it. Redelivered `package.built` events
//! are recognised by the consumer runner; a re-run of the same package on
//! the same parent would give the same digest and upload nothing anyway.

use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;
use gantry_pipeline::{GatewayFormat, Pipeline, Timeouts};
use gantry_proto::events::{ImageFailed, ImagePushed, PackageBuilt};
use gantry_proto::{CloudEvent, EventName, Step};
use gantry_runtime::worker::{deadline, decode, gave_up, Found, Reply, WorkerContext};
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::NewEvents;

use crate::{
    ClientOptions, CredentialStore, Credentials, ImageClient, ImageError, ImageRef, Platform,
    StageImageRequest, StageMeta, StagePackage, YamlPlacement,
};

/// Why a stage's image was not pushed: the reason `image.failed` records.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the pipeline has no image section")]
    NoImageSection,
    #[error("{field}")]
    Secret {
        field: &'static str,
        #[source]
        source: gantry_pipeline::SecretError,
    },
    #[error("image.platform `{0}` is not os/arch[/variant]")]
    Platform(String),
    #[error("package {digest}")]
    Package {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("package {digest} has an unexpected entry `{path}`")]
    UnexpectedEntry { digest: String, path: String },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "imagebuild";

/// Builds and pushes stage images.
#[derive(Clone)]
pub struct ImageBuild {
    ctx: WorkerContext,
}

impl std::fmt::Debug for ImageBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBuild").finish_non_exhaustive()
    }
}

impl ImageBuild {
    /// Packages come from the context's package store: the same NATS
    /// bucket envgen wrote to in distributed mode, whichever machine that
    /// ran on.
    pub fn new(ctx: &WorkerContext) -> Self {
        Self { ctx: ctx.clone() }
    }

    /// Builds and pushes the image of one stage from its package's bytes;
    /// the error (with its causes) is the reason recorded in `image.failed`.
    pub async fn push(
        &self,
        pipeline: &Pipeline,
        commit: &str,
        built: &PackageBuilt,
        bytes: Vec<u8>,
    ) -> Result<ImagePushed, PushError> {
        let image = pipeline.image.as_ref().ok_or(PushError::NoImageSection)?;
        let package = stage_package(pipeline, built, bytes)?;
        let mut credentials = docker_config_credentials()?;
        if let Some(auth) = &image.auth {
            let secret = |field: &'static str| move |source| PushError::Secret { field, source };
            let user = auth
                .username
                .resolve()
                .map_err(secret("image.auth.username"))?;
            let pass = auth
                .password
                .resolve()
                .map_err(secret("image.auth.password"))?;
            let creds = Credentials::new(user.expose(), pass.expose());
            // One set of credentials serves both the parent's and the target's registry.
            for reference in [&image.base, &image.repository] {
                if let Ok(r) = ImageRef::parse(reference) {
                    credentials = credentials.with(r.registry(), creds.clone());
                }
            }
        }
        let client = ImageClient::new(ClientOptions {
            credentials,
            ..ClientOptions::default()
        })?;
        let meta = StageMeta {
            pipeline: pipeline.name.clone(),
            stage: built.stage.clone(),
            commit: commit.to_owned(),
            commit_time: built.committed_at.unwrap_or_default(),
            source: pipeline.source.repo.clone(),
        };
        let mut request = StageImageRequest::new(&image.base, &image.repository, meta, package);
        request.insecure = image.insecure;
        if let Some(p) = &image.platform {
            request.platform =
                Some(Platform::parse(p).ok_or_else(|| PushError::Platform(p.clone()))?);
        }
        let pushed = client.build_and_push(&request).await?;
        Ok(ImagePushed {
            stage: built.stage.clone(),
            repository: pushed.repository.clone(),
            tag: pushed.tag.clone(),
            digest: pushed.digest.to_string(),
            parent_digest: Some(pushed.parent_digest.to_string()),
            bytes_uploaded: pushed.bytes_uploaded,
            bytes_reused: pushed.bytes_reused,
        })
    }
}

/// Credentials from a Docker `config.json` (`$DOCKER_CONFIG/config.json`,
/// else `~/.docker/config.json`), when there is one; `image.auth` wins.
fn docker_config_credentials() -> Result<CredentialStore, ImageError> {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))
        .map(|dir| dir.join("config.json"));
    match path {
        Some(p) if p.is_file() => CredentialStore::load_docker_config(&p),
        _ => Ok(CredentialStore::new()),
    }
}

/// The layer content for a package: a YAML project archive goes in as one
/// file (or unpacked, when `gateway.yaml_path` names a directory); a FED
/// package's `fed` entry goes to `/merge/fed`, its `apigateway/` entries to
/// `/merge/apigateway`, and a POL+ENV pair (`pol-env/`) to `/merge/pol-env`
/// for a start script that merges them.
fn stage_package(
    pipeline: &Pipeline,
    built: &PackageBuilt,
    bytes: Vec<u8>,
) -> Result<StagePackage, PushError> {
    let package = StagePackage::new(&built.digest);
    let unreadable = |source| PushError::Package {
        digest: built.digest.clone(),
        source,
    };
    match pipeline.gateway.format {
        GatewayFormat::Yaml => {
            let placement = match pipeline.gateway.yaml_path.as_deref() {
                Some(p) if p.ends_with(".tar.gz") || p.ends_with(".tgz") => {
                    YamlPlacement::Archive(p.to_owned())
                }
                Some(p) => YamlPlacement::Extract(p.to_owned()),
                None => YamlPlacement::default(),
            };
            Ok(package.with_yaml_package(bytes, &placement)?)
        }
        GatewayFormat::Fed | GatewayFormat::PolEnv => {
            let mut package = package;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
            for entry in archive.entries().map_err(unreadable)? {
                let mut entry = entry.map_err(unreadable)?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(unreadable)?
                    .to_string_lossy()
                    .into_owned();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(unreadable)?;
                package = if path == "fed" {
                    package.with_fed(data)?
                } else if let Some(rel) = path.strip_prefix("apigateway/") {
                    package.with_merge_file(rel, data)?
                } else if path.starts_with("pol-env/") {
                    package.add_file(&format!("/merge/{path}"), bytes::Bytes::from(data), false)?;
                    package
                } else {
                    return Err(PushError::UnexpectedEntry {
                        digest: built.digest.clone(),
                        path,
                    });
                };
            }
            Ok(package)
        }
    }
}

#[async_trait]
impl Handler for ImageBuild {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        &[EventName::PackageBuilt]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let built: PackageBuilt = decode(event)?;
        let reply = Reply::to(SERVICE, event)?;
        let run = reply.run();
        let failed = |reason: String| {
            reply.with(&ImageFailed {
                stage: built.stage.clone(),
                reason,
            })
        };
        let pipeline = match self
            .ctx
            .pipeline_for(&reply, Step::Image, &[&built.stage], |stage, reason| {
                ImageFailed {
                    stage: stage.to_owned(),
                    reason,
                }
            })
            .await?
        {
            Found::Pipeline(p) => *p,
            Found::Gone(results) => return Ok(results),
        };
        if pipeline.image.is_none() {
            return Ok(vec![]);
        }
        let Some(commit) = built.commit.clone() else {
            return Ok(failed("package.built names no commit".into()));
        };
        // A store that cannot be reached now is retried; a package that is
        // not there, or not what its digest says, fails the image.
        let bytes = match self.ctx.packages.get(&built.digest).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_transient() => {
                return Err(HandlerError::transient_from(
                    format!("cannot read package {}", built.digest),
                    e,
                ))
            }
            Err(e) => {
                tracing::warn!(run, stage = %built.stage, error = %e, "package unavailable");
                return Ok(failed(e.to_string()));
            }
        };
        // The push is dropped at the image step's deadline; the conductor
        // records `image.failed` (`timed out after ..`).
        let timeout = pipeline
            .stage(&built.stage)
            .and_then(|s| s.timeout(Step::Image))
            .unwrap_or(Timeouts::IMAGE);
        let pushed = tokio::time::timeout_at(
            deadline(event, timeout),
            self.push(&pipeline, &commit, &built, bytes),
        )
        .await;
        let Ok(pushed) = pushed else {
            tracing::warn!(run, stage = %built.stage, "image passed its deadline; stopped");
            return Ok(vec![]);
        };
        match pushed {
            Ok(pushed) => {
                tracing::info!(run, stage = %built.stage, digest = %pushed.digest, uploaded = pushed.bytes_uploaded, "image pushed");
                Ok(reply.with(&pushed))
            }
            Err(e) => {
                let reason = gantry_store::consumer::chain(&e);
                tracing::warn!(run, stage = %built.stage, %reason, "image failed");
                Ok(failed(reason))
            }
        }
    }

    async fn gave_up(
        &self,
        event: &CloudEvent,
        error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let built: PackageBuilt = decode(event)?;
        let reply = Reply::to(SERVICE, event)?;
        self.ctx
            .fail_where_due(
                &reply,
                Step::Image,
                &[&built.stage],
                &gave_up(error),
                |stage, reason| ImageFailed {
                    stage: stage.to_owned(),
                    reason,
                },
            )
            .await
    }
}

/// The worker, for registering with a runtime.
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(ImageBuild::new(ctx))
}
