//! Faults between Gantry and the real registry, injected by a proxy:
//! retried 5xx and dropped connections, persistent failures, missing
//! parents, corrupted content. Nothing half-pushed is ever reported.

use crate::common::proxy::{Fault, Proxy, Rule};
use crate::common::*;
use gantry_imagebuild::manifest::ManifestFormat;
use gantry_imagebuild::{ImageClient, ImageError, ImageSource, Target};
use gantry_tests::Registry;

/// Registry + proxy + parent image pushed through the proxy.
async fn setup() -> anyhow::Result<(Registry, Proxy, String, String)> {
    let reg = Registry::start().await?;
    let proxy = Proxy::start(&reg.url()).await;
    let host = proxy.host_port();
    let parent = test_image(ManifestFormat::Oci, "amd64", "faults");
    push_test_image(
        &client(),
        &Target::parse(&format!("{host}/axway/apigw-emt"))?,
        "1",
        &parent,
    )
    .await?;
    proxy.clear_log();
    Ok((
        reg,
        proxy,
        format!("{host}/axway/apigw-emt:1"),
        format!("{host}/apim/gw"),
    ))
}

/// Whether the real registry (not through the proxy) has `repo:tag`.
async fn tag_exists(reg: &Registry, repo: &str, tag: &str) -> bool {
    let src = ImageSource::parse(&format!("{}/{repo}:{tag}", reg.host_port())).unwrap();
    match client().resolve(&src, false).await {
        Ok(_) => true,
        Err(ImageError::NotFound { .. }) => false,
        Err(e) => panic!("unexpected: {e}"),
    }
}

