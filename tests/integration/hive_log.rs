//! Registry hive transaction logs (issue 5): replaying `.LOG1`/`.LOG2` in the new (`HvLE`) and
//! old (`DIRT`) formats, checked against the hives Windows itself recovered (corpus
//! `hives/yarp/*/RecoveredHive_*`), against regipy's own log replay, and read back by hivex and
//! regipy.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::hive::log::{
    HVLE_SEED, LogLayout, Prepared, find_logs, inspect_log, marvin32, prepare,
};

use crate::util;

/// Transaction logs as `prepare` takes them: (name, bytes).
type Logs = Vec<(PathBuf, Vec<u8>)>;

/// The bytes of a corpus file, or `None` (skip) outside CI when the corpus is absent.
fn load(rel: &str) -> Option<(PathBuf, Vec<u8>)> {
    let p = util::corpus(rel)?;
    let b = std::fs::read(&p).expect("read corpus file");
    Some((p, b))
}

/// The hive and logs of the corpus, as `prepare` takes them.
fn load_set(hive: &str, logs: &[&str]) -> Option<(Vec<u8>, Logs)> {
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
    let b = diskconv::guest::hive::BaseBlock::parse(bytes, 0).expect("replayed base block");
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
    assert_eq!(info.format, LogLayout::Old);
    let p = prepare(hive, &logs, false).unwrap();
    eprintln!("{:#?}", p.report);
    assert!(!p.read_only && p.report.was_dirty);
    assert_eq!(p.report.entries_applied, info.dirty_pages);
    assert!(p.report.entries_applied > 0);
    assert_same_as(&p, &expected);
}

