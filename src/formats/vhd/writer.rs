//! Placeholder: replaced by the VHD writers.

use crate::convert::OutputFiles;
use crate::error::{Error, Result};
use crate::image::ImageWriter;

/// Which kind of VHD to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhdSubformat {
    /// Sparse: a BAT of blocks, each with a sector bitmap (qemu's default).
    #[default]
    Dynamic,
    /// Every byte stored, then a footer: what Azure accepts.
    Fixed,
}

/// How to write a VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdWriteOptions {
    /// Subformat.
    pub subformat: VhdSubformat,
    /// Block size of a dynamic VHD (power of two, default 2 MiB).
    pub block_size: u32,
    /// Round the virtual size up to a whole MiB (Azure's rule; default on). Off keeps the size
    /// exact, rounded up to a whole sector only.
    pub round_to_mib: bool,
}

impl Default for VhdWriteOptions {
    fn default() -> Self {
        VhdWriteOptions {
            subformat: VhdSubformat::Dynamic,
            block_size: 2 << 20,
            round_to_mib: true,
        }
    }
}

/// Creates the writer for `opts` over the output files (placeholder).
pub fn create(
    _files: &mut OutputFiles,
    _size: u64,
    _opts: &VhdWriteOptions,
) -> Result<Box<dyn ImageWriter>> {
    Err(Error::Unsupported("VHD writer not built yet".into()))
}
