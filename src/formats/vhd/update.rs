//! In-place updates of an existing VHD (the target of an incremental sync).
//!
//! Fixed disks are written in place (the footer is never touched). Dynamic disks write into
//! allocated blocks and set their sector-bitmap bits; a write to an unallocated block appends
//! a new block where the footer was: the footer is first rewritten at the new end of the file
//! (so the file always ends with a valid footer), then the block's bitmap and data are written,
//! and only at [`flush`](ImageUpdater::flush), after a sync of the data, are the BAT entries
//! and changed sector bitmaps written, then synced again. A crash between flushes may leave
//! appended blocks unreferenced (leaked space), never a BAT entry pointing at garbage.
//!
//! `write_zeroes` on a dynamic disk leaves unallocated blocks alone (they read as zeros) and
//! writes zeros into allocated ones, keeping their sector-bitmap bits set: VHD has no way to
//! free a block safely, and a set bit over zeros reads the same as a clear one in a disk
//! without a parent. Differencing disks are refused (their blocks would need the parent's data
//! merged in).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{Format, ImageUpdater};
use crate::open::{OpenOptions, open};
use crate::storage::{FileStorage, Storage};

use super::dynamic::{HEADER_SIZE, UNALLOCATED, VhdDynamicHeader};
use super::footer::{DiskType, FOOTER_SIZE};
use super::reader::load_footer;

/// Changed sector bitmaps kept before an automatic flush writes them.
const MAX_PENDING: usize = 1024;

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

#[derive(Debug)]
struct Dynamic {
    block_size: u64,
    bitmap_size: u64,
    table_offset: u64,
    bat: Vec<u32>,
    /// BAT entries changed since the last flush (index -> new value).
    pending_bat: BTreeMap<u32, u32>,
    /// Sector bitmaps changed since the last flush (block -> bitmap bytes).
    pending_bitmaps: BTreeMap<u32, Vec<u8>>,
    /// Where the footer at the end of the file starts (and the next block goes).
    footer_offset: u64,
    /// The footer's bytes, rewritten after each appended block.
    footer: [u8; FOOTER_SIZE],
}

/// Writes into an existing image in place; see [`ImageUpdater`].
#[derive(Debug)]
pub struct VhdUpdater {
    storage: Arc<FileStorage>,
    virtual_size: u64,
    dynamic: Option<Dynamic>,
}

impl VhdUpdater {
    /// Opens the image at `path` read-write for in-place updates. Refuses images it cannot
    /// update safely (saying why).
    pub fn open(path: &Path) -> Result<VhdUpdater> {
        Self::open_inner(path).map_err(|e| e.in_file(path))
    }

