//! Every route of the API (`services/api/src/lib.rs`) through the router
//! `gantry up` serves, in-process: success paths, status codes and problem
//! bodies, with and without API tokens. One test binary, one module per
//! route family; the shared setup is in [`support`].

mod approvals;
mod auth;
mod bad_input;
mod cancel;
mod diff;
mod events;
mod health;
mod pause;
mod pipelines;
mod plan;
mod rollback;
mod runs;
mod support;
mod trigger;
