//! Readiness polling against a local HTTP endpoint.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::health_server;
use gantry_deployer::{wait_ready, ReadyError, ReadyOptions};

fn fast() -> ReadyOptions {
    ReadyOptions {
        interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn waits_until_healthy() {
    let (url, count) = health_server(Some(3)).await;
    let ready = (url, Duration::from_secs(20));
    let out = wait_ready(ready.0.as_ref(), ready.1, &fast())
        .await
        .unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.attempts, 4);
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn healthy_at_once() {
    let (url, _) = health_server(Some(0)).await;
    let ready = (url, Duration::from_secs(5));
    let out = wait_ready(ready.0.as_ref(), ready.1, &fast())
        .await
        .unwrap();
    assert_eq!(out.attempts, 1);
}

#[tokio::test]
async fn never_healthy_times_out_with_the_last_status() {
    let (url, count) = health_server(None).await;
    let ready = (url.clone(), Duration::from_millis(600));
    let started = Instant::now();
    let err = wait_ready(ready.0.as_ref(), ready.1, &fast())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    match &err {
        ReadyError::Timeout { last, attempts, .. } => {
            assert_eq!(last, "HTTP 503 Service Unavailable");
            assert!(*attempts >= 3, "{attempts}");
            assert_eq!(*attempts as usize, count.load(Ordering::SeqCst));
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("within 600ms"), "{msg}");
    assert!(msg.ends_with("last: HTTP 503 Service Unavailable"), "{msg}");
}

#[tokio::test]
async fn connection_refused_is_reported() {
    let port = gantry_tests::free_port();
    let ready = (
        format!("http://127.0.0.1:{port}/healthcheck"),
        Duration::from_millis(300),
    );
    let err = wait_ready(ready.0.as_ref(), ready.1, &fast())
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
}

#[tokio::test]
async fn a_bad_url_fails_at_once() {
    let ready = ("not a url", Duration::from_secs(30));
    let err = wait_ready(ready.0, ready.1, &fast()).await.unwrap_err();
    assert!(matches!(err, ReadyError::BadUrl { .. }), "{err}");
}

#[tokio::test]
async fn passwords_in_the_url_are_not_shown() {
    let port = gantry_tests::free_port();
    let ready = (
        format!("http://user:pa55word@127.0.0.1:{port}/healthcheck"),
        Duration::from_millis(200),
    );
    let err = wait_ready(ready.0.as_ref(), ready.1, &fast())
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("pa55word"), "{err}");
}
