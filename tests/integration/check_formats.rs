//! `diskconv check` on VMDK, VHD and VHDX.
//!
//! Clean images made by qemu-img, by our own writers and by VMware, Hyper-V, Windows and
//! VirtualBox (the shared corpus) must check clean (exit 0), and `qemu-img check` must agree
//! where it supports the format (vmdk, vhdx). Then copies are damaged by patching bytes at
//! offsets computed from the parsed structures; each damage must give its finding (kind,
//! structure, offset), the exit code, and a message naming the structure and offset; where
//! qemu-img detects the same damage, its class must agree. Finally seeded random byte flips over
//! small images must never make the check panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::check::{CheckOptions, ProblemKind, check_file};
use diskconv::formats::vhdx::region;
use diskconv::formats::vmdk::sparse::SparseHeader;

use crate::util::{self, Rng, corpus, diskconv, make_raw, require, tmpdir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `diskconv check --json`: exit code and report.
fn ours(path: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = diskconv()
        .arg("check")
        .args(extra)
        .arg("--json")
        .arg(path)
        .output()
        .unwrap();
    let code = out.status.code().expect("exit code");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "diskconv check {} (exit {code}) printed no JSON ({e}): {} {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// `qemu-img check` exit code (0 clean, 2 corrupt, 3 leaks, 1 could not check).
fn qemu_check(path: &Path, fmt: &str) -> i32 {
    qemu_check_out(path, fmt).0
}

/// `qemu-img check`: exit code and everything it printed.
fn qemu_check_out(path: &Path, fmt: &str) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", fmt])
        .arg(path)
        .output()
        .expect("qemu-img check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), text)
}

/// qemu-img finds a VMDK grain past the end of the file too. It prints the error and then
/// gives up ("Check failed", exit 1) instead of finishing with exit 2.
fn assert_qemu_sees_vmdk_eof(path: &Path) {
    let (code, text) = qemu_check_out(path, "vmdk");
    assert!(
        code != 0 && text.contains("points after EOF"),
        "qemu-img check {} (exit {code}): {text}",
        path.display()
    );
}

/// The problems of `kind` in a JSON report.
fn problems<'a>(v: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    v["problems"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["kind"] == kind).collect())
        .unwrap_or_default()
}

/// Asserts a finding of `kind` about `structure` at `offset` whose message contains `needle`.
fn assert_finding(v: &serde_json::Value, kind: &str, structure: &str, offset: u64, needle: &str) {
    let found = problems(v, kind).into_iter().any(|p| {
        p["structure"] == structure
            && p["offset"].as_u64() == Some(offset)
            && p["message"].as_str().is_some_and(|m| m.contains(needle))
    });
    assert!(
        found,
        "no {kind} about the {structure} at {offset:#x} containing {needle:?}: {v:#}"
    );
}

/// Our check is clean (exit 0, no corruption, leak or check error) and qemu-img agrees when
/// it checks `fmt`.
fn assert_clean(path: &Path, qemu_fmt: Option<&str>) -> serde_json::Value {
    let (code, v) = ours(path, &[]);
    assert_eq!(code, 0, "{}: {v:#}", path.display());
    for k in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(v[k], 0, "{}: {k}: {v:#}", path.display());
    }
    if let Some(f) = qemu_fmt {
        assert_eq!(qemu_check(path, f), 0, "qemu-img check {}", path.display());
    }
    v
}

/// An 8 MiB raw disk with data, zeros and holes.
fn raw(dir: &Path) -> PathBuf {
    let p = dir.join("src.raw");
    make_raw(&p, 8 << 20, 7);
    p
}

fn qemu_convert(src: &Path, fmt: &str, opts: &str, dst: &Path) {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(src), s(dst)]);
    util::qemu_img(&args);
}

