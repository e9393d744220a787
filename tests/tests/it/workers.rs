//! The one shape of the workers: every one is built from a
//! `WorkerContext`, and every one applies the same rule when the run's
//! pipeline is no longer defined (its step's `*.failed`, naming the
//! pipeline, where the run's plan waits for the step; nothing elsewhere).

use std::sync::Arc;

use gantry_proto::events::{
    ApisFailed, DeployCompleted, DeployFailed, ImageFailed, PackageBuilt, PackageFailed,
    RunStarted, SmokeFailed, StageStarted,
};
use gantry_proto::{CloudEvent, EventName, EventPayload, StagePlan, Step, Trigger};
use gantry_runtime::runtime::Pipelines;
use gantry_runtime::trigger::run_stream;
use gantry_runtime::WorkerContext;
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::{ExpectedVersion, NewEvents};

const RUN: &str = "0192f0c4-7d2e-7c4e-9f00-0000000000aa";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const GONE: &str = "pipeline `gone` is no longer defined";

/// A context with no pipelines, whose log holds the `run.started` of a run
/// of pipeline `gone`: stage `full` has every step, stage `bare` only its
/// package.
async fn gone() -> (WorkerContext, CloudEvent, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let ctx = WorkerContext::local(Pipelines::default(), data.path())
        .await
        .unwrap();
    let started = RunStarted {
        run_id: RUN.into(),
        commit: COMMIT.into(),
        branch: "main".into(),
        repository: "https://git.example.com/gone.git".into(),
        message: None,
        author: None,
        authors: vec![],
        trigger: Trigger::Manual,
        stages: vec![
            StagePlan {
                name: "full".into(),
                after: None,
                steps: Step::ORDER.to_vec(),
            },
            StagePlan {
                name: "bare".into(),
                after: Some("full".into()),
                steps: vec![Step::Package],
            },
        ],
        rollback: None,
    };
    let event = CloudEvent::new("api", "gone", Some(RUN), &started);
    ctx.store
        .append_many(vec![NewEvents::new(
            run_stream(RUN),
            ExpectedVersion::Any,
            vec![event.clone()],
        )])
        .await
        .unwrap();
    (ctx, event, data)
}

fn cue<P: EventPayload>(payload: &P) -> CloudEvent {
    CloudEvent::new("test", "gone", Some(RUN), payload)
}

fn started(stage: &str) -> CloudEvent {
    cue(&StageStarted {
        stage: stage.into(),
        commit: COMMIT.into(),
        image: None,
        digest: None,
        rollback: false,
    })
}

/// The events `handler` records for `cause`, with their cause checked.
async fn answer(handler: &Arc<dyn Handler>, cause: &CloudEvent) -> Vec<CloudEvent> {
    let results = handler.handle(cause).await.unwrap();
    let mut events = Vec::new();
    for batch in results {
        assert_eq!(batch.stream_id, run_stream(RUN));
        for e in batch.events {
            assert_eq!(e.causationid, Some(cause.id));
            assert_eq!(e.source, format!("gantry/{}", handler.name()));
            events.push(e);
        }
    }
    events
}

/// The one `*.failed` of `stage` that `handler` records for `cause`.
async fn failed<P: EventPayload>(handler: &Arc<dyn Handler>, cause: &CloudEvent) -> P {
    let events = answer(handler, cause).await;
    assert_eq!(events.len(), 1, "{events:?}");
    events[0].decode().unwrap()
}

#[tokio::test]
async fn envgen_fails_every_stage_of_a_pipeline_no_longer_defined() {
    let (ctx, run_started, _data) = gone().await;
    let h = gantry_envgen::service::handler(&ctx);
    assert_eq!(h.name(), gantry_envgen::service::SERVICE);
    let events = answer(&h, &run_started).await;
    let stages: Vec<PackageFailed> = events.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(
        stages.iter().map(|f| f.stage.as_str()).collect::<Vec<_>>(),
        ["full", "bare"]
    );
    assert!(stages.iter().all(|f| f.reason == GONE), "{stages:?}");
}

#[tokio::test]
async fn imagebuild_fails_the_image_of_a_pipeline_no_longer_defined() {
    let (ctx, _, _data) = gone().await;
    let h = gantry_imagebuild::service::handler(&ctx);
    assert_eq!(h.name(), gantry_imagebuild::service::SERVICE);
    let built = |stage: &str| {
        cue(&PackageBuilt {
            stage: stage.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            files: 0,
            format: "yaml".into(),
            values_digest: None,
            location: None,
            commit: Some(COMMIT.into()),
            committed_at: None,
        })
    };
    let f: ImageFailed = failed(&h, &built("full")).await;
    assert_eq!((f.stage.as_str(), f.reason.as_str()), ("full", GONE));
    // The run waits for no image of `bare`.
    assert!(answer(&h, &built("bare")).await.is_empty());
}

#[tokio::test]
async fn deployer_fails_the_deploy_of_a_pipeline_no_longer_defined() {
    let (ctx, _, _data) = gone().await;
    let h = gantry_deployer::handler(&ctx);
    assert_eq!(h.name(), gantry_deployer::SERVICE);
    let f: DeployFailed = failed(&h, &started("full")).await;
    assert_eq!((f.stage.as_str(), f.reason.as_str()), ("full", GONE));
    assert!(answer(&h, &started("bare")).await.is_empty());
}

