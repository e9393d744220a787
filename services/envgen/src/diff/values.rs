//! Structured diff of two values trees (the `values.yaml` a `render: false`
//! package carries).

use std::collections::BTreeMap;

use serde_json::Value;

use super::mask::is_reference;
use super::{ChangeKind, ValueChange};
use crate::secrets::{credential_key, looks_like_credential, Masker, MASK};

/// A step of a value's path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

struct Leaf<'a> {
    value: &'a Value,
    /// Sits under a credential-like key or looks like a credential.
    secret: bool,
}

/// The leaves (scalars, empty mappings and sequences) of `v` by path.
fn flatten<'a>(
    v: &'a Value,
    path: &mut Vec<Seg>,
    under_credential: bool,
    out: &mut BTreeMap<Vec<Seg>, Leaf<'a>>,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                path.push(Seg::Key(k.clone()));
                flatten(x, path, under_credential || credential_key(k), out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, x) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                flatten(x, path, under_credential, out);
                path.pop();
            }
        }
        _ if path.is_empty() => {} // an empty (or non-mapping) root
        _ => {
            let secret = match v {
                Value::String(s) => {
                    (under_credential && !s.is_empty() && !is_reference(s))
                        || looks_like_credential(s)
                }
                Value::Number(_) => under_credential,
                _ => false,
            };
            out.insert(path.clone(), Leaf { value: v, secret });
        }
    }
}

/// `db.password`, `servers[0].host`, `"a.b".c`.
fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let plain = !k.is_empty()
                    && !k.contains(['.', '[', ']', '"', ' ', '\t', '\n'])
                    && !k.chars().any(char::is_control);
                if plain {
                    out.push_str(k);
                } else {
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The value as shown, and whether anything was masked.
fn shown(leaf: &Leaf<'_>, masker: &Masker) -> (Value, bool) {
    if leaf.secret {
        return (Value::String(MASK.to_string()), true);
    }
    match leaf.value {
        Value::String(s) => {
            let m = masker.mask(s);
            let masked = m != *s;
            (Value::String(m), masked)
        }
        other => (other.clone(), false),
    }
}

/// What changed from `before` to `after`, in path order.
pub(crate) fn diff_values(before: &Value, after: &Value, masker: &Masker) -> Vec<ValueChange> {
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    flatten(before, &mut Vec::new(), false, &mut old);
    flatten(after, &mut Vec::new(), false, &mut new);
    let mut paths: Vec<&Vec<Seg>> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for p in paths {
        let (change, b, a) = match (old.get(p), new.get(p)) {
            (Some(b), Some(a)) if b.value == a.value => continue,
            (Some(b), Some(a)) => (ChangeKind::Changed, Some(b), Some(a)),
            (Some(b), None) => (ChangeKind::Removed, Some(b), None),
            (None, Some(a)) => (ChangeKind::Added, None, Some(a)),
            (None, None) => continue,
        };
        let b = b.map(|l| shown(l, masker));
        let a = a.map(|l| shown(l, masker));
        let masked = b.as_ref().is_some_and(|x| x.1) || a.as_ref().is_some_and(|x| x.1);
        out.push(ValueChange {
            path: path_string(p),
            change,
            before: b.map(|x| x.0),
            after: a.map(|x| x.0),
            masked,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Row = (String, ChangeKind, Option<Value>, Option<Value>, bool);

    #[test]
    fn diff_values_paths_and_masking() {
        let before = json!({
            "db": {"password": "old-pass", "url": "jdbc:h2:mem", "ref": "{{ env \"X\" }}"},
            "list": [1, 2],
            "a.b": {"c": true},
            "gone": "x",
        });
        let after = json!({
            "db": {"password": "new-pass", "url": "jdbc:h2:file", "ref": "{{ env \"Y\" }}"},
            "list": [1, 3, 4],
            "a.b": {"c": true},
            "auth": {"token": "{{ env \"TOKEN\" }}"},
        });
        let changes = diff_values(&before, &after, &Masker::default());
        let got: Vec<Row> = changes
            .into_iter()
            .map(|c| (c.path, c.change, c.before, c.after, c.masked))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "auth.token".into(),
                    ChangeKind::Added,
                    None,
                    Some(json!("{{ env \"TOKEN\" }}")),
                    false
                ),
                (
                    "db.password".into(),
                    ChangeKind::Changed,
                    Some(json!(MASK)),
                    Some(json!(MASK)),
                    true
                ),
                (
                    "db.ref".into(),
                    ChangeKind::Changed,
                    Some(json!("{{ env \"X\" }}")),
                    Some(json!("{{ env \"Y\" }}")),
                    false
                ),
                (
                    "db.url".into(),
                    ChangeKind::Changed,
                    Some(json!("jdbc:h2:mem")),
                    Some(json!("jdbc:h2:file")),
                    false
                ),
                (
                    "gone".into(),
                    ChangeKind::Removed,
                    Some(json!("x")),
                    None,
                    false
                ),
                (
                    "list[1]".into(),
                    ChangeKind::Changed,
                    Some(json!(2)),
                    Some(json!(3)),
                    false
                ),
                (
                    "list[2]".into(),
                    ChangeKind::Added,
                    None,
                    Some(json!(4)),
                    false
                ),
            ]
        );
    }
}
