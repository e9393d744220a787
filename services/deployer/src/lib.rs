//! # gantry-deployer
//!
//! The `deployer` service: a `stage.started` event becomes a running stage.
//! The stage's `deploy` section picks the target:
//!
//! - [`gitops`]: set a key of a YAML file in a deploy repository to
//!   `<repository>@<digest>` with a line-preserving edit ([`yaml_edit`]),
//!   commit and push (retrying on a lost race, idempotent when already set);
//! - [`command`]: run a program in a clean environment (`PATH`, `HOME`, the
//!   stage's declared `env`, and `GANTRY_IMAGE`, `GANTRY_DIGEST`,
//!   `GANTRY_STAGE`, `GANTRY_RUN`, `GANTRY_COMMIT`, `GANTRY_PIPELINE`), under
//!   a timeout, output captured and secrets masked.
//!
//! - [`kubernetes`]: set the Deployment's container image with a server-side
//!   apply (field manager `gantry`) and wait for its rollout.
//!
//! Then the stage's `ready` checks run: [`argocd`] (the Application synced
//! to the deploy commit and Healthy), [`kubernetes`] (the rollout of the
//! digest complete, as `kubectl rollout status` judges it) and [`ready`]
//! (`ready.url` answering). The [`service`] records `deploy.completed` or
//! `deploy.failed` on the run's stream.

pub mod argocd;
pub mod command;
pub mod gitops;
pub mod kubernetes;
pub mod ready;
pub mod service;
pub mod yaml_edit;

pub use argocd::{wait_synced, ArgoError, ArgoOptions, ArgoSynced};
pub use command::{run_command, CommandError, CommandOptions, CommandOutcome, DeployEnv};
pub use gantry_pipeline::mask::Masker;
pub use gitops::{
    deploy_gitops, deploy_gitops_with, BeforePush, CommitMessage, DeployError, GitOpsOptions,
    GitOpsOutcome,
};
pub use kubernetes::{KubeError, KubeOptions, RolloutDone};
pub use ready::{wait_ready, ReadyError, ReadyOptions, ReadyOutcome};
pub use service::{handler, image_reference, DeployOutcome, Deployer, DeployerOptions, SERVICE};
pub use yaml_edit::{set_yaml_key, EditError};
