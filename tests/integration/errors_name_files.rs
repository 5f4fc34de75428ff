//! Every error names the file it is about: a damaged source names the source (and the file of
//! its chain that failed), never the output; a failing output names the output; `map`,
//! `compare`, `sync`, `verify`, `info`, `check` and `inspect` name their files.
//!
//! Regression for "`diskconv: result.raw: qcow2 L1 table at ...` for a truncated source" and
//! for `map`, `compare` and `sync` naming no file at all. Damaged images are made by qemu-img
//! and qemu-io, then truncated or patched.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::{ConvertOptions, Format, OpenOptions, OutputOptions};

use crate::util::{self, diskconv, qemu_img, qemu_io, tmpdir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs diskconv, expects exit `code`, returns stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = diskconv().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "diskconv {args:?}: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The message's first file is `first` (`diskconv: FIRST: ...`), and it mentions none of
/// `never`.
fn assert_names(stderr: &str, first: &Path, never: &[&Path]) {
    let prefix = format!("diskconv: {}: ", first.display());
    assert!(
        stderr.starts_with(&prefix),
        "expected the message to start with {prefix:?}: {stderr}"
    );
    for n in never {
        assert!(
            !stderr.contains(n.to_str().unwrap()),
            "the message names {} although it is not at fault: {stderr}",
            n.display()
        );
    }
}

/// A 16 MiB qcow2 made by qemu-img with data at 0 and 8 MiB (qemu-io), 64 KiB clusters:
/// header at 0, refcount table, refcount block, L1 at 0x30000, L2 at 0x40000, data from
/// 0x50000.
fn qcow2_with_data(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "16M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 0 2M",
        "-c",
        "write -P 0x22 8M 1M",
        s(&img),
    ]);
    img
}

fn truncate(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Converting a damaged source through the CLI and the library: the error names the source,
/// the output is never mentioned and never created.
fn check_convert_names_source(dir: &Path, bad: &Path, first: &Path) {
    let out = dir.join("result.raw");
    for fmt in ["raw", "qcow2", "vhdx"] {
        let out = dir.join(format!("result.{fmt}"));
        let e = fails(&["convert", "-O", fmt, s(bad), s(&out)], 1);
        assert_names(&e, first, &[&out]);
        assert!(!out.exists());
    }
    // The library: `open` names its readers, the engine names its writer.
    let e = match diskconv::open(bad, &OpenOptions::new()) {
        Err(e) => e,
        Ok(src) => diskconv::convert_file(
            src.as_ref(),
            &out,
            &OutputOptions::new(Format::Qcow2),
            &ConvertOptions::default(),
            None,
        )
        .unwrap_err(),
    };
    let chain = e.chain();
    assert!(
        chain.starts_with(&format!("{}: ", first.display())),
        "{chain}"
    );
    assert!(!chain.contains("result.raw"), "{chain}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("result"))
            .count(),
        0,
        "no temporary output left"
    );
}

#[test]
fn damaged_qcow2_source_is_named_not_the_output() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let good = qcow2_with_data(dir.path(), "good.qcow2");
    // Truncated inside the data clusters (the L2 table survives), then before the L2 table.
    for (name, len) in [
        ("data-cut.qcow2", 0x60000 + 1000),
        ("l2-cut.qcow2", 300_000),
    ] {
        let bad = dir.path().join(name);
        std::fs::copy(&good, &bad).unwrap();
        truncate(&bad, len);
        check_convert_names_source(dir.path(), &bad, &bad);
    }
}

#[test]
fn damaged_vmdk_and_vhd_sources_are_named() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let good = qcow2_with_data(dir.path(), "good.qcow2");

    // monolithicSparse, cut inside the grains.
    let vmdk = dir.path().join("sparse.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        s(&good),
        s(&vmdk),
    ]);
    truncate(&vmdk, 500_000);
    check_convert_names_source(dir.path(), &vmdk, &vmdk);

    // monolithicFlat with a short extent: the descriptor and the extent are both named.
    let flat = dir.path().join("flat.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        s(&good),
        s(&flat),
    ]);
    let extent = dir.path().join("flat-flat.vmdk");
    truncate(&extent, 5_000_000);
    let e = fails(
        &[
            "convert",
            "-O",
            "raw",
            s(&flat),
            s(&dir.path().join("r.raw")),
        ],
        1,
    );
    assert_names(&e, &flat, &[&dir.path().join("r.raw")]);
    assert!(e.contains("flat-flat.vmdk"), "{e}");

    // Dynamic VHD whose first BAT entry points far past the end of the file.
    let vhd = dir.path().join("dyn.vhd");
    qemu_img(&["convert", "-O", "vpc", s(&good), s(&vhd)]);
    let mut b = std::fs::read(&vhd).unwrap();
    let bat = u64::from_be_bytes(b[512 + 16..512 + 24].try_into().unwrap()) as usize;
    b[bat..bat + 4].copy_from_slice(&0x7fff_ff00u32.to_be_bytes());
    std::fs::write(&vhd, &b).unwrap();
    check_convert_names_source(dir.path(), &vhd, &vhd);
}

