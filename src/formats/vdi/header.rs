//! The pre-header and the header (VirtualBox `VDICore.h`: `VDIPREHEADER`, `VDIHEADER0`,
//! `VDIHEADER1`, `VDIHEADER1PLUS`).
//!
//! Every field is little-endian. The file starts with a 72-byte pre-header: 64 bytes of text
//! for human eyes, the signature `0xbeda107f` and the version (major << 16 | minor). The header
//! follows at byte 72; its layout depends on the major version:
//!
//! - version 0 (`0x00000002` in the files VirtualBox still opens): type, flags, comment,
//!   legacy geometry, disk size, block size, block count, allocated count and three UUIDs. The
//!   block map follows the header directly (byte 420) and the data follows the map, with no
//!   alignment and no per-block extra data;
//! - version 1.1 (`0x00010001`): a header size, then the same fields plus the block map and data
//!   offsets, the per-block extra size (`cbBlockExtra`) and a fourth UUID (the parent's
//!   modification UUID). A header size of 400 or more adds the logical CHS geometry
//!   (`VDIHEADER1PLUS`, what VirtualBox writes today); qemu writes 384 (without it).
//!
//! [`VdiHeader::parse`] validates what VirtualBox's `vdiValidateHeader` validates, plus the
//! bounds diskconv needs before it allocates or reads anything the header sizes.

use super::{invalid, unsupported};
use crate::bytes::{le32, le64};
use crate::formats::error::FormatError;

/// Image signature `0xbeda107f` at byte 64 (`VDI_IMAGE_SIGNATURE`, after the 64 text bytes of
/// `VDIPREHEADER`), as its little-endian bytes `7f 10 da be`.
pub const SIGNATURE: [u8; 4] = 0xbeda_107f_u32.to_le_bytes();
/// Byte offset of the signature.
pub const SIGNATURE_OFFSET: usize = 64;
/// Size of the pre-header (`VDIPREHEADER`): text, signature, version.
pub const PRE_HEADER_SIZE: usize = 72;
/// Size of a version 0 header (`VDIHEADER0`).
pub const HEADER0_SIZE: usize = 348;
/// Size of a version 1 header (`VDIHEADER1`, what qemu writes).
pub const HEADER1_SIZE: usize = 384;
/// Size of a version 1.1 header with the LCHS geometry (`VDIHEADER1PLUS`).
pub const HEADER1_PLUS_SIZE: usize = 400;
/// Bytes read at the start of a file to parse any header: pre-header and the longest header.
pub const READ_SIZE: usize = PRE_HEADER_SIZE + HEADER1_PLUS_SIZE;
/// The version diskconv writes: 1.1.
pub const VERSION_1_1: u32 = 0x0001_0001;
/// The old version-0 value VirtualBox still accepts (0.2).
pub const VERSION_0: u32 = 0x0000_0002;
/// Bytes per sector: the disk size is counted in whole sectors (VirtualBox rounds a size that
/// is not a multiple down when it opens an image).
pub const SECTOR: u64 = 512;
/// Size of the comment field.
pub const COMMENT_SIZE: usize = 256;

/// Smallest block size accepted (one sector).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size (and largest `cbBlockExtra`) accepted: far above the 1 MiB every known
/// writer uses, small enough that a block fits in memory when an updater copies one.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Most blocks accepted: a 256 MiB block map (64 TiB of disk in 1 MiB blocks).
pub const MAX_BLOCKS: u32 = 1 << 26;

/// Absolute offsets of the version 1 fields an updater rewrites.
const V1_ALLOCATED: usize = PRE_HEADER_SIZE + 316;
const V1_UUID_MODIFY: usize = PRE_HEADER_SIZE + 336;
/// Absolute offsets of the version 0 fields an updater rewrites.
const V0_ALLOCATED: usize = PRE_HEADER_SIZE + 296;
const V0_UUID_MODIFY: usize = PRE_HEADER_SIZE + 316;

/// A VirtualBox UUID (`RTUUID`): stored with its first three groups little-endian, as a
/// Windows GUID is; printed lower-case (`{:x}`), as VirtualBox prints and names files.
pub use crate::bytes::Guid as Uuid;

fn uuid_at(b: &[u8], at: usize) -> Uuid {
    Uuid::read(b, at)
}

