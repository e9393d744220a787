//! Gantry's facts as CDEvents (spec 0.5.1, DESIGN.md 1.9).
//!
//! The mapping is pure: one recorded Gantry event gives zero, one or two
//! CDEvents, each with an id derived from the Gantry event's id and the
//! CDEvent type (UUIDv5), so that publishing the same event again gives the
//! same CDEvent (NATS drops it by `Nats-Msg-Id`, a consumer by `context.id`).
//!
//! | Gantry event | CDEvent |
//! |---|---|
//! | `commit.received` | `change.merged` (the commit), `pipelinerun.queued` (the run it asks for) |
//! | `run.started` | `pipelinerun.started` |
//! | `run.succeeded` / `failed` / `cancelled` / `superseded` | `pipelinerun.finished`, outcome `success` / `failure` / `cancel` / `cancel` |
//! | `package.built` | `artifact.packaged` (`pkg:generic/gantry/<pipeline>-<stage>@sha256:…`) |
//! | `image.pushed` | `artifact.published` (`pkg:oci/<name>@sha256:…?repository_url=…&tag=…`) |
//! | `env.promoted` | `service.deployed` (the stage's first release), `service.upgraded`, or `service.rolledback` in a rollback run |
//! | `stage.rolled_back` | `service.rolledback` (after a failure; a rollback run's says it with its `env.promoted`) |
//! | `smoke.passed` / `smoke.failed` | `testsuiterun.finished`, outcome `success` / `failure` |
//! | `perf.passed` / `perf.failed` | `testsuiterun.finished` of the suite `perf`, outcome `success` / `failure` |
//!
//! A service is the pipeline (the gateway it deploys), its environment the
//! stage. Two facts an `env.promoted` alone does not say come from the log
//! through [`Context`]: whether the stage ran a release before, and whether
//! the run is a rollback run.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::events as ev;
use crate::{CloudEvent, EventName};

/// The CDEvents specification version these events follow.
pub const SPEC_VERSION: &str = "0.5.1";

/// What the mapping needs besides the event itself.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The console's external URL (`GANTRY_PUBLIC_URL`), without a trailing
    /// `/`: the events' `source` and the runs' `uri`.
    pub public_url: String,
    /// For an `env.promoted`: the stage ran a release before this one.
    pub stage_had_release: bool,
    /// For an `env.promoted` or `stage.rolled_back`: the run is a rollback
    /// run (re-promotes an earlier release by hand).
    pub rollback_run: bool,
    /// For a `stage.rolled_back`: the purl of the release the stage went
    /// back to ([`release_purl`] of its `env.promoted`), when it had one.
    pub restored: Option<String>,
}

/// Whether mapping `event` needs the log's history in [`Context`]: the
/// caller looks it up only then.
pub fn needs_history(event: &CloudEvent) -> bool {
    matches!(
        event.name(),
        Some(EventName::EnvPromoted | EventName::StageRolledBack)
    )
}

/// One CDEvent: its type (e.g. `dev.cdevents.service.deployed.0.3.0`) and the
/// whole event (`context`, `subject`, `customData`).
#[derive(Debug, Clone, PartialEq)]
pub struct CdEvent {
    pub ty: &'static str,
    pub id: Uuid,
    pub json: Value,
}

const CHANGE_MERGED: &str = "dev.cdevents.change.merged.0.3.0";
const PIPELINERUN_QUEUED: &str = "dev.cdevents.pipelinerun.queued.0.3.0";
const PIPELINERUN_STARTED: &str = "dev.cdevents.pipelinerun.started.0.3.0";
const PIPELINERUN_FINISHED: &str = "dev.cdevents.pipelinerun.finished.0.3.0";
const ARTIFACT_PACKAGED: &str = "dev.cdevents.artifact.packaged.0.3.0";
const ARTIFACT_PUBLISHED: &str = "dev.cdevents.artifact.published.0.3.0";
const SERVICE_DEPLOYED: &str = "dev.cdevents.service.deployed.0.3.0";
const SERVICE_UPGRADED: &str = "dev.cdevents.service.upgraded.0.3.0";
const SERVICE_ROLLEDBACK: &str = "dev.cdevents.service.rolledback.0.3.0";
const TESTSUITERUN_FINISHED: &str = "dev.cdevents.testsuiterun.finished.0.3.0";

