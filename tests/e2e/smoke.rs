//! Smoke checks decide promotion: a passing stage promotes, a failing one is
//! rolled back to what it ran before and fails the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::Value;

async fn wait_run(base: &str, run: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = get_json(base, &format!("/api/v1/runs/{run}")).await;
        if view["status"] == status {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run never {status}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_failing_smoke_check_rolls_the_stage_back_and_fails_the_run() {
    // The "gateway": healthy until told otherwise.
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let app = axum::Router::new().route(
        "/healthcheck",
        get(move || {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "down")
                }
            }
        }),
    );
    let gw = serve_http(app).await;

    let repo = gantry_tests::GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let good = repo.commit("good").unwrap();
    repo.write("gateway/values.yaml", "---\nbroken: true\n")
        .unwrap();
    let bad = repo.commit("bad").unwrap();

    let dir = pipelines_dir("banking", &format!(
            "name: banking\nsource:\n  repo: {}\n  branch: main\ngateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n\
             \x20   smoke:\n      - name: gateway is healthy\n        request: {{ url: http://{gw}/healthcheck }}\n        expect: {{ status: 200, body_contains: ok }}\n        timeout: 1s\n",
            repo.path().display()
        ));
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let trigger = |commit: String| {
        let base = base.clone();
        async move { trigger_run(&base, None, "banking", &commit).await }
    };

    let run1 = trigger(good.clone()).await;
    wait_run(&base, &run1, "succeeded").await;
    let events = get_json(&base, &format!("/api/v1/runs/{run1}/events")).await;
    let smoke = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.smoke.passed.v1")
        .unwrap()
        .clone();
    assert_eq!(smoke["data"]["checks"][0]["name"], "gateway is healthy");
    assert_eq!(smoke["data"]["checks"][0]["status"], 200);

    healthy.store(false, Ordering::SeqCst);
    let run2 = trigger(bad).await;
    let view = wait_run(&base, &run2, "failed").await;
    assert_eq!(view["stages"][0]["status"], "rolled_back", "{view}");
    let events = get_json(&base, &format!("/api/v1/runs/{run2}/events")).await;
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.smoke.failed.v1")
        .unwrap()
        .clone();
    assert!(
        failed["data"]["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("status 500"),
        "{failed}"
    );
    let rolled = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.stage.rolled_back.v1")
        .unwrap()
        .clone();
    assert_eq!(
        rolled["data"]["to_run"],
        run1.as_str(),
        "back to the release it ran before"
    );
    let pipeline = get_json(&base, "/api/v1/pipelines/banking").await;
    assert_eq!(
        pipeline["stages"][0]["current"]["run_id"],
        run1.as_str(),
        "{pipeline}"
    );
    assert_eq!(pipeline["stages"][0]["current"]["commit"], good.as_str());
}
