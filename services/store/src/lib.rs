//! Gantry's event log and what moves it: the event store (the log of
//! record, [`store`]), the buses that deliver it ([`bus`]: SQL polling or
//! NATS JetStream fed by the [`relay`]), the consumer runner that drives a
//! service's handler ([`consumer`]), the read models folded from the log
//! ([`projection`]), and the package store with its retention rule
//! ([`packages`], whose retention reads the projections), and the audit
//! chain that exports, verifies and imports the log ([`audit`]).

pub mod audit;
pub mod bus;
pub mod cdevents;
pub mod consumer;
pub mod dora;
pub mod leader;
pub mod notify;
pub mod packages;
pub mod projection;
pub mod relay;
pub mod store;

pub use store::{Appended, EventStore, ExpectedVersion, NewEvents, RecordedEvent, StoreError};
