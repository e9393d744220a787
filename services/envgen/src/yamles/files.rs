//! Reading a project directory, and a small parallel map.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gantry_proto::events::Diagnostic;

use crate::diag;
use crate::template::FileLoader;
use crate::EnvgenError;

/// One regular file of the project.
#[derive(Debug)]
pub(super) struct FileEntry {
    /// `/`-separated, relative to the project root.
    pub path: String,
    pub data: Arc<[u8]>,
}

/// List every file below `dir` (whose relative path is `rel`) into `files`,
/// and every directory into `dirs`. Symbolic links are reported and skipped;
/// `.git` is skipped.
pub(super) fn walk(
    dir: &Path,
    rel: &str,
    files: &mut Vec<(String, PathBuf)>,
    dirs: &mut Vec<String>,
    diags: &mut Vec<Diagnostic>,
) -> Result<(), EnvgenError> {
    let rd = std::fs::read_dir(dir).map_err(|e| EnvgenError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| EnvgenError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            diags.push(diag::at(
                rel,
                None,
                None,
                format!(
                    "file name {:?} is not UTF-8; it is left out",
                    entry.file_name()
                ),
            ));
            continue;
        };
        if name == ".git" {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry
            .file_type()
            .map_err(|e| EnvgenError::io(&entry.path(), e))?;
        if ft.is_symlink() {
            diags.push(diag::at(
                &child_rel,
                None,
                None,
                "symbolic links are not allowed in a project; replace it with the file itself",
            ));
        } else if ft.is_dir() {
            dirs.push(child_rel.clone());
            walk(&entry.path(), &child_rel, files, dirs, diags)?;
        } else if ft.is_file() {
            files.push((child_rel, entry.path()));
        }
    }
    Ok(())
}

/// Read the listed files (in parallel), sorted by relative path.
pub(super) fn read_all(
    mut listed: Vec<(String, PathBuf)>,
    workers: usize,
) -> Result<Vec<FileEntry>, EnvgenError> {
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let read: Vec<Result<Arc<[u8]>, EnvgenError>> = par_map(listed.len(), workers, |i| {
        let path = &listed[i].1;
        std::fs::read(path)
            .map(Arc::from)
            .map_err(|e| EnvgenError::io(path, e))
    });
    listed
        .into_iter()
        .zip(read)
        .map(|((path, _), data)| Ok(FileEntry { path, data: data? }))
        .collect()
}

/// The project's files, for `{{ file }}` (sorted by path).
pub(super) struct ProjectFiles<'a>(pub &'a [FileEntry]);

impl FileLoader for ProjectFiles<'_> {
    fn read(&self, rel_path: &str) -> std::io::Result<Vec<u8>> {
        match self.0.binary_search_by(|f| f.path.as_str().cmp(rel_path)) {
            Ok(i) => Ok(self.0[i].data.to_vec()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                rel_path.to_string(),
            )),
        }
    }
}

/// Worker threads to use: `requested`, or the machine's parallelism (at most 8).
pub(super) fn threads(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Run `f` for every index below `n` on `workers` threads; results in index order.
pub(super) fn par_map<T: Send, F: Fn(usize) -> T + Sync>(n: usize, workers: usize, f: F) -> Vec<T> {
    const CHUNK: usize = 32;
    if workers <= 1 || n < 2 * CHUNK {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= n {
                            break;
                        }
                        for i in start..(start + CHUNK).min(n) {
                            out.push((i, f(i)));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}
