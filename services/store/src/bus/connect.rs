//! How a Gantry process reaches NATS (DESIGN.md 1.6): the one place a NATS
//! client is made, so every service authenticates and encrypts the same way.
//!
//! - credentials in the URL: `nats://user:pass@host` (user and password) or
//!   `nats://token@host` (a token). async-nats parses them but never sends
//!   them, which is why a server with `authorization { user, password }`
//!   refused Gantry: they are taken out of the URL and given explicitly.
//! - `tls://` URLs require TLS; `GANTRY_NATS_CA` trusts a private CA (instead
//!   of the system's roots), `GANTRY_NATS_CERT`/`GANTRY_NATS_KEY` present a
//!   client certificate. Giving any of them requires TLS too, so a
//!   misconfigured `nats://` URL cannot silently fall back to plain text.
//! - `GANTRY_NATS_CREDS` (a `.creds` file: user JWT and NKEY seed) or
//!   `GANTRY_NATS_NKEY` (a file holding an NKEY seed).
//!
//! Secrets (passwords, tokens, seeds) are never logged: URLs are shown
//! through [`redact_url`](crate::store::redact_url), files by path only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// How to authenticate to NATS and what TLS to use, besides the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsConnection {
    /// `GANTRY_NATS_CREDS`: a `.creds` file (user JWT and NKEY seed).
    pub creds: Option<PathBuf>,
    /// `GANTRY_NATS_NKEY`: a file holding an NKEY seed (`SU...`).
    pub nkey: Option<PathBuf>,
    /// `GANTRY_NATS_CA`: PEM CA certificates the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// `GANTRY_NATS_CERT`: PEM client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// `GANTRY_NATS_KEY`: PEM private key of the client certificate.
    pub key: Option<PathBuf>,
}

/// Why a NATS connection could not be set up (before any network traffic).
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    #[error("NATS URL `{url}` is invalid: {message}")]
    Url { url: String, message: String },
    #[error("the NATS URL is empty")]
    NoServer,
    #[error("the NATS URLs name different credentials; give them once (every server of a cluster shares them)")]
    MixedCredentials,
    #[error("give one way to authenticate to NATS, not {0}")]
    TwoAuthMethods(&'static str),
    #[error("GANTRY_NATS_CERT and GANTRY_NATS_KEY go together: {0} is missing")]
    HalfClientCert(&'static str),
    #[error("cannot read {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is not valid: {message}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// What authenticates this client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// Server URLs without their credentials, the credentials, and whether any
/// URL asks for TLS.
#[derive(Debug)]
struct Servers {
    urls: Vec<String>,
    auth: Option<UrlAuth>,
    tls: bool,
}

/// Splits `nats://a:4222,nats://b:4222` (or bare `host:port`) and takes the
/// credentials out of every URL.
fn parse_servers(input: &str) -> Result<Servers, NatsConfigError> {
    let mut servers = Servers {
        urls: Vec::new(),
        auth: None,
        tls: false,
    };
    for raw in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("nats://{raw}")
        };
        let invalid = |message: String| NatsConfigError::Url {
            url: crate::store::redact_url(&with_scheme),
            message,
        };
        let mut url = url::Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") {
            return Err(invalid(
                "the scheme must be nats://, tls://, ws:// or wss://".into(),
            ));
        }
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| invalid("the credentials are not UTF-8".into()))
        };
        let auth = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(password)) => Some(UrlAuth::UserPassword(decode(user)?, decode(password)?)),
            (token, None) => Some(UrlAuth::Token(decode(token)?)),
        };
        if let Some(auth) = auth {
            match &servers.auth {
                Some(known) if *known != auth => return Err(NatsConfigError::MixedCredentials),
                _ => servers.auth = Some(auth),
            }
            // Both setters only fail for URLs that cannot carry credentials,
            // which these do (they had some).
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        servers.tls |= matches!(url.scheme(), "tls" | "wss");
        servers.urls.push(url.to_string());
    }
    if servers.urls.is_empty() {
        return Err(NatsConfigError::NoServer);
    }
    Ok(servers)
}

