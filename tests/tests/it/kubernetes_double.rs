//! The Kubernetes API double (`gantry_tests::kubernetes`) checked against
//! the real `kubectl` (discovery, `get`, `set image`, `rollout status`) and
//! plain HTTP (server-side apply, the other patch types, watch), and the
//! Argo CD double (`gantry_tests::argocd`).
//!
//! Timings are generous: the machine is a loaded two-core box.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use gantry_tests::argocd::{AppState, ArgoDouble, HealthStatus, OperationPhase, SyncStatus};
use gantry_tests::kubernetes::{KubeDouble, Rollout};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

const NS: &str = "shop";
const DEPLOY: &str = "gw";
const CONTAINER: &str = "gateway";
const IMAGE_V1: &str = "registry.example.com/axway/gateway:7.7.20240830";

/// Every wait's bound.
const WAIT: Duration = Duration::from_secs(60);

fn digest_image(n: u8) -> String {
    format!(
        "registry.example.com/axway/gateway@sha256:{}",
        format!("{n:02x}").repeat(32)
    )
}

/// The real kubectl with a kubeconfig for the double and a private cache.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    dir: TempDir,
}

impl Kubectl {
    fn new(kube: &KubeDouble) -> Kubectl {
        let bin = std::env::var_os("GANTRY_TEST_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
        assert!(
            bin.is_file(),
            "kubectl not found at {} (set GANTRY_TEST_KUBECTL)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = kube.write_kubeconfig(dir.path()).expect("kubeconfig");
        Kubectl {
            bin,
            kubeconfig,
            dir,
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 120 s"))
            .expect("running kubectl")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn container_image(d: &Value) -> String {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == CONTAINER))
        .and_then(|c| c["image"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn condition<'a>(d: &'a Value, kind: &str) -> &'a Value {
    d["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

/// Polls `check` every 100 ms until it returns `Some`, panicking after [`WAIT`].
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
}

fn deployment_url(kube: &KubeDouble) -> String {
    format!(
        "{}/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOY}",
        kube.url()
    )
}

/// Reads a watch stream to its end (the server closes it after
/// `timeoutSeconds`, or after an ERROR event); returns its events.
async fn read_watch(kube: &KubeDouble, url: &str) -> Vec<Value> {
    let resp = http()
        .get(url)
        .bearer_auth(kube.token())
        .send()
        .await
        .expect("watch request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body = resp.text().await.expect("watch body");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l:?}: {e}")))
        .collect()
}

// ---------------------------------------------------------------------------
// kubectl

#[tokio::test]
async fn kubectl_get_reads_deployments_and_pods() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 2);
    let kubectl = Kubectl::new(&kube);

    let out = kubectl
        .run(&["get", "deployment", "-n", NS, DEPLOY, "-o", "json"])
        .await;
    assert!(out.status.success(), "kubectl get failed: {}", stderr(&out));
    let d: Value = serde_json::from_slice(&out.stdout).expect("kubectl printed JSON");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["metadata"]["name"], DEPLOY);
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(container_image(&d), IMAGE_V1);
    assert_eq!(d["status"]["observedGeneration"], 1);
    assert_eq!(d["status"]["replicas"], 2);
    assert_eq!(d["status"]["updatedReplicas"], 2);
    assert_eq!(d["status"]["readyReplicas"], 2);
    assert_eq!(d["status"]["availableReplicas"], 2);
    assert_eq!(condition(&d, "Available")["status"], "True");
    assert_eq!(
        condition(&d, "Progressing")["reason"],
        "NewReplicaSetAvailable"
    );

    // The human-readable table, through the short name.
    let out = kubectl.run(&["get", "deploy", "-n", NS]).await;
    assert!(
        out.status.success(),
        "kubectl get deploy failed: {}",
        stderr(&out)
    );
    let table = stdout(&out);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "table:\n{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], [DEPLOY, "2/2", "2", "2"], "table:\n{table}");
    let out = kubectl.run(&["get", "pods", "-n", NS, "-o", "wide"]).await;
    assert!(
        out.status.success(),
        "kubectl get pods failed: {}",
        stderr(&out)
    );
    let table = stdout(&out);
    assert_eq!(table.lines().count(), 3, "table:\n{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[1..4], ["1/1", "Running", "0"], "table:\n{table}");
    assert_eq!(row[6], "gantry-test-node", "table:\n{table}");

    let out = kubectl
        .run(&[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            &format!("app={DEPLOY}"),
            "-o",
            "json",
        ])
        .await;
    assert!(
        out.status.success(),
        "kubectl get pods failed: {}",
        stderr(&out)
    );
    let pods: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for p in items {
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["name"], CONTAINER);
        assert_eq!(cs["image"], IMAGE_V1);
        assert_eq!(cs["ready"], true);
        assert!(cs["state"]["running"].is_object());
        assert!(cs["imageID"]
            .as_str()
            .unwrap()
            .starts_with("docker-pullable://registry.example.com/axway/gateway@sha256:"));
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert!(p["metadata"]["labels"]["pod-template-hash"].is_string());
    }

