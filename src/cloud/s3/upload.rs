//! The multipart upload behind an S3 output: an append-only [`Storage`] that cuts the bytes it
//! is given into parts and uploads them on worker threads, the whole artifact's SHA-256 on a
//! thread of its own, and the [`Sink`] that completes (or aborts) the upload.
//!
//! Memory stays bounded whatever the disk size: parts of up to [`MAX_MEMORY_PART`] bytes are
//! held in memory, at most `workers + 2` of them at once (one filling, one queued per worker,
//! one per worker being sent); larger parts (disks above about 140 GiB, where S3's 10 000-part
//! limit makes parts larger) are spooled to unlinked temporary files in the system's temporary
//! folder instead, as many as there are parts in flight.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::client::{Body, META_SHA256, S3Client};
use super::record::{self, PartRecord, UploadRecord};
use super::sigv4::hex;
use super::{S3Url, UploadReport};
use crate::error::{Error, Result};
use crate::files::{Sink, SinkCapabilities};
use crate::storage::{FileStorage, Storage};

/// S3's limit on the parts of one upload.
pub const MAX_PARTS: u32 = 10_000;
/// S3's smallest part (but the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part, and the largest object `CopyObject` copies in one request.
pub const MAX_PART: u64 = 5 << 30;
/// S3's largest object.
pub const MAX_OBJECT: u64 = 5 << 40;
/// The smallest part diskconv uses.
pub const DEFAULT_PART: u64 = 8 << 20;
/// Parts up to this size are held in memory; larger ones are spooled to temporary files.
pub const MAX_MEMORY_PART: u64 = 16 << 20;

/// The part size for an artifact of at most `estimate` bytes: [`DEFAULT_PART`], or larger so
/// that 9 000 parts hold the estimate (some room under S3's 10 000 for a wrong estimate), in
/// whole MiB.
pub fn part_size_for(estimate: u64) -> u64 {
    let need = estimate.div_ceil(9_000).next_multiple_of(1 << 20);
    need.clamp(DEFAULT_PART, MAX_PART)
}

/// Creates an unlinked temporary file in the system's temporary folder (nothing is left
/// behind, even when the process is killed).
pub fn unlinked_temp(what: &str) -> Result<FileStorage> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        ".diskconv-s3-{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let s = FileStorage::create_new(&path)
        .map_err(|e| Error::io(format!("creating the {what} file"), e).in_file(&path))?;
    let _ = std::fs::remove_file(&path);
    Ok(s)
}

enum PartData {
    Memory(Arc<Vec<u8>>),
    Spool(File, u64),
}

struct Job {
    number: u32,
    data: PartData,
}

/// State shared by the appender, the workers and the sink.
struct Shared {
    client: Arc<S3Client>,
    url: S3Url,
    upload_id: String,
    record: Mutex<UploadRecord>,
    record_path: PathBuf,
    /// Parts of an earlier run found in the bucket: hashed and compared, not sent.
    reuse: HashMap<u32, PartRecord>,
    failure: Mutex<Option<Error>>,
    stop: AtomicBool,
    sent: AtomicU64,
    reused: AtomicU64,
}

impl Shared {
    fn fail(&self, e: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn failed(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| e.chain())
    }

    fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

fn part_sha256(data: &mut PartData) -> io::Result<(String, u64)> {
    match data {
        PartData::Memory(v) => Ok((hex(&Sha256::digest(v.as_slice())), v.len() as u64)),
        PartData::Spool(f, len) => {
            f.seek(SeekFrom::Start(0))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut r = (&*f).take(*len);
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok((hex(&h.finalize()), *len))
        }
    }
}

fn run_worker(shared: &Shared, jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(mut job) = job else { return };
        if shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        let (sha, size) = match part_sha256(&mut job.data) {
            Ok(x) => x,
            Err(e) => {
                shared.fail(Error::io("reading back a spooled part", e));
                continue;
            }
        };
        if let Some(old) = shared.reuse.get(&job.number) {
            if old.size == size && old.sha256 == sha {
                shared.reused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            shared.fail(Error::InvalidArgument(format!(
                "cannot resume the upload to {}: part {} as produced now ({size} bytes, SHA-256 \
                 {sha}) differs from the part sent before ({} bytes, SHA-256 {}): the source or \
                 the options changed since the interrupted run; run without --resume to upload \
                 anew",
                shared.url, job.number, old.size, old.sha256
            )));
            continue;
        }
        let body = match &job.data {
            PartData::Memory(v) => Body::Bytes(v.as_slice()),
            PartData::Spool(f, len) => Body::File(f, *len),
        };
        let etag = match shared.client.upload_part(
            &shared.url.key,
            &shared.upload_id,
            job.number,
            &body,
            &sha,
        ) {
            Ok(e) => e,
            Err(e) => {
                shared.fail(e);
                continue;
            }
        };
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let mut rec = shared.record.lock().unwrap_or_else(|p| p.into_inner());
        rec.parts.retain(|p| p.number != job.number);
        rec.parts.push(PartRecord {
            number: job.number,
            size,
            sha256: sha,
            etag,
        });
        if let Err(e) = rec.save(&shared.record_path) {
            shared.fail(e);
        }
    }
}

/// The part being filled.
enum Filling {
    Memory(Vec<u8>),
    Spool(File, u64),
}

struct AppendState {
    /// Bytes appended so far.
    end: u64,
    /// Length set with `set_len` (the gap up to it is appended as zeros at the end).
    logical: u64,
    filling: Filling,
    filled: u64,
    next_number: u32,
    jobs: Option<SyncSender<Job>>,
    hash: Option<SyncSender<Arc<Vec<u8>>>>,
}

/// The append-only storage of an upload (see the module documentation).
pub struct Appender {
    state: Mutex<AppendState>,
    shared: Arc<Shared>,
    part_size: u64,
    spool: bool,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Appender({})", self.shared.url)
    }
}

fn new_filling(spool: bool, part_size: u64) -> io::Result<Filling> {
    if spool {
        let s = unlinked_temp("spooled part").map_err(io::Error::other)?;
        Ok(Filling::Spool(s.file().try_clone()?, 0))
    } else {
        Ok(Filling::Memory(Vec::with_capacity(part_size as usize)))
    }
}

impl Appender {
    fn check_failure(&self) -> io::Result<()> {
        match self.shared.failed() {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }

    fn append(&self, st: &mut AppendState, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = (self.part_size - st.filled) as usize;
            let n = room.min(bytes.len());
            let piece = &bytes[..n];
            match &mut st.filling {
                Filling::Memory(v) => v.extend_from_slice(piece),
                Filling::Spool(f, len) => {
                    f.write_all(piece)?;
                    *len += n as u64;
                    if let Some(h) = &st.hash {
                        h.send(Arc::new(piece.to_vec()))
                            .map_err(|_| io::Error::other("the hashing thread stopped"))?;
                    }
                }
            }
            st.filled += n as u64;
            st.end += n as u64;
            bytes = &bytes[n..];
            if st.filled == self.part_size {
                self.flush_part(st)?;
            }
        }
        Ok(())
    }

    fn append_zeros(&self, st: &mut AppendState, mut n: u64) -> io::Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.append(st, &ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Hands the filled part to the workers (blocks while they are all busy).
    fn flush_part(&self, st: &mut AppendState) -> io::Result<()> {
        let number = st.next_number;
        if number > MAX_PARTS {
            return Err(io::Error::other(format!(
                "the artifact is larger than {MAX_PARTS} parts of {} bytes (S3's limit on the \
                 parts of an upload)",
                self.part_size
            )));
        }
        st.next_number += 1;
        let fresh = new_filling(self.spool, self.part_size)?;
        let data = match std::mem::replace(&mut st.filling, fresh) {
            Filling::Memory(v) => {
                let v = Arc::new(v);
                if let Some(h) = &st.hash {
                    h.send(v.clone())
                        .map_err(|_| io::Error::other("the hashing thread stopped"))?;
                }
                PartData::Memory(v)
            }
            Filling::Spool(f, len) => PartData::Spool(f, len),
        };
        st.filled = 0;
        if let Some(tx) = &st.jobs {
            tx.send(Job { number, data })
                .map_err(|_| io::Error::other("the upload threads stopped"))?;
        }
        self.check_failure()
    }
}

impl Storage for Appender {
    fn len(&self) -> io::Result<u64> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(st.end.max(st.logical))
    }

