//! Multi-platform parents (OCI index, Docker manifest list) and OCI image
//! layouts on disk as source and target, checked with skopeo.

use crate::common::*;
use gantry_imagebuild::manifest::{ManifestFormat, Platform, OCI_MANIFEST};
use gantry_imagebuild::{ImageError, OciLayout, Target};
use gantry_tests::Registry;

async fn multi_platform_parent(
    reg: &Registry,
    format: ManifestFormat,
) -> anyhow::Result<(TestImage, TestImage, gantry_imagebuild::Digest, String)> {
    let client = client();
    let amd = test_image(format, "amd64", "multi-amd64");
    let arm = test_image(format, "arm64", "multi-arm64");
    let target = Target::parse(&format!("{}/axway/apigw-emt", reg.host_port()))?;
    // Children by digest, the index by tag; arm64 listed first.
    push_test_image(&client, &target, amd.digest.as_str(), &amd).await?;
    push_test_image(&client, &target, arm.digest.as_str(), &arm).await?;
    let (index, media_type) = test_index(
        format,
        &[
            (&arm, Platform::new("linux", "arm64", Some("v8"))),
            (&amd, Platform::new("linux", "amd64", None)),
        ],
    );
    let index_digest = client
        .push_manifest(&target, false, "multi", index, &media_type)
        .await?;
    Ok((
        amd,
        arm,
        index_digest,
        format!("{}/axway/apigw-emt:multi", reg.host_port()),
    ))
}

