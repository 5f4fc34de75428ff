//! The upload: a [`Storage`] that takes the fixed VHD's bytes in order and sends their
//! non-zero 512-byte sectors as Put Page requests on a pool of threads, and the [`Sink`] that
//! owns it (temporary blob, copy to the final name, clean-up).
//!
//! Memory: the bytes of one 4 MiB window are gathered in a buffer; a finished window goes to
//! a bounded queue that the upload threads take from, so at most `2 x threads + 1` windows
//! exist at once whatever the disk's size. Zeros are never sent: a new page blob reads as
//! zeros, and each window is cut into runs of non-zero sectors, one Put Page per run.
//!
//! Order: the writer hands the bytes over in ascending order (the convert engine does, and a
//! fixed VHD is its disk then its footer), so the SHA-256 of the whole file (zeros included)
//! and the xxh3-128 of each segment (for `--resume`) are computed as the bytes go by.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

use super::record::{RecordWriter, SegmentDone};
use super::rest::{BlobClient, MAX_PUT_PAGE};
use crate::error::{Error, Result};
use crate::files::{Sink, SinkCapabilities};
use crate::storage::Storage;

/// Bytes gathered per window (the largest Put Page).
const WINDOW: u64 = MAX_PUT_PAGE as u64;
const SECTOR: usize = 512;

fn io_err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

/// Splits `buf` (which starts at a sector boundary) into runs of non-zero 512-byte sectors:
/// byte ranges within `buf`. A partial last sector counts as a sector.
pub fn nonzero_runs(buf: &[u8]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let end = (i + SECTOR).min(buf.len());
        if !crate::util::is_zero(&buf[i..end]) {
            match out.last_mut() {
                Some(r) if r.end == i => r.end = end,
                _ => out.push(i..end),
            }
        }
        i = end;
    }
    out
}

/// One window to send.
struct Job {
    /// Blob offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    /// The part of `buf` that was written (the rest is zeros).
    used: Range<usize>,
    segment: u64,
}

/// Per-segment accounting shared by the writer and the upload threads.
struct Segments {
    /// Windows sent and not answered yet, and page bytes sent, by segment.
    open: HashMap<u64, (usize, u64)>,
    /// Segments whose bytes are all produced (hash known) but maybe not all sent.
    produced: HashMap<u64, u128>,
    record: RecordWriter,
    /// Page bytes of the segments finished in this run.
    finished_bytes: u64,
}

impl Segments {
    /// Records `seg` when it is produced and nothing of it is in flight.
    fn settle(&mut self, seg: u64) -> Result<()> {
        let in_flight = self.open.get(&seg).map(|o| o.0).unwrap_or(0);
        if in_flight > 0 {
            return Ok(());
        }
        let Some(hash) = self.produced.remove(&seg) else {
            return Ok(());
        };
        let data_bytes = self.open.remove(&seg).map(|o| o.1).unwrap_or(0);
        self.finished_bytes += data_bytes;
        self.record.push(&SegmentDone {
            segment: seg,
            xxh3: hash,
            data_bytes,
        })
    }
}

/// State shared with the upload threads.
struct Shared {
    client: Arc<BlobClient>,
    blob: String,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    segments: Mutex<Segments>,
    pool: Mutex<Vec<Vec<u8>>>,
    sent_bytes: AtomicU64,
    requests: AtomicU64,
}

impl Shared {
    fn fail(&self, e: Error) {
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// The first error of an upload thread, as an I/O error for the writer.
    fn check(&self) -> std::io::Result<()> {
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let msg = self
            .error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.chain()))
            .unwrap_or_else(|| "an upload thread failed".into());
        Err(io_err(msg))
    }

    fn recycle(&self, mut buf: Vec<u8>, used: Range<usize>) {
        buf[used].fill(0);
        if let Ok(mut p) = self.pool.lock() {
            p.push(buf);
        }
    }

    fn run(&self, rx: &Mutex<Receiver<Job>>) {
        loop {
            let job = match rx.lock() {
                Ok(r) => r.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            let mut sent = 0u64;
            if !self.failed.load(Ordering::SeqCst) {
                // The used part, widened to whole sectors (the rest of the buffer is zeros).
                let lo = job.used.start / SECTOR * SECTOR;
                let hi = job.used.end.div_ceil(SECTOR) * SECTOR;
                for r in nonzero_runs(&job.buf[lo..hi.min(job.buf.len())]) {
                    let off = job.start + (lo + r.start) as u64;
                    let data = &job.buf[lo + r.start..lo + r.end];
                    match self.client.put_page(&self.blob, off, data) {
                        Ok(()) => {
                            sent += data.len() as u64;
                            self.requests.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.fail(e);
                            break;
                        }
                    }
                }
            }
            self.sent_bytes.fetch_add(sent, Ordering::Relaxed);
            let settled = self.segments.lock().map(|mut s| {
                if let Some(o) = s.open.get_mut(&job.segment) {
                    o.0 -= 1;
                    o.1 += sent;
                }
                if self.failed.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    s.settle(job.segment)
                }
            });
            if let Ok(Err(e)) = settled {
                self.fail(e);
            }
            self.recycle(job.buf, job.used);
        }
    }
}

