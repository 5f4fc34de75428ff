//! In-place updates of an existing monolithicSparse VMDK (the target of an incremental sync).
//!
//! One hosted sparse extent with its descriptor embedded. A write to an allocated grain
//! overwrites it where it is; a write to an unallocated (or zeroed) grain appends a whole grain
//! at the end of the file (grain aligned; the rest of the grain is zeros, there is no parent)
//! and points the grain table entry at it, in the primary and in the redundant grain table. A
//! grain directory entry of 0 gets a new grain table (both copies) at the end of the file.
//!
//! Ordering (see [`ImageUpdater`]): grain tables are changed in memory and written back by
//! [`flush`](ImageUpdater::flush) (or when too many are pending): sync the data, write the grain
//! tables, sync, write the grain directory entries, sync. A crash between two flushes leaves
//! at worst grains (and tables) appended but not referenced yet.
//!
//! Zeroing: an unallocated or zeroed grain already reads as zeros (no parent is accepted); an
//! allocated one is zeroed where it is (a punched hole where the file system can, so it costs
//! no disk space and the grain is reused by a later write instead of being leaked).
//!
//! Descriptor files whose extents are all flat or hosted sparse (monolithicFlat,
//! twoGbMaxExtentFlat, vmfs, twoGbMaxExtentSparse) are written in place in their extent files
//! (each sparse one as above), which must be plain file names beside the descriptor (a
//! descriptor cannot direct writes anywhere else).
//!
//! Built on the reader's pieces: a sparse extent is a [`SparseExtent`] over the storage
//! written (its header, primary grain directory, and the reading and caching of grain tables);
//! the updater keeps the tables it changes and, when it writes one back, the extent's cached
//! copy. Its own checks of the directories are stricter than the reader's (nothing may point
//! into the header or the embedded descriptor) and it also reads the redundant directory.
//! Every file (a sparse file, a descriptor and its extents) is opened once, read-write when it
//! can be; when it cannot, it is still checked through a read-only handle, so that a refusal
//! says why, and the reason it cannot be written is given only once it has been accepted.
//!
//! Refused, with the reason and nothing written: streamOptimized (compressed grains, markers,
//! directory at the end), a disk with a parent, an extent not closed cleanly (its two grain
//! tables may disagree), descriptor files with other extents (vmfsSparse, seSparse, raw
//! devices: convert to a writable image, change that, convert back), and any table entry
//! pointing outside the file or into the header and descriptor.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::VmdkError;
use super::descriptor::{VmdkDescriptor, VmdkExtentType};
use super::sparse::{
    FLAG_REDUNDANT_GT, GD_AT_END, HEADER_SIZE, SPARSE_MAGIC, SparseExtent, SparseHeader,
    read_entries,
};
use crate::error::{Error, Result};
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, ImageUpdater, check_read_range,
};
use crate::storage::{FileStorage, Storage};

const SECTOR: u64 = 512;
/// Largest grain directory held in memory (64 TiB of 64 KiB grains needs 8 MiB).
const MAX_GD_BYTES: u64 = 64 << 20;
/// Grain tables kept in memory before a write-back (each is 2 KiB with 512 entries).
const MAX_CACHED_GTS: usize = 1024;

/// One grain table in memory: its entries and whether they differ from the file.
#[derive(Debug)]
struct Gt {
    entries: Vec<u32>,
    dirty: bool,
}

/// Writes into an existing monolithicSparse, monolithicFlat, twoGbMaxExtentFlat or vmfs VMDK
/// in place; see [`ImageUpdater`] and the module documentation.
#[derive(Debug)]
pub struct VmdkUpdater {
    virtual_size: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sparse(Box<SparseUpdater>),
    Flat(FlatUpdater),
}

/// The monolithicSparse updater.
#[derive(Debug)]
struct SparseUpdater {
    /// Where the extent was opened from (errors name it), when it was opened by path.
    path: Option<PathBuf>,
    /// The extent as the reader sees it, over the storage written: header, primary grain
    /// directory (kept current here), and the grain tables, read and cached there (a table
    /// written back replaces its cached copy).
    ext: SparseExtent,
    virtual_size: u64,
    /// Redundant grain directory, when the extent has one.
    rgd: Option<Vec<u32>>,
    /// Grain directory entries changed since the last flush.
    dirty_gd: BTreeSet<u64>,
    /// Grain tables being changed, by directory index: primary copy (the redundant one is
    /// kept equal).
    gts: HashMap<u64, Gt>,
    /// Grain tables held in `gts` before a write-back ([`MAX_CACHED_GTS`]; less in tests).
    max_gts: usize,
    /// Where the next grain or table goes (bytes, sector aligned).
    end: u64,
    /// Nothing below this byte offset may be a grain (header and embedded descriptor).
    min_host: u64,
    /// Writes since the last sync of the data.
    unsynced: bool,
    /// Byte offset and bytes of the embedded descriptor, until its CID has been renewed.
    descriptor: Option<(u64, Vec<u8>)>,
}

fn refuse(why: String) -> Error {
    Error::Unsupported(format!("this VMDK cannot be updated in place: {why}"))
}

impl VmdkUpdater {
    /// Opens the image at `path` read-write for in-place updates. Refuses images it cannot
    /// update safely (saying why), before writing anything.
    pub fn open(path: &Path) -> Result<VmdkUpdater> {
        let kind = SparseUpdater::open_inner(path).map_err(|e| e.in_file(path))?;
        let virtual_size = match &kind {
            Kind::Sparse(s) => s.virtual_size,
            Kind::Flat(f) => f.virtual_size,
        };
        Ok(VmdkUpdater { virtual_size, kind })
    }

