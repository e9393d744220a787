//! Which values are secrets, for masking in diagnostics and diffs.
//!
//! Diagnostics end up in events, logs and dashboards. Any value that came from
//! a stage's secret variables (`{{ env }}`, an overlay `env:NAME`), sits under
//! a credential-like key (`password`, `token`, ...) or looks like a
//! credential (a PEM block, a JWT, a cloud access key, a long random string)
//! is replaced by `***` wherever it would appear, by Gantry's one masker
//! ([`gantry_pipeline::mask::Masker`]).

use serde_json::Value;

pub use gantry_pipeline::mask::{Masker, MASK};

/// Does this key name a credential?
pub fn credential_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const WORDS: [&str; 12] = [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "credential",
        "passphrase",
        "private",
        "clientsecret",
        "auth",
    ];
    WORDS.iter().any(|w| k.contains(w)) || k == "key" || k.ends_with("_key") || k.ends_with("-key")
}

/// Does this string look like a credential by itself?
pub fn looks_like_credential(s: &str) -> bool {
    let s = s.trim();
    if s.contains("-----BEGIN") && s.contains("PRIVATE KEY") {
        return true;
    }
    // AWS access key id.
    if s.len() == 20
        && s.starts_with("AKIA")
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return true;
    }
    // JWT: three base64url parts, the first a JSON header.
    if s.starts_with("eyJ") && s.split('.').count() == 3 && !s.contains(char::is_whitespace) {
        return true;
    }
    // A long random-looking token: no spaces, mixed letters and digits, few
    // separators, and not a path or URL.
    if s.len() >= 24
        && !s.contains(char::is_whitespace)
        && !s.contains("://")
        && !s.starts_with('/')
    {
        let upper = s.chars().any(|c| c.is_ascii_uppercase());
        let lower = s.chars().any(|c| c.is_ascii_lowercase());
        let digit = s.chars().any(|c| c.is_ascii_digit());
        let seps = s
            .chars()
            .filter(|c| matches!(c, '.' | '-' | '_' | '/' | ':'))
            .count();
        if upper && lower && digit && seps * 8 < s.len() {
            return true;
        }
    }
    false
}

/// Collect the secret-looking strings of a values tree.
pub fn collect_from_values(v: &Value, out: &mut Vec<String>) {
    fn walk(v: &Value, under_credential: bool, out: &mut Vec<String>) {
        match v {
            Value::String(s) if (under_credential && !s.is_empty()) || looks_like_credential(s) => {
                out.push(s.clone());
            }
            Value::Number(n) if under_credential => out.push(n.to_string()),
            Value::Array(items) => items.iter().for_each(|i| walk(i, under_credential, out)),
            Value::Object(m) => m
                .iter()
                .for_each(|(k, v)| walk(v, under_credential || credential_key(k), out)),
            _ => {}
        }
    }
    walk(v, false, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_credentials_in_values() {
        let mut out = Vec::new();
        collect_from_values(
            &json!({
                "db": {"password": "Y2hhbmdlbWU=", "url": "jdbc:mysql://h/db", "user": "scott"},
                "api": {"token": "t0k3n-value"},
                "misc": {"blob": "Zm9vYmFyYmF6cXV1eDEyMzQ1Njc4OTBBQkNE", "path": "/Environment Configuration/Certificate Store/x"},
            }),
            &mut out,
        );
        out.sort();
        assert_eq!(
            out,
            vec![
                "Y2hhbmdlbWU=",
                "Zm9vYmFyYmF6cXV1eDEyMzQ1Njc4OTBBQkNE",
                "t0k3n-value"
            ]
        );
    }

    #[test]
    fn credential_shapes() {
        assert!(looks_like_credential("AKIAIOSFODNN7EXAMPLE"));
        assert!(looks_like_credential(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc"
        ));
        assert!(!looks_like_credential(
            "jdbc:mysql://127.0.0.1:3306/DefaultDb"
        ));
        assert!(!looks_like_credential(
            "org.apache.cassandra.locator.SimpleStrategy"
        ));
    }
}
