//! The ext2/3/4 superblock (1024 bytes at byte 1024 of the volume): the fields the writer
//! needs, the features it accepts, and writing back the free counts and the checksum.

use super::ExtfsError;
use super::csum::{ext4_crc32c, fs_seed};

/// Byte offset of the primary superblock on the volume.
pub(crate) const SB_OFFSET: u64 = 1024;
/// Size of the superblock.
pub(crate) const SB_SIZE: usize = 1024;
/// `s_magic` (0xEF53).
const MAGIC: u16 = 0xEF53;

// s_feature_compat
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x20;
// s_feature_incompat
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
// s_feature_ro_compat
pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub(crate) const RO_COMPAT_GDT_CSUM: u32 = 0x10;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
pub(crate) const RO_COMPAT_PROJECT: u32 = 0x2000;

/// Incompatible features, by bit, with their names; the ones the writer handles are in
/// [`INCOMPAT_OK`].
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const INCOMPAT_OK: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR;

const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x4, "btree_dir"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg (gdt_csum)"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x80, "snapshot"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];
const RO_COMPAT_OK: u32 = RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_GDT_CSUM
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
    | RO_COMPAT_METADATA_CSUM
    | RO_COMPAT_PROJECT;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The superblock: its raw bytes (written back with new counts) and the parsed fields.
#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    pub raw: Vec<u8>,
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub first_data_block: u32,
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub desc_size: u16,
    pub hash_seed: [u32; 4],
    pub unsigned_hash: bool,
    pub want_extra_isize: u16,
    /// The seed of every metadata_csum checksum.
    pub csum_seed: u32,
    pub group_count: u32,
}

