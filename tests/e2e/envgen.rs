//! `run.started` → per-stage packages, through the real binary: a real git
//! repository holding Axway's sample YAML Entity Store project, checked out
//! at the run's commit, validated and packaged for each stage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use gantry_tests::GitRepo;
use serde_json::{json, Value};
use sha2::Digest;

fn fixture_project() -> PathBuf {
    fixture("yamles/yamles-utils-apim/apim")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Events of `run` once `count` of `ty` exist (30 s at most).
async fn wait_events(base: &str, run: &str, ty: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = get_json(base, &format!("/api/v1/runs/{run}/events")).await;
        let events = events.as_array().cloned().unwrap_or_default();
        if events.iter().filter(|e| e["type"] == ty).count() >= count {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {count} × {ty} for {run}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `gantry up` with pipeline `sample`: `repo`'s gateway in `format` at `path`,
/// stages `test` and `prod` with their values files.
async fn start_sample(repo: &GitRepo, format: &str, path: &str) -> Gantry {
    let dir = pipelines_dir(
        "sample",
        &format!(
            "name: sample\nsource:\n  repo: {}\n  branch: main\ngateway:\n  format: {format}\n  path: {path}\n\
             stages:\n  - name: test\n    values: environments/test.yaml\n  - name: prod\n    values: environments/prod.yaml\n",
            repo.path().display()
        ),
    );
    Gantry::start_owning(dir, &["up"], &[]).await
}

async fn trigger(base: &str, commit: &str) -> String {
    trigger_run(base, None, "sample", commit).await
}

#[tokio::test]
async fn sample_project_is_packaged_per_stage_and_a_broken_reference_is_located() {
    let repo = GitRepo::init().unwrap();
    copy_tree(&fixture_project(), &repo.path().join("gateway"));
    repo.write("environments/test.yaml", "---\n").unwrap();
    repo.write("environments/prod.yaml", "---\n").unwrap();
    let good = repo.commit("sample project").unwrap();

    let gantry = start_sample(&repo, "yaml", "gateway/").await;
    let base = gantry.url();

    let run = trigger(&base, &good).await;
    let events = wait_events(&base, &run, "io.gantry.package.built.v1", 2).await;
    let built: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "io.gantry.package.built.v1")
        .collect();
    let stages: Vec<&str> = built
        .iter()
        .map(|e| e["data"]["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["test", "prod"]);
    for e in &built {
        let data = &e["data"];
        assert_eq!(data["format"], "yaml");
        assert!(data["files"].as_u64().unwrap() > 1000, "{data}");
        let location = data["location"].as_str().unwrap();
        let bytes = std::fs::read(location).unwrap();
        assert_eq!(bytes.len() as u64, data["size"].as_u64().unwrap());
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(data["digest"], digest.as_str(), "content-addressed");
        assert!(location.ends_with(&format!("{}.tar.gz", &digest[7..])));
        assert_eq!(e["causationid"], events[1]["id"], "caused by run.started");
    }
    let run_view = get_json(&base, &format!("/api/v1/runs/{run}")).await;
    assert!(
        ["packaged", "deploying", "promoted"]
            .contains(&run_view["stages"][0]["status"].as_str().unwrap()),
        "{run_view}"
    );
    // Stages without deploy steps are promoted as soon as their packages exist.
    let events = wait_events(&base, &run, "io.gantry.run.succeeded.v1", 1).await;
    let promoted: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "io.gantry.env.promoted.v1")
        .map(|e| e["data"]["stage"].as_str().unwrap())
        .collect();
    assert_eq!(promoted, ["test", "prod"]);

    // Break one entity reference: both stages fail, naming the file and line.
    let broken = "Policies/Demo/Demo Service.yaml";
    let path = repo.path().join("gateway").join(broken);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let target = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(": ./") || l.contains(": ../") || l.contains(": /"))
        .map(|(i, l)| (i + 1, l.to_owned()));
    let (line_no, line) = target.expect("the sample policy has an entity reference");
    let (key, value) = line.split_once(": ").unwrap();
    let text = text.replacen(&line, &format!("{key}: {value}-does-not-exist"), 1);
    std::fs::write(&path, text).unwrap();
    let bad = repo.commit("break a reference").unwrap();
    let run = trigger(&base, &bad).await;
    let events = wait_events(&base, &run, "io.gantry.package.failed.v1", 2).await;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "io.gantry.package.failed.v1")
        .collect();
    for e in failed {
        let diags = e["data"]["diagnostics"].as_array().unwrap();
        assert!(
            diags
                .iter()
                .any(|d| d["file"] == broken && d["line"] == line_no as u64),
            "expected {broken}:{line_no} among {diags:?}"
        );
    }

    // A commit the repository does not have is refused at the trigger,
    // naming it and the branch (DESIGN.md 1.7: only the branch's commits).
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/runs"))
        .json(&json!({ "pipeline": "sample", "commit": "ab".repeat(20) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&"ab".repeat(20)) && detail.contains("not on branch `main`"),
        "{problem}"
    );
}

fn fixture_fed() -> PathBuf {
    fixture("apim-cli/fed/swagger-promote-7.7-20240830.fed")
}

fn tar_entries(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, data));
        }
    }
    out
}

