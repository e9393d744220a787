//! Release managers approve a guarded stage through the API: only members of
//! the approver groups count, the commit's author cannot approve their own
//! change, two distinct approvals promote, a rejection stops the run.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn get(&self, token: &str, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Triggers a run of `commit` on pipeline `banking` as `token`'s user.
    async fn trigger(&self, token: &str, commit: &str) -> String {
        trigger_run(&self.base, Some(token), "banking", commit).await
    }

    async fn decide(
        &self,
        token: &str,
        run: &str,
        stage: &str,
        verb: &str,
        body: Value,
    ) -> (u16, Value) {
        let resp = self
            .http
            .post(format!(
                "{}/api/v1/runs/{run}/stages/{stage}/{verb}",
                self.base
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    async fn wait_status(&self, run: &str, stage: &str, status: &str) -> Value {
        wait_stage_status(
            &self.base,
            Some("tok-rita"),
            run,
            (stage, status),
            Duration::from_secs(30),
        )
        .await
    }
}

#[tokio::test]
async fn prod_waits_for_two_release_managers_and_refuses_the_author_and_outsiders() {
    let repo = gantry_tests::GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    repo.write("gateway/values.yaml", "---\na: 1\n").unwrap();
    let second = repo.commit("second").unwrap();

    let dir = pipelines_dir("banking", &format!(
            "{}stages:\n  - name: test\n  - name: prod\n\
             \x20   approval: {{ required: 2, approvers: [release-managers], allow_self: false }}\n",
            banking(repo.path().display())
        ));
    let tokens_path = write_api_tokens(dir.path(), TOKENS);
    let gantry = Gantry::start(dir.path(), &["up"], &[("GANTRY_API_TOKENS", &tokens_path)]).await;
    let api = Client {
        base: gantry.url(),
        http: reqwest::Client::new(),
    };

    // Every /api call needs a known token.
    let anonymous = reqwest::get(format!("{}/api/v1/runs", api.base))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // dev1 pushes the first commit (author username dev1).
    let run = push_local_commit(
        &api.base,
        &repo,
        &first,
        json!({ "name": "Dev One", "email": "dev@example.com", "username": "dev1" }),
    )
    .await;

    // test promotes by itself; prod waits, and says why.
    let view = api.wait_status(&run, "prod", "awaiting_approval").await;
    let prod = view["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "prod")
        .unwrap();
    assert_eq!(prod["waiting"]["required"], 2, "{prod}");
    assert_eq!(view["stages"][0]["status"], "promoted");

    let (status, problem) = api
        .decide("tok-out", &run, "prod", "approve", json!({}))
        .await;
    assert_eq!(status, 403, "an outsider: {problem}");
    let (status, problem) = api
        .decide("tok-dev", &run, "prod", "approve", json!({}))
        .await;
    assert_eq!(status, 403, "the author: {problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("own change"),
        "{problem}"
    );

    let (status, _) = api
        .decide(
            "tok-rita",
            &run,
            "prod",
            "approve",
            json!({ "comment": "looks good" }),
        )
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = api.get("tok-rita", &format!("/api/v1/runs/{run}")).await;
    assert_eq!(view["status"], "running", "one approval of two: {view}");
    let (status, _) = api
        .decide("tok-sam", &run, "prod", "approve", json!({}))
        .await;
    assert_eq!(status, 201);
    let view = api.wait_status(&run, "prod", "promoted").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut view = view;
    while view["status"] != "succeeded" {
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        view = api.get("tok-rita", &format!("/api/v1/runs/{run}")).await;
    }
    let approvals = view["stages"][1]["approvals"].as_array().unwrap();
    let users: Vec<&str> = approvals
        .iter()
        .map(|a| a["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["rita", "sam"]);

    // A second commit, rejected: the run fails and prod keeps the first.
    let run2 = api.trigger("tok-dev", &second).await;
    api.wait_status(&run2, "prod", "awaiting_approval").await;
    let (status, _) = api
        .decide("tok-sam", &run2, "prod", "reject", json!({}))
        .await;
    assert_eq!(status, 400, "a rejection needs a reason");
    let (status, _) = api
        .decide(
            "tok-sam",
            &run2,
            "prod",
            "reject",
            json!({ "reason": "freeze week" }),
        )
        .await;
    assert_eq!(status, 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = api.get("tok-rita", &format!("/api/v1/runs/{run2}")).await;
        if view["status"] == "failed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pipeline = api.get("tok-rita", "/api/v1/pipelines/banking").await;
    assert_eq!(
        pipeline["stages"][1]["current"]["run_id"],
        run.as_str(),
        "{pipeline}"
    );
    assert_eq!(
        pipeline["stages"][0]["current"]["run_id"],
        run2.as_str(),
        "{pipeline}"
    );
    // Deciding on an ended run is refused.
    let (status, _) = api
        .decide("tok-rita", &run2, "prod", "approve", json!({}))
        .await;
    assert_eq!(status, 409);
}

/// Separation of duties beyond the commit's own metadata (DESIGN.md 1.7):
/// whoever pushed (as the forge authenticated them) and whoever triggered by
/// hand are authors too; an approval counts only once the stage asks for it.
#[tokio::test]
async fn the_pusher_and_the_triggerer_are_authors_and_early_approvals_are_refused() {
    let repo = gantry_tests::GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    repo.write("gateway/values.yaml", "---\na: 1\n").unwrap();
    let second = repo.commit("second").unwrap();

    let dir = pipelines_dir(
        "banking",
        &format!(
            "{}stages:\n\
             \x20 - name: test\n    approval: {{ approvers: [release-managers] }}\n\
             \x20 - name: prod\n    approval: {{ approvers: [release-managers] }}\n",
            banking(repo.path().display())
        ),
    );
    let tokens_path = write_api_tokens(dir.path(), TOKENS);
    let gantry = Gantry::start(dir.path(), &["up"], &[("GANTRY_API_TOKENS", &tokens_path)]).await;
    let api = Client {
        base: gantry.url(),
        http: reqwest::Client::new(),
    };

    // dev1 pushes a commit that claims someone else wrote it.
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "after": first,
        "repository": { "clone_url": format!("file://{}", repo.path().display()) },
        "head_commit": { "message": "config", "author": { "name": "Someone Else", "email": "else@example.com" } },
        "pusher": { "name": "dev1", "email": "dev@example.com" },
        "sender": { "login": "dev1" }
    }))
    .unwrap();
    let resp = post_github_push(&api.base, body).await;
    assert_eq!(resp.status(), 202);
    let run = resp.json::<Value>().await.unwrap()["runs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.wait_status(&run, "test", "awaiting_approval").await;

    // prod has not asked yet: an approval now would be blind.
    let (status, problem) = api
        .decide("tok-rita", &run, "prod", "approve", json!({}))
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not waiting for approval"),
        "{problem}"
    );
    let (status, problem) = api
        .decide("tok-dev", &run, "test", "approve", json!({}))
        .await;
    assert_eq!(status, 403, "the pusher: {problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("author"),
        "{problem}"
    );
    let (status, _) = api
        .decide("tok-rita", &run, "test", "approve", json!({}))
        .await;
    assert_eq!(status, 201);
    api.wait_status(&run, "prod", "awaiting_approval").await;
    let (status, _) = api
        .decide("tok-sam", &run, "prod", "approve", json!({}))
        .await;
    assert_eq!(status, 201);
    api.wait_status(&run, "prod", "promoted").await;

    // sam triggers the second commit by hand: sam may not approve it.
    let run2 = api.trigger("tok-sam", &second).await;
    api.wait_status(&run2, "test", "awaiting_approval").await;
    let (status, problem) = api
        .decide("tok-sam", &run2, "test", "approve", json!({}))
        .await;
    assert_eq!(status, 403, "the triggerer: {problem}");
    let (status, _) = api
        .decide("tok-rita", &run2, "test", "approve", json!({}))
        .await;
    assert_eq!(status, 201);
}

/// Without API tokens nobody can be told apart: approvals that need
/// identities are refused; a stage anyone may approve still works.
#[tokio::test]
async fn without_tokens_approvals_that_need_identities_are_refused() {
    let repo = gantry_tests::GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let commit = repo.commit("first").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!(
            "name: banking\nsource:\n  repo: {}\n  branch: main\n\
             gateway:\n  format: yaml\n  path: gateway/\nstages:\n\
             \x20 - name: test\n    approval: {{}}\n\
             \x20 - name: prod\n    approval: {{ approvers: [release-managers] }}\n",
            repo.path().display()
        ),
    );
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let http = reqwest::Client::new();
    let run = trigger_run(&base, None, "banking", &commit).await;
    let approve = |stage: &'static str| {
        let (http, url) = (
            http.clone(),
            format!("{base}/api/v1/runs/{run}/stages/{stage}/approve"),
        );
        async move {
            let resp = http
                .post(url)
                .json(&json!({ "user": "rita" }))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let ty = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            (
                status,
                ty,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    wait_stage_status(
        &base,
        None,
        &run,
        ("test", "awaiting_approval"),
        Duration::from_secs(30),
    )
    .await;
    let (status, _, _) = approve("test").await;
    assert_eq!(status, 201, "anyone may approve `test`");
    wait_stage_status(
        &base,
        None,
        &run,
        ("prod", "awaiting_approval"),
        Duration::from_secs(30),
    )
    .await;
    let (status, ty, problem) = approve("prod").await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(ty.as_deref(), Some("application/problem+json"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("GANTRY_API_TOKENS"),
        "{problem}"
    );
}
