//! Where in the YAML does each placeholder sit?
//!
//! Placeholders are expanded in the text before the YAML is parsed (that is
//! what lets `{{#if}}` add or drop whole lines, and `password: {{ db.pw }}`
//! stay unquoted). A value that is pasted in must stay one YAML scalar though:
//! a message body with a `'` inside a `'...'` scalar, or a multi-line file
//! pulled into a quoted scalar, would break the document. So the template is
//! scanned once, with a small YAML-aware state machine, to learn for every
//! `{{ expr }}` whether it sits in a plain, single-quoted, double-quoted or
//! block scalar, and which scalars consist only of text and placeholders on one
//! line ("groupable": the renderer can then rewrite the whole scalar in a
//! quoting style that holds the value exactly).

use super::lexer::{Piece, TagKind};

/// The YAML context of one placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueCtx {
    Plain,
    Single,
    Double,
    /// Inside a `|` or `>` block scalar whose content is indented by `indent` spaces.
    Block {
        indent: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarStyle {
    Plain,
    Single,
}

/// A scalar that holds placeholders and can be re-quoted as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScalarSpan {
    pub style: ScalarStyle,
    /// Byte range in the template source, quotes included.
    pub start: usize,
    pub end: usize,
    /// Inside a flow collection (`[...]`, `{...}`), where `,[]{}` end a plain scalar.
    pub in_flow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
}

struct Open {
    style: Style,
    start: usize,
    /// End (exclusive) of the last non-blank content seen, in source bytes.
    content_end: usize,
    has_placeholder: bool,
    has_other_tag: bool,
    multiline: bool,
    in_flow: bool,
}

enum State {
    Normal,
    Quoted,
    Block {
        threshold: usize,
        content_indent: Option<usize>,
    },
}

/// The virtual text the YAML parser will see: the template's text pieces in
/// order, with each tag standing in as one marker byte (0).
struct Stream {
    bytes: Vec<u8>,
    /// Source offset of each byte (for a marker: the tag's start).
    offs: Vec<usize>,
    /// For each byte: the piece index and the tag's end offset if it is a
    /// marker. By position, so that markers skipped with a comment (or a NUL
    /// in the text) cannot shift the tags that follow.
    tags: Vec<Option<(usize, usize)>>,
}

fn stream(src: &str, pieces: &[Piece]) -> Stream {
    let mut s = Stream {
        bytes: Vec::with_capacity(src.len()),
        offs: Vec::with_capacity(src.len()),
        tags: Vec::new(),
    };
    for (pi, p) in pieces.iter().enumerate() {
        match p {
            Piece::Text { start, end } => {
                s.bytes.extend_from_slice(&src.as_bytes()[*start..*end]);
                s.offs.extend(*start..*end);
                s.tags.resize(s.bytes.len(), None);
            }
            Piece::Tag(t) => {
                s.bytes.push(0);
                s.offs.push(t.start);
                s.tags.push(Some((pi, t.end)));
            }
        }
    }
    s
}

