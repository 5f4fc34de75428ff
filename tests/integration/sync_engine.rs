//! Sync engine tests (issue 6): full and incremental passes through `diskconv sync`, qcow2
//! dirty bitmaps, a loop device source, kills at random moments, damaged or mismatched state.
//! Oracles: `qemu-img compare` (source and target equal), `qemu-img check` (qcow2 targets),
//! `qemu-img bitmap` / `qemu-io` (independent writers of the changes), sha256 of the target
//! (nothing written on refused runs).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::{
    Rng, assert_qemu_check, diskconv, make_raw, qemu_compare, qemu_img, qemu_io, require,
    sha256_file, tmpdir,
};

const BS: u64 = 65536;

/// How `diskconv sync` ends the message of a state it will not use.
const RESCAN_HINT: &str = "; pass --rescan to discard it and compare every block with the target\n";

fn sync(args: &[&str]) -> Output {
    diskconv()
        .arg("sync")
        .args(args)
        .output()
        .expect("running diskconv sync")
}

/// Runs `diskconv sync --json ARGS`, expects success, returns the (single) pass report.
fn sync_json(args: &[&str]) -> serde_json::Value {
    let out = sync(&[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "diskconv sync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().last().expect("a report line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

fn sync_err(args: &[&str]) -> String {
    let out = sync(args);
    assert!(
        !out.status.success(),
        "diskconv sync {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Overwrites `count` distinct random blocks of the raw file at `path` with random bytes at a
/// random offset inside each block (never crossing it). Returns the block indexes.
fn dirty_blocks(path: &Path, size: u64, count: usize, rng: &mut Rng) -> Vec<u64> {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut picked: Vec<u64> = Vec::new();
    while picked.len() < count {
        let b = rng.next() % (size / BS);
        if !picked.contains(&b) {
            picked.push(b);
        }
    }
    for &b in &picked {
        let inner = rng.next() % (BS - 4096);
        let len = 1 + rng.next() % (BS - inner).min(4096);
        f.write_all_at(&rng.bytes(len as usize), b * BS + inner)
            .unwrap();
    }
    f.sync_all().unwrap();
    picked.sort();
    picked
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[test]
fn full_then_incremental_scan_writes_only_changed_blocks() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size = 16 << 20;
    let src = d.path().join("src.img");
    make_raw(&src, size, 42);
    let targets = [
        ("raw", d.path().join("dst.img")),
        ("qcow2", d.path().join("dst.qcow2")),
        ("vpc", d.path().join("dst.vhd")),
        ("vhdx", d.path().join("dst.vhdx")),
        ("vmdk", d.path().join("dst.vmdk")),
    ];
    for (fmt, dst) in &targets {
        let r = sync_json(&[p(&src), p(dst)]);
        assert_eq!(r["source"], "full");
        assert_eq!(n(&r, "pass"), 1);
        assert_eq!(n(&r, "blocks_total"), size / BS);
        assert!(
            qemu_compare(&src, "raw", dst, fmt),
            "{fmt} after the full pass"
        );
        if matches!(*fmt, "qcow2" | "vhdx" | "vmdk") {
            crate::util::assert_qemu_check(dst);
        }
        if *fmt == "vmdk" {
            // Updatable in place: a sparse VMDK, never streamOptimized.
            let info = crate::util::qemu_info(dst);
            assert_eq!(
                info["format-specific"]["data"]["create-type"], "monolithicSparse",
                "{info}"
            );
        }
    }
    let mut rng = Rng(7);
    // 1% of the blocks.
    let changed = dirty_blocks(&src, size, (size / BS / 100) as usize + 1, &mut rng);
    for (fmt, dst) in &targets {
        let r = sync_json(&[p(&src), p(dst)]);
        assert_eq!(r["source"], "scan");
        assert_eq!(n(&r, "pass"), 2);
        assert_eq!(n(&r, "blocks_scanned"), size / BS);
        assert_eq!(n(&r, "blocks_changed"), changed.len() as u64, "{r}");
        assert_eq!(n(&r, "blocks_written"), changed.len() as u64, "{r}");
        assert_eq!(n(&r, "bytes_written"), changed.len() as u64 * BS, "{r}");
        assert!(
            qemu_compare(&src, "raw", dst, fmt),
            "{fmt} after the scan pass"
        );
        if matches!(*fmt, "qcow2" | "vhdx" | "vmdk") {
            crate::util::assert_qemu_check(dst);
        }
        // Nothing changed: nothing written.
        let r = sync_json(&[p(&src), p(dst)]);
        assert_eq!(n(&r, "blocks_changed"), 0);
        assert_eq!(n(&r, "bytes_written"), 0);
    }
    // A block that became zeros is written as zeros.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&vec![0u8; BS as usize], 3 * BS).unwrap();
    drop(f);
    let (_, dst) = &targets[0];
    let r = sync_json(&[p(&src), p(dst)]);
    assert_eq!(n(&r, "blocks_changed"), 1, "{r}");
    assert!(qemu_compare(&src, "raw", dst, "raw"));
}

#[test]
fn targets_that_cannot_be_updated_in_place_are_refused_before_writing() {
    let d = tmpdir();
    let src = d.path().join("src.img");
    make_raw(&src, 1 << 20, 3);
    let dst = d.path().join("out.ova");
    let e = sync_err(&[p(&src), p(&dst), "-O", "ova"]);
    assert!(e.contains("cannot be updated in place"), "{e}");
    assert!(!dst.exists(), "no target may be left behind");
    assert!(
        std::fs::read_dir(d.path()).unwrap().count() == 1,
        "no state file either"
    );
}

#[test]
fn qcow2_dirty_bitmap_reads_only_dirty_blocks() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 16 << 20;
    let raw = d.path().join("base.img");
    make_raw(&raw, size, 9);
    let src = d.path().join("src.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&src)]);
    let dst = d.path().join("dst.img");
    let r = sync_json(&[p(&src), p(&dst)]);
    assert_eq!(r["source"], "full");
    qemu_img(&["bitmap", "--add", p(&src), "b0"]);
    let offs: [u64; 4] = [0x10000, 0x2a0000, 0x7f0000, size - 0x10000];
    for o in offs {
        qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x5a {o} 65536"),
            p(&src),
        ]);
    }
    // One write across two blocks.
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x33 0x408000 0x10000",
        p(&src),
    ]);
    let dirty = offs.len() as u64 + 2;
    let r = sync_json(&[p(&src), p(&dst), "--bitmap", "b0"]);
    assert_eq!(r["source"]["bitmap"], "b0", "{r}");
    assert_eq!(n(&r, "blocks_scanned"), dirty, "{r}");
    assert_eq!(n(&r, "bytes_read"), dirty * BS, "{r}");
    assert_eq!(n(&r, "blocks_changed"), dirty, "{r}");
    assert_eq!(n(&r, "bytes_written"), dirty * BS, "{r}");
    assert!(qemu_compare(&src, "qcow2", &dst, "raw"));
    // The bitmap still reports the same blocks (diskconv never clears it): read, not written.
    let r = sync_json(&[p(&src), p(&dst), "--bitmap", "b0"]);
    assert_eq!(n(&r, "bytes_read"), dirty * BS);
    assert_eq!(n(&r, "blocks_written"), 0);
    // A full scan agrees that nothing is left.
    let r = sync_json(&[p(&src), p(&dst)]);
    assert_eq!(n(&r, "blocks_changed"), 0);
    // A missing bitmap is named.
    let e = sync_err(&[p(&src), p(&dst), "--bitmap", "nope"]);
    assert!(e.contains("'nope'") && e.contains("'b0'"), "{e}");
}

#[test]
fn loop_device_source() {
    if !require("qemu-img") || !require("loop-device") {
        return;
    }
    let d = tmpdir();
    let size = 8 << 20;
    let backing = d.path().join("loop.img");
    make_raw(&backing, size, 3);
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "skipped: losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _g = Detach(dev.clone());
    let dst = d.path().join("dst.img");
    let r = sync_json(&[&dev, p(&dst)]);
    assert_eq!(r["source"], "full");
    assert!(qemu_compare(Path::new(&dev), "raw", &dst, "raw"));
    let mut rng = Rng(99);
    let changed = dirty_blocks(Path::new(&dev), size, 3, &mut rng);
    let r = sync_json(&[&dev, p(&dst)]);
    assert_eq!(n(&r, "blocks_changed"), changed.len() as u64, "{r}");
    assert!(qemu_compare(Path::new(&dev), "raw", &dst, "raw"));
}

/// Runs sync to completion (a run may itself need resuming only if killed; here it is not).
fn sync_ok(src: &Path, dst: &Path) -> serde_json::Value {
    sync_json(&[p(src), p(dst)])
}

#[test]
fn killed_at_random_moments_resumes_to_an_identical_target() {
    kill_rounds("raw", 48, 16);
}

#[test]
fn killed_at_random_moments_resumes_to_an_identical_qcow2_target() {
    kill_rounds("qcow2", 24, 8);
}

#[test]
fn killed_at_random_moments_resumes_to_identical_vhd_vhdx_and_vmdk_targets() {
    for fmt in ["vpc", "vhdx", "vmdk"] {
        kill_rounds(fmt, 16, 5);
    }
}

/// `rounds` times: change the source, start `diskconv sync`, SIGKILL it after a random delay,
/// run it again to completion and compare. Every 12th round starts from scratch, so kills
/// also land in the first pass.
fn kill_rounds(fmt: &str, rounds: u32, min_kills: u32) {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 32 << 20;
    let src = d.path().join("src.img");
    let name = format!("dst.{fmt}");
    let dst = d.path().join(&name);
    let mut rng = Rng(0x5eed_1234_abcd ^ rounds as u64);
    // The source: random everywhere (no holes), so every pass writes a lot.
    {
        let f = std::fs::File::create(&src).unwrap();
        for i in 0..size / (1 << 20) {
            f.write_all_at(&rng.bytes(1 << 20), i << 20).unwrap();
        }
    }
    let mut kills = 0;
    let mut resumed = 0;
    let mut bound_us: u64 = 150_000;
    for round in 0..rounds {
        if round > 0 {
            // Change 5% of the blocks, so the next pass has real work.
            dirty_blocks(&src, size, (size / BS / 20) as usize, &mut rng);
        }
        if round % 12 == 11 {
            // From scratch: the kill lands in the first pass.
            for f in ["", ".dcsync", ".dcsync.fp"] {
                let _ = std::fs::remove_file(d.path().join(format!("{name}{f}")));
            }
        }
        let mut child = diskconv()
            .args(["sync", p(&src), p(&dst), "--json", "--window", "4M"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.next() % bound_us));
        // The bound adapts to the machine's speed: shorter after a run that finished before
        // the kill, longer after a kill, so about half the runs are killed mid-way.
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
            bound_us = (bound_us + bound_us / 8).min(2_000_000);
        } else {
            bound_us = (bound_us * 2 / 3).max(2_000);
        }
        child.wait().unwrap();
        let r = sync_ok(&src, &dst);
        if r["source"] == "resume" {
            resumed += 1;
        }
        assert!(
            qemu_compare(&src, "raw", &dst, fmt),
            "round {round}: target differs after resume ({r})"
        );
        if fmt == "qcow2" {
            // A kill may leak clusters (allowed by ImageUpdater), never corrupt metadata.
            let c = Command::new("qemu-img")
                .arg("check")
                .arg(&dst)
                .output()
                .unwrap();
            assert!(
                matches!(c.status.code(), Some(0) | Some(3)),
                "round {round}: qemu-img check: {}",
                String::from_utf8_lossy(&c.stdout)
            );
        }
    }
    eprintln!("{fmt}: {kills} kills, {resumed} resumed passes");
    assert!(kills >= min_kills, "only {kills} runs were killed mid-way");
    assert!(
        resumed >= min_kills / 2,
        "only {resumed} runs resumed an interrupted pass"
    );
}