    // Not found: kubectl shows the Status message.
    let out = kubectl.run(&["get", "deployment", "-n", NS, "nope"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"deployments.apps "nope" not found"#),
        "stderr: {}",
        stderr(&out)
    );

    // Without the token: 401 Status.
    let resp = http().get(deployment_url(&kube)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    assert_eq!(status["code"], 401);
    // With it, an unknown name: 404 Status.
    let resp = http()
        .get(format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments/nope",
            kube.url()
        ))
        .bearer_auth(kube.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["details"]["group"], "apps");
}

#[tokio::test]
async fn kubectl_set_image_and_rollout_status_wait_for_a_progressive_rollout() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 2);
    let step = Duration::from_millis(1500);
    kube.set_rollout(NS, DEPLOY, Rollout::Progressive { step });
    let kubectl = Kubectl::new(&kube);
    let image = digest_image(0xab);

    let started = Instant::now();
    let out = kubectl
        .run(&[
            "set",
            "image",
            &format!("deployment/{DEPLOY}"),
            &format!("{CONTAINER}={image}"),
            "-n",
            NS,
        ])
        .await;
    assert!(
        out.status.success(),
        "kubectl set image failed: {}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!("deployment.apps/{DEPLOY} image updated")),
        "stdout: {}",
        stdout(&out)
    );
    let patches = kube.patches();
    let p = patches.last().expect("kubectl sent a patch");
    assert_eq!(p.content_type, "application/strategic-merge-patch+json");
    assert_eq!(p.resource, "deployments");
    assert_eq!((p.namespace.as_str(), p.name.as_str()), (NS, DEPLOY));
    assert_eq!(p.field_manager.as_deref(), Some("kubectl-set"));
    assert_eq!(p.status, 200);
    let body: Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        image.as_str()
    );

    let d = kube.deployment(NS, DEPLOY).unwrap();
    assert_eq!(container_image(&d), image);
    assert_eq!(d["metadata"]["generation"], 2);
    // Not complete yet: the rollout takes several steps.
    assert!(kube.rollout_completed_at(NS, DEPLOY, &image).is_none());

    let out = kubectl
        .run(&[
            "rollout",
            "status",
            &format!("deployment/{DEPLOY}"),
            "-n",
            NS,
            "--timeout=90s",
        ])
        .await;
    let exited = Instant::now();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "rollout status failed: {}\n{text}",
        stderr(&out)
    );
    assert!(
        text.contains(&format!(
            "Waiting for deployment \"{DEPLOY}\" rollout to finish: 1 out of 2 new replicas have been updated..."
        )),
        "stdout:\n{text}"
    );
    assert!(
        text.trim_end()
            .ends_with(&format!("deployment \"{DEPLOY}\" successfully rolled out")),
        "stdout:\n{text}"
    );
    let completed = kube
        .rollout_completed_at(NS, DEPLOY, &image)
        .expect("the double recorded the completion");
    assert!(
        completed <= exited,
        "kubectl returned before the rollout completed"
    );
    // Observation lag plus three steps for two replicas.
    assert!(
        completed.duration_since(started) >= step * 3,
        "completed after {:?}",
        completed.duration_since(started)
    );

    // What kubectl saw is what the double holds now.
    let d = kube.deployment(NS, DEPLOY).unwrap();
    assert_eq!(d["status"]["observedGeneration"], 2);
    assert_eq!(d["status"]["updatedReplicas"], 2);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let pods = kube.pods(NS);
    assert_eq!(pods.len(), 2, "old pods are gone");
    for p in &pods {
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["image"], image.as_str());
        assert_eq!(
            cs["imageID"],
            format!(
                "docker-pullable://registry.example.com/axway/gateway@sha256:{}",
                "ab".repeat(32)
            )
            .as_str()
        );
        assert_eq!(cs["ready"], true);
    }
    let rses = kube.replica_sets(NS);
    assert_eq!(rses.len(), 2, "the old ReplicaSet stays, scaled to 0");
    let old = rses
        .iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1")
        .unwrap();
    assert_eq!(old["spec"]["replicas"], 0);
    assert_eq!(old["metadata"]["ownerReferences"][0]["name"], DEPLOY);
}