/// regipy's own log replay (`regipy.recovery.apply_transaction_logs`), a second independent
/// replayer: the logs are given earlier first (regipy applies its "secondary" log first and
/// does not order them itself). regipy leaves the base block's checksum stale, which hivex
/// refuses, so the script recomputes it (XOR of the first 127 dwords, written at 508) and
/// nothing else. Returns the restored hive's path.
fn regipy_replay(dir: &Path, hive: &Path, earlier: &Path, later: Option<&Path>) -> PathBuf {
    let out = dir.join("regipy-restored");
    let script = r#"
import struct, sys
from regipy.recovery import apply_transaction_logs
a = sys.argv[1:]
hive, out = a[0], a[-1]
logs = a[1:-1]
if len(logs) == 2:
    apply_transaction_logs(hive, logs[1], secondary_log_path=logs[0], restored_hive_path=out)
else:
    apply_transaction_logs(hive, logs[0], restored_hive_path=out)
b = bytearray(open(out, "rb").read())
x = 0
for i in range(127):
    x ^= struct.unpack_from("<I", b, 4 * i)[0]
x = {0: 1, 0xFFFFFFFF: 0xFFFFFFFE}.get(x, x)
struct.pack_into("<I", b, 508, x)
open(out, "wb").write(b)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(hive).arg(earlier);
    if let Some(l) = later {
        cmd.arg(l);
    }
    let o = util::run(cmd.arg(&out));
    assert!(
        o.status.success(),
        "regipy replay failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The logs beside a corpus hive, found the way `Hive::open` finds them.
fn logs_beside(hive: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    find_logs(hive)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

#[test]
fn marvin32_verifies_every_entry_of_the_system_b_logs() {
    let (Some((_, l1)), Some((_, l2))) = (
        load("hives/regipy/SYSTEM_B.LOG1"),
        load("hives/regipy/SYSTEM_B.LOG2"),
    ) else {
        return;
    };
    // inspect_log lists an entry only when both its hashes verify; the manifest counts the
    // HvLE signatures (4 and 20), so every entry verifies.
    for (log, n, seq) in [(&l1, 4, 2107), (&l2, 20, 2111)] {
        let info = inspect_log(log).unwrap();
        assert_eq!(info.format, LogLayout::New);
        assert_eq!(info.sequence, seq);
        assert_eq!(info.entries.len(), n, "{info:?}");
        assert_eq!(info.stop, None, "no bad entry");
        let seqs: Vec<u32> = info.entries.iter().map(|e| e.sequence).collect();
        let want: Vec<u32> = (seq..seq + n as u32).collect();
        assert_eq!(seqs, want);
        // And directly: hash-2 over the first 32 bytes, hash-1 over the rest.
        for e in &info.entries {
            let (o, s) = (e.offset as usize, e.size as usize);
            let h1 = u64::from_le_bytes(log[o + 24..o + 32].try_into().unwrap());
            let h2 = u64::from_le_bytes(log[o + 32..o + 40].try_into().unwrap());
            assert_eq!(marvin32(HVLE_SEED, &log[o + 40..o + s]), h1);
            assert_eq!(marvin32(HVLE_SEED, &log[o..o + 32]), h2);
        }
    }
}

#[test]
fn system_b_replays_across_both_logs_like_regipy() {
    let Some(hive_path) = util::corpus("hives/regipy/SYSTEM_B") else {
        return;
    };
    let logs = logs_beside(&hive_path);
    let names: Vec<String> = logs
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["SYSTEM_B.LOG1", "SYSTEM_B.LOG2"]);
    let hive = std::fs::read(&hive_path).unwrap();
    let p = prepare(hive, &logs, false).unwrap();
    eprintln!("{:#?}", p.report);
    assert!(!p.read_only && p.report.was_dirty && !p.report.base_block_from_log);
    // LOG1 holds 2107..=2110, LOG2 2111..=2130: all 24 entries chain.
    assert_eq!(p.report.entries_applied, 24);
    assert_eq!(p.report.logs_used.len(), 2);
    assert_clean_base(&p.bytes);
    let base = diskconv::guest::hive::BaseBlock::parse(&p.bytes, 0).unwrap();
    assert_eq!(base.primary_sequence(), 2130);
    let dir = util::tmpdir();
    let ours = write(dir.path(), "SYSTEM_B.replayed", &p.bytes);
    // Our core parser and its structural check accept the result.
    let h = diskconv::guest::hive::Hive::from_bytes(p.bytes.clone()).unwrap();
    assert!(h.open_key("ControlSet001\\Services").unwrap().is_some());
    let report = diskconv::guest::hive::check::check_bytes(&p.bytes);
    assert!(
        report.issues.is_empty(),
        "{:?}",
        &report.issues[..report.issues.len().min(5)]
    );
    if util::require("hivexsh") {
        let ls = util::hivexsh(&ours, "ls\n");
        assert_eq!(ls.lines().count(), 15, "{ls}");
    }
    if util::require_regipy() && util::require("hivexregedit") && util::require("hivexsh") {
        let (l1, l2) = (&logs[0].0, &logs[1].0);
        let theirs = regipy_replay(dir.path(), &hive_path, l1, Some(l2));
        let a = util::hivex_export(&ours);
        let b = util::hivex_export(&theirs);
        assert!(a == b, "hivex reads our replay and regipy's differently");
        // regipy reads our result too (a whole-hive regipy dump of a 12 MiB SYSTEM hive is
        // too heavy for a test): the services as regipy lists them are those hivex lists.
        let script = "import sys\nfrom regipy.registry import RegistryHive\n\
                      k = RegistryHive(sys.argv[1]).get_key('\\\\ControlSet001\\\\Services')\n\
                      print('\\n'.join(sorted(s.name for s in k.iter_subkeys())))\n";
        let o = util::run(Command::new("python3").arg("-c").arg(script).arg(&ours));
        let by_regipy = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut by_hivex: Vec<String> = util::hivexsh(&ours, "cd ControlSet001\\Services\nls\n")
            .lines()
            .map(str::to_owned)
            .collect();
        by_hivex.sort();
        let by_regipy: Vec<&str> = by_regipy.lines().collect();
        assert!(by_regipy.len() > 100, "{by_regipy:?}");
        assert_eq!(by_regipy, by_hivex);
        // And the replay changed something: the dirty hive itself reads differently.
        assert!(util::hivex_export(&hive_path) != a);
    }
}

/// Replays a corpus hive with the logs found beside it and compares with regipy's replay.
fn replay_like_regipy(rel: &str, want_logs: &[&str], want_entries: usize) {
    let Some(hive_path) = util::corpus(rel) else {
        return;
    };
    let logs = logs_beside(&hive_path);
    let names: Vec<String> = logs
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, want_logs);
    let p = prepare(std::fs::read(&hive_path).unwrap(), &logs, false).unwrap();
    eprintln!("{rel}: {:#?}", p.report);
    assert!(!p.read_only && p.report.was_dirty);
    assert_eq!(p.report.entries_applied, want_entries, "{:?}", p.report);
    assert_clean_base(&p.bytes);
    let report = diskconv::guest::hive::check::check_bytes(&p.bytes);
    assert!(
        report.issues.is_empty(),
        "{:?}",
        &report.issues[..report.issues.len().min(5)]
    );
    let dir = util::tmpdir();
    let ours = write(dir.path(), "replayed", &p.bytes);
    if util::require_regipy() && util::require("hivexregedit") {
        // regipy applies every HvLE entry of the logs it is given; give it the logs we used,
        // earlier first.
        let used = &p.report.logs_used;
        let theirs = regipy_replay(
            dir.path(),
            &hive_path,
            &used[0],
            used.get(1).map(|p| p.as_path()),
        );
        assert!(
            util::hivex_export(&ours) == util::hivex_export(&theirs),
            "{rel}: hivex reads our replay and regipy's differently"
        );
        assert_eq!(util::regipy_dump(&ours), util::regipy_dump(&theirs));
    }
}

#[test]
fn usrclass_replays_like_regipy() {
    replay_like_regipy(
        "hives/regipy/UsrClass.dat",
        &["UsrClass.dat.LOG1", "UsrClass.dat.LOG2"],
        14,
    );
}

#[test]
fn transactions_ntuser_with_lower_case_logs_replays_like_regipy() {
    // .log2 (sequence 562) is older than the hive (567/566): only .log1 applies.
    replay_like_regipy(
        "hives/regipy/transactions_NTUSER.DAT",
        &[
            "transactions_ntuser.dat.log1",
            "transactions_ntuser.dat.log2",
        ],
        23,
    );
}

/// NewDirtyHive, its two logs and the path of the Windows 10 recovery.
fn new_dirty() -> Option<(Vec<u8>, Logs, PathBuf)> {
    let (hive, logs) = load_set(
        "hives/yarp/NewDirtyHive1/NewDirtyHive",
        &[
            "hives/yarp/NewDirtyHive1/NewDirtyHive.LOG1",
            "hives/yarp/NewDirtyHive1/NewDirtyHive.LOG2",
        ],
    )?;
    let expected = util::corpus("hives/yarp/NewDirtyHive1/RecoveredHive_Windows10")?;
    Some((hive, logs, expected))
}

/// OldDirtyHive, its log and the path of the Windows 7 recovery.
fn old_dirty() -> Option<(Vec<u8>, Logs, PathBuf)> {
    let (hive, logs) = load_set(
        "hives/yarp/OldDirtyHive/OldDirtyHive",
        &["hives/yarp/OldDirtyHive/OldDirtyHive.LOG1"],
    )?;
    let expected = util::corpus("hives/yarp/OldDirtyHive/RecoveredHive_Windows7")?;
    Some((hive, logs, expected))
}

fn notes(p: &Prepared) -> String {
    p.report.notes.join("\n")
}

#[test]
fn damaged_primary_base_block_is_recovered_from_a_log() {
    let Some((hive, logs, expected)) = new_dirty() else {
        return;
    };
    // A flipped byte in the file-name field: the checksum no longer matches.
    let mut bad = hive.clone();
    bad[100] ^= 0x55;
    let p = prepare(bad, &logs, false).unwrap();
    assert!(
        p.report.base_block_from_log && !p.read_only,
        "{:?}",
        p.report
    );
    assert!(notes(&p).contains("checksum"), "{}", notes(&p));
    assert_eq!(p.report.entries_applied, 4);
    assert_same_as(&p, &expected);
    // No signature at all: the base block comes from the log all the same.
    let mut zero = hive.clone();
    zero[..512].fill(0);
    let p = prepare(zero.clone(), &logs, false).unwrap();
    assert!(p.report.base_block_from_log);
    assert_same_as(&p, &expected);
    // Without logs there is nothing to recover it from: an error that says so.
    let e = prepare(zero, &[], false).unwrap_err().to_string();
    assert!(
        e.contains("regf") && e.contains("no transaction log"),
        "{e}"
    );

    let Some((hive, logs, expected)) = old_dirty() else {
        return;
    };
    let mut bad = hive;
    bad[60] ^= 0x01;
    let p = prepare(bad, &logs, false).unwrap();
    assert!(
        p.report.base_block_from_log && !p.read_only,
        "{:?}",
        p.report
    );
    assert_same_as(&p, &expected);
}

#[test]
fn dirty_hive_without_logs_is_read_only_unless_data_loss_is_accepted() {
    for rel in ["hives/regipy/SYSTEM_2", "hives/regipy/SECURITY"] {
        let Some((path, bytes)) = load(rel) else {
            return;
        };
        assert!(
            find_logs(&path).is_empty(),
            "{rel} has no logs in the corpus"
        );
        let p = prepare(bytes.clone(), &[], false).unwrap();
        assert!(
            p.read_only && p.report.was_dirty && !p.report.data_lost,
            "{rel}"
        );
        assert_eq!(p.report.entries_applied, 0);
        assert!(notes(&p).contains("no transaction log"), "{}", notes(&p));
        assert!(p.bytes == bytes, "bytes returned as they are");
        let q = prepare(bytes, &[], true).unwrap();
        assert!(
            !q.read_only && q.report.data_lost && q.report.was_dirty,
            "{rel}"
        );
    }
    // Through the hive API: reads work, edits are refused with the reason.
    let Some((_, bytes)) = load("hives/regipy/SECURITY") else {
        return;
    };
    let mut h = diskconv::guest::hive::Hive::from_bytes(bytes.clone()).unwrap();
    assert!(h.recovery().was_dirty && !h.recovery().data_lost);
    assert!(h.open_key("Policy").unwrap().is_some());
    let e = h
        .create_key("Policy\\diskconv-test")
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("dirty"), "{e}");
    let mut h = diskconv::guest::hive::Hive::from_bytes_with_logs(bytes, &[], true).unwrap();
    assert!(h.recovery().data_lost);
    h.create_key("Policy\\diskconv-test").unwrap();

    // Logs that are all older than the hive are no better than none, and the notes say why.
    let Some((hive, l2)) = load_set(
        "hives/regipy/transactions_NTUSER.DAT",
        &["hives/regipy/transactions_ntuser.dat.log2"],
    ) else {
        return;
    };
    let p = prepare(hive, &l2, false).unwrap();
    assert!(p.read_only && p.report.entries_applied == 0);
    assert!(notes(&p).contains("older than the hive"), "{}", notes(&p));
}

