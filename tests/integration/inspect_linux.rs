//! Finding Linux guests (`diskconv inspect`, `diskconv::inspect::linux`): ext2/3/4 roots made
//! with `mke2fs -d` inside MBR and GPT tables (sfdisk), raw and qcow2 (qemu-img convert), read
//! back and checked against e2fsprogs' `debugfs`; XFS (mkfs.xfs) reported as found, not read;
//! an LVM2 volume group made by lvm2's own tools on loop devices, its linear LV read where
//! `lvs` places it, its striped LV reported; damaged and truncated file systems give notes,
//! never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::{self, run};

fn inspect_json(img: &Path) -> Value {
    let out = util::diskconv()
        .arg("inspect")
        .arg(img)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inspect_text(img: &Path) -> String {
    let out = util::diskconv().arg("inspect").arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\nHOME_URL=\"https://www.debian.org/\"\n";

/// A root tree: `etc/os-release` a symbolic link to `../usr/lib/os-release`, `/bin/sh` a copy
/// of the host's (an ELF of the host's architecture), `/boot/vmlinuz-6.1.0-99-test`.
fn debian_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["etc", "usr/lib", "bin", "boot"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("usr/lib/os-release"), OS_RELEASE).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    // fs::copy follows the host's /bin/sh link to the real ELF.
    std::fs::copy("/bin/sh", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("boot/vmlinuz-6.1.0-99-test"), b"not a kernel").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-99-test"), b"x").unwrap();
    root
}

/// `mke2fs -t KIND -d TREE` into a file system image of `mib` MiB.
fn mkfs_ext(kind: &str, tree: &Path, img: &Path, mib: u32) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", kind, "-d"])
        .arg(tree)
        .arg(img)
        .arg(format!("{mib}M")));
}

/// `debugfs -R CMD` on a file system image: e2fsprogs' own reading of it.
fn debugfs(img: &Path, cmd: &str) -> String {
    let out = run(Command::new("debugfs").arg("-R").arg(cmd).arg(img));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `key` in os-release text, quotes removed.
fn os_release_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// A disk of `size` bytes holding `fs` at 1 MiB in a partition table written by sfdisk
/// (`label`: `dos` or `gpt`); with GPT, a small first partition so the file system is number 2.
fn partitioned(fs: &Path, disk: &Path, label: &str) {
    let fs_len = std::fs::metadata(fs).unwrap().len();
    let (script, at) = if label == "gpt" {
        (
            format!(
                "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n\
                 start=4096, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
                fs_len / 512
            ),
            4096 * 512,
        )
    } else {
        (
            format!("label: dos\nstart=2048, size={}, type=83\n", fs_len / 512),
            2048 * 512,
        )
    };
    let f = std::fs::File::create(disk).unwrap();
    f.set_len(at + fs_len + (1 << 20)).unwrap();
    drop(f);
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    copy_into(fs, disk, at);
}

/// Writes the whole of `src` into `dst` at byte `at`.
fn copy_into(src: &Path, dst: &Path, at: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let data = std::fs::read(src).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(dst).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&data).unwrap();
}

fn linux_volumes(j: &Value) -> &Vec<Value> {
    j["linux"]["volumes"].as_array().expect("linux.volumes")
}

