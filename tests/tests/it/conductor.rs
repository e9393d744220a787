//! Two conductors on one database never both decide; a restarted conductor
//! re-arms the deadlines of the log (approval expiry, end of a freeze).

use gantry_conductor::Conductor;
use gantry_pipeline::{parse_str, PipelineSet};
use gantry_runtime::runtime::Pipelines;
use gantry_runtime::trigger::{self, CommitInfo};
use gantry_store::{EventStore, ExpectedVersion};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use gantry_proto::events::{PackageBuilt, RunFailed};
use gantry_proto::{CloudEvent, EventName};
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "name: p\nsource:\n  repo: https://git.example.com/a/b.git\ngateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n  - name: prod\n";

async fn store(url: &str) -> EventStore {
    let s = EventStore::connect(url).await.unwrap();
    s.migrate().await.unwrap();
    s
}

#[tokio::test]
async fn two_conductors_racing_record_each_decision_once() {
    let db = gantry_tests::fresh_postgres().await.unwrap();
    let pipeline = parse_str("p.yaml", PIPELINE).unwrap();
    let pipelines = Pipelines::new([pipeline].into_iter().collect::<PipelineSet>());
    let a = store(db.url()).await;
    let b = store(db.url()).await;

    let run_id = run_with_packages(&a, PIPELINE, &["test", "prod"]).await;

    // Both decide on the same history...
    let one = conductor(a.clone(), pipelines.clone());
    let two = conductor(b.clone(), pipelines.clone());
    let (d1, d2) = tokio::join!(one.decide_for("p"), two.decide_for("p"));
    let (d1, d2) = (
        d1.unwrap().expect("decisions"),
        d2.unwrap().expect("decisions"),
    );
    assert_eq!(d1.events.len(), d2.events.len());
    // ...and race to record it: one wins, the other conflicts.
    let (r1, r2) = tokio::join!(a.append_many(vec![d1]), b.append_many(vec![d2]));
    assert!(
        r1.is_ok() != r2.is_ok(),
        "exactly one append wins: {r1:?} / {r2:?}"
    );
    let lost = r1.err().or(r2.err()).unwrap();
    assert!(lost.is_conflict(), "{lost}");

    // The loser decides again on the new history: everything it would have
    // said is already recorded (deciding runs to a fixpoint: the run succeeded).
    assert!(two.decide_for("p").await.unwrap().is_none());
    let events = a.read_run(&run_id).await.unwrap();
    let names: Vec<EventName> = events.iter().filter_map(|e| e.event.name()).collect();
    for n in [EventName::StageStarted, EventName::EnvPromoted] {
        assert_eq!(
            names.iter().filter(|x| **x == n).count(),
            2,
            "{n} once per stage: {names:?}"
        );
    }
    assert_eq!(
        names
            .iter()
            .filter(|x| **x == EventName::RunSucceeded)
            .count(),
        1
    );
}

