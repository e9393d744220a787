//! One registry's distribution API over reqwest: authentication (anonymous,
//! Basic, Bearer tokens from `WWW-Authenticate`), retries, manifests, blobs,
//! cross-repository mounts, monolithic and chunked uploads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, warn};
use url::Url;

use crate::auth::{parse_challenges, Challenge, Credentials};
use crate::client::ClientOptions;
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::manifest::{Descriptor, MANIFEST_ACCEPT};
use crate::reference::is_loopback;

/// Largest manifest accepted (the distribution default is 4 MiB).
pub(crate) const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;
/// Largest token service answer read (a token is a few KiB).
pub(crate) const TOKEN_LIMIT: u64 = 1024 * 1024;
/// Most of an error (or otherwise unused) answer's body that is read.
pub(crate) const ERROR_BODY_LIMIT: u64 = 64 * 1024;
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// What an operation needs from the repository, for token scopes and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pull,
    Push,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
        }
    }
}

fn scope(repo: &str, action: Action) -> String {
    match action {
        Action::Pull => format!("repository:{repo}:pull"),
        Action::Push => format!("repository:{repo}:pull,push"),
    }
}

#[derive(Default)]
struct AuthState {
    scheme: Scheme,
    tokens: HashMap<String, Token>,
}

#[derive(Default, Clone)]
enum Scheme {
    /// No challenge seen yet: requests go out anonymous.
    #[default]
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Token {
    value: String,
    expires: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// One HTTP request, replayable (the body is `Bytes`).
struct Req<'a> {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    scopes: Vec<String>,
    repository: &'a str,
    action: Action,
    timeout: Duration,
    /// Request-level retries (idempotent requests only).
    retry: bool,
}

/// A fetched manifest document.
pub(crate) struct FetchedManifest {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub digest_header: Option<String>,
}

/// A blob body for uploads.
pub(crate) enum BlobBody {
    Memory(Bytes),
    File { path: PathBuf, size: u64 },
}

impl BlobBody {
    pub(crate) fn len(&self) -> u64 {
        match self {
            BlobBody::Memory(b) => b.len() as u64,
            BlobBody::File { size, .. } => *size,
        }
    }
}

/// Result of a cross-repository mount attempt.
pub(crate) enum Mount {
    Mounted,
    /// The registry could not mount and opened an upload session instead.
    Started(Url),
}

/// A registry API endpoint.
pub(crate) struct Endpoint {
    /// The registry as named in references.
    pub(crate) registry: String,
    /// `http(s)://host[:port]/`.
    pub(crate) base: Url,
    /// `image.insecure`: plain HTTP accepted off loopback (also for the
    /// token service the credentials go to).
    insecure: bool,
    creds: Option<Credentials>,
    http: reqwest::Client,
    opts: Arc<ClientOptions>,
    auth: Mutex<AuthState>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("registry", &self.registry)
            .field("base", &self.base.as_str())
            .field("authenticated", &self.creds.is_some())
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(
        registry: String,
        base: Url,
        insecure: bool,
        creds: Option<Credentials>,
        http: reqwest::Client,
        opts: Arc<ClientOptions>,
    ) -> Endpoint {
        Endpoint {
            registry,
            base,
            insecure,
            creds,
            http,
            opts,
            auth: Mutex::new(AuthState::default()),
        }
    }

    /// Whether `other` is the same registry (a mount source candidate).
    pub(crate) fn same_registry(&self, other: &Endpoint) -> bool {
        self.base == other.base
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| ImageError::Malformed {
            what: "request URL".into(),
            origin: self.registry.clone(),
            reason: e.to_string(),
        })
    }

    /// A URL for messages: no query (upload state), no credentials.
    fn show(url: &Url) -> String {
        format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ) + url.path()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A poisoned lock only means another task panicked mid-update; the
        // state is a cache, so keep using it.
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---------------------------------------------------------------------
    // Authentication

    fn scopes_key(scopes: &[String]) -> String {
        let mut s = scopes.to_vec();
        s.sort();
        s.join(" ")
    }

