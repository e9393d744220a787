//! Masking of secrets in the lines of a text diff.
//!
//! Three rules, applied to each file before its lines are shown:
//! - YAML files (`.yaml`/`.yml`): the value of a credential-like key
//!   ([`credential_key`]) is masked, and so is everything nested under it
//!   (keys of nested mappings stay visible, their values do not; block
//!   scalars are masked whole). A value that looks like a credential by
//!   itself ([`looks_like_credential`]) is masked under any key. A value that
//!   is only a reference (`{{ db.password }}`, `{{ env "DB_PASS" }}`,
//!   `{{ file "certs/x.pem" }}`) names a secret without holding it and is
//!   shown.
//! - Any text file: the lines inside a PEM private key block are masked.
//! - Any text file: every known secret string is masked wherever it occurs.

use serde_json::Value;

use crate::secrets::{collect_from_values, credential_key, looks_like_credential, Masker, MASK};

/// Lines of a multi-line secret are masked one by one too (a line diff never
/// sees the secret whole); shorter lines are too common to mask everywhere.
const MIN_SECRET_LINE: usize = 8;

/// The masker for known secrets: `extra` plus the secret-looking values of
/// the given values trees (references excepted).
pub(crate) fn masker(extra: &[String], trees: &[&Value]) -> Masker {
    let mut found: Vec<String> = extra.to_vec();
    for t in trees {
        collect_from_values(t, &mut found);
    }
    let mut all = Vec::new();
    for s in found {
        if is_reference(&s) {
            continue;
        }
        if s.contains('\n') {
            all.extend(
                s.lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= MIN_SECRET_LINE)
                    .map(str::to_string),
            );
        }
        all.push(s);
    }
    Masker::new(&all)
}

/// Is `s` only a placeholder naming a value, an environment variable or a
/// file (and so no secret itself)?
pub(crate) fn is_reference(s: &str) -> bool {
    let s = s.trim();
    let Some(inner) = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) else {
        return false;
    };
    if inner.contains("{{") || inner.contains("}}") {
        return false;
    }
    let inner = inner.trim();
    let ident = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if ident(inner) {
        return true;
    }
    let quoted_arg = |rest: &str| {
        let rest = rest.trim();
        ["\"", "'"].iter().any(|q| {
            rest.len() >= 2
                && rest.starts_with(q)
                && rest.ends_with(q)
                && !rest[1..rest.len() - 1].contains(['"', '\''])
        })
    };
    for f in ["env ", "file "] {
        if let Some(rest) = inner.strip_prefix(f) {
            return quoted_arg(rest);
        }
    }
    false
}

fn is_yaml(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.ends_with(".yaml") || p.ends_with(".yml")
}

/// A secret region of a YAML file, opened by a credential-like key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Nested mapping/sequence: keys shown, values masked.
    Nested,
    /// A scalar (block or continued): every line masked.
    Scalar,
}

/// `lines` (each with its line end, as split) as shown: masked, line end
/// removed (a `\r` before it is kept).
pub(crate) fn mask_lines(path: &str, lines: &[&str], masker: &Masker) -> Vec<String> {
    let yaml = is_yaml(path);
    let mut regions: Vec<(usize, Region)> = Vec::new();
    let mut in_pem = false;
    lines
        .iter()
        .map(|raw| {
            let line = raw.strip_suffix('\n').unwrap_or(raw);
            let (body, cr) = match line.strip_suffix('\r') {
                Some(b) => (b, "\r"),
                None => (line, ""),
            };
            let mut out = structural(body, yaml, &mut regions, &mut in_pem);
            if !masker.is_empty() {
                out = masker.mask(&out);
            }
            out.push_str(cr);
            out
        })
        .collect()
}

fn structural(
    line: &str,
    yaml: bool,
    regions: &mut Vec<(usize, Region)>,
    in_pem: &mut bool,
) -> String {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return line.to_string();
    }
    let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
    let masked_whole = || format!("{}{MASK}", &line[..indent]);

    if yaml {
        let is_item = trimmed == "-" || trimmed.starts_with("- ");
        while let Some(&(col, region)) = regions.last() {
            // `key:` followed by a sequence at the key's own indentation.
            let same_level_item = indent == col && is_item && region == Region::Nested;
            if indent > col || same_level_item {
                break;
            }
            regions.pop();
        }
        match regions.last() {
            Some((_, Region::Scalar)) => return masked_whole(),
            Some((_, Region::Nested)) => {
                if trimmed.starts_with('#') {
                    return masked_whole();
                }
                return match entry(line, indent) {
                    Some(e) => secret_entry(line, &e, regions),
                    None => match item_value(line, indent) {
                        Some(vs) => format!("{}{MASK}", &line[..vs]),
                        None => masked_whole(),
                    },
                };
            }
            None => {}
        }
    }

    if *in_pem {
        if trimmed.contains("-----END") {
            *in_pem = false;
            return line.to_string();
        }
        return masked_whole();
    }
    if trimmed.contains("-----BEGIN")
        && trimmed.contains("PRIVATE KEY")
        && !trimmed.contains("-----END")
    {
        *in_pem = true;
    }

    if yaml && !trimmed.starts_with('#') {
        if let Some(e) = entry(line, indent) {
            if credential_key(&e.key) {
                return secret_entry(line, &e, regions);
            }
            if !e.value.is_empty()
                && !e.value.starts_with(['|', '>', '#'])
                && looks_like_credential(scalar_text(e.value))
            {
                return format!("{}{MASK}", &line[..e.value_start]);
            }
        } else if let Some(vs) = item_value(line, indent) {
            if looks_like_credential(scalar_text(&line[vs..])) {
                return format!("{}{MASK}", &line[..vs]);
            }
        }
    }
    line.to_string()
}

