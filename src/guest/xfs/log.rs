//! Whether the internal log is clean (XFS Algorithms & Data Structures, "Journaling Log";
//! the kernel's `xlog_find_head`, `xlog_find_tail` and `xlog_check_unmount_rec`).
//!
//! The log is a ring of 512-byte basic blocks; every block starts with the cycle number of
//! the pass that wrote it (a record header block holds the magic there and the cycle in its
//! second word). What is checked:
//!
//! 1. The head: the first block whose cycle is the one of the log's last block, found by
//!    binary search when block 0 has a newer cycle than the last block; the end of the log
//!    when both have the same cycle. A log whose block 0 has cycle 0 was never written
//!    (zeroed): clean.
//! 2. The last record: the nearest record header (magic `0xFEEDBABE`) before the head,
//!    searched backwards (wrapping) through at most [`MAX_SEARCH`] blocks.
//! 3. Clean means that record is an unmount record that ends exactly at the head: one log
//!    operation whose header carries `XLOG_UNMOUNT_TRANS`. A clean unmount writes it only after
//!    every logged change reached its home location, so the tail equals the head and
//!    recovery has nothing to replay; anything else (a crash, a shutdown, a mount still active)
//!    leaves a log to replay.
//!
//! Not done (what the kernel adds for recovery itself): the search for torn writes of several
//! in-flight log buffers around the head, and the record CRCs. Neither can turn a dirty log
//! into a clean one here: such a log never ends with a complete unmount record at its head.

use super::{be32, corrupt};
use crate::error::Result;

/// Log record header magic (`XLOG_HEADER_MAGIC_NUM`).
const HEADER_MAGIC: u32 = 0xfeed_babe;
/// `xlog_op_header.oh_flags`: the operation is an unmount record.
const UNMOUNT_TRANS: u8 = 0x20;
/// Log record header versions 1 and 2; version 2 headers of records larger than 32 KiB span
/// several blocks (`XLOG_HEADER_CYCLE_SIZE`).
const HEADER_CYCLE_SIZE: u64 = 32 * 1024;
/// Blocks searched backwards from the head for the last record header (a record is at most
/// 256 KiB of data plus its header blocks: 520 blocks).
pub const MAX_SEARCH: u64 = 4096;
/// Basic block size.
const BBSIZE: u64 = 512;

/// What the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// Whether nothing needs replaying.
    pub clean: bool,
    /// The head's block in the log (where the next record would go).
    pub head: u64,
    /// The last record header's block, if the log was ever written.
    pub last_record: Option<u64>,
}

/// The cycle number a block carries.
fn cycle(b: &[u8]) -> u32 {
    if be32(b, 0) == HEADER_MAGIC {
        be32(b, 4)
    } else {
        be32(b, 0)
    }
}

