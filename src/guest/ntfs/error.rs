//! The error type of the NTFS module.

use crate::error::ErrorKind;

/// An invalid or corrupt NTFS structure, a volume that cannot be written safely, or a file
/// operation that cannot be done.
///
/// Offsets are absolute byte offsets on the volume (from its boot sector), so a reader can find
/// the bytes with a hex editor; MFT records are also named by number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NtfsError {
    /// The bytes are not the structure they should be (bad signature, impossible field).
    #[error("NTFS {what} at {offset:#x}: {detail}")]
    Invalid {
        /// The structure, e.g. "boot sector", "MFT record 5", "index block".
        what: String,
        /// Absolute byte offset of the structure on the volume.
        offset: u64,
        /// What was expected and what was found.
        detail: String,
    },
    /// A structure is well-formed but inconsistent with the rest of the volume.
    #[error("NTFS {what} at {offset:#x}: {detail}")]
    Corrupt {
        /// The structure.
        what: String,
        /// Absolute byte offset of the structure on the volume.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The volume must not be written: dirty, `$LogFile` not clean, hibernated / Fast Startup,
    /// BitLocker, or opened read-only. `reason` says which and what to do.
    #[error("the NTFS volume cannot be written: {reason}")]
    NotWritable {
        /// Which condition, with the remedy.
        reason: String,
    },
    /// Not enough free clusters or MFT records.
    #[error("the NTFS volume is full: {detail}")]
    NoSpace {
        /// What was needed and what is free.
        detail: String,
    },
    /// A path named by the caller does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A path named by the caller already exists, or has the wrong type.
    #[error("{0}")]
    Exists(String),
    /// The caller asked for something impossible (bad name, too long).
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume uses something this version does not implement (compressed or encrypted
    /// files, attribute lists where they would have to be written, ...).
    #[error("unsupported NTFS feature: {0}")]
    Unsupported(String),
}

impl NtfsError {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NtfsError::Invalid { .. } => ErrorKind::InvalidFormat,
            NtfsError::Corrupt { .. } => ErrorKind::Corrupt,
            NtfsError::NotWritable { .. } | NtfsError::Unsupported(_) => ErrorKind::Unsupported,
            NtfsError::NoSpace { .. } => ErrorKind::Io,
            NtfsError::NotFound(_) | NtfsError::Exists(_) | NtfsError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
        }
    }

    /// Shorthand for [`NtfsError::Invalid`].
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        NtfsError::Invalid {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`NtfsError::Corrupt`].
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        NtfsError::Corrupt {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }
}
