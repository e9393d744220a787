//! API Manager promotion through the binary: a stage with `apimanager`
//! reconciles the commit's apim-cli configuration into the stage's API
//! Manager (the contract double of `gantry_tests::apimanager`), a dry run
//! shows the changes before an approval, an unchanged configuration writes
//! nothing, and a breaking change the stage does not allow fails the run and
//! leaves API Manager as it was.

use std::time::Duration;

use crate::common::*;
use gantry_tests::apimanager::ApiManagerDouble;
use serde_json::{json, Value};

fn api_config(summary: &str, security: &str) -> String {
    json!({
        "name": "Petstore",
        "path": "/petstore/v1",
        "state": "published",
        "version": "1.0.0",
        "organization": "API Development",
        "summary": summary,
        "apiSpecification": { "resource": "petstore.json" },
        "securityProfiles": [{
            "name": "_default",
            "isDefault": true,
            "devices": [{
                "name": security,
                "type": "apiKey",
                "order": 1,
                "properties": { "apiKeyFieldName": security, "takeFrom": "HEADER", "removeCredentialsOnSuccess": "true" }
            }]
        }],
        "clientOrganizations": ["Partners"],
        "applications": [{ "name": "Partner App" }]
    })
    .to_string()
}

fn events_named<'a>(events: &'a Value, name: &str) -> Vec<&'a Value> {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == format!("io.gantry.{name}.v1"))
        .collect()
}

