//! A fast path for the plain block-style YAML that Entity Store files are
//! made of (`key: value` mappings, `- ` sequences, one-line plain, single- and
//! double-quoted scalars, `[]`, `{}`, comments). It builds the same tree, with
//! the same positions, as the full parser — and gives up (returns `None`) on
//! anything else: multi-line scalars, flow collections with content, anchors,
//! tags, tabs, `\r`, directives, several documents, anything malformed. Then
//! the full parser runs and reports problems. Debug builds (and so every test
//! run) check each fast result against the full parser.

use std::borrow::Cow;

use super::{YKind, YNode};

struct Line {
    /// Byte offset of the line start.
    start: usize,
    /// Byte offset of the line end (the `\n`, or the text's end).
    end: usize,
    /// Leading spaces.
    indent: usize,
    /// 1-based.
    number: u32,
}

struct P<'a> {
    text: &'a str,
    lines: Vec<Line>,
    i: usize,
}

/// Parse `text`, or `None` if it is not in the simple subset.
pub(super) fn parse(text: &str) -> Option<Option<YNode<'_>>> {
    if text.contains(['\t', '\r']) || text.starts_with('\u{feff}') {
        return None;
    }
    let mut lines = Vec::with_capacity(text.len() / 24 + 1);
    let mut start = 0;
    let mut seen_content = false;
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        let number = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let end = start + raw.len() - usize::from(raw.ends_with('\n'));
        let line = &text[start..end];
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if body.is_empty() || body.starts_with('#') {
            // Blank or comment line.
        } else if indent == 0 && (body.starts_with("---") || body.starts_with("...")) {
            // Only a first `---` alone on its line.
            if seen_content
                || !body[3..].trim_end_matches(' ').is_empty()
                || body.starts_with("...")
            {
                return None;
            }
        } else if indent == 0 && body.starts_with('%') {
            return None;
        } else {
            seen_content = true;
            lines.push(Line {
                start,
                end,
                indent,
                number,
            });
        }
        start += raw.len();
    }
    if lines.is_empty() {
        return Some(None);
    }
    let mut p = P { text, lines, i: 0 };
    let indent = p.lines[0].indent;
    let root = p.block(indent, p.lines[0].start + indent)?;
    (p.i == p.lines.len()).then_some(Some(root))
}

impl<'a> P<'a> {
    fn column(&self, line: &Line, offset: usize) -> u32 {
        let prefix = &self.text[line.start..offset];
        let n = if prefix.is_ascii() {
            prefix.len()
        } else {
            prefix.chars().count()
        };
        u32::try_from(n + 1).unwrap_or(u32::MAX)
    }

    fn node(&self, kind: YKind<'a>, line: usize, start: usize, end: usize) -> YNode<'a> {
        let l = &self.lines[line];
        YNode {
            kind,
            start,
            end,
            line: l.number,
            column: self.column(l, start),
        }
    }

    /// A block collection whose first entry is at `col` on the current line.
    fn block(&mut self, col_indent: usize, at: usize) -> Option<YNode<'a>> {
        let rest = &self.text[at..self.lines[self.i].end];
        if rest == "-" || rest.starts_with("- ") {
            self.seq(col_indent, false)
        } else {
            self.map(col_indent, at)
        }
    }