/// Every CDEvent type Gantry emits.
pub const TYPES: &[&str] = &[
    CHANGE_MERGED,
    PIPELINERUN_QUEUED,
    PIPELINERUN_STARTED,
    PIPELINERUN_FINISHED,
    ARTIFACT_PACKAGED,
    ARTIFACT_PUBLISHED,
    SERVICE_DEPLOYED,
    SERVICE_UPGRADED,
    SERVICE_ROLLEDBACK,
    TESTSUITERUN_FINISHED,
];

/// The CDEvents `event` stands for, in order; empty for facts CDEvents has
/// no word for (approvals, queueing, pauses, …) and for events whose data
/// does not decode (nothing is made up).
pub fn from_event(event: &CloudEvent, cx: &Context) -> Vec<CdEvent> {
    let Some(name) = event.name() else {
        return Vec::new();
    };
    let run = event.runid.as_deref().unwrap_or_default();
    let pipeline = event.pipeline.as_str();
    let run_uri = format!("{}/runs/{run}", cx.public_url);
    let pipeline_run = |outcome: Option<(&str, Option<String>)>| {
        let mut content = json!({ "pipelineName": pipeline, "uri": run_uri });
        if let Some((outcome, errors)) = outcome {
            content["outcome"] = json!(outcome);
            if let Some(errors) = errors {
                content["errors"] = json!(errors);
            }
        }
        json!({ "id": run, "content": content })
    };
    let environment = |stage: &str| json!({ "id": stage, "source": format!("{}/pipelines/{pipeline}", cx.public_url) });
    let service = |stage: &str, artifact: String| {
        json!({
            "id": pipeline,
            "content": { "environment": environment(stage), "artifactId": artifact },
        })
    };
    let one = |ty: &'static str, subject: Value| vec![(ty, subject)];
    let subjects: Vec<(&'static str, Value)> = match name {
        EventName::CommitReceived => {
            let Ok(c) = event.decode::<ev::CommitReceived>() else {
                return Vec::new();
            };
            vec![
                (
                    CHANGE_MERGED,
                    json!({ "id": c.commit, "content": { "repository": { "id": c.repository } } }),
                ),
                (PIPELINERUN_QUEUED, pipeline_run(None)),
            ]
        }
        EventName::RunStarted => one(PIPELINERUN_STARTED, pipeline_run(None)),
        EventName::RunSucceeded => one(PIPELINERUN_FINISHED, pipeline_run(Some(("success", None)))),
        EventName::RunFailed => {
            let Ok(f) = event.decode::<ev::RunFailed>() else {
                return Vec::new();
            };
            one(
                PIPELINERUN_FINISHED,
                pipeline_run(Some(("failure", Some(f.reason)))),
            )
        }
        EventName::RunCancelled => {
            let Ok(c) = event.decode::<ev::RunCancelled>() else {
                return Vec::new();
            };
            let why = match c.reason {
                Some(r) => format!("cancelled by {}: {r}", c.user),
                None => format!("cancelled by {}", c.user),
            };
            one(
                PIPELINERUN_FINISHED,
                pipeline_run(Some(("cancel", Some(why)))),
            )
        }
        EventName::RunSuperseded => {
            let Ok(s) = event.decode::<ev::RunSuperseded>() else {
                return Vec::new();
            };
            let why = format!("superseded by run {} at stage {}", s.by_run, s.stage);
            one(
                PIPELINERUN_FINISHED,
                pipeline_run(Some(("cancel", Some(why)))),
            )
        }
        EventName::PackageBuilt => {
            let Ok(p) = event.decode::<ev::PackageBuilt>() else {
                return Vec::new();
            };
            let change = p.commit.unwrap_or_else(|| run.to_owned());
            one(
                ARTIFACT_PACKAGED,
                json!({
                    "id": package_purl(pipeline, &p.stage, &p.digest),
                    "content": { "change": { "id": change } },
                }),
            )
        }
        EventName::ImagePushed => {
            let Ok(i) = event.decode::<ev::ImagePushed>() else {
                return Vec::new();
            };
            one(
                ARTIFACT_PUBLISHED,
                json!({
                    "id": oci_purl(&i.repository, &i.digest, Some(&i.tag)),
                    "content": {},
                }),
            )
        }
        EventName::EnvPromoted => {
            let Ok(p) = event.decode::<ev::EnvPromoted>() else {
                return Vec::new();
            };
            let artifact = release_purl(pipeline, &p);
            let ty = if cx.rollback_run {
                SERVICE_ROLLEDBACK
            } else if cx.stage_had_release {
                SERVICE_UPGRADED
            } else {
                SERVICE_DEPLOYED
            };
            one(ty, service(&p.stage, artifact))
        }
        EventName::StageRolledBack => {
            // A rollback run's own `env.promoted` already said it.
            if cx.rollback_run {
                return Vec::new();
            }
            let Ok(r) = event.decode::<ev::StageRolledBack>() else {
                return Vec::new();
            };
            let artifact = match (&cx.restored, &r.to_commit) {
                (Some(artifact), _) => artifact.clone(),
                (None, Some(commit)) => generic_purl(pipeline, &r.stage, commit),
                // Nothing ran there before: the stage is back to nothing.
                (None, None) => generic_name(pipeline, &r.stage),
            };
            one(SERVICE_ROLLEDBACK, service(&r.stage, artifact))
        }
        EventName::SmokePassed | EventName::SmokeFailed => {
            let (stage, checks, outcome) = if name == EventName::SmokePassed {
                let Ok(s) = event.decode::<ev::SmokePassed>() else {
                    return Vec::new();
                };
                (s.stage, s.checks, "success")
            } else {
                let Ok(s) = event.decode::<ev::SmokeFailed>() else {
                    return Vec::new();
                };
                (s.stage, s.checks, "failure")
            };
            let mut content = json!({
                "outcome": outcome,
                "environment": environment(&stage),
                "testSuite": { "id": format!("{pipeline}/{stage}/smoke"), "name": "smoke" },
            });
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| match &c.message {
                    Some(m) => format!("{}: {m}", c.name),
                    None => c.name.clone(),
                })
                .collect();
            if !failed.is_empty() {
                content["reason"] = json!(failed.join("; "));
            }
            one(
                TESTSUITERUN_FINISHED,
                json!({ "id": format!("{run}/{stage}/smoke"), "content": content }),
            )
        }
        EventName::PerfPassed | EventName::PerfFailed => {
            let (stage, outcome, reason) = if name == EventName::PerfPassed {
                let Ok(p) = event.decode::<ev::PerfPassed>() else {
                    return Vec::new();
                };
                (p.stage, "success", None)
            } else {
                let Ok(p) = event.decode::<ev::PerfFailed>() else {
                    return Vec::new();
                };
                (p.stage, "failure", Some(p.reason))
            };
            let mut content = json!({
                "outcome": outcome,
                "environment": environment(&stage),
                "testSuite": { "id": format!("{pipeline}/{stage}/perf"), "name": "perf" },
            });
            if let Some(reason) = reason {
                content["reason"] = json!(reason);
            }
            one(
                TESTSUITERUN_FINISHED,
                json!({ "id": format!("{run}/{stage}/perf"), "content": content }),
            )
        }
        _ => Vec::new(),
    };
    subjects
        .into_iter()
        .map(|(ty, subject)| envelope(event, cx, ty, subject))
        .collect()
}

