//! gantry-webhook

pub mod payload;
pub mod signature;
