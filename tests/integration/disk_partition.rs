//! Write transactions over images (`TxDisk`, `ImageTx`, the undo journal and `rollback`),
//! checked with qemu-img; partition tables made by sfdisk/sgdisk read back and compared with
//! what those tools report.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::OpenOptions;
use diskconv::files::{RollbackOutcome, journal_path};
use diskconv::guest::disk::{CrashPoint, DiskIo, DiskRead, ImageTx, rollback};

use crate::util::{
    Rng, assert_qemu_check, make_raw, qemu_compare, qemu_img, require, run, sha256_file, tmpdir,
};

const SIZE: u64 = 8 << 20;

/// qemu-img formats and creation options of every container that can be edited in place.
const CONTAINERS: &[(&str, &str, &[&str])] = &[
    ("raw", "raw", &[]),
    ("qcow2", "qcow2", &[]),
    ("vhd", "vpc", &["-o", "subformat=dynamic"]),
    ("vhdx", "vhdx", &[]),
    ("vmdk", "vmdk", &["-o", "subformat=monolithicSparse"]),
];

/// A raw model with varied content and the same disk converted to `fmt` by qemu-img.
fn make_pair(dir: &Path, ext: &str, fmt: &str, opts: &[&str]) -> (PathBuf, PathBuf) {
    let model = dir.join(format!("model-{ext}.raw"));
    make_raw(&model, SIZE, 7);
    let img = dir.join(format!("disk.{ext}"));
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    args.extend_from_slice(opts);
    args.push(model.to_str().unwrap());
    args.push(img.to_str().unwrap());
    qemu_img(&args);
    (model, img)
}

fn write_model(model: &Path, data: &[u8], off: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(model).unwrap();
    f.write_all_at(data, off).unwrap();
}

