//! The structural check of a hive: checksums, bins, cells, subkey lists, counts, security cells.
//!
//! [`check_bytes`] is a walker of its own, independent of the parser [`Hive`] uses, so that it
//! can judge what the editor writes. It reads the base block, tiles every hive bin with cells,
//! then walks the key tree from the root cell, claiming every cell it reaches: a cell reached
//! twice is reported (and not walked again, which also ends any cycle), and allocated cells
//! never reached are counted as leaks. The work is linear in the size of the input.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Hive;
use crate::bytes::{get_le16, get_le32};

/// Size of the base block; cell offsets are relative to its end.
const BASE: u64 = 4096;
/// `regf`: base block signature.
const SIG_REGF: &[u8; 4] = b"regf";
/// `hbin`: hive bin signature.
const SIG_HBIN: &[u8; 4] = b"hbin";
/// Size of a hive bin header.
const HBIN_HEADER: usize = 32;
/// Largest data segment of a `db` big-data value (and the largest value data a plain data cell
/// holds in hive versions 1.4 and later).
const BIG_DATA_SEGMENT: u32 = 16344;
/// Key node field offsets (from the start of the cell data, after the 4-byte size).
const NK_MIN: usize = 76;
/// An empty cell offset.
const NONE: u32 = 0xFFFF_FFFF;
/// Issues kept in a report; past this, only the count of the rest is kept.
const MAX_ISSUES: usize = 10_000;
/// Leaked cells listed in a report (all are counted).
const MAX_LEAKS_LISTED: usize = 1_000;

/// One problem the check found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckIssue {
    /// Absolute byte offset in the file of the structure at fault.
    pub offset: u64,
    /// The structure, e.g. "subkey list", "security cell".
    pub what: String,
    /// What is wrong.
    pub detail: String,
}

impl std::fmt::Display for CheckIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {:#x}: {}", self.what, self.offset, self.detail)
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// Problems found; empty for a sound hive.
    pub issues: Vec<CheckIssue>,
    /// Problems found beyond the ones kept in `issues`.
    pub issues_omitted: u64,
    /// Allocated cells that nothing in the key tree references (the first ones; all are
    /// counted in `leaked_cells`). A leak wastes space but does not make the hive unsound.
    pub leaks: Vec<CheckIssue>,
    /// Number of leaked cells.
    pub leaked_cells: u64,
    /// Bytes in leaked cells.
    pub leaked_bytes: u64,
    /// Hive bins.
    pub bins: u64,
    /// Keys visited.
    pub keys: u64,
    /// Values visited.
    pub values: u64,
    /// Security cells in the ring.
    pub security_cells: u64,
    /// Bytes in allocated cells.
    pub allocated_bytes: u64,
    /// Bytes in free cells.
    pub free_bytes: u64,
}

impl CheckReport {
    /// No problem found (leaks are not problems).
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty() && self.issues_omitted == 0
    }
}

/// Checks the structure of `hive` (as it would be saved).
pub fn check(hive: &Hive) -> CheckReport {
    check_bytes(&hive.to_bytes())
}

/// Checks the structure of a hive file's bytes (base block and bins), independently of the
/// parser [`Hive`] uses, so it can judge what the editor wrote.
pub fn check_bytes(bytes: &[u8]) -> CheckReport {
    let mut w = Walker {
        bins: &[],
        minor: 0,
        cells: BTreeMap::new(),
        claimed: HashSet::new(),
        report: CheckReport::default(),
    };
    let Some(root) = w.base_block(bytes) else {
        return w.report;
    };
    w.tile_bins();
    w.walk_tree(root);
    w.leaks();
    w.report
}

/// The upper case of one UTF-16 unit, the way the registry compares names: a unit whose upper
/// case is one BMP character maps to it; anything else (surrogates, characters whose upper case
/// is several characters) stays as it is.
pub fn upcase_unit(u: u16) -> u16 {
    if u < 0x80 {
        return (u as u8).to_ascii_uppercase() as u16;
    }
    let Some(c) = char::from_u32(u as u32) else {
        return u;
    };
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(x), None) if (x as u32) <= 0xFFFF => x as u32 as u16,
        _ => u,
    }
}

/// The `lh` hash of a name (its UTF-16 units): h = 37 * h + upcase(unit).
pub fn lh_hash(units: &[u16]) -> u32 {
    units.iter().fold(0u32, |h, &u| {
        h.wrapping_mul(37).wrapping_add(upcase_unit(u) as u32)
    })
}

/// A name as stored in a key or value cell: Latin-1 bytes when `compressed`, UTF-16LE otherwise.
fn name_units(raw: &[u8], compressed: bool) -> Vec<u16> {
    if compressed {
        raw.iter().map(|&b| b as u16).collect()
    } else {
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
}

fn show(units: &[u16]) -> String {
    String::from_utf16_lossy(units)
}

/// A cell found while tiling the bins.
#[derive(Clone, Copy, Debug)]
struct Cell {
    /// Total size, header included.
    size: u32,
    allocated: bool,
}

/// A subkey as read from a subkey list.
struct Entry {
    /// Offset of the key node.
    key: u32,
    /// The list that holds it (for messages).
    list: u32,
    /// The `lf` hint or `lh` hash stored beside it.
    stored: Option<(u8, u32)>,
}

struct Walker<'a> {
    /// The hive bins (file from offset 4096, at most `hive_bins_size` bytes).
    bins: &'a [u8],
    minor: u32,
    /// Cells by offset (relative to the first bin).
    cells: BTreeMap<u32, Cell>,
    /// Cells already reached from the tree.
    claimed: HashSet<u32>,
    report: CheckReport,
}

impl<'a> Walker<'a> {
    fn issue(&mut self, offset: u64, what: &str, detail: impl Into<String>) {
        if self.report.issues.len() >= MAX_ISSUES {
            self.report.issues_omitted += 1;
            return;
        }
        self.report.issues.push(CheckIssue {
            offset,
            what: what.to_string(),
            detail: detail.into(),
        });
    }

    /// Checks the base block; returns the root cell offset when the bins can be walked.
    fn base_block(&mut self, bytes: &'a [u8]) -> Option<u32> {
        let Some(b) = bytes.get(..BASE as usize) else {
            self.issue(
                0,
                "base block",
                format!(
                    "file is {} bytes, shorter than the 4096-byte base block",
                    bytes.len()
                ),
            );
            return None;
        };
        if &b[..4] != SIG_REGF {
            self.issue(
                0,
                "base block",
                format!("signature {:02x?}, expected \"regf\"", &b[..4]),
            );
            return None;
        }
        let field = |at: usize| get_le32(b, at).unwrap_or(0);
        let (primary, secondary) = (field(4), field(8));
        if primary != secondary {
            self.issue(
                4,
                "base block",
                format!(
                    "sequence numbers differ (primary {primary}, secondary {secondary}): the hive \
                     is dirty, its transaction logs hold data not written into it"
                ),
            );
        }
        let (major, minor) = (field(20), field(24));
        self.minor = minor;
        if major != 1 || !(3..=6).contains(&minor) {
            self.issue(
                20,
                "base block",
                format!("version {major}.{minor}, expected 1.3 to 1.6"),
            );
        }
        if field(28) != 0 {
            self.issue(
                28,
                "base block",
                format!("file type {}, expected 0 (primary hive)", field(28)),
            );
        }
        if field(32) != 1 {
            self.issue(
                32,
                "base block",
                format!("file format {}, expected 1", field(32)),
            );
        }
        let mut sum = (0..127).fold(0u32, |x, i| x ^ field(i * 4));
        if sum == 0xFFFF_FFFF {
            sum = 0xFFFF_FFFE;
        } else if sum == 0 {
            sum = 1;
        }
        if field(508) != sum {
            self.issue(
                508,
                "base block",
                format!("checksum {:#010x}, expected {sum:#010x}", field(508)),
            );
        }
        let bins_size = field(40);
        let available = bytes.len() as u64 - BASE;
        if bins_size == 0 || bins_size % 4096 != 0 {
            self.issue(
                40,
                "base block",
                format!("hive bins size {bins_size:#x} is not a non-zero multiple of 4096"),
            );
        }
        let mut len = bins_size as u64;
        if len > available {
            self.issue(
                40,
                "base block",
                format!(
                    "hive bins size {bins_size:#x} goes past the end of the file ({available:#x} \
                     bytes after the base block)"
                ),
            );
            len = available;
        }
        // `len` <= bytes.len() - 4096 was just ensured.
        self.bins = &bytes[BASE as usize..(BASE + len) as usize];
        Some(field(36))
    }