    /// Opens the monolithicSparse VMDK held in `storage` (writable) for in-place updates,
    /// over that storage; `path` (where it was found) only names it in errors. A descriptor
    /// file, whose extents are other files, is updated only by its path ([`VmdkUpdater::open`]).
    pub fn open_storage(storage: Arc<dyn Storage>, path: Option<&Path>) -> Result<VmdkUpdater> {
        let name = |e: Error| match path {
            Some(p) => e.in_file(p),
            None => e,
        };
        let file_len = storage
            .len()
            .map_err(|e| name(Error::io("getting the VMDK's length", e)))?;
        let mut hb = [0u8; HEADER_SIZE];
        let got = storage
            .read_at(&mut hb, 0)
            .map_err(|e| name(Error::io("reading the sparse header at 0x0", e)))?;
        if got < 4 || hb[0..4] != SPARSE_MAGIC {
            return Err(name(refuse(
                "it is a descriptor file; one is updated in place only by its path (its \
                 extents lie beside it)"
                    .into(),
            )));
        }
        let mut sp = SparseUpdater::open_sparse(None, (storage, None), file_len, &hb[..got], false)
            .map_err(name)?;
        sp.path = path.map(Path::to_path_buf);
        Ok(VmdkUpdater {
            virtual_size: sp.virtual_size,
            kind: Kind::Sparse(Box::new(sp)),
        })
    }
}

/// A file opened once for an update: read-write when it can be, else read-only so that it is
/// still checked (a refusal says why whether or not the file is writable), with the reason it
/// cannot be written, given only once everything else has been accepted. Nothing is written
/// before then, so a refused file is never changed.
#[derive(Debug)]
struct Opened {
    file: FileStorage,
    not_writable: Option<std::io::Error>,
}

impl Opened {
    fn open(path: &Path) -> std::io::Result<Opened> {
        match FileStorage::open_read_write(path) {
            Ok(file) => Ok(Opened {
                file,
                not_writable: None,
            }),
            Err(e) => Ok(Opened {
                file: FileStorage::open_read_only(path)?,
                not_writable: Some(e),
            }),
        }
    }

    /// The file, if it was opened for writing.
    fn writable(self) -> std::io::Result<FileStorage> {
        match self.not_writable {
            None => Ok(self.file),
            Some(e) => Err(e),
        }
    }
}

impl SparseUpdater {
    fn open_inner(path: &Path) -> Result<Kind> {
        let f = Opened::open(path).map_err(|e| Error::io("opening the VMDK to update", e))?;
        let file_len = f
            .file
            .len()
            .map_err(|e| Error::io("getting the VMDK's length", e))?;
        let mut hb = [0u8; HEADER_SIZE];
        let got = f
            .file
            .read_at(&mut hb, 0)
            .map_err(|e| Error::io("reading the sparse header at 0x0", e))?;
        if got < 4 || hb[0..4] != SPARSE_MAGIC {
            return Ok(Kind::Flat(FlatUpdater::open(path, f, file_len)?));
        }
        let Opened { file, not_writable } = f;
        Ok(Kind::Sparse(Box::new(Self::open_sparse(
            Some(path),
            (Arc::new(file), not_writable),
            file_len,
            &hb[..got],
            false,
        )?)))
    }

    /// Opens a hosted sparse extent: a monolithicSparse file (`sub` false: its embedded
    /// descriptor must name the file itself as its only extent) or one extent of a descriptor
    /// file (`sub` true: the descriptor file has been checked already). `st` is the storage
    /// written, and why it cannot be written when it was opened read-only ([`Opened`]): that
    /// is reported only once the extent has been accepted.
    fn open_sparse(
        path: Option<&Path>,
        st: (Arc<dyn Storage>, Option<std::io::Error>),
        file_len: u64,
        hb: &[u8],
        sub: bool,
    ) -> Result<SparseUpdater> {
        let h = SparseHeader::parse(hb, 0)?;
        if h.compressed() || h.markers() || h.gd_offset == GD_AT_END {
            return Err(refuse(
                "it is streamOptimized (compressed grains written once, in order); convert it \
                 to a writable image (qcow2, raw, or VMDK with subformat=monolithicSparse), \
                 change that, and convert the result back to streamOptimized"
                    .into(),
            ));
        }
        if h.unclean_shutdown {
            return Err(refuse(
                "its header says it was not closed cleanly (uncleanShutdown = 1), so its grain \
                 tables may be inconsistent; open and close it in its hypervisor, or convert it"
                    .into(),
            ));
        }
        if h.capacity == 0 {
            return Err(refuse(
                "its capacity is 0 (a descriptor container naming other extents)".into(),
            ));
        }
        if h.descriptor_offset == 0 && !sub {
            return Err(refuse(
                "it is a bare sparse extent without an embedded descriptor (part of a \
                 multi-extent disk); only monolithicSparse is updated in place"
                    .into(),
            ));
        }
        let doff = h.descriptor_offset.saturating_mul(SECTOR);
        let dlen = h.descriptor_size * SECTOR; // <= 2048 sectors (validated)
        if doff.saturating_add(dlen) > file_len {
            return Err(VmdkError::corrupt(
                "embedded descriptor",
                doff,
                format!("{dlen} bytes run past the end of the file ({file_len:#x} bytes)"),
            )
            .into());
        }
        let mut db = vec![0u8; dlen as usize];
        st.0.read_exact_at(&mut db, doff)
            .map_err(|e| Error::io(format!("reading the embedded descriptor at {doff:#x}"), e))?;
        let min_host = (doff + dlen).max(SECTOR);
        if sub {
            return Self::finish_open(path, st, h, file_len, min_host, None);
        }
        let d = VmdkDescriptor::parse(&db, doff)?;
        if d.has_parent() {
            return Err(refuse(format!(
                "it is a snapshot with a parent ({}); update a disk without a parent",
                d.parent_hint.as_deref().unwrap_or("parentCID set")
            )));
        }
        if d.extents.len() != 1 || d.extents[0].kind != VmdkExtentType::Sparse {
            return Err(refuse(format!(
                "its embedded descriptor (createType {}) names {} extent(s), expected the file \
                 itself as one SPARSE extent",
                d.create_type,
                d.extents.len()
            )));
        }
        Self::finish_open(path, st, h, file_len, min_host, Some((doff, db)))
    }

