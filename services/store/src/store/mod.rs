//! The event store: Gantry's log of record, in SQLite (embedded) or Postgres.
//!
//! One code path serves both through sqlx's `Any` driver; the few places the
//! backends differ (how appends are serialized, how other processes learn of
//! new events) are explicit below.
//!
//! Guarantees:
//! - **Optimistic concurrency** per stream: an append names the version it
//!   expects, and `UNIQUE(stream_id, stream_version)` backs the check.
//! - **Idempotent on event id**: appending an event that is already recorded
//!   is a no-op that reports the original positions.
//! - **No skipped positions**: positions are assigned and committed strictly
//!   in order (SQLite has one writer; Postgres appends hold a transaction-scoped
//!   advisory lock until commit), so a reader that has seen position N can never
//!   later find a committed event below N.

mod wake;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use gantry_proto::CloudEvent;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use wake::Wakeups;

/// Key of the advisory lock that serializes appends on Postgres.
const APPEND_LOCK_KEY: i64 = 0x6761_6e74_7279; // "gantry"
/// Postgres NOTIFY channel that carries the newest position to other processes.
pub const NOTIFY_CHANNEL: &str = "gantry_events";
/// Rows per multi-row INSERT, well under both backends' bind-parameter limits.
const INSERT_CHUNK: usize = 200;
/// Bind parameters per lookup query (well under both backends' limits).
const LOOKUP_BINDS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream `{stream_id}` is at version {actual}, but the append expected {expected}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: i64,
    },
    #[error("database URL `{0}` is not supported: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("event {event_id} is already recorded in stream `{recorded}`, not `{requested}`")]
    IdReused {
        event_id: Uuid,
        recorded: String,
        requested: String,
    },
    #[error("stored event at position {position} is unreadable: {message}")]
    Corrupt { position: i64, message: String },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("append not committed: {0}")]
    CommitFailed(String),
    #[error("the event store's writer has stopped")]
    WriterGone,
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// What an append expects the stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (number of events).
    Exact(i64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Events to append to one stream.
#[derive(Debug, Clone)]
pub struct NewEvents {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<CloudEvent>,
}

impl NewEvents {
    pub fn new(
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<CloudEvent>,
    ) -> Self {
        Self {
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Positions of the events, in the order given.
    pub positions: Vec<i64>,
    /// True when every event was already recorded and nothing was written.
    pub duplicate: bool,
}

impl Appended {
    pub fn last_position(&self) -> Option<i64> {
        self.positions.iter().copied().max()
    }
}

/// An event as recorded in the log; `event.sequence` equals `position`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: CloudEvent,
}

/// The latest event of type `P` about `stage` among `events` (a run's, in
/// log order): the stage's current `stage.started`, its `package.built`, ...
pub fn latest_for_stage<P: gantry_proto::EventPayload>(
    events: &[RecordedEvent],
    stage: &str,
) -> Option<P> {
    events
        .iter()
        .rev()
        .filter(|e| e.event.name() == Some(P::NAME) && e.event.stage() == Some(stage))
        .find_map(|e| e.event.decode::<P>().ok())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connections per process when `GANTRY_DATABASE_POOL` is unset: SQLite has
/// one writer anyway; 16 leaves room for six Postgres-backed pods under
/// Postgres' default of 100 connections.
pub fn default_pool_size(backend: Backend) -> u32 {
    match backend {
        Backend::Sqlite => 4,
        Backend::Postgres => 16,
    }
}

/// The fewest connections a process works with: the writer's, a reader's,
/// and the relay leader's lock, which it holds for as long as it leads.
pub const MIN_POOL: u32 = 3;

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// The process's single writer ([`writer_loop`]): in-process appends never
    /// race for SQLite's file lock or Postgres's append lock, and concurrent
    /// ones share a commit.
    writer: mpsc::Sender<WriteRequest>,
    /// The newest position this process knows of (its own appends, plus
    /// NOTIFYs from other processes on Postgres).
    head: watch::Sender<i64>,
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl EventStore {
    /// Connects to `sqlite://path` (created if missing) or `postgres://...`
    /// with the backend's default pool size ([`default_pool_size`]).
    ///
    /// Postgres over TLS takes libpq's parameters in the URL:
    /// `sslmode=require|verify-ca|verify-full`, `sslrootcert=` (the CA),
    /// `sslcert=`/`sslkey=` (a client certificate).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, None).await
    }

    /// [`EventStore::connect`] with at most `pool` connections
    /// (`GANTRY_DATABASE_POOL`); `None` for the default. One more
    /// connection per process listens for new events on Postgres, and the
    /// relay's leader holds one from the pool.
    pub async fn connect_with_pool(url: &str, pool: Option<u32>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let mut connect_url = url.to_owned();
        if backend == Backend::Sqlite && !connect_url.contains("mode=") {
            connect_url.push_str(if connect_url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let options = AnyConnectOptions::from_str(&connect_url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(
                pool.unwrap_or_else(|| default_pool_size(backend))
                    .max(MIN_POOL),
            )
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection given back to the pool and drops
            // it if the ping fails; a second ping on taking it out again
            // would cost every query a round trip more.
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Postgres {
                        // Every query of the log is meant to be an index
                        // lookup (by event id, stream, position, run or
                        // pipeline). A plan Postgres makes while the table
                        // is small, and caches for a prepared statement,
                        // would otherwise read the whole log on every
                        // append once it is large (issue 17). Turning
                        // sequential scans off makes them a last resort, so
                        // an index is used from the first event on, whatever
                        // the statistics say; a query with no usable index
                        // still runs.
                        sqlx::query("SET enable_seqscan = off")
                            .execute(&mut *conn)
                            .await?;
                    }
                    if backend == Backend::Sqlite {
                        // WAL lets readers (SSE, projections, other processes)
                        // work while one writer appends.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let (head, _) = watch::channel(0);
        let (writer, requests) = mpsc::channel(1024);
        tokio::spawn(writer_loop(pool.clone(), backend, requests));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                url: url.to_owned(),
                writer,
                head,
                listener: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.inner.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.inner.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.inner.pool)
                    .await?
            }
        }
        let head = self.head().await?;
        self.inner.head.send_if_modified(|h| bump(h, head));
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Checks the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Appends events to one stream.
    pub async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<CloudEvent>,
    ) -> Result<Appended, StoreError> {
        self.append_many(vec![NewEvents::new(stream_id, expected, events)])
            .await
    }

    /// Appends to several streams atomically: all or nothing.
    pub async fn append_many(&self, batch: Vec<NewEvents>) -> Result<Appended, StoreError> {
        self.write(None, batch).await.map(|(a, _)| a)
    }

    /// Records that `handler` has dealt with `cause` and appends what it
    /// produced, atomically. Returns `None` (and writes nothing) when the
    /// handler had already dealt with that event.
    pub async fn append_handled(
        &self,
        handler: &str,
        cause: Uuid,
        batch: Vec<NewEvents>,
    ) -> Result<Option<Appended>, StoreError> {
        self.write(Some((handler, cause)), batch)
            .await
            .map(|(a, fresh)| fresh.then_some(a))
    }

    /// Whether `handler` has already dealt with the event.
    pub async fn is_handled(&self, handler: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM handled WHERE event_id = $1 AND handler = $2")
            .bind(event_id.to_string())
            .bind(handler)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn write(
        &self,
        handled: Option<(&str, Uuid)>,
        mut batch: Vec<NewEvents>,
    ) -> Result<(Appended, bool), StoreError> {
        // The log is read by dashboards and exported to auditors: no secret
        // this process knows goes into it, whichever code put it in an event.
        let masker = gantry_pipeline::mask::process();
        if !masker.is_empty() {
            for event in batch.iter_mut().flat_map(|b| b.events.iter_mut()) {
                if masker.mask_json(&mut event.data) {
                    tracing::warn!(event = %event.id, ty = %event.ty, "a secret was masked in an event's data");
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            handled: handled.map(|(h, id)| (h.to_owned(), id)),
            batch,
            reply,
        };
        self.inner
            .writer
            .send(request)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        let result = answer.await.map_err(|_| StoreError::WriterGone)?;
        if let Ok((appended, _)) = &result {
            if let Some(last) = appended.last_position() {
                self.inner.head.send_if_modified(|h| bump(h, last));
            }
        }
        result
    }

    /// Up to `limit` events after `position`, in position order.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        Self::read_all_on(&mut conn, after, limit).await
    }

    /// [`EventStore::read_all`] on a connection the caller holds (the
    /// relay reads on the connection that holds its leadership).
    pub async fn read_all_on(
        conn: &mut AnyConnection,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Every event of one stream, in order.
    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_where("stream_id = $1 ORDER BY stream_version", stream_id)
            .await
    }

    /// Every event of the streams `ids`, in position order (one query; an
    /// equality lookup per stream, so the stream index serves it).
    pub async fn read_streams(&self, ids: &[String]) -> Result<Vec<RecordedEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE stream_id IN ({}) ORDER BY position",
            params.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.inner.pool).await?;
        decode_rows(&rows)
    }

    /// Every event of one run (all its streams), in position order.
    pub async fn read_run(&self, run_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_where("run_id = $1 ORDER BY position", run_id)
            .await
    }

    /// The first event of type `P` in `run` (about `stage`, when given),
    /// through the run index: no read of the run's other events.
    pub async fn first_of_run<P: gantry_proto::EventPayload>(
        &self,
        run: &str,
        stage: Option<&str>,
    ) -> Result<Option<P>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE run_id = $1 AND event_type = $2 ORDER BY position",
        )
        .bind(run)
        .bind(P::NAME.type_name())
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(decode_rows(&rows)?
            .into_iter()
            .filter(|e| stage.is_none() || e.event.stage() == stage)
            .find_map(|e| e.event.decode::<P>().ok()))
    }

    /// Every event of one pipeline, in position order.
    pub async fn read_pipeline(&self, pipeline: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_where("pipeline = $1 ORDER BY position", pipeline)
            .await
    }

    /// Events of one pipeline after log position `after`, in position order
    /// (positions commit in order, so nothing can appear later below it).
    pub async fn read_pipeline_after(
        &self,
        pipeline: &str,
        after: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE pipeline = $1 AND position > $2 ORDER BY position",
        )
        .bind(pipeline)
        .bind(after)
        .fetch_all(&self.inner.pool)
        .await?;
        decode_rows(&rows)
    }

    /// Events matching `condition` (SQL after `WHERE`, one text parameter).
    async fn read_where(
        &self,
        condition: &'static str,
        value: &str,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events WHERE {condition}"
        ))
        .bind(value)
        .fetch_all(&self.inner.pool)
        .await?;
        decode_rows(&rows)
    }

    /// The event with this id, if recorded.
    pub async fn get(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let row = sqlx::query(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE event_id = $1",
        )
        .bind(event_id.to_string())
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(decode_row).transpose()
    }

    /// The current version (event count) of a stream; 0 when it does not exist.
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, StoreError> {
        let v: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(v)
    }

    /// The highest committed position (0 for an empty log).
    pub async fn head(&self) -> Result<i64, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(v)
    }

    /// A reader's checkpoint; 0 when it has none yet.
    pub async fn checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self.checkpoint_opt(name).await?.unwrap_or(0))
    }

    /// Every reader's checkpoint (relay, notifier, projections, embedded
    /// consumers): how far behind the head each is shows as lag.
    pub async fn checkpoints(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, position FROM checkpoints ORDER BY name")
                .fetch_all(&self.inner.pool)
                .await?,
        )
    }

    /// A reader's checkpoint, if it has one.
    pub async fn checkpoint_opt(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.inner.pool)
                .await?,
        )
    }

    /// Where a delivering reader (the relay, an embedded consumer) starts:
    /// after its checkpoint, and never before an imported history
    /// ([`crate::audit::IMPORT_FLOOR`]), which was delivered before the
    /// export.
    pub async fn delivery_start(&self, name: &str) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(position) FROM checkpoints WHERE name = $1 OR name = $2",
        )
        .bind(name)
        .bind(crate::audit::IMPORT_FLOOR)
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(v.unwrap_or(0))
    }

    /// Up to `limit` events after `position` as the log holds them:
    /// (position, stream, the event's JSON text). For the audit export,
    /// which hashes the stored JSON without decoding it.
    pub async fn read_raw(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let rows = sqlx::query_as::<_, (i64, String, String)>(
            "SELECT position, stream_id, event FROM events WHERE position > $1 \
             ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows)
    }

    /// Moves a reader's checkpoint forward (never backward).
    pub async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError> {
        save_checkpoint(&self.inner.pool, name, position).await
    }

    /// Like [`save_checkpoint`](Self::save_checkpoint), but on Postgres without
    /// waiting for the WAL flush. For readers whose replay is harmless (the
    /// relay: JetStream drops re-published ids), losing the last checkpoint in a
    /// crash costs a few duplicates dropped downstream, and saves a disk sync
    /// per batch.
    pub async fn save_checkpoint_relaxed(
        &self,
        name: &str,
        position: i64,
    ) -> Result<(), StoreError> {
        if self.inner.backend != Backend::Postgres {
            return self.save_checkpoint(name, position).await;
        }
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?;
        save_checkpoint(&mut *tx, name, position).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notifications of new positions: from this process's appends at once,
    /// and on Postgres from every other process through LISTEN/NOTIFY.
    pub fn wakeups(&self) -> Wakeups {
        if self.inner.backend == Backend::Postgres {
            self.inner.listener.get_or_init(|| {
                wake::spawn_pg_listener(self.inner.url.clone(), self.inner.head.clone())
            });
        }
        Wakeups::new(self.inner.head.subscribe())
    }

    /// Tells local waiters about a position learnt elsewhere.
    pub fn observe_head(&self, position: i64) {
        self.inner.head.send_if_modified(|h| bump(h, position));
    }
}

fn bump(head: &mut i64, position: i64) -> bool {
    if position > *head {
        *head = position;
        true
    } else {
        false
    }
}

/// One append (or handled-append) waiting for the writer.
struct WriteRequest {
    handled: Option<(String, Uuid)>,
    batch: Vec<NewEvents>,
    reply: oneshot::Sender<Result<(Appended, bool), StoreError>>,
}

/// Appends waiting at once are committed together.
const MAX_GROUP: usize = 128;

/// Groups in flight at once on Postgres. While one group commits (its
/// disk sync, its replies), the next is already formed and waiting for the
/// append lock, so the round trips of two groups overlap instead of adding
/// up. The next group asks for the lock only once the one before holds it:
/// they take it, and so commit, in the order they were formed.
const IN_FLIGHT: usize = 2;

/// The one writer of this process: takes every append waiting at the moment
/// and commits them in one transaction, each request decided on its own so
/// that a conflict fails only that request. Positions commit in order (the
/// append lock), but concurrent appends share one disk sync instead of
/// queueing for one each.
async fn writer_loop(pool: AnyPool, backend: Backend, mut rx: mpsc::Receiver<WriteRequest>) {
    // SQLite has one write lock and a busy handler that polls for it: a
    // second transaction waiting on it would only add sleeps.
    let slots = Arc::new(tokio::sync::Semaphore::new(match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => IN_FLIGHT,
    }));
    let connections = Connections::default();
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Appends that arrived while waiting for a slot join this group.
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (locked, lock_taken) = oneshot::channel();
        let (pool, connections) = (pool.clone(), connections.clone());
        tokio::spawn(async move {
            commit_and_reply(&pool, &connections, backend, group, locked).await;
            drop(slot);
        });
        // Sent once the group holds the append lock, or dropped when it
        // failed before: either way the next group may ask for it now.
        let _ = lock_taken.await;
    }
}

