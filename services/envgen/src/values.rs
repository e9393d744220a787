//! Stage values: the project's `values.yaml` deep-merged with the stage's
//! overlay.
//!
//! Both files may hold `{{ env "X" }}` / `{{ base64 "…" }}` placeholders (as
//! Axway documents for `values.yaml`). The overlay may also write `env:NAME`.
//! Both files are repository content, which anyone who can push writes, so
//! `NAME` is always the stage's *declared* variable (`stages[].env` in the
//! pipeline file, [`crate::StageEnv`]), never Gantry's own environment, and
//! `file:/path` is refused (DESIGN.md 1.7).
//!
//! Two trees are kept:
//! - **raw**: placeholders as written (`env:NAME` becomes `{{ env "NAME" }}`, so
//!   that the gateway resolves it at load). It is what a `render: false`
//!   package carries as its `values.yaml`, and what the values digest covers.
//! - **resolved**: every placeholder evaluated against the stage's variables.
//!   It is what entity placeholders are rendered and validated against.

use gantry_proto::events::Diagnostic;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::diag;
use crate::secrets;
use crate::template::{self, Context, Env, NoFiles, Pos, Template};
use crate::yaml::{self, YKind, YNode};

/// A values file: a name for diagnostics (e.g. `values.yaml`,
/// `environments/test.yaml`) and its text.
#[derive(Debug, Clone, Copy)]
pub struct ValuesSource<'a> {
    /// The name diagnostics use.
    pub name: &'a str,
    /// The YAML text.
    pub text: &'a str,
}

/// The merged values of one stage.
#[derive(Debug, Clone)]
pub struct StageValues {
    raw: Value,
    resolved: Value,
    secrets: Vec<String>,
    diagnostics: Vec<Diagnostic>,
}

impl Default for StageValues {
    fn default() -> Self {
        StageValues::empty()
    }
}

impl StageValues {
    /// No values at all.
    pub fn empty() -> Self {
        StageValues {
            raw: Value::Object(Map::new()),
            resolved: Value::Object(Map::new()),
            secrets: Vec::new(),
            diagnostics: Vec::new(),
        }
    }

    /// Load the project's `values.yaml` (if any) and the stage overlay (if any),
    /// resolve their placeholders against `env`, and deep-merge the overlay on
    /// top. Problems are kept in [`StageValues::diagnostics`]; what could be
    /// read is still merged.
    pub fn load(
        project: Option<ValuesSource<'_>>,
        overlay: Option<ValuesSource<'_>>,
        env: &dyn Env,
    ) -> StageValues {
        let mut out = StageValues::empty();
        for (src, is_overlay) in [(project, false), (overlay, true)] {
            let Some(src) = src else { continue };
            let loaded = load_one(src, is_overlay, env);
            deep_merge(&mut out.raw, loaded.raw);
            deep_merge(&mut out.resolved, loaded.resolved);
            out.secrets.extend(loaded.secrets);
            out.diagnostics.extend(loaded.diagnostics);
        }
        secrets::collect_from_values(&out.resolved, &mut out.secrets);
        out.secrets.sort();
        out.secrets.dedup();
        diag::sort(&mut out.diagnostics);
        out
    }

    /// Values given as a tree (already merged). Strings holding `{{ env }}` /
    /// `{{ base64 }}` placeholders are resolved against `env`.
    pub fn from_value(raw: Value, env: &dyn Env) -> StageValues {
        let mut secrets_found = Vec::new();
        let mut diagnostics = Vec::new();
        let resolved = resolve_tree(&raw, "", env, &mut secrets_found, &mut diagnostics);
        let mut out = StageValues {
            raw,
            resolved,
            secrets: secrets_found,
            diagnostics,
        };
        secrets::collect_from_values(&out.resolved, &mut out.secrets);
        out.secrets.sort();
        out.secrets.dedup();
        out
    }

    pub(crate) fn add_diagnostics(&mut self, more: &[Diagnostic]) {
        self.diagnostics.extend(more.iter().cloned());
        diag::sort(&mut self.diagnostics);
    }

    /// Placeholders as written: what a `render: false` package carries.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// Placeholders resolved: what templates are rendered against.
    pub fn resolved(&self) -> &Value {
        &self.resolved
    }

    /// Problems found while loading (all of them), sorted by file and line.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Values to be masked in diagnostics.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// `sha256:<hex>` of the canonical JSON of the raw values.
    pub fn digest(&self) -> String {
        values_digest(&self.raw)
    }

