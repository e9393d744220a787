//! The repository side: files confined to the checkout, discovery of config
//! files and their stage overlays, parsing, and apim-cli's overlay merge.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::vars::{self, Context, Lookup, Secrets};
use super::Sink;

/// File extensions of config files; YAML is parsed into the same JSON model.
pub(super) const EXTENSIONS: [&str; 3] = ["json", "yaml", "yml"];

/// What a config file describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Api,
    Org,
    App,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Api, Kind::Org, Kind::App];

    /// Base file names without extension.
    pub fn stems(self) -> &'static [&'static str] {
        match self {
            Kind::Api => &["api-config"],
            Kind::Org => &["org-config"],
            Kind::App => &["application-config", "app-config"],
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Api => "API",
            Kind::Org => "organization",
            Kind::App => "application",
        }
    }

    /// Keys whose `null` in an overlay keeps the base value: apim-cli's
    /// `API` bean marks them `@JsonSetter(nulls = Nulls.SKIP)`.
    fn null_skipped(self) -> &'static [&'static str] {
        match self {
            Kind::Api => &["securityProfiles", "authenticationProfiles", "applications"],
            Kind::Org | Kind::App => &[],
        }
    }
}

/// The checkout, with every read confined to it.
pub(super) struct Repo {
    root: PathBuf,
    canonical: PathBuf,
}

/// Why a file could not be read; the caller decides how to show the path
/// (it may hold a substituted value).
#[derive(Debug)]
pub(super) enum ReadError {
    NotFound,
    Outside,
    NotFile,
    Io(io::Error),
}

impl ReadError {
    pub fn message(&self, shown_path: &str) -> String {
        match self {
            ReadError::NotFound => format!("file {shown_path} not found"),
            ReadError::Outside => format!("{shown_path} resolves outside the repository"),
            ReadError::NotFile => format!("{shown_path} is not a file"),
            ReadError::Io(e) => format!("cannot read {shown_path}: {e}"),
        }
    }
}

/// One directory entry; symbolic links to directories are `Other` (not
/// followed), links to files are `File` (their target is checked on read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EntryKind {
    File,
    Dir,
    Other,
}

impl Repo {
    pub fn open(root: &Path) -> io::Result<Self> {
        Ok(Self {
            root: root.to_owned(),
            canonical: fs::canonicalize(root)?,
        })
    }

    pub fn is_dir(&self, rel: &Path) -> bool {
        fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir())
    }

    fn is_file(&self, rel: &Path) -> bool {
        fs::metadata(self.root.join(rel)).is_ok_and(|m| m.is_file())
    }

    /// Reads a file of the checkout.
    pub fn read(&self, rel: &Path) -> Result<Vec<u8>, ReadError> {
        let canonical = fs::canonicalize(self.root.join(rel)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        })?;
        // A symbolic link may point out of the checkout.
        if !canonical.starts_with(&self.canonical) {
            return Err(ReadError::Outside);
        }
        if !canonical.is_file() {
            return Err(ReadError::NotFile);
        }
        fs::read(&canonical).map_err(ReadError::Io)
    }

    /// Sorted entries, hidden ones left out.
    fn list(&self, rel: &Path) -> Result<Vec<(String, EntryKind)>, String> {
        let dir = fs::read_dir(self.root.join(rel))
            .map_err(|e| format!("cannot list `{}`: {e}", rel.display()))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| format!("cannot list `{}`: {e}", rel.display()))?;
            // Non-UTF-8 names cannot be config files Gantry knows.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let kind = match entry.file_type() {
                Ok(t) if t.is_dir() => EntryKind::Dir,
                Ok(t) if t.is_file() => EntryKind::File,
                Ok(t) if t.is_symlink() && self.is_file(&rel.join(&name)) => EntryKind::File,
                _ => EntryKind::Other,
            };
            entries.push((name, kind));
        }
        entries.sort();
        Ok(entries)
    }
}

/// `reference` (relative to `dir`, both inside the repository) as a path
/// relative to the repository root. Rejects absolute paths and `..` that
/// climbs out of the repository.
pub(super) fn resolve(dir: &Path, reference: &str) -> Result<PathBuf, String> {
    let path = Path::new(reference);
    if reference.is_empty() {
        return Err("is empty".into());
    }
    // `C:...` and `\\...` are absolute on Windows checkouts.
    if path.has_root() || reference.starts_with('\\') || reference.as_bytes().get(1) == Some(&b':')
    {
        return Err("must be a path relative to the config file, not an absolute path".into());
    }
    let mut resolved = PathBuf::new();
    for component in dir.join(path).components() {
        match component {
            Component::Normal(part) => resolved.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !resolved.pop() {
                    return Err("points outside the repository".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be a path relative to the config file".into())
            }
        }
    }
    Ok(resolved)
}

/// One config file found, with the overlay for the stage if any.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub kind: Kind,
    pub base: PathBuf,
    pub overlay: Option<PathBuf>,
}

