//! Transaction logs: detecting a dirty hive and replaying `.LOG`/`.LOG1`/`.LOG2` in memory, in
//! the old (`DIRT` dirty vector) and the new (`HvLE` entries, Marvin32) formats.
//!
//! Layouts (Suhanov, "Windows registry file format specification", "Format of transaction log
//! files"; libyal's libregf documentation):
//!
//! - Both formats start with a partial copy of the hive's base block: its first 512 bytes (one
//!   sector), file type 1 or 2 (old format) or 6 (new format), both sequence numbers equal,
//!   checksum valid.
//! - Old format: at offset 512 the dirty vector, `DIRT` then a bitmap with one bit per 512-byte
//!   page of the hive bins (the log's hive-bins size / 512 bits, least significant bit first).
//!   The dirty pages follow from the next sector boundary, 512 bytes each, in bitmap order.
//! - New format: from offset 512, log entries, each at a multiple of 512:
//!
//!   | offset | size | field |
//!   |---:|---:|---|
//!   | 0 | 4 | `HvLE` |
//!   | 4 | 4 | size of the entry (multiple of 512) |
//!   | 8 | 4 | flags (bit 0 copied to the base block's flags) |
//!   | 12 | 4 | sequence number |
//!   | 16 | 4 | hive-bins size after this entry (multiple of 4096) |
//!   | 20 | 4 | dirty page count |
//!   | 24 | 8 | hash-1: Marvin32 of bytes 40..size |
//!   | 32 | 8 | hash-2: Marvin32 of bytes 0..32 |
//!   | 40 | 8 × count | page references: offset in the hive bins, size |
//!   | ... | | the pages, in reference order, without gaps |
//!
//! Replay follows what Windows does: the entries of both logs are chained by sequence number
//! (the log with the earlier entries first, the first entry equal to the log's own sequence
//! number and not older than the hive), stopping at the first gap, bad hash or malformed entry.
//! A primary base block with a bad checksum or signature is replaced by the newest log's copy.
//! Everything happens on bytes in memory; no file is touched.

mod marvin;

use std::path::{Path, PathBuf};

pub use marvin::{HVLE_SEED, marvin32};

use super::base::{
    BASE_BLOCK_SIZE, FILE_TYPE_LOG_NEW, FILE_TYPE_LOG_OLD, FILE_TYPE_LOG_OLD2, FILE_TYPE_PRIMARY,
    checksum,
};
use super::{BaseBlock, HiveError, RecoveryReport};
use crate::bytes::{get_le32, get_le64};
use crate::error::Result;

/// One sector: the size of the base-block copy at the start of a log and the alignment of
/// everything after it.
pub const SECTOR: usize = 512;
/// `HvLE`: the signature of a new-format log entry (spec, "Log entries").
pub const HVLE_SIGNATURE: &[u8; 4] = b"HvLE";
/// `DIRT`: the signature of the old-format dirty vector (spec, "Dirty vector").
pub const DIRT_SIGNATURE: &[u8; 4] = b"DIRT";
/// Size of the fixed part of a log entry (up to the first page reference).
const ENTRY_HEADER: usize = 40;
/// Granularity of hive-bins sizes.
const BIN_GRANULE: u32 = 4096;
/// Offset of the `Flags` field in the base block (only bit 0 travels through log entries).
const BASE_FLAGS_OFFSET: usize = 144;

/// The outcome of [`prepare`]: the bytes to parse (recovered when logs were replayed).
#[derive(Debug)]
pub struct Prepared {
    /// The hive file bytes (base block + bins), with the logs applied.
    pub bytes: Vec<u8>,
    /// The hive is dirty and its logs were not applied: edits must be refused.
    pub read_only: bool,
    /// What was done.
    pub report: RecoveryReport,
}

/// The names [`find_logs`] looks for: `<hive>.LOG`, `<hive>.LOG1` and `<hive>.LOG2` beside the
/// hive (it matches them in any case).
pub fn default_log_names(hive: &Path) -> Vec<PathBuf> {
    let name = hive.file_name().unwrap_or_default().to_string_lossy();
    ["LOG", "LOG1", "LOG2"]
        .iter()
        .map(|ext| hive.with_file_name(format!("{name}.{ext}")))
        .collect()
}

/// The transaction logs beside `hive`: `<name>.LOG`, `<name>.LOG1`, `<name>.LOG2` (the
/// extension matched without regard to case), those that exist.
///
/// The whole name is compared without regard to case, since Windows does not care either
/// (`transactions_NTUSER.DAT` goes with `transactions_ntuser.dat.log1`). The result is in the
/// order `.LOG`, `.LOG1`, `.LOG2`.
pub fn find_logs(hive: &Path) -> Vec<PathBuf> {
    let Some(name) = hive.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let dir = match hive.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let lower = name.to_lowercase();
    let mut found: Vec<(usize, String, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let Some(candidate) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let cl = candidate.to_lowercase();
        let Some(ext) = cl
            .strip_prefix(lower.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            continue;
        };
        let rank = match ext {
            "log" => 0,
            "log1" => 1,
            "log2" => 2,
            _ => continue,
        };
        if e.path().is_file() {
            found.push((rank, candidate, e.path()));
        }
    }
    found.sort();
    found.into_iter().map(|(_, _, p)| p).collect()
}

