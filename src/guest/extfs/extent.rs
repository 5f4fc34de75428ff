//! Where a file's data lies: extent trees (header 0xF30A, leaves of extents, index nodes, the
//! checksum tail of each tree block) and the older block maps of ext2/ext3 (12 direct
//! pointers, then single, double and triple indirect blocks). Reading collects the data runs
//! and the tree or indirect blocks (to free them); building lays out new ones.

use super::ExtfsError;
use super::csum::ext4_crc32c;

/// `eh_magic`.
const EXT_MAGIC: u16 = 0xF30A;
/// Longest initialised extent.
pub(crate) const MAX_EXTENT_LEN: u32 = 32768;
/// Deepest tree accepted when reading (the kernel's limit is 5).
const MAX_DEPTH: u16 = 5;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// A run of data blocks: `len` blocks from logical block `logical` at physical block `phys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub logical: u32,
    pub phys: u64,
    pub len: u32,
}

/// A file's mapping as read: its data runs (in logical order) and its metadata blocks (tree
/// or indirect blocks).
#[derive(Debug, Default, Clone)]
pub(crate) struct Mapping {
    pub runs: Vec<Run>,
    pub meta: Vec<u64>,
}

impl Mapping {
    /// The physical block of logical block `l`, if mapped.
    pub fn lookup(&self, l: u32) -> Option<u64> {
        self.runs.iter().find_map(|r| {
            (l >= r.logical && l - r.logical < r.len).then(|| r.phys + u64::from(l - r.logical))
        })
    }
    /// Number of data blocks.
    pub fn data_blocks(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.len)).sum()
    }
}

/// Reads block `n` of the volume (through the writer's cache).
pub(crate) type ReadBlock<'a> = dyn FnMut(u64) -> Result<Vec<u8>, ExtfsError> + 'a;

/// Reads the extent tree rooted in `i_block` of inode `ino`. Every block must be inside the
/// volume (`blocks_count`).
pub(crate) fn read_extents(
    i_block: &[u8],
    ino: u32,
    blocks_count: u64,
    read: &mut ReadBlock<'_>,
) -> Result<Mapping, ExtfsError> {
    let mut m = Mapping::default();
    let what = format!("inode {ino} extent root");
    walk(i_block, &what, 0, None, ino, blocks_count, read, &mut m)?;
    m.runs.sort_by_key(|r| r.logical);
    for w in m.runs.windows(2) {
        if u64::from(w[0].logical) + u64::from(w[0].len) > u64::from(w[1].logical) {
            return Err(ExtfsError::corrupt(
                format!("inode {ino} extents"),
                0,
                format!(
                    "extents overlap: logical {}+{} and {}",
                    w[0].logical, w[0].len, w[1].logical
                ),
            ));
        }
    }
    Ok(m)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    node: &[u8],
    what: &str,
    offset: u64,
    want_depth: Option<u16>,
    ino: u32,
    blocks_count: u64,
    read: &mut ReadBlock<'_>,
    m: &mut Mapping,
) -> Result<(), ExtfsError> {
    if node.len() < 12 {
        return Err(ExtfsError::invalid(
            what,
            offset,
            "shorter than the 12-byte header",
        ));
    }
    let magic = le16(node, 0);
    if magic != EXT_MAGIC {
        return Err(ExtfsError::invalid(
            what,
            offset,
            format!("expected extent magic {EXT_MAGIC:#06x}, found {magic:#06x}"),
        ));
    }
    let entries = usize::from(le16(node, 2));
    let max = usize::from(le16(node, 4));
    let depth = le16(node, 6);
    if max > (node.len() - 12) / 12 || entries > max {
        return Err(ExtfsError::invalid(
            what,
            offset + 2,
            format!(
                "expected at most {} entries, found {entries} of max {max}",
                (node.len() - 12) / 12
            ),
        ));
    }
    if depth > MAX_DEPTH || want_depth.is_some_and(|d| d != depth) {
        return Err(ExtfsError::corrupt(
            what,
            offset + 6,
            format!("expected depth {want_depth:?} (at most {MAX_DEPTH}), found {depth}"),
        ));
    }
    for i in 0..entries {
        let e = &node[12 + 12 * i..24 + 12 * i];
        let logical = le32(e, 0);
        if depth == 0 {
            let raw_len = u32::from(le16(e, 4));
            let len = if raw_len > MAX_EXTENT_LEN {
                raw_len - MAX_EXTENT_LEN
            } else {
                raw_len
            };
            let phys = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
            if len == 0 || phys == 0 || phys.saturating_add(u64::from(len)) > blocks_count {
                return Err(ExtfsError::corrupt(
                    what,
                    offset + 12 + 12 * i as u64,
                    format!(
                        "extent {i} (blocks {phys}+{len}) lies outside the volume of \
                         {blocks_count} blocks"
                    ),
                ));
            }
            m.runs.push(Run { logical, phys, len });
        } else {
            let child = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
            if child == 0 || child >= blocks_count {
                return Err(ExtfsError::corrupt(
                    what,
                    offset + 12 + 12 * i as u64,
                    format!("index {i} points to block {child}, outside the volume"),
                ));
            }
            if m.meta.len() > 1 << 20 {
                return Err(ExtfsError::corrupt(
                    what,
                    offset,
                    "too many extent tree blocks",
                ));
            }
            m.meta.push(child);
            let b = read(child)?;
            let cwhat = format!("inode {ino} extent tree block {child}");
            walk(&b, &cwhat, 0, Some(depth - 1), ino, blocks_count, read, m)?;
        }
    }
    Ok(())
}