/// Walks `dir` (relative to the repository) in sorted order.
pub(super) fn discover(
    repo: &Repo,
    dir: &Path,
    stage: &str,
    sink: &mut Sink,
    out: &mut Vec<Found>,
) {
    let entries = match repo.list(dir) {
        Ok(entries) => entries,
        Err(message) => {
            sink.error(dir, None, message);
            return;
        }
    };
    let files: BTreeSet<&str> = entries
        .iter()
        .filter(|(_, kind)| *kind == EntryKind::File)
        .map(|(name, _)| name.as_str())
        .collect();
    // Stems of the configs here: subdirectories holding such files are
    // their stage overlay directories, not items of their own.
    let mut stems_here: Vec<&str> = Vec::new();
    for kind in Kind::ALL {
        let bases: Vec<(&str, String)> = kind
            .stems()
            .iter()
            .flat_map(|stem| {
                EXTENSIONS
                    .iter()
                    .map(move |ext| (*stem, format!("{stem}.{ext}")))
            })
            .filter(|(_, name)| files.contains(name.as_str()))
            .collect();
        let Some((stem, name)) = bases.first() else {
            continue;
        };
        let base = dir.join(name);
        if bases.len() > 1 {
            let names: Vec<String> = bases.iter().map(|(_, n)| format!("`{n}`")).collect();
            sink.error(
                &base,
                None,
                format!(
                    "more than one {} config in one directory ({}): keep one",
                    kind.label(),
                    names.join(", ")
                ),
            );
            stems_here.extend(bases.iter().map(|(s, _)| *s));
            continue;
        }
        stems_here.push(stem);
        let overlays = overlay_candidates(dir, stem, stage)
            .into_iter()
            .filter(|path| repo.is_file(path))
            .collect::<Vec<_>>();
        if overlays.len() > 1 {
            let names: Vec<String> = overlays
                .iter()
                .map(|p| format!("`{}`", p.display()))
                .collect();
            sink.error(
                &base,
                None,
                format!(
                    "more than one overlay for stage `{stage}` ({}): keep one",
                    names.join(", ")
                ),
            );
            continue;
        }
        out.push(Found {
            kind,
            base,
            overlay: overlays.into_iter().next(),
        });
    }
    for (name, kind) in &entries {
        if *kind != EntryKind::Dir {
            continue;
        }
        let sub = dir.join(name);
        if !stems_here.is_empty() && is_overlay_dir(repo, &sub, name, &stems_here) {
            continue;
        }
        discover(repo, &sub, stage, sink, out);
    }
}

/// apim-cli's `Utils.getStageConfig` looks for `<stem>.<stage>.<ext>` and
/// `<stage>/<stem>.<stage>.<ext>`; Gantry also takes `<stage>/<stem>.<ext>`.
fn overlay_candidates(dir: &Path, stem: &str, stage: &str) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    for ext in EXTENSIONS {
        candidates.push(dir.join(format!("{stem}.{stage}.{ext}")));
        candidates.push(dir.join(stage).join(format!("{stem}.{ext}")));
        candidates.push(dir.join(stage).join(format!("{stem}.{stage}.{ext}")));
    }
    candidates
}

/// Whether `sub` (named `name`) holds an overlay of a config of its parent.
fn is_overlay_dir(repo: &Repo, sub: &Path, name: &str, stems: &[&str]) -> bool {
    stems.iter().any(|stem| {
        EXTENSIONS.iter().any(|ext| {
            repo.is_file(&sub.join(format!("{stem}.{ext}")))
                || repo.is_file(&sub.join(format!("{stem}.{name}.{ext}")))
        })
    })
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads, substitutes and parses one config file. Problems go to `sink`.
pub(super) fn load_document(
    repo: &Repo,
    rel: &Path,
    lookup: Lookup<'_>,
    sink: &mut Sink,
) -> Option<(Value, Secrets)> {
    let bytes = match repo.read(rel) {
        Ok(bytes) => bytes,
        Err(e) => {
            sink.error(rel, None, e.message(&format!("`{}`", rel.display())));
            return None;
        }
    };
    let Ok(text) = String::from_utf8(bytes) else {
        sink.error(rel, None, "is not UTF-8 text");
        return None;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut secrets = Secrets::default();
    let value = if is_yaml(rel) {
        // Parsed before substitution, so values never change the structure
        // and parse errors cannot quote them.
        let mut value: Value = match serde_saphyr::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                let message = e.to_string();
                let first = message.lines().next().unwrap_or_default();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                sink.error(rel, None, format!("is not valid YAML: {first}"));
                return None;
            }
        };
        let mut missing = Vec::new();
        vars::substitute_tree(&mut value, "", lookup, &mut secrets, &mut missing);
        for (name, field) in &missing {
            sink.error(rel, Some(field.clone()), missing_message(name, None));
        }
        if !missing.is_empty() {
            return None;
        }
        value
    } else {
        let mut missing = Vec::new();
        let substituted =
            vars::substitute(text, Context::JsonText, lookup, &mut secrets, &mut missing);
        for m in &missing {
            sink.error(
                rel,
                None,
                missing_message(&m.name, Some(vars::line_of(text, m.offset))),
            );
        }
        if !missing.is_empty() {
            return None;
        }
        // serde_json's messages carry line and column, never the input.
        match serde_json::from_str(&substituted) {
            Ok(value) => value,
            Err(e) => {
                sink.error(rel, None, format!("is not valid JSON: {e}"));
                return None;
            }
        }
    };
    Some((value, secrets))
}

