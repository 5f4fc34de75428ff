//! On-disk inodes (`s_inode_size` bytes in the inode table): the fields the writer reads and
//! changes, and the inode checksum (metadata_csum: crc32c over the whole inode, its low 16
//! bits in `l_i_checksum_lo`, the high ones in `i_checksum_hi` when the extra part holds it).

use super::csum::{ext4_crc32c, inode_seed};

/// `i_flags`: the inode uses extents.
pub(crate) const FL_EXTENTS: u32 = 0x80000;
/// `i_flags`: hashed-indexed directory.
pub(crate) const FL_INDEX: u32 = 0x1000;
/// `i_flags`: `i_blocks` counts file-system blocks.
pub(crate) const FL_HUGE_FILE: u32 = 0x40000;
/// `i_flags`: data inline in the inode.
pub(crate) const FL_INLINE_DATA: u32 = 0x1000_0000;
/// `i_flags`: encrypted.
pub(crate) const FL_ENCRYPT: u32 = 0x800;
/// `i_flags`: verity.
pub(crate) const FL_VERITY: u32 = 0x10_0000;

/// File-type bits of `i_mode`.
pub(crate) const S_IFMT: u16 = 0o170000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFLNK: u16 = 0o120000;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// One inode's bytes.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    pub raw: Vec<u8>,
}

impl Inode {
    pub fn mode(&self) -> u16 {
        le16(&self.raw, 0)
    }
    pub fn kind(&self) -> u16 {
        self.mode() & S_IFMT
    }
    pub fn size(&self) -> u64 {
        u64::from(le32(&self.raw, 4)) | (u64::from(le32(&self.raw, 0x6C)) << 32)
    }
    pub fn set_size(&mut self, s: u64) {
        self.raw[4..8].copy_from_slice(&(s as u32).to_le_bytes());
        self.raw[0x6C..0x70].copy_from_slice(&((s >> 32) as u32).to_le_bytes());
    }
    pub fn links(&self) -> u16 {
        le16(&self.raw, 0x1A)
    }
    pub fn set_links(&mut self, n: u16) {
        self.raw[0x1A..0x1C].copy_from_slice(&n.to_le_bytes());
    }
    pub fn flags(&self) -> u32 {
        le32(&self.raw, 0x20)
    }
    pub fn set_flags(&mut self, f: u32) {
        self.raw[0x20..0x24].copy_from_slice(&f.to_le_bytes());
    }
    pub fn generation(&self) -> u32 {
        le32(&self.raw, 0x64)
    }
    /// `i_file_acl` (extended attribute block), 48 bits.
    pub fn file_acl(&self) -> u64 {
        u64::from(le32(&self.raw, 0x68)) | (u64::from(le16(&self.raw, 0x76)) << 32)
    }
    /// `i_blocks` in 512-byte units (the writer refuses huge_file inodes counting blocks).
    pub fn set_blocks_512(&mut self, n: u64) {
        self.raw[0x1C..0x20].copy_from_slice(&(n as u32).to_le_bytes());
        self.raw[0x74..0x76].copy_from_slice(&((n >> 32) as u16).to_le_bytes());
    }
    /// The 60 bytes of `i_block` (extent root, block map or fast symlink target).
    pub fn i_block(&self) -> &[u8] {
        &self.raw[0x28..0x64]
    }
    pub fn i_block_mut(&mut self) -> &mut [u8] {
        &mut self.raw[0x28..0x64]
    }
    pub fn set_dtime(&mut self, t: u32) {
        self.raw[0x14..0x18].copy_from_slice(&t.to_le_bytes());
    }
    /// `i_extra_isize` (0 for 128-byte inodes).
    pub fn extra_isize(&self) -> u16 {
        if self.raw.len() > 128 {
            le16(&self.raw, 0x80)
        } else {
            0
        }
    }
    /// Sets mtime and ctime (and their `_extra` nanoseconds when the inode holds them).
    pub fn touch_mc(&mut self, secs: u32, extra: u32) {
        self.raw[0xC..0x10].copy_from_slice(&secs.to_le_bytes());
        self.raw[0x10..0x14].copy_from_slice(&secs.to_le_bytes());
        let ex = usize::from(self.extra_isize());
        if ex >= 0x8C - 0x80 {
            self.raw[0x84..0x88].copy_from_slice(&extra.to_le_bytes());
            self.raw[0x88..0x8C].copy_from_slice(&extra.to_le_bytes());
        }
    }
    /// Sets ctime only.
    pub fn touch_c(&mut self, secs: u32, extra: u32) {
        self.raw[0xC..0x10].copy_from_slice(&secs.to_le_bytes());
        if usize::from(self.extra_isize()) >= 0x88 - 0x80 {
            self.raw[0x84..0x88].copy_from_slice(&extra.to_le_bytes());
        }
    }