impl Superblock {
    /// Parses and checks the superblock `b` (the 1024 bytes at [`SB_OFFSET`]) and refuses file
    /// systems the writer must not change.
    pub fn parse(b: &[u8]) -> Result<Superblock, ExtfsError> {
        let at = |field: u64| SB_OFFSET + field;
        if b.len() < SB_SIZE {
            return Err(ExtfsError::invalid(
                "superblock",
                SB_OFFSET,
                format!("expected {SB_SIZE} bytes, found {}", b.len()),
            ));
        }
        let magic = le16(b, 0x38);
        if magic != MAGIC {
            return Err(ExtfsError::invalid(
                "superblock magic",
                at(0x38),
                format!("expected {MAGIC:#06x}, found {magic:#06x}"),
            ));
        }
        let rev = le32(b, 0x4C);
        let log_bs = le32(b, 0x18);
        if log_bs > 6 {
            return Err(ExtfsError::invalid(
                "superblock s_log_block_size",
                at(0x18),
                format!("expected 0..=6 (1 KiB..64 KiB blocks), found {log_bs}"),
            ));
        }
        let block_size = 1024u32 << log_bs;
        let (compat, incompat, ro_compat) = if rev >= 1 {
            (le32(b, 0x5C), le32(b, 0x60), le32(b, 0x64))
        } else {
            (0, 0, 0)
        };
        let metadata_csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
        if metadata_csum {
            let want = ext4_crc32c(!0, &b[..0x3FC]);
            let found = le32(b, 0x3FC);
            if want != found {
                return Err(ExtfsError::invalid(
                    "superblock checksum",
                    at(0x3FC),
                    format!("expected {want:#010x}, found {found:#010x}"),
                ));
            }
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(ExtfsError::NotWritable {
                reason: "the ext4 journal needs recovery; mount and unmount it on the source or \
                         run e2fsck"
                    .into(),
            });
        }
        let unknown_in = incompat & !INCOMPAT_OK;
        if unknown_in != 0 {
            return Err(ExtfsError::Unsupported(format!(
                "the file system uses incompatible features the writer does not write: {}",
                names(unknown_in, INCOMPAT_NAMES)
            )));
        }
        let unknown_ro = ro_compat & !RO_COMPAT_OK;
        if unknown_ro != 0 {
            return Err(ExtfsError::Unsupported(format!(
                "the file system uses read-only-compatible features the writer does not write: {}",
                names(unknown_ro, RO_COMPAT_NAMES)
            )));
        }
        let state = le16(b, 0x3A);
        if state & 0x2 != 0 {
            return Err(ExtfsError::NotWritable {
                reason: "the file system has errors recorded (s_state); run e2fsck on it first"
                    .into(),
            });
        }
        if state & 0x1 == 0 {
            return Err(ExtfsError::NotWritable {
                reason: "the file system was not cleanly unmounted (s_state); unmount it or run \
                         e2fsck first"
                    .into(),
            });
        }
        let last_orphan = le32(b, 0xE8);
        if last_orphan != 0 {
            return Err(ExtfsError::NotWritable {
                reason: format!(
                    "the file system has orphan inodes in progress (s_last_orphan = \
                     {last_orphan}); mount and unmount it or run e2fsck first"
                ),
            });
        }
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let hi = |o: usize| if is64 { u64::from(le32(b, o)) << 32 } else { 0 };
        let blocks_count = u64::from(le32(b, 0x4)) | hi(0x150);
        let free_blocks = u64::from(le32(b, 0xC)) | hi(0x158);
        let inodes_count = le32(b, 0x0);
        let free_inodes = le32(b, 0x10);
        let first_data_block = le32(b, 0x14);
        let blocks_per_group = le32(b, 0x20);
        let inodes_per_group = le32(b, 0x28);
        let (first_ino, inode_size) = if rev >= 1 {
            (le32(b, 0x54), le16(b, 0x58))
        } else {
            (11, 128)
        };
        let desc_size = if is64 { le16(b, 0xFE) } else { 32 };
        let bad = |what: &str, off: u64, detail: String| {
            Err(ExtfsError::invalid(
                format!("superblock {what}"),
                at(off),
                detail,
            ))
        };
        if blocks_per_group == 0 || blocks_per_group > block_size * 8 || blocks_per_group % 8 != 0 {
            return bad(
                "s_blocks_per_group",
                0x20,
                format!(
                    "expected a multiple of 8 in 8..={}, found {blocks_per_group}",
                    block_size * 8
                ),
            );
        }
        if inodes_per_group == 0 || inodes_per_group > block_size * 8 || inodes_per_group % 8 != 0 {
            return bad(
                "s_inodes_per_group",
                0x28,
                format!(
                    "expected a multiple of 8 in 8..={}, found {inodes_per_group}",
                    block_size * 8
                ),
            );
        }
        if inode_size < 128 || !inode_size.is_power_of_two() || u32::from(inode_size) > block_size {
            return bad(
                "s_inode_size",
                0x58,
                format!("expected a power of two in 128..={block_size}, found {inode_size}"),
            );
        }
        if is64 && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return bad(
                "s_desc_size",
                0xFE,
                format!("expected 64..=1024 (a power of two) with 64bit, found {desc_size}"),
            );
        }
        let expect_fdb = u32::from(block_size == 1024);
        if first_data_block != expect_fdb {
            return bad(
                "s_first_data_block",
                0x14,
                format!(
                    "expected {expect_fdb} for {block_size}-byte blocks, found {first_data_block}"
                ),
            );
        }
        if blocks_count <= u64::from(first_data_block) || free_blocks > blocks_count {
            return bad(
                "s_blocks_count",
                0x4,
                format!("{blocks_count} blocks with {free_blocks} free is impossible"),
            );
        }
        let groups =
            (blocks_count - u64::from(first_data_block)).div_ceil(u64::from(blocks_per_group));
        let group_count = u32::try_from(groups)
            .ok()
            .filter(|&g| u64::from(g) * u64::from(inodes_per_group) == u64::from(inodes_count));
        let Some(group_count) = group_count else {
            return bad(
                "s_inodes_count",
                0x0,
                format!(
                    "expected {groups} groups x {inodes_per_group} inodes, found {inodes_count}"
                ),
            );
        };
        if free_inodes > inodes_count || first_ino < 11 || first_ino >= inodes_count {
            return bad(
                "s_free_inodes_count / s_first_ino",
                0x10,
                format!("{free_inodes} free of {inodes_count}, first inode {first_ino}"),
            );
        }
        let mut hash_seed = [0u32; 4];
        for (i, s) in hash_seed.iter_mut().enumerate() {
            *s = le32(b, 0xEC + 4 * i);
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            Some(le32(b, 0x270))
        } else {
            None
        };
        let flags = le32(b, 0x160);
        Ok(Superblock {
            raw: b[..SB_SIZE].to_vec(),
            inodes_count,
            blocks_count,
            free_blocks,
            free_inodes,
            first_data_block,
            block_size,
            blocks_per_group,
            inodes_per_group,
            first_ino,
            inode_size,
            compat,
            incompat,
            ro_compat,
            desc_size,
            hash_seed,
            unsigned_hash: flags & 0x2 != 0,
            want_extra_isize: if rev >= 1 { le16(b, 0x15E) } else { 0 },
            csum_seed: fs_seed(&uuid, seed),
            group_count,
        })
    }

    /// Whether metadata_csum is on.
    pub fn metadata_csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }

    /// Whether group descriptors carry a checksum (metadata_csum or gdt_csum).
    pub fn group_csum(&self) -> bool {
        self.ro_compat & (RO_COMPAT_METADATA_CSUM | RO_COMPAT_GDT_CSUM) != 0
    }

    /// Whether the 64bit feature is on.
    pub fn is64(&self) -> bool {
        self.incompat & INCOMPAT_64BIT != 0
    }

    /// The file system UUID.
    pub fn uuid(&self) -> [u8; 16] {
        let mut u = [0u8; 16];
        u.copy_from_slice(&self.raw[0x68..0x78]);
        u
    }

    /// The superblock bytes with the current free counts and a fresh checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        b[0xC..0x10].copy_from_slice(&(self.free_blocks as u32).to_le_bytes());
        if self.is64() {
            b[0x158..0x15C].copy_from_slice(&((self.free_blocks >> 32) as u32).to_le_bytes());
        }
        b[0x10..0x14].copy_from_slice(&self.free_inodes.to_le_bytes());
        if self.metadata_csum() {
            let c = ext4_crc32c(!0, &b[..0x3FC]);
            b[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
        }
        b
    }

    /// Whether group `g` holds a superblock backup (and descriptor copies): all groups
    /// without sparse_super, else 0, 1 and powers of 3, 5 and 7.
    pub fn has_super(&self, g: u32) -> bool {
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g <= 1 {
            return true;
        }
        [3u32, 5, 7].iter().any(|&p| {
            let mut n = p;
            while n < g {
                match n.checked_mul(p) {
                    Some(m) => n = m,
                    None => return false,
                }
            }
            n == g
        })
    }
}