fn missing_message(name: &str, line: Option<usize>) -> String {
    let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    format!(
        "variable `${{{name}}}`{at} has no value: set it in the stage's values file, declare it under the stage's `env` \
         in the pipeline file, give a default with `${{{name}:-default}}`, or write `$${{{name}}}` for a literal"
    )
}

/// One organization, application or API config after the overlay merge.
#[derive(Debug)]
pub(super) struct Item {
    pub kind: Kind,
    /// The base file, relative to the repository root.
    pub base: PathBuf,
    /// The base file's directory: apim-cli resolves references (spec,
    /// certificates, images) against it, also when they come from the
    /// overlay.
    pub dir: PathBuf,
    /// `[i].` for an element of a list file.
    prefix: String,
    overlay: Option<PathBuf>,
    overlay_keys: BTreeSet<String>,
    pub config: Map<String, Value>,
    pub secrets: Secrets,
}

impl Item {
    /// The file that set a top-level key.
    pub fn file_of(&self, key: &str) -> &Path {
        match &self.overlay {
            Some(overlay) if self.overlay_keys.contains(key) => overlay,
            _ => &self.base,
        }
    }

    pub fn field(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    fn file_of_field(&self, path: &str) -> PathBuf {
        let key = path.split(['.', '[']).next().unwrap_or(path);
        self.file_of(key).to_owned()
    }

    pub fn error(&self, sink: &mut Sink, path: &str, message: impl Into<String>) {
        let file = self.file_of_field(path);
        sink.error(&file, Some(self.field(path)), message);
    }

    pub fn warn(&self, sink: &mut Sink, path: &str, message: impl Into<String>) {
        let file = self.file_of_field(path);
        sink.warn(&file, Some(self.field(path)), message);
    }
}

/// Loads a found config and its overlay and merges them the way apim-cli's
/// `ObjectMapper.readerForUpdating` does (see the module documentation).
pub(super) fn load_items(
    repo: &Repo,
    found: &Found,
    lookup: Lookup<'_>,
    sink: &mut Sink,
) -> Vec<Item> {
    let base = load_document(repo, &found.base, lookup, sink);
    let overlay = found
        .overlay
        .as_ref()
        .map(|path| (path, load_document(repo, path, lookup, sink)));
    let Some((base_value, secrets)) = base else {
        return Vec::new();
    };
    let dir = found.base.parent().map(Path::to_owned).unwrap_or_default();
    let item = |prefix: String, config: Map<String, Value>, secrets: Secrets| Item {
        kind: found.kind,
        base: found.base.clone(),
        dir: dir.clone(),
        prefix,
        overlay: None,
        overlay_keys: BTreeSet::new(),
        config,
        secrets,
    };
    match base_value {
        Value::Object(config) => {
            let mut item = item(String::new(), config, secrets.clone());
            if let Some((path, loaded)) = overlay {
                let Some((overlay_value, overlay_secrets)) = loaded else {
                    return Vec::new();
                };
                item.secrets.extend(overlay_secrets);
                let Value::Object(overlay_config) = overlay_value else {
                    sink.error(path, None, "must hold a JSON object, like its base config");
                    return Vec::new();
                };
                merge(&mut item, path, overlay_config);
            }
            vec![item]
        }
        Value::Array(list) if found.kind != Kind::Api => {
            if let Some((path, _)) = overlay {
                // As apim-cli's JSONOrgAdapter / JSONConfigClientAppAdapter.
                sink.error(
                    path,
                    None,
                    format!(
                        "stage overlays are not supported for a list of {}s",
                        found.kind.label()
                    ),
                );
                return Vec::new();
            }
            let mut items = Vec::new();
            for (index, element) in list.into_iter().enumerate() {
                match element {
                    Value::Object(config) => {
                        items.push(item(format!("[{index}]."), config, secrets.clone()))
                    }
                    _ => sink.error(
                        &found.base,
                        Some(format!("[{index}]")),
                        format!(
                            "must be a JSON object describing one {}",
                            found.kind.label()
                        ),
                    ),
                }
            }
            items
        }
        _ => {
            let what = match found.kind {
                Kind::Api => "a JSON object".to_owned(),
                kind => format!("a JSON object or a list of {}s", kind.label()),
            };
            sink.error(&found.base, None, format!("must hold {what}"));
            Vec::new()
        }
    }
}

/// Top-level replace: a key in the overlay replaces the base value as a
/// whole; `null` removes it, except for the keys apim-cli skips nulls for.
fn merge(item: &mut Item, overlay: &Path, config: Map<String, Value>) {
    item.overlay = Some(overlay.to_owned());
    for (key, value) in config {
        if value.is_null() {
            if !item.kind.null_skipped().contains(&key.as_str()) {
                item.config.remove(&key);
                item.overlay_keys.insert(key);
            }
            continue;
        }
        item.config.insert(key.clone(), value);
        item.overlay_keys.insert(key);
    }
}