    /// The `Authorization` value for a request, fetching a token if needed.
    async fn authorization(&self, req: &Req<'_>) -> Result<Option<String>> {
        let (scheme, cached) = {
            let st = self.lock();
            let key = Self::scopes_key(&req.scopes);
            let cached = st
                .tokens
                .get(&key)
                .filter(|t| t.expires > Instant::now() + Duration::from_secs(5))
                .map(|t| t.value.clone());
            (st.scheme.clone(), cached)
        };
        match scheme {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Scheme::Bearer { realm, service } => {
                if let Some(t) = cached {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self
                    .fetch_token(&realm, service.as_deref(), &req.scopes, req)
                    .await?;
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Reacts to a 401: learns the scheme, gets a token. `Ok(true)` when the
    /// request is worth sending again.
    async fn handle_challenge(&self, header: &str, req: &Req<'_>) -> Result<bool> {
        let challenges = parse_challenges(header);
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => Some((realm.clone(), service.clone(), scope.clone())),
            _ => None,
        });
        if let Some((realm, service, scope)) = bearer {
            {
                let mut st = self.lock();
                st.scheme = Scheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                };
                st.tokens.remove(&Self::scopes_key(&req.scopes));
            }
            let mut scopes = req.scopes.clone();
            if let Some(s) = scope {
                for one in s.split(' ').filter(|x| !x.is_empty()) {
                    if !scopes.iter().any(|x| x == one) {
                        scopes.push(one.to_owned());
                    }
                }
            }
            self.fetch_token(&realm, service.as_deref(), &scopes, req)
                .await?;
            return Ok(true);
        }
        if challenges.contains(&Challenge::Basic) {
            if self.creds.is_none() {
                return Ok(false);
            }
            let mut st = self.lock();
            let already = matches!(st.scheme, Scheme::Basic);
            st.scheme = Scheme::Basic;
            return Ok(!already);
        }
        Ok(false)
    }

    /// Gets a token from the realm for `scopes` and caches it under the
    /// request's own scope key.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        req: &Req<'_>,
    ) -> Result<String> {
        let mut url = Url::parse(realm).map_err(|e| ImageError::Malformed {
            what: "Bearer realm in WWW-Authenticate".into(),
            origin: self.registry.clone(),
            reason: e.to_string(),
        })?;
        // The credentials go to the realm: never in clear over the network.
        if self.creds.is_some()
            && url.scheme() != "https"
            && !(self.insecure || is_loopback(&self.registry))
        {
            return Err(ImageError::InsecureRealm {
                registry: self.registry.clone(),
                realm: Self::show(&url),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let max = self.opts.retry.max_attempts.max(1);
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut rb = self
                .http
                .get(url.clone())
                .timeout(self.opts.request_timeout);
            if let Some(c) = &self.creds {
                rb = rb.header(AUTHORIZATION, c.basic_header());
            }
            match rb.send().await {
                Ok(r) if retryable_status(r.status()) && attempt < max => {
                    tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                }
                Ok(r) => break r,
                Err(e) if attempt < max && transport_retryable(&e) => {
                    tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                }
                Err(e) => {
                    return Err(ImageError::Connection {
                        registry: format!("{} (token service)", self.registry),
                        url: Self::show(&url),
                        attempts: attempt,
                        source: e.without_url(),
                    })
                }
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ImageError::Unauthorized {
                registry: self.registry.clone(),
                repository: req.repository.to_owned(),
                action: req.action.name().to_owned(),
                hint: match &self.creds {
                    Some(c) => format!(
                        "its token service {} rejected the credentials of user {:?}; check the \
                         username and password configured for {}",
                        Self::show(&url),
                        c.username(),
                        self.registry
                    ),
                    None => format!(
                        "its token service {} requires credentials and none are configured for \
                         {}; give a username and password (or a Docker config.json auths entry)",
                        Self::show(&url),
                        self.registry
                    ),
                },
            });
        }
        if !status.is_success() {
            return Err(error_from(resp, &self.registry, "GET", &url, attempt).await);
        }
        let body = read_limited(resp, TOKEN_LIMIT).await.map_err(|e| match e {
            ReadError::TooLarge => ImageError::Malformed {
                what: "token response".into(),
                origin: Self::show(&url),
                reason: format!("it is larger than {TOKEN_LIMIT} bytes"),
            },
            ReadError::Http(e) => ImageError::Transfer {
                registry: self.registry.clone(),
                what: "token".into(),
                source: e.without_url(),
            },
        })?;
        let tr: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| ImageError::Malformed {
                what: "token response".into(),
                origin: Self::show(&url),
                reason: e.to_string(),
            })?;
        let token = tr
            .token
            .or(tr.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ImageError::Malformed {
                what: "token response".into(),
                origin: Self::show(&url),
                reason: "it has neither `token` nor `access_token`".into(),
            })?;
        let ttl = Duration::from_secs(tr.expires_in.unwrap_or(60).max(10));
        self.lock().tokens.insert(
            Self::scopes_key(&req.scopes),
            Token {
                value: token.clone(),
                expires: Instant::now() + ttl,
            },
        );
        debug!(registry = %self.registry, scopes = ?scopes, "got a registry token");
        Ok(token)
    }

    fn unauthorized(&self, req: &Req<'_>) -> ImageError {
        let scheme = self.lock().scheme.clone();
        let hint = match (&self.creds, scheme) {
            (None, _) => format!(
                "the registry requires authentication and no credentials are configured for \
                 {}; give a username and password (or a Docker config.json auths entry)",
                self.registry
            ),
            (Some(c), Scheme::Bearer { .. }) => format!(
                "the token obtained with user {:?} is not accepted for this repository; check \
                 that the account may {} there",
                c.username(),
                req.action.name()
            ),
            (Some(c), _) => format!(
                "the registry rejected the credentials of user {:?}; check the username and \
                 password configured for {}",
                c.username(),
                self.registry
            ),
        };
        ImageError::Unauthorized {
            registry: self.registry.clone(),
            repository: req.repository.to_owned(),
            action: req.action.name().to_owned(),
            hint,
        }
    }

    // ---------------------------------------------------------------------
    // Sending with retries

    /// Sends a request: authenticates on 401 (once), retries 5xx/429 and
    /// connection errors when `req.retry`. Returns the response (any other
    /// status is for the caller to judge) and the attempts used.
    async fn send(&self, req: &Req<'_>) -> Result<(reqwest::Response, u32)> {
        let max = if req.retry {
            self.opts.retry.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let auth = self.authorization(req).await?;
            let mut rb = self
                .http
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone())
                .timeout(req.timeout);
            if let Some(a) = auth {
                rb = rb.header(AUTHORIZATION, a);
            }
            if let Some(b) = &req.body {
                rb = rb.body(b.clone());
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    if attempt < max && transport_retryable(&e) {
                        debug!(registry = %self.registry, method = %req.method,
                               path = req.url.path(), attempt, error = %e.without_url(),
                               "connection error; retrying");
                        tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                        continue;
                    }
                    return Err(ImageError::Connection {
                        registry: self.registry.clone(),
                        url: Self::show(&req.url),
                        attempts: attempt,
                        source: e.without_url(),
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                if !reauthed {
                    reauthed = true;
                    let header = resp
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(", ");
                    if self.handle_challenge(&header, req).await? {
                        attempt -= 1;
                        continue;
                    }
                }
                return Err(self.unauthorized(req));
            }
            if status == StatusCode::FORBIDDEN {
                return Err(ImageError::Forbidden {
                    registry: self.registry.clone(),
                    repository: req.repository.to_owned(),
                    action: req.action.name().to_owned(),
                });
            }
            if retryable_status(status) && attempt < max {
                let delay = retry_after(resp.headers())
                    .map(|d| d.min(self.opts.retry.max_backoff))
                    .unwrap_or_else(|| self.opts.retry.delay(attempt));
                debug!(registry = %self.registry, method = %req.method, path = req.url.path(),
                       status = status.as_u16(), attempt, "server error; retrying");
                // Read the body so the connection can be reused.
                discard(resp).await;
                tokio::time::sleep(delay).await;
                continue;
            }
            return Ok((resp, attempt));
        }
    }

    fn req<'a>(
        &self,
        method: Method,
        url: Url,
        repository: &'a str,
        action: Action,
        retry: bool,
    ) -> Req<'a> {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scopes: vec![scope(repository, action)],
            repository,
            action,
            timeout: self.opts.request_timeout,
            retry,
        }
    }

    // ---------------------------------------------------------------------
    // Manifests

    /// `GET /v2/<repo>/manifests/<reference>`. `display` names the image in
    /// errors.
    pub(crate) async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        display: &str,
    ) -> Result<FetchedManifest> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let mut req = self.req(Method::GET, url, repo, Action::Pull, true);
        req.headers
            .insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let max = self.opts.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (resp, attempts) = self.send(&req).await?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(ImageError::NotFound {
                    what: "image",
                    reference: display.to_owned(),
                    location: format!("registry {} (HTTP 404)", self.registry),
                    hint: "check image.base: the repository or tag does not exist there (push \
                           the parent image first, or fix the reference)"
                        .into(),
                });
            }
            if status != StatusCode::OK {
                return Err(error_from(resp, &self.registry, "GET", &req.url, attempts).await);
            }
            if resp.content_length().is_some_and(|l| l > MANIFEST_LIMIT) {
                return Err(ImageError::Malformed {
                    what: "manifest".into(),
                    origin: display.to_owned(),
                    reason: format!("it is larger than {MANIFEST_LIMIT} bytes"),
                });
            }
            let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
            let digest_header = header_str(resp.headers(), DOCKER_CONTENT_DIGEST);
            match read_limited(resp, MANIFEST_LIMIT).await {
                Ok(bytes) => {
                    return Ok(FetchedManifest {
                        bytes,
                        content_type,
                        digest_header,
                    })
                }
                Err(ReadError::TooLarge) => {
                    return Err(ImageError::Malformed {
                        what: "manifest".into(),
                        origin: display.to_owned(),
                        reason: format!("it is larger than {MANIFEST_LIMIT} bytes"),
                    })
                }
                Err(ReadError::Http(e)) if attempt < max => {
                    debug!(error = %e.without_url(), "manifest body broke off; retrying");
                    tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                }
                Err(ReadError::Http(e)) => {
                    return Err(ImageError::Transfer {
                        registry: self.registry.clone(),
                        what: format!("manifest {display}"),
                        source: e.without_url(),
                    })
                }
            }
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; returns the manifest digest
    /// after checking the registry's `Docker-Content-Digest` against it.
    pub(crate) async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest> {
        let expected = Digest::sha256(&bytes);
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let mut req = self.req(Method::PUT, url, repo, Action::Push, true);
        req.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type)
                .map_err(|_| ImageError::InvalidInput(format!("bad media type {media_type:?}")))?,
        );
        req.body = Some(bytes);
        let (resp, attempts) = self.send(&req).await?;
        if resp.status() != StatusCode::CREATED && resp.status() != StatusCode::OK {
            return Err(error_from(resp, &self.registry, "PUT", &req.url, attempts).await);
        }
        if let Some(h) = header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            if let Ok(got) = Digest::parse(&h) {
                if got.algorithm() == expected.algorithm() && got != expected {
                    return Err(ImageError::DigestMismatch {
                        what: format!("manifest pushed to {}/{repo}:{reference}", self.registry),
                        expected,
                        actual: got,
                    });
                }
            }
        }
        Ok(expected)
    }

    // ---------------------------------------------------------------------
    // Blobs: existence, download

    /// `HEAD /v2/<repo>/blobs/<digest>`: whether the repository has the blob.
    pub(crate) async fn head_blob(
        &self,
        repo: &str,
        digest: &Digest,
        action: Action,
    ) -> Result<bool> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let req = self.req(Method::HEAD, url, repo, action, true);
        let (resp, attempts) = self.send(&req).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(error_from(resp, &self.registry, "HEAD", &req.url, attempts).await),
        }
    }

    /// Downloads a blob into memory (at most `limit` bytes), verified.
    pub(crate) async fn fetch_blob_bytes(
        &self,
        repo: &str,
        desc: &Descriptor,
        limit: u64,
        what: &str,
    ) -> Result<Bytes> {
        if desc.size > limit {
            return Err(ImageError::Malformed {
                what: what.to_owned(),
                origin: format!("{}/{repo}", self.registry),
                reason: format!(
                    "its descriptor says {} bytes, over the {limit} limit",
                    desc.size
                ),
            });
        }
        let max = self.opts.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut buf = BytesMut::with_capacity(desc.size as usize);
            match self
                .stream_blob(repo, desc, what, |chunk| {
                    buf.extend_from_slice(chunk);
                    Ok(())
                })
                .await
            {
                Ok(()) => return Ok(buf.freeze()),
                Err(e @ ImageError::Transfer { .. }) if attempt < max => {
                    debug!(error = %e, "blob download broke off; retrying");
                    tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Downloads a blob into a file (created or truncated), verified.
    pub(crate) async fn fetch_blob_to_file(
        &self,
        repo: &str,
        desc: &Descriptor,
        path: &Path,
        what: &str,
    ) -> Result<()> {
        let max = self.opts.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let file = tokio::fs::File::create(path)
                .await
                .map_err(|e| ImageError::io("cannot create", path, e))?;
            let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let res = self.stream_blob_to(repo, desc, what, &mut w, path).await;
            match res {
                Ok(()) => {
                    w.flush()
                        .await
                        .map_err(|e| ImageError::io("cannot write", path, e))?;
                    return Ok(());
                }
                Err(e @ ImageError::Transfer { .. }) if attempt < max => {
                    debug!(error = %e, "blob download broke off; retrying");
                    tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open_blob(&self, repo: &str, desc: &Descriptor) -> Result<reqwest::Response> {
        let url = self.url(&format!("v2/{repo}/blobs/{}", desc.digest))?;
        let mut req = self.req(Method::GET, url, repo, Action::Pull, true);
        req.timeout = self.opts.blob_timeout;
        let (resp, attempts) = self.send(&req).await?;
        match resp.status() {
            StatusCode::OK => Ok(resp),
            StatusCode::NOT_FOUND => Err(ImageError::NotFound {
                what: "blob",
                reference: format!("{}/{repo}@{}", self.registry, desc.digest),
                location: format!("registry {} (HTTP 404)", self.registry),
                hint: "the manifest names a blob the registry does not have; the source image \
                       is incomplete, push it again"
                    .into(),
            }),
            _ => Err(error_from(resp, &self.registry, "GET", &req.url, attempts).await),
        }
    }

    async fn stream_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        what: &str,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut resp = self.open_blob(repo, desc).await?;
        let mut hasher = desc.digest.hasher();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    hasher.update(&chunk);
                    if hasher.len() > desc.size {
                        return Err(ImageError::SizeMismatch {
                            what: format!("{what} {}", desc.digest),
                            expected: desc.size,
                            actual: hasher.len(),
                        });
                    }
                    sink(&chunk)?;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ImageError::Transfer {
                        registry: self.registry.clone(),
                        what: format!("{what} {}", desc.digest),
                        source: e.without_url(),
                    })
                }
            }
        }
        finish_verify(hasher, desc, what)
    }

    async fn stream_blob_to(
        &self,
        repo: &str,
        desc: &Descriptor,
        what: &str,
        w: &mut tokio::io::BufWriter<tokio::fs::File>,
        path: &Path,
    ) -> Result<()> {
        let mut resp = self.open_blob(repo, desc).await?;
        let mut hasher = desc.digest.hasher();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    hasher.update(&chunk);
                    if hasher.len() > desc.size {
                        return Err(ImageError::SizeMismatch {
                            what: format!("{what} {}", desc.digest),
                            expected: desc.size,
                            actual: hasher.len(),
                        });
                    }
                    w.write_all(&chunk)
                        .await
                        .map_err(|e| ImageError::io("cannot write", path, e))?;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ImageError::Transfer {
                        registry: self.registry.clone(),
                        what: format!("{what} {}", desc.digest),
                        source: e.without_url(),
                    })
                }
            }
        }
        finish_verify(hasher, desc, what)
    }

    // ---------------------------------------------------------------------
    // Blobs: upload

    /// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<from>`.
    pub(crate) async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let mut req = self.req(Method::POST, url, repo, Action::Push, true);
        req.scopes.push(scope(from, Action::Pull));
        req.body = Some(Bytes::new());
        let (resp, attempts) = self.send(&req).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Started(self.location(&resp, &req.url)?)),
            _ => Err(error_from(resp, &self.registry, "POST", &req.url, attempts).await),
        }
    }

    /// Opens an upload session: `POST /v2/<repo>/blobs/uploads/`.
    async fn start_upload(&self, repo: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let mut req = self.req(Method::POST, url, repo, Action::Push, true);
        req.body = Some(Bytes::new());
        let (resp, attempts) = self.send(&req).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(error_from(resp, &self.registry, "POST", &req.url, attempts).await);
        }
        self.location(&resp, &req.url)
    }

    /// Cancels an upload session (best effort).
    pub(crate) async fn cancel_upload(&self, repo: &str, location: Url) {
        let req = self.req(Method::DELETE, location, repo, Action::Push, false);
        if let Ok((resp, _)) = self.send(&req).await {
            discard(resp).await;
        }
    }

    fn location(&self, resp: &reqwest::Response, request_url: &Url) -> Result<Url> {
        let loc =
            header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| ImageError::Malformed {
                what: "upload answer".into(),
                origin: self.registry.clone(),
                reason: "no Location header".into(),
            })?;
        request_url.join(&loc).map_err(|e| ImageError::Malformed {
            what: "upload Location header".into(),
            origin: self.registry.clone(),
            reason: e.to_string(),
        })
    }

    /// Uploads a blob: in one PUT up to the chunk threshold, in PATCH chunks
    /// above it. A failed attempt is retried from a new upload session.
    /// `started` is an already open session (from a mount that fell back).
    pub(crate) async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        body: &BlobBody,
        mut started: Option<Url>,
    ) -> Result<()> {
        let max = self.opts.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let location = match started.take() {
                Some(u) => u,
                None => self.start_upload(repo).await?,
            };
            let res = if body.len() > self.opts.chunk_threshold {
                self.upload_chunked(repo, digest, body, location.clone())
                    .await
            } else {
                self.upload_monolithic(repo, digest, body, location.clone())
                    .await
            };
            match res {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.cancel_upload(repo, location).await;
                    if e.is_retryable() && attempt < max {
                        warn!(registry = %self.registry, repository = repo, digest = %digest,
                              attempt, error = %e, "blob upload failed; retrying");
                        tokio::time::sleep(self.opts.retry.delay(attempt)).await;
                        continue;
                    }
                    // Count whole upload attempts, not the last request's.
                    return Err(match e {
                        ImageError::Registry {
                            registry,
                            method,
                            path,
                            status,
                            message,
                            ..
                        } => ImageError::Registry {
                            registry,
                            method,
                            path,
                            status,
                            attempts: attempt,
                            message,
                        },
                        ImageError::Connection {
                            registry,
                            url,
                            source,
                            ..
                        } => ImageError::Connection {
                            registry,
                            url,
                            attempts: attempt,
                            source,
                        },
                        other => other,
                    });
                }
            }
        }
    }

    fn commit_url(location: &Url, digest: &Digest) -> Url {
        let mut u = location.clone();
        u.query_pairs_mut().append_pair("digest", digest.as_str());
        u
    }

    async fn upload_monolithic(
        &self,
        repo: &str,
        digest: &Digest,
        body: &BlobBody,
        location: Url,
    ) -> Result<()> {
        let data = match body {
            BlobBody::Memory(b) => b.clone(),
            BlobBody::File { path, size } => {
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| ImageError::io("cannot read", path, e))?;
                if data.len() as u64 != *size {
                    return Err(ImageError::SizeMismatch {
                        what: format!("blob file {}", path.display()),
                        expected: *size,
                        actual: data.len() as u64,
                    });
                }
                let got = Digest::sha256(&data);
                if digest.algorithm() == got.algorithm() && &got != digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("blob file {}", path.display()),
                        expected: digest.clone(),
                        actual: got,
                    });
                }
                Bytes::from(data)
            }
        };
        let mut req = self.req(
            Method::PUT,
            Self::commit_url(&location, digest),
            repo,
            Action::Push,
            false,
        );
        req.timeout = self.opts.blob_timeout;
        req.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        req.body = Some(data);
        let (resp, attempts) = self.send(&req).await?;
        self.check_committed(resp, digest, &req.url, attempts).await
    }

    async fn upload_chunked(
        &self,
        repo: &str,
        digest: &Digest,
        body: &BlobBody,
        mut location: Url,
    ) -> Result<()> {
        let total = body.len();
        let chunk_size = self.opts.chunk_size.max(1);
        let mut file = match body {
            BlobBody::File { path, .. } => Some((
                tokio::fs::File::open(path)
                    .await
                    .map_err(|e| ImageError::io("cannot open", path, e))?,
                path.clone(),
            )),
            BlobBody::Memory(_) => None,
        };
        let mut hasher = digest.hasher();
        let mut offset = 0u64;
        while offset < total {
            let len = chunk_size.min(total - offset);
            let chunk = match (body, &mut file) {
                (BlobBody::Memory(b), _) => b.slice(offset as usize..(offset + len) as usize),
                (BlobBody::File { .. }, Some((f, path))) => {
                    let mut buf = BytesMut::zeroed(len as usize);
                    f.read_exact(&mut buf)
                        .await
                        .map_err(|e| ImageError::io("cannot read", path.as_path(), e))?;
                    buf.freeze()
                }
                (BlobBody::File { path, .. }, None) => {
                    return Err(ImageError::Task(format!(
                        "blob file {} is not open",
                        path.display()
                    )))
                }
            };
            hasher.update(&chunk);
            let end = offset + len - 1;
            let mut req = self.req(Method::PATCH, location.clone(), repo, Action::Push, false);
            req.timeout = self.opts.blob_timeout;
            req.headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            req.headers.insert(
                "content-range",
                HeaderValue::from_str(&format!("{offset}-{end}"))
                    .map_err(|e| ImageError::Task(format!("cannot build Content-Range: {e}")))?,
            );
            req.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            req.body = Some(chunk);
            let (resp, attempts) = self.send(&req).await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(error_from(resp, &self.registry, "PATCH", &req.url, attempts).await);
            }
            location = self.location(&resp, &req.url)?;
            offset += len;
            debug!(registry = %self.registry, digest = %digest.short(), offset, total, "chunk uploaded");
        }
        let got = hasher.finish();
        if digest.algorithm() == got.algorithm() && &got != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob uploaded to {}/{repo}", self.registry),
                expected: digest.clone(),
                actual: got,
            });
        }
        let mut req = self.req(
            Method::PUT,
            Self::commit_url(&location, digest),
            repo,
            Action::Push,
            false,
        );
        req.body = Some(Bytes::new());
        let (resp, attempts) = self.send(&req).await?;
        self.check_committed(resp, digest, &req.url, attempts).await
    }

    async fn check_committed(
        &self,
        resp: reqwest::Response,
        digest: &Digest,
        url: &Url,
        attempts: u32,
    ) -> Result<()> {
        if resp.status() != StatusCode::CREATED && resp.status() != StatusCode::NO_CONTENT {
            return Err(error_from(resp, &self.registry, "PUT", url, attempts).await);
        }
        if let Some(h) = header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            if let Ok(got) = Digest::parse(&h) {
                if got.algorithm() == digest.algorithm() && &got != digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("blob committed to {}", self.registry),
                        expected: digest.clone(),
                        actual: got,
                    });
                }
            }
        }
        Ok(())
    }
}

