//! `deploy.kubernetes` / `ready.kubernetes` against the Kubernetes API
//! double (`gantry_tests::kubernetes`), each judgement checked against a
//! real `kubectl rollout status` on the same Deployment.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gantry_deployer::kubernetes::{client, set_image, wait_rollout, FIELD_MANAGER};
use gantry_deployer::{KubeError, KubeOptions};
use gantry_pipeline::{KubernetesTarget, SecretRef};
use gantry_tests::kubernetes::{KubeDouble, Rollout};

const NS: &str = "apim";
const NAME: &str = "apitraffic";
const OLD: &str = "registry.example.com/apim/gw@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn new_image() -> String {
    format!("registry.example.com/apim/gw@{DIGEST}")
}

fn target(kubeconfig: &Path) -> KubernetesTarget {
    KubernetesTarget {
        namespace: NS.into(),
        deployment: NAME.into(),
        container: Some("apitraffic".into()),
        kubeconfig: Some(SecretRef::File(kubeconfig.to_owned())),
        timeout: None,
    }
}

fn fast() -> KubeOptions {
    KubeOptions {
        poll: Duration::from_millis(200),
    }
}

/// `kubectl rollout status` on the same Deployment: exit success and
/// output. On a blocking thread: the double is served by this runtime.
async fn kubectl_rollout_status(kubeconfig: &Path, timeout: &str) -> (bool, String) {
    let mut command = Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["rollout", "status", "-n", NS])
        .arg(format!("deployment/{NAME}"))
        .arg(format!("--timeout={timeout}"));
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn cluster(rollout: Rollout) -> (KubeDouble, tempfile::TempDir, std::path::PathBuf) {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, NAME, "apitraffic", OLD, 2);
    kube.set_rollout(NS, NAME, rollout);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path()).unwrap();
    (kube, dir, kubeconfig)
}

#[tokio::test]
async fn a_progressive_rollout_is_complete_when_kubectl_says_so_and_the_pods_run_the_digest() {
    let (kube, _dir, kubeconfig) = cluster(Rollout::Progressive {
        step: Duration::from_millis(400),
    })
    .await;
    let t = target(&kubeconfig);
    let c = client(&t).await.unwrap();
    set_image(&c, &t, &new_image()).await.unwrap();
    let done = wait_rollout(&c, &t, Some(DIGEST), Duration::from_secs(60), &fast())
        .await
        .unwrap();
    let returned = Instant::now();
    assert_eq!(
        done.message,
        format!("deployment \"{NAME}\" successfully rolled out")
    );
    assert_eq!(done.replicas, 2);
    let completed = kube
        .rollout_completed_at(NS, NAME, &new_image())
        .expect("the double completed the rollout");
    assert!(
        completed <= returned,
        "Gantry answered before the rollout completed"
    );

    // kubectl agrees, and the image is set by a server-side apply of Gantry's.
    let (ok, said) = kubectl_rollout_status(&kubeconfig, "10s").await;
    assert!(ok && said.contains("successfully rolled out"), "{said}");
    let patch = kube.patches().into_iter().last().expect("a patch");
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(patch.field_manager.as_deref(), Some(FIELD_MANAGER));
    assert!(patch.force && patch.body.contains(DIGEST), "{patch:?}");
    let deployment = kube.deployment(NS, NAME).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        new_image()
    );
    for pod in kube.pods(NS) {
        assert_eq!(pod["spec"]["containers"][0]["image"], new_image(), "{pod}");
    }
}

#[tokio::test]
async fn a_stuck_rollout_fails_with_the_progress_deadline_as_kubectl_does() {
    let (kube, _dir, kubeconfig) = cluster(Rollout::Stuck {
        deadline: Duration::from_secs(1),
    })
    .await;
    let t = target(&kubeconfig);
    let c = client(&t).await.unwrap();
    set_image(&c, &t, &new_image()).await.unwrap();
    let err = wait_rollout(&c, &t, Some(DIGEST), Duration::from_secs(60), &fast())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KubeError::ProgressDeadline { .. }), "{text}");
    assert!(
        text.starts_with(&format!(
            "deployment `{NAME}` exceeded its progress deadline: ReplicaSet"
        )) && text.contains("has timed out progressing"),
        "{text}"
    );
    // What the new pod waits for is named: running, never ready.
    assert!(text.contains("running, not ready"), "{text}");

    let (ok, said) = kubectl_rollout_status(&kubeconfig, "10s").await;
    assert!(
        !ok && said.contains("exceeded its progress deadline"),
        "{said}"
    );
    drop(kube);
}