/// The writer's side: hashes, the window being filled.
struct WriterState {
    /// Bytes hashed so far: everything before this offset was handed over (or was a gap,
    /// hashed as zeros).
    hashed: u64,
    sha: Sha256,
    seg_hash: Xxh3,
    /// The window being filled: start, buffer, used range.
    window: Option<(u64, Vec<u8>, Range<usize>)>,
    /// The bytes past the disk (the footer), sent last.
    tail: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// The SHA-256 of the whole blob, once synced.
    sha256: Option<[u8; 32]>,
}

/// What the upload of one blob is to do.
pub struct UploadPlan {
    /// The client of the container.
    pub client: Arc<BlobClient>,
    /// The temporary blob written.
    pub blob: String,
    /// Virtual size of the VHD (the footer follows).
    pub vsize: u64,
    /// Bytes per resume segment (a multiple of 4 MiB).
    pub segment_size: u64,
    /// Segments finished by an earlier run: checked, not sent.
    pub done: BTreeMap<u64, SegmentDone>,
    /// Where finished segments are recorded.
    pub record: RecordWriter,
    /// Upload threads.
    pub threads: usize,
}

/// The storage of the temporary page blob: appends only (see the module documentation).
pub struct PageBlobUpload {
    shared: Arc<Shared>,
    vsize: u64,
    len: u64,
    segment_size: u64,
    done: BTreeMap<u64, SegmentDone>,
    state: Mutex<WriterState>,
}

impl std::fmt::Debug for PageBlobUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlobUpload")
            .field("blob", &self.shared.blob)
            .field("len", &self.len)
            .finish()
    }
}

impl PageBlobUpload {
    /// Starts the upload threads.
    pub fn start(plan: UploadPlan) -> Arc<PageBlobUpload> {
        let threads = plan.threads.max(1);
        let shared = Arc::new(Shared {
            client: plan.client,
            blob: plan.blob,
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            segments: Mutex::new(Segments {
                open: HashMap::new(),
                produced: HashMap::new(),
                record: plan.record,
                finished_bytes: 0,
            }),
            pool: Mutex::new(Vec::new()),
            sent_bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let (tx, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..threads)
            .map(|_| {
                let (s, rx) = (shared.clone(), rx.clone());
                std::thread::spawn(move || s.run(&rx))
            })
            .collect();
        Arc::new(PageBlobUpload {
            shared,
            vsize: plan.vsize,
            len: plan.vsize + 512,
            segment_size: plan.segment_size,
            done: plan.done,
            state: Mutex::new(WriterState {
                hashed: 0,
                sha: Sha256::new(),
                seg_hash: Xxh3::new(),
                window: None,
                tail: Vec::new(),
                jobs: Some(tx),
                threads: handles,
                sha256: None,
            }),
        })
    }

    /// Page bytes sent in this run, and Put Page requests.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.shared.sent_bytes.load(Ordering::Relaxed),
            self.shared.requests.load(Ordering::Relaxed),
        )
    }

    /// Page bytes the blob holds when the upload is complete: the finished segments of the
    /// earlier run, those of this one, and the footer.
    pub fn expected_page_bytes(&self) -> u64 {
        let earlier: u64 = self.done.values().map(|d| d.data_bytes).sum();
        let now = self
            .shared
            .segments
            .lock()
            .map(|s| s.finished_bytes)
            .unwrap_or(0);
        let tail = self
            .state
            .lock()
            .map(|s| nonzero_runs(&s.tail).iter().map(|r| r.len() as u64).sum())
            .unwrap_or(0);
        earlier + now + tail
    }

