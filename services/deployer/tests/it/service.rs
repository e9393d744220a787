//! The deployer as a consumer handler: `stage.started` in, `deploy.*` out.

use std::path::Path;
use std::time::Duration;

use crate::common::{health_server, values_with, DeployRepo, VALUES_PATH};
use gantry_deployer::{Deployer, DeployerOptions, GitOpsOptions, ReadyOptions};
use gantry_pipeline::{parse_str, PipelineSet};
use gantry_proto::events::{DeployCompleted, DeployFailed, RunStarted, StageStarted};
use gantry_proto::{CloudEvent, EventName, StagePlan, Step, Trigger};
use gantry_runtime::runtime::Pipelines;
use gantry_runtime::trigger::run_stream;
use gantry_runtime::WorkerContext;
use gantry_store::consumer::Handler;
use gantry_store::NewEvents;

const REPOSITORY: &str = "registry.example.com/apim/banking-gateway";
const DIGEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const RUN: &str = "0192f0c4-7d2e-7c4e-9f00-000000000001";
const SECRET: &str = "s3cret-deploy-token-value";

struct Fixture {
    deployer: Deployer,
    ctx: WorkerContext,
    repo: DeployRepo,
    _data: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let repo = DeployRepo::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let secret_file = data.path().join("git-token");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let (ready_ok, _) = health_server(Some(2)).await;
    let (ready_never, _) = health_server(None).await;
    let yaml = format!(
        r#"
name: banking
source:
  repo: https://git.example.com/apim/banking-config.git
  token: file:{secret}
gateway:
  format: yaml
  path: gateway/
image:
  base: registry.example.com/axway/apigw-emt:7.7
  repository: {REPOSITORY}
stages:
  - name: test
    deploy:
      gitops: {{ repo: "{remote}", branch: main, file: {VALUES_PATH}, key: apitraffic.image }}
    ready: {{ url: "{ready_ok}", timeout: 20s }}
  - name: cmd
    deploy:
      command: ["/bin/sh", "-c", "echo deploying $GANTRY_IMAGE to $GANTRY_STAGE for $GANTRY_RUN; echo token $(cat {secret})"]
      timeout: 20s
  - name: plain
  - name: broken
    deploy:
      command: ["/bin/sh", "-c", "echo about to fail; exit 2"]
  - name: unready
    deploy:
      command: ["/bin/true"]
    ready: {{ url: "{ready_never}", timeout: 300ms }}
  - name: slow
    deploy:
      command: ["sleep", "30"]
      timeout: 300ms
  - name: late
    deploy:
      gitops: {{ repo: "{remote}", branch: main, file: {VALUES_PATH}, key: apitraffic.image }}
    timeouts: {{ deploy: 1s }}
"#,
        secret = secret_file.display(),
        remote = repo.url(),
    );
    let pipeline = parse_str("banking.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut set = PipelineSet::new();
    set.insert(pipeline, None);
    let options = DeployerOptions {
        gitops: GitOpsOptions {
            retry_backoff: Duration::from_millis(10),
            ..GitOpsOptions::default()
        },
        ready: ReadyOptions {
            interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(2),
        },
        max_output: None,
        ..DeployerOptions::default()
    };
    let ctx = WorkerContext::local(Pipelines::new(set), data.path())
        .await
        .unwrap();
    let deployer = Deployer::new(&ctx).with_options(options);
    Fixture {
        deployer,
        ctx,
        repo,
        _data: data,
    }
}

fn stage_started(pipeline: &str, stage: &str) -> CloudEvent {
    let started = StageStarted {
        stage: stage.into(),
        commit: COMMIT.into(),
        image: Some(format!("{REPOSITORY}:{stage}-0123456")),
        digest: Some(DIGEST.into()),
        rollback: false,
    };
    CloudEvent::new("conductor", pipeline, Some(RUN), &started)
}

/// The one event the handler recorded, checked for stream and causation.
fn only_event(cause: &CloudEvent, results: Vec<NewEvents>) -> CloudEvent {
    assert_eq!(results.len(), 1);
    let batch = results.into_iter().next().unwrap();
    assert_eq!(batch.stream_id, run_stream(RUN));
    assert_eq!(batch.events.len(), 1);
    let e = batch.events.into_iter().next().unwrap();
    assert_eq!(e.causationid, Some(cause.id));
    assert_eq!(e.correlationid, Some(cause.id));
    assert_eq!(e.runid.as_deref(), Some(RUN));
    assert_eq!(e.pipeline, cause.pipeline);
    assert_eq!(e.source, "gantry/deployer");
    e
}

fn image() -> String {
    format!("{REPOSITORY}@{DIGEST}")
}

#[tokio::test]
async fn gitops_stage_is_deployed_then_ready() {
    let f = fixture().await;
    assert_eq!(f.deployer.name(), "deployer");
    assert_eq!(f.deployer.events(), &[EventName::StageStarted]);
    let cause = stage_started("banking", "test");
    let results = f.deployer.handle(&cause).await.unwrap();
    let e = only_event(&cause, results);
    assert_eq!(e.ty, EventName::DeployCompleted.type_name());
    let done: DeployCompleted = e.decode().unwrap();
    assert_eq!(done.stage, "test");
    assert_eq!(done.image.as_deref(), Some(image().as_str()));
    assert_eq!(done.digest.as_deref(), Some(DIGEST));
    assert_eq!(done.revision.as_deref(), Some(f.repo.head().as_str()));
    assert_eq!(done.output, None);
    assert_eq!(f.repo.file(VALUES_PATH), values_with(&image()));
    let message = f
        .repo
        .remote
        .git(["log", "-1", "--format=%B", "main"])
        .unwrap();
    assert!(
        message.starts_with(&format!("deploy test: {}\n", image())),
        "{message}"
    );
    assert!(message.contains(&format!("run {RUN}")), "{message}");
    assert!(message.contains(&format!("commit {COMMIT}")), "{message}");

    // The same event handled again (a crash before the append): no new commit.
    let again = f.deployer.handle(&cause).await.unwrap();
    let done2: DeployCompleted = only_event(&cause, again).decode().unwrap();
    assert_eq!(done2.revision, done.revision);
    assert_eq!(f.repo.head(), done.revision.unwrap());
}

#[tokio::test]
async fn command_stage_gets_the_release_and_masked_output() {
    let f = fixture().await;
    let cause = stage_started("banking", "cmd");
    let e = only_event(&cause, f.deployer.handle(&cause).await.unwrap());
    let done: DeployCompleted = e.decode().unwrap();
    let output = done.output.unwrap();
    assert!(
        output.contains(&format!("deploying {} to cmd for {RUN}", image())),
        "{output}"
    );
    assert!(output.contains("token ***"), "{output}");
    assert!(!output.contains(SECRET), "{output}");
    assert_eq!(done.revision, None);
    assert!(!e.data.to_string().contains(SECRET));
}

#[tokio::test]
async fn a_stage_without_deploy_gets_no_answer() {
    let f = fixture().await;
    let cause = stage_started("banking", "plain");
    assert!(f.deployer.handle(&cause).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_command_is_deploy_failed_with_its_output() {
    let f = fixture().await;
    let cause = stage_started("banking", "broken");
    let e = only_event(&cause, f.deployer.handle(&cause).await.unwrap());
    assert_eq!(e.ty, EventName::DeployFailed.type_name());
    let failed: DeployFailed = e.decode().unwrap();
    assert_eq!(failed.stage, "broken");
    assert_eq!(failed.reason, "`/bin/sh` exited with code 2: about to fail");
    assert_eq!(failed.output.as_deref(), Some("about to fail\n"));
}

#[tokio::test]
async fn a_stage_that_never_gets_ready_is_deploy_failed() {
    let f = fixture().await;
    let cause = stage_started("banking", "unready");
    let e = only_event(&cause, f.deployer.handle(&cause).await.unwrap());
    let failed: DeployFailed = e.decode().unwrap();
    assert!(
        failed.reason.starts_with("not ready: "),
        "{}",
        failed.reason
    );
    assert!(failed.reason.contains("HTTP 503"), "{}", failed.reason);
}

#[tokio::test]
async fn a_command_over_its_timeout_is_deploy_failed() {
    let f = fixture().await;
    let cause = stage_started("banking", "slow");
    let started = std::time::Instant::now();
    let e = only_event(&cause, f.deployer.handle(&cause).await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(10));
    let failed: DeployFailed = e.decode().unwrap();
    assert!(
        failed.reason.contains("did not finish within 300ms"),
        "{}",
        failed.reason
    );
}

/// Issue 18: a gitops deploy that passed its deadline stopped being
/// awaited (`deploy.failed`), but its blocking thread went on and pushed
/// after the deploy had been failed. The deploy now checks the deadline
/// right before it pushes: the deploy repository never changes.
#[tokio::test]
async fn a_gitops_deploy_past_its_deadline_never_pushes() {
    let mut f = fixture().await;
    // The deploy is slow just before its push (a slow clone, a slow disk).
    f.deployer = f.deployer.with_options(DeployerOptions {
        gitops: GitOpsOptions {
            before_push: Some(std::sync::Arc::new(|_| {
                std::thread::sleep(Duration::from_millis(2500))
            })),
            ..GitOpsOptions::default()
        },
        ..DeployerOptions::default()
    });
    let before = f.repo.head();
    let cause = stage_started("banking", "late");
    let results = f.deployer.handle(&cause).await.unwrap();
    // The deploy was failed at its deadline (by the conductor, or by the
    // deployer's own timeout): never completed.
    for e in results.iter().flat_map(|b| &b.events) {
        assert_eq!(e.ty, EventName::DeployFailed.type_name(), "{e:?}");
    }
    // Long enough for the blocking thread to have pushed, had it gone on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(f.repo.head(), before, "pushed after the deadline");
    assert_eq!(f.repo.file(VALUES_PATH), crate::common::VALUES);
}

#[tokio::test]
async fn unknown_pipeline_or_stage_is_deploy_failed() {
    let f = fixture().await;
    // The run's plan, frozen when `gone` was still defined, waits for a deploy.
    let plan = RunStarted {
        run_id: RUN.into(),
        commit: COMMIT.into(),
        branch: "main".into(),
        repository: "https://git.example.com/apim/gone.git".into(),
        message: None,
        author: None,
        authors: vec![],
        trigger: Trigger::Manual,
        stages: vec![StagePlan {
            name: "test".into(),
            after: None,
            steps: vec![Step::Package, Step::Deploy],
        }],
        rollback: None,
    };
    f.ctx
        .store
        .append_many(vec![NewEvents::new(
            run_stream(RUN),
            gantry_store::ExpectedVersion::Any,
            vec![CloudEvent::new("api", "gone", Some(RUN), &plan)],
        )])
        .await
        .unwrap();
    let cause = stage_started("gone", "test");
    let failed: DeployFailed = only_event(&cause, f.deployer.handle(&cause).await.unwrap())
        .decode()
        .unwrap();
    assert!(
        failed.reason.contains("`gone` is no longer defined"),
        "{}",
        failed.reason
    );

    let cause = stage_started("banking", "removed");
    let failed: DeployFailed = only_event(&cause, f.deployer.handle(&cause).await.unwrap())
        .decode()
        .unwrap();
    assert!(
        failed.reason.contains("stage `removed`"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn gitops_without_a_digest_is_deploy_failed() {
    let f = fixture().await;
    let started = StageStarted {
        stage: "test".into(),
        commit: COMMIT.into(),
        image: None,
        digest: None,
        rollback: false,
    };
    let cause = CloudEvent::new("conductor", "banking", Some(RUN), &started);
    let failed: DeployFailed = only_event(&cause, f.deployer.handle(&cause).await.unwrap())
        .decode()
        .unwrap();
    assert!(
        failed.reason.contains("no image digest"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn other_events_and_missing_run_ids_are_permanent_errors() {
    let f = fixture().await;
    let mut cause = stage_started("banking", "test");
    cause.runid = None;
    assert!(matches!(
        f.deployer.handle(&cause).await,
        Err(gantry_store::consumer::HandlerError::Permanent { .. })
    ));
    let other = CloudEvent::new(
        "deployer",
        "banking",
        Some(RUN),
        &DeployFailed {
            stage: "test".into(),
            reason: "x".into(),
            output: None,
        },
    );
    assert!(f.deployer.handle(&other).await.is_err());
}

/// A deployer for one pipeline with declared stage variables.
async fn env_deployer(data: &Path, yaml_stages: &str) -> Deployer {
    let yaml = format!(
        r#"
name: envy
source:
  repo: https://git.example.com/apim/envy-config.git
gateway:
  format: yaml
  path: gateway/
stages:
{yaml_stages}"#
    );
    let pipeline = parse_str("envy.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut set = PipelineSet::new();
    set.insert(pipeline, None);
    Deployer::new(
        &WorkerContext::local(Pipelines::new(set), data)
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn an_unreadable_declared_secret_fails_the_deploy_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let ran = data.path().join("ran");
    let deployer = env_deployer(
        data.path(),
        &format!(
            r#"  - name: prod
    env:
      DB_PASSWORD: env:GANTRY_OUTBOUND_TEST_SURELY_UNSET_17
    deploy:
      command: ["/bin/sh", "-c", "touch {ran}"]
"#,
            ran = ran.display()
        ),
    )
    .await;
    let cause = stage_started("envy", "prod");
    let e = only_event(&cause, deployer.handle(&cause).await.unwrap());
    assert_eq!(e.ty, EventName::DeployFailed.type_name());
    let failed: DeployFailed = e.decode().unwrap();
    assert!(
        failed.reason.contains("stages[prod].env.DB_PASSWORD"),
        "{}",
        failed.reason
    );
    assert!(!ran.exists(), "the command must not run");
}

#[tokio::test]
async fn handler_is_registrable() {
    let data = tempfile::tempdir().unwrap();
    let ctx = WorkerContext::local(Pipelines::default(), data.path())
        .await
        .unwrap();
    let h = gantry_deployer::handler(&ctx);
    assert_eq!(h.name(), "deployer");
}
