//! `POST /api/v1/pipelines/{name}/stages/{stage}/rollback`: a one-stage run
//! re-promoting an earlier release; who may ask (`access.operate`, else the
//! stage's approvers), and what there is to go back to.

use gantry_proto::events::{EnvPromoted, PackageBuilt};
use serde_json::{json, Value};

use crate::support::{assert_problem, package_built, Options, TestApp, DAVE, RITA};

/// Records that `run` built its package for `stage` and promoted it.
pub async fn promote(app: &TestApp, run: &str, stage: &str, commit: &str, digest: &str) {
    app.record(
        run,
        &PackageBuilt {
            commit: Some(commit.into()),
            ..package_built(stage, digest)
        },
    )
    .await;
    app.record(
        run,
        &EnvPromoted {
            stage: stage.into(),
            commit: commit.into(),
            image: None,
            digest: None,
        },
    )
    .await;
}

/// Two runs of `demo` that each promoted `dev`: (older, newer).
async fn two_releases(app: &TestApp) -> (String, String) {
    let (c0, c1) = (app.commits[0].clone(), app.commits[1].clone());
    let older = app.seed_run(&c0).await;
    promote(
        app,
        &older,
        "dev",
        &c0,
        &format!("sha256:{}", "a".repeat(64)),
    )
    .await;
    let newer = app.seed_run(&c1).await;
    promote(
        app,
        &newer,
        "dev",
        &c1,
        &format!("sha256:{}", "b".repeat(64)),
    )
    .await;
    (older, newer)
}

const DEV: &str = "/api/v1/pipelines/demo/stages/dev/rollback";

#[tokio::test]
async fn a_rollback_goes_back_to_the_previous_release_once() {
    let app = TestApp::start(Options::default()).await;
    let (older, _) = two_releases(&app).await;
    let a = app
        .post(
            DEV,
            json!({ "reason": "errors after the release", "user": "ops" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let run = a.json();
    assert_eq!(run["pipeline"], "demo");
    assert_eq!(run["commit"], app.commits[0].as_str());
    assert_eq!(run["created"], true);
    let id = run["run_id"].as_str().unwrap().to_owned();

    let events = app.app.store.read_run(&id).await.unwrap();
    let started = &events[0].event.data;
    assert_eq!(started["trigger"], "rollback");
    let stages: Vec<&Value> = started["stages"].as_array().unwrap().iter().collect();
    assert_eq!(stages.len(), 1, "one stage: {started}");
    assert_eq!(stages[0]["name"], "dev");
    assert_eq!(started["rollback"]["to_run"], older.as_str());
    assert_eq!(started["rollback"]["requested_by"], "ops");
    assert_eq!(started["rollback"]["reason"], "errors after the release");

    // Asking again while it goes: the same run.
    let again = app.post(DEV, json!({})).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["run_id"], id.as_str());
    assert_eq!(again.json()["created"], false);
}

#[tokio::test]
async fn a_rollback_to_a_named_release() {
    let app = TestApp::start(Options::default()).await;
    let (older, newer) = two_releases(&app).await;
    assert_problem(
        &app.post(DEV, json!({ "to": newer })).await,
        409,
        &["already runs the release of run"],
    );
    assert_problem(
        &app.post(DEV, json!({ "to": "nope" })).await,
        400,
        &["run nope never promoted stage `dev`"],
    );
    let a = app.post(DEV, json!({ "to": older })).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["commit"], app.commits[0].as_str());
}

#[tokio::test]
async fn there_must_be_an_earlier_release_to_go_back_to() {
    let app = TestApp::start(Options::default()).await;
    assert_problem(
        &app.post(DEV, json!({})).await,
        409,
        &["stage `dev` has not run an earlier release"],
    );
    let run = app.seed_run(&app.commits[0]).await;
    promote(
        &app,
        &run,
        "dev",
        &app.commits[0],
        &format!("sha256:{}", "a".repeat(64)),
    )
    .await;
    assert_problem(
        &app.post(DEV, json!({})).await,
        409,
        &["has not run an earlier release"],
    );
    assert_problem(
        &app.post("/api/v1/pipelines/nope/stages/dev/rollback", json!({}))
            .await,
        404,
        &["no pipeline named `nope`"],
    );
    assert_problem(
        &app.post("/api/v1/pipelines/demo/stages/qa/rollback", json!({}))
            .await,
        404,
        &["pipeline `demo` has no stage `qa`"],
    );
}

#[tokio::test]
async fn with_tokens_the_stage_approvers_may_roll_back_a_guarded_stage() {
    let app = TestApp::start(Options::with_tokens(&[RITA, DAVE])).await;
    two_releases(&app).await;
    let prod = "/api/v1/pipelines/demo/stages/prod/rollback";
    assert_problem(
        &app.post(prod, json!({})).await,
        401,
        &["Authorization: Bearer"],
    );
    assert_problem(
        &app.post_as("dave-token", prod, json!({})).await,
        403,
        &["dave may not roll back stage `prod`", "release-managers"],
    );
    // rita may: what stops her is that prod has nothing to go back to.
    assert_problem(
        &app.post_as("rita-token", prod, json!({})).await,
        409,
        &["has not run an earlier release"],
    );
    // `dev` has no approvers: any token holder, recorded as who asked.
    let a = app
        .post_as("dave-token", DEV, json!({ "user": "mallory" }))
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["run_id"].as_str().unwrap().to_owned();
    let events = app.app.store.read_run(&id).await.unwrap();
    assert_eq!(events[0].event.data["rollback"]["requested_by"], "dave");
}
