//! JSON Schemas of the envelope and every payload, generated from the Rust
//! types into `proto/schemas/`. The test below fails when the committed files
//! drift from the types; `GANTRY_UPDATE_SCHEMAS=1 cargo test -p gantry-proto`
//! rewrites them.

use crate::{CloudEvent, EventName};

/// `(file name, pretty JSON)` for every schema Gantry publishes.
pub fn all() -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(EventName::ALL.len() + 1);
    let envelope = schemars::schema_for!(CloudEvent);
    out.push(("cloudevent.json".to_owned(), pretty(&envelope)));
    for name in EventName::ALL {
        let mut schema = name.data_schema();
        schema.insert(
            "$id".to_owned(),
            format!("https://gantry.dev/schemas/{}.json", name.as_str()).into(),
        );
        schema.insert("x-cloudevents-type".to_owned(), name.type_name().into());
        out.push((format!("{}.json", name.as_str()), pretty(&schema)));
    }
    out
}

fn pretty(schema: &schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("schemas are JSON");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn committed_schemas_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("GANTRY_UPDATE_SCHEMAS").is_some();
        let expected = super::all();
        let mut drift = Vec::new();
        for (file, content) in &expected {
            let path = dir.join(file);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            if on_disk != *content {
                if update {
                    std::fs::write(&path, content).unwrap();
                } else {
                    drift.push(file.clone());
                }
            }
        }
        // A schema file whose type is gone is drift too.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !expected.iter().any(|(f, _)| *f == name) {
                if update {
                    std::fs::remove_file(dir.join(&name)).unwrap();
                } else {
                    drift.push(name);
                }
            }
        }
        assert!(
            drift.is_empty(),
            "proto/schemas/ drifted from the Rust types in {drift:?}; \
             run `GANTRY_UPDATE_SCHEMAS=1 cargo test -p gantry-proto` and commit the result"
        );
    }
}
