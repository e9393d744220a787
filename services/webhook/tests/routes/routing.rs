//! What every provider shares: the route itself (unknown providers, wrong
//! methods, oversized bodies), and which pipeline a push belongs to when
//! several follow one repository or one has no secret.

use crate::support::{bytes, fixture, hmac_hex, secret, TestApp};

#[tokio::test]
async fn only_the_five_providers_and_post_are_served() {
    let app = TestApp::start().await;
    app.post("svn", &[], b"{}")
        .await
        .assert_problem(404, "unknown webhook provider `svn`");
    app.send("GET", "/webhooks/github", &[], b"")
        .await
        .assert_problem(405, "");
    app.send("POST", "/webhooks", &[], b"{}")
        .await
        .assert_problem(404, "no such route");
    app.send("POST", "/webhooks/github/push", &[], b"{}")
        .await
        .assert_problem(404, "no such route");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let app = TestApp::start().await;
    let huge = vec![b' '; gantry_webhook::MAX_BODY + 1];
    let signature = format!("sha256={}", hmac_hex(&secret("github"), &huge));
    let length = huge.len().to_string();
    app.post(
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
            ("Content-Length", &length),
        ],
        &huge,
    )
    .await
    .assert_problem(413, "larger than");
    // Without a Content-Length the body extractor stops it.
    app.post(
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &huge,
    )
    .await
    .assert_problem(413, "");
    assert_eq!(app.head().await, 0);
}

#[tokio::test]
async fn each_pipeline_following_a_repository_checks_its_own_secret() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("github-push.json"));
    let as_pipeline = |pipeline: &str| format!("sha256={}", hmac_hex(&secret(pipeline), &body));
    let audit = app
        .post(
            "github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &as_pipeline("github-audit")),
            ],
            &body,
        )
        .await
        .accepted();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "github-audit");
    let main = app
        .post(
            "github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &as_pipeline("github")),
            ],
            &body,
        )
        .await
        .accepted();
    assert_eq!(main.len(), 1, "{main:?}");
    assert_eq!(main[0].0, "github");
    assert_ne!(main[0].1, audit[0].1, "one run per pipeline");
}

#[tokio::test]
async fn a_pipeline_without_a_webhook_secret_accepts_no_delivery() {
    let app = TestApp::start().await;
    let body = bytes(&serde_json::json!({
        "repository": "https://git.example.com/apim/unsigned.git",
        "branch": "main",
        "commit": "a".repeat(40),
    }));
    // Not even one signed with an empty key.
    for key in ["", "secret-unsigned"] {
        let signature = format!("sha256={}", hmac_hex(key, &body));
        app.post("generic", &[("X-Gantry-Signature", &signature)], &body)
            .await
            .assert_problem(401, "signature does not verify");
    }
    assert_eq!(app.head().await, 0);
}
