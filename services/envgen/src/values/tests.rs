use serde_json::json;

use super::*;
use crate::template::{MapEnv, StageEnv};

fn src<'a>(name: &'a str, text: &'a str) -> Option<ValuesSource<'a>> {
    Some(ValuesSource { name, text })
}

#[test]
fn deep_merge_maps_recursively_and_replaces_the_rest() {
    let mut base = json!({"a": {"b": 1, "c": [1, 2], "d": {"e": "x"}}, "keep": true});
    deep_merge(
        &mut base,
        json!({"a": {"b": 2, "c": [3], "d": {"f": "y"}}, "new": null}),
    );
    assert_eq!(
        base,
        json!({"a": {"b": 2, "c": [3], "d": {"e": "x", "f": "y"}}, "keep": true, "new": null})
    );
    let mut base = json!({"a": {"b": 1}});
    deep_merge(&mut base, json!({"a": "scalar"}));
    assert_eq!(base, json!({"a": "scalar"}));
}

#[test]
fn project_and_overlay_merge() {
    let project =
        "db:\n  url: jdbc:mysql://localhost/db\n  user: scott\n  pool: 10\nflags: [a, b]\n";
    let overlay = "db:\n  url: jdbc:mysql://prod/db\nflags: [c]\n";
    let v = StageValues::load(
        src("values.yaml", project),
        src("environments/prod.yaml", overlay),
        &MapEnv::empty(),
    );
    assert!(v.diagnostics().is_empty(), "{:?}", v.diagnostics());
    assert_eq!(
        v.resolved(),
        &json!({"db": {"url": "jdbc:mysql://prod/db", "user": "scott", "pool": 10}, "flags": ["c"]})
    );
    assert_eq!(v.raw(), v.resolved());
}

#[test]
fn placeholders_in_values_keep_raw_and_resolve() {
    let project = "db:\n  host: {{ env \"DB_HOST\" }}\n  port: {{ env 'DB_PORT' '5432' }}\n  pw: '{{ base64 (env \"DB_PW\" \"changeme\") }}'\n  url: jdbc:pg://{{ env \"DB_HOST\" }}:5432/x\n  on: \"{{ env 'ON' 'false' }}\"\n";
    let env = MapEnv::from_pairs([("DB_HOST", "db.internal")]);
    let v = StageValues::load(src("values.yaml", project), None, &env);
    assert!(v.diagnostics().is_empty(), "{:?}", v.diagnostics());
    assert_eq!(
        v.resolved(),
        &json!({"db": {"host": "db.internal", "port": 5432, "pw": "Y2hhbmdlbWU=", "url": "jdbc:pg://db.internal:5432/x", "on": "false"}})
    );
    assert_eq!(v.raw()["db"]["host"], json!("{{ env \"DB_HOST\" }}"));
    assert_eq!(
        v.raw()["db"]["url"],
        json!("jdbc:pg://{{ env \"DB_HOST\" }}:5432/x")
    );
    assert!(v.secrets().contains(&"db.internal".to_string()));
    // The raw values write back with placeholders verbatim.
    let yaml = v.to_yaml();
    assert!(yaml.contains("host: '{{ env \"DB_HOST\" }}'"), "{yaml}");
    assert!(
        yaml.contains("port: \"{{ env 'DB_PORT' '5432' }}\""),
        "{yaml}"
    );
}

