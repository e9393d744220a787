use super::*;

const IMG: &str = "registry.example.com/apim/banking-gateway@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn set(text: &str, key: &str, value: &str) -> (String, bool) {
    set_yaml_key(text, key, value).unwrap_or_else(|e| panic!("{e}\n--- text:\n{text}"))
}

fn err(text: &str, key: &str) -> EditError {
    match set_yaml_key(text, key, IMG) {
        Ok((out, _)) => panic!("expected an error, got:\n{out}"),
        Err(e) => e,
    }
}

fn line_of(e: &EditError) -> usize {
    match e {
        EditError::Unsupported { line, .. } => *line,
        other => panic!("not an Unsupported error: {other}"),
    }
}

/// The lines that differ between `a` and `b`, which must have as many lines.
fn changed_lines(a: &str, b: &str) -> Vec<(usize, String, String)> {
    let la: Vec<&str> = a.split_inclusive('\n').collect();
    let lb: Vec<&str> = b.split_inclusive('\n').collect();
    assert_eq!(la.len(), lb.len(), "line counts differ:\n{a}\n---\n{b}");
    la.iter()
        .zip(&lb)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i + 1, x.to_string(), y.to_string()))
        .collect()
}

const VALUES: &str = "\
# Values for the test environment.
# Managed partly by Gantry: only apitraffic.image is written by it.

global:
  domainName: test.example.com   # the ingress domain
  imagePullSecrets: []

apitraffic:
  enabled: true
  # The image: set by Gantry on every deploy.
  image: registry.example.com/apim/banking-gateway:old # current release
  replicas: 2
  resources:
    limits:
      cpu: \"2\"
      memory: 2Gi

anm:
  image: registry.example.com/axway/anm:7.7   # not ours
";

#[test]
fn replaces_only_the_scalar_and_keeps_the_comment() {
    let (out, changed) = set(VALUES, "apitraffic.image", IMG);
    assert!(changed);
    let diff = changed_lines(VALUES, &out);
    assert_eq!(
        diff,
        vec![(
            11,
            "  image: registry.example.com/apim/banking-gateway:old # current release\n".into(),
            format!("  image: {IMG} # current release\n"),
        )]
    );
}

#[test]
fn same_value_is_no_change() {
    let (out, _) = set(VALUES, "apitraffic.image", IMG);
    let (again, changed) = set(&out, "apitraffic.image", IMG);
    assert!(!changed);
    assert_eq!(again, out);
}

#[test]
fn same_value_in_quotes_is_no_change() {
    let text = format!("apitraffic:\n  image: \"{IMG}\"\n");
    let (out, changed) = set(&text, "apitraffic.image", IMG);
    assert!(!changed);
    assert_eq!(out, text);
    let text = format!("apitraffic:\n  image: '{IMG}'  # pinned\n");
    let (out, changed) = set(&text, "apitraffic.image", IMG);
    assert!(!changed);
    assert_eq!(out, text);
}

#[test]
fn other_key_with_same_leaf_name_is_untouched() {
    let (out, _) = set(VALUES, "anm.image", "x/y@sha256:ab");
    let diff = changed_lines(VALUES, &out);
    assert_eq!(diff.len(), 1);
    assert_eq!(diff[0].0, 19);
    assert_eq!(diff[0].2, "  image: x/y@sha256:ab   # not ours\n");
}

#[test]
fn top_level_key() {
    let text = "image: old\nother: 1\n";
    let (out, changed) = set(text, "image", "new");
    assert!(changed);
    assert_eq!(out, "image: new\nother: 1\n");
}

#[test]
fn three_levels_deep() {
    let text = "\
a:
  b:
    x: 1
    c: old   # keep
    y: 2
  c: other
c: top
";
    let (out, _) = set(text, "a.b.c", "new");
    assert_eq!(
        out,
        "\
a:
  b:
    x: 1
    c: new   # keep
    y: 2
  c: other
c: top
"
    );
}

