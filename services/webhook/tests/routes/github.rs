//! `POST /webhooks/github`: `X-Hub-Signature-256`, `X-GitHub-Event`,
//! `X-GitHub-Delivery`.

use serde_json::json;

use crate::support::{bytes, fixture, hmac_hex, secret, TestApp};

const COMMIT: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

fn signed(body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(&secret("github"), body))
}

async fn push(app: &TestApp, body: &[u8], delivery: &str) -> crate::support::Answer {
    let signature = signed(body);
    app.post(
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn a_signed_push_starts_one_run_and_a_redelivery_none() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("github-push.json"));

    let a = push(&app, &body, "delivery-1").await;
    let runs = a.accepted();
    let [(pipeline, run)] = runs.as_slice() else {
        panic!("one run: {runs:?}");
    };
    assert_eq!(
        pipeline, "github",
        "only the pipeline whose secret signed it"
    );
    assert_eq!(a.json()["runs"][0]["commit"], COMMIT);
    assert_eq!(a.json()["runs"][0]["created"], true);
    let received = app.commit_received(run).await;
    assert_eq!(received["provider"], "github");
    assert_eq!(received["delivery_id"], "delivery-1");
    assert_eq!(received["branch"], "main");
    assert_eq!(received["commit"], COMMIT);
    // Who pushed counts as an author (separation of duties).
    assert_eq!(received["pusher"]["username"], "rita-ops", "{received}");
    assert_eq!(app.head().await, 2, "commit.received and run.started");

    // The forge redelivers, or another delivery names the same commit.
    for delivery in ["delivery-1", "delivery-2"] {
        let again = push(&app, &body, delivery).await;
        assert_eq!(again.accepted(), runs, "{delivery}");
        assert_eq!(again.json()["runs"][0]["created"], false);
    }
    assert_eq!(app.head().await, 2, "nothing recorded twice");
}

#[tokio::test]
async fn a_push_that_does_not_verify_records_nothing() {
    let app = TestApp::start().await;
    let body = bytes(&fixture("github-push.json"));
    let mut tampered = fixture("github-push.json");
    tampered["after"] = json!("0123456789abcdef0123456789abcdef01234567");
    // (what, X-Hub-Signature-256, body)
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("no signature", None, body.clone()),
        (
            "another secret",
            Some(format!("sha256={}", hmac_hex("guessed", &body))),
            body.clone(),
        ),
        (
            "signed, then changed",
            Some(signed(&body)),
            bytes(&tampered),
        ),
        (
            "SHA-1 scheme",
            Some(format!(
                "sha1={}",
                &hmac_hex(&secret("github"), &body)[..40]
            )),
            body.clone(),
        ),
    ];
    for (what, signature, body) in cases {
        let mut headers = vec![("X-GitHub-Event", "push")];
        headers.extend(signature.as_deref().map(|s| ("X-Hub-Signature-256", s)));
        let p = app
            .post("github", &headers, &body)
            .await
            .assert_problem(401, "signature does not verify");
        assert_eq!(
            p["type"], "https://gantry.dev/problems/bad-signature",
            "{what}"
        );
    }
    assert_eq!(app.head().await, 0, "nothing recorded");
}

#[tokio::test]
async fn a_ping_is_answered_and_other_events_are_ignored() {
    let app = TestApp::start().await;
    let ping = bytes(&fixture("github-ping.json"));
    let a = app
        .post(
            "github",
            &[
                ("X-GitHub-Event", "ping"),
                ("X-Hub-Signature-256", &signed(&ping)),
            ],
            &ping,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({ "status": "pong" }));

    let a = app
        .post("github", &[("X-GitHub-Event", "issues")], b"{}")
        .await;
    a.assert_ignored("`issues` events start no run");
    assert_eq!(app.head().await, 0);
}

#[tokio::test]
async fn pushes_no_pipeline_builds_are_ignored_once_verified() {
    let app = TestApp::start().await;
    let mut branch = fixture("github-push.json");
    branch["ref"] = json!("refs/heads/feature/x");
    let mut tag = fixture("github-push.json");
    tag["ref"] = json!("refs/tags/v1.0.0");
    let deleted = fixture("github-push-delete.json");
    let cases = [
        (bytes(&branch), "no pipeline follows branch `feature/x`"),
        (bytes(&tag), "`refs/tags/v1.0.0` is not a branch"),
        (bytes(&deleted), "branch `feature/new-quota` was deleted"),
    ];
    for (body, why) in &cases {
        push(&app, body, "d").await.assert_ignored(why);
        // Unsigned, the same delivery learns nothing about branches.
        app.post("github", &[("X-GitHub-Event", "push")], body)
            .await
            .assert_problem(401, "signature does not verify");
    }

    let mut elsewhere = fixture("github-push.json");
    for key in ["clone_url", "git_url", "ssh_url", "html_url"] {
        elsewhere["repository"][key] = json!("https://github.com/acme/unknown");
    }
    elsewhere["repository"]["full_name"] = json!("acme/unknown");
    push(&app, &bytes(&elsewhere), "d")
        .await
        .assert_ignored("no pipeline follows this repository");
    assert_eq!(app.head().await, 0);
}

#[tokio::test]
async fn a_delivery_that_is_not_a_push_payload_is_a_400() {
    let app = TestApp::start().await;
    let mut no_after = fixture("github-push.json");
    no_after.as_object_mut().unwrap().remove("after");
    let mut bad_commit = fixture("github-push.json");
    bad_commit["after"] = json!("not-a-commit");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"ref\": \"refs/heads/main\", ".to_vec(),
            "not valid JSON (line 1, column",
        ),
        (b"payload=%7B%7D".to_vec(), "form-encoded"),
        (b"[1, 2]".to_vec(), "must be a JSON object"),
        (bytes(&no_after), "missing required field `after`"),
        (bytes(&bad_commit), "invalid field `after`"),
    ];
    for (body, needle) in cases {
        let p = push(&app, &body, "d").await.assert_problem(400, needle);
        assert_eq!(p["type"], "https://gantry.dev/problems/malformed-webhook");
    }
    // Without the event header nobody knows what the body is.
    let body = bytes(&fixture("github-push.json"));
    app.post("github", &[("X-Hub-Signature-256", &signed(&body))], &body)
        .await
        .assert_problem(400, "missing X-GitHub-Event header");
    assert_eq!(app.head().await, 0);
}
