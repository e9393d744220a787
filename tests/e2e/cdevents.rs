//! CDEvents (DESIGN.md 1.9) as a consumer sees them: real promotions,
//! upgrades, a rollback by hand and one after a failed smoke check; every
//! CDEvent on `GET /api/v1/events?format=cdevents` and on NATS validates
//! against the spec's own JSON schemas (vendored in `tests/cdevents/`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use gantry_tests::{GitRepo, Registry};
use serde_json::{json, Value};

const VALUES: &str = "apitraffic:\n  image: registry.example.com/apim/gw:old  # set by Gantry\n";
const SPEC: &str = "0.5.1";

/// The spec's schemas, compiled once, by CDEvent type.
pub(crate) struct CdeventSchemas {
    schemas: boon::Schemas,
    by_type: BTreeMap<String, boon::SchemaIndex>,
}

impl CdeventSchemas {
    pub(crate) fn load() -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/cdevents")
            .join(SPEC);
        let mut compiler = boon::Compiler::new();
        compiler.enable_format_assertions();
        let read = |path: &std::path::Path| -> Value {
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        };
        for entry in std::fs::read_dir(dir.join("links")).unwrap() {
            let schema = read(&entry.unwrap().path());
            let id = schema["$id"].as_str().unwrap().to_owned();
            compiler.add_resource(&id, schema).unwrap();
        }
        let mut schemas = boon::Schemas::new();
        let mut by_type = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let schema = read(&path);
            let id = schema["$id"].as_str().unwrap().to_owned();
            let ty = schema["properties"]["context"]["properties"]["type"]["enum"][0]
                .as_str()
                .unwrap()
                .to_owned();
            compiler.add_resource(&id, schema).unwrap();
            let index = compiler.compile(&id, &mut schemas).unwrap();
            by_type.insert(ty, index);
        }
        assert_eq!(
            by_type.len(),
            10,
            "one schema per CDEvent type Gantry emits"
        );
        Self { schemas, by_type }
    }

    /// Validates `event` against the schema of its own `context.type`.
    pub(crate) fn validate(&self, event: &Value) {
        let ty = event["context"]["type"].as_str().expect("context.type");
        let index = self
            .by_type
            .get(ty)
            .unwrap_or_else(|| panic!("no vendored schema for {ty}"));
        if let Err(e) = self.schemas.validate(event, *index) {
            panic!("{ty} does not validate: {e:#}\n{event:#}");
        }
    }
}

fn short(ty: &str) -> &str {
    ty.trim_start_matches("dev.cdevents.")
        .trim_end_matches(".0.3.0")
}

#[test]
fn the_validator_refuses_what_the_spec_refuses() {
    let schemas = CdeventSchemas::load();
    let good = json!({
        "context": {
            "specversion": SPEC, "id": "1", "source": "https://gantry.example.com",
            "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": "2026-12-07T10:00:00Z",
        },
        "subject": { "id": "banking", "content": {
            "environment": { "id": "prod" }, "artifactId": "pkg:oci/gw@sha256:00",
        }},
    });
    schemas.validate(&good);
    let index = schemas.by_type["dev.cdevents.service.deployed.0.3.0"];
    let mut no_artifact = good.clone();
    no_artifact["subject"]["content"]
        .as_object_mut()
        .unwrap()
        .remove("artifactId");
    assert!(
        schemas.schemas.validate(&no_artifact, index).is_err(),
        "required fields are required"
    );
    let mut bad_time = good.clone();
    bad_time["context"]["timestamp"] = json!("yesterday");
    assert!(
        schemas.schemas.validate(&bad_time, index).is_err(),
        "formats are asserted"
    );
}

