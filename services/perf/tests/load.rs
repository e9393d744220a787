//! The load generator against real HTTP servers on 127.0.0.1 started by
//! each test. Timing assertions are bounds with wide margins, never "faster
//! than": the tests share two cores with other builds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::Router;
use gantry_perf::{run_load, LoadError, LoadReport, LoadRequest, LoadSpec, Thresholds};
use url::Url;

/// Serves `router` on a free port of 127.0.0.1 for the rest of the test.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn url(addr: SocketAddr, path: &str) -> Url {
    Url::parse(&format!("http://{addr}{path}")).expect("test URL")
}

fn closed(addr: SocketAddr, duration_ms: u64, concurrency: usize) -> LoadSpec {
    LoadSpec::closed(
        LoadRequest::get(url(addr, "/")),
        Duration::from_millis(duration_ms),
        concurrency,
    )
}

/// Answers 500 to every 10th request (the 10th, 20th, ...), 200 otherwise.
fn every_tenth_fails(hits: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/",
        any(|State(hits): State<Arc<AtomicU64>>| async move {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            if n % 10 == 0 {
                (StatusCode::INTERNAL_SERVER_ERROR, "no")
            } else {
                (StatusCode::OK, "ok")
            }
        })
        .with_state(hits),
    )
}

#[tokio::test]
async fn closed_loop_counts_every_request_and_error() {
    let hits = Arc::new(AtomicU64::new(0));
    let addr = serve(every_tenth_fails(hits.clone())).await;
    let report = run_load(&closed(addr, 1000, 4)).await.expect("load runs");
    let hits = hits.load(Ordering::SeqCst);
    assert!(hits >= 50, "too few requests to judge: {report:?}");
    // Without warm-up every request the server saw is in the report.
    assert_eq!(report.requests, hits, "{report:?}");
    assert_eq!(report.errors, hits / 10, "{report:?}");
    assert!((report.error_rate - 0.1).abs() < 0.01, "{report:?}");
    assert_eq!(report.first_error.as_deref(), Some("HTTP 500"));
    assert_eq!(report.missed, 0);
    assert_eq!(report.duration, Duration::from_secs(1));
    let successes = (hits - hits / 10) as f64;
    assert!((report.tps - successes).abs() < 1e-6, "{report:?}");
    assert!(report.p50 <= report.p95 && report.p95 <= report.p99 && report.p99 <= report.max);
}

#[tokio::test]
async fn sends_the_method_headers_body_and_host() {
    type Seen = Arc<Mutex<Vec<(Method, String, String, Bytes)>>>;
    let seen: Seen = Arc::default();
    let router = Router::new().route(
        "/echo",
        any(
            |State(seen): State<Seen>, method: Method, headers: HeaderMap, body: Bytes| async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let query_seen = (method, header("host"), header("x-test"), body);
                if let Ok(mut seen) = seen.lock() {
                    seen.push(query_seen);
                }
                "ok"
            },
        )
        .with_state(seen.clone()),
    );
    let addr = serve(router).await;
    let mut spec = closed(addr, 300, 1);
    spec.request = LoadRequest {
        method: Method::POST,
        url: url(addr, "/echo?x=1"),
        headers: vec![(
            "x-test".parse().expect("header name"),
            "yes".parse().expect("header value"),
        )],
        body: Bytes::from_static(b"{\"hello\":1}"),
    };
    let report = run_load(&spec).await.expect("load runs");
    assert_eq!(report.errors, 0, "{report:?}");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len() as u64, report.requests);
    let expected = (
        Method::POST,
        addr.to_string(),
        "yes".to_owned(),
        Bytes::from_static(b"{\"hello\":1}"),
    );
    assert!(seen.iter().all(|s| *s == expected), "{:?}", seen.first());
}

#[tokio::test]
async fn a_slow_server_bounds_throughput_by_concurrency_over_latency() {
    let router = Router::new().route(
        "/",
        any(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "ok"
        }),
    );
    let addr = serve(router).await;
    let report = run_load(&closed(addr, 1000, 4)).await.expect("load runs");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.p50 >= Duration::from_millis(50), "{report:?}");
    // 4 connections × (1 s / 50 ms) = 80, plus the 4 still in flight at the end.
    assert!(report.requests <= 84, "{report:?}");
    assert!(report.tps <= 84.0, "{report:?}");
    assert!(report.requests >= 4, "{report:?}");
}

