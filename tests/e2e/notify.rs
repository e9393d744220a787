//! Notifications (DESIGN.md 1.9) as receivers see them: signed CloudEvents
//! retried after receiver errors, in log order, once per event after
//! deduplication; a Slack message naming the run, stage and commit with a
//! link to the console; and a receiver that never answers, which delays no
//! run and shows up in the API and on `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use gantry_tests::GitRepo;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const KEY: &str = "notify-signing-key";

/// One request a receiver got: path, headers, body.
type Request = (String, HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Request>>>,
    /// Requests to `/ce` answered 503 before the receiver "recovers".
    fail_first: Arc<Mutex<u32>>,
}

async fn receive(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    r.seen
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), headers, body.to_vec()));
    let mut fail = r.fail_first.lock().unwrap();
    if uri.path() == "/ce" && *fail > 0 {
        *fail -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// The bodies received at `path`, first delivery of each event id only
    /// (what a receiver that deduplicates by `X-Gantry-Delivery` keeps),
    /// and how many requests arrived there in all.
    fn deduplicated(&self, path: &str) -> (Vec<(HeaderMap, Vec<u8>)>, usize) {
        let seen = self.seen.lock().unwrap();
        let mut ids = std::collections::BTreeSet::new();
        let mut kept = Vec::new();
        let mut all = 0;
        for (p, headers, body) in seen.iter().filter(|(p, ..)| p == path) {
            debug_assert_eq!(p, path);
            all += 1;
            let id = headers["x-gantry-delivery"].to_str().unwrap().to_owned();
            if ids.insert(id) {
                kept.push((headers.clone(), body.clone()));
            }
        }
        (kept, all)
    }
}

