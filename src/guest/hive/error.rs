//! The error type of the registry hive module.

use crate::error::ErrorKind;

/// An invalid, corrupt or unsupported structure of a registry hive or transaction log, or an
/// edit that cannot be made.
///
/// Offsets are absolute byte offsets in the file (a cell offset `c` from the hive's own tables is
/// reported as `4096 + c`), so a reader can find the bytes with a hex editor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HiveError {
    /// The bytes are not the structure they should be (bad signature, impossible field).
    #[error("hive {what} at {offset:#x}: {detail}")]
    Invalid {
        /// The structure, e.g. "base block", "key node", "log entry".
        what: String,
        /// Absolute byte offset of the structure in the file.
        offset: u64,
        /// What was expected and what was found.
        detail: String,
    },
    /// A structure is well-formed but inconsistent with the rest of the hive.
    #[error("hive {what} at {offset:#x}: {detail}")]
    Corrupt {
        /// The structure, e.g. "subkey list", "cell".
        what: String,
        /// Absolute byte offset of the structure in the file.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The hive is dirty (its transaction logs hold data not yet in the file) and the logs are
    /// missing or unusable; editing it would lose that data.
    #[error(
        "{detail}; {hint}",
        hint = "replay its transaction logs first (diskconv hive replay), name them, or accept losing the logged data (--accept-data-loss)"
    )]
    Dirty {
        /// Why it is dirty and what was looked for ("the hive is dirty: ...").
        detail: String,
    },
    /// A key or value named by the caller does not exist (or already exists where it must not).
    #[error("{0}")]
    NotFound(String),
    /// The caller asked for something impossible (bad path, bad type, name too long).
    #[error("{0}")]
    InvalidArgument(String),
    /// The hive uses something this version does not implement.
    #[error("unsupported hive: {0}")]
    Unsupported(String),
}

impl HiveError {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HiveError::Invalid { .. } => ErrorKind::InvalidFormat,
            HiveError::Corrupt { .. } | HiveError::Dirty { .. } => ErrorKind::Corrupt,
            HiveError::NotFound(_) | HiveError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            HiveError::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// An [`HiveError::Invalid`] error.
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        HiveError::Invalid {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// A [`HiveError::Corrupt`] error.
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        HiveError::Corrupt {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }
}
