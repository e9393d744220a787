//! Gantry's integration tests, one binary: real Postgres, NATS, registry and git.

mod support;

mod apim_client;
mod apim_reconcile;
mod apim_service;
mod apimanager_double;
mod bus_contract;
mod conductor;
mod connections;
mod git_checkout;
mod harness;
mod kubernetes_double;
mod notifier;
mod package_store;
mod relay;
mod store_postgres;
mod workers;
