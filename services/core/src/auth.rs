//! API identities from `GANTRY_API_TOKENS` (DESIGN.md 1.6): a YAML file of
//! users with the sha256 of their token. Tokens are never stored in clear;
//! a presented token is hashed and compared in constant time.

use std::path::Path;

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
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
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
}