    fn read_at(&self, _buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the upload to {} cannot be read back (a read at offset {offset})",
                self.shared.url
            ),
        ))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_failure()?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if offset < st.end {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the upload to {} takes bytes in order only: a write at offset {offset} is \
                     below the {} bytes already sent",
                    self.shared.url, st.end
                ),
            ));
        }
        let gap = offset - st.end;
        self.append_zeros(&mut st, gap)?;
        self.append(&mut st, buf)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if offset + len <= st.end.max(st.logical) && offset >= st.end {
            // Inside the declared length: appended as zeros anyway when reached.
            return Ok(());
        }
        if offset < st.end {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the upload to {} takes bytes in order only: zeros at offset {offset} are \
                     below the {} bytes already sent",
                    self.shared.url, st.end
                ),
            ));
        }
        st.logical = st.logical.max(offset + len);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if len < st.end {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the upload to {} cannot be cut to {len} bytes: {} are sent",
                    self.shared.url, st.end
                ),
            ));
        }
        st.logical = len;
        Ok(())
    }
}

/// A multipart upload in progress: the appender, its threads and what is needed to complete
/// or abort it.
pub struct Upload {
    appender: Arc<Appender>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    hasher: Option<JoinHandle<[u8; 32]>>,
    notes: Vec<String>,
    resumed: bool,
    done: bool,
}

/// How an upload starts.
pub struct UploadParams {
    /// The client of the bucket.
    pub client: Arc<S3Client>,
    /// The destination.
    pub url: S3Url,
    /// What is uploaded (format, options, source size): a resume must produce the same.
    pub artifact: String,
    /// Upper bound of the artifact's size, for the part size.
    pub estimate: u64,
    /// Continue the recorded upload of an interrupted run.
    pub resume: bool,
    /// Upload threads.
    pub workers: usize,
}

