//! Placeholder: replaced by the qcow2 reader.
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::open::OpenContext;
use crate::storage::Storage;

/// qcow2 reader (not yet implemented).
#[derive(Debug)]
pub struct Qcow2Reader;

impl Qcow2Reader {
    /// Opens a qcow2 image.
    pub fn open(
        _storage: Arc<dyn Storage>,
        _path: Option<&Path>,
        _ctx: &OpenContext<'_>,
        _snapshot: Option<&str>,
    ) -> Result<Self> {
        Err(crate::Error::Unsupported(
            "qcow2 reader not built yet".into(),
        ))
    }
}

impl crate::image::ImageReader for Qcow2Reader {
    fn format(&self) -> crate::image::Format {
        crate::image::Format::Qcow2
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn map(&self, offset: u64, _max_len: u64) -> Result<crate::image::Extent> {
        Ok(crate::image::Extent::new(
            offset,
            0,
            crate::image::ExtentKind::Data,
        ))
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Ok(())
    }
    fn info(&self) -> crate::image::ImageInfo {
        crate::image::ImageInfo::new(crate::image::Format::Qcow2, 0)
    }
}
