//! The block map (VirtualBox `VDICore.h`: `VDIIMAGEBLOCKPOINTER`): one little-endian `u32` per
//! block of the disk, at `offBlocks`.
//!
//! An entry below `0xfffffffe` is the index of the block in the data area (so it must be below
//! `cBlocksAllocated`, and no two entries may share an index); `0xffffffff`
//! (`VDI_IMAGE_BLOCK_FREE`) is a block never written, which reads as zeros in a base image and
//! as the parent's data in a differencing image; `0xfffffffe` (`VDI_IMAGE_BLOCK_ZERO`) reads as
//! zeros whatever the parent holds.

use super::corrupt;
use super::header::VdiHeader;
use crate::formats::error::FormatError;

/// `VDI_IMAGE_BLOCK_FREE`: not stored; the parent's data (zeros without a parent).
pub const FREE: u32 = 0xffff_ffff;
/// `VDI_IMAGE_BLOCK_ZERO`: not stored; reads as zeros.
pub const ZERO: u32 = 0xffff_fffe;

/// One decoded entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Not stored: the parent's data, or zeros.
    Free,
    /// Not stored: zeros.
    Zero,
    /// Stored as block `index` of the data area.
    Block(u32),
}

impl Entry {
    /// Decodes an on-disk value.
    pub fn from_u32(v: u32) -> Entry {
        match v {
            FREE => Entry::Free,
            ZERO => Entry::Zero,
            i => Entry::Block(i),
        }
    }

    /// The on-disk value.
    pub fn to_u32(self) -> u32 {
        match self {
            Entry::Free => FREE,
            Entry::Zero => ZERO,
            Entry::Block(i) => i,
        }
    }
}

