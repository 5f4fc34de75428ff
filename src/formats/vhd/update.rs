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

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{Format, ImageUpdater};
use crate::reference::{OpenContext, OpenOptions};
use crate::storage::{FileStorage, Storage};

use super::dynamic::{HEADER_SIZE, UNALLOCATED};
use super::footer::{DiskType, FOOTER_SIZE};
use super::reader::{Sparse, VhdReader, load_footer};

/// Changed sector bitmaps kept before an automatic flush writes them.
const MAX_PENDING: usize = 1024;

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

/// What a dynamic disk's updater keeps besides the reader's BAT and sector bitmaps.
#[derive(Debug)]
struct Dynamic {
    block_size: u64,
    bitmap_size: u64,
    table_offset: u64,
    /// BAT entries changed since the last flush (index -> new value).
    pending_bat: BTreeMap<u32, u32>,
    /// Blocks whose bitmap on disk is known to have every bit set (no need to read it).
    full: HashSet<u32>,
    /// Where the footer at the end of the file starts (and the next block goes).
    footer_offset: u64,
    /// The footer's bytes, rewritten after each appended block.
    footer: [u8; FOOTER_SIZE],
}

/// Writes into an existing image in place; see [`ImageUpdater`]. Built from a [`VhdReader`]
/// ([`VhdReader::into_updater`]), whose BAT and sector bitmaps it keeps current, so reads
/// through the updater see every write.
#[derive(Debug)]
pub struct VhdUpdater {
    r: VhdReader,
    dynamic: Option<Dynamic>,
}

fn differencing() -> Error {
    Error::Unsupported(
        "a differencing VHD cannot be updated in place (its blocks depend on its \
         parent); convert it to a standalone image first"
            .into(),
    )
}

/// Opens the VHD held in `storage` (writable) for in-place updates; see [`VhdUpdater`].
/// A differencing disk is refused before the reader looks for its parent.
pub fn open_storage(storage: Arc<dyn Storage>) -> Result<VhdUpdater> {
    let (footer, _, _) = load_footer(storage.as_ref())?;
    if footer.disk_type == DiskType::Differencing {
        return Err(differencing());
    }
    // Not differencing: the reader opens no parent, so it needs no folder.
    let opts = OpenOptions::default().format(Format::Vhd);
    VhdReader::open(storage, None, &OpenContext::detached(&opts))?.into_updater()
}

impl VhdReader {
    /// Turns this reader (of a fixed or dynamic disk, opened from writable storage) into an
    /// updater of the same image, keeping its parsed footer, header and BAT. Refuses images
    /// it cannot update safely (saying why).
    pub fn into_updater(self) -> Result<VhdUpdater> {
        if self.footer.disk_type == DiskType::Differencing {
            return Err(differencing());
        }
        if self.footer_len != FOOTER_SIZE as u64 {
            return Err(Error::Unsupported(
                "the footer at the end of this VHD is damaged or old-style (511 bytes); \
                 convert the image to repair it before updating it in place"
                    .into(),
            ));
        }
        let file_len = self.file_len;
        let footer_offset = file_len - FOOTER_SIZE as u64;
        let dynamic = match &self.sparse {
            None => None,
            Some(sp) => {
                let block_size = u64::from(sp.header.block_size);
                let entries = sp.bat.len() as u64;
                // The reader only reports bad entries when their block is read; writing
                // through one would damage the file, so every entry is checked here: its
                // block ends before the footer (the next block is appended there), misses
                // the footer copy, the dynamic header and the BAT, and overlaps no other
                // block.
                let span = sp.header.bitmap_size() + block_size;
                let meta = [
                    (0u64, FOOTER_SIZE as u64, "the footer copy"),
                    (
                        self.footer.data_offset,
                        HEADER_SIZE as u64,
                        "the dynamic header",
                    ),
                    (
                        sp.header.table_offset,
                        (entries * 4).next_multiple_of(512),
                        "the BAT",
                    ),
                ];
                let mut used: Vec<(u64, usize)> = Vec::new();
                for (i, &e) in sp.bat.iter().enumerate() {
                    if e == UNALLOCATED {
                        continue;
                    }
                    let start = u64::from(e) * 512;
                    let end = start + span;
                    if end > footer_offset {
                        return Err(Error::Corrupt(format!(
                            "BAT entry {i} points at {start:#x}: its block of {span} bytes runs \
                             into the footer at {footer_offset:#x}"
                        )));
                    }
                    if let Some((_, _, what)) =
                        meta.iter().find(|(o, l, _)| start < o + l && *o < end)
                    {
                        return Err(Error::Corrupt(format!(
                            "BAT entry {i} points at {start:#x}, overlapping {what}"
                        )));
                    }
                    used.push((start, i));
                }
                used.sort_unstable();
                for w in used.windows(2) {
                    if w[1].0 < w[0].0 + span {
                        return Err(Error::Corrupt(format!(
                            "BAT entries {} and {} point at overlapping blocks ({:#x} and {:#x})",
                            w[0].1, w[1].1, w[0].0, w[1].0
                        )));
                    }
                }
                let mut fb = [0u8; FOOTER_SIZE];
                read(self.storage.as_ref(), &mut fb, footer_offset)?;
                Some(Dynamic {
                    block_size,
                    bitmap_size: sp.header.bitmap_size(),
                    table_offset: sp.header.table_offset,
                    pending_bat: BTreeMap::new(),
                    full: HashSet::new(),
                    footer_offset,
                    footer: fb,
                })
            }
        };
        Ok(VhdUpdater { r: self, dynamic })
    }
}

