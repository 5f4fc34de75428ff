//! `diskconv ntfs` end to end: a GPT disk holding an mkntfs volume, in raw, qcow2 and VHDX
//! containers; files and folders written by the CLI are read back by ntfs-3g (`ntfscat`,
//! `ntfsls`, `ntfsfix -n`) and sleuthkit (`fls`) from the partition extracted after
//! `qemu-img convert`; failed edits leave the image byte-identical.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diskconv::OpenOptions;
use diskconv::files::journal_path;
use diskconv::guest::disk::{CrashPoint, DiskIo, ImageTx, Window};
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};

use crate::util::{Rng, assert_qemu_check, diskconv, qemu_img, require, run, sha256_file, tmpdir};

/// Partition 2's first sector and length (sectors of 512 bytes).
const P2_START: u64 = 10240;
const P2_SECTORS: u64 = 65536;

fn tools() -> bool {
    [
        "sgdisk", "mkntfs", "ntfscat", "ntfsls", "ntfsfix", "fls", "qemu-img", "dd",
    ]
    .iter()
    .all(|t| require(t))
}

/// An mkntfs volume of `sectors` sectors, as a file.
fn mkntfs(dir: &Path, name: &str, sectors: u64, start: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(sectors * 512)
        .unwrap();
    run(Command::new("mkntfs")
        .args([
            "-F", "-q", "-Q", "-s", "512", "-H", "0", "-S", "0", "-L", "CLITEST",
        ])
        .args(["-p", &start.to_string()])
        .arg(&p));
    p
}

fn dd_into(disk: &Path, part: &Path, start_sector: u64) {
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=512",
            &format!("seek={start_sector}"),
            "conv=notrunc",
            "status=none",
        ]));
}

/// A GPT disk: partition 1 an (unformatted) ESP, partition 2 an mkntfs volume; optionally a
/// third partition holding a second NTFS volume.
fn make_disk(dir: &Path, second_ntfs: bool) -> PathBuf {
    let img = dir.join("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(if second_ntfs { 64 << 20 } else { 40 << 20 })
        .unwrap();
    let mut c = Command::new("sgdisk");
    c.args(["-n", "1:2048:+4M", "-t", "1:ef00"]).args([
        "-n",
        &format!("2:{P2_START}:+{}", P2_SECTORS - 1),
        "-t",
        "2:0700",
    ]);
    if second_ntfs {
        c.args(["-n", "3:0:+16M", "-t", "3:0700"]);
    }
    run(c.arg(&img));
    let v = mkntfs(dir, "vol.ntfs", P2_SECTORS, P2_START);
    dd_into(&img, &v, P2_START);
    if second_ntfs {
        let start = P2_START + P2_SECTORS;
        let v3 = mkntfs(dir, "vol3.ntfs", 32768, start);
        dd_into(&img, &v3, start);
    }
    img
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: Output, what: &str, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} succeeded");
    assert!(
        err.contains(expect),
        "{what}: expected '{expect}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
}

fn cli(args: &[&str], img: &Path) -> Output {
    let mut c = diskconv();
    c.arg("ntfs").arg(args[0]).arg(img).args(&args[1..]);
    c.output().unwrap()
}

/// Partition 2 of the image, as a file (via `qemu-img convert` to raw).
fn extract_partition(dir: &Path, img: &Path, fmt: &str) -> PathBuf {
    let raw = dir.join(format!("flat-{fmt}.raw"));
    qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let part = dir.join(format!("p2-{fmt}.ntfs"));
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", part.display()))
        .args([
            "bs=512",
            &format!("skip={P2_START}"),
            &format!("count={P2_SECTORS}"),
            "status=none",
        ]));
    part
}

fn ntfscat(part: &Path, path: &str) -> Vec<u8> {
    run(Command::new("ntfscat").arg(part).arg(path)).stdout
}

fn assert_ntfs_clean(part: &Path, what: &str) {
    let out = Command::new("ntfsfix")
        .arg("-n")
        .arg(part)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: ntfsfix -n: {text}");
    assert!(
        text.contains("processed successfully") && !text.contains("mismatch"),
        "{what}: ntfsfix -n: {text}"
    );
}

