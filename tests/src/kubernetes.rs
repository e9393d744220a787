//! An in-process test double of the Kubernetes API server, serving `apps/v1`
//! Deployments and ReplicaSets and `v1` Pods, with a controller inside that
//! rolls Deployments out the way the Deployment controller and the kubelet
//! would, at a pace the test chooses ([`Rollout`]).
//!
//! Kubernetes cannot run here; Gantry's deployer tests run against this
//! double, and `tests/tests/it/kubernetes_double.rs` checks it against the
//! real `kubectl` (v1.32). Sources are named with each rule:
//!
//! - **conventions**: the Kubernetes API conventions
//!   (`community/contributors/devel/sig-architecture/api-conventions.md`:
//!   resource versions, `Status` objects, `metadata.generation` vs
//!   `status.observedGeneration`, watch event types) and the API concepts
//!   page (`docs/reference/using-api/api-concepts`: watch, `410 Gone`,
//!   `sendInitialEvents`, list `resourceVersion`);
//! - **patch**: "Update API Objects in Place Using kubectl patch" (strategic
//!   merge, JSON merge and JSON patch) and the strategic-merge-patch design
//!   doc (`$patch`, `$setElementOrder`, `$retainKeys`,
//!   `$deleteFromPrimitiveList` directives, `patchMergeKey`s of the
//!   `k8s.io/api` types);
//! - **ssa**: "Server-Side Apply" (field managers, `managedFields`,
//!   conflicts, `force`, `fieldManager` required for apply, ownership moved
//!   by updates, fields an applier stops applying are removed);
//! - **controller**: the Deployment docs "Deployment status" and "Failed
//!   Deployment" sections, and the controller's `syncRolloutStatus` /
//!   `calculateStatus` (`pkg/controller/deployment/sync.go`,
//!   `progress.go`, `util/deployment_util.go`);
//! - **kubectl**: `kubectl rollout status`
//!   (`staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go`)
//!   and what kubectl 1.32 requests (observed with `-v=8`).
//!
//! # Server
//! - The same API on two loopback ports: plain HTTP ([`KubeDouble::url`])
//!   and HTTPS ([`KubeDouble::https_url`], a certificate for `127.0.0.1` and
//!   `localhost` from a fresh CA, [`KubeDouble::ca_pem`]). kubectl needs the
//!   HTTPS one: client-go's `clientcmd` only attaches a kubeconfig's
//!   credentials when the server is `https` (a real apiserver has no
//!   insecure port since 1.20), so [`KubeDouble::kubeconfig`] /
//!   [`KubeDouble::write_kubeconfig`] name it, with
//!   `certificate-authority-data`. The `kube` crate and reqwest send the
//!   token over plain HTTP too ([`KubeDouble::kubeconfig_http`]).
//! - Every request needs `Authorization: Bearer <token>` equal to
//!   [`KubeDouble::token`]; otherwise **401** with the `Status`
//!   `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
//!   "message":"Unauthorized","reason":"Unauthorized","code":401}`
//!   (conventions; a server started with `--anonymous-auth=false`, so
//!   `/version` needs the token too).
//! - Discovery (kubectl): `/version`; `/api` (`APIVersions`), `/api/v1`
//!   and `/apis/apps/v1` (`APIResourceList` with `name`, `singularName`,
//!   `namespaced`, `kind`, `verbs`, `shortNames`, `categories`), `/apis`
//!   (`APIGroupList`), `/apis/apps` (`APIGroup`). kubectl asks for the
//!   aggregated form (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;
//!   as=APIGroupDiscoveryList,...,application/json`); the double answers the
//!   legacy documents with `Content-Type: application/json`, which client-go
//!   accepts and then walks the group versions. `/openapi/v2` and
//!   `/openapi/v3` answer 404 (kubectl's `set image`, `get` and `rollout
//!   status` ask for neither). `/healthz`, `/livez`, `/readyz` answer `ok`.
//!   What kubectl 1.32 sends for the commands the tests run: `GET /api`,
//!   `/apis`, `/api/v1`, `/apis/apps/v1` (discovery); `GET` of the object;
//!   `PATCH ...?fieldManager=kubectl-set` (strategic merge, `set image`);
//!   `LIST ?fieldSelector=metadata.name=<n>&limit=500&resourceVersion=0`
//!   then `WATCH ?allowWatchBookmarks=true&fieldSelector=...&
//!   resourceVersion=<list's>&timeoutSeconds=<300..600>&watch=true`
//!   (`rollout status`, client-go's reflector); a human-readable `get` asks
//!   for a `Table` (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
//! - `Table`s (conventions: server-side printing) for `GET` and `LIST` when
//!   asked for: the columns of the apiserver's printers — Deployments `Name`,
//!   `Ready` (`ready/spec`), `Up-to-date`, `Available`, `Age`, and wide
//!   `Containers`, `Images`, `Selector`; ReplicaSets `Name`, `Desired`,
//!   `Current`, `Ready`, `Age`, ...; Pods `Name`, `Ready`, `Status` (a
//!   waiting reason such as `CrashLoopBackOff`, else the phase),
//!   `Restarts`, `Age`, and wide `IP`, `Node`, ...; rows carry
//!   `PartialObjectMetadata`.
//! - Errors are `Status` objects (conventions): unknown object → 404
//!   `reason: NotFound`, `message: deployments.apps "x" not found`,
//!   `details: {name, group, kind}`; unknown resource → 404 "the server could
//!   not find the requested resource"; stale `metadata.resourceVersion` in a
//!   write → 409 `Conflict` ("the object has been modified; please apply your
//!   changes to the latest version and try again"); create of an existing
//!   name → 409 `AlreadyExists`; invalid Deployment → 422 `Invalid` with
//!   `details.causes`; unknown patch type → 415 `UnsupportedMediaType`;
//!   malformed body → 400 `BadRequest`; other methods → 405. Paths outside
//!   the API → 404 `404 page not found` (text).
//!
//! # Objects
//! - Namespaced `deployments`, `replicasets` (group `apps`, version `v1`)
//!   and `pods` (core `v1`): `GET` one (with `kind`/`apiVersion`), `LIST`
//!   (`<Kind>List`, `metadata.resourceVersion` = the current global version,
//!   items without `kind`/`apiVersion` as the real JSON lists have them),
//!   also across namespaces (`/apis/apps/v1/deployments`); `POST` (create,
//!   201; `generateName` honoured), `PUT` (update), `PATCH`, `DELETE`
//!   (Deployments and ReplicaSets cascade at once, like background
//!   garbage collection; answers a `Success` `Status`, pods answer the
//!   deleted pod), and the `status` subresource (`GET`, `PUT`, `PATCH`: only
//!   `status` changes; writes to the main resource leave `status` alone).
//!   `namespaces` can be read (`GET`, `LIST`): `default`, `kube-system`,
//!   `kube-public` and every namespace an object lives in (conventions;
//!   simplified: objects may be created in any namespace).
//! - `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and
//!   `fieldSelector` (`metadata.name`, `metadata.namespace`, and for pods
//!   `spec.nodeName`, `status.phase`; `=`, `==`, `!=`; another field → 400
//!   "field label not supported") filter lists and watches. `limit` is
//!   accepted but everything is returned in one page (no `continue`).
//! - One global `resourceVersion` counter: every write bumps it and stamps
//!   the object (conventions: opaque string, here a decimal number). A write
//!   that changes nothing (managed-field timestamps aside) is a no-op: same
//!   version, no watch event (real apiserver behaviour).
//! - `metadata.generation` is 1 at creation and goes up by one whenever
//!   `spec` changes (conventions; so a new pod template bumps it); `uid`,
//!   `creationTimestamp`, `generation`, `resourceVersion`, `managedFields`
//!   are server-managed. `dryRun=All` validates and answers without storing.
//! - Deployments are defaulted like the apps/v1 defaulters do: `replicas: 1`,
//!   `revisionHistoryLimit: 10`, `progressDeadlineSeconds: 600`,
//!   `strategy: RollingUpdate` with `maxSurge`/`maxUnavailable` `25%`, pod
//!   `restartPolicy`, `dnsPolicy`, `schedulerName`,
//!   `terminationGracePeriodSeconds`, `securityContext`, and per container
//!   `imagePullPolicy` (`Always` for `:latest` or untagged, else
//!   `IfNotPresent`), `terminationMessagePath`/`Policy`, `resources`, port
//!   `protocol`. They are validated: `spec.selector` required and immutable,
//!   it must match the template labels, at least one container, each with a
//!   unique `name` and an `image` (422, causes as the real validation names
//!   them).
//!
//! # Watch
//! `?watch=1` / `?watch=true` (conventions, API concepts): a chunked
//! `application/json` stream of newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED","object":{...}}`.
//! - `resourceVersion=N`: every change after `N`, then live changes. Unset or
//!   `"0"`: synthetic `ADDED` events for the current objects first.
//!   `sendInitialEvents=true`: the same, followed by a `BOOKMARK` whose
//!   object carries the annotation `k8s.io/initial-events-end: "true"`.
//! - The double keeps the last 10 000 changes (the watch cache window);
//!   [`KubeDouble::compact_watch_history`] forgets them all, like an etcd
//!   compaction. A `resourceVersion` older than the window answers 200 with
//!   one event `{"type":"ERROR","object":{"kind":"Status",...,
//!   "reason":"Expired","message":"too old resource version: N (M)",
//!   "code":410}}` and ends the stream, as the apiserver's watch cache does
//!   (client-go then lists again).
//! - A change that moves an object into (out of) a watch's selectors is sent
//!   as `ADDED` (`DELETED`), as the apiserver does.
//! - `timeoutSeconds` ends the stream (default 1800 s);
//!   `allowWatchBookmarks` is accepted (no periodic bookmarks are sent).
//!
//! # Patch
//! `PATCH` with (patch):
//! - `application/strategic-merge-patch+json`: maps merge recursively,
//!   `null` deletes, lists with a patch merge key merge item by item
//!   (`containers`, `initContainers`, `ephemeralContainers`, `volumes`,
//!   `imagePullSecrets` by `name`; `env` by `name`; `ports` by
//!   `containerPort`; `volumeMounts` by `mountPath`; `volumeDevices` by
//!   `devicePath`; `ownerReferences` by `uid`; `conditions` by `type`;
//!   `hostAliases` by `ip`), `finalizers` merge as a set, other lists are
//!   replaced; directives `$patch: replace|delete`, `$setElementOrder/<list>`,
//!   `$retainKeys`, `$deleteFromPrimitiveList/<list>`. This is what
//!   `kubectl set image` sends (with `fieldManager=kubectl-set`);
//! - `application/merge-patch+json` (RFC 7386);
//! - `application/json-patch+json` (RFC 6902: `add`, `remove`, `replace`,
//!   `move`, `copy`, `test`; a failing operation → 422);
//! - `application/apply-patch+yaml` — server-side apply (ssa): YAML or
//!   JSON; `fieldManager` is required (else 400 "fieldManager is required
//!   for apply requests"); the configuration must carry `apiVersion` and
//!   `kind`; applying to a missing object creates it (201). The
//!   configuration merges into the live object (lists as above, merged by
//!   key; others atomic). Each manager's fields are tracked in
//!   `metadata.managedFields` (`manager`, `operation: Apply|Update`,
//!   `apiVersion`, `time`, `fieldsType: FieldsV1`, `fieldsV1` in the `f:` /
//!   `k:{...}` / `.` trie format). Applying a value different from the live
//!   one to a field another manager owns is a 409 `Conflict` ("Apply failed
//!   with 1 conflict: conflict with \"kubectl-set\" using apps/v1:
//!   .spec.template.spec.containers[name=\"gateway\"].image", one
//!   `details.causes` entry per field) unless `force=true`, which moves the
//!   field to the applier; applying the same value shares ownership. Fields
//!   the manager applied before and leaves out now are removed when nobody
//!   else owns them. Non-apply writes are `Update` operations of
//!   `fieldManager` (default: the `User-Agent` up to its first `/`), which
//!   take the fields they change from every other manager.
//!
//! Every `PATCH` is recorded ([`KubeDouble::patches`]): resource, namespace,
//! name, subresource, media type, field manager, `force`, `dryRun`, body
//! and the answer's status.
//!
//! # Controller
//! A controller task ticks every 50 ms (and right after every write). For
//! each Deployment (controller):
//! - **Observation**: it observes a new `generation` (sets
//!   `status.observedGeneration`) at once, or one `step` late under
//!   [`Rollout::Progressive`] (kubectl then prints "Waiting for deployment
//!   spec update to be observed...").
//! - **New ReplicaSet**: when no ReplicaSet owned by the Deployment has the
//!   template's `pod-template-hash` (FNV-32a of the template, encoded with
//!   the same safe alphabet as the real hash), it creates `<name>-<hash>`:
//!   labels of the template plus `pod-template-hash`, `ownerReferences` to
//!   the Deployment (`controller: true`), annotations
//!   `deployment.kubernetes.io/revision` (highest revision + 1),
//!   `desired-replicas`, `max-replicas`; condition `Progressing=True`,
//!   reason `NewReplicaSetCreated`, "Created new replica set \"<rs>\"". A
//!   template equal to an older ReplicaSet's (a rollback) reuses that
//!   ReplicaSet with a new revision. Pods follow at the next tick, so the
//!   first status after a template change shows no updated replica yet, as
//!   the real controller's first sync does. The Deployment carries its new
//!   ReplicaSet's revision in `deployment.kubernetes.io/revision`.
//! - **Pods** `<rs>-<5 chars>` (labels, `ownerReferences` to the
//!   ReplicaSet, the template's spec plus `nodeName`) are created and
//!   deleted by the pacing below; deletion is immediate (no `Terminating`
//!   grace period). Status: `phase: Running`, conditions
//!   `PodReadyToStartContainers`, `Initialized`, `Ready`, `ContainersReady`
//!   (`ContainersNotReady`, "containers with unready status: [c]"),
//!   `PodScheduled`; `containerStatuses[]` with `name`, `image` (the spec's),
//!   `imageID` (`docker-pullable://<repo>@sha256:<digest>`: the reference's
//!   digest when it has one, else a digest made from the reference),
//!   `containerID`, `ready`, `started`, `restartCount`, `state`,
//!   `lastState`.
//! - **Pacing** (simplified from the rolling-update strategy: surge 1, no
//!   old pod removed before its replacement is ready, whatever
//!   `spec.strategy` says): see [`Rollout`]. Old ReplicaSets stay, scaled
//!   to 0; unready old pods are removed first (the controller's
//!   `cleanupUnhealthyReplicas`).
//! - **Status** (`calculateStatus`): `observedGeneration`; `replicas` =
//!   pods of all its ReplicaSets; `updatedReplicas` = pods of the new one;
//!   `readyReplicas`; `availableReplicas` (= ready: `minReadySeconds` is
//!   not modelled); `unavailableReplicas` = ReplicaSet replicas − available;
//!   zero counts omitted, as the real JSON omits them. Condition `Available`
//!   is `True`/`MinimumReplicasAvailable` "Deployment has minimum
//!   availability." when available ≥ replicas − maxUnavailable, else
//!   `False`/`MinimumReplicasUnavailable` "Deployment does not have minimum
//!   availability.". Condition `Progressing` follows `syncRolloutStatus`:
//!   complete (updated = replicas = available = spec, generation observed)
//!   → `True`/`NewReplicaSetAvailable` "ReplicaSet \"<rs>\" has successfully
//!   progressed."; else any progress (more updated, fewer old, more ready or
//!   available) → `True`/`ReplicaSetUpdated` "ReplicaSet \"<rs>\" is
//!   progressing." with a fresh `lastUpdateTime`; else when the progress
//!   deadline passed since the last progress → `False`/
//!   `ProgressDeadlineExceeded` "ReplicaSet \"<rs>\" has timed out
//!   progressing." (the "Failed Deployment" section). The deadline is
//!   `spec.progressDeadlineSeconds`, or `deadline` under [`Rollout::Stuck`].
//!   `spec.paused` stops the pacing.
//! - With that, kubectl's `rollout status` logic (kubectl) reads the double
//!   as it reads a cluster: "Waiting for deployment spec update to be
//!   observed...", "N out of M new replicas have been updated...", "N old
//!   replicas are pending termination...", "N of M updated replicas are
//!   available...", "successfully rolled out", or the error "exceeded its
//!   progress deadline".
//!
//! # Test hooks
//! [`KubeDouble::add_deployment`] (a Deployment already rolled out, created
//! by manager `kubectl-create`), [`KubeDouble::set_image`] (an `Update` by
//! `argocd-controller`, as a GitOps controller syncing a commit would),
//! [`KubeDouble::set_rollout`], [`KubeDouble::rollout_completed_at`], the
//! recorded patches and requests, [`KubeDouble::compact_watch_history`].
//!
//! # Simplified
//! No RBAC, admission or protobuf (JSON only; no `Table` on watches), no
//! pagination, no `/scale` subresource, no StatefulSets/Services/..., no
//! schema validation beyond the Deployment rules above, no graceful pod
//! termination, no `minReadySeconds`; ReplicaSets and Pods are only made by
//! the double's controller (one created through the API is stored but not
//! managed); server-side apply tracks fields by path with the merge keys
//! above (no per-type schema: unknown lists are atomic) and treats a
//! manager's `Apply` and `Update` entries as one manager when checking
//! conflicts.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

