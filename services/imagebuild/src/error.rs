//! Errors. Each says what went wrong, where (registry, repository, image
//! reference or file) and what to do about it. None carries a credential:
//! request URLs are reduced to their path, and reqwest errors lose their URL.

use std::path::PathBuf;

use crate::digest::Digest;

/// Why an image could not be resolved, assembled or pushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An image reference (`image.base`, `image.repository`) does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// Bad input to the build (package paths, commit, stage name ...).
    #[error("invalid image build input: {0}")]
    InvalidInput(String),

    /// HTTP 401: no credentials, or the registry rejected them.
    #[error("registry {registry} answered 401 Unauthorized for {action} on {repository}: {hint}")]
    Unauthorized {
        registry: String,
        repository: String,
        action: String,
        hint: String,
    },

    /// HTTP 403: authenticated, but not allowed.
    #[error(
        "registry {registry} answered 403 Forbidden for {action} on {repository}: the account \
         is known but may not {action} there; grant it access or use another account"
    )]
    Forbidden {
        registry: String,
        repository: String,
        action: String,
    },

    /// HTTP 404 for a manifest (an image reference) or a blob.
    #[error("{what} {reference} not found in {location}: {hint}")]
    NotFound {
        what: &'static str,
        reference: String,
        /// `registry <host> (HTTP 404)` or `the OCI layout`.
        location: String,
        hint: String,
    },

    /// Downloaded or uploaded content does not hash to its digest.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the content was \
         corrupted in transit or the source changed; nothing was pushed with it"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    /// Content has a different size than its descriptor says.
    #[error("size mismatch for {what}: the descriptor says {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    /// Any other unexpected HTTP status (after retries, when retryable).
    #[error(
        "registry {registry} answered {method} {path} with HTTP {status} after {attempts} \
         attempt(s): {message}"
    )]
    Registry {
        registry: String,
        method: String,
        path: String,
        status: u16,
        attempts: u32,
        message: String,
    },

    /// The registry could not be reached (after retries).
    #[error(
        "cannot reach registry {registry} at {url} after {attempts} attempt(s): {}; check \
         that the address is right and the registry is up (plain-HTTP registries off loopback \
         need image.insecure: true)",
        chain(source)
    )]
    Connection {
        registry: String,
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },

    /// A transfer broke off mid-body (retried as a whole; this is the last failure).
    #[error("transfer of {what} from {registry} broke off: {}", chain(source))]
    Transfer {
        registry: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },

    /// The index has no manifest for the wanted platform.
    #[error(
        "{reference} has no image for platform {platform} (it has: {available}); choose one of \
         those platforms or another parent image"
    )]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },

    /// A manifest of a kind Gantry cannot build on.
    #[error("{reference} is a {media_type:?} manifest, which Gantry cannot use: {hint}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
        hint: String,
    },

    /// The registry named a Bearer token service on plain HTTP: the
    /// credentials would cross the network in clear, so they are not sent.
    #[error(
        "registry {registry} wants its credentials sent to the token service {realm} over plain \
         HTTP; Gantry sends registry credentials to a token service only over HTTPS (or when the \
         registry is on loopback, or the pipeline sets image.insecure: true); configure the \
         registry's token realm with an https:// URL"
    )]
    InsecureRealm { registry: String, realm: String },

    /// A manifest, index, config or answer that does not parse.
    #[error("malformed {what} from {origin}: {reason}")]
    Malformed {
        what: String,
        origin: String,
        reason: String,
    },

    /// An OCI image layout on disk is missing pieces or inconsistent.
    #[error("OCI layout {}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },

    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Credentials could not be read (a docker config.json, ...).
    #[error("credentials: {0}")]
    Credentials(String),

    /// A blob was not present after its upload: the manifest was not pushed.
    #[error(
        "blob {digest} is not present in {repository} after upload; the manifest was not \
         pushed, so nothing half-pushed is visible; retry the build"
    )]
    BlobMissing { repository: String, digest: Digest },

    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),

    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl ImageError {
    /// Whether trying the same operation again may succeed (5xx, 429,
    /// connection and transfer errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            ImageError::Registry { status, .. } => *status >= 500 || *status == 429,
            ImageError::Connection { .. } | ImageError::Transfer { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status behind the error, if there is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ImageError::Unauthorized { .. } => Some(401),
            ImageError::Forbidden { .. } => Some(403),
            ImageError::NotFound { .. } => Some(404),
            ImageError::Registry { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn layout(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ImageError::Layout {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// An error and its causes, `a: b: c`, without repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Result alias.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