#[test]
fn ext4_root_in_mbr_and_gpt_tables_raw_and_qcow2() {
    if !(util::require("mke2fs")
        && util::require("debugfs")
        && util::require("sfdisk")
        && util::require("qemu-img"))
    {
        return;
    }
    let dir = util::tmpdir();
    let tree = debian_tree(dir.path());
    let fs = dir.path().join("fs.img");
    mkfs_ext("ext4", &tree, &fs, 16);
    // e2fsprogs' reading of the same files: the oracle (debugfs does not follow links).
    let link = debugfs(&fs, "stat /etc/os-release");
    assert!(link.contains("../usr/lib/os-release"), "debugfs: {link}");
    let rel = debugfs(&fs, "cat /usr/lib/os-release");
    assert!(rel.contains("ID=debian"), "debugfs: {rel}");
    let boot = debugfs(&fs, "ls /boot");
    assert!(boot.contains("vmlinuz-6.1.0-99-test"), "debugfs: {boot}");
    let sb = debugfs(&fs, "stats");
    let uuid = sb
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .unwrap()
        .trim()
        .to_string();

    let check = |img: &Path, location: &str| {
        let j = inspect_json(img);
        let vols = linux_volumes(&j);
        assert_eq!(vols.len(), 1, "{j:#}");
        let v = &vols[0];
        assert_eq!(v["location"], location);
        assert_eq!(v["fs"]["kind"], "ext4");
        assert_eq!(v["fs"]["uuid"], uuid.as_str());
        let r = &v["root"];
        let d = &r["distribution"];
        assert_eq!(d["id"], os_release_value(&rel, "ID").as_str());
        assert_eq!(d["name"], os_release_value(&rel, "NAME").as_str());
        assert_eq!(d["version"], os_release_value(&rel, "VERSION_ID").as_str());
        assert_eq!(
            d["pretty_name"],
            os_release_value(&rel, "PRETTY_NAME").as_str()
        );
        assert_eq!(d["source"], "/etc/os-release");
        assert_eq!(r["arch"], std::env::consts::ARCH);
        assert_eq!(r["kernels"], serde_json::json!(["6.1.0-99-test"]));
        assert!(v["note"].is_null(), "{v:#}");
    };
    // The file system alone (whole disk), in an MBR and in a GPT.
    check(&fs, "whole disk");
    let mbr = dir.path().join("mbr.raw");
    partitioned(&fs, &mbr, "dos");
    check(&mbr, "partition 1");
    let gpt = dir.path().join("gpt.raw");
    partitioned(&fs, &gpt, "gpt");
    check(&gpt, "partition 2");
    let qcow = dir.path().join("gpt.qcow2");
    util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        gpt.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    check(&qcow, "partition 2");
    let text = inspect_text(&qcow);
    assert!(
        text.contains("linux:      partition 2: ext4, UUID")
            && text.contains("  root:     Debian GNU/Linux 12 (bookworm)")
            && text.contains(&format!(
                "architecture {}, kernels: 6.1.0-99-test",
                std::env::consts::ARCH
            )),
        "{text}"
    );

    // The library: the same through inspect_image, and find_linux on the opened image.
    let report = diskconv::inspect::inspect_image(&qcow, &diskconv::OpenOptions::new()).unwrap();
    let roots: Vec<_> = report.linux.roots().collect();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].1.distribution.id, "debian");
    assert!(report.linux.probably_linux());
}

#[test]
fn ext2_and_ext3_with_older_release_files() {
    if !(util::require("mke2fs") && util::require("debugfs")) {
        return;
    }
    let dir = util::tmpdir();
    // ext2: only /etc/redhat-release (CentOS 7 style), /bin/sh through a relative link into
    // /usr/bin as on merged-/usr systems.
    let t2 = dir.path().join("t2");
    std::fs::create_dir_all(t2.join("etc")).unwrap();
    std::fs::create_dir_all(t2.join("usr/bin")).unwrap();
    std::fs::write(
        t2.join("etc/redhat-release"),
        "CentOS Linux release 7.9.2009 (Core)\n",
    )
    .unwrap();
    std::fs::copy("/bin/sh", t2.join("usr/bin/bash")).unwrap();
    // A hostile /etc/os-release: a link to itself. The next file is read instead.
    std::os::unix::fs::symlink("os-release", t2.join("etc/os-release")).unwrap();
    std::os::unix::fs::symlink("usr/bin", t2.join("bin")).unwrap();
    std::os::unix::fs::symlink("bash", t2.join("usr/bin/sh")).unwrap();
    let fs2 = dir.path().join("ext2.img");
    mkfs_ext("ext2", &t2, &fs2, 8);
    assert!(debugfs(&fs2, "cat /etc/redhat-release").contains("CentOS Linux release 7.9.2009"));
    let j = inspect_json(&fs2);
    let v = &linux_volumes(&j)[0];
    assert_eq!(v["fs"]["kind"], "ext2");
    let d = &v["root"]["distribution"];
    assert_eq!(d["id"], "centos");
    assert_eq!(d["version"], "7.9.2009");
    assert_eq!(d["source"], "/etc/redhat-release");
    assert_eq!(v["root"]["arch"], std::env::consts::ARCH);
    assert_eq!(v["root"]["kernels"], serde_json::json!([]));

    // ext3: /etc/lsb-release and /etc/debian_version (an old Ubuntu): lsb-release wins.
    let t3 = dir.path().join("t3");
    std::fs::create_dir_all(t3.join("etc")).unwrap();
    std::fs::write(
        t3.join("etc/lsb-release"),
        "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=12.04\nDISTRIB_CODENAME=precise\n\
         DISTRIB_DESCRIPTION=\"Ubuntu 12.04.5 LTS\"\n",
    )
    .unwrap();
    std::fs::write(t3.join("etc/debian_version"), "wheezy/sid\n").unwrap();
    let fs3 = dir.path().join("ext3.img");
    mkfs_ext("ext3", &t3, &fs3, 8);
    let j = inspect_json(&fs3);
    let v = &linux_volumes(&j)[0];
    assert_eq!(v["fs"]["kind"], "ext3");
    let d = &v["root"]["distribution"];
    assert_eq!(
        (d["id"].as_str(), d["version"].as_str()),
        (Some("ubuntu"), Some("12.04"))
    );
    assert_eq!(d["pretty_name"], "Ubuntu 12.04.5 LTS");
    assert!(v["root"]["arch"].is_null());

    // A separate /boot (no /etc): not a root, its kernels listed.
    let tb = dir.path().join("tb");
    std::fs::create_dir_all(&tb).unwrap();
    std::fs::write(tb.join("vmlinuz-5.14.0-1.el9.x86_64"), b"k").unwrap();
    let fsb = dir.path().join("boot.img");
    mkfs_ext("ext4", &tb, &fsb, 8);
    let j = inspect_json(&fsb);
    let v = &linux_volumes(&j)[0];
    assert!(v["root"].is_null());
    assert_eq!(
        v["boot_kernels"],
        serde_json::json!(["5.14.0-1.el9.x86_64"])
    );
    assert!(
        v["note"].as_str().unwrap().contains("not a Linux root"),
        "{v:#}"
    );
}

