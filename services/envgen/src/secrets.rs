//! Masking of secrets in diagnostics.
//!
//! Diagnostics end up in events, logs and dashboards. Any value that came from
//! the environment (`{{ env }}`, an overlay `env:NAME`), from a secret file (an
//! overlay `file:/path`), sits under a credential-like key (`password`,
//! `token`, ...) or looks like a credential (a PEM block, a JWT, a cloud access
//! key, a long random string) is replaced by `****` wherever it would appear.

use gantry_proto::events::Diagnostic;
use serde_json::Value;

/// The replacement text.
pub const MASK: &str = "****";

/// Secrets shorter than this are not masked: masking `1` or `on` would shred
/// every message without protecting anything.
const MIN_LEN: usize = 4;

/// A set of secret strings to hide.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Masker {
    /// A masker for these secrets (short and duplicate ones are dropped).
    pub fn new<I: IntoIterator<Item = String>>(secrets: I) -> Self {
        let mut m = Masker::default();
        m.extend(secrets);
        m
    }

    /// Add secrets.
    pub fn extend<I: IntoIterator<Item = String>>(&mut self, secrets: I) {
        for s in secrets {
            let s = s.trim().to_string();
            if s.chars().count() >= MIN_LEN && !self.secrets.contains(&s) {
                self.secrets.push(s);
            }
        }
        self.secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// Number of secrets known.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    /// Mask a diagnostic's message and field.
    pub fn mask_diagnostic(&self, d: &mut Diagnostic) {
        if self.secrets.is_empty() {
            return;
        }
        d.message = self.mask(&d.message);
        if let Some(f) = d.field.as_mut() {
            *f = self.mask(f);
        }
    }
}

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
    fn masks_longest_first() {
        let m = Masker::new(["abcd".to_string(), "abcdefgh".to_string(), "x".to_string()]);
        assert_eq!(m.len(), 2);
        assert_eq!(m.mask("1 abcdefgh 2 abcd 3 x"), "1 **** 2 **** 3 x");
    }

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
