//! The qcow2 header and its extensions (qcow2.txt, "Header" and "Header extensions").
//!
//! [`Qcow2Header::parse`] takes the bytes of the first cluster of the file and validates every
//! field a reader relies on; [`Qcow2Header::to_bytes`] serialises a header for the writer.

use super::Qcow2Error;
use crate::bytes::{be32, be64, set_be32, set_be64};

/// qcow2 magic "QFI\xfb" (qcow2.txt, "Header", bytes 0-3).
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Smallest cluster size: 512 bytes (cluster_bits 9).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size: 2 MiB (cluster_bits 21).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Upper bound on the L1 table in bytes (qemu's QCOW_MAX_L1_SIZE).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Upper bound on the refcount table in bytes (qemu's QCOW_MAX_REFTABLE_SIZE).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest virtual size accepted (qemu's QCOW_MAX_SIZE... bounded further by the L1 limit).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;
/// Length of the version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header without the compression type byte.
pub const V3_HEADER_MIN_LEN: u32 = 104;
/// Length of the version 3 header with the compression type byte and padding (what qemu writes).
pub const V3_HEADER_LEN: u32 = 112;

/// Incompatible feature bit 0: the image was not closed cleanly (lazy refcounts).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: qemu found the image corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: the compression type field is valid and non-zero.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (32 subclusters per cluster).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible feature this version understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear bit 0: the bitmaps extension is consistent with the data.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: the external data file is a valid raw image on its own.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Header extension: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name ("Backing file format name").
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Header extension: persistent bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name ("DATA").
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// 0: raw deflate, window bits 12 (qemu also accepts up to 15 when reading).
    Zlib,
    /// 1: zstd frames.
    Zstd,
}

impl CompressionType {
    /// The name qemu uses (`compression_type=`).
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// The persistent bitmaps header extension (qcow2.txt, "Bitmaps extension").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExtension {
    /// Number of bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Size of the bitmap directory in bytes.
    pub directory_size: u64,
    /// Offset of the bitmap directory in the file.
    pub directory_offset: u64,
}

/// A parsed and validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 for none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Number of L1 entries.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Size of the refcount table in clusters.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 = 16-bit, the only value for version 2).
    pub refcount_order: u32,
    /// Length of the header proper; extensions follow it.
    pub header_length: u32,
    /// Compression type of compressed clusters.
    pub compression_type: CompressionType,
    /// Backing file name, when there is one.
    pub backing_file: Option<String>,
    /// Backing file format from the header extension.
    pub backing_format: Option<String>,
    /// External data file name from the header extension.
    pub data_file: Option<String>,
    /// Persistent bitmaps extension.
    pub bitmaps: Option<BitmapsExtension>,
    /// Feature name table entries: (type 0/1/2, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
}

fn invalid(offset: u64, detail: impl Into<String>) -> Qcow2Error {
    Qcow2Error::invalid("header", offset, detail)
}

