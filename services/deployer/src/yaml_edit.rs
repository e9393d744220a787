//! A line-preserving edit of one scalar in a block-style YAML file.
//!
//! A deploy repository's values files are written by people: comments, key
//! order, blank lines, quoting and line endings all matter to them, and a
//! parse-and-reserialize would rewrite the whole file. [`set_yaml_key`] finds
//! a dotted key path (`apitraffic.image` is `image:` inside `apitraffic:`)
//! by its indentation, and rewrites only the scalar after `image:`; every
//! other byte of the file stays as it was.
//!
//! What it understands: block mappings (plain, `"double"` or `'single'`
//! quoted keys), single-line scalars (plain or quoted) with an optional
//! trailing `# comment`, blank and comment lines anywhere, LF or CRLF line
//! endings, a leading byte-order mark, `---` / `...` document markers and
//! `%` directives around one document. What it refuses, with the line: a
//! target (or a mapping on the path to it) that is a list item, a flow
//! collection (`{..}`, `[..]`), an anchor, alias or tag, a block scalar
//! (`|`, `>`) or a multi-line scalar, tabs in indentation, and files with
//! several documents.
//!
//! A missing leaf key is inserted at the end of its parent's block with the
//! parent's child indentation; missing parents are created along with it (at
//! the end of the document for a missing top-level key).

use std::borrow::Cow;

/// Why a key cannot be set. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The dotted key itself is unusable (empty, or an empty segment).
    #[error("invalid key `{key}`: {reason}")]
    BadKey { key: String, reason: String },
    /// The file has a construct this editor does not change, at or on the
    /// way to the key.
    #[error("line {line}: cannot set `{key}`: {reason}")]
    Unsupported {
        line: usize,
        key: String,
        reason: String,
    },
}

/// Sets `dotted_key` to the scalar `value` in the block-style YAML `text`.
///
/// Returns the new text and whether it differs from `text`: when the key
/// already holds `value` (whatever its quoting), the text comes back
/// unchanged with `false`. Only the edited line changes (or, for a missing
/// key, lines are inserted); the rest is byte-identical.
pub fn set_yaml_key(
    text: &str,
    dotted_key: &str,
    value: &str,
) -> Result<(String, bool), EditError> {
    let segments = split_key(dotted_key)?;
    let (bom, body) = match text.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", text),
    };
    // YAML reads a lone CR as a line break and this editor does not: refuse
    // rather than edit a file whose lines it sees differently (a `...` after
    // one would end the document before an inserted key).
    if let Some(at) = body
        .match_indices('\r')
        .map(|(i, _)| i)
        .find(|&i| !body[i + 1..].starts_with('\n'))
    {
        return Err(EditError::Unsupported {
            line: body[..at].matches('\n').count() + 1,
            key: dotted_key.to_owned(),
            reason: "a carriage return without a line feed (YAML reads it as a line break)"
                .to_owned(),
        });
    }
    // Found by fuzz/yaml_edit: YAML skips a byte order mark at a line's
    // start, this editor counted it as the line's first character, so a
    // key inserted after `\u{feff}\u{feff} d:` got the wrong indentation.
    // One BOM opening the file is fine (kept above); another is refused.
    if let Some(at) = body.find('\u{feff}') {
        return Err(EditError::Unsupported {
            line: body[..at].matches('\n').count() + 1,
            key: dotted_key.to_owned(),
            reason: "a byte order mark (U+FEFF) inside the file".to_owned(),
        });
    }
    let doc = Doc::parse(body, dotted_key)?;
    let edit = doc.plan(&segments, value)?;
    match edit {
        Edit::None => Ok((text.to_owned(), false)),
        edit => Ok((format!("{bom}{}", doc.apply(edit)), true)),
    }
}