/// NewDirtyHive replayed with LOG1 as it is and LOG2 edited by `edit` (given LOG2 and the
/// offsets of its three entries, sequence numbers 3, 4 and 5).
fn with_log2(edit: impl FnOnce(&mut Vec<u8>, &[usize])) -> Option<Prepared> {
    let (hive, mut logs, _) = new_dirty()?;
    let offs = entry_offsets(&logs[1].1);
    assert_eq!(offs.len(), 3);
    edit(&mut logs[1].1, &offs);
    Some(prepare(hive, &logs, false).expect("a clean stop, not an error"))
}

#[test]
fn bad_new_format_entries_stop_the_replay_cleanly() {
    // Each case: the edit, the entries that still apply (LOG1's 2, then LOG2's), what the
    // notes must say.
    type Edit = Box<dyn FnOnce(&mut Vec<u8>, &[usize])>;
    let cases: Vec<(&str, Edit, usize, &str)> = vec![
        (
            "truncated inside entry 4",
            Box::new(|l, o| l.truncate(o[1] + 100)),
            2,
            "runs past the end of the file",
        ),
        (
            "truncated inside the base block",
            Box::new(|l, _| l.truncate(300)),
            1,
            "less than its 512-byte base block",
        ),
        (
            "a flipped byte in a page of entry 4",
            Box::new(|l, o| {
                let end = o[1] + get32(l, o[1] + 4) as usize;
                l[end - 10] ^= 0x20;
            }),
            2,
            "hash-1",
        ),
        (
            "a flipped byte in the header of entry 4",
            Box::new(|l, o| l[o[1] + 16] ^= 0x10),
            2,
            "hash-2",
        ),
        (
            "a gap: entry 4 renumbered 7",
            Box::new(|l, o| {
                put32(l, o[1] + 12, 7);
                rehash(l, o[1]);
            }),
            2,
            "sequence number 7, expected 4",
        ),
        (
            "an absurd page count",
            Box::new(|l, o| {
                put32(l, o[1] + 20, 0xFFFF_FFFF);
                rehash(l, o[1]);
            }),
            2,
            "dirty page references need",
        ),
        (
            "a page reference past the hive bins",
            Box::new(|l, o| {
                put32(l, o[1] + 40, 0xFFFF_F000);
                rehash(l, o[1]);
            }),
            2,
            "ends past the hive-bins size",
        ),
        (
            "an absurd hive-bins size",
            Box::new(|l, o| {
                put32(l, o[1] + 16, 0xFFFF_F000);
                rehash(l, o[1]);
            }),
            2,
            "hive-bins size 0xfffff000",
        ),
        (
            "an entry size that is not a multiple of 512",
            Box::new(|l, o| put32(l, o[2] + 4, 1000)),
            3,
            "not a non-zero multiple of 512",
        ),
        (
            "an entry size far past the file",
            Box::new(|l, o| put32(l, o[2] + 4, 0x7FFF_FE00)),
            3,
            "runs past the end of the file",
        ),
    ];
    for (what, edit, applied, note) in cases {
        let Some(p) = with_log2(edit) else {
            return;
        };
        assert!(!p.read_only, "{what}");
        assert_eq!(p.report.entries_applied, applied, "{what}: {:?}", p.report);
        assert!(notes(&p).contains(note), "{what}: {}", notes(&p));
        assert_clean_base(&p.bytes);
    }
    // Every entry of both logs bad: nothing applies, the hive stays dirty and read-only, and
    // the notes say why.
    let Some((hive, mut logs, _)) = new_dirty() else {
        return;
    };
    for (_, l) in &mut logs {
        let o = entry_offsets(l)[0];
        l[o + 100] ^= 1;
    }
    let p = prepare(hive.clone(), &logs, false).unwrap();
    assert!(
        p.read_only && p.report.entries_applied == 0,
        "{:?}",
        p.report
    );
    assert!(notes(&p).contains("hash-1"), "{}", notes(&p));
    assert!(p.bytes == hive);
    let q = prepare(hive, &logs, true).unwrap();
    assert!(!q.read_only && q.report.data_lost);
}