/// The layout of a transaction log, from the file type of its base block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLayout {
    /// File type 1 or 2: a `DIRT` dirty vector and 512-byte dirty pages.
    Old,
    /// File type 6: `HvLE` log entries.
    New,
}

/// A transaction log whose base-block copy is valid.
struct LogHeader {
    /// The base-block copy (its first 512 bytes; the rest zero).
    base: BaseBlock,
    format: LogLayout,
}

/// Validates the base-block copy in the first sector of a log: signature, version, checksum,
/// equal sequence numbers, a log file type. The error says what is wrong.
fn log_header(bytes: &[u8]) -> std::result::Result<LogHeader, String> {
    let first = bytes.get(..SECTOR).ok_or_else(|| {
        format!(
            "the file has {} bytes, less than its {SECTOR}-byte base block",
            bytes.len()
        )
    })?;
    let mut raw = vec![0u8; BASE_BLOCK_SIZE];
    raw[..SECTOR].copy_from_slice(first);
    let base = BaseBlock::parse(&raw, 0).map_err(|e| e.to_string())?;
    let stored = base.stored_checksum();
    let computed = checksum(&raw);
    if stored != computed {
        return Err(format!(
            "base block at 0x1fc: checksum {stored:#010x}, expected {computed:#010x}"
        ));
    }
    if base.primary_sequence() != base.secondary_sequence() {
        return Err(format!(
            "base block at 0x4: sequence numbers {} and {} differ (the log was not written completely)",
            base.primary_sequence(),
            base.secondary_sequence()
        ));
    }
    let format = match base.file_type() {
        FILE_TYPE_LOG_OLD | FILE_TYPE_LOG_OLD2 => LogLayout::Old,
        FILE_TYPE_LOG_NEW => LogLayout::New,
        t => {
            return Err(format!(
                "base block at 0x1c: file type {t}, expected 1, 2 (old log) or 6 (new log)"
            ));
        }
    };
    Ok(LogHeader { base, format })
}

/// One page of a log entry: where it goes in the hive bins and its bytes.
#[derive(Debug)]
struct Page<'a> {
    offset: u32,
    data: &'a [u8],
}

/// A verified `HvLE` entry.
#[derive(Debug)]
struct Entry<'a> {
    /// Offset of the entry in its log file.
    offset: usize,
    flags: u32,
    sequence: u32,
    hive_bins_size: u32,
    pages: Vec<Page<'a>>,
}

/// What one entry of a new-format log holds, as [`inspect_log`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Offset of the entry in the log file.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u32,
    /// Its sequence number.
    pub sequence: u32,
    /// The hive-bins size after it is applied.
    pub hive_bins_size: u32,
    /// The number of dirty pages it carries.
    pub page_count: u32,
}

/// A summary of a transaction log: its format, its base-block copy and (new format) its
/// entries, read up to the first one that is not a valid entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogInfo {
    /// The format.
    pub format: LogLayout,
    /// The sequence number of its base-block copy.
    pub sequence: u32,
    /// The last-written timestamp of its base-block copy.
    pub timestamp: u64,
    /// The hive-bins size of its base-block copy.
    pub hive_bins_size: u32,
    /// New format: the valid entries, in file order (both hashes verified).
    pub entries: Vec<EntryInfo>,
    /// Old format: the number of dirty 512-byte pages in the dirty vector.
    pub dirty_pages: usize,
    /// Why reading stopped where it did, when it was not a clean end (no further `HvLE`).
    pub stop: Option<String>,
}

/// Reads a transaction log's base block and entries (new format) or dirty vector (old format)
/// without applying anything. An error when its base-block copy is not valid.
pub fn inspect_log(bytes: &[u8]) -> Result<LogInfo> {
    let header =
        log_header(bytes).map_err(|d| HiveError::invalid("transaction log base block", 0, d))?;
    let mut info = LogInfo {
        format: header.format,
        sequence: header.base.primary_sequence(),
        timestamp: header.base.timestamp(),
        hive_bins_size: header.base.hive_bins_size(),
        entries: Vec::new(),
        dirty_pages: 0,
        stop: None,
    };
    match header.format {
        LogLayout::New => {
            let (entries, stop) = parse_entries(bytes, u64::MAX);
            info.entries = entries
                .iter()
                .map(|e| EntryInfo {
                    offset: e.offset as u64,
                    size: get_le32(bytes, e.offset + 4).unwrap_or(0),
                    sequence: e.sequence,
                    hive_bins_size: e.hive_bins_size,
                    page_count: e.pages.len() as u32,
                })
                .collect();
            info.stop = stop;
        }
        LogLayout::Old => match dirty_vector(bytes, &header.base, u64::MAX) {
            Ok(v) => info.dirty_pages = v.pages.len(),
            Err(e) => info.stop = Some(e),
        },
    }
    Ok(info)
}

/// Parses the entries of a new-format log from offset 512, in file order, up to the first
/// offset that does not hold a valid entry. `max_bins` caps the hive-bins size an entry may
/// claim. Returns the valid entries and, when reading stopped at something other than the
/// plain absence of an `HvLE` signature, why.
fn parse_entries(log: &[u8], max_bins: u64) -> (Vec<Entry<'_>>, Option<String>) {
    let mut entries = Vec::new();
    let mut pos = SECTOR;
    loop {
        match parse_entry(log, pos, max_bins) {
            Ok(Some((e, size))) => {
                entries.push(e);
                pos += size;
            }
            Ok(None) => return (entries, None),
            Err(why) => return (entries, Some(why)),
        }
    }
}