#[test]
fn keeps_crlf_line_endings() {
    let text = "# c\r\napitraffic:\r\n  image: old\r\n  replicas: 1\r\n";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(
        out,
        "# c\r\napitraffic:\r\n  image: new\r\n  replicas: 1\r\n"
    );
}

#[test]
fn crlf_insertion_uses_crlf() {
    let text = "apitraffic:\r\n  replicas: 1\r\n";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(out, "apitraffic:\r\n  replicas: 1\r\n  image: new\r\n");
}

#[test]
fn keeps_a_missing_final_newline() {
    let (out, _) = set("a:\n  image: old", "a.image", "new");
    assert_eq!(out, "a:\n  image: new");
    let (out, _) = set("a:\n  replicas: 1", "a.image", "new");
    assert_eq!(out, "a:\n  replicas: 1\n  image: new");
}

#[test]
fn keeps_a_byte_order_mark() {
    let (out, _) = set("\u{feff}a:\n  image: old\n", "a.image", "new");
    assert_eq!(out, "\u{feff}a:\n  image: new\n");
}

#[test]
fn double_quoted_stays_double_quoted() {
    let (out, _) = set("a:\n  image: \"old\" # c\n", "a.image", IMG);
    assert_eq!(out, format!("a:\n  image: \"{IMG}\" # c\n"));
}

#[test]
fn single_quoted_stays_single_quoted() {
    let (out, _) = set("a:\n  image: 'old'\n", "a.image", "it's");
    assert_eq!(out, "a:\n  image: 'it''s'\n");
}

#[test]
fn quoted_values_with_hash_and_escapes_are_read_right() {
    // The `#` inside quotes is not a comment.
    let text = "a:\n  image: \"x # y\" # real comment\n";
    let (out, changed) = set(text, "a.image", "x # y");
    assert!(!changed, "{out}");
    let (out, _) = set(text, "a.image", "z");
    assert_eq!(out, "a:\n  image: \"z\" # real comment\n");
    let text = "a:\n  image: \"x\\\"y\\u0041\"\n";
    let (_, changed) = set(text, "a.image", "x\"yA");
    assert!(!changed);
}

#[test]
fn plain_values_that_need_quotes_get_them() {
    for (value, expected) in [
        ("true", "\"true\""),
        ("123", "\"123\""),
        ("1.5", "\"1.5\""),
        ("null", "\"null\""),
        ("~", "\"~\""),
        ("a: b", "\"a: b\""),
        ("a #b", "\"a #b\""),
        ("*x", "\"*x\""),
        ("- x", "\"- x\""),
        ("", "\"\""),
        (" lead", "\" lead\""),
        ("two\nlines", "\"two\\nlines\""),
        ("say \"hi\"", "say \"hi\""),
        ("127.0.0.1:5000/gw@sha256:ab", "127.0.0.1:5000/gw@sha256:ab"),
        ("oci:/var/lib/x@sha256:ab", "oci:/var/lib/x@sha256:ab"),
    ] {
        let (out, _) = set("a: old\n", "a", value);
        assert_eq!(out, format!("a: {expected}\n"), "value {value:?}");
    }
}

#[test]
fn plain_hash_without_space_is_part_of_the_value() {
    let (out, changed) = set("a: x#y\n", "a", "x#y");
    assert!(!changed, "{out}");
}

#[test]
fn empty_value_gets_set() {
    let (out, _) = set("a:\n  image:\n  b: 1\n", "a.image", "new");
    assert_eq!(out, "a:\n  image: new\n  b: 1\n");
    let (out, _) = set("a:\n  image:   # set by gantry\n", "a.image", "new");
    assert_eq!(out, "a:\n  image: new # set by gantry\n");
    let (out, _) = set("a:\n  image: ~\n", "a.image", "new");
    assert_eq!(out, "a:\n  image: new\n");
}

