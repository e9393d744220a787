//! Settings shared by every command (DESIGN.md 1.4, 1.6).
//!
//! Layering: command-line flags over `GANTRY_*` environment variables over
//! the embedded defaults here; the binary's clap definitions do the first two.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::bus::NatsSettings;

/// Default HTTP listen address (`GANTRY_LISTEN`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct Settings {
    /// `GANTRY_DATABASE_URL`; SQLite under the data dir when unset.
    pub database_url: Option<String>,
    /// `GANTRY_NATS_URL`; in-process delivery when unset.
    pub nats_url: Option<String>,
    pub nats_prefix: String,
    pub nats_stream: String,
    pub listen: SocketAddr,
    pub pipelines: PathBuf,
    pub data_dir: PathBuf,
    /// `GANTRY_API_TOKENS`: YAML file of hashed API tokens.
    pub api_tokens: Option<PathBuf>,
    /// `GANTRY_ALLOW_ANONYMOUS` / `--allow-anonymous`: serve without API
    /// tokens on a non-loopback address (DESIGN.md 1.7).
    pub allow_anonymous: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            nats_url: None,
            nats_prefix: "gantry".into(),
            nats_stream: "GANTRY_EVENTS".into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            pipelines: PathBuf::from("pipelines"),
            data_dir: PathBuf::from(".gantry"),
            api_tokens: None,
            allow_anonymous: false,
        }
    }
}

impl Settings {
    /// The database to use: the configured URL, or `sqlite://<data dir>/gantry.db`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => format!("sqlite://{}", self.data_dir.join("gantry.db").display()),
        }
    }

    /// Whether an HTTP server may listen on [`Settings::listen`]: always with
    /// API tokens, on a loopback address, or when anonymous access was asked
    /// for explicitly (DESIGN.md 1.7). Checked by `gantry up` and
    /// `gantry serve api|webhook` before they start anything.
    pub fn check_exposure(&self) -> Result<(), ExposureError> {
        check_exposure(self.listen, self.api_tokens.is_some(), self.allow_anonymous)
    }

    pub fn nats(&self) -> Option<NatsSettings> {
        let url = self.nats_url.as_ref().filter(|u| !u.trim().is_empty())?;
        Some(NatsSettings {
            url: url.clone(),
            prefix: self.nats_prefix.clone(),
            stream: self.nats_stream.clone(),
        })
    }
}

/// A refusal to serve without authentication on a reachable address; the
/// message says how to set up API tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to listen on {listen} without API tokens: anyone who can reach that address \
     could trigger runs, approve promotions and roll stages back.\n\
     Set up API tokens: write a YAML file such as\n\
     \n\
     tokens:\n  \
       - user: rita                   # recorded as who approved\n    \
         email: rita@example.com\n    \
         groups: [release-managers]\n    \
         sha256: <hex sha256 of the token: printf %s \"$TOKEN\" | sha256sum>\n\
     \n\
     and point GANTRY_API_TOKENS (or --api-tokens) at it; clients then send \
     `Authorization: Bearer <token>` (GANTRY_TOKEN / --token for the CLI).\n\
     Or listen on a loopback address only (--listen 127.0.0.1:8080), or serve \
     without authentication on purpose with --allow-anonymous (GANTRY_ALLOW_ANONYMOUS=true)."
)]
pub struct ExposureError {
    pub listen: SocketAddr,
}

/// See [`Settings::check_exposure`].
pub fn check_exposure(
    listen: SocketAddr,
    has_tokens: bool,
    allow_anonymous: bool,
) -> Result<(), ExposureError> {
    if has_tokens || allow_anonymous || is_loopback(listen.ip()) {
        Ok(())
    } else {
        Err(ExposureError { listen })
    }
}

/// 127.0.0.0/8, `::1`, and IPv4-mapped loopback (`::ffff:127.0.0.1`).
/// Unspecified addresses (`0.0.0.0`, `::`) listen everywhere and are not.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// [`is_loopback`] for a host name or address as written: `localhost`
/// (and `*.localhost`), or a loopback address, with or without brackets.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_addresses_need_no_tokens() {
        for listen in [
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(
                check_exposure(addr(listen), false, false),
                Ok(()),
                "{listen}"
            );
        }
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("example.com"));
        assert!(!is_loopback_host("0.0.0.0"));
    }

    #[test]
    fn a_reachable_address_without_tokens_is_refused() {
        for listen in [
            "0.0.0.0:8080",
            "[::]:8080",
            "10.1.2.3:8080",
            "192.168.0.5:80",
        ] {
            let err = check_exposure(addr(listen), false, false).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(listen), "{text}");
            assert!(text.contains("GANTRY_API_TOKENS"), "{text}");
            assert!(text.contains("sha256sum"), "{text}");
            assert!(text.contains("tokens:"), "{text}");
            assert!(text.contains("--allow-anonymous"), "{text}");
            assert!(text.contains("GANTRY_ALLOW_ANONYMOUS=true"), "{text}");
        }
    }

    #[test]
    fn tokens_or_an_explicit_allow_anonymous_open_any_address() {
        assert_eq!(check_exposure(addr("0.0.0.0:8080"), true, false), Ok(()));
        assert_eq!(check_exposure(addr("0.0.0.0:8080"), false, true), Ok(()));
        let settings = Settings {
            listen: addr("0.0.0.0:8080"),
            ..Settings::default()
        };
        assert!(settings.check_exposure().is_err());
        assert!(Settings::default().check_exposure().is_ok());
    }
}
