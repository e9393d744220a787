//! Splits a template into literal text and `{{ ... }}` tags, and tokenizes the
//! inside of a tag. Positions are byte offsets into the template source.

use super::TemplateError;

/// What a tag is, decided by its first characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagKind {
    /// `{{ expr }}` or `{{{ expr }}}`: output a value.
    Expr,
    /// `{{#helper ...}}`: opens a block.
    Open,
    /// `{{/helper}}`: closes a block.
    Close,
    /// `{{else}}`, `{{else if ...}}` or `{{^}}`.
    Else,
    /// `{{! ... }}` or `{{!-- ... --}}`: outputs nothing.
    Comment,
}

/// One tag, with the byte range of the whole tag and of its body (the part the
/// tokenizer reads: after the sigil or keyword, before the `}}`).
#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub start: usize,
    pub end: usize,
    pub body_start: usize,
    pub body_end: usize,
    pub kind: TagKind,
    /// `{{~`: trim whitespace before the tag.
    pub strip_before: bool,
    /// `~}}`: trim whitespace after the tag.
    pub strip_after: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Text { start: usize, end: usize },
    Tag(Tag),
}

/// Split `src` into text and tags. Problems (an unterminated `{{`) are pushed
/// to `errors`; what follows an unterminated tag is kept as text.
pub(crate) fn scan(src: &str, errors: &mut Vec<TemplateError>) -> Vec<Piece> {
    let bytes = src.as_bytes();
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while let Some(rel) = find(&bytes[i..], b"{{") {
        let start = i + rel;
        match scan_tag(src, start) {
            Ok(tag) => {
                if start > text_start {
                    pieces.push(Piece::Text {
                        start: text_start,
                        end: start,
                    });
                }
                i = tag.end;
                text_start = tag.end;
                pieces.push(Piece::Tag(tag));
            }
            Err(e) => {
                errors.push(e);
                break;
            }
        }
    }
    if text_start < src.len() {
        pieces.push(Piece::Text {
            start: text_start,
            end: src.len(),
        });
    }
    apply_whitespace_control(src, &mut pieces);
    pieces
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn scan_tag(src: &str, start: usize) -> Result<Tag, TemplateError> {
    let bytes = src.as_bytes();
    let unterminated = || {
        TemplateError::new(
            start,
            "unterminated `{{`: no matching `}}` follows".to_string(),
            Some(excerpt(src, start)),
        )
    };
    // Comments end at `--}}` or `}}` and may contain anything.
    let mut p = start + 2;
    let triple = bytes.get(p) == Some(&b'{');
    if triple {
        p += 1;
    }
    let strip_before = bytes.get(p) == Some(&b'~');
    if strip_before {
        p += 1;
    }
    if !triple && bytes.get(p) == Some(&b'!') {
        let long = src[p..].starts_with("!--");
        let (close, body_start) = if long { ("--}}", p + 3) } else { ("}}", p + 1) };
        let rel = find(&bytes[body_start..], close.as_bytes()).ok_or_else(unterminated)?;
        let close_at = body_start + rel;
        let strip_after = close_at > body_start && bytes[close_at - 1] == b'~' && !long;
        return Ok(Tag {
            start,
            end: close_at + close.len(),
            body_start,
            body_end: close_at,
            kind: TagKind::Comment,
            strip_before,
            strip_after,
        });
    }
    // Find the closing braces, skipping over quoted strings on the same line.
    let close: &[u8] = if triple { b"}}}" } else { b"}}" };
    let mut q = p;
    let mut quote: Option<u8> = None;
    let close_at = loop {
        let Some(&b) = bytes.get(q) else {
            return Err(unterminated());
        };
        match quote {
            Some(qc) => {
                if b == b'\\' {
                    q += 2;
                    continue;
                }
                if b == qc {
                    quote = None;
                } else if b == b'\n' {
                    // A string never spans lines: stop honouring it.
                    quote = None;
                }
            }
            None => {
                if b == b'"' || b == b'\'' {
                    quote = Some(b);
                } else if bytes[q..].starts_with(close) {
                    break q;
                } else if bytes[q..].starts_with(b"{{") {
                    // A new tag opens before this one closed.
                    return Err(unterminated());
                }
            }
        }
        q += 1;
    };
    let end = close_at + close.len();
    let mut body_end = close_at;
    let strip_after = body_end > p && bytes[body_end - 1] == b'~';
    if strip_after {
        body_end -= 1;
    }
    // Decide the kind from the first non-blank characters.
    let mut b0 = p;
    while b0 < body_end && bytes[b0].is_ascii_whitespace() {
        b0 += 1;
    }
    let (kind, body_start) = if triple {
        (TagKind::Expr, b0)
    } else {
        match bytes.get(b0) {
            Some(b'#') => (TagKind::Open, b0 + 1),
            Some(b'/') => (TagKind::Close, b0 + 1),
            Some(b'^') if src[b0 + 1..body_end].trim().is_empty() => (TagKind::Else, b0 + 1),
            _ if is_keyword(&src[b0..body_end], "else") => (TagKind::Else, b0 + 4),
            _ => (TagKind::Expr, b0),
        }
    };
    Ok(Tag {
        start,
        end,
        body_start,
        body_end,
        kind,
        strip_before,
        strip_after,
    })
}

fn is_keyword(s: &str, kw: &str) -> bool {
    s.starts_with(kw)
        && s[kw.len()..]
            .chars()
            .next()
            .is_none_or(|c| c.is_whitespace())
}

/// The start of a tag, for error messages: up to the end of its line, at most 60 chars.
pub(crate) fn excerpt(src: &str, start: usize) -> String {
    let rest = &src[start..];
    let line = rest.split('\n').next().unwrap_or(rest);
    let mut out: String = line.chars().take(60).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

/// Applies `~` whitespace control and Handlebars' "standalone tag" rule: a block,
/// else, close or comment tag alone on its line removes that whole line.
fn apply_whitespace_control(src: &str, pieces: &mut [Piece]) {
    let bytes = src.as_bytes();
    // Decide on the untouched pieces first, then trim.
    let standalone: Vec<bool> = (0..pieces.len())
        .map(|i| is_standalone(src, pieces, i))
        .collect();
    for i in 0..pieces.len() {
        let Piece::Tag(tag) = &pieces[i] else {
            continue;
        };
        let (strip_before, strip_after) = (tag.strip_before, tag.strip_after);
        if strip_before && i > 0 {
            if let Piece::Text { start, end } = &mut pieces[i - 1] {
                while *end > *start && bytes[*end - 1].is_ascii_whitespace() {
                    *end -= 1;
                }
            }
        }
        if strip_after {
            if let Some(Piece::Text { start, end }) = pieces.get_mut(i + 1) {
                while *start < *end && bytes[*start].is_ascii_whitespace() {
                    *start += 1;
                }
            }
        }
        if !standalone[i] {
            continue;
        }
        if i > 0 {
            if let Piece::Text { start, end } = &mut pieces[i - 1] {
                while *end > *start && (bytes[*end - 1] == b' ' || bytes[*end - 1] == b'\t') {
                    *end -= 1;
                }
            }
        }
        if let Some(Piece::Text { start, end }) = pieces.get_mut(i + 1) {
            while *start < *end && (bytes[*start] == b' ' || bytes[*start] == b'\t') {
                *start += 1;
            }
            if *start < *end && bytes[*start] == b'\r' {
                *start += 1;
            }
            if *start < *end && bytes[*start] == b'\n' {
                *start += 1;
            }
        }
    }
}

fn is_standalone(src: &str, pieces: &[Piece], i: usize) -> bool {
    let Piece::Tag(tag) = &pieces[i] else {
        return false;
    };
    if tag.kind == TagKind::Expr || tag.strip_before || tag.strip_after {
        return false;
    }
    // Only blanks between the previous newline (or start) and the tag, and
    // between the tag and the next newline (or end).
    let before_ok = match i.checked_sub(1).map(|j| &pieces[j]) {
        None => true,
        Some(Piece::Text { start, end }) => {
            let t = &src[*start..*end];
            let tail = t.rsplit('\n').next().unwrap_or(t);
            tail.bytes().all(|b| b == b' ' || b == b'\t') && (t.contains('\n') || *start == 0)
        }
        Some(Piece::Tag(_)) => false,
    };
    let after_ok = match pieces.get(i + 1) {
        None => true,
        Some(Piece::Text { start, end }) => {
            let t = &src[*start..*end];
            let head = t.split('\n').next().unwrap_or(t);
            let head = head.strip_suffix('\r').unwrap_or(head);
            head.bytes().all(|b| b == b' ' || b == b'\t') && (t.contains('\n') || *end == src.len())
        }
        Some(Piece::Tag(_)) => false,
    };
    before_ok && after_ok
}

/// A token inside a tag.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or a path: `a.b.0`, `a.[b c]`, `env`.
    Word(String),
    /// A quoted string, unescaped.
    Str(String),
    /// A number literal, as written.
    Num(String),
    LParen,
    RParen,
    Eq,
}

/// Tokenize the body of a tag (`src[start..end]`). Offsets in the result are
/// absolute byte offsets into `src`.
pub(crate) fn tokenize(
    src: &str,
    start: usize,
    end: usize,
) -> Result<Vec<(Tok, usize)>, TemplateError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let at = i;
        match b {
            b'(' => {
                out.push((Tok::LParen, at));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, at));
                i += 1;
            }
            b'=' => {
                out.push((Tok::Eq, at));
                i += 1;
            }
            b'"' | b'\'' => {
                let mut s = String::new();
                i += 1;
                let mut closed = false;
                while i < end {
                    let c = bytes[i];
                    if c == b'\\' && i + 1 < end && (bytes[i + 1] == b || bytes[i + 1] == b'\\') {
                        s.push(bytes[i + 1] as char);
                        i += 2;
                        continue;
                    }
                    if c == b {
                        closed = true;
                        i += 1;
                        break;
                    }
                    let ch = src[i..].chars().next().unwrap_or('\u{FFFD}');
                    s.push(ch);
                    i += ch.len_utf8();
                }
                if !closed {
                    return Err(TemplateError::new(
                        at,
                        "unterminated string".to_string(),
                        Some(excerpt(src, at)),
                    ));
                }
                out.push((Tok::Str(s), at));
            }
            b'-' | b'0'..=b'9'
                if b != b'-' || bytes.get(i + 1).is_some_and(|c| c.is_ascii_digit()) =>
            {
                let mut j = i + 1;
                while j < end && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                    j += 1;
                }
                if j < end && is_word_byte(bytes[j]) {
                    // `42_foo`: a word that starts with a digit.
                    while j < end && is_word_byte(bytes[j]) {
                        j += 1;
                    }
                    return Err(TemplateError::new(
                        at,
                        format!("`{}` starts with a digit; a value path must start with a letter or `_`", &src[at..j]),
                        None,
                    ));
                }
                out.push((Tok::Num(src[i..j].to_string()), at));
                i = j;
            }
            _ => {
                let mut j = i;
                while j < end {
                    let c = bytes[j];
                    if c == b'[' {
                        // A literal segment runs to the closing bracket.
                        match bytes[j..end].iter().position(|&x| x == b']') {
                            Some(k) => j += k + 1,
                            None => {
                                return Err(TemplateError::new(
                                    j,
                                    "unterminated `[` in a path".to_string(),
                                    Some(excerpt(src, at)),
                                ))
                            }
                        }
                        continue;
                    }
                    if !is_word_byte(c) {
                        break;
                    }
                    j += 1;
                }
                if j == i {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(TemplateError::new(
                        at,
                        format!("unexpected `{ch}` in a placeholder"),
                        Some(excerpt(src, at)),
                    ));
                }
                out.push((Tok::Word(src[i..j].to_string()), at));
                i = j;
            }
        }
    }
    Ok(out)
}

