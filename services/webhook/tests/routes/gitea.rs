//! `POST /webhooks/gitea`: a bare hex HMAC in `X-Gitea-Signature`, or
//! GitHub's `X-Hub-Signature-256` that Gitea also sends.

use crate::support::{bytes, fixture, hmac_hex, secret, TestApp};

const COMMIT: &str = "bffeb74224043ba2feb48d137756c8a9331c449a";

#[tokio::test]
async fn a_signed_push_starts_a_run_under_either_header() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("gitea-push.json"));
    let hex = hmac_hex(&secret("gitea"), &body);
    let a = app
        .post(
            "gitea",
            &[
                ("X-Gitea-Event", "push"),
                ("X-Gitea-Delivery", "gitea-1"),
                ("X-Gitea-Signature", &hex),
            ],
            &body,
        )
        .await;
    let runs = a.accepted();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "gitea");
    assert_eq!(a.json()["runs"][0]["commit"], COMMIT);
    let received = app.commit_received(&runs[0].1).await;
    assert_eq!(received["provider"], "gitea");
    assert_eq!(received["delivery_id"], "gitea-1");
    assert_eq!(received["pusher"]["username"], "rita", "{received}");

    let prefixed = format!("sha256={hex}");
    let again = app
        .post(
            "gitea",
            &[
                ("X-Gitea-Event", "push"),
                ("X-Hub-Signature-256", &prefixed),
            ],
            &body,
        )
        .await;
    assert_eq!(again.accepted(), runs);
}

#[tokio::test]
async fn a_bad_signature_is_a_401() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("gitea-push.json"));
    // The prefixed form is not what X-Gitea-Signature carries.
    let prefixed = format!("sha256={}", hmac_hex(&secret("gitea"), &body));
    for signature in [hmac_hex("guessed", &body), prefixed] {
        app.post(
            "gitea",
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &signature)],
            &body,
        )
        .await
        .assert_problem(401, "signature does not verify");
    }
    app.post("gitea", &[("X-Gitea-Event", "push")], &body)
        .await
        .assert_problem(401, "signature does not verify");
    assert_eq!(app.head().await, 0);
}
