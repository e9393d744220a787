//! The Gantry HTTP router as `gantry up` serves it (webhooks, API, health,
//! problem answers) over a real store in a temporary directory (SQLite) or
//! a fresh Postgres database, with a real git repository for the pipelines
//! to follow. Requests go in-process ([`TestApp::send`], `oneshot` on the
//! router) or, where the bytes on the wire matter, over TCP to the same
//! router served on a port-0 listener ([`TestApp::raw`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use gantry_proto::{CloudEvent, EventPayload};
use gantry_runtime::trigger::{run_stream, CommitInfo};
use gantry_runtime::{App, Settings};
use gantry_store::ExpectedVersion;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// A pipeline with a stage behind approval and `access.trigger`.
pub const DEMO_PIPELINE: &str = "\
name: demo
source:
  repo: REPO
  branch: main
gateway:
  format: yaml
  path: gateway/
stages:
  - name: dev
  - name: prod
    approval:
      approvers: [release-managers]
access:
  trigger: [deployers, carol]
";

/// (token, user, groups as YAML) of a `GANTRY_API_TOKENS` entry.
pub type Token = (&'static str, &'static str, &'static str);

pub const RITA: Token = ("rita-token", "rita", "[release-managers]");
pub const DAVE: Token = ("dave-token", "dave", "[deployers]");
pub const CAROL: Token = ("carol-token", "carol", "[]");

pub struct TestApp {
    /// Commits on `main` of the pipelines' repository, oldest first: what
    /// manual triggers may name.
    pub commits: Vec<String>,
    pub repo: gantry_tests::GitRepo,
    pub addr: SocketAddr,
    pub app: App,
    /// What `gantry up` serves (services/gantry/src/server.rs).
    pub router: Router,
    pub dir: tempfile::TempDir,
    _db: Option<gantry_tests::TestDb>,
}

pub struct Options {
    /// Hashed tokens written to `<dir>/tokens.yaml` and used as
    /// `GANTRY_API_TOKENS`.
    pub tokens: Option<Vec<Token>>,
    pub postgres: bool,
    pub reload_interval: Duration,
    /// More pipelines beside `demo`, as YAML: `REPO` stands for the
    /// repository's path, `SECRET(value)` for a `file:` reference to a file
    /// holding `value`.
    pub pipelines: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tokens: None,
            postgres: false,
            reload_interval: gantry_runtime::auth::RELOAD_INTERVAL,
            pipelines: Vec::new(),
        }
    }
}

impl Options {
    pub fn with_tokens(tokens: &[Token]) -> Self {
        Self {
            tokens: Some(tokens.to_vec()),
            ..Self::default()
        }
    }

    pub fn pipeline(mut self, yaml: &str) -> Self {
        self.pipelines.push(yaml.to_owned());
        self
    }
}

/// A `package.built` of `stage` with `digest` and nothing else known.
pub fn package_built(stage: &str, digest: &str) -> gantry_proto::events::PackageBuilt {
    gantry_proto::events::PackageBuilt {
        stage: stage.into(),
        digest: digest.into(),
        size: 1,
        files: 1,
        format: "yaml".into(),
        values_digest: None,
        location: None,
        commit: None,
        committed_at: None,
    }
}

/// The YAML of `GANTRY_API_TOKENS` for (token, user, groups).
pub fn tokens_yaml(tokens: &[(&str, &str, &str)]) -> String {
    let mut yaml = String::from("tokens:\n");
    for (token, user, groups) in tokens {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        yaml.push_str(&format!(
            "  - user: {user}\n    email: {user}@example.com\n    groups: {groups}\n    sha256: {hash}\n"
        ));
    }
    yaml
}

