//! `qcow2::check` against `qemu-img check` as the oracle.
//!
//! qemu-img makes the images (every layout option that changes what the check must count);
//! both checks must find them clean and agree on the statistics. Then copies are corrupted by
//! patching bytes at offsets computed from the header, and both must report the same class of
//! problem (qemu-img's exit code: 0 clean, 2 corruptions, 3 leaks only).

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::formats::qcow2::{CheckReport, Qcow2Header, check, refcount};
use diskconv::storage::FileStorage;

use crate::util;

/// Our check of a file.
fn ours(path: &Path) -> CheckReport {
    let s = FileStorage::open_read_only(path).unwrap();
    check(&s).unwrap_or_else(|e| panic!("check {}: {}", path.display(), e.chain()))
}

/// `qemu-img check --output=json`: exit code and the parsed report.
fn qemu_check(path: &Path) -> (i32, serde_json::Value) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img check");
    let code = out.status.code().expect("exit code");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "qemu-img check {} (exit {code}) printed no JSON ({e}): {} {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

fn field(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Both checks find `path` clean and agree on the statistics qemu reports.
fn assert_both_clean(path: &Path) -> CheckReport {
    let r = ours(path);
    assert!(r.is_clean(), "ours on {}:\n{r}", path.display());
    let (code, q) = qemu_check(path);
    assert_eq!(code, 0, "qemu-img check {}: {q}", path.display());
    assert_same_stats(&r, &q, path);
    // Our JSON uses qemu's field names.
    let ours_json = serde_json::to_value(&r).unwrap();
    for key in ["corruptions", "leaks", "check-errors", "total-clusters"] {
        assert_eq!(field(&ours_json, key), field(&q, key), "{key}");
    }
    r
}

fn assert_same_stats(r: &CheckReport, q: &serde_json::Value, path: &Path) {
    let p = path.display();
    assert_eq!(r.total_clusters, field(q, "total-clusters"), "{p}: total");
    assert_eq!(
        r.allocated_clusters,
        field(q, "allocated-clusters"),
        "{p}: allocated"
    );
    assert_eq!(
        r.compressed_clusters,
        field(q, "compressed-clusters"),
        "{p}: compressed"
    );
    assert_eq!(
        r.fragmented_clusters,
        field(q, "fragmented-clusters"),
        "{p}: fragmented"
    );
    assert_eq!(
        r.image_end_offset,
        field(q, "image-end-offset"),
        "{p}: image end"
    );
}

/// What qemu-img's exit code says, from our report.
fn our_class(r: &CheckReport) -> i32 {
    if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn create(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
    let img = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p(&img), size]);
    util::qemu_img(&args);
    img
}

fn io(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(p(img));
    util::qemu_io(&args);
}

/// A compressed image of `size` bytes of mixed data made with `qemu-img convert -c`.
fn compressed(dir: &Path, name: &str, opts: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    util::make_raw(&raw, 4 << 20, 7);
    let img = dir.join(name);
    util::qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        opts,
        p(&raw),
        p(&img),
    ]);
    img
}

// ---- patching helpers: offsets come from the header ----

fn header(path: &Path) -> Qcow2Header {
    let bytes = std::fs::read(path).unwrap();
    let head = &bytes[..bytes.len().min(2 << 20)];
    Qcow2Header::parse(head, bytes.len() as u64).unwrap()
}

