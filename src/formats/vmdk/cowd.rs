//! ESXi vmfsSparse (`COWD`) snapshot extents (the VMDK "version 3" sparse format of ESX).
//!
//! Layout, little-endian: magic "COWD" @0, version u32 @4, flags u32 @8, capacity in sectors
//! u32 @12, grain size in sectors u32 @16 (usually 1), grain directory offset in sectors u32
//! @20, grain directory entries u32 @24, ... Grain tables have 4096 entries of u32 sector
//! offsets; 0 means unallocated (read the parent). The lookup is the hosted sparse one, so the
//! header is turned into a [`SparseHeader`] and served by
//! [`SparseExtent`](super::sparse::SparseExtent).

use super::VmdkError;
use super::sparse::{MAX_CAPACITY_SECTORS, MAX_GRAIN_SECTORS, SparseHeader};

/// vmfsSparse extent magic, "COWD".
pub const COWD_MAGIC: [u8; 4] = *b"COWD";
/// Entries per grain table in a COWD extent (fixed).
pub const COWD_GTES_PER_GT: u32 = 4096;
/// Bytes of the header that are read.
pub const COWD_HEADER_SIZE: usize = 28;

/// A validated COWD header, as the equivalent sparse header plus the directory length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowdHeader {
    /// The lookup parameters.
    pub sparse: SparseHeader,
    /// Grain directory entries to read.
    pub gd_entries: u64,
}

/// Parses and validates a COWD header (`offset` is for errors).
pub fn parse_cowd_header(b: &[u8], offset: u64) -> Result<CowdHeader, VmdkError> {
    let inv = |d: String| VmdkError::invalid("COWD header", offset, d);
    if b.len() < COWD_HEADER_SIZE {
        return Err(inv(format!("{} bytes, need {COWD_HEADER_SIZE}", b.len())));
    }
    if b[0..4] != COWD_MAGIC {
        return Err(inv(format!("magic {:02x?} is not \"COWD\"", &b[0..4])));
    }
    let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64;
    let (version, capacity, grain, gd, gd_size) = (u(4), u(12), u(16), u(20), u(24));
    if version != 1 {
        return Err(VmdkError::Unsupported(format!(
            "COWD header at {offset:#x}: version {version} (1 is known)"
        )));
    }
    if grain == 0 || !grain.is_power_of_two() || grain > MAX_GRAIN_SECTORS {
        return Err(inv(format!(
            "grain size {grain} sectors: expected a power of two from 1 to {MAX_GRAIN_SECTORS}"
        )));
    }
    if capacity > MAX_CAPACITY_SECTORS {
        return Err(inv(format!("capacity {capacity} sectors is too large")));
    }
    if gd == 0 {
        return Err(inv("grain directory offset 0".into()));
    }
    let needed = capacity.div_ceil(grain * COWD_GTES_PER_GT as u64);
    if gd_size < needed {
        return Err(inv(format!(
            "the grain directory has {gd_size} entries, the capacity needs {needed}"
        )));
    }
    Ok(CowdHeader {
        sparse: SparseHeader {
            version: 1,
            // COWD flags do not mean what KDMV flags do; none affects reading.
            flags: 0,
            capacity,
            grain_size: grain,
            descriptor_offset: 0,
            descriptor_size: 0,
            num_gtes_per_gt: COWD_GTES_PER_GT,
            rgd_offset: 0,
            gd_offset: gd,
            overhead: 0,
            unclean_shutdown: false,
            compress_algorithm: 0,
        },
        gd_entries: needed,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A COWD header: capacity, grain size, GD offset and size (sectors).
    pub(crate) fn cowd_bytes(capacity: u32, grain: u32, gd: u32, gd_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(b"COWD"); // magic
        b[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
        b[8..12].copy_from_slice(&3u32.to_le_bytes()); // flags
        b[12..16].copy_from_slice(&capacity.to_le_bytes()); // numSectors
        b[16..20].copy_from_slice(&grain.to_le_bytes()); // grainSize
        b[20..24].copy_from_slice(&gd.to_le_bytes()); // gdOffset
        b[24..28].copy_from_slice(&gd_size.to_le_bytes()); // numGDEntries
        b
    }

    #[test]
    fn parses_and_validates() {
        let h = parse_cowd_header(&cowd_bytes(4096, 1, 4, 1), 0).unwrap();
        assert_eq!(h.sparse.capacity, 4096);
        assert_eq!(h.sparse.num_gtes_per_gt, 4096);
        assert_eq!(h.gd_entries, 1);
        let e = parse_cowd_header(&cowd_bytes(4096, 3, 4, 1), 0).unwrap_err();
        assert!(e.to_string().contains("grain size 3"), "{e}");
        let e = parse_cowd_header(&cowd_bytes(1 << 20, 1, 4, 1), 0).unwrap_err();
        assert!(e.to_string().contains("needs 256"), "{e}");
        let e = parse_cowd_header(&cowd_bytes(4096, 1, 0, 1), 0).unwrap_err();
        assert!(e.to_string().contains("offset 0"), "{e}");
        let mut b = cowd_bytes(8, 1, 4, 1);
        b[4] = 2;
        assert!(parse_cowd_header(&b, 0).is_err());
        assert!(parse_cowd_header(&b[..10], 0).is_err());
    }
}