#[test]
fn xfs_without_a_release_file_is_read_not_a_root() {
    if !util::require("mkfs.xfs") {
        return;
    }
    let dir = util::tmpdir();
    for (opts, kind) in [(&[][..], "xfs-v5"), (&["-m", "crc=0"][..], "xfs-v4")] {
        let img = dir.path().join("xfs.raw");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(300 << 20).unwrap(); // mkfs.xfs 6.x refuses less than 300 MiB
        drop(f);
        run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-L", "rootfs"])
            .args(opts)
            .arg(&img));
        let j = inspect_json(&img);
        let v = &linux_volumes(&j)[0];
        assert_eq!(v["fs"]["kind"], kind);
        assert_eq!(v["fs"]["label"], "rootfs");
        assert!(v["root"].is_null());
        assert!(
            v["note"]
                .as_str()
                .unwrap()
                .contains("without /etc/os-release or a release file: not a Linux root"),
            "{v:#}"
        );
        let report = diskconv::inspect::inspect_image(&img, &diskconv::OpenOptions::new()).unwrap();
        assert!(report.linux.probably_linux());
        assert_eq!(report.linux.roots().count(), 0);
    }
}

/// Runs `lvm ARGS` (device-mapper not used: this sandbox may have none).
fn lvm(args: &[&str]) -> String {
    let out = Command::new("lvm")
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lvm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loop devices and a volume group removed when the test ends, whatever happens.
struct LvmGuard {
    loops: Vec<String>,
    vg: String,
}

impl Drop for LvmGuard {
    fn drop(&mut self) {
        let _ = Command::new("lvm")
            .args(["vgremove", "-f", "-y", "--driverloaded", "n", &self.vg])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output();
        for l in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(l).output();
        }
    }
}