    /// Walks the bins one after the other and tiles each with cells.
    fn tile_bins(&mut self) {
        let bins = self.bins;
        let mut off = 0usize;
        while off < bins.len() {
            let abs = BASE + off as u64;
            if bins.len() - off < HBIN_HEADER {
                self.issue(
                    abs,
                    "hive bin",
                    "truncated bin header at the end of the hive bins",
                );
                return;
            }
            if &bins[off..off + 4] != SIG_HBIN {
                self.issue(
                    abs,
                    "hive bin",
                    format!("signature {:02x?}, expected \"hbin\"", &bins[off..off + 4]),
                );
                return;
            }
            let field_off = get_le32(bins, off + 4).unwrap_or(0);
            if field_off as usize != off {
                self.issue(
                    abs + 4,
                    "hive bin",
                    format!("offset field {field_off:#x}, expected {off:#x}"),
                );
            }
            let size = get_le32(bins, off + 8).unwrap_or(0) as usize;
            if size < 4096 || size % 4096 != 0 {
                self.issue(
                    abs + 8,
                    "hive bin",
                    format!("size {size:#x} is not a non-zero multiple of 4096"),
                );
                return;
            }
            if size > bins.len() - off {
                self.issue(
                    abs + 8,
                    "hive bin",
                    format!(
                        "size {size:#x} goes past the end of the hive bins ({:#x} bytes left)",
                        bins.len() - off
                    ),
                );
                return;
            }
            self.report.bins += 1;
            self.tile_cells(off, off + size);
            off += size;
        }
    }

    /// Tiles the bin `start..end` with cells, recording them.
    fn tile_cells(&mut self, start: usize, end: usize) {
        let mut c = start + HBIN_HEADER;
        while c < end {
            let abs = BASE + c as u64;
            let raw = get_le32(self.bins, c).unwrap_or(0) as i32;
            let size = raw.unsigned_abs() as usize;
            if size < 8 || size % 8 != 0 {
                self.issue(
                    abs,
                    "cell",
                    format!(
                        "size {raw} is not a multiple of 8 of at least 8; rest of the bin skipped"
                    ),
                );
                return;
            }
            if size > end - c {
                self.issue(
                    abs,
                    "cell",
                    format!(
                        "size {size:#x} crosses the end of its bin at {:#x}; rest of the bin skipped",
                        BASE + end as u64
                    ),
                );
                return;
            }
            let allocated = raw < 0;
            if allocated {
                self.report.allocated_bytes += size as u64;
            } else {
                self.report.free_bytes += size as u64;
            }
            // c < bins.len() <= u32::MAX + 4096 is not guaranteed for a 4 GiB file; skip cells
            // whose offset does not fit a cell reference.
            if let Ok(c32) = u32::try_from(c) {
                self.cells.insert(
                    c32,
                    Cell {
                        size: size as u32,
                        allocated,
                    },
                );
            }
            c += size;
        }
    }

