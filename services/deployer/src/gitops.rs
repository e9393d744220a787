//! The `gitops` deploy target: one commit to a deploy repository that sets
//! the stage's image reference, pushed to the branch a GitOps controller
//! (Argo CD, Flux) watches.
//!
//! The deploy repository is kept as a bare clone under the work directory
//! (one per repository and branch) and fetched on every deploy, never
//! re-cloned. The change is made straight in the object database (blob,
//! tree, commit), so there is no work tree to get out of sync: the file at
//! the remote branch's head is edited with [`set_yaml_key`], and when the key
//! already holds the image nothing is committed (a redelivered event, or a
//! rollback to what is already there). A push that loses a race with someone
//! else's push is not forced: the remote head is fetched again and the
//! one-line change re-applied on top of it, a bounded number of times.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gantry_pipeline::GitOpsDeploy;
use git2::{build::TreeUpdateBuilder, ErrorCode, FetchOptions, Oid, PushOptions, Repository};
use sha2::{Digest, Sha256};

use crate::yaml_edit::{set_yaml_key, EditError};

/// What a deploy commit says: who asked for it and what it deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMessage {
    /// The run id.
    pub run: String,
    pub stage: String,
    /// The source commit the image was built from.
    pub commit: String,
    /// The image's manifest digest.
    pub digest: String,
}

impl CommitMessage {
    /// `deploy <stage>: <image>`, a blank line, then `run`, `commit` and
    /// `digest` lines (git trailers style, for `git log --grep`).
    pub fn render(&self, image: &str) -> String {
        format!(
            "deploy {stage}: {image}\n\nrun {run}\ncommit {commit}\ndigest {digest}\n",
            stage = self.stage,
            run = self.run,
            commit = self.commit,
            digest = self.digest,
        )
    }
}

/// The deploy commit: the branch's head after the deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitOpsOutcome {
    /// The commit sha the branch points at (the new commit, or the existing
    /// head when nothing changed).
    pub revision: String,
    /// Whether a commit was pushed.
    pub changed: bool,
    /// How many push attempts it took (0 when nothing changed).
    pub attempts: u32,
}

/// Called before each push attempt (1-based), after the commit is made.
pub type BeforePush = Arc<dyn Fn(u32) + Send + Sync>;

/// How deploy commits are made.
#[derive(Clone)]
pub struct GitOpsOptions {
    pub author_name: String,
    pub author_email: String,
    /// Push attempts before giving up on a branch others keep pushing to.
    pub max_attempts: u32,
    /// Pause between attempts, multiplied by the attempt number.
    pub retry_backoff: Duration,
    /// A hook before each push; tests use it to race a concurrent push.
    pub before_push: Option<BeforePush>,
    /// The deploy step's deadline: nothing is pushed after it (checked
    /// right before each push; fetches are aborted past it).
    pub deadline: Option<Instant>,
}

impl Default for GitOpsOptions {
    fn default() -> Self {
        Self {
            author_name: "Gantry".into(),
            author_email: "gantry@localhost".into(),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(200),
            before_push: None,
            deadline: None,
        }
    }
}