#[test]
fn missing_leaf_is_inserted_with_the_siblings_indentation() {
    let text = "\
apitraffic:
    enabled: true
    resources:
        cpu: 1
    # trailing comment of the block

other: 1
";
    let (out, changed) = set(text, "apitraffic.image", "new");
    assert!(changed);
    assert_eq!(
        out,
        "\
apitraffic:
    enabled: true
    resources:
        cpu: 1
    # trailing comment of the block
    image: new

other: 1
"
    );
}

#[test]
fn missing_leaf_under_an_empty_parent() {
    let text = "apitraffic:\nother: 1\n";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(out, "apitraffic:\n  image: new\nother: 1\n");
    // The file's indentation unit is used.
    let text = "x:\n    y: 1\napitraffic:\nother: 1\n";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(out, "x:\n    y: 1\napitraffic:\n    image: new\nother: 1\n");
}

#[test]
fn missing_parent_is_appended_at_the_end() {
    let text = "# header\nglobal:\n  a: 1\n# footer\n";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(
        out,
        "# header\nglobal:\n  a: 1\n# footer\napitraffic:\n  image: new\n"
    );
}

#[test]
fn missing_middle_levels_are_created_inside_the_existing_parent() {
    let text = "a:\n  x: 1\nz: 2\n";
    let (out, _) = set(text, "a.b.c", "new");
    assert_eq!(out, "a:\n  x: 1\n  b:\n    c: new\nz: 2\n");
}

#[test]
fn empty_file_and_document_markers() {
    let (out, _) = set("", "a.b", "v");
    assert_eq!(out, "a:\n  b: v\n");
    let (out, _) = set("---\n", "a", "v");
    assert_eq!(out, "---\na: v\n");
    let (out, _) = set("%YAML 1.2\n---\na: 1\n...\n", "b", "v");
    assert_eq!(out, "%YAML 1.2\n---\na: 1\nb: v\n...\n");
    let (out, _) = set("--- # doc\na:\n  b: old\n", "a.b", "v");
    assert_eq!(out, "--- # doc\na:\n  b: v\n");
}

#[test]
fn several_documents_are_refused() {
    let e = err("a: 1\n---\nb: 2\n", "a");
    assert_eq!(line_of(&e), 2);
    let e = err("a: 1\n...\nb: 2\n", "a");
    assert_eq!(line_of(&e), 3);
}

#[test]
fn quoted_keys_match() {
    let text = "\"apitraffic\":\n  'image': old\n";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(out, "\"apitraffic\":\n  'image': new\n");
}

#[test]
fn keys_with_odd_names_are_inserted_quoted() {
    let (out, _) = set("a: 1\n", "true", "v");
    assert_eq!(out, "a: 1\n\"true\": v\n");
}

#[test]
fn list_items_are_out_of_scope() {
    let text = "a:\n  - image: old\n";
    let e = err(text, "a.image");
    assert_eq!(line_of(&e), 2);
    assert!(e.to_string().contains("list"), "{e}");
    let e = err("a:\n- x\n- y\n", "a");
    assert_eq!(line_of(&e), 1);
    assert!(e.to_string().contains("list"), "{e}");
    let e = err("a:\n  image:\n    - x\n", "a.image");
    assert!(e.to_string().contains("list"), "{e}");
    let e = err("- a: 1\n", "a");
    assert!(e.to_string().contains("list"), "{e}");
}

#[test]
fn flow_styles_are_refused() {
    let e = err("a: {image: old}\n", "a.image");
    assert_eq!(line_of(&e), 1);
    assert!(e.to_string().contains("flow"), "{e}");
    let e = err("a:\n  image: [x]\n", "a.image");
    assert_eq!(line_of(&e), 2);
    let e = err("{a: 1}\n", "a");
    assert!(e.to_string().contains("flow"), "{e}");
}

#[test]
fn anchors_aliases_and_tags_are_refused() {
    let e = err("a: &base\n  image: old\n", "a.image");
    assert!(e.to_string().contains("anchor"), "{e}");
    let e = err("a:\n  image: &i old\n", "a.image");
    assert_eq!(line_of(&e), 2);
    let e = err("x: &i old\na:\n  image: *i\n", "a.image");
    assert!(e.to_string().contains("alias"), "{e}");
    let e = err("a:\n  image: !!str old\n", "a.image");
    assert!(e.to_string().contains("tag"), "{e}");
}