    /// The SHA-256 of the whole blob, once [`Storage::sync`] succeeded.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.state.lock().ok().and_then(|s| s.sha256)
    }

    /// Stops the threads (after an error or when abandoned) without sending more.
    pub fn stop(&self) {
        self.shared.failed.store(true, Ordering::SeqCst);
        if let Ok(mut st) = self.state.lock() {
            st.jobs = None;
            for h in st.threads.drain(..) {
                let _ = h.join();
            }
        }
    }

    /// Hashes `len` bytes at the current position: `data`, or zeros when `None`; a segment
    /// whose end is passed is produced.
    fn absorb(&self, st: &mut WriterState, data: Option<&[u8]>, len: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut done = 0u64;
        while done < len {
            let pos = st.hashed;
            let seg_end = if pos < self.vsize {
                ((pos / self.segment_size + 1) * self.segment_size).min(self.vsize)
            } else {
                u64::MAX
            };
            let mut n = (len - done).min(seg_end - pos);
            let piece: &[u8] = match data {
                Some(d) => &d[done as usize..(done + n) as usize],
                None => {
                    n = n.min(ZEROS.len() as u64);
                    &ZEROS[..n as usize]
                }
            };
            st.sha.update(piece);
            if pos < self.vsize {
                st.seg_hash.update(piece);
            }
            st.hashed += n;
            done += n;
            if pos < self.vsize && st.hashed == seg_end {
                let seg = pos / self.segment_size;
                let hash = st.seg_hash.digest128();
                st.seg_hash = Xxh3::new();
                // Its last window is queued before the segment can count as finished.
                if st
                    .window
                    .as_ref()
                    .is_some_and(|w| w.0 / self.segment_size == seg)
                {
                    self.flush_window(st)?;
                }
                self.produced(seg, hash)?;
            }
        }
        Ok(())
    }

    fn produced(&self, seg: u64, hash: u128) -> std::io::Result<()> {
        if let Some(d) = self.done.get(&seg) {
            if d.xxh3 != hash {
                let start = seg * self.segment_size;
                let end = (start + self.segment_size).min(self.vsize);
                return Err(io_err(format!(
                    "the source is not what the interrupted upload was sending: bytes \
                     {start:#x}..{end:#x} of the VHD (segment {seg}, already in the temporary \
                     blob) came out different now; run the conversion again without --resume"
                )));
            }
            return Ok(());
        }
        let mut s = self
            .shared
            .segments
            .lock()
            .map_err(|_| io_err("internal error: poisoned lock"))?;
        s.produced.insert(seg, hash);
        s.settle(seg).map_err(|e| io_err(e.chain()))
    }

    /// Sends the window being filled (unless its segment is finished already).
    fn flush_window(&self, st: &mut WriterState) -> std::io::Result<()> {
        let Some((start, buf, used)) = st.window.take() else {
            return Ok(());
        };
        let segment = start / self.segment_size;
        if self.done.contains_key(&segment) {
            self.shared.recycle(buf, used);
            return Ok(());
        }
        if let Ok(mut s) = self.shared.segments.lock() {
            s.open.entry(segment).or_insert((0, 0)).0 += 1;
        }
        let job = Job {
            start,
            buf,
            used,
            segment,
        };
        let sent = st.jobs.as_ref().map(|tx| tx.send(job).is_ok());
        if sent != Some(true) {
            self.shared.check()?;
            return Err(io_err("internal error: the upload threads stopped"));
        }
        Ok(())
    }

    fn buffer(&self) -> Vec<u8> {
        self.shared
            .pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| vec![0u8; WINDOW as usize])
    }
}

