//! In-place updates of an existing image (the target of an incremental sync).

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{Format, ImageUpdater};

/// Writes into an existing image in place; see [`ImageUpdater`].
#[derive(Debug)]
pub struct VhdUpdater {
    virtual_size: u64,
}

impl VhdUpdater {
    /// Opens the image at `path` read-write for in-place updates. Refuses images it cannot
    /// update safely (saying why).
    pub fn open(path: &Path) -> Result<VhdUpdater> {
        let _ = path;
        Err(Error::Unsupported(
            "in-place update of this format is not implemented yet".into(),
        ))
    }
}

impl ImageUpdater for VhdUpdater {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        Err(Error::Unsupported("not implemented yet".into()))
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Err(Error::Unsupported("not implemented yet".into()))
    }
    fn flush(&mut self) -> Result<()> {
        Err(Error::Unsupported("not implemented yet".into()))
    }
}