#[test]
fn ntfs_cli_put_mkdir_in_raw_qcow2_vhdx() {
    if !tools() {
        return;
    }
    for fmt in ["raw", "qcow2", "vhdx"] {
        let dir = tmpdir();
        let d = dir.path();
        let raw = make_disk(d, false);
        let img = if fmt == "raw" {
            raw.clone()
        } else {
            let p = d.join(format!("disk.{fmt}"));
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
                raw.to_str().unwrap(),
                p.to_str().unwrap(),
            ]);
            p
        };
        // info: chosen automatically (partition 2), writable.
        let text = ok(cli(&["info"], &img), "info");
        assert!(
            text.contains("partition 2") && text.contains("writable:       yes"),
            "{text}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&ok(cli(&["info", "--json"], &img), "info --json")).unwrap();
        assert_eq!(j["partition"], 2);
        assert_eq!(j["start"], P2_START * 512);
        assert_eq!(j["writable"], true);
        assert_eq!(j["state"]["label"], "CLITEST");

        let mut rng = Rng::new(17);
        let big = d.join("big.sys");
        std::fs::write(&big, rng.bytes(300_000)).unwrap();
        let small = d.join("small.inf");
        std::fs::write(&small, b"[Version]\r\nSignature=\"$WINDOWS NT$\"\r\n").unwrap();
        let empty = d.join("empty.cat");
        std::fs::write(&empty, b"").unwrap();

        ok(
            cli(&["mkdir", "Windows/System32/drivers", "-p"], &img),
            "mkdir -p",
        );
        ok(
            cli(&["mkdir", "Windows/System32/drivers", "-p"], &img),
            "mkdir -p again",
        );
        ok(cli(&["mkdir", "Windows\\Drivers"], &img), "mkdir");
        let put = |local: &Path, path: &str| {
            ok(
                cli(&["put", local.to_str().unwrap(), path], &img),
                &format!("put {path}"),
            )
        };
        let t = put(&big, "Windows/System32/drivers/viostor.sys");
        assert!(t.starts_with("created"), "{t}");
        put(&small, "Windows/System32/drivers/viostor.inf");
        put(&empty, "Windows/System32/drivers/viostor.cat");
        put(&small, "Top Level File.txt");
        // Replace with different content (shrinks).
        let t = put(&small, "Windows/System32/drivers/viostor.sys");
        assert!(t.starts_with("replaced"), "{t}");
        let t = put(&big, "Windows/System32/drivers/viostor.sys");
        assert!(t.starts_with("replaced"), "{t}");

        // Our reader.
        let ls = ok(cli(&["ls", "Windows/System32/drivers"], &img), "ls");
        for n in ["viostor.sys", "viostor.inf", "viostor.cat"] {
            assert!(ls.contains(n), "{ls}");
        }
        let out = d.join("back.sys");
        ok(
            cli(
                &[
                    "cat",
                    "windows/system32/DRIVERS/viostor.sys",
                    "-o",
                    out.to_str().unwrap(),
                ],
                &img,
            ),
            "cat",
        );
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&big).unwrap());
        let j: serde_json::Value =
            serde_json::from_str(&ok(cli(&["ls", "", "--json"], &img), "ls --json")).unwrap();
        assert!(
            j.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "Top Level File.txt"
                    && e["size"] == std::fs::metadata(&small).unwrap().len())
        );

        // The container is sound, and ntfs-3g and sleuthkit read every file back.
        if fmt != "raw" {
            assert_qemu_check(&img);
        }
        let part = extract_partition(d, &img, fmt);
        assert_ntfs_clean(&part, fmt);
        assert_eq!(
            ntfscat(&part, "Windows/System32/drivers/viostor.sys"),
            std::fs::read(&big).unwrap(),
            "{fmt}"
        );
        assert_eq!(
            ntfscat(&part, "Windows/System32/drivers/viostor.inf"),
            std::fs::read(&small).unwrap()
        );
        assert!(ntfscat(&part, "Windows/System32/drivers/viostor.cat").is_empty());
        assert_eq!(
            ntfscat(&part, "Top Level File.txt"),
            std::fs::read(&small).unwrap()
        );
        let listing = String::from_utf8_lossy(
            &run(Command::new("ntfsls")
                .arg("-f")
                .arg(&part)
                .args(["-p", "/Windows"]))
            .stdout,
        )
        .into_owned();
        assert!(
            listing.contains("System32") && listing.contains("Drivers"),
            "{listing}"
        );
        let fls =
            String::from_utf8_lossy(&run(Command::new("fls").args(["-r", "-p"]).arg(&part)).stdout)
                .into_owned();
        for p in [
            "Windows/System32/drivers/viostor.sys",
            "Windows/System32/drivers/viostor.inf",
            "Windows/System32/drivers/viostor.cat",
            "Windows/Drivers",
            "Top Level File.txt",
        ] {
            assert!(fls.contains(p), "{fmt}: fls lacks {p}:\n{fls}");
        }
    }
}