fn statuses(proxy: &Proxy, method: &str, path: &str) -> Vec<u16> {
    proxy
        .log()
        .iter()
        .filter(|l| l.method == method && l.path.contains(path))
        .map(|l| l.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() -> anyhow::Result<()> {
    let (reg, proxy, base, repo) = setup().await?;
    proxy.add_rule(Rule::new("GET", "/manifests/", Some(2), Fault::Status(500)));
    proxy.add_rule(Rule::new(
        "POST",
        "/blobs/uploads/",
        Some(2),
        Fault::Status(503),
    ));
    proxy.add_rule(Rule::new("PUT", "/manifests/", Some(2), Fault::Status(500)));
    proxy.add_rule(Rule::new(
        "GET",
        "/blobs/sha256:",
        Some(1),
        Fault::Status(502),
    ));
    let pushed = client()
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(statuses(&proxy, "GET", "/manifests/"), [500, 500, 200]);
    assert_eq!(statuses(&proxy, "PUT", "/manifests/"), [500, 500, 201]);
    let posts = statuses(&proxy, "POST", "/blobs/uploads/");
    assert_eq!(&posts[..2], [503, 503]);
    assert_eq!(statuses(&proxy, "GET", "/blobs/sha256:"), [502, 200]);
    assert!(tag_exists(&reg, "apim/gw", "test-c0ffee1").await);
    let dir = skopeo_copy_to_dir(&format!("{}/apim/gw:test-c0ffee1", reg.host_port()), &[])?;
    assert_package_layer(&last_layer_entries(dir.path())?, "test");
    assert_eq!(
        dir_manifest(dir.path())?["config"]["digest"],
        pushed.config_digest.to_string()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_manifest_failure_is_an_error_and_no_tag() -> anyhow::Result<()> {
    let (reg, proxy, base, repo) = setup().await?;
    proxy.add_rule(Rule::new("PUT", "/manifests/", None, Fault::Status(503)));
    let err = client()
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await
        .expect_err("a registry that never takes the manifest");
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        matches!(
            err,
            ImageError::Registry {
                status: 503,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("503") && msg.contains("4 attempt") && msg.contains(&proxy.host_port()));
    assert_eq!(statuses(&proxy, "PUT", "/manifests/"), [503; 4]);
    assert!(!tag_exists(&reg, "apim/gw", "test-c0ffee1").await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_blob_failure_never_pushes_the_manifest() -> anyhow::Result<()> {
    let (reg, proxy, base, repo) = setup().await?;
    proxy.add_rule(Rule::new(
        "PUT",
        "/blobs/uploads/",
        None,
        Fault::Status(500),
    ));
    let err = client()
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await
        .expect_err("blob uploads always fail");
    println!("{err}");
    assert_eq!(err.status(), Some(500));
    assert!(err.is_retryable());
    assert!(err.to_string().contains("after 4 attempt(s)"), "{err}");
    assert_eq!(proxy.count("PUT", "/manifests/"), 0, "no manifest pushed");
    // Each failed upload attempt started a fresh session.
    assert!(proxy.count("POST", "/blobs/uploads/") >= 4);
    assert!(!tag_exists(&reg, "apim/gw", "test-c0ffee1").await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_parent_is_a_404_naming_the_reference() -> anyhow::Result<()> {
    let (reg, proxy, _base, repo) = setup().await?;
    for missing in [
        format!("{}/axway/apigw-emt:7.7.does-not-exist", proxy.host_port()),
        format!("{}/axway/no-such-image:1", proxy.host_port()),
    ] {
        let err = client()
            .build_and_push(&request(&missing, &repo, "test", COMMIT))
            .await
            .expect_err("missing parent");
        let msg = err.to_string();
        println!("{msg}");
        assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
        assert!(
            msg.contains(&missing) && msg.contains("404") && msg.contains("image.base"),
            "{msg}"
        );
    }
    assert_eq!(proxy.count("PUT", "/manifests/"), 0);
    assert!(!tag_exists(&reg, "apim/gw", "test-c0ffee1").await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_and_unreachable_registries_fail_clearly(
) -> anyhow::Result<()> {
    let (reg, proxy, base, repo) = setup().await?;
    // A fresh client: its first connections are new ones, and they die.
    proxy.drop_next_connections(2);
    let pushed = client()
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(proxy.pending_drops(), 0, "both connections were dropped");
    assert!(tag_exists(&reg, "apim/gw", "test-c0ffee1").await);
    assert_eq!(pushed.tag, "test-c0ffee1");

    // Nothing listens there at all.
    let closed = gantry_tests::free_port();
    let err = client()
        .build_and_push(&request(
            &format!("127.0.0.1:{closed}/axway/apigw-emt:1"),
            &repo,
            "test",
            COMMIT,
        ))
        .await
        .expect_err("unreachable");
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        matches!(err, ImageError::Connection { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(msg.contains(&format!("127.0.0.1:{closed}")), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_content_is_a_digest_mismatch() -> anyhow::Result<()> {
    let (reg, proxy, base, repo) = setup().await?;
    // The parent's config blob arrives corrupted.
    let parent = test_image(ManifestFormat::Oci, "amd64", "faults");
    let config_digest = gantry_imagebuild::Digest::sha256(&parent.config);
    proxy.add_rule(Rule::new(
        "GET",
        &format!("/blobs/{config_digest}"),
        None,
        Fault::Corrupt,
    ));
    let err = client()
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await
        .expect_err("corrupt config");
    println!("{err}");
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == config_digest),
        "{err:?}"
    );
    proxy.clear_rules();

    // The parent manifest arrives corrupted (checked against the registry's
    // Docker-Content-Digest, or the digest of a pinned reference).
    proxy.add_rule(Rule::new("GET", "/manifests/", None, Fault::Corrupt));
    let pinned = format!("{}@{}", base, parent.digest);
    for b in [base.clone(), pinned] {
        let c = ImageClient::new(options())?;
        let err = c
            .build_and_push(&request(&b, &repo, "test", COMMIT))
            .await
            .expect_err("corrupt manifest");
        println!("{err}");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    }
    assert_eq!(proxy.count("PUT", "/manifests/"), 0);
    assert!(!tag_exists(&reg, "apim/gw", "test-c0ffee1").await);
    Ok(())
}
