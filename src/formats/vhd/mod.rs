//! VHD (Virtual PC / Hyper-V, qemu's vpc) images. Errors use [`FormatError`](crate::formats::error::FormatError).

pub mod check;
pub mod dynamic;
pub mod footer;
pub mod reader;
pub mod update;
pub mod writer;

pub use reader::VhdReader;
pub use writer::{VhdSubformat, VhdWriteOptions};

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::image::ImageUpdater;
use crate::open::OpenContext;
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
