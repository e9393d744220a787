//! Resolving the parent image (`image.base`): manifest or index (platform
//! picked), then the image config; every document checked against its
//! digest.

use std::sync::Arc;

use bytes::Bytes;

use crate::client::ImageClient;
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::layout::OciLayout;
use crate::manifest::{
    available_platforms, detect_media_type, kind_of, select_platform, Descriptor, ImageIndex,
    ImageManifest, ManifestKind, Platform,
};
use crate::reference::ImageSource;
use crate::registry::{Endpoint, MANIFEST_LIMIT};

/// Largest image config accepted.
pub(crate) const CONFIG_LIMIT: u64 = 64 * 1024 * 1024;

/// Where a resolved image's blobs can be read from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    Registry {
        ep: Arc<Endpoint>,
        repository: String,
    },
    Layout(OciLayout),
}

impl Origin {
    /// A manifest named by a descriptor (from an index), verified.
    async fn manifest_by_descriptor(&self, desc: &Descriptor, display: &str) -> Result<Bytes> {
        let bytes = match self {
            Origin::Registry { ep, repository } => {
                let shown = format!("{display}@{}", desc.digest);
                ep.get_manifest(repository, desc.digest.as_str(), &shown)
                    .await?
                    .bytes
            }
            Origin::Layout(l) => l.read_blob(&desc.digest, MANIFEST_LIMIT)?,
        };
        verify(
            &bytes,
            &desc.digest,
            &format!("manifest {} of {display}", desc.digest),
        )?;
        if bytes.len() as u64 != desc.size {
            return Err(ImageError::SizeMismatch {
                what: format!("manifest {} of {display}", desc.digest),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// A small blob (a config), verified.
    pub(crate) async fn small_blob(
        &self,
        desc: &Descriptor,
        limit: u64,
        what: &str,
    ) -> Result<Bytes> {
        match self {
            Origin::Registry { ep, repository } => {
                ep.fetch_blob_bytes(repository, desc, limit, what).await
            }
            Origin::Layout(l) => {
                let b = l.read_blob(&desc.digest, limit)?;
                if b.len() as u64 != desc.size {
                    return Err(ImageError::SizeMismatch {
                        what: format!("{what} {}", desc.digest),
                        expected: desc.size,
                        actual: b.len() as u64,
                    });
                }
                Ok(b)
            }
        }
    }
}

/// A resolved parent image: the platform-specific manifest and its config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// What was asked for (`image.base`).
    pub source: ImageSource,
    /// The platform-specific image manifest.
    pub manifest: ImageManifest,
    pub manifest_bytes: Bytes,
    /// Digest of `manifest_bytes`: the parent digest of stage images.
    pub manifest_digest: Digest,
    /// The manifest's media type (OCI or Docker schema 2).
    pub media_type: String,
    /// When the reference named an index / manifest list: its digest.
    pub index_digest: Option<Digest>,
    /// The platform of the chosen index entry.
    pub platform: Option<Platform>,
    /// The image config (JSON) bytes.
    pub config_bytes: Bytes,
    pub(crate) origin: Origin,
}

impl ResolvedImage {
    /// The config as JSON.
    pub fn config(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.config_bytes).map_err(|e| ImageError::Malformed {
            what: "image config".into(),
            origin: self.source.to_string(),
            reason: e.to_string(),
        })
    }
}

struct Doc {
    bytes: Bytes,
    content_type: Option<String>,
    digest: Digest,
}

/// Checks `bytes` against `digest`; returns the digest.
fn verify(bytes: &[u8], digest: &Digest, what: &str) -> Result<Digest> {
    let mut h = digest.hasher();
    h.update(bytes);
    let got = h.finish();
    if &got != digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: digest.clone(),
            actual: got,
        });
    }
    Ok(got)
}

impl ImageClient {
    /// Resolves `image.base` for the configured platform.
    pub async fn resolve(&self, source: &ImageSource, insecure: bool) -> Result<ResolvedImage> {
        let platform = self.opts.platform.clone();
        self.resolve_for(source, insecure, &platform).await
    }