#[test]
fn ntfs_cli_failures_leave_the_image_unchanged() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let img = make_disk(d, true);
    let local = d.join("f.txt");
    std::fs::write(&local, b"data").unwrap();
    let before = sha256_file(&img);
    let l = local.to_str().unwrap();
    // Two NTFS volumes: --partition needed; a wrong partition number; a non-NTFS partition.
    fails(
        cli(&["put", l, "x.txt"], &img),
        "ambiguous",
        "NTFS volumes on the disk (partition 2 (NTFS, ",
    );
    // The library says what is wrong, the CLI adds the flag that chooses.
    fails(
        cli(&["put", l, "x.txt"], &img),
        "ambiguous",
        "); choose one with --partition N\n",
    );
    fails(
        cli(&["info", "--partition", "9"], &img),
        "no partition 9",
        "no partition 9",
    );
    fails(
        cli(&["info", "--partition", "1"], &img),
        "ESP",
        "does not hold an NTFS",
    );
    // A folder that does not exist; mkdir of an existing folder without -p.
    fails(
        cli(
            &["put", l, "No/Such/Folder/x.txt", "--partition", "2"],
            &img,
        ),
        "missing folder",
        "",
    );
    ok(
        cli(&["mkdir", "Existing", "--partition", "3"], &img),
        "mkdir",
    );
    let before = {
        assert_ne!(sha256_file(&img), before);
        sha256_file(&img)
    };
    fails(
        cli(&["mkdir", "Existing", "--partition", "3"], &img),
        "mkdir twice",
        "already exists",
    );
    // A file too large for the volume (16 MiB partition 3).
    let huge = d.join("huge.bin");
    std::fs::write(&huge, vec![0x5Au8; 20 << 20]).unwrap();
    fails(
        cli(
            &[
                "put",
                huge.to_str().unwrap(),
                "huge.bin",
                "--partition",
                "3",
            ],
            &img,
        ),
        "volume full",
        "",
    );
    // Not an image at all; a missing local file.
    fails(
        cli(&["put", "/nonexistent/file", "x", "--partition", "2"], &img),
        "missing local",
        "nonexistent",
    );
    assert_eq!(sha256_file(&img), before, "a failed edit changed the image");
    assert!(!journal_path(&img).exists());
    // Partition 3 still passes ntfsfix after the refused writes.
    let p3 = d.join("p3.ntfs");
    run(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", p3.display()))
        .args([
            "bs=512",
            &format!("skip={}", P2_START + P2_SECTORS),
            "count=32768",
            "status=none",
        ]));
    assert_ntfs_clean(&p3, "partition 3");
    assert!(
        String::from_utf8_lossy(&run(Command::new("ntfsls").arg(&p3)).stdout).contains("Existing")
    );
}

