//! ESXi seSparse ("space-efficient sparse") snapshot extents, the default for snapshots of
//! disks over 2 TB and for all snapshots on VMFS 6 (ESXi 6.5+). VMware has not published the
//! format; this follows what open implementations agree on, with strict checks.
//!
//! Layout, little-endian u64 fields in 512-byte sectors:
//! - constant header at 0: magic `0xcafebabe` @0, version `0x0000000200000001` @8, capacity
//!   @16, grain size @24 (8), grain table size @32 (64 sectors = 4096 entries), flags @40 (0),
//!   4 reserved @48..80, volatile header offset @80, ..., grain directory offset @128 and size
//!   @136, grain tables offset @144, ..., grains offset @192;
//! - volatile header: magic `0xcafecafe` @0, `replay_journal` @24 (must be 0: a journal that
//!   needs replaying is not supported);
//! - grain directory entries: 0 = unallocated, else `0x1000_0000_xxxx_xxxx` with the grain
//!   table's index in the low 32 bits;
//! - grain table entries: top nibble 0 = unallocated (the entry must be 0), 1 = unmapped and
//!   2 = zero (both read as zeros), 3 = allocated: grain index
//!   `((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12)`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::VmdkError;
use super::sparse::{Grain, MAX_CAPACITY_SECTORS};
use crate::bytes::le64;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Constant header magic.
pub const SESPARSE_CONST_MAGIC: u64 = 0xcafe_babe;
/// Volatile header magic.
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// The only known version.
pub const SESPARSE_VERSION: u64 = 0x0000_0002_0000_0001;
/// Grain tables kept in the cache (32 KiB each).
const GT_CACHE_TABLES: usize = 512;

/// The validated constant header (offsets and sizes in sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeSparseHeader {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Grain table size in sectors.
    pub grain_table_size: u64,
    /// Volatile header offset.
    pub volatile_header_offset: u64,
    /// Grain directory offset.
    pub grain_dir_offset: u64,
    /// Grain directory size.
    pub grain_dir_size: u64,
    /// Grain tables offset.
    pub grain_tables_offset: u64,
    /// Grains offset.
    pub grains_offset: u64,
}

impl SeSparseHeader {
    /// Parses and validates the 512-byte constant header.
    pub fn parse(b: &[u8]) -> Result<Self, VmdkError> {
        let inv = |d: String| VmdkError::invalid("seSparse constant header", 0, d);
        if b.len() < 512 {
            return Err(inv(format!("{} bytes, need 512", b.len())));
        }
        if le64(b, 0) != SESPARSE_CONST_MAGIC {
            return Err(inv(format!("magic {:#x} is not 0xcafebabe", le64(b, 0))));
        }
        let unsupported = |d: String| VmdkError::Unsupported(format!("seSparse extent: {d}"));
        if le64(b, 8) != SESPARSE_VERSION {
            return Err(unsupported(format!("version {:#x}", le64(b, 8))));
        }
        let h = SeSparseHeader {
            capacity: le64(b, 16),
            grain_size: le64(b, 24),
            grain_table_size: le64(b, 32),
            volatile_header_offset: le64(b, 80),
            grain_dir_offset: le64(b, 128),
            grain_dir_size: le64(b, 136),
            grain_tables_offset: le64(b, 144),
            grains_offset: le64(b, 192),
        };
        if h.grain_size != 8 {
            return Err(unsupported(format!(
                "grain size {} sectors (8 is known)",
                h.grain_size
            )));
        }
        if h.grain_table_size != 64 {
            return Err(unsupported(format!(
                "grain table size {} sectors (64 is known)",
                h.grain_table_size
            )));
        }
        if le64(b, 40) != 0 {
            return Err(unsupported(format!("flags {:#x}", le64(b, 40))));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(inv(format!("capacity {} sectors is too large", h.capacity)));
        }
        let per_gt = h.gtes_per_gt() * h.grain_size;
        let needed = h.capacity.div_ceil(per_gt);
        if h.grain_dir_size.saturating_mul(64) < needed {
            return Err(inv(format!(
                "grain directory of {} sectors, the capacity needs {needed} entries",
                h.grain_dir_size
            )));
        }
        Ok(h)
    }

    /// Entries per grain table.
    pub fn gtes_per_gt(&self) -> u64 {
        self.grain_table_size * 512 / 8
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * 512
    }
}

/// Cached grain tables by byte offset, and their insertion order.
type GtTables = (HashMap<u64, Arc<[u64]>>, VecDeque<u64>);

/// An opened seSparse extent.
pub struct SeSparseExtent {
    /// The extent file.
    pub storage: Arc<dyn Storage>,
    file_len: u64,
    /// The header.
    pub header: SeSparseHeader,
    gd: Vec<u64>,
    cache: Mutex<GtTables>,
}

