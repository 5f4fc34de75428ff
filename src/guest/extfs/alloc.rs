//! Allocation inside a write transaction: block and inode bitmaps (read on first use; those of
//! `BLOCK_UNINIT` / `INODE_UNINIT` groups computed as the kernel does), free runs preferring
//! one contiguous run in the goal group, and the free counts of the descriptors and the
//! superblock kept in step with every bit changed.

use super::group::{
    BG_BLOCK_UNINIT, BG_INODE_UNINIT, blocks_in_group, group_start, uninit_block_bitmap,
};
use super::{ExtfsError, Tx};
use crate::guest::disk::DiskRead;

fn bit(b: &[u8], i: usize) -> bool {
    b[i / 8] & (1 << (i % 8)) != 0
}
fn set_bit(b: &mut [u8], i: usize, v: bool) {
    if v {
        b[i / 8] |= 1 << (i % 8);
    } else {
        b[i / 8] &= !(1 << (i % 8));
    }
}

impl<D: DiskRead> Tx<'_, D> {
    /// Makes the block bitmap of group `g` available in the cache (computing it for a
    /// `BLOCK_UNINIT` group) and returns its block number.
    fn block_bitmap(&mut self, g: u32) -> Result<u64, ExtfsError> {
        let gd = &self.gds[g as usize];
        let blk = gd.block_bitmap;
        if self.cache.contains_key(&blk) {
            return Ok(blk);
        }
        if gd.flags & BG_BLOCK_UNINIT != 0 && self.sb.group_csum() {
            let bits = uninit_block_bitmap(&self.sb, g, &self.gds, self.gdt_blocks);
            let n = blocks_in_group(&self.sb, g) as usize;
            let free = (0..n).filter(|&i| !bit(&bits, i)).count() as u32;
            if free != gd.free_blocks {
                return Err(ExtfsError::corrupt(
                    format!("group descriptor {g}"),
                    self.gd_offset(g),
                    format!(
                        "BLOCK_UNINIT group: expected {free} free blocks from its layout, \
                         found {}",
                        gd.free_blocks
                    ),
                ));
            }
            self.cache.insert(blk, bits);
        } else {
            self.read_block(blk)?;
        }
        Ok(blk)
    }

    /// Makes the inode bitmap of group `g` available in the cache and returns its block.
    fn inode_bitmap(&mut self, g: u32) -> Result<u64, ExtfsError> {
        let gd = &self.gds[g as usize];
        let blk = gd.inode_bitmap;
        if self.cache.contains_key(&blk) {
            return Ok(blk);
        }
        if gd.flags & BG_INODE_UNINIT != 0 && self.sb.group_csum() {
            let bs = self.sb.block_size as usize;
            let mut bits = vec![0u8; bs];
            for i in self.sb.inodes_per_group as usize..bs * 8 {
                set_bit(&mut bits, i, true);
            }
            self.cache.insert(blk, bits);
        } else {
            self.read_block(blk)?;
        }
        Ok(blk)
    }

    /// Allocates `n` blocks, preferring one run in or after group `goal`, else first fit from
    /// there. Returns (first block, length) runs in allocation order.
    pub(crate) fn alloc_blocks(
        &mut self,
        n: u64,
        goal: u32,
    ) -> Result<Vec<(u64, u64)>, ExtfsError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > self.sb.free_blocks {
            return Err(ExtfsError::NoSpace {
                detail: format!(
                    "{n} blocks needed, {} free (of {})",
                    self.sb.free_blocks, self.sb.blocks_count
                ),
            });
        }
        let groups = self.sb.group_count;
        let order: Vec<u32> = (0..groups).map(|i| (goal + i) % groups).collect();
        // Pass 1: one free run of n blocks inside one group.
        if n <= u64::from(self.sb.blocks_per_group) {
            for &g in &order {
                if u64::from(self.gds[g as usize].free_blocks) < n {
                    continue;
                }
                if let Some(start) = self.find_run(g, n)? {
                    self.mark_blocks(start, n, true)?;
                    return Ok(vec![(start, n)]);
                }
            }
        }
        // Pass 2: first fit, group by group from the goal.
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut left = n;
        for &g in &order {
            if left == 0 {
                break;
            }
            if self.gds[g as usize].free_blocks == 0 {
                continue;
            }
            let bb = self.block_bitmap(g)?;
            let bits = &self.cache[&bb];
            let cnt = blocks_in_group(&self.sb, g) as usize;
            let base = group_start(&self.sb, g);
            let mut i = 0;
            let mut found = Vec::new();
            while i < cnt && left > 0 {
                if bit(bits, i) {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < cnt && !bit(bits, i) && ((i - s) as u64) < left {
                    i += 1;
                }
                found.push((base + s as u64, (i - s) as u64));
                left -= (i - s) as u64;
            }
            for (s, l) in found {
                self.mark_blocks(s, l, true)?;
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == s => last.1 += l,
                    _ => out.push((s, l)),
                }
            }
        }
        if left > 0 {
            return Err(ExtfsError::corrupt(
                "block bitmaps",
                0,
                format!(
                    "the superblock counts {} free blocks but the bitmaps hold {} fewer than \
                     the {n} needed",
                    self.sb.free_blocks, left
                ),
            ));
        }
        Ok(out)
    }

    /// The first free run of `n` blocks in group `g`.
    fn find_run(&mut self, g: u32, n: u64) -> Result<Option<u64>, ExtfsError> {
        let bb = self.block_bitmap(g)?;
        let bits = &self.cache[&bb];
        let cnt = blocks_in_group(&self.sb, g) as usize;
        let mut run = 0u64;
        for i in 0..cnt {
            if bit(bits, i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Ok(Some(group_start(&self.sb, g) + (i as u64 + 1 - n)));
                }
            }
        }
        Ok(None)
    }

    /// Sets (`used`) or clears the bits of blocks `start..start+len`, which must be free (or
    /// in use), and updates the free counts. Freed blocks leave the metadata cache.
    pub(crate) fn mark_blocks(
        &mut self,
        start: u64,
        len: u64,
        used: bool,
    ) -> Result<(), ExtfsError> {
        let mut b = start;
        let end = start + len;
        while b < end {
            if b < u64::from(self.sb.first_data_block) || b >= self.sb.blocks_count {
                return Err(ExtfsError::corrupt(
                    "block allocation",
                    0,
                    format!("block {b} lies outside the file system"),
                ));
            }
            let g = ((b - u64::from(self.sb.first_data_block))
                / u64::from(self.sb.blocks_per_group)) as u32;
            let gs = group_start(&self.sb, g);
            let gend = (gs + u64::from(blocks_in_group(&self.sb, g))).min(end);
            let bb = self.block_bitmap(g)?;
            let bits = self
                .cache
                .get_mut(&bb)
                .expect("block_bitmap put it in the cache");
            for x in b..gend {
                let i = (x - gs) as usize;
                if bit(bits, i) == used {
                    return Err(ExtfsError::corrupt(
                        format!("block bitmap of group {g}"),
                        bb * u64::from(self.sb.block_size),
                        format!(
                            "block {x} is already {}",
                            if used { "in use" } else { "free" }
                        ),
                    ));
                }
                set_bit(bits, i, used);
            }
            self.dirty.insert(bb);
            let k = gend - b;
            let gd = &mut self.gds[g as usize];
            if used {
                gd.free_blocks -= k as u32;
                self.sb.free_blocks -= k;
            } else {
                gd.free_blocks += k as u32;
                self.sb.free_blocks += k;
                for x in b..gend {
                    self.cache.remove(&x);
                    self.dirty.remove(&x);
                }
            }
            gd.flags &= !BG_BLOCK_UNINIT;
            self.dirty_groups.insert(g);
            self.bb_groups.insert(g);
            b = gend;
        }
        Ok(())
    }

    /// Allocates an inode, in group `goal` when it has one free, and returns its number.
    pub(crate) fn alloc_inode(&mut self, goal: u32, dir: bool) -> Result<u32, ExtfsError> {
        if self.sb.free_inodes == 0 {
            return Err(ExtfsError::NoSpace {
                detail: format!("no free inode (of {})", self.sb.inodes_count),
            });
        }
        let groups = self.sb.group_count;
        let ipg = self.sb.inodes_per_group;
        for k in 0..groups {
            let g = (goal + k) % groups;
            if self.gds[g as usize].free_inodes == 0 {
                continue;
            }
            let ib = self.inode_bitmap(g)?;
            let bits = &self.cache[&ib];
            let first = if g == 0 { self.sb.first_ino - 1 } else { 0 };
            let Some(i) = (first..ipg).find(|&i| !bit(bits, i as usize)) else {
                continue;
            };
            let bits = self
                .cache
                .get_mut(&ib)
                .expect("inode_bitmap put it in the cache");
            set_bit(bits, i as usize, true);
            self.dirty.insert(ib);
            // The kernel initialises a BLOCK_UNINIT group's block bitmap with its first inode.
            if self.gds[g as usize].flags & BG_BLOCK_UNINIT != 0 && self.sb.group_csum() {
                let bb = self.block_bitmap(g)?;
                self.dirty.insert(bb);
                self.bb_groups.insert(g);
                self.gds[g as usize].flags &= !BG_BLOCK_UNINIT;
            }
            let gd = &mut self.gds[g as usize];
            gd.free_inodes -= 1;
            gd.flags &= !BG_INODE_UNINIT;
            if dir {
                gd.used_dirs += 1;
            }
            if self.sb.group_csum() && i >= ipg - gd.itable_unused {
                gd.itable_unused = ipg - i - 1;
            }
            self.sb.free_inodes -= 1;
            self.dirty_groups.insert(g);
            self.ib_groups.insert(g);
            return Ok(g * ipg + i + 1);
        }
        Err(ExtfsError::corrupt(
            "inode bitmaps",
            0,
            format!(
                "the superblock counts {} free inodes but no group has one",
                self.sb.free_inodes
            ),
        ))
    }

    /// Frees inode `ino` in its bitmap and the counts.
    pub(crate) fn free_inode(&mut self, ino: u32, dir: bool) -> Result<(), ExtfsError> {
        let ipg = self.sb.inodes_per_group;
        let g = (ino - 1) / ipg;
        let i = ((ino - 1) % ipg) as usize;
        let ib = self.inode_bitmap(g)?;
        let bits = self
            .cache
            .get_mut(&ib)
            .expect("inode_bitmap put it in the cache");
        if !bit(bits, i) {
            return Err(ExtfsError::corrupt(
                format!("inode bitmap of group {g}"),
                ib * u64::from(self.sb.block_size),
                format!("inode {ino} is already free"),
            ));
        }
        set_bit(bits, i, false);
        self.dirty.insert(ib);
        let gd = &mut self.gds[g as usize];
        gd.free_inodes += 1;
        if dir {
            gd.used_dirs = gd.used_dirs.saturating_sub(1);
        }
        self.sb.free_inodes += 1;
        self.dirty_groups.insert(g);
        self.ib_groups.insert(g);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut b = vec![0u8; 2];
        set_bit(&mut b, 9, true);
        assert_eq!(b, [0, 2]);
        assert!(bit(&b, 9));
        set_bit(&mut b, 9, false);
        assert!(!bit(&b, 9));
    }
}
