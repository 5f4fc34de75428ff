//! In-place updates of VHD and VHDX images (`VhdUpdater`, `VhdxUpdater`).
//!
//! Oracles: a raw model file receiving the same writes, compared with the updated image by
//! `qemu-img compare` (formats vpc / vhdx given explicitly) and by our own reader; `qemu-img
//! check` on VHDX (vpc has no check); `qemu-io` reads after unflushed writes.

use std::path::Path;

use diskconv::storage::FileStorage;
use diskconv::sync::target::open_updater;
use diskconv::testing::{RandomOps, random_operations};
use diskconv::{Format, ImageUpdater, OpenOptions};

use crate::util::{
    assert_qemu_check, corpus, diskconv, make_raw, qemu_compare, qemu_img, qemu_io, require, run,
    sha256_file, sha256_image, tmpdir,
};

const MIB: u64 = 1 << 20;

/// The image's content as raw, made by qemu-img (the model starts from it).
fn model_of(img: &Path, fmt: &str, model: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        model.to_str().unwrap(),
    ]);
}

/// Hundreds of random writes and zeroes (unaligned, spanning blocks, some whole-block and one
/// whole-disk zeroing), applied to the image through the updater and to a raw model; flushes
/// at random; reads back through the updater as it goes. `window` limits the offsets (for
/// huge, empty corpus disks). The shared contract check
/// ([`diskconv::testing::random_operations`]).
fn exercise(up: &mut dyn ImageUpdater, model: &Path, seed: u64, ops: usize, window: u64) {
    let m = FileStorage::open_read_write(model).unwrap();
    let o = RandomOps {
        window,
        // Zeroes up to 3 MiB (whole VHD blocks), aligned 1 MiB multiples (VHDX blocks).
        max_zero: 3 * MIB,
        block: MIB,
        flush_one_in: 10,
        zero_window_once: true,
        ..RandomOps::new(seed, ops, 300_000)
    };
    random_operations(up, &m, &o).unwrap_or_else(|e| panic!("{e}"));
    up.flush().unwrap();
}

/// Updates `img` (qemu format name `fmt`) with random writes, then checks it against the model
/// with qemu-img compare, our reader, and qemu-img check for VHDX.
fn update_and_verify(img: &Path, fmt: &str, seed: u64, ops: usize, window: u64) {
    update_and_verify_with(img, fmt, seed, ops, window, None);
}

/// As [`update_and_verify`]; with `initial` (the raw the image was made from) the model starts
/// from it and qemu is not used (qemu cannot open VHDX with 4096-byte logical sectors): the
/// oracle is then our reader against the model.
fn update_and_verify_with(
    img: &Path,
    fmt: &str,
    seed: u64,
    ops: usize,
    window: u64,
    initial: Option<&Path>,
) {
    let dir = img.parent().unwrap();
    let model = dir.join(format!(
        "{}.model.raw",
        img.file_name().unwrap().to_str().unwrap()
    ));
    match initial {
        Some(raw) => {
            std::fs::copy(raw, &model).unwrap();
        }
        None => model_of(img, fmt, &model),
    }
    let qemu = initial.is_none();
    let format = if fmt == "vpc" {
        Format::Vhd
    } else {
        Format::Vhdx
    };
    {
        let mut up = open_updater(img, Some(format)).unwrap();
        assert_eq!(up.format(), format);
        assert_eq!(up.virtual_size(), std::fs::metadata(&model).unwrap().len());
        exercise(up.as_mut(), &model, seed, ops, window);
    }
    assert!(
        !qemu || qemu_compare(img, fmt, &model, "raw"),
        "{}: qemu-img compare differs from the model",
        img.display()
    );
    if qemu && fmt == "vhdx" {
        assert_qemu_check(img);
    }
    if window >= std::fs::metadata(&model).unwrap().len() {
        let opts = OpenOptions {
            format: Some(format),
            ..OpenOptions::default()
        };
        let r = diskconv::open(img, &opts).unwrap();
        assert_eq!(sha256_image(r.as_ref()), sha256_file(&model));
        if fmt == "vpc" {
            assert_vhd_bitmaps(img, &model);
        }
    }
}