#[test]
fn ntfs_cli_rollback_after_an_interrupted_commit() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let raw = make_disk(d, false);
    let img = d.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let original = d.join("original.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        img.to_str().unwrap(),
        original.to_str().unwrap(),
    ]);
    // An edit through the library that stops half-way through its commit.
    let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
    {
        let w = Window::new(&mut tx.disk, P2_START * 512, P2_SECTORS * 512).unwrap();
        let mut vol = NtfsVolume::open(w, &NtfsOpenOptions { read_only: false }).unwrap();
        vol.create_dir_all("Windows/Drivers/VirtIO").unwrap();
        vol.write_file("Windows/Drivers/VirtIO/a.sys", &vec![7u8; 200_000])
            .unwrap();
        vol.flush().unwrap();
    }
    assert!(!tx.disk.is_unchanged());
    tx.commit_interrupted(CrashPoint::MidWrites).unwrap();
    // Every command refuses the image, naming the journal and the remedy.
    fails(cli(&["info"], &img), "info with a journal", "");
    let local = d.join("x");
    std::fs::write(&local, b"x").unwrap();
    fails(
        cli(&["put", local.to_str().unwrap(), "x"], &img),
        "put with a journal",
        "rollback",
    );
    let t = ok(cli(&["rollback"], &img), "rollback");
    assert!(t.contains("restored"), "{t}");
    assert!(!journal_path(&img).exists());
    assert!(crate::util::qemu_compare(&img, "qcow2", &original, "raw"));
    assert_qemu_check(&img);
    fails(
        cli(&["rollback"], &img),
        "rollback twice",
        "no undo journal",
    );
    // And the image is editable again.
    ok(
        cli(&["put", local.to_str().unwrap(), "x"], &img),
        "put after rollback",
    );
}

/// The volume written through the library's `DiskIo` traits is what the CLI reads.
#[test]
fn ntfs_cli_reads_what_the_library_wrote() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let img = make_disk(dir.path(), false);
    let mut tx = ImageTx::open(&img, &OpenOptions::default()).unwrap();
    {
        let mut w = Window::new(&mut tx.disk, P2_START * 512, P2_SECTORS * 512).unwrap();
        // A write through the window lands at the partition's offset.
        let mut boot = [0u8; 512];
        diskconv::guest::disk::DiskRead::read_at(&w, &mut boot, 0).unwrap();
        w.write_at(&boot, 0).unwrap();
        let mut vol = NtfsVolume::open(w, &NtfsOpenOptions { read_only: false }).unwrap();
        vol.write_file("lib.txt", b"from the library").unwrap();
        vol.flush().unwrap();
    }
    tx.commit().unwrap();
    let mut c = diskconv();
    let out = ok(
        c.args(["ntfs", "cat"])
            .arg(&img)
            .arg("LIB.TXT")
            .output()
            .unwrap(),
        "cat",
    );
    assert_eq!(out, "from the library");
}

