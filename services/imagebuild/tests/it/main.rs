//! imagebuild's tests, one binary: a real OCI registry.

mod common;

mod auth;
mod faults;
mod index_and_layout;
mod registry_push;
