//! Byte access for offline edits of a guest: the [`DiskRead`] / [`DiskIo`] traits the NTFS
//! writer and the partition code work on, a [`Window`] onto one partition, an in-memory disk for
//! tests, and [`TxDisk`], a transaction that collects every write in memory and commits them to
//! the image only at the end (so a failed operation leaves the image exactly as it was).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::image::{Format, ImageReader, ImageUpdater, read_skipping_holes};
use crate::open::OpenOptions;
use crate::util::{is_zero, sync_dir};

/// Positional reads of a disk or volume.
pub trait DiskRead {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the size is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// Positional reads and writes of a disk or volume.
pub trait DiskIo: DiskRead {
    /// Writes `buf` at `offset`; writing past the end is an error.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;
}

impl<D: DiskRead + ?Sized> DiskRead for &D {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl<D: DiskRead + ?Sized> DiskRead for &mut D {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl<D: DiskIo + ?Sized> DiskIo for &mut D {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
}

fn check_range(what: &str, offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "{what}: {len} bytes at offset {offset:#x} reach past the end ({size:#x} bytes)"
        ))),
    }
}

/// A disk held in memory (tests, small volumes).
#[derive(Debug, Clone, Default)]
pub struct MemDisk(pub Vec<u8>);

impl DiskRead for MemDisk {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("reading the in-memory disk", offset, buf.len(), self.len())?;
        let o = offset as usize; // fits: checked against the Vec's length above
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
}

impl DiskIo for MemDisk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range("writing the in-memory disk", offset, buf.len(), self.len())?;
        let o = offset as usize; // fits: checked against the Vec's length above
        self.0[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}

/// A byte range of another disk (a partition), addressed from 0; accesses outside it are errors.
#[derive(Debug)]
pub struct Window<D> {
    inner: D,
    offset: u64,
    len: u64,
}

impl<D: DiskRead> Window<D> {
    /// The `len` bytes of `inner` from `offset`; the range must lie inside `inner`.
    pub fn new(inner: D, offset: u64, len: u64) -> Result<Window<D>> {
        match offset.checked_add(len) {
            Some(end) if end <= inner.len() => Ok(Window { inner, offset, len }),
            _ => Err(Error::InvalidArgument(format!(
                "a partition of {len} bytes at {offset:#x} reaches past the end of the disk ({} bytes)",
                inner.len()
            ))),
        }
    }

    /// Where the window starts on the inner disk.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The inner disk.
    pub fn into_inner(self) -> D {
        self.inner
    }
}

impl<D: DiskRead> DiskRead for Window<D> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("reading the partition", offset, buf.len(), self.len)?;
        self.inner.read_at(buf, self.offset + offset)
    }
}

impl<D: DiskIo> DiskIo for Window<D> {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range("writing the partition", offset, buf.len(), self.len)?;
        self.inner.write_at(buf, self.offset + offset)
    }
}

/// What [`TxDisk::commit`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Bytes written to the image.
    pub bytes_written: u64,
    /// Separate byte ranges written.
    pub ranges: usize,
}

/// Size of the pages a [`TxDisk`] keeps its writes in.
pub const PAGE: u64 = 4096;

/// Largest single write to the updater during a commit.
const COMMIT_CHUNK: usize = 1 << 20;

/// Largest stretch of image read at once when comparing pages with the image.
const COMPARE_CHUNK: u64 = 4 << 20;

/// A write transaction over an image: reads see the image with the transaction's writes applied;
/// writes stay in memory (in 4096-byte pages) until [`commit`](TxDisk::commit). Dropping it
/// without committing leaves the image untouched.
pub struct TxDisk {
    reader: Box<dyn ImageReader>,
    /// Page index -> the page's bytes as written (the last page may be shorter than [`PAGE`]).
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl std::fmt::Debug for TxDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxDisk")
            .field("format", &self.reader.format())
            .field("virtual_size", &self.reader.virtual_size())
            .field("pages", &self.pages.len())
            .finish()
    }
}

impl TxDisk {
    /// A transaction over `reader`'s virtual disk.
    pub fn new(reader: Box<dyn ImageReader>) -> TxDisk {
        TxDisk {
            reader,
            pages: BTreeMap::new(),
        }
    }

