//! The dynamic disk header ("Dynamic Disk Header Format" in the VHD specification): 1024
//! big-endian bytes pointing at the BAT, with the parent's name and locators of a differencing
//! disk.

use crate::formats::error::FormatError;

use super::footer::checksum;
use crate::bytes::{be32, be64};

/// Size of the dynamic header.
pub const HEADER_SIZE: usize = 1024;
/// Header cookie "cxsparse" (spec: Dynamic Disk Header, "Cookie").
pub const COOKIE: [u8; 8] = *b"cxsparse";
/// Header version 1.0.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// BAT entry of a block that is not allocated.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// Largest block size accepted (the specification's default is 2 MiB; nothing real uses more).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest BAT accepted, in entries (64 MiB of table).
pub const MAX_BAT_ENTRIES: u64 = 16 << 20;
/// Largest parent locator read, in bytes.
pub const MAX_LOCATOR_LEN: u32 = 64 * 1024;

/// Parent locator platform codes (spec: "Parent Locator Entries").
pub mod platform {
    /// Windows relative path, UTF-16LE.
    pub const W2RU: u32 = u32::from_be_bytes(*b"W2ru");
    /// Windows absolute path, UTF-16LE.
    pub const W2KU: u32 = u32::from_be_bytes(*b"W2ku");
    /// Deprecated Windows relative path (ANSI).
    pub const WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
    /// Deprecated Windows absolute path (ANSI).
    pub const WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
    /// Mac OS alias blob (not usable here).
    pub const MAC: u32 = u32::from_be_bytes(*b"Mac ");
    /// Mac OS X file URL, UTF-8.
    pub const MACX: u32 = u32::from_be_bytes(*b"MacX");
}

/// One parent locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLocator {
    /// Platform code (see [`platform`]).
    pub code: u32,
    /// Space reserved for the data (sectors in the spec, bytes in some writers).
    pub data_space: u32,
    /// Length of the data in bytes.
    pub data_len: u32,
    /// Absolute file offset of the data.
    pub data_offset: u64,
}

/// A validated dynamic header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdDynamicHeader {
    /// Absolute offset of the BAT.
    pub table_offset: u64,
    /// Entries in the BAT.
    pub max_table_entries: u32,
    /// Bytes of virtual disk per block (power of two, 512 ..= 256 MiB).
    pub block_size: u32,
    /// Checksum as stored.
    pub checksum: u32,
    /// Unique id of the parent (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// Modification time of the parent (seconds since 2000-01-01).
    pub parent_timestamp: u32,
    /// Parent file name (UTF-16BE in the file).
    pub parent_name: String,
    /// The locator entries that are in use.
    pub locators: Vec<ParentLocator>,
}

fn invalid(offset: u64, detail: String) -> FormatError {
    FormatError::invalid("VHD", "dynamic header", offset, detail)
}

