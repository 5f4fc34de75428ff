//! The error type shared by the VHD, VHDX and VDI modules.

use crate::error::ErrorKind;

/// An invalid, corrupt or unsupported structure of a VHD, VHDX or VDI image.
///
/// Every variant names the format, the structure and the byte offset where it lies, e.g.
/// "VHDX BAT at 0x300000: entry 17 points at 0x7fff00000, past the end of the file".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes are not a valid structure (bad signature, impossible field, bad checksum).
    #[error("{format} {what} at {offset:#x}: {detail}")]
    Invalid {
        /// "VHD", "VHDX" or "VDI".
        format: &'static str,
        /// The structure, e.g. "footer", "region table".
        what: String,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// What was expected and what was found.
        detail: String,
    },
    /// A structure is well-formed but inconsistent with the rest of the image.
    #[error("{format} {what} at {offset:#x}: {detail}")]
    Corrupt {
        /// "VHD", "VHDX" or "VDI".
        format: &'static str,
        /// The structure, e.g. "BAT", "log entry".
        what: String,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
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
            FormatError::Invalid { .. } => ErrorKind::InvalidFormat,
            FormatError::Corrupt { .. } => ErrorKind::Corrupt,
            FormatError::Unsupported { .. } => ErrorKind::Unsupported,
        }
    }
}