fn read_model(model: &Path, len: usize, off: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(model).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

/// Random writes (unaligned, page-crossing, some rewriting the bytes already there, some into
/// holes) through an `ImageTx` and into the model; reads through the transaction must match.
fn random_edits(tx: &mut ImageTx, model: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..60 {
        let len = 1 + rng.below(if i % 10 == 0 { 300_000 } else { 9000 }) as usize;
        let off = rng.below(SIZE - len as u64);
        let data = if i % 7 == 3 {
            // Same bytes as already there: not a change.
            read_model(model, len, off)
        } else {
            rng.bytes(len)
        };
        tx.disk.write_at(&data, off).unwrap();
        write_model(model, &data, off);
        let rl = 1 + rng.below(20000) as usize;
        let ro = rng.below(SIZE - rl as u64);
        let mut got = vec![0u8; rl];
        tx.disk.read_at(&mut got, ro).unwrap();
        assert!(got == read_model(model, rl, ro), "read at {ro:#x}+{rl}");
    }
    // The last byte of the disk and a write past the end.
    // (qemu-img rounds a VHD's size up to its geometry: the disk may be a little larger.)
    let end = tx.disk.len();
    assert!(end >= SIZE);
    tx.disk.write_at(&[0xA5], end - 1).unwrap();
    write_model(model, &[0xA5], end - 1);
    assert!(tx.disk.write_at(&[1, 2], end - 1).is_err());
    let mut b = [0u8; 2];
    assert!(tx.disk.read_at(&mut b, end - 1).is_err());
}

#[test]
fn disk_tx_commit_equals_model_in_every_container() {
    if !require("qemu-img") {
        return;
    }
    for (ext, fmt, opts) in CONTAINERS {
        let dir = tmpdir();
        let (model, img) = make_pair(dir.path(), ext, fmt, opts);
        let before = sha256_file(&img);
        let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
        assert_eq!(
            sha256_file(&img),
            before,
            "{ext}: opening for an edit wrote"
        );
        random_edits(&mut tx, &model, 11);
        let ranges = tx.disk.changed_ranges().unwrap();
        assert!(!ranges.is_empty());
        assert!(
            ranges.windows(2).all(|w| w[0].end < w[1].start),
            "{ranges:?}"
        );
        assert_eq!(
            sha256_file(&img),
            before,
            "{ext}: edits before commit wrote"
        );
        let stats = tx.commit().unwrap();
        assert_eq!(stats.ranges, ranges.len(), "{ext}");
        assert_eq!(
            stats.bytes_written,
            ranges.iter().map(|r| r.end - r.start).sum::<u64>()
        );
        assert!(!journal_path(&img).exists(), "{ext}: journal left behind");
        assert!(
            qemu_compare(&img, fmt, &model, "raw"),
            "{ext}: committed image differs from the model"
        );
        if ["qcow2", "vhdx", "vmdk"].contains(ext) {
            assert_qemu_check(&img);
        }
    }
}

#[test]
fn disk_tx_without_commit_leaves_image_identical() {
    if !require("qemu-img") {
        return;
    }
    for (ext, fmt, opts) in CONTAINERS {
        let dir = tmpdir();
        let (model, img) = make_pair(dir.path(), ext, fmt, opts);
        let before = sha256_file(&img);
        {
            let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
            random_edits(&mut tx, &model, 3);
            // Dropped here: an operation that failed half-way.
        }
        assert_eq!(sha256_file(&img), before, "{ext}");
        // Writing back exactly what is there is no change: nothing committed.
        let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
        let mut same = vec![0u8; 70000];
        tx.disk.read_at(&mut same, 12345).unwrap();
        tx.disk.write_at(&same, 12345).unwrap();
        assert!(!tx.disk.is_unchanged());
        assert!(tx.disk.changed_ranges().unwrap().is_empty());
        let stats = tx.commit().unwrap();
        assert_eq!(stats.bytes_written, 0);
        assert_eq!(sha256_file(&img), before, "{ext}: a no-op commit wrote");
    }
}

#[test]
fn disk_tx_interrupted_commit_rolls_back() {
    if !require("qemu-img") {
        return;
    }
    let points = [
        CrashPoint::AfterJournal,
        CrashPoint::MidWrites,
        CrashPoint::BeforeJournalRemoval,
    ];
    for (ext, fmt, opts) in CONTAINERS {
        for (pi, point) in points.iter().enumerate() {
            let dir = tmpdir();
            let (model, img) = make_pair(dir.path(), ext, fmt, opts);
            let original = dir.path().join("original.raw");
            std::fs::copy(&model, &original).unwrap();
            let before = sha256_file(&img);
            let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
            random_edits(&mut tx, &model, 20 + pi as u64);
            tx.commit_interrupted(*point).unwrap();
            let journal = journal_path(&img);
            assert!(journal.exists(), "{ext} {point:?}");
            if *point == CrashPoint::AfterJournal {
                assert_eq!(sha256_file(&img), before);
            }
            // A new edit is refused while the journal is there, naming it and the remedy.
            let err = ImageTx::open(&img, &OpenOptions::default()).unwrap_err();
            let msg = format!("{err:#}");
            let chain = diskconv_error_chain(&err);
            assert!(
                chain.contains("diskconv-undo") && chain.contains("rollback"),
                "{msg} / {chain}"
            );
            let out = rollback(&img).unwrap();
            assert!(
                matches!(out, RollbackOutcome::Restored { .. }),
                "{ext} {point:?}: {out:?}"
            );
            assert!(!journal.exists());
            assert!(
                qemu_compare(&img, fmt, &original, "raw"),
                "{ext} {point:?}: not restored"
            );
            if ["qcow2", "vhdx", "vmdk"].contains(ext) {
                assert_qemu_check(&img);
            }
            // Editable again.
            ImageTx::open(&img, &OpenOptions::default()).unwrap();
        }
    }
}

/// Every message of an error's source chain.
fn diskconv_error_chain(e: &diskconv::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn disk_tx_failed_commit_restores_the_image_itself() {
    if !require("qemu-img") {
        return;
    }
    for (ext, fmt, opts) in CONTAINERS {
        let dir = tmpdir();
        let (model, img) = make_pair(dir.path(), ext, fmt, opts);
        let original = dir.path().join("original.raw");
        std::fs::copy(&model, &original).unwrap();
        let before = sha256_file(&img);
        let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
        random_edits(&mut tx, &model, 40);
        let e = tx
            .commit_interrupted(CrashPoint::FailMidWrites)
            .unwrap_err();
        assert!(e.chain().contains("simulated"), "{}", e.chain());
        assert!(!journal_path(&img).exists(), "{ext}");
        assert!(
            qemu_compare(&img, fmt, &original, "raw"),
            "{ext}: not restored"
        );
        if *ext == "raw" {
            assert_eq!(sha256_file(&img), before);
        }
        if ["qcow2", "vhdx", "vmdk"].contains(ext) {
            assert_qemu_check(&img);
        }
    }
}

#[test]
fn disk_tx_one_edit_at_a_time() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (_model, img) = make_pair(dir.path(), "qcow2", "qcow2", &[]);
    let tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
    let e = ImageTx::open(&img, &OpenOptions::default()).unwrap_err();
    assert!(
        e.chain().contains("another diskconv process"),
        "{}",
        e.chain()
    );
    assert!(rollback(&img).unwrap_err().chain().contains("another"));
    // The CLI too.
    let out = crate::util::diskconv()
        .args(["ntfs", "mkdir"])
        .arg(&img)
        .arg("x")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("another diskconv process"));
    drop(tx);
    ImageTx::open(&img, &OpenOptions::default()).unwrap();
}

