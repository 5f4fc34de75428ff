//! Placeholder: replaced by the VHDX writers.

use crate::convert::OutputFiles;
use crate::error::{Error, Result};
use crate::image::ImageWriter;

/// Which kind of VHDX to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhdxSubformat {
    /// Blocks allocated as data arrives (the default).
    #[default]
    Dynamic,
    /// Every block allocated.
    Fixed,
}

/// How to write a VHDX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxWriteOptions {
    /// Subformat.
    pub subformat: VhdxSubformat,
    /// Payload block size: a power of two from 1 MiB to 256 MiB (default 32 MiB, as Hyper-V).
    pub block_size: u32,
    /// Logical sector size: 512 or 4096.
    pub logical_sector_size: u32,
    /// Physical sector size reported: 512 or 4096 (default 4096).
    pub physical_sector_size: u32,
}

impl Default for VhdxWriteOptions {
    fn default() -> Self {
        VhdxWriteOptions {
            subformat: VhdxSubformat::Dynamic,
            block_size: 32 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
        }
    }
}

/// Creates the writer for `opts` over the output files (placeholder).
pub fn create(
    _files: &mut OutputFiles,
    _size: u64,
    _opts: &VhdxWriteOptions,
) -> Result<Box<dyn ImageWriter>> {
    Err(Error::Unsupported("VHDX writer not built yet".into()))
}