/// Decodes the block map from `bytes` (4 bytes per entry; a trailing partial entry is
/// ignored).
pub fn decode(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Encodes entries into their on-disk bytes.
pub fn encode(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// What is wrong with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapProblem {
    /// The entry names a block at or past `cBlocksAllocated`.
    OutOfRange {
        /// The entry (block of the disk).
        entry: u32,
        /// The index it holds.
        index: u32,
    },
    /// Two entries name the same block of the data area.
    Duplicate {
        /// The later entry.
        entry: u32,
        /// The earlier entry with the same index.
        first: u32,
        /// The shared index.
        index: u32,
    },
    /// The block the entry names does not lie wholly inside the file.
    PastEnd {
        /// The entry.
        entry: u32,
        /// The index it holds.
        index: u32,
    },
}

impl MapProblem {
    /// The entry concerned.
    pub fn entry(&self) -> u32 {
        match *self {
            MapProblem::OutOfRange { entry, .. }
            | MapProblem::Duplicate { entry, .. }
            | MapProblem::PastEnd { entry, .. } => entry,
        }
    }

    /// The absolute file offset of the entry.
    pub fn offset(&self, h: &VdiHeader) -> u64 {
        h.blocks_offset + u64::from(self.entry()) * 4
    }

    /// What is wrong, naming the entry, where it is and what it holds.
    pub fn message(&self, h: &VdiHeader, file_len: u64) -> String {
        let at = self.offset(h);
        match *self {
            MapProblem::OutOfRange { entry, index } => format!(
                "entry {entry} (at {at:#x}) names block {index} of the data area, but the header \
                 says {} blocks are allocated (cBlocksAllocated)",
                h.blocks_allocated
            ),
            MapProblem::Duplicate {
                entry,
                first,
                index,
            } => format!(
                "entries {first} and {entry} (at {at:#x}) both name block {index} of the data area"
            ),
            MapProblem::PastEnd { entry, index } => {
                let start = h.block_offset(index);
                format!(
                    "entry {entry} (at {at:#x}) names block {index}, whose {} bytes at {start:#x} \
                     run past the end of the file ({file_len:#x} bytes)",
                    h.block_stride()
                )
            }
        }
    }
}

/// Checks every entry of `entries` against the header and the file length; returns at most
/// `limit` problems, in entry order.
pub fn validate(entries: &[u32], h: &VdiHeader, file_len: u64, limit: usize) -> Vec<MapProblem> {
    let mut problems = Vec::new();
    // Which entry holds each index (FREE: none yet). cBlocksAllocated <= cBlocks <= 2^26.
    let mut owner = vec![FREE; h.blocks_allocated as usize];
    for (i, &e) in entries.iter().enumerate() {
        if problems.len() >= limit {
            break;
        }
        let entry = i as u32;
        let Entry::Block(index) = Entry::from_u32(e) else {
            continue;
        };
        let Some(slot) = owner.get_mut(index as usize) else {
            problems.push(MapProblem::OutOfRange { entry, index });
            continue;
        };
        if *slot != FREE {
            problems.push(MapProblem::Duplicate {
                entry,
                first: *slot,
                index,
            });
            continue;
        }
        *slot = entry;
        if h.block_offset(index) + h.block_stride() > file_len {
            problems.push(MapProblem::PastEnd { entry, index });
        }
    }
    problems
}

/// Decodes and validates the block map read from `bytes` (found at `h.blocks_offset`): the
/// first problem found is an error naming the block map, the entry and its offset.
pub fn parse(bytes: &[u8], h: &VdiHeader, file_len: u64) -> Result<Vec<u32>, FormatError> {
    let want = h.map_len();
    if (bytes.len() as u64) < want {
        return Err(corrupt(
            "block map",
            h.blocks_offset,
            format!(
                "{want} bytes of block map expected, {} available",
                bytes.len()
            ),
        ));
    }
    let entries = decode(&bytes[..want as usize]);
    if let Some(p) = validate(&entries, h, file_len, 1).first() {
        return Err(corrupt(
            "block map",
            h.blocks_offset,
            p.message(h, file_len),
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vdi::header::tests::v1;

    fn header(allocated: u32) -> VdiHeader {
        // 4 blocks of 1 MiB; map at 512, data at 1024.
        VdiHeader::parse(&v1(4 << 20, 1 << 20, allocated), 0).unwrap()
    }

    fn bytes(entries: &[u32]) -> Vec<u8> {
        encode(entries)
    }

    #[test]
    fn decodes_free_zero_and_blocks() {
        let h = header(2);
        let file_len = 1024 + 2 * (1 << 20);
        let e = parse(&bytes(&[1, FREE, ZERO, 0]), &h, file_len).unwrap();
        assert_eq!(e, vec![1, FREE, ZERO, 0]);
        assert_eq!(Entry::from_u32(e[0]), Entry::Block(1));
        assert_eq!(Entry::from_u32(e[1]), Entry::Free);
        assert_eq!(Entry::from_u32(e[2]), Entry::Zero);
        assert_eq!(Entry::Zero.to_u32(), 0xffff_fffe);
    }

    #[test]
    fn names_the_entry_and_its_offset() {
        let h = header(2);
        let file_len = 1024 + 2 * (1 << 20);
        // Index past cBlocksAllocated.
        let e = parse(&bytes(&[0, 2, FREE, FREE]), &h, file_len)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("VDI block map at 0x200: entry 1 (at 0x204) names block 2")
                && e.contains("2 blocks are allocated"),
            "{e}"
        );
        // Two entries sharing a block.
        let e = parse(&bytes(&[1, FREE, 1, FREE]), &h, file_len)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("entries 0 and 2 (at 0x208) both name block 1"),
            "{e}"
        );
        // A block past the end of a truncated file.
        let e = parse(&bytes(&[0, 1, FREE, FREE]), &h, file_len - 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("entry 1 (at 0x204) names block 1, whose 1048576 bytes at 0x100400"),
            "{e}"
        );
        // A short map.
        let e = parse(&bytes(&[0, 1]), &h, file_len)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("16 bytes of block map expected, 8 available"),
            "{e}"
        );
    }

    #[test]
    fn validate_lists_every_problem_up_to_the_limit() {
        let h = header(1);
        let p = validate(&[5, 0, 0, 7], &h, 1024, 10);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(matches!(
            p[0],
            MapProblem::OutOfRange { entry: 0, index: 5 }
        ));
        assert!(matches!(p[1], MapProblem::PastEnd { entry: 1, index: 0 }));
        assert!(matches!(
            p[2],
            MapProblem::Duplicate {
                entry: 2,
                first: 1,
                index: 0
            }
        ));
        assert_eq!(validate(&[5, 0, 0, 7], &h, 1024, 2).len(), 2);
    }
}
