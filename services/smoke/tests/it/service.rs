//! The smoke service as a consumer handler: its results are masked with the
//! stage's secrets.

use axum::routing::get;
use axum::{Json, Router};
use gantry_pipeline::{parse_str, PipelineSet};
use gantry_proto::events::{SmokeFailed, StageStarted};
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::runtime::Pipelines;
use gantry_runtime::WorkerContext;
use gantry_smoke::{RetryPolicy, Smoke};
use gantry_store::consumer::Handler;

const RUN: &str = "0192f0c4-7d2e-7c4e-9f00-000000000003";

#[tokio::test]
async fn results_are_masked_with_the_stages_declared_secrets() {
    // A gateway that gives away a backend password of the stage.
    let app = Router::new().route(
        "/config",
        get(|| async { Json(serde_json::json!({"backend_password": "stage-backend-s3cret"})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let data = tempfile::tempdir().unwrap();
    let secret = data.path().join("backend-password");
    std::fs::write(&secret, "stage-backend-s3cret\n").unwrap();
    let yaml = format!(
        r#"
name: smoky
source:
  repo: https://git.example.com/apim/smoky-config.git
gateway:
  format: yaml
  path: gateway/
stages:
  - name: test
    env:
      BACKEND_PASSWORD: file:{secret}
    smoke:
      - name: config
        request: {{ url: "http://{addr}/config" }}
        expect: {{ json: {{ /backend_password: x }} }}
        timeout: 200ms
"#,
        secret = secret.display()
    );
    let mut set = PipelineSet::new();
    set.insert(
        parse_str("smoky.yaml", &yaml).unwrap_or_else(|e| panic!("{e}")),
        None,
    );
    let ctx = WorkerContext::local(Pipelines::new(set), data.path())
        .await
        .unwrap();
    let smoke = Smoke::new(&ctx).with_retry(RetryPolicy {
        pause: std::time::Duration::from_millis(50),
    });

    let started = StageStarted {
        stage: "test".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        image: None,
        digest: None,
        rollback: false,
    };
    let cause = CloudEvent::new("conductor", "smoky", Some(RUN), &started);
    let results = smoke.handle(&cause).await.unwrap();
    let e = results.into_iter().next().unwrap().events.remove(0);
    assert_eq!(e.ty, EventName::SmokeFailed.type_name());
    let failed: SmokeFailed = e.decode().unwrap();
    let message = failed.checks[0].message.clone().unwrap();
    assert!(
        message.contains("/backend_password is \"***\""),
        "{message}"
    );
    assert!(!e.data.to_string().contains("s3cret"), "{}", e.data);
}
