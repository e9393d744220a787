//! Embedded delivery: consumers tail the SQL log from their own checkpoints.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_proto::EventName;
use sqlx::Row;

use super::{BusError, Delivery, EventBus, Settle, Subscription};
use crate::store::{EventStore, RecordedEvent, Wakeups};

const PAGE: i64 = 256;

/// The embedded [`EventBus`]: no broker, the log itself is the queue.
#[derive(Debug, Clone)]
pub struct SqlBus {
    store: EventStore,
}

impl SqlBus {
    pub fn new(store: EventStore) -> Self {
        Self { store }
    }
}

#[async_trait]
impl EventBus for SqlBus {
    async fn subscribe(
        &self,
        consumer: &str,
        names: &[EventName],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let checkpoint = checkpoint_name(consumer);
        let cursor = self.store.delivery_start(&checkpoint).await?;
        let types: Vec<String> = names.iter().map(|n| n.type_name()).collect();
        let placeholders: Vec<String> = (0..types.len()).map(|i| format!("${}", i + 3)).collect();
        let query = format!(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE position > $1 AND event_type IN ({}) ORDER BY position LIMIT $2",
            placeholders.join(", ")
        );
        Ok(Box::new(SqlSubscription {
            store: self.store.clone(),
            wake: self.store.wakeups(),
            checkpoint,
            query,
            types,
            cursor,
            scanned: cursor,
            buffer: VecDeque::new(),
            redo: Arc::new(Mutex::new(VecDeque::new())),
            redo_added: Arc::new(tokio::sync::Notify::new()),
            settled: Arc::new(tokio::sync::Mutex::new(Settled {
                open: BTreeSet::new(),
                handed_out: cursor,
                saved: cursor,
            })),
        }))
    }

    async fn ready(&self) -> Result<(), BusError> {
        Ok(self.store.ping().await?)
    }

    fn kind(&self) -> &'static str {
        "sql"
    }
}

fn checkpoint_name(consumer: &str) -> String {
    format!("consumer:{consumer}")
}

struct Redo {
    event: RecordedEvent,
    attempt: u32,
    delay: Duration,
}

struct SqlSubscription {
    store: EventStore,
    wake: Wakeups,
    checkpoint: String,
    query: String,
    types: Vec<String>,
    /// The position of the last event handed out.
    cursor: i64,
    /// How far the log has been read (matching or not).
    scanned: i64,
    buffer: VecDeque<RecordedEvent>,
    /// Events the consumer asked to see again (several when lanes of
    /// different pipelines ask at once); they come before the ones after
    /// them, so a consumer handling one event at a time sees the log in order.
    redo: Arc<Mutex<VecDeque<Redo>>>,
    redo_added: Arc<tokio::sync::Notify>,
    /// Which handed-out events are not settled yet: the checkpoint moves
    /// only past settled ones, as consumers settle events of different
    /// pipelines out of log order.
    settled: Arc<tokio::sync::Mutex<Settled>>,
}

/// The consumer's checkpoint as events are settled out of order.
#[derive(Debug)]
struct Settled {
    /// Positions handed out and not acked.
    open: BTreeSet<i64>,
    /// The last position handed out.
    handed_out: i64,
    /// The checkpoint written.
    saved: i64,
}

impl Settled {
    /// The position every event up to which is settled.
    fn watermark(&self) -> i64 {
        match self.open.first() {
            Some(first) => first - 1,
            None => self.handed_out,
        }
    }
}

impl SqlSubscription {
    async fn fill(&mut self) -> Result<(), BusError> {
        // Read the head *before* querying: every position up to it has
        // committed, so the query sees it. Read after, it could include an
        // event that committed after the query's snapshot, which would then
        // be marked scanned without ever being delivered.
        let head_before = self.wake.head();
        let mut q = sqlx::query(&self.query).bind(self.scanned).bind(PAGE);
        for t in &self.types {
            q = q.bind(t.clone());
        }
        let rows = q
            .fetch_all(self.store.pool())
            .await
            .map_err(crate::StoreError::from)?;
        for row in &rows {
            let position: i64 = row.try_get(0).map_err(crate::StoreError::from)?;
            self.scanned = self.scanned.max(position);
        }
        self.buffer.extend(crate::store::decode_rows(&rows)?);
        if (rows.len() as i64) < PAGE {
            // Everything up to the head we knew of before the query is scanned.
            self.scanned = self.scanned.max(head_before);
        }
        Ok(())
    }

    async fn deliver(&mut self, event: RecordedEvent, attempt: u32) -> Delivery {
        self.cursor = event.position;
        {
            let mut settled = self.settled.lock().await;
            settled.open.insert(event.position);
            settled.handed_out = settled.handed_out.max(event.position);
        }
        Delivery {
            attempt,
            settle: Settle::Sql(Box::new(SqlAck {
                store: self.store.clone(),
                checkpoint: self.checkpoint.clone(),
                redo: self.redo.clone(),
                redo_added: self.redo_added.clone(),
                settled: self.settled.clone(),
                event: event.clone(),
                attempt,
            })),
            event: event.event,
        }
    }
}

#[async_trait]
impl Subscription for SqlSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            let redo = self.redo.lock().map(|mut r| r.pop_front()).unwrap_or(None);
            if let Some(redo) = redo {
                tokio::time::sleep(redo.delay).await;
                return Ok(Some(self.deliver(redo.event, redo.attempt + 1).await));
            }
            if let Some(event) = self.buffer.pop_front() {
                return Ok(Some(self.deliver(event, 1).await));
            }
            let seen = self.scanned;
            self.fill().await?;
            if self.buffer.is_empty() {
                // A retry asked for while waiting (by a consumer handling
                // events concurrently) wakes us as a new event would.
                let redo_added = self.redo_added.clone();
                tokio::select! {
                    _ = self.wake.wait_beyond(seen.max(self.scanned)) => {}
                    _ = redo_added.notified() => {}
                }
            }
        }
    }
}

/// Settles a delivery from the SQL log.
pub(crate) struct SqlAck {
    store: EventStore,
    checkpoint: String,
    redo: Arc<Mutex<VecDeque<Redo>>>,
    redo_added: Arc<tokio::sync::Notify>,
    settled: Arc<tokio::sync::Mutex<Settled>>,
    event: RecordedEvent,
    attempt: u32,
}

impl SqlAck {
    pub(crate) async fn ack(self) -> Result<(), BusError> {
        // Held while writing, so checkpoints are written in order.
        let mut settled = self.settled.lock().await;
        settled.open.remove(&self.event.position);
        let watermark = settled.watermark();
        if watermark > settled.saved {
            self.store
                .save_checkpoint(&self.checkpoint, watermark)
                .await?;
            settled.saved = watermark;
        }
        Ok(())
    }

    /// Offers the event again after `delay`. Never gives up by itself: the
    /// consumer runner decides when to (and records why).
    pub(crate) async fn retry(self, delay: Duration) -> Result<(), BusError> {
        if let Ok(mut redo) = self.redo.lock() {
            redo.push_back(Redo {
                event: self.event,
                attempt: self.attempt,
                delay,
            });
        }
        self.redo_added.notify_one();
        Ok(())
    }
}
