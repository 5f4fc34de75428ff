//! Block allocation table ([MS-VHDX] 2.5): payload entries interleaved with sector bitmap
//! entries, one bitmap entry after every `chunk ratio` payload entries.
use crate::bytes::le64;

/// Block not present (reads as zeros, or from the parent).
pub const PAYLOAD_NOT_PRESENT: u8 = 0;
/// Undefined contents.
pub const PAYLOAD_UNDEFINED: u8 = 1;
/// Reads as zeros.
pub const PAYLOAD_ZERO: u8 = 2;
/// Unmapped (trimmed).
pub const PAYLOAD_UNMAPPED: u8 = 3;
/// Stored in the file.
pub const PAYLOAD_FULLY_PRESENT: u8 = 6;
/// Partly stored; the sector bitmap says which sectors (differencing only).
pub const PAYLOAD_PARTIALLY_PRESENT: u8 = 7;
/// Sector bitmap block present.
pub const SB_PRESENT: u8 = 6;

/// Payload blocks per sector bitmap block: (2^23 × logical sector size) / block size.
pub fn chunk_ratio(logical_sector_size: u32, block_size: u32) -> u64 {
    ((1u64 << 23) * u64::from(logical_sector_size)) / u64::from(block_size.max(1))
}

/// Number of BAT entries for `data_blocks` payload blocks.
pub fn entry_count(data_blocks: u64, chunk_ratio: u64, has_parent: bool) -> u64 {
    if data_blocks == 0 {
        return 0;
    }
    if has_parent {
        data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    }
}

/// Index of payload block `block` in the BAT.
pub fn payload_index(block: u64, chunk_ratio: u64) -> u64 {
    block + block / chunk_ratio
}

/// Index of the sector bitmap entry covering payload block `block`.
pub fn bitmap_index(block: u64, chunk_ratio: u64) -> u64 {
    (block / chunk_ratio) * (chunk_ratio + 1) + chunk_ratio
}

/// One entry: state (bits 0-2) and file offset (bits 20-63, in MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatEntry(pub u64);

impl BatEntry {
    /// An entry of `state` at byte `offset` (a multiple of 1 MiB).
    pub fn new(state: u8, offset: u64) -> Self {
        BatEntry((offset & !0xfffff) | u64::from(state & 7))
    }
    /// The state.
    pub fn state(self) -> u8 {
        (self.0 & 7) as u8
    }
    /// The file offset in bytes.
    pub fn offset(self) -> u64 {
        (self.0 >> 20) << 20
    }
}

/// Decodes `count` entries from `bytes` (caller checked the length).
pub fn decode(bytes: &[u8], count: usize) -> Vec<BatEntry> {
    bytes
        .chunks_exact(8)
        .take(count)
        .map(|c| BatEntry(le64(c, 0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ratios() {
        assert_eq!(chunk_ratio(512, 32 << 20), 128);
        assert_eq!(chunk_ratio(512, 1 << 20), 4096);
        assert_eq!(chunk_ratio(512, 256 << 20), 16);
        assert_eq!(chunk_ratio(4096, 32 << 20), 1024);
        assert_eq!(chunk_ratio(4096, 1 << 20), 32768);
        assert_eq!(chunk_ratio(4096, 8 << 20), 4096);
    }

    #[test]
    fn interleaving() {
        let cr = 128;
        assert_eq!(payload_index(0, cr), 0);
        assert_eq!(payload_index(127, cr), 127);
        assert_eq!(payload_index(128, cr), 129); // after the first bitmap entry
        assert_eq!(bitmap_index(0, cr), 128);
        assert_eq!(bitmap_index(128, cr), 257);
        assert_eq!(entry_count(1, cr, false), 1);
        assert_eq!(entry_count(129, cr, false), 130);
        assert_eq!(entry_count(129, cr, true), 258);
        assert_eq!(entry_count(0, cr, false), 0);
    }

    #[test]
    fn entry_fields() {
        let e = BatEntry::new(PAYLOAD_FULLY_PRESENT, 5 << 20);
        assert_eq!(e.0, (5 << 20) | 6);
        assert_eq!((e.state(), e.offset()), (6, 5 << 20));
        assert_eq!(decode(&e.0.to_le_bytes(), 1), vec![e]);
    }
}
