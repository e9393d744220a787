//! Stages across runs, each with its run, in one query: what the console's
//! pages show (what runs where, what waits, deploy history, the stage
//! matrix) without a query per run.

use gantry_proto::{RunStatus, StageStatus};
use serde::Serialize;

use super::{run_from_row, stage_from_row, Projections, RunSummary, StageView};
use super::{RUN_COLUMNS, STAGE_COLUMNS};
use crate::store::StoreError;

/// One stage of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStage {
    pub run: RunSummary,
    pub stage: StageView,
}

/// Stages a running run has reached but not promoted: they wait (queue,
/// approval, freeze, pause) or promote now.
const IN_FLIGHT: [StageStatus; 6] = [
    StageStatus::Queued,
    StageStatus::AwaitingApproval,
    StageStatus::Deploying,
    StageStatus::Deployed,
    StageStatus::ApisPromoted,
    StageStatus::Verified,
];

impl Projections {
    /// The stage rows of the release each stage runs now (`pipeline`, or
    /// every pipeline): who approved it, its image digest.
    pub async fn released_stages(
        &self,
        pipeline: Option<&str>,
    ) -> Result<Vec<RunStage>, StoreError> {
        self.run_stages(
            "JOIN releases l ON l.run_id = s.run_id AND l.stage = s.stage \
             WHERE ($1 = '' OR l.pipeline = $1) ORDER BY r.pipeline, s.ordinal",
            &[pipeline.unwrap_or_default()],
        )
        .await
    }

    /// Stages of running runs that wait or promote now (`pipeline`, or
    /// every pipeline), oldest run first.
    pub async fn in_flight_stages(
        &self,
        pipeline: Option<&str>,
    ) -> Result<Vec<RunStage>, StoreError> {
        let statuses = IN_FLIGHT
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        self.run_stages(
            &format!(
                "WHERE r.status = '{}' AND s.status IN ({statuses}) AND ($1 = '' OR r.pipeline = $1) \
                 ORDER BY r.created_at, s.ordinal",
                RunStatus::Running.as_str()
            ),
            &[pipeline.unwrap_or_default()],
        )
        .await
    }

    /// Every stage of the `limit` latest runs of `pipeline`, newest run first.
    pub async fn recent_run_stages(
        &self,
        pipeline: &str,
        limit: i64,
    ) -> Result<Vec<RunStage>, StoreError> {
        self.run_stages(
            &format!(
                "WHERE s.run_id IN (SELECT run_id FROM runs WHERE pipeline = $1 \
                 ORDER BY created_at DESC, run_id DESC LIMIT {}) \
                 ORDER BY r.created_at DESC, r.run_id DESC, s.ordinal",
                limit.clamp(1, 1000)
            ),
            &[pipeline],
        )
        .await
    }

    /// The promotions of `pipeline`'s stages (promoted, later rolled back
    /// or re-promoted by a rollback), newest first: its deploy history.
    pub async fn promotions(&self, pipeline: &str) -> Result<Vec<RunStage>, StoreError> {
        self.run_stages(
            &format!(
                "WHERE r.pipeline = $1 AND s.status IN ('{}', '{}') \
                 ORDER BY s.updated_at DESC LIMIT 500",
                StageStatus::Promoted.as_str(),
                StageStatus::RolledBack.as_str()
            ),
            &[pipeline],
        )
        .await
    }

    /// The latest run of each pipeline.
    pub async fn latest_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        self.catch_up().await?;
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs r WHERE r.created_at = \
             (SELECT MAX(created_at) FROM runs WHERE pipeline = r.pipeline)"
        ))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn run_stages(&self, rest: &str, binds: &[&str]) -> Result<Vec<RunStage>, StoreError> {
        self.catch_up().await?;
        let qualify = |columns: &str, table: &str| {
            columns
                .split(',')
                .map(|c| format!("{table}.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let run_columns = RUN_COLUMNS.split(',').count();
        let sql = format!(
            "SELECT {}, {} FROM stages s JOIN runs r ON r.run_id = s.run_id {rest}",
            qualify(RUN_COLUMNS, "r"),
            qualify(STAGE_COLUMNS, "s"),
        );
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        let rows = query.fetch_all(self.store.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(RunStage {
                    run: run_from_row(r)?,
                    stage: stage_from_row(r, run_columns)?,
                })
            })
            .collect()
    }
}