#[tokio::test]
async fn a_fed_is_packaged_with_each_stages_settings_and_a_corrupt_one_is_refused() {
    let repo = GitRepo::init().unwrap();
    std::fs::create_dir_all(repo.path().join("gateway")).unwrap();
    std::fs::copy(fixture_fed(), repo.path().join("gateway/banking.fed")).unwrap();
    repo.write(
        "environments/test.yaml",
        "---\nPORT:\n  TRAFFIC: 8065\nBACKEND: https://test.example.com\n",
    )
    .unwrap();
    repo.write(
        "environments/prod.yaml",
        "---\nPORT:\n  TRAFFIC: 443\nBACKEND: https://prod.example.com\n",
    )
    .unwrap();
    let good = repo.commit("fed").unwrap();

    let gantry = start_sample(&repo, "fed", "gateway/banking.fed").await;
    let base = gantry.url();

    let run = trigger(&base, &good).await;
    let events = wait_events(&base, &run, "io.gantry.package.built.v1", 2).await;
    let fed = std::fs::read(fixture_fed()).unwrap();
    for e in events
        .iter()
        .filter(|e| e["type"] == "io.gantry.package.built.v1")
    {
        assert_eq!(e["data"]["format"], "fed");
        let stage = e["data"]["stage"].as_str().unwrap();
        let entries = tar_entries(&std::fs::read(e["data"]["location"].as_str().unwrap()).unwrap());
        let fed_entry = entries
            .iter()
            .find(|(p, _)| p == "fed")
            .expect("the FED goes to /merge/fed");
        assert_eq!(fed_entry.1, fed, "the FED is packaged unchanged");
        let props = entries
            .iter()
            .find(|(p, _)| p.ends_with("envSettings.props"))
            .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
            .expect("the stage's settings");
        let port = if stage == "test" { "8065" } else { "443" };
        assert!(
            props.contains(&format!("env.PORT.TRAFFIC={port}")),
            "{props}"
        );
    }

    // A corrupt FED fails every stage, naming the file.
    repo.write("gateway/banking.fed", "this is not a zip")
        .unwrap();
    let bad = repo.commit("corrupt").unwrap();
    let run = trigger(&base, &bad).await;
    let events = wait_events(&base, &run, "io.gantry.package.failed.v1", 2).await;
    for e in events
        .iter()
        .filter(|e| e["type"] == "io.gantry.package.failed.v1")
    {
        let diags = e["data"]["diagnostics"].as_array().unwrap();
        assert!(
            diags.iter().any(|d| d["file"]
                .as_str()
                .is_some_and(|f| f.contains("banking.fed"))),
            "{diags:?}"
        );
    }
}