impl Qcow2Header {
    /// A new version 3 header with the given geometry and no tables yet; the writer fills in
    /// the offsets.
    pub fn new(version: u32, cluster_bits: u32, size: u64) -> Self {
        Qcow2Header {
            version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: if version >= 3 {
                V3_HEADER_LEN
            } else {
                V2_HEADER_LEN
            },
            compression_type: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            data_file: None,
            bitmaps: None,
            feature_names: Vec::new(),
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128-bit with subclusters.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Size of one L2 entry in bytes (8, or 16 with extended L2).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() { 16 } else { 8 }
    }

    /// Number of entries in one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Bytes of virtual disk covered by one L2 table.
    pub fn l2_coverage(&self) -> u64 {
        self.l2_entries() * self.cluster_size()
    }

    /// Number of L1 entries needed for `size` bytes with this geometry.
    pub fn l1_entries_needed(&self, size: u64) -> u64 {
        size.div_ceil(self.l2_coverage())
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// The name of an incompatible feature bit, from the image's own feature name table when
    /// it has one.
    pub fn feature_name(&self, kind: u8, bit: u8) -> Option<&str> {
        self.feature_names
            .iter()
            .find(|(k, b, _)| *k == kind && *b == bit)
            .map(|(_, _, n)| n.as_str())
    }

    /// Parses the header from the start of the file. `head` must hold at least the first
    /// cluster when the file is that long (extensions and the backing file name live there);
    /// `file_len` is the length of the file, for range checks.
    pub fn parse(head: &[u8], file_len: u64) -> Result<Self, Qcow2Error> {
        if head.len() < V2_HEADER_LEN as usize {
            return Err(invalid(
                0,
                format!(
                    "the file is {} bytes long, shorter than a qcow2 header ({V2_HEADER_LEN} bytes)",
                    head.len()
                ),
            ));
        }
        if head[..4] != MAGIC {
            return Err(invalid(
                0,
                format!("magic is {:02x?}, expected \"QFI\\xfb\"", &head[..4]),
            ));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported(format!(
                "version {version} (only versions 2 and 3 exist)"
            )));
        }
        let cluster_bits = be32(head, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(invalid(
                20,
                format!(
                    "cluster_bits is {cluster_bits}, expected {MIN_CLUSTER_BITS} to {MAX_CLUSTER_BITS} \
                     (512 bytes to 2 MiB clusters)"
                ),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Qcow2Header::new(version, cluster_bits, be64(head, 24));
        h.backing_file_offset = be64(head, 8);
        h.backing_file_size = be32(head, 16);
        h.crypt_method = be32(head, 32);
        h.l1_size = be32(head, 36);
        h.l1_table_offset = be64(head, 40);
        h.refcount_table_offset = be64(head, 48);
        h.refcount_table_clusters = be32(head, 56);
        h.nb_snapshots = be32(head, 60);
        h.snapshots_offset = be64(head, 64);
        h.refcount_order = 4;
        h.header_length = V2_HEADER_LEN;
        if version >= 3 {
            h.parse_v3_fields(head, cluster_size)?;
        }

        // Extensions (parsed before the feature checks so unknown features can be named).
        let ext_start = u64::from(h.header_length);
        h.parse_extensions(head, ext_start)?;
        h.check_features()?;
        h.check_geometry(file_len)?;
        h.read_backing_name(head)?;
        Ok(h)
    }

    /// The fields version 3 adds (features, refcount order, header length, compression type).
    fn parse_v3_fields(&mut self, head: &[u8], cluster_size: u64) -> Result<(), Qcow2Error> {
        let h = self;
        if head.len() < V3_HEADER_MIN_LEN as usize {
            return Err(invalid(
                0,
                format!(
                    "the file is {} bytes long, shorter than a version 3 header ({V3_HEADER_MIN_LEN} bytes)",
                    head.len()
                ),
            ));
        }
        h.incompatible_features = be64(head, 72);
        h.compatible_features = be64(head, 80);
        h.autoclear_features = be64(head, 88);
        h.refcount_order = be32(head, 96);
        h.header_length = be32(head, 100);
        if h.header_length < V3_HEADER_MIN_LEN
            || h.header_length % 8 != 0 && h.header_length != V3_HEADER_MIN_LEN
            || u64::from(h.header_length) > cluster_size.min(head.len() as u64)
        {
            return Err(invalid(
                100,
                format!(
                    "header_length is {}, expected a multiple of 8 from {V3_HEADER_MIN_LEN} to \
                     the cluster size ({cluster_size})",
                    h.header_length
                ),
            ));
        }
        if h.header_length > V3_HEADER_MIN_LEN {
            h.compression_type = match head[104] {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                t => {
                    return Err(Qcow2Error::Unsupported(format!(
                        "compression type {t} (known: 0 zlib, 1 zstd)"
                    )));
                }
            };
        }
        let has_compression_bit = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
        if has_compression_bit != (h.compression_type != CompressionType::Zlib) {
            return Err(invalid(
                72,
                format!(
                    "incompatible feature bit 3 (compression type) is {}, but the compression \
                     type is {}",
                    if has_compression_bit { "set" } else { "clear" },
                    h.compression_type.name()
                ),
            ));
        }
        if h.refcount_order > 6 {
            return Err(invalid(
                96,
                format!(
                    "refcount_order is {}, expected 0 to 6 (1- to 64-bit refcounts)",
                    h.refcount_order
                ),
            ));
        }
        Ok(())
    }

    /// Refuses unknown incompatible features (naming them), encryption and a data file bit
    /// without a data file name.
    fn check_features(&self) -> Result<(), Qcow2Error> {
        let h = self;
        let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| unknown & (1 << b) != 0)
                .map(|b| match h.feature_name(0, b) {
                    Some(n) => format!("bit {b} ({n})"),
                    None => format!("bit {b}"),
                })
                .collect();
            return Err(Qcow2Error::Unsupported(format!(
                "unknown incompatible feature {}",
                names.join(", ")
            )));
        }
        if h.crypt_method != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "encrypted image (crypt_method {}: {}); decrypt it with qemu-img first",
                h.crypt_method,
                match h.crypt_method {
                    1 => "AES",
                    2 => "LUKS",
                    _ => "unknown",
                }
            )));
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 && h.data_file.is_none() {
            return Err(invalid(
                72,
                "incompatible feature bit 2 (external data file) is set but the image names no \
                 data file (header extension 0x44415441)",
            ));
        }

