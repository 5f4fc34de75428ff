//! The two traits every format implements: [`ImageReader`] and [`ImageWriter`].
//!
//! A reader answers one question, "what is at this offset, and for how long?"
//! ([`ImageReader::map`]), and reads bytes. A writer accepts data in ascending order (sequential
//! formats need it, the others do not mind) and turns it into an image on
//! [`ImageWriter::finish`]. The convert engine ([`crate::convert`](mod@crate::convert)) is built on these two traits
//! only; it knows no format.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::storage::Storage;

pub use crate::formats::Format;

/// What a stretch of the virtual disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Stored data (which may still happen to be zeros).
    Data,
    /// Known to read as zeros (a zero cluster, a hole in a raw file).
    Zero,
    /// Not allocated anywhere in the chain; reads as zeros.
    Unallocated,
}

/// A stretch of the virtual disk with one [`ExtentKind`], as returned by [`ImageReader::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Start, in bytes of virtual disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it holds.
    pub kind: ExtentKind,
    /// Which image of a chain it comes from: 0 = the image itself, 1 = its backing file, ...
    pub depth: u32,
    /// Where the bytes are stored in that image's file (or its data file), when they are stored
    /// plainly; `None` for zero, unallocated and compressed extents.
    pub host_offset: Option<u64>,
    /// The data is stored compressed.
    pub compressed: bool,
}

impl Extent {
    /// An extent of `kind` with no host location, at depth 0.
    pub fn new(offset: u64, len: u64, kind: ExtentKind) -> Self {
        Extent {
            offset,
            len,
            kind,
            depth: 0,
            host_offset: None,
            compressed: false,
        }
    }

    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One persistent dirty bitmap stored in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BitmapInfo {
    /// Bitmap name.
    pub name: String,
    /// Bytes of virtual disk per bit.
    pub granularity: u64,
    /// The bitmap was not saved cleanly and may be stale.
    pub in_use: bool,
    /// The bitmap tracks every write (`auto` flag).
    pub auto: bool,
}

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Unique id string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Virtual size of the disk in this snapshot.
    pub virtual_size: u64,
    /// Size of the saved VM state (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Seconds since the Unix epoch when it was taken.
    pub date_sec: u32,
}

/// What `diskconv info` prints about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The file, when opened from a path.
    pub filename: Option<String>,
    /// Container format.
    pub format: Format,
    /// Format variant, e.g. "compat 1.1" for qcow2 v3.
    pub subformat: Option<String>,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host for this file (not its backing files).
    pub allocated_bytes: Option<u64>,
    /// Length of the file itself.
    pub file_size: Option<u64>,
    /// Allocation unit of the format, if it has one.
    pub cluster_size: Option<u64>,
    /// The backing file as named inside the image.
    pub backing_file: Option<String>,
    /// The backing file's format as named inside the image.
    pub backing_format: Option<String>,
    /// External data file as named inside the image.
    pub data_file: Option<String>,
    /// Persistent dirty bitmaps.
    pub bitmaps: Vec<BitmapInfo>,
    /// Internal snapshots.
    pub snapshots: Vec<SnapshotInfo>,
    /// Format flags worth knowing (dirty, corrupt, lazy_refcounts, extended_l2, ...).
    pub flags: Vec<String>,
    /// Compression type for compressed data, if the format has one.
    pub compression: Option<String>,
    /// The backing image, opened (when the chain was followed).
    pub backing: Option<Box<ImageInfo>>,
    /// The virtual machine a package (an OVA) describes, when the image is one disk of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<Box<PackageInfo>>,
    /// What the reader noticed that a person should know (a disk that differs from its
    /// description, a manifest that does not cover a member, ...). Not errors: reading works.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The virtual machine described by a package's descriptor (an OVA's OVF), as `diskconv info`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PackageInfo {
    /// The descriptor's member name.
    pub descriptor: String,
    /// The descriptor's version (`1.x`, `2.x`).
    pub descriptor_version: Option<String>,
    /// Virtual machine name.
    pub name: Option<String>,
    /// Virtual CPUs.
    pub cpus: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Operating system id (OVF: a CIM operating-system number).
    pub os_id: Option<String>,
    /// Guest type as the exporting hypervisor names it (`windows9Server64Guest`, `Ubuntu_64`).
    pub os_type: Option<String>,
    /// Operating system description.
    pub os_description: Option<String>,
    /// `bios` or `efi`, when declared.
    pub firmware: Option<String>,
    /// Virtual hardware family (`vmx-14`, `virtualbox-2.2`).
    pub hardware_family: Option<String>,
    /// The disks, in the descriptor's order (number 1 first).
    pub disks: Vec<PackageDisk>,
    /// The network adapters.
    pub nics: Vec<PackageNic>,
    /// The number of the disk this reader reads (1-based).
    pub selected_disk: Option<usize>,
    /// The manifest, when the package has one.
    pub manifest: Option<ManifestInfo>,
    /// The signature file (`.cert`), when the package has one. Its signature is not checked.
    pub certificate: Option<String>,
}

