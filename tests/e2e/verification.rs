//! The stage really runs the release (DESIGN.md 1.10), with `gantry up` as
//! a user runs it against the Kubernetes and Argo CD doubles of
//! `gantry_tests` (neither can run here):
//!
//! - a GitOps deploy whose rollout completes only after a delay is not
//!   smoke-tested before it completes (`ready.kubernetes`);
//! - `deploy.kubernetes` sets the digest, a stuck rollout fails the stage
//!   with the controller's reason, and the rollback sets the previous digest;
//! - an Argo CD application Degraded at the deploy commit fails the stage
//!   (`ready.argocd`), and the rollback waits for Argo CD too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::routing::get;
use gantry_tests::argocd::{AppState, ArgoDouble, HealthStatus, SyncStatus};
use gantry_tests::kubernetes::{KubeDouble, Rollout};
use gantry_tests::{GitRepo, Registry};
use serde_json::{json, Value};

const NS: &str = "apim";
const NAME: &str = "apitraffic";
const VALUES: &str = "apitraffic:\n  image: registry.example.com/apim/banking-gateway:old\n";

fn find<'a>(events: &'a Value, name: &str) -> Option<&'a Value> {
    events
        .as_array()?
        .iter()
        .find(|e| e["type"] == format!("io.gantry.{name}.v1"))
}