/// The image type (`VDIIMAGETYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// 1, "normal": a dynamically growing base image.
    Dynamic,
    /// 2: a preallocated base image.
    Fixed,
    /// 3: an undo image of VirtualBox 1.x (a child of another image, read like a differencing
    /// one).
    Undo,
    /// 4: a differencing image: blocks it does not hold come from its parent.
    Differencing,
}

impl ImageType {
    /// The type for the on-disk value, if it is one.
    pub fn from_u32(v: u32) -> Option<ImageType> {
        Some(match v {
            1 => ImageType::Dynamic,
            2 => ImageType::Fixed,
            3 => ImageType::Undo,
            4 => ImageType::Differencing,
            _ => return None,
        })
    }

    /// The on-disk value.
    pub fn to_u32(self) -> u32 {
        match self {
            ImageType::Dynamic => 1,
            ImageType::Fixed => 2,
            ImageType::Undo => 3,
            ImageType::Differencing => 4,
        }
    }

    /// The name `diskconv info` shows.
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Dynamic => "dynamic",
            ImageType::Fixed => "fixed",
            ImageType::Undo => "undo",
            ImageType::Differencing => "differencing",
        }
    }

    /// Whether the image has a parent (differencing and undo images).
    pub fn has_parent(self) -> bool {
        matches!(self, ImageType::Undo | ImageType::Differencing)
    }
}

/// A disk geometry (`VDIDISKGEOMETRY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u32,
    /// Heads.
    pub heads: u32,
    /// Sectors per track.
    pub sectors: u32,
    /// Bytes per sector (512).
    pub sector_size: u32,
}

impl Geometry {
    fn at(b: &[u8], at: usize) -> Geometry {
        Geometry {
            cylinders: le32(b, at),
            heads: le32(b, at + 4),
            sectors: le32(b, at + 8),
            sector_size: le32(b, at + 12),
        }
    }

    fn put(&self, b: &mut [u8], at: usize) {
        b[at..at + 4].copy_from_slice(&self.cylinders.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&self.heads.to_le_bytes());
        b[at + 8..at + 12].copy_from_slice(&self.sectors.to_le_bytes());
        b[at + 12..at + 16].copy_from_slice(&self.sector_size.to_le_bytes());
    }
}

/// A validated pre-header and header, version 0 or 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiHeader {
    /// The pre-header text (up to its first NUL), for eyes only.
    pub text: String,
    /// `major << 16 | minor`.
    pub version: u32,
    /// `cbHeader` of a version 1 header; 348 for version 0.
    pub header_size: u32,
    /// The image type.
    pub image_type: ImageType,
    /// `fFlags` (bit 0: VirtualBox's "zero expand" creation flag; no effect on the layout).
    pub flags: u32,
    /// The comment (UTF-8 up to its first NUL, lossily decoded).
    pub comment: String,
    /// Byte offset of the block map.
    pub blocks_offset: u64,
    /// Byte offset of the data area.
    pub data_offset: u64,
    /// The legacy (physical) geometry.
    pub legacy_geometry: Geometry,
    /// The logical CHS geometry (version 1.1 with a header of 400 bytes or more).
    pub lchs_geometry: Option<Geometry>,
    /// `cbDisk` as stored (the virtual size is this rounded down to a whole sector).
    pub disk_size: u64,
    /// `cbBlock`: bytes of disk per block, a power of two.
    pub block_size: u32,
    /// `cbBlockExtra`: bytes in front of each block's data in the file (0 or a power of two).
    pub block_extra: u32,
    /// `cBlocks`: entries in the block map.
    pub blocks: u32,
    /// `cBlocksAllocated`: blocks stored in the data area.
    pub blocks_allocated: u32,
    /// `uuidCreate`: the image's identity (what a child's `uuid_linkage` names).
    pub uuid_create: Uuid,
    /// `uuidModify`: changes when the image is modified.
    pub uuid_modify: Uuid,
    /// `uuidLinkage`: the parent's `uuid_create` (differencing images).
    pub uuid_linkage: Uuid,
    /// `uuidParentModify`: the parent's `uuid_modify` when this child was made (version 1;
    /// nil in version 0, which has no such field).
    pub uuid_parent_modify: Uuid,
}

