//! A small YAML document model with source positions, built from the event
//! stream of serde-saphyr's parser (`granit_parser`). Entity files need the
//! position of every scalar (to point at a broken reference), which a serde
//! `Value` does not keep.

mod fast;

use std::borrow::Cow;

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

/// A node with the byte range it covers in the parsed text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct YNode<'a> {
    pub kind: YKind<'a>,
    pub start: usize,
    pub end: usize,
    /// 1-based line and column of `start`, as the parser counted them.
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum YKind<'a> {
    /// A scalar; `plain` tells whether it was unquoted (and so is subject to
    /// null/bool/number resolution).
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<YNode<'a>>),
    Map(Vec<(YNode<'a>, YNode<'a>)>),
    /// An alias (`*name`): the documents we read have no use for them.
    Alias,
}

impl<'a> YNode<'a> {
    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            YKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Value of `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&YNode<'a>> {
        match &self.kind {
            YKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Is this a `null` (empty or `~`/`null` plain scalar)?
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, YKind::Scalar { text, plain: true } if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub offset: usize,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

fn node<'a>(kind: YKind<'a>, span: &Span) -> YNode<'a> {
    YNode {
        kind,
        start: span.start.byte_offset().unwrap_or(span.start.index()),
        end: span.end.byte_offset().unwrap_or(span.end.index()),
        line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
    }
}

enum Frame<'a> {
    Seq(YNode<'a>, Vec<YNode<'a>>),
    Map(YNode<'a>, Vec<(YNode<'a>, YNode<'a>)>, Option<YNode<'a>>),
}

/// Parse the first document of `text`. `Ok(None)` for an empty stream. A
/// second document is an error: every file holds one entity tree.
pub(crate) fn parse(text: &str) -> Result<Option<YNode<'_>>, YamlError> {
    if let Some(tree) = fast::parse(text) {
        // Debug builds (the test suite) check the fast path against the full
        // parser; where they differ the full parser's answer is used, and
        // this crate's own tests fail.
        #[cfg(debug_assertions)]
        {
            let full = parse_full(text);
            let agrees = matches!((&tree, &full), (t, Ok(f)) if same(t.as_ref(), f.as_ref()));
            if !agrees {
                #[cfg(test)]
                panic!("fast YAML path disagrees with the full parser on:\n{text}\nfast: {tree:?}\nfull: {full:?}");
                #[cfg(not(test))]
                return full;
            }
        }
        return Ok(tree);
    }
    parse_full(text)
}

/// Same tree, scalars and positions (collection ends may differ).
#[cfg(debug_assertions)]
fn same(a: Option<&YNode<'_>>, b: Option<&YNode<'_>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (a.start, a.line, a.column) == (b.start, b.line, b.column)
                && match (&a.kind, &b.kind) {
                    (
                        YKind::Scalar {
                            text: t1,
                            plain: p1,
                        },
                        YKind::Scalar {
                            text: t2,
                            plain: p2,
                        },
                    ) => t1 == t2 && p1 == p2 && a.end == b.end,
                    (YKind::Seq(x), YKind::Seq(y)) => {
                        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(Some(p), Some(q)))
                    }
                    (YKind::Map(x), YKind::Map(y)) => {
                        x.len() == y.len()
                            && x.iter().zip(y).all(|((k1, v1), (k2, v2))| {
                                same(Some(k1), Some(k2)) && same(Some(v1), Some(v2))
                            })
                    }
                    (YKind::Alias, YKind::Alias) => true,
                    _ => false,
                }
        }
        _ => false,
    }
}

/// The full parser (serde-saphyr's event parser).
fn parse_full(text: &str) -> Result<Option<YNode<'_>>, YamlError> {
    let parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut root: Option<YNode<'_>> = None;
    let mut docs = 0usize;
    for ev in parser {
        let (event, span) = ev.map_err(|e| {
            let m = e.marker();
            YamlError {
                offset: m.byte_offset().unwrap_or(m.index()),
                line: u32::try_from(m.line()).unwrap_or(u32::MAX),
                column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
                message: e.info(),
            }
        })?;
        let done = match event {
            Event::DocumentStart(..) => {
                docs += 1;
                if docs > 1 {
                    let n = node(YKind::Alias, &span);
                    return Err(YamlError {
                        offset: n.start,
                        line: n.line,
                        column: n.column,
                        message:
                            "a second YAML document (`---`): an entity file holds one document"
                                .to_string(),
                    });
                }
                None
            }
            Event::Scalar(text, style, ..) => Some(node(
                YKind::Scalar {
                    text,
                    plain: style == ScalarStyle::Plain,
                },
                &span,
            )),
            Event::Alias(..) => Some(node(YKind::Alias, &span)),
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(node(YKind::Seq(Vec::new()), &span), Vec::new()));
                None
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(
                    node(YKind::Map(Vec::new()), &span),
                    Vec::new(),
                    None,
                ));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(mut n, items)) => {
                    n.kind = YKind::Seq(items);
                    n.end = span.end.byte_offset().unwrap_or(n.end).max(n.end);
                    Some(n)
                }
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(mut n, entries, _)) => {
                    n.kind = YKind::Map(entries);
                    n.end = span.end.byte_offset().unwrap_or(n.end).max(n.end);
                    Some(n)
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(n) = done {
            match stack.last_mut() {
                Some(Frame::Seq(_, items)) => items.push(n),
                Some(Frame::Map(_, entries, pending)) => match pending.take() {
                    None => *pending = Some(n),
                    Some(k) => entries.push((k, n)),
                },
                None => {
                    if root.is_none() {
                        root = Some(n);
                    }
                }
            }
        }
    }
    Ok(root)
}

/// Convert to JSON with YAML 1.2 core-schema resolution of plain scalars.
/// Mapping keys become strings; a non-scalar key is an error (at its position).
pub(crate) fn to_json(n: &YNode<'_>) -> Result<Value, (usize, String)> {
    Ok(match &n.kind {
        YKind::Scalar { text, plain: true } => resolve_plain(text),
        YKind::Scalar { text, plain: false } => Value::String(text.to_string()),
        YKind::Alias => {
            return Err((
                n.start,
                "YAML aliases (`*name`) are not supported here".to_string(),
            ))
        }
        YKind::Seq(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        YKind::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match &k.kind {
                    YKind::Scalar { text, .. } => text.to_string(),
                    _ => return Err((k.start, "a mapping key must be a plain string".to_string())),
                };
                if m.contains_key(&key) {
                    return Err((k.start, format!("duplicate key `{key}`")));
                }
                m.insert(key, to_json(v)?);
            }
            Value::Object(m)
        }
    })
}

/// YAML 1.2 core schema for an unquoted scalar.
pub(crate) fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Value::String(s.to_string()), // not representable in JSON: keep the text
        _ => {}
    }
    let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    if let Some(h) = s.strip_prefix("0x") {
        if digits(h, 16) {
            if let Ok(v) = i64::from_str_radix(h, 16) {
                return Value::from(v);
            }
        }
    }
    if let Some(o) = s.strip_prefix("0o") {
        if digits(o, 8) {
            if let Ok(v) = i64::from_str_radix(o, 8) {
                return Value::from(v);
            }
        }
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits(unsigned, 10) {
        if let Ok(v) = s.parse::<i64>() {
            return Value::from(v);
        }
        if let Ok(v) = s.parse::<u64>() {
            return Value::from(v);
        }
    }
    if is_core_float(unsigned) {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_core_float(s: &str) -> bool {
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            (a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()))
                && !(a.is_empty() && b.is_empty())
        }
        None => !mant.is_empty() && mant.chars().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mant_ok && exp_ok
}

#[cfg(test)]
mod tests {
    /// The fast path takes what the Entity Store writes, and agrees with the
    /// full parser (checked inside `parse` in debug builds) on every file of
    /// the real sample project.
    #[test]
    fn fast_path_covers_the_sample_project() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(root) = here
            .ancestors()
            .map(|a| a.join("shared/fixtures/yamles/yamles-utils-apim/apim"))
            .find(|p| p.join("_parent.yaml").is_file())
        else {
            panic!("sample project not found above {}", here.display());
        };
        let mut stack = vec![root];
        let (mut total, mut fast_ok) = (0usize, 0usize);
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml") {
                    let Ok(text) = std::fs::read_to_string(&p) else {
                        continue;
                    };
                    total += 1;
                    if fast::parse(&text).is_some() {
                        fast_ok += 1;
                    }
                    assert!(parse(&text).is_ok(), "{}", p.display());
                }
            }
        }
        assert!(total > 1400, "{total}");
        assert!(
            fast_ok * 100 >= total * 95,
            "fast path took {fast_ok} of {total}"
        );
    }

    #[test]
    fn fast_path_bails_or_agrees_on_edge_cases() {
        let cases = [
            "a: 1\n",
            "---\na: 1\n",
            "a: b: c\n",
            "a:\n  - x\n  -\n    y: 1\n",
            "a:\n- x\n- y: 1\n  z: 2\nb: 3\n",
            "a: 'it''s'\nb: \"x\\ty\\u00e9\\\"\"\n",
            "a: 'unterminated\nb: 2\n",
            "a: |\n  block\n",
            "a: plain\n  continued\n",
            "a: &x 1\nb: *x\n",
            "a: [1, 2]\nb: {}\nc: [] # comment\n",
            "# only a comment\n",
            "a: x # comment\n# line comment\nb: y#not a comment\n",
            "'q k': 1\n\"d k\": 2\n",
            "a:\n  b:\n    c: 1\n  d: 2\ne: 3\n",
            "  a: 1\n  b: 2\n",
            "a: 1\n b: 2\n",
            "a: 1\n---\nb: 2\n",
            "- a\n- b: 1\n",
            "a:\n    - 1\n    - 2\nb: é ü\nc: 'ü'\n",
            "key with spaces: value with: colon\n",
            "url: http://x:8080/a\n",
            "a: -1\nb: -\n",
            "a:\n\n  b: 1\n",
            "a: 1\r\nb: 2\r\n",
            "a:\tb\n",
            "? a\n: b\n",
            "a: !!str 1\n",
            "a: @x\n",
            "",
        ];
        for c in cases {
            // In debug builds `parse` asserts that a fast result matches the full parser.
            let _ = parse(c);
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn positions_of_scalars() {
        let text = "---\ntype: X\nfields:\n  name: 'a b'\n  list:\n  - /x/y\n";
        let Ok(Some(root)) = parse(text) else {
            panic!("no parse")
        };
        let name = root.get("fields").and_then(|f| f.get("name"));
        let Some(name) = name else { panic!("no name") };
        assert_eq!(name.as_str(), Some("a b"));
        assert_eq!((name.line, name.column), (4, 9));
        assert_eq!(&text[name.start..name.end], "'a b'");
        let Some(YNode {
            kind: YKind::Seq(items),
            ..
        }) = root.get("fields").and_then(|f| f.get("list"))
        else {
            panic!("no list")
        };
        assert_eq!((items[0].line, items[0].column), (6, 5));
    }

    #[test]
    fn errors_have_positions() {
        let Err(e) = parse("a: 1\nb: 'unterminated\nc: 2\n") else {
            panic!("parsed")
        };
        assert!(e.line >= 2, "{e:?}");
        let Err(e) = parse("a: b: c\n") else {
            panic!("parsed")
        };
        assert_eq!(e.line, 1);
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn json_with_core_schema() {
        let Ok(Some(n)) =
            parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: [x, 0x1F]\ng: 1e3\nh: 2024-01-01\n")
        else {
            panic!("no parse")
        };
        assert_eq!(
            to_json(&n),
            Ok(
                json!({"a": 1, "b": "1", "c": true, "d": null, "e": 1.5, "f": ["x", 31], "g": 1000.0, "h": "2024-01-01"})
            )
        );
        let Ok(Some(n)) = parse("a: 1\na: 2\n") else {
            panic!("no parse")
        };
        assert!(to_json(&n).is_err());
    }
}
