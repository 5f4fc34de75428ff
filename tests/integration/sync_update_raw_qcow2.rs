//! In-place updaters for raw and qcow2 targets (issue 6). Oracles: `qemu-img compare` against
//! a raw model that received the same writes, `qemu-img check` (no corruption, no leaks after
//! a flush), `qemu-img map` (holes), `qemu-io` reads, `qemu-img info` (bitmaps).

use std::os::unix::fs::FileExt;
use std::path::Path;

use diskconv::ImageUpdater;
use diskconv::storage::FileStorage;
use diskconv::sync::target::open_updater;
use diskconv::testing::{RandomOps, random_operations};

use crate::util::*;

/// Applies `ops` random writes and zeroings (unaligned, some spanning many clusters) to the
/// updater and to the raw model file alike, reading back through the updater as it goes: the
/// shared contract check ([`diskconv::testing::random_operations`]), without flushes (the
/// callers flush, or simulate a crash before the flush).
fn random_ops(up: &mut dyn ImageUpdater, model: &Path, seed: u64, ops: usize, max_len: u64) {
    let m = FileStorage::open_read_write(model).unwrap();
    random_operations(up, &m, &RandomOps::new(seed, ops, max_len))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn raw_random_updates_match_the_model() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let target = dir.path().join("t.raw");
    let model = dir.path().join("model.raw");
    make_raw(&target, 4 << 20, 11);
    std::fs::copy(&target, &model).unwrap();
    let mut up = open_updater(&target, None).unwrap();
    assert_eq!(up.virtual_size(), 4 << 20);
    random_ops(up.as_mut(), &model, 5, 300, 200_000);
    up.flush().unwrap();
    // Out of range: refused, nothing written.
    assert!(up.write_at(&[1, 2], (4 << 20) - 1).is_err());
    drop(up);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 4 << 20);
    assert!(qemu_compare(&target, "raw", &model, "raw"));
}

#[test]
fn raw_write_zeroes_punches_holes() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let target = dir.path().join("t.raw");
    std::fs::write(&target, vec![0xA5u8; 4 << 20]).unwrap();
    let mut up = open_updater(&target, Some(diskconv::Format::Raw)).unwrap();
    up.write_zeroes(1 << 20, 1 << 20).unwrap();
    up.flush().unwrap();
    drop(up);
    let map: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "raw",
        p(&target),
    ]))
    .unwrap();
    let hole = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["start"] == 1 << 20)
        .unwrap_or_else(|| panic!("no extent at 1 MiB: {map}"));
    let punched = hole["data"] == false && hole["zero"] == true && hole["length"] == 1 << 20;
    // A file system without hole punching gets zeros written instead; tmpfs and ext4 punch.
    let fs_punches = {
        let probe = dir.path().join("probe");
        std::fs::write(&probe, vec![1u8; 1 << 20]).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&probe)
            .unwrap();
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            1 << 20,
        )
        .is_ok()
    };
    if fs_punches {
        assert!(punched, "expected a hole at 1 MiB: {map}");
    }
    let out = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "read -P 0 1M 1M",
        "-c",
        "read -P 0xa5 0 1M",
        "-c",
        "read -P 0xa5 2M 2M",
        p(&target),
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

/// Makes the raw model of `img` (its current content, as qemu reads it).
fn model_of(img: &Path, model: &Path) {
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", p(img), p(model)]);
}

/// Random updates of `img` through our updater, then: `qemu-img check` clean and
/// `qemu-img compare` equal to the model.
fn update_and_verify(img: &Path, seed: u64, ops: usize, max_len: u64) {
    let model = img.with_extension("model");
    model_of(img, &model);
    let mut up = open_updater(img, None).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(up.format(), diskconv::Format::Qcow2);
    random_ops(up.as_mut(), &model, seed, ops, max_len);
    up.flush()
        .unwrap_or_else(|e| panic!("flush: {}", e.chain()));
    // A second round after the flush reuses the clusters the first one freed.
    random_ops(up.as_mut(), &model, seed ^ 0xABCD, ops / 2, max_len);
    up.flush()
        .unwrap_or_else(|e| panic!("flush: {}", e.chain()));
    drop(up);
    assert_qemu_check(img);
    assert!(
        qemu_compare(img, "qcow2", &model, "raw"),
        "{} differs from its model",
        img.display()
    );
}