    /// The data of the allocated cell at `off`, or an issue naming `what` and its `owner`.
    fn cell(&mut self, off: u32, what: &str, owner: u64) -> Option<&'a [u8]> {
        match self.cells.get(&off).copied() {
            Some(Cell {
                size,
                allocated: true,
            }) => {
                let start = off as usize + 4;
                self.bins.get(start..off as usize + size as usize)
            }
            Some(_) => {
                self.issue(
                    owner,
                    what,
                    format!("refers to cell {:#x}, which is free", BASE + off as u64),
                );
                None
            }
            None => {
                self.issue(
                    owner,
                    what,
                    format!(
                        "refers to {:#x}, which is not the start of a cell",
                        BASE + off as u64
                    ),
                );
                None
            }
        }
    }

    /// Marks the cell at `off` as reached from `what`; false (with an issue) when something
    /// else reached it already.
    fn claim(&mut self, off: u32, what: &str) -> bool {
        if self.claimed.insert(off) {
            return true;
        }
        self.issue(
            BASE + off as u64,
            what,
            "cell is referenced from more than one place (shared or part of a cycle)",
        );
        false
    }

    /// Claims and returns the allocated cell at `off`.
    fn take(&mut self, off: u32, what: &str, owner: u64) -> Option<&'a [u8]> {
        let data = self.cell(off, what, owner)?;
        self.claim(off, what).then_some(data)
    }

    fn walk_tree(&mut self, root: u32) {
        // Key node offset -> references to its security cell.
        let mut sk_refs: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut stack = vec![(root, None::<u32>)];
        let mut root_sk = None;
        while let Some((key, parent)) = stack.pop() {
            let owner = match parent {
                Some(p) => BASE + p as u64,
                None => 36,
            };
            let Some(nk) = self.take(key, "key node", owner) else {
                continue;
            };
            let abs = BASE + key as u64;
            let Some(node) = self.key_node(nk, abs) else {
                continue;
            };
            self.report.keys += 1;
            if let Some(p) = parent {
                if node.parent != p {
                    self.issue(
                        abs + 4 + 16,
                        "key node",
                        format!(
                            "parent {:#x}, expected {:#x} (the key whose list holds it)",
                            BASE + node.parent as u64,
                            BASE + p as u64
                        ),
                    );
                }
            } else {
                root_sk = Some(node.security);
            }
            let e = sk_refs.entry(node.security).or_insert((abs, 0));
            e.1 += 1;
            if node.class_len > 0 {
                if let Some(class) = self.take(node.class, "class name", abs) {
                    if class.len() < node.class_len as usize {
                        self.issue(
                            BASE + node.class as u64,
                            "class name",
                            format!(
                                "cell holds {} bytes, the key says {}",
                                class.len(),
                                node.class_len
                            ),
                        );
                    }
                }
            }
            self.values(&node, abs);
            let subkeys = self.subkeys(&node, abs);
            let mut max_name = 0u32;
            let mut max_class = 0u32;
            for &(sub, name_bytes, class_len) in &subkeys {
                max_name = max_name.max(name_bytes);
                max_class = max_class.max(class_len);
                stack.push((sub, Some(key)));
            }
            if (node.max_name & 0xFFFF) < max_name {
                self.issue(
                    abs + 4 + 52,
                    "key node",
                    format!(
                        "largest subkey name length {}, but a subkey name takes {max_name} bytes",
                        node.max_name & 0xFFFF
                    ),
                );
            }
            if node.max_class < max_class {
                self.issue(
                    abs + 4 + 56,
                    "key node",
                    format!(
                        "largest subkey class length {}, but a subkey class takes {max_class} bytes",
                        node.max_class
                    ),
                );
            }
        }
        self.security(root_sk, &sk_refs);
    }

    /// Decodes a key node's fields (`nk` is the cell data, `abs` its cell's file offset),
    /// reporting why it cannot.
    fn key_node(&mut self, nk: &[u8], abs: u64) -> Option<Node> {
        if nk.len() < NK_MIN || &nk[..2] != b"nk" {
            self.issue(
                abs,
                "key node",
                format!(
                    "signature {:02x?} in a {}-byte cell, expected \"nk\" and at least {NK_MIN} bytes",
                    nk.get(..2).unwrap_or(nk),
                    nk.len()
                ),
            );
            return None;
        }
        let node = parse_node(nk);
        if node.is_none() {
            self.issue(
                abs + 4 + 72,
                "key node",
                format!(
                    "name length {} goes past the end of the {}-byte cell",
                    get_le16(nk, 72).unwrap_or(0),
                    nk.len()
                ),
            );
        }
        node
    }

    /// Checks the value list of a key and its values.
    fn values(&mut self, node: &Node, abs: u64) {
        if node.value_count == 0 {
            return;
        }
        let Some(list) = self.take(node.value_list, "value list", abs) else {
            return;
        };
        let list_abs = BASE + node.value_list as u64;
        let n = node.value_count as usize;
        if list.len() / 4 < n {
            self.issue(
                list_abs,
                "value list",
                format!(
                    "holds {} entries, the key at {abs:#x} says {n} values",
                    list.len() / 4
                ),
            );
        }
        let mut max_name = 0u32;
        let mut max_data = 0u32;
        let mut names: HashSet<Vec<u16>> = HashSet::new();
        for i in 0..n.min(list.len() / 4) {
            let vk_off = get_le32(list, i * 4).unwrap_or(NONE);
            let Some(vk) = self.take(vk_off, "value", list_abs) else {
                continue;
            };
            let vabs = BASE + vk_off as u64;
            if vk.len() < 20 || &vk[..2] != b"vk" {
                self.issue(
                    vabs,
                    "value",
                    format!(
                        "signature {:02x?} in a {}-byte cell, expected \"vk\" and at least 20 bytes",
                        vk.get(..2).unwrap_or(vk),
                        vk.len()
                    ),
                );
                continue;
            }
            self.report.values += 1;
            let name_len = get_le16(vk, 2).unwrap_or(0) as usize;
            let size = get_le32(vk, 4).unwrap_or(0);
            let data_off = get_le32(vk, 8).unwrap_or(NONE);
            let flags = get_le16(vk, 16).unwrap_or(0);
            let Some(raw) = vk.get(20..20 + name_len) else {
                self.issue(
                    vabs + 4 + 2,
                    "value",
                    format!(
                        "name length {name_len} goes past the end of the {}-byte cell",
                        vk.len()
                    ),
                );
                continue;
            };
            let name = name_units(raw, flags & 1 != 0);
            max_name = max_name.max(name.len() as u32 * 2);
            let upper: Vec<u16> = name.iter().map(|&u| upcase_unit(u)).collect();
            if !names.insert(upper) {
                self.issue(
                    vabs,
                    "value",
                    format!(
                        "a value named \"{}\" appears twice in the key at {abs:#x}",
                        show(&name)
                    ),
                );
            }
            let len = size & 0x7FFF_FFFF;
            max_data = max_data.max(len);
            self.value_data(vabs, size, data_off);
        }
        if node.max_value_name < max_name {
            self.issue(
                abs + 4 + 60,
                "key node",
                format!(
                    "largest value name length {}, but a value name takes {max_name} bytes",
                    node.max_value_name
                ),
            );
        }
        if node.max_value_data < max_data {
            self.issue(
                abs + 4 + 64,
                "key node",
                format!(
                    "largest value data size {}, but a value holds {max_data} bytes",
                    node.max_value_data
                ),
            );
        }
    }

    /// Checks where a value's data lives: inline, one data cell, or a `db` big-data record.
    fn value_data(&mut self, vabs: u64, size: u32, data_off: u32) {
        let len = size & 0x7FFF_FFFF;
        if size & 0x8000_0000 != 0 {
            if len > 4 {
                self.issue(
                    vabs + 4 + 4,
                    "value",
                    format!("inline data of {len} bytes, at most 4 fit"),
                );
            }
            return;
        }
        if len == 0 {
            return;
        }
        let Some(data) = self.take(data_off, "value data", vabs) else {
            return;
        };
        let dabs = BASE + data_off as u64;
        if self.minor >= 4 && len > BIG_DATA_SEGMENT && data.get(..2) == Some(b"db") {
            let count = get_le16(data, 2).unwrap_or(0) as u32;
            let list_off = get_le32(data, 4).unwrap_or(NONE);
            let expected = len.div_ceil(BIG_DATA_SEGMENT);
            if count != expected {
                self.issue(
                    dabs,
                    "big data",
                    format!(
                        "{count} segments for {len} bytes, expected {expected} of at most \
                         {BIG_DATA_SEGMENT}"
                    ),
                );
            }
            let Some(list) = self.take(list_off, "big data segment list", dabs) else {
                return;
            };
            let labs = BASE + list_off as u64;
            if list.len() / 4 < count as usize {
                self.issue(
                    labs,
                    "big data segment list",
                    format!("holds {} entries, the record says {count}", list.len() / 4),
                );
            }
            let mut left = len;
            for i in 0..(count as usize).min(list.len() / 4) {
                let seg_off = get_le32(list, i * 4).unwrap_or(NONE);
                let Some(seg) = self.take(seg_off, "big data segment", labs) else {
                    left = left.saturating_sub(BIG_DATA_SEGMENT);
                    continue;
                };
                let want = left.min(BIG_DATA_SEGMENT);
                if (seg.len() as u32) < want {
                    self.issue(
                        BASE + seg_off as u64,
                        "big data segment",
                        format!("cell holds {} bytes, the segment needs {want}", seg.len()),
                    );
                }
                left -= want;
            }
        } else if (data.len() as u64) < len as u64 {
            self.issue(
                dabs,
                "value data",
                format!(
                    "cell holds {} bytes, the value at {vabs:#x} says {len}",
                    data.len()
                ),
            );
        }
    }

    /// Checks the subkey list(s) of a key; returns the subkeys with the UTF-16 byte length of
    /// their names and their class lengths (for the maxima).
    fn subkeys(&mut self, node: &Node, abs: u64) -> Vec<(u32, u32, u32)> {
        if node.subkey_count == 0 {
            return Vec::new();
        }
        let mut entries = Vec::new();
        self.subkey_list(node.subkey_list, abs, true, &mut entries);
        if entries.len() as u64 != node.subkey_count as u64 {
            self.issue(
                abs + 4 + 20,
                "key node",
                format!(
                    "subkey count {}, but its subkey list holds {}",
                    node.subkey_count,
                    entries.len()
                ),
            );
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut prev: Option<Vec<u16>> = None;
        for e in entries {
            // Read the subkey's name without claiming it or reporting about it: the tree walk
            // claims it and reports what is wrong with it.
            let kabs = BASE + e.key as u64;
            let data = match self.cells.get(&e.key) {
                Some(c) if c.allocated => self
                    .bins
                    .get(e.key as usize + 4..e.key as usize + c.size as usize)
                    .unwrap_or(&[]),
                _ => &[],
            };
            let Some(sub) = parse_node(data) else {
                out.push((e.key, 0, 0));
                continue;
            };
            let upper: Vec<u16> = sub.name.iter().map(|&u| upcase_unit(u)).collect();
            if let Some(p) = &prev {
                if *p >= upper {
                    self.issue(
                        BASE + e.list as u64,
                        "subkey list",
                        format!(
                            "not sorted: \"{}\" at {kabs:#x} comes after \"{}\" (names compared \
                             upper-cased as UTF-16 units, strictly increasing)",
                            show(&sub.name),
                            show(p)
                        ),
                    );
                }
            }
            match e.stored {
                Some((b'h', h)) => {
                    let want = lh_hash(&sub.name);
                    if h != want {
                        self.issue(
                            BASE + e.list as u64,
                            "subkey list",
                            format!(
                                "lh hash {h:#010x} for \"{}\" at {kabs:#x}, expected {want:#010x}",
                                show(&sub.name)
                            ),
                        );
                    }
                }
                Some((b'f', hint)) => {
                    // The hint is the first four characters of the name as stored, zero
                    // padded; only checked for names whose first characters are ASCII.
                    let stored = hint.to_le_bytes();
                    let head: Vec<u16> = sub.name.iter().take(4).copied().collect();
                    if head.iter().all(|&u| u < 0x80) {
                        let mut want = [0u8; 4];
                        for (w, &u) in want.iter_mut().zip(&head) {
                            *w = u as u8;
                        }
                        if !stored.eq_ignore_ascii_case(&want) {
                            self.issue(
                                BASE + e.list as u64,
                                "subkey list",
                                format!(
                                    "lf hint {stored:02x?} for \"{}\" at {kabs:#x}, expected {want:02x?}",
                                    show(&sub.name)
                                ),
                            );
                        }
                    }
                }
                _ => {}
            }
            out.push((e.key, sub.name.len() as u32 * 2, sub.class_len as u32));
            prev = Some(upper);
        }
        out
    }

    /// Reads the subkey list at `off` (an index root when `top`) into `out`.
    fn subkey_list(&mut self, off: u32, owner: u64, top: bool, out: &mut Vec<Entry>) {
        let Some(list) = self.take(off, "subkey list", owner) else {
            return;
        };
        let labs = BASE + off as u64;
        let sig = list.get(..2).unwrap_or(list);
        let count = get_le16(list, 2).unwrap_or(0) as usize;
        let width = match sig {
            b"li" | b"ri" => 4,
            b"lf" | b"lh" => 8,
            _ => {
                self.issue(
                    labs,
                    "subkey list",
                    format!("signature {sig:02x?}, expected \"li\", \"lf\", \"lh\" or \"ri\""),
                );
                return;
            }
        };
        if sig == b"ri" && !top {
            self.issue(labs, "subkey list", "an index root inside an index root");
            return;
        }
        let room = list.len().saturating_sub(4) / width;
        if count > room {
            self.issue(
                labs,
                "subkey list",
                format!("count {count} does not fit its {}-byte cell", list.len()),
            );
        }
        if count == 0 {
            self.issue(labs, "subkey list", "empty list");
        }
        for i in 0..count.min(room) {
            let at = 4 + i * width;
            let target = get_le32(list, at).unwrap_or(NONE);
            if sig == b"ri" {
                self.subkey_list(target, labs, false, out);
                continue;
            }
            let stored = match sig {
                b"lf" => Some((b'f', get_le32(list, at + 4).unwrap_or(0))),
                b"lh" => Some((b'h', get_le32(list, at + 4).unwrap_or(0))),
                _ => None,
            };
            out.push(Entry {
                key: target,
                list: off,
                stored,
            });
        }
    }

    /// Walks the security ring from the root key's cell and checks every key's cell is in it
    /// with the right reference count.
    fn security(&mut self, root_sk: Option<u32>, refs: &BTreeMap<u32, (u64, u64)>) {
        let Some(start) = root_sk else {
            return;
        };
        let mut ring: HashMap<u32, u32> = HashMap::new();
        let mut cur = start;
        let mut prev: Option<u32> = None;
        loop {
            let owner = match prev {
                Some(p) => BASE + p as u64,
                None => BASE + start as u64,
            };
            let Some(sk) = self.cell(cur, "security cell", owner) else {
                break;
            };
            let sabs = BASE + cur as u64;
            if sk.len() < 20 || &sk[..2] != b"sk" {
                self.issue(
                    sabs,
                    "security cell",
                    format!(
                        "signature {:02x?} in a {}-byte cell, expected \"sk\" and at least 20 bytes",
                        sk.get(..2).unwrap_or(sk),
                        sk.len()
                    ),
                );
                break;
            }
            if !self.claim(cur, "security cell") {
                break;
            }
            self.report.security_cells += 1;
            let flink = get_le32(sk, 4).unwrap_or(NONE);
            let blink = get_le32(sk, 8).unwrap_or(NONE);
            let count = get_le32(sk, 12).unwrap_or(0);
            let desc_len = get_le32(sk, 16).unwrap_or(0) as u64;
            ring.insert(cur, count);
            if desc_len > sk.len() as u64 - 20 {
                self.issue(
                    sabs + 4 + 16,
                    "security cell",
                    format!(
                        "descriptor of {desc_len} bytes does not fit the {}-byte cell",
                        sk.len()
                    ),
                );
            }
            if let Some(p) = prev {
                if blink != p {
                    self.issue(
                        sabs + 4 + 8,
                        "security cell",
                        format!(
                            "backward link {:#x}, expected {:#x} (the cell whose forward link \
                             leads here)",
                            BASE + blink as u64,
                            BASE + p as u64
                        ),
                    );
                }
            }
            if flink == start {
                let first_blink = self
                    .cells
                    .get(&start)
                    .and_then(|_| get_le32(self.bins, start as usize + 4 + 8));
                if first_blink != Some(cur) {
                    self.issue(
                        BASE + start as u64 + 4 + 8,
                        "security cell",
                        format!(
                            "backward link {:#x} of the first cell, expected {sabs:#x} (the last \
                             cell of the ring)",
                            BASE + first_blink.unwrap_or(NONE) as u64
                        ),
                    );
                }
                break;
            }
            if ring.contains_key(&flink) {
                self.issue(
                    sabs + 4 + 4,
                    "security cell",
                    format!(
                        "forward link {:#x} leads back into the ring without closing it",
                        BASE + flink as u64
                    ),
                );
                break;
            }
            prev = Some(cur);
            cur = flink;
        }
        for (&sk, &(first_key, n)) in refs {
            match ring.get(&sk) {
                None => self.issue(
                    first_key + 4 + 44,
                    "key node",
                    format!(
                        "security cell {:#x} is not in the security ring ({n} keys use it)",
                        BASE + sk as u64
                    ),
                ),
                Some(&count) if count as u64 != n => self.issue(
                    BASE + sk as u64 + 4 + 12,
                    "security cell",
                    format!("reference count {count}, but {n} keys use it"),
                ),
                _ => {}
            }
        }
        for (&sk, &count) in &ring {
            if !refs.contains_key(&sk) {
                self.issue(
                    BASE + sk as u64 + 4 + 12,
                    "security cell",
                    format!("reference count {count}, but no key uses it"),
                );
            }
        }
    }

    /// Counts the allocated cells nothing reached.
    fn leaks(&mut self) {
        let leaked: Vec<(u32, u32)> = self
            .cells
            .iter()
            .filter(|(off, c)| c.allocated && !self.claimed.contains(off))
            .map(|(&off, c)| (off, c.size))
            .collect();
        for (off, size) in leaked {
            self.report.leaked_cells += 1;
            self.report.leaked_bytes += size as u64;
            if self.report.leaks.len() < MAX_LEAKS_LISTED {
                self.report.leaks.push(CheckIssue {
                    offset: BASE + off as u64,
                    what: "cell".into(),
                    detail: format!("allocated cell of {size} bytes that no key references"),
                });
            }
        }
    }
}

