//! Pipeline definitions (DESIGN.md 1.2).
//!
//! `pipelines/*.yaml` are parsed into [`Pipeline`] with serde-saphyr, then
//! checked by semantic rules; any problem becomes a [`PipelineError`] naming
//! the file, line, column and field (`stages[1].approval.required`), and all
//! problems of all files are reported together ([`PipelineErrors`]).
//! Secrets are only ever references ([`SecretRef`]); webhook pushes are
//! matched to pipelines by [`PipelineSet::matching_push`] using
//! [`normalize_repo_url`] (DESIGN.md 1.5). The [`mask`] is fed by those
//! references: every resolved secret is kept out of logs and events.

mod duration;
mod error;
mod load;
mod locate;
pub mod mask;
mod model;
mod repo_url;
mod secret;
mod set;
mod stage_env;
mod validate;
mod verify;

#[cfg(test)]
mod tests;

pub use duration::{format_duration, parse_duration, DurationError, HumanDuration};
pub use error::{PipelineError, PipelineErrors};
pub use load::{load_dir, load_dir_partial, load_file, parse_str};
pub use model::{
    Access, ApiManager, ApimVersion, Apis, Approval, Deploy, DeployMethod, FreezeWindow, Gateway,
    GatewayFormat, GitOpsDeploy, Image, Notify, NotifyFormat, Pipeline, PlannedStage, QueuePolicy,
    Ready, RegistryAuth, SmokeCheck, SmokeExpect, SmokeRequest, Source, Stage, Timeouts,
};
pub use repo_url::normalize_repo_url;
pub use secret::{
    EnvValue, HeaderValue, Secret, SecretError, SecretRef, SecretRefError, SECRET_FORMAT_HINT,
};
pub use set::PipelineSet;
pub use stage_env::{StageEnv, StageEnvError};
pub use validate::warnings;
pub use verify::{ArgoCd, KubernetesTarget, PerfExpect, PerfScenario};
