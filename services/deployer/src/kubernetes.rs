//! Kubernetes: set a Deployment's image (`deploy.kubernetes`) and wait until
//! its rollout is complete (`ready.kubernetes`, and after
//! `deploy.kubernetes`), judged as `kubectl rollout status` judges it
//! (kubectl's `polymorphichelpers/rollout_status.go`):
//!
//! 1. `metadata.generation <= status.observedGeneration`, else the
//!    controller has not seen the new template yet;
//! 2. condition `Progressing` with reason `ProgressDeadlineExceeded` fails;
//! 3. `updatedReplicas` reaches `spec.replicas`, no old replicas are left
//!    (`replicas == updatedReplicas`), and `availableReplicas` reaches
//!    `updatedReplicas`.
//!
//! Gantry adds what kubectl does not check: the pod template names this
//! release's digest (a GitOps controller may not have applied the commit
//! yet, and the old template's rollout is complete too), every pod of the
//! Deployment runs it, and none is crash-looping or cannot pull its image
//! (which would otherwise only show when the progress deadline passes).
//!
//! The image is set with a server-side apply under the field manager
//! `gantry`, forced: Gantry owns the container's `image` from then on, and
//! the rest of the Deployment stays whoever's it was (Helm's, say).

use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_pipeline::{format_duration, KubernetesTarget, SecretRef};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// The field manager of Gantry's server-side applies.
pub const FIELD_MANAGER: &str = "gantry";

/// Container waiting reasons that will not go away by waiting: the pod
/// keeps crashing, or its image or configuration cannot be used.
const HOPELESS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
];

/// How the rollout is watched.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Longest wait for a change of the Deployment before its pods are
    /// read again (pods change without the Deployment changing).
    pub poll: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{what}: {message}")]
    Api {
        what: String,
        message: String,
        /// The API server's HTTP status, when it answered.
        code: Option<u16>,
    },
    #[error("{0}")]
    Container(String),
    #[error("the deploy's deadline passed before the image was set")]
    TooLate,
    #[error("deployment `{deployment}` exceeded its progress deadline: {message}{pods}")]
    ProgressDeadline {
        deployment: String,
        message: String,
        /// What its new pods wait for, when they say.
        pods: String,
    },
    #[error("pod `{pod}` of deployment `{deployment}` cannot run: container `{container}` is {reason}{detail}")]
    PodFailing {
        deployment: String,
        pod: String,
        container: String,
        reason: String,
        /// The waiting message and the last termination's message.
        detail: String,
    },
    #[error("deployment `{deployment}` did not finish its rollout{of} within {}: {last}", format_duration(*.timeout))]
    Timeout {
        deployment: String,
        of: String,
        timeout: Duration,
        last: String,
    },
}

/// The rollout is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDone {
    /// kubectl's words: `deployment "x" successfully rolled out`.
    pub message: String,
    pub replicas: i32,
}

/// A client for the target's cluster: its kubeconfig when given (a
/// `file:` or `env:` reference to the kubeconfig's text), else in a pod
/// (`KUBERNETES_SERVICE_HOST` set) its service account, else
/// `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(target: &KubernetesTarget) -> Result<Client, KubeError> {
    let config = match &target.kubeconfig {
        Some(reference) => {
            let text = reference
                .resolve()
                .map_err(|e| KubeError::Config(e.to_string()))?;
            let kubeconfig = Kubeconfig::from_yaml(text.expose())
                .map_err(|e| KubeError::Config(format!("{}: {e}", shown(reference))))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", shown(reference))))?
        }
        // In a pod, its service account: a stray `$KUBECONFIG` in the
        // image must not win over what the chart's RBAC grants.
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Config::incluster()
            .map_err(|e| KubeError::Config(format!("in-cluster configuration: {e}")))?,
        None => Config::infer().await.map_err(|e| {
            KubeError::Config(format!(
                "no `kubeconfig` given, not in a pod, and none in `$KUBECONFIG` or ~/.kube/config: {e}"
            ))
        })?,
    };
    Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
}