/// Parses the entry at `pos`: `Ok(None)` when there is no `HvLE` signature there (the end of
/// the entries), an error naming the field when the entry is malformed or a hash is wrong.
fn parse_entry(
    log: &[u8],
    pos: usize,
    max_bins: u64,
) -> std::result::Result<Option<(Entry<'_>, usize)>, String> {
    let Some(head) = log.get(pos..).and_then(|s| s.get(..ENTRY_HEADER)) else {
        return Ok(None);
    };
    if &head[..4] != HVLE_SIGNATURE {
        return Ok(None);
    }
    // The header is 40 bytes long, so these reads cannot fail.
    let field = |off: usize| get_le32(head, off).unwrap_or(0);
    let size = field(4);
    let flags = field(8);
    let sequence = field(12);
    let hive_bins_size = field(16);
    let count = field(20);
    let hash1 = get_le64(head, 24).unwrap_or(0);
    let hash2 = get_le64(head, 32).unwrap_or(0);
    let at = |off: usize| pos as u64 + off as u64;
    if size as usize % SECTOR != 0 || (size as usize) < SECTOR {
        return Err(format!(
            "log entry at {:#x}: size {size:#x} is not a non-zero multiple of 512",
            at(0)
        ));
    }
    let Some(entry) = pos
        .checked_add(size as usize)
        .and_then(|end| log.get(pos..end))
    else {
        return Err(format!(
            "log entry at {:#x}: size {size:#x} runs past the end of the file ({:#x} bytes)",
            at(0),
            log.len()
        ));
    };
    let want2 = marvin32(HVLE_SEED, &head[..32]);
    if want2 != hash2 {
        return Err(format!(
            "log entry at {:#x}: hash-2 {hash2:#018x}, expected {want2:#018x}",
            at(0)
        ));
    }
    let want1 = marvin32(HVLE_SEED, &entry[ENTRY_HEADER..]);
    if want1 != hash1 {
        return Err(format!(
            "log entry at {:#x}: hash-1 {hash1:#018x}, expected {want1:#018x}",
            at(0)
        ));
    }
    if hive_bins_size == 0
        || hive_bins_size % BIN_GRANULE != 0
        || u64::from(hive_bins_size) > max_bins
    {
        return Err(format!(
            "log entry at {:#x}: hive-bins size {hive_bins_size:#x} is not a non-zero multiple of 4096{}",
            at(16),
            if u64::from(hive_bins_size) > max_bins {
                format!(" within what the hive and its logs can hold ({max_bins:#x})")
            } else {
                String::new()
            }
        ));
    }
    // The references must fit in the entry: 8 bytes each after the 40-byte header.
    let refs_end = u64::from(count) * 8 + ENTRY_HEADER as u64;
    if refs_end > u64::from(size) {
        return Err(format!(
            "log entry at {:#x}: {count} dirty page references need {refs_end:#x} bytes, the entry has {size:#x}",
            at(20)
        ));
    }
    let mut pages = Vec::with_capacity(count as usize);
    let mut data_pos = refs_end as usize;
    for i in 0..count as usize {
        let r = ENTRY_HEADER + 8 * i;
        let (Some(off), Some(len)) = (get_le32(entry, r), get_le32(entry, r + 4)) else {
            return Err(format!("log entry at {:#x}: reference {i} is cut", at(r)));
        };
        if len == 0 || len as usize % SECTOR != 0 || off as usize % SECTOR != 0 {
            return Err(format!(
                "log entry at {:#x}: page reference {i} (offset {off:#x}, size {len:#x}) is not 512-byte aligned",
                at(r)
            ));
        }
        if u64::from(off) + u64::from(len) > u64::from(hive_bins_size) {
            return Err(format!(
                "log entry at {:#x}: page reference {i} (offset {off:#x}, size {len:#x}) ends past the hive-bins size {hive_bins_size:#x}",
                at(r)
            ));
        }
        let Some(data) = data_pos
            .checked_add(len as usize)
            .and_then(|end| entry.get(data_pos..end))
        else {
            return Err(format!(
                "log entry at {:#x}: page {i} ({len:#x} bytes at {:#x}) runs past the end of the entry (size {size:#x})",
                at(r),
                at(data_pos)
            ));
        };
        pages.push(Page { offset: off, data });
        data_pos += len as usize;
    }
    Ok(Some((
        Entry {
            offset: pos,
            flags,
            sequence,
            hive_bins_size,
            pages,
        },
        size as usize,
    )))
}

/// The dirty pages of an old-format log: (offset in the hive bins, 512 bytes), in order.
struct DirtyVector<'a> {
    pages: Vec<Page<'a>>,
}