impl std::fmt::Debug for GitOpsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitOpsOptions")
            .field("author_name", &self.author_name)
            .field("author_email", &self.author_email)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("before_push", &self.before_push.is_some())
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Why a gitops deploy failed. Messages name the repository, branch and
/// file, never the token.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deploy repository {repo}: {message}")]
    Git { repo: String, message: String },
    #[error(
        "deploy repository {repo} refused the credentials: {message}; check deploy.gitops.token"
    )]
    Auth { repo: String, message: String },
    #[error("deploy repository {repo} has no branch `{branch}`")]
    NoBranch { repo: String, branch: String },
    #[error("deploy repository {repo} has no file `{file}` on branch `{branch}`")]
    NoFile {
        repo: String,
        branch: String,
        file: String,
    },
    #[error("`{file}` in deploy repository {repo} is not UTF-8 text")]
    NotText { repo: String, file: String },
    #[error("deploy.gitops.file `{0}` must be a relative path inside the repository")]
    BadPath(String),
    #[error("`{file}` in deploy repository {repo}: {source}")]
    Edit {
        repo: String,
        file: String,
        #[source]
        source: EditError,
    },
    #[error("push to {repo} branch `{branch}` was rejected: {message}")]
    Rejected {
        repo: String,
        branch: String,
        message: String,
    },
    #[error(
        "push to {repo} branch `{branch}` was still behind after {attempts} attempts: \
         others keep pushing to it"
    )]
    Contention {
        repo: String,
        branch: String,
        attempts: u32,
    },
    #[error("gitops cache {path}: {message}")]
    Cache { path: String, message: String },
    #[error("the deploy's deadline passed before the push to {repo} branch `{branch}`; nothing was pushed")]
    DeadlinePassed { repo: String, branch: String },
}

/// Sets `spec.key` in `spec.file` to `image` on `spec.branch` of
/// `spec.repo`, committing and pushing when it changes, with the default
/// [`GitOpsOptions`]. `work` holds the cached clones. Blocking.
pub fn deploy_gitops(
    spec: &GitOpsDeploy,
    token: Option<&str>,
    image: &str,
    msg: &CommitMessage,
    work: &Path,
) -> Result<GitOpsOutcome, DeployError> {
    deploy_gitops_with(spec, token, image, msg, work, &GitOpsOptions::default())
}

/// [`deploy_gitops`] with explicit options.
pub fn deploy_gitops_with(
    spec: &GitOpsDeploy,
    token: Option<&str>,
    image: &str,
    msg: &CommitMessage,
    work: &Path,
    options: &GitOpsOptions,
) -> Result<GitOpsOutcome, DeployError> {
    let file = repo_path(&spec.file)?;
    let dir = cache_dir(work, &spec.repo, &spec.branch);
    let lock = lock_for(&dir);
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let repo = open_cache(&dir)?;
    let shown = redact_url(&spec.repo);
    let ctx = Ctx {
        repo: &repo,
        url: &spec.repo,
        shown: &shown,
        branch: &spec.branch,
        token,
        deadline: options.deadline,
    };
    let max = options.max_attempts.max(1);
    for attempt in 1..=max {
        let head = ctx.fetch()?;
        let head_commit = repo.find_commit(head).map_err(|e| ctx.git(e))?;
        let tree = head_commit.tree().map_err(|e| ctx.git(e))?;
        let entry = tree
            .get_path(Path::new(&file))
            .map_err(|_| DeployError::NoFile {
                repo: shown.clone(),
                branch: spec.branch.clone(),
                file: file.clone(),
            })?;
        let blob = entry
            .to_object(&repo)
            .and_then(|o| o.peel_to_blob())
            .map_err(|_| DeployError::NoFile {
                repo: shown.clone(),
                branch: spec.branch.clone(),
                file: file.clone(),
            })?;
        let text = std::str::from_utf8(blob.content()).map_err(|_| DeployError::NotText {
            repo: shown.clone(),
            file: file.clone(),
        })?;
        let (edited, changed) =
            set_yaml_key(text, &spec.key, image).map_err(|source| DeployError::Edit {
                repo: shown.clone(),
                file: file.clone(),
                source,
            })?;
        if !changed {
            tracing::info!(repo = %shown, branch = %spec.branch, %file, revision = %head, "image already set; nothing to commit");
            return Ok(GitOpsOutcome {
                revision: head.to_string(),
                changed: false,
                attempts: 0,
            });
        }
        let new_blob = repo.blob(edited.as_bytes()).map_err(|e| ctx.git(e))?;
        let mode = match entry.filemode() {
            m if m == i32::from(git2::FileMode::BlobExecutable) => git2::FileMode::BlobExecutable,
            _ => git2::FileMode::Blob,
        };
        let new_tree = TreeUpdateBuilder::new()
            .upsert(&file, new_blob, mode)
            .create_updated(&repo, &tree)
            .map_err(|e| ctx.git(e))?;
        let new_tree = repo.find_tree(new_tree).map_err(|e| ctx.git(e))?;
        let sig = git2::Signature::now(&options.author_name, &options.author_email)
            .map_err(|e| ctx.git(e))?;
        let commit = repo
            .commit(
                None,
                &sig,
                &sig,
                &msg.render(image),
                &new_tree,
                &[&head_commit],
            )
            .map_err(|e| ctx.git(e))?;
        repo.reference(&ctx.local_ref(), commit, true, "gantry: deploy commit")
            .map_err(|e| ctx.git(e))?;
        if let Some(hook) = &options.before_push {
            hook(attempt);
        }
        // A deploy past its deadline has been failed already (the
        // conductor records `deploy.failed` and may be rolling back): its
        // commit must not land after that.
        if options.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(repo = %shown, branch = %spec.branch, "deadline passed; not pushing");
            return Err(DeployError::DeadlinePassed {
                repo: shown.clone(),
                branch: spec.branch.clone(),
            });
        }
        match ctx.push() {
            Ok(()) => {
                // The remote-tracking ref follows, so the next fetch negotiates from here.
                let _ = repo.reference(&ctx.tracking_ref(), commit, true, "gantry: pushed");
                tracing::info!(repo = %shown, branch = %spec.branch, %file, revision = %commit, attempt, "deploy commit pushed");
                return Ok(GitOpsOutcome {
                    revision: commit.to_string(),
                    changed: true,
                    attempts: attempt,
                });
            }
            Err(PushFailure::Behind(why)) => {
                tracing::info!(repo = %shown, branch = %spec.branch, attempt, reason = %why, "push lost a race; fetching and re-applying the change");
                if attempt < max {
                    std::thread::sleep(options.retry_backoff * attempt);
                }
            }
            Err(PushFailure::Fatal(e)) => return Err(e),
        }
    }
    Err(DeployError::Contention {
        repo: shown.clone(),
        branch: spec.branch.clone(),
        attempts: max,
    })
}

