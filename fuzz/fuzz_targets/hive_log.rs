//! Fuzzes transaction-log replay (`guest::hive::log::prepare` and `inspect_log`) on a primary
//! hive and two logs cut from the input. Any panic is a bug; errors and clean stops are fine.
//!
//! Input: byte 0 holds switches, bytes 1..5 two little-endian u16 lengths (primary, first
//! log); the rest is the primary, the first log and the second log. Random bytes almost never
//! carry right checksums and Marvin32 hashes, so when the switches say so the harness makes
//! the primary's base-block checksum, the logs' base-block checksums and every `HvLE` entry's
//! hashes right before replaying: the checks past them are then reached.
#![no_main]

use std::path::PathBuf;

use diskconv::guest::hive::BaseBlock;
use diskconv::guest::hive::base::checksum;
use diskconv::guest::hive::log::{HVLE_SEED, inspect_log, marvin32, prepare};
use libfuzzer_sys::fuzz_target;

/// Writes the base-block checksum of the first 512 bytes, when there are that many.
fn fix_checksum(b: &mut [u8]) {
    if b.len() >= 512 {
        let c = checksum(b);
        b[508..512].copy_from_slice(&c.to_le_bytes());
    }
}

/// Recomputes the hashes of the `HvLE` entries from offset 512 on, as far as their sizes
/// chain inside the buffer.
fn fix_entries(b: &mut [u8]) {
    let mut pos = 512usize;
    while let Some(head) = b.get(pos..pos + 40) {
        if &head[..4] != b"HvLE" {
            break;
        }
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let Some(end) = pos.checked_add(size).filter(|&e| size >= 512 && e <= b.len()) else {
            break;
        };
        let h1 = marvin32(HVLE_SEED, &b[pos + 40..end]);
        b[pos + 24..pos + 32].copy_from_slice(&h1.to_le_bytes());
        let h2 = marvin32(HVLE_SEED, &b[pos..pos + 32]);
        b[pos + 32..pos + 40].copy_from_slice(&h2.to_le_bytes());
        pos = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.get(..5) else {
        return;
    };
    let switches = head[0];
    let la = u16::from_le_bytes([head[1], head[2]]) as usize;
    let lb = u16::from_le_bytes([head[3], head[4]]) as usize;
    let rest = &data[5..];
    let a_end = la.min(rest.len());
    let b_end = (a_end + lb).min(rest.len());
    let mut primary = rest[..a_end].to_vec();
    let mut log1 = rest[a_end..b_end].to_vec();
    let mut log2 = rest[b_end..].to_vec();
    if switches & 1 != 0 {
        fix_checksum(&mut primary);
    }
    if switches & 2 != 0 {
        fix_checksum(&mut log1);
        fix_checksum(&mut log2);
    }
    if switches & 4 != 0 {
        fix_entries(&mut log1);
        fix_entries(&mut log2);
    }
    for l in [&log1, &log2] {
        if let Ok(info) = inspect_log(l) {
            assert!(info.entries.len() <= l.len() / 512);
        }
    }
    let logs = vec![
        (PathBuf::from("h.LOG1"), log1),
        (PathBuf::from("h.LOG2"), log2),
    ];
    if let Ok(p) = prepare(primary, &logs, switches & 8 != 0) {
        if !p.read_only && p.report.entries_applied > 0 {
            // A replayed hive has a clean base block that says how big its bins are.
            let b = BaseBlock::parse(&p.bytes, 0).expect("replayed base block parses");
            assert!(!b.is_dirty());
            assert_eq!(b.hive_bins_size() as usize + 4096, p.bytes.len());
        }
    }
});
