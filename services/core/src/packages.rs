//! Content-addressed storage of built packages under the data directory:
//! `<data dir>/packages/sha256/<hex>.tar.gz`. Writing the same content twice
//! is a no-op; a reader always gets complete files (write, then rename).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PackageStoreError {
    #[error("package store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a sha256 digest (sha256:<64 hex>)")]
    BadDigest(String),
    #[error("package {digest} is not in the package store at {path}")]
    Missing { digest: String, path: String },
    #[error("package {expected} in the store is corrupt (its content hashes to {actual})")]
    Corrupt { expected: String, actual: String },
}

#[derive(Debug, Clone)]
pub struct PackageStore {
    root: PathBuf,
}

impl PackageStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("packages").join("sha256"),
        }
    }

    fn path_of(&self, digest: &str) -> Result<PathBuf, PackageStoreError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| PackageStoreError::BadDigest(digest.to_owned()))?;
        Ok(self.root.join(format!("{hex}.tar.gz")))
    }

    /// Stores `bytes`; returns its digest and where it lives.
    pub fn put(&self, bytes: &[u8]) -> Result<(String, PathBuf), PackageStoreError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = self.path_of(&digest)?;
        let io = |source| PackageStoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            std::fs::create_dir_all(&self.root).map_err(io)?;
            let tmp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
            std::fs::write(&tmp, bytes).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        // An absolute location means the same thing to every reader.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Ok((digest, path))
    }

    /// The package with this digest, verified.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, PackageStoreError> {
        let path = self.path_of(digest)?;
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PackageStoreError::Missing {
                digest: digest.to_owned(),
                path: path.display().to_string(),
            },
            _ => PackageStoreError::Io {
                path: path.display().to_string(),
                source: e,
            },
        })?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(PackageStoreError::Corrupt {
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_by_content_and_verifies_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::new(dir.path());
        let (digest, path) = store.put(b"package").unwrap();
        assert!(path.ends_with(format!("{}.tar.gz", &digest[7..])));
        assert_eq!(
            store.put(b"package").unwrap().0,
            digest,
            "same content, same place"
        );
        assert_eq!(store.get(&digest).unwrap(), b"package");
        std::fs::write(&path, b"tampered").unwrap();
        assert!(matches!(
            store.get(&digest),
            Err(PackageStoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.get("sha256:00"),
            Err(PackageStoreError::BadDigest(_))
        ));
        let missing = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            store.get(&missing),
            Err(PackageStoreError::Missing { .. })
        ));
    }
}