impl Storage for PageBlobUpload {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<usize> {
        Err(io_err(
            "a page-blob upload cannot be read back while it is written",
        ))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.shared.check()?;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io_err(format!(
                    "write of {} bytes at {offset:#x} past the end of the blob ({} bytes)",
                    buf.len(),
                    self.len
                ))
            })?;
        let mut st = self
            .state
            .lock()
            .map_err(|_| io_err("internal error: poisoned lock"))?;
        if offset < st.hashed || st.sha256.is_some() {
            return Err(io_err(format!(
                "internal error: a page-blob upload takes its bytes in order; a write at \
                 {offset:#x} came after {:#x}",
                st.hashed
            )));
        }
        // The windows first (a segment is recorded only after its last window was queued),
        // then the hashes.
        let mut pos = offset;
        while pos < end.min(self.vsize) {
            let ws = pos / WINDOW * WINDOW;
            let wend = (ws + WINDOW).min(end).min(self.vsize);
            if st.window.as_ref().is_some_and(|w| w.0 != ws) {
                self.flush_window(&mut st)?;
            }
            if st.window.is_none() {
                let b = self.buffer();
                let at = (pos - ws) as usize;
                st.window = Some((ws, b, at..at));
            }
            if let Some((_, b, used)) = st.window.as_mut() {
                let (a, z) = ((pos - ws) as usize, (wend - ws) as usize);
                b[a..z].copy_from_slice(&buf[(pos - offset) as usize..(wend - offset) as usize]);
                used.start = used.start.min(a);
                used.end = used.end.max(z);
            }
            pos = wend;
        }
        if end > self.vsize {
            let from = offset.max(self.vsize);
            let at = (from - self.vsize) as usize;
            if st.tail.len() < 512 {
                st.tail.resize(512, 0);
            }
            st.tail[at..at + (end - from) as usize]
                .copy_from_slice(&buf[(from - offset) as usize..]);
        }
        // The disk's bytes are hashed here, the tail (footer) at sync.
        if offset < self.vsize {
            let gap = offset - st.hashed;
            if gap > 0 {
                self.absorb(&mut st, None, gap)?;
            }
            let n = end.min(self.vsize) - offset;
            self.absorb(&mut st, Some(&buf[..n as usize]), n)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // A new page blob reads as zeros; the hashes take the gap at the next write.
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(io_err("zeroes past the end of the blob"));
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if len != self.len {
            return Err(io_err(format!(
                "internal error: the page blob was created with {} bytes, the writer asks for \
                 {len}",
                self.len
            )));
        }
        Ok(())
    }

    /// Sends the last window, waits for every request, then sends the footer.
    fn sync(&self) -> std::io::Result<()> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| io_err("internal error: poisoned lock"))?;
        if st.sha256.is_some() {
            return Ok(());
        }
        self.flush_window(&mut st)?;
        // The disk's rest (zeros) and the tail: produces the last segments.
        let to_disk_end = self.vsize.saturating_sub(st.hashed);
        self.absorb(&mut st, None, to_disk_end)?;
        st.jobs = None;
        for h in st.threads.drain(..) {
            let _ = h.join();
        }
        self.shared.check()?;
        let tail = std::mem::take(&mut st.tail);
        let mut tail_full = tail.clone();
        tail_full.resize(512, 0);
        self.absorb(&mut st, Some(&tail_full), 512)?;
        for r in nonzero_runs(&tail_full) {
            self.shared
                .client
                .put_page(
                    &self.shared.blob,
                    self.vsize + r.start as u64,
                    &tail_full[r.clone()],
                )
                .map_err(|e| io_err(e.chain()))?;
            self.shared
                .sent_bytes
                .fetch_add(r.len() as u64, Ordering::Relaxed);
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
        }
        st.tail = tail_full;
        let sha = std::mem::take(&mut st.sha).finalize();
        st.sha256 = Some(sha.into());
        Ok(())
    }
}

/// How a finished upload went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageBlobReport {
    /// The final blob, without the SAS.
    pub url: String,
    /// Length of the blob (the VHD file: virtual size + 512).
    pub blob_length: u64,
    /// SHA-256 of the whole blob (zeros included), hex; also in the blob's metadata as
    /// `x-ms-meta-sha256`.
    pub sha256: String,
    /// Bytes of pages sent in this run.
    pub bytes_sent: u64,
    /// Put Page requests sent in this run.
    pub requests: u64,
    /// Bytes of pages the blob holds (non-zero sectors).
    pub page_bytes: u64,
    /// Segments an earlier, interrupted run had finished (checked, not sent again).
    pub segments_resumed: u64,
    /// The temporary blob of an earlier run to the same URL, deleted (without `--resume`).
    pub stale_removed: Option<String>,
}

/// The destination of one conversion into a page blob.
pub struct PageBlobSink {
    pub(crate) client: Arc<BlobClient>,
    pub(crate) plan: Option<UploadPlan>,
    pub(crate) upload: Option<Arc<PageBlobUpload>>,
    pub(crate) temp: String,
    pub(crate) final_name: String,
    pub(crate) target: PathBuf,
    pub(crate) record_path: PathBuf,
    pub(crate) report: Arc<Mutex<PageBlobReport>>,
    pub(crate) done: bool,
}

impl std::fmt::Debug for PageBlobSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlobSink")
            .field("target", &self.target)
            .field("temp", &self.temp)
            .finish()
    }
}

