//! The entity type model of a YAML Entity Store project (`META-INF/types/`).
//!
//! Each type is one file; the directory nesting is the inheritance chain
//! (`Entity/URIHandler/XMLFirewall.yaml` is an `XMLFirewall`, which is a
//! `URIHandler`, which is an `Entity`). A type declares `fields` (a field whose
//! type starts with `@` is a reference to another entity) and may declare
//! `keyFields`; both are inherited.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::yaml;

/// What the validator needs to know about one type, inheritance applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeInfo {
    /// Fields whose values form the entity's key (default: `name`).
    pub key_fields: Vec<String>,
    /// Every field the type (or an ancestor) declares.
    pub fields: HashSet<String>,
    /// Fields that hold references to other entities.
    pub refs: HashSet<String>,
}

/// All types of a project.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeModel {
    types: HashMap<String, TypeInfo>,
}

struct Raw {
    parent: Option<String>,
    key_fields: Option<Vec<String>>,
    fields: Vec<(String, bool)>,
}

impl TypeModel {
    /// Build from `(path relative to META-INF/types, file text)` pairs.
    /// Returns the model and a message per file that could not be read.
    pub fn build<'a, I: IntoIterator<Item = (&'a str, &'a str)>>(
        files: I,
    ) -> (TypeModel, Vec<(String, String)>) {
        let mut raw: HashMap<String, Raw> = HashMap::new();
        let mut problems = Vec::new();
        for (rel, text) in files {
            let parsed = match yaml::parse(text) {
                Ok(Some(n)) => yaml::to_json(&n).map_err(|(_, m)| m),
                Ok(None) => Err("empty type file".to_string()),
                Err(e) => Err(format!("invalid YAML at line {}: {}", e.line, e.message)),
            };
            let v = match parsed {
                Ok(v) => v,
                Err(m) => {
                    problems.push((rel.to_string(), m));
                    continue;
                }
            };
            let file_stem = rel
                .rsplit('/')
                .next()
                .unwrap_or(rel)
                .trim_end_matches(".yaml");
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(file_stem)
                .to_string();
            let mut dirs: Vec<&str> = rel.split('/').collect();
            dirs.pop();
            let parent = dirs.last().map(|s| s.to_string());
            let key_fields = v.get("keyFields").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            });
            let fields = v
                .get("fields")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, f)| {
                            let is_ref = f
                                .get("type")
                                .and_then(Value::as_str)
                                .is_some_and(|t| t.starts_with('@'));
                            (k.clone(), is_ref)
                        })
                        .collect()
                })
                .unwrap_or_default();
            raw.insert(
                name,
                Raw {
                    parent,
                    key_fields,
                    fields,
                },
            );
        }
        let mut types = HashMap::with_capacity(raw.len());
        for name in raw.keys() {
            let mut info = TypeInfo::default();
            let mut chain = Vec::new();
            let mut cur = Some(name.as_str());
            while let Some(n) = cur {
                if chain.contains(&n) || chain.len() > 64 {
                    break;
                }
                chain.push(n);
                cur = raw.get(n).and_then(|r| r.parent.as_deref());
            }
            for n in &chain {
                let Some(r) = raw.get(*n) else { continue };
                if info.key_fields.is_empty() {
                    if let Some(k) = &r.key_fields {
                        info.key_fields = k.clone();
                    }
                }
                for (f, is_ref) in &r.fields {
                    info.fields.insert(f.clone());
                    if *is_ref {
                        info.refs.insert(f.clone());
                    }
                }
            }
            if info.key_fields.is_empty() {
                info.key_fields.push("name".to_string());
            }
            types.insert(name.clone(), info);
        }
        (TypeModel { types }, problems)
    }

    pub fn get(&self, name: &str) -> Option<&TypeInfo> {
        self.types.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inheritance_of_keys_and_references() {
        let (m, problems) = TypeModel::build([
            ("Entity.yaml", "name: Entity\nabstract: true\n"),
            ("Entity/URIHandler.yaml", "name: URIHandler\nfields:\n  uriprefix: {type: string}\n  corsProfile: {type: '@CORS'}\nkeyFields: [uriprefix, httpMethod]\n"),
            ("Entity/URIHandler/XMLFirewall.yaml", "name: XMLFirewall\nfields:\n  filterCircuit: {type: '@FilterCircuit'}\n"),
            ("Entity/Broken.yaml", "name: [\n"),
        ]);
        assert_eq!(problems.len(), 1);
        let Some(x) = m.get("XMLFirewall") else {
            panic!("no type")
        };
        assert_eq!(x.key_fields, vec!["uriprefix", "httpMethod"]);
        assert!(x.refs.contains("filterCircuit") && x.refs.contains("corsProfile"));
        assert!(x.fields.contains("uriprefix") && !x.refs.contains("uriprefix"));
        assert_eq!(
            m.get("Entity").map(|e| e.key_fields.clone()),
            Some(vec!["name".to_string()])
        );
    }
}
