//! Deterministic deployment archives for YAML projects.
//!
//! A YAML Entity Store deploys as a `.tar.gz` of the project directory's
//! *contents* (no root folder). The archive is built so that the same commit
//! and values always give the same bytes: entries sorted by path, directories
//! before what they hold, modification time 0, owner 0:0 with no names, mode
//! 0644 for files and 0755 for directories, GNU long names, and a gzip header
//! without name or time.

use std::io::Write as _;
use std::sync::Arc;

use flate2::{Compression, GzBuilder};
use gantry_proto::events::Diagnostic;
use sha2::{Digest, Sha256};

use crate::template::Env;
use crate::values::StageValues;
use crate::yamles::{Project, Report, ValidateOptions};

/// How placeholders end up in the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenderMode {
    /// `render: false` (the default): entity files keep their placeholders and
    /// the package carries the stage's merged `values.yaml`; the gateway
    /// resolves them when it loads the configuration.
    #[default]
    Placeholders,
    /// `render: true`: placeholders are resolved into the files and no
    /// `values.yaml` is shipped.
    Rendered,
}

/// A built package.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// The `.tar.gz` bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// Number of regular files in the archive.
    pub files: u64,
    /// `sha256:<hex>` of the stage's canonical values.
    pub values_digest: String,
    /// Problems that did not stop the package (allowed unresolved references).
    pub warnings: Vec<Diagnostic>,
}

impl Package {
    /// Size of the archive in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Why no package was built.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The project does not validate for the stage: every problem is in the report.
    #[error("the configuration has {} problem(s) for this stage", .0.errors.len())]
    Invalid(Report),
    /// Writing the archive failed.
    #[error("cannot write the archive: {0}")]
    Io(#[from] std::io::Error),
}

/// Validate `project` for a stage and build its archive.
pub fn package_yaml(
    project: &Project,
    values: &StageValues,
    env: &dyn Env,
    mode: RenderMode,
    opts: &ValidateOptions,
) -> Result<Package, PackageError> {
    type Files = Vec<(String, Arc<[u8]>)>;
    let (files, warnings): (Files, Vec<Diagnostic>) = match mode {
        RenderMode::Placeholders => {
            let report = project.validate(values, env, opts);
            if !report.is_ok() {
                return Err(PackageError::Invalid(report));
            }
            let mut files: Vec<(String, Arc<[u8]>)> = project
                .files()
                .filter(|(p, _)| *p != "values.yaml")
                .map(|(p, d)| (p.to_string(), d.clone()))
                .collect();
            let has_values = project.values_source().is_some()
                || values.raw().as_object().is_some_and(|m| !m.is_empty());
            if has_values {
                files.push((
                    "values.yaml".to_string(),
                    Arc::from(values.to_yaml().into_bytes()),
                ));
            }
            (files, report.warnings)
        }
        RenderMode::Rendered => {
            let (rendered, report) = project
                .render_with_report(values, env, opts)
                .map_err(PackageError::Invalid)?;
            (
                rendered.into_iter().map(|f| (f.path, f.contents)).collect(),
                report.warnings,
            )
        }
    };
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), &d[..])).collect();
    let bytes = tar_gz(project.directories(), &refs)?;
    Ok(Package {
        digest: sha256(&bytes),
        files: files.len() as u64,
        values_digest: values.digest(),
        warnings,
        bytes,
    })
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A deterministic `.tar.gz` of `dirs` (relative paths) and `files`
/// (`(relative path, bytes)`), with no root folder.
pub fn tar_gz(dirs: &[String], files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    enum Item<'a> {
        Dir(String),
        File(&'a str, &'a [u8]),
    }
    let mut items: Vec<(String, Item<'_>)> = Vec::with_capacity(dirs.len() + files.len());
    for d in dirs {
        let name = format!("{}/", d.trim_end_matches('/'));
        items.push((name.clone(), Item::Dir(name)));
    }
    for (p, data) in files {
        items.push((p.to_string(), Item::File(p, data)));
    }
    items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    items.dedup_by(|a, b| a.0 == b.0);

    let gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (_, item) in &items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, name, std::io::empty())?;
            }
            Item::File(path, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, *data)?;
            }
        }
    }
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()?;
    Ok(out)
}
