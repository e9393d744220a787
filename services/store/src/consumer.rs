//! Running an event handler: subscribe, handle, record the results and the
//! fact of handling in one transaction, then ack.
//!
//! A handler's effect happens once per (event id, handler) even when the bus
//! delivers an event twice or the process dies mid-way: a redelivered event
//! whose handling is already recorded is acked without calling the handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_proto::{CloudEvent, EventName};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{BusError, EventBus};
use crate::store::{EventStore, NewEvents};

/// Any error a handler keeps as the cause of its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a handler could not deal with an event: a human message, and the
/// error that caused it when there is one. The consumer runner logs the whole
/// chain ([`chain`]); what a worker records in a `*.failed` event is its own
/// reason, never this error.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try later (a dependency is down, a conflict was lost).
    #[error("{message}")]
    Transient {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Retrying will not help: the runner gives up at once (see
    /// [`Handler::gave_up`]). A handler that can say why should append a
    /// `*.failed` event instead of returning this.
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl HandlerError {
    /// Worth another try; nothing caused it but what `message` says.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            source: None,
        }
    }

    /// Retrying will not help; nothing caused it but what `message` says.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// Worth another try: `message` says what failed, `source` why.
    pub fn transient_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Transient {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Retrying will not help: `message` says what failed, `source` why.
    pub fn permanent_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Permanent {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

impl From<crate::StoreError> for HandlerError {
    fn from(e: crate::StoreError) -> Self {
        HandlerError::transient_from("the event store failed", e)
    }
}

/// `error` and every error that caused it, outermost first, joined with
/// `: ` (as anyhow's `{:#}`); a cause whose text its wrapper already
/// includes is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// One job done in response to events.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Durable consumer name; also the idempotency key's handler part.
    fn name(&self) -> &'static str;

    /// The events this handler is offered.
    fn events(&self) -> &'static [EventName];

    /// Deals with one event, returning the events to record as its result.
    /// Called concurrently for events of different pipelines, in log order
    /// within one pipeline.
    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError>;

    /// What to record when the runner gives up on `event` (a permanent
    /// error, or the last of [`Retries::attempts`] failed; `error` is the
    /// handler's last error with its causes): the step's `*.failed` where
    /// the run waits for this handler, so the run ends visibly instead of
    /// waiting forever. Recorded with the handled marker, in one
    /// transaction. Default: nothing (the handler answers no step).
    async fn gave_up(
        &self,
        _event: &CloudEvent,
        _error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        Ok(Vec::new())
    }
}

/// How often a failing event is tried again, and how long between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Tries in all, the first included; then the runner gives up.
    pub attempts: u32,
    /// The pause after the first failure; doubled after each (up to 30 s).
    pub backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: crate::bus::MAX_DELIVER,
            backoff: Duration::from_millis(400),
        }
    }
}

impl Retries {
    fn pause(&self, failed: u32) -> Duration {
        let factor = 1u32 << failed.saturating_sub(1).min(16);
        self.backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(30))
    }
}

/// How a consumer runs its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Handler calls at once, across pipelines.
    pub concurrency: usize,
    /// Events taken from the bus and not yet settled, across pipelines: a
    /// pipeline that is stuck holds at most this many back.
    pub in_flight: usize,
    pub retries: Retries,
}

impl RunOptions {
    /// Handler calls at once, by default: enough that a few slow
    /// pipelines (a git server that does not answer, a long readiness
    /// wait) leave room for the others.
    pub const CONCURRENCY: usize = 8;
    pub const IN_FLIGHT: usize = 1024;
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            concurrency: Self::CONCURRENCY,
            in_flight: Self::IN_FLIGHT,
            retries: Retries::default(),
        }
    }
}

/// Feeds `handler` from `bus` until `shutdown`, with the default
/// [`RunOptions`]; see [`run_with`].
pub async fn run(
    store: EventStore,
    bus: Arc<dyn EventBus>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    run_with(store, bus, handler, shutdown, RunOptions::default()).await
}

