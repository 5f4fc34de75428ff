//! In-place updates of an existing qcow2 image (the target of an incremental sync).
//!
//! What is supported: versions 2 and 3, any cluster size, any refcount width (`refcount_order`
//! 0 to 6), compressed clusters (a write over one allocates a plain cluster and drops the
//! compressed cluster's references, which may share host clusters), persistent bitmaps (see
//! below). Refused with an "unsupported" error naming the feature: encryption, external data
//! files, extended L2 entries, internal snapshots (they share clusters that would need
//! copy-on-write of L1/L2 tables too; not implemented), backing files, the dirty and corrupt
//! bits, unknown incompatible features.
//!
//! Allocation reuses clusters whose refcount is zero, else appends at the end of the file,
//! growing the refcount blocks and the refcount table when the file outgrows them.
//!
//! Crash safety: data is written first; refcount increments are written before the L2 entries
//! and L1 entries that make them used, and refcount decrements (of clusters that L2 entries
//! stopped pointing at) only after those entries are durable. A crash between flushes can leak
//! clusters but never leaves a reference to a cluster with a zero refcount. Metadata is cached
//! in memory (bounded) with dirty flags and written back in that order by [`flush`]
//! (ImageUpdater::flush).
//!
//! Persistent bitmaps: before the first change, every bitmap that is not already so is marked
//! "in use" in the bitmap directory, which is what qemu itself does while it has an image open
//! for writing. qemu then treats the bitmaps as inconsistent (they are not used for incremental
//! backups and `qemu-img info` shows the `in-use` flag), so no bitmap ever claims that changed
//! data is unchanged. Setting the written bits instead would keep the bitmaps usable, but needs
//! allocation of bitmap data clusters; not done.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::Qcow2Error;
use super::bitmaps;
use super::header::{AUTOCLEAR_BITMAPS, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY};
use super::l1l2::{self, COPIED, L2Entry, OFFSET_MASK};
use super::reader::Qcow2Reader;
use super::refcount;
use crate::bytes::be64_table;
use crate::error::{Error, Result};
use crate::image::{ImageReader, ImageUpdater};
use crate::storage::{FileKind, FileStorage, Storage};

/// Bytes of L2 tables (and, separately, of refcount blocks) kept in memory before a flush is
/// forced to write them back and drop them.
const CACHE_BYTES: u64 = 32 << 20;

/// Largest single data write (bytes) when consecutive pieces are merged.
const MAX_RUN: usize = 4 << 20;

/// One cached refcount block.
#[derive(Debug)]
struct Cached<T> {
    data: Vec<T>,
    dirty: bool,
}

/// Writes into an existing image in place; see [`ImageUpdater`] and the module documentation.
///
/// Built from a [`Qcow2Reader`] ([`Qcow2Reader::into_updater`]): the reader's header and L1
/// table are the current state, the L2 tables the updater changes are held by the reader
/// until written back, so reads through the updater (the reader's own table walk and
/// decompressor) see every write.
#[derive(Debug)]
pub struct Qcow2Updater {
    r: Qcow2Reader,
    cluster_bits: u32,
    cluster_size: u64,
    /// Refcounts per refcount block.
    per_block: u64,
    /// First cluster past the end of the file: where appended clusters go.
    end_cluster: u64,
    l1_dirty: BTreeSet<usize>,
    /// Held L2 tables (by host offset) changed since they were last written.
    l2_dirty: BTreeSet<u64>,
    reftable: Vec<u64>,
    reftable_offset: u64,
    /// Refcount blocks by refcount table index.
    rb_cache: HashMap<u64, Cached<u8>>,
    /// Host clusters (cluster indexes) to dereference once the L2/L1 entries that stopped
    /// pointing at them are durable.
    pending_frees: Vec<u64>,
    /// Next cluster index the free-cluster search looks at.
    scan: u64,
    /// Whether the bitmaps have been marked in use (or there is nothing to mark).
    bitmaps_marked: bool,
    /// Tests: stop a flush after this many of its stages (a simulated crash).
    #[cfg(test)]
    stop_flush_after: Option<u32>,
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::from(Qcow2Error::Unsupported(what.into()))
}

/// Opens the qcow2 image held in `storage` (writable) for in-place updates; see
/// [`Qcow2Updater`]. Images naming other files (a backing file, an external data file) are
/// refused before anything else is opened.
pub fn open_storage(storage: Arc<dyn Storage>) -> Result<Qcow2Updater> {
    Qcow2Reader::open_unlinked(storage, None, None)?.into_updater()
}

