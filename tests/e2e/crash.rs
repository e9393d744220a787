//! SIGKILL while webhooks flow: no accepted event is lost, none duplicated,
//! in the log of record and on NATS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use gantry_tests::{fresh_postgres, NatsServer};

const WEBHOOKS: usize = 240;
const SENDERS: usize = 6;

/// Sends `WEBHOOKS` pushes with distinct commits, each retried until the
/// server gives a definitive answer; returns the commits that got a 202.
async fn flood(base: String, accepted: Arc<AtomicUsize>) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let (client, base, next, accepted) =
            (client.clone(), base.clone(), next.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= WEBHOOKS {
                    return mine;
                }
                let commit = commit_sha(10_000 + n as u64);
                let delivery = format!("delivery-{n}");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    match send_push(&client, &base, &commit, &delivery).await {
                        Ok((202, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            mine.push(commit.clone());
                            break;
                        }
                        Ok((status, body)) => panic!("unexpected {status}: {body}"),
                        // The server is down or died mid-request: a forge retries.
                        Err(_) => {
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "server never came back"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn wait_for(accepted: &AtomicUsize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepted.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks stopped flowing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every accepted commit has exactly one `commit.received` and one `run.started`.
fn assert_exactly_once(accepted: &[String], rows: &[(String, String, String)]) {
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        unique.len(),
        WEBHOOKS,
        "every webhook was eventually accepted"
    );
    let mut per_commit: HashMap<(&str, &str), usize> = HashMap::new();
    let mut ids = HashSet::new();
    for (id, ty, commit) in rows {
        assert!(ids.insert(id.clone()), "event {id} recorded twice");
        *per_commit
            .entry((ty.as_str(), commit.as_str()))
            .or_default() += 1;
    }
    for commit in &unique {
        for ty in ["io.gantry.commit.received.v1", "io.gantry.run.started.v1"] {
            assert_eq!(
                per_commit.get(&(ty, commit.as_str())).copied(),
                Some(1),
                "{ty} for {commit}"
            );
        }
    }
    assert_eq!(
        rows.len(),
        2 * WEBHOOKS,
        "no other commit or run-start events"
    );
}

#[tokio::test]
async fn sigkill_of_gantry_up_loses_and_duplicates_nothing() {
    let dir = workdir();
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(flood(gantry.url(), accepted.clone()));
    for at in [WEBHOOKS / 4, WEBHOOKS / 2, 3 * WEBHOOKS / 4] {
        wait_for(&accepted, at).await;
        gantry.restart().await; // SIGKILL, then start again on the same port
    }
    let commits = sender.await.unwrap();

    let url = format!(
        "sqlite://{}",
        dir.path().join(".gantry/gantry.db").display()
    );
    let store = gantry_store::EventStore::connect(&url).await.unwrap();
    // `gantry up` also runs envgen, which answers every run with one package
    // result per stage (here `package.failed`: the repository is not
    // reachable). Wait for all of them: the worker was killed too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = store.read_all(0, 100_000).await.unwrap();
        let results = events
            .iter()
            .filter(|e| e.event.ty.starts_with("io.gantry.package."))
            .count();
        let ended = events
            .iter()
            .filter(|e| e.event.name().is_some_and(|n| n.is_terminal()))
            .count();
        if results >= 2 * WEBHOOKS && ended >= WEBHOOKS {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{results} package results for {WEBHOOKS} runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows: Vec<_> = events
        .iter()
        .filter(|e| {
            e.event.ty == "io.gantry.commit.received.v1" || e.event.ty == "io.gantry.run.started.v1"
        })
        .map(|e| {
            (
                e.event.id.to_string(),
                e.event.ty.clone(),
                e.event.data["commit"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_exactly_once(&commits, &rows);
    // Handlers' effects happened once per (run, stage), kills or not.
    let mut results = HashSet::new();
    for e in events
        .iter()
        .filter(|e| e.event.ty.starts_with("io.gantry.package."))
    {
        let key = (e.event.runid.clone(), e.event.stage().map(str::to_owned));
        assert!(
            results.insert(key.clone()),
            "two package results for {key:?}"
        );
    }
    assert_eq!(results.len(), 2 * WEBHOOKS);
    // And the conductor ended each run exactly once.
    let mut ended = HashSet::new();
    for e in events
        .iter()
        .filter(|e| e.event.name().is_some_and(|n| n.is_terminal()))
    {
        assert!(
            ended.insert(e.event.runid.clone()),
            "run {:?} ended twice",
            e.event.runid
        );
    }
    assert_eq!(ended.len(), WEBHOOKS);
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=positions.len() as i64).collect::<Vec<_>>());

    let runs = get_json(&gantry.url(), "/api/v1/runs?limit=1000").await;
    assert_eq!(runs.as_array().unwrap().len(), WEBHOOKS);
}

#[tokio::test]
async fn sigkill_of_distributed_services_loses_and_duplicates_nothing() {
    let db = fresh_postgres().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let dir = workdir();
    let prefix = gantry_tests::unique_name("crash");
    let stream_name = gantry_tests::unique_name("CRASH_").to_uppercase();
    let env = [
        ("GANTRY_DATABASE_URL", db.url()),
        ("GANTRY_NATS_URL", &nats.url()),
        ("GANTRY_NATS_PREFIX", &prefix),
        ("GANTRY_NATS_STREAM", &stream_name),
    ];
    // Both processes are relay candidates; killing either must not matter.
    let mut webhook = Gantry::start(dir.path(), &["serve", "webhook"], &env).await;
    let mut api = Gantry::start(dir.path(), &["serve", "api"], &env).await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(flood(webhook.url(), accepted.clone()));
    wait_for(&accepted, WEBHOOKS / 4).await;
    webhook.restart().await;
    wait_for(&accepted, WEBHOOKS / 2).await;
    api.restart().await;
    wait_for(&accepted, 3 * WEBHOOKS / 4).await;
    webhook.restart().await;
    api.restart().await;
    let commits = sender.await.unwrap();

    let pool = db.pool().await.unwrap();
    let rows: Vec<(String, String, String)> = log_rows(&pool)
        .await
        .into_iter()
        .map(|(id, ty, event)| (id, ty, event["data"]["commit"].as_str().unwrap().to_owned()))
        .collect();
    assert_exactly_once(&commits, &rows);

    // JetStream ends up with exactly the log: every event once, in log order.
    let in_log: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    assert_nats_holds_log(&nats.url(), &stream_name, &in_log).await;
}
