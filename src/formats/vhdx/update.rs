//! In-place updates of an existing VHDX (the target of an incremental sync).
//!
//! Refused: a VHDX whose log holds entries (it must be replayed first, e.g. by opening it
//! read-write once in Hyper-V or qemu) and a differencing VHDX (with a parent).
//!
//! Before the first change the headers are rewritten, one after the other, each with the next
//! sequence number and fresh file write and data write GUIDs ([MS-VHDX] 2.2.2: the data write
//! GUID must change before user-visible data changes); the log stays empty, so the BAT is
//! updated directly, as qemu does. Payload data goes in place through the BAT; a write to a
//! block without data appends a new 1 MiB-aligned block at the end of the file, whose BAT entry
//! (state `PAYLOAD_BLOCK_FULLY_PRESENT`) is written at [`flush`](ImageUpdater::flush), after a
//! sync of the data, then synced again. A crash between flushes may leave appended blocks
//! unreferenced (leaked space), never a BAT entry pointing at garbage.
//!
//! `write_zeroes` over a whole block of a dynamic disk sets its entry to `PAYLOAD_BLOCK_ZERO`
//! (keeping the block's offset, reused if the block is written again); partial blocks and
//! fixed disks (which keep their blocks allocated) get zeros written in place.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::ImageUpdater;
use crate::storage::{FileStorage, Storage};

use super::bat::{self, BatEntry, PAYLOAD_FULLY_PRESENT, PAYLOAD_ZERO};
use super::header::{HEADER_OFFSETS, VhdxHeader};
use super::reader::VhdxReader;
use super::{Guid, MIB};

/// BAT entries kept before an automatic flush writes them.
const MAX_PENDING: usize = 65536;

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

