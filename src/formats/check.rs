//! The report of a structural check (`diskconv check`), shared by every format that has
//! structure to check: qcow2, VMDK, VHD and VHDX. Each format's `check` module walks its own
//! structures and fills one [`CheckReport`]; this module only holds the report and a helper that
//! finds overlaps and unreferenced space in a file.
//!
//! Classification, the same for every format (and `qemu-img check`'s for qcow2):
//! - [`ProblemKind::Corruption`]: data could be read wrong, or writing to the image could
//!   damage it (a table entry past the end of the file, two blocks in one place, a checksum
//!   that does not match);
//! - [`ProblemKind::Leak`]: space in the file that nothing uses; wasted, harmless;
//! - [`ProblemKind::CheckError`]: the check could not look at something (an I/O error, a file
//!   the reference policy did not let it open);
//! - [`ProblemKind::Warning`]: worth knowing, harmless for reading and writing (a VHD geometry
//!   that does not match its size, a VHDX log that needs replaying, one torn VHDX header).
//!
//! The CLI maps a report to `qemu-img check`'s exit codes: 0 clean (warnings allowed),
//! 2 corruptions or check errors, 3 leaks only; 1 when the check could not run at all.
//!
//! This module imports nothing from the rest of the crate, so every format can use it without
//! creating an import cycle.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// Most problems listed one by one in a [`CheckReport`]; further ones are only counted.
pub const MAX_LISTED_PROBLEMS: usize = 10_000;

/// How serious a [`CheckProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Metadata is inconsistent: data may be read wrong or further writes may corrupt the image.
    Corruption,
    /// Space that nothing uses (a cluster with a higher refcount than references, an
    /// unreferenced grain or block): wasted, no harm.
    Leak,
    /// The check itself could not look at something (an I/O error, unreadable refcounts, a
    /// file the reference policy refused).
    CheckError,
    /// Informational: harmless for reading and writing; does not change the exit code.
    Warning,
}

/// One finding of a check.
///
/// `message` is complete on its own and names the structure and its offset; `structure`,
/// `expected` and `found` repeat the parts a program may want to match on (they are omitted
/// from JSON when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckProblem {
    /// Corruption, leak, check error or warning.
    pub kind: ProblemKind,
    /// Byte offset of the structure concerned, in `file` (or in the image file).
    pub offset: u64,
    /// What is wrong, e.g. "grain table 3 at 0x5000, entry 17: grain 1553 at 0x7fff0000 lies
    /// past the end of the file (0x60000 bytes)".
    pub message: String,
    /// The file the offset is in, when it is not the image named on the command line (a VMDK
    /// extent file), as the descriptor names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The structure, e.g. "footer", "grain table", "BAT".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structure: Option<String>,
    /// The value the format requires there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The value found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

impl CheckProblem {
    /// A finding of `kind` about `structure` at `offset`.
    pub fn new(
        kind: ProblemKind,
        structure: impl Into<String>,
        offset: u64,
        message: impl Into<String>,
    ) -> Self {
        CheckProblem {
            kind,
            offset,
            message: message.into(),
            file: None,
            structure: Some(structure.into()),
            expected: None,
            found: None,
        }
    }

    /// Sets the expected and the found value.
    pub fn values(mut self, expected: impl fmt::Display, found: impl fmt::Display) -> Self {
        self.expected = Some(expected.to_string());
        self.found = Some(found.to_string());
        self
    }

    /// Sets the file the offset is in.
    pub fn in_file(mut self, file: Option<&str>) -> Self {
        self.file = file.map(str::to_string);
        self
    }
}

