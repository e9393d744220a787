//! What the router serves beside the API: `/healthz`, `/readyz`, `/metrics`
//! (from the harness), and a problem for anything else; none of them behind
//! API tokens, every `/api` route behind them. (The console at `/` is
//! `gantry-console`'s, tested end to end in `tests/e2e/console.rs`.)

use axum::http::Method;

use crate::support::{assert_problem, Options, TestApp, RITA};

#[tokio::test]
async fn health_readiness_and_metrics_answer_without_a_token() {
    let app = TestApp::start(Options::with_tokens(&[RITA])).await;
    app.seed_run(&app.commits[0]).await;

    let a = app.get("/healthz").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), serde_json::json!({ "status": "ok" }));

    let a = app.get("/readyz").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let ready = a.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["database"], "ok");

    let a = app.get("/metrics").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        a.header("content-type").unwrap().starts_with("text/plain"),
        "{:?}",
        a.header("content-type")
    );
    assert!(
        a.text().contains("gantry_log_head_position 2"),
        "{}",
        a.text()
    );
}

#[tokio::test]
async fn every_api_route_needs_a_token_when_tokens_are_set() {
    let app = TestApp::start(Options::with_tokens(&[RITA])).await;
    let run = app.seed_run(&app.commits[0]).await;
    let routes = [
        (Method::GET, "/api/v1/pipelines".to_owned()),
        (Method::GET, "/api/v1/pipelines/demo".to_owned()),
        (
            Method::POST,
            "/api/v1/pipelines/demo/stages/dev/rollback".to_owned(),
        ),
        (Method::GET, "/api/v1/runs".to_owned()),
        (Method::POST, "/api/v1/runs".to_owned()),
        (Method::GET, format!("/api/v1/runs/{run}")),
        (Method::GET, format!("/api/v1/runs/{run}/events")),
        (Method::GET, format!("/api/v1/runs/{run}/stages/dev/diff")),
        (
            Method::GET,
            format!("/api/v1/runs/{run}/stages/dev/apis/plan"),
        ),
        (
            Method::POST,
            format!("/api/v1/runs/{run}/stages/prod/approve"),
        ),
        (
            Method::POST,
            format!("/api/v1/runs/{run}/stages/prod/reject"),
        ),
        (Method::POST, format!("/api/v1/runs/{run}/cancel")),
        (Method::GET, "/api/v1/events?follow=false".to_owned()),
    ];
    let head = app.head().await;
    for (method, path) in &routes {
        let body = (method == Method::POST).then(|| serde_json::json!({}));
        for token in [None, Some("forged")] {
            let a = app.send(method.clone(), path, token, body.clone()).await;
            let want = if token.is_some() {
                "unknown API token"
            } else {
                "Authorization: Bearer"
            };
            assert_problem(&a, 401, &[want]);
        }
    }
    assert_eq!(app.head().await, head, "nothing recorded without a token");
    // With one, the same routes answer (here: a read).
    let a = app.get_as("rita-token", "/api/v1/runs").await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn paths_no_route_serves_are_404_problems() {
    let app = TestApp::start(Options::default()).await;
    assert_problem(&app.get("/api/v1/nope").await, 404, &["no such API route"]);
    assert_problem(&app.get("/nope").await, 404, &["no such route"]);
    let a = app.send(Method::DELETE, "/api/v1/runs", None, None).await;
    assert_problem(&a, 405, &[]);
}
