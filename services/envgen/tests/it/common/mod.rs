//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};

use gantry_envgen::Diagnostic;

/// The real sample project (`shared/fixtures/yamles/yamles-utils-apim/apim`),
/// found beside the repository (as on developer machines and in CI).
pub fn fixture_project() -> PathBuf {
    let rel = "shared/fixtures/yamles/yamles-utils-apim/apim";
    if let Ok(dir) = std::env::var("GANTRY_YAMLES_FIXTURE") {
        return PathBuf::from(dir);
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for anc in here.ancestors() {
        let candidate = anc.join(rel);
        if candidate.join("_parent.yaml").is_file() {
            return candidate;
        }
    }
    panic!(
        "fixture {rel} not found above {}: set GANTRY_YAMLES_FIXTURE",
        here.display()
    );
}

/// Copy a directory tree (files made writable).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        let target = to.join(entry.file_name());
        let ft = entry.file_type().unwrap_or_else(|e| panic!("{e}"));
        if ft.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            let data = std::fs::read(entry.path()).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&target, data)
                .unwrap_or_else(|e| panic!("write {}: {e}", target.display()));
        }
    }
}

/// Write `files` (`(relative path, content)`) below `root`.
pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `file:line:column: message` per diagnostic, for assertion messages.
pub fn show(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{}: {}{}",
                d.file.as_deref().unwrap_or("-"),
                d.line.map(|l| l.to_string()).unwrap_or_default(),
                d.column.map(|c| c.to_string()).unwrap_or_default(),
                d.message,
                d.field
                    .as_deref()
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
