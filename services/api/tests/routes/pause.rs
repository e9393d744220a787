//! `POST /api/v1/pipelines/{name}/stages/{stage}/pause|resume`: stop the
//! line. Who and why are recorded, the pipelines listing shows the pause,
//! a second pause (or a resume of a running stage) is a `409`, and a run
//! waiting for the stage says why.

use gantry_proto::events::PackageBuilt;
use gantry_runtime::trigger::run_stream;
use gantry_store::ExpectedVersion;
use serde_json::{json, Value};

use crate::support::{assert_problem, Options, TestApp, Token, CAROL, DAVE, RITA};

const OLGA: Token = ("olga-token", "olga", "[operators]");

/// Only operators may pause, whatever the stage.
const OPS: &str = "\
name: ops
source: { repo: REPO, branch: main }
gateway: { format: yaml, path: gateway/ }
stages:
  - name: only
access:
  operate: [operators]
";

fn path(pipeline: &str, stage: &str, verb: &str) -> String {
    format!("/api/v1/pipelines/{pipeline}/stages/{stage}/{verb}")
}

fn stage_of<'a>(pipeline: &'a Value, stage: &str) -> &'a Value {
    pipeline["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == stage))
        .unwrap_or_else(|| panic!("no stage {stage} in {pipeline}"))
}

