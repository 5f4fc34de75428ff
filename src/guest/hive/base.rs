//! The base block: the first 4096 bytes of a hive (and of a transaction log).
//!
//! Layout (Suhanov, "Windows registry file format specification", section "Base block"):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | signature `regf` |
//! | 4 | 4 | primary sequence number |
//! | 8 | 4 | secondary sequence number |
//! | 12 | 8 | last written timestamp (FILETIME) |
//! | 20 | 4 | major version (1) |
//! | 24 | 4 | minor version (3, 4, 5 or 6) |
//! | 28 | 4 | file type (0 primary, 1 or 2 old-format log, 6 new-format log) |
//! | 32 | 4 | file format (1: direct memory load) |
//! | 36 | 4 | root cell offset (relative to the first hive bin) |
//! | 40 | 4 | hive bins data size |
//! | 44 | 4 | clustering factor (1) |
//! | 48 | 64 | file name (UTF-16LE, partial) |
//! | 508 | 4 | checksum: XOR of the 127 dwords before it |
//! | 4088 | 4 | boot type |
//! | 4092 | 4 | boot recover |

use super::HiveError;
use crate::bytes::{le32, set_le32};

/// Size of the base block and of every hive-bin granule.
pub const BASE_BLOCK_SIZE: usize = 4096;
/// `regf`: the base-block signature.
pub const REGF_SIGNATURE: &[u8; 4] = b"regf";
/// File type of a primary hive file.
pub const FILE_TYPE_PRIMARY: u32 = 0;
/// File type of an old-format transaction log (`.LOG`, `.LOG1`, `.LOG2` before Windows 8.1).
pub const FILE_TYPE_LOG_OLD: u32 = 1;
/// File type of an old-format transaction log written as a second log (Windows XP `.LOG`).
pub const FILE_TYPE_LOG_OLD2: u32 = 2;
/// File type of a new-format transaction log (Windows 8.1 and later, `HvLE` entries).
pub const FILE_TYPE_LOG_NEW: u32 = 6;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 508;

/// A parsed base block. The 4096 raw bytes are kept so that every field this module does not
/// interpret is written back unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseBlock {
    raw: [u8; BASE_BLOCK_SIZE],
}

impl std::fmt::Debug for BaseBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseBlock")
            .field("primary_sequence", &self.primary_sequence())
            .field("secondary_sequence", &self.secondary_sequence())
            .field("version", &(self.major_version(), self.minor_version()))
            .field("file_type", &self.file_type())
            .field("root_cell", &self.root_cell())
            .field("hive_bins_size", &self.hive_bins_size())
            .field("checksum_ok", &self.checksum_ok())
            .finish()
    }
}

/// The base-block checksum of the first 508 bytes of `raw` (which must hold at least 508 bytes):
/// XOR of the 127 little-endian dwords, with 0xFFFFFFFF mapped to 0xFFFFFFFE and 0 to 1.
pub fn checksum(raw: &[u8]) -> u32 {
    let mut x = 0u32;
    for i in 0..CHECKSUM_OFFSET / 4 {
        x ^= le32(raw, i * 4);
    }
    match x {
        0xFFFF_FFFF => 0xFFFF_FFFE,
        0 => 1,
        x => x,
    }
}

impl BaseBlock {
    /// Parses the base block from the first 4096 bytes of `bytes`; `offset` is where those bytes
    /// lie in their file (0 for a hive or a log). Checks the signature and the version; a bad
    /// checksum is *not* an error here (a dirty hive may have one): see [`BaseBlock::checksum_ok`].
    pub fn parse(bytes: &[u8], offset: u64) -> Result<BaseBlock, HiveError> {
        if bytes.len() < BASE_BLOCK_SIZE {
            return Err(HiveError::invalid(
                "base block",
                offset,
                format!(
                    "expected {BASE_BLOCK_SIZE} bytes, the file has only {}",
                    bytes.len()
                ),
            ));
        }
        if &bytes[..4] != REGF_SIGNATURE {
            return Err(HiveError::invalid(
                "base block",
                offset,
                format!("expected signature 'regf', found {:02x?}", &bytes[..4]),
            ));
        }
        let mut raw = [0u8; BASE_BLOCK_SIZE];
        raw.copy_from_slice(&bytes[..BASE_BLOCK_SIZE]);
        let b = BaseBlock { raw };
        if b.major_version() != 1 || !(2..=6).contains(&b.minor_version()) {
            return Err(HiveError::invalid(
                "base block",
                offset + 20,
                format!(
                    "expected version 1.2 to 1.6, found {}.{}",
                    b.major_version(),
                    b.minor_version()
                ),
            ));
        }
        Ok(b)
    }

