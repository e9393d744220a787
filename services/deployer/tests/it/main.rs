//! The deployer's tests, one binary: real git repositories, commands and HTTP servers.

mod common;

mod command;
mod gitops;
mod kubernetes;
mod ready;
mod service;
mod stage_env;
