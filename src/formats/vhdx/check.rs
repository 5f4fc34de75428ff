//! Structural check of a VHDX (`diskconv check`), read-only.
//!
//! What is checked ([MS-VHDX] 2.2 to 2.6):
//! - the file type identifier `vhdxfile`;
//! - both headers: signature, CRC-32C, version, log placement; which one is current (the valid
//!   one with the higher sequence number). One invalid header while the other is valid is a
//!   **warning**: the format keeps two headers precisely so that an update torn by a crash
//!   leaves one intact, readers use the other, and the next writer rewrites it. `qemu-img
//!   check` reports such an image as clean too (exit 0). Both invalid is a corruption;
//! - the log: inside the file; when the current header names a log GUID, the log is searched
//!   for its active sequence and that sequence replayed in memory, validating every entry
//!   (signature, CRC-32C, descriptors, data sectors). A log that needs replaying is a
//!   **warning** (diskconv replays it in memory whenever it reads the image; Hyper-V or
//!   `qemu-img check -r all` replay it into the file); a damaged active log is a corruption.
//!   Everything below is checked as the log leaves it, as a reader sees it;
//! - both region tables: signature, CRC-32C, entries, known required regions, equal to each
//!   other; the BAT and metadata regions inside the file, not overlapping the log, the header
//!   area or each other;
//! - the metadata table (it has no checksum): the required items present and in range (block
//!   size, sector sizes, virtual size, parent locator of differencing disks), items inside the
//!   region and not overlapping each other;
//! - the BAT: every payload and sector bitmap entry in a state valid for the kind of disk,
//!   reserved bits clear, present blocks at or after 1 MiB, inside the file, overlapping
//!   neither the metadata structures nor each other; partially present blocks with their
//!   sector bitmap present;
//! - space no block uses is allowed by the format (qemu aligns its first block, Hyper-V keeps
//!   space it trimmed): a note when it could hold whole blocks, never a leak.
//!
//! Classification: see [`crate::formats::check`].

use super::MIB;
use super::bat::{self, BatEntry};
use super::header::{FILE_SIGNATURE, HEADER_OFFSETS, HEADER_SIZE, VhdxHeader};
use super::log::{self, LogOverlay, Sector};
use super::metadata::{self, TABLE_SIZE, VhdxMetadata};
use super::region::{self, REGION_OFFSETS, REGION_TABLE_SIZE};
use crate::bytes::{le16, le32};
use crate::error::{Error, Result};
use crate::formats::check::{CheckProblem, CheckReport, ProblemKind, SpaceMap};
use crate::formats::error::FormatError;
use crate::storage::Storage;

/// Largest BAT checked (the reader's limit too).
const MAX_BAT_BYTES: u64 = 1 << 29;
/// Largest metadata region read.
const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Most overlaps listed.
const MAX_OVERLAPS: usize = 10_000;
/// Bits 3 to 19 of a BAT entry are reserved.
const BAT_RESERVED: u64 = 0x000f_fff8;

/// Who uses a stretch of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    HeaderArea,
    Log,
    Metadata,
    BatRegion,
    /// A payload block (BAT index, block number).
    Payload(u64, u64),
    /// A sector bitmap block (BAT index, chunk number).
    Bitmap(u64, u64),
}

impl Owner {
    fn describe(self) -> String {
        match self {
            Owner::HeaderArea => "the header area (first MiB)".into(),
            Owner::Log => "the log".into(),
            Owner::Metadata => "the metadata region".into(),
            Owner::BatRegion => "the BAT region".into(),
            Owner::Payload(i, b) => format!("payload block {b} (BAT entry {i})"),
            Owner::Bitmap(i, c) => format!("sector bitmap block {c} (BAT entry {i})"),
        }
    }

    fn bat_index(self) -> Option<u64> {
        match self {
            Owner::Payload(i, _) | Owner::Bitmap(i, _) => Some(i),
            _ => None,
        }
    }
}

/// The file as a reader sees it: stored bytes with the replayed log sectors laid over them;
/// bytes past the end of the stored file read as zeros up to the size the log asks for.
struct View<'a> {
    storage: &'a dyn Storage,
    len: u64,
    overlay: LogOverlay,
}

