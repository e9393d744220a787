//! Source repositories with git2: asking for a branch head, and checking out
//! an exact commit from a per-pipeline cache that is fetched, not re-cloned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use git2::{Direction, FetchOptions, ObjectType, Oid, Remote, Repository};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot reach repository {repo}: {message}")]
    Unreachable { repo: String, message: String },
    #[error("repository {repo} refused the credentials: {message}; check source.token")]
    Auth { repo: String, message: String },
    #[error("repository {repo} has no branch `{branch}`")]
    NoBranch { repo: String, branch: String },
    #[error("commit {commit} is not on branch `{branch}` of repository {repo}")]
    MissingCommit {
        repo: String,
        branch: String,
        commit: String,
    },
    #[error("fetching from repository {repo} did not finish within {} (source.timeout)", gantry_pipeline::format_duration(*.after))]
    TimedOut { repo: String, after: Duration },
    #[error("`{0}` is not a full commit id (40 or 64 hex digits)")]
    BadCommit(String),
    #[error("source cache {path}: {message}")]
    Cache { path: String, message: String },
    #[error("cannot write checkout file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn classify(repo: &str, e: git2::Error) -> GitError {
    let message = e.message().to_owned();
    let auth = e.class() == git2::ErrorClass::Http && message.contains("401")
        || e.code() == git2::ErrorCode::Auth
        || message.contains("authentication")
        || message.contains("403");
    if auth {
        GitError::Auth {
            repo: repo.to_owned(),
            message,
        }
    } else {
        GitError::Unreachable {
            repo: repo.to_owned(),
            message,
        }
    }
}

/// How long libgit2 waits for a git server to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long libgit2 waits for a git server to answer a read or write.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets libgit2's server connect and read timeouts (none by default: a
/// server that accepts and never answers would hold a fetch forever). Once
/// per process, before the first network operation; every git call of
/// Gantry's goes through here.
pub fn set_server_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: libgit2 reads these globals when it opens a connection;
        // they are written once, here, before any connection is opened.
        let set = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(ms(CONNECT_TIMEOUT))
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms(READ_TIMEOUT)))
        };
        if let Err(e) = set {
            tracing::warn!(error = %e, "cannot set git server timeouts");
        }
    });
}

/// Progress callbacks that abort the transfer once `deadline` has passed
/// (libgit2 stops when one returns false).
pub fn abort_after(callbacks: &mut git2::RemoteCallbacks<'_>, deadline: Option<Instant>) {
    let Some(deadline) = deadline else { return };
    callbacks.transfer_progress(move |_| Instant::now() < deadline);
    callbacks.sideband_progress(move |_| Instant::now() < deadline);
}

fn callbacks(token: Option<&str>) -> git2::RemoteCallbacks<'static> {
    set_server_timeouts();
    let mut callbacks = git2::RemoteCallbacks::new();
    if let Some(token) = token {
        let token = token.to_owned();
        let mut tries = 0;
        callbacks.credentials(move |_url, user, _allowed| {
            // libgit2 asks again after a refusal; a second ask means the token is wrong.
            tries += 1;
            if tries > 1 {
                return Err(git2::Error::from_str(
                    "authentication failed with source.token",
                ));
            }
            git2::Cred::userpass_plaintext(user.unwrap_or("x-access-token"), &token)
        });
    }
    callbacks
}

/// The commit `refs/heads/<branch>` points at in `repo` (a URL or local path).
/// `token` is used as the password of an HTTPS remote.
pub fn branch_head(repo: &str, branch: &str, token: Option<&str>) -> Result<String, GitError> {
    let mut remote = Remote::create_detached(repo).map_err(|e| classify(repo, e))?;
    let conn = remote
        .connect_auth(Direction::Fetch, Some(callbacks(token)), None)
        .map_err(|e| classify(repo, e))?;
    let wanted = format!("refs/heads/{branch}");
    let heads = conn.list().map_err(|e| classify(repo, e))?;
    heads
        .iter()
        .find(|h| h.name() == wanted)
        .map(|h| h.oid().to_string())
        .ok_or_else(|| GitError::NoBranch {
            repo: repo.to_owned(),
            branch: branch.to_owned(),
        })
}

/// What a checkout found out about its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    /// Committer time: the reproducible "created" time of what is built from it.
    pub time: DateTime<Utc>,
    pub author_name: Option<String>,
    pub author_email: Option<String>,
    pub files: usize,
}