    /// The raw values as a `values.yaml` document (deterministic: keys sorted).
    pub fn to_yaml(&self) -> String {
        to_yaml(&self.raw)
    }
}

/// Deep-merge `overlay` into `base`: maps merge key by key, recursively; any
/// other value (scalar or list) in the overlay replaces the base's.
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Canonical JSON: object keys sorted, no insignificant whitespace, strings
/// escaped as `serde_json` does. Independent of `serde_json`'s map ordering.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(v) = m.get(*k) {
                        write(v, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// `sha256:<hex>` of [`canonical_json`].
pub fn values_digest(v: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
    )
}

struct Loaded {
    raw: Value,
    resolved: Value,
    secrets: Vec<String>,
    diagnostics: Vec<Diagnostic>,
}

const TOKEN_PREFIX: &str = "__gantry_ph_";

/// The start of the first tag (expression or `{{! }}` comment) that runs
/// over a line end.
fn tag_over_line_end(text: &str, exprs: &[(usize, usize, &template::Expr)]) -> Option<usize> {
    let comments = text.match_indices("{{!").filter_map(|(start, _)| {
        let close = if text[start..].starts_with("{{!--") {
            "--}}"
        } else {
            "}}"
        };
        let end = text[start..].find(close)? + start + close.len();
        Some((start, end))
    });
    exprs
        .iter()
        .map(|(start, end, _)| (*start, *end))
        .chain(comments)
        .filter(|(start, end)| text[*start..*end].contains('\n'))
        .map(|(start, _)| start)
        .min()
}

/// One values file.
fn load_one(src: ValuesSource<'_>, is_overlay: bool, env: &dyn Env) -> Loaded {
    let mut out = Loaded {
        raw: Value::Object(Map::new()),
        resolved: Value::Object(Map::new()),
        secrets: Vec::new(),
        diagnostics: Vec::new(),
    };
    let text = src.text;
    let pos = |offset: usize| template::pos::pos_of(text, offset);
    let t = Template::parse(text);
    for e in t.errors() {
        out.diagnostics.push(diag::at(
            src.name,
            Some(pos(e.offset)),
            e.placeholder.clone(),
            e.message.clone(),
        ));
    }
    if !t.errors().is_empty() {
        return out;
    }
    let (exprs, block) = t.expressions();
    if let Some(b) = block {
        out.diagnostics.push(diag::at(
            src.name,
            Some(pos(b)),
            None,
            "`{{#if}}`/`{{#unless}}` are not supported in values files; only `env` and `base64` placeholders are",
        ));
        return out;
    }
    // A placeholder lives inside one scalar. One running over a line end
    // could open in one value and close in the next (a `{{! }}` comment),
    // and writing the values back with sorted keys would split it.
    if let Some(at) = tag_over_line_end(text, &exprs) {
        out.diagnostics.push(diag::at(
            src.name,
            Some(pos(at)),
            None,
            "a placeholder in a values file must end on the line it starts on",
        ));
        return out;
    }
    // The tokens below are how placeholders cross the YAML parser: text
    // that already holds one would be read as a token (found by
    // fuzz/template: a malformed one panicked mid-character).
    if let Some(at) = text.find(TOKEN_PREFIX) {
        out.diagnostics.push(diag::at(
            src.name,
            Some(pos(at)),
            None,
            format!("`{TOKEN_PREFIX}` is reserved by Gantry and may not appear in a values file"),
        ));
        return out;
    }
    // Swap each placeholder for a token the YAML parser keeps as is, parse,
    // then put raw text or resolved values back in place of the tokens.
    let mut protected = String::with_capacity(text.len());
    let mut shifts: Vec<(usize, usize)> = Vec::new(); // (protected offset, source offset) at each token end
    let mut last = 0;
    for (i, (start, end, _)) in exprs.iter().enumerate() {
        protected.push_str(&text[last..*start]);
        protected.push_str(&format!("{TOKEN_PREFIX}{i}__"));
        shifts.push((protected.len(), *end));
        last = *end;
    }
    protected.push_str(&text[last..]);
    let to_src = |off: usize| -> usize {
        match shifts.iter().rev().find(|(p, _)| *p <= off) {
            Some((p, s)) => s + (off - p),
            None => off,
        }
    };
    let root = match yaml::parse(&protected) {
        Ok(Some(root)) => root,
        Ok(None) => return out,
        Err(e) => {
            out.diagnostics.push(diag::at(
                src.name,
                Some(pos(to_src(e.offset))),
                None,
                format!("invalid YAML: {}", e.message),
            ));
            return out;
        }
    };
    if !matches!(root.kind, YKind::Map(_)) && !root.is_null() {
        out.diagnostics.push(diag::at(
            src.name,
            Some(pos(to_src(root.start))),
            None,
            "a values file must be a mapping of names to values",
        ));
        return out;
    }
    let mut cx = Conv {
        name: src.name,
        text,
        exprs: &exprs,
        env,
        is_overlay,
        to_src: &to_src,
        secrets: &mut out.secrets,
        diagnostics: &mut out.diagnostics,
    };
    let (raw, resolved) = cx.convert(&root, "");
    if raw.is_object() {
        out.raw = raw;
        out.resolved = resolved;
    }
    out
}

