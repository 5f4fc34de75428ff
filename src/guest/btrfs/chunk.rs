//! Logical to physical addresses: the chunk items of the superblock's `sys_chunk_array` (enough
//! to read the chunk tree) and of the chunk tree. Single-device file systems only: SINGLE, DUP
//! and the RAID1 profiles (every stripe holds a whole copy) are read; RAID0, RAID10, RAID5 and
//! RAID6 chunks are refused when a read reaches them.

use super::tree::{KEY_SIZE, Key};
use super::{corrupt, le_u16, le_u64};
use crate::error::{Error, Result};

/// `BTRFS_CHUNK_ITEM_KEY`.
pub const CHUNK_ITEM_KEY: u8 = 228;
/// The size of a chunk item without its stripes (`struct btrfs_chunk`).
const CHUNK_SIZE: usize = 48;
/// The size of one stripe (`struct btrfs_stripe`).
const STRIPE_SIZE: usize = 32;
/// At most this many chunks are kept (a 16 TiB file system has about 16 000 data chunks).
const MAX_CHUNKS: usize = 1 << 20;

/// Profile bits of a chunk's type: RAID0, RAID1, DUP, RAID10, RAID5, RAID6, RAID1C3, RAID1C4.
const RAID0: u64 = 0x8;
const RAID1: u64 = 0x10;
const DUP: u64 = 0x20;
const RAID10: u64 = 0x40;
const RAID5: u64 = 0x80;
const RAID6: u64 = 0x100;
const RAID1C3: u64 = 0x200;
const RAID1C4: u64 = 0x400;

/// One chunk: `len` logical bytes from `logical`, stored whole at each of `copies` (device
/// offsets), or refused with the profile's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// First logical address.
    pub logical: u64,
    /// Length in bytes.
    pub len: u64,
    /// Device offsets of the copies (one per mirror).
    pub copies: Vec<u64>,
    /// The profile when it is one this reader cannot map ("RAID0", ...).
    pub refused: Option<&'static str>,
}

/// Parses the chunk item `item` (key offset `logical`), found at byte `offset` of the device.
pub fn parse_chunk(item: &[u8], logical: u64, offset: u64) -> Result<Chunk> {
    let what = || format!("chunk item for logical {logical:#x}");
    if item.len() < CHUNK_SIZE {
        return Err(corrupt(
            &what(),
            offset,
            format!("{} bytes, expected at least {CHUNK_SIZE}", item.len()),
        ));
    }
    let len = le_u64(item, 0);
    let ty = le_u64(item, 24);
    let num_stripes = le_u16(item, 44) as usize;
    let need = CHUNK_SIZE + num_stripes * STRIPE_SIZE;
    if num_stripes == 0 || item.len() < need {
        return Err(corrupt(
            &what(),
            offset,
            format!(
                "{num_stripes} stripes in {} bytes, expected at least one stripe and {need} bytes",
                item.len()
            ),
        ));
    }
    if len == 0 || logical.checked_add(len).is_none() {
        return Err(corrupt(&what(), offset, format!("length is {len:#x}")));
    }
    let refused = [
        (RAID0, "RAID0"),
        (RAID10, "RAID10"),
        (RAID5, "RAID5"),
        (RAID6, "RAID6"),
    ]
    .iter()
    .find(|(bit, _)| ty & bit != 0)
    .map(|(_, n)| *n);
    let mirrored = ty & (RAID1 | DUP | RAID1C3 | RAID1C4) != 0;
    let copies_n = if mirrored { num_stripes } else { 1 };
    let mut copies = Vec::with_capacity(copies_n);
    for i in 0..copies_n {
        let s = CHUNK_SIZE + i * STRIPE_SIZE;
        let phys = le_u64(item, s + 8);
        if phys.checked_add(len).is_none() {
            return Err(corrupt(
                &what(),
                offset + s as u64,
                format!("stripe {i} at {phys:#x} ends past 2^64"),
            ));
        }
        copies.push(phys);
    }
    Ok(Chunk {
        logical,
        len,
        copies,
        refused,
    })
}

/// The chunks known so far, sorted by logical address.
#[derive(Debug, Default, Clone)]
pub struct ChunkMap {
    chunks: Vec<Chunk>,
}

impl ChunkMap {
    /// Reads the superblock's `sys_chunk_array` (`bytes`, at device offset `offset`): pairs of a
    /// key and a chunk item.
    pub fn from_sys_array(bytes: &[u8], offset: u64) -> Result<ChunkMap> {
        let mut map = ChunkMap::default();
        let mut at = 0usize;
        while at < bytes.len() {
            let here = offset + at as u64;
            let key = bytes
                .get(at..at + KEY_SIZE)
                .map(Key::parse)
                .ok_or_else(|| {
                    corrupt(
                        "sys_chunk_array",
                        here,
                        format!("a key cut short at byte {at} of {}", bytes.len()),
                    )
                })?;
            if key.ty != CHUNK_ITEM_KEY {
                return Err(corrupt(
                    "sys_chunk_array",
                    here,
                    format!(
                        "key type {}, expected {CHUNK_ITEM_KEY} (chunk item)",
                        key.ty
                    ),
                ));
            }
            at += KEY_SIZE;
            let rest = &bytes[at..];
            let stripes = if rest.len() >= CHUNK_SIZE {
                le_u16(rest, 44) as usize
            } else {
                0
            };
            let size = CHUNK_SIZE + stripes * STRIPE_SIZE;
            let item = rest.get(..size).ok_or_else(|| {
                corrupt(
                    "sys_chunk_array",
                    offset + at as u64,
                    format!("a chunk item of {size} bytes with {} left", rest.len()),
                )
            })?;
            map.insert(parse_chunk(item, key.offset, offset + at as u64)?)?;
            at += size;
        }
        Ok(map)
    }

