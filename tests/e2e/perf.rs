//! The perf gate (DESIGN.md 1.10): a stage whose gateway meets the stage's
//! thresholds promotes with `perf.passed`; one that does not gets
//! `perf.failed` naming the threshold and is rolled back through its gitops
//! deploy to the release it ran before, like after a failed smoke check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use axum::routing::get;
use gantry_tests::{GitRepo, Registry};
use serde_json::{json, Value};

const VALUES: &str = "apitraffic:\n  image: registry.example.com/apim/banking-gateway:old\n";

fn find<'a>(events: &'a Value, name: &str) -> Option<&'a Value> {
    events
        .as_array()?
        .iter()
        .find(|e| e["type"] == format!("io.gantry.{name}.v1"))
}

#[tokio::test]
async fn a_gateway_under_its_threshold_fails_the_perf_gate_and_is_rolled_back() {
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let deploy = seeded_deploy_repo(&[("envs/perf/values.yaml", VALUES)]);

    // The stand-in gateway: answers at once, or after 200 ms once slowed
    // (4 connections can then never reach 50 requests/s).
    let slow = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let (flag, count) = (slow.clone(), hits.clone());
    let app = axum::Router::new()
        .route("/healthcheck", get(|| async { "ok" }))
        .route(
            "/orders",
            get(move |headers: axum::http::HeaderMap| {
                let slow = flag.load(Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
                async move {
                    if headers.get("keyid").and_then(|v| v.to_str().ok()) != Some("perf-key-1") {
                        return (axum::http::StatusCode::UNAUTHORIZED, "no key");
                    }
                    if slow {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    (axum::http::StatusCode::OK, "[]")
                }
            }),
        );
    let gw = serve_http(app).await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();

    let dir = pipelines_dir(
        "banking",
        &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: perf\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/perf/values.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/healthcheck, timeout: 10s }}\n\
             \x20   smoke:\n      - name: orders answer\n        request: {{ url: http://{gw}/orders, headers: {{ KeyId: env:PERF_KEY }} }}\n\
             \x20   perf:\n      request: {{ url: http://{gw}/orders, headers: {{ KeyId: env:PERF_KEY }} }}\n\
             \x20     duration: 2s\n      warmup: 500ms\n      concurrency: 4\n\
             \x20     expect: {{ min_tps: 50, max_p95: 1s, max_error_rate: 0.01 }}\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
        ),
    );
    let mut gantry = Gantry::start(dir.path(), &["up"], &[("PERF_KEY", "perf-key-1")]).await;
    gantry.watch(registry.storage_dir());
    gantry.watch(deploy.path());
    let base = gantry.url();
    let author = json!({ "name": "Dev", "email": "dev@example.com" });

    // Fast: the gate passes with the figures.
    let run1 = push_local_commit(&base, &repo, &first, author.clone()).await;
    let view = wait_run_ended(&base, &run1, Duration::from_secs(90), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run1}/events")).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{events:#}");
    let passed = &find(&events, "perf.passed").expect("perf.passed")["data"];
    assert_eq!(passed["stage"], "perf");
    assert_eq!(passed["scenario"], "perf");
    assert!(passed["tps"].as_f64().unwrap() >= 50.0, "{passed}");
    assert_eq!(passed["errors"], 0, "{passed}");
    assert_eq!(passed["failed"], json!([]));
    assert_eq!(
        passed["expect"],
        json!({ "min_tps": 50.0, "max_p95_ms": 1000.0, "max_error_rate": 0.01 })
    );
    for key in [
        "requests",
        "duration_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "error_rate",
    ] {
        assert!(passed[key].is_number(), "{key} in {passed}");
    }
    // Requests during the warm-up and smoke are not in the figures, but were sent.
    let requests = passed["requests"].as_u64().unwrap();
    assert!(hits.load(Ordering::SeqCst) > requests, "{passed}");
    // The key is a secret: it is in no event.
    assert!(!events.to_string().contains("perf-key-1"));
    // Perf comes after smoke, before the promotion.
    let order: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.contains("smoke.") || t.contains("perf.") || t.contains("env.promoted"))
        .collect();
    assert_eq!(
        order,
        [
            "io.gantry.smoke.passed.v1",
            "io.gantry.perf.passed.v1",
            "io.gantry.env.promoted.v1"
        ]
    );
    let digest1 = find(&events, "image.pushed").unwrap()["data"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    // Slow: the gate fails naming min_tps, and the stage goes back.
    slow.store(true, Ordering::SeqCst);
    repo.write("gateway/values.yaml", "---\nsecond: true\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let run2 = push_local_commit(&base, &repo, &second, author).await;
    let view = wait_run_ended(&base, &run2, Duration::from_secs(90), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run2}/events")).await;
    assert_eq!(view["status"], "failed", "{view}\n{events:#}");
    let failed = &find(&events, "perf.failed").expect("perf.failed")["data"];
    assert_eq!(failed["failed"], json!(["min_tps"]), "{failed}");
    assert!(failed["tps"].as_f64().unwrap() < 50.0, "{failed}");
    assert!(failed["p50_ms"].as_f64().unwrap() >= 200.0, "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("min_tps: ") && reason.contains("< 50"),
        "{reason}"
    );
    let rolled = find(&events, "stage.rolled_back").expect("stage.rolled_back");
    assert_eq!(rolled["data"]["to_run"], run1.as_str(), "{rolled}");
    assert!(
        rolled["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("perf gate in perf failed: min_tps"),
        "{rolled}"
    );
    // The rollback is deployed but not load-tested again.
    let perf_results = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.contains(".perf.")))
        .count();
    assert_eq!(perf_results, 1, "{events:#}");
    let file = deploy.git(["show", "main:envs/perf/values.yaml"]).unwrap();
    assert!(file.contains(&digest1), "{file}");
    let pipeline = get_json(&base, "/api/v1/pipelines/banking").await;
    assert_eq!(
        pipeline["stages"][0]["current"]["run_id"],
        run1.as_str(),
        "{pipeline}"
    );
}
