//! One smoke check: request, expectations, retries until the deadline.
//!
//! Outbound rules (DESIGN.md 1.7): a redirect is answered as it is unless
//! the check says `follow_redirects: true`; then redirects are followed here
//! (at most [`MAX_REDIRECTS`] hops), and a hop to another origin (scheme,
//! host, port) carries none of the check's headers. A response body is read
//! only when an expectation needs it, and at most [`MAX_BODY`] bytes of it.
//! What a check reports is masked: the check's own secret headers and every
//! secret of the masker the caller gives (the stage's).

use std::time::{Duration, Instant};

use gantry_pipeline::mask::Masker;
use gantry_pipeline::SmokeCheck;
use gantry_proto::events::CheckResult;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode, Url};

/// Hops followed at most for a check with `follow_redirects: true`.
pub const MAX_REDIRECTS: usize = 10;
/// Bytes of a response body read at most; the rest is not read.
pub const MAX_BODY: usize = 1024 * 1024;
/// TCP (and TLS) connect timeout of every smoke request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client smoke checks use: it never follows a redirect by itself
/// (checks do, under their own rules), and it has a connect timeout; every
/// request also carries what is left of its check's timeout, which bounds
/// it as a whole (sending, waiting, reading the body).
#[derive(Debug, Clone)]
pub struct SmokeClient {
    http: reqwest::Client,
}

impl SmokeClient {
    pub fn new() -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            // A request without its own timeout (none today) still ends.
            .timeout(SmokeCheck::DEFAULT_TIMEOUT)
            .user_agent(concat!("gantry-smoke/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }
}

/// Pause between attempts of a failing check.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub pause: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            pause: Duration::from_secs(1),
        }
    }
}

/// Runs `check` until it passes or its timeout has passed. The result's
/// name and message are masked with `masker` and the check's own secret
/// headers.
pub async fn run_check(
    client: &SmokeClient,
    check: &SmokeCheck,
    retry: &RetryPolicy,
    masker: &Masker,
) -> CheckResult {
    let started = Instant::now();
    let deadline = started + check.timeout_or_default();
    let mut masker = masker.clone();
    for value in check.request.headers.values() {
        if let Some(r) = value.secret_ref() {
            if let Ok(s) = r.resolve() {
                masker.extend([s.expose()]);
            }
        }
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = attempt(&client.http, check, deadline).await;
        let done = outcome.is_ok() || Instant::now() + retry.pause >= deadline;
        if done {
            let (passed, status, message) = match outcome {
                Ok((status, note)) => (true, Some(status), note),
                Err((status, message)) => (false, status, Some(message)),
            };
            return CheckResult {
                name: masker.mask(&check.name),
                passed,
                status,
                duration_ms: started.elapsed().as_millis() as u64,
                attempts,
                message: message.map(|m| masker.mask(&m)),
            };
        }
        tokio::time::sleep(retry.pause).await;
    }
}

/// What one request came to: `Ok((status, note))` when every expectation
/// holds, else the status (if any) and what did not hold. Never includes
/// header values: they may be credentials.
type Attempt = Result<(u16, Option<String>), (Option<u16>, String)>;