impl Qcow2Reader {
    /// Turns this reader (of the active layer, over writable storage) into an updater of the
    /// same image, keeping its parsed header, L1 table and bitmap directory. Refuses images
    /// it cannot update safely (saying why); nothing is written by a refusal.
    pub fn into_updater(self) -> Result<Qcow2Updater> {
        let header = &self.header;
        let inc = header.incompatible_features;
        if inc & INCOMPAT_DIRTY != 0 {
            return Err(unsupported(
                "the dirty bit is set (refcounts may be stale); run 'qemu-img check -r all' first",
            ));
        }
        if inc & INCOMPAT_CORRUPT != 0 {
            return Err(unsupported(
                "the corrupt bit is set; repair the image with 'qemu-img check -r all' first",
            ));
        }
        if inc & INCOMPAT_DATA_FILE != 0 || header.data_file.is_some() {
            return Err(unsupported(
                "external data file: in-place updates of such images are not implemented",
            ));
        }
        if header.extended_l2() {
            return Err(unsupported(
                "extended L2 entries (subclusters): in-place updates are not implemented",
            ));
        }
        if header.nb_snapshots > 0 {
            return Err(unsupported(format!(
                "the image has {} internal snapshot(s); in-place updates would need copy-on-write \
                 of shared clusters, which is not implemented (delete them with 'qemu-img \
                 snapshot -d')",
                header.nb_snapshots
            )));
        }
        if let Some(b) = &header.backing_file {
            return Err(unsupported(format!(
                "the image has a backing file ('{b}'); in-place updates of overlays are not \
                 implemented (flatten it with 'qemu-img rebase -b \"\"' or convert it)"
            )));
        }
        if self.selected_snapshot.is_some() {
            return Err(unsupported("an internal snapshot is not updated in place"));
        }
        let cluster_bits = header.cluster_bits;
        let cluster_size = header.cluster_size();
        // The reader checked the refcount table against the file and the size limits.
        let reftable_offset = header.refcount_table_offset;
        let mut bytes =
            vec![0u8; (u64::from(header.refcount_table_clusters) * cluster_size) as usize];
        self.file
            .read_exact_at(&mut bytes, reftable_offset)
            .map_err(|e| {
                Error::io(
                    format!(
                        "reading the refcount table ({} bytes at offset {reftable_offset:#x})",
                        bytes.len()
                    ),
                    e,
                )
            })?;
        let reftable = be64_table(&bytes);
        for (i, &e) in reftable.iter().enumerate() {
            if e & refcount::REFTABLE_RESERVED != 0 {
                return Err(Qcow2Error::corrupt(
                    "refcount table",
                    reftable_offset + i as u64 * 8,
                    format!("entry {i} ({e:#x}) is not cluster aligned"),
                )
                .into());
            }
        }
        let per_block = refcount::entries_per_block(cluster_bits, header.refcount_order);
        let bitmaps_marked = (header.bitmaps.is_none()
            || header.autoclear_features & AUTOCLEAR_BITMAPS == 0)
            && header.autoclear_features & !AUTOCLEAR_BITMAPS == 0;
        Ok(Qcow2Updater {
            cluster_bits,
            cluster_size,
            per_block,
            end_cluster: self.file_len.div_ceil(cluster_size),
            l1_dirty: BTreeSet::new(),
            l2_dirty: BTreeSet::new(),
            reftable,
            reftable_offset,
            rb_cache: HashMap::new(),
            pending_frees: Vec::new(),
            scan: 0,
            bitmaps_marked,
            r: self,
            #[cfg(test)]
            stop_flush_after: None,
        })
    }
}

impl Qcow2Updater {
    /// Opens the image at `path` read-write for in-place updates. Refuses images it cannot
    /// update safely (saying why); nothing is written by a refused open.
    pub fn open(path: &Path) -> Result<Qcow2Updater> {
        Self::open_inner(path).map_err(|e| e.in_file(path))
    }

    fn open_inner(path: &Path) -> Result<Qcow2Updater> {
        let storage = FileStorage::open_read_write(path)
            .map_err(|e| Error::io("opening for in-place update", e))?;
        if storage.kind() != FileKind::Regular {
            return Err(Error::InvalidArgument(
                "a qcow2 update target must be a regular file".into(),
            ));
        }
        open_storage(Arc::new(storage))
    }

    /// The reader underneath, showing the image as updated so far.
    pub fn reader(&self) -> &Qcow2Reader {
        &self.r
    }

    /// Keeps the reader's idea of the file's length current (clusters were appended).
    fn refresh_len(&mut self) -> Result<()> {
        self.r.file_len = self
            .r
            .file
            .len()
            .map_err(|e| Error::io("reading the file size", e))?;
        Ok(())
    }

    fn pwrite(&self, what: &str, buf: &[u8], off: u64) -> Result<()> {
        self.r.file.write_all_at(buf, off).map_err(|e| {
            Error::io(
                format!("writing {what} ({} bytes at offset {off:#x})", buf.len()),
                e,
            )
        })
    }

    fn sync(&self) -> Result<()> {
        self.r.file.sync().map_err(|e| Error::io("syncing", e))
    }

