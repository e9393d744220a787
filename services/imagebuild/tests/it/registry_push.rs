//! Stage images on the real registry (Debian's docker-registry), checked
//! with skopeo.

use crate::common::proxy::Proxy;
use crate::common::*;
use gantry_imagebuild::assemble::{LABEL_PACKAGE_DIGEST, LABEL_REVISION, LABEL_SOURCE};
use gantry_imagebuild::manifest::{
    ManifestFormat, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_MANIFEST,
};
use gantry_imagebuild::{ClientOptions, ImageClient, Target};
use gantry_tests::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_images_push_once_reuse_parent_and_are_reproducible() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let host = reg.host_port();
    let client = client();

    // The parent lives in its own repository of the same registry.
    let parent = test_image(ManifestFormat::Oci, "amd64", "base");
    let parent_target = Target::parse(&format!("{host}/axway/apigw-emt"))?;
    let parent_digest = push_test_image(&client, &parent_target, "7.7.20240830", &parent).await?;
    assert_eq!(parent_digest, parent.digest);
    let base = format!("{host}/axway/apigw-emt:7.7.20240830");
    let repo = format!("{host}/apim/banking-gateway");

    // 1. First stage image: parent layers mounted, stage layer + config uploaded.
    let req = request(&base, &repo, "test", COMMIT);
    let first = client.build_and_push(&req).await?;
    println!("first push: {first:#?}");
    assert_eq!(first.repository, repo);
    assert_eq!(first.tag, "test-c0ffee1");
    assert_eq!(first.parent_digest, parent.digest);
    assert_eq!(first.parent_index_digest, None);
    assert_eq!(first.media_type, OCI_MANIFEST);
    assert_eq!(first.blobs_mounted, 2, "both parent layers mounted");
    assert_eq!(first.blobs_existing, 0);
    let mut expected_uploads = vec![first.layer_digest.clone(), first.config_digest.clone()];
    expected_uploads.sort();
    assert_eq!(first.blobs_uploaded, expected_uploads);
    let parent_bytes: u64 = parent.layers.iter().map(|l| l.len() as u64).sum();
    assert_eq!(first.bytes_reused, parent_bytes);

    // skopeo sees the labels (parent's kept, ours added or overriding).
    let tagged = format!("{repo}:test-c0ffee1");
    let info = skopeo_inspect(&tagged, &[])?;
    assert_eq!(info["Digest"], first.digest.to_string());
    let labels = &info["Labels"];
    assert_eq!(labels["vendor"], "Axway");
    assert_eq!(labels[LABEL_REVISION], COMMIT);
    assert_eq!(
        labels[LABEL_SOURCE], "https://git.example.com/apim/banking-config.git",
        "credentials dropped from the source URL"
    );
    assert_eq!(
        labels["org.opencontainers.image.created"],
        "2026-03-01T10:20:30Z"
    );
    assert_eq!(labels["io.gantry.pipeline"], "banking");
    assert_eq!(labels["io.gantry.stage"], "test");
    assert_eq!(labels[LABEL_PACKAGE_DIGEST], req.package.package_digest());
    assert_eq!(info["Created"], "2026-03-01T10:20:30Z");
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(3));

    // skopeo copies it out: the last layer holds exactly the package.
    let dir = skopeo_copy_to_dir(&tagged, &[])?;
    assert_package_layer(&last_layer_entries(dir.path())?, "test");
    let m = dir_manifest(dir.path())?;
    assert_eq!(m["layers"][0]["digest"], parent_manifest_layer(&parent, 0));
    assert_eq!(m["layers"][1]["digest"], parent_manifest_layer(&parent, 1));
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.digest"],
        parent.digest.to_string()
    );
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir_blob(
        dir.path(),
        first.config_digest.as_str(),
    ))?)?;
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), 3);
    assert_eq!(config["history"].as_array().unwrap().len(), 3);
    assert_eq!(config["config"]["User"], "emtuser", "parent config kept");

    // 2. The same stage image again (another client: no cached state):
    // nothing uploaded, same digest.
    let again = ImageClient::new(options())?.build_and_push(&req).await?;
    assert_eq!(again.digest, first.digest);
    assert_eq!(again.bytes_uploaded, 0);
    assert!(again.blobs_uploaded.is_empty());
    assert_eq!(again.blobs_existing, 4);
    assert_eq!(
        again.bytes_reused,
        first.bytes_reused + first.bytes_uploaded
    );

    // The same parent reached another way (pinned by digest): same image.
    let pinned = format!("{base}@{}", parent.digest);
    let (_, image) = client
        .assemble_stage(&request(&pinned, &repo, "test", COMMIT))
        .await?;
    assert_eq!(image.manifest_digest, first.digest);

    // 3. A second stage on the same parent: only its layer and config.
    let prod = client
        .build_and_push(&request(&base, &repo, "prod", COMMIT))
        .await?;
    let mut expected = vec![prod.layer_digest.clone(), prod.config_digest.clone()];
    expected.sort();
    assert_eq!(prod.blobs_uploaded, expected);
    assert_eq!(prod.blobs_existing, 2);
    assert_eq!(prod.tag, "prod-c0ffee1");
    assert_ne!(prod.digest, first.digest);
    let dir = skopeo_copy_to_dir(&format!("{repo}:prod-c0ffee1"), &[])?;
    assert_package_layer(&last_layer_entries(dir.path())?, "prod");

    // 4. The same package from a later commit: the layer is reused (mtime 0),
    // only the config (new labels) is new.
    let later = client
        .build_and_push(&request(&base, &repo, "test", COMMIT2))
        .await?;
    assert_eq!(later.layer_digest, first.layer_digest);
    assert_eq!(later.blobs_uploaded, vec![later.config_digest.clone()]);
    assert_eq!(later.tag, "test-beef000");
    Ok(())
}

