//! The command target: real processes.

use std::time::{Duration, Instant};

use gantry_deployer::{run_command, CommandError, CommandOptions, DeployEnv};

fn env() -> DeployEnv {
    DeployEnv {
        image: "reg.example.com/gw@sha256:abcd".into(),
        digest: "sha256:abcd".into(),
        stage: "test".into(),
        run: "run-42".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        pipeline: "banking".into(),
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

#[tokio::test]
async fn the_command_sees_the_release_in_its_environment() {
    let out = run_command(
        &sh(
            "echo image=$GANTRY_IMAGE; echo digest=$GANTRY_DIGEST; echo stage=$GANTRY_STAGE; \
             echo run=$GANTRY_RUN; echo commit=$GANTRY_COMMIT; echo pipeline=$GANTRY_PIPELINE; \
             echo to-stderr >&2",
        ),
        &env(),
        &CommandOptions::new(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    for line in [
        "image=reg.example.com/gw@sha256:abcd",
        "digest=sha256:abcd",
        "stage=test",
        "run=run-42",
        "commit=0123456789abcdef0123456789abcdef01234567",
        "pipeline=banking",
        "to-stderr",
    ] {
        assert!(
            out.output.lines().any(|l| l == line),
            "{line} in:\n{}",
            out.output
        );
    }
}

#[tokio::test]
async fn argv_is_not_interpreted_by_a_shell() {
    let out = run_command(
        &["/bin/echo".into(), "$GANTRY_IMAGE; rm -rf /".into()],
        &env(),
        &CommandOptions::new(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(out.output, "$GANTRY_IMAGE; rm -rf /\n");
}

#[tokio::test]
async fn secrets_are_masked_in_the_output() {
    let options = CommandOptions::new(Duration::from_secs(20))
        .with_secrets(["hunter2-s3cret".to_owned(), "api-key-777".to_owned()]);
    let out = run_command(
        &sh("echo logging in with hunter2-s3cret; echo key=api-key-777 >&2; echo done"),
        &env(),
        &options,
    )
    .await
    .unwrap();
    assert!(!out.output.contains("hunter2"), "{}", out.output);
    assert!(!out.output.contains("api-key-777"), "{}", out.output);
    assert!(out.output.contains("logging in with ***"), "{}", out.output);
    assert!(out.output.contains("key=***"), "{}", out.output);

    // Also in the output of a failure.
    let err = run_command(&sh("echo hunter2-s3cret; exit 1"), &env(), &options)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert_eq!(err.output(), Some("***\n"));
}

#[tokio::test]
async fn a_timeout_kills_the_command_and_its_children() {
    let started = Instant::now();
    let err = run_command(
        &sh("echo started; sleep 30; echo never"),
        &env(),
        &CommandOptions::new(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    match &err {
        CommandError::Timeout { output, .. } => assert_eq!(output, "started\n"),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("did not finish within"), "{err}");
}

#[tokio::test]
async fn a_plain_sleep_is_killed_too() {
    let started = Instant::now();
    let err = run_command(
        &["sleep".into(), "30".into()],
        &env(),
        &CommandOptions::new(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_code_and_output() {
    let err = run_command(
        &sh("echo applying; echo 'Error: UPGRADE FAILED' >&2; exit 3"),
        &env(),
        &CommandOptions::new(Duration::from_secs(20)),
    )
    .await
    .unwrap_err();
    match &err {
        CommandError::Failed { code, output, .. } => {
            assert_eq!(*code, Some(3));
            assert!(output.contains("applying"), "{output}");
            assert!(output.contains("Error: UPGRADE FAILED"), "{output}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        err.to_string(),
        "`/bin/sh` exited with code 3: Error: UPGRADE FAILED"
    );
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let err = run_command(
        &["/nonexistent/helm".into(), "upgrade".into()],
        &env(),
        &CommandOptions::new(Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/helm"), "{err}");
    assert_eq!(err.output(), None);

    let err = run_command(&[], &env(), &CommandOptions::new(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err, CommandError::Empty);
}

#[tokio::test]
async fn large_output_keeps_the_tail() {
    let mut options = CommandOptions::new(Duration::from_secs(20));
    options.max_output = 4096;
    let out = run_command(
        &sh("i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done"),
        &env(),
        &options,
    )
    .await
    .unwrap();
    assert!(out.output.starts_with("[earlier output truncated]\n"));
    assert!(out.output.len() <= 4096 + 64, "{}", out.output.len());
    assert!(out.output.ends_with("line 4999\n"));
}

#[tokio::test]
async fn a_background_child_holding_the_pipes_does_not_hang_the_step() {
    let started = Instant::now();
    let out = run_command(
        &sh("sleep 30 & echo backgrounded"),
        &env(),
        &CommandOptions::new(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(out.output, "backgrounded\n");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Names of the variables `/usr/bin/env` printed.
fn names(output: &str) -> std::collections::BTreeSet<String> {
    output
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_command_gets_a_clean_environment() {
    // The test process has variables of its own (cargo sets CARGO_* for
    // tests); none of them may reach the command.
    let own: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k != "PATH" && k != "HOME" && !k.starts_with("GANTRY_"))
        .collect();
    assert!(
        own.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
        "cargo sets CARGO_MANIFEST_DIR for tests: {own:?}"
    );
    let options = CommandOptions::new(Duration::from_secs(20)).with_env([
        ("BACKEND_HOST", "orders.test.internal"),
        ("DB_PASSWORD", "declared-db-pw"),
    ]);
    let out = run_command(&["/usr/bin/env".into()], &env(), &options)
        .await
        .unwrap();
    let seen = names(&out.output);
    for name in &own {
        assert!(!seen.contains(name), "{name} leaked into:\n{}", out.output);
    }
    let mut allowed: std::collections::BTreeSet<String> = [
        "GANTRY_IMAGE",
        "GANTRY_DIGEST",
        "GANTRY_STAGE",
        "GANTRY_RUN",
        "GANTRY_COMMIT",
        "GANTRY_PIPELINE",
        "BACKEND_HOST",
        "DB_PASSWORD",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for inherited in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(inherited) {
            assert!(
                out.output
                    .lines()
                    .any(|l| l == format!("{inherited}={value}")),
                "{inherited} is Gantry's own:\n{}",
                out.output
            );
            allowed.insert(inherited.to_owned());
        }
    }
    assert_eq!(seen, allowed, "{}", out.output);
    assert!(out
        .output
        .lines()
        .any(|l| l == "BACKEND_HOST=orders.test.internal"));
    assert!(out.output.lines().any(|l| l == "GANTRY_STAGE=test"));
}

#[tokio::test]
async fn the_release_variables_win_over_declared_ones() {
    let options = CommandOptions::new(Duration::from_secs(20))
        .with_env([("GANTRY_STAGE", "forged"), ("PATH", "/usr/bin:/bin")]);
    let out = run_command(
        &sh("echo stage=$GANTRY_STAGE; echo path=$PATH"),
        &env(),
        &options,
    )
    .await
    .unwrap();
    assert!(out.output.contains("stage=test\n"), "{}", out.output);
    assert!(
        out.output.contains("path=/usr/bin:/bin\n"),
        "{}",
        out.output
    );
}
