//! Registry hive (regf) reader and editor.
//!
//! A [`Hive`] holds the whole hive file in memory (a 12 MiB SYSTEM hive is nothing), parses
//! cells on demand with bounds-checked reads, and records which 4096-byte pages an edit touched
//! so that [`Hive::save`] writes back only those pages plus the base block.
//!
//! Layout of the module (one file per on-disk structure):
//! `base` (base block), `cell` (hive bins, cells, allocator), `key` (`nk`), `value` (`vk`, `db`
//! big data), `list` (`li`/`lf`/`lh`/`ri` subkey lists), `security` (`sk`), `data` (value types
//! and data decoding), `log` (transaction-log replay), `reg` (`.reg` import/export), `check`
//! (structural check).
//!
//! ```no_run
//! use diskconv::guest::hive::{Hive, HiveOpenOptions, RegData};
//!
//! let mut hive = Hive::open("SYSTEM".as_ref(), &HiveOpenOptions::default())?;
//! let svc = hive.create_key("ControlSet001\\Services\\viostor")?;
//! hive.set_data(svc, "Start", &RegData::Dword(0))?;
//! hive.save()?;
//! # Ok::<(), diskconv::Error>(())
//! ```

pub mod base;
pub mod cell;
pub mod check;
pub mod data;
mod error;
pub mod key;
pub mod list;
pub mod log;
pub mod reg;
pub mod security;
pub mod value;

use std::path::{Path, PathBuf};

pub use base::BaseBlock;
pub use data::{RegData, RegType};
pub use error::HiveError;

use cell::{Cells, abs};
use key::{KeyNode, NIL};
use security::SecurityNode;
use value::ValueNode;

use crate::bytes::le32;
use crate::error::{Error, Result};

/// Identifies a key inside one [`Hive`]: the offset of its key node cell relative to the first
/// hive bin. Valid until the key is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

/// A value as stored: its name (empty for the default value), type and raw data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegValue {
    /// The name; the empty string is the key's default value (`@` in `.reg` files).
    pub name: String,
    /// The type.
    pub kind: RegType,
    /// The raw bytes (big data reassembled, inline data cut to its length).
    pub data: Vec<u8>,
}

impl RegValue {
    /// The decoded data.
    pub fn decoded(&self) -> RegData {
        RegData::decode(self.kind, &self.data)
    }

    /// The FILETIME this value holds, when its type says it is one: a device property of type
    /// `DEVPROP_TYPE_FILETIME` ([`RegType::DEVPROP_FILETIME`]) with 8 bytes of data. (A
    /// `REG_QWORD` or `REG_BINARY` may hold a FILETIME too, but nothing in the hive says so.)
    pub fn filetime(&self) -> Option<u64> {
        if self.kind != RegType::DEVPROP_FILETIME {
            return None;
        }
        let b: [u8; 8] = self.data.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// What a key node says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's name (the root key's name is whatever Windows stored, e.g. `ROOT` or
    /// `CMI-CreateHive{...}`).
    pub name: String,
    /// The class name, if the key has one.
    pub class: Option<String>,
    /// Last written timestamp (FILETIME).
    pub last_written: u64,
    /// Number of (stable) subkeys.
    pub subkey_count: u32,
    /// Number of values.
    pub value_count: u32,
    /// Key node flags (`KEY_HIVE_ENTRY` 0x4, `KEY_NO_DELETE` 0x8, `KEY_COMP_NAME` 0x20, ...).
    pub flags: u16,
}

/// How [`Hive::open`] treats a dirty hive (one whose transaction logs hold data not yet written
/// into it).
#[derive(Clone, Debug, Default)]
pub struct HiveOpenOptions {
    /// Transaction logs to use. When empty, `<hive>.LOG`, `<hive>.LOG1` and `<hive>.LOG2` beside
    /// the hive are used (the extension matched without regard to case).
    pub logs: Vec<PathBuf>,
    /// Open a dirty hive whose logs are missing or unusable for editing anyway, losing what the
    /// logs held. Without it, such a hive opens read-only (reads work, edits fail).
    pub accept_data_loss: bool,
}

/// What opening did about the transaction logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The hive was dirty.
    pub was_dirty: bool,
    /// The logs that were read, in the order they were applied.
    pub logs_used: Vec<PathBuf>,
    /// Number of log entries (new format) or dirty pages (old format) applied.
    pub entries_applied: usize,
    /// The base block was taken from a log because the hive's own was damaged.
    pub base_block_from_log: bool,
    /// A dirty hive was opened without its logged data (`accept_data_loss`).
    pub data_lost: bool,
    /// Why the hive needed recovery and why a log or log entry was not used (one line each,
    /// naming the file and the offset), e.g. a bad hash or a gap in sequence numbers.
    pub notes: Vec<String>,
    /// For a dirty hive opened by [`Hive::open`], the logs looked for: the names given, or
    /// `<hive>.LOG`, `<hive>.LOG1` and `<hive>.LOG2` beside it (matched in any case).
    pub logs_looked_for: Vec<PathBuf>,
}

/// What [`Hive::save`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Bytes written, base block included.
    pub bytes_written: u64,
    /// 4096-byte pages written after the base block.
    pub pages_written: u64,
    /// Size of the file afterwards.
    pub file_size: u64,
}

/// A registry hive in memory.
#[derive(Debug)]
pub struct Hive {
    base: BaseBlock,
    /// The hive bins (the file from offset 4096 on, `hive_bins_size` bytes), free cells and
    /// touched pages.
    cells: Cells,
    path: Option<PathBuf>,
    recovery: RecoveryReport,
    /// Edits are refused: the hive is dirty and its logs were not replayed.
    read_only_dirty: bool,
    /// Something changed since opening or the last save.
    modified: bool,
    /// The lock of the file at `path`, when it was opened with [`Hive::open_for_edit`].
    lock: Option<crate::files::ImageLock>,
}

/// The deepest key path accepted (Windows' own limit is 512 levels).
pub const MAX_DEPTH: usize = 512;

