//! Streaming a fixed VHD into an Azure page blob given a SAS URL, resuming an interrupted
//! upload, and verifying a finished one.
//!
//! What Azure takes (REFERENCE.md section 3; Microsoft's "Prepare a Windows VHD or VHDX to
//! upload to Azure" and "Upload a VHD to Azure" pages): a fixed VHD whose virtual size is a
//! whole number of MiB, at least 20 MiB and at most 32 TiB, stored as a page blob whose length
//! is the file's (virtual size + 512, the footer in the last 512 bytes). Azure's own tools
//! (`Add-AzVhd`, AzCopy for page blobs) send only the non-zero ranges, since a new page blob
//! reads as zeros: so does this.
//!
//! The flow of [`convert_to_page_blob`]: a temporary page blob beside the final name is
//! created with the file's length; the conversion writes the fixed VHD in order into
//! [`upload::PageBlobUpload`], which sends each 4 MiB window's non-zero sector runs as Put
//! Page requests on a pool of threads while hashing the whole file (SHA-256) and each 64 MiB
//! segment (xxh3-128, for `--resume`). When the footer is sent, the temporary blob is checked
//! (length, bytes of pages) and copied to the final name (Copy Blob, the SHA-256 as metadata
//! `x-ms-meta-sha256`, its status polled while pending), then deleted. Any error or
//! cancellation deletes the temporary blob; a killed run leaves it and its record (see
//! [`record`]) for `--resume`.
//!
//! Without the cargo feature `cloud` the entry points return "unsupported".

pub mod url;

#[cfg(feature = "cloud")]
pub mod blob;
#[cfg(feature = "cloud")]
pub mod record;
#[cfg(feature = "cloud")]
pub mod rest;
#[cfg(feature = "cloud")]
pub mod upload;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

pub use url::PageBlobUrl;

use crate::convert::{ConvertOptions, ConvertStats, ProgressFn};
use crate::error::{Error, Result};
use crate::formats::vhd::VhdSubformat;
use crate::image::{Format, ImageReader};
use crate::output::OutputOptions;
use crate::verify::VerifyReport;

/// Smallest virtual size Azure takes: 20 MiB.
pub const MIN_SIZE: u64 = 20 << 20;
/// Largest virtual size of a page blob disk: 32 TiB.
pub const MAX_SIZE: u64 = 32 << 40;
/// Default bytes per resume segment.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default number of upload threads (Put Page requests in flight).
pub const DEFAULT_THREADS: usize = 8;
const MIB: u64 = 1 << 20;

/// How to upload.
#[derive(Debug, Clone)]
pub struct PageBlobOptions {
    /// Continue the interrupted upload recorded for this URL instead of starting over.
    pub resume: bool,
    /// Folder of the upload records (see [`default_state_dir`]).
    pub state_dir: PathBuf,
    /// Put Page requests in flight at once.
    pub threads: usize,
    /// Bytes per resume segment (a multiple of 4 MiB).
    pub segment_size: u64,
}

