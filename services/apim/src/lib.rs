//! The `apim` service: promotes API Manager data (APIs, organizations,
//! applications) with each stage.
//!
//! - [`config`] reads apim-cli style configuration from the run's commit and
//!   produces a [`desired::DesiredState`] for one stage.
//! - [`client`] speaks API Manager's REST API (`/api/portal/v1.3|v1.4`).
//! - [`reconcile`] compares the desired state with what API Manager serves,
//!   plans the changes under API Manager's rules and applies them.
//! - [`service`] is the worker: `deploy.completed` (or `stage.started`) →
//!   `apis.promoted` / `apis.failed`, and dry runs for `gantry apis plan`.

pub mod client;
pub mod config;
pub mod desired;
pub mod reconcile;
pub mod service;

pub use service::{handler, Apim, Failure, PlanReport, SERVICE};