impl VhdUpdater {
    /// Opens the image at `path` read-write for in-place updates. Refuses images it cannot
    /// update safely (saying why).
    pub fn open(path: &Path) -> Result<VhdUpdater> {
        FileStorage::open_read_write(path)
            .map_err(io("opening the VHD read-write".into()))
            .and_then(|s| open_storage(Arc::new(s)))
            .map_err(|e| e.in_file(path))
    }

    /// The reader underneath, showing the image as updated so far.
    pub fn reader(&self) -> &VhdReader {
        &self.r
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.r.size) {
            return Err(Error::InvalidArgument(format!(
                "a write of {len} bytes at offset {offset:#x} goes past the end of the \
                 {}-byte disk",
                self.r.size
            )));
        }
        Ok(())
    }
}

fn read(s: &dyn Storage, buf: &mut [u8], offset: u64) -> Result<()> {
    s.read_exact_at(buf, offset).map_err(io(format!(
        "reading {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

fn write(s: &dyn Storage, buf: &[u8], offset: u64) -> Result<()> {
    s.write_all_at(buf, offset).map_err(io(format!(
        "writing {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

impl Dynamic {
    /// The file offset of block `b`'s bitmap, allocating the block when `alloc` is set.
    fn block(
        &mut self,
        s: &dyn Storage,
        sp: &mut Sparse,
        b: u32,
        alloc: bool,
    ) -> Result<Option<u64>> {
        let e = sp.bat.get(b as usize).copied().unwrap_or(UNALLOCATED);
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
        self.full.insert(b);
        self.pending_bat.insert(b, sector);
        if let Some(slot) = sp.bat.get_mut(b as usize) {
            *slot = sector;
        }
        Ok(Some(start))
    }

    /// Sets the bits of sectors `first..first+count` in block `b` (bitmap at `bm`).
    fn mark(
        &mut self,
        s: &dyn Storage,
        sp: &mut Sparse,
        b: u32,
        bm: u64,
        first: u64,
        count: u64,
    ) -> Result<()> {
        if self.full.contains(&b) {
            return Ok(());
        }
        let stored = if sp.pending(b).is_none() {
            let mut bits = vec![0u8; self.bitmap_size as usize];
            read(s, &mut bits, bm)?;
            let all =
                (first..first + count).all(|i| bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0);
            if all {
                if bits.iter().all(|&x| x == 0xff) {
                    self.full.insert(b);
                }
                return Ok(());
            }
            bits
        } else {
            Vec::new()
        };
        let bits = sp.pending_bitmap(b, stored);
        for i in first..first + count {
            bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
        Ok(())
    }

    /// Whether sector `sector` of block `b` (bitmap at `bm`) is marked present.
    fn present(&self, s: &dyn Storage, sp: &Sparse, b: u32, bm: u64, sector: u64) -> Result<bool> {
        if self.full.contains(&b) {
            return Ok(true);
        }
        let mask = 0x80 >> (sector % 8);
        if let Some(bits) = sp.pending(b) {
            return Ok(bits
                .get((sector / 8) as usize)
                .is_some_and(|x| x & mask != 0));
        }
        let mut byte = [0u8; 1];
        read(s, &mut byte, bm + sector / 8)?;
        Ok(byte[0] & mask != 0)
    }

    /// Before a write of bytes `within..within+n` of block `b`: a partly written sector not
    /// yet marked present may hold stale bytes (a clear bit reads as zeros whatever is
    /// stored), so it is zeroed first; setting its bit then reveals only zeros and the data.
    fn clear_partial_sectors(
        &self,
        s: &dyn Storage,
        sp: &Sparse,
        b: u32,
        bm: u64,
        within: u64,
        n: u64,
    ) -> Result<()> {
        let end = within + n;
        let mut done = None;
        for (partial, sector) in [
            (within % 512 != 0, within / 512),
            (end % 512 != 0, end / 512),
        ] {
            if partial && done != Some(sector) && !self.present(s, sp, b, bm, sector)? {
                let at = bm + self.bitmap_size + sector * 512;
                write(s, &[0u8; 512], at)?;
                done = Some(sector);
            }
        }
        Ok(())
    }

    fn flush(&mut self, s: &dyn Storage, sp: &mut Sparse) -> Result<()> {
        if self.pending_bat.is_empty() && sp.pending_count() == 0 {
            return s.sync().map_err(io("syncing the VHD".into()));
        }
        // Data (and appended blocks with their footer) first.
        s.sync().map_err(io("syncing the VHD data".into()))?;
        for (b, bits) in sp.take_pending() {
            let e = sp.bat.get(b as usize).copied().unwrap_or(UNALLOCATED);
            if e != UNALLOCATED {
                write(s, &bits, u64::from(e) * 512)?;
            }
        }
        for (&i, &v) in &self.pending_bat {
            write(s, &v.to_be_bytes(), self.table_offset + u64::from(i) * 4)?;
        }
        s.sync().map_err(io("syncing the VHD metadata".into()))?;
        self.pending_bat.clear();
        Ok(())
    }
}

impl ImageUpdater for VhdUpdater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let s = self.r.storage.clone();
        let s = s.as_ref();
        let (Some(d), Some(sp)) = (self.dynamic.as_mut(), self.r.sparse.as_mut()) else {
            return write(s, buf, offset);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let b = pos / d.block_size;
            let within = pos % d.block_size;
            let n = ((d.block_size - within) as usize).min(buf.len() - done);
            let bi = u32::try_from(b).map_err(|_| Error::Corrupt("block index overflow".into()))?;
            let Some(bm) = d.block(s, sp, bi, true)? else {
                return Err(Error::Corrupt(format!("block {b} could not be allocated")));
            };
            d.clear_partial_sectors(s, sp, bi, bm, within, n as u64)?;
            write(s, &buf[done..done + n], bm + d.bitmap_size + within)?;
            let first = within / 512;
            let last = (within + n as u64).div_ceil(512);
            d.mark(s, sp, bi, bm, first, last - first)?;
            done += n;
        }
        // Reads check blocks against the end of the file, which may have moved.
        self.r.file_len = d.footer_offset + FOOTER_SIZE as u64;
        if sp.pending_count() > MAX_PENDING {
            d.flush(s, sp)?;
        }
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let s = self.r.storage.clone();
        let s = s.as_ref();
        let (Some(d), Some(sp)) = (self.dynamic.as_mut(), self.r.sparse.as_mut()) else {
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
            if let Some(bm) = d.block(s, sp, bi, false)? {
                let at = bm + d.bitmap_size + within;
                s.write_zeroes(at, n)
                    .map_err(io(format!("zeroing {n} bytes at offset {at:#x}")))?;
            }
            pos += n;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        let s = self.r.storage.clone();
        match (self.dynamic.as_mut(), self.r.sparse.as_mut()) {
            (Some(d), Some(sp)) => d.flush(s.as_ref(), sp),
            _ => s.sync().map_err(io("syncing the VHD".into())),
        }
    }
}

crate::image::reader_through!(VhdUpdater, r);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::ConvertOptions;
    use crate::formats::raw::RawReader;
    use crate::formats::vhd::VhdSubformat;
    use crate::formats::vhd::dynamic::VhdDynamicHeader;
    use crate::formats::vhd::footer::VhdFooter;
    use crate::image::ImageReader;
    use crate::output::{OutputOptions, convert_file};
    use crate::storage::MemStorage;
    use std::path::PathBuf;

    const MIB: u64 = 1 << 20;

    /// A VHD made by our writer from `content`.
    fn make(dir: &Path, content: &[u8], sub: VhdSubformat) -> PathBuf {
        let src = RawReader::new(Arc::new(MemStorage::from_vec(content.to_vec())), None).unwrap();
        let p = dir.join("t.vhd");
        let mut o = OutputOptions::new(Format::Vhd);
        o.vhd.subformat = sub;
        convert_file(&src, &p, &o, &ConvertOptions::default(), None).unwrap();
        p
    }

    /// The image's content, read by a reader of its own (not the updater's).
    fn read_all(p: &Path) -> Vec<u8> {
        let opts = crate::open::OpenOptions::default().format(Format::Vhd);
        let st = Arc::new(FileStorage::open_read_only(p).unwrap());
        let ctx = crate::reference::OpenContext::detached(&opts);
        let r = VhdReader::open(st, None, &ctx).unwrap();
        let mut v = vec![0u8; r.info().virtual_size as usize];
        r.read_at(&mut v, 0).unwrap();
        v
    }

    fn content(size: usize) -> Vec<u8> {
        // Data in the first and third 2 MiB blocks, the second empty.
        let mut c = vec![0u8; size];
        for (i, b) in c.iter_mut().enumerate() {
            if !(2 * MIB as usize..4 * MIB as usize).contains(&i) {
                *b = (i % 253) as u8 | 1;
            }
        }
        c
    }

    #[test]
    fn writes_match_a_model_fixed_and_dynamic() {
        for sub in [VhdSubformat::Dynamic, VhdSubformat::Fixed] {
            let d = tempfile::tempdir().unwrap();
            let mut model = content(5 * MIB as usize + 512);
            let p = make(d.path(), &model, sub);
            let mut up = VhdUpdater::open(&p).unwrap();
            // The writer rounds the size up to a CHS geometry; the rest reads as zeros.
            assert!(up.virtual_size() >= model.len() as u64);
            model.resize(up.virtual_size() as usize, 0);
            let writes: [(u64, usize, u8); 4] = [
                (3, 100, 0xa1),                    // allocated block, unaligned
                (2 * MIB - 7, 20, 0xb2),           // across into the empty block
                (3 * MIB + 1000, 70_000, 0xc3),    // inside the empty block
                (model.len() as u64 - 9, 9, 0xd4), // the partial last block
            ];
            for (off, len, byte) in writes {
                up.write_at(&vec![byte; len], off).unwrap();
                model[off as usize..off as usize + len].fill(byte);
            }
            // Zeroes: in an allocated block, and over a block never allocated (nothing).
            up.write_zeroes(10, 50).unwrap();
            model[10..60].fill(0);
            up.write_zeroes(4 * MIB + 5, 4096).unwrap();
            model[(4 * MIB + 5) as usize..(4 * MIB + 5 + 4096) as usize].fill(0);
            up.flush().unwrap();
            drop(up);
            assert_eq!(read_all(&p), model, "{sub:?}");
        }
    }

    #[test]
    fn dynamic_appends_blocks_before_a_valid_footer() {
        let d = tempfile::tempdir().unwrap();
        let p = make(
            d.path(),
            &vec![0u8; 4 * MIB as usize],
            VhdSubformat::Dynamic,
        );
        let len0 = std::fs::metadata(&p).unwrap().len();
        let footer0 = std::fs::read(&p).unwrap()[(len0 - 512) as usize..].to_vec();
        let mut up = VhdUpdater::open(&p).unwrap();
        up.write_at(b"hello", MIB).unwrap();
        // Before the flush: the new block is there, the file ends with the same footer,
        // and the BAT on disk does not reference the block yet (the disk still reads zeros).
        let len1 = std::fs::metadata(&p).unwrap().len();
        assert_eq!(len1, len0 + 512 + 2 * MIB);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(footer0, bytes[(len1 - 512) as usize..]);
        assert!(read_all(&p).iter().all(|&b| b == 0));
        up.flush().unwrap();
        let v = read_all(&p);
        assert_eq!(&v[MIB as usize..MIB as usize + 5], b"hello");
        // Zeroing the whole block keeps it allocated (VHD cannot free it) but reads zeros.
        up.write_zeroes(0, 4 * MIB).unwrap();
        up.flush().unwrap();
        assert!(read_all(&p).iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len1);
    }

    #[test]
    fn a_partly_written_sector_not_present_is_zeroed_first() {
        let d = tempfile::tempdir().unwrap();
        let p = make(d.path(), &content(2 * MIB as usize), VhdSubformat::Dynamic);
        let mut b = std::fs::read(&p).unwrap();
        let len = b.len();
        let f = VhdFooter::parse(&b[len - 512..], 0).unwrap();
        let hs = f.data_offset as usize;
        let h = VhdDynamicHeader::parse(&b[hs..hs + HEADER_SIZE], f.data_offset).unwrap();
        let t = h.table_offset as usize;
        let start = u32::from_be_bytes(b[t..t + 4].try_into().unwrap()) as usize * 512;
        let bitmap = h.bitmap_size() as usize;
        // Sector 1 of block 0: bit clear (reads as zeros on Windows), stale bytes stored.
        b[start] &= !0x40;
        b[start + bitmap + 512..start + bitmap + 1024].fill(0xee);
        std::fs::write(&p, &b).unwrap();
        let mut up = VhdUpdater::open(&p).unwrap();
        up.write_at(&[0x77; 10], 512 + 100).unwrap();
        up.flush().unwrap();
        drop(up);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b[start] & 0x40, 0x40, "bit of sector 1 set");
        let sector = &b[start + bitmap + 512..start + bitmap + 1024];
        for (i, &x) in sector.iter().enumerate() {
            assert_eq!(
                x,
                if (100..110).contains(&i) { 0x77 } else { 0 },
                "byte {i}"
            );
        }
    }

    /// The shared contract check ([`crate::testing::random_operations`]) over memory, for
    /// both subformats; a new reader of the storage then reads what the model holds.
    #[test]
    fn keeps_the_updater_contract_in_memory() {
        use crate::testing::{RandomOps, random_operations};
        for sub in [VhdSubformat::Dynamic, VhdSubformat::Fixed] {
            let d = tempfile::tempdir().unwrap();
            let c = content(6 * MIB as usize);
            let p = make(d.path(), &c, sub);
            let mem = Arc::new(MemStorage::from_vec(std::fs::read(&p).unwrap()));
            let mut up = open_storage(mem.clone()).unwrap();
            let mut initial = c.clone();
            initial.resize(up.virtual_size() as usize, 0);
            let model = MemStorage::from_vec(initial);
            let o = RandomOps {
                block: 2 * MIB,
                flush_one_in: 10,
                zero_window_once: true,
                ..RandomOps::new(7, 250, 300_000)
            };
            random_operations(&mut up, &model, &o).unwrap();
            up.flush().unwrap();
            drop(up);
            let opts = OpenOptions::default().format(Format::Vhd);
            let r = VhdReader::open(mem, None, &OpenContext::detached(&opts)).unwrap();
            let mut got = vec![0u8; r.virtual_size() as usize];
            r.read_at(&mut got, 0).unwrap();
            assert!(got == model.to_vec(), "{sub:?}: the stored image differs");
        }
    }

    #[test]
    fn refuses_differencing_and_bad_bat_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let p = make(d.path(), &content(4 * MIB as usize), VhdSubformat::Dynamic);
        let good = std::fs::read(&p).unwrap();
        let len = good.len();
        // Differencing: both footers say so.
        let mut f = VhdFooter::parse(&good[len - 512..], 0).unwrap();
        f.disk_type = DiskType::Differencing;
        let mut b = good.clone();
        b[len - 512..].copy_from_slice(&f.to_bytes());
        b[..512].copy_from_slice(&f.to_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = VhdUpdater::open(&p).unwrap_err().chain();
        assert!(e.contains("differencing"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b);
        // A BAT entry pointing at the dynamic header (the reader only flags it on use).
        let f = VhdFooter::parse(&good[len - 512..], 0).unwrap();
        let h = VhdDynamicHeader::parse(
            &good[f.data_offset as usize..f.data_offset as usize + HEADER_SIZE],
            f.data_offset,
        )
        .unwrap();
        let mut b = good.clone();
        let t = h.table_offset as usize;
        b[t..t + 4].copy_from_slice(&((f.data_offset / 512) as u32).to_be_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = VhdUpdater::open(&p).unwrap_err().chain();
        assert!(e.contains("BAT entry 0"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b);
        // Two entries sharing a block.
        let mut b = good.clone();
        let first: [u8; 4] = b[t..t + 4].try_into().unwrap();
        b[t + 4..t + 8].copy_from_slice(&first);
        std::fs::write(&p, &b).unwrap();
        let e = VhdUpdater::open(&p).unwrap_err().chain();
        assert!(e.contains("overlapping"), "{e}");
    }
}
