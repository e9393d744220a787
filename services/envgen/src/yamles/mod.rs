//! Validation and rendering of a YAML Entity Store project for one stage.
//!
//! Project layout (as Axway's `yamles` writes it, and as the fixtures show):
//! - `_parent.yaml` at the root holds the root entity; `values.yaml` holds the
//!   values for placeholders; other files at the root are ignored by the
//!   gateway (e.g. `_conversion-key-mapping.yaml`) but are packaged;
//! - `META-INF/` holds manifests and the type model `META-INF/types/`;
//! - a directory with a `_parent.yaml` is a container entity (its key comes
//!   from that file); a directory without one is a folder whose name is a path
//!   segment (the top-level `Policies/`, `System/`, ...);
//! - every other `*.yaml` file is an entity, possibly with `children:`.
//!
//! An entity's YamlPK is its parent's YamlPK, `/`, and its key field values
//! joined with `,`: `/Policies/Demo/Demo Service/Set name`. Keys may contain
//! `/` themselves; a YamlPK is compared as a whole string. References are
//! absolute (`/Libraries/Cache Manager/HTTP Sessions`, optionally with type
//! prefixes `/(CacheManager)Cache Manager/(Cache)HTTP Sessions`) or relative to
//! the entity holding the field (`./child`, `../sibling`, `../../x`).

mod analyze;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry_proto::events::Diagnostic;
use serde_json::Value;

use crate::diag;
use crate::secrets::Masker;
use crate::template::{self, Context, Env, FileLoader, LineIndex, Rendered, Template};
use crate::types::TypeModel;
use crate::values::{StageValues, ValuesSource};
use crate::yaml;
use crate::EnvgenError;

use analyze::{Analysis, Finding};

/// How strict validation is.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Unresolved references that start with one of these YamlPK prefixes are
    /// reported as warnings instead of errors, like `yamles validate
    /// --allow-invalid-ref`. The default allows the certificate store: Axway
    /// has pipelines supply certificates per environment (the sample project's
    /// `cicd/` adds `example-server`, `example-root-ca`, ... at build time).
    pub allow_unresolved: Vec<String>,
    /// Worker threads; 0 uses the machine's parallelism.
    pub threads: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            allow_unresolved: vec![CERTIFICATE_STORE.to_string()],
            threads: 0,
        }
    }
}

impl ValidateOptions {
    /// Every unresolved reference is an error.
    pub fn strict() -> Self {
        ValidateOptions {
            allow_unresolved: Vec::new(),
            threads: 0,
        }
    }
}

/// The YamlPK prefix of the certificate store.
pub const CERTIFICATE_STORE: &str = "/Environment Configuration/Certificate Store/";

/// The outcome of validating a project for one stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Problems that stop the package, sorted by file, line and column.
    pub errors: Vec<Diagnostic>,
    /// Problems that do not (allowed unresolved references), same order.
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    /// No errors.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One file of the package-to-be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// `/`-separated path relative to the project root.
    pub path: String,
    /// The file's bytes.
    pub contents: Vec<u8>,
}

/// A project directory, read into memory once and checked for any number of stages.
#[derive(Debug)]
pub struct Project {
    root: PathBuf,
    /// Every regular file, sorted by path.
    files: Vec<FileEntry>,
    /// Every directory but the root, sorted by path.
    dirs_listing: Vec<String>,
    /// Entity directories: index 0 is the root.
    dirs: Vec<Dir>,
    entity_files: Vec<EntityFile>,
    file_set: HashSet<String>,
    types: Option<TypeModel>,
    top_folders: HashSet<String>,
    load_diags: Vec<Diagnostic>,
    values_file: Option<usize>,
}

#[derive(Debug)]
struct FileEntry {
    path: String,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Dir {
    path: String,
    name: String,
    parent: Option<usize>,
    /// Index in `entity_files` of this directory's `_parent.yaml`.
    parent_yaml: Option<usize>,
}

#[derive(Debug)]
struct EntityFile {
    file: usize,
    dir: usize,
    is_parent: bool,
    /// For files with placeholders: the parsed template (re-rendered per stage).
    template: Option<Template>,
    /// For templates whose structure values cannot change: the analysis of a
    /// rendering with markers for values, and that rendering (for positions).
    /// Each stage only substitutes its values (no second YAML parse).
    probe: Option<(Analysis, Rendered)>,
    /// For files without placeholders: analysed once.
    fixed: Option<Analysis>,
}

/// The files of the project, for `{{ file }}`.
struct ProjectFiles<'a>(&'a Project);

