//! Environmentalization (envgen): one deployment package per stage from one
//! gateway configuration.
//!
//! For Axway's YAML Entity Store projects:
//! - [`values`]: the stage's values — the project's `values.yaml` deep-merged
//!   with the stage overlay — and their canonical digest;
//! - [`template`]: the placeholder language (`{{ a.b }}`, `{{#if}}`, `env`,
//!   `base64`, `file`, sub-expressions), with precise positions;
//! - [`yamles`]: validation of a project for a stage (placeholders, YAML,
//!   entity references, externalized files; every problem, located) and
//!   rendering;
//! - [`package`]: a deterministic `.tar.gz` per stage;
//! - [`secrets`]: masking of secrets in diagnostics.
//!
//! ```no_run
//! use gantry_envgen::{package_yaml, Project, RenderMode, StageEnv, ValidateOptions, ValuesSource};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // What the pipeline file declares under `stages[].env` for this stage.
//! let env = StageEnv::from_pairs("test", [("BACKEND_HOST", "orders.test.internal")], []);
//! let project = Project::load(std::path::Path::new("gateway"))?;
//! let overlay = std::fs::read_to_string("environments/test.yaml")?;
//! let values = project.stage_values(Some(ValuesSource { name: "environments/test.yaml", text: &overlay }), &env);
//! let report = project.validate(&values, &env, &ValidateOptions::default());
//! for d in &report.errors {
//!     eprintln!("{}:{}:{}: {}", d.file.as_deref().unwrap_or("?"), d.line.unwrap_or(0), d.column.unwrap_or(0), d.message);
//! }
//! let pkg = package_yaml(&project, &values, &env, RenderMode::Placeholders, &ValidateOptions::default())?;
//! println!("{} {} files {} bytes", pkg.digest, pkg.files, pkg.bytes.len());
//! # Ok(()) }
//! ```

mod diag;
pub mod diff;
pub mod fed;
pub mod package;
pub mod secrets;
pub mod service;
pub mod template;
mod types;
pub mod values;
mod yaml;
pub mod yamles;

use std::path::{Path, PathBuf};

pub use gantry_proto::events::Diagnostic;
pub use package::{package_yaml, Package, PackageError, RenderMode};
pub use template::{Env, MapEnv, StageEnv};
pub use values::{values_digest, StageValues, ValuesSource};
pub use yamles::{
    render_project, validate_project, Project, RenderedFile, Report, ValidateOptions,
};

/// Failures to read a project (its content's problems are diagnostics instead).
#[derive(Debug, thiserror::Error)]
pub enum EnvgenError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The project path is not a directory.
    #[error("{0} is not a directory: a YAML project is a directory with a `_parent.yaml`")]
    NotADirectory(PathBuf),
}

impl EnvgenError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        EnvgenError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