#[test]
fn disk_tx_rollback_of_incomplete_or_missing_journal() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (model, img) = make_pair(dir.path(), "qcow2", "qcow2", &[]);
    // No journal: an error.
    assert!(rollback(&img).is_err());
    // A journal cut short (the crash happened while writing it): removed, image untouched.
    let before = sha256_file(&img);
    let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
    random_edits(&mut tx, &model, 5);
    tx.commit_interrupted(CrashPoint::AfterJournal).unwrap();
    let j = journal_path(&img);
    let bytes = std::fs::read(&j).unwrap();
    std::fs::write(&j, &bytes[..bytes.len() / 2]).unwrap();
    let out = rollback(&img).unwrap();
    assert!(
        matches!(out, RollbackOutcome::JournalIncomplete { .. }),
        "{out:?}"
    );
    assert!(!j.exists());
    assert_eq!(sha256_file(&img), before);
    // A file that is not a journal is left alone.
    std::fs::write(
        &j,
        b"something else entirely, long enough to be read as a header....",
    )
    .unwrap();
    assert!(rollback(&img).is_err());
    assert!(j.exists());
    assert_eq!(sha256_file(&img), before);
    // The CLI names it too.
    let out = crate::util::diskconv()
        .args(["ntfs", "rollback"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("journal"));
}

#[test]
fn disk_tx_refuses_images_that_cannot_be_updated_before_any_work() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let base = d.join("base.raw");
    make_raw(&base, SIZE, 1);
    let b = base.to_str().unwrap();
    let so = d.join("so.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        b,
        so.to_str().unwrap(),
    ]);
    let q = d.join("base.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        b,
        q.to_str().unwrap(),
    ]);
    let overlay = d.join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        q.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    let snap = d.join("snap.qcow2");
    std::fs::copy(&q, &snap).unwrap();
    qemu_img(&["snapshot", "-c", "s1", snap.to_str().unwrap()]);
    let refused = vec![so, snap, overlay];
    let opts = OpenOptions {
        references: diskconv::ReferencePolicy::Anywhere,
        ..OpenOptions::default()
    };
    for p in refused {
        let before = sha256_file(&p);
        let err = ImageTx::open(&p, &opts).unwrap_err();
        assert!(
            !diskconv_error_chain(&err).is_empty(),
            "{}: empty error",
            p.display()
        );
        assert_eq!(sha256_file(&p), before, "{}", p.display());
        assert!(!journal_path(&p).exists());
    }
    // A snapshot asked for explicitly is read-only.
    let q2 = d.join("s2.qcow2");
    std::fs::copy(&q, &q2).unwrap();
    let opts = OpenOptions {
        snapshot: Some("x".into()),
        ..OpenOptions::default()
    };
    assert!(ImageTx::open(&q2, &opts).is_err());
    ImageTx::open(&q, &OpenOptions::default()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Partition tables.

use diskconv::guest::disk::{TxDisk, Window};
use diskconv::guest::partition::{
    FsKind, PartitionType, Scheme, find_volumes, read_partition_table,
};
use diskconv::storage::MemStorage;

/// The virtual disk of an image, read through diskconv.
fn disk_of(path: &Path) -> TxDisk {
    TxDisk::new(diskconv::open(path, &OpenOptions::default()).unwrap())
}

fn sfdisk_json(path: &Path) -> serde_json::Value {
    let out = run(Command::new("sfdisk").arg("--json").arg(path));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"].clone()
}

/// Writes `fs` (a file holding a file system) into the disk file at byte `offset`.
fn dd_into(disk: &Path, fs: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let data = std::fs::read(fs).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&data, offset).unwrap();
}