async fn attempt(client: &reqwest::Client, check: &SmokeCheck, deadline: Instant) -> Attempt {
    let req = &check.request;
    let mut method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| (None, format!("`{}` is not an HTTP method", req.method)))?;
    let first = Url::parse(&req.url)
        .map_err(|e| (None, format!("`{}` is not a valid URL: {e}", req.url)))?;
    let origin = first.origin();
    let mut headers = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        let value = value
            .resolve()
            .map_err(|e| (None, format!("header `{name}`: {e}")))?;
        headers.push((name.as_str(), value));
    }
    let mut body = req.body.clone();
    let mut url = first;
    let mut hops = 0;
    let sent = Instant::now();
    let resp = loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let mut builder = client.request(method.clone(), url.clone()).timeout(left);
        // The check's headers go to the check's origin only.
        if url.origin() == origin {
            for (name, value) in &headers {
                builder = builder.header(*name, value.expose());
            }
        }
        if let Some(body) = &body {
            builder = builder.body(body.clone());
        }
        let resp = builder.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                format!("timed out after {} ms", sent.elapsed().as_millis())
            } else if e.is_connect() {
                format!("cannot connect ({})", root_cause(&e))
            } else {
                root_cause(&e)
            };
            (None, format!("{method} {}: {what}", shown(&url)))
        })?;
        let status = resp.status();
        if !check.follow_redirects || !status.is_redirection() {
            break resp;
        }
        let Some(location) = resp.headers().get(LOCATION) else {
            break resp;
        };
        let next = location
            .to_str()
            .ok()
            .and_then(|l| url.join(l).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                (
                    Some(status.as_u16()),
                    format!("redirect from {} to an invalid location", shown(&url)),
                )
            })?;
        if hops == MAX_REDIRECTS {
            return Err((
                Some(status.as_u16()),
                format!(
                    "more than {MAX_REDIRECTS} redirects (last to {})",
                    shown(&next)
                ),
            ));
        }
        hops += 1;
        // As browsers do: 301/302/303 go on with a GET without body, 307/308
        // repeat the request.
        if matches!(
            status,
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER
        ) && method != Method::HEAD
        {
            method = Method::GET;
            body = None;
        }
        url = next;
    };
    let status = resp.status().as_u16();
    let latency = sent.elapsed();
    let expect = &check.expect;
    let mut problems = Vec::new();
    let mut note = None;
    match expect.status {
        Some(want) if want != status => problems.push(format!("status {status}, expected {want}")),
        None if !(200..300).contains(&status) => {
            problems.push(format!("status {status}, expected 2xx"))
        }
        _ => {}
    }
    for (name, want) in &expect.headers {
        match resp
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            Some(got) if got == want => {}
            Some(_) => problems.push(format!("header `{name}` differs from the expected value")),
            None => problems.push(format!("header `{name}` is missing")),
        }
    }
    if expect.body_contains.is_some() || !expect.json.is_empty() {
        let (bytes, cut) = match read_capped(resp, MAX_BODY).await {
            Ok(read) => read,
            Err(e) => {
                problems.push(format!("reading the body: {}", root_cause(&e)));
                (Vec::new(), false)
            }
        };
        let body = String::from_utf8_lossy(&bytes);
        let cut_note = || {
            format!("the body is larger than {MAX_BODY} bytes; only its first {MAX_BODY} bytes were read")
        };
        if cut {
            note = Some(cut_note());
        }
        if let Some(needle) = &expect.body_contains {
            if !body.contains(needle.as_str()) {
                problems.push(if cut {
                    format!("body does not contain `{needle}` in its first {MAX_BODY} bytes")
                } else {
                    format!("body does not contain `{needle}`")
                });
            }
        }
        if !expect.json.is_empty() {
            if cut {
                problems.push(format!("body is not JSON: {}", cut_note()));
            } else {
                match serde_json::from_str::<serde_json::Value>(&body) {
                    Ok(json) => {
                        for (pointer, want) in &expect.json {
                            match json.pointer(pointer) {
                                Some(got) if got == want => {}
                                Some(got) => {
                                    problems.push(format!("{pointer} is {got}, expected {want}"))
                                }
                                None => problems.push(format!("{pointer} is missing")),
                            }
                        }
                    }
                    Err(e) => problems.push(format!("body is not JSON: {e}")),
                }
            }
        }
    }
    if let Some(max) = expect.max_latency {
        if latency > max {
            problems.push(format!(
                "took {} ms, at most {} ms allowed",
                latency.as_millis(),
                max.as_millis()
            ));
        }
    }
    if problems.is_empty() {
        Ok((status, note))
    } else {
        if let Some(note) = note {
            if !problems.iter().any(|p| p.contains(&note)) {
                problems.push(note);
            }
        }
        Err((Some(status), problems.join("; ")))
    }
}

/// At most `cap` bytes of the body, read chunk by chunk, and whether there
/// was more (the rest is left unread).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// A URL for messages: without user info and query (either may hold a
/// credential).
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The innermost error's message: reqwest's own says only "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
