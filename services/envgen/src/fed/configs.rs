//! The entity store index of an archive: `<dir>/configs.xml`.
//!
//! As found in real FEDs (API Gateway 7.7):
//!
//! ```xml
//! <configuration activeAssembly='UPGRADED'>
//!  <storeType name='PrimaryStore'>…</storeType>
//!  <store id='PrimaryStore-a7f6…' type='PrimaryStore'>
//!   <name>…</name>
//!   <connectionCredentials>
//!    <credential name='url'>PrimaryStore-a7f6….xml</credential>
//!   </connectionCredentials>
//!  </store>
//!  <assembly id='UPGRADED'>
//!   <component id='PrimaryStore-a7f6…'/>
//!  </assembly>
//! </configuration>
//! ```
//!
//! This is a small, strict scanner for that shape (well-formedness of tags,
//! matching end tags, quoted attributes, entities), not a general XML parser.

/// A `<store>` declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreDecl {
    pub id: Option<String>,
    pub store_type: Option<String>,
    /// The `url` credential: the store's file, relative to configs.xml.
    pub url: Option<String>,
    pub line: u32,
}

/// An `<assembly>`: the stores that make a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assembly {
    pub id: Option<String>,
    pub line: u32,
    /// `(store id, line)`.
    pub components: Vec<(String, u32)>,
}

/// What configs.xml declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Configs {
    /// `activeAssembly` of the root and its line.
    pub active_assembly: Option<(String, u32)>,
    pub stores: Vec<StoreDecl>,
    pub assemblies: Vec<Assembly>,
}

/// A syntax error: line and message.
pub(crate) type SyntaxError = (u32, String);

struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }
    fn line(&self, offset: usize) -> u32 {
        let idx = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        u32::try_from(idx + 1).unwrap_or(u32::MAX)
    }
}

/// Replace the five predefined entities and character references.
pub(crate) fn unescape(s: &str) -> Result<String, String> {
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find(';').filter(|e| *e <= 10) else {
            return Err("`&` not starting an entity (write `&amp;`)".to_string());
        };
        let name = &after[..end];
        let c = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => {
                let code =
                    if let Some(h) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        u32::from_str_radix(h, 16).ok()
                    } else if let Some(d) = name.strip_prefix('#') {
                        d.parse::<u32>().ok()
                    } else {
                        None
                    };
                code.and_then(char::from_u32)
            }
        };
        match c {
            Some(c) => out.push(c),
            None => return Err(format!("unknown entity `&{name};`")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

struct Tag<'a> {
    name: &'a str,
    attrs: Vec<(&'a str, String)>,
    self_closing: bool,
}

impl Tag<'_> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

/// Parse the inside of `<...>` (without the brackets).
fn parse_tag(inner: &str) -> Result<Tag<'_>, String> {
    let (body, self_closing) = match inner.strip_suffix('/') {
        Some(b) => (b, true),
        None => (inner, false),
    };
    let name_end = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..name_end];
    if name.is_empty() {
        return Err("a tag without a name".to_string());
    }
    let mut attrs = Vec::new();
    let mut rest = &body[name_end..];
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() {
            return Err(format!("<{name}>: attributes must be separated by spaces"));
        }
        let n_end = trimmed
            .find(|c: char| !is_name_char(c))
            .unwrap_or(trimmed.len());
        let attr = &trimmed[..n_end];
        if attr.is_empty() {
            return Err(format!(
                "<{name}>: unexpected `{}`",
                trimmed.chars().next().unwrap_or(' ')
            ));
        }
        let after = trimmed[n_end..].trim_start();
        let Some(after) = after.strip_prefix('=') else {
            return Err(format!("<{name}>: attribute `{attr}` has no value"));
        };
        let after = after.trim_start();
        let quote = match after.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(format!("<{name}>: the value of `{attr}` must be quoted")),
        };
        let Some(close) = after[1..].find(quote) else {
            return Err(format!("<{name}>: unterminated value of `{attr}`"));
        };
        let raw = &after[1..1 + close];
        if raw.contains('<') {
            return Err(format!("<{name}>: `<` in the value of `{attr}`"));
        }
        let value = unescape(raw).map_err(|e| format!("<{name}> `{attr}`: {e}"))?;
        if attrs.iter().any(|(n, _)| *n == attr) {
            return Err(format!("<{name}>: attribute `{attr}` given twice"));
        }
        attrs.push((attr, value));
        rest = &after[1 + close + 1..];
    }
    Ok(Tag {
        name,
        attrs,
        self_closing,
    })
}

