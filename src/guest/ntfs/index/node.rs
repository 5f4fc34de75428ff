//! On-disk layout of index nodes: the `$INDEX_ROOT` value, `INDX` blocks, the node header and
//! index entries, parsed into [`Node`]s and written back.
//!
//! `$INDEX_ROOT` value:
//! ```text
//! 0x00 u32 attribute type indexed (0x30 = $FILE_NAME for $I30)
//! 0x04 u32 collation rule (1 = COLLATION_FILE_NAME)
//! 0x08 u32 bytes per index block
//! 0x0C u8  clusters per index block (or log2 of 512-byte units when below one cluster)
//! 0x10     node header, then entries
//! ```
//! `INDX` block (its fixups removed):
//! ```text
//! 0x00 "INDX"; 0x04 u16 update sequence offset; 0x06 u16 update sequence count
//! 0x08 u64 $LogFile sequence number; 0x10 u64 VCN of this block
//! 0x18     node header, then entries
//! ```
//! Node header (offsets relative to the node header):
//! ```text
//! 0x00 u32 offset of the first entry; 0x04 u32 bytes in use (through the end entry)
//! 0x08 u32 bytes allocated; 0x0C u8 flags (1 = entries have sub-nodes)
//! ```
//! Index entry:
//! ```text
//! 0x00 u64 MFT reference; 0x08 u16 entry length; 0x0A u16 key length; 0x0C u16 flags
//! (1 = has sub-node, 2 = last entry); 0x10 key, padded to 8 bytes; with a sub-node, the last
//! 8 bytes hold the child block's VCN
//! ```

use super::super::NtfsError;
use crate::bytes::{get_le16, get_le32, get_le64};

/// `INDX`: signature of an index allocation block.
pub const INDX_MAGIC: &[u8; 4] = b"INDX";
/// Attribute type indexed by `$I30`: `$FILE_NAME` (0x30).
pub const ATTR_FILE_NAME: u32 = 0x30;
/// COLLATION_FILE_NAME.
pub const COLLATION_FILE_NAME: u32 = 1;
/// Bytes of the `$INDEX_ROOT` header before its node header.
pub const ROOT_HEADER_LEN: usize = 0x10;
/// Offset of the node header in an `INDX` block.
pub const BLOCK_NODE_OFFSET: usize = 0x18;
/// Offset of the update sequence array in blocks we create (as Windows and mkntfs do).
pub const BLOCK_USA_OFFSET: usize = 0x28;
/// Node header length.
pub const NODE_HEADER_LEN: usize = 0x10;
/// Node header flag: the node's entries have sub-nodes (LARGE_INDEX in the root).
pub const NODE_HAS_CHILDREN: u8 = 1;
/// Entry flag: the entry has a sub-node (its VCN in the entry's last 8 bytes).
pub const ENTRY_SUBNODE: u16 = 1;
/// Entry flag: the last (end) entry of a node, with no key.
pub const ENTRY_LAST: u16 = 2;
/// Fixed part of an index entry before its key.
pub const ENTRY_HEADER_LEN: usize = 0x10;
/// Offset of the name length (in UTF-16 units) in a `$FILE_NAME` key.
pub const FN_NAME_LEN: usize = 0x40;
/// Offset of the namespace byte in a `$FILE_NAME` key.
pub const FN_NAMESPACE: usize = 0x41;
/// Offset of the name in a `$FILE_NAME` key.
pub const FN_NAME: usize = 0x42;
/// Deepest tree we walk; a real `$I30` is a handful of levels deep.
pub const MAX_DEPTH: usize = 32;

/// One entry of a node, with its sub-node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// MFT reference.
    pub file_ref: u64,
    /// The key (a `$FILE_NAME` value).
    pub key: Vec<u8>,
    /// VCN of the sub-node holding the keys just below this one.
    pub child: Option<u64>,
}

/// A parsed node: its entries in order and the end entry's sub-node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The entries with keys.
    pub entries: Vec<NodeEntry>,
    /// Sub-node of the end entry (keys above every entry).
    pub end_child: Option<u64>,
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes one entry takes on disk.
pub fn entry_size(key_len: usize, has_child: bool) -> usize {
    ENTRY_HEADER_LEN + align8(key_len) + if has_child { 8 } else { 0 }
}

impl Node {
    /// Whether the node's entries point to sub-nodes.
    pub fn has_children(&self) -> bool {
        self.end_child.is_some() || self.entries.iter().any(|e| e.child.is_some())
    }

