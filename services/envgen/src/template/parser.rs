//! Builds the AST from the lexer's pieces.

use std::collections::VecDeque;

use serde_json::Value;

use super::lexer::{tokenize, Piece, Tag, TagKind, Tok};
use super::pos::pos_of;
use super::yamlctx::{classify, ScalarSpan, ScalarStyle, ValueCtx};
use super::TemplateError;

/// A built-in helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Helper {
    /// `env "NAME"`, `env "NAME" "default"`, `env "NAME" default="..."`.
    Env,
    /// `base64 "text"`.
    Base64,
    /// `file "path"`, `file "path" "binary"`.
    File,
}

impl Helper {
    fn from_name(name: &str) -> Option<Helper> {
        match name {
            "env" => Some(Helper::Env),
            "base64" => Some(Helper::Base64),
            "file" => Some(Helper::File),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Helper::Env => "env",
            Helper::Base64 => "base64",
            Helper::File => "file",
        }
    }
}

/// An expression inside `{{ }}` or `( )`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A value path: `a.b.0`. `segments` are the keys, `text` is as written.
    Path {
        segments: Vec<String>,
        text: String,
        at: usize,
    },
    /// A literal: string, number, `true`, `false`, `null`.
    Lit { value: Value, at: usize },
    /// A helper call (also a sub-expression).
    Call {
        helper: Helper,
        args: Vec<Expr>,
        hash: Vec<(String, Expr)>,
        at: usize,
    },
}

