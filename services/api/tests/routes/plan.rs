//! `GET /api/v1/runs/{id}/stages/{stage}/apis/plan`: what promoting the
//! run's API Manager configuration into the stage would change, read from
//! the stage's API Manager (a contract double here) without writing.

use serde_json::json;

use crate::support::{assert_problem, Options, TestApp};

fn pipeline(live: &str, closed: u16) -> String {
    format!(
        "\
name: apis
source: {{ repo: REPO, branch: main }}
gateway: {{ format: yaml, path: gateway/ }}
apis: {{ path: apis/ }}
stages:
  - name: plain
  - name: down
    apimanager: {{ url: \"http://127.0.0.1:{closed}\", username: SECRET(apiadmin), password: SECRET(changeme) }}
  - name: live
    apimanager: {{ url: \"{live}\", username: SECRET(apiadmin), password: SECRET(changeme) }}
"
    )
}

/// Commits an apim-cli configuration of one API; returns the commit.
fn commit_api(app: &TestApp) -> String {
    let spec = gantry_tests::wiremock::default_fixture_dir().join("../examples/petstore.json");
    app.repo
        .write("apis/petstore/petstore.json", std::fs::read(spec).unwrap())
        .unwrap();
    let config = json!({
        "name": "Petstore",
        "path": "/petstore",
        "state": "published",
        "organization": "API Development",
        "apiSpecification": { "resource": "petstore.json" }
    });
    app.repo
        .write("apis/petstore/api-config.json", config.to_string())
        .unwrap();
    app.repo.commit("the Petstore API").unwrap()
}

#[tokio::test]
async fn a_plan_lists_what_a_promotion_would_change_without_writing() {
    let double = gantry_tests::apimanager::ApiManagerDouble::start()
        .await
        .unwrap();
    double.add_organization("API Development");
    let closed = gantry_tests::free_port();
    let app = TestApp::start(Options::default().pipeline(&pipeline(&double.url(), closed))).await;
    let commit = commit_api(&app);
    let run = app.seed_run_of("apis", &commit).await;

    let a = app
        .get(&format!("/api/v1/runs/{run}/stages/live/apis/plan"))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let plan = a.json();
    assert_eq!(plan["pipeline"], "apis");
    assert_eq!(plan["stage"], "live");
    assert_eq!(plan["commit"], commit.as_str());
    assert_eq!(plan["noop"], false);
    let changes = plan["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["action"] == "create" && c["target"].as_str().unwrap().contains("Petstore")),
        "{plan}"
    );
    assert_eq!(plan["refused"], json!([]));
    assert!(double.proxies().is_empty(), "a plan writes nothing");
    assert!(
        double.write_calls().is_empty(),
        "{:?}",
        double.write_calls()
    );

    // An API Manager that does not answer: 422 with the reason.
    let p = assert_problem(
        &app.get(&format!("/api/v1/runs/{run}/stages/down/apis/plan"))
            .await,
        422,
        &["the API Manager plan failed"],
    );
    assert!(p["breaking_fields"].is_array(), "{p}");
}

#[tokio::test]
async fn a_plan_needs_a_run_and_a_stage_with_an_api_manager() {
    let app = TestApp::start(Options::default().pipeline(&pipeline("http://127.0.0.1:1", 1))).await;
    assert_problem(
        &app.get("/api/v1/runs/nope/stages/live/apis/plan").await,
        404,
        &["no run `nope`"],
    );
    let run = app.seed_run_of("apis", &app.commits[0]).await;
    assert_problem(
        &app.get(&format!("/api/v1/runs/{run}/stages/qa/apis/plan"))
            .await,
        404,
        &["has no stage `qa`"],
    );
    assert_problem(
        &app.get(&format!("/api/v1/runs/{run}/stages/plain/apis/plan"))
            .await,
        409,
        &["stage `plain` of `apis` has no `apimanager`: nothing to plan"],
    );
}
