//! The VHD footer ("Hard Disk Footer Format" in Microsoft's VHD specification): 512 big-endian
//! bytes at the end of every VHD, plus a copy at offset 0 of dynamic and differencing disks.

use crate::bytes::{be32, be64};
use crate::formats::error::FormatError;

/// Size of a footer as written by current tools.
pub const FOOTER_SIZE: usize = 512;
/// Some older tools (early Virtual PC / Virtual Server) wrote one byte less.
pub const OLD_FOOTER_SIZE: usize = 511;
/// Footer cookie "conectix" (spec: Hard Disk Footer Format, "Cookie").
pub const COOKIE: [u8; 8] = *b"conectix";
/// Features field: bit 1 "reserved" must always be set (spec: "Features").
pub const FEATURES_RESERVED: u32 = 0x0000_0002;
/// File format version 1.0 (spec: "File Format Version").
pub const VERSION_1_0: u32 = 0x0001_0000;
/// Data offset of a fixed disk: all ones (spec: "Data Offset").
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds between the Unix epoch and the VHD epoch, 2000-01-01 00:00:00 UTC.
pub const VHD_EPOCH: u64 = 946_684_800;
/// Sectors of the largest geometry the specification allows, 65535 x 16 x 255.
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// The kind of disk (spec: "Disk Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// 2: every byte stored, footer only.
    Fixed,
    /// 3: sparse, with a dynamic header and a BAT.
    Dynamic,
    /// 4: sparse, on top of a parent.
    Differencing,
}

impl DiskType {
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// The on-disk value.
    pub fn to_u32(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// A lower-case name for `info`.
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Cylinders, heads, sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

impl Chs {
    /// Bytes addressed by this geometry.
    pub fn size(self) -> u64 {
        self.cylinders as u64 * self.heads as u64 * self.sectors as u64 * 512
    }

    /// The geometry for a disk of `total_sectors`, by the algorithm of the VHD specification
    /// (appendix "CHS Calculation"). The geometry may address fewer sectors than the disk has;
    /// the disk is never grown to fit it.
    pub fn for_sectors(total_sectors: u64) -> Chs {
        let total = total_sectors.min(MAX_CHS_SECTORS);
        let (spt, heads, cth);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = total / spt;
        } else {
            let mut s = 17;
            let mut c = total / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        // All three fit their fields: total <= 65535*16*255, so cth / heads <= 65535.
        Chs {
            cylinders: (cth / heads).min(65535) as u16,
            heads: heads as u8,
            sectors: spt as u8,
        }
    }
}

/// A validated footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdFooter {
    /// Features bit field.
    pub features: u32,
    /// Format version.
    pub version: u32,
    /// Absolute offset of the dynamic header (all ones for fixed disks).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// Creator application, e.g. `vpc `, `win `, `qemu`.
    pub creator_app: [u8; 4],
    /// Creator version.
    pub creator_version: u32,
    /// Creator host OS (`Wi2k`, `Mac `).
    pub creator_os: [u8; 4],
    /// Size at creation.
    pub original_size: u64,
    /// Current size.
    pub current_size: u64,
    /// Geometry.
    pub chs: Chs,
    /// Disk type.
    pub disk_type: DiskType,
    /// Checksum as stored.
    pub checksum: u32,
    /// Unique id (matched against a child's parent id).
    pub unique_id: [u8; 16],
    /// Saved-state flag.
    pub saved_state: u8,
}

/// One's complement of the byte sum of `bytes`, with the 4 checksum bytes at `skip` counted as
/// zero (spec: "Checksum").
pub fn checksum(bytes: &[u8], skip: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(b as u32));
    !sum
}