    fn finish_open(
        path: Option<&Path>,
        (storage, not_writable): (Arc<dyn Storage>, Option<std::io::Error>),
        h: SparseHeader,
        file_len: u64,
        min_host: u64,
        descriptor: Option<(u64, Vec<u8>)>,
    ) -> Result<SparseUpdater> {
        let n = h.gd_entries();
        let gd = Self::read_dir(
            storage.as_ref(),
            &h,
            h.gd_offset,
            n,
            file_len,
            min_host,
            "grain directory",
        )?;
        let rgd = if h.flags & FLAG_REDUNDANT_GT != 0 && h.rgd_offset != 0 {
            Some(Self::read_dir(
                storage.as_ref(),
                &h,
                h.rgd_offset,
                n,
                file_len,
                min_host,
                "redundant grain directory",
            )?)
        } else {
            None
        };
        if let Some(e) = not_writable {
            return Err(Error::io("opening the VMDK read-write", e));
        }
        Ok(SparseUpdater {
            path: path.map(Path::to_path_buf),
            virtual_size: h.capacity * SECTOR,
            ext: SparseExtent::with_directory(storage, file_len, h, gd),
            rgd,
            dirty_gd: BTreeSet::new(),
            gts: HashMap::new(),
            max_gts: MAX_CACHED_GTS,
            end: file_len.div_ceil(SECTOR) * SECTOR,
            min_host,
            unsynced: false,
            descriptor,
        })
    }

    /// Reads and checks one grain directory (`n` entries at sector `at`).
    fn read_dir(
        st: &dyn Storage,
        h: &SparseHeader,
        at: u64,
        n: u64,
        file_len: u64,
        min_host: u64,
        what: &str,
    ) -> Result<Vec<u32>> {
        let bytes = n * 4; // n <= 2^37 / 8 (capacity and grain limits), no overflow
        if bytes > MAX_GD_BYTES {
            return Err(refuse(format!(
                "its {what} has {n} entries ({bytes} bytes, more than the {MAX_GD_BYTES} held \
                 in memory)"
            )));
        }
        let start = at.checked_mul(SECTOR).filter(|&o| o >= min_host);
        let Some(start) = start.filter(|&o| o.checked_add(bytes).is_some_and(|e| e <= file_len))
        else {
            return Err(VmdkError::corrupt(
                what,
                at.saturating_mul(SECTOR),
                format!(
                    "{n} entries at sector {at:#x} lie outside the file ({file_len:#x} bytes) or \
                     over the header and descriptor"
                ),
            )
            .into());
        };
        // bytes <= file_len: the allocation is bounded by the file.
        let dir = read_entries(st, start, n, what)?;
        let gt_bytes = h.num_gtes_per_gt as u64 * 4;
        for (i, &e) in dir.iter().enumerate() {
            let off = e as u64 * SECTOR;
            if e != 0 && (off < min_host || off + gt_bytes > file_len) {
                return Err(VmdkError::corrupt(
                    what,
                    start,
                    format!(
                        "entry {i} points at sector {e:#x}, outside the file ({file_len:#x} bytes) \
                         or over the header and descriptor"
                    ),
                )
                .into());
            }
        }
        Ok(dir)
    }

    /// `e`, naming the extent's file when it was opened by path.
    fn named(&self, e: Error) -> Error {
        match &self.path {
            Some(p) => e.in_file(p),
            None => e,
        }
    }

    fn io(&self, op: String) -> impl FnOnce(std::io::Error) -> Error {
        move |e| Error::io(op, e)
    }

    fn gt_bytes(&self) -> u64 {
        self.ext.header.num_gtes_per_gt as u64 * 4
    }

    /// Reserves `len` bytes at the end of the file, aligned to `align`, and returns the offset.
    fn allocate(&mut self, len: u64, align: u64) -> Result<u64> {
        let at = self.end.div_ceil(align) * align;
        let end = at
            .checked_add(len)
            .filter(|&e| e / SECTOR <= u32::MAX as u64)
            .ok_or_else(|| {
                refuse("the file would grow past the 2 TiB a grain table entry can address".into())
            })?;
        self.end = end;
        Ok(at)
    }

    /// Makes sure grain table `gdi` is in memory (allocating it when its directory entry is 0).
    fn load_gt(&mut self, gdi: u64) -> Result<()> {
        if self.gts.contains_key(&gdi) {
            return Ok(());
        }
        if self.gts.len() >= self.max_gts {
            self.write_back()?;
            self.gts.clear();
        }
        let i = gdi as usize;
        let gde = self.ext.directory().get(i).copied().ok_or_else(|| {
            Error::InvalidArgument(format!("grain table {gdi} is past the grain directory"))
        })?;
        let gt_alloc = self.gt_bytes().div_ceil(SECTOR) * SECTOR;
        let gt = if gde == 0 {
            let at = self.allocate(gt_alloc, SECTOR)?;
            self.ext.set_directory_entry(i, (at / SECTOR) as u32);
            self.dirty_gd.insert(gdi);
            Gt {
                entries: vec![0; self.ext.header.num_gtes_per_gt as usize],
                dirty: true,
            }
        } else {
            Gt {
                entries: self.ext.table(gde as u64 * SECTOR)?.to_vec(),
                dirty: false,
            }
        };
        let mut gt = gt;
        if let Some(rgd) = self.rgd.as_ref() {
            if rgd.get(i).copied() == Some(0) {
                // A redundant table missing: give it one, equal to the primary.
                let at = self.allocate(gt_alloc, SECTOR)?;
                if let Some(r) = self.rgd.as_mut() {
                    r[i] = (at / SECTOR) as u32;
                }
                self.dirty_gd.insert(gdi);
                gt.dirty = true;
            }
        }
        // Extend the file over newly reserved tables now, so they read as zeros until written.
        self.extend_file()?;
        self.gts.insert(gdi, gt);
        Ok(())
    }

