//! Structural consistency check of a qcow2 image (`diskconv check`), modelled on `qemu-img check`.
//!
//! The check rebuilds the reference count every host cluster should have from the metadata
//! (qcow2.txt, "Cluster refcounts"): the header cluster, the active L1 table and the L2 tables
//! and data clusters it reaches, the refcount table and blocks, the snapshot table with each
//! snapshot's L1 table and what that reaches, and the persistent bitmaps (directory, tables and
//! data clusters). It then compares that with the refcounts stored in the image:
//!
//! - stored < expected: a **corruption** (freeing the cluster would corrupt data);
//! - stored > expected: a **leak** (wasted space, harmless), as qemu classifies it;
//! - the copied flag (bit 63) of active L1 and L2 entries must be set iff the stored refcount
//!   is exactly one.
//!
//! Besides refcounts it reports malformed entries (reserved bits, unaligned offsets), entries
//! pointing past the end of the file, refcount blocks that are needed but missing, and clusters
//! claimed by two different structures (overlaps), naming both.
//!
//! The image is only read. Memory is proportional to the file size divided by the cluster size
//! (a `u32` expected refcount and a one-byte owner tag per host cluster, plus the refcount
//! blocks themselves); tables are read whole, one I/O each; every table shared by several
//! referrers (an L2 table shared by snapshots, a snapshot L1 table named twice) is read and
//! walked once and counted with a weight, so the work is bounded by the file size too.
//!
//! Known differences from `qemu-img check` (qemu 10): see [`check`].

use std::collections::HashMap;

use super::header::{
    AUTOCLEAR_BITMAPS, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, MAX_CLUSTER_BITS,
    MAX_L1_BYTES, MIN_CLUSTER_BITS, Qcow2Header,
};
use super::l1l2::{self, COMPRESSED, COPIED, L2_RESERVED, L2Entry, OFFSET_MASK, SubclusterBitmap};
use super::refcount::{self, REFTABLE_RESERVED};
use crate::bytes::{be16, be32, be64};
use crate::error::{Error, Result};
pub use crate::formats::check::{CheckProblem, CheckReport, MAX_LISTED_PROBLEMS, ProblemKind};
use crate::storage::Storage;

/// Most host clusters the check tracks. Each costs five bytes of memory (expected refcount and
/// owner tag), so this is 1.25 GiB: a 16 TiB file with 64 KiB clusters, 128 GiB with 512-byte
/// clusters. Larger files are refused with [`ErrorKind::Unsupported`](crate::ErrorKind).
pub const MAX_HOST_CLUSTERS: u64 = 1 << 28;

/// Upper bound on the snapshot table (qemu's QCOW_MAX_SNAPSHOTS_SIZE, 1 KiB x 65536).
const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Fixed part of a snapshot table entry (qcow2.txt, "Snapshots").
const SNAPSHOT_ENTRY_FIXED: usize = 40;
/// Upper bound on a snapshot's extra data (qemu's QCOW_MAX_SNAPSHOT_EXTRA_DATA).
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
/// Upper bound on the number of bitmaps (qemu's QCOW2_MAX_BITMAPS).
const MAX_BITMAPS: u32 = 65535;
/// Upper bound on the bitmap directory (qemu's QCOW2_MAX_BITMAP_DIRECTORY_SIZE).
const MAX_BITMAP_DIRECTORY_BYTES: u64 = 64 << 20;
/// Upper bound on one bitmap table; the same limit as an L1 table.
const MAX_BITMAP_TABLE_BYTES: u64 = MAX_L1_BYTES;
/// Fixed part of a bitmap directory entry (qcow2.txt, "Bitmap directory").
const BITMAP_ENTRY_FIXED: usize = 24;
/// Bitmap directory entry flag bit 0: the bitmap is in use (not saved consistently).
const BITMAP_FLAG_IN_USE: u32 = 1;
/// Bits of a bitmap table entry that must be zero (1-8 and 56-63).
const BITMAP_TABLE_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Bit 0 of a bitmap table entry with offset 0: the cluster reads as all ones.
const BITMAP_TABLE_ALL_ONES: u64 = 1;

/// Checks the structure of the qcow2 image in `storage`, read-only.
///
/// Returns `Err` only when the header is unusable (not qcow2, impossible geometry, tables
/// outside the file, unsupported features such as encryption), when the file is too large to
/// check within [`MAX_HOST_CLUSTERS`], or when the header cannot be read. Everything found
/// after that is in the [`CheckReport`].
///
/// Known differences from `qemu-img check`:
/// - overlaps (a cluster claimed by two different structures) are reported as an extra
///   corruption naming both, besides qemu's `refcount=N reference=M` line; qemu reports a
///   refcount block shared with anything as "refcount block N refcount=M" instead;
/// - the zero flag in a version 2 image or in an extended L2 entry is reported (the
///   specification says it is always 0 there); qemu ignores it;
/// - a refcount block that is needed but missing gets one extra problem besides the
///   per-cluster lines; refcounts behind an invalid refcount table entry give one check error
///   per refcount block, not one per cluster;
/// - malformed snapshot tables and bitmap directories are reported; qemu refuses to open such
///   images at all.
pub fn check(storage: &dyn Storage) -> Result<CheckReport> {
    let file_len = storage
        .len()
        .map_err(|e| Error::io("getting the length of the qcow2 image", e))?;
    // The header and its extensions live in the first cluster; read that much (the cluster
    // size field is clamped so a garbage value cannot make this read large).
    let mut probe = [0u8; 24];
    let n = storage
        .read_at(&mut probe, 0)
        .map_err(|e| Error::io("reading the qcow2 header", e))?;
    let bits = if n >= 24 {
        be32(&probe, 20).clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS)
    } else {
        MIN_CLUSTER_BITS
    };
    let head_len = file_len.min(1 << bits);
    let mut head = vec![0u8; head_len as usize];
    storage
        .read_exact_at(&mut head, 0)
        .map_err(|e| Error::io(format!("reading {head_len} bytes of qcow2 header"), e))?;
    let h = Qcow2Header::parse(&head, file_len)?;
    drop(head);

    let cs = h.cluster_size();
    let nb_clusters = file_len.div_ceil(cs);
    // One extra slot: the last cluster may be partly past the end of the file and a reference
    // may reach into the next one (see `Checker::reference`).
    let slots = nb_clusters + 1;
    if slots > MAX_HOST_CLUSTERS {
        return Err(Error::Unsupported(format!(
            "checking a qcow2 file of {file_len} bytes with {cs}-byte clusters ({nb_clusters} \
             clusters, more than the {MAX_HOST_CLUSTERS} this check tracks)"
        )));
    }
    let slots = slots as usize; // < 2^28: fits
    let per_block = refcount::entries_per_block(h.cluster_bits, h.refcount_order);
    let report = CheckReport {
        total_clusters: h.size.div_ceil(cs),
        cluster_size: cs,
        ..CheckReport::new("qcow2")
    };
    let mut c = Checker {
        storage,
        cs,
        file_len,
        nb_clusters,
        per_block,
        data_file: h.incompatible_features & INCOMPAT_DATA_FILE != 0,
        refs: vec![0; slots],
        owner: vec![0; slots],
        max_ref: 0,
        blocks: Vec::new(),
        report,
        h,
    };
    c.run();
    Ok(c.report)
}

/// Which structure first claimed a host cluster (for overlap messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Owner {
    Header = 1,
    RefTable,
    RefBlock,
    ActiveL1,
    SnapshotTable,
    SnapshotL1,
    BitmapDirectory,
    BitmapTable,
    BitmapData,
    L2Table,
    Data,
    Compressed,
}