fn is_word_byte(c: u8) -> bool {
    !(c.is_ascii_whitespace()
        || matches!(c, b'(' | b')' | b'=' | b'"' | b'\'' | b'{' | b'}' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(src: &str) -> Vec<(TagKind, String)> {
        let mut errs = Vec::new();
        scan(src, &mut errs)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Tag(t) => Some((t.kind, src[t.body_start..t.body_end].to_string())),
                Piece::Text { .. } => None,
            })
            .collect()
    }

    #[test]
    fn kinds() {
        let t = tags("a {{x}} {{#if y}} {{else}} {{/if}} {{! c }} {{{z}}} {{else if q}}");
        let kinds: Vec<TagKind> = t.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                TagKind::Expr,
                TagKind::Open,
                TagKind::Else,
                TagKind::Close,
                TagKind::Comment,
                TagKind::Expr,
                TagKind::Else
            ]
        );
        assert_eq!(t[1].1, "if y");
        assert_eq!(t[6].1.trim(), "if q");
    }

    #[test]
    fn braces_inside_strings() {
        let t = tags(r#"{{ env "A" "x}}y" }}"#);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].1.trim(), r#"env "A" "x}}y""#);
    }

    #[test]
    fn unterminated() {
        let mut errs = Vec::new();
        let p = scan("a: {{ b.c\nd: 1\n", &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].offset, 3);
        assert!(matches!(p.last(), Some(Piece::Text { .. })));
    }

    #[test]
    fn tokens() {
        let src = r#"base64 (env 'X' default="d") a.b.[0] 12"#;
        let toks: Vec<Tok> = tokenize(src, 0, src.len())
            .map(|v| v.into_iter().map(|(t, _)| t).collect())
            .unwrap_or_default();
        assert_eq!(
            toks,
            vec![
                Tok::Word("base64".into()),
                Tok::LParen,
                Tok::Word("env".into()),
                Tok::Str("X".into()),
                Tok::Word("default".into()),
                Tok::Eq,
                Tok::Str("d".into()),
                Tok::RParen,
                Tok::Word("a.b.[0]".into()),
                Tok::Num("12".into()),
            ]
        );
    }

    #[test]
    fn standalone_block_lines_vanish() {
        let src = "a: 1\n  {{#if x}}  \nb: 2\n{{/if}}\nc: 3\n";
        let mut errs = Vec::new();
        let text: String = scan(src, &mut errs)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Text { start, end } => Some(src[start..end].to_string()),
                Piece::Tag(_) => None,
            })
            .collect();
        assert_eq!(text, "a: 1\nb: 2\nc: 3\n");
    }
}
