//! Pipeline YAML: `parse_str` (serde-saphyr, then validation and error
//! locations), and the warnings of a valid pipeline.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = gantry_fuzz::text(data) else {
        return;
    };
    match gantry_pipeline::parse_str("pipelines/fuzz.yaml", text) {
        Ok(p) => {
            let _ = gantry_pipeline::warnings(&p);
        }
        // Messages are what users see: rendering them must not panic either.
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