/// How often the controller looks at every Deployment.
const TICK: Duration = Duration::from_millis(50);
/// How often a crash-looping container restarts (compressed: the real
/// back-off is 10 s, doubling up to 5 min; the message says so).
const CRASH_RESTART_EVERY: Duration = Duration::from_secs(1);
/// Changes kept for watches (the watch cache window).
const HISTORY_LIMIT: usize = 10_000;
/// Largest request body read.
const MAX_BODY: usize = 16 << 20;
/// Default watch duration when `timeoutSeconds` is absent.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// The alphabet of Kubernetes' generated names and hashes
/// (`k8s.io/apimachinery/pkg/util/rand`).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// The Kubernetes version the double claims to be.
const GIT_VERSION: &str = "v1.32.0";
const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

// ---------------------------------------------------------------------------
// Public API

/// How the double's controller rolls out a Deployment's new pod template.
/// Set per Deployment with [`KubeDouble::set_rollout`]; it applies to
/// rollouts that start later and to the one under way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rollout {
    /// The whole rollout happens at the next controller tick (within ~50 ms).
    #[default]
    Immediate,
    /// `observedGeneration` lags by one `step`; then one new pod is created
    /// (surge 1), becomes ready a `step` later, an old pod goes and the next
    /// new pod is created, and so on: `replicas + 1` steps in all.
    Progressive { step: Duration },
    /// New pods run but never become ready (a failing readiness probe); after
    /// `deadline` without progress `Progressing` turns
    /// `False`/`ProgressDeadlineExceeded` (`deadline` stands in for
    /// `spec.progressDeadlineSeconds`).
    Stuck { deadline: Duration },
    /// The new pods' changed containers crash: `state.waiting.reason:
    /// CrashLoopBackOff`, `restartCount` growing (every second),
    /// `lastState.terminated {exitCode: 1, reason: Error, message}`. The
    /// progress deadline is `spec.progressDeadlineSeconds` (600 s unless set).
    CrashLoop { message: String },
}

/// One `PATCH` as the double received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPatch {
    /// `deployments`, `replicasets` or `pods`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<String>,
    /// The media type, without parameters, e.g.
    /// `application/strategic-merge-patch+json`.
    pub content_type: String,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// `force=true` was sent.
    pub force: bool,
    /// `dryRun=All` was sent.
    pub dry_run: bool,
    /// The body as text.
    pub body: String,
    /// The status code answered.
    pub status: u16,
}

/// A Kubernetes API server double on `127.0.0.1:<random port>`, with a
/// Deployment controller inside. Dropping it stops the server, open watches
/// and the controller.
pub struct KubeDouble {
    shared: Arc<Shared>,
    /// The same API over HTTPS (what kubectl needs to send the token).
    tls: crate::apimanager::Server,
    ca_pem: String,
}

impl KubeDouble {
    /// Starts the server and its controller (needs a Tokio runtime). The
    /// bearer token is random.
    pub async fn start() -> anyhow::Result<KubeDouble> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(KState::default()),
            changed,
            wake: tokio::sync::Notify::new(),
            cancel: CancellationToken::new(),
            token: format!("gantry-test-{}", uuid::Uuid::new_v4().simple()),
            addr,
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let material = crate::apimanager::self_signed_tls().context("creating the test CA")?;
        let tls = crate::apimanager::serve(router.clone(), Some(material.config)).await?;
        let shutdown = shared.cancel.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(tcp, router)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        tokio::spawn(controller(shared.clone()));
        Ok(KubeDouble {
            shared,
            tls,
            ca_pem: material.ca_pem,
        })
    }

    /// `http://127.0.0.1:<port>`: the API over plain HTTP (the bearer token is
    /// still required; the `kube` crate and reqwest send it over HTTP,
    /// kubectl does not).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `https://127.0.0.1:<other port>`: the same API over TLS, with a
    /// certificate for `127.0.0.1` and `localhost` signed by
    /// [`KubeDouble::ca_pem`].
    pub fn https_url(&self) -> String {
        self.tls.url()
    }

    /// The CA (PEM) of the HTTPS endpoint's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The text of a kubeconfig for the HTTPS endpoint: one cluster
    /// (`server` = [`KubeDouble::https_url`], `certificate-authority-data` =
    /// the CA), one user with the token, one context `gantry-test`
    /// (namespace `default`) made current. Usable by kubectl and by the
    /// `kube` crate. (kubectl — client-go's `clientcmd` — only sends a
    /// kubeconfig's credentials to `https` servers, so the kubeconfig names
    /// the HTTPS endpoint.)
    pub fn kubeconfig(&self) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        kubeconfig_text(
            &format!(
                "server: {}\n    certificate-authority-data: {ca}",
                self.https_url()
            ),
            self.token(),
        )
    }

    /// A kubeconfig for the plain-HTTP endpoint ([`KubeDouble::url`]), for
    /// clients that send tokens over HTTP (the `kube` crate); kubectl would
    /// send no token with it and get 401.
    pub fn kubeconfig_http(&self) -> String {
        kubeconfig_text(&format!("server: {}", self.url()), self.token())
    }

    /// Writes [`KubeDouble::kubeconfig`] to `<dir>/kubeconfig`; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates a Deployment `name` (labels and selector `app: <name>`, one
    /// container) that is already fully rolled out: its ReplicaSet (the
    /// first revision) and `replicas` ready pods exist and its status is
    /// complete, whatever rollout is set. Created as manager `kubectl-create` would.
    ///
    /// # Panics
    /// When the Deployment exists already.
    pub fn add_deployment(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        image: &str,
        replicas: u32,
    ) {
        let obj = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": container, "image": image}]}
                }
            }
        });
        {
            let mut st = self.lock();
            if st.get(Res::Deployment, namespace, name).is_some() {
                panic!("deployment {namespace}/{name} exists already");
            }
            st.commit(Write {
                res: Res::Deployment,
                ns: namespace,
                name,
                live: None,
                candidate: obj,
                sub: None,
                manage: Manage::Update("kubectl-create".into()),
                dry_run: false,
            })
            .unwrap_or_else(|e| panic!("adding deployment {namespace}/{name}: {}", e.message));
            for _ in 0..3 {
                st.reconcile_deployment(namespace, name, Instant::now(), Some(&Rollout::Immediate));
            }
        }
        self.shared.notify();
    }

    /// Sets how this Deployment's rollouts proceed (the current one included).
    pub fn set_rollout(&self, namespace: &str, name: &str, rollout: Rollout) {
        self.lock()
            .rollouts
            .insert((namespace.to_owned(), name.to_owned()), rollout);
        self.shared.notify();
    }

    /// Changes `container`'s image in the Deployment's pod template (an
    /// `Update` by manager `argocd-controller`), which starts a rollout.
    ///
    /// # Panics
    /// When the Deployment or the container does not exist.
    pub fn set_image(&self, namespace: &str, name: &str, container: &str, image: &str) {
        {
            let mut st = self.lock();
            let live = st
                .get(Res::Deployment, namespace, name)
                .cloned()
                .unwrap_or_else(|| panic!("no deployment {namespace}/{name}"));
            let mut obj = live.clone();
            let containers = obj["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .expect("deployment has containers");
            let c = containers
                .iter_mut()
                .find(|c| c["name"] == container)
                .unwrap_or_else(|| {
                    panic!("deployment {namespace}/{name} has no container {container}")
                });
            c["image"] = json!(image);
            st.commit(Write {
                res: Res::Deployment,
                ns: namespace,
                name,
                live: Some(&live),
                candidate: obj,
                sub: None,
                manage: Manage::Update("argocd-controller".into()),
                dry_run: false,
            })
            .unwrap_or_else(|e| panic!("setting image of {namespace}/{name}: {}", e.message));
        }
        self.shared.notify();
    }

    /// The Deployment as a `GET` would answer it.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock().get(Res::Deployment, namespace, name).cloned()
    }

    /// The ReplicaSets of a namespace, by name.
    pub fn replica_sets(&self, namespace: &str) -> Vec<Value> {
        self.lock().all(Res::ReplicaSet, Some(namespace))
    }

    /// The pods of a namespace, by name.
    pub fn pods(&self, namespace: &str) -> Vec<Value> {
        self.lock().all(Res::Pod, Some(namespace))
    }

    /// When the latest rollout of the Deployment to a template containing
    /// `image` became complete (its `Progressing` condition turned
    /// `NewReplicaSetAvailable`); `None` while it has not.
    pub fn rollout_completed_at(
        &self,
        namespace: &str,
        name: &str,
        image: &str,
    ) -> Option<Instant> {
        self.lock()
            .completed
            .get(&(namespace.to_owned(), name.to_owned(), image.to_owned()))
            .copied()
    }

    /// Every `PATCH` received, in order.
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.lock().patches.clone()
    }

    /// Every request received, as `"<METHOD> <path>?<query>"`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The current global `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Forgets the watch history (like an etcd compaction): a watch from any
    /// `resourceVersion` older than the current one then gets the 410 `ERROR`
    /// event.
    pub fn compact_watch_history(&self) {
        let mut st = self.lock();
        st.log.clear();
        st.history_start = st.rv;
    }

    fn lock(&self) -> MutexGuard<'_, KState> {
        self.shared.lock()
    }
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl std::fmt::Debug for KubeDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDouble")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

