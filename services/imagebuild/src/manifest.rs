//! Manifest, index and descriptor types for both OCI and Docker v2 schema 2
//! media types, and platform selection in indexes / manifest lists.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every type Gantry understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// OCI annotation naming a tag in an image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
        }
    }
}

/// An image manifest (OCI or Docker v2 schema 2: same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A platform (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`: the platform Axway ships EMT images for.
    fn default() -> Platform {
        Platform::new("linux", "amd64", None)
    }
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().filter(|p| !p.is_empty());
        if parts.next().is_some() {
            return None;
        }
        Some(Platform::new(os, arch, variant))
    }

    /// Whether `self` (what an index entry offers) satisfies `want`. A wanted
    /// variant must match; without one any variant does.
    pub fn satisfies(&self, want: &Platform) -> bool {
        let norm = |a: &str| match a {
            "x86_64" | "x86-64" => "amd64".to_owned(),
            "aarch64" => "arm64".to_owned(),
            other => other.to_ascii_lowercase(),
        };
        self.os.eq_ignore_ascii_case(&want.os)
            && norm(&self.architecture) == norm(&want.architecture)
            && match &want.variant {
                Some(v) => self.variant.as_deref() == Some(v.as_str()),
                None => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2).
    Image,
    /// An index / manifest list.
    Index,
    /// Docker schema 1 (not supported).
    Schema1,
    /// Something else.
    Unknown,
}

/// Classifies a media type.
pub fn kind_of(media_type: &str) -> ManifestKind {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => ManifestKind::Schema1,
        _ => ManifestKind::Unknown,
    }
}

/// The media type of a manifest document: the `mediaType` field, else the
/// transport's content type, else a guess from its shape (OCI allows the
/// field to be absent).
pub fn detect_media_type(bytes: &[u8], content_type: Option<&str>) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let probe: Option<Probe> = serde_json::from_slice(bytes).ok();
    if let Some(mt) = probe.as_ref().and_then(|p| p.media_type.clone()) {
        return Some(mt);
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
        .filter(|c| kind_of(c) != ManifestKind::Unknown);
    if ct.is_some() {
        return ct;
    }
    let p = probe?;
    if p.schema_version == Some(1) {
        return Some(DOCKER_SCHEMA1.to_owned());
    }
    if p.manifests.is_some() {
        Some(OCI_INDEX.to_owned())
    } else if p.layers.is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

/// Picks the index entry for `want`. Entries without a platform are skipped
/// (attestations, artifacts).
pub fn select_platform<'a>(index: &'a ImageIndex, want: &Platform) -> Option<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| kind_of(&d.media_type) == ManifestKind::Image)
        .find(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(want)))
}

/// The platforms an index offers, for error messages.
pub fn available_platforms(index: &ImageIndex) -> String {
    let list: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
        .collect();
    if list.is_empty() {
        "no platform-specific images".to_owned()
    } else {
        list.join(", ")
    }
}

/// The manifest flavour written for a stage image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// OCI media types.
    Oci,
    /// Docker v2 schema 2 media types.
    Docker,
}

impl ManifestFormat {
    /// The format of a manifest media type.
    pub fn of(media_type: &str) -> ManifestFormat {
        if media_type == DOCKER_MANIFEST {
            ManifestFormat::Docker
        } else {
            ManifestFormat::Oci
        }
    }

    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_MANIFEST,
            ManifestFormat::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_CONFIG,
            ManifestFormat::Docker => DOCKER_CONFIG,
        }
    }

    pub fn gzip_layer_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_LAYER_GZIP,
            ManifestFormat::Docker => DOCKER_LAYER_GZIP,
        }
    }

    /// A parent layer's media type in this format (same bytes, other name).
    pub fn convert_layer_media_type(self, media_type: &str) -> String {
        match (self, media_type) {
            (ManifestFormat::Oci, DOCKER_LAYER_GZIP) => OCI_LAYER_GZIP.to_owned(),
            (ManifestFormat::Oci, DOCKER_LAYER_FOREIGN_GZIP) => OCI_LAYER_NONDIST_GZIP.to_owned(),
            (ManifestFormat::Docker, OCI_LAYER_GZIP) => DOCKER_LAYER_GZIP.to_owned(),
            (ManifestFormat::Docker, OCI_LAYER_NONDIST_GZIP) => {
                DOCKER_LAYER_FOREIGN_GZIP.to_owned()
            }
            (_, other) => other.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(OCI_MANIFEST, Digest::sha256(arch.as_bytes()), 10);
        d.platform = Some(Platform::new(os, arch, variant));
        d
    }

    #[test]
    fn picks_platforms() {
        let mut attestation = Descriptor::new(OCI_MANIFEST, Digest::sha256(b"att"), 1);
        attestation.platform = Some(Platform::new("unknown", "unknown", None));
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                attestation,
                entry("linux", "arm64", Some("v8")),
                entry("linux", "amd64", None),
            ],
            annotations: None,
        };
        let got = select_platform(&index, &Platform::default()).unwrap();
        assert_eq!(got.digest, Digest::sha256(b"amd64"));
        let arm = select_platform(&index, &Platform::parse("linux/arm64").unwrap()).unwrap();
        assert_eq!(arm.digest, Digest::sha256(b"arm64"));
        assert!(select_platform(&index, &Platform::parse("linux/arm64/v7").unwrap()).is_none());
        assert!(select_platform(&index, &Platform::parse("windows/amd64").unwrap()).is_none());
        assert!(available_platforms(&index).contains("linux/arm64/v8"));
    }

    #[test]
    fn detects_media_types() {
        assert_eq!(
            detect_media_type(br#"{"schemaVersion":2,"manifests":[]}"#, None).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            detect_media_type(
                br#"{"schemaVersion":2,"config":{},"layers":[]}"#,
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
            )
            .as_deref(),
            Some(DOCKER_MANIFEST)
        );
        assert_eq!(
            detect_media_type(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).as_deref(),
            Some(DOCKER_SCHEMA1)
        );
    }
}