/// Decodes a key node's fields from its cell data; `None` when it is no key node.
fn parse_node(nk: &[u8]) -> Option<Node> {
    if nk.len() < NK_MIN || &nk[..2] != b"nk" {
        return None;
    }
    let f = |at: usize| get_le32(nk, at).unwrap_or(0);
    let flags = get_le16(nk, 2).unwrap_or(0);
    let name_len = get_le16(nk, 72).unwrap_or(0) as usize;
    let raw = nk.get(NK_MIN..NK_MIN + name_len)?;
    Some(Node {
        name: name_units(raw, flags & 0x20 != 0),
        parent: f(16),
        subkey_count: f(20),
        subkey_list: f(28),
        value_count: f(36),
        value_list: f(40),
        security: f(44),
        class: f(48),
        max_name: f(52),
        max_class: f(56),
        max_value_name: f(60),
        max_value_data: f(64),
        class_len: get_le16(nk, 74).unwrap_or(0),
    })
}

/// The fields of a key node the check uses.
struct Node {
    name: Vec<u16>,
    parent: u32,
    subkey_count: u32,
    subkey_list: u32,
    value_count: u32,
    value_list: u32,
    security: u32,
    class: u32,
    max_name: u32,
    max_class: u32,
    max_value_name: u32,
    max_value_data: u32,
    class_len: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds hive files cell by cell: one bin (or more) after a base block.
    struct Builder {
        /// Hive bins (relative offsets).
        bins: Vec<u8>,
        /// Next free byte in the last bin.
        next: usize,
        minor: u32,
    }