#[test]
fn damaged_state_is_refused_then_rescan_repairs() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size = 8 << 20;
    let src = d.path().join("src.img");
    let dst = d.path().join("dst.img");
    let state = d.path().join("dst.img.dcsync");
    make_raw(&src, size, 5);
    sync_ok(&src, &dst);
    let good = std::fs::read(&state).unwrap();

    let mut rng = Rng(3);
    dirty_blocks(&src, size, 4, &mut rng);
    // Damage the target too: a rescan must find and fix it without trusting any state.
    let t = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
    t.write_all_at(&[0xee; 100], 5 * BS + 7).unwrap();
    drop(t);
    let before = sha256_file(&dst);

    // Truncated.
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    let e = sync_err(&[p(&src), p(&dst)]);
    assert!(
        e.contains("dst.img.dcsync") && e.contains("--rescan"),
        "{e}"
    );
    // The library says what is wrong, the CLI adds the flag that gets past it.
    assert!(e.ends_with(RESCAN_HINT), "{e}");
    assert_eq!(sha256_file(&dst), before);
    // One flipped bit.
    let mut bad = good.clone();
    bad[good.len() / 3] ^= 4;
    std::fs::write(&state, &bad).unwrap();
    let e = sync_err(&[p(&src), p(&dst)]);
    assert!(e.contains("checksum"), "{e}");
    assert_eq!(sha256_file(&dst), before);
    // A damaged fingerprint file.
    std::fs::write(&state, &good).unwrap();
    let fpf = d.path().join("dst.img.dcsync.fp");
    let fp = std::fs::read(&fpf).unwrap();
    std::fs::write(&fpf, &fp[..fp.len() - 5]).unwrap();
    let e = sync_err(&[p(&src), p(&dst)]);
    assert!(e.contains("fingerprint file"), "{e}");
    assert_eq!(sha256_file(&dst), before);

    // --rescan: every block compared with the target, the differing ones rewritten.
    std::fs::write(&state, &bad).unwrap();
    let r = sync_json(&[p(&src), p(&dst), "--rescan"]);
    assert_eq!(r["source"], "rescan");
    assert_eq!(n(&r, "blocks_changed"), 5, "{r}");
    assert!(qemu_compare(&src, "raw", &dst, "raw"));
    // And the new state works.
    let r = sync_ok(&src, &dst);
    assert_eq!(n(&r, "blocks_changed"), 0);
}

