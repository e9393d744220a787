//! # gantry-perf
//!
//! The perf gate (DESIGN.md 1.10): drives load at the deployed gateway and
//! judges the figures against the stage's thresholds: [`load`] is the load
//! generator, [`service`] the `perf` worker recording `perf.passed` /
//! `perf.failed`.

pub mod load;
pub mod service;

pub use load::{
    run_load, ConnectError, Failure, LoadError, LoadReport, LoadRequest, LoadSpec, Thresholds,
};
