//! Deterministic archives: sorted entries, no root folder, fixed times, owners
//! and modes; the same input always gives the same sha256.

use std::io::Read as _;

use gantry_envgen::package::{sha256, tar_gz};
use gantry_envgen::{package_yaml, MapEnv, Project, RenderMode, ValidateOptions, ValuesSource};

struct Entry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
    data: Vec<u8>,
}

fn read_archive(bytes: &[u8]) -> Vec<Entry> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(gz);
    let mut out = Vec::new();
    for e in archive.entries().unwrap_or_else(|e| panic!("{e}")) {
        let mut e = e.unwrap_or_else(|e| panic!("{e}"));
        let h = e.header().clone();
        let path = e
            .path()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string_lossy()
            .to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap_or_else(|e| panic!("{e}"));
        out.push(Entry {
            path,
            kind: h.entry_type(),
            mode: h.mode().unwrap_or(0),
            mtime: h.mtime().unwrap_or(1),
            uid: h.uid().unwrap_or(1),
            gid: h.gid().unwrap_or(1),
            data,
        });
    }
    out
}

#[test]
fn archive_layout_is_fixed() {
    let long = format!("{}/{}.yaml", "d".repeat(80), "f".repeat(80));
    let files: Vec<(&str, &[u8])> = vec![
        ("b.yaml", b"b"),
        ("a/x.yaml", b"x"),
        (long.as_str(), b"long"),
        ("a b/y", b"y"),
    ];
    let dirs = vec!["a".to_string(), "a b".to_string(), "d".repeat(80)];
    let bytes = tar_gz(&dirs, &files).unwrap_or_else(|e| panic!("{e}"));
    let entries = read_archive(&bytes);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert_eq!(paths[0], "a b/");
    assert!(
        paths.contains(&long.as_str()),
        "GNU long names keep long paths"
    );
    for e in &entries {
        assert!(
            !e.path.starts_with('/') && !e.path.starts_with("./"),
            "{}",
            e.path
        );
        assert_eq!((e.mtime, e.uid, e.gid), (0, 0, 0));
        match e.kind {
            tar::EntryType::Directory => assert_eq!(e.mode, 0o755),
            _ => assert_eq!(e.mode, 0o644),
        }
    }
    assert_eq!(
        entries
            .iter()
            .find(|e| e.path == "b.yaml")
            .map(|e| e.data.clone()),
        Some(b"b".to_vec())
    );
    // Same input, same bytes; input order does not matter.
    let mut shuffled = files.clone();
    shuffled.reverse();
    let again = tar_gz(&dirs, &shuffled).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sha256(&bytes), sha256(&again));
}

#[test]
fn package_is_deterministic_and_carries_stage_values() {
    let root = crate::common::fixture_project();
    let env = MapEnv::from_pairs([("CASSANDRA_USER", "cass-user-1")]);
    let overlay = "Server_Settings:\n  Cassandra_Settings:\n    username: env:CASSANDRA_USER\n    replication: 3\n";
    let build = |mode: RenderMode| {
        let project = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
        let values = project.stage_values(
            Some(ValuesSource {
                name: "environments/prod.yaml",
                text: overlay,
            }),
            &env,
        );
        package_yaml(&project, &values, &env, mode, &ValidateOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let a = build(RenderMode::Placeholders);
    let b = build(RenderMode::Placeholders);
    assert_eq!(a.digest, b.digest, "package twice, same digest");
    assert_eq!(a.digest, sha256(&a.bytes));

    let entries = read_archive(&a.bytes);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == tar::EntryType::Regular)
            .count() as u64,
        a.files
    );
    assert!(
        entries.iter().any(|e| e.path == "_parent.yaml"),
        "no root folder"
    );
    let values = entries
        .iter()
        .find(|e| e.path == "values.yaml")
        .map(|e| String::from_utf8_lossy(&e.data).to_string());
    let values = values.unwrap_or_else(|| panic!("no values.yaml"));
    // The overlay is merged in; the env reference stays a placeholder for the
    // gateway, and its value never lands in the package.
    assert!(values.contains("replication: 3"), "{values}");
    assert!(
        values.contains("username: '{{ env \"CASSANDRA_USER\" }}'"),
        "{values}"
    );
    assert!(values.contains("readConsistencyLevel: ONE"), "{values}");
    assert!(!String::from_utf8_lossy(&a.bytes).contains("cass-user-1"));
    // Entity files keep their placeholders.
    let cass = entries
        .iter()
        .find(|e| e.path == "Server Settings/Cassandra Settings.yaml")
        .map(|e| e.data.clone())
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cass).contains("{{Server_Settings.Cassandra_Settings.username}}")
    );

    // Rendered: values are in the files, no values.yaml.
    let r = build(RenderMode::Rendered);
    let entries = read_archive(&r.bytes);
    assert!(!entries.iter().any(|e| e.path == "values.yaml"));
    let cass = entries
        .iter()
        .find(|e| e.path == "Server Settings/Cassandra Settings.yaml")
        .map(|e| e.data.clone())
        .unwrap_or_default();
    let cass = String::from_utf8_lossy(&cass);
    assert!(cass.contains("username: 'cass-user-1'"), "{cass}");
    assert!(cass.contains("replication: '3'"), "{cass}");
}
