//! An in-process test double of Argo CD's REST API for Applications (the
//! grpc-gateway JSON API of `argocd-server`), plain HTTP on
//! `127.0.0.1:<random port>`. The test sets each Application's state with
//! [`ArgoDouble::set_app`]; Gantry reads it as it reads a real Argo CD.
//!
//! Sources: Argo CD's API docs (`/api/v1/applications/{name}` of
//! `ApplicationService.Get`, swagger `server/swagger.json`: query `refresh`
//! (`normal`|`hard`), `appNamespace`, `project`, `resourceVersion`), the
//! `Application` type (`pkg/apis/application/v1alpha1/types.go`: `spec.source`,
//! `status.sync`, `status.health`, `status.operationState`,
//! `status.conditions`), Argo CD's health and sync status values
//! (`gitops-engine` `health.HealthStatusCode`, `SyncStatusCode`,
//! `OperationPhase`), and issues quoting argocd-server's grpc-gateway error
//! bodies (`{"error": ..., "code": <gRPC code>, "message": ...}`).
//!
//! # Rules
//! - Every request needs `Authorization: Bearer <token>` (or the cookie
//!   `argocd.token=<token>`, as the UI sends it). Missing → **401**
//!   `{"error":"no session information","code":16,"message":"no session
//!   information"}` (gRPC `Unauthenticated` = 16); wrong →
//!   401 with "invalid session: token signature is invalid".
//! - `GET /api/v1/applications/{name}` → 200 with the Application;
//!   unknown → **404** `{"error":"applications.argoproj.io \"x\" not
//!   found","code":5,"message":"applications.argoproj.io \"x\" not found"}`
//!   (gRPC `NotFound` = 5). `refresh=normal|hard` (any other non-empty
//!   value counts as `normal`, as the server does) sets
//!   `status.reconciledAt` to now, standing in for the refresh the real
//!   server waits for. `appNamespace`: applications live in `argocd`; another
//!   namespace → 404. Other query parameters are ignored.
//! - `GET /api/v1/applications` → `{"metadata":{"resourceVersion":..},
//!   "items":[...]}`, every application.
//! - `GET /api/version` → `{"Version": "v2.13.0+..."}`.
//! - Other paths under `/api/` → 404 `{"error":"Not Found","code":5,...}`.
//!
//! # The Application
//! `metadata` (`name`, `namespace: argocd`, `uid`, `resourceVersion` bumped
//! on every change, `creationTimestamp`), `spec.source{repoURL, path,
//! targetRevision}` (set with [`ArgoDouble::set_source`]; default
//! `https://git.example.com/gitops.git`, `apps/<name>`, `HEAD`),
//! `spec.destination`, `spec.project: default`, `spec.syncPolicy.automated`;
//! `status.sync{status, revision, comparedTo}`, `status.health{status,
//! message?}`, `status.operationState{operation.sync.revision, phase,
//! message, syncResult{revision, source}, startedAt, finishedAt (not while
//! Running)}` when an operation phase is set, `status.conditions[]{type,
//! message, lastTransitionTime}`, `status.history` (one entry per revision
//! that reached `Succeeded`), `status.reconciledAt`, `status.sourceType`.
//! Without an operation message the phase's usual one is used
//! ("successfully synced (all tasks run)" for `Succeeded`, ...).
//!
//! # Simplified
//! Read-only (no sync, rollback, create, delete, watch, resource tree, or
//! session login); one project; no RBAC (a valid token sees everything).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The namespace every Application lives in.
pub const APP_NAMESPACE: &str = "argocd";

/// `status.sync.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncStatus {
    Synced,
    OutOfSync,
    #[default]
    Unknown,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Synced => "Synced",
            SyncStatus::OutOfSync => "OutOfSync",
            SyncStatus::Unknown => "Unknown",
        }
    }
}

/// `status.health.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthStatus {
    Healthy,
    Progressing,
    Degraded,
    Suspended,
    Missing,
    #[default]
    Unknown,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Progressing => "Progressing",
            HealthStatus::Degraded => "Degraded",
            HealthStatus::Suspended => "Suspended",
            HealthStatus::Missing => "Missing",
            HealthStatus::Unknown => "Unknown",
        }
    }
}

/// `status.operationState.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationPhase {
    Running,
    Terminating,
    Succeeded,
    Failed,
    Error,
}

impl OperationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationPhase::Running => "Running",
            OperationPhase::Terminating => "Terminating",
            OperationPhase::Succeeded => "Succeeded",
            OperationPhase::Failed => "Failed",
            OperationPhase::Error => "Error",
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            OperationPhase::Running => "one or more tasks are running",
            OperationPhase::Terminating => "operation is terminating",
            OperationPhase::Succeeded => "successfully synced (all tasks run)",
            OperationPhase::Failed => "one or more objects failed to apply",
            OperationPhase::Error => "the sync operation failed",
        }
    }
}

