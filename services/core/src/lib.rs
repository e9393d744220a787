//! Gantry's foundation: the event store (the log of record), the event bus
//! that delivers it, the service harness and the pipeline model.

pub mod pipeline;
