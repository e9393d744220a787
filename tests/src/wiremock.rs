//! Serves apim-cli's WireMock stubs (`shared/fixtures/apim-cli/wiremock_apim/`)
//! in-process, without Java: a small interpreter of the WireMock mapping
//! format, limited to what those stubs use (it refuses to load anything else,
//! so a new fixture with an unsupported feature fails loudly instead of
//! matching wrongly).
//!
//! Supported, following WireMock's request-matching and stubbing docs:
//! - a mapping file holds one stub, or `{"mappings": [...]}` with several
//!   (`importBackendApi.json` holds two: 98 files, 99 stubs);
//! - request: `method` (or `ANY`); one of `url` (path and query, exact, as
//!   received — percent-encoding included), `urlPath` (path, exact),
//!   `urlPattern` (regex on path and query), `urlPathPattern` (regex on the
//!   path), regexes matching the whole string; `queryParameters`, `headers`,
//!   `formParameters` (form-encoded bodies) with `equalTo` (optionally
//!   `caseInsensitive`), `contains`, `matches`, `doesNotMatch`, `absent`; a
//!   parameter or header matches when any of its values does; `bodyPatterns`
//!   (all must match) with those plus `equalToJson` (a JSON string or
//!   value; `ignoreExtraElements`, `ignoreArrayOrder`); `multipartPatterns`
//!   (all must match), each with `matchingType` `ANY` (default: some part
//!   matches) or `ALL` (every part matches), part `headers` and
//!   `bodyPatterns`;
//! - response: `status`, `headers`, `body`, `jsonBody`, `bodyFileName` (read
//!   from `__files/` when loading); the served response also carries
//!   `Matched-Stub-Name: <mapping file name>`;
//! - selection: among matching stubs the lowest `priority` wins (default 5,
//!   as in WireMock); on equal priority the most recently added
//!   stub wins. Files load in file-name order (stubs of one file in array
//!   order), so the later file or array entry wins a tie. WireMock itself
//!   loads files in directory-listing order; with these stubs the only ties
//!   are `importBackendApi.json`'s two stubs (the graphql one, second, wins
//!   for graphql uploads, as upstream intends) and `getApplicationApi.json`
//!   vs `getApplicationToAccessApi.json` (the latter, specific to one
//!   application id, wins for it);
//! - no stub matches → 404, `text/plain`, listing the closest stubs (WireMock
//!   answers 404 with a "Request was not matched" diff report).
//!
//! Not supported (refused when loading): response templating/transformers,
//! delays, faults, scenarios, proxying, `base64Body`, `bodyPatterns` kinds
//! other than the ones above. Upstream serves these stubs over HTTPS only
//! (see `WIREMOCK.md`); this server speaks plain HTTP.

use std::cmp::Reverse;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use regex::Regex;
use serde_json::{Map, Value};

use crate::apimanager::{response, serve, Incoming, Part, Payload, RecordedRequest, Server};

/// Where the fixtures live when `CARGO_MANIFEST_DIR/../../shared/...` does not exist.
pub const DEFAULT_FIXTURE_DIR: &str = "/work/shared/fixtures/apim-cli/wiremock_apim";

/// WireMock's default stub priority (lower wins).
const DEFAULT_PRIORITY: i64 = 5;

/// apim-cli's WireMock stubs served over HTTP on `127.0.0.1:<random port>`.
/// Dropping it stops the server.
pub struct WireMockStubs {
    server: Server,
    shared: Arc<Shared>,
}

struct Shared {
    stubs: Vec<Stub>,
    served: Mutex<Vec<(RecordedRequest, Option<String>)>>,
}

