//! The `/webhooks/{provider}` routes through the router as `gantry up`
//! serves them, in-process: each forge's signature scheme, payloads that
//! start a run, are ignored or are malformed, redeliveries, and which
//! pipeline a push belongs to. One test binary; the setup is in [`support`].

mod bitbucket;
mod generic;
mod gitea;
mod github;
mod gitlab;
mod routing;
mod support;
