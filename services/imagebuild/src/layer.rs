//! The stage layer: the package placed where EMT containers take it, as a
//! deterministic `.tar.gz`.
//!
//! - a FED at `/merge/fed` (EMT containers deploy a FED found there);
//! - a merge directory under `/merge/apigateway/...` (copied over the
//!   gateway install when the container starts);
//! - a YAML Entity Store package (its `.tar.gz`) at a configurable path, kept
//!   as the archive or unpacked into a directory.
//!
//! Determinism: entries sorted by path bytes with every parent directory
//! before what it holds, one fixed modification time (0 or the commit time),
//! owner 0:0 without names, modes 0755 for directories and 0644 (or 0755 when
//! asked) for files, GNU long names; gzip without file name or time. The same
//! package and settings always give the same bytes, hence the same digests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::Path;

use bytes::Bytes;
use flate2::{read::GzDecoder, Compression, GzBuilder};

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// Where EMT containers take a FED.
pub const FED_PATH: &str = "/merge/fed";
/// The directory copied over the gateway install at container start.
pub const MERGE_DIR: &str = "/merge/apigateway";
/// Default location of a YAML Entity Store package archive in the image.
pub const DEFAULT_YAML_PACKAGE_PATH: &str = "/merge/yaml.tar.gz";

/// How a YAML Entity Store package (`.tar.gz` of the project's contents) goes
/// into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlPlacement {
    /// The archive itself, as one file at this absolute path.
    Archive(String),
    /// The archive's contents unpacked under this absolute directory.
    Extract(String),
}

impl Default for YamlPlacement {
    fn default() -> Self {
        YamlPlacement::Archive(DEFAULT_YAML_PACKAGE_PATH.to_owned())
    }
}

/// One file in the stage layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    pub data: Bytes,
    /// Unix permission bits: 0o644 or 0o755.
    pub mode: u32,
}

/// The files of one stage's configuration, by absolute path in the image,
/// plus the package digest recorded in the `io.gantry.package-digest` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePackage {
    package_digest: String,
    files: BTreeMap<String, PackageFile>,
}

impl StagePackage {
    /// An empty package; `package_digest` is the digest of the built
    /// deployment package (`package.built`'s `digest`).
    pub fn new(package_digest: impl Into<String>) -> StagePackage {
        StagePackage {
            package_digest: package_digest.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn package_digest(&self) -> &str {
        &self.package_digest
    }

    /// The files by absolute path.
    pub fn files(&self) -> &BTreeMap<String, PackageFile> {
        &self.files
    }

    /// Adds a file at an absolute, normalized path (`/a/b`, no `.`/`..`).
    /// `executable` gives mode 0755 instead of 0644.
    pub fn add_file(
        &mut self,
        path: &str,
        data: impl Into<Bytes>,
        executable: bool,
    ) -> Result<&mut StagePackage> {
        let norm = normalize_abs(path)?;
        // A file may not also be a directory of another file.
        let as_dir = format!("{norm}/");
        if self.files.keys().any(|k| k.starts_with(&as_dir)) {
            return Err(ImageError::InvalidInput(format!(
                "{norm} is both a file and a directory in the stage layer"
            )));
        }
        for anc in ancestors(&norm) {
            if self.files.contains_key(anc) {
                return Err(ImageError::InvalidInput(format!(
                    "{anc} is both a file and a directory in the stage layer"
                )));
            }
        }
        self.files.insert(
            norm,
            PackageFile {
                data: data.into(),
                mode: if executable { 0o755 } else { 0o644 },
            },
        );
        Ok(self)
    }

    /// The FED at `/merge/fed`.
    pub fn with_fed(mut self, fed: impl Into<Bytes>) -> Result<StagePackage> {
        self.add_file(FED_PATH, fed, false)?;
        Ok(self)
    }

    /// One file of the merge directory, `rel` relative to `/merge/apigateway`.
    pub fn with_merge_file(mut self, rel: &str, data: impl Into<Bytes>) -> Result<StagePackage> {
        let rel = relative(rel)?;
        self.add_file(&format!("{MERGE_DIR}/{rel}"), data, false)?;
        Ok(self)
    }

    /// Every regular file under `dir` on disk, into `/merge/apigateway/...`
    /// (executable bits kept; symlinks and special files refused).
    pub fn with_merge_dir(mut self, dir: &Path) -> Result<StagePackage> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| ImageError::io("cannot read the merge directory", &d, e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| ImageError::io("cannot read the merge directory", &d, e))?;
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| ImageError::io("cannot stat", &path, e))?;
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() {
                    let rel = path
                        .strip_prefix(dir)
                        .ok()
                        .and_then(|p| p.to_str())
                        .ok_or_else(|| {
                            ImageError::InvalidInput(format!(
                                "{} has a name that is not UTF-8",
                                path.display()
                            ))
                        })?
                        .to_owned();
                    let data = std::fs::read(&path)
                        .map_err(|e| ImageError::io("cannot read", &path, e))?;
                    use std::os::unix::fs::PermissionsExt as _;
                    let exec = meta.permissions().mode() & 0o111 != 0;
                    let rel = relative(&rel)?;
                    self.add_file(&format!("{MERGE_DIR}/{rel}"), data, exec)?;
                } else {
                    return Err(ImageError::InvalidInput(format!(
                        "{} in the merge directory is a symlink or special file; only regular \
                         files and directories go into the image",
                        path.display()
                    )));
                }
            }
        }
        Ok(self)
    }

    /// A YAML Entity Store package archive (`.tar.gz` of the project's
    /// contents), placed as `placement` says.
    pub fn with_yaml_package(
        mut self,
        archive: impl Into<Bytes>,
        placement: &YamlPlacement,
    ) -> Result<StagePackage> {
        let archive = archive.into();
        match placement {
            YamlPlacement::Archive(path) => {
                self.add_file(path, archive, false)?;
            }
            YamlPlacement::Extract(dir) => {
                let dir = normalize_abs(dir)?;
                let mut tar = tar::Archive::new(GzDecoder::new(&archive[..]));
                let entries = tar.entries().map_err(|e| {
                    ImageError::InvalidInput(format!("the YAML package is not a .tar.gz: {e}"))
                })?;
                for entry in entries {
                    let mut entry = entry.map_err(|e| {
                        ImageError::InvalidInput(format!("the YAML package is corrupt: {e}"))
                    })?;
                    let kind = entry.header().entry_type();
                    let name = entry
                        .path()
                        .map_err(|e| {
                            ImageError::InvalidInput(format!("bad name in the YAML package: {e}"))
                        })?
                        .to_str()
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            ImageError::InvalidInput(
                                "a name in the YAML package is not UTF-8".into(),
                            )
                        })?;
                    if kind.is_dir() {
                        continue;
                    }
                    if !kind.is_file() {
                        return Err(ImageError::InvalidInput(format!(
                            "{name} in the YAML package is not a regular file"
                        )));
                    }
                    let rel = relative(name.trim_start_matches("./"))?;
                    let exec = entry
                        .header()
                        .mode()
                        .map(|m| m & 0o111 != 0)
                        .unwrap_or(false);
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(|e| {
                        ImageError::InvalidInput(format!("the YAML package is corrupt: {e}"))
                    })?;
                    self.add_file(&format!("{dir}/{rel}"), data, exec)?;
                }
            }
        }
        Ok(self)
    }
}

