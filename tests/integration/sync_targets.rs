//! Sync targets that are not local files (a raw disk handed in as `Storage`: what the NBD
//! client gives), the target identity in the state, the sample check that refuses a target
//! changed behind the sync's back, and `--bitmap` through the reader interface.
//! Oracles: `qemu-img compare` (source and target equal), `qemu-io` / `qemu-img bitmap`
//! (independent writers of changes), sha256 of the target (nothing written on refused runs).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use diskconv::error::Hint;
use diskconv::storage::{FileStorage, MemStorage, Storage};
use diskconv::sync::{ChangeSource, PassReport, SyncOptions, SyncSource, SyncTarget, sync_pass_to};

use crate::util::{
    diskconv, make_raw, qemu_compare, qemu_img, qemu_io, require, sha256_file, tmpdir,
};

const BS: u64 = 65536;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn src_of(path: &Path) -> SyncSource {
    SyncSource::Path(path.to_path_buf())
}

/// Writes `bytes` at `off` of the raw file at `path`.
fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// A raw file of `size` bytes full of 0xcc (old content of a disk: never what the source holds).
fn garbage_disk(path: &Path, size: u64) {
    std::fs::write(path, vec![0xccu8; size as usize]).unwrap();
}

/// Full pass, incremental pass, a pass interrupted after its first window and its resumption,
/// to `target` (whose bytes `dump` writes to a raw file for `qemu-img compare`).
fn full_incremental_resume(target: &SyncTarget, dump: &dyn Fn() -> std::path::PathBuf, d: &Path) {
    let size: u64 = 4 << 20;
    let blocks = size / BS;
    let src = d.join("src.img");
    make_raw(&src, size, 23);
    let state = d.join("t.dcsync");
    let opts = SyncOptions {
        state_path: Some(state.clone()),
        ..SyncOptions::default()
    };
    // First pass: every block written (the disk's old content is unknown), zero blocks as
    // zeroes (make_raw: every fourth block is zeros).
    let r = sync_pass_to(&src_of(&src), target, &opts).unwrap();
    assert_eq!(r.source, ChangeSource::Full);
    assert_eq!(r.blocks_written, blocks, "{r:?}");
    assert_eq!(r.bytes_written_zeroes, blocks / 4 * BS, "{r:?}");
    assert_eq!(r.bytes_written_data, size - blocks / 4 * BS, "{r:?}");
    assert_eq!(r.bytes_written, size);
    assert_eq!(r.target_bytes_checked, 0);
    assert!(qemu_compare(&src, "raw", &dump(), "raw"));

    // Incremental: three changed blocks (one of them now zeros), exactly those cross.
    poke(&src, 3 * BS + 100, &[7u8; 300]);
    poke(&src, 40 * BS, &[9u8; 10]);
    poke(&src, 8 * BS, &vec![0u8; BS as usize]);
    let r = sync_pass_to(&src_of(&src), target, &opts).unwrap();
    assert_eq!(r.source, ChangeSource::Scan);
    assert_eq!((r.blocks_changed, r.blocks_written), (3, 3), "{r:?}");
    assert_eq!(r.bytes_written_data, 2 * BS, "{r:?}");
    assert_eq!(r.bytes_written_zeroes, BS, "{r:?}");
    // The sample: at least the first and the last block, at most 16 blocks.
    assert!(
        r.target_bytes_checked >= 2 * BS && r.target_bytes_checked <= 16 * BS,
        "{r:?}"
    );
    assert!(qemu_compare(&src, "raw", &dump(), "raw"));

    // Interrupted after its first window (2 candidates per window), then resumed.
    for b in [1u64, 2, 5, 6, 9, 30, 50, 60] {
        poke(&src, b * BS + 1, &[b as u8 + 1; 5]);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let windows = SyncOptions {
        window_bytes: 2 * BS,
        cancel: Some(cancel.clone()),
        progress: Some(Arc::new(move |_, _| c2.store(true, Ordering::Relaxed))),
        ..opts.clone()
    };
    let e = sync_pass_to(&src_of(&src), target, &windows).unwrap_err();
    assert!(matches!(e, diskconv::Error::Cancelled), "{e}");
    cancel.store(false, Ordering::Relaxed);
    let plain = SyncOptions {
        window_bytes: 2 * BS,
        ..opts.clone()
    };
    let r: PassReport = sync_pass_to(&src_of(&src), target, &plain).unwrap();
    assert_eq!(r.source, ChangeSource::Resume);
    assert!(r.blocks_written >= 6 && r.blocks_written < 8, "{r:?}");
    assert!(r.target_bytes_checked > 0, "{r:?}");
    assert!(qemu_compare(&src, "raw", &dump(), "raw"));
    let r = sync_pass_to(&src_of(&src), target, &opts).unwrap();
    assert_eq!(r.blocks_changed, 0, "{r:?}");

    // A disk smaller than the source is refused, naming both sizes.
    let small = SyncTarget::Storage {
        storage: Arc::new(MemStorage::from_vec(vec![0; (size - BS) as usize])),
        id: "nbd://h:10809/small".into(),
    };
    let o = SyncOptions {
        state_path: Some(d.join("small.dcsync")),
        ..SyncOptions::default()
    };
    let e = sync_pass_to(&src_of(&src), &small, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nbd://h:10809/small")
            && e.contains(&(size - BS).to_string())
            && e.contains(&size.to_string()),
        "{e}"
    );
}

#[test]
fn storage_target_over_a_file_full_incremental_and_resumed() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let disk = d.path().join("disk.raw");
    garbage_disk(&disk, 4 << 20);
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::open_read_write(&disk).unwrap());
    let target = SyncTarget::Storage {
        storage,
        id: "nbd://target:10809/web01".into(),
    };
    let dp = disk.clone();
    full_incremental_resume(&target, &move || dp.clone(), d.path());
}

