//! The XFS superblock (XFS Algorithms & Data Structures, "Superblocks"): sector 0 of
//! allocation group 0, big-endian, a CRC32C at byte 224 on version 5.

use super::{be16, be32, be64, check_crc, invalid, unsupported};
use crate::error::Result;

/// Superblock magic, "XFSB".
pub const SB_MAGIC: u32 = 0x5846_5342;
/// Where the superblock's CRC32C lies (`offsetof(struct xfs_dsb, sb_crc)`).
const SB_CRC_OFF: usize = 224;
/// Bytes of the version 5 superblock structure (`sizeof(struct xfs_dsb)`).
const SB_V5_SIZE: usize = 264;
/// Bytes of the fields a version 4 superblock must have (through `sb_features2`).
const SB_V4_SIZE: usize = 208;

/// `sb_versionnum`: directory version 2 (the only one Linux writes since 2.6.x).
const VERSION_DIRV2BIT: u16 = 0x2000;
/// `sb_versionnum`: `sb_features2` is valid.
const VERSION_MOREBITSBIT: u16 = 0x8000;
/// `sb_features2`: directory entries hold the file type (v4 "ftype=1").
const VERSION2_FTYPE: u32 = 0x0200;

/// `sb_features_incompat` (v5): directory entries hold the file type.
const INCOMPAT_FTYPE: u32 = 0x01;
/// Sparse inode chunks (allocation only: nothing to do for a reader).
const INCOMPAT_SPINODES: u32 = 0x02;
/// Metadata blocks carry `sb_meta_uuid`, not `sb_uuid` (we do not compare block UUIDs).
const INCOMPAT_META_UUID: u32 = 0x04;
/// Timestamps beyond 2038 (we do not read timestamps).
const INCOMPAT_BIGTIME: u32 = 0x08;
/// xfs_repair must run before a mount; reading is still possible.
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
/// 64-bit extent counters in inodes flagged `XFS_DIFLAG2_NREXT64`.
pub const INCOMPAT_NREXT64: u32 = 0x20;
/// Atomic file content exchange (a log feature: the on-disk files read as usual).
const INCOMPAT_EXCHRANGE: u32 = 0x40;
/// Directory parent pointers, kept in the attribute fork (which we do not read).
const INCOMPAT_PARENT: u32 = 0x80;
/// The incompatible features this reader reads correctly.
const INCOMPAT_KNOWN: u32 = INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NEEDSREPAIR
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT;

/// The superblock fields the reader uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// 4 or 5.
    pub version: u8,
    /// File system block size in bytes (512..=65536, a power of two).
    pub blocksize: u32,
    /// log2 of `blocksize`.
    pub blocklog: u8,
    /// Sector size in bytes.
    pub sectsize: u32,
    /// Blocks in the data device.
    pub dblocks: u64,
    /// The file system UUID.
    pub uuid: [u8; 16],
    /// First block of the internal log (0: an external log).
    pub logstart: u64,
    /// Blocks of the log.
    pub logblocks: u32,
    /// The root directory's inode number.
    pub rootino: u64,
    /// Blocks per allocation group.
    pub agblocks: u32,
    /// Allocation groups.
    pub agcount: u32,
    /// Bytes per inode.
    pub inodesize: u32,
    /// log2 of `inodesize`.
    pub inodelog: u8,
    /// log2 of inodes per block.
    pub inopblog: u8,
    /// log2 of `agblocks`, rounded up.
    pub agblklog: u8,
    /// The label (`sb_fname`, up to 12 bytes).
    pub label: String,
    /// `sb_inprogress`: mkfs did not finish.
    pub inprogress: bool,
    /// log2 of directory blocks per file system block.
    pub dirblklog: u8,
    /// Whether directory entries carry a file type byte.
    pub ftype: bool,
    /// `sb_features_incompat` (v5; 0 on v4).
    pub incompat: u32,
}