    /// Before the first change: clears the autoclear feature bits this updater does not
    /// maintain (the specification asks writers that do not know a bit to clear it) and marks
    /// every persistent bitmap "in use" (see the module docs).
    fn mark_bitmaps(&mut self) -> Result<()> {
        if self.bitmaps_marked {
            return Ok(());
        }
        let unknown = self.r.header.autoclear_features & !AUTOCLEAR_BITMAPS;
        if self.r.header.version >= 3 && unknown != 0 {
            let kept = self.r.header.autoclear_features & AUTOCLEAR_BITMAPS;
            self.pwrite("header (autoclear features)", &kept.to_be_bytes(), 88)?;
            self.sync()?;
            self.r.header.autoclear_features = kept;
        }
        if self.r.header.bitmaps.is_none()
            || self.r.header.autoclear_features & AUTOCLEAR_BITMAPS == 0
        {
            self.bitmaps_marked = true;
            return Ok(());
        }
        // The reader read and validated the bitmap directory at open.
        let list: Vec<(u64, u32)> = self
            .r
            .bitmaps()
            .iter()
            .filter(|b| !b.in_use())
            .map(|b| (b.entry_offset, b.flags))
            .collect();
        for &(entry_offset, flags) in &list {
            let flags = flags | bitmaps::FLAG_IN_USE;
            self.pwrite("bitmap flags", &flags.to_be_bytes(), entry_offset + 12)?;
        }
        if !list.is_empty() {
            self.sync()?;
        }
        self.bitmaps_marked = true;
        Ok(())
    }

    // ----- refcounts -----

    fn has_block(&self, idx: u64) -> bool {
        usize::try_from(idx)
            .ok()
            .and_then(|i| self.reftable.get(i))
            .is_some_and(|&e| e & OFFSET_MASK != 0)
    }

    /// Loads refcount block `idx` into the cache; `false` when the table has no block there.
    fn load_block(&mut self, idx: u64) -> Result<bool> {
        if self.rb_cache.contains_key(&idx) {
            return Ok(true);
        }
        if !self.has_block(idx) {
            return Ok(false);
        }
        let off = self.reftable[idx as usize] & OFFSET_MASK;
        if off
            .checked_add(self.cluster_size)
            .is_none_or(|e| e > self.r.file_len)
        {
            return Err(Qcow2Error::corrupt(
                "refcount block",
                off,
                "the block lies past the end of the file",
            )
            .into());
        }
        let mut data = vec![0u8; self.cluster_size as usize];
        self.r.file.read_exact_at(&mut data, off).map_err(|e| {
            Error::io(
                format!(
                    "reading the refcount block ({} bytes at offset {off:#x})",
                    self.cluster_size
                ),
                e,
            )
        })?;
        self.rb_cache.insert(idx, Cached { data, dirty: false });
        Ok(true)
    }

    fn get_rc(&mut self, cluster: u64) -> Result<u64> {
        let idx = cluster / self.per_block;
        if !self.load_block(idx)? {
            return Ok(0);
        }
        let order = self.r.header.refcount_order;
        Ok(self.rb_cache.get(&idx).map_or(0, |b| {
            refcount::get(&b.data, cluster % self.per_block, order)
        }))
    }

    fn set_rc(&mut self, cluster: u64, value: u64) -> Result<()> {
        let idx = cluster / self.per_block;
        if !self.load_block(idx)? {
            return Err(Qcow2Error::corrupt(
                "refcount table",
                self.reftable_offset,
                format!("no refcount block covers cluster {cluster:#x}"),
            )
            .into());
        }
        if value > refcount::max_value(self.r.header.refcount_order) {
            return Err(unsupported(format!(
                "refcount of cluster {:#x} would exceed the {}-bit refcount width",
                cluster * self.cluster_size,
                self.r.header.refcount_bits()
            )));
        }
        let order = self.r.header.refcount_order;
        if let Some(b) = self.rb_cache.get_mut(&idx) {
            refcount::set(&mut b.data, cluster % self.per_block, order, value);
            b.dirty = true;
        }
        Ok(())
    }

    /// Allocates one host cluster (refcount 1 in the cache) and returns its offset.
    fn alloc_cluster(&mut self) -> Result<u64> {
        while self.scan < self.end_cluster {
            let c = self.scan;
            let idx = c / self.per_block;
            if !self.has_block(idx) {
                self.scan = (idx + 1) * self.per_block;
                continue;
            }
            self.scan += 1;
            // Cluster 0 is the header; it always has a refcount, but never reuse it.
            if c != 0 && self.get_rc(c)? == 0 {
                self.set_rc(c, 1)?;
                return Ok(c * self.cluster_size);
            }
            // A block scanned to its end without a find is dropped again when clean, so a
            // scan over a large image does not fill the cache.
            if self.scan % self.per_block == 0 && self.rb_cache.get(&idx).is_some_and(|b| !b.dirty)
            {
                self.rb_cache.remove(&idx);
            }
        }
        if !self.has_block(self.end_cluster / self.per_block) {
            self.extend_refcounts()?;
        }
        let c = self.end_cluster;
        self.end_cluster += 1;
        self.scan = self.end_cluster;
        self.set_rc(c, 1)?;
        Ok(c * self.cluster_size)
    }