    /// The image being read.
    pub fn reader(&self) -> &dyn ImageReader {
        self.reader.as_ref()
    }

    /// Whether nothing has been written.
    pub fn is_unchanged(&self) -> bool {
        self.pages.is_empty()
    }

    /// Bytes held in memory by pending writes.
    pub fn pending_bytes(&self) -> u64 {
        self.pages.values().map(|p| p.len() as u64).sum()
    }

    /// Length of page `idx` (the last page of a disk whose size is not a multiple of [`PAGE`]
    /// is shorter).
    fn page_len(&self, idx: u64) -> usize {
        let start = idx * PAGE;
        (self.len().saturating_sub(start)).min(PAGE) as usize
    }

    /// The pages whose bytes differ from the image's, as (page index, page) in ascending order.
    fn changed_pages(&self) -> Result<Vec<(u64, &[u8])>> {
        let mut out = Vec::new();
        let mut image = Vec::new();
        let mut iter = self.pages.iter().peekable();
        while let Some((&first, page)) = iter.next() {
            // A run of consecutive pages, read from the image in one go.
            let mut run: Vec<(u64, &[u8])> = vec![(first, page)];
            let mut bytes = page.len() as u64;
            while let Some(&(&next, p)) = iter.peek() {
                let last = run.last().map(|r| r.0).unwrap_or(first);
                if next != last + 1 || bytes + p.len() as u64 > COMPARE_CHUNK {
                    break;
                }
                bytes += p.len() as u64;
                run.push((next, p));
                iter.next();
            }
            image.clear();
            image.resize(bytes as usize, 0);
            read_skipping_holes(self.reader.as_ref(), &mut image, first * PAGE)?;
            let mut at = 0usize;
            for (idx, p) in run {
                let orig = image.get(at..at + p.len()).unwrap_or(&[]);
                if orig != p {
                    out.push((idx, p));
                }
                at += p.len();
            }
        }
        Ok(out)
    }

    /// The byte ranges written so far (merged, ascending; pages whose bytes equal the image's
    /// are not counted).
    pub fn changed_ranges(&self) -> Result<Vec<Range<u64>>> {
        Ok(merge_pages(&self.changed_pages()?)
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Writes every changed range through `updater` (the same image opened for update) and
    /// flushes it.
    pub fn commit(self, updater: &mut dyn ImageUpdater) -> Result<CommitStats> {
        let changed = self.changed_pages()?;
        let runs = merge_pages(&changed);
        let stats = write_runs(&runs, self.len(), updater, None)?;
        updater.flush()?;
        Ok(stats)
    }
}

/// Consecutive changed pages merged into ranges, each with its pages in order.
fn merge_pages<'a>(pages: &[(u64, &'a [u8])]) -> Vec<(Range<u64>, Vec<&'a [u8]>)> {
    let mut out: Vec<(Range<u64>, Vec<&'a [u8]>)> = Vec::new();
    for &(idx, p) in pages {
        let start = idx * PAGE;
        let end = start + p.len() as u64;
        match out.last_mut() {
            Some((r, ps)) if r.end == start => {
                r.end = end;
                ps.push(p);
            }
            _ => out.push((start..end, vec![p])),
        }
    }
    out
}

/// Writes the runs through `updater` in chunks of up to [`COMMIT_CHUNK`] bytes. With
/// `stop_after = Some(n)` (crash simulation), stops once `n` bytes have been written.
fn write_runs(
    runs: &[(Range<u64>, Vec<&[u8]>)],
    disk_len: u64,
    updater: &mut dyn ImageUpdater,
    stop_after: Option<u64>,
) -> Result<CommitStats> {
    if updater.virtual_size() != disk_len {
        return Err(Error::InvalidArgument(format!(
            "the image opened for update has {} bytes of virtual disk, the transaction {disk_len}",
            updater.virtual_size()
        )));
    }
    let mut stats = CommitStats::default();
    let mut buf: Vec<u8> = Vec::with_capacity(COMMIT_CHUNK);
    for (range, pages) in runs {
        let mut pos = range.start;
        for p in pages {
            if buf.len() + p.len() > COMMIT_CHUNK {
                updater.write_at(&buf, pos)?;
                pos += buf.len() as u64;
                stats.bytes_written += buf.len() as u64;
                buf.clear();
                if stop_after.is_some_and(|n| stats.bytes_written >= n) {
                    return Ok(stats);
                }
            }
            buf.extend_from_slice(p);
        }
        if !buf.is_empty() {
            updater.write_at(&buf, pos)?;
            stats.bytes_written += buf.len() as u64;
            buf.clear();
        }
        stats.ranges += 1;
        if stop_after.is_some_and(|n| stats.bytes_written >= n) {
            return Ok(stats);
        }
    }
    Ok(stats)
}

impl DiskRead for TxDisk {
    fn len(&self) -> u64 {
        self.reader.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("reading the image", offset, buf.len(), self.len())?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let at = (pos - offset) as usize;
            if let Some(page) = self.pages.get(&idx) {
                let in_page = (pos - idx * PAGE) as usize;
                let n = ((end - pos) as usize).min(page.len() - in_page);
                buf[at..at + n].copy_from_slice(&page[in_page..in_page + n]);
                pos += n as u64;
                continue;
            }
            // Up to the next pending page (or the end): straight from the image.
            let next = self
                .pages
                .range(idx + 1..)
                .next()
                .map(|(&i, _)| i * PAGE)
                .unwrap_or(u64::MAX)
                .min(end);
            let n = (next - pos) as usize;
            read_skipping_holes(self.reader.as_ref(), &mut buf[at..at + n], pos)?;
            pos = next;
        }
        Ok(())
    }
}