        Ok(())
    }

    /// Checks the size, the L1 table, the refcount table and the snapshot table against the
    /// limits and the file (`file_len` bytes).
    fn check_geometry(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let h = self;
        let cluster_size = h.cluster_size();
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(invalid(24, format!("virtual size {:#x} is absurd", h.size)));
        }
        let needed = h.l1_entries_needed(h.size);
        if u64::from(h.l1_size) < needed {
            return Err(invalid(
                36,
                format!(
                    "l1_size is {}, too small for a virtual size of {} bytes (needs {needed})",
                    h.l1_size, h.size
                ),
            ));
        }
        if u64::from(h.l1_size) * 8 > MAX_L1_BYTES {
            return Err(invalid(
                36,
                format!(
                    "l1_size is {}, larger than the {} MiB limit on L1 tables",
                    h.l1_size,
                    MAX_L1_BYTES >> 20
                ),
            ));
        }
        check_table(
            "L1 table",
            40,
            h.l1_table_offset,
            u64::from(h.l1_size) * 8,
            cluster_size,
            file_len,
            h.l1_size > 0,
        )?;
        let reftable_bytes = u64::from(h.refcount_table_clusters) * cluster_size;
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(invalid(
                56,
                format!(
                    "refcount_table_clusters is {}, larger than the {} MiB limit",
                    h.refcount_table_clusters,
                    MAX_REFTABLE_BYTES >> 20
                ),
            ));
        }
        check_table(
            "refcount table",
            48,
            h.refcount_table_offset,
            reftable_bytes,
            cluster_size,
            file_len,
            true,
        )?;
        if h.nb_snapshots > 65536 {
            return Err(invalid(
                60,
                format!("nb_snapshots is {}, more than 65536", h.nb_snapshots),
            ));
        }
        if h.nb_snapshots > 0 {
            check_table(
                "snapshot table",
                64,
                h.snapshots_offset,
                u64::from(h.nb_snapshots) * 40,
                cluster_size,
                file_len,
                true,
            )?;
        }

        Ok(())
    }

    /// The backing file name: inside the first cluster (`head`), at most 1023 bytes (qemu's
    /// limit), UTF-8.
    fn read_backing_name(&mut self, head: &[u8]) -> Result<(), Qcow2Error> {
        let h = self;
        if h.backing_file_offset != 0 {
            let size = u64::from(h.backing_file_size);
            let end = h.backing_file_offset.checked_add(size);
            if size == 0 || size > 1023 || end.is_none_or(|e| e > head.len() as u64) {
                return Err(invalid(
                    8,
                    format!(
                        "backing file name of {} bytes at {:#x} does not fit in the first cluster \
                         (names are 1 to 1023 bytes)",
                        h.backing_file_size, h.backing_file_offset
                    ),
                ));
            }
            let start = h.backing_file_offset as usize;
            let name = &head[start..start + size as usize];
            h.backing_file = Some(String::from_utf8(name.to_vec()).map_err(|_| {
                invalid(h.backing_file_offset, "the backing file name is not UTF-8")
            })?);
        }
        Ok(())
    }

    fn parse_extensions(&mut self, head: &[u8], start: u64) -> Result<(), Qcow2Error> {
        let mut off = start as usize;
        // The extension area ends at the backing file name or the end of the first cluster.
        let limit = if self.backing_file_offset != 0 {
            (self.backing_file_offset as usize).min(head.len())
        } else {
            head.len()
        };
        let mut seen = 0;
        loop {
            if off + 8 > limit {
                // Version 2 images may have no extension area at all.
                break;
            }
            let ty = be32(head, off);
            let len = be32(head, off + 4) as usize;
            if ty == EXT_END {
                break;
            }
            seen += 1;
            let what = || format!("header extension {ty:#010x}");
            let data_start = off + 8;
            let Some(data_end) = data_start.checked_add(len).filter(|&e| e <= limit) else {
                return Err(Qcow2Error::invalid(
                    what(),
                    off as u64,
                    format!("length {len} runs past the end of the extension area at {limit:#x}"),
                ));
            };
            let data = &head[data_start..data_end];
            let text = |data: &[u8]| -> Result<String, Qcow2Error> {
                let s = data.split(|&b| b == 0).next().unwrap_or(&[]);
                String::from_utf8(s.to_vec())
                    .map_err(|_| Qcow2Error::invalid(what(), off as u64, "name is not UTF-8"))
            };
            match ty {
                EXT_BACKING_FORMAT => self.backing_format = Some(text(data)?),
                EXT_DATA_FILE => self.data_file = Some(text(data)?),
                EXT_FEATURE_NAMES => {
                    for e in data.chunks_exact(48) {
                        let name = e[2..].split(|&b| b == 0).next().unwrap_or(&[]);
                        self.feature_names.push((
                            e[0],
                            e[1],
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                }
                EXT_BITMAPS => {
                    if len < 24 {
                        return Err(Qcow2Error::invalid(
                            what(),
                            off as u64,
                            format!("bitmaps extension is {len} bytes, expected at least 24"),
                        ));
                    }
                    self.bitmaps = Some(BitmapsExtension {
                        nb_bitmaps: be32(data, 0),
                        directory_size: be64(data, 8),
                        directory_offset: be64(data, 16),
                    });
                }
                _ => {} // Unknown and crypto extensions: crypto is refused by crypt_method.
            }
            off = data_start + len.div_ceil(8) * 8;
            if seen > 4096 {
                return Err(Qcow2Error::invalid(
                    "header extensions",
                    start,
                    "more than 4096 header extensions",
                ));
            }
        }
        Ok(())
    }

    /// Serialises the header, its extensions and the backing file name into one buffer of
    /// `cluster_size` bytes (everything must fit in the first cluster).
    ///
    /// The backing file name, when set, is placed after the extensions and
    /// `backing_file_offset` / `backing_file_size` are computed here.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Qcow2Error> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; cs.max(4096)];
        b[0..4].copy_from_slice(&MAGIC);
        set_be32(&mut b, 4, self.version);
        set_be32(&mut b, 20, self.cluster_bits);
        set_be64(&mut b, 24, self.size);
        set_be32(&mut b, 32, self.crypt_method);
        set_be32(&mut b, 36, self.l1_size);
        set_be64(&mut b, 40, self.l1_table_offset);
        set_be64(&mut b, 48, self.refcount_table_offset);
        set_be32(&mut b, 56, self.refcount_table_clusters);
        set_be32(&mut b, 60, self.nb_snapshots);
        set_be64(&mut b, 64, self.snapshots_offset);
        let mut off = if self.version >= 3 {
            set_be64(&mut b, 72, self.incompatible_features);
            set_be64(&mut b, 80, self.compatible_features);
            set_be64(&mut b, 88, self.autoclear_features);
            set_be32(&mut b, 96, self.refcount_order);
            set_be32(&mut b, 100, V3_HEADER_LEN);
            b[104] = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
            V3_HEADER_LEN as usize
        } else {
            V2_HEADER_LEN as usize
        };
        let ext = |b: &mut Vec<u8>, off: &mut usize, ty: u32, data: &[u8]| {
            let padded = data.len().div_ceil(8) * 8;
            if *off + 8 + padded > b.len() {
                return Err(Qcow2Error::invalid(
                    "header",
                    0,
                    "header extensions do not fit in the first cluster",
                ));
            }
            set_be32(b, *off, ty);
            set_be32(b, *off + 4, data.len() as u32);
            b[*off + 8..*off + 8 + data.len()].copy_from_slice(data);
            *off += 8 + padded;
            Ok(())
        };
        if let Some(f) = &self.backing_format {
            ext(&mut b, &mut off, EXT_BACKING_FORMAT, f.as_bytes())?;
        }
        if let Some(f) = &self.data_file {
            ext(&mut b, &mut off, EXT_DATA_FILE, f.as_bytes())?;
        }
        if self.version >= 3 {
            // Feature name table, as qemu writes it, so tools can name the bits.
            let table: &[(u8, u8, &str)] = &[
                (0, 0, "dirty bit"),
                (0, 1, "corrupt bit"),
                (0, 2, "external data file"),
                (0, 3, "compression type"),
                (0, 4, "extended L2 entries"),
                (1, 0, "lazy refcounts"),
                (2, 0, "bitmaps"),
                (2, 1, "raw external data"),
            ];
            let mut data = Vec::with_capacity(table.len() * 48);
            for (k, bit, name) in table {
                let mut e = [0u8; 48];
                e[0] = *k;
                e[1] = *bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                data.extend_from_slice(&e);
            }
            ext(&mut b, &mut off, EXT_FEATURE_NAMES, &data)?;
        }
        // End of extensions.
        off += 8;
        if let Some(name) = &self.backing_file {
            if name.is_empty() || name.len() > 1023 || off + name.len() > cs {
                return Err(Qcow2Error::invalid(
                    "header",
                    8,
                    format!(
                        "backing file name of {} bytes does not fit in the header",
                        name.len()
                    ),
                ));
            }
            set_be64(&mut b, 8, off as u64);
            set_be32(&mut b, 16, name.len() as u32);
            b[off..off + name.len()].copy_from_slice(name.as_bytes());
            off += name.len();
        }
        if off > cs {
            return Err(Qcow2Error::invalid(
                "header",
                0,
                "the header does not fit in the first cluster",
            ));
        }
        b.truncate(cs);
        Ok(b)
    }
}

/// Checks that a table of `len` bytes at `offset` is cluster-aligned and inside the file.
fn check_table(
    what: &str,
    field: u64,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
    required: bool,
) -> Result<(), Qcow2Error> {
    if !required && len == 0 {
        return Ok(());
    }
    if offset == 0 || offset % cluster_size != 0 {
        return Err(invalid(
            field,
            format!(
                "{what} offset {offset:#x} is not a non-zero multiple of the cluster size ({cluster_size:#x})"
            ),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(invalid(
            field,
            format!(
                "{what} at {offset:#x} ({len} bytes) runs past the end of the file ({file_len:#x} bytes)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Qcow2Header {
        let mut h = Qcow2Header::new(3, 16, 1 << 30);
        h.l1_size = 2;
        h.l1_table_offset = 0x30000;
        h.refcount_table_offset = 0x10000;
        h.refcount_table_clusters = 1;
        h.backing_file = Some("base.qcow2".into());
        h.backing_format = Some("qcow2".into());
        h
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.to_bytes().unwrap();
        assert_eq!(bytes.len(), 65536);
        let p = Qcow2Header::parse(&bytes, 0x40000).unwrap();
        assert_eq!(p.version, 3);
        assert_eq!(p.size, 1 << 30);
        assert_eq!(p.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(p.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(p.feature_name(0, 4), Some("extended L2 entries"));
        assert_eq!(p.header_length, V3_HEADER_LEN);
    }

    #[test]
    fn rejects_bad_fields_with_offsets() {
        let good = sample().to_bytes().unwrap();
        let mut b = good.clone();
        set_be32(&mut b, 20, 30);
        let e = Qcow2Header::parse(&b, 0x40000).unwrap_err().to_string();
        assert!(e.contains("cluster_bits is 30"), "{e}");
        let mut b = good.clone();
        set_be32(&mut b, 96, 7);
        let e = Qcow2Header::parse(&b, 0x40000).unwrap_err().to_string();
        assert!(e.contains("refcount_order is 7"), "{e}");
        let mut b = good.clone();
        set_be32(&mut b, 36, 0x7fff_ffff);
        let e = Qcow2Header::parse(&b, 0x40000).unwrap_err().to_string();
        assert!(e.contains("l1_size"), "{e}");
        let mut b = good.clone();
        set_be64(&mut b, 40, 0x7fff_0000);
        let e = Qcow2Header::parse(&b, 0x40000).unwrap_err().to_string();
        assert!(e.contains("past the end of the file"), "{e}");
        let mut b = good.clone();
        set_be64(&mut b, 72, 1 << 9);
        let e = Qcow2Header::parse(&b, 0x40000).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let mut b = good;
        set_be32(&mut b, 32, 2);
        let e = Qcow2Header::parse(&b, 0x40000).unwrap_err().to_string();
        assert!(e.contains("LUKS"), "{e}");
        assert!(Qcow2Header::parse(&[0u8; 10], 10).is_err());
    }
}