impl WireMockStubs {
    /// Loads every stub under [`default_fixture_dir`] and serves them.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_from(default_fixture_dir()).await
    }

    /// Loads every stub under `dir` (which holds `mappings/` and `__files/`)
    /// and serves them.
    pub async fn start_from(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let stubs = load_stubs(dir.as_ref())?;
        let shared = Arc::new(Shared {
            stubs,
            served: Mutex::new(Vec::new()),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = serve(router, None).await?;
        Ok(WireMockStubs { server, shared })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received and the mapping file name of the stub that
    /// answered it; `None` when no stub matched (answered 404).
    pub fn served(&self) -> Vec<(RecordedRequest, Option<String>)> {
        self.shared
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many stubs were loaded.
    pub fn stub_count(&self) -> usize {
        self.shared.stubs.len()
    }
}

impl std::fmt::Debug for WireMockStubs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireMockStubs")
            .field("url", &self.url())
            .field("stubs", &self.stub_count())
            .finish_non_exhaustive()
    }
}

/// `shared/fixtures/apim-cli/wiremock_apim` beside the repository (the first
/// ancestor of this crate that has it, as on developer machines and in CI),
/// else [`DEFAULT_FIXTURE_DIR`].
pub fn default_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/fixtures/apim-cli/wiremock_apim"))
        .find(|c| c.is_dir())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FIXTURE_DIR))
}

// ---------------------------------------------------------------------------
// Stubs

struct Stub {
    /// Mapping file name, e.g. `login.json`.
    name: String,
    /// Load order: later wins ties.
    order: usize,
    priority: i64,
    request: RequestPattern,
    response: StubResponse,
}

struct StubResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

enum UrlMatch {
    Any,
    Url(String),
    UrlPath(String),
    UrlPattern(Regex),
    UrlPathPattern(Regex),
}

struct RequestPattern {
    method: Option<String>,
    url: UrlMatch,
    query: Vec<(String, Matcher)>,
    headers: Vec<(String, Matcher)>,
    form: Vec<(String, Matcher)>,
    body: Vec<Matcher>,
    multipart: Vec<MultipartPattern>,
}

struct MultipartPattern {
    all: bool,
    headers: Vec<(String, Matcher)>,
    body: Vec<Matcher>,
}

enum Matcher {
    EqualTo {
        value: String,
        case_insensitive: bool,
    },
    Contains(String),
    Matches(Regex),
    DoesNotMatch(Regex),
    Absent(bool),
    EqualToJson {
        value: Value,
        ignore_extra: bool,
        ignore_order: bool,
    },
}

fn load_stubs(dir: &Path) -> anyhow::Result<Vec<Stub>> {
    let mappings = dir.join("mappings");
    let files = dir.join("__files");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&mappings)
        .with_context(|| format!("reading {}", mappings.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut stubs = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let list: Vec<&Value> = match doc.get("mappings") {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(_) => bail!("{name}: \"mappings\" is not an array"),
            None => vec![&doc],
        };
        for mapping in list {
            let stub = parse_stub(&name, stubs.len(), mapping, &files)
                .with_context(|| format!("loading stub from {}", path.display()))?;
            stubs.push(stub);
        }
    }
    Ok(stubs)
}

fn object<'a>(v: &'a Value, what: &str) -> anyhow::Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| anyhow!("{what} is not a JSON object"))
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> anyhow::Result<()> {
    if let Some(key) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        bail!("{what}: unsupported WireMock feature \"{key}\"");
    }
    Ok(())
}

fn parse_stub(name: &str, order: usize, mapping: &Value, files: &Path) -> anyhow::Result<Stub> {
    let m = object(mapping, "mapping")?;
    check_keys(
        m,
        &[
            "request",
            "response",
            "priority",
            "id",
            "uuid",
            "name",
            "metadata",
            "persistent",
        ],
        "mapping",
    )?;
    let priority = match m.get("priority") {
        None => DEFAULT_PRIORITY,
        Some(p) => p
            .as_i64()
            .ok_or_else(|| anyhow!("priority is not an integer"))?,
    };
    let request = parse_request(m.get("request").ok_or_else(|| anyhow!("no request"))?)?;
    let response = parse_response(
        m.get("response").ok_or_else(|| anyhow!("no response"))?,
        files,
    )?;
    Ok(Stub {
        name: name.to_owned(),
        order,
        priority,
        request,
        response,
    })
}

fn full_regex(pattern: &str) -> anyhow::Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("bad regex {pattern:?}"))
}

