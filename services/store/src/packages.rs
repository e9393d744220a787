//! Content-addressed storage of built packages, one type over two places:
//!
//! - **local** (embedded mode): `<data dir>/packages/sha256/<hex>.tar.gz`,
//!   written then renamed, so a reader always gets complete files;
//! - **NATS** (distributed mode): the JetStream object store bucket
//!   `GANTRY_PACKAGES_BUCKET`, object `sha256-<hex>`, so envgen, imagebuild
//!   and the API need no shared disk.
//!
//! Either way a package is named by its digest only, writing the same
//! content twice is a no-op, and every read is verified against the digest
//! (a store cannot hand out other bytes than those the digest names).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub mod retention;

/// Default bucket of the NATS package store (`GANTRY_PACKAGES_BUCKET`).
pub const DEFAULT_BUCKET: &str = "GANTRY_PACKAGES";

/// How long one object-store call may take before it counts as unavailable
/// (a 10 MB package takes well under a second on loopback).
const NATS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PackageStoreError {
    #[error("package store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a sha256 digest (sha256:<64 hex>)")]
    BadDigest(String),
    #[error("package {digest} is not in the package store at {place}")]
    Missing { digest: String, place: String },
    #[error("package {expected} in the store is corrupt (its content hashes to {actual})")]
    Corrupt { expected: String, actual: String },
    /// NATS did not answer or refused: worth retrying later.
    #[error("package store {place}: {message}")]
    Unavailable { place: String, message: String },
}

impl PackageStoreError {
    /// Whether trying again later may succeed (NATS down, a timeout), as
    /// opposed to a package that is missing or corrupt.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Io { .. })
    }
}

/// The NATS package store's settings (`GANTRY_PACKAGES_BUCKET`,
/// `GANTRY_NATS_REPLICAS`, `GANTRY_PACKAGES_MAX_BYTES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSettings {
    pub bucket: String,
    /// Replicas of the bucket's stream when it is created (1 on a single server).
    pub replicas: usize,
    /// Upper bound of the bucket in bytes; `None`: unlimited. A full bucket
    /// refuses new packages rather than dropping old ones.
    pub max_bytes: Option<u64>,
}

impl Default for BucketSettings {
    fn default() -> Self {
        Self {
            bucket: DEFAULT_BUCKET.into(),
            replicas: 1,
            max_bytes: None,
        }
    }
}

/// A stored package, as `put` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPackage {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    /// Where it lives, for humans: an absolute path in embedded mode,
    /// `nats-object://<bucket>/<object>` in distributed mode (never a path
    /// on one machine's disk).
    pub location: String,
}

/// A package present in the store, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPackage {
    pub digest: String,
    pub size: u64,
    /// When it was written (file time or object modification time).
    pub modified: Option<DateTime<Utc>>,
}

/// The package store of a process (see the module documentation).
#[derive(Clone)]
pub struct PackageStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    Nats {
        bucket: String,
        // Boxed: the handle carries the bucket stream's cached info (~1 KB).
        store: Box<object_store::ObjectStore>,
    },
}

impl std::fmt::Debug for PackageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageStore")
            .field("place", &self.place())
            .finish()
    }
}

/// `sha256:<hex>` → `<hex>`, refusing anything else (the digest names files
/// and objects, so it must not carry path or subject syntax).
fn hex_of(digest: &str) -> Result<&str, PackageStoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| PackageStoreError::BadDigest(digest.to_owned()))
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The object name of a digest in the bucket: `sha256-<hex>`.
pub fn object_name(digest: &str) -> Result<String, PackageStoreError> {
    Ok(format!("sha256-{}", hex_of(digest)?))
}