/// Extent entries one tree block holds.
fn per_block(bs: usize) -> usize {
    (bs - 12) / 12
}

/// Number of tree blocks an extent tree of `n` extents needs.
pub(crate) fn tree_blocks(n: usize, bs: usize) -> u64 {
    let p = per_block(bs);
    let mut level = n;
    let mut total = 0u64;
    while level > 4 {
        level = level.div_ceil(p);
        total += level as u64;
    }
    total
}

/// Splits runs into extents of at most [`MAX_EXTENT_LEN`] blocks.
pub(crate) fn split_runs(runs: &[Run]) -> Vec<Run> {
    let mut out = Vec::new();
    for r in runs {
        let mut done = 0;
        while done < r.len {
            let len = (r.len - done).min(MAX_EXTENT_LEN);
            out.push(Run {
                logical: r.logical + done,
                phys: r.phys + u64::from(done),
                len,
            });
            done += len;
        }
    }
    out
}

fn header(entries: usize, max: usize, depth: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
    h[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    h[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    h[6..8].copy_from_slice(&depth.to_le_bytes());
    h
}

fn extent_entry(r: &Run) -> [u8; 12] {
    let mut e = [0u8; 12];
    e[0..4].copy_from_slice(&r.logical.to_le_bytes());
    e[4..6].copy_from_slice(&(r.len as u16).to_le_bytes());
    e[6..8].copy_from_slice(&((r.phys >> 32) as u16).to_le_bytes());
    e[8..12].copy_from_slice(&(r.phys as u32).to_le_bytes());
    e
}

fn index_entry(logical: u32, child: u64) -> [u8; 12] {
    let mut e = [0u8; 12];
    e[0..4].copy_from_slice(&logical.to_le_bytes());
    e[4..8].copy_from_slice(&(child as u32).to_le_bytes());
    e[8..10].copy_from_slice(&((child >> 32) as u16).to_le_bytes());
    e
}

/// Builds an extent tree for `extents` (already split, in logical order) using the tree blocks
/// `blocks` (exactly [`tree_blocks`] of them): the 60-byte root for `i_block` and each tree
/// block's bytes, with its checksum tail when `ino_seed` is given (metadata_csum).
pub(crate) fn build_extents(
    extents: &[Run],
    blocks: &[u64],
    bs: usize,
    ino_seed: Option<u32>,
) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    let p = per_block(bs);
    // Each level: (first logical block, entry bytes).
    let mut level: Vec<(u32, [u8; 12])> = extents
        .iter()
        .map(|r| (r.logical, extent_entry(r)))
        .collect();
    let mut depth = 0u16;
    let mut out = Vec::new();
    let mut next = blocks.iter();
    while level.len() > 4 {
        let mut up = Vec::new();
        for chunk in level.chunks(p) {
            let blk = *next
                .next()
                .expect("tree_blocks counted the blocks this needs");
            let mut b = vec![0u8; bs];
            b[..12].copy_from_slice(&header(chunk.len(), p, depth));
            for (i, (_, e)) in chunk.iter().enumerate() {
                b[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
            }
            if let Some(seed) = ino_seed {
                let t = 12 + 12 * p;
                let c = ext4_crc32c(seed, &b[..t]);
                b[t..t + 4].copy_from_slice(&c.to_le_bytes());
            }
            out.push((blk, b));
            up.push((chunk[0].0, index_entry(chunk[0].0, blk)));
        }
        level = up;
        depth += 1;
    }
    let mut root = [0u8; 60];
    root[..12].copy_from_slice(&header(level.len(), 4, depth));
    for (i, (_, e)) in level.iter().enumerate() {
        root[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
    }
    (root, out)
}

/// Reads a block map (`i_block` as 15 little-endian pointers). Holes (zero pointers) are
/// skipped.
pub(crate) fn read_blockmap(
    i_block: &[u8],
    ino: u32,
    bs: usize,
    blocks_count: u64,
    read: &mut ReadBlock<'_>,
) -> Result<Mapping, ExtfsError> {
    let mut m = Mapping::default();
    let p = (bs / 4) as u64;
    for i in 0..15usize {
        let ptr = u64::from(le32(i_block, 4 * i));
        if ptr == 0 {
            continue;
        }
        if ptr >= blocks_count {
            return Err(ExtfsError::corrupt(
                format!("inode {ino} block map"),
                0,
                format!("pointer {i} is block {ptr}, outside the volume"),
            ));
        }
        if i < 12 {
            push_block(&mut m, i as u64, ptr);
        } else {
            let level = (i - 11) as u32;
            let first = 12 + (1..level).map(|l| p.pow(l)).sum::<u64>();
            indirect(ptr, level, first, ino, p, blocks_count, read, &mut m)?;
        }
    }
    Ok(m)
}

fn push_block(m: &mut Mapping, logical: u64, phys: u64) {
    if let Some(last) = m.runs.last_mut() {
        if u64::from(last.logical) + u64::from(last.len) == logical
            && last.phys + u64::from(last.len) == phys
            && last.len < MAX_EXTENT_LEN
        {
            last.len += 1;
            return;
        }
    }
    m.runs.push(Run {
        logical: logical as u32,
        phys,
        len: 1,
    });
}

#[allow(clippy::too_many_arguments)]
fn indirect(
    blk: u64,
    level: u32,
    first: u64,
    ino: u32,
    p: u64,
    blocks_count: u64,
    read: &mut ReadBlock<'_>,
    m: &mut Mapping,
) -> Result<(), ExtfsError> {
    m.meta.push(blk);
    let b = read(blk)?;
    let span = p.pow(level - 1);
    for i in 0..p {
        let ptr = u64::from(le32(&b, 4 * i as usize));
        if ptr == 0 {
            continue;
        }
        if ptr >= blocks_count {
            return Err(ExtfsError::corrupt(
                format!("inode {ino} indirect block {blk}"),
                0,
                format!("pointer {i} is block {ptr}, outside the volume"),
            ));
        }
        let logical = first + i * span;
        if level == 1 {
            push_block(m, logical, ptr);
        } else {
            indirect(ptr, level - 1, logical, ino, p, blocks_count, read, m)?;
        }
    }
    Ok(())
}

/// Number of indirect blocks a block map of `n` data blocks needs, or `None` past the triple
/// indirect range.
pub(crate) fn blockmap_meta(n: u64, bs: usize) -> Option<u64> {
    let p = (bs / 4) as u64;
    let mut rest = n.saturating_sub(12);
    let mut total = 0;
    for level in 1..=3u32 {
        if rest == 0 {
            return Some(total);
        }
        let cap = p.pow(level);
        let here = rest.min(cap);
        // ceil(here / p^l) blocks at each level l below the pointer in the inode.
        for l in 1..=level {
            total += here.div_ceil(p.pow(l));
        }
        rest -= here;
    }
    (rest == 0).then_some(total)
}

/// Builds a block map for data blocks `data` (logical 0..n in order) with the indirect blocks
/// `meta` (exactly [`blockmap_meta`] of them): the 60-byte `i_block` and the indirect blocks.
pub(crate) fn build_blockmap(
    data: &[u64],
    meta: &[u64],
    bs: usize,
) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    let p = bs / 4;
    let mut root = [0u8; 60];
    for (i, &d) in data.iter().take(12).enumerate() {
        root[4 * i..4 * i + 4].copy_from_slice(&(d as u32).to_le_bytes());
    }
    let mut out = Vec::new();
    let mut next = meta.iter();
    let mut rest = &data[data.len().min(12)..];
    for level in 1..=3u32 {
        if rest.is_empty() {
            break;
        }
        let cap = p.pow(level);
        let here = &rest[..rest.len().min(cap)];
        let top = fill(here, level, p, bs, &mut next, &mut out);
        root[4 * (11 + level as usize)..4 * (12 + level as usize)]
            .copy_from_slice(&(top as u32).to_le_bytes());
        rest = &rest[here.len()..];
    }
    (root, out)
}

fn fill<'a>(
    data: &[u64],
    level: u32,
    p: usize,
    bs: usize,
    next: &mut impl Iterator<Item = &'a u64>,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> u64 {
    let blk = *next
        .next()
        .expect("blockmap_meta counted the blocks this needs");
    let mut b = vec![0u8; bs];
    let span = p.pow(level - 1);
    for (i, chunk) in data.chunks(span).enumerate() {
        let ptr = if level == 1 {
            chunk[0]
        } else {
            fill(chunk, level - 1, p, bs, next, out)
        };
        b[4 * i..4 * i + 4].copy_from_slice(&(ptr as u32).to_le_bytes());
    }
    out.push((blk, b));
    blk
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn extent_tree_roundtrip_depths() {
        for (n, want_blocks) in [(3usize, 0u64), (4, 0), (5, 1), (341, 2), (340 * 4 + 1, 6)] {
            let runs: Vec<Run> = (0..n)
                .map(|i| Run {
                    logical: (i * 10) as u32,
                    phys: 100_000 + (i * 20) as u64,
                    len: 3,
                })
                .collect();
            let tb = tree_blocks(n, 4096);
            assert_eq!(tb, want_blocks, "n={n}");
            let blocks: Vec<u64> = (0..tb).map(|i| 50 + i).collect();
            let (root, tree) = build_extents(&runs, &blocks, 4096, Some(9));
            let store: HashMap<u64, Vec<u8>> = tree.into_iter().collect();
            let m = read_extents(&root, 12, 1 << 30, &mut |b| Ok(store[&b].clone())).unwrap();
            assert_eq!(m.runs, runs);
            assert_eq!(m.meta.len() as u64, tb);
        }
    }

    #[test]
    fn bad_extent_root() {
        let mut root = [0u8; 60];
        let e = read_extents(&root, 12, 100, &mut |_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        root[..12].copy_from_slice(&header(1, 4, 0));
        root[12..24].copy_from_slice(&extent_entry(&Run {
            logical: 0,
            phys: 99,
            len: 5,
        }));
        let e = read_extents(&root, 12, 100, &mut |_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        root[..12].copy_from_slice(&header(9, 4, 0));
        assert!(read_extents(&root, 12, 100, &mut |_| unreachable!()).is_err());
    }

    #[test]
    fn blockmap_roundtrip() {
        for n in [1u64, 12, 13, 12 + 256, 12 + 257, 12 + 256 + 256 * 256 + 5] {
            let data: Vec<u64> = (0..n).map(|i| 1_000_000 + i * 2).collect();
            let meta_n = blockmap_meta(n, 1024).unwrap();
            let meta: Vec<u64> = (0..meta_n).map(|i| 10 + i).collect();
            let (root, blocks) = build_blockmap(&data, &meta, 1024);
            assert_eq!(blocks.len() as u64, meta_n, "n={n}");
            let store: HashMap<u64, Vec<u8>> = blocks.into_iter().collect();
            let m =
                read_blockmap(&root, 12, 1024, 1 << 30, &mut |b| Ok(store[&b].clone())).unwrap();
            assert_eq!(m.data_blocks(), n);
            assert_eq!(m.meta.len() as u64, meta_n);
            for l in [0, n / 2, n - 1] {
                assert_eq!(m.lookup(l as u32), Some(data[l as usize]));
            }
        }
        assert_eq!(blockmap_meta(12, 4096), Some(0));
        assert_eq!(blockmap_meta(13, 4096), Some(1));
        assert_eq!(blockmap_meta(12 + 1024 + 1, 4096), Some(1 + 2));
    }
}