fn split_key(dotted_key: &str) -> Result<Vec<&str>, EditError> {
    let bad = |reason: &str| EditError::BadKey {
        key: dotted_key.to_owned(),
        reason: reason.to_owned(),
    };
    if dotted_key.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    let segments: Vec<&str> = dotted_key.split('.').collect();
    if segments.iter().any(|s| s.trim().is_empty()) {
        return Err(bad(
            "a segment is empty (write nested keys as `parent.child`)",
        ));
    }
    // YAML allows implicit keys of at most 1024 characters.
    if segments
        .iter()
        .any(|s| render_key(s).chars().count() > 1024)
    {
        return Err(bad(
            "a segment is longer than YAML's 1024 characters for a key",
        ));
    }
    if segments.iter().any(|s| s.trim() != *s) {
        return Err(bad("a segment has leading or trailing spaces"));
    }
    if segments.iter().any(|s| s.contains(['\n', '\r'])) {
        return Err(bad("a segment contains a line break"));
    }
    // Found by fuzz/yaml_edit: `<<: value` is a merge of `value`, which
    // YAML parsers refuse unless it is a mapping; never a key to set.
    if segments.contains(&"<<") {
        return Err(bad(
            "`<<` is YAML's merge key: no value can be set under it",
        ));
    }
    Ok(segments)
}

// ---------------------------------------------------------------------------
// Lines

/// One physical line: its text without the line ending, and the ending.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    content: &'a str,
    eol: &'a str,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    text.split_inclusive('\n')
        .map(|raw| {
            if let Some(c) = raw.strip_suffix("\r\n") {
                Line {
                    content: c,
                    eol: "\r\n",
                }
            } else if let Some(c) = raw.strip_suffix('\n') {
                Line {
                    content: c,
                    eol: "\n",
                }
            } else {
                Line {
                    content: raw,
                    eol: "",
                }
            }
        })
        .collect()
}

/// What a line is, as far as finding keys goes.
#[derive(Debug, Clone)]
enum Kind {
    Blank,
    /// Only a comment; its indentation.
    Comment(usize),
    /// `---` (with nothing but a comment after it).
    DocStart,
    /// `---` followed by content on the same line.
    DocStartWithContent,
    /// `...`
    DocEnd,
    /// `%YAML`, `%TAG`.
    Directive,
    Content {
        indent: usize,
        item: Item,
    },
}

#[derive(Debug, Clone)]
enum Item {
    /// `- ...`: a block sequence entry.
    Seq,
    Entry(Entry),
    /// Something at this indentation that is not `key: value`; the reason.
    Other(String),
}