fn our_convert(src: &Path, fmt: &str, opts: &str, dst: &Path) {
    let mut c = diskconv();
    c.args(["convert", "-O", fmt]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    util::run(c.arg(src).arg(dst));
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn copy(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    to
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn qemu_made_images_check_clean() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let src = raw(dir.path());
    for (fmt, opts, checks) in [
        ("vmdk", "subformat=monolithicSparse", true),
        ("vmdk", "subformat=streamOptimized", true),
        ("vmdk", "subformat=twoGbMaxExtentSparse", true),
        ("vmdk", "subformat=monolithicFlat", true),
        ("vpc", "subformat=dynamic", false),
        ("vpc", "subformat=fixed", false),
        ("vhdx", "subformat=dynamic", true),
        ("vhdx", "subformat=dynamic,block_size=1M", true),
        ("vhdx", "subformat=fixed", true),
    ] {
        let dst = dir
            .path()
            .join(format!("{}.{fmt}", opts.replace([',', '='], "_")));
        qemu_convert(&src, fmt, opts, &dst);
        let v = assert_clean(&dst, checks.then_some(fmt));
        assert_eq!(v["format"], fmt, "{opts}");
        if !opts.contains("Flat") && !opts.contains("fixed") {
            assert!(
                v["allocated-clusters"].as_u64().unwrap() > 0,
                "{opts}: {v:#}"
            );
        }
    }
}

#[test]
fn our_writers_check_clean() {
    let dir = tmpdir();
    let src = raw(dir.path());
    for (fmt, opts, qemu) in [
        ("vmdk", "", Some("vmdk")),
        ("vmdk", "subformat=monolithicSparse", Some("vmdk")),
        ("vmdk", "subformat=monolithicFlat", Some("vmdk")),
        ("vmdk", "subformat=vmfs", Some("vmdk")),
        ("vpc", "", None),
        ("vpc", "subformat=fixed", None),
        ("vhdx", "block_size=1M", Some("vhdx")),
        ("vhdx", "subformat=fixed,block_size=2M", Some("vhdx")),
        ("vhdx", "logical_sector_size=4096", None),
    ] {
        let dst = dir
            .path()
            .join(format!("out{}.{fmt}", opts.replace([',', '='], "_")));
        our_convert(&src, fmt, opts, &dst);
        let qemu = qemu.filter(|_| require("qemu-img"));
        assert_clean(&dst, qemu);
    }
    // Deep: every compressed grain of our streamOptimized output inflates to one grain.
    let dst = dir.path().join("out.vmdk");
    let (code, v) = ours(&dst, &["--deep"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(v["compressed-clusters"].as_u64().unwrap() > 0, "{v:#}");
}

#[test]
fn corpus_images_check_clean() {
    let qemu = require("qemu-img");
    // (path, format for qemu-img check when it checks it and can open the file read-only)
    let clean = [
        ("images/vmdk-rs/monolithicSparse.vmdk", Some("vmdk")),
        ("images/vmdk-rs/monolithicFlat.vmdk", Some("vmdk")),
        ("images/vmdk-rs/streamOptimized.vmdk", Some("vmdk")),
        (
            "images/vmdk-rs/streamOptimizedWithMarkers.vmdk",
            Some("vmdk"),
        ),
        ("images/vmdk-rs/twoGbMaxExtentSparse.vmdk", Some("vmdk")),
        ("images/vmdk-rs/twoGbMaxExtentFlat.vmdk", Some("vmdk")),
        ("images/vmdk-rs/vmfs_thick.vmdk", Some("vmdk")),
        ("images/qemu_samples/hyperv2012r2-dynamic.vhd", None),
        ("images/qemu_samples/virtualpc-dynamic.vhd", None),
        ("images/dissect_fixed.vhd", None),
        ("images/dfvfs/fat-differential.vhd", None),
        ("images/dissect_hyperv_dynamic.vhdx", Some("vhdx")),
        // A log that needs replay: qemu-img refuses it read-only; ours warns, exit 0.
        ("images/qemu_samples/iotest-dirtylog-10G-4M.vhdx", None),
    ];
    for (rel, fmt) in clean {
        let Some(p) = corpus(rel) else { return };
        let v = assert_clean(&p, fmt.filter(|_| qemu));
        match rel {
            r if r.contains("dirtylog") => {
                assert_eq!(v["warnings"], 1, "{v:#}");
                assert_finding(&v, "warning", "log", 0x100000, "not been replayed");
            }
            r if r.contains("fat-differential") => {
                // The parent is not in the corpus: a warning, this image is intact.
                assert_finding(&v, "warning", "parent", 0x200, "fat-parent.vhd");
            }
            _ => assert_eq!(v["warnings"], 0, "{rel}: {v:#}"),
        }
    }
    // Kept compressed upstream: a Disk2vhd VHD (largest geometry) and a Hyper-V 2012 VHDX.
    if !require("bzip2") {
        return;
    }
    let dir = tmpdir();
    for (rel, name, fmt) in [
        (
            "images/qemu_samples/d2v-zerofilled.vhd.bz2",
            "d2v.vhd",
            None,
        ),
        (
            "images/qemu_samples/iotest-dynamic-1G.vhdx.bz2",
            "hv.vhdx",
            Some("vhdx"),
        ),
    ] {
        let Some(p) = corpus(rel) else { return };
        let out = dir.path().join(name);
        let f = std::fs::File::create(&out).unwrap();
        util::run(Command::new("bzip2").arg("-dc").arg(&p).stdout(f));
        assert_clean(&out, fmt.filter(|_| qemu));
    }
}

#[test]
fn corpus_negative_images() {
    // Hand-edited upstream: footer (and dynamic header) checksums left stale.
    if let Some(p) = corpus("images/dfvfs/image.vhd") {
        let (code, v) = ours(&p, &[]);
        assert_eq!(code, 2, "{v:#}");
        let len = std::fs::metadata(&p).unwrap().len();
        assert_finding(&v, "corruption", "footer", len - 512, "checksum");
    }
    if let Some(p) = corpus("images/dfvfs/image-differential.vhd") {
        let (code, v) = ours(&p, &[]);
        assert_eq!(code, 2, "{v:#}");
        assert_finding(&v, "corruption", "dynamic header", 0x200, "checksum");
    }
    // The ESXi snapshot whose delta extent is not in the corpus.
    if let Some(p) = corpus("images/vmdk-rs/vmfs_thick-000001.vmdk") {
        let (code, v) = ours(&p, &[]);
        assert_eq!(code, 2, "{v:#}");
        assert_finding(
            &v,
            "corruption",
            "descriptor",
            0,
            "vmfs_thick-000001-delta.vmdk",
        );
    }
}

/// qemu-made monolithicSparse (with a redundant directory) and its parsed layout.
struct Sparse {
    path: PathBuf,
    bytes: Vec<u8>,
    h: SparseHeader,
}

impl Sparse {
    fn new(dir: &Path) -> Sparse {
        let src = raw(dir);
        let path = dir.join("base.vmdk");
        qemu_convert(&src, "vmdk", "subformat=monolithicSparse", &path);
        let bytes = std::fs::read(&path).unwrap();
        let h = SparseHeader::parse(&bytes[..512], 0).unwrap();
        assert!(h.rgd_offset != 0, "qemu writes a redundant directory");
        Sparse { path, bytes, h }
    }

    /// Byte offset of primary (or redundant) grain table 0.
    fn gt(&self, redundant: bool) -> u64 {
        let dir = if redundant {
            self.h.rgd_offset
        } else {
            self.h.gd_offset
        };
        u64::from(le32(&self.bytes, dir as usize * 512)) * 512
    }

    /// Indexes of the allocated entries of grain table 0.
    fn allocated(&self) -> Vec<u64> {
        let gt = self.gt(false) as usize;
        (0..512)
            .filter(|&k| le32(&self.bytes, gt + 4 * k) > 1)
            .map(|k| k as u64)
            .collect()
    }
}

#[test]
fn vmdk_sparse_damage() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let base = Sparse::new(dir.path());
    let gt = base.gt(false);
    let rgt = base.gt(true);
    let alloc = base.allocated();
    assert!(alloc.len() >= 2);
    let (k1, k2) = (alloc[0], alloc[1]);
    let len = base.bytes.len() as u64;

    // A grain table entry pointing past the end of the file (both tables, as a writer would).
    let p = copy(&base.path, dir.path(), "past.vmdk");
    for t in [gt, rgt] {
        patch(&p, t + 4 * k1, &0x00ff_0000u32.to_le_bytes());
    }
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(
        &v,
        "corruption",
        "grain table",
        gt + 4 * k1,
        "past the end of the file",
    );
    assert_qemu_sees_vmdk_eof(&p);

    // Two entries pointing at the same grain.
    let p = copy(&base.path, dir.path(), "twice.vmdk");
    let e1 = le32(&base.bytes, (gt + 4 * k1) as usize);
    for t in [gt, rgt] {
        patch(&p, t + 4 * k2, &e1.to_le_bytes());
    }
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(
        &v,
        "corruption",
        "grain table",
        u64::from(e1) * 512,
        "same data",
    );
    // The grain k2 no longer uses is a leak too.
    assert!(v["leaks"].as_u64().unwrap() >= 1, "{v:#}");

    // The redundant table differs from the primary.
    let p = copy(&base.path, dir.path(), "rgt.vmdk");
    patch(&p, rgt + 4 * k1, &(e1 + 8).to_le_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "grain table", gt, "redundant copy");
    let p_ = &problems(&v, "corruption")[0];
    assert_eq!(p_["found"], format!("{e1:#x}"), "{v:#}");

    // The redundant directory unused (all zero): a warning, the primary is read.
    let p = copy(&base.path, dir.path(), "nordg.vmdk");
    patch(&p, base.h.rgd_offset * 512, &[0u8; 4]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_finding(
        &v,
        "warning",
        "redundant grain directory",
        base.h.rgd_offset * 512,
        "primary",
    );

    // A grain recorded only in the redundant table: no reader sees it.
    let p = copy(&base.path, dir.path(), "onlyr.vmdk");
    patch(&p, gt, &[0u8; 2048]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(
        &v,
        "corruption",
        "redundant grain directory",
        rgt,
        "not read",
    );

    // Truncated in the middle of the grains.
    let p = copy(&base.path, dir.path(), "cut.vmdk");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 3 * 65536 - 100).unwrap();
    drop(f);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert!(
        problems(&v, "corruption")
            .iter()
            .all(|p| p["structure"] == "grain table"
                && p["message"].as_str().unwrap().contains("past the end")),
        "{v:#}"
    );
    assert_qemu_sees_vmdk_eof(&p);

    // Text output names the file, structure and offset.
    let out = diskconv().args(["check", s(&p)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ERROR grain table 0 (at {gt:#x}) entry"))
            && text.contains("errors were found on the image"),
        "{text}"
    );
}

/// Our streamOptimized (VMware layout: directory at the end, footer, end-of-stream marker).
fn stream(dir: &Path) -> (PathBuf, Vec<u8>) {
    let src = raw(dir);
    let p = dir.join("stream.vmdk");
    our_convert(&src, "vmdk", "", &p);
    let b = std::fs::read(&p).unwrap();
    let h = SparseHeader::parse(&b[..512], 0).unwrap();
    assert_eq!(h.gd_offset, u64::MAX, "directory at the end");
    (p, b)
}

#[test]
fn vmdk_stream_damage() {
    let dir = tmpdir();
    let (base, bytes) = stream(dir.path());
    let len = bytes.len() as u64;

    // No end-of-stream marker.
    let p = copy(&base, dir.path(), "noeos.vmdk");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 512)
        .unwrap();
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(
        &v,
        "corruption",
        "end-of-stream marker",
        len - 512,
        "without an end-of-stream",
    );

    // No footer either: the directory is only found by the marker walk.
    let p = copy(&base, dir.path(), "nofooter.vmdk");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 1536)
        .unwrap();
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "footer", len - 3072, "no footer");
    // The grains were still checked through the walk's directory.
    assert!(v["allocated-clusters"].as_u64().unwrap() > 0, "{v:#}");

    // The footer's capacity differs from the header's.
    let p = copy(&base, dir.path(), "footer.vmdk");
    let footer = len - 1024;
    patch(&p, footer + 12, &(16384u64 * 2).to_le_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "footer", footer, "capacity");

    // A grain marker whose LBA is not its grain's. The first grain starts at overHead.
    let h = SparseHeader::parse(&bytes[..512], 0).unwrap();
    let first = h.overhead * 512;
    let lba = le64(&bytes, first as usize);
    let p = copy(&base, dir.path(), "lba.vmdk");
    patch(&p, first, &(lba + h.grain_size * 3).to_le_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "grain marker", first, "another place");

    // Damaged compressed data: only --deep inflates and sees it.
    let p = copy(&base, dir.path(), "deflate.vmdk");
    patch(&p, first + 12 + 8, &[0xff; 24]);
    let (code, _) = ours(&p, &[]);
    assert_eq!(code, 0);
    let (code, v) = ours(&p, &["--deep"]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "compressed grain", first, "");
}

/// qemu-made dynamic VHD and its layout: (path, bytes, BAT offset).
fn vhd(dir: &Path) -> (PathBuf, Vec<u8>, u64) {
    let src = raw(dir);
    let p = dir.join("base.vhd");
    qemu_convert(&src, "vpc", "subformat=dynamic", &p);
    let b = std::fs::read(&p).unwrap();
    let hoff = u64::from(be32(&b, b.len() - 512 + 20)); // low half of the data offset
    let bat = u64::from(be32(&b, hoff as usize + 20));
    (p, b, bat)
}

#[test]
fn vhd_damage() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (base, bytes, bat) = vhd(dir.path());
    let len = bytes.len() as u64;
    let entries: Vec<u32> = (0..4).map(|i| be32(&bytes, bat as usize + 4 * i)).collect();
    assert!(
        entries[0] != u32::MAX && entries[2] != u32::MAX,
        "{entries:x?}"
    );

    // A flipped checksum byte in the footer.
    let p = copy(&base, dir.path(), "sum.vhd");
    patch(&p, len - 512 + 67, &[bytes[bytes.len() - 512 + 67] ^ 0x40]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "footer", len - 512, "checksum");
    // ... and the copy at offset 0 now differs from it only there: no other corruption.
    assert_eq!(v["corruptions"], 1, "{v:#}");

    // In the dynamic header.
    let p = copy(&base, dir.path(), "hsum.vhd");
    patch(&p, 512 + 39, &[bytes[512 + 39] ^ 1]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "dynamic header", 512, "checksum");

    // A BAT entry past the end of the file.
    let p = copy(&base, dir.path(), "past.vhd");
    patch(&p, bat, &0x00ff_0000u32.to_be_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "BAT", bat, "past the data of the file");

    // Two entries at one block (and the other block leaked).
    let p = copy(&base, dir.path(), "twice.vhd");
    patch(&p, bat + 8, &entries[0].to_be_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "BAT", bat + 8, "same block");
    assert!(v["leaks"].as_u64().unwrap() >= 1, "{v:#}");

    // A block no entry uses: a leak only (exit 3).
    let p = copy(&base, dir.path(), "leak.vhd");
    patch(&p, bat + 8, &u32::MAX.to_be_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 3, "{v:#}");
    assert_finding(
        &v,
        "leak",
        "data",
        u64::from(entries[2]) * 512,
        "used by no block",
    );

    // The footer at the end is gone: the copy at 0 is used, the loss reported.
    let p = copy(&base, dir.path(), "nofooter.vhd");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 512)
        .unwrap();
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "footer", len - 1024, "damaged or missing");

    // A fixed disk cut short.
    let p = dir.path().join("fixed.vhd");
    qemu_convert(&dir.path().join("src.raw"), "vpc", "subformat=fixed", &p);
    let flen = std::fs::metadata(&p).unwrap().len();
    let tail = std::fs::read(&p).unwrap()[flen as usize - 512..].to_vec();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(flen - 4096).unwrap();
    drop(f);
    patch(&p, flen - 4096 - 512, &tail);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(
        &v,
        "corruption",
        "fixed disk",
        flen - 4096 - 512,
        "truncated",
    );

    // A geometry that is not the specification's for the size: a warning only.
    let p = copy(&base, dir.path(), "chs.vhd");
    let mut footer = bytes[bytes.len() - 512..].to_vec();
    // Heads and sectors per track swapped: the same size, not the specification's geometry.
    footer.swap(58, 59);
    footer[64..68].fill(0);
    let sum = !footer
        .iter()
        .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&sum.to_be_bytes());
    patch(&p, len - 512, &footer);
    patch(&p, 0, &footer);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_finding(&v, "warning", "footer", len - 512, "geometry");
}

