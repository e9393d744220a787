//! What a release changes: the diff between the package a stage runs now and
//! a candidate package, file by file and value by value, secrets masked.
//!
//! Both sides are package `.tar.gz` archives (see [`crate::package`]). Files
//! are compared by content hash; text files get a unified diff (3 lines of
//! context), binary files their hashes. When a package carries a
//! `values.yaml` (`render: false`), the values are also compared leaf by
//! leaf.
//!
//! Secrets never appear in the result: values under credential-like keys or
//! that look like credentials are shown as [`MASK`](crate::secrets::MASK) (a changed secret is
//! still reported as changed), PEM private key blocks are masked, and so is
//! every occurrence of a known secret string (the ones passed to
//! [`diff_packages_masked`] and the secret-looking values of both
//! `values.yaml`).
//!
//! ```
//! use gantry_envgen::diff::diff_packages;
//! use gantry_envgen::package::tar_gz;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = tar_gz(&[], &[("a.yaml", b"x: 1\n")])?;
//! let next = tar_gz(&[], &[("a.yaml", b"x: 2\n")])?;
//! let d = diff_packages(Some(&now), &next)?;
//! assert_eq!(d.summary, "1 file changed (0 added, 0 removed, 1 modified), 0 values changed");
//! println!("{}", d.to_text());
//! # Ok(()) }
//! ```

mod mask;
mod unified;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::secrets::Masker;

/// Lines of context around each change.
pub const CONTEXT_LINES: usize = 3;
/// Files larger than this are compared by hash only.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Lines of one file's diff (after its `---`/`+++` header) beyond which the
/// diff is cut, with a note.
pub const MAX_DIFF_LINES: usize = 1000;
/// The values file a `render: false` package carries.
pub const VALUES_FILE: &str = "values.yaml";

/// Which package of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// What the stage runs now.
    Current,
    /// What the release would deploy.
    Candidate,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Current => "current",
            Side::Candidate => "candidate",
        })
    }
}

/// Why two packages could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The bytes are not a readable gzip-compressed tar archive.
    #[error("the {side} package is not a readable .tar.gz archive: {source}")]
    Archive {
        /// The package concerned.
        side: Side,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// An entry's path is absolute or climbs out of the archive (`..`).
    #[error("the {side} package has an unsafe entry path `{path}` (absolute or with `..`)")]
    UnsafePath {
        /// The package concerned.
        side: Side,
        /// The entry's path, as written in the archive.
        path: String,
    },
}

/// How a value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the candidate.
    Added,
    /// Only in the current package.
    Removed,
    /// In both, different.
    Changed,
}

/// One value of `values.yaml` that differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueChange {
    /// `db.password`, `servers[0].host`; keys holding `.`, spaces or brackets
    /// are JSON-quoted (`"a.b".c`).
    pub path: String,
    /// Added, removed or changed.
    pub change: ChangeKind,
    /// The current value (absent when added), masked if secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The candidate value (absent when removed), masked if secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Whether `before` or `after` had (part of) a secret masked.
    pub masked: bool,
}

/// One file that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path inside the package (`/`-separated, relative).
    pub path: String,
    /// Not text (not UTF-8, or holds a NUL byte) on either side.
    pub binary: bool,
    /// Unified diff (`--- a/p`, `+++ b/p`, `@@ -a,b +c,d @@` hunks) for text
    /// files, secrets masked; `binary, sha256 a → b` for binary files; a note
    /// for files too large to diff. `None` for an empty added/removed file.
    pub diff: Option<String>,
    /// Hex sha256 of the current content (absent when added).
    pub before_sha256: Option<String>,
    /// Hex sha256 of the candidate content (absent when removed).
    pub after_sha256: Option<String>,
    /// The diff was cut after [`MAX_DIFF_LINES`] lines.
    #[serde(default)]
    pub truncated: bool,
}

/// What a candidate package changes against the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageDiff {
    /// `3 files changed (1 added, 1 removed, 1 modified), 2 values changed`,
    /// or `no changes (N files unchanged)`.
    pub summary: String,
    /// No current package: everything is added.
    #[serde(default)]
    pub initial: bool,
    /// Files only in the candidate, by path.
    pub added: Vec<FileChange>,
    /// Files only in the current package, by path.
    pub removed: Vec<FileChange>,
    /// Files in both with different content, by path.
    pub modified: Vec<FileChange>,
    /// Files identical in both.
    pub unchanged: usize,
    /// Values of `values.yaml` that differ, by path.
    pub values: Vec<ValueChange>,
    /// Anything that could not be compared (e.g. an unreadable `values.yaml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl PackageDiff {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.modified.is_empty()
            && self.values.is_empty()
    }

    /// A report for people: the summary, each file's diff, then the values.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.summary);
        out.push('\n');
        if self.initial {
            out.push_str("(the stage runs no package yet: everything is new)\n");
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for (what, files) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("modified", &self.modified),
        ] {
            for f in files {
                out.push_str(&format!("\n{what}: {}\n", f.path));
                match &f.diff {
                    Some(d) => {
                        out.push_str(d);
                        if !d.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                    None => out.push_str("(empty file)\n"),
                }
            }
        }
        if !self.values.is_empty() {
            out.push_str("\nvalues:\n");
            for v in &self.values {
                let show =
                    |x: &Option<Value>| x.as_ref().map(|x| x.to_string()).unwrap_or_default();
                match v.change {
                    ChangeKind::Added => {
                        out.push_str(&format!("  + {}: {}\n", v.path, show(&v.after)));
                    }
                    ChangeKind::Removed => {
                        out.push_str(&format!("  - {}: {}\n", v.path, show(&v.before)));
                    }
                    ChangeKind::Changed => out.push_str(&format!(
                        "  ~ {}: {} → {}\n",
                        v.path,
                        show(&v.before),
                        show(&v.after)
                    )),
                }
            }
        }
        out
    }
}

