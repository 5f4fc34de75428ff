//! Structural check of a VMDK (`diskconv check`), read-only.
//!
//! What is checked (VMware "Virtual Disk Format 5.0"; REFERENCE.md section 2 for what real
//! tools write):
//! - the descriptor (stand-alone or embedded) parses; every extent file it names is present
//!   (opened under the reference policy, as the reader opens it); a parent named by
//!   `parentFileNameHint` is looked for and its `CID` compared with our `parentCID`;
//! - flat extents (FLAT, VMFS, VMFSRDM, VMFSRAW): the file holds the extent's sectors from its
//!   offset;
//! - hosted sparse extents (`KDMV`: monolithicSparse, twoGbMaxExtentSparse, streamOptimized):
//!   the header fields; the grain directory and every grain table inside the file; the
//!   redundant grain directory and its tables read too and compared table by table with the
//!   primary ones (the primary is the one every reader uses: a redundant copy that is empty is
//!   a warning, one that differs from a non-empty primary is a corruption, and grains recorded
//!   only in the redundant copy are a corruption since no reader sees them); every grain
//!   inside the file; no two structures or grains sharing a byte (a grain referenced twice
//!   shows as two grain table entries overlapping); space after the metadata that nothing
//!   uses (a leak);
//! - streamOptimized extents: the markers are walked from the end of the metadata to the
//!   end-of-stream marker (which must be there); the footer, when the header's `gdOffset` says
//!   the directory is at the end (VMware's layout) or when present anyway, must equal the header
//!   except for `gdOffset`; the grain directory is where the footer says and is preceded by a
//!   directory marker; every grain table entry points at a grain marker whose LBA is the grain's
//!   and whose compressed size lies inside the file; grain markers no table references are
//!   leaks. With `deep`, every compressed grain is inflated and must give exactly one grain;
//! - vmfsSparse (`COWD`) and seSparse extents: header sanity, grain directory, grain tables and
//!   grains inside the file and not overlapping.
//!
//! `qemu-img check` on a VMDK only looks for grains past the end of the file; everything else
//! here is beyond it (it never reads the redundant directory, the footer or the markers).
//! Classification: see [`crate::formats::check`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::VmdkError;
use super::cowd::{COWD_HEADER_SIZE, COWD_MAGIC, parse_cowd_header};
use super::descriptor::{MAX_DESCRIPTOR_BYTES, VmdkDescriptor, VmdkExtentLine, VmdkExtentType};
use super::sesparse::{SESPARSE_VOLATILE_MAGIC, SeSparseHeader};
use super::sparse::{FLAG_REDUNDANT_GT, GD_AT_END, HEADER_SIZE, SPARSE_MAGIC, SparseHeader};
use super::stream::{GRAIN_MARKER_SIZE, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, Marker};
use crate::bytes::{le32, le64};
use crate::error::{Error, ErrorKind, Result};
use crate::formats::check::{CheckProblem, CheckReport, ProblemKind, SpaceMap};
use crate::image::Format;
use crate::reference::OpenContext;
use crate::storage::Storage;

/// Most byte ranges tracked per extent file for overlaps and leaks (32 bytes each: 1 GiB).
/// Runs of contiguous uncompressed grains count as one range.
const MAX_RANGES: usize = 1 << 25;
/// Most overlaps listed per extent.
const MAX_OVERLAPS: usize = 10_000;
/// Bytes read at once while walking markers.
const WINDOW: usize = 1 << 20;

/// How to check a VMDK.
#[derive(Debug, Clone, Default)]
pub struct VmdkCheckOptions {
    /// Inflate every compressed grain and check it gives exactly one grain.
    pub deep: bool,
}

/// Who uses a stretch of an extent file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Header,
    Descriptor,
    Gd,
    Rgd,
    /// Grain table of this directory index.
    Gt(u32),
    /// Redundant grain table of this directory index.
    Rgt(u32),
    /// `count` uncompressed grains from grain number `first` (table `gt`, entry `entry`).
    Grains {
        first: u64,
        count: u64,
        gt: u32,
        entry: u32,
    },
    /// A compressed grain (marker and data) of grain number `grain`.
    Compressed {
        grain: u64,
        gt: u32,
        entry: u32,
    },
    /// A grain marker no table references (leaked, claimed so it is reported once).
    Orphan {
        lba: u64,
    },
    /// A metadata marker sector, of this type.
    Marker(u32),
    /// The footer (header copy) after the footer marker.
    Footer,
    /// COWD and seSparse headers.
    OtherHeader,
}

impl Owner {
    fn describe(self) -> String {
        match self {
            Owner::Header => "the sparse header".into(),
            Owner::Descriptor => "the embedded descriptor".into(),
            Owner::Gd => "the grain directory".into(),
            Owner::Rgd => "the redundant grain directory".into(),
            Owner::Gt(i) => format!("grain table {i}"),
            Owner::Rgt(i) => format!("redundant grain table {i}"),
            Owner::Grains {
                first,
                count: 1,
                gt,
                entry,
            } => format!("grain {first} (grain table {gt}, entry {entry})"),
            Owner::Grains {
                first,
                count,
                gt,
                entry,
            } => format!(
                "grains {first}..{} (grain table {gt}, entries {entry}..)",
                first + count - 1
            ),
            Owner::Compressed { grain, gt, entry } => {
                format!("compressed grain {grain} (grain table {gt}, entry {entry})")
            }
            Owner::Orphan { lba } => format!("an unreferenced grain marker (LBA {lba})"),
            Owner::Marker(t) => format!(
                "a {} marker",
                match t {
                    MARKER_EOS => "end-of-stream",
                    MARKER_GT => "grain table",
                    MARKER_GD => "grain directory",
                    _ => "footer",
                }
            ),
            Owner::Footer => "the footer".into(),
            Owner::OtherHeader => "the extent header".into(),
        }
    }
}

/// A buffered view of an extent file for many small reads in ascending order.
struct Window<'a> {
    storage: &'a dyn Storage,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(storage: &'a dyn Storage, len: u64) -> Self {
        Window {
            storage,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// `n` bytes at `pos` (fewer at the end of the file).
    fn get(&mut self, pos: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = pos.saturating_add(n as u64).min(self.len);
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            let want = (WINDOW.max(n) as u64).min(self.len.saturating_sub(pos));
            self.buf.resize(want as usize, 0);
            self.storage.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let a = (pos - self.start) as usize;
        let b = (end.max(pos) - self.start) as usize;
        Ok(&self.buf[a..b])
    }
}

/// Round up to a whole sector.
fn sectors(n: u64) -> u64 {
    n.div_ceil(512).saturating_mul(512)
}

struct Checker<'a> {
    opts: &'a VmdkCheckOptions,
    report: CheckReport,
    /// File the findings are about (an extent named by the descriptor; `None`: the image).
    file: Option<String>,
}

/// Checks the structure of the VMDK whose descriptor or sparse extent is in `storage` (found at
/// `path`; extents and the parent are opened through `ctx`), read-only.
///
/// Returns `Err` only when the file named on the command line is not a usable VMDK (a header
/// or descriptor that does not parse) or cannot be read; everything else is in the report.
pub fn check(
    storage: Arc<dyn Storage>,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
    opts: &VmdkCheckOptions,
) -> Result<CheckReport> {
    let len = storage
        .len()
        .map_err(|e| Error::io("getting the length of the VMDK", e))?;
    let mut head = [0u8; HEADER_SIZE];
    let n = storage
        .read_at(&mut head, 0)
        .map_err(|e| Error::io("reading the first sector of the VMDK", e))?;
    let mut c = Checker {
        opts,
        report: CheckReport::new("vmdk"),
        file: None,
    };
    if n >= 4 && head[..4] == SPARSE_MAGIC {
        let h = SparseHeader::parse(&head[..n], 0)?;
        let mut line_sectors = None;
        if h.descriptor_offset != 0 {
            match read_embedded(storage.as_ref(), &h, len) {
                Ok(d) if h.capacity == 0 => {
                    // A sparse file that only carries a descriptor naming other extents.
                    c.descriptor(&d, path, ctx);
                    return Ok(c.report);
                }
                Ok(d) => {
                    if d.extents.len() != 1 || d.extents[0].kind != VmdkExtentType::Sparse {
                        c.add(
                            ProblemKind::CheckError,
                            "embedded descriptor",
                            h.descriptor_offset.saturating_mul(512),
                            format!(
                                "the embedded descriptor names {} extent(s) of types {:?}; one SPARSE extent (the file itself) is the only layout read",
                                d.extents.len(),
                                d.extents.iter().map(|e| e.kind).collect::<Vec<_>>()
                            ),
                        );
                    } else {
                        line_sectors = Some(d.extents[0].sectors);
                    }
                    c.parent(&d, path, ctx);
                }
                Err(e) => c.corrupt(
                    "embedded descriptor",
                    h.descriptor_offset.saturating_mul(512),
                    error_text(&e),
                ),
            }
        }
        c.sparse(storage.as_ref(), len, line_sectors)?;
    } else if n >= 4 && head[..4] == COWD_MAGIC {
        c.cowd(storage.as_ref(), len, None);
    } else {
        if len > MAX_DESCRIPTOR_BYTES as u64 {
            return Err(VmdkError::invalid(
                "descriptor",
                0,
                format!(
                    "the file is neither a sparse extent (no KDMV magic) nor a text descriptor of at most {MAX_DESCRIPTOR_BYTES} bytes ({len} bytes)"
                ),
            )
            .into());
        }
        let mut b = vec![0u8; len as usize];
        storage
            .read_exact_at(&mut b, 0)
            .map_err(|e| Error::io("reading the descriptor", e))?;
        let d = VmdkDescriptor::parse(&b, 0)?;
        c.descriptor(&d, path, ctx);
    }
    Ok(c.report)
}

