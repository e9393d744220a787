//! The gitops YAML editor: `set_yaml_key(text, key, value)`.
//!
//! Input: `<dotted key>\0<value>\0<YAML file>`. Checks what the deployer
//! relies on: when the file was YAML, the edited file still is, and the key
//! now holds exactly the value (as a string); the edit is idempotent.

#![no_main]

use gantry_deployer::set_yaml_key;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn lookup<'a>(doc: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(doc, |v, k| v.get(k))
}

fuzz_target!(|data: &[u8]| {
    let parts = gantry_fuzz::split_nul(data, 3);
    let (Some(key), Some(value), Some(text)) = (
        gantry_fuzz::text(parts[0]),
        gantry_fuzz::text(parts[1]),
        gantry_fuzz::text(parts[2]),
    ) else {
        return;
    };
    let Ok((out, changed)) = set_yaml_key(text, key, value) else {
        return;
    };
    if !changed {
        assert_eq!(out, text);
    }
    // An oracle only for files a YAML parser reads as one mapping.
    let Ok(before) = serde_saphyr::from_str::<Value>(text) else {
        return;
    };
    if !(before.is_object() || before.is_null()) {
        return;
    }
    let after: Value = match serde_saphyr::from_str(&out) {
        Ok(v) => v,
        // The oracle's own nesting limit (64), hit by keys of as many
        // segments: a limit of that parser, not invalid YAML.
        Err(e) if e.to_string().contains("budget breached") => return,
        Err(e) => panic!("edited {text:?} into {out:?}, not YAML: {e}"),
    };
    assert_eq!(
        lookup(&after, key),
        Some(&Value::String(value.to_owned())),
        "edited {text:?} into {out:?}"
    );
    let (again, changed_again) = set_yaml_key(&out, key, value).expect("an edited file edits");
    assert!(
        !changed_again,
        "a second edit changed {out:?} into {again:?}"
    );
});
