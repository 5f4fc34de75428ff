//! The hosted sparse extent (VMDK spec 5.0, "Hosted Sparse Extents"): a 512-byte
//! little-endian header (`KDMV`), a grain directory (GD) of grain-table offsets, and grain
//! tables (GT) of grain offsets, all in 512-byte sectors.
//!
//! A grain table entry (GTE) of 0 means unallocated (read the parent, else zeros); 1 means a
//! zeroed grain when the header has the zeroed-grain flag (bit 2) or is version 2 or later (sector
//! 1 always holds metadata, so it cannot be a grain); anything else is the sector where the grain
//! (or, in compressed extents, its marker) starts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::VmdkError;
use crate::bytes::{le32, le64};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Hosted sparse extent magic, "KDMV" read as a little-endian u32 (spec 5.0, header `magicNumber`).
pub const SPARSE_MAGIC: [u8; 4] = *b"KDMV";
/// Size of the header.
pub const HEADER_SIZE: usize = 512;
/// Flag bit 0: the newline-detection bytes are valid.
pub const FLAG_VALID_NEWLINE: u32 = 1 << 0;
/// Flag bit 1: a redundant grain directory exists.
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
/// Flag bit 2: GTE 1 means "zeroed grain".
pub const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
/// Flag bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag bit 17: the extent has markers (streamOptimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `gdOffset` value meaning "the grain directory is at the end; read the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Largest grain accepted, in sectors (1 MiB; real tools use 128 sectors = 64 KiB).
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// Largest number of entries per grain table accepted (the spec fixes 512).
pub const MAX_GTES_PER_GT: u32 = 4096;
/// Largest extent accepted, in sectors (64 TiB).
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 37;
/// Compression algorithm 1: deflate.
pub const COMPRESSION_DEFLATE: u16 = 1;
/// Bytes of grain tables kept in the cache.
const GT_CACHE_BYTES: usize = 16 << 20;

/// The validated header of a hosted sparse extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Version, 1 to 3.
    pub version: u32,
    /// Flags (see the `FLAG_*` constants).
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors (a power of two).
    pub grain_size: u64,
    /// Embedded descriptor offset in sectors (0 = none).
    pub descriptor_offset: u64,
    /// Embedded descriptor size in sectors.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory offset in sectors.
    pub rgd_offset: u64,
    /// Grain directory offset in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// The extent was not closed cleanly.
    pub unclean_shutdown: bool,
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// The 512 bytes on disk (layout as in [`parse`](Self::parse)), for the writers.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&SPARSE_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        // Newline-detection characters: '\n', ' ', '\r', '\n'.
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Parses and validates a header. `offset` is where it lies in its file (0, or the footer).
    ///
    /// Layout: magic u32 @0, version u32 @4, flags u32 @8, capacity u64 @12, grainSize u64 @20,
    /// descriptorOffset u64 @28, descriptorSize u64 @36, numGTEsPerGT u32 @44, rgdOffset u64 @48,
    /// gdOffset u64 @56, overHead u64 @64, uncleanShutdown u8 @72, newline test bytes @73..77
    /// (`\n`, ` `, `\r`, `\n`), compressAlgorithm u16 @77.
    pub fn parse(b: &[u8], offset: u64) -> Result<Self, VmdkError> {
        let inv = |d: String| VmdkError::invalid("sparse extent header", offset, d);
        if b.len() < HEADER_SIZE {
            return Err(inv(format!("{} bytes, a header is {HEADER_SIZE}", b.len())));
        }
        if b[0..4] != SPARSE_MAGIC {
            return Err(inv(format!("magic {:02x?} is not \"KDMV\"", &b[0..4])));
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_size: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_size: le64(b, 36),
            num_gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(VmdkError::Unsupported(format!(
                "sparse extent header at {offset:#x}: version {} (1 to 3 are known)",
                h.version
            )));
        }
        if h.flags & FLAG_VALID_NEWLINE != 0 && b[73..77] != *b"\n \r\n" {
            return Err(inv(format!(
                "newline test bytes {:02x?} are not 0a 20 0d 0a: the file was transferred in text mode",
                &b[73..77]
            )));
        }
        if h.grain_size < 8 || !h.grain_size.is_power_of_two() || h.grain_size > MAX_GRAIN_SECTORS {
            return Err(inv(format!(
                "grain size {} sectors: expected a power of two from 8 to {MAX_GRAIN_SECTORS}",
                h.grain_size
            )));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(inv(format!(
                "capacity {} sectors is more than the {MAX_CAPACITY_SECTORS} (64 TiB) accepted",
                h.capacity
            )));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(inv(format!(
                "numGTEsPerGT {}: expected 1 to {MAX_GTES_PER_GT} (normally 512)",
                h.num_gtes_per_gt
            )));
        }
        if h.compressed() && h.compress_algorithm != COMPRESSION_DEFLATE {
            return Err(VmdkError::Unsupported(format!(
                "sparse extent header at {offset:#x}: compression algorithm {} (only 1, deflate, is known)",
                h.compress_algorithm
            )));
        }
        if h.descriptor_offset != 0 && (h.descriptor_size == 0 || h.descriptor_size > 2048) {
            return Err(inv(format!(
                "embedded descriptor of {} sectors (1 to 2048 accepted)",
                h.descriptor_size
            )));
        }
        Ok(h)
    }

    /// Grains are compressed (flag bit 16).
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Grains and metadata are preceded by markers (flag bit 17).
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// GTE 1 means a zeroed grain.
    pub fn zeroed_grain(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN != 0
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * 512
    }

    /// Number of grain directory entries the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        let per_gt = self.grain_size * self.num_gtes_per_gt as u64;
        self.capacity.div_ceil(per_gt)
    }
}