/// Decodes UTF-16 code units up to the first NUL, replacing invalid ones.
pub fn utf16_until_nul(units: impl Iterator<Item = u16>) -> String {
    let units: Vec<u16> = units.take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

impl VhdDynamicHeader {
    /// Parses and validates the 1024-byte header found at `offset`.
    pub fn parse(bytes: &[u8], offset: u64) -> Result<VhdDynamicHeader, FormatError> {
        if bytes.len() != HEADER_SIZE {
            return Err(invalid(
                offset,
                format!("expected {HEADER_SIZE} bytes, found {}", bytes.len()),
            ));
        }
        if bytes[0..8] != COOKIE {
            return Err(invalid(
                offset,
                format!(
                    "cookie is {:?}, expected \"cxsparse\"",
                    String::from_utf8_lossy(&bytes[0..8])
                ),
            ));
        }
        let stored = be32(bytes, 36);
        let computed = checksum(bytes, 36);
        if stored != computed {
            return Err(invalid(
                offset,
                format!("checksum is {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let version = be32(bytes, 24);
        if version >> 16 != 1 {
            return Err(FormatError::Unsupported {
                format: "VHD",
                detail: format!("dynamic header at {offset:#x}: version {version:#010x}"),
            });
        }
        let table_offset = be64(bytes, 16);
        if table_offset % 512 != 0 {
            return Err(invalid(
                offset,
                format!("BAT offset {table_offset:#x} is not a multiple of 512"),
            ));
        }
        let block_size = be32(bytes, 32);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(invalid(
                offset,
                format!(
                    "block size is {block_size}, expected a power of two from 512 to {MAX_BLOCK_SIZE}"
                ),
            ));
        }
        let mut parent_unique_id = [0; 16];
        parent_unique_id.copy_from_slice(&bytes[40..56]);
        let parent_name = utf16_until_nul(
            bytes[64..576]
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        );
        let locators = (0..8)
            .map(|i| {
                let at = 576 + i * 24;
                ParentLocator {
                    code: be32(bytes, at),
                    data_space: be32(bytes, at + 4),
                    data_len: be32(bytes, at + 8),
                    data_offset: be64(bytes, at + 16),
                }
            })
            .filter(|l| l.code != 0)
            .collect();
        Ok(VhdDynamicHeader {
            table_offset,
            max_table_entries: be32(bytes, 28),
            block_size,
            checksum: stored,
            parent_unique_id,
            parent_timestamp: be32(bytes, 56),
            parent_name,
            locators,
        })
    }

    /// The 1024 bytes of this header, checksum recomputed. The parent name is written as
    /// UTF-16BE (truncated to 256 code units).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&COOKIE);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&HEADER_VERSION.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_unique_id);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, u) in self.parent_name.encode_utf16().take(256).enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes());
        }
        for (i, l) in self.locators.iter().take(8).enumerate() {
            let at = 576 + i * 24;
            b[at..at + 4].copy_from_slice(&l.code.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&l.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&l.data_len.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&l.data_offset.to_be_bytes());
        }
        let c = checksum(&b, 36);
        b[36..40].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// Bytes of the sector bitmap in front of each block (padded to whole sectors).
    pub fn bitmap_size(&self) -> u64 {
        (self.block_size as u64 / 512)
            .div_ceil(8)
            .next_multiple_of(512)
    }
}

/// Decodes a locator's data into a path: UTF-16LE for the Windows codes, UTF-8 file URL for
/// `MacX`, ANSI for the deprecated `Wi2r`/`Wi2k`. `None` for `Mac ` aliases and unknown codes.
pub fn decode_locator(code: u32, data: &[u8]) -> Option<String> {
    let s = match code {
        platform::W2RU | platform::W2KU => utf16_until_nul(
            data.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        ),
        platform::WI2R | platform::WI2K => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            String::from_utf8_lossy(&data[..end]).into_owned()
        }
        platform::MACX => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            let s = String::from_utf8_lossy(&data[..end]).into_owned();
            s.strip_prefix("file://").map(str::to_string).unwrap_or(s)
        }
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid header built field by field.
    pub(crate) fn sample(table_offset: u64, entries: u32, block_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0..8].copy_from_slice(b"cxsparse"); // cookie
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset (unused)
        b[16..24].copy_from_slice(&table_offset.to_be_bytes()); // BAT offset
        b[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // version
        b[28..32].copy_from_slice(&entries.to_be_bytes()); // max table entries
        b[32..36].copy_from_slice(&block_size.to_be_bytes()); // block size
        b[40..56].copy_from_slice(&[9u8; 16]); // parent unique id
        for (i, u) in "parent.vhd".encode_utf16().enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes()); // parent name
        }
        b[576..580].copy_from_slice(b"W2ru"); // locator 0 platform code
        b[580..584].copy_from_slice(&1u32.to_be_bytes()); // data space
        b[584..588].copy_from_slice(&20u32.to_be_bytes()); // data length
        b[592..600].copy_from_slice(&0x1000u64.to_be_bytes()); // data offset
        let c = checksum(&b, 36);
        b[36..40].copy_from_slice(&c.to_be_bytes()); // checksum
        b
    }

    #[test]
    fn parses_and_round_trips() {
        let b = sample(1536, 10, 2 << 20);
        let h = VhdDynamicHeader::parse(&b, 512).unwrap();
        assert_eq!(h.table_offset, 1536);
        assert_eq!(h.max_table_entries, 10);
        assert_eq!(h.parent_name, "parent.vhd");
        assert_eq!(h.locators.len(), 1);
        assert_eq!(h.locators[0].code, platform::W2RU);
        assert_eq!(h.bitmap_size(), 512);
        assert_eq!(h.to_bytes().to_vec(), b);
    }

    #[test]
    fn rejects_bad_values() {
        let mut b = sample(1536, 10, 2 << 20);
        b[1] = b'y';
        assert!(
            VhdDynamicHeader::parse(&b, 512)
                .unwrap_err()
                .to_string()
                .contains("cookie")
        );
        let mut b = sample(1536, 10, 2 << 20);
        b[900] = 1;
        let e = VhdDynamicHeader::parse(&b, 512).unwrap_err().to_string();
        assert!(e.contains("checksum") && e.contains("0x200"), "{e}");
        for bs in [0u32, 256, 3000, 1 << 30] {
            let b = sample(1536, 10, bs);
            let e = VhdDynamicHeader::parse(&b, 512).unwrap_err().to_string();
            assert!(e.contains("block size"), "{e}");
        }
        let b = sample(1537, 10, 2 << 20);
        assert!(VhdDynamicHeader::parse(&b, 512).is_err());
    }

    #[test]
    fn bitmap_sizes() {
        let mut h = VhdDynamicHeader::parse(&sample(1536, 1, 512), 0).unwrap();
        assert_eq!(h.bitmap_size(), 512);
        h.block_size = 256 << 20; // 524288 sectors -> 65536 bytes of bitmap
        assert_eq!(h.bitmap_size(), 65536);
    }

    #[test]
    fn decodes_locators() {
        let le: Vec<u8> = ".\\parent.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(
            decode_locator(platform::W2RU, &le).unwrap(),
            ".\\parent.vhd"
        );
        assert_eq!(
            decode_locator(platform::MACX, b"file://./p.vhd\0\0").unwrap(),
            "./p.vhd"
        );
        assert_eq!(decode_locator(platform::MAC, b"xx"), None);
        assert_eq!(decode_locator(platform::W2KU, &[0, 0]), None);
    }
}