impl Superblock {
    /// Parses and validates the superblock in `b` (at least one sector, read at byte 0 of the
    /// volume): magic, geometry, features and, on v5, the CRC32C over the sector.
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        const WHAT: &str = "superblock";
        if b.len() < 512 {
            return Err(invalid(
                WHAT,
                0,
                format!("the volume is {} bytes, less than one sector", b.len()),
            ));
        }
        let magic = be32(b, 0);
        if magic != SB_MAGIC {
            return Err(invalid(
                WHAT,
                0,
                format!("magic is {magic:#010x}, expected {SB_MAGIC:#010x} (\"XFSB\")"),
            ));
        }
        let versionnum = be16(b, 100);
        let version = (versionnum & 0xf) as u8;
        if version != 4 && version != 5 {
            return Err(unsupported(format!(
                "XFS superblock version {version} (versionnum {versionnum:#06x}): only 4 and 5 \
                 are read"
            )));
        }
        let blocksize = be32(b, 4);
        let blocklog = b[120];
        if !(9..=16).contains(&blocklog) || blocksize != 1u32 << blocklog {
            return Err(invalid(
                WHAT,
                4,
                format!(
                    "block size {blocksize} with log {blocklog}: expected a power of two from \
                     512 to 65536 and its log"
                ),
            ));
        }
        let sectsize = u32::from(be16(b, 102));
        let sectlog = b[121];
        if !(9..=15).contains(&sectlog) || sectsize != 1u32 << sectlog || sectsize > blocksize {
            return Err(invalid(
                WHAT,
                102,
                format!(
                    "sector size {sectsize} with log {sectlog}: expected a power of two from \
                     512 to 32768, at most the block size {blocksize}"
                ),
            ));
        }
        if b.len() < sectsize as usize {
            return Err(invalid(
                WHAT,
                0,
                format!("{} bytes read, less than the sector of {sectsize}", b.len()),
            ));
        }
        let b = &b[..sectsize as usize];
        if version == 5 {
            if (sectsize as usize) < SB_V5_SIZE {
                return Err(invalid(WHAT, 102, "sector smaller than a v5 superblock"));
            }
            check_crc(b, SB_CRC_OFF, WHAT, 0)?;
        } else if (sectsize as usize) < SB_V4_SIZE {
            return Err(invalid(WHAT, 102, "sector smaller than a v4 superblock"));
        }
        let inodesize = u32::from(be16(b, 104));
        let inodelog = b[122];
        let min_inode = if version == 5 { 512 } else { 256 };
        if !(8..=11).contains(&inodelog)
            || inodesize != 1u32 << inodelog
            || inodesize < min_inode
            || inodesize > blocksize
        {
            return Err(invalid(
                WHAT,
                104,
                format!(
                    "inode size {inodesize} with log {inodelog}: expected a power of two from \
                     {min_inode} to 2048, at most the block size"
                ),
            ));
        }
        let inopblock = u32::from(be16(b, 106));
        let inopblog = b[123];
        if inopblock != blocksize >> inodelog
            || u32::from(inopblog) != u32::from(blocklog - inodelog)
        {
            return Err(invalid(
                WHAT,
                106,
                format!(
                    "{inopblock} inodes per block (log {inopblog}), expected {}",
                    blocksize >> inodelog
                ),
            ));
        }
        let agblocks = be32(b, 84);
        let agcount = be32(b, 88);
        let agblklog = b[124];
        // agblklog is log2(agblocks) rounded up; AGs have at least 16 blocks (XFS_MIN_AG_BLOCKS
        // is 64 in mkfs, the kernel accepts smaller ones only for tests).
        let want_log = if agblocks <= 1 {
            0
        } else {
            32 - (agblocks - 1).leading_zeros()
        };
        if agblocks < 16 || u32::from(agblklog) != want_log || agcount == 0 {
            return Err(invalid(
                WHAT,
                84,
                format!(
                    "{agcount} allocation groups of {agblocks} blocks (log {agblklog}): expected \
                     at least one group of at least 16 blocks, log {want_log}"
                ),
            ));
        }
        if u32::from(agblklog) + u32::from(inopblog) > 32 {
            return Err(invalid(
                WHAT,
                124,
                "allocation group and inode-per-block logs exceed 32 bits",
            ));
        }
        let dblocks = be64(b, 8);
        let max_blocks = u64::from(agblocks) * u64::from(agcount);
        let min_blocks = max_blocks - u64::from(agblocks);
        if dblocks > max_blocks || dblocks <= min_blocks {
            return Err(invalid(
                WHAT,
                8,
                format!(
                    "{dblocks} data blocks do not fit {agcount} allocation groups of \
                     {agblocks} blocks"
                ),
            ));
        }
        let dirblklog = b[192];
        if u32::from(blocklog) + u32::from(dirblklog) > 16 {
            return Err(invalid(
                WHAT,
                192,
                format!(
                    "directory block log {dirblklog} makes directory blocks larger than 64 KiB"
                ),
            ));
        }
        let features2 = if versionnum & VERSION_MOREBITSBIT != 0 {
            be32(b, 200) | be32(b, 204)
        } else {
            0
        };
        let (ftype, incompat) = if version == 5 {
            let incompat = be32(b, 216);
            if incompat & !INCOMPAT_KNOWN != 0 {
                return Err(unsupported(format!(
                    "XFS incompatible features {:#x} (sb_features_incompat {incompat:#x})",
                    incompat & !INCOMPAT_KNOWN
                )));
            }
            (incompat & INCOMPAT_FTYPE != 0, incompat)
        } else {
            if versionnum & VERSION_DIRV2BIT == 0 {
                return Err(unsupported(
                    "XFS version 1 directories (sb_versionnum without the DIRV2 bit)".to_string(),
                ));
            }
            (features2 & VERSION2_FTYPE != 0, 0)
        };
        let rootino = be64(b, 56);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[32..48]);
        let fname = &b[108..120];
        let end = fname.iter().position(|&c| c == 0).unwrap_or(fname.len());
        Ok(Superblock {
            version,
            blocksize,
            blocklog,
            sectsize,
            dblocks,
            uuid,
            logstart: be64(b, 48),
            logblocks: be32(b, 96),
            rootino,
            agblocks,
            agcount,
            inodesize,
            inodelog,
            inopblog,
            agblklog,
            label: String::from_utf8_lossy(&fname[..end]).into_owned(),
            inprogress: b[126] != 0,
            dirblklog,
            ftype,
            incompat,
        })
    }

    /// Whether metadata blocks carry CRCs and self-describing headers (version 5).
    pub fn has_crc(&self) -> bool {
        self.version == 5
    }

    /// Bytes of a directory block.
    pub fn dirblksize(&self) -> u32 {
        self.blocksize << self.dirblklog
    }

    /// The byte offset on the volume of file system block `fsb` (AG number in the high bits,
    /// block in the AG in the low `agblklog` bits); `None` when it lies outside the volume's
    /// allocation groups.
    pub fn fsb_to_byte(&self, fsb: u64) -> Option<u64> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        if agno >= u64::from(self.agcount) || agbno >= u64::from(self.agblocks) {
            return None;
        }
        let block = agno * u64::from(self.agblocks) + agbno;
        if block >= self.dblocks {
            return None;
        }
        Some(block << self.blocklog)
    }

    /// The byte offset of inode `ino`; `None` when the number lies outside the volume.
    pub fn ino_to_byte(&self, ino: u64) -> Option<u64> {
        let agino_bits = u32::from(self.agblklog) + u32::from(self.inopblog);
        let agno = ino.checked_shr(agino_bits).unwrap_or(0);
        let agino = ino & ((1u64 << agino_bits) - 1);
        let agbno = agino >> self.inopblog;
        let idx = agino & ((1u64 << self.inopblog) - 1);
        if agno >= u64::from(self.agcount) {
            return None;
        }
        let fsb = (agno << self.agblklog) | agbno;
        let block = self.fsb_to_byte(fsb)?;
        Some(block + (idx << self.inodelog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v4 superblock: 4 KiB blocks, 4 AGs of 1024 blocks, 512-byte inodes.
    pub(crate) fn v4() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(b"XFSB"); // sb_magicnum
        b[4..8].copy_from_slice(&4096u32.to_be_bytes()); // sb_blocksize
        b[8..16].copy_from_slice(&4096u64.to_be_bytes()); // sb_dblocks
        b[56..64].copy_from_slice(&128u64.to_be_bytes()); // sb_rootino
        b[84..88].copy_from_slice(&1024u32.to_be_bytes()); // sb_agblocks
        b[88..92].copy_from_slice(&4u32.to_be_bytes()); // sb_agcount
        b[100..102].copy_from_slice(&(0xb4a4u16).to_be_bytes()); // sb_versionnum: v4 + DIRV2 ...
        b[102..104].copy_from_slice(&512u16.to_be_bytes()); // sb_sectsize
        b[104..106].copy_from_slice(&512u16.to_be_bytes()); // sb_inodesize
        b[106..108].copy_from_slice(&8u16.to_be_bytes()); // sb_inopblock
        b[108..112].copy_from_slice(b"root"); // sb_fname
        b[120] = 12; // sb_blocklog
        b[121] = 9; // sb_sectlog
        b[122] = 9; // sb_inodelog
        b[123] = 3; // sb_inopblog
        b[124] = 10; // sb_agblklog
        b
    }

    #[test]
    fn parses_v4_and_maps_inodes() {
        let sb = Superblock::parse(&v4()).unwrap();
        assert_eq!(sb.version, 4);
        assert_eq!(sb.label, "root");
        assert!(!sb.ftype);
        // inode 128: AG 0, block 16, slot 0.
        assert_eq!(sb.ino_to_byte(128), Some(16 * 4096));
        // AG 1 starts at agino bits 13.
        assert_eq!(sb.ino_to_byte((1 << 13) | 9), Some((1024 + 1) * 4096 + 512));
        assert_eq!(sb.ino_to_byte(4 << 13), None);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut b = v4();
        b[0] = b'Y';
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("superblock") && e.contains("magic"), "{e}");
        let mut b = v4();
        b[120] = 13;
        assert!(Superblock::parse(&b).is_err());
        let mut b = v4();
        b[8..16].copy_from_slice(&9999u64.to_be_bytes());
        assert!(Superblock::parse(&b).is_err());
        assert!(Superblock::parse(&v4()[..100]).is_err());
    }

    #[test]
    fn v5_crc_is_checked() {
        let mut b = v4();
        b[100..102].copy_from_slice(&(0xb4a5u16).to_be_bytes());
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        super::super::set_crc(&mut b, SB_CRC_OFF);
        assert_eq!(Superblock::parse(&b).unwrap().version, 5);
    }
}