/// What the test says an Application's status is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppState {
    pub sync: SyncStatus,
    /// The git revision (commit sha) synced / compared to.
    pub revision: String,
    pub health: HealthStatus,
    pub health_message: Option<String>,
    /// `None`: no `operationState` (no sync operation ran yet).
    pub operation_phase: Option<OperationPhase>,
    pub operation_message: Option<String>,
}

/// One request naming an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgoRequest {
    pub method: String,
    /// Path with query string.
    pub path: String,
    pub app: String,
    /// The `refresh` query parameter.
    pub refresh: Option<String>,
    /// The `appNamespace` query parameter.
    pub app_namespace: Option<String>,
    /// Whether the right token came with it.
    pub authorized: bool,
}

/// Argo CD's Application API on `127.0.0.1:<random port>`. Dropping it
/// stops the server.
pub struct ArgoDouble {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<ArgoState>,
    token: String,
    addr: SocketAddr,
    cancel: CancellationToken,
}

#[derive(Default)]
struct ArgoState {
    apps: BTreeMap<String, App>,
    requests: Vec<ArgoRequest>,
    rv: u64,
}

struct App {
    state: AppState,
    source: Value,
    conditions: Vec<(String, String)>,
    uid: String,
    created: String,
    rv: u64,
    reconciled_at: String,
    started_at: String,
    finished_at: String,
    history: Vec<Value>,
}

impl ArgoDouble {
    /// Starts the server; requests must carry `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> anyhow::Result<ArgoDouble> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ArgoState::default()),
            token: token.to_owned(),
            addr,
            cancel: CancellationToken::new(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let shutdown = shared.cancel.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(tcp, router)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(ArgoDouble { shared })
    }

    /// `http://127.0.0.1:<port>` (the API is under `/api/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Creates the Application `name` or replaces its status.
    pub fn set_app(&self, name: &str, state: AppState) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let now = now_ts();
        let app = st.apps.entry(name.to_owned()).or_insert_with(|| App {
            state: AppState::default(),
            source: json!({
                "repoURL": "https://git.example.com/gitops.git",
                "path": format!("apps/{name}"),
                "targetRevision": "HEAD"
            }),
            conditions: Vec::new(),
            uid: uuid::Uuid::new_v4().to_string(),
            created: now.clone(),
            rv,
            reconciled_at: now.clone(),
            started_at: now.clone(),
            finished_at: now.clone(),
            history: Vec::new(),
        });
        if app.state.operation_phase != state.operation_phase
            || app.state.revision != state.revision
        {
            if state.operation_phase == Some(OperationPhase::Running)
                || app.state.operation_phase.is_none()
            {
                app.started_at = now.clone();
            }
            app.finished_at = now.clone();
        }
        if state.operation_phase == Some(OperationPhase::Succeeded)
            && !app
                .history
                .iter()
                .any(|h| h["revision"] == state.revision.as_str())
        {
            let id = app.history.len();
            app.history.push(json!({
                "revision": state.revision,
                "deployedAt": now,
                "deployStartedAt": app.started_at,
                "id": id,
                "source": app.source.clone()
            }));
        }
        app.state = state;
        app.rv = rv;
        app.reconciled_at = now;
    }

    /// Sets `spec.source` of an existing Application.
    ///
    /// # Panics
    /// When the Application does not exist.
    pub fn set_source(&self, name: &str, repo_url: &str, path: &str, target_revision: &str) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let app = st
            .apps
            .get_mut(name)
            .unwrap_or_else(|| panic!("no application {name}"));
        app.source = json!({"repoURL": repo_url, "path": path, "targetRevision": target_revision});
        app.rv = rv;
    }

    /// Sets `status.conditions` (`(type, message)`, e.g.
    /// `("SyncError", "...")`, `("ComparisonError", "...")`) of an existing
    /// Application.
    ///
    /// # Panics
    /// When the Application does not exist.
    pub fn set_conditions(&self, name: &str, conditions: &[(&str, &str)]) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let app = st
            .apps
            .get_mut(name)
            .unwrap_or_else(|| panic!("no application {name}"));
        app.conditions = conditions
            .iter()
            .map(|(t, m)| (t.to_string(), m.to_string()))
            .collect();
        app.rv = rv;
    }

    /// Deletes the Application (later requests get 404).
    pub fn remove_app(&self, name: &str) {
        self.lock().apps.remove(name);
    }

    /// The Application as `GET` answers it.
    pub fn app(&self, name: &str) -> Option<Value> {
        let st = self.lock();
        st.apps.get(name).map(|a| app_json(name, a))
    }

    /// How many requests named this application (authorized or not).
    pub fn requests(&self, name: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.app == name)
            .count()
    }

    /// Every request naming an application, in order.
    pub fn recorded(&self) -> Vec<ArgoRequest> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> MutexGuard<'_, ArgoState> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ArgoState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ArgoDouble {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl std::fmt::Debug for ArgoDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgoDouble")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn destination(name: &str) -> Value {
    json!({"server": "https://kubernetes.default.svc", "namespace": name})
}

