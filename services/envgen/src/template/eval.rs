//! Evaluation of expressions and rendering of templates.

use base64::Engine as _;
use serde_json::Value;

use super::parser::{BlockKind, Expr, Helper, Node};
use super::yamlctx::{ScalarStyle, ValueCtx};
use super::{Context, TemplateError};

/// What the renderer wrote, and where it came from in the template source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Start of the segment in the output.
    pub out: usize,
    /// Where it came from in the source.
    pub src: usize,
    /// Literal text maps byte for byte; a value maps to its placeholder's start.
    pub literal: bool,
    /// The value could not be computed (its output is a stand-in).
    pub poisoned: bool,
}

/// Rendering state.
pub(crate) struct Out<'s> {
    pub src: &'s str,
    pub text: String,
    pub segs: Vec<Segment>,
    pub errors: Vec<TemplateError>,
    pub secrets: Vec<String>,
    /// The text of each expression (by id); `None` where it failed.
    pub values: Vec<Option<String>>,
    /// Probe mode: expressions are not evaluated but written as markers
    /// (see [`marker`]), and scalars holding them are double-quoted.
    pub probe: bool,
}

/// Opens a marker in a probe rendering.
pub(crate) const MARK_OPEN: char = '\u{E000}';
/// Closes a marker.
pub(crate) const MARK_CLOSE: char = '\u{E001}';

/// The stand-in for expression `id` in a probe rendering.
pub(crate) fn marker(id: usize) -> String {
    format!("{MARK_OPEN}{id}{MARK_CLOSE}")
}

/// Replace the markers in `s` by the expressions' texts. Returns `None` if a
/// marked expression has no value (it failed to evaluate).
pub(crate) fn substitute(s: &str, values: &[Option<String>]) -> Option<String> {
    if !s.contains(MARK_OPEN) {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while let Some(i) = rest.find(MARK_OPEN) {
        out.push_str(&rest[..i]);
        let after = &rest[i + MARK_OPEN.len_utf8()..];
        let j = after.find(MARK_CLOSE)?;
        let id: usize = after[..j].parse().ok()?;
        out.push_str(values.get(id)?.as_deref()?);
        rest = &after[j + MARK_CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    Some(out)
}

impl Out<'_> {
    fn record(&mut self, id: usize, v: &str) {
        if let Some(slot) = self.values.get_mut(id) {
            *slot = Some(v.to_string());
        }
    }
}

impl Out<'_> {
    fn literal(&mut self, start: usize, end: usize) {
        if end > start {
            self.segs.push(Segment {
                out: self.text.len(),
                src: start,
                literal: true,
                poisoned: false,
            });
            self.text.push_str(&self.src[start..end]);
        }
    }

    fn value(&mut self, src: usize, text: &str, poisoned: bool) {
        self.segs.push(Segment {
            out: self.text.len(),
            src,
            literal: false,
            poisoned,
        });
        self.text.push_str(text);
    }
}

pub(crate) fn render_nodes(nodes: &[Node], ctx: &Context<'_>, out: &mut Out<'_>) {
    for node in nodes {
        match node {
            Node::Text { start, end } => out.literal(*start, *end),
            Node::Invalid { start, .. } => out.value(*start, "", true),
            Node::Expr { start, id, .. } if out.probe => out.value(*start, &marker(*id), false),
            Node::Expr {
                expr,
                start,
                end,
                ctx: vctx,
                id,
            } => match eval(expr, ctx, &mut out.secrets).and_then(|v| to_text(&v, expr)) {
                Ok(s) => {
                    out.record(*id, &s);
                    let s = escape_in(&s, *vctx);
                    out.value(*start, &s, false);
                }
                Err(e) => {
                    out.errors
                        .push(e.with_placeholder(out.src[*start..*end].to_string()));
                    out.value(*start, "", true);
                }
            },
            Node::Block {
                kind,
                cond,
                body,
                inverse,
                start,
                end,
            } => {
                match eval(cond, ctx, &mut out.secrets) {
                    Ok(v) => {
                        let t = truthy(&v);
                        let take = if *kind == BlockKind::If { t } else { !t };
                        render_nodes(if take { body } else { inverse }, ctx, out);
                    }
                    Err(e) => {
                        out.errors
                            .push(e.with_placeholder(out.src[*start..*end].to_string()));
                        // Still render (and so check) the main branch.
                        render_nodes(body, ctx, out);
                    }
                }
            }
            Node::Scalar {
                style,
                in_flow,
                parts,
                start,
                end,
            } => {
                // The scalar's value, and the pieces it is made of (for the
                // source map when the scalar keeps its style).
                let mut value = String::new();
                let mut pieces: Vec<(String, Option<usize>, usize, bool)> =
                    Vec::with_capacity(parts.len());
                let mut poisoned = false;
                for p in parts {
                    match p {
                        Node::Text { start, end } => {
                            let lit = &out.src[*start..*end];
                            if *style == ScalarStyle::Single {
                                value.push_str(&lit.replace("''", "'"));
                            } else {
                                value.push_str(lit);
                            }
                            pieces.push((lit.to_string(), Some(*start), *start, false));
                        }
                        Node::Expr { start, id, .. } if out.probe => {
                            value.push_str(&marker(*id));
                            pieces.push((String::new(), None, *start, false));
                        }
                        Node::Expr {
                            expr,
                            start,
                            end,
                            id,
                            ..
                        } => {
                            match eval(expr, ctx, &mut out.secrets).and_then(|v| to_text(&v, expr))
                            {
                                Ok(s) => {
                                    out.record(*id, &s);
                                    value.push_str(&s);
                                    let shown = if *style == ScalarStyle::Single {
                                        s.replace('\'', "''")
                                    } else {
                                        s
                                    };
                                    pieces.push((shown, None, *start, false));
                                }
                                Err(e) => {
                                    out.errors.push(
                                        e.with_placeholder(out.src[*start..*end].to_string()),
                                    );
                                    poisoned = true;
                                    pieces.push((String::new(), None, *start, true));
                                }
                            }
                        }
                        _ => poisoned = true,
                    }
                }
                // A value that failed is left out; keep the style then, so that
                // the rest of the scalar still maps back exactly.
                let keep = !out.probe
                    && (poisoned
                        || match style {
                            // Single quotes fold line breaks and cannot
                            // escape what YAML does not allow as it is.
                            ScalarStyle::Single => !value.contains(unprintable),
                            ScalarStyle::Plain => plain_safe(&value, *in_flow),
                        });
                if keep {
                    // Same style: map every piece back precisely.
                    if *style == ScalarStyle::Single {
                        out.literal(*start, *start + 1);
                    }
                    for (text, lit, src, bad) in pieces {
                        match lit {
                            Some(s) => out.literal(s, s + text.len()),
                            None => out.value(src, &text, bad),
                        }
                    }
                    if *style == ScalarStyle::Single {
                        out.literal(*end - 1, *end);
                    }
                } else {
                    let text = match style {
                        ScalarStyle::Single if keep => format!("'{}'", value.replace('\'', "''")),
                        ScalarStyle::Plain if keep => value,
                        _ => double_quoted(&value),
                    };
                    out.value(*start, &text, poisoned);
                }
            }
        }
    }
}

/// Handlebars truthiness: `null`, `false`, `""`, `0` and `[]` are false.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

/// The text of a value put in place of a placeholder.
fn to_text(v: &Value, expr: &Expr) -> Result<String, TemplateError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        Value::Array(_) | Value::Object(_) => {
            let what = if v.is_array() { "a list" } else { "a map" };
            let name = match expr {
                Expr::Path { text, .. } => format!("`{text}`"),
                _ => "the value".to_string(),
            };
            Err(TemplateError::new(
                expr.at(),
                format!("{name} is {what}, not a single value; name one of its entries (e.g. `a.b.0` or `a.b.key`)"),
                None,
            ))
        }
    }
}

