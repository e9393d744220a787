//! Every service as its own process over Postgres and NATS, each in its own
//! working directory and data dir (as on separate machines: packages reach
//! imagebuild through NATS only): a push goes all the way to `env.promoted`
//! while the deployer and the conductor are killed and restarted mid-run;
//! the run still finishes, nothing is deployed twice, and the `apim`
//! service promotes the API into API Manager exactly once.

mod common;

use std::time::Duration;

use axum::routing::get;
use common::*;
use gantry_tests::apimanager::ApiManagerDouble;
use gantry_tests::{fresh_postgres, GitRepo, NatsServer, Registry};
use serde_json::{json, Value};

async fn wait_for_event(api: &str, run: &str, ty: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = reqwest::get(format!("{api}/api/v1/runs/{run}/events"))
            .await
            .unwrap();
        let events: Value = events.json().await.unwrap_or(Value::Null);
        if events
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["type"] == ty))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {ty} for {run}: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn separate_processes_finish_the_run_through_kills_without_deploying_twice() {
    let db = fresh_postgres().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;

    let deploy = seeded_deploy_repo(&[(
        "envs/test/values.yaml",
        "apitraffic:\n  image: none  # set by Gantry\n",
    )]);

    let app = axum::Router::new()
        .route("/healthcheck", get(|| async { "ok" }))
        .route("/pets", get(|| async { axum::Json(json!([{ "id": 1 }])) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let apim = ApiManagerDouble::start().await.unwrap();
    apim.add_organization("API Development");

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    repo.write(
        "apis/petstore/petstore.json",
        std::fs::read_to_string(fixture("apim-cli/examples/petstore.json")).unwrap(),
    )
    .unwrap();
    repo.write(
        "apis/petstore/api-config.json",
        json!({
            "name": "Petstore", "path": "/petstore/v1", "state": "published",
            "organization": "API Development",
            "apiSpecification": { "resource": "petstore.json" }
        })
        .to_string(),
    )
    .unwrap();
    let commit = repo.commit("config").unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("pipelines/banking.yaml"),
        format!(
            "name: banking\nsource:\n  repo: {repo}\n  branch: main\n  webhook_secret: env:E2E_WEBHOOK_SECRET\n\
             gateway:\n  format: yaml\n  path: gateway/\napis:\n  path: apis/\n\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/healthcheck, timeout: 10s }}\n\
             \x20   apimanager: {{ url: \"{apim}\", username: env:APIM_USER, password: env:APIM_PASS }}\n\
             \x20   smoke:\n      - name: pets\n        request: {{ url: http://{gw}/pets }}\n        timeout: 5s\n",
            repo = repo.path().display(),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
            apim = apim.url(),
        ),
    )
    .unwrap();

    let prefix = gantry_tests::unique_name("flow");
    let env = [
        ("GANTRY_DATABASE_URL", db.url()),
        ("GANTRY_NATS_URL", &nats.url()),
        ("GANTRY_NATS_PREFIX", &prefix),
        ("APIM_USER", "apiadmin"),
        ("APIM_PASS", "changeme"),
    ];
    let webhook = Gantry::start_alone(dir.path(), &["serve", "webhook"], &env).await;
    let api = Gantry::start_alone(dir.path(), &["serve", "api"], &env).await;
    let mut conductor = Gantry::start_alone(dir.path(), &["serve", "conductor"], &env).await;
    let _envgen = Gantry::start_alone(dir.path(), &["serve", "envgen"], &env).await;
    let _imagebuild = Gantry::start_alone(dir.path(), &["serve", "imagebuild"], &env).await;
    let mut deployer = Gantry::start_alone(dir.path(), &["serve", "deployer"], &env).await;
    let _smoke = Gantry::start_alone(dir.path(), &["serve", "smoke"], &env).await;
    let _apim = Gantry::start_alone(dir.path(), &["serve", "apim"], &env).await;

    let run = push_local_commit(
        &webhook.url(),
        &repo,
        &commit,
        json!({ "name": "Dev", "email": "dev@example.com" }),
    )
    .await;

    // Kill the deployer as soon as the promotion starts, and the conductor
    // right after; both come back.
    wait_for_event(&api.url(), &run, "io.gantry.stage.started.v1").await;
    deployer.restart().await;
    conductor.restart().await;

    let view = wait_run_ended(&api.url(), &run, Duration::from_secs(90), || {
        deployer.log_text()
    })
    .await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let events = get_json(&api.url(), &format!("/api/v1/runs/{run}/events")).await;
    let count = |ty: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == ty)
            .count()
    };
    assert_eq!(count("io.gantry.deploy.completed.v1"), 1);
    assert_eq!(count("io.gantry.env.promoted.v1"), 1);
    assert_eq!(count("io.gantry.stage.started.v1"), 1);
    assert_eq!(count("io.gantry.apis.promoted.v1"), 1);
    assert_eq!(apim.proxies().len(), 1, "the API was created once");
    assert_eq!(apim.proxies()[0]["state"], "published");
    let log = deploy.git(["log", "--format=%s", "main"]).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("deploy test:"))
            .count(),
        1,
        "deployed once: {log}"
    );
}