#[test]
fn lvm_linear_lv_is_read_striped_lv_is_reported() {
    if !(util::require("lvm")
        && util::require("loop-device")
        && util::require("mke2fs")
        && util::require("sfdisk"))
    {
        return;
    }
    let dir = util::tmpdir();
    let vg = format!("dcvg{}", std::process::id());
    let mut guard = LvmGuard {
        loops: Vec::new(),
        vg: vg.clone(),
    };
    // Two PVs, each a file on a loop device.
    let mut pv_files = Vec::new();
    for (i, mib) in [(0, 24u64), (1, 8)] {
        let p = dir.path().join(format!("pv{i}.img"));
        std::fs::File::create(&p)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(&p));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        guard.loops.push(dev);
        pv_files.push(p);
    }
    let (a, b) = (guard.loops[0].clone(), guard.loops[1].clone());
    let nodm = ["--driverloaded", "n"];
    lvm(&["pvcreate", "-q", &a, &b]);
    lvm(&["vgcreate", "-q", "-s", "1M", &vg, &a, &b]);
    let lvcreate = |extra: &[&str]| {
        let mut args = vec!["lvcreate", "-q", "-an", "-Zn", "-y"];
        args.extend_from_slice(&nodm);
        args.extend_from_slice(extra);
        lvm(&args);
    };
    // root: 8 MiB on PV a, then another LV, then root grown by 4 MiB: two linear segments.
    lvcreate(&["-L", "8M", "-n", "root", &vg, &a]);
    lvcreate(&["-L", "2M", "-n", "other", &vg, &a]);
    {
        let mut args = vec!["lvextend", "-q", "-L", "12M"];
        args.extend_from_slice(&nodm);
        let name = format!("{vg}/root");
        args.push(&name);
        args.push(&a);
        lvm(&args);
    }
    // data: striped over both PVs.
    lvcreate(&["-L", "4M", "-i", "2", "-I", "64k", "-n", "data", &vg]);
    // Where lvm2 put root's extents: `lvs --segments` (the oracle of the mapping).
    let segs = lvm(&[
        "lvs",
        "--noheadings",
        "--segments",
        "--separator",
        ";",
        "-o",
        "lv_name,seg_start_pe,seg_pe_ranges",
        &vg,
    ]);
    let pe_start: u64 = lvm(&[
        "pvs",
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "pe_start",
        &a,
    ])
    .trim()
    .parse()
    .unwrap();
    let mut root_segs = Vec::new(); // (first LV extent, first PV extent, count)
    for line in segs.lines() {
        let f: Vec<&str> = line.trim().split(';').collect();
        if f.first() != Some(&"root") {
            continue;
        }
        let start: u64 = f[1].parse().unwrap();
        let range = f[2].rsplit(':').next().unwrap();
        let (x, y) = range.split_once('-').unwrap();
        let (x, y): (u64, u64) = (x.parse().unwrap(), y.parse().unwrap());
        root_segs.push((start, x, y - x + 1));
    }
    assert_eq!(root_segs.len(), 2, "lvs: {segs}");
    // An ext4 root written into root's extents where lvm2 says they are (with a persistent
    // network rule for `inject linux` to remove at the end).
    let tree = debian_tree(dir.path());
    // The tree's one-byte initrd is no initramfs: `inject linux` would refuse it by name.
    std::fs::remove_file(tree.join("boot/initrd.img-6.1.0-99-test")).unwrap();
    std::fs::create_dir_all(tree.join("etc/udev/rules.d")).unwrap();
    std::fs::write(
        tree.join("etc/udev/rules.d/70-persistent-net.rules"),
        "SUBSYSTEM==\"net\", ATTR{address}==\"00:50:56:01:02:03\", NAME=\"eth0\"\n",
    )
    .unwrap();
    let fs = dir.path().join("fs.img");
    mkfs_ext("ext4", &tree, &fs, 12);
    let fs_bytes = std::fs::read(&fs).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut pv = std::fs::OpenOptions::new()
            .write(true)
            .open(&pv_files[0])
            .unwrap();
        for &(lv_pe, pv_pe, n) in &root_segs {
            let src = &fs_bytes[(lv_pe << 20) as usize..((lv_pe + n) << 20) as usize];
            pv.seek(SeekFrom::Start(pe_start + (pv_pe << 20))).unwrap();
            pv.write_all(src).unwrap();
        }
    }
    // The guest disk: a GPT with the two PVs as partitions 1 and 2.
    let disk = dir.path().join("lvm.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
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
                b"label: gpt\nstart=2048, size=49152, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n\
                  start=51200, size=16384, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
            )
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    copy_into(&pv_files[0], &disk, 2048 * 512);
    copy_into(&pv_files[1], &disk, 51200 * 512);
    drop(guard); // the VG and the loop devices go; the disk keeps its copy

    let j = inspect_json(&disk);
    let vols = linux_volumes(&j);
    let find = |loc: &str| {
        vols.iter()
            .find(|v| v["location"].as_str().is_some_and(|l| l.starts_with(loc)))
            .unwrap_or_else(|| panic!("no {loc} in {j:#}"))
    };
    let p1 = find("partition 1");
    assert_eq!(p1["fs"]["kind"], "lvm2-pv");
    assert_eq!(p1["vg"], vg.as_str());
    let root = find(&format!("LV {vg}/root"));
    assert_eq!(root["location"], format!("LV {vg}/root (on partition 1)"));
    assert_eq!(root["size"], 12u64 << 20);
    assert_eq!(root["fs"]["kind"], "ext4");
    assert_eq!(root["root"]["distribution"]["id"], "debian");
    assert_eq!(
        root["root"]["kernels"],
        serde_json::json!(["6.1.0-99-test"])
    );
    let data = find(&format!("LV {vg}/data"));
    assert!(data["root"].is_null());
    let note = data["note"].as_str().unwrap();
    assert!(
        note.starts_with("logical volume not read") && note.contains("2 stripe(s)"),
        "{note}"
    );
    // `other` holds no file system: listed with its size.
    let other = find(&format!("LV {vg}/other"));
    assert_eq!(other["size"], 2u64 << 20);
    assert!(other["fs"].is_null());
    assert_eq!(other["note"], "no Linux file system recognised on it");
    let text = inspect_text(&disk);
    assert!(
        text.contains(&format!("linux:      LV {vg}/root (on partition 1): ext4")),
        "{text}"
    );

    // `inject linux` writes the root through the LV's two segments: the file system read back
    // from where lvm2 put its extents is clean (e2fsck) and has the rule removed (debugfs).
    let out = util::diskconv()
        .args(["inject", "linux", "--target", "kvm"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("LV {vg}/root")), "{stdout}");
    let bytes = std::fs::read(&disk).unwrap();
    let mut back = vec![0u8; 12 << 20];
    for &(lv_pe, pv_pe, n) in &root_segs {
        let at = (2048 * 512 + pe_start + (pv_pe << 20)) as usize;
        let len = (n << 20) as usize;
        back[(lv_pe << 20) as usize..(lv_pe << 20) as usize + len]
            .copy_from_slice(&bytes[at..at + len]);
    }
    let back_img = dir.path().join("root-after.img");
    std::fs::write(&back_img, &back).unwrap();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&back_img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let ls = run(Command::new("debugfs")
        .args(["-R", "ls /etc/udev/rules.d"])
        .arg(&back_img));
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("70-persistent-net.rules"),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
}