/// Where one grain of a sparse extent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated in this extent.
    Unallocated,
    /// A zeroed grain (GTE 1).
    Zero,
    /// Stored plainly at this byte offset of the extent file.
    Data(u64),
    /// Stored compressed; its stream (or marker) starts at this byte offset.
    Compressed(u64),
}

/// Cached grain tables by byte offset, and their insertion order.
type GtTables = (HashMap<u64, Arc<[u32]>>, VecDeque<u64>);

/// A bounded FIFO cache of grain tables, keyed by their byte offset.
struct GtCache {
    max: usize,
    inner: Mutex<GtTables>,
}

impl GtCache {
    fn get(&self, off: u64) -> Option<Arc<[u32]>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(&off).cloned()
    }

    fn insert(&self, off: u64, t: Arc<[u32]>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.insert(off, t).is_none() {
            g.1.push_back(off);
        }
        while g.1.len() > self.max {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }
}

/// An opened hosted sparse extent: header, grain directory, grain-table cache.
pub struct SparseExtent {
    /// The extent file.
    pub storage: Arc<dyn Storage>,
    /// Its length in bytes.
    pub file_len: u64,
    /// The header in effect (the footer's copy for streamOptimized with the GD at the end).
    pub header: SparseHeader,
    /// Grain directory: GT offsets in sectors.
    gd: Vec<u32>,
    cache: GtCache,
}

impl std::fmt::Debug for SparseExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseExtent")
            .field("header", &self.header)
            .field("gd_entries", &self.gd.len())
            .finish()
    }
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

/// Reads `n` little-endian 32-bit entries at byte offset `at` (a grain directory or table,
/// named `what` in errors); the caller has bounded `n` by the file.
pub(crate) fn read_entries(storage: &dyn Storage, at: u64, n: u64, what: &str) -> Result<Vec<u32>> {
    let mut raw = vec![0u8; n as usize * 4];
    storage
        .read_exact_at(&mut raw, at)
        .map_err(io_err(format!("reading the {what} at {at:#x}")))?;
    Ok(raw.chunks_exact(4).map(|c| le32(c, 0)).collect())
}

impl SparseExtent {
    /// Opens a sparse extent whose (first) header is `header`. For streamOptimized extents with
    /// the grain directory at the end, the footer is read to find it.
    pub fn open(storage: Arc<dyn Storage>, header: SparseHeader) -> Result<Self> {
        Self::open_with_gd_entries(storage, header, None)
    }

    /// Like [`open`](Self::open), reading `gd_entries` directory entries instead of the number
    /// the capacity needs (COWD extents).
    pub fn open_with_gd_entries(
        storage: Arc<dyn Storage>,
        header: SparseHeader,
        gd_entries: Option<u64>,
    ) -> Result<Self> {
        let file_len = storage
            .len()
            .map_err(io_err("getting the extent's length".into()))?;
        let header = if header.gd_offset == GD_AT_END {
            super::stream::read_footer(storage.as_ref(), file_len, &header)?
        } else {
            header
        };
        let n = gd_entries.unwrap_or_else(|| header.gd_entries());
        let gd_bytes = n * 4;
        let gd_start = header.gd_offset.checked_mul(512).filter(|&o| o > 0);
        let Some(gd_start) =
            gd_start.filter(|&o| o.checked_add(gd_bytes).is_some_and(|e| e <= file_len))
        else {
            return Err(VmdkError::corrupt(
                "grain directory",
                header.gd_offset.saturating_mul(512),
                format!(
                    "{n} entries at sector {:#x} do not fit in the file ({file_len:#x} bytes)",
                    header.gd_offset
                ),
            )
            .into());
        };
        // gd_bytes <= file_len, so the allocation is bounded by the file.
        let gd = read_entries(storage.as_ref(), gd_start, n, "grain directory")?;
        let gt_bytes = header.num_gtes_per_gt as u64 * 4;
        for (i, &e) in gd.iter().enumerate() {
            if e != 0 && (e as u64 * 512).saturating_add(gt_bytes) > file_len {
                return Err(VmdkError::corrupt(
                    "grain directory",
                    gd_start,
                    format!(
                        "entry {i} points at sector {e:#x}, past the end of the file ({file_len:#x} bytes)"
                    ),
                )
                .into());
            }
        }
        Ok(Self::with_directory(storage, file_len, header, gd))
    }

