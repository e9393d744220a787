//! What one entity file says: its entities (type, key, parent), the references
//! it makes and the externalized files it names, and what is wrong with its
//! structure. Positions are in the parsed (rendered) text.

use std::collections::HashSet;

use crate::template::{substitute, Rendered, MARK_OPEN};
use crate::types::TypeModel;
use crate::yaml::{YKind, YNode};

/// A problem, positioned in the parsed text.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub offset: usize,
    pub line: u32,
    pub column: u32,
    pub field: Option<String>,
    pub message: String,
}

/// One entity of the file. Entity 0 is the file's top entity.
#[derive(Debug, Clone)]
pub(crate) struct Ent {
    pub key: String,
    pub parent: Option<usize>,
    pub offset: usize,
    pub line: u32,
    pub column: u32,
}

/// A reference to another entity.
#[derive(Debug, Clone)]
pub(crate) struct RefUse {
    pub ent: usize,
    pub value: String,
    pub field: String,
    pub offset: usize,
    pub line: u32,
    pub column: u32,
}

/// A `field#ref` / `field#refbinary` / `field#binary` externalized file.
#[derive(Debug, Clone)]
pub(crate) struct ExtUse {
    pub path: String,
    pub field: String,
    pub offset: usize,
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Analysis {
    pub entities: Vec<Ent>,
    pub refs: Vec<RefUse>,
    pub ext: Vec<ExtUse>,
    pub findings: Vec<Finding>,
    /// Analysing a probe rendering, a marker was met where its value would
    /// change more than a string (a type, a key, a heuristic): the file must be
    /// analysed again for each stage.
    pub unstable: bool,
}

impl Analysis {
    /// The analysis of a probe rendering with each marker replaced by the
    /// stage's value. References and file names whose value could not be
    /// computed are dropped (the evaluation error is reported instead).
    pub fn substitute(&self, values: &[Option<String>]) -> Analysis {
        let entities = self
            .entities
            .iter()
            .map(|e| Ent {
                key: substitute(&e.key, values).unwrap_or_default(),
                ..e.clone()
            })
            .collect();
        let refs = self
            .refs
            .iter()
            .filter_map(|r| {
                let value = substitute(&r.value, values)?;
                is_checkable(&value).then(|| RefUse { value, ..r.clone() })
            })
            .collect();
        let ext = self
            .ext
            .iter()
            .filter_map(|x| {
                let path = substitute(&x.path, values)?;
                (!path.is_empty()).then(|| ExtUse { path, ..x.clone() })
            })
            .collect();
        Analysis {
            entities,
            refs,
            ext,
            findings: self.findings.clone(),
            unstable: false,
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub types: Option<&'a TypeModel>,
    pub top_folders: &'a HashSet<String>,
    /// For a rendered template: values that could not be computed are not checked.
    pub rendered: Option<&'a Rendered>,
    /// Analysing a probe rendering (values are markers).
    pub probe: bool,
}

const ENTITY_KEYS: [&str; 5] = ["type", "fields", "children", "routing", "logging"];

impl Ctx<'_> {
    fn poisoned(&self, n: &YNode) -> bool {
        self.rendered.is_some_and(|r| r.is_poisoned(n.start, n.end))
    }

    /// Does a string in a field of an unknown type look like a reference?
    fn looks_like_ref(&self, s: &str) -> bool {
        if s.starts_with("./") || s.starts_with("../") {
            return true;
        }
        let Some(rest) = s.strip_prefix('/') else {
            return false;
        };
        let first = rest.split('/').next().unwrap_or("");
        rest.contains('/') && self.top_folders.contains(first)
    }
}

fn marked(n: &YNode) -> bool {
    n.as_str().is_some_and(|s| s.contains(MARK_OPEN))
}

fn finding(n: &YNode, field: Option<String>, message: String) -> Finding {
    Finding {
        offset: n.start,
        line: n.line,
        column: n.column,
        field,
        message,
    }
}

/// Is this reference value one to check? (`/null` and empty are "no reference";
/// values that are neither absolute nor relative YamlPKs are soft references.)
fn is_checkable(s: &str) -> bool {
    !s.is_empty()
        && s != "/null"
        && (s.starts_with('/')
            || s.starts_with("./")
            || s.starts_with("../")
            || s == "."
            || s == "..")
}

pub(crate) fn analyze(root: Option<&YNode>, ctx: &Ctx<'_>) -> Analysis {
    let mut a = Analysis::default();
    match root {
        None => a.findings.push(Finding {
            offset: 0,
            line: 1,
            column: 1,
            field: None,
            message: "empty entity file: expected `type:` and `fields:`".to_string(),
        }),
        Some(n) => entity(n, None, ctx, &mut a),
    }
    a
}

fn entity(n: &YNode, parent: Option<usize>, ctx: &Ctx<'_>, a: &mut Analysis) {
    let YKind::Map(entries) = &n.kind else {
        a.findings.push(finding(
            n,
            None,
            "an entity must be a mapping with `type:` and `fields:`".to_string(),
        ));
        return;
    };
    if ctx.probe && entries.iter().any(|(k, _)| marked(k)) {
        a.unstable = true;
    }
    let mut seen: Vec<&str> = Vec::with_capacity(entries.len());
    for (k, _) in entries {
        match k.as_str() {
            Some(key) if seen.contains(&key) => a.findings.push(finding(k, Some(key.to_string()), format!("duplicate key `{key}`"))),
            Some(key) if !ENTITY_KEYS.contains(&key) => a.findings.push(finding(
                k,
                Some(key.to_string()),
                format!("unknown key `{key}` in an entity (expected type, fields, children, routing, logging)"),
            )),
            Some(key) => seen.push(key),
            None => a.findings.push(finding(k, None, "an entity key must be a string".to_string())),
        }
    }
    let type_node = n.get("type");
    let type_name = type_node.and_then(YNode::as_str).unwrap_or("");
    match type_node {
        None => a.findings.push(finding(
            n,
            Some("type".into()),
            "missing `type:`: every entity names its type".to_string(),
        )),
        Some(t) if type_name.is_empty() && !ctx.poisoned(t) => a.findings.push(finding(
            t,
            Some("type".into()),
            "`type:` must name an entity type".to_string(),
        )),
        _ => {}
    }
    let info = ctx.types.and_then(|m| m.get(type_name));
    if ctx.probe && (info.is_none() || type_node.is_some_and(marked)) {
        // Without a known type, what is a reference depends on the values.
        a.unstable = true;
    }
    if let (Some(model), Some(t)) = (ctx.types, type_node) {
        if info.is_none() && !type_name.is_empty() && !model.is_empty() && !ctx.poisoned(t) {
            a.findings.push(finding(
                t,
                Some("type".into()),
                format!("unknown entity type `{type_name}` (not in META-INF/types)"),
            ));
        }
    }
    let idx = a.entities.len();
    a.entities.push(Ent {
        key: String::new(),
        parent,
        offset: n.start,
        line: n.line,
        column: n.column,
    });

    let fields = n.get("fields");
    let mut key_parts: Vec<String> = Vec::new();
    let key_fields: Vec<&str> = match info {
        Some(i) => i.key_fields.iter().map(String::as_str).collect(),
        None => vec!["name"],
    };
    match fields.map(|f| &f.kind) {
        Some(YKind::Map(fentries)) => {
            let mut fseen: Vec<&str> = Vec::with_capacity(fentries.len());
            if ctx.probe && fentries.iter().any(|(k, _)| marked(k)) {
                a.unstable = true;
            }
            for (fk, fv) in fentries {
                let Some(fname) = fk.as_str() else {
                    a.findings.push(finding(
                        fk,
                        None,
                        "a field name must be a string".to_string(),
                    ));
                    continue;
                };
                if fseen.contains(&fname) {
                    a.findings.push(finding(
                        fk,
                        Some(format!("fields.{fname}")),
                        format!("duplicate field `{fname}`"),
                    ));
                    continue;
                }
                fseen.push(fname);
                let (base, suffix) = match fname.split_once('#') {
                    Some((b, s)) => (b, Some(s)),
                    None => (fname, None),
                };
                if let Some(i) = info {
                    if !i.fields.contains(base) {
                        a.findings.push(finding(
                            fk,
                            Some(format!("fields.{fname}")),
                            format!("field `{base}` is not defined for type `{type_name}`"),
                        ));
                    }
                }
                if let Some(suffix) = suffix {
                    if !matches!(suffix, "ref" | "refbinary" | "binary") {
                        a.findings.push(finding(
                            fk,
                            Some(format!("fields.{fname}")),
                            format!("unknown field suffix `#{suffix}` (expected #ref, #refbinary or #binary)"),
                        ));
                        continue;
                    }
                    for s in scalars(fv) {
                        if let Some(path) = s.as_str().filter(|p| !p.is_empty() || ctx.probe) {
                            if !ctx.poisoned(s) {
                                a.ext.push(ExtUse {
                                    path: path.to_string(),
                                    field: format!("fields.{fname}"),
                                    offset: s.start,
                                    line: s.line,
                                    column: s.column,
                                });
                            }
                        }
                    }
                    continue;
                }
                let is_ref_field = match info {
                    Some(i) => i.refs.contains(base),
                    None => scalars(fv)
                        .iter()
                        .any(|s| s.as_str().is_some_and(|v| ctx.looks_like_ref(v))),
                };
                if is_ref_field {
                    for s in scalars(fv) {
                        push_ref(a, idx, s, format!("fields.{fname}"), ctx);
                    }
                }
            }
            for kf in &key_fields {
                let v = fentries
                    .iter()
                    .find(|(k, _)| k.as_str() == Some(kf))
                    .and_then(|(_, v)| if v.is_null() { Some("") } else { v.as_str() })
                    .unwrap_or("");
                key_parts.push(v.to_string());
            }
        }
        Some(_) if fields.is_some_and(|f| !f.is_null()) => {
            if let Some(f) = fields {
                a.findings.push(finding(
                    f,
                    Some("fields".into()),
                    "`fields:` must be a mapping of field names to values".to_string(),
                ));
            }
        }
        _ => {}
    }
    if let Some(e) = a.entities.get_mut(idx) {
        e.key = key_parts.join(",");
    }

    if let Some(r) = n.get("routing") {
        match &r.kind {
            YKind::Map(rentries) => {
                for (rk, rv) in rentries {
                    let name = rk.as_str().unwrap_or("?");
                    for s in scalars(rv) {
                        push_ref(a, idx, s, format!("routing.{name}"), ctx);
                    }
                }
            }
            _ if r.is_null() => {}
            _ => a.findings.push(finding(
                r,
                Some("routing".into()),
                "`routing:` must be a mapping (success, failure)".to_string(),
            )),
        }
    }
    if let Some(c) = n.get("children") {
        match &c.kind {
            YKind::Seq(items) => {
                for it in items {
                    entity(it, Some(idx), ctx, a);
                }
            }
            YKind::Map(_) => entity(c, Some(idx), ctx, a),
            _ if c.is_null() => {}
            _ => a.findings.push(finding(
                c,
                Some("children".into()),
                "`children:` must be a list of entities".to_string(),
            )),
        }
    }
}

fn push_ref(a: &mut Analysis, ent: usize, s: &YNode, field: String, ctx: &Ctx<'_>) {
    let Some(v) = s.as_str() else { return };
    let symbolic = ctx.probe && v.contains(MARK_OPEN);
    if (!symbolic && !is_checkable(v)) || ctx.poisoned(s) {
        return;
    }
    a.refs.push(RefUse {
        ent,
        value: v.to_string(),
        field,
        offset: s.start,
        line: s.line,
        column: s.column,
    });
}

/// A scalar, or the scalars of a list.
fn scalars<'n, 'a>(n: &'n YNode<'a>) -> Vec<&'n YNode<'a>> {
    match &n.kind {
        YKind::Scalar { .. } => vec![n],
        YKind::Seq(items) => items
            .iter()
            .filter(|i| matches!(i.kind, YKind::Scalar { .. }))
            .collect(),
        _ => Vec::new(),
    }
}