#[test]
fn bad_old_format_logs_are_refused_with_the_reason() {
    let Some((hive, logs, _)) = old_dirty() else {
        return;
    };
    let log = &logs[0].1;
    let name = logs[0].0.clone();
    let try_log = |l: Vec<u8>| prepare(hive.clone(), &[(name.clone(), l)], false).unwrap();
    // A DIRT vector longer than the file.
    let p = try_log(log[..600].to_vec());
    assert!(p.read_only, "{:?}", p.report);
    assert!(
        notes(&p).contains("run past the end of the file"),
        "{}",
        notes(&p)
    );
    // Dirty pages missing at the end.
    let p = try_log(log[..log.len() - 4096].to_vec());
    assert!(p.read_only);
    assert!(
        notes(&p).contains("past the end of the file"),
        "{}",
        notes(&p)
    );
    // No DIRT signature.
    let mut l = log.clone();
    l[512] = b'X';
    let p = try_log(l);
    assert!(p.read_only && notes(&p).contains("'DIRT'"), "{}", notes(&p));
    // An absurd hive-bins size in the log's base block (checksum made right again).
    let mut l = log.clone();
    put32(&mut l, 40, 0x7FFF_F000);
    let mut x = 0u32;
    for i in 0..127 {
        x ^= get32(&l, 4 * i);
    }
    put32(&mut l, 508, x);
    let p = try_log(l);
    assert!(
        p.read_only && notes(&p).contains("0x7ffff000"),
        "{}",
        notes(&p)
    );
    // A dirty hive bin whose header names another offset: replay stops before it.
    let mut l = log.clone();
    let first_hbin = (1024..l.len())
        .step_by(512)
        .find(|&o| &l[o..o + 4] == b"hbin")
        .expect("a dirty bin header in the log");
    put32(&mut l, first_hbin + 4, 0x1234_5000);
    let p = try_log(l);
    assert!(notes(&p).contains("dirty hive bin"), "{}", notes(&p));
    // A log whose timestamp is not the hive's does not apply to it.
    let mut l = log.clone();
    l[12] ^= 1;
    let mut x = 0u32;
    for i in 0..127 {
        x ^= get32(&l, 4 * i);
    }
    put32(&mut l, 508, x);
    let p = try_log(l);
    assert!(
        p.read_only && notes(&p).contains("timestamp"),
        "{}",
        notes(&p)
    );
}