    /// A base block for a new, empty primary hive: version 1.5 (big data allowed), sequence
    /// numbers 1/1, the given root cell and hive-bins size, `file_name` in the name field
    /// (truncated to 31 UTF-16 units).
    pub fn new(root_cell: u32, hive_bins_size: u32, timestamp: u64, file_name: &str) -> BaseBlock {
        let mut raw = [0u8; BASE_BLOCK_SIZE];
        raw[..4].copy_from_slice(REGF_SIGNATURE);
        let mut b = BaseBlock { raw };
        b.set_u32(4, 1);
        b.set_u32(8, 1);
        b.set_timestamp(timestamp);
        b.set_u32(20, 1);
        b.set_u32(24, 5);
        b.set_u32(28, FILE_TYPE_PRIMARY);
        b.set_u32(32, 1);
        b.set_root_cell(root_cell);
        b.set_hive_bins_size(hive_bins_size);
        b.set_u32(44, 1);
        for (i, unit) in file_name.encode_utf16().take(31).enumerate() {
            b.raw[48 + 2 * i..50 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        b
    }

    fn u32(&self, off: usize) -> u32 {
        le32(&self.raw, off)
    }

    fn set_u32(&mut self, off: usize, v: u32) {
        set_le32(&mut self.raw, off, v);
    }

    /// Primary sequence number (incremented before a write starts).
    pub fn primary_sequence(&self) -> u32 {
        self.u32(4)
    }
    /// Secondary sequence number (set equal to the primary once a write completed).
    pub fn secondary_sequence(&self) -> u32 {
        self.u32(8)
    }
    /// Sets both sequence numbers.
    pub fn set_sequences(&mut self, primary: u32, secondary: u32) {
        self.set_u32(4, primary);
        self.set_u32(8, secondary);
    }
    /// Last-written timestamp (FILETIME: 100 ns units since 1601-01-01 UTC).
    pub fn timestamp(&self) -> u64 {
        u64::from_le_bytes(self.raw[12..20].try_into().unwrap_or([0; 8]))
    }
    /// Sets the last-written timestamp.
    pub fn set_timestamp(&mut self, filetime: u64) {
        self.raw[12..20].copy_from_slice(&filetime.to_le_bytes());
    }
    /// Major version (always 1).
    pub fn major_version(&self) -> u32 {
        self.u32(20)
    }
    /// Minor version: 3 (NT 4 / XP), 4, 5 (XP and later; allows big data and `lh`), 6.
    pub fn minor_version(&self) -> u32 {
        self.u32(24)
    }
    /// File type: [`FILE_TYPE_PRIMARY`], [`FILE_TYPE_LOG_OLD`], [`FILE_TYPE_LOG_OLD2`] or
    /// [`FILE_TYPE_LOG_NEW`].
    pub fn file_type(&self) -> u32 {
        self.u32(28)
    }
    /// Sets the file type (a base block recovered from a log becomes a primary one).
    pub fn set_file_type(&mut self, t: u32) {
        self.set_u32(28, t);
    }
    /// File format (1: direct memory load).
    pub fn file_format(&self) -> u32 {
        self.u32(32)
    }
    /// Offset of the root key node, relative to the start of the hive bins (file offset 4096).
    pub fn root_cell(&self) -> u32 {
        self.u32(36)
    }
    /// Sets the root cell offset.
    pub fn set_root_cell(&mut self, v: u32) {
        self.set_u32(36, v);
    }
    /// Size in bytes of all hive bins (a multiple of 4096).
    pub fn hive_bins_size(&self) -> u32 {
        self.u32(40)
    }
    /// Sets the size of the hive bins.
    pub fn set_hive_bins_size(&mut self, v: u32) {
        self.set_u32(40, v);
    }
    /// Clustering factor (1).
    pub fn clustering_factor(&self) -> u32 {
        self.u32(44)
    }
    /// The partial file name stored in the base block (informational).
    pub fn file_name(&self) -> String {
        let units: Vec<u16> = self.raw[48..112]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
    /// The stored checksum.
    pub fn stored_checksum(&self) -> u32 {
        self.u32(CHECKSUM_OFFSET)
    }
    /// Whether the stored checksum matches the first 508 bytes.
    pub fn checksum_ok(&self) -> bool {
        self.stored_checksum() == checksum(&self.raw)
    }
    /// Whether the hive was not written completely: the sequence numbers differ or the checksum
    /// is wrong. A dirty hive needs its transaction logs replayed.
    pub fn is_dirty(&self) -> bool {
        self.primary_sequence() != self.secondary_sequence() || !self.checksum_ok()
    }
    /// Whether big-data (`db`) cells may be used: version 1.4 and later.
    pub fn allows_big_data(&self) -> bool {
        self.minor_version() >= 4
    }
    /// The raw bytes as stored (without recomputing the checksum).
    pub fn raw(&self) -> &[u8; BASE_BLOCK_SIZE] {
        &self.raw
    }
    /// The 4096 bytes to write, with the checksum recomputed.
    pub fn to_bytes(&self) -> [u8; BASE_BLOCK_SIZE] {
        let mut raw = self.raw;
        let c = checksum(&raw);
        raw[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_le_bytes());
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_special_cases() {
        let zero = [0u8; 512];
        assert_eq!(checksum(&zero), 1, "0 is written as 1");
        let mut ff = [0u8; 512];
        ff[0..4].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(
            checksum(&ff),
            0xFFFF_FFFE,
            "0xFFFFFFFF is written as 0xFFFFFFFE"
        );
        let mut x = [0u8; 512];
        x[0..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        x[504..508].copy_from_slice(&0x0000_00FFu32.to_le_bytes());
        // Bytes at 508.. are not part of the checksum.
        x[508..512].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(checksum(&x), 0x1234_5687);
    }

    #[test]
    fn new_round_trips() {
        let b = BaseBlock::new(0x20, 4096, 0x01d0_0000_0000_0000, "SYSTEM");
        let bytes = b.to_bytes();
        let p = BaseBlock::parse(&bytes, 0).unwrap();
        assert!(p.checksum_ok());
        assert!(!p.is_dirty());
        assert_eq!(p.root_cell(), 0x20);
        assert_eq!(p.hive_bins_size(), 4096);
        assert_eq!(p.minor_version(), 5);
        assert_eq!(p.file_name(), "SYSTEM");
        assert_eq!(p.timestamp(), 0x01d0_0000_0000_0000);
    }

    #[test]
    fn rejects_bad_signature_short_and_version() {
        assert!(matches!(
            BaseBlock::parse(&[0u8; 100], 0),
            Err(HiveError::Structure(crate::error::StructureError {
                kind: crate::ErrorKind::InvalidFormat,
                ..
            }))
        ));
        let mut bytes = BaseBlock::new(0x20, 4096, 0, "x").to_bytes();
        bytes[0] = b'x';
        let e = BaseBlock::parse(&bytes, 0).unwrap_err().to_string();
        assert!(e.contains("regf"), "{e}");
        let mut bytes = BaseBlock::new(0x20, 4096, 0, "x").to_bytes();
        bytes[24] = 9;
        let e = BaseBlock::parse(&bytes, 0).unwrap_err().to_string();
        assert!(e.contains("1.9"), "{e}");
    }

    #[test]
    fn dirty_when_sequences_differ_or_checksum_bad() {
        let mut b = BaseBlock::new(0x20, 4096, 0, "x");
        b.set_sequences(5, 4);
        let p = BaseBlock::parse(&b.to_bytes(), 0).unwrap();
        assert!(p.is_dirty());
        let mut bytes = BaseBlock::new(0x20, 4096, 0, "x").to_bytes();
        bytes[100] ^= 1;
        let p = BaseBlock::parse(&bytes, 0).unwrap();
        assert!(!p.checksum_ok() && p.is_dirty());
    }
}