impl Default for PageBlobOptions {
    fn default() -> Self {
        PageBlobOptions {
            resume: false,
            state_dir: default_state_dir(),
            threads: DEFAULT_THREADS,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

/// Where upload records go: `$DISKCONV_STATE_DIR`, else `$XDG_STATE_HOME/diskconv`, else
/// `$HOME/.local/state/diskconv`, else `.diskconv-state` in the current folder.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("DISKCONV_STATE_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|p| p.join("diskconv")))
        .or_else(|| env("HOME").map(|p| p.join(".local/state/diskconv")))
        .unwrap_or_else(|| PathBuf::from(".diskconv-state"))
}

/// The virtual size of the fixed VHD uploaded for a source of `size` bytes: rounded up to a
/// whole MiB, at least 20 MiB (Azure's rules; the `azure` target profile makes the same).
pub fn azure_size(size: u64) -> u64 {
    size.div_ceil(MIB).max(MIN_SIZE / MIB) * MIB
}

/// Checks that `out` is what a page blob takes: a fixed VHD of whole MiB.
pub fn check_output_options(out: &OutputOptions) -> Result<()> {
    let takes = "an Azure page blob takes a fixed VHD only (-O vpc -o subformat=fixed, the \
                 default for a page-blob URL)";
    if out.format != Format::Vhd {
        return Err(Error::InvalidArgument(format!(
            "{takes}, not {} output",
            out.format
        )));
    }
    if out.vhd.subformat != VhdSubformat::Fixed {
        return Err(Error::InvalidArgument(format!(
            "{takes}, not a dynamic VHD"
        )));
    }
    if !out.vhd.round_to_mib {
        return Err(Error::InvalidArgument(
            "round_to_mib=off: Azure takes only a virtual size that is a whole number of MiB; \
             remove the option (the size is rounded up, the tail reads as zeros)"
                .into(),
        ));
    }
    Ok(())
}

/// What [`convert_to_page_blob`] did.
#[cfg(feature = "cloud")]
#[derive(Debug, Clone)]
pub struct PageBlobStats {
    /// The conversion.
    pub convert: ConvertStats,
    /// The upload.
    pub upload: upload::PageBlobReport,
}

/// Converts `src` into a fixed VHD streamed into the page blob `url` (see the module
/// documentation). `out` must be a fixed VHD ([`check_output_options`]).
#[cfg(feature = "cloud")]
pub fn convert_to_page_blob(
    src: &dyn ImageReader,
    url: &PageBlobUrl,
    out: &OutputOptions,
    opts: &PageBlobOptions,
    convert_opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<PageBlobStats> {
    use std::sync::{Arc, Mutex};

    check_output_options(out)?;
    out.validate()?;
    if opts.segment_size == 0 || opts.segment_size % rest::MAX_PUT_PAGE as u64 != 0 {
        return Err(Error::InvalidArgument(format!(
            "segment size {} is not a multiple of 4 MiB",
            opts.segment_size
        )));
    }
    let shown = url.display();
    let size = src.virtual_size();
    let vsize = azure_size(size);
    if vsize > MAX_SIZE {
        return Err(Error::InvalidArgument(format!(
            "the disk is {vsize} bytes; an Azure page-blob disk holds at most 32 TiB"
        ))
        .in_file(&shown));
    }
    let blob_len = vsize + 512;
    let client = Arc::new(rest::BlobClient::new(url));
    let record_path = record::record_path(&opts.state_dir, &shown);
    let existing = record::read(&record_path)?;
    let mut stale_removed = None;
    let (temp, done, record) = if opts.resume {
        let r = existing.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--resume: no interrupted upload to {shown} is recorded (looked for {}); run \
                 without --resume",
                record_path.display()
            ))
        })?;
        let h = &r.header;
        if h.url != shown
            || h.blob_length != blob_len
            || h.segment_size != opts.segment_size
            || h.source_size != size
        {
            return Err(Error::InvalidArgument(format!(
                "--resume: the interrupted upload to {shown} was of a {}-byte source into a \
                 {}-byte blob, this is a {size}-byte source into a {blob_len}-byte blob; run \
                 without --resume to start over",
                h.source_size, h.blob_length
            )));
        }
        let done = resume_check(&client, h, r.done, vsize)?;
        (
            h.temp_blob.clone(),
            done,
            record::RecordWriter::append(&record_path)?,
        )
    } else {
        if let Some(r) = existing {
            // A killed run's leftovers: its temporary blob and record.
            if client.delete_blob(&r.header.temp_blob)? {
                stale_removed = Some(client.shown(&r.header.temp_blob));
            }
            let _ = std::fs::remove_file(&record_path);
        }
        let id: String = crate::bytes::Guid::random().to_be_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let temp = format!("{}.diskconv-partial-{id}", url.name());
        // The record first: a kill between the two leaves no blob that nothing names.
        let record = record::RecordWriter::create(
            &record_path,
            &record::RecordHeader {
                version: 1,
                url: shown.clone(),
                temp_blob: temp.clone(),
                blob_length: blob_len,
                segment_size: opts.segment_size,
                source_size: size,
            },
        )?;
        if let Err(e) = client.create_page_blob(&temp, blob_len) {
            let _ = std::fs::remove_file(&record_path);
            return Err(e);
        }
        (temp, Default::default(), record)
    };
    let report = Arc::new(Mutex::new(upload::PageBlobReport {
        url: shown.clone(),
        stale_removed,
        ..Default::default()
    }));
    let sink = upload::PageBlobSink {
        client: client.clone(),
        plan: Some(upload::UploadPlan {
            client: client.clone(),
            blob: temp.clone(),
            vsize,
            segment_size: opts.segment_size,
            done,
            record,
            threads: opts.threads,
        }),
        upload: None,
        temp,
        final_name: url.name().to_string(),
        target: PathBuf::from(&shown),
        record_path,
        report: report.clone(),
        done: false,
    };
    // The writer gets at least 20 MiB; it rounds up to a whole MiB itself.
    let writer_size = size.max(MIN_SIZE);
    let convert = crate::convert::convert_to_sink(
        src,
        Box::new(sink),
        |s| {
            let w = crate::output::create_writer(s, writer_size, out)?;
            if w.virtual_size() != vsize {
                return Err(Error::Internal(format!(
                    "internal error: the fixed VHD writer made {} bytes, the blob has {vsize}",
                    w.virtual_size()
                )));
            }
            Ok(w)
        },
        convert_opts,
        progress,
    )?;
    let upload = report.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(PageBlobStats { convert, upload })
}

