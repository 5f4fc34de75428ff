//! VMDK, VMware's virtual disk format (OVA packages, which hold VMDK disks, are
//! [`crate::formats::ova`]).
//!
//! Layout of this module, one file per on-disk object:
//! - [`descriptor`]: the text descriptor (stand-alone or embedded) and its extent lines;
//! - [`sparse`]: the hosted sparse extent header (`KDMV`), grain directory and grain tables;
//! - [`stream`]: streamOptimized markers (grain, grain table, grain directory, footer, EOS);
//! - [`cowd`]: ESXi vmfsSparse (`COWD`) snapshot extents;
//! - [`sesparse`]: ESXi seSparse snapshot extents;
//! - [`reader`]: [`VmdkReader`], an [`ImageReader`](crate::image::ImageReader) over one disk
//!   (all its extents, and its parent chain);
//! - [`writer`]: streamOptimized, monolithicSparse and monolithicFlat / vmfs writers.
//!
//! The specification is VMware's "Virtual Disk Format 5.0"; REFERENCE.md section 2 lists what
//! real tools write that the specification does not say.

pub mod check;
pub mod cowd;
pub mod descriptor;
pub mod reader;
pub mod sesparse;
pub mod sparse;
pub mod stream;
pub mod update;
pub mod writer;

pub use reader::VmdkReader;
pub use writer::{AdapterType, VmdkSubformat, VmdkWriteOptions};

use crate::error::ErrorKind;

/// An invalid, corrupt or unsupported VMDK structure.
///
/// Every variant names the structure, the file and the byte offset where it lies, e.g.
/// "VMDK grain table at 0x2400 in disk-s001.vmdk: entry 17 points at sector 0x7fff0000, past the
/// end of the file (0x60000 bytes)". Descriptor errors give the line number instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmdkError {
    /// The bytes are not a valid VMDK structure (bad magic, impossible header field, a
    /// descriptor line that does not parse).
    #[error("VMDK {what} at {offset:#x}: {detail}")]
    Invalid {
        /// The structure, e.g. "sparse header", "descriptor line 7".
        what: String,
        /// Byte offset of the structure (0 for descriptor lines).
        offset: u64,
        /// What was expected and what was found.
        detail: String,
    },
    /// A structure is well-formed but inconsistent with the rest of the disk.
    #[error("VMDK {what} at {offset:#x}: {detail}")]
    Corrupt {
        /// The structure, e.g. "grain table", "compressed grain".
        what: String,
        /// Byte offset of the structure in its file.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The disk uses something this version does not implement.
    #[error("unsupported VMDK: {0}")]
    Unsupported(String),
}

impl VmdkError {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VmdkError::Invalid { .. } => ErrorKind::InvalidFormat,
            VmdkError::Corrupt { .. } => ErrorKind::Corrupt,
            VmdkError::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// Shorthand for [`VmdkError::Invalid`].
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        VmdkError::Invalid {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`VmdkError::Corrupt`].
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        VmdkError::Corrupt {
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }
}
