//! VMDK writers: streamOptimized (the default), monolithicSparse and monolithicFlat / vmfs.
//!
//! All three are fed in ascending order by the convert engine.
//!
//! - **streamOptimized** ([`VmdkSubformat::StreamOptimized`]): a version 3 hosted sparse header
//!   with `gdOffset` all ones, the embedded descriptor, then one grain marker per non-zero grain
//!   (zlib-wrapped deflate, compressed on the engine's worker threads), a grain-table marker and
//!   table after each 32 MiB stretch that holds data, and at the end the grain-directory marker
//!   and directory, the footer marker and footer (a header copy with the real `gdOffset`) and the
//!   end-of-stream marker. The file is written strictly append-only, so it can be hashed while it
//!   is written (the OVA manifest uses that). Memory: one grain table plus the directory.
//! - **monolithicSparse**: version 1, no compression, descriptor, redundant and primary grain
//!   directories and all grain tables preallocated after the descriptor (the layout qemu and
//!   VMware use), then whole grains appended in order. Each grain table is written once its
//!   range is passed; the header last, in `finish`.
//! - **monolithicFlat / vmfs**: the target is a text descriptor; the data goes to a
//!   `<stem>-flat.vmdk` extent beside it, written like a raw image (holes for zeros).
//!
//! Layout facts are from VMware's "Virtual Disk Format 5.0" and REFERENCE.md section 2.
//!
//! Measured (release build, 2 shared cores, the 2 GiB benchmark image of `benches/`: ext4 with
//! 8949 files from /usr plus 307 MiB of random bytes, 1.5 GiB allocated), raw to
//! streamOptimized against `qemu-img convert -O vmdk -o subformat=streamOptimized` (qemu-img
//! 10.0.2), two alternating runs while another build loaded the machine:
//!
//! | | wall s | CPU s (user + sys) | peak RSS | output bytes |
//! |---|---|---|---|---|
//! | diskconv | 13.97 / 9.34 | 13.8 / 14.4 | 23 MB | 713 030 656 (+2.2 %) |
//! | qemu-img | 40.53 / 44.11 | 40.3 / 43.6 | 9 MB | 697 666 048 |
//!
//! zlib level 4 instead of qemu's 6: 17.1 CPU s and +2.1 % against 21.5 s and +1.1 %; storing
//! random-looking grains without deflating them (`looks_incompressible`) took 17.1 s to
//! 12.8 s for +0.05 % size.

use std::cell::RefCell;
use std::fmt;

use std::sync::Arc;

use flate2::{Compress, Compression, FlushCompress, Status};
use sha2::{Digest, Sha256};

use super::VmdkError;
use crate::error::{Error, Result};
use crate::files::Sink;
use crate::formats::raw::{Preallocation, RawWriter};
use crate::image::{Chunk, Compressor, Format, GranuleState, ImageWriter, WriteReport};
use crate::storage::Storage;
use crate::util::is_zero;

/// Which kind of VMDK to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmdkSubformat {
    /// One file: compressed grains with markers (AWS, vSphere, OVA). The default.
    #[default]
    StreamOptimized,
    /// One file: hosted sparse extent with embedded descriptor (Workstation, VirtualBox).
    MonolithicSparse,
    /// Descriptor plus a flat `-flat.vmdk` extent (hosted products).
    MonolithicFlat,
    /// Descriptor plus a flat extent, `createType="vmfs"` (ESXi datastores).
    Vmfs,
}

impl VmdkSubformat {
    /// The descriptor's `createType`.
    pub fn create_type(self) -> &'static str {
        match self {
            VmdkSubformat::StreamOptimized => "streamOptimized",
            VmdkSubformat::MonolithicSparse => "monolithicSparse",
            VmdkSubformat::MonolithicFlat => "monolithicFlat",
            VmdkSubformat::Vmfs => "vmfs",
        }
    }
}

/// The virtual disk controller the descriptor names (`ddb.adapterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// LSI Logic parallel SCSI (the default: what AWS and vSphere expect).
    #[default]
    LsiLogic,
    /// IDE.
    Ide,
    /// BusLogic SCSI.
    BusLogic,
    /// ESX legacy.
    LegacyEsx,
}

