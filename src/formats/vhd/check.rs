//! Structural check of a VHD (`diskconv check`), read-only.
//!
//! What is checked (VHD specification, "Hard Disk Footer Format", "Dynamic Disk Header
//! Format", "Block Allocation Table and Data Blocks"):
//! - the footer at the end: cookie `conectix`, checksum, version, disk type; the 511-byte footer
//!   of old tools is accepted with a warning; a damaged end footer of a dynamic disk is
//!   reported and the copy at offset 0 used instead;
//! - geometry: the stored CHS against the specification's algorithm for the size (a warning:
//!   qemu and Hyper-V accept other geometries), and which of the two gives the virtual size;
//! - fixed disks: the file must be the disk's size plus the footer (shorter: corruption, the
//!   end of the disk is missing; longer: a leak);
//! - dynamic and differencing disks: the copy of the footer at offset 0 must equal the end
//!   footer; the dynamic header (`cxsparse`: cookie, checksum, version, block size, table
//!   size); every BAT entry must point at a block (sector bitmap + data) inside the file, before
//!   the footer, overlapping neither the metadata, the parent locators nor another block;
//!   stretches of the file that could hold a whole block and that nothing uses are leaks;
//! - differencing disks: each parent locator's data inside the file and decodable; the parent
//!   is looked for as the reader does (under the reference policy) and its unique id compared
//!   with the one the header records. A parent that is not found is a warning (this image is
//!   intact; reading it needs the parent); a parent with another unique id is a corruption.
//!
//! Classification: see [`crate::formats::check`]. `qemu-img check` does not check VHD (it says
//! "This image format does not support checks"), so there is no oracle to agree with here.

use std::path::Path;

use super::dynamic::{
    HEADER_SIZE, MAX_BAT_ENTRIES, MAX_LOCATOR_LEN, UNALLOCATED, VhdDynamicHeader, decode_locator,
    platform,
};
use super::footer::{
    COOKIE, Chs, DiskType, FEATURES_RESERVED, FOOTER_SIZE, MAX_CHS_SECTORS, NO_DATA_OFFSET,
    OLD_FOOTER_SIZE, VhdFooter, checksum, fourcc,
};
use super::reader::{load_footer, parent_candidates};
use crate::bytes::{be32, be64, hex};
use crate::error::{Error, Result};
use crate::formats::check::{CheckProblem, CheckReport, ProblemKind, SpaceMap};
use crate::formats::error::FormatError;
use crate::reference::OpenContext;
use crate::storage::{FileStorage, Storage};

/// Most overlaps listed (each pair is one corruption).
const MAX_OVERLAPS: usize = 10_000;

/// Who uses a stretch of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    FooterCopy,
    Header,
    Bat,
    Locator(u8),
    Block(u32),
    Footer,
}

impl Owner {
    fn describe(self) -> String {
        match self {
            Owner::FooterCopy => "the footer copy".into(),
            Owner::Header => "the dynamic header".into(),
            Owner::Bat => "the BAT".into(),
            Owner::Locator(i) => format!("parent locator {i}'s data"),
            Owner::Block(i) => format!("the block of BAT entry {i}"),
            Owner::Footer => "the footer".into(),
        }
    }
}

/// Parses a footer even when its checksum is wrong (the fields are then still used, and the
/// caller reports the checksum). Returns the footer and `(stored, computed)` on a bad checksum.
fn parse_footer(b: &[u8], offset: u64) -> Result<(VhdFooter, Option<(u32, u32)>), FormatError> {
    if b.len() >= 68 && b[..8] == COOKIE {
        let (stored, computed) = (be32(b, 64), checksum(b, 64));
        if stored != computed {
            let mut fixed = b.to_vec();
            fixed[64..68].copy_from_slice(&computed.to_be_bytes());
            return VhdFooter::parse(&fixed, offset).map(|f| (f, Some((stored, computed))));
        }
    }
    VhdFooter::parse(b, offset).map(|f| (f, None))
}

/// Like [`parse_footer`], for the dynamic header (checksum at byte 36).
fn parse_header(
    b: &[u8],
    offset: u64,
) -> Result<(VhdDynamicHeader, Option<(u32, u32)>), FormatError> {
    if b.len() == HEADER_SIZE && b[..8] == super::dynamic::COOKIE {
        let (stored, computed) = (be32(b, 36), checksum(b, 36));
        if stored != computed {
            let mut fixed = b.to_vec();
            fixed[36..40].copy_from_slice(&computed.to_be_bytes());
            return VhdDynamicHeader::parse(&fixed, offset).map(|h| (h, Some((stored, computed))));
        }
    }
    VhdDynamicHeader::parse(b, offset).map(|h| (h, None))
}