/// A built layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The `.tar.gz` bytes.
    pub data: Bytes,
    /// Digest of `data` (the blob digest).
    pub digest: Digest,
    /// Digest of the uncompressed tar (goes into `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Regular files in the layer.
    pub files: usize,
}

impl Layer {
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Layer build settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOptions {
    /// Modification time of every entry (seconds since the epoch). 0 (the
    /// default) keeps the layer identical across commits when the package is
    /// unchanged; the commit time is also reproducible.
    pub mtime: u64,
    /// gzip level 0-9.
    pub compression: u32,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            mtime: 0,
            compression: 6,
        }
    }
}

/// Builds the stage layer: deterministic tar, then gzip.
pub fn build_layer(pkg: &StagePackage, opts: LayerOptions) -> Result<Layer> {
    if pkg.files.is_empty() {
        return Err(ImageError::InvalidInput(
            "the stage package has no files; give a FED, a merge directory or a YAML package"
                .into(),
        ));
    }
    // Every ancestor directory gets its own entry, before what it holds.
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for path in pkg.files.keys() {
        for anc in ancestors(path) {
            dirs.insert(anc.to_owned());
        }
    }
    enum Item<'a> {
        Dir,
        File(&'a PackageFile),
    }
    let mut items: Vec<(String, Item<'_>)> = dirs
        .into_iter()
        .map(|d| (format!("{}/", &d[1..]), Item::Dir))
        .chain(
            pkg.files
                .iter()
                .map(|(p, f)| (p[1..].to_owned(), Item::File(f))),
        )
        .collect();
    items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    let size_hint: usize = pkg.files.values().map(|f| f.data.len() + 1024).sum();
    let mut tar = tar::Builder::new(Vec::with_capacity(size_hint + 1024 * (items.len() + 2)));
    tar.mode(tar::HeaderMode::Deterministic);
    let io_err =
        |e: std::io::Error| ImageError::InvalidInput(format!("cannot write the layer: {e}"));
    for (name, item) in &items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(opts.mtime);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, name, std::io::empty())
                    .map_err(io_err)?;
            }
            Item::File(f) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(f.mode);
                h.set_size(f.data.len() as u64);
                tar.append_data(&mut h, name, &f.data[..]).map_err(io_err)?;
            }
        }
    }
    let raw = tar.into_inner().map_err(io_err)?;
    let diff_id = Digest::sha256(&raw);
    let mut gz = GzBuilder::new().mtime(0).write(
        Vec::with_capacity(raw.len() / 2 + 1024),
        Compression::new(opts.compression.min(9)),
    );
    gz.write_all(&raw).map_err(io_err)?;
    let data = gz.finish().map_err(io_err)?;
    let digest = Digest::sha256(&data);
    Ok(Layer {
        data: Bytes::from(data),
        digest,
        diff_id,
        files: pkg.files.len(),
    })
}

