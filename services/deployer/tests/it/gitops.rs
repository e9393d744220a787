//! The gitops target against real git repositories (a bare remote).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{values_with, DeployRepo, VALUES, VALUES_PATH};
use gantry_deployer::{
    deploy_gitops, deploy_gitops_with, CommitMessage, DeployError, EditError, GitOpsOptions,
};
use gantry_pipeline::GitOpsDeploy;

const REPO: &str = "registry.example.com/apim/banking-gateway";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn spec(repo: &DeployRepo) -> GitOpsDeploy {
    GitOpsDeploy {
        repo: repo.url(),
        branch: "main".into(),
        file: VALUES_PATH.into(),
        key: "apitraffic.image".into(),
        token: None,
    }
}

fn msg(digest: &str) -> CommitMessage {
    CommitMessage {
        run: "0192f0c4-run".into(),
        stage: "test".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        digest: digest.into(),
    }
}

fn image(digest: &str) -> String {
    format!("{REPO}@{digest}")
}

fn fast() -> GitOpsOptions {
    GitOpsOptions {
        retry_backoff: Duration::from_millis(10),
        ..GitOpsOptions::default()
    }
}

#[test]
fn sets_the_key_commits_and_pushes() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let before = repo.head();
    let work = tempfile::tempdir()?;
    let out = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
    )?;
    assert!(out.changed);
    assert_eq!(out.attempts, 1);
    assert_eq!(out.revision, repo.head());
    assert_ne!(out.revision, before);

    // Byte for byte: only the image line differs.
    let file = repo.file(VALUES_PATH);
    assert_eq!(file, values_with(&image(DIGEST)));
    assert_eq!(file.lines().count(), VALUES.lines().count());
    let differing: Vec<_> = VALUES
        .lines()
        .zip(file.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(differing.len(), 1, "{differing:?}");
    // Other files are untouched, and the commit sits on the old head.
    assert_eq!(repo.file("README.md"), "deploy repo\n");
    assert_eq!(repo.remote.rev_parse("main~1")?, before);

    let message = repo.remote.git(["log", "-1", "--format=%B", "main"])?;
    assert_eq!(
        message,
        format!(
            "deploy test: {}\n\nrun 0192f0c4-run\ncommit 0123456789abcdef0123456789abcdef01234567\ndigest {DIGEST}",
            image(DIGEST)
        )
    );
    let author = repo
        .remote
        .git(["log", "-1", "--format=%an <%ae>|%cn <%ce>", "main"])?;
    assert_eq!(
        author,
        "Gantry <gantry@localhost>|Gantry <gantry@localhost>"
    );
    let changed = repo.remote.git(["diff", "--name-only", "main~1", "main"])?;
    assert_eq!(changed, VALUES_PATH);
    Ok(())
}

#[test]
fn deploying_the_same_image_again_commits_nothing() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let work = tempfile::tempdir()?;
    let first = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
    )?;
    let second = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
    )?;
    assert!(!second.changed);
    assert_eq!(second.attempts, 0);
    assert_eq!(second.revision, first.revision);
    assert_eq!(repo.head(), first.revision);

    // A fresh cache finds it set too.
    let other_work = tempfile::tempdir()?;
    let third = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        other_work.path(),
    )?;
    assert!(!third.changed);
    assert_eq!(third.revision, first.revision);

    // A new digest is a new commit on top, from the cached clone.
    let fourth = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST2),
        &msg(DIGEST2),
        work.path(),
    )?;
    assert!(fourth.changed);
    assert_eq!(repo.remote.rev_parse("main~1")?, first.revision);
    assert_eq!(repo.file(VALUES_PATH), values_with(&image(DIGEST2)));
    let caches: Vec<_> = std::fs::read_dir(work.path())?.collect();
    assert_eq!(
        caches.len(),
        1,
        "one cached clone per repository and branch"
    );
    Ok(())
}

