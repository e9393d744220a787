//! `GET /api/v1/insights/dora?pipeline=&stage=&days=30`: DORA's four keys
//! from the log (definitions in `gantry_store::dora`).
//!
//! With `pipeline` and `stage` the answer is that stage's object (zeros
//! when it never deployed); otherwise an array with one object per
//! (pipeline, stage) that deployed or failed, narrowed by whichever of the
//! two is given.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_runtime::Problem;
use gantry_store::dora::Dora;
use serde::Deserialize;

use crate::Api;

/// The default window, as DESIGN.md 1.9's example.
pub const DEFAULT_DAYS: u32 = 30;
/// Longer windows are refused: they would read years of projection rows
/// for a figure no dashboard plots.
const MAX_DAYS: u32 = 3_650;

#[derive(Debug, Deserialize)]
pub struct DoraQuery {
    pipeline: Option<String>,
    stage: Option<String>,
    days: Option<u32>,
}

pub async fn dora(State(api): State<Api>, Query(q): Query<DoraQuery>) -> Result<Response, Problem> {
    let days = q.days.unwrap_or(DEFAULT_DAYS);
    if days == 0 || days > MAX_DAYS {
        return Err(Problem::bad_request(format!(
            "`days` must be between 1 and {MAX_DAYS}, got {days}"
        )));
    }
    let keys = api
        .app
        .projections
        .dora(
            q.pipeline.as_deref(),
            q.stage.as_deref(),
            days,
            chrono::Utc::now(),
        )
        .await?;
    Ok(match (q.pipeline, q.stage) {
        (Some(pipeline), Some(stage)) => {
            let one = keys
                .into_iter()
                .next()
                .unwrap_or_else(|| Dora::empty(&pipeline, &stage, days));
            Json(one).into_response()
        }
        _ => Json(keys).into_response(),
    })
}
