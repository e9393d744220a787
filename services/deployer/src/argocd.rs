//! Argo CD (`ready.argocd`): wait until the Application is synced to the
//! deploy commit and Healthy, reading `GET /api/v1/applications/{name}`
//! with a bearer token (Argo CD's REST API, the same the `argocd` CLI and UI
//! use). The first read asks Argo CD to refresh (`?refresh=normal`), so a
//! fresh commit is noticed without waiting for its polling interval.
//!
//! - `status.sync.status == "Synced"` and `status.sync.revision` is the
//!   deploy's revision (when the deploy made one: a gitops commit), and
//!   `status.health.status == "Healthy"`: done.
//! - Synced to the revision and `Degraded`, or the sync operation of the
//!   revision `Failed`/`Error`ed: the step fails with Argo CD's message.
//! - 401/403 (the token), 404 (no such Application): fail at once.
//! - Anything else (OutOfSync, Progressing, an older revision, Argo CD not
//!   answering): wait, until the timeout, which names what was last seen.

use std::time::{Duration, Instant};

use gantry_pipeline::{format_duration, ArgoCd};
use serde_json::Value;

/// How Argo CD is polled.
#[derive(Debug, Clone)]
pub struct ArgoOptions {
    pub interval: Duration,
    pub request_timeout: Duration,
}

impl Default for ArgoOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArgoError {
    #[error("ready.argocd: {0}")]
    Setup(String),
    #[error("Argo CD refused the token for application `{app}` (HTTP {status})")]
    Refused { app: String, status: u16 },
    #[error("Argo CD has no application `{app}`: {message}")]
    NotFound { app: String, message: String },
    #[error("Argo CD application `{app}` is {health} at {revision}: {message}")]
    Degraded {
        app: String,
        health: String,
        revision: String,
        message: String,
    },
    #[error("Argo CD could not sync application `{app}` to {revision}: {message}")]
    SyncFailed {
        app: String,
        revision: String,
        message: String,
    },
    #[error("Argo CD application `{app}` was not synced to {revision} and Healthy within {}; last: {last}", format_duration(*.timeout))]
    Timeout {
        app: String,
        revision: String,
        timeout: Duration,
        last: String,
    },
}

/// The application is synced to the revision and Healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgoSynced {
    pub revision: String,
    pub polls: u32,
}

/// Where the application stands at one look.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Done(String),
    Waiting(String),
}

/// Judges one Application object against the `revision` it must run.
fn judge(app_name: &str, app: &Value, revision: Option<&str>) -> Result<Seen, ArgoError> {
    let text = |pointer: &str| app.pointer(pointer).and_then(Value::as_str).unwrap_or("");
    let sync = text("/status/sync/status");
    let synced_to = text("/status/sync/revision");
    let health = text("/status/health/status");
    let at_revision = revision.is_none_or(|r| synced_to == r);
    let operation = text("/status/operationState/phase");
    let operation_revision = text("/status/operationState/syncResult/revision");
    let shown = revision.unwrap_or(synced_to).to_owned();
    if matches!(operation, "Failed" | "Error")
        && revision.is_none_or(|r| operation_revision == r || operation_revision.is_empty())
    {
        return Err(ArgoError::SyncFailed {
            app: app_name.to_owned(),
            revision: shown,
            message: non_empty(text("/status/operationState/message"), operation),
        });
    }
    if at_revision && sync == "Synced" {
        match health {
            "Healthy" => return Ok(Seen::Done(synced_to.to_owned())),
            "Degraded" | "Missing" => {
                return Err(ArgoError::Degraded {
                    app: app_name.to_owned(),
                    health: health.to_owned(),
                    revision: shown,
                    message: degraded_message(app),
                })
            }
            _ => {}
        }
    }
    Ok(Seen::Waiting(format!(
        "sync {} at {}, health {}",
        non_empty(sync, "unknown"),
        non_empty(&short(synced_to), "no revision"),
        non_empty(health, "unknown")
    )))
}

/// Argo CD's own words for a degraded application: its health message,
/// else its conditions' messages.
fn degraded_message(app: &Value) -> String {
    let health = app
        .pointer("/status/health/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !health.is_empty() {
        return health.to_owned();
    }
    let conditions: Vec<&str> = app
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("message").and_then(Value::as_str))
        .collect();
    if conditions.is_empty() {
        "no message".to_owned()
    } else {
        conditions.join("; ")
    }
}

fn non_empty(s: &str, or: &str) -> String {
    if s.is_empty() { or } else { s }.to_owned()
}

fn short(revision: &str) -> String {
    revision.chars().take(12).collect()
}

