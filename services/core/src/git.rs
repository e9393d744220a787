//! Asking a repository for a branch's head without cloning it.

use git2::{Direction, Remote};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot reach repository {repo}: {message}")]
    Unreachable { repo: String, message: String },
    #[error("repository {repo} has no branch `{branch}`")]
    NoBranch { repo: String, branch: String },
}

/// The commit `refs/heads/<branch>` points at in `repo` (a URL or local path).
/// `token` is used as the password of an HTTPS remote.
pub fn branch_head(repo: &str, branch: &str, token: Option<&str>) -> Result<String, GitError> {
    let unreachable = |e: git2::Error| GitError::Unreachable {
        repo: repo.to_owned(),
        message: e.message().to_owned(),
    };
    let mut remote = Remote::create_detached(repo).map_err(unreachable)?;
    let mut callbacks = git2::RemoteCallbacks::new();
    if let Some(token) = token {
        let token = token.to_owned();
        callbacks.credentials(move |_url, user, _allowed| {
            git2::Cred::userpass_plaintext(user.unwrap_or("x-access-token"), &token)
        });
    }
    let conn = remote
        .connect_auth(Direction::Fetch, Some(callbacks), None)
        .map_err(unreachable)?;
    let wanted = format!("refs/heads/{branch}");
    let heads = conn.list().map_err(unreachable)?;
    heads
        .iter()
        .find(|h| h.name() == wanted)
        .map(|h| h.oid().to_string())
        .ok_or_else(|| GitError::NoBranch {
            repo: repo.to_owned(),
            branch: branch.to_owned(),
        })
}
