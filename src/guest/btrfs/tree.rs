//! Tree blocks (nodes and leaves): the header, its checks (checksum, address, file system
//! UUID, level), the keys and items, and the ordered search of a key range across a tree.

use std::rc::Rc;

use super::superblock::CsumType;
use super::{corrupt, invalid, le_u32, le_u64};
use crate::error::{Error, Result};

/// The size of a key on disk (`struct btrfs_disk_key`: objectid, type, offset).
pub const KEY_SIZE: usize = 17;
/// The size of a tree block header (`struct btrfs_header`).
pub const HEADER_SIZE: usize = 0x65;
/// The size of a leaf's item descriptor (key, data offset, data size).
const ITEM_SIZE: usize = KEY_SIZE + 8;
/// The size of a node's key pointer (key, block pointer, generation).
const PTR_SIZE: usize = KEY_SIZE + 16;
/// Levels are 0 (leaf) to 7 (`BTRFS_MAX_LEVEL` is 8): a tree is at most 8 deep.
pub const MAX_LEVEL: u8 = 8;
/// At most this many tree blocks are read by one search (a bound for hostile trees).
const MAX_VISITS: usize = 1 << 20;

/// A key: objectid, type, offset, ordered in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The object (inode number, tree id, ...).
    pub objectid: u64,
    /// The item type.
    pub ty: u8,
    /// Type-dependent (file offset, name hash, parent inode, ...).
    pub offset: u64,
}

impl Key {
    /// A key.
    pub const fn new(objectid: u64, ty: u8, offset: u64) -> Key {
        Key {
            objectid,
            ty,
            offset,
        }
    }

    /// Reads a key from 17 bytes.
    pub fn parse(b: &[u8]) -> Key {
        Key {
            objectid: le_u64(b, 0),
            ty: b[8],
            offset: le_u64(b, 9),
        }
    }

    /// The 17 bytes of the key.
    pub fn to_bytes(self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b[..8].copy_from_slice(&self.objectid.to_le_bytes());
        b[8] = self.ty;
        b[9..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }
}

/// A parsed tree block.
#[derive(Debug)]
pub struct Node {
    /// Its logical address.
    pub logical: u64,
    /// 0 for a leaf.
    pub level: u8,
    /// The tree that owns it.
    pub owner: u64,
    /// Leaves: the items (key, data range in `data`); nodes: the children (key, logical
    /// address, generation).
    pub entries: Vec<(Key, u64, u64)>,
    /// The block's bytes (leaves: item data is sliced from here).
    pub data: Vec<u8>,
}

impl Node {
    /// The data of leaf item `i` (its range was checked by [`Node::parse`]).
    pub fn item(&self, i: usize) -> &[u8] {
        let (_, start, len) = self.entries[i];
        // In range: checked against the block's size in parse.
        &self.data[start as usize..(start + len) as usize]
    }

