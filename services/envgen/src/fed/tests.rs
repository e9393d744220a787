//! Unit tests of the archive helpers (the integration tests in `tests/fed*.rs`
//! cover the public API on real and generated archives).

use std::collections::BTreeSet;

use super::archive::{check, entry_file, unsafe_name, Limits, LIMITS};
use super::{clean, ArchiveKind, MAX_ENTRY_SIZE, MAX_TOTAL_SIZE};

#[test]
fn zip_slip_names() {
    assert_eq!(unsafe_name("a/b.xml"), None);
    assert_eq!(unsafe_name("META-INF/MANIFEST.MF"), None);
    assert_eq!(unsafe_name("a..b/c"), None);
    for bad in [
        "/etc/passwd",
        "\\x",
        "C:/x",
        "../x",
        "a/../../x",
        "a\\..\\x",
        "",
        "a\0b",
        "..",
    ] {
        assert!(unsafe_name(bad).is_some(), "{bad:?}");
    }
}

#[test]
fn names_and_paths() {
    assert_eq!(
        entry_file("gw/app.fed", "META-INF/MANIFEST.MF"),
        "gw/app.fed!/META-INF/MANIFEST.MF"
    );
    assert_eq!(clean("./gateway//app.fed/"), "gateway/app.fed");
    assert_eq!(clean("/etc//passwd"), "/etc/passwd");
    assert_eq!(ArchiveKind::Env.extension(), "env");
    assert!(ArchiveKind::Pol.describe().contains(".pol"));
}

#[test]
fn selectors_found() {
    let mut out = BTreeSet::new();
    super::archive::env_selectors(
        "<f>${env.PORT.TRAFFIC}</f><g value=\"${env.A}:${env.B}\"/>${env.}${env.bad name}${env.OPEN",
        &mut out,
    );
    let got: Vec<&str> = out.iter().map(String::as_str).collect();
    assert_eq!(got, ["A", "B", "PORT.TRAFFIC"]);
}

/// A zip of `(name, bytes)` entries, stored.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in entries {
        w.start_file(*name, opts).expect("start_file");
        w.write_all(data).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

#[test]
fn limits_are_the_public_ones() {
    assert_eq!(LIMITS.entry, MAX_ENTRY_SIZE);
    assert_eq!(LIMITS.total, MAX_TOTAL_SIZE);
}

#[test]
fn entries_over_the_limits_are_not_read() {
    let limits = Limits {
        entry: 100,
        total: 150,
    };
    let bytes = zip_of(&[
        ("a.bin", &[b'a'; 60]),
        ("big.bin", &[b'b'; 101]),
        ("c.bin", &[b'c'; 60]),
        ("d.bin", &[b'd'; 60]),
        ("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\r\n\r\n"),
    ]);
    let e = check("x.fed", &bytes, ArchiveKind::Fed, limits).expect_err("over the limits");
    let shown: Vec<(&str, &str)> = e
        .iter()
        .map(|d| (d.file.as_deref().unwrap_or(""), d.message.as_str()))
        .collect();
    // An entry over its limit is skipped; past the total, reading stops (the
    // manifest after it is never read).
    assert_eq!(
        shown,
        [
            (
                "x.fed",
                "no `META-INF/MANIFEST-ENVIRONMENT.MF`: a deployment package carries the environment package's properties there (is this a .pol or .env renamed to .fed?)"
            ),
            (
                "x.fed",
                "no `META-INF/MANIFEST-POLICY.MF`: a deployment package carries the policy package's properties there (is this a .pol or .env renamed to .fed?)"
            ),
            (
                "x.fed",
                "no `META-INF/MANIFEST.MF`: not an Axway deployment package (.fed) (entries: a.bin, c.bin)"
            ),
            (
                "x.fed",
                "no entity store: a deployment package (.fed) has a `<id>/configs.xml` listing its stores"
            ),
            (
                "x.fed",
                "the archive is over 150 bytes uncompressed; not reading further"
            ),
            (
                "x.fed!/big.bin",
                "the entry is 101 bytes uncompressed, over the 100-byte limit"
            ),
        ]
    );
}