    /// An extent whose grain directory `gd` its caller has read and checked already (the
    /// updater, which checks it more strictly and reads the redundant one too); grain tables
    /// are then read and cached here as for [`open`](Self::open).
    pub(crate) fn with_directory(
        storage: Arc<dyn Storage>,
        file_len: u64,
        header: SparseHeader,
        gd: Vec<u32>,
    ) -> Self {
        let gt_bytes = header.num_gtes_per_gt as usize * 4;
        // Bounded in bytes and in count (tiny tables would otherwise mean millions of entries).
        let max = (GT_CACHE_BYTES / gt_bytes).clamp(4, 8192);
        SparseExtent {
            storage,
            file_len,
            header,
            gd,
            cache: GtCache {
                max,
                inner: Mutex::new((HashMap::new(), VecDeque::new())),
            },
        }
    }

    /// The grain directory: grain table offsets in sectors.
    pub(crate) fn directory(&self) -> &[u32] {
        &self.gd
    }

    /// Points grain directory entry `i` at the grain table at sector `sector` (the updater,
    /// which writes the entry to the file itself).
    pub(crate) fn set_directory_entry(&mut self, i: usize, sector: u32) {
        if let Some(e) = self.gd.get_mut(i) {
            *e = sector;
        }
    }

    /// Replaces the cached grain table at byte offset `gt_off` with `t`, as just written to
    /// the file (the updater), so that lookups see it.
    pub(crate) fn cache_table(&self, gt_off: u64, t: Arc<[u32]>) {
        self.cache.insert(gt_off, t);
    }

    /// The grain table at byte offset `gt_off` (read once, then cached).
    pub(crate) fn table(&self, gt_off: u64) -> Result<Arc<[u32]>> {
        if let Some(t) = self.cache.get(gt_off) {
            return Ok(t);
        }
        let n = self.header.num_gtes_per_gt as u64;
        let t: Arc<[u32]> = read_entries(self.storage.as_ref(), gt_off, n, "grain table")?.into();
        self.cache.insert(gt_off, t.clone());
        Ok(t)
    }

    /// Where grain number `grain` is, and how many grains from it on are known to be the same
    /// without more lookups (more than 1 only for a whole unallocated grain table).
    pub fn grain_run(&self, grain: u64) -> Result<(Grain, u64)> {
        let per_gt = self.header.num_gtes_per_gt as u64;
        let gdi = grain / per_gt;
        if self.gd.get(gdi as usize).is_none_or(|&e| e == 0) {
            return Ok((Grain::Unallocated, per_gt - grain % per_gt));
        }
        Ok((self.grain(grain)?, 1))
    }

