//! Repository URL normalization for webhook matching (DESIGN.md 1.5).
//!
//! A forge's push payload names the repository several ways (`clone_url`,
//! `ssh_url`, `html_url`, ...) and a pipeline names it once, in whatever form
//! its author copied. Both sides are reduced to one canonical string so they
//! can be compared with `==`:
//!
//! * remote repositories become `host[:port]/path` — the scheme, `user@`
//!   (and password), the scheme's default port, a query or fragment, a
//!   trailing `.git` and trailing `/` are dropped, the host is lowercased and
//!   the scp-like SSH form `git@host:owner/repo` becomes `host/owner/repo`;
//! * local repositories become `file://` plus the lexically normalized
//!   absolute path, so `/srv/git/x.git`, `/srv/git/x/` and
//!   `file:///srv/git/x` agree. Paths are never resolved on disk (the
//!   repository may not exist here, and symlinks are not worth surprises).
//!
//! The path part stays case-sensitive: some servers treat it so.

/// Reduces a repository URL or path to the canonical form described in the
/// module docs. Empty input gives an empty string, which matches nothing
/// useful.
pub fn normalize_repo_url(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        return String::new();
    }
    if let Some((scheme, rest)) = split_scheme(s) {
        let scheme = scheme.to_ascii_lowercase();
        let rest = cut_query_and_fragment(rest);
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = percent_decode(path);
        let host = normalize_host(strip_userinfo(authority), default_port(&scheme));
        if scheme == "file" && (host.is_empty() || host == "localhost") {
            return local(&path);
        }
        return remote(&host, &path);
    }
    if let Some((host, path)) = split_scp_like(s) {
        let host = normalize_host(host, None);
        return remote(&host, &format!("/{path}"));
    }
    local(s)
}

/// `scheme://rest` with an RFC 3986 scheme (`git+ssh` included).
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// git's rule: `[user@]host:path` is SSH when a colon comes before any slash.
/// A single letter before the colon is a Windows drive, not a host.
fn split_scp_like(s: &str) -> Option<(&str, &str)> {
    let colon = s.find(':')?;
    if s[..colon].contains('/') {
        return None;
    }
    let host = strip_userinfo(&s[..colon]);
    if host.is_empty() || (host.len() == 1 && host.as_bytes()[0].is_ascii_alphabetic()) {
        return None;
    }
    Some((host, &s[colon + 1..]))
}

fn cut_query_and_fragment(s: &str) -> &str {
    match s.find(['?', '#']) {
        Some(i) => &s[..i],
        None => s,
    }
}

fn strip_userinfo(authority: &str) -> &str {
    match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    }
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" => Some("80"),
        "https" => Some("443"),
        "ssh" | "git+ssh" | "ssh+git" => Some("22"),
        "git" => Some("9418"),
        _ => None,
    }
}