#[test]
fn anchors_elsewhere_are_fine() {
    let text = "base: &b\n  x: 1\na:\n  <<: *b\n  image: old\n";
    let (out, _) = set(text, "a.image", "new");
    assert_eq!(out, "base: &b\n  x: 1\na:\n  <<: *b\n  image: new\n");
}

#[test]
fn block_scalars_are_refused() {
    let e = err("a:\n  image: |\n    old\n", "a.image");
    assert_eq!(line_of(&e), 2);
    assert!(e.to_string().contains("block scalar"), "{e}");
    let e = err("a: >-\n  text\n", "a.image");
    assert!(e.to_string().contains("block scalar"), "{e}");
}

#[test]
fn block_scalars_elsewhere_do_not_confuse_the_search() {
    let text = "\
notes: |
  image: not-a-key
  a:
    image: also text
a:
  image: old
";
    let (out, _) = set(text, "a.image", "new");
    assert_eq!(out, text.replace("  image: old", "  image: new"));
}

#[test]
fn multi_line_scalars_are_refused() {
    let e = err("a:\n  image: first\n    second\n", "a.image");
    assert!(e.to_string().contains("multi-line"), "{e}");
    let e = err("a:\n  image: \"first\n    second\"\n", "a.image");
    assert!(e.to_string().contains("multi-line"), "{e}");
    let e = err("a:\n  image:\n    value-below\n", "a.image");
    assert!(e.to_string().contains("following lines"), "{e}");
}

#[test]
fn mapping_at_the_leaf_is_refused() {
    let e = err("a:\n  image:\n    repository: x\n", "a.image");
    assert_eq!(line_of(&e), 2);
    assert!(e.to_string().contains("mapping"), "{e}");
}

#[test]
fn scalar_on_the_path_is_refused() {
    let e = err("a: scalar\n", "a.image");
    assert_eq!(line_of(&e), 1);
    assert!(e.to_string().contains("scalar"), "{e}");
}