/// Waits until `argocd.app` is synced to `revision` (when given) and
/// Healthy, or `timeout`.
pub async fn wait_synced(
    argocd: &ArgoCd,
    revision: Option<&str>,
    timeout: Duration,
    options: &ArgoOptions,
) -> Result<ArgoSynced, ArgoError> {
    let token = argocd
        .token
        .resolve()
        .map_err(|e| ArgoError::Setup(format!("token: {e}")))?;
    let base = reqwest::Url::parse(&argocd.url)
        .map_err(|e| ArgoError::Setup(format!("url `{}`: {e}", argocd.url)))?;
    let mut url = base
        .join(&format!("api/v1/applications/{}", argocd.app))
        .map_err(|e| ArgoError::Setup(format!("url `{}`: {e}", argocd.url)))?;
    if let Some(ns) = &argocd.app_namespace {
        url.query_pairs_mut().append_pair("appNamespace", ns);
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("gantry-deployer/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(argocd.insecure)
        .timeout(options.request_timeout)
        .build()
        .map_err(|e| ArgoError::Setup(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut polls = 0;
    loop {
        polls += 1;
        let mut request_url = url.clone();
        if polls == 1 {
            request_url
                .query_pairs_mut()
                .append_pair("refresh", "normal");
        }
        let sent = client
            .get(request_url)
            .bearer_auth(token.expose())
            .send()
            .await;
        let last = match sent {
            Ok(resp) if matches!(resp.status().as_u16(), 401 | 403) => {
                return Err(ArgoError::Refused {
                    app: argocd.app.clone(),
                    status: resp.status().as_u16(),
                })
            }
            Ok(resp) if resp.status().as_u16() == 404 => {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                return Err(ArgoError::NotFound {
                    app: argocd.app.clone(),
                    message: body
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("404")
                        .to_owned(),
                });
            }
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(app) => match judge(&argocd.app, &app, revision)? {
                    Seen::Done(revision) => {
                        tracing::info!(app = %argocd.app, %revision, polls, "Argo CD synced and healthy");
                        return Ok(ArgoSynced { revision, polls });
                    }
                    Seen::Waiting(why) => why,
                },
                Err(e) => format!("unreadable answer: {e}"),
            },
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => format!("cannot reach Argo CD: {e}"),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ArgoError::Timeout {
                app: argocd.app.clone(),
                revision: revision.map(short).unwrap_or_else(|| "its target".into()),
                timeout,
                last,
            });
        }
        tokio::time::sleep(options.interval.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(sync: &str, revision: &str, health: &str) -> Value {
        json!({ "metadata": { "name": "gw" }, "status": {
            "sync": { "status": sync, "revision": revision },
            "health": { "status": health, "message": "Deployment \"gw\" exceeded its progress deadline" }
        } })
    }

    #[test]
    fn synced_to_the_commit_and_healthy_is_done() {
        let r = judge("gw", &app("Synced", "abc", "Healthy"), Some("abc")).unwrap();
        assert_eq!(r, Seen::Done("abc".into()));
    }

    #[test]
    fn an_older_revision_or_progressing_waits() {
        let older = judge("gw", &app("Synced", "old", "Healthy"), Some("abc")).unwrap();
        assert_eq!(
            older,
            Seen::Waiting("sync Synced at old, health Healthy".into())
        );
        // An older revision's degradation is not this release's.
        assert!(judge("gw", &app("Synced", "old", "Degraded"), Some("abc")).is_ok());
        let progressing = judge("gw", &app("Synced", "abc", "Progressing"), Some("abc")).unwrap();
        assert!(matches!(progressing, Seen::Waiting(_)));
        let out_of_sync = judge("gw", &app("OutOfSync", "abc", "Healthy"), Some("abc")).unwrap();
        assert!(matches!(out_of_sync, Seen::Waiting(_)));
    }

    #[test]
    fn degraded_at_the_commit_fails_with_argos_message() {
        let e = judge("gw", &app("Synced", "abc", "Degraded"), Some("abc")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Argo CD application `gw` is Degraded at abc: Deployment \"gw\" exceeded its progress deadline"
        );
    }

    #[test]
    fn a_failed_sync_of_the_commit_fails() {
        let mut a = app("OutOfSync", "old", "Healthy");
        a["status"]["operationState"] = json!({ "phase": "Failed", "message": "one or more objects failed to apply", "syncResult": { "revision": "abc" } });
        let e = judge("gw", &a, Some("abc")).unwrap_err();
        assert!(e.to_string().contains(
            "could not sync application `gw` to abc: one or more objects failed to apply"
        ));
    }
}