/// One disk of a package.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PackageDisk {
    /// 1-based number in the descriptor's order (what `--disk N` selects).
    pub index: usize,
    /// The descriptor's id for it.
    pub id: String,
    /// The member holding it; `None` for a blank disk created at import.
    pub file: Option<String>,
    /// Bytes of that member.
    pub file_size: Option<u64>,
    /// Declared capacity in bytes (`None` when the descriptor uses a property for it).
    pub capacity: Option<u64>,
    /// Declared capacity as written (`50 x byte * 2^30`).
    pub capacity_text: String,
    /// The declared format (a URL for OVF).
    pub format: Option<String>,
    /// The disk's real virtual size, when it was opened.
    pub virtual_size: Option<u64>,
    /// The disk's real format and subformat, when it was opened (`vmdk streamOptimized`).
    pub image_format: Option<String>,
    /// The controller it is attached to, e.g. `SCSI controller 0 (lsilogic), unit 0`.
    pub controller: Option<String>,
}

/// One network adapter of a package.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PackageNic {
    /// The network it connects to.
    pub network: Option<String>,
    /// The adapter type (`E1000`, `VmxNet3`, `virtio`).
    pub adapter: Option<String>,
    /// Its name in the descriptor.
    pub name: Option<String>,
}

/// A package's manifest and what was checked against it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ManifestInfo {
    /// The manifest's member name.
    pub file: String,
    /// The digest algorithms it uses (`SHA1`, `SHA256`, `SHA512`).
    pub algorithms: Vec<String>,
    /// Number of lines (file digests).
    pub entries: usize,
    /// Members whose digests were computed and match; empty when nothing was verified.
    pub verified: Vec<String>,
    /// Members of the package the manifest does not list.
    pub not_listed: Vec<String>,
    /// Files the manifest lists that the package does not hold.
    pub missing: Vec<String>,
    /// Why the manifest is unusable, when it does not parse (reported only when it was not
    /// being verified: verifying makes that an error).
    pub error: Option<String>,
}

impl ImageInfo {
    /// A minimal description; format modules fill in the rest.
    pub fn new(format: Format, virtual_size: u64) -> Self {
        ImageInfo {
            filename: None,
            format,
            subformat: None,
            virtual_size,
            allocated_bytes: None,
            file_size: None,
            cluster_size: None,
            backing_file: None,
            backing_format: None,
            data_file: None,
            bitmaps: Vec::new(),
            snapshots: Vec::new(),
            flags: Vec::new(),
            compression: None,
            backing: None,
            package: None,
            warnings: Vec::new(),
        }
    }
}

/// Read access to a virtual disk.
///
/// All methods take `&self` and may be called from many threads at once.
pub trait ImageReader: Send + Sync {
    /// Container format.
    fn format(&self) -> Format;

    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;