impl FileLoader for ProjectFiles<'_> {
    fn read(&self, rel_path: &str) -> std::io::Result<Vec<u8>> {
        match self
            .0
            .files
            .binary_search_by(|f| f.path.as_str().cmp(rel_path))
        {
            Ok(i) => Ok(self.0.files[i].data.clone()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                rel_path.to_string(),
            )),
        }
    }
}

/// The result of one stage's per-file work.
struct StageFile {
    analysis: Option<Analysis>,
    rendered: Option<Rendered>,
    /// The analysis comes from the probe rendering: map positions through it.
    via_probe: bool,
    /// Problems that are already diagnostics (template and YAML errors).
    diags: Vec<Diagnostic>,
}

fn threads(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Run `f` for every index below `n` on `workers` threads; results in index order.
fn par_map<T: Send, F: Fn(usize) -> T + Sync>(n: usize, workers: usize, f: F) -> Vec<T> {
    if workers <= 1 || n < 64 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(32, Ordering::Relaxed);
                        if start >= n {
                            break;
                        }
                        for i in start..(start + 32).min(n) {
                            out.push((i, f(i)));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

impl Project {
    /// Read the project below `root`. Fails only if the directory cannot be
    /// read; problems in its content are diagnostics of [`Project::validate`].
    pub fn load(root: &Path) -> Result<Project, EnvgenError> {
        Project::load_with(root, 0)
    }

    /// [`Project::load`] with a given number of worker threads (0: all cores).
    pub fn load_with(root: &Path, workers: usize) -> Result<Project, EnvgenError> {
        let meta = std::fs::metadata(root).map_err(|e| EnvgenError::io(root, e))?;
        if !meta.is_dir() {
            return Err(EnvgenError::NotADirectory(root.to_path_buf()));
        }
        let mut files = Vec::new();
        let mut dirs_listing = Vec::new();
        let mut load_diags = Vec::new();
        walk(root, "", &mut files, &mut dirs_listing, &mut load_diags)?;
        files.sort_by(|a: &FileEntry, b: &FileEntry| a.path.cmp(&b.path));
        dirs_listing.sort();
        let file_set: HashSet<String> = files.iter().map(|f| f.path.clone()).collect();

        // The type model.
        let type_files: Vec<(&str, &str)> = files
            .iter()
            .filter_map(|f| {
                let rel = f.path.strip_prefix("META-INF/types/")?;
                if !rel.ends_with(".yaml") {
                    return None;
                }
                Some((rel, std::str::from_utf8(&f.data).ok()?))
            })
            .collect();
        let types = if type_files.is_empty() {
            None
        } else {
            let (model, problems) = TypeModel::build(type_files);
            for (rel, msg) in problems {
                load_diags.push(diag::at(&format!("META-INF/types/{rel}"), None, None, msg));
            }
            Some(model)
        };

        // Entity directories (everything but META-INF), root first.
        let mut dirs = vec![Dir {
            path: String::new(),
            name: String::new(),
            parent: None,
            parent_yaml: None,
        }];
        let mut dir_index: HashMap<String, usize> = HashMap::new();
        dir_index.insert(String::new(), 0);
        for d in &dirs_listing {
            if d == "META-INF" || d.starts_with("META-INF/") {
                continue;
            }
            let (parent_path, name) = match d.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), d.clone()),
            };
            let parent = dir_index.get(&parent_path).copied();
            dir_index.insert(d.clone(), dirs.len());
            dirs.push(Dir {
                path: d.clone(),
                name,
                parent,
                parent_yaml: None,
            });
        }
        let top_folders: HashSet<String> = dirs
            .iter()
            .filter(|d| d.parent == Some(0))
            .map(|d| d.name.clone())
            .collect();

        // Entity files.
        let mut values_file = None;
        let mut candidates = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let (dir_path, name) = match f.path.rsplit_once('/') {
                Some((d, n)) => (d, n),
                None => ("", f.path.as_str()),
            };
            if dir_path.is_empty() && name == "values.yaml" {
                values_file = Some(i);
                continue;
            }
            if !name.ends_with(".yaml")
                || dir_path == "META-INF"
                || dir_path.starts_with("META-INF/")
            {
                continue;
            }
            if dir_path.is_empty() && name != "_parent.yaml" {
                continue; // other root files are not entities
            }
            let Some(&dir) = dir_index.get(dir_path) else {
                continue;
            };
            candidates.push((i, dir, name == "_parent.yaml"));
        }
        if !file_set.contains("_parent.yaml") {
            load_diags.push(diag::at(
                "_parent.yaml",
                None,
                None,
                "the project has no root `_parent.yaml` (is `gateway.path` the YAML project directory?)",
            ));
        }
        let ctx_types = types.as_ref();
        let workers = threads(workers);
        type Prepared = (
            Option<Template>,
            Option<(Analysis, Rendered)>,
            Option<Analysis>,
            Vec<Diagnostic>,
        );
        let prepared: Vec<Prepared> = par_map(candidates.len(), workers, |k| {
            let (fi, _, _) = candidates[k];
            let f = &files[fi];
            let mut diags = Vec::new();
            let Ok(text) = std::str::from_utf8(&f.data) else {
                diags.push(diag::at(
                    &f.path,
                    None,
                    None,
                    "not UTF-8 text: an entity file must be UTF-8 YAML",
                ));
                return (None, None, Some(Analysis::default()), diags);
            };
            if text.contains("{{") {
                let t = Template::parse(text);
                if !t.errors().is_empty() {
                    let idx = LineIndex::new(text);
                    for e in t.errors() {
                        diags.push(diag::at(
                            &f.path,
                            Some(idx.pos(text, e.offset)),
                            e.placeholder.clone(),
                            e.message.clone(),
                        ));
                    }
                }
                let probe = t.is_stable().then(|| t.render_probe()).and_then(|r| {
                    let ctx = analyze::Ctx {
                        types: ctx_types,
                        top_folders: &top_folders,
                        rendered: None,
                        probe: true,
                    };
                    let a = analyze::analyze(yaml::parse(&r.text).ok()?.as_ref(), &ctx);
                    (!a.unstable).then_some((a, r))
                });
                return (Some(t), probe, None, diags);
            }
            let ctx = analyze::Ctx {
                types: ctx_types,
                top_folders: &top_folders,
                rendered: None,
                probe: false,
            };
            let analysis = parse_and_analyze(&f.path, text, &ctx, None, &mut diags);
            (None, None, Some(analysis.unwrap_or_default()), diags)
        });
        let mut entity_files = Vec::with_capacity(candidates.len());
        for ((fi, dir, is_parent), (template, probe, fixed, diags)) in
            candidates.into_iter().zip(prepared)
        {
            load_diags.extend(diags);
            if is_parent {
                dirs[dir].parent_yaml = Some(entity_files.len());
            }
            entity_files.push(EntityFile {
                file: fi,
                dir,
                is_parent,
                template,
                probe,
                fixed,
            });
        }
        Ok(Project {
            root: root.to_path_buf(),
            files,
            dirs_listing,
            dirs,
            entity_files,
            file_set,
            types,
            top_folders,
            load_diags,
            values_file,
        })
    }

    /// The project directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of regular files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Number of entity files (`*.yaml` outside META-INF and the root).
    pub fn entity_file_count(&self) -> usize {
        self.entity_files.len()
    }

    /// The project's own `values.yaml`, if it has one.
    pub fn values_source(&self) -> Option<ValuesSource<'_>> {
        let f = &self.files[self.values_file?];
        Some(ValuesSource {
            name: "values.yaml",
            text: std::str::from_utf8(&f.data).ok()?,
        })
    }

    /// The stage's values: the project's `values.yaml` deep-merged with `overlay`.
    pub fn stage_values(&self, overlay: Option<ValuesSource<'_>>, env: &dyn Env) -> StageValues {
        StageValues::load(self.values_source(), overlay, env)
    }

    /// Every regular file as `(path, bytes)`, sorted by path.
    pub(crate) fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files
            .iter()
            .map(|f| (f.path.as_str(), f.data.as_slice()))
    }

    /// Every directory below the root, sorted.
    pub(crate) fn directories(&self) -> &[String] {
        &self.dirs_listing
    }

    /// Validate for a stage: every placeholder resolves, every file parses,
    /// every reference and externalized file exists. Reports every problem.
    pub fn validate(&self, values: &StageValues, env: &dyn Env, opts: &ValidateOptions) -> Report {
        self.run(values, env, opts, false).0
    }

    /// Validate, then return every file of the project with placeholders
    /// resolved in the entity files (`values.yaml` left out: nothing is left
    /// for it to fill). Fails with the report if there are errors.
    pub fn render(
        &self,
        values: &StageValues,
        env: &dyn Env,
        opts: &ValidateOptions,
    ) -> Result<Vec<RenderedFile>, Report> {
        let (report, rendered) = self.run(values, env, opts, true);
        if !report.is_ok() {
            return Err(report);
        }
        let mut by_file: HashMap<usize, String> = HashMap::new();
        for (ef, text) in self.entity_files.iter().zip(rendered) {
            if let Some(t) = text {
                by_file.insert(ef.file, t);
            }
        }
        Ok(self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.values_file)
            .map(|(i, f)| RenderedFile {
                path: f.path.clone(),
                contents: by_file
                    .remove(&i)
                    .map(String::into_bytes)
                    .unwrap_or_else(|| f.data.clone()),
            })
            .collect())
    }

    fn run(
        &self,
        values: &StageValues,
        env: &dyn Env,
        opts: &ValidateOptions,
        keep_text: bool,
    ) -> (Report, Vec<Option<String>>) {
        let workers = threads(opts.threads);
        let loader = ProjectFiles(self);
        let resolved = values.resolved();
        let stage: Vec<Option<StageFile>> = par_map(self.entity_files.len(), workers, |i| {
            let ef = &self.entity_files[i];
            let t = ef.template.as_ref()?;
            Some(self.render_one(ef, t, resolved, env, &loader))
        });

        let mut errors: Vec<Diagnostic> = self.load_diags.clone();
        errors.extend(values.diagnostics().iter().cloned());
        let mut warnings = Vec::new();
        let mut masker = Masker::new(values.secrets().iter().cloned());
        for s in stage.iter().flatten() {
            errors.extend(s.diags.iter().cloned());
            if let Some(r) = &s.rendered {
                masker.extend(r.secrets.iter().cloned());
            }
        }
        let analyses: Vec<Option<&Analysis>> = self
            .entity_files
            .iter()
            .zip(stage.iter())
            .map(|(ef, s)| {
                ef.fixed
                    .as_ref()
                    .or_else(|| s.as_ref().and_then(|s| s.analysis.as_ref()))
            })
            .collect();

        // Positions: findings are in the parsed text; map rendered ones back.
        let mut line_indexes: HashMap<usize, LineIndex> = HashMap::new();
        let mut position = |i: usize, offset: usize, line: u32, column: u32| -> template::Pos {
            let map = stage[i].as_ref().and_then(|s| {
                if s.via_probe {
                    self.entity_files[i].probe.as_ref().map(|(_, r)| r)
                } else {
                    s.rendered.as_ref()
                }
            });
            match map {
                None => template::Pos {
                    offset,
                    line,
                    column,
                },
                Some(r) => {
                    let src = self.source_text(i);
                    let idx = line_indexes.entry(i).or_insert_with(|| LineIndex::new(src));
                    idx.pos(src, r.source_offset(offset))
                }
            }
        };
        for (i, a) in analyses.iter().enumerate() {
            let Some(a) = a else { continue };
            let path = self.path_of(i);
            for Finding {
                offset,
                line,
                column,
                field,
                message,
            } in &a.findings
            {
                errors.push(diag::at(
                    path,
                    Some(position(i, *offset, *line, *column)),
                    field.clone(),
                    message.clone(),
                ));
            }
        }

        // YamlPKs: directories first, then entities.
        let mut dir_pk: Vec<String> = Vec::with_capacity(self.dirs.len());
        for (d, dir) in self.dirs.iter().enumerate() {
            let pk = match dir.parent {
                None => String::new(),
                Some(p) => {
                    let key = dir
                        .parent_yaml
                        .and_then(|pf| analyses[pf])
                        .and_then(|a| a.entities.first())
                        .map(|e| e.key.clone())
                        .unwrap_or_else(|| dir.name.clone());
                    format!(
                        "{}/{}",
                        dir_pk.get(p).map(String::as_str).unwrap_or(""),
                        key
                    )
                }
            };
            debug_assert_eq!(d, dir_pk.len());
            dir_pk.push(pk);
        }
        let mut ent_pks: Vec<Vec<String>> = Vec::with_capacity(self.entity_files.len());
        let mut index: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, ef) in self.entity_files.iter().enumerate() {
            let mut pks = Vec::new();
            if let Some(a) = analyses[i] {
                for e in &a.entities {
                    let pk = match e.parent {
                        Some(p) => {
                            format!("{}/{}", pks.get(p).map(String::as_str).unwrap_or(""), e.key)
                        }
                        None if ef.is_parent => dir_pk[ef.dir].clone(),
                        None => format!("{}/{}", dir_pk[ef.dir], e.key),
                    };
                    pks.push(pk);
                }
            }
            ent_pks.push(pks);
        }
        let mut duplicates = Vec::new();
        for (i, pks) in ent_pks.iter().enumerate() {
            for (k, pk) in pks.iter().enumerate() {
                if let Some(&(fi, fk)) = index.get(pk.as_str()) {
                    duplicates.push((i, k, fi, fk, pk.clone()));
                } else {
                    index.insert(pk.as_str(), (i, k));
                }
            }
        }
        for (i, k, fi, fk, pk) in duplicates {
            let Some(a) = analyses[i] else { continue };
            let e = &a.entities[k];
            let other = analyses[fi].map(|b| &b.entities[fk]);
            let other_pos = other.map(|o| position(fi, o.offset, o.line, o.column));
            let p = position(i, e.offset, e.line, e.column);
            errors.push(diag::at(
                self.path_of(i),
                Some(p),
                None,
                format!(
                    "duplicate entity `{pk}`: also defined in `{}`{} (two entities at one level may not share a key)",
                    self.path_of(fi),
                    other_pos.map(|p| format!(" at line {}", p.line)).unwrap_or_default()
                ),
            ));
        }

        // References and externalized files.
        for (i, ef) in self.entity_files.iter().enumerate() {
            let Some(a) = analyses[i] else { continue };
            let path = self.path_of(i);
            let file_dir = self.dirs[ef.dir].path.as_str();
            for r in &a.refs {
                let target = self.resolve_ref(&r.value, r.ent, a, &ent_pks[i], ef, &dir_pk);
                let found = match &target {
                    Ok(t) => {
                        index.contains_key(t.as_str())
                            || index.contains_key(strip_types(t).as_str())
                    }
                    Err(_) => false,
                };
                if found {
                    continue;
                }
                let p = position(i, r.offset, r.line, r.column);
                let (message, allowed) = match target {
                    Ok(t) => {
                        let shown = if t == r.value {
                            String::new()
                        } else {
                            format!(" (`{}`)", strip_types(&t))
                        };
                        let allowed = opts
                            .allow_unresolved
                            .iter()
                            .any(|pre| strip_types(&t).starts_with(pre.as_str()));
                        (
                            format!(
                                "reference `{}`{shown} points at no entity in the project",
                                r.value
                            ),
                            allowed,
                        )
                    }
                    Err(m) => (m, false),
                };
                let d = diag::at(path, Some(p), Some(r.field.clone()), message);
                if allowed {
                    warnings.push(d);
                } else {
                    errors.push(d);
                }
            }
            for x in &a.ext {
                let message = match template::join_rel(file_dir, &x.path) {
                    Ok(rel) if self.file_set.contains(&rel) => continue,
                    Ok(rel) => format!(
                        "externalized file `{}` does not exist (looked for `{rel}`)",
                        x.path
                    ),
                    Err(m) => format!("externalized file: {m}"),
                };
                let p = position(i, x.offset, x.line, x.column);
                errors.push(diag::at(path, Some(p), Some(x.field.clone()), message));
            }
        }

        for d in errors.iter_mut().chain(warnings.iter_mut()) {
            masker.mask_diagnostic(d);
        }
        diag::sort(&mut errors);
        diag::sort(&mut warnings);
        let texts = if keep_text {
            stage
                .into_iter()
                .map(|s| s.and_then(|s| s.rendered.map(|r| r.text)))
                .collect()
        } else {
            Vec::new()
        };
        (Report { errors, warnings }, texts)
    }

    fn render_one(
        &self,
        ef: &EntityFile,
        t: &Template,
        values: &Value,
        env: &dyn Env,
        loader: &ProjectFiles<'_>,
    ) -> StageFile {
        let path = &self.files[ef.file].path;
        let base_dir = self.dirs[ef.dir].path.as_str();
        let rendered = t.render(&Context {
            values,
            env,
            files: loader,
            base_dir,
        });
        let mut diags = Vec::new();
        if !rendered.errors.is_empty() {
            let idx = LineIndex::new(t.source());
            for e in &rendered.errors {
                diags.push(diag::at(
                    path,
                    Some(idx.pos(t.source(), e.offset)),
                    e.placeholder.clone(),
                    e.message.clone(),
                ));
            }
        }
        if let Some((probe, _)) = &ef.probe {
            // The structure is the probe's: only the values change.
            let analysis = probe.substitute(&rendered.values);
            return StageFile {
                analysis: Some(analysis),
                rendered: Some(rendered),
                via_probe: true,
                diags,
            };
        }
        let ctx = analyze::Ctx {
            types: self.types.as_ref(),
            top_folders: &self.top_folders,
            rendered: Some(&rendered),
            probe: false,
        };
        let analysis = parse_and_analyze(
            path,
            &rendered.text,
            &ctx,
            Some((&rendered, t.source())),
            &mut diags,
        );
        StageFile {
            analysis,
            rendered: Some(rendered),
            via_probe: false,
            diags,
        }
    }

    fn path_of(&self, entity_file: usize) -> &str {
        &self.files[self.entity_files[entity_file].file].path
    }

    fn source_text(&self, entity_file: usize) -> &str {
        let ef = &self.entity_files[entity_file];
        match &ef.template {
            Some(t) => t.source(),
            None => std::str::from_utf8(&self.files[ef.file].data).unwrap_or(""),
        }
    }

    /// The YamlPK a reference names.
    fn resolve_ref(
        &self,
        value: &str,
        ent: usize,
        a: &Analysis,
        pks: &[String],
        ef: &EntityFile,
        dir_pk: &[String],
    ) -> Result<String, String> {
        if value.starts_with('/') {
            return Ok(value.to_string());
        }
        // Relative: `.` is the entity holding the field, each `..` one level up.
        let mut rest = value;
        let mut up = 0usize;
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if rest == "." {
            rest = "";
        } else {
            loop {
                if let Some(r) = rest.strip_prefix("../") {
                    up += 1;
                    rest = r;
                } else if rest == ".." {
                    up += 1;
                    rest = "";
                } else {
                    break;
                }
            }
        }
        let base = self
            .ancestor(ent, up, a, pks, ef, dir_pk)
            .ok_or_else(|| format!("reference `{value}` climbs above the project root"))?;
        Ok(if rest.is_empty() {
            base
        } else {
            format!("{base}/{rest}")
        })
    }

    fn ancestor(
        &self,
        ent: usize,
        up: usize,
        a: &Analysis,
        pks: &[String],
        ef: &EntityFile,
        dir_pk: &[String],
    ) -> Option<String> {
        let mut cur = ent;
        let mut left = up;
        while left > 0 {
            match a.entities.get(cur)?.parent {
                Some(p) => {
                    cur = p;
                    left -= 1;
                }
                None => break,
            }
        }
        if left == 0 {
            return pks.get(cur).cloned();
        }
        // Leave the file: the top entity's parent is its directory (or, for a
        // `_parent.yaml`, the directory's parent).
        let mut d = if ef.is_parent {
            self.dirs[ef.dir].parent?
        } else {
            ef.dir
        };
        left -= 1;
        while left > 0 {
            d = self.dirs[d].parent?;
            left -= 1;
        }
        dir_pk.get(d).cloned()
    }
}