fn digest_of(events: &Value) -> String {
    find(events, "image.pushed").expect("image.pushed")["data"]["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The deploy repository's `main` (sha) and its values file, read with git.
fn deploy_head(deploy: &std::path::Path) -> Option<(String, String)> {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(deploy)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    Some((
        git(&["rev-parse", "main"])?,
        git(&["show", "main:envs/test/values.yaml"])?,
    ))
}

/// A GitOps controller: runs `apply(revision, image)` for each new commit
/// of the deploy repository, until `stop`.
fn follow_gitops(
    deploy: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    mut apply: impl FnMut(&str, &str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seen = String::new();
        while !stop.load(Ordering::SeqCst) {
            if let Some((head, values)) = deploy_head(&deploy) {
                if head != seen {
                    let image = values
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("image:"))
                        .map(|i| i.split('#').next().unwrap_or(i).trim().to_owned())
                        .unwrap_or_default();
                    apply(&head, &image);
                    seen = head;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// A gateway whose `/healthcheck` answers at once and records when it was asked.
async fn gateway() -> (std::net::SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let app = axum::Router::new().route(
        "/healthcheck",
        get(move || {
            log.lock().unwrap().push(Instant::now());
            async { "ok" }
        }),
    );
    (serve_http(app).await, asked)
}

async fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitops_rollout_that_completes_late_is_smoke_tested_only_after_it_completes() {
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let deploy = seeded_deploy_repo(&[("envs/test/values.yaml", VALUES)]);
    let kube = Arc::new(KubeDouble::start().await.unwrap());
    kube.add_deployment(
        NS,
        NAME,
        "apitraffic",
        "registry.example.com/apim/banking-gateway:old",
        3,
    );
    // Each of the three pods is replaced 600 ms after the last.
    kube.set_rollout(
        NS,
        NAME,
        Rollout::Progressive {
            step: Duration::from_millis(600),
        },
    );
    let kube_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(kube_dir.path()).unwrap();
    // The cluster applies what the deploy repository says, as Argo CD or Flux would.
    let stop = Arc::new(AtomicBool::new(false));
    let cluster = kube.clone();
    let controller = follow_gitops(deploy.path().to_owned(), stop.clone(), move |_, image| {
        if image.contains('@') {
            cluster.set_image(NS, NAME, "apitraffic", image);
        }
    });
    let (gw, asked) = gateway().await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready:\n      kubernetes: {{ namespace: {NS}, deployment: {NAME}, container: apitraffic, kubeconfig: file:{kubeconfig} }}\n\
             \x20     url: http://{gw}/healthcheck\n      timeout: 60s\n\
             \x20   smoke:\n      - name: gateway is healthy\n        request: {{ url: http://{gw}/healthcheck }}\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
            kubeconfig = kubeconfig.display(),
        ),
    );
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    gantry.watch(registry.storage_dir());
    gantry.watch(deploy.path());
    let base = gantry.url();
    let run = push_local_commit(
        &base,
        &repo,
        &first,
        json!({ "name": "Dev", "email": "dev@example.com" }),
    )
    .await;
    let view = wait_run_ended(&base, &run, Duration::from_secs(120), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run}/events")).await;
    stop.store(true, Ordering::SeqCst);
    controller.join().unwrap();
    assert_eq!(view["status"], "succeeded", "{view}\n{events:#}");

    let image = format!(
        "{}/apim/banking-gateway@{}",
        registry.host_port(),
        digest_of(&events)
    );
    let completed = kube
        .rollout_completed_at(NS, NAME, &image)
        .expect("the rollout of the release completed");
    // Nothing asked the gateway before the rollout was complete: not
    // `ready.url` (polled after the rollout), not the smoke check.
    let asked = asked.lock().unwrap().clone();
    assert!(asked.len() >= 2, "{asked:?}");
    assert!(
        asked.iter().all(|t| *t >= completed),
        "the gateway was asked during the rollout"
    );

    // kubectl agrees: the rollout of this digest is complete.
    let (ok, said) = kubectl(
        &kubeconfig,
        &[
            "rollout",
            "status",
            "-n",
            NS,
            &format!("deployment/{NAME}"),
            "--timeout=10s",
        ],
    )
    .await;
    assert!(ok && said.contains("successfully rolled out"), "{said}");
    let (_, template) = kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment",
            NAME,
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await;
    assert_eq!(template, image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_kubernetes_sets_the_digest_and_a_stuck_rollout_rolls_back_by_digest() {
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let kube = Arc::new(KubeDouble::start().await.unwrap());
    kube.add_deployment(
        NS,
        NAME,
        "apitraffic",
        "registry.example.com/apim/banking-gateway:old",
        2,
    );
    let kube_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(kube_dir.path()).unwrap();
    let (gw, _) = gateway().await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      kubernetes: {{ namespace: {NS}, deployment: {NAME}, container: apitraffic, kubeconfig: file:{kubeconfig}, timeout: 60s }}\n\
             \x20   smoke:\n      - name: gateway is healthy\n        request: {{ url: http://{gw}/healthcheck }}\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            kubeconfig = kubeconfig.display(),
        ),
    );
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    gantry.watch(registry.storage_dir());
    let base = gantry.url();
    let author = json!({ "name": "Dev", "email": "dev@example.com" });
    let repository = format!("{}/apim/banking-gateway", registry.host_port());
    let template_image = || {
        kube.deployment(NS, NAME).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // A release that rolls out: Gantry set the digest, by its own server-side apply.
    let run1 = push_local_commit(&base, &repo, &first, author.clone()).await;
    let view = wait_run_ended(&base, &run1, Duration::from_secs(120), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run1}/events")).await;
    assert_eq!(view["status"], "succeeded", "{view}\n{events:#}");
    let digest1 = digest_of(&events);
    assert_eq!(template_image(), format!("{repository}@{digest1}"));
    let applies: Vec<_> = kube
        .patches()
        .into_iter()
        .filter(|p| p.field_manager.as_deref() == Some("gantry"))
        .collect();
    assert_eq!(applies.len(), 1, "{applies:?}");
    assert_eq!(applies[0].content_type, "application/apply-patch+yaml");
    assert!(applies[0].force && applies[0].body.contains(&digest1));
    let completed = find(&events, "deploy.completed").unwrap();
    assert_eq!(
        completed["data"]["output"],
        format!("deployment \"{NAME}\" successfully rolled out")
    );

    // The next release's pods never become ready; once the rollback's own
    // apply arrives the cluster behaves again.
    kube.set_rollout(
        NS,
        NAME,
        Rollout::Stuck {
            deadline: Duration::from_secs(2),
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (cluster, halt) = (kube.clone(), stop.clone());
    let healer = std::thread::spawn(move || {
        while !halt.load(Ordering::SeqCst) {
            let applies = cluster
                .patches()
                .iter()
                .filter(|p| p.field_manager.as_deref() == Some("gantry"))
                .count();
            if applies >= 3 {
                cluster.set_rollout(NS, NAME, Rollout::Immediate);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    repo.write("gateway/values.yaml", "---\nsecond: true\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let run2 = push_local_commit(&base, &repo, &second, author).await;
    let view = wait_run_ended(&base, &run2, Duration::from_secs(120), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run2}/events")).await;
    stop.store(true, Ordering::SeqCst);
    healer.join().unwrap();
    assert_eq!(view["status"], "failed", "{view}\n{events:#}");
    let digest2 = digest_of(&events);
    let failed = &find(&events, "deploy.failed").expect("deploy.failed")["data"];
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "deployment `{NAME}` exceeded its progress deadline"
        )) && reason.contains("has timed out progressing")
            && reason.contains("running, not ready"),
        "{reason}"
    );
    assert!(
        find(&events, "smoke.passed").is_none(),
        "a stuck release is not smoke-tested"
    );
    let rolled = find(&events, "stage.rolled_back").expect("stage.rolled_back");
    assert_eq!(rolled["data"]["to_run"], run1.as_str(), "{rolled}");

    // Rolled back by digest: the stuck release's apply, then the first's again.
    let applied: Vec<String> = kube
        .patches()
        .into_iter()
        .filter(|p| p.field_manager.as_deref() == Some("gantry"))
        .map(|p| p.body)
        .collect();
    assert_eq!(applied.len(), 3, "{applied:?}");
    assert!(
        applied[1].contains(&digest2) && applied[2].contains(&digest1),
        "{applied:?}"
    );
    assert_eq!(template_image(), format!("{repository}@{digest1}"));
    let (ok, said) = kubectl(
        &kubeconfig,
        &[
            "rollout",
            "status",
            "-n",
            NS,
            &format!("deployment/{NAME}"),
            "--timeout=10s",
        ],
    )
    .await;
    assert!(ok, "{said}");
    let pipeline = get_json(&base, "/api/v1/pipelines/banking").await;
    assert_eq!(
        pipeline["stages"][0]["current"]["digest"],
        digest1.as_str(),
        "{pipeline}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argo_cd_application_degraded_at_the_deploy_commit_fails_the_stage() {
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let deploy = seeded_deploy_repo(&[("envs/test/values.yaml", VALUES)]);
    let argo = Arc::new(ArgoDouble::start("argo-token-1").await.unwrap());
    // Argo CD syncs each commit; the second deploy's leaves the app Degraded.
    let stop = Arc::new(AtomicBool::new(false));
    let app = argo.clone();
    let mut commits = 0;
    let controller = follow_gitops(deploy.path().to_owned(), stop.clone(), move |head, _| {
        commits += 1;
        let degraded = commits == 3; // seed, first release, second release
        app.set_app(
            "banking-test",
            AppState {
                sync: SyncStatus::Synced,
                revision: head.to_owned(),
                health: if degraded {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Healthy
                },
                health_message: degraded
                    .then(|| "Deployment \"apitraffic\" exceeded its progress deadline".to_owned()),
                ..AppState::default()
            },
        );
    });
    let (gw, _) = gateway().await;

    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!(
            "{head}\
             image:\n  base: {base_image}\n  repository: {registry}/apim/banking-gateway\n\
             stages:\n  - name: test\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/test/values.yaml, key: apitraffic.image }}\n\
             \x20   ready:\n      argocd: {{ url: {argo}, app: banking-test, token: env:ARGOCD_TOKEN }}\n      timeout: 60s\n\
             \x20   smoke:\n      - name: gateway is healthy\n        request: {{ url: http://{gw}/healthcheck }}\n",
            head = banking(repo.path().display()),
            registry = registry.host_port(),
            deploy = deploy.path().display(),
            argo = argo.url(),
        ),
    );
    let mut gantry = Gantry::start(dir.path(), &["up"], &[("ARGOCD_TOKEN", "argo-token-1")]).await;
    gantry.watch(registry.storage_dir());
    gantry.watch(deploy.path());
    let base = gantry.url();
    let author = json!({ "name": "Dev", "email": "dev@example.com" });

    let run1 = push_local_commit(&base, &repo, &first, author.clone()).await;
    let view = wait_run_ended(&base, &run1, Duration::from_secs(120), || gantry.log_text()).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    // Asked with the token, the first time with a refresh.
    let asked = argo.recorded();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.authorized),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|r| r.refresh.as_deref() == Some("normal")),
        "{asked:?}"
    );

    repo.write("gateway/values.yaml", "---\nsecond: true\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let run2 = push_local_commit(&base, &repo, &second, author).await;
    let view = wait_run_ended(&base, &run2, Duration::from_secs(120), || gantry.log_text()).await;
    let events = get_json(&base, &format!("/api/v1/runs/{run2}/events")).await;
    stop.store(true, Ordering::SeqCst);
    controller.join().unwrap();
    assert_eq!(view["status"], "failed", "{view}\n{events:#}");
    let reason = find(&events, "deploy.failed").expect("deploy.failed")["data"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("not ready: Argo CD application `banking-test` is Degraded at ")
            && reason.ends_with("Deployment \"apitraffic\" exceeded its progress deadline"),
        "{reason}"
    );
    assert!(find(&events, "smoke.passed").is_none());
    // The rollback's commit synced Healthy: the stage is back on the first release.
    let rolled = find(&events, "stage.rolled_back").expect("stage.rolled_back");
    assert_eq!(rolled["data"]["to_run"], run1.as_str(), "{rolled}");
    assert!(!events.to_string().contains("argo-token-1"));
}
