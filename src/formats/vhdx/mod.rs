//! VHDX (Hyper-V) images. Errors use [`FormatError`](crate::formats::error::FormatError).
//!
//! Layout ([MS-VHDX] 2.1): a 64 KiB file type identifier, two headers at 64 KiB and 128 KiB,
//! two region tables at 192 KiB and 256 KiB, then 1 MiB-aligned regions (log, metadata, BAT)
//! and payload blocks. Every checksum is CRC-32C over the structure with its checksum zeroed.

pub mod bat;
pub mod check;
pub mod header;
pub mod log;
pub mod metadata;
mod options;
pub mod reader;
pub mod region;
pub mod update;
pub mod writer;

pub use reader::VhdxReader;
pub use writer::{VhdxSubformat, VhdxWriteOptions};

use crate::error::Result;

use crate::formats::error::FormatError;
/// 1 MiB: region, log and payload alignment.
pub const MIB: u64 = 1 << 20;

/// Largest file offset accepted from any on-disk field (2^56 bytes), so that offset + length
/// never overflows.
pub const MAX_FILE_OFFSET: u64 = 1 << 56;

pub use crate::bytes::Guid;

/// CRC-32C of `bytes` with the 4-byte checksum field at `field` taken as zero.
pub fn checksum(bytes: &[u8], field: usize) -> u32 {
    let c = crc32c::crc32c(&bytes[..field]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &bytes[field + 4..])
}

/// Stores the CRC-32C of `bytes` in its checksum field at `field`.
pub fn set_checksum(bytes: &mut [u8], field: usize) {
    bytes[field..field + 4].fill(0);
    let c = crc32c::crc32c(bytes);
    bytes[field..field + 4].copy_from_slice(&c.to_le_bytes());
}

pub(crate) fn invalid(what: &str, offset: u64, detail: impl Into<String>) -> FormatError {
    FormatError::invalid("VHDX", what, offset, detail)
}
pub(crate) fn corrupt(what: &str, offset: u64, detail: impl Into<String>) -> FormatError {
    FormatError::corrupt("VHDX", what, offset, detail)
}
pub(crate) fn unsupported(detail: impl Into<String>) -> FormatError {
    FormatError::Unsupported {
        format: "VHDX",
        detail: detail.into(),
    }
}

/// Checks that `bytes` holds at least `need` bytes of structure `what`.
pub(crate) fn need(bytes: &[u8], need: usize, what: &str, offset: u64) -> Result<(), FormatError> {
    if bytes.len() < need {
        return Err(invalid(
            what,
            offset,
            format!("truncated: {need} bytes expected, {} found", bytes.len()),
        ));
    }
    Ok(())
}

/// Whether the first sector (`head`) starts with the VHDX file signature.
pub fn probe(head: &[u8], _len: u64) -> bool {
    head.starts_with(header::FILE_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::le32;

    #[test]
    fn guid_round_trip() {
        let g = Guid::parse("2DC27766-F623-4200-9D64-115E9BFD4A08").unwrap();
        assert_eq!(&g.to_bytes()[..4], &[0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(g.to_string(), "2DC27766-F623-4200-9D64-115E9BFD4A08");
        assert!(Guid::parse("nonsense").is_none());
    }

    #[test]
    fn checksum_ignores_field() {
        let mut b = vec![7u8; 64];
        set_checksum(&mut b, 4);
        assert_eq!(checksum(&b, 4), le32(&b, 4));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