impl Hive {
    /// Opens the hive at `path`: reads it whole, replays its transaction logs in memory when it
    /// is dirty (see [`HiveOpenOptions`]), and validates the base block and the bins. The file
    /// is not modified until [`Hive::save`].
    pub fn open(path: &Path, opts: &HiveOpenOptions) -> Result<Hive> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io("reading the hive", e))
            .map_err(|e| e.in_file(path))?;
        let log_paths = if opts.logs.is_empty() {
            log::find_logs(path)
        } else {
            opts.logs.clone()
        };
        let mut logs = Vec::new();
        for p in &log_paths {
            let b = std::fs::read(p)
                .map_err(|e| Error::io("reading a transaction log", e))
                .map_err(|e| e.in_file(p))?;
            logs.push((p.clone(), b));
        }
        let mut hive = Hive::from_bytes_with_logs(bytes, &logs, opts.accept_data_loss)
            .map_err(|e| e.in_file(path))?;
        hive.path = Some(path.to_path_buf());
        if hive.recovery.was_dirty {
            hive.recovery.logs_looked_for = if opts.logs.is_empty() {
                log::default_log_names(path)
            } else {
                opts.logs.clone()
            };
        }
        Ok(hive)
    }

    /// [`Hive::open`] for an edit in place: the file's [`ImageLock`](crate::files::ImageLock) is
    /// taken before it is read and held until the hive is dropped (or saved whole with
    /// [`Hive::save_as`], which replaces the file), so another process editing it meanwhile is refused ([`Error::Busy`],
    /// naming the holder) and no edit is lost between the read and [`Hive::save`].
    pub fn open_for_edit(path: &Path, opts: &HiveOpenOptions) -> Result<Hive> {
        let lock = match crate::files::ImageLock::acquire(path) {
            Ok(l) => l,
            Err(e) if e.kind() == crate::error::ErrorKind::Busy => return Err(e),
            // A file that cannot be opened: reading it says why, in the words of `open`
            // (should it read, `save` takes the lock).
            Err(_) => return Hive::open(path, opts),
        };
        let mut hive = Hive::open(path, opts)?;
        hive.lock = Some(lock);
        Ok(hive)
    }

    /// When the hive is dirty and its transaction logs were not replayed (none found, none
    /// usable, or the loss accepted), a one-line warning that what it shows may be stale: why
    /// (the recovery notes) and which logs were looked for. `None` for a clean hive and for one
    /// whose logs were replayed.
    pub fn stale_warning(&self) -> Option<String> {
        let r = &self.recovery;
        if !r.was_dirty || !(self.read_only_dirty || r.data_lost) {
            return None;
        }
        let looked = if r.logs_looked_for.is_empty() {
            "no log was given".to_string()
        } else {
            let names: Vec<String> = r
                .logs_looked_for
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!("logs looked for: {}", names.join(", "))
        };
        let why = if r.notes.is_empty() {
            "the hive is dirty".to_string()
        } else {
            r.notes.join("; ")
        };
        Some(format!(
            "{why} ({looked}): what the hive shows may be stale, since changes Windows wrote only \
             to its logs are missing"
        ))
    }

    /// Parses a clean hive from its bytes. A dirty hive opens read-only (its recovery report
    /// says so); use [`Hive::from_bytes_with_logs`] to replay its logs.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Hive> {
        Hive::from_bytes_with_logs(bytes, &[], false)
    }

    /// Parses a hive from its bytes, replaying `logs` (name, bytes) in memory when it is dirty.
    pub fn from_bytes_with_logs(
        bytes: Vec<u8>,
        logs: &[(PathBuf, Vec<u8>)],
        accept_data_loss: bool,
    ) -> Result<Hive> {
        let prepared = log::prepare(bytes, logs, accept_data_loss)?;
        let mut hive = Hive::parse(prepared.bytes)?;
        hive.read_only_dirty = prepared.read_only;
        hive.recovery = prepared.report;
        let r = &hive.recovery;
        if r.was_dirty && !r.data_lost && r.entries_applied > 0 {
            // The file does not hold the recovered state: the next save writes every page.
            let len = hive.cells.bytes.len();
            hive.cells.touch(0, len);
        }
        Ok(hive)
    }

    /// Parses a hive that needs no log replay (the base block's dirty state is ignored).
    fn parse(mut bytes: Vec<u8>) -> Result<Hive> {
        let base = BaseBlock::parse(&bytes, 0)?;
        let size = base.hive_bins_size() as usize;
        let end = base::BASE_BLOCK_SIZE + size;
        if bytes.len() < end {
            return Err(HiveError::corrupt(
                "bins",
                bytes.len() as u64,
                format!(
                    "the base block says the hive bins end at {end:#x}, the file ends at {:#x}: the hive is truncated",
                    bytes.len()
                ),
            )
            .into());
        }
        bytes.truncate(end);
        let bins = bytes.split_off(base::BASE_BLOCK_SIZE);
        let mut cells = Cells::parse(bins)?;
        cells.now = filetime_now();
        let hive = Hive {
            base,
            cells,
            path: None,
            recovery: RecoveryReport::default(),
            read_only_dirty: false,
            modified: false,
            lock: None,
        };
        KeyNode::read(&hive.cells, hive.base.root_cell()).map_err(|e| match e {
            HiveError::Structure(crate::error::StructureError { detail, .. }) => {
                HiveError::corrupt(
                    "root key",
                    abs(hive.base.root_cell()),
                    format!("the base block's root cell is not a key node: {detail}"),
                )
            }
            e => e,
        })?;
        Ok(hive)
    }

    fn nk(&self, key: KeyId) -> std::result::Result<KeyNode, HiveError> {
        KeyNode::read(&self.cells, key.0)
    }

    /// Subkeys with their hints, validated: each is a key node whose parent is `key`.
    fn subkey_items(&self, nk: &KeyNode) -> std::result::Result<Vec<(u32, u32)>, HiveError> {
        if nk.subkey_count == 0 || nk.subkey_list == NIL {
            return Ok(Vec::new());
        }
        list::read_all(&self.cells, nk.subkey_list)
    }

    fn check_child(&self, parent: u32, child: &KeyNode) -> std::result::Result<(), HiveError> {
        if child.parent != parent {
            return Err(HiveError::corrupt(
                "key node",
                abs(child.offset),
                format!(
                    "listed as a subkey of the key at {:#x} but its parent field says {:#x}",
                    abs(parent),
                    abs(child.parent)
                ),
            ));
        }
        Ok(())
    }

    /// Finds the subkey whose upper-cased name is `target`.
    fn find_subkey(
        &self,
        nk: &KeyNode,
        target: &[u16],
    ) -> std::result::Result<Option<KeyNode>, HiveError> {
        let hash = list::lh_hash(target);
        let items = self.subkey_items(nk)?;
        let uses_hash = !items.is_empty()
            && list::read_leaves(&self.cells, nk.subkey_list)?
                .iter()
                .all(|l| &l.kind == list::LH);
        // With hash leaves only the matching hashes are compared; when that finds nothing and
        // the name has non-ASCII characters (where Windows' upper-case table might differ
        // from ours, and so the stored hash), every name is compared.
        let passes: &[bool] = if !uses_hash {
            &[false]
        } else if target.iter().all(|&u| u < 0x80) {
            &[true]
        } else {
            &[true, false]
        };
        for &filter in passes {
            for &(o, hint) in &items {
                if filter && hint != hash {
                    continue;
                }
                let child = KeyNode::read(&self.cells, o)?;
                if key::upcase_units(&child.name_units()) == target {
                    self.check_child(nk.offset, &child)?;
                    return Ok(Some(child));
                }
            }
        }
        Ok(None)
    }

    /// A new, empty hive: base block (version 1.5), one bin, a root key named `root_name`
    /// (flags `KEY_HIVE_ENTRY | KEY_NO_DELETE`, compressed name when possible) with a default
    /// security descriptor (owner Administrators, full control for SYSTEM and Administrators,
    /// read for Users; see [`security::default_descriptor`]) in an `sk` cell that forms a ring
    /// of itself with reference count 1.
    pub fn new(root_name: &str) -> Result<Hive> {
        let now = filetime_now();
        let mut bin = vec![0u8; cell::PAGE_SIZE as usize];
        bin[..4].copy_from_slice(cell::HBIN_SIGNATURE);
        bin[8..12].copy_from_slice(&cell::PAGE_SIZE.to_le_bytes());
        bin[20..28].copy_from_slice(&now.to_le_bytes());
        let free = (cell::PAGE_SIZE - cell::HBIN_HEADER_SIZE) as i32;
        bin[32..36].copy_from_slice(&free.to_le_bytes());
        let mut cells = Cells::parse(bin)?;
        cells.now = now;
        // The root key node is the first cell of the first bin, as Windows lays it out (some
        // readers, regipy among them, rely on it); its sk cell follows.
        let nk = key::build_nk(
            root_name,
            key::KEY_HIVE_ENTRY | key::KEY_NO_DELETE,
            NIL,
            NIL,
            now,
        )?;
        let root = cells.alloc(&nk)?;
        let desc = security::default_descriptor();
        let sk = cells.alloc(&security::build_sk(0, 0, 1, &desc))?;
        cells.write_u32(sk, 4, sk)?;
        cells.write_u32(sk, 8, sk)?;
        cells.write_u32(root, key::off::SECURITY, sk)?;
        let base = BaseBlock::new(root, cells.bytes.len() as u32, now, root_name);
        Ok(Hive {
            base,
            cells,
            path: None,
            recovery: RecoveryReport::default(),
            read_only_dirty: false,
            modified: true,
            lock: None,
        })
    }

    /// The hive bins with bounds-checked cell access, for structural checks: read cells with
    /// [`cell::Cells::data`], [`key::KeyNode::read`], [`value::ValueNode::read`],
    /// [`list::read_leaves`] and [`security::SecurityNode::read`].
    pub fn cells(&self) -> &Cells {
        &self.cells
    }

    /// The base block.
    pub fn base_block(&self) -> &BaseBlock {
        &self.base
    }

    /// What opening did about the transaction logs.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The file this hive was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The root key.
    pub fn root(&self) -> KeyId {
        KeyId(self.base.root_cell())
    }

    /// Finds a key by path relative to the root: components separated by `\`, compared without
    /// regard to case; a leading `\` and an empty path (the root) are accepted.
    pub fn open_key(&self, path: &str) -> Result<Option<KeyId>> {
        let mut k = self.root();
        for comp in path.split('\\').filter(|c| !c.is_empty()) {
            match self.subkey(k, comp)? {
                Some(c) => k = c,
                None => return Ok(None),
            }
        }
        Ok(Some(k))
    }

    /// The subkey of `key` named `name` (case-insensitive).
    pub fn subkey(&self, key: KeyId, name: &str) -> Result<Option<KeyId>> {
        let nk = self.nk(key)?;
        Ok(self
            .find_subkey(&nk, &key::upcase_str(name))?
            .map(|c| KeyId(c.offset)))
    }

    /// The subkeys of `key`, in the order of its subkey list (sorted by upper-cased name).
    /// Each is checked to be a key node whose parent is `key`.
    pub fn subkeys(&self, key: KeyId) -> Result<Vec<KeyId>> {
        let nk = self.nk(key)?;
        let mut out = Vec::new();
        for (o, _) in self.subkey_items(&nk)? {
            let child = KeyNode::read(&self.cells, o)?;
            self.check_child(key.0, &child)?;
            out.push(KeyId(o));
        }
        Ok(out)
    }

    /// The key's name, class, timestamp, counts and flags.
    pub fn key_info(&self, key: KeyId) -> Result<KeyInfo> {
        let nk = self.nk(key)?;
        let class = if nk.class != NIL && nk.class_len > 0 {
            let d = self.cells.data(nk.class, "class name")?;
            let raw = d.get(..nk.class_len as usize).ok_or_else(|| {
                HiveError::corrupt(
                    "class name",
                    abs(nk.class),
                    format!(
                        "key node at {:#x} says {} bytes, the cell holds {}",
                        abs(key.0),
                        nk.class_len,
                        d.len()
                    ),
                )
            })?;
            Some(key::decode_name(raw, false))
        } else {
            None
        };
        Ok(KeyInfo {
            name: nk.name(),
            class,
            last_written: nk.last_written,
            subkey_count: nk.subkey_count,
            value_count: nk.value_count,
            flags: nk.flags,
        })
    }

    /// The key's name.
    pub fn key_name(&self, key: KeyId) -> Result<String> {
        Ok(self.nk(key)?.name())
    }

    /// The parent of `key` (`None` for the root).
    pub fn parent(&self, key: KeyId) -> Result<Option<KeyId>> {
        if key == self.root() {
            return Ok(None);
        }
        let nk = self.nk(key)?;
        KeyNode::read(&self.cells, nk.parent).map_err(|e| {
            HiveError::corrupt(
                "key node",
                abs(key.0),
                format!("parent {:#x} is not a key node: {e}", abs(nk.parent)),
            )
        })?;
        Ok(Some(KeyId(nk.parent)))
    }

    /// The path of `key` from the root (the root itself is the empty string).
    pub fn key_path(&self, key: KeyId) -> Result<String> {
        let mut names = Vec::new();
        let mut k = key;
        while let Some(p) = self.parent(k)? {
            if names.len() >= MAX_DEPTH {
                return Err(HiveError::corrupt(
                    "key node",
                    abs(key.0),
                    format!("the parent chain does not reach the root within {MAX_DEPTH} levels (a loop?)"),
                )
                .into());
            }
            names.push(self.key_name(k)?);
            k = p;
        }
        names.reverse();
        Ok(names.join("\\"))
    }

    fn value_nodes(&self, nk: &KeyNode) -> std::result::Result<Vec<ValueNode>, HiveError> {
        value::read_value_list(&self.cells, nk.value_list, nk.value_count)?
            .into_iter()
            .map(|o| ValueNode::read(&self.cells, o))
            .collect()
    }

    fn reg_value(&self, v: &ValueNode) -> std::result::Result<RegValue, HiveError> {
        Ok(RegValue {
            name: v.name(),
            kind: RegType(v.kind),
            data: v.data(&self.cells, self.base.allows_big_data())?,
        })
    }

    /// The values of `key`, in the order of its value list.
    pub fn values(&self, key: KeyId) -> Result<Vec<RegValue>> {
        let nk = self.nk(key)?;
        let mut out = Vec::new();
        for v in self.value_nodes(&nk)? {
            out.push(self.reg_value(&v)?);
        }
        Ok(out)
    }

    fn find_value(
        &self,
        nk: &KeyNode,
        name: &str,
    ) -> std::result::Result<Option<(usize, ValueNode)>, HiveError> {
        let target = key::upcase_str(name);
        Ok(self
            .value_nodes(nk)?
            .into_iter()
            .enumerate()
            .find(|(_, v)| key::upcase_units(&v.name_units()) == target))
    }

    /// The value of `key` named `name` (case-insensitive; "" is the default value).
    pub fn value(&self, key: KeyId, name: &str) -> Result<Option<RegValue>> {
        let nk = self.nk(key)?;
        match self.find_value(&nk, name)? {
            Some((_, v)) => Ok(Some(self.reg_value(&v)?)),
            None => Ok(None),
        }
    }

    /// Whether edits are refused: the hive is dirty and its logs were missing or unusable (the
    /// recovery report's notes say why), and data loss was not accepted.
    pub fn is_read_only(&self) -> bool {
        self.read_only_dirty
    }

    /// The key's security descriptor (self-relative `SECURITY_DESCRIPTOR` bytes from its `sk`
    /// cell).
    pub fn security_descriptor(&self, key: KeyId) -> Result<Vec<u8>> {
        let nk = self.nk(key)?;
        Ok(SecurityNode::read(&self.cells, nk.security)?.descriptor)
    }

    fn check_writable(&self) -> std::result::Result<(), HiveError> {
        if self.read_only_dirty {
            // The log module's notes say why (sequence numbers, which logs were looked for and
            // why each was not used).
            let detail = if self.recovery.notes.is_empty() {
                let b = &self.base;
                format!(
                    "the hive is dirty: sequence numbers {} and {} differ or the checksum is \
                     wrong, and no log was replayed",
                    b.primary_sequence(),
                    b.secondary_sequence()
                )
            } else {
                self.recovery.notes.join("; ")
            };
            return Err(HiveError::Dirty { detail });
        }
        Ok(())
    }

    /// Sets the last-written time of a key node to now (the last step of every edit, which
    /// also brings the base block's hive-bins size up to date).
    fn stamp(&mut self, key: u32) -> std::result::Result<(), HiveError> {
        self.base.set_hive_bins_size(self.cells.bytes.len() as u32);
        let now = self.cells.now;
        self.cells
            .write(key, key::off::LAST_WRITTEN, &now.to_le_bytes())
    }

    /// Writes `data` into the cell at `old` when it fits, else into a new cell (freeing the
    /// old one). Returns the cell's offset.
    fn replace_cell(&mut self, old: u32, data: &[u8]) -> std::result::Result<u32, HiveError> {
        let (_, cap) = self.cells.cell(old, "cell")?;
        if cap >= data.len() {
            self.cells.write(old, 0, data)?;
            Ok(old)
        } else {
            let new = self.cells.alloc(data)?;
            self.cells.free(old)?;
            Ok(new)
        }
    }

    /// The upper-cased name of the key node at `off`.
    fn upname(&self, off: u32) -> std::result::Result<Vec<u16>, HiveError> {
        Ok(key::upcase_units(
            &KeyNode::read(&self.cells, off)?.name_units(),
        ))
    }

    /// Inserts `child` (name `units`) into the subkey list of `parent`, keeping it sorted.
    /// Returns the list's (possibly new) offset.
    fn insert_subkey(
        &mut self,
        parent: &KeyNode,
        child: u32,
        units: &[u16],
    ) -> std::result::Result<u32, HiveError> {
        let up = key::upcase_units(units);
        let new_kind = if self.base.minor_version() >= 5 {
            list::LH
        } else {
            list::LF
        };
        if parent.subkey_list == NIL || parent.subkey_count == 0 {
            let hint = list::hint(new_kind, units);
            return self
                .cells
                .alloc(&list::build_leaf_raw(new_kind, &[(child, hint)]));
        }
        let top = parent.subkey_list;
        let is_ri = self.cells.data(top, "subkey list")?.get(..2) == Some(&list::RI[..]);
        let leaves = list::read_leaves(&self.cells, top)?;
        if leaves.is_empty() {
            return Err(HiveError::corrupt(
                "subkey list",
                abs(top),
                "index root without leaves",
            ));
        }
        // The first leaf whose last name sorts after the new one, else the last leaf.
        let mut li = leaves.len() - 1;
        for (i, leaf) in leaves.iter().enumerate() {
            if let Some(&(last, _)) = leaf.items.last() {
                if self.upname(last)? > up {
                    li = i;
                    break;
                }
            }
        }
        let leaf = &leaves[li]; // li < leaves.len()
        let mut names = Vec::with_capacity(leaf.items.len());
        for &(o, _) in &leaf.items {
            names.push(self.upname(o)?);
        }
        let pos = names.partition_point(|n| *n < up);
        let mut items = leaf.items.clone();
        items.insert(pos, (child, list::hint(&leaf.kind, units)));
        if items.len() <= list::LEAF_MAX {
            let new_leaf =
                self.replace_cell(leaf.offset, &list::build_leaf_raw(&leaf.kind, &items))?;
            if !is_ri {
                return Ok(new_leaf);
            }
            if new_leaf != leaf.offset {
                self.cells.write_u32(top, 4 + 4 * li, new_leaf)?;
            }
            return Ok(top);
        }
        let half = items.len() / 2;
        let a = self.replace_cell(
            leaf.offset,
            &list::build_leaf_raw(&leaf.kind, &items[..half]),
        )?;
        let b = self
            .cells
            .alloc(&list::build_leaf_raw(&leaf.kind, &items[half..]))?;
        if !is_ri {
            return self.cells.alloc(&list::build_ri(&[a, b]));
        }
        let mut entries: Vec<u32> = leaves.iter().map(|l| l.offset).collect();
        entries[li] = a;
        entries.insert(li + 1, b);
        if entries.len() > usize::from(u16::MAX) {
            return Err(HiveError::InvalidArgument("too many subkeys".into()));
        }
        self.replace_cell(top, &list::build_ri(&entries))
    }

    /// Removes `child` from the subkey list of `parent`. Returns the list's offset, or NIL
    /// when the list became empty (and was freed).
    fn remove_subkey(
        &mut self,
        parent: &KeyNode,
        child: u32,
    ) -> std::result::Result<u32, HiveError> {
        let top = parent.subkey_list;
        let is_ri = self.cells.data(top, "subkey list")?.get(..2) == Some(&list::RI[..]);
        let leaves = list::read_leaves(&self.cells, top)?;
        let found = leaves.iter().enumerate().find_map(|(li, l)| {
            l.items
                .iter()
                .position(|&(o, _)| o == child)
                .map(|i| (li, i))
        });
        let Some((li, idx)) = found else {
            return Err(HiveError::corrupt(
                "subkey list",
                abs(top),
                format!("the key at {:#x} is not in its parent's list", abs(child)),
            ));
        };
        let leaf = &leaves[li];
        let mut items = leaf.items.clone();
        items.remove(idx);
        if !items.is_empty() {
            self.cells
                .write(leaf.offset, 0, &list::build_leaf_raw(&leaf.kind, &items))?;
            return Ok(top);
        }
        self.cells.free(leaf.offset)?;
        if !is_ri {
            return Ok(NIL);
        }
        let entries: Vec<u32> = leaves
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != li)
            .map(|(_, l)| l.offset)
            .collect();
        if entries.is_empty() {
            self.cells.free(top)?;
            return Ok(NIL);
        }
        self.cells.write(top, 0, &list::build_ri(&entries))?;
        Ok(top)
    }

    /// Adds a reference to the `sk` at `off`.
    fn sk_ref(&mut self, off: u32) -> std::result::Result<(), HiveError> {
        let sk = SecurityNode::read(&self.cells, off)?;
        self.cells.write_u32(off, 12, sk.refcount.saturating_add(1))
    }

    /// Drops a reference to the `sk` at `off`; at zero it is unlinked from the ring and freed.
    fn sk_unref(&mut self, off: u32) -> std::result::Result<(), HiveError> {
        let sk = SecurityNode::read(&self.cells, off)?;
        if sk.refcount > 1 {
            return self.cells.write_u32(off, 12, sk.refcount - 1);
        }
        if sk.flink != off {
            SecurityNode::read(&self.cells, sk.flink)?;
            SecurityNode::read(&self.cells, sk.blink)?;
            self.cells.write_u32(sk.blink, 4, sk.flink)?;
            self.cells.write_u32(sk.flink, 8, sk.blink)?;
        }
        self.cells.free(off)
    }

    fn create_child(&mut self, parent: KeyId, name: &str) -> std::result::Result<KeyId, HiveError> {
        if name.contains('\\') || name.is_empty() || name.chars().count() > 255 {
            return Err(HiveError::InvalidArgument(format!(
                "invalid key name '{name}' (1 to 255 characters, no backslash)"
            )));
        }
        let p = self.nk(parent)?;
        let now = self.cells.now;
        let nk = key::build_nk(name, 0, parent.0, p.security, now)?;
        SecurityNode::read(&self.cells, p.security)?;
        let child = self.cells.alloc(&nk)?;
        self.sk_ref(p.security)?;
        let units: Vec<u16> = name.encode_utf16().collect();
        let list = self.insert_subkey(&p, child, &units)?;
        let p = self.nk(parent)?;
        self.cells.write_u32(
            parent.0,
            key::off::SUBKEY_COUNT,
            p.subkey_count.saturating_add(1),
        )?;
        self.cells
            .write_u32(parent.0, key::off::SUBKEY_LIST, list)?;
        let len = key::utf16_len(name) as u32;
        if len > p.max_subkey_name & 0xFFFF {
            self.cells.write_u32(
                parent.0,
                key::off::MAX_SUBKEY_NAME,
                (p.max_subkey_name & 0xFFFF_0000) | len,
            )?;
        }
        self.stamp(parent.0)?;
        self.modified = true;
        Ok(KeyId(child))
    }

    /// Creates the key at `path` and any missing parents (an existing key is returned as it
    /// is). New keys take their parent's security cell.
    pub fn create_key(&mut self, path: &str) -> Result<KeyId> {
        self.check_writable()?;
        self.cells.now = filetime_now();
        let mut k = self.root();
        for comp in path.split('\\').filter(|c| !c.is_empty()) {
            k = match self.subkey(k, comp)? {
                Some(c) => c,
                None => self.create_child(k, comp)?,
            };
        }
        Ok(k)
    }

    /// Frees a key node and everything below it (not its entry in the parent's list).
    fn free_tree(&mut self, key: u32, depth: usize) -> std::result::Result<(), HiveError> {
        if depth > MAX_DEPTH {
            return Err(HiveError::corrupt(
                "key node",
                abs(key),
                format!("subkeys nest deeper than {MAX_DEPTH} levels (a loop?)"),
            ));
        }
        let nk = self.nk(KeyId(key))?;
        if nk.subkey_count > 0 && nk.subkey_list != NIL {
            let leaves = list::read_leaves(&self.cells, nk.subkey_list)?;
            for l in &leaves {
                for &(c, _) in &l.items {
                    let child = KeyNode::read(&self.cells, c)?;
                    self.check_child(key, &child)?;
                    self.free_tree(c, depth + 1)?;
                }
            }
            for l in &leaves {
                if l.offset != nk.subkey_list {
                    self.cells.free(l.offset)?;
                }
            }
            self.cells.free(nk.subkey_list)?;
        }
        for v in self.value_nodes(&nk)? {
            self.free_value_data(&v)?;
            self.cells.free(v.offset)?;
        }
        if nk.value_count > 0 && nk.value_list != NIL {
            self.cells.free(nk.value_list)?;
        }
        if nk.class != NIL && nk.class_len > 0 {
            self.cells.free(nk.class)?;
        }
        self.sk_unref(nk.security)?;
        self.cells.free(key)
    }

    /// Deletes the key at `path` with all its subkeys and values. Returns false when it did not
    /// exist. The root cannot be deleted.
    pub fn delete_key(&mut self, path: &str) -> Result<bool> {
        self.check_writable()?;
        self.cells.now = filetime_now();
        let Some(k) = self.open_key(path)? else {
            return Ok(false);
        };
        let Some(parent) = self.parent(k)? else {
            return Err(HiveError::InvalidArgument("the root key cannot be deleted".into()).into());
        };
        let p = self.nk(parent)?;
        // Unlink first: a failure while freeing then leaves leaked cells, not a dangling entry.
        let list = self.remove_subkey(&p, k.0)?;
        self.cells
            .write_u32(parent.0, key::off::SUBKEY_LIST, list)?;
        self.cells.write_u32(
            parent.0,
            key::off::SUBKEY_COUNT,
            p.subkey_count.saturating_sub(1),
        )?;
        self.stamp(parent.0)?;
        self.modified = true;
        self.free_tree(k.0, 0)?;
        Ok(true)
    }

    /// Frees the data cells of a value (nothing for inline or empty data).
    fn free_value_data(&mut self, v: &ValueNode) -> std::result::Result<(), HiveError> {
        if v.inline() || v.data_len() == 0 {
            return Ok(());
        }
        if v.is_big(self.base.allows_big_data()) {
            let segs = value::big_segments(&self.cells, v.data_off)?;
            let d = self.cells.data(v.data_off, "big data")?;
            let list = le32(d, 4);
            for s in segs {
                self.cells.free(s)?;
            }
            self.cells.free(list)?;
        }
        self.cells.free(v.data_off)
    }

    /// Stores value data; returns the (size field, data offset field) of the `vk`.
    fn store_data(&mut self, data: &[u8]) -> std::result::Result<(u32, u32), HiveError> {
        let len = data.len();
        if len > value::MAX_DATA {
            return Err(HiveError::InvalidArgument(format!(
                "value data of {len} bytes is too big"
            )));
        }
        if len <= 4 {
            let mut b = [0u8; 4];
            b[..len].copy_from_slice(data);
            return Ok((len as u32 | value::DATA_INLINE, u32::from_le_bytes(b)));
        }
        if len > value::BIG_DATA_SEGMENT && self.base.allows_big_data() {
            let mut segs = Vec::new();
            // Every segment cell gets the full segment size, the last one too (as offreg.dll
            // does): hivex reads a segment's length from its cell size.
            let mut seg = vec![0u8; value::BIG_DATA_SEGMENT];
            for chunk in data.chunks(value::BIG_DATA_SEGMENT) {
                seg[..chunk.len()].copy_from_slice(chunk);
                seg[chunk.len()..].fill(0);
                segs.push(self.cells.alloc(&seg)?);
            }
            let n = u16::try_from(segs.len()).map_err(|_| {
                HiveError::InvalidArgument(format!("value data of {len} bytes is too big"))
            })?;
            let list: Vec<u8> = segs.iter().flat_map(|s| s.to_le_bytes()).collect();
            let list = self.cells.alloc(&list)?;
            let mut db = Vec::with_capacity(8);
            db.extend_from_slice(value::DB_SIGNATURE);
            db.extend_from_slice(&n.to_le_bytes());
            db.extend_from_slice(&list.to_le_bytes());
            let db = self.cells.alloc(&db)?;
            return Ok((len as u32, db));
        }
        // A hive of version 1.3 has no big data: Windows NT stored any size in one cell.
        Ok((len as u32, self.cells.alloc(data)?))
    }

    /// Sets (creates or replaces) value `name` of `key` to raw `data` of type `kind`. Data over
    /// 16344 bytes is stored in a big-data cell (hive version 1.4 and later; a version 1.3 hive
    /// keeps it in one cell, as Windows NT did).
    pub fn set_value(&mut self, key: KeyId, name: &str, kind: RegType, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.cells.now = filetime_now();
        if name.encode_utf16().count() > 16383 {
            return Err(HiveError::InvalidArgument(
                "a value name has at most 16383 characters".into(),
            )
            .into());
        }
        let nk = self.nk(key)?;
        match self.find_value(&nk, name)? {
            Some((_, v)) => {
                let big = self.base.allows_big_data();
                let plain_old = !v.inline() && v.data_len() > 0 && !v.is_big(big);
                let plain_new = data.len() > 4 && (data.len() <= value::BIG_DATA_SEGMENT || !big);
                let fits = plain_old
                    && plain_new
                    && self.cells.cell(v.data_off, "value data")?.1 >= data.len();
                let (size, off) = if fits {
                    self.cells.write(v.data_off, 0, data)?;
                    (data.len() as u32, v.data_off)
                } else {
                    let new = self.store_data(data)?;
                    self.free_value_data(&v)?;
                    new
                };
                self.cells.write_u32(v.offset, 4, size)?;
                self.cells.write_u32(v.offset, 8, off)?;
                self.cells.write_u32(v.offset, 12, kind.0)?;
            }
            None => {
                let (size, off) = self.store_data(data)?;
                let vk = self
                    .cells
                    .alloc(&value::build_vk(name, kind.0, size, off))?;
                let mut offs = value::read_value_list(&self.cells, nk.value_list, nk.value_count)?;
                offs.push(vk);
                let bytes: Vec<u8> = offs.iter().flat_map(|o| o.to_le_bytes()).collect();
                let list = if nk.value_count == 0 || nk.value_list == NIL {
                    self.cells.alloc(&bytes)?
                } else {
                    self.replace_cell(nk.value_list, &bytes)?
                };
                self.cells.write_u32(key.0, key::off::VALUE_LIST, list)?;
                self.cells
                    .write_u32(key.0, key::off::VALUE_COUNT, offs.len() as u32)?;
            }
        }
        let nk = self.nk(key)?;
        let nlen = key::utf16_len(name) as u32;
        if nlen > nk.max_value_name {
            self.cells
                .write_u32(key.0, key::off::MAX_VALUE_NAME, nlen)?;
        }
        if data.len() as u32 > nk.max_value_data {
            self.cells
                .write_u32(key.0, key::off::MAX_VALUE_DATA, data.len() as u32)?;
        }
        self.stamp(key.0)?;
        self.modified = true;
        Ok(())
    }

    /// Sets value `name` of `key` to decoded `data`.
    pub fn set_data(&mut self, key: KeyId, name: &str, data: &RegData) -> Result<()> {
        self.set_value(key, name, data.kind(), &data.encode())
    }

    /// Deletes value `name` of `key`. Returns false when it did not exist.
    pub fn delete_value(&mut self, key: KeyId, name: &str) -> Result<bool> {
        self.check_writable()?;
        self.cells.now = filetime_now();
        let nk = self.nk(key)?;
        let Some((idx, v)) = self.find_value(&nk, name)? else {
            return Ok(false);
        };
        let mut offs = value::read_value_list(&self.cells, nk.value_list, nk.value_count)?;
        offs.remove(idx);
        if offs.is_empty() {
            self.cells.free(nk.value_list)?;
            self.cells.write_u32(key.0, key::off::VALUE_LIST, NIL)?;
        } else {
            let bytes: Vec<u8> = offs.iter().flat_map(|o| o.to_le_bytes()).collect();
            self.cells.write(nk.value_list, 0, &bytes)?;
        }
        self.cells
            .write_u32(key.0, key::off::VALUE_COUNT, offs.len() as u32)?;
        self.free_value_data(&v)?;
        self.cells.free(v.offset)?;
        self.stamp(key.0)?;
        self.modified = true;
        Ok(true)
    }

    /// Whether anything was changed since opening or the last save (a hive recovered from its
    /// logs counts as changed: the file does not hold the recovered state yet).
    pub fn is_modified(&self) -> bool {
        self.modified || !self.cells.dirty.is_empty()
    }

    /// Number of bytes in free cells.
    pub fn free_bytes(&self) -> u64 {
        self.cells.free_bytes()
    }

    /// The 4096-byte pages (relative to the first hive bin) touched since opening or the last
    /// save; [`Hive::save`] writes exactly these.
    pub fn touched_pages(&self) -> Vec<u32> {
        self.cells.dirty.iter().copied().collect()
    }

    /// Writes the changes back to the file the hive was opened from: the touched pages and the
    /// base block (sequence numbers advanced, checksum recomputed), in the order that leaves a
    /// crash recognisable as a dirty hive: base block with the primary sequence number advanced,
    /// the pages, then the base block with the secondary equal to the primary; each step
    /// flushed to disk. The file's [`ImageLock`](crate::files::ImageLock) is held while it is
    /// written: a file another process holds the lock of is refused ([`Error::Busy`]) unchanged.
    pub fn save(&mut self) -> Result<SaveStats> {
        use std::io::{Seek, SeekFrom, Write};
        self.check_writable()?;
        let Some(path) = self.path.clone() else {
            return Err(HiveError::InvalidArgument(
                "this hive has no file yet: use save_as".into(),
            )
            .into());
        };
        let io = |op: &str, e: std::io::Error| Error::io(op.to_string(), e).in_file(&path);
        if !self.is_modified() {
            let file_size = std::fs::metadata(&path)
                .map_err(|e| io("reading the hive's size", e))?
                .len();
            return Ok(SaveStats {
                file_size,
                ..SaveStats::default()
            });
        }
        // Another diskconv process editing the same file in place is refused (kind Busy),
        // naming it, before anything is written. A hive opened for edit holds the lock already.
        let _lock = match self.lock {
            Some(_) => None,
            None => Some(crate::files::ImageLock::acquire(&path)?),
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io("opening the hive for writing", e))?;
        let seq = self.base.primary_sequence().wrapping_add(1);
        self.base.set_sequences(seq, self.base.secondary_sequence());
        self.base.set_hive_bins_size(self.cells.bytes.len() as u32);
        self.base.set_timestamp(filetime_now());
        let mut written = 0u64;
        f.write_all(&self.base.to_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| io("writing the base block", e))?;
        written += base::BASE_BLOCK_SIZE as u64;
        let page = cell::PAGE_SIZE as usize;
        let mut pages = 0u64;
        for &p in &self.cells.dirty {
            let start = p as usize * page;
            let Some(bytes) = self
                .cells
                .bytes
                .get(start..(start + page).min(self.cells.bytes.len()))
            else {
                continue;
            };
            f.seek(SeekFrom::Start(4096 + start as u64))
                .and_then(|_| f.write_all(bytes))
                .map_err(|e| io("writing hive pages", e))?;
            written += bytes.len() as u64;
            pages += 1;
        }
        f.sync_data().map_err(|e| io("flushing hive pages", e))?;
        self.base.set_sequences(seq, seq);
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&self.base.to_bytes()))
            .and_then(|()| f.sync_data())
            .map_err(|e| io("writing the base block", e))?;
        written += base::BASE_BLOCK_SIZE as u64;
        let file_size = f
            .metadata()
            .map_err(|e| io("reading the hive's size", e))?
            .len();
        self.cells.dirty.clear();
        self.cells.saved_len = self.cells.bytes.len();
        self.modified = false;
        Ok(SaveStats {
            bytes_written: written,
            pages_written: pages,
            file_size,
        })
    }

    /// Writes the whole hive to `path` (through a temporary file in the same folder renamed
    /// into place, flushed to disk). Afterwards [`Hive::save`] writes to `path`.
    pub fn save_as(&mut self, path: &Path) -> Result<SaveStats> {
        self.check_writable()?;
        let seq = self.base.primary_sequence().wrapping_add(1);
        self.base.set_sequences(seq, seq);
        self.base.set_timestamp(filetime_now());
        let bytes = self.to_bytes();
        crate::files::replace_file(path, &bytes, "hive")?;
        self.base.set_hive_bins_size(self.cells.bytes.len() as u32);
        self.cells.dirty.clear();
        self.cells.saved_len = self.cells.bytes.len();
        self.modified = false;
        // The lock was on the file that the new one replaced (or on another file): later saves
        // lock the file now at `path` while they write.
        self.lock = None;
        self.path = Some(path.to_path_buf());
        Ok(SaveStats {
            bytes_written: bytes.len() as u64,
            pages_written: (self.cells.bytes.len() / cell::PAGE_SIZE as usize) as u64,
            file_size: bytes.len() as u64,
        })
    }

    /// The whole hive file as it would be saved (base block with sequence numbers equal and the
    /// checksum recomputed, then the bins).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut base = self.base.clone();
        base.set_sequences(base.primary_sequence(), base.primary_sequence());
        base.set_hive_bins_size(self.cells.bytes.len() as u32);
        let mut v = base.to_bytes().to_vec();
        v.extend_from_slice(&self.cells.bytes);
        v
    }
}