/// Reads the `DIRT` vector and the dirty pages of an old-format log. The error names what is
/// wrong (the log is then unusable).
fn dirty_vector<'a>(
    log: &'a [u8],
    base: &BaseBlock,
    max_bins: u64,
) -> std::result::Result<DirtyVector<'a>, String> {
    let size = base.hive_bins_size();
    if size == 0 || size % BIN_GRANULE != 0 || u64::from(size) > max_bins {
        return Err(format!(
            "base block at 0x28: hive-bins size {size:#x} is not a non-zero multiple of 4096 within {max_bins:#x}"
        ));
    }
    let bits = size as usize / SECTOR;
    let bitmap_len = bits / 8;
    match log.get(SECTOR..SECTOR + 4) {
        Some(sig) if sig == DIRT_SIGNATURE => {}
        Some(sig) => {
            return Err(format!(
                "dirty vector at 0x200: expected signature 'DIRT', found {sig:02x?}"
            ));
        }
        None => {
            return Err(format!(
                "dirty vector at 0x200: the file ends at {:#x}",
                log.len()
            ));
        }
    }
    let vec_start = SECTOR + 4;
    let vec_end = vec_start + bitmap_len;
    let Some(bitmap) = log.get(vec_start..vec_end) else {
        return Err(format!(
            "dirty vector at 0x204: {bitmap_len:#x} bytes of bitmap for a hive-bins size of {size:#x} run past the end of the file ({:#x} bytes)",
            log.len()
        ));
    };
    let first_page = vec_end.div_ceil(SECTOR) * SECTOR;
    let mut pages = Vec::new();
    let mut pos = first_page;
    for bit in 0..bits {
        if bitmap[bit / 8] & (1 << (bit % 8)) == 0 {
            continue;
        }
        let Some(data) = log.get(pos..pos + SECTOR) else {
            return Err(format!(
                "dirty page {} (hive-bins offset {:#x}) at {pos:#x}: past the end of the file ({:#x} bytes)",
                pages.len(),
                bit * SECTOR,
                log.len()
            ));
        };
        pages.push(Page {
            offset: (bit * SECTOR) as u32,
            data,
        });
        pos += SECTOR;
    }
    Ok(DirtyVector { pages })
}

/// The base block of the primary file as far as it can be trusted.
enum PrimaryBase {
    /// Signature, version and checksum are right.
    Valid(BaseBlock),
    /// Signature and version are right but the checksum is not.
    BadChecksum(BaseBlock),
    /// Not a base block at all (or the file is too short): the parse error.
    Broken(HiveError),
}

/// Checks the base block of `primary`; when the hive is dirty, replays `logs` (name, bytes)
/// into it. A dirty hive without usable logs is returned as it is with `read_only` set, unless
/// `accept_data_loss`.
///
/// The report's `notes` say why a log or an entry was not used. Nothing is written anywhere.
pub fn prepare(
    primary: Vec<u8>,
    logs: &[(PathBuf, Vec<u8>)],
    accept_data_loss: bool,
) -> Result<Prepared> {
    let pbase = match BaseBlock::parse(&primary, 0) {
        Ok(b) if b.checksum_ok() => PrimaryBase::Valid(b),
        Ok(b) => PrimaryBase::BadChecksum(b),
        Err(e) => PrimaryBase::Broken(e),
    };
    if let PrimaryBase::Valid(b) = &pbase {
        if !b.is_dirty() {
            return Ok(Prepared {
                bytes: primary,
                read_only: false,
                report: RecoveryReport::default(),
            });
        }
    }
    let mut report = RecoveryReport {
        was_dirty: true,
        ..RecoveryReport::default()
    };
    match &pbase {
        PrimaryBase::Valid(b) => report.notes.push(format!(
            "the hive is dirty: sequence numbers {} and {} differ",
            b.primary_sequence(),
            b.secondary_sequence()
        )),
        PrimaryBase::BadChecksum(b) => report.notes.push(format!(
            "the hive's base block is damaged: checksum {:#010x}, expected {:#010x}",
            b.stored_checksum(),
            checksum(b.raw())
        )),
        PrimaryBase::Broken(e) => {
            report
                .notes
                .push(format!("the hive's base block is unreadable: {e}"));
        }
    }
    // Every hive-bins size must be backed by bytes we were given: the hive's own bins plus
    // what the logs carry. This caps every allocation by the size of the input.
    let max_bins: u64 = {
        let total = primary.len().saturating_sub(BASE_BLOCK_SIZE) as u64
            + logs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        (total.div_ceil(u64::from(BIN_GRANULE)) * u64::from(BIN_GRANULE)).min(0xFFFF_F000)
    };
    let mut headers = Vec::new();
    for (name, bytes) in logs {
        if bytes.is_empty() {
            report
                .notes
                .push(format!("{}: empty, not used", name.display()));
            continue;
        }
        match log_header(bytes) {
            Ok(h) => headers.push((name, bytes.as_slice(), h)),
            Err(why) => report
                .notes
                .push(format!("{}: not used: {why}", name.display())),
        }
    }
    let recovered = if headers.iter().any(|(_, _, h)| h.format == LogLayout::New) {
        let new: Vec<_> = headers
            .into_iter()
            .filter(|(n, _, h)| {
                if h.format == LogLayout::Old {
                    report.notes.push(format!(
                        "{}: old-format log ignored, the other logs are new-format",
                        n.display()
                    ));
                }
                h.format == LogLayout::New
            })
            .collect();
        replay_new(&primary, &pbase, &new, max_bins, &mut report)?
    } else {
        replay_old(&primary, &pbase, &headers, max_bins, &mut report)?
    };
    match recovered {
        Some(bytes) => Ok(Prepared {
            bytes,
            read_only: false,
            report,
        }),
        None => {
            if let PrimaryBase::Broken(e) = pbase {
                // Extend the parse error's own detail (so the structure and offset are named once).
                let (what, offset, mut detail) = match e {
                    HiveError::Structure(crate::error::StructureError {
                        what,
                        offset,
                        detail,
                        ..
                    }) => (what, offset, detail),
                    other => ("base block".to_string(), 0, other.to_string()),
                };
                for n in &report.notes[1..] {
                    detail.push_str("; ");
                    detail.push_str(n);
                }
                if logs.is_empty() {
                    detail.push_str("; no transaction log to recover it from");
                }
                return Err(HiveError::invalid(what, offset, detail).into());
            }
            if logs.is_empty() {
                report
                    .notes
                    .push("no transaction log (.LOG, .LOG1, .LOG2) was found".into());
            }
            report.data_lost = accept_data_loss;
            Ok(Prepared {
                bytes: primary,
                read_only: !accept_data_loss,
                report,
            })
        }
    }
}

