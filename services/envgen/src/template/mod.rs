//! The placeholder language of Axway's YAML Entity Store.
//!
//! A hand-written lexer and parser for the Handlebars subset the gateway
//! documents for environmentalization, an AST, and an evaluator:
//!
//! - `{{ a.b }}`, `{{a.b.0}}`, `{{ a.b.[0] }}`: a value from the stage's values;
//! - `{{#if x}}…{{else}}…{{/if}}`, `{{#unless x}}…{{/unless}}` (and `{{else if y}}`):
//!   keep or drop text, with Handlebars truthiness (`null`, `false`, `""`, `0`
//!   and `[]` are false);
//! - `{{ env "X" }}`, `{{ env "X" "default" }}`, `{{ env 'X' default="d" }}`: an
//!   environment variable (`X`, then `x`), else the default;
//! - `{{ base64 "…" }}`: base64 of a string;
//! - `{{ file "x.json" }}`, `{{file 'cert.pem'}}`, `{{ file "x.xsd" "binary" }}`:
//!   the content of a file next to the template (binary: base64 of its bytes);
//! - sub-expressions `{{ base64 (env "X" "d") }}`, single or double quotes,
//!   with or without inner spaces, comments `{{! … }}`, `~` whitespace control.
//!
//! Errors carry the byte offset of the problem; [`Template::position`] turns it
//! into a line and column. Rendering is YAML-aware (see [`yamlctx`]): a value
//! pasted into a scalar is escaped for that scalar, so the result parses to the
//! value that was meant.

mod eval;
mod lexer;
mod parser;
pub mod pos;
mod yamlctx;

use std::collections::BTreeMap;

pub use gantry_pipeline::StageEnv;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

pub(crate) use eval::{double_quoted, substitute, unprintable, MARK_OPEN};
pub(crate) use parser::{Expr, Node};
pub use pos::{LineIndex, Pos};

/// A problem in a template or while evaluating it, at byte `offset` of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset in the template source.
    pub offset: usize,
    /// What is wrong, for a person.
    pub message: String,
    /// The placeholder concerned, as written (e.g. `{{ db.url }}`).
    pub placeholder: Option<String>,
}

impl TemplateError {
    pub(crate) fn new(offset: usize, message: String, placeholder: Option<String>) -> Self {
        TemplateError {
            offset,
            message,
            placeholder,
        }
    }

    pub(crate) fn with_placeholder(mut self, p: String) -> Self {
        if self.placeholder.is_none() {
            self.placeholder = Some(p);
        }
        self
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TemplateError {}

/// Where `env` placeholders read variables. In production this is the
/// stage's declared `env` ([`StageEnv`]), never the process environment:
/// repository content must not reach Gantry's own variables (DESIGN.md 1.7).
/// Tests use [`MapEnv`].
pub trait Env: Send + Sync {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// Whether the value of `name` is a secret, to be masked.
    fn is_secret(&self, _name: &str) -> bool {
        true
    }

    /// What to say when `name` has no value.
    fn missing(&self, name: &str) -> String {
        format!("environment variable `{name}` is not set")
    }
}

impl Env for StageEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    fn is_secret(&self, name: &str) -> bool {
        StageEnv::is_secret(self, name)
    }

    fn missing(&self, name: &str) -> String {
        self.undeclared(name)
    }
}

/// A fixed set of variables.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    /// An environment with no variables.
    pub fn empty() -> Self {
        MapEnv(BTreeMap::new())
    }

    /// An environment with these `(name, value)` pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Reads files for `{{ file "…" }}`, by a normalized `/`-separated path relative
/// to the project root (never absolute, never escaping the root).
pub trait FileLoader: Send + Sync {
    /// The bytes of the file at `rel_path`.
    fn read(&self, rel_path: &str) -> std::io::Result<Vec<u8>>;
}

/// Reads files from a directory on disk.
#[derive(Debug, Clone)]
pub struct DirLoader {
    root: PathBuf,
}

impl DirLoader {
    /// Files are read below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirLoader { root: root.into() }
    }
}

impl FileLoader for DirLoader {
    fn read(&self, rel_path: &str) -> std::io::Result<Vec<u8>> {
        let rel = Path::new(rel_path);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "path leaves the project",
            ));
        }
        std::fs::read(self.root.join(rel))
    }
}

