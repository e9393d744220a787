//! `gantry audit export | verify | import` as an auditor and an operator use
//! them: a real log exported, verified by `gantry` and by the README's
//! Python verifier, caught when a byte changes, a line goes or two lines
//! swap; and imported into an empty store that then answers the API as the
//! original did, without delivering the history to a worker again.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// `gantry <args>` in `dir` (its data dir `.gantry`).
fn gantry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "GANTRY_LISTEN",
            format!("127.0.0.1:{}", gantry_tests::free_port()),
        )
        .output()
        .unwrap()
}

/// The README's Python verifier, as the README shows it.
fn python_verifier() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let block = readme
        .split("<!-- audit-verifier -->")
        .nth(1)
        .expect("the README marks its audit verifier");
    let code = block.split("```python\n").nth(1).unwrap();
    code.split("```").next().unwrap().to_owned()
}

/// Runs the Python verifier on `file` when python3 is installed:
/// Some(passed).
fn python_verifies(file: &Path) -> Option<bool> {
    let script = file.with_extension("py");
    std::fs::write(&script, python_verifier()).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(file)
        .output()
        .ok()?;
    Some(out.status.success())
}

/// `gantry audit verify FILE`: (passed, what it said).
fn verify(dir: &Path, file: &Path) -> (bool, String) {
    let out = gantry(dir, &["audit", "verify", &file.display().to_string()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// What the API answers about everything the log holds.
async fn answers(base: &str, runs: &[String]) -> Vec<Value> {
    let mut all = vec![
        get_json(base, "/api/v1/runs?limit=100").await,
        get_json(base, "/api/v1/pipelines").await,
    ];
    for run in runs {
        all.push(get_json(base, &format!("/api/v1/runs/{run}")).await);
        all.push(get_json(base, &format!("/api/v1/runs/{run}/events")).await);
    }
    all
}

#[tokio::test]
async fn an_export_verifies_catches_tampering_and_imports_into_an_empty_store() {
    // A log with a few runs (the source repository does not exist, so each
    // run fails at its packages: every run ends, the log is quiet).
    let dir = workdir();
    let mut original = Gantry::start(dir.path(), &["up"], &[]).await;
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for n in 1..=3 {
        let (status, body) = send_push(&client, &original.url(), &commit_sha(n), &format!("d{n}"))
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        runs.push(body["runs"][0]["run_id"].as_str().unwrap().to_owned());
    }
    for run in &runs {
        wait_run_ended(&original.url(), run, Duration::from_secs(60), || {
            original.log_text()
        })
        .await;
    }
    let before = answers(&original.url(), &runs).await;

    let export = dir.path().join("audit.jsonl");
    let out = gantry(
        dir.path(),
        &["audit", "export", "--out", &export.display().to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 9, "{} lines", lines.len());
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["position"], 1);
    assert_eq!(first["prev"], "0".repeat(64));

    // Untouched: both verifiers pass.
    let (ok, said) = verify(dir.path(), &export);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("verified {} events", lines.len())),
        "{said}"
    );
    let python = python_verifies(&export);
    assert_ne!(
        python,
        Some(false),
        "the README's verifier refused an untouched export"
    );

    // Tampered: one changed byte, one removed line, one swapped pair.
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut changed = owned.clone();
    changed[4] = changed[4].replacen("\"pipeline\":\"banking\"", "\"pipeline\":\"bankinh\"", 1);
    assert_ne!(changed[4], owned[4], "the byte to change is there");
    let mut removed = owned.clone();
    removed.remove(3);
    let mut swapped = owned.clone();
    swapped.swap(5, 6);
    for (name, tampered, position) in [
        ("changed.jsonl", changed, 5),
        ("removed.jsonl", removed, 5),
        ("swapped.jsonl", swapped, 7),
    ] {
        let path = write(name, &tampered);
        let (ok, said) = verify(dir.path(), &path);
        assert!(!ok, "{name} passed: {said}");
        assert!(
            said.contains(&format!("position {position}")),
            "{name}: {said}"
        );
        assert_ne!(
            python_verifies(&path),
            Some(true),
            "the README's verifier passed {name}"
        );
    }
    // A partial export chains on from the whole log's hashes.
    let tail = dir.path().join("tail.jsonl");
    let out = gantry(
        dir.path(),
        &[
            "audit",
            "export",
            "--from",
            "4",
            "--out",
            &tail.display().to_string(),
        ],
    );
    assert!(out.status.success());
    let tail_text = std::fs::read_to_string(&tail).unwrap();
    assert_eq!(
        tail_text.lines().next(),
        Some(lines[3]),
        "the same line 4 in both exports"
    );
    assert!(verify(dir.path(), &tail).0);

    // Import into an empty store: the same answers, nothing delivered again.
    original.terminate();
    let restored = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(restored.path().join("pipelines")).unwrap();
    std::fs::copy(
        dir.path().join("pipelines/banking.yaml"),
        restored.path().join("pipelines/banking.yaml"),
    )
    .unwrap();
    // A tail is refused: import needs the whole log.
    let out = gantry(
        restored.path(),
        &["audit", "import", &tail.display().to_string()],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("whole log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gantry(
        restored.path(),
        &["audit", "import", &export.display().to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Into a store that is no longer empty: refused.
    let out = gantry(
        restored.path(),
        &["audit", "import", &export.display().to_string()],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let restored_gantry = Gantry::start(restored.path(), &["up"], &[]).await;
    // Long enough for the embedded workers to act, were the history delivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = answers(&restored_gantry.url(), &runs).await;
    assert_eq!(
        after, before,
        "the restored store answers as the original did"
    );
    let again = restored.path().join("again.jsonl");
    let out = gantry(
        restored.path(),
        &["audit", "export", "--out", &again.display().to_string()],
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        text,
        "the restored log exports to the same chain"
    );
}
