//! Deployment packages (`gateway.format: fed`) and policy + environment
//! packages (`gateway.format: pol-env`).
//!
//! - [`check_archive`] checks a `.fed`, `.pol` or `.env`: a readable zip, its
//!   `META-INF/MANIFEST.MF` (`Manifest-Version`, `Id`, `Timestamp`), safe entry
//!   names (no absolute paths, no `..`), and the entity stores the kind needs,
//!   each matching its `.sha256`.
//! - [`env_settings`] turns a stage's values into its `envSettings.props`
//!   (`env.PORT.TRAFFIC=8065`), the file API Gateway reads to expand the
//!   `${env.X}` selectors of a configuration.
//! - [`build_fed_package`] and [`build_pol_env_package`] build one stage's
//!   deterministic `.tar.gz`.
//!
//! # Package layout
//!
//! The archive is laid out as the `/merge` directory of an EMT container, so
//! that unpacking it there (or mounting it as Axway's Helm chart does with
//! `mergeDirVolume`) is all a deployment needs:
//!
//! | entry | what |
//! |-------|------|
//! | `fed` | `fed` format: the `.fed` file, unchanged. EMT containers deploy the FED found at the *file* `/merge/fed` (Axway: `-v …/newFed.fed:/merge/fed`) |
//! | `pol-env/<name>.pol`, `pol-env/<stage>.env` | `pol-env` format: the policy package and the stage's environment package, unchanged, under their own names |
//! | `apigateway/…` | the optional merge directory of the repository (relative paths kept): EMT copies `/merge/apigateway` over the install (`/opt/Axway/apigateway`) at start |
//! | `apigateway/groups/emt-group/emt-service/conf/envSettings.props` | generated from the stage's values when they give any setting: the EMT gateway instance's `envSettings.props`, where Axway's container documentation puts it |
//!
//! EMT containers take only a FED at `/merge/fed`; they do not merge a
//! `.pol` and a `.env` at start. A `pol-env` package therefore carries the
//! pair side by side, unchanged, for a step that has Axway's tools to merge
//! them into a FED (`build_gw_image.py --pol … --env …` when building the
//! image, or `projpack`); Gantry does not re-implement that merge.
//!
//! Determinism: [`crate::package::tar_gz`] (entries sorted, directories before
//! their content, mtime 0, owner 0:0, modes 0644/0755, gzip without name or
//! time), and a generated `envSettings.props` sorted by key with a fixed
//! header: the same commit and values always give the same sha256.
//!
//! # Secrets
//!
//! Values from `env:NAME` / `file:/path` references or `{{ env }}`
//! placeholders, values under credential-like keys and credential-looking
//! values are written to `envSettings.props` (the gateway needs them) but are
//! masked (`***`) in every diagnostic and warning.

mod archive;
mod configs;
mod manifest;
mod props;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use gantry_proto::events::Diagnostic;
use serde_json::Value;

pub use archive::{
    check_archive, ArchiveInfo, ArchiveKind, StoreInfo, ENVIRONMENT_MANIFEST, ENVIRONMENT_STORE,
    MANIFEST, MAX_ENTRY_SIZE, MAX_TOTAL_SIZE, POLICY_MANIFEST, POLICY_STORE, REQUIRED_HEADERS,
};
pub use props::{
    env_settings, escape_key, escape_value, EnvSettings, HEADER as ENV_SETTINGS_HEADER,
};

use crate::package::{sha256, tar_gz};
use crate::secrets::Masker;
use crate::template::{Env, MapEnv};

/// The package entry of a `fed` format's FED (unpacked at `/merge`, it is the
/// file `/merge/fed`).
pub const FED_ENTRY: &str = "fed";
/// The package directory of a `pol-env` format's `.pol` and `.env`.
pub const POL_ENV_DIR: &str = "pol-env";
/// The package directory of the merge directory (`/merge/apigateway`).
pub const MERGE_ROOT: &str = "apigateway";
/// Where the generated `envSettings.props` goes, relative to [`MERGE_ROOT`]:
/// the EMT gateway instance's `conf` directory.
pub const ENV_SETTINGS_PATH: &str = "groups/emt-group/emt-service/conf/envSettings.props";

