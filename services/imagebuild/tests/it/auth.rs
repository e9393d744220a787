//! Authentication: HTTP Basic on the real registry, Docker config.json
//! credentials, and the Bearer token flow (a fake token service in front of
//! the real registry).

use crate::common::proxy::Proxy;
use crate::common::*;
use base64::Engine as _;
use gantry_imagebuild::manifest::ManifestFormat;
use gantry_imagebuild::{
    ClientOptions, CredentialStore, Credentials, ImageClient, ImageError, ImageSource, PushResult,
    Target,
};
use gantry_tests::Registry;

fn client_with(store: CredentialStore) -> ImageClient {
    ImageClient::new(ClientOptions {
        credentials: store,
        ..options()
    })
    .unwrap()
}

/// Pushes a parent image `<host>/axway/apigw-emt:1` (layer `variant`), then
/// stage `test`'s image on it to `<host>/apim/gw`: (base, repo, result).
async fn push_parent_and_stage(
    client: &ImageClient,
    host: &str,
    variant: &str,
) -> anyhow::Result<(String, String, PushResult)> {
    let parent = test_image(ManifestFormat::Oci, "amd64", variant);
    push_test_image(
        client,
        &Target::parse(&format!("{host}/axway/apigw-emt"))?,
        "1",
        &parent,
    )
    .await?;
    let base = format!("{host}/axway/apigw-emt:1");
    let repo = format!("{host}/apim/gw");
    let pushed = client
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    Ok((base, repo, pushed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry() -> anyhow::Result<()> {
    let reg = Registry::start_with_basic_auth("gantry", "s3cret-pw").await?;
    let host = reg.host_port();
    let good =
        client_with(CredentialStore::new().with(&host, Credentials::new("gantry", "s3cret-pw")));
    let (base, repo, pushed) = push_parent_and_stage(&good, &host, "auth").await?;
    assert_eq!(pushed.blobs_mounted, 2);
    let info = skopeo_inspect(
        &format!("{repo}:test-c0ffee1"),
        &["--creds", "gantry:s3cret-pw"],
    )?;
    assert_eq!(info["Labels"]["io.gantry.stage"], "test");

    // Without credentials: a clear 401 naming the registry.
    let anon = client();
    let err = anon
        .build_and_push(&request(&base, &repo, "prod", COMMIT))
        .await
        .expect_err("anonymous push must fail");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.status(), Some(401));
    assert!(
        msg.contains(&host) && msg.contains("401") && msg.contains("no credentials"),
        "{msg}"
    );

    // Wrong password: 401 as well, without the password in the message.
    let bad =
        client_with(CredentialStore::new().with(&host, Credentials::new("gantry", "wrong-pw")));
    let err = bad
        .resolve(&ImageSource::parse(&base)?, false)
        .await
        .expect_err("wrong password must fail");
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains(&host) && msg.contains("401") && msg.contains("rejected"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-pw") && !format!("{err:?}").contains("wrong-pw"));
    assert!(!format!("{:?}", bad.options()).contains("wrong-pw"));

    // Credentials from a Docker config.json auths entry.
    let tmp = tempfile::tempdir()?;
    let cfg = tmp.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("gantry:s3cret-pw");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"http://{host}":{{"auth":"{auth}"}}}}}}"#),
    )?;
    let from_file = client_with(CredentialStore::load_docker_config(&cfg)?);
    let again = from_file
        .build_and_push(&request(&base, &repo, "test", COMMIT))
        .await?;
    assert_eq!(again.digest, pushed.digest);
    assert_eq!(again.bytes_uploaded, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let proxy = Proxy::start_bearer(&reg.url(), "robot", "t0ken-secret").await;
    let host = proxy.host_port();
    let c =
        client_with(CredentialStore::new().with(&host, Credentials::new("robot", "t0ken-secret")));
    let (base, _repo, pushed) = push_parent_and_stage(&c, &host, "bearer").await?;
    // Mounting needs pull on the parent's repository in the same token.
    assert_eq!(pushed.blobs_mounted, 2);
    let reqs = proxy.token_requests();
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| r.user.as_deref() == Some("robot")));
    assert!(reqs.iter().any(|r| {
        r.scopes
            .contains(&"repository:apim/gw:pull,push".to_owned())
            && r.scopes
                .contains(&"repository:axway/apigw-emt:pull".to_owned())
    }));
    // Tokens are cached per scope: far fewer token requests than API calls.
    let api_calls = proxy
        .log()
        .iter()
        .filter(|l| l.path.starts_with("/v2/"))
        .count();
    assert!(
        reqs.len() * 3 < api_calls,
        "{} tokens for {api_calls} calls",
        reqs.len()
    );
    // The real registry behind has the image.
    let info = skopeo_inspect(&format!("{}/apim/gw:test-c0ffee1", reg.host_port()), &[])?;
    assert_eq!(info["Digest"], pushed.digest.to_string());

    // Without credentials the token service refuses: 401 naming the registry.
    let err = client()
        .resolve(&ImageSource::parse(&base)?, false)
        .await
        .expect_err("anonymous must fail");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, ImageError::Unauthorized { .. }));
    assert!(
        msg.contains(&host) && msg.contains("token service"),
        "{msg}"
    );
    Ok(())
}
