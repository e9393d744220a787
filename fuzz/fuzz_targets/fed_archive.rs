//! FED, POL and ENV archives: `fed::check_archive` on any bytes, as each of
//! the three kinds.
//!
//! `check_archive` catches panics of the zip reader, but libFuzzer's panic
//! hook aborts first, so a panic anywhere below it is still reported here.

#![no_main]

use gantry_envgen::fed::{check_archive, ArchiveKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [ArchiveKind::Fed, ArchiveKind::Pol, ArchiveKind::Env] {
        match check_archive("gateway/fuzz.fed", data, kind) {
            Ok(info) => {
                assert_eq!(info.kind, kind);
                assert!(info.uncompressed_size <= gantry_envgen::fed::MAX_TOTAL_SIZE);
            }
            Err(diagnostics) => assert!(!diagnostics.is_empty(), "an error without a problem"),
        }
    }
});
