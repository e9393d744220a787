//! The whole way: a signed push becomes a package, an image in a real
//! registry, a gitops commit in a real deploy repository, a ready gateway
//! and passing smoke checks, then `env.promoted` on `test`; `prod` waits for
//! two release managers, refusing the commit's author and an outsider; a
//! later commit whose smoke check fails on `test` is rolled back, and the
//! deploy repository's history shows every step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use axum::routing::get;
use gantry_tests::{GitRepo, Registry};
use serde_json::json;

/// (token, user, email, groups); `dev1` is the commit's author.
const TOKENS: &[(&str, &str, &str, &str)] = &[
    ("tok-rita", "rita", "rita@example.com", "[release-managers]"),
    ("tok-sam", "sam", "sam@example.com", "[release-managers]"),
    ("tok-dev", "dev1", "dev@example.com", "[release-managers]"),
    ("tok-out", "olga", "olga@example.com", "[developers]"),
];
const RITA: Option<&str> = Some("tok-rita");

const VALUES: &str = "# Helm values for the test environment\napitraffic:\n  replicas: 2  # keep two\n  image: registry.example.com/apim/banking-gateway:old\nanm:\n  image: unchanged\n";

#[tokio::test]
async fn push_promotes_test_then_prod_after_two_approvals_and_a_failing_commit_rolls_back() {
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;

    // The deploy repository (bare, as on a forge), seeded with Helm values.
    let deploy = seeded_deploy_repo(&[
        ("envs/test/values.yaml", VALUES),
        ("envs/prod/values.yaml", VALUES),
    ]);

    // The gateway stand-in: ready, and serving pets until told otherwise.
    let serving = Arc::new(AtomicBool::new(true));
    let flag = serving.clone();
    let app = axum::Router::new()
        .route("/healthcheck", get(|| async { "ok" }))
        .route(
            "/pets",
            get(move || {
                let ok = flag.load(Ordering::SeqCst);
                async move {
                    if ok {
                        axum::Json(json!([{ "id": 1 }]))
                    } else {
                        axum::Json(json!([]))
                    }
                }
            }),
        );
    let gw = serve_http(app).await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let commit = repo.commit("config").unwrap();

    let dir = pipelines_dir("banking", &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/healthcheck, timeout: 10s }}\n\
             \x20   smoke:\n      - name: pets are listed\n        request: {{ url: http://{gw}/pets }}\n        expect: {{ status: 200, json: {{ \"/0/id\": 1 }} }}\n        timeout: 2s\n\
             \x20 - name: prod\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/prod/values.yaml, key: apitraffic.image }}\n\
             \x20   approval: {{ required: 2, approvers: [release-managers], allow_self: false }}\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
        ));
    let tokens_path = write_api_tokens(dir.path(), TOKENS);
    let mut gantry =
        Gantry::start(dir.path(), &["up"], &[("GANTRY_API_TOKENS", &tokens_path)]).await;
    gantry.watch(registry.storage_dir());
    gantry.watch(deploy.path());
    let base = gantry.url();
    let http = reqwest::Client::new();
    let approve = |token: &'static str, run: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/api/v1/runs/{run}/stages/prod/approve"))
                .bearer_auth(token)
                .json(&json!({ "comment": "looks good" }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    let run = push_local_commit(
        &base,
        &repo,
        &commit,
        json!({ "name": "Dev", "email": "dev@example.com", "username": "dev1" }),
    )
    .await;

    // test promotes by itself; prod waits for two release managers.
    let view = wait_stage_status(
        &base,
        RITA,
        &run,
        ("prod", "awaiting_approval"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(view["stages"][0]["status"], "promoted", "{view}");
    assert_eq!(view["stages"][1]["waiting"]["required"], 2, "{view}");
    assert_eq!(
        approve("tok-dev", run.clone()).await,
        403,
        "the author may not approve"
    );
    assert_eq!(
        approve("tok-out", run.clone()).await,
        403,
        "an outsider may not approve"
    );
    assert_eq!(approve("tok-rita", run.clone()).await, 201);
    let view = get_json_as(&base, RITA, &format!("/api/v1/runs/{run}")).await;
    assert_eq!(
        view["stages"][1]["status"], "awaiting_approval",
        "one of two: {view}"
    );
    assert_eq!(approve("tok-sam", run.clone()).await, 201);

    let view = wait_run_ended_as(&base, RITA, &run, Duration::from_secs(60), || {
        gantry.log_text()
    })
    .await;
    let events = get_json_as(&base, RITA, &format!("/api/v1/runs/{run}/events")).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{events:#}");
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("io.gantry.")
                .trim_end_matches(".v1")
        })
        .collect();
    for step in [
        "package.built",
        "image.pushed",
        "stage.started",
        "deploy.completed",
        "smoke.passed",
        "env.promoted",
        "run.succeeded",
    ] {
        assert!(names.contains(&step), "{step} missing from {names:?}");
    }
    let of_stage = |ty: &str, stage: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == ty && e["data"]["stage"] == stage)
            .unwrap_or_else(|| panic!("no {ty} for {stage}"))
            .clone()
    };
    let digest_of = |stage: &str| {
        of_stage("io.gantry.image.pushed.v1", stage)["data"]["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (digest, prod_digest) = (digest_of("test"), digest_of("prod"));
    let digest = digest.as_str();
    let deployed = of_stage("io.gantry.deploy.completed.v1", "test");
    let revision = deployed["data"]["revision"].as_str().unwrap();
    let granted: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "io.gantry.approval.granted.v1")
        .map(|e| e["data"]["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        granted,
        ["rita", "sam"],
        "refused approvals are not recorded"
    );

    // The deploy repository's history shows the step, and only the one line changed.
    let log = deploy.git(["log", "--format=%H %s", "main"]).unwrap();
    let line = log
        .lines()
        .find(|l| l.starts_with(revision))
        .unwrap_or_else(|| panic!("{revision} not in {log}"));
    assert!(
        line.contains(&format!(
            "deploy test: {}/apim/banking-gateway@{digest}",
            registry.host_port()
        )),
        "{log}"
    );
    let file = deploy.git(["show", "main:envs/test/values.yaml"]).unwrap();
    let expected = VALUES.replace(
        "registry.example.com/apim/banking-gateway:old",
        &format!("{}/apim/banking-gateway@{digest}", registry.host_port()),
    );
    assert_eq!(
        file.trim_end(),
        expected.trim_end(),
        "comments and order kept"
    );

    // A later commit whose smoke check fails: deployed, checked, then the
    // stage goes back to the first image, through the same gitops path.
    serving.store(false, Ordering::SeqCst);
    repo.write("gateway/values.yaml", "---\nbroken: true\n")
        .unwrap();
    let later = repo.commit("later").unwrap();
    let run2 = trigger_run(&base, Some("tok-rita"), "banking", &later).await;
    let view2 = wait_run_ended_as(&base, RITA, &run2, Duration::from_secs(60), || {
        gantry.log_text()
    })
    .await;
    assert_eq!(view2["status"], "failed", "{view2}");
    let events2 = get_json_as(&base, RITA, &format!("/api/v1/runs/{run2}/events")).await;
    let events2 = events2.as_array().unwrap();
    let later_digest = events2
        .iter()
        .find(|e| e["type"] == "io.gantry.image.pushed.v1" && e["data"]["stage"] == "test")
        .unwrap()["data"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let rolled = events2
        .iter()
        .find(|e| e["type"] == "io.gantry.stage.rolled_back.v1")
        .unwrap();
    assert_eq!(rolled["data"]["to_run"], run.as_str());
    let smoke = events2
        .iter()
        .find(|e| e["type"] == "io.gantry.smoke.failed.v1")
        .unwrap();
    assert!(
        smoke["data"]["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/0/id"),
        "{smoke}"
    );

    // The deploy repository shows each step: first release in test and
    // prod, later release in test, rollback of test.
    let log = deploy.git(["log", "--format=%s", "main"]).unwrap();
    let subjects: Vec<&str> = log.lines().collect();
    let image = format!("{}/apim/banking-gateway", registry.host_port());
    assert_eq!(
        subjects,
        [
            format!("deploy test: {image}@{digest}").as_str(),
            format!("deploy test: {image}@{later_digest}").as_str(),
            format!("deploy prod: {image}@{prod_digest}").as_str(),
            format!("deploy test: {image}@{digest}").as_str(),
            "seed",
        ],
        "{log}"
    );
    let file = deploy.git(["show", "main:envs/test/values.yaml"]).unwrap();
    assert_eq!(
        file.trim_end(),
        expected.trim_end(),
        "back to the first release"
    );
    let pipeline = get_json_as(&base, RITA, "/api/v1/pipelines/banking").await;
    assert_eq!(
        pipeline["stages"][0]["current"]["run_id"],
        run.as_str(),
        "{pipeline}"
    );
}
