//! Environmentalization (envgen).
pub mod template;
