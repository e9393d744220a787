//! DORA's four keys per pipeline and stage, from the log (DESIGN.md 1.9).
//!
//! The projector folds two tables as it folds the others (same transaction,
//! same rebuild): `dora_deployments`, one row per `env.promoted`, with its
//! lead time; and `dora_failures`, one row per failed change, with when it
//! was restored. Reading the keys is then a few indexed queries, whatever
//! the length of the log.
//!
//! Definitions, as the contract gives them and where it is silent:
//! - a *deployment* is an `env.promoted` on the stage (rollback runs too);
//! - *lead time* runs from the commit's time (the git commit time envgen
//!   read) to that `env.promoted`; deployments whose commit time is unknown
//!   (rollback runs re-promote an earlier release) have none;
//! - a *failed change* is a run whose deploy, readiness, API Manager or
//!   smoke step failed on the stage after it started (the stage rolls back
//!   automatically), or a promoted release a rollback run later replaced by
//!   hand (failed when that rollback run started);
//! - *change failure rate* = failed changes / changes, where changes are
//!   the deployments plus the failed changes that never promoted;
//! - *time to restore* runs from the failure to the stage's next
//!   `env.promoted` or `stage.rolled_back`.
//!
//! The window is the last `days` days, by deployment and failure time.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::AnyConnection;

use crate::store::StoreError;
use crate::EventStore;

/// p50 and p90 in seconds, nearest rank; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: Option<i64>,
    pub p90: Option<i64>,
}

impl Quantiles {
    fn of(mut samples: Vec<i64>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return None;
            }
            // Nearest rank: the smallest value with at least q of the samples at or below it.
            let rank = (q * samples.len() as f64).ceil().max(1.0) as usize;
            samples.get(rank - 1).copied()
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
        }
    }
}

/// The four keys of one stage of one pipeline (DESIGN.md 1.9's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dora {
    pub pipeline: String,
    pub stage: String,
    pub days: u32,
    pub deployments: i64,
    pub deployment_frequency_per_day: f64,
    pub lead_time_seconds: Quantiles,
    pub change_failure_rate: f64,
    pub failed_changes: i64,
    pub time_to_restore_seconds: Quantiles,
}

/// The four keys over the `days` before `now` for every (pipeline, stage)
/// that has deployed or failed, optionally only `pipeline` and `stage`.
pub async fn keys(
    store: &EventStore,
    pipeline: Option<&str>,
    stage: Option<&str>,
    days: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Dora>, StoreError> {
    let since = stamp(now - Duration::days(i64::from(days)));
    let mut conn = store.pool().acquire().await?;
    let stages: Vec<(String, String)> = sqlx::query_as(
        "SELECT pipeline, stage FROM dora_deployments WHERE ($1 IS NULL OR pipeline = $1) \
         AND ($2 IS NULL OR stage = $2) \
         UNION SELECT pipeline, stage FROM dora_failures WHERE ($1 IS NULL OR pipeline = $1) \
         AND ($2 IS NULL OR stage = $2) ORDER BY 1, 2",
    )
    .bind(pipeline)
    .bind(stage)
    .fetch_all(&mut *conn)
    .await?;
    let mut all = Vec::with_capacity(stages.len());
    for (pipeline, stage) in stages {
        all.push(one(&mut conn, pipeline, stage, days, &since).await?);
    }
    Ok(all)
}

async fn one(
    conn: &mut AnyConnection,
    pipeline: String,
    stage: String,
    days: u32,
    since: &str,
) -> Result<Dora, StoreError> {
    let leads: Vec<(Option<i64>,)> = sqlx::query_as(
        "SELECT lead_seconds FROM dora_deployments \
         WHERE pipeline = $1 AND stage = $2 AND promoted_at >= $3",
    )
    .bind(&pipeline)
    .bind(&stage)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let failures: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT f.run_id, f.failed_at, f.restored_at, \
         CAST(CASE WHEN EXISTS (SELECT 1 FROM dora_deployments d WHERE d.run_id = f.run_id \
         AND d.stage = f.stage) THEN 1 ELSE 0 END AS BIGINT) \
         FROM dora_failures f WHERE f.pipeline = $1 AND f.stage = $2 AND f.failed_at >= $3",
    )
    .bind(&pipeline)
    .bind(&stage)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let deployments = leads.len() as i64;
    let failed_changes = failures.len() as i64;
    let never_promoted = failures.iter().filter(|f| f.3 == 0).count() as i64;
    let changes = deployments + never_promoted;
    let restores = failures
        .iter()
        .filter_map(|(_, failed, restored, _)| Some(seconds_between(failed, restored.as_deref()?)))
        .flatten()
        .collect();
    Ok(Dora {
        pipeline,
        stage,
        days,
        deployments,
        deployment_frequency_per_day: if days == 0 {
            0.0
        } else {
            deployments as f64 / f64::from(days)
        },
        lead_time_seconds: Quantiles::of(leads.into_iter().filter_map(|(l,)| l).collect()),
        change_failure_rate: if changes == 0 {
            0.0
        } else {
            failed_changes as f64 / changes as f64
        },
        failed_changes,
        time_to_restore_seconds: Quantiles::of(restores),
    })
}

