//! The structural check of a hive: checksums, bins, cells, subkey lists, counts, security cells.
//!
//! [`check_bytes`] is a walker of its own, independent of the parser [`Hive`] uses, so that it
//! can judge what the editor writes. It reads the base block, tiles every hive bin with cells,
//! then walks the key tree from the root cell, claiming every cell it reaches: a cell reached
//! twice is reported (and not walked again, which also ends any cycle), and allocated cells
//! never reached are counted as leaks. The work is linear in the size of the input.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Hive;

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

fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
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
        let field = |at: usize| le32(b, at).unwrap_or(0);
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
            let field_off = le32(bins, off + 4).unwrap_or(0);
            if field_off as usize != off {
                self.issue(
                    abs + 4,
                    "hive bin",
                    format!("offset field {field_off:#x}, expected {off:#x}"),
                );
            }
            let size = le32(bins, off + 8).unwrap_or(0) as usize;
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
            let raw = le32(self.bins, c).unwrap_or(0) as i32;
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

    /// Decodes a key node's fields (`nk` is the cell data, `abs` its cell's file offset).
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
        let f = |at: usize| le32(nk, at).unwrap_or(0);
        let flags = le16(nk, 2).unwrap_or(0);
        let name_len = le16(nk, 72).unwrap_or(0) as usize;
        let Some(raw) = nk.get(NK_MIN..NK_MIN + name_len) else {
            self.issue(
                abs + 4 + 72,
                "key node",
                format!(
                    "name length {name_len} goes past the end of the {}-byte cell",
                    nk.len()
                ),
            );
            return None;
        };
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
            class_len: le16(nk, 74).unwrap_or(0),
        })
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
            let vk_off = le32(list, i * 4).unwrap_or(NONE);
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
            let name_len = le16(vk, 2).unwrap_or(0) as usize;
            let size = le32(vk, 4).unwrap_or(0);
            let data_off = le32(vk, 8).unwrap_or(NONE);
            let flags = le16(vk, 16).unwrap_or(0);
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
            let count = le16(data, 2).unwrap_or(0) as u32;
            let list_off = le32(data, 4).unwrap_or(NONE);
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
                let seg_off = le32(list, i * 4).unwrap_or(NONE);
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
            // Read the subkey's name without claiming it (the tree walk claims it).
            let Some(nk) = self.cells.get(&e.key).copied().filter(|c| c.allocated) else {
                self.issue(
                    BASE + e.list as u64,
                    "subkey list",
                    format!("entry {:#x} is not an allocated cell", BASE + e.key as u64),
                );
                continue;
            };
            let data = self
                .bins
                .get(e.key as usize + 4..e.key as usize + nk.size as usize)
                .unwrap_or(&[]);
            let kabs = BASE + e.key as u64;
            let Some(sub) = self.key_node(data, kabs) else {
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
        let count = le16(list, 2).unwrap_or(0) as usize;
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
            let target = le32(list, at).unwrap_or(NONE);
            if sig == b"ri" {
                self.subkey_list(target, labs, false, out);
                continue;
            }
            let stored = match sig {
                b"lf" => Some((b'f', le32(list, at + 4).unwrap_or(0))),
                b"lh" => Some((b'h', le32(list, at + 4).unwrap_or(0))),
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
            let flink = le32(sk, 4).unwrap_or(NONE);
            let blink = le32(sk, 8).unwrap_or(NONE);
            let count = le32(sk, 12).unwrap_or(0);
            let desc_len = le32(sk, 16).unwrap_or(0) as u64;
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
                    .and_then(|_| le32(self.bins, start as usize + 4 + 8));
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