/// Whether a key or value YAML produced holds a placeholder or comment it
/// cut (the file's tags were whole before YAML read it).
fn cuts_a_tag(text: &str) -> bool {
    text.contains("{{") && !Template::parse(text.to_string()).errors().is_empty()
}

struct Conv<'a, 'b> {
    name: &'a str,
    text: &'a str,
    exprs: &'a [(usize, usize, &'a template::Expr)],
    env: &'a dyn Env,
    is_overlay: bool,
    to_src: &'a dyn Fn(usize) -> usize,
    secrets: &'b mut Vec<String>,
    diagnostics: &'b mut Vec<Diagnostic>,
}

impl Conv<'_, '_> {
    fn pos(&self, protected_offset: usize) -> Pos {
        template::pos::pos_of(self.text, (self.to_src)(protected_offset))
    }

    fn report(&mut self, protected_offset: usize, field: &str, message: String) {
        let p = self.pos(protected_offset);
        let field = (!field.is_empty()).then(|| field.to_string());
        self.diagnostics
            .push(diag::at(self.name, Some(p), field, message));
    }

    /// Returns (raw, resolved).
    fn convert(&mut self, n: &YNode, path: &str) -> (Value, Value) {
        match &n.kind {
            YKind::Map(entries) => {
                let mut raw = Map::new();
                let mut res = Map::new();
                for (k, v) in entries {
                    let Some(key) = k.as_str() else {
                        self.report(
                            k.start,
                            path,
                            "a key in a values file must be a string".to_string(),
                        );
                        continue;
                    };
                    if key.contains(TOKEN_PREFIX) {
                        self.report(
                            k.start,
                            path,
                            "placeholders are not allowed in keys".to_string(),
                        );
                        continue;
                    }
                    // Found by fuzz/values: a `{{!` comment that YAML's `: `
                    // split between a key and its value.
                    if cuts_a_tag(key) {
                        self.report(
                            k.start,
                            path,
                            "YAML syntax cuts a placeholder or comment in this key \
                             (a `: ` or ` #` inside it): quote it"
                                .to_string(),
                        );
                        continue;
                    }
                    let child = if path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    };
                    if raw.contains_key(key) {
                        self.report(k.start, &child, format!("duplicate key `{key}`"));
                        continue;
                    }
                    let (r, s) = self.convert(v, &child);
                    raw.insert(key.to_string(), r);
                    res.insert(key.to_string(), s);
                }
                (Value::Object(raw), Value::Object(res))
            }
            YKind::Seq(items) => {
                let mut raw = Vec::with_capacity(items.len());
                let mut res = Vec::with_capacity(items.len());
                for (i, it) in items.iter().enumerate() {
                    let (r, s) = self.convert(it, &format!("{path}.{i}"));
                    raw.push(r);
                    res.push(s);
                }
                (Value::Array(raw), Value::Array(res))
            }
            YKind::Alias => {
                self.report(
                    n.start,
                    path,
                    "YAML aliases (`*name`) are not supported in values files".to_string(),
                );
                (Value::Null, Value::Null)
            }
            YKind::Scalar { text, plain } => {
                // The file's tags were whole, but YAML may have cut one: a
                // ` #` inside `{{! … }}` starts a YAML comment, leaving the
                // value an unclosed `{{!` that reads differently once written
                // back (found by fuzz/values).
                if cuts_a_tag(text) {
                    self.report(
                        n.start,
                        path,
                        "YAML syntax cuts a placeholder or comment in this value \
                         (a ` #` inside it starts a YAML comment): quote the value"
                            .to_string(),
                    );
                    return (Value::Null, Value::Null);
                }
                if text.contains(TOKEN_PREFIX) {
                    return self.placeholders(text, *plain);
                }
                let v = if *plain {
                    yaml::resolve_plain(text)
                } else {
                    Value::String(text.to_string())
                };
                if self.is_overlay {
                    if let Some(name) = text.strip_prefix("env:").filter(|s| is_env_name(s)) {
                        return self.env_ref(n, name, path);
                    }
                    if let Some(file) = text.strip_prefix("file:").filter(|s| s.starts_with('/')) {
                        return self.file_ref(n, file, path);
                    }
                }
                (v.clone(), v)
            }
        }
    }

    /// A scalar holding placeholder tokens.
    fn placeholders(&mut self, text: &str, plain: bool) -> (Value, Value) {
        let mut raw = String::new();
        let mut res = String::new();
        let mut rest = text;
        let mut count = 0usize;
        let mut first: Option<usize> = None;
        let mut other_text = false;
        let mut failed = false;
        while let Some(i) = rest.find(TOKEN_PREFIX) {
            other_text |= i > 0;
            raw.push_str(&rest[..i]);
            res.push_str(&rest[..i]);
            let after = &rest[i + TOKEN_PREFIX.len()..];
            let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
            let consumed = (i + TOKEN_PREFIX.len() + digits.len() + 2).min(rest.len());
            let found = digits
                .parse::<usize>()
                .ok()
                .and_then(|k| self.exprs.get(k).map(|e| (k, *e)));
            match found {
                Some((k, (start, end, expr))) => {
                    count += 1;
                    first.get_or_insert(k);
                    raw.push_str(&self.text[start..end]);
                    match self.eval(expr) {
                        Ok(v) => res.push_str(&v),
                        Err(e) => {
                            failed = true;
                            let p = template::pos::pos_of(self.text, e.offset);
                            let field = e
                                .placeholder
                                .clone()
                                .or_else(|| Some(self.text[start..end].to_string()));
                            self.diagnostics
                                .push(diag::at(self.name, Some(p), field, e.message));
                        }
                    }
                }
                None => {
                    raw.push_str(&rest[i..consumed]);
                    res.push_str(&rest[i..consumed]);
                }
            }
            rest = &rest[consumed..];
        }
        other_text |= !rest.is_empty();
        raw.push_str(rest);
        res.push_str(rest);
        let resolved = match first {
            // `key: {{ env "PORT" }}` unquoted: the gateway pastes the value into
            // the text before parsing, so `8080` becomes a number, `false` a bool.
            Some(k) if count == 1 && !other_text && plain && !failed && !self.quoted(k) => {
                yaml::resolve_plain(&res)
            }
            _ => Value::String(res),
        };
        (Value::String(raw), resolved)
    }

    /// Is placeholder `k` directly inside quotes in the source?
    fn quoted(&self, k: usize) -> bool {
        let Some((start, _, _)) = self.exprs.get(k) else {
            return false;
        };
        matches!(self.text[..*start].chars().last(), Some('\'' | '"'))
    }

    fn eval(&mut self, expr: &template::Expr) -> Result<String, template::TemplateError> {
        if let template::Expr::Path { text, at, .. } = expr {
            return Err(template::TemplateError::new(
                *at,
                format!("values files cannot refer to other values (`{text}`); only `env` and `base64` placeholders are allowed"),
                None,
            ));
        }
        if let template::Expr::Call { helper, at, .. } = expr {
            if helper.name() == "file" {
                return Err(template::TemplateError::new(
                    *at,
                    "`file` is not supported in values files".to_string(),
                    None,
                ));
            }
        }
        let ctx = Context {
            values: &Value::Null,
            env: self.env,
            files: &NoFiles,
            base_dir: "",
        };
        let v = template::eval_expr(expr, &ctx, self.secrets)?;
        Ok(match v {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }

    fn env_ref(&mut self, n: &YNode, name: &str, path: &str) -> (Value, Value) {
        let raw = Value::String(format!("{{{{ env \"{name}\" }}}}"));
        match self.env.var(name) {
            Some(v) => {
                if self.env.is_secret(name) {
                    self.secrets.push(v.clone());
                }
                (raw, Value::String(v))
            }
            None => {
                let message = format!("{} (from `env:{name}`)", self.env.missing(name));
                self.report(n.start, path, message);
                (raw, Value::String(String::new()))
            }
        }
    }

    /// `file:` in repository content would read Gantry's own files: refused.
    fn file_ref(&mut self, n: &YNode, file: &str, path: &str) -> (Value, Value) {
        self.report(n.start, path, file_ref_refused(file));
        (Value::String(String::new()), Value::String(String::new()))
    }
}

/// Why `file:/path` in a values file is an error, and what to write instead.
pub(crate) fn file_ref_refused(file: &str) -> String {
    format!(
        "`file:{file}` is not allowed in repository content (it would read Gantry's own files); \
         declare the secret in the pipeline file under the stage's `env` (`NAME: file:{file}`) and write `env:NAME` here"
    )
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Resolve placeholders in the strings of a tree (no positions known).
fn resolve_tree(
    v: &Value,
    path: &str,
    env: &dyn Env,
    secrets: &mut Vec<String>,
    diags: &mut Vec<Diagnostic>,
) -> Value {
    match v {
        Value::String(s) if s.contains("{{") => {
            let t = Template::parse(s.as_str());
            let ctx = Context {
                values: &Value::Null,
                env,
                files: &NoFiles,
                base_dir: "",
            };
            let r = t.render(&ctx);
            secrets.extend(r.secrets.iter().cloned());
            for e in t.errors().iter().chain(r.errors.iter()) {
                diags.push(Diagnostic {
                    file: Some("values".to_string()),
                    line: None,
                    column: None,
                    field: Some(path.to_string()),
                    message: e.message.clone(),
                });
            }
            Value::String(r.text)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| resolve_tree(x, &format!("{path}.{i}"), env, secrets, diags))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    (k.clone(), resolve_tree(x, &p, env, secrets, diags))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// YAML's limit on an implicit key (`key: value`), in characters; longer
/// keys are written explicitly (`? key` then `: value`).
const IMPLICIT_KEY_MAX: usize = 1024;

/// Write values as YAML: keys sorted, two-space indentation, strings quoted
/// only when needed. A string holding a placeholder is written so that the
/// placeholder appears verbatim (the gateway expands it in the text).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::from("---\n");
    match v {
        Value::Object(m) if m.is_empty() => out.push_str("{}\n"),
        Value::Object(_) | Value::Array(_) => emit_block(v, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn emit_block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                let Some(x) = m.get(k) else { continue };
                let key = string(k);
                out.push_str(&pad);
                if key.chars().count() > IMPLICIT_KEY_MAX {
                    // Too long for an implicit key: an explicit one.
                    out.push_str("? ");
                    out.push_str(&key);
                    out.push('\n');
                    out.push_str(&pad);
                } else {
                    out.push_str(&key);
                }
                out.push(':');
                emit_child(x, indent, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                out.push_str(&pad);
                out.push('-');
                emit_child(x, indent, out);
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn emit_child(x: &Value, indent: usize, out: &mut String) {
    match x {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit_block(x, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit_block(x, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) | Value::Object(_) => canonical_json(v),
    }
}

fn string(s: &str) -> String {
    if s.contains("{{") {
        // Single quotes fold line breaks and refuse other control characters,
        // and plain double quotes would escape the placeholders' own quotes.
        if s.contains(template::unprintable) {
            return double_quoted_around_placeholders(s);
        }
        // The placeholder must stay verbatim: pick a quote it does not use.
        if !s.contains('\'') {
            return format!("'{s}'");
        }
        if !s.contains(['"', '\\']) && !s.contains(char::is_control) {
            return format!("\"{s}\"");
        }
        // Both quotes: doubling `'` would change a placeholder that holds one.
        return double_quoted_around_placeholders(s);
    }
    let plain_ok = !s.is_empty()
        && !s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@` ".contains(c))
        // At a line's start `...` ends the document (found by fuzz/values:
        // a key `... \ ...` was written plain and read back as nothing).
        && !s.starts_with("...")
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.contains(template::unprintable)
        && yaml::resolve_plain(s) == Value::String(s.to_string());
    if plain_ok {
        s.to_string()
    } else {
        crate::template::double_quoted(s)
    }
}

/// `s` double-quoted with escapes between its placeholders and the
/// placeholders verbatim: loading (like the gateway) reads them before the
/// YAML, so this reads back to exactly `s`.
fn double_quoted_around_placeholders(s: &str) -> String {
    let escaped = |text: &str| {
        let q = crate::template::double_quoted(text);
        q[1..q.len() - 1].to_string()
    };
    let t = Template::parse(s);
    let mut out = String::from("\"");
    let mut last = 0;
    for (start, end, _) in t.expressions().0 {
        out.push_str(&escaped(&s[last..start]));
        out.push_str(&s[start..end]);
        last = end;
    }
    out.push_str(&escaped(&s[last..]));
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
