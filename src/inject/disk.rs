//! Byte access for offline edits of a guest: the [`DiskRead`] / [`DiskIo`] traits the NTFS
//! writer and the partition code work on, a [`Window`] onto one partition, an in-memory disk for
//! tests, and [`TxDisk`], a transaction that collects every write in memory and commits them to
//! the image only at the end (so a failed operation leaves the image exactly as it was).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{Format, ImageReader, ImageUpdater};
use crate::open::OpenOptions;

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

/// A write transaction over an image: reads see the image with the transaction's writes applied;
/// writes stay in memory (in 4096-byte pages) until [`commit`](TxDisk::commit). Dropping it
/// without committing leaves the image untouched.
pub struct TxDisk {
    reader: Box<dyn ImageReader>,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl TxDisk {
    /// A transaction over `reader`'s virtual disk.
    pub fn new(reader: Box<dyn ImageReader>) -> TxDisk {
        let _ = &reader;
        unimplemented!("TxDisk::new: helper C")
    }

    /// The image being read.
    pub fn reader(&self) -> &dyn ImageReader {
        self.reader.as_ref()
    }

    /// Whether nothing has been written.
    pub fn is_unchanged(&self) -> bool {
        self.pages.is_empty()
    }

    /// The byte ranges written so far (merged, ascending; pages whose bytes equal the image's
    /// are not counted).
    pub fn changed_ranges(&self) -> Result<Vec<Range<u64>>> {
        unimplemented!("TxDisk::changed_ranges: helper C")
    }

    /// Writes every changed range through `updater` (the same image opened for update) and
    /// flushes it.
    pub fn commit(self, updater: &mut dyn ImageUpdater) -> Result<CommitStats> {
        let _ = updater;
        unimplemented!("TxDisk::commit: helper C")
    }
}

impl DiskRead for TxDisk {
    fn len(&self) -> u64 {
        self.reader.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        unimplemented!("TxDisk::read_at: helper C")
    }
}

impl DiskIo for TxDisk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        unimplemented!("TxDisk::write_at: helper C")
    }
}

/// An image file opened for an offline edit: its reader wrapped in a [`TxDisk`], and what is
/// needed to commit to the same file.
pub struct ImageTx {
    path: PathBuf,
    format: Format,
    /// The transaction; edit through it (or a [`Window`] on it).
    pub disk: TxDisk,
}

impl ImageTx {
    /// Opens `path` (any readable format; `opts` as for [`crate::open()`]) for an edit.
    /// Formats that cannot be updated in place are refused here, before any work is done.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<ImageTx> {
        let _ = (path, opts);
        unimplemented!("ImageTx::open: helper C")
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
    /// the transaction is unchanged.
    pub fn commit(self) -> Result<CommitStats> {
        unimplemented!("ImageTx::commit: helper C")
    }
}