/// Remove `(Type)` prefixes from the segments of a YamlPK.
fn strip_types(pk: &str) -> String {
    if !pk.contains("/(") {
        return pk.to_string();
    }
    let mut out = String::with_capacity(pk.len());
    let mut rest = pk;
    while let Some(i) = rest.find("/(") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j)
                if j > 0
                    && after[..j]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                rest = &after[j + 1..]
            }
            _ => rest = &rest[i + 1..],
        }
    }
    out.push_str(rest);
    out
}

/// Parse `text` (the source, or a rendering of it) and analyse it. YAML
/// errors become diagnostics (mapped back to the source when rendered).
fn parse_and_analyze(
    path: &str,
    text: &str,
    ctx: &analyze::Ctx<'_>,
    rendered: Option<(&Rendered, &str)>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Analysis> {
    match yaml::parse(text) {
        Ok(root) => Some(analyze::analyze(root.as_ref(), ctx)),
        Err(e) => {
            let pos = match rendered {
                None => template::Pos {
                    offset: e.offset,
                    line: e.line,
                    column: e.column,
                },
                Some((r, src)) => template::pos::pos_of(src, r.source_offset(e.offset)),
            };
            let hint = if rendered.is_some() {
                " (after placeholders were filled in)"
            } else {
                ""
            };
            diags.push(diag::at(
                path,
                Some(pos),
                None,
                format!("invalid YAML{hint}: {}", e.message),
            ));
            None
        }
    }
}

/// Read every file below `dir` (relative path `rel`). Symbolic links are
/// reported and skipped; `.git` is skipped.
fn walk(
    dir: &Path,
    rel: &str,
    files: &mut Vec<FileEntry>,
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
            let data =
                std::fs::read(entry.path()).map_err(|e| EnvgenError::io(&entry.path(), e))?;
            files.push(FileEntry {
                path: child_rel,
                data,
            });
        }
    }
    Ok(())
}

