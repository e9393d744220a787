//! `GET /api/v1/runs/{id}/stages/{stage}/diff`: what promoting this run into
//! the stage would change, against the release the stage runs now: files of
//! the rendered configuration and its values, secrets masked. `?format=text`
//! answers the human-readable report.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_proto::events::PackageBuilt;
use gantry_runtime::Problem;
use gantry_store::packages::PackageStore;
use gantry_store::store::latest_for_stage;
use serde::Deserialize;
use serde_json::json;

use crate::Api;

#[derive(Debug, Deserialize)]
pub(crate) struct DiffQuery {
    format: Option<String>,
}

pub(crate) async fn stage_diff(
    State(api): State<Api>,
    Path((run_id, stage)): Path<(String, String)>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, Problem> {
    let store = &api.app.store;
    let events = store.read_run(&run_id).await?;
    let Some(first) = events.first() else {
        return Err(Problem::not_found(format!("no run `{run_id}`")));
    };
    let pipeline = first.event.pipeline.clone();
    let candidate = latest_for_stage::<PackageBuilt>(&events, &stage).ok_or_else(|| {
        Problem::conflict(format!(
            "run `{run_id}` has no package for stage `{stage}` yet (or the stage does not exist)"
        ))
    })?;
    let current_release = api
        .app
        .projections
        .releases(&pipeline)
        .await?
        .into_iter()
        .find(|r| r.stage == stage);
    let current = match &current_release {
        Some(release) => {
            latest_for_stage::<PackageBuilt>(&store.read_run(&release.run_id).await?, &stage)
        }
        None => None,
    };
    // The process's store: in distributed mode the NATS bucket envgen
    // wrote to, so the api needs no disk of its own.
    let packages = &api.app.packages;
    let candidate_bytes = read_package(packages, &candidate.digest).await?;
    let current_bytes = match &current {
        Some(p) => Some(read_package(packages, &p.digest).await?),
        None => None,
    };
    // The packages hold the stage's secrets resolved (the gateway needs
    // them); a diff shows none of them, nor any other secret of the pipeline.
    let masker = stage_masker(&api, &pipeline, &stage);
    let secrets: Vec<String> = masker.secrets().map(str::to_owned).collect();
    // Unpacking and comparing two archives is CPU work: off the async path.
    let previews = api.previews.clone();
    let diff = tokio::task::spawn_blocking(move || {
        previews.diff(current_bytes.as_deref(), &candidate_bytes, &secrets)
    })
    .await
    .map_err(Problem::internal)?
    .map_err(Problem::internal)?;
    if q.format.as_deref() == Some("text") {
        return Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            diff.text,
        )
            .into_response());
    }
    Ok(Json(json!({
        "run_id": run_id,
        "stage": stage,
        "pipeline": pipeline,
        "candidate": { "run_id": run_id, "digest": candidate.digest, "commit": candidate.commit },
        "current": current_release.as_ref().map(|r| json!({
            "run_id": r.run_id,
            "commit": r.commit,
            "digest": current.as_ref().map(|p| p.digest.clone()),
        })),
        "diff": diff.json,
    }))
    .into_response())
}

/// A package by digest: unreachable store → 503 (try again), a missing or
/// corrupt package → 500 naming it.
async fn read_package(packages: &PackageStore, digest: &str) -> Result<Vec<u8>, Problem> {
    packages.get(digest).await.map_err(|e| {
        if e.is_transient() {
            Problem::unavailable(e.to_string())
        } else {
            Problem::internal(e)
        }
    })
}

/// Every secret of the pipeline, of the stage's declared variables, and
/// every secret this process knows.
fn stage_masker(api: &Api, pipeline: &str, stage: &str) -> gantry_pipeline::mask::Masker {
    let set = api.app.pipelines.get();
    let Some(p) = set.get(pipeline) else {
        return (*gantry_pipeline::mask::process()).clone();
    };
    let env = p
        .stage(stage)
        .and_then(|s| gantry_pipeline::StageEnv::resolve(s).ok());
    gantry_pipeline::mask::Masker::for_stage(p, env.as_ref())
}
