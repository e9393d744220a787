//! apim-cli configuration: `config::load_stage` over `api-config.json`, its
//! stage overlay, `org-config.json` and `app-config.json`.
//!
//! Input: `<api-config.json>\0<api-config.test.json>\0<org-config.json>\0<app-config.json>`;
//! empty parts are left out. The loader reads a directory, so each run writes
//! the files into one reused temporary checkout (plus a spec file the
//! configs may reference).

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gantry_apim::config::{load_stage, LoadOptions};
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 4] = [
    "api-config.json",
    "api-config.test.json",
    "org-config.json",
    "app-config.json",
];

fn checkout() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fn vars(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("api.example.com".into()),
        "SECRET" => Some("s3cr3t".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let root = checkout();
    let dir: PathBuf = root.join("apis/petstore");
    let _ = std::fs::remove_dir_all(root.join("apis"));
    std::fs::create_dir_all(&dir).expect("create the APIs directory");
    std::fs::write(
        root.join("apis/petstore.json"),
        br#"{"swagger":"2.0","info":{"title":"p","version":"1"},"paths":{}}"#,
    )
    .expect("write the spec");
    for (name, part) in FILES.iter().zip(gantry_fuzz::split_nul(data, FILES.len())) {
        if !part.is_empty() {
            std::fs::write(dir.join(name), part).expect("write a config");
        }
    }
    let options = LoadOptions {
        stage: "test",
        vars: &vars,
    };
    match load_stage(root, Path::new("apis"), &options) {
        Ok(state) => {
            let _ = format!("{state:?}");
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error without a problem");
            let _ = errors.to_string();
        }
    }
});
