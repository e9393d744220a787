//! The `apim` service as a consumer handler: which events start a
//! promotion, and how bad input and an unreachable or refusing API Manager
//! end up as `apis.failed` with a reason that names the file and field (and
//! never a secret), without writing anything to API Manager.

use crate::support::sqlite_store;
use gantry_apim::Apim;
use gantry_pipeline::{parse_str, PipelineSet};
use gantry_proto::events::{ApisFailed, ApisPromoted, DeployCompleted, StageStarted};
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::runtime::Pipelines;
use gantry_store::consumer::Handler;
use gantry_store::{EventStore, ExpectedVersion};
use gantry_tests::apimanager::ApiManagerDouble;
use gantry_tests::{free_port, GitRepo};
use serde_json::json;

const RUN: &str = "0192f0c4-7d2e-7c4e-9f00-00000000a001";
const SECRET: &str = "s3cret-backend-password-value";

struct Fixture {
    apim: Apim,
    store: EventStore,
    repo: GitRepo,
    double: ApiManagerDouble,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Stages: `test` (no deploy: promotes at stage.started), `deployed`
/// (after its deploy), `plain` (no apimanager), `down` (an API Manager
/// nobody listens on), `wrongpw` (a password API Manager refuses).
async fn fixture() -> Fixture {
    // Each test process sets the same values; the double checks them.
    std::env::set_var("APIM_SVC_USER", "apiadmin");
    std::env::set_var("APIM_SVC_PASS", "changeme");
    std::env::set_var("APIM_SVC_WRONG", "not-the-password");
    std::env::set_var("BACKEND_PASSWORD", SECRET);
    let double = ApiManagerDouble::start().await.unwrap();
    double.add_organization("API Development");
    let repo = GitRepo::init().unwrap();
    let yaml = format!(
        r#"
name: banking
source:
  repo: {repo}
gateway:
  format: yaml
  path: gateway/
apis:
  path: apis/
stages:
  - name: test
    apimanager: {{ url: "{url}", username: env:APIM_SVC_USER, password: env:APIM_SVC_PASS }}
    env: {{ BACKEND_PASSWORD: env:BACKEND_PASSWORD }}
  - name: deployed
    deploy: {{ command: ["/bin/true"] }}
    apimanager: {{ url: "{url}", username: env:APIM_SVC_USER, password: env:APIM_SVC_PASS }}
    env: {{ BACKEND_PASSWORD: env:BACKEND_PASSWORD }}
  - name: plain
  - name: down
    apimanager: {{ url: "http://127.0.0.1:{closed}", username: env:APIM_SVC_USER, password: env:APIM_SVC_PASS }}
    env: {{ BACKEND_PASSWORD: env:BACKEND_PASSWORD }}
  - name: wrongpw
    apimanager: {{ url: "{url}", username: env:APIM_SVC_USER, password: env:APIM_SVC_WRONG }}
    env: {{ BACKEND_PASSWORD: env:BACKEND_PASSWORD }}
"#,
        repo = repo.path().display(),
        url = double.url(),
        closed = free_port(),
    );
    let pipeline = parse_str("banking.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut set = PipelineSet::new();
    set.insert(pipeline, None);
    let (store, store_dir) = sqlite_store().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let apim = Apim::new(&gantry_runtime::WorkerContext::new(
        store.clone(),
        Pipelines::new(set),
        gantry_store::packages::PackageStore::local(data.path()),
        data.path(),
    ));
    Fixture {
        apim,
        store,
        repo,
        double,
        _dirs: (store_dir, data),
    }
}

fn api_config(path: &str) -> String {
    json!({
        "name": "Petstore",
        "path": path,
        "state": "published",
        "organization": "API Development",
        "summary": "backend password is ${BACKEND_PASSWORD}",
        "apiSpecification": { "resource": "petstore.json" }
    })
    .to_string()
}

fn commit_config(repo: &GitRepo, config: &str) -> String {
    let spec = gantry_tests::wiremock::default_fixture_dir().join("../examples/petstore.json");
    repo.write("apis/petstore/petstore.json", std::fs::read(spec).unwrap())
        .unwrap();
    repo.write("apis/petstore/api-config.json", config).unwrap();
    repo.commit("config").unwrap()
}

fn started(stage: &str, commit: &str) -> CloudEvent {
    CloudEvent::new(
        "conductor",
        "banking",
        Some(RUN),
        &StageStarted {
            stage: stage.into(),
            commit: commit.into(),
            image: None,
            digest: None,
            rollback: false,
        },
    )
}

/// Handles `event`; the one event it answers with, if any.
async fn answer(f: &Fixture, event: &CloudEvent) -> Option<CloudEvent> {
    let mut out = f.apim.handle(event).await.unwrap();
    assert!(out.len() <= 1, "{out:?}");
    let batch = out.pop()?;
    assert_eq!(batch.stream_id, format!("run-{RUN}"));
    assert!(matches!(batch.expected, ExpectedVersion::Any));
    let mut events = batch.events;
    assert_eq!(events.len(), 1);
    let e = events.remove(0);
    assert_eq!(e.causationid, Some(event.id));
    Some(e)
}

fn failed(e: &CloudEvent) -> ApisFailed {
    assert_eq!(e.name(), Some(EventName::ApisFailed), "{e:?}");
    let f: ApisFailed = e.decode().unwrap();
    assert!(!e.data.to_string().contains(SECRET), "a secret in {e:?}");
    assert!(
        !e.data.to_string().contains("changeme"),
        "a secret in {e:?}"
    );
    f
}

#[tokio::test]
async fn a_stage_without_deploy_promotes_at_stage_started_and_others_after_their_deploy() {
    let f = fixture().await;
    let commit = commit_config(&f.repo, &api_config("/petstore/v1"));

    let e = answer(&f, &started("test", &commit))
        .await
        .expect("an answer");
    assert_eq!(e.name(), Some(EventName::ApisPromoted), "{e:?}");
    let promoted: ApisPromoted = e.decode().unwrap();
    assert_eq!(promoted.stage, "test");
    assert!(promoted.changes.iter().any(|c| c.action == "create"));
    assert!(!e.data.to_string().contains(SECRET), "field names only");
    assert_eq!(
        f.double.proxies()[0]["summary"],
        format!("backend password is {SECRET}"),
        "the value reached API Manager"
    );

    // A stage with a deploy waits for it: stage.started says nothing...
    assert!(answer(&f, &started("deployed", &commit)).await.is_none());
    // ...deploy.completed promotes the commit its stage.started named.
    f.store
        .append(
            &format!("run-{RUN}"),
            ExpectedVersion::Any,
            vec![started("deployed", &commit)],
        )
        .await
        .unwrap();
    let deployed = CloudEvent::new(
        "deployer",
        "banking",
        Some(RUN),
        &DeployCompleted {
            stage: "deployed".into(),
            image: None,
            digest: None,
            revision: None,
            output: None,
            duration_ms: 1,
        },
    );
    let e = answer(&f, &deployed).await.expect("an answer");
    let promoted: ApisPromoted = e.decode().unwrap();
    assert_eq!(promoted.stage, "deployed");
    assert_eq!(
        promoted.changes,
        vec![],
        "the same API Manager holds it already"
    );

    // No apimanager: nothing to do.
    assert!(answer(&f, &started("plain", &commit)).await.is_none());
}

#[tokio::test]
async fn bad_configuration_fails_naming_file_and_field_and_writes_nothing() {
    let f = fixture().await;
    let commit = commit_config(&f.repo, &api_config("petstore/v1"));
    let e = answer(&f, &started("test", &commit))
        .await
        .expect("an answer");
    let reason = failed(&e).reason;
    assert!(
        reason.contains("apis/petstore/api-config.json") && reason.contains("path"),
        "{reason}"
    );
    assert!(
        f.double.requests().is_empty(),
        "API Manager was not even asked"
    );

    let commit = commit_config(
        &f.repo,
        &api_config("/petstore/v1").replace("${BACKEND_PASSWORD}", "${NO_SUCH_VARIABLE}"),
    );
    let reason = failed(&answer(&f, &started("test", &commit)).await.unwrap()).reason;
    assert!(reason.contains("NO_SUCH_VARIABLE"), "{reason}");
    assert!(f.double.requests().is_empty());
}

#[tokio::test]
async fn an_unreachable_or_refusing_api_manager_is_a_clear_failure() {
    let f = fixture().await;
    let commit = commit_config(&f.repo, &api_config("/petstore/v1"));
    let reason = failed(&answer(&f, &started("down", &commit)).await.unwrap()).reason;
    assert!(reason.contains("127.0.0.1"), "names where: {reason}");

    let reason = failed(&answer(&f, &started("wrongpw", &commit)).await.unwrap()).reason;
    // The user name comes from a secret reference: masked like the password.
    assert!(reason.contains("refused user ***"), "{reason}");
    assert!(!reason.contains("not-the-password"), "{reason}");
    assert!(f.double.write_calls().is_empty());
}
