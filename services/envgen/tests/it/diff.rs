//! Diff between the package a stage runs and a candidate package: files,
//! unified hunks, binary files, values, masking of secrets, bad archives.

use std::io::Write as _;

use gantry_envgen::diff::{
    diff_packages, diff_packages_masked, ChangeKind, DiffError, PackageDiff, Side,
};
use gantry_envgen::package::tar_gz;
use serde_json::json;

fn pkg(files: &[(&str, &[u8])]) -> Vec<u8> {
    tar_gz(&[], files).unwrap_or_else(|e| panic!("{e}"))
}

fn diff(current: Option<&[u8]>, candidate: &[u8]) -> PackageDiff {
    diff_packages(current, candidate).unwrap_or_else(|e| panic!("{e}"))
}

/// The unified diff of modified file `path` ("" when it has none).
fn file_diff(d: &PackageDiff, path: &str) -> String {
    d.modified
        .iter()
        .find(|f| f.path == path)
        .and_then(|f| f.diff.clone())
        .unwrap_or_default()
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// A `.tar.gz` with one entry whose name is written as is (the `tar`
/// builder refuses `..` and absolute names).
fn raw_entry_archive(name: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.append(&h, &b"abc"[..]).unwrap_or_else(|e| panic!("{e}"));
    let gz = b.into_inner().unwrap_or_else(|e| panic!("{e}"));
    gz.finish().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn diff_identical_packages_have_no_changes() {
    let p = pkg(&[("a.yaml", b"x: 1\n"), ("b/c.yaml", b"y: 2\n")]);
    let d = diff(Some(&p), &p);
    assert!(d.is_empty());
    assert_eq!(d.unchanged, 2);
    assert_eq!(d.summary, "no changes (2 files unchanged)");
    assert!(!d.initial);
    assert_eq!(d.to_text(), "no changes (2 files unchanged)\n");
}

#[test]
fn diff_added_removed_modified_with_exact_hunks() {
    let old_conf = numbered(20);
    let new_conf = old_conf
        .replace("\n2\n", "\ntwo\n")
        .replace("\n18\n", "\neighteen\n");
    let current = pkg(&[
        ("keep.txt", b"same\n"),
        ("old.txt", b"gone\n"),
        ("conf.txt", old_conf.as_bytes()),
        ("one.txt", b"x\n"),
    ]);
    let candidate = pkg(&[
        ("keep.txt", b"same\n"),
        ("new.txt", b"hello\nworld\n"),
        ("conf.txt", new_conf.as_bytes()),
        ("one.txt", b"y\n"),
    ]);
    let d = diff(Some(&current), &candidate);
    assert_eq!(
        d.summary,
        "4 files changed (1 added, 1 removed, 2 modified), 0 values changed"
    );
    assert_eq!(d.unchanged, 1);

    assert_eq!(d.added.len(), 1);
    assert_eq!(d.added[0].path, "new.txt");
    assert_eq!(
        d.added[0].diff.as_deref(),
        Some("--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1,2 @@\n+hello\n+world\n")
    );
    assert_eq!(d.added[0].before_sha256, None);
    assert_eq!(d.added[0].after_sha256.as_ref().map(String::len), Some(64));

    assert_eq!(d.removed.len(), 1);
    assert_eq!(
        d.removed[0].diff.as_deref(),
        Some("--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n")
    );
    assert_eq!(d.removed[0].after_sha256, None);

    let paths: Vec<&str> = d.modified.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["conf.txt", "one.txt"]);
    assert_eq!(
        d.modified[0].diff.as_deref(),
        Some(
            "--- a/conf.txt\n+++ b/conf.txt\n\
             @@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n 4\n 5\n\
             @@ -15,6 +15,6 @@\n 15\n 16\n 17\n-18\n+eighteen\n 19\n 20\n"
        )
    );
    assert_eq!(
        d.modified[1].diff.as_deref(),
        Some("--- a/one.txt\n+++ b/one.txt\n@@ -1 +1 @@\n-x\n+y\n")
    );
    assert!(!d.modified[0].binary && !d.modified[0].truncated);

    let text = d.to_text();
    assert!(text.starts_with(
        "4 files changed (1 added, 1 removed, 2 modified), 0 values changed\n\nadded: new.txt\n--- /dev/null\n"
    ));
    assert!(text.contains("\nremoved: old.txt\n--- a/old.txt\n"));
    assert!(
        text.contains("\nmodified: one.txt\n--- a/one.txt\n+++ b/one.txt\n@@ -1 +1 @@\n-x\n+y\n")
    );
}

#[test]
fn diff_merges_close_changes_and_marks_missing_newline() {
    let old = numbered(10);
    let new = format!("{}11", old.replace("\n5\n", "\nfive\n"));
    let d = diff(
        Some(&pkg(&[("c.txt", old.as_bytes())])),
        &pkg(&[("c.txt", new.as_bytes())]),
    );
    assert_eq!(
        d.modified[0].diff.as_deref(),
        Some(
            "--- a/c.txt\n+++ b/c.txt\n@@ -2,9 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n 9\n 10\n+11\n\\ No newline at end of file\n"
        )
    );
}

#[test]
fn diff_binary_file_shows_hashes() {
    let d = diff(
        Some(&pkg(&[("lib/a.jar", &[0u8, 1, 2][..])])),
        &pkg(&[("lib/a.jar", &[0u8, 1, 3][..])]),
    );
    let f = &d.modified[0];
    assert!(f.binary);
    let (a, b) = (
        f.before_sha256.clone().unwrap_or_default(),
        f.after_sha256.clone().unwrap_or_default(),
    );
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
    assert_eq!(
        f.diff.as_deref(),
        Some(format!("binary, sha256 {} → {}", &a[..12], &b[..12]).as_str())
    );
}

#[test]
fn diff_values_masks_secrets_everywhere() {
    let old_values = gantry_envgen::values::to_yaml(&json!({
        "db": {"password": "OldPassw0rd!", "url": "jdbc:mysql://h/old", "user": "scott"},
        "api": {"clientSecret": "{{ env \"API_SECRET\" }}"},
    }));
    let new_values = gantry_envgen::values::to_yaml(&json!({
        "db": {"password": "NewPassw0rd!", "url": "jdbc:mysql://h/new", "user": "scott"},
        "api": {"clientSecret": "{{ env \"API_SECRET\" }}"},
        "feature": {"enabled": true},
    }));
    let current = pkg(&[
        ("values.yaml", old_values.as_bytes()),
        ("conn.txt", b"dsn=mysql://scott:OldPassw0rd!@h/old\n"),
    ]);
    let candidate = pkg(&[
        ("values.yaml", new_values.as_bytes()),
        ("conn.txt", b"dsn=mysql://scott:NewPassw0rd!@h/new\n"),
    ]);
    let d = diff(Some(&current), &candidate);
    assert_eq!(
        d.summary,
        "2 files changed (0 added, 0 removed, 2 modified), 3 values changed"
    );
    let values: Vec<(&str, ChangeKind, bool)> = d
        .values
        .iter()
        .map(|v| (v.path.as_str(), v.change, v.masked))
        .collect();
    assert_eq!(
        values,
        [
            ("db.password", ChangeKind::Changed, true),
            ("db.url", ChangeKind::Changed, false),
            ("feature.enabled", ChangeKind::Added, false),
        ]
    );
    assert_eq!(d.values[0].before, Some(json!("***")));
    assert_eq!(d.values[0].after, Some(json!("***")));
    assert_eq!(d.values[2].after, Some(json!(true)));

    let values_diff = file_diff(&d, "values.yaml");
    assert!(
        values_diff.contains("-  password: ***\n-  url: jdbc:mysql://h/old\n+  password: ***\n"),
        "{values_diff}"
    );

    let conn = file_diff(&d, "conn.txt");
    assert!(
        conn.contains("-dsn=mysql://scott:***@h/old\n+dsn=mysql://scott:***@h/new\n"),
        "{conn}"
    );

    let json = serde_json::to_string(&d).unwrap_or_else(|e| panic!("{e}"));
    let text = d.to_text();
    for secret in ["OldPassw0rd", "NewPassw0rd"] {
        assert!(!json.contains(secret), "{json}");
        assert!(!text.contains(secret), "{text}");
    }
    assert!(
        text.contains("  ~ db.password: \"***\" → \"***\"\n"),
        "{text}"
    );
    assert!(text.contains("  + feature.enabled: true\n"), "{text}");
    // The serialized form reads back.
    let back: PackageDiff = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, d);
}

