//! `$I30` directory indexes: the B+ tree of `$FILE_NAME` keys held in a folder's
//! `$INDEX_ROOT` (resident, in its MFT record) and `$INDEX_ALLOCATION` (INDX blocks): lookup,
//! ordered listing, and insertion with node splits and moving a full root into an index block.
//!
//! The tree code works on an [`IndexStore`], which the volume implements for a folder's record
//! (and tests implement in memory), so it never touches MFT records or bitmaps itself.

pub mod node;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

pub use node::{ATTR_FILE_NAME, COLLATION_FILE_NAME, check_file_name_key, entry_size, key_name};
use node::{BlockTemplate, MAX_DEPTH, Node, NodeEntry, RootHeader};

use super::NtfsError;
use super::upcase::UpCase;
use crate::error::Result;

/// One index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// MFT reference of the file (record number in the low 48 bits, sequence number above).
    pub file_ref: u64,
    /// The key: the file's whole `$FILE_NAME` attribute value.
    pub key: Vec<u8>,
}

impl IndexEntry {
    /// The name in the key (UTF-16 code units), or an error if the key is malformed.
    pub fn name(&self) -> Result<Vec<u16>> {
        key_name(&self.key).map_err(|d| NtfsError::invalid("index entry key", 0, d).into())
    }

    /// The namespace byte of the key (0 POSIX, 1 Win32, 2 DOS, 3 Win32 and DOS).
    pub fn namespace(&self) -> Result<u8> {
        check_file_name_key(&self.key)
            .map(|(_, ns)| ns)
            .map_err(|d| NtfsError::invalid("index entry key", 0, d).into())
    }
}

/// Access to one index's storage, provided by the volume for a folder (or by a test).
pub trait IndexStore {
    /// Bytes per index block (from the index root header; normally 4096).
    fn block_size(&self) -> u32;
    /// How far the VCN advances per index block (block size / cluster size when the block is
    /// at least a cluster, else block size / 512).
    fn vcn_per_block(&self) -> u64;
    /// The current `$INDEX_ROOT` attribute value (root header + node header + entries).
    fn root(&self) -> Result<Vec<u8>>;
    /// The largest `$INDEX_ROOT` value the folder's MFT record can hold right now.
    fn root_capacity(&self) -> Result<usize>;
    /// Replaces the `$INDEX_ROOT` value (at most [`root_capacity`](Self::root_capacity) bytes).
    fn set_root(&mut self, value: &[u8]) -> Result<()>;
    /// The index block at `vcn` with its fixups removed and its `INDX` header checked.
    fn read_block(&self, vcn: u64) -> Result<Vec<u8>>;
    /// Writes the index block at `vcn` (fixups applied by the store).
    fn write_block(&mut self, vcn: u64, block: &[u8]) -> Result<()>;
    /// Allocates a new index block (creating or growing `$INDEX_ALLOCATION` and `$BITMAP`) and
    /// returns its VCN. Its content is undefined until written.
    fn allocate_block(&mut self) -> Result<u64>;
}

/// DOS (8.3) namespace of a `$FILE_NAME` key.
const NAMESPACE_DOS: u8 = 2;

/// Where a node lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Root,
    Block(u64),
}

/// Reading side of the tree: the root, and blocks checked against cycles and depth.
struct Reader<'a> {
    store: &'a dyn IndexStore,
    block_size: u32,
    visited: HashSet<u64>,
}

impl<'a> Reader<'a> {
    fn new(store: &'a dyn IndexStore) -> Result<(Reader<'a>, RootHeader, Node)> {
        let (hdr, root) = node::parse_root(&store.root()?)?;
        if hdr.block_size != store.block_size() {
            return Err(NtfsError::invalid(
                "$INDEX_ROOT",
                8,
                format!(
                    "index block size {} differs from the store's {}",
                    hdr.block_size,
                    store.block_size()
                ),
            )
            .into());
        }
        Ok((
            Reader {
                store,
                block_size: hdr.block_size,
                visited: HashSet::new(),
            },
            hdr,
            root,
        ))
    }

    /// Reads the child block `vcn` at `depth` (the root's children are at depth 1).
    fn child(&mut self, vcn: u64, depth: usize) -> Result<(BlockTemplate, Node)> {
        read_child(self.store, self.block_size, &mut self.visited, vcn, depth)
    }
}