    /// The extent that starts at `offset` and is at most `max_len` long. Its length is at least
    /// 1 when `offset` is inside the disk and `max_len > 0`; it is 0 at or past the end.
    fn map(&self, offset: u64, max_len: u64) -> Result<Extent>;

    /// Reads `buf.len()` bytes of virtual disk at `offset`. Reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// A description for `diskconv info`.
    fn info(&self) -> ImageInfo;

    /// The byte ranges the dirty bitmap `name` marks changed (a qcow2 persistent bitmap, or a
    /// server's `qemu:dirty-bitmap:NAME` context). Formats without dirty bitmaps refuse.
    fn dirty_ranges(&self, name: &str) -> Result<Vec<std::ops::Range<u64>>> {
        let _ = name;
        Err(Error::Unsupported(format!(
            "{} images have no dirty bitmaps; --bitmap needs a qcow2 image with persistent \
             bitmaps or an NBD server exporting qemu:dirty-bitmap:NAME",
            self.format()
        )))
    }
}

/// A reader whose every error names the file it was opened from ([`Error::in_image`]):
/// [`open`](crate::open()) returns its readers wrapped in one, so a failure while reading a
/// source says which file it is about (and, inside a chain, which backing file or extent).
pub struct NamedReader {
    inner: Box<dyn ImageReader>,
    path: PathBuf,
}

impl NamedReader {
    /// Wraps `inner`, opened from `path`.
    pub fn new(inner: Box<dyn ImageReader>, path: impl Into<PathBuf>) -> Self {
        NamedReader {
            inner,
            path: path.into(),
        }
    }

    /// The path errors are attributed to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for NamedReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ImageReader for NamedReader {
    fn format(&self) -> Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        self.inner
            .map(offset, max_len)
            .map_err(|e| e.in_image(&self.path))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner
            .read_at(buf, offset)
            .map_err(|e| e.in_image(&self.path))
    }

    fn info(&self) -> ImageInfo {
        self.inner.info()
    }

    fn dirty_ranges(&self, name: &str) -> Result<Vec<std::ops::Range<u64>>> {
        self.inner
            .dirty_ranges(name)
            .map_err(|e| e.in_image(&self.path))
    }
}

/// Checks that a read of `len` bytes at `offset` lies inside a disk of `size` bytes.
pub fn check_read_range(offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "read of {len} bytes at offset {offset:#x} goes past the end of the disk ({size:#x} bytes)"
        ))),
    }
}

/// Whether `[offset, offset + len)` of `img` is entirely zero or unallocated according to its
/// map (no data is read). Used to skip ranges that both sides of a comparison leave empty.
pub fn reads_as_zero(img: &dyn ImageReader, offset: u64, len: u64) -> Result<bool> {
    let end = offset.saturating_add(len);
    let mut pos = offset;
    while pos < end {
        let e = img.map(pos, end - pos)?;
        if e.len == 0 {
            return Err(Error::Corrupt(format!(
                "the image reports no extent at offset {pos:#x} inside the disk"
            )));
        }
        if e.kind == ExtentKind::Data {
            return Ok(false);
        }
        pos = pos.saturating_add(e.len);
    }
    Ok(true)
}

/// Reads `buf.len()` bytes at `offset`, asking the image for its extents first and reading only
/// the data extents; zero and unallocated stretches are filled with zeros without I/O.
/// Returns the number of bytes actually read.
pub fn read_skipping_holes<R: ImageReader + ?Sized>(
    img: &R,
    buf: &mut [u8],
    offset: u64,
) -> Result<u64> {
    let data = data_ranges(img, offset, buf.len() as u64)?;
    read_ranges(img, buf, offset, &data)
}

