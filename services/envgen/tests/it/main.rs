//! envgen's tests, one binary: real FED and YAML Entity Store projects, real git repositories.

mod common;

mod bad_inputs;
mod diff;
mod fed_projects;
mod fixture;
mod package;