/// Where a kubeconfig comes from, for messages (never its text).
fn shown(reference: &SecretRef) -> String {
    match reference {
        SecretRef::Env(name) => format!("env:{name}"),
        SecretRef::File(path) => format!("file:{}", path.display()),
    }
}

fn api_error(what: impl Into<String>, e: kube::Error) -> KubeError {
    let (message, code) = match &e {
        kube::Error::Api(status) => (
            format!("{} ({})", status.message, status.reason),
            Some(status.code),
        ),
        other => (other.to_string(), None),
    };
    KubeError::Api {
        what: what.into(),
        message,
        code,
    }
}

/// The container the target names, else the pod's only one.
fn container_name(target: &KubernetesTarget, deployment: &Deployment) -> Result<String, KubeError> {
    let names: Vec<&str> = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    match (&target.container, names.as_slice()) {
        (Some(c), _) if names.contains(&c.as_str()) => Ok(c.clone()),
        (Some(c), _) => Err(KubeError::Container(format!(
            "deployment `{}/{}` has no container `{c}` (it has {})",
            target.namespace,
            target.deployment,
            names.join(", ")
        ))),
        (None, [one]) => Ok((*one).to_owned()),
        (None, _) => Err(KubeError::Container(format!(
            "deployment `{}/{}` has containers {}: name one with `container`",
            target.namespace,
            target.deployment,
            names.join(", ")
        ))),
    }
}

/// The image of `container` in the Deployment's pod template.
fn template_image<'a>(deployment: &'a Deployment, container: &str) -> Option<&'a str> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .image
        .as_deref()
}

/// Sets the container's image to `image` with a forced server-side apply
/// (field manager `gantry`); returns the Deployment's generation after it.
pub async fn set_image(
    client: &Client,
    target: &KubernetesTarget,
    image: &str,
) -> Result<Option<i64>, KubeError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &target.namespace);
    let what = format!("deployment `{}/{}`", target.namespace, target.deployment);
    let current = api
        .get(&target.deployment)
        .await
        .map_err(|e| api_error(&what, e))?;
    let container = container_name(target, &current)?;
    // Only what Gantry owns: the apply leaves every other field to its manager.
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": target.deployment, "namespace": target.namespace },
        "spec": { "template": { "spec": { "containers": [
            { "name": container, "image": image }
        ] } } }
    });
    let applied = api
        .patch(
            &target.deployment,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| api_error(format!("setting the image of {what}"), e))?;
    tracing::info!(deployment = %what, %container, image, "image set");
    Ok(applied.metadata.generation)
}

/// Where a rollout stands at one look.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judgement {
    Waiting(String),
    Done(RolloutDone),
}

/// kubectl's rollout-status judgement of one Deployment, plus the template
/// naming `digest` when one is expected.
fn judge(
    deployment: &Deployment,
    container: &str,
    digest: Option<&str>,
) -> Result<Judgement, KubeError> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    if let (Some(digest), Some(image)) = (digest, template_image(deployment, container)) {
        if !image.contains(digest) {
            return Ok(Judgement::Waiting(format!(
                "the pod template still runs `{image}`, not {}",
                short(digest)
            )));
        }
    }
    let generation = deployment.metadata.generation.unwrap_or(0);
    let status = deployment.status.clone().unwrap_or_default();
    if generation > status.observed_generation.unwrap_or(0) {
        return Ok(Judgement::Waiting(
            "waiting for deployment spec update to be observed".into(),
        ));
    }
    if let Some(progressing) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
    {
        if progressing.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Err(KubeError::ProgressDeadline {
                deployment: name,
                message: progressing
                    .message
                    .clone()
                    .unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
                pods: String::new(),
            });
        }
    }
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let waiting = |what: String| {
        Ok(Judgement::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {what}"
        )))
    };
    if updated < want {
        return waiting(format!(
            "{updated} out of {want} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    Ok(Judgement::Done(RolloutDone {
        message: format!("deployment \"{name}\" successfully rolled out"),
        replicas: want,
    }))
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// The Deployment's pods that are not being deleted.
async fn pods_of(
    client: &Client,
    namespace: &str,
    deployment: &Deployment,
) -> Result<Vec<Pod>, KubeError> {
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_error(format!("pods of `{namespace}` with {selector}"), e))?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