impl VdiHeader {
    /// Whether `uuidCreate` or `uuidModify` is nil: VirtualBox refuses such an image (qemu
    /// built without libuuid wrote them); diskconv reads it.
    pub fn nil_uuids(&self) -> bool {
        self.uuid_create.is_nil() || self.uuid_modify.is_nil()
    }

    /// Major version.
    pub fn major(&self) -> u32 {
        self.version >> 16
    }

    /// The virtual size in bytes: the disk size rounded down to a whole sector (as VirtualBox
    /// does when it opens an image; qemu rounds up instead).
    pub fn virtual_size(&self) -> u64 {
        self.disk_size & !(SECTOR - 1)
    }

    /// Bytes of file per allocated block: the extra data, then the block.
    pub fn block_stride(&self) -> u64 {
        u64::from(self.block_size) + u64::from(self.block_extra)
    }

    /// Bytes of the block map (4 per entry).
    pub fn map_len(&self) -> u64 {
        u64::from(self.blocks) * 4
    }

    /// The file offset of allocated block `index` (its extra data comes first, then its data).
    pub fn block_offset(&self, index: u32) -> u64 {
        // At most 2^32 * 2^29 + 2^32: no overflow.
        self.data_offset + u64::from(index) * self.block_stride()
    }

    /// Where the data of the allocated blocks ends (`data_offset` + `blocks_allocated` blocks).
    pub fn data_end(&self) -> u64 {
        self.block_offset(self.blocks_allocated)
    }

    /// The absolute file offset of `cBlocksAllocated`.
    pub fn allocated_field_offset(&self) -> u64 {
        (if self.major() == 0 {
            V0_ALLOCATED
        } else {
            V1_ALLOCATED
        }) as u64
    }

    /// The absolute file offset of `uuidModify`.
    pub fn uuid_modify_field_offset(&self) -> u64 {
        (if self.major() == 0 {
            V0_UUID_MODIFY
        } else {
            V1_UUID_MODIFY
        }) as u64
    }