fn names(bits: u32, table: &[(u32, &str)]) -> String {
    let mut out: Vec<String> = Vec::new();
    for i in 0..32 {
        let bit = 1u32 << i;
        if bits & bit != 0 {
            match table.iter().find(|(b, _)| *b == bit) {
                Some((_, n)) => out.push((*n).to_string()),
                None => out.push(format!("unknown {bit:#x}")),
            }
        }
    }
    out.join(", ")
}

/// A minimal valid superblock for unit tests: 4 KiB blocks, one group of 32768 blocks, 8192
/// inodes.
#[cfg(test)]
pub(crate) fn tests_sample() -> Vec<u8> {
    tests::sample()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; SB_SIZE];
        b[0x0..0x4].copy_from_slice(&8192u32.to_le_bytes()); // s_inodes_count
        b[0x4..0x8].copy_from_slice(&32768u32.to_le_bytes()); // s_blocks_count_lo
        b[0xC..0x10].copy_from_slice(&30000u32.to_le_bytes()); // s_free_blocks_count_lo
        b[0x10..0x14].copy_from_slice(&8000u32.to_le_bytes()); // s_free_inodes_count
        b[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes()); // s_log_block_size: 4096
        b[0x20..0x24].copy_from_slice(&32768u32.to_le_bytes()); // s_blocks_per_group
        b[0x28..0x2C].copy_from_slice(&8192u32.to_le_bytes()); // s_inodes_per_group
        b[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes()); // s_magic
        b[0x3A..0x3C].copy_from_slice(&1u16.to_le_bytes()); // s_state: clean
        b[0x4C..0x50].copy_from_slice(&1u32.to_le_bytes()); // s_rev_level: dynamic
        b[0x54..0x58].copy_from_slice(&11u32.to_le_bytes()); // s_first_ino
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes()); // s_inode_size
        b[0x60..0x64].copy_from_slice(&(INCOMPAT_FILETYPE | INCOMPAT_EXTENTS).to_le_bytes());
        b
    }

    #[test]
    fn parses_sample() {
        let sb = Superblock::parse(&sample()).unwrap();
        assert_eq!(sb.block_size, 4096);
        assert_eq!(sb.group_count, 1);
        assert!(!sb.metadata_csum());
    }

    #[test]
    fn refuses_recovery_and_features() {
        let mut b = sample();
        b[0x60] |= INCOMPAT_RECOVER as u8;
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("journal needs recovery"), "{e}");
        let mut b = sample();
        b[0x62] |= 0x01; // 0x10000 encrypt
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("encrypt"), "{e}");
        let mut b = sample();
        b[0x65] |= 0x02; // 0x200 bigalloc
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("bigalloc"), "{e}");
        let mut b = sample();
        b[0xE8] = 12; // s_last_orphan
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("orphan"), "{e}");
        let mut b = sample();
        b[0x3A] = 3; // errors
        assert!(Superblock::parse(&b).is_err());
    }

    #[test]
    fn refuses_bad_fields() {
        let mut b = sample();
        b[0x38] = 0;
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("magic") && e.contains("0x438"), "{e}");
        let mut b = sample();
        b[0x28..0x2C].copy_from_slice(&0u32.to_le_bytes());
        assert!(Superblock::parse(&b).is_err());
        let mut b = sample();
        b[0x18] = 30;
        assert!(Superblock::parse(&b).is_err());
        assert!(Superblock::parse(&b[..100]).is_err());
    }

    #[test]
    fn sparse_groups() {
        let mut b = sample();
        b[0x64] = RO_COMPAT_SPARSE_SUPER as u8;
        let sb = Superblock::parse(&b).unwrap();
        let with: Vec<u32> = (0..50).filter(|&g| sb.has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
