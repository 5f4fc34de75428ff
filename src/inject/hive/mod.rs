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
//! use diskconv::inject::hive::{Hive, HiveOpenOptions, RegData};
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
        Ok(hive)
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
        Ok(hive)
    }

    /// Parses a hive that needs no log replay (the base block's dirty state is ignored).
    fn parse(mut bytes: Vec<u8>) -> Result<Hive> {
        let base = BaseBlock::parse(&bytes, 0)?;
        let size = base.hive_bins_size() as usize;
        let end = base::BASE_BLOCK_SIZE + size;
        if bytes.len() < end {
            return Err(HiveError::corrupt(
                "hive bins",
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
        };
        KeyNode::read(&hive.cells, hive.base.root_cell()).map_err(|e| match e {
            HiveError::Invalid { detail, .. } | HiveError::Corrupt { detail, .. } => {
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

    /// Finds the subkey named by the upper-cased units `target`: (index in list, key node).
    fn find_subkey(
        &self,
        nk: &KeyNode,
        target: &[u16],
    ) -> std::result::Result<Option<KeyNode>, HiveError> {
        let hash = list::lh_hash(target);
        let uses_hash = nk.subkey_count != 0
            && nk.subkey_list != NIL
            && list::read_leaves(&self.cells, nk.subkey_list)?
                .iter()
                .all(|l| &l.kind == list::LH);
        for (o, hint) in self.subkey_items(nk)? {
            if uses_hash && hint != hash {
                continue;
            }
            let child = KeyNode::read(&self.cells, o)?;
            if key::upcase_units(&child.name_units()) == target {
                self.check_child(nk.offset, &child)?;
                return Ok(Some(child));
            }
        }
        Ok(None)
    }

    /// A new, empty hive: base block, one bin, a root key named `root_name` with a default
    /// security descriptor (owner Administrators, full control for SYSTEM and Administrators,
    /// read for Users).
    pub fn new(root_name: &str) -> Result<Hive> {
        let _ = root_name;
        Err(HiveError::Unsupported("creating a hive is not implemented yet".into()).into())
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

    /// The key's security descriptor (self-relative `SECURITY_DESCRIPTOR` bytes from its `sk`
    /// cell).
    pub fn security_descriptor(&self, key: KeyId) -> Result<Vec<u8>> {
        let nk = self.nk(key)?;
        Ok(SecurityNode::read(&self.cells, nk.security)?.descriptor)
    }

    /// Creates the key at `path` and any missing parents (an existing key is returned as it
    /// is). New keys take their parent's security cell.
    pub fn create_key(&mut self, path: &str) -> Result<KeyId> {
        let _ = path;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// Deletes the key at `path` with all its subkeys and values. Returns false when it did not
    /// exist. The root cannot be deleted.
    pub fn delete_key(&mut self, path: &str) -> Result<bool> {
        let _ = path;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// Sets (creates or replaces) value `name` of `key` to raw `data` of type `kind`. Data over
    /// 16344 bytes is stored in a big-data cell (hive version 1.4 and later).
    pub fn set_value(&mut self, key: KeyId, name: &str, kind: RegType, data: &[u8]) -> Result<()> {
        let _ = (key, name, kind, data);
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// Sets value `name` of `key` to decoded `data`.
    pub fn set_data(&mut self, key: KeyId, name: &str, data: &RegData) -> Result<()> {
        self.set_value(key, name, data.kind(), &data.encode())
    }

    /// Deletes value `name` of `key`. Returns false when it did not exist.
    pub fn delete_value(&mut self, key: KeyId, name: &str) -> Result<bool> {
        let _ = (key, name);
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// Whether anything was changed since opening or the last save.
    pub fn is_modified(&self) -> bool {
        self.modified
    }

    /// Writes the changes back to the file the hive was opened from: the touched pages and the
    /// base block (sequence numbers advanced, checksum recomputed), in the order that leaves a
    /// crash recognisable as a dirty hive.
    pub fn save(&mut self) -> Result<SaveStats> {
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// Writes the whole hive to `path` (through a temporary file renamed into place).
    pub fn save_as(&mut self, path: &Path) -> Result<SaveStats> {
        let _ = path;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The whole hive file as it would be saved (base block with sequence numbers equal and the
    /// checksum recomputed, then the bins).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.base.to_bytes().to_vec();
        v.extend_from_slice(&self.cells.bytes);
        v
    }
}

/// The current time as a FILETIME.
pub fn filetime_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    116_444_736_000_000_000u64
        .saturating_add(d.as_nanos().min(u128::from(u64::MAX / 2)) as u64 / 100)
}