fn create_qcow2(path: &Path, size: &str, opts: &str) {
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, p(path), size]);
}

/// Writes some data with qemu-io: patterns, zeroes and a compressed cluster region.
fn prefill(path: &Path, cluster: u64) {
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 0 1M",
        "-c",
        "write -P 0x22 3M 512k",
        "-c",
        "write -z 3200k 64k",
        "-c",
        &format!("write -c -P 0x33 4M {}", cluster * 4),
        p(path),
    ]);
}

#[test]
fn qcow2_made_by_qemu_img_all_layouts() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let cases: &[(&str, u64, &str)] = &[
        ("compat=0.10", 65536, ""),
        ("compat=1.1", 65536, ""),
        ("compat=1.1", 512, ""),
        ("compat=1.1", 2 << 20, ""),
        ("compat=1.1", 65536, ",refcount_bits=1"),
        ("compat=1.1", 4096, ",refcount_bits=64"),
        ("compat=1.1", 4096, ",refcount_bits=8"),
        ("compat=0.10", 512, ""),
    ];
    for (k, &(compat, cluster, extra)) in cases.iter().enumerate() {
        for filled in [false, true] {
            let img = dir.path().join(format!("c{k}-{filled}.qcow2"));
            let size = if cluster >= 2 << 20 { "24M" } else { "8M" };
            create_qcow2(
                &img,
                size,
                &format!("{compat},cluster_size={cluster}{extra}"),
            );
            if filled {
                prefill(&img, cluster);
            }
            let max_len = (cluster * 3).min(300_000);
            update_and_verify(&img, 77 + k as u64, 200, max_len);
        }
    }
}