    impl Builder {
        fn new() -> Builder {
            let mut b = Builder {
                bins: Vec::new(),
                next: 0,
                minor: 5,
            };
            b.new_bin(4096);
            b
        }

        fn new_bin(&mut self, size: usize) {
            let at = self.bins.len();
            self.bins.resize(at + size, 0);
            self.bins[at..at + 4].copy_from_slice(b"hbin"); // signature
            self.bins[at + 4..at + 8].copy_from_slice(&(at as u32).to_le_bytes()); // offset
            self.bins[at + 8..at + 12].copy_from_slice(&(size as u32).to_le_bytes()); // size
            self.next = at + 32;
        }

        /// Allocates a cell for `len` data bytes; returns its offset.
        fn alloc(&mut self, len: usize) -> u32 {
            let size = (len + 4).div_ceil(8) * 8;
            if self.next + size > self.bins.len() {
                self.close_bin();
                self.new_bin((size + 32).div_ceil(4096) * 4096);
            }
            let off = self.next;
            self.bins[off..off + 4].copy_from_slice(&(-(size as i32)).to_le_bytes());
            self.next += size;
            off as u32
        }

        /// Fills the rest of the current bin with one free cell.
        fn close_bin(&mut self) {
            let left = self.bins.len() - self.next;
            if left > 0 {
                let n = self.next;
                self.bins[n..n + 4].copy_from_slice(&(left as i32).to_le_bytes());
            }
            self.next = self.bins.len();
        }

        fn cell(&mut self, data: &[u8]) -> u32 {
            let off = self.alloc(data.len());
            self.write(off, data);
            off
        }

        fn write(&mut self, off: u32, data: &[u8]) {
            let at = off as usize + 4;
            self.bins[at..at + data.len()].copy_from_slice(data);
        }

        fn finish(mut self, root: u32) -> Vec<u8> {
            self.close_bin();
            let mut base = vec![0u8; 4096];
            base[..4].copy_from_slice(b"regf"); // signature
            base[4..8].copy_from_slice(&7u32.to_le_bytes()); // primary sequence
            base[8..12].copy_from_slice(&7u32.to_le_bytes()); // secondary sequence
            base[20..24].copy_from_slice(&1u32.to_le_bytes()); // major version
            base[24..28].copy_from_slice(&self.minor.to_le_bytes()); // minor version
            base[32..36].copy_from_slice(&1u32.to_le_bytes()); // file format
            base[36..40].copy_from_slice(&root.to_le_bytes()); // root cell
            base[40..44].copy_from_slice(&(self.bins.len() as u32).to_le_bytes()); // bins size
            base[44..48].copy_from_slice(&1u32.to_le_bytes()); // clustering factor
            fix_checksum(&mut base);
            base.extend_from_slice(&self.bins);
            base
        }
    }

    fn fix_checksum(file: &mut [u8]) {
        let mut sum = (0..127).fold(0u32, |x, i| x ^ get_le32(file, i * 4).unwrap());
        if sum == 0xFFFF_FFFF {
            sum = 0xFFFF_FFFE;
        } else if sum == 0 {
            sum = 1;
        }
        file[508..512].copy_from_slice(&sum.to_le_bytes());
    }

    /// Key node fields, in the order they appear.
    #[derive(Clone, Default)]
    struct Nk {
        flags: u16,
        parent: u32,
        subkeys: u32,
        list: u32,
        values: u32,
        value_list: u32,
        sk: u32,
        max_name: u32,
        max_value_name: u32,
        max_value_data: u32,
        name: &'static str,
    }

    fn nk(k: &Nk) -> Vec<u8> {
        let mut v = vec![0u8; 76];
        v[..2].copy_from_slice(b"nk"); // signature
        v[2..4].copy_from_slice(&(k.flags | 0x20).to_le_bytes()); // flags: compressed name
        v[16..20].copy_from_slice(&k.parent.to_le_bytes()); // parent
        v[20..24].copy_from_slice(&k.subkeys.to_le_bytes()); // subkey count
        v[28..32].copy_from_slice(&(if k.subkeys > 0 { k.list } else { NONE }).to_le_bytes());
        v[32..36].copy_from_slice(&NONE.to_le_bytes()); // volatile list
        v[36..40].copy_from_slice(&k.values.to_le_bytes()); // value count
        v[40..44].copy_from_slice(&(if k.values > 0 { k.value_list } else { NONE }).to_le_bytes());
        v[44..48].copy_from_slice(&k.sk.to_le_bytes()); // security
        v[48..52].copy_from_slice(&NONE.to_le_bytes()); // class
        v[52..56].copy_from_slice(&k.max_name.to_le_bytes()); // max subkey name
        v[60..64].copy_from_slice(&k.max_value_name.to_le_bytes()); // max value name
        v[64..68].copy_from_slice(&k.max_value_data.to_le_bytes()); // max value data
        v[72..74].copy_from_slice(&(k.name.len() as u16).to_le_bytes()); // name length
        v.extend_from_slice(k.name.as_bytes()); // name (ASCII, compressed)
        v
    }