fn finish_verify(hasher: crate::digest::Hasher, desc: &Descriptor, what: &str) -> Result<()> {
    let len = hasher.len();
    if len != desc.size {
        return Err(ImageError::SizeMismatch {
            what: format!("{what} {}", desc.digest),
            expected: desc.size,
            actual: len,
        });
    }
    let got = hasher.finish();
    if got != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: desc.digest.clone(),
            actual: got,
        });
    }
    Ok(())
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

fn transport_retryable(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_limited(
    mut resp: reqwest::Response,
    limit: u64,
) -> std::result::Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and drops at most [`ERROR_BODY_LIMIT`] bytes of an answer nobody
/// needs (a small one lets the connection be reused; a large one is cut).
async fn discard(resp: reqwest::Response) {
    let _ = read_limited(resp, ERROR_BODY_LIMIT).await;
}

/// An [`ImageError::Registry`] from an unexpected answer, with the
/// distribution error codes of its body.
async fn error_from(
    resp: reqwest::Response,
    registry: &str,
    method: &str,
    url: &Url,
    attempts: u32,
) -> ImageError {
    let status = resp.status();
    let body = read_limited(resp, ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    ImageError::Registry {
        registry: registry.to_owned(),
        method: method.to_owned(),
        path: url.path().to_owned(),
        status: status.as_u16(),
        attempts,
        message: describe_body(&body)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
    }
}

/// `CODE: message (detail)` from a distribution error body, or its text.
fn describe_body(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|i| {
                let detail = match &i.detail {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => format!(" ({s})"),
                    Some(v) => format!(" ({})", truncate(&v.to_string(), 200)),
                };
                format!("{}: {}{detail}", i.code, i.message)
            })
            .collect();
        if !parts.is_empty() {
            return Some(parts.join("; "));
        }
    }
    let text = String::from_utf8_lossy(body).trim().to_owned();
    (!text.is_empty()).then(|| truncate(&text, 300))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_distribution_errors() {
        let b = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:abc"}]}"#;
        assert_eq!(
            describe_body(b).unwrap(),
            "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:abc)"
        );
        assert_eq!(describe_body(b"oops").unwrap(), "oops");
        assert!(describe_body(b"").is_none());
    }

    #[test]
    fn shows_urls_without_query() {
        let u = Url::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=secret").unwrap();
        assert_eq!(
            Endpoint::show(&u),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x"
        );
    }
}