#[tokio::test]
async fn api_manager_data_is_promoted_planned_and_never_broken() {
    let apim = ApiManagerDouble::start().await.unwrap();
    apim.add_organization("API Development");
    let partners = apim.add_organization("Partners");
    let app = apim.add_application("Partner App", "Partners");

    let repo = petstore_project();
    repo.write(
        "apis/petstore/api-config.json",
        api_config("Pets for ${AUDIENCE}", "KeyId"),
    )
    .unwrap();
    let first = repo.commit("first").unwrap();

    let dir = pipelines_dir("banking", &format!(
            "{head}apis:\n  path: apis/\n\
             stages:\n  - name: test\n\
             \x20   apimanager: {{ url: \"{url}\", username: env:APIM_USER, password: env:APIM_PASS }}\n\
             \x20   approval: {{ required: 1 }}\n\
             \x20   env: {{ AUDIENCE: partners }}\n",
            head = banking(repo.path().display()),
            url = apim.url(),
        ));
    let gantry = Gantry::start(
        dir.path(),
        &["up"],
        &[("APIM_USER", "apiadmin"), ("APIM_PASS", "changeme")],
    )
    .await;
    let base = gantry.url();
    let author = json!({ "name": "Dev", "email": "dev@example.com" });
    let http = reqwest::Client::new();
    let approve = |run: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let resp = http
                .post(format!("{base}/api/v1/runs/{run}/stages/test/approve"))
                .json(&json!({ "user": "rita" }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        }
    };
    let wait_for_approval = |run: String| {
        let base = base.clone();
        async move {
            let at = ("test", "awaiting_approval");
            wait_stage_status(&base, None, &run, at, Duration::from_secs(30)).await;
        }
    };
    // The CLI runs on a blocking thread: the API Manager double answers
    // from this test's runtime.
    let plan = |run: String| {
        let dir = dir.path().to_owned();
        let base = base.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
                    .args(["apis", "plan", &run, "test", "--output", "json"])
                    .current_dir(&dir)
                    .env("GANTRY_SERVER", &base)
                    .output()
                    .expect("run gantry")
            })
            .await
            .unwrap();
            serde_json::from_slice::<Value>(&stdout_of(out)).unwrap()
        }
    };

    // 1. First promotion: the API is created, published, granted, subscribed.
    let run1 = push_local_commit(&base, &repo, &first, author.clone()).await;
    wait_for_approval(run1.clone()).await;
    let preview = plan(run1.clone()).await;
    assert_eq!(preview["noop"], false, "{preview:#}");
    assert!(
        preview["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["action"] == "create" && c["target"] == "api Petstore /petstore/v1"),
        "{preview:#}"
    );
    assert!(apim.proxies().is_empty(), "a plan writes nothing");
    approve(run1.clone()).await;
    let view = wait_run_ended(&base, &run1, Duration::from_secs(60), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run1}/events")).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{events:#}");
    let promoted = events_named(&events, "apis.promoted")[0];
    let actions: Vec<&str> = promoted["data"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"create"), "{promoted}");
    assert!(actions.contains(&"grant"), "{promoted}");
    assert!(actions.contains(&"subscribe"), "{promoted}");
    let proxies = apim.proxies();
    assert_eq!(proxies.len(), 1, "{proxies:#?}");
    let proxy = &proxies[0];
    assert_eq!(proxy["path"], "/petstore/v1");
    assert_eq!(proxy["state"], "published");
    assert_eq!(
        proxy["summary"], "Pets for partners",
        "${{AUDIENCE}} substituted"
    );
    let proxy_id = proxy["id"].as_str().unwrap().to_owned();
    assert!(apim.org_access(&proxy_id).contains(&partners));
    assert_eq!(apim.app_access(&app), vec![proxy_id.clone()]);
    assert!(
        !promoted.to_string().contains("changeme"),
        "no secret in events"
    );

    // 2. Nothing changed in the API configuration: not a single write.
    repo.write("README.md", "docs only\n").unwrap();
    let second = repo.commit("docs").unwrap();
    apim.clear_requests();
    let run2 = push_local_commit(&base, &repo, &second, author.clone()).await;
    wait_for_approval(run2.clone()).await;
    assert_eq!(plan(run2.clone()).await["noop"], true);
    approve(run2.clone()).await;
    let view = wait_run_ended(&base, &run2, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let events = get_json(&base, &format!("/api/v1/runs/{run2}/events")).await;
    assert_eq!(
        events_named(&events, "apis.promoted")[0]["data"]["changes"],
        json!([])
    );
    assert_eq!(apim.write_calls(), Vec::<String>::new());
    assert!(!apim.requests().is_empty(), "it did look");

    // 3. A summary change through the stage overlay: API Manager takes
    //    `summary` only while an API is unpublished, so the plan says
    //    republish (not breaking: allowed without `breaking_changes`), and
    //    the same proxy ends up with the new summary and its grants.
    repo.write(
        "apis/petstore/api-config.test.json",
        json!({ "summary": "Pets, tested" }).to_string(),
    )
    .unwrap();
    let third = repo.commit("summary").unwrap();
    let run3 = push_local_commit(&base, &repo, &third, author.clone()).await;
    wait_for_approval(run3.clone()).await;
    let preview = plan(run3.clone()).await;
    let changes = preview["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["target"] == "api Petstore /petstore/v1"
                && c["action"] == "republish"
                && c["fields"].as_array().unwrap().contains(&json!("summary"))),
        "{preview:#}"
    );
    assert_eq!(preview["refused"], json!([]));
    approve(run3.clone()).await;
    let view = wait_run_ended(&base, &run3, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let proxies = apim.proxies();
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0]["summary"], "Pets, tested");
    assert_eq!(proxies[0]["id"], proxy_id.as_str(), "the same proxy");
    assert_eq!(proxies[0]["state"], "published");
    assert!(
        apim.org_access(&proxy_id).contains(&partners),
        "grants kept"
    );
    assert_eq!(
        apim.app_access(&app),
        vec![proxy_id.clone()],
        "subscription kept"
    );

    // 4. A breaking change (the API key header) on a stage that does not
    //    allow them: refused in the plan, failed in the run, nothing written.
    repo.write(
        "apis/petstore/api-config.json",
        api_config("Pets for ${AUDIENCE}", "X-Api-Key"),
    )
    .unwrap();
    let fourth = repo.commit("breaking").unwrap();
    let run4 = push_local_commit(&base, &repo, &fourth, author).await;
    wait_for_approval(run4.clone()).await;
    let preview = plan(run4.clone()).await;
    assert!(
        preview["refused"][0]["fields"]
            .as_array()
            .unwrap()
            .contains(&json!("securityProfiles")),
        "{preview:#}"
    );
    apim.clear_requests();
    approve(run4.clone()).await;
    let view = wait_run_ended(&base, &run4, Duration::from_secs(60), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run4}/events")).await;
    assert_eq!(view["status"], "failed", "{view}\n{events:#}");
    let failed = events_named(&events, "apis.failed")[0];
    assert!(
        failed["data"]["breaking_fields"]
            .as_array()
            .unwrap()
            .contains(&json!("securityProfiles")),
        "{failed}"
    );
    assert!(
        failed["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("breaking_changes"),
        "the reason says how to allow it: {failed}"
    );
    // The stage went back to run3's configuration, which API Manager still has.
    assert_eq!(
        events_named(&events, "stage.rolled_back")[0]["data"]["to_run"],
        run3.as_str()
    );
    assert_eq!(apim.write_calls(), Vec::<String>::new());
    assert_eq!(
        apim.proxies()[0]["securityProfiles"][0]["devices"][0]["properties"]["apiKeyFieldName"],
        "KeyId"
    );
    // Gantry's own environment reached no request API Manager received.
    let requests = apim.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(
            !format!("{r:?}").contains(&gantry.canary),
            "the canary reached API Manager: {r:?}"
        );
    }
}
