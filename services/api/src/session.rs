//! Browser sessions of the console (DESIGN.md 1.8).
//!
//! Signing in with an API token creates a session kept here, in memory: a
//! random id in an `HttpOnly; SameSite=Strict` cookie, expiring after
//! [`LIFETIME`]. The session keeps the token's sha256, never the token, and
//! asks the tokens in force on every request, so a token removed from the
//! file ends its sessions. Sessions live in the process that made them: a
//! restart signs everyone out (in a distributed installation, route a
//! browser to one API process).
//!
//! Cookies ride along on requests another site makes, so a request with
//! a session that changes something must name this server in `Origin`
//! ([`origin_matches`]); a browser always sends `Origin` on such requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

/// The session cookie's name.
pub const COOKIE: &str = "gantry_session";
/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, Clone, Copy)]
struct Session {
    digest: [u8; 32],
    expires: Instant,
}

/// The signed-in sessions.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

impl Sessions {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Session>) -> T) -> T {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    /// A new session for the token whose sha256 is `digest`; its id.
    pub fn create(&self, digest: [u8; 32]) -> String {
        // Two v4 UUIDs: 244 random bits from the OS generator.
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        self.with(|map| {
            map.retain(|_, s| s.expires > now);
            map.insert(
                id.clone(),
                Session {
                    digest,
                    expires: now + LIFETIME,
                },
            );
        });
        id
    }

    /// The token digest of a live session.
    pub fn digest(&self, id: &str) -> Option<[u8; 32]> {
        let now = Instant::now();
        self.with(|map| match map.get(id) {
            Some(s) if s.expires > now => Some(s.digest),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        })
    }

    /// Signs a session out.
    pub fn end(&self, id: &str) {
        self.with(|map| map.remove(id));
    }
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether the request reached the proxy in front over HTTPS.
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Whether the request's `Origin` names the host it was sent to; `None`
/// without an `Origin` header (scripts and the CLI send none).
pub fn origin_matches(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?.trim();
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let Some(host) = host else {
        return Some(false);
    };
    let (scheme, authority) = origin.split_once("://").unwrap_or(("", origin));
    let default_port = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    let strip = |a: &str| {
        a.strip_suffix(default_port)
            .unwrap_or(a)
            .to_ascii_lowercase()
    };
    Some(strip(authority) == strip(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origin_must_name_the_host() {
        let same = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert_eq!(origin_matches(&same), Some(true));
        let tls = headers(&[
            ("origin", "https://gantry.example.com"),
            ("host", "gantry.example.com:443"),
        ]);
        assert_eq!(origin_matches(&tls), Some(true));
        let foreign = headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert_eq!(origin_matches(&foreign), Some(false));
        let other_port = headers(&[
            ("origin", "http://127.0.0.1:9090"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert_eq!(origin_matches(&other_port), Some(false));
        assert_eq!(origin_matches(&headers(&[("host", "x")])), None);
    }

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::default();
        let id = sessions.create([7; 32]);
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.digest(&id), Some([7; 32]));
        sessions.end(&id);
        assert_eq!(sessions.digest(&id), None);
        let c = headers(&[("cookie", &format!("a=b; {COOKIE}={id}"))]);
        assert_eq!(cookie(&c, COOKIE), Some(id.as_str()));
        assert!(set_cookie(&id, true).contains("HttpOnly; SameSite=Strict; Path=/"));
        assert!(set_cookie(&id, true).ends_with("; Secure"));
    }
}
