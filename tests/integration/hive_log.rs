//! Registry hive transaction logs (issue 5): replaying `.LOG1`/`.LOG2` in the new (`HvLE`) and
//! old (`DIRT`) formats, checked against the hives Windows itself recovered (corpus
//! `hives/yarp/*/RecoveredHive_*`), against regipy's own log replay, and read back by hivex and
//! regipy.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::inject::hive::log::{
    self, HVLE_SEED, LogFormat, Prepared, find_logs, inspect_log, marvin32, prepare,
};

use crate::util;

/// The bytes of a corpus file, or `None` (skip) outside CI when the corpus is absent.
fn load(rel: &str) -> Option<(PathBuf, Vec<u8>)> {
    let p = util::corpus(rel)?;
    let b = std::fs::read(&p).expect("read corpus file");
    Some((p, b))
}

/// The hive and logs of the corpus, as `prepare` takes them.
fn load_set(hive: &str, logs: &[&str]) -> Option<(Vec<u8>, Vec<(PathBuf, Vec<u8>)>)> {
    let (_, h) = load(hive)?;
    let mut l = Vec::new();
    for r in logs {
        l.push(load(r)?);
    }
    Some((h, l))
}

/// Writes `bytes` to `name` in `dir` and returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

/// Sets the u32 at `off`.
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Recomputes both hashes of the `HvLE` entry at `pos` (after a test edited it on purpose).
fn rehash(log: &mut [u8], pos: usize) {
    let size = get32(log, pos + 4) as usize;
    let h1 = marvin32(HVLE_SEED, &log[pos + 40..pos + size]);
    log[pos + 24..pos + 32].copy_from_slice(&h1.to_le_bytes());
    let h2 = marvin32(HVLE_SEED, &log[pos..pos + 32]);
    log[pos + 32..pos + 40].copy_from_slice(&h2.to_le_bytes());
}

/// Offsets of the entries of a new-format log (as our own parser sees them).
fn entry_offsets(log: &[u8]) -> Vec<usize> {
    inspect_log(log)
        .expect("log base block")
        .entries
        .iter()
        .map(|e| e.offset as usize)
        .collect()
}

/// Checks the base block of replayed bytes: clean (sequence numbers equal, checksum right),
/// file type primary, hive-bins size matching the bytes.
fn assert_clean_base(bytes: &[u8]) {
    let b = diskconv::inject::hive::BaseBlock::parse(bytes, 0).expect("replayed base block");
    assert!(b.checksum_ok(), "checksum recomputed");
    assert!(!b.is_dirty(), "sequence numbers equal: {b:?}");
    assert_eq!(b.file_type(), 0, "file type primary");
    assert_eq!(b.hive_bins_size() as usize + 4096, bytes.len());
}

/// Replays and compares with a Windows-recovered hive through hivex (exact `.reg` text) and
/// regipy (every key, value and data).
fn assert_same_as(prepared: &Prepared, expected: &Path) {
    let dir = util::tmpdir();
    let ours = write(dir.path(), "replayed", &prepared.bytes);
    assert_clean_base(&prepared.bytes);
    if util::require("hivexregedit") {
        let a = util::hivex_export(&ours);
        let b = util::hivex_export(expected);
        assert!(a.lines().count() > 3, "a real export: {a}");
        assert!(a == b, "hivex export differs from {}", expected.display());
    }
    if util::require_regipy() {
        assert_eq!(util::regipy_dump(&ours), util::regipy_dump(expected));
    }
}

#[test]
fn new_format_replay_equals_the_windows10_recovery() {
    let Some((hive, logs)) = load_set(
        "hives/yarp/NewDirtyHive1/NewDirtyHive",
        &[
            "hives/yarp/NewDirtyHive1/NewDirtyHive.LOG1",
            "hives/yarp/NewDirtyHive1/NewDirtyHive.LOG2",
        ],
    ) else {
        return;
    };
    let expected = util::corpus("hives/yarp/NewDirtyHive1/RecoveredHive_Windows10").unwrap();
    let p = prepare(hive.clone(), &logs, false).unwrap();
    eprintln!("{:#?}", p.report);
    assert!(!p.read_only);
    assert!(p.report.was_dirty && !p.report.base_block_from_log && !p.report.data_lost);
    // LOG1 holds entry 2, LOG2 entries 3, 4 and 5: chained across both logs.
    assert_eq!(p.report.entries_applied, 4, "{:?}", p.report);
    assert_eq!(
        p.report.logs_used,
        vec![logs[0].0.clone(), logs[1].0.clone()]
    );
    assert_same_as(&p, &expected);
    // The order the logs are given in does not matter.
    let rev = vec![logs[1].clone(), logs[0].clone()];
    let q = prepare(hive, &rev, false).unwrap();
    assert_eq!(q.bytes, p.bytes);
}

#[test]
fn old_format_replay_equals_the_windows7_recovery() {
    let Some((hive, logs)) = load_set(
        "hives/yarp/OldDirtyHive/OldDirtyHive",
        &["hives/yarp/OldDirtyHive/OldDirtyHive.LOG1"],
    ) else {
        return;
    };
    let expected = util::corpus("hives/yarp/OldDirtyHive/RecoveredHive_Windows7").unwrap();
    let info = inspect_log(&logs[0].1).unwrap();
    assert_eq!(info.format, LogFormat::Old);
    let p = prepare(hive, &logs, false).unwrap();
    eprintln!("{:#?}", p.report);
    assert!(!p.read_only && p.report.was_dirty);
    assert_eq!(p.report.entries_applied, info.dirty_pages);
    assert!(p.report.entries_applied > 0);
    assert_same_as(&p, &expected);
}
