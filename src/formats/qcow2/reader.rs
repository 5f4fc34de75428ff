//! [`Qcow2Reader`]: an [`ImageReader`] over a qcow2 image (versions 2 and 3).
//!
//! At open the header, the whole L1 table (one I/O), the snapshot table and the bitmap
//! directory are read and validated; the backing file and the external data file are opened
//! through the [`OpenContext`]. L2 tables are read on demand into a bounded cache shared by all
//! threads, so memory stays flat whatever the size of the image.
//!
//! Everything else read from the file (L2 entries, host offsets, compressed descriptors) is
//! checked when the cluster it describes is mapped or read: an image with one bad entry can
//! still be read everywhere else, and the error names the table, the entry and the bad value.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use super::Qcow2Error;
use super::bitmaps::{self, Qcow2Bitmap, TableEntry};
use super::header::{
    AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT,
    INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, Qcow2Header,
};
use super::l1l2::{self, COMPRESSED, COPIED, L2_RESERVED, L2Entry, OFFSET_MASK, SubclusterBitmap};
use super::snapshot::{self, Qcow2Snapshot};
use crate::bytes::{be32, be64_table};
use crate::error::{Error, Result};
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, check_read_range, map_through_parent,
};
use crate::reference::OpenContext;
use crate::storage::Storage;

/// Bytes of L2 tables kept in the cache (qemu's default L2 cache is 32 MiB at most too).
const L2_CACHE_BYTES: u64 = 32 << 20;

/// A bounded cache of decoded L2 tables, keyed by their offset in the file.
///
/// Eviction is first-in first-out: the convert engine walks the disk in order, so an L2 table
/// is rarely needed again once the walk has moved past it, and FIFO costs O(1) per miss.
struct L2Cache {
    max_tables: usize,
    inner: Mutex<L2CacheInner>,
}

#[derive(Default)]
struct L2CacheInner {
    tables: HashMap<u64, Arc<[u64]>>,
    order: VecDeque<u64>,
}

impl L2Cache {
    fn new(cluster_size: u64) -> Self {
        L2Cache {
            max_tables: (L2_CACHE_BYTES / cluster_size).max(1) as usize,
            inner: Mutex::new(L2CacheInner::default()),
        }
    }

    fn get(&self, offset: u64) -> Option<Arc<[u64]>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tables.get(&offset).cloned()
    }

    fn remove(&self, offset: u64) -> Option<Arc<[u64]>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = inner.tables.remove(&offset)?;
        inner.order.retain(|&o| o != offset);
        Some(t)
    }

    fn insert(&self, offset: u64, table: Arc<[u64]>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.tables.insert(offset, table).is_none() {
            inner.order.push_back(offset);
        }
        while inner.order.len() > self.max_tables {
            if let Some(old) = inner.order.pop_front() {
                inner.tables.remove(&old);
            }
        }
    }
}

/// The external data file of an image (incompatible feature bit 2).
struct DataFile {
    storage: Arc<dyn Storage>,
    len: u64,
    /// `data_file_raw`: the data file is a raw image by itself; guest offset == host offset.
    raw: bool,
}

/// What one stretch of this layer (not looking into the backing file) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Stored plainly at this host offset (of the stretch's first byte) in the data storage.
    Data(u64),
    /// A compressed cluster; the fields describe the cluster holding the stretch's first byte.
    Compressed {
        /// Byte offset of the compressed stream.
        host: u64,
        /// Bytes the descriptor says to read.
        len: u64,
        /// L2 table holding the descriptor, and the entry index (for errors).
        l2_offset: u64,
        index: u64,
    },
    /// Reads as zeros.
    Zero,
    /// Not allocated here: the backing file, or zeros.
    Unallocated,
}

impl Run {
    /// Whether a granule of kind `next` continues a run of kind `self` that is `len` bytes long.
    fn continued_by(&self, len: u64, next: &Run) -> bool {
        match (self, next) {
            (Run::Data(a), Run::Data(b)) => a.checked_add(len) == Some(*b),
            (Run::Compressed { .. }, Run::Compressed { .. }) => true,
            (Run::Zero, Run::Zero) | (Run::Unallocated, Run::Unallocated) => true,
            _ => false,
        }
    }
}

/// A qcow2 image opened for reading: the active layer or one internal snapshot.
pub struct Qcow2Reader {
    pub(super) file: Arc<dyn Storage>,
    /// Length of the file (an updater keeps it current).
    pub(super) file_len: u64,
    data_file: Option<DataFile>,
    path: Option<PathBuf>,
    pub(super) header: Qcow2Header,
    /// Virtual size of the layer being read (the snapshot's, when one is selected).
    pub(super) size: u64,
    /// The L1 table as reads see it (an updater changes it in place).
    pub(super) l1: Vec<u64>,
    l1_offset: u64,
    backing: Option<Box<dyn ImageReader>>,
    backing_size: u64,
    snapshots: Vec<Qcow2Snapshot>,
    pub(super) selected_snapshot: Option<usize>,
    bitmaps: Vec<Qcow2Bitmap>,
    cache: L2Cache,
    /// L2 tables an updater holds (changed, or about to be): reads use these, never the
    /// cache or the file.
    held: HashMap<u64, Arc<[u64]>>,
}

impl fmt::Debug for Qcow2Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Reader")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("cluster_bits", &self.header.cluster_bits)
            .field("size", &self.size)
            .field("backing", &self.header.backing_file)
            .field("data_file", &self.header.data_file)
            .field(
                "snapshot",
                &self.selected_snapshot.map(|i| &self.snapshots[i].name),
            )
            .finish_non_exhaustive()
    }
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

