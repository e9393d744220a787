//! Image references: `registry/repository:tag@digest` with Docker Hub defaults,
//! and the `oci:<dir>[:<tag>]` form for OCI image layouts on disk.
//!
//! Rules follow Docker's reference grammar: the first path component is a
//! registry when it contains `.` or `:` or is `localhost`; otherwise the image
//! is on Docker Hub (`docker.io`, API at `registry-1.docker.io`) and a
//! one-component name gets `library/` in front. Without tag and digest the
//! tag is `latest`; with a digest the digest wins.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use url::Url;

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// Docker Hub's name in image references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag used when a reference names none.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed registry image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `[registry/]repository[:tag][@digest]`.
    pub fn parse(input: &str) -> Result<ImageRef> {
        let err = |reason: &str| ImageError::InvalidReference {
            reference: input.chars().take(300).collect(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.contains("://") {
            return Err(err(
                "an image reference has no URL scheme; write host[:port]/repository[:tag], \
                 e.g. registry.example.com/axway/apigw-emt:7.7.20240830",
            ));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("it contains whitespace"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((a, d)) => (a, Some(Digest::parse(d).map_err(|e| err(&e.to_string()))?)),
            None => (input, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
            _ => (name_tag, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| err(&r))?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        validate_registry(registry).map_err(|r| err(&r))?;
        let registry = normalize_registry(registry);
        if path.is_empty() {
            return Err(err("the repository name is missing"));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        validate_repository(&repository).map_err(|r| err(&r))?;
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// A reference from parts (validated).
    pub fn new(registry: &str, repository: &str) -> Result<ImageRef> {
        ImageRef::parse(&format!("{registry}/{repository}"))
    }

    /// The registry as named in references (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/nginx`, `apim/banking-gateway`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What the manifest API is asked for: the digest when there is one, else
    /// the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The host the registry API is served on (`registry-1.docker.io` for
    /// Docker Hub).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with this tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef> {
        validate_tag(tag).map_err(|reason| ImageError::InvalidReference {
            reference: format!("{}:{tag}", self.name()),
            reason,
        })?;
        Ok(ImageRef {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to a digest (tag kept).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository without tag and digest.
    pub fn without_tag(&self) -> ImageRef {
        ImageRef {
            tag: None,
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where a parent image comes from: `image.base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry image.
    Registry(ImageRef),
    /// `oci:<dir>[:<tag>]`: an OCI image layout on disk. Without a tag the
    /// layout must hold exactly one image.
    Layout { dir: PathBuf, tag: Option<String> },
}

impl ImageSource {
    /// Parses `oci:<dir>[:<tag>]` or a registry reference.
    pub fn parse(input: &str) -> Result<ImageSource> {
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = split_layout(input, rest)?;
            return Ok(ImageSource::Layout { dir, tag });
        }
        ImageRef::parse(input).map(ImageSource::Registry)
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(r) => r.fmt(f),
            ImageSource::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageSource::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
        }
    }
}

/// Where stage images go: `image.repository`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A registry repository (no tag: Gantry tags images itself).
    Registry(ImageRef),
    /// `oci:<dir>`: an OCI image layout on disk, created when missing.
    Layout { dir: PathBuf },
}

impl Target {
    /// Parses `oci:<dir>` or `registry/repository` (without tag or digest).
    pub fn parse(input: &str) -> Result<Target> {
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = split_layout(input, rest)?;
            if tag.is_some() {
                return Err(ImageError::InvalidReference {
                    reference: input.to_owned(),
                    reason: "image.repository must not carry a tag: write oci:<dir>; Gantry tags \
                             each image <stage>-<short sha>"
                        .into(),
                });
            }
            return Ok(Target::Layout { dir });
        }
        let r = ImageRef::parse(input)?;
        if r.tag().is_some() || r.digest().is_some() {
            return Err(ImageError::InvalidReference {
                reference: input.to_owned(),
                reason: "image.repository must not carry a tag or digest: write \
                         registry/repository; Gantry tags each image <stage>-<short sha>"
                    .into(),
            });
        }
        Ok(Target::Registry(r))
    }

    /// `registry/repository` or `oci:<dir>`.
    pub fn name(&self) -> String {
        match self {
            Target::Registry(r) => r.name(),
            Target::Layout { dir } => format!("oci:{}", dir.display()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

fn split_layout(input: &str, rest: &str) -> Result<(PathBuf, Option<String>)> {
    let err = |reason: &str| ImageError::InvalidReference {
        reference: input.to_owned(),
        reason: reason.to_owned(),
    };
    // The tag is after the last ':' when that part is a valid tag (a directory
    // may itself contain ':' as long as what follows the last one has a '/').
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((d, t)) if !t.contains('/') && !d.is_empty() => {
            validate_tag(t).map_err(|r| err(&r))?;
            (d, Some(t.to_owned()))
        }
        _ => (rest, None),
    };
    if dir.is_empty() {
        return Err(err(
            "the layout directory is missing: write oci:<dir>[:<tag>]",
        ));
    }
    Ok((PathBuf::from(dir), tag))
}

/// The API host of a registry named in a reference.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Whether a registry (`host[:port]`) is on loopback: `localhost`,
/// `127.0.0.0/8` or `::1`. Those are spoken to over plain HTTP.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.octets()[0] == 127,
        Ok(IpAddr::V6(v6)) => {
            v6 == Ipv6Addr::LOCALHOST
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4: Ipv4Addr| v4.octets()[0] == 127)
        }
        Err(_) => false,
    }
}

/// The base URL of a registry's API: plain HTTP on loopback or when
/// `insecure`, HTTPS otherwise.
pub fn base_url(registry: &str, insecure: bool) -> Result<Url> {
    let scheme = if insecure || is_loopback(registry) {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{}/", api_host(registry));
    Url::parse(&url).map_err(|e| ImageError::InvalidReference {
        reference: registry.to_owned(),
        reason: format!("not a valid registry host: {e}"),
    })
}

/// The host part of `host[:port]` or `[v6]:port`, without brackets.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h).unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn normalize_registry(r: &str) -> String {
    let lower = r.to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => r.to_owned(),
    }
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let mut chars = tag.chars();
    let Some(first) = chars.next() else {
        return Err("the tag is empty".into());
    };
    if tag.len() > 128 {
        return Err(format!("the tag {tag:?} is longer than 128 characters"));
    }
    let ok_first = first.is_ascii_alphanumeric() || first == '_';
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest {
        Ok(())
    } else {
        Err(format!(
            "the tag {tag:?} is not valid: use letters, digits, '_', '.' and '-', not starting \
             with '.' or '-'"
        ))
    }
}

fn validate_registry(r: &str) -> std::result::Result<(), String> {
    let bad = || format!("{r:?} is not a valid registry host[:port]");
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        h.parse::<Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    if !r.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad());
    }
    if let Some(p) = port {
        if p.parse::<u16>().map(|n| n == 0).unwrap_or(true) {
            return Err(format!("{r:?} has an invalid port"));
        }
    }
    Ok(())
}

/// Repository path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by `/`.
fn validate_repository(repo: &str) -> std::result::Result<(), String> {
    if repo.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository names must be lowercase: {repo:?}"));
    }
    for comp in repo.split('/') {
        if !valid_component(comp) {
            return Err(format!(
                "{comp:?} is not a valid repository path component: use lowercase letters and \
                 digits, separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/nginx");
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = ImageRef::parse("axway/apigw-emt:7.7.20240830").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "axway/apigw-emt");
        assert_eq!(r.tag(), Some("7.7.20240830"));
        let r = ImageRef::parse("index.docker.io/library/alpine:3").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.to_string(), "docker.io/library/alpine:3");
    }

    #[test]
    fn registries_tags_digests() {
        let d = Digest::sha256(b"x");
        let r = ImageRef::parse(&format!("127.0.0.1:5000/apim/gw:test-abc@{d}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "apim/gw");
        assert_eq!(r.tag(), Some("test-abc"));
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.reference(), d.to_string());
        let r = ImageRef::parse("localhost/x").unwrap();
        assert_eq!(r.registry(), "localhost");
        let r = ImageRef::parse("localhost:5000/a/b/c").unwrap();
        assert_eq!(r.repository(), "a/b/c");
        assert_eq!(r.tag(), None);
        let r = ImageRef::parse("[::1]:5000/a:1").unwrap();
        assert_eq!(r.registry(), "[::1]:5000");
        assert!(is_loopback(r.registry()));
        assert_eq!(
            ImageRef::parse("registry.example.com/a__b/c-d--e.f:v1.2_3")
                .unwrap()
                .repository(),
            "a__b/c-d--e.f"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "https://registry.example.com/x",
            "Registry.example.com/Upper",
            "example.com/x:",
            "example.com/x:-bad",
            "example.com/-x",
            "example.com/a..b",
            "example.com//x",
            "example.com:0/x",
            "example.com:http/x",
            "example.com/x@sha256:nothex",
            "exa mple.com/x",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(e, ImageError::InvalidReference { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn loopback_and_schemes() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.10.0.3"));
        assert!(!is_loopback("localhost.example.com"));
        assert!(!is_loopback("128.0.0.1:5000"));
        assert_eq!(
            base_url("127.0.0.1:5000", false).unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            base_url("r.example.com", false).unwrap().as_str(),
            "https://r.example.com/"
        );
        assert_eq!(
            base_url("r.example.com", true).unwrap().as_str(),
            "http://r.example.com/"
        );
        assert_eq!(
            base_url("docker.io", false).unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
    }

    #[test]
    fn layouts_and_targets() {
        assert_eq!(
            ImageSource::parse("oci:/tmp/lay:base-1").unwrap(),
            ImageSource::Layout {
                dir: "/tmp/lay".into(),
                tag: Some("base-1".into())
            }
        );
        assert_eq!(
            ImageSource::parse("oci:/tmp/lay").unwrap(),
            ImageSource::Layout {
                dir: "/tmp/lay".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageSource::parse("oci:/tmp/a:b/lay").unwrap(),
            ImageSource::Layout {
                dir: "/tmp/a:b/lay".into(),
                tag: None
            }
        );
        assert_eq!(
            Target::parse("oci:out").unwrap(),
            Target::Layout { dir: "out".into() }
        );
        assert!(Target::parse("oci:out:tag").is_err());
        assert!(Target::parse("example.com/a:tag").is_err());
        assert!(matches!(
            Target::parse("example.com/apim/gw").unwrap(),
            Target::Registry(_)
        ));
    }
}