#[test]
fn tabs_in_indentation_are_refused() {
    let e = err("a:\n\timage: old\n", "a.image");
    assert_eq!(line_of(&e), 2);
    assert!(e.to_string().contains("tab"), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = err("a:\n  image: x\n  image: y\n", "a.image");
    assert_eq!(line_of(&e), 3);
    assert!(e.to_string().contains("duplicate"), "{e}");
}

#[test]
fn inconsistent_indentation_is_refused() {
    let e = err("a:\n    b: 1\n  image: x\n", "a.image");
    assert_eq!(line_of(&e), 3);
}

#[test]
fn bad_keys_are_refused() {
    for key in ["", "a..b", ".a", "a.", " a"] {
        assert!(
            matches!(
                set_yaml_key("a: 1\n", key, "v"),
                Err(EditError::BadKey { .. })
            ),
            "{key:?}"
        );
    }
}

// Found by fuzz/yaml_edit: setting `<<` wrote `<<: ""`, a merge of a
// string, which YAML parsers refuse.
#[test]
fn the_merge_key_is_not_a_key_to_set() {
    for (text, key) in [
        ("", "<<"),
        ("a: 1\n", "a.<<"),
        ("a:\n  <<: {b: 1}\n", "a.<<.b"),
    ] {
        match set_yaml_key(text, key, "v") {
            Err(EditError::BadKey { reason, .. }) => {
                assert!(reason.contains("merge key"), "{reason}")
            }
            other => panic!("{key:?} in {text:?}: {other:?}"),
        }
    }
    // Quoted in a file or part of a longer name, `<<` is just text.
    assert!(set_yaml_key("a: 1\n", "a<<b", "v").is_ok());
}

#[test]
fn errors_name_the_key_and_line() {
    let e = err("a:\n  image: |\n    old\n", "a.image");
    let msg = e.to_string();
    assert!(msg.starts_with("line 2: cannot set `a.image`"), "{msg}");
}

#[test]
fn unrelated_odd_lines_at_other_levels_are_ignored() {
    let text = "\
list:
  - one
  - {two: 2}
flow: {a: [1, 2]}
text: >
  folded
apitraffic:
  image: old
";
    let (out, _) = set(text, "apitraffic.image", "new");
    assert_eq!(out, text.replace("image: old", "image: new"));
}

#[test]
fn keys_containing_colons_and_urls() {
    let text = "a:\n  url: http://x:80/y # c\n  image: old\n";
    let (out, _) = set(text, "a.url", "http://z:81/");
    assert_eq!(out, "a:\n  url: http://z:81/ # c\n  image: old\n");
}

#[test]
fn deeper_comments_before_a_sibling_stay_put() {
    let text = "a:\n  x: 1\n# top-level comment\nb: 2\n";
    let (out, _) = set(text, "a.image", "v");
    assert_eq!(out, "a:\n  x: 1\n  image: v\n# top-level comment\nb: 2\n");
}

#[test]
fn round_trip_with_a_yaml_parser() {
    let (out, _) = set(VALUES, "apitraffic.image", IMG);
    let (out, _) = set(&out, "apitraffic.pull.policy", "Always");
    let (out, _) = set(&out, "newtop.image", "yes");
    let v: serde_json::Value = serde_json::from_str(&yaml_to_json(&out)).unwrap();
    assert_eq!(v["apitraffic"]["image"], IMG);
    assert_eq!(v["apitraffic"]["pull"]["policy"], "Always");
    assert_eq!(v["apitraffic"]["replicas"], 2);
    assert_eq!(v["newtop"]["image"], "yes");
    assert_eq!(v["anm"]["image"], "registry.example.com/axway/anm:7.7");
}

/// A tiny YAML-subset reader for the round-trip test (block mappings of
/// scalars), independent of the editor's own parsing.
fn yaml_to_json(text: &str) -> String {
    let mut root = serde_json::Map::new();
    let mut stack: Vec<(usize, Vec<String>)> = vec![];
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = line.len() - t.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let (k, v) = t.split_once(':').unwrap();
        let mut path = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
        path.push(k.trim().to_owned());
        let v = v.split(" #").next().unwrap().trim();
        let mut m = &mut root;
        for p in &path[..path.len() - 1] {
            m = m
                .entry(p.clone())
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .unwrap();
        }
        if v.is_empty() {
            m.insert(path.last().unwrap().clone(), serde_json::json!({}));
            stack.push((indent, path));
        } else {
            let val = if let Ok(n) = v.parse::<i64>() {
                serde_json::json!(n)
            } else {
                serde_json::json!(v.trim_matches('"'))
            };
            m.insert(path.last().unwrap().clone(), val);
        }
    }
    serde_json::Value::Object(root).to_string()
}

/// The value read back by a real YAML parser (serde-saphyr) at `path`.
fn parsed_at(text: &str, path: &[&str]) -> serde_json::Value {
    let v: serde_json::Value =
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n--- text:\n{text}"));
    path.iter().fold(v, |v, k| v[*k].clone())
}