fn kubeconfig_text(cluster: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: gantry-test\n  cluster:\n    {cluster}\n\
         users:\n\
         - name: gantry-test\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: gantry-test\n  context:\n    cluster: gantry-test\n    user: gantry-test\n    namespace: default\n\
         current-context: gantry-test\n\
         preferences: {{}}\n"
    )
}

// ---------------------------------------------------------------------------
// Shared state

struct Shared {
    state: Mutex<KState>,
    /// Bumped after every change, for watches.
    changed: tokio::sync::watch::Sender<u64>,
    /// Wakes the controller after API writes.
    wake: tokio::sync::Notify,
    cancel: CancellationToken,
    token: String,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, KState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells watches and the controller that something changed.
    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
        self.wake.notify_one();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Res {
    Deployment,
    ReplicaSet,
    Pod,
}

impl Res {
    fn from_path(group: &str, plural: &str) -> Option<Res> {
        match (group, plural) {
            ("", "pods") => Some(Res::Pod),
            ("apps", "deployments") => Some(Res::Deployment),
            ("apps", "replicasets") => Some(Res::ReplicaSet),
            _ => None,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Res::Deployment => "deployments",
            Res::ReplicaSet => "replicasets",
            Res::Pod => "pods",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Deployment => "Deployment",
            Res::ReplicaSet => "ReplicaSet",
            Res::Pod => "Pod",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Res::Deployment | Res::ReplicaSet => "apps",
            Res::Pod => "",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Deployment | Res::ReplicaSet => "apps/v1",
            Res::Pod => "v1",
        }
    }

    /// `deployments.apps`, `pods`: how error messages name the resource.
    fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    /// `Deployment.apps`, `Pod`: how validation errors name the kind.
    fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_owned(),
            g => format!("{}.{g}", self.kind()),
        }
    }

    fn details(self, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": self.plural()});
        if !self.group().is_empty() {
            d["group"] = json!(self.group());
        }
        d
    }
}

type ObjKey = (Res, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

struct Event {
    rv: u64,
    res: Res,
    ns: String,
    etype: EventType,
    object: Value,
    /// The object before a modification.
    prev: Option<Value>,
}

/// The controller's bookkeeping of a Deployment's current rollout.
struct Run {
    generation: i64,
    seen_at: Instant,
    observed: bool,
    last_step: Option<Instant>,
    /// When `Progressing` last recorded progress (its `lastUpdateTime`).
    progress_at: Instant,
}

impl Run {
    fn new(generation: i64, now: Instant) -> Run {
        Run {
            generation,
            seen_at: now,
            observed: false,
            last_step: None,
            progress_at: now,
        }
    }
}

/// What the kubelet double knows of a pod.
struct PodSim {
    ready: bool,
    /// Containers that fail while the pod is not ready (empty: all).
    failing: Vec<String>,
    started_ts: String,
    ready_ts: String,
    crash: Option<String>,
    restarts: u32,
    last_restart: Option<Instant>,
    finished_ts: String,
    container_ids: HashMap<String, String>,
    ip: String,
}

#[derive(Default)]
struct KState {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    log: VecDeque<Event>,
    /// Watches may start from any version ≥ this.
    history_start: u64,
    rollouts: HashMap<(String, String), Rollout>,
    runs: HashMap<(String, String), Run>,
    sims: HashMap<(String, String), PodSim>,
    completed: HashMap<(String, String, String), Instant>,
    patches: Vec<RecordedPatch>,
    requests: Vec<String>,
    pod_counter: u32,
}

/// How a write changes `managedFields`.
enum Manage {
    /// An `Update` operation by this manager.
    Update(String),
    /// Entries computed by server-side apply.
    Entries(Vec<FieldsEntry>),
}

struct Write<'a> {
    res: Res,
    ns: &'a str,
    name: &'a str,
    live: Option<&'a Value>,
    candidate: Value,
    sub: Option<&'a str>,
    manage: Manage,
    dry_run: bool,
}