/// The projection's time format (RFC 3339, UTC, microseconds): ordered as
/// strings, in SQLite and Postgres alike.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn seconds_between(from: &str, to: &str) -> Option<i64> {
    let from = DateTime::parse_from_rfc3339(from).ok()?;
    let to = DateTime::parse_from_rfc3339(to).ok()?;
    Some((to - from).num_seconds().max(0))
}

// ---------------------------------------------------------------------------
// Folding, called by the projector for each event (in its transaction).

/// `package.built` with the commit's time: remembered for the run's lead times.
pub(crate) async fn commit_time(
    conn: &mut AnyConnection,
    run_id: &str,
    committed_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dora_commits (run_id, committed_at) VALUES ($1, $2) \
         ON CONFLICT (run_id) DO NOTHING",
    )
    .bind(run_id)
    .bind(stamp(committed_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A step of the stage failed after the stage started: a failed change.
pub(crate) async fn failed(
    conn: &mut AnyConnection,
    pipeline: &str,
    run_id: &str,
    stage: &str,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dora_failures (pipeline, stage, run_id, failed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (run_id, stage) DO NOTHING",
    )
    .bind(pipeline)
    .bind(stage)
    .bind(run_id)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `env.promoted`: a deployment. Called before the release table moves on:
/// a rollback run's promotion marks the release it replaces as a failed
/// change (failed when the rollback run started, restored now).
pub(crate) async fn promoted(
    conn: &mut AnyConnection,
    pipeline: &str,
    run_id: &str,
    stage: &str,
    at: &str,
) -> Result<(), StoreError> {
    let rollback: Option<(String,)> = sqlx::query_as(
        "SELECT created_at FROM runs WHERE run_id = $1 AND trigger_kind = 'rollback'",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((requested_at,)) = rollback {
        let replaced: Option<(String,)> =
            sqlx::query_as("SELECT run_id FROM releases WHERE pipeline = $1 AND stage = $2")
                .bind(pipeline)
                .bind(stage)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((replaced,)) = replaced.filter(|(r,)| r != run_id) {
            failed(conn, pipeline, &replaced, stage, &requested_at).await?;
        }
    }
    restored(conn, pipeline, stage, at).await?;
    let committed: Option<(String,)> =
        sqlx::query_as("SELECT committed_at FROM dora_commits WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await?;
    let lead = committed.and_then(|(c,)| seconds_between(&c, at));
    sqlx::query(
        "INSERT INTO dora_deployments (pipeline, stage, run_id, promoted_at, lead_seconds) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, stage) DO NOTHING",
    )
    .bind(pipeline)
    .bind(stage)
    .bind(run_id)
    .bind(at)
    .bind(lead)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The stage's open failures are restored at `at` (its next `env.promoted`
/// or `stage.rolled_back`).
pub(crate) async fn restored(
    conn: &mut AnyConnection,
    pipeline: &str,
    stage: &str,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE dora_failures SET restored_at = $3 \
         WHERE pipeline = $1 AND stage = $2 AND restored_at IS NULL AND failed_at <= $3",
    )
    .bind(pipeline)
    .bind(stage)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Quantiles;

    #[test]
    fn quantiles_are_nearest_rank() {
        assert_eq!(Quantiles::of(vec![]), Quantiles::default());
        assert_eq!(
            Quantiles::of(vec![30, 10, 20]),
            Quantiles {
                p50: Some(20),
                p90: Some(30)
            }
        );
        let hundred: Vec<i64> = (1..=100).collect();
        assert_eq!(
            Quantiles::of(hundred),
            Quantiles {
                p50: Some(50),
                p90: Some(90)
            }
        );
    }
}
