//! `POST /webhooks/bitbucket`: `X-Hub-Signature: sha256=<hex>` and
//! `X-Event-Key`, for Bitbucket Cloud and Data Center.

use crate::support::{bytes, fixture, hmac_hex, secret, TestApp};

fn signed(pipeline: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(&secret(pipeline), body))
}

#[tokio::test]
async fn cloud_and_data_center_pushes_start_runs() {
    let app = TestApp::start().await;
    let cloud = bytes(&fixture("bitbucket-push.json"));
    let a = app
        .post(
            "bitbucket",
            &[
                ("X-Event-Key", "repo:push"),
                ("X-Request-UUID", "bb-cloud-1"),
                ("X-Hub-Signature", &signed("bitbucket", &cloud)),
            ],
            &cloud,
        )
        .await;
    let runs = a.accepted();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "bitbucket");
    assert_eq!(
        a.json()["runs"][0]["commit"],
        "1e65c05c209d6a7c6bd0d6d7b6ae8f2d9f4b7e21"
    );
    let received = app.commit_received(&runs[0].1).await;
    assert_eq!(received["provider"], "bitbucket");
    assert_eq!(received["delivery_id"], "bb-cloud-1");

    let dc = bytes(&fixture("bitbucket-server-refs-changed.json"));
    let a = app
        .post(
            "bitbucket",
            &[
                ("X-Event-Key", "repo:refs_changed"),
                ("X-Request-Id", "bb-dc-1"),
                ("X-Hub-Signature", &signed("bitbucket-dc", &dc)),
            ],
            &dc,
        )
        .await;
    let runs = a.accepted();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "bitbucket-dc");
    assert_eq!(
        a.json()["runs"][0]["commit"],
        "178864a7d521b6f5e720b386b2c2b0ef8563e0dc"
    );
    assert_eq!(app.head().await, 4);
}

#[tokio::test]
async fn a_ping_is_answered_and_a_bad_signature_is_a_401() {
    let app = TestApp::start().await;
    let a = app
        .post("bitbucket", &[("X-Event-Key", "diagnostics:ping")], b"{}")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["status"], "pong");

    let cloud = bytes(&fixture("bitbucket-push.json"));
    // Signed with the Data Center pipeline's secret: not this repository's.
    for signature in [
        signed("bitbucket-dc", &cloud),
        hmac_hex(&secret("bitbucket"), &cloud),
    ] {
        app.post(
            "bitbucket",
            &[
                ("X-Event-Key", "repo:push"),
                ("X-Hub-Signature", &signature),
            ],
            &cloud,
        )
        .await
        .assert_problem(401, "signature does not verify");
    }
    app.post(
        "bitbucket",
        &[("X-Event-Key", "pullrequest:created")],
        &cloud,
    )
    .await
    .assert_ignored("`pullrequest:created` events start no run");
    assert_eq!(app.head().await, 0);
}