#[tokio::test]
async fn pause_and_resume_record_who_and_why_and_the_listing_shows_it() {
    let app = TestApp::start(Options::default()).await;
    let a = app
        .post(
            &path("demo", "prod", "pause"),
            json!({ "reason": "incident 4711", "user": "rita" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let event = a.json();
    assert_eq!(event["type"], "io.gantry.stage.paused.v1");
    assert_eq!(event["pipeline"], "demo");
    assert!(
        event.get("subject").is_none(),
        "a pause has no run: {event}"
    );
    assert_eq!(
        event["data"],
        json!({ "stage": "prod", "user": "rita", "reason": "incident 4711" })
    );

    let listing = app.get("/api/v1/pipelines").await.json();
    let demo = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "demo")
        .unwrap();
    let paused = &stage_of(demo, "prod")["paused"];
    assert_eq!(paused["by"], "rita", "{demo}");
    assert_eq!(paused["reason"], "incident 4711");
    assert!(paused["since"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(stage_of(demo, "dev")["paused"], Value::Null);
    let one = app.get("/api/v1/pipelines/demo").await.json();
    assert_eq!(stage_of(&one, "prod")["paused"], *paused);

    // Pausing again is refused and says who was first.
    let head = app.head().await;
    let p = assert_problem(
        &app.post(
            &path("demo", "prod", "pause"),
            json!({ "reason": "me too", "user": "sam" }),
        )
        .await,
        409,
        &["already paused by rita", "incident 4711"],
    );
    assert_eq!(p["type"], "https://gantry.dev/problems/stage-paused");
    assert_eq!(p["paused"]["by"], "rita");
    assert_eq!(app.head().await, head, "a refusal records nothing");

    // Resume: the reason is optional.
    let a = app
        .post(&path("demo", "prod", "resume"), json!({ "user": "sam" }))
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["type"], "io.gantry.stage.resumed.v1");
    assert_eq!(a.json()["data"], json!({ "stage": "prod", "user": "sam" }));
    let one = app.get("/api/v1/pipelines/demo").await.json();
    assert_eq!(stage_of(&one, "prod")["paused"], Value::Null);
    let p = assert_problem(
        &app.post(&path("demo", "prod", "resume"), json!({})).await,
        409,
        &["is not paused"],
    );
    assert_eq!(p["type"], "https://gantry.dev/problems/stage-not-paused");

    // Paused again later: a new pause, by whoever asks now.
    let a = app
        .post(&path("demo", "prod", "pause"), json!({ "reason": "again" }))
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"]["user"], "anonymous");
}

#[tokio::test]
async fn bad_requests_are_refused_and_record_nothing() {
    let app = TestApp::start(Options::default()).await;
    let head = app.head().await;
    for body in [json!({}), json!({ "reason": "  " })] {
        assert_problem(
            &app.post(&path("demo", "prod", "pause"), body).await,
            400,
            &["a pause needs a `reason`"],
        );
    }
    let p = assert_problem(
        &app.post(&path("demo", "prod", "pause"), json!({ "why": "x" }))
            .await,
        400,
        &["invalid pause request", "unknown field"],
    );
    assert_eq!(p["example"]["reason"], "errors in prod");
    assert_problem(
        &app.post(&path("nope", "prod", "pause"), json!({ "reason": "x" }))
            .await,
        404,
        &["no pipeline named `nope`"],
    );
    assert_problem(
        &app.post(&path("demo", "qa", "resume"), json!({})).await,
        404,
        &["pipeline `demo` has no stage `qa`"],
    );
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn with_tokens_the_stage_approvers_or_access_operate_decide_who_may() {
    let app = TestApp::start(Options::with_tokens(&[RITA, DAVE, CAROL, OLGA]).pipeline(OPS)).await;
    assert_problem(
        &app.post(&path("demo", "prod", "pause"), json!({ "reason": "x" }))
            .await,
        401,
        &["Authorization: Bearer"],
    );
    // prod has approvers: only they may stop it.
    assert_problem(
        &app.post_as(
            "dave-token",
            &path("demo", "prod", "pause"),
            json!({ "reason": "x" }),
        )
        .await,
        403,
        &["dave may not pause stage `prod`", "release-managers"],
    );
    let a = app
        .post_as(
            "rita-token",
            &path("demo", "prod", "pause"),
            json!({ "reason": "x", "user": "someone-else" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["data"]["user"], "rita", "the token's user");
    assert_problem(
        &app.post_as("dave-token", &path("demo", "prod", "resume"), json!({}))
            .await,
        403,
        &["dave may not resume stage `prod`"],
    );
    // dev has no approvers: any token holder.
    let a = app
        .post_as(
            "carol-token",
            &path("demo", "dev", "pause"),
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    // access.operate names who may, whatever the stage.
    assert_problem(
        &app.post_as(
            "rita-token",
            &path("ops", "only", "pause"),
            json!({ "reason": "x" }),
        )
        .await,
        403,
        &["operators"],
    );
    let a = app
        .post_as(
            "olga-token",
            &path("ops", "only", "pause"),
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
}

/// What the conductor does, once: decide on the pipeline's log and append.
async fn conduct(app: &TestApp, pipeline: &str) {
    let set = app.app.pipelines.get();
    let p = set.get(pipeline).unwrap();
    let history: Vec<_> = app
        .app
        .store
        .read_pipeline_after(pipeline, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect();
    for d in gantry_decide::decide(p, chrono::Utc::now(), &history).decisions {
        app.app
            .store
            .append(
                &run_stream(d.run()),
                ExpectedVersion::Any,
                vec![d.into_event(pipeline)],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_run_waiting_for_a_paused_stage_says_who_paused_it_and_why() {
    let app = TestApp::start(Options::default()).await;
    let run = app.seed_run(&app.commits[0]).await;
    let a = app
        .post(
            &path("demo", "dev", "pause"),
            json!({ "reason": "backend migration", "user": "rita" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());
    app.record(
        &run,
        &PackageBuilt {
            stage: "dev".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            files: 1,
            format: "yaml".into(),
            values_digest: None,
            location: None,
            commit: None,
            committed_at: None,
        },
    )
    .await;
    conduct(&app, "demo").await;
    let view = app.get(&format!("/api/v1/runs/{run}")).await.json();
    let dev = &view["stages"][0];
    assert_eq!(dev["status"], "queued", "{view}");
    assert_eq!(dev["waiting"]["reason"], "paused");
    assert_eq!(dev["waiting"]["by"], "rita");
    assert_eq!(
        dev["waiting"]["detail"],
        "stage dev paused by rita: backend migration"
    );

    // Resumed: the run goes on (dev has no steps: it promotes at once).
    app.post(&path("demo", "dev", "resume"), json!({})).await;
    conduct(&app, "demo").await;
    let view = app.get(&format!("/api/v1/runs/{run}")).await.json();
    assert_eq!(view["stages"][0]["status"], "promoted", "{view}");
}