/// The file's path in the repository, `/`-separated; nothing absolute and
/// no `..` (validation refuses them; this is the second line of defence).
fn repo_path(file: &Path) -> Result<String, DeployError> {
    let mut parts = Vec::new();
    for c in file.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| DeployError::BadPath(file.display().to_string()))?,
            ),
            Component::CurDir => {}
            _ => return Err(DeployError::BadPath(file.display().to_string())),
        }
    }
    if parts.is_empty() {
        return Err(DeployError::BadPath(file.display().to_string()));
    }
    Ok(parts.join("/"))
}

/// `url` with a password in it (`https://user:token@host/...`) replaced by
/// `***`; anything that is not such a URL as is.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `<work>/<sha256(repo, branch) prefix>.git`.
fn cache_dir(work: &Path, repo: &str, branch: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(repo.as_bytes());
    h.update([0]);
    h.update(branch.as_bytes());
    let id = hex::encode(&h.finalize()[..10]);
    work.join(format!("{id}.git"))
}

/// One lock per cached clone in this process: deploys to the same
/// repository and branch take turns.
fn lock_for(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.entry(dir.to_path_buf()).or_default().clone()
}

/// Opens the cached bare clone, or makes a fresh one (also when the cached
/// one is unreadable: it is only a cache).
fn open_cache(dir: &Path) -> Result<Repository, DeployError> {
    let cache_err = |message: String| DeployError::Cache {
        path: dir.display().to_string(),
        message,
    };
    if dir.exists() {
        clear_stale_locks_once(dir);
        match Repository::open_bare(dir) {
            Ok(r) => return Ok(r),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "gitops cache unreadable; recreating it");
                std::fs::remove_dir_all(dir).map_err(|e| cache_err(e.to_string()))?;
            }
        }
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| cache_err(e.to_string()))?;
    }
    Repository::init_bare(dir).map_err(|e| cache_err(e.message().to_owned()))
}