impl PageBlobSink {
    fn commit_inner(&mut self) -> Result<()> {
        let upload = self.upload.clone().ok_or_else(|| {
            Error::Internal("internal error: committing a page blob never written".into())
        })?;
        let sha = upload.sha256().ok_or_else(|| {
            Error::Internal("internal error: committing a page blob before its footer".into())
        })?;
        let sha_hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        let c = &self.client;
        // Verified before it gets its name: the blob's length, and every page sent is there.
        let props = c.properties(&self.temp)?.ok_or_else(|| {
            Error::io(
                format!("checking the temporary blob {}", c.shown(&self.temp)),
                io_err("it is gone"),
            )
        })?;
        let want = upload.len;
        if props.len != want {
            return Err(Error::Corrupt(format!(
                "the temporary blob {} is {} bytes, not the {want} bytes of the VHD",
                c.shown(&self.temp),
                props.len
            )));
        }
        let pages: u64 = c
            .page_ranges(&self.temp, want)?
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        let expected = upload.expected_page_bytes();
        if pages != expected {
            return Err(Error::Corrupt(format!(
                "the temporary blob {} holds {pages} bytes of pages, the upload sent {expected}",
                c.shown(&self.temp)
            )));
        }
        let mut status =
            c.copy_blob(&self.temp, &self.final_name, &[("sha256", sha_hex.clone())])?;
        let mut wait = Duration::from_millis(100);
        while status == "pending" {
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
            let p = c.properties(&self.final_name)?.ok_or_else(|| {
                Error::io(
                    format!("copying to {}", c.shown(&self.final_name)),
                    io_err("the copy disappeared"),
                )
            })?;
            status = p.copy_status.unwrap_or_else(|| "success".into());
            if status == "failed" || status == "aborted" {
                return Err(Error::io(
                    format!("copying to {}", c.shown(&self.final_name)),
                    io_err(format!(
                        "the copy {status}: {}",
                        p.copy_description.unwrap_or_default()
                    )),
                ));
            }
        }
        if status != "success" {
            return Err(Error::io(
                format!("copying to {}", c.shown(&self.final_name)),
                io_err(format!("unexpected copy status {status}")),
            ));
        }
        // The copy's properties name the source with its SAS: drop them.
        c.set_properties(&self.final_name)?;
        let (sent, requests) = upload.sent();
        c.delete_blob(&self.temp)?;
        let _ = std::fs::remove_file(&self.record_path);
        if let Ok(mut r) = self.report.lock() {
            r.blob_length = want;
            r.sha256 = sha_hex;
            r.bytes_sent = sent;
            r.requests = requests;
            r.page_bytes = pages;
            r.segments_resumed = upload.done.len() as u64;
        }
        Ok(())
    }

    /// Removes what this run created: the temporary blob and the record.
    fn clean_up(&mut self) {
        if let Some(u) = &self.upload {
            u.stop();
        }
        let _ = self.client.delete_blob(&self.temp);
        let _ = std::fs::remove_file(&self.record_path);
    }
}

impl Drop for PageBlobSink {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.clean_up();
        }
    }
}

impl Sink for PageBlobSink {
    fn target(&self) -> &Path {
        &self.target
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            random_access: false,
            siblings: false,
        }
    }

    fn main(&mut self) -> Result<Arc<dyn Storage>> {
        let plan = self.plan.take().ok_or_else(|| {
            Error::Internal("internal error: the page blob's storage was asked for twice".into())
        })?;
        let u = PageBlobUpload::start(plan);
        self.upload = Some(u.clone());
        Ok(u)
    }

    fn sibling(&mut self, name: &str) -> Result<Arc<dyn Storage>> {
        Err(Error::Unsupported(format!(
            "an Azure page blob is one file; the output would need {name} beside it"
        )))
    }

    fn scratch(&mut self) -> Result<Arc<dyn Storage>> {
        Err(Error::Unsupported(
            "an Azure page blob takes a fixed VHD written in order; this output needs scratch \
             space"
                .into(),
        ))
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let r = self.commit_inner();
        if r.is_err() {
            self.clean_up();
        } else if let Some(u) = &self.upload {
            u.stop();
        }
        self.done = true;
        r
    }

    fn abandon(mut self: Box<Self>) {
        self.done = true;
        self.clean_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_nonzero_sectors() {
        let mut b = vec![0u8; 8 * 512 + 100];
        assert!(nonzero_runs(&b).is_empty());
        b[0] = 1;
        b[511] = 1;
        b[3 * 512 + 7] = 1;
        b[4 * 512] = 1;
        b[8 * 512 + 99] = 1;
        assert_eq!(
            nonzero_runs(&b),
            vec![0..512, 3 * 512..5 * 512, 8 * 512..8 * 512 + 100]
        );
    }
}
