//! Event delivery to consumers: one trait, two implementations.
//!
//! - [`SqlBus`] (embedded): each consumer tails the SQL log from its own
//!   checkpoint, woken in-process the moment an append commits.
//! - [`NatsBus`] (distributed): the [`relay`](crate::relay) publishes the log
//!   to JetStream; each consumer is a durable pull consumer filtered by subject,
//!   with explicit acks and bounded, backed-off redelivery.
//!
//! Both deliver at least once, in log order per consumer; handlers make
//! effects idempotent with [`EventStore::append_handled`](crate::EventStore::append_handled).

pub mod connect;
mod nats;
mod sql;

use std::time::Duration;

use async_trait::async_trait;
use gantry_proto::{CloudEvent, EventName};

pub use connect::NatsConnection;
pub use nats::{NatsBus, NatsSettings, StreamLimits};
pub use sql::SqlBus;

/// How often a consumer still working on an event tells the bus so.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How many times the consumer runner tries an event before it gives up on
/// it and records why (`consumer::Handler::gave_up`).
pub const MAX_DELIVER: u32 = 8;

/// The delay before redelivering an event whose handling failed `attempt` times.
pub fn redelivery_backoff(attempt: u32) -> Duration {
    let ms = 200u64.saturating_mul(1 << attempt.min(8));
    Duration::from_millis(ms.min(30_000))
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("message on `{subject}` is not a Gantry CloudEvent: {message}")]
    Malformed { subject: String, message: String },
}

impl BusError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        BusError::Nats(e.to_string())
    }
}

/// One event offered to a consumer. Settle it with [`Delivery::ack`] once its
/// effects are recorded, or [`Delivery::retry`] to have it offered again later.
pub struct Delivery {
    pub event: CloudEvent,
    /// 1 on first delivery.
    pub attempt: u32,
    pub(crate) settle: Settle,
}

pub(crate) enum Settle {
    Sql(Box<sql::SqlAck>),
    Nats(Box<async_nats::jetstream::Message>),
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event.id)
            .field("type", &self.event.ty)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    /// The event's log position.
    pub fn position(&self) -> i64 {
        self.event.sequence.unwrap_or_default()
    }

    /// Done: do not deliver this event to this consumer again.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.settle {
            Settle::Sql(ack) => ack.ack().await,
            // A plain ack, not a confirmed double ack: an ack lost or late
            // (after `ack_wait`) means a redelivery, which the consumer runner
            // recognises as handled and acks again without side effects. A
            // round trip per event would cap a consumer at a few thousand
            // events per second.
            Settle::Nats(msg) => msg.ack().await.map_err(BusError::nats),
        }
    }

    /// Still working on it: on NATS, resets the redelivery timer. A no-op
    /// for the SQL log, which never redelivers behind a consumer's back.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        match &self.settle {
            Settle::Sql(_) => Ok(()),
            Settle::Nats(msg) => msg
                .ack_with(async_nats::jetstream::AckKind::Progress)
                .await
                .map_err(BusError::nats),
        }
    }

    /// Failed for now: offer it again after a backoff (the consumer runner
    /// decides when to stop: the bus never drops an event by itself).
    pub async fn retry(self) -> Result<(), BusError> {
        let delay = redelivery_backoff(self.attempt);
        match self.settle {
            Settle::Sql(ack) => ack.retry(delay).await,
            Settle::Nats(msg) => msg
                .ack_with(async_nats::jetstream::AckKind::Nak(Some(delay)))
                .await
                .map_err(BusError::nats),
        }
    }
}

/// A durable subscription: where it got to survives restarts.
#[async_trait]
pub trait Subscription: Send {
    /// The next event, waiting as long as it takes. `None` when the bus closed.
    async fn next(&mut self) -> Result<Option<Delivery>, BusError>;
}

/// Where consumers get events from.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Opens (or resumes) the durable consumer `consumer` for these event names.
    async fn subscribe(
        &self,
        consumer: &str,
        names: &[EventName],
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// Whether the bus can deliver right now (for `/readyz`).
    async fn ready(&self) -> Result<(), BusError>;

    /// `sql` or `nats`.
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(redelivery_backoff(1) < redelivery_backoff(2));
        assert_eq!(redelivery_backoff(30), Duration::from_secs(30));
    }
}
