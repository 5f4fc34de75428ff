//! In-place updates of monolithicSparse VMDK targets (`VmdkUpdater`), checked against a raw
//! model with `qemu-img compare` and `qemu-img check`; refusals leave the file byte-identical.

use std::os::unix::fs::FileExt;
use std::path::Path;

use diskconv::Format;
use diskconv::storage::{FileStorage, Storage};
use diskconv::sync::target::open_updater;
use diskconv::testing::{RandomOps, random_operations};

use crate::util::{
    Rng, assert_qemu_check, diskconv, make_raw, qemu_compare, qemu_img, qemu_io, require, run,
    sha256_file, tmpdir,
};

/// `ops` random writes (any alignment, up to `max_len` bytes) and zeroings, applied to the
/// VMDK through the updater and to the raw `model` file; flushes now and then and at the end;
/// reads back through the updater as it goes; writes past the end refused. The shared
/// contract check ([`diskconv::testing::random_operations`]).
fn random_ops(vmdk: &Path, model: &Path, ops: usize, max_len: u64, seed: u64) {
    let m = FileStorage::open_read_write(model).unwrap();
    let mut u = open_updater(vmdk, None).unwrap();
    assert_eq!(u.format(), Format::Vmdk);
    assert_eq!(u.virtual_size(), m.len().unwrap());
    let o = RandomOps {
        flush_one_in: 37,
        ..RandomOps::new(seed, ops, max_len)
    };
    random_operations(u.as_mut(), &m, &o).unwrap_or_else(|e| panic!("{e}"));
    u.flush().unwrap();
}

fn check_equal(vmdk: &Path, model: &Path) {
    assert_qemu_check(vmdk);
    assert!(
        qemu_compare(vmdk, "vmdk", model, "raw"),
        "{} differs from its raw model",
        vmdk.display()
    );
}

#[test]
fn qemu_made_monolithic_sparse_random_updates() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let v = d.path().join("q.vmdk");
    let model = d.path().join("model.raw");
    let vs = v.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        vs,
        "8M",
    ]);
    // Some grains allocated by qemu first, so both overwrite and append paths run.
    qemu_io(&["-f", "vmdk", "-c", "write -P 0x5a 0 200k", vs]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0xa5 3M 64k", vs]);
    std::fs::File::create(&model)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 0 200k",
        model.to_str().unwrap(),
    ]);
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0xa5 3M 64k",
        model.to_str().unwrap(),
    ]);
    let cid_before = cid(&v);
    random_ops(&v, &model, 300, 150_000, 7);
    check_equal(&v, &model);
    // The content changed, so the descriptor's content id did too.
    assert_ne!(cid(&v), cid_before);
    // A second session on the same file (tables read back from disk).
    random_ops(&v, &model, 100, 70_000, 99);
    check_equal(&v, &model);
    // qemu-io reads what we wrote at the start of the disk the same way.
    let m = std::fs::read(&model).unwrap();
    let first = m[0];
    let out = qemu_io(&["-f", "vmdk", "-c", &format!("read -P {first} 0 1"), vs]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

#[test]
fn our_monolithic_sparse_random_updates() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    let v = d.path().join("ours.vmdk");
    make_raw(&src, 6 << 20, 3);
    run(diskconv()
        .args(["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"])
        .arg(&src)
        .arg(&v));
    let model = src; // the source becomes the model
    random_ops(&v, &model, 300, 200_000, 12345);
    check_equal(&v, &model);
    // diskconv verify agrees (exit 0), and sees one changed byte in the model (exit 1).
    let out = diskconv()
        .arg("verify")
        .arg(&model)
        .arg(&v)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap();
    f.write_all_at(&[0xee], 5 << 20).unwrap();
    f.write_all_at(&[0xef], (5 << 20) + 1).unwrap();
    drop(f);
    let out = diskconv()
        .arg("verify")
        .arg(&model)
        .arg(&v)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// The `CID=` value of the embedded descriptor.
fn cid(vmdk: &Path) -> String {
    let b = std::fs::read(vmdk).unwrap();
    let t = String::from_utf8_lossy(&b[..b.len().min(1 << 20)]).into_owned();
    let at = t.find("\nCID=").expect("a CID line") + 5;
    t[at..at + 8].to_string()
}

/// Sector offsets of the grain directory and redundant grain directory, from the header.
fn gd_offsets(vmdk: &Path) -> (u64, u64) {
    let b = std::fs::read(vmdk).unwrap();
    let le = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    (le(56), le(48))
}

#[test]
fn grain_directory_entries_of_zero_get_new_grain_tables() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let v = d.path().join("gd0.vmdk");
    let model = d.path().join("model.raw");
    let vs = v.to_str().unwrap();
    // 80 MiB: three grain tables of 32 MiB each.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        vs,
        "80M",
    ]);
    // Drop grain tables 1 and 2 from both directories (legal: entry 0 = no table).
    let (gd, rgd) = gd_offsets(&v);
    let f = std::fs::OpenOptions::new().write(true).open(&v).unwrap();
    for dir in [gd, rgd] {
        f.write_all_at(&[0u8; 8], dir * 512 + 4).unwrap();
    }
    drop(f);
    assert_qemu_check(&v);
    std::fs::File::create(&model)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let len_before = std::fs::metadata(&v).unwrap().len();
    random_ops(&v, &model, 120, 100_000, 4242);
    check_equal(&v, &model);
    // Both directories now point at (new) tables past the old end of the file, and the
    // primary and redundant copies of each table are equal.
    let b = std::fs::read(&v).unwrap();
    let le32 = |at: u64| u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().unwrap());
    for i in 1..3u64 {
        let p = le32(gd * 512 + i * 4) as u64 * 512;
        let r = le32(rgd * 512 + i * 4) as u64 * 512;
        assert!(
            p >= len_before && r >= len_before && p != r,
            "table {i}: {p:#x} {r:#x}"
        );
        assert_eq!(
            b[p as usize..p as usize + 2048],
            b[r as usize..r as usize + 2048],
            "table {i}: primary and redundant copies differ"
        );
    }
}

