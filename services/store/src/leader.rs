//! One leader among processes for work that must not run twice at once
//! (the relay, the notifier): a Postgres session advisory lock, held as long
//! as its connection lives, so a dead leader's lock goes with it and
//! another candidate takes over. SQLite means one process: no election.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Backend, EventStore};
use crate::StoreError;

/// Leading: `Some(conn)` holds the lock on `conn` (Postgres; keep it open,
/// and read on it so a dead lock connection ends the leadership), `None`
/// needs no lock (SQLite).
pub type Lead = Option<sqlx::AnyConnection>;

/// Waits to lead `name`; `Ok(None)` when `shutdown` came first.
pub async fn elect(
    store: &EventStore,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Lead>, StoreError> {
    if store.backend() == Backend::Sqlite {
        return Ok(Some(None));
    }
    let key = lock_key(name);
    loop {
        let mut conn = store.pool().acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            // The lock lives as long as this connection: never return it
            // to the pool, where another task could unlock it.
            return Ok(Some(Some(conn.detach())));
        }
        drop(conn);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Whether a leader's lock connection still answers (Postgres); always
/// true without a lock.
pub async fn still_leading(lead: &mut Lead) -> bool {
    match lead {
        Some(conn) => sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok(),
        None => true,
    }
}

fn lock_key(name: &str) -> i64 {
    // FNV-1a: stable across processes and releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}
