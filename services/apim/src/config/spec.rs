//! An API's specification (`apiSpecification.resource`): a file of the
//! checkout or a URL, and its kind.

use std::path::Path;

use serde_json::Value;
use url::Url;

use super::files::{self, Repo};
use super::vars::Secrets;
use crate::desired::{ApiSpecification, SpecKind, SpecSource};

/// A resolved specification, with the description of a local one (for
/// `markdownLocal`'s `ORIGINAL`).
#[derive(Debug)]
pub(super) struct Resolved {
    pub spec: ApiSpecification,
    pub description: Option<String>,
}

/// Resolves `resource` against the base config's directory `dir`. The
/// message on failure shows `resource` only through `secrets`.
pub(super) fn resolve(
    repo: &Repo,
    dir: &Path,
    resource: &str,
    secrets: &Secrets,
) -> Result<Resolved, String> {
    let lower = resource.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return remote(resource, secrets);
    }
    if lower.contains("@http://") || lower.contains("@https://") {
        // apim-cli's `user/password@URL` download form.
        return Err(
            "apim-cli's `user/password@URL` form is not supported: Gantry does not download \
             specifications; add the file to the repository and reference it by a relative path"
                .into(),
        );
    }
    let rel =
        files::resolve(dir, resource).map_err(|m| format!("{}: {m}", secrets.show(resource)))?;
    let shown = secrets.show(&rel.display().to_string());
    let bytes = repo.read(&rel).map_err(|e| e.message(&shown))?;
    let (kind, description) = sniff(&bytes).map_err(|m| format!("{shown} {m}"))?;
    Ok(Resolved {
        spec: ApiSpecification {
            source: SpecSource::File {
                path: rel,
                content: bytes,
            },
            kind,
        },
        description,
    })
}

/// API Manager fetches a URL itself, so only its form tells the kind; that
/// works for WSDL (`?wsdl`, `.wsdl`) only.
fn remote(resource: &str, secrets: &Secrets) -> Result<Resolved, String> {
    let url = Url::parse(resource).map_err(|e| format!("is not a valid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the specification URL are not supported".into());
    }
    let wsdl = url.path().to_ascii_lowercase().ends_with(".wsdl")
        || url
            .query_pairs()
            .any(|(key, _)| key.eq_ignore_ascii_case("wsdl"));
    if !wsdl {
        return Err(format!(
            "{}: Gantry can tell the kind of a remote specification only for a WSDL (`?wsdl`); \
             add the specification file to the repository and reference it by a relative path",
            secrets.show(resource)
        ));
    }
    Ok(Resolved {
        spec: ApiSpecification {
            source: SpecSource::Url(resource.to_owned()),
            kind: SpecKind::Wsdl,
        },
        description: None,
    })
}

/// The kind from the content: `swagger: "2.0"`, `openapi: 3.x` (JSON or
/// YAML) or an XML document whose root is WSDL's `definitions`.
fn sniff(bytes: &[u8]) -> Result<(SpecKind, Option<String>), String> {
    const KINDS: &str = "Swagger 2.0, OpenAPI 3.x or WSDL";
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let start = text.trim_start();
    if start.is_empty() {
        return Err("is empty".into());
    }
    if start.starts_with('<') {
        return match xml_root(start) {
            Some(root) if local_name(root) == "definitions" => Ok((SpecKind::Wsdl, None)),
            Some(root) => Err(format!(
                "is XML with root element `{root}`, not a WSDL (`definitions`)"
            )),
            None => Err("is XML without a root element".into()),
        };
    }
    let document: Value = if start.starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default().to_owned();
            format!("is not a {KINDS} document (not JSON, YAML or XML: {first})")
        })?
    };
    let description = document
        .pointer("/info/description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let version = |key: &str| match document.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match (version("swagger"), version("openapi")) {
        (Some(v), _) if v.starts_with('2') => Ok((SpecKind::Swagger, description)),
        (_, Some(v)) if v.starts_with('3') => Ok((SpecKind::OpenApi, description)),
        (Some(v), _) => Err(format!(
            "declares `swagger: {v}`; API Manager imports Swagger 2.0"
        )),
        (_, Some(v)) => Err(format!(
            "declares `openapi: {v}`; API Manager imports OpenAPI 3.x"
        )),
        (None, None) => Err(format!(
            "is not a {KINDS} document (no `swagger` or `openapi` field)"
        )),
    }
}

/// The name of the root element, after the prolog (declaration, comments,
/// doctype without internal subset).
fn xml_root(text: &str) -> Option<&str> {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("<?") {
            rest = after.split_once("?>")?.1;
        } else if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.split_once("-->")?.1;
        } else if let Some(after) = rest.strip_prefix("<!") {
            rest = after.split_once('>')?.1;
        } else {
            let after = rest.strip_prefix('<')?;
            let end = after.find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
            return Some(&after[..end]).filter(|name| !name.is_empty());
        }
    }
}

fn local_name(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_kinds() {
        let swagger =
            sniff(br#"{"swagger": "2.0", "info": {"description": "d"}}"#).expect("swagger");
        assert_eq!(swagger, (SpecKind::Swagger, Some("d".into())));
        let openapi = "openapi: 3.0.1\ninfo:\n  title: t\npaths:\n  /x:\n    get:\n      responses:\n        200:\n          description: ok\n";
        assert_eq!(
            sniff(openapi.as_bytes()).expect("openapi").0,
            SpecKind::OpenApi
        );
        let wsdl = "<?xml version=\"1.0\"?>\n<!-- c -->\n<wsdl:definitions xmlns:wsdl=\"http://schemas.xmlsoap.org/wsdl/\"/>";
        assert_eq!(sniff(wsdl.as_bytes()).expect("wsdl").0, SpecKind::Wsdl);
        assert!(sniff(b"<edmx:Edmx/>")
            .expect_err("edmx")
            .contains("`edmx:Edmx`"));
        assert!(sniff(b"{\"openapi\": \"4.0\"}")
            .expect_err("v4")
            .contains("openapi: 4.0"));
        assert!(sniff(b"{\"data\": 1}")
            .expect_err("unknown")
            .contains("no `swagger` or `openapi`"));
        assert!(sniff(b"  \n").expect_err("empty").contains("empty"));
    }

    #[test]
    fn remote_kinds() {
        let secrets = Secrets::default();
        let wsdl = remote("http://www.dneonline.com/calculator.asmx?wsdl", &secrets).expect("wsdl");
        assert_eq!(wsdl.spec.kind, SpecKind::Wsdl);
        assert!(remote("https://x.example/svc.WSDL", &secrets).is_ok());
        let odata = remote(
            "https://services.odata.org/V2/Northwind/Northwind.svc/$metadata",
            &secrets,
        )
        .expect_err("odata");
        assert!(odata.contains("only for a WSDL"), "{odata}");
        let creds = remote("https://user:pw@x.example/a?wsdl", &secrets).expect_err("credentials");
        assert!(!creds.contains("pw"), "{creds}");
    }
}
