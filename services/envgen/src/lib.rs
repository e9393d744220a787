//! Environmentalization (envgen).
mod diag;
pub mod secrets;
pub mod template;
pub mod values;
mod yaml;
