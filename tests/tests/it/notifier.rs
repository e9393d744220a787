//! The notifier (services/notifier) over Postgres: two notifiers share the
//! outbox and one leads, so every event reaches the receiver once while both
//! live; when the leader stops, the other takes over from the outbox and the
//! checkpoint without losing or repeating what was delivered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{event, store_at, wait_for, WAIT};
use axum::routing::post;
use gantry_notifier::{Notifier, RetryPolicy};
use gantry_proto::EventName;
use gantry_runtime::runtime::Pipelines;
use gantry_store::{EventStore, ExpectedVersion};
use gantry_tests::fresh_postgres;
use tokio_util::sync::CancellationToken;

async fn append(store: &EventStore, n: usize, from: usize) -> anyhow::Result<()> {
    for i in from..from + n {
        let run = format!("run-{i}");
        store
            .append(
                &format!("run-{run}"),
                ExpectedVersion::Any,
                vec![event(EventName::RunCancelled, "banking", &run)],
            )
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn two_notifiers_deliver_each_event_once_and_hand_over() -> anyhow::Result<()> {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let sink = sink.clone();
            async move {
                let id = headers["x-gantry-delivery"]
                    .to_str()
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push(id);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = fresh_postgres().await?;
    let yaml = format!(
        "name: banking\nsource:\n  repo: /srv/git/banking.git\ngateway:\n  format: yaml\n  path: gateway/\n\
         stages:\n  - name: test\nnotify:\n  - url: http://{addr}/hook\n    events: [run.cancelled]\n"
    );
    let pipeline = gantry_pipeline::parse_str("banking.yaml", &yaml)?;
    let mut set = gantry_pipeline::PipelineSet::new();
    set.insert(pipeline, None);
    let pipelines = Pipelines::new(set);

    let start = |stop: CancellationToken| {
        let db_url = db.url().to_owned();
        let pipelines = pipelines.clone();
        async move {
            let store = store_at(&db_url).await?;
            let notifier = Notifier::with_parts(
                store,
                pipelines,
                "http://gantry.test",
                RetryPolicy::default(),
            );
            notifier.prepare().await?;
            Ok::<_, anyhow::Error>(tokio::spawn(notifier.run(stop)))
        }
    };
    let first_stop = CancellationToken::new();
    let second_stop = CancellationToken::new();
    let first = start(first_stop.clone()).await?;
    let second = start(second_stop.clone()).await?;

    let store = store_at(db.url()).await?;
    append(&store, 40, 0).await?;
    let ids = |n: usize| {
        let received = received.clone();
        async move {
            let got = received.lock().unwrap().clone();
            anyhow::Ok((got.len() >= n).then_some(got))
        }
    };
    let got = wait_for(WAIT, "40 notifications", || ids(40)).await?;
    let unique: std::collections::HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 40, "{got:?}");

    // One of them goes (the leader, or the one waiting to lead); the one
    // left delivers what follows, from the outbox and the checkpoint.
    first_stop.cancel();
    let _ = first.await;
    append(&store, 10, 40).await?;
    let got = wait_for(WAIT, "50 notifications", || ids(50)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = received.lock().unwrap().clone();
    assert_eq!(got_now.len(), got.len(), "nothing more arrives");
    let unique: std::collections::HashSet<&String> = got_now.iter().collect();
    assert_eq!(unique.len(), 50, "each event once: {got_now:?}");
    let status = store.notify_status().await?;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].delivered, 50);
    assert_eq!(status[0].pending, 0);
    second_stop.cancel();
    let _ = second.await;
    Ok(())
}
