//! Shared helpers: parent images built in the test, stage inputs, skopeo.

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use gantry_imagebuild::layer::list_layer;
use gantry_imagebuild::manifest::{
    Descriptor, ImageIndex, ImageManifest, ManifestFormat, Platform, DOCKER_MANIFEST_LIST,
    OCI_INDEX,
};
use gantry_imagebuild::{
    build_layer, ClientOptions, Digest, ImageClient, LayerOptions, RetryPolicy, StageImageRequest,
    StageMeta, StagePackage, Target,
};
use serde_json::{json, Value};

pub const COMMIT: &str = "c0ffee1234567890abcdef1234567890abcdef12";
pub const COMMIT2: &str = "beef00000000000000000000000000000000cafe";

/// A parent image built in memory.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layers: Vec<Bytes>,
    pub config: Bytes,
    pub manifest: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

fn layer_of(files: &[(&str, &[u8], bool)]) -> gantry_imagebuild::Layer {
    let mut p = StagePackage::new("test");
    for (path, data, exec) in files {
        p.add_file(path, Bytes::copy_from_slice(data), *exec)
            .unwrap();
    }
    build_layer(
        &p,
        LayerOptions {
            mtime: 1_725_000_000,
            compression: 6,
        },
    )
    .unwrap()
}

/// A two-layer "EMT parent" for `arch`, in `format`; `seed` varies contents.
pub fn test_image(format: ManifestFormat, arch: &str, seed: &str) -> TestImage {
    let os_release = format!("NAME=\"Test Linux\"\nVARIANT={seed}\n");
    let l1 = layer_of(&[
        ("/etc/os-release", os_release.as_bytes(), false),
        (
            "/opt/Axway/apigateway/posix/bin/start-emt",
            b"#!/bin/sh\necho starting\n",
            true,
        ),
        (
            "/opt/Axway/apigateway/conf/envSettings.props",
            seed.as_bytes(),
            false,
        ),
    ]);
    let l2 = layer_of(&[(
        "/opt/Axway/apigateway/system/conf/jvm.xml",
        format!("<jvm arch=\"{arch}\"/>").as_bytes(),
        false,
    )]);
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-08-30T00:00:00Z",
        "config": {
            "User": "emtuser",
            "Env": ["PATH=/usr/bin:/bin", "EMT_DEPLOYMENT_ENABLED=true"],
            "Entrypoint": ["/opt/Axway/apigateway/posix/bin/start-emt"],
            "Labels": {"vendor": "Axway", "org.opencontainers.image.revision": "parent-rev"}
        },
        "rootfs": {"type": "layers", "diff_ids": [l1.diff_id.to_string(), l2.diff_id.to_string()]},
        "history": [
            {"created": "2024-08-30T00:00:00Z", "created_by": "base"},
            {"created": "2024-08-30T00:00:00Z", "created_by": "jvm"}
        ]
    });
    let config = Bytes::from(serde_json::to_vec(&config).unwrap());
    let layer_type = format.gzip_layer_media_type();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(format.manifest_media_type().to_owned()),
        config: Descriptor::new(
            format.config_media_type(),
            Digest::sha256(&config),
            config.len() as u64,
        ),
        layers: vec![
            Descriptor::new(layer_type, l1.digest.clone(), l1.size()),
            Descriptor::new(layer_type, l2.digest.clone(), l2.size()),
        ],
        annotations: None,
    };
    let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    TestImage {
        layers: vec![l1.data, l2.data],
        digest: Digest::sha256(&manifest),
        config,
        manifest,
        media_type: format.manifest_media_type().to_owned(),
    }
}

/// An index / manifest list of `images` with their platforms.
pub fn test_index(format: ManifestFormat, images: &[(&TestImage, Platform)]) -> (Bytes, String) {
    let media_type = match format {
        ManifestFormat::Oci => OCI_INDEX,
        ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
    };
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(media_type.to_owned()),
        manifests: images
            .iter()
            .map(|(img, p)| {
                let mut d = Descriptor::new(
                    img.media_type.clone(),
                    img.digest.clone(),
                    img.manifest.len() as u64,
                );
                d.platform = Some(p.clone());
                d
            })
            .collect(),
        annotations: None,
    };
    (
        Bytes::from(serde_json::to_vec(&index).unwrap()),
        media_type.to_owned(),
    )
}

/// Pushes a test image's blobs, then its manifest under `reference`.
pub async fn push_test_image(
    client: &ImageClient,
    target: &Target,
    reference: &str,
    img: &TestImage,
) -> anyhow::Result<Digest> {
    for l in &img.layers {
        client.push_blob(target, false, l.clone()).await?;
    }
    client.push_blob(target, false, img.config.clone()).await?;
    Ok(client
        .push_manifest(
            target,
            false,
            reference,
            img.manifest.clone(),
            &img.media_type,
        )
        .await?)
}