    /// Bytes of all entries including the end entry.
    pub fn entries_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| entry_size(e.key.len(), e.child.is_some()))
            .sum::<usize>()
            + entry_size(0, self.end_child.is_some())
    }

    fn write_entries(&self, out: &mut Vec<u8>) {
        let mut put = |file_ref: u64, key: &[u8], child: Option<u64>, last: bool| {
            let len = entry_size(key.len(), child.is_some());
            let start = out.len();
            out.resize(start + len, 0);
            let e = &mut out[start..];
            e[0..8].copy_from_slice(&file_ref.to_le_bytes());
            e[8..10].copy_from_slice(&(len as u16).to_le_bytes());
            e[10..12].copy_from_slice(&(key.len() as u16).to_le_bytes());
            let flags =
                if child.is_some() { ENTRY_SUBNODE } else { 0 } | if last { ENTRY_LAST } else { 0 };
            e[12..14].copy_from_slice(&flags.to_le_bytes());
            e[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + key.len()].copy_from_slice(key);
            if let Some(vcn) = child {
                e[len - 8..len].copy_from_slice(&vcn.to_le_bytes());
            }
        };
        for en in &self.entries {
            put(en.file_ref, &en.key, en.child, false);
        }
        put(0, &[], self.end_child, true);
    }
}

/// Checks that a `$FILE_NAME` key holds its name; returns (name length in units, namespace).
pub fn check_file_name_key(key: &[u8]) -> Result<(usize, u8), String> {
    if key.len() < FN_NAME {
        return Err(format!(
            "$FILE_NAME key of {} bytes, expected at least {FN_NAME:#x}",
            key.len()
        ));
    }
    let units = usize::from(key[FN_NAME_LEN]);
    let need = FN_NAME + 2 * units;
    if key.len() < need {
        return Err(format!(
            "$FILE_NAME key of {} bytes cannot hold its {units}-unit name ({need} bytes needed)",
            key.len()
        ));
    }
    if units == 0 {
        return Err("$FILE_NAME key with an empty name".into());
    }
    Ok((units, key[FN_NAMESPACE]))
}

