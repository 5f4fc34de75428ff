//! Raw images: the bytes of the disk, in a regular file or a block device.
//!
//! Reading is sparse-aware: holes in the file (`SEEK_DATA` / `SEEK_HOLE`) are reported as zero
//! extents without reading them. Writing leaves holes for zero blocks unless preallocation was
//! asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, ImageWriter, WriteReport, check_read_range,
};
use crate::storage::Storage;

/// A raw image opened for reading.
#[derive(Debug)]
pub struct RawReader {
    storage: Arc<dyn Storage>,
    size: u64,
    path: Option<PathBuf>,
}

impl RawReader {
    /// Wraps `storage`; its current length is the virtual size.
    pub fn new(storage: Arc<dyn Storage>, path: Option<&Path>) -> Result<Self> {
        let size = storage
            .len()
            .map_err(|e| Error::io("reading the size", e))?;
        Ok(RawReader {
            storage,
            size,
            path: path.map(Path::to_path_buf),
        })
    }
}

impl ImageReader for RawReader {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        if offset >= self.size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Data));
        }
        let seg = self
            .storage
            .segment(offset)
            .map_err(|e| Error::io(format!("looking for holes at offset {offset:#x}"), e))?;
        let len = seg.len.clamp(1, self.size - offset).min(max_len);
        let mut e = Extent::new(
            offset,
            len,
            if seg.data {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            },
        );
        if seg.data {
            e.host_offset = Some(offset);
        }
        Ok(e)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.size)?;
        self.storage.read_exact_at(buf, offset).map_err(|e| {
            Error::io(
                format!("reading {} bytes at offset {offset:#x}", buf.len()),
                e,
            )
        })
    }

    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::new(Format::Raw, self.size);
        info.filename = self.path.as_ref().map(|p| p.display().to_string());
        info.file_size = Some(self.size);
        info.allocated_bytes = self.storage.allocated_bytes().ok().flatten();
        info
    }
}

/// How a raw (or other) output reserves its space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Sparse: zero blocks are holes.
    #[default]
    Off,
    /// Metadata only (qcow2: every cluster mapped; raw: same as `off`).
    Metadata,
    /// Space reserved with `fallocate`, reading as zeros.
    Falloc,
    /// Every byte written, zeros included.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            other => Err(Error::InvalidArgument(format!(
                "unknown preallocation mode '{other}' (expected off, metadata, falloc or full)"
            ))),
        }
    }
}

/// How to write a raw image (`-o` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawWriteOptions {
    /// Space reservation (`preallocation=`).
    pub preallocation: Preallocation,
}