fn readable(what: &'static str, path: &Path) -> Result<Vec<u8>, NatsConfigError> {
    std::fs::read(path).map_err(|source| NatsConfigError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The secrets a NATS URL carries (password or token), for the masker.
pub fn url_secrets(url: &str) -> Vec<String> {
    match parse_servers(url) {
        Ok(Servers {
            auth: Some(UrlAuth::UserPassword(_, p)),
            ..
        }) => vec![p],
        Ok(Servers {
            auth: Some(UrlAuth::Token(t)),
            ..
        }) => vec![t],
        _ => Vec::new(),
    }
}

/// Connection options and server URLs for `url` with `connection`: checks
/// every file is there and readable before the first connection attempt, so
/// a wrong path fails at start, not as an endless reconnect loop.
pub(crate) async fn options(
    url: &str,
    connection: &NatsConnection,
    retry_initial: bool,
) -> Result<(async_nats::ConnectOptions, Vec<String>), NatsConfigError> {
    let servers = parse_servers(url)?;
    let mut options = async_nats::ConnectOptions::new()
        .name("gantry")
        .connection_timeout(Duration::from_secs(5));
    if retry_initial {
        options = options.retry_on_initial_connect();
    }

    let methods = [
        servers.auth.is_some(),
        connection.creds.is_some(),
        connection.nkey.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(NatsConfigError::TwoAuthMethods(
            "credentials in the URL, GANTRY_NATS_CREDS and GANTRY_NATS_NKEY together",
        ));
    }
    match servers.auth {
        Some(UrlAuth::UserPassword(user, password)) => {
            options = options.user_and_password(user, password);
        }
        Some(UrlAuth::Token(token)) => options = options.token(token),
        None => {}
    }
    if let Some(path) = &connection.creds {
        let text = readable("the NATS credentials file (GANTRY_NATS_CREDS)", path)?;
        let text = String::from_utf8(text).map_err(|_| NatsConfigError::Invalid {
            what: "the NATS credentials file (GANTRY_NATS_CREDS)",
            path: path.clone(),
            message: "not UTF-8 text".into(),
        })?;
        // The parser's message says which part is missing, never the seed.
        options = options
            .credentials(&text)
            .map_err(|e| NatsConfigError::Invalid {
                what: "the NATS credentials file (GANTRY_NATS_CREDS)",
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    if let Some(path) = &connection.nkey {
        let what = "the NKEY seed file (GANTRY_NATS_NKEY)";
        let text = readable(what, path)?;
        let seed = String::from_utf8(text)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.starts_with('S') && s.len() > 2)
            .ok_or_else(|| NatsConfigError::Invalid {
                what,
                path: path.clone(),
                message: "expected one NKEY seed (a line starting with `S`)".into(),
            })?;
        gantry_pipeline::mask::register_permanent([seed.as_str()]);
        options = options.nkey(seed);
    }
    let mut tls = servers.tls;
    if let Some(ca) = &connection.ca {
        readable("the NATS CA file (GANTRY_NATS_CA)", ca)?;
        options = options.add_root_certificates(ca.clone());
        tls = true;
    }
    match (&connection.cert, &connection.key) {
        (Some(cert), Some(key)) => {
            readable("the NATS client certificate (GANTRY_NATS_CERT)", cert)?;
            readable("the NATS client key (GANTRY_NATS_KEY)", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
            tls = true;
        }
        (Some(_), None) => return Err(NatsConfigError::HalfClientCert("GANTRY_NATS_KEY")),
        (None, Some(_)) => return Err(NatsConfigError::HalfClientCert("GANTRY_NATS_CERT")),
        (None, None) => {}
    }
    if tls {
        options = options.require_tls(true);
    }
    Ok((options, servers.urls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let s = parse_servers("nats://gantry:p%40ss@127.0.0.1:4222").unwrap();
        assert_eq!(
            s.auth,
            Some(UrlAuth::UserPassword("gantry".into(), "p@ss".into()))
        );
        assert_eq!(s.urls, vec!["nats://127.0.0.1:4222"]);
        assert!(!s.tls);

        let s = parse_servers("tls://s3cr3t-token@a:4222, tls://s3cr3t-token@b:4222").unwrap();
        assert_eq!(s.auth, Some(UrlAuth::Token("s3cr3t-token".into())));
        assert_eq!(s.urls, vec!["tls://a:4222", "tls://b:4222"]);
        assert!(s.tls);

        let s = parse_servers("127.0.0.1:4222").unwrap();
        assert_eq!(
            (s.auth, s.urls),
            (None, vec!["nats://127.0.0.1:4222".into()])
        );
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        let e = parse_servers("nats://a:one@x,nats://a:two@y").unwrap_err();
        assert!(matches!(e, NatsConfigError::MixedCredentials), "{e}");
        let e = parse_servers("http://u:hunter22@x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter22") && e.contains("scheme"), "{e}");
        assert!(matches!(
            parse_servers(" , "),
            Err(NatsConfigError::NoServer)
        ));
        assert_eq!(url_secrets("nats://u:hunter22@x"), vec!["hunter22"]);
        assert!(url_secrets("nats://x").is_empty());
    }

    #[tokio::test]
    async fn files_are_checked_before_connecting() {
        let missing = NatsConnection {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = options("nats://x", &missing, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("GANTRY_NATS_CA"),
            "{e}"
        );

        let half = NatsConnection {
            cert: Some("/tmp/c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            options("nats://x", &half, true).await,
            Err(NatsConfigError::HalfClientCert("GANTRY_NATS_KEY"))
        ));

        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        std::fs::write(&seed, "not a seed\n").unwrap();
        let bad = NatsConnection {
            nkey: Some(seed.clone()),
            ..Default::default()
        };
        let e = options("nats://x", &bad, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("NKEY"), "{e}");

        let creds = dir.path().join("x.creds");
        std::fs::write(&creds, "garbage").unwrap();
        let both = NatsConnection {
            creds: Some(creds.clone()),
            ..Default::default()
        };
        assert!(matches!(
            options("nats://u:p@x", &both, true).await,
            Err(NatsConfigError::TwoAuthMethods(_))
        ));
        let e = options("nats://x", &both, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("GANTRY_NATS_CREDS"), "{e}");
    }
}
