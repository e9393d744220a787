//! The services as separate processes over Postgres and NATS, each in its
//! own working directory and data dir: a webhook accepted by `gantry serve
//! webhook` is visible at `gantry serve api`, a plain NATS subscriber
//! receives the CloudEvents, and a package built by `serve envgen` becomes
//! an image at `serve imagebuild` and a diff at `serve api` through the
//! NATS object store, with no disk shared. As in production, over TLS:
//! Postgres with `sslmode=require`, and a private NATS requiring TLS, a
//! client certificate and a password (each process reads its own copy of
//! the certificates).

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use gantry_tests::{fresh_postgres, GitRepo, Registry};
use serde_json::{json, Value};

#[tokio::test]
async fn webhook_and_api_as_separate_processes() {
    let db = fresh_postgres().await.unwrap();
    let mut nats = SecureNats::start().await;
    let dir = workdir();
    let prefix = gantry_tests::unique_name("e2e");
    let mut owned = nats.env();
    owned.push(("GANTRY_DATABASE_URL", require_tls(db.url())));
    owned.push(("GANTRY_NATS_PREFIX", prefix.clone()));
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // `serve` refuses to run without both URLs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "webhook"])
        .current_dir(dir.path())
        .env_remove("GANTRY_DATABASE_URL")
        .env_remove("GANTRY_NATS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GANTRY_DATABASE_URL"));

    let files = nats.files();
    let webhook = Gantry::start_alone_with(dir.path(), &files, &["serve", "webhook"], &env).await;
    let api = Gantry::start_alone_with(dir.path(), &files, &["serve", "api"], &env).await;

    let client = nats.client().await;
    let mut sub = client
        .subscribe(format!("{prefix}.events.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let commit = commit_sha(42);
    let (status, body) = send_push(&reqwest::Client::new(), &webhook.url(), &commit, "d-42")
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let run_id = body["runs"][0]["run_id"].as_str().unwrap().to_owned();

    let mut received = Vec::new();
    while received.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("CloudEvents reach a plain NATS subscriber")
            .unwrap();
        let event: Value = serde_json::from_slice(&msg.payload).unwrap();
        received.push((msg.subject.to_string(), event));
    }
    assert_eq!(
        received[0].0,
        format!("{prefix}.events.banking.commit.received")
    );
    assert_eq!(
        received[1].0,
        format!("{prefix}.events.banking.run.started")
    );
    for (_, e) in &received {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["runid"], run_id.as_str());
        assert!(e["sequence"].as_i64().unwrap() > 0);
    }

    let runs = get_json(&api.url(), "/api/v1/runs").await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    let streamed = read_sse(&api.url(), "", |s| s.len() >= 2).await;
    assert_eq!(streamed[1].1["type"], "io.gantry.run.started.v1");
    let ready = get_json(&api.url(), "/readyz").await;
    assert_eq!(ready["bus"], "nats", "{ready}");

    // Readiness follows NATS: not ready while it is down, ready once it is back.
    nats.server.kill();
    let readyz = format!("{}/readyz", api.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = reqwest::get(&readyz).await.unwrap();
        if resp.status() == 503 {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with NATS down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reqwest::get(format!("{}/healthz", api.url()))
            .await
            .unwrap()
            .status(),
        200,
        "alive all the same"
    );
    nats.server.restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(&readyz).await.unwrap().status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The package → image path across machines: envgen, imagebuild and the api
/// each have their own data dir, so the package reaches imagebuild and the
/// api's diff only through the NATS object store. Before the shared store,
/// imagebuild looked in its own data dir and recorded `image.failed`
/// ("package sha256:… is not in the package store").
#[tokio::test]
async fn a_package_built_on_one_machine_is_imaged_and_diffed_on_others() {
    let db = fresh_postgres().await.unwrap();
    let nats = SecureNats::start().await;
    let registry = Registry::start().await.unwrap();
    let base = push_parent(&registry, "axway/apigw-emt").await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    repo.write("gateway/values.yaml", "---\ngreeting: hello\n")
        .unwrap();
    let first = repo.commit("config").unwrap();

    let template = pipelines_dir(
        "banking",
        &format!(
            "{}image:\n  base: {base}\n  repository: {}/apim/banking-gateway\n\
             stages:\n  - name: test\n",
            banking(repo.path().display()),
            registry.host_port()
        ),
    );

    let prefix = gantry_tests::unique_name("pkg");
    let bucket = gantry_tests::unique_name("PACKAGES");
    let mut owned = nats.env();
    owned.push(("GANTRY_DATABASE_URL", require_tls(db.url())));
    owned.push(("GANTRY_NATS_PREFIX", prefix.clone()));
    owned.push(("GANTRY_PACKAGES_BUCKET", bucket.clone()));
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let files = nats.files();
    let (files, env, dir) = (&files, &env, template.path());
    let start = |service: &'static str| async move {
        Gantry::start_alone_with(dir, files, &["serve", service], env).await
    };
    let webhook = start("webhook").await;
    let api = start("api").await;
    let _conductor = start("conductor").await;
    let envgen = start("envgen").await;
    let imagebuild = start("imagebuild").await;
    let dirs = [&webhook, &api, &envgen, &imagebuild].map(|g| g.dir.clone());
    assert_eq!(
        dirs.iter().collect::<std::collections::HashSet<_>>().len(),
        4,
        "every process has its own directory"
    );

    let author = json!({ "name": "Dev", "email": "dev@example.com" });
    let run = push_local_commit(&webhook.url(), &repo, &first, author.clone()).await;
    let logs = || {
        format!(
            "envgen:\n{}\nimagebuild:\n{}",
            envgen.log_text(),
            imagebuild.log_text()
        )
    };
    let view = wait_run_ended(&api.url(), &run, Duration::from_secs(90), logs).await;
    let events = get_json(&api.url(), &format!("/api/v1/runs/{run}/events")).await;
    let of = |ty: &str| data_of(&events, ty);
    assert!(
        of("io.gantry.image.failed.v1").is_empty(),
        "{events}\n{}",
        logs()
    );
    assert_eq!(view["status"], "succeeded", "{view}\n{}", logs());
    let built = &of("io.gantry.package.built.v1")[0];
    let digest = built["digest"].as_str().unwrap();
    assert_eq!(
        built["location"],
        format!("nats-object://{bucket}/{}", digest.replace(':', "-")),
        "no host path in the event"
    );
    let pushed = &of("io.gantry.image.pushed.v1")[0];
    assert_eq!(pushed["stage"], "test");

    // The package is in the bucket, and on nobody's disk.
    let js = async_nats::jetstream::new(nats.client().await);
    let object = js.get_object_store(&bucket).await.unwrap();
    let info = object.info(digest.replace(':', "-")).await.unwrap();
    assert_eq!(info.size as u64, built["size"].as_u64().unwrap());
    for dir in &dirs {
        assert!(
            !dir.join(".gantry/packages").exists(),
            "a package was written to {}",
            dir.display()
        );
    }

    // A second commit, promoted too; the api's diff compares the two
    // packages, read from the bucket by the api process.
    repo.write("gateway/values.yaml", "---\ngreeting: hello again\n")
        .unwrap();
    let second = repo.commit("greeting").unwrap();
    let run2 = push_local_commit(&webhook.url(), &repo, &second, author).await;
    let view = wait_run_ended(&api.url(), &run2, Duration::from_secs(90), logs).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{}", logs());
    let resp = reqwest::get(format!("{}/api/v1/runs/{run}/stages/test/diff", api.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let diff: Value = resp.json().await.unwrap();
    assert_eq!(diff["candidate"]["digest"], digest);
    assert_eq!(diff["current"]["run_id"], run2.as_str(), "{diff}");
    let text = diff["diff"].to_string();
    assert!(text.contains("hello again"), "{diff}");

    // Retention on Postgres + NATS: with nothing counted as recent, run 1's
    // package is unreachable (run 2 is the release), run 2's is kept. The
    // command runs in the template directory, with its own certificates.
    for file in files {
        std::fs::copy(file, template.path().join(file.file_name().unwrap())).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "packages",
            "prune",
            "--keep-days",
            "0",
            "--grace-minutes",
            "0",
            "-o",
            "json",
        ])
        .current_dir(template.path())
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let pruned: Value = serde_json::from_slice(&stdout_of(out)).unwrap();
    assert_eq!(pruned["removed"], json!([digest]), "{pruned}");
    assert_eq!(
        pruned["kept"][0]["why"], "the current release of banking/test",
        "{pruned}"
    );
    let gone = object.info(digest.replace(':', "-")).await;
    assert!(
        gone.map(|i| i.deleted).unwrap_or(true),
        "removed from the bucket"
    );
}

/// `gantry bench webhooks --replicas 2`, the command behind BENCHMARKS.md's
/// webhook figures: two `serve webhook` processes take signed pushes of
/// distinct commits concurrently, and the bench itself reads the log and
/// fails unless every accepted webhook made exactly one run.
#[tokio::test]
async fn two_webhook_replicas_record_every_accepted_push_once() {
    let db = fresh_postgres().await.unwrap();
    let nats_url = gantry_tests::shared_nats_url();
    let dir = workdir();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "bench",
            "webhooks",
            "--duration",
            "1s",
            "--connections",
            "8",
        ])
        .args(["--replicas", "2", "--database-url", db.url(), "--nats-url"])
        .arg(&nats_url)
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["servers"], "2 × gantry serve webhook");
    assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["refused"], 0, "{report}");
    assert_eq!(report["runs_recorded"], report["accepted"], "{report}");
    assert_eq!(report["runs_lost"], 0, "{report}");
    assert_eq!(report["runs_twice"], 0, "{report}");
}