#[test]
fn qcow2_written_by_our_writer() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 6 << 20, 3);
    for opts in ["cluster_size=65536", "cluster_size=4096,compat=0.10"] {
        let img = dir.path().join(format!("ours-{}.qcow2", opts.len()));
        let out = diskconv()
            .args(["convert", "-O", "qcow2", "-o", opts, p(&src), p(&img)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        update_and_verify(&img, 9, 250, 150_000);
    }
}

#[test]
fn qcow2_refcount_table_grows() {
    if !require("qemu-img") {
        return;
    }
    // 512-byte clusters: one 16-bit refcount block covers 128 KiB and the first refcount
    // table cluster covers 8 MiB (64-bit refcounts: 32 KiB and 2 MiB), so filling 20 MiB
    // forces new blocks and a larger table; 1-bit refcounts need new blocks only.
    let dir = tmpdir();
    for bits in [16, 64, 1] {
        let img = dir.path().join(format!("grow{bits}.qcow2"));
        create_qcow2(
            &img,
            "24M",
            &format!("cluster_size=512,refcount_bits={bits}"),
        );
        let before = qemu_info(&img);
        let model = dir.path().join(format!("grow{bits}.model"));
        model_of(&img, &model);
        let mut up = open_updater(&img, None).unwrap();
        let m = std::fs::OpenOptions::new()
            .write(true)
            .open(&model)
            .unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut off = 0;
        while off < 20 << 20 {
            up.write_at(&chunk, off).unwrap();
            m.write_all_at(&chunk, off).unwrap();
            off += chunk.len() as u64;
        }
        // A few zeroings free clusters again.
        up.write_zeroes(1 << 20, 1 << 20).unwrap();
        m.write_all_at(&vec![0; 1 << 20], 1 << 20).unwrap();
        up.flush().unwrap();
        drop(up);
        assert_qemu_check(&img);
        assert!(
            qemu_compare(&img, "qcow2", &model, "raw"),
            "refcount_bits={bits}"
        );
        let after = qemu_info(&img);
        assert!(after["actual-size"].as_u64() > before["actual-size"].as_u64());
        let head = std::fs::read(&img).unwrap();
        let rt_clusters = u32::from_be_bytes([head[56], head[57], head[58], head[59]]);
        if bits >= 16 {
            // The refcount table moved and grew.
            assert!(
                rt_clusters > 1,
                "refcount table still {rt_clusters} cluster(s)"
            );
        }
        // More random updates on the grown image.
        update_and_verify(&img, bits, 150, 20_000);
    }
}

/// Opening is refused with an error containing `what`, and the file is unchanged.
fn assert_refused(img: &Path, what: &str) {
    let before = sha256_file(img);
    let e = open_updater(img, Some(diskconv::Format::Qcow2))
        .err()
        .unwrap_or_else(|| panic!("{} was accepted", img.display()));
    let msg = e.chain();
    assert!(
        msg.contains(what),
        "error '{msg}' does not mention '{what}'"
    );
    assert!(
        msg.contains(&img.display().to_string()),
        "error '{msg}' names no file"
    );
    assert_eq!(e.kind(), diskconv::ErrorKind::Unsupported, "{msg}");
    assert_eq!(sha256_file(img), before);
}

#[test]
fn qcow2_refusals_leave_the_file_untouched() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    // Internal snapshot.
    let snap = dir.path().join("snap.qcow2");
    create_qcow2(&snap, "4M", "cluster_size=65536");
    qemu_img(&["snapshot", "-c", "s1", p(&snap)]);
    assert_refused(&snap, "snapshot");
    // Backing file.
    let base = dir.path().join("base.qcow2");
    create_qcow2(&base, "4M", "cluster_size=65536");
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&base),
        "-F",
        "qcow2",
        p(&top),
    ]);
    assert_refused(&top, "backing file");
    // Dirty bit (incompatible feature bit 0, header byte 79), set by hand.
    let dirty = dir.path().join("dirty.qcow2");
    create_qcow2(&dirty, "4M", "cluster_size=65536,lazy_refcounts=on");
    let mut b = std::fs::read(&dirty).unwrap();
    b[79] |= 1;
    std::fs::write(&dirty, &b).unwrap();
    assert_refused(&dirty, "dirty");
    // Encryption: a LUKS image when qemu-img can make one, else the crypt_method field.
    let enc = dir.path().join("enc.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=123456",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            p(&enc),
            "4M",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        create_qcow2(&enc, "4M", "cluster_size=65536");
        let mut b = std::fs::read(&enc).unwrap();
        b[35] = 2;
        std::fs::write(&enc, &b).unwrap();
    }
    assert_refused(&enc, "encrypt");
    // External data file.
    let df = dir.path().join("df.qcow2");
    let data = dir.path().join("df.data");
    create_qcow2(&df, "4M", &format!("data_file={}", p(&data)));
    assert_refused(&df, "data file");
    // Extended L2.
    let ext = dir.path().join("extl2.qcow2");
    create_qcow2(&ext, "4M", "cluster_size=65536,extended_l2=on");
    assert_refused(&ext, "extended L2");
}

#[test]
fn qcow2_crash_before_flush_leaves_no_corruption() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("crash.qcow2");
    create_qcow2(&img, "8M", "cluster_size=4096");
    prefill(&img, 4096);
    let model = dir.path().join("crash.model");
    model_of(&img, &model);
    let mut up = open_updater(&img, None).unwrap();
    random_ops(up.as_mut(), &model, 21, 150, 40_000);
    up.flush().unwrap();
    // Copies of the file at several moments of an unflushed stretch stand in for crashes.
    let mut snaps = Vec::new();
    for k in 0..4 {
        random_ops(up.as_mut(), &model, 100 + k, 60, 40_000);
        let c = dir.path().join(format!("crash{k}.qcow2"));
        std::fs::copy(&img, &c).unwrap();
        snaps.push(c);
    }
    // Dropped without a flush.
    drop(up);
    snaps.push(img.clone());
    for s in &snaps {
        let out = std::process::Command::new("qemu-img")
            .args(["check", "--output=json", p(s)])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "check {}: {}",
                s.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(
            v["corruptions"].as_u64().unwrap_or(0),
            0,
            "{}: {v}",
            s.display()
        );
        assert_eq!(
            v["check-errors"].as_u64().unwrap_or(0),
            0,
            "{}: {v}",
            s.display()
        );
    }
}

