//! Where a fork's data lies: the extent records (`xfs_bmbt_rec`, 16 bytes, packed big-endian
//! bit fields) of an extent-format inode, or the extent B+tree (bmbt) of a btree-format inode
//! (XFS Algorithms & Data Structures, "Data Extents" and "B+tree Extent List").

use super::{be16, be32, be64, check_crc, corrupt};
use crate::error::Result;

/// bmbt block magic on v4, "BMAP".
const BMAP_MAGIC: u32 = 0x424d_4150;
/// bmbt block magic on v5, "BMA3".
const BMAP_CRC_MAGIC: u32 = 0x424d_4133;
/// Header bytes of a long-pointer btree block on v4 and on v5.
const HDR_V4: usize = 24;
const HDR_V5: usize = 72;
/// Where the v5 long btree block's CRC32C lies.
const LBLOCK_CRC_OFF: usize = 64;
/// The deepest extent B+tree read (the kernel's bound for a data fork with 2^48 extents is
/// under 10 levels).
pub const MAX_LEVELS: u16 = 9;
/// The most extents read for one fork (32 bytes each in memory: 64 MiB).
pub const MAX_EXTENTS: u64 = 1 << 21;

/// One extent of a fork: `blockcount` blocks of the file from block `startoff` lie at file
/// system block `startblock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First block in the file.
    pub startoff: u64,
    /// First file system block (AG number in the high bits).
    pub startblock: u64,
    /// Number of blocks.
    pub blockcount: u64,
    /// Allocated but never written: reads as zeros.
    pub unwritten: bool,
}

/// Decodes one 16-byte extent record.
pub fn decode(r: &[u8]) -> Extent {
    let l0 = be64(r, 0);
    let l1 = be64(r, 8);
    Extent {
        unwritten: l0 >> 63 != 0,
        startoff: (l0 & ((1u64 << 63) - 1)) >> 9,
        startblock: ((l0 & 0x1ff) << 43) | (l1 >> 21),
        blockcount: l1 & ((1u64 << 21) - 1),
    }
}

/// Decodes `n` extent records from `b` (which lies at `offset`, for messages), appending them
/// to `out` and checking that each is non-empty and follows the previous one.
pub fn decode_list(b: &[u8], n: u64, offset: u64, what: &str, out: &mut Vec<Extent>) -> Result<()> {
    let bytes = n
        .checked_mul(16)
        .filter(|&l| l <= b.len() as u64)
        .ok_or_else(|| {
            corrupt(
                what,
                offset,
                format!("{n} extent records do not fit its {} bytes", b.len()),
            )
        })?;
    for (i, r) in b[..bytes as usize].chunks_exact(16).enumerate() {
        let e = decode(r);
        let at = offset + i as u64 * 16;
        if e.blockcount == 0 {
            return Err(corrupt(
                what,
                at,
                format!("extent record {i} has no blocks"),
            ));
        }
        if let Some(prev) = out.last() {
            if prev.startoff + prev.blockcount > e.startoff {
                return Err(corrupt(
                    what,
                    at,
                    format!(
                        "extent record {i} starts at file block {}, before the end of the \
                         previous one ({})",
                        e.startoff,
                        prev.startoff + prev.blockcount
                    ),
                ));
            }
        }
        if out.len() as u64 >= MAX_EXTENTS {
            return Err(corrupt(
                what,
                at,
                format!("more than {MAX_EXTENTS} extents, the most this reader reads"),
            ));
        }
        out.push(e);
    }
    Ok(())
}

/// The root of an extent B+tree in an inode's data fork (`xfs_bmdr_block`): its level and
/// the child block pointers.
pub fn parse_root(fork: &[u8], offset: u64, what: &str) -> Result<(u16, Vec<u64>)> {
    if fork.len() < 4 + 16 {
        return Err(corrupt(
            what,
            offset,
            format!("a B+tree root in a fork of {} bytes", fork.len()),
        ));
    }
    let level = be16(fork, 0);
    let numrecs = usize::from(be16(fork, 2));
    let maxrecs = (fork.len() - 4) / 16;
    if level == 0 || level > MAX_LEVELS {
        return Err(corrupt(
            what,
            offset,
            format!("extent B+tree root level {level}, expected 1 to {MAX_LEVELS}"),
        ));
    }
    if numrecs == 0 || numrecs > maxrecs {
        return Err(corrupt(
            what,
            offset + 2,
            format!("extent B+tree root has {numrecs} records, expected 1 to {maxrecs}"),
        ));
    }
    let ptrs = 4 + maxrecs * 8;
    Ok((
        level,
        (0..numrecs).map(|i| be64(fork, ptrs + i * 8)).collect(),
    ))
}