fn parse_request(v: &Value) -> anyhow::Result<RequestPattern> {
    let r = object(v, "request")?;
    check_keys(
        r,
        &[
            "method",
            "url",
            "urlPath",
            "urlPattern",
            "urlPathPattern",
            "queryParameters",
            "headers",
            "formParameters",
            "bodyPatterns",
            "multipartPatterns",
        ],
        "request",
    )?;
    let method = match r.get("method").and_then(Value::as_str) {
        None | Some("ANY") => None,
        Some(m) => Some(m.to_ascii_uppercase()),
    };
    let string = |key: &str| r.get(key).and_then(Value::as_str);
    let url = if let Some(u) = string("url") {
        UrlMatch::Url(u.to_owned())
    } else if let Some(u) = string("urlPath") {
        UrlMatch::UrlPath(u.to_owned())
    } else if let Some(u) = string("urlPattern") {
        UrlMatch::UrlPattern(full_regex(u)?)
    } else if let Some(u) = string("urlPathPattern") {
        UrlMatch::UrlPathPattern(full_regex(u)?)
    } else {
        UrlMatch::Any
    };
    Ok(RequestPattern {
        method,
        url,
        query: named_matchers(r.get("queryParameters"))?,
        headers: named_matchers(r.get("headers"))?,
        form: named_matchers(r.get("formParameters"))?,
        body: matcher_list(r.get("bodyPatterns"))?,
        multipart: match r.get("multipartPatterns") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(parse_multipart_pattern)
                .collect::<anyhow::Result<_>>()?,
            Some(_) => bail!("multipartPatterns is not an array"),
        },
    })
}

fn parse_multipart_pattern(v: &Value) -> anyhow::Result<MultipartPattern> {
    let p = object(v, "multipart pattern")?;
    check_keys(
        p,
        &["matchingType", "headers", "bodyPatterns"],
        "multipart pattern",
    )?;
    let all = match p.get("matchingType").and_then(Value::as_str) {
        None | Some("ANY") => false,
        Some("ALL") => true,
        Some(other) => bail!("unsupported matchingType {other}"),
    };
    Ok(MultipartPattern {
        all,
        headers: named_matchers(p.get("headers"))?,
        body: matcher_list(p.get("bodyPatterns"))?,
    })
}

fn named_matchers(v: Option<&Value>) -> anyhow::Result<Vec<(String, Matcher)>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    object(v, "matchers")?
        .iter()
        .map(|(k, m)| Ok((k.clone(), parse_matcher(m)?)))
        .collect()
}

fn matcher_list(v: Option<&Value>) -> anyhow::Result<Vec<Matcher>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(parse_matcher).collect(),
        Some(_) => bail!("bodyPatterns is not an array"),
    }
}

fn parse_matcher(v: &Value) -> anyhow::Result<Matcher> {
    let m = object(v, "matcher")?;
    let flag = |key: &str| m.get(key).and_then(Value::as_bool).unwrap_or(false);
    let string = |key: &str| -> anyhow::Result<String> {
        m.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{key} is not a string"))
    };
    if m.contains_key("equalTo") {
        check_keys(m, &["equalTo", "caseInsensitive"], "equalTo matcher")?;
        return Ok(Matcher::EqualTo {
            value: string("equalTo")?,
            case_insensitive: flag("caseInsensitive"),
        });
    }
    if m.contains_key("equalToJson") {
        check_keys(
            m,
            &["equalToJson", "ignoreExtraElements", "ignoreArrayOrder"],
            "equalToJson matcher",
        )?;
        let value = match &m["equalToJson"] {
            Value::String(s) => serde_json::from_str(s).context("equalToJson is not JSON")?,
            other => other.clone(),
        };
        return Ok(Matcher::EqualToJson {
            value,
            ignore_extra: flag("ignoreExtraElements"),
            ignore_order: flag("ignoreArrayOrder"),
        });
    }
    check_keys(
        m,
        &["contains", "matches", "doesNotMatch", "absent"],
        "matcher",
    )?;
    if m.len() != 1 {
        bail!("a matcher needs exactly one operator: {v}");
    }
    if m.contains_key("contains") {
        Ok(Matcher::Contains(string("contains")?))
    } else if m.contains_key("matches") {
        Ok(Matcher::Matches(full_regex(&string("matches")?)?))
    } else if m.contains_key("doesNotMatch") {
        Ok(Matcher::DoesNotMatch(full_regex(&string("doesNotMatch")?)?))
    } else {
        Ok(Matcher::Absent(flag("absent")))
    }
}

