//! The log ([MS-VHDX] 2.3), replayed in memory: the result is an overlay of 4 KiB sectors
//! (data or zeros) that reads of the file consult first. The file itself is never written.

use std::collections::BTreeMap;

use super::{Guid, checksum, invalid};
use crate::bytes::{le32, le64};
use crate::formats::error::FormatError;

/// Log entry signature, ASCII `loge`.
pub const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
/// Zero descriptor signature, ASCII `zero`.
pub const ZERO_SIGNATURE: &[u8; 4] = b"zero";
/// Data descriptor signature, ASCII `desc`.
pub const DATA_DESC_SIGNATURE: &[u8; 4] = b"desc";
/// Data sector signature, ASCII `data`.
pub const DATA_SECTOR_SIGNATURE: &[u8; 4] = b"data";
/// Log sector size.
pub const SECTOR: usize = 4096;
/// Largest log replayed (Hyper-V writes 1 MiB logs).
pub const MAX_LOG: u32 = 64 << 20;
/// Most 4 KiB sectors a replay may zero or write (4 GiB).
pub const MAX_OVERLAY_SECTORS: u64 = 1 << 20;

/// What a replayed sector holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sector {
    /// 4 KiB of data.
    Data(Box<[u8]>),
    /// Zeros.
    Zero,
}

/// The result of a replay: sectors by file offset, and the file size the log asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOverlay {
    /// 4 KiB-aligned file offset -> contents.
    pub sectors: BTreeMap<u64, Sector>,
    /// The file is at least this long after replay.
    pub min_file_size: u64,
    /// Entries replayed.
    pub entries: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    pos: usize,
    length: usize,
    tail: usize,
    seq: u64,
    last_file_offset: u64,
}

/// Parses the entry at `pos` of `log` (checksum, signature, guid); `None` if none is there.
fn entry_at(log: &[u8], pos: usize, guid: &Guid) -> Option<Entry> {
    let h = log.get(pos..pos + 64)?;
    if &h[0..4] != ENTRY_SIGNATURE || Guid::read(h, 32) != *guid {
        return None;
    }
    let length = le32(h, 8) as usize;
    let count = le32(h, 24) as usize;
    if length == 0 || length % SECTOR != 0 || pos + length > log.len() {
        return None;
    }
    let bytes = &log[pos..pos + length];
    if checksum(bytes, 4) != le32(h, 4) {
        return None;
    }
    let tail = le32(h, 12) as usize;
    let seq = le64(h, 16);
    if seq == 0
        || tail % SECTOR != 0
        || tail >= log.len()
        || (64 + 32 * count).div_ceil(SECTOR) * SECTOR > length
    {
        return None;
    }
    Some(Entry {
        pos,
        length,
        tail,
        seq,
        last_file_offset: le64(h, 56),
    })
}

/// Finds the active sequence of `log` (taken from `log_offset` in the file) for `guid`, and
/// replays it into an overlay. No active sequence: an empty overlay.
pub fn replay(log: &[u8], log_offset: u64, guid: &Guid) -> Result<LogOverlay, FormatError> {
    let n = log.len();
    if n % SECTOR != 0 {
        return Err(invalid(
            "log",
            log_offset,
            "length is not a multiple of 4 KiB",
        ));
    }
    let entries: Vec<Option<Entry>> = (0..n / SECTOR)
        .map(|i| entry_at(log, i * SECTOR, guid))
        .collect();
    // The active sequence: the longest run of consecutive entries (sequence numbers +1, laid
    // out one after the other, wrapping) whose head's tail points at an entry of the run; of
    // those, the one with the highest head sequence number (2.3.3).
    let mut best: Option<Vec<Entry>> = None;
    for start in entries.iter().flatten() {
        let mut run = vec![start.clone()];
        let mut pos = (start.pos + start.length) % n;
        while run.len() < entries.len() {
            let Some(Some(next)) = entries.get(pos / SECTOR) else {
                break;
            };
            if next.seq != run[run.len() - 1].seq + 1 || next.pos == start.pos {
                break;
            }
            run.push(next.clone());
            pos = (next.pos + next.length) % n;
        }
        let head = &run[run.len() - 1];
        let Some(tail_idx) = run.iter().position(|e| e.pos == head.tail) else {
            continue;
        };
        let run = run.split_off(tail_idx);
        let head_seq = run[run.len() - 1].seq;
        if best.as_ref().is_none_or(|b| b[b.len() - 1].seq < head_seq) {
            best = Some(run);
        }
    }
    let mut overlay = LogOverlay::default();
    let Some(seq) = best else { return Ok(overlay) };
    for e in &seq {
        apply(log, e, log_offset, &mut overlay)?;
        overlay.min_file_size = overlay.min_file_size.max(e.last_file_offset);
        overlay.entries += 1;
    }
    Ok(overlay)
}

