//! Metadata region ([MS-VHDX] 2.6): the table and its items.

use super::{Guid, invalid, need, unsupported};
use crate::bytes::{le16, le32, le64};
use crate::formats::error::FormatError;

/// Metadata table signature, ASCII `metadata`.
pub const METADATA_SIGNATURE: &[u8; 8] = b"metadata";
/// Size of the table at the start of the region.
pub const TABLE_SIZE: usize = 64 << 10;
/// File Parameters CAA16737-FA36-4D43-B3B6-33F0AA44E76B.
pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA16737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Virtual Disk Size 2FA54224-CD1B-4876-B211-5DBED83BF4B8.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA54224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Page 83 Data BECA12AB-B2E6-4523-93EF-C309E000C746.
pub const PAGE83_DATA: Guid = Guid::from_fields(
    0xBECA12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Logical Sector Size 8141BF1D-A96F-4709-BA47-F233A8FAAB5F.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0x8141BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Physical Sector Size CDA348C7-445D-4471-9CC9-E9885251C556.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0xCDA348C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Parent Locator A8D35F2D-B30B-454D-ABF7-D3D84834AB0C.
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xA8D35F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// VHDX parent locator type B04AEFB7-D19E-4A81-B789-25B8E9445913.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xB04AEFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// Entry flag: IsUser.
pub const FLAG_USER: u32 = 1;
/// Entry flag: IsVirtualDisk.
pub const FLAG_VIRTUAL_DISK: u32 = 2;
/// Entry flag: IsRequired.
pub const FLAG_REQUIRED: u32 = 4;

/// Largest virtual disk the format allows (64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// The validated metadata of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxMetadata {
    /// Payload block size (power of two, 1 MiB to 256 MiB).
    pub block_size: u32,
    /// Blocks must stay allocated (fixed disks).
    pub leave_blocks_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// SCSI page 83 identifier.
    pub page83: Option<Guid>,
    /// Parent locator key/value pairs (differencing disks).
    pub parent_locator: Option<Vec<(String, String)>>,
}

impl VhdxMetadata {
    /// Payload blocks per sector bitmap block: 2^23 × logical sector size / block size.
    pub fn chunk_ratio(&self) -> u64 {
        super::bat::chunk_ratio(self.logical_sector_size, self.block_size)
    }
}

fn utf16(b: &[u8]) -> Option<String> {
    let u: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&u).ok()
}

/// Parses a parent locator item (2.6.2.6) whose bytes came from `offset`.
pub fn parse_parent_locator(b: &[u8], offset: u64) -> Result<Vec<(String, String)>, FormatError> {
    const W: &str = "parent locator";
    need(b, 20, W, offset)?;
    if Guid::read(b, 0) != VHDX_LOCATOR_TYPE {
        return Err(unsupported(format!(
            "parent locator type {} (only the VHDX type is known)",
            Guid::read(b, 0)
        )));
    }
    let count = le16(b, 18) as usize;
    need(b, 20 + 12 * count, W, offset)?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 20 + 12 * i;
        let (ko, vo) = (le32(b, at) as usize, le32(b, at + 4) as usize);
        let (kl, vl) = (le16(b, at + 8) as usize, le16(b, at + 10) as usize);
        let slice = |o: usize, l: usize| b.get(o..o.checked_add(l)?).and_then(utf16);
        let (Some(k), Some(v)) = (slice(ko, kl), slice(vo, vl)) else {
            return Err(invalid(
                W,
                offset,
                format!("entry {i}: key or value outside the item or not UTF-16"),
            ));
        };
        out.push((k, v));
    }
    Ok(out)
}

/// Builds a parent locator item from key/value pairs.
pub fn parent_locator_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0u8; 20 + 12 * pairs.len()];
    b[0..16].copy_from_slice(&VHDX_LOCATOR_TYPE.to_bytes());
    b[18..20].copy_from_slice(&(pairs.len() as u16).to_le_bytes());
    for (i, (k, v)) in pairs.iter().enumerate() {
        let enc = |s: &str| {
            s.encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let (k, v) = (enc(k), enc(v));
        let at = 20 + 12 * i;
        let ko = b.len();
        b.extend_from_slice(&k);
        let vo = b.len();
        b.extend_from_slice(&v);
        b[at..at + 4].copy_from_slice(&(ko as u32).to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&(vo as u32).to_le_bytes());
        b[at + 8..at + 10].copy_from_slice(&(k.len() as u16).to_le_bytes());
        b[at + 10..at + 12].copy_from_slice(&(v.len() as u16).to_le_bytes());
    }
    b
}

