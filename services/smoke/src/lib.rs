//! The `smoke` service: runs a stage's checks against the deployed gateway
//! and records `smoke.passed` or `smoke.failed` with per-check results.
//!
//! Checks run after the step before `smoke` in [`Step::ORDER`] that the
//! stage has ([`Step::starts_after`]): `apis.promoted` when it has an API
//! Manager step, else `deploy.completed` when it has `deploy`, else
//! `stage.started`. A rollback re-deploy is not smoke-tested (the
//! conductor does not wait for it). Each check is retried
//! until its timeout while the gateway rolls out; the last attempt's outcome
//! is what counts. Redirects are followed only for checks that say
//! `follow_redirects: true`, never with the check's headers to another
//! origin; bodies are read up to 1 MiB; results are masked with the stage's
//! secrets (its declared `env`, secret headers) and every loaded pipeline's.

mod check;

use std::sync::Arc;

use async_trait::async_trait;
use gantry_pipeline::mask::Masker;
use gantry_pipeline::{StageEnv, Timeouts};
use gantry_proto::events::{CheckResult, SmokeFailed, SmokePassed};
use gantry_proto::{CloudEvent, EventName, Step};
use gantry_runtime::worker::{deadline, gave_up, Due, Reply, WorkerContext};
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::NewEvents;

pub use check::{run_check, RetryPolicy, SmokeClient, CONNECT_TIMEOUT, MAX_BODY, MAX_REDIRECTS};

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "smoke";

#[derive(Clone)]
pub struct Smoke {
    ctx: WorkerContext,
    client: SmokeClient,
    retry: RetryPolicy,
}

impl Smoke {
    pub fn new(ctx: &WorkerContext) -> Self {
        Self {
            ctx: ctx.clone(),
            // Fails only when no TLS backend can start, as `reqwest::Client::new`.
            client: SmokeClient::new().expect("building the smoke HTTP client"),
            retry: RetryPolicy::default(),
        }
    }

    /// Shorter pauses between attempts (tests).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

#[async_trait]
impl Handler for Smoke {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        &[
            EventName::StageStarted,
            EventName::DeployCompleted,
            EventName::ApisPromoted,
        ]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let Some(run) = event.runid.as_deref() else {
            return Ok(vec![]);
        };
        let reply = Reply::new(SERVICE, event, run);
        let (pipeline, stage) = match self
            .ctx
            .step_due(&reply, Step::Smoke, |stage, reason| {
                not_run(stage, "pipeline", reason)
            })
            .await?
        {
            Due::Step { pipeline, stage } => (pipeline, stage),
            Due::Gone(results) => return Ok(results),
            Due::Not => return Ok(vec![]),
        };
        let stage_name = stage.name.as_str();
        // The stage's secrets (a declared one that cannot be read is left
        // out: what cannot be read cannot leak) and every loaded pipeline's.
        let masker = Masker::for_stage(&pipeline, StageEnv::resolve(&stage).ok().as_ref());
        // Stopped at the step's deadline; the conductor records
        // `smoke.failed` (`timed out after ..`).
        let timeout = stage.timeout(Step::Smoke).unwrap_or(Timeouts::SMOKE);
        let checks = async {
            let mut results = Vec::with_capacity(stage.smoke.len());
            for check in &stage.smoke {
                results.push(run_check(&self.client, check, &self.retry, &masker).await);
            }
            results
        };
        let Ok(results) = tokio::time::timeout_at(deadline(event, timeout), checks).await else {
            tracing::warn!(
                run,
                stage = stage_name,
                "smoke checks passed their deadline; stopped"
            );
            return Ok(vec![]);
        };
        let passed = results.iter().all(|r| r.passed);
        tracing::info!(
            run,
            stage = stage_name,
            passed,
            checks = results.len(),
            "smoke checks done"
        );
        Ok(if passed {
            reply.with(&SmokePassed {
                stage: stage_name.to_owned(),
                checks: results,
            })
        } else {
            reply.with(&SmokeFailed {
                stage: stage_name.to_owned(),
                checks: results,
            })
        })
    }

    async fn gave_up(
        &self,
        event: &CloudEvent,
        error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let (Some(stage), Ok(reply)) = (event.stage(), Reply::to(SERVICE, event)) else {
            return Ok(vec![]);
        };
        // A rollback is not smoke-tested: nothing waits for this step.
        if self.ctx.is_rollback(reply.run(), stage).await? {
            return Ok(vec![]);
        }
        let reason = gave_up(error);
        self.ctx
            .fail_where_due(&reply, Step::Smoke, &[stage], &reason, |stage, reason| {
                not_run(stage, "delivery", reason)
            })
            .await
    }
}

/// `smoke.failed` has no reason of its own: one check that could not run
/// (`name`) says why (the wire format stays as it is).
fn not_run(stage: &str, name: &str, reason: String) -> SmokeFailed {
    SmokeFailed {
        stage: stage.to_owned(),
        checks: vec![CheckResult {
            name: name.into(),
            passed: false,
            status: None,
            duration_ms: 0,
            attempts: 0,
            message: Some(reason),
        }],
    }
}

/// The worker, for registering with a runtime.
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(Smoke::new(ctx))
}
