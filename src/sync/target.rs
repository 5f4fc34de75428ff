//! Sync targets: opening an existing image for in-place updates, whatever its format.

use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::registry::{self, detect};
use crate::image::{Format, ImageUpdater, NamedUpdater};
use crate::storage::FileStorage;

/// Opens the image at `path` for in-place updates, detecting its format from the content (or
/// using `format` when given). Formats that cannot be updated in place (streamOptimized VMDK,
/// OVA) are refused with the reason.
pub fn open_updater(path: &Path, format: Option<Format>) -> Result<Box<dyn ImageUpdater>> {
    let format = match format {
        Some(f) => f,
        None => {
            let st = FileStorage::open_read_only(path)
                .map_err(|e| Error::io("opening the sync target", e).in_file(path))?;
            detect(&st).map_err(|e| e.in_file(path))?
        }
    };
    let up = registry::open_updater(path, format)?;
    // Every later error (a write, a flush) names the target too.
    Ok(Box::new(NamedUpdater::new(up, path)))
}