/// Where a pipeline's commits come from.
struct BranchSource<'a> {
    repo: &'a str,
    branch: &'a str,
    token: Option<&'a str>,
}

/// A commit's author or committer as the commit records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// Who a commit says wrote and committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPeople {
    pub author: Signer,
    pub committer: Signer,
}

/// Bare mirrors of source repositories, one per pipeline, under `root`.
/// Checkouts of the same pipeline take turns (in this process) on the mirror;
/// different pipelines proceed in parallel.
#[derive(Debug, Clone)]
pub struct SourceCache {
    root: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Each fetch is abandoned after this long (`source.timeout`).
    fetch_timeout: Option<Duration>,
}

impl SourceCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            locks: Default::default(),
            fetch_timeout: None,
        }
    }

    /// The same cache (shared mirrors and turns), whose fetches are
    /// abandoned after `timeout` (a pipeline's `source.timeout`).
    pub fn fetch_within(&self, timeout: Duration) -> Self {
        Self {
            fetch_timeout: Some(timeout),
            ..self.clone()
        }
    }

    fn lock_for(&self, key: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Writes the tree of `commit` from `repo` into `dest` (which must be empty
    /// or missing), fetching `branch` into the pipeline's mirror first when
    /// the commit is not there yet. Only the pipeline's branch is fetched:
    /// other branches and tags of the repository are not the pipeline's to
    /// build. Blocking: call from `spawn_blocking`.
    pub fn checkout(
        &self,
        pipeline: &str,
        repo: &str,
        branch: &str,
        token: Option<&str>,
        commit: &str,
        dest: &Path,
    ) -> Result<Checkout, GitError> {
        let source = BranchSource {
            repo,
            branch,
            token,
        };
        self.with_commit(pipeline, &source, commit, false, |mirror, found| {
            let tree = found.tree().map_err(|e| cache_err(mirror, e))?;
            std::fs::create_dir_all(dest).map_err(|source| GitError::Write {
                path: dest.display().to_string(),
                source,
            })?;
            let files = write_tree(mirror, &tree, dest)?;
            let time = Utc
                .timestamp_opt(found.committer().when().seconds(), 0)
                .single()
                .unwrap_or_default();
            let author = found.author();
            Ok(Checkout {
                commit: found.id().to_string(),
                time,
                author_name: author.name().map(str::to_owned),
                author_email: author.email().map(str::to_owned),
                files,
            })
        })
    }

    /// Fetches `branch` and checks that `commit` is reachable from its tip
    /// (a manual trigger may only name what the branch holds). Returns who
    /// wrote and committed it, as the commit says. Blocking.
    pub fn commit_on_branch(
        &self,
        pipeline: &str,
        repo: &str,
        branch: &str,
        token: Option<&str>,
        commit: &str,
    ) -> Result<CommitPeople, GitError> {
        let source = BranchSource {
            repo,
            branch,
            token,
        };
        self.with_commit(pipeline, &source, commit, true, |_, found| {
            let person = |s: git2::Signature<'_>| Signer {
                name: s.name().map(str::to_owned),
                email: s.email().map(str::to_owned),
            };
            Ok(CommitPeople {
                author: person(found.author()),
                committer: person(found.committer()),
            })
        })
    }

    /// Runs `f` on `commit` in the pipeline's mirror, on its turn, once the
    /// commit is known to be in the history of the branch: fetched first
    /// when the mirror lacks it (or always, with `refresh`). The object
    /// alone is not enough, since a local transport may bring more than the
    /// branch.
    fn with_commit<T>(
        &self,
        pipeline: &str,
        source: &BranchSource<'_>,
        commit: &str,
        refresh: bool,
        f: impl FnOnce(&Repository, &git2::Commit<'_>) -> Result<T, GitError>,
    ) -> Result<T, GitError> {
        let oid = parse_commit(commit)?;
        let lock = self.lock_for(pipeline);
        let _turn = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mirror = self.open_mirror(pipeline)?;
        let branch = source.branch;
        if refresh || mirror.find_commit(oid).is_err() || !on_branch(&mirror, branch, oid) {
            let deadline = self.fetch_timeout.map(|t| Instant::now() + t);
            fetch(&mirror, source.repo, branch, source.token, deadline).map_err(|e| {
                match (e, self.fetch_timeout) {
                    (GitError::Unreachable { repo, .. }, Some(t))
                        if deadline.is_some_and(|d| Instant::now() >= d) =>
                    {
                        GitError::TimedOut { repo, after: t }
                    }
                    (e, _) => e,
                }
            })?;
        }
        let missing = || GitError::MissingCommit {
            repo: source.repo.to_owned(),
            branch: branch.to_owned(),
            commit: commit.to_owned(),
        };
        if mirror
            .refname_to_id(&format!("refs/heads/{branch}"))
            .is_err()
        {
            return Err(GitError::NoBranch {
                repo: source.repo.to_owned(),
                branch: branch.to_owned(),
            });
        }
        let found = mirror.find_commit(oid).map_err(|_| missing())?;
        if !on_branch(&mirror, branch, oid) {
            return Err(missing());
        }
        f(&mirror, &found)
    }

    fn open_mirror(&self, pipeline: &str) -> Result<Repository, GitError> {
        let path = self.root.join(format!("{pipeline}.git"));
        let err = |e: git2::Error| GitError::Cache {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        };
        match Repository::open_bare(&path) {
            Ok(r) => Ok(r),
            Err(_) => {
                std::fs::create_dir_all(&self.root).map_err(|e| GitError::Cache {
                    path: self.root.display().to_string(),
                    message: e.to_string(),
                })?;
                Repository::init_bare(&path).map_err(err)
            }
        }
    }
}

/// Whether `oid` is the tip of `branch` in `mirror` or in its history.
fn on_branch(mirror: &Repository, branch: &str, oid: Oid) -> bool {
    match mirror.refname_to_id(&format!("refs/heads/{branch}")) {
        Ok(tip) => tip == oid || mirror.graph_descendant_of(tip, oid).unwrap_or(false),
        Err(_) => false,
    }
}

fn parse_commit(commit: &str) -> Result<Oid, GitError> {
    let ok =
        (commit.len() == 40 || commit.len() == 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(GitError::BadCommit(commit.to_owned()));
    }
    Oid::from_str(commit).map_err(|_| GitError::BadCommit(commit.to_owned()))
}

fn cache_err(repo: &Repository, e: git2::Error) -> GitError {
    GitError::Cache {
        path: repo.path().display().to_string(),
        message: e.message().to_owned(),
    }
}

/// Fetches only `branch` (and no tags): what a pipeline builds must be on
/// the branch it follows.
fn fetch(
    mirror: &Repository,
    repo: &str,
    branch: &str,
    token: Option<&str>,
    deadline: Option<Instant>,
) -> Result<(), GitError> {
    let mut remote = mirror
        .remote_anonymous(repo)
        .map_err(|e| classify(repo, e))?;
    let mut options = FetchOptions::new();
    let mut callbacks = callbacks(token);
    abort_after(&mut callbacks, deadline);
    options.remote_callbacks(callbacks);
    options.download_tags(git2::AutotagOption::None);
    remote
        .fetch(
            &[&format!("+refs/heads/{branch}:refs/heads/{branch}")],
            Some(&mut options),
            None,
        )
        .map_err(|e| classify(repo, e))
}

/// Writes blobs of `tree` under `dest`, keeping the executable bit. Symbolic
/// links and submodules are not followed or written: a configuration
/// repository has no business pointing outside itself.
fn write_tree(repo: &Repository, tree: &git2::Tree<'_>, dest: &Path) -> Result<usize, GitError> {
    let mut files = 0;
    for entry in tree.iter() {
        let Some(name) = entry.name() else { continue };
        if name == ".git" || name.contains('/') || name == ".." {
            continue;
        }
        let path = dest.join(name);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id()).map_err(|e| cache_err(repo, e))?;
                std::fs::create_dir_all(&path).map_err(|source| GitError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
                files += write_tree(repo, &sub, &path)?;
            }
            Some(ObjectType::Blob) if entry.filemode() != 0o120000 => {
                let blob = repo.find_blob(entry.id()).map_err(|e| cache_err(repo, e))?;
                std::fs::write(&path, blob.content()).map_err(|source| GitError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
                #[cfg(unix)]
                if entry.filemode() == 0o100755 {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
                }
                files += 1;
            }
            _ => {}
        }
    }
    Ok(files)
}