/// Fields in which two footers differ: (those that change how the disk reads, the others).
fn footer_differences(a: &VhdFooter, b: &VhdFooter) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut major = Vec::new();
    let mut minor = Vec::new();
    let mut cmp = |same: bool, name: &'static str, matters: bool| {
        if !same {
            if matters {
                major.push(name);
            } else {
                minor.push(name);
            }
        }
    };
    cmp(a.data_offset == b.data_offset, "data offset", true);
    cmp(a.current_size == b.current_size, "current size", true);
    cmp(a.chs == b.chs, "geometry", true);
    cmp(a.disk_type == b.disk_type, "disk type", true);
    cmp(a.unique_id == b.unique_id, "unique id", true);
    cmp(a.creator_app == b.creator_app, "creator application", true);
    cmp(a.features == b.features, "features", false);
    cmp(a.version == b.version, "version", false);
    cmp(a.timestamp == b.timestamp, "timestamp", false);
    cmp(
        a.creator_version == b.creator_version,
        "creator version",
        false,
    );
    cmp(a.creator_os == b.creator_os, "creator host OS", false);
    cmp(a.original_size == b.original_size, "original size", false);
    cmp(a.saved_state == b.saved_state, "saved state", false);
    (major, minor)
}

struct Checker<'a> {
    storage: &'a dyn Storage,
    len: u64,
    report: CheckReport,
}

