//! Webhook deliveries of every forge: `payload::parse(provider, headers, body)`.
//!
//! Input: `<provider>\n<Name: value lines>\n\n<body>`; an unknown provider
//! line picks one by its first byte, so every byte string reaches a parser.

#![no_main]

use gantry_fuzz::{first_line, headers, split_head};
use gantry_webhook::payload::{self, WebhookEvent};
use gantry_webhook::signature::Provider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (name, rest) = first_line(data);
    let provider = std::str::from_utf8(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(Provider::ALL[usize::from(*data.first().unwrap_or(&0)) % 5]);
    let (head, body) = split_head(rest);
    if let Ok(WebhookEvent::Push(push)) = payload::parse(provider, &headers(head), body) {
        // What the handler relies on: a branch is the tail of its ref.
        if let Some(branch) = &push.branch {
            assert_eq!(
                push.git_ref.strip_prefix("refs/heads/"),
                Some(branch.as_str())
            );
        }
    }
});
