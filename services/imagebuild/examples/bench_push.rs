//! Benchmark: pushing a stage image onto a ~300 MB parent.
//!
//! Starts Debian's `docker-registry` on loopback, pushes a parent of three
//! ~100 MB layers of random (incompressible) data, then times:
//!
//! 1. the stage image (a 10 MB configuration layer) built and pushed to a new
//!    repository of the same registry — parent layers are mounted, only the
//!    new layer, the config and the manifest go up;
//! 2. the same push again (everything already there);
//! 3. a second stage on the same parent;
//! 4. `skopeo copy` of the same stage image to a new repository of the same
//!    registry, and to a second registry (a full copy, what a rebuild and
//!    push would at least cost).
//!
//! Run: `cargo run --release -p gantry-imagebuild --example bench_push`
//! (needs `docker-registry` and `skopeo`). `BENCH_LAYER_MB` changes the
//! parent layer size (default 100), `BENCH_CONFIG_MB` the configuration
//! layer (default 10).

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use gantry_imagebuild::manifest::{Descriptor, ImageManifest, ManifestFormat};
use gantry_imagebuild::{
    build_layer, ClientOptions, Digest, ImageClient, LayerOptions, StageImageRequest, StageMeta,
    StagePackage, Target,
};
use gantry_tests::Registry;

