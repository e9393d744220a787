//! The smoke service's tests, one binary.

mod checks;
mod service;