#[derive(Debug, Clone)]
struct Entry {
    /// The key, unquoted.
    key: String,
    value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueKind {
    /// Nothing after the colon (a nested block follows, or null).
    Empty,
    Plain,
    Double,
    Single,
    /// A quoted scalar that does not end on this line.
    Unterminated,
    BlockScalar,
    Flow,
    Anchor,
    Alias,
    Tag,
    /// Text after the colon that is not a scalar start; the reason.
    Invalid(String),
}

#[derive(Debug, Clone)]
struct Value {
    kind: ValueKind,
    /// Byte offset in the line's content right after the key's `:`.
    after_colon: usize,
    /// Byte range of the scalar (quotes included) in the line's content.
    start: usize,
    end: usize,
}

fn is_blank_char(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn classify(content: &str) -> Kind {
    let bytes = content.as_bytes();
    let trimmed = content.trim_start_matches([' ', '\t']);
    if trimmed.is_empty() {
        return Kind::Blank;
    }
    let lead = content.len() - trimmed.len();
    if trimmed.starts_with('#') {
        return Kind::Comment(lead);
    }
    if lead == 0 {
        if content == "---" || content.starts_with("--- ") || content.starts_with("---\t") {
            let rest = content[3..].trim_start_matches([' ', '\t']);
            return if rest.is_empty() || rest.starts_with('#') {
                Kind::DocStart
            } else {
                Kind::DocStartWithContent
            };
        }
        if content == "..." || content.starts_with("... ") || content.starts_with("...\t") {
            return Kind::DocEnd;
        }
        if content.starts_with('%') {
            return Kind::Directive;
        }
    }
    let indent = bytes.iter().take_while(|&&b| b == b' ').count();
    if indent < lead {
        // A tab inside the indentation.
        return Kind::Content {
            indent,
            item: Item::Other("a tab in the indentation (YAML indents with spaces)".into()),
        };
    }
    Kind::Content {
        indent,
        item: parse_item(content, indent),
    }
}

/// Parses what starts at `indent`: a sequence entry, `key: value`, or other.
fn parse_item(content: &str, indent: usize) -> Item {
    let rest = &content[indent..];
    let b = rest.as_bytes();
    let followed_by_blank = |i: usize| b.get(i).is_none_or(|&c| is_blank_char(c));
    match b[0] {
        b'-' if followed_by_blank(1) => return Item::Seq,
        b'?' if followed_by_blank(1) => {
            return Item::Other("a complex mapping key (`? ...`)".into())
        }
        b'{' | b'[' => return Item::Other("a flow-style collection (`{...}` or `[...]`)".into()),
        b'&' | b'*' | b'!' => return Item::Other("an anchor, alias or tag on a key".into()),
        b'|' | b'>' => return Item::Other("a block scalar (`|` or `>`)".into()),
        _ => {}
    }
    let (key, key_end) = match b[0] {
        b'"' => match scan_double(rest, 0) {
            Some(close) => match decode_double(&rest[1..close]) {
                Some(k) => (k, close + 1),
                None => return Item::Other("a double-quoted key with an unknown escape".into()),
            },
            None => return Item::Other("a multi-line quoted key".into()),
        },
        b'\'' => match scan_single(rest, 0) {
            Some(close) => (rest[1..close].replace("''", "'"), close + 1),
            None => return Item::Other("a multi-line quoted key".into()),
        },
        _ => {
            // A plain key ends at the first `:` followed by a blank or the end
            // of the line; a ` #` before that starts a comment.
            let mut found = None;
            for i in 0..b.len() {
                if b[i] == b'#' && i > 0 && is_blank_char(b[i - 1]) {
                    break;
                }
                if b[i] == b':' && followed_by_blank(i + 1) {
                    found = Some(i);
                    break;
                }
            }
            match found {
                Some(i) => (rest[..i].trim_end_matches([' ', '\t']).to_owned(), i),
                None => {
                    return Item::Other(
                        "not a `key: value` line (a multi-line scalar or a plain value?)".into(),
                    )
                }
            }
        }
    };
    // Optional blanks, then the colon.
    let mut i = key_end;
    while i < b.len() && is_blank_char(b[i]) {
        i += 1;
    }
    if b.get(i) != Some(&b':') || !followed_by_blank(i + 1) {
        return Item::Other("a quoted scalar that is not a mapping key".into());
    }
    let value = parse_value(content, indent + i + 1);
    Item::Entry(Entry { key, value })
}

/// The closing `"` of a double-quoted scalar opening at `open`, on this line.
fn scan_double(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The closing `'` of a single-quoted scalar opening at `open` (`''` is an
/// escaped quote), on this line.
fn scan_single(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = open + 1;
    while i < b.len() {
        if b[i] == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Parses the value part of `key: value`, starting right after the colon.
fn parse_value(content: &str, after_colon: usize) -> Value {
    let b = content.as_bytes();
    let mut p = after_colon;
    while p < b.len() && is_blank_char(b[p]) {
        p += 1;
    }
    let mk = |kind: ValueKind, start: usize, end: usize| Value {
        kind,
        after_colon,
        start,
        end,
    };
    if p == b.len() || b[p] == b'#' {
        return mk(ValueKind::Empty, p, p);
    }
    let followed_by_blank = |i: usize| b.get(i).is_none_or(|&c| is_blank_char(c));
    // What may follow a quoted scalar: blanks, then nothing or a comment.
    let tail_ok = |from: usize| {
        let raw = &content[from..];
        let tail = raw.trim_start_matches([' ', '\t']);
        tail.is_empty() || (tail.starts_with('#') && tail.len() < raw.len())
    };
    match b[p] {
        b'|' | b'>' => mk(ValueKind::BlockScalar, p, b.len()),
        b'{' | b'[' => mk(ValueKind::Flow, p, b.len()),
        b'&' => mk(ValueKind::Anchor, p, b.len()),
        b'*' => mk(ValueKind::Alias, p, b.len()),
        b'!' => mk(ValueKind::Tag, p, b.len()),
        b'"' => match scan_double(content, p) {
            Some(close) if tail_ok(close + 1) => mk(ValueKind::Double, p, close + 1),
            Some(_) => mk(
                ValueKind::Invalid("text after the closing quote".into()),
                p,
                b.len(),
            ),
            None => mk(ValueKind::Unterminated, p, b.len()),
        },
        b'\'' => match scan_single(content, p) {
            Some(close) if tail_ok(close + 1) => mk(ValueKind::Single, p, close + 1),
            Some(_) => mk(
                ValueKind::Invalid("text after the closing quote".into()),
                p,
                b.len(),
            ),
            None => mk(ValueKind::Unterminated, p, b.len()),
        },
        b'@' | b'`' => mk(
            ValueKind::Invalid(format!(
                "a value starting with the reserved character `{}`",
                b[p] as char
            )),
            p,
            b.len(),
        ),
        b'-' | b'?' | b':' if followed_by_blank(p + 1) => mk(
            ValueKind::Invalid("a block collection on the same line as its key".into()),
            p,
            b.len(),
        ),
        _ => {
            // A plain scalar runs to a ` #` comment or the end of the line.
            let mut end = b.len();
            for i in p + 1..b.len() {
                if b[i] == b'#' && is_blank_char(b[i - 1]) {
                    end = i;
                    break;
                }
            }
            let value_end = p + content[p..end].trim_end_matches([' ', '\t']).len();
            mk(ValueKind::Plain, p, value_end)
        }
    }
}

// ---------------------------------------------------------------------------
// Scalars

fn decode_double(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<char> {
            let digits: String = chars.by_ref().take(n).collect();
            if digits.len() != n {
                return None;
            }
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
        };
        out.push(match e {
            '0' => '\0',
            'a' => '\u{7}',
            'b' => '\u{8}',
            't' | '\t' => '\t',
            'n' => '\n',
            'v' => '\u{b}',
            'f' => '\u{c}',
            'r' => '\r',
            'e' => '\u{1b}',
            ' ' => ' ',
            '"' => '"',
            '/' => '/',
            '\\' => '\\',
            'N' => '\u{85}',
            '_' => '\u{a0}',
            'L' => '\u{2028}',
            'P' => '\u{2029}',
            'x' => hex(&mut chars, 2)?,
            'u' => hex(&mut chars, 4)?,
            'U' => hex(&mut chars, 8)?,
            _ => return None,
        });
    }
    Some(out)
}

/// The string a scalar on the line stands for (`None`: not comparable).
fn decode_scalar(content: &str, v: &Value) -> Option<String> {
    let raw = &content[v.start..v.end];
    match v.kind {
        ValueKind::Plain => Some(raw.to_owned()),
        ValueKind::Double => decode_double(&raw[1..raw.len() - 1]),
        ValueKind::Single => Some(raw[1..raw.len() - 1].replace("''", "'")),
        _ => None,
    }
}

/// Whether `s` can be written as a plain scalar and read back as the same
/// string (not a number, boolean or null, no indicator, comment or `: `).
fn plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if s.trim() != s || s.chars().any(unprintable) {
        return false;
    }
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') || s.contains(":\t") {
        return false;
    }
    !looks_typed(s)
}

/// Whether a plain scalar `s` would be read as something other than a string
/// by common YAML 1.1 / 1.2 parsers.
fn looks_typed(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", "-.inf", "+.inf",
        ".nan",
    ];
    if WORDS.contains(&lower.as_str()) {
        return true;
    }
    let digits = lower.trim_start_matches(['+', '-']);
    if digits.starts_with("0x") || digits.starts_with("0o") || digits.starts_with("0b") {
        return true;
    }
    if lower.parse::<f64>().is_ok() {
        return true;
    }
    // YAML 1.1 sexagesimal (`1:30`) and underscores in numbers (`1_000`).
    let numeric = |c: char| c.is_ascii_digit() || matches!(c, '_' | ':' | '.' | '+' | '-');
    s.chars().all(numeric) && s.chars().any(|c| c.is_ascii_digit())
}

/// Characters a YAML file may not hold as they are (outside YAML's printable
/// set, U+FFFE and U+FFFF included), and the byte-order mark: escaped.
fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}')
}

