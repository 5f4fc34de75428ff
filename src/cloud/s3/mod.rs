//! Streaming upload of a conversion's output into an S3-protocol object store (AWS S3, Alibaba
//! OSS, Huawei OBS, Google Cloud Storage's XML API, MinIO, Ceph), and the verification of an
//! uploaded object against its source.
//!
//! [`convert_to_s3`] converts an image into `s3://bucket/key` in one pass: the artifact is cut
//! into parts as it is produced and the parts are sent on worker threads (a multipart upload,
//! memory bounded whatever the disk size: see [`upload`]). Formats that write in order (raw,
//! streamOptimized VMDK, OVA) go straight into the upload; the others (qcow2, VHD, VHDX, VDI
//! and the other VMDK subformats fill in tables after the data) are written to a local scratch
//! file in the system's temporary folder first and uploaded from it when finished.
//!
//! Nothing appears under the key unless the whole artifact was produced: a failed or cancelled
//! conversion aborts the multipart upload. When the parts are all sent, they are checked
//! against the bucket (`ListParts`: number, size, ETag), the upload is completed, and the
//! artifact's SHA-256 is stored in the object's metadata (`x-amz-meta-sha256`) by copying the
//! object onto itself with the metadata replaced (`CopyObject`, or `UploadPartCopy` parts for
//! objects over 5 GiB); `HeadObject` then checks size and metadata.
//!
//! A killed run leaves its upload and a local record of it ([`record`]); `resume` continues
//! it: the parts in the bucket are checked against the record with `ListParts`, the artifact is
//! produced again, and the bytes of each part already there are hashed and compared with the
//! record instead of being sent (a source changed in between is an error).

pub mod client;
pub mod credentials;
pub mod reader;
pub mod record;
pub mod sigv4;
pub mod upload;

use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use client::S3Client;
pub use credentials::{Credentials, S3Config, S3ConfigOptions};
pub use reader::S3Storage;

use crate::convert::{ConvertOptions, ConvertStats, ProgressFn, convert_to_sink};
use crate::error::{Error, Result};
use crate::formats::registry;
use crate::image::ImageReader;
use crate::output::{OutputOptions, create_writer};
use crate::verify::VerifyReport;
use upload::{MAX_PART, Mode, Outcome, S3Sink, UploadParams};

/// An object's address, `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3Url {
    /// Bucket name.
    pub bucket: String,
    /// Object key (not empty).
    pub key: String,
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Whether `path` names an S3 object (`s3://...`).
pub fn is_s3_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with("s3://"))
}