/// The writer's connections, kept between groups: taking one from the pool
/// and giving it back costs a round trip each (sqlx pings a connection when
/// it is returned), paid for every group otherwise. One that failed is not
/// kept.
#[derive(Clone, Default)]
struct Connections(Arc<std::sync::Mutex<Vec<sqlx::pool::PoolConnection<sqlx::Any>>>>);

impl Connections {
    async fn take(
        &self,
        pool: &AnyPool,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        let kept = self.0.lock().ok().and_then(|mut kept| kept.pop());
        match kept {
            Some(conn) => Ok(conn),
            None => pool.acquire().await,
        }
    }

    fn keep(&self, conn: sqlx::pool::PoolConnection<sqlx::Any>) {
        if let Ok(mut kept) = self.0.lock() {
            kept.push(conn);
        }
    }
}

/// Commits `group` and answers each of its requests.
async fn commit_and_reply(
    pool: &AnyPool,
    connections: &Connections,
    backend: Backend,
    group: Vec<WriteRequest>,
    locked: oneshot::Sender<()>,
) {
    let mut results = Vec::with_capacity(group.len());
    let outcome = commit_group(pool, connections, backend, &group, &mut results, locked).await;
    let mut results = results.into_iter();
    for request in group {
        let result = match (&outcome, results.next()) {
            (Ok(()), Some(own)) => own,
            // A request that failed on its own would have failed anyway.
            (Err(_), Some(Err(own)))
                if matches!(
                    own,
                    StoreError::Conflict { .. } | StoreError::IdReused { .. }
                ) =>
            {
                Err(own)
            }
            (Err(e), _) => Err(StoreError::CommitFailed(e.clone())),
            (Ok(()), None) => Err(StoreError::CommitFailed("request was not run".into())),
        };
        // The caller may have gone away; the append stands regardless.
        let _ = request.reply.send(result);
    }
}

