//! A stateful, in-process test double of Axway API Manager's REST API (the
//! "API Portal REST API", base path `/api/portal/v1.4`, also served as
//! `/api/portal/v1.3`), for Gantry's API Manager promotion tests.
//!
//! API Manager itself cannot run here. The double serves the requests Gantry
//! (and apim-cli, whose behaviour Gantry mirrors) sends, keeps what they create
//! and enforces the rules below. Sources are named with each rule:
//!
//! - **fixtures**: apim-cli's own WireMock stubs, copied to
//!   `shared/fixtures/apim-cli/wiremock_apim/` (`mappings/<name>.json` for
//!   routes and statuses, `__files/<name>.json` for response bodies);
//! - **apim-cli**: how apim-cli (Axway-API-Management-Plus/apim-cli, modules
//!   `apim-adapter`) calls the API and which statuses it expects:
//!   `APIManagerAdapter` (login/currentuser/CSRF), `APIManagerAPIAdapter`
//!   (proxies, apirepo, publish, upgrade, grantaccess),
//!   `APIManagerAPIAccessAdapter` (org/app API access),
//!   `APIManagerOrganizationAdapter`, the `API` model's
//!   `@APIPropertyAnnotation(writableStates = ...)`, `ManageClientApps`;
//! - **issues**: apim-cli / apimanager-swagger-promote GitHub issues quoting
//!   real API Manager answers.
//!
//! Every JSON object is built in API Manager's own shape: the key sets equal
//! those of the fixture bodies (`tests/tests/it/apimanager_double.rs` checks it).
//!
//! # Session and CSRF
//! - `POST /login`, form `username`, `password` (apim-cli
//!   `APIManagerAdapter.loginToAPIManager`): right credentials → **303** with
//!   no body and no `Location` (fixture `login.json`; apim-cli treats 303 as
//!   success, and without `Location` an HTTP client does not follow it), plus
//!   `Set-Cookie: APIMANAGERSESSION=<random>; Path=/; HttpOnly` (`; Secure`
//!   over HTTPS). `APIMANAGERSESSION` is API Manager's session cookie (public
//!   deployment notes for Axway API Management set load-balancer stickiness on
//!   it; API Builder code talking to API Manager reads it from `Set-Cookie`).
//!   Wrong credentials → 401.
//! - `DELETE /login` → 204 and the session ends (fixture `logout.json`;
//!   apim-cli `logoutFromAPIManager` expects 204). Without a session → 401.
//! - Every other route without a valid session cookie → **401**.
//! - `GET /currentuser` → 200, body shaped like `current_user.json`, and
//!   header `CSRF-Token: <token>` bound to the session (apim-cli
//!   `getCurrentUser`: "Starting from 7.6.2 SP3 the CSRF token is returned on
//!   CurrentUser request"; it reads the header case-insensitively and sends it
//!   back as `CSRF-Token`).
//! - Every non-GET request except `POST`/`DELETE /login` must carry
//!   `CSRF-Token` equal to the session's token, else **403**. Assumption: no
//!   public source quotes API Manager's answer to a missing token; 403 is what
//!   CSRF filters answer, and apim-cli never sends a write without the token.
//!
//! # Errors
//! Error bodies are `{"errors":[{"code":<status>,"message":"..."}]}`, the
//! shape API Manager answers with (apim-cli issues #309 `{"errors":[{"code":404,
//! "message":"Unknown API"}]}` and #530 `{"errors":[{"code":400,"message":
//! "Invalid JSON format"}]}`). Unknown frontend/backend APIs answer 404
//! "Unknown API" (the text apim-cli retries on); unknown organizations,
//! applications and access entries 404 "The entity could not be found" (also
//! matched by apim-cli). Unknown routes → 404. Malformed JSON → 400.
//!
//! # Frontend APIs (proxies)
//! - `GET /proxies` with apim-cli's filters (`APIFilter`; fixtures
//!   `getFrontendByPath`, `getFrontendByName`, `getFrontendByApiId`,
//!   `getFrontendBy*AndState*`): repeated `field`/`op`/`value` triples, all of
//!   which must hold; `field` is matched case-insensitively against the
//!   object's keys (`apiid` = `apiId`); `op` is `eq`, `ne`, `like`
//!   (case-insensitive substring, `*`/`%` ignored), `gt`, `lt`. Unknown `op` →
//!   400. Other query parameters are ignored. `GET /proxies/{id}`.
//! - `POST /proxies`, JSON `{"apiId": <backend id>, "organizationId": ...}`
//!   (apim-cli `createAPIProxy`, expects 201; fixture `importFrontendApi.json`
//!   → 201 with `frontend_api_unpublished.json`): an *unpublished* proxy derived
//!   from the backend: its `name`, `version`, `path` = backend `resourcePath`,
//!   `serviceProfiles._default` = backend id and `basePath`, and the default
//!   cors/security/authentication/inbound/outbound profiles of the fixture
//!   (outbound policies `null`, `caCerts` empty).
//! - `PUT /proxies/{id}`, JSON object (apim-cli `updateAPIProxy` sends the full
//!   object without nulls) → 200 with the stored proxy. The body is merged key
//!   by key into the stored proxy (absent keys keep their value; unknown keys,
//!   e.g. custom properties, are kept). Server-managed keys are ignored: `id`,
//!   `apiId`, `organizationId`, `state`, `deprecated`, `retired`, `expired`,
//!   `retirementDate`, `createdOn`, `createdBy` (state changes only through the
//!   endpoints below). On a *published* proxy (deprecated or not), changing
//!   `path`, `vhost`, `apiRoutingKey`, `name`, `version`, `securityProfiles`,
//!   `authenticationProfiles`, `inboundProfiles`, `outboundProfiles`,
//!   `serviceProfiles` or `caCerts` is refused with **403** and nothing
//!   changes; everything else (summary, descriptions, tags, custom properties,
//!   corsProfiles, image, ...) is allowed. Sources: the `API` model marks those
//!   fields breaking and/or writable only while unpublished; real API Manager
//!   answers 403 Forbidden to proxy updates it refuses on published APIs
//!   (apimanager-swagger-promote issues #257 and #282 — the latter a vhost
//!   change). Deviation from apim-cli's model, kept on purpose: it also lists
//!   `tags`, `customProperties`, `corsProfiles` and `summary` as writable only
//!   while unpublished; the double lets them change.
//! - `POST /proxies/{id}/publish`, optional form `vhost`, `name` → **200**
//!   (fixture `publishApi.json`; apim-cli accepts 200 and 201, issue #134);
//!   only from `unpublished`/`pending`, else 403 "API is already published".
//! - `POST /proxies/{id}/unpublish` → **200** (fixture `unpublishApi.json`);
//!   only when published, else **403 "API is already unpublished"** (apim-cli
//!   `updateAPIStatus` handles exactly that answer). Clears `deprecated`.
//! - `POST /proxies/{id}/deprecate`, optional form `retirementDate`
//!   (`yyyy-MM-ddTHH:mm:ssZ` as apim-cli sends it, or epoch millis) → **201**
//!   (fixture `deprecateApi.json`; apim-cli `updateRetirementDate` expects 201
//!   and calls it again on deprecated APIs to move the date). Only when
//!   published, else 403. Deprecation is a flag: `state` stays `published`,
//!   `deprecated` becomes `true` (apim-cli `API.getState`).
//! - `POST /proxies/{id}/undeprecate` → 201; only when deprecated, else 403.
//! - `DELETE /proxies/{id}` → 204 (fixture `deleteFrontendApi.json`); only when
//!   unpublished, else 403. Its org access and subscriptions go with it.
//! - `POST /proxies/upgrade/{oldId}`, form `upgradeApiId`, optional
//!   `deprecate`, `retire`, `retirementDate` (apim-cli
//!   `upgradeAccessToNewerAPI`, expects 204) → 204: the organizations granted
//!   the old API and the applications subscribed to it now have the new one
//!   *instead* (entries move; duplicates merge); `deprecate=true` deprecates a
//!   published old API, `retire=true` sets its `retired`. Note: the brief for
//!   this double asks for "moves"; real API Manager may well keep the old
//!   API's access until it is retired (apim-cli deletes the old API after
//!   upgrading, so the difference does not show in its flow).
//! - `GET /proxies/{id}/apiaccess` (fixture `api_access.json` shape: granted
//!   organizations, each with its subscribed applications) and
//!   `DELETE /proxies/{id}/apiaccess?organizationId=<org>` → 204 (fixture
//!   `revokeOrgAccessToApi.json`).
//! - `GET /proxies/{id}/applications` → subscribed applications (fixture
//!   `getFrontendApiApplicationSubscriptions.json`).
//! - `GET /proxies/{id}/operations` → `[]` (simplified: no methods model).
//! - `POST /proxies/grantaccess`, form `action=orgs`, `apiId`, `grantOrgId`
//!   (repeatable), or `action=all_orgs`, `apiId` (fixtures
//!   `grantApiAccessToOrg.json`, `grantApiAccessToAllOrg.json`; apim-cli
//!   `grantClientOrganization` expects 204) → 204; idempotent.
//!
//! # Backend APIs (apirepo)
//! - `POST /apirepo/import/` (with or without the trailing slash), multipart
//!   fields `name`, `type`, `organizationId`, `file` (apim-cli
//!   `importFromSwagger` also sends `fileName`, `integral`, `uploadType`, which
//!   are ignored) → **201** with the backend (fixture `importBackendApi.json` →
//!   `backend_api.json`). From a JSON or YAML Swagger 2.0 spec: `basePath` =
//!   `<first scheme>://<host>`, `resourcePath` = spec `basePath`; from OpenAPI
//!   3: both from `servers[0].url`; `version`, `description`, `models`
//!   (`definitions` / `components.schemas`) and `properties` (`info.title`,
//!   `backendUrls`, `ResourceType` `swagger20`/`oas30`, ...) as in the
//!   fixture. Other types (wsdl, graphql, unparsable specs) get empty values.
//!   The original bytes are stored.
//! - `POST /apirepo/importFromUrl/`, form `url`, `name`, `type`,
//!   `organizationId` (apim-cli `importFromWSDL`) → 201. The double does not
//!   fetch the URL: it records it as `importUrl`, stores no spec and sets
//!   `hasOriginalDefinition: false`.
//! - `GET /apirepo` (same filters as proxies), `GET /apirepo/{id}`,
//!   `DELETE /apirepo/{id}` → 204 (fixture `deleteBackendApi.json`; no check
//!   that no proxy uses it), `GET /apirepo/{id}/download[?original=true]` → the
//!   stored bytes, `Content-Type` sniffed (JSON / XML / text) and
//!   `Content-Disposition: attachment; filename="<uploaded file name>"` (apim-cli
//!   reads the name from it); 404 when no spec was stored. `original=false`
//!   returns the same bytes (simplified: no conversion).
//!
//! # Organizations, applications, access
//! - `GET /organizations` (filters as above; fixture `getOrganizationByName`),
//!   `GET /organizations/{id}`, `POST /organizations` JSON with `name` → **201**
//!   (fixture `createOrganization.json` answers 200; apim-cli accepts any 2xx),
//!   name taken → 409 "resource already exists"; `PUT /organizations/{id}` →
//!   200 (merge; `id`, `dn`, `createdOn` managed); `DELETE` → 204, removing its
//!   applications and all their access entries.
//! - `GET /organizations/{id}/apis` (fixture `getFrontendApiOrgSubscriptions`
//!   → `organization_subscriptions_frontend_api_by_id.json`: entries `id`,
//!   `apiId`, `createdBy`, `state`, `createdOn`, `enabled` — the brief named
//!   `api_access.json`, but that is the `/proxies/{id}/apiaccess` shape),
//!   `POST /organizations/{id}/apis` JSON `{"apiId": ...}` → 200 (fixture
//!   `createOrgApiSubscription.json`), already there → 409 "resource already
//!   exists" (apim-cli `createAPIAccess` ignores that answer),
//!   `DELETE /organizations/{id}/apis/{accessId}` → 204.
//! - `GET /applications` (filters; fixture `getApplicationByName`),
//!   `GET /applications/{id}`, `POST /applications` JSON with `name` and an
//!   existing `organizationId` (else 400 / 404) → 201 (fixture
//!   `createApplication.json` answers 200), `PUT` → 200, `DELETE` → 204.
//! - `GET /applications/{id}/apis` (fixture `getApplicationToAccessApi` →
//!   `grantApplicationToAccessApis.json`), `POST /applications/{id}/apis` JSON
//!   `{"apiId": ..., "enabled": true}` → 201 (fixture
//!   `createApplicationAccessToApi.json`), `DELETE
//!   /applications/{id}/apis/{accessId}` → 204 (fixture
//!   `deleteApplicationApiAccess.json`). A subscription needs the
//!   application's organization to own the API or to have been granted it,
//!   else 403 (apim-cli `ManageClientApps.hasClientAppPermission` skips such
//!   applications: "Organization of configured application ... has NO
//!   permission to this API"); already subscribed → 409.
//!
//! # Test hooks
//! Every request is recorded (method, path with query, body text for
//! form/JSON bodies — multipart bodies as `name=value&...` with file parts as
//! `name=@<file name>(<n> bytes)`, the `CSRF-Token` header, whether a valid
//! session cookie came with it). `fail_next` answers matching requests with an
//! error before any other processing (so also before authentication), without
//! changing state; they are still recorded.
//!
//! # Simplified
//! One user (admin role); no quotas, users, images, methods/operations, remote
//! hosts, policies, config or approval workflow (`pending`); no path/vhost
//! conflict checks on publish (real API Manager allows two published APIs on
//! one path too, apim-cli issue #75); deleting a backend or organization does
//! not check for proxies that still use it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