fn read_child(
    store: &dyn IndexStore,
    block_size: u32,
    visited: &mut HashSet<u64>,
    vcn: u64,
    depth: usize,
) -> Result<(BlockTemplate, Node)> {
    let what = format!("index block at VCN {vcn}");
    if depth > MAX_DEPTH {
        return Err(NtfsError::corrupt(
            what,
            0,
            format!("index tree deeper than {MAX_DEPTH} levels"),
        )
        .into());
    }
    let per = store.vcn_per_block();
    if per == 0 || vcn % per != 0 {
        return Err(NtfsError::corrupt(
            what,
            0,
            format!("child VCN {vcn} is not a multiple of the {per} VCNs per index block"),
        )
        .into());
    }
    if !visited.insert(vcn) {
        return Err(NtfsError::corrupt(
            what,
            0,
            "the index tree reaches this block twice (child VCN cycle or shared sub-node)",
        )
        .into());
    }
    let raw = store.read_block(vcn)?;
    Ok(node::parse_block(&raw, block_size, vcn)?)
}

fn entry_name(e: &NodeEntry) -> Result<Vec<u16>> {
    key_name(&e.key).map_err(|d| NtfsError::invalid("index entry key", 0, d).into())
}

fn public(e: &NodeEntry) -> IndexEntry {
    IndexEntry {
        file_ref: e.file_ref,
        key: e.key.clone(),
    }
}

/// Collects, in collation order, every entry whose name equals `name` ignoring case, with
/// where it is.
fn find_ic(
    rd: &mut Reader<'_>,
    up: &UpCase,
    name: &[u16],
    loc: Loc,
    node: &Node,
    depth: usize,
    out: &mut Vec<(Loc, usize, IndexEntry)>,
) -> Result<()> {
    for (i, e) in node.entries.iter().enumerate() {
        let ord = up.compare(&entry_name(e)?, name);
        if ord == std::cmp::Ordering::Less {
            continue;
        }
        if let Some(vcn) = e.child {
            let (_, child) = rd.child(vcn, depth + 1)?;
            find_ic(rd, up, name, Loc::Block(vcn), &child, depth + 1, out)?;
        }
        if ord == std::cmp::Ordering::Greater {
            return Ok(());
        }
        out.push((loc, i, public(e)));
    }
    if let Some(vcn) = node.end_child {
        let (_, child) = rd.child(vcn, depth + 1)?;
        find_ic(rd, up, name, Loc::Block(vcn), &child, depth + 1, out)?;
    }
    Ok(())
}

fn find_all(
    store: &dyn IndexStore,
    up: &UpCase,
    name: &[u16],
) -> Result<Vec<(Loc, usize, IndexEntry)>> {
    let (mut rd, _, root) = Reader::new(store)?;
    let mut out = Vec::new();
    find_ic(&mut rd, up, name, Loc::Root, &root, 0, &mut out)?;
    Ok(out)
}

/// Finds the entry whose name equals `name` (ignoring case per `upcase`; for a name present in
/// both Win32 and DOS form, the Win32 entry).
pub fn lookup(store: &dyn IndexStore, upcase: &UpCase, name: &[u16]) -> Result<Option<IndexEntry>> {
    let found = find_all(store, upcase, name)?;
    let best = found
        .iter()
        .find(|(_, _, e)| e.key.get(node::FN_NAMESPACE) != Some(&NAMESPACE_DOS))
        .or_else(|| found.first());
    Ok(best.map(|(_, _, e)| e.clone()))
}

fn walk(rd: &mut Reader<'_>, node: &Node, depth: usize, out: &mut Vec<IndexEntry>) -> Result<()> {
    for e in &node.entries {
        if let Some(vcn) = e.child {
            let (_, child) = rd.child(vcn, depth + 1)?;
            walk(rd, &child, depth + 1, out)?;
        }
        out.push(public(e));
    }
    if let Some(vcn) = node.end_child {
        let (_, child) = rd.child(vcn, depth + 1)?;
        walk(rd, &child, depth + 1, out)?;
    }
    Ok(())
}

/// Every entry in collation order.
pub fn entries(store: &dyn IndexStore) -> Result<Vec<IndexEntry>> {
    let (mut rd, _, root) = Reader::new(store)?;
    let mut out = Vec::new();
    walk(&mut rd, &root, 0, &mut out)?;
    Ok(out)
}

/// One level of the path from the root to the leaf an insertion goes into.
struct Step {
    loc: Loc,
    tmpl: Option<BlockTemplate>,
    node: Node,
    /// Where the new key goes among `node.entries`.
    pos: usize,
}

