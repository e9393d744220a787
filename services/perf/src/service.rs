//! The `perf` worker: after the step before `perf` in [`Step::ORDER`]
//! (`smoke.passed` when the stage has smoke checks), drives each of the
//! stage's perf scenarios at the deployed gateway in turn and records
//! `perf.passed`, or `perf.failed` with the figures and the thresholds not
//! met (DESIGN.md 1.10). The conductor rolls a failed stage back like a
//! failed smoke check; a rollback is not load-tested.
//!
//! Scenarios stop at the first that fails: loading a gateway that already
//! missed its gate tells nothing more and costs the environment.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gantry_pipeline::mask::Masker;
use gantry_pipeline::{PerfScenario, Stage, StageEnv, Timeouts};
use gantry_proto::events::{self as ev, PerfFailed, PerfFigures, PerfPassed};
use gantry_proto::{CloudEvent, EventName, Step};
use gantry_runtime::worker::{deadline, gave_up, Due, Reply, WorkerContext};
use gantry_store::consumer::{Handler, HandlerError};
use gantry_store::NewEvents;

use crate::load::{run_load, LoadReport, LoadRequest, LoadSpec, Thresholds};

/// The worker's name: handler, durable consumer, event source, logs.
pub const SERVICE: &str = "perf";

/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Perf {
    ctx: WorkerContext,
}

impl Perf {
    pub fn new(ctx: &WorkerContext) -> Self {
        Self { ctx: ctx.clone() }
    }
}

/// What a stage's perf gate came to.
#[derive(Debug, Clone, PartialEq)]
pub enum PerfOutcome {
    Passed(PerfPassed),
    Failed(PerfFailed),
}