impl KState {
    fn get(&self, res: Res, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(res, ns.to_owned(), name.to_owned()))
    }

    fn all(&self, res: Res, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Objects of `res` in `ns` with an owner reference to `uid`.
    fn owned(&self, res: Res, ns: &str, uid: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && n == ns)
            .filter(|(_, v)| owner_uids(v).any(|u| u == uid))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn namespaces(&self) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = ["default", "kube-public", "kube-system"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        set.extend(self.objects.keys().map(|(_, ns, _)| ns.clone()));
        set
    }

    /// Stores `obj` with a new resource version and records the event.
    fn store(&mut self, res: Res, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = text(&obj["metadata"]["namespace"]);
        let name = text(&obj["metadata"]["name"]);
        let prev = self.objects.insert((res, ns.clone(), name), obj.clone());
        let etype = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv: self.rv,
            res,
            ns,
            etype,
            object: obj.clone(),
            prev,
        });
        obj
    }

    fn remove(&mut self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .remove(&(res, ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if res == Res::Pod {
            self.sims.remove(&(ns.to_owned(), name.to_owned()));
        }
        self.record(Event {
            rv: self.rv,
            res,
            ns: ns.to_owned(),
            etype: EventType::Deleted,
            object: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    /// Removes an object and, at once, what it owns (background GC).
    fn remove_cascading(&mut self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let obj = self.remove(res, ns, name)?;
        let uid = text(&obj["metadata"]["uid"]);
        for child_res in [Res::ReplicaSet, Res::Pod] {
            for child in self.owned(child_res, ns, &uid) {
                self.remove_cascading(child_res, ns, &text(&child["metadata"]["name"]));
            }
        }
        Some(obj)
    }

    fn record(&mut self, e: Event) {
        self.log.push_back(e);
        while self.log.len() > HISTORY_LIMIT {
            if let Some(old) = self.log.pop_front() {
                self.history_start = old.rv;
            }
        }
    }

    // -----------------------------------------------------------------------
    // Writes through the API

    /// Validates, defaults and stores a create/update; `Ok((201|200, object))`.
    fn commit(&mut self, w: Write<'_>) -> Result<(StatusCode, Value), ApiError> {
        let Write {
            res,
            ns,
            name,
            live,
            candidate,
            sub,
            manage,
            dry_run,
        } = w;
        let Value::Object(mut obj) = candidate else {
            return Err(ApiError::bad_request(
                "the body must be a JSON object".into(),
            ));
        };
        if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
            if kind != res.kind() {
                return Err(ApiError::bad_request(format!(
                    "the kind of the object ({kind}) does not match the resource ({})",
                    res.plural()
                )));
            }
        }
        obj.insert("kind".into(), json!(res.kind()));
        obj.insert("apiVersion".into(), json!(res.api_version()));
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            return Err(ApiError::bad_request("metadata must be an object".into()));
        }
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => meta["name"] = json!(name),
        }
        match meta.get("namespace").and_then(Value::as_str) {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => meta["namespace"] = json!(ns),
        }
        if let (Some(live), Some(rv)) = (live, meta.get("resourceVersion").and_then(Value::as_str))
        {
            if live["metadata"]["resourceVersion"] != rv {
                return Err(ApiError::conflict(res, name));
            }
        }
        let candidate = Value::Object(obj);
        let mut new = match (sub, live) {
            (Some("status"), Some(live)) => {
                let mut n = live.clone();
                n["status"] = candidate.get("status").cloned().unwrap_or(json!({}));
                n
            }
            (_, Some(live)) => {
                let mut n = candidate;
                match live.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => remove_key(&mut n, "status"),
                }
                n
            }
            (_, None) => {
                let mut n = candidate;
                n["status"] = json!({});
                n
            }
        };
        let now = now_ts();
        {
            let m = new["metadata"]
                .as_object_mut()
                .expect("metadata is an object");
            m.remove("selfLink");
            match live {
                Some(live) => {
                    for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                        match live["metadata"].get(k) {
                            Some(v) => m.insert(k.into(), v.clone()),
                            None => m.remove(k),
                        };
                    }
                }
                None => {
                    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                    m.insert("creationTimestamp".into(), json!(now));
                    m.insert("generation".into(), json!(1));
                    m.remove("resourceVersion");
                }
            }
            m.remove("managedFields");
        }
        if res == Res::Deployment {
            default_deployment(&mut new);
            validate_deployment(&new, live, name)?;
        }
        if let Some(live) = live {
            if new.get("spec") != live.get("spec") {
                let generation = live["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(generation + 1);
            }
        }
        let entries = match manage {
            Manage::Update(manager) => update_entries(live, &new, &manager, sub, res, &now),
            Manage::Entries(e) => e,
        };
        let entries: Vec<Value> = entries
            .into_iter()
            .filter(|e| !e.set.is_empty())
            .map(|e| e.to_json())
            .collect();
        if !entries.is_empty() {
            new["metadata"]["managedFields"] = Value::Array(entries);
        }
        if let Some(live) = live {
            if without_times(&new) == without_times(live) {
                return Ok((StatusCode::OK, live.clone()));
            }
        }
        let code = if live.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        if dry_run {
            return Ok((code, new));
        }
        Ok((code, self.store(res, new)))
    }

    /// Server-side apply of `config` by `manager`.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        res: Res,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        config: Value,
        manager: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<(StatusCode, Value), ApiError> {
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the apply configuration must be an object".into(),
            ));
        }
        let (Some(api_version), Some(kind)) = (
            config.get("apiVersion").and_then(Value::as_str),
            config.get("kind").and_then(Value::as_str),
        ) else {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply configuration".into(),
            ));
        };
        if api_version != res.api_version() || kind != res.kind() {
            return Err(ApiError::bad_request(format!(
                "the apply configuration is a {api_version} {kind}, the URL names {} {}",
                res.api_version(),
                res.kind()
            )));
        }
        let live = self.get(res, ns, name).cloned();
        let live_v = live.clone().unwrap_or_else(|| json!({}));
        let cfg_fields = fields_of(&config, sub);
        let mut entries = live.as_ref().map(parse_entries).unwrap_or_default();
        let sub_s = sub.map(str::to_owned);

        let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
        for e in &entries {
            if e.manager == manager || e.subresource != sub_s {
                continue;
            }
            for p in cfg_fields.intersection(&e.set) {
                if is_item(p) {
                    continue;
                }
                if get_path(&config, p) != get_path(&live_v, p) {
                    conflicts.push((e.manager.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                return Err(ApiError::apply_conflict(res, &conflicts));
            }
            for (m, p) in &conflicts {
                for e in entries.iter_mut().filter(|e| &e.manager == m) {
                    e.set.remove(p);
                }
            }
        }

        let mut merged = live_v.clone();
        ssa_merge(&mut merged, &config, None);

        // Fields this manager applied before and leaves out now go, unless
        // someone else owns them (or something under them).
        let prev: BTreeSet<FieldPath> = entries
            .iter()
            .filter(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub_s)
            .flat_map(|e| e.set.iter().cloned())
            .collect();
        let others: BTreeSet<FieldPath> = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
            .flat_map(|e| e.set.iter().cloned())
            .collect();
        let mut gone: Vec<FieldPath> = prev
            .difference(&cfg_fields)
            .filter(|p| !others.iter().any(|o| o.starts_with(p)))
            .cloned()
            .collect();
        gone.sort_by_key(Vec::len);
        let mut removed: Vec<FieldPath> = Vec::new();
        for p in gone {
            if removed.iter().any(|r| p.starts_with(r)) {
                continue;
            }
            remove_path(&mut merged, &p);
            removed.push(p);
        }

        let now = now_ts();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub_s)
        {
            Some(e) => {
                if e.set != cfg_fields {
                    e.time = now;
                }
                e.set = cfg_fields;
            }
            None => entries.push(FieldsEntry {
                manager: manager.to_owned(),
                operation: "Apply".into(),
                api_version: res.api_version().into(),
                time: now,
                subresource: sub_s,
                set: cfg_fields,
            }),
        }
        self.commit(Write {
            res,
            ns,
            name,
            live: live.as_ref(),
            candidate: merged,
            sub,
            manage: Manage::Entries(entries),
            dry_run,
        })
    }

    // -----------------------------------------------------------------------
    // The controller

    fn reconcile_all(&mut self, now: Instant) {
        let keys: Vec<(String, String)> = self
            .objects
            .keys()
            .filter(|(r, _, _)| *r == Res::Deployment)
            .map(|(_, ns, name)| (ns.clone(), name.clone()))
            .collect();
        self.runs.retain(|k, _| keys.contains(k));
        for (ns, name) in keys {
            self.reconcile_deployment(&ns, &name, now, None);
        }
    }

    fn reconcile_deployment(
        &mut self,
        ns: &str,
        name: &str,
        now: Instant,
        forced: Option<&Rollout>,
    ) {
        let key = (ns.to_owned(), name.to_owned());
        let Some(d) = self.get(Res::Deployment, ns, name).cloned() else {
            return;
        };
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let mode = forced
            .cloned()
            .unwrap_or_else(|| self.rollouts.get(&key).cloned().unwrap_or_default());
        let run = self
            .runs
            .entry(key.clone())
            .or_insert_with(|| Run::new(generation, now));
        if run.generation != generation {
            *run = Run::new(generation, now);
        }
        if !run.observed {
            if let Rollout::Progressive { step } = mode {
                if now < run.seen_at + step {
                    return;
                }
            }
            run.observed = true;
        }
        let step_due = match &mode {
            Rollout::Progressive { step } => run.last_step.is_none_or(|t| now >= t + *step),
            _ => true,
        };
        let mut progress_at = run.progress_at;
        let mut last_step = run.last_step;

        let spec = &d["spec"];
        let desired = spec["replicas"].as_u64().unwrap_or(1) as usize;
        let paused = spec["paused"].as_bool().unwrap_or(false);
        let template = spec["template"].clone();
        let hash = template_hash(&template);
        let duid = text(&d["metadata"]["uid"]);
        let ts = now_ts();
        let mut conditions: Vec<Value> = d["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();

        let rses = self.owned(Res::ReplicaSet, ns, &duid);
        let max_rev = rses.iter().map(revision_of).max().unwrap_or(0);
        let mut new_rs = rses
            .iter()
            .find(|rs| rs["metadata"]["labels"][HASH_LABEL] == hash.as_str())
            .cloned();
        // The tick that creates the ReplicaSet only records it (the real
        // controller's first status after a template change has no updated
        // replica yet); pods follow at the next tick.
        let mut created_rs = false;
        if !paused {
            match &new_rs {
                None => {
                    let rs_name = format!("{name}-{hash}");
                    let rs = new_replica_set(&d, &rs_name, &hash, max_rev + 1, &ts);
                    new_rs = Some(self.store(Res::ReplicaSet, rs));
                    created_rs = true;
                    set_condition(
                        &mut conditions,
                        condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetCreated",
                            &format!("Created new replica set \"{rs_name}\""),
                            &ts,
                        ),
                    );
                    progress_at = now;
                }
                Some(rs) if revision_of(rs) < max_rev => {
                    let mut rs = rs.clone();
                    rs["metadata"]["annotations"][REVISION] = json!((max_rev + 1).to_string());
                    let rs_name = text(&rs["metadata"]["name"]);
                    new_rs = Some(self.store(Res::ReplicaSet, rs));
                    if find_condition(&conditions, "Progressing").is_none() {
                        set_condition(
                            &mut conditions,
                            condition(
                                "Progressing",
                                "True",
                                "FoundNewReplicaSet",
                                &format!("Found new replica set \"{rs_name}\""),
                                &ts,
                            ),
                        );
                    }
                    progress_at = now;
                }
                Some(_) => {}
            }
        }
        let new_rs_name = new_rs.as_ref().map(|rs| text(&rs["metadata"]["name"]));

        if let (Some(new_rs_name), false) = (&new_rs_name, paused || created_rs) {
            if step_due && self.scale(ns, &d, new_rs_name, desired, &mode, now) {
                last_step = Some(now);
            }
            self.run_pods(ns, &duid, new_rs_name, &mode, now);
        }
        let surge = max_surge(&d, desired);
        self.sync_replica_sets(ns, &duid, desired, surge);

        // Status (calculateStatus + syncRolloutStatus).
        let rses = self.owned(Res::ReplicaSet, ns, &duid);
        let mut c = Counts::default();
        let mut spec_total = 0i64;
        for rs in &rses {
            let rs_name = text(&rs["metadata"]["name"]);
            spec_total += rs["spec"]["replicas"].as_i64().unwrap_or(0);
            let pods = self.owned(Res::Pod, ns, &text(&rs["metadata"]["uid"]));
            let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
            c.replicas += pods.len() as i64;
            c.ready += ready;
            c.available += ready;
            if Some(&rs_name) == new_rs_name.as_ref() {
                c.updated += pods.len() as i64;
            }
        }
        let old = Counts::of(&d["status"]);
        let desired_i = desired as i64;
        let max_unavailable = max_unavailable(&d, desired).min(desired_i);
        if c.available >= desired_i - max_unavailable {
            set_condition(
                &mut conditions,
                condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                    &ts,
                ),
            );
        } else {
            set_condition(
                &mut conditions,
                condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                    &ts,
                ),
            );
        }
        let deadline = match &mode {
            Rollout::Stuck { deadline } => Some(*deadline),
            _ => match spec["progressDeadlineSeconds"].as_i64() {
                Some(s) if s >= i32::MAX as i64 => None,
                Some(s) => Some(Duration::from_secs(s.max(0) as u64)),
                None => Some(Duration::from_secs(600)),
            },
        };
        let mut completed_now = false;
        if let (Some(deadline), false) = (deadline, paused) {
            let cur = find_condition(&conditions, "Progressing").cloned();
            let is_complete = c.replicas == c.updated
                && cur
                    .as_ref()
                    .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
            let rs_label = new_rs_name.clone().unwrap_or_default();
            if !is_complete {
                if c.updated == desired_i && c.replicas == desired_i && c.available == desired_i {
                    set_condition(
                        &mut conditions,
                        condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetAvailable",
                            &format!("ReplicaSet \"{rs_label}\" has successfully progressed."),
                            &ts,
                        ),
                    );
                    completed_now = true;
                } else if c.updated > old.updated
                    || (c.replicas - c.updated) < (old.replicas - old.updated)
                    || c.ready > old.ready
                    || c.available > old.available
                {
                    let mut cond = condition(
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        &format!("ReplicaSet \"{rs_label}\" is progressing."),
                        &ts,
                    );
                    if let Some(cur) = &cur {
                        if cur["status"] == "True" {
                            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                        }
                    }
                    conditions.retain(|c| c["type"] != "Progressing");
                    conditions.push(cond);
                    progress_at = now;
                } else if cur.as_ref().is_some_and(|c| {
                    c["reason"] == "ProgressDeadlineExceeded" || now > progress_at + deadline
                }) {
                    set_condition(
                        &mut conditions,
                        condition(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &format!("ReplicaSet \"{rs_label}\" has timed out progressing."),
                            &ts,
                        ),
                    );
                }
            }
        }

        let mut status = Map::new();
        status.insert("observedGeneration".into(), json!(generation));
        for (k, v) in [
            ("replicas", c.replicas),
            ("updatedReplicas", c.updated),
            ("readyReplicas", c.ready),
            ("availableReplicas", c.available),
            ("unavailableReplicas", (spec_total - c.available).max(0)),
        ] {
            if v != 0 {
                status.insert(k.into(), json!(v));
            }
        }
        if !conditions.is_empty() {
            status.insert("conditions".into(), Value::Array(conditions));
        }
        if let Some(cc) = d["status"].get("collisionCount") {
            status.insert("collisionCount".into(), cc.clone());
        }
        let mut new_d = d.clone();
        new_d["status"] = Value::Object(status);
        if let Some(rs) = new_rs_name
            .as_ref()
            .and_then(|n| self.get(Res::ReplicaSet, ns, n))
        {
            let rev = revision_of(rs).to_string();
            if new_d["metadata"]["annotations"][REVISION] != rev.as_str() {
                if !new_d["metadata"]["annotations"].is_object() {
                    new_d["metadata"]["annotations"] = json!({});
                }
                new_d["metadata"]["annotations"][REVISION] = json!(rev);
                set_controller_entry(
                    &mut new_d,
                    None,
                    [vec![
                        "f:metadata".into(),
                        "f:annotations".into(),
                        format!("f:{REVISION}"),
                    ]]
                    .into_iter()
                    .collect(),
                    &ts,
                );
            }
        }
        if new_d != d {
            if new_d["status"] != d["status"] {
                let fields = fields_of(&new_d, Some("status"));
                set_controller_entry(&mut new_d, Some("status"), fields, &ts);
            }
            self.store(Res::Deployment, new_d);
        }
        if completed_now {
            for ctr in template["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                self.completed
                    .insert((ns.to_owned(), name.to_owned(), text(&ctr["image"])), now);
            }
        }
        if let Some(run) = self.runs.get_mut(&key) {
            run.progress_at = progress_at;
            run.last_step = last_step;
        }
    }

    /// One pacing step; true when pods were created, deleted or made ready.
    fn scale(
        &mut self,
        ns: &str,
        d: &Value,
        new_rs_name: &str,
        desired: usize,
        mode: &Rollout,
        now: Instant,
    ) -> bool {
        let duid = text(&d["metadata"]["uid"]);
        let rses = self.owned(Res::ReplicaSet, ns, &duid);
        let Some(new_rs) = rses
            .iter()
            .find(|rs| rs["metadata"]["name"] == new_rs_name)
            .cloned()
        else {
            return false;
        };
        let prev_rs = rses
            .iter()
            .filter(|rs| rs["metadata"]["name"] != new_rs_name)
            .max_by_key(|rs| revision_of(rs));
        let failing = changed_containers(
            prev_rs.map(|rs| &rs["spec"]["template"]),
            &new_rs["spec"]["template"],
        );
        let pods_of = |st: &KState, rs: &Value| -> Vec<(String, bool)> {
            st.owned(Res::Pod, ns, &text(&rs["metadata"]["uid"]))
                .iter()
                .map(|p| (text(&p["metadata"]["name"]), pod_ready(p)))
                .collect()
        };
        let mut new = pods_of(self, &new_rs);
        let mut old: Vec<(String, bool)> = rses
            .iter()
            .filter(|rs| rs["metadata"]["name"] != new_rs_name)
            .flat_map(|rs| pods_of(self, rs))
            .collect();
        let mut changed = false;
        match mode {
            Rollout::Immediate => {
                for (p, ready) in new.iter_mut().filter(|(_, r)| !*r) {
                    self.set_ready(ns, p);
                    *ready = true;
                    changed = true;
                }
                while new.len() < desired {
                    let p = self.create_pod(ns, &new_rs, true, failing.clone());
                    new.push((p, true));
                    changed = true;
                }
                while new.len() > desired {
                    if let Some((p, _)) = new.pop() {
                        self.remove(Res::Pod, ns, &p);
                    }
                    changed = true;
                }
                for (p, _) in old.drain(..) {
                    self.remove(Res::Pod, ns, &p);
                    changed = true;
                }
            }
            _ => {
                // Unhealthy old pods go first.
                let (unready, ready): (Vec<_>, Vec<_>) = old.into_iter().partition(|(_, r)| !*r);
                for (p, _) in unready {
                    self.remove(Res::Pod, ns, &p);
                    changed = true;
                }
                old = ready;
                if matches!(mode, Rollout::Progressive { .. }) {
                    for (p, ready) in new.iter_mut().filter(|(_, r)| !*r) {
                        self.set_ready(ns, p);
                        *ready = true;
                        changed = true;
                    }
                }
                loop {
                    let new_ready = new.iter().filter(|(_, r)| *r).count();
                    if old.is_empty()
                        || (old.len() + new_ready <= desired
                            && old.len() + new.len() <= desired + 1)
                    {
                        break;
                    }
                    if let Some((p, _)) = old.pop() {
                        self.remove(Res::Pod, ns, &p);
                        changed = true;
                    }
                }
                while new.len() < desired && old.len() + new.len() < desired + 1 {
                    let p = self.create_pod(ns, &new_rs, false, failing.clone());
                    new.push((p, false));
                    changed = true;
                }
                while old.is_empty() && new.len() > desired {
                    let i = new.iter().position(|(_, r)| !*r).unwrap_or(new.len() - 1);
                    let (p, _) = new.remove(i);
                    self.remove(Res::Pod, ns, &p);
                    changed = true;
                }
            }
        }
        let _ = now;
        changed
    }

    fn set_ready(&mut self, ns: &str, pod: &str) {
        if let Some(sim) = self.sims.get_mut(&(ns.to_owned(), pod.to_owned())) {
            sim.ready = true;
            sim.crash = None;
            sim.ready_ts = now_ts();
        }
    }

    fn create_pod(&mut self, ns: &str, rs: &Value, ready: bool, failing: Vec<String>) -> String {
        let rs_name = text(&rs["metadata"]["name"]);
        let name = loop {
            let n = format!("{rs_name}-{}", random_suffix(5));
            if self.get(Res::Pod, ns, &n).is_none() {
                break n;
            }
        };
        let template = &rs["spec"]["template"];
        let ts = now_ts();
        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!("gantry-test-node");
        spec["serviceAccountName"] = json!("default");
        let mut meta = json!({
            "name": name,
            "generateName": format!("{rs_name}-"),
            "namespace": ns,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": ts,
            "labels": template["metadata"]["labels"].clone(),
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs_name,
                "uid": rs["metadata"]["uid"].clone(),
                "controller": true,
                "blockOwnerDeletion": true
            }]
        });
        if let Some(a) = template["metadata"].get("annotations") {
            meta["annotations"] = a.clone();
        }
        self.pod_counter += 1;
        let ip = format!(
            "10.244.{}.{}",
            (self.pod_counter / 250) % 250,
            self.pod_counter % 250 + 2
        );
        let mut sim = PodSim {
            ready,
            failing,
            started_ts: ts.clone(),
            ready_ts: ts.clone(),
            crash: None,
            restarts: 0,
            last_restart: None,
            finished_ts: ts.clone(),
            container_ids: HashMap::new(),
            ip,
        };
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
        pod["status"] = pod_status(&pod, &mut sim);
        self.sims.insert((ns.to_owned(), name.clone()), sim);
        self.store(Res::Pod, pod);
        name
    }

    /// Moves the kubelet's side of the Deployment's pods along: crash
    /// loops restart, statuses follow the simulated state.
    fn run_pods(&mut self, ns: &str, duid: &str, new_rs_name: &str, mode: &Rollout, now: Instant) {
        let rses = self.owned(Res::ReplicaSet, ns, duid);
        for rs in rses {
            let is_new = rs["metadata"]["name"] == new_rs_name;
            for pod in self.owned(Res::Pod, ns, &text(&rs["metadata"]["uid"])) {
                let key = (ns.to_owned(), text(&pod["metadata"]["name"]));
                let Some(sim) = self.sims.get_mut(&key) else {
                    continue;
                };
                if !sim.ready {
                    match mode {
                        Rollout::CrashLoop { message } if is_new => {
                            sim.crash = Some(message.clone());
                            if sim
                                .last_restart
                                .is_none_or(|t| now >= t + CRASH_RESTART_EVERY)
                            {
                                sim.restarts += 1;
                                sim.last_restart = Some(now);
                                sim.finished_ts = now_ts();
                            }
                        }
                        _ => sim.crash = None,
                    }
                }
                let status = pod_status(&pod, sim);
                if status != pod["status"] {
                    let mut pod = pod.clone();
                    pod["status"] = status;
                    self.store(Res::Pod, pod);
                }
            }
        }
    }

    /// ReplicaSet `spec.replicas` and `status` follow their pods.
    fn sync_replica_sets(&mut self, ns: &str, duid: &str, desired: usize, surge: i64) {
        for rs in self.owned(Res::ReplicaSet, ns, duid) {
            let pods = self.owned(Res::Pod, ns, &text(&rs["metadata"]["uid"]));
            let count = pods.len() as i64;
            let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
            let mut new = rs.clone();
            if rs["spec"]["replicas"] != count {
                new["spec"]["replicas"] = json!(count);
                let g = rs["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            if count > 0 {
                new["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                    json!(desired.to_string());
                new["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] =
                    json!((desired as i64 + surge).to_string());
            }
            let mut status = Map::new();
            status.insert("replicas".into(), json!(count));
            for (k, v) in [
                ("fullyLabeledReplicas", count),
                ("readyReplicas", ready),
                ("availableReplicas", ready),
            ] {
                if v != 0 {
                    status.insert(k.into(), json!(v));
                }
            }
            status.insert(
                "observedGeneration".into(),
                new["metadata"]["generation"].clone(),
            );
            new["status"] = Value::Object(status);
            if new != rs {
                self.store(Res::ReplicaSet, new);
            }
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    replicas: i64,
    updated: i64,
    ready: i64,
    available: i64,
}

impl Counts {
    fn of(status: &Value) -> Counts {
        let n = |k: &str| status[k].as_i64().unwrap_or(0);
        Counts {
            replicas: n("replicas"),
            updated: n("updatedReplicas"),
            ready: n("readyReplicas"),
            available: n("availableReplicas"),
        }
    }
}

async fn controller(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let changed = {
            let mut st = shared.lock();
            let before = st.rv;
            st.reconcile_all(Instant::now());
            st.rv != before
        };
        if changed {
            shared.changed.send_modify(|v| *v += 1);
        }
    }
}

fn new_replica_set(d: &Value, rs_name: &str, hash: &str, revision: u64, ts: &str) -> Value {
    let mut template = d["spec"]["template"].clone();
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name,
            "namespace": d["metadata"]["namespace"].clone(),
            "uid": uuid::Uuid::new_v4().to_string(),
            "generation": 1,
            "creationTimestamp": ts,
            "labels": template["metadata"]["labels"].clone(),
            "annotations": {
                "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                "deployment.kubernetes.io/max-replicas": (replicas + max_surge(d, replicas.max(0) as usize)).to_string(),
                REVISION: revision.to_string()
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": d["metadata"]["name"].clone(),
                "uid": d["metadata"]["uid"].clone(),
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {"replicas": 0, "selector": selector, "template": template},
        "status": {"replicas": 0, "observedGeneration": 1}
    })
}

/// The status the kubelet would report for `pod` in the simulated state.
fn pod_status(pod: &Value, sim: &mut PodSim) -> Value {
    let name = text(&pod["metadata"]["name"]);
    let ns = text(&pod["metadata"]["namespace"]);
    let uid = text(&pod["metadata"]["uid"]);
    let mut statuses = Vec::new();
    let mut unready = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let cname = text(&c["name"]);
        let image = text(&c["image"]);
        let failing = !sim.ready && (sim.failing.is_empty() || sim.failing.contains(&cname));
        let id = sim
            .container_ids
            .entry(cname.clone())
            .or_insert_with(random_hex64)
            .clone();
        let mut status = json!({
            "name": cname,
            "image": image,
            "imageID": image_id(&image),
            "containerID": format!("docker://{id}"),
            "ready": !failing,
            "restartCount": 0,
            "started": true,
            "state": {"running": {"startedAt": sim.started_ts}},
            "lastState": {}
        });
        if failing {
            unready.push(cname.clone());
            if let Some(message) = &sim.crash {
                let backoff = 10u64
                    .saturating_mul(1 << sim.restarts.saturating_sub(1).min(5))
                    .min(300);
                status["restartCount"] = json!(sim.restarts);
                status["started"] = json!(false);
                status["state"] = json!({"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": format!(
                        "back-off {backoff}s restarting failed container={cname} pod={name}_{ns}({uid})"
                    )
                }});
                status["lastState"] = json!({"terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": message,
                    "startedAt": sim.started_ts,
                    "finishedAt": sim.finished_ts,
                    "containerID": format!("docker://{id}")
                }});
            } else if sim.restarts > 0 {
                status["restartCount"] = json!(sim.restarts);
            }
        } else if sim.restarts > 0 {
            status["restartCount"] = json!(sim.restarts);
        }
        statuses.push(status);
    }
    let ready = unready.is_empty();
    let ready_cond = |t: &str| {
        let mut c = json!({
            "type": t,
            "status": if ready { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": if ready { &sim.ready_ts } else { &sim.started_ts },
        });
        if !ready {
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            ));
        }
        c
    };
    let ok_cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": sim.started_ts});
    json!({
        "phase": "Running",
        "conditions": [
            ok_cond("PodReadyToStartContainers"),
            ok_cond("Initialized"),
            ready_cond("Ready"),
            ready_cond("ContainersReady"),
            ok_cond("PodScheduled"),
        ],
        "hostIP": "10.0.0.10",
        "hostIPs": [{"ip": "10.0.0.10"}],
        "podIP": sim.ip,
        "podIPs": [{"ip": sim.ip}],
        "startTime": sim.started_ts,
        "containerStatuses": statuses,
        "qosClass": "BestEffort"
    })
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Names of the containers of `new` that differ from `prev`'s (all when none
/// differ or there is no previous template).
fn changed_containers(prev: Option<&Value>, new: &Value) -> Vec<String> {
    let Some(prev) = prev else {
        return Vec::new();
    };
    let old: Vec<&Value> = prev["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    new["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !old.contains(c))
        .map(|c| text(&c["name"]))
        .collect()
}