/// Removes the git lock files (`*.lock`: refs, `packed-refs`, `config`,
/// `HEAD`, `index`) a killed process left in a cached clone, the first time
/// this process opens it. Each process has its own data dir, and within one
/// the clone's mutex is held ([`lock_for`]), so a lock present then belongs
/// to a process that died mid-fetch or mid-push (SIGKILL, OOM, a node
/// lost); left there, it failed every later deploy to that repository with
/// "failed to lock file … for writing". Found by the distributed kill test.
fn clear_stale_locks_once(dir: &Path) {
    static CLEARED: OnceLock<Mutex<std::collections::HashSet<PathBuf>>> = OnceLock::new();
    let mut cleared = CLEARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !cleared.insert(dir.to_path_buf()) {
        return;
    }
    for lock in stale_locks(dir) {
        match std::fs::remove_file(&lock) {
            Ok(()) => {
                tracing::warn!(path = %lock.display(), "removed a git lock a killed process left")
            }
            Err(e) => {
                tracing::warn!(path = %lock.display(), error = %e, "cannot remove a stale git lock")
            }
        }
    }
}

/// Every `*.lock` file of a bare repository, objects excluded (git writes
/// none there that survives it).
pub fn stale_locks(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if path.file_name().is_some_and(|n| n != "objects") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "lock") {
                found.push(path);
            }
        }
    }
    found
}

/// One deploy's view of the cached clone and its remote.
struct Ctx<'a> {
    repo: &'a Repository,
    url: &'a str,
    /// `url` with any password replaced, for messages.
    shown: &'a str,
    branch: &'a str,
    token: Option<&'a str>,
    deadline: Option<Instant>,
}

enum PushFailure {
    /// The remote branch moved on: fetch, re-apply, try again.
    Behind(String),
    Fatal(DeployError),
}

/// Push rejections that mean "the branch moved; fetch and try again".
fn is_behind(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "non-fast-forward",
        "non-fastforward",
        "fetch first",
        "not present locally",
        "stale info",
        "cannot lock ref",
        "failed to lock",
        "failed to update ref",
        "incorrect old value",
    ]
    .iter()
    .any(|p| m.contains(p))
}