#[test]
fn a_concurrent_push_is_rebased_onto() -> anyhow::Result<()> {
    let repo = Arc::new(DeployRepo::new()?);
    let work = tempfile::tempdir()?;
    let theirs = Arc::new(std::sync::Mutex::new(String::new()));
    let hook = {
        let repo = repo.clone();
        let theirs = theirs.clone();
        Arc::new(move |attempt: u32| {
            if attempt == 1 {
                // Someone changes another line of the same file meanwhile.
                let text = VALUES.replace("  replicas: 2\n", "  replicas: 3\n");
                *theirs.lock().unwrap() =
                    repo.concurrent_push(&[(VALUES_PATH, &text)], "scale to 3");
            }
        })
    };
    let options = GitOpsOptions {
        before_push: Some(hook),
        ..fast()
    };
    let out = deploy_gitops_with(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
        &options,
    )?;
    assert!(out.changed);
    assert_eq!(out.attempts, 2);
    assert_eq!(out.revision, repo.head());
    // Our commit is on top of theirs, and both changes are there.
    assert_eq!(repo.remote.rev_parse("main~1")?, *theirs.lock().unwrap());
    let expected = values_with(&image(DIGEST)).replace("  replicas: 2\n", "  replicas: 3\n");
    assert_eq!(repo.file(VALUES_PATH), expected);
    Ok(())
}

#[test]
fn a_concurrent_push_of_the_same_image_means_nothing_to_do() -> anyhow::Result<()> {
    let repo = Arc::new(DeployRepo::new()?);
    let work = tempfile::tempdir()?;
    let hook = {
        let repo = repo.clone();
        Arc::new(move |attempt: u32| {
            if attempt == 1 {
                repo.concurrent_push(
                    &[(VALUES_PATH, &values_with(&image(DIGEST)))],
                    "someone deployed it already",
                );
            }
        })
    };
    let options = GitOpsOptions {
        before_push: Some(hook),
        ..fast()
    };
    let out = deploy_gitops_with(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
        &options,
    )?;
    assert!(!out.changed);
    assert_eq!(out.revision, repo.head());
    Ok(())
}

#[test]
fn endless_contention_gives_up_after_the_attempts() -> anyhow::Result<()> {
    let repo = Arc::new(DeployRepo::new()?);
    let work = tempfile::tempdir()?;
    let calls = Arc::new(AtomicU32::new(0));
    let hook = {
        let repo = repo.clone();
        let calls = calls.clone();
        Arc::new(move |attempt: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            repo.concurrent_push(
                &[("README.md", &format!("busy {attempt}\n"))],
                "another change",
            );
        })
    };
    let options = GitOpsOptions {
        before_push: Some(hook),
        max_attempts: 3,
        ..fast()
    };
    let err = deploy_gitops_with(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(err, DeployError::Contention { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Nothing of ours reached the remote.
    assert_eq!(repo.file(VALUES_PATH), VALUES);
    Ok(())
}

#[test]
fn custom_author_is_used() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let work = tempfile::tempdir()?;
    let options = GitOpsOptions {
        author_name: "Release Bot".into(),
        author_email: "bot@example.com".into(),
        ..fast()
    };
    deploy_gitops_with(
        &spec(&repo),
        Some("token-unused-for-file-urls"),
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
        &options,
    )?;
    let author = repo
        .remote
        .git(["log", "-1", "--format=%an <%ae>", "main"])?;
    assert_eq!(author, "Release Bot <bot@example.com>");
    Ok(())
}

#[test]
fn a_missing_key_is_inserted_and_a_missing_parent_appended() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let work = tempfile::tempdir()?;
    let mut s = spec(&repo);
    s.key = "apitraffic.pull.image".into();
    deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path())?;
    let file = repo.file(VALUES_PATH);
    assert!(
        file.contains(&format!(
            "      memory: 2Gi\n  pull:\n    image: {}\n\nanm:",
            image(DIGEST)
        )),
        "{file}"
    );
    s.key = "gantry.image".into();
    deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path())?;
    let file2 = repo.file(VALUES_PATH);
    assert_eq!(
        file2,
        format!("{file}gantry:\n  image: {}\n", image(DIGEST))
    );
    Ok(())
}

