//! Registry credentials and `WWW-Authenticate` challenges.
//!
//! Credentials arrive already resolved (the pipeline's `env:`/`file:` secret
//! references are resolved by the caller) or come from a Docker
//! `config.json` `auths` entry. They are never logged: `Debug` shows only the
//! user name, and errors never carry them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{ImageError, Result};
use crate::reference::DOCKER_HUB;

/// A user name and password (or token used as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// `Basic <base64(user:password)>`.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials per registry (`host[:port]`, `docker.io`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CredentialStore {
    entries: BTreeMap<String, Credentials>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("registries", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl CredentialStore {
    pub fn new() -> CredentialStore {
        CredentialStore::default()
    }

    /// Adds (or replaces) the credentials for a registry.
    pub fn insert(&mut self, registry: &str, credentials: Credentials) {
        self.entries.insert(normalize_key(registry), credentials);
    }

    /// Builder form of [`CredentialStore::insert`].
    pub fn with(mut self, registry: &str, credentials: Credentials) -> CredentialStore {
        self.insert(registry, credentials);
        self
    }

    /// The credentials for a registry, if any.
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.entries.get(&normalize_key(registry))
    }

    /// Registries with credentials.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Reads the `auths` entries of a Docker `config.json` text. Each entry
    /// gives `auth` (base64 of `user:password`) or `username` and `password`.
    /// Entries with neither (an `identitytoken` alone, or a credential helper
    /// named in `credsStore`/`credHelpers`) are skipped: resolve those before
    /// calling Gantry.
    pub fn from_docker_config(json: &str) -> Result<CredentialStore> {
        let cfg: DockerConfig = serde_json::from_str(json).map_err(|e| {
            ImageError::Credentials(format!(
                "the Docker config is not valid JSON with an `auths` object (line {}, column {}); \
                 fix the file",
                e.line(),
                e.column()
            ))
        })?;
        let mut store = CredentialStore::new();
        for (key, entry) in cfg.auths {
            let creds = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| {
                            ImageError::Credentials(format!(
                                "the `auth` of the Docker config entry for {key:?} is not \
                                 base64; it must be base64 of user:password"
                            ))
                        })?;
                    let text = String::from_utf8(raw).map_err(|_| {
                        ImageError::Credentials(format!(
                            "the `auth` of the Docker config entry for {key:?} is not UTF-8 text"
                        ))
                    })?;
                    let (u, p) = text.split_once(':').ok_or_else(|| {
                        ImageError::Credentials(format!(
                            "the `auth` of the Docker config entry for {key:?} has no ':'; it \
                             must be base64 of user:password"
                        ))
                    })?;
                    Credentials::new(u, p)
                }
                (_, Some(u), Some(p)) if !u.is_empty() => Credentials::new(u.clone(), p.clone()),
                _ => continue,
            };
            store.insert(&key, creds);
        }
        Ok(store)
    }

    /// Reads a Docker `config.json` file (see [`CredentialStore::from_docker_config`]).
    pub fn load_docker_config(path: &Path) -> Result<CredentialStore> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ImageError::io("cannot read the Docker config", path, e))?;
        CredentialStore::from_docker_config(&text).map_err(|e| match e {
            ImageError::Credentials(m) => {
                ImageError::Credentials(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }
}

/// Normalizes a registry key as Docker does: no scheme, no path, Docker Hub
/// aliases folded into `docker.io`, lowercase.
pub fn normalize_key(registry: &str) -> String {
    let s = registry.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

/// One `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Other(String),
}

/// Parses a `WWW-Authenticate` value: `Bearer realm="...",service="...",scope="..."`
/// or `Basic realm="..."`; several challenges may follow each other.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i].is_whitespace() || chars[*i] == ',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && !chars[*i].is_whitespace() && chars[*i] != ',' && chars[*i] != '='
        {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            i += 1;
            continue;
        }
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        loop {
            // Peek: `key=value` continues this challenge; a bare token starts the next.
            let save = i;
            skip_ws(&mut i);
            let key = token(&mut i);
            if key.is_empty() || i >= chars.len() || chars[i] != '=' {
                i = save;
                break;
            }
            i += 1; // '='
            let mut value = String::new();
            if i < chars.len() && chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
                i += 1; // closing quote
            } else {
                while i < chars.len() && chars[i] != ',' && !chars[i].is_whitespace() {
                    value.push(chars[i]);
                    i += 1;
                }
            }
            params.insert(key.to_ascii_lowercase(), value);
            // Step over the separator after the value.
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && chars[i] == ',' {
                i += 1;
            } else {
                break;
            }
        }
        let challenge = match scheme.to_ascii_lowercase().as_str() {
            "basic" => Challenge::Basic,
            "bearer" => match params.remove("realm") {
                Some(realm) => Challenge::Bearer {
                    realm,
                    service: params.remove("service"),
                    scope: params.remove("scope"),
                },
                None => Challenge::Other(scheme),
            },
            _ => Challenge::Other(scheme),
        };
        out.push(challenge);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries() {
        let json = r#"{
          "auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000": {"username": "u2", "password": "p2"},
            "ghcr.io": {"identitytoken": "x"}
          },
          "credsStore": "desktop"
        }"#;
        let store = CredentialStore::from_docker_config(json).unwrap();
        let hub = store.get("docker.io").unwrap();
        assert_eq!(hub.username(), "user");
        assert_eq!(
            hub.basic_header(),
            Credentials::new("user", "pa:ss").basic_header()
        );
        assert_eq!(
            store.get("http://127.0.0.1:5000/v2/").unwrap().username(),
            "u2"
        );
        assert!(store.get("ghcr.io").is_none());
        let dbg = format!("{store:?} {hub:?}");
        assert!(!dbg.contains("pa:ss"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        let e = CredentialStore::from_docker_config(r#"{"auths":{"x":{"auth":"!!"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64"), "{e}");
    }

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="gantry-test""#),
            vec![Challenge::Basic]
        );
        let two = parse_challenges(r#"Negotiate, Basic realm="x", Bearer realm="http://a/t""#);
        assert_eq!(two.len(), 3);
        assert_eq!(two[1], Challenge::Basic);
        assert!(matches!(&two[2], Challenge::Bearer { realm, .. } if realm == "http://a/t"));
    }
}
