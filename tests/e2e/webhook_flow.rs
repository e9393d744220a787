//! `gantry up` on its embedded defaults: a signed GitHub push becomes exactly
//! one run, visible in the API and on the event stream; rejected deliveries
//! record nothing.

use crate::common::*;
use serde_json::Value;

#[tokio::test]
async fn signed_push_creates_exactly_one_run_visible_and_streamed() {
    let dir = workdir();
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let client = reqwest::Client::new();
    let commit = commit_sha(1);

    let (status, body) = send_push(&client, &base, &commit, "delivery-1")
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let runs = body["runs"].as_array().expect("runs listed");
    assert_eq!(runs.len(), 1);
    let run_id = runs[0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(runs[0]["created"], true);

    // A redelivery, and the same commit under a new delivery id: same run.
    for delivery in ["delivery-1", "delivery-2"] {
        let (status, body) = send_push(&client, &base, &commit, delivery).await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["runs"][0]["run_id"], run_id.as_str());
        assert_eq!(body["runs"][0]["created"], false);
    }

    let listed = get_json(&base, "/api/v1/runs").await;
    let listed = listed.as_array().expect("a JSON array of runs");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["run_id"], run_id.as_str());
    assert_eq!(listed[0]["commit"], commit.as_str());
    assert_eq!(listed[0]["pipeline"], "banking");
    // The repository is not reachable from here, so the run ends `failed`
    // once envgen and the conductor have had their say.
    let status = listed[0]["status"].as_str().unwrap().to_owned();
    assert!(status == "running" || status == "failed", "{status}");

    let run = get_json(&base, &format!("/api/v1/runs/{run_id}")).await;
    let stages: Vec<&str> = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["test", "prod"]);
    assert_eq!(
        get_json(&base, "/api/v1/runs?pipeline=other")
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        get_json(&base, "/api/v1/runs?status=succeeded")
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let failed = loop {
        let failed = get_json(&base, "/api/v1/runs?status=failed").await;
        if failed.as_array().unwrap().len() == 1 {
            break failed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("git.example.com"),
        "the reason names the repository: {reason}"
    );

    let events = read_sse(&base, "", |seen| seen.len() >= 2).await;
    let types: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["io.gantry.commit.received.v1", "io.gantry.run.started.v1"]
    );
    for (position, event) in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["sequence"], *position);
        assert_eq!(event["subject"], run_id.as_str());
        assert_eq!(event["pipeline"], "banking");
        assert_eq!(event["datacontenttype"], "application/json");
    }
    assert_eq!(events[0].1["source"], "gantry/webhook");
    assert_eq!(events[1].1["causationid"], events[0].1["id"]);

    // Resuming after the first event yields only the second.
    let resumed = read_sse(&base, &format!("?from={}", events[1].0), |s| !s.is_empty()).await;
    assert_eq!(resumed[0].0, events[1].0);

    let run_events = get_json(&base, &format!("/api/v1/runs/{run_id}/events")).await;
    let types: Vec<&str> = run_events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .take(2)
        .collect();
    assert_eq!(
        types,
        ["io.gantry.commit.received.v1", "io.gantry.run.started.v1"]
    );
}

