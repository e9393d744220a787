//! `GET /api/v1/runs` (filters and limit), `GET /api/v1/runs/{id}` (stages,
//! and why a waiting stage waits) and `GET /api/v1/runs/{id}/events`.

use gantry_proto::events::{ApprovalRequested, RunCancelled};
use serde_json::Value;

use crate::support::{assert_problem, Options, TestApp};

/// A second pipeline on the same repository, for the `pipeline` filter.
pub const OTHER: &str = "\
name: other
source: { repo: REPO, branch: main }
gateway: { format: yaml, path: gateway/ }
stages:
  - name: only
";

fn ids(a: &crate::support::Answer) -> Vec<String> {
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
        .as_array()
        .unwrap_or_else(|| panic!("a JSON array: {}", a.text()))
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_filtered() {
    let app = TestApp::start(Options::default().pipeline(OTHER)).await;
    assert_eq!(ids(&app.get("/api/v1/runs").await), Vec::<String>::new());
    let first = app.seed_run(&app.commits[0]).await;
    let second = app.seed_run(&app.commits[1]).await;
    let other = app.seed_run_of("other", &app.commits[0]).await;
    app.record(
        &first,
        &RunCancelled {
            user: "ops".into(),
            reason: None,
        },
    )
    .await;

    let all = app.get("/api/v1/runs").await;
    assert_eq!(ids(&all), [other.clone(), second.clone(), first.clone()]);
    let listed = all.json();
    assert_eq!(listed[0]["pipeline"], "other");
    assert_eq!(listed[0]["commit"], app.commits[0].as_str());
    assert_eq!(listed[0]["branch"], "main");
    assert_eq!(listed[0]["trigger"], "manual");
    assert_eq!(listed[0]["status"], "running");
    assert_eq!(listed[2]["status"], "cancelled");

    let cases: &[(&str, Vec<&String>)] = &[
        ("?pipeline=demo", vec![&second, &first]),
        ("?pipeline=other", vec![&other]),
        ("?pipeline=nope", vec![]),
        ("?status=running", vec![&other, &second]),
        ("?status=cancelled", vec![&first]),
        ("?status=failed", vec![]),
        ("?pipeline=demo&status=running", vec![&second]),
        ("?limit=1", vec![&other]),
        ("?limit=2&pipeline=demo", vec![&second, &first]),
        // Empty filters filter nothing.
        ("?pipeline=&status=", vec![&other, &second, &first]),
    ];
    for (query, want) in cases {
        let got = ids(&app.get(&format!("/api/v1/runs{query}")).await);
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{query}");
    }

    assert_problem(
        &app.get("/api/v1/runs?status=done").await,
        400,
        &["status `done` is not one of running, succeeded, failed, superseded, cancelled"],
    );
    assert_problem(
        &app.get("/api/v1/runs?limit=0").await,
        400,
        &["limit 0 is not a positive number"],
    );
}

#[tokio::test]
async fn a_run_shows_its_stages_and_why_one_waits() {
    let app = TestApp::start(Options::default()).await;
    let commit = app.commits[1].clone();
    let run = app.seed_run(&commit).await;

    let a = app.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let view = a.json();
    assert_eq!(view["run_id"], run.as_str());
    assert_eq!(view["pipeline"], "demo");
    assert_eq!(view["commit"], commit.as_str());
    assert_eq!(view["status"], "running");
    let stages = view["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dev", "prod"]);
    assert_eq!(stages[1]["after"], "dev");
    assert!(stages.iter().all(|s| s["waiting"].is_null()), "{view}");

    app.record(
        &run,
        &ApprovalRequested {
            stage: "prod".into(),
            required: 1,
            approvers: vec!["release-managers".into()],
            expires_at: None,
        },
    )
    .await;
    let view = app.get(&format!("/api/v1/runs/{run}")).await.json();
    let prod = &view["stages"][1];
    assert_eq!(prod["status"], "awaiting_approval", "{view}");
    assert_eq!(prod["waiting"]["required"], 1, "{prod}");
    assert_eq!(prod["waiting"]["approvers"][0], "release-managers");
    assert_eq!(view["stages"][0]["waiting"], Value::Null);
}

#[tokio::test]
async fn a_run_lists_its_events_in_log_order() {
    let app = TestApp::start(Options::default()).await;
    let run = app.seed_run(&app.commits[0]).await;
    app.seed_run(&app.commits[1]).await;

    let a = app.get(&format!("/api/v1/runs/{run}/events")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let events = a.json();
    let events = events.as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["io.gantry.commit.received.v1", "io.gantry.run.started.v1"],
        "only this run's events"
    );
    for (e, position) in events.iter().zip(1..) {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["subject"], run.as_str());
        assert_eq!(e["runid"], run.as_str());
        assert_eq!(e["sequence"], position);
    }
    assert_eq!(events[1]["data"]["stages"][1]["name"], "prod");
}

#[tokio::test]
async fn an_unknown_run_is_a_404_problem() {
    let app = TestApp::start(Options::default()).await;
    for path in ["/api/v1/runs/nope", "/api/v1/runs/nope/events"] {
        assert_problem(&app.get(path).await, 404, &["no run `nope`"]);
    }
}