#[test]
fn a_damaged_backing_file_is_named_with_its_top_image() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let base = qcow2_with_data(dir.path(), "base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    truncate(&base, 300_000);
    let out = dir.path().join("out.raw");
    let e = fails(&["convert", "-O", "raw", s(&top), s(&out)], 1);
    assert_names(&e, &top, &[&out]);
    let base_abs = std::fs::canonicalize(&base).unwrap();
    assert!(
        e.contains(&format!("{}: qcow2 L1 table", base_abs.display())),
        "the backing file that failed is named: {e}"
    );
    // Damage found while opening the chain is named the same way.
    truncate(&base, 100);
    let e = fails(&["info", s(&top)], 1);
    assert_names(&e, &top, &[]);
    assert!(e.contains(base_abs.to_str().unwrap()), "{e}");
}

/// An output that cannot be written (the file size limit, `ulimit -f`, with SIGXFSZ ignored so
/// the write fails with EFBIG): the error names the output, not the source.
#[test]
fn writer_errors_name_the_output() {
    if !util::require("sh") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("source.raw");
    util::make_raw(&src, 8 << 20, 3);
    for fmt in ["raw", "qcow2", "vpc"] {
        let out = dir.path().join(format!("out.{fmt}"));
        let script =
            format!("trap '' XFSZ; ulimit -f 1024; exec \"$0\" convert -O {fmt} \"$1\" \"$2\"");
        let o = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_diskconv"))
            .arg(&src)
            .arg(&out)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{fmt}: {e}");
        assert_names(&e, &out, &[&src]);
        assert!(e.contains("File too large"), "{fmt}: {e}");
        assert!(!out.exists(), "{fmt}: no output under the final name");
    }
}

#[test]
fn map_compare_verify_info_check_inspect_name_their_file() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let good = qcow2_with_data(dir.path(), "good.qcow2");
    let bad = dir.path().join("bad.qcow2");
    std::fs::copy(&good, &bad).unwrap();
    truncate(&bad, 300_000);

    let e = fails(&["map", s(&bad)], 1);
    assert_names(&e, &bad, &[]);
    let e = fails(&["map", "--json", s(&bad)], 1);
    assert_names(&e, &bad, &[]);
    // compare: whichever side is damaged is the one named.
    let e = fails(&["compare", s(&bad), s(&good)], 2);
    assert_names(&e, &bad, &[&good]);
    let e = fails(&["compare", s(&good), s(&bad)], 2);
    assert_names(&e, &bad, &[&good]);
    let e = fails(&["verify", s(&bad), s(&good)], 2);
    assert_names(&e, &bad, &[&good]);
    let e = fails(&["verify", s(&good), s(&bad)], 2);
    assert_names(&e, &bad, &[&good]);

    // A header that cannot be parsed: info, check, inspect, map.
    let short = dir.path().join("short.qcow2");
    std::fs::copy(&good, &short).unwrap();
    truncate(&short, 100);
    for cmd in ["info", "check", "inspect", "map"] {
        let e = fails(&[cmd, s(&short)], 1);
        assert_names(&e, &short, &[]);
    }
}

#[test]
fn sync_names_the_source_the_target_and_the_state_file() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let good = qcow2_with_data(dir.path(), "good.qcow2");
    let bad = dir.path().join("bad.qcow2");
    std::fs::copy(&good, &bad).unwrap();
    truncate(&bad, 300_000);

    // A damaged source on the first pass, and on a later pass.
    let first = dir.path().join("first.raw");
    let e = fails(&["sync", s(&bad), s(&first)], 1);
    assert_names(&e, &bad, &[&first]);
    let src = dir.path().join("src.qcow2");
    std::fs::copy(&good, &src).unwrap();
    let target = dir.path().join("target.raw");
    let o = diskconv()
        .args(["sync", s(&src), s(&target)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    truncate(&src, 300_000);
    let e = fails(&["sync", s(&src), s(&target)], 1);
    assert_names(&e, &src, &[&target]);
    std::fs::copy(&good, &src).unwrap();

    // A damaged state file and fingerprint file are named.
    let state = dir.path().join("target.raw.dcsync");
    let saved = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"garbage").unwrap();
    let e = fails(&["sync", s(&src), s(&target)], 1);
    assert!(e.contains(s(&state)), "{e}");
    std::fs::write(&state, &saved).unwrap();
    let fp = dir.path().join("target.raw.dcsync.fp");
    truncate(&fp, 10);
    let e = fails(&["sync", s(&src), s(&target)], 1);
    assert!(e.contains(s(&fp)), "{e}");

    // A damaged qcow2 target.
    let qt = dir.path().join("target.qcow2");
    let o = diskconv()
        .args(["sync", s(&good), s(&qt)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut b = std::fs::read(&qt).unwrap();
    b[0..4].copy_from_slice(b"XXXX");
    std::fs::write(&qt, &b).unwrap();
    let e = fails(&["sync", s(&good), s(&qt)], 1);
    assert_names(&e, &qt, &[&good]);
}