fn make_fs(dir: &Path, name: &str, size: u64, tool: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    let mut c = Command::new(tool[0]);
    c.args(&tool[1..]).arg(&p);
    if tool[0] == "mkntfs" {
        // mkntfs wants the geometry of a file given explicitly.
        c.args([
            "-F", "-q", "-Q", "-s", "512", "-p", "2048", "-H", "0", "-S", "0",
        ]);
    }
    run(&mut c);
    p
}

#[test]
fn disk_partition_mbr_with_logicals_matches_sfdisk() {
    if !require("sfdisk") || !require("mkntfs") || !require("mkswap") || !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("mbr.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let script = "label: dos\nstart=2048,size=8M,type=7,bootable\nsize=4M,type=83\n\
                  size=40M,type=5\nsize=8M,type=83\nsize=8M,type=7\nsize=4M,type=82\n";
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(&img).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    let truth = sfdisk_json(&img);
    // File systems in partition 1 (NTFS), 5 (NTFS, logical) and 6 (swap, logical).
    let parts = truth["partitions"].as_array().unwrap().clone();
    let start_of = |n: u32| -> u64 {
        parts
            .iter()
            .find(|p| node_number(p["node"].as_str().unwrap()) == n)
            .unwrap()["start"]
            .as_u64()
            .unwrap()
            * 512
    };
    let ntfs = make_fs(dir.path(), "ntfs.img", 8 << 20, &["mkntfs"]);
    dd_into(&img, &ntfs, start_of(1));
    dd_into(&img, &ntfs, start_of(5));
    let swap = make_fs(dir.path(), "swap.img", 4 << 20, &["mkswap"]);
    dd_into(&img, &swap, start_of(6));

    // The same disk in a qcow2 container reads the same.
    let q = dir.path().join("mbr.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        img.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    for path in [&img, &q] {
        let disk = disk_of(path);
        let t = read_partition_table(&disk).unwrap();
        assert_eq!(t.scheme, Scheme::Mbr);
        assert_eq!(t.sector_size, 512);
        // sfdisk lists the extended container too; we list what holds data.
        let expected: Vec<&serde_json::Value> = parts.iter().filter(|p| p["type"] != "5").collect();
        assert_eq!(t.partitions.len(), expected.len(), "{:?}", t.partitions);
        for e in expected {
            let node = e["node"].as_str().unwrap();
            let n = node_number(node);
            let p = t.partitions.iter().find(|p| p.number == n).unwrap();
            assert_eq!(p.start, e["start"].as_u64().unwrap() * 512, "{node}");
            assert_eq!(p.len, e["size"].as_u64().unwrap() * 512, "{node}");
            let ty = u8::from_str_radix(e["type"].as_str().unwrap(), 16).unwrap();
            assert_eq!(p.kind, PartitionType::Mbr(ty), "{node}");
            assert_eq!(
                p.bootable,
                e["bootable"].as_bool().unwrap_or(false),
                "{node}"
            );
        }
        let vols = find_volumes(&disk).unwrap();
        let fs: Vec<(u32, FsKind)> = vols
            .iter()
            .map(|v| (v.partition.as_ref().unwrap().number, v.fs))
            .collect();
        assert_eq!(
            fs,
            vec![
                (1, FsKind::Ntfs),
                (2, FsKind::Unknown),
                (4, FsKind::Unknown),
                (5, FsKind::Ntfs),
                (6, FsKind::Swap)
            ]
        );
    }
}

/// The partition number at the end of an sfdisk node name ("/tmp/x/mbr.raw5" -> 5).
fn node_number(node: &str) -> u32 {
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    node[node.len() - digits..].parse().unwrap()
}

/// `sgdisk -p` rows: (number, first sector, last sector, name).
fn sgdisk_rows(path: &Path) -> Vec<(u32, u64, u64, String)> {
    let out = run(Command::new("sgdisk").arg("-p").arg(path));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("Number") {
            in_table = true;
            continue;
        }
        if !in_table || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        // Number Start End Size Unit Code Name...
        let name = f[6..].join(" ");
        rows.push((
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            name,
        ));
    }
    rows
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(b);
    c.sum()
}