/// Compare `candidate` with `current` (`None`: the stage runs nothing yet),
/// both package `.tar.gz` bytes.
pub fn diff_packages(current: Option<&[u8]>, candidate: &[u8]) -> Result<PackageDiff, DiffError> {
    diff_packages_masked(current, candidate, &[])
}

/// [`diff_packages`], also masking every occurrence of the given secret
/// strings (e.g. the stages' [`crate::StageValues::secrets`]; strings shorter
/// than 4 characters are not masked).
pub fn diff_packages_masked(
    current: Option<&[u8]>,
    candidate: &[u8],
    secrets: &[String],
) -> Result<PackageDiff, DiffError> {
    let old = match current {
        Some(bytes) => read_archive(bytes, Side::Current)?,
        None => BTreeMap::new(),
    };
    let new = read_archive(candidate, Side::Candidate)?;

    let mut notes = Vec::new();
    let old_values = package_values(&old, Side::Current, &mut notes);
    let new_values = package_values(&new, Side::Candidate, &mut notes);
    let trees: Vec<&Value> = old_values.iter().chain(new_values.iter()).collect();
    let masker = mask::masker(secrets, &trees);
    let notes: Vec<String> = notes.iter().map(|n| masker.mask(n)).collect();

    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut modified = Vec::new();
    let mut unchanged = 0usize;
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        match (old.get(p), new.get(p)) {
            (Some(a), Some(b)) if a.sha256 == b.sha256 => unchanged += 1,
            (Some(a), Some(b)) => modified.push(file_change(p, Some(a), Some(b), &masker)),
            (Some(a), None) => removed.push(file_change(p, Some(a), None, &masker)),
            (None, Some(b)) => added.push(file_change(p, None, Some(b), &masker)),
            (None, None) => {}
        }
    }

    let values = if old_values.is_some() || new_values.is_some() {
        let empty = Value::Object(Map::new());
        values::diff_values(
            old_values.as_ref().unwrap_or(&empty),
            new_values.as_ref().unwrap_or(&empty),
            &masker,
        )
    } else {
        Vec::new()
    };

    let mut d = PackageDiff {
        summary: String::new(),
        initial: current.is_none(),
        added,
        removed,
        modified,
        unchanged,
        values,
        notes,
    };
    d.summary = summary(&d);
    Ok(d)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn summary(d: &PackageDiff) -> String {
    let files = d.added.len() + d.removed.len() + d.modified.len();
    if files == 0 && d.values.is_empty() {
        return format!(
            "no changes ({} unchanged)",
            plural(d.unchanged, "file", "files")
        );
    }
    format!(
        "{} changed ({} added, {} removed, {} modified), {} changed",
        plural(files, "file", "files"),
        d.added.len(),
        d.removed.len(),
        d.modified.len(),
        plural(d.values.len(), "value", "values"),
    )
}

// ------------------------------------------------------------------ archives

/// A file of a package.
struct Entry {
    sha256: String,
    size: u64,
    content: Content,
}

enum Content {
    Text(String),
    Binary,
    TooLarge,
}

fn read_archive(bytes: &[u8], side: Side) -> Result<BTreeMap<String, Entry>, DiffError> {
    let bad = |source: std::io::Error| DiffError::Archive { side, source };
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(bad(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not gzip data",
        )));
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = BTreeMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = safe_path(&raw).map_err(|()| DiffError::UnsafePath {
            side,
            path: raw.chars().take(200).collect(),
        })?
        else {
            continue;
        };
        let kind = entry.header().entry_type();
        let data = if kind.is_file() || kind.is_gnu_sparse() {
            read_content(&mut entry).map_err(bad)?
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let what = if kind.is_symlink() {
                "symlink"
            } else {
                "hard link"
            };
            let text = format!("{what} to {target}\n");
            Entry {
                sha256: hex::encode(Sha256::digest(text.as_bytes())),
                size: text.len() as u64,
                content: Content::Text(text),
            }
        } else {
            continue; // directories, devices, FIFOs
        };
        out.insert(path, data);
    }
    Ok(out)
}