/// Reads a dynamic VHD the way Hyper-V does, honouring the sector bitmaps (a clear bit reads
/// as zeros), parsed here from the bytes per the VHD specification, and compares with the
/// model: every sector written must have its bit set. Fixed disks are skipped.
fn assert_vhd_bitmaps(img: &Path, model: &Path) {
    let b = std::fs::read(img).unwrap();
    let m = std::fs::read(model).unwrap();
    let be32 = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    let footer = b.len() - 512;
    if be32(footer + 60) == 2 {
        return;
    }
    let hdr = be64(footer + 16) as usize;
    let table = be64(hdr + 16) as usize;
    let block = be32(hdr + 32) as usize;
    let bitmap = (block / 512).div_ceil(8).next_multiple_of(512);
    let mut view = vec![0u8; m.len()];
    for (i, chunk) in view.chunks_mut(block).enumerate() {
        let e = be32(table + 4 * i);
        if e == u32::MAX {
            continue;
        }
        let start = e as usize * 512;
        for (s, sector) in chunk.chunks_mut(512).enumerate() {
            if b[start + s / 8] & (0x80 >> (s % 8)) != 0 {
                let at = start + bitmap + s * 512;
                sector.copy_from_slice(&b[at..at + sector.len()]);
            }
        }
    }
    let bad = view
        .chunks(512)
        .zip(m.chunks(512))
        .position(|(a, b)| a != b);
    assert!(
        bad.is_none(),
        "{}: sector {:?} differs when the sector bitmaps are honoured",
        img.display(),
        bad
    );
}

fn qemu_create(img: &Path, fmt: &str, opts: &str, size: &str, seed: u64) {
    let dir = img.parent().unwrap();
    let raw = dir.join("src.raw");
    make_raw(&raw, parse_size(size), seed);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        fmt,
        "-o",
        opts,
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
}

fn parse_size(s: &str) -> u64 {
    let n: u64 = s.trim_end_matches('M').parse().unwrap();
    n * MIB
}

fn ours_create(img: &Path, fmt: &str, opts: &str, size: u64, seed: u64) {
    let dir = img.parent().unwrap();
    let raw = dir.join("src.raw");
    make_raw(&raw, size, seed);
    let mut cmd = diskconv();
    cmd.args(["convert", "-O", fmt]);
    if !opts.is_empty() {
        cmd.args(["-o", opts]);
    }
    run(cmd.arg(&raw).arg(img));
}

#[test]
fn vhd_qemu_made_dynamic_and_fixed() {
    if !require("qemu-img") {
        return;
    }
    for (i, sub) in ["dynamic", "fixed"].iter().enumerate() {
        let d = tmpdir();
        let img = d.path().join("t.vhd");
        // 9 MiB + 512: a partial last block.
        qemu_create(&img, "vpc", &format!("subformat={sub}"), "9M", 7 + i as u64);
        update_and_verify(&img, "vpc", 11 + i as u64, 300, u64::MAX);
    }
}

#[test]
fn vhd_qemu_made_empty_dynamic() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let img = d.path().join("e.vhd");
    qemu_img(&[
        "create",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic",
        img.to_str().unwrap(),
        "6M",
    ]);
    update_and_verify(&img, "vpc", 21, 200, u64::MAX);
}

#[test]
fn vhd_partial_sector_bitmaps_get_their_bits_set() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    // As Windows leaves them: allocated blocks whose bitmaps mark only some sectors (the
    // others zero). Made from a qemu image: every second 4 KiB of each block is cleared in
    // both the bitmap and the data, so qemu and Hyper-V read the same disk.
    let d = tmpdir();
    let img = d.path().join("p.vhd");
    let p = img.to_str().unwrap();
    qemu_img(&["create", "-f", "vpc", "-o", "subformat=dynamic", p, "6M"]);
    qemu_io(&["-f", "vpc", "-c", "write -P 0x5c 0 6M", p]);
    let mut b = std::fs::read(&img).unwrap();
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let footer = b.len() - 512;
    let hdr = u64::from_be_bytes(b[footer + 16..footer + 24].try_into().unwrap()) as usize;
    let table = u64::from_be_bytes(b[hdr + 16..hdr + 24].try_into().unwrap()) as usize;
    let block = be32(&b, hdr + 32) as usize;
    for i in 0..(6 * MIB as usize).div_ceil(block) {
        let start = be32(&b, table + 4 * i) as usize * 512;
        assert_ne!(start, u32::MAX as usize * 512);
        for s in (0..block / 512).filter(|s| (s / 8) % 2 == 1) {
            b[start + s / 8] &= !(0x80 >> (s % 8));
            let at = start + 512 + s * 512;
            b[at..at + 512].fill(0);
        }
    }
    std::fs::write(&img, &b).unwrap();
    update_and_verify(&img, "vpc", 91, 300, u64::MAX);
}

#[test]
fn vhd_our_writer() {
    if !require("qemu-img") {
        return;
    }
    for (i, opts) in ["subformat=dynamic", "subformat=fixed"].iter().enumerate() {
        let d = tmpdir();
        let img = d.path().join("o.vhd");
        ours_create(&img, "vpc", opts, 7 * MIB, 31 + i as u64);
        update_and_verify(&img, "vpc", 33 + i as u64, 300, u64::MAX);
    }
}