fn envelope(event: &CloudEvent, cx: &Context, ty: &'static str, subject: Value) -> CdEvent {
    let id = Uuid::new_v5(&event.id, ty.as_bytes());
    let mut context = json!({
        "specversion": SPEC_VERSION,
        "id": id.to_string(),
        "source": if cx.public_url.is_empty() { "/gantry".to_owned() } else { cx.public_url.clone() },
        "type": ty,
        "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    });
    if let Some(chain) = event.correlationid {
        context["chainId"] = json!(chain.to_string());
    }
    // Where the fact comes from, so a consumer can find it in Gantry's log.
    let mut gantry = Map::new();
    gantry.insert("event".into(), json!(event.id.to_string()));
    gantry.insert("type".into(), json!(event.ty));
    gantry.insert("pipeline".into(), json!(event.pipeline));
    if let Some(run) = &event.runid {
        gantry.insert("run".into(), json!(run));
    }
    if let Some(position) = event.sequence {
        gantry.insert("sequence".into(), json!(position));
    }
    if let Some(stage) = event.stage() {
        gantry.insert("stage".into(), json!(stage));
    }
    CdEvent {
        ty,
        id,
        json: json!({
            "context": context,
            "subject": subject,
            "customData": { "gantry": gantry },
            "customDataContentType": "application/json",
        }),
    }
}

/// The purl of the release an `env.promoted` names: its image, or for a
/// stage without one the commit's package.
pub fn release_purl(pipeline: &str, promoted: &ev::EnvPromoted) -> String {
    match (&promoted.image, &promoted.digest) {
        (Some(image), Some(digest)) => oci_purl(image, digest, None),
        _ => generic_purl(pipeline, &promoted.stage, &promoted.commit),
    }
}

fn generic_purl(pipeline: &str, stage: &str, version: &str) -> String {
    format!("{}@{}", generic_name(pipeline, stage), purl_encode(version))
}

/// `pkg:generic/gantry/<pipeline>-<stage>`: a stage's releases, unversioned.
fn generic_name(pipeline: &str, stage: &str) -> String {
    format!(
        "pkg:generic/gantry/{}",
        purl_encode(&format!("{pipeline}-{stage}"))
    )
}

/// `pkg:oci/<name>@sha256:…?repository_url=<repository>[&tag=<tag>]`: the
/// purl of an OCI image (name: the repository's last path segment).
pub fn oci_purl(repository: &str, digest: &str, tag: Option<&str>) -> String {
    let repository = repository_of(repository);
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let mut purl = format!(
        "pkg:oci/{}@{digest}?repository_url={}",
        purl_encode(&name.to_ascii_lowercase()),
        purl_encode(repository)
    );
    if let Some(tag) = tag {
        purl.push_str("&tag=");
        purl.push_str(&purl_encode(tag));
    }
    purl
}

/// The repository of an image reference: without its `@digest` or `:tag`
/// (a `:` in the last path segment; one before it is a registry's port).
fn repository_of(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    let reference = reference.trim_end_matches('/');
    let last = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last..].find(':') {
        Some(colon) => &reference[..last + colon],
        None => reference,
    }
}

/// `pkg:generic/gantry/<pipeline>-<stage>@sha256:…`: the purl of an
/// environmentalized package.
pub fn package_purl(pipeline: &str, stage: &str, digest: &str) -> String {
    generic_purl(pipeline, stage, digest)
}

/// Percent-encodes what a purl component may not hold as it is; `:` and `/`
/// stay (purl: `:` is unambiguous everywhere; `/` separates the repository
/// path inside `repository_url`).
fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        Context {
            public_url: "https://gantry.example.com".into(),
            ..Context::default()
        }
    }

    fn promoted(image: Option<&str>) -> CloudEvent {
        CloudEvent::new(
            "conductor",
            "banking",
            Some("r1"),
            &ev::EnvPromoted {
                stage: "prod".into(),
                commit: "abc123".into(),
                image: image.map(str::to_owned),
                digest: image.map(|_| "sha256:00ff".to_owned()),
            },
        )
    }

    #[test]
    fn a_promotion_is_deployed_then_upgraded_or_rolled_back() {
        let event = promoted(Some("registry.example.com:5000/apim/Gateway"));
        let first = from_event(&event, &cx());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].ty, SERVICE_DEPLOYED);
        let subject = &first[0].json["subject"];
        assert_eq!(subject["id"], "banking");
        assert_eq!(subject["content"]["environment"]["id"], "prod");
        assert_eq!(
            subject["content"]["artifactId"],
            "pkg:oci/gateway@sha256:00ff?repository_url=registry.example.com:5000/apim/Gateway"
        );
        let again = Context {
            stage_had_release: true,
            ..cx()
        };
        assert_eq!(from_event(&event, &again)[0].ty, SERVICE_UPGRADED);
        let rollback = Context {
            rollback_run: true,
            ..again
        };
        assert_eq!(from_event(&event, &rollback)[0].ty, SERVICE_ROLLEDBACK);
    }

    #[test]
    fn a_rollback_is_told_once() {
        let rolled = CloudEvent::new(
            "conductor",
            "banking",
            Some("r2"),
            &ev::StageRolledBack {
                stage: "prod".into(),
                reason: "smoke failed".into(),
                to_run: Some("r1".into()),
                to_commit: Some("abc".into()),
            },
        );
        let automatic = from_event(
            &rolled,
            &Context {
                restored: Some("pkg:oci/gw@sha256:01".into()),
                ..cx()
            },
        );
        assert_eq!(automatic.len(), 1);
        assert_eq!(automatic[0].ty, SERVICE_ROLLEDBACK);
        assert_eq!(
            automatic[0].json["subject"]["content"]["artifactId"],
            "pkg:oci/gw@sha256:01"
        );
        assert_eq!(
            from_event(&rolled, &cx())[0].json["subject"]["content"]["artifactId"],
            "pkg:generic/gantry/banking-prod@abc"
        );
        let by_hand = Context {
            rollback_run: true,
            ..cx()
        };
        assert!(
            from_event(&rolled, &by_hand).is_empty(),
            "the rollback run's env.promoted is its service.rolledback"
        );
    }

    #[test]
    fn a_perf_gate_is_a_test_suite_run_of_its_own() {
        let failed = CloudEvent::new(
            "perf",
            "banking",
            Some("r1"),
            &ev::PerfFailed {
                stage: "perf".into(),
                figures: ev::PerfFigures {
                    scenario: "api-key".into(),
                    failed: vec!["min_tps".into()],
                    ..ev::PerfFigures::default()
                },
                reason: "min_tps: 412.3 tps < 750".into(),
                scenarios: Vec::new(),
            },
        );
        let mapped = from_event(&failed, &cx());
        assert_eq!(mapped.len(), 1);
        assert_eq!(mapped[0].ty, TESTSUITERUN_FINISHED);
        let subject = &mapped[0].json["subject"];
        assert_eq!(subject["id"], "r1/perf/perf");
        assert_eq!(subject["content"]["outcome"], "failure");
        assert_eq!(subject["content"]["reason"], "min_tps: 412.3 tps < 750");
        assert_eq!(subject["content"]["testSuite"]["id"], "banking/perf/perf");
        assert_eq!(subject["content"]["environment"]["id"], "perf");
        let passed = CloudEvent::new(
            "perf",
            "banking",
            Some("r1"),
            &ev::PerfPassed {
                stage: "perf".into(),
                figures: ev::PerfFigures::default(),
                scenarios: Vec::new(),
            },
        );
        let mapped = from_event(&passed, &cx());
        assert_eq!(mapped[0].json["subject"]["content"]["outcome"], "success");
        assert!(mapped[0].json["subject"]["content"].get("reason").is_none());
    }

    #[test]
    fn ids_are_stable_per_event_and_type() {
        let event = promoted(None);
        let a = from_event(&event, &cx());
        let b = from_event(&event, &cx());
        assert_eq!(
            a[0].id, b[0].id,
            "the same fact maps to the same CDEvent id"
        );
        assert_ne!(a[0].id, event.id);
        let other = promoted(None);
        assert_ne!(from_event(&other, &cx())[0].id, a[0].id);
    }

    #[test]
    fn a_commit_is_a_merged_change_and_a_queued_run() {
        let event = CloudEvent::new(
            "webhook",
            "banking",
            Some("r1"),
            &ev::CommitReceived {
                provider: "github".into(),
                delivery_id: None,
                repository: "git@github.com:acme/gw.git".into(),
                branch: "main".into(),
                commit: "abc123".into(),
                message: None,
                author: None,
                committer: None,
                pusher: None,
                triggered_by: None,
                run_id: "r1".into(),
            },
        );
        let out = from_event(&event, &cx());
        let types: Vec<_> = out.iter().map(|c| c.ty).collect();
        assert_eq!(types, [CHANGE_MERGED, PIPELINERUN_QUEUED]);
        assert_eq!(out[0].json["subject"]["id"], "abc123");
        assert_eq!(
            out[1].json["subject"]["content"]["uri"],
            "https://gantry.example.com/runs/r1"
        );
        assert_ne!(out[0].id, out[1].id);
    }

    #[test]
    fn facts_without_a_cdevent_map_to_nothing() {
        let event = CloudEvent::new(
            "api",
            "banking",
            Some("r1"),
            &ev::ApprovalGranted {
                stage: "prod".into(),
                user: "rita".into(),
                comment: None,
            },
        );
        assert!(from_event(&event, &cx()).is_empty());
        let mut broken = promoted(None);
        broken.data = json!({"stage": 3});
        assert!(
            from_event(&broken, &cx()).is_empty(),
            "bad data makes nothing up"
        );
    }

    #[test]
    fn purls_encode_what_they_must() {
        assert_eq!(
            package_purl("bank ing", "prod", "sha256:ab"),
            "pkg:generic/gantry/bank%20ing-prod@sha256:ab"
        );
        assert_eq!(
            oci_purl("r.example/a/gw", "sha256:ab", Some("run 1")),
            "pkg:oci/gw@sha256:ab?repository_url=r.example/a/gw&tag=run%201"
        );
        for image in [
            "r.example:5000/a/gw:test-1",
            "r.example:5000/a/gw@sha256:ab",
            "r.example:5000/a/gw",
        ] {
            assert_eq!(
                oci_purl(image, "sha256:ab", None),
                "pkg:oci/gw@sha256:ab?repository_url=r.example:5000/a/gw",
                "{image}"
            );
        }
    }
}