#[test]
fn mutated_logs_and_base_blocks_never_panic() {
    let (Some((nh, nl, _)), Some((oh, ol, _))) = (new_dirty(), old_dirty()) else {
        return;
    };
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..400 {
        let (hive, logs) = if round % 2 == 0 {
            (&nh, &nl)
        } else {
            (&oh, &ol)
        };
        let mut hive = hive.clone();
        let mut logs = logs.clone();
        for _ in 0..(1 + rnd() % 8) {
            let which = (rnd() % (logs.len() as u64 + 1)) as usize;
            let target: &mut Vec<u8> = if which == logs.len() {
                &mut hive
            } else {
                &mut logs[which].1
            };
            // Mostly in the headers (base block, entry headers, dirty vector), where it hurts.
            let span = if rnd() % 2 == 0 { 4096 } else { target.len() };
            let at = (rnd() as usize) % span.min(target.len()).max(1);
            match rnd() % 4 {
                0 => target.truncate(at),
                1 => {
                    if let Some(b) = target.get_mut(at) {
                        *b = rnd() as u8;
                    }
                }
                2 => {
                    if at + 4 <= target.len() {
                        put32(target, at, rnd() as u32);
                    }
                }
                _ => {
                    // Keep the entry hashes right so the checks past them are reached.
                    for o in inspect_log(target).map(|i| i.entries).unwrap_or_default() {
                        let o = o.offset as usize;
                        put32(
                            target,
                            o + 12 + 4 * (rnd() % 3) as usize,
                            rnd() as u32 % 0x10000,
                        );
                        rehash(target, o);
                    }
                }
            }
        }
        if let Ok(p) = prepare(hive, &logs, round % 3 == 0) {
            if !p.read_only && p.report.entries_applied > 0 {
                assert_clean_base(&p.bytes);
            }
        }
    }
}