/// A loader with no files (for templates that must not include any).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFiles;

impl FileLoader for NoFiles {
    fn read(&self, _rel_path: &str) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no files here",
        ))
    }
}

/// What a template is evaluated against.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The stage's values (the project's `values.yaml` merged with the overlay).
    pub values: &'a Value,
    /// Environment variables for `env`.
    pub env: &'a dyn Env,
    /// Files for `file`.
    pub files: &'a dyn FileLoader,
    /// Directory of the template, relative to the project root (`""` for the
    /// root): `file` paths are relative to it.
    pub base_dir: &'a str,
}

/// A parsed template. It owns its source.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    nodes: Vec<Node>,
    errors: Vec<TemplateError>,
    has_tags: bool,
    expr_count: usize,
}

/// The result of rendering: the text, every evaluation problem, and a map back
/// to the template source.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The output text. Where a value could not be computed it is left empty.
    pub text: String,
    /// Every problem met while evaluating, in source order.
    pub errors: Vec<TemplateError>,
    /// Values that came from the environment (to be masked in diagnostics).
    pub secrets: Vec<String>,
    segs: Vec<eval::Segment>,
    /// The text of each expression, by id (`None`: failed, or not rendered).
    pub(crate) values: Vec<Option<String>>,
}

impl Rendered {
    fn segment(&self, out_offset: usize) -> Option<&eval::Segment> {
        let i = match self.segs.binary_search_by(|s| s.out.cmp(&out_offset)) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        self.segs.get(i)
    }

    /// The template-source byte offset that produced output byte `out_offset`.
    pub fn source_offset(&self, out_offset: usize) -> usize {
        match self.segment(out_offset) {
            Some(s) if s.literal => s.src + (out_offset - s.out),
            Some(s) => s.src,
            None => out_offset,
        }
    }

    /// Whether output bytes `start..=end` hold (or touch) a value that could
    /// not be computed, so that their content is a stand-in not worth checking.
    pub fn is_poisoned(&self, start: usize, end: usize) -> bool {
        let first = self
            .segs
            .partition_point(|s| s.out < start)
            .saturating_sub(1);
        self.segs[first..]
            .iter()
            .take_while(|s| s.out <= end)
            .any(|s| s.poisoned)
    }
}

