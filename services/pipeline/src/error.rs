//! Errors that point at the exact place in a pipeline file.
//!
//! DESIGN.md 2.4: bad input gets a clear error naming the file, field and
//! line. Problems are collected rather than returned one at a time, so an
//! operator fixes a directory of pipelines in one pass.

use std::fmt;
use std::path::PathBuf;

/// One problem in one pipeline file. Displays as `file:line:col: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct PipelineError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is not tied to a place (I/O, duplicates...).
    pub line: Option<u32>,
    /// 1-based.
    pub column: Option<u32>,
    /// Path of the offending field, e.g. `stages[1].approval.required`;
    /// empty for problems with the whole file.
    pub field: String,
    pub message: String,
}

impl PipelineError {
    pub fn new(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PipelineError {
            file: file.into(),
            line: None,
            column: None,
            field: field.into(),
            message: message.into(),
        }
    }

    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                out.push_str(&format!(":{column}"));
            }
        }
        out.push_str(": ");
        if !self.field.is_empty() {
            out.push_str(&self.field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// Every problem found while loading; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct PipelineErrors(pub Vec<PipelineError>);

impl PipelineErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PipelineError> {
        self.0.iter()
    }

    pub fn push(&mut self, error: PipelineError) {
        self.0.push(error);
    }

    pub fn extend(&mut self, other: PipelineErrors) {
        self.0.extend(other.0);
    }
}

/// One error per line, in file order.
impl fmt::Display for PipelineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<PipelineError> for PipelineErrors {
    fn from(e: PipelineError) -> Self {
        PipelineErrors(vec![e])
    }
}

impl IntoIterator for PipelineErrors {
    type Item = PipelineError;
    type IntoIter = std::vec::IntoIter<PipelineError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a PipelineErrors {
    type Item = &'a PipelineError;
    type IntoIter = std::slice::Iter<'a, PipelineError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let mut e = PipelineError::new(
            "p/banking.yaml",
            "stages[1].approval.required",
            "must be at least 1",
        );
        assert_eq!(
            e.to_string(),
            "p/banking.yaml: stages[1].approval.required: must be at least 1"
        );
        e.line = Some(12);
        assert_eq!(
            e.to_string(),
            "p/banking.yaml:12: stages[1].approval.required: must be at least 1"
        );
        e.column = Some(17);
        assert_eq!(
            e.to_string(),
            "p/banking.yaml:12:17: stages[1].approval.required: must be at least 1"
        );
        e.field.clear();
        assert_eq!(e.to_string(), "p/banking.yaml:12:17: must be at least 1");
        let all = PipelineErrors(vec![e.clone(), e]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