    /// Parses and validates the pre-header and header from `bytes`, the start of the file
    /// (`file_offset` is where `bytes` came from: 0 for a file, for the messages). At least
    /// [`PRE_HEADER_SIZE`] + the header's size must be present ([`READ_SIZE`] always is
    /// enough).
    pub fn parse(bytes: &[u8], file_offset: u64) -> Result<VdiHeader, FormatError> {
        let at = |rel: usize| file_offset + rel as u64;
        if bytes.len() < PRE_HEADER_SIZE {
            return Err(invalid(
                "pre-header",
                file_offset,
                format!(
                    "{} bytes is too short for the {PRE_HEADER_SIZE}-byte pre-header",
                    bytes.len()
                ),
            ));
        }
        if bytes[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4] != SIGNATURE {
            return Err(invalid(
                "pre-header",
                at(SIGNATURE_OFFSET),
                format!(
                    "signature 0xbeda107f expected, found {:#010x}",
                    le32(bytes, SIGNATURE_OFFSET)
                ),
            ));
        }
        let text_end = bytes[..64].iter().position(|&b| b == 0).unwrap_or(64);
        let text = String::from_utf8_lossy(&bytes[..text_end]).into_owned();
        let version = le32(bytes, 68);
        let major = version >> 16;
        let need = match major {
            0 => HEADER0_SIZE,
            1 => HEADER1_SIZE,
            _ => {
                return Err(unsupported(format!(
                    "header version {}.{} (this build reads versions 0 and 1)",
                    major,
                    version & 0xffff
                )));
            }
        };
        if bytes.len() < PRE_HEADER_SIZE + need {
            return Err(invalid(
                "header",
                at(PRE_HEADER_SIZE),
                format!(
                    "the file ends {} bytes into the {need}-byte version {major} header",
                    bytes.len() - PRE_HEADER_SIZE
                ),
            ));
        }
        let h = &bytes[PRE_HEADER_SIZE..];
        let cstr = |b: &[u8]| {
            let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let hdr = if major == 0 {
            // VDIHEADER0: type, flags, comment, legacy geometry, sizes, counts, 3 UUIDs.
            let blocks = le32(h, 292);
            VdiHeader {
                text,
                version,
                header_size: HEADER0_SIZE as u32,
                image_type: image_type(le32(h, 0), at(PRE_HEADER_SIZE))?,
                flags: le32(h, 4),
                comment: cstr(&h[8..8 + COMMENT_SIZE]),
                blocks_offset: (PRE_HEADER_SIZE + HEADER0_SIZE) as u64,
                // The map follows the header and the data follows the map.
                data_offset: (PRE_HEADER_SIZE + HEADER0_SIZE) as u64 + u64::from(blocks) * 4,
                legacy_geometry: Geometry::at(h, 264),
                lchs_geometry: None,
                disk_size: le64(h, 280),
                block_size: le32(h, 288),
                block_extra: 0,
                blocks,
                blocks_allocated: le32(h, 296),
                uuid_create: uuid_at(h, 300),
                uuid_modify: uuid_at(h, 316),
                uuid_linkage: uuid_at(h, 332),
                uuid_parent_modify: Uuid::NIL,
            }
        } else {
            let header_size = le32(h, 0);
            if (header_size as usize) < HEADER1_SIZE {
                return Err(invalid(
                    "header",
                    at(PRE_HEADER_SIZE),
                    format!("header size (cbHeader) {header_size} is below {HEADER1_SIZE}"),
                ));
            }
            let lchs = version & 0xffff == 1 && header_size as usize >= HEADER1_PLUS_SIZE;
            if lchs && bytes.len() < PRE_HEADER_SIZE + HEADER1_PLUS_SIZE {
                return Err(invalid(
                    "header",
                    at(PRE_HEADER_SIZE),
                    format!(
                        "the file ends {} bytes into the {HEADER1_PLUS_SIZE}-byte header",
                        bytes.len() - PRE_HEADER_SIZE
                    ),
                ));
            }
            VdiHeader {
                text,
                version,
                header_size,
                image_type: image_type(le32(h, 4), at(PRE_HEADER_SIZE + 4))?,
                flags: le32(h, 8),
                comment: cstr(&h[12..12 + COMMENT_SIZE]),
                blocks_offset: u64::from(le32(h, 268)),
                data_offset: u64::from(le32(h, 272)),
                legacy_geometry: Geometry::at(h, 276),
                lchs_geometry: lchs.then(|| Geometry::at(h, 384)),
                disk_size: le64(h, 296),
                block_size: le32(h, 304),
                block_extra: le32(h, 308),
                blocks: le32(h, 312),
                blocks_allocated: le32(h, 316),
                uuid_create: uuid_at(h, 320),
                uuid_modify: uuid_at(h, 336),
                uuid_linkage: uuid_at(h, 352),
                uuid_parent_modify: uuid_at(h, 368),
            }
        };
        hdr.validate(file_offset)?;
        Ok(hdr)
    }

    /// The checks of VirtualBox's `vdiValidateHeader`, and the bounds diskconv needs.
    fn validate(&self, file_offset: u64) -> Result<(), FormatError> {
        let hoff = file_offset + PRE_HEADER_SIZE as u64;
        let bad = |detail: String| Err(invalid("header", hoff, detail));
        let bs = self.block_size;
        if bs == 0 || !bs.is_power_of_two() {
            return bad(format!("block size (cbBlock) {bs} is not a power of two"));
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(unsupported(format!(
                "a block size of {bs} bytes (this build reads {MIN_BLOCK_SIZE} bytes to {} MiB)",
                MAX_BLOCK_SIZE >> 20
            )));
        }
        let extra = self.block_extra;
        if extra != 0 && !extra.is_power_of_two() {
            return bad(format!(
                "per-block extra size (cbBlockExtra) {extra} is neither 0 nor a power of two"
            ));
        }
        if extra > MAX_BLOCK_SIZE {
            return Err(unsupported(format!(
                "{extra} bytes of extra data per block (at most {} MiB)",
                MAX_BLOCK_SIZE >> 20
            )));
        }
        if self.disk_size < SECTOR {
            return bad(format!(
                "disk size (cbDisk) {} is less than one sector",
                self.disk_size
            ));
        }
        if self.blocks == 0 {
            return bad("the block count (cBlocks) is 0".into());
        }
        let room = u64::from(self.blocks) * u64::from(bs);
        if room < self.disk_size {
            return bad(format!(
                "{} blocks of {bs} bytes hold {room} bytes, less than the disk size {}",
                self.blocks, self.disk_size
            ));
        }
        if self.blocks > MAX_BLOCKS {
            return Err(unsupported(format!(
                "a block map of {} entries (at most {MAX_BLOCKS}); the disk is {} bytes in \
                 blocks of {bs}",
                self.blocks, self.disk_size
            )));
        }
        if self.blocks_allocated > self.blocks {
            return bad(format!(
                "{} blocks allocated (cBlocksAllocated) out of {} (cBlocks)",
                self.blocks_allocated, self.blocks
            ));
        }
        // VirtualBox also refuses a nil uuidCreate or uuidModify; qemu built without libuuid
        // wrote such images and reads them. They are read (see `VdiHeader::nil_uuids`); only a
        // child needs its parent's UUID.
        if self.major() == 1 {
            let min_blocks = (PRE_HEADER_SIZE + HEADER1_SIZE) as u64;
            if self.blocks_offset < min_blocks {
                return bad(format!(
                    "block map offset (offBlocks) {:#x} lies inside the pre-header and header \
                     (which end at {min_blocks:#x})",
                    self.blocks_offset
                ));
            }
            // At most 2^32 + 2^28: no overflow.
            let map_end = self.blocks_offset + self.map_len();
            if self.data_offset < map_end {
                return bad(format!(
                    "data offset (offData) {:#x} lies inside the block map, which ends at \
                     {map_end:#x}",
                    self.data_offset
                ));
            }
            if let Some(g) = self
                .lchs_geometry
                .filter(|g| g.sector_size != SECTOR as u32)
            {
                return bad(format!(
                    "logical geometry sector size {} (expected 512)",
                    g.sector_size
                ));
            }
        }
        if self.image_type.has_parent() && self.uuid_linkage.is_nil() {
            return bad(format!(
                "a {} image without a parent UUID (uuidLinkage is nil)",
                self.image_type.name()
            ));
        }
        Ok(())
    }

    /// The pre-header and a version 1.1 header with the LCHS geometry (`VDIHEADER1PLUS`) for
    /// these values, padded to `pad` bytes with zeros (at least [`READ_SIZE`]).
    pub fn to_bytes(&self, pad: usize) -> Vec<u8> {
        let mut b = vec![0u8; pad.max(READ_SIZE)];
        let text = self.text.as_bytes();
        let n = text.len().min(63);
        b[..n].copy_from_slice(&text[..n]);
        b[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4].copy_from_slice(&SIGNATURE);
        b[68..72].copy_from_slice(&VERSION_1_1.to_le_bytes());
        let h = &mut b[PRE_HEADER_SIZE..];
        let put32 =
            |h: &mut [u8], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(h, 0, HEADER1_PLUS_SIZE as u32);
        put32(h, 4, self.image_type.to_u32());
        put32(h, 8, self.flags);
        let c = self.comment.as_bytes();
        let n = c.len().min(COMMENT_SIZE - 1);
        h[12..12 + n].copy_from_slice(&c[..n]);
        // Offsets beyond 4 GiB cannot be written; the writer never makes them.
        put32(
            h,
            268,
            u32::try_from(self.blocks_offset).unwrap_or(u32::MAX),
        );
        put32(h, 272, u32::try_from(self.data_offset).unwrap_or(u32::MAX));
        self.legacy_geometry.put(h, 276);
        h[296..304].copy_from_slice(&self.disk_size.to_le_bytes());
        put32(h, 304, self.block_size);
        put32(h, 308, self.block_extra);
        put32(h, 312, self.blocks);
        put32(h, 316, self.blocks_allocated);
        h[320..336].copy_from_slice(&self.uuid_create.to_bytes());
        h[336..352].copy_from_slice(&self.uuid_modify.to_bytes());
        h[352..368].copy_from_slice(&self.uuid_linkage.to_bytes());
        h[368..384].copy_from_slice(&self.uuid_parent_modify.to_bytes());
        self.lchs_geometry
            .unwrap_or(Geometry {
                sector_size: SECTOR as u32,
                ..Geometry::default()
            })
            .put(h, 384);
        b
    }
}

fn image_type(v: u32, offset: u64) -> Result<ImageType, FormatError> {
    ImageType::from_u32(v).ok_or_else(|| {
        invalid(
            "header",
            offset,
            format!("image type {v} (expected 1 dynamic, 2 fixed, 3 undo or 4 differencing)"),
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const CREATE: Uuid = Uuid::from_bytes([0x11; 16]);
    pub(crate) const MODIFY: Uuid = Uuid::from_bytes([0x22; 16]);

    /// A version 1.1 header (what VirtualBox writes today) of a `disk`-byte image in blocks of
    /// `bs`, built field by field from `VDIHEADER1PLUS`.
    pub(crate) fn v1(disk: u64, bs: u32, allocated: u32) -> Vec<u8> {
        let blocks = disk.div_ceil(u64::from(bs)) as u32;
        let mut b = vec![0u8; 512];
        b[..9].copy_from_slice(b"<<< t >>>"); // text, for eyes only
        b[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes()); // signature
        b[68..72].copy_from_slice(&0x0001_0001u32.to_le_bytes()); // version 1.1
        let h = &mut b[72..];
        h[0..4].copy_from_slice(&400u32.to_le_bytes()); // cbHeader
        h[4..8].copy_from_slice(&1u32.to_le_bytes()); // u32Type: normal (dynamic)
        h[12..17].copy_from_slice(b"hello"); // szComment
        h[268..272].copy_from_slice(&512u32.to_le_bytes()); // offBlocks
        let data = (512 + blocks * 4).next_multiple_of(512);
        h[272..276].copy_from_slice(&data.to_le_bytes()); // offData
        h[288..292].copy_from_slice(&512u32.to_le_bytes()); // legacy cbSector
        h[296..304].copy_from_slice(&disk.to_le_bytes()); // cbDisk
        h[304..308].copy_from_slice(&bs.to_le_bytes()); // cbBlock
        h[312..316].copy_from_slice(&blocks.to_le_bytes()); // cBlocks
        h[316..320].copy_from_slice(&allocated.to_le_bytes()); // cBlocksAllocated
        h[320..336].copy_from_slice(&CREATE.to_bytes()); // uuidCreate
        h[336..352].copy_from_slice(&MODIFY.to_bytes()); // uuidModify
        h[396..400].copy_from_slice(&512u32.to_le_bytes()); // LCHS cbSector
        b
    }

    fn set32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn parses_a_version_1_1_header() {
        let b = v1(5 << 20, 1 << 20, 2);
        let h = VdiHeader::parse(&b, 0).unwrap();
        assert_eq!(h.version, VERSION_1_1);
        assert_eq!(h.text, "<<< t >>>");
        assert_eq!(h.comment, "hello");
        assert_eq!(h.image_type, ImageType::Dynamic);
        assert_eq!((h.blocks_offset, h.data_offset), (512, 1024));
        assert_eq!((h.blocks, h.blocks_allocated), (5, 2));
        assert_eq!(h.virtual_size(), 5 << 20);
        assert_eq!(h.uuid_create, CREATE);
        assert_eq!(h.lchs_geometry.map(|g| g.sector_size), Some(512));
        assert_eq!(h.block_offset(1), 1024 + (1 << 20));
        assert_eq!(h.allocated_field_offset(), 72 + 316);
        // What to_bytes writes parses back to the same values.
        let again = VdiHeader::parse(&h.to_bytes(512), 0).unwrap();
        assert_eq!(again, h);
    }

    #[test]
    fn parses_a_version_0_header() {
        let mut b = vec![0u8; 512];
        b[64..68].copy_from_slice(&SIGNATURE);
        b[68..72].copy_from_slice(&VERSION_0.to_le_bytes());
        let h = &mut b[72..];
        set32(h, 0, 2); // u32Type: fixed
        set32(h, 276, 512); // legacy cbSector
        h[280..288].copy_from_slice(&(3u64 << 20).to_le_bytes()); // cbDisk
        set32(h, 288, 1 << 20); // cbBlock
        set32(h, 292, 3); // cBlocks
        set32(h, 296, 3); // cBlocksAllocated
        h[300..316].copy_from_slice(&CREATE.to_bytes()); // uuidCreate
        h[316..332].copy_from_slice(&MODIFY.to_bytes()); // uuidModify
        let h = VdiHeader::parse(&b, 0).unwrap();
        assert_eq!(h.major(), 0);
        assert_eq!(h.image_type, ImageType::Fixed);
        // The map right after the 348-byte header, the data right after the map.
        assert_eq!((h.blocks_offset, h.data_offset), (420, 432));
        assert_eq!(h.block_extra, 0);
        assert_eq!(h.allocated_field_offset(), 72 + 296);
        assert_eq!(h.uuid_modify_field_offset(), 72 + 316);
    }

    #[test]
    fn odd_disk_sizes_round_down_to_a_sector() {
        let mut b = v1(5 << 20, 1 << 20, 0);
        b[72 + 296..72 + 304].copy_from_slice(&((5u64 << 20) - 100).to_le_bytes());
        let h = VdiHeader::parse(&b, 0).unwrap();
        assert_eq!(h.virtual_size(), (5 << 20) - 512);
    }

    #[test]
    fn rejects_impossible_fields_naming_them() {
        let cases: Vec<(usize, u32, &str)> = vec![
            (64, 0x1234_5678, "signature 0xbeda107f expected"),
            (68, 0x0002_0000, "header version 2.0"),
            (72, 100, "cbHeader"),
            (72 + 4, 9, "image type 9"),
            (72 + 304, 0, "cbBlock"),
            (72 + 304, 3 << 20, "not a power of two"),
            (72 + 304, 1 << 30, "block size of 1073741824"),
            (72 + 308, 100, "cbBlockExtra"),
            (72 + 312, 0, "cBlocks) is 0"),
            (72 + 312, 2, "less than the disk size"),
            (72 + 312, u32::MAX, "block map of"),
            (72 + 316, 6, "cBlocksAllocated"),
            (72 + 268, 8, "offBlocks"),
            (72 + 272, 520, "offData"),
            (72 + 396, 4096, "logical geometry sector size 4096"),
        ];
        for (at, v, want) in cases {
            let mut b = v1(5 << 20, 1 << 20, 0);
            set32(&mut b, at, v);
            let e = VdiHeader::parse(&b, 0).unwrap_err().to_string();
            assert!(e.contains(want), "field at {at} = {v}: {e}");
        }
        let mut b = v1(5 << 20, 1 << 20, 0);
        set32(&mut b, 72 + 304, 0);
        let e = VdiHeader::parse(&b, 0).unwrap_err().to_string();
        assert!(e.starts_with("VDI header at 0x48: block size"), "{e}");
        // Nil UUIDs (old qemu) are read; VirtualBox would refuse them.
        let mut b = v1(5 << 20, 1 << 20, 0);
        b[72 + 320..72 + 352].fill(0);
        assert!(VdiHeader::parse(&b, 0).unwrap().nil_uuids());
        // A differencing image must name its parent.
        let mut b = v1(5 << 20, 1 << 20, 0);
        set32(&mut b, 72 + 4, 4);
        let e = VdiHeader::parse(&b, 0).unwrap_err().to_string();
        assert!(e.contains("uuidLinkage is nil"), "{e}");
        // Truncated.
        for len in [0, 71, 100, 455] {
            let b = v1(5 << 20, 1 << 20, 0);
            assert!(VdiHeader::parse(&b[..len], 0).is_err(), "{len}");
        }
        // A 384-byte version 1 header (qemu's) is complete without the LCHS geometry.
        let mut b = v1(5 << 20, 1 << 20, 0);
        set32(&mut b, 72, 384);
        let h = VdiHeader::parse(&b[..456], 0).unwrap();
        assert_eq!(h.lchs_geometry, None);
    }

    #[test]
    fn uuids_print_and_parse_as_virtualbox_does() {
        // The first three fields are stored little-endian.
        let u = Uuid::from_bytes([
            0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(format!("{u:x}"), "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!(
            Uuid::parse("{12345678-9ABC-def0-0123-456789abcdef}"),
            Some(u)
        );
        assert_eq!(Uuid::parse("12345678-9abc-def0-0123-456789abcdef"), Some(u));
        assert_eq!(Uuid::parse("12345678-9abc-def0-0123-456789abcdeg"), None);
        assert_eq!(Uuid::parse("12345678"), None);
        let r = Uuid::random();
        assert!(!r.is_nil());
        assert_eq!(Uuid::parse(&r.to_string()), Some(r));
        assert_ne!(r, Uuid::random());
    }
}
