//! The error type of the registry hive module.

use crate::error::{Error, ErrorKind, Hint, StructureError};

/// An invalid, corrupt or unsupported structure of a registry hive or transaction log, or an
/// edit that cannot be made.
///
/// Offsets are absolute byte offsets in the file (a cell offset `c` from the hive's own tables is
/// reported as `4096 + c`), so a reader can find the bytes with a hex editor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HiveError {
    /// A structure (e.g. "base block", "key node", "log entry", "subkey list") is not what it
    /// should be (bad signature, impossible field) or is inconsistent with the rest of the hive
    /// (its [`kind`](StructureError::kind) says which).
    #[error(transparent)]
    Structure(StructureError),
    /// The hive is dirty (its transaction logs hold data not yet in the file) and the logs are
    /// missing or unusable; editing it would lose that data.
    /// Converted into an [`Error`] with [`Hint::AcceptDataLoss`].
    #[error(
        "{detail}; {hint}",
        hint = "replay its transaction logs first (diskconv hive replay), name them, or accept losing the logged data"
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
            HiveError::Structure(e) => e.kind,
            HiveError::Dirty { .. } => ErrorKind::Corrupt,
            HiveError::NotFound(_) | HiveError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            HiveError::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// The bytes at absolute byte `offset` are not the structure `what` should be.
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        HiveError::Structure(StructureError::invalid("hive", what, offset, detail))
    }

    /// The structure `what` at absolute byte `offset` is inconsistent with the rest of the hive.
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        HiveError::Structure(StructureError::corrupt("hive", what, offset, detail))
    }
}

impl From<HiveError> for Error {
    fn from(e: HiveError) -> Self {
        let dirty = matches!(e, HiveError::Dirty { .. });
        let e = Error::typed(e.kind(), e);
        if dirty {
            e.with_hint(Hint::AcceptDataLoss)
        } else {
            e
        }
    }
}
