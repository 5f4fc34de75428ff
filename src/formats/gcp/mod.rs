//! The Google Compute Engine image artifact (`-O gcp`, `*.tar.gz`): a gzip-compressed GNU tar
//! in the old GNU format holding one sparse member, `disk.raw`, the raw disk.
//!
//! What Compute Engine asks (REFERENCE.md section 3, and Google's "Manually import boot disks"
//! page, <https://cloud.google.com/compute/docs/import/import-existing-image>, with
//! "Image management best practices",
//! <https://cloud.google.com/compute/docs/images/image-management-best-practices>): the disk's
//! bytes in a file named `disk.raw`, archived with `tar --format=oldgnu` (sparse allowed, `-S`)
//! and compressed with gzip into a `.tar.gz`; the raw disk's size a whole number of GB (GiB:
//! Compute Engine sizes disks in binary gigabytes). So `disk.raw` is the source's virtual
//! size rounded up to a whole GiB ([`writer::raw_size`], at least 1 GiB), the added tail a hole
//! that reads as zeros.
//!
//! How it is written:
//! - [`tar`]: the old GNU header (type `S`) and its extended sparse headers. The member is
//!   sparse: the holes of the disk cost nothing in the tar. The sparse map follows the
//!   source's extent map: data extents are data, zero and unallocated extents are holes.
//!   Stretches inside data extents that happen to read as zeros stay data (gzip turns a MiB
//!   of zeros into about a KiB): deciding them would mean reading the whole disk before the
//!   header, which must come first.
//! - [`gzip`]: one standard gzip member, deflated in independent 1 MiB blocks on all cores
//!   and written in order, the CRC-32 combined from the blocks' CRCs.
//! - [`writer`]: the [`ImageWriter`](crate::image::ImageWriter). Its output is appended to the
//!   sink's main storage strictly in order and nothing is rewritten, so it streams into an
//!   append-only destination (an object-store upload) without a local copy of the disk.
//!
//! The sparse map has to be known before the first byte of data, and the writer is handed the
//! disk in order, piece by piece. So the writer asks for the data layout up front
//! ([`ImageWriter::wants_data_layout`](crate::image::ImageWriter::wants_data_layout)) and the
//! convert engine, which walks the source's extent map anyway, walks it once more before
//! reading anything and hands the data ranges over
//! ([`ImageWriter::set_data_layout`](crate::image::ImageWriter::set_data_layout)). That costs
//! one pass over the source's metadata (its tables, or SEEK_DATA/SEEK_HOLE on a raw file) and
//! 16 bytes of memory per data extent, and keeps the format ignorant of the engine. The other
//! ways were worse: writing the disk into scratch storage first and the tar afterwards (a
//! temporary copy of the disk, which the streaming destination exists to avoid), or a dense
//! member (every hole of the disk compressed and inflated again on import). A writer that is
//! never told the layout (a direct caller) writes the whole disk as one data region: still a
//! correct tarball, only not sparse.

pub mod gzip;
pub mod tar;
pub mod writer;

pub use writer::{GcpWriter, raw_size};

use crate::error::{Error, Result};

/// `-o` options of the GCP tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpWriteOptions {
    /// Deflate level, 1 (fastest) to 9 (smallest); 6 by default, gzip's and `tar -z`'s.
    pub level: u32,
}

impl Default for GcpWriteOptions {
    fn default() -> Self {
        GcpWriteOptions { level: 6 }
    }
}

impl GcpWriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &["level"];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not a GCP option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "level" => {
                self.level = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=9).contains(l))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "level={value}: expected a deflate level from 1 to 9"
                        ))
                    })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Recognises a gzip stream (RFC 1952: magic 1f 8b, method 8, reserved flag bits clear): a GCP
/// tarball, or another gzip file. diskconv does not read it (there is no random access into a
/// gzip stream); recognising it turns "a raw disk of that many bytes" into a clear refusal.
pub fn probe(head: &[u8]) -> bool {
    head.len() >= 10 && head[0] == 0x1f && head[1] == 0x8b && head[2] == 8 && head[3] & 0xe0 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_probe() {
        let mut o = GcpWriteOptions::default();
        assert!(o.set("level", "9").unwrap());
        assert_eq!(o.level, 9);
        for bad in ["0", "10", "fast"] {
            let e = o.set("level", bad).unwrap_err().to_string();
            assert!(e.contains("expected a deflate level from 1 to 9"), "{e}");
        }
        assert!(!o.set("subformat", "x").unwrap());
        assert!(probe(&gzip::HEADER));
        assert!(!probe(&[0x1f, 0x8b, 8]));
        assert!(!probe(&[0u8; 512]));
    }
}
