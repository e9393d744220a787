//! Trust boundaries (DESIGN.md 1.7), attacked as a user who can push to the
//! configuration repository would: the repository's content tries every way
//! to read Gantry's own environment and files into a package, an event or a
//! command's output. Only what the stage declares under `env` is reachable,
//! declared secrets are masked everywhere but in the package itself, and the
//! canary variable every e2e process carries ([`crate::common::CANARY_VAR`]) shows
//! up nowhere.

use std::io::Read;
use std::time::Duration;

use crate::common::*;
use gantry_tests::GitRepo;
use serde_json::Value;

const DB_PASSWORD: &str = "db-pa55word-for-test-stage";

fn package_text(location: &str) -> String {
    let bytes = std::fs::read(location).expect("package");
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut tar)
        .expect("gzip");
    String::from_utf8_lossy(&tar).into_owned()
}

async fn trigger(base: &str, commit: &str) -> String {
    trigger_run(base, None, "trust", commit).await
}

#[tokio::test]
async fn repository_content_reaches_only_declared_variables_and_secrets_stay_masked() {
    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    repo.write(
        "gateway/values.yaml",
        "backend: '{{ env \"BACKEND_HOST\" }}'\ndb: '{{ env \"DB_PASSWORD\" }}'\n\
         probe: '{{ env \"GANTRY_E2E_CANARY\" \"not-reachable\" }}'\n",
    )
    .unwrap();
    // The entity that uses them (rendered into the package: `render: true`).
    repo.write(
        "gateway/_parent.yaml",
        "---\ntype: Root\nfields:\n  name: 'System {{ backend }} {{ db }} {{ probe }}'\n",
    )
    .unwrap();
    repo.write("environments/test.yaml", "---\n").unwrap();
    let good = repo.commit("declared variables only").unwrap();

    let dir = pipelines_dir("trust", &format!(
            "name: trust\nsource:\n  repo: {}\n  branch: main\n\
             gateway:\n  format: yaml\n  path: gateway/\n  render: true\n\
             stages:\n  - name: test\n    values: environments/test.yaml\n\
             \x20   env:\n      BACKEND_HOST: orders.test.internal\n      DB_PASSWORD: env:E2E_DB_PASSWORD\n\
             \x20   deploy:\n      command: [sh, -c, 'env; echo \"db=$DB_PASSWORD\"']\n",
            repo.path().display()
        ));
    let gantry = Gantry::start(dir.path(), &["up"], &[("E2E_DB_PASSWORD", DB_PASSWORD)]).await;
    let base = gantry.url();

    // 1. Declared variables reach the rendered package; the undeclared
    //    canary takes its default; the deploy command sees the stage's env.
    let run = trigger(&base, &good).await;
    let view = wait_run_ended(&base, &run, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{}", gantry.log_text());
    let events = get_json(&base, &format!("/api/v1/runs/{run}/events")).await;
    let built = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.package.built.v1")
        .expect("package.built")
        .clone();
    let package = package_text(built["data"]["location"].as_str().unwrap());
    assert!(package.contains("orders.test.internal"), "literal rendered");
    assert!(
        package.contains(DB_PASSWORD),
        "the gateway needs the secret"
    );
    assert!(package.contains("not-reachable"), "undeclared: the default");
    let deployed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.deploy.completed.v1")
        .expect("deploy.completed")
        .to_string();
    assert!(deployed.contains("db=***"), "{deployed}");

    // 2. The repository reaches for Gantry's environment and files: every
    //    attempt is an error naming the file, line and name.
    repo.write(
        "environments/test.yaml",
        "leak: env:GANTRY_E2E_CANARY\nhost_file: file:/proc/self/environ\n",
    )
    .unwrap();
    let attack = repo.commit("reach for Gantry's secrets").unwrap();
    let run2 = trigger(&base, &attack).await;
    let view = wait_run_ended(&base, &run2, Duration::from_secs(60), || gantry.log_text()).await;
    assert_eq!(view["status"], "failed", "{view}");
    let events = get_json(&base, &format!("/api/v1/runs/{run2}/events")).await;
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.package.failed.v1")
        .expect("package.failed")
        .clone();
    let diagnostics = failed["data"]["diagnostics"].as_array().unwrap();
    let messages: Vec<String> = diagnostics
        .iter()
        .map(|d| format!("{}:{}: {}", d["file"], d["line"], d["message"]))
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("environments/test.yaml")
            && m.contains(":1:")
            && m.contains("`GANTRY_E2E_CANARY` is not declared")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains(":2:") && m.contains("not allowed in repository content")),
        "{messages:?}"
    );

    // 3. Nothing Gantry answers holds the declared secret or the canary.
    for path in [
        "/api/v1/events?follow=false".to_owned(),
        format!("/api/v1/runs/{run}"),
        format!("/api/v1/runs/{run}/events"),
        format!("/api/v1/runs/{run2}/events"),
        format!("/api/v1/runs/{run}/stages/test/diff"),
        "/api/v1/pipelines/trust".to_owned(),
    ] {
        let body = reqwest::get(format!("{base}{path}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !body.contains(DB_PASSWORD),
            "{path} shows the secret: {body}"
        );
        assert!(!body.contains(&gantry.canary), "{path} shows the canary");
    }
    let log = gantry.log_text();
    assert!(!log.contains(DB_PASSWORD), "the log shows the secret");
    assert!(!log.contains(&gantry.canary), "the log shows the canary");
    // The package store, the event log (SQLite) and the mirrors: checked for
    // the canary when `gantry` is dropped.
}

/// `gantry pipelines validate` refuses credentials in a repository URL
/// without echoing them, and warns about settings that weaken a guard.
#[test]
fn validate_refuses_credentials_and_warns_about_risky_settings() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args([
                "pipelines",
                "validate",
                path.to_str().unwrap(),
                "--output",
                "json",
            ])
            .env_remove("GANTRY_API_TOKENS")
            .output()
            .unwrap()
    };
    let out = validate(
        "leaky.yaml",
        "name: leaky\nsource:\n  repo: https://rita:ghp_s3cr3t@git.example.com/a/b.git\n\
         gateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("source.token"), "{text}");
    assert!(!text.contains("ghp_s3cr3t"), "the secret is echoed: {text}");

    let out = validate(
        "risky.yaml",
        "name: risky\nsource:\n  repo: /srv/git/risky.git\n\
         gateway:\n  format: yaml\n  path: gateway/\n\
         image: { base: r.example.com/b:1, repository: r.example.com/x, insecure: true }\n\
         stages:\n  - name: prod\n    approval: { approvers: [rm], allow_self: true }\n",
    );
    let report: Value = serde_json::from_slice(&stdout_of(out)).unwrap();
    let fields: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "image.insecure",
            "stages[0].approval.allow_self",
            "stages[0].approval"
        ],
        "{report}"
    );
}