fn apply(log: &[u8], e: &Entry, log_offset: u64, o: &mut LogOverlay) -> Result<(), FormatError> {
    let b = &log[e.pos..e.pos + e.length];
    let at = log_offset + e.pos as u64;
    let count = le32(b, 24) as usize;
    let mut data_sector = (64 + 32 * count).div_ceil(SECTOR);
    for i in 0..count {
        let d = &b[64 + 32 * i..96 + 32 * i];
        let file_offset = le64(d, 16);
        if le64(d, 24) != e.seq {
            return Err(invalid(
                "log entry",
                at,
                format!(
                    "descriptor {i}: sequence number {:#x}, entry has {:#x}",
                    le64(d, 24),
                    e.seq
                ),
            ));
        }
        if file_offset % SECTOR as u64 != 0 || file_offset > super::MAX_FILE_OFFSET {
            return Err(invalid(
                "log entry",
                at,
                format!(
                    "descriptor {i}: file offset {file_offset:#x} is not 4 KiB-aligned or too large"
                ),
            ));
        }
        match &d[0..4] {
            s if s == ZERO_SIGNATURE => {
                let len = le64(d, 8);
                if len % SECTOR as u64 != 0
                    || len / SECTOR as u64 + o.sectors.len() as u64 > MAX_OVERLAY_SECTORS
                {
                    return Err(invalid(
                        "log entry",
                        at,
                        format!("zero descriptor {i}: length {len:#x} unaligned or too large"),
                    ));
                }
                for k in 0..len / SECTOR as u64 {
                    o.sectors
                        .insert(file_offset + k * SECTOR as u64, Sector::Zero);
                }
                o.min_file_size = o.min_file_size.max(file_offset + len);
            }
            s if s == DATA_DESC_SIGNATURE => {
                let Some(sec) = b.get(data_sector * SECTOR..(data_sector + 1) * SECTOR) else {
                    return Err(invalid(
                        "log entry",
                        at,
                        format!("data descriptor {i}: its data sector lies past the entry"),
                    ));
                };
                if &sec[0..4] != DATA_SECTOR_SIGNATURE
                    || (u64::from(le32(sec, 4)) << 32 | u64::from(le32(sec, 4092))) != e.seq
                {
                    return Err(invalid(
                        "log entry",
                        at,
                        format!("data sector {data_sector}: bad signature or sequence number"),
                    ));
                }
                let mut v = vec![0u8; SECTOR];
                v[0..8].copy_from_slice(&d[8..16]); // leading bytes
                v[8..4092].copy_from_slice(&sec[8..4092]);
                v[4092..].copy_from_slice(&d[4..8]); // trailing bytes
                if o.sectors.len() as u64 >= MAX_OVERLAY_SECTORS {
                    return Err(invalid("log entry", at, "the log writes too many sectors"));
                }
                o.sectors
                    .insert(file_offset, Sector::Data(v.into_boxed_slice()));
                o.min_file_size = o.min_file_size.max(file_offset + SECTOR as u64);
                data_sector += 1;
            }
            other => {
                return Err(invalid(
                    "log entry",
                    at,
                    format!(
                        "descriptor {i}: signature 'zero' or 'desc' expected, found {other:02x?}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Builds one log entry (for tests and fuzz seeds): `writes` are (file offset, 4 KiB data or
/// `None` for a 4 KiB zero run).
pub fn build_entry(guid: &Guid, seq: u64, tail: u32, writes: &[(u64, Option<&[u8]>)]) -> Vec<u8> {
    let desc_sectors = (64 + 32 * writes.len()).div_ceil(SECTOR);
    let data = writes.iter().filter(|w| w.1.is_some()).count();
    let mut b = vec![0u8; (desc_sectors + data) * SECTOR];
    let len = b.len() as u32;
    b[0..4].copy_from_slice(ENTRY_SIGNATURE);
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..16].copy_from_slice(&tail.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..28].copy_from_slice(&(writes.len() as u32).to_le_bytes());
    b[32..48].copy_from_slice(&guid.to_bytes());
    let mut ds = desc_sectors;
    for (i, (off, w)) in writes.iter().enumerate() {
        let d = 64 + 32 * i;
        b[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
        b[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        match w {
            None => {
                b[d..d + 4].copy_from_slice(ZERO_SIGNATURE);
                b[d + 8..d + 16].copy_from_slice(&(SECTOR as u64).to_le_bytes());
            }
            Some(data) => {
                b[d..d + 4].copy_from_slice(DATA_DESC_SIGNATURE);
                b[d + 4..d + 8].copy_from_slice(&data[4092..4096]);
                b[d + 8..d + 16].copy_from_slice(&data[0..8]);
                let s = ds * SECTOR;
                b[s..s + 4].copy_from_slice(DATA_SECTOR_SIGNATURE);
                b[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
                b[s + 8..s + 4092].copy_from_slice(&data[8..4092]);
                b[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
                ds += 1;
            }
        }
    }
    super::set_checksum(&mut b, 4);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Guid = Guid::from_bytes([7; 16]);

    #[test]
    fn replays_active_sequence_in_order() {
        let a = vec![0xa5u8; 4096];
        let c = vec![0x3cu8; 4096];
        let mut log = vec![0u8; 1 << 20];
        let e1 = build_entry(&G, 10, 0, &[(0x300000, Some(&a)), (0x301000, Some(&a))]);
        let e2 = build_entry(&G, 11, 0, &[(0x301000, Some(&c)), (0x302000, None)]);
        log[..e1.len()].copy_from_slice(&e1);
        log[e1.len()..e1.len() + e2.len()].copy_from_slice(&e2);
        // A stale older entry elsewhere is not part of the active sequence.
        let old = build_entry(&G, 3, 0x80000, &[(0x300000, Some(&c))]);
        log[0x80000..0x80000 + old.len()].copy_from_slice(&old);
        let o = replay(&log, 1 << 20, &G).unwrap();
        assert_eq!(o.entries, 2);
        assert_eq!(o.sectors[&0x300000], Sector::Data(a.clone().into()));
        assert_eq!(o.sectors[&0x301000], Sector::Data(c.clone().into()));
        assert_eq!(o.sectors[&0x302000], Sector::Zero);
        // Another guid: nothing to replay.
        assert_eq!(
            replay(&log, 1 << 20, &Guid::from_bytes([8; 16]))
                .unwrap()
                .entries,
            0
        );
    }

    #[test]
    fn corrupt_entries() {
        let a = vec![1u8; 4096];
        let mut log = vec![0u8; 1 << 20];
        let e = build_entry(&G, 1, 0, &[(0x300000, Some(&a))]);
        log[..e.len()].copy_from_slice(&e);
        // A flipped byte breaks the checksum: the entry is not valid, nothing replays.
        log[5000] ^= 1;
        assert_eq!(replay(&log, 0, &G).unwrap().entries, 0);
        // Valid checksum but a descriptor with a wrong sequence number: an error.
        let mut e = build_entry(&G, 1, 0, &[(0x300000, Some(&a))]);
        e[64 + 24] = 9;
        super::super::set_checksum(&mut e, 4);
        log[..e.len()].copy_from_slice(&e);
        let err = replay(&log, 0x100000, &G).unwrap_err().to_string();
        assert!(err.contains("log entry at 0x100000"), "{err}");
        // Bad data sector signature.
        let mut e = build_entry(&G, 1, 0, &[(0x300000, Some(&a))]);
        e[4096] = b'x';
        super::super::set_checksum(&mut e, 4);
        log[..e.len()].copy_from_slice(&e);
        assert!(replay(&log, 0, &G).is_err());
        assert!(replay(&[0u8; 100], 0, &G).is_err());
    }
}
