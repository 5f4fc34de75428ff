//! streamOptimized extents (VMDK spec 5.0, "Stream-Optimized Compressed Sparse Extents").
//!
//! Every grain is preceded by a marker: `u64 lba` (sectors), `u32 size` (bytes of compressed
//! data that follow). A marker whose size is 0 is a metadata marker: `u64 numSectors`,
//! `u32 0`, `u32 type` (0 end-of-stream, 1 grain table, 2 grain directory, 3 footer), padded to
//! a sector; its payload follows in the next sectors.
//!
//! VMware's writer puts the grain directory at the end: the header's `gdOffset` is all ones
//! and the real one is in the footer, a copy of the header in the second-to-last sector (after
//! the footer marker, before the end-of-stream marker). qemu's writer keeps the directory at the
//! front and writes no footer. Grains are zlib streams (VMware, qemu) or raw deflate (the
//! spec's wording): both are accepted.

use flate2::{Decompress, FlushDecompress, Status};

use super::VmdkError;
use super::sparse::{GD_AT_END, HEADER_SIZE, SparseHeader};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Metadata marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Metadata marker type: grain table.
pub const MARKER_GT: u32 = 1;
/// Metadata marker type: grain directory.
pub const MARKER_GD: u32 = 2;
/// Metadata marker type: footer.
pub const MARKER_FOOTER: u32 = 3;
/// Bytes of a grain marker before its data (`u64 lba`, `u32 size`).
pub const GRAIN_MARKER_SIZE: usize = 12;

/// A parsed marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain of `size` bytes for sector `lba`.
    Grain {
        /// First sector of the grain (in the extent).
        lba: u64,
        /// Bytes of compressed data after the 12-byte marker.
        size: u32,
    },
    /// A metadata marker of `kind` (`MARKER_*`) followed by `sectors` sectors of payload.
    Metadata {
        /// Payload sectors.
        sectors: u64,
        /// Type.
        kind: u32,
    },
}

impl Marker {
    /// Parses a marker from at least 16 bytes (12 for a grain marker). `offset` is for errors.
    pub fn parse(b: &[u8], offset: u64) -> Result<Self, VmdkError> {
        if b.len() < GRAIN_MARKER_SIZE {
            return Err(VmdkError::corrupt(
                "marker",
                offset,
                format!("{} bytes, a marker needs {GRAIN_MARKER_SIZE}", b.len()),
            ));
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[0..8]);
        let val = u64::from_le_bytes(v);
        let size = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if size != 0 {
            return Ok(Marker::Grain { lba: val, size });
        }
        if b.len() < 16 {
            return Err(VmdkError::corrupt(
                "metadata marker",
                offset,
                "truncated before its type field",
            ));
        }
        let kind = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if kind > MARKER_FOOTER {
            return Err(VmdkError::corrupt(
                "metadata marker",
                offset,
                format!("type {kind}: expected 0 (end of stream), 1 (GT), 2 (GD) or 3 (footer)"),
            ));
        }
        Ok(Marker::Metadata { sectors: val, kind })
    }
}

/// Reads the footer of a streamOptimized extent whose header says [`GD_AT_END`]: the footer
/// marker at `len - 1536`, the header copy at `len - 1024`, the end-of-stream marker at
/// `len - 512`.
pub fn read_footer(
    storage: &dyn Storage,
    file_len: u64,
    header: &SparseHeader,
) -> Result<SparseHeader> {
    if !header.markers() || file_len < 1536 + 512 {
        return Err(VmdkError::corrupt(
            "sparse extent header",
            0,
            format!(
                "gdOffset is all ones (grain directory at the end) but the file {}",
                if header.markers() {
                    format!("is only {file_len:#x} bytes long, too short for a footer")
                } else {
                    "has no markers (flag bit 17), so no footer".to_string()
                }
            ),
        )
        .into());
    }
    let at = file_len - 1536;
    let mut b = vec![0u8; 1536];
    storage
        .read_exact_at(&mut b, at)
        .map_err(|e| Error::io(format!("reading the footer at {at:#x}"), e))?;
    match Marker::parse(&b[..16], at)? {
        Marker::Metadata {
            kind: MARKER_FOOTER,
            ..
        } => {}
        other => {
            return Err(VmdkError::corrupt(
                "footer marker",
                at,
                format!(
                    "expected a footer marker (type 3) {} bytes before the end of the file (the stream is incomplete?), found {other:?}",
                    1536
                ),
            )
            .into());
        }
    }
    match Marker::parse(&b[1024..1040], at + 1024)? {
        Marker::Metadata {
            kind: MARKER_EOS, ..
        } => {}
        other => {
            return Err(VmdkError::corrupt(
                "end-of-stream marker",
                at + 1024,
                format!("expected an end-of-stream marker (type 0), found {other:?}"),
            )
            .into());
        }
    }
    let footer = SparseHeader::parse(&b[512..512 + HEADER_SIZE], at + 512)?;
    if footer.gd_offset == GD_AT_END {
        return Err(VmdkError::corrupt(
            "footer",
            at + 512,
            "its gdOffset is all ones too: no grain directory",
        )
        .into());
    }
    if footer.capacity != header.capacity || footer.grain_size != header.grain_size {
        return Err(VmdkError::corrupt(
            "footer",
            at + 512,
            format!(
                "capacity {} / grain size {} differ from the header's {} / {}",
                footer.capacity, footer.grain_size, header.capacity, header.grain_size
            ),
        )
        .into());
    }
    Ok(footer)
}