#[test]
fn qcow2_bitmaps_are_marked_in_use() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("bm.qcow2");
    create_qcow2(&img, "8M", "cluster_size=65536");
    qemu_img(&["bitmap", "--add", p(&img), "b0"]);
    prefill(&img, 65536);
    let flags = |img: &Path| -> Vec<String> {
        let v = qemu_info(img);
        let bms = v["format-specific"]["data"]["bitmaps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(bms.len(), 1, "{v}");
        assert_eq!(bms[0]["name"], "b0");
        bms[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect()
    };
    assert!(!flags(&img).contains(&"in-use".to_string()));
    // Opening alone changes nothing.
    let before = sha256_file(&img);
    drop(open_updater(&img, None).unwrap());
    assert_eq!(sha256_file(&img), before);
    update_and_verify(&img, 5, 100, 100_000);
    assert!(
        flags(&img).contains(&"in-use".to_string()),
        "{:?}",
        flags(&img)
    );
}

#[test]
fn qcow2_compressed_images_are_updated() {
    if !require("qemu-img") {
        return;
    }
    // Compressed clusters of 4 KiB and 512 bytes share host clusters; overwriting them must
    // drop exactly the right references (qemu-img check counts them).
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 3 << 20, 8);
    for (k, opts) in [
        "cluster_size=4096",
        "cluster_size=512",
        "cluster_size=65536,compression_type=zstd",
    ]
    .iter()
    .enumerate()
    {
        let img = dir.path().join(format!("comp{k}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            opts,
            p(&src),
            p(&img),
        ]);
        // Every cluster-sized piece of the first MiB gets a short write: all of them COW.
        let model = dir.path().join(format!("comp{k}.model"));
        model_of(&img, &model);
        let mut up = open_updater(&img, None).unwrap();
        let m = std::fs::OpenOptions::new()
            .write(true)
            .open(&model)
            .unwrap();
        let mut off = 0;
        while off < 1 << 20 {
            up.write_at(&[0x5A; 100], off + 17).unwrap();
            m.write_all_at(&[0x5A; 100], off + 17).unwrap();
            off += 4096;
        }
        up.write_zeroes(2 << 20, 256 << 10).unwrap();
        m.write_all_at(&vec![0; 256 << 10], 2 << 20).unwrap();
        up.flush().unwrap();
        drop(up);
        assert_qemu_check(&img);
        assert!(qemu_compare(&img, "qcow2", &model, "raw"), "{opts}");
        update_and_verify(&img, 40 + k as u64, 150, 50_000);
    }
}

/// Detaches a loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn raw_block_device_target() {
    if !require("qemu-img") || !require("loop-device") {
        return;
    }
    let dir = tmpdir();
    let backing = dir.path().join("dev.img");
    let model = dir.path().join("dev.model");
    make_raw(&backing, 4 << 20, 17);
    std::fs::copy(&backing, &model).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", p(&backing)])
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => {
            eprintln!("skipping: losetup failed: {other:?}");
            return;
        }
    };
    let lo = Loop(dev);
    let mut up = open_updater(Path::new(&lo.0), Some(diskconv::Format::Raw))
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(up.virtual_size(), 4 << 20);
    random_ops(up.as_mut(), &model, 99, 200, 100_000);
    up.flush().unwrap();
    assert!(up.write_at(&[1], 4 << 20).is_err());
    drop(up);
    drop(lo);
    assert!(qemu_compare(&backing, "raw", &model, "raw"));
}