impl DiskIo for TxDisk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range("writing the image", offset, buf.len(), self.len())?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let plen = self.page_len(idx);
            let in_page = (pos - idx * PAGE) as usize;
            let n = ((end - pos) as usize).min(plen - in_page);
            let at = (pos - offset) as usize;
            if !self.pages.contains_key(&idx) {
                let mut page = vec![0u8; plen].into_boxed_slice();
                if n < plen {
                    read_skipping_holes(self.reader.as_ref(), &mut page, idx * PAGE)?;
                }
                self.pages.insert(idx, page);
            }
            if let Some(page) = self.pages.get_mut(&idx) {
                page[in_page..in_page + n].copy_from_slice(&buf[at..at + n]);
            }
            pos += n as u64;
        }
        Ok(())
    }
}

/// The undo journal written beside an image while a commit is in progress.
pub fn journal_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(".diskconv-undo");
    PathBuf::from(name)
}

const JOURNAL_MAGIC: &[u8; 16] = b"DISKCONV-UNDO-01";

/// Largest undo journal [`rollback`] reads.
const MAX_JOURNAL: u64 = 1 << 34;

/// Serialises the undo journal: magic, virtual size, range count, then per range its offset,
/// length and original bytes, then the SHA-256 of everything before it.
fn encode_journal(virtual_size: u64, ranges: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let total: usize = ranges.iter().map(|(_, d)| d.len() + 16).sum();
    let mut out = Vec::with_capacity(32 + total + 32);
    out.extend_from_slice(JOURNAL_MAGIC);
    out.extend_from_slice(&virtual_size.to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    for (off, data) in ranges {
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Why a journal could not be decoded.
enum JournalProblem {
    /// Shorter than its content says, or its checksum does not match: it was being written
    /// when the commit stopped, so the image was not touched yet.
    Incomplete(String),
    /// Not a journal of ours, or impossible content.
    Invalid(String),
}

type JournalRanges = (u64, Vec<(u64, Vec<u8>)>);

fn decode_journal(bytes: &[u8]) -> std::result::Result<JournalRanges, JournalProblem> {
    let le = |at: usize| -> Option<u64> {
        bytes
            .get(at..at.checked_add(8)?)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.len() < 16 {
        return Err(JournalProblem::Incomplete(format!(
            "only {} bytes long",
            bytes.len()
        )));
    }
    if bytes.get(..16) != Some(&JOURNAL_MAGIC[..]) {
        return Err(JournalProblem::Invalid(
            "it does not start with the diskconv undo journal signature".into(),
        ));
    }
    if bytes.len() < 32 + 32 {
        return Err(JournalProblem::Incomplete(format!(
            "only {} bytes long",
            bytes.len()
        )));
    }
    let body_len = bytes.len() - 32;
    let (body, sum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != sum {
        return Err(JournalProblem::Incomplete(
            "its checksum does not match its content".into(),
        ));
    }
    let (Some(virtual_size), Some(count)) = (le(16), le(24)) else {
        return Err(JournalProblem::Invalid("its header is truncated".into()));
    };
    let mut at = 32usize;
    let mut ranges = Vec::new();
    for i in 0..count {
        let (Some(off), Some(len)) = (le(at), le(at + 8)) else {
            return Err(JournalProblem::Invalid(format!(
                "range {i} of {count}: its header at byte {at} is past the end of the journal"
            )));
        };
        let start = at + 16;
        let data = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= body_len)
            .and_then(|e| body.get(start..e));
        let Some(data) = data else {
            return Err(JournalProblem::Invalid(format!(
                "range {i} of {count} ({len} bytes at byte {start}) reaches past the end of the journal"
            )));
        };
        if off.checked_add(len).is_none_or(|e| e > virtual_size) {
            return Err(JournalProblem::Invalid(format!(
                "range {i} ({len} bytes at disk offset {off:#x}) reaches past the end of the disk \
                 ({virtual_size} bytes)"
            )));
        }
        ranges.push((off, data.to_vec()));
        at = start + data.len();
    }
    if at != body_len {
        return Err(JournalProblem::Invalid(format!(
            "{} bytes follow its last range",
            body_len - at
        )));
    }
    Ok((virtual_size, ranges))
}

/// What [`rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    /// The journal was complete: these ranges were restored to their original bytes.
    Restored {
        /// Ranges restored.
        ranges: usize,
        /// Bytes restored.
        bytes: u64,
    },
    /// The journal was incomplete (the commit stopped while writing it, before touching the
    /// image): it was removed and the image left as it is.
    JournalIncomplete {
        /// Why it was judged incomplete.
        reason: String,
    },
}

/// Takes an exclusive advisory lock (`flock`) on the image file, so two edits (or an edit and a
/// rollback) cannot run on one image at once. Held until the returned file is dropped.
fn lock_image(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io("opening the image for an edit", e).in_file(path))?;
    // A lock can be held for a moment by a child process forked (for an unrelated command)
    // between our open and its exec: retry briefly before calling the image busy.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(f),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && attempt <= 40 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(Error::InvalidArgument(
                    "the image is being edited by another diskconv process (it holds the \
                     image's lock)"
                        .into(),
                )
                .in_file(path));
            }
            Err(e) => return Err(Error::io("locking the image", e.into()).in_file(path)),
        }
    }
}

