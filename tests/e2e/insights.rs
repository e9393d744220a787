//! DORA's keys as a dashboard and a user read them: `GET
//! /api/v1/insights/dora`, `gantry insights dora` and the `gantry_dora_*`
//! series on `/metrics`, after real promotions.

use std::time::Duration;

use crate::common::*;
use gantry_tests::GitRepo;
use serde_json::Value;

#[tokio::test]
async fn promotions_show_up_as_dora_keys_in_the_api_the_cli_and_metrics() {
    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    repo.write("gateway/values.yaml", "---\nchange: 2\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{}stages:\n  - name: test\n  - name: prod\n",
            banking(repo.path().display())
        ),
    );
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    for commit in [&first, &second] {
        let run = trigger_run(&base, None, "banking", commit).await;
        let view = wait_run_ended(&base, &run, Duration::from_secs(60), || gantry.log_text()).await;
        assert_eq!(view["status"], "succeeded", "{view}");
    }

    let one = get_json(
        &base,
        "/api/v1/insights/dora?pipeline=banking&stage=prod&days=7",
    )
    .await;
    assert_eq!(one["pipeline"], "banking");
    assert_eq!(one["stage"], "prod");
    assert_eq!(one["days"], 7);
    assert_eq!(one["deployments"], 2, "{one}");
    assert_eq!(one["failed_changes"], 0, "{one}");
    assert_eq!(one["change_failure_rate"], 0.0, "{one}");
    let p50 = one["lead_time_seconds"]["p50"]
        .as_i64()
        .expect("a lead time");
    assert!((0..600).contains(&p50), "{one}");
    assert!(one["time_to_restore_seconds"]["p50"].is_null(), "{one}");

    let all = get_json(&base, "/api/v1/insights/dora").await;
    let stages: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["prod", "test"], "{all}");
    let bad = reqwest::get(format!("{base}/api/v1/insights/dora?days=0"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["insights", "dora", "--stage", "test", "--output", "json"])
        .current_dir(dir.path())
        .env("GANTRY_LISTEN", format!("127.0.0.1:{}", gantry.port))
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&stdout_of(out)).unwrap();
    assert_eq!(cli.as_array().map(Vec::len), Some(1), "{cli}");
    assert_eq!(cli[0]["deployments"], 2, "{cli}");

    let metrics = get_text(&base, "/metrics").await;
    assert!(
        metrics.contains("gantry_dora_deployments{pipeline=\"banking\",stage=\"prod\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "gantry_dora_lead_time_seconds{pipeline=\"banking\",stage=\"prod\",quantile=\"0.5\"}"
        ),
        "{metrics}"
    );

    // The console shows the same keys per stage, with the trend against
    // the 30 days before (nothing then: more deployments is better).
    let page = get_text(&base, "/pipelines/banking").await;
    let dora = page
        .split("<section id=\"dora\"")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .unwrap_or_else(|| panic!("no DORA section in {page}"));
    let prod = dora
        .split("<tr data-stage=\"prod\">")
        .nth(1)
        .and_then(|s| s.split("</tr>").next())
        .unwrap_or_else(|| panic!("no prod row in {dora}"));
    assert!(prod.contains("2 (0.1/day)"), "{prod}");
    assert!(
        prod.contains("trend better") && prod.contains("better (before: 0)"),
        "{prod}"
    );
    assert!(prod.contains("0% (0 failed)"), "{prod}");
}
