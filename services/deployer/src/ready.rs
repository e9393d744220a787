//! Readiness: after a deploy, poll the stage's `ready.url` until it answers
//! 2xx or `ready.timeout` runs out.
//!
//! A rolling update takes a while; connection errors, 5xx and 404 (an
//! ingress without a backend yet) are all "not yet". The error says what the
//! last attempt saw, which is usually what to look at.

use std::time::{Duration, Instant};

use gantry_pipeline::format_duration;

/// Longest TCP (and TLS) connect of one readiness request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How readiness is polled.
#[derive(Debug, Clone)]
pub struct ReadyOptions {
    /// Pause between attempts.
    pub interval: Duration,
    /// Timeout of one request (shortened to what is left of `ready.timeout`).
    pub request_timeout: Duration,
}

impl Default for ReadyOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The gateway answered 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyOutcome {
    pub status: u16,
    pub attempts: u32,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadyError {
    #[error("ready.url `{url}` is not a valid http(s) URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url} was not healthy within {} ({attempts} attempts); last: {last}", format_duration(*.timeout))]
    Timeout {
        url: String,
        timeout: Duration,
        attempts: u32,
        /// `HTTP 503 Service Unavailable`, or the connection error.
        last: String,
    },
}

/// Polls `url` (`ready.url`) with GET until a 2xx answer or `timeout`.
pub async fn wait_ready(
    url: &str,
    timeout: Duration,
    options: &ReadyOptions,
) -> Result<ReadyOutcome, ReadyError> {
    let url_text = url;
    let url = reqwest::Url::parse(url_text).map_err(|e| ReadyError::BadUrl {
        url: url_text.to_owned(),
        message: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ReadyError::BadUrl {
            url: url_text.to_owned(),
            message: format!("scheme `{}`", url.scheme()),
        });
    }
    let shown = redacted(&url);
    // Each request also carries what is left of `ready.timeout`.
    let client = reqwest::Client::builder()
        .user_agent(concat!("gantry-deployer/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.request_timeout.min(CONNECT_TIMEOUT))
        .timeout(options.request_timeout)
        .build()
        .map_err(|e| ReadyError::BadUrl {
            url: shown.clone(),
            message: e.to_string(),
        })?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let per_request = options
            .request_timeout
            .min(left)
            .max(Duration::from_millis(100));
        let last = match client.get(url.clone()).timeout(per_request).send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(url = %shown, status = resp.status().as_u16(), attempts, "ready");
                return Ok(ReadyOutcome {
                    status: resp.status().as_u16(),
                    attempts,
                    elapsed: started.elapsed(),
                });
            }
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => describe(&e),
        };
        tracing::debug!(url = %shown, attempts, %last, "not ready yet");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadyError::Timeout {
                url: shown,
                timeout,
                attempts,
                last,
            });
        }
        tokio::time::sleep(options.interval.min(left)).await;
    }
}

/// The URL without a password, for messages.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// A request error with its causes (reqwest's own message is terse), the
/// URL left out (it is said once already).
fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("request timed out".to_owned());
    } else if e.is_connect() {
        parts.push("cannot connect".to_owned());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.without_url_string());
    }
    parts.join(": ")
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        // `without_url` consumes; a message is all that is needed here.
        let text = self.to_string();
        match self.url() {
            Some(u) => text.replace(&format!(" ({u})"), ""),
            None => text,
        }
    }
}
