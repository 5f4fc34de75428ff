//! Placeholder: replaced by the Vhd reader.
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{Extent, ExtentKind, Format, ImageInfo, ImageReader};
use crate::open::OpenContext;
use crate::storage::Storage;

/// Vhd reader (not yet implemented).
#[derive(Debug)]
pub struct VhdReader;

impl VhdReader {
    /// Opens the image in `storage` (found at `path`); parents go through `ctx`.
    pub fn open(
        _storage: Arc<dyn Storage>,
        _path: Option<&Path>,
        _ctx: &OpenContext<'_>,
    ) -> Result<Self> {
        Err(Error::Unsupported("Vhd reader not built yet".into()))
    }
}

impl ImageReader for VhdReader {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn map(&self, offset: u64, _max_len: u64) -> Result<Extent> {
        Ok(Extent::new(offset, 0, ExtentKind::Data))
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Ok(())
    }
    fn info(&self) -> ImageInfo {
        ImageInfo::new(Format::Vhd, 0)
    }
}