impl TestApp {
    pub async fn start(options: Options) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().join("pipelines");
        std::fs::create_dir_all(&pipelines).unwrap();
        let repo = gantry_tests::GitRepo::init().unwrap();
        let commits = vec![
            repo.commit_files(&[("f", "1")], "first").unwrap(),
            repo.commit_files(&[("f", "2")], "second").unwrap(),
        ];
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        let yamls = std::iter::once(DEMO_PIPELINE.to_owned()).chain(options.pipelines);
        for (i, yaml) in yamls.enumerate() {
            let yaml = with_secret_files(&yaml, &secrets)
                .replace("REPO", &repo.path().display().to_string());
            std::fs::write(pipelines.join(format!("p{i}.yaml")), yaml).unwrap();
        }
        let api_tokens = options.tokens.as_ref().map(|t| {
            let path = dir.path().join("tokens.yaml");
            std::fs::write(&path, tokens_yaml(t)).unwrap();
            path
        });
        let db = if options.postgres {
            Some(gantry_tests::fresh_postgres().await.unwrap())
        } else {
            None
        };
        let settings = Settings {
            database_url: db.as_ref().map(|d| d.url().to_owned()),
            pipelines: pipelines.clone(),
            data_dir: dir.path().join("data"),
            api_tokens,
            ..Settings::default()
        };
        let app = App::start(settings).await.unwrap();
        let errors = gantry_pipeline::load_dir_partial(&pipelines).1;
        assert!(errors.is_empty(), "the test pipelines load: {errors}");
        let router = gantry_runtime::problem::finish(
            Router::new()
                .merge(gantry_webhook::router(app.clone()))
                .merge(
                    gantry_api::router_with_reload(
                        app.clone(),
                        Arc::new(RealPreviews::new(&app)),
                        options.reload_interval,
                    )
                    .unwrap(),
                )
                .merge(app.health_routes()),
        );
        // Bound before it is served: no window for another process to take it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = app.shutdown.clone();
        let http = router.clone();
        tokio::spawn(async move {
            axum::serve(listener, http)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        TestApp {
            commits,
            repo,
            addr,
            app,
            router,
            dir,
            _db: db,
        }
    }

    pub fn tokens_path(&self) -> PathBuf {
        self.dir.path().join("tokens.yaml")
    }

    pub async fn head(&self) -> i64 {
        self.app.store.head().await.unwrap()
    }

    /// Starts a run of `demo` at a commit straight through the store.
    pub async fn seed_run(&self, commit: &str) -> String {
        self.seed_run_of("demo", commit).await
    }

    /// Starts a run of `pipeline` at `commit` straight through the store,
    /// triggered by hand by `seed`.
    pub async fn seed_run_of(&self, pipeline: &str, commit: &str) -> String {
        let set = self.app.pipelines.get();
        let pipeline = set.get(pipeline).unwrap().clone();
        gantry_runtime::trigger::start_run(
            &self.app.store,
            "test",
            &pipeline,
            CommitInfo {
                provider: "manual".into(),
                delivery_id: None,
                commit: commit.into(),
                branch: "main".into(),
                message: None,
                author: None,
                committer: None,
                pusher: None,
                triggered_by: Some(gantry_proto::events::Person {
                    username: Some("seed".into()),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap()
        .run_id
    }

    /// Appends what another service would have recorded about `run`.
    pub async fn record<P: EventPayload>(&self, run: &str, payload: &P) {
        let events = self.app.store.read_run(run).await.unwrap();
        let pipeline = events[0].event.pipeline.clone();
        let event = CloudEvent::new("test", &pipeline, Some(run), payload);
        self.app
            .store
            .append(&run_stream(run), ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }

    /// The types of `run`'s events, short names (`approval.granted`).
    pub async fn event_names(&self, run: &str) -> Vec<String> {
        self.app
            .store
            .read_run(run)
            .await
            .unwrap()
            .iter()
            .map(|e| {
                e.event
                    .name()
                    .map_or_else(|| e.event.ty.clone(), |n| n.as_str().to_owned())
            })
            .collect()
    }

    /// One request through the router in-process, as `token`'s holder
    /// when given; a JSON body when given.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&b).unwrap())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        oneshot(&self.router, req).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, None).await
    }

    pub async fn get_as(&self, token: &str, path: &str) -> Answer {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> Answer {
        self.send(Method::POST, path, None, Some(body)).await
    }

    pub async fn post_as(&self, token: &str, path: &str, body: serde_json::Value) -> Answer {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    /// One request as written, over a fresh connection: `target` goes on the
    /// request line untouched (no client-side normalization of `..` or
    /// percent-encoding).
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        raw_request(self.addr, method, target, headers, body).await
    }
}

/// `SECRET(value)` in `yaml` → `file:<dir>/<n>` holding `value`.
fn with_secret_files(yaml: &str, dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut rest = yaml;
    while let Some(at) = rest.find("SECRET(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "SECRET(".len()..];
        let end = after.find(')').expect("SECRET( is closed");
        let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::write(&path, &after[..end]).unwrap();
        out.push_str(&format!("file:{}", path.display()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `req` through a clone of `router`, the whole answer read (an event
/// stream: see [`first_sse_message`]).
pub async fn oneshot(router: &Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Asserts `a` is a problem (RFC 9457) with `status`, whose `detail`
/// contains every one of `needles`; returns the problem.
#[track_caller]
pub fn assert_problem(a: &Answer, status: u16, needles: &[&str]) -> serde_json::Value {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{}",
        a.text()
    );
    let p = a.json();
    assert_eq!(p["status"], status, "{p}");
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
    let detail = p["detail"].as_str().unwrap_or_default();
    for needle in needles {
        assert!(detail.contains(needle), "`{needle}` not in: {detail}");
    }
    p
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.app.shutdown.cancel();
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = &body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    // Write while reading: a server may answer (413) before taking a big body.
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        if let Some(b) = body {
            wr.write_all(&b).await?;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if answer_complete(&buf) {
                        break;
                    }
                }
                Err(_) if !buf.is_empty() => break,
                Err(e) => panic!("{method} {target}: no answer: {e}"),
            }
        }
    })
    .await;
    assert!(
        read.is_ok() || answer_complete(&buf),
        "{method} {target}: no complete answer within 10 s"
    );
    writer.abort();
    parse_answer(&buf).unwrap_or_else(|| {
        panic!(
            "{method} {target}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(500)])
        )
    })
}

/// The head and, by `Content-Length` or the last chunk, the whole body; an
/// event stream's head alone (it does not end).
fn answer_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("content-type: text/event-stream") {
        return true;
    }
    let body = &buf[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse_answer(buf: &[u8]) -> Option<Answer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HashMap::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let raw = &buf[end + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(raw)
    } else {
        raw.to_vec()
    };
    Some(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 2 + size + 2).min(raw.len())..];
    }
}

/// The previews `gantry` passes in: envgen's diff, apim's planner (the
/// routes are tested with the real ones; the binary's own wiring is the
/// same few lines in `services/gantry/src/previews.rs`).
pub struct RealPreviews(gantry_apim::Apim);

impl RealPreviews {
    pub fn new(app: &App) -> Self {
        Self(gantry_apim::Apim::for_plans(
            &gantry_runtime::WorkerContext::of(app),
        ))
    }
}

#[async_trait::async_trait]
impl gantry_api::Previews for RealPreviews {
    fn diff(
        &self,
        current: Option<&[u8]>,
        candidate: &[u8],
        secrets: &[String],
    ) -> Result<gantry_api::DiffView, String> {
        let diff = gantry_envgen::diff::diff_packages_masked(current, candidate, secrets)
            .map_err(|e| e.to_string())?;
        Ok(gantry_api::DiffView {
            json: serde_json::to_value(&diff).map_err(|e| e.to_string())?,
            text: diff.to_text(),
        })
    }

    async fn apis_plan(
        &self,
        pipeline: &gantry_pipeline::Pipeline,
        stage: &str,
        commit: &str,
    ) -> Result<serde_json::Value, gantry_api::PlanRefused> {
        match self.0.plan(pipeline, stage, commit).await {
            Ok(report) => Ok(serde_json::to_value(&report).expect("a plan report is JSON")),
            Err(f) => Err(gantry_api::PlanRefused {
                reason: f.reason,
                breaking_fields: f.breaking_fields,
            }),
        }
    }
}