fn verify(digest: &str, bytes: Vec<u8>) -> Result<Vec<u8>, PackageStoreError> {
    let actual = digest_of(&bytes);
    if actual != digest {
        return Err(PackageStoreError::Corrupt {
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}

impl PackageStore {
    /// The local store under `data_dir` (embedded mode).
    pub fn local(data_dir: &Path) -> Self {
        Self {
            backend: Backend::Local(data_dir.join("packages").join("sha256")),
        }
    }

    /// The bucket on NATS, created if absent (file storage, the configured
    /// replicas and limit). An existing bucket keeps its settings.
    pub async fn nats(
        js: &jetstream::Context,
        settings: &BucketSettings,
    ) -> Result<Self, PackageStoreError> {
        let bucket = settings.bucket.clone();
        let unavailable = |message: String| PackageStoreError::Unavailable {
            place: format!("nats-object://{bucket}"),
            message,
        };
        let store = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(get) => {
                let config = object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("Gantry packages, named by sha256".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: settings.replicas.max(1),
                    max_bytes: settings
                        .max_bytes
                        .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
                        .unwrap_or(-1),
                    ..Default::default()
                };
                match js.create_object_store(config).await {
                    Ok(store) => store,
                    // Another process may have created it meanwhile.
                    Err(create) => js.get_object_store(&bucket).await.map_err(|_| {
                        unavailable(format!(
                            "cannot open the bucket ({get}) nor create it ({create})"
                        ))
                    })?,
                }
            }
        };
        Ok(Self {
            backend: Backend::Nats {
                bucket,
                store: Box::new(store),
            },
        })
    }

    /// Where packages live: a directory, or `nats-object://<bucket>`.
    pub fn place(&self) -> String {
        match &self.backend {
            Backend::Local(root) => root.display().to_string(),
            Backend::Nats { bucket, .. } => format!("nats-object://{bucket}"),
        }
    }

    /// `local` or `nats`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Local(_) => "local",
            Backend::Nats { .. } => "nats",
        }
    }

    fn local_path(root: &Path, digest: &str) -> Result<PathBuf, PackageStoreError> {
        Ok(root.join(format!("{}.tar.gz", hex_of(digest)?)))
    }

    fn nats_error(&self, e: impl std::fmt::Display) -> PackageStoreError {
        PackageStoreError::Unavailable {
            place: self.place(),
            message: e.to_string(),
        }
    }

    /// Stores `bytes` under their digest; storing what is there already
    /// writes nothing.
    pub async fn put(&self, bytes: &[u8]) -> Result<StoredPackage, PackageStoreError> {
        let digest = digest_of(bytes);
        let size = bytes.len() as u64;
        match &self.backend {
            Backend::Local(root) => {
                let path = Self::local_path(root, &digest)?;
                let root = root.clone();
                let bytes = bytes.to_vec();
                let written = tokio::task::spawn_blocking(move || {
                    let io = |source| PackageStoreError::Io {
                        path: path.display().to_string(),
                        source,
                    };
                    if !path.exists() {
                        std::fs::create_dir_all(&root).map_err(io)?;
                        let tmp =
                            path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
                        std::fs::write(&tmp, &bytes).map_err(io)?;
                        std::fs::rename(&tmp, &path).map_err(io)?;
                    }
                    // An absolute location means the same thing to every reader.
                    Ok::<_, PackageStoreError>(std::fs::canonicalize(&path).unwrap_or(path))
                })
                .await
                .map_err(|e| PackageStoreError::Io {
                    path: root_display(&self.backend),
                    source: std::io::Error::other(e.to_string()),
                })??;
                Ok(StoredPackage {
                    digest,
                    size,
                    location: written.display().to_string(),
                })
            }
            Backend::Nats { bucket, store } => {
                let name = object_name(&digest)?;
                let location = format!("nats-object://{bucket}/{name}");
                // Content-addressed: an object of this name and size is this
                // package (reads verify it), so it is not written again.
                match timeout(store.info(&name)).await {
                    Ok(Ok(info)) if !info.deleted && info.size as u64 == size => {
                        return Ok(StoredPackage {
                            digest,
                            size,
                            location,
                        })
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.kind() == object_store::InfoErrorKind::NotFound => {}
                    Ok(Err(e)) => return Err(self.nats_error(e)),
                    Err(e) => return Err(self.nats_error(e)),
                }
                let mut reader = bytes;
                timeout(store.put(name.as_str(), &mut reader))
                    .await
                    .map_err(|e| self.nats_error(e))?
                    .map_err(|e| self.nats_error(e))?;
                Ok(StoredPackage {
                    digest,
                    size,
                    location,
                })
            }
        }
    }

    /// The package with this digest, verified against it.
    pub async fn get(&self, digest: &str) -> Result<Vec<u8>, PackageStoreError> {
        match &self.backend {
            Backend::Local(root) => {
                let path = Self::local_path(root, digest)?;
                let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => PackageStoreError::Missing {
                        digest: digest.to_owned(),
                        place: self.place(),
                    },
                    _ => PackageStoreError::Io {
                        path: path.display().to_string(),
                        source: e,
                    },
                })?;
                verify(digest, bytes)
            }
            Backend::Nats { store, .. } => {
                let name = object_name(digest)?;
                let store = (**store).clone();
                // async-nats' object reader unwraps a failed consumer
                // creation inside its poll; a task turns such a panic into
                // an error instead of taking the service down.
                let read = tokio::spawn(async move {
                    let mut object = match store.get(&name).await {
                        Ok(o) => o,
                        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                            return Err(ReadFailure::Missing)
                        }
                        Err(e) => return Err(ReadFailure::Other(e.to_string())),
                    };
                    let mut bytes = Vec::with_capacity(object.info.size);
                    object.read_to_end(&mut bytes).await.map_err(|e| {
                        // NATS' own chunk digest failing means the object
                        // is damaged, not that NATS is away.
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            ReadFailure::Corrupt
                        } else {
                            ReadFailure::Other(e.to_string())
                        }
                    })?;
                    Ok(bytes)
                });
                let bytes = match timeout(read).await {
                    Err(e) => return Err(self.nats_error(e)),
                    Ok(Err(joined)) => {
                        return Err(self.nats_error(format!("reading the object failed: {joined}")))
                    }
                    Ok(Ok(Err(ReadFailure::Missing))) => {
                        return Err(PackageStoreError::Missing {
                            digest: digest.to_owned(),
                            place: self.place(),
                        })
                    }
                    Ok(Ok(Err(ReadFailure::Corrupt))) => {
                        return Err(PackageStoreError::Corrupt {
                            expected: digest.to_owned(),
                            actual:
                                "something else (its chunks do not match the object's checksum)"
                                    .into(),
                        })
                    }
                    Ok(Ok(Err(ReadFailure::Other(e)))) => return Err(self.nats_error(e)),
                    Ok(Ok(Ok(bytes))) => bytes,
                };
                verify(digest, bytes)
            }
        }
    }

    /// Every package in the store.
    pub async fn list(&self) -> Result<Vec<ListedPackage>, PackageStoreError> {
        match &self.backend {
            Backend::Local(root) => {
                let mut out = Vec::new();
                let mut dir = match tokio::fs::read_dir(root).await {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => {
                        return Err(PackageStoreError::Io {
                            path: root.display().to_string(),
                            source: e,
                        })
                    }
                };
                let io = |source| PackageStoreError::Io {
                    path: root.display().to_string(),
                    source,
                };
                while let Some(entry) = dir.next_entry().await.map_err(io)? {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(hex) = name.strip_suffix(".tar.gz") else {
                        continue; // temporaries of a write in progress
                    };
                    let digest = format!("sha256:{hex}");
                    if hex_of(&digest).is_err() {
                        continue;
                    }
                    let meta = entry.metadata().await.map_err(io)?;
                    out.push(ListedPackage {
                        digest,
                        size: meta.len(),
                        modified: meta.modified().ok().map(DateTime::<Utc>::from),
                    });
                }
                Ok(out)
            }
            Backend::Nats { store, .. } => {
                use futures::TryStreamExt;
                let list = timeout(store.list())
                    .await
                    .map_err(|e| self.nats_error(e))?
                    .map_err(|e| self.nats_error(e))?;
                let infos: Vec<object_store::ObjectInfo> = timeout(list.try_collect())
                    .await
                    .map_err(|e| self.nats_error(e))?
                    .map_err(|e| self.nats_error(e))?;
                Ok(infos
                    .into_iter()
                    .filter(|i| !i.deleted)
                    .filter_map(|i| {
                        let hex = i.name.strip_prefix("sha256-")?;
                        let digest = format!("sha256:{hex}");
                        hex_of(&digest).ok()?;
                        Some(ListedPackage {
                            digest,
                            size: i.size as u64,
                            modified: i.modified.and_then(|m| {
                                DateTime::<Utc>::from_timestamp(m.unix_timestamp(), m.nanosecond())
                            }),
                        })
                    })
                    .collect())
            }
        }
    }

    /// Removes a package; removing one that is not there is not an error.
    pub async fn delete(&self, digest: &str) -> Result<(), PackageStoreError> {
        match &self.backend {
            Backend::Local(root) => {
                let path = Self::local_path(root, digest)?;
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(PackageStoreError::Io {
                        path: path.display().to_string(),
                        source: e,
                    }),
                }
            }
            Backend::Nats { store, .. } => {
                let name = object_name(digest)?;
                match timeout(store.delete(&name)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
                    Ok(Err(e)) => Err(self.nats_error(e)),
                    Err(e) => Err(self.nats_error(e)),
                }
            }
        }
    }
}