#[test]
fn vhdx_qemu_made() {
    if !require("qemu-img") {
        return;
    }
    let cases = [
        "subformat=dynamic",
        "subformat=dynamic,block_size=1M",
        "subformat=dynamic,block_size=32M",
        "subformat=fixed",
        "subformat=fixed,block_size=1M",
        "subformat=dynamic,block_state_zero=off",
    ];
    for (i, opts) in cases.iter().enumerate() {
        let d = tmpdir();
        let img = d.path().join("q.vhdx");
        qemu_create(&img, "vhdx", opts, "9M", 41 + i as u64);
        update_and_verify(&img, "vhdx", 51 + i as u64, 250, u64::MAX);
    }
}

#[test]
fn vhdx_our_writer() {
    if !require("qemu-img") {
        return;
    }
    let cases = [
        "",
        "block_size=1048576",
        "subformat=fixed,block_size=1048576",
        "logical_sector_size=4096",
        "logical_sector_size=4096,block_size=1048576",
    ];
    for (i, opts) in cases.iter().enumerate() {
        let d = tmpdir();
        let img = d.path().join("o.vhdx");
        ours_create(&img, "vhdx", opts, 6 * MIB, 61 + i as u64);
        if opts.contains("4096") {
            // qemu does not open 4096-byte logical sectors: our reader is the oracle, the
            // model starts from the raw the image was made from.
            let raw = d.path().join("src.raw");
            update_and_verify_with(&img, "vhdx", 71 + i as u64, 250, u64::MAX, Some(&raw));
        } else {
            update_and_verify(&img, "vhdx", 71 + i as u64, 250, u64::MAX);
        }
    }
}

#[test]
fn vhdx_headers_get_new_write_guids() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let img = d.path().join("g.vhdx");
    qemu_create(&img, "vhdx", "subformat=dynamic", "4M", 3);
    let before = std::fs::read(&img).unwrap();
    let header = |b: &[u8], at: usize| {
        let h = diskconv::formats::vhdx::header::VhdxHeader::parse(&b[at..at + 4096], at as u64)
            .unwrap();
        (h.sequence_number, h.file_write_guid, h.data_write_guid)
    };
    let old = [header(&before, 64 << 10), header(&before, 128 << 10)];
    {
        let mut up = open_updater(&img, Some(Format::Vhdx)).unwrap();
        // Opening alone changes nothing.
        assert_eq!(std::fs::read(&img).unwrap(), before);
        up.write_at(b"x", 12345).unwrap();
        up.flush().unwrap();
    }
    let after = std::fs::read(&img).unwrap();
    let new = [header(&after, 64 << 10), header(&after, 128 << 10)];
    let old_max = old.iter().map(|h| h.0).max().unwrap();
    let mut seqs = [new[0].0, new[1].0];
    seqs.sort();
    assert_eq!(seqs, [old_max + 1, old_max + 2]);
    assert_eq!(new[0].1, new[1].1);
    assert_eq!(new[0].2, new[1].2);
    assert!(
        old.iter().all(|h| h.2 != new[0].2),
        "data write GUID unchanged"
    );
    assert_qemu_check(&img);
    let out = qemu_io(&["-f", "vhdx", "-c", "read -v 12345 1", img.to_str().unwrap()]);
    assert!(out.contains("78"), "{out}");
}

#[test]
fn corpus_images_updated() {
    if !require("qemu-img") {
        return;
    }
    // (file, qemu format, offset window: the 127 GiB disks are only written near the start)
    let cases = [
        ("images/dissect_fixed.vhd", "vpc", u64::MAX),
        ("images/dissect_hyperv_dynamic.vhdx", "vhdx", u64::MAX),
        (
            "images/qemu_samples/hyperv2012r2-dynamic.vhd",
            "vpc",
            16 * MIB,
        ),
        ("images/qemu_samples/virtualpc-dynamic.vhd", "vpc", 16 * MIB),
    ];
    for (i, (rel, fmt, window)) in cases.iter().enumerate() {
        let Some(src) = corpus(rel) else { continue };
        let d = tmpdir();
        let img = d.path().join(src.file_name().unwrap());
        std::fs::copy(&src, &img).unwrap();
        update_and_verify(&img, fmt, 81 + i as u64, 150, *window);
        // The source of the copy is untouched.
        assert_ne!(sha256_file(&src), sha256_file(&img));
    }
}