/// Checks the structure of the VHD in `storage` (found at `path`, for its parent), read-only.
///
/// Returns `Err` only when the file is too short to hold a footer, uses a version this crate
/// does not know, or cannot be read at all; everything else is in the report.
pub fn check(
    storage: &dyn Storage,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<CheckReport> {
    let len = storage
        .len()
        .map_err(|e| Error::io("getting the length of the VHD", e))?;
    if len < FOOTER_SIZE as u64 {
        return Err(FormatError::invalid(
            "VHD",
            "file",
            0,
            format!("{len} bytes is too short for a 512-byte footer"),
        )
        .into());
    }
    let mut c = Checker {
        storage,
        len,
        report: CheckReport::new("vpc"),
    };
    c.run(path, ctx)?;
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

    /// Reads `len` bytes at `offset`; an I/O error is a check error and gives `None`.
    fn read(&mut self, offset: u64, len: usize, what: &str) -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        match self.storage.read_exact_at(&mut b, offset) {
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

    fn checksum_problem(&mut self, what: &str, offset: u64, stored: u32, computed: u32) {
        self.report.add(
            CheckProblem::new(
                ProblemKind::Corruption,
                what,
                offset,
                format!("VHD {what} at {offset:#x}: the checksum does not match its contents"),
            )
            .values(format!("{computed:#010x}"), format!("{stored:#010x}")),
        );
    }

    fn run(&mut self, path: Option<&Path>, ctx: &OpenContext<'_>) -> Result<()> {
        let len = self.len;
        let Some(end_b) = self.read(len - 512, FOOTER_SIZE, "footer") else {
            return Ok(());
        };
        let head_b = if len >= 1024 {
            self.read(0, FOOTER_SIZE, "footer copy")
        } else {
            Some(end_b.clone())
        };

        // The footer at the end (512 bytes, or 511 from old tools), else the copy at 0.
        let (footer, footer_len) = match parse_footer(&end_b, len - 512) {
            Ok((f, bad)) => {
                if let Some((s, c)) = bad {
                    self.checksum_problem("footer", len - 512, s, c);
                }
                (f, FOOTER_SIZE as u64)
            }
            Err(e @ FormatError::Unsupported { .. }) => return Err(e.into()),
            Err(e) => {
                let old = (end_b[1..9] == COOKIE)
                    .then(|| parse_footer(&end_b[1..], len - OLD_FOOTER_SIZE as u64));
                match old {
                    Some(Ok((f, bad))) => {
                        self.warn(
                            "footer",
                            len - OLD_FOOTER_SIZE as u64,
                            format!(
                                "VHD footer at {:#x} is 511 bytes long (written by an old tool); 512 is the standard",
                                len - OLD_FOOTER_SIZE as u64
                            ),
                        );
                        if let Some((s, c)) = bad {
                            self.checksum_problem("footer", len - OLD_FOOTER_SIZE as u64, s, c);
                        }
                        (f, OLD_FOOTER_SIZE as u64)
                    }
                    Some(Err(e @ FormatError::Unsupported { .. })) => return Err(e.into()),
                    _ => {
                        self.corrupt("footer", len - 512, format!("{e} (the footer at the end of the file is damaged or missing: truncated file?)"));
                        let copy = head_b.as_deref().map(|h| parse_footer(h, 0));
                        match copy {
                            Some(Ok((f, bad))) if f.disk_type != DiskType::Fixed => {
                                if let Some((s, c)) = bad {
                                    self.checksum_problem("footer copy", 0, s, c);
                                }
                                self.report.notes.push(
                                    "using the copy of the footer at offset 0 (as the reader does)"
                                        .into(),
                                );
                                (f, 0)
                            }
                            Some(Err(e @ FormatError::Unsupported { .. })) => {
                                return Err(e.into());
                            }
                            Some(Err(e)) => {
                                self.corrupt("footer copy", 0, e.to_string());
                                return Ok(());
                            }
                            _ => return Ok(()),
                        }
                    }
                }
            }
        };
        self.footer_fields(&footer, len - footer_len.max(512));

        if footer.disk_type == DiskType::Fixed {
            self.fixed(&footer, footer_len);
            return Ok(());
        }
        // The copy at 0 must equal the end footer.
        if footer_len > 0 {
            if let Some(h) = &head_b {
                let fl = footer_len as usize;
                let end_bytes = &end_b[512 - fl..];
                if h[..fl] != *end_bytes {
                    match parse_footer(&h[..fl], 0) {
                        Err(e) => self.corrupt(
                            "footer copy",
                            0,
                            format!("{e} (the copy of the footer at offset 0 must equal the footer at the end)"),
                        ),
                        Ok((copy, bad)) => {
                            if let Some((s, c)) = bad {
                                self.checksum_problem("footer copy", 0, s, c);
                            }
                            let (major, minor) = footer_differences(&footer, &copy);
                            let kind = if major.is_empty() {
                                ProblemKind::Warning
                            } else {
                                ProblemKind::Corruption
                            };
                            let mut fields = major;
                            fields.extend(minor);
                            if !fields.is_empty() {
                                self.add(
                                    kind,
                                    "footer copy",
                                    0,
                                    format!(
                                        "the copy of the footer at offset 0 differs from the footer at {:#x} in: {}",
                                        len - footer_len,
                                        fields.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
        self.dynamic(&footer, footer_len, path, ctx)
    }

    /// Checks of footer fields that do not stop anything.
    fn footer_fields(&mut self, f: &VhdFooter, at: u64) {
        if f.features & FEATURES_RESERVED == 0 {
            self.warn(
                "footer",
                at,
                format!(
                    "VHD footer at {at:#x}: features {:#010x} lack the reserved bit 0x2 that must always be set",
                    f.features
                ),
            );
        }
        if f.current_size % 512 != 0 {
            self.warn(
                "footer",
                at,
                format!(
                    "VHD footer at {at:#x}: current size {} is not a whole number of sectors (the disk is {} bytes)",
                    f.current_size,
                    f.current_size & !511
                ),
            );
        }
        let want = Chs::for_sectors(f.current_size / 512);
        let max = f.chs.size() / 512 == MAX_CHS_SECTORS;
        if max && want != f.chs {
            // qemu's force_size, Disk2vhd and others write the largest geometry to say "the
            // size is current_size"; qemu and this crate read it so.
            self.report.notes.push(
                "the geometry is the largest one (65535/16/255): the virtual size is the current size".into(),
            );
        } else if f.chs != want {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Warning,
                    "footer",
                    at,
                    format!(
                        "VHD footer at {at:#x}: the geometry is not the one the specification computes for {} bytes",
                        f.current_size
                    ),
                )
                .values(
                    format!("{}/{}/{}", want.cylinders, want.heads, want.sectors),
                    format!("{}/{}/{}", f.chs.cylinders, f.chs.heads, f.chs.sectors),
                ),
            );
        }
        if f.uses_chs() && f.chs.size() != f.current_size {
            self.report.notes.push(format!(
                "creator '{}' means the geometry: the virtual size is {} bytes ({}/{}/{}), not the current size {} (as qemu decides)",
                fourcc(&f.creator_app),
                f.chs.size(),
                f.chs.cylinders,
                f.chs.heads,
                f.chs.sectors,
                f.current_size
            ));
        }
        if f.saved_state != 0 {
            self.report
                .notes
                .push("the saved-state flag is set (the disk belongs to a saved VM)".into());
        }
    }

    fn fixed(&mut self, f: &VhdFooter, footer_len: u64) {
        let len = self.len;
        let data = len - footer_len;
        let want = f.current_size;
        if f.data_offset != NO_DATA_OFFSET {
            self.warn(
                "footer",
                data,
                format!(
                    "fixed VHD footer at {data:#x}: data offset is {:#x}; the specification says all ones for a fixed disk",
                    f.data_offset
                ),
            );
        }
        if data < want {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "fixed disk",
                    data,
                    format!(
                        "fixed VHD: the file holds {data} bytes before its footer but the disk is {want} bytes: the end of the disk is missing (truncated file?)"
                    ),
                )
                .values(format!("a file of {} bytes", want + 512), len),
            );
        } else if data > want {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Leak,
                    "fixed disk",
                    want,
                    format!(
                        "fixed VHD: bytes {want:#x}..{data:#x} between the end of the disk and the footer belong to nothing"
                    ),
                )
                .values(format!("a file of {} bytes", want + 512), len),
            );
        }
        self.report.image_end_offset = len;
    }

    /// A dynamic or differencing VHD: its header, BAT, blocks, the space they take and, for a
    /// differencing disk, the parent.
    fn dynamic(
        &mut self,
        f: &VhdFooter,
        footer_len: u64,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<()> {
        let len = self.len;
        let data_end = len - footer_len;
        let mut space: SpaceMap<Owner> = SpaceMap::new(usize::MAX);
        space.add(0, 512, Owner::FooterCopy);
        if footer_len > 0 {
            space.add(data_end, footer_len, Owner::Footer);
        }
        let Some((header, hb)) = self.dynamic_header(f, footer_len, &mut space)? else {
            return Ok(());
        };
        let hoff = f.data_offset;
        let Some(bat) = self.bat(f, &header, hoff, data_end, &mut space)? else {
            return Ok(());
        };
        // Only a differencing disk has a parent: the reader ignores locators elsewhere.
        let locator_names = if f.disk_type == DiskType::Differencing {
            self.locators(&hb, hoff, data_end, &mut space)
        } else {
            Vec::new()
        };
        let span = header.bitmap_size() + u64::from(header.block_size);
        self.blocks(&bat, span, data_end, &mut space);
        self.space_findings(space, data_end, span, bat.table_offset, hoff);
        if f.disk_type == DiskType::Differencing {
            self.parent(&header, hoff, locator_names, path, ctx);
        }
        Ok(())
    }

    /// Reads and checks the dynamic header the footer points at; `None` when it is outside the
    /// file or unreadable (reported). Returns the parsed header and its bytes.
    fn dynamic_header(
        &mut self,
        f: &VhdFooter,
        footer_len: u64,
        space: &mut SpaceMap<Owner>,
    ) -> Result<Option<(VhdDynamicHeader, Vec<u8>)>> {
        let len = self.len;
        let data_end = len - footer_len;
        let hoff = f.data_offset;
        let footer_at = data_end.min(len - 512);
        if hoff < 512
            || hoff
                .checked_add(HEADER_SIZE as u64)
                .is_none_or(|e| e > data_end)
        {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "footer",
                    footer_at,
                    format!(
                        "VHD footer at {footer_at:#x}: the dynamic header it points at lies outside the file ({data_end:#x} bytes before the footer)"
                    ),
                )
                .values(format!("512..{:#x}", data_end.saturating_sub(1024)), format!("{hoff:#x}")),
            );
            return Ok(None);
        }
        let Some(hb) = self.read(hoff, HEADER_SIZE, "dynamic header") else {
            return Ok(None);
        };
        let header = match parse_header(&hb, hoff) {
            Ok((h, bad)) => {
                if let Some((s, c)) = bad {
                    self.checksum_problem("dynamic header", hoff, s, c);
                }
                h
            }
            Err(e @ FormatError::Unsupported { .. }) => return Err(e.into()),
            Err(e) => {
                self.corrupt("dynamic header", hoff, e.to_string());
                return Ok(None);
            }
        };
        space.add(hoff, HEADER_SIZE as u64, Owner::Header);
        if be64(&hb, 8) != u64::MAX {
            self.warn(
                "dynamic header",
                hoff,
                format!(
                    "VHD dynamic header at {hoff:#x}: data offset is {:#x}; the specification says all ones (unused)",
                    be64(&hb, 8)
                ),
            );
        }
        Ok(Some((header, hb)))
    }

    /// Checks the BAT's size against the disk and its place in the file, and reads it; `None`
    /// when it lies outside the file or is unreadable (reported).
    fn bat(
        &mut self,
        f: &VhdFooter,
        header: &VhdDynamicHeader,
        hoff: u64,
        data_end: u64,
        space: &mut SpaceMap<Owner>,
    ) -> Result<Option<Bat>> {
        let size = f.virtual_size();
        let bs = u64::from(header.block_size);
        let needed = size.div_ceil(bs);
        let entries = u64::from(header.max_table_entries);
        if entries < needed {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "dynamic header",
                    hoff,
                    format!(
                        "VHD dynamic header at {hoff:#x}: the BAT has too few entries for a {size}-byte disk of {bs}-byte blocks: the end of the disk has no blocks"
                    ),
                )
                .values(needed, entries),
            );
        }
        if entries > MAX_BAT_ENTRIES {
            return Err(FormatError::Unsupported {
                format: "VHD",
                detail: format!(
                    "checking a BAT of {entries} entries (more than {MAX_BAT_ENTRIES})"
                ),
            }
            .into());
        }
        let toff = header.table_offset;
        let bat_bytes = entries * 4;
        if toff < 512 || toff.checked_add(bat_bytes).is_none_or(|e| e > data_end) {
            self.report.add(
                CheckProblem::new(
                    ProblemKind::Corruption,
                    "dynamic header",
                    hoff,
                    format!(
                        "VHD dynamic header at {hoff:#x}: the BAT ({entries} entries, {bat_bytes} bytes) at {toff:#x} lies outside the file ({data_end:#x} bytes before the footer)"
                    ),
                )
                .values(
                    format!("at most {:#x}", data_end.saturating_sub(bat_bytes)),
                    format!("{toff:#x}"),
                ),
            );
            return Ok(None);
        }
        // bat_bytes <= 64 MiB (MAX_BAT_ENTRIES) and inside the file.
        let Some(raw) = self.read(toff, bat_bytes as usize, "BAT") else {
            return Ok(None);
        };
        space.add(toff, bat_bytes.next_multiple_of(512), Owner::Bat);
        Ok(Some(Bat {
            raw,
            table_offset: toff,
            needed,
            block_size: bs,
        }))
    }

    /// Checks every allocated BAT entry: blocks past the data or past the disk, fragmentation;
    /// records the space each block takes (`span` bytes with its sector bitmap).
    fn blocks(&mut self, bat: &Bat, span: u64, data_end: u64, space: &mut SpaceMap<Owner>) {
        let (toff, needed) = (bat.table_offset, bat.needed);
        self.report.cluster_size = bat.block_size;
        self.report.total_clusters = needed;
        let mut prev_end: Option<u64> = None;
        for (i, e) in bat.raw.chunks_exact(4).map(|c| be32(c, 0)).enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let i64_ = i as u64;
            let entry_at = toff + 4 * i64_;
            let start = u64::from(e) * 512;
            let end = start + span;
            let beyond = i64_ >= needed;
            if end > data_end {
                let kind = if beyond {
                    ProblemKind::Leak
                } else {
                    ProblemKind::Corruption
                };
                self.report.add(
                    CheckProblem::new(
                        kind,
                        "BAT",
                        entry_at,
                        format!(
                            "VHD BAT entry {i} (at {entry_at:#x}) points at {start:#x}: its block ({span} bytes with the sector bitmap) ends past the data of the file ({data_end:#x} bytes before the footer)"
                        ),
                    )
                    .values(
                        format!("a block ending at most at {data_end:#x}"),
                        format!("{end:#x}"),
                    ),
                );
                continue;
            }
            space.add(start, span, Owner::Block(i as u32));
            if beyond {
                self.add(
                    ProblemKind::Leak,
                    "BAT",
                    entry_at,
                    format!(
                        "VHD BAT entry {i} (at {entry_at:#x}) lies beyond the disk's {needed} blocks but is allocated at {start:#x}: its {span} bytes are wasted"
                    ),
                );
                continue;
            }
            self.report.allocated_clusters += 1;
            if prev_end != Some(start) {
                self.report.fragmented_clusters += u64::from(prev_end.is_some());
            }
            prev_end = Some(end);
        }
    }

    /// Overlapping structures and unused space large enough for a block.
    fn space_findings(
        &mut self,
        space: SpaceMap<Owner>,
        data_end: u64,
        span: u64,
        toff: u64,
        hoff: u64,
    ) {
        let sp = space.finish(0, data_end, MAX_OVERLAPS);
        for (a, b) in sp.overlaps {
            let (what, at) = match (a.owner, b.owner) {
                (_, Owner::Block(i)) | (Owner::Block(i), _) => ("BAT", toff + 4 * u64::from(i)),
                _ => ("dynamic header", hoff),
            };
            let msg = match (a.owner, b.owner) {
                (Owner::Block(i), Owner::Block(j)) if a.start == b.start => format!(
                    "VHD BAT entries {i} and {j} point at the same block at {:#x}: writing one disk block overwrites the other",
                    a.start
                ),
                _ => format!(
                    "VHD: {} ({:#x}..{:#x}) overlaps {} ({:#x}..{:#x})",
                    b.owner.describe(),
                    b.start,
                    b.end,
                    a.owner.describe(),
                    a.start,
                    a.end
                ),
            };
            self.corrupt(what, at, msg);
        }
        for g in sp.gaps {
            let n = g.end - g.start;
            if n >= span {
                self.add(
                    ProblemKind::Leak,
                    "data",
                    g.start,
                    format!(
                        "VHD: bytes {:#x}..{:#x} ({n} bytes, room for {} blocks) are used by no block and no table",
                        g.start,
                        g.end,
                        n / span
                    ),
                );
            }
        }
    }

    /// Checks the 8 parent locator entries of the header `hb` (at `hoff`), claims their data and
    /// returns the names they decode to, best first (as the reader tries them).
    fn locators(
        &mut self,
        hb: &[u8],
        hoff: u64,
        data_end: u64,
        space: &mut SpaceMap<Owner>,
    ) -> Vec<String> {
        let mut names: Vec<(u8, String)> = Vec::new();
        for slot in 0..8u8 {
            let at = 576 + 24 * usize::from(slot);
            let entry_at = hoff + at as u64;
            let code = be32(hb, at);
            if code == 0 {
                continue;
            }
            let (data_space, data_len, data_offset) =
                (be32(hb, at + 4), be32(hb, at + 8), be64(hb, at + 16));
            let tag = fourcc(&code.to_be_bytes());
            let rank = match code {
                platform::W2RU => 0,
                platform::WI2R => 1,
                platform::MACX => 2,
                platform::W2KU => 3,
                platform::WI2K => 4,
                platform::MAC => 5,
                _ => {
                    self.warn(
                        "parent locator",
                        entry_at,
                        format!(
                            "VHD parent locator {slot} (at {entry_at:#x}) has the unknown platform code '{tag}'"
                        ),
                    );
                    continue;
                }
            };
            if data_len == 0 {
                self.warn(
                    "parent locator",
                    entry_at,
                    format!("VHD parent locator {slot} ('{tag}', at {entry_at:#x}) holds no data"),
                );
                continue;
            }
            // The space field is in sectors by the specification; Windows writes bytes.
            let space_bytes = if u64::from(data_space) >= u64::from(data_len) {
                u64::from(data_space)
            } else {
                u64::from(data_space) * 512
            };
            if space_bytes < u64::from(data_len) {
                self.warn(
                    "parent locator",
                    entry_at,
                    format!(
                        "VHD parent locator {slot} ('{tag}', at {entry_at:#x}): {data_len} bytes of data in a space of {data_space} (sectors or bytes)"
                    ),
                );
            }
            let claim = space_bytes
                .max(u64::from(data_len))
                .next_multiple_of(512)
                .min(u64::from(MAX_LOCATOR_LEN).max(u64::from(data_len)));
            if data_offset < 512
                || data_offset
                    .checked_add(u64::from(data_len))
                    .is_none_or(|e| e > data_end)
            {
                self.report.add(
                    CheckProblem::new(
                        ProblemKind::Corruption,
                        "parent locator",
                        entry_at,
                        format!(
                            "VHD parent locator {slot} ('{tag}', at {entry_at:#x}): its {data_len} bytes of data lie outside the file ({data_end:#x} bytes before the footer)"
                        ),
                    )
                    .values(
                        format!("at most {:#x}", data_end.saturating_sub(u64::from(data_len))),
                        format!("{data_offset:#x}"),
                    ),
                );
                continue;
            }
            space.add(
                data_offset,
                claim.min(data_end - data_offset),
                Owner::Locator(slot),
            );
            if code == platform::MAC {
                continue; // A Mac OS alias record: not decoded.
            }
            let n = data_len.min(MAX_LOCATOR_LEN) as usize;
            let Some(data) = self.read(data_offset, n, "parent locator data") else {
                continue;
            };
            match decode_locator(code, &data) {
                Some(name) => names.push((rank, name)),
                None => self.warn(
                    "parent locator",
                    entry_at,
                    format!(
                        "VHD parent locator {slot} ('{tag}', at {entry_at:#x}): its data at {data_offset:#x} decodes to no file name"
                    ),
                ),
            }
        }
        names.sort_by_key(|(r, _)| *r);
        names.into_iter().map(|(_, n)| n).collect()
    }

    /// Looks for the parent of a differencing disk as the reader does.
    fn parent(
        &mut self,
        h: &VhdDynamicHeader,
        hoff: u64,
        mut names: Vec<String>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) {
        if !h.parent_name.is_empty() {
            names.push(h.parent_name.clone());
        }
        let candidates = parent_candidates(&names);
        if candidates.is_empty() {
            self.corrupt(
                "dynamic header",
                hoff,
                format!(
                    "differencing VHD (dynamic header at {hoff:#x}) names no parent: no usable parent locator and an empty parent name"
                ),
            );
            return;
        }
        let mut tried = Vec::new();
        for name in &candidates {
            let resolved = match ctx.resolve_reference(path, "parent", name) {
                Ok(p) => p,
                Err(e) => {
                    tried.push(format!("'{name}': {}", e.chain()));
                    continue;
                }
            };
            let footer = FileStorage::open_read_only(&resolved)
                .map_err(|e| Error::io("opening read-only", e))
                .and_then(|s| load_footer(&s).map(|(f, _, _)| f));
            match footer {
                Ok(pf) if pf.unique_id != h.parent_unique_id => {
                    self.report.add(
                        CheckProblem::new(
                            ProblemKind::Corruption,
                            "dynamic header",
                            hoff,
                            format!(
                                "differencing VHD: its parent {} has another unique id than the one recorded in the dynamic header at {hoff:#x} (the parent was changed or replaced: reading would mix two disks)",
                                resolved.display()
                            ),
                        )
                        .values(hex(&h.parent_unique_id), hex(&pf.unique_id)),
                    );
                }
                Ok(_) => self.report.notes.push(format!(
                    "parent: {} (unique id matches)",
                    resolved.display()
                )),
                Err(e) => self.warn(
                    "parent",
                    hoff,
                    format!(
                        "the parent {} of this differencing VHD is not a usable VHD: {}",
                        resolved.display(),
                        e.chain()
                    ),
                ),
            }
            return;
        }
        self.warn(
            "parent",
            hoff,
            format!(
                "the parent of this differencing VHD was not found or not opened (tried {}): this image is intact, but reading blocks it does not hold needs the parent",
                tried.join("; ")
            ),
        );
    }
}