    fn vk(name: &str, size: u32, data: u32, kind: u32) -> Vec<u8> {
        let mut v = vec![0u8; 20];
        v[..2].copy_from_slice(b"vk"); // signature
        v[2..4].copy_from_slice(&(name.len() as u16).to_le_bytes()); // name length
        v[4..8].copy_from_slice(&size.to_le_bytes()); // data size (bit 31: inline)
        v[8..12].copy_from_slice(&data.to_le_bytes()); // data offset or inline data
        v[12..16].copy_from_slice(&kind.to_le_bytes()); // type
        v[16..18].copy_from_slice(&1u16.to_le_bytes()); // flags: compressed name
        v.extend_from_slice(name.as_bytes());
        v
    }

    fn sk(flink: u32, blink: u32, refs: u32) -> Vec<u8> {
        let mut v = vec![0u8; 20];
        v[..2].copy_from_slice(b"sk"); // signature
        v[4..8].copy_from_slice(&flink.to_le_bytes()); // forward link
        v[8..12].copy_from_slice(&blink.to_le_bytes()); // backward link
        v[12..16].copy_from_slice(&refs.to_le_bytes()); // reference count
        v[16..20].copy_from_slice(&20u32.to_le_bytes()); // descriptor size
        v.extend_from_slice(&[1, 0, 4, 0x80]); // a descriptor header (revision 1, self-relative)
        v.extend_from_slice(&[0; 16]);
        v
    }

    /// Offsets of the cells of [`good`].
    #[derive(Clone, Copy)]
    struct Good {
        root: u32,
        sk: u32,
        alpha: u32,
        beta: u32,
        list: u32,
        values: u32,
        name_vk: u32,
        dw_vk: u32,
        data: u32,
    }

    /// A sound hive: root (subkeys Alpha, beta in an `lh` list; values "Name" = sz, "Dw" =
    /// inline dword), one security cell used by the three keys.
    fn good_with(edit: impl FnOnce(&mut Builder, &mut Good)) -> Vec<u8> {
        let mut b = Builder::new();
        let mut g = Good {
            root: b.alloc(76 + 4),
            sk: b.alloc(40),
            alpha: b.alloc(76 + 5),
            beta: b.alloc(76 + 4),
            list: b.alloc(4 + 16),
            values: b.alloc(8),
            name_vk: b.alloc(20 + 4),
            dw_vk: b.alloc(20 + 2),
            data: b.alloc(10),
        };
        let root = Nk {
            flags: 0x2c,
            parent: 0,
            subkeys: 2,
            list: g.list,
            values: 2,
            value_list: g.values,
            sk: g.sk,
            max_name: 10,
            max_value_name: 8,
            max_value_data: 10,
            name: "ROOT",
        };
        b.write(g.root, &nk(&root));
        b.write(g.sk, &sk(g.sk, g.sk, 3));
        let child = |name| Nk {
            parent: g.root,
            sk: g.sk,
            name,
            ..Nk::default()
        };
        b.write(g.alpha, &nk(&child("Alpha")));
        b.write(g.beta, &nk(&child("beta")));
        let mut list = b"lh".to_vec();
        list.extend_from_slice(&2u16.to_le_bytes());
        for (off, name) in [(g.alpha, "Alpha"), (g.beta, "beta")] {
            list.extend_from_slice(&off.to_le_bytes());
            let units: Vec<u16> = name.encode_utf16().collect();
            list.extend_from_slice(&lh_hash(&units).to_le_bytes());
        }
        b.write(g.list, &list);
        let mut vl = g.name_vk.to_le_bytes().to_vec();
        vl.extend_from_slice(&g.dw_vk.to_le_bytes());
        b.write(g.values, &vl);
        b.write(g.name_vk, &vk("Name", 10, g.data, 1));
        b.write(g.dw_vk, &vk("Dw", 0x8000_0004, 7, 4));
        b.write(g.data, &utf16("abcd\0"));
        edit(&mut b, &mut g);
        b.finish(g.root)
    }

    fn good() -> Vec<u8> {
        good_with(|_, _| {})
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    }

    /// Offsets of the good hive (they do not depend on the edit).
    fn offsets() -> Good {
        let mut out = None;
        good_with(|_, g| {
            out = Some(*g);
        });
        out.unwrap()
    }

    /// Writes `v` at cell-data offset `at` of the cell at `cell` (file bytes).
    fn poke(file: &mut [u8], cell: u32, at: usize, v: &[u8]) {
        let p = 4096 + cell as usize + 4 + at;
        file[p..p + v.len()].copy_from_slice(v);
    }

    fn has(r: &CheckReport, what: &str, detail: &str) -> bool {
        r.issues
            .iter()
            .any(|i| i.what == what && i.detail.contains(detail))
    }

    #[test]
    fn sound_hive_is_clean() {
        let r = check_bytes(&good());
        assert!(r.is_clean(), "{:#?}", r.issues);
        assert_eq!((r.keys, r.values, r.security_cells), (3, 2, 1));
        assert_eq!(r.leaked_cells, 0);
        assert_eq!(r.bins, 1);
        assert_eq!(r.allocated_bytes + r.free_bytes, 4096 - 32);
    }

    #[test]
    fn bad_signature_and_short_file() {
        let mut f = good();
        f[0] = b'x';
        let r = check_bytes(&f);
        assert!(has(&r, "base block", "expected \"regf\""), "{r:#?}");
        let r = check_bytes(&f[..100]);
        assert!(has(&r, "base block", "shorter than"), "{r:#?}");
        assert!(!check_bytes(&[]).is_clean());
    }

    #[test]
    fn bad_checksum() {
        let mut f = good();
        f[508] ^= 1;
        let r = check_bytes(&f);
        assert_eq!(r.issues.len(), 1, "{r:#?}");
        assert_eq!(r.issues[0].offset, 508);
        assert!(r.issues[0].detail.contains("checksum"));
    }

    #[test]
    fn dirty_sequence_numbers() {
        let mut f = good();
        f[4] = 8; // primary 8, secondary 7
        fix_checksum(&mut f);
        let r = check_bytes(&f);
        assert!(has(&r, "base block", "sequence numbers differ"), "{r:#?}");
    }

    #[test]
    fn bad_version() {
        let mut f = good();
        f[24] = 9;
        fix_checksum(&mut f);
        assert!(has(&check_bytes(&f), "base block", "version 1.9"));
    }

    #[test]
    fn bins_size_not_matching() {
        let mut f = good();
        f[40..44].copy_from_slice(&8192u32.to_le_bytes());
        fix_checksum(&mut f);
        let r = check_bytes(&f);
        assert!(has(&r, "base block", "past the end of the file"), "{r:#?}");
        f[40..44].copy_from_slice(&100u32.to_le_bytes());
        fix_checksum(&mut f);
        let r = check_bytes(&f);
        assert!(
            has(&r, "base block", "not a non-zero multiple of 4096"),
            "{r:#?}"
        );
    }