fn escape_in(s: &str, ctx: ValueCtx) -> String {
    match ctx {
        ValueCtx::Plain => s.to_string(),
        ValueCtx::Single => s.replace('\'', "''"),
        ValueCtx::Double => {
            let q = double_quoted(s);
            q[1..q.len() - 1].to_string()
        }
        ValueCtx::Block { indent } => {
            let pad = format!("\n{}", " ".repeat(indent));
            s.replace('\n', &pad)
        }
    }
}

/// `s` as a YAML double-quoted scalar, which can hold any text exactly.
pub(crate) fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) <= 0xff && unprintable(c) => {
                out.push_str(&format!("\\x{:02X}", c as u32))
            }
            c if unprintable(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Can `s` be written as a plain YAML scalar and read back as the same text?
/// (Conservative: anything doubtful gets quoted.)
fn plain_safe(s: &str, in_flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return false;
    }
    if matches!(
        first,
        '-' | '?'
            | ':'
            | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    ) {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') || s.contains(['\n', '\r', '\t']) {
        return false;
    }
    if in_flow && s.contains([',', '[', ']', '{', '}']) {
        return false;
    }
    !s.contains(unprintable)
}

/// What a YAML scalar cannot hold as it is (control characters, U+FFFE and
/// U+FFFF are outside YAML's printable set) or would misread (a byte-order
/// mark): only a double-quoted scalar's escapes can carry them.
pub(crate) fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}')
}