/// qemu-made dynamic VHDX with 1 MiB blocks and its BAT offset.
fn vhdx(dir: &Path) -> (PathBuf, Vec<u8>, u64) {
    let src = raw(dir);
    let p = dir.join("base.vhdx");
    qemu_convert(&src, "vhdx", "subformat=dynamic,block_size=1M", &p);
    let b = std::fs::read(&p).unwrap();
    let r = region::parse(&b[0x30000..0x40000], 0x30000).unwrap();
    (p, b, r.bat.offset)
}

#[test]
fn vhdx_damage() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (base, bytes, bat) = vhdx(dir.path());
    let len = bytes.len() as u64;
    let e0 = le64(&bytes, bat as usize);
    assert_eq!(e0 & 7, 6, "block 0 present");

    // One header with a bad CRC, the other valid: a warning, exit 0, as qemu-img says.
    let p = copy(&base, dir.path(), "h1.vhdx");
    patch(&p, 0x10000 + 4, &[bytes[0x10004] ^ 0x10]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_finding(&v, "warning", "header", 0x10000, "checksum");
    assert_eq!(qemu_check(&p, "vhdx"), 0, "qemu-img agrees");
    // Both: nothing can be opened.
    patch(&p, 0x20000 + 4, &[bytes[0x20004] ^ 0x10]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "header", 0x20000, "neither header");

    // The second region table damaged.
    let p = copy(&base, dir.path(), "rt.vhdx");
    patch(&p, 0x40000 + 4, &[bytes[0x40004] ^ 1]);
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "region table", 0x40000, "region table 2");

    // A BAT entry past the end of the file.
    let p = copy(&base, dir.path(), "past.vhdx");
    let far = (len + (64 << 20)) | 6;
    patch(&p, bat, &far.to_le_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "BAT", bat, "outside the file");
    assert_eq!(qemu_check(&p, "vhdx"), 2, "qemu-img agrees");

    // Two entries at one block.
    let p = copy(&base, dir.path(), "twice.vhdx");
    let i = (1..8)
        .find(|&i| le64(&bytes, bat as usize + 8 * i) & 7 == 6)
        .expect("a second present block");
    patch(&p, bat + 8 * i as u64, &e0.to_le_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "BAT", bat + 8 * i as u64, "same block");

    // An invalid payload state.
    let p = copy(&base, dir.path(), "state.vhdx");
    patch(&p, bat, &((e0 & !7) | 5).to_le_bytes());
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_finding(&v, "corruption", "BAT", bat, "invalid payload state");

    // Truncated: the last block is cut.
    let p = copy(&base, dir.path(), "cut.vhdx");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - (512 << 10))
        .unwrap();
    let (code, v) = ours(&p, &[]);
    assert_eq!(code, 2, "{v:#}");
    assert!(
        problems(&v, "corruption")
            .iter()
            .any(|p| p["structure"] == "BAT"
                && p["message"].as_str().unwrap().contains("outside the file")),
        "{v:#}"
    );
    assert_eq!(qemu_check(&p, "vhdx"), 2, "qemu-img agrees");
}

