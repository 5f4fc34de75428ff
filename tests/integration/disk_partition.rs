//! Write transactions over images (`TxDisk`, `ImageTx`, the undo journal and `rollback`),
//! checked with qemu-img; partition tables made by sfdisk/sgdisk read back and compared with
//! what those tools report.

use std::path::{Path, PathBuf};

use diskconv::OpenOptions;
use diskconv::inject::disk::{
    CrashPoint, DiskIo, DiskRead, ImageTx, RollbackOutcome, journal_path, rollback,
};

use crate::util::{
    Rng, assert_qemu_check, make_raw, qemu_compare, qemu_img, require, sha256_file, tmpdir,
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
