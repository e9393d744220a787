//! YamlPKs, the entity index, and the checks that need the whole project:
//! references, duplicate keys and externalized files.

use std::collections::{HashMap, HashSet};

use super::analyze::Analysis;
use crate::template::{self, Pos};

/// A directory of the entity tree. Index 0 is the project root.
#[derive(Debug)]
pub(super) struct Dir {
    pub path: String,
    pub name: String,
    pub parent: Option<usize>,
    /// Index (in the entity files) of this directory's `_parent.yaml`.
    pub parent_yaml: Option<usize>,
}

/// Where an entity file sits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place {
    pub dir: usize,
    pub is_parent: bool,
}

/// YamlPK → (entity file, entity) for one set of files.
pub(super) type Index = HashMap<String, (usize, usize)>;

/// What is wrong, found by [`check`]; positions are still in the analysed text.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    pub file: usize,
    pub offset: usize,
    pub line: u32,
    pub column: u32,
    pub field: Option<String>,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone)]
pub(super) enum ProblemKind {
    /// Always an error.
    Error(String),
    /// A reference to no entity of the indexes searched so far.
    Unresolved { value: String, target: String },
}

/// The YamlPK of every directory: its parent's, `/`, and the key of its
/// `_parent.yaml` (or, for a folder, its name). The root is `""`.
pub(super) fn dir_pks(dirs: &[Dir], analyses: &[Option<&Analysis>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let pk = match dir.parent {
            None => String::new(),
            Some(p) => {
                let key = dir
                    .parent_yaml
                    .and_then(|pf| analyses.get(pf).copied().flatten())
                    .and_then(|a| a.entities.first())
                    .map(|e| e.key.as_str())
                    .unwrap_or(dir.name.as_str());
                format!("{}/{key}", out.get(p).map(String::as_str).unwrap_or(""))
            }
        };
        out.push(pk);
    }
    out
}

/// The YamlPKs of the entities of one file.
pub(super) fn entity_pks(place: Place, a: &Analysis, dir_pk: &[String]) -> Vec<String> {
    let mut pks: Vec<String> = Vec::with_capacity(a.entities.len());
    for e in &a.entities {
        let pk = match e.parent {
            Some(p) => format!("{}/{}", pks.get(p).map(String::as_str).unwrap_or(""), e.key),
            None if place.is_parent => dir_pk[place.dir].clone(),
            None => format!("{}/{}", dir_pk[place.dir], e.key),
        };
        pks.push(pk);
    }
    pks
}

/// Remove `(Type)` prefixes from the segments of a YamlPK:
/// `/System/(CategoryGroup)Filter Categories/(Category)misc` →
/// `/System/Filter Categories/misc`.
pub(super) fn strip_types(pk: &str) -> String {
    if !pk.contains("/(") {
        return pk.to_string();
    }
    let mut out = String::with_capacity(pk.len());
    let mut rest = pk;
    while let Some(i) = rest.find("/(") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j)
                if j > 0
                    && after[..j]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                rest = &after[j + 1..]
            }
            _ => rest = &rest[i + 1..],
        }
    }
    out.push_str(rest);
    out
}

/// Is `target` (as written, or without type prefixes) in `base` or `own`?
pub(super) fn found(
    target: &str,
    base: Option<&Index>,
    own: &HashMap<&str, (usize, usize)>,
) -> bool {
    let has = |t: &str| own.contains_key(t) || base.is_some_and(|b| b.contains_key(t));
    has(target) || (target.contains("/(") && has(&strip_types(target)))
}

/// The project-wide facts [`check`] needs.
pub(super) struct Tree<'a> {
    pub dirs: &'a [Dir],
    pub places: &'a [Place],
    pub paths: &'a [&'a str],
    pub file_set: &'a HashSet<String>,
    pub dir_pk: &'a [String],
}

impl Tree<'_> {
    /// The YamlPK a reference names, relative ones resolved from the entity
    /// holding the field: `.` is that entity, each `..` one level up.
    fn resolve(
        &self,
        value: &str,
        file: usize,
        ent: usize,
        a: &Analysis,
        pks: &[String],
    ) -> Result<String, String> {
        if value.starts_with('/') {
            return Ok(value.to_string());
        }
        let mut rest = value;
        let mut up = 0usize;
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if rest == "." {
            rest = "";
        } else {
            loop {
                if let Some(r) = rest.strip_prefix("../") {
                    up += 1;
                    rest = r;
                } else if rest == ".." {
                    up += 1;
                    rest = "";
                } else {
                    break;
                }
            }
        }
        let base = self
            .ancestor(file, ent, up, a, pks)
            .ok_or_else(|| format!("reference `{value}` climbs above the project root"))?;
        Ok(if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{rest}")
        })
    }

    fn ancestor<'p>(
        &'p self,
        file: usize,
        ent: usize,
        up: usize,
        a: &Analysis,
        pks: &'p [String],
    ) -> Option<&'p str> {
        let mut cur = ent;
        let mut left = up;
        while left > 0 {
            match a.entities.get(cur)?.parent {
                Some(p) => {
                    cur = p;
                    left -= 1;
                }
                None => break,
            }
        }
        if left == 0 {
            return pks.get(cur).map(String::as_str);
        }
        // Leave the file: the top entity's parent is its directory (for a
        // `_parent.yaml`, which is the directory, the directory's parent).
        let place = self.places[file];
        let mut d = if place.is_parent {
            self.dirs[place.dir].parent?
        } else {
            place.dir
        };
        left -= 1;
        while left > 0 {
            d = self.dirs[d].parent?;
            left -= 1;
        }
        self.dir_pk.get(d).map(String::as_str)
    }
}

