//! A client of API Manager's REST API (the "API Portal REST API",
//! `/api/portal/v1.3` or `/api/portal/v1.4`), as far as Gantry's
//! reconciliation needs it.
//!
//! # Session
//! Modelled on apim-cli's `APIManagerAdapter` (module `apim-adapter`):
//! - [`ApiManagerClient::login`] posts the form `username`, `password` to
//!   `/login`. API Manager answers **303** (apim-cli accepts only 303; 2xx is
//!   accepted too). The session lives in a cookie the client's cookie store
//!   keeps; the login answer is *not* required to set one (apim-cli's own
//!   WireMock stub answers 303 without `Set-Cookie`). Redirects are never
//!   followed.
//! - It then reads `GET /currentuser` and keeps its `CSRF-Token` response
//!   header (apim-cli `getCsrfToken`: "Starting from 7.6.2 SP3 the CSRF token
//!   is returned on CurrentUser request"), sent as `CSRF-Token` on every later
//!   non-GET request.
//! - Any call made before `login` logs in first. A 401 on a later call (an
//!   expired session) logs in again once and repeats the call.
//! - [`ApiManagerClient::logout`] is `DELETE /login`.
//!
//! # Errors
//! 401 (and 403 on `POST /login`) → [`Error::Unauthorized`] (`API Manager at
//! <url> refused user <name>: check username/password`), 403 →
//! [`Error::Forbidden`], 404 →
//! [`Error::NotFound`], 409 → [`Error::Conflict`], other failures →
//! [`Error::Status`] / [`Error::Transport`]. Every message names the method,
//! the path (below the REST base path, without query) and API Manager's own
//! message, read from its `{"errors":[{"code":..,"message":".."}]}` body (or
//! the body text). Request bodies are never logged or put into errors: they
//! carry the password and values that may be secrets. An answer is read at
//! most [`ClientConfig::max_body`] bytes (16 MiB by default): a longer one is
//! [`Error::TooLarge`], never buffered whole. Every request has a connect
//! timeout and an overall one ([`ClientConfig::with_timeouts`]).
//!
//! # Retries
//! Connection errors, timeouts and 5xx answers are retried
//! ([`ClientConfig::attempts`], default 3, with doubling backoff) only where
//! repeating cannot do harm:
//! - `GET`, `PUT` (the whole object is sent: repeating it converges),
//!   `DELETE` (a retry that finds the object gone — 404 — counts as success),
//!   the login form and `POST /proxies/grantaccess` (granting twice is a
//!   no-op) are retried on all of them;
//! - every other `POST` (import a backend, create a proxy, an organization,
//!   an application, a subscription, publish/unpublish/deprecate, upgrade) is
//!   retried only when the connection could not be established, i.e. nothing
//!   was sent. A `POST` that timed out or got a 5xx may have been applied
//!   (a second import would create a second backend), so it fails at once and
//!   the reconciler's rollback deals with it;
//! - a refused server certificate is never retried; the error says how to
//!   trust the CA (`ca`) or, for test stages, skip verification (`insecure`).
//!
//! # Shapes
//! API Manager objects (proxies, backends, organizations, applications) are
//! kept as [`serde_json::Value`]: they have many fields and `PUT` takes the
//! whole object back. [`ObjectExt`] gives small typed accessors. Routes and
//! bodies follow apim-cli's `APIManagerAPIAdapter` (proxies, `apirepo`,
//! publish, upgrade, grantaccess), `APIManagerAPIAccessAdapter` (access of
//! organizations and applications), `APIManagerOrganizationAdapter` and
//! `APIMgrAppsAdapter`, and the WireMock stubs apim-cli tests with.

use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use gantry_pipeline::{ApiManager, ApimVersion, Secret};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::desired::{ApiSpecification, SpecKind, SpecSource};

/// Default TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout of one request (connect, send, read the answer).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of attempts of a retryable request.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default pause before the first retry (doubled for each further one).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// Default cap of an answer's body: lists of every API, organization or
/// application of a large API Manager fit easily; an answer past it is an
/// error, never buffered whole.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

/// The header carrying API Manager's CSRF token.
pub const CSRF_HEADER: &str = "CSRF-Token";

/// Longest excerpt of an error body put into an error message.
const MAX_ERROR_TEXT: usize = 400;

// ---------------------------------------------------------------------------
// Configuration

/// Which server certificates the client trusts.
#[derive(Clone, Default)]
pub enum TlsTrust {
    /// The built-in web PKI roots.
    #[default]
    System,
    /// The built-in roots plus the CA certificates of this PEM bundle.
    CaPem(Vec<u8>),
    /// No verification at all (self-signed test stages). Only when a stage
    /// asks for it explicitly (`insecure: true`).
    Insecure,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsTrust::System => f.write_str("System"),
            TlsTrust::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            TlsTrust::Insecure => f.write_str("Insecure"),
        }
    }
}