#[tokio::test]
async fn kubectl_rollout_status_fails_on_an_exceeded_progress_deadline() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 2);
    kube.set_rollout(
        NS,
        DEPLOY,
        Rollout::Stuck {
            deadline: Duration::from_secs(3),
        },
    );
    let image = digest_image(0xcd);
    kube.set_image(NS, DEPLOY, CONTAINER, &image);
    let kubectl = Kubectl::new(&kube);

    let out = kubectl
        .run(&[
            "rollout",
            "status",
            &format!("deployment/{DEPLOY}"),
            "-n",
            NS,
            "--timeout=90s",
        ])
        .await;
    assert!(
        !out.status.success(),
        "rollout status succeeded:\n{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains(&format!(
            "deployment \"{DEPLOY}\" exceeded its progress deadline"
        )),
        "stderr: {}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("1 out of 2 new replicas have been updated"),
        "stdout:\n{}",
        stdout(&out)
    );

    let d = kube.deployment(NS, DEPLOY).unwrap();
    let progressing = condition(&d, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
    let new_rs = kube
        .replica_sets(NS)
        .into_iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2")
        .unwrap();
    assert_eq!(
        progressing["message"],
        format!(
            "ReplicaSet \"{}\" has timed out progressing.",
            new_rs["metadata"]["name"].as_str().unwrap()
        )
        .as_str()
    );
    // The old pods still serve; the new one runs but is not ready.
    assert_eq!(condition(&d, "Available")["status"], "True");
    let pods = kube.pods(NS);
    assert_eq!(pods.len(), 3);
    let new_pod = pods
        .iter()
        .find(|p| p["spec"]["containers"][0]["image"] == image.as_str())
        .unwrap();
    let cs = &new_pod["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], false);
    assert!(cs["state"]["running"].is_object());

    // Unstuck: the same rollout completes.
    kube.set_rollout(NS, DEPLOY, Rollout::Immediate);
    wait_for("the rollout to complete once unstuck", || {
        kube.rollout_completed_at(NS, DEPLOY, &image)
    })
    .await;
    let out = kubectl
        .run(&[
            "rollout",
            "status",
            &format!("deployment/{DEPLOY}"),
            "-n",
            NS,
            "--timeout=60s",
        ])
        .await;
    assert!(out.status.success(), "rollout status: {}", stderr(&out));
}

#[tokio::test]
async fn crash_looping_pods_report_back_off_and_restarts() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 1);
    let message = "gateway: cannot read /opt/Axway/apigateway/conf/fed: no such file";
    kube.set_rollout(
        NS,
        DEPLOY,
        Rollout::CrashLoop {
            message: message.into(),
        },
    );
    let image = digest_image(0xef);
    kube.set_image(NS, DEPLOY, CONTAINER, &image);

    let cs = wait_for("a restart count of 2", || {
        kube.pods(NS).into_iter().find_map(|p| {
            let cs = p["status"]["containerStatuses"][0].clone();
            (cs["image"] == image.as_str() && cs["restartCount"].as_u64() >= Some(2)).then_some(cs)
        })
    })
    .await;
    assert_eq!(cs["ready"], false);
    assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
    let waiting = cs["state"]["waiting"]["message"].as_str().unwrap();
    assert!(
        waiting.starts_with("back-off ")
            && waiting.contains(&format!("restarting failed container={CONTAINER}")),
        "{waiting}"
    );
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(cs["lastState"]["terminated"]["message"], message);

    let d = kube.deployment(NS, DEPLOY).unwrap();
    assert_eq!(d["status"]["updatedReplicas"], 1);
    assert_eq!(d["status"]["replicas"], 2);
    assert_eq!(condition(&d, "Progressing")["reason"], "ReplicaSetUpdated");
    assert!(kube.rollout_completed_at(NS, DEPLOY, &image).is_none());

    // kubectl keeps waiting (the deadline is 600 s): its own timeout ends it.
    let kubectl = Kubectl::new(&kube);
    let out = kubectl
        .run(&[
            "rollout",
            "status",
            &format!("deployment/{DEPLOY}"),
            "-n",
            NS,
            "--timeout=3s",
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("1 old replicas are pending termination"),
        "stdout:\n{}",
        stdout(&out)
    );
}

