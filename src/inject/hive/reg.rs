//! `.reg` files (Windows Registry Editor Version 5.00, and REGEDIT4): parse, import, export.

use super::{Hive, KeyId, RegType};
use crate::error::Result;

/// One operation of a `.reg` file, with the key path as written (prefix not yet removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// `[path]`: create the key (and its parents).
    CreateKey(String),
    /// `[-path]`: delete the key tree.
    DeleteKey(String),
    /// `"name"=...` or `@=...`: set a value ("" is the default value).
    SetValue {
        /// The key.
        key: String,
        /// The value name.
        name: String,
        /// The type.
        kind: RegType,
        /// The raw data.
        data: Vec<u8>,
    },
    /// `"name"=-`: delete a value.
    DeleteValue {
        /// The key.
        key: String,
        /// The value name.
        name: String,
    },
}

/// Parses a `.reg` file (UTF-16LE with BOM, or UTF-8 with or without BOM).
pub fn parse(bytes: &[u8]) -> Result<Vec<RegOp>> {
    let _ = bytes;
    Err(super::HiveError::Unsupported("not implemented yet".into()).into())
}

/// What [`import`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Keys created (missing parents included).
    pub keys_created: usize,
    /// Key trees deleted.
    pub keys_deleted: usize,
    /// Values set.
    pub values_set: usize,
    /// Values deleted.
    pub values_deleted: usize,
}

/// Applies `ops` to `hive`. Each key path must start with `prefix` (compared without regard to
/// case, e.g. `HKEY_LOCAL_MACHINE\SYSTEM`), which is removed; an empty prefix takes the paths as
/// relative to the root.
pub fn import(hive: &mut Hive, ops: &[RegOp], prefix: &str) -> Result<ImportStats> {
    let _ = (hive, ops, prefix);
    Err(super::HiveError::Unsupported("not implemented yet".into()).into())
}

/// Exports `key` and its subtree as a `.reg` file (Windows Registry Editor Version 5.00, UTF-8
/// text; the caller may encode it as UTF-16LE), naming keys `prefix\path`.
pub fn export(hive: &Hive, key: KeyId, prefix: &str) -> Result<String> {
    let _ = (hive, key, prefix);
    Err(super::HiveError::Unsupported("not implemented yet".into()).into())
}
