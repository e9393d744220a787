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

use std::collections::BTreeMap;

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

impl Dora {
    /// The keys of a stage that neither deployed nor failed in the window.
    pub fn empty(pipeline: &str, stage: &str, days: u32) -> Self {
        Dora {
            pipeline: pipeline.to_owned(),
            stage: stage.to_owned(),
            days,
            deployments: 0,
            deployment_frequency_per_day: 0.0,
            lead_time_seconds: Quantiles::default(),
            change_failure_rate: 0.0,
            failed_changes: 0,
            time_to_restore_seconds: Quantiles::default(),
        }
    }
}

/// The four keys over the `days` before `now` for every (pipeline, stage)
/// that has deployed or failed, optionally only `pipeline` and `stage`.
///
/// Exact and cheap at any history length: the window's whole UTC days come
/// from `dora_days` (one row per stage and day, with that day's lead times),
/// its two partial days at the edges from `dora_deployments` rows, and the
/// quantiles are picked here from the lead times by nearest rank.
pub async fn keys(
    store: &EventStore,
    pipeline: Option<&str>,
    stage: Option<&str>,
    days: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Dora>, StoreError> {
    let start = now - Duration::days(i64::from(days));
    // The window ends at `now`: a window in the past (the console's trend)
    // does not count what came after it. Its times are written into the SQL
    // as literals: they are formatted here, never taken from input.
    let (since, until) = (stamp(start), stamp(now));
    let first_day = start.date_naive();
    let last_day = now.date_naive();
    let midnight = |d: chrono::NaiveDate| stamp(d.and_time(chrono::NaiveTime::MIN).and_utc());
    let first_day_end = midnight(first_day + Duration::days(1));
    let last_day_start = midnight(last_day);
    let mut conn = store.pool().acquire().await?;
    // Equality filters written out only when given, so both databases use
    // the (pipeline, stage, ...) indexes; bound as `$1`, `$2`.
    let filter = |alias: &str| {
        let mut sql = String::new();
        let mut n = 0;
        for (column, value) in [("pipeline", pipeline), ("stage", stage)] {
            if value.is_some() {
                n += 1;
                sql.push_str(&format!(" AND {alias}{column} = ${n}"));
            }
        }
        sql
    };
    macro_rules! fetch {
        ($sql:expr) => {{
            let sql = $sql;
            let mut q = sqlx::query_as(&sql);
            if let Some(p) = pipeline {
                q = q.bind(p);
            }
            if let Some(s) = stage {
                q = q.bind(s);
            }
            q.fetch_all(&mut *conn).await?
        }};
    }
    let stages: Vec<(String, String)> = fetch!(format!(
        "SELECT DISTINCT pipeline, stage FROM dora_days WHERE 1 = 1{f} \
         UNION SELECT pipeline, stage FROM dora_failures WHERE 1 = 1{f} ORDER BY 1, 2",
        f = filter("")
    ));
    // Whole days strictly inside the window.
    let whole: Vec<(String, String, i64, String)> = fetch!(format!(
        "SELECT pipeline, stage, deployments, leads FROM dora_days \
         WHERE day > '{first}' AND day < '{last}'{f}",
        first = first_day.format("%Y-%m-%d"),
        last = last_day.format("%Y-%m-%d"),
        f = filter("")
    ));
    // The two partial days at its edges, deployment by deployment: two
    // ranges of the time index (disjoint; empty when the window is).
    let first_end = first_day_end.as_str().min(until.as_str());
    let last_start = last_day_start.as_str().max(first_day_end.as_str());
    let edges: Vec<(String, String, Option<i64>)> = fetch!(format!(
        "SELECT pipeline, stage, lead_seconds FROM dora_deployments \
         WHERE promoted_at >= '{since}' AND promoted_at < '{first_end}'{f} \
         UNION ALL SELECT pipeline, stage, lead_seconds FROM dora_deployments \
         WHERE promoted_at >= '{last_start}' AND promoted_at < '{until}'{f}",
        f = filter("")
    ));
    // Failed changes are few: read row by row.
    let failures: Vec<(String, String, String, Option<String>, i64)> = fetch!(format!(
        "SELECT f.pipeline, f.stage, f.failed_at, f.restored_at, \
             CAST(CASE WHEN EXISTS (SELECT 1 FROM dora_deployments d WHERE d.run_id = f.run_id \
             AND d.stage = f.stage) THEN 1 ELSE 0 END AS BIGINT) \
             FROM dora_failures f WHERE f.failed_at >= '{since}' AND f.failed_at < '{until}'{}",
        filter("f.")
    ));
    let mut by_stage: BTreeMap<(String, String), Window> = stages
        .into_iter()
        .map(|key| (key, Window::default()))
        .collect();
    for (pipeline, stage, count, leads) in whole {
        let w = by_stage.entry((pipeline, stage)).or_default();
        w.deployments += count;
        w.leads.extend(
            leads
                .split(',')
                .filter_map(|l| l.trim().parse::<i64>().ok()),
        );
    }
    for (pipeline, stage, lead) in edges {
        let w = by_stage.entry((pipeline, stage)).or_default();
        w.deployments += 1;
        w.leads.extend(lead);
    }
    for (pipeline, stage, failed_at, restored_at, promoted) in failures {
        let w = by_stage.entry((pipeline, stage)).or_default();
        w.failed += 1;
        w.never_promoted += i64::from(promoted == 0);
        if let Some(seconds) = restored_at.and_then(|r| seconds_between(&failed_at, &r)) {
            w.restores.push(seconds);
        }
    }
    Ok(by_stage
        .into_iter()
        .map(|((pipeline, stage), w)| w.keys(pipeline, stage, days))
        .collect())
}

/// What the window holds for one stage.
#[derive(Debug, Default)]
struct Window {
    deployments: i64,
    leads: Vec<i64>,
    failed: i64,
    never_promoted: i64,
    restores: Vec<i64>,
}

impl Window {
    fn keys(self, pipeline: String, stage: String, days: u32) -> Dora {
        let changes = self.deployments + self.never_promoted;
        Dora {
            pipeline,
            stage,
            days,
            deployments: self.deployments,
            deployment_frequency_per_day: if days == 0 {
                0.0
            } else {
                self.deployments as f64 / f64::from(days)
            },
            lead_time_seconds: Quantiles::of(self.leads),
            change_failure_rate: if changes == 0 {
                0.0
            } else {
                self.failed as f64 / changes as f64
            },
            failed_changes: self.failed,
            time_to_restore_seconds: Quantiles::of(self.restores),
        }
    }
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
    record_deployment(conn, pipeline, stage, run_id, at, lead).await
}

/// One deployment into the read models: its row and its day's count and
/// lead times (once: a deployment already recorded changes nothing). Pub
/// for `gantry bench dora`, which seeds a history without folding a log.
pub async fn record_deployment(
    conn: &mut AnyConnection,
    pipeline: &str,
    stage: &str,
    run_id: &str,
    at: &str,
    lead: Option<i64>,
) -> Result<(), StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO dora_deployments (pipeline, stage, run_id, promoted_at, lead_seconds) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, stage) DO NOTHING",
    )
    .bind(pipeline)
    .bind(stage)
    .bind(run_id)
    .bind(at)
    .bind(lead)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    let day = at.get(..10).unwrap_or(at);
    let lead = lead.map(|l| l.to_string()).unwrap_or_default();
    sqlx::query(
        "INSERT INTO dora_days (pipeline, stage, day, deployments, leads) VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (pipeline, stage, day) DO UPDATE SET deployments = dora_days.deployments + 1, \
         leads = CASE WHEN $4 = '' THEN dora_days.leads WHEN dora_days.leads = '' THEN $4 \
                      ELSE dora_days.leads || ',' || $4 END",
    )
    .bind(pipeline)
    .bind(stage)
    .bind(day)
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
    use super::*;
    use crate::projection::Projections;
    use crate::ExpectedVersion;
    use chrono::TimeZone as _;
    use gantry_proto::events::*;
    use gantry_proto::{CloudEvent, EventPayload, StagePlan, Step, Trigger};

    /// Day 0 of the scripted history.
    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap()
    }

    fn at<P: EventPayload>(run: &str, minutes: i64, p: P) -> CloudEvent {
        let mut e = CloudEvent::new("test", "banking", Some(run), &p);
        e.time = t0() + Duration::minutes(minutes);
        e
    }

    fn started(run: &str, minutes: i64, trigger: Trigger) -> CloudEvent {
        at(
            run,
            minutes,
            RunStarted {
                run_id: run.into(),
                commit: format!("{run}-commit"),
                branch: "main".into(),
                repository: "repo".into(),
                message: None,
                author: None,
                authors: vec![],
                trigger,
                stages: vec![StagePlan {
                    name: "prod".into(),
                    after: None,
                    steps: vec![Step::Package, Step::Deploy, Step::Smoke],
                }],
                rollback: None,
            },
        )
    }

    /// `package.built` of a commit made `ago` minutes before `minutes`.
    fn built(run: &str, minutes: i64, committed_minutes: i64) -> CloudEvent {
        at(
            run,
            minutes,
            PackageBuilt {
                stage: "prod".into(),
                digest: "sha256:p".into(),
                size: 1,
                files: 1,
                format: "yaml".into(),
                values_digest: None,
                location: None,
                commit: None,
                committed_at: Some(t0() + Duration::minutes(committed_minutes)),
            },
        )
    }

    fn promoted(run: &str, minutes: i64) -> CloudEvent {
        at(
            run,
            minutes,
            EnvPromoted {
                stage: "prod".into(),
                commit: format!("{run}-commit"),
                image: None,
                digest: None,
            },
        )
    }

    /// A scripted history of stage `prod`, the answers worked out by hand:
    ///
    /// - r1: committed at 0, promoted at 60 min: lead 3,600 s;
    /// - r2: committed at 100, promoted at 130: lead 1,800 s;
    /// - r3: committed at 200, smoke fails at 230, rolled back at 240:
    ///   a failed change never promoted, restored after 600 s;
    /// - r4: committed at 300, promoted at 400: lead 6,000 s;
    /// - r5, a rollback run started at 500 by hand, promotes at 520: a
    ///   deployment without a lead time, and r4's release a failed change
    ///   restored after 1,200 s;
    /// - r0, 40 days earlier: outside the 30-day window.
    #[tokio::test]
    async fn the_four_keys_of_a_scripted_history() {
        let (store, _dir) = crate::store::tests::sqlite_store().await;
        let day = 24 * 60;
        let log = vec![
            started("r0", -40 * day, Trigger::Webhook),
            built("r0", -40 * day + 1, -40 * day),
            promoted("r0", -40 * day + 5),
            started("r1", 1, Trigger::Webhook),
            built("r1", 2, 0),
            promoted("r1", 60),
            started("r2", 101, Trigger::Webhook),
            built("r2", 102, 100),
            promoted("r2", 130),
            started("r3", 201, Trigger::Webhook),
            built("r3", 202, 200),
            at(
                "r3",
                210,
                StageStarted {
                    stage: "prod".into(),
                    commit: "r3-commit".into(),
                    image: None,
                    digest: None,
                    rollback: false,
                },
            ),
            at(
                "r3",
                230,
                SmokeFailed {
                    stage: "prod".into(),
                    checks: vec![],
                },
            ),
            at(
                "r3",
                240,
                StageRolledBack {
                    stage: "prod".into(),
                    reason: "smoke failed".into(),
                    to_run: Some("r2".into()),
                    to_commit: None,
                },
            ),
            started("r4", 301, Trigger::Webhook),
            built("r4", 302, 300),
            promoted("r4", 400),
            started("r5", 500, Trigger::Rollback),
            promoted("r5", 520),
            at(
                "r5",
                521,
                StageRolledBack {
                    stage: "prod".into(),
                    reason: "by hand".into(),
                    to_run: Some("r2".into()),
                    to_commit: None,
                },
            ),
        ];
        for e in log {
            let run = e.runid.clone().unwrap();
            store
                .append(&format!("run-{run}"), ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
        let projections = Projections::new(store.clone());
        let now = t0() + Duration::days(2);
        let keys = projections
            .dora(Some("banking"), Some("prod"), 30, now)
            .await
            .unwrap();
        assert_eq!(
            keys,
            vec![Dora {
                pipeline: "banking".into(),
                stage: "prod".into(),
                days: 30,
                // r1, r2, r4, r5.
                deployments: 4,
                deployment_frequency_per_day: 4.0 / 30.0,
                // 1,800 / 3,600 / 6,000: p50 the 2nd of 3, p90 the 3rd.
                lead_time_seconds: Quantiles {
                    p50: Some(3_600),
                    p90: Some(6_000)
                },
                // r3 and r4 failed; changes: 4 deployments + r3.
                change_failure_rate: 2.0 / 5.0,
                failed_changes: 2,
                // 600 s and 1,200 s.
                time_to_restore_seconds: Quantiles {
                    p50: Some(600),
                    p90: Some(1_200)
                },
            }]
        );
        // The window: 50 days back also counts r0 (lead 300 s).
        let wide = projections.dora(None, None, 50, now).await.unwrap();
        assert_eq!(wide[0].deployments, 5);
        assert_eq!(
            wide[0].lead_time_seconds,
            Quantiles {
                p50: Some(1_800),
                p90: Some(6_000)
            }
        );
        // A rebuild folds the same answers.
        projections.rebuild().await.unwrap();
        assert_eq!(
            projections
                .dora(Some("banking"), Some("prod"), 30, now)
                .await
                .unwrap(),
            keys
        );
    }

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

    /// The day buckets give exactly what reading every deployment gives,
    /// for windows whose edges fall anywhere in a day, in the past too.
    #[tokio::test]
    async fn day_buckets_answer_exactly_as_every_row_would() {
        let (store, _dir) = crate::store::tests::sqlite_store().await;
        let mut conn = store.pool().acquire().await.unwrap();
        // 400 deployments over 20 days at uneven minutes, some without a
        // lead time; two stages.
        let mut rows = Vec::new();
        for i in 0..400i64 {
            let at = t0() + Duration::minutes(i * 71 + (i * i) % 53);
            let stage = if i % 3 == 0 { "test" } else { "prod" };
            let lead = (i % 9 != 0).then_some((i * 37) % 5_000);
            record_deployment(
                &mut conn,
                "banking",
                stage,
                &format!("r{i}"),
                &stamp(at),
                lead,
            )
            .await
            .unwrap();
            rows.push((stage, at, lead));
        }
        // Recorded twice (a replayed fold): counted once.
        record_deployment(
            &mut conn,
            "banking",
            "prod",
            "r1",
            &stamp(rows[1].1),
            rows[1].2,
        )
        .await
        .unwrap();
        drop(conn);
        for (days, offset_minutes) in [(1, 0), (3, 17), (7, 600), (30, 1_441), (2, 5_000), (0, 700)]
        {
            let now = t0() + Duration::days(10) + Duration::minutes(offset_minutes);
            let got = keys(&store, None, None, days, now).await.unwrap();
            for stage in ["prod", "test"] {
                let since = now - Duration::days(i64::from(days));
                let window: Vec<_> = rows
                    .iter()
                    .filter(|(s, at, _)| *s == stage && *at >= since && *at < now)
                    .collect();
                let leads: Vec<i64> = window.iter().filter_map(|(_, _, l)| *l).collect();
                let k = got.iter().find(|k| k.stage == stage).unwrap();
                assert_eq!(
                    k.deployments,
                    window.len() as i64,
                    "{stage} {days}d at +{offset_minutes}m"
                );
                assert_eq!(k.lead_time_seconds, Quantiles::of(leads), "{stage} {days}d");
            }
        }
    }
}
