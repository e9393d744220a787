//! Settings shared by every command (DESIGN.md 1.4, 1.6).
//!
//! Layering: command-line flags over `GANTRY_*` environment variables over
//! the embedded defaults here; the binary's clap definitions do the first two.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use gantry_store::bus::{NatsConnection, NatsSettings, StreamLimits};

// The embedded defaults, in one place: `Settings::default()` and the
// binary's flags both use these.

/// Default HTTP listen address (`GANTRY_LISTEN`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default NATS subject prefix (`GANTRY_NATS_PREFIX`).
pub const DEFAULT_NATS_PREFIX: &str = "gantry";
/// Default JetStream stream name (`GANTRY_NATS_STREAM`).
pub const DEFAULT_NATS_STREAM: &str = "GANTRY_EVENTS";
/// Default directory of pipeline definitions (`GANTRY_PIPELINES`).
pub const DEFAULT_PIPELINES: &str = "pipelines";
/// Default directory of embedded state (`GANTRY_DATA_DIR`).
pub const DEFAULT_DATA_DIR: &str = ".gantry";
/// Default replicas of the JetStream storage Gantry creates (`GANTRY_NATS_REPLICAS`).
pub const DEFAULT_NATS_REPLICAS: u8 = 1;

#[derive(Clone)]
pub struct Settings {
    /// `GANTRY_DATABASE_URL`; SQLite under the data dir when unset.
    pub database_url: Option<String>,
    /// `GANTRY_NATS_URL`; in-process delivery when unset.
    pub nats_url: Option<String>,
    pub nats_prefix: String,
    pub nats_stream: String,
    /// `GANTRY_NATS_CREDS`, `GANTRY_NATS_NKEY`, `GANTRY_NATS_CA`,
    /// `GANTRY_NATS_CERT`, `GANTRY_NATS_KEY`.
    pub nats_connection: NatsConnection,
    /// `GANTRY_NATS_REPLICAS`, `GANTRY_NATS_MAX_AGE`, `GANTRY_NATS_MAX_BYTES`.
    pub nats_limits: StreamLimits,
    /// `GANTRY_DATABASE_POOL`: connections per process; `None`: the
    /// backend's default ([`gantry_store::store::default_pool_size`]).
    pub database_pool: Option<u32>,
    pub listen: SocketAddr,
    pub pipelines: PathBuf,
    pub data_dir: PathBuf,
    /// `GANTRY_API_TOKENS`: YAML file of hashed API tokens.
    pub api_tokens: Option<PathBuf>,
    /// `GANTRY_ALLOW_ANONYMOUS` / `--allow-anonymous`: serve without API
    /// tokens on a non-loopback address (DESIGN.md 1.7).
    pub allow_anonymous: bool,
    /// `GANTRY_SECURE_COOKIES` / `--secure-cookies`: console session
    /// cookies are `Secure` (Gantry is reached over HTTPS through a proxy).
    pub secure_cookies: bool,
    /// `GANTRY_PUBLIC_URL`: where users reach the console, for links that
    /// leave Gantry (CDEvents, notifications); `http://<listen>` when unset.
    pub public_url: Option<String>,
    /// `GANTRY_NATS_REPLICAS`: replicas of the JetStream storage Gantry
    /// creates (the package bucket).
    pub nats_replicas: usize,
    /// `GANTRY_PACKAGES_BUCKET`: the object store bucket of packages in
    /// distributed mode.
    pub packages_bucket: String,
    /// `GANTRY_PACKAGES_MAX_BYTES`: the bucket's size limit when it is created.
    pub packages_max_bytes: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            nats_url: None,
            nats_prefix: DEFAULT_NATS_PREFIX.into(),
            nats_stream: DEFAULT_NATS_STREAM.into(),
            nats_connection: NatsConnection::default(),
            nats_limits: StreamLimits::default(),
            database_pool: None,
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            pipelines: PathBuf::from(DEFAULT_PIPELINES),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            api_tokens: None,
            allow_anonymous: false,
            secure_cookies: false,
            public_url: None,
            nats_replicas: usize::from(DEFAULT_NATS_REPLICAS),
            packages_bucket: gantry_store::packages::DEFAULT_BUCKET.into(),
            packages_max_bytes: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |u: &Option<String>| u.as_deref().map(gantry_store::store::redact_url);
        f.debug_struct("Settings")
            .field("database_url", &redact(&self.database_url))
            .field("database_pool", &self.database_pool)
            .field("nats_url", &redact(&self.nats_url))
            .field("nats_prefix", &self.nats_prefix)
            .field("nats_stream", &self.nats_stream)
            .field("nats_connection", &self.nats_connection)
            .field("nats_limits", &self.nats_limits)
            .field("listen", &self.listen)
            .field("pipelines", &self.pipelines)
            .field("data_dir", &self.data_dir)
            .field("api_tokens", &self.api_tokens)
            .finish()
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