/// The name of a `$FILE_NAME` key (checked with [`check_file_name_key`]).
pub fn key_name(key: &[u8]) -> Result<Vec<u16>, String> {
    let (units, _) = check_file_name_key(key)?;
    Ok(key[FN_NAME..FN_NAME + 2 * units]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Parses the node whose header is at `node_off` in `buf`. `what` names the structure for
/// errors (offsets in errors are relative to `buf`).
pub fn parse_node(buf: &[u8], node_off: usize, what: &str) -> Result<Node, NtfsError> {
    let bad = |at: usize, detail: String| NtfsError::invalid(what, at as u64, detail);
    let hdr = buf.get(node_off..node_off + NODE_HEADER_LEN).ok_or_else(|| {
        bad(
            node_off,
            format!(
                "node header needs {NODE_HEADER_LEN} bytes at {node_off:#x}, structure is {} bytes",
                buf.len()
            ),
        )
    })?;
    // The slice is NODE_HEADER_LEN bytes long, so these reads cannot fail.
    let first = get_le32(hdr, 0).unwrap_or(0) as usize;
    let used = get_le32(hdr, 4).unwrap_or(0) as usize;
    let alloc = get_le32(hdr, 8).unwrap_or(0) as usize;
    let flags = hdr[12];
    let room = buf.len() - node_off;
    if alloc > room {
        return Err(bad(
            node_off + 8,
            format!(
                "node allocated size {alloc:#x} runs past the structure's end ({room:#x} bytes after the node header)"
            ),
        ));
    }
    if used > alloc {
        return Err(bad(
            node_off + 4,
            format!("node size in use {used:#x} exceeds its allocated size {alloc:#x}"),
        ));
    }
    if first < NODE_HEADER_LEN || first % 8 != 0 || first > used {
        return Err(bad(
            node_off,
            format!(
                "first entry offset {first:#x} must be 8-aligned, at least {NODE_HEADER_LEN:#x} and within the {used:#x} bytes in use"
            ),
        ));
    }
    let end = node_off + used;
    let mut pos = node_off + first;
    let mut node = Node::default();
    // Every entry is at least 16 bytes, so this ends within used / 16 turns.
    loop {
        if pos + ENTRY_HEADER_LEN > end {
            return Err(bad(
                pos,
                format!(
                    "entry header at {pos:#x} runs past the node's end {end:#x} (no end entry)"
                ),
            ));
        }
        let file_ref = get_le64(buf, pos).unwrap_or(0);
        let len = usize::from(get_le16(buf, pos + 8).unwrap_or(0));
        let key_len = usize::from(get_le16(buf, pos + 10).unwrap_or(0));
        let eflags = get_le16(buf, pos + 12).unwrap_or(0);
        let sub = eflags & ENTRY_SUBNODE != 0;
        let last = eflags & ENTRY_LAST != 0;
        let min = ENTRY_HEADER_LEN + if sub { 8 } else { 0 };
        if len < min || len % 8 != 0 || pos + len > end {
            return Err(bad(
                pos,
                format!(
                    "entry length {len:#x} must be 8-aligned, at least {min:#x} and end within the node ({:#x} bytes left)",
                    end - pos
                ),
            ));
        }
        let key_room = len - min;
        if key_len > key_room {
            return Err(bad(
                pos + 10,
                format!("key length {key_len:#x} exceeds the {key_room:#x} bytes of its entry"),
            ));
        }
        let child = if sub {
            Some(get_le64(buf, pos + len - 8).unwrap_or(0))
        } else {
            None
        };
        if last {
            node.end_child = child;
            break;
        }
        let key = buf[pos + ENTRY_HEADER_LEN..pos + ENTRY_HEADER_LEN + key_len].to_vec();
        if let Err(d) = check_file_name_key(&key) {
            return Err(bad(pos + ENTRY_HEADER_LEN, d));
        }
        node.entries.push(NodeEntry {
            file_ref,
            key,
            child,
        });
        pos += len;
    }
    let has = flags & NODE_HAS_CHILDREN != 0;
    if node.has_children() && !has {
        return Err(bad(
            node_off + 12,
            "entries point to sub-nodes but the node's has-children flag is clear".into(),
        ));
    }
    Ok(node)
}

/// The parsed `$INDEX_ROOT` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootHeader {
    /// The 16 header bytes as read (kept when the root is rewritten).
    pub raw: [u8; ROOT_HEADER_LEN],
    /// Bytes per index block.
    pub block_size: u32,
}

/// Parses an `$INDEX_ROOT` value of an `$I30` index.
pub fn parse_root(value: &[u8]) -> Result<(RootHeader, Node), NtfsError> {
    const WHAT: &str = "$INDEX_ROOT";
    let Some(raw) = value.get(..ROOT_HEADER_LEN) else {
        return Err(NtfsError::invalid(
            WHAT,
            0,
            format!(
                "value of {} bytes, expected at least {:#x}",
                value.len(),
                ROOT_HEADER_LEN + NODE_HEADER_LEN
            ),
        ));
    };
    let ty = get_le32(raw, 0).unwrap_or(0);
    let coll = get_le32(raw, 4).unwrap_or(0);
    let block_size = get_le32(raw, 8).unwrap_or(0);
    if ty != ATTR_FILE_NAME {
        return Err(NtfsError::Unsupported(format!(
            "$INDEX_ROOT indexes attribute type {ty:#x}; only $FILE_NAME ({ATTR_FILE_NAME:#x}) indexes are handled"
        )));
    }
    if coll != COLLATION_FILE_NAME {
        return Err(NtfsError::Unsupported(format!(
            "$INDEX_ROOT uses collation rule {coll:#x}; only COLLATION_FILE_NAME ({COLLATION_FILE_NAME}) is handled"
        )));
    }
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(NtfsError::invalid(
            WHAT,
            8,
            format!("index block size {block_size} must be a power of two from 512 to 65536"),
        ));
    }
    let node = parse_node(value, ROOT_HEADER_LEN, WHAT)?;
    let mut r = [0u8; ROOT_HEADER_LEN];
    r.copy_from_slice(raw);
    Ok((RootHeader { raw: r, block_size }, node))
}

/// Serializes a root: header, node header, entries.
pub fn root_bytes(hdr: &RootHeader, node: &Node) -> Vec<u8> {
    let used = NODE_HEADER_LEN + node.entries_len();
    let mut out = Vec::with_capacity(ROOT_HEADER_LEN + used);
    out.extend_from_slice(&hdr.raw);
    out.extend_from_slice(&(NODE_HEADER_LEN as u32).to_le_bytes());
    out.extend_from_slice(&(used as u32).to_le_bytes());
    out.extend_from_slice(&(used as u32).to_le_bytes());
    out.extend_from_slice(&[
        if node.has_children() {
            NODE_HAS_CHILDREN
        } else {
            0
        },
        0,
        0,
        0,
    ]);
    node.write_entries(&mut out);
    out
}

/// Bytes a root holding `node` takes.
pub fn root_len(node: &Node) -> usize {
    ROOT_HEADER_LEN + NODE_HEADER_LEN + node.entries_len()
}