/// Runs `group` in one transaction; per-request results go to `results`.
/// An `Err` means nothing of the group was written.
///
/// Every round trip to the database is paid while the append lock is held,
/// so a group takes a fixed number of them whatever its size: `BEGIN` with
/// the lock, one lookup of everything the group's requests depend on (the
/// log head, their event ids, their streams' versions, their handled
/// markers), one multi-row insert per table (the last one also notifying
/// other processes on Postgres) and the commit. Each
/// request is then decided in memory, in order, exactly as if it ran alone
/// after the ones before it; a request that fails (a version conflict, a
/// reused id) writes nothing and does not affect the others. Should the
/// database refuse the group as a whole, each request is run on its own so
/// that one bad request fails alone.
async fn commit_group(
    pool: &AnyPool,
    connections: &Connections,
    backend: Backend,
    group: &[WriteRequest],
    results: &mut Vec<Result<(Appended, bool), StoreError>>,
    locked: oneshot::Sender<()>,
) -> Result<(), String> {
    match run_group(pool, connections, backend, group, Some(locked)).await {
        Ok(own) => {
            results.extend(own);
            Ok(())
        }
        Err(_) if group.len() > 1 => {
            for request in group {
                let alone = std::slice::from_ref(request);
                match run_group(pool, connections, backend, alone, None).await {
                    Ok(own) => results.extend(own),
                    Err(e) => results.push(Err(StoreError::CommitFailed(e))),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What the log already holds that a group's requests depend on.
#[derive(Default)]
struct Known {
    /// The log's last position.
    head: i64,
    /// event id → (position, stream)
    events: HashMap<String, (i64, String)>,
    /// stream → last version
    versions: HashMap<String, i64>,
    /// (event id, handler) already handled
    handled: HashSet<(String, String)>,
}

async fn run_group(
    pool: &AnyPool,
    connections: &Connections,
    backend: Backend,
    group: &[WriteRequest],
    locked: Option<oneshot::Sender<()>>,
) -> Result<Vec<Result<(Appended, bool), StoreError>>, String> {
    let mut conn = connections.take(pool).await.map_err(|e| e.to_string())?;
    let results = run_group_on(&mut conn, backend, group, locked).await?;
    connections.keep(conn);
    Ok(results)
}

async fn run_group_on(
    conn: &mut AnyConnection,
    backend: Backend,
    group: &[WriteRequest],
    locked: Option<oneshot::Sender<()>>,
) -> Result<Vec<Result<(Appended, bool), StoreError>>, String> {
    let db = |e: sqlx::Error| e.to_string();
    let mut tx = match backend {
        // Take SQLite's write lock up front: a deferred transaction that
        // reads and then writes can deadlock with another process.
        Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
        // The append lock in the same round trip as BEGIN (a simple query
        // of two statements); the lookup that follows is a later statement,
        // so under READ COMMITTED it sees every append committed before
        // the lock was granted.
        Backend::Postgres => {
            // A generic plan for the group's statements: their shapes
            // repeat and each is an index lookup or an insert, so planning
            // them anew on every execution is wasted under the lock.
            conn.begin_with(format!(
                "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
                 SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"
            ))
            .await
        }
    }
    .map_err(db)?;
    if let Some(locked) = locked {
        let _ = locked.send(());
    }
    let mut known = lookup(&mut tx, group).await.map_err(|e| e.to_string())?;
    let head = known.head;

    let mut position = head;
    let recorded_at = now_text();
    let mut rows: Vec<NewRow> = Vec::new();
    let mut handled_rows: Vec<(String, String)> = Vec::new();
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        if let Some((handler, cause)) = &request.handled {
            if known
                .handled
                .contains(&(cause.to_string(), handler.clone()))
            {
                results.push(Ok((
                    Appended {
                        positions: vec![],
                        duplicate: true,
                    },
                    false,
                )));
                continue;
            }
        }
        match decide_append(&request.batch, &known, position, &recorded_at) {
            Ok((appended, new_rows)) => {
                for row in &new_rows {
                    known
                        .events
                        .insert(row.event_id.clone(), (row.position, row.stream_id.clone()));
                    known.versions.insert(row.stream_id.clone(), row.version);
                    position = position.max(row.position);
                }
                rows.extend(new_rows);
                if let Some((handler, cause)) = &request.handled {
                    let key = (cause.to_string(), handler.clone());
                    known.handled.insert(key.clone());
                    handled_rows.push(key);
                }
                results.push(Ok((appended, true)));
            }
            Err(e) => results.push(Err(e)),
        }
    }

    insert_handled(&mut tx, &handled_rows)
        .await
        .map_err(|e| e.to_string())?;
    // On Postgres the last insert also notifies other processes (NOTIFY is
    // delivered at commit): one round trip fewer under the lock.
    let notify = backend == Backend::Postgres;
    insert_rows(&mut tx, &rows, notify)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(db)?;
    Ok(results)
}

/// One event row to insert.
struct NewRow {
    position: i64,
    event_id: String,
    stream_id: String,
    version: i64,
    pipeline: String,
    run_id: Option<String>,
    ty: String,
    json: String,
    recorded_at: String,
}

/// One thing a group's appends depend on, as one branch of the lookup's
/// `UNION ALL`. Each is an index lookup (the primary key, event_id UNIQUE,
/// (stream_id, stream_version) UNIQUE, handled's primary key). Rows come
/// back as (kind, key, number, text).
enum Probe {
    /// The log's last position.
    Head,
    /// The positions and streams of these event ids.
    Ids(Vec<String>),
    /// A stream's last version (a scalar MAX: the index's last entry).
    Version(String),
    /// Whether (event id, handler) is already handled.
    Handled(String, String),
}

impl Probe {
    fn binds(&self) -> Vec<&str> {
        match self {
            Probe::Head => vec![],
            Probe::Ids(ids) => ids.iter().map(String::as_str).collect(),
            Probe::Version(stream) => vec![stream],
            Probe::Handled(event_id, handler) => vec![event_id, handler],
        }
    }

    /// The branch, its placeholders numbered from `first`.
    fn sql(&self, first: usize) -> String {
        match self {
            Probe::Head => "SELECT CAST('p' AS TEXT), CAST(NULL AS TEXT), \
                 (SELECT COALESCE(MAX(position), 0) FROM events), CAST(NULL AS TEXT)"
                .to_owned(),
            Probe::Ids(ids) => {
                let placeholders: Vec<String> = (first..first + ids.len())
                    .map(|i| format!("${i}"))
                    .collect();
                format!(
                    "SELECT 'e', event_id, position, stream_id FROM events WHERE event_id IN ({})",
                    placeholders.join(", ")
                )
            }
            Probe::Version(_) => format!(
                "SELECT 'v', ${first}, (SELECT COALESCE(MAX(stream_version), 0) FROM events \
                 WHERE stream_id = ${first}), NULL"
            ),
            Probe::Handled(..) => format!(
                "SELECT 'h', event_id, NULL, handler FROM handled \
                 WHERE event_id = ${first} AND handler = ${}",
                first + 1
            ),
        }
    }
}

/// Reads everything a group's appends depend on: the log head, the
/// positions of its event ids, the last version of each stream it appends
/// to, and which of its handled markers exist. One query for a group of
/// ordinary size; more only past the bind-parameter budget.
async fn lookup(conn: &mut AnyConnection, group: &[WriteRequest]) -> Result<Known, StoreError> {
    let mut ids: Vec<String> = Vec::new();
    let mut probes = vec![Probe::Head];
    for request in group {
        for item in &request.batch {
            let stream = &item.stream_id;
            if !probes
                .iter()
                .any(|p| matches!(p, Probe::Version(s) if s == stream))
            {
                probes.push(Probe::Version(stream.clone()));
            }
            ids.extend(item.events.iter().map(|e| e.id.to_string()));
        }
        if let Some((handler, cause)) = &request.handled {
            probes.push(Probe::Handled(cause.to_string(), handler.clone()));
        }
    }
    probes.extend(ids.chunks(LOOKUP_BINDS).map(|c| Probe::Ids(c.to_vec())));

    let mut known = Known::default();
    let mut batch: Vec<Probe> = Vec::new();
    let mut binds = 0;
    let mut probes = probes.into_iter().peekable();
    while let Some(probe) = probes.next() {
        binds += probe.binds().len();
        batch.push(probe);
        let full = probes
            .peek()
            .is_none_or(|next| binds + next.binds().len() > LOOKUP_BINDS);
        if full {
            run_probes(conn, &batch, &mut known).await?;
            batch.clear();
            binds = 0;
        }
    }
    Ok(known)
}

/// One `UNION ALL` query of `probes`, its rows folded into `known`.
async fn run_probes(
    conn: &mut AnyConnection,
    probes: &[Probe],
    known: &mut Known,
) -> Result<(), StoreError> {
    let mut parts = Vec::with_capacity(probes.len());
    let mut next = 1;
    for probe in probes {
        parts.push(probe.sql(next));
        next += probe.binds().len();
    }
    let sql = parts.join(" UNION ALL ");
    let mut q = sqlx::query(&sql);
    for bind in probes.iter().flat_map(Probe::binds) {
        q = q.bind(bind.to_owned());
    }
    for row in q.fetch_all(&mut *conn).await? {
        let kind: String = row.try_get(0)?;
        if kind == "p" {
            known.head = row.try_get(2)?;
            continue;
        }
        let key: String = row.try_get(1)?;
        match kind.as_str() {
            "e" => {
                known.events.insert(key, (row.try_get(2)?, row.try_get(3)?));
            }
            "v" => {
                known.versions.insert(key, row.try_get(2)?);
            }
            _ => {
                known.handled.insert((key, row.try_get(3)?));
            }
        }
    }
    Ok(())
}

/// Decides one append against what is known (the log, and the requests of
/// the group before it): its positions, or why it cannot be written.
/// Nothing is written here.
fn decide_append(
    batch: &[NewEvents],
    known: &Known,
    head: i64,
    recorded_at: &str,
) -> Result<(Appended, Vec<NewRow>), StoreError> {
    // Idempotency: events already recorded are reported, not written again.
    let mut existing = Vec::new();
    for item in batch {
        for ev in &item.events {
            match known.events.get(&ev.id.to_string()) {
                Some((position, stream)) if *stream == item.stream_id => {
                    existing.push(Some(*position))
                }
                Some((_, stream)) => {
                    return Err(StoreError::IdReused {
                        event_id: ev.id,
                        recorded: stream.clone(),
                        requested: item.stream_id.clone(),
                    })
                }
                None => existing.push(None),
            }
        }
    }
    if !existing.is_empty() && existing.iter().all(Option::is_some) {
        return Ok((
            Appended {
                positions: existing.into_iter().flatten().collect(),
                duplicate: true,
            },
            Vec::new(),
        ));
    }
    let mut position = head;
    let mut versions: HashMap<&str, i64> = HashMap::new();
    let mut positions = Vec::with_capacity(existing.len());
    let mut rows = Vec::new();
    let mut existing = existing.into_iter();
    for item in batch {
        let actual = match versions.get(item.stream_id.as_str()) {
            Some(v) => *v,
            None => known.versions.get(&item.stream_id).copied().unwrap_or(0),
        };
        let ok = match item.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        };
        if !ok {
            return Err(StoreError::Conflict {
                stream_id: item.stream_id.clone(),
                expected: item.expected,
                actual,
            });
        }
        let mut version = actual;
        for ev in &item.events {
            if let Some(Some(recorded)) = existing.next() {
                positions.push(recorded);
                continue;
            }
            position += 1;
            version += 1;
            let mut stored = ev.clone();
            stored.sequence = None;
            let json = serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt {
                position,
                message: e.to_string(),
            })?;
            rows.push(NewRow {
                position,
                event_id: ev.id.to_string(),
                stream_id: item.stream_id.clone(),
                version,
                pipeline: ev.pipeline.clone(),
                run_id: ev.runid.clone(),
                ty: ev.ty.clone(),
                json,
                recorded_at: recorded_at.to_owned(),
            });
            positions.push(position);
        }
        versions.insert(item.stream_id.as_str(), version);
    }
    Ok((
        Appended {
            positions,
            duplicate: false,
        },
        rows,
    ))
}

/// Multi-row inserts: one round trip per chunk, not per event. With
/// `notify`, the last chunk also sends the new head on [`NOTIFY_CHANNEL`]
/// (Postgres).
async fn insert_rows(
    conn: &mut AnyConnection,
    rows: &[NewRow],
    notify: bool,
) -> Result<(), StoreError> {
    let chunks = rows.chunks(INSERT_CHUNK).count();
    for (c, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let b = r * 9;
                let p: Vec<String> = (1..=9).map(|i| format!("${}", b + i)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let insert = format!(
            "INSERT INTO events (position, event_id, stream_id, stream_version, pipeline, run_id, \
             event_type, event, recorded_at) VALUES {}",
            values.join(", ")
        );
        let last = notify && c + 1 == chunks;
        let sql = if last {
            format!(
                "WITH ins AS ({insert} RETURNING position) \
                 SELECT pg_notify('{NOTIFY_CHANNEL}', CAST(MAX(position) AS TEXT)) FROM ins"
            )
        } else {
            insert
        };
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = q
                .bind(row.position)
                .bind(row.event_id.clone())
                .bind(row.stream_id.clone())
                .bind(row.version)
                .bind(row.pipeline.clone())
                .bind(row.run_id.clone())
                .bind(row.ty.clone())
                .bind(row.json.clone())
                .bind(row.recorded_at.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Records handlers' effects: `(event id, handler)` rows.
async fn insert_handled(
    conn: &mut AnyConnection,
    rows: &[(String, String)],
) -> Result<(), StoreError> {
    let now = now_text();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| format!("(${}, ${}, ${})", r * 3 + 1, r * 3 + 2, r * 3 + 3))
            .collect();
        let sql = format!(
            "INSERT INTO handled (event_id, handler, handled_at) VALUES {} \
             ON CONFLICT (event_id, handler) DO NOTHING",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (event_id, handler) in chunk {
            q = q
                .bind(event_id.clone())
                .bind(handler.clone())
                .bind(now.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(crate) async fn save_checkpoint<'e, E>(
    executor: E,
    name: &str,
    position: i64,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at \
         WHERE checkpoints.position < excluded.position",
    )
    .bind(name)
    .bind(position)
    .bind(now_text())
    .execute(executor)
    .await?;
    Ok(())
}

pub(crate) fn decode_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.iter().map(decode_row).collect()
}

fn decode_row(row: &sqlx::any::AnyRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(0)?;
    let corrupt = |message: String| StoreError::Corrupt { position, message };
    let recorded_at: String = row.try_get(3)?;
    let json: String = row.try_get(4)?;
    let mut event: CloudEvent = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
    event.sequence = Some(position);
    Ok(RecordedEvent {
        position,
        stream_id: row.try_get(1)?,
        stream_version: row.try_get(2)?,
        recorded_at: DateTime::parse_from_rfc3339(&recorded_at)
            .map_err(|e| corrupt(format!("recorded_at `{recorded_at}`: {e}")))?
            .with_timezone(&Utc),
        event,
    })
}

pub(crate) fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A database or NATS URL with its secrets replaced, for logs and errors:
/// passwords, and NATS tokens (`nats://TOKEN@host`, where the user part is
/// the secret). Works on what `url` cannot parse too (several NATS servers
/// separated by commas), so a typo never prints a password.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@` of the authority ends the user information.
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let token_scheme = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|s| scheme.trim_start().eq_ignore_ascii_case(s));
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if token_scheme => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{scheme}{masked}{}", &rest[at..])
}

#[cfg(test)]
pub(crate) mod tests;
