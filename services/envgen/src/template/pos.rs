//! Source positions: byte offsets and the 1-based line/column a person reads.

/// A position in a source text.
///
/// `line` and `column` are 1-based; `column` counts characters (not bytes),
/// so it matches what an editor shows. `offset` is the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Byte offset from the start of the text.
    pub offset: usize,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

/// Maps byte offsets of one text to lines and columns.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    /// Index the line starts of `text`.
    pub fn new(text: &str) -> Self {
        let mut starts = Vec::with_capacity(text.len() / 32 + 1);
        starts.push(0);
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                starts.push(i + 1);
            }
        }
        LineIndex { starts }
    }

    /// The position of byte `offset` in `text` (the text this index was built from).
    /// Offsets past the end, or inside a UTF-8 sequence, are clamped.
    pub fn pos(&self, text: &str, offset: usize) -> Pos {
        let offset = offset.min(text.len());
        let line_idx = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line_idx).copied().unwrap_or(0);
        let column = text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or_else(|| {
                text.as_bytes()[start..offset]
                    .iter()
                    .filter(|b| (**b & 0xC0) != 0x80)
                    .count()
            });
        Pos {
            offset,
            line: u32::try_from(line_idx + 1).unwrap_or(u32::MAX),
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }
    }
}

/// The position of `offset` in `text`, without keeping an index around.
pub fn pos_of(text: &str, offset: usize) -> Pos {
    LineIndex::new(text).pos(text, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let t = "ab\ncdé\nf";
        let idx = LineIndex::new(t);
        assert_eq!(
            idx.pos(t, 0),
            Pos {
                offset: 0,
                line: 1,
                column: 1
            }
        );
        assert_eq!(
            idx.pos(t, 3),
            Pos {
                offset: 3,
                line: 2,
                column: 1
            }
        );
        // 'é' is two bytes; the 'f' line starts after it and the newline.
        let f = t.find('f').unwrap_or(0);
        assert_eq!(
            idx.pos(t, f),
            Pos {
                offset: f,
                line: 3,
                column: 1
            }
        );
        let nl = t.rfind('\n').unwrap_or(0);
        assert_eq!(idx.pos(t, nl).column, 4);
    }
}
