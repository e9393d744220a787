//! A commit becomes per-stage images in a real registry: `gantry up` packages
//! the YAML project and pushes `<stage>-<short sha>` on top of a parent image,
//! checked with `skopeo`, the real client.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use gantry_imagebuild::layer::list_layer;
use gantry_tests::{GitRepo, Registry};
use serde_json::{json, Value};

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_commit_becomes_stage_images_in_a_real_registry() {
    let registry = Registry::start().await.unwrap();
    let base = push_parent(&registry, "axway/apigw-emt").await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    repo.write("gateway/values.yaml", "---\ngreeting: hello\n")
        .unwrap();
    repo.write("environments/test.yaml", "---\ngreeting: hello test\n")
        .unwrap();
    repo.write("environments/prod.yaml", "---\ngreeting: hello prod\n")
        .unwrap();
    let commit = repo.commit("config").unwrap();

    let dir = pipelines_dir("banking", &format!(
            "{}image:\n  base: {base}\n  repository: {}/apim/banking-gateway\n\
             stages:\n  - name: test\n    values: environments/test.yaml\n  - name: prod\n    values: environments/prod.yaml\n",
            banking(repo.path().display()),
            registry.host_port()
        ));
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    gantry.watch(registry.storage_dir());
    let base_url = gantry.url();

    // A signed push from the "forge" for this local repository.
    let run_id = push_local_commit(
        &base_url,
        &repo,
        &commit,
        json!({ "name": "Dev", "email": "dev@example.com" }),
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pushed = loop {
        let events = get_json(&base_url, &format!("/api/v1/runs/{run_id}/events")).await;
        let events = events.as_array().cloned().unwrap_or_default();
        let pushed: Vec<Value> = events
            .iter()
            .filter(|e| e["type"] == "io.gantry.image.pushed.v1")
            .cloned()
            .collect();
        assert!(
            !events
                .iter()
                .any(|e| e["type"] == "io.gantry.image.failed.v1"
                    || e["type"] == "io.gantry.package.failed.v1"),
            "{events:?}\n{}",
            gantry.log_text()
        );
        if pushed.len() == 2 {
            break pushed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "images not pushed: {events:?}\n{}",
            gantry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let short = &commit[..7];
    for (stage, event) in ["test", "prod"].iter().zip(&pushed) {
        let data = &event["data"];
        assert_eq!(data["stage"], *stage);
        assert_eq!(data["tag"], format!("{stage}-{short}"));
        assert!(
            data["bytes_reused"].as_u64().unwrap() > 0,
            "the parent layer is reused: {data}"
        );
        let reference = format!(
            "docker://{}/apim/banking-gateway:{stage}-{short}",
            registry.host_port()
        );
        let inspect: Value =
            serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &reference])).unwrap();
        assert_eq!(inspect["Digest"], data["digest"]);
        let labels = &inspect["Labels"];
        assert_eq!(labels["org.opencontainers.image.revision"], commit.as_str());
        assert_eq!(labels["io.gantry.pipeline"], "banking");
        assert_eq!(labels["io.gantry.stage"], *stage);
        assert_eq!(labels["vendor"], "Axway", "parent labels are kept");

        // The new layer holds exactly the stage's package.
        let copy = tempfile::tempdir().unwrap();
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &reference,
            &format!("dir:{}", copy.path().display()),
        ]);
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(copy.path().join("manifest.json")).unwrap())
                .unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "parent layer + one stage layer");
        let last = layers[1]["digest"].as_str().unwrap();
        let gz = std::fs::read(copy.path().join(&last[7..])).unwrap();
        let files: Vec<String> = list_layer(&gz)
            .unwrap()
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| e.path)
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let run_view = get_json(&base_url, &format!("/api/v1/runs/{run_id}")).await;
        let stage_view = run_view["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == *stage)
            .unwrap()
            .clone();
        assert_eq!(stage_view["image_digest"], data["digest"]);
        // What the stage runs now, once the conductor has promoted it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let pipeline = get_json(&base_url, "/api/v1/pipelines/banking").await;
            let current = pipeline["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == *stage)
                .unwrap()["current"]
                .clone();
            if current["run_id"] == run_id.as_str() {
                assert_eq!(current["digest"], data["digest"], "{current}");
                assert_eq!(current["commit"], commit.as_str());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stage} was not promoted: {pipeline}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_ne!(
        pushed[0]["data"]["digest"], pushed[1]["data"]["digest"],
        "stages differ by their values"
    );
}