/// xorshift64*: fast, incompressible enough for gzip.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn env_mb(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn skopeo(args: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()?;
    if !out.status.success() {
        anyhow::bail!("skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let layer_mb = env_mb("BENCH_LAYER_MB", 100);
    let config_mb = env_mb("BENCH_CONFIG_MB", 10);
    let reg = Registry::start().await?;
    let host = reg.host_port();
    println!("registry: {} (docker-registry, loopback)", reg.url());

    // Parent: three layers of random data, a config, a manifest.
    let t = Instant::now();
    let mut layers = Vec::new();
    for i in 0..3u64 {
        let mut p = StagePackage::new("parent");
        p.add_file(
            &format!("/opt/Axway/apigateway/lib/blob-{i}.bin"),
            random_bytes(layer_mb * 1_000_000, 0x9e37_79b9_7f4a_7c15 ^ (i + 1)),
            false,
        )?;
        let opts = LayerOptions {
            mtime: 0,
            compression: 1,
        };
        layers.push(tokio::task::spawn_blocking(move || build_layer(&p, opts)).await??);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"vendor": "Axway"}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "bench"})).collect::<Vec<_>>(),
    });
    let config = Bytes::from(serde_json::to_vec(&config)?);
    let format = ManifestFormat::Oci;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(format.manifest_media_type().into()),
        config: Descriptor::new(
            format.config_media_type(),
            Digest::sha256(&config),
            config.len() as u64,
        ),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(format.gzip_layer_media_type(), l.digest.clone(), l.size()))
            .collect(),
        annotations: None,
    };
    let manifest = Bytes::from(serde_json::to_vec(&manifest)?);
    let parent_size: u64 = layers.iter().map(|l| l.size()).sum();
    println!(
        "generated parent: 3 layers, {:.1} MB compressed, in {}",
        mb(parent_size),
        secs(t.elapsed())
    );

    let setup = ImageClient::new(ClientOptions::default())?;
    let parent_target = Target::parse(&format!("{host}/axway/apigw-emt"))?;
    let t = Instant::now();
    for l in &layers {
        setup
            .push_blob(&parent_target, false, l.data.clone())
            .await?;
    }
    setup
        .push_blob(&parent_target, false, config.clone())
        .await?;
    setup
        .push_manifest(
            &parent_target,
            false,
            "7.7.bench",
            manifest,
            format.manifest_media_type(),
        )
        .await?;
    let parent_push = t.elapsed();
    println!(
        "parent pushed with gantry (full upload, chunked): {} ({:.0} MB/s)",
        secs(parent_push),
        mb(parent_size) / parent_push.as_secs_f64()
    );
    drop(layers);

    // The stage package: a 10 MB configuration layer (random: worst case
    // for gzip) as a FED plus a small merge directory.
    let commit_time: DateTime<Utc> =
        DateTime::parse_from_rfc3339("2026-03-01T10:20:30Z")?.with_timezone(&Utc);
    let fed = random_bytes(config_mb * 1_000_000, 42);
    let package_digest = Digest::sha256(&fed).to_string();
    let package = |stage: &str| -> anyhow::Result<StagePackage> {
        Ok(StagePackage::new(package_digest.clone())
            .with_fed(fed.clone())?
            .with_merge_file(
                "conf/envSettings.props",
                format!("env={stage}\n").into_bytes(),
            )?)
    };
    let meta = |stage: &str| StageMeta {
        pipeline: "banking".into(),
        stage: stage.into(),
        commit: "c0ffee1234567890abcdef1234567890abcdef12".into(),
        commit_time,
        source: "https://git.example.com/apim/banking-config.git".into(),
    };
    let base = format!("{host}/axway/apigw-emt:7.7.bench");
    let repo = format!("{host}/apim/banking-gateway");

    // 1. Stage image, fresh client, new repository.
    let client = ImageClient::new(ClientOptions::default())?;
    let req = StageImageRequest::new(&base, &repo, meta("test"), package("test")?);
    let t = Instant::now();
    let (parent, image) = client.assemble_stage(&req).await?;
    let build = t.elapsed();
    let target = Target::parse(&repo)?;
    let t = Instant::now();
    let pushed = client
        .push_assembled(&target, false, &req.tag(), &parent, &image)
        .await?;
    let push = t.elapsed();
    println!();
    println!("stage image {}:", pushed.tagged());
    println!("  digest               {}", pushed.digest);
    println!(
        "  resolve+build+gzip   {}  (stage layer {:.1} MB)",
        secs(build),
        mb(image.layer.size())
    );
    println!("  push                 {}", secs(push));
    println!("  total                {}", secs(build + push));
    println!(
        "  uploaded             {:.2} MB in {} blobs (layer + config) + {} B manifest",
        mb(pushed.bytes_uploaded),
        pushed.blobs_uploaded.len(),
        image.manifest_bytes.len()
    );
    println!(
        "  reused               {:.1} MB ({} mounted, {} already there)",
        mb(pushed.bytes_reused),
        pushed.blobs_mounted,
        pushed.blobs_existing
    );

    // 2. The same again.
    let t = Instant::now();
    let again = ImageClient::new(ClientOptions::default())?
        .build_and_push(&req)
        .await?;
    let again_t = t.elapsed();
    assert_eq!(again.digest, pushed.digest);
    println!(
        "re-push (same commit): {}  uploaded {} B, same digest: {}",
        secs(again_t),
        again.bytes_uploaded,
        again.digest == pushed.digest
    );

    // 3. A second stage on the same parent.
    let t = Instant::now();
    let prod = client
        .build_and_push(&StageImageRequest::new(
            &base,
            &repo,
            meta("prod"),
            package("prod")?,
        ))
        .await?;
    println!(
        "second stage (prod):   {}  uploaded {:.2} MB in {} blobs",
        secs(t.elapsed()),
        mb(prod.bytes_uploaded),
        prod.blobs_uploaded.len()
    );

    // 4. skopeo copy of the same image.
    let src = format!("docker://{repo}:{}", pushed.tag);
    let same = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{host}/apim/skopeo-copy:{}", pushed.tag),
    ])?;
    println!();
    println!("skopeo copy, same registry, new repository: {}", secs(same));
    let other = Registry::start().await?;
    let full = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &src,
        &format!(
            "docker://{}/apim/banking-gateway:{}",
            other.host_port(),
            pushed.tag
        ),
    ])?;
    println!(
        "skopeo copy, to a second registry (all {:.0} MB): {}",
        mb(parent_size + image.layer.size()),
        secs(full)
    );
    println!();
    println!(
        "result: gantry stage push {} (target <= 1 s: {}), {:.2} MB uploaded",
        secs(build + push),
        if (build + push) <= Duration::from_secs(1) {
            "met"
        } else {
            "missed"
        },
        mb(pushed.bytes_uploaded)
    );
    Ok(())
}