#[test]
fn raw_has_nothing_to_check() {
    let dir = tmpdir();
    let src = raw(dir.path());
    let out = diskconv().args(["check", s(&src)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("raw image") && err.contains("only qcow2, VMDK, VHD, VHDX and VDI"),
        "{err}"
    );
}

/// Seeded byte flips over small images of every format: the check never panics (a panic in
/// the library fails the test; errors and findings are fine).
#[test]
fn random_damage_never_panics() {
    let dir = tmpdir();
    let src = dir.path().join("small.raw");
    make_raw(&src, 1 << 20, 3);
    let mut bases = Vec::new();
    for (fmt, opts) in [
        ("vmdk", ""),
        ("vmdk", "subformat=monolithicSparse"),
        ("vpc", ""),
        ("vhdx", "block_size=1M"),
    ] {
        let p = dir.path().join(format!("b{}.{fmt}", bases.len()));
        our_convert(&src, fmt, opts, &p);
        bases.push(std::fs::read(&p).unwrap());
    }
    let mut rng = Rng::new(0x5eed_c4ec);
    let target = dir.path().join("damaged");
    let opts = CheckOptions {
        deep: true,
        ..CheckOptions::default()
    };
    let mut outcomes = [0u32; 3];
    for round in 0..240 {
        let base = &bases[round % bases.len()];
        let mut b = base.clone();
        let len = b.len() as u64;
        for _ in 0..1 + rng.below(8) {
            // Mostly metadata: the first 1.1 MiB (VHDX headers, log, regions) and the tail.
            let at = match rng.below(10) {
                0..=6 => rng.below(len.min(0x120000)),
                7 => len - 1 - rng.below(len.min(2048)),
                _ => rng.below(len),
            } as usize;
            b[at] ^= 1 << rng.below(8);
        }
        if rng.below(8) == 0 {
            b.truncate(rng.below(len) as usize);
        }
        std::fs::write(&target, &b).unwrap();
        match check_file(&target, &opts) {
            Ok(r) if r.is_clean() => outcomes[0] += 1,
            Ok(r) => {
                // Every finding names its structure.
                assert!(
                    r.problems.iter().all(|p| p.kind == ProblemKind::Leak
                        || p.structure.is_some()
                        || p.message.contains("at")),
                    "{r}"
                );
                outcomes[1] += 1
            }
            Err(_) => outcomes[2] += 1,
        }
    }
    // The flips must have been seen, some of them at least.
    assert!(outcomes[1] > 20, "{outcomes:?}");
}
