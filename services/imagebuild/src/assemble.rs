//! Image assembly: the parent's layers untouched plus the stage layer; the
//! parent's config with Gantry's labels, the new diff_id and a history
//! entry. Everything derives from the inputs (the commit time stands in for
//! "now"), so the same package on the same parent gives the same digest.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::layer::Layer;
use crate::manifest::{Descriptor, ImageManifest, ManifestFormat, ANNOTATION_BASE_DIGEST};
use crate::reference::validate_tag;
use crate::resolve::ResolvedImage;

pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
pub const LABEL_SOURCE: &str = "org.opencontainers.image.source";
pub const LABEL_CREATED: &str = "org.opencontainers.image.created";
pub const LABEL_PIPELINE: &str = "io.gantry.pipeline";
pub const LABEL_STAGE: &str = "io.gantry.stage";
pub const LABEL_PACKAGE_DIGEST: &str = "io.gantry.package-digest";

/// Length of the commit abbreviation in tags (`<stage>-<short sha>`).
pub const SHORT_SHA_LEN: usize = 7;

/// What a stage image is of: pipeline, stage, commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMeta {
    pub pipeline: String,
    pub stage: String,
    /// The full commit id (hex).
    pub commit: String,
    /// The commit time: the image's `created` time (reproducible builds).
    pub commit_time: DateTime<Utc>,
    /// The configuration repository (`source.repo`); user info in a URL is
    /// dropped before it becomes a label.
    pub source: String,
}

impl StageMeta {
    /// Checks the fields that end up in tags and labels.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ImageError::InvalidInput(m));
        if self.pipeline.is_empty() {
            return bad("the pipeline name is empty".into());
        }
        if self.stage.is_empty() {
            return bad("the stage name is empty".into());
        }
        let c = &self.commit;
        if c.len() < SHORT_SHA_LEN || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!(
                "commit {c:?} is not a commit id (at least {SHORT_SHA_LEN} hex digits)"
            ));
        }
        validate_tag(&self.default_tag()).map_err(|r| {
            ImageError::InvalidInput(format!(
                "stage {:?} does not make a valid image tag: {r}",
                self.stage
            ))
        })
    }

    /// The first 7 hex digits of the commit, lowercase.
    pub fn short_sha(&self) -> String {
        self.commit
            .chars()
            .take(SHORT_SHA_LEN)
            .collect::<String>()
            .to_ascii_lowercase()
    }

    /// `<stage>-<short sha>`.
    pub fn default_tag(&self) -> String {
        format!("{}-{}", self.stage, self.short_sha())
    }

    /// RFC 3339 commit time, seconds precision, `Z`.
    pub fn created(&self) -> String {
        self.commit_time.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The labels added to the parent's.
    pub fn labels(&self, package_digest: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_REVISION.to_owned(), self.commit.to_ascii_lowercase()),
            (LABEL_SOURCE.to_owned(), redact_source(&self.source)),
            (LABEL_CREATED.to_owned(), self.created()),
            (LABEL_PIPELINE.to_owned(), self.pipeline.clone()),
            (LABEL_STAGE.to_owned(), self.stage.clone()),
            (LABEL_PACKAGE_DIGEST.to_owned(), package_digest.to_owned()),
        ])
    }
}

/// Drops user name and password from a URL (`https://user:token@host/x`).
pub fn redact_source(source: &str) -> String {
    match url::Url::parse(source) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => source.to_owned(),
    }
}

/// A stage image ready to push.
#[derive(Debug, Clone)]
pub struct AssembledImage {
    pub manifest: ImageManifest,
    pub manifest_bytes: Bytes,
    pub manifest_digest: Digest,
    pub media_type: String,
    pub config_bytes: Bytes,
    pub config_digest: Digest,
    pub layer: Layer,
}