#[tokio::test]
async fn apim_fails_the_promotion_of_a_pipeline_no_longer_defined() {
    let (ctx, _, _data) = gone().await;
    let h = gantry_apim::handler(&ctx);
    assert_eq!(h.name(), gantry_apim::SERVICE);
    let deployed = cue(&DeployCompleted {
        stage: "full".into(),
        image: None,
        digest: None,
        revision: None,
        output: None,
        duration_ms: 1,
    });
    // `full` deploys first: its API Manager step begins after the deploy.
    assert!(answer(&h, &started("full")).await.is_empty());
    let f: ApisFailed = failed(&h, &deployed).await;
    assert_eq!((f.stage.as_str(), f.reason.as_str()), ("full", GONE));
    assert!(answer(&h, &started("bare")).await.is_empty());
}

#[tokio::test]
async fn smoke_fails_the_checks_of_a_pipeline_no_longer_defined() {
    let (ctx, _, _data) = gone().await;
    let h = gantry_smoke::handler(&ctx);
    assert_eq!(h.name(), gantry_smoke::SERVICE);
    let promoted = cue(&gantry_proto::events::ApisPromoted {
        stage: "full".into(),
        changes: vec![],
    });
    assert!(answer(&h, &started("full")).await.is_empty());
    let f: SmokeFailed = failed(&h, &promoted).await;
    assert_eq!(f.stage, "full");
    assert_eq!(f.checks.len(), 1);
    assert!(!f.checks[0].passed);
    assert_eq!(f.checks[0].message.as_deref(), Some(GONE));
    assert!(answer(&h, &started("bare")).await.is_empty());
}

#[tokio::test]
async fn the_conductor_decides_nothing_for_a_pipeline_no_longer_defined() {
    let (ctx, run_started, _data) = gone().await;
    let h = gantry_conductor::handler(&ctx);
    assert_eq!(h.name(), gantry_conductor::SERVICE);
    assert!(answer(&h, &run_started).await.is_empty());
}

#[tokio::test]
async fn an_unreadable_cue_is_a_permanent_error_keeping_its_cause() {
    let (ctx, _, _data) = gone().await;
    let mut cause = started("full");
    assert_eq!(cause.ty, EventName::StageStarted.type_name());
    cause.data = serde_json::json!({ "stage": "full" });
    let e = gantry_deployer::handler(&ctx)
        .handle(&cause)
        .await
        .unwrap_err();
    assert!(matches!(e, HandlerError::Permanent { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());
    let chain = gantry_store::consumer::chain(&e);
    assert!(chain.starts_with("cannot read "), "{chain}");
    assert!(chain.contains("invalid data"), "{chain}");
}

/// What `handler` records when the consumer runner gives up on `cause`.
async fn given_up(handler: &Arc<dyn Handler>, cause: &CloudEvent) -> Vec<CloudEvent> {
    let results = handler.gave_up(cause, "registry said no").await.unwrap();
    let mut events = Vec::new();
    for batch in results {
        assert_eq!(batch.stream_id, run_stream(RUN));
        for e in batch.events {
            assert_eq!(e.causationid, Some(cause.id));
            events.push(e);
        }
    }
    events
}

/// Issue 18: when the consumer runner gives up on a worker's cue (its last
/// attempt failed), the step's `*.failed` is recorded with the last error,
/// where the run waits for the step, so the run ends instead of waiting.
#[tokio::test]
async fn every_worker_fails_its_step_when_its_cue_is_given_up() {
    let (ctx, run_started, _data) = gone().await;
    const REASON: &str = "could not be processed: registry said no";
    let envgen = gantry_envgen::service::handler(&ctx);
    let events = given_up(&envgen, &run_started).await;
    let reasons: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let f: PackageFailed = e.decode().unwrap();
            (f.stage, f.reason)
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("full".into(), REASON.into()),
            ("bare".into(), REASON.into())
        ]
    );

    let deployer = gantry_deployer::handler(&ctx);
    let events = given_up(&deployer, &started("full")).await;
    let f: DeployFailed = events[0].decode().unwrap();
    assert_eq!((f.stage.as_str(), f.reason.as_str()), ("full", REASON));
    // The run waits for no deploy of `bare`: nothing to fail.
    assert!(given_up(&deployer, &started("bare")).await.is_empty());

    let apim = gantry_apim::handler(&ctx);
    assert!(given_up(&apim, &started("full")).await.is_empty());
    let deployed = cue(&DeployCompleted {
        stage: "full".into(),
        image: None,
        digest: None,
        revision: None,
        output: None,
        duration_ms: 1,
    });
    let f: ApisFailed = given_up(&apim, &deployed).await[0].decode().unwrap();
    assert_eq!(f.reason, REASON);

    let smoke = gantry_smoke::handler(&ctx);
    let promoted = cue(&gantry_proto::events::ApisPromoted {
        stage: "full".into(),
        changes: vec![],
    });
    let f: SmokeFailed = given_up(&smoke, &promoted).await[0].decode().unwrap();
    assert_eq!(f.checks[0].message.as_deref(), Some(REASON));
}