impl View<'_> {
    fn size(&self) -> u64 {
        self.len.max(self.overlay.min_file_size)
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        let stored = end.min(self.len).saturating_sub(offset) as usize;
        if stored > 0 {
            self.storage.read_exact_at(&mut buf[..stored], offset)?;
        }
        buf[stored..].fill(0);
        let first = offset & !(log::SECTOR as u64 - 1);
        for (&s, sector) in self.overlay.sectors.range(first..end) {
            let lo = s.max(offset);
            let hi = (s + log::SECTOR as u64).min(end);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match sector {
                Sector::Zero => dst.fill(0),
                Sector::Data(d) => dst.copy_from_slice(&d[(lo - s) as usize..(hi - s) as usize]),
            }
        }
        Ok(())
    }
}

struct Checker<'a> {
    view: View<'a>,
    report: CheckReport,
}

/// Checks the structure of the VHDX in `storage`, read-only.
///
/// Returns `Err` only when the file is not a VHDX (no file type identifier) or cannot be read
/// at all; everything else is in the report.
pub fn check(storage: &dyn Storage) -> Result<CheckReport> {
    let len = storage
        .len()
        .map_err(|e| Error::io("getting the length of the VHDX", e))?;
    let mut sig = [0u8; 8];
    let n = storage
        .read_at(&mut sig, 0)
        .map_err(|e| Error::io("reading the VHDX file type identifier", e))?;
    if n < 8 || &sig != FILE_SIGNATURE {
        return Err(super::invalid(
            "file type identifier",
            0,
            format!("'vhdxfile' expected, found {:02x?}", &sig[..n]),
        )
        .into());
    }
    let mut c = Checker {
        view: View {
            storage,
            len,
            overlay: LogOverlay::default(),
        },
        report: CheckReport::new("vhdx"),
    };
    c.run()?;
    Ok(c.report)
}