    #[test]
    fn bin_offset_and_signature() {
        let mut f = good();
        f[4096 + 4] = 0x10;
        let r = check_bytes(&f);
        assert!(has(&r, "hive bin", "offset field 0x10"), "{r:#?}");
        let mut f = good();
        f[4096] = b'H';
        let r = check_bytes(&f);
        assert!(has(&r, "hive bin", "expected \"hbin\""), "{r:#?}");
        let mut f = good();
        f[4096 + 8..4096 + 12].copy_from_slice(&8192u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(
            has(&r, "hive bin", "past the end of the hive bins"),
            "{r:#?}"
        );
    }

    #[test]
    fn cell_size_problems() {
        let g = offsets();
        // The data cell's size made odd.
        let mut f = good();
        let p = 4096 + g.data as usize;
        f[p..p + 4].copy_from_slice(&(-13i32).to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "cell", "not a multiple of 8"), "{r:#?}");
        // The last (free) cell made to cross the bin's end.
        let mut f = good();
        let mut c = 4096 + 32;
        loop {
            let s = (get_le32(&f, c).unwrap() as i32).unsigned_abs() as usize;
            if c + s == f.len() {
                break;
            }
            c += s;
        }
        let s = (get_le32(&f, c).unwrap() as i32).unsigned_abs() + 8;
        f[c..c + 4].copy_from_slice(&(s as i32).to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "cell", "crosses the end of its bin"), "{r:#?}");
    }

    #[test]
    fn unsorted_subkey_list() {
        let g = offsets();
        let mut f = good();
        // Swap the two (offset, hash) entries of the lh list.
        let p = 4096 + g.list as usize + 4 + 4;
        let (a, b) = (f[p..p + 8].to_vec(), f[p + 8..p + 16].to_vec());
        f[p..p + 8].copy_from_slice(&b);
        f[p + 8..p + 16].copy_from_slice(&a);
        let r = check_bytes(&f);
        assert!(has(&r, "subkey list", "not sorted"), "{r:#?}");
        assert_eq!(r.issues.len(), 1, "{r:#?}");
    }

    #[test]
    fn wrong_lh_hash() {
        let g = offsets();
        let mut f = good();
        poke(&mut f, g.list, 8, &0x1234u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "subkey list", "lh hash 0x00001234"), "{r:#?}");
    }

    #[test]
    fn wrong_lf_hint_and_li_list() {
        let g = offsets();
        let mut f = good();
        poke(&mut f, g.list, 0, b"lf");
        // Hints: "Alph" is right, "xx" for beta is wrong.
        poke(&mut f, g.list, 8, b"Alph");
        poke(&mut f, g.list, 16, b"xx\0\0");
        let r = check_bytes(&f);
        assert_eq!(r.issues.len(), 1, "{r:#?}");
        assert!(has(&r, "subkey list", "lf hint"), "{r:#?}");
        // The same entries as an li list (4 bytes each): the count of 2 reads two entries.
        let mut f = good();
        poke(&mut f, g.list, 0, b"li");
        poke(&mut f, g.list, 4, &g.alpha.to_le_bytes());
        poke(&mut f, g.list, 8, &g.beta.to_le_bytes());
        let r = check_bytes(&f);
        assert!(r.is_clean(), "{r:#?}");
        assert_eq!(r.keys, 3);
    }

    #[test]
    fn index_root() {
        // root -> ri -> [li(Alpha), lh(beta)]
        let f = good_with(|b, g| {
            let li = {
                let mut v = b"li".to_vec();
                v.extend_from_slice(&1u16.to_le_bytes());
                v.extend_from_slice(&g.alpha.to_le_bytes());
                b.cell(&v)
            };
            let lh = {
                let mut v = b"lh".to_vec();
                v.extend_from_slice(&1u16.to_le_bytes());
                v.extend_from_slice(&g.beta.to_le_bytes());
                v.extend_from_slice(&lh_hash(&[98, 101, 116, 97]).to_le_bytes());
                b.cell(&v)
            };
            let mut ri = b"ri".to_vec();
            ri.extend_from_slice(&2u16.to_le_bytes());
            ri.extend_from_slice(&li.to_le_bytes());
            ri.extend_from_slice(&lh.to_le_bytes());
            b.write(g.list, &ri);
        });
        let r = check_bytes(&f);
        assert!(r.is_clean(), "{r:#?}");
        assert_eq!(r.keys, 3);
    }

    #[test]
    fn wrong_subkey_count() {
        let g = offsets();
        let mut f = good();
        poke(&mut f, g.root, 20, &3u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(
            has(
                &r,
                "key node",
                "subkey count 3, but its subkey list holds 2"
            ),
            "{r:#?}"
        );
        // The list's own count larger than its cell.
        let mut f = good();
        poke(&mut f, g.list, 2, &200u16.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "subkey list", "does not fit"), "{r:#?}");
    }

    #[test]
    fn maxima() {
        let g = offsets();
        // Smaller than the longest subkey name (Alpha: 10 bytes) is a problem ...
        let mut f = good();
        poke(&mut f, g.root, 52, &8u32.to_le_bytes());
        assert!(has(
            &check_bytes(&f),
            "key node",
            "largest subkey name length 8"
        ));
        // ... larger is not, and only the low 16 bits count.
        let mut f = good();
        poke(&mut f, g.root, 52, &0x0001_0040u32.to_le_bytes());
        assert!(check_bytes(&f).is_clean());
        let mut f = good();
        poke(&mut f, g.root, 52, &0x0001_0004u32.to_le_bytes());
        assert!(!check_bytes(&f).is_clean());
        // Value name ("Name": 8 bytes) and data (10 bytes).
        let mut f = good();
        poke(&mut f, g.root, 60, &6u32.to_le_bytes());
        poke(&mut f, g.root, 64, &9u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "key node", "largest value name length 6"), "{r:#?}");
        assert!(has(&r, "key node", "largest value data size 9"), "{r:#?}");
    }

    #[test]
    fn bad_parent_pointer() {
        let g = offsets();
        let mut f = good();
        poke(&mut f, g.beta, 16, &g.alpha.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "key node", "parent"), "{r:#?}");
        assert_eq!(r.issues[0].offset, 4096 + g.beta as u64 + 4 + 16);
    }

    #[test]
    fn security_refcount() {
        let g = offsets();
        let mut f = good();
        poke(&mut f, g.sk, 12, &2u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(
            has(&r, "security cell", "reference count 2, but 3 keys use it"),
            "{r:#?}"
        );
    }

    #[test]
    fn security_ring() {
        // A second sk for beta, left out of the ring.
        let f = good_with(|b, g| {
            let other = b.cell(&sk(g.sk, g.sk, 1));
            b.write(g.sk, &sk(g.sk, g.sk, 2));
            let mut n = nk(&Nk {
                parent: g.root,
                sk: other,
                name: "beta",
                ..Nk::default()
            });
            n.truncate(80);
            b.write(g.beta, &n);
        });
        let r = check_bytes(&f);
        assert!(has(&r, "key node", "is not in the security ring"), "{r:#?}");
        assert_eq!(r.leaked_cells, 1);
        // The same cell in the ring: clean.
        let f = good_with(|b, g| {
            let other = b.alloc(40);
            b.write(other, &sk(g.sk, g.sk, 1));
            b.write(g.sk, &sk(other, other, 2));
            b.write(
                g.beta,
                &nk(&Nk {
                    parent: g.root,
                    sk: other,
                    name: "beta",
                    ..Nk::default()
                }),
            );
        });
        let r = check_bytes(&f);
        assert!(r.is_clean(), "{r:#?}");
        assert_eq!(r.security_cells, 2);
        // Broken backward link.
        let g = offsets();
        let mut f = good();
        poke(&mut f, g.sk, 8, &g.root.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "security cell", "backward link"), "{r:#?}");
        // A forward link into a non-sk cell.
        let mut f = good();
        poke(&mut f, g.sk, 4, &g.data.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "security cell", "expected \"sk\""), "{r:#?}");
    }

    #[test]
    fn shared_cells_and_cycles() {
        let g = offsets();
        // Both value list entries point at the same value.
        let mut f = good();
        poke(&mut f, g.values, 4, &g.name_vk.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "value", "more than one place"), "{r:#?}");
        // Alpha's subkey list is the root's list: a cycle.
        let mut f = good();
        poke(&mut f, g.alpha, 20, &2u32.to_le_bytes());
        poke(&mut f, g.alpha, 28, &g.list.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "subkey list", "more than one place"), "{r:#?}");
        // Alpha lists the root as its subkey.
        let f = good_with(|b, g| {
            let mut li = b"li".to_vec();
            li.extend_from_slice(&1u16.to_le_bytes());
            li.extend_from_slice(&g.root.to_le_bytes());
            let li = b.cell(&li);
            let p = g.alpha as usize + 4;
            b.bins[p + 20..p + 24].copy_from_slice(&1u32.to_le_bytes());
            b.bins[p + 28..p + 32].copy_from_slice(&li.to_le_bytes());
            b.bins[p + 52..p + 56].copy_from_slice(&8u32.to_le_bytes());
        });
        let r = check_bytes(&f);
        assert!(has(&r, "key node", "more than one place"), "{r:#?}");
        assert_eq!(r.keys, 3);
    }

    #[test]
    fn bad_subkey_reported_once() {
        // beta's entry points at a cell that is not a key node.
        let f = good_with(|b, g| {
            let junk = b.cell(&[0x41; 90]);
            let p = g.list as usize + 4 + 12;
            b.bins[p..p + 4].copy_from_slice(&junk.to_le_bytes());
        });
        let r = check_bytes(&f);
        let nk: Vec<_> = r.issues.iter().filter(|i| i.what == "key node").collect();
        assert_eq!(nk.len(), 1, "{r:#?}");
        assert!(nk[0].detail.contains("expected \"nk\""), "{r:#?}");
        // And at a free cell.
        let g = offsets();
        let mut f = good();
        let last_free = {
            let mut c = 4096 + 32;
            loop {
                let s = get_le32(&f, c).unwrap() as i32;
                if s > 0 {
                    break c - 4096;
                }
                c += s.unsigned_abs() as usize;
            }
        };
        poke(&mut f, g.list, 12, &(last_free as u32).to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "key node", "which is free"), "{r:#?}");
    }

    #[test]
    fn leaks_are_counted_not_problems() {
        let f = good_with(|b, _| {
            b.cell(&[0; 20]);
        });
        let r = check_bytes(&f);
        assert!(r.is_clean(), "{r:#?}");
        assert_eq!(r.leaked_cells, 1);
        assert_eq!(r.leaked_bytes, 24);
        assert_eq!(r.leaks.len(), 1);
    }

    #[test]
    fn value_problems() {
        let g = offsets();
        // Data size larger than its cell.
        let mut f = good();
        poke(&mut f, g.name_vk, 4, &100u32.to_le_bytes());
        poke(&mut f, g.root, 64, &100u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "value data", "cell holds 12 bytes"), "{r:#?}");
        // Inline data of more than 4 bytes.
        let mut f = good();
        poke(&mut f, g.dw_vk, 4, &0x8000_0008u32.to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "value", "inline data of 8 bytes"), "{r:#?}");
        // Value list pointing into the middle of a cell.
        let mut f = good();
        poke(&mut f, g.values, 0, &(g.name_vk + 8).to_le_bytes());
        let r = check_bytes(&f);
        assert!(has(&r, "value", "not the start of a cell"), "{r:#?}");
        // A vk signature damaged.
        let mut f = good();
        poke(&mut f, g.dw_vk, 0, b"vx");
        assert!(has(&check_bytes(&f), "value", "expected \"vk\""));
        // Two values of the same name (case-insensitive).
        let mut f = good();
        poke(&mut f, g.dw_vk, 2, &4u16.to_le_bytes());
        poke(&mut f, g.dw_vk, 20, b"NA");
        let f2 = {
            // "NA" + the 2 bytes after it in the cell must spell "NAME"; rewrite the cell.
            let mut f2 = f.clone();
            let mut v = vk("NAME", 0x8000_0004, 7, 4);
            v.truncate(24);
            poke(&mut f2, g.dw_vk, 0, &v);
            f2
        };
        assert!(has(&check_bytes(&f2), "value", "appears twice"));
    }

    #[test]
    fn big_data() {
        let len = 20000u32;
        let f = good_with(|b, g| {
            let s1 = b.alloc(16344);
            let s2 = b.alloc((len - 16344) as usize);
            let mut l = s1.to_le_bytes().to_vec();
            l.extend_from_slice(&s2.to_le_bytes());
            let list = b.cell(&l);
            let mut db = b"db".to_vec();
            db.extend_from_slice(&2u16.to_le_bytes());
            db.extend_from_slice(&list.to_le_bytes());
            let rec = b.cell(&db);
            b.write(g.name_vk, &vk("Name", len, rec, 3));
            let p = g.root as usize + 4 + 64;
            b.bins[p..p + 4].copy_from_slice(&len.to_le_bytes());
            // The old data cell is now unreferenced: free it.
            let d = g.data as usize;
            let s = (get_le32(&b.bins, d).unwrap() as i32).unsigned_abs();
            b.bins[d..d + 4].copy_from_slice(&(s as i32).to_le_bytes());
        });
        let r = check_bytes(&f);
        assert!(r.is_clean(), "{r:#?}");
        assert_eq!(r.leaked_cells, 0);
        assert!(r.bins > 1);
        // The record's segment count wrong.
        let mut f2 = f.clone();
        let mut c = 4096 + 32;
        while c < f2.len() {
            let s = (get_le32(&f2, c).unwrap() as i32).unsigned_abs() as usize;
            if f2.get(c + 4..c + 6) == Some(b"db") {
                f2[c + 6..c + 8].copy_from_slice(&3u16.to_le_bytes());
            }
            c += if s == 0 { 8 } else { s };
            if c % 4096 == 0 && f2.get(c..c + 4) == Some(b"hbin") {
                c += 32;
            }
        }
        let r = check_bytes(&f2);
        assert!(has(&r, "big data", "3 segments"), "{r:#?}");
    }

    #[test]
    fn hash_and_upcase() {
        assert_eq!(lh_hash(&[]), 0);
        // "ab": 37 * 'A' + 'B'.
        assert_eq!(lh_hash(&[97, 98]), 37 * 65 + 66);
        assert_eq!(upcase_unit(0xE4), 0xC4); // ä -> Ä
        assert_eq!(upcase_unit(0xDF), 0xDF); // ß has no one-character upper case
        assert_eq!(upcase_unit(0xD800), 0xD800); // a lone surrogate stays
    }

    /// Every truncation and many corruptions of the sound hive: no panic.
    #[test]
    fn hostile_bytes_never_panic() {
        let f = good();
        for n in 0..f.len() {
            let _ = check_bytes(&f[..n]);
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..3000 {
            let mut g = f.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = 4096 + (x as usize % (g.len() - 4096));
                g[p] = (x >> 32) as u8;
            }
            let _ = check_bytes(&g);
        }
    }
}
