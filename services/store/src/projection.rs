//! Read models (runs, stages, what runs where), folded from the log.
//!
//! The projector applies events and moves its checkpoint in the same
//! transaction, so a projection is exactly the fold of the log up to its
//! checkpoint: crashes neither lose nor double-apply, and any number of
//! projector instances may run (they take turns on a lock). Readers call
//! [`Projections::catch_up`] first, so a run is visible the moment the request
//! that created it has returned.

use gantry_proto::events as ev;
use gantry_proto::{CloudEvent, EventName, RunStatus, StageStatus, Step, Trigger, UnknownValue};
use serde::Serialize;
use sqlx::{AnyConnection, Connection, Row};
use tokio_util::sync::CancellationToken;

use crate::store::{decode_rows, Backend, EventStore, StoreError};

mod stages;
pub use stages::RunStage;

const CHECKPOINT: &str = "projector";
const LOCK_KEY: i64 = 0x0070_726f_6a65_6374; // "project"
const PAGE: i64 = 1000;

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub commit: String,
    pub branch: String,
    pub repository: String,
    pub trigger: Trigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageView {
    pub name: String,
    pub status: StageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    pub steps: Vec<Step>,
    /// For a waiting stage: why it waits (`stage.queued` / `approval.requested` data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub approvals: Vec<serde_json::Value>,
    pub updated_at: String,
}

/// A run with its stages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: RunSummary,
    pub stages: Vec<StageView>,
}

/// What a stage of a pipeline runs now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Release {
    pub stage: String,
    pub run_id: String,
    pub commit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub promoted_at: String,
}

/// Filter for [`Projections::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: Option<i64>,
}

/// Reads and maintains the projections.
#[derive(Debug, Clone)]
pub struct Projections {
    store: EventStore,
}

impl Projections {
    pub fn new(store: EventStore) -> Self {
        Self { store }
    }

    /// Applies every event recorded so far. Cheap when nothing is pending.
    pub async fn catch_up(&self) -> Result<i64, StoreError> {
        loop {
            let head = self.store.head().await?;
            let at = self.store.checkpoint(CHECKPOINT).await?;
            if at >= head {
                return Ok(at);
            }
            self.apply_page().await?;
        }
    }