    fn open_inner(path: &Path) -> Result<VhdUpdater> {
        let ro = FileStorage::open_read_only(path).map_err(io("opening the VHD".into()))?;
        let (footer, footer_len, _) = load_footer(&ro)?;
        if footer.disk_type == DiskType::Differencing {
            return Err(Error::Unsupported(
                "a differencing VHD cannot be updated in place (its blocks depend on its \
                 parent); convert it to a standalone image first"
                    .into(),
            ));
        }
        if footer_len != FOOTER_SIZE as u64 {
            return Err(Error::Unsupported(
                "the footer at the end of this VHD is damaged or old-style (511 bytes); \
                 convert the image to repair it before updating it in place"
                    .into(),
            ));
        }
        // The reader validates every structure (BAT entries inside the file, no overlaps).
        let opts = OpenOptions {
            format: Some(Format::Vhd),
            ..OpenOptions::default()
        };
        let reader = open(path, &opts)?;
        let virtual_size = reader.info().virtual_size;
        drop(reader);
        drop(ro);
        let storage =
            FileStorage::open_read_write(path).map_err(io("opening the VHD read-write".into()))?;
        let file_len = storage
            .len()
            .map_err(io("reading the length of the file".into()))?;
        let footer_offset = file_len - FOOTER_SIZE as u64;
        let dynamic = if footer.disk_type == DiskType::Fixed {
            None
        } else {
            let mut hb = vec![0u8; HEADER_SIZE];
            read(&storage, &mut hb, footer.data_offset)?;
            let header = VhdDynamicHeader::parse(&hb, footer.data_offset)?;
            let block_size = u64::from(header.block_size);
            let entries = virtual_size.div_ceil(block_size);
            let mut raw = vec![0u8; (entries * 4) as usize];
            read(&storage, &mut raw, header.table_offset)?;
            let bat: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // Every block must end before the footer: the next block is appended there.
            let span = header.bitmap_size() + block_size;
            for (i, &e) in bat.iter().enumerate() {
                if e != UNALLOCATED && u64::from(e) * 512 + span > footer_offset {
                    return Err(Error::Corrupt(format!(
                        "BAT entry {i} points at {:#x}: its block overlaps the footer at {footer_offset:#x}",
                        u64::from(e) * 512
                    )));
                }
            }
            let mut fb = [0u8; FOOTER_SIZE];
            read(&storage, &mut fb, footer_offset)?;
            Some(Dynamic {
                block_size,
                bitmap_size: header.bitmap_size(),
                table_offset: header.table_offset,
                bat,
                pending_bat: BTreeMap::new(),
                pending_bitmaps: BTreeMap::new(),
                footer_offset,
                footer: fb,
            })
        };
        Ok(VhdUpdater {
            storage: Arc::new(storage),
            virtual_size,
            dynamic,
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.virtual_size)
        {
            return Err(Error::InvalidArgument(format!(
                "a write of {len} bytes at offset {offset:#x} goes past the end of the \
                 {}-byte disk",
                self.virtual_size
            )));
        }
        Ok(())
    }
}

fn read(s: &FileStorage, buf: &mut [u8], offset: u64) -> Result<()> {
    s.read_exact_at(buf, offset).map_err(io(format!(
        "reading {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

fn write(s: &FileStorage, buf: &[u8], offset: u64) -> Result<()> {
    s.write_all_at(buf, offset).map_err(io(format!(
        "writing {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

impl Dynamic {
    /// The file offset of block `b`'s bitmap, allocating the block when `alloc` is set.
    fn block(&mut self, s: &FileStorage, b: u32, alloc: bool) -> Result<Option<u64>> {
        let e = self.bat.get(b as usize).copied().unwrap_or(UNALLOCATED);
        if e != UNALLOCATED {
            return Ok(Some(u64::from(e) * 512));
        }
        if !alloc {
            return Ok(None);
        }
        let start = self.footer_offset.next_multiple_of(512);
        let sector = u32::try_from(start / 512)
            .ok()
            .filter(|&x| x != UNALLOCATED)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "the VHD file is too large to address a new block at {start:#x}"
                ))
            })?;
        let end = start + self.bitmap_size + self.block_size;
        // The footer first, at the new end: the file keeps a valid footer whatever happens.
        write(s, &self.footer, end)?;
        // The bitmap (every sector present: the block is written whole, zeros elsewhere)
        // covers the old footer; the rest of the block is a hole, reading as zeros.
        write(s, &vec![0xff; self.bitmap_size as usize], start)?;
        self.footer_offset = end;
        self.pending_bat.insert(b, sector);
        if let Some(slot) = self.bat.get_mut(b as usize) {
            *slot = sector;
        }
        Ok(Some(start))
    }

    /// Sets the bits of sectors `first..first+count` in block `b` (bitmap at `bm`).
    fn mark(&mut self, s: &FileStorage, b: u32, bm: u64, first: u64, count: u64) -> Result<()> {
        if !self.pending_bitmaps.contains_key(&b) {
            let mut bits = vec![0u8; self.bitmap_size as usize];
            read(s, &mut bits, bm)?;
            let all =
                (first..first + count).all(|i| bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0);
            if all {
                return Ok(());
            }
            self.pending_bitmaps.insert(b, bits);
        }
        if let Some(bits) = self.pending_bitmaps.get_mut(&b) {
            for i in first..first + count {
                bits[(i / 8) as usize] |= 0x80 >> (i % 8);
            }
        }
        Ok(())
    }

    fn flush(&mut self, s: &FileStorage) -> Result<()> {
        if self.pending_bat.is_empty() && self.pending_bitmaps.is_empty() {
            return s.sync().map_err(io("syncing the VHD".into()));
        }
        // Data (and appended blocks with their footer) first.
        s.sync().map_err(io("syncing the VHD data".into()))?;
        for (&b, bits) in &self.pending_bitmaps {
            let e = self.bat.get(b as usize).copied().unwrap_or(UNALLOCATED);
            if e != UNALLOCATED {
                write(s, bits, u64::from(e) * 512)?;
            }
        }
        for (&i, &v) in &self.pending_bat {
            write(s, &v.to_be_bytes(), self.table_offset + u64::from(i) * 4)?;
        }
        s.sync().map_err(io("syncing the VHD metadata".into()))?;
        self.pending_bat.clear();
        self.pending_bitmaps.clear();
        Ok(())
    }
}

impl ImageUpdater for VhdUpdater {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let s = self.storage.as_ref();
        let Some(d) = self.dynamic.as_mut() else {
            return write(s, buf, offset);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let b = pos / d.block_size;
            let within = pos % d.block_size;
            let n = ((d.block_size - within) as usize).min(buf.len() - done);
            let bi = u32::try_from(b).map_err(|_| Error::Corrupt("block index overflow".into()))?;
            let Some(bm) = d.block(s, bi, true)? else {
                return Err(Error::Corrupt(format!("block {b} could not be allocated")));
            };
            write(s, &buf[done..done + n], bm + d.bitmap_size + within)?;
            let first = within / 512;
            let last = (within + n as u64).div_ceil(512);
            d.mark(s, bi, bm, first, last - first)?;
            done += n;
        }
        if d.pending_bitmaps.len() > MAX_PENDING {
            d.flush(s)?;
        }
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let s = self.storage.as_ref();
        let Some(d) = self.dynamic.as_mut() else {
            return s
                .write_zeroes(offset, len)
                .map_err(io(format!("zeroing {len} bytes at offset {offset:#x}")));
        };
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let b = pos / d.block_size;
            let within = pos % d.block_size;
            let n = (d.block_size - within).min(end - pos);
            let bi = u32::try_from(b).map_err(|_| Error::Corrupt("block index overflow".into()))?;
            if let Some(bm) = d.block(s, bi, false)? {
                let at = bm + d.bitmap_size + within;
                s.write_zeroes(at, n)
                    .map_err(io(format!("zeroing {n} bytes at offset {at:#x}")))?;
            }
            pos += n;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        let s = self.storage.as_ref();
        match self.dynamic.as_mut() {
            Some(d) => d.flush(s),
            None => s.sync().map_err(io("syncing the VHD".into())),
        }
    }
}