/// Parses the whole metadata region (`region` holds all its bytes, read from `offset`).
pub fn parse(region: &[u8], offset: u64) -> Result<VhdxMetadata, FormatError> {
    const W: &str = "metadata table";
    need(region, TABLE_SIZE, W, offset)?;
    if &region[0..8] != METADATA_SIGNATURE {
        return Err(invalid(
            W,
            offset,
            format!(
                "signature 'metadata' expected, found {:02x?}",
                &region[0..8]
            ),
        ));
    }
    let count = le16(region, 10) as usize;
    if count > 2047 {
        return Err(invalid(
            W,
            offset,
            format!("{count} entries, at most 2047 allowed"),
        ));
    }
    let mut items: Vec<(Guid, &[u8], u64)> = Vec::new();
    for i in 0..count {
        let at = 32 + 32 * i;
        let id = Guid::read(region, at);
        let (io, il, flags) = (
            le32(region, at + 16) as usize,
            le32(region, at + 20) as usize,
            le32(region, at + 24),
        );
        if id.is_nil() {
            continue;
        }
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE83_DATA,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ];
        if !known.contains(&id) || flags & FLAG_USER != 0 {
            if flags & FLAG_REQUIRED != 0 {
                return Err(unsupported(format!(
                    "unknown required metadata item {} in the metadata table at {offset:#x}",
                    id
                )));
            }
            continue;
        }
        if il == 0 {
            continue;
        }
        if io < TABLE_SIZE || io.checked_add(il).is_none_or(|end| end > region.len()) {
            return Err(invalid(
                W,
                offset,
                format!(
                    "entry {i} ({}): item at {io:#x}+{il:#x} is not inside the region ({:#x} bytes, after the 64 KiB table)",
                    id,
                    region.len()
                ),
            ));
        }
        for (g, _, _) in &items {
            if *g == id {
                return Err(invalid(W, offset, format!("entry {i} repeats item {}", id)));
            }
        }
        items.push((id, &region[io..io + il], offset + io as u64));
    }
    let get = |g: Guid, name: &str, len: usize| -> Result<(&[u8], u64), FormatError> {
        let (_, b, o) = items
            .iter()
            .find(|(x, _, _)| *x == g)
            .ok_or_else(|| invalid(W, offset, format!("required item {name} missing")))?;
        need(b, len, name, *o)?;
        Ok((b, *o))
    };
    let (fp, fpo) = get(FILE_PARAMETERS, "file parameters", 8)?;
    let block_size = le32(fp, 0);
    let fp_flags = le32(fp, 4);
    if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
        return Err(invalid(
            "file parameters",
            fpo,
            format!("block size {block_size:#x}: a power of two from 1 MiB to 256 MiB expected"),
        ));
    }
    let (ls, lso) = get(LOGICAL_SECTOR_SIZE, "logical sector size", 4)?;
    let logical_sector_size = le32(ls, 0);
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(invalid(
            "logical sector size",
            lso,
            format!("512 or 4096 expected, found {logical_sector_size}"),
        ));
    }
    let (ps, pso) = get(PHYSICAL_SECTOR_SIZE, "physical sector size", 4)?;
    let physical_sector_size = le32(ps, 0);
    if physical_sector_size != 512 && physical_sector_size != 4096 {
        return Err(invalid(
            "physical sector size",
            pso,
            format!("512 or 4096 expected, found {physical_sector_size}"),
        ));
    }
    let (vs, vso) = get(VIRTUAL_DISK_SIZE, "virtual disk size", 8)?;
    let virtual_size = le64(vs, 0);
    if virtual_size > MAX_VIRTUAL_SIZE || virtual_size % u64::from(logical_sector_size) != 0 {
        return Err(invalid(
            "virtual disk size",
            vso,
            format!(
                "{virtual_size:#x}: at most 64 TiB and a multiple of the logical sector size ({logical_sector_size}) expected"
            ),
        ));
    }
    let page83 = get(PAGE83_DATA, "page 83 data", 16)
        .ok()
        .map(|(b, _)| Guid::read(b, 0));
    let has_parent = fp_flags & 2 != 0;
    let parent_locator = if has_parent {
        let (pl, plo) = get(PARENT_LOCATOR, "parent locator", 20)?;
        Some(parse_parent_locator(pl, plo)?)
    } else {
        None
    };
    Ok(VhdxMetadata {
        block_size,
        leave_blocks_allocated: fp_flags & 1 != 0,
        has_parent,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        page83,
        parent_locator,
    })
}

