//! Driving the real `gantry` binary: spawn it, sign webhooks, read the API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use gantry_imagebuild::manifest::{Descriptor, ImageManifest, ManifestFormat};
use gantry_imagebuild::{
    build_layer, ClientOptions, Digest, ImageClient, LayerOptions, StagePackage, Target,
};
use gantry_tests::Registry;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const SECRET: &str = "e2e-webhook-secret";
pub const REPO: &str = "https://git.example.com/apim/banking-config.git";

/// The name of the canary variable every e2e `gantry` process gets: no
/// pipeline declares it, so its value must never leave the process.
pub const CANARY_VAR: &str = "GANTRY_E2E_CANARY";

/// A `gantry` process with its own working directory and port: the test
/// binds `127.0.0.1:0` and the process inherits that listener
/// (`LISTEN_FDS`), so no other process can take the port between choosing
/// and binding it, and a restarted process serves the same port.
pub struct Gantry {
    /// A unique value in [`CANARY_VAR`]: after the test it must appear in
    /// none of the process's logs or files (event log, packages, mirrors),
    /// nor in the directories the test adds with [`Gantry::watch`]
    /// (registry storage, deploy repositories).
    pub canary: String,
    watched: Vec<PathBuf>,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub port: u16,
    /// Kept open across restarts; each process gets it as fd 3.
    listener: std::net::TcpListener,
    log: PathBuf,
    /// The process's own working directory, when it has one
    /// ([`Gantry::start_alone`]); removed after the leak check.
    _own_dir: Option<tempfile::TempDir>,
}

impl Gantry {
    /// Starts `gantry <args>` in `dir` (which holds `pipelines/`), serving
    /// a listener on a port the kernel picked.
    pub async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Gantry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        let log = dir.join(format!("gantry-{port}.log"));
        let mut g = Gantry {
            canary: format!("canary-{}", uuid::Uuid::new_v4().simple()),
            watched: Vec::new(),
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir: dir.to_owned(),
            port,
            listener,
            log,
            _own_dir: None,
        };
        g.spawn().await;
        g
    }

    /// [`Gantry::start`] in `dir`, which lives as long as the process.
    pub async fn start_owning(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Gantry {
        let mut g = Gantry::start(dir.path(), args, env).await;
        g._own_dir = Some(dir);
        g
    }

    /// Starts `gantry <args>` as a separate machine would run it: in a
    /// working directory of its own holding a copy of `template/pipelines`,
    /// so its data dir (`.gantry`: mirrors, checkouts, local packages) is
    /// its own and no other process can read it; with copies of `files`
    /// (certificates, keys) at the root of that directory, under their file
    /// names: a relative path in `env` (`GANTRY_NATS_CA=ca.pem`) names the
    /// process's own copy, as each machine would hold its own.
    pub async fn start_alone_with(
        template: &Path,
        files: &[&Path],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Gantry {
        let own = tempfile::Builder::new()
            .prefix(&format!("gantry-{}-", args.join("-")))
            .tempdir()
            .expect("tempdir");
        copy_dir(&template.join("pipelines"), &own.path().join("pipelines"));
        for file in files {
            let name = file.file_name().expect("a file name");
            std::fs::copy(file, own.path().join(name)).expect("copy file");
        }
        let mut g = Gantry::start(own.path(), args, env).await;
        g._own_dir = Some(own);
        g
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GANTRY_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("GANTRY_LOG", "info")
            .env("E2E_WEBHOOK_SECRET", SECRET)
            .env(CANARY_VAR, &self.canary)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        gantry_tests::pass_listener(&mut cmd, &self.listener);
        let child = cmd.spawn().expect("spawn gantry");
        self.child = Some(child);
        let url = format!("{}/healthz", self.url());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // The listener accepts connections before the process serves them
        // (and while it is down): ask again rather than wait forever.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("gantry exited with {status} at start:\n{}", self.log_text());
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gantry did not come up:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().expect("wait")
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Gantry {
    /// Files under the work dir and the process's log that hold the canary.
    /// Adds a directory the canary must not reach (a registry's storage,
    /// a deploy repository).
    pub fn watch(&mut self, dir: impl Into<PathBuf>) {
        self.watched.push(dir.into());
    }

    pub fn canary_leaks(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let needle = self.canary.as_bytes();
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(self.watched.iter().cloned());
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(path),
                    Ok(t) if t.is_file() => {
                        let bytes = std::fs::read(&path).unwrap_or_default();
                        if contains(&bytes, needle) || gz_contains(&bytes, needle) {
                            found.push(path);
                        }
                    }
                    _ => {}
                }
            }
        }
        found
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Packages are gzipped tarballs: look inside too.
fn gz_contains(bytes: &[u8], needle: &[u8]) -> bool {
    use std::io::Read;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return false;
    }
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(bytes).read_to_end(&mut out);
    contains(&out, needle)
}

impl Drop for Gantry {
    fn drop(&mut self) {
        self.kill();
        // Every e2e test is also a leak test: the canary variable is
        // Gantry's own, declared by no pipeline, so it must reach no event
        // (the SQLite log is in the work dir), package, mirror or log line.
        if !std::thread::panicking() {
            let leaks = self.canary_leaks();
            assert!(
                leaks.is_empty(),
                "Gantry's canary variable leaked into {leaks:?}"
            );
        }
    }
}

/// A file or directory of `shared/fixtures/` (beside the repository, as on
/// developer machines and in CI).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/fixtures").join(rel))
        .find(|c| c.exists())
        .unwrap_or_else(|| panic!("fixture {rel} not found beside the repository"))
}

