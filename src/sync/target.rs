//! Sync targets: opening an existing image for in-place updates, whatever its format.

use std::path::Path;

use crate::detect::detect;
use crate::error::{Error, Result};
use crate::formats::{qcow2, raw, vdi, vhd, vhdx, vmdk};
use crate::image::{Format, ImageUpdater, NamedUpdater};
use crate::storage::FileStorage;

/// Opens an image of one format for in-place updates.
type OpenUpdater = fn(&Path) -> Result<Box<dyn ImageUpdater>>;

/// How an image of `format` is opened for in-place updates, when it can be: the one list of
/// the formats that can (each format's updater is built from its reader).
fn updater_of(format: Format) -> Option<OpenUpdater> {
    let open: OpenUpdater = match format {
        Format::Raw => |p| Ok(Box::new(raw::RawUpdater::open(p)?)),
        Format::Qcow2 => |p| Ok(Box::new(qcow2::update::Qcow2Updater::open(p)?)),
        Format::Vhd => |p| Ok(Box::new(vhd::update::VhdUpdater::open(p)?)),
        Format::Vhdx => |p| Ok(Box::new(vhdx::update::VhdxUpdater::open(p)?)),
        Format::Vmdk => |p| Ok(Box::new(vmdk::update::VmdkUpdater::open(p)?)),
        Format::Vdi => |p| Ok(Box::new(vdi::VdiUpdater::open(p)?)),
        Format::Ova => return None,
    };
    Some(open)
}

/// Whether images of `format` can be updated in place (some variants may still be refused
/// when opened, e.g. a streamOptimized VMDK).
pub fn is_updatable(format: Format) -> bool {
    updater_of(format).is_some()
}

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
    let Some(open) = updater_of(format) else {
        return Err(Error::Unsupported(format!(
            "a {format} image cannot be updated in place; sync to a raw, qcow2, VHD, VHDX, VDI or \
             monolithicSparse VMDK target and convert it at the end"
        ))
        .in_file(path));
    };
    let up = open(path)?;
    // Every later error (a write, a flush) names the target too.
    Ok(Box::new(NamedUpdater::new(up, path)))
}