fn revision_of(rs: &Value) -> u64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn owner_uids(v: &Value) -> impl Iterator<Item = &str> {
    v["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["uid"].as_str())
}

/// `maxSurge` / `maxUnavailable` resolved against `desired`
/// (`intstr.GetScaledValueFromIntOrPercent`: surge rounds up, unavailable down).
fn resolve_int_or_percent(v: &Value, desired: usize, round_up: bool, default: &str) -> i64 {
    let v = if v.is_null() {
        json!(default)
    } else {
        v.clone()
    };
    match &v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                let scaled = p * desired as i64;
                if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn is_rolling(d: &Value) -> bool {
    d["spec"]["strategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
}

fn max_surge(d: &Value, desired: usize) -> i64 {
    if !is_rolling(d) {
        return 0;
    }
    resolve_int_or_percent(
        &d["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        desired,
        true,
        "25%",
    )
}

fn max_unavailable(d: &Value, desired: usize) -> i64 {
    if !is_rolling(d) || desired == 0 {
        return 0;
    }
    resolve_int_or_percent(
        &d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        desired,
        false,
        "25%",
    )
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, ts: &str) -> Value {
    json!({
        "type": kind,
        "status": status,
        "lastUpdateTime": ts,
        "lastTransitionTime": ts,
        "reason": reason,
        "message": message
    })
}

fn find_condition<'a>(conditions: &'a [Value], kind: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| c["type"] == kind)
}

/// `deploymentutil.SetDeploymentCondition`: no change when status and reason
/// are the same; keeps `lastTransitionTime` when only the reason changes;
/// the condition moves to the end.
fn set_condition(conditions: &mut Vec<Value>, mut cond: Value) {
    if let Some(cur) = find_condition(conditions, cond["type"].as_str().unwrap_or_default()) {
        if cur["status"] == cond["status"] && cur["reason"] == cond["reason"] {
            return;
        }
        if cur["status"] == cond["status"] {
            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    conditions.retain(|c| c["type"] != cond["type"]);
    conditions.push(cond);
}

/// Sets the `kube-controller-manager` managed-fields entry of a write by the
/// controller.
fn set_controller_entry(obj: &mut Value, sub: Option<&str>, set: BTreeSet<FieldPath>, ts: &str) {
    let mut entries = parse_entries(obj);
    let sub = sub.map(str::to_owned);
    match entries
        .iter_mut()
        .find(|e| e.manager == "kube-controller-manager" && e.subresource == sub)
    {
        Some(e) => {
            if sub.is_some() {
                e.set = set;
            } else {
                e.set.extend(set);
            }
            e.time = ts.to_owned();
        }
        None => entries.push(FieldsEntry {
            manager: "kube-controller-manager".into(),
            operation: "Update".into(),
            api_version: text(&obj["apiVersion"]),
            time: ts.to_owned(),
            subresource: sub,
            set,
        }),
    }
    obj["metadata"]["managedFields"] =
        Value::Array(entries.iter().map(FieldsEntry::to_json).collect());
}

// ---------------------------------------------------------------------------
// Defaulting and validation

fn default_deployment(d: &mut Value) {
    if !d["spec"].is_object() {
        d["spec"] = json!({});
    }
    let spec = &mut d["spec"];
    for (k, v) in [
        ("replicas", json!(1)),
        ("revisionHistoryLimit", json!(10)),
        ("progressDeadlineSeconds", json!(600)),
    ] {
        if spec.get(k).is_none_or(Value::is_null) {
            spec[k] = v;
        }
    }
    if !spec["strategy"].is_object() {
        spec["strategy"] = json!({});
    }
    if spec["strategy"]["type"].is_null() {
        spec["strategy"]["type"] = json!("RollingUpdate");
    }
    if spec["strategy"]["type"] == "RollingUpdate" {
        if !spec["strategy"]["rollingUpdate"].is_object() {
            spec["strategy"]["rollingUpdate"] = json!({});
        }
        for k in ["maxSurge", "maxUnavailable"] {
            if spec["strategy"]["rollingUpdate"][k].is_null() {
                spec["strategy"]["rollingUpdate"][k] = json!("25%");
            }
        }
    }
    if !spec["template"].is_object() {
        return;
    }
    if !spec["template"]["spec"].is_object() {
        spec["template"]["spec"] = json!({});
    }
    let pod = &mut spec["template"]["spec"];
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
    ] {
        if pod.get(k).is_none_or(Value::is_null) {
            pod[k] = v;
        }
    }
    for list in ["containers", "initContainers"] {
        for c in pod[list].as_array_mut().into_iter().flatten() {
            if !c.is_object() {
                continue;
            }
            let policy = image_pull_policy(c["image"].as_str().unwrap_or_default());
            for (k, v) in [
                ("terminationMessagePath", json!("/dev/termination-log")),
                ("terminationMessagePolicy", json!("File")),
                ("imagePullPolicy", json!(policy)),
                ("resources", json!({})),
            ] {
                if c.get(k).is_none_or(Value::is_null) {
                    c[k] = v;
                }
            }
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                if p.is_object() && p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
            }
        }
    }
}

/// `Always` for `:latest` or untagged references, else `IfNotPresent`.
fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn validate_deployment(d: &Value, live: Option<&Value>, name: &str) -> Result<(), ApiError> {
    let mut causes: Vec<(String, &'static str, String)> = Vec::new();
    let spec = &d["spec"];
    let selector = &spec["selector"];
    if !selector.is_object() || selector.as_object().is_some_and(Map::is_empty) {
        causes.push((
            "spec.selector".into(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    } else {
        let labels = &spec["template"]["metadata"]["labels"];
        let matches = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        if !matches {
            causes.push((
                "spec.template.metadata.labels".into(),
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    labels
                ),
            ));
        }
        if let Some(live) = live {
            if live["spec"]["selector"] != *selector {
                causes.push((
                    "spec.selector".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: {selector}: field is immutable"),
                ));
            }
        }
    }
    let containers = spec["template"]["spec"]["containers"].as_array();
    match containers {
        None => causes.push((
            "spec.template.spec.containers".into(),
            "FieldValueRequired",
            "Required value".into(),
        )),
        Some(cs) if cs.is_empty() => causes.push((
            "spec.template.spec.containers".into(),
            "FieldValueRequired",
            "Required value".into(),
        )),
        Some(cs) => {
            let mut seen = BTreeSet::new();
            for (i, c) in cs.iter().enumerate() {
                let cname = c["name"].as_str().unwrap_or_default();
                if cname.is_empty() {
                    causes.push((
                        format!("spec.template.spec.containers[{i}].name"),
                        "FieldValueRequired",
                        "Required value".into(),
                    ));
                } else if !seen.insert(cname.to_owned()) {
                    causes.push((
                        format!("spec.template.spec.containers[{i}].name"),
                        "FieldValueDuplicate",
                        format!("Duplicate value: \"{cname}\""),
                    ));
                }
                if c["image"].as_str().unwrap_or_default().trim().is_empty() {
                    causes.push((
                        format!("spec.template.spec.containers[{i}].image"),
                        "FieldValueRequired",
                        "Required value".into(),
                    ));
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(Res::Deployment, name, causes))
    }
}

// ---------------------------------------------------------------------------
// Managed fields (server-side apply)

/// A field path in `fieldsV1` terms: `f:<name>` and `k:{"<key>":<value>}`
/// elements.
type FieldPath = Vec<String>;

struct FieldsEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    set: BTreeSet<FieldPath>,
}

impl FieldsEntry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_to_json(&self.set),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }
}

fn parse_entries(obj: &Value) -> Vec<FieldsEntry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut set = BTreeSet::new();
            fields_from_json(&e["fieldsV1"], &mut Vec::new(), &mut set);
            FieldsEntry {
                manager: text(&e["manager"]),
                operation: text(&e["operation"]),
                api_version: text(&e["apiVersion"]),
                time: text(&e["time"]),
                subresource: e["subresource"].as_str().map(str::to_owned),
                set,
            }
        })
        .collect()
}

fn fields_to_json(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            cur = cur
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fields trie node");
        }
        // A member that also has members below it gets a "." entry.
        let is_prefix = set
            .iter()
            .any(|o| o.len() > path.len() && o.starts_with(path));
        if is_prefix {
            cur.insert(".".into(), json!({}));
        }
    }
    // Members with children that were inserted after their children.
    Value::Object(root)
}

