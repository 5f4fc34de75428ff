//! VirtualBox VDI images: reading (dynamic, fixed, differencing chains), writing (dynamic and
//! fixed) and in-place updates. Errors use [`FormatError`] with the format "VDI".
//!
//! # Layout (VirtualBox `VDICore.h`)
//!
//! A 72-byte pre-header (text, signature `0xbeda107f`, version), the header
//! ([`header`]), the block map ([`blockmap`]: one little-endian `u32` per block of the disk)
//! and the data area: `cBlocksAllocated` blocks of `cbBlockExtra + cbBlock` bytes each, stored
//! one after the other from `offData`. A block map entry is the index of the block in the data
//! area, `0xffffffff` (free: never written; in a differencing image the parent's data shows
//! through) or `0xfffffffe` (zero: reads as zeros, hiding the parent).
//!
//! # Differencing images and their parent
//!
//! A differencing VDI names its parent only by UUID: `uuidLinkage` is the parent's
//! `uuidCreate`, and `uuidParentModify` the parent's `uuidModify` when the child was made.
//! VirtualBox finds the file through its media registry (`VirtualBox.xml` and the `.vbox` of
//! the machine), which diskconv does not read. diskconv looks for the parent itself
//! ([`VdiReader::open`]):
//!
//! 1. in the child's folder, first `{UUID}.vdi` and `UUID.vdi` (the names VirtualBox gives
//!    snapshot images), then every other `*.vdi` file, in name order;
//! 2. then in the folder above (VirtualBox keeps a machine's snapshot images in its
//!    `Snapshots` folder and the base disk beside that folder).
//!
//! Only each candidate's header is read, and only files the reference policy allows are
//! looked at: with the default policy (the image's folder) a parent in the folder above is
//! refused with a message saying so (`--references=anywhere` allows it); with `deny` nothing is
//! searched. The first VDI whose `uuidCreate` equals the child's `uuidLinkage` is the parent;
//! its `uuidModify` must equal the child's `uuidParentModify` (when the child records one),
//! otherwise the parent was changed after the child was made and the chain is refused. The
//! parent is then opened like any other image of a chain (depth limit, loop detection).
//! A library caller who knows the parent names it with [`open_with_parent`] (or
//! [`VdiReader::open_with_parent`] over a storage); the UUIDs are checked all the same.
//!
//! # Writing
//!
//! [`writer`] makes version 1.1 images as VirtualBox does today (header with the LCHS
//! geometry, 1 MiB blocks, no extra data per block), the data area aligned to 1 MiB: dynamic
//! (default; blocks that read as zeros are not stored) or fixed (every block stored, zeros as
//! holes of a sparse file). qemu-img reads both.
//!
//! # Updating in place
//!
//! [`update::VdiUpdater`] is made from an opened [`VdiReader`] ([`VdiReader::into_updater`]):
//! the parsed header, block map and parent are reused, nothing is parsed or opened again.

pub mod blockmap;
pub mod check;
pub mod header;
mod parent;
pub mod reader;
pub mod update;
pub mod writer;

pub use header::{ImageType, Uuid, VdiHeader};
pub use reader::{VdiReader, open_with_parent};
pub use update::VdiUpdater;
pub use writer::{VdiSubformat, VdiWriteOptions};

use crate::formats::error::FormatError;

/// The format name in messages.
const FORMAT: &str = "VDI";

/// File name extensions of the format.
pub const EXTENSIONS: &[&str] = &["vdi"];

/// Whether `head`, the first bytes of a file, is a VDI: the signature `0xbeda107f` at byte 64
/// (the text before it is for eyes only and varies by writer).
pub fn probe(head: &[u8]) -> bool {
    head.get(header::SIGNATURE_OFFSET..header::SIGNATURE_OFFSET + 4) == Some(&header::SIGNATURE[..])
}

/// The bytes are not a valid VDI structure.
fn invalid(what: &str, offset: u64, detail: String) -> FormatError {
    FormatError::invalid(FORMAT, what, offset, detail)
}

/// A structure is inconsistent with the rest of the image.
fn corrupt(what: &str, offset: u64, detail: String) -> FormatError {
    FormatError::corrupt(FORMAT, what, offset, detail)
}

/// Something this version does not implement.
fn unsupported(detail: String) -> FormatError {
    FormatError::Unsupported {
        format: FORMAT,
        detail,
    }
}

/// An opener of VDI images only, for code of this folder that opens a whole VDI (and the
/// parents it names, always of this format) without the format registry above it.
pub(crate) static OPENER: crate::reference::SingleFormat =
    crate::reference::SingleFormat::new(crate::formats::Format::Vdi, |s, p, c| {
        Ok(Box::new(VdiReader::open(s, p, c)?))
    });