#[test]
fn errors_name_file_branch_and_line() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let work = tempfile::tempdir()?;

    let mut s = spec(&repo);
    s.file = "envs/prod/values.yaml".into();
    let e = deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path()).unwrap_err();
    assert!(matches!(e, DeployError::NoFile { .. }), "{e}");
    assert!(e.to_string().contains("envs/prod/values.yaml"), "{e}");

    let mut s = spec(&repo);
    s.branch = "release".into();
    let e = deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path()).unwrap_err();
    assert!(matches!(e, DeployError::NoBranch { .. }), "{e}");
    assert!(e.to_string().contains("`release`"), "{e}");

    let mut s = spec(&repo);
    s.key = "global.imagePullSecrets".into();
    let e = deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path()).unwrap_err();
    match &e {
        DeployError::Edit {
            source: EditError::Unsupported { line, .. },
            ..
        } => assert_eq!(*line, 6),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains(VALUES_PATH), "{e}");

    let mut s = spec(&repo);
    s.repo = "/nonexistent/deploy-repo.git".into();
    let e = deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path()).unwrap_err();
    assert!(matches!(e, DeployError::Git { .. }), "{e}");

    let mut s = spec(&repo);
    s.file = "../outside.yaml".into();
    let e = deploy_gitops(&s, None, &image(DIGEST), &msg(DIGEST), work.path()).unwrap_err();
    assert!(matches!(e, DeployError::BadPath(_)), "{e}");

    // Nothing was pushed by any of them.
    assert_eq!(repo.file(VALUES_PATH), VALUES);
    Ok(())
}

#[test]
fn a_corrupt_cache_is_recreated() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let work = tempfile::tempdir()?;
    deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
    )?;
    let cache = std::fs::read_dir(work.path())?.next().unwrap()?.path();
    std::fs::remove_dir_all(&cache)?;
    std::fs::create_dir_all(&cache)?;
    std::fs::write(cache.join("garbage"), "not a repository")?;
    let out = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST2),
        &msg(DIGEST2),
        work.path(),
    )?;
    assert!(out.changed);
    assert_eq!(repo.file(VALUES_PATH), values_with(&image(DIGEST2)));
    Ok(())
}

/// A deployer killed mid-fetch leaves `refs/remotes/origin/main.lock` in
/// its cached clone; the next process must not fail every deploy on it
/// ("failed to lock file ... for writing"). Found by the distributed kill
/// test; fails without the clean-up in `open_cache`.
#[test]
fn locks_a_killed_deployer_left_are_cleared() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let first = tempfile::tempdir()?;
    deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        first.path(),
    )?;
    // The same cache as a restarted process finds it (a path this process
    // has not opened yet), with the locks a kill left behind.
    let work = tempfile::tempdir()?;
    let cache_name = std::fs::read_dir(first.path())?
        .next()
        .unwrap()?
        .file_name();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(first.path().join(&cache_name))
        .arg(work.path())
        .status()?;
    assert!(status.success());
    let cache = work.path().join(&cache_name);
    std::fs::create_dir_all(cache.join("refs/remotes/origin"))?;
    std::fs::write(cache.join("refs/remotes/origin/main.lock"), "")?;
    std::fs::write(cache.join("packed-refs.lock"), "")?;
    assert_eq!(gantry_deployer::gitops::stale_locks(&cache).len(), 2);
    let out = deploy_gitops(
        &spec(&repo),
        None,
        &image(DIGEST2),
        &msg(DIGEST2),
        work.path(),
    )?;
    assert!(out.changed);
    assert_eq!(repo.file(VALUES_PATH), values_with(&image(DIGEST2)));
    assert!(gantry_deployer::gitops::stale_locks(&cache).is_empty());
    Ok(())
}

/// Issue 18: the deploy's deadline is checked right before the push; past
/// it nothing is pushed (the deploy was failed already).
#[test]
fn nothing_is_pushed_after_the_deadline() -> anyhow::Result<()> {
    let repo = DeployRepo::new()?;
    let work = tempfile::tempdir()?;
    let before = repo.head();
    let options = GitOpsOptions {
        deadline: Some(std::time::Instant::now() + Duration::from_millis(300)),
        before_push: Some(Arc::new(|_| std::thread::sleep(Duration::from_millis(600)))),
        ..fast()
    };
    let err = deploy_gitops_with(
        &spec(&repo),
        None,
        &image(DIGEST),
        &msg(DIGEST),
        work.path(),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, DeployError::DeadlinePassed { .. }), "{err}");
    assert_eq!(repo.head(), before);
    assert_eq!(repo.file(VALUES_PATH), VALUES);
    Ok(())
}
