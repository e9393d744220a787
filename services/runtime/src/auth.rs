//! API identities from `GANTRY_API_TOKENS` (DESIGN.md 1.6): a YAML file of
//! users with the sha256 of their token. Tokens are never stored in clear;
//! a presented token is hashed and compared in constant time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Who made an API call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Identity {
    pub user: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    user: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read API tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API tokens file {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

/// The known tokens.
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    entries: Vec<([u8; 32], Identity)>,
}

impl ApiTokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, TokensError> {
        let invalid = |message: String| TokensError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: TokenFile = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut entries = Vec::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.into_iter().enumerate() {
            let bytes = hex::decode(t.sha256.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                invalid(format!(
                    "tokens[{i}].sha256 must be 64 hex digits (the sha256 of the token, e.g. `printf %s TOKEN | sha256sum`)"
                ))
            })?;
            if t.user.trim().is_empty() {
                return Err(invalid(format!("tokens[{i}].user is empty")));
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes);
            entries.push((
                hash,
                Identity {
                    user: t.user,
                    email: t.email,
                    groups: t.groups,
                },
            ));
        }
        Ok(Self { entries })
    }

    /// The identity a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&Identity> {
        self.authenticate_digest(&token_digest(token))
    }

    /// The identity of the token whose sha256 is `presented` (a console
    /// session keeps the digest, never the token: a token removed from the
    /// file ends its sessions too).
    pub fn authenticate_digest(&self, presented: &[u8; 32]) -> Option<&Identity> {
        let mut found = None;
        // Compare against every entry so timing does not reveal which matched.
        for (hash, identity) in &self.entries {
            let mut diff = 0u8;
            for (a, b) in hash.iter().zip(presented.iter()) {
                diff |= a ^ b;
            }
            if diff == 0 {
                found = Some(identity);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The sha256 of a token, as the tokens file holds it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// How often [`TokenSource::watch`] looks at the tokens file by default.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The API tokens in force, read from `GANTRY_API_TOKENS` and read again
/// when the file changes (its modification time or size, polled) or on
/// SIGHUP. A file that no longer parses keeps the tokens in force and logs
/// an error, so a bad edit locks nobody out and lets no one in.
#[derive(Debug, Clone)]
pub struct TokenSource {
    path: PathBuf,
    current: Arc<RwLock<Arc<ApiTokens>>>,
    stamp: Arc<RwLock<Option<(SystemTime, u64)>>>,
}

impl TokenSource {
    /// Reads the file; an unreadable or invalid file is an error here (at
    /// start), unlike on reload.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let stamp = file_stamp(path);
        let tokens = ApiTokens::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: Arc::new(RwLock::new(Arc::new(tokens))),
            stamp: Arc::new(RwLock::new(stamp)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent snapshot of the tokens in force.
    pub fn get(&self) -> Arc<ApiTokens> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reads the file again. On success the new tokens replace the old ones
    /// (a removed token is refused from now on); on failure the old ones
    /// stay and the error is logged and returned.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let stamp = file_stamp(&self.path);
        // Remember the stamp even when the file is invalid, so a broken file
        // is reported once, not every poll.
        match self.stamp.write() {
            Ok(mut g) => *g = stamp,
            Err(p) => *p.into_inner() = stamp,
        }
        match ApiTokens::load(&self.path) {
            Ok(tokens) => {
                let n = tokens.len();
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(tokens),
                    Err(p) => *p.into_inner() = Arc::new(tokens),
                }
                tracing::info!(path = %self.path.display(), tokens = n, "API tokens loaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "API tokens not reloaded; the previous tokens stay in force");
                Err(e)
            }
        }
    }

    /// Reloads when the file's modification time or size changed since the
    /// last load; `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<usize, TokensError>> {
        let now = file_stamp(&self.path);
        let last = self
            .stamp
            .read()
            .map(|g| *g)
            .unwrap_or_else(|p| *p.into_inner());
        if now == last {
            return None;
        }
        Some(self.reload())
    }

    /// Watches the file until `shutdown`: polls it every `interval` and
    /// reloads on SIGHUP. Registers the signal handler before returning, so
    /// a SIGHUP sent right after is not missed. Needs a Tokio runtime.
    pub fn watch(
        &self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler; API tokens reload on file changes only"))
            .ok();
        let source = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => { let _ = source.reload_if_changed(); }
                    _ = hangup => { let _ = source.reload(); }
                }
            }
        })
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_by_hash() {
        let hash = hex::encode(Sha256::digest(b"s3cret"));
        let tokens = ApiTokens::parse(
            "t.yaml",
            &format!("tokens:\n  - user: rita\n    email: rita@example.com\n    groups: [release-managers]\n    sha256: {hash}\n"),
        )
        .unwrap();
        let who = tokens.authenticate("s3cret").unwrap();
        assert_eq!(who.user, "rita");
        assert_eq!(who.groups, vec!["release-managers"]);
        assert!(tokens.authenticate("wrong").is_none());
    }

    #[test]
    fn a_clear_text_token_is_refused() {
        let err = ApiTokens::parse("t.yaml", "tokens:\n  - user: rita\n    sha256: s3cret\n")
            .unwrap_err();
        assert!(err.to_string().contains("tokens[0].sha256"), "{err}");
    }

    fn token_file(tokens: &[(&str, &str)]) -> String {
        let mut yaml = String::from("tokens:\n");
        for (token, user) in tokens {
            let hash = hex::encode(Sha256::digest(token.as_bytes()));
            yaml.push_str(&format!("  - user: {user}\n    sha256: {hash}\n"));
        }
        yaml
    }

    #[test]
    fn a_revoked_token_is_refused_after_reload_and_a_bad_file_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            token_file(&[("a-token", "rita"), ("b-token", "bob")]),
        )
        .unwrap();
        let source = TokenSource::load(&path).unwrap();
        assert_eq!(source.get().authenticate("a-token").unwrap().user, "rita");
        assert!(source.reload_if_changed().is_none(), "nothing changed yet");

        std::fs::write(&path, token_file(&[("b-token", "bob")])).unwrap();
        assert_eq!(source.reload_if_changed().unwrap().unwrap(), 1);
        assert!(source.get().authenticate("a-token").is_none());
        assert_eq!(source.get().authenticate("b-token").unwrap().user, "bob");

        std::fs::write(&path, "tokens: [ this is not valid").unwrap();
        assert!(source.reload_if_changed().unwrap().is_err());
        assert_eq!(source.get().authenticate("b-token").unwrap().user, "bob");
        assert!(
            source.reload_if_changed().is_none(),
            "a bad file is reported once"
        );
    }
}