/// Classify every expression tag (`ctx[piece index]`) and find the groupable scalars.
pub(crate) fn classify(src: &str, pieces: &[Piece]) -> (Vec<ValueCtx>, Vec<ScalarSpan>) {
    let st = stream(src, pieces);
    let b = &st.bytes;
    let n = b.len();
    let mut ctx = vec![ValueCtx::Plain; pieces.len()];
    let mut spans = Vec::new();
    let mut state = State::Normal;
    let mut open: Option<Open> = None;
    let mut line_start = true;
    let mut indent = 0usize;
    let mut can_start = true;
    let mut flow = 0usize;
    let at = |i: usize| b.get(i).copied();
    let is_blank = |c: Option<u8>| matches!(c, None | Some(b' ' | b'\t' | b'\n' | b'\r'));

    // Record the scalar that just ended, if it holds placeholders.
    let close = |open: &mut Option<Open>, spans: &mut Vec<ScalarSpan>, end: Option<usize>| {
        if let Some(o) = open.take() {
            let end = end.unwrap_or(o.content_end);
            let style = match o.style {
                Style::Plain => Some(ScalarStyle::Plain),
                Style::Single => Some(ScalarStyle::Single),
                Style::Double => None,
            };
            if let Some(style) = style {
                if o.has_placeholder && !o.has_other_tag && !o.multiline {
                    spans.push(ScalarSpan {
                        style,
                        start: o.start,
                        end,
                        in_flow: o.in_flow,
                    });
                }
            }
        }
    };

    let mut i = 0usize;
    while i < n {
        let c = b[i];
        if let Some((pi, tag_end)) = st.tags[i] {
            // A tag.
            let is_expr = matches!(&pieces[pi], Piece::Tag(t) if t.kind == TagKind::Expr);
            match &mut state {
                State::Block { content_indent, .. } => {
                    if is_expr {
                        ctx[pi] = ValueCtx::Block {
                            indent: content_indent.unwrap_or(indent),
                        };
                    }
                }
                State::Quoted => {
                    if let Some(o) = open.as_mut() {
                        if is_expr {
                            ctx[pi] = if o.style == Style::Single {
                                ValueCtx::Single
                            } else {
                                ValueCtx::Double
                            };
                            o.has_placeholder = true;
                        } else {
                            o.has_other_tag = true;
                        }
                    }
                }
                State::Normal => {
                    if line_start && is_expr {
                        // A placeholder at the very start of a line: indentation is zero.
                        // (Block tags are transparent and leave the line start alone.)
                        line_start = false;
                        indent = 0;
                        can_start = true;
                    }
                    if is_expr {
                        ctx[pi] = ValueCtx::Plain;
                        if open.is_none() && can_start {
                            open = Some(Open {
                                style: Style::Plain,
                                start: st.offs[i],
                                content_end: tag_end,
                                has_placeholder: false,
                                has_other_tag: false,
                                multiline: false,
                                in_flow: flow > 0,
                            });
                            can_start = false;
                        }
                        if let Some(o) = open.as_mut() {
                            o.has_placeholder = true;
                            o.content_end = tag_end;
                        }
                    } else if let Some(o) = open.as_mut() {
                        o.has_other_tag = true;
                    }
                }
            }
            i += 1;
            continue;
        }
        match &mut state {
            State::Block {
                threshold,
                content_indent,
            } => {
                if line_start {
                    let mut j = i;
                    while j < n && b[j] == b' ' {
                        j += 1;
                    }
                    let blank = j >= n || b[j] == b'\n' || b[j] == b'\r';
                    if !blank && j - i <= *threshold {
                        state = State::Normal;
                        continue; // re-read this line start in Normal
                    }
                    if !blank && content_indent.is_none() {
                        *content_indent = Some(j - i);
                    }
                    indent = j - i;
                    line_start = false;
                    i = j;
                    continue;
                }
                if c == b'\n' {
                    line_start = true;
                }
                i += 1;
            }
            State::Quoted => {
                let Some(o) = open.as_mut() else {
                    state = State::Normal;
                    continue;
                };
                match (o.style, c) {
                    (Style::Single, b'\'') if at(i + 1) == Some(b'\'') => i += 2,
                    (Style::Double, b'\\') => i += 2,
                    (Style::Single, b'\'') | (Style::Double, b'"') => {
                        let end = st.offs[i] + 1;
                        close(&mut open, &mut spans, Some(end));
                        state = State::Normal;
                        can_start = false;
                        i += 1;
                    }
                    (_, b'\n') => {
                        o.multiline = true;
                        i += 1;
                    }
                    _ => i += 1,
                }
            }
            State::Normal => {
                if line_start {
                    let mut j = i;
                    while j < n && b[j] == b' ' {
                        j += 1;
                    }
                    indent = j - i;
                    line_start = false;
                    can_start = true;
                    i = j;
                    // Document markers and directives take the whole line.
                    let rest = &b[i..];
                    let marker = (rest.starts_with(b"---") || rest.starts_with(b"..."))
                        && is_blank(at(i + 3))
                        && indent == 0;
                    if marker || (indent == 0 && at(i) == Some(b'%')) {
                        while i < n && b[i] != b'\n' {
                            i += 1;
                        }
                    }
                    continue;
                }
                let prev_blank = i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n');
                match c {
                    b'\n' => {
                        close(&mut open, &mut spans, None);
                        line_start = true;
                        i += 1;
                    }
                    b'\r' | b' ' | b'\t' => i += 1,
                    b'#' if prev_blank => {
                        close(&mut open, &mut spans, None);
                        while i < n && b[i] != b'\n' {
                            i += 1;
                        }
                    }
                    b':' if is_blank(at(i + 1))
                        || (flow > 0
                            && matches!(at(i + 1), Some(b',' | b'[' | b']' | b'{' | b'}'))) =>
                    {
                        close(&mut open, &mut spans, None);
                        can_start = true;
                        i += 1;
                    }
                    b'-' | b'?' if open.is_none() && can_start && is_blank(at(i + 1)) => i += 1,
                    b'[' | b'{' if open.is_none() && can_start => {
                        flow += 1;
                        i += 1;
                    }
                    b']' | b'}' if flow > 0 => {
                        close(&mut open, &mut spans, None);
                        flow -= 1;
                        can_start = false;
                        i += 1;
                    }
                    b',' if flow > 0 => {
                        close(&mut open, &mut spans, None);
                        can_start = true;
                        i += 1;
                    }
                    b'\'' | b'"' if open.is_none() && can_start => {
                        open = Some(Open {
                            style: if c == b'\'' {
                                Style::Single
                            } else {
                                Style::Double
                            },
                            start: st.offs[i],
                            content_end: st.offs[i] + 1,
                            has_placeholder: false,
                            has_other_tag: false,
                            multiline: false,
                            in_flow: flow > 0,
                        });
                        state = State::Quoted;
                        i += 1;
                    }
                    b'|' | b'>' if open.is_none() && can_start && flow == 0 => {
                        while i < n && b[i] != b'\n' {
                            i += 1;
                        }
                        state = State::Block {
                            threshold: indent,
                            content_indent: None,
                        };
                    }
                    b'&' | b'!' if open.is_none() && can_start => {
                        while i < n && !matches!(b[i], b' ' | b'\t' | b'\n') {
                            i += 1;
                        }
                    }
                    _ => {
                        if open.is_none() && can_start {
                            open = Some(Open {
                                style: Style::Plain,
                                start: st.offs[i],
                                content_end: st.offs[i] + 1,
                                has_placeholder: false,
                                has_other_tag: false,
                                multiline: false,
                                in_flow: flow > 0,
                            });
                            can_start = false;
                        } else if let Some(o) = open.as_mut() {
                            o.content_end = st.offs[i] + 1;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
    // A quote still open at the end never closed: not a scalar to re-quote
    // (its end would be made up).
    if matches!(state, State::Quoted) {
        open = None;
    }
    close(&mut open, &mut spans, None);
    (ctx, spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::lexer::scan;

    fn run(src: &str) -> (Vec<ValueCtx>, Vec<(ScalarStyle, String)>) {
        let mut errs = Vec::new();
        let pieces = scan(src, &mut errs);
        let (ctx, spans) = classify(src, &pieces);
        let exprs = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Piece::Tag(t) if t.kind == TagKind::Expr))
            .map(|(i, _)| ctx[i])
            .collect();
        (
            exprs,
            spans
                .iter()
                .map(|s| (s.style, src[s.start..s.end].to_string()))
                .collect(),
        )
    }

    #[test]
    fn contexts() {
        let src = "a: '{{x}}'\nb: \"u{{y}}v\"\nc: {{ z }}\nd: |\n  line {{w}}\n  more\ne: jdbc://{{h}}:1 # c\n";
        let (ctx, spans) = run(src);
        assert_eq!(
            ctx,
            vec![
                ValueCtx::Single,
                ValueCtx::Double,
                ValueCtx::Plain,
                ValueCtx::Block { indent: 2 },
                ValueCtx::Plain
            ]
        );
        assert_eq!(
            spans,
            vec![
                (ScalarStyle::Single, "'{{x}}'".to_string()),
                (ScalarStyle::Plain, "{{ z }}".to_string()),
                (ScalarStyle::Plain, "jdbc://{{h}}:1".to_string()),
            ]
        );
    }

    #[test]
    fn apostrophes_in_plain_text_do_not_open_quotes() {
        let src = "a: it's {{x}}\nb: '{{y}}'\n";
        let (ctx, spans) = run(src);
        assert_eq!(ctx, vec![ValueCtx::Plain, ValueCtx::Single]);
        assert_eq!(spans.len(), 2);
    }

    #[test]
    fn block_helpers_and_lists() {
        let src = "fields:\n{{#if a}}\n  x: '{{b}}'\n{{/if}}\n  l:\n  - {{c}}\n  - [ {{d}}, e ]\n";
        let (ctx, spans) = run(src);
        assert_eq!(
            ctx,
            vec![ValueCtx::Single, ValueCtx::Plain, ValueCtx::Plain]
        );
        let texts: Vec<&str> = spans.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(texts, vec!["'{{b}}'", "{{c}}", "{{d}}"]);
    }
}