#[tokio::test]
async fn promotions_are_cdevents_on_sse_and_nats_that_validate_against_the_spec() {
    let schemas = CdeventSchemas::load();
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let deploy = seeded_deploy_repo(&[("envs/test/values.yaml", VALUES)]);
    // The gateway's smoke check answers 200 until the test breaks it.
    let healthy = Arc::new(AtomicBool::new(true));
    let state = healthy.clone();
    let app = axum::Router::new()
        .route("/ready", get(|| async { "ok" }))
        .route(
            "/healthcheck",
            get(move || {
                let state = state.clone();
                async move {
                    if state.load(Ordering::SeqCst) {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        );
    let gw = serve_http(app).await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/ready, timeout: 10s }}\n\
             \x20   smoke:\n      - name: gateway is healthy\n        request: {{ url: http://{gw}/healthcheck }}\n        timeout: 2s\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
        ),
    );
    let prefix = gantry_tests::unique_name("cde");
    let stream = prefix.to_uppercase();
    let nats_url = gantry_tests::shared_nats_url();
    let client = async_nats::connect(&nats_url).await.unwrap();
    let mut on_nats = client
        .subscribe(format!("{prefix}.cdevents.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let gantry = Gantry::start(
        dir.path(),
        &["up"],
        &[
            ("GANTRY_NATS_URL", &nats_url),
            ("GANTRY_NATS_PREFIX", &prefix),
            ("GANTRY_NATS_STREAM", &stream),
            ("GANTRY_PUBLIC_URL", "https://gantry.example.com/"),
        ],
    )
    .await;
    let base = gantry.url();
    let author = json!({ "name": "Dev", "email": "dev@example.com" });
    let mut runs = Vec::new();
    for (n, healthy_now) in [(1, true), (2, true)] {
        healthy.store(healthy_now, Ordering::SeqCst);
        repo.write("gateway/values.yaml", format!("---\nn: {n}\n"))
            .unwrap();
        let commit = repo.commit(&format!("change {n}")).unwrap();
        let run = push_local_commit(&base, &repo, &commit, author.clone()).await;
        let view = wait_run_ended(&base, &run, Duration::from_secs(60), || gantry.log_text()).await;
        assert_eq!(view["status"], "succeeded", "{view}");
        runs.push(run);
    }
    // Back to the first release by hand.
    let resp = reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/pipelines/banking/stages/test/rollback"
        ))
        .json(&json!({ "to": runs[0], "reason": "errors after the release" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let rollback = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = wait_run_ended(&base, &rollback, Duration::from_secs(60), || {
        gantry.log_text()
    })
    .await;
    assert_eq!(view["status"], "succeeded", "{view}");
    // A release whose smoke check fails is rolled back automatically.
    healthy.store(false, Ordering::SeqCst);
    repo.write("gateway/values.yaml", "---\nn: 3\n").unwrap();
    let commit = repo.commit("change 3").unwrap();
    let failing = push_local_commit(&base, &repo, &commit, author).await;
    let view = wait_run_ended(&base, &failing, Duration::from_secs(60), || {
        gantry.log_text()
    })
    .await;
    assert_eq!(view["status"], "failed", "{view}");

    // Everything so far, as CDEvents on SSE.
    let sse = read_sse(
        &base,
        "?format=cdevents&follow=false&pipeline=banking",
        |_| false,
    )
    .await;
    let events: Vec<Value> = sse.iter().map(|(_, e)| e.clone()).collect();
    for event in &events {
        schemas.validate(event);
        assert_eq!(event["context"]["specversion"], SPEC);
        assert_eq!(event["context"]["source"], "https://gantry.example.com");
    }
    let count = |ty: &str| {
        events
            .iter()
            .filter(|e| short(e["context"]["type"].as_str().unwrap()) == ty)
            .count()
    };
    let summary: BTreeMap<String, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(short(e["context"]["type"].as_str().unwrap()).to_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(count("change.merged"), 3, "{summary:?}");
    assert_eq!(count("pipelinerun.queued"), 3, "{summary:?}");
    assert_eq!(count("pipelinerun.started"), 4, "{summary:?}");
    assert_eq!(count("pipelinerun.finished"), 4, "{summary:?}");
    assert_eq!(count("artifact.packaged"), 3, "{summary:?}");
    assert_eq!(count("artifact.published"), 3, "{summary:?}");
    assert_eq!(
        count("service.deployed"),
        1,
        "the stage's first release: {summary:?}"
    );
    assert_eq!(count("service.upgraded"), 1, "{summary:?}");
    assert_eq!(
        count("service.rolledback"),
        2,
        "by hand and after the failed smoke check, once each: {summary:?}"
    );
    assert_eq!(count("testsuiterun.finished"), 4, "{summary:?}");

    let of_type = |ty: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| short(e["context"]["type"].as_str().unwrap()) == ty)
            .collect()
    };
    let outcomes: Vec<&str> = of_type("pipelinerun.finished")
        .iter()
        .map(|e| e["subject"]["content"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "success", "success", "failure"]);
    let started = of_type("pipelinerun.started");
    assert_eq!(
        started[0]["subject"]["content"]["uri"],
        format!("https://gantry.example.com/runs/{}", runs[0])
    );
    let deployed = &of_type("service.deployed")[0]["subject"]["content"];
    assert_eq!(deployed["environment"]["id"], "test");
    let published = of_type("artifact.published");
    let first_image = published[0]["subject"]["id"].as_str().unwrap();
    assert!(
        first_image.starts_with("pkg:oci/banking-gateway@sha256:"),
        "{first_image}"
    );
    // The purl of the image without its tag is what the stage runs.
    let first_release = first_image.split("&tag=").next().unwrap();
    assert_eq!(deployed["artifactId"], first_release);
    for rolled in of_type("service.rolledback") {
        assert_eq!(
            rolled["subject"]["content"]["artifactId"], first_release,
            "both rollbacks went back to the first release: {rolled}"
        );
    }
    let tests: Vec<&str> = of_type("testsuiterun.finished")
        .iter()
        .map(|e| e["subject"]["content"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["success", "success", "success", "failure"]);

    // The same CDEvents on NATS, with their CloudEvents headers, and kept
    // in the CDEvents stream.
    let want: BTreeSet<String> = events
        .iter()
        .map(|e| e["context"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(want.len(), events.len(), "CDEvent ids are unique");
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), on_nats.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {} CDEvents on NATS", got.len(), want.len()))
            .unwrap();
        let event: Value = serde_json::from_slice(&msg.payload).unwrap();
        schemas.validate(&event);
        let ty = event["context"]["type"].as_str().unwrap();
        assert_eq!(msg.subject.as_str(), format!("{prefix}.cdevents.{ty}"));
        let headers = msg.headers.as_ref().expect("CloudEvents headers");
        assert_eq!(headers.get("ce-type").map(|v| v.as_str()), Some(ty));
        assert_eq!(
            headers.get("ce-id").map(|v| v.as_str()),
            event["context"]["id"].as_str()
        );
        assert_eq!(
            headers.get("ce-specversion").map(|v| v.as_str()),
            Some("1.0")
        );
        got.insert(event["context"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, want, "NATS and SSE carry the same CDEvents");
    let js = async_nats::jetstream::new(client);
    let mut kept = js
        .get_stream(format!("{stream}_CDEVENTS"))
        .await
        .expect("the CDEvents stream");
    let info = kept.info().await.unwrap();
    assert_eq!(info.state.messages as usize, want.len());
    js.delete_stream(format!("{stream}_CDEVENTS")).await.ok();
    js.delete_stream(&stream).await.ok();
}