#[test]
fn overlay_env_and_file_references() {
    // The overlay is repository content: `env:NAME` is the stage's declared
    // variable, `file:` is refused (it would read Gantry's own files).
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret_file = dir.path().join("pw");
    std::fs::write(&secret_file, "file-secret-123\n").unwrap_or_else(|e| panic!("{e}"));
    let overlay = format!(
        "db:\n  password: env:DB_PASSWORD\n  key: file:{}\n  missing: env:NOT_SET\n  host: env:DB_HOST\n",
        secret_file.display()
    );
    let env = StageEnv::from_pairs(
        "test",
        [("DB_HOST", "db.test")],
        [("DB_PASSWORD", "hunter2hunter2")],
    );
    let v = StageValues::load(None, src("environments/test.yaml", &overlay), &env);
    assert_eq!(v.resolved()["db"]["password"], json!("hunter2hunter2"));
    assert_eq!(
        v.raw()["db"]["password"],
        json!("{{ env \"DB_PASSWORD\" }}")
    );
    assert_eq!(v.resolved()["db"]["host"], json!("db.test"));
    assert_eq!(v.resolved()["db"]["key"], json!(""), "the file is not read");
    assert!(v.secrets().contains(&"hunter2hunter2".to_string()));
    assert!(
        !v.secrets().contains(&"db.test".to_string()),
        "a literal is no secret"
    );
    assert!(
        !format!("{:?} {:?}", v.raw(), v.diagnostics()).contains("file-secret-123"),
        "nothing of the file reaches the package or a message"
    );
    assert_eq!(v.diagnostics().len(), 2, "{:?}", v.diagnostics());
    let file = &v.diagnostics()[0];
    assert_eq!(file.line, Some(3));
    assert_eq!(file.field.as_deref(), Some("db.key"));
    assert!(
        file.message.contains("not allowed in repository content"),
        "{}",
        file.message
    );
    assert!(file.message.contains("stage's `env`"), "{}", file.message);
    let d = &v.diagnostics()[1];
    assert_eq!(d.file.as_deref(), Some("environments/test.yaml"));
    assert_eq!(d.line, Some(4));
    assert_eq!(d.field.as_deref(), Some("db.missing"));
    assert!(
        d.message
            .contains("`NOT_SET` is not declared for stage `test`"),
        "{}",
        d.message
    );
    assert!(d.message.contains("stages[].env"), "{}", d.message);
}

/// Gantry's own environment is out of reach of repository content, whatever
/// the placeholder: a variable every process has (PATH) is not declared.
#[test]
fn gantrys_environment_is_not_reachable() {
    let env = StageEnv::from_pairs("test", [], []);
    let v = StageValues::load(
        src(
            "values.yaml",
            "a: '{{ env \"PATH\" }}'\nb: '{{ env \"PATH\" \"none\" }}'\n",
        ),
        src("environments/test.yaml", "c: env:PATH\n"),
        &env,
    );
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(!path.is_empty());
    assert!(!v.resolved().to_string().contains(&path));
    assert_eq!(v.resolved()["b"], json!("none"), "a default applies");
    assert_eq!(v.diagnostics().len(), 2, "{:?}", v.diagnostics());
    assert!(v
        .diagnostics()
        .iter()
        .all(|d| d.message.contains("`PATH` is not declared")));
}

#[test]
fn problems_in_values_are_located() {
    let v = StageValues::load(
        src(
            "values.yaml",
            "a: 1\nb: {{ env \"NOPE\" }}\nc: {{ other.value }}\n",
        ),
        None,
        &MapEnv::empty(),
    );
    let lines: Vec<Option<u32>> = v.diagnostics().iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![Some(2), Some(3)], "{:?}", v.diagnostics());
    assert!(v.diagnostics()[0].message.contains("`NOPE` is not set"));
    assert!(v.diagnostics()[1]
        .message
        .contains("cannot refer to other values"));

    let v = StageValues::load(src("values.yaml", "a: 1\n  b: 2\n"), None, &MapEnv::empty());
    assert_eq!(v.diagnostics().len(), 1);
    assert_eq!(v.diagnostics()[0].line, Some(2));
    assert!(v.diagnostics()[0].message.starts_with("invalid YAML"));

    let v = StageValues::load(src("values.yaml", "a: 1\na: 2\n"), None, &MapEnv::empty());
    assert!(v.diagnostics()[0].message.contains("duplicate key `a`"));
    assert_eq!(v.diagnostics()[0].line, Some(2));

    let v = StageValues::load(
        src("values.yaml", "x: 1\n{{#if a}}\ny: 2\n{{/if}}\n"),
        None,
        &MapEnv::empty(),
    );
    assert!(v.diagnostics()[0]
        .message
        .contains("not supported in values files"));
    assert_eq!(v.diagnostics()[0].line, Some(2));
}