/// API Manager's session cookie.
pub const SESSION_COOKIE: &str = "APIMANAGERSESSION";
/// Header carrying the CSRF token: returned by `GET /currentuser`, required on writes.
pub const CSRF_HEADER: &str = "CSRF-Token";
/// Default login of [`ApiManagerDouble::start`].
pub const DEFAULT_USER: &str = "apiadmin";
/// Default password of [`ApiManagerDouble::start`].
pub const DEFAULT_PASSWORD: &str = "changeme";
/// The REST base path Gantry uses.
pub const BASE_PATH: &str = "/api/portal/v1.4";
/// Both base paths served.
pub const BASE_PATHS: [&str; 2] = ["/api/portal/v1.4", "/api/portal/v1.3"];

/// The current user's id (the one in `current_user.json`); `createdBy` of everything.
const USER_ID: &str = "40dd53a4-0b13-4485-82e8-63c687404c2f";
/// Largest request body read.
const MAX_BODY: usize = 64 << 20;

// ---------------------------------------------------------------------------
// Public API

/// One request as the double (or [`crate::wiremock::WireMockStubs`]) received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Upper-case method, e.g. `POST`.
    pub method: String,
    /// Path with query string as received, e.g. `/api/portal/v1.4/proxies?field=name&op=eq&value=x`.
    pub path: String,
    /// Body text of form and JSON bodies; multipart bodies summarized as
    /// `name=value&file=@<file name>(<n> bytes)`; `None` for empty or other bodies.
    pub body: Option<String>,
    /// The `CSRF-Token` header, if sent.
    pub csrf: Option<String>,
    /// Whether the request carried a valid session cookie (for the WireMock
    /// server: whether it carried any `Cookie` header).
    pub has_session: bool,
}

/// A stateful API Manager REST API on `127.0.0.1:<random port>`. Dropping it
/// stops the server (idle connections are closed).
pub struct ApiManagerDouble {
    server: Server,
    state: Arc<Mutex<DoubleState>>,
    ca_pem: Option<String>,
}