fn parse_response(v: &Value, files: &Path) -> anyhow::Result<StubResponse> {
    let r = object(v, "response")?;
    check_keys(
        r,
        &["status", "headers", "body", "jsonBody", "bodyFileName"],
        "response",
    )?;
    let status = match r.get("status") {
        None => 200,
        Some(s) => s
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| anyhow!("status is not an HTTP status"))?,
    };
    let headers = match r.get("headers") {
        None => Vec::new(),
        Some(h) => object(h, "response headers")?
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => bail!("header {k} is not a string: {other}"),
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let body = if let Some(file) = r.get("bodyFileName").and_then(Value::as_str) {
        let path = files.join(file);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
    } else if let Some(json) = r.get("jsonBody") {
        serde_json::to_vec(json)?
    } else if let Some(body) = r.get("body").and_then(Value::as_str) {
        body.as_bytes().to_vec()
    } else {
        Vec::new()
    };
    Ok(StubResponse {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------
// Matching

impl Matcher {
    fn matches(&self, actual: Option<&str>) -> bool {
        match self {
            Matcher::Absent(absent) => actual.is_none() == *absent,
            _ => actual.is_some_and(|a| self.matches_str(a)),
        }
    }

    fn matches_str(&self, actual: &str) -> bool {
        match self {
            Matcher::EqualTo {
                value,
                case_insensitive,
            } => {
                if *case_insensitive {
                    actual.to_lowercase() == value.to_lowercase()
                } else {
                    actual == value
                }
            }
            Matcher::Contains(s) => actual.contains(s.as_str()),
            Matcher::Matches(re) => re.is_match(actual),
            Matcher::DoesNotMatch(re) => !re.is_match(actual),
            Matcher::Absent(absent) => !absent,
            Matcher::EqualToJson {
                value,
                ignore_extra,
                ignore_order,
            } => serde_json::from_str::<Value>(actual)
                .is_ok_and(|a| json_equal(value, &a, *ignore_extra, *ignore_order)),
        }
    }

    /// Matches when some value does (or, for `absent`, on presence).
    fn matches_any(&self, values: &[&str]) -> bool {
        match self {
            Matcher::Absent(absent) => values.is_empty() == *absent,
            _ => values.iter().any(|v| self.matches_str(v)),
        }
    }
}

fn json_equal(expected: &Value, actual: &Value, ignore_extra: bool, ignore_order: bool) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            (ignore_extra || e.len() == a.len())
                && e.iter().all(|(k, ev)| {
                    a.get(k)
                        .is_some_and(|av| json_equal(ev, av, ignore_extra, ignore_order))
                })
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() && !ignore_extra {
                return false;
            }
            if ignore_order {
                e.iter().all(|ev| {
                    a.iter()
                        .any(|av| json_equal(ev, av, ignore_extra, ignore_order))
                })
            } else {
                e.len() == a.len()
                    && e.iter()
                        .zip(a)
                        .all(|(ev, av)| json_equal(ev, av, ignore_extra, ignore_order))
            }
        }
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        _ => expected == actual,
    }
}

fn values<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn part_matches(pattern: &MultipartPattern, part: &Part) -> bool {
    pattern.headers.iter().all(|(name, m)| {
        let vals: Vec<&str> = part
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        m.matches_any(&vals)
    }) && {
        let body = String::from_utf8_lossy(&part.data);
        pattern.body.iter().all(|m| m.matches(Some(&body)))
    }
}