impl Checker<'_> {
    fn add(&mut self, kind: ProblemKind, what: &str, offset: u64, msg: String) {
        self.report.add(CheckProblem::new(kind, what, offset, msg));
    }

    fn corrupt(&mut self, what: &str, offset: u64, msg: String) {
        self.add(ProblemKind::Corruption, what, offset, msg);
    }

    fn warn(&mut self, what: &str, offset: u64, msg: String) {
        self.add(ProblemKind::Warning, what, offset, msg);
    }

    fn read(&mut self, offset: u64, len: usize, what: &str) -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        match self.view.read(&mut b, offset) {
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

    fn run(&mut self) -> Result<()> {
        let len = self.view.len;
        let need = REGION_OFFSETS[1] + REGION_TABLE_SIZE as u64;
        if len < need {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "file",
                    0,
                    format!(
                        "VHDX file of {len:#x} bytes is truncated: the headers and region tables alone need {need:#x}"
                    ),
                )
                .values(format!("at least {need:#x} bytes"), format!("{len:#x}")),
            );
            return Ok(());
        }
        let Some(header) = self.headers() else {
            return Ok(());
        };
        let log_region = self.log(&header);
        let Some(regions) = self.region_tables() else {
            return Ok(());
        };

        let size = self.view.size();
        let mut space: SpaceMap<Owner> = SpaceMap::new(usize::MAX);
        space.add(0, MIB, Owner::HeaderArea);
        if let Some((o, l)) = log_region {
            space.add(o, l, Owner::Log);
        }
        let Some(meta) = self.metadata_region(&regions, size, &mut space) else {
            return Ok(());
        };
        let bat_off = regions.bat.offset;
        let Some(table) = self.read_bat(&regions, &meta, size)? else {
            return Ok(());
        };
        self.bat(&table, bat_off, meta.chunk_ratio(), &meta, &mut space);
        self.space_findings(space, size, bat_off);
        Ok(())
    }

    /// Places the metadata and BAT regions in `space`, reads and checks the metadata region;
    /// `None` when it cannot be read or parsed (reported).
    fn metadata_region(
        &mut self,
        regions: &region::VhdxRegions,
        size: u64,
        space: &mut SpaceMap<Owner>,
    ) -> Option<VhdxMetadata> {
        let md = regions.metadata;
        let (md_off, md_len) = (md.offset, u64::from(md.length));
        let md_ok = md_off.checked_add(md_len).is_some_and(|e| e <= size);
        if !md_ok {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "region table",
                    REGION_OFFSETS[0],
                    format!(
                        "VHDX metadata region at {md_off:#x} ({md_len:#x} bytes) runs past the end of the file"
                    ),
                )
                .values(format!("an end at most at {size:#x}"), format!("{:#x}", md_off.saturating_add(md_len))),
            );
        } else {
            space.add(md_off, md_len, Owner::Metadata);
        }
        let (bat_off, bat_len) = (regions.bat.offset, u64::from(regions.bat.length));
        space.add(
            bat_off,
            bat_len.min(size.saturating_sub(bat_off)),
            Owner::BatRegion,
        );
        if !md_ok {
            return None;
        }
        if md_len > MAX_METADATA_BYTES {
            self.add(
                ProblemKind::CheckError,
                "metadata region",
                md_off,
                format!(
                    "VHDX metadata region at {md_off:#x}: {md_len:#x} bytes is too large to check"
                ),
            );
            return None;
        }
        let mdb = self.read(md_off, md_len as usize, "metadata region")?;
        let meta = match metadata::parse(&mdb, md_off) {
            Ok(m) => m,
            Err(e @ FormatError::Unsupported { .. }) => {
                self.add(
                    ProblemKind::CheckError,
                    "metadata table",
                    md_off,
                    format!("{e}: the disk cannot be read or checked further"),
                );
                return None;
            }
            Err(e) => {
                self.corrupt("metadata table", md_off, e.to_string());
                return None;
            }
        };
        self.metadata_items(&mdb, md_off);
        if meta.page83.is_none() {
            self.warn(
                "metadata table",
                md_off,
                format!("VHDX metadata table at {md_off:#x}: the page 83 data item (the disk's SCSI identifier) is missing"),
            );
        }
        if meta.has_parent {
            self.report
                .notes
                .push("a differencing disk (its parent is not checked)".into());
        }
        Some(meta)
    }

    /// Checks that the BAT region holds the disk's entries and lies in the file, and reads it;
    /// `None` when it does not (reported).
    fn read_bat(
        &mut self,
        regions: &region::VhdxRegions,
        meta: &VhdxMetadata,
        size: u64,
    ) -> Result<Option<Vec<BatEntry>>> {
        let (bat_off, bat_len) = (regions.bat.offset, u64::from(regions.bat.length));
        // The BAT.
        let cr = meta.chunk_ratio();
        let bs = u64::from(meta.block_size);
        let data_blocks = meta.virtual_size.div_ceil(bs);
        let entries = bat::entry_count(data_blocks, cr, meta.has_parent);
        let bat_bytes = entries * 8;
        self.report.cluster_size = bs;
        self.report.total_clusters = data_blocks;
        if bat_bytes > bat_len {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "region table",
                    REGION_OFFSETS[0],
                    format!(
                        "VHDX BAT region at {bat_off:#x} is too small for the disk's {entries} BAT entries"
                    ),
                )
                .values(format!("at least {bat_bytes:#x} bytes"), format!("{bat_len:#x}")),
            );
            return Ok(None);
        }
        if bat_bytes > MAX_BAT_BYTES {
            return Err(
                super::unsupported(format!("checking a BAT of {bat_bytes:#x} bytes")).into(),
            );
        }
        if bat_off.checked_add(bat_bytes).is_none_or(|e| e > size) {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "BAT",
                    bat_off,
                    format!(
                        "VHDX BAT at {bat_off:#x} ({entries} entries) runs past the end of the file"
                    ),
                )
                .values(
                    format!("an end at most at {size:#x}"),
                    format!("{:#x}", bat_off + bat_bytes),
                ),
            );
            return Ok(None);
        }
        let Some(raw) = self.read(bat_off, bat_bytes as usize, "BAT") else {
            return Ok(None);
        };
        Ok(Some(bat::decode(&raw, entries as usize)))
    }

    /// Overlapping structures, and a note on unused space that could hold whole blocks.
    fn space_findings(&mut self, space: SpaceMap<Owner>, size: u64, bat_off: u64) {
        let sp = space.finish(MIB, size, MAX_OVERLAPS);
        for (a, b) in sp.overlaps {
            let at = b
                .owner
                .bat_index()
                .or(a.owner.bat_index())
                .map_or(b.start, |i| bat_off + 8 * i);
            let msg = match (a.owner, b.owner) {
                (Owner::Payload(i, _), Owner::Payload(j, _)) if a.start == b.start => format!(
                    "VHDX BAT entries {i} and {j} point at the same block at {:#x}: writing one overwrites the other",
                    a.start
                ),
                _ => format!(
                    "VHDX: {} ({:#x}..{:#x}) overlaps {} ({:#x}..{:#x})",
                    b.owner.describe(),
                    b.start,
                    b.end,
                    a.owner.describe(),
                    a.start,
                    a.end
                ),
            };
            let what = if b.owner.bat_index().is_some() || a.owner.bat_index().is_some() {
                "BAT"
            } else {
                "region table"
            };
            self.corrupt(what, at, msg);
        }
        // The format allows space no block uses (qemu aligns its first block, Hyper-V keeps
        // space it trimmed): not a leak, but worth a note when it could hold whole blocks.
        let bs = self.report.cluster_size.max(MIB);
        let (free, stretches) = sp
            .gaps
            .iter()
            .filter(|g| g.end - g.start >= bs)
            .fold((0u64, 0u64), |(t, n), g| (t + (g.end - g.start), n + 1));
        if free > 0 {
            self.report.notes.push(format!(
                "{} MiB of the file in {stretches} stretches are used by no block (free space; a conversion reclaims it)",
                free / MIB
            ));
        }
        self.report.image_end_offset = sp.end;
    }

    /// Both headers; returns the current one, or `None` (reported) when neither is valid.
    fn headers(&mut self) -> Option<VhdxHeader> {
        let mut parsed = Vec::new();
        for (i, &off) in HEADER_OFFSETS.iter().enumerate() {
            let h = self
                .read(off, HEADER_SIZE, "header")
                .map(|b| VhdxHeader::parse(&b, off));
            parsed.push((i + 1, off, h));
        }
        let valid: Vec<(usize, u64, VhdxHeader)> = parsed
            .iter()
            .filter_map(|(n, o, h)| match h {
                Some(Ok(h)) => Some((*n, *o, h.clone())),
                _ => None,
            })
            .collect();
        for (n, off, h) in &parsed {
            if let Some(Err(e)) = h {
                let kind = if valid.is_empty() {
                    ProblemKind::Corruption
                } else {
                    ProblemKind::Warning
                };
                let tail = if valid.is_empty() {
                    "; neither header is valid: the image cannot be opened"
                } else {
                    "; the other header is valid and current (an update torn by a crash leaves this state; the next write rewrites this header)"
                };
                self.add(kind, "header", *off, format!("header {n}: {e}{tail}"));
            }
        }
        let current = match valid.as_slice() {
            [] => return None,
            [one] => one.clone(),
            [a, b] => {
                if a.2.sequence_number == b.2.sequence_number && a.2 != b.2 {
                    self.warn(
                        "header",
                        b.1,
                        format!(
                            "VHDX headers 1 and 2 have the same sequence number {} but differ: which one is current is ambiguous (header 1 is used)",
                            a.2.sequence_number
                        ),
                    );
                }
                if b.2.sequence_number > a.2.sequence_number {
                    b.clone()
                } else {
                    a.clone()
                }
            }
            _ => return None,
        };
        self.report.notes.push(format!(
            "current header: {} at {:#x} (sequence number {}){}",
            current.0,
            current.1,
            current.2.sequence_number,
            if current.2.log_guid.is_nil() {
                String::new()
            } else {
                format!(", log GUID {}", current.2.log_guid)
            }
        ));
        Some(current.2)
    }

    /// Checks the log's placement and, when the header names a log GUID, replays the active
    /// sequence into the view. Returns the log's place when it lies inside the file.
    fn log(&mut self, h: &VhdxHeader) -> Option<(u64, u64)> {
        let (off, len) = (h.log_offset, u64::from(h.log_length));
        let file = self.view.len;
        let active = !h.log_guid.is_nil();
        if len == 0 {
            if active {
                self.corrupt(
                    "header",
                    HEADER_OFFSETS[0],
                    "VHDX current header names a log GUID but a log of 0 bytes".into(),
                );
            }
            return None;
        }
        if off.checked_add(len).is_none_or(|e| e > file) {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "log",
                    off,
                    format!("VHDX log at {off:#x} ({len:#x} bytes) runs past the end of the file"),
                )
                .values(
                    format!("an end at most at {file:#x}"),
                    format!("{:#x}", off.saturating_add(len)),
                ),
            );
            return None;
        }
        if !active {
            return Some((off, len));
        }
        if h.log_length > log::MAX_LOG {
            self.add(
                ProblemKind::CheckError,
                "log",
                off,
                format!(
                    "VHDX log at {off:#x}: {len:#x} bytes is more than the {:#x} this version replays; the log was not checked",
                    log::MAX_LOG
                ),
            );
            return Some((off, len));
        }
        let Some(bytes) = self.read(off, len as usize, "log") else {
            return Some((off, len));
        };
        match log::replay(&bytes, off, &h.log_guid) {
            Ok(o) if o.entries == 0 => {
                self.report.notes.push(format!(
                    "the header names log GUID {} but the log at {off:#x} holds no valid sequence for it: nothing to replay",
                    h.log_guid
                ));
            }
            Ok(o) => {
                self.warn(
                    "log",
                    off,
                    format!(
                        "VHDX log at {off:#x} holds {} valid entries ({} sectors) that have not been replayed into the file: diskconv replays them in memory when it reads the image; Hyper-V or `qemu-img check -r all` write them into the file",
                        o.entries,
                        o.sectors.len()
                    ),
                );
                self.view.overlay = o;
            }
            Err(e) => self.corrupt(
                "log",
                off,
                format!("{e} (the active log sequence is damaged: the disk as it should be after the last update cannot be rebuilt)"),
            ),
        }
        Some((off, len))
    }

    /// Both region tables: valid and equal. Returns the first valid one.
    fn region_tables(&mut self) -> Option<region::VhdxRegions> {
        let mut tables = Vec::new();
        for (i, &off) in REGION_OFFSETS.iter().enumerate() {
            let Some(b) = self.read(off, REGION_TABLE_SIZE, "region table") else {
                tables.push(None);
                continue;
            };
            match region::parse(&b, off) {
                Ok(r) => tables.push(Some((r, b))),
                Err(e @ FormatError::Unsupported { .. }) => {
                    self.add(
                        ProblemKind::CheckError,
                        "region table",
                        off,
                        format!(
                            "region table {}: {e}: the disk cannot be read or checked",
                            i + 1
                        ),
                    );
                    return None;
                }
                Err(e) => {
                    self.corrupt("region table", off, format!("region table {}: {e}", i + 1));
                    tables.push(None);
                }
            }
        }
        if let [Some((_, a)), Some((_, b))] = tables.as_slice() {
            // Header (16 bytes) and the entries the first table counts.
            let n = 16 + 32 * (le32(a, 8) as usize).min(region::MAX_ENTRIES as usize);
            if a[..n] != b[..n] || le32(a, 8) != le32(b, 8) {
                self.corrupt(
                    "region table",
                    REGION_OFFSETS[1],
                    format!(
                        "VHDX region tables 1 ({:#x}) and 2 ({:#x}) differ: both are valid but name different regions",
                        REGION_OFFSETS[0], REGION_OFFSETS[1]
                    ),
                );
            }
        }
        tables.into_iter().flatten().next().map(|(r, _)| r)
    }

    /// Item placement in the metadata table (parse checked presence and values).
    fn metadata_items(&mut self, b: &[u8], off: u64) {
        let count = usize::from(le16(b, 10)).min(2047);
        let mut items: Vec<(usize, usize, usize)> = Vec::new();
        for i in 0..count {
            let at = 32 + 32 * i;
            if b[at..at + 16] == [0; 16] {
                continue;
            }
            let (io, il) = (le32(b, at + 16) as usize, le32(b, at + 20) as usize);
            if il == 0 {
                continue;
            }
            if io < TABLE_SIZE || io.checked_add(il).is_none_or(|e| e > b.len()) {
                self.corrupt(
                    "metadata table",
                    off + at as u64,
                    format!(
                        "VHDX metadata table entry {i} (at {:#x}): item at {io:#x}+{il:#x} lies outside the region ({:#x} bytes, after the 64 KiB table)",
                        off + at as u64,
                        b.len()
                    ),
                );
                continue;
            }
            for &(j, jo, jl) in &items {
                if io < jo + jl && jo < io + il {
                    self.corrupt(
                        "metadata table",
                        off + at as u64,
                        format!(
                            "VHDX metadata table entry {i}: item at {io:#x}+{il:#x} overlaps the item of entry {j} at {jo:#x}+{jl:#x}"
                        ),
                    );
                }
            }
            items.push((i, io, il));
        }
    }

    fn bat(
        &mut self,
        table: &[BatEntry],
        bat_off: u64,
        cr: u64,
        meta: &metadata::VhdxMetadata,
        space: &mut SpaceMap<Owner>,
    ) {
        let size = self.view.size();
        let bs = u64::from(meta.block_size);
        let diff = meta.has_parent;
        let mut not_allocated_fixed = 0u64;
        let mut prev_end: Option<u64> = None;
        for (i, e) in table.iter().enumerate() {
            let i = i as u64;
            let at = bat_off + 8 * i;
            let is_bitmap = (i + 1) % (cr + 1) == 0;
            let state = e.state();
            let off = e.offset();
            if e.0 & BAT_RESERVED != 0 {
                self.warn(
                    "BAT",
                    at,
                    format!(
                        "VHDX BAT entry {i} (at {at:#x}) has reserved bits set: {:#018x}",
                        e.0
                    ),
                );
            }
            if is_bitmap {
                let chunk = i / (cr + 1);
                match state {
                    bat::PAYLOAD_NOT_PRESENT => {}
                    bat::SB_PRESENT => {
                        if !diff {
                            self.warn(
                                "BAT",
                                at,
                                format!(
                                    "VHDX BAT entry {i} (at {at:#x}): a sector bitmap block is present in a disk without a parent (it is never read)"
                                ),
                            );
                        }
                        self.claim(i, at, off, MIB, Owner::Bitmap(i, chunk), size, space);
                    }
                    s => self.report.add(
                        CheckProblem::new(
                            ProblemKind::Corruption,
                            "BAT",
                            at,
                            format!("VHDX BAT entry {i} (at {at:#x}, the sector bitmap of chunk {chunk}) has an invalid state"),
                        )
                        .values("0 (not present) or 6 (present)", s),
                    ),
                }
                continue;
            }
            let block = i - i / (cr + 1);
            let blen = bs.min(meta.virtual_size.saturating_sub(block * bs));
            match state {
                bat::PAYLOAD_NOT_PRESENT
                | bat::PAYLOAD_UNDEFINED
                | bat::PAYLOAD_ZERO
                | bat::PAYLOAD_UNMAPPED => {
                    // Whatever offset these states keep is not read: not claimed either.
                    if meta.leave_blocks_allocated {
                        not_allocated_fixed += 1;
                    }
                }
                bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT => {
                    if state == bat::PAYLOAD_PARTIALLY_PRESENT {
                        if !diff {
                            self.report.add(
                                CheckProblem::new(
                                    ProblemKind::Corruption,
                                    "BAT",
                                    at,
                                    format!(
                                        "VHDX BAT entry {i} (at {at:#x}, block {block}) is partially present (7), which only a differencing disk may be"
                                    ),
                                )
                                .values("0, 1, 2, 3 or 6", state),
                            );
                            continue;
                        }
                        let bi = bat::bitmap_index(block, cr) as usize;
                        if table.get(bi).is_none_or(|b| b.state() != bat::SB_PRESENT) {
                            self.corrupt(
                                "BAT",
                                at,
                                format!(
                                    "VHDX BAT entry {i} (at {at:#x}, block {block}) is partially present but the sector bitmap block of its chunk (entry {bi}) is not present: which sectors it holds is unknown"
                                ),
                            );
                        }
                    }
                    if self.claim(i, at, off, blen, Owner::Payload(i, block), size, space) {
                        self.report.allocated_clusters += 1;
                        if prev_end.is_some_and(|p| p != off) {
                            self.report.fragmented_clusters += 1;
                        }
                        prev_end = Some(off + bs);
                    }
                }
                s => self.report.add(
                    CheckProblem::new(
                        ProblemKind::Corruption,
                        "BAT",
                        at,
                        format!("VHDX BAT entry {i} (at {at:#x}, block {block}) has an invalid payload state"),
                    )
                    .values(if diff { "0, 1, 2, 3, 6 or 7" } else { "0, 1, 2, 3 or 6" }, s),
                ),
            }
        }
        if not_allocated_fixed > 0 {
            self.warn(
                "BAT",
                bat_off,
                format!(
                    "fixed VHDX: {not_allocated_fixed} payload blocks are not fully present (a fixed disk keeps every block allocated)"
                ),
            );
        }
    }

    /// Checks that a present block at `off` (`len` bytes used) lies inside the file after the
    /// first MiB, and claims it (a whole block when the file holds one). Returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &mut self,
        i: u64,
        at: u64,
        off: u64,
        len: u64,
        owner: Owner,
        size: u64,
        space: &mut SpaceMap<Owner>,
    ) -> bool {
        if off < MIB || off.checked_add(len).is_none_or(|e| e > size) {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "BAT",
                    at,
                    format!(
                        "VHDX BAT entry {i} (at {at:#x}): {} at {off:#x} ({len:#x} bytes) lies outside the file",
                        owner.describe()
                    ),
                )
                .values(format!("1 MiB..{size:#x}"), format!("{off:#x}..{:#x}", off.saturating_add(len))),
            );
            return false;
        }
        let whole = match owner {
            Owner::Payload(..) => self.report.cluster_size.max(len),
            _ => len,
        };
        space.add(off, whole.min(size - off), owner);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bytes::le64;
    use crate::formats::check::ProblemKind as K;
    use crate::formats::vhdx::set_checksum;
    use crate::formats::vhdx::writer::{VhdxWriteOptions, VhdxWriter};
    use crate::image::ImageWriter;
    use crate::storage::MemStorage;

    /// A 4 MiB dynamic VHDX of 1 MiB blocks from our writer, blocks 0 and 2 written; and the
    /// offset of its BAT.
    fn image() -> (Vec<u8>, u64) {
        let mem = Arc::new(MemStorage::new());
        let opts = VhdxWriteOptions {
            block_size: 1 << 20,
            ..Default::default()
        };
        let mut w = Box::new(VhdxWriter::new(mem.clone(), 4 << 20, &opts).unwrap());
        w.write_at(&[0x5a; 4096], 0).unwrap();
        w.write_at(&[0xa5; 4096], 2 << 20).unwrap();
        w.finish().unwrap();
        let b = mem.to_vec();
        let r = region::parse(&b[0x30000..0x40000], 0x30000).unwrap();
        (b, r.bat.offset)
    }

    fn run(b: Vec<u8>) -> CheckReport {
        check(&MemStorage::from_vec(b)).unwrap()
    }

    #[test]
    fn clean_image() {
        let (b, _) = image();
        let r = run(b);
        assert!(r.is_clean() && r.warnings == 0, "{r}");
        assert_eq!((r.total_clusters, r.allocated_clusters), (4, 2));
        assert!(
            r.notes.iter().any(|n| n.starts_with("current header")),
            "{r}"
        );
    }

    #[test]
    fn headers() {
        let (mut b, _) = image();
        b[0x10000 + 100] ^= 1; // header 1: CRC no longer matches
        let r = run(b.clone());
        assert!(r.is_clean(), "{r}");
        let p = &r.problems[0];
        assert_eq!((p.kind, p.offset), (K::Warning, 0x10000));
        assert!(
            p.message.contains("checksum") && p.message.contains("current"),
            "{r}"
        );
        b[0x20000 + 100] ^= 1; // and header 2
        let r = run(b);
        assert_eq!(r.corruptions, 2, "{r}");
        assert!(r.has(K::Corruption, "neither header is valid"), "{r}");
        // Not a VHDX at all: the check cannot run.
        assert!(check(&MemStorage::from_vec(vec![0; 4096])).is_err());
    }

    #[test]
    fn region_tables() {
        let (mut b, _) = image();
        // Both valid (CRC right) but one says its first region is not required.
        let t = 0x40000;
        let n = le32(&b, t + 8) as usize;
        let e = (0..n).map(|i| t + 16 + 32 * i).next().unwrap();
        b[e + 28] ^= 1; // the required flag of the first entry
        set_checksum(&mut b[t..t + REGION_TABLE_SIZE], 4);
        let r = run(b.clone());
        assert!(
            r.has(
                K::Corruption,
                "region tables 1 (0x30000) and 2 (0x40000) differ"
            ),
            "{r}"
        );
        // A damaged first table: the second is used and the damage reported.
        let (mut b, _) = image();
        b[0x30000 + 20] ^= 1;
        let r = run(b);
        assert_eq!(r.corruptions, 1, "{r}");
        assert!(r.has(K::Corruption, "region table 1"), "{r}");
    }

    #[test]
    fn bat_entries() {
        let (base, bat) = image();
        let at = bat as usize;
        let e0 = le64(&base, at);
        assert_eq!(e0 & 7, 6);
        // Invalid state; partially present without a parent; past the end; one block twice.
        for (state_or_entry, entry, needle) in [
            ((e0 & !7) | 4, 0, "invalid payload state"),
            ((e0 & !7) | 7, 0, "partially present (7)"),
            ((1 << 40) | 6, 0, "outside the file"),
            (e0, 1, "point at the same block"),
            ((e0 & !7) | 6 | 0x100, 3, "reserved bits"),
        ] {
            let mut b = base.clone();
            b[at + 8 * entry..at + 8 * entry + 8].copy_from_slice(&state_or_entry.to_le_bytes());
            let r = run(b);
            let p = r
                .problems
                .iter()
                .find(|p| p.message.contains(needle))
                .unwrap_or_else(|| panic!("{needle}: {r}"));
            assert_eq!(p.offset, bat + 8 * entry as u64, "{r}");
            assert_eq!(p.structure.as_deref(), Some("BAT"));
        }
    }

    #[test]
    fn log_needing_replay_is_replayed_and_checked() {
        let (mut b, bat) = image();
        let h1 = VhdxHeader::parse(&b[0x10000..0x11000], 0x10000).unwrap();
        let h2 = VhdxHeader::parse(&b[0x20000..0x21000], 0x20000).unwrap();
        let (cur, h) = if h2.sequence_number > h1.sequence_number {
            (0x20000, h2)
        } else {
            (0x10000, h1)
        };
        // One log entry rewriting the BAT's first sector with an invalid state for entry 0.
        let guid = crate::bytes::Guid::from_bytes([0x11u8; 16]);
        let mut sector = b[bat as usize..bat as usize + 4096].to_vec();
        sector[0] = (sector[0] & !7) | 5;
        let entry = log::build_entry(&guid, 1, 0, &[(bat, Some(&sector))]);
        let lo = h.log_offset as usize;
        b[lo..lo + entry.len()].copy_from_slice(&entry);
        let mut nh = h.clone();
        nh.log_guid = guid;
        b[cur..cur + 4096].copy_from_slice(&nh.to_bytes());
        let r = run(b.clone());
        assert!(r.has(K::Warning, "holds 1 valid entries"), "{r}");
        // The BAT is checked as the log leaves it.
        assert!(r.has(K::Corruption, "invalid payload state"), "{r}");
        // A log GUID with no entry for it: a note, nothing to replay.
        let mut b2 = b.clone();
        b2[lo..lo + entry.len()].fill(0);
        let r = run(b2);
        assert!(r.is_clean() && r.warnings == 0, "{r}");
        assert!(
            r.notes.iter().any(|n| n.contains("nothing to replay")),
            "{r}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let (base, _) = image();
        let mut x = 0x9e37_79b9_u64;
        for _ in 0..400 {
            let mut b = base.clone();
            for _ in 0..6 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x >> 8) as usize % 0x400000.min(b.len());
                b[at] = x as u8;
            }
            // Keep the CRCs right half of the time so the deeper checks run.
            if x & 1 == 0 {
                for h in [0x10000, 0x20000] {
                    set_checksum(&mut b[h..h + HEADER_SIZE], 4);
                }
                for t in [0x30000, 0x40000] {
                    set_checksum(&mut b[t..t + REGION_TABLE_SIZE], 4);
                }
            }
            let _ = check(&MemStorage::from_vec(b));
        }
    }
}