/// The stretches of `[offset, offset + len)` that data extents cover (zero and unallocated
/// extents are left out), in order, adjacent ones merged.
pub fn data_ranges<R: ImageReader + ?Sized>(
    img: &R,
    offset: u64,
    len: u64,
) -> Result<Vec<Range<u64>>> {
    check_read_range(
        offset,
        usize::try_from(len).unwrap_or(usize::MAX),
        img.virtual_size(),
    )?;
    let end = offset + len;
    let mut pos = offset;
    let mut out: Vec<Range<u64>> = Vec::new();
    while pos < end {
        let e = img.map(pos, end - pos)?;
        if e.len == 0 {
            return Err(Error::Corrupt(format!(
                "the image reports no extent at offset {pos:#x} inside the disk"
            )));
        }
        let n = e.len.min(end - pos);
        if e.kind == ExtentKind::Data {
            match out.last_mut() {
                Some(last) if last.end == pos => last.end = pos + n,
                _ => out.push(pos..pos + n),
            }
        }
        pos += n;
    }
    Ok(out)
}

/// Fills `buf` with the disk's bytes at `offset`, given `data`, sorted stretches from
/// [`data_ranges`] that cover every data extent of the range (they may extend past it): the
/// parts of `data` inside the buffer are read, the rest is zeros. Returns the bytes read.
pub fn read_ranges<R: ImageReader + ?Sized>(
    img: &R,
    buf: &mut [u8],
    offset: u64,
    data: &[Range<u64>],
) -> Result<u64> {
    let end = offset + buf.len() as u64;
    let first = data.partition_point(|r| r.end <= offset);
    let mut pos = offset;
    let mut read = 0;
    for r in data[first..].iter().take_while(|r| r.start < end) {
        let (s, e) = (r.start.max(offset), r.end.min(end));
        buf[(pos - offset) as usize..(s - offset) as usize].fill(0);
        img.read_at(&mut buf[(s - offset) as usize..(e - offset) as usize], s)?;
        read += e - s;
        pos = e;
    }
    buf[(pos - offset) as usize..].fill(0);
    Ok(read)
}

/// Maps `[offset, offset + len)` of a disk that is unallocated in a child image through its
/// parent (backing file): the parent's extent, one level deeper; past the parent's end (a
/// parent smaller than the child), unallocated. Checks that the parent answers for exactly the
/// range asked.
pub fn map_through_parent(
    parent: Option<&dyn ImageReader>,
    offset: u64,
    len: u64,
) -> Result<Extent> {
    let Some(p) = parent.filter(|p| offset < p.virtual_size()) else {
        return Ok(Extent::new(offset, len, ExtentKind::Unallocated));
    };
    let want = len.min(p.virtual_size() - offset);
    let mut e = p.map(offset, want)?;
    if e.offset != offset || e.len == 0 || e.len > want {
        return Err(Error::Corrupt(format!(
            "the parent image mapped {:#x}+{:#x} when asked for {offset:#x}+{want:#x}",
            e.offset, e.len
        )));
    }
    e.depth += 1;
    Ok(e)
}

/// Reads `buf.len()` bytes at `offset` of a disk that is unallocated in a child image from its
/// parent: what lies inside the parent is read from it, the rest (a smaller parent, or none)
/// reads as zeros.
pub fn read_through_parent(
    parent: Option<&dyn ImageReader>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let inside = match parent {
        Some(p) if offset < p.virtual_size() => {
            ((p.virtual_size() - offset).min(buf.len() as u64)) as usize
        }
        _ => 0,
    };
    if let (Some(p), true) = (parent, inside > 0) {
        p.read_at(&mut buf[..inside], offset)?;
    }
    buf[inside..].fill(0);
    Ok(())
}

/// How one granule of a [`Chunk`] is to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GranuleState {
    /// Reads as zeros: nothing to store.
    Zero,
    /// Store the granule's bytes as they are.
    Data,
    /// Store these compressed bytes instead.
    Compressed(Vec<u8>),
}

