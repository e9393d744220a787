//! Source positions for field paths such as `stages[1].approval.required`.
//!
//! The typed model stays free of span wrappers (other code should read
//! `stage.name`, not `stage.name.value`), so positions come from a second,
//! untyped pass over the same text: serde-saphyr's `Spanned` gives the
//! position of every key and value, which we record by path. Using the real
//! parser (not a line scan) keeps this right for flow style (`{ a: 1 }`),
//! anchors and multi-line scalars.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// `None` for serde-saphyr's "unknown" location (line 0).
    pub fn from_location(loc: Location) -> Option<Pos> {
        let line = u32::try_from(loc.line()).ok().filter(|l| *l > 0)?;
        let column = u32::try_from(loc.column()).unwrap_or(0);
        Some(Pos { line, column })
    }
}

/// Appends a mapping key to a path: `a.b`, or `a["/0/id"]` when the key
/// is not a plain identifier (JSON pointers, header names with dots...).
pub fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// Appends a sequence index to a path: `stages[1]`.
pub fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Map,
    Seq,
    Scalar,
}

#[derive(Debug, Clone)]
struct Entry {
    pos: Pos,
    path: String,
    kind: Kind,
}

/// Positions of the keys and values of one YAML document, by field path.
#[derive(Debug, Default)]
pub struct LocIndex {
    keys: HashMap<String, Pos>,
    values: HashMap<String, (Pos, Kind)>,
    /// Every key and value in document order, for position → path lookups.
    entries: Vec<Entry>,
}

impl LocIndex {
    /// Indexes `text`; a document that does not parse gives an empty index
    /// (the typed parse reports the syntax error itself).
    pub fn build(text: &str) -> LocIndex {
        let mut index = LocIndex::default();
        if let Ok(root) = serde_saphyr::from_str::<Spanned<Node>>(text) {
            index.add(&root, String::new());
        }
        index
    }

    fn add(&mut self, node: &Spanned<Node>, path: String) {
        let kind = match node.value {
            Node::Scalar => Kind::Scalar,
            Node::Seq(_) => Kind::Seq,
            Node::Map(_) => Kind::Map,
        };
        if let Some(pos) = Pos::from_location(node.referenced) {
            self.values.entry(path.clone()).or_insert((pos, kind));
            self.entries.push(Entry {
                pos,
                path: path.clone(),
                kind,
            });
        }
        match &node.value {
            Node::Scalar => {}
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add(item, join_index(&path, i));
                }
            }
            Node::Map(entries) => {
                for (key, value) in entries {
                    let Some(name) = &key.value.0 else { continue };
                    let child = join_key(&path, name);
                    if let Some(pos) = Pos::from_location(key.referenced) {
                        self.keys.entry(child.clone()).or_insert(pos);
                        self.entries.push(Entry {
                            pos,
                            path: child.clone(),
                            kind: Kind::Key,
                        });
                    }
                    self.add(value, child);
                }
            }
        }
    }

    /// Where to point for a problem with `path`: a scalar's value, otherwise
    /// its key (a block mapping's value starts on the next line), falling
    /// back to the nearest ancestor that exists in the file.
    pub fn pos_of(&self, path: &str) -> Option<Pos> {
        let mut current = path;
        loop {
            match self.values.get(current) {
                Some((pos, Kind::Scalar)) => return Some(*pos),
                Some((pos, _)) => return self.keys.get(current).copied().or(Some(*pos)),
                None => {
                    if let Some(pos) = self.keys.get(current) {
                        return Some(*pos);
                    }
                }
            }
            current = parent_path(current)?;
        }
    }

    /// The path of the key written at `pos` (for "unknown field" errors).
    pub fn key_at(&self, pos: Pos) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.kind == Kind::Key && e.pos == pos)
            .map(|e| e.path.as_str())
    }

    /// The path of the innermost mapping starting at `pos` (for "missing
    /// field" errors, which serde-saphyr reports at the mapping).
    pub fn map_at(&self, pos: Pos) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Map && e.pos == pos)
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.as_str())
    }

    /// The path of the innermost value at `pos`, else of the last key or
    /// value before it (for type errors).
    pub fn value_at(&self, pos: Pos) -> Option<&str> {
        let exact = self
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Key && e.pos == pos)
            .max_by_key(|e| e.path.len());
        exact
            .or_else(|| {
                self.entries
                    .iter()
                    .filter(|e| e.pos <= pos)
                    .max_by_key(|e| e.pos)
            })
            .map(|e| e.path.as_str())
    }
}