/// Builds a metadata region (table + items, `len` bytes) for `m`.
pub fn to_bytes(m: &VhdxMetadata, len: usize) -> Vec<u8> {
    let mut r = vec![0u8; len];
    r[0..8].copy_from_slice(METADATA_SIGNATURE);
    let mut fp = Vec::new();
    fp.extend_from_slice(&m.block_size.to_le_bytes());
    fp.extend_from_slice(
        &(u32::from(m.leave_blocks_allocated) | (u32::from(m.has_parent) << 1)).to_le_bytes(),
    );
    let vd = FLAG_VIRTUAL_DISK | FLAG_REQUIRED;
    let mut items: Vec<(Guid, Vec<u8>, u32)> = vec![
        (FILE_PARAMETERS, fp, FLAG_REQUIRED),
        (VIRTUAL_DISK_SIZE, m.virtual_size.to_le_bytes().to_vec(), vd),
        (
            PAGE83_DATA,
            m.page83.unwrap_or_default().to_bytes().to_vec(),
            vd,
        ),
        (
            LOGICAL_SECTOR_SIZE,
            m.logical_sector_size.to_le_bytes().to_vec(),
            vd,
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            m.physical_sector_size.to_le_bytes().to_vec(),
            vd,
        ),
    ];
    if let Some(pl) = &m.parent_locator {
        let pairs: Vec<(&str, &str)> = pl.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        items.push((PARENT_LOCATOR, parent_locator_bytes(&pairs), FLAG_REQUIRED));
    }
    r[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut pos = TABLE_SIZE;
    for (i, (g, data, flags)) in items.iter().enumerate() {
        let at = 32 + 32 * i;
        r[at..at + 16].copy_from_slice(&g.to_bytes());
        r[at + 16..at + 20].copy_from_slice(&(pos as u32).to_le_bytes());
        r[at + 20..at + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        r[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
        r[pos..pos + data.len()].copy_from_slice(data);
        pos += data.len();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VhdxMetadata {
        VhdxMetadata {
            block_size: 32 << 20,
            leave_blocks_allocated: false,
            has_parent: false,
            virtual_size: 10 << 20,
            logical_sector_size: 4096,
            physical_sector_size: 4096,
            page83: Some(Guid::from_bytes([3; 16])),
            parent_locator: None,
        }
    }

    #[test]
    fn round_trip() {
        let b = to_bytes(&sample(), 1 << 20);
        assert_eq!(&b[0..8], b"metadata");
        assert_eq!(le16(&b, 10), 5); // entry count
        assert_eq!(Guid::read(&b, 32), FILE_PARAMETERS);
        assert_eq!(le32(&b, 48), 0x10000); // first item at 64 KiB
        assert_eq!(parse(&b, 0x200000).unwrap(), sample());
        let mut m = sample();
        m.has_parent = true;
        m.parent_locator = Some(vec![
            ("parent_linkage".into(), "{x}".into()),
            ("relative_path".into(), "a.vhdx".into()),
        ]);
        assert_eq!(parse(&to_bytes(&m, 1 << 20), 0).unwrap(), m);
    }

    #[test]
    fn bad_values() {
        let mut m = sample();
        m.block_size = 3 << 20;
        assert!(
            parse(&to_bytes(&m, 1 << 20), 0)
                .unwrap_err()
                .to_string()
                .contains("block size")
        );
        let mut m = sample();
        m.logical_sector_size = 1024;
        assert!(parse(&to_bytes(&m, 1 << 20), 0).is_err());
        let mut m = sample();
        m.virtual_size = 4097;
        assert!(parse(&to_bytes(&m, 1 << 20), 0).is_err());
        // Unknown required item -> Unsupported.
        let mut b = to_bytes(&sample(), 1 << 20);
        let at = 32 + 32 * 5;
        b[at..at + 16].copy_from_slice(&[9; 16]);
        b[at + 16..at + 20].copy_from_slice(&0x20000u32.to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&4u32.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&FLAG_REQUIRED.to_le_bytes());
        b[10] = 6;
        assert_eq!(
            parse(&b, 0).unwrap_err().kind(),
            crate::error::ErrorKind::Unsupported
        );
        // Item outside the region.
        let mut b = to_bytes(&sample(), 1 << 20);
        b[48..52].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(parse(&b, 0).unwrap_err().to_string().contains("not inside"));
        assert!(parse(&[0u8; 100], 0).is_err());
    }
}