fn fields_from_json(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else {
        return;
    };
    if m.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (k, child) in m {
        if k == "." {
            out.insert(path.clone());
            continue;
        }
        path.push(k.clone());
        fields_from_json(child, path, out);
        path.pop();
    }
}

const IGNORED_META: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
];

/// The fields set in `obj`, for the main resource (`sub` `None`: without
/// `status`) or the status subresource (only `status`).
fn fields_of(obj: &Value, sub: Option<&str>) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        let is_status = k == "status";
        if k == "apiVersion" || k == "kind" || is_status != (sub == Some("status")) {
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        if k == "metadata" {
            for (mk, mv) in v.as_object().into_iter().flatten() {
                if IGNORED_META.contains(&mk.as_str()) {
                    continue;
                }
                path.push(format!("f:{mk}"));
                collect_fields(mv, &mut path, Some(mk), &mut out);
                path.pop();
            }
            continue;
        }
        collect_fields(v, &mut path, Some(k), &mut out);
    }
    out
}

fn collect_fields(
    v: &Value,
    path: &mut FieldPath,
    field: Option<&str>,
    out: &mut BTreeSet<FieldPath>,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(format!("f:{k}"));
                collect_fields(c, path, Some(k), out);
                path.pop();
            }
        }
        Value::Array(items) if keyed_list(field, items).is_some() => {
            let key = keyed_list(field, items).unwrap_or_default();
            for item in items {
                path.push(item_key(key, &item[key]));
                out.insert(path.clone());
                for (k, c) in item.as_object().into_iter().flatten() {
                    path.push(format!("f:{k}"));
                    collect_fields(c, path, Some(k), out);
                    path.pop();
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn item_key(key: &str, value: &Value) -> String {
    let mut m = Map::new();
    m.insert(key.to_owned(), value.clone());
    format!("k:{}", Value::Object(m))
}

fn parse_item_key(el: &str) -> Option<(String, Value)> {
    let m: Map<String, Value> = serde_json::from_str(el.strip_prefix("k:")?).ok()?;
    m.into_iter().next()
}

fn is_item(path: &FieldPath) -> bool {
    path.last().is_some_and(|el| el.starts_with("k:"))
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else {
            let (key, val) = parse_item_key(el)?;
            cur = cur.as_array()?.iter().find(|i| i.get(&key) == Some(&val))?;
        }
    }
    Some(cur)
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for el in parents {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            match parse_item_key(el) {
                Some((key, val)) => cur
                    .as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| i.get(&key) == Some(&val))),
                None => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let (Some((key, val)), Some(a)) = (parse_item_key(last), cur.as_array_mut()) {
        a.retain(|i| i.get(&key) != Some(&val));
    }
}

/// `fieldsV1` path as the apiserver prints it in conflicts:
/// `.spec.template.spec.containers[name="gateway"].image`.
fn display_path(path: &FieldPath) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some((k, v)) = parse_item_key(el) {
            s.push_str(&format!("[{k}={v}]"));
        }
    }
    s
}

/// The managed fields after an `Update` by `manager`: it owns what it
/// changed; the others lose it.
fn update_entries(
    live: Option<&Value>,
    new: &Value,
    manager: &str,
    sub: Option<&str>,
    res: Res,
    now: &str,
) -> Vec<FieldsEntry> {
    let empty = json!({});
    let old = live.unwrap_or(&empty);
    let fo = fields_of(old, sub);
    let fnew = fields_of(new, sub);
    let removed: BTreeSet<FieldPath> = fo.difference(&fnew).cloned().collect();
    let changed: BTreeSet<FieldPath> = fnew
        .iter()
        .filter(|p| !fo.contains(*p) || (!is_item(p) && get_path(old, p) != get_path(new, p)))
        .cloned()
        .collect();
    let mut entries = live.map(parse_entries).unwrap_or_default();
    if changed.is_empty() && removed.is_empty() {
        return entries;
    }
    let sub_s = sub.map(str::to_owned);
    for e in entries.iter_mut() {
        e.set.retain(|p| !removed.contains(p));
        if !(e.manager == manager && e.operation == "Update" && e.subresource == sub_s) {
            e.set.retain(|p| !changed.contains(p));
        }
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub_s)
    {
        Some(e) => {
            e.set.extend(changed);
            e.time = now.to_owned();
        }
        None => entries.push(FieldsEntry {
            manager: manager.to_owned(),
            operation: "Update".into(),
            api_version: res.api_version().into(),
            time: now.to_owned(),
            subresource: sub_s,
            set: changed,
        }),
    }
    entries
}

fn without_times(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(entries) = o["metadata"]["managedFields"].as_array_mut() {
        for e in entries {
            remove_key(e, "time");
        }
    }
    o
}

// ---------------------------------------------------------------------------
// Patches

/// List fields merged by key (their `patchMergeKey` in `k8s.io/api`, the
/// same as their `listMapKeys` for server-side apply).
fn merge_key(field: Option<&str>) -> Option<&'static str> {
    match field? {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        "hostAliases" => Some("ip"),
        _ => None,
    }
}

fn keyed_list(field: Option<&str>, items: &[Value]) -> Option<&'static str> {
    let key = merge_key(field)?;
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

/// Merges an apply configuration into the live object.
fn ssa_merge(target: &mut Value, config: &Value, field: Option<&str>) {
    if let (Some(t), Some(c)) = (target.as_object_mut(), config.as_object()) {
        for (k, cv) in c {
            if cv.is_null() {
                t.remove(k);
                continue;
            }
            match t.get_mut(k) {
                Some(tv) => ssa_merge(tv, cv, Some(k)),
                None => {
                    t.insert(k.clone(), cv.clone());
                }
            }
        }
        return;
    }
    if let (Some(c), Some(key)) = (config.as_array(), merge_key(field)) {
        if let Some(t) = target.as_array_mut() {
            if keyed_list(field, c).is_some() && keyed_list(field, t).is_some() {
                for item in c {
                    match t.iter_mut().find(|i| i.get(key) == item.get(key)) {
                        Some(ti) => ssa_merge(ti, item, None),
                        None => t.push(item.clone()),
                    }
                }
                return;
            }
        }
    }
    *target = config.clone();
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// Removes `$`-directives from a value (what is left is stored as is).
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch.
fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    if directive(patch) == Some("replace") {
        *target = strip_directives(patch);
        return Ok(());
    }
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    if let Some(keys) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keys.iter().any(|x| x == k));
    }
    let mut orders: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field, v));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(arr), Some(del)) =
                (t.get_mut(field).and_then(Value::as_array_mut), v.as_array())
            {
                arr.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(format!("unknown patch directive {k}"));
        }
        if v.is_null() || (v.is_object() && directive(v) == Some("delete")) {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert_with(|| json!({}));
                strategic_merge(entry, v)?;
            }
            Value::Array(items) => {
                if let Some(key) = merge_key(Some(k)) {
                    let entry = t.entry(k.clone()).or_insert_with(|| json!([]));
                    if !entry.is_array() {
                        *entry = json!([]);
                    }
                    merge_list(entry.as_array_mut().expect("array"), items, key)?;
                } else if k == "finalizers" {
                    let entry = t.entry(k.clone()).or_insert_with(|| json!([]));
                    if !entry.is_array() {
                        *entry = json!([]);
                    }
                    let arr = entry.as_array_mut().expect("array");
                    for i in items {
                        if !arr.contains(i) {
                            arr.push(i.clone());
                        }
                    }
                } else {
                    t.insert(k.clone(), strip_directives(v));
                }
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    for (field, order) in orders {
        let (Some(list), Some(order)) = (
            t.get_mut(field).and_then(Value::as_array_mut),
            order.as_array(),
        ) else {
            continue;
        };
        let key = merge_key(Some(field));
        let same = |a: &Value, b: &Value| match key {
            Some(k) => a.get(k).is_some() && a.get(k) == b.get(k),
            None => a == b,
        };
        let mut sorted: Vec<Value> = Vec::new();
        for o in order {
            if let Some(i) = list.iter().position(|x| same(x, o)) {
                sorted.push(list.remove(i));
            }
        }
        sorted.append(list);
        *list = sorted;
    }
    Ok(())
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str) -> Result<(), String> {
    if patch.iter().any(|i| directive(i) == Some("replace")) {
        *target = patch
            .iter()
            .filter(|i| directive(i).is_none())
            .map(strip_directives)
            .collect();
        return Ok(());
    }
    for item in patch {
        let Some(kv) = item.get(key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key}"
            ));
        };
        let pos = target.iter().position(|t| t.get(key) == Some(kv));
        if directive(item) == Some("delete") {
            if let Some(i) = pos {
                target.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => strategic_merge(&mut target[i], item)?,
            None => target.push(strip_directives(item)),
        }
    }
    Ok(())
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {path:?}"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_parent<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("doc is missing path: {t}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("invalid array index {t}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("array index out of bounds: {i}"))?
            }
            _ => return Err(format!("doc is missing path: {t}")),
        };
    }
    Ok(cur)
}

fn json_patch_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match pointer_parent(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| format!("invalid array index {last}"))?;
                if i > a.len() {
                    return Err(format!(
                        "add operation does not apply: index {i} out of bounds"
                    ));
                }
                a.insert(i, value);
            }
        }
        _ => {
            return Err(format!(
                "add operation does not apply: doc is missing path: {path}"
            ))
        }
    }
    Ok(())
}

fn json_patch_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Err("cannot remove the document root".into());
    };
    match pointer_parent(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("remove operation does not apply: doc is missing key: {path}")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last}"))?;
            if i >= a.len() {
                return Err(format!(
                    "remove operation does not apply: index {i} out of bounds"
                ));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!(
            "remove operation does not apply: doc is missing path: {path}"
        )),
    }
}

