//! `POST /api/v1/runs` without API tokens: one run per (pipeline, commit),
//! the branch head when no commit is named, and the refusals (who may
//! trigger, and commits off the branch, are in `auth`).

use serde_json::json;

use crate::support::{assert_problem, Options, TestApp};

/// A pipeline following a branch the repository does not have.
const GONE: &str = "\
name: gone
source: { repo: REPO, branch: nope }
gateway: { format: yaml, path: gateway/ }
stages:
  - name: only
";

#[tokio::test]
async fn a_manual_trigger_starts_one_run_per_commit() {
    let app = TestApp::start(Options::default()).await;
    let commit = app.commits[0].clone();
    let body = json!({ "pipeline": "demo", "commit": commit, "message": "by hand" });

    let a = app.post("/api/v1/runs", body.clone()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let run = a.json();
    assert_eq!(run["pipeline"], "demo");
    assert_eq!(run["commit"], commit.as_str());
    assert_eq!(run["created"], true);
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    let events = app.app.store.read_run(&run_id).await.unwrap();
    let received = &events[0].event.data;
    assert_eq!(received["provider"], "manual");
    assert_eq!(received["branch"], "main");
    assert!(
        received["triggered_by"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "who triggered is an author of the run: {received}"
    );
    let started = &events[1].event.data;
    assert_eq!(started["trigger"], "manual");
    assert_eq!(started["message"], "by hand");
    // The repository's commit names its author and committer.
    assert!(
        started["authors"].as_array().unwrap().len() >= 2,
        "{started}"
    );

    // The same commit again: the same run, 200.
    let head = app.head().await;
    let again = app.post("/api/v1/runs", body).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["run_id"], run_id.as_str());
    assert_eq!(again.json()["created"], false);
    assert_eq!(app.head().await, head, "nothing recorded twice");

    // Commit ids are compared in lowercase.
    let upper = app
        .post(
            "/api/v1/runs",
            json!({ "pipeline": "demo", "commit": app.commits[1].to_uppercase() }),
        )
        .await;
    assert_eq!(upper.status, 201, "{}", upper.text());
    assert_eq!(upper.json()["commit"], app.commits[1].as_str());
}

#[tokio::test]
async fn without_a_commit_the_branch_head_is_started() {
    let app = TestApp::start(Options::default()).await;
    let a = app
        .post("/api/v1/runs", json!({ "pipeline": "demo" }))
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["commit"], app.commits[1].as_str());
}

#[tokio::test]
async fn a_trigger_names_a_known_pipeline_and_a_full_commit() {
    let app = TestApp::start(Options::default()).await;
    let head = app.head().await;
    assert_problem(
        &app.post("/api/v1/runs", json!({ "pipeline": "nope" }))
            .await,
        404,
        &["no pipeline named `nope`"],
    );
    assert_problem(
        &app.post(
            "/api/v1/runs",
            json!({ "pipeline": "demo", "commit": "abc123" }),
        )
        .await,
        400,
        &["commit `abc123` is not a full commit id"],
    );
    let p = assert_problem(
        &app.post("/api/v1/runs", json!({ "commit": app.commits[0] }))
            .await,
        400,
        &["invalid trigger request", "missing field `pipeline`"],
    );
    assert_eq!(
        p["example"]["pipeline"], "banking",
        "the problem shows an example: {p}"
    );
    assert_eq!(app.head().await, head, "nothing recorded");
}

#[tokio::test]
async fn a_branch_the_repository_lacks_is_a_422() {
    let app = TestApp::start(Options::default().pipeline(GONE)).await;
    assert_problem(
        &app.post("/api/v1/runs", json!({ "pipeline": "gone" }))
            .await,
        422,
        &["pass a commit explicitly"],
    );
    assert_problem(
        &app.post(
            "/api/v1/runs",
            json!({ "pipeline": "gone", "commit": app.commits[0] }),
        )
        .await,
        422,
        &["has no branch `nope`"],
    );
    assert_eq!(app.head().await, 0, "nothing recorded");
}
