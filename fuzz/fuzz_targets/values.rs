//! Stage values: `StageValues::load` of a project `values.yaml` and a stage
//! overlay, `deep_merge`, the digest and `to_yaml`.
//!
//! Input: `<values.yaml>\0<overlay.yaml>`. Checks that merging a tree into
//! itself changes nothing, that an overlay's scalars win, and that `to_yaml`
//! reads back to the same raw values (it is what a `render: false` package
//! carries).

#![no_main]

use gantry_envgen::values::{canonical_json, deep_merge, to_yaml};
use gantry_envgen::{MapEnv, StageValues, ValuesSource};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn source(text: &str) -> Option<ValuesSource<'_>> {
    (!text.is_empty()).then_some(ValuesSource {
        name: "values.yaml",
        text,
    })
}

fuzz_target!(|data: &[u8]| {
    let parts = gantry_fuzz::split_nul(data, 2);
    let (Some(project), Some(overlay)) = (gantry_fuzz::text(parts[0]), gantry_fuzz::text(parts[1]))
    else {
        return;
    };
    let env = MapEnv::from_pairs([("X", "env-x"), ("TOKEN", "s3cr3t")]);
    let sv = StageValues::load(source(project), source(overlay), &env);
    let _ = sv.digest();
    let _ = canonical_json(sv.resolved());

    let raw = sv.raw().clone();
    let mut same = raw.clone();
    deep_merge(&mut same, raw.clone());
    assert_eq!(same, raw, "merging values into themselves changed them");

    let base = StageValues::load(source(project), None, &env).raw().clone();
    let over = StageValues::load(source(overlay), None, &env).raw().clone();
    let mut merged = base;
    deep_merge(&mut merged, over.clone());
    if let (Value::Object(m), Value::Object(o)) = (&merged, &over) {
        for (k, v) in o {
            if !v.is_object() {
                assert_eq!(m.get(k), Some(v), "the overlay's `{k}` lost");
            }
        }
    }

    let yaml = to_yaml(&raw);
    let again = StageValues::load(source(&yaml), None, &env);
    assert_eq!(again.raw(), &raw, "to_yaml wrote {yaml:?}");
});