fn read_u64(path: &Path, off: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

fn write_bytes(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn write_u64(path: &Path, off: u64, v: u64) {
    write_bytes(path, off, &v.to_be_bytes());
}

/// Sets the stored refcount of host cluster `cluster` (its refcount block must exist).
fn set_refcount(path: &Path, cluster: u64, value: u64) {
    use std::os::unix::fs::FileExt;
    let h = header(path);
    let per = refcount::entries_per_block(h.cluster_bits, h.refcount_order);
    let rt_entry = h.refcount_table_offset + cluster / per * 8;
    let block = read_u64(path, rt_entry) & !0x1ff;
    assert_ne!(block, 0, "no refcount block for cluster {cluster}");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = vec![0u8; h.cluster_size() as usize];
    f.read_exact_at(&mut b, block).unwrap();
    refcount::set(&mut b, cluster % per, h.refcount_order, value);
    f.write_all_at(&b, block).unwrap();
}

/// Host offset of the first L2 table and of its first entry.
fn first_l2(path: &Path) -> (u64, u64) {
    let h = header(path);
    let l2 = read_u64(path, h.l1_table_offset) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0);
    (l2, read_u64(path, l2))
}

/// A v3 image with 64 KiB clusters and data in its first clusters, as a base for corruption.
fn victim(dir: &Path, name: &str) -> PathBuf {
    let img = create(dir, name, "", "16M");
    io(&img, &["write -P 0x11 0 192k", "write -P 0x22 1M 64k"]);
    img
}

/// Asserts that both checks put the image in the same class, and returns our report.
fn assert_same_class(path: &Path, want: i32) -> CheckReport {
    let r = ours(path);
    let (code, q) = qemu_check(path);
    assert_eq!(code, want, "qemu-img on {}: {q}", path.display());
    assert_eq!(
        our_class(&r),
        want,
        "ours on {}:\n{r}\nqemu: {q}",
        path.display()
    );
    assert_eq!(
        r.corruptions > 0,
        field(&q, "corruptions") > 0,
        "corruptions: ours\n{r}\nqemu {q}"
    );
    assert_eq!(
        r.leaks > 0,
        field(&q, "leaks") > 0,
        "leaks: ours\n{r}\nqemu {q}"
    );
    r
}

// ---- clean images made by qemu-img ----

#[test]
fn qcow2_check_clean_layouts() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let d = dir.path();

    let v2 = create(d, "v2.qcow2", "compat=0.10", "8M");
    io(&v2, &["write -P 1 0 100k", "write -P 2 5M 64k"]);
    assert_both_clean(&v2);

    let small = create(d, "c512.qcow2", "cluster_size=512", "4M");
    io(
        &small,
        &["write -P 1 0 9k", "write -P 2 3M 1k", "write -z 1M 4k"],
    );
    let r = assert_both_clean(&small);
    assert!(r.allocated_clusters >= 20, "{r}");

    let big = create(d, "c2m.qcow2", "cluster_size=2M", "64M");
    io(&big, &["write -P 3 0 1M", "write -P 4 40M 3M"]);
    assert_both_clean(&big);

    let zero = create(d, "zero.qcow2", "", "8M");
    io(
        &zero,
        &["write -P 1 0 256k", "write -z 64k 64k", "discard 128k 64k"],
    );
    assert_both_clean(&zero);

    let pre = create(d, "prealloc.qcow2", "preallocation=metadata", "32M");
    let r = assert_both_clean(&pre);
    assert_eq!(r.allocated_clusters, 512, "{r}");

    let base = create(d, "base.qcow2", "", "8M");
    io(&base, &["write -P 5 0 1M"]);
    let top = d.join("top.qcow2");
    util::qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        p(&top),
    ]);
    io(&top, &["write -P 6 64k 64k"]);
    let r = assert_both_clean(&top);
    assert_eq!(r.allocated_clusters, 1, "{r}");
}

#[test]
fn qcow2_check_clean_compressed() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let z = compressed(dir.path(), "zlib.qcow2", "compression_type=zlib");
    let r = assert_both_clean(&z);
    assert!(r.compressed_clusters > 10, "{r}");
    let zs = compressed(dir.path(), "zstd.qcow2", "compression_type=zstd");
    let r = assert_both_clean(&zs);
    assert!(r.compressed_clusters > 10, "{r}");
    // Small clusters: several compressed clusters share a host cluster, and compressed data
    // crosses host cluster boundaries.
    let zc = compressed(dir.path(), "z512.qcow2", "cluster_size=512");
    let r = assert_both_clean(&zc);
    assert!(r.compressed_clusters > 100, "{r}");
    // Overwriting compressed clusters in place leaves a mix of both kinds.
    util::qemu_io(&["-f", "qcow2", "-c", "write -P 9 64k 128k", p(&z)]);
    assert_both_clean(&z);
}

#[test]
fn qcow2_check_clean_extended_l2_and_refcount_widths() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let d = dir.path();
    let ext = create(d, "ext.qcow2", "extended_l2=on", "8M");
    io(
        &ext,
        &[
            "write -P 1 0 4k",
            "write -P 2 70k 2k",
            "write -z 200k 8k",
            "write -P 3 1M 64k",
        ],
    );
    assert_both_clean(&ext);
    let ext_small = create(d, "ext16k.qcow2", "extended_l2=on,cluster_size=16k", "8M");
    io(&ext_small, &["write -P 1 512 1k", "write -P 2 3M 40k"]);
    assert_both_clean(&ext_small);
    for bits in [1, 2, 4, 8, 32, 64] {
        let img = create(
            d,
            &format!("rc{bits}.qcow2"),
            &format!("refcount_bits={bits}"),
            "8M",
        );
        io(&img, &["write -P 1 0 128k", "write -P 2 4M 64k"]);
        assert_both_clean(&img);
    }
}