/// Lowercases the host and drops an empty or default port (IPv6 aware).
fn normalize_host(host: &str, default_port: Option<&str>) -> String {
    let host = host.to_ascii_lowercase();
    let port_sep = if host.starts_with('[') {
        host.find("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    if let Some(i) = port_sep {
        let port = &host[i + 1..];
        if port.is_empty() || Some(port) == default_port {
            return host[..i].to_owned();
        }
    }
    host
}

fn remote(host: &str, path: &str) -> String {
    let path = strip_repo_suffixes(&normalize_path(path));
    if path.is_empty() || path == "/" {
        return host.to_owned();
    }
    if path.starts_with('/') {
        format!("{host}{path}")
    } else {
        format!("{host}/{path}")
    }
}

fn local(path: &str) -> String {
    let normalized = normalize_path(path);
    let stripped = strip_repo_suffixes(&normalized);
    if stripped.starts_with('/') {
        format!("file://{stripped}")
    } else if stripped.is_empty() && normalized.starts_with('/') {
        "file:///".to_owned()
    } else {
        format!("file:{stripped}")
    }
}

/// Drops trailing `/`, then one trailing `.git`, then `/` again, so
/// `x.git/`, `x/.git` and `x/` all become `x`.
fn strip_repo_suffixes(path: &str) -> String {
    let p = path.trim_end_matches('/');
    let p = p.strip_suffix(".git").unwrap_or(p);
    p.trim_end_matches('/').to_owned()
}

/// Lexical path normalization: collapses `//`, drops `.`, resolves `..`
/// against earlier components (never above `/`; kept when leading in a
/// relative path). Never touches the filesystem.
fn normalize_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(last) if *last != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Decodes `%XX` escapes; input that does not decode to UTF-8 is kept as is.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::normalize_repo_url as n;

    fn same(a: &str, b: &str) {
        assert_eq!(n(a), n(b), "{a:?} vs {b:?}");
    }

    fn differ(a: &str, b: &str) {
        assert_ne!(n(a), n(b), "{a:?} vs {b:?}");
    }

    #[test]
    fn https_forms() {
        assert_eq!(
            n("https://github.com/acme/banking-config.git"),
            "github.com/acme/banking-config"
        );
        same(
            "https://github.com/acme/banking-config.git",
            "https://github.com/acme/banking-config",
        );
        same(
            "https://github.com/acme/banking-config.git",
            "https://github.com/acme/banking-config/",
        );
        same(
            "https://github.com/acme/banking-config.git",
            "http://github.com/acme/banking-config",
        );
        same("https://github.com/acme/x", "HTTPS://GitHub.COM/acme/x");
        same("https://github.com/acme/x", "https://github.com:443/acme/x");
        same(
            "https://github.com/acme/x",
            "https://github.com/acme/x.git/",
        );
        same("https://github.com/acme/x", "  https://github.com/acme/x  ");
    }

    #[test]
    fn userinfo_is_ignored() {
        same(
            "https://github.com/acme/x",
            "https://oauth2:tok@github.com/acme/x.git",
        );
        same(
            "https://github.com/acme/x",
            "https://user@github.com/acme/x",
        );
        same(
            "https://github.com/acme/x",
            "ssh://git@github.com/acme/x.git",
        );
        same(
            "https://github.com/acme/x",
            "ssh://git@github.com:22/acme/x.git",
        );
        same(
            "https://github.com/acme/x",
            "git+ssh://git@github.com/acme/x.git",
        );
        same("https://github.com/acme/x", "git://github.com/acme/x.git");
    }

    #[test]
    fn scp_like_ssh() {
        assert_eq!(
            n("git@github.com:acme/banking-config.git"),
            "github.com/acme/banking-config"
        );
        same("git@github.com:acme/x.git", "https://github.com/acme/x");
        same("github.com:acme/x", "https://github.com/acme/x");
        same("git@GitHub.com:acme/x", "https://github.com/acme/x");
        same("git@host:/srv/git/x.git", "ssh://host/srv/git/x");
    }

    #[test]
    fn non_default_ports_are_kept() {
        assert_eq!(
            n("https://git.example.com:8443/a/b.git"),
            "git.example.com:8443/a/b"
        );
        differ(
            "https://git.example.com:8443/a/b",
            "https://git.example.com/a/b",
        );
        differ(
            "ssh://git@gitlab.example.com:2222/g/p.git",
            "https://gitlab.example.com/g/p",
        );
        same(
            "https://git.example.com:/a/b",
            "https://git.example.com/a/b",
        );
        assert_eq!(n("http://[::1]:3000/a/b"), "[::1]:3000/a/b");
        assert_eq!(n("http://[::1]:80/a/b"), "[::1]/a/b");
    }

    #[test]
    fn query_and_fragment_are_ignored() {
        same(
            "https://github.com/acme/x?tab=readme#top",
            "https://github.com/acme/x",
        );
    }

    #[test]
    fn paths_stay_case_sensitive() {
        differ("https://github.com/Acme/X", "https://github.com/acme/x");
    }

    #[test]
    fn different_repos_differ() {
        differ("https://github.com/acme/x", "https://github.com/acme/y");
        differ("https://github.com/acme/x", "https://gitlab.com/acme/x");
        differ("https://github.com/acme/x", "https://github.com/acme/x/sub");
        differ("/srv/git/x", "https://srv/git/x");
        differ("/srv/git/x", "srv/git/x");
    }

    #[test]
    fn gitlab_nested_groups() {
        same(
            "https://gitlab.com/grp/sub/proj.git",
            "git@gitlab.com:grp/sub/proj.git",
        );
        same(
            "https://gitlab.com/grp/sub/proj",
            "https://gitlab.com/grp/sub/proj.git",
        );
    }

    #[test]
    fn local_paths_and_file_urls() {
        assert_eq!(n("/srv/git/banking.git"), "file:///srv/git/banking");
        same("/srv/git/banking.git", "file:///srv/git/banking.git");
        same("/srv/git/banking", "file:///srv/git/banking/");
        same("/srv/git/banking", "file://localhost/srv/git/banking");
        same("/srv/git/banking", "/srv/git/banking/.git");
        same("/srv/git/banking", "/srv//git/./banking");
        same("/srv/git/banking", "/srv/other/../git/banking");
        same("/srv/git/banking", "/../srv/git/banking");
        same("/srv/git/my repo", "file:///srv/git/my%20repo");
        assert_eq!(n("file:///"), "file:///");
    }

    #[test]
    fn relative_local_paths() {
        assert_eq!(n("repos/x.git"), "file:repos/x");
        same("./repos/x", "repos/x");
        same("a/../repos/x", "repos/x");
        assert_eq!(n("../x"), "file:../x");
        // A Windows drive letter is a path, not an scp-like host.
        assert_eq!(n("C:/repos/x"), "file:C:/repos/x");
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for s in [
            "", " ", "://", "a://", "%", "%4", "%zz", "@", ":", "git@:x", "[::1", "file://",
            "ssh://",
        ] {
            let _ = n(s);
        }
        assert_eq!(n(""), "");
        assert_eq!(n("%zz/x"), "file:%zz/x");
        assert_eq!(n("https://h/%e2%82%ac"), "h/\u{20ac}");
        assert_eq!(n("https://h/%ff"), "h/%ff");
    }
}