impl Owner {
    const ALL: [Owner; 12] = [
        Owner::Header,
        Owner::RefTable,
        Owner::RefBlock,
        Owner::ActiveL1,
        Owner::SnapshotTable,
        Owner::SnapshotL1,
        Owner::BitmapDirectory,
        Owner::BitmapTable,
        Owner::BitmapData,
        Owner::L2Table,
        Owner::Data,
        Owner::Compressed,
    ];

    fn from_tag(tag: u8) -> Option<Owner> {
        Owner::ALL.iter().copied().find(|o| *o as u8 == tag)
    }

    fn name(self) -> &'static str {
        match self {
            Owner::Header => "header",
            Owner::RefTable => "refcount table",
            Owner::RefBlock => "a refcount block",
            Owner::ActiveL1 => "active L1 table",
            Owner::SnapshotTable => "snapshot table",
            Owner::SnapshotL1 => "a snapshot L1 table",
            Owner::BitmapDirectory => "bitmap directory",
            Owner::BitmapTable => "a bitmap table",
            Owner::BitmapData => "a bitmap data cluster",
            Owner::L2Table => "an L2 table",
            Owner::Data => "a data cluster",
            Owner::Compressed => "compressed data",
        }
    }

    /// Whether several references of this kind to one cluster are legitimate (snapshots share
    /// L2 tables and data clusters; compressed clusters are packed into shared host clusters).
    /// Whether the count of such references matches is left to the refcount comparison.
    fn shareable(self) -> bool {
        matches!(self, Owner::L2Table | Owner::Data | Owner::Compressed)
    }
}

/// What the refcount table says about one refcount block slot.
#[derive(Debug)]
enum Block {
    /// No refcount block: refcounts are 0. `entry` is the refcount table index when the table
    /// is long enough to have one. `reported` avoids repeating the message.
    Missing { entry: Option<u64>, reported: bool },
    /// The refcount table entry is invalid (reported already); `reported` as above.
    Invalid { entry: u64, reported: bool },
    /// The refcount block, one cluster.
    Loaded(Box<[u8]>),
}

/// References to one L2 table, gathered from all L1 tables before the L2 table is walked once.
#[derive(Debug, Clone, Copy)]
struct L2Refs {
    /// References from the active L1 table.
    active: u32,
    /// References from snapshot L1 tables.
    snapshot: u32,
    /// Index of the first active L1 entry pointing here (for guest offsets in messages).
    l1_index: Option<u32>,
}

struct Checker<'a> {
    storage: &'a dyn Storage,
    h: Qcow2Header,
    cs: u64,
    file_len: u64,
    nb_clusters: u64,
    per_block: u64,
    data_file: bool,
    /// Expected refcount of each host cluster (saturating).
    refs: Vec<u32>,
    /// First owner of each host cluster (`Owner as u8`, 0 for none).
    owner: Vec<u8>,
    /// Highest host cluster referenced.
    max_ref: u64,
    /// Refcount blocks covering clusters `0..refs.len()`.
    blocks: Vec<Block>,
    report: CheckReport,
}