/// A rescan adopts an existing qcow2 target (compressed by qemu-img, holding the source but
/// for a few blocks) and compares every block with it as its updater reads it (the same
/// updater then writes the differing blocks): only those are counted and written, and qemu
/// reads the result as the source.
#[test]
fn rescan_of_a_compressed_qcow2_target_reads_through_its_updater() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size = 8 << 20;
    let src = d.path().join("src.img");
    let old = d.path().join("old.img");
    let dst = d.path().join("dst.qcow2");
    make_raw(&src, size, 21);
    std::fs::copy(&src, &old).unwrap();
    dirty_blocks(&old, size, 6, &mut Rng(9));
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p(&old),
        p(&dst),
    ]);
    let r = sync_json(&[p(&src), p(&dst), "--rescan"]);
    assert_eq!(r["source"], "rescan");
    assert_eq!(n(&r, "blocks_changed"), 6, "{r}");
    assert_eq!(n(&r, "blocks_written"), 6, "{r}");
    assert!(qemu_compare(&src, "raw", &dst, "qcow2"));
    assert_qemu_check(&dst);
    let r = sync_ok(&src, &dst);
    assert_eq!(n(&r, "blocks_changed"), 0);
}

#[test]
fn mismatched_state_is_refused_before_writing() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size = 4 << 20;
    let src = d.path().join("src.img");
    let other = d.path().join("other.img");
    let dst = d.path().join("dst.img");
    make_raw(&src, size, 11);
    make_raw(&other, size, 12);
    sync_ok(&src, &dst);
    let before = sha256_file(&dst);
    let state_before = sha256_file(&d.path().join("dst.img.dcsync"));

    let e = sync_err(&[p(&other), p(&dst)]);
    assert!(
        e.contains("belongs to the source") && e.contains("src.img"),
        "{e}"
    );
    assert!(e.ends_with(RESCAN_HINT), "{e}");
    let e = sync_err(&[p(&src), p(&dst), "--block-size", "128k"]);
    assert!(e.contains("block size 131072 differs"), "{e}");
    assert!(
        e.ends_with(&format!(
            "block size 131072 differs from the state's {BS} (omit --block-size to use it)\n"
        )),
        "{e}"
    );
    let e = sync_err(&[p(&src), p(&dst), "--block-size", "3k"]);
    assert!(e.contains("power of two"), "{e}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(size + BS)
        .unwrap();
    let e = sync_err(&[p(&src), p(&dst)]);
    assert!(e.contains("source size changed"), "{e}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(size)
        .unwrap();
    assert_eq!(sha256_file(&dst), before);
    assert_eq!(sha256_file(&d.path().join("dst.img.dcsync")), state_before);

    // Another target: same bytes, another file.
    let copy = d.path().join("copy.img");
    std::fs::copy(&dst, &copy).unwrap();
    std::fs::rename(&copy, &dst).unwrap();
    let e = sync_err(&[p(&src), p(&dst)]);
    assert!(e.contains("not the target it recorded"), "{e}");
    assert_eq!(sha256_file(&dst), before);

    // A target without state, a state without target.
    let lone = d.path().join("lone.img");
    std::fs::copy(&other, &lone).unwrap();
    let e = sync_err(&[p(&src), p(&lone)]);
    assert!(e.contains("has no sync state"), "{e}");
    assert!(
        e.ends_with(
            "; remove it, or pass --rescan to adopt it (every block is compared with the source)\n"
        ),
        "{e}"
    );
    assert_eq!(sha256_file(&lone), sha256_file(&other));
    std::fs::remove_file(&dst).unwrap();
    let e = sync_err(&[p(&src), p(&dst)]);
    assert!(e.contains("is missing"), "{e}");
    // --rescan adopts the lone target and makes it equal.
    let r = sync_json(&[p(&src), p(&lone), "--rescan"]);
    assert_eq!(r["source"], "rescan");
    assert!(qemu_compare(&src, "raw", &lone, "raw"));
}

#[test]
fn until_converged_stops_and_estimates() {
    let d = tmpdir();
    let src = d.path().join("src.img");
    let dst = d.path().join("dst.img");
    make_raw(&src, 4 << 20, 21);
    let out = sync(&[
        p(&src),
        p(&dst),
        "--until-converged",
        "--max-changed",
        "1",
        "--interval",
        "0",
        "--max-passes",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 3, "{s}");
    assert!(lines[0].starts_with("pass 1 (full)"), "{s}");
    assert!(
        lines[1].starts_with("pass 2 (scan): 64 blocks scanned, 0 changed"),
        "{s}"
    );
    assert!(lines[2].contains("converged after 2 passes"), "{s}");
    assert!(lines[2].contains("final pass should take about"), "{s}");
}

#[test]
fn library_ranges_and_cancel() {
    use diskconv::sync::{ChangeSource, SyncOptions, sync_pass};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size = 8 << 20;
    let src = d.path().join("src.img");
    let dst = d.path().join("dst.img");
    make_raw(&src, size, 17);
    let opts = SyncOptions::default();
    let r = sync_pass(&src, &dst, &opts).unwrap();
    assert_eq!(r.source, ChangeSource::Full);
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&[1u8; 10], 2 * BS + 5).unwrap();
    f.write_all_at(&[2u8; 10], 100 * BS).unwrap();
    drop(f);
    // Ranges covering the two changed blocks and one unchanged one.
    let opts = SyncOptions {
        changed_ranges: Some(vec![2 * BS + 5..2 * BS + 15, 99 * BS..100 * BS + 1]),
        ..SyncOptions::default()
    };
    let r = sync_pass(&src, &dst, &opts).unwrap();
    assert_eq!(r.source, ChangeSource::Ranges);
    assert_eq!(
        (r.blocks_scanned, r.blocks_changed, r.blocks_written),
        (3, 2, 2)
    );
    assert!(qemu_compare(&src, "raw", &dst, "raw"));
    let bad = SyncOptions {
        changed_ranges: Some(vec![BS..BS * 2, 0..size + 1]),
        ..SyncOptions::default()
    };
    let e = sync_pass(&src, &dst, &bad).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");

    // A cancelled pass is resumed by the next one.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&[3u8; 10], 50 * BS).unwrap();
    drop(f);
    let cancel = Arc::new(AtomicBool::new(true));
    let opts = SyncOptions {
        cancel: Some(cancel.clone()),
        ..SyncOptions::default()
    };
    let e = sync_pass(&src, &dst, &opts).unwrap_err();
    assert!(matches!(e, diskconv::Error::Cancelled), "{e}");
    cancel.store(false, Ordering::Relaxed);
    let r = sync_pass(&src, &dst, &opts).unwrap();
    assert_eq!(r.source, ChangeSource::Resume);
    assert_eq!(r.blocks_changed, 1);
    assert!(qemu_compare(&src, "raw", &dst, "raw"));
}

#[test]
fn export_makes_the_final_artifact_from_the_synced_target() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.img");
    make_raw(&src, 8 << 20, 11);
    let dst = d.path().join("dst.qcow2");
    let out = d.path().join("final.vmdk");
    let o = sync(&[
        p(&src),
        p(&dst),
        "--export",
        p(&out),
        "--export-format",
        "vmdk",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(qemu_compare(&src, "raw", &out, "vmdk"));
    let info = crate::util::qemu_info(&out);
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "streamOptimized",
        "{info}"
    );
    // A later pass re-exports what changed in the source.
    let mut rng = Rng(5);
    dirty_blocks(&src, 8 << 20, 3, &mut rng);
    let out2 = d.path().join("final.qcow2");
    let o = sync(&[
        p(&src),
        p(&dst),
        "--export",
        p(&out2),
        "--export-format",
        "qcow2",
        "--export-compressed",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(qemu_compare(&src, "raw", &out2, "qcow2"));
    crate::util::assert_qemu_check(&out2);
    // Bad export options are refused before the pass runs: the state is untouched.
    let state = std::fs::read(d.path().join("dst.qcow2.dcsync")).unwrap();
    let e = sync_err(&[
        p(&src),
        p(&dst),
        "--export",
        p(&out2),
        "--export-format",
        "nope",
    ]);
    assert!(e.contains("--export-format 'nope'"), "{e}");
    let e = sync_err(&[
        p(&src),
        p(&dst),
        "--export",
        p(&dst),
        "--export-format",
        "raw",
    ]);
    assert!(e.contains("must be a new file"), "{e}");
    assert_eq!(
        std::fs::read(d.path().join("dst.qcow2.dcsync")).unwrap(),
        state
    );
}