    /// Where grain number `grain` (counted from the start of the extent) is.
    pub fn grain(&self, grain: u64) -> Result<Grain> {
        let h = &self.header;
        let per_gt = h.num_gtes_per_gt as u64;
        let gdi = grain / per_gt;
        let Some(&gde) = self.gd.get(gdi as usize) else {
            return Ok(Grain::Unallocated);
        };
        if gde == 0 {
            return Ok(Grain::Unallocated);
        }
        let gt_off = gde as u64 * 512;
        let t = self.table(gt_off)?;
        let idx = (grain % per_gt) as usize;
        let gte = t[idx] as u64;
        if gte == 0 {
            return Ok(Grain::Unallocated);
        }
        if gte == 1 && (h.zeroed_grain() || h.version >= 2) {
            return Ok(Grain::Zero);
        }
        let host = gte * 512;
        let need = if h.compressed() {
            12
        } else {
            let start = grain * h.grain_bytes();
            let cap = h.capacity * 512;
            h.grain_bytes().min(cap.saturating_sub(start)).max(1)
        };
        if host < 512 || host.saturating_add(need) > self.file_len {
            return Err(VmdkError::corrupt(
                "grain table",
                gt_off,
                format!(
                    "entry {idx} (grain {grain}) points at sector {gte:#x}, outside the file ({:#x} bytes)",
                    self.file_len
                ),
            )
            .into());
        }
        Ok(if h.compressed() {
            Grain::Compressed(host)
        } else {
            Grain::Data(host)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bytes::set_le32;

    /// A valid header: version, flags, capacity, grain size, GD offset; rest typical.
    pub(crate) fn header_bytes(
        version: u32,
        flags: u32,
        capacity: u64,
        grain: u64,
        gd: u64,
    ) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(b"KDMV"); // magic
        b[4..8].copy_from_slice(&version.to_le_bytes()); // version
        b[8..12].copy_from_slice(&flags.to_le_bytes()); // flags
        b[12..20].copy_from_slice(&capacity.to_le_bytes()); // capacity (sectors)
        b[20..28].copy_from_slice(&grain.to_le_bytes()); // grainSize (sectors)
        b[44..48].copy_from_slice(&512u32.to_le_bytes()); // numGTEsPerGT
        b[56..64].copy_from_slice(&gd.to_le_bytes()); // gdOffset
        b[64..72].copy_from_slice(&128u64.to_le_bytes()); // overHead
        b[73..77].copy_from_slice(b"\n \r\n"); // newline test
        if flags & FLAG_COMPRESSED != 0 {
            b[77..79].copy_from_slice(&1u16.to_le_bytes()); // compressAlgorithm
        }
        b
    }

    #[test]
    fn parses_a_valid_header() {
        let b = header_bytes(1, FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT, 20480, 128, 21);
        let h = SparseHeader::parse(&b, 0).unwrap();
        assert_eq!(h.capacity, 20480);
        assert_eq!(h.grain_bytes(), 65536);
        assert_eq!(h.gd_entries(), 1);
        assert!(!h.compressed());
    }

    #[test]
    fn rejects_bad_headers() {
        let ok = header_bytes(3, 0x30001, 2048, 128, 1);
        let mut b = ok.clone();
        b[0] = b'X';
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("KDMV")
        );
        let mut b = ok.clone();
        b[4] = 7;
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("version 7")
        );
        let b = header_bytes(1, 1, 2048, 100, 1);
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("grain size 100")
        );
        let b = header_bytes(1, 1, 2048, 1 << 20, 1);
        assert!(SparseHeader::parse(&b, 0).is_err());
        let b = header_bytes(1, 1, u64::MAX, 128, 1);
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("capacity")
        );
        let mut b = ok.clone();
        b[75] = b'\n'; // "\r" turned into "\n" by a text-mode transfer
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("newline")
        );
        let mut b = ok.clone();
        b[44..48].copy_from_slice(&0u32.to_le_bytes());
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("numGTEsPerGT")
        );
        let mut b = ok.clone();
        b[77] = 2;
        assert!(
            SparseHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("compression")
        );
        assert!(SparseHeader::parse(&ok[..100], 0).is_err());
    }

    #[test]
    fn grain_lookup_validates_offsets() {
        use crate::storage::MemStorage;
        // 4 grains of 8 sectors; GD at sector 1, GT at sector 2, grain data from sector 4.
        let mut f = header_bytes(1, FLAG_VALID_NEWLINE, 32, 8, 1);
        f[44..48].copy_from_slice(&4u32.to_le_bytes()); // 4 GTEs per GT
        f.resize(4 * 512, 0);
        set_le32(&mut f, 512, 2); // GD[0] = sector 2
        set_le32(&mut f, 1024, 4); // GTE 0 -> sector 4
        set_le32(&mut f, 1028, 1); // GTE 1 -> 1 (not zero: v1, no flag)
        set_le32(&mut f, 1032, 0); // GTE 2 unallocated
        set_le32(&mut f, 1036, 1000); // GTE 3 past the end
        f.resize(12 * 512, 0xab);
        let h = SparseHeader::parse(&f, 0).unwrap();
        let s = SparseExtent::open(Arc::new(MemStorage::from_vec(f)), h).unwrap();
        assert_eq!(s.grain(0).unwrap(), Grain::Data(2048));
        assert_eq!(s.grain(2).unwrap(), Grain::Unallocated);
        assert_eq!(s.grain(9).unwrap(), Grain::Unallocated);
        let e = s.grain(3).unwrap_err().to_string();
        assert!(
            e.contains("grain table at 0x400") && e.contains("entry 3"),
            "{e}"
        );
    }

    #[test]
    fn grain_directory_past_the_end_is_an_error() {
        use crate::storage::MemStorage;
        let f = header_bytes(1, 0, 1 << 30, 128, 1 << 20);
        let h = SparseHeader::parse(&f, 0).unwrap();
        let e = SparseExtent::open(Arc::new(MemStorage::from_vec(f)), h).unwrap_err();
        assert!(e.to_string().contains("grain directory"), "{e}");
    }
}