// ---------------------------------------------------------------------------
// Plain HTTP: apply, patches, watch

fn apply_body(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\n\
         kind: Deployment\n\
         metadata:\n  name: {DEPLOY}\n  namespace: {NS}\n\
         spec:\n  template:\n    spec:\n      containers:\n      - name: {CONTAINER}\n        image: \"{image}\"\n"
    )
}

async fn send_apply(kube: &KubeDouble, query: &str, body: String) -> reqwest::Response {
    http()
        .patch(format!("{}?{query}", deployment_url(kube)))
        .bearer_auth(kube.token())
        .header("Content-Type", "application/apply-patch+yaml")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn server_side_apply_changes_only_the_image_and_records_its_manager() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 2);
    let client = http();

    // A sidecar added with a strategic merge patch: merged by name.
    let resp = client
        .patch(deployment_url(&kube))
        .bearer_auth(kube.token())
        .header("Content-Type", "application/strategic-merge-patch+json")
        .body(r#"{"spec":{"template":{"spec":{"containers":[{"name":"log-shipper","image":"fluent-bit:3.0"}]}}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let d: Value = resp.json().await.unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(container_image(&d), IMAGE_V1);
    let before = d;

    let image = digest_image(0x42);
    // No fieldManager: 400.
    let resp = send_apply(&kube, "force=true", apply_body(&image)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // kubectl-create owns the image: a conflict without force.
    let resp = send_apply(&kube, "fieldManager=gantry", apply_body(&image)).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["reason"], "Conflict");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(r#"conflict with "kubectl-create""#)
            && message.contains(&format!(
                ".spec.template.spec.containers[name=\"{CONTAINER}\"].image"
            )),
        "{message}"
    );
    assert_eq!(
        container_image(&kube.deployment(NS, DEPLOY).unwrap()),
        IMAGE_V1
    );

    // Forced: applied.
    let resp = send_apply(&kube, "fieldManager=gantry&force=true", apply_body(&image)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let after: Value = resp.json().await.unwrap();
    assert_eq!(container_image(&after), image);
    assert_eq!(after["metadata"]["generation"], 3);
    // Only the image changed: the spec with the image put back is the old one.
    let mut spec = after["spec"].clone();
    spec["template"]["spec"]["containers"][0]["image"] = Value::from(IMAGE_V1);
    assert_eq!(spec, before["spec"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);

    let managed = after["metadata"]["managedFields"].as_array().unwrap();
    let gantry = managed
        .iter()
        .find(|m| m["manager"] == "gantry")
        .expect("a gantry entry");
    assert_eq!(gantry["operation"], "Apply");
    assert_eq!(gantry["fieldsType"], "FieldsV1");
    let item = &gantry["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
        [format!("k:{{\"name\":\"{CONTAINER}\"}}")];
    assert!(
        item["f:image"].is_object(),
        "fieldsV1: {}",
        gantry["fieldsV1"]
    );
    let create = managed
        .iter()
        .find(|m| m["manager"] == "kubectl-create")
        .unwrap();
    assert!(
        create["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
            [format!("k:{{\"name\":\"{CONTAINER}\"}}")]["f:image"]
            .is_null(),
        "forced apply took the field: {}",
        create["fieldsV1"]
    );

    let p = kube.patches().pop().unwrap();
    assert_eq!(p.content_type, "application/apply-patch+yaml");
    assert_eq!(p.field_manager.as_deref(), Some("gantry"));
    assert!(p.force);

    wait_for("the applied image to roll out", || {
        kube.rollout_completed_at(NS, DEPLOY, &image)
    })
    .await;

    // Once the rollout is done, the same apply again is a no-op: same
    // resourceVersion, nothing for watches.
    let rv = kube.deployment(NS, DEPLOY).unwrap()["metadata"]["resourceVersion"].clone();
    let global = kube.resource_version();
    let resp = send_apply(&kube, "fieldManager=gantry&force=true", apply_body(&image)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["metadata"]["resourceVersion"], rv);
    assert_eq!(again["metadata"]["generation"], 3);
    assert_eq!(kube.resource_version(), global);
}

#[tokio::test]
async fn merge_and_json_patches_and_errors() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 1);
    let client = http();
    let send = |ct: &'static str, body: &'static str| {
        client
            .patch(deployment_url(&kube))
            .bearer_auth(kube.token())
            .header("Content-Type", ct)
            .body(body)
            .send()
    };

    let resp = send("application/merge-patch+json", r#"{"spec":{"replicas":3}}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let d: Value = resp.json().await.unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2);
    wait_for("three ready pods", || {
        let d = kube.deployment(NS, DEPLOY)?;
        (d["status"]["readyReplicas"] == 3).then_some(())
    })
    .await;

    let resp = send(
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"registry.example.com/axway/gateway:7.7.20241130"},
            {"op":"add","path":"/metadata/labels/tier","value":"edge"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let d: Value = resp.json().await.unwrap();
    assert_eq!(
        container_image(&d),
        "registry.example.com/axway/gateway:7.7.20241130"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "edge");

    let resp = send(
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/spec/nothing/here","value":1}]"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let resp = send("text/plain", "x").await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["reason"], "UnsupportedMediaType");

    // Validation: an empty image is refused with the field named.
    let resp = send(
        "application/strategic-merge-patch+json",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"gateway","image":""}]}}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.template.spec.containers[0].image"
    );

    // A stale resourceVersion in the patch: 409.
    let resp = send(
        "application/merge-patch+json",
        r#"{"metadata":{"resourceVersion":"1"},"spec":{"replicas":1}}"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    let resp = client
        .patch(format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments/nope",
            kube.url()
        ))
        .bearer_auth(kube.token())
        .header("Content-Type", "application/merge-patch+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn watch_from_a_resource_version_and_a_stale_one() {
    let kube = KubeDouble::start().await.unwrap();
    kube.add_deployment(NS, DEPLOY, CONTAINER, IMAGE_V1, 2);
    let client = http();

    // LIST with a label selector carries the collection's resourceVersion.
    let list: Value = client
        .get(format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments?labelSelector=app%3D{DEPLOY}",
            kube.url()
        ))
        .bearer_auth(kube.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["kind"], "DeploymentList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let empty: Value = client
        .get(format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments?labelSelector=app%3Dother",
            kube.url()
        ))
        .bearer_auth(kube.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);

    let image = digest_image(0x77);
    kube.set_image(NS, DEPLOY, CONTAINER, &image);
    wait_for("the rollout", || {
        kube.rollout_completed_at(NS, DEPLOY, &image)
    })
    .await;

    // From `rv`: the changes after it, in order, then the stream ends at
    // its timeout.
    let events = read_watch(
        &kube,
        &format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments?watch=1&resourceVersion={rv}\
             &fieldSelector=metadata.name%3D{DEPLOY}&timeoutSeconds=2",
            kube.url()
        ),
    )
    .await;
    assert!(events.len() >= 2, "events: {events:#?}");
    let mut last = rv;
    for e in &events {
        assert_eq!(e["type"], "MODIFIED");
        assert_eq!(e["object"]["kind"], "Deployment");
        let v: u64 = e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(v > last, "resource versions increase");
        last = v;
    }
    assert_eq!(container_image(&events[0]["object"]), image);
    assert_eq!(events[0]["object"]["metadata"]["generation"], 2);
    let final_d = &events.last().unwrap()["object"];
    assert_eq!(
        condition(final_d, "Progressing")["reason"],
        "NewReplicaSetAvailable"
    );
    assert_eq!(final_d["status"]["observedGeneration"], 2);

    // Pods through the same window: the new ones ADDED, the old ones DELETED.
    let events = read_watch(
        &kube,
        &format!(
            "{}/api/v1/namespaces/{NS}/pods?watch=true&resourceVersion={rv}\
             &labelSelector=app%3D{DEPLOY}&timeoutSeconds=2",
            kube.url()
        ),
    )
    .await;
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(count("ADDED"), 2, "events: {events:#?}");
    assert_eq!(count("DELETED"), 2, "events: {events:#?}");

    // Without a resourceVersion: the current state as ADDED.
    let events = read_watch(
        &kube,
        &format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments?watch=1&timeoutSeconds=1",
            kube.url()
        ),
    )
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");

    // After a compaction the old version is gone: one ERROR event, 410.
    kube.compact_watch_history();
    let events = read_watch(
        &kube,
        &format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments?watch=1&resourceVersion={rv}&timeoutSeconds=30",
            kube.url()
        ),
    )
    .await;
    assert_eq!(events.len(), 1, "events: {events:#?}");
    assert_eq!(events[0]["type"], "ERROR");
    let status = &events[0]["object"];
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 410);
    assert_eq!(status["reason"], "Expired");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with(&format!("too old resource version: {rv} (")));
}

