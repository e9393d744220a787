//! Gantry's foundation: the event store (the log of record), the event bus
//! that delivers it, the service harness and the pipeline model.

pub mod bus;
pub mod consumer;
pub mod pipeline;
pub mod projection;
pub mod relay;
pub mod store;

pub use store::{Appended, EventStore, ExpectedVersion, NewEvents, RecordedEvent, StoreError};