    /// Adds a chunk (replacing one at the same address, as the chunk tree's copy of a
    /// bootstrap chunk does).
    pub fn insert(&mut self, c: Chunk) -> Result<()> {
        match self.chunks.binary_search_by_key(&c.logical, |x| x.logical) {
            Ok(i) => self.chunks[i] = c,
            Err(i) => {
                if self.chunks.len() >= MAX_CHUNKS {
                    return Err(Error::Unsupported(format!(
                        "btrfs: more than {MAX_CHUNKS} chunks"
                    )));
                }
                self.chunks.insert(i, c)
            }
        }
        Ok(())
    }

    /// How many chunks are known.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The device offsets of the copies of `logical`, and how many bytes from there lie in
    /// the same chunk (at most `want`, at least 1).
    pub fn map(&self, logical: u64, want: u64) -> Result<(Vec<u64>, u64)> {
        let i = self.chunks.partition_point(|c| c.logical <= logical);
        let c = i
            .checked_sub(1)
            .map(|i| &self.chunks[i])
            .filter(|c| logical - c.logical < c.len)
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "btrfs: logical address {logical:#x} lies in no chunk"
                ))
            })?;
        if let Some(p) = c.refused {
            return Err(Error::Unsupported(format!(
                "btrfs: logical address {logical:#x} lies in a {p} chunk (at {:#x}); only \
                 SINGLE, DUP and RAID1 chunks are read",
                c.logical
            )));
        }
        let within = logical - c.logical;
        let n = (c.len - within).min(want.max(1));
        Ok((c.copies.iter().map(|p| p + within).collect(), n))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A chunk item: `len` bytes of type `ty`, stripes at the device offsets `phys`.
    pub(crate) fn chunk_item(len: u64, ty: u64, phys: &[u64]) -> Vec<u8> {
        let mut b = vec![0u8; CHUNK_SIZE];
        b[0..8].copy_from_slice(&len.to_le_bytes()); // length
        b[8..16].copy_from_slice(&2u64.to_le_bytes()); // owner: the extent tree
        b[16..24].copy_from_slice(&0x10000u64.to_le_bytes()); // stripe_len
        b[24..32].copy_from_slice(&ty.to_le_bytes()); // type
        b[44..46].copy_from_slice(&(phys.len() as u16).to_le_bytes()); // num_stripes
        for p in phys {
            let mut s = vec![0u8; STRIPE_SIZE];
            s[0..8].copy_from_slice(&1u64.to_le_bytes()); // devid
            s[8..16].copy_from_slice(&p.to_le_bytes()); // offset
            b.extend_from_slice(&s);
        }
        b
    }

    /// A `sys_chunk_array` entry: key (256, CHUNK_ITEM, logical) then the item.
    pub(crate) fn sys_entry(logical: u64, item: &[u8]) -> Vec<u8> {
        let mut b = Key::new(256, CHUNK_ITEM_KEY, logical).to_bytes().to_vec();
        b.extend_from_slice(item);
        b
    }

    #[test]
    fn maps_single_and_dup_and_refuses_raid0() {
        let mut a = sys_entry(0x100000, &chunk_item(0x400000, 2, &[0x100000]));
        a.extend(sys_entry(
            0x500000,
            &chunk_item(0x100000, 4 | DUP, &[0x600000, 0x700000]),
        ));
        a.extend(sys_entry(
            0x800000,
            &chunk_item(0x100000, 1 | RAID0, &[0x900000]),
        ));
        let m = ChunkMap::from_sys_array(&a, 0x1032b).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.map(0x100010, 16).unwrap(), (vec![0x100010], 16));
        assert_eq!(m.map(0x4ffff0, 64).unwrap(), (vec![0x4ffff0], 16));
        assert_eq!(
            m.map(0x500000, 4096).unwrap(),
            (vec![0x600000, 0x700000], 4096)
        );
        let e = m.map(0x800000, 1).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(e.to_string().contains("RAID0"), "{e}");
        let e = m.map(0x50, 1).unwrap_err().to_string();
        assert!(e.contains("0x50 lies in no chunk"), "{e}");
    }

    #[test]
    fn truncated_arrays_are_errors() {
        let a = sys_entry(0x100000, &chunk_item(0x400000, 2, &[0x100000, 0x200000]));
        for n in 0..a.len() {
            let r = ChunkMap::from_sys_array(&a[..n], 0x1032b);
            assert_eq!(r.is_ok(), n == 0, "{n}");
        }
        let mut bad = a.clone();
        bad[KEY_SIZE..KEY_SIZE + 8].copy_from_slice(&0u64.to_le_bytes());
        let e = ChunkMap::from_sys_array(&bad, 0x1032b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk item for logical 0x100000"), "{e}");
    }
}