/// Find the `>` closing a tag that starts at `from` (quotes respected).
fn tag_end(text: &str, from: usize) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, b) in text.as_bytes()[from..].iter().enumerate() {
        match (quote, *b) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(*b),
            (None, b'>') => return Some(from + i),
            (None, b'<') => return None,
            _ => {}
        }
    }
    None
}

/// Scan configs.xml.
pub(crate) fn parse(text: &str) -> Result<Configs, SyntaxError> {
    let lines = Lines::new(text);
    let text_body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let base = text.len() - text_body.len();
    let mut out = Configs::default();
    let mut stack: Vec<(&str, u32)> = Vec::new();
    let mut root_seen = false;
    let mut in_store: Option<usize> = None;
    let mut in_assembly: Option<usize> = None;
    let mut url_text: Option<String> = None;
    let mut pos = base;
    let err = |off: usize, msg: String| -> SyntaxError { (lines.line(off), msg) };
    while pos < text.len() {
        let Some(rel) = text[pos..].find('<') else {
            let tail = &text[pos..];
            if !tail.trim().is_empty() {
                return Err(err(pos, "text after the root element".to_string()));
            }
            break;
        };
        let lt = pos + rel;
        let between = &text[pos..lt];
        if stack.is_empty() && !between.trim().is_empty() {
            return Err(err(pos, "text outside the root element".to_string()));
        }
        if let Some(u) = url_text.as_mut() {
            u.push_str(&unescape(between).map_err(|e| err(pos, e))?);
        } else if between.contains('&') {
            unescape(between).map_err(|e| err(pos, e))?;
        }
        let rest = &text[lt..];
        if let Some(body) = rest.strip_prefix("<!--") {
            let Some(end) = body.find("-->") else {
                return Err(err(lt, "unterminated comment `<!--`".to_string()));
            };
            pos = lt + 4 + end + 3;
            continue;
        }
        if let Some(body) = rest.strip_prefix("<![CDATA[") {
            let Some(end) = body.find("]]>") else {
                return Err(err(lt, "unterminated `<![CDATA[`".to_string()));
            };
            if stack.is_empty() {
                return Err(err(lt, "CDATA outside the root element".to_string()));
            }
            if let Some(u) = url_text.as_mut() {
                u.push_str(&body[..end]);
            }
            pos = lt + 9 + end + 3;
            continue;
        }
        if let Some(body) = rest.strip_prefix("<?") {
            let Some(end) = body.find("?>") else {
                return Err(err(lt, "unterminated `<?`".to_string()));
            };
            pos = lt + 2 + end + 2;
            continue;
        }
        if rest.starts_with("<!") {
            if root_seen {
                return Err(err(lt, "`<!` declaration inside the document".to_string()));
            }
            let Some(end) = rest.find('>') else {
                return Err(err(lt, "unterminated `<!` declaration".to_string()));
            };
            pos = lt + end + 1;
            continue;
        }
        let Some(gt) = tag_end(text, lt + 1) else {
            return Err(err(lt, "unterminated tag (no `>`)".to_string()));
        };
        let inner = &text[lt + 1..gt];
        let line = lines.line(lt);
        pos = gt + 1;
        if let Some(name) = inner.strip_prefix('/') {
            let name = name.trim_end();
            match stack.pop() {
                Some((open, _)) if open == name => {}
                Some((open, open_line)) => {
                    return Err((
                        line,
                        format!("`</{name}>` closes `<{open}>` of line {open_line}"),
                    ))
                }
                None => return Err((line, format!("`</{name}>` without an opening tag"))),
            }
            match name {
                "store" => in_store = None,
                "assembly" => in_assembly = None,
                "credential" => {
                    if let (Some(u), Some(s)) = (url_text.take(), in_store) {
                        if let Some(st) = out.stores.get_mut(s) {
                            st.url = Some(u.trim().to_string());
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let tag = parse_tag(inner).map_err(|e| (line, e))?;
        if stack.is_empty() {
            if root_seen {
                return Err((line, "a second root element".to_string()));
            }
            root_seen = true;
            if tag.name != "configuration" {
                return Err((
                    line,
                    format!(
                        "the root element is `<{}>`; an entity store index has `<configuration>`",
                        tag.name
                    ),
                ));
            }
            if let Some(a) = tag.attr("activeAssembly") {
                out.active_assembly = Some((a.to_string(), line));
            }
        }
        match tag.name {
            "store" if stack.len() == 1 => {
                out.stores.push(StoreDecl {
                    id: tag.attr("id").map(str::to_string),
                    store_type: tag.attr("type").map(str::to_string),
                    url: None,
                    line,
                });
                if !tag.self_closing {
                    in_store = Some(out.stores.len() - 1);
                }
            }
            "credential"
                if in_store.is_some() && tag.attr("name") == Some("url") && !tag.self_closing =>
            {
                url_text = Some(String::new());
            }
            "assembly" if stack.len() == 1 => {
                out.assemblies.push(Assembly {
                    id: tag.attr("id").map(str::to_string),
                    line,
                    components: Vec::new(),
                });
                if !tag.self_closing {
                    in_assembly = Some(out.assemblies.len() - 1);
                }
            }
            "component" => {
                if let (Some(a), Some(id)) = (in_assembly, tag.attr("id")) {
                    if let Some(asm) = out.assemblies.get_mut(a) {
                        asm.components.push((id.to_string(), line));
                    }
                }
            }
            _ => {}
        }
        if !tag.self_closing {
            stack.push((tag.name, line));
        }
    }
    if let Some((open, line)) = stack.last() {
        return Err((
            lines.line(text.len()),
            format!("`<{open}>` of line {line} is never closed (truncated file?)"),
        ));
    }
    if !root_seen {
        return Err((
            1,
            "no root element: an entity store index has `<configuration>`".to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "<configuration activeAssembly='A'>\n <storeType name='PrimaryStore'>\n  <branch><node>/</node></branch>\n </storeType>\n <!-- c -->\n <store id='PrimaryStore-1' type=\"PrimaryStore\">\n  <name>x &amp; y</name>\n  <connectionCredentials>\n   <credential name='url'>PrimaryStore-1.xml</credential>\n  </connectionCredentials>\n </store>\n <assembly id='A'>\n  <component id='PrimaryStore-1'/>\n </assembly>\n</configuration>\n";

    #[test]
    fn scans_stores_and_assembly() {
        let c = parse(SAMPLE).expect("parses");
        assert_eq!(c.active_assembly, Some(("A".to_string(), 1)));
        assert_eq!(c.stores.len(), 1);
        assert_eq!(c.stores[0].id.as_deref(), Some("PrimaryStore-1"));
        assert_eq!(c.stores[0].store_type.as_deref(), Some("PrimaryStore"));
        assert_eq!(c.stores[0].url.as_deref(), Some("PrimaryStore-1.xml"));
        assert_eq!(c.stores[0].line, 6);
        assert_eq!(
            c.assemblies[0].components,
            vec![("PrimaryStore-1".to_string(), 13)]
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let truncated = &SAMPLE[..SAMPLE.len() - 20];
        let (line, msg) = parse(truncated).unwrap_err();
        assert!(
            msg.contains("never closed") || msg.contains("unterminated"),
            "{msg}"
        );
        assert!(line >= 13, "{line}");
        let mismatched = SAMPLE.replace("</store>", "</stor>");
        let (line, msg) = parse(&mismatched).unwrap_err();
        assert_eq!(line, 11, "{msg}");
        let (line, _) = parse("<configuration>\n<store id=x/>\n</configuration>").unwrap_err();
        assert_eq!(line, 2);
        let (_, msg) = parse("<entityStoreData/>").unwrap_err();
        assert!(msg.contains("root element"), "{msg}");
        assert!(parse("").is_err());
        assert!(parse("<configuration>&bogus;</configuration>").is_err());
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a&lt;b&#x41;&#66;").as_deref(), Ok("a<bAB"));
        assert!(unescape("a & b").is_err());
    }
}