/// The header part (through the update sequence array) of an index block, kept between a read
/// and the following write so the update sequence number and LSN carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTemplate {
    /// Bytes `0..entries_start` of the block.
    pub head: Vec<u8>,
}

impl BlockTemplate {
    /// A fresh header for a new block at `vcn`.
    pub fn new(block_size: u32, vcn: u64) -> BlockTemplate {
        let usa_count = block_size as usize / 512 + 1;
        let start = align8(BLOCK_USA_OFFSET + 2 * usa_count);
        let mut head = vec![0u8; start];
        head[0..4].copy_from_slice(INDX_MAGIC);
        head[4..6].copy_from_slice(&(BLOCK_USA_OFFSET as u16).to_le_bytes());
        head[6..8].copy_from_slice(&(usa_count as u16).to_le_bytes());
        head[0x10..0x18].copy_from_slice(&vcn.to_le_bytes());
        BlockTemplate { head }
    }

    /// Bytes the entries of a block may take.
    pub fn capacity(&self, block_size: u32) -> usize {
        (block_size as usize).saturating_sub(self.head.len())
    }
}

/// Parses an index block read from `vcn` (fixups removed).
pub fn parse_block(
    block: &[u8],
    block_size: u32,
    vcn: u64,
) -> Result<(BlockTemplate, Node), NtfsError> {
    let what = format!("index block at VCN {vcn}");
    let bad = |at: u64, d: String| NtfsError::invalid(what.as_str(), at, d);
    if block.len() != block_size as usize {
        return Err(bad(
            0,
            format!("block of {} bytes, expected {block_size}", block.len()),
        ));
    }
    if &block[0..4] != INDX_MAGIC {
        return Err(bad(
            0,
            format!("signature {:02x?}, expected \"INDX\"", &block[0..4]),
        ));
    }
    let usa_ofs = usize::from(get_le16(block, 4).unwrap_or(0));
    let usa_count = usize::from(get_le16(block, 6).unwrap_or(0));
    let usa_end = usa_ofs + 2 * usa_count;
    if usa_ofs < BLOCK_NODE_OFFSET + NODE_HEADER_LEN || usa_end > 512 {
        return Err(bad(
            4,
            format!(
                "update sequence array at {usa_ofs:#x} with {usa_count} entries overlaps the headers or leaves the first sector"
            ),
        ));
    }
    let found_vcn = get_le64(block, 0x10).unwrap_or(0);
    if found_vcn != vcn {
        return Err(bad(
            0x10,
            format!("block records VCN {found_vcn}, expected {vcn}"),
        ));
    }
    let first = get_le32(block, BLOCK_NODE_OFFSET).unwrap_or(0) as usize;
    if BLOCK_NODE_OFFSET + first < usa_end {
        return Err(bad(
            BLOCK_NODE_OFFSET as u64,
            format!(
                "first entry at {:#x} overlaps the update sequence array ending at {usa_end:#x}",
                BLOCK_NODE_OFFSET + first
            ),
        ));
    }
    let node = parse_node(block, BLOCK_NODE_OFFSET, &what)?;
    let start = align8(usa_end).max(BLOCK_NODE_OFFSET + NODE_HEADER_LEN);
    Ok((
        BlockTemplate {
            head: block[..start].to_vec(),
        },
        node,
    ))
}

/// Serializes a block from its template, or `None` when the entries do not fit.
pub fn block_bytes(tmpl: &BlockTemplate, block_size: u32, node: &Node) -> Option<Vec<u8>> {
    let need = node.entries_len();
    if need > tmpl.capacity(block_size) {
        return None;
    }
    let mut out = Vec::with_capacity(block_size as usize);
    out.extend_from_slice(&tmpl.head);
    let first = tmpl.head.len() - BLOCK_NODE_OFFSET;
    let used = first + need;
    let alloc = block_size as usize - BLOCK_NODE_OFFSET;
    let n = BLOCK_NODE_OFFSET;
    out[n..n + 4].copy_from_slice(&(first as u32).to_le_bytes());
    out[n + 4..n + 8].copy_from_slice(&(used as u32).to_le_bytes());
    out[n + 8..n + 12].copy_from_slice(&(alloc as u32).to_le_bytes());
    out[n + 12] = if node.has_children() {
        NODE_HAS_CHILDREN
    } else {
        0
    };
    out[n + 13..n + 16].fill(0);
    node.write_entries(&mut out);
    out.resize(block_size as usize, 0);
    Some(out)
}