#[test]
fn digest_is_canonical() {
    let a = StageValues::load(
        src("values.yaml", "b: 1\na: {x: 1, y: [1, 2]}\n"),
        None,
        &MapEnv::empty(),
    );
    let b = StageValues::load(
        src("values.yaml", "a:\n  y: [1, 2]\n  x: 1\nb: 1\n"),
        None,
        &MapEnv::empty(),
    );
    assert_eq!(a.digest(), b.digest());
    assert!(a.digest().starts_with("sha256:"));
    assert_eq!(a.digest().len(), 7 + 64);
    assert_eq!(canonical_json(a.raw()), r#"{"a":{"x":1,"y":[1,2]},"b":1}"#);
    let c = StageValues::load(
        src("values.yaml", "b: 2\na: {x: 1, y: [1, 2]}\n"),
        None,
        &MapEnv::empty(),
    );
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn yaml_output_round_trips() {
    let v = json!({"a": {"s": "plain", "n": 1, "t": "true", "e": "", "q": "it's: here", "l": ["x", 2], "m": {}}, "z": null});
    let text = to_yaml(&v);
    let back = StageValues::load(src("values.yaml", &text), None, &MapEnv::empty());
    assert!(
        back.diagnostics().is_empty(),
        "{text}\n{:?}",
        back.diagnostics()
    );
    assert_eq!(back.raw(), &v, "{text}");
}

// Found by fuzz/values: a placeholder string with line breaks was written
// in single quotes, where YAML folds them (n breaks read back as n - 1).
#[test]
fn yaml_output_keeps_line_breaks_beside_placeholders() {
    for s in [
        "\n\napi_key\n\nurl: other li  secret{{ env \"X\" }}",
        "a\n{{ env \"X\" }}\n",
        "it's\t{{ env 'X' }}\r\n\"q\" \\",
        // Found by fuzz/values too: both quotes, and a `'` inside the placeholder.
        "{{ env \"it''s\" }}",
    ] {
        let v = json!({ "db": { "url": s } });
        let text = to_yaml(&v);
        let back = StageValues::load(src("values.yaml", &text), None, &MapEnv::empty());
        assert_eq!(back.raw(), &v, "{text}");
    }
}

#[test]
fn from_value_resolves_strings() {
    let v = StageValues::from_value(
        json!({"a": "{{ env \"X\" \"d\" }}", "b": ["{{ base64 \"x\" }}"]}),
        &MapEnv::empty(),
    );
    assert_eq!(v.resolved(), &json!({"a": "d", "b": ["eA=="]}));
    assert!(v.diagnostics().is_empty());
}

/// Found by fuzz/values: a `{{!` comment opened in one value and closed in
/// the next loaded, and written back with sorted keys no longer did.
#[test]
fn a_placeholder_may_not_run_over_a_line_end() {
    for (text, line) in [
        (
            "db/:\n  url: \"{{!mnvEVenv:t2rateg\"\n  pw: envEVenv:TOdqUS{{ mnv}}aINA9oWsli:st []\n",
            2,
        ),
        ("a: \"{{ env\n  'X' }}\"\n", 1),
    ] {
        let v = StageValues::load(src("values.yaml", text), None, &MapEnv::empty());
        let d = v.diagnostics();
        assert_eq!(d.len(), 1, "{text}: {d:?}");
        assert!(d[0].message.contains("must end on the line"), "{d:?}");
        assert_eq!(d[0].line, Some(line), "{d:?}");
    }
    // On one line a comment is fine.
    let v = StageValues::load(
        src("values.yaml", "a: x{{! note }}y\n"),
        None,
        &MapEnv::empty(),
    );
    assert!(v.diagnostics().is_empty(), "{:?}", v.diagnostics());
    assert_eq!(v.raw(), &json!({ "a": "x{{! note }}y" }));
}

// Found by fuzz/values: a key whose quoted form is longer than 1024
// characters, YAML's limit for an implicit key, was written as one; it
// read back as nothing. Such keys are written explicitly (`? key`).
#[test]
fn keys_longer_than_yaml_allows_implicitly_read_back() {
    let quoted = format!("#{}", "a\\".repeat(600));
    let plain = "k".repeat(1500);
    for key in [quoted.as_str(), plain.as_str(), "short"] {
        for value in [json!("v"), json!({ "child": 1 }), json!([1, 2]), json!({})] {
            let v = json!({ "outer": { key: value.clone() }, key: value });
            let text = to_yaml(&v);
            let back = StageValues::load(src("values.yaml", &text), None, &MapEnv::empty());
            assert!(
                back.diagnostics().is_empty(),
                "{:?}\n{text}",
                back.diagnostics()
            );
            assert_eq!(back.raw(), &v, "{text}");
        }
    }
}

// Found by fuzz/values: `{{! #nv }}` in a plain value is a whole comment to
// the placeholder scan, but YAML ends the value at ` #`, leaving `{{!`
// unclosed; written back, the value no longer loaded. Now it is refused,
// naming the value.
#[test]
fn a_tag_cut_by_a_yaml_comment_is_refused() {
    let text = "db:\n  url:\"?{{! #nv \"\" }}\"w: e\n";
    let sv = StageValues::load(src("values.yaml", text), None, &MapEnv::empty());
    let d = sv.diagnostics();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("cuts a placeholder"), "{d:?}");
    assert_eq!(d[0].field.as_deref(), Some("db"), "{d:?}");
    let back = StageValues::load(
        src("values.yaml", &to_yaml(sv.raw())),
        None,
        &MapEnv::empty(),
    );
    assert_eq!(back.raw(), sv.raw());
    // Cut between a key and its value by `: `: the key is refused too.
    let split = "dmb:\n  k {{!/ x: y }}\n";
    let sv = StageValues::load(src("values.yaml", split), None, &MapEnv::empty());
    assert!(
        sv.diagnostics()
            .iter()
            .any(|d| d.message.contains("in this key")),
        "{:?}",
        sv.diagnostics()
    );
    let back = StageValues::load(
        src("values.yaml", &to_yaml(sv.raw())),
        None,
        &MapEnv::empty(),
    );
    assert_eq!(back.raw(), sv.raw());
    // Quoted, the same comment is whole and the value loads.
    let quoted = "db:\n  url: \"x{{! #nv }}y\"\n";
    let sv = StageValues::load(src("values.yaml", quoted), None, &MapEnv::empty());
    assert!(sv.diagnostics().is_empty(), "{:?}", sv.diagnostics());
}

// Found by fuzz/template: a values file holding Gantry's own placeholder
// token text, malformed (`__gantry_ph_12ȥ`), panicked slicing inside a
// character. The token text is reserved and refused with its line.
#[test]
fn the_placeholder_token_text_is_reserved() {
    for text in [
        "a: __gantry_ph_12\u{225}x\n",
        "a: __gantry_ph_0__\nb: '{{ env \"X\" }}'\n",
    ] {
        let sv = StageValues::load(src("values.yaml", text), None, &MapEnv::empty());
        let d = sv.diagnostics();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].message.contains("reserved"), "{d:?}");
    }
}

// Found by fuzz/values: a key `... \ ...` (from a flow mapping) was written
// as a plain scalar at a line's start, where `...` ends the document.
#[test]
fn strings_starting_with_the_document_end_marker_are_quoted() {
    for text in ["{...\n\\\n...}\n", "a: '... x'\n", "'...': 1\n"] {
        let sv = StageValues::load(src("values.yaml", text), None, &MapEnv::empty());
        assert!(
            sv.diagnostics().is_empty(),
            "{text:?}: {:?}",
            sv.diagnostics()
        );
        let written = to_yaml(sv.raw());
        let back = StageValues::load(src("values.yaml", &written), None, &MapEnv::empty());
        assert_eq!(back.raw(), sv.raw(), "{written}");
    }
}