#[test]
fn damaged_and_truncated_ext4_give_notes_not_panics() {
    if !util::require("mke2fs") {
        return;
    }
    let dir = util::tmpdir();
    let tree = debian_tree(dir.path());
    let fs = dir.path().join("fs.img");
    mkfs_ext("ext4", &tree, &fs, 8);
    let good = std::fs::read(&fs).unwrap();

    // A corrupt superblock (s_log_block_size = 40), the magic kept: found, not read.
    let mut bad = good.clone();
    bad[1024 + 0x18..1024 + 0x1C].copy_from_slice(&40u32.to_le_bytes());
    let img = dir.path().join("bad-sb.img");
    std::fs::write(&img, &bad).unwrap();
    let j = inspect_json(&img);
    let v = &linux_volumes(&j)[0];
    assert!(v["root"].is_null());
    let note = v["note"].as_str().unwrap();
    assert!(note.starts_with("ext4 not read: "), "{note}");

    // Truncated to 1 MiB: the inode tables are gone.
    let img = dir.path().join("short.img");
    std::fs::write(&img, &good[..1 << 20]).unwrap();
    let j = inspect_json(&img);
    let v = &linux_volumes(&j)[0];
    assert!(v["root"].is_null());
    assert!(
        v["note"].as_str().unwrap().starts_with("ext4 not read: "),
        "{v:#}"
    );

    // A sweep of damage over the metadata blocks, in process: no panic escapes.
    let mut rng = util::Rng::new(17);
    for _ in 0..300 {
        let mut d = good.clone();
        for _ in 0..8 {
            let at = 1024 + rng.below(64 << 10) as usize;
            d[at] = rng.next() as u8;
        }
        let disk = std::sync::Arc::new(diskconv::storage::MemStorage::from_vec(d));
        let vols = diskconv::guest::partition::find_volumes(&*disk).unwrap();
        let _ = diskconv::inspect::linux::find_linux(disk, &vols);
    }
}

/// `blkid -p -o export IMG` (libblkid's low-level probe, no cache): KEY=value pairs.
fn blkid(img: &Path) -> Vec<(String, String)> {
    let out = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(img));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("\\ ", " ")))
        .collect()
}