/// Why reading an object failed, from inside the reading task.
enum ReadFailure {
    Missing,
    Corrupt,
    Other(String),
}

fn root_display(backend: &Backend) -> String {
    match backend {
        Backend::Local(root) => root.display().to_string(),
        Backend::Nats { bucket, .. } => format!("nats-object://{bucket}"),
    }
}

async fn timeout<F: std::future::IntoFuture>(f: F) -> Result<F::Output, String> {
    tokio::time::timeout(NATS_TIMEOUT, f.into_future())
        .await
        .map_err(|_| format!("no answer from NATS within {}s", NATS_TIMEOUT.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_stores_by_content_and_verifies_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::local(dir.path());
        let stored = store.put(b"package").await.unwrap();
        let path = PathBuf::from(&stored.location);
        assert!(path.ends_with(format!("{}.tar.gz", &stored.digest[7..])));
        assert_eq!(stored.size, 7);
        assert_eq!(
            store.put(b"package").await.unwrap(),
            stored,
            "same content, same place"
        );
        assert_eq!(store.get(&stored.digest).await.unwrap(), b"package");
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].digest, stored.digest);
        std::fs::write(&path, b"tampered").unwrap();
        let err = store.get(&stored.digest).await.unwrap_err();
        assert!(matches!(err, PackageStoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&stored.digest), "{err}");
        assert!(matches!(
            store.get("sha256:00").await,
            Err(PackageStoreError::BadDigest(_))
        ));
        let missing = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            store.get(&missing).await,
            Err(PackageStoreError::Missing { .. })
        ));
        store.delete(&stored.digest).await.unwrap();
        store.delete(&stored.digest).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
    }

    #[test]
    fn object_names_are_the_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            object_name(&d).unwrap(),
            format!("sha256-{}", "ab".repeat(32))
        );
        assert!(object_name("sha256:../../x").is_err());
        assert!(object_name(&format!("sha512:{}", "ab".repeat(32))).is_err());
    }
}