impl Upload {
    /// Creates the multipart upload (or takes over the recorded one with `resume`) and starts
    /// the upload threads.
    pub fn start(p: UploadParams) -> Result<Upload> {
        if p.estimate > MAX_OBJECT {
            return Err(Error::InvalidArgument(format!(
                "the artifact may be up to {} bytes; an S3 object holds at most 5 TiB",
                p.estimate
            )));
        }
        let endpoint = p.client.endpoint().to_string();
        let record_path = record::record_path(&endpoint, &p.url.bucket, &p.url.key);
        let old = UploadRecord::load(&record_path)?;
        let mut notes = Vec::new();
        let mut reuse = HashMap::new();
        let mut taken: Option<UploadRecord> = None;
        match old {
            Some(old) if p.resume => {
                if old.artifact != p.artifact {
                    return Err(Error::InvalidArgument(format!(
                        "cannot resume the upload to {}: the interrupted run uploaded another \
                         artifact ({}), this one is {}; run without --resume to upload anew",
                        p.url, old.artifact, p.artifact
                    )));
                }
                match p.client.list_parts(&p.url.key, &old.upload_id) {
                    Ok(listed) => {
                        let listed: HashMap<u32, _> =
                            listed.into_iter().map(|l| (l.number, l)).collect();
                        let mut kept = Vec::new();
                        for part in &old.parts {
                            match listed.get(&part.number) {
                                Some(l)
                                    if l.size == part.size
                                        && l.etag.as_ref().is_none_or(|e| *e == part.etag) =>
                                {
                                    reuse.insert(part.number, part.clone());
                                    kept.push(part.clone());
                                }
                                _ => notes.push(format!(
                                    "part {} of the interrupted upload is not in the bucket as \
                                     recorded; it is sent again",
                                    part.number
                                )),
                            }
                        }
                        notes.push(format!(
                            "resuming the upload of an interrupted run: {} parts already in the \
                             bucket",
                            kept.len()
                        ));
                        taken = Some(UploadRecord { parts: kept, ..old });
                    }
                    Err(e) => notes.push(format!(
                        "the recorded upload cannot be resumed ({}); starting anew",
                        e.chain()
                    )),
                }
            }
            Some(old) => {
                // Not resuming: the earlier run's upload is ours to abort.
                if p.client.abort(&p.url.key, &old.upload_id).is_ok() {
                    notes.push(
                        "aborted the unfinished upload of an interrupted run (use --resume to \
                         continue one)"
                            .to_string(),
                    );
                }
                record::remove(&record_path);
            }
            None if p.resume => notes.push(format!(
                "no interrupted upload to {} is recorded; starting anew",
                p.url
            )),
            None => {}
        }
        let resumed = taken.is_some();
        let rec = match taken {
            Some(r) => r,
            None => {
                let upload_id = p.client.create_multipart(&p.url.key, &[])?;
                let r = UploadRecord {
                    endpoint,
                    bucket: p.url.bucket.clone(),
                    key: p.url.key.clone(),
                    upload_id,
                    part_size: part_size_for(p.estimate),
                    artifact: p.artifact.clone(),
                    parts: Vec::new(),
                };
                if let Err(e) = r.save(&record_path) {
                    let _ = p.client.abort(&p.url.key, &r.upload_id);
                    return Err(e);
                }
                r
            }
        };
        let part_size = rec.part_size;
        if !(MIN_PART..=MAX_PART).contains(&part_size) {
            return Err(Error::InvalidFormat(format!(
                "the upload record gives a part size of {part_size} bytes, outside S3's limits"
            ))
            .in_file(&record_path));
        }
        let spool = part_size > MAX_MEMORY_PART;
        let shared = Arc::new(Shared {
            client: p.client,
            url: p.url.clone(),
            upload_id: rec.upload_id.clone(),
            record: Mutex::new(rec),
            record_path,
            reuse,
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        });
        let workers_n = p.workers.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::with_capacity(workers_n);
        for _ in 0..workers_n {
            let (s, rx) = (shared.clone(), job_rx.clone());
            workers.push(std::thread::spawn(move || run_worker(&s, &rx)));
        }
        let (hash_tx, hash_rx) = sync_channel::<Arc<Vec<u8>>>(if spool { 8 } else { 1 });
        let hasher = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for piece in hash_rx {
                h.update(piece.as_slice());
            }
            h.finalize().into()
        });
        let filling = new_filling(spool, part_size)
            .map_err(|e| Error::io("creating the first part's buffer", e))?;
        let appender = Arc::new(Appender {
            state: Mutex::new(AppendState {
                end: 0,
                logical: 0,
                filling,
                filled: 0,
                next_number: 1,
                jobs: Some(job_tx),
                hash: Some(hash_tx),
            }),
            shared: shared.clone(),
            part_size,
            spool,
        });
        Ok(Upload {
            appender,
            shared,
            workers,
            hasher: Some(hasher),
            notes,
            resumed,
            done: false,
        })
    }

    /// The storage the artifact is written to.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.appender.clone()
    }

    /// The upload id.
    pub fn upload_id(&self) -> &str {
        &self.shared.upload_id
    }

    /// Stops the threads (after the parts they are sending); returns the artifact's
    /// SHA-256 when the hashing thread finished.
    fn stop_threads(&mut self) -> Option<[u8; 32]> {
        {
            let mut st = self
                .appender
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            st.jobs = None;
            st.hash = None;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.hasher.take().and_then(|h| h.join().ok())
    }

    /// Sends the rest, completes the upload, stores the SHA-256 in the object's metadata and
    /// checks the object; removes the record.
    pub fn complete(mut self, copy_limit: u64) -> Result<UploadReport> {
        let size = {
            let mut st = self
                .appender
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let st = &mut *st;
            let r = (|| {
                if st.logical > st.end {
                    let gap = st.logical - st.end;
                    self.appender.append_zeros(st, gap)?;
                }
                if st.filled > 0 || st.next_number == 1 {
                    self.appender.flush_part(st)?;
                }
                Ok::<_, io::Error>(st.end)
            })();
            match r {
                Ok(n) => n,
                Err(e) => {
                    drop(self.shared.take_failure());
                    return Err(Error::io(format!("uploading to {}", self.shared.url), e));
                }
            }
        };
        let parts_total = self
            .appender
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_number
            - 1;
        let digest = self.stop_threads();
        if let Some(e) = self.shared.take_failure() {
            return Err(e);
        }
        let sha = hex(&digest
            .ok_or_else(|| Error::Internal("the hashing thread of the upload stopped".into()))?);
        let client = self.shared.client.clone();
        let url = self.shared.url.clone();
        let upload_id = self.shared.upload_id.clone();
        // Every part in the bucket as recorded (ListParts), and nothing else.
        let mut parts = self
            .shared
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parts
            .clone();
        parts.sort_by_key(|p| p.number);
        let listed = client.list_parts(&url.key, &upload_id)?;
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        let expected: Vec<u32> = (1..=parts_total).collect();
        if numbers != expected {
            return Err(Error::Internal(format!(
                "the upload to {url} has parts {numbers:?} recorded, expected 1..={parts_total}"
            )));
        }
        let total: u64 = parts.iter().map(|p| p.size).sum();
        if total != size {
            return Err(Error::Internal(format!(
                "the parts of the upload to {url} hold {total} bytes, the artifact {size}"
            )));
        }
        for p in &parts {
            if !listed.iter().any(|l| {
                l.number == p.number
                    && l.size == p.size
                    && l.etag.as_ref().is_none_or(|e| *e == p.etag)
            }) {
                return Err(Error::Corrupt(format!(
                    "part {} of the upload to {url} is not in the bucket as it was sent \
                     ({} bytes, ETag {}); the upload is aborted",
                    p.number, p.size, p.etag
                )));
            }
        }
        let list: Vec<(u32, String)> = parts.iter().map(|p| (p.number, p.etag.clone())).collect();
        client.complete(&url.key, &upload_id, &list)?;
        // From here on there is no upload to abort.
        self.done = true;
        record::remove(&self.shared.record_path);
        let meta = [(META_SHA256, sha.as_str())];
        if size <= copy_limit {
            client.copy_self_with_metadata(&url.key, &meta)?;
        } else {
            copy_in_parts(&client, &url, size, copy_limit, &meta)?;
        }
        let head = client.head(&url.key)?.ok_or_else(|| {
            Error::Corrupt(format!("{url} is missing right after its upload completed"))
        })?;
        if head.size != size || head.sha256.as_deref() != Some(sha.as_str()) {
            return Err(Error::Corrupt(format!(
                "{url} holds {} bytes with SHA-256 metadata {:?} after the upload, expected \
                 {size} bytes and {sha}",
                head.size, head.sha256
            )));
        }
        Ok(UploadReport {
            url: url.clone(),
            size,
            sha256: sha,
            parts: parts_total,
            parts_sent: self.shared.sent.load(Ordering::Relaxed) as u32,
            parts_reused: self.shared.reused.load(Ordering::Relaxed) as u32,
            part_size: self.appender.part_size,
            resumed: self.resumed,
            notes: std::mem::take(&mut self.notes),
            record: self.shared.record_path.clone(),
        })
    }

    /// Stops the threads and aborts the multipart upload; removes the record. Returns the
    /// abort's error, if any (the record then stays, so that a later run aborts it).
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        self.shared.stop.store(true, Ordering::Relaxed);
        self.stop_threads();
        let r = self
            .shared
            .client
            .abort(&self.shared.url.key, &self.shared.upload_id);
        if r.is_ok() {
            record::remove(&self.shared.record_path);
        }
        r
    }

    /// Notes for the user (resume, aborted leftovers).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = self.abort_inner();
    }
}