fn render_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if unprintable(c) => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render_single(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `value` written in the style of the scalar it replaces, when that style
/// can hold it; plain when safe, else double-quoted.
fn render_value(value: &str, like: &ValueKind) -> String {
    match like {
        ValueKind::Double => render_double(value),
        ValueKind::Single if !value.chars().any(unprintable) => render_single(value),
        _ if plain_safe(value) => value.to_owned(),
        _ => render_double(value),
    }
}

fn render_key(key: &str) -> String {
    if plain_safe(key) && !key.contains(['#', ':']) {
        key.to_owned()
    } else {
        render_double(key)
    }
}

// ---------------------------------------------------------------------------
// The document

struct Doc<'a> {
    lines: Vec<Line<'a>>,
    kinds: Vec<Kind>,
    /// The document's lines are `start..end` (after `---`, before `...`).
    start: usize,
    end: usize,
    eol: &'a str,
    indent_unit: usize,
    key: &'a str,
}

/// One `key:` at some level, with the extent of its block.
#[derive(Debug)]
struct Node<'d> {
    line: usize,
    indent: usize,
    entry: &'d Entry,
    /// First line after the node's block.
    block_end: usize,
    /// The last line that belongs to the block (content, or a comment
    /// indented deeper than the key); the key's own line when none.
    last_inner: usize,
    /// A content line deeper than the key (a nested block or a continuation).
    has_nested: bool,
    /// `- ` entries at the key's own indentation (a compact sequence).
    has_compact_seq: bool,
}