/// A run of pipeline `p` (from `yaml`) whose packages exist for every stage.
async fn run_with_packages(store: &EventStore, yaml: &str, stages: &[&str]) -> String {
    let pipeline = parse_str("p.yaml", yaml).unwrap();
    let run = trigger::start_run(
        store,
        "test",
        &pipeline,
        CommitInfo {
            provider: "manual".into(),
            commit: "b".repeat(40),
            branch: "main".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for stage in stages {
        let built = CloudEvent::new(
            "envgen",
            "p",
            Some(&run.run_id),
            &PackageBuilt {
                stage: (*stage).into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                size: 1,
                files: 1,
                format: "yaml".into(),
                values_digest: None,
                location: None,
                commit: Some("b".repeat(40)),
                committed_at: None,
            },
        );
        store
            .append(
                &trigger::run_stream(&run.run_id),
                ExpectedVersion::Any,
                vec![built],
            )
            .await
            .unwrap();
    }
    run.run_id
}

/// The first conductor decides (arming its in-memory timer) and is gone
/// before the deadline: a restart. Nothing but the conductor writes after.
async fn decide_then_stop(store: &EventStore, pipelines: &Pipelines) {
    let first = conductor(store.clone(), pipelines.clone());
    if let Some(batch) = first.decide_for("p").await.unwrap() {
        store.append_many(vec![batch]).await.unwrap();
    }
}

/// Polls the run's events until `found` returns something, for at most `limit`.
async fn wait_for<T>(
    store: &EventStore,
    run: &str,
    limit: Duration,
    found: impl Fn(&[gantry_store::store::RecordedEvent]) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let events = store.read_run(run).await.unwrap();
        if let Some(t) = found(&events) {
            return Some(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restarted_conductor_fails_the_run_when_the_approval_expires() {
    let db = gantry_tests::fresh_postgres().await.unwrap();
    let yaml = "name: p\nsource:\n  repo: https://git.example.com/a/b.git\ngateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n    approval: { approvers: [rm], expires: 3s }\n";
    let pipelines = Pipelines::new(
        [parse_str("p.yaml", yaml).unwrap()]
            .into_iter()
            .collect::<PipelineSet>(),
    );
    let store = store(db.url()).await;
    let run = run_with_packages(&store, yaml, &["test"]).await;
    decide_then_stop(&store, &pipelines).await;
    let names: Vec<EventName> = store
        .read_run(&run)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.event.name())
        .collect();
    assert!(
        names.contains(&EventName::ApprovalRequested) && !names.contains(&EventName::RunFailed),
        "the approval is pending: {names:?}"
    );

    // The conductor starts again (its own connection, nothing in memory)
    // and no event of the pipeline is recorded from now on.
    let restarted = conductor(store_with(db.url()).await, pipelines.clone());
    let shutdown = CancellationToken::new();
    let timers = tokio::spawn(restarted.run_timers(shutdown.child_token()));

    let failed = wait_for(&store, &run, Duration::from_secs(20), |events| {
        events
            .iter()
            .find(|e| e.event.name() == Some(EventName::RunFailed))
            .and_then(|e| e.event.decode::<RunFailed>().ok())
    })
    .await;
    shutdown.cancel();
    let _ = timers.await;
    let failed = failed.expect("the run fails when the approval expires, with no new event");
    assert!(failed.reason.contains("expired"), "{}", failed.reason);
    assert_eq!(failed.stage.as_deref(), Some("test"));
}

#[tokio::test]
async fn a_restarted_conductor_starts_the_stage_when_the_freeze_ends() {
    let db = gantry_tests::fresh_postgres().await.unwrap();
    let now = Utc::now();
    let from = (now - chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let end = now + chrono::Duration::seconds(3);
    let to = end.to_rfc3339_opts(SecondsFormat::Millis, true);
    let yaml = format!(
        "name: p\nsource:\n  repo: https://git.example.com/a/b.git\ngateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n    freeze: [ {{ from: \"{from}\", to: \"{to}\" }} ]\n"
    );
    let pipelines = Pipelines::new(
        [parse_str("p.yaml", &yaml).unwrap()]
            .into_iter()
            .collect::<PipelineSet>(),
    );
    let store = store(db.url()).await;
    let run = run_with_packages(&store, &yaml, &["test"]).await;
    decide_then_stop(&store, &pipelines).await;
    let started = |events: &[gantry_store::store::RecordedEvent]| {
        events
            .iter()
            .find(|e| e.event.name() == Some(EventName::StageStarted))
            .map(|e| e.recorded_at)
    };
    assert!(
        started(&store.read_run(&run).await.unwrap()).is_none(),
        "the stage is frozen"
    );

    let restarted = conductor(store_with(db.url()).await, pipelines.clone());
    let shutdown = CancellationToken::new();
    let timers = tokio::spawn(restarted.run_timers(shutdown.child_token()));
    let at = wait_for(&store, &run, Duration::from_secs(20), started).await;
    shutdown.cancel();
    let _ = timers.await;
    let at = at.expect("the stage starts when the freeze ends, with no new event");
    assert!(at >= end, "started at {at}, the freeze ended at {end}");
}

/// Issue 18: a step's deadline is a timer like an approval's expiry: a
/// conductor that restarts while a deploy runs records the deploy's
/// failure when the deadline passes, with no new event, and the run ends.
#[tokio::test]
async fn a_restarted_conductor_fails_a_step_at_its_deadline() {
    let db = gantry_tests::fresh_postgres().await.unwrap();
    let yaml = "name: p\nsource:\n  repo: https://git.example.com/a/b.git\ngateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n    deploy: { command: [\"true\"] }\n    timeouts: { deploy: 2s }\n";
    let pipelines = Pipelines::new(
        [parse_str("p.yaml", yaml).unwrap()]
            .into_iter()
            .collect::<PipelineSet>(),
    );
    let store = store(db.url()).await;
    let run = run_with_packages(&store, yaml, &["test"]).await;
    // The stage starts; no deployer answers.
    decide_then_stop(&store, &pipelines).await;
    let started = store
        .read_run(&run)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event.name() == Some(EventName::StageStarted))
        .expect("the stage started");

    let restarted = conductor(store_with(db.url()).await, pipelines.clone());
    let shutdown = CancellationToken::new();
    let timers = tokio::spawn(restarted.run_timers(shutdown.child_token()));
    let ended = wait_for(&store, &run, Duration::from_secs(20), |events| {
        events
            .iter()
            .any(|e| e.event.name() == Some(EventName::RunFailed))
            .then(|| events.to_vec())
    })
    .await;
    shutdown.cancel();
    let _ = timers.await;
    let events = ended.expect("the run fails at the deploy's deadline, with no new event");
    let failed = events
        .iter()
        .find(|e| e.event.name() == Some(EventName::DeployFailed))
        .expect("deploy.failed recorded");
    assert_eq!(failed.event.data["reason"], "timed out after 2s");
    assert_eq!(failed.event.causationid, Some(started.event.id));
    assert!(failed.event.time >= started.event.time + chrono::Duration::seconds(2));
    let run_failed: RunFailed = events
        .iter()
        .find_map(|e| e.event.decode::<RunFailed>().ok())
        .unwrap();
    assert_eq!(
        run_failed.reason,
        "deploy to test failed: timed out after 2s"
    );
}

/// Another connection to the same database, as a restarted process has.
async fn store_with(url: &str) -> EventStore {
    EventStore::connect(url).await.unwrap()
}

/// A conductor on `store` (it reads no packages and keeps no files).
fn conductor(store: EventStore, pipelines: Pipelines) -> Conductor {
    let unused = std::env::temp_dir();
    Conductor::new(&gantry_runtime::WorkerContext::new(
        store,
        pipelines,
        gantry_store::packages::PackageStore::local(&unused),
        unused,
    ))
}
