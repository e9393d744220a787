//! End-to-end tests, one binary: the gantry binary as a user runs it.

mod common;

mod apim;
mod approvals;
mod audit;
mod browser;
mod cdevents;
mod chaos;
mod console;
mod crash;
mod distributed;
mod distributed_promotion;
mod envgen;
mod images;
mod insights;
mod notify;
mod pause;
mod perf;
mod promotion;
mod quickstart;
mod reliability;
mod rollback;
mod smoke;
mod traces;
mod trust;
mod verification;
mod webhook_flow;
