//! [`Qcow2Writer`]: a new qcow2 image written in one streaming pass.
//!
//! # Layout
//!
//! Everything is decided from the virtual size before the first byte of guest data arrives:
//!
//! ```text
//! cluster 0            header (written last, at finish: until then the file has no magic)
//! 1 ..                 L1 table (written at finish)
//! ..                   refcount table, sized for the worst case (written at finish)
//! ..                   refcount blocks covering the clusters above
//! then, in order       data clusters, packed compressed clusters, L2 tables,
//!                      and one refcount block at the first cluster of every
//!                      `entries_per_block` clusters (covering itself)
//! ```
//!
//! Host clusters are handed out strictly in ascending order. An L2 table stays in memory while
//! the guest range it maps is being written and is appended when the writer moves past it; the
//! refcount block covering the newest host clusters stays in memory likewise and is written
//! when allocation crosses into the next block's range. Placing the refcount blocks inside the
//! stream (as qemu does while it allocates) instead of appending them all at the end has two
//! benefits: no self-referencing fix-point at finish, and no refcount array that grows with the
//! file. The refcount table itself is reserved up front for the largest file the virtual size
//! can produce (every guest cluster stored plainly), which is a handful of clusters for
//! realistic sizes; capped at qemu's 8 MiB limit, with an error if a file would really need
//! more.
//!
//! Zero clusters are never allocated (their L2 entry is 0: there is no backing file) unless
//! preallocation asks for it. Compressed clusters are packed at byte granularity into shared
//! host clusters, like qemu's `qcow2_alloc_bytes`: the refcount of such a host cluster is the
//! number of compressed clusters touching it (at most 65535, the 16-bit limit; a new host
//! cluster is started before that).
//!
//! A virtual size that is not a multiple of 512 is rounded up to whole sectors in the header,
//! as `qemu-img convert` does: qemu drops a partial last sector otherwise. The padding reads as
//! zeros; [`ImageWriter::virtual_size`] still reports the exact size.
//!
//! # Memory
//!
//! Independent of the virtual size except for two small tables: one L2 table and one refcount
//! block (a cluster each), at most two clusters of packed compressed data, one partial guest
//! cluster, a 4 MiB write-behind buffer, the L1 table (8 bytes per L2 table: 8 bytes per
//! 512 MiB of virtual disk with 64 KiB clusters, bounded by qemu's 32 MiB L1 limit) and the
//! refcount table entries (8 bytes per refcount block: per 2 GiB of file with 64 KiB clusters).

use std::fmt;
use std::sync::Arc;

use super::compress::ClusterCompressor;
use super::header::{
    CompressionType, INCOMPAT_COMPRESSION, MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFTABLE_BYTES,
    MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS, Qcow2Header,
};
use super::l1l2::{self, COPIED, OFFSET_MASK};
use super::refcount;
use crate::error::{Error, Result};
use crate::formats::raw::Preallocation;
use crate::image::{Chunk, Compressor, Format, GranuleState, ImageWriter, WriteReport};
use crate::storage::Storage;
use crate::util::{align_down, is_zero};

