//! Secret references and resolved secrets.
//!
//! A pipeline file is committed to Git and shown by the API, so it must never
//! hold a secret: secret fields name where the secret lives (`env:NAME` or
//! `file:/path`) and the value is read only when a worker needs it. The
//! resolved value is wrapped in [`Secret`], whose `Debug`/`Display` print
//! `***`, so a stray `{:?}` in a log line cannot leak it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The message for any secret field holding something other than a reference.
/// It deliberately does not echo the value: it may be the secret itself.
pub const SECRET_FORMAT_HINT: &str = "secret fields must be `env:NAME` or `file:/path`";

/// Where a secret lives: an environment variable or a file (e.g. a mounted
/// Kubernetes secret).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// `env:NAME` — the value of environment variable `NAME`.
    Env(String),
    /// `file:/path` — the contents of an absolute file path, trailing newline trimmed.
    File(PathBuf),
}

/// Why a string is not a valid [`SecretRef`]. Messages never include the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefError {
    #[error("{SECRET_FORMAT_HINT}")]
    NotAReference,
    #[error("`env:` needs a variable name made of letters, digits and `_` (e.g. `env:GIT_TOKEN`)")]
    BadEnvName,
    #[error("`file:` needs an absolute path (e.g. `file:/run/secrets/git-token`)")]
    RelativeFile,
}

/// Why a secret could not be read. Names the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    EnvMissing(String),
    #[error("environment variable `{0}` is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read secret file `{}`: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file `{}` is not valid UTF-8", .0.display())]
    FileNotUnicode(PathBuf),
    #[error("secret `{0}` is empty")]
    Empty(String),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:/absolute/path`; anything else is rejected.
    pub fn parse(s: &str) -> Result<Self, SecretRefError> {
        if let Some(name) = s.strip_prefix("env:") {
            let mut chars = name.chars();
            let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if valid {
                Ok(SecretRef::Env(name.to_owned()))
            } else {
                Err(SecretRefError::BadEnvName)
            }
        } else if let Some(path) = s.strip_prefix("file:") {
            let path = Path::new(path);
            if path.is_absolute() {
                Ok(SecretRef::File(path.to_path_buf()))
            } else {
                Err(SecretRefError::RelativeFile)
            }
        } else {
            Err(SecretRefError::NotAReference)
        }
    }

    /// Reads the secret now. Files have trailing `\n`/`\r\n` trimmed, as
    /// `echo token > file` and Kubernetes secrets often add one.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvMissing(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            SecretRef::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                let mut text = String::from_utf8(bytes)
                    .map_err(|_| SecretError::FileNotUnicode(path.clone()))?;
                let trimmed_len = text.trim_end_matches(['\n', '\r']).len();
                text.truncate(trimmed_len);
                text
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

impl FromStr for SecretRef {
    type Err = SecretRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretRef::parse(s)
    }
}

/// Shows the reference (`env:NAME`), which is safe to log; never the value.
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SecretRef::parse(&text).map_err(de::Error::custom)
    }
}

/// A resolved secret value. `Debug` and `Display` print `***`; call
/// [`Secret::expose`] at the single place the value is actually used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (e.g. a header literal) so it gets the
    /// same redaction.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A smoke-check request header: a literal (`Accept: application/json`) or a
/// secret reference (`KeyId: env:TEST_KEY`). A value starting with `env:` or
/// `file:` is always read as a reference, so a typo cannot silently send the
/// reference text as the header.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Literal(String),
    Secret(SecretRef),
}

/// A stage variable (`stages[].env.NAME`): a literal, which is not secret,
/// or a secret reference, whose value is masked wherever it shows. Same
/// syntax as a header value.
pub type EnvValue = HeaderValue;

impl HeaderValue {
    /// The reference, when this is a secret.
    pub fn secret_ref(&self) -> Option<&SecretRef> {
        match self {
            HeaderValue::Literal(_) => None,
            HeaderValue::Secret(r) => Some(r),
        }
    }

    /// The value to send. Literals are wrapped in [`Secret`] too: headers
    /// often carry credentials, so callers treat them all as sensitive.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            HeaderValue::Literal(v) => Ok(Secret(v.clone())),
            HeaderValue::Secret(r) => r.resolve(),
        }
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Literal(v) => write!(f, "Literal({v:?})"),
            HeaderValue::Secret(r) => write!(f, "Secret({r})"),
        }
    }
}

impl Serialize for HeaderValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderValue::Literal(v) => s.serialize_str(v),
            HeaderValue::Secret(r) => s.collect_str(r),
        }
    }
}

impl<'de> Deserialize<'de> for HeaderValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.starts_with("env:") || text.starts_with("file:") {
            SecretRef::parse(&text)
                .map(HeaderValue::Secret)
                .map_err(de::Error::custom)
        } else {
            Ok(HeaderValue::Literal(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_and_file() {
        assert_eq!(
            SecretRef::parse("env:GIT_TOKEN"),
            Ok(SecretRef::Env("GIT_TOKEN".into()))
        );
        assert_eq!(
            SecretRef::parse("file:/run/secrets/token"),
            Ok(SecretRef::File("/run/secrets/token".into()))
        );
    }

    #[test]
    fn rejects_literals_and_bad_refs() {
        assert_eq!(
            SecretRef::parse("hunter2"),
            Err(SecretRefError::NotAReference)
        );
        assert_eq!(SecretRef::parse(""), Err(SecretRefError::NotAReference));
        assert_eq!(
            SecretRef::parse("ENV:X"),
            Err(SecretRefError::NotAReference)
        );
        assert_eq!(SecretRef::parse("env:"), Err(SecretRefError::BadEnvName));
        assert_eq!(SecretRef::parse("env:1X"), Err(SecretRefError::BadEnvName));
        assert_eq!(SecretRef::parse("env:A-B"), Err(SecretRefError::BadEnvName));
        assert_eq!(
            SecretRef::parse("file:token"),
            Err(SecretRefError::RelativeFile)
        );
        assert_eq!(SecretRef::parse("file:"), Err(SecretRefError::RelativeFile));
        // The message must not echo what was written: it may be the secret.
        let msg = SecretRef::parse("hunter2").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"));
        assert_eq!(msg, SECRET_FORMAT_HINT);
    }

    #[test]
    fn display_round_trips() {
        for s in ["env:A_1", "file:/x/y"] {
            assert_eq!(SecretRef::parse(s).expect("valid").to_string(), s);
        }
    }

    #[test]
    fn resolves_file_trimming_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\r\n\n").expect("write");
        let r = SecretRef::File(path.clone());
        assert_eq!(r.resolve().expect("resolves").expose(), "s3cret");

        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(r.resolve(), Err(SecretError::Empty(_))));

        let missing = SecretRef::File(dir.path().join("nope"));
        let err = missing.resolve().expect_err("missing file");
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn resolves_env() {
        // Read an env var that the test process is sure to have rather than
        // mutating the environment (unsafe and racy across threads).
        let r = SecretRef::Env("PATH".into());
        assert!(!r.resolve().expect("PATH is set").expose().is_empty());
        let missing = SecretRef::Env("GANTRY_TEST_SURELY_UNSET_VARIABLE_42".into());
        assert!(matches!(missing.resolve(), Err(SecretError::EnvMissing(_))));
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
        let h = HeaderValue::Literal("v".into());
        assert_eq!(format!("{:?}", h.resolve().expect("literal")), "***");
    }
}