    /// Adds refcount blocks (and a larger refcount table when needed) at the end of the file
    /// so that the cluster after them is covered.
    fn extend_refcounts(&mut self) -> Result<()> {
        let pb = self.per_block;
        let cs = self.cluster_size;
        let e = self.end_cluster;
        let old_len = self.reftable.len() as u64;
        let mut blocks: Vec<u64> = Vec::new();
        let mut t: u64 = 0;
        let mut settled = false;
        for _ in 0..64 {
            let extra = blocks.len() as u64 + t;
            let end = e + extra + 1;
            let need = end.div_ceil(pb);
            let t2 = if need > old_len {
                // Room to grow: half as many entries again as needed.
                let entries = need + need / 2 + 1;
                (entries * 8).div_ceil(cs)
            } else {
                0
            };
            let b2: Vec<u64> = (e / pb..need)
                .filter(|&i| i >= old_len || self.reftable[i as usize] & OFFSET_MASK == 0)
                .collect();
            if b2 == blocks && t2 == t {
                settled = true;
                break;
            }
            blocks = b2;
            t = t2;
        }
        if !settled {
            return Err(Qcow2Error::corrupt(
                "refcount table",
                self.reftable_offset,
                "could not lay out new refcount blocks",
            )
            .into());
        }
        let table_bytes = t * cs;
        if table_bytes > super::header::MAX_REFTABLE_BYTES {
            return Err(unsupported(format!(
                "the refcount table would grow past {} MiB",
                super::header::MAX_REFTABLE_BYTES >> 20
            )));
        }
        let extra = blocks.len() as u64 + t;
        let mut table = self.reftable.clone();
        if t > 0 {
            table.resize((table_bytes / 8) as usize, 0);
        }
        for (k, &i) in blocks.iter().enumerate() {
            table[i as usize] = (e + k as u64) * cs;
            self.rb_cache.insert(
                i,
                Cached {
                    data: vec![0; cs as usize],
                    dirty: true,
                },
            );
        }
        let old_table = std::mem::replace(&mut self.reftable, table);
        self.end_cluster = e + extra;
        for c in e..e + extra {
            self.set_rc(c, 1)?;
        }
        // Increments may go to disk early (at worst leaks); the new blocks must be on disk
        // before anything points at them.
        self.write_refblocks()?;
        self.sync()?;
        if t > 0 {
            let new_off = (e + blocks.len() as u64) * cs;
            let bytes: Vec<u8> = self.reftable.iter().flat_map(|v| v.to_be_bytes()).collect();
            self.pwrite("refcount table", &bytes, new_off)?;
            self.sync()?;
            let mut h = [0u8; 12];
            h[..8].copy_from_slice(&new_off.to_be_bytes());
            h[8..].copy_from_slice(&(t as u32).to_be_bytes());
            self.pwrite("header (refcount table location)", &h, 48)?;
            self.sync()?;
            let old_off = self.reftable_offset;
            let old_clusters = (old_table.len() as u64 * 8).div_ceil(cs);
            for k in 0..old_clusters {
                self.pending_frees.push(old_off / cs + k);
            }
            self.reftable_offset = new_off;
            self.r.header.refcount_table_offset = new_off;
            self.r.header.refcount_table_clusters = t as u32;
        } else {
            for &i in &blocks {
                let v = self.reftable[i as usize];
                self.pwrite(
                    "refcount table entry",
                    &v.to_be_bytes(),
                    self.reftable_offset + i * 8,
                )?;
            }
            self.sync()?;
        }
        Ok(())
    }

    fn write_refblocks(&mut self) -> Result<()> {
        let mut dirty: Vec<u64> = self
            .rb_cache
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        for i in dirty {
            let off = self.reftable[i as usize] & OFFSET_MASK;
            if let Some(b) = self.rb_cache.get(&i) {
                self.pwrite("refcount block", &b.data, off)?;
            }
            if let Some(b) = self.rb_cache.get_mut(&i) {
                b.dirty = false;
            }
        }
        Ok(())
    }

    /// Drops one reference to a host cluster (applied by the next flush, after the entries
    /// that pointed at it are durable).
    fn release(&mut self, entry: L2Entry) {
        let cs = self.cluster_size;
        match entry {
            L2Entry::Normal { host, .. } | L2Entry::Zero { host: Some(host) } => {
                self.pending_frees.push(host / cs);
            }
            L2Entry::Compressed { host, len } => {
                let first = host / cs;
                let last = host.saturating_add(len.max(1) - 1) / cs;
                self.pending_frees.extend(first..=last);
            }
            L2Entry::Zero { host: None } | L2Entry::Unallocated => {}
        }
    }