/// Evaluate an expression.
pub(crate) fn eval(
    expr: &Expr,
    ctx: &Context<'_>,
    secrets: &mut Vec<String>,
) -> Result<Value, TemplateError> {
    match expr {
        Expr::Lit { value, .. } => Ok(value.clone()),
        Expr::Path { segments, text, at } => lookup(ctx.values, segments, text, *at).cloned(),
        Expr::Call {
            helper,
            args,
            hash,
            at,
        } => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, ctx, secrets)?);
            }
            match helper {
                Helper::Env => {
                    let name = as_str(&vals[0], "`env` variable name", *at)?;
                    let default = match (vals.get(1), hash.first()) {
                        (Some(v), _) => Some(as_str(v, "`env` default", *at)?),
                        (None, Some((_, e))) => {
                            Some(as_str(&eval(e, ctx, secrets)?, "`env` default", *at)?)
                        }
                        (None, None) => None,
                    };
                    // Lower-case fallback, as the gateway does.
                    let lower = name.to_lowercase();
                    let found = ctx
                        .env
                        .var(&name)
                        .map(|v| (v, name.as_str()))
                        .or_else(|| ctx.env.var(&lower).map(|v| (v, lower.as_str())));
                    match (found, default) {
                        (Some((v, var)), _) => {
                            if !v.is_empty() && ctx.env.is_secret(var) {
                                secrets.push(v.clone());
                            }
                            Ok(Value::String(v))
                        }
                        (None, Some(d)) => Ok(Value::String(d)),
                        (None, None) => Err(TemplateError::new(
                            *at,
                            format!(
                                "{}, and the placeholder has no default (or give one: `env \"{name}\" \"default\"`)",
                                ctx.env.missing(&name)
                            ),
                            None,
                        )),
                    }
                }
                Helper::Base64 => {
                    let s = scalar_text(&vals[0], "`base64` argument", *at)?;
                    Ok(Value::String(
                        base64::engine::general_purpose::STANDARD.encode(s.as_bytes()),
                    ))
                }
                Helper::File => {
                    let path = as_str(&vals[0], "`file` path", *at)?;
                    let binary = match vals.get(1) {
                        None => false,
                        Some(Value::String(m)) if m == "binary" => true,
                        Some(other) => {
                            return Err(TemplateError::new(
                                *at,
                                format!("`file` mode must be \"binary\" (or left out for text), not {other}"),
                                None,
                            ))
                        }
                    };
                    let rel = super::join_rel(ctx.base_dir, &path)
                        .map_err(|m| TemplateError::new(*at, m, None))?;
                    let bytes = ctx.files.read(&rel).map_err(|e| {
                        let why = if e.kind() == std::io::ErrorKind::NotFound {
                            "does not exist".to_string()
                        } else {
                            e.to_string()
                        };
                        TemplateError::new(
                            *at,
                            format!("included file `{path}` (`{rel}` in the project) {why}"),
                            None,
                        )
                    })?;
                    if binary {
                        Ok(Value::String(
                            base64::engine::general_purpose::STANDARD.encode(&bytes),
                        ))
                    } else {
                        String::from_utf8(bytes).map(Value::String).map_err(|_| {
                            TemplateError::new(
                                *at,
                                format!("included file `{path}` is not UTF-8 text; include it with `{{{{file \"{path}\" \"binary\"}}}}`"),
                                None,
                            )
                        })
                    }
                }
            }
        }
    }
}

fn as_str(v: &Value, what: &str, at: usize) -> Result<String, TemplateError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
        _ => Err(TemplateError::new(
            at,
            format!("{what} must be a string"),
            None,
        )),
    }
}

fn scalar_text(v: &Value, what: &str, at: usize) -> Result<String, TemplateError> {
    match v {
        Value::Null => Ok(String::new()),
        _ => as_str(v, what, at),
    }
}

/// Follow `segments` through `values`. Array entries are addressed by index.
pub(crate) fn lookup<'v>(
    values: &'v Value,
    segments: &[String],
    text: &str,
    at: usize,
) -> Result<&'v Value, TemplateError> {
    let mut cur = values;
    for (i, seg) in segments.iter().enumerate() {
        let next = match cur {
            Value::Object(m) => m.get(seg.as_str()),
            Value::Array(a) => match seg.parse::<usize>() {
                Ok(k) => a.get(k),
                Err(_) => {
                    let parent = segments[..i].join(".");
                    return Err(TemplateError::new(
                        at,
                        format!("`{text}`: `{parent}` is a list, so `{seg}` must be an index (0, 1, ...)"),
                        None,
                    ));
                }
            },
            _ if i > 0 => {
                let parent = segments[..i].join(".");
                return Err(TemplateError::new(
                    at,
                    format!("`{text}`: `{parent}` is a single value, not a map"),
                    None,
                ));
            }
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => {
                let msg = match cur {
                    Value::Array(a) if i > 0 => format!(
                        "`{text}` is not defined: `{}` has {} entries",
                        segments[..i].join("."),
                        a.len()
                    ),
                    _ => format!("`{text}` is not defined in values.yaml or the stage overlay"),
                };
                return Err(TemplateError::new(at, msg, None));
            }
        }
    }
    Ok(cur)
}
