//! `gantry quickstart`: from an empty directory to prod promoted after two
//! release managers approve with the tokens it wrote; the images are in its
//! OCI layout and the GitOps repository has a commit per deploy.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// `VAR=value` of the tokens file.
fn token(tokens: &str, var: &str) -> String {
    tokens
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var} in the tokens file"))
        .trim()
        .to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn approve(base: &str, token: &str, run: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/runs/{run}/stages/prod/approve"))
        .bearer_auth(token)
        .json(&json!({ "comment": "looks good" }))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn quickstart_promotes_to_prod_after_two_release_managers_approve() {
    let work = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(work.path(), &["quickstart"], &[]).await;
    let base = gantry.url();
    let qs = work.path().join("gantry-quickstart");

    let tokens_file = qs.join("tokens.env");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&tokens_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the tokens file is private");
    }
    let tokens = std::fs::read_to_string(&tokens_file).unwrap();
    let (dana, rita, sam) = (
        token(&tokens, "DANA_TOKEN"),
        token(&tokens, "RITA_TOKEN"),
        token(&tokens, "SAM_TOKEN"),
    );
    let unauthenticated = reqwest::get(format!("{base}/api/v1/runs")).await.unwrap();
    assert_eq!(unauthenticated.status(), 401, "the API needs the tokens");

    // The quickstart triggered a run of the configuration's head.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs = get_json_as(&base, Some(&dana), "/api/v1/runs?pipeline=quickstart").await;
        if let Some(id) = runs[0]["run_id"].as_str() {
            break id.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run: {runs}\n{}",
            gantry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let view = wait_stage_status(
        &base,
        Some(&rita),
        &run,
        ("prod", "awaiting_approval"),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(view["stages"][0]["status"], "promoted", "{view}");
    assert_eq!(view["stages"][1]["status"], "promoted", "{view}");

    // The developer may not approve their own change; the two release managers do.
    let (status, problem) = approve(&base, &dana, &run).await;
    assert_eq!(status, 403, "{problem}");
    let (status, body) = approve(&base, &rita, &run).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = approve(&base, &sam, &run).await;
    assert_eq!(status, 201, "{body}");
    let view = wait_run_ended_as(&base, Some(&rita), &run, Duration::from_secs(60), || {
        gantry.log_text()
    })
    .await;
    assert_eq!(view["status"], "succeeded", "{view}\n{}", gantry.log_text());

    // prod's image is in the OCI layout, under its tag.
    let events = get_json_as(&base, Some(&rita), &format!("/api/v1/runs/{run}/events")).await;
    let pushed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "io.gantry.image.pushed.v1" && e["data"]["stage"] == "prod")
        .unwrap_or_else(|| panic!("no image for prod: {events:#}"));
    let (tag, digest) = (
        pushed["data"]["tag"].as_str().unwrap(),
        pushed["data"]["digest"].as_str().unwrap(),
    );
    let layout = qs.join("registry/gateway");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert!(
        index["manifests"].as_array().unwrap().iter().any(|m| {
            m["digest"] == digest && m["annotations"]["org.opencontainers.image.ref.name"] == tag
        }),
        "{tag} {digest} not in {index:#}"
    );
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(layout.join("blobs/sha256").join(hex).is_file());

    // The GitOps repository got a commit per stage; prod runs that digest.
    let gitops = qs.join("gitops.git");
    let log = git(&gitops, &["log", "--format=%s", "main"]);
    for stage in ["dev", "test", "prod"] {
        assert!(log.contains(&format!("deploy {stage}:")), "{log}");
    }
    let prod = git(&gitops, &["show", "main:envs/prod/values.yaml"]);
    assert!(prod.contains(digest), "{prod}");

    // `--commit`: another change, another run.
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["quickstart", "--commit", "--dir"])
        .arg(&qs)
        .env("GANTRY_SERVER", &base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = get_json_as(&base, Some(&dana), "/api/v1/runs?pipeline=quickstart").await;
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    assert_ne!(runs[0]["commit"], runs[1]["commit"], "{runs}");
    assert_eq!(runs[0]["message"], "Quickstart release 2", "{runs}");
}
