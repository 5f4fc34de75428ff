//! XFS inodes (XFS Algorithms & Data Structures, "On-disk Inode"): the core (`xfs_dinode`,
//! 100 bytes on v1/v2 inodes, 176 on v3 with a CRC32C at byte 100), then the data fork and
//! the attribute fork.

use super::{be16, be32, be64, check_crc, corrupt};
use crate::error::Result;

/// Inode magic, "IN".
const DI_MAGIC: u16 = 0x494e;
/// Bytes of the v1/v2 inode core.
const CORE_V2: usize = 100;
/// Bytes of the v3 inode core.
const CORE_V3: usize = 176;
/// Where the v3 inode's CRC32C lies.
const DI_CRC_OFF: usize = 100;
/// `di_flags2`: 64-bit extent counters.
const DIFLAG2_NREXT64: u64 = 1 << 4;

/// `S_IFMT` and the file types of `di_mode`.
pub const S_IFMT: u16 = 0o170000;
/// A directory.
pub const S_IFDIR: u16 = 0o040000;
/// A regular file.
pub const S_IFREG: u16 = 0o100000;
/// A symbolic link.
pub const S_IFLNK: u16 = 0o120000;

/// How a fork stores its data (`di_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A device number (`XFS_DINODE_FMT_DEV`).
    Dev,
    /// The data is inside the inode (`XFS_DINODE_FMT_LOCAL`).
    Local,
    /// A list of extents inside the inode (`XFS_DINODE_FMT_EXTENTS`).
    Extents,
    /// The root of an extent B+tree inside the inode (`XFS_DINODE_FMT_BTREE`).
    Btree,
}

/// An inode's core and its data fork, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// The inode number.
    pub ino: u64,
    /// Where it lies on the volume.
    pub offset: u64,
    /// `di_mode`.
    pub mode: u16,
    /// The data fork's format.
    pub format: Format,
    /// `di_size`.
    pub size: u64,
    /// `di_nblocks`: blocks of both forks including B+tree blocks.
    pub nblocks: u64,
    /// Extents of the data fork.
    pub nextents: u64,
    /// The data fork's bytes (the literal area up to the attribute fork).
    pub fork: Vec<u8>,
}

impl Inode {
    /// Parses inode `ino` from its `b` (`inodesize` bytes read at `offset`). `v3` says the file
    /// system is version 5 (v3 inodes with a CRC and their own number).
    pub fn parse(b: &[u8], ino: u64, offset: u64, v3: bool) -> Result<Inode> {
        let what = || format!("inode {ino}");
        let core = if v3 { CORE_V3 } else { CORE_V2 };
        if b.len() < core + 8 {
            return Err(corrupt(what(), offset, format!("only {} bytes", b.len())));
        }
        let magic = be16(b, 0);
        if magic != DI_MAGIC {
            return Err(corrupt(
                what(),
                offset,
                format!("magic is {magic:#06x}, expected {DI_MAGIC:#06x} (\"IN\")"),
            ));
        }
        let version = b[4];
        if v3 {
            if version != 3 {
                return Err(corrupt(
                    what(),
                    offset + 4,
                    format!("version {version} on a v5 file system, expected 3"),
                ));
            }
            check_crc(b, DI_CRC_OFF, &what(), offset)?;
            let own = be64(b, 152);
            if own != ino {
                return Err(corrupt(
                    what(),
                    offset + 152,
                    format!("holds inode number {own}, expected {ino} (a misplaced inode)"),
                ));
            }
        } else if version != 1 && version != 2 {
            return Err(corrupt(
                what(),
                offset + 4,
                format!("version {version}, expected 1 or 2 on a v4 file system"),
            ));
        }
        let mode = be16(b, 2);
        let format = match b[5] {
            0 => Format::Dev,
            1 => Format::Local,
            2 => Format::Extents,
            3 => Format::Btree,
            f => {
                return Err(corrupt(
                    what(),
                    offset + 5,
                    format!("data fork format {f}, expected 0 to 3"),
                ));
            }
        };
        let flags2 = if v3 { be64(b, 120) } else { 0 };
        let nextents = if flags2 & DIFLAG2_NREXT64 != 0 {
            be64(b, 24)
        } else {
            u64::from(be32(b, 76))
        };
        let size = be64(b, 56);
        if size > i64::MAX as u64 {
            return Err(corrupt(
                what(),
                offset + 56,
                format!("size {size} is negative"),
            ));
        }
        let forkoff = usize::from(b[82]) * 8;
        let literal = b.len() - core;
        let fork_len = if forkoff == 0 { literal } else { forkoff };
        if fork_len > literal {
            return Err(corrupt(
                what(),
                offset + 82,
                format!(
                    "attribute fork offset {forkoff} lies past the literal area of {literal} bytes"
                ),
            ));
        }
        Ok(Inode {
            ino,
            offset,
            mode,
            format,
            size,
            nblocks: be64(b, 64),
            nextents,
            fork: b[core..core + fork_len].to_vec(),
        })
    }

    /// The file type bits of the mode.
    pub fn file_type(&self) -> u16 {
        self.mode & S_IFMT
    }

    /// Where the data fork lies on the volume (for messages).
    pub fn fork_offset(&self, v3: bool) -> u64 {
        self.offset + if v3 { CORE_V3 } else { CORE_V2 } as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 inode of 256 bytes: a regular file in extent format with one extent.
    fn v2() -> Vec<u8> {
        let mut b = vec![0u8; 256];
        b[0..2].copy_from_slice(b"IN"); // di_magic
        b[2..4].copy_from_slice(&0o100644u16.to_be_bytes()); // di_mode
        b[4] = 2; // di_version
        b[5] = 2; // di_format: extents
        b[56..64].copy_from_slice(&5000u64.to_be_bytes()); // di_size
        b[76..80].copy_from_slice(&1u32.to_be_bytes()); // di_nextents
        b
    }

    #[test]
    fn parses_a_v2_inode() {
        let i = Inode::parse(&v2(), 131, 0x1000, false).unwrap();
        assert_eq!(i.file_type(), S_IFREG);
        assert_eq!(i.format, Format::Extents);
        assert_eq!((i.size, i.nextents, i.fork.len()), (5000, 1, 156));
    }

    #[test]
    fn rejects_bad_inodes() {
        let mut b = v2();
        b[0] = 0;
        let e = Inode::parse(&b, 131, 0x1000, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inode 131") && e.contains("0x1000"), "{e}");
        let mut b = v2();
        b[5] = 9;
        assert!(Inode::parse(&b, 131, 0, false).is_err());
        let mut b = v2();
        b[82] = 30; // forkoff 240 > 156
        assert!(Inode::parse(&b, 131, 0, false).is_err());
        // A v2 inode on a v5 file system.
        let mut b = v2();
        b.resize(512, 0);
        assert!(Inode::parse(&b, 131, 0, true).is_err());
        assert!(Inode::parse(&v2()[..50], 131, 0, false).is_err());
    }

    #[test]
    fn v3_checks_crc_and_number() {
        let mut b = v2();
        b.resize(512, 0);
        b[4] = 3;
        b[152..160].copy_from_slice(&131u64.to_be_bytes()); // di_ino
        let e = Inode::parse(&b, 131, 0, true).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        super::super::set_crc(&mut b, DI_CRC_OFF);
        assert!(Inode::parse(&b, 131, 0, true).is_ok());
        let e = Inode::parse(&b, 132, 0, true).unwrap_err().to_string();
        assert!(e.contains("131"), "{e}");
    }
}
