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
//!
//! Work is split so that a project is read and parsed once, and each stage
//! only redoes what its values can change: files without placeholders are
//! analysed at load, and so is the whole-project check among them; templates
//! whose YAML structure values cannot change are parsed once with markers for
//! values (each stage substitutes its values); the rest are rendered and
//! parsed per stage.

mod analyze;
mod check;
mod files;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gantry_proto::events::Diagnostic;
use serde_json::Value;

use crate::diag;
use crate::secrets::Masker;
use crate::template::{self, Context, Env, LineIndex, Pos, Rendered, Template};
use crate::types::TypeModel;
use crate::values::{StageValues, ValuesSource};
use crate::yaml;
use crate::EnvgenError;

use analyze::{Analysis, Finding};
use check::{Dir, Index, Place, Problem, ProblemKind, Tree};
use files::{par_map, threads, FileEntry, ProjectFiles};

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

    fn allows(&self, target: &str) -> bool {
        let plain = check::strip_types(target);
        self.allow_unresolved
            .iter()
            .any(|p| plain.starts_with(p.as_str()))
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
    /// The file's bytes (shared with the project when unchanged).
    pub contents: Arc<[u8]>,
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
    places: Vec<Place>,
    file_set: HashSet<String>,
    types: Option<TypeModel>,
    top_folders: HashSet<String>,
    load_diags: Vec<Diagnostic>,
    values_file: Option<usize>,
    /// Stage-independent results, when no `_parent.yaml` has placeholders
    /// (so that every directory's YamlPK is fixed).
    fixed: Option<Fixed>,
}

#[derive(Debug)]
struct EntityFile {
    file: usize,
    /// For files with placeholders: the parsed template (re-rendered per stage).
    template: Option<Template>,
    /// For templates whose structure values cannot change: the analysis of a
    /// rendering with markers for values, and that rendering (for positions).
    probe: Option<(Analysis, Rendered)>,
    /// For other templates: analyses of renderings seen before, by text
    /// (stages often render such a file alike, e.g. a feature flag).
    seen: Mutex<Vec<(String, Arc<Analysis>)>>,
    /// For files without placeholders: analysed once.
    fixed: Option<Analysis>,
}

/// How many distinct renderings of one template are remembered.
const SEEN_PER_FILE: usize = 8;

/// What does not depend on the stage.
#[derive(Debug)]
struct Fixed {
    dir_pk: Vec<String>,
    /// The entities of the files without placeholders.
    index: Index,
    /// Their errors (structure, duplicates, externalized files, references
    /// that cannot resolve at all).
    errors: Vec<Diagnostic>,
    /// Their references to no entity among them: a templated file may still
    /// define the target, so these are looked up again per stage.
    pending: Vec<Problem>,
}

/// The result of one stage's per-file work.
struct StageFile {
    analysis: Option<Arc<Analysis>>,
    rendered: Rendered,
    /// The analysis comes from the probe rendering: map positions through it.
    via_probe: bool,
    /// Problems that are already diagnostics (template and YAML errors).
    diags: Vec<Diagnostic>,
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
        let workers = threads(workers);
        let mut listed = Vec::new();
        let mut dirs_listing = Vec::new();
        let mut load_diags = Vec::new();
        files::walk(root, "", &mut listed, &mut dirs_listing, &mut load_diags)?;
        let files = files::read_all(listed, workers)?;
        dirs_listing.sort();
        let file_set: HashSet<String> = files.iter().map(|f| f.path.clone()).collect();
        let types = type_model(&files, &mut load_diags);

        // Entity directories (everything but META-INF), root first.
        let mut dirs = vec![Dir {
            path: String::new(),
            name: String::new(),
            parent: None,
            parent_yaml: None,
        }];
        let mut dir_index: HashMap<&str, usize> = HashMap::new();
        dir_index.insert("", 0);
        for d in &dirs_listing {
            if d == "META-INF" || d.starts_with("META-INF/") {
                continue;
            }
            let (parent_path, name) = d.rsplit_once('/').unwrap_or(("", d.as_str()));
            let parent = dir_index.get(parent_path).copied();
            dir_index.insert(d.as_str(), dirs.len());
            dirs.push(Dir {
                path: d.clone(),
                name: name.to_string(),
                parent,
                parent_yaml: None,
            });
        }
        let top_folders: HashSet<String> = dirs
            .iter()
            .filter(|d| d.parent == Some(0))
            .map(|d| d.name.clone())
            .collect();