impl RawWriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &["preallocation"];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not a raw option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "preallocation" => self.preallocation = value.parse()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the options: a raw image has no metadata to preallocate.
    pub fn validate(&self) -> Result<()> {
        if self.preallocation == Preallocation::Metadata {
            return Err(Error::InvalidArgument(
                "preallocation=metadata means nothing for raw output (a raw image has no \
                 metadata to preallocate); use off, falloc or full"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Writes a raw image.
#[derive(Debug)]
pub struct RawWriter {
    storage: Arc<dyn Storage>,
    size: u64,
    prealloc: Preallocation,
    /// Data and zeros written so far (the rest of the file stays a hole).
    report: WriteReport,
    /// Writing over old data (a block device): zero ranges must be zeroed, not skipped.
    in_place: bool,
}

/// Granule of zero detection for raw output: holes smaller than a file system block are useless.
const RAW_GRANULE: u64 = 64 * 1024;

impl RawWriter {
    /// Creates a raw image of `size` bytes in `storage`, which must be empty (a new file).
    pub fn create(storage: Arc<dyn Storage>, size: u64, prealloc: Preallocation) -> Result<Self> {
        storage
            .set_len(size)
            .map_err(|e| Error::io(format!("setting the file size to {size}"), e))?;
        if prealloc == Preallocation::Falloc || prealloc == Preallocation::Full {
            storage
                .preallocate(0, size)
                .map_err(|e| Error::io(format!("preallocating {size} bytes"), e))?;
        }
        Ok(RawWriter {
            storage,
            size,
            prealloc,
            report: WriteReport::default(),
            in_place: false,
        })
    }

    /// Writes the first `size` bytes of `storage` in place, over whatever it holds (a block
    /// device): zero ranges are made to read as zeros through [`Storage::write_zeroes`], the
    /// storage keeps its length (bytes past `size` are left as they were).
    pub fn in_place(storage: Arc<dyn Storage>, size: u64) -> Result<Self> {
        let len = storage
            .len()
            .map_err(|e| Error::io("reading the size of the output", e))?;
        if len < size {
            return Err(Error::InvalidArgument(format!(
                "the output holds {len} bytes, less than the {size} bytes to write"
            )));
        }
        Ok(RawWriter {
            storage,
            size,
            prealloc: Preallocation::Off,
            report: WriteReport::default(),
            in_place: true,
        })
    }

    fn put(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.storage.write_all_at(buf, offset).map_err(|e| {
            Error::io(
                format!("writing {} bytes at offset {offset:#x}", buf.len()),
                e,
            )
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "write of {len} bytes at {offset:#x} goes past the end of the disk ({:#x})",
                self.size
            ))),
        }
    }
}

impl ImageWriter for RawWriter {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        RAW_GRANULE
    }

    fn needs_sequential(&self) -> bool {
        false
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.put(buf, offset)?;
        self.report.data += buf.len() as u64;
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if self.in_place {
            self.storage
                .write_zeroes(offset, len)
                .map_err(|e| Error::io(format!("zeroing {len} bytes at offset {offset:#x}"), e))?;
            self.report.zeros += len;
            return Ok(());
        }
        match self.prealloc {
            // A new sparse file already reads as zeros there.
            Preallocation::Off | Preallocation::Metadata | Preallocation::Falloc => Ok(()),
            Preallocation::Full => {
                let zeros = vec![0u8; RAW_GRANULE as usize * 16];
                let mut off = offset;
                while off < offset + len {
                    let n = (offset + len - off).min(zeros.len() as u64) as usize;
                    self.put(&zeros[..n], off)?;
                    self.report.zeros += n as u64;
                    off += n as u64;
                }
                Ok(())
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<WriteReport> {
        self.storage
            .sync()
            .map_err(|e| Error::io("syncing the output", e))?;
        self.report.complete(&[self.storage.as_ref()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn reads_and_maps() {
        let s = Arc::new(MemStorage::from_vec(vec![7u8; 4096]));
        let r = RawReader::new(s, None).unwrap();
        assert_eq!(r.virtual_size(), 4096);
        let e = r.map(0, u64::MAX).unwrap();
        assert_eq!((e.offset, e.len, e.kind), (0, 4096, ExtentKind::Data));
        assert_eq!(r.map(4096, 10).unwrap().len, 0);
        let mut b = [0u8; 16];
        r.read_at(&mut b, 4080).unwrap();
        assert_eq!(b, [7u8; 16]);
        assert!(r.read_at(&mut b, 4090).is_err());
    }

    #[test]
    fn in_place_zeroes_old_data_and_keeps_the_tail() {
        let s = Arc::new(MemStorage::from_vec(vec![0xEE; 300_000]));
        let mut w = Box::new(RawWriter::in_place(s.clone(), 200_000).unwrap());
        w.write_at(&[1, 2, 3], 100).unwrap();
        w.write_zeroes(65536, 70_000).unwrap();
        assert!(w.write_zeroes(199_999, 2).is_err());
        w.finish().unwrap();
        let v = s.to_vec();
        assert_eq!(v.len(), 300_000);
        assert_eq!(&v[100..103], &[1, 2, 3]);
        assert!(v[65536..135_536].iter().all(|&b| b == 0));
        assert_eq!(v[135_536], 0xEE);
        assert!(v[200_000..].iter().all(|&b| b == 0xEE));
        let small = Arc::new(MemStorage::from_vec(vec![0; 10]));
        assert!(RawWriter::in_place(small, 11).is_err());
    }

    #[test]
    fn writes() {
        let s = Arc::new(MemStorage::new());
        let mut w = Box::new(RawWriter::create(s.clone(), 8192, Preallocation::Off).unwrap());
        w.write_at(&[1, 2, 3], 100).unwrap();
        w.write_zeroes(0, 50).unwrap();
        assert!(w.write_at(&[1], 8192).is_err());
        w.finish().unwrap();
        let v = s.to_vec();
        assert_eq!(v.len(), 8192);
        assert_eq!(&v[100..103], &[1, 2, 3]);
    }
}

/// In-place updates of a raw image: a regular file or a block device. Zero ranges become
/// holes where the file system (or the device) can punch them, written zeros otherwise. The
/// size never changes: it is the file's (or the device's) current size. Built from a
/// [`RawReader`] ([`RawReader::into_updater`]) over writable storage; reads go through it.
#[derive(Debug)]
pub struct RawUpdater {
    r: RawReader,
}

impl RawReader {
    /// Turns this reader (over writable storage) into an updater of the same image.
    pub fn into_updater(self) -> RawUpdater {
        RawUpdater { r: self }
    }
}

/// Opens the raw image held in `storage` (writable) for in-place updates.
pub fn open_storage(storage: Arc<dyn Storage>) -> Result<RawUpdater> {
    Ok(RawReader::new(storage, None)?.into_updater())
}

impl RawUpdater {
    /// Opens the raw file or block device at `path` read-write.
    /// A block device is opened exclusively (`O_EXCL`): one that is mounted or in use is
    /// refused.
    pub fn open(path: &Path) -> Result<RawUpdater> {
        use crate::storage::FileStorage;
        use std::os::unix::fs::FileTypeExt as _;
        let ft = std::fs::metadata(path).map(|m| m.file_type());
        let device = ft.as_ref().is_ok_and(|t| t.is_block_device());
        if ft.is_ok_and(|t| !t.is_file() && !t.is_block_device()) {
            return Err(Error::InvalidArgument(
                "a raw update target must be a regular file or a block device".into(),
            )
            .in_file(path));
        }
        let storage = if device {
            FileStorage::open_block_device_for_writing(path)
        } else {
            FileStorage::open_read_write(path)
        }
        .map_err(|e| Error::io("opening for in-place update", e).in_file(path))?;
        RawReader::new(Arc::new(storage), Some(path))
            .map(RawReader::into_updater)
            .map_err(|e| e.in_file(path))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.r.size => Ok(()),
            _ => Err(self.named(Error::InvalidArgument(format!(
                "range of {len} bytes at offset {offset:#x} is past the end of the disk \
                 ({} bytes)",
                self.r.size
            )))),
        }
    }

    /// `e`, naming the file when the updater has one.
    fn named(&self, e: Error) -> Error {
        match &self.r.path {
            Some(p) => e.in_file(p),
            None => e,
        }
    }
}

impl crate::image::ImageUpdater for RawUpdater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.r.storage.write_all_at(buf, offset).map_err(|e| {
            self.named(Error::io(
                format!("writing {} bytes at offset {offset:#x}", buf.len()),
                e,
            ))
        })
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.r.storage.write_zeroes(offset, len).map_err(|e| {
            self.named(Error::io(
                format!("zeroing {len} bytes at offset {offset:#x}"),
                e,
            ))
        })
    }
    fn flush(&mut self) -> Result<()> {
        self.r
            .storage
            .sync()
            .map_err(|e| self.named(Error::io("syncing", e)))
    }
}

crate::image::reader_through!(RawUpdater, r);

#[cfg(test)]
mod updater_tests {
    use super::*;
    use crate::image::ImageUpdater;

    #[test]
    fn updates_in_place_and_refuses_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        std::fs::write(&p, vec![9u8; 1 << 20]).unwrap();
        let mut u = RawUpdater::open(&p).unwrap();
        assert_eq!(u.virtual_size(), 1 << 20);
        u.write_at(&[1, 2, 3], 10).unwrap();
        u.write_zeroes(4096, 8192).unwrap();
        u.write_zeroes(100, 7).unwrap();
        assert!(u.write_at(&[1], 1 << 20).is_err());
        assert!(u.write_zeroes((1 << 20) - 1, 2).is_err());
        assert!(u.write_zeroes(u64::MAX, 2).is_err());
        u.flush().unwrap();
        drop(u);
        let v = std::fs::read(&p).unwrap();
        assert_eq!(v.len(), 1 << 20);
        assert_eq!(&v[10..13], &[1, 2, 3]);
        assert!(v[100..107].iter().all(|&b| b == 0));
        assert_eq!(v[99], 9);
        assert_eq!(v[107], 9);
        assert!(v[4096..12288].iter().all(|&b| b == 0));
        assert_eq!(v[4095], 9);
        assert_eq!(v[12288], 9);
    }

    #[test]
    fn refuses_directories() {
        let dir = tempfile::tempdir().unwrap();
        let e = RawUpdater::open(dir.path()).unwrap_err();
        assert!(!e.chain().is_empty());
    }
}
