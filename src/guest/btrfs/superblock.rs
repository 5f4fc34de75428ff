//! The btrfs superblock: the primary copy at 64 KiB (the mirrors at 64 MiB and 256 GiB are not
//! read), its checksum, the fields the reader needs and the features it refuses.

use super::{corrupt, invalid};
use crate::error::{Error, Result};

/// Where the primary superblock lies on the device.
pub const SUPER_OFFSET: u64 = 0x10000;
/// The superblock's size on disk.
pub const SUPER_SIZE: usize = 4096;
/// "_BHRfS_M" at superblock byte 0x40 (`BTRFS_MAGIC`).
pub const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// The size of the `sys_chunk_array` field (`BTRFS_SYSTEM_CHUNK_ARRAY_SIZE`).
pub const SYS_CHUNK_ARRAY_MAX: usize = 2048;
/// Where the `sys_chunk_array` starts in the superblock.
const SYS_CHUNK_ARRAY_AT: usize = 0x32b;

/// `BTRFS_FEATURE_INCOMPAT_METADATA_UUID`: tree blocks carry `metadata_uuid`, not `fsid`.
const INCOMPAT_METADATA_UUID: u64 = 0x400;
/// `BTRFS_FEATURE_INCOMPAT_EXTENT_TREE_V2`.
const INCOMPAT_EXTENT_TREE_V2: u64 = 0x2000;
/// `BTRFS_FEATURE_INCOMPAT_RAID_STRIPE_TREE`.
const INCOMPAT_RAID_STRIPE_TREE: u64 = 0x4000;
/// The incompatible features this reader knows and reads: mixed backrefs, default subvolume,
/// mixed groups, LZO, zstd, big metadata, extended inode refs, RAID5/6 (refused per chunk),
/// skinny metadata, no-holes, metadata UUID, RAID1C3/4 (single device: refused by
/// `num_devices`), zoned, simple quotas.
const INCOMPAT_KNOWN: u64 = 0x1fff | 0x10000;

/// The checksum algorithm of tree blocks and the superblock (`csum_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsumType {
    /// CRC-32C, the default.
    Crc32c,
    /// xxHash64 (seed 0).
    Xxhash64,
    /// SHA-256.
    Sha256,
}

impl CsumType {
    fn from_raw(v: u16, offset: u64) -> Result<CsumType> {
        match v {
            0 => Ok(CsumType::Crc32c),
            1 => Ok(CsumType::Xxhash64),
            2 => Ok(CsumType::Sha256),
            3 => Err(Error::Unsupported(format!(
                "btrfs superblock at {offset:#x}: the file system uses BLAKE2b checksums, \
                 which this reader does not compute"
            ))),
            v => Err(invalid(
                "superblock",
                offset + 0xc4,
                format!("checksum type is {v}, expected 0 to 3"),
            )),
        }
    }