fn pod_image<'a>(pod: &'a Pod, container: &str) -> Option<&'a str> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .image
        .as_deref()
}

fn container_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
}

/// Whether the pod runs `digest` (its spec, or the image its container
/// actually started from), or, with no digest, the template's image.
fn runs(pod: &Pod, container: &str, digest: Option<&str>, template: Option<&str>) -> bool {
    match digest {
        Some(d) => {
            pod_image(pod, container).is_some_and(|i| i.contains(d))
                || container_status(pod, container).is_some_and(|s| s.image_id.contains(d))
        }
        None => pod_image(pod, container) == template,
    }
}

/// The waiting reason and messages of a container, when it waits.
fn waiting_of(status: &ContainerStatus) -> Option<(String, String)> {
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.clone().unwrap_or_else(|| "waiting".into());
    let mut detail = String::new();
    if let Some(m) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
        detail.push_str(&format!(" ({m})"));
    }
    if let Some(t) = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
    {
        detail.push_str(&format!(
            "; last exit code {}{}",
            t.exit_code,
            t.message
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default()
        ));
    }
    if status.restart_count > 0 {
        detail.push_str(&format!("; {} restarts", status.restart_count));
    }
    Some((reason, detail))
}

/// A pod of the new release that cannot run fails the rollout at once.
fn hopeless_pod(
    deployment: &str,
    pods: &[Pod],
    container: &str,
    digest: Option<&str>,
    template: Option<&str>,
) -> Result<(), KubeError> {
    for pod in pods.iter().filter(|p| runs(p, container, digest, template)) {
        let Some((reason, detail)) = container_status(pod, container).and_then(waiting_of) else {
            continue;
        };
        if HOPELESS.contains(&reason.as_str()) {
            return Err(KubeError::PodFailing {
                deployment: deployment.to_owned(),
                pod: pod.metadata.name.clone().unwrap_or_default(),
                container: container.to_owned(),
                reason,
                detail,
            });
        }
    }
    Ok(())
}

/// What the new release's pods wait for, for a progress-deadline failure.
fn describe_new_pods(
    pods: &[Pod],
    container: &str,
    digest: Option<&str>,
    template: Option<&str>,
) -> String {
    let said: Vec<String> = pods
        .iter()
        .filter(|p| runs(p, container, digest, template))
        .filter_map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = container_status(p, container)?;
            match waiting_of(status) {
                Some((reason, detail)) => Some(format!("pod `{name}`: {reason}{detail}")),
                None if !status.ready => Some(format!(
                    "pod `{name}`: running, not ready ({} restarts)",
                    status.restart_count
                )),
                None => None,
            }
        })
        .collect();
    if said.is_empty() {
        String::new()
    } else {
        format!("; {}", said.join("; "))
    }
}

