//! The `notifier` service (DESIGN.md 1.9): each pipeline's events, as they
//! are recorded, POSTed to its `notify` targets.
//!
//! - **Apart from promotions.** The notifier reads the log from its own
//!   checkpoint, like a dashboard; no step waits for it, so a receiver that
//!   is down or slow never slows a run.
//! - **At least once, in log order per target.** Matching events are first
//!   written to the outbox (`notify_outbox`), then each target's oldest is
//!   sent until it is acknowledged (2xx), one at a time. A crash between
//!   sending and recording sends that event again: receivers deduplicate by
//!   `X-Gantry-Delivery` (the event id, also the CloudEvent's `id`).
//! - **Retried with backoff** (0.5 s doubling to 1 min) for at least
//!   [`RETRY_FOR`] after the first failure; then the event is given up,
//!   counted and kept in the target's record, and the next one goes.
//! - **Signed** with `X-Gantry-Signature: sha256=<hex HMAC-SHA256 of the
//!   body>` when the target has a `secret`.
//! - **One sender.** On Postgres one process leads (an advisory lock, as the
//!   relay); the others wait to take over.
//! - A target's URL may itself be a secret (Slack's is): it is never logged
//!   or shown; the target is known by a hash and its host.
//!
//! Failures show in `GET /api/v1/notifications` and as `gantry_notify_*`
//! series on `/metrics`.

mod message;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use gantry_pipeline::{Notify, NotifyFormat, Pipeline};
use gantry_runtime::runtime::Pipelines;
use gantry_runtime::App;
use gantry_store::notify::Pending;
use gantry_store::{EventStore, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::Notify as Wake;
use tokio_util::sync::CancellationToken;

pub use message::{signature, summary, Body};

/// The worker's name: its checkpoint, logs, `gantry serve notifier`.
pub const SERVICE: &str = "notifier";

/// How long an event is retried after its first failed attempt.
pub const RETRY_FOR: Duration = Duration::from_secs(10 * 60);

/// How long one attempt may take (connect, send, answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Events read from the log per query.
const PAGE: i64 = 256;

/// Delivery policy: how long to retry, how to wait between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retry_for: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_for: RETRY_FOR,
            first_backoff: FIRST_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// The pause after the `attempts`-th failed attempt (1-based).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(20)));
        doubled.min(self.max_backoff)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the notifier lost its leadership (its database connection ended)")]
    LostLead,
}

