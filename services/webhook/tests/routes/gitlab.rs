//! `POST /webhooks/gitlab`: the secret itself in `X-Gitlab-Token`,
//! `X-Gitlab-Event`, and the delivery id GitLab sends.

use serde_json::json;

use crate::support::{bytes, fixture, secret, TestApp};

const COMMIT: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";

#[tokio::test]
async fn a_push_hook_with_the_token_starts_a_run() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("gitlab-push.json"));
    let token = secret("gitlab");
    let headers = [
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Token", token.as_str()),
        (
            "X-Gitlab-Event-UUID",
            "3f4e6a1c-0000-4000-8000-000000000001",
        ),
    ];
    let a = app.post("gitlab", &headers, &body).await;
    let runs = a.accepted();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "gitlab");
    assert_eq!(a.json()["runs"][0]["commit"], COMMIT);
    let received = app.commit_received(&runs[0].1).await;
    assert_eq!(received["provider"], "gitlab");
    assert_eq!(
        received["delivery_id"],
        "3f4e6a1c-0000-4000-8000-000000000001"
    );
    assert_eq!(received["pusher"]["username"], "rita", "{received}");

    // A system hook carrying the same push names the same run.
    let system = [
        ("X-Gitlab-Event", "System Hook"),
        ("X-Gitlab-Token", token.as_str()),
    ];
    let again = app.post("gitlab", &system, &body).await;
    assert_eq!(again.accepted(), runs);
    assert_eq!(again.json()["runs"][0]["created"], false);
    assert_eq!(app.head().await, 2);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_a_401_and_other_hooks_are_ignored() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("gitlab-push.json"));
    for headers in [
        vec![("X-Gitlab-Event", "Push Hook")],
        vec![
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "guessed"),
        ],
        // Another pipeline's secret is not this pipeline's.
        vec![
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "secret-github"),
        ],
    ] {
        app.post("gitlab", &headers, &body)
            .await
            .assert_problem(401, "signature does not verify");
    }
    app.post("gitlab", &[("X-Gitlab-Event", "Merge Request Hook")], &body)
        .await
        .assert_ignored("`Merge Request Hook` events start no run");
    let mut other = fixture("gitlab-push.json");
    other["object_kind"] = json!("merge_request");
    app.post(
        "gitlab",
        &[("X-Gitlab-Event", "System Hook")],
        &bytes(&other),
    )
    .await
    .assert_ignored("System Hook (merge_request)");
    app.post("gitlab", &[], &body)
        .await
        .assert_problem(400, "missing X-Gitlab-Event header");
    assert_eq!(app.head().await, 0);
}