impl Ctx<'_> {
    fn local_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    fn git(&self, e: git2::Error) -> DeployError {
        let message = e.message().replace(self.url, self.shown);
        let auth = e.code() == ErrorCode::Auth
            || (e.class() == git2::ErrorClass::Http && message.contains("401"))
            || message.contains("authentication")
            || message.contains("403");
        if auth {
            DeployError::Auth {
                repo: self.shown.to_owned(),
                message,
            }
        } else {
            DeployError::Git {
                repo: self.shown.to_owned(),
                message,
            }
        }
    }

    fn callbacks(&self) -> git2::RemoteCallbacks<'static> {
        gantry_runtime::git::set_server_timeouts();
        let mut callbacks = git2::RemoteCallbacks::new();
        gantry_runtime::git::abort_after(&mut callbacks, self.deadline);
        if let Some(token) = self.token {
            let token = token.to_owned();
            let mut tries = 0;
            callbacks.credentials(move |_url, user, allowed| {
                // libgit2 asks again after a refusal: a second ask means the token is wrong.
                tries += 1;
                if tries > 1 || !allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
                    return Err(git2::Error::new(
                        ErrorCode::Auth,
                        git2::ErrorClass::Http,
                        "authentication failed with deploy.gitops.token",
                    ));
                }
                git2::Cred::userpass_plaintext(user.unwrap_or("x-access-token"), &token)
            });
        }
        callbacks
    }

    /// Fetches the branch; returns its head.
    fn fetch(&self) -> Result<Oid, DeployError> {
        // A branch deleted on the remote must not be found at its old head.
        if let Ok(mut r) = self.repo.find_reference(&self.tracking_ref()) {
            let _ = r.delete();
        }
        let mut remote = self
            .repo
            .remote_anonymous(self.url)
            .map_err(|e| self.git(e))?;
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(self.callbacks());
        fo.download_tags(git2::AutotagOption::None);
        let refspec = format!("+refs/heads/{}:{}", self.branch, self.tracking_ref());
        remote
            .fetch(&[refspec.as_str()], Some(&mut fo), None)
            .map_err(|e| self.git(e))?;
        self.repo
            .refname_to_id(&self.tracking_ref())
            .map_err(|_| DeployError::NoBranch {
                repo: self.shown.to_owned(),
                branch: self.branch.to_owned(),
            })
    }

    /// Pushes the local branch to the remote branch, never forcing.
    fn push(&self) -> Result<(), PushFailure> {
        let mut remote = self
            .repo
            .remote_anonymous(self.url)
            .map_err(|e| PushFailure::Fatal(self.git(e)))?;
        let rejected: Arc<Mutex<Option<String>>> = Arc::default();
        let mut callbacks = self.callbacks();
        {
            let rejected = rejected.clone();
            callbacks.push_update_reference(move |_refname, status| {
                if let Some(message) = status {
                    *rejected.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
                }
                Ok(())
            });
        }
        let mut po = PushOptions::new();
        po.remote_callbacks(callbacks);
        let refspec = format!("{0}:{0}", self.local_ref());
        if let Err(e) = remote.push(&[refspec.as_str()], Some(&mut po)) {
            if e.code() == ErrorCode::NotFastForward || is_behind(e.message()) {
                return Err(PushFailure::Behind(e.message().to_owned()));
            }
            return Err(PushFailure::Fatal(self.git(e)));
        }
        let rejected = rejected.lock().unwrap_or_else(|p| p.into_inner()).take();
        match rejected {
            None => Ok(()),
            Some(m) if is_behind(&m) => Err(PushFailure::Behind(m)),
            Some(message) => Err(PushFailure::Fatal(DeployError::Rejected {
                repo: self.shown.to_owned(),
                branch: self.branch.to_owned(),
                message,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_run_stage_commit_and_digest() {
        let m = CommitMessage {
            run: "r1".into(),
            stage: "test".into(),
            commit: "abc".into(),
            digest: "sha256:00".into(),
        };
        assert_eq!(
            m.render("reg/gw@sha256:00"),
            "deploy test: reg/gw@sha256:00\n\nrun r1\ncommit abc\ndigest sha256:00\n"
        );
    }

    #[test]
    fn repo_paths_stay_inside() {
        assert_eq!(
            repo_path(Path::new("envs/test/values.yaml")).unwrap(),
            "envs/test/values.yaml"
        );
        assert_eq!(repo_path(Path::new("./a.yaml")).unwrap(), "a.yaml");
        for bad in ["/etc/passwd", "../x.yaml", "a/../../b", ""] {
            assert!(repo_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_dirs_differ_by_repo_and_branch() {
        let w = Path::new("/w");
        assert_ne!(cache_dir(w, "a", "main"), cache_dir(w, "a", "dev"));
        assert_ne!(cache_dir(w, "a", "main"), cache_dir(w, "b", "main"));
        assert_eq!(cache_dir(w, "a", "main"), cache_dir(w, "a", "main"));
    }

    #[test]
    fn passwords_in_repo_urls_are_redacted() {
        assert_eq!(
            redact_url("https://bot:tok3n@git.example.com/deploy.git"),
            "https://bot:***@git.example.com/deploy.git"
        );
        assert_eq!(
            redact_url("https://git.example.com/deploy.git"),
            "https://git.example.com/deploy.git"
        );
        assert_eq!(redact_url("/srv/git/deploy.git"), "/srv/git/deploy.git");
    }

    #[test]
    fn rejections_that_mean_fetch_again() {
        assert!(is_behind("cannot push non-fastforwardable reference"));
        assert!(is_behind("rejected (fetch first)"));
        assert!(is_behind("failed to update ref"));
        assert!(!is_behind("protected branch hook declined"));
    }
}
