//! [`VmdkReader`]: one VMDK disk (all its extents, and its parent chain) as an
//! [`ImageReader`].
//!
//! The disk is opened either from a text descriptor (its extents are other files, opened through
//! the [`OpenContext`] relative to the descriptor's folder) or from a hosted sparse file
//! (`KDMV`: monolithicSparse, streamOptimized, or a bare sparse extent), whose embedded
//! descriptor, if any, supplies the create type, CID and parent. Grains not allocated in this
//! link read from the parent named by `parentFileNameHint`, whose `CID` must equal our
//! `parentCID`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::VmdkError;
use super::cowd::{COWD_HEADER_SIZE, COWD_MAGIC, parse_cowd_header};
use super::descriptor::{MAX_DESCRIPTOR_BYTES, VmdkDescriptor, VmdkExtentLine, VmdkExtentType};
use super::sesparse::SeSparseExtent;
use super::sparse::{Grain, HEADER_SIZE, SPARSE_MAGIC, SparseExtent, SparseHeader};
use super::stream::{GRAIN_MARKER_SIZE, Marker, inflate_grain};
use crate::error::{Error, Result, ResultExt};
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, check_read_range, map_through_parent,
    read_through_parent,
};
use crate::reference::OpenContext;
use crate::storage::Storage;

/// Most grain lookups one `map` call makes while merging grains into one extent.
const MAX_MERGE_LOOKUPS: u32 = 1 << 16;

/// What one extent of the disk is backed by.
enum Backing {
    /// A hosted sparse extent (or a COWD extent, which has the same lookup).
    Sparse(SparseExtent),
    /// An ESXi seSparse extent.
    SeSparse(SeSparseExtent),
    /// Raw bytes in a file from this byte offset.
    Flat(Arc<dyn Storage>, u64),
    /// Zeros.
    Zero,
}

/// One extent, placed in the virtual disk.
struct VExtent {
    /// First byte in the virtual disk.
    start: u64,
    /// Length in bytes.
    len: u64,
    backing: Backing,
    /// File name as written in the descriptor (for messages).
    name: String,
}

/// What a stretch of this link (not the parent) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Data { ext: usize, host: u64 },
    Compressed { ext: usize, grain: u64, host: u64 },
    Zero,
    Unallocated,
}

/// The last decompressed grain: (extent index, grain number, bytes).
type GrainCache = Mutex<Option<(usize, u64, Arc<Vec<u8>>)>>;

/// A VMDK disk opened for reading.
pub struct VmdkReader {
    path: Option<PathBuf>,
    storage: Arc<dyn Storage>,
    file_len: u64,
    descriptor: VmdkDescriptor,
    /// The descriptor was embedded in a sparse file (or synthesised for a bare extent).
    embedded: bool,
    extents: Vec<VExtent>,
    size: u64,
    parent: Option<Box<dyn ImageReader>>,
    parent_size: u64,
    last_grain: GrainCache,
}

impl std::fmt::Debug for VmdkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkReader")
            .field("path", &self.path)
            .field("create_type", &self.descriptor.create_type)
            .field("size", &self.size)
            .field("extents", &self.extents.len())
            .finish()
    }
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

/// Reads and validates the sparse header at the start of `storage`.
fn read_sparse_header(storage: &dyn Storage) -> Result<SparseHeader> {
    let mut b = [0u8; HEADER_SIZE];
    storage
        .read_exact_at(&mut b, 0)
        .map_err(io_err("reading the sparse extent header".into()))?;
    Ok(SparseHeader::parse(&b, 0)?)
}

/// A sparse extent must hold at least the sectors its descriptor line gives it.
fn check_capacity(line: &VmdkExtentLine, capacity: u64) -> Result<()> {
    if capacity < line.sectors {
        return Err(VmdkError::corrupt(
            "sparse extent header",
            0,
            format!(
                "capacity {capacity} sectors, but descriptor line {} gives the extent {} sectors",
                line.line, line.sectors
            ),
        )
        .into());
    }
    Ok(())
}