/// Restores an image whose commit was interrupted, from the undo journal beside it
/// (`<image>.diskconv-undo`), then removes the journal. An image without a journal is an error.
pub fn rollback(image: &Path) -> Result<RollbackOutcome> {
    let _lock = lock_image(image)?;
    let jpath = journal_path(image);
    let err = |op: String, e| Error::io(op, e).in_file(&jpath);
    let mut f = match std::fs::File::open(&jpath) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::InvalidArgument(format!(
                "there is no undo journal {} beside the image: nothing to roll back",
                jpath.display()
            ))
            .in_file(image));
        }
        Err(e) => return Err(err("opening the undo journal".into(), e)),
    };
    let size = f
        .metadata()
        .map_err(|e| err("reading the undo journal's size".into(), e))?
        .len();
    if size > MAX_JOURNAL {
        return Err(Error::InvalidArgument(format!(
            "the undo journal is {size} bytes, more than the {MAX_JOURNAL} bytes diskconv writes"
        ))
        .in_file(&jpath));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.read_to_end(&mut bytes)
        .map_err(|e| err("reading the undo journal".into(), e))?;
    drop(f);
    let (virtual_size, ranges) = match decode_journal(&bytes) {
        Ok(v) => v,
        Err(JournalProblem::Incomplete(reason)) => {
            std::fs::remove_file(&jpath)
                .map_err(|e| err("removing the incomplete undo journal".into(), e))?;
            sync_dir(&jpath)?;
            return Ok(RollbackOutcome::JournalIncomplete { reason });
        }
        Err(JournalProblem::Invalid(why)) => {
            return Err(Error::Corrupt(format!(
                "the undo journal cannot be used: {why}; it was left in place"
            ))
            .in_file(&jpath));
        }
    };
    let mut up = crate::sync::target::open_updater(image, None)?;
    if up.virtual_size() != virtual_size {
        return Err(Error::InvalidArgument(format!(
            "the undo journal is for a disk of {virtual_size} bytes, the image has {} bytes; \
             it was left in place",
            up.virtual_size()
        ))
        .in_file(image));
    }
    let mut restored = 0u64;
    for (off, data) in &ranges {
        if is_zero(data) {
            up.write_zeroes(*off, data.len() as u64)?;
        } else {
            up.write_at(data, *off)?;
        }
        restored += data.len() as u64;
    }
    up.flush()?;
    drop(up);
    std::fs::remove_file(&jpath).map_err(|e| err("removing the undo journal".into(), e))?;
    sync_dir(&jpath)?;
    Ok(RollbackOutcome::Restored {
        ranges: ranges.len(),
        bytes: restored,
    })
}

