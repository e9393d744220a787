//! OCI image layouts on disk (`oci:<dir>`): `oci-layout`, `index.json` with
//! `org.opencontainers.image.ref.name` annotations, `blobs/<alg>/<hex>`.
//! Readable by `skopeo ... oci:<dir>:<tag>` and usable as a parent image.
//!
//! Blobs are written to a temporary file in the layout and renamed into
//! place after their digest is checked; `index.json` is replaced atomically
//! and last, so a reader never sees a tag whose blobs are missing. One writer
//! per layout at a time.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::manifest::{Descriptor, ImageIndex, ANNOTATION_REF_NAME, OCI_INDEX};

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const LAYOUT_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// An OCI image layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout (its `oci-layout` file must be there).
    pub fn open(dir: &Path) -> Result<OciLayout> {
        let marker = dir.join(LAYOUT_FILE);
        let text = std::fs::read_to_string(&marker).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::layout(
                    dir,
                    "no oci-layout file: this is not an OCI image layout (write one with \
                     `skopeo copy ... oci:<dir>:<tag>` or use it as a target first)",
                )
            } else {
                ImageError::io("cannot read", &marker, e)
            }
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ImageError::layout(dir, format!("oci-layout is not JSON: {e}")))?;
        if v.get("imageLayoutVersion")
            .and_then(|x| x.as_str())
            .is_none()
        {
            return Err(ImageError::layout(
                dir,
                "oci-layout has no imageLayoutVersion",
            ));
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens a layout, creating it (directories, `oci-layout`, an empty
    /// `index.json`) when missing. A non-empty directory that is not a
    /// layout is refused.
    pub fn create(dir: &Path) -> Result<OciLayout> {
        if dir.join(LAYOUT_FILE).exists() {
            return OciLayout::open(dir);
        }
        if let Ok(mut entries) = std::fs::read_dir(dir) {
            if entries.next().is_some() {
                return Err(ImageError::layout(
                    dir,
                    "the directory exists, is not empty and has no oci-layout file; choose an \
                     empty or new directory",
                ));
            }
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| ImageError::io("cannot create", &blobs, e))?;
        let layout = OciLayout {
            dir: dir.to_path_buf(),
        };
        layout.write_atomic(INDEX_FILE, &index_bytes(&empty_index())?)?;
        layout.write_atomic(LAYOUT_FILE, LAYOUT_CONTENT.as_bytes())?;
        Ok(layout)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `blobs/<alg>/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm_name())
            .join(digest.hex())
    }

    /// Whether the blob is there with the right size.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Reads a blob (at most `limit` bytes) and checks its digest.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        let path = self.blob_path(digest);
        let meta = std::fs::metadata(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::layout(
                    &self.dir,
                    format!("blob {digest} is missing; the layout is incomplete"),
                )
            } else {
                ImageError::io("cannot read", &path, e)
            }
        })?;
        if meta.len() > limit {
            return Err(ImageError::layout(
                &self.dir,
                format!(
                    "blob {digest} is {} bytes, over the {limit} limit",
                    meta.len()
                ),
            ));
        }
        let data = std::fs::read(&path).map_err(|e| ImageError::io("cannot read", &path, e))?;
        if !digest.matches(&data) {
            let mut h = digest.hasher();
            h.update(&data);
            return Err(ImageError::DigestMismatch {
                what: format!("blob file {}", path.display()),
                expected: digest.clone(),
                actual: h.finish(),
            });
        }
        Ok(Bytes::from(data))
    }

    /// Writes a blob after checking its digest (no-op when present).
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        if !digest.matches(data) {
            return Err(ImageError::DigestMismatch {
                what: "blob written to the layout".into(),
                expected: digest.clone(),
                actual: Digest::sha256(data),
            });
        }
        if self.has_blob(digest, data.len() as u64) {
            return Ok(());
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(data)
            .map_err(|e| ImageError::io("cannot write", tmp.path(), e))?;
        self.commit_blob(tmp, digest)
    }

    /// A temporary file inside the layout (same file system as the blobs).
    pub(crate) fn temp_file(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".gantry-tmp-")
            .tempfile_in(&self.dir)
            .map_err(|e| ImageError::io("cannot create a temporary file in", &self.dir, e))
    }

    /// Moves a fully written (and verified) temporary file to the blob's path.
    pub(crate) fn commit_blob(&self, tmp: NamedTempFile, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ImageError::io("cannot create", parent, e))?;
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("cannot sync", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| ImageError::io("cannot move a blob into", &path, e.error))?;
        Ok(())
    }

    /// Copies a blob from another layout, checking its digest and size.
    pub(crate) fn copy_blob_from(&self, src: &OciLayout, desc: &Descriptor) -> Result<u64> {
        let from = src.blob_path(&desc.digest);
        let mut input =
            std::fs::File::open(&from).map_err(|e| ImageError::io("cannot open", &from, e))?;
        let mut tmp = self.temp_file()?;
        let mut hasher = desc.digest.hasher();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| ImageError::io("cannot read", &from, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| ImageError::io("cannot write", tmp.path(), e))?;
        }
        let len = hasher.len();
        if len != desc.size {
            return Err(ImageError::SizeMismatch {
                what: format!("blob file {}", from.display()),
                expected: desc.size,
                actual: len,
            });
        }
        let got = hasher.finish();
        if got != desc.digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob file {}", from.display()),
                expected: desc.digest.clone(),
                actual: got,
            });
        }
        self.commit_blob(tmp, &desc.digest)?;
        Ok(len)
    }

    /// `index.json` (an empty index when the file is missing).
    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.dir.join(INDEX_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::layout(&self.dir, format!("index.json is invalid: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(empty_index()),
            Err(e) => Err(ImageError::io("cannot read", &path, e)),
        }
    }

    /// The descriptor tagged `tag`; without a tag, the only one there is.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let names: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| ref_name(d).map(str::to_owned))
            .collect();
        match tag {
            Some(t) => index
                .manifests
                .into_iter()
                .find(|d| ref_name(d) == Some(t))
                .ok_or_else(|| ImageError::NotFound {
                    what: "image",
                    reference: format!("oci:{}:{t}", self.dir.display()),
                    location: "the OCI layout".into(),
                    hint: format!(
                        "the layout's index.json has no entry named {t:?} (it has: {}); fix the \
                         tag in image.base",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                }),
            None => {
                let mut all = index.manifests;
                if all.len() == 1 {
                    Ok(all.remove(0))
                } else {
                    Err(ImageError::layout(
                        &self.dir,
                        format!(
                            "it holds {} images; name one as oci:<dir>:<tag> (tags: {})",
                            all.len(),
                            names.join(", ")
                        ),
                    ))
                }
            }
        }
    }

    /// Points `tag` at `desc` in `index.json` (replacing an entry with the
    /// same name), atomically. The blobs must already be there.
    pub fn set_tag(&self, tag: &str, mut desc: Descriptor) -> Result<()> {
        let mut index = self.index()?;
        index.manifests.retain(|d| ref_name(d) != Some(tag));
        desc.annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_REF_NAME.to_owned(), tag.to_owned());
        index.manifests.push(desc);
        if index.media_type.is_none() {
            index.media_type = Some(OCI_INDEX.to_owned());
        }
        self.write_atomic(INDEX_FILE, &index_bytes(&index)?)
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let mut tmp = self.temp_file()?;
        tmp.write_all(data)
            .map_err(|e| ImageError::io("cannot write", tmp.path(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("cannot sync", tmp.path(), e))?;
        let path = self.dir.join(name);
        tmp.persist(&path)
            .map_err(|e| ImageError::io("cannot replace", &path, e.error))?;
        Ok(())
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

fn empty_index() -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_owned()),
        manifests: Vec::new(),
        annotations: None,
    }
}

fn index_bytes(index: &ImageIndex) -> Result<Vec<u8>> {
    serde_json::to_vec(index)
        .map_err(|e| ImageError::Task(format!("cannot encode index.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::OCI_MANIFEST;

    #[test]
    fn create_write_tag_find() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lay");
        let l = OciLayout::create(&dir).unwrap();
        let data = b"hello";
        let d = Digest::sha256(data);
        l.write_blob(&d, data).unwrap();
        assert!(l.has_blob(&d, 5));
        assert_eq!(&l.read_blob(&d, 100).unwrap()[..], data);
        assert!(l.write_blob(&Digest::sha256(b"other"), data).is_err());
        let desc = Descriptor::new(OCI_MANIFEST, d.clone(), 5);
        l.set_tag("a", desc.clone()).unwrap();
        l.set_tag("b", desc.clone()).unwrap();
        l.set_tag("a", desc).unwrap();
        let idx = l.index().unwrap();
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(l.find(Some("b")).unwrap().digest, d);
        assert!(l.find(None).is_err());
        let e = l.find(Some("zzz")).unwrap_err().to_string();
        assert!(e.contains("zzz") && e.contains("b, a"), "{e}");
        // Reopen; corrupt a blob: reading it fails.
        let l2 = OciLayout::open(&dir).unwrap();
        std::fs::write(l2.blob_path(&d), b"HELLO").unwrap();
        assert!(matches!(
            l2.read_blob(&d, 100),
            Err(ImageError::DigestMismatch { .. })
        ));
        // Not a layout.
        std::fs::write(tmp.path().join("x"), b"").unwrap();
        assert!(OciLayout::create(tmp.path()).is_err());
        assert!(OciLayout::open(tmp.path()).is_err());
    }
}