impl Expr {
    pub(crate) fn at(&self) -> usize {
        match self {
            Expr::Path { at, .. } | Expr::Lit { at, .. } | Expr::Call { at, .. } => *at,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    If,
    Unless,
}

impl BlockKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BlockKind::If => "if",
            BlockKind::Unless => "unless",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// Literal source text `src[start..end]`.
    Text { start: usize, end: usize },
    /// `{{ expr }}` at `src[start..end]`, with its YAML context. `id` numbers
    /// the expressions of a template in source order.
    Expr {
        expr: Expr,
        start: usize,
        end: usize,
        ctx: ValueCtx,
        id: usize,
    },
    /// A placeholder that did not parse; renders as nothing.
    Invalid { start: usize, end: usize },
    /// `{{#if}}` / `{{#unless}}`, with the `{{else}}` part in `inverse`.
    Block {
        kind: BlockKind,
        cond: Expr,
        body: Vec<Node>,
        inverse: Vec<Node>,
        start: usize,
        end: usize,
    },
    /// A whole one-line YAML scalar made of text and placeholders. For a
    /// single-quoted scalar `parts` excludes the quotes.
    Scalar {
        style: ScalarStyle,
        in_flow: bool,
        parts: Vec<Node>,
        start: usize,
        end: usize,
    },
}

/// Parse `src` into nodes. Every problem is pushed to `errors`; parsing goes on
/// so that all of them are reported at once.
pub(crate) fn parse(src: &str, errors: &mut Vec<TemplateError>) -> (Vec<Node>, usize) {
    let pieces = super::lexer::scan(src, errors);
    let (ctx, spans) = classify(src, &pieces);
    let grouped = group(src, pieces, &ctx, &spans);
    let mut nodes = build(src, grouped, errors);
    let mut count = 0;
    number(&mut nodes, &mut count);
    (nodes, count)
}

/// Give every expression its `id`, in source order.
fn number(nodes: &mut [Node], next: &mut usize) {
    for n in nodes {
        match n {
            Node::Expr { id, .. } => {
                *id = *next;
                *next += 1;
            }
            Node::Scalar { parts, .. } => number(parts, next),
            Node::Block { body, inverse, .. } => {
                number(body, next);
                number(inverse, next);
            }
            Node::Text { .. } | Node::Invalid { .. } => {}
        }
    }
}

/// A piece after grouping: scalars are gathered into one unit.
enum GPiece {
    Plain(Piece, ValueCtx),
    Scalar {
        span: ScalarSpan,
        inner: Vec<(Piece, ValueCtx)>,
    },
}

fn group(src: &str, pieces: Vec<Piece>, ctx: &[ValueCtx], spans: &[ScalarSpan]) -> Vec<GPiece> {
    let _ = src;
    let mut out = Vec::with_capacity(pieces.len());
    let mut k = 0usize;
    let mut inner: Option<Vec<(Piece, ValueCtx)>> = None;
    for (pi, piece) in pieces.into_iter().enumerate() {
        let c = ctx.get(pi).copied().unwrap_or(ValueCtx::Plain);
        let mut queue = VecDeque::from([piece]);
        while let Some(p) = queue.pop_front() {
            let Some(sp) = spans.get(k).copied() else {
                out.push(GPiece::Plain(p, c));
                continue;
            };
            match (&p, inner.as_mut()) {
                (Piece::Text { start, end }, Some(acc)) => {
                    let (s, e) = (*start, *end);
                    if e < sp.end {
                        acc.push((p, c));
                    } else {
                        acc.push((
                            Piece::Text {
                                start: s,
                                end: sp.end,
                            },
                            c,
                        ));
                        if let Some(acc) = inner.take() {
                            out.push(GPiece::Scalar {
                                span: sp,
                                inner: acc,
                            });
                        }
                        k += 1;
                        if e > sp.end {
                            queue.push_front(Piece::Text {
                                start: sp.end,
                                end: e,
                            });
                        }
                    }
                }
                (Piece::Tag(t), Some(acc)) => {
                    let te = t.end;
                    acc.push((p, c));
                    if te >= sp.end {
                        if let Some(acc) = inner.take() {
                            out.push(GPiece::Scalar {
                                span: sp,
                                inner: acc,
                            });
                        }
                        k += 1;
                    }
                }
                (Piece::Text { start, end }, None) => {
                    let (s, e) = (*start, *end);
                    if e <= sp.start {
                        out.push(GPiece::Plain(p, c));
                    } else if s < sp.start {
                        out.push(GPiece::Plain(
                            Piece::Text {
                                start: s,
                                end: sp.start,
                            },
                            c,
                        ));
                        queue.push_front(Piece::Text {
                            start: sp.start,
                            end: e,
                        });
                    } else {
                        inner = Some(Vec::new());
                        queue.push_front(p);
                    }
                }
                (Piece::Tag(t), None) => {
                    if t.start >= sp.start {
                        inner = Some(Vec::new());
                        queue.push_front(p);
                    } else {
                        out.push(GPiece::Plain(p, c));
                    }
                }
            }
        }
    }
    if let Some(acc) = inner {
        // Cannot happen for well-formed spans; keep the pieces rather than lose them.
        out.extend(acc.into_iter().map(|(p, c)| GPiece::Plain(p, c)));
    }
    out
}

struct Frame {
    kind: BlockKind,
    cond: Expr,
    start: usize,
    end: usize,
    body: Vec<Node>,
    inverse: Vec<Node>,
    in_else: bool,
    /// Opened by `{{else if ...}}`: closed together with its parent.
    chained: bool,
}

fn target<'a>(root: &'a mut Vec<Node>, stack: &'a mut [Frame]) -> &'a mut Vec<Node> {
    match stack.last_mut() {
        Some(f) if f.in_else => &mut f.inverse,
        Some(f) => &mut f.body,
        None => root,
    }
}

fn close_frame(root: &mut Vec<Node>, stack: &mut Vec<Frame>) {
    if let Some(f) = stack.pop() {
        let node = Node::Block {
            kind: f.kind,
            cond: f.cond,
            body: f.body,
            inverse: f.inverse,
            start: f.start,
            end: f.end,
        };
        target(root, stack).push(node);
    }
}

fn build(src: &str, pieces: Vec<GPiece>, errors: &mut Vec<TemplateError>) -> Vec<Node> {
    let mut root = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for gp in pieces {
        match gp {
            GPiece::Scalar { span, inner } => {
                let mut parts = Vec::with_capacity(inner.len());
                for (p, c) in inner {
                    match p {
                        Piece::Text { start, end } => parts.push(Node::Text { start, end }),
                        Piece::Tag(t) => {
                            if let Some(n) = expr_node(src, &t, c, errors) {
                                parts.push(n);
                            }
                        }
                    }
                }
                if span.style == ScalarStyle::Single {
                    // Drop the quotes: the first and last literal bytes.
                    if let Some(Node::Text { start, .. }) = parts.first_mut() {
                        *start += 1;
                    }
                    if let Some(Node::Text { end, .. }) = parts.last_mut() {
                        *end -= 1;
                    }
                }
                target(&mut root, &mut stack).push(Node::Scalar {
                    style: span.style,
                    in_flow: span.in_flow,
                    parts,
                    start: span.start,
                    end: span.end,
                });
            }
            GPiece::Plain(Piece::Text { start, end }, _) => {
                if end > start {
                    target(&mut root, &mut stack).push(Node::Text { start, end });
                }
            }
            GPiece::Plain(Piece::Tag(t), c) => match t.kind {
                TagKind::Comment => {}
                TagKind::Expr => {
                    if let Some(n) = expr_node(src, &t, c, errors) {
                        target(&mut root, &mut stack).push(n);
                    }
                }
                TagKind::Open => match open_block(src, &t) {
                    Ok((kind, cond)) => stack.push(Frame {
                        kind,
                        cond,
                        start: t.start,
                        end: t.end,
                        body: Vec::new(),
                        inverse: Vec::new(),
                        in_else: false,
                        chained: false,
                    }),
                    Err(e) => {
                        errors.push(e);
                        // Keep a frame so that the matching close tag does not also fail.
                        stack.push(Frame {
                            kind: BlockKind::If,
                            cond: Expr::Lit {
                                value: Value::Bool(true),
                                at: t.start,
                            },
                            start: t.start,
                            end: t.end,
                            body: Vec::new(),
                            inverse: Vec::new(),
                            in_else: false,
                            chained: false,
                        });
                    }
                },
                TagKind::Else => {
                    let rest = src[t.body_start..t.body_end].trim();
                    let Some(top) = stack.last_mut() else {
                        errors.push(TemplateError::new(
                            t.start,
                            "`{{else}}` outside of an `{{#if}}` or `{{#unless}}` block".to_string(),
                            Some(src[t.start..t.end].to_string()),
                        ));
                        continue;
                    };
                    if top.in_else {
                        errors.push(TemplateError::new(
                            t.start,
                            format!(
                                "second `{{{{else}}}}` in the `{{{{#{}}}}}` block",
                                top.kind.name()
                            ),
                            Some(src[t.start..t.end].to_string()),
                        ));
                        continue;
                    }
                    top.in_else = true;
                    if !rest.is_empty() {
                        // `{{else if cond}}`: a nested block in the inverse part.
                        match open_block(src, &t) {
                            Ok((kind, cond)) => stack.push(Frame {
                                kind,
                                cond,
                                start: t.start,
                                end: t.end,
                                body: Vec::new(),
                                inverse: Vec::new(),
                                in_else: false,
                                chained: true,
                            }),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                TagKind::Close => {
                    let name = src[t.body_start..t.body_end].trim();
                    let tag_text = src[t.start..t.end].to_string();
                    while stack.last().is_some_and(|f| f.chained) {
                        close_frame(&mut root, &mut stack);
                    }
                    match stack.last() {
                        None => errors.push(TemplateError::new(
                            t.start,
                            format!("`{tag_text}` has no matching opening `{{{{#{name}}}}}`"),
                            Some(tag_text),
                        )),
                        Some(f) if f.kind.name() != name => {
                            let opened = pos_of(src, f.start);
                            errors.push(TemplateError::new(
                                t.start,
                                format!(
                                    "`{tag_text}` does not match `{{{{#{}}}}}` opened at line {}, column {}",
                                    f.kind.name(),
                                    opened.line,
                                    opened.column
                                ),
                                Some(tag_text),
                            ));
                            close_frame(&mut root, &mut stack);
                        }
                        Some(_) => close_frame(&mut root, &mut stack),
                    }
                }
            },
        }
    }
    while let Some(f) = stack.last() {
        if !f.chained {
            errors.push(TemplateError::new(
                f.start,
                format!(
                    "`{{{{#{}}}}}` is never closed: add `{{{{/{}}}}}`",
                    f.kind.name(),
                    f.kind.name()
                ),
                Some(src[f.start..f.end].to_string()),
            ));
        }
        close_frame(&mut root, &mut stack);
    }
    root
}

fn expr_node(src: &str, t: &Tag, ctx: ValueCtx, errors: &mut Vec<TemplateError>) -> Option<Node> {
    let placeholder = src[t.start..t.end].to_string();
    let toks = match tokenize(src, t.body_start, t.body_end) {
        Ok(toks) => toks,
        Err(e) => {
            errors.push(e.with_placeholder(placeholder));
            return Some(Node::Invalid {
                start: t.start,
                end: t.end,
            });
        }
    };
    if toks.is_empty() {
        errors.push(TemplateError::new(
            t.start,
            "empty placeholder `{{}}`".to_string(),
            Some(placeholder),
        ));
        return Some(Node::Invalid {
            start: t.start,
            end: t.end,
        });
    }
    let mut p = ExprParser {
        src,
        toks: &toks,
        i: 0,
        end: t.body_end,
    };
    match p.top() {
        Ok(expr) => Some(Node::Expr {
            expr,
            start: t.start,
            end: t.end,
            ctx,
            id: 0,
        }),
        Err(e) => {
            errors.push(e.with_placeholder(placeholder));
            Some(Node::Invalid {
                start: t.start,
                end: t.end,
            })
        }
    }
}

fn open_block(src: &str, t: &Tag) -> Result<(BlockKind, Expr), TemplateError> {
    let placeholder = src[t.start..t.end].to_string();
    let toks = tokenize(src, t.body_start, t.body_end)
        .map_err(|e| e.with_placeholder(placeholder.clone()))?;
    let err = |at: usize, msg: String| TemplateError::new(at, msg, Some(placeholder.clone()));
    let (kind, at) = match toks.first() {
        Some((Tok::Word(w), at)) if w == "if" => (BlockKind::If, *at),
        Some((Tok::Word(w), at)) if w == "unless" => (BlockKind::Unless, *at),
        Some((Tok::Word(w), at)) => {
            return Err(err(
                *at,
                format!("unknown block helper `#{w}` (supported: `#if`, `#unless`)"),
            ));
        }
        _ => {
            return Err(err(
                t.start,
                "a block needs a helper: `{{#if x}}` or `{{#unless x}}`".to_string(),
            ))
        }
    };
    let mut p = ExprParser {
        src,
        toks: &toks,
        i: 1,
        end: t.body_end,
    };
    if p.i >= toks.len() {
        return Err(err(
            at,
            format!(
                "`#{}` needs a condition, e.g. `{{{{#{} feature.enabled}}}}`",
                kind.name(),
                kind.name()
            ),
        ));
    }
    let cond = p.arg()?;
    if let Some((_, at2)) = toks.get(p.i) {
        return Err(err(*at2, format!("`#{}` takes one condition", kind.name())));
    }
    Ok((kind, cond))
}

struct ExprParser<'a> {
    src: &'a str,
    toks: &'a [(Tok, usize)],
    i: usize,
    end: usize,
}

impl ExprParser<'_> {
    fn err(&self, at: usize, msg: String) -> TemplateError {
        TemplateError::new(at, msg, None)
    }

    /// The whole content of a `{{ }}`.
    fn top(&mut self) -> Result<Expr, TemplateError> {
        let e = match self.toks.first() {
            Some((Tok::Word(w), at)) => {
                if is_reserved(w) {
                    return Err(self.err(
                        *at,
                        format!("`{w}` is a reserved word and cannot start a placeholder"),
                    ));
                }
                self.call_or_path()?
            }
            Some((Tok::LParen, _)) => self.arg()?,
            Some((Tok::Str(_) | Tok::Num(_), _)) => self.arg()?,
            Some((_, at)) => {
                return Err(self.err(*at, "unexpected token at the start of a placeholder".into()))
            }
            None => return Err(self.err(self.end, "empty placeholder".into())),
        };
        if let Some((_, at)) = self.toks.get(self.i) {
            return Err(self.err(*at, format!("unexpected `{}`", self.rest_text(*at))));
        }
        Ok(e)
    }

    fn rest_text(&self, at: usize) -> String {
        let s = self.src[at..self.end].trim();
        s.chars().take(30).collect()
    }

    /// `helper args...` or a lone path; stops at `)` or the end.
    fn call_or_path(&mut self) -> Result<Expr, TemplateError> {
        let Some((Tok::Word(w), at)) = self.toks.get(self.i).cloned() else {
            let at = self.toks.get(self.i).map_or(self.end, |t| t.1);
            return Err(self.err(at, "expected a helper or a value path".into()));
        };
        self.i += 1;
        let at_end = matches!(self.toks.get(self.i), None | Some((Tok::RParen, _)));
        let Some(helper) = Helper::from_name(&w) else {
            if at_end {
                return path_expr(&w, at);
            }
            return Err(self.err(
                at,
                format!("unknown helper `{w}` (supported: env, base64, file)"),
            ));
        };
        let mut args = Vec::new();
        let mut hash = Vec::new();
        while let Some((tok, tat)) = self.toks.get(self.i).cloned() {
            if tok == Tok::RParen {
                break;
            }
            if let (Tok::Word(k), Some((Tok::Eq, _))) = (&tok, self.toks.get(self.i + 1)) {
                self.i += 2;
                if self.i >= self.toks.len() {
                    return Err(self.err(tat, format!("`{k}=` needs a value")));
                }
                let v = self.arg()?;
                hash.push((k.clone(), v));
                continue;
            }
            if !hash.is_empty() {
                return Err(self.err(
                    tat,
                    "positional arguments must come before `name=value` ones".into(),
                ));
            }
            args.push(self.arg()?);
        }
        check_arity(helper, &args, &hash, at)?;
        Ok(Expr::Call {
            helper,
            args,
            hash,
            at,
        })
    }

    /// One argument: literal, path, or `( sub-expression )`.
    fn arg(&mut self) -> Result<Expr, TemplateError> {
        let Some((tok, at)) = self.toks.get(self.i).cloned() else {
            return Err(self.err(self.end, "expected an argument".into()));
        };
        self.i += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Lit {
                value: Value::String(s),
                at,
            }),
            Tok::Num(n) => {
                let value = n
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| n.parse::<f64>().map(Value::from))
                    .map_err(|_| self.err(at, format!("`{n}` is not a number")))?;
                Ok(Expr::Lit { value, at })
            }
            Tok::Word(w) => match w.as_str() {
                "true" => Ok(Expr::Lit {
                    value: Value::Bool(true),
                    at,
                }),
                "false" => Ok(Expr::Lit {
                    value: Value::Bool(false),
                    at,
                }),
                "null" | "undefined" => Ok(Expr::Lit {
                    value: Value::Null,
                    at,
                }),
                _ => {
                    if Helper::from_name(&w).is_some() {
                        return Err(self.err(
                            at,
                            format!("helper `{w}` used as an argument: wrap it in parentheses, e.g. `({w} ...)`"),
                        ));
                    }
                    path_expr(&w, at)
                }
            },
            Tok::LParen => {
                let inner = self.call_or_path()?;
                match self.toks.get(self.i) {
                    Some((Tok::RParen, _)) => {
                        self.i += 1;
                        match inner {
                            Expr::Path { text, at, .. } => {
                                Err(self.err(at, format!("unknown helper `{text}` in a sub-expression (supported: env, base64, file)")))
                            }
                            other => Ok(other),
                        }
                    }
                    _ => Err(self.err(at, "unclosed `(`: add `)`".into())),
                }
            }
            Tok::RParen => Err(self.err(at, "unexpected `)`".into())),
            Tok::Eq => Err(self.err(at, "unexpected `=`".into())),
        }
    }
}