/// Copies `url` onto itself in parts of at most `piece` bytes (UploadPartCopy) with `meta` set
/// at the creation of the new upload: the metadata step for objects larger than one
/// CopyObject takes.
fn copy_in_parts(
    client: &S3Client,
    url: &S3Url,
    size: u64,
    piece: u64,
    meta: &[(&str, &str)],
) -> Result<()> {
    let piece = piece.max(MIN_PART);
    let id = client.create_multipart(&url.key, meta)?;
    let r = (|| {
        let mut parts = Vec::new();
        let mut off = 0u64;
        let mut n = 1u32;
        while off < size {
            let len = piece.min(size - off);
            let etag = client.upload_part_copy(&url.key, &id, n, off, off + len - 1)?;
            parts.push((n, etag));
            off += len;
            n += 1;
        }
        client.complete(&url.key, &id, &parts)
    })();
    if r.is_err() {
        let _ = client.abort(&url.key, &id);
    }
    r
}

/// Where the artifact goes before the upload: straight into it, or (formats that write out of
/// order) into a local scratch file copied into the upload once the writer finished.
pub enum Mode {
    /// Append-only: the writer's main storage is the upload.
    Stream,
    /// The writer's main storage is a local scratch file.
    ViaScratch,
}

/// The [`Sink`] of an S3 output.
pub struct S3Sink {
    target: PathBuf,
    mode: Mode,
    params: Option<UploadParams>,
    url: S3Url,
    upload: Option<Upload>,
    main_scratch: Option<Arc<FileStorage>>,
    scratch: Vec<Arc<FileStorage>>,
    copy_limit: u64,
    outcome: Arc<Mutex<Outcome>>,
}

