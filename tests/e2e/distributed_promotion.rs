//! Every service as its own process, as on separate machines: each in its
//! own working directory and data dir (packages reach imagebuild and the
//! api through NATS only, each process reads its own copy of the NATS
//! certificates), over TLS to both Postgres (`sslmode=require`, checked in
//! `pg_stat_ssl` for every service's sessions) and a private NATS that
//! requires TLS, a client certificate and a password. A push goes through
//! package → image → deploy → smoke → API Manager to `env.promoted` while
//! the deployer and the conductor are killed and restarted mid-run; the run
//! still finishes, nothing is deployed twice, the `apim` service promotes
//! the API into API Manager exactly once, and the api process answers the
//! stage's diff from the package in the NATS object store.
//!
//! A Gantry that cannot speak TLS fails here: the NATS server refuses a
//! client without TLS, the private CA, a client certificate and the
//! password, and a Postgres session that is not encrypted is caught in
//! `pg_stat_ssl`.

use std::time::Duration;

use crate::common::*;
use axum::routing::get;
use gantry_tests::apimanager::ApiManagerDouble;
use gantry_tests::{fresh_postgres, NatsConfig, NatsServer, Registry, TestPki};
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
async fn separate_processes_over_tls_finish_the_run_through_kills_without_deploying_twice() {
    let db = fresh_postgres().await.unwrap();
    assert!(
        db.server_ssl().await.unwrap(),
        "the test Postgres does not serve TLS (`SHOW ssl` is off): this test needs it; \
         scripts/test documents how to turn it on"
    );
    // A private NATS requiring TLS (private CA, client certificate) and a
    // password, not the shared plain one.
    let pki = TestPki::generate().unwrap();
    let nats_password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let nats = NatsServer::start_with(NatsConfig {
        user_password: Some(("gantry".into(), nats_password.clone())),
        tls: Some(pki.clone()),
        verify_clients: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let nats_url = format!("tls://gantry:{nats_password}@127.0.0.1:{}", nats.port());
    // A client with the password but without the CA and a certificate is
    // refused; so would be a Gantry that cannot do TLS.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::connect(format!(
            "nats://gantry:{nats_password}@127.0.0.1:{}",
            nats.port()
        )),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "the private NATS accepted a client without TLS credentials"
    );
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;

    let deploy = seeded_deploy_repo(&[(
        "envs/test/values.yaml",
        "apitraffic:\n  image: none  # set by Gantry\n",
    )]);

    let app = axum::Router::new()
        .route("/healthcheck", get(|| async { "ok" }))
        .route("/pets", get(|| async { axum::Json(json!([{ "id": 1 }])) }));
    let gw = serve_http(app).await;

    let apim = ApiManagerDouble::start().await.unwrap();
    apim.add_organization("API Development");

    let repo = petstore_project();
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

    let dir = pipelines_dir("banking", &format!(
            "{head}apis:\n  path: apis/\n\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/healthcheck, timeout: 10s }}\n\
             \x20   apimanager: {{ url: \"{apim}\", username: env:APIM_USER, password: env:APIM_PASS }}\n\
             \x20   smoke:\n      - name: pets\n        request: {{ url: http://{gw}/pets }}\n        timeout: 5s\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
            apim = apim.url(),
        ));

    let prefix = gantry_tests::unique_name("flow");
    // Each process gets its own copy of the CA, certificate and key (at the
    // root of its own directory), and its own database session name.
    let certs = [
        pki.ca.as_path(),
        pki.client_cert.as_path(),
        pki.client_key.as_path(),
    ];
    let name = |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap().to_owned();
    let (ca, cert, key) = (name(&pki.ca), name(&pki.client_cert), name(&pki.client_key));
    let database_url = |service: &str| {
        format!(
            "{}?sslmode=require&application_name=gantry-{service}",
            db.url()
        )
    };
    let start = |service: &'static str| {
        let url = database_url(service);
        let env = [
            ("GANTRY_DATABASE_URL", url),
            ("GANTRY_NATS_URL", nats_url.clone()),
            ("GANTRY_NATS_CA", ca.clone()),
            ("GANTRY_NATS_CERT", cert.clone()),
            ("GANTRY_NATS_KEY", key.clone()),
            ("GANTRY_NATS_PREFIX", prefix.clone()),
            ("APIM_USER", "apiadmin".to_owned()),
            ("APIM_PASS", "changeme".to_owned()),
        ];
        let template = dir.path().to_owned();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Gantry::start_alone_with(&template, &certs, &["serve", service], &env).await
        }
    };
    let webhook = start("webhook").await;
    let api = start("api").await;
    let mut conductor = start("conductor").await;
    let envgen = start("envgen").await;
    let imagebuild = start("imagebuild").await;
    let mut deployer = start("deployer").await;
    let smoke = start("smoke").await;
    let apim_service = start("apim").await;

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

    // package → image → deploy → smoke, each step on another process.
    let of = |ty: &str| data_of(&events, ty);
    let built = of("io.gantry.package.built.v1");
    assert_eq!(built.len(), 1, "{events}");
    let package = built[0]["digest"].as_str().unwrap().to_owned();
    assert!(
        built[0]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("nats-object://")),
        "the package is in the NATS object store: {}",
        built[0]
    );
    let pushed = of("io.gantry.image.pushed.v1");
    assert_eq!(pushed.len(), 1, "{events}");
    let image_digest = pushed[0]["digest"].as_str().unwrap();
    assert_eq!(
        pushed[0]["repository"],
        format!("{}/apim/banking-gateway", registry.host_port())
    );
    let deployed = &of("io.gantry.deploy.completed.v1")[0];
    assert_eq!(deployed["digest"], image_digest, "{deployed}");
    let values = deploy.git(["show", "main:envs/test/values.yaml"]).unwrap();
    assert!(values.contains(image_digest), "{values}");
    let smoked = of("io.gantry.smoke.passed.v1");
    assert_eq!(smoked.len(), 1, "{events}");
    assert_eq!(smoked[0]["checks"][0]["name"], "pets", "{}", smoked[0]);

    // The diff route answers from the api process, which has no disk of
    // its own: the package comes from the bucket over TLS.
    let resp = reqwest::get(format!("{}/api/v1/runs/{run}/stages/test/diff", api.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let diff: Value = resp.json().await.unwrap();
    assert_eq!(diff["candidate"]["digest"], package.as_str(), "{diff}");
    assert_eq!(diff["current"]["run_id"], run.as_str(), "{diff}");
    assert_eq!(diff["current"]["digest"], package.as_str(), "{diff}");
    let text = reqwest::get(format!(
        "{}/api/v1/runs/{run}/stages/test/diff?format=text",
        api.url()
    ))
    .await
    .unwrap();
    assert_eq!(text.status(), 200);

    // Every service's sessions, as Postgres sees them while they run, are
    // encrypted; none is not.
    let sessions = db.sessions().await.unwrap();
    let plain: Vec<_> = sessions.iter().filter(|s| !s.ssl).collect();
    assert!(plain.is_empty(), "unencrypted sessions: {plain:?}");
    for service in SERVICES {
        let name = format!("gantry-{service}");
        assert!(
            sessions.iter().any(|s| s.ssl && s.application_name == name),
            "no encrypted session of {name}: {sessions:?}"
        );
    }

    let processes = [
        &webhook,
        &api,
        &conductor,
        &envgen,
        &imagebuild,
        &deployer,
        &smoke,
        &apim_service,
    ];
    let dirs: std::collections::HashSet<_> = processes.iter().map(|g| g.dir.clone()).collect();
    assert_eq!(
        dirs.len(),
        SERVICES.len(),
        "every process has its own directory"
    );
    // Packages live in the object store only, on no process's disk.
    for dir in &dirs {
        assert!(
            !dir.join(".gantry/packages").exists(),
            "a package was written to {}",
            dir.display()
        );
    }
    // The NATS password is in no process's log.
    for g in processes {
        assert!(
            !g.log_text().contains(&nats_password),
            "the NATS password is in the log of {}",
            g.dir.display()
        );
    }
}