    /// Entries `key: value` at indent `ind`; the first starts at byte `at`.
    fn map(&mut self, ind: usize, at: usize) -> Option<YNode<'a>> {
        let first_line = self.i;
        let mut entries = Vec::new();
        let mut pos = at;
        loop {
            let li = self.i;
            let line_end = self.lines[li].end;
            let (key, after) = self.key(li, pos)?;
            let rest = &self.text[after..line_end];
            if rest.trim_end_matches(' ').is_empty() {
                // The value is on the next lines, or empty.
                self.i += 1;
                let value = match self.lines.get(self.i) {
                    Some(next) if next.indent > ind => {
                        let (ni, ns) = (next.indent, next.start + next.indent);
                        self.block(ni, ns)?
                    }
                    Some(next) if next.indent == ind && self.is_seq_line(self.i) => {
                        self.seq(ind, true)?
                    }
                    _ => {
                        let colon = after - 1;
                        YNode {
                            kind: YKind::Scalar {
                                text: Cow::Borrowed("~"),
                                plain: true,
                            },
                            start: colon,
                            end: colon,
                            line: self.lines[li].number,
                            column: self.column(&self.lines[li], colon),
                        }
                    }
                };
                entries.push((key, value));
            } else {
                let vstart = after + (rest.len() - rest.trim_start_matches(' ').len());
                if vstart == after {
                    return None; // `key:value` is not a mapping entry
                }
                let value = self.scalar(li, vstart, line_end)?;
                entries.push((key, value));
                self.i += 1;
            }
            match self.lines.get(self.i) {
                Some(next) if next.indent == ind && !self.is_seq_line(self.i) => {
                    pos = next.start + next.indent
                }
                Some(next) if next.indent > ind => return None,
                _ => break,
            }
        }
        let end = entries
            .last()
            .map_or(at, |(_, v): &(YNode<'a>, YNode<'a>)| v.end);
        let mut n = self.node(YKind::Map(entries), first_line, at, end);
        n.end = end;
        Some(n)
    }

    fn is_seq_line(&self, li: usize) -> bool {
        let l = &self.lines[li];
        let body = &self.text[l.start + l.indent..l.end];
        body == "-" || body.starts_with("- ")
    }

    /// Items `- x` at indent `ind` (the dash column). An indentless sequence
    /// (a mapping value at the key's own indent) starts at its first item's
    /// content; any other at its first dash.
    fn seq(&mut self, ind: usize, indentless: bool) -> Option<YNode<'a>> {
        let mut items = Vec::new();
        let mut first: Option<(usize, usize)> = None;
        loop {
            let li = self.i;
            let l = &self.lines[li];
            let (lstart, lend) = (l.start, l.end);
            let dash = lstart + ind;
            let after_dash = &self.text[dash + 1..lend];
            let content = after_dash.trim_start_matches(' ');
            if content.is_empty() {
                return None; // nested block after a bare dash: leave it to the full parser
            }
            let cstart = lend - content.len();
            let ccol = ind + 1 + (after_dash.len() - content.len());
            first.get_or_insert((li, if indentless { cstart } else { dash }));
            let item = if content.starts_with("- ") || content == "-" {
                return None;
            } else if self.key(li, cstart).is_some() {
                // A mapping that starts on the dash's line: `- type: X`.
                self.map(ccol, cstart)?
            } else {
                let v = self.scalar(li, cstart, lend)?;
                self.i += 1;
                v
            };
            items.push(item);
            match self.lines.get(self.i) {
                Some(next) if next.indent == ind && self.is_seq_line(self.i) => {}
                Some(next) if next.indent > ind => return None,
                _ => break,
            }
        }
        let (fl, fstart) = first?;
        let end = items.last().map_or(fstart, |v| v.end);
        let mut n = self.node(YKind::Seq(items), fl, fstart, end);
        n.end = end;
        Some(n)
    }

    /// A mapping key at byte `at` of line `li`: the key node and the byte after its `:`.
    fn key(&self, li: usize, at: usize) -> Option<(YNode<'a>, usize)> {
        let end = self.lines[li].end;
        let s = &self.text[at..end];
        let (node, after_key) = match s.as_bytes().first()? {
            b'\'' | b'"' => {
                let (text, len) = quoted(s)?;
                let n = self.node(YKind::Scalar { text, plain: false }, li, at, at + len);
                (n, at + len)
            }
            _ => {
                // Up to the first `: ` (or `:` at the end of the line).
                let bytes = s.as_bytes();
                let mut k = None;
                for (j, &b) in bytes.iter().enumerate() {
                    if b == b':' && (j + 1 == bytes.len() || bytes[j + 1] == b' ') {
                        k = Some(j);
                        break;
                    }
                    if b == b'#' && j > 0 && bytes[j - 1] == b' ' {
                        return None;
                    }
                }
                let k = k?;
                let text = s[..k].trim_end_matches(' ');
                if !plain_ok(text) {
                    return None;
                }
                let n = self.node(
                    YKind::Scalar {
                        text: Cow::Borrowed(text),
                        plain: true,
                    },
                    li,
                    at,
                    at + text.len(),
                );
                (n, at + k)
            }
        };
        // The `:` must follow the key directly.
        (self.text.as_bytes().get(after_key) == Some(&b':')
            && matches!(
                self.text.as_bytes().get(after_key + 1),
                None | Some(b' ' | b'\n')
            ))
        .then_some((node, after_key + 1))
    }

    /// A one-line value at byte `at` of line `li` (up to `end`).
    fn scalar(&self, li: usize, at: usize, end: usize) -> Option<YNode<'a>> {
        let s = &self.text[at..end];
        let (node, used) = match s.as_bytes().first()? {
            b'\'' | b'"' => {
                let (text, len) = quoted(s)?;
                (
                    self.node(YKind::Scalar { text, plain: false }, li, at, at + len),
                    len,
                )
            }
            b'[' | b'{' => {
                let empty = if s.starts_with("[]") {
                    YKind::Seq(Vec::new())
                } else if s.starts_with("{}") {
                    YKind::Map(Vec::new())
                } else {
                    return None;
                };
                (self.node(empty, li, at, at + 2), 2)
            }
            _ => {
                let cut = s.find(" #").unwrap_or(s.len());
                let text = s[..cut].trim_end_matches(' ');
                if !plain_ok(text) || text.contains(": ") || text.ends_with(':') {
                    return None;
                }
                (
                    self.node(
                        YKind::Scalar {
                            text: Cow::Borrowed(text),
                            plain: true,
                        },
                        li,
                        at,
                        at + text.len(),
                    ),
                    text.len(),
                )
            }
        };
        // Only blanks, or a comment, may follow.
        let rest = &s[used..];
        let trimmed = rest.trim_start_matches(' ');
        (trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len()))
            .then_some(node)
    }
}