// ---------------------------------------------------------------------------
// Argo CD

#[tokio::test]
async fn argocd_double_answers_applications() {
    let argo = ArgoDouble::start("argo-secret").await.unwrap();
    let client = http();
    let app_url = format!("{}/api/v1/applications/gateway-prod", argo.url());

    let resp = client.get(&app_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 16);
    assert!(body["error"].is_string() && body["message"].is_string());
    let resp = client
        .get(&app_url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = client
        .get(&app_url)
        .bearer_auth("argo-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 5);
    assert_eq!(
        body["message"],
        "applications.argoproj.io \"gateway-prod\" not found"
    );

    let sha = "4f2c1e9d0b7a6c5e3f1d2b4a6c8e0f1a2b3c4d5e";
    argo.set_app(
        "gateway-prod",
        AppState {
            sync: SyncStatus::Synced,
            revision: sha.into(),
            health: HealthStatus::Degraded,
            health_message: Some("Deployment \"gw\" exceeded its progress deadline".into()),
            operation_phase: Some(OperationPhase::Succeeded),
            operation_message: None,
        },
    );
    argo.set_source(
        "gateway-prod",
        "https://git.example.com/platform/gitops.git",
        "envs/prod/gateway",
        "main",
    );
    let resp = client
        .get(format!("{app_url}?refresh=normal&appNamespace=argocd"))
        .bearer_auth("argo-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let app: Value = resp.json().await.unwrap();
    assert_eq!(app["metadata"]["name"], "gateway-prod");
    assert_eq!(
        app["spec"]["source"]["repoURL"],
        "https://git.example.com/platform/gitops.git"
    );
    assert_eq!(app["spec"]["source"]["path"], "envs/prod/gateway");
    assert_eq!(app["spec"]["source"]["targetRevision"], "main");
    assert_eq!(app["status"]["sync"]["status"], "Synced");
    assert_eq!(app["status"]["sync"]["revision"], sha);
    assert_eq!(app["status"]["health"]["status"], "Degraded");
    assert_eq!(
        app["status"]["health"]["message"],
        "Deployment \"gw\" exceeded its progress deadline"
    );
    assert_eq!(app["status"]["operationState"]["phase"], "Succeeded");
    assert_eq!(
        app["status"]["operationState"]["message"],
        "successfully synced (all tasks run)"
    );
    assert_eq!(
        app["status"]["operationState"]["syncResult"]["revision"],
        sha
    );

    // A running sync, a condition, and another namespace.
    argo.set_app(
        "gateway-prod",
        AppState {
            sync: SyncStatus::OutOfSync,
            revision: sha.into(),
            health: HealthStatus::Progressing,
            health_message: None,
            operation_phase: Some(OperationPhase::Running),
            operation_message: Some("waiting for healthy state of apps/Deployment/gw".into()),
        },
    );
    argo.set_conditions(
        "gateway-prod",
        &[("SyncError", "one or more objects failed to apply")],
    );
    let app: Value = client
        .get(&app_url)
        .bearer_auth("argo-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app["status"]["sync"]["status"], "OutOfSync");
    assert_eq!(app["status"]["health"]["status"], "Progressing");
    assert!(app["status"]["health"]["message"].is_null());
    assert_eq!(app["status"]["operationState"]["phase"], "Running");
    assert!(app["status"]["operationState"]["finishedAt"].is_null());
    assert_eq!(app["status"]["conditions"][0]["type"], "SyncError");
    let resp = client
        .get(format!("{app_url}?appNamespace=team-a"))
        .bearer_auth("argo-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    assert_eq!(argo.requests("gateway-prod"), 6);
    assert_eq!(argo.requests("other"), 0);
    let recorded = argo.recorded();
    assert_eq!(recorded.iter().filter(|r| r.authorized).count(), 4);
    assert!(recorded
        .iter()
        .any(|r| r.refresh.as_deref() == Some("normal")));
}
