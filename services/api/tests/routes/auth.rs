//! API tokens: reloaded when the file changes and on SIGHUP; `access.trigger`
//! decides who may start runs by hand.

use std::time::{Duration, Instant};

use crate::support::{self, tokens_yaml, Options, TestApp, CAROL, DAVE, RITA};

async fn status_as(app: &TestApp, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    app.raw(
        "GET",
        "/api/v1/pipelines",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .status
}

/// Polls until `token` gets `want` on `GET /api/v1/pipelines`.
async fn wait_status(app: &TestApp, token: &str, want: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if status_as(app, token).await == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_from_the_file_is_refused_after_the_reload() {
    let app = TestApp::start(Options {
        tokens: Some(vec![RITA, DAVE]),
        ..Options::default()
    })
    .await;
    assert_eq!(status_as(&app, "rita-token").await, 200);
    assert_eq!(status_as(&app, "dave-token").await, 200);
    assert_eq!(status_as(&app, "nobody").await, 401);

    // Revoke rita's token: the file is polled (every 2 s by default).
    std::fs::write(app.tokens_path(), tokens_yaml(&[DAVE])).unwrap();
    assert!(
        wait_status(&app, "rita-token", 401, Duration::from_secs(8)).await,
        "a revoked token is still accepted 8 s after the file changed"
    );
    assert_eq!(status_as(&app, "dave-token").await, 200);

    // A broken file keeps the tokens in force.
    std::fs::write(app.tokens_path(), "tokens: [ not: valid").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_as(&app, "dave-token").await, 200);
    assert_eq!(status_as(&app, "rita-token").await, 401);

    // Fixed again, with a new token.
    std::fs::write(app.tokens_path(), tokens_yaml(&[DAVE, CAROL])).unwrap();
    assert!(wait_status(&app, "carol-token", 200, Duration::from_secs(8)).await);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens() {
    let app = TestApp::start(Options {
        tokens: Some(vec![RITA, DAVE]),
        // Polling would not notice within the test: only SIGHUP can.
        reload_interval: Duration::from_secs(3600),
        ..Options::default()
    })
    .await;
    assert_eq!(status_as(&app, "rita-token").await, 200);
    std::fs::write(app.tokens_path(), tokens_yaml(&[DAVE])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status_as(&app, "rita-token").await,
        200,
        "nothing reloads the file before SIGHUP"
    );
    // SAFETY: kill(2) on our own pid; the router registered a SIGHUP handler.
    let rc = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    assert_eq!(rc, 0);
    assert!(
        wait_status(&app, "rita-token", 401, Duration::from_secs(5)).await,
        "a revoked token is still accepted after SIGHUP"
    );
    assert_eq!(status_as(&app, "dave-token").await, 200);
}

async fn trigger_as(app: &TestApp, token: &str, commit: &str) -> support::Answer {
    let auth = format!("Bearer {token}");
    let body = serde_json::json!({ "pipeline": "demo", "commit": commit });
    app.raw(
        "POST",
        "/api/v1/runs",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

#[tokio::test]
async fn access_trigger_decides_who_may_start_a_run_and_records_who_did() {
    let app = TestApp::start(Options {
        tokens: Some(vec![RITA, DAVE, CAROL]),
        ..Options::default()
    })
    .await;
    let commit = app.commits[0].clone();

    // rita is neither named nor in a named group.
    let head = app.head().await;
    let refused = trigger_as(&app, "rita-token", &commit).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("access.trigger"), "{detail}");
    assert!(detail.contains("deployers"), "{detail}");
    assert_eq!(app.head().await, head, "a refused trigger records nothing");

    // dave is in the group `deployers`.
    let started = trigger_as(&app, "dave-token", &commit).await;
    assert_eq!(started.status, 201, "{}", started.text());
    let run_id = started.json()["run_id"].as_str().unwrap().to_owned();
    let events = app
        .raw(
            "GET",
            &format!("/api/v1/runs/{run_id}/events"),
            &[("Authorization", "Bearer dave-token")],
            None,
        )
        .await
        .json();
    let triggered_by: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["triggered_by"].as_str())
        .collect();
    assert_eq!(triggered_by, vec!["dave"], "{events:#}");

    // carol is named as a user.
    let other = trigger_as(&app, "carol-token", &app.commits[1]).await;
    assert_eq!(other.status, 201, "{}", other.text());
}

/// A manual trigger names only what the pipeline's branch holds: a commit
/// of another branch, or one the repository does not have, is refused with
/// 422 and nothing is recorded (DESIGN.md 1.7).
#[tokio::test]
async fn a_manual_trigger_of_a_commit_off_the_branch_is_refused() {
    let app = TestApp::start(Options {
        tokens: Some(vec![RITA, DAVE, CAROL]),
        ..Options::default()
    })
    .await;
    app.repo.checkout_new_branch("unreviewed").unwrap();
    let elsewhere = app.repo.commit_files(&[("f", "x")], "not on main").unwrap();
    let head = app.head().await;
    for commit in [
        elsewhere.clone(),
        "0123456789abcdef0123456789abcdef01234567".to_owned(),
    ] {
        let refused = trigger_as(&app, "dave-token", &commit).await;
        assert_eq!(refused.status, 422, "{}", refused.text());
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
        assert!(
            refused.json()["detail"]
                .as_str()
                .unwrap()
                .contains("not on branch `main`"),
            "{}",
            refused.text()
        );
    }
    assert_eq!(app.head().await, head, "nothing recorded");
    let started = trigger_as(&app, "dave-token", &app.commits[0]).await;
    assert_eq!(started.status, 201, "{}", started.text());
}