#[test]
fn descriptor_files_are_written_in_place() {
    if !require("qemu-img") {
        return;
    }
    for sub in [
        "monolithicFlat",
        "twoGbMaxExtentFlat",
        "twoGbMaxExtentSparse",
    ] {
        let d = tmpdir();
        let v = d.path().join("f.vmdk");
        let model = d.path().join("model.raw");
        make_raw(&model, 5 << 20, 8);
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            model.to_str().unwrap(),
            v.to_str().unwrap(),
        ]);
        let cid_before = cid(&v);
        random_ops(&v, &model, 200, 150_000, 77);
        assert!(
            qemu_compare(&v, "vmdk", &model, "raw"),
            "{sub}: differs from its raw model"
        );
        assert_ne!(cid(&v), cid_before, "{sub}: CID not renewed");
        if sub.contains("Sparse") {
            assert_qemu_check(&v);
        }
    }
}

#[test]
fn a_write_across_two_flat_extents() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let model = d.path().join("model.raw");
    make_raw(&model, 5 << 20, 9);
    let m = std::fs::read(&model).unwrap();
    // The disk split over two extent files, the second one at an offset of 1 MiB in its file.
    // (No blank lines in the descriptor: qemu 10 maps the extent line before a blank line
    // twice.)
    std::fs::write(d.path().join("a.bin"), &m[..2 << 20]).unwrap();
    let mut b = vec![0x77u8; 1 << 20];
    b.extend_from_slice(&m[2 << 20..]);
    std::fs::write(d.path().join("b.bin"), &b).unwrap();
    let v = d.path().join("two.vmdk");
    std::fs::write(
        &v,
        "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n\
         createType=\"twoGbMaxExtentFlat\"\nRW 4096 FLAT \"a.bin\" 0\n\
         RW 6144 FLAT \"b.bin\" 2048\nddb.adapterType = \"ide\"\n",
    )
    .unwrap();
    assert!(qemu_compare(&v, "vmdk", &model, "raw"));
    let mut u = open_updater(&v, None).unwrap();
    let data = vec![0x42u8; 100_000];
    let at = (2 << 20) - 50_000;
    u.write_at(&data, at).unwrap();
    u.write_zeroes((2 << 20) - 10, 20).unwrap();
    u.flush().unwrap();
    drop(u);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap();
    f.write_all_at(&data, at).unwrap();
    f.write_all_at(&[0u8; 20], (2 << 20) - 10).unwrap();
    drop(f);
    assert!(qemu_compare(&v, "vmdk", &model, "raw"));
    // The bytes before the second extent's offset in its file are untouched.
    let b2 = std::fs::read(d.path().join("b.bin")).unwrap();
    assert!(b2[..1 << 20].iter().all(|&x| x == 0x77));
    random_ops(&v, &model, 100, 300_000, 5);
    assert!(qemu_compare(&v, "vmdk", &model, "raw"));
}

fn assert_refused(path: &Path, others: &[&Path], want: &str) {
    let before: Vec<String> = std::iter::once(path)
        .chain(others.iter().copied())
        .map(sha256_file)
        .collect();
    let e = match open_updater(path, None) {
        Ok(_) => panic!("{} was accepted for update", path.display()),
        Err(e) => e.chain(),
    };
    assert!(
        e.contains(want),
        "{}: expected '{want}' in: {e}",
        path.display()
    );
    let after: Vec<String> = std::iter::once(path)
        .chain(others.iter().copied())
        .map(sha256_file)
        .collect();
    assert_eq!(before, after, "{} was modified", path.display());
}