fn write(s: &dyn Storage, buf: &[u8], offset: u64) -> Result<()> {
    s.write_all_at(buf, offset).map_err(io(format!(
        "writing {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

/// Writes into an existing image in place; see [`ImageUpdater`]. Built from a [`VhdxReader`]
/// ([`VhdxReader::into_updater`]), whose BAT it keeps current, so reads through the updater
/// see every write.
#[derive(Debug)]
pub struct VhdxUpdater {
    r: VhdxReader,
    storage: Arc<dyn Storage>,
    virtual_size: u64,
    block_size: u64,
    chunk_ratio: u64,
    leave_allocated: bool,
    bat_offset: u64,
    /// BAT entries changed since the last flush (index -> entry).
    pending: BTreeMap<u64, BatEntry>,
    /// Blocks zeroed whole in this session: their old offset may be reused (block -> offset).
    zeroed: HashMap<u64, u64>,
    /// The header in use, and the slot (0 or 1) it was read from.
    header: VhdxHeader,
    header_slot: usize,
    /// Whether the headers already carry new write GUIDs.
    headers_updated: bool,
    /// End of the file, where the next block goes (1 MiB aligned).
    next_block: u64,
}

/// Opens the VHDX held in `storage` (writable) for in-place updates; see [`VhdxUpdater`].
/// A differencing VHDX is refused before the reader looks for its parent.
pub fn open_storage(storage: Arc<dyn Storage>) -> Result<VhdxUpdater> {
    VhdxReader::open_layout(storage, None)?.into_updater()
}

impl VhdxReader {
    /// Turns this reader (of a VHDX without a parent, opened from writable storage) into an
    /// updater of the same image, keeping its parsed header, regions, metadata and BAT.
    /// Refuses images it cannot update safely (saying why): a log with entries to replay, a
    /// parent.
    pub fn into_updater(self) -> Result<VhdxUpdater> {
        if self.replayed_log_entries() > 0 {
            return Err(Error::Unsupported(format!(
                "the VHDX log holds {} entries not yet applied; replay it first (open the \
                 image read-write once in Hyper-V or qemu, or convert it)",
                self.replayed_log_entries()
            )));
        }
        let meta = self.metadata();
        if meta.has_parent {
            return Err(Error::Unsupported(
                "a differencing VHDX (with a parent) cannot be updated in place; convert it \
                 to a standalone image first"
                    .into(),
            ));
        }
        let len = self
            .file
            .inner
            .len()
            .map_err(io("reading the length of the file".into()))?;
        Ok(VhdxUpdater {
            storage: self.file.inner.clone(),
            virtual_size: meta.virtual_size,
            block_size: u64::from(meta.block_size),
            chunk_ratio: meta.chunk_ratio(),
            leave_allocated: meta.leave_blocks_allocated,
            bat_offset: self.regions.bat.offset,
            pending: BTreeMap::new(),
            zeroed: HashMap::new(),
            header: self.header().clone(),
            header_slot: self.header_slot(),
            headers_updated: false,
            next_block: len.next_multiple_of(MIB),
            r: self,
        })
    }
}

impl VhdxUpdater {
    /// Opens the image at `path` read-write for in-place updates. Refuses images it cannot
    /// update safely (saying why).
    pub fn open(path: &Path) -> Result<VhdxUpdater> {
        FileStorage::open_read_write(path)
            .map_err(io("opening the VHDX read-write".into()))
            .and_then(|s| open_storage(Arc::new(s)))
            .map_err(|e| e.in_file(path))
    }

    /// The reader underneath, showing the image as updated so far.
    pub fn reader(&self) -> &VhdxReader {
        &self.r
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

    /// Before the first change: both headers get the next sequence numbers and new write
    /// GUIDs, the stale slot first, each synced, so one valid header exists at every moment.
    fn touch_headers(&mut self) -> Result<()> {
        if self.headers_updated {
            return Ok(());
        }
        let mut h = self.header.clone();
        h.file_write_guid = Guid::random();
        h.data_write_guid = Guid::random();
        let mut slot = 1 - self.header_slot;
        for _ in 0..2 {
            h.sequence_number = h.sequence_number.checked_add(1).ok_or_else(|| {
                Error::Unsupported("the VHDX header sequence number is exhausted".into())
            })?;
            write(self.storage.as_ref(), &h.to_bytes(), HEADER_OFFSETS[slot])?;
            self.storage
                .sync()
                .map_err(io("syncing the VHDX header".into()))?;
            slot = 1 - slot;
        }
        self.header_slot = 1 - slot;
        self.header = h;
        self.headers_updated = true;
        Ok(())
    }

    fn index(&self, block: u64) -> usize {
        bat::payload_index(block, self.chunk_ratio) as usize
    }

    fn entry(&self, block: u64) -> BatEntry {
        let i = self.index(block);
        self.r.bat.get(i).copied().unwrap_or_default()
    }

    fn set_entry(&mut self, block: u64, e: BatEntry) {
        let i = self.index(block);
        if let Some(slot) = self.r.bat.get_mut(i) {
            *slot = e;
            self.pending.insert(i as u64, e);
        }
    }

    /// The file offset of `block`'s data, allocating it (or reusing its zeroed space).
    fn allocate(&mut self, block: u64) -> Result<u64> {
        let e = self.entry(block);
        if e.state() == PAYLOAD_FULLY_PRESENT {
            return Ok(e.offset());
        }
        let off = match self.zeroed.remove(&block) {
            Some(off) => {
                // Zeroed whole earlier in this session: clear it again before reuse.
                self.storage
                    .write_zeroes(off, self.block_size)
                    .map_err(io(format!("zeroing the block at {off:#x}")))?;
                off
            }
            None => {
                let off = self.next_block;
                let end = off
                    .checked_add(self.block_size)
                    .filter(|&e| e <= super::MAX_FILE_OFFSET)
                    .ok_or_else(|| Error::Unsupported("the VHDX file would be too large".into()))?;
                // The new block reads as zeros until written: extend the file over it.
                self.storage
                    .set_len(end)
                    .map_err(io(format!("extending the file to {end:#x}")))?;
                self.next_block = end;
                // Reads check blocks against the end of the file.
                self.r.file.len = end;
                off
            }
        };
        self.set_entry(block, BatEntry::new(PAYLOAD_FULLY_PRESENT, off));
        Ok(off)
    }

    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return self.storage.sync().map_err(io("syncing the VHDX".into()));
        }
        self.storage
            .sync()
            .map_err(io("syncing the VHDX data".into()))?;
        for (&i, e) in &self.pending {
            write(
                self.storage.as_ref(),
                &e.0.to_le_bytes(),
                self.bat_offset + i * 8,
            )?;
        }
        self.storage
            .sync()
            .map_err(io("syncing the VHDX BAT".into()))?;
        self.pending.clear();
        Ok(())
    }
}

impl ImageUpdater for VhdxUpdater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.touch_headers()?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / self.block_size;
            let within = pos % self.block_size;
            let n = ((self.block_size - within) as usize).min(buf.len() - done);
            let off = self.allocate(block)?;
            write(self.storage.as_ref(), &buf[done..done + n], off + within)?;
            done += n;
        }
        if self.pending.len() > MAX_PENDING {
            self.flush_pending()?;
        }
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut touched = false;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let block = pos / self.block_size;
            let within = pos % self.block_size;
            let n = (self.block_size - within).min(end - pos);
            let e = self.entry(block);
            let whole = within == 0 && (n == self.block_size || pos + n == self.virtual_size);
            if e.state() == PAYLOAD_FULLY_PRESENT {
                if !touched {
                    self.touch_headers()?;
                    touched = true;
                }
                if whole && !self.leave_allocated {
                    self.set_entry(block, BatEntry::new(PAYLOAD_ZERO, e.offset()));
                    self.zeroed.insert(block, e.offset());
                } else {
                    let at = e.offset() + within;
                    self.storage
                        .write_zeroes(at, n)
                        .map_err(io(format!("zeroing {n} bytes at offset {at:#x}")))?;
                }
            }
            // Any other state reads as zeros already (no parent).
            pos += n;
        }
        if self.pending.len() > MAX_PENDING {
            self.flush_pending()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.flush_pending()
    }
}

