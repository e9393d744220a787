//! Gateway packages from archives: `build_fed_package_with` and
//! `build_pol_env_package_with` (check, envSettings.props from the values,
//! the deterministic tar.gz).
//!
//! Input: `F<.fed>` builds a `fed` package; `P<len: u16 BE><.pol><test.env>`
//! a `pol-env` one. The builders read a checkout, so each run writes the
//! files into one reused temporary directory.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use gantry_envgen::fed::{build_fed_package_with, build_pol_env_package_with, BuildOptions};
use gantry_envgen::MapEnv;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn checkout() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let root = checkout();
    let gateway = root.join("gateway");
    let _ = std::fs::remove_dir_all(&gateway);
    std::fs::create_dir_all(&gateway).expect("create the gateway directory");
    let env = MapEnv::from_pairs([("DB_PASS", "s3cr3t")]);
    let opts = BuildOptions {
        env: &env,
        values_file: "environments/test.yaml",
    };
    let values = json!({
        "PORT": { "TRAFFIC": 8065 },
        "DB": { "PASSWORD": "env:DB_PASS" },
        "URL": "{{ env \"DB_PASS\" }}"
    });
    let built = if *mode == b'P' {
        let (len, rest) = rest.split_at_checked(2).unwrap_or((&[0, 0], rest));
        let len = usize::from(u16::from_be_bytes([len[0], len[1]])).min(rest.len());
        let (pol, env_archive) = rest.split_at(len);
        std::fs::write(gateway.join("policy.pol"), pol).expect("write the .pol");
        std::fs::write(gateway.join("test.env"), env_archive).expect("write the .env");
        build_pol_env_package_with(root, "gateway", "test", &values, None, &opts)
    } else {
        std::fs::write(gateway.join("api.fed"), rest).expect("write the .fed");
        build_fed_package_with(root, "gateway/api.fed", "test", &values, None, &opts)
    };
    match built {
        Ok(pkg) => assert!(pkg.size() > 0),
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "an error without a problem");
            // Secrets are masked in every diagnostic.
            for d in &diagnostics {
                assert!(!d.message.contains("s3cr3t"), "a secret in {d:?}");
            }
        }
    }
});
