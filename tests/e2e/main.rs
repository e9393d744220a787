//! End-to-end tests, one binary: the gantry binary as a user runs it.

mod common;

mod apim;
mod approvals;
mod browser;
mod console;
mod crash;
mod distributed;
mod distributed_promotion;
mod envgen;
mod images;
mod promotion;
mod rollback;
mod smoke;
mod trust;
mod webhook_flow;