/// A `key: value` line (possibly behind `- ` item markers).
struct Entry<'a> {
    key: String,
    /// Column of the key.
    col: usize,
    /// The value text (tags and anchors skipped), trailing spaces removed.
    value: &'a str,
    /// Byte offset of `value` in the line.
    value_start: usize,
}

fn entry(line: &str, indent: usize) -> Option<Entry<'_>> {
    let mut rest = &line[indent..];
    while let Some(r) = rest.strip_prefix("- ") {
        rest = r.trim_start_matches(' ');
    }
    let col = line.len() - rest.len();
    let (key, after_key) = match rest.chars().next()? {
        q @ ('"' | '\'') => {
            let close = rest[1..].find(q)? + 1;
            (rest[1..close].to_string(), &rest[close + 1..])
        }
        '#' | '{' | '[' | '|' | '>' | '-' | '?' => return None,
        _ => {
            let i = plain_colon(rest)?;
            (rest[..i].trim_end().to_string(), &rest[i..])
        }
    };
    let after = after_key.strip_prefix(':')?;
    if !(after.is_empty() || after.starts_with([' ', '\t'])) {
        return None;
    }
    let mut value = after.trim_start();
    // Tags and anchors: `!!str`, `&name`.
    while value.starts_with(['!', '&']) {
        let end = value.find([' ', '\t']).unwrap_or(value.len());
        value = value[end..].trim_start();
    }
    let value_start = line.len() - value.len();
    Some(Entry {
        key,
        col,
        value: value.trim_end(),
        value_start,
    })
}

/// Offset of the `:` ending a plain key (`: ` or `:` at the end).
fn plain_colon(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len())
        .find(|&i| b[i] == b':' && (i + 1 == b.len() || b[i + 1] == b' ' || b[i + 1] == b'\t'))
}

/// Offset of the scalar of a bare sequence item (`- value`).
fn item_value(line: &str, indent: usize) -> Option<usize> {
    let mut rest = &line[indent..];
    let mut any = false;
    while let Some(r) = rest.strip_prefix("- ") {
        rest = r.trim_start_matches(' ');
        any = true;
    }
    (any && !rest.is_empty() && !rest.starts_with('#')).then(|| line.len() - rest.len())
}

/// The line of an entry inside (or opening) a secret region; opens the
/// region of its own value.
fn secret_entry(line: &str, e: &Entry<'_>, regions: &mut Vec<(usize, Region)>) -> String {
    let v = e.value;
    if v.is_empty() || v.starts_with('#') {
        regions.push((e.col, Region::Nested));
        return line.to_string();
    }
    regions.push((e.col, Region::Scalar));
    if v.starts_with(['|', '>']) {
        return line.to_string();
    }
    let text = scalar_text(v);
    if text.is_empty() || is_reference(text) || matches!(text, "~" | "null" | "Null" | "NULL") {
        return line.to_string();
    }
    format!("{}{MASK}", &line[..e.value_start])
}

/// A one-line scalar without its quotes or trailing comment.
fn scalar_text(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q) {
            return match inner.rfind(q) {
                Some(end) => &inner[..end],
                None => inner,
            };
        }
    }
    match v.find(" #") {
        Some(i) => v[..i].trim_end(),
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(path: &str, text: &str, secrets: &[&str]) -> String {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        mask_lines(path, &lines, &masker(&secrets, &[])).join("\n")
    }

    #[test]
    fn diff_mask_yaml_keys_and_regions() {
        let text = "\
db:
  url: jdbc:mysql://h/db
  password: s3cr3t # note
  passwordRef: '{{ env \"DB_PASS\" }}'
  user: scott
credentials:
  user: admin
  pass: hunter22
  list:
  - one
  - name: two
privateKey: |
  MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7
  second line
after: visible
- apiKey: \"abc def\"
token:
- t1
- t2
plain: AKIAIOSFODNN7EXAMPLE
";
        let expected = "\
db:
  url: jdbc:mysql://h/db
  password: ***
  passwordRef: '{{ env \"DB_PASS\" }}'
  user: scott
credentials:
  user: ***
  pass: ***
  list:
  - ***
  - name: ***
privateKey: |
  ***
  ***
after: visible
- apiKey: ***
token:
- ***
- ***
plain: ***";
        assert_eq!(show("a/b.yaml", text, &[]), expected);
    }

    #[test]
    fn diff_mask_pem_and_known_secrets() {
        let text = "x\n-----BEGIN PRIVATE KEY-----\nabc\ndef\n-----END PRIVATE KEY-----\nuse hunter2x here\n";
        assert_eq!(
            show("k.pem", text, &["hunter2x"]),
            "x\n-----BEGIN PRIVATE KEY-----\n***\n***\n-----END PRIVATE KEY-----\nuse *** here"
        );
        // Not YAML: key rule off.
        assert_eq!(show("a.txt", "password: x\n", &[]), "password: x");
    }

    #[test]
    fn diff_references() {
        assert!(is_reference("{{ db.password }}"));
        assert!(is_reference("{{env \"DB_PASS\"}}"));
        assert!(is_reference("{{ file 'certs/a.pem' }}"));
        assert!(!is_reference("{{ base64 \"c2VjcmV0\" }}"));
        assert!(!is_reference("x{{ db.password }}"));
        assert!(!is_reference("{{ a }}{{ b }}"));
    }
}
