//! `GET /api/v1/runs/{id}/stages/{stage}/diff`: the run's package for the
//! stage against the one the stage runs now, secrets masked; `?format=text`
//! for people.

use gantry_envgen::package::tar_gz;
use serde_json::Value;

use crate::rollback::promote;
use crate::support::{assert_problem, package_built, Options, TestApp};

const SECRET: &str = "hunter2-very-secret";

/// A stage declaring a secret its packages hold resolved.
const CFG: &str = "\
name: cfg
source: { repo: REPO, branch: main }
gateway: { format: yaml, path: gateway/ }
stages:
  - name: test
    env:
      DB_PASSWORD: SECRET(hunter2-very-secret)
";

async fn store_package(app: &TestApp, files: &[(&str, &str)]) -> String {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
    let bytes = tar_gz(&[], &files).unwrap();
    app.app.packages.put(&bytes).await.unwrap().digest
}

async fn built(app: &TestApp, run: &str, digest: &str) {
    app.record(run, &package_built("test", digest)).await;
}

#[tokio::test]
async fn a_diff_compares_with_what_the_stage_runs_and_masks_secrets() {
    let app = TestApp::start(Options::default().pipeline(CFG)).await;
    let (c0, c1) = (app.commits[0].clone(), app.commits[1].clone());
    let current = store_package(&app, &[("a.yaml", "x: 1\n"), ("db.yaml", "url: old\n")]).await;
    let released = app.seed_run_of("cfg", &c0).await;
    promote(&app, &released, "test", &c0, &current).await;
    let candidate = store_package(
        &app,
        &[
            ("a.yaml", "x: 2\n"),
            (
                "db.yaml",
                format!("url: new\npassword: {SECRET}\n").as_str(),
            ),
            ("new.yaml", "y: 1\n"),
        ],
    )
    .await;
    let run = app.seed_run_of("cfg", &c1).await;
    built(&app, &run, &candidate).await;

    let path = format!("/api/v1/runs/{run}/stages/test/diff");
    let a = app.get(&path).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        !a.text().contains(SECRET),
        "the secret leaked: {}",
        a.text()
    );
    let d = a.json();
    assert_eq!(d["run_id"], run.as_str());
    assert_eq!(d["pipeline"], "cfg");
    assert_eq!(d["stage"], "test");
    assert_eq!(d["candidate"]["digest"], candidate.as_str());
    assert_eq!(d["current"]["run_id"], released.as_str());
    assert_eq!(d["current"]["commit"], c0.as_str());
    assert_eq!(d["current"]["digest"], current.as_str());
    assert_eq!(
        d["diff"]["summary"],
        "3 files changed (1 added, 0 removed, 2 modified), 0 values changed"
    );
    let paths = |key: &str| -> Vec<String> {
        d["diff"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(paths("added"), ["new.yaml"]);
    assert_eq!(paths("modified"), ["a.yaml", "db.yaml"]);

    let text = app.get(&format!("{path}?format=text")).await;
    assert_eq!(text.status, 200, "{}", text.text());
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(text.text().contains("+x: 2"), "{}", text.text());
    assert!(
        !text.text().contains(SECRET),
        "the secret leaked: {}",
        text.text()
    );
}

#[tokio::test]
async fn a_first_release_is_all_added() {
    let app = TestApp::start(Options::default().pipeline(CFG)).await;
    let digest = store_package(&app, &[("a.yaml", "x: 1\n")]).await;
    let run = app.seed_run_of("cfg", &app.commits[0]).await;
    built(&app, &run, &digest).await;
    let a = app
        .get(&format!("/api/v1/runs/{run}/stages/test/diff"))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let d = a.json();
    assert_eq!(d["current"], Value::Null);
    assert_eq!(d["diff"]["initial"], true);
    assert_eq!(d["diff"]["added"][0]["path"], "a.yaml");
}

#[tokio::test]
async fn a_diff_needs_the_run_and_its_package() {
    let app = TestApp::start(Options::default().pipeline(CFG)).await;
    assert_problem(
        &app.get("/api/v1/runs/nope/stages/test/diff").await,
        404,
        &["no run `nope`"],
    );
    let run = app.seed_run_of("cfg", &app.commits[0]).await;
    let path = format!("/api/v1/runs/{run}/stages/test/diff");
    assert_problem(
        &app.get(&path).await,
        409,
        &["has no package for stage `test` yet"],
    );
    // The log names a package the store does not hold: the server's fault.
    built(&app, &run, &format!("sha256:{}", "0".repeat(64))).await;
    assert_problem(&app.get(&path).await, 500, &["internal error"]);
}