/// A work dir with `pipelines/banking.yaml` following [`REPO`] on `main`.
pub fn workdir() -> tempfile::TempDir {
    pipelines_dir(
        "banking",
        &format!("{}stages:\n  - name: test\n  - name: prod\n", banking(REPO)),
    )
}

/// A work dir whose `pipelines/<name>.yaml` holds `yaml`.
pub fn pipelines_dir(name: &str, yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(dir.path().join(format!("pipelines/{name}.yaml")), yaml).unwrap();
    dir
}

/// The head of pipeline `banking`: `repo` on `main` with the e2e webhook
/// secret, a YAML project under `gateway/`; stages and the rest follow.
pub fn banking(repo: impl std::fmt::Display) -> String {
    format!(
        "name: banking\nsource:\n  repo: {repo}\n  branch: main\n  webhook_secret: env:E2E_WEBHOOK_SECRET\n\
         gateway:\n  format: yaml\n  path: gateway/\n"
    )
}

pub fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn push_body(commit: &str, branch: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "repository": {
            "full_name": "apim/banking-config",
            "clone_url": REPO,
            "html_url": "https://git.example.com/apim/banking-config",
        },
        "head_commit": {
            "id": commit,
            "message": "Raise the pets quota",
            "author": { "name": "Dev One", "email": "dev@example.com", "username": "dev1" }
        }
    }))
    .unwrap()
}

pub fn commit_sha(n: u64) -> String {
    format!("{:040x}", 0xc0ffee_u64 * 1_000_003 + n)
}

/// Sends a signed GitHub push; returns (status, body).
/// A GitHub `push` delivery of `body`, signed with [`SECRET`].
pub async fn post_github_push(base: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .unwrap()
}

