//! Building HTML by hand: every value from outside (names, commit
//! messages, reasons, users) goes through [`esc`]; markup is only ever
//! written as literals here and in the pages.

use std::fmt::Write;

/// `text` safe inside an element or a quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment (pipeline name, run id, stage) safe in a URL.
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The first 7 characters of a commit id.
pub fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// A run id as shown: its last 8 characters (a UUIDv7 starts with its
/// time, so runs close together share their first ones).
pub fn short_run(run: &str) -> &str {
    run.get(run.len().saturating_sub(8)..).unwrap_or(run)
}

/// A digest as shown: the algorithm and 12 hex digits.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", hex.get(..12).unwrap_or(hex)),
        None => digest.get(..12).unwrap_or(digest).to_owned(),
    }
}

/// [`digest`] after a space, or nothing without one.
pub fn maybe_digest(d: Option<&str>) -> String {
    d.map(|d| format!(" {}", digest(d))).unwrap_or_default()
}

/// An image digest in short, the whole of it on hover.
pub fn digest(d: &str) -> String {
    format!(
        "<code title=\"{}\">{}</code>",
        esc(d),
        esc(&short_digest(d))
    )
}

/// A time the browser shows in its own zone, with how long ago
/// (`console.js`); the UTC text stands until then.
pub fn time(rfc3339: &str) -> String {
    let shown = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_owned());
    format!("<time datetime=\"{}\">{}</time>", esc(rfc3339), esc(&shown))
}

/// A status word in its colour; the word itself carries the meaning.
pub fn status(word: &str) -> String {
    format!(
        "<span class=\"st st-{}\">{}</span>",
        esc(word),
        esc(&word.replace('_', " "))
    )
}

/// A link to a run, its short commit as the text.
pub fn run_link(run_id: &str, commit: &str) -> String {
    format!(
        "<a href=\"/runs/{}\" title=\"run {}\"><code>{}</code></a>",
        seg(run_id),
        esc(run_id),
        esc(short_commit(commit))
    )
}

/// A link to a run named by its short id.
pub fn run_id_link(run_id: &str) -> String {
    format!(
        "<a href=\"/runs/{}\" title=\"run {}\">run {}</a>",
        seg(run_id),
        esc(run_id),
        esc(short_run(run_id))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(
            short_run("0193b2c4-aaaa-7bbb-8ccc-1234567890ab"),
            "567890ab"
        );
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert!(time("2026-12-07T14:20:00Z").contains("2026-12-07 14:20 UTC"));
    }
}