/// Waits until the rollout of `digest` (when given) is complete, until
/// `timeout`. The Deployment is watched from the version last read; pods
/// are read again at least every `options.poll`.
pub async fn wait_rollout(
    client: &Client,
    target: &KubernetesTarget,
    digest: Option<&str>,
    timeout: Duration,
    options: &KubeOptions,
) -> Result<RolloutDone, KubeError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &target.namespace);
    let what = format!("deployment `{}/{}`", target.namespace, target.deployment);
    let deadline = Instant::now() + timeout;
    let timed_out = |last: String| KubeError::Timeout {
        deployment: format!("{}/{}", target.namespace, target.deployment),
        of: digest
            .map(|d| format!(" of {}", short(d)))
            .unwrap_or_default(),
        timeout,
        last,
    };
    let mut last = String::from("nothing read yet");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(last));
        }
        let read = tokio::time::timeout(left, async {
            let deployment = api
                .get(&target.deployment)
                .await
                .map_err(|e| api_error(&what, e))?;
            let container = container_name(target, &deployment)?;
            let pods = pods_of(client, &target.namespace, &deployment).await?;
            Ok::<_, KubeError>((deployment, container, pods))
        })
        .await;
        let (deployment, container, pods) = match read {
            Err(_) => return Err(timed_out(last)),
            // The API server may be briefly unavailable mid-rollout (a
            // control-plane upgrade): say so and try again until the
            // deadline; a missing Deployment or refused credentials fail.
            Ok(Err(KubeError::Api {
                what,
                message,
                code,
            })) if transient(code) => {
                last = format!("{what}: {message}");
                tokio::time::sleep(options.poll.min(left)).await;
                continue;
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(read)) => read,
        };
        let template = template_image(&deployment, &container).map(str::to_owned);
        let name = format!("{}/{}", target.namespace, target.deployment);
        hopeless_pod(&name, &pods, &container, digest, template.as_deref())?;
        let judged = judge(&deployment, &container, digest).map_err(|e| match e {
            KubeError::ProgressDeadline {
                deployment,
                message,
                ..
            } => KubeError::ProgressDeadline {
                deployment,
                message,
                pods: describe_new_pods(&pods, &container, digest, template.as_deref()),
            },
            e => e,
        })?;
        match judged {
            Judgement::Done(done) => {
                // kubectl is satisfied; the pods must also all run the release.
                let others = pods
                    .iter()
                    .filter(|p| !runs(p, &container, digest, template.as_deref()))
                    .count();
                if others == 0 {
                    tracing::info!(deployment = %name, "{}", done.message);
                    return Ok(done);
                }
                last = format!("{others} pods still run another image");
            }
            Judgement::Waiting(why) => last = why,
        }
        tracing::debug!(deployment = %name, %last, "rollout not complete");
        // Wait for the Deployment to change (or the poll to pass).
        let version = deployment
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let wait = options
            .poll
            .min(deadline.saturating_duration_since(Instant::now()));
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", target.deployment))
            .timeout(wait.as_secs().clamp(1, 290) as u32);
        let until = tokio::time::Instant::now() + wait;
        let changed = tokio::time::timeout_at(until, async {
            let Ok(stream) = api.watch(&params, &version).await else {
                return false;
            };
            let mut stream = stream.boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Bookmark(_)) => continue,
                    Ok(WatchEvent::Error(_)) | Err(_) => return false,
                    Ok(_) => return true,
                }
            }
            false
        })
        .await;
        // A watch refused (no `watch` permission), expired (410) or ended
        // early must not turn this into a busy loop: wait out the poll.
        if !matches!(changed, Ok(true)) {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Errors worth another look before the deadline: the API server
/// unreachable or overloaded, not a refusal (401, 403) or a missing
/// object (404).
fn transient(code: Option<u16>) -> bool {
    !matches!(code, Some(401 | 403 | 404))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn base(status: serde_json::Value, generation: i64) -> Deployment {
        deployment(json!({
            "metadata": { "name": "gw", "generation": generation },
            "spec": {
                "replicas": 3,
                "selector": { "matchLabels": { "app": "gw" } },
                "template": { "spec": { "containers": [
                    { "name": "apitraffic", "image": "reg/gw@sha256:aaaa" }
                ] } }
            },
            "status": status
        }))
    }

    fn waiting(j: Judgement) -> String {
        match j {
            Judgement::Waiting(w) => w,
            Judgement::Done(d) => panic!("done: {d:?}"),
        }
    }

    #[test]
    fn judges_as_kubectl_does() {
        let d = base(json!({ "observedGeneration": 1 }), 2);
        assert!(waiting(judge(&d, "apitraffic", None).unwrap()).contains("spec update"));
        let d = base(
            json!({ "observedGeneration": 2, "replicas": 4, "updatedReplicas": 1 }),
            2,
        );
        assert!(waiting(judge(&d, "apitraffic", None).unwrap())
            .ends_with("1 out of 3 new replicas have been updated"));
        let d = base(
            json!({ "observedGeneration": 2, "replicas": 4, "updatedReplicas": 3 }),
            2,
        );
        assert!(waiting(judge(&d, "apitraffic", None).unwrap())
            .ends_with("1 old replicas are pending termination"));
        let d = base(
            json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2 }),
            2,
        );
        assert!(waiting(judge(&d, "apitraffic", None).unwrap())
            .ends_with("2 of 3 updated replicas are available"));
        let d = base(
            json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 }),
            2,
        );
        assert_eq!(
            judge(&d, "apitraffic", Some("sha256:aaaa")).unwrap(),
            Judgement::Done(RolloutDone {
                message: "deployment \"gw\" successfully rolled out".into(),
                replicas: 3
            })
        );
        // The template must name the release's digest.
        assert!(
            waiting(judge(&d, "apitraffic", Some("sha256:bbbb")).unwrap())
                .contains("still runs `reg/gw@sha256:aaaa`")
        );
    }

    #[test]
    fn a_passed_progress_deadline_fails_with_the_controllers_message() {
        let d = base(
            json!({ "observedGeneration": 2, "replicas": 4, "updatedReplicas": 1,
                "conditions": [{ "type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"gw-7d9\" has timed out progressing." }] }),
            2,
        );
        let e = judge(&d, "apitraffic", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deployment `gw` exceeded its progress deadline: ReplicaSet \"gw-7d9\" has timed out progressing."
        );
    }

    #[test]
    fn crash_looping_pods_of_the_release_fail_naming_the_reason_and_last_message() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "gw-1" },
            "spec": { "containers": [{ "name": "apitraffic", "image": "reg/gw@sha256:bbbb" }] },
            "status": { "containerStatuses": [{
                "name": "apitraffic", "image": "reg/gw@sha256:bbbb", "imageID": "", "ready": false,
                "restartCount": 3,
                "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container" } },
                "lastState": { "terminated": { "exitCode": 1, "message": "license file not found\n" } }
            }] }
        }))
        .unwrap();
        let e = hopeless_pod(
            "ns/gw",
            std::slice::from_ref(&pod),
            "apitraffic",
            Some("sha256:bbbb"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "pod `gw-1` of deployment `ns/gw` cannot run: container `apitraffic` is CrashLoopBackOff \
             (back-off 40s restarting failed container); last exit code 1: license file not found; 3 restarts"
        );
        // An old release's crash loop is not this release's failure.
        assert!(hopeless_pod("ns/gw", &[pod], "apitraffic", Some("sha256:cccc"), None).is_ok());
    }

    #[tokio::test]
    async fn in_a_pod_without_a_kubeconfig_the_service_account_is_used() {
        // No other test of this binary reads these variables.
        std::env::set_var("KUBERNETES_SERVICE_HOST", "10.96.0.1");
        std::env::set_var("KUBERNETES_SERVICE_PORT", "443");
        let target = KubernetesTarget {
            namespace: "ns".into(),
            deployment: "gw".into(),
            container: None,
            kubeconfig: None,
            timeout: None,
        };
        let outcome = client(&target).await;
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
        std::env::remove_var("KUBERNETES_SERVICE_PORT");
        // This machine is no pod: the service account's token is missing,
        // and the error says which configuration was tried.
        let Err(e) = outcome else {
            panic!("a service account token was found outside a pod");
        };
        assert!(
            e.to_string()
                .starts_with("kubeconfig: in-cluster configuration:"),
            "{e}"
        );
    }

    #[test]
    fn a_pod_with_several_containers_needs_one_named() {
        let d = deployment(json!({
            "metadata": { "name": "gw" },
            "spec": { "selector": {}, "template": { "spec": { "containers": [
                { "name": "a", "image": "x" }, { "name": "b", "image": "y" }
            ] } } }
        }));
        let target = KubernetesTarget {
            namespace: "ns".into(),
            deployment: "gw".into(),
            container: None,
            kubeconfig: None,
            timeout: None,
        };
        assert!(container_name(&target, &d)
            .unwrap_err()
            .to_string()
            .contains("has containers a, b: name one with `container`"));
        let named = KubernetesTarget {
            container: Some("c".into()),
            ..target
        };
        assert!(container_name(&named, &d)
            .unwrap_err()
            .to_string()
            .contains("has no container `c` (it has a, b)"));
    }
}