#[test]
fn qcow2_check_clean_snapshots_and_bitmaps() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let d = dir.path();
    let snap = create(d, "snap.qcow2", "", "8M");
    io(&snap, &["write -P 1 0 256k"]);
    util::qemu_img(&["snapshot", "-c", "first", p(&snap)]);
    io(&snap, &["write -P 2 64k 64k", "write -P 3 2M 64k"]);
    util::qemu_img(&["snapshot", "-c", "second", p(&snap)]);
    io(&snap, &["write -P 4 0 64k"]);
    util::qemu_img(&["snapshot", "-c", "third", p(&snap)]);
    util::qemu_img(&["snapshot", "-d", "second", p(&snap)]);
    assert_both_clean(&snap);

    let v2snap = create(d, "v2snap.qcow2", "compat=0.10,cluster_size=4k", "4M");
    io(&v2snap, &["write -P 1 0 20k"]);
    util::qemu_img(&["snapshot", "-c", "s", p(&v2snap)]);
    io(&v2snap, &["write -P 2 4k 4k"]);
    assert_both_clean(&v2snap);

    let bm = create(d, "bitmaps.qcow2", "", "16M");
    util::qemu_img(&["bitmap", "--add", p(&bm), "b0"]);
    io(&bm, &["write -P 1 0 1M", "write -P 2 9M 64k"]);
    util::qemu_img(&["bitmap", "--add", "-g", "512", p(&bm), "fine"]);
    io(&bm, &["write -P 3 4M 64k"]);
    let info = util::qemu_info(&bm);
    assert!(info.to_string().contains("\"fine\""), "{info}");
    let r = assert_both_clean(&bm);
    assert!(r.notes.is_empty(), "{r}");
    // With autoclear bit 0 clear the bitmaps are stale and both tools count every bitmap
    // cluster (directory, tables, data) as leaked: the counts say we found all of them.
    let stale = d.join("stale.qcow2");
    std::fs::copy(&bm, &stale).unwrap();
    let h = header(&stale);
    write_u64(&stale, 88, h.autoclear_features & !1);
    let r = assert_same_class(&stale, 3);
    let (_, q) = qemu_check(&stale);
    assert_eq!(r.leaks, field(&q, "leaks"), "{r}\n{q}");
    // Directory, two tables and at least one data cluster of each bitmap.
    assert!(r.leaks >= 5, "{r}");
    assert!(r.notes.iter().any(|n| n.contains("autoclear")), "{r}");
}

#[test]
fn qcow2_check_corpus_images() {
    if !util::require("qemu-img") {
        return;
    }
    for rel in [
        "images/dfvfs/image-v2.qcow2",
        "images/dfvfs/windows_volume.qcow2",
        "images/dissect_qcow2/backing-chain-1.qcow2",
        "images/dissect_qcow2/backing-chain-2.qcow2",
        "images/dissect_qcow2/backing-chain-3.qcow2",
        "images/dissect_qcow2/basic.qcow2",
        "images/dissect_qcow2/basic-zstd.qcow2",
        "images/dissect_qcow2/snapshot.qcow2",
        "images/virtnbdbackup_vm5-sda_bitmaps.qcow2",
    ] {
        let Some(path) = util::corpus(rel) else {
            continue;
        };
        assert_both_clean(&path);
    }
    // qemu-img cannot open it without its data file (and resolves that against the current
    // folder); the structure needs no data file. MANIFEST: 4080/8192 allocated.
    if let Some(path) = util::corpus("images/dissect_qcow2/data-file.qcow2") {
        let r = ours(&path);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.allocated_clusters, 4080, "{r}");
        assert_eq!(r.total_clusters, 8192);
    }
}

// ---- corrupted copies ----

#[test]
fn qcow2_check_leak_appended_cluster() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "leak.qcow2");
    let h = header(&img);
    let cs = h.cluster_size();
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(len % cs, 0);
    // A cluster at the end of the file that nothing references, with refcount 1.
    write_bytes(&img, len, &vec![0xAB; cs as usize]);
    set_refcount(&img, len / cs, 1);
    let r = assert_same_class(&img, 3);
    assert_eq!(r.leaks, 1, "{r}");
    assert!(
        r.to_string().contains(&format!(
            "Leaked cluster {} refcount=1 reference=0",
            len / cs
        )),
        "{r}"
    );
    let (_, q) = qemu_check(&img);
    assert_same_stats(&r, &q, &img);
}