        // Entity files: `*.yaml` outside META-INF; at the root only `_parent.yaml`.
        let mut values_file = None;
        let mut candidates: Vec<(usize, Place)> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let (dir_path, name) = f.path.rsplit_once('/').unwrap_or(("", f.path.as_str()));
            if dir_path.is_empty() && name == "values.yaml" {
                values_file = Some(i);
                continue;
            }
            let in_meta = dir_path == "META-INF" || dir_path.starts_with("META-INF/");
            if !name.ends_with(".yaml")
                || in_meta
                || (dir_path.is_empty() && name != "_parent.yaml")
            {
                continue;
            }
            let Some(&dir) = dir_index.get(dir_path) else {
                continue;
            };
            candidates.push((
                i,
                Place {
                    dir,
                    is_parent: name == "_parent.yaml",
                },
            ));
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
        let prepared: Vec<(EntityFile, Vec<Diagnostic>)> =
            par_map(candidates.len(), workers, |k| {
                let (fi, _) = candidates[k];
                prepare(fi, &files[fi], ctx_types, &top_folders)
            });
        let mut entity_files = Vec::with_capacity(prepared.len());
        let mut places = Vec::with_capacity(prepared.len());
        for ((_, place), (ef, diags)) in candidates.into_iter().zip(prepared) {
            load_diags.extend(diags);
            if place.is_parent {
                dirs[place.dir].parent_yaml = Some(entity_files.len());
            }
            entity_files.push(ef);
            places.push(place);
        }
        let mut project = Project {
            root: root.to_path_buf(),
            files,
            dirs_listing,
            dirs,
            entity_files,
            places,
            file_set,
            types,
            top_folders,
            load_diags,
            values_file,
            fixed: None,
        };
        project.fixed = project.precompute();
        Ok(project)
    }

    /// The stage-independent part of the whole-project check.
    fn precompute(&self) -> Option<Fixed> {
        let templated_container = self.dirs.iter().any(|d| {
            d.parent_yaml
                .is_some_and(|pf| self.entity_files[pf].template.is_some())
        });
        if templated_container {
            return None;
        }
        let analyses: Vec<Option<&Analysis>> = self
            .entity_files
            .iter()
            .map(|ef| ef.fixed.as_ref())
            .collect();
        let dir_pk = check::dir_pks(&self.dirs, &analyses);
        let static_files: Vec<usize> = (0..self.entity_files.len())
            .filter(|&i| analyses[i].is_some())
            .collect();
        let paths = self.paths();
        let tree = Tree {
            dirs: &self.dirs,
            places: &self.places,
            paths: &paths,
            file_set: &self.file_set,
            dir_pk: &dir_pk,
        };
        let mut identity = |_: usize, offset: usize, line: u32, column: u32| Pos {
            offset,
            line,
            column,
        };
        let checked = check::check(&tree, &static_files, &analyses, None, &[], &mut identity);
        let mut index: Index = HashMap::new();
        for (i, pks) in &checked.pks {
            for (k, pk) in pks.iter().enumerate() {
                index.entry(pk.clone()).or_insert((*i, k));
            }
        }
        let problems = checked.problems;
        let mut errors = Vec::new();
        for &i in &static_files {
            if let Some(a) = analyses[i] {
                for f in &a.findings {
                    errors.push(diag::at(
                        paths[i],
                        Some(Pos {
                            offset: f.offset,
                            line: f.line,
                            column: f.column,
                        }),
                        f.field.clone(),
                        f.message.clone(),
                    ));
                }
            }
        }
        let mut pending = Vec::new();
        for p in problems {
            match &p.kind {
                ProblemKind::Error(m) => errors.push(diag::at(
                    paths[p.file],
                    Some(Pos {
                        offset: p.offset,
                        line: p.line,
                        column: p.column,
                    }),
                    p.field.clone(),
                    m.clone(),
                )),
                ProblemKind::Unresolved { .. } => pending.push(p),
            }
        }
        Some(Fixed {
            dir_pk,
            index,
            errors,
            pending,
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
    pub(crate) fn files(&self) -> impl Iterator<Item = (&str, &Arc<[u8]>)> {
        self.files.iter().map(|f| (f.path.as_str(), &f.data))
    }

    /// Every directory below the root, sorted.
    pub(crate) fn directories(&self) -> &[String] {
        &self.dirs_listing
    }

    /// Validate for a stage: every placeholder resolves, every file parses,
    /// every reference and externalized file exists. Reports every problem.
    pub fn validate(&self, values: &StageValues, env: &dyn Env, opts: &ValidateOptions) -> Report {
        self.run(values, env, opts).0
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
        self.render_with_report(values, env, opts)
            .map(|(files, _)| files)
    }

    /// [`Project::render`], also returning the (error-free) report with its warnings.
    pub fn render_with_report(
        &self,
        values: &StageValues,
        env: &dyn Env,
        opts: &ValidateOptions,
    ) -> Result<(Vec<RenderedFile>, Report), Report> {
        let (report, stage) = self.run(values, env, opts);
        if !report.is_ok() {
            return Err(report);
        }
        let mut by_file: HashMap<usize, String> = HashMap::new();
        for (ef, s) in self.entity_files.iter().zip(stage) {
            if let Some(s) = s {
                by_file.insert(ef.file, s.rendered.text);
            }
        }
        let files = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.values_file)
            .map(|(i, f)| RenderedFile {
                path: f.path.clone(),
                contents: by_file
                    .remove(&i)
                    .map(|t| Arc::from(t.into_bytes()))
                    .unwrap_or_else(|| f.data.clone()),
            })
            .collect();
        Ok((files, report))
    }

    fn paths(&self) -> Vec<&str> {
        self.entity_files
            .iter()
            .map(|ef| self.files[ef.file].path.as_str())
            .collect()
    }

    fn source_text(&self, entity_file: usize) -> &str {
        let ef = &self.entity_files[entity_file];
        match &ef.template {
            Some(t) => t.source(),
            None => std::str::from_utf8(&self.files[ef.file].data).unwrap_or(""),
        }
    }

    fn run(
        &self,
        values: &StageValues,
        env: &dyn Env,
        opts: &ValidateOptions,
    ) -> (Report, Vec<Option<StageFile>>) {
        let workers = threads(opts.threads);
        let loader = ProjectFiles(&self.files);
        let resolved = values.resolved();
        let stage: Vec<Option<StageFile>> = par_map(self.entity_files.len(), workers, |i| {
            let ef = &self.entity_files[i];
            let t = ef.template.as_ref()?;
            Some(self.render_one(i, t, resolved, env, &loader))
        });

        let mut errors: Vec<Diagnostic> = self.load_diags.clone();
        errors.extend(values.diagnostics().iter().cloned());
        let mut warnings = Vec::new();
        let mut masker = Masker::new(values.secrets());
        for s in stage.iter().flatten() {
            errors.extend(s.diags.iter().cloned());
            masker.extend(s.rendered.secrets.iter().map(String::as_str));
        }
        let analyses: Vec<Option<&Analysis>> = self
            .entity_files
            .iter()
            .zip(stage.iter())
            .map(|(ef, s)| {
                ef.fixed
                    .as_ref()
                    .or_else(|| s.as_ref().and_then(|s| s.analysis.as_deref()))
            })
            .collect();

        // Findings are positioned in the analysed text; map rendered ones back.
        let mut line_indexes: HashMap<usize, LineIndex> = HashMap::new();
        let mut position = |i: usize, offset: usize, line: u32, column: u32| -> Pos {
            let map = stage[i].as_ref().map(|s| {
                if s.via_probe {
                    self.entity_files[i]
                        .probe
                        .as_ref()
                        .map_or(&s.rendered, |(_, r)| r)
                } else {
                    &s.rendered
                }
            });
            match map {
                None => Pos {
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

        // With the fixed part precomputed, only templated files are checked here.
        let dynamic: Vec<usize> = (0..self.entity_files.len())
            .filter(|&i| self.fixed.is_none() || self.entity_files[i].template.is_some())
            .collect();
        let paths = self.paths();
        for &i in &dynamic {
            let Some(a) = analyses[i] else { continue };
            for Finding {
                offset,
                line,
                column,
                field,
                message,
            } in &a.findings
            {
                errors.push(diag::at(
                    paths[i],
                    Some(position(i, *offset, *line, *column)),
                    field.clone(),
                    message.clone(),
                ));
            }
        }
        let computed_dir_pk;
        let dir_pk: &[String] = match &self.fixed {
            Some(f) => &f.dir_pk,
            None => {
                computed_dir_pk = check::dir_pks(&self.dirs, &analyses);
                &computed_dir_pk
            }
        };
        let tree = Tree {
            dirs: &self.dirs,
            places: &self.places,
            paths: &paths,
            file_set: &self.file_set,
            dir_pk,
        };
        let base = self.fixed.as_ref().map(|f| &f.index);
        let pending = self.fixed.as_ref().map_or(&[][..], |f| &f.pending[..]);
        let checked = check::check(&tree, &dynamic, &analyses, base, pending, &mut position);
        for p in &checked.problems {
            let pos = Some(position(p.file, p.offset, p.line, p.column));
            match &p.kind {
                ProblemKind::Error(m) => {
                    errors.push(diag::at(paths[p.file], pos, p.field.clone(), m.clone()))
                }
                ProblemKind::Unresolved { value, target } => {
                    let d = diag::at(
                        paths[p.file],
                        pos,
                        p.field.clone(),
                        check::unresolved_message(value, target),
                    );
                    if opts.allows(target) {
                        warnings.push(d);
                    } else {
                        errors.push(d);
                    }
                }
            }
        }
        if let Some(f) = &self.fixed {
            errors.extend(f.errors.iter().cloned());
        }

        for d in errors.iter_mut().chain(warnings.iter_mut()) {
            masker.mask_diagnostic(d);
        }
        diag::sort(&mut errors);
        diag::sort(&mut warnings);
        (Report { errors, warnings }, stage)
    }

    fn render_one(
        &self,
        i: usize,
        t: &Template,
        values: &Value,
        env: &dyn Env,
        loader: &ProjectFiles<'_>,
    ) -> StageFile {
        let ef = &self.entity_files[i];
        let path = &self.files[ef.file].path;
        let base_dir = self.dirs[self.places[i].dir].path.as_str();
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
                analysis: Some(Arc::new(analysis)),
                rendered,
                via_probe: true,
                diags,
            };
        }
        // Without evaluation errors, the analysis depends on the text alone.
        let cacheable = rendered.errors.is_empty();
        let seen = |text: &str| {
            let seen = ef.seen.lock().ok()?;
            seen.iter().find(|(t, _)| t == text).map(|(_, a)| a.clone())
        };
        if let Some(a) = cacheable.then(|| seen(&rendered.text)).flatten() {
            return StageFile {
                analysis: Some(a),
                rendered,
                via_probe: false,
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
        )
        .map(Arc::new);
        if let (true, Some(a)) = (cacheable, &analysis) {
            if let Ok(mut seen) = ef.seen.lock() {
                if seen.len() < SEEN_PER_FILE {
                    seen.push((rendered.text.clone(), a.clone()));
                }
            }
        }
        StageFile {
            analysis,
            rendered,
            via_probe: false,
            diags,
        }
    }
}

/// Read `META-INF/types/**.yaml` into a type model, if there is one.
fn type_model(files: &[FileEntry], diags: &mut Vec<Diagnostic>) -> Option<TypeModel> {
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
    if type_files.is_empty() {
        return None;
    }
    let (model, problems) = TypeModel::build(type_files);
    for (rel, msg) in problems {
        diags.push(diag::at(&format!("META-INF/types/{rel}"), None, None, msg));
    }
    Some(model)
}

/// Load-time work for one entity file.
fn prepare(
    file: usize,
    f: &FileEntry,
    types: Option<&TypeModel>,
    top_folders: &HashSet<String>,
) -> (EntityFile, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut ef = EntityFile {
        file,
        template: None,
        probe: None,
        seen: Mutex::new(Vec::new()),
        fixed: None,
    };
    let Ok(text) = std::str::from_utf8(&f.data) else {
        diags.push(diag::at(
            &f.path,
            None,
            None,
            "not UTF-8 text: an entity file must be UTF-8 YAML",
        ));
        ef.fixed = Some(Analysis::default());
        return (ef, diags);
    };
    if !text.contains("{{") {
        let ctx = analyze::Ctx {
            types,
            top_folders,
            rendered: None,
            probe: false,
        };
        ef.fixed =
            Some(parse_and_analyze(&f.path, text, &ctx, None, &mut diags).unwrap_or_default());
        return (ef, diags);
    }
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
    if t.is_stable() {
        let r = t.render_probe();
        if let Ok(root) = yaml::parse(&r.text) {
            let ctx = analyze::Ctx {
                types,
                top_folders,
                rendered: None,
                probe: true,
            };
            let a = analyze::analyze(root.as_ref(), &ctx);
            if !a.unstable {
                ef.probe = Some((a, r));
            }
        }
    }
    ef.template = Some(t);
    (ef, diags)
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
                None => Pos {
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

fn load_error(e: EnvgenError) -> Vec<Diagnostic> {
    vec![Diagnostic {
        file: None,
        line: None,
        column: None,
        field: None,
        message: e.to_string(),
    }]
}

/// Validate the project at `root` for a stage whose values overlay is
/// `overlay` (merged on top of the project's own `values.yaml`; passing the
/// already merged values works too). `env` feeds `{{ env }}` placeholders.
/// Returns every error, sorted by file and line; empty means valid.
pub fn validate_project(root: &Path, overlay: &Value, env: &dyn Env) -> Vec<Diagnostic> {
    let project = match Project::load(root) {
        Ok(p) => p,
        Err(e) => return load_error(e),
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
    let project = Project::load(root).map_err(load_error)?;
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
