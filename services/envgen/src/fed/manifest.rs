//! JAR-style manifests (`META-INF/MANIFEST.MF` and, in a FED,
//! `META-INF/MANIFEST-POLICY.MF` / `META-INF/MANIFEST-ENVIRONMENT.MF`).
//!
//! The format is Java's: `Name: value` headers, a line starting with one space
//! continues the previous header's value (Java wraps at 72 bytes), a blank
//! line ends the main section, and header names compare case-insensitively.
//! Line ends may be CRLF (as Axway writes them), LF or CR.

/// One header of the main section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    pub name: String,
    pub value: String,
    /// 1-based line of the header (continuations belong to it).
    pub line: u32,
}

/// A parsed manifest: its main section only (per-entry sections are checked
/// for syntax and otherwise ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub main: Vec<Attr>,
    /// The last line of the main section (at least 1): where a missing header
    /// is reported.
    pub main_end_line: u32,
}

impl Manifest {
    /// The header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Attr> {
        self.main.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

/// A problem at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub line: u32,
    pub message: String,
    /// A warning does not make the archive invalid.
    pub warning: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 70
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Split into lines on CRLF, LF or CR.
fn lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                out.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            b'\n' => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        out.push(&text[start..]);
    }
    out
}

/// Parse a manifest; every syntax problem is returned with its line.
pub(crate) fn parse(text: &str) -> (Manifest, Vec<Problem>) {
    let mut m = Manifest::default();
    let mut problems = Vec::new();
    let mut in_main = true;
    // Whether the previous line was a header that a continuation may extend.
    let mut can_continue = false;
    let all = lines(text);
    let text_lines = all.len();
    for (i, line) in all.into_iter().enumerate() {
        let no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if line.is_empty() {
            if in_main {
                m.main_end_line = no.saturating_sub(1).max(1);
                in_main = false;
            }
            can_continue = false;
            continue;
        }
        if let Some(rest) = line.strip_prefix(' ') {
            if !can_continue {
                problems.push(Problem {
                    line: no,
                    message: "a continuation line (starting with a space) must follow a header"
                        .to_string(),
                    warning: false,
                });
            } else if in_main {
                if let Some(last) = m.main.last_mut() {
                    last.value.push_str(rest);
                }
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            problems.push(Problem {
                line: no,
                message: format!("expected a `Name: value` header, found `{}`", clip(line)),
                warning: false,
            });
            can_continue = false;
            continue;
        };
        if !valid_name(name) {
            problems.push(Problem {
                line: no,
                message: format!(
                    "invalid header name `{}`: letters, digits, `-` and `_` only, at most 70",
                    clip(name)
                ),
                warning: false,
            });
            can_continue = false;
            continue;
        }
        let Some(value) = value.strip_prefix(' ') else {
            problems.push(Problem {
                line: no,
                message: format!("header `{name}`: the colon must be followed by a space"),
                warning: false,
            });
            can_continue = false;
            continue;
        };
        can_continue = true;
        if in_main {
            if m.get(name).is_some() {
                problems.push(Problem {
                    line: no,
                    message: format!(
                        "header `{name}` appears twice in the main section; the last one counts"
                    ),
                    warning: true,
                });
                m.main.retain(|a| !a.name.eq_ignore_ascii_case(name));
            }
            m.main.push(Attr {
                name: name.to_string(),
                value: value.to_string(),
                line: no,
            });
        }
    }
    if in_main {
        m.main_end_line = u32::try_from(text_lines).unwrap_or(u32::MAX).max(1);
    }
    (m, problems)
}

/// At most 60 characters of `s`, for messages.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_axway_manifest() {
        let (m, p) = parse("Manifest-Version: 1.0\r\nId: 56bf\r\nTimestamp: 1741371775420\r\n\r\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(m.get("id").map(|a| a.value.as_str()), Some("56bf"));
        assert_eq!(m.get("TIMESTAMP").map(|a| a.line), Some(3));
        assert_eq!(m.main_end_line, 3);
    }

    #[test]
    fn continuation_and_sections() {
        let (m, p) =
            parse("Manifest-Version: 1.0\nName: a very long\n  value\n\nName: entry\nX: y\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            m.get("Name").map(|a| a.value.as_str()),
            Some("a very long value")
        );
        assert_eq!(m.main.len(), 2);
        assert_eq!(m.main_end_line, 3);
    }

    #[test]
    fn reports_bad_lines() {
        let (m, p) = parse("Manifest-Version: 1.0\nno colon here\n bad:\nId:x\nId: 1\nId: 2");
        let lines: Vec<u32> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 6]);
        assert!(p[3].warning);
        assert_eq!(m.get("Id").map(|a| a.value.as_str()), Some("2"));
        assert_eq!(m.main_end_line, 6);
    }

    #[test]
    fn empty_manifest() {
        let (m, p) = parse("");
        assert!(p.is_empty());
        assert!(m.main.is_empty());
        assert_eq!(m.main_end_line, 1);
    }
}
