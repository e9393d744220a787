//! What the API shows before an approval, computed by the crates that own
//! it: envgen's package diff and apim's dry-run planner
//! ([`gantry_api::Previews`]).

use async_trait::async_trait;
use gantry_api::{DiffView, PlanRefused};
use gantry_pipeline::Pipeline;
use gantry_runtime::App;
use serde_json::Value;

pub struct Previews {
    apim: gantry_apim::Apim,
}

impl Previews {
    pub fn new(app: &App) -> Self {
        Self {
            apim: gantry_apim::Apim::for_plans(&gantry_runtime::WorkerContext::of(app)),
        }
    }
}

#[async_trait]
impl gantry_api::Previews for Previews {
    fn diff(
        &self,
        current: Option<&[u8]>,
        candidate: &[u8],
        secrets: &[String],
    ) -> Result<DiffView, String> {
        let diff = gantry_envgen::diff::diff_packages_masked(current, candidate, secrets)
            .map_err(|e| e.to_string())?;
        Ok(DiffView {
            json: serde_json::to_value(&diff).map_err(|e| e.to_string())?,
            text: diff.to_text(),
        })
    }

    async fn apis_plan(
        &self,
        pipeline: &Pipeline,
        stage: &str,
        commit: &str,
    ) -> Result<Value, PlanRefused> {
        let report = self
            .apim
            .plan(pipeline, stage, commit)
            .await
            .map_err(|f| PlanRefused {
                reason: f.reason,
                breaking_fields: f.breaking_fields,
            })?;
        serde_json::to_value(&report).map_err(|e| PlanRefused {
            reason: e.to_string(),
            breaking_fields: Vec::new(),
        })
    }
}
