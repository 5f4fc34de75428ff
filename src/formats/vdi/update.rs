//! In-place updates of an existing VDI (the target of an incremental sync), built from an
//! opened [`VdiReader`]: [`VdiReader::into_updater`] keeps the parsed header, block map and
//! parent and writes through the same storage.
//!
//! - A write into a stored block goes in place.
//! - A write into a free or zero block stores a new block at the end of the data area (index
//!   `cBlocksAllocated`, as VirtualBox and qemu do): the whole block is written, the data over
//!   zeros, or over the parent's data for a free block of a differencing image. Its block map
//!   entry is written only at [`flush`](ImageUpdater::flush).
//! - `write_zeroes` over a whole stored block of a dynamic or differencing image sets its
//!   entry to zero (`0xfffffffe`) and frees the block; over a whole free block of a
//!   differencing image it sets the entry to zero without storing anything (the parent's data
//!   is hidden). Partial ranges are zeroed in place (a free block of a differencing image whose
//!   parent holds data there is stored first). A fixed image keeps every block: zeros are
//!   written (punched) in place.
//! - The first change gives the image a new `uuidModify`, as VirtualBox does when it first
//!   writes to an image: a differencing image made from this one before the change no longer
//!   matches it, and is refused by the reader (its `uuidParentModify` is the old value).
//!
//! [`flush`](ImageUpdater::flush) keeps the image valid at every step, data before the
//! metadata that refers to it, each step synced before the next:
//!
//! 1. write the header's `cBlocksAllocated` (counting the new blocks) and `uuidModify`; sync
//!    (this sync also makes the data written so far durable);
//! 2. write the changed block map entries (after a sync of the data if step 1 had nothing to
//!    write); sync;
//! 3. when blocks were freed, move the last stored blocks into the freed places (copy, sync,
//!    repoint their entries, sync), lower `cBlocksAllocated`, sync, and shorten the file, so
//!    the data area stays dense (VirtualBox's discard does the same; `qemu-img check` counts a
//!    block the map does not name as an error).
//!
//! A crash between flushes loses the writes since the last flush; a crash inside a flush may
//! leave blocks that `cBlocksAllocated` counts but no entry names (leaked space, reported by
//! `diskconv check`), never an entry naming a block whose data was not written.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result, ResultExt};
use crate::image::{Format, ImageUpdater, read_through_parent, reads_as_zero};
use crate::reference::{OpenContext, OpenOptions};
use crate::storage::{FileStorage, Storage};

use super::blockmap::{Entry, FREE, ZERO};
use super::header::ImageType;
use super::reader::{VdiReader, read_exact};
use super::{Uuid, corrupt};

/// Changed entries kept before an automatic flush writes them.
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

fn zero(s: &dyn Storage, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    s.write_zeroes(offset, len)
        .map_err(io(format!("zeroing {len} bytes at offset {offset:#x}")))
}

fn sync(s: &dyn Storage, what: &str) -> Result<()> {
    s.sync().map_err(io(format!("syncing the VDI {what}")))
}

/// Writes into an existing VDI in place; see the [module documentation](self).
pub struct VdiUpdater {
    /// The reader: its header and block map are the current state, as reads see it.
    r: VdiReader,
    /// Entries changed since the last flush.
    dirty: BTreeSet<u32>,
    /// Blocks of the data area freed by `write_zeroes` since the last flush: the block map on
    /// disk may still name them, so they are reused only after a flush.
    holes: BTreeSet<u32>,
    /// Blocks of the data area that no entry names, on disk or in memory (counted by
    /// `cBlocksAllocated` but left unnamed by a crash or another tool): reused first.
    spare: BTreeSet<u32>,
    /// The header's count or modification UUID changed since the last flush.
    header_dirty: bool,
    /// The modification UUID was renewed in this session.
    renewed: bool,
    /// One block of scratch space (extra data and block).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for VdiUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiUpdater")
            .field("header", &self.r.header)
            .field("dirty", &self.dirty.len())
            .field("holes", &self.holes.len())
            .field("spare", &self.spare.len())
            .finish_non_exhaustive()
    }
}

