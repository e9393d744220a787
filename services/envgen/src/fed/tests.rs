//! Unit tests of the archive helpers (the integration tests in `tests/fed*.rs`
//! cover the public API on real and generated archives).

use std::collections::BTreeSet;

use super::archive::{entry_file, unsafe_name};
use super::{clean, ArchiveKind};

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
