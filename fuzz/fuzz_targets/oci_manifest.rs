//! OCI and Docker manifests and indexes as registries and layouts send them:
//! `detect_media_type`, serde of `ImageManifest` / `ImageIndex`, platform
//! selection, `Platform::parse` and `Digest::parse`. Checks that what parses
//! serializes and parses back to the same value.

#![no_main]

use gantry_imagebuild::manifest::{
    available_platforms, detect_media_type, kind_of, select_platform,
};
use gantry_imagebuild::{Digest, ImageIndex, ImageManifest, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line stands for the Content-Type header, the rest the body.
    let (content_type, body) = gantry_fuzz::first_line(data);
    let content_type = gantry_fuzz::text(content_type);
    if let Some(mt) = detect_media_type(body, content_type) {
        let _ = kind_of(&mt);
    }
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(body) {
        let json = serde_json::to_vec(&m).expect("a manifest serializes");
        let again: ImageManifest = serde_json::from_slice(&json).expect("a manifest reads back");
        assert_eq!(again, m);
    }
    if let Ok(index) = serde_json::from_slice::<ImageIndex>(body) {
        let json = serde_json::to_vec(&index).expect("an index serializes");
        let again: ImageIndex = serde_json::from_slice(&json).expect("an index reads back");
        assert_eq!(again, index);
        let _ = available_platforms(&index);
        for want in ["linux/amd64", "linux/arm64/v8"] {
            let want = Platform::parse(want).expect("a valid platform");
            if let Some(d) = select_platform(&index, &want) {
                assert!(d.platform.as_ref().is_some_and(|p| p.satisfies(&want)));
            }
        }
    }
    if let Some(text) = gantry_fuzz::text(body) {
        if let Some(p) = Platform::parse(text) {
            assert_eq!(Platform::parse(&p.to_string()), Some(p.clone()), "{text:?}");
        }
        if let Ok(d) = Digest::parse(text) {
            assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
        }
    }
});
