//! The placeholder lexer, parser and evaluator (`Template::parse`, `render`,
//! `render_str`).
//!
//! Input: `<template>` or `<template>\0<values.yaml>`; without values a fixed
//! tree is used. Also checks the YAML-aware escaping: the template's text
//! pasted as a value into a double- or single-quoted scalar parses back to
//! exactly that text, and into a plain one to YAML (as that text when it is
//! read as a string).

#![no_main]

use gantry_envgen::template::{render_str, Context, FileLoader, Template};
use gantry_envgen::{MapEnv, StageValues, ValuesSource};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Any path reads as a small file, so `{{ file }}` is evaluated too.
struct AnyFile;

impl FileLoader for AnyFile {
    fn read(&self, rel_path: &str) -> std::io::Result<Vec<u8>> {
        Ok(format!("content of {rel_path}\n\u{0}\u{ff}").into_bytes())
    }
}

fn default_values() -> Value {
    json!({
        "a": { "b": "text", "n": 3, "t": true, "list": ["x", 1, null, {"k": "v"}] },
        "Server_Settings": { "Cassandra_Settings": { "username": "cassandra" } },
        "empty": "", "zero": 0, "null": null
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = gantry_fuzz::text(data) else {
        return;
    };
    let env = MapEnv::from_pairs([("X", "env-x"), ("HOME", "/home/g"), ("multi", "a\nb: c")]);
    let (source, values) = match input.split_once('\0') {
        Some((t, v)) => {
            let sv = StageValues::load(
                Some(ValuesSource {
                    name: "values.yaml",
                    text: v,
                }),
                None,
                &env,
            );
            (t, sv.resolved().clone())
        }
        None => (input, default_values()),
    };

    let t = Template::parse(source);
    let ctx = Context {
        values: &values,
        env: &env,
        files: &AnyFile,
        base_dir: "dir/sub",
    };
    let r = t.render(&ctx);
    if !t.has_placeholders() {
        assert_eq!(r.text, source);
    }
    for e in t.errors().iter().chain(&r.errors) {
        let _ = t.position(e.offset);
    }
    for off in [0, r.text.len() / 2, r.text.len()] {
        let _ = r.source_offset(off);
        let _ = r.is_poisoned(off, r.text.len());
    }
    let _ = render_str(source, &values, &env);

    // A value reaches its scalar intact, whatever it holds.
    if !input.contains('\0') {
        let values = json!({ "v": input });
        for tpl in ["k: {{ v }}\n", "k: \"{{ v }}\"\n", "k: '{{ v }}'\n"] {
            if let Ok(out) = render_str(tpl, &values, &env) {
                let parsed: Value = match serde_saphyr::from_str(&out) {
                    Ok(v) => v,
                    // A plain scalar is typed by YAML on purpose: a number
                    // too large for a double (`44444e6448`) is YAML, an
                    // infinite float this oracle's parser refuses by policy.
                    Err(e)
                        if !tpl.contains(['"', '\''])
                            && e.to_string().contains("non-finite float") =>
                    {
                        continue
                    }
                    Err(e) => panic!("{tpl:?} rendered {out:?}, not YAML: {e}"),
                };
                // Plain scalars are left to YAML's typing on purpose
                // (`port: {{ port }}` is a number): only the quoted ones
                // must read back as the same string.
                if tpl.contains(['"', '\'']) || parsed["k"].is_string() {
                    assert_eq!(parsed, json!({ "k": input }), "{tpl:?} rendered {out:?}");
                }
            }
        }
    }
});