impl VdiReader {
    /// Turns this reader into an updater of the same image, reusing the parsed header, block
    /// map and parent; the storage it was opened from must be writable.
    pub fn into_updater(self) -> Result<VdiUpdater> {
        let h = &self.header;
        // Every writer keeps the data area's start inside the file (an empty dynamic image
        // ends there); one past the end would have new blocks written far beyond it.
        if h.data_offset > self.file_len {
            return Err(corrupt(
                "header",
                super::header::PRE_HEADER_SIZE as u64,
                format!(
                    "the data area starts at {:#x} (offData), past the end of the file \
                     ({:#x} bytes); such an image is not updated in place",
                    h.data_offset, self.file_len
                ),
            )
            .into());
        }
        // Blocks counted by cBlocksAllocated but named by no entry (left by a crash, or by
        // another tool): reused by the next blocks stored, the rest reclaimed by the first
        // flush, so the count never has to grow past cBlocks.
        let count = self.header.blocks_allocated;
        let mut named = vec![false; count as usize];
        for &e in &self.map {
            if let Entry::Block(i) = Entry::from_u32(e) {
                // Below the count: the block map was validated.
                named[i as usize] = true;
            }
        }
        let spare = (0..count).filter(|&i| !named[i as usize]).collect();
        Ok(VdiUpdater {
            r: self,
            dirty: BTreeSet::new(),
            holes: BTreeSet::new(),
            spare,
            header_dirty: false,
            renewed: false,
            scratch: Vec::new(),
        })
    }
}

impl VdiUpdater {
    /// Opens the VDI at `path` read-write for in-place updates: the reader opens it (the
    /// parent of a differencing image is found as [`VdiReader::open`] finds it, under the
    /// default reference policy) and becomes the updater.
    pub fn open(path: &Path) -> Result<VdiUpdater> {
        let opts = OpenOptions::default().format(Format::Vdi);
        let (ctx, canonical) = OpenContext::for_image(path, &opts)?;
        let ctx = ctx.with_opener(&super::OPENER);
        let storage = FileStorage::open_read_write(&canonical)
            .map_err(|e| Error::io("opening the VDI read-write", e))
            .in_file(path)?;
        VdiReader::open(Arc::new(storage), Some(&canonical), &ctx)
            .and_then(VdiReader::into_updater)
            .in_image(path)
    }

    /// Opens the VDI held in `storage` (writable: memory, or a file the caller opened) for
    /// in-place updates. Such an image has no folder: a differencing one, whose parent would
    /// have to be searched for, is refused.
    pub fn open_storage(storage: Arc<dyn Storage>) -> Result<VdiUpdater> {
        let opts = OpenOptions::default().format(Format::Vdi);
        let ctx = OpenContext::detached(&opts).with_opener(&super::OPENER);
        VdiReader::open(storage, None, &ctx)?.into_updater()
    }