/// Recomputes the CRCs of the GPT header at byte `hdr` (entries first).
fn fix_gpt_crcs(d: &mut [u8], hdr: usize, ss: usize) {
    let le32 = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
    let le64 = |d: &[u8], at: usize| u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
    let entries = le64(d, hdr + 72) as usize * ss;
    let n = le32(d, hdr + 80) as usize * le32(d, hdr + 84) as usize;
    if entries + n <= d.len() {
        let c = crc32(&d[entries..entries + n]);
        d[hdr + 88..hdr + 92].copy_from_slice(&c.to_le_bytes());
    }
    let hs = le32(d, hdr + 12) as usize;
    d[hdr + 16..hdr + 20].fill(0);
    let c = crc32(&d[hdr..hdr + hs]);
    d[hdr + 16..hdr + 20].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn disk_partition_gpt_matches_sgdisk_and_survives_a_damaged_primary() {
    for t in [
        "sgdisk",
        "sfdisk",
        "mkntfs",
        "mkfs.fat",
        "mkfs.ext4",
        "qemu-img",
    ] {
        if !require(t) {
            return;
        }
    }
    let dir = tmpdir();
    let img = dir.path().join("gpt.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args([
            "-n",
            "1:2048:+4M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI system partition",
        ])
        .args([
            "-n",
            "2:0:+16M",
            "-t",
            "2:0c01",
            "-c",
            "2:Microsoft reserved",
        ])
        .args([
            "-n",
            "3:0:+8M",
            "-t",
            "3:0700",
            "-c",
            "3:Basic data partition",
        ])
        .args(["-n", "4:0:+8M", "-t", "4:8300", "-c", "4:Ünïcode lïnux"])
        .args(["-n", "6:0:+20M", "-t", "6:8300", "-c", "6:empty"])
        .args(["-A", "4:set:2"])
        .arg(&img));
    let truth = sfdisk_json(&img);
    let parts = truth["partitions"].as_array().unwrap().clone();
    let start_of = |n: u32| -> u64 {
        parts
            .iter()
            .find(|p| node_number(p["node"].as_str().unwrap()) == n)
            .unwrap()["start"]
            .as_u64()
            .unwrap()
            * 512
    };
    dd_into(
        &img,
        &make_fs(dir.path(), "esp", 4 << 20, &["mkfs.fat", "-F", "12"]),
        start_of(1),
    );
    dd_into(
        &img,
        &make_fs(dir.path(), "ntfs", 8 << 20, &["mkntfs"]),
        start_of(3),
    );
    dd_into(
        &img,
        &make_fs(dir.path(), "ext", 8 << 20, &["mkfs.ext4", "-q", "-F"]),
        start_of(4),
    );
    let rows = sgdisk_rows(&img);
    assert_eq!(rows.len(), 5);

    let check = |path: &Path, fmt: &str| {
        let disk = disk_of(path);
        let t = read_partition_table(&disk).unwrap();
        assert_eq!(t.scheme, Scheme::Gpt, "{fmt}");
        assert_eq!(t.sector_size, 512);
        let got: Vec<(u32, u64, u64, String)> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.start / 512,
                    (p.start + p.len) / 512 - 1,
                    p.name.clone(),
                )
            })
            .collect();
        assert_eq!(got, rows, "{fmt}: against sgdisk -p");
        for e in &parts {
            let n = node_number(e["node"].as_str().unwrap());
            let p = t.partitions.iter().find(|p| p.number == n).unwrap();
            assert_eq!(
                p.kind,
                PartitionType::Gpt(e["type"].as_str().unwrap().to_string()),
                "{fmt} {n}"
            );
            assert_eq!(p.name, e["name"].as_str().unwrap());
            assert_eq!(p.bootable, e["attrs"] == "LegacyBIOSBootable", "{fmt} {n}");
        }
        let fs: Vec<(u32, FsKind)> = find_volumes(&disk)
            .unwrap()
            .iter()
            .map(|v| (v.partition.as_ref().unwrap().number, v.fs))
            .collect();
        assert_eq!(
            fs,
            vec![
                (1, FsKind::Fat),
                (2, FsKind::Unknown),
                (3, FsKind::Ntfs),
                (4, FsKind::Ext),
                (6, FsKind::Unknown)
            ],
            "{fmt}"
        );
    };
    check(&img, "raw");
    let v = dir.path().join("gpt.vhdx");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        img.to_str().unwrap(),
        v.to_str().unwrap(),
    ]);
    check(&v, "vhdx");

    // A damaged primary header: the backup at the last sector is used.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[512 + 40] ^= 0xFF;
    let damaged = dir.path().join("damaged.raw");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = Command::new("sgdisk")
        .arg("-v")
        .arg(&damaged)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("Main header: ERROR"),
        "sgdisk sees the damage: {said}"
    );
    check(&damaged, "damaged primary");
    // A damaged primary entry array: also the backup.
    let mut bytes2 = std::fs::read(&img).unwrap();
    bytes2[1024 + 56] ^= 0xFF;
    std::fs::write(&damaged, &bytes2).unwrap();
    check(&damaged, "damaged primary entries");
    // No protective MBR at all (wiped): the GPT is still found.
    let mut wiped = std::fs::read(&img).unwrap();
    wiped[..512].fill(0);
    std::fs::write(&damaged, &wiped).unwrap();
    check(&damaged, "no protective MBR");
    // Both damaged: an error naming the CRCs.
    let last = bytes.len() - 512;
    bytes[last + 40] ^= 0xFF;
    let e = read_partition_table(&MemStorage::from_vec(bytes))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("primary") && e.contains("backup") && e.contains("CRC"),
        "{e}"
    );

    // Hostile but checksummed tables.
    let good = std::fs::read(&img).unwrap();
    let hostile = |what: &str, edit: &dyn Fn(&mut Vec<u8>), expect: &str| {
        let mut d = good.clone();
        edit(&mut d);
        fix_gpt_crcs(&mut d, 512, 512);
        // Make the backup unusable so the hostile primary is what is read.
        let last = d.len() - 512;
        d[last..last + 8].fill(0);
        let e = read_partition_table(&MemStorage::from_vec(d))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{what}: {e}");
    };
    hostile(
        "entry size 100",
        &|d| d[512 + 84..512 + 88].copy_from_slice(&100u32.to_le_bytes()),
        "entry size",
    );
    hostile(
        "entry size 132",
        &|d| d[512 + 84..512 + 88].copy_from_slice(&132u32.to_le_bytes()),
        "entry size",
    );
    hostile(
        "4 G entries",
        &|d| d[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes()),
        "entries",
    );
    hostile(
        "partition past the usable area",
        &|d| d[1024 + 40..1024 + 48].copy_from_slice(&(1u64 << 40).to_le_bytes()),
        "outside the usable",
    );
    hostile(
        "overlapping partitions",
        &|d| {
            let s = u64::from_le_bytes(d[1024 + 32..1024 + 40].try_into().unwrap());
            d[1024 + 128 + 32..1024 + 128 + 40].copy_from_slice(&(s + 1).to_le_bytes());
        },
        "overlaps",
    );
    hostile(
        "entry array past the end",
        &|d| d[512 + 72..512 + 80].copy_from_slice(&(1u64 << 50).to_le_bytes()),
        "outside the disk",
    );

    // Reading a partition through a window: the NTFS boot sector is at its offset 0.
    let disk = disk_of(&img);
    let w = Window::new(&disk, start_of(3), 8 << 20).unwrap();
    let mut b = [0u8; 11];
    w.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[3..], b"NTFS    ");
    assert!(Window::new(&disk, start_of(3), 1 << 40).is_err());
}

