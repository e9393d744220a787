//! What the API shows a release manager before an approval but does not
//! compute itself: the diff of two packages and the API Manager plan. The
//! binary passes an implementation in (envgen's diff, apim's planner), so
//! this crate depends on the log and the pipeline model only.

use async_trait::async_trait;
use gantry_pipeline::Pipeline;
use serde_json::Value;

/// A diff, as JSON and as the human-readable report (`?format=text`).
pub struct DiffView {
    pub json: Value,
    pub text: String,
}

/// Why a plan could not be made (API Manager unreachable, a breaking change
/// the stage refuses, ...).
pub struct PlanRefused {
    pub reason: String,
    pub breaking_fields: Vec<String>,
}

#[async_trait]
pub trait Previews: Send + Sync + 'static {
    /// What replacing `current` (none: the stage's first release) with
    /// `candidate` changes, every one of `secrets` masked. CPU work (gunzip,
    /// parsing): the API calls it on a blocking thread.
    fn diff(
        &self,
        current: Option<&[u8]>,
        candidate: &[u8],
        secrets: &[String],
    ) -> Result<DiffView, String>;

    /// A dry run of promoting `commit`'s API Manager data into `stage`,
    /// reading the stage's API Manager and writing nothing.
    async fn apis_plan(
        &self,
        pipeline: &Pipeline,
        stage: &str,
        commit: &str,
    ) -> Result<Value, PlanRefused>;
}