/// What [`check`] found.
pub(super) struct Checked {
    /// The YamlPKs of the entities of each checked file.
    pub pks: Vec<(usize, Vec<String>)>,
    pub problems: Vec<Problem>,
}

/// Check `files` (indices of entity files, with their analyses) against the
/// entities of `base` (other files, already indexed) and of each other, and
/// look the `pending` unresolved references of `base`'s files up again among
/// them. `position` maps a file's analysed offset to its source position (for
/// messages that name another place).
pub(super) fn check(
    tree: &Tree<'_>,
    files: &[usize],
    analyses: &[Option<&Analysis>],
    base: Option<&Index>,
    pending: &[Problem],
    position: &mut dyn FnMut(usize, usize, u32, u32) -> Pos,
) -> Checked {
    let pks: Vec<(usize, Vec<String>)> = files
        .iter()
        .filter_map(|&i| analyses[i].map(|a| (i, entity_pks(tree.places[i], a, tree.dir_pk))))
        .collect();
    let mut problems = Vec::new();
    let mut own: HashMap<&str, (usize, usize)> =
        HashMap::with_capacity(pks.iter().map(|(_, p)| p.len()).sum());
    for (i, file_pks) in &pks {
        let Some(a) = analyses[*i] else { continue };
        for (k, pk) in file_pks.iter().enumerate() {
            let other = base
                .and_then(|b| b.get(pk.as_str()))
                .or_else(|| own.get(pk.as_str()))
                .copied();
            let Some((fi, fk)) = other else {
                own.insert(pk.as_str(), (*i, k));
                continue;
            };
            let e = &a.entities[k];
            let where_else = analyses[fi]
                .and_then(|b| b.entities.get(fk))
                .map(|o| format!(" at line {}", position(fi, o.offset, o.line, o.column).line))
                .unwrap_or_default();
            problems.push(Problem {
                file: *i,
                offset: e.offset,
                line: e.line,
                column: e.column,
                field: None,
                kind: ProblemKind::Error(format!(
                    "duplicate entity `{pk}`: also defined in `{}`{where_else} (two entities at one level may not share a key)",
                    tree.paths[fi]
                )),
            });
        }
    }
    for (i, file_pks) in &pks {
        let i = *i;
        let Some(a) = analyses[i] else { continue };
        for r in &a.refs {
            let kind = match tree.resolve(&r.value, i, r.ent, a, file_pks) {
                Ok(t) if found(&t, base, &own) => continue,
                Ok(target) => ProblemKind::Unresolved {
                    value: r.value.clone(),
                    target,
                },
                Err(m) => ProblemKind::Error(m),
            };
            problems.push(Problem {
                file: i,
                offset: r.offset,
                line: r.line,
                column: r.column,
                field: Some(r.field.clone()),
                kind,
            });
        }
        let file_dir = tree.dirs[tree.places[i].dir].path.as_str();
        for x in &a.ext {
            let message = match template::join_rel(file_dir, &x.path) {
                Ok(rel) if tree.file_set.contains(&rel) => continue,
                Ok(rel) => format!(
                    "externalized file `{}` does not exist (looked for `{rel}`)",
                    x.path
                ),
                Err(m) => format!("externalized file: {m}"),
            };
            problems.push(Problem {
                file: i,
                offset: x.offset,
                line: x.line,
                column: x.column,
                field: Some(x.field.clone()),
                kind: ProblemKind::Error(message),
            });
        }
    }
    for p in pending {
        if let ProblemKind::Unresolved { target, .. } = &p.kind {
            if found(target, None, &own) {
                continue;
            }
        }
        problems.push(p.clone());
    }
    drop(own);
    Checked { pks, problems }
}

/// The message for an unresolved reference.
pub(super) fn unresolved_message(value: &str, target: &str) -> String {
    let plain = strip_types(target);
    let shown = if target == value {
        String::new()
    } else {
        format!(" (`{plain}`)")
    };
    format!("reference `{value}`{shown} points at no entity in the project")
}