/// A target's stable id: pipeline, URL as written (a reference for a secret
/// URL, never its value) and format.
pub fn target_id(pipeline: &str, target: &Notify) -> String {
    let url = serde_json::to_string(&target.url).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(pipeline.as_bytes());
    h.update([0]);
    h.update(url.as_bytes());
    h.update([0]);
    h.update(format!("{:?}", target.format).as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn format_name(format: NotifyFormat) -> &'static str {
    match format {
        NotifyFormat::Cloudevents => "cloudevents",
        NotifyFormat::Slack => "slack",
    }
}

/// What the notifier shares with its per-target senders.
#[derive(Clone)]
struct Shared {
    store: EventStore,
    pipelines: Pipelines,
    public_url: String,
    client: reqwest::Client,
    retry: RetryPolicy,
}

#[derive(Clone)]
pub struct Notifier {
    shared: Shared,
}

impl Notifier {
    pub fn new(app: &App) -> Self {
        Self::with_parts(
            app.store.clone(),
            app.pipelines.clone(),
            &app.settings.public_url(),
            RetryPolicy::default(),
        )
    }

    pub fn with_parts(
        store: EventStore,
        pipelines: Pipelines,
        public_url: &str,
        retry: RetryPolicy,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A receiver's redirect is not followed with a signed body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gantry-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            // Fails only when no TLS backend can start, as `reqwest::Client::new`.
            .expect("building the notifier's HTTP client");
        Self {
            shared: Shared {
                store,
                pipelines,
                public_url: public_url.trim_end_matches('/').to_owned(),
                client,
                retry,
            },
        }
    }

    /// Where the notifier (re)starts in the log. A notifier that never ran
    /// starts at the head: it owes nothing from before it existed (an
    /// installation that adds it, or a log imported from an export, is not
    /// announced again). `gantry up` and `serve notifier` call this before
    /// they serve, so no event recorded after their start is skipped.
    pub async fn prepare(&self) -> Result<i64, StoreError> {
        let store = &self.shared.store;
        if let Some(p) = store.checkpoint_opt(SERVICE).await? {
            return Ok(p);
        }
        let head = store.head().await?;
        store.save_checkpoint(SERVICE, head).await?;
        Ok(head)
    }

    /// Runs until `shutdown`, leading when no other process does.
    pub async fn run(self, shutdown: CancellationToken) {
        let store = &self.shared.store;
        while !shutdown.is_cancelled() {
            let lead = match gantry_store::leader::elect(store, SERVICE, &shutdown).await {
                Ok(Some(lead)) => lead,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier election failed; retrying");
                    sleep_or_cancel(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!("notifier delivering the pipelines' notifications");
            match self.lead(lead, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier interrupted; resuming from its checkpoint");
                    sleep_or_cancel(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn lead(
        &self,
        mut lead: gantry_store::leader::Lead,
        shutdown: &CancellationToken,
    ) -> Result<(), NotifierError> {
        let store = &self.shared.store;
        let senders = shutdown.child_token();
        // Senders stop with this leadership, whichever way it ends.
        let _stop = senders.clone().drop_guard();
        let mut wakes: HashMap<String, Arc<Wake>> = HashMap::new();
        for target in store.notify_pending_targets().await? {
            self.sender(&mut wakes, &target, &senders);
        }
        let mut wake = store.wakeups();
        let mut position = self.prepare().await?;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let events = store.read_all(position, PAGE).await?;
            if events.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = wake.wait_beyond(position) => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        if !gantry_store::leader::still_leading(&mut lead).await {
                            return Err(NotifierError::LostLead);
                        }
                    }
                }
                continue;
            }
            let pipelines = self.shared.pipelines.get();
            // Each target once per page: its id (a hash), its host (which may
            // read a secret URL) and its record.
            let mut touched: HashMap<String, String> = HashMap::new();
            for recorded in &events {
                let Some(pipeline) = pipelines.get(&recorded.event.pipeline) else {
                    continue;
                };
                let Some(name) = recorded.event.name() else {
                    continue;
                };
                for (i, target) in pipeline.notify.iter().enumerate() {
                    if !target.wants(name.as_str()) {
                        continue;
                    }
                    let key = format!("{}\0{i}", pipeline.name);
                    if !touched.contains_key(&key) {
                        let id = target_id(&pipeline.name, target);
                        store
                            .notify_target(
                                &id,
                                &host_of(target),
                                format_name(target.format),
                                &pipeline.name,
                            )
                            .await?;
                        touched.insert(key.clone(), id);
                    }
                    let id = &touched[&key];
                    store
                        .notify_enqueue(id, &pipeline.name, recorded.position, recorded.event.id)
                        .await?;
                }
            }
            position = events.last().map_or(position, |e| e.position);
            store.save_checkpoint(SERVICE, position).await?;
            for id in touched.values() {
                self.sender(&mut wakes, id, &senders).notify_one();
            }
        }
    }

    /// The sender of `target`, started when it has none yet.
    fn sender(
        &self,
        wakes: &mut HashMap<String, Arc<Wake>>,
        target: &str,
        stop: &CancellationToken,
    ) -> Arc<Wake> {
        wakes
            .entry(target.to_owned())
            .or_insert_with(|| {
                let wake = Arc::new(Wake::new());
                tokio::spawn(send_loop(
                    self.shared.clone(),
                    target.to_owned(),
                    wake.clone(),
                    stop.clone(),
                ));
                wake
            })
            .clone()
    }
}

/// Delivers `target`'s outbox, oldest first, until `stop`.
async fn send_loop(shared: Shared, target: String, wake: Arc<Wake>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let pause = match send_next(&shared, &target).await {
            Ok(Next::Sent) => continue,
            Ok(Next::Idle) => None,
            Ok(Next::At(due)) => Some((due - Utc::now()).to_std().unwrap_or_default()),
            Err(e) => {
                tracing::warn!(target = %target, error = %e, "notifier outbox unreadable; retrying");
                Some(Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause.unwrap_or(Duration::MAX)), if pause.is_some() => {}
        }
    }
}

enum Next {
    /// One delivery settled (sent, retried later, or given up): go on.
    Sent,
    /// Nothing is owed.
    Idle,
    /// The oldest is due then.
    At(chrono::DateTime<Utc>),
}

async fn send_next(shared: &Shared, target: &str) -> Result<Next, StoreError> {
    let store = &shared.store;
    let Some(pending) = store.notify_oldest(target).await? else {
        return Ok(Next::Idle);
    };
    if pending.next_at > Utc::now() {
        return Ok(Next::At(pending.next_at));
    }
    let pipelines = shared.pipelines.get();
    let Some((pipeline, notify)) = find_target(pipelines.get(&pending.pipeline), target) else {
        store
            .notify_give_up(
                &pending,
                "the target is no longer in the pipeline's notify list",
            )
            .await?;
        return Ok(Next::Sent);
    };
    let Some(recorded) = store.get(pending.event_id).await? else {
        store
            .notify_give_up(&pending, "the event is not in the log")
            .await?;
        return Ok(Next::Sent);
    };
    let outcome = match Body::build(store, &recorded.event, notify.format, &shared.public_url).await
    {
        Ok(body) => post(shared, pipeline, notify, &recorded.event, body).await,
        Err(e) => Err(format!("cannot read the run for the message: {e}")),
    };
    match outcome {
        Ok(()) => {
            store.notify_delivered(&pending).await?;
        }
        Err(error) => settle_failure(shared, &pending, &error).await?,
    }
    Ok(Next::Sent)
}

async fn settle_failure(shared: &Shared, pending: &Pending, error: &str) -> Result<(), StoreError> {
    let store = &shared.store;
    let now = Utc::now();
    let first = pending.first_failure.unwrap_or(now);
    let retry_for = chrono::Duration::from_std(shared.retry.retry_for).unwrap_or_default();
    if now - first >= retry_for {
        tracing::warn!(
            pipeline = %pending.pipeline, target = %pending.target, event = %pending.event_id,
            attempts = pending.attempts + 1, error = %error,
            "notification given up after its retries"
        );
        return store.notify_give_up(pending, error).await;
    }
    let attempts = u32::try_from(pending.attempts + 1).unwrap_or(u32::MAX);
    let pause = shared.retry.backoff(attempts);
    tracing::info!(
        pipeline = %pending.pipeline, target = %pending.target, event = %pending.event_id,
        attempts, error = %error, retry_in = ?pause, "notification failed; retrying"
    );
    let next = now + chrono::Duration::from_std(pause).unwrap_or_default();
    store.notify_retry(pending, error, next).await
}

fn find_target<'a>(
    pipeline: Option<&'a Pipeline>,
    target: &str,
) -> Option<(&'a Pipeline, &'a Notify)> {
    let pipeline = pipeline?;
    pipeline
        .notify
        .iter()
        .find(|n| target_id(&pipeline.name, n) == target)
        .map(|n| (pipeline, n))
}

/// POSTs one notification; `Err` says why in words safe to show (no URL).
async fn post(
    shared: &Shared,
    pipeline: &Pipeline,
    notify: &Notify,
    event: &gantry_proto::CloudEvent,
    body: Body,
) -> Result<(), String> {
    let url = notify
        .url
        .resolve()
        .map_err(|e| format!("the target's URL cannot be read: {e}"))?;
    let mut request = shared
        .client
        .post(url.expose())
        .header("content-type", body.content_type)
        .header("x-gantry-delivery", event.id.to_string())
        .header("x-gantry-pipeline", &pipeline.name);
    if let Some(name) = event.name() {
        request = request.header("x-gantry-event", name.as_str());
    }
    if let Some(secret) = &notify.secret {
        let key = secret
            .resolve()
            .map_err(|e| format!("the target's secret cannot be read: {e}"))?;
        request = request.header(
            "x-gantry-signature",
            signature(key.expose().as_bytes(), &body.bytes),
        );
    }
    match request.body(body.bytes).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("the receiver answered {}", resp.status())),
        Err(e) => Err(describe(&e.without_url())),
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {ATTEMPT_TIMEOUT:?}")
    } else if e.is_connect() {
        "cannot connect to the receiver".to_owned()
    } else {
        // `without_url` dropped the URL, which may be a secret.
        format!("sending failed: {e}")
    }
}

/// The host a target's URL names, for status pages; `(secret)` when the URL
/// is a reference that cannot be read here.
fn host_of(target: &Notify) -> String {
    target
        .url
        .resolve()
        .ok()
        .and_then(|u| url::Url::parse(u.expose()).ok())
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "(secret)".to_owned())
}

async fn sleep_or_cancel(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(4), Duration::from_secs(4));
        assert_eq!(p.backoff(8), Duration::from_secs(60));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(60));
    }
}