#[tokio::test]
async fn notifications_arrive_signed_retried_in_order_and_a_dead_receiver_delays_nothing() {
    let receiver = Receiver {
        fail_first: Arc::new(Mutex::new(2)),
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/ce", post(receive))
        .route("/slack", post(receive))
        .with_state(receiver.clone());
    let at = serve_http(app).await;
    // A receiver that accepts connections and never answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_at = dead.local_addr().unwrap();

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{head}stages:\n  - name: test\n  - name: prod\n\
             notify:\n\
             \x20 - url: http://{at}/ce\n    secret: env:E2E_NOTIFY_KEY\n    events: [run.started, env.promoted, run.succeeded]\n\
             \x20 - url: env:E2E_SLACK_URL\n    format: slack\n    events: [run.succeeded]\n\
             \x20 - url: http://{dead_at}/never\n",
            head = banking(repo.path().display()),
        ),
    );
    // The same pipeline without notifications, to compare run times.
    std::fs::write(
        dir.path().join("pipelines/plain.yaml"),
        format!(
            "{}stages:\n  - name: test\n  - name: prod\n",
            banking(repo.path().display()).replace("name: banking", "name: plain")
        ),
    )
    .unwrap();
    let slack_url = format!("http://{at}/slack");
    let gantry = Gantry::start(
        dir.path(),
        &["up"],
        &[
            ("E2E_NOTIFY_KEY", KEY),
            ("E2E_SLACK_URL", &slack_url),
            ("GANTRY_PUBLIC_URL", "https://gantry.example.com"),
        ],
    )
    .await;
    let base = gantry.url();

    let mut runs = Vec::new();
    let mut took = BTreeMap::new();
    for n in 1..=2 {
        repo.write("gateway/values.yaml", format!("---\nn: {n}\n"))
            .unwrap();
        let commit = repo.commit(&format!("change {n}")).unwrap();
        for pipeline in ["banking", "plain"] {
            let started = Instant::now();
            let run = trigger_run(&base, None, pipeline, &commit).await;
            let view =
                wait_run_ended(&base, &run, Duration::from_secs(60), || gantry.log_text()).await;
            assert_eq!(view["status"], "succeeded", "{view}");
            took.entry(pipeline)
                .or_insert_with(Vec::new)
                .push(started.elapsed());
            if pipeline == "banking" {
                runs.push((run, commit.clone()));
            }
        }
    }
    // Measured, not asserted (timings belong in benchmarks): the runs of
    // the pipeline whose third receiver never answers against the same
    // runs without notifications.
    eprintln!("run times with a dead receiver vs none: {took:?}");

    // Every matching event arrives at /ce once after deduplication, in log
    // order, signed; the first two attempts were refused and retried.
    let want: Vec<(String, String)> = runs
        .iter()
        .flat_map(|(run, _)| {
            [
                ("run.started", run),
                ("env.promoted", run),
                ("env.promoted", run),
                ("run.succeeded", run),
            ]
            .map(|(n, r)| (n.to_owned(), r.clone()))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (kept, all) = loop {
        let (kept, all) = receiver.deduplicated("/ce");
        if kept.len() >= want.len() || Instant::now() > deadline {
            break (kept, all);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got: Vec<(String, String)> = kept
        .iter()
        .map(|(headers, body)| {
            let event: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(headers["content-type"], "application/cloudevents+json");
            assert_eq!(headers["x-gantry-delivery"].to_str().unwrap(), event["id"]);
            assert_eq!(headers["x-gantry-pipeline"], "banking");
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
            mac.update(body);
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(headers["x-gantry-signature"].to_str().unwrap(), expected);
            let name = event["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("io.gantry.")
                .trim_end_matches(".v1")
                .to_owned();
            assert_eq!(headers["x-gantry-event"].to_str().unwrap(), name);
            (name, event["runid"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(got, want, "in log order, once each after deduplication");
    let positions: Vec<i64> = kept
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<Value>(b).unwrap()["sequence"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(all, want.len() + 2, "the two refused attempts were retried");

    // Slack: one message per succeeded run, in words, with a link.
    let (slack, _) = receiver.deduplicated("/slack");
    assert_eq!(slack.len(), 2);
    for ((headers, body), (run, commit)) in slack.iter().zip(&runs) {
        assert!(
            headers.get("x-gantry-signature").is_none(),
            "no secret, no signature"
        );
        let message: Value = serde_json::from_slice(body).unwrap();
        let text = message["text"].as_str().unwrap();
        assert!(text.starts_with("Run succeeded · *banking*"), "{text}");
        assert!(
            text.contains(&format!("commit `{}`", &commit[..8])),
            "{text}"
        );
        assert!(
            text.contains(&format!("<https://gantry.example.com/runs/{run}|")),
            "{text}"
        );
    }

    // The dead receiver is owed everything and got nothing; the API and
    // the metrics say so, without its URL.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = get_json(&base, "/api/v1/notifications?pipeline=banking").await;
        let ce = status
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["format"] == "cloudevents" && t["delivered"].as_i64() > Some(0))
            .cloned();
        if ce.is_some_and(|t| t["delivered"].as_i64() == Some(want.len() as i64))
            || Instant::now() > deadline
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let targets = status.as_array().unwrap();
    assert_eq!(targets.len(), 3, "{status:#}");
    let dead_one = targets
        .iter()
        .find(|t| t["delivered"] == 0 && t["format"] == "cloudevents")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert!(dead_one["pending"].as_i64().unwrap() > 0, "{status:#}");
    assert_eq!(dead_one["host"], "127.0.0.1");
    let live = targets
        .iter()
        .find(|t| t["delivered"].as_i64() == Some(want.len() as i64))
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(live["failed_attempts"], 2, "{status:#}");
    assert!(
        live["last_error"].as_str().unwrap().contains("503"),
        "{status:#}"
    );
    let text = status.to_string();
    assert!(
        !text.contains("/slack") && !text.contains("/never"),
        "URLs are never shown: {text}"
    );
    let metrics = get_text(&base, "/metrics").await;
    assert!(
        metrics.contains("gantry_notify_failed_attempts_total{pipeline=\"banking\""),
        "{metrics}"
    );
    assert!(metrics.contains("gantry_notify_pending{"), "{metrics}");
    drop(dead);
}

/// Every series the Grafana dashboard in `deploy/grafana/` queries is one
/// that `/metrics` serves (after runs, a webhook, a rejected webhook and a
/// notification), so the dashboard loads with data, not empty panels.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_series_gantry_serves() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/gantry.json"
    );
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "gantry-overview");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("gantry_") {
                    queried.insert(token.to_owned());
                }
            }
        }
    }
    assert!(queried.len() >= 12, "{queried:?}");

    let receiver = Receiver::default();
    let app = axum::Router::new()
        .route("/ce", post(receive))
        .with_state(receiver.clone());
    let at = serve_http(app).await;
    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let commit = repo.commit("first").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{}stages:\n  - name: test\nnotify:\n  - url: http://{at}/ce\n    events: [run.succeeded]\n",
            banking(repo.path().display())
        ),
    );
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let run = push_local_commit(&base, &repo, &commit, serde_json::json!({"name": "Dev"})).await;
    let view = wait_run_ended(&base, &run, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let rejected = reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(rejected.status().is_client_error(), "{}", rejected.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.deduplicated("/ce").0.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get_text(&base, "/metrics").await;
    let served: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &queried {
        let base_name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            served.contains(base_name),
            "the dashboard queries {name}, which /metrics does not serve:\n{metrics}"
        );
    }
}
