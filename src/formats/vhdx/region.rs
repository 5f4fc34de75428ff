//! Region table ([MS-VHDX] 2.2.3): where the BAT and the metadata region lie.

use super::{Guid, MIB, checksum, invalid, need, set_checksum, unsupported};
use crate::bytes::{le32, le64};
use crate::formats::error::FormatError;

/// Region table signature, ASCII `regi`.
pub const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// Offsets of the two copies.
pub const REGION_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// Size of a region table (covered by its checksum).
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// Most entries a table may hold.
pub const MAX_ENTRIES: u32 = 2047;
/// BAT region 2DC27766-F623-4200-9D64-115E9BFD4A08.
pub const BAT_GUID: Guid = Guid::from_fields(
    0x2DC27766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// Metadata region 8B7CA206-4790-4B9A-B8FE-575F050F886E.
pub const METADATA_GUID: Guid = Guid::from_fields(
    0x8B7CA206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// One region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Region type.
    pub guid: Guid,
    /// Byte offset in the file (multiple of 1 MiB).
    pub offset: u64,
    /// Length in bytes (multiple of 1 MiB).
    pub length: u32,
    /// The reader must understand it.
    pub required: bool,
}

/// The regions a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxRegions {
    /// The BAT.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

/// Parses the region table at `offset`: checksum, entries, known required regions, alignment
/// and overlaps.
pub fn parse(bytes: &[u8], offset: u64) -> Result<VhdxRegions, FormatError> {
    const W: &str = "region table";
    need(bytes, REGION_TABLE_SIZE, W, offset)?;
    let b = &bytes[..REGION_TABLE_SIZE];
    if &b[0..4] != REGION_SIGNATURE {
        return Err(invalid(
            W,
            offset,
            format!("signature 'regi' expected, found {:02x?}", &b[0..4]),
        ));
    }
    let (stored, computed) = (le32(b, 4), checksum(b, 4));
    if stored != computed {
        return Err(invalid(
            W,
            offset,
            format!("checksum {stored:#010x} stored, {computed:#010x} computed"),
        ));
    }
    let count = le32(b, 8);
    if count > MAX_ENTRIES {
        return Err(invalid(
            W,
            offset,
            format!("{count} entries, at most {MAX_ENTRIES} allowed"),
        ));
    }
    let mut regions: Vec<Region> = Vec::new();
    for i in 0..count as usize {
        let at = 16 + 32 * i;
        let r = Region {
            guid: Guid::read(b, at),
            offset: le64(b, at + 16),
            length: le32(b, at + 24),
            required: le32(b, at + 28) & 1 != 0,
        };
        if r.offset % MIB != 0
            || r.offset < MIB
            || r.offset > super::MAX_FILE_OFFSET
            || u64::from(r.length) % MIB != 0
            || r.length == 0
        {
            return Err(invalid(
                W,
                offset,
                format!(
                    "entry {i}: region at {:#x}, {:#x} bytes: both must be non-zero multiples of 1 MiB, at or after 1 MiB",
                    r.offset, r.length
                ),
            ));
        }
        for (j, o) in regions.iter().enumerate() {
            if r.offset < o.offset + u64::from(o.length)
                && o.offset < r.offset + u64::from(r.length)
            {
                return Err(invalid(
                    W,
                    offset,
                    format!(
                        "entry {i} ({:#x}+{:#x}) overlaps entry {j} ({:#x}+{:#x})",
                        r.offset, r.length, o.offset, o.length
                    ),
                ));
            }
            if o.guid == r.guid {
                return Err(invalid(
                    W,
                    offset,
                    format!("entry {i} repeats region {}", r.guid),
                ));
            }
        }
        if r.guid != BAT_GUID && r.guid != METADATA_GUID && r.required {
            return Err(unsupported(format!(
                "unknown required region {} in the region table at {offset:#x}",
                r.guid
            )));
        }
        regions.push(r);
    }
    let find = |g: &Guid, name: &str| {
        regions
            .iter()
            .find(|r| &r.guid == g)
            .copied()
            .ok_or_else(|| invalid(W, offset, format!("no {name} region")))
    };
    Ok(VhdxRegions {
        bat: find(&BAT_GUID, "BAT")?,
        metadata: find(&METADATA_GUID, "metadata")?,
    })
}

/// The 64 KiB on-disk form of a table holding `regions` (all required).
pub fn to_bytes(regions: &[Region]) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    b[0..4].copy_from_slice(REGION_SIGNATURE);
    b[8..12].copy_from_slice(&(regions.len() as u32).to_le_bytes());
    for (i, r) in regions.iter().enumerate() {
        let at = 16 + 32 * i;
        b[at..at + 16].copy_from_slice(&r.guid.to_bytes());
        b[at + 16..at + 24].copy_from_slice(&r.offset.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&r.length.to_le_bytes());
        b[at + 28..at + 32].copy_from_slice(&u32::from(r.required).to_le_bytes());
    }
    set_checksum(&mut b, 4);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: Option<Region>) -> Vec<u8> {
        let mut r = vec![
            Region {
                guid: BAT_GUID,
                offset: 3 * MIB,
                length: MIB as u32,
                required: true,
            },
            Region {
                guid: METADATA_GUID,
                offset: 2 * MIB,
                length: MIB as u32,
                required: true,
            },
        ];
        r.extend(extra);
        to_bytes(&r)
    }

    #[test]
    fn parses_both_regions() {
        let b = table(None);
        assert_eq!(&b[0..4], b"regi"); // signature
        assert_eq!(le32(&b, 8), 2); // entry count
        let r = parse(&b, 0x30000).unwrap();
        assert_eq!((r.bat.offset, r.metadata.offset), (3 * MIB, 2 * MIB));
    }

    #[test]
    fn rejects_bad_tables() {
        let mut b = table(None);
        b[20] ^= 1;
        assert!(
            parse(&b, 0x30000)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        let over = Region {
            guid: Guid::from_bytes([9; 16]),
            offset: 3 * MIB,
            length: MIB as u32,
            required: false,
        };
        let e = parse(&table(Some(over)), 0x30000).unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
        let unknown = Region {
            guid: Guid::from_bytes([9; 16]),
            offset: 8 * MIB,
            length: MIB as u32,
            required: true,
        };
        let e = parse(&table(Some(unknown)), 0x30000).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported);
        let optional = Region {
            guid: Guid::from_bytes([9; 16]),
            offset: 8 * MIB,
            length: MIB as u32,
            required: false,
        };
        assert!(parse(&table(Some(optional)), 0).is_ok());
        let odd = Region {
            guid: Guid::from_bytes([9; 16]),
            offset: 8 * MIB + 4096,
            length: MIB as u32,
            required: false,
        };
        assert!(parse(&table(Some(odd)), 0).is_err());
        // Regression: an offset near 2^64 used to overflow the overlap check.
        let huge = Region {
            guid: Guid::from_bytes([9; 16]),
            offset: !(MIB - 1),
            length: MIB as u32,
            required: false,
        };
        assert!(parse(&table(Some(huge)), 0).is_err());
        let mut b = table(None);
        b[8..12].copy_from_slice(&5000u32.to_le_bytes());
        set_checksum(&mut b, 4);
        assert!(parse(&b, 0).is_err());
    }
}
