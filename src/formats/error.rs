//! The error type shared by the VHD, VHDX and VDI modules.

use crate::error::{Error, ErrorKind, StructureError};

/// An invalid, corrupt or unsupported structure of a VHD, VHDX or VDI image.
///
/// Every variant names the format, the structure and the byte offset where it lies, e.g.
/// "VHDX BAT at 0x300000: entry 17 points at 0x7fff00000, past the end of the file".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A structure is not valid (bad signature, impossible field, bad checksum) or is
    /// inconsistent with the rest of the image (its [`kind`](StructureError::kind) says which);
    /// its format is "VHD", "VHDX" or "VDI".
    #[error(transparent)]
    Structure(StructureError),
    /// The image uses something this version does not implement.
    #[error("unsupported {format} image: {detail}")]
    Unsupported {
        /// "VHD", "VHDX" or "VDI".
        format: &'static str,
        /// What is not supported.
        detail: String,
    },
}

impl FormatError {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FormatError::Structure(e) => e.kind,
            FormatError::Unsupported { .. } => ErrorKind::Unsupported,
        }
    }

    /// The bytes of `format` ("VHD" or "VHDX") are not a valid structure: `what` (e.g.
    /// "footer", "region table") at byte `offset`, `detail` saying what was expected and found.
    pub fn invalid(
        format: &'static str,
        what: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        FormatError::Structure(StructureError::invalid(format, what, offset, detail))
    }

    /// A structure (e.g. "BAT", "log entry") at byte `offset` is well-formed but inconsistent
    /// with the rest of the image.
    pub fn corrupt(
        format: &'static str,
        what: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        FormatError::Structure(StructureError::corrupt(format, what, offset, detail))
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::typed(e.kind(), e)
    }
}