    fn extend_file(&mut self) -> Result<()> {
        let len = self
            .ext
            .storage
            .len()
            .map_err(self.io("getting the VMDK's length".into()))?;
        if len < self.end {
            self.ext
                .storage
                .set_len(self.end)
                .map_err(self.io(format!("extending the VMDK to {:#x} bytes", self.end)))?;
        }
        self.ext.file_len = self.ext.file_len.max(self.end);
        Ok(())
    }

    /// The host offset of grain `g` if allocated (checked against the file and the header).
    fn grain_host(&mut self, g: u64) -> Result<Option<u64>> {
        let per = self.ext.header.num_gtes_per_gt as u64;
        let (gdi, idx) = (g / per, (g % per) as usize);
        self.load_gt(gdi)?;
        let gte = self
            .gts
            .get(&gdi)
            .and_then(|t| t.entries.get(idx))
            .copied()
            .unwrap_or(0);
        self.entry_host(g, gte)
    }

    /// [`SparseUpdater::grain_host`] without loading or allocating anything (for reads): the
    /// grain table in memory, else the one in the file, else none (unallocated).
    fn peek_grain_host(&self, g: u64) -> Result<Option<u64>> {
        let per = self.ext.header.num_gtes_per_gt as u64;
        let (gdi, idx) = (g / per, (g % per) as usize);
        let gte = match self.gts.get(&gdi) {
            Some(t) => t.entries.get(idx).copied().unwrap_or(0),
            None => match self.ext.directory().get(gdi as usize).copied() {
                None | Some(0) => 0,
                Some(gde) => {
                    let t = self.ext.table(gde as u64 * SECTOR)?;
                    t.get(idx).copied().unwrap_or(0)
                }
            },
        };
        self.entry_host(g, gte)
    }

    /// The host offset grain table entry `gte` of grain `g` names, checked.
    fn entry_host(&self, g: u64, gte: u32) -> Result<Option<u64>> {
        let per = self.ext.header.num_gtes_per_gt as u64;
        let (gdi, idx) = (g / per, (g % per) as usize);
        // GTE 1 is a zeroed grain with the flag, and in version 2 and later (sector 1 always
        // holds metadata there), as the reader reads it.
        if gte == 0
            || (gte == 1 && (self.ext.header.zeroed_grain() || self.ext.header.version >= 2))
        {
            return Ok(None);
        }
        let host = gte as u64 * SECTOR;
        if host < self.min_host {
            return Err(VmdkError::corrupt(
                "grain table",
                self.ext.directory().get(gdi as usize).copied().unwrap_or(0) as u64 * SECTOR,
                format!(
                    "entry {idx} (grain {g}) points at sector {gte:#x}, over the header and \
                     descriptor"
                ),
            )
            .into());
        }
        if host >= self.end {
            return Err(VmdkError::corrupt(
                "grain table",
                self.ext.directory().get(gdi as usize).copied().unwrap_or(0) as u64 * SECTOR,
                format!(
                    "entry {idx} (grain {g}) points at sector {gte:#x}, past the end of the file \
                     ({:#x} bytes)",
                    self.end
                ),
            )
            .into());
        }
        Ok(Some(host))
    }

