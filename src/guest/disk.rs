//! Byte access for offline edits of a guest: the [`DiskRead`] / [`DiskIo`] traits the NTFS
//! writer and the partition code work on, a [`Window`] onto one partition, the in-memory disk
//! ([`MemStorage`]), and [`TxDisk`], a transaction that collects every write in memory and commits them to
//! the image only at the end (so a failed operation leaves the image exactly as it was).
//! [`ImageTx`] is that transaction over an image file: locked, and committed crash-safely
//! through the undo journal of [`crate::files`].
//!
//! Why a second byte-access family beside [`Storage`]: a guest disk is the *virtual* disk of an
//! image, of a fixed size, read through an [`ImageReader`] (holes, backing chains) and written
//! only through a transaction, so [`DiskRead`] is the smallest thing the partition and NTFS
//! code need (a size and exact reads, with crate errors) and [`DiskIo`] adds exact writes that
//! take `&mut self` (an overlay needs no lock). Everything else adapts to it: any opened image
//! (`dyn ImageReader`) is a `DiskRead`, [`TxDisk`] is a `DiskIo` over one, and the one
//! in-memory store, [`MemStorage`], is both (fixed-size here, growable as a `Storage`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::{ImageLock, RollbackOutcome, UndoJournal, journal_path};
use crate::image::{Format, ImageReader, ImageUpdater, read_skipping_holes};
use crate::open::OpenOptions;
use crate::storage::MemStorage;
#[cfg(doc)]
use crate::storage::Storage;

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

impl<D: DiskRead + ?Sized> DiskRead for Box<D> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl<D: DiskRead + ?Sized> DiskRead for std::sync::Arc<D> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