/// Where [`ImageTx::commit_interrupted`] stops, simulating a crash.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the undo journal is written and synced.
    AfterJournal,
    /// Half-way through writing the ranges (no flush).
    MidWrites,
    /// After writing and flushing everything, before the journal is removed.
    BeforeJournalRemoval,
    /// Half-way through writing the ranges, a write fails: the commit restores the original
    /// bytes itself and removes the journal.
    FailMidWrites,
}

/// An image file opened for an offline edit: its reader wrapped in a [`TxDisk`], and what is
/// needed to commit to the same file.
pub struct ImageTx {
    path: PathBuf,
    format: Format,
    updater: Box<dyn ImageUpdater>,
    /// The image file, locked (`flock`, exclusive) for as long as the edit lasts.
    _lock: std::fs::File,
    /// The transaction; edit through it (or a [`Window`] on it).
    pub disk: TxDisk,
}

impl std::fmt::Debug for ImageTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageTx")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("disk", &self.disk)
            .finish()
    }
}

impl ImageTx {
    /// Opens `path` (any readable format; `opts` as for [`crate::open()`]) for an edit.
    /// Formats that cannot be updated in place are refused here, before any work is done, and
    /// so is an image with an undo journal beside it (an interrupted commit: see [`rollback`]).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<ImageTx> {
        let lock = lock_image(path)?;
        let jpath = journal_path(path);
        if jpath.exists() {
            return Err(Error::InvalidArgument(format!(
                "an earlier edit of this image was interrupted while committing (undo journal {} \
                 present); run `diskconv ntfs rollback {}` to restore the image first",
                jpath.display(),
                path.display()
            ))
            .in_file(path));
        }
        if let Some(s) = &opts.snapshot {
            return Err(Error::InvalidArgument(format!(
                "snapshot '{s}' is read-only: an edit can only change the active layer"
            ))
            .in_file(path));
        }
        let reader = crate::open(path, opts)?;
        let format = reader.format();
        let updater = crate::sync::target::open_updater(path, Some(format))?;
        if updater.virtual_size() != reader.virtual_size() {
            return Err(Error::InvalidArgument(format!(
                "the image reads as {} bytes but opens for update as {} bytes",
                reader.virtual_size(),
                updater.virtual_size()
            ))
            .in_file(path));
        }
        Ok(ImageTx {
            path: path.to_path_buf(),
            format,
            updater,
            _lock: lock,
            disk: TxDisk::new(reader),
        })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its container format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Commits the transaction to the file (in-place updater; flushed). Nothing is written when
    /// the transaction is unchanged. Crash-safe: the original bytes of every changed range are
    /// first written and synced to an undo journal beside the image (`<image>.diskconv-undo`),
    /// removed once the image is flushed; an interrupted commit is undone by [`rollback`].
    pub fn commit(self) -> Result<CommitStats> {
        self.commit_until(None)
    }

    /// Commits but stops at `at`, as a crash there would (tests of [`rollback`]).
    #[doc(hidden)]
    pub fn commit_interrupted(self, at: CrashPoint) -> Result<CommitStats> {
        self.commit_until(Some(at))
    }