#[test]
fn disk_partition_gpt_with_4096_byte_sectors() {
    if !require("sfdisk") || !require("loop-device") {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("g4.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // Only a loop device with 4 KiB logical sectors makes sfdisk write a 4Kn table.
    let out = Command::new("losetup")
        .args(["-f", "--show", "-b", "4096"])
        .arg(&img)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "skipping: no loop device ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", &dev])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: gpt\nsize=8M,type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7,name=data\nsize=4M,name=second\n")
            .unwrap();
    }
    let ok = child.wait().unwrap();
    let truth = Command::new("sfdisk")
        .arg("--json")
        .arg(&dev)
        .output()
        .unwrap();
    run(Command::new("losetup").args(["-d", &dev]));
    assert!(ok.success());
    let v: serde_json::Value = serde_json::from_slice(&truth.stdout).unwrap();
    let t = &v["partitiontable"];
    assert_eq!(t["sectorsize"], 4096);
    let table = read_partition_table(&disk_of(&img)).unwrap();
    assert_eq!(table.scheme, Scheme::Gpt);
    assert_eq!(table.sector_size, 4096);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(table.partitions.len(), parts.len());
    for (p, e) in table.partitions.iter().zip(parts) {
        assert_eq!(p.start, e["start"].as_u64().unwrap() * 4096);
        assert_eq!(p.len, e["size"].as_u64().unwrap() * 4096);
        assert_eq!(p.name, e["name"].as_str().unwrap());
    }
}