    /// Resolves `image.base`, picking `platform` from an index / manifest list.
    pub async fn resolve_for(
        &self,
        source: &ImageSource,
        insecure: bool,
        platform: &Platform,
    ) -> Result<ResolvedImage> {
        let display = source.to_string();
        let (origin, top) = match source {
            ImageSource::Registry(r) => {
                let ep = self.endpoint(r.registry(), insecure)?;
                let m = ep
                    .get_manifest(r.repository(), &r.reference(), &display)
                    .await?;
                // Pinned by digest: that digest. By tag: the registry's
                // Docker-Content-Digest when it sent one.
                let want = r.digest().cloned().or_else(|| {
                    m.digest_header
                        .as_deref()
                        .and_then(|h| Digest::parse(h).ok())
                });
                let digest = match want {
                    Some(d) => verify(&m.bytes, &d, &format!("manifest of {display}"))?,
                    None => Digest::sha256(&m.bytes),
                };
                (
                    Origin::Registry {
                        ep,
                        repository: r.repository().to_owned(),
                    },
                    Doc {
                        bytes: m.bytes,
                        content_type: m.content_type,
                        digest,
                    },
                )
            }
            ImageSource::Layout { dir, tag } => {
                let layout = OciLayout::open(dir)?;
                let desc = layout.find(tag.as_deref())?;
                let bytes = layout.read_blob(&desc.digest, MANIFEST_LIMIT)?;
                (
                    Origin::Layout(layout),
                    Doc {
                        bytes,
                        content_type: Some(desc.media_type),
                        digest: desc.digest,
                    },
                )
            }
        };

        let unsupported = |media_type: &str, hint: &str| ImageError::UnsupportedMediaType {
            reference: display.clone(),
            media_type: media_type.to_owned(),
            hint: hint.to_owned(),
        };
        let malformed = |what: &str, e: serde_json::Error| ImageError::Malformed {
            what: what.to_owned(),
            origin: display.clone(),
            reason: e.to_string(),
        };
        let media_type =
            detect_media_type(&top.bytes, top.content_type.as_deref()).ok_or_else(|| {
                unsupported(
                    "(unknown)",
                    "expected an OCI or Docker v2 image manifest or index",
                )
            })?;
        let (doc, media_type, index_digest, chosen_platform) = match kind_of(&media_type) {
            ManifestKind::Image => (top, media_type, None, None),
            ManifestKind::Index => {
                let index: ImageIndex =
                    serde_json::from_slice(&top.bytes).map_err(|e| malformed("image index", e))?;
                let desc = select_platform(&index, platform)
                    .ok_or_else(|| ImageError::NoMatchingPlatform {
                        reference: display.clone(),
                        platform: platform.to_string(),
                        available: available_platforms(&index),
                    })?
                    .clone();
                tracing::debug!(image = %source, platform = %platform, digest = %desc.digest,
                                "picked the platform's manifest from the index");
                let bytes = origin.manifest_by_descriptor(&desc, &display).await?;
                let child_type = detect_media_type(&bytes, Some(&desc.media_type))
                    .unwrap_or_else(|| desc.media_type.clone());
                if kind_of(&child_type) != ManifestKind::Image {
                    return Err(unsupported(
                        &child_type,
                        "the index entry for the platform is not an image manifest (nested \
                         indexes are not supported)",
                    ));
                }
                (
                    Doc {
                        bytes,
                        content_type: None,
                        digest: desc.digest.clone(),
                    },
                    child_type,
                    Some(top.digest),
                    desc.platform.clone(),
                )
            }
            ManifestKind::Schema1 => {
                return Err(unsupported(
                    &media_type,
                    "Docker schema 1 images are deprecated; push the parent again with a \
                     current Docker or skopeo, which write schema 2",
                ))
            }
            ManifestKind::Unknown => {
                return Err(unsupported(
                    &media_type,
                    "expected an OCI or Docker v2 image manifest or index (is this an \
                     artifact rather than an image?)",
                ))
            }
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&doc.bytes).map_err(|e| malformed("image manifest", e))?;
        if manifest.schema_version != 2 {
            return Err(unsupported(
                &media_type,
                "only schemaVersion 2 manifests are supported",
            ));
        }
        let config_bytes = origin
            .small_blob(&manifest.config, CONFIG_LIMIT, "image config")
            .await?;
        Ok(ResolvedImage {
            source: source.clone(),
            manifest,
            manifest_bytes: doc.bytes,
            manifest_digest: doc.digest,
            media_type,
            index_digest,
            platform: chosen_platform,
            config_bytes,
            origin,
        })
    }
}
