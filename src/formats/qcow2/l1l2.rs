//! L1 and L2 table entries (qcow2.txt, "Cluster mapping").
//!
//! Decoding is pure: the reader and the checker validate the decoded host offsets against the
//! file size and report errors with the table's offset.

/// Host offset bits of an L1 entry and of a standard L2 entry (bits 9-55).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1 and standard L2 entries: refcount is exactly one ("copied").
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (version 3): the cluster reads as zeros.
pub const ZERO: u64 = 1;
/// Bits of an L1 entry that must be zero (1-8 and 56-62).
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01fe;
/// Bits of a standard L2 entry that must be zero (1-8 and 56-61).
pub const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Number of subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What one L2 entry says about one guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated in this image: read from the backing file, or zeros without one.
    Unallocated,
    /// Reads as zeros (zero flag); `host` is the preallocated cluster, if any.
    Zero {
        /// Preallocated host cluster kept for later writes.
        host: Option<u64>,
    },
    /// Stored plainly at `host` (cluster-aligned).
    Normal {
        /// Host offset of the cluster.
        host: u64,
        /// The copied flag (refcount is one).
        copied: bool,
    },
    /// Stored compressed: `len` bytes at byte offset `host` hold the compressed stream (the
    /// stream may be shorter; the rest is padding).
    Compressed {
        /// Byte offset of the compressed data.
        host: u64,
        /// Bytes to read (whole 512-byte sectors counted from the sector `host` lies in).
        len: u64,
    },
}

/// Decodes a standard (64-bit) L2 entry, or the first half of an extended one.
///
/// `version` decides whether the zero flag exists (version 3 only). Returns `Err` with a
/// description when reserved bits are set.
pub fn decode_l2(raw: u64, cluster_bits: u32, version: u32) -> Result<L2Entry, String> {
    if raw & COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let host = raw & ((1u64 << x) - 1);
        let sectors = (raw & ((1u64 << 62) - 1)) >> x;
        // qcow2.txt: "Number of additional 512-byte sectors used for the compressed data,
        // beyond the sector containing the offset in the previous field."
        let len = (sectors + 1) * 512 - (host & 511);
        return Ok(L2Entry::Compressed { host, len });
    }
    if raw & L2_RESERVED != 0 {
        return Err(format!("reserved bits set in L2 entry {raw:#018x}"));
    }
    let host = raw & OFFSET_MASK;
    if raw & ZERO != 0 {
        if version < 3 {
            return Err(format!("zero flag set in a version 2 L2 entry {raw:#018x}"));
        }
        return Ok(L2Entry::Zero {
            host: (host != 0).then_some(host),
        });
    }
    if host == 0 {
        return Ok(L2Entry::Unallocated);
    }
    Ok(L2Entry::Normal {
        host,
        copied: raw & COPIED != 0,
    })
}

/// Encodes a standard L2 entry for a plainly stored cluster (copied flag set).
pub fn encode_normal(host: u64) -> u64 {
    (host & OFFSET_MASK) | COPIED
}

/// Encodes a compressed cluster descriptor: `len` bytes of compressed data at byte offset
/// `host`. Returns `None` when the data spans more sectors than the descriptor can express.
pub fn encode_compressed(host: u64, len: u64, cluster_bits: u32) -> Option<u64> {
    let x = 62 - (cluster_bits - 8);
    if host >= 1u64 << x || len == 0 {
        return None;
    }
    let first_sector = host / 512;
    let last_sector = (host + len - 1) / 512;
    let additional = last_sector - first_sector;
    if additional >= 1u64 << (62 - x) {
        return None;
    }
    Some(COMPRESSED | (additional << x) | host)
}

/// The subcluster bitmap of an extended L2 entry (its second 64 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubclusterBitmap {
    /// Bit i: subcluster i is allocated (stored at host + i x subcluster size).
    pub alloc: u32,
    /// Bit i: subcluster i reads as zeros.
    pub zero: u32,
}

impl SubclusterBitmap {
    /// Splits the raw second half of an extended L2 entry.
    pub fn from_raw(raw: u64) -> Self {
        SubclusterBitmap {
            alloc: raw as u32,
            zero: (raw >> 32) as u32,
        }
    }

    /// Whether a subcluster is both allocated and zero (invalid).
    pub fn conflict(&self) -> u32 {
        self.alloc & self.zero
    }
}

/// Host offset of an L1 entry's L2 table, or `None` when unallocated. `Err` on reserved bits.
pub fn decode_l1(raw: u64) -> Result<Option<u64>, String> {
    if raw & L1_RESERVED != 0 {
        return Err(format!("reserved bits set in L1 entry {raw:#018x}"));
    }
    let off = raw & OFFSET_MASK;
    Ok((off != 0).then_some(off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_entries() {
        assert_eq!(decode_l2(0, 16, 3), Ok(L2Entry::Unallocated));
        assert_eq!(decode_l2(1, 16, 3), Ok(L2Entry::Zero { host: None }));
        assert!(decode_l2(1, 16, 2).is_err());
        assert_eq!(
            decode_l2(encode_normal(0x50000), 16, 3),
            Ok(L2Entry::Normal {
                host: 0x50000,
                copied: true
            })
        );
        assert!(decode_l2(0x50002, 16, 3).is_err());
        assert_eq!(decode_l1(0x8000_0000_0003_0000), Ok(Some(0x30000)));
        assert!(decode_l1(0x4000_0000_0003_0000).is_err());
    }

    #[test]
    fn compressed_round_trip() {
        for bits in [9u32, 12, 16, 21] {
            for (host, len) in [(0x12345u64, 100u64), (0x200, 512), (0x1ff, 2)] {
                let raw = encode_compressed(host, len, bits).unwrap();
                let L2Entry::Compressed { host: h, len: l } = decode_l2(raw, bits, 3).unwrap()
                else {
                    panic!("not compressed")
                };
                assert_eq!(h, host);
                // The read length covers the data and ends on a sector boundary.
                assert!(l >= len, "{bits} {host:#x} {len} -> {l}");
                assert_eq!((h + l) % 512, 0);
            }
        }
    }
}
