//! qcow2, the QEMU copy-on-write format (versions 2 and 3).
//!
//! Layout of this module, one file per on-disk object:
//! - [`header`]: the header and its extensions (backing file, data file, bitmaps, feature names);
//! - [`l1l2`]: L1 and L2 table entries, standard and extended (subclusters), compressed
//!   cluster descriptors;
//! - [`refcount`]: refcount tables and blocks of every width (1 to 64 bits);
//! - [`snapshot`]: the internal snapshot table;
//! - [`bitmaps`]: the persistent dirty bitmap directory;
//! - [`reader`]: [`Qcow2Reader`], an [`ImageReader`](crate::image::ImageReader) over the above;
//! - [`writer`]: [`Qcow2Writer`], a streaming [`ImageWriter`](crate::image::ImageWriter);
//! - [`check`](mod@check): structural consistency check (`diskconv check`).
//!
//! The specification is qemu's `docs/interop/qcow2.txt`; section names in comments refer to it.

pub mod bitmaps;
pub mod check;
pub mod compress;
pub mod header;
pub mod l1l2;
mod options;
pub mod reader;
pub mod refcount;
pub mod snapshot;
pub mod update;
pub mod writer;

pub use check::{CheckReport, check};
pub use header::Qcow2Header;
pub use reader::Qcow2Reader;
pub use writer::{Qcow2WriteOptions, Qcow2Writer};

use crate::error::{Error, ErrorKind, StructureError};

/// An invalid, corrupt or unsupported qcow2 structure.
///
/// Every variant names the structure and the byte offset (in the image file) where it lies, so a
/// message reads like "qcow2 L2 table at 0x50000: entry 17 points at 0x7fff0000, past the end of
/// the file (0x60000)".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Qcow2Error {
    /// A structure is not valid qcow2 (bad magic, impossible header field) or is inconsistent
    /// with the rest of the image (its [`kind`](StructureError::kind) says which).
    #[error(transparent)]
    Structure(StructureError),
    /// The image uses something this version does not implement.
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
}

impl Qcow2Error {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Qcow2Error::Structure(e) => e.kind,
            Qcow2Error::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// The bytes are not a valid qcow2 structure (bad magic, impossible header field): `what`
    /// (e.g. "header", "header extension 0x23852875") at byte `offset` of the file, `detail`
    /// saying what was expected and what was found.
    pub fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        Qcow2Error::Structure(StructureError::invalid("qcow2", what, offset, detail))
    }

    /// A structure (e.g. "L2 table", "compressed cluster") at byte `offset` is well-formed but
    /// inconsistent with the rest of the image.
    pub fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        Qcow2Error::Structure(StructureError::corrupt("qcow2", what, offset, detail))
    }
}

impl From<Qcow2Error> for Error {
    fn from(e: Qcow2Error) -> Self {
        Error::typed(e.kind(), e)
    }
}

/// Whether the first sector (`head`) is a qcow2 header's: it starts with the magic.
pub fn probe(head: &[u8], _len: u64) -> bool {
    head.starts_with(&header::MAGIC)
}