/// A printable form of a 4-byte creator field.
pub fn fourcc(b: &[u8; 4]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

fn invalid(offset: u64, detail: String) -> FormatError {
    FormatError::invalid("VHD", "footer", offset, detail)
}

impl VhdFooter {
    /// Parses and validates a footer. `bytes` is 512 bytes, or 511 for the old short footer;
    /// `offset` is where it lies in the file (for errors).
    pub fn parse(bytes: &[u8], offset: u64) -> Result<VhdFooter, FormatError> {
        if bytes.len() != FOOTER_SIZE && bytes.len() != OLD_FOOTER_SIZE {
            return Err(invalid(
                offset,
                format!("expected 512 bytes, found {}", bytes.len()),
            ));
        }
        if bytes[0..8] != COOKIE {
            return Err(invalid(
                offset,
                format!(
                    "cookie is {:?}, expected \"conectix\"",
                    String::from_utf8_lossy(&bytes[0..8])
                ),
            ));
        }
        let stored = be32(bytes, 64);
        let computed = checksum(bytes, 64);
        if stored != computed {
            return Err(invalid(
                offset,
                format!("checksum is {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let version = be32(bytes, 12);
        if version >> 16 != 1 {
            return Err(FormatError::Unsupported {
                format: "VHD",
                detail: format!("footer at {offset:#x}: format version {version:#010x}"),
            });
        }
        let type_raw = be32(bytes, 60);
        let disk_type = DiskType::from_u32(type_raw).ok_or_else(|| {
            invalid(
                offset,
                format!(
                    "disk type is {type_raw}, expected 2 (fixed), 3 (dynamic) or 4 (differencing)"
                ),
            )
        })?;
        let data_offset = be64(bytes, 16);
        if disk_type == DiskType::Fixed {
            // Some tools write 0 instead of all ones; the field is meaningless for a fixed disk.
        } else if data_offset == NO_DATA_OFFSET || data_offset % 512 != 0 {
            return Err(invalid(
                offset,
                format!(
                    "{} disk with data offset {data_offset:#x}, expected a sector-aligned offset",
                    disk_type.name()
                ),
            ));
        }
        let mut creator_app = [0; 4];
        creator_app.copy_from_slice(&bytes[28..32]);
        let mut creator_os = [0; 4];
        creator_os.copy_from_slice(&bytes[36..40]);
        let mut unique_id = [0; 16];
        unique_id.copy_from_slice(&bytes[68..84]);
        Ok(VhdFooter {
            features: be32(bytes, 8),
            version,
            data_offset,
            timestamp: be32(bytes, 24),
            creator_app,
            creator_version: be32(bytes, 32),
            creator_os,
            original_size: be64(bytes, 40),
            current_size: be64(bytes, 48),
            chs: Chs {
                cylinders: u16::from_be_bytes([bytes[56], bytes[57]]),
                heads: bytes[58],
                sectors: bytes[59],
            },
            disk_type,
            checksum: stored,
            unique_id,
            saved_state: bytes[84],
        })
    }

    /// The 512 bytes of this footer, with the checksum recomputed.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(&COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.chs.cylinders.to_be_bytes());
        b[58] = self.chs.heads;
        b[59] = self.chs.sectors;
        b[60..64].copy_from_slice(&self.disk_type.to_u32().to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// Whether the size comes from the CHS geometry rather than `current_size`, following
    /// qemu's `vpc` driver so both tools agree on the size: Hyper-V (`win `), qemu with
    /// `force_size` (`qem2`), Disk2vhd (`d2v `), XenConverter (`CTXS`) and XenServer (`tap\0`)
    /// mean `current_size`; everything else (Virtual PC `vpc `, old qemu `qemu`, unknown
    /// creators) means the geometry -- except that the maximum geometry always means
    /// `current_size`, as it cannot describe a larger disk.
    pub fn uses_chs(&self) -> bool {
        let by_creator = !matches!(
            &self.creator_app,
            b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0"
        );
        let chs_sectors = self.chs.size() / 512;
        by_creator && chs_sectors != MAX_CHS_SECTORS
    }

    /// The virtual disk size in bytes (a whole number of sectors).
    pub fn virtual_size(&self) -> u64 {
        if self.uses_chs() {
            self.chs.size()
        } else {
            self.current_size & !511
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid footer built field by field.
    pub(crate) fn sample(
        disk_type: u32,
        creator: &[u8; 4],
        size: u64,
        chs: (u16, u8, u8),
    ) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(b"conectix"); // cookie
        b[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
        b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // version 1.0
        let data_offset: u64 = if disk_type == 2 { u64::MAX } else { 512 };
        b[16..24].copy_from_slice(&data_offset.to_be_bytes()); // data offset
        b[24..28].copy_from_slice(&0x2000_0000u32.to_be_bytes()); // timestamp
        b[28..32].copy_from_slice(creator); // creator application
        b[32..36].copy_from_slice(&0x0006_0003u32.to_be_bytes()); // creator version
        b[36..40].copy_from_slice(b"Wi2k"); // creator host OS
        b[40..48].copy_from_slice(&size.to_be_bytes()); // original size
        b[48..56].copy_from_slice(&size.to_be_bytes()); // current size
        b[56..58].copy_from_slice(&chs.0.to_be_bytes()); // cylinders
        b[58] = chs.1; // heads
        b[59] = chs.2; // sectors per track
        b[60..64].copy_from_slice(&disk_type.to_be_bytes()); // disk type
        b[68..84].copy_from_slice(&[7u8; 16]); // unique id
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes()); // checksum
        b
    }

    #[test]
    fn parses_a_hyperv_footer() {
        // The 127 GiB Hyper-V disk of the corpus uses current_size whatever the geometry.
        let b = sample(3, b"win ", 136_365_211_648, (65535, 16, 255));
        let f = VhdFooter::parse(&b, 0).unwrap();
        assert_eq!(f.disk_type, DiskType::Dynamic);
        assert_eq!(f.virtual_size(), 136_365_211_648);
        assert_eq!(f.to_bytes().to_vec(), b);
    }

    #[test]
    fn virtual_pc_uses_chs() {
        // The corpus' Virtual PC 127 GiB disk: CHS 65278/16/255 -> 136363130880 bytes, not
        // current_size (qemu iotest 146).
        let b = sample(3, b"vpc ", 136_365_211_648, (65278, 16, 255));
        assert_eq!(
            VhdFooter::parse(&b, 0).unwrap().virtual_size(),
            136_363_130_880
        );
        let b = sample(3, b"vpc ", 10 << 20, (300, 4, 17));
        assert_eq!(
            VhdFooter::parse(&b, 0).unwrap().virtual_size(),
            300 * 4 * 17 * 512
        );
        // An unknown creator is treated as geometry, like qemu does.
        let b = sample(2, b"abcd", 10 << 20, (300, 4, 17));
        assert_eq!(
            VhdFooter::parse(&b, 0).unwrap().virtual_size(),
            300 * 4 * 17 * 512
        );
        let b = sample(2, b"qem2", 10 << 20, (300, 4, 17));
        assert_eq!(VhdFooter::parse(&b, 0).unwrap().virtual_size(), 10 << 20);
        // The maximum geometry always means current_size (Disk2vhd's "d2v\0").
        let b = sample(3, b"d2v\0", 263_454_720, (65535, 16, 255));
        assert_eq!(VhdFooter::parse(&b, 0).unwrap().virtual_size(), 263_454_720);
    }

    #[test]
    fn chs_algorithm() {
        // The corpus' 127 GiB disks: 266338304 sectors -> 65278/16/255 (what Virtual PC wrote).
        assert_eq!(
            Chs::for_sectors(136_365_211_648 / 512),
            Chs {
                cylinders: 65278,
                heads: 16,
                sectors: 255
            }
        );
        // Small disks: 20 MiB = 40960 sectors -> 17 spt: 2409 c*h, 4 heads -> 602 cylinders.
        assert_eq!(
            Chs::for_sectors(40960),
            Chs {
                cylinders: 602,
                heads: 4,
                sectors: 17
            }
        );
        // 10 GiB: 20971520 sectors -> 63 spt, 16 heads, 20805 cylinders.
        assert_eq!(
            Chs::for_sectors(20_971_520),
            Chs {
                cylinders: 20805,
                heads: 16,
                sectors: 63
            }
        );
        // Never larger than the disk.
        for s in [1u64, 100, 40960, 123_457, 1 << 24, 1 << 30, 1 << 33] {
            assert!(Chs::for_sectors(s).size() / 512 <= s);
        }
        // Huge disks: the maximum geometry.
        assert_eq!(Chs::for_sectors(1 << 40).size() / 512, MAX_CHS_SECTORS);
    }

    #[test]
    fn accepts_the_511_byte_footer() {
        let b = sample(2, b"vs  ", 1 << 20, (30, 4, 17));
        let f = VhdFooter::parse(&b[..511], 0).unwrap();
        assert_eq!(f.disk_type, DiskType::Fixed);
    }

    #[test]
    fn rejects_bad_values() {
        let good = sample(3, b"win ", 1 << 20, (30, 4, 17));
        let mut b = good.clone();
        b[0] = b'x';
        assert!(
            VhdFooter::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("cookie")
        );
        let mut b = good.clone();
        b[100] ^= 1;
        let e = VhdFooter::parse(&b, 0x200).unwrap_err().to_string();
        assert!(e.contains("checksum") && e.contains("0x200"), "{e}");
        let mut b = good.clone();
        b[63] = 9;
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        assert!(
            VhdFooter::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("disk type")
        );
        let mut b = good.clone();
        b[23] = 1; // dynamic with an unaligned data offset
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        assert!(
            VhdFooter::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("data offset")
        );
        assert!(VhdFooter::parse(&good[..100], 0).is_err());
    }
}