#[tokio::test]
async fn diff_shows_what_an_approval_lets_through_with_secrets_masked() {
    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    repo.write(
        "gateway/values.yaml",
        "---\ndb:\n  url: jdbc:test\n  password: first-Secret-1\n",
    )
    .unwrap();
    repo.write("gateway/notes.txt", "one\ntwo\nthree\n")
        .unwrap();
    let a = repo.commit("first").unwrap();

    let dir = pipelines_dir("sample", &format!(
            // The approval holds both runs at the gate (no one approves here),
            // so the diff compares run B's package with what the stage runs.
            "name: sample\nsource:\n  repo: {}\n  branch: main\ngateway:\n  format: yaml\n  path: gateway/\n\
             stages:\n  - name: test\n    approval: {{ required: 1, approvers: [release-managers] }}\n",
            repo.path().display()
        ));
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();

    let run_a = trigger(&base, &a).await;
    wait_events(&base, &run_a, "io.gantry.package.built.v1", 1).await;
    // Before anything runs in the stage, everything is new.
    let first = get_json(&base, &format!("/api/v1/runs/{run_a}/stages/test/diff")).await;
    assert!(first["current"].is_null(), "{first}");
    assert!(
        !first["diff"]["added"].as_array().unwrap().is_empty(),
        "{first}"
    );

    // The stage now runs run A (recorded here as the conductor would on
    // promotion, since nobody approves in this test).
    let store = gantry_store::EventStore::connect(&format!(
        "sqlite://{}",
        dir.path().join(".gantry/gantry.db").display()
    ))
    .await
    .unwrap();
    let promoted = gantry_proto::CloudEvent::new(
        "conductor",
        "sample",
        Some(&run_a),
        &gantry_proto::events::EnvPromoted {
            stage: "test".into(),
            commit: a.clone(),
            image: None,
            digest: None,
        },
    );
    store
        .append(
            &format!("run-{run_a}"),
            gantry_store::ExpectedVersion::Any,
            vec![promoted],
        )
        .await
        .unwrap();

    repo.write(
        "gateway/values.yaml",
        "---\ndb:\n  url: jdbc:prod\n  password: second-Secret-2\n",
    )
    .unwrap();
    repo.write("gateway/notes.txt", "one\nTWO\nthree\n")
        .unwrap();
    let b = repo.commit("second").unwrap();
    let run_b = trigger(&base, &b).await;
    wait_events(&base, &run_b, "io.gantry.package.built.v1", 1).await;

    let resp = reqwest::get(format!("{base}/api/v1/runs/{run_b}/stages/test/diff"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("first-Secret-1") && !text.contains("second-Secret-2"),
        "secrets leak: {text}"
    );
    let diff: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(diff["current"]["run_id"], run_a.as_str());
    assert_eq!(diff["current"]["commit"], a.as_str());
    let modified: Vec<&str> = diff["diff"]["modified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(modified.contains(&"notes.txt"), "{modified:?}");
    let notes = diff["diff"]["modified"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "notes.txt")
        .unwrap();
    let unified = notes["diff"].as_str().unwrap();
    assert!(
        unified.contains("-two") && unified.contains("+TWO"),
        "{unified}"
    );
    let values: Vec<&str> = diff["diff"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(
        values.contains(&"db.url") && values.contains(&"db.password"),
        "{values:?}"
    );

    // The CLI prints the same report.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["diff", &run_b, "test"])
        .current_dir(dir.path())
        .env("GANTRY_LISTEN", format!("127.0.0.1:{}", gantry.port))
        .output()
        .unwrap();
    let report = String::from_utf8(stdout_of(out)).unwrap();
    assert!(
        report.contains("notes.txt") && report.contains("+TWO"),
        "{report}"
    );
    assert!(!report.contains("second-Secret-2"), "{report}");

    // A stage the run has no package for.
    let resp = reqwest::get(format!("{base}/api/v1/runs/{run_b}/stages/nope/diff"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
}
