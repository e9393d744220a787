//! Client commands (`trigger`, `runs`, `run`, `approve`, `reject`, `events`).
//!
//! They speak to the HTTP API at `--server` (default `http://<listen>`). When
//! no server was named and nothing listens at the default address, they
//! serve the same request in-process against the configured store, so
//! `gantry runs` works with or without `gantry up` running, through exactly
//! the same code. A server named with `--server` / `GANTRY_SERVER` that does
//! not answer is an error: the answer must not silently come from another
//! (local) log.

use std::pin::Pin;

use anyhow::{anyhow, Context};
use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use gantry_runtime::{App, Settings};
use http::{Method, Request, StatusCode};
use tower::ServiceExt;

use crate::cli::Global;

pub type ByteStream = Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>;

pub struct Response {
    pub status: StatusCode,
    pub body: ByteStream,
}

impl Response {
    pub async fn bytes(self) -> anyhow::Result<Bytes> {
        let chunks: Vec<Bytes> = self.body.try_collect().await?;
        Ok(chunks.concat().into())
    }

    /// The error an unsuccessful answer stands for: the problem's detail.
    pub async fn into_error(self) -> anyhow::Error {
        let status = self.status;
        match self.bytes().await {
            Ok(body) => problem_error(
                status,
                &serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            ),
            Err(e) => e,
        }
    }

    /// The JSON body of a success, or the problem's detail as an error.
    pub async fn json(self) -> anyhow::Result<serde_json::Value> {
        let status = self.status;
        let body = self.bytes().await?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("server answered {status} with a body that is not JSON"))?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(problem_error(status, &value))
        }
    }
}

fn problem_error(status: StatusCode, value: &serde_json::Value) -> anyhow::Error {
    let detail = value
        .get("detail")
        .and_then(|d| d.as_str())
        .or_else(|| value.get("title").and_then(|t| t.as_str()))
        .unwrap_or("request failed");
    anyhow!("{detail} ({status})")
}

pub struct Client {
    base: String,
    /// `--server` / `GANTRY_SERVER` was given: never fall back to the store.
    explicit: bool,
    token: Option<String>,
    settings: Settings,
    http: reqwest::Client,
}

impl Client {
    pub fn new(global: &Global) -> Self {
        Self::for_settings(
            global.settings(),
            global.server.clone(),
            global.token.clone(),
        )
    }

    /// A client of the server at `server` (default `http://<listen>`) with
    /// `token`, answering from the store of `settings` when no server was
    /// named and none answers.
    pub fn for_settings(settings: Settings, server: Option<String>, token: Option<String>) -> Self {
        let server = server.filter(|s| !s.trim().is_empty());
        let explicit = server.is_some();
        let base = server
            .unwrap_or_else(|| format!("http://{}", settings.listen))
            .trim_end_matches('/')
            .to_owned();
        Self {
            base,
            explicit,
            token,
            settings,
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = &body {
            req = req.json(body);
        }
        match req.send().await {
            Ok(resp) => Ok(Response {
                status: resp.status(),
                body: Box::pin(resp.bytes_stream().map_err(anyhow::Error::from)),
            }),
            Err(e) if e.is_connect() && self.explicit => Err(anyhow!(e).context(format!(
                "no Gantry server answered at {} (named by --server / GANTRY_SERVER); \
                 start it, or correct the URL (unset it to use the local store instead)",
                self.base
            ))),
            Err(e) if e.is_connect() => self.send_in_process(method, path, body).await,
            Err(e) => Err(anyhow!(e).context(format!("request to {url} failed"))),
        }
    }

    /// The same request, answered by an API router over the local store.
    async fn send_in_process(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Response> {
        let mut settings = self.settings.clone();
        // Only the log is needed; whichever relay runs publishes what we append.
        settings.nats_url = None;
        tracing::debug!(server = %self.base, "no server answering; using the store directly");
        let app = App::start(settings)
            .await
            .context("no Gantry server is answering, and the local store cannot be opened")?;
        let router = crate::server::api_router(&app)?;
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = match body {
            Some(b) => req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b)?))?,
            None => req.body(Body::empty())?,
        };
        let resp = router.oneshot(req).await?;
        let status = resp.status();
        let stream = resp
            .into_body()
            .into_data_stream()
            .map_err(anyhow::Error::from);
        Ok(Response {
            status,
            body: Box::pin(stream),
        })
    }
}

/// Splits an SSE byte stream into `(id, data)` messages.
pub fn sse_messages(body: ByteStream) -> impl Stream<Item = anyhow::Result<(Option<i64>, String)>> {
    futures::stream::unfold(
        (body, String::new(), false),
        |(mut body, mut buf, mut done)| async move {
            loop {
                if let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut id = None;
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim().parse().ok();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            if !data.is_empty() {
                                data.push('\n');
                            }
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    if data.is_empty() {
                        continue; // keep-alive comment
                    }
                    return Some((Ok((id, data)), (body, buf, done)));
                }
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                    Some(Err(e)) => {
                        done = true;
                        return Some((Err(e), (body, buf, done)));
                    }
                    None => done = true,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    /// A loopback port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    /// `gantry <flags> runs` with its data dir and pipelines under `data`.
    fn runs_in(data: &std::path::Path, flags: &[&str]) -> Cli {
        let data_dir = data.display().to_string();
        let pipelines = data.join("pipelines").display().to_string();
        let mut args = vec!["gantry"];
        args.extend_from_slice(flags);
        args.extend(["--data-dir", &data_dir, "--pipelines", &pipelines, "runs"]);
        Cli::try_parse_from(args).unwrap()
    }

    #[tokio::test]
    async fn a_named_server_that_does_not_answer_is_an_error_not_the_local_store() {
        let data = tempfile::tempdir().unwrap();
        let server = format!("http://127.0.0.1:{}", closed_port());
        let cli = runs_in(data.path(), &["--server", &server]);
        let err = match Client::new(&cli.global)
            .send(Method::GET, "/api/v1/runs", None)
            .await
        {
            Ok(resp) => panic!(
                "expected an error, got {} (answered by the local store?)",
                resp.status
            ),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&server), "{err}");
        assert!(err.contains("--server"), "{err}");
        assert!(
            !data.path().join("gantry.db").exists(),
            "the local store was opened"
        );
    }

    #[tokio::test]
    async fn without_a_named_server_the_local_store_answers() {
        let data = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", closed_port());
        let mut cli = runs_in(data.path(), &["--listen", &listen]);
        // Whatever the environment says: the local store under `data`.
        cli.global.server = None;
        cli.global.database_url = None;
        cli.global.nats_url = None;
        cli.global.api_tokens = None;
        let runs = Client::new(&cli.global)
            .send(Method::GET, "/api/v1/runs", None)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(runs, serde_json::json!([]));
    }
}