#[test]
fn a_yaml_parser_reads_back_exactly_the_value_set() {
    let tricky = [
        IMG,
        "127.0.0.1:5000/gw@sha256:ab",
        "true",
        "no",
        "~",
        "null",
        "0x1F",
        "1e3",
        "012",
        "1_000",
        "-",
        "- item",
        "a: b",
        "x #y",
        "#hash",
        "it's",
        "say \"hi\"",
        "back\\slash",
        " padded ",
        "",
        "tab\there",
        "two\nlines",
        "{not: flow}",
        "[not, flow]",
        "&anchor",
        "*alias",
        "!tag",
        "|",
        ">",
        "%",
        "@at",
        "`tick",
        "ünïcødé",
        "ends with colon:",
    ];
    let bases = [
        "apitraffic:\n  image: old # c\n",
        "apitraffic:\n  image: \"old\"\n",
        "apitraffic:\n  image: 'old'\n",
        "apitraffic:\n  image:\n",
        "apitraffic:\n  other: 1\n",
        "other: 1\n",
    ];
    for base in bases {
        for value in tricky {
            let (out, _) = set(base, "apitraffic.image", value);
            assert_eq!(
                parsed_at(&out, &["apitraffic", "image"]),
                serde_json::Value::String(value.to_owned()),
                "value {value:?} in\n{out}"
            );
            // And setting it again is no change.
            let (again, changed) = set(&out, "apitraffic.image", value);
            assert!(!changed, "value {value:?} changed again:\n{again}");
        }
    }
}

#[test]
fn the_edited_values_file_parses_to_the_same_data_but_the_image() {
    let (out, _) = set(VALUES, "apitraffic.image", IMG);
    let mut before: serde_json::Value = serde_saphyr::from_str(VALUES).unwrap();
    let after: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
    before["apitraffic"]["image"] = serde_json::Value::String(IMG.into());
    assert_eq!(before, after);
}

// Found by fuzz/yaml_edit: U+FFFE and U+FFFF, outside YAML's printable set,
// were written as they are, and the edited file was no longer YAML.
#[test]
fn unprintable_characters_are_escaped() {
    for (old, style) in [("old", "plain"), ("\"old\"", "double"), ("'old'", "single")] {
        let (out, _) = set(&format!("a: {old}\n"), "a", "\u{ffff}-\u{fffe}");
        assert_eq!(out, "a: \"\\uffff-\\ufffe\"\n", "{style}");
    }
    let (out, _) = set("", "a", "\u{ffff}");
    assert_eq!(out, "a: \"\\uffff\"\n");
}

// Found by fuzz/yaml_edit: a missing key was inserted however long, but
// YAML allows implicit keys of at most 1024 characters.
#[test]
fn keys_longer_than_yaml_allows_are_refused() {
    let long = "k".repeat(1025);
    assert!(matches!(err("", &long), EditError::BadKey { .. }));
    // Escapes count: 200 control characters are 1200 written.
    let escaped = "\u{5}".repeat(200);
    assert!(matches!(err("a: 1\n", &escaped), EditError::BadKey { .. }));
    let (out, _) = set("", &"k".repeat(1024), "v");
    assert_eq!(out, format!("{}: v\n", "k".repeat(1024)));
}

// Found by fuzz/yaml_edit: YAML reads a lone CR as a line break, so a `...`
// after one ended the document, and the key inserted after it started a
// second document.
#[test]
fn a_lone_carriage_return_is_refused() {
    let e = err("a: 1\nb: 2 \r...\n", "c");
    assert_eq!(line_of(&e), 2);
    // CRLF files are fine.
    let (out, _) = set("a: 1\r\nb: 2\r\n", "b", "x");
    assert_eq!(out, "a: 1\r\nb: x\r\n");
}

// Found by fuzz/yaml_edit: a second byte order mark at a line's start is
// skipped by YAML and was counted as indentation by the editor: the key it
// inserted made the file invalid. One BOM opening the file stays fine.
#[test]
fn a_byte_order_mark_inside_the_file_is_refused() {
    for (text, line) in [("\u{feff}\u{feff} d:", 1), ("a: 1\n\u{feff}b: 2\n", 2)] {
        match set_yaml_key(text, "x", "v") {
            Err(EditError::Unsupported {
                line: l, reason, ..
            }) => {
                assert_eq!(l, line, "{text:?}");
                assert!(reason.contains("byte order mark"), "{reason}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let (out, changed) = set_yaml_key("\u{feff}a: 1\n", "a", "2").unwrap();
    assert!(changed);
    assert_eq!(out, "\u{feff}a: \"2\"\n");
}