/// How to reach and log in to one API Manager.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port` (a trailing REST base path is accepted and ignored).
    pub url: String,
    pub version: ApimVersion,
    pub username: String,
    /// Never logged; `Debug` prints `***`.
    pub password: Secret,
    pub tls: TlsTrust,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Attempts of a retryable request (at least 1).
    pub attempts: u32,
    /// Pause before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Bytes of an answer's body read at most; a larger answer is an
    /// [`Error::TooLarge`].
    pub max_body: usize,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("version", &self.version)
            .field("username", &self.username)
            .field("password", &"***")
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl ClientConfig {
    /// Default timeouts and retries, system trust store.
    pub fn new(
        url: impl Into<String>,
        version: ApimVersion,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        ClientConfig {
            url: url.into(),
            version,
            username: username.into(),
            password: Secret::new(password),
            tls: TlsTrust::System,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// From a stage's `apimanager` settings: resolves the username and
    /// password references and reads the CA file. `insecure` wins over `ca`.
    pub fn from_stage(stage: &ApiManager) -> Result<Self, Error> {
        let username = stage
            .username
            .resolve()
            .map_err(|e| Error::Config(format!("API Manager username: {e}")))?;
        let password = stage
            .password
            .resolve()
            .map_err(|e| Error::Config(format!("API Manager password: {e}")))?;
        let mut config = ClientConfig::new(
            stage.url.clone(),
            stage.version,
            username.expose(),
            password.expose(),
        );
        if stage.insecure {
            config.tls = TlsTrust::Insecure;
        } else if let Some(ca) = &stage.ca {
            config = config.with_ca_file(ca)?;
        }
        Ok(config)
    }

    /// Trusts the CA certificates of this PEM bundle (besides the system roots).
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls = TlsTrust::CaPem(pem.into());
        self
    }

    /// Trusts the CA certificates of this PEM file.
    pub fn with_ca_file(self, path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read CA file {}: {e}", path.display())))?;
        Ok(self.with_ca_pem(pem))
    }

    /// Accepts any server certificate. Only for stages that ask for it.
    pub fn insecure(mut self) -> Self {
        self.tls = TlsTrust::Insecure;
        self
    }

    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    pub fn with_retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Another cap on the bytes of an answer read.
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a call to API Manager failed. Messages name method and path, never
/// request bodies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API Manager client configuration: {0}")]
    Config(String),
    #[error("API Manager at {url} refused user {user}: check username/password{}", detail_suffix(.message))]
    Unauthorized {
        url: String,
        user: String,
        message: String,
    },
    #[error("{method} {path}: API Manager refused it (403 Forbidden): {message}")]
    Forbidden {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: not found (404): {message}")]
    NotFound {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: conflict (409): {message}")]
    Conflict {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: API Manager answered {status}: {message}")]
    Status {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: {message} (after {attempts} attempt(s))")]
    Transport {
        method: String,
        path: String,
        message: String,
        attempts: u32,
    },
    #[error(
        "{method} {path}: API Manager's answer is larger than {} MiB, more than Gantry reads; \
         narrow the query or raise the client's max_body",
        .limit / (1024 * 1024)
    )]
    TooLarge {
        method: String,
        path: String,
        limit: usize,
    },
    #[error("{method} {path}: unexpected answer: {message}")]
    InvalidResponse {
        method: String,
        path: String,
        message: String,
    },
}

fn detail_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

impl Error {
    /// The HTTP status API Manager answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { .. } => Some(401),
            Error::Forbidden { .. } => Some(403),
            Error::NotFound { .. } => Some(404),
            Error::Conflict { .. } => Some(409),
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

// ---------------------------------------------------------------------------
// Small typed views

/// The logged-in user (`GET /currentuser`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurrentUser {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub login_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// `admin`, `oadmin` or `user`.
    #[serde(default)]
    pub role: Option<String>,
}

/// One API access entry of an organization or application
/// (`GET /organizations/{id}/apis`, `GET /applications/{id}/apis`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiAccess {
    #[serde(default)]
    pub id: String,
    /// The frontend API (proxy) id.
    #[serde(default)]
    pub api_id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Typed accessors on API Manager objects kept as JSON.
pub trait ObjectExt {
    /// A string field; `None` when absent, null or not a string.
    fn str_field(&self, key: &str) -> Option<&str>;
    fn id(&self) -> Option<&str> {
        self.str_field("id")
    }
    fn name(&self) -> Option<&str> {
        self.str_field("name")
    }
    /// A proxy's backend id; an access entry's proxy id.
    fn api_id(&self) -> Option<&str> {
        self.str_field("apiId")
    }
    fn organization_id(&self) -> Option<&str> {
        self.str_field("organizationId")
    }
    fn path(&self) -> Option<&str> {
        self.str_field("path")
    }
    /// `None` for null or empty.
    fn vhost(&self) -> Option<&str> {
        self.str_field("vhost").filter(|v| !v.is_empty())
    }
    /// `None` for null or empty.
    fn api_routing_key(&self) -> Option<&str> {
        self.str_field("apiRoutingKey").filter(|v| !v.is_empty())
    }
    /// `state`: `unpublished`, `published`, `pending`.
    fn state(&self) -> Option<&str> {
        self.str_field("state")
    }
    /// `deprecated`, as a boolean or the string `"true"`.
    fn is_deprecated(&self) -> bool;
    fn is_retired(&self) -> bool;
    /// `createdOn` in epoch milliseconds (0 when absent).
    fn created_on(&self) -> i64;
}

impl ObjectExt for Value {
    fn str_field(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn is_deprecated(&self) -> bool {
        truthy(self.get("deprecated"))
    }

    fn is_retired(&self) -> bool {
        truthy(self.get("retired"))
    }

    fn created_on(&self) -> i64 {
        match self.get("createdOn") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or_default(),
            Some(Value::String(s)) => s.parse().unwrap_or_default(),
            _ => 0,
        }
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Retry connection errors, timeouts and 5xx.
    Safe,
    /// Retry only when the connection could not be established.
    ConnectOnly,
}

enum Body {
    Empty,
    Json(Value),
    Form(Vec<(String, String)>),
    Multipart(Vec<MultipartField>),
}

struct MultipartField {
    name: &'static str,
    value: MultipartValue,
}

enum MultipartValue {
    Text(String),
    File {
        file_name: String,
        mime: &'static str,
        bytes: Vec<u8>,
    },
}

struct Request {
    method: Method,
    /// Below the REST base path, e.g. `/proxies/<id>`.
    path: String,
    query: Vec<(String, String)>,
    body: Body,
    retry: Retry,
}

impl Request {
    fn new(method: Method, path: impl Into<String>) -> Self {
        let retry = if method == Method::POST {
            Retry::ConnectOnly
        } else {
            Retry::Safe
        };
        Request {
            method,
            path: path.into(),
            query: Vec::new(),
            body: Body::Empty,
            retry,
        }
    }

    fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }

    fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }

    fn form<K: Into<String>, V: Into<String>>(
        mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.body = Body::Form(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    fn safe_to_repeat(mut self) -> Self {
        self.retry = Retry::Safe;
        self
    }
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

// ---------------------------------------------------------------------------
// The client

/// A logged-in (or lazily logging-in) client of one API Manager.
pub struct ApiManagerClient {
    http: reqwest::Client,
    /// `https://host:port`, no trailing slash.
    url: String,
    /// `https://host:port/api/portal/v1.x`.
    api_base: String,
    username: String,
    password: Secret,
    attempts: u32,
    backoff: Duration,
    /// Bytes of an answer read at most.
    max_body: usize,
    session: Mutex<Session>,
    /// Serializes logins so concurrent callers do not log in twice.
    login_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Session {
    logged_in: bool,
    csrf: Option<String>,
    user: Option<CurrentUser>,
}

impl fmt::Debug for ApiManagerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiManagerClient")
            .field("api_base", &self.api_base)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ApiManagerClient {
    /// Builds the HTTP client; does not contact API Manager yet.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let parsed = url::Url::parse(config.url.trim())
            .map_err(|e| Error::Config(format!("API Manager URL {:?}: {e}", config.url)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::Config(format!(
                "API Manager URL {:?} must be http(s)://host[:port]",
                config.url
            )));
        }
        let base_path = config.version.base_path();
        let mut url = config.url.trim().trim_end_matches('/').to_owned();
        // Accept a URL that already ends with a REST base path.
        for known in [ApimVersion::V1_3.base_path(), ApimVersion::V1_4.base_path()] {
            if let Some(stripped) = url.strip_suffix(known) {
                url = stripped.trim_end_matches('/').to_owned();
                break;
            }
        }
        let mut builder = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("gantry-apim/", env!("CARGO_PKG_VERSION")));
        match &config.tls {
            TlsTrust::System => {}
            TlsTrust::CaPem(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::Config(format!("CA bundle is not valid PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(Error::Config("CA bundle holds no certificate".to_owned()));
                }
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            TlsTrust::Insecure => {
                builder = builder.danger_accept_invalid_certs(true);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        Ok(ApiManagerClient {
            http,
            api_base: format!("{url}{base_path}"),
            url,
            username: config.username,
            password: config.password,
            attempts: config.attempts.max(1),
            backoff: config.backoff,
            max_body: config.max_body,
            session: Mutex::new(Session::default()),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// `https://host:port` as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `https://host:port/api/portal/v1.x`.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    // -- session --------------------------------------------------------------

    /// Logs in and reads the CSRF token; returns the current user.
    pub async fn login(&self) -> Result<CurrentUser, Error> {
        let _guard = self.login_lock.lock().await;
        self.login_locked().await
    }

    async fn login_locked(&self) -> Result<CurrentUser, Error> {
        {
            let mut s = self.session();
            s.logged_in = false;
            s.csrf = None;
            s.user = None;
        }
        let req = Request::post("/login")
            .form([
                ("username", self.username.clone()),
                ("password", self.password.expose().to_owned()),
            ])
            .safe_to_repeat();
        let answer = self.send(&req, None).await?;
        let status = answer.status;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized(&answer.body));
        }
        if !(status == StatusCode::SEE_OTHER || status.is_success()) {
            return Err(self.status_error(&req, &answer));
        }

        let req = Request::get("/currentuser");
        let answer = self.send(&req, None).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(&answer.body));
        }
        if !answer.status.is_success() {
            return Err(self.status_error(&req, &answer));
        }
        let csrf = answer
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let user: CurrentUser =
            serde_json::from_slice(&answer.body).map_err(|e| Error::InvalidResponse {
                method: "GET".to_owned(),
                path: "/currentuser".to_owned(),
                message: format!("not a user object: {e}"),
            })?;
        {
            let mut s = self.session();
            s.logged_in = true;
            s.csrf = csrf;
            s.user = Some(user.clone());
        }
        tracing::debug!(
            api_manager = %self.url,
            user = %self.username,
            role = user.role.as_deref().unwrap_or("?"),
            "logged in to API Manager"
        );
        Ok(user)
    }

    /// Ends the session (`DELETE /login`). Without a session it does nothing.
    pub async fn logout(&self) -> Result<(), Error> {
        if !self.session().logged_in {
            return Ok(());
        }
        let req = Request::delete("/login");
        let answer = self.send(&req, self.csrf()).await;
        {
            let mut s = self.session();
            s.logged_in = false;
            s.csrf = None;
            s.user = None;
        }
        let answer = answer?;
        if answer.status.is_success() || answer.status == StatusCode::UNAUTHORIZED {
            Ok(())
        } else {
            Err(self.status_error(&req, &answer))
        }
    }

    /// The user of the current session (`GET /currentuser`).
    pub async fn current_user(&self) -> Result<CurrentUser, Error> {
        self.get_json_as("/currentuser").await
    }

    /// The logged-in user as read at login; logs in first when needed.
    pub async fn user(&self) -> Result<CurrentUser, Error> {
        self.ensure_login().await?;
        match self.session().user.clone() {
            Some(user) => Ok(user),
            None => Err(Error::InvalidResponse {
                method: "GET".to_owned(),
                path: "/currentuser".to_owned(),
                message: "no user after login".to_owned(),
            }),
        }
    }

    async fn ensure_login(&self) -> Result<(), Error> {
        if !self.session().logged_in {
            let _guard = self.login_lock.lock().await;
            if !self.session().logged_in {
                self.login_locked().await?;
            }
        }
        Ok(())
    }

    /// The CSRF token of the session, if API Manager sent one.
    pub fn csrf_token(&self) -> Option<String> {
        self.csrf()
    }

    fn csrf(&self) -> Option<String> {
        self.session().csrf.clone()
    }

    fn unauthorized(&self, body: &[u8]) -> Error {
        Error::Unauthorized {
            url: self.url.clone(),
            user: self.username.clone(),
            message: error_text(body),
        }
    }

    // -- transport --------------------------------------------------------------

    /// Sends a request with retries; answers are returned whatever their status.
    async fn send(&self, req: &Request, csrf: Option<String>) -> Result<Answer, Error> {
        let url = format!("{}{}", self.api_base, req.path);
        let mut attempt = 1;
        loop {
            let mut builder = self.http.request(req.method.clone(), &url);
            if !req.query.is_empty() {
                builder = builder.query(&req.query);
            }
            if req.method != Method::GET {
                if let Some(token) = &csrf {
                    builder = builder.header(CSRF_HEADER, token);
                }
            }
            builder = match &req.body {
                Body::Empty => builder,
                Body::Json(v) => builder.json(v),
                Body::Form(pairs) => builder.form(pairs),
                Body::Multipart(fields) => builder.multipart(multipart_form(fields)?),
            };
            let outcome = match builder.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    match read_capped(resp, self.max_body).await {
                        Ok(Some(body)) => Ok(Answer {
                            status,
                            headers,
                            body,
                        }),
                        Ok(None) => {
                            return Err(Error::TooLarge {
                                method: req.method.to_string(),
                                path: req.path.clone(),
                                limit: self.max_body,
                            })
                        }
                        Err(e) => Err((e, true)),
                    }
                }
                Err(e) => Err((e, false)),
            };
            let can_retry = attempt < self.attempts;
            match outcome {
                Ok(answer) => {
                    if answer.status.is_server_error() && req.retry == Retry::Safe && can_retry {
                        tracing::debug!(
                            method = %req.method, path = %req.path, status = answer.status.as_u16(),
                            attempt, "API Manager answered a server error; retrying"
                        );
                    } else {
                        if req.method == Method::DELETE
                            && attempt > 1
                            && answer.status == StatusCode::NOT_FOUND
                        {
                            // An earlier attempt deleted it.
                            return Ok(Answer {
                                status: StatusCode::NO_CONTENT,
                                headers: answer.headers,
                                body: Vec::new(),
                            });
                        }
                        tracing::debug!(
                            method = %req.method, path = %req.path,
                            status = answer.status.as_u16(), "API Manager call"
                        );
                        return Ok(answer);
                    }
                }
                Err((e, reading_body)) => {
                    let retryable = !is_certificate_error(&e)
                        && match req.retry {
                            Retry::Safe => true,
                            Retry::ConnectOnly => e.is_connect() && !reading_body,
                        };
                    if !(retryable && can_retry) {
                        return Err(Error::Transport {
                            method: req.method.to_string(),
                            path: req.path.clone(),
                            message: describe_transport_error(&e),
                            attempts: attempt,
                        });
                    }
                    tracing::debug!(
                        method = %req.method, path = %req.path, attempt,
                        error = %describe_transport_error(&e), "API Manager call failed; retrying"
                    );
                }
            }
            let pause = self.backoff.saturating_mul(1 << (attempt - 1).min(16));
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// Sends a request in the session (logging in first when needed, and
    /// once more on a 401) and turns non-2xx answers into errors.
    async fn call(&self, req: Request) -> Result<Answer, Error> {
        self.ensure_login().await?;
        let mut answer = self.send(&req, self.csrf()).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            {
                let _guard = self.login_lock.lock().await;
                self.login_locked().await?;
            }
            answer = self.send(&req, self.csrf()).await?;
            if answer.status == StatusCode::UNAUTHORIZED {
                return Err(self.unauthorized(&answer.body));
            }
        }
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(self.status_error(&req, &answer))
        }
    }

    fn status_error(&self, req: &Request, answer: &Answer) -> Error {
        let method = req.method.to_string();
        let path = req.path.clone();
        let message = error_text(&answer.body);
        let message = if message.is_empty() {
            answer
                .status
                .canonical_reason()
                .unwrap_or("no message")
                .to_owned()
        } else {
            message
        };
        match answer.status {
            StatusCode::UNAUTHORIZED => Error::Unauthorized {
                url: self.url.clone(),
                user: self.username.clone(),
                message,
            },
            StatusCode::FORBIDDEN => Error::Forbidden {
                method,
                path,
                message,
            },
            StatusCode::NOT_FOUND => Error::NotFound {
                method,
                path,
                message,
            },
            StatusCode::CONFLICT => Error::Conflict {
                method,
                path,
                message,
            },
            status => Error::Status {
                method,
                path,
                status: status.as_u16(),
                message,
            },
        }
    }

    async fn call_json(&self, req: Request) -> Result<Value, Error> {
        let method = req.method.to_string();
        let path = req.path.clone();
        let answer = self.call(req).await?;
        parse_json(&method, &path, &answer.body)
    }

    async fn get_json(&self, path: &str) -> Result<Value, Error> {
        self.call_json(Request::get(path)).await
    }

    async fn get_json_as<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, Error> {
        let v = self.get_json(path).await?;
        serde_json::from_value(v).map_err(|e| Error::InvalidResponse {
            method: "GET".to_owned(),
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// A list answer; a single object is taken as a list of one (apim-cli
    /// does the same).
    async fn call_list(&self, req: Request) -> Result<Vec<Value>, Error> {
        let method = req.method.to_string();
        let path = req.path.clone();
        match self.call_json(req).await? {
            Value::Array(items) => Ok(items),
            Value::Null => Ok(Vec::new()),
            obj @ Value::Object(_) => Ok(vec![obj]),
            other => Err(Error::InvalidResponse {
                method,
                path,
                message: format!("expected a JSON array, got {}", json_kind(&other)),
            }),
        }
    }

    async fn call_empty(&self, req: Request) -> Result<(), Error> {
        self.call(req).await.map(drop)
    }

    // -- frontend APIs (proxies) -------------------------------------------------

    /// `GET /proxies?field=..&op=..&value=..` (apim-cli `APIFilter`).
    pub async fn find_proxies(
        &self,
        field: &str,
        op: &str,
        value: &str,
    ) -> Result<Vec<Value>, Error> {
        self.call_list(
            Request::get("/proxies")
                .query("field", field)
                .query("op", op)
                .query("value", value),
        )
        .await
    }

    /// Proxies exposed on exactly this path (filtered again locally, in case
    /// API Manager ignored the filter).
    pub async fn proxies_by_path(&self, path: &str) -> Result<Vec<Value>, Error> {
        let mut found = self.find_proxies("path", "eq", path).await?;
        found.retain(|p| p.path() == Some(path));
        Ok(found)
    }

    /// Every proxy.
    pub async fn proxies(&self) -> Result<Vec<Value>, Error> {
        self.call_list(Request::get("/proxies")).await
    }

    pub async fn proxy(&self, id: &str) -> Result<Value, Error> {
        self.get_json(&format!("/proxies/{}", seg(id))).await
    }

    /// `POST /proxies` `{"apiId", "organizationId"}` → the new, unpublished proxy.
    pub async fn create_proxy(&self, backend_id: &str, org_id: &str) -> Result<Value, Error> {
        self.call_json(
            Request::post("/proxies").json(json!({"apiId": backend_id, "organizationId": org_id})),
        )
        .await
    }

    /// `PUT /proxies/{id}` with the whole object.
    pub async fn update_proxy(&self, proxy: &Value) -> Result<Value, Error> {
        let id = require_id(proxy, "PUT", "/proxies/{id}")?;
        self.call_json(Request::put(format!("/proxies/{}", seg(id))).json(proxy.clone()))
            .await
    }

    /// `POST /proxies/{id}/publish`, form `name`, `vhost` when given.
    pub async fn publish(
        &self,
        id: &str,
        name: Option<&str>,
        vhost: Option<&str>,
    ) -> Result<Value, Error> {
        let mut form: Vec<(&str, String)> = Vec::new();
        if let Some(name) = name {
            form.push(("name", name.to_owned()));
        }
        if let Some(vhost) = vhost.filter(|v| !v.is_empty()) {
            form.push(("vhost", vhost.to_owned()));
        }
        self.state_change(id, "publish", form).await
    }

    pub async fn unpublish(&self, id: &str) -> Result<Value, Error> {
        self.state_change(id, "unpublish", Vec::new()).await
    }

    /// `POST /proxies/{id}/deprecate`, form `retirementDate`
    /// (`yyyy-MM-ddTHH:mm:ssZ`) when given.
    pub async fn deprecate(&self, id: &str, retirement_date: Option<&str>) -> Result<Value, Error> {
        let form = retirement_date
            .map(|d| vec![("retirementDate", d.to_owned())])
            .unwrap_or_default();
        self.state_change(id, "deprecate", form).await
    }

    pub async fn undeprecate(&self, id: &str) -> Result<Value, Error> {
        self.state_change(id, "undeprecate", Vec::new()).await
    }

    async fn state_change(
        &self,
        id: &str,
        action: &str,
        form: Vec<(&str, String)>,
    ) -> Result<Value, Error> {
        let req = Request::post(format!("/proxies/{}/{action}", seg(id))).form(form);
        let answer = self.call(req).await?;
        // The answer is the proxy; tolerate an empty body.
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        parse_json("POST", &format!("/proxies/{id}/{action}"), &answer.body)
    }

    /// `DELETE /proxies/{id}` (API Manager wants it unpublished first).
    pub async fn delete_proxy(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Request::delete(format!("/proxies/{}", seg(id))))
            .await
    }

    /// `POST /proxies/upgrade/{old}`, form `upgradeApiId`, `deprecate`,
    /// `retire`, `retirementDate` (apim-cli `upgradeAccessToNewerAPI`): the
    /// organizations and applications with access to `old` get access to `new`.
    pub async fn upgrade_access(
        &self,
        old_id: &str,
        new_id: &str,
        deprecate: Option<bool>,
        retire: Option<bool>,
        retirement_date: Option<&str>,
    ) -> Result<(), Error> {
        let mut form = vec![("upgradeApiId", new_id.to_owned())];
        if let Some(d) = deprecate {
            form.push(("deprecate", d.to_string()));
        }
        if let Some(r) = retire {
            form.push(("retire", r.to_string()));
        }
        if let Some(date) = retirement_date {
            form.push(("retirementDate", date.to_owned()));
        }
        self.call_empty(Request::post(format!("/proxies/upgrade/{}", seg(old_id))).form(form))
            .await
    }

    /// `POST /proxies/grantaccess`, form `action=orgs`, `apiId`, `grantOrgId`
    /// (repeated). No call when `org_ids` is empty.
    pub async fn grant_org_access(&self, proxy_id: &str, org_ids: &[String]) -> Result<(), Error> {
        if org_ids.is_empty() {
            return Ok(());
        }
        let mut form = vec![
            ("action", "orgs".to_owned()),
            ("apiId", proxy_id.to_owned()),
        ];
        form.extend(org_ids.iter().map(|id| ("grantOrgId", id.clone())));
        self.call_empty(
            Request::post("/proxies/grantaccess")
                .form(form)
                .safe_to_repeat(),
        )
        .await
    }

    /// `POST /proxies/grantaccess`, form `action=all_orgs`, `apiId`.
    pub async fn grant_all_orgs_access(&self, proxy_id: &str) -> Result<(), Error> {
        self.call_empty(
            Request::post("/proxies/grantaccess")
                .form([("action", "all_orgs"), ("apiId", proxy_id)])
                .safe_to_repeat(),
        )
        .await
    }

    // -- policies -------------------------------------------------------------------

    /// `GET /policies?type=<kind>` (`request`, `response`, `routing`,
    /// `faulthandler`, ...): `[{"id": <key>, "name": ...}]`, what apim-cli's
    /// `APIManagerPoliciesAdapter` resolves policy names with.
    pub async fn policies(&self, kind: &str) -> Result<Vec<Value>, Error> {
        self.call_list(Request::get("/policies").query("type", kind))
            .await
    }

    // -- backend APIs (apirepo) ----------------------------------------------------

    /// Imports a specification as a backend API owned by `org_id`.
    ///
    /// A file goes to `POST /apirepo/import/` as multipart with apim-cli's
    /// fields (`importFromSwagger`): `name`, `type`, `file`, `fileName`,
    /// `organizationId`, `integral=false`, `uploadType=html5`; `type` is
    /// `swagger` for Swagger 2 *and* OpenAPI 3 (apim-cli sends `swagger` for
    /// both; API Manager tells them apart), `wsdl` for WSDL. A URL goes to
    /// `POST /apirepo/importFromUrl/` with the form `organizationId`, `type`,
    /// `url`, `name` (apim-cli's current `importFromWSDL`; older versions put
    /// them into the query string).
    pub async fn import_backend(
        &self,
        name: &str,
        org_id: &str,
        spec: &ApiSpecification,
    ) -> Result<Value, Error> {
        match &spec.source {
            SpecSource::File { path, content } => {
                let file_name = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| "api-specification".to_owned());
                let fields = vec![
                    text_field("name", name),
                    text_field("type", file_import_type(spec.kind)),
                    MultipartField {
                        name: "file",
                        value: MultipartValue::File {
                            file_name: file_name.clone(),
                            mime: spec_mime(spec.kind, &file_name),
                            bytes: content.clone(),
                        },
                    },
                    text_field("fileName", &file_name),
                    text_field("organizationId", org_id),
                    text_field("integral", "false"),
                    text_field("uploadType", "html5"),
                ];
                let mut req = Request::post("/apirepo/import/");
                req.body = Body::Multipart(fields);
                self.call_json(req).await
            }
            SpecSource::Url(url) => {
                let params = [
                    ("organizationId", org_id),
                    ("type", spec.kind.import_type()),
                    ("url", url.as_str()),
                    ("name", name),
                ];
                self.call_json(Request::post("/apirepo/importFromUrl/").form(params))
                    .await
            }
        }
    }

    /// Backend APIs named `name` (`GET /apirepo?field=name&op=eq&value=..`).
    pub async fn backends_by_name(&self, name: &str) -> Result<Vec<Value>, Error> {
        self.call_list(
            Request::get("/apirepo")
                .query("field", "name")
                .query("op", "eq")
                .query("value", name),
        )
        .await
    }

    pub async fn backend(&self, id: &str) -> Result<Value, Error> {
        self.get_json(&format!("/apirepo/{}", seg(id))).await
    }

    /// The specification as imported (`GET /apirepo/{id}/download?original=true`,
    /// what apim-cli compares with). `None` when API Manager has none to give
    /// (404/405/501, e.g. imported from a URL).
    pub async fn download_backend_spec(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let req = Request::get(format!("/apirepo/{}/download", seg(id))).query("original", "true");
        match self.call(req).await {
            Ok(answer) => Ok(Some(answer.body)),
            Err(e) if matches!(e.status(), Some(404 | 405 | 501)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_backend(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Request::delete(format!("/apirepo/{}", seg(id))))
            .await
    }

    // -- organizations --------------------------------------------------------------

    pub async fn organizations(&self) -> Result<Vec<Value>, Error> {
        self.call_list(Request::get("/organizations")).await
    }

    pub async fn organization(&self, id: &str) -> Result<Value, Error> {
        self.get_json(&format!("/organizations/{}", seg(id))).await
    }

    /// The organization with exactly this name, if any.
    pub async fn organization_by_name(&self, name: &str) -> Result<Option<Value>, Error> {
        let found = self
            .call_list(
                Request::get("/organizations")
                    .query("field", "name")
                    .query("op", "eq")
                    .query("value", name),
            )
            .await?;
        Ok(found.into_iter().find(|o| o.name() == Some(name)))
    }

    /// `POST /organizations` with the object (at least `name`).
    pub async fn create_organization(&self, org: &Value) -> Result<Value, Error> {
        self.call_json(Request::post("/organizations").json(org.clone()))
            .await
    }

    /// `PUT /organizations/{id}` with the whole object.
    pub async fn update_organization(&self, org: &Value) -> Result<Value, Error> {
        let id = require_id(org, "PUT", "/organizations/{id}")?;
        self.call_json(Request::put(format!("/organizations/{}", seg(id))).json(org.clone()))
            .await
    }

    pub async fn delete_organization(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Request::delete(format!("/organizations/{}", seg(id))))
            .await
    }

    /// The frontend APIs an organization has been granted.
    pub async fn org_api_access(&self, org_id: &str) -> Result<Vec<ApiAccess>, Error> {
        let path = format!("/organizations/{}/apis", seg(org_id));
        let items = self.call_list(Request::get(path.clone())).await?;
        access_list("GET", &path, items)
    }

    /// `DELETE /organizations/{org}/apis/{access}`.
    pub async fn revoke_org_access(&self, org_id: &str, access_id: &str) -> Result<(), Error> {
        self.call_empty(Request::delete(format!(
            "/organizations/{}/apis/{}",
            seg(org_id),
            seg(access_id)
        )))
        .await
    }

    // -- applications ----------------------------------------------------------------

    pub async fn applications(&self) -> Result<Vec<Value>, Error> {
        self.call_list(Request::get("/applications")).await
    }

    pub async fn application(&self, id: &str) -> Result<Value, Error> {
        self.get_json(&format!("/applications/{}", seg(id))).await
    }

    /// Applications with exactly this name (names are unique per organization).
    pub async fn applications_by_name(&self, name: &str) -> Result<Vec<Value>, Error> {
        let mut found = self
            .call_list(
                Request::get("/applications")
                    .query("field", "name")
                    .query("op", "eq")
                    .query("value", name),
            )
            .await?;
        found.retain(|a| a.name() == Some(name));
        Ok(found)
    }

    /// `POST /applications` with the object (`name`, `organizationId`, ...).
    pub async fn create_application(&self, app: &Value) -> Result<Value, Error> {
        self.call_json(Request::post("/applications").json(app.clone()))
            .await
    }

    /// `PUT /applications/{id}` with the whole object.
    pub async fn update_application(&self, app: &Value) -> Result<Value, Error> {
        let id = require_id(app, "PUT", "/applications/{id}")?;
        self.call_json(Request::put(format!("/applications/{}", seg(id))).json(app.clone()))
            .await
    }

    pub async fn delete_application(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Request::delete(format!("/applications/{}", seg(id))))
            .await
    }

    /// The frontend APIs an application is subscribed to.
    pub async fn app_api_access(&self, app_id: &str) -> Result<Vec<ApiAccess>, Error> {
        let path = format!("/applications/{}/apis", seg(app_id));
        let items = self.call_list(Request::get(path.clone())).await?;
        access_list("GET", &path, items)
    }

    /// `POST /applications/{app}/apis` `{"apiId", "enabled": true}`. An
    /// existing subscription (409 "already exists", which apim-cli ignores
    /// too) is returned as it is.
    pub async fn subscribe_app(&self, app_id: &str, proxy_id: &str) -> Result<ApiAccess, Error> {
        let path = format!("/applications/{}/apis", seg(app_id));
        let req = Request::post(path.clone()).json(json!({"apiId": proxy_id, "enabled": true}));
        match self.call_json(req).await {
            Ok(v) => serde_json::from_value(v).map_err(|e| Error::InvalidResponse {
                method: "POST".to_owned(),
                path,
                message: e.to_string(),
            }),
            Err(Error::Conflict { .. }) => self
                .app_api_access(app_id)
                .await?
                .into_iter()
                .find(|a| a.api_id == proxy_id)
                .ok_or_else(|| Error::InvalidResponse {
                    method: "POST".to_owned(),
                    path: format!("/applications/{app_id}/apis"),
                    message: "409 conflict, but no subscription to the API exists".to_owned(),
                }),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /applications/{app}/apis/{access}`.
    pub async fn unsubscribe_app(&self, app_id: &str, access_id: &str) -> Result<(), Error> {
        self.call_empty(Request::delete(format!(
            "/applications/{}/apis/{}",
            seg(app_id),
            seg(access_id)
        )))
        .await
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn text_field(name: &'static str, value: &str) -> MultipartField {
    MultipartField {
        name,
        value: MultipartValue::Text(value.to_owned()),
    }
}

fn multipart_form(fields: &[MultipartField]) -> Result<reqwest::multipart::Form, Error> {
    let mut form = reqwest::multipart::Form::new();
    for field in fields {
        form = match &field.value {
            MultipartValue::Text(t) => form.text(field.name, t.clone()),
            MultipartValue::File {
                file_name,
                mime,
                bytes,
            } => {
                let part = reqwest::multipart::Part::bytes(bytes.clone())
                    .file_name(file_name.clone())
                    .mime_str(mime)
                    .map_err(|e| Error::Config(format!("multipart part {}: {e}", field.name)))?;
                form.part(field.name, part)
            }
        };
    }
    Ok(form)
}

/// The multipart `type` of a file import.
fn file_import_type(kind: SpecKind) -> &'static str {
    match kind {
        SpecKind::Swagger | SpecKind::OpenApi => "swagger",
        SpecKind::Wsdl => "wsdl",
    }
}

fn spec_mime(kind: SpecKind, file_name: &str) -> &'static str {
    let lower = file_name.to_ascii_lowercase();
    if kind == SpecKind::Wsdl || lower.ends_with(".wsdl") || lower.ends_with(".xml") {
        "text/xml"
    } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        "application/yaml"
    } else {
        "application/json"
    }
}

/// Percent-encodes one path segment (ids are UUIDs; this is for safety).
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn require_id<'a>(obj: &'a Value, method: &str, path: &str) -> Result<&'a str, Error> {
    obj.id()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::Config(format!("{method} {path}: the object has no id")))
}

/// Parses an answer as JSON. Like Jackson's `readTree` (what apim-cli
/// parses with), the first JSON value counts and anything after it is
/// ignored (with a debug note): apim-cli's own `backend_api.json` stub holds
/// two objects separated by a comma.
fn parse_json(method: &str, path: &str, body: &[u8]) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => {
            if values.next().is_some() {
                tracing::debug!(%method, %path, "ignoring data after the first JSON value");
            }
            Ok(value)
        }
        Some(Err(e)) => Err(Error::InvalidResponse {
            method: method.to_owned(),
            path: path.to_owned(),
            message: format!("not JSON: {e}"),
        }),
        None => Ok(Value::Null),
    }
}

fn access_list(method: &str, path: &str, items: Vec<Value>) -> Result<Vec<ApiAccess>, Error> {
    items
        .into_iter()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| Error::InvalidResponse {
                method: method.to_owned(),
                path: path.to_owned(),
                message: e.to_string(),
            })
        })
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// API Manager's error message: the `message`s of
/// `{"errors":[{"code":..,"message":".."}]}`, a top-level `message`, or the
/// body text (shortened).
pub(crate) fn error_text(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(errors) = v.get("errors").and_then(Value::as_array) {
            let messages: Vec<String> = errors
                .iter()
                .filter_map(|e| {
                    let message = e.get("message").and_then(Value::as_str)?;
                    Some(match e.get("code") {
                        Some(code) if !code.is_null() => format!("{message} (code {code})"),
                        _ => message.to_owned(),
                    })
                })
                .collect();
            if !messages.is_empty() {
                return shorten(&messages.join("; "));
            }
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return shorten(m);
        }
    }
    shorten(String::from_utf8_lossy(body).trim())
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= MAX_ERROR_TEXT {
        return s.to_owned();
    }
    let cut: String = s.chars().take(MAX_ERROR_TEXT).collect();
    format!("{cut}…")
}

/// Whether the server's certificate was refused (retrying cannot help).
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.to_string().to_ascii_lowercase().contains("certificate") {
            return true;
        }
        source = s.source();
    }
    false
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "failed reading the answer"
    } else {
        "request failed"
    };
    let mut text = if causes.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", causes.join(": "))
    };
    if is_certificate_error(e) {
        text.push_str(
            " (trust API Manager's CA with the stage's `ca`, or for a test stage set `insecure: true`)",
        );
    }
    text
}

/// The body, read chunk by chunk; `None` when it is longer than `cap` (the
/// rest is not read).
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|l| l > cap as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_reads_api_manager_errors() {
        let body = br#"{"errors":[{"code":403,"message":"API is already unpublished"}]}"#;
        assert_eq!(error_text(body), "API is already unpublished (code 403)");
        assert_eq!(error_text(b"  plain text  "), "plain text");
        assert_eq!(error_text(br#"{"message":"boom"}"#), "boom");
        let long = "x".repeat(1000);
        assert!(error_text(long.as_bytes()).chars().count() <= MAX_ERROR_TEXT + 1);
    }

    #[test]
    fn config_debug_hides_the_password() {
        let c = ClientConfig::new("https://apim:8075", ApimVersion::V1_4, "apiadmin", "s3cret");
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("apiadmin"));
    }

    #[test]
    fn base_path_follows_the_version_and_tolerates_a_given_base_path() {
        let c = ApiManagerClient::new(ClientConfig::new(
            "https://apim:8075/",
            ApimVersion::V1_3,
            "u",
            "p",
        ))
        .unwrap();
        assert_eq!(c.api_base(), "https://apim:8075/api/portal/v1.3");
        let c = ApiManagerClient::new(ClientConfig::new(
            "https://apim:8075/api/portal/v1.4",
            ApimVersion::V1_4,
            "u",
            "p",
        ))
        .unwrap();
        assert_eq!(c.api_base(), "https://apim:8075/api/portal/v1.4");
        assert_eq!(c.url(), "https://apim:8075");
    }

    #[test]
    fn bad_urls_and_bad_pem_are_config_errors() {
        let e = ApiManagerClient::new(ClientConfig::new("apim:8075", ApimVersion::V1_4, "u", "p"))
            .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = ApiManagerClient::new(
            ClientConfig::new("https://apim", ApimVersion::V1_4, "u", "p").with_ca_pem("nope"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
    }

    #[test]
    fn unauthorized_message_names_url_and_user() {
        let e = Error::Unauthorized {
            url: "https://apim:8075".into(),
            user: "apiadmin".into(),
            message: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "API Manager at https://apim:8075 refused user apiadmin: check username/password"
        );
    }

    #[test]
    fn object_accessors() {
        let p =
            json!({"id": "1", "vhost": "", "deprecated": "true", "createdOn": 5, "retired": false});
        assert_eq!(p.id(), Some("1"));
        assert_eq!(p.vhost(), None);
        assert!(p.is_deprecated());
        assert!(!p.is_retired());
        assert_eq!(p.created_on(), 5);
    }
}
