//! The services as separate processes over Postgres and NATS: a webhook
//! accepted by `gantry serve webhook` is visible at `gantry serve api`, and a
//! plain NATS subscriber receives the CloudEvents.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use gantry_tests::{fresh_postgres, NatsServer};
use serde_json::Value;

#[tokio::test]
async fn webhook_and_api_as_separate_processes() {
    let db = fresh_postgres().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let dir = workdir();
    let prefix = gantry_tests::unique_name("e2e");
    let env = [
        ("GANTRY_DATABASE_URL", db.url()),
        ("GANTRY_NATS_URL", &nats.url()),
        ("GANTRY_NATS_PREFIX", &prefix),
    ];
    // `serve` refuses to run without both URLs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "webhook"])
        .current_dir(dir.path())
        .env_remove("GANTRY_DATABASE_URL")
        .env_remove("GANTRY_NATS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GANTRY_DATABASE_URL"));

    let webhook = Gantry::start(dir.path(), &["serve", "webhook"], &env).await;
    let api = Gantry::start(dir.path(), &["serve", "api"], &env).await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client
        .subscribe(format!("{prefix}.events.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let commit = commit_sha(42);
    let (status, body) = send_push(&reqwest::Client::new(), &webhook.url(), &commit, "d-42")
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let run_id = body["runs"][0]["run_id"].as_str().unwrap().to_owned();

    let mut received = Vec::new();
    while received.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("CloudEvents reach a plain NATS subscriber")
            .unwrap();
        let event: Value = serde_json::from_slice(&msg.payload).unwrap();
        received.push((msg.subject.to_string(), event));
    }
    assert_eq!(
        received[0].0,
        format!("{prefix}.events.banking.commit.received")
    );
    assert_eq!(
        received[1].0,
        format!("{prefix}.events.banking.run.started")
    );
    for (_, e) in &received {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["runid"], run_id.as_str());
        assert!(e["sequence"].as_i64().unwrap() > 0);
    }

    let runs = get_json(&api.url(), "/api/v1/runs").await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    let streamed = read_sse(&api.url(), "", |s| s.len() >= 2).await;
    assert_eq!(streamed[1].1["type"], "io.gantry.run.started.v1");
    let ready = get_json(&api.url(), "/readyz").await;
    assert_eq!(ready["bus"], "nats", "{ready}");

    // Readiness follows NATS: not ready while it is down, ready once it is back.
    let mut nats = nats;
    nats.kill();
    let readyz = format!("{}/readyz", api.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = reqwest::get(&readyz).await.unwrap();
        if resp.status() == 503 {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with NATS down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reqwest::get(format!("{}/healthz", api.url()))
            .await
            .unwrap()
            .status(),
        200,
        "alive all the same"
    );
    nats.restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(&readyz).await.unwrap().status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
