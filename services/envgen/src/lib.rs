//! Environmentalization (envgen).