    fn set_gte(&mut self, g: u64, sector: u32) {
        let per = self.ext.header.num_gtes_per_gt as u64;
        if let Some(t) = self.gts.get_mut(&(g / per)) {
            if let Some(e) = t.entries.get_mut((g % per) as usize) {
                *e = sector;
                t.dirty = true;
            }
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        check_read_range(offset, 0, self.virtual_size)?;
        match offset.checked_add(len) {
            Some(e) if e <= self.virtual_size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "write of {len} bytes at offset {offset:#x} goes past the end of the disk \
                 ({:#x} bytes)",
                self.virtual_size
            ))),
        }
    }

    fn sync(&mut self) -> Result<()> {
        self.ext
            .storage
            .sync()
            .map_err(self.io("syncing the VMDK".into()))?;
        self.unsynced = false;
        Ok(())
    }

    /// Data, then grain tables, then grain directory entries, with a sync after each step.
    fn write_back(&mut self) -> Result<()> {
        if self.unsynced || !self.dirty_gd.is_empty() {
            self.renew_cid()?;
        }
        let any_gt = self.gts.values().any(|t| t.dirty);
        if !any_gt && self.dirty_gd.is_empty() {
            if self.unsynced {
                self.sync()?;
            }
            return Ok(());
        }
        self.extend_file()?;
        self.sync()?;
        let mut dirty: Vec<u64> = self
            .gts
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(&k, _)| k)
            .collect();
        dirty.sort_unstable();
        for gdi in &dirty {
            let Some(t) = self.gts.get(gdi) else { continue };
            let raw: Vec<u8> = t.entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            let written: Arc<[u32]> = t.entries.as_slice().into();
            let i = *gdi as usize;
            let primary = self.ext.directory().get(i).copied().unwrap_or(0);
            let mut places = vec![primary];
            if let Some(r) = &self.rgd {
                places.push(r.get(i).copied().unwrap_or(0));
            }
            for s in places.into_iter().filter(|&s| s != 0) {
                let off = s as u64 * SECTOR;
                self.ext
                    .storage
                    .write_all_at(&raw, off)
                    .map_err(self.io(format!("writing the grain table at {off:#x}")))?;
            }
            // Lookups through the extent (after this table leaves `gts`) see what was written.
            if primary != 0 {
                self.ext.cache_table(primary as u64 * SECTOR, written);
            }
        }
        self.sync()?;
        for gdi in std::mem::take(&mut self.dirty_gd) {
            let i = gdi as usize;
            let mut writes = vec![(
                self.ext.header.gd_offset,
                self.ext.directory().get(i).copied(),
            )];
            if let Some(r) = &self.rgd {
                writes.push((self.ext.header.rgd_offset, r.get(i).copied()));
            }
            for (dir, v) in writes {
                let Some(v) = v else { continue };
                let off = dir * SECTOR + gdi * 4;
                self.ext
                    .storage
                    .write_all_at(&v.to_le_bytes(), off)
                    .map_err(self.io(format!("writing grain directory entry {gdi} at {off:#x}")))?;
            }
        }
        self.sync()?;
        for gdi in dirty {
            if let Some(t) = self.gts.get_mut(&gdi) {
                t.dirty = false;
            }
        }
        Ok(())
    }

    /// Gives the embedded descriptor a new content id (`CID`) the first time the disk changes,
    /// as VMware and qemu do: a snapshot made on this disk earlier (its `parentCID`) then no
    /// longer matches, instead of silently reading changed data. Rewritten in place, same
    /// length; a descriptor without a parsable `CID` line is left alone.
    fn renew_cid(&mut self) -> Result<()> {
        let Some((off, bytes)) = self.descriptor.take() else {
            return Ok(());
        };
        let Some(new) = renewed_cid(&bytes) else {
            return Ok(());
        };
        self.ext
            .storage
            .write_all_at(&new, off)
            .map_err(self.io(format!("writing the embedded descriptor at {off:#x}")))
    }

    fn write_inner(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let gb = self.ext.header.grain_bytes();
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let g = at / gb;
            let within = at % gb;
            let n = ((gb - within) as usize).min(buf.len() - pos);
            let part = &buf[pos..pos + n];
            match self.grain_host(g)? {
                Some(host) => {
                    let o = host + within;
                    self.ext
                        .storage
                        .write_all_at(part, o)
                        .map_err(self.io(format!("writing grain {g} at {o:#x}")))?;
                }
                None => {
                    let mut grain = vec![0u8; gb as usize];
                    grain[within as usize..within as usize + n].copy_from_slice(part);
                    let host = self.allocate(gb, gb)?;
                    self.ext
                        .storage
                        .write_all_at(&grain, host)
                        .map_err(self.io(format!("writing new grain {g} at {host:#x}")))?;
                    self.set_gte(g, (host / SECTOR) as u32);
                }
            }
            self.unsynced = true;
            pos += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of this extent at `offset`, as updated so far.
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.virtual_size)?;
        let gb = self.ext.header.grain_bytes();
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let g = at / gb;
            let within = at % gb;
            let n = ((gb - within) as usize).min(buf.len() - pos);
            let part = &mut buf[pos..pos + n];
            match self.peek_grain_host(g)? {
                Some(host) => {
                    let o = host + within;
                    self.ext
                        .storage
                        .read_exact_at(part, o)
                        .map_err(self.io(format!("reading grain {g} at {o:#x}")))?;
                }
                None => part.fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    /// The extent at `offset` (inside the disk): one grain at most, data or zeros.
    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let gb = self.ext.header.grain_bytes();
        let len = (gb - offset % gb).min(max_len);
        Ok(match self.peek_grain_host(offset / gb)? {
            Some(host) => Extent {
                host_offset: Some(host + offset % gb),
                ..Extent::new(offset, len, ExtentKind::Data)
            },
            None => Extent::new(offset, len, ExtentKind::Zero),
        })
    }

    fn zero_inner(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let gb = self.ext.header.grain_bytes();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let g = at / gb;
            let within = at % gb;
            let n = (gb - within).min(end - at);
            // Unallocated and zeroed grains read as zeros already (no parent).
            if let Some(host) = self.grain_host(g)? {
                let o = host + within;
                self.ext
                    .storage
                    .write_zeroes(o, n)
                    .map_err(self.io(format!("zeroing {n} bytes of grain {g} at {o:#x}")))?;
                self.unsynced = true;
            }
            at += n;
        }
        Ok(())
    }
}

impl ImageReader for VmdkUpdater {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        if offset >= self.virtual_size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Data));
        }
        let max_len = max_len.min(self.virtual_size - offset);
        match &self.kind {
            Kind::Sparse(s) => s.map(offset, max_len).map_err(|e| s.named(e)),
            Kind::Flat(f) => f.map(offset, max_len),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.kind {
            Kind::Sparse(s) => s.read(buf, offset).map_err(|e| s.named(e)),
            Kind::Flat(f) => f.read_at(buf, offset),
        }
    }

    fn info(&self) -> ImageInfo {
        ImageInfo::new(Format::Vmdk, self.virtual_size)
    }
}

impl ImageUpdater for VmdkUpdater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        match &mut self.kind {
            Kind::Sparse(s) => s.write_inner(buf, offset).map_err(|e| s.named(e)),
            Kind::Flat(f) => f.write_at(buf, offset),
        }
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        match &mut self.kind {
            Kind::Sparse(s) => s.zero_inner(offset, len).map_err(|e| s.named(e)),
            Kind::Flat(f) => f.write_zeroes(offset, len),
        }
    }
    fn flush(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::Sparse(s) => s.write_back().map_err(|e| s.named(e)),
            Kind::Flat(f) => f.flush(),
        }
    }
}

/// One extent of a descriptor file: where it lies in the virtual disk and in its file.
#[derive(Debug)]
struct FlatExtent {
    start: u64,
    len: u64,
    file_offset: u64,
    path: PathBuf,
    backing: Backing,
}

/// How an extent of a descriptor file is written.
#[derive(Debug)]
enum Backing {
    /// FLAT / VMFS: in place in the file.
    Flat(FileStorage),
    /// SPARSE: a hosted sparse extent of its own.
    Sparse(Box<SparseUpdater>),
}

/// The updater of descriptor files whose extents are all flat (monolithicFlat,
/// twoGbMaxExtentFlat, vmfs): writes go straight to the extent files.
#[derive(Debug)]
struct FlatUpdater {
    path: PathBuf,
    virtual_size: u64,
    extents: Vec<FlatExtent>,
    /// The descriptor file (opened once, with the extents) and its bytes, until its CID has
    /// been renewed.
    descriptor: Option<(Opened, Vec<u8>)>,
    dirty: bool,
}