    // ----- L1 / L2 -----

    /// The L2 table covering guest cluster `gc`, loaded; allocates it when `create`.
    fn l2_for(&mut self, gc: u64, create: bool) -> Result<Option<(u64, usize)>> {
        let entries = self.r.header.l2_entries();
        let l1i = (gc / entries) as usize;
        let l2i = (gc % entries) as usize;
        let Some(&raw) = self.r.l1.get(l1i) else {
            return Err(Qcow2Error::corrupt(
                "L1 table",
                self.r.header.l1_table_offset,
                format!("no entry {l1i} for guest cluster {gc}"),
            )
            .into());
        };
        let l2off = l1l2::decode_l1(raw)
            .map_err(|d| Qcow2Error::corrupt("L1 table", self.r.header.l1_table_offset, d))?;
        let l2off = match l2off {
            Some(o) => o,
            None if !create => return Ok(None),
            None => {
                let o = self.alloc_cluster()?;
                self.r.hold_table(o, true)?;
                self.l2_dirty.insert(o);
                self.r.l1[l1i] = o | COPIED;
                self.l1_dirty.insert(l1i);
                o
            }
        };
        if self.r.held(l2off).is_none() {
            if l2off % self.cluster_size != 0 {
                return Err(Qcow2Error::corrupt(
                    "L1 table",
                    self.r.header.l1_table_offset,
                    format!("entry {l1i} points at {l2off:#x}, not cluster aligned"),
                )
                .into());
            }
            if l2off
                .checked_add(self.cluster_size)
                .is_none_or(|e| e > self.r.file_len)
            {
                return Err(Qcow2Error::corrupt(
                    "L2 table",
                    l2off,
                    "the table lies past the end of the file",
                )
                .into());
            }
            self.r.hold_table(l2off, false)?;
        }
        Ok(Some((l2off, l2i)))
    }

    fn l2_get(&self, l2off: u64, l2i: usize) -> Result<L2Entry> {
        let raw = self
            .r
            .held(l2off)
            .and_then(|t| t.get(l2i))
            .copied()
            .unwrap_or(0);
        let e = l1l2::decode_l2(raw, self.cluster_bits, self.r.header.version)
            .map_err(|d| Qcow2Error::corrupt("L2 table", l2off, format!("entry {l2i}: {d}")))?;
        let file_len = self.end_cluster * self.cluster_size;
        match e {
            L2Entry::Normal { host, .. } | L2Entry::Zero { host: Some(host) }
                if host % self.cluster_size != 0 || host >= file_len =>
            {
                Err(Qcow2Error::corrupt(
                    "L2 table",
                    l2off,
                    format!(
                        "entry {l2i} points at {host:#x}, unaligned or past the end of the file"
                    ),
                )
                .into())
            }
            L2Entry::Compressed { host, .. } if host >= file_len => Err(Qcow2Error::corrupt(
                "L2 table",
                l2off,
                format!("entry {l2i}: compressed data at {host:#x} is past the end of the file"),
            )
            .into()),
            _ => Ok(e),
        }
    }

    fn l2_set(&mut self, l2off: u64, l2i: usize, raw: u64) {
        if let Some(slot) = self.r.held_table(l2off).and_then(|t| t.get_mut(l2i)) {
            *slot = raw;
            self.l2_dirty.insert(l2off);
        }
    }

