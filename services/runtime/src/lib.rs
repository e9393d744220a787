//! Gantry's service harness: what every service and the `gantry` binary run
//! inside. [`App`] wires the event store, the bus, the projections and the
//! pipeline set from [`Settings`]; around it are the problem+json errors
//! ([`Problem`]), the health and metrics routes, API tokens ([`auth`]), the
//! source checkout ([`git`]), starting runs ([`trigger`]: where a webhook or
//! a manual trigger becomes a run), the workers' one shape ([`worker`]),
//! logging, metrics and shutdown.
//!
//! The ideas it wires live in their own crates: the log and its buses in
//! `gantry-store`, the pipeline model in `gantry-pipeline`, the promotion
//! decisions in `gantry-decide`.

pub mod auth;
pub mod config;
pub mod git;
pub mod metrics;
pub mod problem;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
pub mod trigger;
pub mod worker;

pub use config::Settings;
pub use problem::Problem;
pub use runtime::App;
pub use worker::WorkerContext;
