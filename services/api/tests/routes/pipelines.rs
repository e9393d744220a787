//! `GET /api/v1/pipelines` and `GET /api/v1/pipelines/{name}`: the stages,
//! what each needs, and what each runs now.

use gantry_proto::events::EnvPromoted;
use serde_json::{json, Value};

use crate::support::{assert_problem, Options, TestApp};

#[tokio::test]
async fn pipelines_are_listed_with_their_stages() {
    let app = TestApp::start(Options::default()).await;
    let a = app.get("/api/v1/pipelines").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    let list = a.json();
    let [demo] = list.as_array().unwrap().as_slice() else {
        panic!("one pipeline: {list}");
    };
    assert_eq!(demo["name"], "demo");
    assert_eq!(
        demo["source"],
        json!({ "repo": app.repo.path().display().to_string(), "branch": "main" })
    );
    assert_eq!(
        demo["gateway"],
        json!({ "format": "yaml", "path": "gateway/" })
    );
    assert_eq!(demo["image"], Value::Null);
    let stages = demo["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{demo}");
    assert_eq!(stages[0]["name"], "dev");
    assert_eq!(stages[0]["after"], Value::Null);
    assert_eq!(stages[0]["approval"], Value::Null);
    assert_eq!(stages[0]["queue"], "latest");
    assert_eq!(stages[1]["name"], "prod");
    assert_eq!(stages[1]["after"], "dev");
    assert_eq!(
        stages[1]["approval"],
        json!({ "required": 1, "approvers": ["release-managers"], "allow_self": false })
    );
    assert!(stages.iter().all(|s| s["current"].is_null()), "{demo}");
}

#[tokio::test]
async fn a_pipeline_shows_what_each_stage_runs_now() {
    let app = TestApp::start(Options::default()).await;
    let commit = app.commits[0].clone();
    let run = app.seed_run(&commit).await;
    app.record(
        &run,
        &EnvPromoted {
            stage: "dev".into(),
            commit: commit.clone(),
            image: Some("registry.test/demo:dev-1".into()),
            digest: Some(format!("sha256:{}", "d".repeat(64))),
        },
    )
    .await;

    let a = app.get("/api/v1/pipelines/demo").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let demo = a.json();
    assert_eq!(demo["name"], "demo");
    let current = &demo["stages"][0]["current"];
    assert_eq!(current["stage"], "dev", "{demo}");
    assert_eq!(current["run_id"], run.as_str());
    assert_eq!(current["commit"], commit.as_str());
    assert_eq!(current["image"], "registry.test/demo:dev-1");
    assert!(current["promoted_at"].is_string(), "{current}");
    assert_eq!(
        demo["stages"][1]["current"],
        Value::Null,
        "prod ran nothing"
    );

    // The list says the same.
    let list = app.get("/api/v1/pipelines").await.json();
    assert_eq!(list[0]["stages"][0]["current"]["run_id"], run.as_str());
}

#[tokio::test]
async fn an_unknown_pipeline_is_a_404_problem() {
    let app = TestApp::start(Options::default()).await;
    assert_problem(
        &app.get("/api/v1/pipelines/nope").await,
        404,
        &["no pipeline named `nope`"],
    );
}