    /// The current content of guest cluster `gc` (zeros past the end of the disk), as the
    /// image reads it: through the reader, with its checks and its strict decompressor.
    fn read_cluster(&self, gc: u64, buf: &mut [u8]) -> Result<()> {
        let pos = gc * self.cluster_size;
        let n = (self.r.size.saturating_sub(pos) as usize).min(buf.len());
        self.r.read_at(&mut buf[..n], pos)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Prepares the write of `data` at byte `within` of guest cluster `gc` (`data` stays
    /// inside the cluster). Returns the host offset where the caller must write `data` (an
    /// in-place overwrite, or a whole new cluster), or `None` when the write was done here (a
    /// partial write that needed the old content).
    fn write_in_cluster(&mut self, gc: u64, within: u64, data: &[u8]) -> Result<Option<u64>> {
        let cs = self.cluster_size;
        let Some((l2off, l2i)) = self.l2_for(gc, true)? else {
            return Err(Qcow2Error::corrupt(
                "L1 table",
                self.r.header.l1_table_offset,
                format!("no L2 table for guest cluster {gc}"),
            )
            .into());
        };
        let entry = self.l2_get(l2off, l2i)?;
        if let L2Entry::Normal { host, copied } = entry
            && self.get_rc(host / cs)? == 1
        {
            if !copied {
                self.l2_set(l2off, l2i, l1l2::encode_normal(host));
            }
            return Ok(Some(host + within));
        }
        if data.len() as u64 == cs {
            let host = match entry {
                L2Entry::Zero { host: Some(h) } if self.get_rc(h / cs)? == 1 => h,
                _ => {
                    let h = self.alloc_cluster()?;
                    self.release(entry);
                    h
                }
            };
            self.l2_set(l2off, l2i, l1l2::encode_normal(host));
            return Ok(Some(host));
        }
        let mut buf = vec![0u8; cs as usize];
        let host = match entry {
            // A preallocated zero cluster: made whole with zeros around the data.
            L2Entry::Zero { host: Some(h) } if self.get_rc(h / cs)? == 1 => h,
            _ => {
                self.read_cluster(gc, &mut buf)?;
                let h = self.alloc_cluster()?;
                self.release(entry);
                h
            }
        };
        buf[within as usize..within as usize + data.len()].copy_from_slice(data);
        self.pwrite("guest data", &buf, host)?;
        self.l2_set(l2off, l2i, l1l2::encode_normal(host));
        Ok(None)
    }

    /// Makes a whole guest cluster read as zeros, dropping its host cluster.
    fn zero_cluster(&mut self, gc: u64) -> Result<()> {
        let Some((l2off, l2i)) = self.l2_for(gc, false)? else {
            return Ok(()); // unallocated, no backing file: reads as zeros already
        };
        let entry = self.l2_get(l2off, l2i)?;
        match entry {
            L2Entry::Unallocated | L2Entry::Zero { host: None } => return Ok(()),
            _ => {}
        }
        // Without a backing file an unallocated cluster reads as zeros; version 3 says so
        // explicitly with the zero flag.
        let raw = if self.r.header.version >= 3 {
            l1l2::ZERO
        } else {
            0
        };
        self.l2_set(l2off, l2i, raw);
        self.release(entry);
        Ok(())
    }

    /// Writes everything back in order when the caches grew past their bound.
    fn maybe_evict(&mut self) -> Result<()> {
        let cs = self.cluster_size;
        let l2_bytes = self.r.held_count() as u64 * cs;
        let rb_bytes = self.rb_cache.len() as u64 * cs;
        if l2_bytes > CACHE_BYTES || rb_bytes > CACHE_BYTES || self.pending_frees.len() > 1 << 20 {
            self.flush()?;
            self.r.release_tables();
            self.rb_cache.clear();
        }
        Ok(())
    }

    /// Whether a flush should stop after `stage` stages (tests simulate crashes with it).
    fn stop_after(&self, stage: u32) -> bool {
        #[cfg(test)]
        {
            self.stop_flush_after.is_some_and(|n| stage >= n)
        }
        #[cfg(not(test))]
        {
            let _ = stage;
            false
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.r.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "range of {len} bytes at offset {offset:#x} is past the end of the disk ({} bytes)",
                self.r.size
            ))),
        }
    }
}