    fn commit_until(mut self, crash: Option<CrashPoint>) -> Result<CommitStats> {
        let path = self.path.clone();
        let changed = self.disk.changed_pages()?;
        if changed.is_empty() {
            return Ok(CommitStats::default());
        }
        let runs = merge_pages(&changed);
        let mut originals = Vec::with_capacity(runs.len());
        for (r, _) in &runs {
            let mut orig = vec![0u8; (r.end - r.start) as usize];
            read_skipping_holes(self.disk.reader.as_ref(), &mut orig, r.start)?;
            originals.push((r.start, orig));
        }
        let journal = encode_journal(self.disk.len(), &originals);
        let jpath = journal_path(&path);
        let jerr = |op: &str, e| Error::io(op.to_string(), e).in_file(&jpath);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&jpath)
            .map_err(|e| jerr("creating the undo journal", e))
            .and_then(|mut f| {
                f.write_all(&journal)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| jerr("writing the undo journal", e))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&jpath);
            return Err(e);
        }
        sync_dir(&jpath)?;
        drop(journal);
        if crash == Some(CrashPoint::AfterJournal) {
            return Ok(CommitStats::default());
        }
        let total: u64 = runs.iter().map(|(r, _)| r.end - r.start).sum();
        let half = match crash {
            Some(CrashPoint::MidWrites | CrashPoint::FailMidWrites) => Some(total / 2),
            _ => None,
        };
        let disk_len = self.disk.len();
        let result = write_runs(&runs, disk_len, self.updater.as_mut(), half).and_then(|stats| {
            if crash == Some(CrashPoint::FailMidWrites) {
                return Err(Error::io(
                    "writing the changes (simulated failure)",
                    std::io::Error::other("simulated"),
                ));
            }
            if half.is_none() {
                self.updater.flush()?;
            }
            Ok(stats)
        });
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                // Put the original bytes back through the same updater; the journal stays
                // unless that worked.
                let restored = originals
                    .iter()
                    .try_for_each(|(off, data)| self.updater.write_at(data, *off))
                    .and_then(|()| self.updater.flush());
                return match restored {
                    Ok(()) => {
                        std::fs::remove_file(&jpath)
                            .map_err(|e| jerr("removing the undo journal", e))?;
                        sync_dir(&jpath)?;
                        Err(e.in_file(&path))
                    }
                    Err(r) => Err(Error::Corrupt(format!(
                        "committing the edit failed ({}) and restoring the original bytes failed \
                         too ({}); the undo journal {} is kept: run `diskconv ntfs rollback {}`",
                        e.chain(),
                        r.chain(),
                        jpath.display(),
                        path.display()
                    ))
                    .in_file(&path)),
                };
            }
        };
        if half.is_some() || crash == Some(CrashPoint::BeforeJournalRemoval) {
            return Ok(stats);
        }
        drop(originals);
        std::fs::remove_file(&jpath).map_err(|e| jerr("removing the undo journal", e))?;
        sync_dir(&jpath)?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_damage() {
        let ranges = vec![(4096u64, vec![1u8; 4096]), (65536, vec![0u8; 8192])];
        let j = encode_journal(1 << 20, &ranges);
        let (size, back) = decode_journal(&j).ok().unwrap_or_default();
        assert_eq!(size, 1 << 20);
        assert_eq!(back, ranges);
        // Truncated: incomplete.
        assert!(matches!(
            decode_journal(&j[..j.len() - 1]),
            Err(JournalProblem::Incomplete(_))
        ));
        // Wrong magic: invalid.
        let mut bad = j.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_journal(&bad),
            Err(JournalProblem::Invalid(_))
        ));
        // A range past the end of the disk (checksum recomputed): invalid.
        let j2 = encode_journal(4096, &ranges);
        assert!(matches!(
            decode_journal(&j2),
            Err(JournalProblem::Invalid(_))
        ));
    }

    #[test]
    fn merge_joins_adjacent_pages_only() {
        let a = [0u8; 4096];
        let pages = vec![(1u64, &a[..]), (2, &a[..]), (5, &a[..100])];
        let m = merge_pages(&pages);
        let r: Vec<_> = m.iter().map(|(r, p)| (r.clone(), p.len())).collect();
        assert_eq!(r, vec![(4096..12288, 2), (20480..20580, 1)]);
    }
}