/// A built package.
#[derive(Debug, Clone, PartialEq)]
pub struct FedPackage {
    /// The `.tar.gz` bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// Number of regular files in the archive.
    pub files: u64,
    /// `sha256:<hex>` of the canonical JSON of the values as given (an
    /// `env:NAME` reference counts as written, not as the secret it gives).
    pub values_digest: String,
    /// The regular files of the archive, in archive order.
    pub entries: Vec<String>,
    /// Observations that did not stop the package (secrets masked).
    pub warnings: Vec<Diagnostic>,
}

impl FedPackage {
    /// Size of the archive in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// How values are resolved and named.
#[derive(Clone, Copy)]
pub struct BuildOptions<'a> {
    /// Where `env:NAME` and `{{ env "NAME" }}` are looked up.
    pub env: &'a dyn Env,
    /// The name of the values in diagnostics (e.g. `environments/test.yaml`).
    pub values_file: &'a str,
}

/// No variables: what a build sees when its stage declares none.
static NO_VARIABLES: MapEnv = MapEnv(std::collections::BTreeMap::new());

impl Default for BuildOptions<'static> {
    fn default() -> Self {
        BuildOptions {
            env: &NO_VARIABLES,
            values_file: "values",
        }
    }
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("values_file", &self.values_file)
            .finish_non_exhaustive()
    }
}

fn diag(file: &str, field: Option<&str>, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: Some(file.to_string()),
        line: None,
        column: None,
        field: field.map(str::to_string),
        message: message.into(),
    }
}

/// `a/b/` → `a/b`; `./a` → `a`; `/a` stays absolute (to be refused as such).
fn clean(rel: &str) -> String {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    if rel.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// A path of the repository, refusing absolute paths, `..` and symbolic links
/// leading outside it.
fn repo_path(repo_root: &Path, rel: &str, field: &str) -> Result<PathBuf, Diagnostic> {
    let shown = if rel.is_empty() { "(empty)" } else { rel };
    let p = Path::new(rel);
    if rel.trim().is_empty() {
        return Err(diag(shown, Some(field), format!("`{field}` is empty")));
    }
    if p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::Prefix(_) | Component::RootDir
            )
        })
    {
        return Err(diag(
            rel,
            Some(field),
            format!("`{field}` must be a relative path inside the repository, without `..`"),
        ));
    }
    let joined = repo_root.join(p);
    if let (Ok(root), Ok(target)) = (repo_root.canonicalize(), joined.canonicalize()) {
        if !target.starts_with(&root) {
            return Err(diag(
                rel,
                Some(field),
                "a symbolic link leads outside the repository; refusing to read it",
            ));
        }
    }
    Ok(joined)
}

/// Read a file of the repository.
fn read_repo_file(
    repo_root: &Path,
    rel: &str,
    field: &str,
    what: &str,
) -> Result<Vec<u8>, Diagnostic> {
    let path = repo_path(repo_root, rel, field)?;
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(diag(
                rel,
                Some(field),
                format!("not found: the {what} is missing from the repository"),
            ))
        }
        Err(e) => {
            return Err(diag(
                rel,
                Some(field),
                format!("cannot read the {what}: {e}"),
            ))
        }
        Ok(m) if m.is_dir() => {
            return Err(diag(
                rel,
                Some(field),
                format!("is a directory; the {what} must be a file"),
            ))
        }
        Ok(m) if !m.is_file() => {
            return Err(diag(
                rel,
                Some(field),
                format!("is not a regular file; the {what} must be one"),
            ))
        }
        Ok(_) => {}
    }
    std::fs::read(&path).map_err(|e| diag(rel, Some(field), format!("cannot read the {what}: {e}")))
}

fn check_stage(stage: &str, file: &str) -> Result<(), Diagnostic> {
    let ok = !stage.is_empty()
        && stage.len() <= 63
        && !stage.starts_with('.')
        && stage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(diag(
            file,
            Some("stage"),
            format!(
                "invalid stage name `{}`: letters, digits, `-`, `_` and `.` only",
                manifest::clip(stage)
            ),
        ))
    }
}

/// The merge directory's files (`(relative path, bytes)`, sorted) and
/// directories.
type MergeFiles = (Vec<(String, Vec<u8>)>, Vec<String>);