/// Whether `b` starts with a zlib header (CMF/FLG, RFC 1950) rather than raw deflate.
pub fn is_zlib(b: &[u8]) -> bool {
    b.len() >= 2
        && b[0] & 0x0f == 8
        && b[0] >> 4 <= 7
        && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

/// Decompresses one grain into `out` (the grain's bytes, pre-sized). Returns the number of
/// bytes produced; the caller decides whether a short grain is allowed.
pub fn inflate_grain(input: &[u8], out: &mut [u8], offset: u64) -> Result<usize, VmdkError> {
    let mut d = Decompress::new(is_zlib(input));
    let status = d
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(|e| {
            VmdkError::corrupt(
                "compressed grain",
                offset,
                format!("deflate stream does not decode: {e}"),
            )
        })?;
    let produced = d.total_out() as usize;
    match status {
        Status::StreamEnd => Ok(produced),
        _ if produced == out.len() => Err(VmdkError::corrupt(
            "compressed grain",
            offset,
            format!(
                "decompresses to more than the grain size ({} bytes)",
                out.len()
            ),
        )),
        _ => Err(VmdkError::corrupt(
            "compressed grain",
            offset,
            format!(
                "the deflate stream is truncated ({} compressed bytes gave {produced})",
                input.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_markers() {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&256u64.to_le_bytes()); // lba
        b[8..12].copy_from_slice(&1234u32.to_le_bytes()); // size
        assert_eq!(
            Marker::parse(&b, 0).unwrap(),
            Marker::Grain {
                lba: 256,
                size: 1234
            }
        );
        b[8..12].copy_from_slice(&0u32.to_le_bytes()); // size 0: metadata
        b[12..16].copy_from_slice(&MARKER_GD.to_le_bytes()); // type
        assert_eq!(
            Marker::parse(&b, 0).unwrap(),
            Marker::Metadata {
                sectors: 256,
                kind: MARKER_GD
            }
        );
        b[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert!(
            Marker::parse(&b, 0x600)
                .unwrap_err()
                .to_string()
                .contains("type 9")
        );
        assert!(Marker::parse(&b[..12], 0).is_err());
        assert!(Marker::parse(&b[..5], 0).is_err());
    }

    #[test]
    fn inflates_zlib_and_raw_deflate() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let z = z.finish().unwrap();
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(&data).unwrap();
        let r = r.finish().unwrap();
        assert!(is_zlib(&z));
        assert!(!is_zlib(&r));
        for c in [&z, &r] {
            let mut out = vec![0u8; 65536];
            assert_eq!(inflate_grain(c, &mut out, 0).unwrap(), 65536);
            assert_eq!(out, data);
            // Truncated.
            let e = inflate_grain(&c[..c.len() / 2], &mut out, 0x1000).unwrap_err();
            assert!(e.to_string().contains("truncated"), "{e}");
            // Too big for the grain.
            let mut small = vec![0u8; 4096];
            let e = inflate_grain(c, &mut small, 0).unwrap_err();
            assert!(e.to_string().contains("more than"), "{e}");
        }
        let mut out = vec![0u8; 16];
        assert!(inflate_grain(&[0xff; 8], &mut out, 0).is_err());
    }
}