/// Random damage to sfdisk/sgdisk-made tables (MBR with logicals, GPT): errors or tables,
/// never a panic; whatever is returned lies inside the disk.
#[test]
fn disk_partition_damaged_tables_never_panic() {
    if !require("sgdisk") || !require("sfdisk") {
        return;
    }
    let dir = tmpdir();
    let gpt = dir.path().join("g.raw");
    std::fs::File::create(&gpt)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+1M", "-n", "2:0:+2M", "-c", "2:name"])
        .arg(&gpt));
    let mbr = dir.path().join("m.raw");
    std::fs::File::create(&mbr)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&mbr)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                b"label: dos\nsize=1M,type=7\nsize=5M,type=5\nsize=1M,type=83\nsize=1M,type=7\n",
            )
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    let mut rng = Rng::new(77);
    for base in [std::fs::read(&gpt).unwrap(), std::fs::read(&mbr).unwrap()] {
        // Where the tables are: the first 34 sectors, the EBRs, the last 33 sectors.
        let hot: Vec<std::ops::Range<usize>> = vec![
            0..34 * 512,
            (base.len() - 33 * 512)..base.len(),
            (2048 + 2048) * 512..(2048 + 2048 + 4096) * 512,
        ];
        let len = base.len() as u64;
        let mut disk = MemStorage::from_vec(base);
        for i in 0..2000 {
            // Damage in place, remembering what to put back.
            let mut undo: Vec<(usize, u8)> = Vec::new();
            let d = disk.bytes_mut();
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                let r = &hot[rng.below(hot.len() as u64) as usize];
                let at = r.start + rng.below((r.end - r.start) as u64) as usize;
                undo.push((at, d[at]));
                d[at] = rng.next() as u8;
            }
            // Sometimes make the damaged GPT header checksum-valid again.
            if i % 3 == 0 && &d[512..520] == b"EFI PART" {
                let hs = u32::from_le_bytes(d[524..528].try_into().unwrap()) as usize;
                if (92..=512).contains(&hs) {
                    undo.extend((528..532).zip(d[528..532].iter().copied()));
                    d[528..532].fill(0);
                    let c = crc32(&d[512..512 + hs]);
                    d[528..532].copy_from_slice(&c.to_le_bytes());
                }
            }
            if let Ok(t) = read_partition_table(&disk) {
                for p in &t.partitions {
                    assert!(p.start + p.len <= len, "{p:?}");
                }
            }
            let _ = find_volumes(&disk);
            for (at, b) in undo.into_iter().rev() {
                disk.bytes_mut()[at] = b;
            }
        }
    }
}