/// The result of a check. Field names in JSON follow `qemu-img check --output=json`; the
/// cluster statistics count qcow2 clusters, VMDK grains or VHD/VHDX blocks (see `format`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// The format checked, as qemu names it: `qcow2`, `vmdk`, `vpc` (VHD) or `vhdx`.
    pub format: &'static str,
    /// Problems in the order found, at most [`MAX_LISTED_PROBLEMS`].
    pub problems: Vec<CheckProblem>,
    /// Problems found but not listed because of [`MAX_LISTED_PROBLEMS`].
    pub unlisted_problems: u64,
    /// Number of corruptions (JSON `corruptions`).
    pub corruptions: u64,
    /// Number of leaks (JSON `leaks`): leaked clusters for qcow2, leaked regions of the file
    /// for the other formats.
    pub leaks: u64,
    /// Number of errors of the check itself (JSON `check-errors`).
    pub check_errors: u64,
    /// Number of warnings (informational findings; they do not make the image unclean).
    pub warnings: u64,
    /// Clusters, grains or blocks in the virtual disk (JSON `total-clusters`).
    pub total_clusters: u64,
    /// Of those, allocated in this file, compressed ones included (JSON `allocated-clusters`).
    pub allocated_clusters: u64,
    /// Allocated ones not stored right after the previous one of the same table; compressed
    /// ones always count (JSON `fragmented-clusters`).
    pub fragmented_clusters: u64,
    /// Compressed ones (JSON `compressed-clusters`).
    pub compressed_clusters: u64,
    /// End of the last byte of the file in use (JSON `image-end-offset`); 0 when not computed.
    pub image_end_offset: u64,
    /// Size of a cluster, grain or block in bytes.
    pub cluster_size: u64,
    /// qcow2: the dirty bit (lazy refcounts) is set: stored refcounts may legitimately be stale.
    pub dirty: bool,
    /// Remarks that are not findings (which header is current, the dirty bit, stale bitmaps).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// An empty report for `format` (qemu's name for it).
    pub fn new(format: &'static str) -> Self {
        CheckReport {
            format,
            ..CheckReport::default()
        }
    }

    /// No corruption, no leak and no check error (warnings allowed).
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }

    /// Records a problem with only a message.
    pub fn push(&mut self, kind: ProblemKind, offset: u64, message: String) {
        self.add(CheckProblem {
            kind,
            offset,
            message,
            file: None,
            structure: None,
            expected: None,
            found: None,
        });
    }

    /// Records a finding.
    pub fn add(&mut self, p: CheckProblem) {
        match p.kind {
            ProblemKind::Corruption => self.corruptions += 1,
            ProblemKind::Leak => self.leaks += 1,
            ProblemKind::CheckError => self.check_errors += 1,
            ProblemKind::Warning => self.warnings += 1,
        }
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        } else {
            self.unlisted_problems += 1;
        }
    }

    /// Whether a finding of `kind` whose message contains `needle` was listed.
    pub fn has(&self, kind: ProblemKind, needle: &str) -> bool {
        self.problems
            .iter()
            .any(|p| p.kind == kind && p.message.contains(needle))
    }

    /// What the statistics count, for the text form.
    fn unit(&self) -> &'static str {
        match self.format {
            "vmdk" => "grains",
            "vpc" | "vhdx" | "vdi" => "blocks",
            _ => "clusters",
        }
    }
}

impl fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            ProblemKind::Corruption => "ERROR ",
            ProblemKind::Leak => "Leaked ",
            ProblemKind::CheckError => "Check error: ",
            ProblemKind::Warning => "Warning: ",
        };
        f.write_str(prefix)?;
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        f.write_str(&self.message)?;
        if let (Some(e), Some(v)) = (&self.expected, &self.found) {
            write!(f, " (expected {e}, found {v})")?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckReport {
    /// Text in the style of `qemu-img check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        if self.unlisted_problems > 0 {
            writeln!(f, "({} more problems not listed)", self.unlisted_problems)?;
        }
        for n in &self.notes {
            writeln!(f, "Note: {n}")?;
        }
        let unit = self.unit();
        if self.is_clean() {
            writeln!(f, "No errors were found on the image.")?;
        } else {
            if self.corruptions > 0 {
                writeln!(
                    f,
                    "\n{} errors were found on the image.\n\
                     Data may be corrupted, or further writes to the image may corrupt it.",
                    self.corruptions
                )?;
            }
            if self.leaks > 0 {
                let what = if self.format == "qcow2" {
                    "leaked clusters"
                } else {
                    "leaked regions"
                };
                writeln!(
                    f,
                    "\n{} {what} were found on the image.\n\
                     This means waste of disk space, but no harm to data.",
                    self.leaks
                )?;
            }
            if self.check_errors > 0 {
                writeln!(
                    f,
                    "\n{} internal errors have occurred during the check.",
                    self.check_errors
                )?;
            }
        }
        if self.warnings > 0 {
            writeln!(f, "{} warnings (harmless).", self.warnings)?;
        }
        if self.total_clusters != 0 && self.allocated_clusters != 0 {
            let pct = |a: u64, b: u64| a as f64 * 100.0 / b as f64;
            writeln!(
                f,
                "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed {unit}",
                self.allocated_clusters,
                self.total_clusters,
                pct(self.allocated_clusters, self.total_clusters),
                pct(self.fragmented_clusters, self.allocated_clusters),
                pct(self.compressed_clusters, self.allocated_clusters),
            )?;
        }
        if self.image_end_offset != 0 {
            writeln!(f, "Image end offset: {}", self.image_end_offset)?;
        }
        Ok(())
    }
}

/// One byte range of a file claimed by a structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceUse<T> {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Who claims it.
    pub owner: T,
}

/// Overlaps and unused space in one file: the structures of an image each claim their byte
/// ranges, then [`SpaceMap::finish`] sorts them and reports every range that overlaps an
/// earlier one and every stretch nothing claims. Memory is bounded by `limit` ranges; past it
/// further claims are dropped and [`SpaceMap::overflowed`] says so.
#[derive(Debug, Clone)]
pub struct SpaceMap<T> {
    uses: Vec<SpaceUse<T>>,
    limit: usize,
    overflowed: bool,
}

/// What [`SpaceMap::finish`] found.
#[derive(Debug, Clone, Default)]
pub struct SpaceReport<T> {
    /// Pairs (earlier claim, later claim) that overlap, in file order.
    pub overlaps: Vec<(SpaceUse<T>, SpaceUse<T>)>,
    /// Stretches of `[from, to)` (as given to `finish`) that nothing claims.
    pub gaps: Vec<Range<u64>>,
    /// End of the last claimed byte.
    pub end: u64,
}