impl ImageUpdater for Qcow2Updater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let inner = |s: &mut Self| -> Result<()> {
            s.mark_bitmaps()?;
            let cs = s.cluster_size;
            let mut done = 0usize;
            // Pieces going to consecutive host offsets are written with one call:
            // (host offset, start in `buf`, length).
            let mut run: Option<(u64, usize, usize)> = None;
            while done < buf.len() {
                let pos = offset + done as u64;
                let within = pos % cs;
                let n = ((cs - within) as usize).min(buf.len() - done);
                let direct =
                    s.write_in_cluster(pos >> s.cluster_bits, within, &buf[done..done + n])?;
                run = match (run, direct) {
                    (Some((h, b, l)), Some(d)) if h + l as u64 == d && l < MAX_RUN => {
                        Some((h, b, l + n))
                    }
                    (prev, next) => {
                        if let Some((h, b, l)) = prev {
                            s.pwrite("guest data", &buf[b..b + l], h)?;
                        }
                        next.map(|d| (d, done, n))
                    }
                };
                done += n;
            }
            if let Some((h, b, l)) = run {
                s.pwrite("guest data", &buf[b..b + l], h)?;
            }
            s.refresh_len()?;
            // Only now that the data is written may metadata pointing at it be written back.
            s.maybe_evict()?;
            Ok(())
        };
        inner(self)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let inner = |s: &mut Self| -> Result<()> {
            if len == 0 {
                return Ok(());
            }
            s.mark_bitmaps()?;
            let cs = s.cluster_size;
            let end = offset + len;
            let mut pos = offset;
            while pos < end {
                let within = pos % cs;
                let n = (cs - within).min(end - pos);
                let gc = pos >> s.cluster_bits;
                let per_l2 = s.r.header.l2_entries();
                let l1_empty =
                    s.r.l1
                        .get((gc / per_l2) as usize)
                        .is_some_and(|&e| e & OFFSET_MASK == 0);
                if l1_empty {
                    // No L2 table: the whole stretch it would cover reads as zeros already.
                    let stretch_end = (gc / per_l2 + 1)
                        .saturating_mul(per_l2)
                        .saturating_mul(cs)
                        .min(end);
                    pos = stretch_end;
                    continue;
                }
                if n == cs {
                    s.zero_cluster(gc)?;
                } else {
                    // Part of a cluster: only clusters holding data need zeros written.
                    if let Some((l2off, l2i)) = s.l2_for(gc, false)? {
                        match s.l2_get(l2off, l2i)? {
                            L2Entry::Unallocated | L2Entry::Zero { .. } => {}
                            _ => s.write_at(&vec![0u8; n as usize], pos)?,
                        }
                    }
                }
                pos += n;
                s.maybe_evict()?;
            }
            s.refresh_len()
        };
        inner(self)
    }
    fn flush(&mut self) -> Result<()> {
        let inner = |s: &mut Self| -> Result<()> {
            // 1. Data, then the refcount increments that cover it.
            s.sync()?;
            s.write_refblocks()?;
            s.sync()?;
            if s.stop_after(1) {
                return Ok(());
            }
            // 2. L2 tables, then the L1 entries pointing at new ones.
            while let Some(off) = s.l2_dirty.pop_first() {
                if let Some(t) = s.r.held(off) {
                    let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_be_bytes()).collect();
                    s.pwrite("L2 table", &bytes, off)?;
                }
            }
            s.sync()?;
            if s.stop_after(2) {
                return Ok(());
            }
            let l1_dirty = std::mem::take(&mut s.l1_dirty);
            for &i in &l1_dirty {
                let off = s.r.header.l1_table_offset + i as u64 * 8;
                s.pwrite("L1 entry", &s.r.l1[i].to_be_bytes(), off)?;
            }
            if !l1_dirty.is_empty() {
                s.sync()?;
            }
            if s.stop_after(3) {
                return Ok(());
            }
            // 3. Only now drop the references nothing points at any more.
            if !s.pending_frees.is_empty() {
                let frees = std::mem::take(&mut s.pending_frees);
                let mut lowest = u64::MAX;
                for c in frees {
                    let rc = s.get_rc(c)?;
                    if rc == 0 {
                        return Err(Qcow2Error::corrupt(
                            "refcount block",
                            s.reftable_offset,
                            format!(
                                "cluster {:#x} was referenced but has refcount 0",
                                c * s.cluster_size
                            ),
                        )
                        .into());
                    }
                    s.set_rc(c, rc - 1)?;
                    if rc == 1 {
                        lowest = lowest.min(c);
                    }
                }
                s.write_refblocks()?;
                s.sync()?;
                s.scan = s.scan.min(lowest);
            }
            s.refresh_len()
        };
        inner(self)
    }
}

