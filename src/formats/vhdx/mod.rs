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
pub mod reader;
pub mod region;
pub mod update;
pub mod writer;

pub use reader::VhdxReader;
pub use writer::{VhdxSubformat, VhdxWriteOptions};

use crate::formats::error::FormatError;

/// 1 MiB: region, log and payload alignment.
pub const MIB: u64 = 1 << 20;

/// Largest file offset accepted from any on-disk field (2^56 bytes), so that offset + length
/// never overflows.
pub const MAX_FILE_OFFSET: u64 = 1 << 56;

/// A GUID in its on-disk (mixed-endian, Windows) byte order.
pub type Guid = [u8; 16];

/// Builds the on-disk bytes of the GUID written `a-b-c-d`.
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Formats an on-disk GUID as `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`.
pub fn guid_to_string(g: &Guid) -> String {
    let a = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let b = u16::from_le_bytes([g[4], g[5]]);
    let c = u16::from_le_bytes([g[6], g[7]]);
    let mut s = format!("{a:08X}-{b:04X}-{c:04X}-{:02X}{:02X}-", g[8], g[9]);
    for x in &g[10..] {
        s.push_str(&format!("{x:02X}"));
    }
    s
}

/// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, with or without braces.
pub fn guid_from_str(s: &str) -> Option<Guid> {
    let s = s.trim().trim_start_matches('{').trim_end_matches('}');
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 5
        || [8, 4, 4, 4, 12]
            != [
                parts[0].len(),
                parts[1].len(),
                parts[2].len(),
                parts[3].len(),
                parts[4].len(),
            ]
    {
        return None;
    }
    let a = u32::from_str_radix(parts[0], 16).ok()?;
    let b = u16::from_str_radix(parts[1], 16).ok()?;
    let c = u16::from_str_radix(parts[2], 16).ok()?;
    let tail = format!("{}{}", parts[3], parts[4]);
    let mut d = [0u8; 8];
    for (i, x) in d.iter_mut().enumerate() {
        *x = u8::from_str_radix(tail.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(guid(a, b, c, d))
}

/// A random GUID (version 4 bits set), from the standard library's random hasher keys.
pub fn random_guid() -> Guid {
    let mut g: Guid = crate::util::random_bytes16();
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

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

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
pub(crate) fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trip() {
        let g = guid_from_str("2DC27766-F623-4200-9D64-115E9BFD4A08").unwrap();
        assert_eq!(&g[..4], &[0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(guid_to_string(&g), "2DC27766-F623-4200-9D64-115E9BFD4A08");
        assert!(guid_from_str("nonsense").is_none());
    }

    #[test]
    fn checksum_ignores_field() {
        let mut b = vec![7u8; 64];
        set_checksum(&mut b, 4);
        assert_eq!(checksum(&b, 4), le32(&b, 4));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
