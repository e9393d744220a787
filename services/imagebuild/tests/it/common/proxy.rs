//! A small HTTP proxy in front of the real registry, for fault injection:
//! injected statuses (500, 503 ...), corrupted bodies, dropped connections,
//! a request log, and an optional fake Bearer token service (the registry
//! behind it stays open; the proxy enforces tokens and scopes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use tokio::net::{TcpListener, TcpStream};

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub content_range: Option<String>,
    pub status: u16,
}

/// What a matching rule does.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status instead of forwarding.
    Status(u16),
    /// Forward, then flip a byte of the answer's body.
    Corrupt,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<&'static str>,
    pub path_contains: String,
    /// How many times it fires; `None`: forever.
    pub times: Option<usize>,
    pub fault: Fault,
}

impl Rule {
    pub fn new(
        method: &'static str,
        path_contains: &str,
        times: Option<usize>,
        fault: Fault,
    ) -> Rule {
        Rule {
            method: Some(method),
            path_contains: path_contains.to_owned(),
            times,
            fault,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub user: Option<String>,
    pub scopes: Vec<String>,
}

struct Bearer {
    user: String,
    pass: String,
    issued: Mutex<HashMap<String, Vec<String>>>,
    requests: Mutex<Vec<TokenRequest>>,
}

struct Inner {
    upstream: String,
    upstream_host: String,
    self_base: String,
    http: reqwest::Client,
    log: Mutex<Vec<Logged>>,
    rules: Mutex<Vec<Rule>>,
    bearer: Option<Bearer>,
}

pub struct Proxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
    drop_conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

struct DroppingListener {
    inner: TcpListener,
    drop: Arc<AtomicUsize>,
}

impl axum::serve::Listener for DroppingListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (s, a) = match self.inner.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let take = self
                .drop
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if take {
                // Close the connection unanswered: the client sees it die.
                drop(s);
                continue;
            }
            return (s, a);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Proxy {
    /// A forwarding proxy to `upstream` (`http://127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> Proxy {
        Self::start_inner(upstream, None).await
    }

    /// A proxy that demands Bearer tokens from its own `/token` service,
    /// which wants HTTP Basic `user:pass`.
    pub async fn start_bearer(upstream: &str, user: &str, pass: &str) -> Proxy {
        Self::start_inner(
            upstream,
            Some(Bearer {
                user: user.into(),
                pass: pass.into(),
                issued: Mutex::new(HashMap::new()),
                requests: Mutex::new(Vec::new()),
            }),
        )
        .await
    }

    async fn start_inner(upstream: &str, bearer: Option<Bearer>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let upstream = upstream.trim_end_matches('/').to_owned();
        let inner = Arc::new(Inner {
            upstream_host: upstream.trim_start_matches("http://").to_owned(),
            upstream,
            self_base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            log: Mutex::new(Vec::new()),
            rules: Mutex::new(Vec::new()),
            bearer,
        });
        let drop_conns = Arc::new(AtomicUsize::new(0));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = DroppingListener {
            inner: listener,
            drop: drop_conns.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy {
            inner,
            addr,
            drop_conns,
            task,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    pub fn add_rule(&self, rule: Rule) {
        self.inner.rules.lock().unwrap().push(rule);
    }

    pub fn clear_rules(&self) {
        self.inner.rules.lock().unwrap().clear();
    }

    /// Resets the next `n` accepted connections.
    pub fn drop_next_connections(&self, n: usize) {
        self.drop_conns.store(n, Ordering::SeqCst);
    }

    /// Connections still to be dropped.
    pub fn pending_drops(&self) -> usize {
        self.drop_conns.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.inner.log.lock().unwrap().clear();
    }

    /// Requests seen with this method whose path contains `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.method == method && l.path.contains(path))
            .count()
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner
            .bearer
            .as_ref()
            .map(|b| b.requests.lock().unwrap().clone())
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(inner: &Inner, method: &str, path: &str, range: Option<String>, status: u16) {
    inner.log.lock().unwrap().push(Logged {
        method: method.to_owned(),
        path: path.to_owned(),
        content_range: range,
        status,
    });
}

fn error_response(status: u16, code: &str, extra: Option<(&'static str, String)>) -> Response {
    let mut resp = Response::new(Body::from(format!(
        r#"{{"errors":[{{"code":"{code}","message":"injected by the test proxy"}}]}}"#
    )));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some((k, v)) = extra {
        resp.headers_mut()
            .insert(k, HeaderValue::from_str(&v).unwrap());
    }
    resp
}

/// `/v2/<name>/(blobs|manifests|tags)/...` → name.
fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/blobs/", "/manifests/", "/tags/"] {
        if let Some(i) = rest.find(marker) {
            return Some(rest[..i].to_owned());
        }
    }
    None
}

fn query_param(query: &str, key: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn granted(scopes: &[String], repo: &str, action: &str) -> bool {
    scopes.iter().any(|s| {
        let mut parts = s.splitn(3, ':');
        parts.next() == Some("repository")
            && parts.next() == Some(repo)
            && parts
                .next()
                .is_some_and(|acts| acts.split(',').any(|a| a == action))
    })
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let range = headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();

    // Fake token service.
    if let Some(b) = &inner.bearer {
        if path == "/token" {
            let user = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .and_then(|v| String::from_utf8(v).ok());
            let scopes: Vec<String> = query_param(&query, "scope")
                .iter()
                .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
                .collect();
            b.requests.lock().unwrap().push(TokenRequest {
                user: user
                    .as_ref()
                    .and_then(|u| u.split_once(':'))
                    .map(|(u, _)| u.to_owned()),
                scopes: scopes.clone(),
            });
            let ok = user.as_deref() == Some(&format!("{}:{}", b.user, b.pass));
            if !ok {
                record(&inner, &method, &path, range, 401);
                return error_response(401, "UNAUTHORIZED", None);
            }
            let token = format!("tok-{}", uuid_like());
            b.issued.lock().unwrap().insert(token.clone(), scopes);
            record(&inner, &method, &path, range, 200);
            let mut resp = Response::new(Body::from(format!(
                r#"{{"token":"{token}","expires_in":300}}"#
            )));
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            return resp;
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let scopes = token.and_then(|t| b.issued.lock().unwrap().get(&t).cloned());
        let (repo, need) = match repo_of(&path) {
            Some(r) => {
                let action = if method == "GET" || method == "HEAD" {
                    "pull"
                } else {
                    "push"
                };
                (Some(r), action)
            }
            None => (None, "pull"),
        };
        let allowed = match (&scopes, &repo) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(s), Some(r)) => {
                granted(s, r, need)
                    && query_param(&query, "from")
                        .iter()
                        .all(|from| granted(s, from, "pull"))
            }
        };
        if !allowed {
            let scope = repo
                .as_ref()
                .map(|r| {
                    let acts = if need == "pull" { "pull" } else { "pull,push" };
                    format!(r#",scope="repository:{r}:{acts}""#)
                })
                .unwrap_or_default();
            let challenge = format!(
                r#"Bearer realm="{}/token",service="gantry-fake"{scope}"#,
                inner.self_base
            );
            record(&inner, &method, &path, range, 401);
            return error_response(401, "UNAUTHORIZED", Some(("www-authenticate", challenge)));
        }
    }

    // Injected faults.
    let mut corrupt = false;
    {
        let mut rules = inner.rules.lock().unwrap();
        if let Some(rule) = rules.iter_mut().find(|r| {
            r.method.is_none_or(|m| m == method)
                && path.contains(&r.path_contains)
                && r.times != Some(0)
        }) {
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
            }
            match rule.fault {
                Fault::Status(s) => {
                    drop(rules);
                    record(&inner, &method, &path, range, s);
                    return error_response(s, "UNAVAILABLE", None);
                }
                Fault::Corrupt => corrupt = true,
            }
        }
    }

    // Forward.
    let url = if query.is_empty() {
        format!("{}{}", inner.upstream, path)
    } else {
        format!("{}{}?{}", inner.upstream, path, query)
    };
    let mut rb = inner.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        &url,
    );
    for (k, v) in headers.iter() {
        let name = k.as_str();
        if matches!(
            name,
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) || (inner.bearer.is_some() && name == "authorization")
        {
            continue;
        }
        rb = rb.header(name, v.as_bytes());
    }
    let upstream = match rb.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            record(&inner, &method, &path, range, 502);
            return error_response(502, &format!("PROXY: {e}"), None);
        }
    };
    let status = upstream.status().as_u16();
    let up_headers = upstream.headers().clone();
    let mut bytes = upstream.bytes().await.unwrap_or_default().to_vec();
    if corrupt && !bytes.is_empty() {
        bytes[0] ^= 0xff;
    }
    record(&inner, &method, &path, range, status);
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in up_headers.iter() {
        let name = k.as_str();
        if matches!(name, "connection" | "transfer-encoding")
            || (name == "content-length" && method != "HEAD")
        {
            continue;
        }
        if name == "location" {
            let loc = v
                .to_str()
                .unwrap_or("")
                .replace(&format!("http://{}", inner.upstream_host), &inner.self_base);
            resp.headers_mut()
                .append(k.clone(), HeaderValue::from_str(&loc).unwrap());
            continue;
        }
        resp.headers_mut().append(k.clone(), v.clone());
    }
    resp
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:x}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
