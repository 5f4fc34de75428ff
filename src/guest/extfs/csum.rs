//! The checksums of ext4 metadata: crc32c as the kernel computes it (`ext4_chksum`: no
//! inversion before or after, so a checksum is seeded by the previous one) and the crc16 of the
//! older `gdt_csum` feature.

/// `ext4_chksum(seed, data)`: crc32c without the pre- and post-inversion of the standard
/// function (the `crc32c` crate inverts both; inverting the seed and the result undoes that).
pub(crate) fn ext4_crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// CRC-16 (polynomial 0x8005, reflected: 0xA001) as e2fsprogs' `ext2fs_crc16`, seeded by `crc`.
pub(crate) fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The seed of every metadata_csum checksum: `s_checksum_seed` when the `csum_seed` feature is
/// on, else the crc of the file system UUID.
pub(crate) fn fs_seed(uuid: &[u8; 16], csum_seed: Option<u32>) -> u32 {
    csum_seed.unwrap_or_else(|| ext4_crc32c(!0, uuid))
}

/// The per-inode seed: the fs seed, then the inode number and its generation (little-endian).
pub(crate) fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let s = ext4_crc32c(fs_seed, &ino.to_le_bytes());
    ext4_crc32c(s, &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_raw_matches_standard_with_inversions() {
        // Standard crc32c("123456789") = 0xE3069283 (the check value of CRC-32C).
        assert_eq!(!ext4_crc32c(!0, b"123456789"), 0xE306_9283);
        // Chaining: one call over the whole equals two calls seeded by the first.
        let a = ext4_crc32c(7, b"hello world");
        let b = ext4_crc32c(ext4_crc32c(7, b"hello "), b"world");
        assert_eq!(a, b);
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC check value for "123456789" (seed 0): 0xBB3D.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
