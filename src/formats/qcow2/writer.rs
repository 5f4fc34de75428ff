//! Placeholder: replaced by the qcow2 writer.
use std::sync::Arc;

use super::header::CompressionType;
use crate::error::Result;
use crate::formats::raw::Preallocation;
use crate::storage::Storage;

/// How to write a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2WriteOptions {
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`, the default).
    pub version: u32,
    /// log2 of the cluster size (9 to 21; default 16 = 64 KiB).
    pub cluster_bits: u32,
    /// Compression type recorded in the header and used for compressed clusters.
    pub compression_type: CompressionType,
    /// Compress data clusters (`-c`).
    pub compress: bool,
    /// Space reservation (`preallocation=`).
    pub preallocation: Preallocation,
}

impl Default for Qcow2WriteOptions {
    fn default() -> Self {
        Qcow2WriteOptions {
            version: 3,
            cluster_bits: 16,
            compression_type: CompressionType::Zlib,
            compress: false,
            preallocation: Preallocation::Off,
        }
    }
}

/// Writer.
#[derive(Debug)]
pub struct Qcow2Writer;

impl Qcow2Writer {
    /// Creates a new image of `size` bytes in the empty `storage`.
    pub fn create(
        _storage: Arc<dyn Storage>,
        _size: u64,
        _opts: &Qcow2WriteOptions,
    ) -> Result<Self> {
        Err(crate::Error::Unsupported(
            "qcow2 writer not built yet".into(),
        ))
    }
}

impl crate::image::ImageWriter for Qcow2Writer {
    fn format(&self) -> crate::image::Format {
        crate::image::Format::Qcow2
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn granularity(&self) -> u64 {
        65536
    }
    fn needs_sequential(&self) -> bool {
        true
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
