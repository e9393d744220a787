//! Helpers shared by the fuzz targets: how one byte string from libFuzzer is
//! cut into the several inputs a parser takes. The formats are plain text so
//! that seeds stay readable and editable (see `seed.sh`).

use http::{HeaderMap, HeaderName, HeaderValue};

/// Splits `data` at its first `parts - 1` NUL bytes; missing parts are empty.
pub fn split_nul(data: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(parts, |b| *b == 0).collect();
    out.resize(parts, &[]);
    out
}

/// `(head, rest)` split at the first blank line (`\n\n`), like an HTTP
/// message; no blank line means no head.
pub fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&[], data),
    }
}

/// `Name: value` lines as headers. Lines `http` would refuse are dropped:
/// hyper never hands those to a handler either.
pub fn headers(head: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The first line (without `\n`) and the rest.
pub fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Text for parsers that take `&str`: invalid UTF-8 never reaches them (the
/// services read files and bodies with `from_utf8` first).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