/// A window of virtual disk handed from the convert engine to a writer: the bytes, plus what
/// the engine learnt about each granule (zero detection, compression) on its worker threads.
#[derive(Debug)]
pub struct Chunk {
    /// Start in virtual disk, aligned to the writer's granularity.
    pub offset: u64,
    /// The bytes of the window (the last window of a disk may be short).
    pub data: Vec<u8>,
    /// Granule size (the writer's [`ImageWriter::granularity`]).
    pub granule: u64,
    /// One entry per granule of `data`.
    pub states: Vec<GranuleState>,
}

impl Chunk {
    /// Byte range of granule `i` inside `data`.
    pub fn granule_range(&self, i: usize) -> std::ops::Range<usize> {
        let g = self.granule as usize;
        let start = i * g;
        start..(start + g).min(self.data.len())
    }
}

/// A compressor that runs on the convert engine's worker threads.
pub trait Compressor: Send + Sync {
    /// Compresses one granule into `out` (cleared first). Returns `false` when the result would
    /// not be smaller than the input, in which case the granule is stored plainly.
    fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> Result<bool>;
}

/// What a writer stored in its output files, by kind, as [`ImageWriter::finish`] reports it.
///
/// The kinds add up to the length of the output files:
/// `compressed + data + zeros + metadata + unwritten == file_length`. "Written" means bytes
/// the writer put into the files; `unwritten` is the rest of their length, ranges never
/// written (holes of a sparse file, which read as zeros and take no space on file systems
/// with sparse files). `allocated` is what the file system reports as used, which differs
/// from the written bytes by its block rounding (and is larger after `preallocation=falloc`).
///
/// Each range of virtual disk is counted as it was handed over once; a direct caller that
/// writes the same range twice has it counted twice (the convert engine never does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteReport {
    /// Guest data stored compressed: the compressed streams (qcow2 compressed clusters,
    /// streamOptimized grains, which are zlib streams even when deflate stored them as is).
    pub compressed: u64,
    /// Guest data stored as it is.
    pub data: u64,
    /// Zeros written for the guest: preallocated zero clusters (`preallocation=full`), the
    /// padding of a short last cluster or grain.
    pub zeros: u64,
    /// Everything else written: headers, footers, descriptors, tables, markers, bitmaps,
    /// alignment padding (and, in an OVA, the tar headers and the OVF and manifest members).
    pub metadata: u64,
    /// Bytes of the files' length never written (holes; they read as zeros).
    pub unwritten: u64,
    /// Total length of the output files.
    pub file_length: u64,
    /// Bytes the file system allocated for the output files, when known.
    pub allocated: Option<u64>,
}

impl WriteReport {
    /// Bytes written into the files: every kind but `unwritten`.
    pub fn written(&self) -> u64 {
        self.compressed + self.data + self.zeros + self.metadata
    }

    /// Adds the counts of `other` (another file of the same output, or a part of one).
    pub fn add(&mut self, other: &WriteReport) {
        self.compressed += other.compressed;
        self.data += other.data;
        self.zeros += other.zeros;
        self.metadata += other.metadata;
        self.unwritten += other.unwritten;
        self.file_length += other.file_length;
        self.allocated = match (self.allocated, other.allocated) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }

    /// Completes a report whose written kinds were counted by the writer: reads the length and
    /// the allocation of `files` (after they were synced) and counts the rest of their length
    /// as unwritten.
    pub fn complete(mut self, files: &[&dyn Storage]) -> Result<Self> {
        let mut len = 0u64;
        let mut allocated = Some(0u64);
        for f in files {
            len += f
                .len()
                .map_err(|e| Error::io("reading the length of the output", e))?;
            allocated = match (allocated, f.allocated_bytes().ok().flatten()) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        let written = self.written();
        // A writer never writes outside its files: more would be a counting error.
        debug_assert!(
            written <= len,
            "the writer counted {written} bytes written in {len} bytes of files: {self:?}"
        );
        self.unwritten = len.saturating_sub(written);
        self.file_length = len;
        self.allocated = allocated;
        Ok(self)
    }
}

/// Write access to a new image.
pub trait ImageWriter: Send {
    /// Container format.
    fn format(&self) -> Format;

