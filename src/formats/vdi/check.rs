//! `diskconv check` for VDI images: the structures the reader relies on, every problem listed
//! with its structure and byte offset.
//!
//! - the header (as the reader validates it; an unusable header means the check cannot run);
//! - the block map inside the file, and every entry: a stored block below `cBlocksAllocated`,
//!   named by no other entry, wholly inside the file (corruptions otherwise);
//! - blocks `cBlocksAllocated` counts that no entry names, and bytes after the data area
//!   (leaks: wasted space, as `qemu-img check` counts a mismatch of the allocated count);
//! - a differencing image's parent, found as the reader finds it: one with another
//!   modification UUID is a corruption (the chain would read wrong data), one not found or not
//!   allowed by the reference policy a warning (this file is intact; reading it needs the
//!   parent).
//!
//! Remarks that matter only to other tools (qemu reads only version 1.1 images with 1 MiB
//! blocks, no extra data and sector-aligned offsets) are notes.

use std::path::Path;

use crate::error::{ErrorKind, Result};
use crate::formats::check::{CheckProblem, CheckReport, MAX_LISTED_PROBLEMS, ProblemKind};
use crate::reference::OpenContext;
use crate::storage::Storage;

use super::blockmap::{self, Entry};
use super::header::{PRE_HEADER_SIZE, VERSION_1_1};
use super::parent;
use super::reader::{read_exact, read_header};

/// Checks the structure of the VDI in `storage` (found at `path`, for its parent), read-only.
pub fn check(
    storage: &dyn Storage,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<CheckReport> {
    let (h, file_len) = read_header(storage)?;
    let mut report = CheckReport::new("vdi");
    let bs = u64::from(h.block_size);
    report.cluster_size = bs;
    report.total_clusters = h.virtual_size().div_ceil(bs);
    report.image_end_offset = h.data_end().max(h.blocks_offset + h.map_len());
    notes(&h, &mut report);
    if h.nil_uuids() {
        report.add(CheckProblem::new(
            ProblemKind::Warning,
            "header",
            PRE_HEADER_SIZE as u64,
            format!(
                "uuidCreate {:x} or uuidModify {:x} is nil: VirtualBox refuses to open this image \
                 (qemu and diskconv read it; converting it gives fresh UUIDs)",
                h.uuid_create, h.uuid_modify
            ),
        ));
    }

    let map_end = h.blocks_offset + h.map_len();
    if map_end > file_len {
        report.add(
            CheckProblem::new(
                ProblemKind::Corruption,
                "block map",
                h.blocks_offset,
                format!(
                    "the block map at {:#x} ({} entries) runs past the end of the file \
                     ({file_len:#x} bytes)",
                    h.blocks_offset, h.blocks
                ),
            )
            .values(format!("at least {map_end:#x} bytes"), file_len),
        );
        return Ok(report);
    }
    let mut raw = vec![0u8; h.map_len() as usize];
    if let Err(e) = read_exact(storage, &mut raw, h.blocks_offset) {
        report.push(ProblemKind::CheckError, h.blocks_offset, e.chain());
        return Ok(report);
    }
    let map = blockmap::decode(&raw);
    for p in blockmap::validate(&map, &h, file_len, MAX_LISTED_PROBLEMS) {
        report.add(CheckProblem::new(
            ProblemKind::Corruption,
            "block map",
            p.offset(&h),
            format!(
                "block map at {:#x}: {}",
                h.blocks_offset,
                p.message(&h, file_len)
            ),
        ));
    }

    // Statistics, and which stored blocks an entry names.
    let mut named = vec![false; h.blocks_allocated as usize];
    let mut prev: Option<u32> = None;
    for &e in &map {
        if let Entry::Block(i) = Entry::from_u32(e) {
            report.allocated_clusters += 1;
            if prev.is_some_and(|p| p.checked_add(1) != Some(i)) {
                report.fragmented_clusters += 1;
            }
            prev = Some(i);
            if let Some(n) = named.get_mut(i as usize) {
                *n = true;
            }
        }
    }
    // Runs of stored blocks no entry names.
    let mut i = 0usize;
    while i < named.len() {
        if named[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < named.len() && !named[i] {
            i += 1;
        }
        let at = h.block_offset(start as u32);
        report.add(
            CheckProblem::new(
                ProblemKind::Leak,
                "data area",
                at,
                format!(
                    "data blocks {start} to {} (at {at:#x}) are counted by cBlocksAllocated \
                     ({}) but no block map entry names them",
                    i - 1,
                    h.blocks_allocated
                ),
            )
            .values(
                format!("{} allocated blocks", report.allocated_clusters),
                h.blocks_allocated,
            ),
        );
    }
    let end = h.data_end();
    if file_len > end {
        report.add(CheckProblem::new(
            ProblemKind::Leak,
            "data area",
            end,
            format!(
                "{} bytes after the end of the data area at {end:#x} belong to no block",
                file_len - end
            ),
        ));
    }

    if h.image_type.has_parent() {
        match parent::locate(ctx, path, &h) {
            Ok(parent::Lookup::Found(name)) => report.notes.push(format!(
                "parent {name} (uuid {:x}) found, its modification uuid matches",
                h.uuid_linkage
            )),
            Ok(parent::Lookup::Missing(e)) => report.add(CheckProblem::new(
                ProblemKind::Warning,
                "header",
                PRE_HEADER_SIZE as u64,
                format!("the parent was not checked: {}", e.chain()),
            )),
            Err(e) if e.kind() == ErrorKind::Io => {
                report.push(ProblemKind::CheckError, PRE_HEADER_SIZE as u64, e.chain())
            }
            Err(e) => report.add(CheckProblem::new(
                ProblemKind::Corruption,
                "header",
                PRE_HEADER_SIZE as u64,
                e.chain(),
            )),
        }
    }
    Ok(report)
}

/// Remarks about what other tools accept.
fn notes(h: &super::VdiHeader, report: &mut CheckReport) {
    let mut qemu = Vec::new();
    if h.version != VERSION_1_1 {
        qemu.push(format!(
            "version {}.{} (qemu reads 1.1 only)",
            h.major(),
            h.version & 0xffff
        ));
    }
    if h.block_size != 1 << 20 {
        qemu.push(format!(
            "{}-byte blocks (qemu reads 1 MiB only)",
            h.block_size
        ));
    }
    if h.block_extra != 0 {
        qemu.push(format!(
            "{} bytes of extra data per block (qemu ignores them and misreads the data)",
            h.block_extra
        ));
    }
    if h.blocks_offset % 512 != 0 || h.data_offset % 512 != 0 {
        qemu.push("block map or data not sector-aligned (qemu refuses)".into());
    }
    if h.image_type.has_parent() {
        qemu.push("a differencing image (qemu opens no VDI chains)".into());
    }
    if !qemu.is_empty() {
        report.notes.push(format!(
            "qemu-img cannot read this image: {}",
            qemu.join("; ")
        ));
    }
    if h.disk_size % 512 != 0 {
        report.notes.push(format!(
            "disk size {} is not a whole number of sectors: VirtualBox and diskconv use {}, \
             qemu rounds up",
            h.disk_size,
            h.virtual_size()
        ));
    }
}