#[tokio::test]
async fn rejected_deliveries_record_nothing() {
    let dir = workdir();
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let client = reqwest::Client::new();
    let body = push_body(&commit_sha(2), "main");

    // Bad signature.
    let resp = client
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", "sha256=00")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    // Missing signature.
    let resp = client
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Malformed JSON: 400 with a reason.
    let bad = b"{\"ref\": \"refs/heads/main\", ".to_vec();
    let resp = post_github_push(&base, bad).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 400);
    assert!(
        problem["detail"].as_str().unwrap().contains("line"),
        "{problem}"
    );

    // Too large: refused with 413 as soon as the length is known. The server
    // may close the connection before the client has finished sending, which
    // the client sees as a broken request instead of the 413.
    // Its own client, so the connection the server drops is not reused.
    let huge = vec![b' '; 6 * 1024 * 1024];
    let sent = reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(&huge))
        .body(huge)
        .send()
        .await;
    match sent {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected failure: {e}"),
    }

    // A branch nobody follows, properly signed: ignored.
    let other = push_body(&commit_sha(3), "feature/x");
    let resp = post_github_push(&base, other).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ignored");

    // Ping.
    let resp = client
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "ping")
        .header("X-Hub-Signature-256", sign(b"{\"zen\":\"hi\"}"))
        .body("{\"zen\":\"hi\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Unknown provider.
    let resp = client
        .post(format!("{base}/webhooks/svn"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let events = reqwest::get(format!("{base}/api/v1/events?follow=false"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !events.contains("data:"),
        "nothing was recorded, got: {events}"
    );
    assert_eq!(
        get_json(&base, "/api/v1/runs")
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn health_cli_and_graceful_shutdown() {
    let dir = workdir();
    // Manual triggers name commits the pipeline's branch holds: a real repository.
    let repo = gantry_tests::GitRepo::init().unwrap();
    let on_main = repo.commit_files(&[("f", "1")], "on main").unwrap();
    repo.checkout_new_branch("feature").unwrap();
    let elsewhere = repo.commit_files(&[("f", "2")], "not on main").unwrap();
    std::fs::write(
        dir.path().join("pipelines/banking.yaml"),
        format!(
            "name: banking\nsource:\n  repo: {}\n  branch: main\n\
             gateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    assert_eq!(get_json(&base, "/healthz").await["status"], "ok");
    let ready = get_json(&base, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gantry_log_head_position"), "{metrics}");

    // A manual trigger through the CLI, then the CLI's view of it.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .current_dir(dir.path())
            .env("GANTRY_LISTEN", format!("127.0.0.1:{}", gantry.port))
            .output()
            .expect("run gantry")
    };
    let out = cli(&["trigger", "banking", "--commit", &elsewhere]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not on branch `main`"), "{stderr}");
    let commit = on_main;
    let out = cli(&[
        "trigger", "banking", "--commit", &commit, "--output", "json",
    ]);
    let run: Value = serde_json::from_slice(&stdout_of(out)).unwrap();
    assert_eq!(run["created"], true);
    let out = cli(&["runs", "--output", "json"]);
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["trigger"], "manual");
    let out = cli(&[
        "events",
        "--run",
        run["run_id"].as_str().unwrap(),
        "--output",
        "json",
    ]);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Then envgen's answer for each stage may follow.
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(lines[0]["type"], "io.gantry.commit.received.v1");
    assert_eq!(lines[1]["type"], "io.gantry.run.started.v1");
    assert!(lines.iter().all(|l| l["subject"] == run["run_id"]));
    let run_id = run["run_id"].as_str().unwrap();
    let out = cli(&["run", run_id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(run_id), "{text}");
    // Cancelled if it still runs (it may already have failed: the stage
    // has nothing to package); either way it ends, and stays as it ended.
    let out = cli(&["cancel", run_id, "--reason", "not this one"]);
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("cancelled run {run_id}")), "{text}");
    }
    let out = cli(&["cancel", run_id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a finished run cannot be cancelled"
    );
    let out = cli(&["run", run_id, "--output", "json"]);
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = view["status"].as_str().unwrap().to_owned();
    assert_ne!(status, "running", "{view}");
    // Filters reach the API URL-encoded; one that matches nothing lists nothing.
    let out = cli(&[
        "runs",
        "--pipeline",
        "banking",
        "--status",
        &status,
        "--output",
        "json",
    ]);
    let filtered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered}");
    let out = cli(&["runs", "--pipeline", "no such pipeline", "--output", "json"]);
    let none: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(none, serde_json::json!([]));
    let out = cli(&["trigger", "nope", "--commit", &commit]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pipeline named `nope`"));
    let out = cli(&["runs", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");

    // An open event stream does not hold up shutdown.
    let sse = tokio::spawn({
        let base = base.clone();
        async move {
            reqwest::get(format!("{base}/api/v1/events"))
                .await
                .map(|r| r.status())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || gantry.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let _ = sse.await;

    // The CLI reads the store directly when no server runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["runs", "--output", "json"])
        .current_dir(dir.path())
        .env(
            "GANTRY_LISTEN",
            format!("127.0.0.1:{}", gantry_tests::free_port()),
        )
        .output()
        .unwrap();
    let runs: Value = serde_json::from_slice(&stdout_of(out)).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);
}
