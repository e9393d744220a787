//! Gantry's foundation: the event store (the log of record), the event bus
//! that delivers it, the service harness and the pipeline model.

pub mod auth;
pub mod bus;
pub mod config;
pub mod consumer;
pub mod decide;
pub mod git;
pub mod mask;
pub mod metrics;
pub mod packages;
pub mod pipeline;
pub mod problem;
pub mod projection;
pub mod relay;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod trigger;

pub use config::Settings;
pub use problem::Problem;
pub use runtime::App;
pub use store::{Appended, EventStore, ExpectedVersion, NewEvents, RecordedEvent, StoreError};