impl std::fmt::Debug for SeSparseExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeSparseExtent")
            .field("header", &self.header)
            .finish()
    }
}

impl SeSparseExtent {
    /// Opens and validates an seSparse extent.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        let file_len = storage
            .len()
            .map_err(|e| Error::io("getting the extent's length", e))?;
        let mut b = [0u8; 512];
        storage
            .read_exact_at(&mut b, 0)
            .map_err(|e| Error::io("reading the seSparse header", e))?;
        let header = SeSparseHeader::parse(&b)?;
        let vo = header.volatile_header_offset.saturating_mul(512);
        storage.read_exact_at(&mut b, vo).map_err(|e| {
            Error::io(
                format!("reading the seSparse volatile header at {vo:#x}"),
                e,
            )
        })?;
        if le64(&b, 0) != SESPARSE_VOLATILE_MAGIC {
            return Err(VmdkError::invalid(
                "seSparse volatile header",
                vo,
                format!("magic {:#x} is not 0xcafecafe", le64(&b, 0)),
            )
            .into());
        }
        if le64(&b, 24) != 0 {
            return Err(VmdkError::Unsupported(
                "seSparse extent with a journal to replay (the snapshot was not closed cleanly)"
                    .into(),
            )
            .into());
        }
        let n = header
            .capacity
            .div_ceil(header.gtes_per_gt() * header.grain_size);
        let gd_at = header.grain_dir_offset.saturating_mul(512);
        if gd_at.saturating_add(n * 8) > file_len {
            return Err(VmdkError::corrupt(
                "seSparse grain directory",
                gd_at,
                format!("{n} entries do not fit in the file ({file_len:#x} bytes)"),
            )
            .into());
        }
        // n * 8 <= file_len: bounded allocation.
        let mut raw = vec![0u8; (n * 8) as usize];
        storage
            .read_exact_at(&mut raw, gd_at)
            .map_err(|e| Error::io(format!("reading the grain directory at {gd_at:#x}"), e))?;
        let gd = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        Ok(SeSparseExtent {
            storage,
            file_len,
            header,
            gd,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    fn table(&self, at: u64) -> Result<Arc<[u64]>> {
        {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = c.0.get(&at) {
                return Ok(t.clone());
            }
        }
        let mut raw = vec![0u8; self.header.gtes_per_gt() as usize * 8];
        self.storage
            .read_exact_at(&mut raw, at)
            .map_err(|e| Error::io(format!("reading the grain table at {at:#x}"), e))?;
        let t: Arc<[u64]> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.0.insert(at, t.clone()).is_none() {
            c.1.push_back(at);
        }
        while c.1.len() > GT_CACHE_TABLES {
            if let Some(old) = c.1.pop_front() {
                c.0.remove(&old);
            }
        }
        Ok(t)
    }

    /// Where grain `grain` is, and how many grains from it are known to be the same.
    pub fn grain_run(&self, grain: u64) -> Result<(Grain, u64)> {
        let h = &self.header;
        let per_gt = h.gtes_per_gt();
        let gdi = grain / per_gt;
        let gde = self.gd.get(gdi as usize).copied().unwrap_or(0);
        if gde == 0 {
            return Ok((Grain::Unallocated, per_gt - grain % per_gt));
        }
        let gd_at = h.grain_dir_offset * 512;
        if gde & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
            return Err(VmdkError::corrupt(
                "seSparse grain directory",
                gd_at,
                format!("entry {gdi} is {gde:#018x}, not 0x10000000xxxxxxxx"),
            )
            .into());
        }
        let gt_bytes = h.grain_table_size * 512;
        let gt_at = (gde & 0xffff_ffff)
            .checked_mul(gt_bytes)
            .and_then(|o| o.checked_add(h.grain_tables_offset.checked_mul(512)?))
            .filter(|&o| o.saturating_add(gt_bytes) <= self.file_len)
            .ok_or_else(|| {
                VmdkError::corrupt(
                    "seSparse grain directory",
                    gd_at,
                    format!(
                        "entry {gdi} ({gde:#x}) points past the end of the file ({:#x} bytes)",
                        self.file_len
                    ),
                )
            })?;
        let t = self.table(gt_at)?;
        let idx = (grain % per_gt) as usize;
        let e = t[idx];
        let bad =
            |d: String| -> Error { VmdkError::corrupt("seSparse grain table", gt_at, d).into() };
        let g = match e >> 60 {
            0 if e == 0 => Grain::Unallocated,
            0 => {
                return Err(bad(format!(
                    "entry {idx} is {e:#x}: unallocated with stray bits"
                )));
            }
            1 | 2 => Grain::Zero,
            3 => {
                let cluster =
                    ((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12);
                let host = cluster
                    .checked_mul(h.grain_size)
                    .and_then(|s| s.checked_add(h.grains_offset))
                    .and_then(|s| s.checked_mul(512))
                    .filter(|&o| o.saturating_add(h.grain_bytes()) <= self.file_len)
                    .ok_or_else(|| {
                        bad(format!(
                            "entry {idx} (grain {grain}) points past the end of the file ({:#x} bytes)",
                            self.file_len
                        ))
                    })?;
                Grain::Data(host)
            }
            t => return Err(bad(format!("entry {idx} has unknown type {t}"))),
        };
        Ok((g, 1))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bytes::set_le64;
    use crate::storage::MemStorage;

    /// An seSparse file of `capacity` sectors: header @0, volatile header @1, GD @2 (1 sector),
    /// grain tables @8, grains @200.
    pub(crate) fn sesparse_bytes(capacity: u64) -> Vec<u8> {
        let mut f = vec![0u8; 200 * 512];
        set_le64(&mut f, 0, SESPARSE_CONST_MAGIC); // magic
        set_le64(&mut f, 8, SESPARSE_VERSION); // version
        set_le64(&mut f, 16, capacity); // capacity
        set_le64(&mut f, 24, 8); // grain size
        set_le64(&mut f, 32, 64); // grain table size
        set_le64(&mut f, 80, 1); // volatile header offset
        set_le64(&mut f, 88, 1); // volatile header size
        set_le64(&mut f, 128, 2); // grain directory offset
        set_le64(&mut f, 136, 1); // grain directory size
        set_le64(&mut f, 144, 8); // grain tables offset
        set_le64(&mut f, 192, 200); // grains offset
        set_le64(&mut f, 512, SESPARSE_VOLATILE_MAGIC); // volatile magic
        f
    }

    #[test]
    fn reads_grain_types() {
        let mut f = sesparse_bytes(4096);
        set_le64(&mut f, 1024, 0x1000_0000_0000_0000); // GD[0] -> GT 0 at sector 8
        let gt = 8 * 512;
        set_le64(&mut f, gt, 0x3000_0000_0000_0001); // grain 0 -> cluster 1 << 12 (low bits shift up)
        set_le64(&mut f, gt + 8, 0x3001_0000_0000_0000); // grain 1 -> cluster 1
        set_le64(&mut f, gt + 16, 0x2000_0000_0000_0000); // grain 2 zero
        set_le64(&mut f, gt + 24, 0x1000_0000_0000_0000); // grain 3 unmapped
        set_le64(&mut f, gt + 32, 0x0000_0000_0000_0005); // grain 4: stray bits
        set_le64(&mut f, gt + 40, 0x7000_0000_0000_0000); // grain 5: unknown type
        f.resize((200 + 16) * 512, 0);
        let s = SeSparseExtent::open(Arc::new(MemStorage::from_vec(f))).unwrap();
        // Cluster 4096 is far past the end of the file.
        assert!(
            s.grain_run(0)
                .unwrap_err()
                .to_string()
                .contains("past the end")
        );
        assert_eq!(s.grain_run(1).unwrap(), (Grain::Data((200 + 8) * 512), 1));
        assert_eq!(s.grain_run(2).unwrap().0, Grain::Zero);
        assert_eq!(s.grain_run(3).unwrap().0, Grain::Zero);
        assert!(s.grain_run(4).unwrap_err().to_string().contains("stray"));
        assert!(s.grain_run(5).unwrap_err().to_string().contains("type 7"));
        assert_eq!(s.grain_run(6).unwrap().0, Grain::Unallocated);
    }

    #[test]
    fn rejects_bad_headers() {
        let ok = sesparse_bytes(4096);
        let mut b = ok.clone();
        set_le64(&mut b, 0, 1);
        assert!(
            SeSparseHeader::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let mut b = ok.clone();
        set_le64(&mut b, 24, 16);
        assert!(
            SeSparseHeader::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("grain size")
        );
        let mut b = ok.clone();
        set_le64(&mut b, 16, 1 << 40);
        assert!(SeSparseHeader::parse(&b).is_err());
        let mut b = ok.clone();
        set_le64(&mut b, 512 + 24, 1); // journal to replay
        let e = SeSparseExtent::open(Arc::new(MemStorage::from_vec(b))).unwrap_err();
        assert!(e.to_string().contains("journal"), "{e}");
        let mut b = ok;
        set_le64(&mut b, 1024, 0x2000_0000_0000_0000); // GD entry with a bad tag
        let s = SeSparseExtent::open(Arc::new(MemStorage::from_vec(b))).unwrap();
        assert!(s.grain_run(0).is_err());
    }
}