/// Opens a vmfsSparse (COWD) extent.
fn open_cowd(storage: Arc<dyn Storage>) -> Result<SparseExtent> {
    let mut b = [0u8; COWD_HEADER_SIZE];
    storage
        .read_exact_at(&mut b, 0)
        .map_err(io_err("reading the COWD header".into()))?;
    let h = parse_cowd_header(&b, 0)?;
    SparseExtent::open_with_gd_entries(storage, h.sparse, Some(h.gd_entries))
}

impl VmdkReader {
    /// Opens the VMDK whose descriptor or sparse extent is in `storage` (found at `path`).
    pub fn open(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<Self> {
        let file_len = storage
            .len()
            .map_err(io_err("getting the file length".into()))?;
        let mut head = [0u8; 4];
        let n = storage
            .read_at(&mut head, 0)
            .map_err(io_err("reading the first bytes".into()))?;
        let (descriptor, embedded, extents) = if n == 4 && head == SPARSE_MAGIC {
            Self::open_sparse_file(storage.clone(), file_len, path, ctx)?
        } else if n == 4 && head == COWD_MAGIC {
            let ext = open_cowd(storage.clone())?;
            let sectors = ext.header.capacity;
            let d = VmdkDescriptor {
                version: 1,
                create_type: "vmfsSparse".into(),
                extents: vec![VmdkExtentLine {
                    access: super::descriptor::VmdkAccess::ReadWrite,
                    sectors,
                    kind: VmdkExtentType::VmfsSparse,
                    file: String::new(),
                    offset: 0,
                    line: 0,
                }],
                ..VmdkDescriptor::default()
            };
            let ex = vec![VExtent {
                start: 0,
                len: sectors * 512,
                backing: Backing::Sparse(ext),
                name: String::new(),
            }];
            (d, true, ex)
        } else {
            let d = Self::read_text_descriptor(storage.as_ref(), file_len)?;
            let ex = Self::open_extents(&d, path, ctx)?;
            (d, false, ex)
        };
        let size = extents.last().map_or(0, |e| e.start + e.len);
        let mut reader = VmdkReader {
            path: path.map(Path::to_path_buf),
            storage,
            file_len,
            descriptor,
            embedded,
            extents,
            size,
            parent: None,
            parent_size: 0,
            last_grain: Mutex::new(None),
        };
        reader.open_parent(path, ctx)?;
        Ok(reader)
    }

    /// A file starting with `KDMV`: monolithicSparse, streamOptimized or a bare sparse extent.
    fn open_sparse_file(
        storage: Arc<dyn Storage>,
        file_len: u64,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<(VmdkDescriptor, bool, Vec<VExtent>)> {
        let header = read_sparse_header(storage.as_ref())?;
        let descriptor = if header.descriptor_offset != 0 {
            let off = header.descriptor_offset.saturating_mul(512);
            let len = header.descriptor_size * 512; // descriptor_size <= 2048 (validated)
            if off.saturating_add(len) > file_len {
                return Err(VmdkError::corrupt(
                    "embedded descriptor",
                    off,
                    format!(
                        "{len} bytes at {off:#x} run past the end of the file ({file_len:#x} bytes)"
                    ),
                )
                .into());
            }
            let mut b = vec![0u8; len as usize];
            storage.read_exact_at(&mut b, off).map_err(io_err(format!(
                "reading the embedded descriptor at {off:#x}"
            )))?;
            let d = VmdkDescriptor::parse(&b, off)?;
            if header.capacity == 0 {
                // A sparse file used only as a container for a descriptor naming other extents
                // (qemu accepts these too): the extents resolve like a stand-alone descriptor's.
                let ex = Self::open_extents(&d, path, ctx)?;
                return Ok((d, false, ex));
            }
            if d.extents.len() != 1 || d.extents[0].kind != VmdkExtentType::Sparse {
                return Err(VmdkError::Unsupported(format!(
                    "an embedded descriptor with {} extent(s) of types {:?} (expected one SPARSE extent, the file itself)",
                    d.extents.len(),
                    d.extents.iter().map(|e| e.kind).collect::<Vec<_>>()
                ))
                .into());
            }
            d
        } else {
            // A bare sparse extent (e.g. an -s001 file opened by itself).
            VmdkDescriptor {
                version: 1,
                create_type: if header.compressed() {
                    "streamOptimized".into()
                } else {
                    "monolithicSparse".into()
                },
                extents: vec![VmdkExtentLine {
                    access: super::descriptor::VmdkAccess::ReadWrite,
                    sectors: header.capacity,
                    kind: VmdkExtentType::Sparse,
                    file: String::new(),
                    offset: 0,
                    line: 0,
                }],
                ..VmdkDescriptor::default()
            }
        };
        check_capacity(&descriptor.extents[0], header.capacity)?;
        let len = descriptor.extents[0].sectors * 512;
        let sparse = SparseExtent::open(storage, header)?;
        let extents = vec![VExtent {
            start: 0,
            len,
            backing: Backing::Sparse(sparse),
            name: descriptor.extents[0].file.clone(),
        }];
        Ok((descriptor, true, extents))
    }

    fn read_text_descriptor(storage: &dyn Storage, file_len: u64) -> Result<VmdkDescriptor> {
        if file_len > MAX_DESCRIPTOR_BYTES as u64 {
            return Err(VmdkError::invalid(
                "descriptor",
                0,
                format!(
                    "the file is neither a sparse extent (no KDMV magic) nor a text descriptor of at most {MAX_DESCRIPTOR_BYTES} bytes ({file_len} bytes)"
                ),
            )
            .into());
        }
        let mut b = vec![0u8; file_len as usize];
        storage
            .read_exact_at(&mut b, 0)
            .map_err(io_err("reading the descriptor".into()))?;
        Ok(VmdkDescriptor::parse(&b, 0)?)
    }

    fn open_extents(
        d: &VmdkDescriptor,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<Vec<VExtent>> {
        let mut out = Vec::with_capacity(d.extents.len());
        let mut start = 0u64;
        for line in &d.extents {
            // sectors <= MAX_SECTORS and their sum too (descriptor checks): no overflow.
            let len = line.sectors * 512;
            let shown = path
                .and_then(Path::parent)
                .map_or_else(|| PathBuf::from(&line.file), |p| p.join(&line.file));
            let backing = match line.kind {
                VmdkExtentType::Zero => Backing::Zero,
                VmdkExtentType::VmfsSparse => {
                    let s = ctx.open_reference_storage(path, "extent", &line.file)?;
                    let ext = open_cowd(s).in_file(&shown)?;
                    check_capacity(line, ext.header.capacity).in_file(&shown)?;
                    Backing::Sparse(ext)
                }
                VmdkExtentType::SeSparse => {
                    let s = ctx.open_reference_storage(path, "extent", &line.file)?;
                    let ext = SeSparseExtent::open(s).in_file(&shown)?;
                    check_capacity(line, ext.header.capacity).in_file(&shown)?;
                    Backing::SeSparse(ext)
                }
                VmdkExtentType::Sparse => {
                    let s = ctx.open_reference_storage(path, "extent", &line.file)?;
                    let open = || -> Result<SparseExtent> {
                        let h = read_sparse_header(s.as_ref())?;
                        check_capacity(line, h.capacity)?;
                        SparseExtent::open(s.clone(), h)
                    };
                    Backing::Sparse(open().in_file(&shown)?)
                }
                _ => {
                    let s = ctx.open_reference_storage(path, "extent", &line.file)?;
                    let flen = s
                        .len()
                        .map_err(io_err("getting the extent's length".into()))
                        .in_file(&shown)?;
                    let off = line.offset * 512;
                    let need = off + len;
                    if flen < need {
                        return Err(Error::from(VmdkError::corrupt(
                            "flat extent",
                            off,
                            format!(
                                "descriptor line {} needs {need:#x} bytes ({} sectors from sector {}) but the file has {flen:#x}",
                                line.line, line.sectors, line.offset
                            ),
                        ))
                        .in_file(&shown));
                    }
                    Backing::Flat(s, off)
                }
            };
            out.push(VExtent {
                start,
                len,
                backing,
                name: line.file.clone(),
            });
            start += len;
        }
        Ok(out)
    }

    fn open_parent(&mut self, path: Option<&Path>, ctx: &OpenContext<'_>) -> Result<()> {
        let d = &self.descriptor;
        if !d.has_parent() {
            return Ok(());
        }
        let want = d.parent_cid.unwrap_or(0);
        let Some(hint) = d.parent_hint.clone() else {
            return Err(VmdkError::corrupt(
                "descriptor",
                0,
                format!("parentCID is {want:08x} but there is no parentFileNameHint"),
            )
            .into());
        };
        let parent = ctx.open_reference(path, "parent", &hint, Some(Format::Vmdk))?;
        let pinfo = parent.info();
        let cid = pinfo
            .flags
            .iter()
            .find_map(|f| f.strip_prefix("cid="))
            .and_then(|v| u32::from_str_radix(v, 16).ok());
        if cid != Some(want) {
            let me = path.map_or_else(|| "this disk".to_string(), |p| p.display().to_string());
            return Err(VmdkError::corrupt(
                "descriptor",
                0,
                format!(
                    "parentCID {want:08x} of {me} does not match CID {} of its parent '{hint}': the parent was changed after the snapshot was taken",
                    cid.map_or_else(|| "(none)".to_string(), |c| format!("{c:08x}"))
                ),
            )
            .into());
        }
        self.parent_size = parent.virtual_size();
        self.parent = Some(parent);
        Ok(())
    }

    /// The create type from the descriptor (e.g. `monolithicSparse`).
    pub fn create_type(&self) -> &str {
        &self.descriptor.create_type
    }

    /// The descriptor (embedded, stand-alone, or synthesised for a bare sparse extent).
    pub fn descriptor(&self) -> &VmdkDescriptor {
        &self.descriptor
    }

    /// The extent index holding virtual offset `pos` (< size).
    fn extent_at(&self, pos: u64) -> usize {
        self.extents.partition_point(|e| e.start + e.len <= pos)
    }

    /// What this link holds at `pos` (< size), and for how long (<= max_len, >= 1).
    fn lookup(&self, pos: u64, max_len: u64) -> Result<(Run, u64)> {
        let i = self.extent_at(pos);
        let e = &self.extents[i];
        let rel = pos - e.start;
        let limit = max_len.min(e.len - rel);
        match &e.backing {
            Backing::Zero => Ok((Run::Zero, limit)),
            Backing::Flat(_, off) => Ok((
                Run::Data {
                    ext: i,
                    host: off + rel,
                },
                limit,
            )),
            Backing::Sparse(s) => {
                self.lookup_grains(i, s.header.grain_bytes(), rel, limit, |g| s.grain_run(g))
            }
            Backing::SeSparse(s) => {
                self.lookup_grains(i, s.header.grain_bytes(), rel, limit, |g| s.grain_run(g))
            }
        }
    }

    /// Lookup inside a grain-mapped extent `i` with grains of `gb` bytes.
    fn lookup_grains(
        &self,
        i: usize,
        gb: u64,
        rel: u64,
        limit: u64,
        grain_run: impl Fn(u64) -> Result<(Grain, u64)>,
    ) -> Result<(Run, u64)> {
        let mut g = rel / gb;
        let in_grain = rel % gb;
        let (first, n) = grain_run(g).in_file(self.extent_path(i))?;
        let run = |grain: Grain, g: u64| match grain {
            Grain::Unallocated => Run::Unallocated,
            Grain::Zero => Run::Zero,
            Grain::Data(h) => Run::Data { ext: i, host: h },
            Grain::Compressed(h) => Run::Compressed {
                ext: i,
                grain: g,
                host: h,
            },
        };
        let first_run = match run(first, g) {
            Run::Data { ext, host } => Run::Data {
                ext,
                host: host + in_grain,
            },
            r => r,
        };
        let mut len = (n * gb - in_grain).min(limit);
        g += n;
        // Merge following grains of the same kind (contiguous ones for data), with a bound on
        // the lookups per call (a shorter extent is always a valid answer).
        let mut lookups = 0u32;
        while len < limit && lookups < MAX_MERGE_LOOKUPS {
            lookups += 1;
            let (next, n) = grain_run(g).in_file(self.extent_path(i))?;
            let same = match (first_run, run(next, g)) {
                (Run::Data { host, .. }, Run::Data { host: h2, .. }) => host + len == h2,
                (Run::Compressed { .. }, _) => false,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            len = (len + n * gb).min(limit);
            g += n;
        }
        Ok((first_run, len))
    }

    fn extent_path(&self, i: usize) -> PathBuf {
        let name = &self.extents[i].name;
        match (&self.path, self.embedded) {
            (Some(p), true) => p.clone(),
            (Some(p), false) => p
                .parent()
                .map_or_else(|| PathBuf::from(name), |d| d.join(name)),
            (None, _) if name.is_empty() => PathBuf::from("(sparse extent)"),
            (None, _) => PathBuf::from(name),
        }
    }

    /// Decompresses grain `grain` of extent `ext`, whose stream or marker is at `host`.
    fn compressed_grain(&self, ext: usize, grain: u64, host: u64) -> Result<Arc<Vec<u8>>> {
        {
            let c = self.last_grain.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((e, g, b)) = c.as_ref() {
                if *e == ext && *g == grain {
                    return Ok(b.clone());
                }
            }
        }
        let e = &self.extents[ext];
        let Backing::Sparse(s) = &e.backing else {
            return Err(Error::Corrupt(
                "compressed grain in a non-sparse extent".into(),
            ));
        };
        let h = &s.header;
        let gb = h.grain_bytes();
        let max_c = gb * 2 + 4096;
        let (data_at, clen) = if h.markers() {
            let mut m = [0u8; GRAIN_MARKER_SIZE];
            s.storage
                .read_exact_at(&mut m, host)
                .map_err(io_err(format!("reading the grain marker at {host:#x}")))
                .in_file(self.extent_path(ext))?;
            match Marker::parse(&m, host)? {
                Marker::Grain { lba, size } => {
                    let want = grain * h.grain_size;
                    if lba != want {
                        return Err(Error::from(VmdkError::corrupt(
                            "grain marker",
                            host,
                            format!("LBA {lba:#x}, expected {want:#x} (grain {grain})"),
                        ))
                        .in_file(self.extent_path(ext)));
                    }
                    let size = size as u64;
                    let at = host + GRAIN_MARKER_SIZE as u64;
                    if size > max_c || at + size > s.file_len {
                        return Err(Error::from(VmdkError::corrupt(
                            "grain marker",
                            host,
                            format!(
                                "{size} compressed bytes: more than {max_c} or past the end of the file ({:#x} bytes)",
                                s.file_len
                            ),
                        ))
                        .in_file(self.extent_path(ext)));
                    }
                    (at, size)
                }
                Marker::Metadata { kind, .. } => {
                    return Err(Error::from(VmdkError::corrupt(
                        "grain marker",
                        host,
                        format!("a metadata marker (type {kind}) where grain {grain} should be"),
                    ))
                    .in_file(self.extent_path(ext)));
                }
            }
        } else {
            (host, max_c.min(s.file_len - host))
        };
        let mut input = vec![0u8; clen as usize];
        s.storage
            .read_exact_at(&mut input, data_at)
            .map_err(io_err(format!(
                "reading compressed grain {grain} at {data_at:#x}"
            )))
            .in_file(self.extent_path(ext))?;
        let mut out = vec![0u8; gb as usize];
        let n = inflate_grain(&input, &mut out, host)
            .map_err(Error::from)
            .in_file(self.extent_path(ext))?;
        let remaining = e.len.saturating_sub(grain * gb).min(gb) as usize;
        if n != out.len() && n < remaining {
            return Err(Error::from(VmdkError::corrupt(
                "compressed grain",
                host,
                format!("grain {grain} decompresses to {n} bytes, expected {gb}"),
            ))
            .in_file(self.extent_path(ext)));
        }
        // A short last grain reads as zeros after its data (out was zero-filled).
        let out = Arc::new(out);
        *self.last_grain.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((ext, grain, out.clone()));
        Ok(out)
    }

    fn read_parent(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        read_through_parent(self.parent.as_deref(), buf, pos)
    }
}

impl ImageReader for VmdkReader {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        if offset >= self.size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Unallocated));
        }
        let max_len = max_len.min(self.size - offset);
        let (run, len) = self.lookup(offset, max_len)?;
        Ok(match run {
            Run::Data { host, .. } => Extent {
                host_offset: Some(host),
                ..Extent::new(offset, len, ExtentKind::Data)
            },
            Run::Compressed { .. } => Extent {
                compressed: true,
                ..Extent::new(offset, len, ExtentKind::Data)
            },
            Run::Zero => Extent::new(offset, len, ExtentKind::Zero),
            Run::Unallocated => map_through_parent(self.parent.as_deref(), offset, len)?,
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (run, len) = self.lookup(pos, (buf.len() - done) as u64)?;
            // len <= the remaining length of buf.
            let mut len = len as usize;
            let dst = &mut buf[done..done + len];
            match run {
                Run::Data { ext, host } => {
                    let storage = match &self.extents[ext].backing {
                        Backing::Sparse(s) => &s.storage,
                        Backing::SeSparse(s) => &s.storage,
                        Backing::Flat(s, _) => s,
                        Backing::Zero => unreachable!("zero extents map to Run::Zero"),
                    };
                    storage
                        .read_exact_at(dst, host)
                        .map_err(io_err(format!(
                            "reading {len} bytes of virtual offset {pos:#x} at {host:#x}"
                        )))
                        .in_file(self.extent_path(ext))?;
                }
                Run::Zero => dst.fill(0),
                Run::Unallocated => self.read_parent(dst, pos)?,
                Run::Compressed { ext, grain, host } => {
                    let e = &self.extents[ext];
                    let Backing::Sparse(s) = &e.backing else {
                        unreachable!("compressed runs come from sparse extents")
                    };
                    let gb = s.header.grain_bytes();
                    let in_grain = ((pos - e.start) % gb) as usize;
                    len = len.min(gb as usize - in_grain);
                    let g = self.compressed_grain(ext, grain, host)?;
                    buf[done..done + len].copy_from_slice(&g[in_grain..in_grain + len]);
                }
            }
            done += len;
        }
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        let d = &self.descriptor;
        let mut info = ImageInfo::new(Format::Vmdk, self.size);
        info.filename = self.path.as_ref().map(|p| p.display().to_string());
        info.subformat = Some(d.create_type.clone());
        info.file_size = Some(self.file_len);
        let mut allocated = self.storage.allocated_bytes().ok().flatten();
        for e in &self.extents {
            let s = match &e.backing {
                Backing::Sparse(s) => {
                    if info.cluster_size.is_none() {
                        info.cluster_size = Some(s.header.grain_bytes());
                    }
                    if s.header.compressed() {
                        info.compression = Some("deflate".into());
                    }
                    if s.header.unclean_shutdown
                        && !info.flags.iter().any(|f| f == "unclean_shutdown")
                    {
                        info.flags.push("unclean_shutdown".into());
                    }
                    &s.storage
                }
                Backing::SeSparse(s) => {
                    if info.cluster_size.is_none() {
                        info.cluster_size = Some(s.header.grain_bytes());
                    }
                    &s.storage
                }
                Backing::Flat(s, _) => s,
                Backing::Zero => continue,
            };
            if !self.embedded {
                allocated = match (allocated, s.allocated_bytes().ok().flatten()) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                };
            }
        }
        info.allocated_bytes = allocated;
        info.backing_file = d.parent_hint.clone().filter(|_| d.has_parent());
        if info.backing_file.is_some() {
            info.backing_format = Some("vmdk".into());
        }
        if let Some(c) = d.cid {
            info.flags.push(format!("cid={c:08x}"));
        }
        if let Some(a) = d.ddb("ddb.adapterType") {
            info.flags.push(format!("adapter={a}"));
        }
        if let Some(v) = d.ddb("ddb.virtualHWVersion") {
            info.flags.push(format!("hwversion={v}"));
        }
        info.flags.push(format!("extents={}", self.extents.len()));
        info.backing = self.parent.as_ref().map(|p| Box::new(p.info()));
        info
    }
}
