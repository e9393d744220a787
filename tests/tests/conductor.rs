//! Two conductors on one database never both decide.

use gantry_conductor::Conductor;
use gantry_core::pipeline::{parse_str, PipelineSet};
use gantry_core::runtime::Pipelines;
use gantry_core::trigger::{self, CommitInfo};
use gantry_core::{EventStore, ExpectedVersion};
use gantry_proto::events::PackageBuilt;
use gantry_proto::{CloudEvent, EventName};

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
    let pipelines = Pipelines::new([pipeline.clone()].into_iter().collect::<PipelineSet>());
    let a = store(db.url()).await;
    let b = store(db.url()).await;

    let run = trigger::start_run(
        &a,
        "test",
        &pipeline,
        CommitInfo {
            provider: "manual".into(),
            commit: "a".repeat(40),
            branch: "main".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for stage in ["test", "prod"] {
        let built = CloudEvent::new(
            "envgen",
            "p",
            Some(&run.run_id),
            &PackageBuilt {
                stage: stage.into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                size: 1,
                files: 1,
                format: "yaml".into(),
                values_digest: None,
                location: None,
                commit: Some("a".repeat(40)),
                committed_at: None,
            },
        );
        a.append(
            &trigger::run_stream(&run.run_id),
            ExpectedVersion::Any,
            vec![built],
        )
        .await
        .unwrap();
    }

    // Both decide on the same history...
    let one = Conductor::new(a.clone(), pipelines.clone());
    let two = Conductor::new(b.clone(), pipelines.clone());
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
    let events = a.read_run(&run.run_id).await.unwrap();
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