/// RFC 6902 JSON patch.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let name = op["op"]
            .as_str()
            .ok_or("a JSON patch operation needs \"op\"")?;
        let path = op["path"]
            .as_str()
            .ok_or("a JSON patch operation needs \"path\"")?;
        match name {
            "add" => json_patch_add(
                doc,
                path,
                op.get("value").cloned().ok_or("add needs a value")?,
            )?,
            "remove" => {
                json_patch_remove(doc, path)?;
            }
            "replace" => {
                let value = op.get("value").cloned().ok_or("replace needs a value")?;
                let tokens = pointer_tokens(path)?;
                let target = pointer_parent(doc, &tokens).map_err(|_| {
                    format!("replace operation does not apply: doc is missing key: {path}")
                })?;
                *target = value;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move needs \"from\"")?;
                let v = json_patch_remove(doc, from)?;
                json_patch_add(doc, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy needs \"from\"")?;
                let v = pointer_parent(doc, &pointer_tokens(from)?)?.clone();
                json_patch_add(doc, path, v)?;
            }
            "test" => {
                let v = pointer_parent(doc, &pointer_tokens(path)?)?;
                if Some(&*v) != op.get("value") {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected kind of JSON patch operation: {other}")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors

/// A failure answered as a `Status` object.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> ApiError {
        ApiError {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized".into())
    }

    fn bad_request(message: String) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn not_found(res: Res, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .with_details(res.details(name))
    }

    fn no_resource() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
        .with_details(json!({}))
    }

    fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
        )
        .with_details(json!({}))
    }

    fn conflict(res: Res, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
        .with_details(res.details(name))
    }

    fn already_exists(res: Res, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .with_details(res.details(name))
    }

    fn invalid(res: Res, name: &str, causes: Vec<(String, &'static str, String)>) -> ApiError {
        let listed: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        let summary = if listed.len() == 1 {
            listed[0].clone()
        } else {
            format!("[{}]", listed.join(", "))
        };
        let mut details = json!({"name": name, "kind": res.kind(), "causes": causes
            .iter()
            .map(|(f, r, m)| json!({"reason": r, "message": m, "field": f}))
            .collect::<Vec<_>>()});
        if !res.group().is_empty() {
            details["group"] = json!(res.group());
        }
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", res.qualified_kind()),
        )
        .with_details(details)
    }

    fn patch_failed(message: String) -> ApiError {
        ApiError::new(422, "Invalid", message).with_details(json!({}))
    }

    fn unsupported_media(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, \
                 application/strategic-merge-patch+json"
            ),
        )
        .with_details(json!({}))
    }

    fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    fn apply_conflict(res: Res, conflicts: &[(String, FieldPath)]) -> ApiError {
        let using = format!(" using {}", res.api_version());
        let message = if let [(m, p)] = conflicts {
            format!(
                "Apply failed with 1 conflict: conflict with \"{m}\"{using}: {}",
                display_path(p)
            )
        } else {
            let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for (m, p) in conflicts {
                by_manager.entry(m).or_default().push(display_path(p));
            }
            let mut s = format!("Apply failed with {} conflicts: ", conflicts.len());
            for (m, paths) in by_manager {
                s.push_str(&format!("conflicts with \"{m}\"{using}:\n"));
                for p in paths {
                    s.push_str(&format!("- {p}\n"));
                }
            }
            s
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, p)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\"{using}"),
                    "field": display_path(p)
                })
            })
            .collect();
        ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }

    fn status_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    fn response(&self) -> Response {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.status_json(),
        )
    }
}

// ---------------------------------------------------------------------------
// HTTP

fn json_response(code: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from(v.to_string()))
        .expect("valid response")
}

fn text_response(code: StatusCode, body: &'static str) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .expect("valid response")
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    shared
        .lock()
        .requests
        .push(format!("{} {}", parts.method, parts.uri));
    if !authorized(&parts.headers, &shared.token) {
        return ApiError::unauthorized().response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("reading the body: {e}")).response(),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let req = Req {
        method: parts.method,
        query,
        headers: parts.headers,
        body,
    };
    match route(&shared, &segs, &req).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

struct Req {
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

async fn route(shared: &Arc<Shared>, segs: &[&str], req: &Req) -> Result<Response, ApiError> {
    let get_only = |v: Value| {
        if req.method == Method::GET {
            Ok(json_response(StatusCode::OK, &v))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segs {
        ["version"] => get_only(json!({
            "major": "1",
            "minor": "32",
            "gitVersion": GIT_VERSION,
            "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
            "gitTreeState": "clean",
            "buildDate": "2024-12-11T17:59:15Z",
            "goVersion": "go1.23.3",
            "compiler": "gc",
            "platform": "linux/amd64"
        })),
        ["healthz"] | ["livez"] | ["readyz"] => Ok(text_response(StatusCode::OK, "ok")),
        ["api"] => get_only(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]
        })),
        ["api", "v1"] => get_only(core_resources()),
        ["apis"] => {
            get_only(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [apps_group()]}))
        }
        ["apis", "apps"] => {
            let mut g = apps_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            get_only(g)
        }
        ["apis", "apps", "v1"] => get_only(apps_resources()),
        ["api", "v1", rest @ ..] => resource_route(shared, "", rest, req).await,
        ["apis", "apps", "v1", rest @ ..] => resource_route(shared, "apps", rest, req).await,
        _ => Ok(text_response(StatusCode::NOT_FOUND, "404 page not found\n")),
    }
}

fn apps_group() -> Value {
    json!({
        "name": "apps",
        "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}
    })
}

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

fn resource_entry(name: &str, singular: &str, kind: &str, short: &[&str]) -> Value {
    let mut v = json!({
        "name": name,
        "singularName": singular,
        "namespaced": true,
        "kind": kind,
        "verbs": VERBS,
        "categories": ["all"],
    });
    if !short.is_empty() {
        v["shortNames"] = json!(short);
    }
    v
}

fn status_entry(name: &str, kind: &str) -> Value {
    json!({
        "name": format!("{name}/status"),
        "singularName": "",
        "namespaced": true,
        "kind": kind,
        "verbs": ["get", "patch", "update"]
    })
}

fn core_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "namespaces",
                "singularName": "namespace",
                "namespaced": false,
                "kind": "Namespace",
                "verbs": ["get", "list"],
                "shortNames": ["ns"]
            },
            resource_entry("pods", "pod", "Pod", &["po"]),
            status_entry("pods", "Pod"),
        ]
    })
}

fn apps_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "apps/v1",
        "resources": [
            resource_entry("deployments", "deployment", "Deployment", &["deploy"]),
            status_entry("deployments", "Deployment"),
            resource_entry("replicasets", "replicaset", "ReplicaSet", &["rs"]),
            status_entry("replicasets", "ReplicaSet"),
        ]
    })
}

fn namespace_object(ns: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns,
            "uid": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ns.as_bytes()).to_string(),
            "resourceVersion": "1",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"kubernetes.io/metadata.name": ns}
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

async fn resource_route(
    shared: &Arc<Shared>,
    group: &str,
    rest: &[&str],
    req: &Req,
) -> Result<Response, ApiError> {
    match rest {
        ["namespaces"] if group.is_empty() => {
            if req.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            let st = shared.lock();
            let items: Vec<Value> = st
                .namespaces()
                .iter()
                .map(|ns| {
                    let mut o = namespace_object(ns);
                    strip_type(&mut o);
                    o
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "NamespaceList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ))
        }
        ["namespaces", ns] if group.is_empty() => {
            if req.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            if shared.lock().namespaces().contains(*ns) {
                Ok(json_response(StatusCode::OK, &namespace_object(ns)))
            } else {
                Err(
                    ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
                        .with_details(json!({"name": ns, "kind": "namespaces"})),
                )
            }
        }
        ["namespaces", ns, plural] => {
            let res = Res::from_path(group, plural).ok_or_else(ApiError::no_resource)?;
            collection(shared, res, Some(ns), req).await
        }
        ["namespaces", ns, plural, name] => {
            let res = Res::from_path(group, plural).ok_or_else(ApiError::no_resource)?;
            item(shared, res, ns, name, None, req)
        }
        ["namespaces", ns, plural, name, "status"] => {
            let res = Res::from_path(group, plural).ok_or_else(ApiError::no_resource)?;
            item(shared, res, ns, name, Some("status"), req)
        }
        [plural] => {
            let res = Res::from_path(group, plural).ok_or_else(ApiError::no_resource)?;
            if req.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            collection(shared, res, None, req).await
        }
        _ => Err(ApiError::no_resource()),
    }
}

async fn collection(
    shared: &Arc<Shared>,
    res: Res,
    ns: Option<&str>,
    req: &Req,
) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => {
            let filter = Filter {
                res,
                ns: ns.map(str::to_owned),
                labels: parse_label_selector(req.q("labelSelector").unwrap_or_default())?,
                fields: parse_field_selector(res, req.q("fieldSelector").unwrap_or_default())?,
            };
            if matches!(req.q("watch"), Some("1" | "true")) {
                return watch(shared.clone(), filter, req);
            }
            let st = shared.lock();
            let objects: Vec<Value> = st
                .all(res, ns)
                .into_iter()
                .filter(|o| filter.matches(o))
                .collect();
            if wants_table(&req.headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &table(res, &objects, &json!(st.rv.to_string())),
                ));
            }
            let items: Vec<Value> = objects
                .into_iter()
                .map(|mut o| {
                    strip_type(&mut o);
                    o
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", res.kind()),
                    "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": items
                }),
            ))
        }
        Method::POST => {
            let ns = ns.ok_or_else(ApiError::method_not_allowed)?;
            let mut obj = parse_body(&req.body)?;
            let name = match (
                obj["metadata"]["name"].as_str(),
                obj["metadata"]["generateName"].as_str(),
            ) {
                (Some(n), _) if !n.is_empty() => n.to_owned(),
                (_, Some(g)) if !g.is_empty() => format!("{g}{}", random_suffix(5)),
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        "",
                        vec![(
                            "metadata.name".into(),
                            "FieldValueRequired",
                            "Required value: name or generateName is required".into(),
                        )],
                    ))
                }
            };
            if obj["metadata"].is_object() {
                obj["metadata"]["name"] = json!(name);
            }
            let manager = field_manager(req);
            let result = {
                let mut st = shared.lock();
                if st.get(res, ns, &name).is_some() {
                    return Err(ApiError::already_exists(res, &name));
                }
                st.commit(Write {
                    res,
                    ns,
                    name: &name,
                    live: None,
                    candidate: obj,
                    sub: None,
                    manage: Manage::Update(manager),
                    dry_run: is_dry_run(req),
                })
            };
            shared.notify();
            let (code, obj) = result?;
            Ok(json_response(code, &obj))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the body: {e}")))
}

fn is_dry_run(req: &Req) -> bool {
    req.query.get("dryRun").is_some_and(|v| v == "All")
}

/// `fieldManager`, else the `User-Agent` up to its first `/` (as the
/// apiserver derives it).
fn field_manager(req: &Req) -> String {
    if let Some(m) = req.q("fieldManager") {
        return m.to_owned();
    }
    req.headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

fn item(
    shared: &Arc<Shared>,
    res: Res,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    req: &Req,
) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => {
            let st = shared.lock();
            let obj = st
                .get(res, ns, name)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            if wants_table(&req.headers) && sub.is_none() {
                return Ok(json_response(
                    StatusCode::OK,
                    &table(
                        res,
                        std::slice::from_ref(obj),
                        &obj["metadata"]["resourceVersion"],
                    ),
                ));
            }
            Ok(json_response(StatusCode::OK, obj))
        }
        Method::PUT => {
            let obj = parse_body(&req.body)?;
            let manager = field_manager(req);
            let result = {
                let mut st = shared.lock();
                let live = st
                    .get(res, ns, name)
                    .cloned()
                    .ok_or_else(|| ApiError::not_found(res, name))?;
                st.commit(Write {
                    res,
                    ns,
                    name,
                    live: Some(&live),
                    candidate: obj,
                    sub,
                    manage: Manage::Update(manager),
                    dry_run: is_dry_run(req),
                })
            };
            shared.notify();
            let (code, obj) = result?;
            Ok(json_response(code, &obj))
        }
        Method::PATCH => {
            let content_type = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let result = {
                let mut st = shared.lock();
                let result = patch(&mut st, res, ns, name, sub, &content_type, req);
                st.patches.push(RecordedPatch {
                    resource: res.plural().into(),
                    namespace: ns.into(),
                    name: name.into(),
                    subresource: sub.map(str::to_owned),
                    content_type,
                    field_manager: req.q("fieldManager").map(str::to_owned),
                    force: req.query.get("force").is_some_and(|v| v == "true"),
                    dry_run: is_dry_run(req),
                    body: String::from_utf8_lossy(&req.body).into_owned(),
                    status: match &result {
                        Ok((code, _)) => code.as_u16(),
                        Err(e) => e.code,
                    },
                });
                result
            };
            shared.notify();
            let (code, obj) = result?;
            Ok(json_response(code, &obj))
        }
        Method::DELETE if sub.is_none() => {
            let removed = {
                let mut st = shared.lock();
                if is_dry_run(req) {
                    st.get(res, ns, name).cloned()
                } else {
                    st.remove_cascading(res, ns, name)
                }
            };
            shared.notify();
            let obj = removed.ok_or_else(|| ApiError::not_found(res, name))?;
            if res == Res::Pod {
                return Ok(json_response(StatusCode::OK, &obj));
            }
            let mut details = res.details(name);
            details["uid"] = obj["metadata"]["uid"].clone();
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "details": details}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn patch(
    st: &mut KState,
    res: Res,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    req: &Req,
) -> Result<(StatusCode, Value), ApiError> {
    let dry_run = is_dry_run(req);
    if content_type == "application/apply-patch+yaml" {
        let Some(manager) = req.q("fieldManager") else {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests".into(),
            ));
        };
        let text = std::str::from_utf8(&req.body)
            .map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8".into()))?;
        let config: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        };
        let force = req.query.get("force").is_some_and(|v| v == "true");
        return st.apply(res, ns, name, sub, config, manager, force, dry_run);
    }
    let kind = match content_type {
        "application/strategic-merge-patch+json" => 's',
        "application/merge-patch+json" => 'm',
        "application/json-patch+json" => 'j',
        other => return Err(ApiError::unsupported_media(other)),
    };
    let patch_doc = parse_body(&req.body)?;
    let live = st
        .get(res, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(res, name))?;
    let mut obj = live.clone();
    match kind {
        's' => {
            if !patch_doc.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            }
            strategic_merge(&mut obj, &patch_doc).map_err(ApiError::bad_request)?
        }
        'm' => merge_patch(&mut obj, &patch_doc),
        _ => json_patch(&mut obj, &patch_doc).map_err(ApiError::patch_failed)?,
    }
    st.commit(Write {
        res,
        ns,
        name,
        live: Some(&live),
        candidate: obj,
        sub,
        manage: Manage::Update(field_manager(req)),
        dry_run,
    })
}