/// Validate the project at `root` for a stage whose values overlay is
/// `overlay` (merged on top of the project's own `values.yaml`; passing the
/// already merged values works too). `env` feeds `{{ env }}` placeholders.
/// Returns every error, sorted by file and line; empty means valid.
pub fn validate_project(root: &Path, overlay: &Value, env: &dyn Env) -> Vec<Diagnostic> {
    let project = match Project::load(root) {
        Ok(p) => p,
        Err(e) => {
            return vec![Diagnostic {
                file: None,
                line: None,
                column: None,
                field: None,
                message: e.to_string(),
            }]
        }
    };
    let values = stage_values_from(&project, overlay, env);
    project
        .validate(&values, env, &ValidateOptions::default())
        .errors
}

/// Validate, then render the project at `root` for a stage (see
/// [`validate_project`]): every file, placeholders resolved.
pub fn render_project(
    root: &Path,
    overlay: &Value,
    env: &dyn Env,
) -> Result<Vec<RenderedFile>, Vec<Diagnostic>> {
    let project = Project::load(root).map_err(|e| {
        vec![Diagnostic {
            file: None,
            line: None,
            column: None,
            field: None,
            message: e.to_string(),
        }]
    })?;
    let values = stage_values_from(&project, overlay, env);
    project
        .render(&values, env, &ValidateOptions::default())
        .map_err(|r| r.errors)
}

/// The project's values merged with an overlay given as a tree.
pub fn stage_values_from(project: &Project, overlay: &Value, env: &dyn Env) -> StageValues {
    let base = project.stage_values(None, env);
    let mut raw = base.raw().clone();
    crate::values::deep_merge(&mut raw, overlay.clone());
    let mut merged = StageValues::from_value(raw, env);
    merged.add_diagnostics(base.diagnostics());
    merged
}

#[cfg(test)]
mod tests;
