//! VHD (Virtual PC / Hyper-V, qemu's vpc) images. Errors use [`FormatError`](crate::formats::error::FormatError).

pub mod check;
pub mod dynamic;
pub mod footer;
mod options;
pub mod reader;
pub mod update;
pub mod writer;

pub use reader::VhdReader;
pub use writer::{VhdSubformat, VhdWriteOptions};

/// Whether the first sector (`head`) is a VHD footer copy (a dynamic VHD starts with one).
pub fn probe(head: &[u8], _len: u64) -> bool {
    head.starts_with(&footer::COOKIE)
}

/// Whether the last sector is a VHD footer: a fixed VHD (older tools wrote a 511-byte footer).
pub fn probe_tail(tail: &[u8; 512]) -> bool {
    tail.starts_with(&footer::COOKIE) || tail[1..].starts_with(&footer::COOKIE)
}

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::image::ImageUpdater;
use crate::reference::OpenContext;
use crate::storage::Storage;

/// Opens the VHD held in `storage` (writable) for in-place updates: the reader parses and
/// validates it, and becomes the updater over the same storage (the registry's entry point).
/// `path` and `ctx` are where it was found and the reference policy; a differencing disk is
/// refused, so neither is used.
pub fn open_updater(
    storage: Arc<dyn Storage>,
    _path: Option<&Path>,
    _ctx: &OpenContext<'_>,
) -> Result<Box<dyn ImageUpdater>> {
    Ok(Box::new(update::open_storage(storage)?))
}