/// Finds the log's state. `bbs` is its length in basic blocks; `read(bb, n)` returns the `n`
/// blocks from block `bb` (never past the end); `offset` is the log's byte offset on the
/// volume, for messages.
pub fn state(
    bbs: u64,
    offset: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<LogState> {
    const WHAT: &str = "log";
    if bbs < 2 {
        return Err(corrupt(WHAT, offset, format!("{bbs} basic blocks long")));
    }
    let mut cycle_at = |bb: u64| -> Result<u32> { Ok(cycle(&read(bb, 1)?)) };
    let first = cycle_at(0)?;
    if first == 0 {
        return Ok(LogState {
            clean: true,
            head: 0,
            last_record: None,
        });
    }
    let last = cycle_at(bbs - 1)?;
    let head = if first == last {
        bbs
    } else {
        // cycle(lo) != last, cycle(hi) == last.
        let (mut lo, mut hi) = (0u64, bbs - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if cycle_at(mid)? == last {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    };
    // Backwards from head - 1, wrapping, in chunks of 64 blocks.
    let mut searched = 0u64;
    let mut found = None;
    let mut pos = head; // exclusive end of the next chunk, in 0..=bbs
    while searched < MAX_SEARCH.min(bbs) && found.is_none() {
        if pos == 0 {
            pos = bbs;
        }
        let n = pos.min(64).min(MAX_SEARCH.min(bbs) - searched);
        let start = pos - n;
        let chunk = read(start, n)?;
        for i in (0..n).rev() {
            let at = (i * BBSIZE) as usize;
            if be32(&chunk[at..], 0) == HEADER_MAGIC {
                found = Some((start + i, chunk[at..at + BBSIZE as usize].to_vec()));
                break;
            }
        }
        searched += n;
        pos = start;
    }
    let Some((rec, h)) = found else {
        return Err(corrupt(
            WHAT,
            offset,
            format!("no log record header in the {searched} blocks before the head (block {head})"),
        ));
    };
    let rec_off = offset + rec * BBSIZE;
    let version = be32(&h, 8);
    let len = u64::from(be32(&h, 12));
    let num_logops = be32(&h, 40);
    if version != 1 && version != 2 {
        return Err(corrupt(
            "log record header",
            rec_off,
            format!("version {version}, expected 1 or 2"),
        ));
    }
    let hblks = if version == 2 {
        let size = u64::from(be32(&h, 320));
        if size > HEADER_CYCLE_SIZE {
            size.div_ceil(HEADER_CYCLE_SIZE)
        } else {
            1
        }
    } else {
        1
    };
    if hblks > 8 || len > 256 * 1024 * 8 {
        return Err(corrupt(
            "log record header",
            rec_off,
            format!("{hblks} header blocks and {len} data bytes: larger than a log buffer"),
        ));
    }
    let after = (rec + hblks + len.div_ceil(BBSIZE)) % bbs;
    let mut clean = false;
    if after == head % bbs && num_logops == 1 {
        let op = read((rec + hblks) % bbs, 1)?;
        clean = op[9] & UNMOUNT_TRANS != 0;
    }
    Ok(LogState {
        clean,
        head: head % bbs,
        last_record: Some(rec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `bbs` blocks with cycle 1 written up to `head`, the rest cycle 0 (as mkfs
    /// leaves it), and a one-op record at `rec` whose op flags are `flags`.
    fn log(bbs: u64, head: u64, rec: u64, len: u32, flags: u8) -> Vec<u8> {
        let mut b = vec![0u8; (bbs * 512) as usize];
        for bb in 0..head {
            b[(bb * 512) as usize..][..4].copy_from_slice(&1u32.to_be_bytes());
        }
        let h = &mut b[(rec * 512) as usize..];
        h[0..4].copy_from_slice(&HEADER_MAGIC.to_be_bytes()); // h_magicno
        h[4..8].copy_from_slice(&1u32.to_be_bytes()); // h_cycle
        h[8..12].copy_from_slice(&2u32.to_be_bytes()); // h_version
        h[12..16].copy_from_slice(&len.to_be_bytes()); // h_len
        h[40..44].copy_from_slice(&1u32.to_be_bytes()); // h_num_logops
        h[320..324].copy_from_slice(&32768u32.to_be_bytes()); // h_size
        b[((rec + 1) * 512 + 9) as usize] = flags; // oh_flags of the first op
        b
    }

    fn run(b: &[u8]) -> Result<LogState> {
        let bbs = b.len() as u64 / 512;
        state(bbs, 0, &mut |bb, n| {
            Ok(b[(bb * 512) as usize..((bb + n) * 512) as usize].to_vec())
        })
    }

    #[test]
    fn unmount_record_at_head_is_clean() {
        let s = run(&log(1000, 2, 0, 512, UNMOUNT_TRANS)).unwrap();
        assert_eq!(
            s,
            LogState {
                clean: true,
                head: 2,
                last_record: Some(0)
            }
        );
        let s = run(&log(1000, 102, 100, 512, UNMOUNT_TRANS)).unwrap();
        assert!(s.clean);
    }

    #[test]
    fn other_records_are_dirty() {
        // Not an unmount op.
        assert!(!run(&log(1000, 2, 0, 512, 0)).unwrap().clean);
        // Blocks written after the unmount record.
        assert!(!run(&log(1000, 10, 0, 512, UNMOUNT_TRANS)).unwrap().clean);
    }

    #[test]
    fn zeroed_log_is_clean_and_headerless_log_is_an_error() {
        assert!(run(&vec![0u8; 512 * 100]).unwrap().clean);
        let mut b = vec![0u8; 512 * 100];
        b[3] = 1;
        let e = run(&b).unwrap_err().to_string();
        assert!(e.contains("no log record header"), "{e}");
    }
}