#[tokio::test]
async fn a_crash_looping_release_fails_at_once_with_the_pods_reason_and_last_message() {
    let (_kube, _dir, kubeconfig) = cluster(Rollout::CrashLoop {
        message: "licence file /opt/Axway/apigateway/conf/licenses/lic.lic not found".into(),
    })
    .await;
    let t = target(&kubeconfig);
    let c = client(&t).await.unwrap();
    set_image(&c, &t, &new_image()).await.unwrap();
    let started = Instant::now();
    let err = wait_rollout(&c, &t, Some(DIGEST), Duration::from_secs(120), &fast())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KubeError::PodFailing { .. }), "{text}");
    assert!(
        text.contains("container `apitraffic` is CrashLoopBackOff"),
        "{text}"
    );
    assert!(
        text.contains(
            "last exit code 1: licence file /opt/Axway/apigateway/conf/licenses/lic.lic not found"
        ),
        "{text}"
    );
    // Not by running into the deadline.
    assert!(started.elapsed() < Duration::from_secs(60));
    // kubectl, which does not look at pods, cannot call it complete either.
    let (ok, said) = kubectl_rollout_status(&kubeconfig, "3s").await;
    assert!(!ok, "{said}");
}

#[tokio::test]
async fn a_rollout_of_another_image_is_not_this_releases() {
    // The template still names the old image (GitOps not applied yet):
    // kubectl calls the old rollout complete, Gantry waits for the digest.
    let (_kube, _dir, kubeconfig) = cluster(Rollout::Immediate).await;
    let t = target(&kubeconfig);
    let c = client(&t).await.unwrap();
    let err = wait_rollout(&c, &t, Some(DIGEST), Duration::from_secs(2), &fast())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KubeError::Timeout { .. }), "{text}");
    assert!(text.contains("still runs"), "{text}");
    let (ok, said) = kubectl_rollout_status(&kubeconfig, "10s").await;
    assert!(ok, "{said}");
}

#[tokio::test]
async fn a_missing_deployment_or_a_bad_kubeconfig_fails_clearly() {
    let (_kube, dir, kubeconfig) = cluster(Rollout::Immediate).await;
    let mut t = target(&kubeconfig);
    t.deployment = "nope".into();
    let c = client(&t).await.unwrap();
    let err = set_image(&c, &t, &new_image()).await.unwrap_err();
    assert!(err.to_string().contains("deployment `apim/nope`"), "{err}");
    assert!(err.to_string().contains("NotFound"), "{err}");

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "clusters: [not a kubeconfig").unwrap();
    let Err(err) = client(&target(&garbage)).await else {
        panic!("a kubeconfig that is no YAML was taken");
    };
    assert!(err.to_string().starts_with("kubeconfig: file:"), "{err}");
}

#[tokio::test]
async fn nothing_is_applied_once_the_deploys_deadline_has_passed() {
    use gantry_deployer::{DeployOutcome, Deployer};
    use gantry_pipeline::{parse_str, PipelineSet};
    use gantry_proto::events::StageStarted;
    use gantry_runtime::runtime::Pipelines;
    use gantry_runtime::WorkerContext;

    let (kube, dir, kubeconfig) = cluster(Rollout::Immediate).await;
    let yaml = format!(
        "name: banking\nsource: {{ repo: /srv/git/b.git }}\ngateway: {{ format: yaml, path: g/ }}\n\
         image: {{ base: registry.example.com/axway/apigw-emt:7.7, repository: registry.example.com/apim/gw }}\n\
         stages:\n  - name: test\n    deploy:\n      kubernetes: {{ namespace: {NS}, deployment: {NAME}, container: apitraffic, kubeconfig: file:{} }}\n",
        kubeconfig.display()
    );
    let mut set = PipelineSet::new();
    set.insert(
        parse_str("banking.yaml", &yaml).unwrap_or_else(|e| panic!("{e}")),
        None,
    );
    let ctx = WorkerContext::local(Pipelines::new(set.clone()), dir.path())
        .await
        .unwrap();
    let deployer = Deployer::new(&ctx);
    let pipeline = set.get("banking").unwrap().clone();
    let started = StageStarted {
        stage: "test".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        image: None,
        digest: Some(DIGEST.into()),
        rollback: false,
    };
    let past = Instant::now() - Duration::from_millis(1);
    let outcome = deployer
        .deploy_by(&pipeline, "run-1", &started, Some(past))
        .await;
    let Some(DeployOutcome::Failed(failed)) = outcome else {
        panic!("deployed after the deadline: {outcome:?}");
    };
    assert_eq!(
        failed.reason,
        "the deploy's deadline passed before the image was set"
    );
    assert!(kube.patches().is_empty(), "{:?}", kube.patches());

    // Before its deadline the same deploy sets the digest.
    let later = Instant::now() + Duration::from_secs(60);
    let outcome = deployer
        .deploy_by(&pipeline, "run-1", &started, Some(later))
        .await;
    assert!(
        matches!(outcome, Some(DeployOutcome::Completed(_))),
        "{outcome:?}"
    );
    assert_eq!(kube.patches().len(), 1);
}