fn assert_refused(img: &Path, format: Format, needle: &str) {
    let before = sha256_file(img);
    let err = match open_updater(img, Some(format)) {
        Ok(_) => panic!("{} was accepted for update", img.display()),
        Err(e) => e,
    };
    let text = err.chain();
    assert!(text.contains(needle), "{}: {text}", img.display());
    assert!(
        text.contains(img.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
    assert_eq!(sha256_file(img), before, "{} was modified", img.display());
}

#[test]
fn refusals_leave_files_identical() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let base = d.path().join("base.vhd");
    qemu_create(&base, "vpc", "subformat=dynamic", "4M", 5);
    // qemu-img cannot create differencing VHDs; the corpus has a Windows-made one.
    if let Some(src) = corpus("images/dfvfs/fat-differential.vhd") {
        let p = d.path().join("fat-differential.vhd");
        std::fs::copy(src, &p).unwrap();
        assert_refused(&p, Format::Vhd, "differencing");
    }
    // A VHDX whose log still holds entries.
    if let Some(src) = corpus("images/qemu_samples/iotest-dirtylog-10G-4M.vhdx") {
        let p = d.path().join("dirty.vhdx");
        std::fs::copy(src, &p).unwrap();
        assert_refused(&p, Format::Vhdx, "log");
    }
    let xbase = d.path().join("base.vhdx");
    qemu_create(&xbase, "vhdx", "subformat=dynamic", "4M", 6);
    // Truncated files.
    for (name, fmt, format) in [
        ("base.vhd", "vpc", Format::Vhd),
        ("base.vhdx", "vhdx", Format::Vhdx),
    ] {
        let src = d.path().join(name);
        let len = std::fs::metadata(&src).unwrap().len();
        for cut in [len / 2, 1000, len - 100] {
            let p = d.path().join(format!("trunc-{cut}-{name}"));
            std::fs::copy(&src, &p).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let before = sha256_file(&p);
            match open_updater(&p, Some(format)) {
                Err(e) => {
                    let text = e.chain();
                    assert!(
                        text.contains(&p.file_name().unwrap().to_string_lossy().to_string()),
                        "{text}"
                    );
                }
                // Accepted only when the cut lost nothing the image references (the tail of
                // a VHDX can be unused space): qemu then reads the same disk.
                Ok(up) => {
                    drop(up);
                    assert!(
                        format == Format::Vhdx && qemu_compare(&p, fmt, &src, fmt),
                        "{} truncated to {cut} was accepted",
                        p.display()
                    );
                }
            }
            assert_eq!(sha256_file(&p), before);
        }
    }
    // Writes out of range: an error, nothing written.
    let img = d.path().join("base.vhd");
    let before = sha256_file(&img);
    let mut up = open_updater(&img, Some(Format::Vhd)).unwrap();
    let size = up.virtual_size();
    assert!(up.write_at(b"abc", size - 1).is_err());
    assert!(up.write_zeroes(size, 1).is_err());
    assert!(up.write_at(b"a", u64::MAX).is_err());
    up.flush().unwrap();
    drop(up);
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn unflushed_writes_leave_an_openable_image() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    for (fmt, format, opts) in [
        ("vpc", Format::Vhd, "subformat=dynamic"),
        ("vhdx", Format::Vhdx, "subformat=dynamic,block_size=1M"),
    ] {
        let d = tmpdir();
        let img = d.path().join(format!("c.{fmt}"));
        qemu_img(&["create", "-f", fmt, "-o", opts, img.to_str().unwrap(), "8M"]);
        qemu_io(&["-f", fmt, "-c", "write -P 0x11 0 1M", img.to_str().unwrap()]);
        // Simulate a crash: writes (allocating and in place) without a flush, then the
        // updater is leaked (never flushed, never dropped).
        let mut up = open_updater(&img, Some(format)).unwrap();
        up.write_at(&vec![0x22; 300_000], 5 * MIB + 17).unwrap();
        up.write_at(&vec![0x33; 4096], 1000).unwrap();
        std::mem::forget(up);
        // qemu still opens and reads it: the old data or the new, never garbage.
        let out = qemu_io(&["-f", fmt, "-c", "read 0 8M", img.to_str().unwrap()]);
        assert!(out.contains("read 8388608/8388608"), "{out}");
        qemu_img(&["info", "-f", fmt, img.to_str().unwrap()]);
        if fmt == "vhdx" {
            assert_qemu_check(&img);
        }
        let model = d.path().join("m.raw");
        model_of(&img, fmt, &model);
        let m = std::fs::read(&model).unwrap();
        // The never-allocated area reads as zeros or as the new bytes, nothing else.
        let s = (5 * MIB + 17) as usize;
        assert!(m[s..s + 300_000].iter().all(|&b| b == 0 || b == 0x22));
        assert!(m[1000..1000 + 4096].iter().all(|&b| b == 0x11 || b == 0x33));
        // And it can be updated again, reaching the expected content after a flush.
        let mut up = open_updater(&img, Some(format)).unwrap();
        up.write_at(&vec![0x44; 70_000], 3 * MIB - 5).unwrap();
        up.flush().unwrap();
        drop(up);
        let out = qemu_io(&[
            "-f",
            fmt,
            "-c",
            &format!("read -P 0x44 {} 70000", 3 * MIB - 5),
            img.to_str().unwrap(),
        ]);
        assert!(!out.contains("Pattern verification failed"), "{out}");
    }
}
