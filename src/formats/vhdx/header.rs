//! File type identifier and the two headers ([MS-VHDX] 2.2).

use super::{Guid, checksum, invalid, need, set_checksum};
use crate::bytes::{le16, le32, le64};
use crate::formats::error::FormatError;

/// File type identifier signature, ASCII `vhdxfile`, at offset 0 (2.2.1).
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Header signature, ASCII `head` (2.2.2).
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";
/// Offsets of the two headers.
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// Bytes covered by a header's checksum.
pub const HEADER_SIZE: usize = 4096;

/// A validated VHDX header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxHeader {
    /// Higher wins.
    pub sequence_number: u64,
    /// Changes whenever the file is written.
    pub file_write_guid: Guid,
    /// Changes whenever user-visible data is written (parent linkage for children).
    pub data_write_guid: Guid,
    /// Non-zero: the log may hold entries to replay.
    pub log_guid: Guid,
    /// Log format version (0).
    pub log_version: u16,
    /// Format version (1).
    pub version: u16,
    /// Log length in bytes (a multiple of 1 MiB).
    pub log_length: u32,
    /// Log offset in bytes (a multiple of 1 MiB).
    pub log_offset: u64,
}

impl VhdxHeader {
    /// Parses and validates the header found at `offset` (at least 4 KiB of bytes).
    pub fn parse(bytes: &[u8], offset: u64) -> Result<Self, FormatError> {
        need(bytes, HEADER_SIZE, "header", offset)?;
        let b = &bytes[..HEADER_SIZE];
        if &b[0..4] != HEADER_SIGNATURE {
            return Err(invalid(
                "header",
                offset,
                format!("signature 'head' expected, found {:02x?}", &b[0..4]),
            ));
        }
        let stored = le32(b, 4);
        let computed = checksum(b, 4);
        if stored != computed {
            return Err(invalid(
                "header",
                offset,
                format!("checksum {stored:#010x} stored, {computed:#010x} computed"),
            ));
        }
        let h = VhdxHeader {
            sequence_number: le64(b, 8),
            file_write_guid: Guid::read(b, 16),
            data_write_guid: Guid::read(b, 32),
            log_guid: Guid::read(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        };
        if h.version != 1 {
            return Err(invalid(
                "header",
                offset,
                format!("version 1 expected, found {}", h.version),
            ));
        }
        if h.log_version != 0 {
            return Err(invalid(
                "header",
                offset,
                format!("log version 0 expected, found {}", h.log_version),
            ));
        }
        if h.log_offset % super::MIB != 0
            || h.log_offset < super::MIB
            || u64::from(h.log_length) % super::MIB != 0
        {
            return Err(invalid(
                "header",
                offset,
                format!(
                    "log at {:#x}, {:#x} bytes: both must be multiples of 1 MiB, at or after 1 MiB",
                    h.log_offset, h.log_length
                ),
            ));
        }
        Ok(h)
    }

    /// The 4 KiB on-disk form with its checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(HEADER_SIGNATURE);
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid.to_bytes());
        b[32..48].copy_from_slice(&self.data_write_guid.to_bytes());
        b[48..64].copy_from_slice(&self.log_guid.to_bytes());
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        set_checksum(&mut b, 4);
        b
    }
}

/// Checks the file type identifier.
pub fn check_file_signature(bytes: &[u8]) -> Result<(), FormatError> {
    need(bytes, 8, "file type identifier", 0)?;
    if &bytes[..8] != FILE_SIGNATURE {
        return Err(invalid(
            "file type identifier",
            0,
            format!("'vhdxfile' expected, found {:02x?}", &bytes[..8]),
        ));
    }
    Ok(())
}

/// The file type identifier block (64 KiB) naming `creator`.
pub fn file_identifier(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 << 10];
    b[..8].copy_from_slice(FILE_SIGNATURE);
    for (i, u) in creator.encode_utf16().take(256).enumerate() {
        b[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    b
}

/// Picks the current header: the valid one with the higher sequence number (2.2.2.1).
pub fn choose(
    first: Result<VhdxHeader, FormatError>,
    second: Result<VhdxHeader, FormatError>,
) -> Result<VhdxHeader, FormatError> {
    choose_slot(first, second).map(|(h, _)| h)
}

/// [`choose`], also saying which slot (0 or 1) the header in use came from.
pub fn choose_slot(
    first: Result<VhdxHeader, FormatError>,
    second: Result<VhdxHeader, FormatError>,
) -> Result<(VhdxHeader, usize), FormatError> {
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(if b.sequence_number > a.sequence_number {
            (b, 1)
        } else {
            (a, 0)
        }),
        (Ok(a), Err(_)) => Ok((a, 0)),
        (Err(_), Ok(b)) => Ok((b, 1)),
        (Err(a), Err(_)) => Err(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> VhdxHeader {
        VhdxHeader {
            sequence_number: seq,
            file_write_guid: Guid::from_bytes([1; 16]),
            data_write_guid: Guid::from_bytes([2; 16]),
            log_guid: Guid::NIL,
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        }
    }

    #[test]
    fn round_trip_and_field_offsets() {
        let b = sample(5).to_bytes();
        assert_eq!(&b[0..4], b"head"); // signature
        assert_eq!(le64(&b, 8), 5); // sequence number
        assert_eq!(le16(&b, 66), 1); // version
        assert_eq!(le64(&b, 72), 1 << 20); // log offset
        assert_eq!(VhdxHeader::parse(&b, 0x10000).unwrap(), sample(5));
    }

    #[test]
    fn bad_checksum_signature_version() {
        let mut b = sample(1).to_bytes();
        b[100] ^= 1;
        let e = VhdxHeader::parse(&b, 0x10000).unwrap_err().to_string();
        assert!(
            e.contains("VHDX header at 0x10000") && e.contains("checksum"),
            "{e}"
        );
        let mut b = sample(1).to_bytes();
        b[0] = b'x';
        assert!(
            VhdxHeader::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        let mut h = sample(1);
        h.version = 2;
        assert!(
            VhdxHeader::parse(&h.to_bytes(), 0)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        assert!(
            VhdxHeader::parse(&[0u8; 10], 0)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }

    #[test]
    fn higher_valid_sequence_wins() {
        let bad = || Err(invalid("header", 0, "x"));
        assert_eq!(
            choose(Ok(sample(1)), Ok(sample(2)))
                .unwrap()
                .sequence_number,
            2
        );
        assert_eq!(
            choose(Ok(sample(3)), Ok(sample(2)))
                .unwrap()
                .sequence_number,
            3
        );
        assert_eq!(choose(bad(), Ok(sample(2))).unwrap().sequence_number, 2);
        assert_eq!(choose(Ok(sample(7)), bad()).unwrap().sequence_number, 7);
        assert!(choose(bad(), bad()).is_err());
    }
}