/// Outbound rules against a real local HTTP server standing in for a
/// registry and its token service: where credentials may go, and how much
/// of an answer is read.
#[cfg(test)]
mod outbound_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;

    use super::*;
    use crate::client::RetryPolicy;

    #[derive(Clone, Default)]
    struct Fake {
        addr: String,
        /// `Authorization` of every token request (`None`: without one).
        token_auth: Arc<Mutex<Vec<Option<String>>>>,
        /// The token service answers an endless body.
        endless_token: bool,
        flaky_calls: Arc<AtomicUsize>,
    }

    fn endless() -> Body {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        Body::from_stream(futures::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    }

    async fn manifest(State(f): State<Fake>, headers: AxHeaders) -> Response {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer good") {
            return (AxStatus::OK, "{}").into_response();
        }
        let challenge = format!("Bearer realm=\"http://{}/token\",service=\"fake\"", f.addr);
        (
            AxStatus::UNAUTHORIZED,
            [("www-authenticate", challenge)],
            "{}",
        )
            .into_response()
    }

    async fn token(State(f): State<Fake>, headers: AxHeaders) -> Response {
        f.token_auth.lock().unwrap().push(
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        if f.endless_token {
            return (AxStatus::OK, endless()).into_response();
        }
        (AxStatus::OK, r#"{"token":"good","expires_in":300}"#).into_response()
    }

    /// 503 with an endless body first, then 200.
    async fn flaky(State(f): State<Fake>) -> Response {
        if f.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return (AxStatus::SERVICE_UNAVAILABLE, endless()).into_response();
        }
        (AxStatus::OK, "{}").into_response()
    }

    async fn broken() -> Response {
        (AxStatus::BAD_REQUEST, endless()).into_response()
    }

    async fn serve(endless_token: bool) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap().to_string(),
            endless_token,
            ..Fake::default()
        };
        let app = Router::new()
            .route("/v2/a/manifests/1", get(manifest))
            .route("/v2/flaky/manifests/1", get(flaky))
            .route("/v2/broken/manifests/1", get(broken))
            .route("/token", get(token))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// An endpoint for `registry` that talks to the fake server (whatever
    /// the registry's name says), as the client would build it.
    fn endpoint(fake: &Fake, registry: &str, insecure: bool, creds: bool) -> Endpoint {
        let opts = ClientOptions {
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            },
            request_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        Endpoint::new(
            registry.to_owned(),
            Url::parse(&format!("http://{}/", fake.addr)).unwrap(),
            insecure,
            creds.then(|| Credentials::new("robot", "robot-s3cret-pw")),
            reqwest::Client::new(),
            Arc::new(opts),
        )
    }

    #[tokio::test]
    async fn credentials_go_to_a_plain_http_realm_only_for_loopback_or_insecure_registries() {
        let fake = serve(false).await;
        // A registry off loopback, not insecure: the credentials stay home.
        let ep = endpoint(&fake, "registry.example.com", false, true);
        let err = ep
            .get_manifest("a", "1", "registry.example.com/a:1")
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, ImageError::InsecureRealm { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("http://{}/token", fake.addr)) && msg.contains("HTTPS"),
            "{msg}"
        );
        assert!(fake.token_auth.lock().unwrap().is_empty(), "nothing sent");

        // Without credentials there is nothing to protect.
        let anon = endpoint(&fake, "registry.example.com", false, false);
        anon.get_manifest("a", "1", "x")
            .await
            .expect("anonymous token");
        assert_eq!(*fake.token_auth.lock().unwrap(), vec![None]);

        // image.insecure: true, or a registry on loopback: allowed.
        for (registry, insecure) in [("registry.example.com", true), (fake.addr.as_str(), false)] {
            let ep = endpoint(&fake, registry, insecure, true);
            ep.get_manifest("a", "1", "x")
                .await
                .expect("token with credentials");
            let last = fake.token_auth.lock().unwrap().last().cloned().flatten();
            assert_eq!(
                last,
                Some(Credentials::new("robot", "robot-s3cret-pw").basic_header())
            );
        }
    }

    #[tokio::test]
    async fn a_token_answer_is_read_up_to_a_cap() {
        let fake = serve(true).await;
        let ep = endpoint(&fake, &fake.addr, false, true);
        let started = Instant::now();
        let err = ep
            .get_manifest("a", "1", "x")
            .await
            .err()
            .expect("too large");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("larger than {TOKEN_LIMIT} bytes")),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn error_bodies_are_read_up_to_a_cap() {
        let fake = serve(false).await;
        let ep = endpoint(&fake, &fake.addr, false, false);
        // A 503 with an endless body, then 200: the retry comes at once.
        let started = Instant::now();
        ep.get_manifest("flaky", "1", "x")
            .await
            .expect("second try");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // A 400 with an endless body: an error at once.
        let started = Instant::now();
        let err = ep
            .get_manifest("broken", "1", "x")
            .await
            .err()
            .expect("400");
        assert_eq!(err.status(), Some(400), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