#[test]
fn every_kind_and_uuid_and_label_as_blkid_sees_them() {
    if !(util::require("mke2fs")
        && util::require("mkfs.xfs")
        && util::require("mkfs.btrfs")
        && util::require("cryptsetup")
        && util::require("mkswap")
        && util::require("blkid"))
    {
        return;
    }
    let dir = util::tmpdir();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = |name: &str, mib: u64| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        p
    };
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    for kind in ["ext2", "ext3", "ext4"] {
        let p = file(&format!("{kind}.img"), 8);
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", kind, "-L", kind, "-d"])
            .arg(&empty)
            .arg(&p));
        cases.push((p, kind));
    }
    let p = file("xfs.img", 300);
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-L", "x5"])
        .arg(&p));
    cases.push((p, "xfs-v5"));
    let p = file("btrfs.img", 128);
    run(Command::new("mkfs.btrfs").args(["-q", "-L", "bt"]).arg(&p));
    cases.push((p, "btrfs"));
    for (t, kind) in [("luks1", "luks1"), ("luks2", "luks2")] {
        let p = file(&format!("{t}.img"), 20);
        let key = dir.path().join("key");
        std::fs::write(&key, b"not a secret").unwrap();
        let mut c = Command::new("cryptsetup");
        c.args(["luksFormat", "-q", "--type", t, "--key-file"])
            .arg(&key)
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
        if t == "luks2" {
            c.args(["--label", "lk"]);
        }
        run(c.arg(&p));
        cases.push((p, kind));
    }
    let p = file("swap.img", 8);
    run(Command::new("mkswap").args(["-L", "sw"]).arg(&p));
    cases.push((p, "swap"));

    for (img, kind) in &cases {
        let b = blkid(img);
        let get = |k: &str| b.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let j = inspect_json(img);
        let vols = linux_volumes(&j);
        assert_eq!(vols.len(), 1, "{kind}: {j:#}");
        let fs = &vols[0]["fs"];
        assert_eq!(fs["kind"], *kind, "{kind}: {j:#}");
        // blkid's TYPE: ext2/3/4, xfs, btrfs, crypto_LUKS (with VERSION), swap.
        let blkid_kind = match get("TYPE").as_deref() {
            Some("crypto_LUKS") => format!("luks{}", get("VERSION").unwrap_or_default()),
            Some("xfs") => "xfs-v5".to_string(),
            Some(t) => t.to_string(),
            None => String::new(),
        };
        assert_eq!(blkid_kind, *kind, "blkid: {b:?}");
        assert_eq!(
            fs["uuid"].as_str().map(str::to_string),
            get("UUID"),
            "{kind}"
        );
        assert_eq!(
            fs["label"].as_str().map(str::to_string),
            get("LABEL"),
            "{kind}"
        );
        let note = vols[0]["note"].as_str().unwrap_or("");
        match *kind {
            "luks1" | "luks2" => assert!(note.starts_with("encrypted (LUKS")),
            "swap" => assert!(note.is_empty()),
            _ => assert!(note.contains("not a Linux root"), "{note}"),
        }
    }
}

/// The preflight's operating-system check names the Linux root it found (distribution,
/// architecture, where), in text and JSON; an XFS root is found but not read (a warning).
#[test]
fn preflight_names_the_linux_root() {
    if !(util::require("mke2fs") && util::require("sfdisk")) {
        return;
    }
    let dir = util::tmpdir();
    let tree = debian_tree(dir.path());
    let fs = dir.path().join("fs.img");
    mkfs_ext("ext4", &tree, &fs, 16);
    let mbr = dir.path().join("mbr.raw");
    partitioned(&fs, &mbr, "dos");
    let out = util::diskconv()
        .args(["preflight", "--target", "kvm", "--json"])
        .arg(&mbr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let os = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "os")
        .unwrap();
    assert_eq!(os["status"], "pass", "{os:#}");
    let reason = os["reason"].as_str().unwrap();
    assert!(
        reason.contains("Debian GNU/Linux 12 (bookworm)"),
        "{reason}"
    );
    assert!(reason.contains("partition 1"), "{reason}");
    assert!(reason.contains(std::env::consts::ARCH), "{reason}");
    let found = &j["operating_systems"][0];
    assert_eq!(found["kind"], "linux", "{j:#}");
    assert_eq!(found["partition"], 1);

    if util::require("mkfs.xfs") {
        let xfs = dir.path().join("xfs.img");
        std::fs::File::create(&xfs)
            .unwrap()
            .set_len(300 << 20)
            .unwrap();
        run(Command::new("mkfs.xfs").arg("-q").arg(&xfs));
        let out = util::diskconv()
            .args(["preflight", "--target", "kvm"])
            .arg(&xfs)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{text}");
        let line = text.lines().find(|l| l.contains(" os ")).unwrap_or("");
        assert!(line.trim_start().starts_with("WARN"), "{text}");
        assert!(text.contains("XFS"), "{text}");
    }
}
