//! Issue 18, as a user would see it: a git server that accepts connections
//! and never answers holds back no other pipeline, and its run ends at the
//! package step's deadline instead of staying `running`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use gantry_tests::GitRepo;
use serde_json::{json, Value};

/// A "git server" on loopback that accepts every connection and never
/// answers; counts the connections.
fn stalled_git_server() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/apim/config.git", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        // Kept open, so the client waits for an answer that never comes.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}

fn pipeline(name: &str, repo: &str, extra_source: &str, extra_stage: &str) -> String {
    format!(
        "name: {name}\nsource:\n  repo: {repo}\n  branch: main\n  webhook_secret: env:E2E_WEBHOOK_SECRET\n{extra_source}\
         gateway:\n  format: yaml\n  path: gateway/\n\
         stages:\n  - name: test\n{extra_stage}"
    )
}

/// A signed push of `commit` to the repository at `clone_url`; the run id.
async fn push(base: &str, clone_url: &str, commit: &str) -> String {
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "after": commit,
        "repository": { "clone_url": clone_url },
        "head_commit": { "message": "config", "author": { "name": "Dev One", "email": "dev@example.com", "username": "dev1" } }
    }))
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    body["runs"][0]["run_id"].as_str().unwrap().to_owned()
}

async fn wait_connected(accepted: &AtomicUsize, log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "envgen never reached the stalled server\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The found defect: with a pipeline whose source never answers, another
/// pipeline on a healthy repository did not get its run through within
/// 30 s (about a second alone): envgen handled one event at a time, and
/// libgit2 waited for the stalled server without a timeout.
#[tokio::test]
async fn a_stalled_git_server_does_not_hold_back_another_pipeline() {
    let (stalled_url, accepted) = stalled_git_server();
    let healthy = GitRepo::init().unwrap();
    write_minimal_project(&healthy);
    let commit = healthy.commit("config").unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    // The stalled pipeline keeps its default deadlines (minutes): only
    // isolation can get the other run through.
    std::fs::write(
        dir.path().join("pipelines/stalled.yaml"),
        pipeline("stalled", &stalled_url, "", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pipelines/healthy.yaml"),
        pipeline("healthy", &healthy.path().display().to_string(), "", ""),
    )
    .unwrap();
    let g = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = g.url();

    let stalled_run = push(&base, &stalled_url, &"a".repeat(40)).await;
    wait_connected(&accepted, || g.log_text()).await;
    let healthy_run = push(
        &base,
        &format!("file://{}", healthy.path().display()),
        &commit,
    )
    .await;
    let view = wait_run_ended(&base, &healthy_run, Duration::from_secs(30), || {
        g.log_text()
    })
    .await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let stalled = get_json(&base, &format!("/api/v1/runs/{stalled_run}")).await;
    assert_eq!(stalled["status"], "running", "{stalled}");
}

/// The found defect: the stalled run was still `running` after 90 s. With
/// a package deadline it fails with the reason, like any failed step.
#[tokio::test]
async fn a_run_on_a_stalled_git_server_fails_at_its_deadline() {
    let (stalled_url, accepted) = stalled_git_server();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("pipelines/stalled.yaml"),
        pipeline(
            "stalled",
            &stalled_url,
            "  timeout: 1s\n",
            "    timeouts: { package: 2s }\n",
        ),
    )
    .unwrap();
    let g = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = g.url();
    let run = push(&base, &stalled_url, &"b".repeat(40)).await;
    wait_connected(&accepted, || g.log_text()).await;
    let view = wait_run_ended(&base, &run, Duration::from_secs(30), || g.log_text()).await;
    assert_eq!(view["status"], "failed", "{view}");
    let events = get_json(&base, &format!("/api/v1/runs/{run}/events")).await;
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.package.failed.v1")
        .unwrap_or_else(|| panic!("no package.failed in {events}"));
    assert_eq!(failed["data"]["reason"], "timed out after 2s", "{failed}");
    assert_eq!(failed["source"], "gantry/conductor", "{failed}");
}
