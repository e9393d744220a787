//! Webhook authentication, one scheme per forge (DESIGN.md 1.5).
//!
//! | provider    | header                         | value                                  |
//! |-------------|--------------------------------|----------------------------------------|
//! | `github`    | `X-Hub-Signature-256`          | `sha256=<hex HMAC-SHA256 of the body>` |
//! | `gitlab`    | `X-Gitlab-Token`               | the secret itself                      |
//! | `gitea`     | `X-Gitea-Signature`            | `<hex HMAC-SHA256 of the body>`        |
//! |             | (or `X-Hub-Signature-256`)     | `sha256=<hex>`                         |
//! | `bitbucket` | `X-Hub-Signature`              | `sha256=<hex>` (Cloud and Data Center) |
//! | `generic`   | `X-Gantry-Signature`           | `sha256=<hex>`                         |
//!
//! Every comparison is constant-time, and nothing here echoes the secret.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const GITHUB: &str = "X-Hub-Signature-256";
const GITLAB: &str = "X-Gitlab-Token";
const GITEA: &str = "X-Gitea-Signature";
const BITBUCKET: &str = "X-Hub-Signature";
const GENERIC: &str = "X-Gantry-Signature";

const PREFIXED: &str =
    "sha256=<64 hex digits>, the HMAC-SHA256 of the raw body keyed with the webhook secret";
const BARE: &str = "<64 hex digits>, the HMAC-SHA256 of the raw body keyed with the webhook secret";

/// The forge a webhook comes from: the last segment of `POST /webhooks/<provider>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Github,
    Gitlab,
    Gitea,
    Bitbucket,
    Generic,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Bitbucket,
        Provider::Generic,
    ];

    /// The route segment: `github`, `gitlab`, `gitea`, `bitbucket` or `generic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A route segment that names no provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook provider `{0}`: use /webhooks/github, /webhooks/gitlab, /webhooks/gitea, /webhooks/bitbucket or /webhooks/generic")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

/// Why a delivery was not authenticated (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "missing {header} header: set a secret on the webhook so every delivery is authenticated"
    )]
    Missing { header: &'static str },
    #[error("malformed {header} header: expected {expected}")]
    Malformed {
        header: &'static str,
        expected: &'static str,
    },
    #[error("signature mismatch: the webhook's secret differs from the pipeline's source.webhook_secret, or the body was changed on the way")]
    Mismatch,
    #[error("no webhook secret is configured: set source.webhook_secret in the pipeline")]
    NoSecret,
}

/// Checks that `body` was sent by someone who knows `secret`, using `provider`'s scheme.
///
/// An empty `secret` never verifies ([`SignatureError::NoSecret`]).
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    match provider {
        Provider::Github => verify_hmac(headers, GITHUB, true, body, secret),
        Provider::Gitlab => {
            let token = headers
                .get(GITLAB)
                .ok_or(SignatureError::Missing { header: GITLAB })?;
            // Hash both sides first so the comparison takes the same time whatever their lengths.
            let (given, wanted) = (Sha256::digest(token.as_bytes()), Sha256::digest(secret));
            if bool::from(given.ct_eq(&wanted)) {
                Ok(())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
        Provider::Gitea if headers.get(GITEA).is_none() && headers.get(GITHUB).is_some() => {
            verify_hmac(headers, GITHUB, true, body, secret)
        }
        Provider::Gitea => verify_hmac(headers, GITEA, false, body, secret),
        Provider::Bitbucket => verify_hmac(headers, BITBUCKET, true, body, secret),
        Provider::Generic => verify_hmac(headers, GENERIC, true, body, secret),
    }
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`, as the forges send it.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, body).finalize().into_bytes())
}

/// The header (name, value) a sender attaches so that [`verify`] accepts `body`:
/// what a forge would send, for tests and for clients of the generic route.
pub fn signing_header(provider: Provider, secret: &[u8], body: &[u8]) -> (&'static str, String) {
    let signed = || format!("sha256={}", sign_hex(secret, body));
    match provider {
        Provider::Github => (GITHUB, signed()),
        Provider::Gitlab => (GITLAB, String::from_utf8_lossy(secret).into_owned()),
        Provider::Gitea => (GITEA, sign_hex(secret, body)),
        Provider::Bitbucket => (BITBUCKET, signed()),
        Provider::Generic => (GENERIC, signed()),
    }
}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this is the one infallible constructor call.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac
}

fn verify_hmac(
    headers: &HeaderMap,
    header: &'static str,
    prefixed: bool,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    let malformed = SignatureError::Malformed {
        header,
        expected: if prefixed { PREFIXED } else { BARE },
    };
    let value = headers
        .get(header)
        .ok_or(SignatureError::Missing { header })?
        .to_str()
        .map_err(|_| malformed.clone())?
        .trim();
    let digits = if prefixed {
        value
            .strip_prefix("sha256=")
            .ok_or_else(|| malformed.clone())?
    } else {
        value
    };
    let mut given = [0u8; 32];
    hex::decode_to_slice(digits, &mut given).map_err(|_| malformed)?;
    mac(secret, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests;