fn is_reserved(w: &str) -> bool {
    let first = w.split(['.', '/']).next().unwrap_or(w);
    matches!(first, "null" | "true" | "false" | "undefined")
}

fn path_expr(w: &str, at: usize) -> Result<Expr, TemplateError> {
    let mut segments = Vec::new();
    let bytes = w.as_bytes();
    let mut i = 0;
    let mut cur = String::new();
    let mut literal = false;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                let close = w[i..].find(']').map(|k| i + k).unwrap_or(w.len());
                cur.push_str(&w[i + 1..close]);
                literal = true;
                i = close + 1;
            }
            b'.' | b'/' => {
                if cur.is_empty() && !literal {
                    return Err(TemplateError::new(
                        at,
                        format!("`{w}` has an empty path segment"),
                        None,
                    ));
                }
                segments.push(std::mem::take(&mut cur));
                literal = false;
                i += 1;
            }
            _ => {
                let ch = w[i..].chars().next().unwrap_or('?');
                cur.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if cur.is_empty() && !literal {
        return Err(TemplateError::new(
            at,
            format!("`{w}` has an empty path segment"),
            None,
        ));
    }
    segments.push(cur);
    if segments
        .first()
        .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Err(TemplateError::new(
            at,
            format!("`{w}` starts with a digit; a value path must start with a letter or `_`"),
            None,
        ));
    }
    Ok(Expr::Path {
        segments,
        text: w.to_string(),
        at,
    })
}