/// Splits an overfull node around the entry that best balances the halves, both of which
/// must fit `capacity`. Returns (left, median, right); the median's child is left unset (the
/// caller points it to the left half's new block), the left half's end entry takes the
/// median's old child.
fn split(node: Node, capacity: usize, what: &str) -> Result<(Node, NodeEntry, Node)> {
    let sizes: Vec<usize> = node
        .entries
        .iter()
        .map(|e| entry_size(e.key.len(), e.child.is_some()))
        .collect();
    let total: usize = sizes.iter().sum();
    let mut best: Option<(usize, usize)> = None; // (imbalance, m)
    let mut left = 0usize;
    for (m, e) in node.entries.iter().enumerate() {
        let right = total - left - sizes[m];
        let l = left + entry_size(0, e.child.is_some());
        let r = right + entry_size(0, node.end_child.is_some());
        if l <= capacity && r <= capacity {
            let imbalance = l.abs_diff(r);
            if best.is_none_or(|(b, _)| imbalance < b) {
                best = Some((imbalance, m));
            }
        }
        left += sizes[m];
    }
    let Some((_, m)) = best else {
        return Err(NtfsError::Unsupported(format!(
            "{what}: {} entries ({total} bytes) cannot be split into two nodes of {capacity} bytes",
            node.entries.len()
        ))
        .into());
    };
    let mut entries = node.entries;
    let right_entries = entries.split_off(m + 1);
    // `m` is an index of `entries` (from the enumerate above), so pop returns the median.
    let Some(mut median) = entries.pop() else {
        return Err(NtfsError::Unsupported(format!("{what}: split of an empty node")).into());
    };
    let left = Node {
        entries,
        end_child: median.child.take(),
    };
    let right = Node {
        entries: right_entries,
        end_child: node.end_child,
    };
    Ok((left, median, right))
}

fn write_block(
    store: &mut dyn IndexStore,
    tmpl: &BlockTemplate,
    block_size: u32,
    vcn: u64,
    node: &Node,
) -> Result<()> {
    let bytes = node::block_bytes(tmpl, block_size, node).ok_or_else(|| {
        NtfsError::Unsupported(format!(
            "index block at VCN {vcn}: {} bytes of entries do not fit its {} bytes",
            node.entries_len(),
            tmpl.capacity(block_size)
        ))
    })?;
    store.write_block(vcn, &bytes)
}

/// Puts `node` into a fresh block, splitting it once more when it does not fit one; returns
/// the node that must replace it in its parent's place (a lone end entry or one separator).
fn into_new_blocks(store: &mut dyn IndexStore, block_size: u32, node: Node) -> Result<Node> {
    let vcn = store.allocate_block()?;
    let tmpl = BlockTemplate::new(block_size, vcn);
    let cap = tmpl.capacity(block_size);
    if node.entries_len() <= cap {
        write_block(store, &tmpl, block_size, vcn, &node)?;
        return Ok(Node {
            entries: Vec::new(),
            end_child: Some(vcn),
        });
    }
    let (left, mut median, right) = split(node, cap, "new index block")?;
    let lvcn = store.allocate_block()?;
    let ltmpl = BlockTemplate::new(block_size, lvcn);
    write_block(store, &ltmpl, block_size, lvcn, &left)?;
    write_block(store, &tmpl, block_size, vcn, &right)?;
    median.child = Some(lvcn);
    Ok(Node {
        entries: vec![median],
        end_child: Some(vcn),
    })
}

fn set_root(store: &mut dyn IndexStore, hdr: &RootHeader, node: &Node) -> Result<bool> {
    let cap = store.root_capacity()?;
    if node::root_len(node) > cap {
        return Ok(false);
    }
    store.set_root(&node::root_bytes(hdr, node))?;
    Ok(true)
}