/// Reads and parses the descriptor embedded in a sparse file.
fn read_embedded(s: &dyn Storage, h: &SparseHeader, len: u64) -> Result<VmdkDescriptor> {
    let off = h.descriptor_offset.saturating_mul(512);
    let dlen = h.descriptor_size * 512; // <= 2048 sectors (validated by the parser)
    if off.saturating_add(dlen) > len {
        return Err(VmdkError::corrupt(
            "embedded descriptor",
            off,
            format!("{dlen} bytes at {off:#x} run past the end of the file ({len:#x} bytes)"),
        )
        .into());
    }
    let mut b = vec![0u8; dlen as usize];
    s.read_exact_at(&mut b, off)
        .map_err(|e| Error::io(format!("reading the embedded descriptor at {off:#x}"), e))?;
    Ok(VmdkDescriptor::parse(&b, off)?)
}

fn error_text(e: &Error) -> String {
    e.chain()
}

impl Checker<'_> {
    fn add(&mut self, kind: ProblemKind, what: &str, offset: u64, msg: String) {
        let p = CheckProblem::new(kind, what, offset, msg).in_file(self.file.as_deref());
        self.report.add(p);
    }

    fn add_values(
        &mut self,
        kind: ProblemKind,
        what: &str,
        offset: u64,
        msg: String,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) {
        let p = CheckProblem::new(kind, what, offset, msg)
            .values(expected, found)
            .in_file(self.file.as_deref());
        self.report.add(p);
    }

    fn corrupt(&mut self, what: &str, offset: u64, msg: String) {
        self.add(ProblemKind::Corruption, what, offset, msg);
    }

    fn warn(&mut self, what: &str, offset: u64, msg: String) {
        self.add(ProblemKind::Warning, what, offset, msg);
    }

    /// Reads `len` bytes at `offset` of `s`; an I/O error is a check error.
    fn read(&mut self, s: &dyn Storage, offset: u64, len: usize, what: &str) -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        match s.read_exact_at(&mut b, offset) {
            Ok(()) => Some(b),
            Err(e) => {
                self.add(
                    ProblemKind::CheckError,
                    what,
                    offset,
                    format!("could not read {what} ({len} bytes at {offset:#x}): {e}"),
                );
                None
            }
        }
    }

    /// A text (or embedded multi-extent) descriptor: every extent, then the parent.
    fn descriptor(&mut self, d: &VmdkDescriptor, path: Option<&Path>, ctx: &OpenContext<'_>) {
        for line in &d.extents {
            self.file = None;
            self.extent(line, path, ctx);
        }
        self.file = None;
        self.parent(d, path, ctx);
    }

    fn extent(&mut self, line: &VmdkExtentLine, path: Option<&Path>, ctx: &OpenContext<'_>) {
        if line.kind == VmdkExtentType::Zero {
            return;
        }
        let what = format!("descriptor line {}", line.line);
        let storage = match ctx.open_reference_storage(path, "extent", &line.file) {
            Ok(s) => s,
            Err(e) => {
                let missing = e.kind() == ErrorKind::Io || e.kind() == ErrorKind::Corrupt;
                let (kind, tail) = if missing {
                    (
                        ProblemKind::Corruption,
                        "the extent is missing: its part of the disk cannot be read",
                    )
                } else {
                    (
                        ProblemKind::CheckError,
                        "the extent was not opened, so it was not checked",
                    )
                };
                self.add(
                    kind,
                    "descriptor",
                    0,
                    format!(
                        "{what}: extent '{}' ({} sectors): {}; {tail}",
                        line.file,
                        line.sectors,
                        e.chain()
                    ),
                );
                return;
            }
        };
        self.file = Some(line.file.clone());
        let len = match storage.len() {
            Ok(l) => l,
            Err(e) => {
                self.add(
                    ProblemKind::CheckError,
                    "extent",
                    0,
                    format!("could not get the length of the extent: {e}"),
                );
                return;
            }
        };
        match line.kind {
            VmdkExtentType::Sparse => {
                let mut head = [0u8; HEADER_SIZE];
                let h = storage
                    .read_exact_at(&mut head, 0)
                    .map_err(|e| Error::io("reading the sparse extent header", e))
                    .and_then(|()| Ok(SparseHeader::parse(&head, 0)?));
                match h {
                    Ok(_) => {
                        if let Err(e) = self.sparse(storage.as_ref(), len, Some(line.sectors)) {
                            self.add(ProblemKind::CheckError, "extent", 0, error_text(&e));
                        }
                    }
                    Err(e) => self.corrupt(
                        "sparse extent header",
                        0,
                        format!(
                            "{what}: the SPARSE extent has no usable header: {}",
                            e.chain()
                        ),
                    ),
                }
            }
            VmdkExtentType::VmfsSparse => self.cowd(storage.as_ref(), len, Some(line.sectors)),
            VmdkExtentType::SeSparse => self.sesparse(storage.as_ref(), len, Some(line.sectors)),
            _ => {
                // Flat: the file holds the extent's sectors from its offset.
                let need = line.offset.saturating_add(line.sectors).saturating_mul(512);
                if len < need {
                    self.add_values(
                        ProblemKind::Corruption,
                        "flat extent",
                        len,
                        format!(
                            "{what}: the flat extent needs {} sectors from sector {} but the file ends at {len:#x}: the end of its part of the disk is missing",
                            line.sectors, line.offset
                        ),
                        format!("at least {need} bytes"),
                        len,
                    );
                }
            }
        }
    }

    /// The parent named by the descriptor: found, and its CID is our parentCID.
    fn parent(&mut self, d: &VmdkDescriptor, path: Option<&Path>, ctx: &OpenContext<'_>) {
        if !d.has_parent() {
            return;
        }
        let want = d.parent_cid.unwrap_or(0);
        let Some(hint) = d.parent_hint.clone() else {
            self.corrupt(
                "descriptor",
                0,
                format!(
                    "parentCID is {want:08x} but there is no parentFileNameHint: the parent cannot be found"
                ),
            );
            return;
        };
        match ctx.open_reference(path, "parent", &hint, Some(Format::Vmdk)) {
            Ok(parent) => {
                let cid = parent
                    .info()
                    .flags
                    .iter()
                    .find_map(|f| f.strip_prefix("cid=").map(str::to_string))
                    .and_then(|v| u32::from_str_radix(&v, 16).ok());
                if cid != Some(want) {
                    self.add_values(
                        ProblemKind::Corruption,
                        "descriptor",
                        0,
                        format!(
                            "parentCID does not match the CID of the parent '{hint}': the parent was changed after this snapshot was taken (reading would mix two disks)"
                        ),
                        format!("{want:08x}"),
                        cid.map_or_else(|| "(none)".to_string(), |c| format!("{c:08x}")),
                    );
                } else {
                    self.report
                        .notes
                        .push(format!("parent: '{hint}' (CID {want:08x} matches)"));
                }
            }
            Err(e) => self.warn(
                "parent",
                0,
                format!(
                    "the parent '{hint}' could not be opened ({}): this disk's own structure is checked, but reading grains it does not hold needs the parent",
                    e.chain()
                ),
            ),
        }
    }

    /// A hosted sparse extent (`KDMV`) in `s`, `len` bytes; `line_sectors` from the descriptor.
    fn sparse(&mut self, s: &dyn Storage, len: u64, line_sectors: Option<u64>) -> Result<()> {
        let Some(hb) = self.read(s, 0, HEADER_SIZE, "sparse extent header") else {
            return Ok(());
        };
        let h = SparseHeader::parse(&hb, 0)?;
        if let Some(n) = line_sectors.filter(|&n| h.capacity < n) {
            self.add_values(
                ProblemKind::Corruption,
                "sparse extent header",
                0,
                format!(
                    "the capacity is smaller than the descriptor's extent line: its last {} sectors cannot be read",
                    n - h.capacity
                ),
                format!("at least {n} sectors"),
                h.capacity,
            );
        }
        if h.unclean_shutdown {
            self.warn(
                "sparse extent header",
                0,
                "the extent was not closed cleanly (uncleanShutdown is set)".into(),
            );
        }
        let mut space: SpaceMap<Owner> = SpaceMap::new(MAX_RANGES);
        space.add(0, 512, Owner::Header);
        if h.descriptor_offset != 0 {
            let off = h.descriptor_offset.saturating_mul(512);
            space.add(off, h.descriptor_size * 512, Owner::Descriptor);
        }
        let stream = h.markers();

        let Some((eh, walk, leak_end)) = self.stream_layout(s, len, &h, &mut space) else {
            return Ok(());
        };
        let g = SparseGeometry {
            per_gt: u64::from(h.num_gtes_per_gt),
            total_grains: h.capacity.div_ceil(h.grain_size),
            grain_bytes: h.grain_bytes(),
            cap_bytes: h.capacity * 512,
            zero_ok: h.zeroed_grain() || h.version >= 2,
        };
        let gt_bytes = g.per_gt * 4;
        self.report.total_clusters += g.total_grains;
        if self.report.cluster_size == 0 {
            self.report.cluster_size = g.grain_bytes;
        }
        let Some(Directories { gd_at, gd, rgd }) =
            self.directories(s, len, &h, &eh, &walk, &mut space)
        else {
            return Ok(());
        };

        // Tables and grains.
        let mut tally = GrainTally::default();
        let mut no_redundant = 0u64;
        for (i, &e) in gd.iter().enumerate() {
            let gd_entry_at = gd_at + 4 * i as u64;
            let primary = self.table(s, len, e, gd_entry_at, gt_bytes, "grain directory", i);
            if primary.is_some() {
                space.add(u64::from(e) * 512, sectors(gt_bytes), Owner::Gt(i as u32));
                if stream
                    && !walk.gt_payloads.is_empty()
                    && !walk.gt_payloads.contains(&(u64::from(e) * 512))
                {
                    self.corrupt(
                        "grain directory",
                        gd_entry_at,
                        format!(
                            "grain directory entry {i} points at sector {e:#x}, where no grain table marker's table lies"
                        ),
                    );
                }
            }
            let redundant = match &rgd {
                Some((r_at, r)) => {
                    let re = r.get(i).copied().unwrap_or(0);
                    let t = self.table(
                        s,
                        len,
                        re,
                        r_at + 4 * i as u64,
                        gt_bytes,
                        "redundant grain directory",
                        i,
                    );
                    if t.is_some() {
                        space.add(u64::from(re) * 512, sectors(gt_bytes), Owner::Rgt(i as u32));
                    }
                    Some((re, t))
                }
                None => None,
            };
            if let Some((re, rt)) = redundant {
                if self.compare_redundant(i, e, re, &primary, &rt) {
                    no_redundant += 1;
                }
            }
            let Some(t) = primary else { continue };
            let gt_at = u64::from(e) * 512;
            self.table_grains(s, len, &h, &walk, &g, i, gt_at, &t, &mut space, &mut tally);
        }
        if no_redundant > 0 {
            self.warn(
                "redundant grain directory",
                h.rgd_offset.saturating_mul(512),
                format!(
                    "{no_redundant} grain tables have an empty redundant copy; the primary tables are the ones read"
                ),
            );
        }
        self.orphan_markers(&walk, &tally.referenced, &mut space);
        self.finish_space(
            space,
            h.overhead.saturating_mul(512).min(len),
            leak_end,
            if h.markers() { 512 } else { g.grain_bytes },
        );
        Ok(())
    }

    /// For a stream-optimized extent, walks the markers and finds the header that locates the
    /// grain directory (the footer in VMware's layout); `None` when no directory can be found
    /// (reported). Returns that header, the walk and where leaks stop being counted.
    fn stream_layout(
        &mut self,
        s: &dyn Storage,
        len: u64,
        h: &SparseHeader,
        space: &mut SpaceMap<Owner>,
    ) -> Option<(SparseHeader, Walk, u64)> {
        if !h.markers() {
            return Some((*h, Walk::default(), len));
        }
        let mut eh = *h;
        let overhead = h.overhead.saturating_mul(512);
        let walk = self.walk(s, len, overhead, h, space);
        let leak_end = walk.eos.unwrap_or(len);
        if let Some(end) = walk.ended_at {
            if h.gd_offset == GD_AT_END || walk.footer.is_some() {
                // VMware's layout ends with footer and end-of-stream marker.
                self.add_values(
                    ProblemKind::Corruption,
                    "end-of-stream marker",
                    end,
                    "the stream ends without an end-of-stream marker (truncated?)".to_string(),
                    "an end-of-stream marker",
                    "the end of the file",
                );
            } else {
                self.report.notes.push(
                    "the stream has no end-of-stream marker (qemu's writer omits it when the grain directory is at the front)".into(),
                );
            }
        }
        match self.footer(s, len, h, &walk, space) {
            FooterState::Use(f) => eh = f,
            FooterState::Lost => {
                // No footer: fall back to the directory the walk found (VMware layout).
                match walk.gd_payloads.last() {
                    Some(&at) => {
                        self.report.notes.push(format!(
                            "using the grain directory found by the marker walk at {at:#x}"
                        ));
                        eh.gd_offset = at / 512;
                    }
                    None => return None,
                }
            }
            FooterState::Header => {}
        }
        Some((eh, walk, leak_end))
    }

    /// Reads the grain directory and, when the header has one, the redundant directory (dropped
    /// when it is all zero); `None` when the primary cannot be read (reported).
    #[allow(clippy::too_many_arguments)]
    fn directories(
        &mut self,
        s: &dyn Storage,
        len: u64,
        h: &SparseHeader,
        eh: &SparseHeader,
        walk: &Walk,
        space: &mut SpaceMap<Owner>,
    ) -> Option<Directories> {
        let stream = h.markers();
        let n_gd = eh.gd_entries();
        let gd_bytes = n_gd * 4;
        // Primary directory.
        let gd_at = eh.gd_offset.checked_mul(512).filter(|&o| o > 0);
        let Some(gd_at) = gd_at.filter(|&o| o.checked_add(gd_bytes).is_some_and(|e| e <= len))
        else {
            self.add_values(
                ProblemKind::Corruption,
                "grain directory",
                eh.gd_offset.saturating_mul(512),
                format!(
                    "the grain directory ({n_gd} entries at sector {:#x}) lies outside the file: no grain can be found",
                    eh.gd_offset
                ),
                format!("an end at most at {len:#x}"),
                format!(
                    "{:#x}",
                    eh.gd_offset.saturating_mul(512).saturating_add(gd_bytes)
                ),
            );
            return None;
        };
        if stream && !walk.gd_payloads.is_empty() && !walk.gd_payloads.contains(&gd_at) {
            self.corrupt(
                "grain directory",
                gd_at,
                format!(
                    "the grain directory at {gd_at:#x} is not preceded by a grain directory marker (the stream has directory markers at {})",
                    walk.gd_payloads
                        .iter()
                        .map(|o| format!("{:#x}", o - 512))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        // gd_bytes <= file length: a bounded allocation.
        let gd_raw = self.read(s, gd_at, gd_bytes as usize, "grain directory")?;
        let gd: Vec<u32> = gd_raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        space.add(gd_at, sectors(gd_bytes), Owner::Gd);

        // Redundant directory.
        let mut rgd: Option<(u64, Vec<u32>)> = None;
        if h.flags & FLAG_REDUNDANT_GT != 0 {
            let r_at = h.rgd_offset.checked_mul(512).filter(|&o| o > 0);
            match r_at.filter(|&o| o.checked_add(gd_bytes).is_some_and(|e| e <= len)) {
                None if h.rgd_offset == 0 => self.warn(
                    "sparse extent header",
                    0,
                    "the redundant grain table flag is set but rgdOffset is 0: there is no redundant grain directory".into(),
                ),
                None => self.add_values(
                    ProblemKind::Corruption,
                    "redundant grain directory",
                    h.rgd_offset.saturating_mul(512),
                    format!(
                        "the redundant grain directory ({n_gd} entries at sector {:#x}) lies outside the file",
                        h.rgd_offset
                    ),
                    format!("an end at most at {len:#x}"),
                    format!(
                        "{:#x}",
                        h.rgd_offset.saturating_mul(512).saturating_add(gd_bytes)
                    ),
                ),
                Some(r_at) => {
                    if let Some(raw) =
                        self.read(s, r_at, gd_bytes as usize, "redundant grain directory")
                    {
                        space.add(r_at, sectors(gd_bytes), Owner::Rgd);
                        rgd = Some((r_at, raw.chunks_exact(4).map(|c| le32(c, 0)).collect()));
                    }
                }
            }
        }
        if let Some((r_at, r)) = &rgd {
            if r.iter().all(|&e| e == 0) && gd.iter().any(|&e| e != 0) {
                self.warn(
                    "redundant grain directory",
                    *r_at,
                    format!(
                        "the redundant grain directory at {r_at:#x} is all zero (unused); the primary at {gd_at:#x} is the one read"
                    ),
                );
                rgd = None;
            }
        }
        Some(Directories { gd_at, gd, rgd })
    }

    /// Compares grain table `i` (directory entry `e`) with its redundant copy (entry `re`);
    /// true when only the redundant copy is empty (counted, reported once for all tables).
    fn compare_redundant(
        &mut self,
        i: usize,
        e: u32,
        re: u32,
        primary: &Option<Vec<u32>>,
        rt: &Option<Vec<u32>>,
    ) -> bool {
        let empty = |t: &Option<Vec<u32>>| t.as_ref().is_none_or(|v| v.iter().all(|&x| x == 0));
        match (empty(primary), empty(rt)) {
            (true, true) => {}
            (false, true) => return true,
            (true, false) => self.corrupt(
                "redundant grain directory",
                u64::from(re) * 512,
                format!(
                    "redundant grain table {i} (at {:#x}) records grains but the primary grain table {} is empty: those grains are not read (every reader uses the primary)",
                    u64::from(re) * 512,
                    if e == 0 { "entry is 0".to_string() } else { format!("at {:#x}", u64::from(e) * 512) }
                ),
            ),
            (false, false) => {
                let (p, r) = (primary.as_deref().unwrap_or(&[]), rt.as_deref().unwrap_or(&[]));
                let diff: Vec<usize> = (0..p.len()).filter(|&k| p.get(k) != r.get(k)).collect();
                if let Some(&k) = diff.first() {
                    self.add_values(
                        ProblemKind::Corruption,
                        "grain table",
                        u64::from(e) * 512,
                        format!(
                            "grain table {i} (at {:#x}) and its redundant copy (at {:#x}) differ in {} entries, the first being entry {k}; the primary is the one read",
                            u64::from(e) * 512,
                            u64::from(re) * 512,
                            diff.len()
                        ),
                        format!("the redundant entry {:#x}", r.get(k).copied().unwrap_or(0)),
                        format!("{:#x}", p[k]),
                    );
                }
            }
        }
        false
    }

    /// Checks the allocated entries of grain table `i` (at `gt_at`): grains past the capacity or
    /// the end of the file, compressed grains, and the space each grain takes.
    #[allow(clippy::too_many_arguments)]
    fn table_grains(
        &mut self,
        s: &dyn Storage,
        len: u64,
        h: &SparseHeader,
        walk: &Walk,
        g: &SparseGeometry,
        i: usize,
        gt_at: u64,
        t: &[u32],
        space: &mut SpaceMap<Owner>,
        tally: &mut GrainTally,
    ) {
        for (k, &gte) in t.iter().enumerate() {
            if gte == 0 || (gte == 1 && g.zero_ok) {
                continue;
            }
            let grain = i as u64 * g.per_gt + k as u64;
            let entry_at = gt_at + 4 * k as u64;
            let host = u64::from(gte) * 512;
            let beyond = grain >= g.total_grains;
            if beyond {
                self.add(
                    ProblemKind::Leak,
                    "grain table",
                    entry_at,
                    format!(
                        "grain table {i} (at {gt_at:#x}) entry {k} is allocated (sector {gte:#x}) but grain {grain} lies beyond the capacity ({} sectors)",
                        h.capacity
                    ),
                );
            }
            if h.compressed() {
                let last = grain + 1 >= g.total_grains;
                let gr = GrainRef {
                    gt: i,
                    entry: k,
                    grain,
                    host,
                    entry_at,
                    last,
                };
                if self.compressed(s, len, h, walk, &gr, space) && !beyond {
                    tally.referenced.insert(host);
                    self.report.allocated_clusters += 1;
                    self.report.compressed_clusters += 1;
                    self.report.fragmented_clusters += 1;
                }
                continue;
            }
            let need = g
                .grain_bytes
                .min(g.cap_bytes.saturating_sub(grain * g.grain_bytes))
                .max(1);
            if host.saturating_add(need) > len {
                self.add_values(
                    ProblemKind::Corruption,
                    "grain table",
                    entry_at,
                    format!(
                        "grain table {i} (at {gt_at:#x}) entry {k}: grain {grain} at {host:#x} lies past the end of the file"
                    ),
                    format!("an end at most at {len:#x}"),
                    format!("{:#x}", host + need),
                );
                continue;
            }
            let claim = g.grain_bytes.min(len - host);
            let owner = Owner::Grains {
                first: grain,
                count: 1,
                gt: i as u32,
                entry: k as u32,
            };
            match space.last().copied() {
                Some(u) if u.end == host => match u.owner {
                    Owner::Grains {
                        first,
                        count,
                        gt,
                        entry,
                    } if first + count == grain && gt == i as u32 => {
                        space.extend_last(
                            host + claim,
                            Owner::Grains {
                                first,
                                count: count + 1,
                                gt,
                                entry,
                            },
                        );
                    }
                    _ => space.add(host, claim, owner),
                },
                _ => space.add(host, claim, owner),
            }
            if !beyond {
                self.report.allocated_clusters += 1;
                if tally.prev_end.is_some_and(|p| p != host) {
                    self.report.fragmented_clusters += 1;
                }
                tally.prev_end = Some(host + g.grain_bytes);
            }
        }
    }

    /// Reports the grain markers of a stream that no grain table references.
    fn orphan_markers(
        &mut self,
        walk: &Walk,
        referenced: &HashSet<u64>,
        space: &mut SpaceMap<Owner>,
    ) {
        for (&pos, &(lba, size)) in &walk.grains {
            if !referenced.contains(&pos) {
                self.add(
                    ProblemKind::Leak,
                    "grain marker",
                    pos,
                    format!(
                        "the grain marker at {pos:#x} (LBA {lba}, {size} compressed bytes) is referenced by no grain table entry"
                    ),
                );
                space.add(
                    pos,
                    sectors(GRAIN_MARKER_SIZE as u64 + u64::from(size)),
                    Owner::Orphan { lba },
                );
            }
        }
    }

    /// Reads the grain table a directory entry `e` (at `entry_at`) points at; `None` for an
    /// empty entry or one outside the file (reported).
    #[allow(clippy::too_many_arguments)]
    fn table(
        &mut self,
        s: &dyn Storage,
        len: u64,
        e: u32,
        entry_at: u64,
        gt_bytes: u64,
        dir: &str,
        i: usize,
    ) -> Option<Vec<u32>> {
        if e == 0 {
            return None;
        }
        let at = u64::from(e) * 512;
        if at + gt_bytes > len {
            self.add_values(
                ProblemKind::Corruption,
                dir,
                entry_at,
                format!(
                    "{dir} entry {i} (at {entry_at:#x}) points at sector {e:#x}: its grain table lies past the end of the file"
                ),
                format!("an end at most at {len:#x}"),
                format!("{:#x}", at + gt_bytes),
            );
            return None;
        }
        let raw = self.read(s, at, gt_bytes as usize, "grain table")?;
        Some(raw.chunks_exact(4).map(|c| le32(c, 0)).collect())
    }

    /// A compressed grain: its marker, LBA and size; inflated with `deep`. Returns whether it
    /// was claimed (inside the file).
    fn compressed(
        &mut self,
        s: &dyn Storage,
        len: u64,
        h: &SparseHeader,
        walk: &Walk,
        g: &GrainRef,
        space: &mut SpaceMap<Owner>,
    ) -> bool {
        let GrainRef {
            gt,
            entry: k,
            grain,
            host,
            entry_at,
            last,
        } = *g;
        let lba_want = grain * h.grain_size;
        let marker = match walk.grains.get(&host) {
            Some(&(lba, size)) => Some((lba, size)),
            None => {
                if host.saturating_add(GRAIN_MARKER_SIZE as u64) > len || host == 0 {
                    self.add_values(
                        ProblemKind::Corruption,
                        "grain table",
                        entry_at,
                        format!(
                            "grain table {gt} entry {k}: compressed grain {grain} at {host:#x} lies past the end of the file"
                        ),
                        format!("an offset below {len:#x}"),
                        format!("{host:#x}"),
                    );
                    return false;
                }
                let b = self.read(s, host, 16.min((len - host) as usize), "grain marker");
                match b.as_deref().map(|b| Marker::parse(b, host)) {
                    Some(Ok(Marker::Grain { lba, size })) => Some((lba, size)),
                    Some(Ok(Marker::Metadata { kind, .. })) => {
                        self.corrupt(
                            "grain table",
                            entry_at,
                            format!(
                                "grain table {gt} entry {k}: grain {grain} points at {host:#x}, which holds a metadata marker (type {kind}), not a grain"
                            ),
                        );
                        None
                    }
                    Some(Err(e)) => {
                        self.corrupt(
                            "grain table",
                            entry_at,
                            format!(
                                "grain table {gt} entry {k}: grain {grain} points at {host:#x}: {e}"
                            ),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let Some((lba, size)) = marker else {
            return false;
        };
        if lba != lba_want {
            self.add_values(
                ProblemKind::Corruption,
                "grain marker",
                host,
                format!(
                    "the grain marker at {host:#x}, which grain table {gt} entry {k} points at for grain {grain}, is for another place in the disk"
                ),
                format!("LBA {lba_want}"),
                format!("LBA {lba}"),
            );
        }
        let end = host + GRAIN_MARKER_SIZE as u64 + u64::from(size);
        if end > len {
            self.add_values(
                ProblemKind::Corruption,
                "grain marker",
                host,
                format!(
                    "compressed grain {grain} at {host:#x} ({size} bytes, grain table {gt} entry {k}) runs past the end of the file"
                ),
                format!("an end at most at {len:#x}"),
                format!("{end:#x}"),
            );
            return false;
        }
        space.add(
            host,
            sectors(end - host).min(len - host),
            Owner::Compressed {
                grain,
                gt: gt as u32,
                entry: k as u32,
            },
        );
        if self.opts.deep {
            // The last grain of a capacity that is not a whole number of grains may be short.
            let gb = h.grain_bytes();
            let min = if last {
                (h.capacity * 512).saturating_sub(grain * gb).min(gb)
            } else {
                gb
            };
            self.inflate(s, host, size, grain, gb, min);
        }
        true
    }

    /// `deep`: the compressed grain at `host` inflates to one grain of `gb` bytes (at least
    /// `min` of them for the last grain).
    fn inflate(&mut self, s: &dyn Storage, host: u64, size: u32, grain: u64, gb: u64, min: u64) {
        // A deflate stream of one grain is at most a little larger than the grain.
        let most = gb + gb / 8 + 1024;
        if u64::from(size) > most {
            self.add_values(
                ProblemKind::Corruption,
                "compressed grain",
                host,
                format!(
                    "compressed grain {grain} at {host:#x} is larger than any deflate stream of one grain"
                ),
                format!("at most {most} bytes"),
                size,
            );
            return;
        }
        let Some(data) = self.read(
            s,
            host + GRAIN_MARKER_SIZE as u64,
            size as usize,
            "compressed grain",
        ) else {
            return;
        };
        let mut out = vec![0u8; gb as usize];
        match super::stream::inflate_grain(&data, &mut out, host) {
            Ok(n) if n as u64 >= min => {}
            Ok(n) => self.add_values(
                ProblemKind::Corruption,
                "compressed grain",
                host,
                format!("compressed grain {grain} at {host:#x} inflates to less than one grain"),
                format!("{min} bytes"),
                format!("{n} bytes"),
            ),
            Err(e) => self.corrupt("compressed grain", host, e.to_string()),
        }
    }

    /// Reports overlaps and the unused stretches of `[from, to)` at least `min_leak` long.
    fn finish_space(&mut self, space: SpaceMap<Owner>, from: u64, to: u64, min_leak: u64) {
        if space.overflowed() {
            self.add(
                ProblemKind::CheckError,
                "extent",
                0,
                format!(
                    "more than {MAX_RANGES} separate grains and tables: overlaps and leaks were not checked"
                ),
            );
            return;
        }
        let sp = space.finish(from, to, MAX_OVERLAPS);
        for (a, b) in sp.overlaps {
            let msg = match (a.owner, b.owner) {
                (
                    Owner::Grains { .. } | Owner::Compressed { .. },
                    Owner::Grains { .. } | Owner::Compressed { .. },
                ) if a.start == b.start => format!(
                    "{} and {} point at the same data at {:#x}: a grain referenced twice (writing one changes the other)",
                    a.owner.describe(),
                    b.owner.describe(),
                    a.start
                ),
                _ => format!(
                    "{} ({:#x}..{:#x}) overlaps {} ({:#x}..{:#x})",
                    b.owner.describe(),
                    b.start,
                    b.end,
                    a.owner.describe(),
                    a.start,
                    a.end
                ),
            };
            let what = match b.owner {
                Owner::Grains { .. } | Owner::Compressed { .. } => "grain table",
                Owner::Gt(_) | Owner::Rgt(_) => "grain directory",
                _ => "extent",
            };
            self.corrupt(what, b.start, msg);
        }
        for g in sp.gaps {
            if g.end - g.start >= min_leak {
                self.add(
                    ProblemKind::Leak,
                    "extent",
                    g.start,
                    format!(
                        "bytes {:#x}..{:#x} ({} bytes) are used by no grain and no table",
                        g.start,
                        g.end,
                        g.end - g.start
                    ),
                );
            }
        }
        self.report.image_end_offset = self.report.image_end_offset.max(sp.end);
    }

    /// Walks the markers of a stream from `from` (the end of the metadata) to the
    /// end-of-stream marker.
    fn walk(
        &mut self,
        s: &dyn Storage,
        len: u64,
        from: u64,
        h: &SparseHeader,
        space: &mut SpaceMap<Owner>,
    ) -> Walk {
        let mut w = Walk::default();
        let mut win = Window::new(s, len);
        let mut pos = from;
        let capacity = h.capacity;
        loop {
            if pos >= len {
                // Whether that is wrong depends on the layout (see `sparse`).
                w.ended_at = Some(pos);
                return w;
            }
            let b = match win.get(pos, 512) {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    self.add(
                        ProblemKind::CheckError,
                        "marker",
                        pos,
                        format!("could not read the marker at {pos:#x}: {e}"),
                    );
                    return w;
                }
            };
            let m = match Marker::parse(&b, pos) {
                Ok(m) => m,
                Err(e) => {
                    self.corrupt("marker", pos, format!("{e}; the marker walk stops here"));
                    return w;
                }
            };
            match m {
                Marker::Grain { lba, size } => {
                    let end = pos + GRAIN_MARKER_SIZE as u64 + u64::from(size);
                    if end > len {
                        self.add_values(
                            ProblemKind::Corruption,
                            "grain marker",
                            pos,
                            format!(
                                "the grain marker at {pos:#x} (LBA {lba}) announces {size} compressed bytes that run past the end of the file (truncated?)"
                            ),
                            format!("an end at most at {len:#x}"),
                            format!("{end:#x}"),
                        );
                        return w;
                    }
                    if lba % h.grain_size != 0 || lba >= capacity {
                        self.add_values(
                            ProblemKind::Corruption,
                            "grain marker",
                            pos,
                            format!(
                                "the grain marker at {pos:#x} names an LBA that is not the start of a grain of the disk ({capacity} sectors, grains of {})",
                                h.grain_size
                            ),
                            format!("a multiple of {} below {capacity}", h.grain_size),
                            lba,
                        );
                    }
                    w.grains.insert(pos, (lba, size));
                    pos = sectors(end);
                }
                Marker::Metadata { sectors: n, kind } => {
                    if kind == MARKER_EOS {
                        space.add(pos, 512, Owner::Marker(MARKER_EOS));
                        w.eos = Some(pos);
                        self.after_eos(s, len, pos + 512);
                        return w;
                    }
                    let next = n
                        .checked_mul(512)
                        .and_then(|p| p.checked_add(pos + 512))
                        .filter(|&e| e <= len);
                    let Some(next) = next else {
                        self.corrupt(
                            "marker",
                            pos,
                            format!(
                                "the {} marker at {pos:#x} announces {n} sectors that run past the end of the file (truncated?)",
                                Owner::Marker(kind).describe().trim_start_matches("a ")
                            ),
                        );
                        return w;
                    };
                    space.add(pos, 512, Owner::Marker(kind));
                    match kind {
                        MARKER_GT => w.gt_payloads.push(pos + 512),
                        MARKER_GD => w.gd_payloads.push(pos + 512),
                        MARKER_FOOTER => w.footer = Some(pos),
                        _ => {}
                    }
                    pos = next;
                }
            }
        }
    }

    /// Bytes after the end-of-stream marker: zeros are padding, anything else is a leak.
    fn after_eos(&mut self, s: &dyn Storage, len: u64, from: u64) {
        let mut pos = from;
        let mut buf = vec![0u8; WINDOW];
        while pos < len {
            let n = ((len - pos) as usize).min(WINDOW);
            if let Err(e) = s.read_exact_at(&mut buf[..n], pos) {
                self.add(
                    ProblemKind::CheckError,
                    "end-of-stream marker",
                    pos,
                    format!("could not read after the end-of-stream marker at {pos:#x}: {e}"),
                );
                return;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                let at = pos + i as u64;
                self.add(
                    ProblemKind::Leak,
                    "end-of-stream marker",
                    at,
                    format!(
                        "bytes {at:#x}..{len:#x} after the end-of-stream marker at {:#x} are not part of the stream",
                        from - 512
                    ),
                );
                return;
            }
            pos += n as u64;
        }
    }

    /// The footer of a stream: present when needed, equal to the header except gdOffset.
    fn footer(
        &mut self,
        s: &dyn Storage,
        len: u64,
        h: &SparseHeader,
        walk: &Walk,
        space: &mut SpaceMap<Owner>,
    ) -> FooterState {
        let needed = h.gd_offset == GD_AT_END;
        let Some(fm) = walk.footer else {
            if needed {
                self.add_values(
                    ProblemKind::Corruption,
                    "footer",
                    len.saturating_sub(1536),
                    "the header's gdOffset is all ones (the grain directory is at the end) but the stream has no footer: the directory can only be guessed (truncated stream?)".to_string(),
                    "a footer marker and footer before the end-of-stream marker",
                    "none",
                );
                return FooterState::Lost;
            }
            return FooterState::Header;
        };
        let at = fm + 512;
        space.add(at, 512, Owner::Footer);
        if walk.eos.is_some_and(|e| e != at + 512) {
            self.corrupt(
                "footer",
                at,
                format!(
                    "the footer at {at:#x} is not followed by the end-of-stream marker (the stream goes on after it)"
                ),
            );
        }
        let Some(b) = self.read(s, at, HEADER_SIZE, "footer") else {
            return if needed {
                FooterState::Lost
            } else {
                FooterState::Header
            };
        };
        let f = match SparseHeader::parse(&b, at) {
            Ok(f) => f,
            Err(e) => {
                self.corrupt("footer", at, e.to_string());
                return if needed {
                    FooterState::Lost
                } else {
                    FooterState::Header
                };
            }
        };
        let fields: [(&str, u64, u64); 10] = [
            ("version", u64::from(h.version), u64::from(f.version)),
            ("flags", u64::from(h.flags), u64::from(f.flags)),
            ("capacity", h.capacity, f.capacity),
            ("grainSize", h.grain_size, f.grain_size),
            ("descriptorOffset", h.descriptor_offset, f.descriptor_offset),
            ("descriptorSize", h.descriptor_size, f.descriptor_size),
            (
                "numGTEsPerGT",
                u64::from(h.num_gtes_per_gt),
                u64::from(f.num_gtes_per_gt),
            ),
            ("rgdOffset", h.rgd_offset, f.rgd_offset),
            ("overHead", h.overhead, f.overhead),
            (
                "compressAlgorithm",
                u64::from(h.compress_algorithm),
                u64::from(f.compress_algorithm),
            ),
        ];
        let mut usable = true;
        for (name, hv, fv) in fields {
            if hv != fv {
                self.add_values(
                    ProblemKind::Corruption,
                    "footer",
                    at,
                    format!("the footer at {at:#x} differs from the header in {name} (it must be a copy of it but for gdOffset)"),
                    format!("{hv:#x} (the header's)"),
                    format!("{fv:#x}"),
                );
                if matches!(name, "capacity" | "grainSize" | "numGTEsPerGT") {
                    usable = false;
                }
            }
        }
        if f.gd_offset == GD_AT_END {
            self.corrupt(
                "footer",
                at,
                format!("the footer at {at:#x} has gdOffset all ones too: it does not say where the grain directory is"),
            );
            return if needed {
                FooterState::Lost
            } else {
                FooterState::Header
            };
        }
        if !needed {
            if f.gd_offset != h.gd_offset {
                self.add_values(
                    ProblemKind::Warning,
                    "footer",
                    at,
                    format!("the footer at {at:#x} names another grain directory than the header; the header's is the one read"),
                    format!("{:#x} (the header's)", h.gd_offset),
                    format!("{:#x}", f.gd_offset),
                );
            }
            return FooterState::Header;
        }
        if !usable {
            return FooterState::Lost;
        }
        FooterState::Use(f)
    }

    /// An ESXi vmfsSparse (`COWD`) extent: header, directory, tables and grains inside the
    /// file, nothing overlapping.
    fn cowd(&mut self, s: &dyn Storage, len: u64, line_sectors: Option<u64>) {
        let Some(b) = self.read(s, 0, COWD_HEADER_SIZE.min(len as usize), "COWD header") else {
            return;
        };
        let h = match parse_cowd_header(&b, 0) {
            Ok(h) => h,
            Err(e) => {
                self.corrupt("COWD header", 0, e.to_string());
                return;
            }
        };
        let sh = h.sparse;
        if let Some(n) = line_sectors.filter(|&n| sh.capacity < n) {
            self.add_values(
                ProblemKind::Corruption,
                "COWD header",
                0,
                "the capacity is smaller than the descriptor's extent line".into(),
                format!("at least {n} sectors"),
                sh.capacity,
            );
        }
        let mut space: SpaceMap<Owner> = SpaceMap::new(MAX_RANGES);
        space.add(0, 512, Owner::OtherHeader);
        let gd_at = sh.gd_offset * 512;
        let gd_bytes = h.gd_entries * 4;
        if gd_at.saturating_add(gd_bytes) > len {
            self.add_values(
                ProblemKind::Corruption,
                "grain directory",
                gd_at,
                format!(
                    "the COWD grain directory ({} entries at {gd_at:#x}) lies outside the file",
                    h.gd_entries
                ),
                format!("an end at most at {len:#x}"),
                format!("{:#x}", gd_at + gd_bytes),
            );
            return;
        }
        let Some(raw) = self.read(s, gd_at, gd_bytes as usize, "grain directory") else {
            return;
        };
        space.add(gd_at, sectors(gd_bytes), Owner::Gd);
        let gt_bytes = u64::from(sh.num_gtes_per_gt) * 4;
        let gb = sh.grain_bytes();
        let total = sh.capacity.div_ceil(sh.grain_size);
        self.report.total_clusters += total;
        if self.report.cluster_size == 0 {
            self.report.cluster_size = gb;
        }
        for (i, e) in raw.chunks_exact(4).map(|c| le32(c, 0)).enumerate() {
            let Some(t) = self.table(
                s,
                len,
                e,
                gd_at + 4 * i as u64,
                gt_bytes,
                "grain directory",
                i,
            ) else {
                continue;
            };
            let gt_at = u64::from(e) * 512;
            space.add(gt_at, sectors(gt_bytes), Owner::Gt(i as u32));
            for (k, &gte) in t.iter().enumerate() {
                if gte == 0 {
                    continue;
                }
                let grain = i as u64 * u64::from(sh.num_gtes_per_gt) + k as u64;
                let host = u64::from(gte) * 512;
                if host + gb > len {
                    self.add_values(
                        ProblemKind::Corruption,
                        "grain table",
                        gt_at + 4 * k as u64,
                        format!("COWD grain table {i} (at {gt_at:#x}) entry {k}: grain {grain} at {host:#x} lies past the end of the file"),
                        format!("an end at most at {len:#x}"),
                        format!("{:#x}", host + gb),
                    );
                    continue;
                }
                space.add(
                    host,
                    gb,
                    Owner::Grains {
                        first: grain,
                        count: 1,
                        gt: i as u32,
                        entry: k as u32,
                    },
                );
                if grain < total {
                    self.report.allocated_clusters += 1;
                }
            }
        }
        // The COWD layout beyond the header is not published: no leak check.
        self.finish_space(space, len, len, u64::MAX);
    }

    /// An ESXi seSparse extent: headers, directory, tables and grains inside the file.
    fn sesparse(&mut self, s: &dyn Storage, len: u64, line_sectors: Option<u64>) {
        let Some(b) = self.read(s, 0, 512.min(len as usize), "seSparse header") else {
            return;
        };
        let h = match SeSparseHeader::parse(&b) {
            Ok(h) => h,
            Err(e) => {
                let kind = if matches!(e, VmdkError::Unsupported(_)) {
                    ProblemKind::CheckError
                } else {
                    ProblemKind::Corruption
                };
                self.add(kind, "seSparse header", 0, e.to_string());
                return;
            }
        };
        if let Some(n) = line_sectors.filter(|&n| h.capacity < n) {
            self.add_values(
                ProblemKind::Corruption,
                "seSparse header",
                0,
                "the capacity is smaller than the descriptor's extent line".into(),
                format!("at least {n} sectors"),
                h.capacity,
            );
        }
        let mut space: SpaceMap<Owner> = SpaceMap::new(MAX_RANGES);
        space.add(0, 512, Owner::OtherHeader);
        self.sesparse_volatile(s, len, &h, &mut space);
        let per_gt = h.gtes_per_gt();
        let n = h.capacity.div_ceil(per_gt * h.grain_size);
        let gd_at = h.grain_dir_offset.saturating_mul(512);
        if gd_at.saturating_add(n * 8) > len {
            self.corrupt(
                "grain directory",
                gd_at,
                format!("the seSparse grain directory ({n} entries at {gd_at:#x}) lies outside the file ({len:#x} bytes)"),
            );
            return;
        }
        let Some(raw) = self.read(s, gd_at, (n * 8) as usize, "grain directory") else {
            return;
        };
        space.add(gd_at, sectors(n * 8), Owner::Gd);
        let gt_bytes = h.grain_table_size * 512;
        let gb = h.grain_bytes();
        let tables_at = h.grain_tables_offset.saturating_mul(512);
        self.report.total_clusters += h.capacity.div_ceil(h.grain_size);
        if self.report.cluster_size == 0 {
            self.report.cluster_size = gb;
        }
        for (i, gde) in raw.chunks_exact(8).map(|c| le64(c, 0)).enumerate() {
            if gde == 0 {
                continue;
            }
            let entry_at = gd_at + 8 * i as u64;
            if gde & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
                self.add_values(
                    ProblemKind::Corruption,
                    "grain directory",
                    entry_at,
                    format!("seSparse grain directory entry {i} (at {entry_at:#x}) is malformed"),
                    "0x10000000xxxxxxxx",
                    format!("{gde:#018x}"),
                );
                continue;
            }
            let gt_at = (gde & 0xffff_ffff)
                .checked_mul(gt_bytes)
                .and_then(|o| o.checked_add(tables_at))
                .filter(|&o| o.saturating_add(gt_bytes) <= len);
            let Some(gt_at) = gt_at else {
                self.corrupt(
                    "grain directory",
                    entry_at,
                    format!("seSparse grain directory entry {i} ({gde:#x}) points at a grain table past the end of the file ({len:#x} bytes)"),
                );
                continue;
            };
            let Some(t) = self.read(s, gt_at, gt_bytes as usize, "grain table") else {
                continue;
            };
            space.add(gt_at, gt_bytes, Owner::Gt(i as u32));
            self.sesparse_table(&h, len, i, gt_at, &t, &mut space);
        }
        self.finish_space(space, len, len, u64::MAX);
    }

    /// Checks the seSparse volatile header (magic, journal state) and records its space.
    fn sesparse_volatile(
        &mut self,
        s: &dyn Storage,
        len: u64,
        h: &SeSparseHeader,
        space: &mut SpaceMap<Owner>,
    ) {
        let vo = h.volatile_header_offset.saturating_mul(512);
        match self
            .read(s, vo, 512, "seSparse volatile header")
            .filter(|_| vo + 512 <= len)
        {
            Some(v) if le64(&v, 0) == SESPARSE_VOLATILE_MAGIC => {
                space.add(vo, 512, Owner::OtherHeader);
                if le64(&v, 24) != 0 {
                    self.warn(
                        "seSparse volatile header",
                        vo,
                        "the journal needs replaying (the snapshot was not closed cleanly); diskconv does not read such extents".into(),
                    );
                }
            }
            Some(v) => self.add_values(
                ProblemKind::Corruption,
                "seSparse volatile header",
                vo,
                "the seSparse volatile header has a wrong magic".into(),
                format!("{SESPARSE_VOLATILE_MAGIC:#x}"),
                format!("{:#x}", le64(&v, 0)),
            ),
            None => self.corrupt(
                "seSparse volatile header",
                vo,
                format!("the seSparse volatile header at {vo:#x} lies outside the file"),
            ),
        }
    }

    /// Checks the entries of seSparse grain table `i` (at `gt_at`, bytes `t`): their types, and
    /// that allocated grains lie in the file.
    fn sesparse_table(
        &mut self,
        h: &SeSparseHeader,
        len: u64,
        i: usize,
        gt_at: u64,
        t: &[u8],
        space: &mut SpaceMap<Owner>,
    ) {
        let gb = h.grain_bytes();
        for (k, e) in t.chunks_exact(8).map(|c| le64(c, 0)).enumerate() {
            let at = gt_at + 8 * k as u64;
            let grain = i as u64 * h.gtes_per_gt() + k as u64;
            match e >> 60 {
                0 if e == 0 => {}
                1 | 2 => {}
                3 => {
                    let cluster =
                        ((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12);
                    let host = cluster
                        .checked_mul(h.grain_size)
                        .and_then(|x| x.checked_add(h.grains_offset))
                        .and_then(|x| x.checked_mul(512))
                        .filter(|&o| o.saturating_add(gb) <= len);
                    match host {
                    Some(host) => {
                        space.add(host, gb, Owner::Grains { first: grain, count: 1, gt: i as u32, entry: k as u32 });
                        self.report.allocated_clusters += 1;
                    }
                    None => self.corrupt(
                        "grain table",
                        at,
                        format!("seSparse grain table {i} (at {gt_at:#x}) entry {k}: grain {grain} lies past the end of the file ({len:#x} bytes)"),
                    ),
                }
                }
                t => self.add_values(
                    ProblemKind::Corruption,
                    "grain table",
                    at,
                    format!(
                        "seSparse grain table {i} (at {gt_at:#x}) entry {k} has an invalid type"
                    ),
                    "0 (unallocated, all bits clear), 1, 2 or 3",
                    format!("{t} ({e:#018x})"),
                ),
            }
        }
    }
}

/// What the marker walk of a stream found.
#[derive(Debug, Default)]
struct Walk {
    /// Grain markers by position: (LBA, compressed size).
    grains: HashMap<u64, (u64, u32)>,
    /// Where the grain tables announced by GT markers lie.
    gt_payloads: Vec<u64>,
    /// Where the grain directories announced by GD markers lie.
    gd_payloads: Vec<u64>,
    /// The footer marker.
    footer: Option<u64>,
    /// The end-of-stream marker.
    eos: Option<u64>,
    /// Where the walk reached the end of the file without an end-of-stream marker.
    ended_at: Option<u64>,
}

/// One allocated grain table entry.
#[derive(Debug, Clone, Copy)]
struct GrainRef {
    /// Grain table (directory index).
    gt: usize,
    /// Entry in the table.
    entry: usize,
    /// Grain number in the extent.
    grain: u64,
    /// Where the entry points (bytes).
    host: u64,
    /// Where the entry is (bytes).
    entry_at: u64,
    /// The last grain of the extent.
    last: bool,
}

/// The grain directory of a sparse extent and its redundant copy.
struct Directories {
    /// Where the primary directory is (bytes).
    gd_at: u64,
    /// Its entries.
    gd: Vec<u32>,
    /// The redundant directory's position and entries, when there is a usable one.
    rgd: Option<(u64, Vec<u32>)>,
}

/// Sizes of a sparse extent derived from its header.
struct SparseGeometry {
    /// Entries per grain table.
    per_gt: u64,
    /// Grains that cover the capacity.
    total_grains: u64,
    /// Bytes per grain.
    grain_bytes: u64,
    /// The capacity in bytes.
    cap_bytes: u64,
    /// Whether a grain table entry of 1 means a zero grain.
    zero_ok: bool,
}

/// What the walk over the grain tables accumulates.
#[derive(Default)]
struct GrainTally {
    /// Where the previous allocated grain ended (for fragmentation).
    prev_end: Option<u64>,
    /// Host offsets of compressed grains some table references.
    referenced: HashSet<u64>,
}

/// Which header locates the grain directory of a stream.
enum FooterState {
    /// The header's own gdOffset (no footer needed).
    Header,
    /// The footer's (VMware layout).
    Use(SparseHeader),
    /// Needed but missing or unusable.
    Lost,
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::bytes::set_le32;
    use crate::formats::check::ProblemKind as K;
    use crate::formats::vmdk::sparse::tests::header_bytes;
    use crate::formats::vmdk::sparse::{FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE};
    use crate::open::OpenOptions;
    use crate::storage::MemStorage;

    /// A hosted sparse extent of 4 grains of 8 sectors, 4 entries per grain table, built
    /// sector by sector: 0 header, 1 redundant directory, 2 redundant table, 3 directory,
    /// 4 table; grains 0 and 2 stored at sectors 5 and 13 (overHead 5); 21 sectors in all.
    fn sparse() -> Vec<u8> {
        let mut b = header_bytes(1, FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT, 32, 8, 3);
        set_le32(&mut b, 44, 4); // numGTEsPerGT
        b[48..56].copy_from_slice(&1u64.to_le_bytes()); // rgdOffset
        b[64..72].copy_from_slice(&5u64.to_le_bytes()); // overHead
        b.resize(21 * 512, 0);
        set_le32(&mut b, 512, 2); // RGD[0] -> sector 2
        set_le32(&mut b, 3 * 512, 4); // GD[0] -> sector 4
        for t in [2, 4] {
            set_le32(&mut b, t * 512, 5); // grain 0 at sector 5
            set_le32(&mut b, t * 512 + 8, 13); // grain 2 at sector 13
        }
        b[5 * 512..13 * 512].fill(0x11);
        b[13 * 512..].fill(0x22);
        b
    }

    fn run(b: Vec<u8>, deep: bool) -> CheckReport {
        let opts = OpenOptions::default();
        let ctx = OpenContext::detached(&opts);
        check(
            Arc::new(MemStorage::from_vec(b)),
            None,
            &ctx,
            &VmdkCheckOptions { deep },
        )
        .unwrap()
    }

    #[test]
    fn clean_sparse_extent() {
        let r = run(sparse(), false);
        assert!(r.is_clean() && r.warnings == 0, "{r}");
        assert_eq!((r.total_clusters, r.allocated_clusters), (4, 2));
        assert_eq!(r.fragmented_clusters, 0);
    }

    #[test]
    fn redundant_tables() {
        // A differing redundant entry: a corruption naming both values.
        let mut b = sparse();
        set_le32(&mut b, 2 * 512 + 8, 14);
        let r = run(b, false);
        let p = r.problems.iter().find(|p| p.kind == K::Corruption).unwrap();
        assert!(p.message.contains("grain table 0 (at 0x800) and its redundant copy (at 0x400) differ in 1 entries, the first being entry 2"), "{r}");
        assert_eq!(
            (p.expected.as_deref(), p.found.as_deref()),
            (Some("the redundant entry 0xe"), Some("0xd"))
        );
        // An empty redundant table: a warning, the primary is read.
        let mut b = sparse();
        b[2 * 512..3 * 512].fill(0);
        let r = run(b, false);
        assert!(
            r.is_clean() && r.has(K::Warning, "empty redundant copy"),
            "{r}"
        );
        // An unused redundant directory: a warning.
        let mut b = sparse();
        set_le32(&mut b, 512, 0);
        let r = run(b, false);
        assert!(
            r.is_clean() && r.has(K::Warning, "all zero (unused)"),
            "{r}"
        );
        // Grains only in the redundant table: a corruption.
        let mut b = sparse();
        b[4 * 512..5 * 512].fill(0);
        let r = run(b, false);
        assert!(r.has(K::Corruption, "those grains are not read"), "{r}");
        // A redundant directory past the end of the file.
        let mut b = sparse();
        b[48..56].copy_from_slice(&1000u64.to_le_bytes());
        let r = run(b, false);
        assert!(
            r.has(
                K::Corruption,
                "the redundant grain directory (1 entries at sector 0x3e8) lies outside the file"
            ),
            "{r}"
        );
    }

    #[test]
    fn grain_entries() {
        // Past the end of the file (both tables agree).
        let mut b = sparse();
        for t in [2, 4] {
            set_le32(&mut b, t * 512, 1000);
        }
        let r = run(b, false);
        let p = r.problems.iter().find(|p| p.kind == K::Corruption).unwrap();
        assert_eq!(
            (p.structure.as_deref(), p.offset),
            (Some("grain table"), 0x800),
            "{r}"
        );
        assert!(
            p.message.contains("grain 0 at 0x7d000 lies past the end"),
            "{r}"
        );
        assert_eq!(p.found.as_deref(), Some("0x7e000"));
        // One grain referenced twice; the other one leaked.
        let mut b = sparse();
        for t in [2, 4] {
            set_le32(&mut b, t * 512 + 8, 5);
        }
        let r = run(b, false);
        assert!(r.has(K::Corruption, "grain 0 (grain table 0, entry 0) and grain 2 (grain table 0, entry 2) point at the same data at 0xa00"), "{r}");
        assert!(r.has(K::Leak, "bytes 0x1a00..0x2a00"), "{r}");
        // A grain over the metadata.
        let mut b = sparse();
        for t in [2, 4] {
            set_le32(&mut b, t * 512 + 8, 3);
        }
        let r = run(b, false);
        assert!(r.has(K::Corruption, "overlaps the grain directory"), "{r}");
        // A grain table past the end.
        let mut b = sparse();
        set_le32(&mut b, 3 * 512, 500);
        let r = run(b, false);
        assert!(
            r.has(
                K::Corruption,
                "grain directory entry 0 (at 0x600) points at sector 0x1f4"
            ),
            "{r}"
        );
        // The descriptor says more sectors than the header's capacity.
        let mut c = Checker {
            opts: &VmdkCheckOptions::default(),
            report: CheckReport::new("vmdk"),
            file: Some("x-s001.vmdk".into()),
        };
        c.sparse(&MemStorage::from_vec(sparse()), 21 * 512, Some(64))
            .unwrap();
        assert!(
            c.report.has(K::Corruption, "capacity is smaller"),
            "{}",
            c.report
        );
        assert_eq!(c.report.problems[0].file.as_deref(), Some("x-s001.vmdk"));
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    /// A streamOptimized extent in VMware's layout, sector by sector: header (gdOffset all
    /// ones, overHead 2), an empty sector; grain 0's marker and zlib data; a grain table marker and table;
    /// a grain directory marker and directory; a footer marker and footer; end of stream.
    fn stream() -> Vec<u8> {
        let flags = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS;
        let mut h = header_bytes(3, flags, 16, 8, GD_AT_END);
        set_le32(&mut h, 44, 4); // numGTEsPerGT
        h[64..72].copy_from_slice(&2u64.to_le_bytes()); // overHead
        let data = zlib(&[0x42; 4096]);
        let mut b = h.clone();
        b.resize(1024, 0);
        let mut marker = vec![0u8; 12];
        marker[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes()); // LBA 0, size
        b.extend_from_slice(&marker);
        b.extend_from_slice(&data);
        b.resize(b.len().next_multiple_of(512), 0);
        let meta = |b: &mut Vec<u8>, sectors: u64, kind: u32| {
            let mut m = vec![0u8; 512];
            m[0..8].copy_from_slice(&sectors.to_le_bytes());
            m[12..16].copy_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&m);
        };
        meta(&mut b, 1, MARKER_GT);
        let gt = b.len() / 512;
        let mut t = vec![0u8; 512];
        set_le32(&mut t, 0, 2); // grain 0's marker at sector 2 (1 would mean a zeroed grain)
        b.extend_from_slice(&t);
        meta(&mut b, 1, MARKER_GD);
        let gd = b.len() / 512;
        let mut d = vec![0u8; 512];
        set_le32(&mut d, 0, gt as u32);
        b.extend_from_slice(&d);
        meta(&mut b, 1, MARKER_FOOTER);
        let mut f = h;
        f[56..64].copy_from_slice(&(gd as u64).to_le_bytes()); // the real gdOffset
        b.extend_from_slice(&f);
        meta(&mut b, 0, MARKER_EOS);
        b
    }

    #[test]
    fn stream_markers_footer_and_grains() {
        let b = stream();
        let r = run(b.clone(), true);
        assert!(r.is_clean() && r.warnings == 0, "{r}");
        assert_eq!((r.allocated_clusters, r.compressed_clusters), (1, 1));
        // No end-of-stream marker.
        let r = run(b[..b.len() - 512].to_vec(), false);
        assert!(
            r.has(K::Corruption, "without an end-of-stream marker"),
            "{r}"
        );
        // The grain marker names another LBA.
        let mut x = b.clone();
        x[1024] = 8;
        let r = run(x, false);
        let p = r
            .problems
            .iter()
            .find(|p| p.structure.as_deref() == Some("grain marker"))
            .unwrap();
        assert_eq!(
            (p.offset, p.expected.as_deref(), p.found.as_deref()),
            (1024, Some("LBA 0"), Some("LBA 8")),
            "{r}"
        );
        // The footer differs from the header in its grain size.
        let mut x = b.clone();
        let footer = x.len() - 1024;
        x[footer + 20] = 16;
        let r = run(x, false);
        assert!(
            r.has(K::Corruption, "differs from the header in grainSize"),
            "{r}"
        );
        // Damaged deflate data: found only when inflating.
        let mut x = b.clone();
        x[1024 + 12 + 4] ^= 0xff;
        assert!(run(x.clone(), false).is_clean());
        let r = run(x, true);
        assert!(r.has(K::Corruption, "compressed grain at 0x400"), "{r}");
        // Nothing after the end-of-stream marker but zeros; data there is a leak.
        let mut x = b.clone();
        x.extend_from_slice(&[0u8; 1024]);
        assert!(run(x.clone(), false).is_clean());
        x.push(1);
        let r = run(x, false);
        assert!(r.has(K::Leak, "after the end-of-stream marker"), "{r}");
    }

    #[test]
    fn garbage_never_panics() {
        let bases = [sparse(), stream()];
        let mut x = 0xdead_beef_u64;
        for i in 0..4000 {
            let mut b = bases[i % 2].clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x >> 8) as usize % b.len();
                b[at] = x as u8;
            }
            if x % 7 == 0 {
                b.truncate((x >> 20) as usize % b.len());
            }
            let opts = OpenOptions::default();
            let _ = check(
                Arc::new(MemStorage::from_vec(b)),
                None,
                &OpenContext::detached(&opts),
                &VmdkCheckOptions { deep: true },
            );
        }
    }
}