    /// Whether `block[..csum size]` holds the checksum of `block[0x20..]`; returns the stored
    /// and computed values (hex) when not.
    pub fn verify(self, block: &[u8]) -> std::result::Result<(), (String, String)> {
        let (stored, data) = (&block[..0x20], &block[0x20..]);
        let computed: Vec<u8> = match self {
            CsumType::Crc32c => crc32c::crc32c(data).to_le_bytes().to_vec(),
            CsumType::Xxhash64 => xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes().to_vec(),
            CsumType::Sha256 => {
                use sha2::Digest;
                sha2::Sha256::digest(data).to_vec()
            }
        };
        if stored[..computed.len()] == computed[..] {
            Ok(())
        } else {
            Err((hex(&stored[..computed.len()]), hex(&computed)))
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The superblock fields the reader uses.
#[derive(Debug, Clone)]
pub struct Superblock {
    /// The file system UUID.
    pub fsid: [u8; 16],
    /// The UUID tree blocks carry (`metadata_uuid` with that feature, else `fsid`).
    pub metadata_uuid: [u8; 16],
    /// Logical address of the root tree's root.
    pub root: u64,
    /// Logical address of the chunk tree's root.
    pub chunk_root: u64,
    /// Level of the root tree's root.
    pub root_level: u8,
    /// Level of the chunk tree's root.
    pub chunk_root_level: u8,
    /// Generation of the last commit.
    pub generation: u64,
    /// The directory of the root tree that holds the "default" entry (normally 6).
    pub root_dir_objectid: u64,
    /// Data block size.
    pub sectorsize: u32,
    /// Tree block size.
    pub nodesize: u32,
    /// Checksum algorithm.
    pub csum_type: CsumType,
    /// The label (up to the first NUL).
    pub label: String,
    /// Incompatible feature bits.
    pub incompat: u64,
    /// The bootstrap chunk items (`sys_chunk_array`, `sys_chunk_array_size` bytes).
    pub sys_chunk_array: Vec<u8>,
    /// Where `sys_chunk_array` lies on the device.
    pub sys_chunk_array_offset: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Superblock {
    /// Parses and checks the superblock in `bytes`, read from device offset `offset`.
    pub fn parse(bytes: &[u8], offset: u64) -> Result<Superblock> {
        if bytes.len() < SUPER_SIZE {
            return Err(invalid(
                "superblock",
                offset,
                format!("{} bytes, expected {SUPER_SIZE}", bytes.len()),
            ));
        }
        let b = &bytes[..SUPER_SIZE];
        if &b[0x40..0x48] != MAGIC {
            return Err(invalid(
                "superblock",
                offset + 0x40,
                format!("magic is {:02x?}, expected \"_BHRfS_M\"", &b[0x40..0x48]),
            ));
        }
        let csum_type = CsumType::from_raw(u16::from_le_bytes([b[0xc4], b[0xc5]]), offset)?;
        if let Err((stored, computed)) = csum_type.verify(b) {
            return Err(invalid(
                "superblock",
                offset,
                format!("checksum is {stored}, the bytes give {computed}"),
            ));
        }
        let bytenr = u64_at(b, 0x30);
        if bytenr != offset {
            return Err(corrupt(
                "superblock",
                offset + 0x30,
                format!("says it lies at {bytenr:#x}, expected {offset:#x}"),
            ));
        }
        let num_devices = u64_at(b, 0x88);
        if num_devices != 1 {
            return Err(Error::Unsupported(format!(
                "btrfs superblock at {offset:#x}: the file system spans {num_devices} devices; \
                 only single-device btrfs file systems are read"
            )));
        }
        let incompat = u64_at(b, 0xbc);
        for (bit, name) in [
            (INCOMPAT_EXTENT_TREE_V2, "extent tree v2"),
            (INCOMPAT_RAID_STRIPE_TREE, "the RAID stripe tree"),
        ] {
            if incompat & bit != 0 {
                return Err(Error::Unsupported(format!(
                    "btrfs superblock at {offset:#x}: the file system uses {name} \
                     (incompatible feature {bit:#x})"
                )));
            }
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::Unsupported(format!(
                "btrfs superblock at {offset:#x}: unknown incompatible features {:#x}",
                incompat & !INCOMPAT_KNOWN
            )));
        }
        let sectorsize = u32_at(b, 0x90);
        let nodesize = u32_at(b, 0x94);
        let pow2 = |v: u32| (4096..=65536).contains(&v) && v.is_power_of_two();
        if !pow2(sectorsize) {
            return Err(invalid(
                "superblock",
                offset + 0x90,
                format!("sector size is {sectorsize}, expected a power of two from 4096 to 65536"),
            ));
        }
        if !pow2(nodesize) || nodesize < sectorsize {
            return Err(invalid(
                "superblock",
                offset + 0x94,
                format!(
                    "node size is {nodesize}, expected a power of two from the sector size \
                     ({sectorsize}) to 65536"
                ),
            ));
        }
        let sys_size = u32_at(b, 0xa0) as usize;
        if sys_size > SYS_CHUNK_ARRAY_MAX {
            return Err(invalid(
                "superblock",
                offset + 0xa0,
                format!("sys_chunk_array_size is {sys_size}, at most {SYS_CHUNK_ARRAY_MAX}"),
            ));
        }
        let root_level = b[0xc6];
        let chunk_root_level = b[0xc7];
        for (lvl, at, what) in [
            (root_level, 0xc6, "root"),
            (chunk_root_level, 0xc7, "chunk root"),
        ] {
            if lvl >= super::tree::MAX_LEVEL {
                return Err(invalid(
                    "superblock",
                    offset + at,
                    format!(
                        "{what} level is {lvl}, at most {}",
                        super::tree::MAX_LEVEL - 1
                    ),
                ));
            }
        }
        let mut fsid = [0u8; 16];
        fsid.copy_from_slice(&b[0x20..0x30]);
        let mut metadata_uuid = fsid;
        if incompat & INCOMPAT_METADATA_UUID != 0 {
            metadata_uuid.copy_from_slice(&b[0x23b..0x24b]);
        }
        let label_raw = &b[0x12b..0x22b];
        let end = label_raw
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(label_raw.len());
        Ok(Superblock {
            fsid,
            metadata_uuid,
            root: u64_at(b, 0x50),
            chunk_root: u64_at(b, 0x58),
            root_level,
            chunk_root_level,
            generation: u64_at(b, 0x48),
            root_dir_objectid: u64_at(b, 0x80),
            sectorsize,
            nodesize,
            csum_type,
            label: String::from_utf8_lossy(&label_raw[..end]).into_owned(),
            incompat,
            sys_chunk_array: b[SYS_CHUNK_ARRAY_AT..SYS_CHUNK_ARRAY_AT + sys_size].to_vec(),
            sys_chunk_array_offset: offset + SYS_CHUNK_ARRAY_AT as u64,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid superblock: magic, bytenr, one device, 4 KiB sectors, 16 KiB nodes,
    /// label "lbl", CRC-32C checksum.
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; SUPER_SIZE];
        b[0x20..0x30].copy_from_slice(&[7; 16]); // fsid
        b[0x30..0x38].copy_from_slice(&SUPER_OFFSET.to_le_bytes()); // bytenr
        b[0x40..0x48].copy_from_slice(MAGIC); // magic
        b[0x50..0x58].copy_from_slice(&0x40_0000u64.to_le_bytes()); // root
        b[0x58..0x60].copy_from_slice(&0x10_0000u64.to_le_bytes()); // chunk_root
        b[0x80..0x88].copy_from_slice(&6u64.to_le_bytes()); // root_dir_objectid
        b[0x88..0x90].copy_from_slice(&1u64.to_le_bytes()); // num_devices
        b[0x90..0x94].copy_from_slice(&4096u32.to_le_bytes()); // sectorsize
        b[0x94..0x98].copy_from_slice(&16384u32.to_le_bytes()); // nodesize
        b[0x12b..0x12e].copy_from_slice(b"lbl"); // label
        reseal(&mut b);
        b
    }

    /// Recomputes the CRC-32C of a superblock.
    pub(crate) fn reseal(b: &mut [u8]) {
        let c = crc32c::crc32c(&b[0x20..SUPER_SIZE]);
        b[..4].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn parses_a_sample() {
        let s = Superblock::parse(&sample(), SUPER_OFFSET).unwrap();
        assert_eq!(s.label, "lbl");
        assert_eq!(s.nodesize, 16384);
        assert_eq!(s.root, 0x40_0000);
        assert_eq!(s.csum_type, CsumType::Crc32c);
        assert!(s.sys_chunk_array.is_empty());
    }

    #[test]
    fn refuses_bad_fields_with_their_offset() {
        let mut b = sample();
        b[0x40] = b'X';
        let e = Superblock::parse(&b, SUPER_OFFSET).unwrap_err().to_string();
        assert!(
            e.contains("superblock at 0x10040") && e.contains("magic"),
            "{e}"
        );
        let mut b = sample();
        b[0x200] ^= 1;
        let e = Superblock::parse(&b, SUPER_OFFSET).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let mut b = sample();
        b[0x88] = 2;
        reseal(&mut b);
        let e = Superblock::parse(&b, SUPER_OFFSET).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(e.to_string().contains("2 devices"), "{e}");
        let mut b = sample();
        b[0x94..0x98].copy_from_slice(&1000u32.to_le_bytes());
        reseal(&mut b);
        let e = Superblock::parse(&b, SUPER_OFFSET).unwrap_err().to_string();
        assert!(e.contains("node size is 1000"), "{e}");
        let mut b = sample();
        b[0xa0..0xa4].copy_from_slice(&4000u32.to_le_bytes());
        reseal(&mut b);
        assert!(Superblock::parse(&b, SUPER_OFFSET).is_err());
        let mut b = sample();
        b[0xc4] = 3;
        reseal(&mut b);
        let e = Superblock::parse(&b, SUPER_OFFSET).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(Superblock::parse(&sample()[..100], SUPER_OFFSET).is_err());
    }
}