/// The hive bins of the primary file resized to `size` (zero-filled past the end of the file).
fn initial_bins(primary: &[u8], size: u32) -> Vec<u8> {
    let have = primary.get(BASE_BLOCK_SIZE..).unwrap_or(&[]);
    let take = have.len().min(size as usize);
    let mut bins = have[..take].to_vec();
    bins.resize(size as usize, 0);
    bins
}

/// The base block to start from: the primary's when valid, otherwise the log's 512-byte copy
/// completed with the primary's bytes 512..4096 (boot type and recover fields).
fn start_base(primary: &[u8], pbase: &PrimaryBase, log_base: &BaseBlock) -> BaseBlock {
    match pbase {
        PrimaryBase::Valid(b) => b.clone(),
        _ => {
            let mut raw = [0u8; BASE_BLOCK_SIZE];
            raw[..SECTOR].copy_from_slice(&log_base.raw()[..SECTOR]);
            if let Some(rest) = primary.get(SECTOR..BASE_BLOCK_SIZE) {
                raw[SECTOR..].copy_from_slice(rest);
            }
            // The log copy parsed as a base block, so this one does too (same first sector).
            BaseBlock::parse(&raw, 0).unwrap_or_else(|_| log_base.clone())
        }
    }
}

/// The final bytes: base block (sequence numbers equal, file type primary, checksum
/// recomputed) followed by the bins.
fn assemble(mut base: BaseBlock, sequence: u32, bins: Vec<u8>) -> Vec<u8> {
    base.set_sequences(sequence, sequence);
    base.set_file_type(FILE_TYPE_PRIMARY);
    // `bins` never exceeds the 0xFFFFF000 cap, so its length fits in u32.
    base.set_hive_bins_size(bins.len() as u32);
    let mut out = Vec::with_capacity(BASE_BLOCK_SIZE + bins.len());
    out.extend_from_slice(&base.to_bytes());
    out.extend_from_slice(&bins);
    out
}

