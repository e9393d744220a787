//! Checking out exact commits from real repositories through the source cache.

use gantry_runtime::git::{branch_head, GitError, SourceCache};
use gantry_tests::GitRepo;

#[test]
fn checks_out_exact_commits_and_fetches_new_ones() {
    let repo = GitRepo::init().unwrap();
    let a = repo
        .commit_files(
            &[("gateway/values.yaml", "a: 1\n"), ("README", "first\n")],
            "first",
        )
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path());
    let url = repo.url();

    let out_a = tempfile::tempdir().unwrap();
    let co = cache
        .checkout("p", &url, "main", None, &a, out_a.path())
        .unwrap();
    assert_eq!(co.commit, a);
    assert_eq!(co.files, 2);
    assert_eq!(
        std::fs::read_to_string(out_a.path().join("gateway/values.yaml")).unwrap(),
        "a: 1\n"
    );

    // A later commit is fetched into the same mirror; the old one stays reachable.
    let b = repo
        .commit_files(&[("gateway/values.yaml", "a: 2\n")], "second")
        .unwrap();
    assert_eq!(branch_head(&url, "main", None).unwrap(), b);
    let out_b = tempfile::tempdir().unwrap();
    cache
        .checkout("p", &url, "main", None, &b, out_b.path())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out_b.path().join("gateway/values.yaml")).unwrap(),
        "a: 2\n"
    );
    let out_a2 = tempfile::tempdir().unwrap();
    cache
        .checkout("p", &url, "main", None, &a, out_a2.path())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out_a2.path().join("gateway/values.yaml")).unwrap(),
        "a: 1\n"
    );
    assert!(
        cache_dir.path().join("p.git").is_dir(),
        "one mirror per pipeline"
    );
}

#[test]
fn concurrent_checkouts_of_one_pipeline_are_safe() {
    let repo = GitRepo::init().unwrap();
    let mut commits = Vec::new();
    for i in 0..4 {
        commits.push(
            repo.commit_files(&[("f.txt", &format!("{i}\n"))], &format!("c{i}"))
                .unwrap(),
        );
    }
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path());
    let url = repo.url();
    let outs: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    std::thread::scope(|s| {
        for (i, out) in outs.iter().enumerate() {
            let (cache, url, commit) = (cache.clone(), url.clone(), commits[i % 4].clone());
            s.spawn(move || {
                cache
                    .checkout("p", &url, "main", None, &commit, out.path())
                    .unwrap()
            });
        }
    });
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(out.path().join("f.txt")).unwrap(),
            format!("{}\n", i % 4)
        );
    }
}

#[test]
fn bad_sources_give_clear_errors() {
    let repo = GitRepo::init().unwrap();
    repo.commit_files(&[("f", "x")], "c").unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path());
    let out = tempfile::tempdir().unwrap();

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = cache
        .checkout("p", &repo.url(), "main", None, missing, out.path())
        .unwrap_err();
    assert!(matches!(err, GitError::MissingCommit { .. }), "{err}");
    assert!(err.to_string().contains(missing));

    let err = cache
        .checkout("p", &repo.url(), "main", None, "HEAD", out.path())
        .unwrap_err();
    assert!(matches!(err, GitError::BadCommit(_)), "{err}");

    let err = cache
        .checkout(
            "q",
            "/nonexistent/repo.git",
            "main",
            None,
            missing,
            out.path(),
        )
        .unwrap_err();
    assert!(matches!(err, GitError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/repo.git"));

    let err = branch_head(&repo.url(), "nope", None).unwrap_err();
    assert!(matches!(err, GitError::NoBranch { .. }), "{err}");
}

/// Only the pipeline's branch is the pipeline's: a commit that lives on
/// another branch (or only in a tag) is neither checked out nor accepted
/// for a manual trigger; one on the branch, or behind its tip, is.
#[test]
fn only_commits_on_the_pipelines_branch_are_reachable() {
    let repo = GitRepo::init().unwrap();
    let first = repo.commit_files(&[("f", "1")], "first").unwrap();
    let second = repo.commit_files(&[("f", "2")], "second").unwrap();
    repo.checkout_new_branch("feature").unwrap();
    let feature = repo.commit_files(&[("f", "evil")], "not reviewed").unwrap();
    repo.git(["tag", "v-evil"]).unwrap();
    repo.git(["checkout", "-q", "main"]).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SourceCache::new(cache_dir.path());
    let url = repo.url();
    for ok in [&first, &second] {
        let people = cache
            .commit_on_branch("p", &url, "main", None, ok)
            .expect("on main");
        assert!(people.author.email.is_some());
    }
    let err = cache
        .commit_on_branch("p", &url, "main", None, &feature)
        .unwrap_err();
    assert!(matches!(err, GitError::MissingCommit { .. }), "{err}");
    assert!(err.to_string().contains("not on branch `main`"), "{err}");

    let out = tempfile::tempdir().unwrap();
    let err = cache
        .checkout("p", &url, "main", None, &feature, out.path())
        .unwrap_err();
    assert!(matches!(err, GitError::MissingCommit { .. }), "{err}");
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "nothing written"
    );
}