/// Runs every scenario of `stage` (stopping at the first that fails) and
/// judges them; reasons are masked with `masker`.
pub async fn run_gate(stage: &Stage, masker: &Masker) -> PerfOutcome {
    let mut all: Vec<PerfFigures> = Vec::with_capacity(stage.perf.len());
    let several = stage.perf.len() > 1;
    let with_all = |all: &Vec<PerfFigures>| if several { all.clone() } else { Vec::new() };
    // With several scenarios a reason names the one that missed.
    let named = |name: &str, reason: &str| match several {
        true => format!("{name}: {reason}"),
        false => reason.to_owned(),
    };
    for scenario in &stage.perf {
        let expect = expect_of(scenario);
        // No load could be driven: no figures but the thresholds, and why.
        let not_driven = |all: &mut Vec<PerfFigures>, why: String| {
            let figures = PerfFigures {
                scenario: scenario.name.clone(),
                expect: expect.clone(),
                ..PerfFigures::default()
            };
            all.push(figures.clone());
            PerfOutcome::Failed(PerfFailed {
                stage: stage.name.clone(),
                figures,
                reason: masker.mask(&named(&scenario.name, &why)),
                scenarios: with_all(all),
            })
        };
        let spec = match spec_of(scenario) {
            Ok(spec) => spec,
            Err(reason) => return not_driven(&mut all, reason),
        };
        tracing::info!(
            stage = %stage.name,
            scenario = %scenario.name,
            duration = ?scenario.duration,
            concurrency = scenario.concurrency,
            rate = ?scenario.rate,
            "perf load starting"
        );
        let report = match run_load(&spec).await {
            Ok(report) => report,
            Err(e) => return not_driven(&mut all, format!("no load could be driven: {e}")),
        };
        let failures = thresholds_of(scenario).failed(&report);
        let mut figures = figures_of(scenario, &report, expect);
        figures.failed = failures.iter().map(|f| f.name.to_owned()).collect();
        all.push(figures.clone());
        tracing::info!(
            stage = %stage.name,
            scenario = %scenario.name,
            tps = report.tps,
            p95_ms = figures.p95_ms,
            errors = report.errors,
            failed = ?figures.failed,
            "perf load done"
        );
        if !failures.is_empty() {
            let mut reason = failures
                .iter()
                .map(|f| f.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            if let Some(first) = &report.first_error {
                reason.push_str(&format!(" (first error: {first})"));
            }
            return PerfOutcome::Failed(PerfFailed {
                stage: stage.name.clone(),
                figures,
                reason: masker.mask(&named(&scenario.name, &reason)),
                scenarios: with_all(&all),
            });
        }
    }
    let figures = all.last().cloned().unwrap_or_default();
    PerfOutcome::Passed(PerfPassed {
        stage: stage.name.clone(),
        figures,
        scenarios: with_all(&all),
    })
}

/// The load a scenario asks for, its secret headers read.
fn spec_of(scenario: &PerfScenario) -> Result<LoadSpec, String> {
    let request = &scenario.request;
    let method = http::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", request.method))?;
    let url = url::Url::parse(&request.url).map_err(|e| format!("url `{}`: {e}", request.url))?;
    let mut headers = Vec::with_capacity(request.headers.len());
    for (name, value) in &request.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let value = value
            .resolve()
            .map_err(|e| format!("header `{name}`: {e}"))?;
        let mut value = http::HeaderValue::from_str(value.expose())
            .map_err(|_| format!("header `{name}` has a value no HTTP header can carry"))?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(LoadSpec {
        request: LoadRequest {
            method,
            url,
            headers,
            body: bytes::Bytes::from(request.body.clone().unwrap_or_default()),
        },
        duration: scenario.duration,
        warmup: scenario.warmup,
        concurrency: usize::try_from(scenario.concurrency).unwrap_or(1).max(1),
        rate: scenario.rate,
        request_timeout: REQUEST_TIMEOUT,
        insecure: scenario.insecure,
    })
}

fn thresholds_of(scenario: &PerfScenario) -> Thresholds {
    let e = &scenario.expect;
    Thresholds {
        min_tps: e.min_tps,
        max_p95: e.max_p95,
        max_p99: e.max_p99,
        max_error_rate: e.max_error_rate,
    }
}

fn ms(d: Duration) -> f64 {
    // Microsecond precision is what the histogram keeps.
    (d.as_micros() as f64) / 1000.0
}

fn expect_of(scenario: &PerfScenario) -> ev::PerfExpect {
    let e = &scenario.expect;
    ev::PerfExpect {
        min_tps: e.min_tps,
        max_p95_ms: e.max_p95.map(ms),
        max_p99_ms: e.max_p99.map(ms),
        max_error_rate: e.max_error_rate,
    }
}

fn figures_of(scenario: &PerfScenario, r: &LoadReport, expect: ev::PerfExpect) -> PerfFigures {
    PerfFigures {
        scenario: scenario.name.clone(),
        requests: r.requests,
        errors: r.errors,
        duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        tps: round(r.tps, 1),
        p50_ms: round(ms(r.p50), 3),
        p95_ms: round(ms(r.p95), 3),
        p99_ms: round(ms(r.p99), 3),
        error_rate: round(r.error_rate, 6),
        expect,
        failed: Vec::new(),
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[async_trait]
impl Handler for Perf {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn events(&self) -> &'static [EventName] {
        &[
            EventName::StageStarted,
            EventName::DeployCompleted,
            EventName::ApisPromoted,
            EventName::SmokePassed,
        ]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let Some(run) = event.runid.as_deref() else {
            return Ok(vec![]);
        };
        let reply = Reply::new(SERVICE, event, run);
        let (pipeline, stage) = match self.ctx.step_due(&reply, Step::Perf, not_run).await? {
            Due::Step { pipeline, stage } => (pipeline, stage),
            Due::Gone(results) => return Ok(results),
            Due::Not => return Ok(vec![]),
        };
        let stage_name = stage.name.as_str();
        let masker = Masker::for_stage(&pipeline, StageEnv::resolve(&stage).ok().as_ref());
        // Stopped at the step's deadline; the conductor records
        // `perf.failed` (`timed out after ..`).
        let timeout = stage.timeout(Step::Perf).unwrap_or(Timeouts::PERF);
        let gate = run_gate(&stage, &masker);
        let Ok(outcome) = tokio::time::timeout_at(deadline(event, timeout), gate).await else {
            tracing::warn!(
                run,
                stage = stage_name,
                "perf gate passed its deadline; stopped"
            );
            return Ok(vec![]);
        };
        Ok(match &outcome {
            PerfOutcome::Passed(p) => {
                tracing::info!(
                    run,
                    stage = stage_name,
                    tps = p.figures.tps,
                    "perf gate passed"
                );
                reply.with(p)
            }
            PerfOutcome::Failed(f) => {
                tracing::warn!(run, stage = stage_name, reason = %f.reason, "perf gate failed");
                reply.with(f)
            }
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
        if self.ctx.is_rollback(reply.run(), stage).await? {
            return Ok(vec![]);
        }
        let reason = gave_up(error);
        self.ctx
            .fail_where_due(&reply, Step::Perf, &[stage], &reason, not_run)
            .await
    }
}

/// A perf gate that could not run at all.
fn not_run(stage: &str, reason: String) -> PerfFailed {
    PerfFailed {
        stage: stage.to_owned(),
        figures: PerfFigures::default(),
        reason,
        scenarios: Vec::new(),
    }
}

/// The worker, for registering with a runtime.
pub fn handler(ctx: &WorkerContext) -> Arc<dyn Handler> {
    Arc::new(Perf::new(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answering every request at once.
    async fn fast_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn stage(perf: &str) -> Stage {
        let yaml = format!(
            "name: p\nsource: {{ repo: /srv/git/p.git }}\ngateway: {{ format: yaml, path: g/ }}\n\
             stages:\n  - name: test\n    perf:\n{perf}"
        );
        let pipeline =
            gantry_pipeline::parse_str("p.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
        pipeline.stages[0].clone()
    }

    fn scenario(name: &str, url: &str, min_tps: f64) -> String {
        format!(
            "      - {{ name: {name}, request: {{ url: \"{url}\" }}, duration: 300ms, warmup: 0s, concurrency: 2, expect: {{ min_tps: {min_tps} }} }}\n"
        )
    }

    #[tokio::test]
    async fn scenarios_run_in_turn_and_stop_at_the_first_that_misses() {
        let fast = fast_server().await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let masker = Masker::new::<&str>(&[]);
        let s = stage(&format!(
            "{}{}{}",
            scenario("a", &format!("http://{fast}/"), 1.0),
            scenario("b", &format!("http://{closed}/"), 1.0),
            scenario("c", &format!("http://{fast}/"), 1.0),
        ));
        let PerfOutcome::Failed(f) = run_gate(&s, &masker).await else {
            panic!("a closed port passed");
        };
        assert_eq!(f.figures.scenario, "b");
        assert!(
            f.reason.starts_with("b: no load could be driven: "),
            "{}",
            f.reason
        );
        let run: Vec<&str> = f.scenarios.iter().map(|s| s.scenario.as_str()).collect();
        assert_eq!(run, ["a", "b"], "c is not loaded after b missed");
        assert!(f.scenarios[0].failed.is_empty() && f.scenarios[0].requests > 0);

        // A threshold no server meets is named, with the figure.
        let s = stage(&scenario("a", &format!("http://{fast}/"), 1e9));
        let PerfOutcome::Failed(f) = run_gate(&s, &masker).await else {
            panic!("a billion tps passed");
        };
        assert_eq!(f.figures.failed, ["min_tps"]);
        assert!(f.reason.starts_with("min_tps: "), "{}", f.reason);
        assert_eq!(f.figures.expect.min_tps, Some(1e9));

        let s = stage(&format!(
            "{}{}",
            scenario("a", &format!("http://{fast}/"), 1.0),
            scenario("b", &format!("http://{fast}/"), 1.0),
        ));
        let PerfOutcome::Passed(p) = run_gate(&s, &masker).await else {
            panic!("a fast server failed");
        };
        assert_eq!(p.figures.scenario, "b");
        assert_eq!(p.scenarios.len(), 2);
    }
}
