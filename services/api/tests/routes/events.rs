//! `GET /api/v1/events`: the whole log as Server-Sent Events, `id:` the
//! global position, resumable with `?from=` or `Last-Event-ID`, filtered by
//! pipeline or run, followed live unless `follow=false`.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::runs::OTHER;
use crate::support::{oneshot, Options, TestApp};

/// `(id, data)` of each message of an event stream.
fn messages(text: &str) -> Vec<(i64, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).unwrap());
                }
            }
            Some((id?, data?))
        })
        .collect()
}

/// The positions a finite stream (`follow=false`) sends.
async fn positions(app: &TestApp, query: &str, last_event_id: Option<&str>) -> Vec<i64> {
    let mut req = Request::get(format!("/api/v1/events{query}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let a = oneshot(&app.router, req.body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    messages(&a.text()).into_iter().map(|(id, _)| id).collect()
}

#[tokio::test]
async fn the_log_is_streamed_with_positions_as_ids() {
    let app = TestApp::start(Options::default()).await;
    let run = app.seed_run(&app.commits[0]).await;
    app.seed_run(&app.commits[1]).await;
    let a = app.get("/api/v1/events?follow=false").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let all = messages(&a.text());
    let ids: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    for (id, event) in &all {
        assert_eq!(event["sequence"], *id, "data is the whole CloudEvent");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["pipeline"], "demo");
    }
    assert_eq!(all[0].1["type"], "io.gantry.commit.received.v1");
    assert_eq!(all[1].1["type"], "io.gantry.run.started.v1");
    assert_eq!(all[1].1["subject"], run.as_str());
}

#[tokio::test]
async fn a_stream_resumes_from_a_position_or_after_the_last_event_id() {
    let app = TestApp::start(Options::default()).await;
    app.seed_run(&app.commits[0]).await;
    app.seed_run(&app.commits[1]).await;
    assert_eq!(positions(&app, "?from=3&follow=false", None).await, [3, 4]);
    assert_eq!(
        positions(&app, "?from=0&follow=false", None).await,
        [1, 2, 3, 4]
    );
    assert_eq!(
        positions(&app, "?from=9&follow=false", None).await,
        Vec::<i64>::new()
    );
    // What browsers send on reconnect: after that id, and it wins over from.
    assert_eq!(
        positions(&app, "?from=4&follow=false", Some("1")).await,
        [2, 3, 4]
    );
}

#[tokio::test]
async fn a_stream_is_filtered_by_pipeline_and_run() {
    let app = TestApp::start(Options::default().pipeline(OTHER)).await;
    app.seed_run(&app.commits[0]).await;
    let other = app.seed_run_of("other", &app.commits[0]).await;
    app.seed_run(&app.commits[1]).await;
    assert_eq!(
        positions(&app, "?pipeline=other&follow=false", None).await,
        [3, 4]
    );
    assert_eq!(
        positions(&app, &format!("?run={other}&follow=false"), None).await,
        [3, 4]
    );
    assert_eq!(
        positions(&app, "?pipeline=demo&from=2&follow=false", None).await,
        [2, 5, 6]
    );
    assert_eq!(
        positions(&app, "?run=nope&follow=false", None).await,
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn a_followed_stream_sends_what_is_recorded_later() {
    let app = TestApp::start(Options::default()).await;
    app.seed_run(&app.commits[0]).await;
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/api/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    let mut seen = Vec::new();
    let mut later = None;
    while seen.len() < 4 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the stream sends within 10 s")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        let Some(end) = text.rfind("\n\n") else {
            continue;
        };
        seen.extend(messages(&text[..end + 2]));
        text.drain(..end + 2);
        // Caught up with the log: record more while the stream is open.
        if seen.len() == 2 && later.is_none() {
            later = Some(app.seed_run(&app.commits[1]).await);
        }
    }
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(seen[3].1["subject"], later.unwrap().as_str());
}