    /// The reader underneath, showing the image as updated so far.
    pub fn reader(&self) -> &VdiReader {
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

    /// Whether the block data at `data` is one hole of the file (reads as zeros).
    fn is_hole(&self, data: u64) -> Result<bool> {
        let seg = self
            .r
            .storage
            .segment(data)
            .map_err(io(format!("looking for holes at {data:#x}")))?;
        Ok(!seg.data && seg.len >= u64::from(self.r.header.block_size))
    }

    /// Gives the image a new modification UUID at its first change.
    fn renew(&mut self) {
        if !self.renewed {
            self.r.header.uuid_modify = Uuid::random();
            self.renewed = true;
            self.header_dirty = true;
        }
    }

    fn set_entry(&mut self, b: u32, v: u32) {
        self.r.map[b as usize] = v;
        self.dirty.insert(b);
    }

    /// Stores block `b` (free or zero) as a new block at the end of the data area: bytes
    /// `within..within + data.len()` are `data` (zeros when `None`), the rest what the block
    /// reads as now (zeros, or the parent's data for a free block of a differencing image).
    fn store_block(&mut self, b: u32, within: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        if self.spare.is_empty() && self.r.header.blocks_allocated >= self.r.header.blocks {
            // Every place of the data area is taken, some by freed blocks: compact first.
            self.flush()?;
            if self.r.header.blocks_allocated >= self.r.header.blocks {
                return Err(corrupt(
                    "header",
                    self.r.header.allocated_field_offset(),
                    format!(
                        "all {} blocks of the data area are in use, yet block {b} is not \
                         stored",
                        self.r.header.blocks
                    ),
                )
                .into());
            }
        }
        // A spare block (named by nothing, on disk or here), else a new one at the end.
        let spare = self.spare.pop_first();
        let h = &self.r.header;
        let bs = u64::from(h.block_size);
        let extra = u64::from(h.block_extra);
        let index = spare.unwrap_or(h.blocks_allocated);
        let start = h.block_offset(index);
        let pos = u64::from(b) * bs;
        let from_parent = self.r.parent.is_some() && self.r.map[b as usize] == FREE;
        let s = self.r.storage.clone();
        if from_parent {
            // The parent's data (zeros past the end of the disk), then ours over it.
            self.scratch.resize(bs as usize, 0);
            let valid = (self.r.size - pos).min(bs) as usize;
            read_through_parent(self.r.parent.as_deref(), &mut self.scratch[..valid], pos)?;
            self.scratch[valid..].fill(0);
            let w = within as usize..(within + len) as usize;
            match data {
                Some(d) => self.scratch[w].copy_from_slice(d),
                None => self.scratch[w].fill(0),
            }
            zero(s.as_ref(), start, extra)?;
            write(s.as_ref(), &self.scratch, start + extra)?;
        } else {
            // Zeros around the data: punched holes where the file system can.
            zero(s.as_ref(), start, extra + within)?;
            let at = start + extra + within;
            match data {
                Some(d) => write(s.as_ref(), d, at)?,
                None => zero(s.as_ref(), at, len)?,
            }
            zero(s.as_ref(), at + len, bs - within - len)?;
        }
        if spare.is_none() {
            self.r.header.blocks_allocated += 1;
            self.header_dirty = true;
        }
        self.set_entry(b, index);
        Ok(())
    }

    /// Writes the changed header fields, then the changed entries, each step synced (the
    /// data written before is synced with the first). Returns whether it synced.
    fn publish(&mut self) -> Result<bool> {
        let s = self.r.storage.clone();
        let h = &self.r.header;
        let mut synced = false;
        if self.header_dirty {
            write(
                s.as_ref(),
                &h.blocks_allocated.to_le_bytes(),
                h.allocated_field_offset(),
            )?;
            write(
                s.as_ref(),
                &h.uuid_modify.to_bytes(),
                h.uuid_modify_field_offset(),
            )?;
            sync(s.as_ref(), "header")?;
            self.header_dirty = false;
            synced = true;
        }
        if !self.dirty.is_empty() {
            if !synced {
                // The data an entry is about to name (a spare block, a moved one) first.
                sync(s.as_ref(), "data")?;
            }
            // Runs of consecutive entries in one write each.
            let dirty: Vec<u32> = std::mem::take(&mut self.dirty).into_iter().collect();
            let mut i = 0;
            while i < dirty.len() {
                let mut j = i + 1;
                while j < dirty.len() && dirty[j] == dirty[j - 1] + 1 {
                    j += 1;
                }
                let (first, last) = (dirty[i] as usize, dirty[j - 1] as usize);
                let bytes = super::blockmap::encode(&self.r.map[first..=last]);
                write(s.as_ref(), &bytes, h.blocks_offset + first as u64 * 4)?;
                i = j;
            }
            sync(s.as_ref(), "block map")?;
            synced = true;
        }
        Ok(synced)
    }

    /// Moves the last stored blocks into the holes and shortens the data area.
    fn compact(&mut self) -> Result<()> {
        if self.holes.is_empty() && self.spare.is_empty() {
            return Ok(());
        }
        let s = self.r.storage.clone();
        let count = self.r.header.blocks_allocated;
        // Which entry names each block of the data area.
        let mut owner = vec![FREE; count as usize];
        for (b, &e) in self.r.map.iter().enumerate() {
            if let Entry::Block(i) = Entry::from_u32(e) {
                // Entries name blocks below the count (validated, and kept so).
                owner[i as usize] = b as u32;
            }
        }
        // Freed blocks (their entries now published) and spare ones: nothing names them.
        let mut holes = std::mem::take(&mut self.holes);
        holes.append(&mut self.spare);
        let holes: Vec<u32> = holes
            .into_iter()
            .filter(|&i| i < count && owner[i as usize] == FREE)
            .collect();
        let sources = (0..count).rev().filter(|&i| owner[i as usize] != FREE);
        let moves: Vec<(u32, u32)> = holes
            .iter()
            .copied()
            .zip(sources)
            .take_while(|(hole, src)| hole < src)
            .collect();
        let stride = self.r.header.block_stride();
        self.scratch.resize(stride as usize, 0);
        for &(hole, src) in &moves {
            read_exact(
                s.as_ref(),
                &mut self.scratch,
                self.r.header.block_offset(src),
            )?;
            write(s.as_ref(), &self.scratch, self.r.header.block_offset(hole))?;
        }
        // Publishing the moved entries syncs the copies first.
        for &(hole, src) in &moves {
            self.set_entry(owner[src as usize], hole);
        }
        self.publish()?;
        let referenced = count - holes.len() as u32;
        self.r.header.blocks_allocated = referenced;
        self.header_dirty = true;
        self.publish()?;
        let end = self.r.header.data_end();
        if self.r.file_len > end || s.len().is_ok_and(|l| l > end) {
            s.set_len(end)
                .map_err(io(format!("shortening the VDI to {end:#x} bytes")))?;
            sync(s.as_ref(), "length")?;
        }
        self.r.file_len = end;
        Ok(())
    }
}

impl ImageUpdater for VdiUpdater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.renew();
        let bs = u64::from(self.r.header.block_size);
        let extra = u64::from(self.r.header.block_extra);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let b = (pos / bs) as u32;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let data = &buf[done..done + n];
            match Entry::from_u32(self.r.map[b as usize]) {
                Entry::Block(i) => {
                    let at = self.r.header.block_offset(i) + extra + within;
                    write(self.r.storage.as_ref(), data, at)?;
                }
                Entry::Free | Entry::Zero => self.store_block(b, within, n as u64, Some(data))?,
            }
            done += n;
        }
        if self.dirty.len() > MAX_PENDING {
            self.flush()?;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.renew();
        let bs = u64::from(self.r.header.block_size);
        let extra = u64::from(self.r.header.block_extra);
        let fixed = self.r.header.image_type == ImageType::Fixed;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let b = (pos / bs) as u32;
            let within = pos % bs;
            let n = (bs - within).min(end - pos);
            // The whole block as far as the disk goes (the last block may be cut by the end).
            let whole = within == 0 && (n == bs || pos + n == self.r.size);
            match Entry::from_u32(self.r.map[b as usize]) {
                Entry::Zero => {}
                Entry::Free => {
                    let shows_data = match self.r.parent.as_deref() {
                        Some(p) if pos < p.virtual_size() => {
                            let m = n.min(p.virtual_size() - pos);
                            !reads_as_zero(p, pos, m)?
                        }
                        _ => false,
                    };
                    if shows_data {
                        if whole {
                            self.set_entry(b, ZERO);
                        } else {
                            self.store_block(b, within, n, None)?;
                        }
                    }
                }
                Entry::Block(i) => {
                    let data = self.r.header.block_offset(i) + extra;
                    // Zeroed whole at once, or piece by piece until the file holds only a
                    // hole there (what a sync of 64 KiB blocks does): freed.
                    let free = !fixed
                        && (whole || {
                            zero(self.r.storage.as_ref(), data + within, n)?;
                            self.is_hole(data)?
                        });
                    if free {
                        self.set_entry(b, ZERO);
                        self.holes.insert(i);
                    } else if fixed {
                        zero(self.r.storage.as_ref(), data + within, n)?;
                    }
                }
            }
            pos += n;
        }
        if self.dirty.len() > MAX_PENDING {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.publish()? {
            sync(self.r.storage.as_ref(), "data")?;
        }
        self.compact()
    }
}