/// `/a/b/c` → `/a`, `/a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .skip(1)
        .map(move |(i, _)| &path[..i])
}

fn normalize_abs(path: &str) -> Result<String> {
    let bad = |why: &str| {
        ImageError::InvalidInput(format!("{path:?} is not a valid path in the image: {why}"))
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("it must be absolute"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(bad("it names the root directory"));
    }
    Ok(format!("/{}", relative_inner(rest).map_err(|w| bad(&w))?))
}

fn relative(rel: &str) -> Result<String> {
    relative_inner(rel).map_err(|why| {
        ImageError::InvalidInput(format!("{rel:?} is not a valid relative path: {why}"))
    })
}

fn relative_inner(rel: &str) -> std::result::Result<String, String> {
    if rel.starts_with('/') {
        return Err("it must be relative".into());
    }
    if rel.contains('\0') || rel.contains('\\') {
        return Err("it contains NUL or a backslash".into());
    }
    let mut parts = Vec::new();
    for comp in rel.split('/') {
        match comp {
            "" | "." => continue,
            ".." => return Err("it contains '..'".into()),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("it is empty".into());
    }
    Ok(parts.join("/"))
}

/// One entry of a layer, as listed by [`list_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub path: String,
    pub is_dir: bool,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Lists a layer's entries, for tests and diagnostics.
pub fn list_layer(gz: &[u8]) -> Result<Vec<LayerEntry>> {
    let mut tar = tar::Archive::new(GzDecoder::new(gz));
    let bad = |e: std::io::Error| ImageError::InvalidInput(format!("not a layer .tar.gz: {e}"));
    let mut out = Vec::new();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let is_dir = entry.header().entry_type().is_dir();
        let mode = entry.header().mode().map_err(bad)?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        out.push(LayerEntry {
            path,
            is_dir,
            mode,
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg() -> StagePackage {
        StagePackage::new("sha256:abc")
            .with_fed(&b"<fed/>"[..])
            .unwrap()
            .with_merge_file("conf/jvm.xml", &b"<jvm/>"[..])
            .unwrap()
            .with_merge_file("ext/lib/a.jar", &b"jar"[..])
            .unwrap()
    }

    #[test]
    fn deterministic_and_sorted() {
        let a = build_layer(&pkg(), LayerOptions::default()).unwrap();
        // Insertion order does not matter.
        let b_pkg = StagePackage::new("sha256:abc")
            .with_merge_file("ext/lib/a.jar", &b"jar"[..])
            .unwrap()
            .with_merge_file("./conf//jvm.xml", &b"<jvm/>"[..])
            .unwrap()
            .with_fed(&b"<fed/>"[..])
            .unwrap();
        let b = build_layer(&b_pkg, LayerOptions::default()).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(&a.data[..], &b.data[..]);
        // gzip header: no name flag, mtime 0.
        assert_eq!(a.data[3] & 0x08, 0);
        assert_eq!(&a.data[4..8], &[0, 0, 0, 0]);
        let entries = list_layer(&a.data).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "merge/",
                "merge/apigateway/",
                "merge/apigateway/conf/",
                "merge/apigateway/conf/jvm.xml",
                "merge/apigateway/ext/",
                "merge/apigateway/ext/lib/",
                "merge/apigateway/ext/lib/a.jar",
                "merge/fed",
            ]
        );
        assert!(entries
            .iter()
            .all(|e| e.mode == if e.is_dir { 0o755 } else { 0o644 }));
        let c = build_layer(
            &pkg(),
            LayerOptions {
                mtime: 1_700_000_000,
                ..Default::default()
            },
        )
        .unwrap();
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn rejects_bad_paths() {
        let mut p = StagePackage::new("d");
        assert!(p.add_file("relative", &b""[..], false).is_err());
        assert!(p.add_file("/", &b""[..], false).is_err());
        assert!(p.add_file("/a/../b", &b""[..], false).is_err());
        p.add_file("/a/b", &b""[..], false).unwrap();
        assert!(p.add_file("/a/b/c", &b""[..], false).is_err());
        assert!(p.add_file("/a", &b""[..], false).is_err());
        assert!(build_layer(&StagePackage::new("d"), LayerOptions::default()).is_err());
    }

    #[test]
    fn yaml_placements() {
        let mut inner = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        inner
            .append_data(&mut h, "values.yaml", &b"a: 1"[..3])
            .unwrap();
        let raw = inner.into_inner().unwrap();
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::fast());
        gz.write_all(&raw).unwrap();
        let archive = gz.finish().unwrap();

        let p = StagePackage::new("d")
            .with_yaml_package(archive.clone(), &YamlPlacement::default())
            .unwrap();
        assert!(p.files().contains_key(DEFAULT_YAML_PACKAGE_PATH));
        let p = StagePackage::new("d")
            .with_yaml_package(archive, &YamlPlacement::Extract("/opt/yaml".into()))
            .unwrap();
        assert_eq!(&p.files()["/opt/yaml/values.yaml"].data[..], b"a: ");
    }
}