/// Every request arriving during the 500 ms after the `at`-th one waits
/// until then: the server stalls once, for all connections.
fn stalls_once(at: u64) -> Router {
    #[derive(Clone, Default)]
    struct Stall {
        hits: Arc<AtomicU64>,
        until: Arc<Mutex<Option<tokio::time::Instant>>>,
    }
    Router::new().route(
        "/",
        any(move |State(stall): State<Stall>| async move {
            let n = stall.hits.fetch_add(1, Ordering::SeqCst) + 1;
            let until = {
                let Ok(mut until) = stall.until.lock() else {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                };
                if n == at {
                    *until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
                *until
            };
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            StatusCode::OK
        })
        .with_state(Stall::default()),
    )
}

#[tokio::test]
async fn open_loop_counts_the_stall_in_its_latencies_and_closed_loop_does_not() {
    let addr = serve(stalls_once(30)).await;
    let mut open = closed(addr, 2000, 4);
    open.rate = Some(100.0);
    let report = run_load(&open).await.expect("open loop runs");
    // 100/s for 2 s: 200 requests due, each sent or missed exactly once.
    assert_eq!(report.requests + report.missed, 200, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    // About 50 requests were due during the stall and waited for it, from
    // when they were due: a quarter of all of them, far more than 1%.
    assert!(report.p99 >= Duration::from_millis(400), "{report:?}");
    assert!(report.max >= Duration::from_millis(450), "{report:?}");
    assert!(report.tps <= 100.0 + 1e-9, "{report:?}");

    // The same stall in a closed loop: only the few requests in flight saw
    // it, the connections sent nothing meanwhile, and its p99 hides it.
    let addr = serve(stalls_once(30)).await;
    let report = run_load(&closed(addr, 2000, 4))
        .await
        .expect("closed loop runs");
    assert!(report.requests > 400, "{report:?}");
    assert!(report.max >= Duration::from_millis(450), "{report:?}");
    assert!(report.p99 < Duration::from_millis(250), "{report:?}");
}

#[tokio::test]
async fn warm_up_requests_are_sent_but_not_counted() {
    // Open loop: exactly which requests are due in the warm-up is known.
    let hits = Arc::new(AtomicU64::new(0));
    let addr = serve(every_tenth_fails(hits.clone())).await;
    let mut spec = closed(addr, 1000, 2);
    spec.rate = Some(50.0);
    spec.warmup = Duration::from_secs(1);
    let report = run_load(&spec).await.expect("load runs");
    // 50/s over 1 s of warm-up and 1 s measured: 100 sent, 50 counted.
    assert_eq!(
        hits.load(Ordering::SeqCst) + report.missed,
        100,
        "{report:?}"
    );
    assert_eq!(report.requests + report.missed, 50, "{report:?}");
    // Requests 51..=100 are the measured ones: 5 of them are every 10th.
    assert_eq!(report.errors, 5, "{report:?}");

    // Closed loop: the server saw more than the report counts.
    let hits = Arc::new(AtomicU64::new(0));
    let addr = serve(every_tenth_fails(hits.clone())).await;
    let mut spec = closed(addr, 500, 2);
    spec.warmup = Duration::from_millis(500);
    let report = run_load(&spec).await.expect("load runs");
    let hits = hits.load(Ordering::SeqCst);
    assert!(report.requests > 0, "{report:?}");
    assert!(report.requests < hits, "{hits} hits, {report:?}");
    assert_eq!(report.duration, Duration::from_millis(500));
}

#[tokio::test]
async fn reconnects_when_the_server_closes_each_connection() {
    let hits = Arc::new(AtomicU64::new(0));
    let router = Router::new().route(
        "/",
        any(|State(hits): State<Arc<AtomicU64>>| async move {
            hits.fetch_add(1, Ordering::SeqCst);
            ([("connection", "close")], "ok")
        })
        .with_state(hits.clone()),
    );
    let addr = serve(router).await;
    let report = run_load(&closed(addr, 500, 2)).await.expect("load runs");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.requests >= 10, "{report:?}");
    assert_eq!(report.requests, hits.load(Ordering::SeqCst));
}

#[tokio::test]
async fn timeouts_and_refused_requests_are_errors_of_the_report() {
    // The server answers the first request, then never again.
    let hits = Arc::new(AtomicU64::new(0));
    let router = Router::new().route(
        "/",
        any(|State(hits): State<Arc<AtomicU64>>| async move {
            if hits.fetch_add(1, Ordering::SeqCst) > 0 {
                std::future::pending::<()>().await;
            }
            "ok"
        })
        .with_state(hits.clone()),
    );
    let addr = serve(router).await;
    let mut spec = closed(addr, 600, 1);
    spec.request_timeout = Duration::from_millis(200);
    let report = run_load(&spec).await.expect("load runs");
    assert!(report.errors >= 2, "{report:?}");
    assert_eq!(report.requests, report.errors + 1, "{report:?}");
    assert_eq!(
        report.first_error.as_deref(),
        Some("no answer within 200ms")
    );
    // A timed-out request's wait is in the latencies.
    assert!(report.max >= Duration::from_millis(200), "{report:?}");
}

#[tokio::test]
async fn unusable_targets_are_clear_errors() {
    let spec = |url: &str| {
        let mut spec = LoadSpec::closed(
            LoadRequest::get(Url::parse(url).expect("test URL")),
            Duration::from_millis(100),
            1,
        );
        spec.request_timeout = Duration::from_secs(2);
        spec
    };
    let err = run_load(&spec("ftp://127.0.0.1/x")).await.unwrap_err();
    assert!(matches!(err, LoadError::Scheme { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "ftp://127.0.0.1/x: unsupported scheme `ftp` (http or https)"
    );

    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let err = run_load(&spec(&format!("http://{addr}/")))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Connect { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("cannot connect to http://{addr}/: TCP: ")),
        "{message}"
    );
    assert!(message.to_lowercase().contains("refused"), "{message}");

    let err = run_load(&spec("http://gantry-perf-test.invalid/"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Resolve { .. }), "{err}");

    let mut zero = spec("http://127.0.0.1/");
    zero.concurrency = 0;
    let err = run_load(&zero).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid load: concurrency must be at least 1"
    );
    let mut forever = spec("http://127.0.0.1/");
    forever.duration = Duration::MAX;
    assert!(matches!(
        run_load(&forever).await.unwrap_err(),
        LoadError::Invalid(_)
    ));
    let mut nan = spec("http://127.0.0.1/");
    nan.rate = Some(f64::NAN);
    assert!(matches!(
        run_load(&nan).await.unwrap_err(),
        LoadError::Invalid(_)
    ));
}

/// A report with the given figures and 1000 requests.
fn report(tps: f64, p95_ms: u64, p99_ms: u64, error_rate: f64) -> LoadReport {
    LoadReport {
        requests: 1000,
        errors: (error_rate * 1000.0) as u64,
        missed: 0,
        duration: Duration::from_secs(10),
        tps,
        p50: Duration::from_millis(p95_ms / 2),
        p95: Duration::from_millis(p95_ms),
        p99: Duration::from_millis(p99_ms),
        max: Duration::from_millis(p99_ms * 2),
        error_rate,
        first_error: None,
    }
}

#[test]
fn thresholds_name_exactly_the_unmet_ones() {
    let thresholds = Thresholds {
        min_tps: Some(750.0),
        max_p95: Some(Duration::from_millis(200)),
        max_p99: Some(Duration::from_millis(500)),
        max_error_rate: Some(0.01),
    };
    let names =
        |r: &LoadReport| -> Vec<&str> { thresholds.failed(r).iter().map(|f| f.name).collect() };
    // Limits are inclusive.
    assert!(names(&report(750.0, 200, 500, 0.01)).is_empty());
    assert_eq!(names(&report(412.3, 200, 500, 0.0)), ["min_tps"]);
    assert_eq!(names(&report(800.0, 201, 500, 0.0)), ["max_p95"]);
    assert_eq!(names(&report(800.0, 100, 501, 0.0)), ["max_p99"]);
    assert_eq!(names(&report(800.0, 100, 100, 0.02)), ["max_error_rate"]);
    assert_eq!(
        names(&report(10.0, 300, 900, 0.5)),
        ["min_tps", "max_p95", "max_p99", "max_error_rate"]
    );

    let failed = thresholds.failed(&report(412.3, 250, 500, 0.0231));
    let messages: Vec<&str> = failed.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "min_tps: 412.3 tps < 750",
            "max_p95: p95 250 ms > 200 ms",
            "max_error_rate: error rate 0.0231 > 0.01 (23 of 1000)",
        ]
    );

    // Thresholds not set check nothing.
    let only_p95 = Thresholds {
        max_p95: Some(Duration::from_millis(200)),
        ..Thresholds::default()
    };
    assert!(only_p95.failed(&report(1.0, 200, 9000, 1.0)).is_empty());

    // A run that measured nothing meets no threshold.
    let nothing = LoadReport {
        requests: 0,
        errors: 0,
        ..report(0.0, 0, 0, 0.0)
    };
    assert_eq!(
        names(&nothing),
        ["min_tps", "max_p95", "max_p99", "max_error_rate"]
    );
}

/// Serves `ok` over TLS with a fresh self-signed certificate for localhost.
async fn serve_tls() -> SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server TLS configuration");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    let body = http_body_util::Full::new(Bytes::from_static(b"ok"));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_with_and_without_certificate_checks() {
    let addr = serve_tls().await;
    // `localhost` may resolve to ::1 first, where nothing listens: the
    // generator goes on to 127.0.0.1.
    let url = Url::parse(&format!("https://localhost:{}/", addr.port())).expect("URL");
    let mut spec = LoadSpec::closed(LoadRequest::get(url), Duration::from_millis(300), 2);
    spec.insecure = true;
    let report = run_load(&spec).await.expect("insecure load runs");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.requests > 0, "{report:?}");

    spec.insecure = false;
    let err = run_load(&spec).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LoadError::Connect { .. }), "{message}");
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(message.contains("certificate"), "{message}");
}
