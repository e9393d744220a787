//! OTLP traces (DESIGN.md 1.9): with the OpenTelemetry variables set, a run
//! is one trace across the processes that work on it, joined through the
//! events' `traceparent`. Checked with an OTLP/HTTP receiver here (a real
//! collector is not in Debian) that reads the JSON encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::extract::State;
use axum::routing::post;
use gantry_tests::{fresh_postgres, GitRepo};
use serde_json::{json, Value};

/// (service.name, trace id, span name) of every span received.
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

async fn receive(State(spans): State<Spans>, body: axum::body::Bytes) -> axum::Json<Value> {
    let request: Value = serde_json::from_slice(&body).expect("OTLP/HTTP JSON");
    let mut spans = spans.lock().unwrap();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push((
                    service.clone(),
                    span["traceId"].as_str().unwrap_or_default().to_owned(),
                    span["name"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    axum::Json(json!({}))
}

#[tokio::test]
async fn a_run_is_one_trace_across_webhook_conductor_and_worker_processes() {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let collector = serve_http(app).await;

    let db = fresh_postgres().await.unwrap();
    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let commit = repo.commit("config").unwrap();
    let template = pipelines_dir(
        "banking",
        &format!(
            "{}stages:\n  - name: test\n",
            banking(repo.path().display())
        ),
    );
    let prefix = gantry_tests::unique_name("otel");
    let nats_url = gantry_tests::shared_nats_url();
    let endpoint = format!("http://{collector}");
    let stream = prefix.to_uppercase();
    let env = [
        ("GANTRY_DATABASE_URL", db.url()),
        ("GANTRY_NATS_URL", nats_url.as_str()),
        ("GANTRY_NATS_PREFIX", prefix.as_str()),
        ("GANTRY_NATS_STREAM", stream.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let (dir, env) = (template.path(), &env[..]);
    let start = |service: &'static str| async move {
        Gantry::start_alone_with(dir, &[], &["serve", service], env).await
    };
    let webhook = start("webhook").await;
    let api = start("api").await;
    let _conductor = start("conductor").await;
    let _envgen = start("envgen").await;

    let resp = post_github_push(
        &webhook.url(),
        local_push_body(&repo, &commit, json!({ "name": "Dev" })),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let run = resp.json::<Value>().await.unwrap()["runs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = wait_run_ended(&api.url(), &run, Duration::from_secs(60), || api.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");

    // Every event of the run carries the run's trace.
    let events = get_json(&api.url(), &format!("/api/v1/runs/{run}/events")).await;
    let traces: BTreeSet<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let tp = e["traceparent"]
                .as_str()
                .unwrap_or_else(|| panic!("no traceparent on {e}"));
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00", "{tp}");
            parts[1].to_owned()
        })
        .collect();
    assert_eq!(traces.len(), 1, "one trace per run: {traces:?}");
    let trace = traces.into_iter().next().unwrap();

    // And the collector holds spans of that trace from every process.
    let want = ["gantry-webhook", "gantry-conductor", "gantry-envgen"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_service = loop {
        let by_service: BTreeMap<String, BTreeSet<String>> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| *t == trace)
            .fold(BTreeMap::new(), |mut m, (s, _, name)| {
                m.entry(s.clone()).or_default().insert(name.clone());
                m
            });
        if want.iter().all(|s| by_service.contains_key(*s)) || Instant::now() > deadline {
            break by_service;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for service in want {
        assert!(
            by_service.contains_key(service),
            "no span of trace {trace} from {service}: {by_service:?}"
        );
    }
    assert!(
        by_service["gantry-webhook"].contains("run"),
        "{by_service:?}"
    );
    assert!(
        by_service["gantry-envgen"].contains("step"),
        "{by_service:?}"
    );
}
