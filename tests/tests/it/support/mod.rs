//! Shared helpers for the event-log, bus and relay tests (`mod support;`).
//! Not every test file uses every helper.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context};
use gantry_proto::events::{RunCancelled, RunFailed, RunSucceeded, RunSuperseded};
use gantry_proto::{CloudEvent, EventName};
use gantry_store::EventStore;
use tempfile::TempDir;

/// The bound on every single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing with `what` when it takes longer than `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event of `name` (one of the four terminal names, which have the simplest
/// payloads) in `pipeline`, for run `run`.
pub fn event(name: EventName, pipeline: &str, run: &str) -> CloudEvent {
    let run_id = Some(run);
    match name {
        EventName::RunCancelled => CloudEvent::new(
            "test",
            pipeline,
            run_id,
            &RunCancelled {
                user: "u".into(),
                reason: None,
            },
        ),
        EventName::RunFailed => CloudEvent::new(
            "test",
            pipeline,
            run_id,
            &RunFailed {
                stage: None,
                reason: "r".into(),
            },
        ),
        EventName::RunSucceeded => CloudEvent::new("test", pipeline, run_id, &RunSucceeded {}),
        EventName::RunSuperseded => CloudEvent::new(
            "test",
            pipeline,
            run_id,
            &RunSuperseded {
                stage: "s".into(),
                by_run: "other".into(),
            },
        ),
        other => panic!("support::event does not build {other} events"),
    }
}

/// A `run.cancelled` event in pipeline `pipeline` for run `run`.
pub fn cancelled(run: &str) -> CloudEvent {
    event(EventName::RunCancelled, "pipeline", run)
}

/// A migrated store on a fresh SQLite file in a temporary directory.
pub async fn sqlite_store() -> anyhow::Result<(EventStore, TempDir)> {
    let dir = tempfile::Builder::new().prefix("gantry-store-").tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("gantry.db").display());
    let store = EventStore::connect(&url)
        .await
        .context("connecting SQLite store")?;
    store.migrate().await?;
    Ok((store, dir))
}

/// A migrated store on `url` (migrations are idempotent).
pub async fn store_at(url: &str) -> anyhow::Result<EventStore> {
    let store = EventStore::connect(url)
        .await
        .with_context(|| format!("connecting store at {url}"))?;
    store.migrate().await?;
    Ok(store)
}