#[test]
fn find_logs_matches_the_extension_and_name_without_regard_to_case() {
    let dir = util::tmpdir();
    for n in [
        "Foo.DAT",
        "foo.dat.LOG1",
        "FOO.DAT.log2",
        "Foo.DAT.LOG",
        "Foo.DAT.LOG3",
        "Foo.DAT.bak",
        "Foo.DATX.LOG1",
        "Foo.LOG1",
    ] {
        write(dir.path(), n, b"x");
    }
    let got: Vec<String> = find_logs(&dir.path().join("Foo.DAT"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(got, ["Foo.DAT.LOG", "foo.dat.LOG1", "FOO.DAT.log2"]);
    assert!(find_logs(&dir.path().join("absent")).is_empty());
}

#[test]
fn hive_open_replays_the_logs_beside_it_and_leaves_the_files_alone() {
    let Some((hive, logs, _)) = new_dirty() else {
        return;
    };
    let dir = util::tmpdir();
    let path = write(dir.path(), "NewDirtyHive", &hive);
    write(dir.path(), "NewDirtyHive.LOG1", &logs[0].1);
    write(dir.path(), "NewDirtyHive.LOG2", &logs[1].1);
    let h = diskconv::guest::hive::Hive::open(&path, &Default::default()).unwrap();
    let r = h.recovery();
    assert!(
        r.was_dirty && r.entries_applied == 4 && r.logs_used.len() == 2,
        "{r:?}"
    );
    let subkeys: Vec<String> = h
        .subkeys(h.root())
        .unwrap()
        .into_iter()
        .map(|k| h.key_name(k).unwrap())
        .collect();
    assert_eq!(subkeys, ["Key3"], "as Windows 10 recovered it");
    assert!(h.to_bytes()[4096..] == prepare(hive.clone(), &logs, false).unwrap().bytes[4096..]);
    assert!(
        std::fs::read(&path).unwrap() == hive,
        "the hive file is not modified"
    );
    assert!(std::fs::read(dir.path().join("NewDirtyHive.LOG2")).unwrap() == logs[1].1);
}