/// The real volumes of the corpus (one made by mkntfs with 512-byte clusters, one formatted by
/// Windows with 4 KiB clusters): read-only commands leave the corpus file alone; on a copy, as
/// a whole-disk volume in qcow2 and inside an MBR partition, a put and a mkdir read back with
/// ntfs-3g.
#[test]
fn ntfs_cli_corpus_volumes_whole_disk_and_mbr() {
    if !tools() || !require("sfdisk") {
        return;
    }
    for name in [
        "ntfs/colinfinck_testfs1.img",
        "ntfs/dfvfs_windows_volume_ntfs.raw",
    ] {
        let Some(src) = crate::util::corpus(name) else {
            return;
        };
        let before = sha256_file(&src);
        let text = ok(cli(&["info"], &src), "info on the corpus");
        assert!(text.contains("whole disk (NTFS"), "{text}");
        ok(cli(&["ls", ""], &src), "ls on the corpus");
        assert_eq!(sha256_file(&src), before);

        let dir = tmpdir();
        let d = dir.path();
        let vol_len = std::fs::metadata(&src).unwrap().len();
        // Whole-disk volume in a qcow2 container.
        let q = d.join("vol.qcow2");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            src.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        // The same volume in partition 1 of an MBR disk.
        let mbr = d.join("mbr.raw");
        std::fs::File::create(&mbr)
            .unwrap()
            .set_len(vol_len + (2 << 20))
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
                    format!("label: dos\nstart=2048,size={},type=7\n", vol_len / 512).as_bytes(),
                )
                .unwrap();
        }
        assert!(child.wait().unwrap().success());
        dd_into(&mbr, &src, 2048);

        let payload = d.join("payload.bin");
        std::fs::write(&payload, Rng::new(5).bytes(70_000)).unwrap();
        for (img, fmt, start) in [(&q, "qcow2", 0u64), (&mbr, "raw", 2048)] {
            ok(cli(&["mkdir", "Drivers/VirtIO", "-p"], img), "mkdir");
            ok(
                cli(
                    &["put", payload.to_str().unwrap(), "Drivers/VirtIO/p.bin"],
                    img,
                ),
                "put",
            );
            let flat = d.join(format!("flat-{fmt}.raw"));
            qemu_img(&[
                "convert",
                "-f",
                fmt,
                "-O",
                "raw",
                img.to_str().unwrap(),
                flat.to_str().unwrap(),
            ]);
            let part = d.join(format!("part-{fmt}.ntfs"));
            run(Command::new("dd")
                .arg(format!("if={}", flat.display()))
                .arg(format!("of={}", part.display()))
                .args([
                    "bs=512",
                    &format!("skip={start}"),
                    &format!("count={}", vol_len / 512),
                    "status=none",
                ]));
            assert_ntfs_clean(&part, &format!("{name} {fmt}"));
            assert_eq!(
                ntfscat(&part, "Drivers/VirtIO/p.bin"),
                std::fs::read(&payload).unwrap(),
                "{name} {fmt}"
            );
        }
    }
}

#[test]
fn ntfs_cli_refuses_bitlocker_and_non_ntfs_disks() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let img = make_disk(d, false);
    // Turn partition 2's boot sector into a BitLocker one.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(b"-FVE-FS-", P2_START * 512 + 3).unwrap();
    }
    let before = sha256_file(&img);
    fails(cli(&["info"], &img), "bitlocker", "BitLocker");
    fails(cli(&["mkdir", "x"], &img), "bitlocker mkdir", "BitLocker");
    fails(
        cli(&["info", "--partition", "2"], &img),
        "bitlocker by number",
        "BitLocker",
    );
    assert_eq!(sha256_file(&img), before);
    // A disk of zeros: no NTFS volume.
    let z = d.join("zero.raw");
    std::fs::File::create(&z).unwrap().set_len(1 << 20).unwrap();
    fails(cli(&["ls", ""], &z), "zeros", "no NTFS volume");
    // A streamOptimized VMDK cannot be edited: refused before anything is done.
    let so = d.join("so.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        img.to_str().unwrap(),
        so.to_str().unwrap(),
    ]);
    let before = sha256_file(&so);
    fails(
        cli(&["mkdir", "x", "--partition", "2"], &so),
        "streamOptimized",
        "",
    );
    assert_eq!(sha256_file(&so), before);
}

#[test]
fn ntfs_cli_dirty_volume_is_refused_unchanged() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let img = make_disk(dir.path(), false);
    crate::ntfs_fixture::set_ntfs_dirty_at(&img, (P2_START * 512) as usize);
    let before = sha256_file(&img);
    let j: serde_json::Value =
        serde_json::from_str(&ok(cli(&["info", "--json"], &img), "info")).unwrap();
    assert_eq!(j["state"]["dirty"], true);
    assert_eq!(j["writable"], false);
    assert!(
        j["not_writable_reason"].as_str().unwrap().contains("dirty"),
        "{j}"
    );
    let local = dir.path().join("f");
    std::fs::write(&local, b"x").unwrap();
    fails(
        cli(&["put", local.to_str().unwrap(), "f"], &img),
        "dirty put",
        "dirty",
    );
    fails(cli(&["mkdir", "d"], &img), "dirty mkdir", "dirty");
    assert_eq!(sha256_file(&img), before);
    assert!(!journal_path(&img).exists());
}