    /// The console's external URL without a trailing `/`: `GANTRY_PUBLIC_URL`,
    /// or `http://<listen>`.
    pub fn public_url(&self) -> String {
        match self.public_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
            _ => format!("http://{}", self.listen),
        }
    }

    /// Whether an HTTP server may listen on [`Settings::listen`]: always with
    /// API tokens, on a loopback address, or when anonymous access was asked
    /// for explicitly (DESIGN.md 1.7). Checked by `gantry up` and
    /// `gantry serve api|webhook` before they start anything.
    pub fn check_exposure(&self) -> Result<(), ExposureError> {
        check_exposure(self.listen, self.api_tokens.is_some(), self.allow_anonymous)
    }

    /// Masks the passwords and tokens of the database and NATS URLs in
    /// every log line and event from now on (the masker's permanent set).
    pub fn register_secrets(&self) {
        let mut secrets = Vec::new();
        if let Some(url) = self.database_url.as_deref() {
            if let Some(password) = url::Url::parse(url)
                .ok()
                .and_then(|u| u.password().map(str::to_owned))
            {
                let decoded = percent_encoding::percent_decode_str(&password)
                    .decode_utf8_lossy()
                    .into_owned();
                secrets.push(decoded);
                secrets.push(password);
            }
        }
        if let Some(url) = self.nats_url.as_deref() {
            secrets.extend(gantry_store::bus::connect::url_secrets(url));
        }
        gantry_pipeline::mask::register_permanent(secrets.iter().map(String::as_str));
    }

    /// The package bucket's settings (used in distributed mode).
    pub fn package_bucket(&self) -> gantry_store::packages::BucketSettings {
        gantry_store::packages::BucketSettings {
            bucket: self.packages_bucket.clone(),
            replicas: self.nats_replicas.max(1),
            max_bytes: self.packages_max_bytes.filter(|b| *b > 0),
        }
    }

    pub fn nats(&self) -> Option<NatsSettings> {
        let url = self.nats_url.as_ref().filter(|u| !u.trim().is_empty())?;
        Some(NatsSettings {
            url: url.clone(),
            prefix: self.nats_prefix.clone(),
            stream: self.nats_stream.clone(),
            connection: self.nats_connection.clone(),
            limits: self.nats_limits,
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

/// Why a size like `GANTRY_NATS_MAX_BYTES` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a size: write bytes (`1048576`) or a number with a unit (`512MiB`, `10GB`, `1TiB`)")]
pub struct SizeError(String);

/// Parses a size: plain bytes or a number with `K`/`M`/`G`/`T` units,
/// decimal (`KB`, `MB`, ...) or binary (`KiB`, `MiB`, ...).
pub fn parse_size(input: &str) -> Result<i64, SizeError> {
    let s = input.trim();
    let err = || SizeError(s.to_owned());
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(err());
    }
    let (number, unit) = s.split_at(digits);
    let n: i64 = number.parse().map_err(|_| err())?;
    let factor: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(factor).filter(|v| *v > 0).ok_or_else(err)
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
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size(" 2 gib "), Ok(2 << 30));
        for bad in ["", "0", "MB", "1.5GB", "10XB", "99999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
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

    #[test]
    fn debug_hides_connection_passwords() {
        let s = Settings {
            database_url: Some("postgres://u:hunter22@h/db".into()),
            nats_url: Some("nats://n:hunter23@h".into()),
            ..Settings::default()
        };
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