    /// A fresh inode of `size` bytes: mode, owner, all times now, one link, generation `gen`,
    /// `i_extra_isize` = `extra` for large inodes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inode_size: usize,
        mode: u16,
        uid: u32,
        gid: u32,
        secs: u32,
        nsec_extra: u32,
        generation: u32,
        extra: u16,
    ) -> Inode {
        let mut raw = vec![0u8; inode_size];
        raw[0..2].copy_from_slice(&mode.to_le_bytes());
        raw[2..4].copy_from_slice(&(uid as u16).to_le_bytes());
        raw[0x78..0x7A].copy_from_slice(&((uid >> 16) as u16).to_le_bytes());
        raw[0x18..0x1A].copy_from_slice(&(gid as u16).to_le_bytes());
        raw[0x7A..0x7C].copy_from_slice(&((gid >> 16) as u16).to_le_bytes());
        for o in [0x8, 0xC, 0x10] {
            raw[o..o + 4].copy_from_slice(&secs.to_le_bytes());
        }
        raw[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
        raw[0x64..0x68].copy_from_slice(&generation.to_le_bytes());
        if inode_size > 128 {
            let extra = extra.min(inode_size as u16 - 128);
            raw[0x80..0x82].copy_from_slice(&extra.to_le_bytes());
            let ex = usize::from(extra);
            for (end, o) in [(0x88, 0x84), (0x8C, 0x88), (0x90, 0x8C), (0x98, 0x94)] {
                if 0x80 + ex >= end {
                    raw[o..o + 4].copy_from_slice(&nsec_extra.to_le_bytes());
                }
            }
            if 0x80 + ex >= 0x94 {
                raw[0x90..0x94].copy_from_slice(&secs.to_le_bytes()); // i_crtime
            }
        }
        let mut i = Inode { raw };
        i.set_size(0);
        i
    }

    /// Computes and stores the inode checksum of inode `ino` (metadata_csum).
    pub fn set_csum(&mut self, fs_seed: u32, ino: u32) {
        let c = self.csum(fs_seed, ino);
        self.raw[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
        if self.has_csum_hi() {
            self.raw[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        }
    }

    /// Whether the stored checksum is right.
    pub fn csum_ok(&self, fs_seed: u32, ino: u32) -> bool {
        let c = self.csum(fs_seed, ino);
        let lo = le16(&self.raw, 0x7C);
        if lo != c as u16 {
            return false;
        }
        !self.has_csum_hi() || le16(&self.raw, 0x82) == (c >> 16) as u16
    }

    fn has_csum_hi(&self) -> bool {
        self.raw.len() > 128 && self.extra_isize() >= 4
    }

    fn csum(&self, fs_seed: u32, ino: u32) -> u32 {
        let seed = inode_seed(fs_seed, ino, self.generation());
        let mut b = self.raw.clone();
        b[0x7C..0x7E].fill(0);
        if self.has_csum_hi() {
            b[0x82..0x84].fill(0);
        }
        ext4_crc32c(seed, &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_inode_fields_and_csum() {
        let mut i = Inode::new(256, S_IFREG | 0o644, 70000, 5, 1000, 0, 77, 32);
        assert_eq!(i.kind(), S_IFREG);
        assert_eq!(i.links(), 1);
        assert_eq!(i.extra_isize(), 32);
        i.set_size(5 << 32 | 3);
        assert_eq!(i.size(), 5 << 32 | 3);
        i.set_csum(1234, 12);
        assert!(i.csum_ok(1234, 12));
        assert!(!i.csum_ok(1234, 13));
        i.raw[0x30] ^= 1;
        assert!(!i.csum_ok(1234, 12));
        let small = Inode::new(128, S_IFREG, 0, 0, 1, 0, 1, 32);
        assert_eq!(small.extra_isize(), 0);
    }
}