/// May `s` be a one-line plain scalar?
fn plain_ok(s: &str) -> bool {
    let Some(&c) = s.as_bytes().first() else {
        return false;
    };
    let next = s.as_bytes().get(1).copied();
    let indicator = match c {
        b'-' | b'?' | b':' => matches!(next, None | Some(b' ')),
        b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' => true,
        _ => false,
    };
    !indicator && !s.contains(" #") && !s.chars().any(|c| c.is_control())
}

/// A one-line quoted scalar at the start of `s`: its value and its length
/// (quotes included).
fn quoted(s: &str) -> Option<(Cow<'_, str>, usize)> {
    let q = s.as_bytes()[0];
    let body = &s[1..];
    if q == b'\'' {
        let mut out: Option<String> = None;
        let mut i = 0;
        let b = body.as_bytes();
        loop {
            let j = i + body[i..].find('\'')?;
            if b.get(j + 1) == Some(&b'\'') {
                out.get_or_insert_with(String::new).push_str(&body[i..=j]);
                i = j + 2;
                continue;
            }
            return Some(match out {
                None => (Cow::Borrowed(&body[..j]), j + 2),
                Some(mut o) => {
                    o.push_str(&body[i..j]);
                    (Cow::Owned(o), j + 2)
                }
            });
        }
    }
    // Double-quoted.
    let first = body.find(['"', '\\'])?;
    if body.as_bytes()[first] == b'"' {
        return Some((Cow::Borrowed(&body[..first]), first + 2));
    }
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(out), i + 2)),
            '\\' => {
                let (_, e) = chars.next()?;
                let simple = match e {
                    '0' => '\0',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    't' => '\t',
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
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..n {
                            let (_, h) = chars.next()?;
                            v = v * 16 + h.to_digit(16)?;
                        }
                        char::from_u32(v)?
                    }
                    _ => return None,
                };
                out.push(simple);
            }
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    None
}