impl<T: Copy> SpaceMap<T> {
    /// An empty map keeping at most `limit` ranges.
    pub fn new(limit: usize) -> Self {
        SpaceMap {
            uses: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    /// Claims `[start, start + len)` for `owner`. Empty ranges are ignored.
    pub fn add(&mut self, start: u64, len: u64, owner: T) {
        if len == 0 {
            return;
        }
        if self.uses.len() >= self.limit {
            self.overflowed = true;
            return;
        }
        self.uses.push(SpaceUse {
            start,
            end: start.saturating_add(len),
            owner,
        });
    }

    /// The last claim, to extend a run in place (see [`SpaceMap::extend_last`]).
    pub fn last(&self) -> Option<&SpaceUse<T>> {
        self.uses.last()
    }

    /// Grows the last claim to end at `end`, with owner `owner` (a run of contiguous grains
    /// kept as one range).
    pub fn extend_last(&mut self, end: u64, owner: T) {
        if let Some(u) = self.uses.last_mut() {
            u.end = end;
            u.owner = owner;
        }
    }

    /// Whether some claims were dropped because of the limit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Number of claims held.
    pub fn len(&self) -> usize {
        self.uses.len()
    }

    /// Whether nothing was claimed.
    pub fn is_empty(&self) -> bool {
        self.uses.is_empty()
    }

    /// Sorts the claims and reports overlaps (at most `max_overlaps`) and the gaps in
    /// `[from, to)`.
    pub fn finish(mut self, from: u64, to: u64, max_overlaps: usize) -> SpaceReport<T> {
        // Stable: of two claims of the same range, the one made first is reported first.
        self.uses.sort_by_key(|u| (u.start, u.end));
        let mut report = SpaceReport {
            overlaps: Vec::new(),
            gaps: Vec::new(),
            end: 0,
        };
        // The claim reaching furthest so far: a later claim starting before its end overlaps it.
        let mut reach: Option<SpaceUse<T>> = None;
        let mut covered = from;
        for u in &self.uses {
            if let Some(r) = reach {
                if u.start < r.end && report.overlaps.len() < max_overlaps {
                    report.overlaps.push((r, *u));
                }
            }
            if u.start > covered && covered < to {
                report.gaps.push(covered..u.start.min(to));
            }
            covered = covered.max(u.end);
            if reach.is_none_or(|r| u.end > r.end) {
                reach = Some(*u);
            }
        }
        if covered < to {
            report.gaps.push(covered..to);
        }
        report.end = reach.map_or(0, |r| r.end);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_map_finds_overlaps_and_gaps() {
        let mut m = SpaceMap::new(100);
        m.add(0, 512, 'h');
        m.add(1024, 512, 'a');
        m.add(1536, 1024, 'b');
        m.add(2048, 512, 'c'); // inside b
        m.add(4096, 512, 'd');
        let r = m.finish(512, 8192, 10);
        assert_eq!(r.overlaps.len(), 1);
        assert_eq!((r.overlaps[0].0.owner, r.overlaps[0].1.owner), ('b', 'c'));
        assert_eq!(r.gaps, vec![512..1024, 2560..4096, 4608..8192]);
        assert_eq!(r.end, 4608);
    }

    #[test]
    fn space_map_limit_and_runs() {
        let mut m = SpaceMap::new(2);
        m.add(0, 10, 1u32);
        m.add(10, 10, 2);
        assert_eq!(m.last().map(|u| u.end), Some(20));
        m.extend_last(30, 3);
        m.add(30, 10, 4);
        assert!(m.overflowed());
        assert_eq!(m.len(), 2);
        let r = m.finish(0, 30, 10);
        assert!(r.overlaps.is_empty() && r.gaps.is_empty());
    }

    #[test]
    fn report_counts_and_text() {
        let mut r = CheckReport::new("vmdk");
        r.add(
            CheckProblem::new(
                ProblemKind::Corruption,
                "grain table",
                0x400,
                "grain table 0 at 0x400, entry 3: grain 3 points past the end",
            )
            .values("at most 0x1800", "0x7d000")
            .in_file(Some("disk-s001.vmdk")),
        );
        r.add(CheckProblem::new(
            ProblemKind::Warning,
            "footer",
            0,
            "geometry does not match the size",
        ));
        assert!(!r.is_clean());
        assert_eq!((r.corruptions, r.warnings), (1, 1));
        let text = r.to_string();
        assert!(
            text.contains("ERROR disk-s001.vmdk: grain table 0 at 0x400, entry 3")
                && text.contains("(expected at most 0x1800, found 0x7d000)")
                && text.contains("Warning: geometry"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["format"], "vmdk");
        assert_eq!(json["problems"][0]["kind"], "corruption");
        assert_eq!(json["problems"][0]["file"], "disk-s001.vmdk");
        assert_eq!(json["problems"][1]["kind"], "warning");
        assert!(json["problems"][1].get("expected").is_none());
        assert_eq!(json["corruptions"], 1);
    }
}