/// `stages[1].approval` → `stages[1]` → `stages` → `` → None.
pub fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let open = if path.ends_with("\"]") {
        path.rfind("[\"")
    } else if path.ends_with(']') {
        path.rfind('[')
    } else {
        None
    };
    if let Some(open) = open {
        return Some(&path[..open]);
    }
    Some(path.rfind('.').map_or("", |dot| &path[..dot]))
}

/// An untyped YAML node that only remembers structure and positions.
#[derive(Debug)]
enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

/// A mapping key as text; `None` for complex keys (which pipelines never use).
#[derive(Debug)]
struct Key(Option<String>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(Some(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Key(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Key(None))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Node, D2::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<Key>>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    entries.push((key, value));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: x
source: {repo: r, branch: main}
stages:
  - name: a
    smoke:
      - name: s
        expect: { json: { \"/0/id\": 1 } }
  - name: b
    approval:
      required: 2
      approvers: [a, b]
";

    fn p(line: u32, column: u32) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn positions_by_path() {
        let idx = LocIndex::build(DOC);
        assert_eq!(idx.pos_of("name"), Some(p(1, 7)));
        assert_eq!(idx.pos_of("source.branch"), Some(p(2, 27)));
        assert_eq!(idx.pos_of("stages[1].approval.required"), Some(p(10, 17)));
        // Containers point at their key, not at their first child.
        assert_eq!(idx.pos_of("stages[1].approval"), Some(p(9, 5)));
        assert_eq!(
            idx.pos_of("stages[1].approval.approvers[1]"),
            Some(p(11, 22))
        );
        assert_eq!(
            idx.pos_of("stages[0].smoke[0].expect.json[\"/0/id\"]"),
            Some(p(7, 36))
        );
        // Absent fields fall back to the nearest ancestor.
        assert_eq!(idx.pos_of("stages[1].approval.expires"), Some(p(9, 5)));
        assert_eq!(idx.pos_of("stages[1].freeze[0].from"), Some(p(8, 5)));
        assert_eq!(idx.pos_of("image.base"), Some(p(1, 1)));
    }

    #[test]
    fn reverse_lookups() {
        let idx = LocIndex::build(DOC);
        assert_eq!(idx.key_at(p(10, 7)), Some("stages[1].approval.required"));
        assert_eq!(idx.map_at(p(10, 7)), Some("stages[1].approval"));
        assert_eq!(idx.map_at(p(4, 5)), Some("stages[0]"));
        assert_eq!(idx.value_at(p(10, 17)), Some("stages[1].approval.required"));
    }

    #[test]
    fn broken_yaml_gives_empty_index() {
        let idx = LocIndex::build("a: [1,\n");
        assert_eq!(idx.pos_of("a"), None);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(join_key("", "stages"), "stages");
        assert_eq!(join_key("a", "b-c_d"), "a.b-c_d");
        assert_eq!(join_key("json", "/0/id"), "json[\"/0/id\"]");
        assert_eq!(join_index("stages", 3), "stages[3]");
        assert_eq!(parent_path("a.b[1].c"), Some("a.b[1]"));
        assert_eq!(parent_path("a.b[1]"), Some("a.b"));
        assert_eq!(parent_path("a"), Some(""));
        assert_eq!(parent_path(""), None);
        assert_eq!(parent_path("a.json[\"/0/id\"]"), Some("a.json"));
        assert_eq!(parent_path("a.json[\"/a[0]\"]"), Some("a.json"));
    }
}
