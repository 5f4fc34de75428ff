//! Placeholder: replaced by the qcow2 checker.
use crate::error::Result;
use crate::storage::Storage;

/// Report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Corruptions.
    pub corruptions: u64,
    /// Leaks.
    pub leaks: u64,
    /// Errors.
    pub check_errors: u64,
}

impl CheckReport {
    /// Clean.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Check.
pub fn check(_storage: &dyn Storage) -> Result<CheckReport> {
    Err(crate::Error::Unsupported("check not built yet".into()))
}