/// A client with quick retries.
pub fn client() -> ImageClient {
    ImageClient::new(options()).unwrap()
}

pub fn options() -> ClientOptions {
    ClientOptions {
        retry: quick_retry(),
        ..ClientOptions::default()
    }
}

pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: std::time::Duration::from_millis(50),
        max_backoff: std::time::Duration::from_millis(400),
    }
}

pub fn commit_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T10:20:30Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn meta(stage: &str, commit: &str) -> StageMeta {
    StageMeta {
        pipeline: "banking".into(),
        stage: stage.into(),
        commit: commit.into(),
        commit_time: commit_time(),
        source: "https://ci-bot:hunter2@git.example.com/apim/banking-config.git".into(),
    }
}

/// The files of a stage package: a FED and two merge-directory files.
pub fn package_files(stage: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "merge/apigateway/conf/envSettings.props".into(),
            format!("env.stage={stage}\n").into_bytes(),
        ),
        (
            "merge/apigateway/ext/lib/custom-filter.jar".into(),
            b"PK\x03\x04 not really a jar".to_vec(),
        ),
        (
            "merge/fed".into(),
            format!("<fed stage=\"{stage}\"/>").into_bytes(),
        ),
    ]
}

pub fn package(stage: &str) -> StagePackage {
    let files = package_files(stage);
    let digest = Digest::sha256(&files[2].1).to_string();
    StagePackage::new(digest)
        .with_fed(files[2].1.clone())
        .unwrap()
        .with_merge_file("conf/envSettings.props", files[0].1.clone())
        .unwrap()
        .with_merge_file("ext/lib/custom-filter.jar", files[1].1.clone())
        .unwrap()
}

pub fn request(base: &str, repository: &str, stage: &str, commit: &str) -> StageImageRequest {
    StageImageRequest::new(base, repository, meta(stage, commit), package(stage))
}

// ---------------------------------------------------------------------------
// skopeo

pub fn skopeo(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("/usr/bin/skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .context("running skopeo (apt-get install skopeo)")?;
    if !out.status.success() {
        bail!(
            "skopeo {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `skopeo inspect --tls-verify=false docker://<reference>` (plus `extra`).
pub fn skopeo_inspect(reference: &str, extra: &[&str]) -> anyhow::Result<Value> {
    let r = format!("docker://{reference}");
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&r);
    Ok(serde_json::from_str(&skopeo(&args)?)?)
}

/// `skopeo copy --src-tls-verify=false docker://<reference> dir:<tmp>`.
pub fn skopeo_copy_to_dir(reference: &str, extra: &[&str]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let src = format!("docker://{reference}");
    let dst = format!("dir:{}", dir.path().display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&src);
    args.push(&dst);
    skopeo(&args)?;
    Ok(dir)
}

/// The manifest of a `dir:` copy.
pub fn dir_manifest(dir: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("manifest.json"),
    )?)?)
}

/// A blob file of a `dir:` copy (named by the digest's hex).
pub fn dir_blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join(digest.split_once(':').map(|(_, h)| h).unwrap_or(digest))
}

/// `(path, is_dir, contents)` of the last layer in a `dir:` copy.
pub fn last_layer_entries(dir: &Path) -> anyhow::Result<Vec<(String, bool, Vec<u8>)>> {
    let m = dir_manifest(dir)?;
    let layers = m["layers"].as_array().context("layers")?;
    let last = layers.last().context("no layers")?["digest"]
        .as_str()
        .context("digest")?
        .to_owned();
    let gz = std::fs::read(dir_blob(dir, &last))?;
    Ok(list_layer(&gz)?
        .into_iter()
        .map(|e| (e.path, e.is_dir, e.data))
        .collect())
}

/// Checks the last layer holds exactly the stage package's files, and
/// directories only for their parents.
pub fn assert_package_layer(entries: &[(String, bool, Vec<u8>)], stage: &str) {
    let files: Vec<(String, Vec<u8>)> = entries
        .iter()
        .filter(|e| !e.1)
        .map(|e| (e.0.clone(), e.2.clone()))
        .collect();
    assert_eq!(files, package_files(stage), "files of the stage layer");
    let dirs: Vec<&str> = entries
        .iter()
        .filter(|e| e.1)
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(
        dirs,
        [
            "merge/",
            "merge/apigateway/",
            "merge/apigateway/conf/",
            "merge/apigateway/ext/",
            "merge/apigateway/ext/lib/"
        ]
    );
}