/// An opened image read as a guest disk: its virtual disk, read-only. Holes (unallocated
/// ranges) read as zeros without being read. Wrap it in a [`TxDisk`] to write.
impl DiskRead for dyn ImageReader + '_ {
    fn len(&self) -> u64 {
        self.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("reading the image", offset, buf.len(), self.virtual_size())?;
        read_skipping_holes(self, buf, offset)?;
        Ok(())
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

/// The in-memory disk is the crate's one in-memory byte store, [`MemStorage`]: a fixed-size
/// disk here (reads and writes past its end are errors, where the [`Storage`] view grows it).
impl DiskRead for MemStorage {
    fn len(&self) -> u64 {
        self.with_bytes(|d| d.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.with_bytes(|d| {
            check_range(
                "reading the in-memory disk",
                offset,
                buf.len(),
                d.len() as u64,
            )?;
            let o = offset as usize; // fits: checked against the Vec's length above
            buf.copy_from_slice(&d[o..o + buf.len()]);
            Ok(())
        })
    }
}

impl DiskIo for MemStorage {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let d = self.bytes_mut();
        check_range(
            "writing the in-memory disk",
            offset,
            buf.len(),
            d.len() as u64,
        )?;
        let o = offset as usize; // fits: checked against the Vec's length above
        d[o..o + buf.len()].copy_from_slice(buf);
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

/// What [`ImageTx::commit`] wrote.
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
/// writes stay in memory (in 4096-byte pages) until the [`ImageTx`] holding it commits them.
/// Dropping it without committing leaves the image untouched.
pub struct TxDisk {
    reader: std::sync::Arc<dyn ImageReader>,
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
            reader: reader.into(),
            pages: BTreeMap::new(),
        }
    }

    /// The image being read.
    pub fn reader(&self) -> &dyn ImageReader {
        self.reader.as_ref()
    }

    /// A shared handle on the image as it was before this transaction (its writes are not
    /// seen through it): for reading what to plan, with readers that need to own their disk.
    pub fn original(&self) -> std::sync::Arc<dyn ImageReader> {
        self.reader.clone()
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

/// Restores an image whose commit was interrupted, from the undo journal beside it
/// (`<image>.diskconv-undo`), then removes the journal (see [`crate::files::rollback`], which
/// this calls with the image's in-place updater). An image without a journal is an error.
///
/// For a remote disk (an NBD URI) the journal is the local one [`ImageTx::commit`] wrote in
/// the current folder, and no lock is taken.
pub fn rollback(image: &Path) -> Result<RollbackOutcome> {
    if crate::net::is_nbd_path(image) {
        return crate::files::rollback_unlocked(&journal_base(image), |_| nbd_updater(image));
    }
    crate::files::rollback(image, |p| crate::sync::target::open_updater(p, None))
}

/// The local path the undo journal of `image` is named after: the image itself, or for an
/// NBD URI a file in the current folder named after the URI's identity
/// (`.nbd+unix___export_socket=_run_x.sock` gives `...diskconv-undo`).
fn journal_base(image: &Path) -> PathBuf {
    match crate::net::NbdUri::parse_path(image) {
        Some(u) => {
            let name: String = u
                .id()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "+-=.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            PathBuf::from(format!(".{name}"))
        }
        None => image.to_path_buf(),
    }
}

/// A writable NBD export as the updater of a raw disk.
fn nbd_updater(uri: &Path) -> Result<Box<dyn ImageUpdater>> {
    let sink = crate::net::NbdSink::connect(uri, &crate::net::NbdOptions::default())?;
    let storage: std::sync::Arc<dyn crate::storage::Storage> = sink.storage().clone();
    let r = crate::formats::raw::RawReader::new(storage, None).map_err(|e| e.in_file(uri))?;
    Ok(Box::new(crate::image::NamedUpdater::new(
        Box::new(r.into_updater()),
        uri,
    )))
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
    /// The image file, locked for as long as the edit lasts (a remote disk is not locked).
    _lock: Option<ImageLock>,
    /// The path the undo journal is named after (the image, or a local name for a remote
    /// disk).
    journal_base: PathBuf,
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
    ///
    /// `path` may be an NBD URI: the export is edited in place as a raw disk, its undo journal
    /// is kept in the current folder (see [`rollback`]), and nothing locks it against other
    /// writers (the server's business).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<ImageTx> {
        let remote = crate::net::is_nbd_path(path);
        let lock = if remote {
            None
        } else {
            Some(ImageLock::acquire(path)?)
        };
        let journal_base = journal_base(path);
        let jpath = journal_path(&journal_base);
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
        let updater = if remote {
            if !format.is_raw() {
                return Err(Error::Unsupported(format!(
                    "an NBD export is edited in place as a raw disk, not as the {format} image \
                     it holds"
                ))
                .in_file(path));
            }
            nbd_updater(path)?
        } else {
            crate::sync::target::open_updater(path, Some(format))?
        };
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
            journal_base,
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
        let journal = UndoJournal::create(&self.journal_base, self.disk.len(), &originals)?;
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
                        journal.remove()?;
                        Err(e.in_file(&path))
                    }
                    Err(r) => Err(Error::Corrupt(format!(
                        "committing the edit failed ({}) and restoring the original bytes failed \
                         too ({}); the undo journal {} is kept: run `diskconv ntfs rollback {}`",
                        e.chain(),
                        r.chain(),
                        journal.path().display(),
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
        journal.remove()?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_disk_is_fixed_size() {
        let mut m = MemStorage::from_vec(vec![1, 2, 3, 4]);
        let mut b = [0u8; 2];
        m.read_at(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        let e = DiskRead::read_at(&m, &mut b, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading the in-memory disk: 2 bytes at offset 0x3 reach past the end (0x4 bytes)"
        );
        m.write_at(&[9, 9], 0).unwrap();
        let e = m.write_at(&[9, 9], 3).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert_eq!(m.into_vec(), vec![9, 9, 3, 4]);
    }

    #[test]
    fn an_image_reads_as_a_disk_and_a_window_of_it() {
        use std::sync::Arc;
        let bytes: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let storage = Arc::new(MemStorage::from_vec(bytes.clone()));
        let reader: Box<dyn ImageReader> =
            Box::new(crate::formats::raw::RawReader::new(storage, None).unwrap());
        let disk: &dyn ImageReader = reader.as_ref();
        assert_eq!(DiskRead::len(&disk), 8192);
        let w = Window::new(disk, 4096, 4096).unwrap();
        let mut b = [0u8; 4];
        DiskRead::read_at(&w, &mut b, 10).unwrap();
        assert_eq!(b[..], bytes[4106..4110]);
        let e = DiskRead::read_at(&disk, &mut b, 8190).unwrap_err();
        assert!(e.to_string().starts_with("reading the image: "), "{e}");
        // The same bytes as through a transaction over it.
        let tx = TxDisk::new(reader);
        let mut c = [0u8; 4];
        tx.read_at(&mut c, 4106).unwrap();
        assert_eq!(b, c);
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