/// Inserts `entry` in collation order, splitting full blocks and moving a full root into a new
/// index block. An entry with an equal name (ignoring case) is an error
/// ([`NtfsError::Exists`](super::NtfsError::Exists)).
pub fn insert(store: &mut dyn IndexStore, upcase: &UpCase, entry: IndexEntry) -> Result<()> {
    let name = key_name(&entry.key)
        .map_err(|d| NtfsError::InvalidArgument(format!("index entry to insert: {d}")))?;
    let (hdr, mut path) = {
        let (mut rd, hdr, root) = Reader::new(&*store)?;
        let mut path: Vec<Step> = Vec::new();
        let mut cur = (Loc::Root, None, root);
        loop {
            let (loc, tmpl, node) = cur;
            let mut pos = node.entries.len();
            for (i, e) in node.entries.iter().enumerate() {
                let other = entry_name(e)?;
                if upcase.eq_ignore_case(&other, &name) {
                    return Err(NtfsError::Exists(format!(
                        "the folder already has an entry named \"{}\" (names are compared ignoring case)",
                        String::from_utf16_lossy(&other)
                    ))
                    .into());
                }
                if upcase.compare_full(&other, &name) == std::cmp::Ordering::Greater {
                    pos = i;
                    break;
                }
            }
            let child = match node.entries.get(pos) {
                Some(e) => e.child,
                None => node.end_child,
            };
            let depth = path.len();
            path.push(Step {
                loc,
                tmpl,
                node,
                pos,
            });
            match child {
                None => break,
                Some(vcn) => {
                    let (t, n) = rd.child(vcn, depth + 1)?;
                    cur = (Loc::Block(vcn), Some(t), n);
                }
            }
        }
        (hdr, path)
    };
    let block_size = hdr.block_size;
    let mut pending = NodeEntry {
        file_ref: entry.file_ref,
        key: entry.key,
        child: None,
    };
    while let Some(step) = path.pop() {
        let Step {
            loc,
            tmpl,
            mut node,
            pos,
        } = step;
        node.entries.insert(pos, pending);
        match (loc, tmpl) {
            (Loc::Block(vcn), Some(tmpl)) => {
                let cap = tmpl.capacity(block_size);
                if node.entries_len() <= cap {
                    return write_block(store, &tmpl, block_size, vcn, &node);
                }
                let (left, mut median, right) =
                    split(node, cap, &format!("index block at VCN {vcn}"))?;
                let lvcn = store.allocate_block()?;
                let ltmpl = BlockTemplate::new(block_size, lvcn);
                write_block(store, &ltmpl, block_size, lvcn, &left)?;
                write_block(store, &tmpl, block_size, vcn, &right)?;
                median.child = Some(lvcn);
                pending = median;
            }
            _ => {
                if set_root(store, &hdr, &node)? {
                    return Ok(());
                }
                // The root is full: its entries move to a new index block (split again if one
                // block cannot hold them) and the root keeps only what points to them.
                let new_root = into_new_blocks(store, block_size, node)?;
                if !set_root(store, &hdr, &new_root)? {
                    return Err(NtfsError::NoSpace {
                        detail: format!(
                            "the folder's MFT record has room for a {}-byte index root, {} needed",
                            store.root_capacity()?,
                            node::root_len(&new_root)
                        ),
                    }
                    .into());
                }
                return Ok(());
            }
        }
    }
    // The loop always ends at the root, which returns.
    Err(NtfsError::corrupt("$INDEX_ROOT", 0, "insertion path without a root").into())
}

/// Replaces the key of the entry with name `name` and reference `file_ref` (e.g. new sizes in
/// its `$FILE_NAME` copy); the name itself must not change. Returns whether it was found.
pub fn update_key(
    store: &mut dyn IndexStore,
    upcase: &UpCase,
    name: &[u16],
    file_ref: u64,
    key: &[u8],
) -> Result<bool> {
    let new_name =
        key_name(key).map_err(|d| NtfsError::InvalidArgument(format!("new index key: {d}")))?;
    let found = find_all(&*store, upcase, name)?;
    let Some((loc, idx, old)) = found.into_iter().find(|(_, _, e)| {
        e.file_ref == file_ref && key_name(&e.key).is_ok_and(|n| n.as_slice() == name)
    }) else {
        return Ok(false);
    };
    if new_name.as_slice() != name || old.key.len() != key.len() {
        return Err(NtfsError::InvalidArgument(format!(
            "update_key may not change the name or key size of \"{}\" ({} bytes) to \"{}\" ({} bytes)",
            String::from_utf16_lossy(name),
            old.key.len(),
            String::from_utf16_lossy(&new_name),
            key.len()
        ))
        .into());
    }
    match loc {
        Loc::Root => {
            let (hdr, mut root) = node::parse_root(&store.root()?)?;
            let Some(e) = root.entries.get_mut(idx) else {
                return Ok(false);
            };
            e.key = key.to_vec();
            if !set_root(store, &hdr, &root)? {
                return Err(NtfsError::NoSpace {
                    detail: "the updated index root no longer fits its MFT record".into(),
                }
                .into());
            }
        }
        Loc::Block(vcn) => {
            let bs = store.block_size();
            let raw = store.read_block(vcn)?;
            let (tmpl, mut n) = node::parse_block(&raw, bs, vcn)?;
            let Some(e) = n.entries.get_mut(idx) else {
                return Ok(false);
            };
            e.key = key.to_vec();
            write_block(store, &tmpl, bs, vcn, &n)?;
        }
    }
    Ok(true)
}

/// A new, empty `$INDEX_ROOT` value for a folder (`$FILE_NAME` collation, `block_size`-byte
/// index blocks, `clusters_per_block` as stored in the root header).
pub fn new_root(block_size: u32, clusters_per_block: u8) -> Vec<u8> {
    let mut raw = [0u8; node::ROOT_HEADER_LEN];
    raw[0..4].copy_from_slice(&ATTR_FILE_NAME.to_le_bytes());
    raw[4..8].copy_from_slice(&COLLATION_FILE_NAME.to_le_bytes());
    raw[8..12].copy_from_slice(&block_size.to_le_bytes());
    raw[12] = clusters_per_block;
    node::root_bytes(&RootHeader { raw, block_size }, &Node::default())
}