/// Checks an interrupted upload's temporary blob against its record: the blob exists with the
/// recorded length; each finished segment holds as many bytes of pages as were sent for it
/// (else it is sent again). Pages outside the finished segments (requests in flight at the
/// kill, the old footer) are cleared. Returns the segments to skip.
#[cfg(feature = "cloud")]
fn resume_check(
    client: &rest::BlobClient,
    h: &record::RecordHeader,
    mut done: std::collections::BTreeMap<u64, record::SegmentDone>,
    vsize: u64,
) -> Result<std::collections::BTreeMap<u64, record::SegmentDone>> {
    let props = client.properties(&h.temp_blob)?;
    match props {
        Some(p) if p.len == h.blob_length => {}
        Some(p) => {
            return Err(Error::Corrupt(format!(
                "--resume: the temporary blob {} is {} bytes, the record says {}; run without \
                 --resume",
                client.shown(&h.temp_blob),
                p.len,
                h.blob_length
            )));
        }
        None => {
            return Err(Error::InvalidArgument(format!(
                "--resume: the temporary blob {} of the interrupted upload is gone; run without \
                 --resume",
                client.shown(&h.temp_blob)
            )));
        }
    }
    let ranges = client.page_ranges(&h.temp_blob, h.blob_length)?;
    let seg = h.segment_size;
    let bytes_in = |a: u64, z: u64| -> u64 {
        ranges
            .iter()
            .map(|r| r.end.min(z).saturating_sub(r.start.max(a)))
            .sum()
    };
    done.retain(|&i, d| {
        let a = i * seg;
        a < vsize && bytes_in(a, (a + seg).min(vsize)) == d.data_bytes
    });
    for r in &ranges {
        let mut a = r.start;
        while a < r.end {
            let i = a / seg;
            let z = ((i + 1) * seg).min(r.end);
            if a >= vsize || !done.contains_key(&i) {
                // Cleared in pieces of at most 4 MiB.
                let mut p = a;
                while p < z {
                    let q = (p + rest::MAX_PUT_PAGE as u64).min(z);
                    client.clear_pages(&h.temp_blob, p..q)?;
                    p = q;
                }
            }
            a = z;
        }
    }
    Ok(done)
}

/// What [`verify_page_blob`] found.
#[derive(Debug, Clone)]
pub struct PageBlobVerify {
    /// The SHA-256 the blob's metadata holds (`x-ms-meta-sha256`), if any.
    pub sha256_recorded: Option<String>,
    /// The SHA-256 of the blob's bytes.
    pub sha256_actual: String,
    /// Block comparison of the source with the VHD's disk.
    pub content: VerifyReport,
}

impl PageBlobVerify {
    /// The hash matches the metadata and the content the source.
    pub fn ok(&self) -> bool {
        self.sha256_recorded.as_deref() == Some(self.sha256_actual.as_str()) && self.content.equal
    }
}

/// Checks the page blob `url` against `src`: the SHA-256 of its bytes against its metadata,
/// and its content (opened as a fixed VHD over ranged reads) block by block against the
/// source.
#[cfg(feature = "cloud")]
pub fn verify_page_blob(
    src: &dyn ImageReader,
    url: &PageBlobUrl,
    block_size: u64,
    cancel: Option<&AtomicBool>,
) -> Result<PageBlobVerify> {
    use sha2::Digest;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let shown = url.display();
    let client = Arc::new(rest::BlobClient::new(url));
    let blob = Arc::new(blob::PageBlobStorage::open(client, url.name())?);
    let recorded = blob.properties().metadata.get("sha256").cloned();
    let len = blob.properties().len;
    let mut sha = sha2::Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    let ranges: Vec<_> = blob.ranges().to_vec();
    let hash_zeros = |sha: &mut sha2::Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(zeros.len() as u64);
            sha.update(&zeros[..k as usize]);
            n -= k;
        }
    };
    for r in ranges {
        let (a, z) = (r.start.min(len), r.end.min(len));
        hash_zeros(&mut sha, a.saturating_sub(pos));
        let mut p = a;
        while p < z {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Cancelled);
            }
            let n = (z - p).min(buf.len() as u64) as usize;
            blob.fetch(&mut buf[..n], p)
                .map_err(|e| e.in_file(&shown))?;
            sha.update(&buf[..n]);
            p += n as u64;
        }
        pos = pos.max(z);
    }
    hash_zeros(&mut sha, len - pos);
    let actual: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let img = crate::open::open_storage(
        blob,
        &crate::reference::OpenOptions::new().format(Format::Vhd),
    )
    .map_err(|e| e.in_file(&shown))?;
    let content = crate::verify::verify_cancellable(src, img.as_ref(), block_size, None, cancel)?;
    Ok(PageBlobVerify {
        sha256_recorded: recorded,
        sha256_actual: actual,
        content,
    })
}

/// Without the `cloud` feature: "unsupported".
#[cfg(not(feature = "cloud"))]
pub fn convert_to_page_blob(
    _src: &dyn ImageReader,
    _url: &PageBlobUrl,
    _out: &OutputOptions,
    _opts: &PageBlobOptions,
    _convert_opts: &ConvertOptions,
    _progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    Err(Error::Unsupported(
        "this build has no cloud support (cargo feature `cloud`)".into(),
    ))
}

/// Without the `cloud` feature: "unsupported".
#[cfg(not(feature = "cloud"))]
pub fn verify_page_blob(
    _src: &dyn ImageReader,
    _url: &PageBlobUrl,
    _block_size: u64,
    _cancel: Option<&AtomicBool>,
) -> Result<PageBlobVerify> {
    Err(Error::Unsupported(
        "this build has no cloud support (cargo feature `cloud`)".into(),
    ))
}
