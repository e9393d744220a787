//! Webhook signature headers of every forge: `signature::verify`.
//!
//! Input: `<provider>\n<Name: value lines>\n\n<body>`. Checks that no header
//! verifies without the secret's signature, and that what `signing_header`
//! produces always verifies.

#![no_main]

use gantry_fuzz::{first_line, headers, split_head};
use gantry_webhook::signature::{self, Provider};
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let (name, rest) = first_line(data);
    let provider = std::str::from_utf8(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(Provider::ALL[usize::from(*data.first().unwrap_or(&0)) % 5]);
    let (head, body) = split_head(rest);
    let mut map = headers(head);
    let verdict = signature::verify(provider, &map, body, SECRET);
    // Without the secret nothing verifies, whatever the headers say.
    assert!(signature::verify(provider, &map, body, b"").is_err());
    if verdict.is_ok() {
        // Only the right signature (or, for GitLab, the secret) passes.
        let (header, _) = signature::signing_header(provider, SECRET, body);
        let given = map.get(header).or_else(|| map.get("X-Hub-Signature-256"));
        assert!(given.is_some(), "verified without a signature header");
    }
    let (header, value) = signature::signing_header(provider, SECRET, body);
    if let Ok(value) = HeaderValue::from_str(&value) {
        map.remove("X-Gitea-Signature");
        let header = HeaderName::from_bytes(header.as_bytes()).expect("a valid header name");
        map.insert(header, value);
        signature::verify(provider, &map, body, SECRET).expect("a signed delivery verifies");
    }
});
