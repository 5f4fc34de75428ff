//! Block group descriptors (32 bytes, or `s_desc_size` with 64bit) and their checksums, and the
//! bitmaps of a group whose bitmap was never written (`BLOCK_UNINIT` / `INODE_UNINIT`).

use super::ExtfsError;
use super::csum::{crc16, ext4_crc32c};
use super::superblock::Superblock;

/// `bg_flags`: the inode table and bitmap are not initialised.
pub(crate) const BG_INODE_UNINIT: u16 = 0x1;
/// `bg_flags`: the block bitmap is not initialised.
pub(crate) const BG_BLOCK_UNINIT: u16 = 0x2;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// One group descriptor: its raw bytes and the fields the writer changes.
#[derive(Debug, Clone)]
pub(crate) struct GroupDesc {
    pub raw: Vec<u8>,
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    pub flags: u16,
    pub itable_unused: u32,
}

impl GroupDesc {
    /// Parses descriptor `group` from `b` (its `desc_size` bytes, read at byte `offset`),
    /// checking its checksum and that its tables lie inside the file system.
    pub fn parse(
        sb: &Superblock,
        group: u32,
        b: &[u8],
        offset: u64,
    ) -> Result<GroupDesc, ExtfsError> {
        let ds = usize::from(sb.desc_size);
        if b.len() < ds {
            return Err(ExtfsError::invalid(
                format!("group descriptor {group}"),
                offset,
                format!("expected {ds} bytes, found {}", b.len()),
            ));
        }
        let wide = sb.is64() && ds >= 64;
        let hi32 = |o: usize| if wide { u64::from(le32(b, o)) << 32 } else { 0 };
        let hi16 = |o: usize| if wide { u32::from(le16(b, o)) << 16 } else { 0 };
        let gd = GroupDesc {
            raw: b[..ds].to_vec(),
            block_bitmap: u64::from(le32(b, 0)) | hi32(0x20),
            inode_bitmap: u64::from(le32(b, 4)) | hi32(0x24),
            inode_table: u64::from(le32(b, 8)) | hi32(0x28),
            free_blocks: u32::from(le16(b, 0xC)) | hi16(0x2C),
            free_inodes: u32::from(le16(b, 0xE)) | hi16(0x2E),
            used_dirs: u32::from(le16(b, 0x10)) | hi16(0x30),
            flags: le16(b, 0x12),
            itable_unused: u32::from(le16(b, 0x1C)) | hi16(0x32),
        };
        if sb.group_csum() {
            let want = desc_csum(sb, group, &gd.raw);
            let found = le16(b, 0x1E);
            if want != found {
                return Err(ExtfsError::invalid(
                    format!("group descriptor {group} checksum"),
                    offset + 0x1E,
                    format!("expected {want:#06x}, found {found:#06x}"),
                ));
            }
        }
        let itable_blocks =
            u64::from(sb.inodes_per_group) * u64::from(sb.inode_size) / u64::from(sb.block_size);
        for (what, start, len) in [
            ("block bitmap", gd.block_bitmap, 1),
            ("inode bitmap", gd.inode_bitmap, 1),
            ("inode table", gd.inode_table, itable_blocks),
        ] {
            let ok = start >= u64::from(sb.first_data_block)
                && start
                    .checked_add(len)
                    .is_some_and(|end| end <= sb.blocks_count);
            if !ok {
                return Err(ExtfsError::corrupt(
                    format!("group descriptor {group} {what}"),
                    offset,
                    format!(
                        "expected blocks inside the file system (< {}), found {start} (+{len})",
                        sb.blocks_count
                    ),
                ));
            }
        }
        if gd.free_blocks > sb.blocks_per_group || gd.free_inodes > sb.inodes_per_group {
            return Err(ExtfsError::corrupt(
                format!("group descriptor {group} free counts"),
                offset + 0xC,
                format!(
                    "expected at most {} blocks and {} inodes, found {} and {}",
                    sb.blocks_per_group, sb.inodes_per_group, gd.free_blocks, gd.free_inodes
                ),
            ));
        }
        if gd.itable_unused > sb.inodes_per_group {
            return Err(ExtfsError::corrupt(
                format!("group descriptor {group} bg_itable_unused"),
                offset + 0x1C,
                format!(
                    "expected at most {}, found {}",
                    sb.inodes_per_group, gd.itable_unused
                ),
            ));
        }
        Ok(gd)
    }

    /// The descriptor bytes with the current fields and a fresh checksum.
    pub fn to_bytes(&self, sb: &Superblock, group: u32) -> Vec<u8> {
        let mut b = self.raw.clone();
        let wide = sb.is64() && b.len() >= 64;
        b[0xC..0xE].copy_from_slice(&(self.free_blocks as u16).to_le_bytes());
        b[0xE..0x10].copy_from_slice(&(self.free_inodes as u16).to_le_bytes());
        b[0x10..0x12].copy_from_slice(&(self.used_dirs as u16).to_le_bytes());
        b[0x12..0x14].copy_from_slice(&self.flags.to_le_bytes());
        b[0x1C..0x1E].copy_from_slice(&(self.itable_unused as u16).to_le_bytes());
        if wide {
            b[0x2C..0x2E].copy_from_slice(&((self.free_blocks >> 16) as u16).to_le_bytes());
            b[0x2E..0x30].copy_from_slice(&((self.free_inodes >> 16) as u16).to_le_bytes());
            b[0x30..0x32].copy_from_slice(&((self.used_dirs >> 16) as u16).to_le_bytes());
            b[0x32..0x34].copy_from_slice(&((self.itable_unused >> 16) as u16).to_le_bytes());
        }
        if sb.group_csum() {
            let c = desc_csum(sb, group, &b);
            b[0x1E..0x20].copy_from_slice(&c.to_le_bytes());
        }
        b
    }

