//! `$UpCase` (the volume's 65536-entry upper-case table) and the collation of file names in
//! `$I30` indexes: names compare by their upper-cased UTF-16 code units.

use std::cmp::Ordering;

/// The upper-case table of a volume.
#[derive(Clone)]
pub struct UpCase {
    table: Vec<u16>,
}

impl UpCase {
    /// Parses the `$UpCase` file's data (131072 bytes, little-endian u16 per code unit).
    pub fn from_bytes(data: &[u8]) -> Result<UpCase, super::NtfsError> {
        let _ = data;
        unimplemented!("UpCase::from_bytes: helper B")
    }

    /// A table with the default mapping (what mkntfs writes), for tests and new structures.
    pub fn default_table() -> UpCase {
        unimplemented!("UpCase::default_table: helper B")
    }

    /// The upper case of one UTF-16 code unit.
    pub fn upcase(&self, unit: u16) -> u16 {
        self.table.get(unit as usize).copied().unwrap_or(unit)
    }

    /// NTFS file-name collation (COLLATION_FILE_NAME): upper-cased code units compared in
    /// order, then length.
    pub fn compare(&self, a: &[u16], b: &[u16]) -> Ordering {
        let _ = (a, b);
        unimplemented!("UpCase::compare: helper B")
    }

    /// Whether two names are equal ignoring case.
    pub fn eq_ignore_case(&self, a: &[u16], b: &[u16]) -> bool {
        self.compare(a, b) == Ordering::Equal
    }
}