#[test]
fn diff_masks_passed_in_secrets() {
    let current = pkg(&[(
        "app.properties",
        b"url=https://h\nheader=Bearer s3cr3t-one\n",
    )]);
    let candidate = pkg(&[(
        "app.properties",
        b"url=https://h\nheader=Bearer s3cr3t-two\n",
    )]);
    let secrets = vec!["s3cr3t-one".to_string(), "s3cr3t-two".to_string()];
    let d = diff_packages_masked(Some(&current), &candidate, &secrets)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        d.modified[0].diff.as_deref(),
        Some("--- a/app.properties\n+++ b/app.properties\n@@ -1,2 +1,2 @@\n url=https://h\n-header=Bearer ***\n+header=Bearer ***\n")
    );
    let json = serde_json::to_string(&d).unwrap_or_else(|e| panic!("{e}"));
    assert!(!json.contains("s3cr3t"));
    assert!(!d.to_text().contains("s3cr3t"));
}

#[test]
fn diff_masks_credential_keys_in_yaml_files() {
    let current = pkg(&[(
        "Policies/conn.yaml",
        b"---\ntype: DbConnection\nfields:\n  name: db\n  password: cGFzc3dvcmQx\n",
    )]);
    let candidate = pkg(&[(
        "Policies/conn.yaml",
        b"---\ntype: DbConnection\nfields:\n  name: db2\n  password: '{{ db.password }}'\n",
    )]);
    let d = diff(Some(&current), &candidate);
    assert_eq!(
        d.modified[0].diff.as_deref(),
        Some(
            "--- a/Policies/conn.yaml\n+++ b/Policies/conn.yaml\n@@ -1,5 +1,5 @@\n ---\n type: DbConnection\n fields:\n-  name: db\n-  password: ***\n+  name: db2\n+  password: '{{ db.password }}'\n"
        )
    );
}