/// The keys of one mapping level.
struct Level<'d> {
    /// Indentation of the level's keys (`None`: the level has no lines).
    indent: Option<usize>,
    nodes: Vec<Node<'d>>,
}

/// What an insertion needs to know of the mapping it goes into.
#[derive(Debug, Clone, Copy)]
struct Parent {
    indent: usize,
    last_inner: usize,
}

enum Edit {
    None,
    /// Replace the content of `line`.
    Replace {
        line: usize,
        content: String,
    },
    /// Insert `lines` after line `after` (`None`: at the very start).
    Insert {
        after: Option<usize>,
        lines: Vec<String>,
    },
}

impl<'a> Doc<'a> {
    fn parse(body: &'a str, key: &'a str) -> Result<Self, EditError> {
        let lines = split_lines(body);
        let kinds: Vec<Kind> = lines.iter().map(|l| classify(l.content)).collect();
        let eol = lines
            .iter()
            .map(|l| l.eol)
            .find(|e| !e.is_empty())
            .unwrap_or("\n");
        let unsupported = |line: usize, reason: &str| EditError::Unsupported {
            line: line + 1,
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        // One document: optional directives and `---`, content, an optional
        // `...`; anything more is a second document.
        let several = "the file holds several YAML documents; only one is supported";
        let mut start = 0;
        let mut end = lines.len();
        let mut seen_start = false;
        let mut seen_content = false;
        for (i, k) in kinds.iter().enumerate() {
            match k {
                Kind::Directive | Kind::DocStart if seen_start || seen_content => {
                    return Err(unsupported(i, several))
                }
                Kind::Directive => {}
                Kind::DocStart => {
                    seen_start = true;
                    start = i + 1;
                }
                Kind::DocStartWithContent => {
                    return Err(unsupported(i, "content on the `---` line is not supported"))
                }
                Kind::DocEnd => {
                    if let Some(j) = kinds[i + 1..]
                        .iter()
                        .position(|k| !matches!(k, Kind::Blank | Kind::Comment(_) | Kind::DocEnd))
                    {
                        return Err(unsupported(i + 1 + j, several));
                    }
                    end = i;
                    break;
                }
                Kind::Blank | Kind::Comment(_) => {}
                Kind::Content { .. } => seen_content = true,
            }
        }
        let mut indents: Vec<usize> = kinds[start..end]
            .iter()
            .filter_map(|k| match k {
                Kind::Content { indent, .. } => Some(*indent),
                _ => None,
            })
            .collect();
        indents.sort_unstable();
        indents.dedup();
        let indent_unit = indents
            .windows(2)
            .map(|w| w[1] - w[0])
            .min()
            .filter(|&u| u > 0)
            .unwrap_or(2);
        Ok(Doc {
            lines,
            kinds,
            start,
            end,
            eol,
            indent_unit,
            key,
        })
    }

    fn err(&self, line: usize, reason: impl Into<String>) -> EditError {
        EditError::Unsupported {
            line: line + 1,
            key: self.key.to_owned(),
            reason: reason.into(),
        }
    }

    /// The keys in lines `from..to`, the block of a key indented
    /// `parent_indent` (`None`: the document's top level).
    fn scan_level(
        &self,
        from: usize,
        to: usize,
        parent_indent: Option<usize>,
        parent_name: &str,
    ) -> Result<Level<'_>, EditError> {
        let mut level: Option<usize> = None;
        let mut nodes: Vec<Node<'_>> = Vec::new();
        for i in from..to {
            let (indent, item) = match &self.kinds[i] {
                Kind::Content { indent, item } => (*indent, item),
                Kind::Comment(indent) => {
                    if let (Some(node), Some(l)) = (nodes.last_mut(), level) {
                        if *indent > l {
                            node.last_inner = i;
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let l = *level.get_or_insert(indent);
            if indent < l {
                return Err(self.err(
                    i,
                    format!(
                        "inconsistent indentation ({indent} spaces, where the keys above use {l})"
                    ),
                ));
            }
            if indent > l {
                if let Some(node) = nodes.last_mut() {
                    node.has_nested = true;
                    node.last_inner = i;
                }
                continue;
            }
            match item {
                Item::Entry(entry) => {
                    if let Some(prev) = nodes.iter().find(|n| n.entry.key == entry.key) {
                        return Err(self.err(
                            i,
                            format!(
                                "duplicate key `{}` (also on line {})",
                                entry.key,
                                prev.line + 1
                            ),
                        ));
                    }
                    if let Some(prev) = nodes.last_mut() {
                        prev.block_end = i;
                    }
                    nodes.push(Node {
                        line: i,
                        indent,
                        entry,
                        block_end: to,
                        last_inner: i,
                        has_nested: false,
                        has_compact_seq: false,
                    });
                }
                Item::Seq => match nodes.last_mut() {
                    // `key:` followed by `- item` lines at the key's own
                    // indentation: a compact sequence that belongs to it.
                    Some(node) if node.entry.value.kind == ValueKind::Empty => {
                        node.has_compact_seq = true;
                        node.last_inner = i;
                    }
                    _ => {
                        let what = if parent_indent.is_none() {
                            "the document is a list".to_owned()
                        } else {
                            format!("`{parent_name}` holds a list")
                        };
                        return Err(self.err(
                            i,
                            format!("{what}; list items are out of scope (use a mapping key)"),
                        ));
                    }
                },
                Item::Other(reason) => return Err(self.err(i, reason.clone())),
            }
        }
        if let (Some(l), Some(p)) = (level, parent_indent) {
            debug_assert!(l > p);
        }
        Ok(Level {
            indent: level,
            nodes,
        })
    }

    /// Why a node's value cannot be descended into or replaced, if it cannot.
    fn refuse_value(&self, node: &Node<'_>, as_mapping: bool) -> Result<(), EditError> {
        let name = &node.entry.key;
        let reason = match &node.entry.value.kind {
            ValueKind::BlockScalar => Some(format!(
                "`{name}` holds a block scalar (`|` or `>`); edit it by hand"
            )),
            ValueKind::Flow => Some(format!(
                "`{name}` holds a flow-style collection (`{{...}}` or `[...]`); \
                 only block style is edited"
            )),
            ValueKind::Anchor => Some(format!(
                "`{name}` has an anchor (`&`); changing it would change its aliases too"
            )),
            ValueKind::Alias => Some(format!("`{name}` is an alias (`*`) of another node")),
            ValueKind::Tag => Some(format!("`{name}` has a tag (`!`)")),
            ValueKind::Unterminated => Some(format!("`{name}` holds a multi-line quoted scalar")),
            ValueKind::Invalid(r) => Some(format!("`{name}`: {r}")),
            _ if node.has_compact_seq => Some(format!(
                "`{name}` holds a list; list items are out of scope"
            )),
            ValueKind::Plain | ValueKind::Double | ValueKind::Single if as_mapping => {
                Some(format!("`{name}` holds a scalar, not a mapping of keys"))
            }
            ValueKind::Plain | ValueKind::Double | ValueKind::Single if node.has_nested => {
                Some(format!("`{name}` holds a multi-line scalar"))
            }
            ValueKind::Empty if !as_mapping && node.has_nested => {
                let first = (node.line + 1..node.block_end).find_map(|i| match &self.kinds[i] {
                    Kind::Content { item, .. } => Some(item),
                    _ => None,
                });
                Some(match first {
                    Some(Item::Seq) => {
                        format!("`{name}` holds a list; list items are out of scope")
                    }
                    Some(Item::Entry(_)) => format!("`{name}` holds a mapping, not a scalar"),
                    _ => format!(
                        "`{name}` has its value on the following lines; write it on the key's line"
                    ),
                })
            }
            _ => None,
        };
        match reason {
            Some(r) => Err(self.err(node.line, r)),
            None => Ok(()),
        }
    }

    fn plan(&self, segments: &[&str], value: &str) -> Result<Edit, EditError> {
        let mut from = self.start;
        let mut to = self.end;
        let mut parent: Option<Parent> = None;
        for (depth, seg) in segments.iter().enumerate() {
            let parent_name = segments[..depth].join(".");
            let level = self.scan_level(from, to, parent.map(|p| p.indent), &parent_name)?;
            let Some(node) = level.nodes.iter().find(|n| n.entry.key == *seg) else {
                return Ok(self.insert_chain(parent, level.indent, &segments[depth..], value));
            };
            if depth + 1 == segments.len() {
                return self.set_leaf(node, value);
            }
            self.refuse_value(node, true)?;
            from = node.line + 1;
            to = node.block_end;
            parent = Some(Parent {
                indent: node.indent,
                last_inner: node.last_inner,
            });
        }
        unreachable!("the last segment always returns")
    }

    fn set_leaf(&self, node: &Node<'_>, value: &str) -> Result<Edit, EditError> {
        self.refuse_value(node, false)?;
        let content = self.lines[node.line].content;
        let v = &node.entry.value;
        if v.kind == ValueKind::Empty {
            // `key:` or `key: # comment` → `key: value` / `key: value # comment`.
            let head = &content[..v.after_colon];
            let comment = &content[v.start..];
            let rendered = render_value(value, &ValueKind::Empty);
            let new = if comment.is_empty() {
                format!("{head} {rendered}")
            } else {
                format!("{head} {rendered} {comment}")
            };
            return Ok(Edit::Replace {
                line: node.line,
                content: new,
            });
        }
        if decode_scalar(content, v).as_deref() == Some(value) {
            return Ok(Edit::None);
        }
        let rendered = render_value(value, &v.kind);
        let new = format!("{}{}{}", &content[..v.start], rendered, &content[v.end..]);
        Ok(Edit::Replace {
            line: node.line,
            content: new,
        })
    }

    /// Lines for `segments` (the first one missing) inside `parent`'s block
    /// (`None`: at the end of the document).
    fn insert_chain(
        &self,
        parent: Option<Parent>,
        level_indent: Option<usize>,
        segments: &[&str],
        value: &str,
    ) -> Edit {
        let indent = match (level_indent, parent) {
            (Some(i), _) => i,
            (None, Some(p)) => p.indent + self.indent_unit,
            (None, None) => 0,
        };
        let mut lines = Vec::with_capacity(segments.len());
        for (i, seg) in segments.iter().enumerate() {
            let pad = " ".repeat(indent + i * self.indent_unit);
            let key = render_key(seg);
            if i + 1 == segments.len() {
                lines.push(format!(
                    "{pad}{key}: {}",
                    render_value(value, &ValueKind::Empty)
                ));
            } else {
                lines.push(format!("{pad}{key}:"));
            }
        }
        let after = match parent {
            Some(p) => Some(p.last_inner),
            // The end of the document: after its last line (before `...`).
            None => self.end.checked_sub(1),
        };
        Edit::Insert { after, lines }
    }

    fn apply(&self, edit: Edit) -> String {
        let mut out = String::new();
        match edit {
            Edit::None => {
                for l in &self.lines {
                    out.push_str(l.content);
                    out.push_str(l.eol);
                }
            }
            Edit::Replace { line, content } => {
                for (i, l) in self.lines.iter().enumerate() {
                    let c: Cow<'_, str> = if i == line {
                        Cow::Borrowed(content.as_str())
                    } else {
                        Cow::Borrowed(l.content)
                    };
                    out.push_str(&c);
                    out.push_str(l.eol);
                }
            }
            Edit::Insert { after, lines } => {
                let block = |out: &mut String, terminate_last: bool| {
                    let n = lines.len();
                    for (j, new) in lines.iter().enumerate() {
                        out.push_str(new);
                        if j + 1 < n || terminate_last {
                            out.push_str(self.eol);
                        }
                    }
                };
                if after.is_none() {
                    block(&mut out, true);
                }
                for (i, l) in self.lines.iter().enumerate() {
                    out.push_str(l.content);
                    if Some(i) == after {
                        if l.eol.is_empty() {
                            // The last line had no line ending: the file
                            // keeps ending without one, after the new lines.
                            out.push_str(self.eol);
                            block(&mut out, false);
                        } else {
                            out.push_str(l.eol);
                            block(&mut out, true);
                        }
                    } else {
                        out.push_str(l.eol);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