    /// Stores the checksum of the block bitmap `bits` (metadata_csum only).
    pub fn set_block_bitmap_csum(&mut self, sb: &Superblock, bits: &[u8]) {
        if !sb.metadata_csum() {
            return;
        }
        let n = (sb.blocks_per_group / 8) as usize;
        let c = ext4_crc32c(sb.csum_seed, &bits[..n.min(bits.len())]);
        self.raw[0x18..0x1A].copy_from_slice(&(c as u16).to_le_bytes());
        if self.raw.len() >= 64 && sb.is64() {
            self.raw[0x38..0x3A].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        }
    }

    /// Stores the checksum of the inode bitmap `bits` (metadata_csum only).
    pub fn set_inode_bitmap_csum(&mut self, sb: &Superblock, bits: &[u8]) {
        if !sb.metadata_csum() {
            return;
        }
        let n = (sb.inodes_per_group / 8) as usize;
        let c = ext4_crc32c(sb.csum_seed, &bits[..n.min(bits.len())]);
        self.raw[0x1A..0x1C].copy_from_slice(&(c as u16).to_le_bytes());
        if self.raw.len() >= 64 && sb.is64() {
            self.raw[0x3A..0x3C].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        }
    }
}

/// The checksum of descriptor `group` (`b` is the whole descriptor; its checksum field is
/// skipped): crc32c (low 16 bits) with metadata_csum, else crc16 (gdt_csum).
pub(crate) fn desc_csum(sb: &Superblock, group: u32, b: &[u8]) -> u16 {
    if sb.metadata_csum() {
        let mut c = ext4_crc32c(sb.csum_seed, &group.to_le_bytes());
        c = ext4_crc32c(c, &b[..0x1E]);
        c = ext4_crc32c(c, &[0, 0]);
        if b.len() > 0x20 {
            c = ext4_crc32c(c, &b[0x20..]);
        }
        c as u16
    } else {
        let mut c = crc16(!0, &sb.uuid());
        c = crc16(c, &group.to_le_bytes());
        c = crc16(c, &b[..0x1E]);
        if sb.is64() && b.len() > 0x20 {
            c = crc16(c, &b[0x20..]);
        }
        c
    }
}

/// Number of blocks group `g` spans (the last one may be short).
pub(crate) fn blocks_in_group(sb: &Superblock, g: u32) -> u32 {
    let start = u64::from(sb.first_data_block) + u64::from(g) * u64::from(sb.blocks_per_group);
    (sb.blocks_count - start).min(u64::from(sb.blocks_per_group)) as u32
}

/// The first block of group `g`.
pub(crate) fn group_start(sb: &Superblock, g: u32) -> u64 {
    u64::from(sb.first_data_block) + u64::from(g) * u64::from(sb.blocks_per_group)
}

/// The block bitmap of a `BLOCK_UNINIT` group as e2fsprogs and the kernel compute it: the
/// superblock backup, the descriptor table and its reserved growth blocks when the group has a
/// backup, every group's bitmaps and inode table that lie in this group, and the bits past the
/// end of the file system. `gdt_blocks` counts descriptor plus reserved GDT blocks.
pub(crate) fn uninit_block_bitmap(
    sb: &Superblock,
    g: u32,
    gds: &[GroupDesc],
    gdt_blocks: u64,
) -> Vec<u8> {
    let bs = sb.block_size as usize;
    let mut bits = vec![0u8; bs];
    let start = group_start(sb, g);
    let n = u64::from(blocks_in_group(sb, g));
    let mut set = |blk: u64| {
        if blk >= start && blk < start + n {
            let i = (blk - start) as usize;
            bits[i / 8] |= 1 << (i % 8);
        }
    };
    if sb.has_super(g) {
        for b in 0..=gdt_blocks {
            set(start + b);
        }
    }
    let itable_blocks =
        u64::from(sb.inodes_per_group) * u64::from(sb.inode_size) / u64::from(sb.block_size);
    for gd in gds {
        set(gd.block_bitmap);
        set(gd.inode_bitmap);
        for b in 0..itable_blocks {
            set(gd.inode_table + b);
        }
    }
    for i in n as usize..bs * 8 {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_desc_roundtrip() {
        let mut b = crate::guest::extfs::superblock::tests_sample();
        b[0x64] = 0x10; // gdt_csum
        let sb = Superblock::parse(&b).unwrap();
        let mut raw = vec![0u8; 32];
        raw[0..4].copy_from_slice(&3u32.to_le_bytes()); // block bitmap
        raw[4..8].copy_from_slice(&4u32.to_le_bytes()); // inode bitmap
        raw[8..12].copy_from_slice(&5u32.to_le_bytes()); // inode table
        let c = desc_csum(&sb, 0, &raw);
        raw[0x1E..0x20].copy_from_slice(&c.to_le_bytes());
        let gd = GroupDesc::parse(&sb, 0, &raw, 4096).unwrap();
        assert_eq!(gd.to_bytes(&sb, 0), raw);
        raw[0] ^= 1;
        let e = GroupDesc::parse(&sb, 0, &raw, 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum") && e.contains("0x101e"), "{e}");
    }

    #[test]
    fn refuses_tables_outside() {
        let sb = Superblock::parse(&crate::guest::extfs::superblock::tests_sample()).unwrap();
        let mut raw = vec![0u8; 32];
        raw[0..4].copy_from_slice(&3u32.to_le_bytes());
        raw[4..8].copy_from_slice(&4u32.to_le_bytes());
        raw[8..12].copy_from_slice(&40000u32.to_le_bytes());
        let e = GroupDesc::parse(&sb, 0, &raw, 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inode table"), "{e}");
    }
}
