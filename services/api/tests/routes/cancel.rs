//! `POST /api/v1/runs/{id}/cancel`: a running run ends once; with API
//! tokens, `access.operate` names who may cancel (default: any holder).

use serde_json::json;

use crate::support::{assert_problem, Options, TestApp, Token, DAVE};

const OLGA: Token = ("olga-token", "olga", "[operators]");

/// Only operators may cancel or roll back.
const OPS: &str = "\
name: ops
source: { repo: REPO, branch: main }
gateway: { format: yaml, path: gateway/ }
stages:
  - name: only
access:
  operate: [operators]
";

fn cancel(run: &str) -> String {
    format!("/api/v1/runs/{run}/cancel")
}

#[tokio::test]
async fn a_running_run_is_cancelled_once() {
    let app = TestApp::start(Options::default()).await;
    let run = app.seed_run(&app.commits[0]).await;
    let a = app
        .post(
            &cancel(&run),
            json!({ "reason": "wrong commit", "user": "ops" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let event = a.json();
    assert_eq!(event["type"], "io.gantry.run.cancelled.v1");
    assert_eq!(event["subject"], run.as_str());
    assert_eq!(
        event["data"],
        json!({ "user": "ops", "reason": "wrong commit" })
    );
    let view = app.get(&format!("/api/v1/runs/{run}")).await.json();
    assert_eq!(view["status"], "cancelled", "{view}");

    let head = app.head().await;
    assert_problem(
        &app.post(&cancel(&run), json!({})).await,
        409,
        &["has already ended"],
    );
    assert_problem(
        &app.post(&cancel("nope"), json!({})).await,
        404,
        &["no run `nope`"],
    );
    assert_eq!(app.head().await, head, "refusals record nothing");

    // No body at all: cancelled by `anonymous`, without a reason.
    let other = app.seed_run(&app.commits[1]).await;
    let a = app
        .send(axum::http::Method::POST, &cancel(&other), None, None)
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"], json!({ "user": "anonymous" }));
}

#[tokio::test]
async fn with_tokens_access_operate_decides_who_may_cancel() {
    let app = TestApp::start(Options::with_tokens(&[OLGA, DAVE]).pipeline(OPS)).await;
    let run = app.seed_run_of("ops", &app.commits[0]).await;
    assert_problem(
        &app.post(&cancel(&run), json!({})).await,
        401,
        &["Authorization: Bearer"],
    );
    assert_problem(
        &app.post_as("dave-token", &cancel(&run), json!({})).await,
        403,
        &["dave may not cancel run", "operators"],
    );
    // The token names who cancelled, not the body.
    let a = app
        .post_as("olga-token", &cancel(&run), json!({ "user": "mallory" }))
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"]["user"], "olga");

    // `demo` names no operators: any token holder may cancel.
    let demo = app.seed_run(&app.commits[0]).await;
    let a = app.post_as("dave-token", &cancel(&demo), json!({})).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"]["user"], "dave");
}