pub async fn send_push(
    client: &reqwest::Client,
    base: &str,
    commit: &str,
    delivery: &str,
) -> reqwest::Result<(u16, Value)> {
    let body = push_body(commit, "main");
    let resp = client
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(&body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Triggers a run of `commit` on `pipeline` (`POST /api/v1/runs`, as
/// `token`'s user when given); the new run's id.
pub async fn trigger_run(base: &str, token: Option<&str>, pipeline: &str, commit: &str) -> String {
    let mut request = reqwest::Client::new().post(format!("{base}/api/v1/runs"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request
        .json(&serde_json::json!({ "pipeline": pipeline, "commit": commit }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    body["run_id"].as_str().unwrap().to_owned()
}

/// The `data` of each event of type `ty` in a run's events, in order.
pub fn data_of(events: &Value, ty: &str) -> Vec<Value> {
    events
        .as_array()
        .expect("a JSON array of events")
        .iter()
        .filter(|e| e["type"] == ty)
        .map(|e| e["data"].clone())
        .collect()
}

/// Serves `app` on a port the kernel picks; its address.
pub async fn serve_http(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The stdout of a command that must have succeeded (else its stderr).
pub fn stdout_of(out: std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The body of `GET {base}{path}` as text (a page, `/metrics`).
pub async fn get_text(base: &str, path: &str) -> String {
    reqwest::get(format!("{base}{path}"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("text")
}

pub async fn get_json(base: &str, path: &str) -> Value {
    get_json_as(base, None, path).await
}

/// `GET` with a bearer token (for a server with `GANTRY_API_TOKENS`).
pub async fn get_json_as(base: &str, token: Option<&str>, path: &str) -> Value {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("GET").json().await.expect("json")
}

/// Reads SSE messages from `/api/v1/events` until `done` says so or the
/// server ends the stream (30 s at most).
pub async fn read_sse(
    base: &str,
    query: &str,
    mut done: impl FnMut(&[(i64, Value)]) -> bool,
) -> Vec<(i64, Value)> {
    use futures::StreamExt;
    let resp = reqwest::get(format!("{base}/api/v1/events{query}"))
        .await
        .expect("SSE");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::<u8>::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        let Some(chunk) = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE events arrive within 30 s")
        else {
            // The server ended the stream (`follow=false`): all there is.
            break;
        };
        let chunk = chunk.expect("chunk");
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8(block).unwrap();
            let mut id = None;
            let mut data = None;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out
}

/// Pushes a one-layer parent image to `repo` and returns its reference.
pub async fn push_parent(registry: &Registry, repo: &str) -> String {
    let mut files = StagePackage::new("parent");
    files
        .add_file(
            "/opt/Axway/apigateway/posix/bin/start-emt",
            Bytes::from_static(b"#!/bin/sh\n"),
            true,
        )
        .unwrap();
    let layer = build_layer(
        &files,
        LayerOptions {
            mtime: 0,
            compression: 6,
        },
    )
    .unwrap();
    let config = Bytes::from(
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Labels": { "vendor": "Axway" } },
            "rootfs": { "type": "layers", "diff_ids": [layer.diff_id.to_string()] },
            "history": [{ "created_by": "parent" }]
        }))
        .unwrap(),
    );
    let format = ManifestFormat::Oci;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(format.manifest_media_type().to_owned()),
        config: Descriptor::new(
            format.config_media_type(),
            Digest::sha256(&config),
            config.len() as u64,
        ),
        layers: vec![Descriptor::new(
            format.gzip_layer_media_type(),
            layer.digest.clone(),
            layer.size(),
        )],
        annotations: None,
    };
    let client = ImageClient::new(ClientOptions::default()).unwrap();
    let target = Target::parse(&format!("{}/{repo}", registry.host_port())).unwrap();
    client
        .push_blob(&target, false, layer.data.clone())
        .await
        .unwrap();
    client.push_blob(&target, false, config).await.unwrap();
    client
        .push_manifest(
            &target,
            false,
            "7.7",
            Bytes::from(serde_json::to_vec(&manifest).unwrap()),
            format.manifest_media_type(),
        )
        .await
        .unwrap();
    format!("{}/{repo}:7.7", registry.host_port())
}

/// The smallest valid YAML Entity Store project, under `gateway/` of `repo`.
pub fn write_minimal_project(repo: &gantry_tests::GitRepo) {
    for (path, text) in [
        (
            "gateway/_parent.yaml",
            "---\ntype: Root\nfields:\n  name: System Components\n",
        ),
        (
            "gateway/META-INF/types/Entity.yaml",
            "---\nname: Entity\nabstract: true\n",
        ),
        (
            "gateway/META-INF/types/Entity/Root.yaml",
            "---\nname: Root\nfields:\n  name: {type: string}\n",
        ),
    ] {
        repo.write(path, text).unwrap();
    }
}

/// A repository with [`write_minimal_project`] and apim-cli's Petstore
/// OpenAPI file at `apis/petstore/petstore.json` (its API config is the
/// test's own).
pub fn petstore_project() -> gantry_tests::GitRepo {
    let repo = gantry_tests::GitRepo::init().unwrap();
    write_minimal_project(&repo);
    repo.write(
        "apis/petstore/petstore.json",
        std::fs::read_to_string(fixture("apim-cli/examples/petstore.json")).unwrap(),
    )
    .unwrap();
    repo
}

/// The body of a GitHub push of `commit` on `main` in the local repository
/// `repo`, by `author`.
pub fn local_push_body(repo: &gantry_tests::GitRepo, commit: &str, author: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "after": commit,
        "repository": { "clone_url": format!("file://{}", repo.path().display()) },
        "head_commit": { "message": "config", "author": author }
    }))
    .unwrap()
}

/// A signed GitHub push of `commit` in the local repository `repo`, by
/// `author`; asserts it was accepted and returns the run id.
pub async fn push_local_commit(
    base: &str,
    repo: &gantry_tests::GitRepo,
    commit: &str,
    author: Value,
) -> String {
    let resp = post_github_push(base, local_push_body(repo, commit, author)).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["runs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The run's view once it is no longer `running` (`timeout` at most);
/// `context` says what to print if it never ends.
pub async fn wait_run_ended(
    base: &str,
    run: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> Value {
    wait_run_ended_as(base, None, run, timeout, context).await
}

/// [`wait_run_ended`] with a bearer token.
pub async fn wait_run_ended_as(
    base: &str,
    token: Option<&str>,
    run: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let view = get_json_as(base, token, &format!("/api/v1/runs/{run}")).await;
        if view["status"] != "running" {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{view}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bare deploy repository (as on a forge) whose `main` holds `files`
/// (path, contents) in one commit named `seed`.
pub fn seeded_deploy_repo(files: &[(&str, &str)]) -> gantry_tests::GitRepo {
    let deploy = gantry_tests::GitRepo::bare().unwrap();
    let seed = gantry_tests::GitRepo::init().unwrap();
    for (path, contents) in files {
        seed.write(path, contents).unwrap();
    }
    seed.commit("seed").unwrap();
    seed.git(["remote", "add", "origin", &deploy.url()])
        .unwrap();
    seed.push("origin", "main").unwrap();
    deploy
}

/// API tokens of the approval tests: (token, user, email, groups). dev1
/// is a release manager who also pushes commits (an author); olga is no
/// release manager.
pub const TOKENS: &[(&str, &str, &str, &str)] = &[
    ("tok-rita", "rita", "rita@example.com", "[release-managers]"),
    ("tok-sam", "sam", "sam@example.com", "[release-managers]"),
    (
        "tok-dev",
        "dev1",
        "dev@example.com",
        "[release-managers, developers]",
    ),
    ("tok-out", "olga", "olga@example.com", "[developers]"),
];

/// Writes `dir/tokens.yaml` for `GANTRY_API_TOKENS` from (token, user,
/// email, groups) and returns its path; tokens are stored as their sha256.
pub fn write_api_tokens(dir: &Path, tokens: &[(&str, &str, &str, &str)]) -> String {
    use sha2::Digest;
    let mut yaml = String::from("tokens:\n");
    for (token, user, email, groups) in tokens {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        yaml.push_str(&format!(
            "  - user: {user}\n    email: {email}\n    groups: {groups}\n    sha256: {hash}\n"
        ));
    }
    let path = dir.join("tokens.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// The run's view once its stage `stage` has status `status` (`timeout` at
/// most); `token` for a server with API tokens.
pub async fn wait_stage_status(
    base: &str,
    token: Option<&str>,
    run: &str,
    (stage, status): (&str, &str),
    timeout: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let view = get_json_as(base, token, &format!("/api/v1/runs/{run}")).await;
        let reached = view["stages"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == stage && s["status"] == status)
        });
        if reached {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stage} never became {status}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What distributed e2e tests run on, as production would: a private NATS
/// requiring TLS (a private CA, a client certificate) and a password, and
/// Postgres with `sslmode=require`. A Gantry that cannot speak TLS cannot
/// connect to it.
pub struct SecureNats {
    pub server: gantry_tests::NatsServer,
    pub pki: gantry_tests::TestPki,
    pub password: String,
}

impl SecureNats {
    pub async fn start() -> SecureNats {
        let pki = gantry_tests::TestPki::generate().expect("test PKI");
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let server = gantry_tests::NatsServer::start_with(gantry_tests::NatsConfig {
            user_password: Some(("gantry".into(), password.clone())),
            tls: Some(pki.clone()),
            verify_clients: true,
            ..Default::default()
        })
        .await
        .expect("private NATS with TLS");
        SecureNats {
            server,
            pki,
            password,
        }
    }

    /// `tls://gantry:<password>@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!(
            "tls://gantry:{}@127.0.0.1:{}",
            self.password,
            self.server.port()
        )
    }

    /// The CA, client certificate and key each process gets a copy of
    /// ([`Gantry::start_alone_with`]).
    pub fn files(&self) -> [&Path; 3] {
        [
            self.pki.ca.as_path(),
            self.pki.client_cert.as_path(),
            self.pki.client_key.as_path(),
        ]
    }

    /// `GANTRY_NATS_URL`, `_CA`, `_CERT` and `_KEY`, the files named
    /// relative to the process's directory (its own copies).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        vec![
            ("GANTRY_NATS_URL", self.url()),
            ("GANTRY_NATS_CA", name(&self.pki.ca)),
            ("GANTRY_NATS_CERT", name(&self.pki.client_cert)),
            ("GANTRY_NATS_KEY", name(&self.pki.client_key)),
        ]
    }

    /// The test's own client, over TLS with the password.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password("gantry".into(), self.password.clone())
            .add_root_certificates(self.pki.ca.clone())
            .add_client_certificate(self.pki.client_cert.clone(), self.pki.client_key.clone())
            .require_tls(true)
            .connect(format!("127.0.0.1:{}", self.server.port()))
            .await
            .expect("TLS client of the private NATS")
    }
}

/// `url` with `?sslmode=require` (Postgres over TLS).
pub fn require_tls(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=require")
}

/// Every `gantry serve` service, one process each in the distributed tests
/// (also the database session's `application_name`, `gantry-<service>`).
pub const SERVICES: [&str; 8] = [
    "webhook",
    "api",
    "conductor",
    "envgen",
    "imagebuild",
    "deployer",
    "smoke",
    "apim",
];

/// The log of record in Postgres, in order: (event id, type, CloudEvent).
pub async fn log_rows(pool: &sqlx::PgPool) -> Vec<(String, String, Value)> {
    use sqlx::Row as _;
    sqlx::query("SELECT event_id, event_type, event FROM events ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let event = serde_json::from_str(r.get::<String, _>(2).as_str()).unwrap();
            (r.get(0), r.get(1), event)
        })
        .collect()
}

/// Waits until the relay has published `ids` (the log's event ids, in
/// order) to JetStream stream `stream`, then asserts the stream holds
/// exactly them: every event once, in log order.
pub async fn assert_nats_holds_log(nats_url: &str, stream: &str, ids: &[&String]) {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    let mut stream = js.get_stream(stream).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = stream.info().await.unwrap().state.messages as usize;
        if n >= ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay published {n} of {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = stream.info().await.unwrap();
    let mut on_nats = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let event: Value = serde_json::from_slice(&msg.payload).unwrap();
        on_nats.push(event["id"].as_str().unwrap().to_owned());
    }
    let on_nats: Vec<&String> = on_nats.iter().collect();
    assert_eq!(on_nats, ids, "NATS holds the log once, in order");
}