#[test]
fn storage_target_in_memory_full_incremental_and_resumed() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    // A disk larger than the source: the tail is left alone.
    let size = 4u64 << 20;
    let mem = Arc::new(MemStorage::from_vec(vec![0xcc; (size + BS) as usize]));
    let target = SyncTarget::Storage {
        storage: mem.clone(),
        id: "nbd://target:10809/web02".into(),
    };
    let out = d.path().join("dump.raw");
    let o2 = out.clone();
    let dump = move || {
        let v = mem.to_vec();
        assert!(v[size as usize..].iter().all(|&b| b == 0xcc));
        std::fs::write(&o2, &v[..size as usize]).unwrap();
        o2.clone()
    };
    full_incremental_resume(&target, &dump, d.path());
}

#[test]
fn state_of_another_target_is_refused_then_rescan_adopts_it() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 2 << 20;
    let src = d.path().join("src.img");
    make_raw(&src, size, 5);
    let state = d.path().join("web.dcsync");
    let opts = SyncOptions {
        state_path: Some(state.clone()),
        ..SyncOptions::default()
    };
    let a = Arc::new(MemStorage::from_vec(vec![0; size as usize]));
    let ta = SyncTarget::Storage {
        storage: a.clone(),
        id: "nbd://a/web01".into(),
    };
    sync_pass_to(&src_of(&src), &ta, &opts).unwrap();
    let b = Arc::new(MemStorage::from_vec(vec![0x11; size as usize]));
    let tb = SyncTarget::Storage {
        storage: b.clone(),
        id: "nbd://b/web02".into(),
    };
    let e = sync_pass_to(&src_of(&src), &tb, &opts).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "sync state {} belongs to target nbd://a/web01, not nbd://b/web02",
            state.display()
        )),
        "{e}"
    );
    assert_eq!(e.hint(), Some(Hint::Rescan));
    assert!(b.to_vec().iter().all(|&x| x == 0x11), "nothing written");
    // The same state against a local file is refused too.
    let file = d.path().join("local.img");
    std::fs::write(&file, vec![0u8; size as usize]).unwrap();
    let e = sync_pass_to(&src_of(&src), &SyncTarget::Path(file.clone()), &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("belongs to target nbd://a/web01, not /"),
        "{e}"
    );
    // --rescan adopts the new target: every block compared with it.
    let rescan = SyncOptions {
        rescan_on_bad_state: true,
        ..opts.clone()
    };
    let r = sync_pass_to(&src_of(&src), &tb, &rescan).unwrap();
    assert_eq!(r.source, ChangeSource::Rescan);
    let out = d.path().join("b.raw");
    std::fs::write(&out, b.to_vec()).unwrap();
    assert!(qemu_compare(&src, "raw", &out, "raw"));
    let r = sync_pass_to(&src_of(&src), &tb, &opts).unwrap();
    assert_eq!(r.blocks_changed, 0);
    // The remote disk changed behind the sync's back (its last block): refused, nothing
    // written, and a rescan repairs it.
    b.write_all_at(&[0x99; 10], size - 20).unwrap();
    let e = sync_pass_to(&src_of(&src), &tb, &opts).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "target nbd://b/web02 was changed since the last pass: block {} (offset {:#x})",
            size / BS - 1,
            size - BS
        )),
        "{e}"
    );
    assert_eq!(e.hint(), Some(Hint::Rescan));
    assert_eq!(b.to_vec()[(size - 20) as usize], 0x99, "nothing written");
    let r = sync_pass_to(&src_of(&src), &tb, &rescan).unwrap();
    assert_eq!((r.source, r.blocks_written), (ChangeSource::Rescan, 1));
    std::fs::write(&out, b.to_vec()).unwrap();
    assert!(qemu_compare(&src, "raw", &out, "raw"));
    // And the old target is now the other one.
    let e = sync_pass_to(&src_of(&src), &ta, &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("belongs to target nbd://b/web02, not nbd://a/web01"),
        "{e}"
    );
}