/// A block of the extent B+tree below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BmbtBlock {
    /// An interior block: its child pointers.
    Node(Vec<u64>),
    /// A leaf: the extent records' bytes and their count.
    Leaf(Vec<u8>, u64),
}

/// Parses the bmbt block `b`, read at `offset` (daddr `offset / 512`), which must be at
/// `level` and, on v5, belong to inode `owner`.
pub fn parse_block(b: &[u8], offset: u64, v5: bool, level: u16, owner: u64) -> Result<BmbtBlock> {
    let what = format!("extent B+tree block of inode {owner}");
    let hdr = if v5 { HDR_V5 } else { HDR_V4 };
    if b.len() < hdr + 16 {
        return Err(corrupt(&what, offset, format!("only {} bytes", b.len())));
    }
    let magic = be32(b, 0);
    let want = if v5 { BMAP_CRC_MAGIC } else { BMAP_MAGIC };
    if magic != want {
        return Err(corrupt(
            &what,
            offset,
            format!("magic is {magic:#010x}, expected {want:#010x}"),
        ));
    }
    if v5 {
        check_crc(b, LBLOCK_CRC_OFF, &what, offset)?;
        let blkno = be64(b, 24);
        if blkno != offset / 512 {
            return Err(corrupt(
                &what,
                offset + 24,
                format!(
                    "says it lies at sector {blkno}, expected {} (a misplaced block)",
                    offset / 512
                ),
            ));
        }
        let own = be64(b, 56);
        if own != owner {
            return Err(corrupt(
                &what,
                offset + 56,
                format!("belongs to inode {own}, expected {owner}"),
            ));
        }
    }
    let got_level = be16(b, 4);
    if got_level != level {
        return Err(corrupt(
            &what,
            offset + 4,
            format!("level {got_level}, expected {level}"),
        ));
    }
    let numrecs = usize::from(be16(b, 6));
    let maxrecs = (b.len() - hdr) / 16;
    if numrecs == 0 || numrecs > maxrecs {
        return Err(corrupt(
            &what,
            offset + 6,
            format!("{numrecs} records, expected 1 to {maxrecs}"),
        ));
    }
    if level == 0 {
        Ok(BmbtBlock::Leaf(
            b[hdr..hdr + numrecs * 16].to_vec(),
            numrecs as u64,
        ))
    } else {
        let ptrs = hdr + maxrecs * 8;
        Ok(BmbtBlock::Node(
            (0..numrecs).map(|i| be64(b, ptrs + i * 8)).collect(),
        ))
    }
}

