//! Smoke checks against a real local HTTP server standing in for the gateway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use gantry_core::pipeline::{parse_str, SmokeCheck};
use gantry_smoke::{run_check, RetryPolicy};

async fn gateway() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let warming = calls.clone();
    let app = Router::new()
        .route(
            "/pets",
            get(|headers: HeaderMap| async move {
                if headers.get("KeyId").and_then(|v| v.to_str().ok()) != Some("s3cret-key") {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(serde_json::json!({"error": "no key"})),
                    );
                }
                (
                    StatusCode::OK,
                    Json(serde_json::json!([{"id": 1, "name": "Rex"}])),
                )
            }),
        )
        // Healthy from the third request on, as a gateway finishing its rollout.
        .route(
            "/warming",
            get(move || {
                let n = warming.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "ok"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), calls)
}

fn check(yaml: &str) -> SmokeCheck {
    let text = format!(
        "name: p\nsource:\n  repo: https://git.example.com/a/b.git\ngateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n    smoke:\n{yaml}"
    );
    let p = parse_str("p.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    p.stages[0].smoke[0].clone()
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        pause: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn a_passing_check_reports_status_and_timing() {
    let (base, _) = gateway().await;
    std::env::set_var("SMOKE_TEST_KEY", "s3cret-key");
    let c = check(&format!(
        "      - name: pets are listed\n        request: {{ url: {base}/pets, headers: {{ KeyId: env:SMOKE_TEST_KEY }} }}\n        expect: {{ status: 200, json: {{ \"/0/id\": 1 }}, body_contains: Rex, headers: {{ content-type: application/json }}, max_latency: 800ms }}\n"
    ));
    let r = run_check(&reqwest::Client::new(), &c, &quick()).await;
    assert!(r.passed, "{r:?}");
    assert_eq!(r.status, Some(200));
    assert_eq!(r.attempts, 1);
}

#[tokio::test]
async fn failures_say_what_did_not_hold_and_never_echo_secrets() {
    let (base, _) = gateway().await;
    std::env::set_var("SMOKE_WRONG_KEY", "wrong-key-value");
    let c = check(&format!(
        "      - name: pets\n        request: {{ url: {base}/pets, headers: {{ KeyId: env:SMOKE_WRONG_KEY }} }}\n        expect: {{ status: 200, json: {{ \"/0/id\": 2 }} }}\n        timeout: 300ms\n"
    ));
    let r = run_check(&reqwest::Client::new(), &c, &quick()).await;
    assert!(!r.passed);
    assert_eq!(r.status, Some(401));
    assert!(r.attempts > 1, "retried until the deadline: {r:?}");
    let message = r.message.unwrap();
    assert!(message.contains("status 401, expected 200"), "{message}");
    assert!(message.contains("/0/id is missing"), "{message}");
    assert!(!message.contains("wrong-key-value"));
}

#[tokio::test]
async fn checks_retry_while_the_gateway_rolls_out() {
    let (base, calls) = gateway().await;
    let c = check(&format!(
        "      - name: warm\n        request: {{ url: {base}/warming }}\n        timeout: 5s\n"
    ));
    let r = run_check(&reqwest::Client::new(), &c, &quick()).await;
    assert!(r.passed, "{r:?}");
    assert_eq!(r.attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn latency_and_unreachable_gateways_fail() {
    let (base, _) = gateway().await;
    let c = check(&format!(
        "      - name: slow\n        request: {{ url: {base}/slow }}\n        expect: {{ max_latency: 100ms }}\n        timeout: 1s\n"
    ));
    let r = run_check(&reqwest::Client::new(), &c, &quick()).await;
    assert!(!r.passed);
    // Too slow either way: over max_latency, or cut off by the check's deadline.
    let message = r.message.unwrap();
    assert!(
        message.contains("at most 100 ms") || message.contains("timed out"),
        "{message}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = check(&format!("      - name: down\n        request: {{ url: http://127.0.0.1:{port}/x }}\n        timeout: 200ms\n"));
    let r = run_check(&reqwest::Client::new(), &c, &quick()).await;
    assert!(!r.passed);
    assert_eq!(r.status, None);
    assert!(
        r.message.unwrap().contains("GET http://127.0.0.1"),
        "names the request"
    );
}