impl RequestPattern {
    fn matches(&self, req: &Incoming) -> bool {
        if self.method.as_ref().is_some_and(|m| *m != req.method) {
            return false;
        }
        let url_ok = match &self.url {
            UrlMatch::Any => true,
            UrlMatch::Url(u) => req.path_and_query == *u,
            UrlMatch::UrlPath(p) => req.path == *p,
            UrlMatch::UrlPattern(re) => re.is_match(&req.path_and_query),
            UrlMatch::UrlPathPattern(re) => re.is_match(&req.path),
        };
        if !url_ok {
            return false;
        }
        if !self
            .query
            .iter()
            .all(|(name, m)| m.matches_any(&values(&req.query, name)))
        {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, m)| {
            let vals: Vec<&str> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            m.matches_any(&vals)
        });
        if !headers_ok {
            return false;
        }
        if !self.form.is_empty() {
            let Payload::Form(pairs) = &req.payload else {
                return false;
            };
            if !self
                .form
                .iter()
                .all(|(name, m)| m.matches_any(&values(pairs, name)))
            {
                return false;
            }
        }
        if !self.body.is_empty() {
            let body = String::from_utf8_lossy(&req.raw);
            if !self.body.iter().all(|m| m.matches(Some(&body))) {
                return false;
            }
        }
        if !self.multipart.is_empty() {
            let Payload::Multipart(Some(parts)) = &req.payload else {
                return false;
            };
            let ok = self.multipart.iter().all(|pattern| {
                if pattern.all {
                    !parts.is_empty() && parts.iter().all(|p| part_matches(pattern, p))
                } else {
                    parts.iter().any(|p| part_matches(pattern, p))
                }
            });
            if !ok {
                return false;
            }
        }
        true
    }

    /// e.g. `GET urlPathPattern /api/portal/v1.4/proxies/...`.
    fn describe(&self) -> String {
        let method = self.method.as_deref().unwrap_or("ANY");
        let url = match &self.url {
            UrlMatch::Any => "any URL".to_owned(),
            UrlMatch::Url(u) => format!("url {u}"),
            UrlMatch::UrlPath(u) => format!("urlPath {u}"),
            UrlMatch::UrlPattern(re) => format!("urlPattern {}", strip_anchors(re)),
            UrlMatch::UrlPathPattern(re) => format!("urlPathPattern {}", strip_anchors(re)),
        };
        format!("{method} {url}")
    }

    fn url_text(&self) -> String {
        match &self.url {
            UrlMatch::Any => String::new(),
            UrlMatch::Url(u) | UrlMatch::UrlPath(u) => u.clone(),
            UrlMatch::UrlPattern(re) | UrlMatch::UrlPathPattern(re) => strip_anchors(re),
        }
    }
}

fn strip_anchors(re: &Regex) -> String {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
        .to_owned()
}

/// Edit distance, for the "closest stubs" report.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn not_matched_report(stubs: &[Stub], req: &Incoming) -> String {
    let mut ranked: Vec<(usize, &Stub)> = stubs
        .iter()
        .map(|s| {
            let method_penalty = match &s.request.method {
                Some(m) if *m != req.method => 20,
                _ => 0,
            };
            (
                distance(&req.path_and_query, &s.request.url_text()) + method_penalty,
                s,
            )
        })
        .collect();
    ranked.sort_by_key(|(d, s)| (*d, s.order));
    let mut report = format!(
        "Request was not matched\n=======================\n\n{} {}\n\nClosest stubs:\n",
        req.method, req.path_and_query
    );
    for (_, stub) in ranked.iter().take(3) {
        report.push_str(&format!("  {}: {}\n", stub.name, stub.request.describe()));
    }
    report
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let incoming = Incoming::read(req).await;
    let recorded = RecordedRequest {
        method: incoming.method.clone(),
        path: incoming.path_and_query.clone(),
        body: incoming.recorded_body(),
        csrf: incoming.header(crate::apimanager::CSRF_HEADER),
        has_session: incoming.headers.contains_key("cookie"),
    };
    let best = shared
        .stubs
        .iter()
        .filter(|s| s.request.matches(&incoming))
        .min_by_key(|s| (s.priority, Reverse(s.order)));
    let mut served = shared.served.lock().unwrap_or_else(|e| e.into_inner());
    match best {
        Some(stub) => {
            served.push((recorded, Some(stub.name.clone())));
            let mut headers: Vec<(&str, String)> = stub
                .response
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            headers.push(("Matched-Stub-Name", stub.name.clone()));
            response(stub.response.status, &headers, stub.response.body.clone())
        }
        None => {
            served.push((recorded, None));
            response(
                404,
                &[("Content-Type", "text/plain".to_owned())],
                not_matched_report(&shared.stubs, &incoming).into_bytes(),
            )
        }
    }
}