/// The normalized relative path (`None` for the archive root), or `Err` when
/// absolute or climbing out.
fn safe_path(raw: &str) -> Result<Option<String>, ()> {
    let windows_drive =
        raw.len() >= 2 && raw.as_bytes()[1] == b':' && raw.as_bytes()[0].is_ascii_alphabetic();
    if raw.starts_with(['/', '\\']) || windows_drive {
        return Err(());
    }
    let mut parts = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(()),
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn read_content(r: &mut impl Read) -> std::io::Result<Entry> {
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut too_large = false;
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if !too_large {
            if kept.len() + n > MAX_TEXT_BYTES {
                too_large = true;
                kept = Vec::new();
            } else {
                kept.extend_from_slice(&buf[..n]);
            }
        }
    }
    let content = if too_large {
        Content::TooLarge
    } else if kept.contains(&0) {
        Content::Binary
    } else {
        match String::from_utf8(kept) {
            Ok(s) => Content::Text(s),
            Err(_) => Content::Binary,
        }
    };
    Ok(Entry {
        sha256: hex::encode(hasher.finalize()),
        size,
        content,
    })
}

/// The values tree of a package's `values.yaml`, if it has one that reads.
fn package_values(
    files: &BTreeMap<String, Entry>,
    side: Side,
    notes: &mut Vec<String>,
) -> Option<Value> {
    let e = files.get(VALUES_FILE)?;
    let text = match &e.content {
        Content::Text(t) => t,
        Content::Binary => {
            notes.push(format!(
                "{VALUES_FILE} of the {side} package is not text: values not compared"
            ));
            return None;
        }
        Content::TooLarge => {
            notes.push(format!(
                "{VALUES_FILE} of the {side} package is too large ({} bytes): values not compared",
                e.size
            ));
            return None;
        }
    };
    let parsed = match crate::yaml::parse(text) {
        Ok(None) => return Some(Value::Object(Map::new())),
        Ok(Some(root)) => crate::yaml::to_json(&root).map_err(|(_, m)| m),
        Err(e) => Err(format!("line {}: {}", e.line, e.message)),
    };
    match parsed {
        Ok(Value::Null) => Some(Value::Object(Map::new())),
        Ok(v @ Value::Object(_)) => Some(v),
        Ok(_) => {
            notes.push(format!(
                "{VALUES_FILE} of the {side} package is not a mapping: values not compared"
            ));
            None
        }
        Err(m) => {
            notes.push(format!(
                "{VALUES_FILE} of the {side} package cannot be read ({m}): values not compared"
            ));
            None
        }
    }
}

// --------------------------------------------------------------------- files

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn file_change(
    path: &str,
    old: Option<&Entry>,
    new: Option<&Entry>,
    masker: &Masker,
) -> FileChange {
    let mut fc = FileChange {
        path: path.to_string(),
        binary: false,
        diff: None,
        before_sha256: old.map(|e| e.sha256.clone()),
        after_sha256: new.map(|e| e.sha256.clone()),
        truncated: false,
    };
    let sha_pair = || {
        format!(
            "sha256 {} → {}",
            old.map_or("(none)", |e| short(&e.sha256)),
            new.map_or("(none)", |e| short(&e.sha256))
        )
    };
    let is = |e: Option<&Entry>, f: fn(&Content) -> bool| e.is_some_and(|e| f(&e.content));
    if is(old, |c| matches!(c, Content::Binary)) || is(new, |c| matches!(c, Content::Binary)) {
        fc.binary = true;
        fc.diff = Some(format!("binary, {}", sha_pair()));
        return fc;
    }
    if is(old, |c| matches!(c, Content::TooLarge)) || is(new, |c| matches!(c, Content::TooLarge)) {
        fc.diff = Some(format!(
            "too large to diff ({} → {} bytes), {}",
            old.map_or("(none)".to_string(), |e| e.size.to_string()),
            new.map_or("(none)".to_string(), |e| e.size.to_string()),
            sha_pair()
        ));
        return fc;
    }
    fn text(e: Option<&Entry>) -> &str {
        match e.map(|e| &e.content) {
            Some(Content::Text(t)) => t.as_str(),
            _ => "",
        }
    }
    let (old_text, new_text) = (text(old), text(new));
    let old_lines: Vec<&str> = old_text.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new_text.split_inclusive('\n').collect();
    let old_shown = mask::mask_lines(path, &old_lines, masker);
    let new_shown = mask::mask_lines(path, &new_lines, masker);
    let ops = unified::diff(&old_lines, &new_lines);
    let a_label = format!("a/{path}");
    let b_label = format!("b/{path}");
    let old_side = unified::Shown {
        label: if old.is_some() { &a_label } else { "/dev/null" },
        lines: &old_shown,
        missing_eol: !old_text.is_empty() && !old_text.ends_with('\n'),
    };
    let new_side = unified::Shown {
        label: if new.is_some() { &b_label } else { "/dev/null" },
        lines: &new_shown,
        missing_eol: !new_text.is_empty() && !new_text.ends_with('\n'),
    };
    if let Some((d, truncated)) =
        unified::unified(&ops, &old_side, &new_side, CONTEXT_LINES, MAX_DIFF_LINES)
    {
        fc.diff = Some(d);
        fc.truncated = truncated;
    }
    fc
}
