//! OCI image references: `ImageRef::parse`, `ImageSource::parse`,
//! `Target::parse`, `validate_tag` and `base_url`. Checks the round trip
//! parse → print → parse for each.

#![no_main]

use gantry_imagebuild::reference::{base_url, is_loopback, validate_tag};
use gantry_imagebuild::{ImageRef, ImageSource, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = gantry_fuzz::text(data) else {
        return;
    };
    if let Ok(r) = ImageRef::parse(input) {
        let printed = r.to_string();
        let again = ImageRef::parse(&printed)
            .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, r, "{input:?} printed as {printed:?}");
        let _ = (r.api_host(), r.reference(), r.without_tag());
        assert_eq!(ImageRef::parse(&r.name()).ok(), Some(r.without_tag()));
        let _ = is_loopback(r.registry());
        let _ = base_url(r.registry(), false);
        if let Ok(t) = r.with_tag("fuzz-1") {
            assert_eq!(t.tag(), Some("fuzz-1"));
        }
    }
    if let Ok(s) = ImageSource::parse(input) {
        let printed = s.to_string();
        assert_eq!(
            ImageSource::parse(&printed).ok().as_ref(),
            Some(&s),
            "{input:?} printed as {printed:?}"
        );
    }
    if let Ok(t) = Target::parse(input) {
        let printed = t.to_string();
        assert_eq!(
            Target::parse(&printed).ok().as_ref(),
            Some(&t),
            "{input:?} printed as {printed:?}"
        );
    }
    let _ = validate_tag(input);
});