/// Feeds `handler` from `bus` until `shutdown`. Events of one pipeline are
/// handled one after the other, in log order (a failing one is retried in
/// place, holding back the pipeline's later events); different pipelines
/// proceed concurrently, at most `options.concurrency` handler calls at
/// once, so a stuck or slow pipeline does not delay the others. On
/// shutdown the events in hand are finished first, so a graceful stop
/// loses nothing and leaves nothing half-done.
pub async fn run_with(
    store: EventStore,
    bus: Arc<dyn EventBus>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<(), BusError> {
    let name = handler.name();
    let mut sub = bus.subscribe(name, handler.events()).await?;
    tracing::info!(handler = name, bus = bus.kind(), "consumer started");
    let shared = Arc::new(Lanes {
        store,
        handler,
        busy: Arc::new(Semaphore::new(options.concurrency.max(1))),
        retries: options.retries,
        failed: Mutex::new(None),
        stop: shutdown.child_token(),
    });
    let in_flight = Arc::new(Semaphore::new(options.in_flight.max(1)));
    let mut lanes: HashMap<String, mpsc::UnboundedSender<Queued>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let outcome = loop {
        let permit = tokio::select! {
            _ = shared.stop.cancelled() => break Ok(()),
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let delivery = tokio::select! {
            _ = shared.stop.cancelled() => break Ok(()),
            d = sub.next() => d,
        };
        let delivery = match delivery {
            Ok(Some(d)) => d,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let tx = lanes
            .entry(delivery.event.pipeline.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.spawn(lane(shared.clone(), rx));
                tx
            });
        // A lane ends only when the runner stops.
        let _ = tx.send(Queued { delivery, permit });
    };
    // Stop the lanes taking new events; the ones in hand are finished.
    shared.stop.cancel();
    drop(lanes);
    while tasks.join_next().await.is_some() {}
    tracing::info!(handler = name, "consumer stopped");
    let failed = shared
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match (outcome, failed) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

/// What every lane of one consumer shares.
struct Lanes {
    store: EventStore,
    handler: Arc<dyn Handler>,
    /// Handler calls in progress.
    busy: Arc<Semaphore>,
    retries: Retries,
    /// The first bus or store error a lane met: the runner stops with it.
    failed: Mutex<Option<BusError>>,
    stop: CancellationToken,
}

/// A delivery on its way to its pipeline's lane, holding its place among
/// the events in flight.
struct Queued {
    delivery: crate::bus::Delivery,
    permit: OwnedSemaphorePermit,
}

/// One pipeline's events, one after the other.
async fn lane(shared: Arc<Lanes>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some(Queued { delivery, permit }) = rx.recv().await {
        if shared.stop.is_cancelled() {
            // Not begun: left unsettled, so it is delivered again.
            break;
        }
        let span = tracing::info_span!(
            "handle",
            handler = shared.handler.name(),
            event = %delivery.event.id,
            ty = %delivery.event.ty,
            pipeline = %delivery.event.pipeline,
            attempt = delivery.attempt
        );
        let done = handle_one(&shared, delivery).instrument(span).await;
        drop(permit);
        if let Err(e) = done {
            let mut failed = shared.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert(e);
            drop(failed);
            shared.stop.cancel();
            break;
        }
    }
}

/// Calls the handler, reporting progress while it works: long handlers (a
/// checkout, a push, a readiness wait) keep the event theirs; a handler
/// that died stops doing so.
async fn call(
    shared: &Lanes,
    delivery: &crate::bus::Delivery,
) -> Result<Vec<NewEvents>, HandlerError> {
    let _turn = shared
        .busy
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| HandlerError::transient("the consumer is stopping"))?;
    let work = shared.handler.handle(&delivery.event);
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(crate::bus::PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            done = &mut work => break done,
            _ = ticker.tick() => report_progress(delivery).await,
        }
    }
}

async fn report_progress(delivery: &crate::bus::Delivery) {
    if let Err(e) = delivery.in_progress().await {
        tracing::debug!(error = %e, "could not report progress");
    }
}

async fn handle_one(shared: &Lanes, delivery: crate::bus::Delivery) -> Result<(), BusError> {
    let store = &shared.store;
    let handler = shared.handler.as_ref();
    let name = handler.name();
    let event = &delivery.event;
    if store.is_handled(name, event.id).await? {
        tracing::debug!("already handled; acking the redelivery");
        return delivery.ack().await;
    }
    let limit = shared.retries.attempts.max(1);
    // Delivered more often than the runner tries: each earlier delivery
    // ended without an answer (the process died or hung on it).
    if delivery.attempt > limit {
        let error = format!(
            "no answer after {} deliveries (the handler never finished)",
            delivery.attempt - 1
        );
        return give_up(shared, delivery, &error).await;
    }
    let mut tries = 0u32;
    loop {
        tries += 1;
        match call(shared, &delivery).await {
            Ok(results) => {
                return match store.append_handled(name, event.id, results).await {
                    Ok(_) => delivery.ack().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record results; will retry");
                        delivery.retry().await
                    }
                };
            }
            Err(e) if e.is_transient() && tries < limit && !shared.stop.is_cancelled() => {
                let pause = shared.retries.pause(tries);
                tracing::warn!(error = %chain(&e), attempt = tries, retry_in = ?pause, "handler failed; will retry");
                // Retried in place: the pipeline's later events wait (log
                // order), other pipelines do not.
                let mut ticker = tokio::time::interval(crate::bus::PROGRESS_EVERY);
                ticker.tick().await;
                let sleep = tokio::time::sleep(pause);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = ticker.tick() => report_progress(&delivery).await,
                    }
                }
            }
            Err(e) if e.is_transient() && shared.stop.is_cancelled() => {
                // Stopping: left for the next start.
                return Ok(());
            }
            Err(e) => {
                let error = chain(&e);
                tracing::error!(error = %error, attempts = tries, "handler cannot process event; giving up");
                return give_up(shared, delivery, &error).await;
            }
        }
    }
}

/// Records what the handler says its giving up means (the step's
/// `*.failed`) with the handled marker, then acks. Nothing is dropped
/// silently: if that cannot be recorded, the event stays unsettled.
async fn give_up(
    shared: &Lanes,
    delivery: crate::bus::Delivery,
    error: &str,
) -> Result<(), BusError> {
    let event = &delivery.event;
    let name = shared.handler.name();
    let results = match shared.handler.gave_up(event, error).await {
        Ok(results) => results,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "could not say why the event failed; will retry");
            return delivery.retry().await;
        }
    };
    let recorded: usize = results.iter().map(|r| r.events.len()).sum();
    tracing::error!(
        event = %event.id,
        recorded,
        error,
        "gave up on event; its step's failure is recorded"
    );
    shared.store.append_handled(name, event.id, results).await?;
    delivery.ack().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach the store: {0}")]
    struct Unreachable(#[source] Refused);

    #[test]
    fn the_chain_keeps_every_cause_once() {
        let e = HandlerError::transient_from("package sha256:ab", Unreachable(Refused));
        assert_eq!(e.to_string(), "package sha256:ab");
        assert_eq!(
            chain(&e),
            "package sha256:ab: cannot reach the store: connection refused"
        );
        assert!(e.is_transient());
        let p = HandlerError::permanent("no run id");
        assert_eq!(chain(&p), "no run id");
        assert!(!p.is_transient());
    }
}