fn read_merge_dir(repo_root: &Path, merge_dir: &str) -> Result<MergeFiles, Vec<Diagnostic>> {
    let field = "gateway.merge_dir";
    let root = repo_path(repo_root, merge_dir, field).map_err(|d| vec![d])?;
    match std::fs::metadata(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(vec![diag(
                merge_dir,
                Some(field),
                "not found: the merge directory is missing from the repository",
            )])
        }
        Err(e) => {
            return Err(vec![diag(
                merge_dir,
                Some(field),
                format!("cannot read the merge directory: {e}"),
            )])
        }
        Ok(m) if !m.is_dir() => {
            return Err(vec![diag(
                merge_dir,
                Some(field),
                "is not a directory; `merge_dir` names a directory mirroring /opt/Axway/apigateway",
            )])
        }
        Ok(_) => {}
    }
    let base = clean(merge_dir);
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut errors = Vec::new();
    let mut stack = vec![(root, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let shown_dir = if rel.is_empty() {
            base.clone()
        } else {
            format!("{base}/{rel}")
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                errors.push(diag(
                    &shown_dir,
                    Some(field),
                    format!("cannot read the directory: {e}"),
                ));
                continue;
            }
        };
        let mut list = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => list.push(e),
                Err(e) => errors.push(diag(
                    &shown_dir,
                    Some(field),
                    format!("cannot read the directory: {e}"),
                )),
            }
        }
        list.sort_by_key(|e| e.file_name());
        for entry in list {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                errors.push(diag(
                    &shown_dir,
                    Some(field),
                    format!(
                        "a file name is not UTF-8 ({}); rename it",
                        name.to_string_lossy()
                    ),
                ));
                continue;
            };
            let child_rel = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let shown = format!("{base}/{child_rel}");
            let ft = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    errors.push(diag(&shown, Some(field), format!("cannot read: {e}")));
                    continue;
                }
            };
            if ft.is_symlink() {
                errors.push(diag(
                    &shown,
                    Some(field),
                    "is a symbolic link; the merge directory may hold only files and directories",
                ));
            } else if ft.is_dir() {
                dirs.push(child_rel.clone());
                stack.push((entry.path(), child_rel));
            } else if ft.is_file() {
                match std::fs::read(entry.path()) {
                    Ok(data) => files.push((child_rel, data)),
                    Err(e) => errors.push(diag(&shown, Some(field), format!("cannot read: {e}"))),
                }
            } else {
                errors.push(diag(&shown, Some(field), "is not a regular file"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    dirs.sort();
    Ok((files, dirs))
}

/// The configuration files of a package (entry → bytes) and what their
/// archives declare.
struct Config {
    files: Vec<(String, Vec<u8>)>,
    archives: Vec<ArchiveInfo>,
}

/// What every format shares: values → `envSettings.props`, the merge
/// directory, and the archive.
fn assemble(
    repo_root: &Path,
    gateway_file: &str,
    config: Result<Config, Vec<Diagnostic>>,
    values: &Value,
    merge_dir: Option<&str>,
    opts: &BuildOptions<'_>,
) -> Result<FedPackage, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut masker = Masker::default();

    let config = match config {
        Ok(c) => Some(c),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    let settings = match env_settings(values, opts.env, opts.values_file) {
        Ok(s) => {
            masker.extend(s.secrets.iter().map(String::as_str));
            Some(s)
        }
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    let merge = match merge_dir.map(|m| read_merge_dir(repo_root, m)) {
        None => Some((Vec::new(), Vec::new())),
        Some(Ok(m)) => Some(m),
        Some(Err(mut e)) => {
            errors.append(&mut e);
            None
        }
    };

    if let (Some(s), Some((files, _)), Some(md)) = (&settings, &merge, merge_dir) {
        if !s.is_empty() && files.iter().any(|(rel, _)| rel == ENV_SETTINGS_PATH) {
            errors.push(diag(
                &format!("{}/{ENV_SETTINGS_PATH}", clean(md)),
                Some("gateway.merge_dir"),
                "the merge directory has its own envSettings.props, and the stage's values would replace it: move its settings into the values (or give the stage no values)",
            ));
        }
    }

    if let (Some(config), Some(s), Some((merge_files, _))) = (&config, &settings, &merge) {
        for a in &config.archives {
            warnings.extend(a.warnings.iter().cloned());
        }
        // Settings no selector uses are likely typos.
        let mut selectors: BTreeSet<String> = BTreeSet::new();
        for a in &config.archives {
            selectors.extend(a.env_selectors.iter().cloned());
        }
        if !selectors.is_empty() {
            let mut in_merge = BTreeSet::new();
            for (_, data) in merge_files {
                if let Ok(text) = std::str::from_utf8(data) {
                    archive::env_selectors(text, &mut in_merge);
                }
            }
            for key in &s.keys {
                let name = key.strip_prefix("env.").unwrap_or(key);
                if !selectors.contains(name) && !in_merge.contains(name) {
                    warnings.push(diag(
                        opts.values_file,
                        Some(name),
                        format!("`{key}` is set, but no `${{{key}}}` selector of {gateway_file} uses it"),
                    ));
                }
            }
        }
    }

    if !errors.is_empty() {
        for d in &mut errors {
            masker.mask_diagnostic(d);
        }
        crate::diag::sort(&mut errors);
        return Err(errors);
    }
    let (Some(config), Some(settings), Some((merge_files, merge_dirs))) = (config, settings, merge)
    else {
        // Unreachable: every `None` above came with an error.
        return Err(vec![diag(
            gateway_file,
            None,
            "the package could not be built",
        )]);
    };

    let mut files: Vec<(String, Vec<u8>)> = config.files;
    for (rel, data) in merge_files {
        files.push((format!("{MERGE_ROOT}/{rel}"), data));
    }
    if !settings.is_empty() {
        files.push((
            format!("{MERGE_ROOT}/{ENV_SETTINGS_PATH}"),
            settings.text.into_bytes(),
        ));
    }
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut dirs: BTreeSet<String> = merge_dirs
        .iter()
        .map(|d| format!("{MERGE_ROOT}/{d}"))
        .collect();
    for (p, _) in &files {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            dirs.insert(parent.to_string());
            cur = parent;
        }
    }
    let dirs: Vec<String> = dirs.into_iter().collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let bytes = tar_gz(&dirs, &refs).map_err(|e| {
        vec![diag(
            gateway_file,
            None,
            format!("cannot write the package archive: {e}"),
        )]
    })?;
    for d in &mut warnings {
        masker.mask_diagnostic(d);
    }
    crate::diag::sort(&mut warnings);
    Ok(FedPackage {
        digest: sha256(&bytes),
        files: files.len() as u64,
        values_digest: crate::values::values_digest(values),
        entries: files.into_iter().map(|(p, _)| p).collect(),
        warnings,
        bytes,
    })
}

/// Build a stage's package for `gateway.format: fed` (see the module
/// documentation for the layout), with values resolved against the process
/// environment. `gateway_path` (the `.fed`) and `merge_dir` are relative to
/// `repo_root`.
pub fn build_fed_package(
    repo_root: &Path,
    gateway_path: &str,
    stage: &str,
    values: &Value,
    merge_dir: Option<&str>,
) -> Result<FedPackage, Vec<Diagnostic>> {
    build_fed_package_with(
        repo_root,
        gateway_path,
        stage,
        values,
        merge_dir,
        &BuildOptions::default(),
    )
}

/// [`build_fed_package`] with explicit options.
pub fn build_fed_package_with(
    repo_root: &Path,
    gateway_path: &str,
    stage: &str,
    values: &Value,
    merge_dir: Option<&str>,
    opts: &BuildOptions<'_>,
) -> Result<FedPackage, Vec<Diagnostic>> {
    let shown = clean(gateway_path);
    let config = (|| {
        check_stage(stage, &shown).map_err(|d| vec![d])?;
        let bytes = read_repo_file(
            repo_root,
            gateway_path,
            "gateway.path",
            "deployment package (.fed)",
        )
        .map_err(|mut d| {
            d.file = Some(shown.clone());
            vec![d]
        })?;
        let info = check_archive(&shown, &bytes, ArchiveKind::Fed)?;
        Ok(Config {
            files: vec![(FED_ENTRY.to_string(), bytes)],
            archives: vec![info],
        })
    })();
    assemble(repo_root, &shown, config, values, merge_dir, opts)
}

/// Build a stage's package for `gateway.format: pol-env`: `gateway_path` is a
/// directory with one `*.pol` and an `<stage>.env` per stage. Both are
/// checked; the package carries them unchanged under [`POL_ENV_DIR`] (see the
/// module documentation).
pub fn build_pol_env_package(
    repo_root: &Path,
    gateway_path: &str,
    stage: &str,
    values: &Value,
    merge_dir: Option<&str>,
) -> Result<FedPackage, Vec<Diagnostic>> {
    build_pol_env_package_with(
        repo_root,
        gateway_path,
        stage,
        values,
        merge_dir,
        &BuildOptions::default(),
    )
}

/// [`build_pol_env_package`] with explicit options.
pub fn build_pol_env_package_with(
    repo_root: &Path,
    gateway_path: &str,
    stage: &str,
    values: &Value,
    merge_dir: Option<&str>,
    opts: &BuildOptions<'_>,
) -> Result<FedPackage, Vec<Diagnostic>> {
    let shown = clean(gateway_path);
    let config = pol_env_config(repo_root, gateway_path, &shown, stage);
    assemble(repo_root, &shown, config, values, merge_dir, opts)
}

fn pol_env_config(
    repo_root: &Path,
    gateway_path: &str,
    shown: &str,
    stage: &str,
) -> Result<Config, Vec<Diagnostic>> {
    let field = "gateway.path";
    check_stage(stage, shown).map_err(|d| vec![d])?;
    let dir = repo_path(repo_root, gateway_path, field).map_err(|d| vec![d])?;
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(vec![diag(shown, Some(field), "not found: the directory of the .pol and .env files is missing from the repository")])
        }
        Err(e) => return Err(vec![diag(shown, Some(field), format!("cannot read the directory: {e}"))]),
        Ok(m) if !m.is_dir() => {
            return Err(vec![diag(
                shown,
                Some(field),
                "is not a directory: `gateway.format: pol-env` takes a directory holding one .pol and a <stage>.env per stage",
            )])
        }
        Ok(_) => {}
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        vec![diag(
            shown,
            Some(field),
            format!("cannot read the directory: {e}"),
        )]
    })?;
    let mut pols = Vec::new();
    let mut envs = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".pol") {
            pols.push(name);
        } else if lower.ends_with(".env") {
            envs.push(name);
        }
    }
    pols.sort();
    envs.sort();
    let mut errors = Vec::new();
    let list = |v: &[String]| {
        v.iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pol = match pols.as_slice() {
        [] => {
            errors.push(diag(
                shown,
                Some(field),
                "no policy package (*.pol) in the directory",
            ));
            None
        }
        [one] => Some(one.clone()),
        many => {
            errors.push(diag(
                shown,
                Some(field),
                format!(
                    "{} policy packages ({}): keep exactly one .pol per directory",
                    many.len(),
                    list(many)
                ),
            ));
            None
        }
    };
    let env_name = format!("{stage}.env");
    let env_shown = format!("{shown}/{env_name}");
    let env = if envs.contains(&env_name) {
        Some(env_name.clone())
    } else {
        let available = if envs.is_empty() {
            "there is no .env file at all".to_string()
        } else {
            format!("available: {}", list(&envs))
        };
        errors.push(diag(
            &env_shown,
            Some(field),
            format!("not found: stage `{stage}` takes its environment package from `{env_name}`; {available}"),
        ));
        None
    };
    let mut files = Vec::new();
    let mut archives = Vec::new();
    for (name, kind) in [(pol, ArchiveKind::Pol), (env, ArchiveKind::Env)] {
        let Some(name) = name else { continue };
        let rel = format!("{}/{name}", gateway_path.trim_end_matches('/'));
        let file = format!("{shown}/{name}");
        let bytes = match read_repo_file(repo_root, &rel, field, kind.describe()) {
            Ok(b) => b,
            Err(mut d) => {
                d.file = Some(file);
                errors.push(d);
                continue;
            }
        };
        match check_archive(&file, &bytes, kind) {
            Ok(info) => {
                archives.push(info);
                files.push((format!("{POL_ENV_DIR}/{name}"), bytes));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config { files, archives })
}

/// Build a stage's package for `format` `fed` or `pol-env` (the YAML format
/// has [`crate::package_yaml`]).
pub fn build_gateway_package_with(
    format: &str,
    repo_root: &Path,
    gateway_path: &str,
    stage: &str,
    values: &Value,
    merge_dir: Option<&str>,
    opts: &BuildOptions<'_>,
) -> Result<FedPackage, Vec<Diagnostic>> {
    match format {
        "fed" => build_fed_package_with(repo_root, gateway_path, stage, values, merge_dir, opts),
        "pol-env" => {
            build_pol_env_package_with(repo_root, gateway_path, stage, values, merge_dir, opts)
        }
        other => Err(vec![diag(
            &clean(gateway_path),
            Some("gateway.format"),
            format!(
                "`{}` is not a zip-archive format: expected `fed` or `pol-env`",
                manifest::clip(other)
            ),
        )]),
    }
}
