//! `gantry pause` / `gantry resume`: a paused stage promotes nothing new, the
//! waiting run says who paused it and why, and a resume lets it go on.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_paused_stage_holds_the_run_until_resumed() {
    let repo = gantry_tests::GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let commit = repo.commit("first").unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("pipelines/banking.yaml"),
        format!(
            "name: banking\nsource:\n  repo: {}\n  branch: main\n  webhook_secret: env:E2E_WEBHOOK_SECRET\n\
             gateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n  - name: prod\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .current_dir(dir.path())
            .env("GANTRY_SERVER", &base)
            .output()
            .expect("run gantry")
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // A pause needs a reason (bad usage), then stops prod.
    let out = cli(&["pause", "banking", "prod"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cli(&["pause", "banking", "prod", "--reason", "incident 4711"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("paused stage prod of banking"),
        "{}",
        text(&out)
    );
    let out = cli(&["pause", "banking", "prod", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("already paused"), "{}", text(&out));

    let run = push_local_commit(
        &base,
        &repo,
        &commit,
        json!({ "name": "Dev", "email": "dev@example.com" }),
    )
    .await;
    let view = wait_stage_status(
        &base,
        None,
        &run,
        ("prod", "queued"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(view["stages"][0]["status"], "promoted", "{view}");
    let waiting = &view["stages"][1]["waiting"];
    assert_eq!(waiting["reason"], "paused", "{view}");
    assert_eq!(
        waiting["detail"],
        "stage prod paused by anonymous: incident 4711"
    );
    let out = cli(&["run", &run]);
    assert!(
        text(&out).contains("stage prod paused by anonymous: incident 4711"),
        "{}",
        text(&out)
    );
    // It stays paused: nothing starts by itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = get_json(&base, &format!("/api/v1/runs/{run}")).await;
    assert_eq!(view["status"], "running", "{view}");
    let pipeline = get_json(&base, "/api/v1/pipelines/banking").await;
    assert_eq!(pipeline["stages"][1]["paused"]["reason"], "incident 4711");

    let out = cli(&["resume", "banking", "prod", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let resumed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resumed["type"], "io.gantry.stage.resumed.v1");
    let view = wait_run_ended(&base, &run, Duration::from_secs(30), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");

    // Both facts are in the log, for dashboards, with who and why.
    let out = cli(&["events", "--pipeline", "banking", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let stage_facts: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["type"] == "io.gantry.stage.paused.v1" || e["type"] == "io.gantry.stage.resumed.v1"
        })
        .collect();
    assert_eq!(stage_facts.len(), 2, "{stage_facts:#?}");
    assert_eq!(stage_facts[0]["data"]["reason"], "incident 4711");
    assert_eq!(stage_facts[1]["data"]["stage"], "prod");
}
