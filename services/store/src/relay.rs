//! The relay: publishes the SQL log to JetStream, in order, exactly as recorded.
//!
//! Every `gantry serve` process runs a relay candidate; on Postgres a session
//! advisory lock elects one publisher, and when its process dies the lock goes
//! with its connection and another candidate takes over from the shared
//! checkpoint. A relay that dies between publishing and saving its checkpoint
//! publishes those events again on restart; JetStream drops them by
//! `Nats-Msg-Id` (the event id) within the stream's duplicate window.
//!
//! The CDEvents the log's facts stand for ([`crate::cdevents`]) have a
//! relay of their own ([`Relay::cdevents`]: own checkpoint, own leader), so
//! their mapping, with its lookups in the log, never slows Gantry's events.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, NatsBus};
use crate::cdevents::CdeventsMapper;
use crate::store::EventStore;

/// Events published before their acks are awaited together.
const BATCH: i64 = 512;

/// How often the relay writes its checkpoint while it publishes.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

pub struct Relay {
    store: EventStore,
    bus: NatsBus,
    checkpoint: String,
    /// `Some`: this relay publishes the CDEvents, linking to this console URL.
    cdevents: Option<String>,
}

impl Relay {
    /// A relay of `store`'s log to `bus`: every event on its subject.
    pub fn new(store: EventStore, bus: NatsBus) -> Self {
        let s = bus.settings();
        let checkpoint = format!("relay:{}:{}", s.stream, s.prefix);
        Self {
            store,
            bus,
            checkpoint,
            cdevents: None,
        }
    }

    /// A relay of the CDEvents `store`'s log stands for, on
    /// `<prefix>.cdevents.<type>`; `public_url` is the console's, for their
    /// links. It starts at the log's beginning (or an imported log's floor):
    /// a CDEvents consumer gets the whole history, once.
    pub fn cdevents(store: EventStore, bus: NatsBus, public_url: &str) -> Self {
        let s = bus.settings();
        let checkpoint = format!("relay-cdevents:{}:{}", s.stream, s.prefix);
        Self {
            store,
            bus,
            checkpoint,
            cdevents: Some(public_url.to_owned()),
        }
    }

    /// Runs until `shutdown` is cancelled, retrying after NATS or database errors.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let leader = match self.elect(&shutdown).await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "relay election failed; retrying");
                    sleep_or_cancel(&shutdown, backoff).await;
                    continue;
                }
            };
            let what = if self.cdevents.is_some() {
                "relay publishing the log's CDEvents to NATS"
            } else {
                "relay publishing the event log to NATS"
            };
            tracing::info!(checkpoint = %self.checkpoint, "{what}");
            match self.publish_loop(leader, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "relay interrupted; resuming from its checkpoint");
                    sleep_or_cancel(&shutdown, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits to become the one publisher.
    async fn elect(&self, shutdown: &CancellationToken) -> Result<Leadership, BusError> {
        Ok(crate::leader::elect(&self.store, &self.checkpoint, shutdown).await?)
    }

    async fn publish_loop(
        &self,
        mut leader: Option<sqlx::AnyConnection>,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let mut wake = self.store.wakeups();
        let mut cdevents = self
            .cdevents
            .as_deref()
            .map(|url| CdeventsMapper::new(self.store.clone(), url));
        let mut position = self.store.delivery_start(&self.checkpoint).await?;
        let mut saved = position;
        let mut saved_at = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return self.save(saved, position).await;
            }
            // The leader reads on its lock's connection: no pool round trips,
            // and a dead lock connection (another relay may lead now) fails
            // the read and ends this leadership.
            let events = match leader.as_mut() {
                Some(conn) => EventStore::read_all_on(conn, position, BATCH).await?,
                None => self.store.read_all(position, BATCH).await?,
            };
            if events.is_empty() {
                // Caught up: write the checkpoint when the interval is over,
                // unless more events come first.
                let due = saved_at + CHECKPOINT_INTERVAL;
                tokio::select! {
                    _ = shutdown.cancelled() => return self.save(saved, position).await,
                    _ = wake.wait_beyond(position) => {}
                    _ = tokio::time::sleep_until(due), if saved != position => {
                        self.save(saved, position).await?;
                        saved = position;
                        saved_at = tokio::time::Instant::now();
                    }
                }
                continue;
            }
            // Publish the whole batch before awaiting acks: one connection
            // keeps order, and the round trips overlap.
            let mut acks = Vec::with_capacity(events.len());
            for recorded in &events {
                match cdevents.as_mut() {
                    None => acks.push(self.bus.publish(&recorded.event).await?),
                    Some(mapper) => {
                        for cd in mapper.map(recorded).await? {
                            acks.push(self.bus.publish_cdevent(&cd).await?);
                        }
                    }
                }
            }
            for ack in acks {
                ack.await.map_err(BusError::nats)?;
            }
            position = events.last().map(|e| e.position).unwrap_or(position);
            // Under load, at most one checkpoint write per interval instead
            // of one per batch: what a crash loses is published again, and
            // JetStream drops it by `Nats-Msg-Id`.
            if saved_at.elapsed() >= CHECKPOINT_INTERVAL {
                self.save(saved, position).await?;
                saved = position;
                saved_at = tokio::time::Instant::now();
            }
        }
    }

    async fn save(&self, saved: i64, position: i64) -> Result<(), BusError> {
        if position != saved {
            self.store
                .save_checkpoint_relaxed(&self.checkpoint, position)
                .await?;
        }
        Ok(())
    }
}

/// `Some(None)`: leading without a lock (SQLite); `Some(Some(conn))`: holding
/// the Postgres lock on `conn`; `None`: shut down while waiting.
type Leadership = Option<crate::leader::Lead>;

async fn sleep_or_cancel(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
