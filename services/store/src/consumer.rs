//! Running an event handler: subscribe, handle, record the results and the
//! fact of handling in one transaction, then ack.
//!
//! A handler's effect happens once per (event id, handler) even when the bus
//! delivers an event twice or the process dies mid-way: a redelivered event
//! whose handling is already recorded is acked without calling the handler.

use std::sync::Arc;

use async_trait::async_trait;
use gantry_proto::{CloudEvent, EventName};
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
    /// Retrying will not help; the event is acked and the error logged. A
    /// handler that can say why in the log should append a `*.failed` event
    /// instead of returning this.
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
    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError>;
}

/// Feeds `handler` from `bus` until `shutdown`; the event in hand is finished
/// first, so a graceful stop loses nothing and leaves nothing half-done.
pub async fn run(
    store: EventStore,
    bus: Arc<dyn EventBus>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let name = handler.name();
    let mut sub = bus.subscribe(name, handler.events()).await?;
    tracing::info!(handler = name, bus = bus.kind(), "consumer started");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = sub.next() => d?,
        };
        let Some(delivery) = delivery else { break };
        let span = tracing::info_span!(
            "handle",
            handler = name,
            event = %delivery.event.id,
            ty = %delivery.event.ty,
            attempt = delivery.attempt
        );
        handle_one(&store, handler.as_ref(), delivery)
            .instrument(span)
            .await?;
    }
    tracing::info!(handler = name, "consumer stopped");
    Ok(())
}

async fn handle_one(
    store: &EventStore,
    handler: &dyn Handler,
    delivery: crate::bus::Delivery,
) -> Result<(), BusError> {
    let name = handler.name();
    let event = &delivery.event;
    if store.is_handled(name, event.id).await? {
        tracing::debug!("already handled; acking the redelivery");
        return delivery.ack().await;
    }
    // Long handlers (a checkout, a push, a readiness wait) keep the event
    // theirs by reporting progress; a handler that died stops doing so.
    let outcome = {
        let work = handler.handle(event);
        tokio::pin!(work);
        let mut ticker = tokio::time::interval(crate::bus::PROGRESS_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                done = &mut work => break done,
                _ = ticker.tick() => {
                    if let Err(e) = delivery.in_progress().await {
                        tracing::debug!(error = %e, "could not report progress");
                    }
                }
            }
        }
    };
    match outcome {
        Ok(results) => match store.append_handled(name, event.id, results).await {
            Ok(_) => delivery.ack().await,
            Err(e) => {
                tracing::warn!(error = %e, "could not record results; will retry");
                delivery.retry().await
            }
        },
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %chain(&e), "handler failed; will retry");
            delivery.retry().await
        }
        Err(e) => {
            tracing::error!(error = %chain(&e), "handler cannot process event; skipping it");
            store.append_handled(name, event.id, vec![]).await?;
            delivery.ack().await
        }
    }
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
