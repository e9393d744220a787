//! Building and ordering [`Diagnostic`]s.

use gantry_proto::events::Diagnostic;

use crate::template::Pos;

/// A diagnostic at a position of a file.
pub(crate) fn at(
    file: &str,
    pos: Option<Pos>,
    field: Option<String>,
    message: impl Into<String>,
) -> Diagnostic {
    Diagnostic {
        file: Some(file.to_string()),
        line: pos.map(|p| p.line),
        column: pos.map(|p| p.column),
        field,
        message: message.into(),
    }
}

/// Sort by file, line, column, then message, and drop exact duplicates.
pub(crate) fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| {
        (
            a.file.as_deref(),
            a.line,
            a.column,
            a.message.as_str(),
            a.field.as_deref(),
        )
            .cmp(&(
                b.file.as_deref(),
                b.line,
                b.column,
                b.message.as_str(),
                b.field.as_deref(),
            ))
    });
    diags.dedup();
}
