//! Smoke checks against a real local HTTP server standing in for the gateway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use gantry_pipeline::mask::Masker;
use gantry_pipeline::{parse_str, SmokeCheck};
use gantry_smoke::{run_check, RetryPolicy, SmokeClient};

fn client() -> SmokeClient {
    SmokeClient::new().unwrap()
}

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
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
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
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
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
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
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
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
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
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(!r.passed);
    assert_eq!(r.status, None);
    assert!(
        r.message.unwrap().contains("GET http://127.0.0.1"),
        "names the request"
    );
}

/// What a server saw: path and the headers of each request.
type Seen = Arc<std::sync::Mutex<Vec<(String, HeaderMap)>>>;

/// A server that records every request and answers per path: `/to?url=X`
/// redirects (302) to X, `/loop` redirects to itself, `/keep` redirects
/// (307) to `/pets` on the same origin, `/pets` needs the `KeyId` header,
/// anything else is 200 `{"ok": true}`.
async fn recording_server() -> (String, Seen) {
    use axum::extract::{Query, Request};
    use axum::response::{IntoResponse, Response};
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = Router::new().fallback(
        move |Query(q): Query<std::collections::HashMap<String, String>>, req: Request| {
            let log = log.clone();
            async move {
                let path = req.uri().path().to_owned();
                let headers = req.headers().clone();
                log.lock().unwrap().push((path.clone(), headers.clone()));
                let redirect = |status: StatusCode, to: &str| -> Response {
                    (status, [(axum::http::header::LOCATION, to.to_owned())]).into_response()
                };
                match path.as_str() {
                    "/to" => redirect(StatusCode::FOUND, &q["url"]),
                    "/loop" => redirect(StatusCode::FOUND, "/loop"),
                    "/keep" => redirect(StatusCode::TEMPORARY_REDIRECT, "/pets"),
                    "/pets" if headers.get("KeyId").is_none() => {
                        StatusCode::UNAUTHORIZED.into_response()
                    }
                    _ => Json(serde_json::json!({"ok": true})).into_response(),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_redirect_is_answered_as_it_is_unless_the_check_follows_it() {
    let (base, seen) = recording_server().await;
    let c = check(&format!(
        "      - name: moved\n        request: {{ url: {base}/keep, headers: {{ KeyId: k-12345 }} }}\n        timeout: 300ms\n"
    ));
    assert!(!c.follow_redirects);
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(!r.passed, "{r:?}");
    assert_eq!(r.status, Some(307));
    assert!(seen.lock().unwrap().iter().all(|(p, _)| p == "/keep"));

    // Followed when asked; the same origin gets the check's headers.
    let c = check(&format!(
        "      - name: moved\n        request: {{ url: {base}/keep, headers: {{ KeyId: k-12345 }} }}\n        follow_redirects: true\n        timeout: 2s\n"
    ));
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(r.passed, "{r:?}");
    assert_eq!(r.status, Some(200));
}

#[tokio::test]
async fn a_redirect_to_another_origin_carries_none_of_the_checks_headers() {
    let (gateway, seen_gateway) = recording_server().await;
    let (elsewhere, seen_elsewhere) = recording_server().await;
    std::env::set_var("SMOKE_REDIRECT_KEY", "redirect-s3cret-key");
    let c = check(&format!(
        "      - name: off\n        request: {{ url: \"{gateway}/to?url={elsewhere}/landing\", headers: {{ KeyId: env:SMOKE_REDIRECT_KEY, X-Trace: trace-value-1 }} }}\n        follow_redirects: true\n        timeout: 2s\n"
    ));
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(r.passed, "{r:?}");
    let first = seen_gateway.lock().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].1.get("KeyId").unwrap(),
        "redirect-s3cret-key",
        "the check's origin gets them"
    );
    let other = seen_elsewhere.lock().unwrap();
    assert_eq!(other.len(), 1, "followed once");
    assert_eq!(other[0].0, "/landing");
    for name in ["KeyId", "X-Trace"] {
        assert!(
            other[0].1.get(name).is_none(),
            "{name} reached another origin: {:?}",
            other[0].1
        );
    }
}

#[tokio::test]
async fn redirects_are_followed_ten_times_at_most() {
    let (base, seen) = recording_server().await;
    let c = check(&format!(
        "      - name: loop\n        request: {{ url: {base}/loop }}\n        follow_redirects: true\n        timeout: 300ms\n"
    ));
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(!r.passed);
    let message = r.message.unwrap();
    assert!(message.contains("more than 10 redirects"), "{message}");
    // 11 requests per attempt: the first and ten hops.
    let n = seen.lock().unwrap().len();
    assert_eq!(n % 11, 0, "{n} requests");
}

#[tokio::test]
async fn an_endless_body_is_read_up_to_the_cap() {
    use axum::body::{Body, Bytes};
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let app = Router::new().route(
        "/endless",
        get(move || {
            let counter = counter.clone();
            async move {
                let chunk = Bytes::from(format!("needle {}\n", "x".repeat(64 * 1024 - 8)));
                let stream = futures::stream::repeat_with(move || {
                    counter.fetch_add(chunk.len(), Ordering::SeqCst);
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                Body::from_stream(stream)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let c = check(&format!(
        "      - name: endless\n        request: {{ url: http://{addr}/endless }}\n        expect: {{ body_contains: needle }}\n        timeout: 10s\n"
    ));
    let started = std::time::Instant::now();
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(r.passed, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped reading at the cap: {:?}",
        started.elapsed()
    );
    let note = r.message.unwrap_or_default();
    assert!(note.contains("larger than 1048576 bytes"), "{note}");

    // A JSON expectation cannot hold on a cut body, and says why.
    let c = check(&format!(
        "      - name: endless\n        request: {{ url: http://{addr}/endless }}\n        expect: {{ json: {{ /a: 1 }} }}\n        timeout: 300ms\n"
    ));
    let r = run_check(&client(), &c, &quick(), &Masker::default()).await;
    assert!(!r.passed);
    let message = r.message.unwrap();
    assert!(message.contains("larger than 1048576 bytes"), "{message}");
}

#[tokio::test]
async fn results_are_masked_with_the_given_and_the_checks_secrets() {
    // A gateway that echoes the key it got, and a stage secret.
    let app = Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let key = headers
                .get("KeyId")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            Json(serde_json::json!({"key": key, "config": "stage-db-s3cret"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    std::env::set_var("SMOKE_ECHOED_KEY", "echoed-s3cret-key");
    let c = check(&format!(
        "      - name: echo\n        request: {{ url: http://{addr}/echo, headers: {{ KeyId: env:SMOKE_ECHOED_KEY }} }}\n        expect: {{ json: {{ /key: other, /config: other }} }}\n        timeout: 200ms\n"
    ));
    let stage = Masker::new(&["stage-db-s3cret"]);
    let r = run_check(&client(), &c, &quick(), &stage).await;
    assert!(!r.passed);
    let message = r.message.unwrap();
    assert!(message.contains("/key is \"***\""), "{message}");
    assert!(message.contains("/config is \"***\""), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}