// ---------------------------------------------------------------------------
// Tables (kubectl's human-readable `get`)

/// Whether the client asked for a server-side `Table`
/// (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`).
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table") && a.contains("g=meta.k8s.io"))
}

/// `duration.HumanDuration`, as the Age column shows it.
fn human_age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        },
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        },
        s if s < 48 * 3600 => format!("{h}h"),
        s if s < 8 * 86400 => match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        },
        _ => format!("{d}d"),
    }
}

fn column(name: &str, kind: &str, priority: u8) -> Value {
    let mut c =
        json!({"name": name, "type": kind, "format": "", "description": "", "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn selector_text(sel: &Value) -> String {
    sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn containers_and_images(pod_spec: &Value) -> (String, String) {
    let cs: Vec<&Value> = pod_spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    (
        cs.iter()
            .map(|c| text(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| text(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The `Table` the apiserver's table convertors (`pkg/printers/internalversion`)
/// answer for these kinds: the columns of `kubectl get` (priority 1 = `-o wide`).
fn table(res: Res, objects: &[Value], rv: &Value) -> Value {
    let columns = match res {
        Res::Deployment => vec![
            column("Name", "string", 0),
            column("Ready", "string", 0),
            column("Up-to-date", "integer", 0),
            column("Available", "integer", 0),
            column("Age", "string", 0),
            column("Containers", "string", 1),
            column("Images", "string", 1),
            column("Selector", "string", 1),
        ],
        Res::ReplicaSet => vec![
            column("Name", "string", 0),
            column("Desired", "integer", 0),
            column("Current", "integer", 0),
            column("Ready", "integer", 0),
            column("Age", "string", 0),
            column("Containers", "string", 1),
            column("Images", "string", 1),
            column("Selector", "string", 1),
        ],
        Res::Pod => vec![
            column("Name", "string", 0),
            column("Ready", "string", 0),
            column("Status", "string", 0),
            column("Restarts", "string", 0),
            column("Age", "string", 0),
            column("IP", "string", 1),
            column("Node", "string", 1),
            column("Nominated Node", "string", 1),
            column("Readiness Gates", "string", 1),
        ],
    };
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let name = text(&o["metadata"]["name"]);
            let age = human_age(o["metadata"]["creationTimestamp"].as_str().unwrap_or_default());
            let cells = match res {
                Res::Deployment => {
                    let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
                    json!([
                        name,
                        format!("{}/{}", n(&o["status"]["readyReplicas"]), n(&o["spec"]["replicas"])),
                        n(&o["status"]["updatedReplicas"]),
                        n(&o["status"]["availableReplicas"]),
                        age,
                        c,
                        i,
                        selector_text(&o["spec"]["selector"])
                    ])
                }
                Res::ReplicaSet => {
                    let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
                    json!([
                        name,
                        n(&o["spec"]["replicas"]),
                        n(&o["status"]["replicas"]),
                        n(&o["status"]["readyReplicas"]),
                        age,
                        c,
                        i,
                        selector_text(&o["spec"]["selector"])
                    ])
                }
                Res::Pod => {
                    let statuses: Vec<&Value> =
                        o["status"]["containerStatuses"].as_array().into_iter().flatten().collect();
                    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
                    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                    let restarts: i64 = statuses.iter().map(|c| n(&c["restartCount"])).sum();
                    let reason = statuses
                        .iter()
                        .find_map(|c| c["state"]["waiting"]["reason"].as_str())
                        .map(str::to_owned)
                        .unwrap_or_else(|| text(&o["status"]["phase"]));
                    json!([
                        name,
                        format!("{ready}/{total}"),
                        reason,
                        restarts.to_string(),
                        age,
                        o["status"]["podIP"].as_str().unwrap_or("<none>"),
                        o["spec"]["nodeName"].as_str().unwrap_or("<none>"),
                        "<none>",
                        "<none>"
                    ])
                }
            };
            let mut meta = o["metadata"].clone();
            remove_key(&mut meta, "managedFields");
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows
    })
}

// ---------------------------------------------------------------------------
// Selectors and watch

enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, ApiError> {
    let bad = |p: &str| ApiError::bad_request(format!("unable to parse requirement: {p}"));
    let mut out = Vec::new();
    for part in split_top_level(s) {
        let set_op = |op: &str| -> Option<(String, Vec<String>)> {
            let (k, rest) = part.split_once(op)?;
            let vals = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some((
                k.trim().to_owned(),
                vals.split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ))
        };
        if let Some((k, vals)) = set_op(" notin ") {
            out.push(LabelReq::NotIn(k, vals));
        } else if let Some((k, vals)) = set_op(" in ") {
            out.push(LabelReq::In(k, vals));
        } else if let Some((k, v)) = part.split_once("!=") {
            out.push(LabelReq::NotEq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            out.push(LabelReq::Eq(k.trim().into(), v.trim().into()));
        } else if let Some(k) = part.strip_prefix('!') {
            out.push(LabelReq::NotExists(k.trim().into()));
        } else if part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            out.push(LabelReq::Exists(part.clone()));
        } else {
            return Err(bad(&part));
        }
    }
    Ok(out)
}

struct FieldReq {
    path: String,
    value: String,
    equal: bool,
}

fn parse_field_selector(res: Res, s: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut out = Vec::new();
    for part in split_top_level(s) {
        let (path, value, equal) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (k, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            )));
        };
        let path = path.trim();
        let supported = matches!(path, "metadata.name" | "metadata.namespace")
            || (res == Res::Pod && matches!(path, "spec.nodeName" | "status.phase"));
        if !supported {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {path}"
            )));
        }
        out.push(FieldReq {
            path: path.to_owned(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(out)
}

struct Filter {
    res: Res,
    ns: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.ns {
            if meta["namespace"] != ns.as_str() {
                return false;
            }
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let mut cur = obj;
                for seg in f.path.split('.') {
                    cur = &cur[seg];
                }
                (cur.as_str().unwrap_or_default() == f.value) == f.equal
            })
    }

    /// The event a watcher with this filter sees for `e`, if any.
    fn event<'a>(&self, e: &'a Event) -> Option<(&'static str, &'a Value)> {
        if e.res != self.res || self.ns.as_ref().is_some_and(|ns| *ns != e.ns) {
            return None;
        }
        let now = self.matches(&e.object);
        match e.etype {
            EventType::Added => now.then_some(("ADDED", &e.object)),
            EventType::Deleted => now.then_some(("DELETED", &e.object)),
            EventType::Modified => {
                let was = e.prev.as_ref().is_some_and(|p| self.matches(p));
                match (was, now) {
                    (true, true) => Some(("MODIFIED", &e.object)),
                    (false, true) => Some(("ADDED", &e.object)),
                    (true, false) => Some(("DELETED", &e.object)),
                    (false, false) => None,
                }
            }
        }
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch(shared: Arc<Shared>, filter: Filter, req: &Req) -> Result<Response, ApiError> {
    let timeout = match req.q("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let rv = match req.q("resourceVersion") {
        None | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    let initial_events = req.q("sendInitialEvents") == Some("true");
    let mut changed = shared.changed.subscribe();
    let (mut lines, cursor) = {
        let st = shared.lock();
        let mut lines = Vec::new();
        let cursor = match rv {
            Some(n) if !initial_events => {
                if n < st.history_start {
                    lines.push(event_line(
                        "ERROR",
                        &ApiError::expired(n, st.history_start + 1).status_json(),
                    ));
                    None
                } else {
                    Some(n)
                }
            }
            _ => {
                for o in st.all(filter.res, filter.ns.as_deref()) {
                    if filter.matches(&o) {
                        lines.push(event_line("ADDED", &o));
                    }
                }
                if initial_events {
                    lines.push(event_line(
                        "BOOKMARK",
                        &json!({
                            "kind": filter.res.kind(),
                            "apiVersion": filter.res.api_version(),
                            "metadata": {
                                "resourceVersion": st.rv.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"}
                            }
                        }),
                    ));
                }
                Some(st.rv)
            }
        };
        (lines, cursor)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(mut cursor) = cursor else {
            for l in lines {
                let _ = tx.send(l).await;
            }
            return;
        };
        loop {
            let expired = {
                let st = shared.lock();
                if cursor < st.history_start {
                    lines.push(event_line(
                        "ERROR",
                        &ApiError::expired(cursor, st.history_start + 1).status_json(),
                    ));
                    true
                } else {
                    for e in st.log.iter().filter(|e| e.rv > cursor) {
                        if let Some((kind, obj)) = filter.event(e) {
                            lines.push(event_line(kind, obj));
                        }
                    }
                    cursor = st.rv;
                    false
                }
            };
            for l in lines.drain(..) {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = shared.cancel.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

// ---------------------------------------------------------------------------
// Small helpers

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn remove_key(v: &mut Value, k: &str) {
    if let Some(m) = v.as_object_mut() {
        m.remove(k);
    }
}

/// List items carry no `kind`/`apiVersion` in the real JSON lists.
fn strip_type(v: &mut Value) {
    remove_key(v, "kind");
    remove_key(v, "apiVersion");
}

fn random_suffix(n: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(n)
        .map(|b| ALPHANUMS[*b as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn random_hex64() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `docker-pullable://<repository>@sha256:<digest>`: the digest of a digest
/// reference, else one derived from the reference.
fn image_id(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_owned()),
        None => (image, format!("sha256:{}", sha256_hex(image.as_bytes()))),
    };
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[slash..].rfind(':') {
        Some(i) => &name[..slash + i],
        None => name,
    };
    format!("docker-pullable://{repo}@{digest}")
}

/// JSON with object keys sorted, whatever `serde_json`'s map order.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// `controller.ComputeHash`'s shape: FNV-32a of the template, its decimal
/// form encoded with `rand.SafeEncodeString`.
fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in canonical(template).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x:1", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "x:2"}]
        }}}});
        strategic_merge(&mut live, &patch).unwrap();
        let cs = &live["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "x:2");
        assert_eq!(cs[0]["env"][0]["value"], "1");
        assert_eq!(cs[1]["image"], "y:1");
    }

    #[test]
    fn strategic_merge_delete_and_replace_directives() {
        let mut live = json!({"a": {"b": 1, "c": 2}, "containers": [{"name": "x"}, {"name": "y"}]});
        let patch = json!({"a": {"$patch": "replace", "d": 3},
                           "containers": [{"name": "x", "$patch": "delete"}]});
        strategic_merge(&mut live, &patch).unwrap();
        assert_eq!(live, json!({"a": {"d": 3}, "containers": [{"name": "y"}]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/b/c", "value": 5},
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "add", "path": "/b/d~1e", "value": true},
                {"op": "remove", "path": "/a/0"},
                {"op": "test", "path": "/a", "value": [2, 3]}
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"a": [2, 3], "b": {"c": 5, "d/e": true}}));
        assert!(json_patch(
            &mut doc,
            &json!([{"op": "replace", "path": "/zz", "value": 1}])
        )
        .is_err());
    }

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let obj = json!({"metadata": {"name": "n", "labels": {"app": "x"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let set = fields_of(&obj, None);
        let v1 = fields_to_json(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        let mut back = BTreeSet::new();
        fields_from_json(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
        let p: FieldPath = vec![
            "f:spec".into(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(
            display_path(&p),
            ".spec.template.spec.containers[name=\"c\"].image"
        );
        assert_eq!(get_path(&obj, &p), Some(&json!("i")));
    }

    #[test]
    fn image_ids() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            image_id(&format!("127.0.0.1:5000/gw:1.0@{d}")),
            format!("docker-pullable://127.0.0.1:5000/gw@{d}")
        );
        assert!(image_id("127.0.0.1:5000/gw:1.0")
            .starts_with("docker-pullable://127.0.0.1:5000/gw@sha256:"));
        assert_eq!(image_pull_policy("nginx"), "Always");
        assert_eq!(image_pull_policy("reg:5000/nginx:1.2"), "IfNotPresent");
    }

    #[test]
    fn label_selectors() {
        let f = Filter {
            res: Res::Pod,
            ns: None,
            labels: parse_label_selector("app=gw,tier in (a, b),!canary").unwrap(),
            fields: parse_field_selector(Res::Pod, "metadata.name=p1").unwrap(),
        };
        let pod = json!({"metadata": {"name": "p1", "labels": {"app": "gw", "tier": "b"}}});
        assert!(f.matches(&pod));
        let pod2 = json!({"metadata": {"name": "p1", "labels": {"app": "gw", "tier": "c"}}});
        assert!(!f.matches(&pod2));
        assert!(parse_field_selector(Res::Deployment, "spec.replicas=1").is_err());
    }
}