impl FlatUpdater {
    /// Extent files must be plain names in the descriptor's folder: a descriptor cannot make
    /// us write anywhere else.
    fn open(path: &Path, file: Opened, file_len: u64) -> Result<FlatUpdater> {
        if file_len > super::descriptor::MAX_DESCRIPTOR_BYTES as u64 {
            return Err(refuse(format!(
                "it is neither a sparse extent nor a descriptor file of at most {} bytes",
                super::descriptor::MAX_DESCRIPTOR_BYTES
            )));
        }
        let mut b = vec![0u8; file_len as usize];
        file.file
            .read_exact_at(&mut b, 0)
            .map_err(|e| Error::io("reading the VMDK descriptor", e))?;
        let d = VmdkDescriptor::parse(&b, 0)?;
        if d.has_parent() {
            return Err(refuse(format!(
                "it is a snapshot with a parent ({}); update a disk without a parent",
                d.parent_hint.as_deref().unwrap_or("parentCID set")
            )));
        }
        if let Some(e) = d.extents.iter().find(|e| {
            !matches!(
                e.kind,
                VmdkExtentType::Flat | VmdkExtentType::Vmfs | VmdkExtentType::Sparse
            )
        }) {
            return Err(refuse(format!(
                "createType {}: descriptor line {} is a {:?} extent; of descriptor files only \
                 those with flat or hosted sparse extents (monolithicFlat, twoGbMaxExtentFlat, \
                 vmfs, twoGbMaxExtentSparse) are updated in place; convert it to a raw, qcow2 \
                 or monolithicSparse image, change that, and convert the result back",
                d.create_type, e.line, e.kind
            )));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut extents = Vec::with_capacity(d.extents.len());
        let mut start = 0u64;
        for e in &d.extents {
            let line = e.line;
            if e.access != super::descriptor::VmdkAccess::ReadWrite {
                return Err(refuse(format!(
                    "descriptor line {line}: extent {:?} is not RW",
                    e.file
                )));
            }
            let simple = !e.file.is_empty()
                && !e.file.contains('/')
                && !e.file.contains('\\')
                && e.file != "."
                && e.file != "..";
            if !simple {
                return Err(refuse(format!(
                    "descriptor line {line}: extent file {:?} is not a plain file name beside \
                     the descriptor; only those are written to",
                    e.file
                )));
            }
            let len = e.sectors * SECTOR; // sectors <= 2^37 (validated by the parser)
            let file_offset = e.offset.checked_mul(SECTOR).ok_or_else(|| {
                Error::from(VmdkError::invalid(
                    format!("descriptor line {line}"),
                    0,
                    format!("extent offset {} sectors is too large", e.offset),
                ))
            })?;
            let epath = dir.join(&e.file);
            let st = Opened::open(&epath)
                .map_err(|err| Error::io("opening the flat extent", err).in_file(&epath))?;
            if st.file.kind() != crate::storage::FileKind::Regular {
                return Err(refuse(format!(
                    "descriptor line {line}: extent {:?} is not a regular file",
                    e.file
                )));
            }
            let flen = st
                .file
                .len()
                .map_err(|err| Error::io("getting the extent's length", err).in_file(&epath))?;
            if e.kind == VmdkExtentType::Sparse {
                let mut hb = [0u8; HEADER_SIZE];
                let got = st
                    .file
                    .read_at(&mut hb, 0)
                    .map_err(|err| Error::io("reading the sparse header", err).in_file(&epath))?;
                let sp = SparseUpdater::open_sparse(
                    Some(&epath),
                    (Arc::new(st.file), st.not_writable),
                    flen,
                    &hb[..got],
                    true,
                )
                .map_err(|err| err.in_file(&epath))?;
                if sp.virtual_size < len {
                    return Err(VmdkError::corrupt(
                        format!("descriptor line {line}"),
                        0,
                        format!(
                            "sparse extent {:?} holds {} bytes, the line says {len}",
                            e.file, sp.virtual_size
                        ),
                    )
                    .into());
                }
                extents.push((start, len, 0, epath, Ok(Box::new(sp))));
                start = start.checked_add(len).ok_or_else(|| {
                    Error::InvalidArgument("the extents add up to more than 2^64 bytes".into())
                })?;
                continue;
            }
            if file_offset.checked_add(len).is_none_or(|end| end > flen) {
                return Err(VmdkError::corrupt(
                    format!("descriptor line {line}"),
                    0,
                    format!(
                        "flat extent {:?} of {len} bytes at {file_offset:#x} does not fit in \
                         its file ({flen:#x} bytes)",
                        e.file
                    ),
                )
                .into());
            }
            extents.push((start, len, file_offset, epath, Err(st)));
            start = start.checked_add(len).ok_or_else(|| {
                Error::InvalidArgument("the extents add up to more than 2^64 bytes".into())
            })?;
        }
        // Everything checked: now open for writing.
        let mut opened = Vec::with_capacity(extents.len());
        for (start, len, file_offset, epath, sparse) in extents {
            // A sparse extent is ready; a flat one was opened for writing if it could be.
            let backing = match sparse {
                Ok(sp) => Backing::Sparse(sp),
                Err(st) => Backing::Flat(st.writable().map_err(|err| {
                    Error::io("opening the flat extent read-write", err).in_file(&epath)
                })?),
            };
            opened.push(FlatExtent {
                start,
                len,
                file_offset,
                path: epath,
                backing,
            });
        }
        Ok(FlatUpdater {
            path: path.to_path_buf(),
            virtual_size: start,
            extents: opened,
            descriptor: Some((file, b)),
            dirty: false,
        })
    }

    /// Calls `f(extent, offset in file, offset in the request, length)` for each piece of
    /// `[offset, offset + len)`.
    fn each(
        &mut self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut FlatExtent, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.virtual_size => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "write of {len} bytes at offset {offset:#x} goes past the end of the disk \
                     ({:#x} bytes)",
                    self.virtual_size
                )));
            }
        }
        self.dirty = true;
        let end = offset + len;
        for x in &mut self.extents {
            let (a, b) = (offset.max(x.start), end.min(x.start + x.len));
            if a < b {
                f(x, x.file_offset + (a - x.start), a - offset, b - a)?;
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of the disk at `offset` from the extents, as updated so far.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.virtual_size)?;
        let end = offset + buf.len() as u64;
        for x in &self.extents {
            let (a, b) = (offset.max(x.start), end.min(x.start + x.len));
            if a >= b {
                continue;
            }
            let at = x.file_offset + (a - x.start);
            let part = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match &x.backing {
                Backing::Flat(st) => st.read_exact_at(part, at).map_err(|e| {
                    Error::io(format!("reading {} bytes at {at:#x}", b - a), e).in_file(&x.path)
                })?,
                Backing::Sparse(sp) => sp.read(part, at).map_err(|e| e.in_file(&x.path))?,
            }
        }
        Ok(())
    }

    /// The extent at `offset` (inside the disk), within one extent of the descriptor.
    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let Some(x) = self
            .extents
            .iter()
            .find(|x| offset >= x.start && offset - x.start < x.len)
        else {
            return Ok(Extent::new(offset, max_len, ExtentKind::Zero));
        };
        let len = max_len.min(x.start + x.len - offset);
        let at = x.file_offset + (offset - x.start);
        match &x.backing {
            Backing::Flat(_) => Ok(Extent {
                host_offset: Some(at),
                ..Extent::new(offset, len, ExtentKind::Data)
            }),
            Backing::Sparse(sp) => {
                let e = sp.map(at, len).map_err(|e| e.in_file(&x.path))?;
                Ok(Extent { offset, ..e })
            }
        }
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.each(offset, buf.len() as u64, |x, at, from, n| {
            let part = &buf[from as usize..(from + n) as usize];
            match &mut x.backing {
                Backing::Flat(st) => st.write_all_at(part, at).map_err(|e| {
                    Error::io(format!("writing {n} bytes at {at:#x}"), e).in_file(&x.path)
                }),
                Backing::Sparse(sp) => sp.write_inner(part, at).map_err(|e| e.in_file(&x.path)),
            }
        })
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.each(offset, len, |x, at, _, n| match &mut x.backing {
            Backing::Flat(st) => st.write_zeroes(at, n).map_err(|e| {
                Error::io(format!("zeroing {n} bytes at {at:#x}"), e).in_file(&x.path)
            }),
            Backing::Sparse(sp) => sp.zero_inner(at, n).map_err(|e| e.in_file(&x.path)),
        })
    }

    fn flush(&mut self) -> Result<()> {
        for x in &mut self.extents {
            match &mut x.backing {
                Backing::Flat(st) => st
                    .sync()
                    .map_err(|e| Error::io("syncing the flat extent", e).in_file(&x.path))?,
                Backing::Sparse(sp) => sp.write_back().map_err(|e| e.in_file(&x.path))?,
            }
        }
        if self.dirty {
            let Some((file, bytes)) = self.descriptor.take() else {
                return Ok(());
            };
            if let Some(new) = renewed_cid(&bytes) {
                let f = file
                    .writable()
                    .map_err(|e| Error::io("opening the descriptor", e).in_file(&self.path))?;
                f.write_all_at(&new, 0)
                    .and_then(|()| f.sync())
                    .map_err(|e| Error::io("writing the descriptor", e).in_file(&self.path))?;
            }
        }
        Ok(())
    }
}