/// Reads `len` bytes at `offset`, for a metadata structure called `what`.
fn read_vec(storage: &dyn Storage, what: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len).map_err(|_| {
        Qcow2Error::corrupt(what, offset, format!("{len} bytes do not fit in memory"))
    })?;
    let mut buf = vec![0u8; n];
    storage
        .read_exact_at(&mut buf, offset)
        .map_err(io_err(format!(
            "reading the qcow2 {what} ({len} bytes at {offset:#x})"
        )))?;
    Ok(buf)
}

impl Qcow2Reader {
    /// Opens a qcow2 image held in `storage`.
    ///
    /// `path` is where it was opened from (relative backing and data file names are resolved
    /// against its folder); `ctx` applies the reference policy and the chain limits;
    /// `snapshot` selects an internal snapshot by id or name instead of the active layer.
    pub fn open(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
        snapshot: Option<&str>,
    ) -> Result<Self> {
        let mut r = Self::open_unlinked(storage, path, snapshot)?;
        r.open_references(ctx)?;
        Ok(r)
    }

    /// Opens the image in `storage` without the files it names (backing file, external data
    /// file): the header, the snapshot table, the L1 table and the bitmap directory, each
    /// validated. Used as is by the updater, which refuses images that name other files.
    pub(super) fn open_unlinked(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        snapshot: Option<&str>,
    ) -> Result<Self> {
        let file_len = storage
            .len()
            .map_err(|e| Error::io("reading the file size", e))?;

        // The header, its extensions and the backing file name live in the first cluster.
        let peek = read_vec(storage.as_ref(), "header", 0, file_len.min(512))?;
        let cluster_bits = if peek.len() >= 24 {
            be32(&peek, 20)
        } else {
            MIN_CLUSTER_BITS
        };
        let head = if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits)
            && file_len > peek.len() as u64
        {
            read_vec(
                storage.as_ref(),
                "header",
                0,
                file_len.min(1 << cluster_bits),
            )?
        } else {
            // Too short, or a bad cluster_bits that the parser reports.
            peek
        };
        let header = Qcow2Header::parse(&head, file_len)?;
        drop(head);
        let cs = header.cluster_size();

        let snapshots = read_snapshots(storage.as_ref(), &header, file_len)?;
        let (selected_snapshot, size, l1_offset, l1_size) = match snapshot {
            None => (None, header.size, header.l1_table_offset, header.l1_size),
            Some(want) => {
                let i = find_snapshot(&snapshots, want)?;
                let s = &snapshots[i];
                (
                    Some(i),
                    s.disk_size.unwrap_or(header.size),
                    s.l1_table_offset,
                    s.l1_size,
                )
            }
        };
        // Both the header and the snapshot parser checked that the table lies inside the file
        // and is at most 32 MiB.
        let l1 = if l1_size > 0 {
            be64_table(&read_vec(
                storage.as_ref(),
                "L1 table",
                l1_offset,
                u64::from(l1_size) * 8,
            )?)
        } else {
            Vec::new()
        };

        let bitmaps = match header.bitmaps {
            Some(ext) if header.autoclear_features & AUTOCLEAR_BITMAPS != 0 => {
                read_bitmaps(storage.as_ref(), &ext, cs, file_len, header.size)?
            }
            // Without autoclear bit 0 the bitmaps are stale (a program that does not know them
            // wrote to the image); qemu ignores them then, and so do we.
            _ => Vec::new(),
        };