fn sync_cli(args: &[&str]) -> std::process::Output {
    diskconv()
        .arg("sync")
        .args(args)
        .output()
        .expect("running diskconv sync")
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(s.lines().last().unwrap()).unwrap()
}

/// Changes written into the target by another tool (qemu-io) between passes are found by the
/// sample check: the pass is refused before writing, and `--rescan` repairs the target.
#[test]
fn target_changed_behind_the_back_is_refused_and_rescan_repairs() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    for fmt in ["raw", "qcow2"] {
        let d = tmpdir();
        let size: u64 = 4 << 20;
        let src = d.path().join("src.img");
        make_raw(&src, size, 31);
        let dst = d.path().join(format!("dst.{fmt}"));
        json_of(&sync_cli(&[p(&src), p(&dst), "--json"]));
        let r = json_of(&sync_cli(&[p(&src), p(&dst), "--json"]));
        assert!(r["target_bytes_checked"].as_u64().unwrap() >= 2 * BS, "{r}");
        assert_eq!(r["bytes_written_data"], 0, "{r}");
        assert_eq!(r["bytes_written_zeroes"], 0, "{r}");
        // Block 0 (always sampled) changed behind the sync's back; the source changes too.
        qemu_io(&["-f", fmt, "-c", "write -P 0xab 512 4096", p(&dst)]);
        poke(&src, 20 * BS, &[1u8; 64]);
        let before = sha256_file(&dst);
        let out = sync_cli(&[p(&src), p(&dst)]);
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains(&format!(
                "target {} was changed since the last pass: block 0 (offset 0x0) does not hold \
                 what the last pass wrote",
                dst.display()
            )) && e.contains("--rescan"),
            "{e}"
        );
        assert_eq!(sha256_file(&dst), before, "nothing written");
        let r = json_of(&sync_cli(&[p(&src), p(&dst), "--rescan", "--json"]));
        assert_eq!(r["source"], "rescan", "{r}");
        assert_eq!(r["blocks_changed"], 2, "{r}");
        assert!(qemu_compare(&src, "raw", &dst, fmt), "{fmt}");
        let r = json_of(&sync_cli(&[p(&src), p(&dst), "--json"]));
        assert_eq!(r["blocks_changed"], 0, "{r}");
    }
}