fn app_json(name: &str, a: &App) -> Value {
    let s = &a.state;
    let mut health = json!({"status": s.health.as_str()});
    if let Some(m) = &s.health_message {
        health["message"] = json!(m);
    }
    let mut status = json!({
        "sync": {
            "status": s.sync.as_str(),
            "comparedTo": {"source": a.source, "destination": destination(name)},
            "revision": s.revision
        },
        "health": health,
        "reconciledAt": a.reconciled_at,
        "sourceType": "Directory",
        "controllerNamespace": APP_NAMESPACE,
        "summary": {}
    });
    if !a.history.is_empty() {
        status["history"] = json!(a.history);
    }
    if let Some(phase) = s.operation_phase {
        let message = s
            .operation_message
            .clone()
            .unwrap_or_else(|| phase.default_message().to_owned());
        let mut op = json!({
            "operation": {
                "sync": {"revision": s.revision, "syncStrategy": {"hook": {}}},
                "initiatedBy": {"automated": true},
                "retry": {"limit": 5}
            },
            "phase": phase.as_str(),
            "message": message,
            "syncResult": {"resources": [], "revision": s.revision, "source": a.source},
            "startedAt": a.started_at
        });
        if phase != OperationPhase::Running {
            op["finishedAt"] = json!(a.finished_at);
        }
        status["operationState"] = op;
    }
    if !a.conditions.is_empty() {
        status["conditions"] = json!(a
            .conditions
            .iter()
            .map(|(t, m)| json!({"type": t, "message": m, "lastTransitionTime": a.reconciled_at}))
            .collect::<Vec<_>>());
    }
    json!({
        "metadata": {
            "name": name,
            "namespace": APP_NAMESPACE,
            "uid": a.uid,
            "resourceVersion": a.rv.to_string(),
            "generation": 1,
            "creationTimestamp": a.created
        },
        "spec": {
            "source": a.source,
            "destination": destination(name),
            "project": "default",
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}}
        },
        "status": status
    })
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("valid response")
}

/// grpc-gateway's error body.
fn grpc_error(http: StatusCode, code: u32, message: &str) -> Response {
    json_response(
        http,
        &json!({"error": message, "code": code, "message": message}),
    )
}

/// `None`: no credentials; `Some(ok)`: credentials, right or wrong.
fn credentials(headers: &HeaderMap, token: &str) -> Option<bool> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(
            auth.strip_prefix("Bearer ")
                .is_some_and(|t| t.trim() == token),
        );
    }
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok())?;
    let value = cookie
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "argocd.token")
        .map(|(_, v)| v)?;
    Some(value == token)
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let path_q = req.uri().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let method = req.method().clone();
    let auth = credentials(req.headers(), &shared.token);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let app_name = match segs.as_slice() {
        ["api", "v1", "applications", name, ..] => Some(name.to_string()),
        _ => None,
    };
    if let Some(app) = &app_name {
        shared.lock().requests.push(ArgoRequest {
            method: method.to_string(),
            path: path_q,
            app: app.clone(),
            refresh: query.get("refresh").cloned(),
            app_namespace: query.get("appNamespace").cloned(),
            authorized: auth == Some(true),
        });
    }
    match auth {
        None => return grpc_error(StatusCode::UNAUTHORIZED, 16, "no session information"),
        Some(false) => {
            return grpc_error(
                StatusCode::UNAUTHORIZED,
                16,
                "invalid session: token signature is invalid",
            )
        }
        Some(true) => {}
    }
    let not_found = || grpc_error(StatusCode::NOT_FOUND, 5, "Not Found");
    if method != Method::GET {
        return match segs.as_slice() {
            ["api", ..] => grpc_error(StatusCode::NOT_IMPLEMENTED, 12, "Method Not Allowed"),
            _ => not_found(),
        };
    }
    match segs.as_slice() {
        ["api", "version"] => json_response(
            StatusCode::OK,
            &json!({"Version": "v2.13.0+347f221", "Platform": "linux/amd64"}),
        ),
        ["api", "v1", "applications"] => {
            let st = shared.lock();
            let items: Vec<Value> = st.apps.iter().map(|(n, a)| app_json(n, a)).collect();
            json_response(
                StatusCode::OK,
                &json!({"metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        ["api", "v1", "applications", name] => {
            let missing = || {
                grpc_error(
                    StatusCode::NOT_FOUND,
                    5,
                    &format!("applications.argoproj.io \"{name}\" not found"),
                )
            };
            if query
                .get("appNamespace")
                .is_some_and(|ns| !ns.is_empty() && ns != APP_NAMESPACE)
            {
                return missing();
            }
            let mut st = shared.lock();
            let Some(app) = st.apps.get_mut(*name) else {
                return missing();
            };
            if query.get("refresh").is_some_and(|r| !r.is_empty()) {
                app.reconciled_at = now_ts();
            }
            json_response(StatusCode::OK, &app_json(name, app))
        }
        _ => not_found(),
    }
}
