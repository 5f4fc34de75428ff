//! The error type of the NTFS module.

use crate::error::{Error, ErrorKind, StructureError};

/// An invalid or corrupt NTFS structure, a volume that cannot be written safely, or a file
/// operation that cannot be done.
///
/// Offsets are absolute byte offsets on the volume (from its boot sector), so a reader can find
/// the bytes with a hex editor; MFT records are also named by number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NtfsError {
    /// A structure (e.g. "boot sector", "MFT record 5", "index block") is not what it should
    /// be (bad signature, impossible field) or is inconsistent with the rest of the volume (its
    /// [`kind`](StructureError::kind) says which).
    #[error(transparent)]
    Structure(StructureError),
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
            NtfsError::Structure(e) => e.kind,
            NtfsError::NotWritable { .. } | NtfsError::Unsupported(_) => ErrorKind::Unsupported,
            NtfsError::NoSpace { .. } => ErrorKind::Io,
            NtfsError::NotFound(_) | NtfsError::Exists(_) | NtfsError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
        }
    }

    /// The bytes at absolute byte `offset` of the volume are not the structure `what` should be.
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        NtfsError::Structure(StructureError::invalid("NTFS", what, offset, detail))
    }

    /// The structure `what` at absolute byte `offset` is inconsistent with the rest of the
    /// volume.
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        NtfsError::Structure(StructureError::corrupt("NTFS", what, offset, detail))
    }
}

impl From<NtfsError> for Error {
    fn from(e: NtfsError) -> Self {
        Error::typed(e.kind(), e)
    }
}