/// The descriptor with its `CID=xxxxxxxx` value replaced by a different one (same length), or
/// `None` when it has no such line.
fn renewed_cid(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    let pos = loop {
        let line_end = bytes[at..].iter().position(|&b| b == b'\n').map(|p| at + p);
        let line = &bytes[at..line_end.unwrap_or(bytes.len())];
        if line.starts_with(b"CID=") {
            break at + 4;
        }
        at = line_end? + 1;
    };
    // The value's hex digits (qemu writes them without leading zeros): the new value has as
    // many, so the descriptor keeps its length.
    let digits = bytes
        .get(pos..)?
        .iter()
        .take(8)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return None;
    }
    let old = u32::from_str_radix(std::str::from_utf8(&bytes[pos..pos + digits]).ok()?, 16).ok()?;
    let mask = if digits == 8 {
        u32::MAX
    } else {
        (1u32 << (4 * digits)) - 1
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let mut cid = (nanos.wrapping_mul(0x9e37_79b9) ^ old.rotate_left(7)) & mask;
    if cid == old || cid == super::descriptor::CID_NO_PARENT {
        cid = old.wrapping_add(1) & mask & 0x7fff_ffff;
    }
    let mut out = bytes.to_vec();
    out[pos..pos + digits].copy_from_slice(format!("{cid:0digits$x}").as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path, size: u64) -> PathBuf {
        let raw = dir.join("zero.raw");
        std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
        let src = crate::open(&raw, &crate::OpenOptions::default()).unwrap();
        let p = dir.join("t.vmdk");
        let mut opts = crate::output::OutputOptions::new(Format::Vmdk);
        opts.set("subformat", "monolithicSparse").unwrap();
        crate::output::convert_file(
            src.as_ref(),
            &p,
            &opts,
            &crate::convert::ConvertOptions::default(),
            None,
        )
        .unwrap();
        p
    }

    #[test]
    fn writes_read_back_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), 4 << 20);
        let mut model = vec![0u8; 4 << 20];
        let mut u = VmdkUpdater::open(&p).unwrap();
        for (i, off) in [0u64, 70_000, 1 << 20, (4 << 20) - 10].iter().enumerate() {
            let data = vec![i as u8 + 1; 10];
            u.write_at(&data, *off).unwrap();
            model[*off as usize..*off as usize + 10].copy_from_slice(&data);
        }
        u.write_zeroes(70_002, 3).unwrap();
        model[70_002..70_005].fill(0);
        assert!(u.write_at(&[1], 4 << 20).is_err());
        u.flush().unwrap();
        drop(u);
        let r = crate::open(&p, &crate::OpenOptions::default()).unwrap();
        let mut got = vec![0u8; 4 << 20];
        r.read_at(&mut got, 0).unwrap();
        assert!(got == model);
    }

    /// The shared contract check ([`crate::testing::random_operations`]) on a
    /// monolithicSparse VMDK held in memory; the bytes then read, through the reader, as
    /// the model.
    #[test]
    fn keeps_the_updater_contract_in_memory() {
        use crate::storage::MemStorage;
        use crate::testing::{RandomOps, random_operations};
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), 6 << 20);
        let mem = Arc::new(MemStorage::from_vec(std::fs::read(&p).unwrap()));
        let mut u = VmdkUpdater::open_storage(mem.clone(), None).unwrap();
        let model = MemStorage::from_vec(vec![0u8; 6 << 20]);
        let o = RandomOps {
            block: 64 << 10,
            flush_one_in: 10,
            zero_window_once: true,
            ..RandomOps::new(31, 250, 300_000)
        };
        random_operations(&mut u, &model, &o).unwrap();
        u.flush().unwrap();
        drop(u);
        std::fs::write(&p, mem.to_vec()).unwrap();
        let r = crate::open(&p, &crate::OpenOptions::default()).unwrap();
        let mut got = vec![0u8; 6 << 20];
        r.read_at(&mut got, 0).unwrap();
        assert!(got == model.to_vec());
        // A descriptor file has extents elsewhere: refused without a path.
        let desc = MemStorage::from_vec(b"# Disk DescriptorFile\nversion=1\n".to_vec());
        let e = VmdkUpdater::open_storage(Arc::new(desc), None).unwrap_err();
        assert!(e.chain().contains("descriptor file"), "{}", e.chain());
    }

    /// Grain tables leave the updater's own map after a write-back (here after every table):
    /// later reads and writes then go through the extent's grain-table cache, which must hold
    /// what was written, not what was read before.
    #[test]
    fn tables_written_back_are_read_through_the_extent_cache() {
        use crate::storage::MemStorage;
        use crate::testing::{RandomOps, random_operations};
        let dir = tempfile::tempdir().unwrap();
        let size = 4 * (32 << 20); // four grain tables of 512 grains of 64 KiB
        let p = make(dir.path(), size);
        let mem = Arc::new(MemStorage::from_vec(std::fs::read(&p).unwrap()));
        let mut u = VmdkUpdater::open_storage(mem.clone(), None).unwrap();
        match &mut u.kind {
            Kind::Sparse(s) => s.max_gts = 1,
            Kind::Flat(_) => panic!("not a sparse updater"),
        }
        let model = MemStorage::from_vec(vec![0u8; size as usize]);
        let o = RandomOps {
            block: 64 << 10,
            flush_one_in: 7,
            ..RandomOps::new(5, 300, 200_000)
        };
        random_operations(&mut u, &model, &o).unwrap();
        u.flush().unwrap();
        drop(u);
        std::fs::write(&p, mem.to_vec()).unwrap();
        let r = crate::open(&p, &crate::OpenOptions::default()).unwrap();
        let mut got = vec![0u8; size as usize];
        r.read_at(&mut got, 0).unwrap();
        assert!(got == model.to_vec());
    }

    #[test]
    fn cid_is_renewed_in_place() {
        let d = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\0\0";
        let n = renewed_cid(d).unwrap();
        assert_eq!(n.len(), d.len());
        assert_ne!(&n[..], &d[..]);
        let t = String::from_utf8_lossy(&n);
        assert!(
            t.contains("parentCID=ffffffff") && !t.contains("CID=12345678"),
            "{t}"
        );
        assert!(renewed_cid(b"version=1\nCID=zz\n").is_none());
        let short = renewed_cid(b"CID=45372bd\nx").unwrap();
        assert_eq!(short.len(), 13);
        assert_ne!(&short[..], b"CID=45372bd\nx");
        assert_eq!(&short[11..], b"\nx");
        assert!(renewed_cid(b"version=1\n").is_none());
    }

    /// Regression: the refusal of a streamOptimized VMDK said "cannot be updated in place"
    /// twice and advised a sync, which cannot update it either.
    #[test]
    fn stream_optimized_refusal_says_it_once_and_advises_a_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("zero.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let src = crate::open(&raw, &crate::OpenOptions::default()).unwrap();
        let p = dir.path().join("s.vmdk");
        crate::output::convert_file(
            src.as_ref(),
            &p,
            &crate::output::OutputOptions::new(Format::Vmdk),
            &crate::convert::ConvertOptions::default(),
            None,
        )
        .unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = VmdkUpdater::open(&p).unwrap_err().chain();
        assert_eq!(e.matches("cannot be updated in place").count(), 1, "{e}");
        assert!(e.contains("streamOptimized"), "{e}");
        assert!(e.contains("convert it to a writable image"), "{e}");
        assert!(!e.contains("sync"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn refuses_descriptors_with_sparse_extents_or_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.vmdk");
        for (line, want) in [
            ("RW 8 VMFSSPARSE \"x-delta.vmdk\"", "VmfsSparse extent"),
            ("RW 8 SESPARSE \"x-sesparse.vmdk\"", "SeSparse extent"),
            ("RW 8 FLAT \"../x-flat.vmdk\" 0", "not a plain file name"),
            ("RW 8 FLAT \"/etc/x\" 0", "not a plain file name"),
            ("RDONLY 8 FLAT \"x-flat.vmdk\" 0", "not RW"),
        ] {
            let text = format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"twoGbMaxExtentSparse\"\n{line}\n"
            );
            std::fs::write(&p, &text).unwrap();
            let e = VmdkUpdater::open(&p).unwrap_err().chain();
            assert!(e.contains(want), "{line}: {e}");
            assert_eq!(std::fs::read(&p).unwrap(), text.as_bytes());
        }
    }
}