impl ApiManagerDouble {
    /// HTTP on `127.0.0.1:<random>`, user `apiadmin` / password `changeme`,
    /// REST base `/api/portal/v1.4` (also served as `/api/portal/v1.3`).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_inner(None).await
    }

    /// HTTPS with a certificate for `127.0.0.1` and `localhost` signed by a
    /// fresh CA (rcgen); [`ApiManagerDouble::ca_pem`] returns that CA.
    pub async fn start_tls() -> anyhow::Result<Self> {
        let tls = self_signed_tls().context("creating the test CA and server certificate")?;
        Self::start_inner(Some(tls)).await
    }

    async fn start_inner(tls: Option<TlsMaterial>) -> anyhow::Result<Self> {
        let secure = tls.is_some();
        let state = Arc::new(Mutex::new(DoubleState::new(secure)));
        let router = Router::new().fallback(handle).with_state(state.clone());
        let (config, ca_pem) = match tls {
            Some(t) => (Some(t.config), Some(t.ca_pem)),
            None => (None, None),
        };
        let server = serve(router, config).await?;
        Ok(ApiManagerDouble {
            server,
            state,
            ca_pem,
        })
    }

    /// The CA (PEM) that signed the server certificate; `None` for plain HTTP.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// `http://127.0.0.1:<port>` or `https://127.0.0.1:<port>` (no base path).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Changes the credentials `POST /login` accepts (existing sessions stay).
    pub fn set_credentials(&self, user: &str, password: &str) {
        let mut st = self.lock();
        st.user = user.to_owned();
        st.password = password.to_owned();
    }

    /// Seeds an organization (no request recorded); returns its id. A name
    /// that exists already returns the existing organization's id.
    pub fn add_organization(&self, name: &str) -> String {
        let mut st = self.lock();
        if let Some(o) = st.orgs.iter().find(|o| o["name"] == name) {
            return text(&o["id"]);
        }
        let org = new_org(name, now_ms());
        let id = text(&org["id"]);
        st.orgs.push(org);
        id
    }

    /// Seeds an application in `organization` (an organization id or name;
    /// an unknown name creates that organization); returns its id.
    pub fn add_application(&self, name: &str, organization: &str) -> String {
        let org_id = {
            let st = self.lock();
            st.orgs
                .iter()
                .find(|o| o["id"] == organization)
                .or_else(|| st.orgs.iter().find(|o| o["name"] == organization))
                .map(|o| text(&o["id"]))
        };
        let org_id = org_id.unwrap_or_else(|| self.add_organization(organization));
        let app = new_app(name, &org_id, now_ms());
        let id = text(&app["id"]);
        self.lock().apps.push(app);
        id
    }

    /// Frontend APIs (proxies), in creation order.
    pub fn proxies(&self) -> Vec<Value> {
        self.lock().proxies.clone()
    }

    /// Backend APIs, in creation order.
    pub fn backends(&self) -> Vec<Value> {
        self.lock()
            .backends
            .iter()
            .map(|b| b.json.clone())
            .collect()
    }

    /// Organizations, in creation order.
    pub fn organizations(&self) -> Vec<Value> {
        self.lock().orgs.clone()
    }

    /// Applications, in creation order.
    pub fn applications(&self) -> Vec<Value> {
        self.lock().apps.clone()
    }

    /// Ids of the organizations granted access to the frontend API `proxy_id`.
    pub fn org_access(&self, proxy_id: &str) -> Vec<String> {
        self.lock()
            .org_access
            .iter()
            .filter(|a| a.api_id == proxy_id)
            .map(|a| a.owner.clone())
            .collect()
    }

    /// Ids of the frontend APIs application `app_id` is subscribed to.
    pub fn app_access(&self, app_id: &str) -> Vec<String> {
        self.lock()
            .app_access
            .iter()
            .filter(|a| a.owner == app_id)
            .map(|a| a.api_id.clone())
            .collect()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// State-changing calls (POST/PUT/DELETE/PATCH) other than login and
    /// logout, as `"<METHOD> <path with query>"`, in order (injected failures
    /// included: they were sent).
    pub fn write_calls(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "DELETE" | "PATCH"))
            .filter(|r| {
                let path = r.path.split('?').next().unwrap_or_default();
                !BASE_PATHS
                    .iter()
                    .any(|b| path.trim_end_matches('/') == format!("{b}/login"))
            })
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The next `times` requests whose method equals `method` (case-insensitive;
    /// `*` for any) and whose path (with query) contains `path_contains` are
    /// answered with `status` and an API Manager error body, without changing
    /// state.
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16, times: usize) {
        self.lock().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_owned(),
            status,
            remaining: times,
        });
    }

    fn lock(&self) -> MutexGuard<'_, DoubleState> {
        lock(&self.state)
    }
}

impl std::fmt::Debug for ApiManagerDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiManagerDouble")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Server plumbing (shared with the WireMock server)

/// A running axum server; cancelling (on `Drop`) stops accepting and closes
/// idle connections.
pub(crate) struct Server {
    addr: SocketAddr,
    tls: bool,
    token: CancellationToken,
}

impl Server {
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Serves `router` on `127.0.0.1:<random>`, over TLS when `tls` is given.
pub(crate) async fn serve(
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<Server> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let addr = tcp.local_addr()?;
    let token = CancellationToken::new();
    let shutdown = token.clone().cancelled_owned();
    let is_tls = tls.is_some();
    match tls {
        None => {
            tokio::spawn(async move {
                let _ = axum::serve(tcp, router)
                    .with_graceful_shutdown(shutdown)
                    .await;
            });
        }
        Some(config) => {
            let listener = TlsListener::spawn(tcp, addr, config, token.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await;
            });
        }
    }
    Ok(Server {
        addr,
        tls: is_tls,
        token,
    })
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Accepts TCP connections and completes TLS handshakes in their own tasks, so
/// a client that stalls or fails its handshake blocks nobody.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(
        tcp: tokio::net::TcpListener,
        local: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        token: CancellationToken,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), handshake).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor stopped (shutdown): wait for the server to end.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

pub(crate) struct TlsMaterial {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) ca_pem: String,
}

/// A fresh CA and a server certificate for `localhost` and `127.0.0.1` it signed.
pub(crate) fn self_signed_tls() -> anyhow::Result<TlsMaterial> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gantry test API Manager CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let leaf = leaf_params.signed_by(&leaf_key, &*ca)?;

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        config: Arc::new(config),
        ca_pem: ca.pem(),
    })
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) filename: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) data: Bytes,
}

/// Parses a `multipart/form-data` body.
pub(crate) async fn parse_multipart(content_type: &str, body: Bytes) -> Result<Vec<Part>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field.file_name().map(str::to_owned);
        let headers = field
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let data = field.bytes().await.map_err(|e| e.to_string())?;
        parts.push(Part {
            name,
            filename,
            headers,
            data,
        });
    }
    Ok(parts)
}

/// A request read whole: what both servers match on.
pub(crate) struct Incoming {
    pub(crate) method: String,
    /// Path without query.
    pub(crate) path: String,
    /// Path and query as received.
    pub(crate) path_and_query: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) raw: Bytes,
    pub(crate) payload: Payload,
}

pub(crate) enum Payload {
    Empty,
    Form(Vec<(String, String)>),
    /// `None`: not valid JSON.
    Json(Option<Value>),
    /// `None`: not valid multipart.
    Multipart(Option<Vec<Part>>),
    Other,
}

