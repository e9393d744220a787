//! `GET /api/v1/runs/{id}/stages/{stage}/apis/plan`: a dry run of the API
//! Manager promotion of this run's commit into the stage — what would be
//! created, updated, republished or re-created, which grants would change,
//! and which breaking changes the stage would refuse — read from the stage's
//! API Manager without writing anything, so it can be looked at before an
//! approval. Field names only; values may be secrets.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_proto::events::StageStarted;
use gantry_runtime::Problem;
use gantry_store::store::latest_for_stage;

use crate::Api;

pub(crate) async fn plan(
    State(api): State<Api>,
    Path((run_id, stage)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let events = api.app.store.read_run(&run_id).await?;
    let Some(first) = events.first() else {
        return Err(Problem::not_found(format!("no run `{run_id}`")));
    };
    let started = crate::started_with_stage(&events, &run_id, &stage)?;
    let set = api.app.pipelines.get();
    let pipeline = set
        .get(&first.event.pipeline)
        .ok_or_else(|| {
            Problem::not_found(format!(
                "pipeline `{}` is no longer defined",
                first.event.pipeline
            ))
        })?
        .clone();
    if pipeline
        .stage(&stage)
        .and_then(|s| s.apimanager.as_ref())
        .is_none()
    {
        return Err(Problem::conflict(format!(
            "stage `{stage}` of `{}` has no `apimanager`: nothing to plan",
            pipeline.name
        )));
    }
    // What the stage promotes: the run's commit, or for a rollback run the
    // earlier commit its stage.started names (the same commit, recorded).
    let commit =
        latest_for_stage::<StageStarted>(&events, &stage).map_or(started.commit, |s| s.commit);
    match api.previews.apis_plan(&pipeline, &stage, &commit).await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(refused) => Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("the API Manager plan failed: {}", refused.reason),
        )
        .with("breaking_fields", refused.breaking_fields)),
    }
}