crate::image::reader_through!(VdiUpdater, r);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vdi::reader::tests::image;
    use crate::image::ImageReader;
    use crate::open::open_storage;
    use crate::storage::MemStorage;

    const BS: u64 = 4096;

    fn updater(bytes: Vec<u8>) -> (Arc<MemStorage>, VdiUpdater) {
        let mem = Arc::new(MemStorage::from_vec(bytes));
        (mem.clone(), VdiUpdater::open_storage(mem).unwrap())
    }

    fn read_all(mem: &MemStorage) -> (Vec<u8>, crate::formats::vdi::VdiHeader) {
        let bytes = mem.to_vec();
        let h = crate::formats::vdi::VdiHeader::parse(&bytes, 0).unwrap();
        let r = open_storage(
            Arc::new(MemStorage::from_vec(bytes)),
            &OpenOptions::new().format(Format::Vdi),
        )
        .unwrap();
        let mut v = vec![0u8; r.virtual_size() as usize];
        r.read_at(&mut v, 0).unwrap();
        (v, h)
    }

    #[test]
    fn writes_allocate_and_zeroes_free_and_compact() {
        for extra in [0u32, 512] {
            let (img, mut model) = image(extra);
            let (mem, mut up) = updater(img);
            let modify0 = up.r.header.uuid_modify;
            // Into the free block 1 and the zero block 2 (both get stored), in place in 3.
            for (off, len, byte) in [
                (BS + 7, 100, 0xa1u8),
                (2 * BS, 10, 0xb2),
                (3 * BS + 1, 5, 0xc3),
            ] {
                up.write_at(&vec![byte; len], off).unwrap();
                model[off as usize..off as usize + len].fill(byte);
            }
            // Before the flush the file's map is unchanged: it still reads the old content.
            assert_eq!(read_all(&mem).1.blocks_allocated, 3);
            up.flush().unwrap();
            let (got, h) = read_all(&mem);
            assert_eq!(got, model, "extra {extra}");
            assert_eq!(h.blocks_allocated, 5);
            assert_ne!(h.uuid_modify, modify0, "a new modification uuid");
            // Zero block 0 whole (freed), part of block 3 (in place), and the half last block
            // whole: the data area is compacted to the three blocks still stored.
            up.write_zeroes(0, BS).unwrap();
            up.write_zeroes(3 * BS + 2, 3).unwrap();
            up.write_zeroes(4 * BS, BS / 2).unwrap();
            model[..BS as usize].fill(0);
            model[3 * BS as usize + 2..3 * BS as usize + 5].fill(0);
            model[4 * BS as usize..].fill(0);
            up.flush().unwrap();
            let (got, h) = read_all(&mem);
            assert_eq!(got, model, "extra {extra}");
            assert_eq!(h.blocks_allocated, 3);
            let map = crate::formats::vdi::blockmap::decode(&mem.to_vec()[512..532]);
            assert_eq!(map[0], ZERO);
            assert_eq!(map[4], ZERO);
            let stride = BS + u64::from(extra);
            assert_eq!(
                mem.to_vec().len() as u64,
                1024 + 3 * stride,
                "file shortened"
            );
            // The updater reads what it wrote.
            let mut v = vec![0u8; model.len()];
            up.read_at(&mut v, 0).unwrap();
            assert_eq!(v, model);
        }
    }

    #[test]
    fn leaked_blocks_are_reclaimed_at_the_first_flush() {
        // Block 0's entry (data block 1) freed by hand: data block 1 is counted but unnamed.
        let (mut img, mut model) = image(0);
        img[512..516].copy_from_slice(&FREE.to_le_bytes());
        model[..BS as usize].fill(0);
        let (mem, mut up) = updater(img);
        up.flush().unwrap();
        let (got, h) = read_all(&mem);
        assert_eq!(got, model);
        assert_eq!(
            h.blocks_allocated, 2,
            "data block 2 moved into the leaked place"
        );
        assert_eq!(mem.to_vec().len() as u64, 1024 + 2 * BS);
        let report = crate::formats::vdi::check::check(
            mem.as_ref(),
            None,
            &OpenContext::detached(&OpenOptions::new()),
        )
        .unwrap();
        assert!(report.is_clean(), "{report}");

        // A spare block is reused by the next block stored: the count does not grow.
        let (mut img, mut model) = image(0);
        img[512..516].copy_from_slice(&FREE.to_le_bytes());
        model[..BS as usize].fill(0);
        let (mem, mut up) = updater(img);
        up.write_at(&[9; 5], BS + 1).unwrap();
        model[BS as usize + 1..BS as usize + 6].fill(9);
        up.flush().unwrap();
        let (got, h) = read_all(&mem);
        assert_eq!(got, model);
        assert_eq!(h.blocks_allocated, 3);
        let map = crate::formats::vdi::blockmap::decode(&mem.to_vec()[512..532]);
        assert_eq!(map[1], 1, "stored in the spare data block 1");
    }

    /// A storage that crashes at its `crash_at`-th sync: of the writes made since the last
    /// sync, only those `keep` picks reach the durable copy; every later operation fails.
    #[derive(Debug)]
    struct Crashing {
        current: MemStorage,
        durable: MemStorage,
        pending: std::sync::Mutex<Vec<Op>>,
        syncs: std::sync::atomic::AtomicUsize,
        crash_at: usize,
        keep: u64,
        crashed: std::sync::atomic::AtomicBool,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    impl Crashing {
        fn new(bytes: Vec<u8>, crash_at: usize, keep: u64) -> Self {
            Crashing {
                current: MemStorage::from_vec(bytes.clone()),
                durable: MemStorage::from_vec(bytes),
                pending: Default::default(),
                syncs: Default::default(),
                crash_at,
                keep,
                crashed: Default::default(),
            }
        }

        fn dead(&self) -> std::io::Result<()> {
            if self.crashed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("crashed"));
            }
            Ok(())
        }

        fn apply(&self, ops: &[Op]) {
            for op in ops {
                match op {
                    Op::Write(at, d) => self.durable.write_all_at(d, *at).unwrap(),
                    Op::SetLen(l) => self.durable.set_len(*l).unwrap(),
                }
            }
        }
    }

    impl Storage for Crashing {
        fn len(&self) -> std::io::Result<u64> {
            self.dead()?;
            self.current.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.dead()?;
            self.current.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.dead()?;
            self.pending
                .lock()
                .unwrap()
                .push(Op::Write(offset, buf.to_vec()));
            self.current.write_all_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.dead()?;
            self.pending.lock().unwrap().push(Op::SetLen(len));
            self.current.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.dead()?;
            let n = self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ops = std::mem::take(&mut *self.pending.lock().unwrap());
            if n == self.crash_at {
                // Any subset of the unsynced writes may have reached the disk.
                let kept: Vec<Op> = ops
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| self.keep >> (i % 64) & 1 == 1)
                    .map(|(_, o)| o)
                    .collect();
                self.apply(&kept);
                self.crashed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(std::io::Error::other("crashed"));
            }
            self.apply(&ops);
            Ok(())
        }
    }

    /// A crash at any sync of a flush, with any subset of the writes since the previous sync
    /// on disk, leaves an image that opens, reads every block either as before or as after
    /// the session, and has no corruption (leaked blocks allowed).
    #[test]
    fn a_crash_at_any_sync_leaves_a_valid_image() {
        let (img, old) = image(0);
        let mut new = old.clone();
        let b = |i: u64| (i * BS) as usize..((i + 1) * BS) as usize;
        new[b(0)].fill(0); // block 0 zeroed whole: freed, its place refilled by compaction
        new[BS as usize + 7..BS as usize + 17].fill(0xa1); // block 1 (free) stored
        new[2 * BS as usize..2 * BS as usize + 5].fill(0xb2); // block 2 (zero) stored
        new[3 * BS as usize + 9..3 * BS as usize + 12].fill(0xc3); // block 3 in place
        let mut completed = false;
        for crash_at in 0..12 {
            for keep in [0u64, u64::MAX, 0x5555_5555_5555_5555, 0xaaaa_aaaa_aaaa_aaaa] {
                let st = Arc::new(Crashing::new(img.clone(), crash_at, keep));
                let mut up = VdiUpdater::open_storage(st.clone()).unwrap();
                let run = (|| {
                    up.write_at(&[0xa1; 10], BS + 7)?;
                    up.write_zeroes(0, BS)?;
                    up.write_at(&[0xb2; 5], 2 * BS)?;
                    up.write_at(&[0xc3; 3], 3 * BS + 9)?;
                    up.flush()
                })();
                drop(up);
                if run.is_ok() {
                    completed = true;
                    st.apply(&std::mem::take(&mut *st.pending.lock().unwrap()));
                }
                let bytes = st.durable.to_vec();
                let what = format!("crash at sync {crash_at}, keep {keep:#x}");
                let r = open_storage(
                    Arc::new(MemStorage::from_vec(bytes.clone())),
                    &OpenOptions::new().format(Format::Vdi),
                )
                .unwrap_or_else(|e| panic!("{what}: {}", e.chain()));
                let mut got = vec![0u8; old.len()];
                r.read_at(&mut got, 0).unwrap();
                for i in 0..5u64 {
                    let (s, e) = ((i * BS) as usize, (((i + 1) * BS) as usize).min(old.len()));
                    assert!(
                        got[s..e] == old[s..e] || got[s..e] == new[s..e],
                        "{what}: block {i} is neither old nor new"
                    );
                }
                if run.is_ok() {
                    assert_eq!(got, new, "{what}");
                }
                let report = crate::formats::vdi::check::check(
                    &MemStorage::from_vec(bytes),
                    None,
                    &OpenContext::detached(&OpenOptions::new()),
                )
                .unwrap();
                assert_eq!(report.corruptions, 0, "{what}: {report}");
            }
        }
        assert!(completed, "the session completes when no crash comes");
    }

    #[test]
    fn a_full_data_area_with_holes_is_compacted_before_storing() {
        let (img, mut model) = image(0);
        let (mem, mut up) = updater(img);
        // 5 entries, 3 stored: store blocks 1 and 2, free 0, then store 0 again: the area is
        // full (5 of 5) with a hole, so the updater compacts before storing.
        up.write_at(&[1; 10], BS).unwrap();
        up.write_at(&[2; 10], 2 * BS).unwrap();
        up.write_zeroes(0, BS).unwrap();
        up.write_at(&[3; 10], 20).unwrap();
        up.flush().unwrap();
        model[BS as usize..BS as usize + 10].fill(1);
        model[2 * BS as usize..2 * BS as usize + 10].fill(2);
        model[..BS as usize].fill(0);
        model[20..30].fill(3);
        let (got, h) = read_all(&mem);
        assert_eq!(got, model);
        assert_eq!(h.blocks_allocated, 5);
    }
}