crate::image::reader_through!(VhdxUpdater, r);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::ConvertOptions;
    use crate::formats::raw::RawReader;
    use crate::formats::vhdx::VhdxSubformat;
    use crate::formats::vhdx::header::HEADER_SIZE;
    use crate::formats::vhdx::region::{self, REGION_OFFSETS};
    use crate::formats::vhdx::{log, metadata};
    use crate::image::{Format, ImageReader};
    use crate::output::{OutputOptions, convert_file};
    use crate::storage::MemStorage;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A VHDX made by our writer from `content`.
    fn make(dir: &Path, content: &[u8], sub: VhdxSubformat, bs: u32, lss: u32) -> PathBuf {
        let src = RawReader::new(Arc::new(MemStorage::from_vec(content.to_vec())), None).unwrap();
        let p = dir.join("t.vhdx");
        let mut o = OutputOptions::new(Format::Vhdx);
        o.vhdx.subformat = sub;
        o.vhdx.block_size = bs;
        o.vhdx.logical_sector_size = lss;
        convert_file(&src, &p, &o, &ConvertOptions::default(), None).unwrap();
        p
    }

    /// The image's content, read by a reader of its own (not the updater's).
    fn read_all(p: &Path) -> Vec<u8> {
        let opts = crate::open::OpenOptions::default().format(Format::Vhdx);
        let st = Arc::new(FileStorage::open_read_only(p).unwrap());
        let ctx = crate::reference::OpenContext::detached(&opts);
        let r = VhdxReader::open(st, None, &ctx).unwrap();
        let mut v = vec![0u8; r.info().virtual_size as usize];
        r.read_at(&mut v, 0).unwrap();
        v
    }

    fn content(size: usize) -> Vec<u8> {
        let mut c = vec![0u8; size];
        for (i, b) in c.iter_mut().enumerate() {
            if !(MIB as usize..3 * MIB as usize).contains(&i) {
                *b = (i % 251) as u8 | 1;
            }
        }
        c
    }

    fn bat_states(p: &Path) -> Vec<u8> {
        let b = std::fs::read(p).unwrap();
        let r = region::parse(&b[REGION_OFFSETS[0] as usize..], REGION_OFFSETS[0]).unwrap();
        let o = r.bat.offset as usize;
        bat::decode(&b[o..o + 64], 8)
            .iter()
            .map(|e| e.state())
            .collect()
    }

    #[test]
    fn writes_match_a_model() {
        for (sub, bs, lss) in [
            (VhdxSubformat::Dynamic, 1 << 20, 512),
            (VhdxSubformat::Dynamic, 1 << 20, 4096),
            (VhdxSubformat::Dynamic, 32 << 20, 4096),
            (VhdxSubformat::Fixed, 1 << 20, 512),
        ] {
            let d = tempfile::tempdir().unwrap();
            let mut model = content(5 * MIB as usize);
            let p = make(d.path(), &model, sub, bs, lss);
            let mut up = VhdxUpdater::open(&p).unwrap();
            assert_eq!(up.virtual_size(), model.len() as u64);
            let writes: [(u64, usize, u8); 4] = [
                (3, 100, 0xa1),
                (MIB - 7, 20, 0xb2),
                (2 * MIB + 1000, 70_000, 0xc3),
                (model.len() as u64 - 9, 9, 0xd4),
            ];
            for (off, len, byte) in writes {
                up.write_at(&vec![byte; len], off).unwrap();
                model[off as usize..off as usize + len].fill(byte);
            }
            up.write_zeroes(10, 50).unwrap();
            model[10..60].fill(0);
            // A whole block, then written again (its space is reused).
            up.write_zeroes(3 * MIB, MIB).unwrap();
            model[3 * MIB as usize..4 * MIB as usize].fill(0);
            up.flush().unwrap();
            let len = std::fs::metadata(&p).unwrap().len();
            up.write_at(b"again", 3 * MIB + 77).unwrap();
            model[(3 * MIB + 77) as usize..(3 * MIB + 82) as usize].copy_from_slice(b"again");
            up.flush().unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
            drop(up);
            assert_eq!(read_all(&p), model, "{sub:?} {bs} {lss}");
        }
    }

    #[test]
    fn whole_block_zeroes_mark_the_block_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = make(
            d.path(),
            &content(4 * MIB as usize),
            VhdxSubformat::Dynamic,
            1 << 20,
            512,
        );
        assert_eq!(bat_states(&p)[0], PAYLOAD_FULLY_PRESENT);
        let mut up = VhdxUpdater::open(&p).unwrap();
        up.write_zeroes(0, MIB).unwrap();
        // Not on disk before the flush.
        assert_eq!(bat_states(&p)[0], PAYLOAD_FULLY_PRESENT);
        up.flush().unwrap();
        assert_eq!(bat_states(&p)[0], PAYLOAD_ZERO);
        // A block never written gets allocated FULLY_PRESENT at flush, 1 MiB aligned.
        let len = std::fs::metadata(&p).unwrap().len();
        up.write_at(b"x", MIB + 5).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            len.next_multiple_of(MIB) + MIB
        );
        up.flush().unwrap();
        assert_eq!(bat_states(&p)[1], PAYLOAD_FULLY_PRESENT);
        let v = read_all(&p);
        assert!(v[..MIB as usize].iter().all(|&b| b == 0));
        assert_eq!(v[MIB as usize + 5], b'x');
    }

    #[test]
    fn refuses_a_log_with_entries_and_a_parent() {
        let d = tempfile::tempdir().unwrap();
        let p = make(
            d.path(),
            &content(2 * MIB as usize),
            VhdxSubformat::Dynamic,
            1 << 20,
            512,
        );
        let good = std::fs::read(&p).unwrap();
        // A log entry and the log GUID in the current header.
        let h0 = VhdxHeader::parse(&good[65536..65536 + HEADER_SIZE], 65536).unwrap();
        let h1 = VhdxHeader::parse(&good[131072..131072 + HEADER_SIZE], 131072).unwrap();
        let (at, mut h) = if h1.sequence_number > h0.sequence_number {
            (131072, h1)
        } else {
            (65536, h0)
        };
        h.log_guid = Guid::random();
        let sector = vec![0x5a; 4096];
        let entry = log::build_entry(&h.log_guid, 1, 0, &[(4 * MIB, Some(&sector))]);
        let mut b = good.clone();
        let lo = h.log_offset as usize;
        b[lo..lo + entry.len()].copy_from_slice(&entry);
        b[at..at + HEADER_SIZE].copy_from_slice(&h.to_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = VhdxUpdater::open(&p).unwrap_err().chain();
        assert!(e.contains("log holds 1 entries"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b);
        // A parent.
        let r = region::parse(&good[REGION_OFFSETS[0] as usize..], REGION_OFFSETS[0]).unwrap();
        let (mo, ml) = (r.metadata.offset as usize, r.metadata.length as usize);
        let mut m = metadata::parse(&good[mo..mo + ml], mo as u64).unwrap();
        m.has_parent = true;
        m.parent_locator = Some(vec![
            (
                "parent_linkage".into(),
                "{00000000-0000-0000-0000-000000000000}".into(),
            ),
            ("relative_path".into(), "parent.vhdx".into()),
        ]);
        let mut b = good.clone();
        b[mo..mo + ml].copy_from_slice(&metadata::to_bytes(&m, ml));
        std::fs::write(&p, &b).unwrap();
        let e = VhdxUpdater::open(&p).unwrap_err().chain();
        assert!(e.contains("differencing"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b);
    }
}