impl Incoming {
    pub(crate) async fn read(req: Request) -> Incoming {
        let (parts, body) = req.into_parts();
        let raw = axum::body::to_bytes(body, MAX_BODY)
            .await
            .unwrap_or_default();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let ct = content_type.to_ascii_lowercase();
        let payload = if ct.starts_with("multipart/form-data") {
            Payload::Multipart(parse_multipart(&content_type, raw.clone()).await.ok())
        } else if raw.is_empty() {
            if ct.starts_with("application/x-www-form-urlencoded") {
                Payload::Form(Vec::new())
            } else {
                Payload::Empty
            }
        } else if ct.starts_with("application/x-www-form-urlencoded") {
            Payload::Form(
                url::form_urlencoded::parse(&raw)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            )
        } else if ct.starts_with("application/json") || ct.contains("+json") {
            Payload::Json(serde_json::from_slice(&raw).ok())
        } else {
            Payload::Other
        };
        let query = parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Incoming {
            method: parts.method.as_str().to_ascii_uppercase(),
            path: parts.uri.path().to_owned(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| parts.uri.path().to_owned()),
            query,
            headers: parts.headers,
            raw,
            payload,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Body text as recorded in [`RecordedRequest::body`].
    pub(crate) fn recorded_body(&self) -> Option<String> {
        match &self.payload {
            Payload::Empty | Payload::Other => None,
            Payload::Form(_) | Payload::Json(_) | Payload::Multipart(None) => {
                Some(String::from_utf8_lossy(&self.raw).into_owned())
            }
            Payload::Multipart(Some(parts)) => Some(
                parts
                    .iter()
                    .map(|p| match &p.filename {
                        Some(f) => format!("{}=@{}({} bytes)", p.name, f, p.data.len()),
                        None => format!("{}={}", p.name, String::from_utf8_lossy(&p.data)),
                    })
                    .collect::<Vec<_>>()
                    .join("&"),
            ),
        }
    }

    fn form(&self) -> &[(String, String)] {
        match &self.payload {
            Payload::Form(pairs) => pairs,
            _ => &[],
        }
    }

    fn form_value(&self, name: &str) -> Option<&str> {
        self.form()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn json_object(&self) -> Option<&Map<String, Value>> {
        match &self.payload {
            Payload::Json(Some(Value::Object(o))) => Some(o),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Responses

pub(crate) fn response(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

fn json_response(status: u16, body: &Value) -> Response {
    response(
        status,
        &[("Content-Type", "application/json".to_owned())],
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

/// API Manager's error body: `{"errors":[{"code":<status>,"message":"..."}]}`.
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({"errors": [{"code": status, "message": message}]})
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &error_body(status, message))
}

fn no_content() -> Response {
    response(204, &[], Vec::new())
}

const UNKNOWN_API: &str = "Unknown API";
const NOT_FOUND: &str = "The entity could not be found";
const INVALID_JSON: &str = "Invalid JSON format";
const ALREADY_EXISTS: &str = "The resource already exists";

// ---------------------------------------------------------------------------
// State

struct Session {
    csrf: String,
}

struct Backend {
    json: Value,
    spec: Option<Spec>,
}

struct Spec {
    bytes: Bytes,
    filename: String,
}

/// An API access entry: an organization granted a frontend API, or an
/// application subscribed to one.
struct Access {
    id: String,
    /// Organization or application id.
    owner: String,
    api_id: String,
    created_on: u64,
    enabled: bool,
}

impl Access {
    fn new(owner: &str, api_id: &str, enabled: bool) -> Access {
        Access {
            id: new_id(),
            owner: owner.to_owned(),
            api_id: api_id.to_owned(),
            created_on: now_ms(),
            enabled,
        }
    }

    /// Shape of `organization_subscriptions_frontend_api_by_id.json` /
    /// `grantApplicationToAccessApis.json`.
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "apiId": self.api_id,
            "createdBy": USER_ID,
            "state": "approved",
            "createdOn": self.created_on,
            "enabled": self.enabled,
        })
    }
}

struct Fault {
    method: String,
    path_contains: String,
    status: u16,
    remaining: usize,
}

struct DoubleState {
    secure: bool,
    user: String,
    password: String,
    sessions: HashMap<String, Session>,
    proxies: Vec<Value>,
    backends: Vec<Backend>,
    orgs: Vec<Value>,
    apps: Vec<Value>,
    org_access: Vec<Access>,
    app_access: Vec<Access>,
    requests: Vec<RecordedRequest>,
    faults: Vec<Fault>,
}

/// Keys of a proxy that `PUT /proxies/{id}` does not change.
const PROXY_MANAGED_KEYS: [&str; 10] = [
    "id",
    "apiId",
    "organizationId",
    "state",
    "deprecated",
    "retired",
    "expired",
    "retirementDate",
    "createdOn",
    "createdBy",
];

/// Keys of a proxy that cannot change while it is published.
const PROXY_BREAKING_KEYS: [&str; 11] = [
    "path",
    "vhost",
    "apiRoutingKey",
    "name",
    "version",
    "securityProfiles",
    "authenticationProfiles",
    "inboundProfiles",
    "outboundProfiles",
    "serviceProfiles",
    "caCerts",
];

async fn handle(State(state): State<Arc<Mutex<DoubleState>>>, req: Request) -> Response {
    let incoming = Incoming::read(req).await;
    let mut st = lock(&state);
    st.dispatch(&incoming)
}

impl DoubleState {
    fn new(secure: bool) -> Self {
        DoubleState {
            secure,
            user: DEFAULT_USER.to_owned(),
            password: DEFAULT_PASSWORD.to_owned(),
            sessions: HashMap::new(),
            proxies: Vec::new(),
            backends: Vec::new(),
            orgs: Vec::new(),
            apps: Vec::new(),
            org_access: Vec::new(),
            app_access: Vec::new(),
            requests: Vec::new(),
            faults: Vec::new(),
        }
    }

    fn dispatch(&mut self, req: &Incoming) -> Response {
        let session =
            cookie(&req.headers, SESSION_COOKIE).filter(|c| self.sessions.contains_key(c));
        let csrf = req.header(CSRF_HEADER);
        self.requests.push(RecordedRequest {
            method: req.method.clone(),
            path: req.path_and_query.clone(),
            body: req.recorded_body(),
            csrf: csrf.clone(),
            has_session: session.is_some(),
        });
        if let Some(resp) = self.injected_fault(req) {
            return resp;
        }
        let Some(rest) = BASE_PATHS
            .iter()
            .find_map(|b| req.path.strip_prefix(b))
            .filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            return error(404, "Not found");
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method.as_str();
        match (method, segs.as_slice()) {
            ("POST", ["login"]) => return self.login(req),
            ("DELETE", ["login"]) => return self.logout(session.as_deref()),
            _ => {}
        }
        let Some(session) = session else {
            return error(
                401,
                "Unauthorized: no valid session, log in with POST /login",
            );
        };
        if !matches!(method, "GET" | "HEAD" | "OPTIONS") {
            let expected = self.sessions.get(&session).map(|s| s.csrf.as_str());
            if csrf.is_none() || csrf.as_deref() != expected {
                return error(
                    403,
                    "Invalid or missing CSRF token: send the CSRF-Token header returned by GET /currentuser",
                );
            }
        }
        self.route(method, &segs, req, &session)
    }

    fn injected_fault(&mut self, req: &Incoming) -> Option<Response> {
        let fault = self.faults.iter_mut().find(|f| {
            f.remaining > 0
                && (f.method == "*" || f.method == req.method)
                && req.path_and_query.contains(&f.path_contains)
        })?;
        fault.remaining -= 1;
        let status = fault.status;
        self.faults.retain(|f| f.remaining > 0);
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Injected failure");
        Some(error(status, reason))
    }

    fn route(&mut self, method: &str, segs: &[&str], req: &Incoming, session: &str) -> Response {
        match (method, segs) {
            ("GET", ["currentuser"]) => self.current_user(session),

            ("GET", ["proxies"]) => filtered(self.proxies.iter(), &req.query),
            ("POST", ["proxies"]) => self.create_proxy(req),
            ("POST", ["proxies", "grantaccess"]) => self.grant_access(req),
            ("POST", ["proxies", "upgrade", old]) => self.upgrade(old, req),
            ("GET", ["proxies", id]) => match self.proxy_index(id) {
                Some(i) => json_response(200, &self.proxies[i]),
                None => error(404, UNKNOWN_API),
            },
            ("PUT", ["proxies", id]) => self.update_proxy(id, req),
            ("DELETE", ["proxies", id]) => self.delete_proxy(id),
            ("POST", ["proxies", id, "publish"]) => self.publish(id, req),
            ("POST", ["proxies", id, "unpublish"]) => self.unpublish(id),
            ("POST", ["proxies", id, "deprecate"]) => self.deprecate(id, req),
            ("POST", ["proxies", id, "undeprecate"]) => self.undeprecate(id),
            ("GET", ["proxies", id, "apiaccess"]) => self.proxy_api_access(id),
            ("DELETE", ["proxies", id, "apiaccess"]) => self.revoke_org_access(id, req),
            ("GET", ["proxies", id, "applications"]) => self.proxy_applications(id),
            ("GET", ["proxies", id, "operations"]) => match self.proxy_index(id) {
                Some(_) => json_response(200, &json!([])),
                None => error(404, UNKNOWN_API),
            },

            ("GET", ["apirepo"]) => filtered(self.backends.iter().map(|b| &b.json), &req.query),
            ("POST", ["apirepo", "import"]) => self.import_backend(req),
            ("POST", ["apirepo", "importFromUrl"]) => self.import_backend_from_url(req),
            ("GET", ["apirepo", id]) => match self.backend_index(id) {
                Some(i) => json_response(200, &self.backends[i].json),
                None => error(404, UNKNOWN_API),
            },
            ("DELETE", ["apirepo", id]) => match self.backend_index(id) {
                Some(i) => {
                    self.backends.remove(i);
                    no_content()
                }
                None => error(404, UNKNOWN_API),
            },
            ("GET", ["apirepo", id, "download"]) => self.download_spec(id),

            ("GET", ["organizations"]) => filtered(self.orgs.iter(), &req.query),
            ("POST", ["organizations"]) => self.create_org(req),
            ("GET", ["organizations", id]) => match self.org_index(id) {
                Some(i) => json_response(200, &self.orgs[i]),
                None => error(404, NOT_FOUND),
            },
            ("PUT", ["organizations", id]) => self.update_org(id, req),
            ("DELETE", ["organizations", id]) => self.delete_org(id),
            ("GET", ["organizations", id, "apis"]) => match self.org_index(id) {
                Some(_) => access_list(&self.org_access, id),
                None => error(404, NOT_FOUND),
            },
            ("POST", ["organizations", id, "apis"]) => self.create_org_access(id, req),
            ("DELETE", ["organizations", id, "apis", access]) => {
                delete_access(&mut self.org_access, id, access)
            }

            ("GET", ["applications"]) => filtered(self.apps.iter(), &req.query),
            ("POST", ["applications"]) => self.create_app(req),
            ("GET", ["applications", id]) => match self.app_index(id) {
                Some(i) => json_response(200, &self.apps[i]),
                None => error(404, NOT_FOUND),
            },
            ("PUT", ["applications", id]) => self.update_app(id, req),
            ("DELETE", ["applications", id]) => match self.app_index(id) {
                Some(i) => {
                    self.apps.remove(i);
                    self.app_access.retain(|a| a.owner != *id);
                    no_content()
                }
                None => error(404, NOT_FOUND),
            },
            ("GET", ["applications", id, "apis"]) => match self.app_index(id) {
                Some(_) => access_list(&self.app_access, id),
                None => error(404, NOT_FOUND),
            },
            ("POST", ["applications", id, "apis"]) => self.create_app_access(id, req),
            ("DELETE", ["applications", id, "apis", access]) => {
                delete_access(&mut self.app_access, id, access)
            }

            _ => error(404, "Not found"),
        }
    }

    // -- session ------------------------------------------------------------

    fn login(&mut self, req: &Incoming) -> Response {
        let user = req.form_value("username").unwrap_or_default();
        let password = req.form_value("password").unwrap_or_default();
        if user != self.user || password != self.password {
            return error(401, "Invalid username or password");
        }
        let session = uuid::Uuid::new_v4().simple().to_string();
        let csrf = uuid::Uuid::new_v4().simple().to_string();
        self.sessions.insert(session.clone(), Session { csrf });
        let secure = if self.secure { "; Secure" } else { "" };
        response(
            303,
            &[
                ("Content-Type", "text/plain".to_owned()),
                (
                    "Set-Cookie",
                    format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly{secure}"),
                ),
            ],
            Vec::new(),
        )
    }

    fn logout(&mut self, session: Option<&str>) -> Response {
        let Some(session) = session else {
            return error(401, "Unauthorized: no valid session");
        };
        self.sessions.remove(session);
        response(
            204,
            &[
                ("Content-Type", "text/plain".to_owned()),
                (
                    "Set-Cookie",
                    format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly"),
                ),
            ],
            Vec::new(),
        )
    }

    /// Shape of `current_user.json`.
    fn current_user(&self, session: &str) -> Response {
        let csrf = self
            .sessions
            .get(session)
            .map(|s| s.csrf.clone())
            .unwrap_or_default();
        let body = json!({
            "id": USER_ID,
            "name": "API Administrator",
            "description": "API Administrator",
            "loginName": self.user,
            "email": format!("{}@localhost", self.user),
            "role": "admin",
            "enabled": true,
            "createdOn": 1670957709050u64,
            "state": "approved",
            "type": "internal",
            "authAttrs": {
                "firstLogin": false,
                "isSSOLogin": false,
                "userDn": format!("cn={},ou=organizations,ou=APIPortal", self.user),
                "lastSeen": now_ms(),
                "passwordSetOn": 1670957878095u64,
                "changePassword": false,
                "changePasswordMessage": null,
            },
            "dn": format!("cn={},ou=organizations,ou=APIPortal", self.user),
        });
        response(
            200,
            &[
                ("Content-Type", "application/json".to_owned()),
                (CSRF_HEADER, csrf),
            ],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }

    // -- lookups ------------------------------------------------------------

    fn proxy_index(&self, id: &str) -> Option<usize> {
        self.proxies.iter().position(|p| p["id"] == id)
    }

    fn backend_index(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.json["id"] == id)
    }

    fn org_index(&self, id: &str) -> Option<usize> {
        self.orgs.iter().position(|o| o["id"] == id)
    }

    fn app_index(&self, id: &str) -> Option<usize> {
        self.apps.iter().position(|a| a["id"] == id)
    }

    fn org_has_access(&self, org: &str, api: &str) -> bool {
        self.org_access
            .iter()
            .any(|a| a.owner == org && a.api_id == api)
    }

    // -- proxies ------------------------------------------------------------

    fn create_proxy(&mut self, req: &Incoming) -> Response {
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(api_id) = body.get("apiId").and_then(Value::as_str) else {
            return error(400, "apiId is required");
        };
        let Some(org_id) = body.get("organizationId").and_then(Value::as_str) else {
            return error(400, "organizationId is required");
        };
        let Some(backend) = self.backend_index(api_id) else {
            return error(404, UNKNOWN_API);
        };
        if self.org_index(org_id).is_none() {
            return error(404, NOT_FOUND);
        }
        let proxy = new_proxy(&self.backends[backend].json, org_id, now_ms());
        self.proxies.push(proxy.clone());
        json_response(201, &proxy)
    }

    fn update_proxy(&mut self, id: &str, req: &Incoming) -> Response {
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(i) = self.proxy_index(id) else {
            return error(404, UNKNOWN_API);
        };
        let stored = &self.proxies[i];
        let mut merged = stored.clone();
        for (key, value) in body {
            if PROXY_MANAGED_KEYS.contains(&key.as_str()) {
                continue;
            }
            merged[key.as_str()] = value.clone();
        }
        if !merged["path"].as_str().is_some_and(|p| p.starts_with('/')) {
            return error(400, "path must start with '/'");
        }
        if stored["state"] == "published" {
            let changed: Vec<&str> = PROXY_BREAKING_KEYS
                .iter()
                .copied()
                .filter(|k| stored.get(*k) != merged.get(*k))
                .collect();
            if !changed.is_empty() {
                return error(
                    403,
                    &format!(
                        "The API is published: {} cannot be changed; unpublish it first",
                        changed.join(", ")
                    ),
                );
            }
        }
        self.proxies[i] = merged.clone();
        json_response(200, &merged)
    }

    fn delete_proxy(&mut self, id: &str) -> Response {
        let Some(i) = self.proxy_index(id) else {
            return error(404, UNKNOWN_API);
        };
        if self.proxies[i]["state"] == "published" {
            return error(403, "The API is published: unpublish it before deleting it");
        }
        self.proxies.remove(i);
        self.org_access.retain(|a| a.api_id != id);
        self.app_access.retain(|a| a.api_id != id);
        no_content()
    }

    fn publish(&mut self, id: &str, req: &Incoming) -> Response {
        let Some(i) = self.proxy_index(id) else {
            return error(404, UNKNOWN_API);
        };
        let proxy = &mut self.proxies[i];
        if !matches!(proxy["state"].as_str(), Some("unpublished" | "pending")) {
            return error(403, "API is already published");
        }
        proxy["state"] = json!("published");
        if let Some(vhost) = req.form_value("vhost") {
            proxy["vhost"] = json!(vhost);
        }
        if let Some(name) = req.form_value("name") {
            proxy["name"] = json!(name);
        }
        json_response(200, proxy)
    }

    fn unpublish(&mut self, id: &str) -> Response {
        let Some(i) = self.proxy_index(id) else {
            return error(404, UNKNOWN_API);
        };
        let proxy = &mut self.proxies[i];
        if proxy["state"] != "published" {
            return error(403, "API is already unpublished");
        }
        proxy["state"] = json!("unpublished");
        proxy["deprecated"] = json!(false);
        proxy["retirementDate"] = json!(0);
        json_response(200, proxy)
    }

    fn deprecate(&mut self, id: &str, req: &Incoming) -> Response {
        let Some(i) = self.proxy_index(id) else {
            return error(404, UNKNOWN_API);
        };
        let date = match req.form_value("retirementDate").map(parse_date_millis) {
            Some(None) => return error(400, "Invalid retirementDate"),
            Some(Some(d)) => Some(d),
            None => None,
        };
        let proxy = &mut self.proxies[i];
        if proxy["state"] != "published" {
            return error(403, "Only a published API can be deprecated");
        }
        proxy["deprecated"] = json!(true);
        if let Some(date) = date {
            proxy["retirementDate"] = json!(date);
        }
        json_response(201, proxy)
    }

    fn undeprecate(&mut self, id: &str) -> Response {
        let Some(i) = self.proxy_index(id) else {
            return error(404, UNKNOWN_API);
        };
        let proxy = &mut self.proxies[i];
        if proxy["deprecated"] != true {
            return error(403, "API is not deprecated");
        }
        proxy["deprecated"] = json!(false);
        proxy["retirementDate"] = json!(0);
        json_response(201, proxy)
    }

    fn upgrade(&mut self, old: &str, req: &Incoming) -> Response {
        let Some(new) = req.form_value("upgradeApiId").map(str::to_owned) else {
            return error(400, "upgradeApiId is required");
        };
        let Some(old_index) = self.proxy_index(old) else {
            return error(404, UNKNOWN_API);
        };
        if self.proxy_index(&new).is_none() {
            return error(404, UNKNOWN_API);
        }
        if new == old {
            return error(400, "upgradeApiId must name another API");
        }
        let date = match req.form_value("retirementDate").map(parse_date_millis) {
            Some(None) => return error(400, "Invalid retirementDate"),
            Some(Some(d)) => Some(d),
            None => None,
        };
        for entries in [&mut self.org_access, &mut self.app_access] {
            let mut moved: Vec<Access> = Vec::new();
            let mut kept: Vec<Access> = Vec::new();
            for entry in entries.drain(..) {
                if entry.api_id == old {
                    moved.push(entry);
                } else {
                    kept.push(entry);
                }
            }
            for mut entry in moved {
                if !kept
                    .iter()
                    .any(|k| k.owner == entry.owner && k.api_id == new)
                {
                    entry.api_id = new.clone();
                    kept.push(entry);
                }
            }
            *entries = kept;
        }
        let proxy = &mut self.proxies[old_index];
        if req.form_value("deprecate") == Some("true") && proxy["state"] == "published" {
            proxy["deprecated"] = json!(true);
            if let Some(date) = date {
                proxy["retirementDate"] = json!(date);
            }
        }
        if req.form_value("retire") == Some("true") {
            proxy["retired"] = json!(true);
            if let Some(date) = date {
                proxy["retirementDate"] = json!(date);
            }
        }
        no_content()
    }

    fn grant_access(&mut self, req: &Incoming) -> Response {
        let Some(api) = req.form_value("apiId").map(str::to_owned) else {
            return error(400, "apiId is required");
        };
        if self.proxy_index(&api).is_none() {
            return error(404, UNKNOWN_API);
        }
        let orgs: Vec<String> = match req.form_value("action") {
            Some("all_orgs") => self.orgs.iter().map(|o| text(&o["id"])).collect(),
            Some("orgs") => {
                let ids: Vec<String> = req
                    .form()
                    .iter()
                    .filter(|(k, v)| k == "grantOrgId" && !v.is_empty())
                    .map(|(_, v)| v.clone())
                    .collect();
                if ids.is_empty() {
                    return error(400, "grantOrgId is required");
                }
                if ids.iter().any(|id| self.org_index(id).is_none()) {
                    return error(404, NOT_FOUND);
                }
                ids
            }
            _ => return error(400, "action must be orgs or all_orgs"),
        };
        for org in orgs {
            if !self.org_has_access(&org, &api) {
                self.org_access.push(Access::new(&org, &api, true));
            }
        }
        no_content()
    }

    /// Shape of `api_access.json`.
    fn proxy_api_access(&self, id: &str) -> Response {
        if self.proxy_index(id).is_none() {
            return error(404, UNKNOWN_API);
        }
        let entries: Vec<Value> = self
            .org_access
            .iter()
            .filter(|a| a.api_id == id)
            .map(|a| {
                let org = self.org_index(&a.owner).map(|i| &self.orgs[i]);
                let apps: Vec<Value> = self
                    .app_access
                    .iter()
                    .filter(|s| s.api_id == id)
                    .filter_map(|s| self.app_index(&s.owner).map(|i| (s, &self.apps[i])))
                    .filter(|(_, app)| app["organizationId"] == a.owner.as_str())
                    .map(|(s, app)| {
                        json!({
                            "applicationName": app["name"],
                            "applicationId": app["id"],
                            "organizationId": app["organizationId"],
                            "createdOn": s.created_on,
                        })
                    })
                    .collect();
                json!({
                    "organizationName": org.map(|o| o["name"].clone()).unwrap_or(Value::Null),
                    "organizationId": a.owner,
                    "createdOn": a.created_on,
                    "applications": apps,
                })
            })
            .collect();
        json_response(200, &Value::Array(entries))
    }

    fn revoke_org_access(&mut self, id: &str, req: &Incoming) -> Response {
        if self.proxy_index(id).is_none() {
            return error(404, UNKNOWN_API);
        }
        let Some(org) = req
            .query
            .iter()
            .find(|(k, _)| k == "organizationId")
            .map(|(_, v)| v.clone())
        else {
            return error(400, "organizationId is required");
        };
        let before = self.org_access.len();
        self.org_access
            .retain(|a| !(a.api_id == id && a.owner == org));
        if self.org_access.len() == before {
            return error(404, NOT_FOUND);
        }
        no_content()
    }

    fn proxy_applications(&self, id: &str) -> Response {
        if self.proxy_index(id).is_none() {
            return error(404, UNKNOWN_API);
        }
        let apps: Vec<Value> = self
            .app_access
            .iter()
            .filter(|a| a.api_id == id)
            .filter_map(|a| self.app_index(&a.owner).map(|i| self.apps[i].clone()))
            .collect();
        json_response(200, &Value::Array(apps))
    }

    // -- backends -----------------------------------------------------------

    fn import_backend(&mut self, req: &Incoming) -> Response {
        let Payload::Multipart(Some(parts)) = &req.payload else {
            return error(
                400,
                "Expected multipart/form-data with fields name, type, organizationId and file",
            );
        };
        let field = |name: &str| {
            parts
                .iter()
                .find(|p| p.name == name)
                .map(|p| String::from_utf8_lossy(&p.data).trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(name) = field("name") else {
            return error(400, "name is required");
        };
        let Some(org) = field("organizationId") else {
            return error(400, "organizationId is required");
        };
        if self.org_index(&org).is_none() {
            return error(404, NOT_FOUND);
        }
        let Some(file) = parts.iter().find(|p| p.name == "file") else {
            return error(400, "file is required");
        };
        let kind = field("type").unwrap_or_else(|| "swagger".to_owned());
        let id = new_id();
        let import_url = format!(
            "file:///opt/Axway/apigateway/system/conf/{}/{}",
            id.replace('-', ""),
            name
        );
        let json = new_backend(&id, &name, &org, &kind, &file.data, &import_url, true);
        let filename = file
            .filename
            .clone()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| format!("{name}.json"));
        self.backends.push(Backend {
            json: json.clone(),
            spec: Some(Spec {
                bytes: file.data.clone(),
                filename,
            }),
        });
        json_response(201, &json)
    }

    fn import_backend_from_url(&mut self, req: &Incoming) -> Response {
        let Some(url) = req.form_value("url") else {
            return error(400, "url is required");
        };
        let Some(name) = req.form_value("name") else {
            return error(400, "name is required");
        };
        let Some(org) = req.form_value("organizationId") else {
            return error(400, "organizationId is required");
        };
        if self.org_index(org).is_none() {
            return error(404, NOT_FOUND);
        }
        let kind = req.form_value("type").unwrap_or("wsdl");
        let json = new_backend(&new_id(), name, org, kind, &[], url, false);
        self.backends.push(Backend {
            json: json.clone(),
            spec: None,
        });
        json_response(201, &json)
    }

    fn download_spec(&self, id: &str) -> Response {
        let Some(i) = self.backend_index(id) else {
            return error(404, UNKNOWN_API);
        };
        let Some(spec) = &self.backends[i].spec else {
            return error(404, "No original API definition stored for this API");
        };
        response(
            200,
            &[
                ("Content-Type", sniff_content_type(&spec.bytes).to_owned()),
                (
                    "Content-Disposition",
                    format!("attachment; filename=\"{}\"", spec.filename),
                ),
            ],
            spec.bytes.to_vec(),
        )
    }

    // -- organizations and applications ---------------------------------------

    fn create_org(&mut self, req: &Incoming) -> Response {
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(name) = body
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
        else {
            return error(400, "name is required");
        };
        if self.orgs.iter().any(|o| o["name"] == name) {
            return error(409, ALREADY_EXISTS);
        }
        let mut org = new_org(name, now_ms());
        merge(&mut org, body, &["id", "dn", "createdOn", "image"]);
        self.orgs.push(org.clone());
        json_response(201, &org)
    }

    fn update_org(&mut self, id: &str, req: &Incoming) -> Response {
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(i) = self.org_index(id) else {
            return error(404, NOT_FOUND);
        };
        let mut org = self.orgs[i].clone();
        merge(&mut org, body, &["id", "dn", "createdOn", "image"]);
        let Some(name) = org["name"].as_str().filter(|n| !n.trim().is_empty()) else {
            return error(400, "name is required");
        };
        if self.orgs.iter().any(|o| o["name"] == name && o["id"] != id) {
            return error(409, ALREADY_EXISTS);
        }
        org["dn"] = json!(format!("o={name},ou=organizations,ou=APIPortal"));
        self.orgs[i] = org.clone();
        json_response(200, &org)
    }

    fn delete_org(&mut self, id: &str) -> Response {
        let Some(i) = self.org_index(id) else {
            return error(404, NOT_FOUND);
        };
        self.orgs.remove(i);
        let apps: Vec<String> = self
            .apps
            .iter()
            .filter(|a| a["organizationId"] == id)
            .map(|a| text(&a["id"]))
            .collect();
        self.apps.retain(|a| a["organizationId"] != id);
        self.app_access.retain(|a| !apps.contains(&a.owner));
        self.org_access.retain(|a| a.owner != id);
        no_content()
    }

    fn create_org_access(&mut self, org: &str, req: &Incoming) -> Response {
        if self.org_index(org).is_none() {
            return error(404, NOT_FOUND);
        }
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(api) = body.get("apiId").and_then(Value::as_str) else {
            return error(400, "apiId is required");
        };
        if self.proxy_index(api).is_none() {
            return error(404, UNKNOWN_API);
        }
        if self.org_has_access(org, api) {
            return error(409, ALREADY_EXISTS);
        }
        let enabled = body.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        let access = Access::new(org, api, enabled);
        let json = access.json();
        self.org_access.push(access);
        json_response(200, &json)
    }

    fn create_app(&mut self, req: &Incoming) -> Response {
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(name) = body
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
        else {
            return error(400, "name is required");
        };
        let Some(org) = body.get("organizationId").and_then(Value::as_str) else {
            return error(400, "organizationId is required");
        };
        if self.org_index(org).is_none() {
            return error(404, NOT_FOUND);
        }
        let mut app = new_app(name, org, now_ms());
        merge(
            &mut app,
            body,
            &["id", "createdBy", "createdOn", "image", "state"],
        );
        self.apps.push(app.clone());
        json_response(201, &app)
    }

    fn update_app(&mut self, id: &str, req: &Incoming) -> Response {
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(i) = self.app_index(id) else {
            return error(404, NOT_FOUND);
        };
        let mut app = self.apps[i].clone();
        merge(
            &mut app,
            body,
            &["id", "createdBy", "createdOn", "image", "state"],
        );
        let org_known = app["organizationId"]
            .as_str()
            .is_some_and(|o| self.org_index(o).is_some());
        if !org_known {
            return error(404, NOT_FOUND);
        }
        self.apps[i] = app.clone();
        json_response(200, &app)
    }

    fn create_app_access(&mut self, app: &str, req: &Incoming) -> Response {
        let Some(app_index) = self.app_index(app) else {
            return error(404, NOT_FOUND);
        };
        let Some(body) = req.json_object() else {
            return error(400, INVALID_JSON);
        };
        let Some(api) = body.get("apiId").and_then(Value::as_str) else {
            return error(400, "apiId is required");
        };
        let Some(proxy) = self.proxy_index(api) else {
            return error(404, UNKNOWN_API);
        };
        let app_org = text(&self.apps[app_index]["organizationId"]);
        if self.proxies[proxy]["organizationId"] != app_org.as_str()
            && !self.org_has_access(&app_org, api)
        {
            return error(
                403,
                "The application's organization has no access to this API",
            );
        }
        if self
            .app_access
            .iter()
            .any(|a| a.owner == app && a.api_id == api)
        {
            return error(409, ALREADY_EXISTS);
        }
        let enabled = body.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        let access = Access::new(app, api, enabled);
        let json = access.json();
        self.app_access.push(access);
        json_response(201, &json)
    }
}

fn access_list(entries: &[Access], owner: &str) -> Response {
    let list: Vec<Value> = entries
        .iter()
        .filter(|a| a.owner == owner)
        .map(Access::json)
        .collect();
    json_response(200, &Value::Array(list))
}

fn delete_access(entries: &mut Vec<Access>, owner: &str, id: &str) -> Response {
    let before = entries.len();
    entries.retain(|a| !(a.owner == owner && a.id == id));
    if entries.len() == before {
        return error(404, NOT_FOUND);
    }
    no_content()
}

/// Copies `body`'s keys into `target`, except `skip`.
fn merge(target: &mut Value, body: &Map<String, Value>, skip: &[&str]) {
    for (key, value) in body {
        if !skip.contains(&key.as_str()) {
            target[key.as_str()] = value.clone();
        }
    }
}

// ---------------------------------------------------------------------------
// Filters (`?field=..&op=..&value=..`, repeatable)

struct Filter {
    field: String,
    op: String,
    value: String,
}

fn parse_filters(query: &[(String, String)]) -> Result<Vec<Filter>, String> {
    let mut filters: Vec<Filter> = Vec::new();
    for (key, value) in query {
        match key.as_str() {
            "field" => filters.push(Filter {
                field: value.clone(),
                op: "eq".to_owned(),
                value: String::new(),
            }),
            "op" | "value" => {
                let Some(last) = filters.last_mut() else {
                    return Err(format!("'{key}' given before 'field'"));
                };
                if key == "op" {
                    last.op = value.to_ascii_lowercase();
                } else {
                    last.value = value.clone();
                }
            }
            _ => {}
        }
    }
    Ok(filters)
}

fn filter_matches(item: &Value, filter: &Filter) -> Result<bool, String> {
    let actual = item
        .as_object()
        .and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&filter.field))
                .map(|(_, v)| v)
        })
        .map(text)
        .unwrap_or_default();
    let wanted = &filter.value;
    Ok(match filter.op.as_str() {
        "eq" => actual == *wanted,
        "ne" => actual != *wanted,
        "like" => {
            let needle = wanted.replace(['*', '%'], "").to_lowercase();
            actual.to_lowercase().contains(&needle)
        }
        "gt" | "lt" => {
            let ordering = match (actual.parse::<f64>(), wanted.parse::<f64>()) {
                (Ok(a), Ok(w)) => a.partial_cmp(&w),
                _ => Some(actual.cmp(wanted)),
            };
            let want = if filter.op == "gt" {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Less
            };
            ordering == Some(want)
        }
        other => return Err(format!("Unsupported filter operator '{other}'")),
    })
}

fn filtered<'a>(items: impl Iterator<Item = &'a Value>, query: &[(String, String)]) -> Response {
    let filters = match parse_filters(query) {
        Ok(f) => f,
        Err(e) => return error(400, &e),
    };
    let mut out = Vec::new();
    for item in items {
        let mut keep = true;
        for f in &filters {
            match filter_matches(item, f) {
                Ok(true) => {}
                Ok(false) => {
                    keep = false;
                    break;
                }
                Err(e) => return error(400, &e),
            }
        }
        if keep {
            out.push(item.clone());
        }
    }
    json_response(200, &Value::Array(out))
}