/// The BAT of a dynamic or differencing VHD as read by the check.
struct Bat {
    /// Its bytes (big-endian sector numbers).
    raw: Vec<u8>,
    /// Where it is in the file.
    table_offset: u64,
    /// Entries the virtual size needs.
    needed: u64,
    /// Bytes per block.
    block_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::check::ProblemKind as K;
    use crate::formats::vhd::{dynamic, footer};
    use crate::open::OpenOptions;
    use crate::storage::MemStorage;

    /// A 16 KiB dynamic VHD of four 4 KiB blocks, built field by field: footer copy at 0,
    /// dynamic header at 512 (BAT at 1536, 4 entries), blocks 0 and 2 stored (512-byte sector
    /// bitmap + 4 KiB each) at 2048 and 6656, footer at 11264.
    fn image() -> Vec<u8> {
        let chs = Chs::for_sectors(32);
        let f = footer::tests::sample(3, b"win ", 16384, (chs.cylinders, chs.heads, chs.sectors));
        let h = dynamic::tests::sample(1536, 4, 4096);
        let mut b = vec![0u8; 11776];
        b[..512].copy_from_slice(&f); // footer copy
        b[512..1536].copy_from_slice(&h); // dynamic header
        for (i, e) in [4u32, u32::MAX, 13, u32::MAX].iter().enumerate() {
            b[1536 + 4 * i..1540 + 4 * i].copy_from_slice(&e.to_be_bytes()); // BAT
        }
        b[2048] = 0xff; // block 0: bitmap, then data
        b[2560..6656].fill(0x11);
        b[6656] = 0xff; // block 2
        b[7168..11264].fill(0x22);
        b[11264..].copy_from_slice(&f); // footer
        b
    }

