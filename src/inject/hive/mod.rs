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
pub mod check;
pub mod data;
mod error;
pub mod log;
pub mod reg;

use std::path::{Path, PathBuf};

pub use base::BaseBlock;
pub use data::{RegData, RegType};
pub use error::HiveError;

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
    /// Why the hive needed recovery and why a log or log entry was not used (one line each,
    /// naming the file and the offset), e.g. a bad hash or a gap in sequence numbers.
    pub notes: Vec<String>,
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
    /// The hive bins (the file from offset 4096 on, `hive_bins_size` bytes).
    bins: Vec<u8>,
    path: Option<PathBuf>,
    recovery: RecoveryReport,
    /// Edits are refused: the hive is dirty and its logs were not replayed.
    read_only_dirty: bool,
}

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
    fn parse(bytes: Vec<u8>) -> Result<Hive> {
        let _ = bytes;
        Err(HiveError::Unsupported("hive parsing is not implemented yet".into()).into())
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
        let _ = path;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The subkey of `key` named `name` (case-insensitive).
    pub fn subkey(&self, key: KeyId, name: &str) -> Result<Option<KeyId>> {
        let _ = (key, name);
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The subkeys of `key`, in the order of its subkey list (sorted by upper-cased name).
    pub fn subkeys(&self, key: KeyId) -> Result<Vec<KeyId>> {
        let _ = key;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The key's name, class, timestamp, counts and flags.
    pub fn key_info(&self, key: KeyId) -> Result<KeyInfo> {
        let _ = key;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The key's name.
    pub fn key_name(&self, key: KeyId) -> Result<String> {
        Ok(self.key_info(key)?.name)
    }

    /// The parent of `key` (`None` for the root).
    pub fn parent(&self, key: KeyId) -> Result<Option<KeyId>> {
        let _ = key;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The path of `key` from the root (the root itself is the empty string).
    pub fn key_path(&self, key: KeyId) -> Result<String> {
        let _ = key;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The values of `key`, in the order of its value list.
    pub fn values(&self, key: KeyId) -> Result<Vec<RegValue>> {
        let _ = key;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The value of `key` named `name` (case-insensitive; "" is the default value).
    pub fn value(&self, key: KeyId, name: &str) -> Result<Option<RegValue>> {
        let _ = (key, name);
        Err(HiveError::Unsupported("not implemented yet".into()).into())
    }

    /// The key's security descriptor (self-relative `SECURITY_DESCRIPTOR` bytes from its `sk`
    /// cell).
    pub fn security_descriptor(&self, key: KeyId) -> Result<Vec<u8>> {
        let _ = key;
        Err(HiveError::Unsupported("not implemented yet".into()).into())
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
        false
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
        v.extend_from_slice(&self.bins);
        v
    }
}
