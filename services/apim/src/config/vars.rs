//! `${NAME}` substitution (see the module documentation of [`super`] for
//! the rules and how they relate to apim-cli's `Utils.substituteVariables`).

use serde_json::Value;

/// Where the text being substituted sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Context {
    /// The raw text of a JSON document: a value that lands inside a JSON
    /// string is escaped for it; elsewhere it is inserted as-is.
    JsonText,
    /// One already parsed string (a YAML scalar): inserted as-is.
    Scalar,
}

/// A reference whose variable has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Missing {
    pub name: String,
    /// Byte offset of the `$` in the substituted text.
    pub offset: usize,
}

/// Variables substituted into one item's files, so that messages can avoid
/// showing their values.
#[derive(Debug, Clone, Default)]
pub(super) struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn record(&mut self, name: &str, value: &str) {
        if !value.is_empty() && !self.0.iter().any(|(n, v)| n == name && v == value) {
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    pub fn extend(&mut self, other: Secrets) {
        for (name, value) in other.0 {
            self.record(&name, &value);
        }
    }

    /// `text` quoted for a message, or a note naming the variable when it
    /// carries (part of) a substituted value.
    pub fn show(&self, text: &str) -> String {
        match self
            .0
            .iter()
            .find(|(_, value)| text.contains(value.as_str()))
        {
            Some((name, _)) => format!("(value hidden: it holds ${{{name}}})"),
            None => format!("`{text}`"),
        }
    }
}

pub(super) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Replaces `${NAME}` / `${NAME:-default}` in `text`; `$${` stands for a
/// literal `${`. Other `${...}` (gateway selectors) are left alone. Missing
/// variables stay verbatim and are reported.
pub(super) fn substitute(
    text: &str,
    context: Context,
    lookup: Lookup<'_>,
    secrets: &mut Secrets,
    missing: &mut Vec<Missing>,
) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    let mut in_string = false;
    let mut escaped = false;
    while i < bytes.len() {
        let byte = bytes[i];
        if context == Context::JsonText {
            // Track JSON string boundaries so values are escaped only there.
            if in_string {
                if escaped {
                    escaped = false;
                    i += 1;
                    continue;
                }
                match byte {
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else if byte == b'"' {
                in_string = true;
                i += 1;
                continue;
            }
        }
        if byte != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') && bytes.get(i + 2) == Some(&b'{') {
            // `$${` → `${`, and what follows is not a reference.
            out.push_str(&text[copied..i]);
            copied = i + 1;
            i += 3;
            continue;
        }
        if bytes.get(i + 1) != Some(&b'{') {
            i += 1;
            continue;
        }
        let Some(len) = text[i + 2..].find('}') else {
            i += 1;
            continue;
        };
        let end = i + 2 + len + 1;
        let Some((name, default)) = parse_reference(&text[i + 2..end - 1]) else {
            i += 1;
            continue;
        };
        out.push_str(&text[copied..i]);
        match lookup(name) {
            Some(value) => {
                if in_string {
                    out.push_str(&json_string_body(&value));
                } else {
                    out.push_str(&value);
                }
                secrets.record(name, &value);
            }
            // The default is file text, already written for its context.
            None => match default {
                Some(default) => out.push_str(default),
                None => {
                    missing.push(Missing {
                        name: name.to_owned(),
                        offset: i,
                    });
                    out.push_str(&text[i..end]);
                }
            },
        }
        copied = end;
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// `NAME` or `NAME:-default` with an environment-variable style name; the
/// default may not span lines or JSON strings.
fn parse_reference(inner: &str) -> Option<(&str, Option<&str>)> {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let name = &inner[..name_len];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let rest = &inner[name_len..];
    if rest.is_empty() {
        return Some((name, None));
    }
    let default = rest.strip_prefix(":-")?;
    if default.contains(['"', '{', '\n', '\r']) {
        return None;
    }
    Some((name, Some(default)))
}

/// `value` escaped for the inside of a JSON string.
fn json_string_body(value: &str) -> String {
    let quoted = Value::String(value.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Substitutes in every string of a parsed document (keys included);
/// missing variables are reported with the field they occur in.
pub(super) fn substitute_tree(
    value: &mut Value,
    field: &str,
    lookup: Lookup<'_>,
    secrets: &mut Secrets,
    missing: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(text) => *text = substitute_scalar(text, field, lookup, secrets, missing),
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                substitute_tree(item, &format!("{field}[{index}]"), lookup, secrets, missing);
            }
        }
        Value::Object(map) => {
            for (key, mut item) in std::mem::take(map) {
                let child = join_field(field, &key);
                let key = substitute_scalar(&key, &child, lookup, secrets, missing);
                substitute_tree(&mut item, &child, lookup, secrets, missing);
                map.insert(key, item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn substitute_scalar(
    text: &str,
    field: &str,
    lookup: Lookup<'_>,
    secrets: &mut Secrets,
    missing: &mut Vec<(String, String)>,
) -> String {
    let mut found = Vec::new();
    let out = substitute(text, Context::Scalar, lookup, secrets, &mut found);
    missing.extend(found.into_iter().map(|m| (m.name, field.to_owned())));
    out
}

/// `parent.key`, or `key` at the top.
pub(super) fn join_field(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, context: Context) -> (String, Vec<Missing>) {
        let lookup = |name: &str| match name {
            "HOST" => Some("api.example.com".to_owned()),
            "QUOTE" => Some(r#"a"b\c"#.to_owned()),
            "PORT" => Some("8443".to_owned()),
            _ => None,
        };
        let mut secrets = Secrets::default();
        let mut missing = Vec::new();
        let out = substitute(text, context, &lookup, &mut secrets, &mut missing);
        (out, missing)
    }

    #[test]
    fn escapes_values_inside_json_strings_only() {
        let (out, missing) = run(r#"{"a": "x${QUOTE}y", "p": ${PORT}}"#, Context::JsonText);
        assert!(missing.is_empty());
        assert_eq!(out, r#"{"a": "xa\"b\\cy", "p": 8443}"#);
        let parsed: Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed["a"], r#"xa"b\cy"#);
    }

    #[test]
    fn string_tracking_survives_escaped_quotes() {
        let (out, _) = run(r#"{"a": "\"${QUOTE}\""}"#, Context::JsonText);
        let parsed: Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed["a"], r#""a"b\c""#);
    }

    #[test]
    fn leaves_selectors_and_escapes_alone() {
        let (out, missing) = run(
            r#"{"s": "${http.request.path}", "t": "${//oauth.token.client_id//}", "e": "$${HOST}", "m": "${env.X}", "d": "$metadata"}"#,
            Context::JsonText,
        );
        assert!(missing.is_empty());
        assert_eq!(
            out,
            r#"{"s": "${http.request.path}", "t": "${//oauth.token.client_id//}", "e": "${HOST}", "m": "${env.X}", "d": "$metadata"}"#
        );
    }

    #[test]
    fn defaults_and_missing() {
        let (out, missing) = run("a ${NOPE:-fallback} b ${NOPE2}\nc ${HOST}", Context::Scalar);
        assert_eq!(out, "a fallback b ${NOPE2}\nc api.example.com");
        assert_eq!(
            missing,
            vec![Missing {
                name: "NOPE2".into(),
                offset: 22
            }]
        );
        assert_eq!(line_of("a\nb ${X}\nc", 4), 2);
    }

    #[test]
    fn show_hides_values_that_carry_secrets() {
        let mut secrets = Secrets::default();
        secrets.record("TOKEN", "s3cret");
        assert_eq!(secrets.show("plain"), "`plain`");
        assert_eq!(
            secrets.show("https://x/?t=s3cret"),
            "(value hidden: it holds ${TOKEN})"
        );
    }
}
