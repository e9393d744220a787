//! `POST /webhooks/generic`: `X-Gantry-Signature: sha256=<hex>`, the
//! documented JSON body, the repository as a URL, a local path or a full
//! name.

use serde_json::json;

use crate::support::{bytes, fixture, hmac_hex, secret, TestApp};

async fn send(app: &TestApp, pipeline: &str, body: &[u8]) -> crate::support::Answer {
    let signature = format!("sha256={}", hmac_hex(&secret(pipeline), body));
    app.post("generic", &[("X-Gantry-Signature", &signature)], body)
        .await
}

#[tokio::test]
async fn a_signed_push_starts_a_run_and_its_delivery_is_idempotent() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("generic-push.json"));
    let a = send(&app, "generic", &body).await;
    let runs = a.accepted();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "generic");
    // Commit ids are recorded in lowercase.
    assert_eq!(
        a.json()["runs"][0]["commit"],
        "5d0a7c3e9f1b2468ace13579bdf02468ace13579"
    );
    let received = app.commit_received(&runs[0].1).await;
    assert_eq!(received["provider"], "generic");
    assert_eq!(received["delivery_id"], "nightly-2026-11-03");
    assert_eq!(received["message"], "Nightly rebuild");
    assert_eq!(received["author"]["email"], "ci@example.com");

    let again = send(&app, "generic", &body).await;
    assert_eq!(again.accepted(), runs);
    assert_eq!(again.json()["runs"][0]["created"], false);
    assert_eq!(app.head().await, 2);
}

#[tokio::test]
async fn the_repository_may_be_a_full_name_or_a_local_path() {
    let app = TestApp::start().await;
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let by_name =
        json!({ "repository": "apim/banking-config", "ref": "refs/heads/main", "commit": commit });
    let runs = send(&app, "generic", &bytes(&by_name)).await.accepted();
    assert_eq!(runs[0].0, "generic", "source.webhook_repo matched");

    // A local path equals its file:// URL.
    let local = json!({ "repository": "file:///srv/git/local-config/", "branch": "main", "commit": commit });
    let runs = send(&app, "local", &bytes(&local)).await.accepted();
    assert_eq!(runs[0].0, "local");
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_a_ping_answered() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("generic-push.json"));
    send(&app, "github", &body)
        .await
        .assert_problem(401, "signature does not verify");
    app.post("generic", &[], &body)
        .await
        .assert_problem(401, "signature does not verify");
    let cases = [
        (
            json!({ "repository": "apim/banking-config", "branch": "main" }),
            "missing required field `commit`",
        ),
        (
            json!({ "repository": "apim/banking-config", "commit": "a".repeat(40) }),
            "`ref` or `branch`",
        ),
        (
            json!({ "ref": "refs/heads/main", "commit": "a".repeat(40) }),
            "missing required field `repository`",
        ),
        (
            json!({ "repository": "apim/banking-config", "ref": "main", "commit": "a".repeat(40) }),
            "expected a full ref",
        ),
    ];
    for (payload, needle) in cases {
        send(&app, "generic", &bytes(&payload))
            .await
            .assert_problem(400, needle);
    }
    let a = app
        .post("generic", &[("X-Gantry-Event", "ping")], b"{}")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["status"], "pong");
    app.post("generic", &[("X-Gantry-Event", "release")], &body)
        .await
        .assert_ignored("`release` events start no run");
    assert_eq!(app.head().await, 0);
}
