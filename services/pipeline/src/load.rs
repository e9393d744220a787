//! Reading pipeline files: parse, validate, and turn every problem into a
//! [`PipelineError`] with file, line, column and field path.
//!
//! Parse errors come from serde-saphyr, which stops at the first one in a
//! file; semantic problems are all collected. Across files everything is
//! collected, so `gantry pipelines validate` lists all problems at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_saphyr::{DefaultMessageFormatter, Error as YamlError, MessageFormatter};

use super::error::{PipelineError, PipelineErrors};
use super::locate::{join_key, parent_path, LocIndex, Pos};
use super::model::Pipeline;
use super::set::PipelineSet;
use super::validate::validate;

/// Pipeline files are small; anything larger is a mistake (or an attack on
/// the parser), not a pipeline.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Loads and validates one pipeline file.
pub fn load_file(path: impl AsRef<Path>) -> Result<Pipeline, PipelineErrors> {
    let path = path.as_ref();
    let text = read_text(path)?;
    parse_str(path, &text)
}

/// Parses and validates pipeline YAML. `file` is only used in errors, so
/// callers holding text from elsewhere (the API, tests) can name it.
pub fn parse_str(file: impl AsRef<Path>, text: &str) -> Result<Pipeline, PipelineErrors> {
    let file = file.as_ref();
    if is_blank(text) {
        return Err(PipelineError::new(
            file,
            "",
            "the file is empty; a pipeline needs at least `name`, `source`, `gateway` and `stages`",
        )
        .into());
    }
    let pipeline = match serde_saphyr::from_str::<Pipeline>(text) {
        Ok(p) => p,
        Err(e) => return Err(yaml_error(file, text, &e).into()),
    };
    let issues = validate(&pipeline);
    if issues.is_empty() {
        return Ok(pipeline);
    }
    let index = LocIndex::build(text);
    Err(PipelineErrors(
        issues
            .into_iter()
            .map(|issue| located(file, &index, issue.path, issue.message))
            .collect(),
    ))
}

/// Loads every `*.yaml` / `*.yml` file of `dir` (not recursing, skipping
/// dotfiles such as editor backups), in file name order. Fails with all
/// problems of all files if any file is invalid or two files use the same
/// pipeline name. An empty directory is an empty set; a missing one is an
/// error, since it is almost always a wrong `--pipelines`.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<PipelineSet, PipelineErrors> {
    let (set, errors) = load_dir_partial(dir);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Like [`load_dir`] but keeps the valid pipelines alongside the errors, for
/// a reload that rejects only the broken files. Of two files with the same
/// pipeline name, the first (by file name) is kept.
pub fn load_dir_partial(dir: impl AsRef<Path>) -> (PipelineSet, PipelineErrors) {
    let dir = dir.as_ref();
    let mut set = PipelineSet::default();
    let mut errors = PipelineErrors::default();

    let files = match list_pipeline_files(dir) {
        Ok(files) => files,
        Err(e) => {
            errors.push(e);
            return (set, errors);
        }
    };

    // name -> first file using it
    let mut owners: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let text = match read_text(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        match parse_str(&file, &text) {
            Ok(pipeline) => {
                if let Some(first) = owners.get(&pipeline.name) {
                    let index = LocIndex::build(&text);
                    errors.push(located(
                        &file,
                        &index,
                        "name".to_owned(),
                        format!(
                            "pipeline `{}` is already defined in {}",
                            pipeline.name,
                            first.display()
                        ),
                    ));
                    continue;
                }
                owners.insert(pipeline.name.clone(), file.clone());
                set.insert(pipeline, Some(file));
            }
            Err(e) => errors.extend(e),
        }
    }
    (set, errors)
}

fn list_pipeline_files(dir: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PipelineError::new(
                dir,
                "",
                "the pipelines directory does not exist (set --pipelines or GANTRY_PIPELINES)",
            ))
        }
        Err(e) => {
            return Err(PipelineError::new(
                dir,
                "",
                format!("cannot read the pipelines directory: {e}"),
            ))
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            PipelineError::new(dir, "", format!("cannot read the pipelines directory: {e}"))
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if is_yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_text(path: &Path) -> Result<String, PipelineErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| PipelineError::new(path, "", format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(PipelineError::new(
            path,
            "",
            format!("the file is larger than {MAX_FILE_BYTES} bytes; is it really a pipeline?"),
        )
        .into());
    }
    let bytes = std::fs::read(path)
        .map_err(|e| PipelineError::new(path, "", format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        PipelineError::new(
            path,
            "",
            format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
        .into()
    })
}

/// Only whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

fn located(file: &Path, index: &LocIndex, path: String, message: String) -> PipelineError {
    let pos = index.pos_of(&path);
    PipelineError {
        file: file.to_path_buf(),
        line: pos.map(|p| p.line),
        column: pos.map(|p| p.column),
        field: path,
        message,
    }
}

/// Turns a serde-saphyr error into a located error with a field path.
/// Messages come from its plain formatter (no source snippet: the line
/// may hold something sensitive, and our Display adds the position).
fn yaml_error(file: &Path, text: &str, error: &YamlError) -> PipelineError {
    let mut inner = error.without_snippet();
    #[allow(deprecated)] // `msg` is deprecated; we only read the boxed error.
    while let YamlError::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let mut pos = error.location().and_then(Pos::from_location);
    let index = match pos {
        Some(_) => LocIndex::build(text),
        None => LocIndex::default(),
    };
    let (field, message) = match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let path = pos
                .and_then(|p| index.key_at(p))
                .map(str::to_owned)
                .unwrap_or_else(|| field.clone());
            let message = if expected.is_empty() {
                format!("unknown key `{field}`")
            } else {
                format!(
                    "unknown key `{field}` (expected one of: {})",
                    expected.join(", ")
                )
            };
            (path, message)
        }
        YamlError::SerdeMissingField { field, .. } => {
            // serde-saphyr reports a missing field at the mapping's last
            // key; point at the mapping itself (e.g. `source:`) instead.
            let parent = pos.and_then(|p| {
                index
                    .key_at(p)
                    .and_then(parent_path)
                    .or_else(|| index.map_at(p))
            });
            if let Some(parent_pos) = parent.and_then(|p| index.pos_of(p)) {
                pos = Some(parent_pos);
            }
            (
                join_key(parent.unwrap_or(""), field),
                format!("missing required field `{field}`"),
            )
        }
        YamlError::Eof { .. } => (String::new(), "unexpected end of file".to_owned()),
        other => (
            pos.and_then(|p| index.value_at(p)).unwrap_or("").to_owned(),
            sanitize(&DefaultMessageFormatter.format_message(other)),
        ),
    };
    PipelineError {
        file: file.to_path_buf(),
        line: pos.map(|p| p.line),
        column: pos.map(|p| p.column),
        field,
        message,
    }
}

/// Keeps each error on one line (messages may quote YAML text).
fn sanitize(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
