//! The image client: options, retry policy, and one [`Endpoint`] per
//! registry (shared HTTP connection pool, cached auth state and tokens).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::CredentialStore;
use crate::error::{ImageError, Result};
use crate::manifest::Platform;
use crate::reference::base_url;
use crate::registry::Endpoint;

/// Retries for 5xx/429 answers and connection errors: exponential backoff
/// from `initial_backoff`, doubled each time up to `max_backoff`, with up to
/// 25% jitter; at most `max_attempts` tries in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The pause after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(16);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        // Cheap jitter without a RNG dependency.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
        base + jitter
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Credentials per registry; registries without an entry are anonymous.
    pub credentials: CredentialStore,
    pub retry: RetryPolicy,
    /// The platform picked from an index / manifest list (default `linux/amd64`).
    pub platform: Platform,
    /// Blobs larger than this are uploaded in chunks (PATCH), smaller ones in
    /// one PUT.
    pub chunk_threshold: u64,
    /// Size of each PATCH chunk.
    pub chunk_size: u64,
    /// Timeout of small requests (manifests, HEAD, upload sessions, tokens).
    pub request_timeout: Duration,
    /// Timeout of one blob transfer request (a whole PUT or one PATCH chunk).
    pub blob_timeout: Duration,
    pub connect_timeout: Duration,
    /// Blobs checked or transferred at once.
    pub concurrency: usize,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: CredentialStore::new(),
            retry: RetryPolicy::default(),
            platform: Platform::default(),
            chunk_threshold: 32 * 1024 * 1024,
            chunk_size: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(60),
            blob_timeout: Duration::from_secs(30 * 60),
            connect_timeout: Duration::from_secs(10),
            concurrency: 4,
            user_agent: concat!("gantry-imagebuild/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Resolves parent images, assembles stage images and pushes them.
///
/// Cheap to share (`Arc` it); keeps one connection pool and per-registry
/// auth state (tokens are cached per scope until they expire).
pub struct ImageClient {
    http: reqwest::Client,
    pub(crate) opts: Arc<ClientOptions>,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl std::fmt::Debug for ImageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageClient")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl ImageClient {
    pub fn new(opts: ClientOptions) -> Result<ImageClient> {
        if opts.chunk_size == 0 {
            return Err(ImageError::InvalidInput(
                "chunk_size must be above 0".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(opts.connect_timeout)
            // Every request sets its own (request_timeout or blob_timeout);
            // this bounds any that would not.
            .timeout(opts.blob_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(ImageError::Client)?;
        Ok(ImageClient {
            http,
            opts: Arc::new(opts),
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The endpoint for a registry, created on first use.
    pub(crate) fn endpoint(&self, registry: &str, insecure: bool) -> Result<Arc<Endpoint>> {
        let base = base_url(registry, insecure)?;
        let key = format!("{base}|{registry}");
        let mut map = self
            .endpoints
            .lock()
            .map_err(|_| ImageError::Task("endpoint cache poisoned".into()))?;
        if let Some(ep) = map.get(&key) {
            return Ok(ep.clone());
        }
        let ep = Arc::new(Endpoint::new(
            registry.to_owned(),
            base,
            insecure,
            self.opts.credentials.get(registry).cloned(),
            self.http.clone(),
            self.opts.clone(),
        ));
        map.insert(key, ep.clone());
        Ok(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let d1 = p.delay(1);
        assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(125));
        let d2 = p.delay(2);
        assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(250));
        let d9 = p.delay(9);
        assert!(d9 >= Duration::from_millis(350) && d9 <= Duration::from_millis(438));
    }
}