async fn check_index_parent(format: ManifestFormat) -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let (amd, arm, index_digest, base) = multi_platform_parent(&reg, format).await?;
    let repo = format!("{}/apim/gw", reg.host_port());
    let c = client();
    let pushed = c
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(pushed.parent_digest, amd.digest, "linux/amd64 picked");
    assert_eq!(pushed.parent_index_digest, Some(index_digest));
    assert_eq!(pushed.media_type, format.manifest_media_type());
    let info = skopeo_inspect(&format!("{repo}:test-c0ffee1"), &[])?;
    assert_eq!(info["Architecture"], "amd64");
    let dir = skopeo_copy_to_dir(&format!("{repo}:test-c0ffee1"), &[])?;
    let m = dir_manifest(dir.path())?;
    let parent: serde_json::Value = serde_json::from_slice(&amd.manifest)?;
    assert_eq!(m["layers"][0]["digest"], parent["layers"][0]["digest"]);
    assert_eq!(m["layers"][1]["digest"], parent["layers"][1]["digest"]);
    assert_package_layer(&last_layer_entries(dir.path())?, "test");

    // Another platform when asked; a clear error when the index lacks it.
    let mut req = request(&base, &repo, "arm", COMMIT);
    req.platform = Platform::parse("linux/arm64");
    let pushed = c.build_and_push(&req).await?;
    assert_eq!(pushed.parent_digest, arm.digest);
    req.platform = Platform::parse("linux/s390x");
    let err = c.build_and_push(&req).await.expect_err("no s390x");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, ImageError::NoMatchingPlatform { .. }));
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64/v8, linux/amd64"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_parent_picks_linux_amd64() -> anyhow::Result<()> {
    check_index_parent(ManifestFormat::Oci).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manifest_list_parent_picks_linux_amd64() -> anyhow::Result<()> {
    check_index_parent(ManifestFormat::Docker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_target_is_readable_by_skopeo() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    // A Docker-typed parent: the layout gets OCI media types.
    let parent = test_image(ManifestFormat::Docker, "amd64", "layout");
    push_test_image(
        &c,
        &Target::parse(&format!("{}/axway/apigw-emt", reg.host_port()))?,
        "1",
        &parent,
    )
    .await?;
    let base = format!("{}/axway/apigw-emt:1", reg.host_port());
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("images");
    let target = format!("oci:{}", out.display());

    let test = c
        .build_and_push(&request(&base, &target, "test", COMMIT))
        .await?;
    assert_eq!(test.repository, target);
    assert_eq!(test.media_type, OCI_MANIFEST);
    assert_eq!(
        test.blobs_uploaded.len(),
        4,
        "parent layers copied into the layout"
    );
    let prod = c
        .build_and_push(&request(&base, &target, "prod", COMMIT))
        .await?;
    assert_eq!(
        prod.blobs_uploaded.len(),
        2,
        "only the new layer and config"
    );
    let again = c
        .build_and_push(&request(&base, &target, "test", COMMIT))
        .await?;
    assert_eq!(again.digest, test.digest);
    assert_eq!(again.bytes_uploaded, 0);

    assert!(out.join("oci-layout").is_file());
    let index = OciLayout::open(&out)?.index()?;
    assert_eq!(index.manifests.len(), 2);

    let info: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:test-c0ffee1", out.display()),
    ])?)?;
    assert_eq!(info["Digest"], test.digest.to_string());
    assert_eq!(info["Labels"]["io.gantry.stage"], "test");
    assert_eq!(info["Labels"]["vendor"], "Axway");
    let info: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:prod-c0ffee1", out.display()),
    ])?)?;
    assert_eq!(info["Labels"]["io.gantry.stage"], "prod");

    // skopeo copies it out of the layout intact.
    let d = tempfile::tempdir()?;
    skopeo(&[
        "copy",
        &format!("oci:{}:test-c0ffee1", out.display()),
        &format!("dir:{}", d.path().display()),
    ])?;
    assert_package_layer(&last_layer_entries(d.path())?, "test");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_parent_written_by_gantry_or_skopeo() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let tmp = tempfile::tempdir()?;

    // Our own layout as parent: `oci:<dir>:<tag>`.
    let ours = tmp.path().join("parent");
    let parent = test_image(ManifestFormat::Oci, "amd64", "from-layout");
    push_test_image(
        &c,
        &Target::parse(&format!("oci:{}", ours.display()))?,
        "7.7",
        &parent,
    )
    .await?;
    // skopeo reads that layout too (and copies it into the registry).
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:7.7", ours.display()),
        &format!("docker://{}/axway/apigw-emt:7.7", reg.host_port()),
    ])?;
    let via_skopeo = skopeo_inspect(&format!("{}/axway/apigw-emt:7.7", reg.host_port()), &[])?;
    assert_eq!(via_skopeo["Digest"], parent.digest.to_string());

    let base = format!("oci:{}:7.7", ours.display());
    let repo = format!("{}/apim/gw", reg.host_port());
    let pushed = c
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(pushed.parent_digest, parent.digest);
    assert_eq!(pushed.parent, base);
    // No mount from a layout: the parent layers went up from its files.
    assert_eq!(pushed.blobs_uploaded.len(), 4);
    assert_eq!(pushed.blobs_mounted, 0);
    let dir = skopeo_copy_to_dir(&format!("{repo}:test-c0ffee1"), &[])?;
    assert_package_layer(&last_layer_entries(dir.path())?, "test");

    // A layout written by skopeo as parent, into a fresh registry repository.
    let theirs = tmp.path().join("skopeo-layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/axway/apigw-emt:7.7", reg.host_port()),
        &format!("oci:{}:base", theirs.display()),
    ])?;
    let base2 = format!("oci:{}:base", theirs.display());
    let repo2 = format!("{}/apim/other", reg.host_port());
    let pushed2 = c
        .build_and_push(&request(&base2, &repo2, "test", COMMIT))
        .await?;
    assert_eq!(pushed2.parent_digest, parent.digest);
    assert_eq!(
        pushed2.digest, pushed.digest,
        "same parent, same package: same image"
    );
    assert_eq!(
        pushed2.blobs_uploaded.len(),
        4,
        "layout layers uploaded from files"
    );

    // A missing tag in a layout names it.
    let err = c
        .build_and_push(&request(
            &format!("oci:{}:nope", ours.display()),
            &repo,
            "test",
            COMMIT,
        ))
        .await
        .expect_err("missing layout tag");
    println!("{err}");
    assert!(err.to_string().contains(":nope") && err.to_string().contains("7.7"));
    Ok(())
}