// ---------------------------------------------------------------------------
// Object builders (key sets of the fixture bodies)

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A JSON value as text: strings as they are, null as empty.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `yyyy-MM-ddTHH:mm:ssZ` (RFC 3339), `yyyy-MM-dd`, or epoch millis.
fn parse_date_millis(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(d.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_millis())
}

fn sniff_content_type(bytes: &[u8]) -> &'static str {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | Some(b'[') => "application/json",
        Some(b'<') => "text/xml",
        _ => "text/plain",
    }
}

/// Shape of `organization_by_id.json`.
fn new_org(name: &str, now: u64) -> Value {
    json!({
        "id": new_id(),
        "name": name,
        "description": null,
        "email": null,
        "image": null,
        "restricted": false,
        "virtualHost": null,
        "phone": null,
        "enabled": true,
        "development": false,
        "dn": format!("o={name},ou=organizations,ou=APIPortal"),
        "createdOn": now,
        "startTrialDate": null,
        "endTrialDate": null,
        "trialDuration": null,
        "isTrial": null,
    })
}

/// Shape of `application.json`.
fn new_app(name: &str, organization_id: &str, now: u64) -> Value {
    json!({
        "id": new_id(),
        "name": name,
        "description": null,
        "organizationId": organization_id,
        "phone": null,
        "email": null,
        "createdBy": USER_ID,
        "managedBy": [],
        "createdOn": now,
        "enabled": true,
        "image": null,
        "state": "approved",
    })
}

