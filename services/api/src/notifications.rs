//! `GET /api/v1/notifications?pipeline=`: each notification target's record
//! (DESIGN.md 1.9): what is still owed to it, delivered, failed attempts,
//! events given up, and the last error. Targets are named by id and host:
//! a target's URL may be a secret and is never shown.

use axum::extract::{Query, State};
use axum::Json;
use gantry_runtime::Problem;
use gantry_store::notify::TargetStatus;
use serde::Deserialize;

use crate::Api;

#[derive(Debug, Deserialize)]
pub struct NotificationsQuery {
    pipeline: Option<String>,
}

pub async fn list(
    State(api): State<Api>,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<Vec<TargetStatus>>, Problem> {
    let mut targets = api.app.store.notify_status().await?;
    if let Some(pipeline) = q.pipeline.filter(|p| !p.is_empty()) {
        targets.retain(|t| t.pipeline == pipeline);
    }
    Ok(Json(targets))
}
