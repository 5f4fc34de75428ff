//! Sync targets: opening an existing image for in-place updates, whatever its format.

use std::path::Path;

use crate::detect::detect;
use crate::error::{Error, Result};
use crate::formats::{qcow2, raw, vdi, vhd, vhdx, vmdk};
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
    let up: Box<dyn ImageUpdater> = match format {
        Format::Raw => Box::new(raw::RawUpdater::open(path)?),
        Format::Qcow2 => Box::new(qcow2::update::Qcow2Updater::open(path)?),
        Format::Vhd => Box::new(vhd::update::VhdUpdater::open(path)?),
        Format::Vhdx => Box::new(vhdx::update::VhdxUpdater::open(path)?),
        Format::Vmdk => Box::new(vmdk::update::VmdkUpdater::open(path)?),
        Format::Vdi => Box::new(vdi::VdiUpdater::open(path)?),
        other => {
            return Err(Error::Unsupported(format!(
                "a {other} image cannot be updated in place; sync to a raw, qcow2, VHD, VHDX, VDI or \
                 monolithicSparse VMDK target and convert it at the end"
            ))
            .in_file(path));
        }
    };
    // Every later error (a write, a flush) names the target too.
    Ok(Box::new(NamedUpdater::new(up, path)))
}