/// Walks the extent B+tree whose root is in `fork` (at `fork_offset`), reading blocks with
/// `read_block(fsb) -> (bytes, byte offset)`, and returns its extents in file order. At most
/// `max_blocks` tree blocks are read (the inode's block count bounds a sound tree) and at
/// most `nextents` extents are accepted.
pub fn walk_btree(
    fork: &[u8],
    fork_offset: u64,
    owner: u64,
    v5: bool,
    nextents: u64,
    max_blocks: u64,
    read_block: &mut dyn FnMut(u64) -> Result<(Vec<u8>, u64)>,
) -> Result<Vec<Extent>> {
    let what = format!("inode {owner}");
    let (root_level, ptrs) = parse_root(fork, fork_offset, &what)?;
    let mut out = Vec::new();
    let mut visited = 0u64;
    // Depth-first, left to right: a stack of (level, pointers still to visit), reversed.
    let mut stack: Vec<(u16, Vec<u64>)> = vec![(root_level - 1, ptrs.into_iter().rev().collect())];
    while let Some((level, mut todo)) = stack.pop() {
        let Some(fsb) = todo.pop() else { continue };
        stack.push((level, todo));
        visited += 1;
        if visited > max_blocks {
            return Err(corrupt(
                &what,
                fork_offset,
                format!(
                    "its extent B+tree has more than {max_blocks} blocks, more than the inode \
                     owns"
                ),
            ));
        }
        let (b, offset) = read_block(fsb)?;
        match parse_block(&b, offset, v5, level, owner)? {
            BmbtBlock::Node(children) => {
                // level >= 1 here: parse_block only returns nodes above level 0.
                stack.push((level - 1, children.into_iter().rev().collect()));
            }
            BmbtBlock::Leaf(recs, n) => {
                let what = format!("extent B+tree leaf of inode {owner}");
                decode_list(&recs, n, offset, &what, &mut out)?;
                if out.len() as u64 > nextents {
                    return Err(corrupt(
                        &what,
                        offset,
                        format!("more extents than the {nextents} the inode counts"),
                    ));
                }
            }
        }
    }
    if out.len() as u64 != nextents {
        return Err(corrupt(
            &what,
            fork_offset,
            format!(
                "its extent B+tree holds {} extents, the inode counts {nextents}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(startoff: u64, startblock: u64, count: u64, unwritten: bool) -> [u8; 16] {
        let l0 = (u64::from(unwritten) << 63) | (startoff << 9) | (startblock >> 43);
        let l1 = ((startblock & ((1 << 43) - 1)) << 21) | count;
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&l0.to_be_bytes());
        r[8..].copy_from_slice(&l1.to_be_bytes());
        r
    }

    #[test]
    fn decodes_records() {
        let e = decode(&rec(12345, (1 << 50) | 77, 2000, true));
        assert_eq!(
            e,
            Extent {
                startoff: 12345,
                startblock: (1 << 50) | 77,
                blockcount: 2000,
                unwritten: true
            }
        );
    }

    #[test]
    fn list_checks_order_and_size() {
        let mut b = Vec::new();
        b.extend_from_slice(&rec(0, 100, 4, false));
        b.extend_from_slice(&rec(2, 200, 4, false));
        let mut out = Vec::new();
        assert!(decode_list(&b, 2, 0, "inode 5", &mut out).is_err());
        let mut out = Vec::new();
        assert!(decode_list(&b, 3, 0, "inode 5", &mut out).is_err());
        let mut out = Vec::new();
        decode_list(&b[..16], 1, 0, "inode 5", &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn walks_a_two_level_tree() {
        // Root in a 60-byte fork: level 1, one pointer to block 7.
        let mut fork = vec![0u8; 60];
        fork[0..2].copy_from_slice(&1u16.to_be_bytes()); // bb_level
        fork[2..4].copy_from_slice(&1u16.to_be_bytes()); // bb_numrecs
        let maxrecs = (60 - 4) / 16;
        fork[4 + maxrecs * 8..4 + maxrecs * 8 + 8].copy_from_slice(&7u64.to_be_bytes());
        // Leaf block 7 (v4, 512 bytes): two records.
        let mut leaf = vec![0u8; 512];
        leaf[0..4].copy_from_slice(b"BMAP"); // bb_magic
        leaf[6..8].copy_from_slice(&2u16.to_be_bytes()); // bb_numrecs
        leaf[24..40].copy_from_slice(&rec(0, 50, 1, false));
        leaf[40..56].copy_from_slice(&rec(9, 60, 3, false));
        let mut read = |fsb: u64| {
            assert_eq!(fsb, 7);
            Ok((leaf.clone(), 7 * 512))
        };
        let ext = walk_btree(&fork, 0, 99, false, 2, 10, &mut read).unwrap();
        assert_eq!(ext.len(), 2);
        assert_eq!(ext[1].startoff, 9);
        // The inode counting another number of extents is an error.
        assert!(walk_btree(&fork, 0, 99, false, 3, 10, &mut read).is_err());
        // A leaf where a node is expected.
        fork[0..2].copy_from_slice(&2u16.to_be_bytes());
        let e = walk_btree(&fork, 0, 99, false, 2, 10, &mut read)
            .unwrap_err()
            .to_string();
        assert!(e.contains("level 0, expected 1"), "{e}");
    }
}
