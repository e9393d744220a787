//! Building and pushing stage images.
//!
//! Order of a push: every blob (parent layers, stage layer, config) is made
//! present in the target — skipped when it is already there (HEAD), mounted
//! from the parent's repository when both live on the same registry,
//! uploaded otherwise — then all blobs are confirmed present, and only then
//! the manifest is pushed under its tag. A failure anywhere before the
//! manifest leaves no tag behind, and no [`PushResult`] is returned.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tracing::{debug, info};

use crate::assemble::{assemble, AssembledImage, StageMeta};
use crate::client::ImageClient;
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::layer::{build_layer, LayerOptions, StagePackage};
use crate::layout::OciLayout;
use crate::manifest::{Descriptor, ManifestFormat, Platform};
use crate::reference::{validate_tag, ImageSource, Target};
use crate::registry::{Action, BlobBody, Endpoint, Mount};
use crate::resolve::{Origin, ResolvedImage};

/// Everything needed to build and push one stage image.
#[derive(Debug, Clone)]
pub struct StageImageRequest {
    /// `image.base`: a registry reference or `oci:<dir>[:<tag>]`.
    pub base: String,
    /// `image.repository`: `registry/repository` or `oci:<dir>`.
    pub repository: String,
    /// `image.insecure`: plain HTTP to registries off loopback.
    pub insecure: bool,
    pub meta: StageMeta,
    pub package: StagePackage,
    /// Platform picked from a parent index (default: the client's, linux/amd64).
    pub platform: Option<Platform>,
    /// Manifest flavour (default: the parent's for registries, OCI for layouts).
    pub format: Option<ManifestFormat>,
    /// Layer timestamps and compression.
    pub layer: LayerOptions,
    /// Tag override (default `<stage>-<short sha>`).
    pub tag: Option<String>,
}

impl StageImageRequest {
    pub fn new(
        base: impl Into<String>,
        repository: impl Into<String>,
        meta: StageMeta,
        package: StagePackage,
    ) -> StageImageRequest {
        StageImageRequest {
            base: base.into(),
            repository: repository.into(),
            insecure: false,
            meta,
            package,
            platform: None,
            format: None,
            layer: LayerOptions::default(),
            tag: None,
        }
    }

    /// The tag the image gets.
    pub fn tag(&self) -> String {
        self.tag.clone().unwrap_or_else(|| self.meta.default_tag())
    }
}

/// What a push did. Only returned once the manifest is in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushResult {
    /// `registry/repository` or `oci:<dir>`.
    pub repository: String,
    pub tag: String,
    /// The manifest digest (pin deployments to `repository@digest`).
    pub digest: Digest,
    pub media_type: String,
    /// The parent reference as given (`image.base`).
    pub parent: String,
    /// The parent's platform-specific manifest digest.
    pub parent_digest: Digest,
    /// The parent index / manifest list digest, when it was one.
    pub parent_index_digest: Option<Digest>,
    pub layer_digest: Digest,
    pub config_digest: Digest,
    /// Blob bytes sent (or written, for a layout).
    pub bytes_uploaded: u64,
    /// Blob bytes already there or mounted.
    pub bytes_reused: u64,
    /// Digests of the blobs uploaded.
    pub blobs_uploaded: Vec<Digest>,
    /// Blobs already present in the target.
    pub blobs_existing: usize,
    /// Blobs mounted from the parent's repository.
    pub blobs_mounted: usize,
}

impl PushResult {
    /// `repository@digest` (for a layout, `oci:<dir>@digest`).
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    /// `repository:tag`.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// How one blob came to be in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BlobOutcome {
    Uploaded,
    Existing,
    Mounted,
}

/// Result of [`ImageClient::push_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPush {
    pub digest: Digest,
    pub size: u64,
    pub outcome: BlobOutcome,
}

enum BlobFrom {
    Memory(Bytes),
    Origin(Origin),
}

struct Planned {
    desc: Descriptor,
    from: BlobFrom,
    what: &'static str,
}

#[derive(Clone)]
enum Sink {
    Registry { ep: Arc<Endpoint>, repo: String },
    Layout(OciLayout),
}

#[derive(Default)]
struct Stats {
    bytes_uploaded: u64,
    bytes_reused: u64,
    uploaded: Vec<Digest>,
    existing: usize,
    mounted: usize,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
}

