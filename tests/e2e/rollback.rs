//! `gantry rollback`: a stage goes back to an earlier release through the
//! same gitops deploy, readiness and smoke steps, as a run of its own.

use std::time::Duration;

use crate::common::*;
use axum::routing::get;
use gantry_tests::{GitRepo, Registry};
use serde_json::{json, Value};

const VALUES: &str = "# test environment\napitraffic:\n  image: registry.example.com/apim/banking-gateway:old  # set by Gantry\n";

fn type_names(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("io.gantry.")
                .trim_end_matches(".v1")
                .to_owned()
        })
        .collect()
}

fn find<'a>(events: &'a Value, name: &str) -> &'a Value {
    events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == format!("io.gantry.{name}.v1"))
        .unwrap_or_else(|| panic!("no {name} in {events:#}"))
}

#[tokio::test]
async fn rollback_redeploys_an_earlier_release_through_gitops_and_smoke() {
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let deploy = seeded_deploy_repo(&[("envs/test/values.yaml", VALUES)]);

    let app = axum::Router::new().route("/healthcheck", get(|| async { "ok" }));
    let gw = serve_http(app).await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();

    let dir = pipelines_dir("banking", &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/healthcheck, timeout: 10s }}\n\
             \x20   smoke:\n      - name: gateway is healthy\n        request: {{ url: http://{gw}/healthcheck }}\n        timeout: 2s\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
        ));
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    gantry.watch(registry.storage_dir());
    gantry.watch(deploy.path());
    let base = gantry.url();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .current_dir(dir.path())
            .env("GANTRY_SERVER", &base)
            .output()
            .expect("run gantry")
    };

    // Nothing to go back to yet.
    let out = cli(&["rollback", "banking", "test"]);
    assert_eq!(out.status.code(), Some(1));

    let author = json!({ "name": "Dev", "email": "dev@example.com" });
    let run1 = push_local_commit(&base, &repo, &first, author.clone()).await;
    let view = wait_run_ended(&base, &run1, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    repo.write("gateway/values.yaml", "---\nsecond: true\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let run2 = push_local_commit(&base, &repo, &second, author).await;
    let view = wait_run_ended(&base, &run2, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let digest = |run: &str| {
        let base = base.clone();
        let run = run.to_owned();
        async move {
            let events = get_json(&base, &format!("/api/v1/runs/{run}/events")).await;
            find(&events, "image.pushed")["data"]["digest"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (digest1, digest2) = (digest(&run1).await, digest(&run2).await);
    assert_ne!(digest1, digest2);

    // A run that never promoted the stage is not a release of it.
    let out = cli(&["rollback", "banking", "test", "--to", "no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never promoted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cli(&[
        "rollback",
        "banking",
        "test",
        "--reason",
        "errors after the release",
        "--output",
        "json",
    ]);
    let started: Value = serde_json::from_slice(&stdout_of(out)).unwrap();
    assert_eq!(started["created"], true);
    assert_eq!(started["commit"], first.as_str());
    let rb = started["run_id"].as_str().unwrap().to_owned();
    let view = wait_run_ended(&base, &rb, Duration::from_secs(60), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{rb}/events")).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{events:#}");
    assert_eq!(view["trigger"], "rollback", "{view}");
    let names = type_names(&events);
    assert_eq!(
        names,
        [
            "run.started",
            "stage.started",
            "deploy.completed",
            "smoke.passed",
            "env.promoted",
            "stage.rolled_back",
            "run.succeeded"
        ],
        "nothing is rebuilt; every step of the stage runs"
    );
    assert_eq!(
        find(&events, "stage.started")["data"]["digest"],
        digest1.as_str()
    );
    let rolled = find(&events, "stage.rolled_back");
    assert_eq!(rolled["data"]["to_run"], run1.as_str());
    assert!(
        rolled["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("errors after the release"),
        "{rolled}"
    );

    // The deploy repository shows each step, and the stage runs the first release.
    let log = deploy.git(["log", "--format=%s", "main"]).unwrap();
    let image = format!("{}/apim/banking-gateway", registry.host_port());
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(
        subjects,
        [
            format!("deploy test: {image}@{digest1}").as_str(),
            format!("deploy test: {image}@{digest2}").as_str(),
            format!("deploy test: {image}@{digest1}").as_str(),
            "seed",
        ],
        "{log}"
    );
    let pipeline = get_json(&base, "/api/v1/pipelines/banking").await;
    assert_eq!(
        pipeline["stages"][0]["current"]["run_id"],
        run1.as_str(),
        "{pipeline}"
    );
    assert_eq!(pipeline["stages"][0]["current"]["digest"], digest1.as_str());

    // Forward again, to the second release, by naming it.
    let resp = reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/pipelines/banking/stages/test/rollback"
        ))
        .json(&json!({ "to": run2, "reason": "fixed upstream" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let rb2 = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = wait_run_ended(&base, &rb2, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let file = deploy.git(["show", "main:envs/test/values.yaml"]).unwrap();
    assert!(
        file.contains(&format!("{image}@{digest2}  # set by Gantry")),
        "{file}"
    );
    // Asking for what already runs is a conflict.
    let resp = reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/pipelines/banking/stages/test/rollback"
        ))
        .json(&json!({ "to": run2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
}