impl S3Url {
    /// Parses `s3://bucket/key`: a bucket name of 3 to 63 lower-case letters, digits, dots and
    /// hyphens, and a key that is not empty.
    pub fn parse(s: &str) -> Result<S3Url> {
        let bad = |why: &str| {
            Err(Error::InvalidArgument(format!(
                "'{s}' is not an S3 object URL: {why} (expected s3://BUCKET/KEY)"
            )))
        };
        let Some(rest) = s.strip_prefix("s3://") else {
            return bad("it must start with s3://");
        };
        let Some((bucket, key)) = rest.split_once('/') else {
            return bad("no key after the bucket");
        };
        if key.is_empty() {
            return bad("the key is empty");
        }
        if key.len() > 1024 {
            return bad("the key is longer than 1024 bytes");
        }
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            || !bucket.as_bytes()[0].is_ascii_alphanumeric()
            || !bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric()
        {
            return bad(
                "the bucket name must be 3 to 63 lower-case letters, digits, dots and hyphens, \
                 starting and ending with a letter or digit",
            );
        }
        if key.chars().any(|c| c.is_control()) {
            return bad("the key holds control characters");
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadReport {
    /// The object.
    pub url: S3Url,
    /// Its size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the artifact, stored as the object's `sha256` metadata.
    pub sha256: String,
    /// Parts of the upload.
    pub parts: u32,
    /// Parts sent by this run.
    pub parts_sent: u32,
    /// Parts of an interrupted run found in the bucket and reused (hashed, not sent).
    pub parts_reused: u32,
    /// Bytes per part (the last may be smaller).
    pub part_size: u64,
    /// Whether an interrupted upload was continued.
    pub resumed: bool,
    /// Notes for the user (resume, leftovers aborted).
    pub notes: Vec<String>,
    /// Where the upload was recorded while it ran (removed now).
    #[serde(skip)]
    pub record: std::path::PathBuf,
}

/// How to upload.
#[derive(Debug, Clone)]
pub struct S3UploadOptions {
    /// Continue the recorded upload of an interrupted run (`--resume`).
    pub resume: bool,
    /// Upload threads (parts sent at once).
    pub workers: usize,
    /// Objects up to this size get their metadata with one `CopyObject`, larger ones through
    /// `UploadPartCopy` parts of this size (S3's limit, 5 GiB; smaller only for tests).
    pub copy_limit: u64,
}

impl Default for S3UploadOptions {
    fn default() -> Self {
        S3UploadOptions {
            resume: false,
            workers: 4,
            copy_limit: MAX_PART,
        }
    }
}

/// Converts `src` into the object `url` in the format `opts` names (see the module
/// documentation). The bucket is checked (`HeadBucket`: it exists, the credentials reach it)
/// before the source is read.
pub fn convert_to_s3(
    src: &dyn ImageReader,
    url: &S3Url,
    config: S3Config,
    opts: &OutputOptions,
    upload_opts: &S3UploadOptions,
    convert_opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<(ConvertStats, UploadReport)> {
    registry::check_writable(opts.format)?;
    opts.validate()?;
    let size = src.virtual_size();
    let client = Arc::new(S3Client::new(config, &url.bucket)?);
    client.check_bucket()?;
    let stream = registry::writes_in_order(opts);
    // Streamed artifacts are at most the disk plus a little (VMDK markers and tables, the OVA's
    // tar headers); the others are measured before the upload starts.
    let estimate = size + size / 64 + (64 << 20);
    let params = UploadParams {
        client,
        url: url.clone(),
        artifact: format!("{opts:?}; source {size} bytes"),
        estimate,
        resume: upload_opts.resume,
        workers: upload_opts.workers,
    };
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let sink = S3Sink::new(
        params,
        if stream {
            Mode::Stream
        } else {
            Mode::ViaScratch
        },
        upload_opts.copy_limit,
        outcome.clone(),
    );
    let r = convert_to_sink(
        src,
        Box::new(sink),
        |s| create_writer(s, size, opts),
        convert_opts,
        progress,
    );
    let mut o = outcome.lock().unwrap_or_else(|p| p.into_inner());
    match r {
        Ok(stats) => {
            let report = o.report.take().ok_or_else(|| {
                Error::Internal(format!("the upload to {url} finished without a report"))
            })?;
            Ok((stats, report))
        }
        Err(e) => {
            // The upload threads' own error (its kind as it was) rather than the writer's view
            // of it; a cancellation stays one.
            let e = match (e, o.failure.take()) {
                (Error::Cancelled, _) => Error::Cancelled,
                (_, Some(f)) => f,
                (e, None) => e,
            };
            match o.abort_error.take() {
                Some(a) => Err(Error::io(
                    format!(
                        "{}; and the multipart upload to {url} could not be aborted (it stays \
                         recorded, the next run to the same key aborts it)",
                        e.chain()
                    ),
                    std::io::Error::other(a.chain()),
                )),
                None => Err(e),
            }
        }
    }
}

/// Uploads the local file `path` as it is into the object `url` (the `aws s3 cp` of this
/// client): the same multipart upload, parts in parallel, SHA-256 metadata and resume record as
/// [`convert_to_s3`], without a conversion.
pub fn upload_file(
    path: &Path,
    url: &S3Url,
    config: S3Config,
    upload_opts: &S3UploadOptions,
) -> Result<UploadReport> {
    let f = crate::storage::FileStorage::open_read_only(path)
        .map_err(|e| Error::io("opening the file to upload", e).in_file(path))?;
    let len = crate::storage::Storage::len(&f)
        .map_err(|e| Error::io("reading the file's length", e).in_file(path))?;
    let client = Arc::new(S3Client::new(config, &url.bucket)?);
    client.check_bucket()?;
    let upload = upload::Upload::start(UploadParams {
        client,
        url: url.clone(),
        artifact: format!("file {} of {len} bytes", path.display()),
        estimate: len,
        resume: upload_opts.resume,
        workers: upload_opts.workers,
    })?;
    let out = upload.storage();
    let mut buf = vec![0u8; 8 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        crate::storage::Storage::read_exact_at(&f, &mut buf[..n], off)
            .map_err(|e| Error::io("reading the file to upload", e).in_file(path))?;
        out.write_all_at(&buf[..n], off)
            .map_err(|e| Error::io(format!("uploading to {url}"), e))?;
        off += n as u64;
    }
    upload.complete(upload_opts.copy_limit)
}

/// What [`verify_s3`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3VerifyReport {
    /// The object.
    pub url: S3Url,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 in its metadata (`None`: there is none, the upload did not finish its
    /// metadata step or the object was not uploaded by diskconv).
    pub stored_sha256: Option<String>,
    /// The SHA-256 of its bytes, as read now.
    pub sha256: String,
    /// The content compared with the source (the object opened as an image).
    pub content: VerifyReport,
}

impl S3VerifyReport {
    /// The stored hash matches the bytes and the content matches the source.
    pub fn ok(&self) -> bool {
        self.stored_sha256.as_deref() == Some(self.sha256.as_str()) && self.content.equal
    }
}

/// Checks the finished upload `url` against the source `src`: the SHA-256 in the object's
/// metadata against its bytes (the whole object streamed), and its content, opened as an image
/// through ranged reads and the format registry (`format`, else detected), against the
/// source's, block by block.
pub fn verify_s3(
    src: &dyn ImageReader,
    url: &S3Url,
    config: S3Config,
    format: Option<crate::image::Format>,
    block_size: u64,
    cancel: Option<&AtomicBool>,
) -> Result<S3VerifyReport> {
    let client = Arc::new(S3Client::new(config, &url.bucket)?);
    let head = client
        .head(&url.key)?
        .ok_or_else(|| Error::InvalidArgument(format!("there is no object {url}")))?;
    let mut h = Sha256::new();
    let n = client.get_streamed(&url.key, &mut |b| {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        h.update(b);
        Ok(())
    })?;
    if n != head.size {
        return Err(Error::Corrupt(format!(
            "{url}: {n} bytes were read, HeadObject says {}",
            head.size
        )));
    }
    let sha256 = sigv4::hex(&h.finalize());
    let storage = Arc::new(S3Storage::new(client, url.clone(), head.size));
    let mut o = crate::open::OpenOptions::new();
    if let Some(f) = format {
        o = o.format(f);
    }
    let img = crate::open::open_storage(storage, &o).map_err(|e| {
        Error::InvalidFormat(format!("{url} cannot be opened as an image: {}", e.chain()))
    })?;
    let content = crate::verify::verify_cancellable(src, img.as_ref(), block_size, None, cancel)?;
    Ok(S3VerifyReport {
        url: url.clone(),
        size: head.size,
        stored_sha256: head.sha256,
        sha256,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = S3Url::parse("s3://my-bucket.x/a/b c.vmdk").unwrap();
        assert_eq!(u.bucket, "my-bucket.x");
        assert_eq!(u.key, "a/b c.vmdk");
        assert_eq!(u.to_string(), "s3://my-bucket.x/a/b c.vmdk");
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3://B/k",
            "s3://ab/k",
            "s3://-bad/k",
            "http://b/k",
        ] {
            let e = S3Url::parse(bad).unwrap_err();
            assert!(e.to_string().contains("not an S3 object URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn part_sizes_grow_with_the_artifact() {
        use upload::{DEFAULT_PART, MAX_PARTS, part_size_for};
        assert_eq!(part_size_for(0), DEFAULT_PART);
        assert_eq!(part_size_for(2 << 30), DEFAULT_PART);
        for size in [100u64 << 30, 1 << 40, 5 << 40] {
            let p = part_size_for(size);
            assert!(size.div_ceil(p) <= u64::from(MAX_PARTS), "{size}");
            assert_eq!(p % (1 << 20), 0);
        }
    }
}