    /// Keeps the projections current until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut wake = self.store.wakeups();
        loop {
            let at = match self.catch_up().await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(error = %e, "projector failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.wait_beyond(at) => {}
            }
        }
    }

    /// Drops the projections and folds the whole log again.
    pub async fn rebuild(&self) -> Result<i64, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let mut tx = self.begin(&mut conn).await?;
        for table in [
            "runs",
            "stages",
            "releases",
            "dora_deployments",
            "dora_days",
            "dora_failures",
            "dora_commits",
        ] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM checkpoints WHERE name = $1")
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        drop(conn);
        self.catch_up().await
    }

    async fn begin<'c>(
        &self,
        conn: &'c mut AnyConnection,
    ) -> Result<sqlx::Transaction<'c, sqlx::Any>, StoreError> {
        Ok(match self.store.backend() {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = conn.begin().await?;
                // Projections are rebuilt from the log: a crash that loses the
                // last unflushed transaction loses its checkpoint with it, and
                // the events are applied again. No need to wait for the disk.
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        })
    }

    async fn apply_page(&self) -> Result<(), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let mut tx = self.begin(&mut conn).await?;
        // Read the checkpoint under the lock: another projector may have moved it.
        let at: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(CHECKPOINT)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0);
        let rows = sqlx::query(
            "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
             WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(at)
        .bind(PAGE)
        .fetch_all(&mut *tx)
        .await?;
        let events = decode_rows(&rows)?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        for recorded in &events {
            apply(&mut tx, &recorded.event, recorded.position).await?;
        }
        crate::store::save_checkpoint(&mut *tx, CHECKPOINT, last).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.catch_up().await?;
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE ($1 = '' OR pipeline = $1) AND ($2 = '' OR status = $2) \
             ORDER BY created_at DESC, run_id DESC LIMIT $3"
        ))
        .bind(filter.pipeline.clone().unwrap_or_default())
        .bind(filter.status.map_or("", RunStatus::as_str))
        .bind(filter.limit.unwrap_or(100).clamp(1, 1000))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn get_run(&self, run_id: &str) -> Result<Option<RunView>, StoreError> {
        self.catch_up().await?;
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"))
            .bind(run_id)
            .fetch_optional(self.store.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let run = run_from_row(&row)?;
        let rows = sqlx::query(&format!(
            "SELECT {STAGE_COLUMNS} FROM stages WHERE run_id = $1 ORDER BY ordinal"
        ))
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?;
        let stages = rows
            .iter()
            .map(|r| stage_from_row(r, 0))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(RunView { run, stages }))
    }

    /// DORA's four keys over the `days` before `now` (see [`crate::dora`]).
    pub async fn dora(
        &self,
        pipeline: Option<&str>,
        stage: Option<&str>,
        days: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::dora::Dora>, StoreError> {
        self.catch_up().await?;
        crate::dora::keys(&self.store, pipeline, stage, days, now).await
    }

    /// How many runs each pipeline has in each status (`gantry_runs`).
    pub async fn run_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.catch_up().await?;
        Ok(sqlx::query_as(
            "SELECT pipeline, status, COUNT(*) FROM runs GROUP BY pipeline, status \
             ORDER BY pipeline, status",
        )
        .fetch_all(self.store.pool())
        .await?)
    }

    /// What each stage of `pipeline` runs now.
    pub async fn releases(&self, pipeline: &str) -> Result<Vec<Release>, StoreError> {
        self.catch_up().await?;
        let rows = sqlx::query(
            "SELECT stage, run_id, commit_sha, image, digest, promoted_at FROM releases \
             WHERE pipeline = $1 ORDER BY stage",
        )
        .bind(pipeline)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Release {
                    stage: r.try_get(0)?,
                    run_id: r.try_get(1)?,
                    commit: r.try_get(2)?,
                    image: r.try_get(3)?,
                    digest: r.try_get(4)?,
                    promoted_at: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Every package a run built, with what the retention rule needs
    /// ([`crate::packages::retention`]).
    pub async fn package_references(
        &self,
    ) -> Result<Vec<crate::packages::retention::PackageRef>, StoreError> {
        self.catch_up().await?;
        let rows = sqlx::query(
            "SELECT s.package_digest, r.pipeline, s.run_id, s.stage, r.status, r.created_at, \
             CASE WHEN EXISTS (SELECT 1 FROM releases l WHERE l.pipeline = r.pipeline \
             AND l.stage = s.stage AND l.run_id = s.run_id) THEN 1 ELSE 0 END \
             FROM stages s JOIN runs r ON r.run_id = s.run_id \
             WHERE s.package_digest IS NOT NULL",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let created: String = r.try_get(5)?;
                Ok(crate::packages::retention::PackageRef {
                    digest: r.try_get(0)?,
                    pipeline: r.try_get(1)?,
                    run_id: r.try_get(2)?,
                    stage: r.try_get(3)?,
                    run_status: parsed(r, 4)?,
                    run_created_at: chrono::DateTime::parse_from_rfc3339(&created)
                        .ok()
                        .map(|t| t.with_timezone(&chrono::Utc)),
                    released: r.try_get::<i64, _>(6)? != 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

const STAGE_COLUMNS: &str = "stage, status, after_stage, steps, waiting, reason, package_digest, \
    image, image_digest, approvals, updated_at";

/// A stage row's [`STAGE_COLUMNS`], starting at column `at`.
fn stage_from_row(r: &sqlx::any::AnyRow, at: usize) -> Result<StageView, sqlx::Error> {
    Ok(StageView {
        name: r.try_get(at)?,
        status: parsed(r, at + 1)?,
        after: r.try_get(at + 2)?,
        steps: json_or_default(r.try_get::<String, _>(at + 3)?),
        waiting: r
            .try_get::<Option<String>, _>(at + 4)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        reason: r.try_get(at + 5)?,
        package_digest: r.try_get(at + 6)?,
        image: r.try_get(at + 7)?,
        image_digest: r.try_get(at + 8)?,
        approvals: json_or_default(r.try_get::<String, _>(at + 9)?),
        updated_at: r.try_get(at + 10)?,
    })
}

const RUN_COLUMNS: &str = "run_id, pipeline, commit_sha, branch, repository, trigger_kind, \
    message, author, status, reason, created_at, updated_at";

fn run_from_row(r: &sqlx::any::AnyRow) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        run_id: r.try_get(0)?,
        pipeline: r.try_get(1)?,
        commit: r.try_get(2)?,
        branch: r.try_get(3)?,
        repository: r.try_get(4)?,
        trigger: parsed(r, 5)?,
        message: r.try_get(6)?,
        author: r.try_get(7)?,
        status: parsed(r, 8)?,
        reason: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
    })
}

/// A column holding one of a closed set of words; the projector writes
/// only known ones, so another is a decode error naming the column.
fn parsed<T: std::str::FromStr<Err = UnknownValue>>(
    r: &sqlx::any::AnyRow,
    index: usize,
) -> Result<T, sqlx::Error> {
    let s: String = r.try_get(index)?;
    s.parse()
        .map_err(|e: UnknownValue| sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source: Box::new(e),
        })
}

fn json_or_default<T: serde::de::DeserializeOwned + Default>(s: String) -> T {
    serde_json::from_str(&s).unwrap_or_default()
}

/// Folds one event into the projections.
async fn apply(
    conn: &mut AnyConnection,
    event: &CloudEvent,
    position: i64,
) -> Result<(), StoreError> {
    let Some(name) = event.name() else {
        return Ok(());
    };
    let Some(run_id) = event.runid.as_deref() else {
        return Ok(());
    };
    let at = event
        .time
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if name == EventName::RunStarted {
        if let Some(d) = decode::<ev::RunStarted>(event) {
            insert_run(conn, event, run_id, &d, &at, position).await?;
        }
        return Ok(());
    }
    if let Some(status) = RunStatus::after(name) {
        let Some(reason) = run_reason(event, name) else {
            return Ok(());
        };
        set_run(conn, run_id, status, reason, &at, position).await?;
    }
    if let Some(stage) = event.stage() {
        if !apply_to_stage(conn, event, name, run_id, stage, &at).await? {
            return Ok(());
        }
    }
    sqlx::query("UPDATE runs SET updated_at = $2, last_position = $3 WHERE run_id = $1")
        .bind(run_id)
        .bind(&at)
        .bind(position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// An event's payload; an undecodable one is a recorded fact too, it just
/// changes nothing here.
fn decode<T: gantry_proto::EventPayload>(event: &CloudEvent) -> Option<T> {
    match event.decode::<T>() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "projection skips event with unexpected data");
            None
        }
    }
}

/// A new run and its stages, pending.
async fn insert_run(
    conn: &mut AnyConnection,
    event: &CloudEvent,
    run_id: &str,
    d: &ev::RunStarted,
    at: &str,
    position: i64,
) -> Result<(), StoreError> {
    let author = d.author.as_ref().and_then(|a| {
        a.name
            .clone()
            .or_else(|| a.username.clone())
            .or_else(|| a.email.clone())
    });
    sqlx::query(
        "INSERT INTO runs (run_id, pipeline, commit_sha, branch, repository, trigger_kind, \
         message, author, status, created_at, updated_at, last_position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11) \
         ON CONFLICT (run_id) DO NOTHING",
    )
    .bind(run_id)
    .bind(&event.pipeline)
    .bind(&d.commit)
    .bind(&d.branch)
    .bind(&d.repository)
    .bind(d.trigger.as_str())
    .bind(d.message.clone())
    .bind(author)
    .bind(RunStatus::Running.as_str())
    .bind(at)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    for (i, s) in d.stages.iter().enumerate() {
        sqlx::query(
            "INSERT INTO stages (run_id, stage, ordinal, after_stage, steps, status, approvals, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, '[]', $7) ON CONFLICT (run_id, stage) DO NOTHING",
        )
        .bind(run_id)
        .bind(&s.name)
        .bind(i as i64)
        .bind(s.after.clone())
        .bind(serde_json::to_string(&s.steps).unwrap_or_else(|_| "[]".into()))
        .bind(StageStatus::Pending.as_str())
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Why a run ended as it did, in words; `None` when the payload cannot be
/// read (the event then changes nothing).
fn run_reason(event: &CloudEvent, name: EventName) -> Option<Option<String>> {
    Some(match name {
        EventName::RunFailed => Some(decode::<ev::RunFailed>(event)?.reason),
        EventName::RunSuperseded => {
            let d = decode::<ev::RunSuperseded>(event)?;
            Some(format!(
                "superseded by run {} in stage {}",
                d.by_run, d.stage
            ))
        }
        EventName::RunCancelled => {
            let d = decode::<ev::RunCancelled>(event)?;
            Some(format!(
                "cancelled by {}{}",
                d.user,
                d.reason.map(|r| format!(": {r}")).unwrap_or_default()
            ))
        }
        _ => None,
    })
}

/// What a stage's event changes of its row (and of the stage's release);
/// `false` when its payload cannot be read.
async fn apply_to_stage(
    conn: &mut AnyConnection,
    event: &CloudEvent,
    name: EventName,
    run_id: &str,
    stage: &str,
    at: &str,
) -> Result<bool, StoreError> {
    let mut update = StageUpdate::new(conn, run_id, stage, at);
    if let Some(status) = StageStatus::after(name) {
        update = update.status(status);
    }
    macro_rules! data {
        ($t:ty) => {
            match decode::<$t>(event) {
                Some(d) => d,
                None => return Ok(false),
            }
        };
    }
    match name {
        EventName::PackageBuilt => {
            let d = data!(ev::PackageBuilt);
            update.set("package_digest", d.digest).run().await?;
            if let Some(committed_at) = d.committed_at {
                crate::dora::commit_time(conn, run_id, committed_at).await?;
            }
        }
        EventName::PackageFailed => {
            let d = data!(ev::PackageFailed);
            update.set("reason", d.reason).run().await?
        }
        EventName::ImagePushed => {
            let d = data!(ev::ImagePushed);
            update
                .set("image", format!("{}:{}", d.repository, d.tag))
                .set("image_digest", d.digest)
                .run()
                .await?
        }
        EventName::ImageFailed => {
            let d = data!(ev::ImageFailed);
            update.set("reason", d.reason).run().await?
        }
        EventName::StageQueued | EventName::ApprovalRequested => {
            update.set("waiting", event.data.to_string()).run().await?
        }
        EventName::ApprovalGranted => record_decision(update, event, "granted", None).await?,
        EventName::ApprovalRejected => {
            let d = data!(ev::ApprovalRejected);
            record_decision(update, event, "rejected", Some(d.reason)).await?
        }
        EventName::StageStarted => update.clear_waiting().run().await?,
        EventName::DeployCompleted
        | EventName::ApisPromoted
        | EventName::SmokePassed
        | EventName::PerfPassed => update.run().await?,
        EventName::DeployFailed
        | EventName::ApisFailed
        | EventName::SmokeFailed
        | EventName::PerfFailed => {
            let reason = match name {
                EventName::DeployFailed => data!(ev::DeployFailed).reason,
                EventName::ApisFailed => data!(ev::ApisFailed).reason,
                EventName::PerfFailed => data!(ev::PerfFailed).reason,
                _ => "smoke checks failed".to_owned(),
            };
            update.set("reason", reason).run().await?;
            // A step after the stage started: a failed change.
            crate::dora::failed(conn, &event.pipeline, run_id, stage, at).await?;
        }
        EventName::EnvPromoted => {
            let d = data!(ev::EnvPromoted);
            update.clear_waiting().run().await?;
            // Before the release moves on: a rollback run replaces it.
            crate::dora::promoted(conn, &event.pipeline, run_id, stage, at).await?;
            let release = Release {
                stage: stage.to_owned(),
                run_id: run_id.to_owned(),
                commit: d.commit,
                image: d.image,
                digest: d.digest,
                promoted_at: at.to_owned(),
            };
            upsert_release(conn, &event.pipeline, &release).await?;
        }
        EventName::StageRolledBack => {
            let d = data!(ev::StageRolledBack);
            update.set("reason", d.reason.clone()).run().await?;
            crate::dora::restored(conn, &event.pipeline, stage, at).await?;
            record_rollback(conn, event, run_id, stage, at, &d).await?;
        }
        _ => {}
    }
    Ok(true)
}

/// An approval decision appended to the stage's list of them.
async fn record_decision(
    update: StageUpdate<'_>,
    event: &CloudEvent,
    decision: &str,
    reason: Option<String>,
) -> Result<(), StoreError> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT approvals FROM stages WHERE run_id = $1 AND stage = $2")
            .bind(update.run_id)
            .bind(update.stage)
            .fetch_optional(&mut *update.conn)
            .await?;
    let mut list: Vec<serde_json::Value> = current.map(json_or_default).unwrap_or_default();
    let mut entry = event.data.clone();
    if let Some(obj) = entry.as_object_mut() {
        obj.insert("decision".into(), decision.into());
        obj.insert("at".into(), update.at.to_owned().into());
    }
    list.push(entry);
    let approvals = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    let update = update.set("approvals", approvals);
    match reason {
        Some(reason) => update.set("reason", reason).run().await,
        None => update.run().await,
    }
}

/// The stage's release after a rollback: the run it went back to (with
/// that run's image), or none when it went back to nothing.
async fn record_rollback(
    conn: &mut AnyConnection,
    event: &CloudEvent,
    run_id: &str,
    stage: &str,
    at: &str,
    d: &ev::StageRolledBack,
) -> Result<(), StoreError> {
    let (Some(to_run), Some(to_commit)) = (&d.to_run, &d.to_commit) else {
        sqlx::query("DELETE FROM releases WHERE pipeline = $1 AND stage = $2 AND run_id = $3")
            .bind(&event.pipeline)
            .bind(stage)
            .bind(run_id)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    };
    let prior =
        sqlx::query("SELECT image, image_digest FROM stages WHERE run_id = $1 AND stage = $2")
            .bind(to_run)
            .bind(stage)
            .fetch_optional(&mut *conn)
            .await?;
    let (image, digest): (Option<String>, Option<String>) = match prior {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (None, None),
    };
    let release = Release {
        stage: stage.to_owned(),
        run_id: to_run.clone(),
        commit: to_commit.clone(),
        image,
        digest,
        promoted_at: at.to_owned(),
    };
    upsert_release(conn, &event.pipeline, &release).await
}

/// Records what a stage of a pipeline runs now.
async fn upsert_release(
    conn: &mut AnyConnection,
    pipeline: &str,
    release: &Release,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO releases (pipeline, stage, run_id, commit_sha, image, digest, promoted_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (pipeline, stage) DO UPDATE SET \
         run_id = excluded.run_id, commit_sha = excluded.commit_sha, image = excluded.image, \
         digest = excluded.digest, promoted_at = excluded.promoted_at",
    )
    .bind(pipeline)
    .bind(&release.stage)
    .bind(&release.run_id)
    .bind(&release.commit)
    .bind(release.image.clone())
    .bind(release.digest.clone())
    .bind(&release.promoted_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn set_run(
    conn: &mut AnyConnection,
    run_id: &str,
    status: RunStatus,
    reason: Option<String>,
    at: &str,
    position: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE runs SET status = $2, reason = $3, updated_at = $4, last_position = $5 WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(status.as_str())
    .bind(reason)
    .bind(at)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A small builder for the one-row stage updates above.
struct StageUpdate<'a> {
    conn: &'a mut AnyConnection,
    run_id: &'a str,
    stage: &'a str,
    at: &'a str,
    sets: Vec<(&'static str, Option<String>)>,
}

impl<'a> StageUpdate<'a> {
    fn new(conn: &'a mut AnyConnection, run_id: &'a str, stage: &'a str, at: &'a str) -> Self {
        Self {
            conn,
            run_id,
            stage,
            at,
            sets: Vec::new(),
        }
    }

    fn status(mut self, status: StageStatus) -> Self {
        self.sets.push(("status", Some(status.as_str().to_owned())));
        self
    }

    fn set(mut self, column: &'static str, value: String) -> Self {
        self.sets.push((column, Some(value)));
        self
    }

    fn clear_waiting(mut self) -> Self {
        self.sets.push(("waiting", None));
        self
    }

    async fn run(self) -> Result<(), StoreError> {
        let mut sql = String::from("UPDATE stages SET updated_at = $3");
        for (i, (column, _)) in self.sets.iter().enumerate() {
            sql.push_str(&format!(", {column} = ${}", i + 4));
        }
        sql.push_str(" WHERE run_id = $1 AND stage = $2");
        let mut q = sqlx::query(&sql)
            .bind(self.run_id)
            .bind(self.stage)
            .bind(self.at);
        for (_, value) in self.sets {
            q = q.bind(value);
        }
        q.execute(&mut *self.conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ExpectedVersion;
    use gantry_proto::events::*;
    use gantry_proto::EventPayload;

    fn ev<P: EventPayload>(run: &str, p: P) -> CloudEvent {
        CloudEvent::new("test", "banking", Some(run), &p)
    }

    fn started(run: &str, commit: &str) -> CloudEvent {
        ev(
            run,
            RunStarted {
                run_id: run.into(),
                commit: commit.into(),
                branch: "main".into(),
                repository: "https://git.example.com/a/b.git".into(),
                message: Some("m".into()),
                author: Some(Person {
                    name: Some("Dev".into()),
                    ..Default::default()
                }),
                authors: Vec::new(),
                trigger: Trigger::Webhook,
                stages: vec![
                    StagePlan {
                        name: "test".into(),
                        after: None,
                        steps: vec![Step::Package],
                    },
                    StagePlan {
                        name: "prod".into(),
                        after: Some("test".into()),
                        steps: vec![Step::Package, Step::Approval],
                    },
                ],
                rollback: None,
            },
        )
    }

    fn promoted(run: &str, stage: &str, commit: &str) -> CloudEvent {
        ev(
            run,
            EnvPromoted {
                stage: stage.into(),
                commit: commit.into(),
                image: Some("reg/app:tag".into()),
                digest: Some(format!("sha256:{commit}")),
            },
        )
    }

    async fn snapshot(p: &Projections) -> (Vec<RunSummary>, Vec<Option<RunView>>, Vec<Release>) {
        let runs = p.list_runs(&RunFilter::default()).await.unwrap();
        let mut views = Vec::new();
        for r in &runs {
            views.push(p.get_run(&r.run_id).await.unwrap());
        }
        (runs, views, p.releases("banking").await.unwrap())
    }

    #[tokio::test]
    async fn projections_fold_the_log_and_rebuild_to_the_same_result() {
        let (store, _dir) = crate::store::tests::sqlite_store().await;
        let a = "run-a";
        let b = "run-b";
        let log = vec![
            (a, started(a, "aaaa")),
            (
                a,
                ev(
                    a,
                    PackageBuilt {
                        stage: "test".into(),
                        digest: "sha256:p1".into(),
                        size: 1,
                        files: 1,
                        format: "yaml".into(),
                        values_digest: None,
                        location: None,
                        commit: None,
                        committed_at: None,
                    },
                ),
            ),
            (
                a,
                ev(
                    a,
                    ImagePushed {
                        stage: "test".into(),
                        repository: "reg/app".into(),
                        tag: "test-aaaa".into(),
                        digest: "sha256:i1".into(),
                        parent_digest: None,
                        bytes_uploaded: 1,
                        bytes_reused: 2,
                    },
                ),
            ),
            (a, promoted(a, "test", "aaaa")),
            (
                a,
                ev(
                    a,
                    ApprovalRequested {
                        stage: "prod".into(),
                        required: 2,
                        approvers: vec!["rm".into()],
                        expires_at: None,
                    },
                ),
            ),
            (
                a,
                ev(
                    a,
                    ApprovalGranted {
                        stage: "prod".into(),
                        user: "rita".into(),
                        comment: None,
                    },
                ),
            ),
            (b, started(b, "bbbb")),
            (
                b,
                ev(
                    b,
                    StageQueued {
                        stage: "test".into(),
                        reason: "queue".into(),
                        behind: Some(a.into()),
                        until: None,
                        by: None,
                        detail: None,
                    },
                ),
            ),
            (
                a,
                ev(
                    a,
                    ApprovalRejected {
                        stage: "prod".into(),
                        user: "sam".into(),
                        reason: "not now".into(),
                    },
                ),
            ),
            (
                a,
                ev(
                    a,
                    RunFailed {
                        stage: Some("prod".into()),
                        reason: "rejected".into(),
                    },
                ),
            ),
            (
                b,
                ev(
                    b,
                    StageStarted {
                        stage: "test".into(),
                        commit: "bbbb".into(),
                        image: None,
                        digest: None,
                        rollback: false,
                    },
                ),
            ),
            (b, promoted(b, "test", "bbbb")),
            (
                b,
                ev(
                    b,
                    StageRolledBack {
                        stage: "test".into(),
                        reason: "smoke failed".into(),
                        to_run: Some(a.into()),
                        to_commit: Some("aaaa".into()),
                    },
                ),
            ),
            (
                b,
                ev(
                    b,
                    RunFailed {
                        stage: Some("test".into()),
                        reason: "smoke failed".into(),
                    },
                ),
            ),
        ];
        for (run, e) in log {
            store
                .append(&format!("run-{run}"), ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
        let p = Projections::new(store.clone());
        let before = snapshot(&p).await;

        let (runs, views, releases) = &before;
        assert_eq!(runs.len(), 2);
        let view_a = views.iter().flatten().find(|v| v.run.run_id == a).unwrap();
        assert_eq!(view_a.run.status, RunStatus::Failed);
        assert_eq!(view_a.stages[0].status, StageStatus::Promoted);
        assert_eq!(
            view_a.stages[0].package_digest.as_deref(),
            Some("sha256:p1")
        );
        assert_eq!(view_a.stages[0].image.as_deref(), Some("reg/app:test-aaaa"));
        assert_eq!(view_a.stages[1].status, StageStatus::Rejected);
        assert_eq!(view_a.stages[1].approvals.len(), 2);
        let view_b = views.iter().flatten().find(|v| v.run.run_id == b).unwrap();
        assert_eq!(view_b.stages[0].status, StageStatus::RolledBack);
        assert_eq!(
            view_b.stages[0].waiting, None,
            "a started stage no longer waits"
        );
        assert_eq!(releases.len(), 1);
        assert_eq!(
            releases[0].run_id, a,
            "the rollback put run a's release back"
        );
        assert_eq!(releases[0].commit, "aaaa");
        assert_eq!(releases[0].image.as_deref(), Some("reg/app:test-aaaa"));

        let rebuilt_to = p.rebuild().await.unwrap();
        assert_eq!(rebuilt_to, store.head().await.unwrap());
        assert_eq!(snapshot(&p).await, before);
    }
}