impl Checker<'_> {
    fn run(&mut self) {
        let cs = self.cs;
        if self.h.incompatible_features & INCOMPAT_DIRTY != 0 {
            self.report.dirty = true;
            self.report.notes.push(
                "the dirty bit is set (lazy refcounts, the image was not closed cleanly): stored \
                 refcounts may legitimately be stale until qemu repairs them on its next \
                 read-write open; differences are listed anyway"
                    .into(),
            );
        }
        if self.h.incompatible_features & INCOMPAT_CORRUPT != 0 {
            self.report
                .notes
                .push("the corrupt bit is set: qemu found this image corrupt before".into());
        }

        // Header, extensions and backing file name: cluster 0.
        self.reference(0, cs, Owner::Header, 1, &|| "the header".into());
        self.load_refcounts();

        let mut l2s: HashMap<u64, L2Refs> = HashMap::new();
        let (l1_offset, l1_size) = (self.h.l1_table_offset, self.h.l1_size);
        if l1_size > 0 {
            self.scan_l1(l1_offset, l1_size, None, 1, &mut l2s);
        }
        self.scan_snapshots(&mut l2s);
        self.scan_bitmaps();

        // Every L2 table is claimed before any data cluster, so an L2 entry pointing at
        // metadata is always reported as such, whatever the order of the tables.
        let mut tables: Vec<(u64, L2Refs)> = l2s.into_iter().collect();
        tables.sort_unstable_by_key(|(off, _)| *off);
        for (off, r) in &tables {
            let weight = r.active.saturating_add(r.snapshot);
            self.reference(*off, cs, Owner::L2Table, weight, &|| {
                format!("the L2 table at {off:#x}")
            });
        }
        for (off, r) in &tables {
            self.scan_l2(*off, r);
        }
        drop(tables);

        self.compare();
    }

    /// Records a problem.
    fn problem(&mut self, kind: ProblemKind, offset: u64, message: String) {
        self.report.push(kind, offset, message);
    }

    fn corruption(&mut self, offset: u64, message: String) {
        self.problem(ProblemKind::Corruption, offset, message);
    }

    /// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros (the last
    /// cluster of an image may be partly missing). An I/O error is a check error.
    fn read(&mut self, offset: u64, len: u64, what: &dyn Fn() -> String) -> Option<Vec<u8>> {
        let Ok(n) = usize::try_from(len) else {
            self.problem(
                ProblemKind::CheckError,
                offset,
                format!("{} is too large to read ({len} bytes)", what()),
            );
            return None;
        };
        let mut buf = vec![0u8; n];
        let mut done = 0;
        while done < n {
            match self.storage.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) => {
                    self.problem(
                        ProblemKind::CheckError,
                        offset,
                        format!(
                            "could not read {} ({len} bytes at {offset:#x}): {e}",
                            what()
                        ),
                    );
                    return None;
                }
            }
        }
        Some(buf)
    }

    /// Counts `weight` references from `owner` to every host cluster that the byte range
    /// `[offset, offset + len)` touches, and reports overlaps with a different structure.
    ///
    /// A range reaching one cluster or more past the end of the file is a corruption and is not
    /// counted (the last cluster may legitimately be partly missing, as qemu allows). Returns
    /// whether the range was counted.
    fn reference(
        &mut self,
        offset: u64,
        len: u64,
        owner: Owner,
        weight: u32,
        what: &dyn Fn() -> String,
    ) -> bool {
        if len == 0 || weight == 0 {
            return true;
        }
        let end = offset.checked_add(len);
        let past = match end {
            Some(end) => end > self.file_len && end - self.file_len >= self.cs,
            None => true,
        };
        let (Some(end), false) = (end, past) else {
            self.corruption(
                offset,
                format!(
                    "{} at {offset:#x} ({len} bytes) lies past the end of the file ({:#x} bytes)",
                    what(),
                    self.file_len
                ),
            );
            return false;
        };
        let first = offset / self.cs;
        let last = (end - 1) / self.cs;
        for cluster in first..=last {
            let i = cluster as usize; // <= nb_clusters < MAX_HOST_CLUSTERS: fits
            let (Some(r), Some(o)) = (self.refs.get(i).copied(), self.owner.get(i).copied()) else {
                // Unreachable: `end < file_len + cs` keeps `last <= nb_clusters`.
                continue;
            };
            self.refs[i] = r.saturating_add(weight);
            self.max_ref = self.max_ref.max(cluster);
            let at = cluster * self.cs;
            if o == 0 {
                self.owner[i] = owner as u8;
                if weight > 1 && !owner.shareable() {
                    self.corruption(
                        at,
                        format!(
                            "host cluster {cluster} ({at:#x}) is used {weight} times by {}",
                            what()
                        ),
                    );
                }
            } else if o != owner as u8 || !owner.shareable() {
                let first = Owner::from_tag(o).map_or("another structure", Owner::name);
                self.corruption(
                    at,
                    format!(
                        "host cluster {cluster} ({at:#x}) is used by both {first} and {}",
                        what()
                    ),
                );
            }
        }
        true
    }

    /// Reads the refcount table and the refcount blocks covering the file, and counts their
    /// own clusters.
    fn load_refcounts(&mut self) {
        let cs = self.cs;
        let rt_off = self.h.refcount_table_offset;
        let rt_len = u64::from(self.h.refcount_table_clusters) * cs;
        self.reference(rt_off, rt_len, Owner::RefTable, 1, &|| {
            "the refcount table".into()
        });
        let rt_entries = rt_len / 8;
        let needed = (self.refs.len() as u64).div_ceil(self.per_block);
        // `needed` <= number of clusters: bounded by MAX_HOST_CLUSTERS.
        self.blocks = (0..needed)
            .map(|i| Block::Missing {
                entry: (i < rt_entries).then_some(i),
                reported: false,
            })
            .collect();
        // The header parser checked that the table (at most 8 MiB) lies inside the file.
        let Some(table) = self.read(rt_off, rt_len, &|| "the refcount table".into()) else {
            return;
        };
        for (i, e) in table.chunks_exact(8).enumerate() {
            let i = i as u64;
            let raw = be64(e, 0);
            if raw == 0 {
                continue;
            }
            let entry_at = rt_off + i * 8;
            let off = raw & !REFTABLE_RESERVED;
            let bad = if raw & REFTABLE_RESERVED != 0 {
                Some(format!(
                    "refcount table entry {i} has reserved bits set ({raw:#018x})"
                ))
            } else if off % cs != 0 {
                Some(format!(
                    "refcount block {i} at {off:#x} is not cluster aligned; refcount table entry \
                     corrupted"
                ))
            } else if off / cs >= self.nb_clusters {
                Some(format!(
                    "refcount block {i} at {off:#x} is outside the image (the file is {:#x} bytes)",
                    self.file_len
                ))
            } else {
                None
            };
            if let Some(msg) = bad {
                self.corruption(entry_at, msg);
                if let Some(b) = self.blocks.get_mut(i as usize) {
                    *b = Block::Invalid {
                        entry: i,
                        reported: false,
                    };
                }
                continue;
            }
            self.reference(off, cs, Owner::RefBlock, 1, &|| {
                format!("refcount block {i} (refcount table entry {i})")
            });
            if i < needed {
                let loaded = match self.read(off, cs, &|| format!("refcount block {i}")) {
                    Some(b) => Block::Loaded(b.into_boxed_slice()),
                    None => Block::Invalid {
                        entry: i,
                        // The read error is reported already.
                        reported: true,
                    },
                };
                self.blocks[i as usize] = loaded;
            }
        }
    }

    /// The stored refcount of a host cluster; `None` when it cannot be read.
    fn stored(&self, cluster: u64) -> Option<u64> {
        match self.blocks.get((cluster / self.per_block) as usize) {
            Some(Block::Loaded(b)) => Some(refcount::get(
                b,
                cluster % self.per_block,
                self.h.refcount_order,
            )),
            Some(Block::Invalid { .. }) => None,
            Some(Block::Missing { .. }) | None => Some(0),
        }
    }

    /// Reads an L1 table, counts its clusters and gathers the L2 tables it points to.
    /// `snapshot` is `None` for the active table, else a description of the snapshot(s).
    fn scan_l1(
        &mut self,
        offset: u64,
        size: u32,
        snapshot: Option<&str>,
        weight: u32,
        l2s: &mut HashMap<u64, L2Refs>,
    ) {
        let cs = self.cs;
        let label = match snapshot {
            None => "the active L1 table".to_string(),
            Some(s) => format!("the L1 table of {s}"),
        };
        let owner = if snapshot.is_none() {
            Owner::ActiveL1
        } else {
            Owner::SnapshotL1
        };
        let len = u64::from(size) * 8;
        if !self.reference(offset, len, owner, weight, &|| label.clone()) {
            return;
        }
        // Size <= MAX_L1_BYTES, checked by the header parser or the snapshot table scan.
        let Some(table) = self.read(offset, len, &|| label.clone()) else {
            return;
        };
        for (i, e) in table.chunks_exact(8).enumerate() {
            let raw = be64(e, 0);
            if raw == 0 {
                continue;
            }
            let entry_at = offset + i as u64 * 8;
            let l2 = match l1l2::decode_l1(raw) {
                Ok(l2) => l2,
                Err(msg) => {
                    self.corruption(entry_at, format!("{label} entry {i}: {msg}"));
                    Some(raw & OFFSET_MASK).filter(|&o| o != 0)
                }
            };
            let Some(l2) = l2 else { continue };
            if l2 % cs != 0 {
                self.corruption(
                    entry_at,
                    format!(
                        "{label} entry {i}: L2 table offset {l2:#x} is not cluster aligned; L1 \
                         entry corrupted"
                    ),
                );
                continue;
            }
            let copied_rc = if snapshot.is_none() {
                self.stored(l2 / cs)
            } else {
                None
            };
            if let Some(rc) = copied_rc.filter(|&rc| (rc == 1) != (raw & COPIED != 0)) {
                self.corruption(
                    entry_at,
                    format!("OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={raw:x} refcount={rc}"),
                );
            }
            if l2 >= self.file_len {
                // Past the end: report it here, with the entry that says so, and do not keep
                // it (so the table map stays bounded by the file size).
                self.reference(l2, cs, Owner::L2Table, weight, &|| {
                    format!("the L2 table of {label} entry {i}")
                });
                continue;
            }
            let r = l2s.entry(l2).or_insert(L2Refs {
                active: 0,
                snapshot: 0,
                l1_index: None,
            });
            if snapshot.is_none() {
                r.active = r.active.saturating_add(weight);
                r.l1_index = r.l1_index.or(Some(i as u32));
            } else {
                r.snapshot = r.snapshot.saturating_add(weight);
            }
        }
    }

    /// Walks one L2 table (once, whatever the number of L1 entries pointing at it).
    fn scan_l2(&mut self, offset: u64, r: &L2Refs) {
        let cs = self.cs;
        let weight = r.active.saturating_add(r.snapshot);
        let active = u64::from(r.active);
        let ext = self.h.extended_l2();
        let es = self.h.l2_entry_size();
        let Some(table) = self.read(offset, cs, &|| format!("the L2 table at {offset:#x}")) else {
            return;
        };
        let coverage = self.h.l2_coverage();
        let mut next_contiguous = 0u64;
        for (j, e) in table.chunks_exact(es as usize).enumerate() {
            let raw = be64(e, 0);
            let sub = if ext {
                SubclusterBitmap::from_raw(be64(e, 8))
            } else {
                SubclusterBitmap::default()
            };
            if raw == 0 && sub.alloc == 0 {
                continue;
            }
            let entry_at = offset + j as u64 * es;
            let what = || match r.l1_index {
                Some(l1) => format!(
                    "L2 table at {offset:#x} entry {j} (guest offset {:#x})",
                    u64::from(l1) * coverage + j as u64 * cs
                ),
                None => format!("L2 table at {offset:#x} entry {j}"),
            };
            let mut v = raw;
            if ext && raw & COMPRESSED == 0 && raw & l1l2::ZERO != 0 {
                self.corruption(
                    entry_at,
                    format!(
                        "{}: bit 0 is set in an extended L2 entry ({raw:#018x}); it must be 0",
                        what()
                    ),
                );
                v &= !l1l2::ZERO;
            }
            let entry = match l1l2::decode_l2(v, self.h.cluster_bits, self.h.version) {
                Ok(entry) => entry,
                Err(msg) => {
                    self.corruption(entry_at, format!("{}: {msg}", what()));
                    // Go on as qemu does: ignore the reserved bits, honour the zero flag.
                    l1l2::decode_l2(v & !L2_RESERVED, self.h.cluster_bits, 3)
                        .unwrap_or(L2Entry::Unallocated)
                }
            };
            match entry {
                L2Entry::Compressed { host, len } => {
                    if active > 0 && raw & COPIED != 0 {
                        self.corruption(
                            entry_at,
                            format!(
                                "{}: compressed cluster has the copied flag (bit 63) set",
                                what()
                            ),
                        );
                    }
                    if self.data_file {
                        self.corruption(
                            entry_at,
                            format!(
                                "{}: compressed cluster in an image with an external data file",
                                what()
                            ),
                        );
                        continue;
                    }
                    self.report.allocated_clusters += active;
                    self.report.compressed_clusters += active;
                    self.report.fragmented_clusters += active;
                    self.reference(host, len, Owner::Compressed, weight, &|| {
                        format!("compressed data of {}", what())
                    });
                }
                L2Entry::Normal { host, .. } | L2Entry::Zero { host: Some(host) } => {
                    self.data_cluster(host, raw, sub, active, weight, entry_at, &what);
                    let contiguous = next_contiguous == 0 || host == next_contiguous;
                    if host % cs == 0 {
                        if !contiguous {
                            self.report.fragmented_clusters += active;
                        }
                        next_contiguous = host + cs;
                    }
                }
                L2Entry::Unallocated if self.data_file && raw & COPIED != 0 => {
                    // Offset 0 of an external data file is valid; the copied flag tells it
                    // from an unallocated entry (qcow2.txt, "External data file").
                    self.data_cluster(0, raw, sub, active, weight, entry_at, &what);
                    if next_contiguous != 0 {
                        self.report.fragmented_clusters += active;
                    }
                    next_contiguous = cs;
                }
                L2Entry::Unallocated | L2Entry::Zero { host: None } => {
                    if sub.alloc != 0 {
                        self.corruption(
                            entry_at,
                            format!(
                                "{}: unallocated cluster has a non-zero subcluster allocation \
                                 bitmap ({:#010x})",
                                what(),
                                sub.alloc
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A plain (or preallocated zero) data cluster at `host` named by an L2 entry.
    #[allow(clippy::too_many_arguments)]
    fn data_cluster(
        &mut self,
        host: u64,
        raw: u64,
        sub: SubclusterBitmap,
        active: u64,
        weight: u32,
        entry_at: u64,
        what: &dyn Fn() -> String,
    ) {
        let cs = self.cs;
        if sub.conflict() != 0 {
            self.corruption(
                entry_at,
                format!(
                    "{}: subclusters {:#010x} are marked both allocated and zero",
                    what(),
                    sub.conflict()
                ),
            );
        }
        if host % cs != 0 {
            self.corruption(
                entry_at,
                format!(
                    "{}: data cluster offset {host:#x} is not cluster aligned; L2 entry corrupted",
                    what()
                ),
            );
            return;
        }
        self.report.allocated_clusters += active;
        if !self.data_file {
            self.reference(host, cs, Owner::Data, weight, &|| {
                format!("the data cluster of {}", what())
            });
        }
        if active > 0 {
            // Clusters of an external data file always have refcount 1.
            let rc = if self.data_file {
                Some(1)
            } else {
                self.stored(host / cs)
            };
            if let Some(rc) = rc.filter(|&rc| (rc == 1) != (raw & COPIED != 0)) {
                self.corruption(
                    entry_at,
                    format!("OFLAG_COPIED data cluster: l2_entry={raw:x} refcount={rc}"),
                );
            }
        }
    }

    /// Parses the snapshot table, counts it and gathers each snapshot's L1 table.
    fn scan_snapshots(&mut self, l2s: &mut HashMap<u64, L2Refs>) {
        let count = self.h.nb_snapshots;
        if count == 0 {
            return;
        }
        let cs = self.cs;
        let table_off = self.h.snapshots_offset;
        if self.data_file {
            self.corruption(
                table_off,
                format!("{count} snapshot(s) in an image with an external data file"),
            );
        }
        // The table has variable-length entries: read it in growing windows, never more than
        // the file holds or the 64 MiB limit.
        let cap = (self.file_len.saturating_sub(table_off)).min(MAX_SNAPSHOT_TABLE_BYTES);
        let mut win = Window {
            base: table_off,
            cap,
            buf: Vec::new(),
        };
        // Snapshot L1 tables by (offset, size): how many snapshots name each, and who first.
        let mut l1s: HashMap<(u64, u32), (u32, String)> = HashMap::new();
        let mut order: Vec<(u64, u32)> = Vec::new();
        let mut pos = 0u64;
        for k in 0..count {
            // Entries start at multiples of 8; the last one needs no padding (qemu writes the
            // table with its exact length).
            pos = pos.next_multiple_of(8);
            let entry_at = table_off + pos;
            let fixed = match win.get(self, pos, SNAPSHOT_ENTRY_FIXED as u64) {
                Ok(b) => b.to_vec(),
                Err(msg) => {
                    if let Some(msg) = msg {
                        self.corruption(entry_at, format!("snapshot table entry {k}: {msg}"));
                    }
                    break;
                }
            };
            let l1_offset = be64(&fixed, 0);
            let l1_size = be32(&fixed, 8);
            let id_len = u64::from(be16(&fixed, 12));
            let name_len = u64::from(be16(&fixed, 14));
            let extra = be32(&fixed, 36);
            if extra > MAX_SNAPSHOT_EXTRA {
                self.corruption(
                    entry_at,
                    format!(
                        "snapshot table entry {k}: {extra} bytes of extra data, more than \
                         {MAX_SNAPSHOT_EXTRA}"
                    ),
                );
                break;
            }
            let names_at = pos + SNAPSHOT_ENTRY_FIXED as u64 + u64::from(extra);
            let names = match win.get(self, names_at, id_len + name_len) {
                Ok(b) => b.to_vec(),
                Err(msg) => {
                    if let Some(msg) = msg {
                        self.corruption(entry_at, format!("snapshot table entry {k}: {msg}"));
                    }
                    break;
                }
            };
            let (id, name) = names.split_at(id_len as usize);
            let label = format!(
                "snapshot {} ({})",
                String::from_utf8_lossy(id),
                String::from_utf8_lossy(name)
            );
            pos = names_at + id_len + name_len;

            if l1_offset % cs != 0 {
                self.corruption(
                    entry_at,
                    format!(
                        "{label} l1_offset={l1_offset:#x}: L1 table is not cluster aligned; \
                         snapshot table entry corrupted"
                    ),
                );
                continue;
            }
            if u64::from(l1_size) * 8 > MAX_L1_BYTES {
                self.corruption(
                    entry_at,
                    format!(
                        "{label} l1_size={l1_size:#x}: L1 table is too large; snapshot table \
                         entry corrupted"
                    ),
                );
                continue;
            }
            if l1_size == 0 {
                continue;
            }
            match l1s.get_mut(&(l1_offset, l1_size)) {
                Some((n, _)) => *n = n.saturating_add(1),
                None => {
                    l1s.insert((l1_offset, l1_size), (1, label));
                    order.push((l1_offset, l1_size));
                }
            }
        }
        // The table's length is what was parsed (qemu's snapshots_size).
        self.reference(table_off, pos, Owner::SnapshotTable, 1, &|| {
            "the snapshot table".into()
        });
        drop(win);
        for key in order {
            if let Some((n, label)) = l1s.remove(&key) {
                let label = if n > 1 {
                    format!("{label} and {} more snapshots", n - 1)
                } else {
                    label
                };
                self.scan_l1(key.0, key.1, Some(&label), n, l2s);
            }
        }
    }

    /// Counts the persistent bitmaps: directory, bitmap tables and bitmap data clusters.
    fn scan_bitmaps(&mut self) {
        let Some(ext) = self.h.bitmaps else {
            return;
        };
        let cs = self.cs;
        if self.h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
            self.report.notes.push(
                "the image has a bitmaps extension but autoclear bit 0 is clear (a program \
                 without bitmap support changed the image): the bitmaps are stale and, as in \
                 qemu, their clusters count as unused"
                    .into(),
            );
            return;
        }
        let dir_off = ext.directory_offset;
        let dir_len = ext.directory_size;
        let bad = if ext.nb_bitmaps == 0 || ext.nb_bitmaps > MAX_BITMAPS {
            Some(format!(
                "bitmaps extension: {} bitmaps (expected 1 to {MAX_BITMAPS})",
                ext.nb_bitmaps
            ))
        } else if dir_len == 0 || dir_len > MAX_BITMAP_DIRECTORY_BYTES {
            Some(format!(
                "bitmaps extension: directory of {dir_len} bytes (expected 1 to {MAX_BITMAP_DIRECTORY_BYTES})"
            ))
        } else if dir_off % cs != 0 {
            Some(format!(
                "bitmaps extension: directory offset {dir_off:#x} is not cluster aligned"
            ))
        } else {
            None
        };
        if let Some(msg) = bad {
            self.corruption(dir_off, msg);
            return;
        }
        if !self.reference(dir_off, dir_len, Owner::BitmapDirectory, 1, &|| {
            "the bitmap directory".into()
        }) {
            return;
        }
        let Some(dir) = self.read(dir_off, dir_len, &|| "the bitmap directory".into()) else {
            return;
        };
        let mut pos = 0usize;
        for k in 0..ext.nb_bitmaps {
            let entry_at = dir_off + pos as u64;
            let Some(fixed) = dir.get(pos..pos + BITMAP_ENTRY_FIXED) else {
                self.corruption(
                    entry_at,
                    format!("bitmap directory entry {k} runs past the end of the directory"),
                );
                break;
            };
            let table_off = be64(fixed, 0);
            let table_size = be32(fixed, 8);
            let flags = be32(fixed, 12);
            let name_len = usize::from(be16(fixed, 18));
            let extra = be32(fixed, 20) as usize;
            let name_at = pos + BITMAP_ENTRY_FIXED + extra;
            let Some(name) = dir.get(name_at..name_at + name_len) else {
                self.corruption(
                    entry_at,
                    format!("bitmap directory entry {k} runs past the end of the directory"),
                );
                break;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            pos = (name_at + name_len).div_ceil(8) * 8;
            if flags & BITMAP_FLAG_IN_USE != 0 {
                self.report.notes.push(format!(
                    "bitmap '{name}' is marked in use: its contents are inconsistent"
                ));
            }
            let table_len = u64::from(table_size) * 8;
            if table_off % cs != 0 || table_len > MAX_BITMAP_TABLE_BYTES {
                self.corruption(
                    entry_at,
                    format!(
                        "bitmap '{name}': table of {table_size} entries at {table_off:#x} is not \
                         cluster aligned or larger than {MAX_BITMAP_TABLE_BYTES} bytes"
                    ),
                );
                continue;
            }
            let label = format!("the table of bitmap '{name}'");
            if table_len == 0
                || !self.reference(table_off, table_len, Owner::BitmapTable, 1, &|| {
                    label.clone()
                })
            {
                continue;
            }
            let Some(table) = self.read(table_off, table_len, &|| label.clone()) else {
                continue;
            };
            for (i, e) in table.chunks_exact(8).enumerate() {
                let raw = be64(e, 0);
                let off = raw & OFFSET_MASK;
                if raw & BITMAP_TABLE_RESERVED != 0
                    || off != 0 && (raw & BITMAP_TABLE_ALL_ONES != 0 || off % cs != 0)
                {
                    self.corruption(
                        table_off + i as u64 * 8,
                        format!("bitmap '{name}' table entry {i} is invalid ({raw:#018x})"),
                    );
                    continue;
                }
                if off != 0 {
                    self.reference(off, cs, Owner::BitmapData, 1, &|| {
                        format!("data cluster {i} of bitmap '{name}'")
                    });
                }
            }
        }
    }

    /// Compares expected and stored refcounts of every host cluster.
    fn compare(&mut self) {
        let cs = self.cs;
        let len = self
            .nb_clusters
            .max(self.max_ref + 1)
            .min(self.refs.len() as u64);
        let mut highest = 0u64;
        for cluster in 0..len {
            let expected = u64::from(self.refs[cluster as usize]);
            let at = cluster * cs;
            let Some(stored) = self.stored(cluster) else {
                let bi = (cluster / self.per_block) as usize;
                if let Some(Block::Invalid {
                    entry,
                    reported: reported @ false,
                }) = self.blocks.get_mut(bi)
                {
                    *reported = true;
                    let entry = *entry;
                    let (a, b) = self.block_range(bi as u64);
                    self.problem(
                        ProblemKind::CheckError,
                        at,
                        format!(
                            "refcounts of clusters {a} to {b} cannot be read: refcount table \
                             entry {entry} is invalid"
                        ),
                    );
                }
                continue;
            };
            if stored > 0 || expected > 0 {
                highest = cluster;
            }
            if stored == expected {
                continue;
            }
            if stored < expected {
                self.missing_block(cluster);
                self.corruption(
                    at,
                    format!("cluster {cluster} refcount={stored} reference={expected}"),
                );
            } else {
                self.problem(
                    ProblemKind::Leak,
                    at,
                    format!("cluster {cluster} refcount={stored} reference={expected}"),
                );
            }
        }
        self.report.image_end_offset = (highest + 1) * cs;
    }

    /// First and last cluster covered by refcount block slot `bi`.
    fn block_range(&self, bi: u64) -> (u64, u64) {
        let a = bi * self.per_block;
        (a, a + self.per_block - 1)
    }

    /// Reports, once per block, that a cluster in use has no refcount block.
    fn missing_block(&mut self, cluster: u64) {
        let bi = (cluster / self.per_block) as usize;
        let Some(Block::Missing {
            entry,
            reported: reported @ false,
        }) = self.blocks.get_mut(bi)
        else {
            return;
        };
        *reported = true;
        let why = match *entry {
            Some(i) => format!("refcount table entry {i} is empty"),
            None => format!(
                "the refcount table has only {} entries",
                u64::from(self.h.refcount_table_clusters) * self.cs / 8
            ),
        };
        let (a, b) = self.block_range(bi as u64);
        self.corruption(
            cluster * self.cs,
            format!(
                "no refcount block for clusters {a} to {b} ({why}) but some of them are in use"
            ),
        );
    }
}

/// A forward-growing read window over a table of unknown length (the snapshot table).
struct Window {
    /// File offset of the table.
    base: u64,
    /// Most bytes the window may hold (file end or size limit).
    cap: u64,
    buf: Vec<u8>,
}

impl Window {
    /// The bytes `[pos, pos + len)` of the table, reading more (doubling) when needed.
    /// `Err(None)`: an I/O error, reported already.
    fn get(&mut self, c: &mut Checker<'_>, pos: u64, len: u64) -> Result<&[u8], Option<String>> {
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= self.cap)
            .ok_or_else(|| {
                Some(format!(
                    "runs past the end of the file or the {MAX_SNAPSHOT_TABLE_BYTES}-byte limit \
                     on snapshot tables"
                ))
            })?;
        let have = self.buf.len() as u64;
        if end > have {
            // cap <= 64 MiB, so these fit in usize.
            let want = end.max(have * 2).max(64 * 1024).min(self.cap);
            let more = c
                .read(self.base + have, want - have, &|| {
                    "the snapshot table".into()
                })
                .ok_or(None)?;
            self.buf.extend_from_slice(&more);
        }
        Ok(&self.buf[pos as usize..end as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{set_be32, set_be64};
    use crate::formats::qcow2::header::{EXT_BITMAPS, INCOMPAT_EXTL2};
    use crate::storage::MemStorage;

    /// 4 KiB clusters.
    const CB: u32 = 12;
    const CS: u64 = 1 << CB;

    /// A small image built by hand. Clusters (4 KiB each):
    /// 0 header, 1 refcount table, 2 refcount block, 3 active L1 table, 4 L2 table,
    /// 5 and 6 data (guest clusters 0 and 1).
    struct Img {
        b: Vec<u8>,
        order: u32,
    }

    impl Img {
        fn new(order: u32) -> Img {
            Img::with(order, |_| {})
        }

        /// `tweak` edits the header before it is serialised.
        fn with(order: u32, tweak: impl FnOnce(&mut Qcow2Header)) -> Img {
            // Header: version 3, 1 MiB virtual disk (one L2 table covers 2 MiB).
            let mut h = Qcow2Header::new(3, CB, 1 << 20);
            h.l1_size = 1;
            h.l1_table_offset = 3 * CS;
            h.refcount_table_offset = CS;
            h.refcount_table_clusters = 1;
            h.refcount_order = order;
            tweak(&mut h);
            let mut b = h.to_bytes().unwrap();
            b.resize(7 * CS as usize, 0);
            let mut img = Img { b, order };
            // Refcount table: entry 0 -> refcount block at cluster 2.
            img.set64(CS, 2 * CS);
            // Refcount block: clusters 0 to 6 are used once.
            for c in 0..7 {
                img.rc(c, 1);
            }
            // Active L1 table: entry 0 -> L2 table at cluster 4, copied flag.
            img.set64(3 * CS, (4 * CS) | COPIED);
            // L2 table: guest cluster 0 -> host cluster 5, guest cluster 1 -> host cluster 6.
            img.l2(0, (5 * CS) | COPIED);
            img.l2(1, (6 * CS) | COPIED);
            // Data.
            img.b[5 * CS as usize..7 * CS as usize].fill(0xAA);
            img
        }

        fn set64(&mut self, off: u64, v: u64) {
            let end = off as usize + 8;
            if self.b.len() < end {
                self.b.resize(end, 0);
            }
            set_be64(&mut self.b, off as usize, v);
        }

        /// Sets the stored refcount of `cluster` (refcount block at cluster 2).
        fn rc(&mut self, cluster: u64, v: u64) {
            let blk = &mut self.b[2 * CS as usize..3 * CS as usize];
            refcount::set(blk, cluster, self.order, v);
        }

        /// Sets standard L2 entry `i` of the L2 table at cluster 4.
        fn l2(&mut self, i: u64, v: u64) {
            self.set64(4 * CS + i * 8, v);
        }

        /// Makes the file `n` clusters long.
        fn clusters(&mut self, n: u64) {
            self.b.resize((n * CS) as usize, 0);
        }

        fn check(&self) -> CheckReport {
            check(&MemStorage::from_vec(self.b.clone())).unwrap()
        }
    }

    fn has(r: &CheckReport, kind: ProblemKind, needle: &str) -> bool {
        r.problems
            .iter()
            .any(|p| p.kind == kind && p.message.contains(needle))
    }

    #[test]
    fn clean_image_is_clean() {
        let r = Img::new(4).check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.total_clusters, 256);
        assert_eq!(r.allocated_clusters, 2);
        assert_eq!(r.fragmented_clusters, 0);
        assert_eq!(r.image_end_offset, 7 * CS);
        assert!(!r.dirty);
        let text = r.to_string();
        assert!(
            text.contains("No errors were found on the image."),
            "{text}"
        );
        assert!(
            text.contains("2/256 = 0.78% allocated, 0.00% fragmented, 0.00% compressed clusters"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "corruptions",
            "leaks",
            "check-errors",
            "image-end-offset",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn every_refcount_width() {
        for order in 0..=6 {
            let r = Img::new(order).check();
            assert!(r.is_clean(), "order {order}: {r}");
            // Refcount 2 needs 2 bits: a corruption with 1-bit refcounts, a leak otherwise.
            let mut img = Img::new(order);
            img.rc(5, refcount::max_value(order).min(2));
            let r = img.check();
            if order == 0 {
                assert!(r.is_clean(), "order 0: {r}");
            } else {
                assert!(has(
                    &r,
                    ProblemKind::Leak,
                    "cluster 5 refcount=2 reference=1"
                ));
            }
        }
    }

    #[test]
    fn preallocated_zero_cluster_is_counted() {
        let mut img = Img::new(4);
        // Guest cluster 1 reads as zeros but keeps host cluster 6; guest cluster 2 is a plain
        // zero cluster without a host cluster.
        img.l2(1, (6 * CS) | COPIED | l1l2::ZERO);
        img.l2(2, l1l2::ZERO);
        let r = img.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.allocated_clusters, 2);
        img.rc(6, 0);
        let r = img.check();
        assert!(has(
            &r,
            ProblemKind::Corruption,
            "cluster 6 refcount=0 reference=1"
        ));
        // In a version 2 image the zero flag does not exist.
        let mut img = Img::with(4, |h| h.version = 2);
        img.l2(1, (6 * CS) | COPIED | l1l2::ZERO);
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "zero flag set in a version 2"),
            "{r}"
        );
    }

    #[test]
    fn leaked_cluster() {
        let mut img = Img::new(4);
        // Cluster 7: appended, refcount 1, referenced by nothing.
        img.clusters(8);
        img.rc(7, 1);
        let r = img.check();
        assert_eq!((r.leaks, r.corruptions, r.check_errors), (1, 0, 0), "{r}");
        assert_eq!(r.problems[0].offset, 7 * CS);
        assert!(
            r.to_string()
                .contains("Leaked cluster 7 refcount=1 reference=0"),
            "{r}"
        );
        assert!(
            r.to_string().contains("1 leaked clusters were found"),
            "{r}"
        );
        assert_eq!(r.image_end_offset, 8 * CS);
    }

    #[test]
    fn zeroed_refcount_is_corruption() {
        let mut img = Img::new(4);
        img.rc(5, 0);
        let r = img.check();
        assert!(
            r.to_string()
                .contains("ERROR cluster 5 refcount=0 reference=1"),
            "{r}"
        );
        // The copied flag says refcount 1, the refcount says 0.
        assert!(has(
            &r,
            ProblemKind::Corruption,
            "OFLAG_COPIED data cluster: l2_entry=8000000000005000 refcount=0"
        ));
        assert_eq!((r.corruptions, r.leaks), (2, 0), "{r}");
        assert!(r.to_string().contains("2 errors were found"), "{r}");
    }

    #[test]
    fn l2_entry_past_eof() {
        let mut img = Img::new(4);
        // Guest cluster 2 -> 1 MiB, far past the 28 KiB file.
        img.l2(2, 0x10_0000 | COPIED);
        let r = img.check();
        let p = r
            .problems
            .iter()
            .find(|p| p.message.contains("past the end of the file"))
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(p.kind, ProblemKind::Corruption);
        assert!(p.message.contains("guest offset 0x2000"), "{}", p.message);
        // Its refcount (none: no refcount block covers it) contradicts the copied flag.
        assert!(has(&r, ProblemKind::Corruption, "OFLAG_COPIED"), "{r}");
        assert_eq!(r.leaks, 0, "{r}");
    }

    #[test]
    fn two_l2_entries_share_a_cluster() {
        let mut img = Img::new(4);
        // Guest cluster 1 -> host cluster 5 as well; cluster 6 is freed.
        img.l2(1, (5 * CS) | COPIED);
        img.rc(6, 0);
        let r = img.check();
        assert!(
            has(
                &r,
                ProblemKind::Corruption,
                "cluster 5 refcount=1 reference=2"
            ),
            "{r}"
        );
        // Data clusters may be shared (snapshots do it): no overlap message, just refcounts.
        assert_eq!(r.corruptions, 1, "{r}");
        assert_eq!(r.fragmented_clusters, 1, "{r}");
    }

    #[test]
    fn l2_entry_pointing_at_l1_table_overlaps() {
        let mut img = Img::new(4);
        img.l2(1, (3 * CS) | COPIED);
        img.rc(6, 0);
        let r = img.check();
        let text = r.to_string();
        assert!(
            text.contains(
                "ERROR host cluster 3 (0x3000) is used by both active L1 table and the data \
                 cluster of L2 table at 0x4000 entry 1 (guest offset 0x1000)"
            ),
            "{text}"
        );
        assert!(
            text.contains("ERROR cluster 3 refcount=1 reference=2"),
            "{text}"
        );
        assert_eq!(r.problems[0].offset, 3 * CS);
    }

    #[test]
    fn l1_entry_pointing_at_refcount_block_overlaps() {
        let mut img = Img::new(4);
        // The L2 table is said to be the refcount block (cluster 2); cluster 4 is freed.
        img.set64(3 * CS, (2 * CS) | COPIED);
        img.rc(4, 0);
        let r = img.check();
        assert!(
            has(
                &r,
                ProblemKind::Corruption,
                "used by both a refcount block and the L2 table at 0x2000"
            ),
            "{r}"
        );
    }

    #[test]
    fn reserved_bits_and_alignment() {
        let mut img = Img::new(4);
        // L1 entry bit 57 is reserved.
        img.set64(3 * CS, (4 * CS) | COPIED | 1 << 57);
        // L2 entry bit 1 is reserved.
        img.l2(0, (5 * CS) | COPIED | 2);
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "reserved bits set in L1 entry"),
            "{r}"
        );
        assert!(
            has(&r, ProblemKind::Corruption, "reserved bits set in L2 entry"),
            "{r}"
        );
        // Decoding goes on without the reserved bits: nothing else is wrong.
        assert_eq!(r.corruptions, 2, "{r}");

        let mut img = Img::new(4);
        img.l2(1, (6 * CS + 0x200) | COPIED);
        img.rc(6, 0);
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "not cluster aligned"),
            "{r}"
        );

        let mut img = Img::new(4);
        // Refcount table entry with a reserved bit: its refcounts cannot be read.
        img.set64(CS, (2 * CS) | 0x10);
        let r = img.check();
        assert!(
            has(
                &r,
                ProblemKind::Corruption,
                "refcount table entry 0 has reserved bits"
            ),
            "{r}"
        );
        assert!(has(&r, ProblemKind::CheckError, "cannot be read"), "{r}");
    }

    #[test]
    fn copied_flag_must_match_refcount() {
        let mut img = Img::new(4);
        img.l2(0, 5 * CS);
        img.set64(3 * CS, 4 * CS);
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "OFLAG_COPIED data cluster"),
            "{r}"
        );
        assert!(
            has(&r, ProblemKind::Corruption, "OFLAG_COPIED L2 cluster"),
            "{r}"
        );
        assert_eq!(r.corruptions, 2, "{r}");
    }

    #[test]
    fn dirty_bit_is_noted_and_differences_listed() {
        let mut img = Img::new(4);
        // Incompatible feature bit 0: dirty.
        img.set64(72, INCOMPAT_DIRTY);
        img.clusters(8);
        img.rc(7, 1);
        let r = img.check();
        assert!(r.dirty);
        assert!(r.notes.iter().any(|n| n.contains("dirty bit")), "{r}");
        assert_eq!(r.leaks, 1, "{r}");
    }

    #[test]
    fn missing_refcount_block() {
        let mut img = Img::new(4);
        img.set64(CS, 0);
        let r = img.check();
        assert!(
            has(
                &r,
                ProblemKind::Corruption,
                "no refcount block for clusters 0 to 2047 (refcount table entry 0 is empty)"
            ),
            "{r}"
        );
        // Every used cluster but the unreferenced block itself has refcount 0.
        assert!(has(
            &r,
            ProblemKind::Corruption,
            "cluster 0 refcount=0 reference=1"
        ));
        assert!(has(
            &r,
            ProblemKind::Corruption,
            "cluster 6 refcount=0 reference=1"
        ));
        assert!(
            !r.problems
                .iter()
                .any(|p| p.message.starts_with("cluster 2 "))
        );
    }

    #[test]
    fn compressed_clusters_share_host_clusters() {
        let mut img = Img::new(4);
        // Guest clusters 1 and 2: 100 bytes each, both inside host cluster 6.
        img.l2(1, l1l2::encode_compressed(6 * CS, 100, CB).unwrap());
        img.l2(2, l1l2::encode_compressed(6 * CS + 512, 100, CB).unwrap());
        img.rc(6, 2);
        let r = img.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.compressed_clusters, 2);
        assert_eq!(r.allocated_clusters, 3);
        assert_eq!(r.fragmented_clusters, 2);

        img.rc(6, 1);
        let r = img.check();
        assert!(has(
            &r,
            ProblemKind::Corruption,
            "cluster 6 refcount=1 reference=2"
        ));

        // Compressed data crossing into cluster 7 references both.
        let mut img = Img::new(4);
        img.clusters(8);
        img.l2(1, l1l2::encode_compressed(6 * CS + 4000, 1000, CB).unwrap());
        img.rc(7, 1);
        assert!(img.check().is_clean());

        // The copied flag on a compressed entry is an error.
        let mut img = Img::new(4);
        img.l2(
            1,
            l1l2::encode_compressed(6 * CS, 100, CB).unwrap() | COPIED,
        );
        assert!(has(
            &img.check(),
            ProblemKind::Corruption,
            "compressed cluster has the copied flag"
        ));
    }

    #[test]
    fn snapshot_shares_tables() {
        let mut img = Img::with(4, |h| {
            // Snapshot table at cluster 7 with one snapshot.
            h.nb_snapshots = 1;
            h.snapshots_offset = 7 * CS;
        });
        img.clusters(9);
        // Snapshot table entry: L1 table at cluster 8, 1 entry, id "1", name "snap",
        // no extra data.
        let e = 7 * CS as usize;
        set_be64(&mut img.b, e, 8 * CS);
        set_be32(&mut img.b, e + 8, 1);
        img.b[e + 12..e + 14].copy_from_slice(&1u16.to_be_bytes());
        img.b[e + 14..e + 16].copy_from_slice(&4u16.to_be_bytes());
        img.b[e + 40..e + 45].copy_from_slice(b"1snap");
        // Snapshot L1 table: the same L2 table, without the copied flag.
        img.set64(8 * CS, 4 * CS);
        // The L2 table and both data clusters are now shared: refcount 2, no copied flags.
        img.set64(3 * CS, 4 * CS);
        img.l2(0, 5 * CS);
        img.l2(1, 6 * CS);
        for c in [4, 5, 6] {
            img.rc(c, 2);
        }
        img.rc(7, 1);
        img.rc(8, 1);
        let r = img.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.allocated_clusters, 2);

        // The snapshot's reference to the L2 table forgotten.
        img.rc(4, 1);
        let r = img.check();
        assert!(has(
            &r,
            ProblemKind::Corruption,
            "cluster 4 refcount=1 reference=2"
        ));
        assert!(has(&r, ProblemKind::Corruption, "OFLAG_COPIED L2 cluster"));

        // A snapshot table entry running past the end of the file.
        img.rc(4, 2);
        img.b[e + 14..e + 16].copy_from_slice(&0xffffu16.to_be_bytes());
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "snapshot table entry 0"),
            "{r}"
        );
    }

    #[test]
    fn extended_l2_entries() {
        let mut img = Img::with(4, |h| h.incompatible_features |= INCOMPAT_EXTL2);
        // Extended L2 entries are 16 bytes: entry 1 is at byte 16.
        img.l2(0, (5 * CS) | COPIED);
        img.l2(1, 1); // subcluster 0 of guest cluster 0 allocated
        img.l2(2, (6 * CS) | COPIED);
        img.l2(3, 0x0000_0000_ffff_ffff); // all of guest cluster 1 allocated
        let r = img.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.allocated_clusters, 2);

        // Subcluster 1 both allocated and zero.
        img.l2(1, 0x0000_0002_0000_0003);
        // Guest cluster 2 unallocated but with allocated subclusters.
        img.l2(5, 0x10);
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "both allocated and zero"),
            "{r}"
        );
        assert!(
            has(
                &r,
                ProblemKind::Corruption,
                "non-zero subcluster allocation bitmap"
            ),
            "{r}"
        );
    }

    #[test]
    fn external_data_file_clusters_are_not_counted() {
        let mut img = Img::with(4, |h| {
            h.incompatible_features |= INCOMPAT_DATA_FILE;
            h.data_file = Some("disk.raw".into());
        });
        // Data lives in the data file: offsets 0 (copied flag set) and 1 GiB.
        img.l2(0, COPIED);
        img.l2(1, 1 << 30 | COPIED);
        img.rc(5, 0);
        img.rc(6, 0);
        img.clusters(5);
        let r = img.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.allocated_clusters, 2);
    }

    /// Adds a bitmaps extension: directory at cluster 7, one bitmap "b0" whose table (cluster
    /// 8) has one data cluster (9).
    fn with_bitmap() -> Img {
        let mut img = Img::with(4, |h| h.autoclear_features |= AUTOCLEAR_BITMAPS);
        // Find the end of the header extensions (type 0) and put the bitmaps extension there.
        let mut off = 112usize;
        while be32(&img.b, off) != 0 {
            off += 8 + (be32(&img.b, off + 4) as usize).div_ceil(8) * 8;
        }
        set_be32(&mut img.b, off, EXT_BITMAPS);
        set_be32(&mut img.b, off + 4, 24);
        set_be32(&mut img.b, off + 8, 1); // nb_bitmaps
        set_be64(&mut img.b, off + 16, 32); // directory size
        set_be64(&mut img.b, off + 24, 7 * CS); // directory offset
        img.clusters(10);
        // Directory entry: table offset, table size 1, flags "auto", type 1, granularity
        // 2^16, name length 2, no extra data, name.
        let d = 7 * CS as usize;
        set_be64(&mut img.b, d, 8 * CS);
        set_be32(&mut img.b, d + 8, 1);
        set_be32(&mut img.b, d + 12, 2);
        img.b[d + 16] = 1;
        img.b[d + 17] = 16;
        img.b[d + 18..d + 20].copy_from_slice(&2u16.to_be_bytes());
        img.b[d + 24..d + 26].copy_from_slice(b"b0");
        // Bitmap table: entry 0 -> data cluster 9.
        img.set64(8 * CS, 9 * CS);
        for c in 7..10 {
            img.rc(c, 1);
        }
        img
    }

    #[test]
    fn bitmaps_are_counted() {
        let mut img = with_bitmap();
        let r = img.check();
        assert!(r.is_clean(), "{r}");

        // Stale bitmaps (autoclear bit clear): their three clusters leak, as in qemu.
        img.set64(88, 0);
        let r = img.check();
        assert_eq!((r.leaks, r.corruptions), (3, 0), "{r}");
        assert!(r.notes.iter().any(|n| n.contains("autoclear")), "{r}");

        // A bitmap table entry with a reserved bit.
        let mut img = with_bitmap();
        img.set64(8 * CS, (9 * CS) | (1 << 60));
        let r = img.check();
        assert!(
            has(&r, ProblemKind::Corruption, "bitmap 'b0' table entry 0"),
            "{r}"
        );
        // Its data cluster is no longer referenced.
        assert!(
            has(&r, ProblemKind::Leak, "cluster 9 refcount=1 reference=0"),
            "{r}"
        );
    }

    #[test]
    fn unusable_headers_are_errors() {
        let good = Img::new(4).b;
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0; 10],
            vec![0; 4096],
            good[..50].to_vec(),
            good[..100].to_vec(),
            good[..(3 * CS) as usize].to_vec(), // L1 table past the end
        ];
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        cases.push(bad_magic);
        let mut v4 = good.clone();
        set_be32(&mut v4, 4, 4);
        cases.push(v4);
        let mut bits = good.clone();
        set_be32(&mut bits, 20, 40);
        cases.push(bits);
        for (i, c) in cases.into_iter().enumerate() {
            assert!(check(&MemStorage::from_vec(c)).is_err(), "case {i}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift mutations of the metadata clusters of a valid image, plus
        // truncations: every outcome is fine except a panic.
        let base = with_bitmap().b;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut reports, mut dirty) = (0, 0);
        for round in 0..3000 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 8 {
                let cluster = [0u64, 1, 2, 3, 4, 7, 8][(next() % 7) as usize];
                // Mostly the fields that matter: the start of the cluster.
                let within = if next() % 2 == 0 {
                    next() % 128
                } else {
                    next() % CS
                };
                let pos = (cluster * CS + within) as usize;
                b[pos] = next() as u8;
            }
            if round % 10 == 0 {
                let len = (next() % b.len() as u64) as usize;
                b.truncate(len);
            }
            if let Ok(r) = check(&MemStorage::from_vec(b)) {
                // The report is always printable.
                let _ = r.to_string();
                reports += 1;
                dirty += usize::from(!r.is_clean());
            }
        }
        // Most mutations leave a usable header and produce findings: the loop is not vacuous.
        assert!(
            reports > 1500 && dirty > 1000,
            "{reports} reports, {dirty} with problems"
        );
    }
}