impl AdapterType {
    /// The value of `ddb.adapterType`.
    pub fn ddb_name(self) -> &'static str {
        match self {
            AdapterType::LsiLogic => "lsilogic",
            AdapterType::Ide => "ide",
            AdapterType::BusLogic => "buslogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }

    /// Disk geometry (cylinders, heads, sectors per track) for a disk of `sectors` sectors.
    ///
    /// IDE uses 16 heads and 63 sectors, SCSI adapters 255 heads and 63 sectors; cylinders are
    /// the whole number of `heads * 63` tracks, not capped: qemu writes it so, and VMware
    /// records large IDE disks the same way (e.g. `Geo (83220/16/63)` in a Fusion log), leaving
    /// the 16383-cylinder BIOS limit to the guest's BIOS geometry. At least one cylinder is
    /// reported, also for disks smaller than one cylinder (qemu would write 0).
    pub fn geometry(self, sectors: u64) -> (u64, u32, u32) {
        let (heads, spt) = match self {
            AdapterType::Ide => (16u32, 63u32),
            _ => (255, 63),
        };
        let cyl = sectors / (u64::from(heads) * u64::from(spt));
        (cyl.max(1), heads, spt)
    }
}

/// How to write a VMDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkWriteOptions {
    /// Subformat.
    pub subformat: VmdkSubformat,
    /// Adapter type.
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion`.
    pub hw_version: u32,
}

impl Default for VmdkWriteOptions {
    fn default() -> Self {
        VmdkWriteOptions {
            subformat: VmdkSubformat::StreamOptimized,
            adapter_type: AdapterType::LsiLogic,
            hw_version: 14,
        }
    }
}

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Grain size in sectors (64 KiB grains).
pub const GRAIN_SECTORS: u64 = 128;
/// Grain size in bytes.
pub const GRAIN_SIZE: u64 = GRAIN_SECTORS * SECTOR;
/// Grain-table entries per grain table.
pub const GTES_PER_GT: u64 = 512;
/// Bytes of virtual disk one grain table covers (32 MiB).
const GT_COVERAGE: u64 = GRAIN_SIZE * GTES_PER_GT;
/// Sectors of one grain table (512 entries of 4 bytes).
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// Where the embedded descriptor starts, in sectors.
const DESC_OFFSET: u64 = 1;
/// Sectors reserved for the embedded descriptor (as qemu and VMware reserve).
const DESC_SECTORS: u64 = 20;
/// Largest capacity a hosted sparse extent can address with 32-bit sector offsets: grain
/// directory entries are u32 sectors, so the file must stay below 2 TiB.
const MAX_SPARSE_BYTES: u64 = (u32::MAX as u64) * SECTOR;
/// Writes are gathered into buffers of this size before they are issued.
const WRITE_BEHIND: usize = 1 << 20;

use super::sparse::COMPRESSION_DEFLATE;
pub use super::sparse::{
    FLAG_COMPRESSED, FLAG_MARKERS, FLAG_REDUNDANT_GT, FLAG_VALID_NEWLINE, GD_AT_END, SPARSE_MAGIC,
    SparseHeader,
};
pub use super::stream::{MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT};

/// A fresh content id: random, never `ffffffff` (which means "no parent").
fn random_cid() -> u32 {
    loop {
        let v = crate::util::random_u64() as u32;
        if v != u32::MAX {
            return v;
        }
    }
}

/// `ddb.uuid` text: 16 random bytes as VMware prints them, `xx xx xx xx xx xx xx xx-xx ...`.
fn random_uuid_text() -> String {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&crate::util::random_bytes16());
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "))
}

/// Builds a descriptor for `create_type` with one extent line.
pub fn descriptor_text(
    create_type: &str,
    extent_line: &str,
    capacity_sectors: u64,
    opts: &VmdkWriteOptions,
) -> String {
    let (cyl, heads, spt) = opts.adapter_type.geometry(capacity_sectors);
    let cid = random_cid();
    // VMware's longContentID ends with the CID.
    let long_cid = format!(
        "{:016x}{:08x}{cid:08x}",
        crate::util::random_u64(),
        crate::util::random_u64() as u32
    );
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{create_type}\"\n\
         \n\
         # Extent description\n\
         {extent_line}\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.adapterType = \"{adapter}\"\n\
         ddb.geometry.cylinders = \"{cyl}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{spt}\"\n\
         ddb.longContentID = \"{long_cid}\"\n\
         ddb.toolsInstallType = \"4\"\n\
         ddb.toolsVersion = \"2147483647\"\n\
         ddb.uuid = \"{uuid}\"\n\
         ddb.virtualHWVersion = \"{hw}\"\n",
        adapter = opts.adapter_type.ddb_name(),
        uuid = random_uuid_text(),
        hw = opts.hw_version,
    )
}

/// zlib level of compressed grains. qemu uses zlib's default (6); 4 costs about 1 % in size for
/// a third less time (measured for qcow2 in `qcow2::compress`).
pub const GRAIN_ZLIB_LEVEL: u32 = 4;

thread_local! {
    /// One deflate state per worker thread.
    static GRAIN_DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Compresses one grain into a zlib-wrapped deflate stream, as VMware's tools and qemu write
/// them. Runs on the convert engine's worker threads.
///
/// Unlike qcow2 a streamOptimized grain is always stored compressed, so [`Compressor::compress`]
/// returns `true` also when the stream is a little longer than the grain (incompressible data:
/// deflate adds a few bytes per 64 KiB).
#[derive(Debug, Clone, Default)]
pub struct GrainCompressor;

impl Compressor for GrainCompressor {
    fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        compress_grain(input, out)?;
        Ok(true)
    }
}

/// Compresses `input` (at most one grain; a short last grain is padded with zeros, since readers
/// inflate whole grains) into `out`.
pub fn compress_grain(input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let g = GRAIN_SIZE as usize;
    if input.len() > g {
        return Err(Error::InvalidArgument(format!(
            "VMDK grain compression takes at most {g} bytes, got {}",
            input.len()
        )));
    }
    let padded;
    let input = if input.len() < g {
        let mut p = vec![0u8; g];
        p[..input.len()].copy_from_slice(input);
        padded = p;
        &padded[..]
    } else {
        input
    };
    if looks_incompressible(input) {
        stored_zlib(input, out);
        return Ok(());
    }
    // zlib's bound for 64 KiB is well under 66 000 bytes.
    out.resize(g + g / 16 + 64, 0);
    GRAIN_DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = slot.get_or_insert_with(|| Compress::new(Compression::new(GRAIN_ZLIB_LEVEL), true));
        c.reset();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let r = c.compress(input, out, FlushCompress::Finish);
            (r, c.total_in() as usize, c.total_out() as usize)
        }));
        match r {
            Ok((Ok(Status::StreamEnd), consumed, n)) if consumed == input.len() => {
                out.truncate(n);
                Ok(())
            }
            Ok((Err(e), _, _)) => {
                *slot = None;
                Err(Error::Corrupt(format!(
                    "deflate of a VMDK grain failed: {e}"
                )))
            }
            _ => {
                *slot = None;
                Err(Error::Corrupt(
                    "deflate of a VMDK grain did not finish within its output bound".into(),
                ))
            }
        }
    })
}

/// Whether a grain looks like random or already-compressed bytes, judged from the byte
/// histogram of four 2 KiB samples spread over it: an order-0 entropy above 7.9 bits per byte
/// (uniform bytes measure about 7.98 on 8 KiB). Deflating such data costs as much CPU time as
/// deflating text and saves nothing (on the 2 GiB benchmark image, 307 MiB of random bytes were
/// a fifth of the compression time), so those grains are stored in deflate "stored" blocks. A
/// grain made of one random 4 KiB block repeated would be misjudged and stored at full size:
/// a cost in size only, never in correctness.
fn looks_incompressible(grain: &[u8]) -> bool {
    const SAMPLE: usize = 2048;
    if grain.len() < 4 * SAMPLE {
        return false;
    }
    let mut hist = [0u32; 256];
    let step = (grain.len() - SAMPLE) / 3;
    for k in 0..4 {
        for &b in &grain[k * step..k * step + SAMPLE] {
            hist[b as usize] += 1;
        }
    }
    let n = (4 * SAMPLE) as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.9
}

/// Adler-32 (RFC 1950) of `data`.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 is the longest run before the sums can overflow (zlib's NMAX).
    for part in data.chunks(5552) {
        for &x in part {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// `input` as a zlib stream of stored (uncompressed) deflate blocks (RFC 1950 / 1951).
fn stored_zlib(input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    // CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (no dictionary, fastest; FCHECK makes
    // 0x7801 a multiple of 31).
    out.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = input.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = block.len() as u16;
        out.push(u8::from(last)); // BFINAL, BTYPE 00 (stored)
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(input).to_be_bytes());
}

/// What the sparse writers do with whole grains; [`GrainWriter`] feeds them in order.
trait GrainStore: Send {
    /// Stores grain `g` (index in grains). `data` is the grain (short only at the end of the
    /// disk, never all zero); `compressed` its zlib stream when the engine made one.
    fn store(&mut self, g: u64, data: &[u8], compressed: Option<&[u8]>) -> Result<()>;
    /// Writes the remaining metadata and syncs; returns what was written.
    fn finish(&mut self) -> Result<WriteReport>;
    /// Whether grains are compressed.
    fn compressed(&self) -> bool;
}

/// Front end of the sparse writers: order checks, zero grains, partial grains from direct
/// callers. Invariant: `pending` is `Some` exactly when `next` is inside a grain.
struct GrainWriter<S: GrainStore> {
    store: S,
    size: u64,
    next: u64,
    pending: Option<Vec<u8>>,
    poisoned: bool,
    label: &'static str,
}

impl<S: GrainStore> GrainWriter<S> {
    fn new(store: S, size: u64, label: &'static str) -> Self {
        GrainWriter {
            store,
            size,
            next: 0,
            pending: None,
            poisoned: false,
            label,
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len).filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(Error::InvalidArgument(format!(
                "write of {len} bytes at offset {offset:#x} goes past the end of the {} disk \
                 ({:#x} bytes)",
                self.label, self.size
            )));
        }
        if offset < self.next {
            return Err(Error::InvalidArgument(format!(
                "the {} writer is sequential: write at {offset:#x} comes after data up to {:#x}",
                self.label, self.next
            )));
        }
        Ok(())
    }

    fn grain_end(&self, pos: u64) -> u64 {
        ((pos / GRAIN_SIZE + 1) * GRAIN_SIZE).min(self.size)
    }

    /// Stores the grain in `pending` (which ends at `self.next`).
    fn complete_pending(&mut self) -> Result<()> {
        if let Some(p) = self.pending.take() {
            let g = (self.next - 1) / GRAIN_SIZE;
            if !is_zero(&p) {
                self.store.store(g, &p, None)?;
            }
        }
        Ok(())
    }

    /// Everything up to `to` reads as zeros.
    fn advance_zero(&mut self, to: u64) -> Result<()> {
        if to <= self.next {
            return Ok(());
        }
        let end = self.grain_end(self.next);
        if let Some(p) = self.pending.as_mut() {
            let start = self.next - self.next % GRAIN_SIZE;
            let upto = to.min(end);
            p.resize((upto - start) as usize, 0);
            self.next = upto;
            if upto == end {
                self.complete_pending()?;
            }
            if to == upto {
                return Ok(());
            }
        }
        self.next = to;
        if to % GRAIN_SIZE != 0 && to < self.size {
            self.pending = Some(vec![0u8; (to % GRAIN_SIZE) as usize]);
        }
        Ok(())
    }

    fn write_data(&mut self, mut buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.advance_zero(offset)?;
        while !buf.is_empty() {
            let end = self.grain_end(self.next);
            let n = ((end - self.next) as usize).min(buf.len());
            if let Some(p) = self.pending.as_mut() {
                p.extend_from_slice(&buf[..n]);
                self.next += n as u64;
                if self.next == end {
                    self.complete_pending()?;
                }
            } else if self.next + n as u64 == end {
                if !is_zero(&buf[..n]) {
                    self.store.store(self.next / GRAIN_SIZE, &buf[..n], None)?;
                }
                self.next = end;
            } else {
                self.pending = Some(buf[..n].to_vec());
                self.next += n as u64;
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    fn write_chunk_inner(&mut self, chunk: &Chunk) -> Result<()> {
        for (i, state) in chunk.states.iter().enumerate() {
            let r = chunk.granule_range(i);
            if r.start >= chunk.data.len() {
                break;
            }
            let off = chunk.offset + r.start as u64;
            let len = r.len() as u64;
            match state {
                GranuleState::Zero => {
                    self.check_range(off, len)?;
                    self.advance_zero(off + len)?;
                }
                GranuleState::Compressed(c)
                    if self.store.compressed()
                        && chunk.granule == GRAIN_SIZE
                        && off % GRAIN_SIZE == 0
                        && self.pending.is_none()
                        && (len == GRAIN_SIZE || off + len == self.size) =>
                {
                    self.check_range(off, len)?;
                    self.advance_zero(off)?;
                    self.store
                        .store(off / GRAIN_SIZE, &chunk.data[r], Some(c))?;
                    self.next = off + len;
                }
                _ => self.write_data(&chunk.data[r], off)?,
            }
        }
        Ok(())
    }

    fn finish_inner(&mut self) -> Result<WriteReport> {
        if self.poisoned {
            return Err(Error::InvalidArgument(format!(
                "the {} writer failed earlier; the image cannot be completed",
                self.label
            )));
        }
        self.advance_zero(self.size)?;
        self.complete_pending()?;
        self.store.finish()
    }

    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.poisoned {
            return Err(Error::InvalidArgument(format!(
                "the {} writer failed earlier; no more writes are accepted",
                self.label
            )));
        }
        let r = f(self);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }
}

impl<S: GrainStore> ImageWriter for GrainWriter<S> {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        GRAIN_SIZE
    }

    fn needs_sequential(&self) -> bool {
        true
    }

    fn compressor(&self) -> Option<Arc<dyn Compressor>> {
        if self.store.compressed() {
            Some(Arc::new(GrainCompressor))
        } else {
            None
        }
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.guard(|w| w.write_data(buf, offset))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.guard(|w| {
            w.check_range(offset, len)?;
            w.advance_zero(offset + len)
        })
    }

    fn write_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        self.guard(|w| w.write_chunk_inner(chunk))
    }

    fn finish(mut self: Box<Self>) -> Result<WriteReport> {
        self.finish_inner()
    }
}

/// Append-only output with a write-behind buffer and an optional SHA-256 of everything written.
struct AppendSink {
    storage: Arc<dyn Storage>,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
    hasher: Option<Sha256>,
    label: &'static str,
}

impl AppendSink {
    fn pos(&self) -> u64 {
        self.buf_off + self.buf.len() as u64
    }

    fn emit(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BEHIND {
            self.flush()?;
        }
        Ok(())
    }

    fn pad_to_sector(&mut self) -> Result<()> {
        let rem = (self.pos() % SECTOR) as usize;
        if rem != 0 {
            self.buf.resize(self.buf.len() + (SECTOR as usize - rem), 0);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.storage
            .write_all_at(&self.buf, self.buf_off)
            .map_err(|e| {
                Error::io(
                    format!(
                        "writing {} bytes of the {} at file offset {:#x}",
                        self.buf.len(),
                        self.label,
                        self.buf_off
                    ),
                    e,
                )
            })?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&self.buf);
        }
        self.buf_off += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl fmt::Debug for AppendSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendSink")
            .field("pos", &self.pos())
            .finish_non_exhaustive()
    }
}

/// A metadata marker: u64 sectors of metadata that follow, u32 size 0, u32 type, padded to 512.
fn metadata_marker(num_sectors: u64, ty: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&num_sectors.to_le_bytes());
    m[12..16].copy_from_slice(&ty.to_le_bytes());
    m
}

/// What a finished streamOptimized extent looks like (used by the OVA writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// File length in bytes.
    pub file_size: u64,
    /// SHA-256 of the whole file, when hashing was requested.
    pub sha256: Option<[u8; 32]>,
    /// Bytes of virtual disk held in stored grains (OVF `populatedSize`).
    pub populated_bytes: u64,
    /// What the file holds, by kind (compressed grains; the rest is metadata).
    pub report: WriteReport,
}

/// streamOptimized back end.
struct StreamStore {
    sink: AppendSink,
    header: SparseHeader,
    gt_index: u64,
    gt: Vec<u32>,
    gt_used: bool,
    gd: Vec<u32>,
    grains: u64,
    /// Bytes of compressed grain streams written.
    compressed_bytes: u64,
    summary: Option<StreamSummary>,
}

impl StreamStore {
    fn create(
        storage: Arc<dyn Storage>,
        size: u64,
        extent_name: &str,
        opts: &VmdkWriteOptions,
        hash: bool,
    ) -> Result<Self> {
        check_sparse_size(size)?;
        let capacity = size.div_ceil(SECTOR);
        let num_gts = size.div_ceil(GT_COVERAGE);
        let header = SparseHeader {
            version: 3,
            flags: FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: DESC_OFFSET,
            descriptor_size: DESC_SECTORS,
            num_gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: GRAIN_SECTORS,
            unclean_shutdown: false,
            compress_algorithm: COMPRESSION_DEFLATE,
        };
        let desc = descriptor_text(
            "streamOptimized",
            &format!("RW {capacity} SPARSE \"{extent_name}\""),
            capacity,
            opts,
        );
        let mut sink = AppendSink {
            storage,
            buf: Vec::with_capacity(WRITE_BEHIND + 2 * GRAIN_SIZE as usize),
            buf_off: 0,
            hasher: hash.then(Sha256::new),
            label: "streamOptimized VMDK",
        };
        // Header, descriptor, zeros up to the first grain: written once, never rewritten, so
        // the whole file is append-only.
        let mut head = vec![0u8; (GRAIN_SECTORS * SECTOR) as usize];
        head[..512].copy_from_slice(&header.to_bytes());
        put_descriptor(&mut head, &desc)?;
        sink.emit(&head)?;
        Ok(StreamStore {
            sink,
            header,
            gt_index: 0,
            gt: vec![0; GTES_PER_GT as usize],
            gt_used: false,
            gd: vec![0; num_gts as usize],
            grains: 0,
            compressed_bytes: 0,
            summary: None,
        })
    }

    /// Writes the current grain table, if it holds a grain, and moves on to table `index`.
    fn close_gt(&mut self, index: u64) -> Result<()> {
        if self.gt_used {
            self.sink.emit(&metadata_marker(GT_SECTORS, MARKER_GT))?;
            let at = self.sink.pos() / SECTOR;
            self.gd[self.gt_index as usize] = u32::try_from(at).map_err(|_| too_big(at))?;
            let bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.sink.emit(&bytes)?;
            self.gt.fill(0);
            self.gt_used = false;
        }
        self.gt_index = index;
        Ok(())
    }
}

fn too_big(sector: u64) -> Error {
    Error::from(VmdkError::Unsupported(format!(
        "the sparse extent grew past 2 TiB (sector {sector:#x}); grain offsets are 32-bit"
    )))
}

fn check_sparse_size(size: u64) -> Result<()> {
    if size > MAX_SPARSE_BYTES - 2 * GT_COVERAGE {
        return Err(Error::from(VmdkError::Unsupported(format!(
            "a sparse VMDK extent holds at most about 2 TiB; the disk is {size} bytes (use \
             subformat=monolithicFlat or vmfs)"
        ))));
    }
    Ok(())
}

/// Copies the descriptor into the reserved sectors after the header of `head`.
fn put_descriptor(head: &mut [u8], desc: &str) -> Result<()> {
    let start = (DESC_OFFSET * SECTOR) as usize;
    let room = (DESC_SECTORS * SECTOR) as usize;
    if desc.len() > room {
        return Err(Error::InvalidArgument(format!(
            "the VMDK descriptor is {} bytes, more than the {room} reserved for it",
            desc.len()
        )));
    }
    head[start..start + desc.len()].copy_from_slice(desc.as_bytes());
    Ok(())
}

impl GrainStore for StreamStore {
    fn store(&mut self, g: u64, data: &[u8], compressed: Option<&[u8]>) -> Result<()> {
        let table = g / GTES_PER_GT;
        if table != self.gt_index {
            self.close_gt(table)?;
        }
        let mut own = Vec::new();
        let c = match compressed {
            Some(c) => c,
            None => {
                compress_grain(data, &mut own)?;
                &own
            }
        };
        let at = self.sink.pos() / SECTOR;
        let at32 = u32::try_from(at).map_err(|_| too_big(at))?;
        // Grain marker: u64 LBA in sectors, u32 compressed size, then the data.
        let mut m = [0u8; 12];
        m[0..8].copy_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
        m[8..12].copy_from_slice(&(c.len() as u32).to_le_bytes());
        self.sink.emit(&m)?;
        self.sink.emit(c)?;
        self.compressed_bytes += c.len() as u64;
        self.sink.pad_to_sector()?;
        self.gt[(g % GTES_PER_GT) as usize] = at32;
        self.gt_used = true;
        self.grains += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<WriteReport> {
        let last = self.gt_index;
        self.close_gt(last)?;
        let gd_bytes: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        let gd_sectors = (gd_bytes.len() as u64).div_ceil(SECTOR);
        self.sink.emit(&metadata_marker(gd_sectors, MARKER_GD))?;
        let gd_at = self.sink.pos() / SECTOR;
        self.sink.emit(&gd_bytes)?;
        self.sink.pad_to_sector()?;
        self.sink.emit(&metadata_marker(1, MARKER_FOOTER))?;
        let footer = SparseHeader {
            gd_offset: gd_at,
            ..self.header
        };
        self.sink.emit(&footer.to_bytes())?;
        self.sink.emit(&metadata_marker(0, MARKER_EOS))?;
        self.sink.flush()?;
        // A hashed stream is the scratch disk of an OVA: it is copied and deleted, not kept.
        if self.sink.hasher.is_none() {
            self.sink
                .storage
                .sync()
                .map_err(|e| Error::io("syncing the streamOptimized VMDK", e))?;
        }
        // The file is written append-only, every byte once: what is not a grain's compressed
        // stream is metadata (header, descriptor, markers, tables, sector padding).
        let report = WriteReport {
            compressed: self.compressed_bytes,
            metadata: self.sink.pos() - self.compressed_bytes,
            ..WriteReport::default()
        }
        .complete(&[self.sink.storage.as_ref()])?;
        self.summary = Some(StreamSummary {
            file_size: self.sink.pos(),
            sha256: self.sink.hasher.take().map(|h| h.finalize().into()),
            populated_bytes: (self.grains * GRAIN_SIZE).min(self.header.capacity * SECTOR),
            report,
        });
        Ok(report)
    }

    fn compressed(&self) -> bool {
        true
    }
}

/// A streamOptimized writer whose summary can be taken after `finish` (for OVA packaging).
pub(crate) struct StreamWriter(GrainWriter<StreamStore>);

impl StreamWriter {
    /// A streamOptimized VMDK in `storage`, named `extent_name` in its own descriptor.
    pub(crate) fn create(
        storage: Arc<dyn Storage>,
        size: u64,
        extent_name: &str,
        opts: &VmdkWriteOptions,
        hash: bool,
    ) -> Result<Self> {
        let store = StreamStore::create(storage, size, extent_name, opts, hash)?;
        Ok(StreamWriter(GrainWriter::new(
            store,
            size,
            "streamOptimized VMDK",
        )))
    }

    /// Finishes the extent and describes it.
    pub(crate) fn finish_with_summary(&mut self) -> Result<StreamSummary> {
        self.0.finish_inner()?;
        self.0
            .store
            .summary
            .take()
            .ok_or_else(|| Error::Internal("VMDK stream writer internal error: no summary".into()))
    }

    /// The writer as an [`ImageWriter`] for the engine (used by the OVA writer's delegation).
    pub(crate) fn inner(&mut self) -> &mut dyn ImageWriter {
        &mut self.0
    }

    /// The compressor the engine should run.
    pub(crate) fn compressor(&self) -> Option<Arc<dyn Compressor>> {
        self.0.compressor()
    }
}

impl fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWriter")
            .field("size", &self.0.size)
            .field("next", &self.0.next)
            .finish_non_exhaustive()
    }
}

/// monolithicSparse back end: metadata preallocated, grains appended.
struct HostedStore {
    storage: Arc<dyn Storage>,
    header: SparseHeader,
    desc: String,
    /// Sector of the first redundant and primary grain table.
    rgt_start: u64,
    gt_start: u64,
    num_gts: u64,
    gt_index: u64,
    gt: Vec<u32>,
    gt_used: bool,
    /// Next free sector for a grain.
    next_sector: u64,
    wb: Vec<u8>,
    wb_off: u64,
    /// Bytes written so far, by kind.
    report: WriteReport,
}

impl HostedStore {
    fn create(
        storage: Arc<dyn Storage>,
        size: u64,
        extent_name: &str,
        opts: &VmdkWriteOptions,
    ) -> Result<Self> {
        check_sparse_size(size)?;
        let capacity = size.div_ceil(SECTOR);
        let num_gts = size.div_ceil(GT_COVERAGE);
        let gd_sectors = (num_gts * 4).div_ceil(SECTOR);
        let rgd = DESC_OFFSET + DESC_SECTORS;
        let rgt_start = rgd + gd_sectors;
        let gd = rgt_start + num_gts * GT_SECTORS;
        let gt_start = gd + gd_sectors;
        let overhead = (gt_start + num_gts * GT_SECTORS).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        let header = SparseHeader {
            version: 1,
            flags: FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT,
            capacity,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: DESC_OFFSET,
            descriptor_size: DESC_SECTORS,
            num_gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: rgd,
            gd_offset: gd,
            overhead,
            unclean_shutdown: false,
            compress_algorithm: 0,
        };
        let desc = descriptor_text(
            "monolithicSparse",
            &format!("RW {capacity} SPARSE \"{extent_name}\""),
            capacity,
            opts,
        );
        // The file is all metadata up to the first grain; the grain tables stay holes until
        // their range is written.
        storage.set_len(overhead * SECTOR).map_err(|e| {
            Error::io(
                format!(
                    "extending the monolithicSparse VMDK to {} bytes",
                    overhead * SECTOR
                ),
                e,
            )
        })?;
        Ok(HostedStore {
            storage,
            header,
            desc,
            rgt_start,
            gt_start,
            num_gts,
            gt_index: 0,
            gt: vec![0; GTES_PER_GT as usize],
            gt_used: false,
            next_sector: overhead,
            wb: Vec::new(),
            wb_off: overhead * SECTOR,
            report: WriteReport::default(),
        })
    }

    fn write(&self, data: &[u8], off: u64, what: &str) -> Result<()> {
        self.storage.write_all_at(data, off).map_err(|e| {
            Error::io(
                format!(
                    "writing the monolithicSparse VMDK {what} ({} bytes) at file offset {off:#x}",
                    data.len()
                ),
                e,
            )
        })
    }

    fn flush_wb(&mut self) -> Result<()> {
        if !self.wb.is_empty() {
            let wb = std::mem::take(&mut self.wb);
            let r = self.write(&wb, self.wb_off, "grains");
            self.wb_off += wb.len() as u64;
            self.wb = wb;
            self.wb.clear();
            r?;
        }
        Ok(())
    }

    fn close_gt(&mut self, index: u64) -> Result<()> {
        if self.gt_used {
            let bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            for start in [self.rgt_start, self.gt_start] {
                let at = (start + self.gt_index * GT_SECTORS) * SECTOR;
                self.write(&bytes, at, "grain table")?;
                self.report.metadata += bytes.len() as u64;
            }
            self.gt.fill(0);
            self.gt_used = false;
        }
        self.gt_index = index;
        Ok(())
    }
}

impl GrainStore for HostedStore {
    fn store(&mut self, g: u64, data: &[u8], _compressed: Option<&[u8]>) -> Result<()> {
        let table = g / GTES_PER_GT;
        if table != self.gt_index {
            self.close_gt(table)?;
        }
        let at = u32::try_from(self.next_sector).map_err(|_| too_big(self.next_sector))?;
        self.wb.extend_from_slice(data);
        // A short last grain is padded to a whole grain.
        self.wb
            .resize(self.wb.len() + (GRAIN_SIZE as usize - data.len()), 0);
        self.report.data += data.len() as u64;
        self.report.zeros += GRAIN_SIZE - data.len() as u64;
        self.gt[(g % GTES_PER_GT) as usize] = at;
        self.gt_used = true;
        self.next_sector += GRAIN_SECTORS;
        if self.wb.len() >= WRITE_BEHIND {
            self.flush_wb()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<WriteReport> {
        self.flush_wb()?;
        let last = self.gt_index;
        self.close_gt(last)?;
        // Both grain directories point at all (preallocated) grain tables.
        for (dir, tables) in [
            (self.header.rgd_offset, self.rgt_start),
            (self.header.gd_offset, self.gt_start),
        ] {
            let mut bytes = Vec::with_capacity(self.num_gts as usize * 4);
            for i in 0..self.num_gts {
                let s = tables + i * GT_SECTORS;
                bytes.extend_from_slice(&(s as u32).to_le_bytes());
            }
            self.write(&bytes, dir * SECTOR, "grain directory")?;
            self.report.metadata += bytes.len() as u64;
        }
        let mut head = vec![0u8; ((DESC_OFFSET + DESC_SECTORS) * SECTOR) as usize];
        head[..512].copy_from_slice(&self.header.to_bytes());
        let desc = std::mem::take(&mut self.desc);
        put_descriptor(&mut head, &desc)?;
        // The header goes last: until then the file is recognisably incomplete.
        self.write(&head[512..], 512, "descriptor")?;
        self.write(&head[..512], 0, "header")?;
        self.report.metadata += head.len() as u64;
        self.storage
            .sync()
            .map_err(|e| Error::io("syncing the monolithicSparse VMDK", e))?;
        self.report.complete(&[self.storage.as_ref()])
    }

    fn compressed(&self) -> bool {
        false
    }
}

/// monolithicFlat / vmfs: a raw extent beside a descriptor.
struct FlatWriter {
    raw: RawWriter,
    size: u64,
    descriptor_file: Arc<dyn Storage>,
    descriptor: String,
}

impl fmt::Debug for FlatWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlatWriter")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ImageWriter for FlatWriter {
    fn format(&self) -> Format {
        Format::Vmdk
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn granularity(&self) -> u64 {
        self.raw.granularity()
    }
    fn needs_sequential(&self) -> bool {
        false
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.raw.write_at(buf, offset)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.write_zeroes(offset, len)
    }
    fn write_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        self.raw.write_chunk(chunk)
    }
    fn finish(self: Box<Self>) -> Result<WriteReport> {
        let FlatWriter {
            raw,
            descriptor_file,
            descriptor,
            ..
        } = *self;
        let mut report = Box::new(raw).finish()?;
        descriptor_file
            .write_all_at(descriptor.as_bytes(), 0)
            .map_err(|e| Error::io("writing the VMDK descriptor at file offset 0x0", e))?;
        descriptor_file
            .sync()
            .map_err(|e| Error::io("syncing the VMDK descriptor", e))?;
        let desc = WriteReport {
            metadata: descriptor.len() as u64,
            ..WriteReport::default()
        }
        .complete(&[descriptor_file.as_ref()])?;
        report.add(&desc);
        Ok(report)
    }
}

/// The file name of the target (the name a descriptor gives its own extent).
fn target_file_name(files: &dyn Sink) -> Result<String> {
    files
        .target()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "output '{}' is not a file name",
                files.target().display()
            ))
        })
}

/// `<stem>-flat.vmdk` for a target `<stem>.vmdk` (or `<name>-flat.vmdk` for other names).
pub fn flat_extent_name(target_name: &str) -> String {
    let stem = target_name
        .strip_suffix(".vmdk")
        .filter(|s| !s.is_empty())
        .unwrap_or(target_name);
    format!("{stem}-flat.vmdk")
}

/// Names of the files a VMDK output at `target_name` writes beside it: the flat extent of a
/// monolithicFlat or vmfs image.
pub fn sibling_names(target_name: &str, opts: &VmdkWriteOptions) -> Vec<String> {
    match opts.subformat {
        VmdkSubformat::MonolithicFlat | VmdkSubformat::Vmfs => {
            vec![flat_extent_name(target_name)]
        }
        _ => Vec::new(),
    }
}

/// Creates the writer for `opts.subformat` over the output files.
pub fn create(
    files: &mut dyn Sink,
    size: u64,
    opts: &VmdkWriteOptions,
) -> Result<Box<dyn ImageWriter>> {
    let name = target_file_name(files)?;
    if name.contains('"') || name.contains('\n') {
        return Err(Error::InvalidArgument(format!(
            "VMDK file name {name:?} cannot be written in a descriptor"
        )));
    }
    Ok(match opts.subformat {
        VmdkSubformat::StreamOptimized => {
            let store = StreamStore::create(files.main()?, size, &name, opts, false)?;
            Box::new(GrainWriter::new(store, size, "streamOptimized VMDK"))
        }
        VmdkSubformat::MonolithicSparse => {
            let store = HostedStore::create(files.main()?, size, &name, opts)?;
            Box::new(GrainWriter::new(store, size, "monolithicSparse VMDK"))
        }
        VmdkSubformat::MonolithicFlat | VmdkSubformat::Vmfs => {
            let flat = flat_extent_name(&name);
            let capacity = size.div_ceil(SECTOR);
            let line = if opts.subformat == VmdkSubformat::Vmfs {
                format!("RW {capacity} VMFS \"{flat}\"")
            } else {
                format!("RW {capacity} FLAT \"{flat}\" 0")
            };
            let descriptor = descriptor_text(opts.subformat.create_type(), &line, capacity, opts);
            let descriptor_file = files.main()?;
            let extent = files.sibling(&flat)?;
            let raw = RawWriter::create(extent, capacity * SECTOR, Preallocation::Off)?;
            Box::new(FlatWriter {
                raw,
                size,
                descriptor_file,
                descriptor,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{le32, le64};
    use crate::convert::{ConvertOptions, convert};
    use crate::formats::raw::RawReader;
    use crate::storage::MemStorage;
    use std::collections::{BTreeMap, HashMap};

    /// Data grains, zero grains, a repetitive grain, and a short tail.
    fn pattern(len: usize) -> Vec<u8> {
        let mut s = 0x1234_5678_9abc_def1u64;
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            let g = i / GRAIN_SIZE as usize;
            *b = match g % 5 {
                1 | 4 => 0,
                2 => (i % 61) as u8,
                _ => {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                }
            };
        }
        v
    }

    fn engine_write(
        data: &[u8],
        make: impl FnOnce(Arc<dyn Storage>, u64) -> Box<dyn ImageWriter>,
    ) -> Vec<u8> {
        let out = Arc::new(MemStorage::new());
        let w = make(out.clone(), data.len() as u64);
        let src = RawReader::new(Arc::new(MemStorage::from_vec(data.to_vec())), None).unwrap();
        let opts = ConvertOptions {
            chunk_size: 1 << 20,
            ..Default::default()
        };
        convert(&src, w, &opts, None).unwrap();
        out.to_vec()
    }

    fn stream_writer(
        opts: VmdkWriteOptions,
    ) -> impl FnOnce(Arc<dyn Storage>, u64) -> Box<dyn ImageWriter> {
        move |s, size| {
            Box::new(GrainWriter::new(
                StreamStore::create(s, size, "disk.vmdk", &opts, false).unwrap(),
                size,
                "test",
            ))
        }
    }

    fn descriptor_keys(file: &[u8], h: &SparseHeader) -> (String, HashMap<String, String>) {
        let start = (h.descriptor_offset * SECTOR) as usize;
        let end = start + (h.descriptor_size * SECTOR) as usize;
        let text = String::from_utf8(file[start..end].to_vec()).unwrap();
        let text = text.trim_end_matches('\0').to_string();
        let mut keys = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if !line.starts_with('#') {
                    keys.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                }
            }
        }
        (text, keys)
    }

    fn inflate(c: &[u8]) -> Vec<u8> {
        let mut d = flate2::Decompress::new(true);
        let mut out = vec![0u8; GRAIN_SIZE as usize];
        let st = d
            .decompress(c, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(st, flate2::Status::StreamEnd);
        assert_eq!(d.total_out(), GRAIN_SIZE);
        assert_eq!(d.total_in() as usize, c.len(), "size field = stream length");
        out
    }

    /// Walks a streamOptimized file field by field; returns the virtual disk it holds.
    fn parse_stream(file: &[u8], size: usize) -> Vec<u8> {
        let h = SparseHeader::parse(file, 0).unwrap();
        assert_eq!(&file[0..4], b"KDMV");
        assert_eq!(h.version, 3);
        assert_eq!(h.flags, 0x0003_0001);
        assert_eq!(h.capacity, size.div_ceil(512) as u64);
        assert_eq!(h.grain_size, 128);
        assert_eq!(h.num_gtes_per_gt, 512);
        assert_eq!(h.descriptor_offset, 1);
        assert_eq!(h.descriptor_size, 20);
        assert_eq!(h.rgd_offset, 0);
        assert_eq!(h.gd_offset, u64::MAX);
        assert_eq!(h.overhead, 128);
        assert!(!h.unclean_shutdown);
        assert_eq!(&file[73..77], b"\n \r\n");
        assert_eq!(h.compress_algorithm, 1);
        assert!(file[79..512].iter().all(|&b| b == 0));
        assert_eq!(file.len() % 512, 0);

        let mut disk = vec![0u8; size.div_ceil(512) * 512];
        let mut grains: BTreeMap<u64, u64> = BTreeMap::new(); // marker sector -> lba
        let mut tables: HashMap<u64, Vec<u32>> = HashMap::new(); // sector of GT -> entries
        let mut gd: Option<(u64, Vec<u32>)> = None;
        let mut pos = (h.overhead * 512) as usize;
        let mut last_lba = None;
        loop {
            let val = le64(file, pos);
            let sz = le32(file, pos + 8) as usize;
            if sz != 0 {
                // Grain marker: LBA, size, zlib data, padding to the sector.
                assert_eq!(val % 128, 0, "grain LBA is grain-aligned");
                assert!(last_lba.is_none_or(|l| val > l), "ascending LBAs");
                last_lba = Some(val);
                let g = inflate(&file[pos + 12..pos + 12 + sz]);
                assert!(!g.iter().all(|&b| b == 0), "zero grain written");
                let at = (val * 512) as usize;
                let n = (disk.len() - at).min(g.len());
                disk[at..at + n].copy_from_slice(&g[..n]);
                assert!(g[n..].iter().all(|&b| b == 0));
                grains.insert(pos as u64 / 512, val);
                pos += (12 + sz).div_ceil(512) * 512;
                continue;
            }
            let ty = le32(file, pos + 12);
            assert!(file[pos + 16..pos + 512].iter().all(|&b| b == 0));
            pos += 512;
            match ty {
                MARKER_GT => {
                    assert_eq!(val, 4);
                    let e = (0..512).map(|i| le32(file, pos + 4 * i)).collect();
                    tables.insert(pos as u64 / 512, e);
                    pos += 2048;
                }
                MARKER_GD => {
                    let n = size.div_ceil(GT_COVERAGE as usize);
                    assert_eq!(val, (n as u64 * 4).div_ceil(512));
                    let e = (0..n).map(|i| le32(file, pos + 4 * i)).collect();
                    gd = Some((pos as u64 / 512, e));
                    pos += val as usize * 512;
                }
                MARKER_FOOTER => {
                    assert_eq!(val, 1);
                    let f = SparseHeader::parse(&file[pos..], pos as u64).unwrap();
                    let (gd_sector, _) = gd.as_ref().expect("GD before footer");
                    assert_eq!(f.gd_offset, *gd_sector);
                    assert_eq!(
                        SparseHeader {
                            gd_offset: GD_AT_END,
                            ..f
                        },
                        h
                    );
                    assert_eq!(file[pos..pos + 512][64..], file[..512][64..]);
                    pos += 512;
                }
                MARKER_EOS => {
                    assert_eq!(val, 0);
                    assert_eq!(pos, file.len(), "EOS is the last sector");
                    break;
                }
                other => panic!("unknown marker type {other} at {pos:#x}"),
            }
        }
        // Every grain is reachable from GD -> GT, and nothing else is.
        let (_, gd) = gd.expect("grain directory");
        let mut reached = 0;
        for (t, &gt_sector) in gd.iter().enumerate() {
            if gt_sector == 0 {
                continue;
            }
            let gt = &tables[&u64::from(gt_sector)];
            for (i, &e) in gt.iter().enumerate() {
                if e != 0 {
                    let lba = grains[&u64::from(e)];
                    assert_eq!(lba, ((t * 512 + i) * 128) as u64);
                    reached += 1;
                }
            }
        }
        assert_eq!(reached, grains.len());
        assert_eq!(tables.len(), gd.iter().filter(|&&e| e != 0).count());
        disk.truncate(size);
        disk
    }

    #[test]
    fn stream_optimized_field_by_field() {
        // 70 MiB + a short tail: three grain tables, the middle one empty.
        let mut data = pattern(70 * (1 << 20) + 3 * 512);
        data[32 << 20..64 << 20].fill(0);
        let file = engine_write(&data, stream_writer(VmdkWriteOptions::default()));
        assert_eq!(parse_stream(&file, data.len()), data);
        let h = SparseHeader::parse(&file, 0).unwrap();
        let (text, keys) = descriptor_keys(&file, &h);
        assert!(text.starts_with("# Disk DescriptorFile\n"), "{text}");
        assert_eq!(keys["version"], "1");
        assert_eq!(keys["createType"], "streamOptimized");
        assert_eq!(keys["parentCID"], "ffffffff");
        let cid = u32::from_str_radix(&keys["CID"], 16).unwrap();
        assert_ne!(cid, u32::MAX);
        assert!(keys["ddb.longContentID"].ends_with(&keys["CID"]));
        assert!(text.contains(&format!("\nRW {} SPARSE \"disk.vmdk\"\n", h.capacity)));
        assert_eq!(keys["ddb.adapterType"], "lsilogic");
        assert_eq!(keys["ddb.virtualHWVersion"], "14");
        assert_eq!(keys["ddb.geometry.heads"], "255");
        assert_eq!(keys["ddb.geometry.sectors"], "63");
        assert_eq!(
            keys["ddb.geometry.cylinders"],
            (h.capacity / (255 * 63)).to_string()
        );
        assert_eq!(keys["ddb.uuid"].len(), 47);
        // The middle table had no grain: GD entry 0 (checked in parse_stream via counts).
    }

    #[test]
    fn stream_ide_geometry_and_direct_unaligned_writes() {
        let data = pattern(5 * GRAIN_SIZE as usize + 1536);
        let opts = VmdkWriteOptions {
            adapter_type: AdapterType::Ide,
            hw_version: 10,
            ..Default::default()
        };
        let out = Arc::new(MemStorage::new());
        let mut w = GrainWriter::new(
            StreamStore::create(out.clone(), data.len() as u64, "d.vmdk", &opts, false).unwrap(),
            data.len() as u64,
            "test",
        );
        // Pieces that straddle grains, a gap (reads as zero), then the rest.
        w.write_at(&data[..1000], 0).unwrap();
        w.write_at(&data[1000..70000], 1000).unwrap();
        assert!(
            w.write_at(&data[..10], 500).is_err(),
            "backwards write refused"
        );
        let mut w = GrainWriter::new(
            StreamStore::create(out.clone(), data.len() as u64, "d.vmdk", &opts, false).unwrap(),
            data.len() as u64,
            "test",
        );
        out.set_len(0).unwrap();
        w.write_at(&data[..1000], 0).unwrap();
        w.write_at(&data[1000..70000], 1000).unwrap();
        w.write_zeroes(70000, 200_000 - 70000).unwrap();
        w.write_at(&data[200_000..], 200_000).unwrap();
        Box::new(w).finish().unwrap();
        let mut expect = data.clone();
        expect[70000..200_000].fill(0);
        let file = out.to_vec();
        assert_eq!(parse_stream(&file, data.len()), expect);
        let h = SparseHeader::parse(&file, 0).unwrap();
        let (_, keys) = descriptor_keys(&file, &h);
        assert_eq!(keys["ddb.adapterType"], "ide");
        assert_eq!(keys["ddb.geometry.heads"], "16");
        assert_eq!(keys["ddb.geometry.sectors"], "63");
        assert_eq!(keys["ddb.virtualHWVersion"], "10");
    }

    #[test]
    fn incompressible_grains_are_stored_blocks_that_inflate() {
        let mut s = 7u64;
        let noise: Vec<u8> = (0..GRAIN_SIZE)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        assert!(looks_incompressible(&noise));
        assert!(!looks_incompressible(
            &pattern(GRAIN_SIZE as usize * 3)[GRAIN_SIZE as usize * 2..]
        ));
        assert!(!looks_incompressible(&vec![0x41u8; GRAIN_SIZE as usize]));
        let mut out = Vec::new();
        compress_grain(&noise, &mut out).unwrap();
        // Header, two stored blocks (65535 + 1 bytes) with 5-byte headers, Adler-32.
        assert_eq!(out.len(), 2 + 5 + 65535 + 5 + 1 + 4);
        assert_eq!(inflate(&out), noise);
        // flate2 checks the Adler-32 trailer too: a wrong one fails.
        let n = out.len();
        out[n - 1] ^= 1;
        let mut d = flate2::Decompress::new(true);
        let mut buf = vec![0u8; GRAIN_SIZE as usize];
        assert!(
            d.decompress(&out, &mut buf, flate2::FlushDecompress::Finish)
                .is_err()
        );
        let mut e = Vec::new();
        stored_zlib(&[], &mut e);
        let mut d = flate2::Decompress::new(true);
        let st = d
            .decompress(&e, &mut buf, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(st, flate2::Status::StreamEnd);
    }

    #[test]
    fn geometry_rules() {
        assert_eq!(
            AdapterType::LsiLogic.geometry(255 * 63 * 1000),
            (1000, 255, 63)
        );
        assert_eq!(AdapterType::Ide.geometry(16 * 63 * 100), (100, 16, 63));
        assert_eq!(AdapterType::Ide.geometry(83220 * 16 * 63 + 5).0, 83220);
        assert_eq!(AdapterType::BusLogic.geometry(8), (1, 255, 63));
    }

    #[test]
    fn empty_and_all_zero_streams() {
        for len in [0usize, 512, 3 * GRAIN_SIZE as usize] {
            let data = vec![0u8; len];
            let file = engine_write(&data, stream_writer(VmdkWriteOptions::default()));
            assert_eq!(parse_stream(&file, len), data);
            // header area + GD marker + GD + footer marker + footer + EOS
            let gd = (len.div_ceil(GT_COVERAGE as usize) * 4).div_ceil(512) * 512;
            assert_eq!(file.len(), 65536 + 512 + gd + 3 * 512, "len {len}");
        }
    }

    #[test]
    fn monolithic_sparse_field_by_field() {
        let data = pattern(40 * (1 << 20) + 1024);
        let file = engine_write(&data, |s, size| {
            Box::new(GrainWriter::new(
                HostedStore::create(s, size, "m.vmdk", &VmdkWriteOptions::default()).unwrap(),
                size,
                "test",
            ))
        });
        let h = SparseHeader::parse(&file, 0).unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.flags, 3);
        assert_eq!(h.compress_algorithm, 0);
        assert_eq!(h.grain_size, 128);
        assert_eq!(h.capacity, data.len().div_ceil(512) as u64);
        assert_eq!(h.rgd_offset, 21);
        let num_gts = 2u64;
        assert_eq!(h.gd_offset, 21 + 1 + num_gts * 4);
        assert_eq!(h.overhead, 128);
        let (_, keys) = descriptor_keys(&file, &h);
        assert_eq!(keys["createType"], "monolithicSparse");
        let mut disk = vec![0u8; data.len().div_ceil(512) * 512];
        let mut allocated = 0;
        for dir in [h.rgd_offset, h.gd_offset] {
            for t in 0..num_gts as usize {
                let gt = le32(&file, (dir * 512) as usize + 4 * t) as usize;
                assert_eq!(gt as u64, dir + 1 + t as u64 * 4, "GT follows its GD");
                for i in 0..512 {
                    let e = le32(&file, gt * 512 + 4 * i) as usize;
                    let v = (t * 512 + i) * GRAIN_SIZE as usize;
                    if e == 0 {
                        continue;
                    }
                    assert!(e as u64 >= h.overhead && e % 128 == 0);
                    let n = (disk.len() - v).min(GRAIN_SIZE as usize);
                    disk[v..v + n].copy_from_slice(&file[e * 512..e * 512 + n]);
                    allocated += 1;
                }
            }
        }
        disk.truncate(data.len());
        assert_eq!(disk, data);
        let nonzero = data
            .chunks(GRAIN_SIZE as usize)
            .filter(|c| !is_zero(c))
            .count();
        assert_eq!(
            allocated,
            2 * nonzero,
            "zero grains unallocated, both copies"
        );
        assert_eq!(file.len(), (128 + nonzero * 128) * 512);
    }

    #[test]
    fn rejects_too_large_sparse_and_names() {
        let e = StreamStore::create(
            Arc::new(MemStorage::new()),
            3 << 40,
            "x.vmdk",
            &VmdkWriteOptions::default(),
            false,
        )
        .err()
        .unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert_eq!(flat_extent_name("disk.vmdk"), "disk-flat.vmdk");
        assert_eq!(flat_extent_name("disk"), "disk-flat.vmdk");
    }

    #[test]
    fn io_error_names_offset_and_poisons() {
        #[derive(Debug)]
        struct Failing;
        impl Storage for Failing {
            fn len(&self) -> std::io::Result<u64> {
                Ok(0)
            }
            fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<usize> {
                Ok(0)
            }
            fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
                Err(std::io::Error::other("disk full"))
            }
            fn set_len(&self, _: u64) -> std::io::Result<()> {
                Ok(())
            }
        }
        let size = 4 << 20;
        let mut w = GrainWriter::new(
            StreamStore::create(
                Arc::new(Failing),
                size,
                "f.vmdk",
                &Default::default(),
                false,
            )
            .unwrap(),
            size,
            "test",
        );
        let data = pattern(size as usize);
        let e = w.write_at(&data, 0).unwrap_err();
        assert!(e.to_string().contains("at file offset 0x0"), "{e}");
        assert!(w.write_at(&data[..512], size - 512).is_err());
        assert!(Box::new(w).finish().is_err());
    }
}