#[test]
fn diff_without_current_package_adds_everything() {
    let candidate = pkg(&[
        ("a.yaml", b"x: 1\n"),
        ("values.yaml", b"---\nname: demo\ntoken: abcdef123456\n"),
    ]);
    let d = diff(None, &candidate);
    assert!(d.initial);
    assert_eq!(
        d.summary,
        "2 files changed (2 added, 0 removed, 0 modified), 2 values changed"
    );
    assert_eq!(d.added.len(), 2);
    assert!(d.removed.is_empty() && d.modified.is_empty());
    assert_eq!(d.unchanged, 0);
    let vals: Vec<(&str, ChangeKind)> = d
        .values
        .iter()
        .map(|v| (v.path.as_str(), v.change))
        .collect();
    assert_eq!(
        vals,
        [("name", ChangeKind::Added), ("token", ChangeKind::Added)]
    );
    assert_eq!(d.values[1].after, Some(json!("***")));
    let json = serde_json::to_string(&d).unwrap_or_else(|e| panic!("{e}"));
    assert!(!json.contains("abcdef123456"), "{json}");
    assert!(d.to_text().contains("everything is new"));
}

#[test]
fn diff_large_added_file_is_truncated() {
    let big = numbered(1500);
    let d = diff(None, &pkg(&[("big.txt", big.as_bytes())]));
    let f = &d.added[0];
    assert!(f.truncated);
    let text = f.diff.clone().unwrap_or_default();
    assert!(text.starts_with("--- /dev/null\n+++ b/big.txt\n@@ -0,0 +1,1500 @@\n+1\n"));
    assert!(
        text.ends_with("+999\n... diff truncated: 501 more line(s) not shown\n"),
        "{}",
        &text[text.len() - 100..]
    );
}

#[test]
fn diff_corrupt_archive_names_the_side() {
    let good = pkg(&[("a.yaml", b"x: 1\n")]);
    let err = diff_packages(Some(&good), b"not a tarball").err();
    assert!(
        matches!(
            err,
            Some(DiffError::Archive {
                side: Side::Candidate,
                ..
            })
        ),
        "{err:?}"
    );
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("candidate package"), "{msg}");

    // Valid gzip, not a tar inside.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"hello, this is no tar archive")
        .unwrap_or_else(|e| panic!("{e}"));
    let not_tar = gz.finish().unwrap_or_else(|e| panic!("{e}"));
    let err = diff_packages(Some(&not_tar), &good).err();
    assert!(
        matches!(
            err,
            Some(DiffError::Archive {
                side: Side::Current,
                ..
            })
        ),
        "{err:?}"
    );

    // Truncated gzip stream.
    let cut = &good[..good.len() / 2];
    let err = diff_packages(Some(&good), cut).err();
    assert!(
        matches!(
            err,
            Some(DiffError::Archive {
                side: Side::Candidate,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn diff_rejects_unsafe_entry_paths() {
    let good = pkg(&[("a.yaml", b"x: 1\n")]);
    for name in ["../evil.yaml", "a/../../evil", "/etc/passwd"] {
        let bad = raw_entry_archive(name);
        let err = diff_packages(Some(&bad), &good).err();
        match err {
            Some(DiffError::UnsafePath { side, path }) => {
                assert_eq!(side, Side::Current);
                assert_eq!(path, name);
            }
            other => panic!("{name}: {other:?}"),
        }
        let err = diff_packages(Some(&good), &bad).err();
        assert!(
            matches!(
                err,
                Some(DiffError::UnsafePath {
                    side: Side::Candidate,
                    ..
                })
            ),
            "{name}: {err:?}"
        );
    }
    // `./` prefixes are harmless and normalized.
    let dotted = raw_entry_archive("./a.yaml");
    let d = diff(Some(&dotted), &good);
    assert_eq!(d.modified.len(), 1);
    assert_eq!(d.modified[0].path, "a.yaml");
}