#[test]
fn qcow2_check_refcount_too_high_is_a_leak() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "high.qcow2");
    let (_, e) = first_l2(&img);
    let data = e & 0x00ff_ffff_ffff_fe00;
    let cs = header(&img).cluster_size();
    set_refcount(&img, data / cs, 3);
    let r = assert_same_class(&img, 2);
    // qemu: refcount=3 reference=1 is a leak; the copied flag no longer matches: corruption.
    assert_eq!(r.leaks, 1, "{r}");
    let (_, q) = qemu_check(&img);
    assert_eq!(r.corruptions, field(&q, "corruptions"), "{r}\n{q}");
    assert!(r.to_string().contains("OFLAG_COPIED data cluster"), "{r}");
}

#[test]
fn qcow2_check_zeroed_l2_refcount() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "zero-rc.qcow2");
    let (l2, _) = first_l2(&img);
    let cs = header(&img).cluster_size();
    set_refcount(&img, l2 / cs, 0);
    let r = assert_same_class(&img, 2);
    let (_, q) = qemu_check(&img);
    // "ERROR cluster N refcount=0 reference=1" and "OFLAG_COPIED L2 cluster ... refcount=0".
    assert_eq!(r.corruptions, 2, "{r}");
    assert_eq!(r.corruptions, field(&q, "corruptions"), "{q}");
    let text = r.to_string();
    assert!(
        text.contains(&format!("ERROR cluster {} refcount=0 reference=1", l2 / cs)),
        "{text}"
    );
    assert!(text.contains("OFLAG_COPIED L2 cluster"), "{text}");
}

#[test]
fn qcow2_check_l2_entry_past_eof() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "eof.qcow2");
    let (l2, e) = first_l2(&img);
    // Entry 1 now points 1 TiB into a file of a few hundred KiB.
    write_u64(&img, l2 + 8, (1 << 40) | (e & (1 << 63)));
    let r = assert_same_class(&img, 2);
    let (_, q) = qemu_check(&img);
    assert_eq!(r.corruptions, field(&q, "corruptions"), "{r}\n{q}");
    assert_eq!(r.leaks, field(&q, "leaks"), "{r}\n{q}");
    assert!(r.to_string().contains("past the end of the file"), "{r}");
    assert!(r.problems.iter().any(|p| p.offset == l2 + 8), "{r}");
}

#[test]
fn qcow2_check_l2_entry_into_l1_table() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "overlap.qcow2");
    let h = header(&img);
    let (l2, _) = first_l2(&img);
    write_u64(&img, l2 + 8, h.l1_table_offset | (1 << 63));
    let r = assert_same_class(&img, 2);
    let text = r.to_string();
    assert!(
        text.contains("used by both active L1 table and the data cluster of L2 table"),
        "{text}"
    );
    let cl = h.l1_table_offset / h.cluster_size();
    assert!(
        text.contains(&format!("cluster {cl} refcount=1 reference=2")),
        "{text}"
    );
}

#[test]
fn qcow2_check_reserved_bits() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "reserved.qcow2");
    let (l2, e) = first_l2(&img);
    write_u64(&img, l2, e | 0x0100_0000_0000_0000);
    let r = assert_same_class(&img, 2);
    assert!(r.to_string().contains("reserved bits set"), "{r}");
    let (_, q) = qemu_check(&img);
    assert_eq!(r.corruptions, field(&q, "corruptions"), "{r}\n{q}");
}

#[test]
fn qcow2_check_snapshot_refcount_dropped() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    let img = victim(dir.path(), "snapdrop.qcow2");
    util::qemu_img(&["snapshot", "-c", "s1", p(&img)]);
    // The first data cluster is now shared by the active table and the snapshot (refcount 2);
    // set it to 1 as if the snapshot's reference had been forgotten.
    let (_, e) = first_l2(&img);
    let data = e & 0x00ff_ffff_ffff_fe00;
    let cs = header(&img).cluster_size();
    set_refcount(&img, data / cs, 1);
    let r = assert_same_class(&img, 2);
    assert!(
        r.to_string()
            .contains(&format!("cluster {} refcount=1 reference=2", data / cs)),
        "{r}"
    );
}