impl ImageClient {
    /// Resolves the parent, builds the stage layer and assembles the image,
    /// without pushing anything.
    pub async fn assemble_stage(
        &self,
        req: &StageImageRequest,
    ) -> Result<(ResolvedImage, AssembledImage)> {
        req.meta.validate()?;
        validate_tag(&req.tag()).map_err(ImageError::InvalidInput)?;
        let source = ImageSource::parse(&req.base)?;
        let target = Target::parse(&req.repository)?;
        let platform = req
            .platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let parent = self.resolve_for(&source, req.insecure, &platform).await?;
        let pkg = req.package.clone();
        let opts = req.layer;
        let layer = blocking(move || build_layer(&pkg, opts)).await?;
        let format = req.format.unwrap_or(match target {
            Target::Layout { .. } => ManifestFormat::Oci,
            Target::Registry(_) => ManifestFormat::of(&parent.media_type),
        });
        let image = assemble(
            &parent,
            layer,
            &req.meta,
            req.package.package_digest(),
            format,
        )?;
        Ok((parent, image))
    }

    /// Builds the stage image on `image.base` and pushes it to
    /// `image.repository` as `<stage>-<short sha>`.
    pub async fn build_and_push(&self, req: &StageImageRequest) -> Result<PushResult> {
        let target = Target::parse(&req.repository)?;
        let (parent, image) = self.assemble_stage(req).await?;
        self.push_assembled(&target, req.insecure, &req.tag(), &parent, &image)
            .await
    }

