//! What makes a stage's release a checked fact (DESIGN.md 1.10): the
//! Kubernetes Deployment that runs it (`ready.kubernetes`,
//! `deploy.kubernetes`), the Argo CD Application that syncs it
//! (`ready.argocd`) and the performance gate (`perf`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::duration::{serde_duration, serde_opt_duration};
use crate::model::SmokeRequest;
use crate::secret::SecretRef;

/// A Deployment in a Kubernetes cluster: `ready.kubernetes` waits for its
/// rollout, `deploy.kubernetes` also sets its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTarget {
    pub namespace: String,
    pub deployment: String,
    /// The container whose image is the release; may be omitted when the
    /// pod has one container.
    #[serde(default)]
    pub container: Option<String>,
    /// A kubeconfig (`file:/path`, or `env:NAME` holding its text); omitted:
    /// in a pod its service account (in-cluster), elsewhere `$KUBECONFIG`
    /// or `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<SecretRef>,
    /// `ready.kubernetes` and `deploy.kubernetes` both accept it; the stage's
    /// `timeouts.ready` / `timeouts.deploy` win when written.
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// An Argo CD Application that must be synced to the deploy commit and
/// Healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgoCd {
    /// Argo CD's base URL, e.g. `https://argocd.example.com`.
    pub url: String,
    /// The Application's name.
    pub app: String,
    /// An Argo CD API token (a `env:`/`file:` reference).
    pub token: SecretRef,
    /// The Application's namespace, when Argo CD watches several.
    #[serde(default)]
    pub app_namespace: Option<String>,
    /// Skip TLS verification (a self-signed Argo CD in a lab).
    #[serde(default)]
    pub insecure: bool,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// One load the perf gate drives at the deployed gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerfScenario {
    /// Names the scenario in events when a stage has several (`api-key`,
    /// `oauth`, `passthrough-1k`); a single one is `perf`.
    #[serde(default = "default_perf_name")]
    pub name: String,
    pub request: SmokeRequest,
    /// How long load is measured, after the warm-up.
    #[serde(default = "default_perf_duration", with = "serde_duration")]
    pub duration: Duration,
    /// Load before the measurement that no figure includes (connections,
    /// caches, JIT).
    #[serde(default = "default_perf_warmup", with = "serde_duration")]
    pub warmup: Duration,
    /// Connections: each sends its next request when the last one answered
    /// (closed loop), or, with `rate`, the most requests in flight.
    #[serde(default = "default_perf_concurrency")]
    pub concurrency: u32,
    /// Requests per second on a fixed schedule (open loop); latency counts
    /// from when each request was due, so a stalled gateway shows.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Skip TLS verification (a gateway with a self-signed certificate).
    #[serde(default)]
    pub insecure: bool,
    pub expect: PerfExpect,
}

/// The thresholds of a perf scenario; every one written must be met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerfExpect {
    /// Successful requests per second, at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tps: Option<f64>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_p95: Option<Duration>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_p99: Option<Duration>,
    /// Share of requests that failed (non-2xx, transport errors), 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
}

impl PerfExpect {
    pub fn is_empty(&self) -> bool {
        self.min_tps.is_none()
            && self.max_p95.is_none()
            && self.max_p99.is_none()
            && self.max_error_rate.is_none()
    }
}

fn default_perf_name() -> String {
    "perf".to_owned()
}

fn default_perf_duration() -> Duration {
    Duration::from_secs(60)
}

fn default_perf_warmup() -> Duration {
    Duration::from_secs(5)
}

fn default_perf_concurrency() -> u32 {
    20
}

/// `perf:` is one scenario (DESIGN.md 1.10) or a list of them, run one
/// after the other. Written out by hand rather than `untagged` so a mistake
/// inside a scenario keeps serde's message naming the field.
pub(crate) mod one_or_many {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &[PerfScenario], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] if one.name == default_perf_name() => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PerfScenario>, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Vec<PerfScenario>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a perf scenario (request, duration, concurrency, expect) or a list of them",
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                PerfScenario::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|one| vec![one])
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
        }
        d.deserialize_any(OneOrMany)
    }
}