        Ok(Qcow2Reader {
            file: storage,
            file_len,
            data_file: None,
            path: path.map(Path::to_path_buf),
            size,
            l1,
            l1_offset,
            backing: None,
            backing_size: 0,
            snapshots,
            selected_snapshot,
            bitmaps,
            cache: L2Cache::new(cs),
            held: HashMap::new(),
            header,
        })
    }

    /// Opens the external data file and the backing file the header names, through `ctx`.
    fn open_references(&mut self, ctx: &OpenContext<'_>) -> Result<()> {
        let header = &self.header;
        let path = self.path.as_deref();
        self.data_file = if header.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            // The header parser guarantees the name exists when the bit is set.
            let name = header.data_file.as_deref().unwrap_or_default();
            // Deliberate difference from qemu: qemu resolves a relative data file name against
            // its current directory; we resolve it against the image's folder (like backing
            // files), so the result does not depend on where the tool is started.
            let storage = ctx.open_reference_storage(path, "external data file", name)?;
            let len = storage
                .len()
                .map_err(|e| Error::io(format!("reading the size of data file '{name}'"), e))?;
            Some(DataFile {
                storage,
                len,
                raw: header.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0,
            })
        } else {
            None
        };

        self.backing = match &header.backing_file {
            None => None,
            Some(name) => {
                let format = match header.backing_format.as_deref() {
                    None | Some("") => None,
                    Some(f) => Some(Format::from_str(f).map_err(|_| {
                        Error::Unsupported(format!(
                            "backing file '{name}' has format '{f}', which diskconv does not know"
                        ))
                    })?),
                };
                Some(ctx.open_reference(path, "backing file", name, format)?)
            }
        };
        self.backing_size = self.backing.as_ref().map_or(0, |b| b.virtual_size());

        Ok(())
    }

    /// The parsed header.
    pub fn header(&self) -> &Qcow2Header {
        &self.header
    }

    /// The internal snapshots, as stored in the snapshot table.
    pub fn snapshots(&self) -> &[Qcow2Snapshot] {
        &self.snapshots
    }

    /// The persistent dirty bitmaps (empty when the image has none, or when autoclear bit 0
    /// says they are stale).
    pub fn bitmaps(&self) -> &[Qcow2Bitmap] {
        &self.bitmaps
    }

    /// The guest byte ranges whose bits are set in the persistent bitmap `name`, in ascending
    /// order, adjacent ranges merged, clipped to the virtual size.
    ///
    /// Fails when there is no such bitmap, when it is marked in use (not saved cleanly, so its
    /// contents cannot be trusted), or when its table or data are corrupt.
    pub fn dirty_ranges(&self, name: &str) -> Result<Vec<Range<u64>>> {
        let Some(bm) = self.bitmaps.iter().find(|b| b.name == name) else {
            let names: Vec<String> = self
                .bitmaps
                .iter()
                .map(|b| format!("'{}'", b.name))
                .collect();
            return Err(Error::InvalidArgument(format!(
                "no persistent bitmap named '{name}' in this image (it has {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        let what = format!("bitmap directory entry for '{name}'");
        if bm.in_use() {
            return Err(Qcow2Error::corrupt(
                what,
                bm.entry_offset,
                "the bitmap is marked in use (it was not saved cleanly) and cannot be trusted",
            )
            .into());
        }
        if !bm.usable_extra_data() {
            return Err(Qcow2Error::Unsupported(format!(
                "bitmap '{name}' carries {} bytes of unknown extra data not marked compatible",
                bm.extra_data_size
            ))
            .into());
        }
        let table_bytes = u64::from(bm.table_size) * 8;
        if table_bytes > bitmaps::MAX_TABLE_BYTES {
            return Err(Qcow2Error::Unsupported(format!(
                "bitmap '{name}' has a table of {table_bytes} bytes, more than the {} MiB limit",
                bitmaps::MAX_TABLE_BYTES >> 20
            ))
            .into());
        }
        // The directory parser checked the table lies inside the file.
        let table = be64_table(&read_vec(
            self.file.as_ref(),
            "bitmap table",
            bm.table_offset,
            table_bytes,
        )?);
        let cs = self.header.cluster_size();
        // The table size was checked against the header's virtual size.
        let size = self.header.size;
        let total = bitmaps::data_bytes(size, bm.granularity_bits);
        let mut out = Vec::new();
        let mut buf = vec![0u8; cs as usize];
        for (i, &raw) in table.iter().enumerate() {
            let start = i as u64 * cs;
            let n = (total - start).min(cs);
            let first_bit = start * 8;
            let entry_off = bm.table_offset + i as u64 * 8;
            let bad = |detail: String| {
                Qcow2Error::corrupt(
                    "bitmap table",
                    bm.table_offset,
                    format!("entry {i} (at {entry_off:#x}): {detail}"),
                )
            };
            match bitmaps::decode_table_entry(raw, cs).map_err(bad)? {
                TableEntry::Zeros => {}
                TableEntry::Ones => {
                    bitmaps::push_set_ranges(
                        &[0xff],
                        first_bit,
                        bm.granularity_bits,
                        size,
                        &mut out,
                    );
                    // One byte stands for the whole cluster: extend the range to its end.
                    let end = (first_bit + n * 8)
                        .saturating_mul(bm.granularity())
                        .min(size);
                    if let Some(last) = out.last_mut() {
                        last.end = last.end.max(end);
                    }
                }
                TableEntry::Data(off) => {
                    match off.checked_add(n) {
                        Some(end) if end <= self.file_len => {}
                        _ => {
                            return Err(bad(format!(
                                "bitmap data at {off:#x} runs past the end of the file ({:#x})",
                                self.file_len
                            ))
                            .into());
                        }
                    }
                    let chunk = &mut buf[..n as usize];
                    self.file
                        .read_exact_at(chunk, off)
                        .map_err(io_err(format!("reading bitmap '{name}' data at {off:#x}")))?;
                    bitmaps::push_set_ranges(chunk, first_bit, bm.granularity_bits, size, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// The storage guest data is read from: the external data file or the image itself.
    fn data_storage(&self) -> (&dyn Storage, u64) {
        match &self.data_file {
            Some(d) => (d.storage.as_ref(), d.len),
            None => (self.file.as_ref(), self.file_len),
        }
    }

    /// The L2 table at `offset`, from the cache or the file.
    fn l2_table(&self, offset: u64) -> Result<Arc<[u64]>> {
        if let Some(t) = self.held.get(&offset) {
            return Ok(t.clone());
        }
        if let Some(t) = self.cache.get(offset) {
            return Ok(t);
        }
        let table = self.read_l2_table(offset)?;
        self.cache.insert(offset, table.clone());
        Ok(table)
    }

    /// Reads the L2 table at `offset` from the file.
    fn read_l2_table(&self, offset: u64) -> Result<Arc<[u64]>> {
        let bytes = read_vec(
            self.file.as_ref(),
            "L2 table",
            offset,
            self.header.cluster_size(),
        )?;
        Ok(be64_table(&bytes).into())
    }

    /// Hands the L2 table at `offset` to an updater, which changes it in place: from now on
    /// reads use the held copy (see [`Qcow2Reader::held_table`]). `new` makes an empty table
    /// (a newly allocated one) instead of reading it.
    pub(super) fn hold_table(&mut self, offset: u64, new: bool) -> Result<()> {
        if self.held.contains_key(&offset) {
            return Ok(());
        }
        let cached = self.cache.remove(offset);
        let table = if new {
            vec![0u64; self.header.l2_entries() as usize].into()
        } else {
            match cached {
                Some(t) => t,
                None => self.read_l2_table(offset)?,
            }
        };
        self.held.insert(offset, table);
        Ok(())
    }

    /// The held L2 table at `offset`, for changes.
    pub(super) fn held_table(&mut self, offset: u64) -> Option<&mut [u64]> {
        let t = self.held.get_mut(&offset)?;
        if Arc::get_mut(t).is_none() {
            // A read still holds the old copy (never while an updater has `&mut`).
            *t = t.to_vec().into();
        }
        Arc::get_mut(t)
    }

    /// The held L2 table at `offset`, to read or write back.
    pub(super) fn held(&self, offset: u64) -> Option<&[u64]> {
        self.held.get(&offset).map(|t| &t[..])
    }

    /// How many L2 tables are held.
    pub(super) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Gives up every held table (all written back): reads use the file again.
    pub(super) fn release_tables(&mut self) {
        self.held.clear();
    }

    /// What this layer holds at `offset` (inside the disk), for at most `max_len` (>= 1) bytes.
    /// The run ends at the end of its L2 table at the latest.
    fn lookup(&self, offset: u64, max_len: u64) -> Result<(Run, u64)> {
        let h = &self.header;
        let cs = h.cluster_size();
        let coverage = h.l2_coverage();
        let l1_index = offset / coverage;
        // Stop at the end of this L2 table's coverage; max_len >= 1 and offset < coverage end.
        let end = offset
            .saturating_add(max_len)
            .min((l1_index + 1) * coverage);
        let whole = end - offset;
        let Some(&l1_raw) = usize::try_from(l1_index).ok().and_then(|i| self.l1.get(i)) else {
            // A snapshot's L1 table may be shorter than its disk: the rest is unallocated.
            return Ok((Run::Unallocated, whole));
        };
        let l1_entry_off = self.l1_offset + l1_index * 8;
        let l1_err = |detail: String| -> Error {
            Qcow2Error::corrupt(
                "L1 table",
                self.l1_offset,
                format!("entry {l1_index} (at {l1_entry_off:#x}): {detail}"),
            )
            .into()
        };
        let Some(l2_offset) = l1l2::decode_l1(l1_raw).map_err(l1_err)? else {
            return Ok((Run::Unallocated, whole));
        };
        if l2_offset % cs != 0 {
            return Err(l1_err(format!(
                "L2 table offset {l2_offset:#x} is not aligned to the cluster size ({cs:#x})"
            )));
        }
        // A table an updater holds may be new, not written yet.
        if !self.held.contains_key(&l2_offset)
            && l2_offset.checked_add(cs).is_none_or(|e| e > self.file_len)
        {
            return Err(l1_err(format!(
                "points at an L2 table at {l2_offset:#x}, past the end of the file ({:#x})",
                self.file_len
            )));
        }
        let table = self.l2_table(l2_offset)?;

        let extended = h.extended_l2();
        let sub_size = if extended {
            cs / u64::from(l1l2::SUBCLUSTERS)
        } else {
            cs
        };
        let l2_entries = h.l2_entries();
        let mut first: Option<Run> = None;
        let mut run_len = 0u64;
        let mut pos = offset;
        while pos < end {
            let index = (pos / cs) % l2_entries;
            let in_cluster = pos % cs;
            let guest_cluster = pos - in_cluster;
            let granule_end = (in_cluster / sub_size + 1) * sub_size;
            let glen = (granule_end - in_cluster).min(end - pos);
            // index < l2_entries, so both reads are in bounds of the cluster-sized table.
            let (raw, bitmap) = if extended {
                (
                    table[index as usize * 2] & !l1l2::ZERO,
                    Some(SubclusterBitmap::from_raw(table[index as usize * 2 + 1])),
                )
            } else {
                (table[index as usize], None)
            };
            let run = self.classify(
                raw,
                bitmap,
                (in_cluster / sub_size) as u32,
                guest_cluster,
                in_cluster,
                glen,
                l2_offset,
                index,
            );
            // A bad entry after the first granule ends the run: its error belongs to a map or
            // read of that cluster, not to this one.
            let run = match run {
                Ok(r) => r,
                Err(_) if first.is_some() => break,
                Err(e) => return Err(e),
            };
            match &first {
                None => first = Some(run),
                Some(f) if f.continued_by(run_len, &run) => {}
                Some(_) => break,
            }
            run_len += glen;
            pos += glen;
        }
        // The loop ran at least once (offset < end), so `first` is set.
        Ok((first.unwrap_or(Run::Unallocated), run_len.max(1)))
    }

    /// Classifies `glen` bytes at `in_cluster` of the guest cluster at `guest_cluster`, whose
    /// L2 entry is `raw` (plus `bitmap` for extended L2 entries; `sub` is the subcluster).
    #[allow(clippy::too_many_arguments)]
    fn classify(
        &self,
        raw: u64,
        bitmap: Option<SubclusterBitmap>,
        sub: u32,
        guest_cluster: u64,
        in_cluster: u64,
        glen: u64,
        l2_offset: u64,
        index: u64,
    ) -> Result<Run> {
        let h = &self.header;
        let cs = h.cluster_size();
        let bad = |detail: String| -> Error {
            Qcow2Error::corrupt(
                "L2 table",
                l2_offset,
                format!("entry {index} (for guest offset {guest_cluster:#x}): {detail}"),
            )
            .into()
        };
        // With an external data file, host offset 0 is valid when bit 63 is set (qcow2.txt,
        // "Standard Cluster Descriptor").
        let entry = if self.data_file.is_some()
            && raw & (COMPRESSED | L2_RESERVED | OFFSET_MASK | l1l2::ZERO) == 0
            && raw & COPIED != 0
        {
            L2Entry::Normal {
                host: 0,
                copied: true,
            }
        } else {
            l1l2::decode_l2(raw, h.cluster_bits, h.version).map_err(bad)?
        };
        let host = match entry {
            L2Entry::Compressed { host, len } => {
                if bitmap.is_some_and(|b| b != SubclusterBitmap::default()) {
                    return Err(bad(format!(
                        "compressed cluster with a non-zero subcluster bitmap {:#x}/{:#x}",
                        bitmap.map_or(0, |b| b.alloc),
                        bitmap.map_or(0, |b| b.zero)
                    )));
                }
                if self.data_file.is_some() {
                    return Err(bad(
                        "compressed cluster in an image with an external data file".into(),
                    ));
                }
                if host >= self.file_len {
                    return Err(bad(format!(
                        "compressed data at {host:#x} lies past the end of the file ({:#x})",
                        self.file_len
                    )));
                }
                return Ok(Run::Compressed {
                    host,
                    len,
                    l2_offset,
                    index,
                });
            }
            L2Entry::Zero { .. } => return Ok(Run::Zero),
            L2Entry::Unallocated => {
                if let Some(b) = bitmap {
                    if b.alloc != 0 {
                        return Err(bad(format!(
                            "subclusters marked allocated ({:#010x}) but no host offset",
                            b.alloc
                        )));
                    }
                    if b.zero & (1 << sub) != 0 {
                        return Ok(Run::Zero);
                    }
                }
                return Ok(Run::Unallocated);
            }
            L2Entry::Normal { host, .. } => host,
        };
        if host % cs != 0 {
            return Err(bad(format!(
                "host offset {host:#x} is not aligned to the cluster size ({cs:#x})"
            )));
        }
        if let Some(b) = bitmap {
            if b.conflict() != 0 {
                return Err(bad(format!(
                    "subclusters {:#010x} are marked both allocated and zero",
                    b.conflict()
                )));
            }
            if b.zero & (1 << sub) != 0 {
                return Ok(Run::Zero);
            }
            if b.alloc & (1 << sub) == 0 {
                return Ok(Run::Unallocated);
            }
        }
        let (_, data_len) = self.data_storage();
        if self.data_file.as_ref().is_some_and(|d| d.raw) && host != guest_cluster {
            return Err(bad(format!(
                "host offset {host:#x} differs from the guest offset although the data file is \
                 raw (data_file_raw)"
            )));
        }
        // host is at most 2^56 and in_cluster + glen at most one cluster: no overflow.
        let start = host + in_cluster;
        if start + glen > data_len {
            return Err(bad(format!(
                "points at {host:#x}, past the end of the {} ({data_len:#x} bytes)",
                if self.data_file.is_some() {
                    "external data file"
                } else {
                    "file"
                }
            )));
        }
        Ok(Run::Data(start))
    }

    /// Reads from the backing file, zeros where there is none or past its end.
    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            Some(b) if offset < self.backing_size => {
                let n = (self.backing_size - offset).min(buf.len() as u64) as usize;
                b.read_at(&mut buf[..n], offset)?;
                buf[n..].fill(0);
            }
            _ => buf.fill(0),
        }
        Ok(())
    }

    /// Decompresses the cluster described by a [`Run::Compressed`] into `out` (one cluster).
    fn decompress(
        &self,
        out: &mut [u8],
        host: u64,
        len: u64,
        l2_offset: u64,
        index: u64,
    ) -> Result<()> {
        // The descriptor may cover sectors past the end of the file for the last cluster of
        // the file: read what exists. `host < file_len` was checked by `classify`.
        let n = len.min(self.file_len - host);
        let input = read_vec(self.file.as_ref(), "compressed cluster", host, n)?;
        let bad = |detail: String| -> Error {
            Qcow2Error::corrupt(
                "compressed cluster",
                host,
                format!("(L2 table at {l2_offset:#x}, entry {index}): {detail}"),
            )
            .into()
        };
        let cs = out.len();
        super::compress::decompress_cluster(self.header.compression_type, &input, out)
            .map_err(bad)
            .map(|got| {
                debug_assert_eq!(got, cs);
            })
    }
}

/// Reads and parses the snapshot table.
fn read_snapshots(
    storage: &dyn Storage,
    header: &Qcow2Header,
    file_len: u64,
) -> Result<Vec<Qcow2Snapshot>> {
    let count = header.nb_snapshots;
    if count == 0 {
        return Ok(Vec::new());
    }
    let offset = header.snapshots_offset;
    // The header checked that the fixed parts of all entries fit in the file.
    let avail = (file_len - offset).min(snapshot::MAX_TABLE_BYTES);
    // Entries are variable-length: read a first guess, then exactly the table.
    let mut want = (u64::from(count) * 64).max(64 << 10).min(avail);
    let len = loop {
        let bytes = read_vec(storage, "snapshot table", offset, want)?;
        match snapshot::table_len(&bytes, count) {
            Some(len) => break len,
            None if want < avail => want = want.saturating_mul(4).min(avail),
            None => {
                return Err(Qcow2Error::corrupt(
                    "snapshot table",
                    offset,
                    format!(
                        "{count} entries do not fit in {want} bytes (the end of the file or the \
                         {} MiB limit)",
                        snapshot::MAX_TABLE_BYTES >> 20
                    ),
                )
                .into());
            }
        }
    };
    if len > avail {
        return Err(Qcow2Error::corrupt(
            "snapshot table",
            offset,
            format!(
                "{count} entries take {len} bytes, past the end of the file ({file_len:#x}) or the \
                 {} MiB limit",
                snapshot::MAX_TABLE_BYTES >> 20
            ),
        )
        .into());
    }
    let bytes = read_vec(storage, "snapshot table", offset, len)?;
    Ok(snapshot::parse_table(
        &bytes,
        offset,
        count,
        header.cluster_size(),
        file_len,
    )?)
}

/// Selects a snapshot by id, then by name (qemu's order).
fn find_snapshot(snapshots: &[Qcow2Snapshot], want: &str) -> Result<usize> {
    if let Some(i) = snapshots.iter().position(|s| s.id == want) {
        return Ok(i);
    }
    if let Some(i) = snapshots.iter().position(|s| s.name == want) {
        return Ok(i);
    }
    let list: Vec<String> = snapshots
        .iter()
        .map(|s| format!("{} '{}'", s.id, s.name))
        .collect();
    Err(Error::InvalidArgument(format!(
        "no internal snapshot with id or name '{want}' (available: {})",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    )))
}

/// Reads and parses the bitmap directory.
fn read_bitmaps(
    storage: &dyn Storage,
    ext: &super::header::BitmapsExtension,
    cluster_size: u64,
    file_len: u64,
    virtual_size: u64,
) -> Result<Vec<Qcow2Bitmap>> {
    let what = "bitmap directory";
    let off = ext.directory_offset;
    let size = ext.directory_size;
    if ext.nb_bitmaps == 0 {
        return Err(
            Qcow2Error::corrupt(what, off, "the bitmaps extension lists no bitmaps").into(),
        );
    }
    if size > bitmaps::MAX_DIRECTORY_BYTES {
        return Err(Qcow2Error::corrupt(
            what,
            off,
            format!(
                "directory of {size} bytes, more than the {} byte limit",
                bitmaps::MAX_DIRECTORY_BYTES
            ),
        )
        .into());
    }
    if off == 0 || off % cluster_size != 0 {
        return Err(Qcow2Error::corrupt(
            what,
            off,
            format!("offset is not a non-zero multiple of the cluster size ({cluster_size:#x})"),
        )
        .into());
    }
    if off.checked_add(size).is_none_or(|e| e > file_len) {
        return Err(Qcow2Error::corrupt(
            what,
            off,
            format!("{size} bytes run past the end of the file ({file_len:#x})"),
        )
        .into());
    }
    let bytes = read_vec(storage, what, off, size)?;
    Ok(bitmaps::parse_directory(
        &bytes,
        off,
        ext.nb_bitmaps,
        cluster_size,
        file_len,
        virtual_size,
    )?)
}

impl ImageReader for Qcow2Reader {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        if offset >= self.size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Unallocated));
        }
        let max_len = max_len.min(self.size - offset);
        let (run, len) = self.lookup(offset, max_len)?;
        Ok(match run {
            Run::Data(host) => Extent {
                host_offset: Some(host),
                ..Extent::new(offset, len, ExtentKind::Data)
            },
            Run::Compressed { .. } => Extent {
                compressed: true,
                ..Extent::new(offset, len, ExtentKind::Data)
            },
            Run::Zero => Extent::new(offset, len, ExtentKind::Zero),
            Run::Unallocated => map_through_parent(self.backing.as_deref(), offset, len)?,
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.size)?;
        let cs = self.header.cluster_size();
        let mut done = 0usize;
        let mut scratch: Vec<u8> = Vec::new();
        while done < buf.len() {
            let pos = offset + done as u64;
            let (run, len) = self.lookup(pos, (buf.len() - done) as u64)?;
            // len <= the remaining length of buf.
            let mut len = len as usize;
            match run {
                Run::Data(host) => {
                    let (storage, _) = self.data_storage();
                    storage
                        .read_exact_at(&mut buf[done..done + len], host)
                        .map_err(io_err(format!(
                            "reading {len} bytes of guest offset {pos:#x} at host offset {host:#x}"
                        )))?;
                }
                Run::Zero => buf[done..done + len].fill(0),
                Run::Unallocated => self.read_backing(&mut buf[done..done + len], pos)?,
                Run::Compressed {
                    host,
                    len: clen,
                    l2_offset,
                    index,
                } => {
                    let in_cluster = (pos % cs) as usize;
                    len = len.min(cs as usize - in_cluster);
                    if in_cluster == 0 && len == cs as usize {
                        self.decompress(&mut buf[done..done + len], host, clen, l2_offset, index)?;
                    } else {
                        scratch.resize(cs as usize, 0);
                        self.decompress(&mut scratch, host, clen, l2_offset, index)?;
                        buf[done..done + len]
                            .copy_from_slice(&scratch[in_cluster..in_cluster + len]);
                    }
                }
            }
            done += len;
        }
        Ok(())
    }

    fn dirty_ranges(&self, name: &str) -> Result<Vec<Range<u64>>> {
        Qcow2Reader::dirty_ranges(self, name)
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let mut info = ImageInfo::new(Format::Qcow2, self.size);
        info.filename = self.path.as_ref().map(|p| p.display().to_string());
        info.subformat = Some(
            if h.version >= 3 {
                "compat 1.1"
            } else {
                "compat 0.10"
            }
            .into(),
        );
        info.allocated_bytes = self.file.allocated_bytes().ok().flatten();
        info.file_size = Some(self.file_len);
        info.cluster_size = Some(h.cluster_size());
        info.backing_file = h.backing_file.clone();
        info.backing_format = h.backing_format.clone();
        info.data_file = if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            h.data_file.clone()
        } else {
            None
        };
        info.bitmaps = self.bitmaps.iter().map(Qcow2Bitmap::info).collect();
        info.snapshots = self.snapshots.iter().map(|s| s.info(h.size)).collect();
        let flags: [(bool, &str); 8] = [
            (h.incompatible_features & INCOMPAT_DIRTY != 0, "dirty"),
            (h.incompatible_features & INCOMPAT_CORRUPT != 0, "corrupt"),
            (
                h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0,
                "lazy_refcounts",
            ),
            (h.extended_l2(), "extended_l2"),
            (
                h.incompatible_features & INCOMPAT_DATA_FILE != 0,
                "external_data_file",
            ),
            (
                self.data_file.as_ref().is_some_and(|d| d.raw),
                "data_file_raw",
            ),
            (
                h.bitmaps.is_some() && h.autoclear_features & AUTOCLEAR_BITMAPS == 0,
                "bitmaps_stale",
            ),
            (self.selected_snapshot.is_some(), "snapshot_selected"),
        ];
        info.flags = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_string())
            .collect();
        if h.refcount_bits() != 16 {
            info.flags
                .push(format!("refcount_bits={}", h.refcount_bits()));
        }
        info.compression = Some(h.compression_type.name().to_string());
        info.backing = self.backing.as_ref().map(|b| Box::new(b.info()));
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::qcow2::compress::{inflate_cluster, unzstd_cluster};
    use crate::open::OpenOptions;
    use crate::storage::MemStorage;

    /// A minimal version 3 image: 64 KiB clusters, 1 MiB disk, L1 at 0x30000, one L2 table at
    /// 0x40000, data at 0x50000.
    fn image() -> Vec<u8> {
        let mut h = Qcow2Header::new(3, 16, 1 << 20);
        h.l1_size = 1;
        h.l1_table_offset = 0x30000;
        h.refcount_table_offset = 0x10000;
        h.refcount_table_clusters = 1;
        let mut img = h.to_bytes().unwrap();
        img.resize(0x60000, 0);
        img[0x30000..0x30008].copy_from_slice(&(0x40000u64 | COPIED).to_be_bytes());
        // Cluster 0: data at 0x50000. Cluster 1: zero flag. Cluster 2: unallocated.
        img[0x40000..0x40008].copy_from_slice(&(0x50000u64 | COPIED).to_be_bytes());
        img[0x40008..0x40010].copy_from_slice(&1u64.to_be_bytes());
        img[0x50000..0x60000].fill(0xab);
        img
    }

    fn open_mem(img: Vec<u8>) -> Result<Box<dyn ImageReader>> {
        crate::open::open_storage(Arc::new(MemStorage::from_vec(img)), &OpenOptions::default())
    }

    #[test]
    fn maps_and_reads_a_small_image() {
        let r = open_mem(image()).unwrap();
        assert_eq!(r.virtual_size(), 1 << 20);
        let e = r.map(0, u64::MAX).unwrap();
        assert_eq!(
            (e.len, e.kind, e.host_offset),
            (65536, ExtentKind::Data, Some(0x50000))
        );
        let e = r.map(100, u64::MAX).unwrap();
        assert_eq!((e.len, e.host_offset), (65436, Some(0x50064)));
        let e = r.map(65536, u64::MAX).unwrap();
        assert_eq!((e.len, e.kind), (65536, ExtentKind::Zero));
        let e = r.map(2 * 65536, u64::MAX).unwrap();
        assert_eq!(
            (e.len, e.kind),
            ((1 << 20) - 2 * 65536, ExtentKind::Unallocated)
        );
        assert_eq!(r.map(1 << 20, 10).unwrap().len, 0);
        let mut b = vec![1u8; 200];
        r.read_at(&mut b, 65536 - 100).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0xab));
        assert!(b[100..].iter().all(|&x| x == 0));
        assert!(r.read_at(&mut b, (1 << 20) - 100).is_err());
        let info = r.info();
        assert_eq!(info.subformat.as_deref(), Some("compat 1.1"));
        assert_eq!(info.cluster_size, Some(65536));
    }

    #[test]
    fn bad_entries_fail_only_where_used() {
        let mut img = image();
        // Cluster 3 points past the end of the file.
        img[0x40018..0x40020].copy_from_slice(&(0x7fff0000u64 | COPIED).to_be_bytes());
        // Cluster 4 has reserved bits.
        img[0x40020..0x40028].copy_from_slice(&0x50002u64.to_be_bytes());
        let r = open_mem(img).unwrap();
        let mut b = vec![0u8; 65536];
        r.read_at(&mut b, 0).unwrap();
        let e = r.read_at(&mut b, 3 * 65536).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        let m = e.to_string();
        assert!(m.contains("L2 table at 0x40000"), "{m}");
        assert!(m.contains("entry 3"), "{m}");
        assert!(m.contains("0x7fff0000"), "{m}");
        let e = r.map(4 * 65536, 1).unwrap_err().to_string();
        assert!(e.contains("reserved bits"), "{e}");
        // Unaligned reads that end before the bad cluster still work.
        r.read_at(&mut b[..10], 3 * 65536 - 10).unwrap();
    }

    #[test]
    fn bad_l1_entry_fails_on_use() {
        let mut h = Qcow2Header::new(3, 9, 1 << 20);
        // 512-byte clusters: one L2 table covers 64 * 512 = 32 KiB; 32 L1 entries.
        h.l1_size = 32;
        h.l1_table_offset = 0x400;
        h.refcount_table_offset = 0x200;
        h.refcount_table_clusters = 1;
        let mut img = h.to_bytes().unwrap();
        img.resize(0x800, 0);
        img[0x408..0x410].copy_from_slice(&(0x100000u64 | COPIED).to_be_bytes());
        let r = open_mem(img).unwrap();
        assert_eq!(r.map(0, u64::MAX).unwrap().len, 32 << 10);
        let e = r.map(32 << 10, 1).unwrap_err().to_string();
        assert!(e.contains("L1 table at 0x400"), "{e}");
        assert!(e.contains("entry 1"), "{e}");
        assert!(e.contains("past the end of the file"), "{e}");
    }

    #[test]
    fn compressed_garbage_is_corrupt() {
        let mut img = image();
        let d = l1l2::encode_compressed(0x50000, 1000, 16).unwrap();
        img[0x40010..0x40018].copy_from_slice(&d.to_be_bytes());
        let r = open_mem(img).unwrap();
        let e = r.map(2 * 65536, u64::MAX).unwrap();
        assert!(e.compressed);
        let mut b = vec![0u8; 4096];
        let err = r.read_at(&mut b, 2 * 65536).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        assert!(
            err.to_string().contains("compressed cluster at 0x50000"),
            "{err}"
        );
    }

    #[test]
    fn deflate_must_give_exactly_one_cluster() {
        use flate2::{Compress, Compression, FlushCompress};
        let deflate = |data: &[u8]| {
            let mut c = Compress::new(Compression::default(), false);
            let mut out = vec![0u8; data.len() + 1024];
            c.compress(data, &mut out, FlushCompress::Finish).unwrap();
            out.truncate(c.total_out() as usize);
            out
        };
        let mut out = vec![0u8; 4096];
        let ok = deflate(&[7u8; 4096]);
        assert_eq!(inflate_cluster(&ok, &mut out), Ok(4096));
        assert!(out.iter().all(|&b| b == 7));
        // Trailing padding after the stream is fine.
        let mut padded = ok.clone();
        padded.extend_from_slice(&[0u8; 100]);
        assert_eq!(inflate_cluster(&padded, &mut out), Ok(4096));
        let short = deflate(&[7u8; 1000]);
        assert!(
            inflate_cluster(&short, &mut out)
                .unwrap_err()
                .contains("1000 bytes")
        );
        let long = deflate(&[7u8; 5000]);
        assert!(
            inflate_cluster(&long, &mut out)
                .unwrap_err()
                .contains("more than one")
        );
        assert!(inflate_cluster(&[0xff; 50], &mut out).is_err());
    }

    #[test]
    fn zstd_must_give_exactly_one_cluster() {
        let mut out = vec![0u8; 4096];
        let ok = zstd::bulk::compress(&[9u8; 4096], 3).unwrap();
        let mut padded = ok.clone();
        padded.extend_from_slice(&[0u8; 30]);
        assert_eq!(unzstd_cluster(&padded, &mut out), Ok(4096));
        assert!(out.iter().all(|&b| b == 9));
        let short = zstd::bulk::compress(&[9u8; 100], 3).unwrap();
        assert!(unzstd_cluster(&short, &mut out).is_err());
        let long = zstd::bulk::compress(&[9u8; 5000], 3).unwrap();
        assert!(
            unzstd_cluster(&long, &mut out)
                .unwrap_err()
                .contains("more than one")
        );
        assert!(unzstd_cluster(&[1, 2, 3, 4, 5], &mut out).is_err());
    }

    #[test]
    fn extended_l2_subclusters() {
        let mut h = Qcow2Header::new(3, 16, 1 << 20);
        h.incompatible_features |= super::super::header::INCOMPAT_EXTL2;
        h.l1_size = 1;
        h.l1_table_offset = 0x30000;
        h.refcount_table_offset = 0x10000;
        h.refcount_table_clusters = 1;
        let mut img = h.to_bytes().unwrap();
        img.resize(0x60000, 0);
        img[0x30000..0x30008].copy_from_slice(&(0x40000u64 | COPIED).to_be_bytes());
        // Cluster 0 at 0x50000: subclusters 0-1 allocated, 2 zero, the rest unallocated.
        img[0x40000..0x40008].copy_from_slice(&(0x50000u64 | COPIED).to_be_bytes());
        img[0x40008..0x40010].copy_from_slice(&((1u64 << 34) | 0b11).to_be_bytes());
        // Cluster 1: both bits for subcluster 0.
        img[0x40010..0x40018].copy_from_slice(&(0x50000u64 | COPIED).to_be_bytes());
        img[0x40018..0x40020].copy_from_slice(&((1u64 << 32) | 1).to_be_bytes());
        img[0x50000..0x60000].fill(0x5a);
        let r = open_mem(img).unwrap();
        let sc = 2048;
        let e = r.map(0, u64::MAX).unwrap();
        assert_eq!((e.len, e.kind), (2 * sc, ExtentKind::Data));
        let e = r.map(2 * sc, u64::MAX).unwrap();
        assert_eq!((e.len, e.kind), (sc, ExtentKind::Zero));
        let e = r.map(3 * sc, u64::MAX).unwrap();
        assert_eq!((e.len, e.kind), (29 * sc, ExtentKind::Unallocated));
        let mut b = vec![1u8; 3 * sc as usize];
        r.read_at(&mut b, 0).unwrap();
        assert!(b[..2 * sc as usize].iter().all(|&x| x == 0x5a));
        assert!(b[2 * sc as usize..].iter().all(|&x| x == 0));
        let e = r.map(65536, 1).unwrap_err().to_string();
        assert!(e.contains("both allocated and zero"), "{e}");
    }

    #[test]
    fn l2_cache_is_bounded() {
        // 2 MiB clusters: 16 tables fit in 32 MiB.
        let c = L2Cache::new(2 << 20);
        assert_eq!(c.max_tables, 16);
        for i in 0..40u64 {
            c.insert(i, vec![i; 4].into());
        }
        let inner = c.inner.lock().unwrap();
        assert_eq!(inner.tables.len(), 16);
        assert_eq!(inner.order.len(), 16);
        drop(inner);
        // The oldest went first.
        assert!(c.get(0).is_none());
        assert_eq!(c.get(39).unwrap()[0], 39);
        // Re-inserting a present table does not grow the queue.
        c.insert(39, vec![0; 4].into());
        assert_eq!(c.inner.lock().unwrap().order.len(), 16);
    }

    #[test]
    fn reads_from_many_threads() {
        let r = open_mem(image()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let r = &r;
                s.spawn(move || {
                    let mut b = vec![0u8; 4096 + t as usize * 100];
                    for i in 0..50u64 {
                        let off = (i * 7919 + t * 13) % (65536 - b.len() as u64);
                        r.read_at(&mut b, off).unwrap();
                        assert!(b.iter().all(|&x| x == 0xab));
                    }
                });
            }
        });
    }

    #[test]
    fn unknown_snapshot_lists_the_available_ones() {
        let s = vec![Qcow2Snapshot {
            entry_offset: 0,
            l1_table_offset: 0x30000,
            l1_size: 1,
            id: "1".into(),
            name: "s1".into(),
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: None,
        }];
        assert_eq!(find_snapshot(&s, "1").unwrap(), 0);
        assert_eq!(find_snapshot(&s, "s1").unwrap(), 0);
        let e = find_snapshot(&s, "nope").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("1 's1'"), "{e}");
    }
}