    /// Pushes an assembled image: blobs first, confirmed, manifest last.
    pub async fn push_assembled(
        &self,
        target: &Target,
        insecure: bool,
        tag: &str,
        parent: &ResolvedImage,
        image: &AssembledImage,
    ) -> Result<PushResult> {
        validate_tag(tag).map_err(ImageError::InvalidInput)?;
        let sink = self.sink(target, insecure)?;
        let mut blobs: Vec<Planned> = parent
            .manifest
            .layers
            .iter()
            .map(|d| Planned {
                desc: d.clone(),
                from: BlobFrom::Origin(parent.origin.clone()),
                what: "parent layer",
            })
            .collect();
        blobs.push(Planned {
            desc: image.manifest.layers[image.manifest.layers.len() - 1].clone(),
            from: BlobFrom::Memory(image.layer.data.clone()),
            what: "stage layer",
        });
        blobs.push(Planned {
            desc: image.manifest.config.clone(),
            from: BlobFrom::Memory(image.config_bytes.clone()),
            what: "image config",
        });
        let descs: Vec<Descriptor> = blobs.iter().map(|b| b.desc.clone()).collect();
        let stats = self.push_blobs(&sink, blobs).await?;
        self.confirm(&sink, &descs, target).await?;
        let digest = self
            .put_manifest(&sink, tag, image.manifest_bytes.clone(), &image.media_type)
            .await?;
        if digest != image.manifest_digest {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest pushed to {target}:{tag}"),
                expected: image.manifest_digest.clone(),
                actual: digest,
            });
        }
        let result = PushResult {
            repository: target.name(),
            tag: tag.to_owned(),
            digest,
            media_type: image.media_type.clone(),
            parent: parent.source.to_string(),
            parent_digest: parent.manifest_digest.clone(),
            parent_index_digest: parent.index_digest.clone(),
            layer_digest: image.layer.digest.clone(),
            config_digest: image.config_digest.clone(),
            bytes_uploaded: stats.bytes_uploaded,
            bytes_reused: stats.bytes_reused,
            blobs_uploaded: stats.uploaded,
            blobs_existing: stats.existing,
            blobs_mounted: stats.mounted,
        };
        info!(image = %result.tagged(), digest = %result.digest,
              bytes_uploaded = result.bytes_uploaded, bytes_reused = result.bytes_reused,
              "stage image pushed");
        Ok(result)
    }

    /// Pushes one blob from memory (HEAD first: not uploaded when present).
    pub async fn push_blob(
        &self,
        target: &Target,
        insecure: bool,
        data: Bytes,
    ) -> Result<BlobPush> {
        let sink = self.sink(target, insecure)?;
        let digest = Digest::sha256(&data);
        let size = data.len() as u64;
        let blob = Planned {
            desc: Descriptor::new("application/octet-stream", digest.clone(), size),
            from: BlobFrom::Memory(data),
            what: "blob",
        };
        let outcome = self.ensure(&sink, &blob).await?;
        Ok(BlobPush {
            digest,
            size,
            outcome,
        })
    }

    /// Pushes a manifest (or index) document under `reference`: a tag, or
    /// its digest for untagged children of an index. The blobs it names must
    /// be present. Returns its digest.
    pub async fn push_manifest(
        &self,
        target: &Target,
        insecure: bool,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest> {
        let sink = self.sink(target, insecure)?;
        self.put_manifest(&sink, reference, bytes, media_type).await
    }

    fn sink(&self, target: &Target, insecure: bool) -> Result<Sink> {
        Ok(match target {
            Target::Registry(r) => Sink::Registry {
                ep: self.endpoint(r.registry(), insecure)?,
                repo: r.repository().to_owned(),
            },
            Target::Layout { dir } => Sink::Layout(OciLayout::create(dir)?),
        })
    }

    async fn push_blobs(&self, sink: &Sink, blobs: Vec<Planned>) -> Result<Stats> {
        // Futures built up front (not a `map` closure over the stream): that
        // keeps the whole push future `Send` for multi-threaded runtimes.
        let jobs: Vec<_> = blobs
            .into_iter()
            .map(|b| {
                let sink = sink.clone();
                async move {
                    let outcome = self.ensure(&sink, &b).await?;
                    debug!(digest = %b.desc.digest.short(), what = b.what, ?outcome, "blob ready");
                    Ok::<_, ImageError>((b.desc, outcome))
                }
            })
            .collect();
        let outcomes: Vec<(Descriptor, BlobOutcome)> = futures::stream::iter(jobs)
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;
        let mut stats = Stats::default();
        for (desc, outcome) in outcomes {
            match outcome {
                BlobOutcome::Uploaded => {
                    stats.bytes_uploaded += desc.size;
                    stats.uploaded.push(desc.digest);
                }
                BlobOutcome::Existing => {
                    stats.bytes_reused += desc.size;
                    stats.existing += 1;
                }
                BlobOutcome::Mounted => {
                    stats.bytes_reused += desc.size;
                    stats.mounted += 1;
                }
            }
        }
        stats.uploaded.sort();
        Ok(stats)
    }

    /// Makes one blob present in the sink.
    async fn ensure(&self, sink: &Sink, blob: &Planned) -> Result<BlobOutcome> {
        let desc = &blob.desc;
        match sink {
            Sink::Registry { ep, repo } => {
                if ep.head_blob(repo, &desc.digest, Action::Push).await? {
                    return Ok(BlobOutcome::Existing);
                }
                let mut started = None;
                if let BlobFrom::Origin(Origin::Registry {
                    ep: src,
                    repository: from,
                }) = &blob.from
                {
                    if src.same_registry(ep) && from != repo {
                        match ep.mount_blob(repo, &desc.digest, from).await? {
                            Mount::Mounted => return Ok(BlobOutcome::Mounted),
                            Mount::Started(loc) => started = Some(loc),
                        }
                    }
                }
                match &blob.from {
                    BlobFrom::Memory(data) => {
                        ep.upload_blob(
                            repo,
                            &desc.digest,
                            &BlobBody::Memory(data.clone()),
                            started,
                        )
                        .await?;
                    }
                    BlobFrom::Origin(Origin::Registry {
                        ep: src,
                        repository: from,
                    }) => {
                        if let Some(loc) = started {
                            ep.cancel_upload(repo, loc).await;
                        }
                        if desc.size <= self.opts.chunk_threshold {
                            let data = src
                                .fetch_blob_bytes(from, desc, desc.size, blob.what)
                                .await?;
                            ep.upload_blob(repo, &desc.digest, &BlobBody::Memory(data), None)
                                .await?;
                        } else {
                            let tmp = tempfile::NamedTempFile::new().map_err(|e| {
                                ImageError::io(
                                    "cannot create a temporary file in",
                                    std::env::temp_dir(),
                                    e,
                                )
                            })?;
                            src.fetch_blob_to_file(from, desc, tmp.path(), blob.what)
                                .await?;
                            let body = BlobBody::File {
                                path: tmp.path().to_path_buf(),
                                size: desc.size,
                            };
                            ep.upload_blob(repo, &desc.digest, &body, None).await?;
                        }
                    }
                    BlobFrom::Origin(Origin::Layout(src)) => {
                        if let Some(loc) = started {
                            ep.cancel_upload(repo, loc).await;
                        }
                        let path = src.blob_path(&desc.digest);
                        let body = BlobBody::File {
                            path,
                            size: desc.size,
                        };
                        ep.upload_blob(repo, &desc.digest, &body, None).await?;
                    }
                }
                Ok(BlobOutcome::Uploaded)
            }
            Sink::Layout(layout) => {
                if layout.has_blob(&desc.digest, desc.size) {
                    return Ok(BlobOutcome::Existing);
                }
                match &blob.from {
                    BlobFrom::Memory(data) => {
                        let (l, d, data) = (layout.clone(), desc.digest.clone(), data.clone());
                        blocking(move || l.write_blob(&d, &data)).await?;
                    }
                    BlobFrom::Origin(Origin::Registry { ep, repository }) => {
                        let tmp = layout.temp_file()?;
                        ep.fetch_blob_to_file(repository, desc, tmp.path(), blob.what)
                            .await?;
                        let (l, d) = (layout.clone(), desc.digest.clone());
                        blocking(move || l.commit_blob(tmp, &d)).await?;
                    }
                    BlobFrom::Origin(Origin::Layout(src)) => {
                        let (l, s, d) = (layout.clone(), src.clone(), desc.clone());
                        blocking(move || l.copy_blob_from(&s, &d)).await?;
                    }
                }
                Ok(BlobOutcome::Uploaded)
            }
        }
    }

    /// Checks that every blob is present before the manifest goes out.
    async fn confirm(&self, sink: &Sink, descs: &[Descriptor], target: &Target) -> Result<()> {
        let jobs: Vec<_> = descs
            .iter()
            .cloned()
            .map(|d| {
                let sink = sink.clone();
                async move {
                    let present = match &sink {
                        Sink::Registry { ep, repo } => {
                            ep.head_blob(repo, &d.digest, Action::Push).await?
                        }
                        Sink::Layout(l) => l.has_blob(&d.digest, d.size),
                    };
                    Ok::<_, ImageError>((!present).then_some(d.digest))
                }
            })
            .collect();
        let missing: Vec<Option<Digest>> = futures::stream::iter(jobs)
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;
        if let Some(digest) = missing.into_iter().flatten().next() {
            return Err(ImageError::BlobMissing {
                repository: target.name(),
                digest,
            });
        }
        Ok(())
    }

    async fn put_manifest(
        &self,
        sink: &Sink,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest> {
        match sink {
            Sink::Registry { ep, repo } => {
                ep.put_manifest(repo, reference, bytes, media_type).await
            }
            Sink::Layout(layout) => {
                let digest = Digest::sha256(&bytes);
                let desc = Descriptor::new(media_type, digest.clone(), bytes.len() as u64);
                let by_digest = Digest::parse(reference).is_ok();
                if !by_digest {
                    validate_tag(reference).map_err(ImageError::InvalidInput)?;
                }
                let (l, tag, d) = (layout.clone(), reference.to_owned(), digest.clone());
                blocking(move || {
                    l.write_blob(&d, &bytes)?;
                    if !by_digest {
                        l.set_tag(&tag, desc)?;
                    }
                    Ok(())
                })
                .await?;
                Ok(digest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_sync<T: Send + Sync>() {}

    /// The lead spawns builds on a multi-threaded runtime: the futures must
    /// be `Send` and the client shareable.
    #[test]
    fn futures_are_send() {
        assert_sync::<ImageClient>();
        let client = ImageClient::new(crate::ClientOptions::default()).unwrap();
        let meta = StageMeta {
            pipeline: "p".into(),
            stage: "s".into(),
            commit: "0123456789".into(),
            commit_time: chrono::Utc::now(),
            source: "x".into(),
        };
        let req = StageImageRequest::new("a/b", "c/d", meta, StagePackage::new("d"));
        let fut = client.build_and_push(&req);
        assert_send(&fut);
        drop(fut);
        let src = ImageSource::parse("a/b").unwrap();
        let fut = client.resolve(&src, false);
        assert_send(&fut);
    }
}