    /// Size of the virtual disk being written.
    fn virtual_size(&self) -> u64;

    /// Unit of zero detection and compression (the cluster size for qcow2).
    fn granularity(&self) -> u64;

    /// Whether data must arrive in ascending offset order. The convert engine always writes in
    /// order; direct callers of a sequential writer get an error if they do not.
    fn needs_sequential(&self) -> bool;

    /// The compressor to run on worker threads, when the image is written compressed.
    fn compressor(&self) -> Option<Arc<dyn Compressor>> {
        None
    }

    /// Whether the writer must know, before the first write, which ranges of the disk hold
    /// data ([`set_data_layout`](Self::set_data_layout)): a format whose header, written first
    /// to an append-only destination, maps where the data lies (the GCP tarball's sparse map).
    fn wants_data_layout(&self) -> bool {
        false
    }

    /// Hands the writer, before the first write, the ranges of the disk that may hold data
    /// (sorted, disjoint; the rest reads as zeros), as the source's extent map gives them.
    /// Called by the convert engine only when [`wants_data_layout`](Self::wants_data_layout);
    /// a writer that is never told must take the whole disk as data.
    fn set_data_layout(&mut self, data: Vec<std::ops::Range<u64>>) -> Result<()> {
        let _ = data;
        Ok(())
    }

    /// Writes `buf` at virtual offset `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes `len` bytes at `offset` read as zeros.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Writes a prepared chunk. The default stores runs of data granules with
    /// [`write_at`](Self::write_at) and zero runs with [`write_zeroes`](Self::write_zeroes);
    /// writers that take compressed granules override it.
    fn write_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        let mut i = 0;
        while i < chunk.states.len() {
            let zero = matches!(chunk.states[i], GranuleState::Zero);
            let mut j = i + 1;
            while j < chunk.states.len() && matches!(chunk.states[j], GranuleState::Zero) == zero {
                j += 1;
            }
            let start = chunk.granule_range(i).start;
            let end = chunk.granule_range(j - 1).end;
            let off = chunk.offset + start as u64;
            if zero {
                self.write_zeroes(off, (end - start) as u64)?;
            } else {
                self.write_at(&chunk.data[start..end], off)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Writes the remaining metadata (tables, footers, headers) and syncs. Until this returns,
    /// the output is recognisably incomplete. Returns what was written, by kind; its total is
    /// the length of the output files.
    fn finish(self: Box<Self>) -> Result<WriteReport>;
}

/// A writer whose every error names its output file ([`Error::in_file`]): the convert engine
/// writes through one (see [`convert_to_files`](crate::convert::convert_to_files)), so a
/// failure while writing names the output, never the source.
pub struct NamedWriter {
    inner: Box<dyn ImageWriter>,
    path: PathBuf,
}

impl NamedWriter {
    /// Wraps `inner`, which writes the output `path`.
    pub fn new(inner: Box<dyn ImageWriter>, path: impl Into<PathBuf>) -> Self {
        NamedWriter {
            inner,
            path: path.into(),
        }
    }
}

impl fmt::Debug for NamedWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ImageWriter for NamedWriter {
    fn format(&self) -> Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn granularity(&self) -> u64 {
        self.inner.granularity()
    }

    fn needs_sequential(&self) -> bool {
        self.inner.needs_sequential()
    }

    fn compressor(&self) -> Option<Arc<dyn Compressor>> {
        self.inner.compressor()
    }

    fn wants_data_layout(&self) -> bool {
        self.inner.wants_data_layout()
    }

    fn set_data_layout(&mut self, data: Vec<std::ops::Range<u64>>) -> Result<()> {
        self.inner
            .set_data_layout(data)
            .map_err(|e| e.in_file(&self.path))
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner
            .write_at(buf, offset)
            .map_err(|e| e.in_file(&self.path))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.inner
            .write_zeroes(offset, len)
            .map_err(|e| e.in_file(&self.path))
    }

    fn write_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        self.inner
            .write_chunk(chunk)
            .map_err(|e| e.in_file(&self.path))
    }

    fn finish(self: Box<Self>) -> Result<WriteReport> {
        let NamedWriter { inner, path } = *self;
        inner.finish().map_err(|e| e.in_file(path))
    }
}

/// An updater whose every error names its file ([`Error::in_file`]).
pub struct NamedUpdater {
    inner: Box<dyn ImageUpdater>,
    path: PathBuf,
}

impl NamedUpdater {
    /// Wraps `inner`, which updates the image at `path`.
    pub fn new(inner: Box<dyn ImageUpdater>, path: impl Into<PathBuf>) -> Self {
        NamedUpdater {
            inner,
            path: path.into(),
        }
    }
}

impl fmt::Debug for NamedUpdater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedUpdater")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ImageReader for NamedUpdater {
    fn format(&self) -> Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        self.inner
            .map(offset, max_len)
            .map_err(|e| e.in_file(&self.path))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner
            .read_at(buf, offset)
            .map_err(|e| e.in_file(&self.path))
    }

