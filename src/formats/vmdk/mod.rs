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
mod options;
pub mod reader;
pub mod sesparse;
pub mod sparse;
pub mod stream;
pub mod update;
pub mod writer;

pub use reader::VmdkReader;
pub use writer::{AdapterType, VmdkSubformat, VmdkWriteOptions};

use crate::error::{Error, ErrorKind, StructureError};

/// An invalid, corrupt or unsupported VMDK structure.
///
/// Every variant names the structure, the file and the byte offset where it lies, e.g.
/// "VMDK grain table at 0x2400 in disk-s001.vmdk: entry 17 points at sector 0x7fff0000, past the
/// end of the file (0x60000 bytes)". Descriptor errors give the line number instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmdkError {
    /// A structure is not valid VMDK (bad magic, impossible header field, a descriptor line
    /// that does not parse; offset 0 for descriptor lines) or is inconsistent with the rest of
    /// the disk (its [`kind`](StructureError::kind) says which).
    #[error(transparent)]
    Structure(StructureError),
    /// The disk uses something this version does not implement.
    #[error("unsupported VMDK: {0}")]
    Unsupported(String),
}

impl VmdkError {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VmdkError::Structure(e) => e.kind,
            VmdkError::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// The bytes are not a valid VMDK structure: `what` (e.g. "sparse header", "descriptor
    /// line 7") at byte `offset`, `detail` saying what was expected and what was found.
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        VmdkError::Structure(StructureError::invalid("VMDK", what, offset, detail))
    }

    /// A structure (e.g. "grain table", "compressed grain") at byte `offset` of its file is
    /// well-formed but inconsistent with the rest of the disk.
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        VmdkError::Structure(StructureError::corrupt("VMDK", what, offset, detail))
    }
}

impl From<VmdkError> for Error {
    fn from(e: VmdkError) -> Self {
        Error::typed(e.kind(), e)
    }
}

/// Whether the first sector (`head`) of a `len`-byte file is a VMDK's: a sparse or COWD
/// header, or a descriptor (with its `# Disk DescriptorFile` comment or, in a small text
/// file, without it).
pub fn probe(head: &[u8], len: u64) -> bool {
    head.starts_with(&sparse::SPARSE_MAGIC)
        || head.starts_with(&cowd::COWD_MAGIC)
        || head.starts_with(descriptor::DESCRIPTOR_START)
        || looks_like_descriptor(head, len)
}

/// A small text file whose first sector names a `createType` and an extent access mode: a VMDK
/// descriptor whose writer left out the `# Disk DescriptorFile` comment (the comment is
/// optional). Large files never qualify, so a raw disk is not mistaken for one.
fn looks_like_descriptor(head: &[u8], len: u64) -> bool {
    const MAX_DESCRIPTOR: u64 = 1 << 20;
    if len > MAX_DESCRIPTOR || head.contains(&0) {
        return false;
    }
    let text = String::from_utf8_lossy(head);
    let has_key = |k: &str| {
        text.lines()
            .any(|l| l.trim_start().to_ascii_lowercase().starts_with(k))
    };
    has_key("createtype") && (has_key("rw ") || has_key("rdonly ") || has_key("noaccess "))
}