/// Shape of `frontend_api_unpublished.json`, derived from a backend.
fn new_proxy(backend: &Value, organization_id: &str, now: u64) -> Value {
    let path = backend["resourcePath"]
        .as_str()
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    json!({
        "id": new_id(),
        "organizationId": organization_id,
        "apiId": backend["id"],
        "name": backend["name"],
        "version": backend["version"],
        "apiRoutingKey": null,
        "vhost": null,
        "path": path,
        "descriptionType": "original",
        "descriptionManual": null,
        "descriptionMarkdown": null,
        "descriptionUrl": null,
        "summary": null,
        "retired": false,
        "expired": false,
        "image": null,
        "retirementDate": 0,
        "deprecated": false,
        "state": "unpublished",
        "createdOn": now,
        "createdBy": USER_ID,
        "corsProfiles": [{
            "name": "_default",
            "isDefault": true,
            "origins": ["*"],
            "allowedHeaders": [],
            "exposedHeaders": ["X-CorrelationID"],
            "supportCredentials": false,
            "maxAgeSeconds": 0,
        }],
        "securityProfiles": [{
            "name": "_default",
            "isDefault": true,
            "devices": [{
                "name": "API Key",
                "type": "apiKey",
                "order": 1,
                "properties": {
                    "apiKeyFieldName": "KeyId",
                    "takeFrom": "HEADER",
                    "removeCredentialsOnSuccess": "true",
                },
            }],
        }],
        "authenticationProfiles": [{
            "name": "_default",
            "isDefault": true,
            "parameters": {"_id_": 0},
            "type": "none",
        }],
        "inboundProfiles": {
            "_default": {
                "securityProfile": "_default",
                "corsProfile": "_default",
                "monitorAPI": true,
                "queryStringPassThrough": false,
                "monitorSubject": "authentication.subject.id",
            },
        },
        "outboundProfiles": {
            "_default": {
                "authenticationProfile": "_default",
                "routeType": "proxy",
                "requestPolicy": null,
                "responsePolicy": null,
                "routePolicy": null,
                "faultHandlerPolicy": null,
                "apiId": null,
                "apiMethodId": null,
                "parameters": [],
            },
        },
        "serviceProfiles": {
            "_default": {
                "apiId": backend["id"],
                "basePath": backend["basePath"],
            },
        },
        "caCerts": [],
        "tags": {},
    })
}

