//! `POST /api/v1/runs/{id}/stages/{stage}/approve|reject`: who may decide
//! (approver groups, not the run's authors), when (once the stage asks),
//! and what without API tokens (DESIGN.md 1.7).

use gantry_proto::events::{ApprovalRequested, RunCancelled, StageStarted};
use serde_json::json;

use crate::support::{assert_problem, Options, TestApp, Token, DAVE, RITA};

/// The seeded runs' triggerer, holding a release manager's token.
const SEED: Token = ("seed-token", "seed", "[release-managers]");

/// One approval by anyone: decidable without tokens.
const SOLO: &str = "\
name: solo
source: { repo: REPO, branch: main }
gateway: { format: yaml, path: gateway/ }
stages:
  - name: only
    approval: {}
";

fn requested(stage: &str, approvers: &[&str]) -> ApprovalRequested {
    ApprovalRequested {
        stage: stage.into(),
        required: 1,
        approvers: approvers.iter().map(|a| a.to_string()).collect(),
        expires_at: None,
    }
}

fn approve(run: &str, stage: &str) -> String {
    format!("/api/v1/runs/{run}/stages/{stage}/approve")
}

fn reject(run: &str, stage: &str) -> String {
    format!("/api/v1/runs/{run}/stages/{stage}/reject")
}

#[tokio::test]
async fn release_managers_who_are_not_authors_approve() {
    let app = TestApp::start(Options::with_tokens(&[RITA, DAVE, SEED])).await;
    let run = app.seed_run(&app.commits[0]).await;
    let path = approve(&run, "prod");

    // Before the stage asks, nobody could see what they approve.
    assert_problem(
        &app.post_as("rita-token", &path, json!({})).await,
        409,
        &["not waiting for approval yet"],
    );
    app.record(&run, &requested("prod", &["release-managers"]))
        .await;
    let head = app.head().await;

    assert_problem(
        &app.post(&path, json!({})).await,
        401,
        &["Authorization: Bearer"],
    );
    assert_problem(
        &app.post_as("forged", &path, json!({})).await,
        401,
        &["unknown API token"],
    );
    assert_problem(
        &app.post_as("dave-token", &path, json!({})).await,
        403,
        &["dave may not decide on stage `prod`", "release-managers"],
    );
    // seed triggered the run: an author, whatever their group.
    assert_problem(
        &app.post_as("seed-token", &path, json!({})).await,
        403,
        &["seed is an author of this run"],
    );
    assert_eq!(app.head().await, head, "refusals record nothing");

    // The token says who approves; a `user` in the body is not taken.
    let a = app
        .post_as(
            "rita-token",
            &path,
            json!({ "comment": "looks good", "user": "mallory" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let event = a.json();
    assert_eq!(event["type"], "io.gantry.approval.granted.v1");
    assert_eq!(event["subject"], run.as_str());
    assert_eq!(event["source"], "gantry/api");
    assert_eq!(
        event["data"],
        json!({ "stage": "prod", "user": "rita", "comment": "looks good" })
    );
    assert_eq!(
        app.event_names(&run).await.last().map(String::as_str),
        Some("approval.granted")
    );
    let view = app
        .get_as("rita-token", &format!("/api/v1/runs/{run}"))
        .await
        .json();
    assert_eq!(view["stages"][1]["approvals"][0]["user"], "rita", "{view}");
    assert_eq!(view["stages"][1]["approvals"][0]["decision"], "granted");
}

#[tokio::test]
async fn a_rejection_needs_a_reason() {
    let app = TestApp::start(Options::with_tokens(&[RITA, DAVE])).await;
    let run = app.seed_run(&app.commits[0]).await;
    let path = reject(&run, "prod");
    for body in [json!({}), json!({ "reason": "   " })] {
        assert_problem(
            &app.post_as("rita-token", &path, body).await,
            400,
            &["a rejection needs a `reason`"],
        );
    }
    assert_problem(
        &app.post_as("dave-token", &path, json!({ "reason": "no" }))
            .await,
        403,
        &["dave may not decide"],
    );
    let a = app
        .post_as("rita-token", &path, json!({ "reason": "breaks the quota" }))
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let event = a.json();
    assert_eq!(event["type"], "io.gantry.approval.rejected.v1");
    assert_eq!(
        event["data"],
        json!({ "stage": "prod", "user": "rita", "reason": "breaks the quota" })
    );
}

#[tokio::test]
async fn without_tokens_an_approval_that_needs_identities_is_refused() {
    let app = TestApp::start(Options::default()).await;
    let run = app.seed_run(&app.commits[0]).await;
    app.record(&run, &requested("prod", &["release-managers"]))
        .await;
    let head = app.head().await;
    let p = assert_problem(
        &app.post(&approve(&run, "prod"), json!({ "user": "rita" }))
            .await,
        403,
        &[
            "without API tokens nobody can be told apart",
            "GANTRY_API_TOKENS",
        ],
    );
    assert_eq!(p["type"], "https://gantry.dev/problems/api-tokens-required");
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn without_tokens_an_open_approval_records_who_the_body_names() {
    let app = TestApp::start(Options::default().pipeline(SOLO)).await;
    let run = app.seed_run_of("solo", &app.commits[0]).await;
    app.record(&run, &requested("only", &[])).await;
    let path = approve(&run, "only");
    // The run's triggerer may not approve it (allow_self is false).
    assert_problem(
        &app.post(&path, json!({ "user": "seed" })).await,
        403,
        &["seed is an author of this run"],
    );
    let a = app.post(&path, json!({ "user": "olga" })).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"]["user"], "olga");
    // An empty body decides as `anonymous`.
    let a = app.send(axum::http::Method::POST, &path, None, None).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"]["user"], "anonymous");
}

#[tokio::test]
async fn what_cannot_be_decided_is_refused() {
    let app = TestApp::start(Options::with_tokens(&[RITA])).await;
    let run = app.seed_run(&app.commits[0]).await;
    app.record(&run, &requested("prod", &["release-managers"]))
        .await;
    let rita = |path: String| {
        let app = &app;
        async move { app.post_as("rita-token", &path, json!({})).await }
    };
    assert_problem(
        &rita(approve("nope", "prod")).await,
        404,
        &["no run `nope`"],
    );
    assert_problem(
        &rita(approve(&run, "qa")).await,
        404,
        &["has no stage `qa`"],
    );
    assert_problem(
        &rita(approve(&run, "dev")).await,
        409,
        &["stage `dev` of `demo` needs no approval"],
    );
    app.record(
        &run,
        &StageStarted {
            stage: "prod".into(),
            commit: app.commits[0].clone(),
            image: None,
            digest: None,
            rollback: false,
        },
    )
    .await;
    assert_problem(
        &rita(approve(&run, "prod")).await,
        409,
        &["has already started; nothing to approve"],
    );
    // A rejection now would change nothing, yet show prod as rejected.
    let head = app.head().await;
    let a = app
        .post_as(
            "rita-token",
            &reject(&run, "prod"),
            json!({ "reason": "late" }),
        )
        .await;
    assert_problem(&a, 409, &["has already started; nothing to reject"]);
    assert_eq!(app.head().await, head);
    app.record(
        &run,
        &RunCancelled {
            user: "ops".into(),
            reason: None,
        },
    )
    .await;
    for path in [approve(&run, "prod"), reject(&run, "prod")] {
        assert_problem(&rita(path).await, 409, &["has ended; nothing to decide"]);
    }
}