    fn run(b: Vec<u8>) -> CheckReport {
        let opts = OpenOptions::default();
        let ctx = OpenContext::detached(&opts);
        check(&MemStorage::from_vec(b), None, &ctx).unwrap()
    }

    #[test]
    fn clean_dynamic_disk() {
        let r = run(image());
        assert!(r.is_clean() && r.warnings == 0, "{r}");
        assert_eq!((r.total_clusters, r.allocated_clusters), (4, 2));
        assert_eq!(r.cluster_size, 4096);
    }

    #[test]
    fn footer_checksum_and_copy() {
        let mut b = image();
        b[11264 + 60 + 3] = 4; // disk type 4 at the end only: checksum now wrong
        let r = run(b.clone());
        assert!(
            r.has(K::Corruption, "VHD footer at 0x2c00: the checksum"),
            "{r}"
        );
        // The copy at 0 differs from the end footer in the disk type: a corruption too.
        assert!(
            r.has(
                K::Corruption,
                "differs from the footer at 0x2c00 in: disk type"
            ),
            "{r}"
        );
        // Only the timestamp differs: a warning.
        let mut b = image();
        b[24] ^= 1;
        let sum = footer::checksum(&b[..512], 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        let r = run(b);
        assert!(r.is_clean() && r.has(K::Warning, "in: timestamp"), "{r}");
    }

    #[test]
    fn bat_entries() {
        // Past the end of the file.
        let mut b = image();
        b[1536..1540].copy_from_slice(&100u32.to_be_bytes());
        let r = run(b);
        let p = r.problems.iter().find(|p| p.kind == K::Corruption).unwrap();
        assert_eq!(
            (p.structure.as_deref(), p.offset),
            (Some("BAT"), 1536),
            "{r}"
        );
        assert!(
            p.message.contains("entry 0") && p.message.contains("0xc800"),
            "{r}"
        );
        assert_eq!(p.found.as_deref(), Some("0xda00")); // 0xc800 + 512 + 4096
        // Two entries at one block: a corruption; the other block is leaked.
        let mut b = image();
        b[1544..1548].copy_from_slice(&4u32.to_be_bytes());
        let r = run(b);
        assert!(
            r.has(
                K::Corruption,
                "entries 0 and 2 point at the same block at 0x800"
            ),
            "{r}"
        );
        assert!(r.has(K::Leak, "bytes 0x1a00..0x2c00"), "{r}");
        // Overlapping the BAT.
        let mut b = image();
        b[1536..1540].copy_from_slice(&3u32.to_be_bytes());
        let r = run(b);
        assert!(r.has(K::Corruption, "overlaps the BAT"), "{r}");
        // Allocated beyond the disk's blocks: a leak.
        let mut b = image();
        let h = dynamic::tests::sample(1536, 5, 4096);
        b[512..1536].copy_from_slice(&h);
        b[1552..1556].copy_from_slice(&4u32.to_be_bytes()); // entry 4 (there are 4 blocks)
        let r = run(b);
        assert!(r.has(K::Leak, "beyond the disk's 4 blocks"), "{r}");
    }

    #[test]
    fn header_and_geometry() {
        let mut b = image();
        b[512 + 900] = 1; // inside the dynamic header: its checksum is wrong
        let r = run(b);
        assert!(
            r.has(K::Corruption, "VHD dynamic header at 0x200: the checksum"),
            "{r}"
        );
        // Another geometry for the same size: a warning naming both.
        let mut b = image();
        b.swap(58, 59);
        let sum = footer::checksum(&b[..512], 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        let (copy, end) = b.split_at_mut(11264);
        end.copy_from_slice(&copy[..512]);
        let r = run(b);
        assert!(r.is_clean(), "{r}");
        let p = &r.problems[0];
        assert_eq!(p.kind, K::Warning);
        assert!(p.message.contains("geometry"), "{r}");
    }

    #[test]
    fn fixed_disk_sizes() {
        let chs = Chs::for_sectors(16);
        let f = footer::tests::sample(2, b"win ", 8192, (chs.cylinders, chs.heads, chs.sectors));
        let mut b = vec![0u8; 8192];
        b.extend_from_slice(&f);
        assert!(run(b.clone()).is_clean());
        let mut short = b[4096..].to_vec();
        short.truncate(4096);
        short.extend_from_slice(&f);
        let r = run(short);
        assert!(
            r.has(K::Corruption, "the end of the disk is missing"),
            "{r}"
        );
        let mut long = vec![0u8; 4096];
        long.extend_from_slice(&b);
        let r = run(long);
        assert!(
            r.has(K::Leak, "between the end of the disk and the footer"),
            "{r}"
        );
        assert_eq!(r.corruptions, 0);
    }

    #[test]
    fn garbage_never_panics() {
        let base = image();
        let mut x = 0x1234_5678_u64;
        for _ in 0..3000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x >> 8) as usize % b.len();
                b[at] = x as u8;
            }
            // Keep the checksums right half of the time so the deeper checks run.
            if x & 1 == 0 {
                for at in [0, 11264] {
                    let sum = footer::checksum(&b[at..at + 512], 64);
                    b[at + 64..at + 68].copy_from_slice(&sum.to_be_bytes());
                }
                let sum = footer::checksum(&b[512..1536], 36);
                b[548..552].copy_from_slice(&sum.to_be_bytes());
            }
            let opts = OpenOptions::default();
            let _ = check(
                &MemStorage::from_vec(b),
                None,
                &OpenContext::detached(&opts),
            );
        }
    }
}