/// What an [`S3Sink`] did, read by its creator after the conversion (the sink itself is
/// consumed by the commit or dropped on an error).
#[derive(Debug, Default)]
pub struct Outcome {
    /// The completed upload.
    pub report: Option<UploadReport>,
    /// The first error of the upload threads (its kind and message as they were; the writer
    /// saw it as an I/O error).
    pub failure: Option<Error>,
    /// The multipart upload could not be aborted: why (its record stays, so that the next run
    /// to the same key aborts it).
    pub abort_error: Option<Error>,
    /// Notes of the upload's start (resume, aborted leftovers).
    pub notes: Vec<String>,
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        if let Some(u) = self.upload.take() {
            let failure = u.shared.take_failure();
            let notes = u.notes.clone();
            let abort = u.abort().err();
            let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
            o.failure = failure;
            o.abort_error = abort;
            o.notes = notes;
        }
    }
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Sink({})", self.url)
    }
}

impl S3Sink {
    /// A sink that uploads to `params.url` in `mode`; `outcome` receives what the upload did.
    pub fn new(
        params: UploadParams,
        mode: Mode,
        copy_limit: u64,
        outcome: Arc<Mutex<Outcome>>,
    ) -> S3Sink {
        let url = params.url.clone();
        S3Sink {
            target: PathBuf::from(url.to_string()),
            mode,
            params: Some(params),
            url,
            upload: None,
            main_scratch: None,
            scratch: Vec::new(),
            copy_limit,
            outcome,
        }
    }

    fn start(&mut self, estimate: Option<u64>) -> Result<&mut Upload> {
        if self.upload.is_none() {
            let mut p = self
                .params
                .take()
                .ok_or_else(|| Error::Internal("the S3 upload was started twice".into()))?;
            if let Some(e) = estimate {
                p.estimate = e;
            }
            self.upload = Some(Upload::start(p)?);
        }
        self.upload
            .as_mut()
            .ok_or_else(|| Error::Internal("no S3 upload".into()))
    }
}

impl Sink for S3Sink {
    fn target(&self) -> &Path {
        &self.target
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            random_access: matches!(self.mode, Mode::ViaScratch),
            siblings: false,
        }
    }

    fn main(&mut self) -> Result<Arc<dyn Storage>> {
        match self.mode {
            Mode::Stream => Ok(self.start(None)?.storage()),
            Mode::ViaScratch => {
                let s = Arc::new(unlinked_temp("scratch")?);
                self.main_scratch = Some(s.clone());
                Ok(s)
            }
        }
    }

    fn sibling(&mut self, name: &str) -> Result<Arc<dyn Storage>> {
        Err(Error::Unsupported(format!(
            "an S3 output is one object; an output that writes {name} beside it (a flat VMDK) \
             cannot be uploaded"
        )))
    }

    fn scratch(&mut self) -> Result<Arc<dyn Storage>> {
        let s = Arc::new(unlinked_temp("scratch")?);
        self.scratch.push(s.clone());
        Ok(s)
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(scratch) = self.main_scratch.take() {
            let len = scratch
                .len()
                .map_err(|e| Error::io("reading the scratch file's length", e))?;
            let upload = self.start(Some(len))?;
            let out = upload.storage();
            let mut buf = vec![0u8; 8 << 20];
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                scratch
                    .read_exact_at(&mut buf[..n], off)
                    .map_err(|e| Error::io("reading back the scratch file", e))?;
                out.write_all_at(&buf[..n], off)
                    .map_err(|e| Error::io(format!("uploading to {}", self.url), e))?;
                off += n as u64;
            }
        }
        let upload = match self.upload.take() {
            Some(u) => u,
            None => self.start(Some(0)).map(|_| ()).and_then(|()| {
                self.upload
                    .take()
                    .ok_or_else(|| Error::Internal("no S3 upload".into()))
            })?,
        };
        let report = upload.complete(self.copy_limit)?;
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report = Some(report);
        Ok(())
    }

    fn abandon(self: Box<Self>) {
        drop(self)
    }
}