crate::image::reader_through!(Qcow2Updater, r);

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Whether `tool` runs. CI (CI=true) installs it (tests/oracles/tools.txt), so there a
    /// missing tool fails the test instead of skipping it.
    fn have(tool: &str) -> bool {
        let ok = Command::new(tool).arg("--version").output().is_ok();
        assert!(
            ok || !matches!(std::env::var("CI").as_deref(), Ok("true" | "1")),
            "{tool} is missing under CI (CI=true)"
        );
        ok
    }

    fn qemu(tool: &str, args: &[&str]) {
        let out = Command::new(tool).args(args).output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    }

    /// `qemu-img check` of `img`: (corruptions, leaks).
    fn check(img: &Path) -> (u64, u64) {
        let out = Command::new("qemu-img")
            .args(["check", "--output=json"])
            .arg(img)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("qemu-img check: {out:?}"));
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        (n("corruptions") + n("check-errors"), n("leaks"))
    }

    /// A flush cut short after each of its stages (a crash mid-flush) leaves no corruption;
    /// only the complete flush is also free of leaks.
    #[test]
    fn a_flush_cut_short_at_any_stage_corrupts_nothing() {
        if !have("qemu-img") || !have("qemu-io") {
            eprintln!("skipping: qemu-img or qemu-io missing");
            return;
        }
        for stage in 1..=4u32 {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("x.qcow2");
            let ip = img.to_str().unwrap();
            qemu(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    "cluster_size=4096",
                    ip,
                    "4M",
                ],
            );
            qemu(
                "qemu-io",
                &[
                    "-f",
                    "qcow2",
                    "-c",
                    "write -P 7 0 1M",
                    "-c",
                    "write -c -P 8 2M 64k",
                    ip,
                ],
            );
            let mut u = Qcow2Updater::open(&img).unwrap();
            // Overwrites of compressed data (new clusters, frees), whole-cluster zeroes
            // (frees), partial writes over allocated data (in place), new tables.
            u.write_at(&[1u8; 5000], 2 * 1024 * 1024 + 100).unwrap();
            u.write_zeroes(0, 64 * 1024).unwrap();
            u.write_at(&[2u8; 3000], 200 * 1024 + 7).unwrap();
            u.write_at(&[3u8; 10000], 3 * 1024 * 1024 + 5).unwrap();
            u.stop_flush_after = Some(stage);
            u.flush().unwrap();
            drop(u);
            let (bad, leaks) = check(&img);
            assert_eq!(bad, 0, "stage {stage}");
            if stage == 4 {
                assert_eq!(leaks, 0, "complete flush leaked");
            }
        }
    }

    /// A compressed cluster whose stream holds more than one cluster: the reader rejects
    /// it, and so does the updater, which reads it through the reader (its own, laxer
    /// decompressor accepted it and wrote the first cluster's worth back).
    #[test]
    fn the_updater_rejects_the_compressed_clusters_the_reader_rejects() {
        use crate::storage::MemStorage;
        use flate2::{Compress, Compression, FlushCompress};
        let mut h = super::super::header::Qcow2Header::new(3, 16, 1 << 20);
        h.l1_size = 1;
        h.l1_table_offset = 0x30000;
        h.refcount_table_offset = 0x10000;
        h.refcount_table_clusters = 1;
        let mut img = h.to_bytes().unwrap();
        img.resize(0x60000, 0);
        img[0x30000..0x30008].copy_from_slice(&(0x40000u64 | COPIED).to_be_bytes());
        // Guest cluster 2: 70000 bytes of deflate stream, past one 64 KiB cluster.
        let mut c = Compress::new(Compression::default(), false);
        let mut stream = vec![0u8; 4096];
        c.compress(&[7u8; 70000], &mut stream, FlushCompress::Finish)
            .unwrap();
        stream.truncate(c.total_out() as usize);
        img[0x50000..0x50000 + stream.len()].copy_from_slice(&stream);
        let d = l1l2::encode_compressed(0x50000, 512, 16).unwrap();
        img[0x40010..0x40018].copy_from_slice(&d.to_be_bytes());

        let reader = Qcow2Reader::open_unlinked(
            std::sync::Arc::new(MemStorage::from_vec(img.clone())),
            None,
            None,
        )
        .unwrap();
        let mut b = vec![0u8; 100];
        let e = reader.read_at(&mut b, 2 << 16).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(e.chain().contains("more than one cluster"), "{}", e.chain());

        let mem = std::sync::Arc::new(MemStorage::from_vec(img.clone()));
        let mut u = open_storage(mem.clone()).unwrap();
        // Reads through the updater, and a partial write that needs the old content.
        let e = u.read_at(&mut b, 2 << 16).unwrap_err();
        assert!(e.chain().contains("more than one cluster"), "{}", e.chain());
        let e = u.write_at(&[1u8; 100], (2 << 16) + 5).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(e.chain().contains("more than one cluster"), "{}", e.chain());
        assert!(mem.to_vec() == img, "a refused write changed the image");
        // The shared decompressor (tests, debugging) is the strict one too.
        let mut out = vec![0u8; 1 << 16];
        assert!(
            super::super::compress::decompress(
                super::super::header::CompressionType::Zlib,
                &stream,
                &mut out
            )
            .is_err()
        );
    }

    #[test]
    fn unknown_autoclear_bits_are_cleared_on_the_first_change() {
        if !have("qemu-img") {
            eprintln!("skipping: qemu-img missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.qcow2");
        let ip = img.to_str().unwrap();
        qemu("qemu-img", &["create", "-q", "-f", "qcow2", ip, "1M"]);
        let mut b = std::fs::read(&img).unwrap();
        b[95] |= 1 << 5;
        std::fs::write(&img, &b).unwrap();
        let mut u = Qcow2Updater::open(&img).unwrap();
        assert_eq!(
            std::fs::read(&img).unwrap()[95],
            1 << 5,
            "opening changed the header"
        );
        u.write_at(&[5u8; 100], 1000).unwrap();
        u.flush().unwrap();
        drop(u);
        assert_eq!(std::fs::read(&img).unwrap()[95], 0);
        assert_eq!(check(&img), (0, 0));
    }

    #[test]
    fn refuses_non_qcow2_and_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let e = Qcow2Updater::open(&p).unwrap_err();
        assert!(e.chain().contains("junk"), "{}", e.chain());
        assert!(Qcow2Updater::open(dir.path()).is_err());
        let img = dir.path().join("ok.qcow2");
        if have("qemu-img") {
            qemu(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "1M"],
            );
            let mut u = Qcow2Updater::open(&img).unwrap();
            assert_eq!(u.virtual_size(), 1 << 20);
            assert!(u.write_at(&[1, 2], (1 << 20) - 1).is_err());
            assert!(u.write_zeroes(u64::MAX - 1, 5).is_err());
            u.write_zeroes(0, 1 << 20).unwrap();
        }
    }
}