/// Replays new-format logs. `None` when no entry could be applied (the notes say why).
fn replay_new(
    primary: &[u8],
    pbase: &PrimaryBase,
    logs: &[(&PathBuf, &[u8], LogHeader)],
    max_bins: u64,
    report: &mut RecoveryReport,
) -> Result<Option<Vec<u8>>> {
    let base_valid = matches!(pbase, PrimaryBase::Valid(_));
    // Logs in the order of their sequence numbers: the one with the earlier entries first.
    let mut order: Vec<usize> = (0..logs.len()).collect();
    order.sort_by_key(|&i| logs[i].2.base.primary_sequence());
    let mut chain: Vec<(usize, Entry<'_>)> = Vec::new();
    for &i in &order {
        let (name, bytes, header) = &logs[i];
        let log_seq = header.base.primary_sequence();
        if let PrimaryBase::Valid(b) = pbase {
            if log_seq < b.secondary_sequence() {
                report.notes.push(format!(
                    "{}: older than the hive (log sequence number {log_seq}, the hive's secondary sequence number is {})",
                    name.display(),
                    b.secondary_sequence()
                ));
                continue;
            }
        }
        let (entries, stop) = parse_entries(bytes, max_bins);
        let expected = chain.last().map(|(_, e)| e.sequence.wrapping_add(1));
        let mut used = 0usize;
        let mut next = expected;
        let mut restarted = false;
        let mut stopped_at_gap = None;
        for e in entries {
            match next {
                None => {
                    // The first entry applied must carry the log's own sequence number.
                    if e.sequence < log_seq {
                        continue; // an old entry, already in the hive
                    }
                    if e.sequence != log_seq {
                        stopped_at_gap = Some(format!(
                            "log entry at {:#x}: sequence number {}, expected {log_seq} (the log's)",
                            e.offset, e.sequence
                        ));
                        break;
                    }
                }
                Some(n) if e.sequence == n => {}
                Some(n) if used == 0 && e.sequence < n && !restarted => continue,
                Some(n) => {
                    if used == 0 && !base_valid && e.sequence == log_seq && !restarted {
                        // The earlier log does not lead to this one: with a damaged base
                        // block, Windows recovers from the log with the latest entries alone.
                        report.notes.push(format!(
                            "{}: entries from sequence number {log_seq} do not follow the previous log's ({}); recovering from this log alone",
                            name.display(),
                            n.wrapping_sub(1)
                        ));
                        chain.clear();
                        restarted = true;
                    } else {
                        stopped_at_gap = Some(format!(
                            "log entry at {:#x}: sequence number {}, expected {n}; replay stops here",
                            e.offset, e.sequence
                        ));
                        break;
                    }
                }
            }
            next = Some(e.sequence.wrapping_add(1));
            chain.push((i, e));
            used += 1;
        }
        if let Some(g) = stopped_at_gap {
            if used > 0 || expected.is_some() {
                report.notes.push(format!("{}: {g}", name.display()));
            } else {
                report
                    .notes
                    .push(format!("{}: not used: {g}", name.display()));
            }
        }
        if let Some(why) = stop {
            report
                .notes
                .push(format!("{}: entries end here: {why}", name.display()));
        }
        if used == 0 && next.is_none() {
            report.notes.push(format!(
                "{}: no entry with sequence number {log_seq} to start from",
                name.display()
            ));
        }
    }
    let Some((first_log, _)) = chain.first() else {
        return Ok(None);
    };
    // With a damaged primary base block, take the base block of the newest log that
    // contributed entries (the chain ends in it).
    let base_log = chain.last().map_or(*first_log, |(i, _)| *i);
    let mut base = start_base(primary, pbase, &logs[base_log].2.base);
    report.base_block_from_log = !base_valid;
    let start_size = base.hive_bins_size();
    if u64::from(start_size) > max_bins || start_size % BIN_GRANULE != 0 {
        return Err(HiveError::invalid(
            "base block",
            0x28,
            format!(
                "hive-bins size {start_size:#x} is not a multiple of 4096 within what the hive and its logs hold ({max_bins:#x})"
            ),
        )
        .into());
    }
    let mut bins = initial_bins(primary, start_size);
    let mut last_seq = 0;
    let mut flags = 0;
    for (i, e) in &chain {
        bins.resize(e.hive_bins_size as usize, 0);
        for p in &e.pages {
            // parse_entry checked offset + size <= hive_bins_size == bins.len().
            let at = p.offset as usize;
            if let Some(dst) = bins.get_mut(at..at + p.data.len()) {
                dst.copy_from_slice(p.data);
            }
        }
        last_seq = e.sequence;
        flags = e.flags & 1;
        let name = logs[*i].0;
        if !report.logs_used.contains(name) {
            report.logs_used.push(name.clone());
        }
        report.entries_applied += 1;
    }
    let mut raw = *base.raw();
    let f = get_le32(&raw, BASE_FLAGS_OFFSET).unwrap_or(0);
    raw[BASE_FLAGS_OFFSET..BASE_FLAGS_OFFSET + 4]
        .copy_from_slice(&((f & !1) | flags).to_le_bytes());
    if let Ok(b) = BaseBlock::parse(&raw, 0) {
        base = b;
    }
    Ok(Some(assemble(base, last_seq, bins)))
}

/// Replays an old-format log (the applicable one: same timestamp as the hive, the newest
/// when several qualify). `None` when no log is applicable (the notes say why).
fn replay_old(
    primary: &[u8],
    pbase: &PrimaryBase,
    logs: &[(&PathBuf, &[u8], LogHeader)],
    max_bins: u64,
    report: &mut RecoveryReport,
) -> Result<Option<Vec<u8>>> {
    let mut candidates: Vec<usize> = Vec::new();
    for (i, (name, _, h)) in logs.iter().enumerate() {
        if let PrimaryBase::Valid(b) = pbase {
            if h.base.timestamp() != b.timestamp() {
                report.notes.push(format!(
                    "{}: not used: its last-written timestamp {:#x} differs from the hive's {:#x}",
                    name.display(),
                    h.base.timestamp(),
                    b.timestamp()
                ));
                continue;
            }
        }
        candidates.push(i);
    }
    candidates.sort_by_key(|&i| std::cmp::Reverse(logs[i].2.base.primary_sequence()));
    for i in candidates {
        let (name, bytes, header) = &logs[i];
        let vector = match dirty_vector(bytes, &header.base, max_bins) {
            Ok(v) => v,
            Err(why) => {
                report
                    .notes
                    .push(format!("{}: not used: {why}", name.display()));
                continue;
            }
        };
        let mut base = start_base(primary, pbase, &header.base);
        let start = match pbase {
            PrimaryBase::Valid(b) => b.hive_bins_size(),
            _ => header.base.hive_bins_size(),
        };
        let start = if u64::from(start) <= max_bins {
            start
        } else {
            0
        };
        let mut bins = initial_bins(primary, start);
        let size = header.base.hive_bins_size();
        bins.resize(size as usize, 0);
        let mut applied = 0usize;
        for p in &vector.pages {
            let at = p.offset as usize;
            // A dirty page starting a hive bin must be a valid bin header for its place.
            if at % BIN_GRANULE as usize == 0 && p.data.get(..4) == Some(b"hbin".as_slice()) {
                let off = get_le32(p.data, 4).unwrap_or(u32::MAX);
                let bsize = get_le32(p.data, 8).unwrap_or(0);
                if off as usize != at || bsize < BIN_GRANULE || bsize % BIN_GRANULE != 0 {
                    report.notes.push(format!(
                        "{}: dirty hive bin for offset {at:#x} is invalid (offset field {off:#x}, size {bsize:#x}); replay stops before it",
                        name.display()
                    ));
                    break;
                }
            }
            // dirty_vector made offsets from bit positions below size / 512.
            if let Some(dst) = bins.get_mut(at..at + p.data.len()) {
                dst.copy_from_slice(p.data);
            }
            applied += 1;
        }
        report.entries_applied = applied;
        report.logs_used.push((*name).clone());
        report.base_block_from_log = !matches!(pbase, PrimaryBase::Valid(_));
        let seq = match pbase {
            PrimaryBase::Valid(b) => b.primary_sequence().max(header.base.primary_sequence()),
            _ => header.base.primary_sequence(),
        };
        base.set_hive_bins_size(size);
        return Ok(Some(assemble(base, seq, bins)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A primary hive: base block with the given sequence numbers, bins of `bins_size` bytes
    /// filled with `fill`.
    fn hive(seq1: u32, seq2: u32, bins_size: u32, fill: u8) -> Vec<u8> {
        let mut b = BaseBlock::new(0x20, bins_size, 7, "test");
        b.set_sequences(seq1, seq2);
        let mut out = b.to_bytes().to_vec();
        out.resize(BASE_BLOCK_SIZE + bins_size as usize, fill);
        out
    }

    /// The 512-byte base-block copy of a log: file type `ft`, both sequence numbers `seq`.
    fn log_base(ft: u32, seq: u32, bins_size: u32) -> Vec<u8> {
        let mut b = BaseBlock::new(0x20, bins_size, 7, "test");
        b.set_sequences(seq, seq);
        b.set_file_type(ft);
        b.to_bytes()[..SECTOR].to_vec()
    }

    /// An `HvLE` entry: sequence, flags, hive-bins size, pages (offset, bytes); hashes right.
    fn entry(seq: u32, flags: u32, bins_size: u32, pages: &[(u32, &[u8])]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(HVLE_SIGNATURE); // 0: signature
        e.extend_from_slice(&0u32.to_le_bytes()); // 4: size, set below
        e.extend_from_slice(&flags.to_le_bytes()); // 8: flags
        e.extend_from_slice(&seq.to_le_bytes()); // 12: sequence number
        e.extend_from_slice(&bins_size.to_le_bytes()); // 16: hive-bins size
        e.extend_from_slice(&(pages.len() as u32).to_le_bytes()); // 20: page count
        e.extend_from_slice(&[0; 16]); // 24: hash-1, 32: hash-2
        for (off, data) in pages {
            e.extend_from_slice(&off.to_le_bytes());
            e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        for (_, data) in pages {
            e.extend_from_slice(data);
        }
        e.resize(e.len().div_ceil(SECTOR) * SECTOR, 0);
        let size = e.len() as u32;
        e[4..8].copy_from_slice(&size.to_le_bytes());
        let h1 = marvin32(HVLE_SEED, &e[40..]);
        e[24..32].copy_from_slice(&h1.to_le_bytes());
        let h2 = marvin32(HVLE_SEED, &e[..32]);
        e[32..40].copy_from_slice(&h2.to_le_bytes());
        e
    }

    fn new_log(seq: u32, entries: &[Vec<u8>]) -> (PathBuf, Vec<u8>) {
        let mut l = log_base(FILE_TYPE_LOG_NEW, seq, 4096);
        for e in entries {
            l.extend_from_slice(e);
        }
        (PathBuf::from(format!("h.LOG{seq}")), l)
    }

    fn page(b: u8) -> Vec<u8> {
        vec![b; 4096]
    }

    #[test]
    fn clean_hive_is_returned_unchanged() {
        let h = hive(5, 5, 4096, 0xAA);
        let logs = [new_log(5, &[entry(5, 0, 4096, &[(0, &page(1))])])];
        let p = prepare(h.clone(), &logs, false).unwrap();
        assert_eq!(p.bytes, h);
        assert!(!p.read_only);
        assert_eq!(p.report, RecoveryReport::default());
    }

    #[test]
    fn entries_chain_across_logs_grow_the_hive_and_restore_flag_bit_0() {
        let h = hive(11, 10, 4096, 0xAA);
        let p1 = page(1);
        let p2 = page(2);
        let p3 = page(3);
        // Log A: entries 10 and 11 (then a stale 3); log B: entries 12 and 13.
        let a = new_log(
            10,
            &[
                entry(10, 0, 4096, &[(0, &p1)]),
                entry(11, 0, 8192, &[(4096, &p2)]),
                entry(3, 0, 4096, &[(0, &p3)]),
            ],
        );
        let b = new_log(
            12,
            &[
                entry(12, 0, 12288, &[(8192, &p3)]),
                entry(13, 1, 12288, &[(0, &p2)]),
            ],
        );
        for logs in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            let p = prepare(h.clone(), &logs, false).unwrap();
            assert_eq!(p.report.entries_applied, 4, "{:?}", p.report);
            assert_eq!(p.report.logs_used, vec![a.0.clone(), b.0.clone()]);
            assert_eq!(p.bytes.len(), 4096 + 12288);
            assert!(p.bytes[4096..8192].iter().all(|&x| x == 2));
            assert!(p.bytes[8192..12288].iter().all(|&x| x == 2));
            assert!(p.bytes[12288..].iter().all(|&x| x == 3));
            let base = BaseBlock::parse(&p.bytes, 0).unwrap();
            assert!(!base.is_dirty());
            assert_eq!(base.primary_sequence(), 13);
            assert_eq!(base.file_type(), FILE_TYPE_PRIMARY);
            assert_eq!(base.hive_bins_size(), 12288);
            assert_eq!(get_le32(base.raw(), BASE_FLAGS_OFFSET), Some(1));
        }
    }

    #[test]
    fn a_shrinking_entry_shrinks_the_hive() {
        let h = hive(4, 3, 12288, 0xAA);
        let logs = [new_log(3, &[entry(3, 0, 4096, &[(0, &page(9))])])];
        let p = prepare(h, &logs, false).unwrap();
        assert_eq!(p.bytes.len(), 4096 + 4096);
        assert!(p.bytes[4096..].iter().all(|&x| x == 9));
    }

    #[test]
    fn a_gap_stops_the_replay_and_the_notes_say_where() {
        let h = hive(2, 1, 4096, 0);
        let logs = [new_log(
            1,
            &[
                entry(1, 0, 4096, &[(0, &page(1))]),
                entry(3, 0, 4096, &[(0, &page(3))]),
            ],
        )];
        let p = prepare(h, &logs, false).unwrap();
        assert_eq!(p.report.entries_applied, 1);
        assert!(p.bytes[4096..].iter().all(|&x| x == 1));
        let n = p.report.notes.join("\n");
        assert!(
            n.contains("sequence number 3, expected 2") && n.contains("0x"),
            "{n}"
        );
    }

    #[test]
    fn a_log_that_does_not_start_at_its_sequence_number_is_not_used() {
        let h = hive(6, 5, 4096, 0);
        let logs = [new_log(5, &[entry(7, 0, 4096, &[(0, &page(1))])])];
        let p = prepare(h.clone(), &logs, false).unwrap();
        assert!(p.read_only && p.report.was_dirty);
        assert_eq!(p.bytes, h);
        assert!(p.report.notes.join("\n").contains("expected 5"));
    }

    #[test]
    fn an_invalid_log_base_block_is_named() {
        let h = hive(6, 5, 4096, 0);
        let (n, mut l) = new_log(5, &[entry(5, 0, 4096, &[(0, &page(1))])]);
        l[8] ^= 1; // secondary sequence number: checksum now wrong
        let p = prepare(h, &[(n, l)], false).unwrap();
        assert!(p.read_only);
        assert!(p.report.notes.join("\n").contains("checksum"));
        let e = inspect_log(&[0u8; 100]).unwrap_err().to_string();
        assert!(e.contains("512"), "{e}");
    }

    #[test]
    fn old_format_dirty_vector_replays_pages_and_resizes() {
        let h = hive(9, 8, 4096, 0xAA);
        // Log for a hive grown to 8192 bytes: pages 1 and 8..=15 dirty (bit = 512-byte page).
        let mut l = log_base(FILE_TYPE_LOG_OLD, 9, 8192);
        l.extend_from_slice(DIRT_SIGNATURE);
        l.extend_from_slice(&[0b0000_0010, 0xFF]); // 16 bits
        l.resize(1024, 0); // pages start at the next sector
        l.extend_from_slice(&[5u8; 512]); // page 1
        let mut bin = vec![7u8; 4096]; // pages 8..=15: a new hive bin at 4096
        bin[..4].copy_from_slice(b"hbin");
        bin[4..8].copy_from_slice(&4096u32.to_le_bytes());
        bin[8..12].copy_from_slice(&4096u32.to_le_bytes());
        l.extend_from_slice(&bin);
        let p = prepare(h.clone(), &[(PathBuf::from("h.LOG1"), l.clone())], false).unwrap();
        assert_eq!(p.report.entries_applied, 9, "{:?}", p.report);
        assert_eq!(p.bytes.len(), 4096 + 8192);
        assert!(p.bytes[4096..4608].iter().all(|&x| x == 0xAA));
        assert!(p.bytes[4608..5120].iter().all(|&x| x == 5));
        assert!(p.bytes[5120..8192].iter().all(|&x| x == 0xAA));
        assert_eq!(&p.bytes[8192..], &bin[..]);
        let base = BaseBlock::parse(&p.bytes, 0).unwrap();
        assert!(!base.is_dirty() && base.hive_bins_size() == 8192);
        // A bin header naming the wrong offset stops the replay before it.
        let mut bad = l.clone();
        bad[1536 + 4..1536 + 8].copy_from_slice(&0u32.to_le_bytes());
        let p = prepare(h, &[(PathBuf::from("h.LOG1"), bad)], false).unwrap();
        assert_eq!(p.report.entries_applied, 1);
        assert!(p.report.notes.join("\n").contains("dirty hive bin"));
    }

    #[test]
    fn hive_bins_sizes_are_capped_by_the_input() {
        // An entry claiming far more bins than the hive and logs could hold stops the replay
        // instead of allocating.
        let h = hive(2, 1, 4096, 0);
        let logs = [new_log(1, &[entry(1, 0, 0x4000_0000, &[(0, &page(1))])])];
        let p = prepare(h, &logs, false).unwrap();
        assert!(p.read_only);
        assert!(p.report.notes.join("\n").contains("0x40000000"));
    }
}
