//! An embedded Gantry (SQLite in a temporary directory) following one
//! repository per forge, each pipeline with a webhook secret of its own
//! (`secret-<pipeline>`, read from a file), and the webhook router over it.

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use gantry_runtime::{App, Settings};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tower::ServiceExt;

/// (name, `source` keys): every pipeline follows `main` unless it says.
const PIPELINES: &[(&str, &str)] = &[
    ("github", "repo: https://github.com/acme/banking-config.git"),
    // Another team's pipeline on the same repository, with its own secret.
    ("github-audit", "repo: https://github.com/acme/banking-config"),
    // No `.git`: URLs are compared normalized.
    ("gitlab", "repo: https://gitlab.example.com/apim/banking-config"),
    ("gitea", "repo: https://gitea.example.com/apim/banking-config.git"),
    ("bitbucket", "repo: https://bitbucket.org/acme/banking-config.git"),
    (
        "bitbucket-dc",
        "repo: ssh://git@bitbucket.example.com:7999/apim/banking-config.git",
    ),
    (
        "generic",
        "repo: https://git.example.com/apim/banking-config.git\n  webhook_repo: apim/banking-config",
    ),
    ("local", "repo: /srv/git/local-config"),
];

/// A pipeline that follows a repository but has no webhook secret.
const UNSIGNED: &str = "\
name: unsigned
source:
  repo: https://git.example.com/apim/unsigned.git
  branch: main
gateway: { format: yaml, path: gateway/ }
stages:
  - name: test
";

pub struct TestApp {
    pub app: App,
    router: Router,
    _dir: tempfile::TempDir,
}

/// The webhook secret of `pipeline`.
pub fn secret(pipeline: &str) -> String {
    format!("secret-{pipeline}")
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`, computed here
/// rather than by the crate under test.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A payload of `tests/fixtures/`.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// A 202 naming one new or existing run per pipeline: (pipeline, run id).
    #[track_caller]
    pub fn accepted(&self) -> Vec<(String, String)> {
        assert_eq!(self.status, 202, "{}", self.text());
        let v = self.json();
        assert_eq!(v["status"], "accepted", "{v}");
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["pipeline"].as_str().unwrap().to_owned(),
                    r["run_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// A 200 `ignored` whose reason contains `why`.
    #[track_caller]
    pub fn assert_ignored(&self, why: &str) {
        assert_eq!(self.status, 200, "{}", self.text());
        let v = self.json();
        assert_eq!(v["status"], "ignored", "{v}");
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.contains(why), "`{why}` not in: {reason}");
    }

    /// A problem (RFC 9457) with `status`, its `detail` containing `needle`;
    /// returns the problem.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, needle: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "`{needle}` not in: {detail}");
        p
    }
}

impl TestApp {
    pub async fn start() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().join("pipelines");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&pipelines).unwrap();
        std::fs::create_dir_all(&secrets).unwrap();
        for (name, source) in PIPELINES {
            let file = secrets.join(name);
            std::fs::write(&file, secret(name)).unwrap();
            let yaml = format!(
                "name: {name}\nsource:\n  {source}\n  branch: main\n  webhook_secret: file:{}\n\
                 gateway: {{ format: yaml, path: gateway/ }}\nstages:\n  - name: test\n",
                file.display()
            );
            std::fs::write(pipelines.join(format!("{name}.yaml")), yaml).unwrap();
        }
        std::fs::write(pipelines.join("unsigned.yaml"), UNSIGNED).unwrap();
        let errors = gantry_pipeline::load_dir_partial(&pipelines).1;
        assert!(errors.is_empty(), "the test pipelines load: {errors}");
        let app = App::start(Settings {
            pipelines,
            data_dir: dir.path().join("data"),
            ..Settings::default()
        })
        .await
        .unwrap();
        // As `gantry up` merges it (services/gantry/src/server.rs).
        let router = gantry_runtime::problem::finish(gantry_webhook::router(app.clone()));
        TestApp {
            app,
            router,
            _dir: dir,
        }
    }

    /// `POST /webhooks/<provider>` with `headers` and `body`.
    pub async fn post(&self, provider: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.send("POST", &format!("/webhooks/{provider}"), headers, body)
            .await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body.to_vec())).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            content_type,
            body,
        }
    }

    /// How many events the log holds.
    pub async fn head(&self) -> i64 {
        self.app.store.head().await.unwrap()
    }

    /// The `data` of `run`'s `commit.received`.
    pub async fn commit_received(&self, run: &str) -> Value {
        let events = self.app.store.read_run(run).await.unwrap();
        let received = events
            .iter()
            .find(|e| e.event.ty == "io.gantry.commit.received.v1")
            .expect("the run has its commit.received");
        assert_eq!(received.event.source, "gantry/webhook");
        received.event.data.clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.app.shutdown.cancel();
    }
}