/// How to write a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2WriteOptions {
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`, the default).
    pub version: u32,
    /// log2 of the cluster size (9 to 21; default 16 = 64 KiB).
    pub cluster_bits: u32,
    /// Compression type recorded in the header and used for compressed clusters.
    pub compression_type: CompressionType,
    /// Compress data clusters (`-c`).
    pub compress: bool,
    /// Space reservation (`preallocation=`).
    pub preallocation: Preallocation,
}

impl Default for Qcow2WriteOptions {
    fn default() -> Self {
        Qcow2WriteOptions {
            version: 3,
            cluster_bits: 16,
            compression_type: CompressionType::Zlib,
            compress: false,
            preallocation: Preallocation::Off,
        }
    }
}

/// Refcount width: 16 bits, as qemu creates images (and the only width version 2 knows).
const REFCOUNT_ORDER: u32 = 4;

/// Size of the write-behind buffer that merges consecutive cluster writes into large writes.
const WRITE_BEHIND: usize = 4 << 20;

/// The refcount block covering the newest host clusters.
struct RefBlock {
    /// Index in the refcount table.
    index: u64,
    /// Host offset of the block itself.
    host: u64,
    /// The block's bytes (one cluster).
    buf: Vec<u8>,
}

/// Host clusters receiving packed compressed data, not yet written.
struct Staging {
    /// Host offset of `buf[0]` (cluster-aligned).
    start: u64,
    /// Compressed bytes placed so far, from `start`.
    buf: Vec<u8>,
    /// Clusters allocated from `start`.
    clusters: u64,
}

/// Writes a qcow2 image in one pass, in ascending guest order.
///
/// Created by [`Qcow2Writer::create`]; driven by the convert engine (or by direct calls to
/// [`ImageWriter::write_at`] / [`ImageWriter::write_zeroes`] in ascending order); completed by
/// [`ImageWriter::finish`]. See the module documentation for the layout and memory bounds.
pub struct Qcow2Writer {
    storage: Arc<dyn Storage>,
    opts: Qcow2WriteOptions,
    size: u64,
    /// Cluster size in bytes.
    cs: u64,
    /// Entries in one L2 table.
    l2_entries: u64,
    /// Refcounts in one refcount block.
    epb: u64,
    compressor: Option<Arc<ClusterCompressor>>,

    l1_offset: u64,
    l1: Vec<u64>,
    reftable_offset: u64,
    reftable_clusters: u64,
    /// Host offsets of the refcount blocks, by index.
    reftable: Vec<u64>,

    /// Guest bytes handled so far: everything below is stored or buffered in `partial`.
    pos: u64,
    /// The guest cluster containing `pos`, from its start up to `pos` (empty when aligned).
    partial: Vec<u8>,
    /// Index in the L1 table and bytes of the L2 table being filled.
    l2: Option<(u64, Vec<u8>)>,

    /// The next host cluster to hand out.
    next_cluster: u64,
    rb: RefBlock,
    staging: Option<Staging>,
    /// Write-behind buffer: consecutive bytes to be written at `wb_off`.
    wb: Vec<u8>,
    wb_off: u64,
    /// Host range waiting for `fallocate` (preallocation=falloc).
    falloc: Option<(u64, u64)>,
    /// A cluster of zeros (preallocation=full, padding).
    zeros: Vec<u8>,
    /// Set after an error: the state may be half-updated, so everything after fails.
    poisoned: bool,
    /// Bytes written so far, by kind.
    report: WriteReport,
}

impl fmt::Debug for Qcow2Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("storage", &self.storage)
            .field("opts", &self.opts)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .field("next_cluster", &self.next_cluster)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// What a guest cluster holds, for [`Qcow2Writer::store`].
enum Content<'a> {
    /// Reads as zeros.
    Zero,
    /// Plain bytes (shorter than a cluster only at the end of the disk).
    Data(&'a [u8]),
}

fn invalid_arg(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// An inconsistency inside the writer itself (a bug, reported instead of a panic).
fn internal(msg: String) -> Error {
    Error::Internal(format!("qcow2 writer internal error: {msg}"))
}

impl Qcow2Writer {
    /// Creates a new image of `size` bytes in the empty `storage`.
    ///
    /// Checks the options (version 2 or 3, cluster size 512 B to 2 MiB, zstd only with
    /// version 3, sizes within qemu's L1 and refcount table limits) and writes the initial
    /// refcount blocks; the header is written by [`ImageWriter::finish`].
    pub fn create(storage: Arc<dyn Storage>, size: u64, opts: &Qcow2WriteOptions) -> Result<Self> {
        if opts.version != 2 && opts.version != 3 {
            return Err(invalid_arg(format!(
                "qcow2 version {} does not exist (2 = compat 0.10, 3 = compat 1.1)",
                opts.version
            )));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&opts.cluster_bits) {
            return Err(invalid_arg(format!(
                "qcow2 cluster_bits {} is out of range ({MIN_CLUSTER_BITS} to {MAX_CLUSTER_BITS}: \
                 512 bytes to 2 MiB)",
                opts.cluster_bits
            )));
        }
        if opts.version == 2 && opts.compression_type != CompressionType::Zlib {
            return Err(invalid_arg(format!(
                "compression_type={} needs qcow2 version 3 (compat=1.1)",
                opts.compression_type.name()
            )));
        }
        if opts.compress && opts.preallocation != Preallocation::Off {
            return Err(invalid_arg(
                "compressed qcow2 images cannot be preallocated".into(),
            ));
        }
        if size > MAX_VIRTUAL_SIZE {
            return Err(invalid_arg(format!(
                "virtual size {size} is larger than qcow2 allows ({MAX_VIRTUAL_SIZE})"
            )));
        }
        let cb = opts.cluster_bits;
        let cs = 1u64 << cb;
        let hdr = Qcow2Header::new(opts.version, cb, header_size(size));
        let l1_size = hdr.l1_entries_needed(header_size(size));
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(invalid_arg(format!(
                "a virtual size of {size} bytes needs an L1 table of {} bytes with {cs}-byte \
                 clusters, more than qemu's {} MiB limit; use larger clusters",
                l1_size * 8,
                MAX_L1_BYTES >> 20
            )));
        }
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let guest_clusters = size.div_ceil(cs);
        let epb = refcount::entries_per_block(cb, REFCOUNT_ORDER);
        let per_table_cluster = cs / 8;

        // Refcount table for the largest possible file: header, L1, every guest cluster
        // stored plainly (a compressed cluster never takes more than one new host cluster),
        // every L2 table, and the refcount blocks and table themselves.
        let base = 1 + l1_clusters + guest_clusters + l1_size + 2;
        let mut rt_clusters = 1u64;
        loop {
            let blocks = blocks_covering(base + rt_clusters, epb);
            let need = blocks.div_ceil(per_table_cluster).max(1);
            if need <= rt_clusters {
                break;
            }
            rt_clusters = need;
        }
        // A sparse image may well fit in a table of qemu's maximum size even when the worst
        // case does not; running out is reported when it happens.
        rt_clusters = rt_clusters.min(MAX_REFTABLE_BYTES / cs);
        let rt_capacity = rt_clusters * per_table_cluster;

        // Initial region: header, L1, refcount table, then the blocks covering all of it.
        let n0 = 1 + l1_clusters + rt_clusters;
        let k = blocks_covering(n0, epb);
        if k > rt_capacity {
            return Err(Error::from(super::Qcow2Error::Unsupported(format!(
                "the image needs {k} refcount blocks, more than a refcount table of qemu's \
                 maximum size holds ({rt_capacity})"
            ))));
        }
        let reftable: Vec<u64> = (0..k).map(|j| (n0 + j) * cs).collect();
        let allocated = n0 + k;

        let mut w = Qcow2Writer {
            storage,
            opts: opts.clone(),
            size,
            cs,
            l2_entries: hdr.l2_entries(),
            epb,
            compressor: opts
                .compress
                .then(|| Arc::new(ClusterCompressor::new(opts.compression_type, cs as usize))),
            l1_offset: if l1_size > 0 { cs } else { 0 },
            l1: vec![0; l1_size as usize],
            reftable_offset: (1 + l1_clusters) * cs,
            reftable_clusters: rt_clusters,
            reftable,
            pos: 0,
            partial: Vec::new(),
            l2: None,
            next_cluster: allocated,
            rb: RefBlock {
                index: k - 1,
                host: (n0 + k - 1) * cs,
                buf: vec![0; cs as usize],
            },
            staging: None,
            wb: Vec::new(),
            wb_off: 0,
            falloc: None,
            zeros: Vec::new(),
            poisoned: false,
            report: WriteReport::default(),
        };
        // Blocks 0..k-1 cover only clusters of the initial region: all refcounts are 1.
        let mut full = vec![0u8; cs as usize];
        for i in 0..epb {
            refcount::set(&mut full, i, REFCOUNT_ORDER, 1);
        }
        for j in 0..k - 1 {
            w.write_direct(&full, (n0 + j) * cs, "refcount block")?;
            w.report.metadata += cs;
        }
        // The last one stays in memory: the stream continues inside its range.
        for c in (k - 1) * epb..allocated {
            refcount::set(&mut w.rb.buf, c % epb, REFCOUNT_ORDER, 1);
        }
        Ok(w)
    }

    fn version(&self) -> u32 {
        self.opts.version
    }

    // ---- host side -----------------------------------------------------------------------

    /// Hands out the next host cluster with the given initial refcount. When allocation
    /// crosses into the range of a new refcount block, that block is placed first, at the
    /// first cluster of its own range.
    fn alloc_cluster(&mut self, refcount: u64) -> Result<u64> {
        let mut i = self.next_cluster;
        let b = i / self.epb;
        if b != self.rb.index {
            if b != self.rb.index + 1 || i % self.epb != 0 {
                return Err(internal(format!(
                    "host cluster {i} skips refcount block {}",
                    self.rb.index + 1
                )));
            }
            // Nothing may touch the old block after it is written.
            self.close_staging()?;
            let old = std::mem::take(&mut self.rb.buf);
            self.write_direct(&old, self.rb.host, "refcount block")?;
            self.report.metadata += old.len() as u64;
            if b >= self.reftable_clusters * self.cs / 8 {
                return Err(Error::from(super::Qcow2Error::Unsupported(format!(
                    "the image needs more than {} refcount blocks, the most a refcount table \
                     of qemu's maximum size ({} MiB) holds",
                    self.reftable_clusters * self.cs / 8,
                    MAX_REFTABLE_BYTES >> 20
                ))));
            }
            let mut buf = old;
            buf.fill(0);
            refcount::set(&mut buf, 0, REFCOUNT_ORDER, 1);
            self.rb = RefBlock {
                index: b,
                host: i * self.cs,
                buf,
            };
            self.reftable.push(i * self.cs);
            i += 1;
        }
        let host = i * self.cs;
        if host & !OFFSET_MASK != 0 {
            return Err(Error::from(super::Qcow2Error::Unsupported(format!(
                "host offset {host:#x} does not fit in an L2 entry"
            ))));
        }
        refcount::set(&mut self.rb.buf, i % self.epb, REFCOUNT_ORDER, refcount);
        self.next_cluster = i + 1;
        Ok(host)
    }

    /// Refcount of a host cluster in the current block.
    fn refcount_of(&self, host: u64) -> Result<u64> {
        let c = host / self.cs;
        if c / self.epb != self.rb.index {
            return Err(internal(format!(
                "cluster {c} is outside refcount block {}",
                self.rb.index
            )));
        }
        Ok(refcount::get(&self.rb.buf, c % self.epb, REFCOUNT_ORDER))
    }

    fn set_refcount(&mut self, host: u64, value: u64) -> Result<()> {
        let c = host / self.cs;
        if c / self.epb != self.rb.index {
            return Err(internal(format!(
                "cluster {c} is outside refcount block {}",
                self.rb.index
            )));
        }
        refcount::set(&mut self.rb.buf, c % self.epb, REFCOUNT_ORDER, value);
        Ok(())
    }

    /// Queues `data` for writing at host offset `off`, merging consecutive writes.
    fn put(&mut self, data: &[u8], off: u64) -> Result<()> {
        if !self.wb.is_empty() && off != self.wb_off + self.wb.len() as u64 {
            self.flush_wb()?;
        }
        if self.wb.is_empty() {
            if data.len() >= WRITE_BEHIND {
                return self.write_direct(data, off, "guest data");
            }
            if self.wb.capacity() == 0 {
                self.wb.reserve_exact(WRITE_BEHIND);
            }
            self.wb_off = off;
        }
        self.wb.extend_from_slice(data);
        if self.wb.len() >= WRITE_BEHIND {
            self.flush_wb()?;
        }
        Ok(())
    }

    fn flush_wb(&mut self) -> Result<()> {
        if self.wb.is_empty() {
            return Ok(());
        }
        let r = self.storage.write_all_at(&self.wb, self.wb_off);
        let len = self.wb.len();
        self.wb.clear();
        r.map_err(|e| {
            Error::io(
                format!(
                    "writing {len} bytes of qcow2 clusters at offset {:#x}",
                    self.wb_off
                ),
                e,
            )
        })
    }

    fn write_direct(&self, data: &[u8], off: u64, what: &str) -> Result<()> {
        self.storage.write_all_at(data, off).map_err(|e| {
            Error::io(
                format!(
                    "writing the qcow2 {what} ({} bytes) at offset {off:#x}",
                    data.len()
                ),
                e,
            )
        })
    }

    /// Reserves or zeroes a preallocated host cluster that reads as zeros.
    fn fill_zero_cluster(&mut self, host: u64) -> Result<()> {
        match self.opts.preallocation {
            Preallocation::Off | Preallocation::Metadata => Ok(()),
            Preallocation::Falloc => {
                match &mut self.falloc {
                    Some((start, len)) if *start + *len == host => *len += self.cs,
                    _ => {
                        self.flush_falloc()?;
                        self.falloc = Some((host, self.cs));
                    }
                }
                Ok(())
            }
            Preallocation::Full => {
                if self.zeros.len() != self.cs as usize {
                    self.zeros = vec![0; self.cs as usize];
                }
                let zeros = std::mem::take(&mut self.zeros);
                let r = self.put(&zeros, host);
                self.report.zeros += zeros.len() as u64;
                self.zeros = zeros;
                r
            }
        }
    }

    fn flush_falloc(&mut self) -> Result<()> {
        if let Some((start, len)) = self.falloc.take() {
            self.storage.preallocate(start, len).map_err(|e| {
                Error::io(
                    format!("preallocating {len} bytes of the qcow2 image at offset {start:#x}"),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Writes the packed compressed clusters and stops adding to them.
    fn close_staging(&mut self) -> Result<()> {
        if let Some(s) = self.staging.take() {
            self.write_direct(&s.buf, s.start, "compressed clusters")?;
        }
        Ok(())
    }

    /// Places a compressed cluster in the packed area when it fits there; returns its L2
    /// entry, or `None` when a fresh host cluster is needed.
    fn try_pack(&mut self, data: &[u8]) -> Result<Option<u64>> {
        let cs = self.cs;
        let n = data.len() as u64;
        let Some(s) = &self.staging else {
            return Ok(None);
        };
        let at = s.start + s.buf.len() as u64;
        let cap_end = s.start + s.clusters * cs;
        let fits = at + n <= cap_end;
        // Growing into the next host cluster keeps the data contiguous only if nothing else
        // took that cluster and no refcount block goes there.
        let can_grow = !fits
            && cap_end / cs == self.next_cluster
            && self.next_cluster % self.epb != 0
            && at + n <= cap_end + cs;
        if !fits && !can_grow {
            return Ok(None);
        }
        // Each host cluster the data touches gains a reference; 16 bits must hold it.
        for c in at / cs..=((at + n - 1) / cs).min(cap_end / cs - 1) {
            if c * cs < cap_end && self.refcount_of(c * cs)? >= refcount::max_value(REFCOUNT_ORDER)
            {
                return Ok(None);
            }
        }
        let Some(entry) = l1l2::encode_compressed(at, n, self.opts.cluster_bits) else {
            return Ok(None);
        };
        if can_grow {
            let host = self.alloc_cluster(0)?;
            if host != cap_end {
                return Err(internal(format!(
                    "compressed area grew to {host:#x}, expected {cap_end:#x}"
                )));
            }
        }
        for c in at / cs..=(at + n - 1) / cs {
            let r = self.refcount_of(c * cs)?;
            self.set_refcount(c * cs, r + 1)?;
        }
        let Some(s) = self.staging.as_mut() else {
            return Err(internal("compressed area vanished".into()));
        };
        if can_grow {
            s.clusters += 1;
        }
        s.buf.extend_from_slice(data);
        // Clusters before the one holding the end are complete: write them out so the
        // buffer stays within two clusters.
        let done = (s.buf.len() as u64 / cs) * cs;
        if done > 0 && s.buf.len() as u64 > done {
            let start = s.start;
            let rest = s.buf.split_off(done as usize);
            let head = std::mem::replace(&mut s.buf, rest);
            s.start += done;
            s.clusters -= done / cs;
            self.write_direct(&head, start, "compressed clusters")?;
        }
        Ok(Some(entry))
    }

    // ---- guest side ----------------------------------------------------------------------

    /// Records the L2 entry of guest cluster `cluster`, moving to (and flushing) L2 tables as
    /// the guest position advances.
    fn set_l2(&mut self, cluster: u64, entry: u64) -> Result<()> {
        let index = cluster / self.l2_entries;
        match &self.l2 {
            Some((i, _)) if *i == index => {}
            Some((i, _)) if *i > index => {
                return Err(internal(format!(
                    "L2 table {index} requested after table {i}"
                )));
            }
            _ => {
                self.flush_l2()?;
                self.l2 = Some((index, vec![0; self.cs as usize]));
            }
        }
        let Some((_, table)) = self.l2.as_mut() else {
            return Err(internal("L2 table vanished".into()));
        };
        let slot = ((cluster % self.l2_entries) * 8) as usize;
        table[slot..slot + 8].copy_from_slice(&entry.to_be_bytes());
        Ok(())
    }

    /// Appends the L2 table being filled and points its L1 entry at it.
    fn flush_l2(&mut self) -> Result<()> {
        if let Some((index, table)) = self.l2.take() {
            let host = self.alloc_cluster(1)?;
            self.put(&table, host)?;
            self.report.metadata += table.len() as u64;
            let Some(e) = self.l1.get_mut(index as usize) else {
                return Err(internal(format!("L1 index {index} out of range")));
            };
            *e = (host & OFFSET_MASK) | COPIED;
        }
        Ok(())
    }

    /// Stores guest cluster `cluster` (plainly, or as a zero cluster).
    fn store(&mut self, cluster: u64, content: Content<'_>) -> Result<()> {
        let entry = match content {
            Content::Zero => {
                if self.opts.preallocation == Preallocation::Off {
                    return Ok(());
                }
                let host = self.alloc_cluster(1)?;
                self.fill_zero_cluster(host)?;
                if self.version() >= 3 {
                    l1l2::encode_normal(host) | l1l2::ZERO
                } else {
                    // Version 2 has no zero flag: the cluster is a hole in the file.
                    l1l2::encode_normal(host)
                }
            }
            Content::Data(d) => {
                let host = self.alloc_cluster(1)?;
                self.put_cluster(d, host)?;
                l1l2::encode_normal(host)
            }
        };
        self.set_l2(cluster, entry)
    }

    /// Writes one cluster of plain data, padding a short last cluster with zeros.
    fn put_cluster(&mut self, d: &[u8], host: u64) -> Result<()> {
        self.put(d, host)?;
        self.report.data += d.len() as u64;
        if (d.len() as u64) < self.cs {
            let pad = vec![0u8; self.cs as usize - d.len()];
            self.put(&pad, host + d.len() as u64)?;
            self.report.zeros += pad.len() as u64;
        }
        Ok(())
    }

    /// Stores guest cluster `cluster` compressed (`comp`), or plainly (`raw`) when the
    /// compressed data cannot be described by an L2 entry at its place.
    fn store_compressed(&mut self, cluster: u64, comp: &[u8], raw: &[u8]) -> Result<()> {
        if comp.is_empty() || comp.len() as u64 >= self.cs {
            return self.store(cluster, Content::Data(raw));
        }
        if let Some(entry) = self.try_pack(comp)? {
            self.report.compressed += comp.len() as u64;
            return self.set_l2(cluster, entry);
        }
        self.close_staging()?;
        let host = self.alloc_cluster(0)?;
        match l1l2::encode_compressed(host, comp.len() as u64, self.opts.cluster_bits) {
            Some(entry) => {
                self.set_refcount(host, 1)?;
                self.staging = Some(Staging {
                    start: host,
                    buf: comp.to_vec(),
                    clusters: 1,
                });
                self.report.compressed += comp.len() as u64;
                self.set_l2(cluster, entry)
            }
            None => {
                // Beyond the offsets a compressed descriptor can hold: store it plainly in the
                // cluster just allocated.
                self.set_refcount(host, 1)?;
                self.put_cluster(raw, host)?;
                self.set_l2(cluster, l1l2::encode_normal(host))
            }
        }
    }

    /// Stores one whole guest cluster of data (short only at the end of the disk), detecting
    /// zeros and compressing when asked.
    fn store_data(&mut self, cluster: u64, data: &[u8], compress: bool) -> Result<()> {
        if is_zero(data) {
            return self.store(cluster, Content::Zero);
        }
        if let (true, Some(c)) = (compress, self.compressor.clone()) {
            let mut out = Vec::new();
            if c.compress(data, &mut out)? {
                return self.store_compressed(cluster, &out, data);
            }
        }
        self.store(cluster, Content::Data(data))
    }

    /// End (exclusive) of the guest cluster containing `pos`, clipped to the disk.
    fn cluster_end(&self, pos: u64) -> u64 {
        (align_down(pos, self.cs) + self.cs).min(self.size)
    }

    /// Stores the buffered partial cluster once it is complete.
    fn complete_partial(&mut self, compress: bool) -> Result<()> {
        let p = std::mem::take(&mut self.partial);
        let cluster = (self.pos - 1) / self.cs;
        let r = self.store_data(cluster, &p, compress);
        self.partial = p;
        self.partial.clear();
        r
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.poisoned {
            return Err(invalid_arg(
                "the qcow2 writer failed earlier; the image cannot be completed".into(),
            ));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(invalid_arg(format!(
                    "write of {len} bytes at {offset:#x} goes past the end of the disk ({:#x})",
                    self.size
                )));
            }
        }
        if offset < self.pos {
            return Err(invalid_arg(format!(
                "qcow2 output is written in one ascending pass: a write at {offset:#x} comes \
                 after data up to {:#x}",
                self.pos
            )));
        }
        Ok(())
    }

    /// Makes the guest bytes from `pos` to `to` read as zeros.
    fn advance_zero(&mut self, to: u64) -> Result<()> {
        if to <= self.pos {
            return Ok(());
        }
        if !self.partial.is_empty() {
            let end = self.cluster_end(self.pos).min(to);
            self.partial
                .resize(self.partial.len() + (end - self.pos) as usize, 0);
            self.pos = end;
            if end == self.cluster_end(end - 1) {
                self.complete_partial(false)?;
            }
        }
        if self.pos >= to {
            return Ok(());
        }
        // `pos` is cluster-aligned here.
        if self.opts.preallocation == Preallocation::Off {
            // Zero clusters are not allocated: skip whole clusters at once.
            let end = if to == self.size {
                to
            } else {
                align_down(to, self.cs)
            };
            self.pos = self.pos.max(end);
        } else {
            while self.pos < to {
                let end = self.cluster_end(self.pos);
                if end > to {
                    break;
                }
                self.store(self.pos / self.cs, Content::Zero)?;
                self.pos = end;
            }
        }
        if self.pos < to {
            self.partial.resize((to - self.pos) as usize, 0);
            self.pos = to;
        }
        Ok(())
    }

    /// Writes guest data at `offset` (not before `pos`).
    fn write_data(&mut self, mut buf: &[u8], offset: u64, compress: bool) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.advance_zero(offset)?;
        if !self.partial.is_empty() && !buf.is_empty() {
            let end = self.cluster_end(self.pos);
            let n = ((end - self.pos) as usize).min(buf.len());
            self.partial.extend_from_slice(&buf[..n]);
            self.pos += n as u64;
            buf = &buf[n..];
            if self.pos == end {
                self.complete_partial(compress)?;
            }
        }
        while !buf.is_empty() {
            let end = self.cluster_end(self.pos);
            let n = (end - self.pos) as usize;
            if buf.len() < n {
                self.partial.extend_from_slice(buf);
                self.pos += buf.len() as u64;
                break;
            }
            self.store_data(self.pos / self.cs, &buf[..n], compress)?;
            self.pos = end;
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
                GranuleState::Data => self.write_data(&chunk.data[r], off, false)?,
                GranuleState::Compressed(c) => {
                    let whole = chunk.granule == self.cs
                        && off % self.cs == 0
                        && (len == self.cs || off + len == self.size);
                    if whole {
                        self.check_range(off, len)?;
                        self.advance_zero(off)?;
                        if self.partial.is_empty() {
                            self.store_compressed(off / self.cs, c, &chunk.data[r])?;
                            self.pos = off + len;
                            continue;
                        }
                    }
                    // Not a whole cluster of ours: compress it again when it completes one.
                    self.write_data(&chunk.data[r], off, true)?;
                }
            }
        }
        Ok(())
    }

    fn finish_inner(&mut self) -> Result<WriteReport> {
        if self.poisoned {
            return Err(invalid_arg(
                "the qcow2 writer failed earlier; the image cannot be completed".into(),
            ));
        }
        self.advance_zero(self.size)?;
        self.flush_l2()?;
        self.close_staging()?;
        self.flush_falloc()?;
        self.flush_wb()?;
        let rb = std::mem::take(&mut self.rb.buf);
        self.write_direct(&rb, self.rb.host, "refcount block")?;
        self.report.metadata += rb.len() as u64;

        let mut table = Vec::with_capacity(self.reftable.len() * 8);
        for e in &self.reftable {
            table.extend_from_slice(&e.to_be_bytes());
        }
        self.write_direct(&table, self.reftable_offset, "refcount table")?;
        self.report.metadata += table.len() as u64;
        if !self.l1.is_empty() {
            let mut l1 = Vec::with_capacity(self.l1.len() * 8);
            for e in &self.l1 {
                l1.extend_from_slice(&e.to_be_bytes());
            }
            self.write_direct(&l1, self.l1_offset, "L1 table")?;
            self.report.metadata += l1.len() as u64;
        }
        // Allocated clusters that were never written (holes, the tail of packed data) must
        // still lie inside the file.
        let end = self.next_cluster * self.cs;
        let len = self
            .storage
            .len()
            .map_err(|e| Error::io("reading the size of the qcow2 output", e))?;
        if len < end {
            self.storage
                .set_len(end)
                .map_err(|e| Error::io(format!("extending the qcow2 output to {end} bytes"), e))?;
        }
        // Everything the header points at is durable before the header makes the image valid.
        self.storage
            .sync()
            .map_err(|e| Error::io("syncing the qcow2 output", e))?;

        let mut hdr = Qcow2Header::new(
            self.opts.version,
            self.opts.cluster_bits,
            header_size(self.size),
        );
        hdr.l1_size = self.l1.len() as u32;
        hdr.l1_table_offset = self.l1_offset;
        hdr.refcount_table_offset = self.reftable_offset;
        hdr.refcount_table_clusters = self.reftable_clusters as u32;
        hdr.refcount_order = REFCOUNT_ORDER;
        hdr.compression_type = self.opts.compression_type;
        if self.opts.version >= 3 && self.opts.compression_type != CompressionType::Zlib {
            hdr.incompatible_features |= INCOMPAT_COMPRESSION;
        }
        let bytes = hdr.to_bytes()?;
        self.write_direct(&bytes, 0, "header")?;
        self.report.metadata += bytes.len() as u64;
        self.storage
            .sync()
            .map_err(|e| Error::io("syncing the qcow2 output", e))?;
        self.report.complete(&[self.storage.as_ref()])
    }

    /// Runs `f`, poisoning the writer when it fails (its state may be half-updated).
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let r = f(self);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }
}

/// The virtual size recorded in the header: rounded up to whole 512-byte sectors.
///
/// qemu counts a disk in sectors and drops a partial last sector of an image whose header
/// size is not a multiple of 512 (`total_sectors = size / 512`), and `qemu-img convert` rounds
/// the size up for the same reason; we do the same, so the last bytes of such a disk stay
/// readable. The padding reads as zeros (the last cluster is padded with zeros anyway).
fn header_size(size: u64) -> u64 {
    size.div_ceil(512) * 512
}

/// Number of refcount blocks needed to cover `n` clusters placed before them plus the blocks
/// themselves (placed right after).
fn blocks_covering(n: u64, epb: u64) -> u64 {
    let mut k = n.div_ceil(epb);
    while (n + k).div_ceil(epb) > k {
        k += 1;
    }
    k
}

impl ImageWriter for Qcow2Writer {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        self.cs
    }

    fn needs_sequential(&self) -> bool {
        true
    }

    fn compressor(&self) -> Option<Arc<dyn Compressor>> {
        self.compressor.clone().map(|c| c as Arc<dyn Compressor>)
    }

    // Argument errors (order, range) are reported before anything changes and leave the
    // writer usable; any later error poisons it.

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let compress = self.opts.compress;
        self.guard(|w| w.write_data(buf, offset, compress))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.guard(|w| w.advance_zero(offset + len))
    }

    fn write_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        self.check_range(chunk.offset, chunk.data.len() as u64)?;
        self.guard(|w| w.write_chunk_inner(chunk))
    }

    fn finish(mut self: Box<Self>) -> Result<WriteReport> {
        self.guard(|w| w.finish_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::be64;
    use crate::convert::{ConvertOptions, convert};
    use crate::formats::qcow2::compress::decompress;
    use crate::formats::qcow2::l1l2::{L2Entry, decode_l1, decode_l2};
    use crate::formats::raw::RawReader;
    use crate::storage::MemStorage;

    /// What [`read_back`] found besides the guest bytes.
    #[derive(Debug, Default)]
    struct Walk {
        header: Option<Qcow2Header>,
        /// Guest clusters by kind.
        normal: u64,
        zero_alloc: u64,
        compressed: u64,
        unallocated: u64,
        /// Host clusters with a refcount above 1.
        shared: u64,
    }

    /// Parses an image with the header, L1/L2 and refcount codecs, checks that every stored
    /// refcount equals the number of references found by walking the metadata (no leaks, no
    /// missing references), and returns the guest bytes.
    fn read_back(file: &[u8]) -> (Vec<u8>, Walk) {
        let len = file.len() as u64;
        let hdr = Qcow2Header::parse(&file[..file.len().min(1 << 21)], len).unwrap();
        let cs = hdr.cluster_size();
        let cb = hdr.cluster_bits;
        let order = hdr.refcount_order;
        assert_eq!(order, 4);
        let nclusters = len.div_ceil(cs);
        let mut expect = vec![0u64; nclusters as usize];
        let mut mark = |off: u64, n: u64| {
            assert!(
                off + n <= len,
                "{off:#x}+{n} past the end of the file ({len:#x})"
            );
            for c in off / cs..=(off + n - 1) / cs {
                expect[c as usize] += 1;
            }
        };
        mark(0, cs);
        if hdr.l1_size > 0 {
            mark(hdr.l1_table_offset, u64::from(hdr.l1_size) * 8);
        }
        let rt_len = u64::from(hdr.refcount_table_clusters) * cs;
        mark(hdr.refcount_table_offset, rt_len);
        let rt_off = hdr.refcount_table_offset as usize;
        let reftable: Vec<u64> = (0..rt_len as usize / 8)
            .map(|i| be64(file, rt_off + i * 8))
            .collect();
        for &b in &reftable {
            if b != 0 {
                assert_eq!(b % cs, 0);
                mark(b, cs);
            }
        }
        let mut walk = Walk::default();
        let size = hdr.size;
        let mut guest = vec![0u8; size as usize];
        let l2n = hdr.l2_entries();
        for i in 0..u64::from(hdr.l1_size) {
            let raw = be64(file, (hdr.l1_table_offset + i * 8) as usize);
            let Some(l2) = decode_l1(raw).unwrap() else {
                walk.unallocated += l2n.min(size.div_ceil(cs) - i * l2n);
                continue;
            };
            assert!(raw & COPIED != 0, "L1 entry {i} lacks the copied flag");
            mark(l2, cs);
            for j in 0..l2n {
                let g = (i * l2n + j) * cs;
                let e = be64(file, (l2 + j * 8) as usize);
                if g >= size {
                    assert_eq!(e, 0, "L2 entry past the end of the disk");
                    continue;
                }
                let n = cs.min(size - g) as usize;
                let dst = &mut guest[g as usize..g as usize + n];
                match decode_l2(e, cb, hdr.version).unwrap() {
                    L2Entry::Unallocated => walk.unallocated += 1,
                    L2Entry::Zero { host } => {
                        if let Some(h) = host {
                            mark(h, cs);
                        }
                        assert!(
                            host.is_some(),
                            "our writer only writes allocated zero clusters"
                        );
                        assert!(e & COPIED != 0);
                        walk.zero_alloc += 1;
                    }
                    L2Entry::Normal { host, copied } => {
                        assert!(copied);
                        mark(host, cs);
                        dst.copy_from_slice(&file[host as usize..host as usize + n]);
                        walk.normal += 1;
                    }
                    L2Entry::Compressed { host, len: clen } => {
                        mark(host, clen);
                        let mut out = vec![0u8; cs as usize];
                        let end = (host + clen).min(len) as usize;
                        decompress(hdr.compression_type, &file[host as usize..end], &mut out)
                            .unwrap();
                        dst.copy_from_slice(&out[..n]);
                        walk.compressed += 1;
                    }
                }
            }
        }
        let epb = refcount::entries_per_block(cb, order);
        for (c, &want) in expect.iter().enumerate() {
            let c = c as u64;
            let block = reftable.get((c / epb) as usize).copied().unwrap_or(0);
            let got = if block == 0 {
                0
            } else {
                let b = &file[block as usize..(block + cs) as usize];
                refcount::get(b, c % epb, order)
            };
            assert_eq!(
                got,
                want,
                "refcount of host cluster {c} (offset {:#x})",
                c * cs
            );
            if got > 1 {
                walk.shared += 1;
            }
        }
        walk.header = Some(hdr);
        (guest, walk)
    }

    /// The guest bytes read back equal `data`, plus zeros up to the next 512-byte boundary.
    fn eq_padded(guest: &[u8], data: &[u8]) -> bool {
        guest.len() == data.len().div_ceil(512) * 512
            && &guest[..data.len()] == data
            && guest[data.len()..].iter().all(|&b| b == 0)
    }

    /// Data clusters, zero clusters, compressible and incompressible ones, by cluster index.
    fn pattern(len: usize, cs: usize) -> Vec<u8> {
        let mut s = 0x1234_5678_9abc_def1u64;
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            *b = match (i / cs) % 5 {
                0 => 0,
                1 | 3 => {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                }
                2 => (i % 97) as u8,
                _ => {
                    if i % cs < cs / 2 {
                        0
                    } else {
                        (i / 7) as u8
                    }
                }
            };
        }
        v
    }

    fn opts(version: u32, cluster_bits: u32) -> Qcow2WriteOptions {
        Qcow2WriteOptions {
            version,
            cluster_bits,
            ..Default::default()
        }
    }

    /// Writes `data` in pieces of awkward sizes through `write_at` / `write_zeroes`.
    fn write_pieces(w: &mut Qcow2Writer, data: &[u8]) {
        let mut off = 0usize;
        let sizes = [1usize, 4095, 70_000, 511, 131_072, 3, 65_536, 200_000];
        let mut k = 0;
        while off < data.len() {
            let n = sizes[k % sizes.len()].min(data.len() - off);
            k += 1;
            let piece = &data[off..off + n];
            if is_zero(piece) && k % 2 == 0 {
                w.write_zeroes(off as u64, n as u64).unwrap();
            } else {
                w.write_at(piece, off as u64).unwrap();
            }
            off += n;
        }
    }

    fn write_image(data: &[u8], o: &Qcow2WriteOptions) -> Vec<u8> {
        let st = Arc::new(MemStorage::new());
        let mut w = Qcow2Writer::create(st.clone(), data.len() as u64, o).unwrap();
        write_pieces(&mut w, data);
        Box::new(w).finish().unwrap();
        st.to_vec()
    }

    fn convert_image(data: &[u8], o: &Qcow2WriteOptions) -> Vec<u8> {
        let src = RawReader::new(Arc::new(MemStorage::from_vec(data.to_vec())), None).unwrap();
        let st = Arc::new(MemStorage::new());
        let w = Qcow2Writer::create(st.clone(), data.len() as u64, o).unwrap();
        let copts = ConvertOptions {
            chunk_size: 1 << 20,
            max_in_flight: 4,
            ..Default::default()
        };
        convert(&src, Box::new(w), &copts, None).unwrap();
        st.to_vec()
    }

    #[test]
    fn plain_zero_and_partial_last_cluster() {
        let cs = 65536;
        // 5 MiB and a bit: the last cluster is partial.
        let data = pattern(5 * (1 << 20) + 4097, cs);
        let file = write_image(&data, &opts(3, 16));
        let (guest, walk) = read_back(&file);
        assert!(eq_padded(&guest, &data), "guest data differs");
        let h = walk.header.unwrap();
        assert_eq!(h.version, 3);
        // qemu counts the disk in 512-byte sectors: the size is rounded up, like qemu-img does.
        assert_eq!(h.size, (data.len() as u64).div_ceil(512) * 512);
        assert_eq!(h.compression_type, CompressionType::Zlib);
        assert_eq!(h.incompatible_features, 0);
        // Clusters 0, 5, 10, ... are zero and not allocated; nothing is zero-allocated.
        assert_eq!(walk.zero_alloc, 0);
        assert_eq!(walk.compressed, 0);
        let total = (data.len() as u64).div_ceil(cs as u64);
        assert_eq!(walk.normal + walk.unallocated, total);
        assert_eq!(walk.unallocated, total.div_ceil(5));
        // Plain images never share clusters.
        assert_eq!(walk.shared, 0);
        // Same result through the convert engine.
        let file2 = convert_image(&data, &opts(3, 16));
        assert!(eq_padded(&read_back(&file2).0, &data));
    }

    #[test]
    fn smallest_and_largest_clusters_and_version_2() {
        for (version, bits, len) in [
            (3, 9, 3 * (1 << 20) + 777),
            (2, 9, (1 << 20) + 1),
            (3, 21, 9 * (1 << 20) + 5),
            (2, 21, 4 << 20),
            (2, 12, (2 << 20) + 100),
        ] {
            let cs = 1usize << bits;
            let data = pattern(len, cs);
            let o = opts(version, bits);
            for file in [write_image(&data, &o), convert_image(&data, &o)] {
                let (guest, walk) = read_back(&file);
                assert!(
                    eq_padded(&guest, &data),
                    "v{version} {cs}: guest data differs"
                );
                let h = walk.header.unwrap();
                assert_eq!(h.version, version);
                assert_eq!(h.cluster_bits, bits);
                assert!(walk.normal > 0);
                if bits == 9 {
                    // 512-byte clusters: 256 clusters per refcount block, so the stream
                    // crossed many blocks.
                    let rt = h.refcount_table_offset as usize;
                    let blocks = (0..h.refcount_table_clusters as usize * 64)
                        .filter(|i| be64(&file, rt + i * 8) != 0)
                        .count();
                    assert!(blocks > 5, "{blocks} refcount blocks");
                }
            }
        }
    }

    #[test]
    fn compressed_clusters_are_packed_and_refcounted() {
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            for bits in [9u32, 12, 16, 21] {
                let cs = 1usize << bits;
                let len = (cs * 40).max(3 << 20) + 1234;
                let data = pattern(len, cs);
                let o = Qcow2WriteOptions {
                    compress: true,
                    compression_type: ty,
                    ..opts(3, bits)
                };
                for (how, file) in [
                    ("convert", convert_image(&data, &o)),
                    ("write_at", write_image(&data, &o)),
                ] {
                    let (guest, walk) = read_back(&file);
                    assert!(
                        eq_padded(&guest, &data),
                        "{ty:?} {cs} {how}: guest data differs"
                    );
                    let h = walk.header.unwrap();
                    assert_eq!(h.compression_type, ty);
                    assert_eq!(
                        h.incompatible_features & INCOMPAT_COMPRESSION != 0,
                        ty == CompressionType::Zstd
                    );
                    assert!(walk.compressed > 0, "{ty:?} {cs} {how}");
                    // Random clusters are stored plainly.
                    assert!(walk.normal > 0, "{ty:?} {cs} {how}");
                    // Several compressed clusters share host clusters.
                    assert!(walk.shared > 0, "{ty:?} {cs} {how}");
                    assert!(file.len() < data.len(), "{ty:?} {cs} {how}");
                }
            }
        }
    }

    #[test]
    fn version_2_compressed() {
        let data = pattern(2 << 20, 65536);
        let o = Qcow2WriteOptions {
            compress: true,
            ..opts(2, 16)
        };
        let (guest, walk) = read_back(&convert_image(&data, &o));
        assert!(eq_padded(&guest, &data));
        assert!(walk.compressed > 0);
        assert_eq!(walk.header.unwrap().version, 2);
    }

    #[test]
    fn preallocation_maps_every_cluster() {
        for version in [2u32, 3] {
            for mode in [
                Preallocation::Metadata,
                Preallocation::Falloc,
                Preallocation::Full,
            ] {
                let cs = 4096usize;
                let data = pattern((1 << 20) + 300, cs);
                let o = Qcow2WriteOptions {
                    preallocation: mode,
                    ..opts(version, 12)
                };
                let file = write_image(&data, &o);
                let (guest, walk) = read_back(&file);
                assert!(eq_padded(&guest, &data), "v{version} {mode:?}");
                let total = (data.len() as u64).div_ceil(cs as u64);
                assert_eq!(walk.unallocated, 0, "v{version} {mode:?}");
                if version == 3 {
                    // Zero clusters: allocated, with the zero flag.
                    assert_eq!(walk.zero_alloc, total.div_ceil(5), "{mode:?}");
                    assert_eq!(walk.normal + walk.zero_alloc, total);
                } else {
                    assert_eq!(walk.zero_alloc, 0);
                    assert_eq!(walk.normal, total);
                }
                assert!(file.len() as u64 >= total * cs as u64);
            }
        }
    }

    #[test]
    fn all_zero_and_empty_images_allocate_no_data() {
        for size in [0u64, 1, 65536, 10 << 20] {
            let st = Arc::new(MemStorage::new());
            let mut w = Qcow2Writer::create(st.clone(), size, &opts(3, 16)).unwrap();
            if size > 0 {
                w.write_zeroes(0, size / 2).unwrap();
                w.write_at(&vec![0u8; (size - size / 2) as usize], size / 2)
                    .unwrap();
            }
            Box::new(w).finish().unwrap();
            let file = st.to_vec();
            let (guest, walk) = read_back(&file);
            assert_eq!(guest.len() as u64, size.div_ceil(512) * 512);
            assert!(guest.iter().all(|&b| b == 0));
            assert_eq!(walk.normal + walk.compressed + walk.zero_alloc, 0);
            // Header, L1 (when there is one), refcount table, one refcount block.
            assert!(file.len() <= 4 * 65536, "{size}: {} bytes", file.len());
        }
    }

    #[test]
    fn huge_sparse_disk_is_small_and_quick() {
        let size = 1u64 << 40;
        let st = Arc::new(MemStorage::new());
        let mut w = Qcow2Writer::create(st.clone(), size, &opts(3, 16)).unwrap();
        w.write_zeroes(0, size - (1 << 20)).unwrap();
        w.write_at(&[0xAB; 4096], size - 4096).unwrap();
        Box::new(w).finish().unwrap();
        let file = st.to_vec();
        // L1 of 2048 entries, one L2 table, one data cluster.
        assert!(file.len() < (1 << 20), "{} bytes", file.len());
        let hdr = Qcow2Header::parse(&file[..65536], file.len() as u64).unwrap();
        assert_eq!(hdr.size, size);
        assert_eq!(hdr.l1_size, 2048);
        let l2 = decode_l1(be64(&file, (hdr.l1_table_offset + 2047 * 8) as usize))
            .unwrap()
            .unwrap();
        let e = be64(&file, (l2 + 8191 * 8) as usize);
        let L2Entry::Normal { host, .. } = decode_l2(e, 16, 3).unwrap() else {
            panic!("last cluster not allocated")
        };
        assert_eq!(
            &file[host as usize + 65536 - 4096..host as usize + 65536],
            &[0xAB; 4096]
        );
        assert!(
            file[host as usize..host as usize + 65536 - 4096]
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn header_is_written_last() {
        let st = Arc::new(MemStorage::new());
        let mut w = Qcow2Writer::create(st.clone(), 4 << 20, &opts(3, 16)).unwrap();
        w.write_at(&pattern(4 << 20, 65536), 0).unwrap();
        let before = st.to_vec();
        assert!(before.len() < 4 || before[..4] != *b"QFI\xfb");
        assert!(Qcow2Header::parse(&before[..before.len().min(65536)], 0).is_err());
        Box::new(w).finish().unwrap();
        assert_eq!(&st.to_vec()[..4], b"QFI\xfb");
    }

    #[test]
    fn rejects_out_of_order_and_out_of_range_writes() {
        let st = Arc::new(MemStorage::new());
        let mut w = Qcow2Writer::create(st.clone(), 1 << 20, &opts(3, 16)).unwrap();
        w.write_at(&[1u8; 1000], 65536).unwrap();
        let e = w.write_at(&[2u8; 10], 0).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("ascending"), "{e}");
        // Overlapping the buffered partial cluster is out of order too.
        let e = w.write_zeroes(65536 + 999, 2).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        let e = w.write_at(&[1u8; 10], (1 << 20) - 5).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        let e = w.write_zeroes(u64::MAX, 2).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        // The writer is still usable after refused arguments; a gap reads as zeros.
        w.write_at(&[3u8; 10], 200_000).unwrap();
        Box::new(w).finish().unwrap();
        let (guest, _) = read_back(&st.to_vec());
        assert_eq!(&guest[65536..66536], &[1u8; 1000]);
        assert!(guest[66536..200_000].iter().all(|&b| b == 0));
        assert_eq!(&guest[200_000..200_010], &[3u8; 10]);
        assert!(guest[200_010..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_bad_options() {
        let st = || Arc::new(MemStorage::new()) as Arc<dyn Storage>;
        for o in [
            opts(1, 16),
            opts(4, 16),
            opts(3, 8),
            opts(3, 22),
            Qcow2WriteOptions {
                compression_type: CompressionType::Zstd,
                ..opts(2, 16)
            },
            Qcow2WriteOptions {
                compress: true,
                preallocation: Preallocation::Metadata,
                ..opts(3, 16)
            },
        ] {
            let e = Qcow2Writer::create(st(), 1 << 20, &o).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{o:?}");
        }
        // 512-byte clusters cannot map 1 TiB within qemu's L1 limit.
        let e = Qcow2Writer::create(st(), 1 << 40, &opts(3, 9)).unwrap_err();
        assert!(e.to_string().contains("L1"), "{e}");
    }

    /// Storage that fails every write from a given offset on.
    #[derive(Debug)]
    struct FailingStorage {
        inner: MemStorage,
        fail_from: u64,
    }

    impl Storage for FailingStorage {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            if offset + buf.len() as u64 > self.fail_from {
                return Err(std::io::Error::other("disk full"));
            }
            self.inner.write_all_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
    }

    #[test]
    fn io_errors_say_what_and_where_and_poison_the_writer() {
        let st = Arc::new(FailingStorage {
            inner: MemStorage::new(),
            fail_from: 1 << 20,
        });
        let mut w = Qcow2Writer::create(st, 16 << 20, &opts(3, 16)).unwrap();
        let data = pattern(16 << 20, 65536);
        let mut err = None;
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            if let Err(e) = w.write_at(piece, (i << 20) as u64) {
                err = Some(e);
                break;
            }
        }
        let e = match err {
            Some(e) => e,
            None => Box::new(w).finish().unwrap_err(),
        };
        assert_eq!(e.kind(), crate::ErrorKind::Io);
        let msg = e.chain();
        assert!(
            msg.contains("writing") && msg.contains("disk full"),
            "{msg}"
        );
        assert!(msg.contains("offset 0x"), "{msg}");
    }
}