/// Parses a spec as JSON, else YAML, into a JSON object.
fn parse_spec(bytes: &[u8]) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(bytes) {
        return Some(o);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    match serde_saphyr::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// Shape of `backend_api.json`, derived from the spec when it is a Swagger 2.0
/// or OpenAPI 3 document.
fn new_backend(
    id: &str,
    name: &str,
    organization_id: &str,
    kind: &str,
    spec: &[u8],
    import_url: &str,
    has_original: bool,
) -> Value {
    let doc = parse_spec(spec).unwrap_or_default();
    let info = doc.get("info").cloned().unwrap_or(Value::Null);
    let mut properties = Map::new();
    let (resource_type, service_type) = if doc.contains_key("swagger") {
        ("swagger20", "rest")
    } else if doc.contains_key("openapi") {
        ("oas30", "rest")
    } else {
        match kind.to_ascii_lowercase().as_str() {
            "graphql" => ("graphql", "graphql"),
            "wsdl" => ("wsdl", "soap"),
            _ => ("unknown", "rest"),
        }
    };

    let (base_path, resource_path, backend_urls, models) = if doc.contains_key("swagger") {
        let schemes: Vec<String> = doc
            .get("schemes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .filter(|s: &Vec<String>| !s.is_empty())
            .unwrap_or_else(|| vec!["https".to_owned()]);
        let host = doc.get("host").and_then(Value::as_str).unwrap_or_default();
        let resource = doc
            .get("basePath")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        let base = if host.is_empty() {
            String::new()
        } else {
            format!("{}://{host}", schemes[0])
        };
        let urls: Vec<String> = if host.is_empty() {
            Vec::new()
        } else {
            schemes
                .iter()
                .map(|s| format!("{s}://{host}{resource}"))
                .collect()
        };
        let models = doc.get("definitions").cloned().unwrap_or_else(|| json!({}));
        (base, resource, urls, models)
    } else if doc.contains_key("openapi") {
        let servers: Vec<String> = doc
            .get("servers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.get("url").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let (base, resource) = match servers.first().map(|s| url::Url::parse(s)) {
            Some(Ok(u)) => {
                let mut base = format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default());
                if let Some(port) = u.port() {
                    base.push_str(&format!(":{port}"));
                }
                let path = u.path().trim_end_matches('/');
                let resource = if path.is_empty() { "/" } else { path };
                (base, resource.to_owned())
            }
            Some(Err(_)) => (String::new(), servers[0].clone()),
            None => (String::new(), "/".to_owned()),
        };
        let models = doc
            .get("components")
            .and_then(|c| c.get("schemas"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        (base, resource, servers, models)
    } else {
        (String::new(), "/".to_owned(), Vec::new(), json!({}))
    };

    let mut put = |key: &str, value: Option<&Value>| {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            properties.insert(key.to_owned(), Value::String(s));
        }
    };
    put("info.title", info.get("title"));
    put("termsOfService", info.get("termsOfService"));
    put(
        "license.name",
        info.get("license").and_then(|l| l.get("name")),
    );
    put(
        "license.url",
        info.get("license").and_then(|l| l.get("url")),
    );
    put(
        "contact.email",
        info.get("contact").and_then(|c| c.get("email")),
    );
    put(
        "externalDocs.description",
        doc.get("externalDocs").and_then(|e| e.get("description")),
    );
    put(
        "externalDocs.url",
        doc.get("externalDocs").and_then(|e| e.get("url")),
    );
    put("tags", doc.get("tags"));
    if !backend_urls.is_empty() {
        properties.insert(
            "backendUrls".to_owned(),
            Value::String(serde_json::to_string(&backend_urls).unwrap_or_default()),
        );
    }
    properties.insert("ResourceUri".to_owned(), json!(import_url));
    properties.insert(
        "ResourceIdentifier".to_owned(),
        json!(uuid::Uuid::new_v4().simple().to_string().to_uppercase()),
    );
    properties.insert("ResourceType".to_owned(), json!(resource_type));

    json!({
        "id": id,
        "name": name,
        "summary": "",
        "description": info.get("description").and_then(Value::as_str).unwrap_or_default(),
        "version": info.get("version").map(text).unwrap_or_default(),
        "basePath": base_path,
        "resourcePath": resource_path,
        "models": models,
        "consumes": doc.get("consumes").cloned().unwrap_or_else(|| json!([])),
        "produces": doc.get("produces").cloned().unwrap_or_else(|| json!([])),
        "integral": true,
        "createdOn": now_ms(),
        "createdBy": USER_ID,
        "organizationId": organization_id,
        "serviceType": service_type,
        "hasOriginalDefinition": has_original,
        "importUrl": import_url,
        "properties": properties,
    })
}