    /// Checks and parses the tree block `data` read from logical address `logical` (device
    /// offset `physical`): checksum, address, file system UUID, level, item layout.
    pub fn parse(
        data: Vec<u8>,
        logical: u64,
        physical: u64,
        csum: CsumType,
        fsid: &[u8; 16],
        want_level: Option<u8>,
    ) -> Result<Node> {
        let what = format!("tree block (logical {logical:#x})");
        if data.len() < HEADER_SIZE {
            return Err(invalid(
                &what,
                physical,
                format!("{} bytes, shorter than its header", data.len()),
            ));
        }
        if let Err((stored, computed)) = csum.verify(&data) {
            return Err(invalid(
                &what,
                physical,
                format!("checksum is {stored}, the bytes give {computed}"),
            ));
        }
        let bytenr = le_u64(&data, 0x30);
        if bytenr != logical {
            return Err(corrupt(
                &what,
                physical + 0x30,
                format!("says it is the block at logical {bytenr:#x}"),
            ));
        }
        if &data[0x20..0x30] != fsid {
            return Err(corrupt(
                &what,
                physical + 0x20,
                "belongs to another file system (its UUID differs from the superblock's)",
            ));
        }
        let level = data[0x64];
        if level >= MAX_LEVEL || want_level.is_some_and(|w| w != level) {
            return Err(corrupt(
                &what,
                physical + 0x64,
                match want_level {
                    Some(w) => format!("level is {level}, expected {w}"),
                    None => format!("level is {level}, at most {}", MAX_LEVEL - 1),
                },
            ));
        }
        let owner = le_u64(&data, 0x58);
        let nritems = le_u32(&data, 0x60) as usize;
        let body = data.len() - HEADER_SIZE;
        let per = if level == 0 { ITEM_SIZE } else { PTR_SIZE };
        if nritems > body / per {
            return Err(corrupt(
                &what,
                physical + 0x60,
                format!("{nritems} items do not fit in a {} byte block", data.len()),
            ));
        }
        let mut entries = Vec::with_capacity(nritems);
        let mut prev: Option<Key> = None;
        for i in 0..nritems {
            let at = HEADER_SIZE + i * per;
            let key = Key::parse(&data[at..at + KEY_SIZE]);
            if prev.is_some_and(|p| p >= key) {
                return Err(corrupt(
                    &what,
                    physical + at as u64,
                    format!("key {i} ({key:?}) is not above the one before"),
                ));
            }
            prev = Some(key);
            if level == 0 {
                let off = le_u32(&data, at + KEY_SIZE) as u64;
                let len = le_u32(&data, at + KEY_SIZE + 4) as u64;
                let start = HEADER_SIZE as u64 + off;
                if start + len > data.len() as u64 {
                    return Err(corrupt(
                        &what,
                        physical + at as u64,
                        format!(
                            "item {i} data ({len} bytes at {off}) reaches past the block's end"
                        ),
                    ));
                }
                entries.push((key, start, len));
            } else {
                let ptr = le_u64(&data, at + KEY_SIZE);
                let gen_ = le_u64(&data, at + KEY_SIZE + 8);
                entries.push((key, ptr, gen_));
            }
        }
        Ok(Node {
            logical,
            level,
            owner,
            entries,
            data,
        })
    }
}

/// Reads tree blocks: `(logical, expected level)` to a parsed block.
pub trait BlockReader {
    /// The checked tree block at `logical`, whose level must be `level`.
    fn node(&self, logical: u64, level: u8) -> Result<Rc<Node>>;
}

/// Visits, in key order, the leaf items of the tree rooted at `root` (level `level`) whose
/// keys lie in `lo..=hi`; `f` gets the leaf and the item's index and returns `false` to stop.
/// Children must be one level below their parent, so a search ends; at most
/// 2^20 blocks are read.
pub fn search(
    r: &dyn BlockReader,
    root: u64,
    level: u8,
    lo: Key,
    hi: Key,
    f: &mut dyn FnMut(&Node, usize) -> Result<bool>,
) -> Result<()> {
    let mut visits = 0usize;
    walk(r, root, level, lo, hi, f, &mut visits).map(|_| ())
}

fn walk(
    r: &dyn BlockReader,
    logical: u64,
    level: u8,
    lo: Key,
    hi: Key,
    f: &mut dyn FnMut(&Node, usize) -> Result<bool>,
    visits: &mut usize,
) -> Result<bool> {
    *visits += 1;
    if *visits > MAX_VISITS {
        return Err(Error::Corrupt(format!(
            "btrfs: a tree search read more than {MAX_VISITS} blocks (at logical {logical:#x})"
        )));
    }
    let node = r.node(logical, level)?;
    if node.level == 0 {
        let start = node.entries.partition_point(|e| e.0 < lo);
        for i in start..node.entries.len() {
            if node.entries[i].0 > hi {
                return Ok(false);
            }
            if !f(&node, i)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    // The last child whose first key is <= lo may hold lo; start there.
    let start = node
        .entries
        .partition_point(|e| e.0 <= lo)
        .saturating_sub(1);
    for i in start..node.entries.len() {
        let (key, ptr, _) = node.entries[i];
        if key > hi {
            return Ok(false);
        }
        if !walk(r, ptr, level - 1, lo, hi, f, visits)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The data of the item with exactly `key`, if any.
pub fn lookup(r: &dyn BlockReader, root: u64, level: u8, key: Key) -> Result<Option<Vec<u8>>> {
    let mut out = None;
    search(r, root, level, key, key, &mut |n, i| {
        out = Some(n.item(i).to_vec());
        Ok(false)
    })?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) const FSID: [u8; 16] = [7; 16];

    /// A leaf at `logical` of `size` bytes holding `items` (key, data), checksummed.
    pub(crate) fn leaf(logical: u64, size: usize, owner: u64, items: &[(Key, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        header(&mut b, logical, owner, items.len(), 0);
        let mut end = size - HEADER_SIZE;
        for (i, (k, d)) in items.iter().enumerate() {
            end -= d.len();
            let at = HEADER_SIZE + i * ITEM_SIZE;
            b[at..at + KEY_SIZE].copy_from_slice(&k.to_bytes()); // key
            b[at + 17..at + 21].copy_from_slice(&(end as u32).to_le_bytes()); // data offset
            b[at + 21..at + 25].copy_from_slice(&(d.len() as u32).to_le_bytes()); // data size
            b[HEADER_SIZE + end..HEADER_SIZE + end + d.len()].copy_from_slice(d);
        }
        seal(&mut b);
        b
    }

    /// A node at `logical` of level `level` pointing at `children` (first key, address).
    pub(crate) fn node(logical: u64, size: usize, level: u8, children: &[(Key, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        header(&mut b, logical, 5, children.len(), level);
        for (i, (k, p)) in children.iter().enumerate() {
            let at = HEADER_SIZE + i * PTR_SIZE;
            b[at..at + KEY_SIZE].copy_from_slice(&k.to_bytes()); // key
            b[at + 17..at + 25].copy_from_slice(&p.to_le_bytes()); // block pointer
            b[at + 25..at + 33].copy_from_slice(&1u64.to_le_bytes()); // generation
        }
        seal(&mut b);
        b
    }

    fn header(b: &mut [u8], logical: u64, owner: u64, n: usize, level: u8) {
        b[0x20..0x30].copy_from_slice(&FSID); // fsid
        b[0x30..0x38].copy_from_slice(&logical.to_le_bytes()); // bytenr
        b[0x50..0x58].copy_from_slice(&1u64.to_le_bytes()); // generation
        b[0x58..0x60].copy_from_slice(&owner.to_le_bytes()); // owner
        b[0x60..0x64].copy_from_slice(&(n as u32).to_le_bytes()); // nritems
        b[0x64] = level; // level
    }

    /// Recomputes a block's CRC-32C.
    pub(crate) fn seal(b: &mut [u8]) {
        let c = crc32c::crc32c(&b[0x20..]);
        b[..4].copy_from_slice(&c.to_le_bytes());
    }

    struct Blocks(HashMap<u64, Vec<u8>>);
    impl BlockReader for Blocks {
        fn node(&self, logical: u64, level: u8) -> Result<Rc<Node>> {
            let d = self.0.get(&logical).cloned().unwrap_or_default();
            Node::parse(d, logical, logical, CsumType::Crc32c, &FSID, Some(level)).map(Rc::new)
        }
    }

    #[test]
    fn searches_across_leaves_in_order() {
        let k = |o: u64| Key::new(o, 1, 0);
        let l1 = leaf(0x1000, 1024, 5, &[(k(1), vec![1]), (k(3), vec![3, 3])]);
        let l2 = leaf(0x2000, 1024, 5, &[(k(5), vec![5]), (k(7), vec![])]);
        let root = node(0x3000, 1024, 1, &[(k(1), 0x1000), (k(5), 0x2000)]);
        let b = Blocks(
            [(0x1000, l1), (0x2000, l2), (0x3000, root)]
                .into_iter()
                .collect(),
        );
        let mut seen = Vec::new();
        search(&b, 0x3000, 1, k(2), k(5), &mut |n, i| {
            seen.push((n.entries[i].0.objectid, n.item(i).to_vec()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, vec![(3, vec![3, 3]), (5, vec![5])]);
        assert_eq!(lookup(&b, 0x3000, 1, k(7)).unwrap(), Some(vec![]));
        assert_eq!(lookup(&b, 0x3000, 1, k(4)).unwrap(), None);
        // A wrong level is an error naming the block.
        let e = search(&b, 0x3000, 2, k(0), k(9), &mut |_, _| Ok(true)).unwrap_err();
        assert!(
            e.to_string().contains("logical 0x3000")
                && e.to_string().contains("level is 1, expected 2"),
            "{e}"
        );
    }

    #[test]
    fn bad_blocks_are_named() {
        let k = Key::new(1, 1, 0);
        let good = leaf(0x1000, 1024, 5, &[(k, vec![1; 10])]);
        let p = |d: Vec<u8>| Node::parse(d, 0x1000, 0x9000, CsumType::Crc32c, &FSID, None);
        assert!(p(good.clone()).is_ok());
        let mut b = good.clone();
        b[500] ^= 1;
        let e = p(b).unwrap_err().to_string();
        assert!(
            e.contains("tree block (logical 0x1000) at 0x9000: checksum"),
            "{e}"
        );
        let mut b = good.clone();
        b[HEADER_SIZE + 17..HEADER_SIZE + 21].copy_from_slice(&2000u32.to_le_bytes());
        seal(&mut b);
        assert!(
            p(b).unwrap_err()
                .to_string()
                .contains("past the block's end")
        );
        let mut b = good.clone();
        b[0x60..0x64].copy_from_slice(&u32::MAX.to_le_bytes());
        seal(&mut b);
        assert!(p(b).unwrap_err().to_string().contains("do not fit"));
        let mut b = good.clone();
        b[0x20] ^= 1;
        seal(&mut b);
        assert!(
            p(b).unwrap_err()
                .to_string()
                .contains("another file system")
        );
        assert!(p(good[..50].to_vec()).is_err());
        let mut b = good;
        b[0x64] = 9;
        seal(&mut b);
        assert!(p(b).is_err());
    }
}