fn check_arity(
    helper: Helper,
    args: &[Expr],
    hash: &[(String, Expr)],
    at: usize,
) -> Result<(), TemplateError> {
    let bad = |msg: &str| Err(TemplateError::new(at, msg.to_string(), None));
    for (k, _) in hash {
        if !(helper == Helper::Env && k == "default") {
            return Err(TemplateError::new(
                at,
                format!("helper `{}` has no `{k}=` option", helper.name()),
                None,
            ));
        }
    }
    match helper {
        Helper::Env => {
            let n = args.len() + hash.len();
            if args.is_empty() || n > 2 {
                return bad("`env` takes a variable name and an optional default: `env \"NAME\"` or `env \"NAME\" \"default\"`");
            }
        }
        Helper::Base64 => {
            if args.len() != 1 {
                return bad("`base64` takes exactly one argument: `base64 \"text\"`");
            }
        }
        Helper::File => {
            if args.is_empty() || args.len() > 2 {
                return bad("`file` takes a path and an optional \"binary\": `file \"x.pem\"` or `file \"x.xsd\" \"binary\"`");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Expr {
        let mut errs = Vec::new();
        let (nodes, _) = parse(src, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        for n in nodes {
            match n {
                Node::Expr { expr, .. } => return expr,
                Node::Scalar { parts, .. } => {
                    for p in parts {
                        if let Node::Expr { expr, .. } = p {
                            return expr;
                        }
                    }
                }
                _ => {}
            }
        }
        Expr::Lit {
            value: Value::Null,
            at: 0,
        }
    }

    fn errors(src: &str) -> Vec<TemplateError> {
        let mut errs = Vec::new();
        parse(src, &mut errs);
        errs
    }

    #[test]
    fn paths_and_calls() {
        assert!(
            matches!(one("{{ a.b.0 }}"), Expr::Path { ref segments, .. } if segments == &["a", "b", "0"])
        );
        assert!(
            matches!(one("{{a.[b c].x}}"), Expr::Path { ref segments, .. } if segments == &["a", "b c", "x"])
        );
        let e = one(r#"{{ base64 (env "X" (base64 'y')) }}"#);
        let Expr::Call {
            helper: Helper::Base64,
            args,
            ..
        } = e
        else {
            panic!("not a call")
        };
        assert!(
            matches!(&args[0], Expr::Call { helper: Helper::Env, args, .. } if args.len() == 2)
        );
    }

    #[test]
    fn parse_errors() {
        assert!(errors("{{ nope \"x\" }}")[0]
            .message
            .contains("unknown helper `nope`"));
        assert!(errors("{{/if}}")[0].message.contains("no matching opening"));
        assert!(errors("{{#if a}}x{{/unless}}")[0]
            .message
            .contains("does not match"));
        assert!(errors("{{#if a}}x")[0].message.contains("never closed"));
        assert!(errors("{{#each a}}x{{/each}}")[0]
            .message
            .contains("unknown block helper"));
        assert!(errors("{{ true }}")[0].message.contains("reserved"));
        assert!(errors("{{ 42_foo.bar }}")[0]
            .message
            .contains("starts with a digit"));
        assert!(errors("{{ env }}")[0].message.contains("`env` takes"));
        assert!(errors("{{ base64 (env \"X\" }}")[0]
            .message
            .contains("unclosed `(`"));
        assert!(errors("{{else}}")[0].message.contains("outside"));
    }
}
