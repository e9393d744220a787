//! The notifier's outbox (DESIGN.md 1.9): one row per (target, event) still
//! to deliver, and each target's delivery record. Not a read model: it is
//! the notifier's own state, kept across restarts, and `projections
//! rebuild` leaves it alone. Times are RFC 3339 UTC strings with
//! microseconds (ordered as strings).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::{EventStore, StoreError};

/// A delivery still owed to a target: the oldest one is sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub target: String,
    pub position: i64,
    pub pipeline: String,
    pub event_id: Uuid,
    /// When the first attempt failed; `None` before any attempt.
    pub first_failure: Option<DateTime<Utc>>,
    pub attempts: i64,
    pub next_at: DateTime<Utc>,
}

/// A target's record, as `GET /api/v1/notifications` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetStatus {
    pub pipeline: String,
    /// Stable id of the target (a hash of pipeline, URL reference and
    /// format): the URL itself may be a secret and is never shown.
    pub target: String,
    /// The URL's host only.
    pub host: String,
    pub format: String,
    pub pending: i64,
    pub delivered: i64,
    pub failed_attempts: i64,
    pub given_up: i64,
    pub last_error: Option<String>,
    pub last_failure_at: Option<String>,
    pub last_delivery_at: Option<String>,
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(s: &str, position: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            position,
            message: format!("notify_outbox time `{s}`: {e}"),
        })
}

impl EventStore {
    /// Records `target` (of `pipeline`, at `host`, as `format`), so its
    /// record exists before anything is owed to it.
    pub async fn notify_target(
        &self,
        target: &str,
        host: &str,
        format: &str,
        pipeline: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO notify_targets (target, pipeline, host, format) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (target) DO UPDATE SET host = $3, format = $4",
        )
        .bind(target)
        .bind(pipeline)
        .bind(host)
        .bind(format)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records that `target` (see [`EventStore::notify_target`]) is owed
    /// the event at `position`. Idempotent: a notifier that enqueues again
    /// after a crash adds nothing.
    pub async fn notify_enqueue(
        &self,
        target: &str,
        pipeline: &str,
        position: i64,
        event_id: Uuid,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO notify_outbox (target, position, pipeline, event_id, attempts, next_at) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (target, position) DO NOTHING",
        )
        .bind(target)
        .bind(position)
        .bind(pipeline)
        .bind(event_id.to_string())
        .bind(text(Utc::now()))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The oldest delivery owed to `target`.
    pub async fn notify_oldest(&self, target: &str) -> Result<Option<Pending>, StoreError> {
        let row = sqlx::query(
            "SELECT position, pipeline, event_id, first_failure, attempts, next_at \
             FROM notify_outbox WHERE target = $1 ORDER BY position LIMIT 1",
        )
        .bind(target)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let position: i64 = row.try_get(0)?;
        let event_id: String = row.try_get(2)?;
        let first_failure: Option<String> = row.try_get(3)?;
        let next_at: String = row.try_get(5)?;
        Ok(Some(Pending {
            target: target.to_owned(),
            position,
            pipeline: row.try_get(1)?,
            event_id: event_id.parse().map_err(|e| StoreError::Corrupt {
                position,
                message: format!("notify_outbox event id `{event_id}`: {e}"),
            })?,
            first_failure: first_failure
                .as_deref()
                .map(|t| parse_time(t, position))
                .transpose()?,
            attempts: row.try_get(4)?,
            next_at: parse_time(&next_at, position)?,
        }))
    }

    /// The targets that are owed something (a notifier resumes them).
    pub async fn notify_pending_targets(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT target FROM notify_outbox ORDER BY target")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// `pending` arrived.
    pub async fn notify_delivered(&self, pending: &Pending) -> Result<(), StoreError> {
        self.notify_settle(
            pending,
            "delivered = delivered + 1, last_delivery_at = $2",
            None,
        )
        .await
    }

    /// `pending` is abandoned after its retries (or its target is gone),
    /// with the last error.
    pub async fn notify_give_up(&self, pending: &Pending, error: &str) -> Result<(), StoreError> {
        self.notify_settle(
            pending,
            "given_up = given_up + 1, last_error = $3, last_failure_at = $2",
            Some(error),
        )
        .await
    }

    async fn notify_settle(
        &self,
        pending: &Pending,
        update: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM notify_outbox WHERE target = $1 AND position = $2")
            .bind(&pending.target)
            .bind(pending.position)
            .execute(&mut *tx)
            .await?;
        let sql = format!("UPDATE notify_targets SET {update} WHERE target = $1");
        let mut q = sqlx::query(&sql)
            .bind(&pending.target)
            .bind(text(Utc::now()));
        if let Some(error) = error {
            q = q.bind(error);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An attempt at `pending` failed with `error`; the next one is due at `next_at`.
    pub async fn notify_retry(
        &self,
        pending: &Pending,
        error: &str,
        next_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let first = text(pending.first_failure.unwrap_or(now));
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE notify_outbox SET attempts = attempts + 1, first_failure = $3, next_at = $4, \
             last_error = $5 WHERE target = $1 AND position = $2",
        )
        .bind(&pending.target)
        .bind(pending.position)
        .bind(first)
        .bind(text(next_at))
        .bind(error)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE notify_targets SET failed_attempts = failed_attempts + 1, last_error = $2, \
             last_failure_at = $3 WHERE target = $1",
        )
        .bind(&pending.target)
        .bind(error)
        .bind(text(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every target's record, by pipeline and target.
    pub async fn notify_status(&self) -> Result<Vec<TargetStatus>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.pipeline, t.target, t.host, t.format, \
             (SELECT COUNT(*) FROM notify_outbox o WHERE o.target = t.target), \
             t.delivered, t.failed_attempts, t.given_up, t.last_error, t.last_failure_at, \
             t.last_delivery_at FROM notify_targets t ORDER BY t.pipeline, t.target",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TargetStatus {
                    pipeline: r.try_get(0)?,
                    target: r.try_get(1)?,
                    host: r.try_get(2)?,
                    format: r.try_get(3)?,
                    pending: r.try_get(4)?,
                    delivered: r.try_get(5)?,
                    failed_attempts: r.try_get(6)?,
                    given_up: r.try_get(7)?,
                    last_error: r.try_get(8)?,
                    last_failure_at: r.try_get(9)?,
                    last_delivery_at: r.try_get(10)?,
                })
            })
            .collect()
    }
}