#[test]
fn refusals_leave_the_files_untouched() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let p = |n: &str| d.path().join(n);
    let create = |name: &str, sub: &str| {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            p(name).to_str().unwrap(),
            "4M",
        ]);
    };
    create("so.vmdk", "streamOptimized");
    assert_refused(&p("so.vmdk"), &[], "streamOptimized");
    // A flat descriptor naming a file outside its folder.
    create("flat.vmdk", "monolithicFlat");
    let text = std::fs::read_to_string(p("flat.vmdk")).unwrap();
    std::fs::write(
        p("evil.vmdk"),
        text.replace("\"flat-flat.vmdk\"", "\"../flat-flat.vmdk\""),
    )
    .unwrap();
    assert_refused(&p("evil.vmdk"), &[&p("flat-flat.vmdk")], "plain file name");

    create("base.vmdk", "monolithicSparse");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        p("base.vmdk").to_str().unwrap(),
        "-F",
        "vmdk",
        p("child.vmdk").to_str().unwrap(),
    ]);
    assert_refused(&p("child.vmdk"), &[&p("base.vmdk")], "parent");

    // uncleanShutdown set.
    std::fs::copy(p("base.vmdk"), p("unclean.vmdk")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p("unclean.vmdk"))
        .unwrap();
    f.write_all_at(&[1], 72).unwrap();
    drop(f);
    assert_refused(&p("unclean.vmdk"), &[], "uncleanShutdown");

    // A grain directory entry pointing past the end of the file.
    std::fs::copy(p("base.vmdk"), p("badgd.vmdk")).unwrap();
    let (gd, _) = gd_offsets(&p("badgd.vmdk"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p("badgd.vmdk"))
        .unwrap();
    f.write_all_at(&0x00ff_ffffu32.to_le_bytes(), gd * 512)
        .unwrap();
    drop(f);
    assert_refused(&p("badgd.vmdk"), &[], "grain directory");
}

#[test]
fn a_grain_table_entry_outside_the_file_is_an_error_not_a_write() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let v = d.path().join("badgt.vmdk");
    let vs = v.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        vs,
        "4M",
    ]);
    let (gd, _) = gd_offsets(&v);
    let b = std::fs::read(&v).unwrap();
    let at = (gd * 512) as usize;
    let gt = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64 * 512;
    let f = std::fs::OpenOptions::new().write(true).open(&v).unwrap();
    f.write_all_at(&0x7fff_0000u32.to_le_bytes(), gt + 4)
        .unwrap(); // grain 1
    f.write_all_at(&2u32.to_le_bytes(), gt + 8).unwrap(); // grain 2: inside the header
    drop(f);
    let before = sha256_file(&v);
    let mut u = open_updater(&v, Some(Format::Vmdk)).unwrap();
    let e = u.write_at(&[9; 10], 65536 + 5).unwrap_err().chain();
    assert!(e.contains("grain 1") && e.contains("past the end"), "{e}");
    let e = u.write_at(&[9; 10], 2 * 65536).unwrap_err().chain();
    assert!(e.contains("grain 2") && e.contains("header"), "{e}");
    let e = u.write_zeroes(65536, 65536).unwrap_err().chain();
    assert!(e.contains("grain 1"), "{e}");
    u.flush().unwrap();
    drop(u);
    assert_eq!(before, sha256_file(&v));
}

#[test]
fn a_session_lost_before_flush_leaves_a_valid_image_that_a_rewrite_repairs() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let v = d.path().join("crash.vmdk");
    let model = d.path().join("model.raw");
    let vs = v.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        vs,
        "8M",
    ]);
    std::fs::File::create(&model)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    random_ops(&v, &model, 60, 100_000, 31);
    // A session that "crashes": writes (new grains appended, tables changed in memory only),
    // never flushed.
    let mut u = open_updater(&v, None).unwrap();
    let mut rng = Rng(77);
    for _ in 0..50 {
        let off = rng.below((8 << 20) - 70_000);
        u.write_at(&[0xcc; 70_000], off).unwrap();
    }
    drop(u);
    assert_qemu_check(&v);
    // The next session rewrites the whole disk from the model: equal again.
    let m = std::fs::read(&model).unwrap();
    let mut u = open_updater(&v, None).unwrap();
    for (i, c) in m.chunks(1 << 20).enumerate() {
        u.write_at(c, (i as u64) << 20).unwrap();
    }
    u.flush().unwrap();
    drop(u);
    check_equal(&v, &model);
}