/// A FILETIME (100-nanosecond intervals since 1601-01-01 UTC) as an ISO 8601 UTC date,
/// `2021-08-05T10:46:11.6524365Z`: the fraction of a second keeps its seven digits without the
/// trailing zeros, and is left out when it is zero.
pub fn filetime_to_iso8601(ft: u64) -> String {
    let secs = ft / 10_000_000;
    let frac = ft % 10_000_000;
    // Days from 1601-01-01 to 1970-01-01: 134774 (11644473600 s).
    let days = (secs / 86_400) as i64 - 134_774;
    let rem = secs % 86_400;
    let (year, month, day) = crate::util::civil_from_days(days);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if frac != 0 {
        let f = format!("{frac:07}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The current time as a FILETIME.
pub fn filetime_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    116_444_736_000_000_000u64
        .saturating_add(d.as_nanos().min(u128::from(u64::MAX / 2)) as u64 / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetimes_as_dates() {
        // Expected dates from Python's datetime (1601-01-01 + the interval).
        assert_eq!(filetime_to_iso8601(0), "1601-01-01T00:00:00Z");
        assert_eq!(
            filetime_to_iso8601(116_444_736_000_000_000),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            filetime_to_iso8601(132_726_339_716_524_365),
            "2021-08-05T10:46:11.6524365Z"
        );
        assert_eq!(
            filetime_to_iso8601(125_963_423_990_000_000),
            "2000-02-29T23:59:59Z"
        );
        assert_eq!(
            filetime_to_iso8601(125_963_423_995_000_000),
            "2000-02-29T23:59:59.5Z"
        );
        assert_eq!(
            filetime_to_iso8601(94_405_824_000_000_000),
            "1900-03-01T00:00:00Z"
        );
        assert_eq!(
            filetime_to_iso8601(157_783_717_230_000_000),
            "2100-12-31T01:02:03Z"
        );
        // The largest FILETIME is in year 60056: no overflow, no panic.
        assert!(filetime_to_iso8601(u64::MAX).starts_with("60056-"));
        // A DEVPROP_TYPE_FILETIME value is one; a REG_QWORD is not known to be.
        let v = RegValue {
            name: String::new(),
            kind: RegType::DEVPROP_FILETIME,
            data: 132_726_339_716_524_365u64.to_le_bytes().to_vec(),
        };
        assert_eq!(v.filetime(), Some(132_726_339_716_524_365));
        let q = RegValue {
            kind: RegType::QWORD,
            ..v.clone()
        };
        assert_eq!(q.filetime(), None);
        let short = RegValue {
            data: vec![1, 2, 3],
            ..v
        };
        assert_eq!(short.filetime(), None);
    }

    /// Regression: reading a dirty hive whose logs are missing said nothing about the data
    /// possibly being stale.
    #[test]
    fn stale_warning_for_a_dirty_hive_without_logs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("HIVE");
        let mut h = Hive::new("ROOT").unwrap();
        h.save_as(&p).unwrap();
        let clean = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
        assert_eq!(clean.stale_warning(), None);
        // Dirty: the primary sequence number one ahead of the secondary (base block offset 4),
        // checksum (offset 508) recomputed.
        let mut b = std::fs::read(&p).unwrap();
        let seq = u32::from_le_bytes(b[4..8].try_into().unwrap()) + 1;
        b[4..8].copy_from_slice(&seq.to_le_bytes());
        let sum = base::checksum(&b);
        b[508..512].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let dirty = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
        let w = dirty.stale_warning().expect("a warning");
        assert!(w.contains("may be stale"), "{w}");
        assert!(w.contains("sequence numbers"), "{w}");
        for ext in ["LOG", "LOG1", "LOG2"] {
            let name = dir.path().join(format!("HIVE.{ext}"));
            assert!(w.contains(&name.display().to_string()), "{w}");
        }
        let lossy = Hive::open(
            &p,
            &HiveOpenOptions {
                accept_data_loss: true,
                ..HiveOpenOptions::default()
            },
        )
        .unwrap();
        assert!(lossy.stale_warning().is_some());
    }

    fn sample() -> (Hive, KeyId, KeyId) {
        let mut h = Hive::new("ROOT").unwrap();
        let a = h.create_key("a").unwrap();
        let b = h.create_key("a\\b").unwrap();
        h.set_value(b, "v", RegType::BINARY, &[1; 100]).unwrap();
        (h, a, b)
    }

    fn put(bytes: &mut [u8], cell: u32, field: usize, v: u32) {
        let o = 4096 + cell as usize + 4 + field;
        bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn fix_checksum(bytes: &mut [u8]) {
        let c = base::checksum(bytes);
        bytes[508..512].copy_from_slice(&c.to_le_bytes());
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn round_trip_and_edits() {
        let (h, a, b) = sample();
        let h2 = Hive::from_bytes(h.to_bytes()).unwrap();
        assert_eq!(h2.open_key("A\\B").unwrap(), Some(b));
        assert_eq!(h2.key_path(b).unwrap(), "a\\b");
        assert_eq!(h2.parent(b).unwrap(), Some(a));
        assert_eq!(h2.value(b, "V").unwrap().unwrap().data, vec![1; 100]);
        let info = h2.key_info(a).unwrap();
        assert_eq!((info.subkey_count, info.value_count), (1, 0));
        assert!(info.flags & key::KEY_COMP_NAME != 0);
    }

    #[test]
    fn delete_frees_everything() {
        let mut h = Hive::new("ROOT").unwrap();
        let free0 = h.free_bytes();
        let k = h.create_key("x\\y\\z").unwrap();
        h.set_value(k, "big", RegType::BINARY, &vec![7; 100_000])
            .unwrap();
        h.set_value(k, "s", RegType::BINARY, &[7; 10]).unwrap();
        assert!(h.delete_key("X").unwrap());
        let used_bins = h.to_bytes().len() - 4096;
        // Everything but the root and its sk is free again (new bins included).
        let root_cells = (4096 - 32) as u64 - free0;
        let headers = 32 * h.cells.bin_count() as u64;
        assert_eq!(h.free_bytes() + root_cells, used_bins as u64 - headers);
        let sk = SecurityNode::read(&h.cells, h.nk(h.root()).unwrap().security).unwrap();
        assert_eq!(sk.refcount, 1, "references of the deleted keys released");
    }

    #[test]
    fn grows_by_appending_bins_and_tracks_pages() {
        let mut h = Hive::new("ROOT").unwrap();
        let k = h.create_key("k").unwrap();
        assert_eq!(h.touched_pages(), vec![0]);
        h.set_value(k, "big", RegType::BINARY, &[3; 50_000])
            .unwrap();
        assert!(h.base_block().hive_bins_size() > 4096);
        assert_eq!(
            h.base_block().hive_bins_size() as usize,
            h.to_bytes().len() - 4096
        );
        let pages = h.touched_pages();
        assert_eq!(pages.len(), h.base_block().hive_bins_size() as usize / 4096);
        let h2 = Hive::from_bytes(h.to_bytes()).unwrap();
        assert_eq!(h2.value(k, "big").unwrap().unwrap().data, vec![3; 50_000]);
        assert!(!h2.is_modified());
    }

    #[test]
    fn last_reference_unlinks_and_frees_the_sk() {
        let mut h = Hive::new("ROOT").unwrap();
        let k = h.create_key("own").unwrap();
        let root_sk = h.nk(h.root()).unwrap().security;
        // Give "own" its own sk, linked into the ring after the root's.
        let sk2 = h
            .cells
            .alloc(&security::build_sk(root_sk, root_sk, 1, &[1, 0, 4, 0x80]))
            .unwrap();
        h.cells.write_u32(root_sk, 4, sk2).unwrap();
        h.cells.write_u32(root_sk, 8, sk2).unwrap();
        h.cells.write_u32(root_sk, 12, 1).unwrap(); // only the root now
        h.cells.write_u32(k.0, key::off::SECURITY, sk2).unwrap();
        assert_eq!(h.security_descriptor(k).unwrap(), vec![1, 0, 4, 0x80]);
        let sub = h.create_key("own\\sub").unwrap();
        assert_eq!(SecurityNode::read(&h.cells, sk2).unwrap().refcount, 2);
        assert_eq!(h.security_descriptor(sub).unwrap(), vec![1, 0, 4, 0x80]);
        assert!(h.delete_key("own").unwrap());
        let r = SecurityNode::read(&h.cells, root_sk).unwrap();
        assert_eq!((r.flink, r.blink, r.refcount), (root_sk, root_sk, 1));
        assert!(h.cells.cell(sk2, "sk").is_err(), "the sk cell is free");
    }

    #[test]
    fn refuses_edits_when_dirty_read_only() {
        let (mut h, _, b) = sample();
        h.read_only_dirty = true;
        assert!(err(h.create_key("c")).contains("dirty"));
        assert!(err(h.set_value(b, "w", RegType::DWORD, &[0; 4])).contains("dirty"));
        assert!(err(h.delete_key("a")).contains("dirty"));
        assert!(h.value(b, "v").unwrap().is_some(), "reads still work");
    }

    #[test]
    fn subkey_list_loop_is_an_error() {
        let (h, a, b) = sample();
        let mut bytes = h.to_bytes();
        let root_list = h.nk(h.root()).unwrap().subkey_list;
        // b lists the root's list (which holds a): a cycle a -> b -> a.
        put(&mut bytes, b.0, key::off::SUBKEY_COUNT, 1);
        put(&mut bytes, b.0, key::off::SUBKEY_LIST, root_list);
        let h2 = Hive::from_bytes(bytes).unwrap();
        let e = err(h2.subkeys(b));
        assert!(e.contains(&format!("{:#x}", 4096 + a.0)), "{e}");
        // An index root that contains itself.
        let mut bytes = h.to_bytes();
        let o = 4096 + root_list as usize + 4;
        bytes[o..o + 2].copy_from_slice(b"ri");
        bytes[o + 4..o + 8].copy_from_slice(&root_list.to_le_bytes());
        let h3 = Hive::from_bytes(bytes).unwrap();
        let e = err(h3.subkeys(h3.root()));
        assert!(e.contains("index root"), "{e}");
    }

    #[test]
    fn parent_chain_loop_is_an_error() {
        let (h, a, b) = sample();
        let mut bytes = h.to_bytes();
        put(&mut bytes, a.0, key::off::PARENT, b.0);
        let h2 = Hive::from_bytes(bytes).unwrap();
        let e = err(h2.key_path(b));
        assert!(e.contains("parent chain"), "{e}");
    }

    #[test]
    fn bad_offsets_and_truncation() {
        let (h, _, b) = sample();
        let good = h.to_bytes();
        // Root cell outside the bins.
        let mut bytes = good.clone();
        bytes[36..40].copy_from_slice(&0x10000u32.to_le_bytes());
        fix_checksum(&mut bytes);
        let e = err(Hive::from_bytes(bytes));
        assert!(e.contains("0x11000"), "{e}");
        // A value list pointing outside the bins.
        let mut bytes = good.clone();
        put(&mut bytes, b.0, key::off::VALUE_LIST, 0x7000_0000);
        let e = err(Hive::from_bytes(bytes).unwrap().values(b));
        assert!(e.contains("0x70001000"), "{e}");
        // Truncated file.
        let e = err(Hive::from_bytes(good[..good.len() - 100].to_vec()));
        assert!(e.contains("truncated"), "{e}");
        // Bad bin signature.
        let mut bytes = good.clone();
        bytes[4096] = b'X';
        let e = err(Hive::from_bytes(bytes));
        assert!(e.contains("hbin") && e.contains("0x1000"), "{e}");
        // Hive bins size of zero.
        let mut bytes = good.clone();
        bytes[40..44].copy_from_slice(&0u32.to_le_bytes());
        fix_checksum(&mut bytes);
        assert!(Hive::from_bytes(bytes).is_err());
        // A value whose data size overflows its cell.
        let mut bytes = good;
        let v = h.value_nodes(&h.nk(b).unwrap()).unwrap()[0].offset;
        put(&mut bytes, v, 4, 0x0FFF_FFFF);
        let e = err(Hive::from_bytes(bytes).unwrap().values(b));
        assert!(e.contains("value data") || e.contains("big data"), "{e}");
    }
}