/// `--bitmap` takes the changed blocks through the reader's `dirty_ranges`: from a qcow2 source
/// opened by the caller (library), and refused clearly for a format without bitmaps (CLI).
#[test]
fn bitmap_through_the_reader_interface() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 4 << 20;
    let raw = d.path().join("base.img");
    make_raw(&raw, size, 9);
    let src = d.path().join("src.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&src)]);
    let mem = Arc::new(MemStorage::from_vec(vec![0; size as usize]));
    let target = SyncTarget::Storage {
        storage: mem.clone(),
        id: "nbd://t/vm".into(),
    };
    let opened = |id: &str| SyncSource::Reader {
        reader: diskconv::open(&src, &diskconv::OpenOptions::new()).unwrap(),
        id: id.into(),
    };
    let opts = SyncOptions {
        state_path: Some(d.path().join("vm.dcsync")),
        ..SyncOptions::default()
    };
    sync_pass_to(&opened("qcow2://src"), &target, &opts).unwrap();
    qemu_img(&["bitmap", "--add", p(&src), "b0"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x5a 0x30000 65536", p(&src)]);
    let bm = SyncOptions {
        bitmap: Some("b0".into()),
        ..opts.clone()
    };
    let r = sync_pass_to(&opened("qcow2://src"), &target, &bm).unwrap();
    assert_eq!(r.source, ChangeSource::Bitmap("b0".into()));
    assert_eq!((r.blocks_scanned, r.blocks_written), (1, 1), "{r:?}");
    assert_eq!(r.bytes_written_data, BS);
    let out = d.path().join("t.raw");
    std::fs::write(&out, mem.to_vec()).unwrap();
    assert!(qemu_compare(&src, "qcow2", &out, "raw"));
    // The state belongs to the source id it recorded.
    let e = sync_pass_to(&opened("qcow2://other"), &target, &opts).unwrap_err();
    assert!(e.to_string().contains("qcow2://src"), "{e}");

    let dst = d.path().join("dst.img");
    let out = sync_cli(&[p(&raw), p(&dst), "--bitmap", "b0"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("raw images have no dirty bitmaps"), "{e}");
    assert!(!dst.exists(), "nothing created");
}

/// A state written by the previous version (no target id) is still used: checked by device and
/// inode, the pass is incremental, and the state is rewritten with the target's id.
#[test]
fn a_version_1_state_is_read_and_upgraded() {
    use diskconv::sync::state::SyncState;
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 2 << 20;
    let src = d.path().join("src.img");
    make_raw(&src, size, 41);
    let dst = d.path().join("dst.img");
    let state = d.path().join("dst.img.dcsync");
    json_of(&sync_cli(&[p(&src), p(&dst), "--json"]));
    // Rewrite the state as version 1 wrote it: no id, magic version 1, new checksum.
    let st = SyncState::load(&state).unwrap().unwrap();
    let id = std::fs::canonicalize(&dst).unwrap();
    assert_eq!(st.tgt_id, id.to_str().unwrap());
    let b = std::fs::read(&state).unwrap();
    let mut field = (st.tgt_id.len() as u32).to_le_bytes().to_vec();
    field.extend_from_slice(st.tgt_id.as_bytes());
    field.extend_from_slice(&st.blocks.to_le_bytes());
    let at = b
        .windows(field.len())
        .rposition(|w| w == field.as_slice())
        .expect("the id field");
    let mut v1 = b[..at].to_vec();
    v1.extend_from_slice(&b[at + 4 + st.tgt_id.len()..b.len() - 8]);
    v1[7] = 1;
    let sum = xxhash_rust::xxh3::xxh3_64(&v1);
    v1.extend_from_slice(&sum.to_le_bytes());
    std::fs::write(&state, &v1).unwrap();
    let old = SyncState::load(&state).unwrap().unwrap();
    assert_eq!(old.tgt_id, "");
    assert_eq!((old.tgt_dev, old.tgt_ino), (st.tgt_dev, st.tgt_ino));

    poke(&src, 5 * BS, &[3u8; 8]);
    let r = json_of(&sync_cli(&[p(&src), p(&dst), "--json"]));
    assert_eq!(r["source"], "scan", "{r}");
    assert_eq!(r["blocks_written"], 1, "{r}");
    assert!(qemu_compare(&src, "raw", &dst, "raw"));
    let b = std::fs::read(&state).unwrap();
    assert_eq!(&b[..8], b"DCSYNC\0\x02");
    assert_eq!(SyncState::load(&state).unwrap().unwrap().tgt_id, st.tgt_id);
}
