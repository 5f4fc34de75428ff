//! The local record of a multipart upload in progress, which `--resume` continues.
//!
//! One JSON file per destination, in `$XDG_STATE_HOME/diskconv/s3/` (else
//! `~/.local/state/diskconv/s3/`), named after the SHA-256 of the endpoint, bucket and key. It
//! holds the upload id, the part size, what the artifact is made of (format and options, the
//! source's size) and every finished part (number, size, SHA-256, ETag); no credential. It is
//! rewritten (temporary file and rename) after each finished part and removed when the upload
//! is completed or aborted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sigv4::hex;
use crate::error::{Error, Result};

/// One finished part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// Part number (from 1).
    pub number: u32,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// The ETag the store returned.
    pub etag: String,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The store's endpoint.
    pub endpoint: String,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// The upload id.
    pub upload_id: String,
    /// Bytes of every part but the last.
    pub part_size: u64,
    /// What is uploaded: the format and its options, so that a resume producing another
    /// artifact is refused.
    pub artifact: String,
    /// Finished parts, in any order.
    pub parts: Vec<PartRecord>,
}

/// The folder of the records.
pub fn record_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&d).join("diskconv/s3");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    Path::new(&home).join(".local/state/diskconv/s3")
}

/// The record file of an upload to `bucket/key` at `endpoint`.
pub fn record_path(endpoint: &str, bucket: &str, key: &str) -> PathBuf {
    let h = Sha256::digest(format!("{endpoint}\n{bucket}\n{key}").as_bytes());
    record_dir().join(format!("{}.json", &hex(&h)[..32]))
}

impl UploadRecord {
    /// Reads the record at `path`; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<UploadRecord>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading the upload record", e).in_file(path)),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            Error::InvalidFormat(format!(
                "the upload record is damaged ({e}); remove it to start the upload anew"
            ))
            .in_file(path)
        })
    }

    /// Writes the record to `path` (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("creating the folder of upload records", e).in_file(dir))?;
        }
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Internal(format!("serialising the upload record: {e}")))?;
        crate::files::write_atomically(path, &bytes, "the upload record")
    }
}

/// Removes the record at `path` (nothing when there is none).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}