impl Template {
    /// Parse a template. Parse problems are kept in [`Template::errors`]; the
    /// rest of the template is still usable.
    pub fn parse(source: impl Into<String>) -> Template {
        let source = source.into();
        let has_tags = source.contains("{{");
        let mut errors = Vec::new();
        let (nodes, expr_count) = if has_tags {
            parser::parse(&source, &mut errors)
        } else if source.is_empty() {
            (Vec::new(), 0)
        } else {
            (
                vec![Node::Text {
                    start: 0,
                    end: source.len(),
                }],
                0,
            )
        };
        Template {
            source,
            nodes,
            errors,
            has_tags,
            expr_count,
        }
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Problems found while parsing.
    pub fn errors(&self) -> &[TemplateError] {
        &self.errors
    }

    /// Whether the source contains any `{{`.
    pub fn has_placeholders(&self) -> bool {
        self.has_tags
    }

    /// Line and column of a byte offset in the source.
    pub fn position(&self, offset: usize) -> Pos {
        pos::pos_of(&self.source, offset)
    }

    /// Render against `ctx`. Evaluation goes on after a problem, so that every
    /// problem is in [`Rendered::errors`].
    pub fn render(&self, ctx: &Context<'_>) -> Rendered {
        self.render_mode(ctx, false)
    }

    fn render_mode(&self, ctx: &Context<'_>, probe: bool) -> Rendered {
        if !self.has_tags {
            return Rendered {
                text: self.source.clone(),
                errors: Vec::new(),
                secrets: Vec::new(),
                segs: vec![eval::Segment {
                    out: 0,
                    src: 0,
                    literal: true,
                    poisoned: false,
                }],
                values: Vec::new(),
            };
        }
        let mut out = eval::Out {
            src: &self.source,
            text: String::with_capacity(self.source.len() + 64),
            segs: Vec::new(),
            errors: Vec::new(),
            secrets: Vec::new(),
            values: vec![None; self.expr_count],
            probe,
        };
        eval::render_nodes(&self.nodes, ctx, &mut out);
        Rendered {
            text: out.text,
            errors: out.errors,
            secrets: out.secrets,
            segs: out.segs,
            values: out.values,
        }
    }

    /// Can values change this template's YAML structure? Not when it has no
    /// block helpers and every placeholder sits in a scalar that the renderer
    /// re-quotes as a whole, or in a double-quoted scalar: then whatever the
    /// values, each placeholder stays inside its scalar.
    pub(crate) fn is_stable(&self) -> bool {
        self.errors.is_empty()
            && self.nodes.iter().all(|n| match n {
                Node::Text { .. } | Node::Scalar { .. } => true,
                Node::Expr { ctx, .. } => *ctx == yamlctx::ValueCtx::Double,
                Node::Block { .. } | Node::Invalid { .. } => false,
            })
    }

    /// Render with markers in place of the values (see [`substitute`]): one
    /// parse of this text serves every stage of a stable template.
    pub(crate) fn render_probe(&self) -> Rendered {
        let values = Value::Null;
        self.render_mode(
            &Context {
                values: &values,
                env: &MapEnv::empty(),
                files: &NoFiles,
                base_dir: "",
            },
            true,
        )
    }

    /// Render and fail on any problem (parse or evaluation).
    pub fn render_strict(&self, ctx: &Context<'_>) -> Result<String, Vec<TemplateError>> {
        let r = self.render(ctx);
        let mut errors = self.errors.clone();
        errors.extend(r.errors);
        if errors.is_empty() {
            Ok(r.text)
        } else {
            Err(errors)
        }
    }

    /// Every `{{ expr }}` with its tag's byte range, in source order, and the
    /// start of the first block helper, if any.
    pub(crate) fn expressions(&self) -> (Vec<(usize, usize, &Expr)>, Option<usize>) {
        fn walk<'a>(
            nodes: &'a [Node],
            out: &mut Vec<(usize, usize, &'a Expr)>,
            block: &mut Option<usize>,
        ) {
            for n in nodes {
                match n {
                    Node::Expr {
                        expr, start, end, ..
                    } => out.push((*start, *end, expr)),
                    Node::Scalar { parts, .. } => walk(parts, out, block),
                    Node::Block {
                        body,
                        inverse,
                        start,
                        ..
                    } => {
                        block.get_or_insert(*start);
                        walk(body, out, block);
                        walk(inverse, out, block);
                    }
                    Node::Text { .. } | Node::Invalid { .. } => {}
                }
            }
        }
        let mut out = Vec::new();
        let mut block = None;
        walk(&self.nodes, &mut out, &mut block);
        out.sort_by_key(|e| e.0);
        (out, block)
    }
}

/// Evaluate one expression (crate-internal: used for `values.yaml`).
pub(crate) fn eval_expr(
    expr: &Expr,
    ctx: &Context<'_>,
    secrets: &mut Vec<String>,
) -> Result<Value, TemplateError> {
    eval::eval(expr, ctx, secrets)
}

/// Join `path` to the directory `base` (both relative to the project root) and
/// normalize. Fails for absolute paths and paths that leave the project.
pub fn join_rel(base: &str, path: &str) -> Result<String, String> {
    if path.starts_with('/')
        || path.starts_with('\\')
        || path.contains(':') && Path::new(path).is_absolute()
    {
        return Err(format!(
            "`{path}` is absolute; paths are relative to the file that names them"
        ));
    }
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("`{path}` points outside the project"));
                }
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        return Err(format!("`{path}` does not name a file"));
    }
    Ok(parts.join("/"))
}

/// Render `source` against `values` and `env` (no file includes) and fail on
/// any problem. A convenience for small templates.
pub fn render_str(
    source: &str,
    values: &Value,
    env: &dyn Env,
) -> Result<String, Vec<TemplateError>> {
    let t = Template::parse(source);
    t.render_strict(&Context {
        values,
        env,
        files: &NoFiles,
        base_dir: "",
    })
}

#[cfg(test)]
mod tests;