fn parent_manifest_layer(img: &TestImage, i: usize) -> String {
    let m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["layers"][i]["digest"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_parent_gives_docker_schema2_image() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let host = reg.host_port();
    let client = client();
    let parent = test_image(ManifestFormat::Docker, "amd64", "docker");
    let t = Target::parse(&format!("{host}/axway/apigw-emt"))?;
    push_test_image(&client, &t, "7.7-docker", &parent).await?;
    let base = format!("{host}/axway/apigw-emt:7.7-docker");
    let repo = format!("{host}/apim/gw");
    let pushed = client
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(pushed.media_type, DOCKER_MANIFEST);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{repo}:test-c0ffee1"),
    ])?;
    let m: serde_json::Value = serde_json::from_str(&raw)?;
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(m["layers"][2]["mediaType"], DOCKER_LAYER_GZIP);
    assert!(m.get("annotations").is_none());
    let dir = skopeo_copy_to_dir(&format!("{repo}:test-c0ffee1"), &[])?;
    assert_package_layer(&last_layer_entries(dir.path())?, "test");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_copies_across_registries() -> anyhow::Result<()> {
    // Parent on registry A; stage image to registry B through a recording
    // proxy. Small thresholds: every blob goes in PATCH chunks, and parent
    // layers are downloaded (verified) to a temporary file first.
    let a = Registry::start().await?;
    let b = Registry::start().await?;
    let proxy = Proxy::start(&b.url()).await;
    let parent = test_image(ManifestFormat::Oci, "amd64", "chunky");
    push_test_image(
        &client(),
        &Target::parse(&format!("{}/axway/apigw-emt", a.host_port()))?,
        "1",
        &parent,
    )
    .await?;
    let client = ImageClient::new(ClientOptions {
        chunk_threshold: 200,
        chunk_size: 128,
        ..options()
    })?;
    let base = format!("{}/axway/apigw-emt:1", a.host_port());
    let repo = format!("{}/apim/gw", proxy.host_port());
    let pushed = client
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(pushed.blobs_mounted, 0, "no mount across registries");
    assert_eq!(pushed.blobs_uploaded.len(), 4);
    let patches: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|l| l.method == "PATCH")
        .collect();
    assert!(patches.len() >= 8, "{} PATCH requests", patches.len());
    assert!(patches.iter().all(|p| p.status == 202));
    assert!(patches
        .iter()
        .any(|p| p.content_range.as_deref() == Some("0-127")));
    assert!(patches
        .iter()
        .any(|p| p.content_range.as_deref() == Some("128-255")));
    // The manifest went last, after every blob upload was committed.
    let log = proxy.log();
    let manifest_at = log
        .iter()
        .position(|l| l.method == "PUT" && l.path.contains("/manifests/"))
        .expect("manifest PUT");
    let last_commit = log
        .iter()
        .rposition(|l| l.method == "PUT" && l.path.contains("/blobs/uploads/"))
        .expect("blob commits");
    assert!(last_commit < manifest_at);
    let confirmations = log[last_commit..manifest_at]
        .iter()
        .filter(|l| l.method == "HEAD" && l.status == 200)
        .count();
    assert_eq!(confirmations, 4, "every blob confirmed before the manifest");
    assert!(!log[..manifest_at]
        .iter()
        .any(|l| l.status >= 400 && l.method != "HEAD"));

    let tagged = format!("{}/apim/gw:test-c0ffee1", b.host_port());
    let info = skopeo_inspect(&tagged, &[])?;
    assert_eq!(info["Digest"], pushed.digest.to_string());
    let dir = skopeo_copy_to_dir(&tagged, &[])?;
    assert_package_layer(&last_layer_entries(dir.path())?, "test");
    Ok(())
}