/// Assembles the stage image on `parent`.
pub fn assemble(
    parent: &ResolvedImage,
    layer: Layer,
    meta: &StageMeta,
    package_digest: &str,
    format: ManifestFormat,
) -> Result<AssembledImage> {
    let origin = parent.source.to_string();
    let malformed = |reason: String| ImageError::Malformed {
        what: "image config".into(),
        origin: origin.clone(),
        reason,
    };
    let mut config: Value =
        serde_json::from_slice(&parent.config_bytes).map_err(|e| malformed(e.to_string()))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| malformed("it is not a JSON object".into()))?;
    let created = meta.created();
    obj.insert("created".into(), Value::String(created.clone()));

    // config.Labels
    let runtime =
        object_entry(obj, "config").ok_or_else(|| malformed("`config` is not an object".into()))?;
    let labels = object_entry(runtime, "Labels")
        .ok_or_else(|| malformed("`config.Labels` is not an object".into()))?;
    for (k, v) in meta.labels(package_digest) {
        labels.insert(k, Value::String(v));
    }

    // rootfs.diff_ids
    let rootfs =
        object_entry(obj, "rootfs").ok_or_else(|| malformed("`rootfs` is not an object".into()))?;
    rootfs
        .entry("type")
        .or_insert_with(|| Value::String("layers".into()));
    let diff_ids = rootfs
        .entry("diff_ids")
        .or_insert_with(|| Value::Array(Vec::new()));
    if diff_ids.is_null() {
        *diff_ids = Value::Array(Vec::new());
    }
    let diff_ids = diff_ids
        .as_array_mut()
        .ok_or_else(|| malformed("`rootfs.diff_ids` is not an array".into()))?;
    if diff_ids.len() != parent.manifest.layers.len() {
        return Err(malformed(format!(
            "it lists {} diff_ids for {} layers; the parent image is inconsistent",
            diff_ids.len(),
            parent.manifest.layers.len()
        )));
    }
    diff_ids.push(Value::String(layer.diff_id.to_string()));

    // history
    let history = obj
        .entry("history")
        .or_insert_with(|| Value::Array(Vec::new()));
    if history.is_null() {
        *history = Value::Array(Vec::new());
    }
    history
        .as_array_mut()
        .ok_or_else(|| malformed("`history` is not an array".into()))?
        .push(json!({
            "created": created,
            "created_by": format!(
                "gantry imagebuild: pipeline {} stage {} commit {}",
                meta.pipeline, meta.stage, meta.commit
            ),
            "comment": format!("stage configuration layer, package {package_digest}"),
        }));

    let config_bytes = Bytes::from(
        serde_json::to_vec(&config).map_err(|e| ImageError::Task(format!("encode config: {e}")))?,
    );
    let config_digest = Digest::sha256(&config_bytes);

    let mut layers: Vec<Descriptor> = parent
        .manifest
        .layers
        .iter()
        .map(|d| Descriptor {
            media_type: format.convert_layer_media_type(&d.media_type),
            ..d.clone()
        })
        .collect();
    layers.push(Descriptor::new(
        format.gzip_layer_media_type(),
        layer.digest.clone(),
        layer.size(),
    ));
    // Only the parent's digest: its name (registry host, tag) would make the
    // digest depend on how the same parent was reached.
    let annotations = match format {
        ManifestFormat::Oci => Some(BTreeMap::from([(
            ANNOTATION_BASE_DIGEST.to_owned(),
            parent.manifest_digest.to_string(),
        )])),
        ManifestFormat::Docker => None,
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(format.manifest_media_type().to_owned()),
        config: Descriptor::new(
            format.config_media_type(),
            config_digest.clone(),
            config_bytes.len() as u64,
        ),
        layers,
        annotations,
    };
    let manifest_bytes = Bytes::from(
        serde_json::to_vec(&manifest)
            .map_err(|e| ImageError::Task(format!("encode manifest: {e}")))?,
    );
    Ok(AssembledImage {
        manifest_digest: Digest::sha256(&manifest_bytes),
        manifest,
        manifest_bytes,
        media_type: format.manifest_media_type().to_owned(),
        config_bytes,
        config_digest,
        layer,
    })
}

/// `obj[key]` as an object, created (or replacing `null`) when missing;
/// `None` when it is something else.
fn object_entry<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let v = obj
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> StageMeta {
        StageMeta {
            pipeline: "banking".into(),
            stage: "test".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            commit_time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05+01:00")
                .unwrap()
                .with_timezone(&Utc),
            source: "https://ci:s3cret@git.example.com/apim/banking-config.git".into(),
        }
    }

    #[test]
    fn tags_and_labels() {
        let m = meta();
        m.validate().unwrap();
        assert_eq!(m.default_tag(), "test-0123456");
        assert_eq!(m.created(), "2026-01-02T02:04:05Z");
        let labels = m.labels("sha256:pkg");
        assert_eq!(
            labels[LABEL_SOURCE],
            "https://git.example.com/apim/banking-config.git"
        );
        assert_eq!(labels[LABEL_PACKAGE_DIGEST], "sha256:pkg");
        let mut bad = meta();
        bad.commit = "xyz".into();
        assert!(bad.validate().is_err());
        let mut bad = meta();
        bad.stage = "-x".into();
        assert!(bad.validate().is_err());
        assert_eq!(redact_source("/srv/git/config"), "/srv/git/config");
    }
}