    fn info(&self) -> ImageInfo {
        self.inner.info()
    }

    fn dirty_ranges(&self, name: &str) -> Result<Vec<std::ops::Range<u64>>> {
        self.inner
            .dirty_ranges(name)
            .map_err(|e| e.in_file(&self.path))
    }
}

impl ImageUpdater for NamedUpdater {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner
            .write_at(buf, offset)
            .map_err(|e| e.in_file(&self.path))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.inner
            .write_zeroes(offset, len)
            .map_err(|e| e.in_file(&self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.inner.flush().map_err(|e| e.in_file(&self.path))
    }
}

/// A reader shared between threads and between images of a chain.
pub type SharedReader = Arc<dyn ImageReader>;

/// Implements [`ImageReader`] for an updater that holds the reader it was built from in the
/// field `$field`: every read goes through that reader (which sees the updater's writes).
macro_rules! reader_through {
    ($ty:ty, $field:ident) => {
        impl $crate::image::ImageReader for $ty {
            fn format(&self) -> $crate::image::Format {
                self.$field.format()
            }

            fn virtual_size(&self) -> u64 {
                self.$field.virtual_size()
            }

            fn map(
                &self,
                offset: u64,
                max_len: u64,
            ) -> $crate::error::Result<$crate::image::Extent> {
                self.$field.map(offset, max_len)
            }

            fn read_at(&self, buf: &mut [u8], offset: u64) -> $crate::error::Result<()> {
                self.$field.read_at(buf, offset)
            }

            fn info(&self) -> $crate::image::ImageInfo {
                self.$field.info()
            }

            fn dirty_ranges(&self, name: &str) -> $crate::error::Result<Vec<std::ops::Range<u64>>> {
                self.$field.dirty_ranges(name)
            }
        }
    };
}
pub(crate) use reader_through;

/// In-place write access to an existing image (the target of an incremental sync).
///
/// Unlike an [`ImageWriter`], which creates a new file and is complete only after `finish`, an
/// updater changes an image that is already valid and keeps it valid: after [`flush`]
/// (Self::flush) returns, everything written so far is durable and the image's metadata is
/// consistent on disk. A crash between flushes may lose writes since the last flush and may
/// leave leaked (allocated but unreferenced) space, but never metadata that points at garbage:
/// data is written before the metadata that references it.
///
/// An updater is also a reader of the image it updates ([`ImageReader`]): reads see every
/// write made so far, flushed or not. Each format builds its updater from an opened reader
/// over the same storage, so the image is parsed and validated once.
pub trait ImageUpdater: ImageReader {
    /// Writes `buf` at virtual offset `offset` (any alignment), allocating space as needed.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes `len` bytes at `offset` read as zeros (deallocating or marking zero where the
    /// format can, writing zeros otherwise).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Writes pending metadata in a safe order and syncs the file(s).
    fn flush(&mut self) -> Result<()>;
}
