//! `diskconv inject linux` on guests built here: an MBR disk (sfdisk) whose partition 1 is an
//! ext4 root made by `mke2fs -d` from a tree in the shape of a VMware Debian guest (fstab by
//! device path, a persistent-net rule, open-vm-tools started by a systemd link), and an XFS
//! root made by `mkfs.xfs -p`. e2fsprogs checks what was written (`e2fsck -fn`, `debugfs`),
//! blkid gives the UUID the fix must use; the image is byte-identical after a dry run, a
//! refusal, and a second run. The boot proof is in `linux_boot`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, run};

/// Partition 1 starts at 1 MiB.
const PART_OFFSET: u64 = 1 << 20;
/// Its size.
const PART_MIB: u64 = 24;

fn write(tree: &Path, rel: &str, text: &str) {
    let p = tree.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A Debian guest's tree, as VMware left it.
fn guest_tree(tree: &Path) {
    write(
        tree,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"12\"\nID=debian\n",
    );
    write(
        tree,
        "etc/fstab",
        "# /etc/fstab: static file system information.\n\
         /dev/sda1  /      ext4  errors=remount-ro  0  1\n\
         proc       /proc  proc  defaults           0  0\n",
    );
    write(
        tree,
        "etc/udev/rules.d/70-persistent-net.rules",
        "SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", \
         ATTR{address}==\"00:50:56:aa:bb:cc\", NAME=\"eth0\"\n",
    );
    write(tree, "usr/bin/vmtoolsd", "#!/bin/sh\n");
    write(
        tree,
        "lib/systemd/system/open-vm-tools.service",
        "[Unit]\nDescription=Service for virtual machines hosted on VMware\n\
         [Service]\nExecStart=/usr/bin/vmtoolsd\n[Install]\nWantedBy=multi-user.target\n",
    );
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/open-vm-tools.service",
        wants.join("open-vm-tools.service"),
    )
    .unwrap();
    write(tree, "bin/sh", "\x7fELF\x02\x01\x01");
}

/// An MBR disk with `part` (a file system image) as partition 1.
fn disk_with(part: &Path, disk: &Path) {
    let len = std::fs::metadata(part).unwrap().len();
    let f = std::fs::File::create(disk).unwrap();
    f.set_len(PART_OFFSET + len).unwrap();
    drop(f);
    let mut sf = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(
        sf.stdin.as_mut().unwrap(),
        "label: dos\nstart=2048, size={}, type=83",
        len / 512
    )
    .unwrap();
    assert!(sf.wait().unwrap().success());
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]));
}

/// Partition 1 of `disk` copied out.
fn partition(disk: &Path, out: &Path) -> PathBuf {
    run(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=1M", "skip=1", "status=none"]));
    out.to_path_buf()
}

fn ext4_guest(dir: &Path) -> (PathBuf, String) {
    let tree = dir.join("tree");
    guest_tree(&tree);
    let part = dir.join("root.ext4");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&part)
        .arg(format!("{PART_MIB}M")));
    let uuid = String::from_utf8(
        run(Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(&part))
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let disk = dir.join("guest.raw");
    disk_with(&part, &disk);
    (disk, uuid)
}

fn inject(img: &Path, extra: &[&str]) -> std::process::Output {
    util::diskconv()
        .args(["inject", "linux"])
        .arg(img)
        .args(["--target", "kvm"])
        .args(extra)
        .output()
        .unwrap()
}

fn debugfs(part: &Path, req: &str) -> String {
    let out = run(Command::new("debugfs").args(["-R", req]).arg(part));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tools_ok() -> bool {
    ["mke2fs", "debugfs", "e2fsck", "blkid", "sfdisk", "dd"]
        .iter()
        .all(|t| util::require(t))
}

/// The dry run prints every change with before and after and writes nothing; the real run
/// makes them (e2fsck clean, the new fstab names the root by the UUID blkid reads, the rule
/// and the tools' start link gone); a second run finds nothing to do.
#[test]
fn ext4_guest_fixed_by_plan_then_idempotent() {
    if !tools_ok() {
        return;
    }
    let dir = util::tmpdir();
    let (disk, uuid) = ext4_guest(dir.path());
    let before = util::sha256_file(&disk);

    let out = inject(&disk, &["--dry-run", "--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["written"], false);
    assert_eq!(j["root_volume"], "partition 1", "{j:#}");
    let changes = j["changes"].as_array().unwrap();
    let by_path = |p: &str| changes.iter().find(|c| c["path"] == p);
    let fstab = by_path("/etc/fstab").unwrap_or_else(|| panic!("{j:#}"));
    assert_eq!(fstab["action"], "replace");
    assert!(fstab["before"].as_str().unwrap().contains("/dev/sda1"));
    assert!(
        fstab["after"]
            .as_str()
            .unwrap()
            .contains(&format!("UUID={uuid}  /")),
        "{fstab:#}"
    );
    assert_eq!(
        by_path("/etc/udev/rules.d/70-persistent-net.rules").unwrap()["action"],
        "remove"
    );
    assert_eq!(
        by_path("/etc/systemd/system/multi-user.target.wants/open-vm-tools.service").unwrap()["action"],
        "remove-link",
        "{j:#}"
    );
    // No kernel in this guest: nothing for the initramfs, said so.
    assert!(j["kernel"].is_null());
    assert_eq!(
        util::sha256_file(&disk),
        before,
        "a dry run wrote to the image"
    );

    // The human form names the same changes.
    let out = inject(&disk, &["--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/etc/fstab"), "{text}");
    assert!(text.contains("dry run: nothing written"), "{text}");

    let out = inject(&disk, &[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("written"));
    let part = partition(&disk, &dir.path().join("after.ext4"));
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let fstab = debugfs(&part, "cat /etc/fstab");
    assert!(fstab.contains(&format!("UUID={uuid}  /")), "{fstab}");
    assert!(fstab.contains("# /etc/fstab: static"), "{fstab}");
    assert!(!fstab.contains("/dev/sda1"), "{fstab}");
    let rules = debugfs(&part, "ls -l /etc/udev/rules.d");
    assert!(!rules.contains("70-persistent-net.rules"), "{rules}");
    let wants = debugfs(&part, "ls -l /etc/systemd/system/multi-user.target.wants");
    assert!(!wants.contains("open-vm-tools"), "{wants}");
    // The unit itself stays: only its start link is removed.
    assert!(debugfs(&part, "cat /lib/systemd/system/open-vm-tools.service").contains("vmtoolsd"));

    let after = util::sha256_file(&disk);
    let out = inject(&disk, &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nothing to write"), "{text}");
    assert_eq!(
        util::sha256_file(&disk),
        after,
        "a second run changed the image"
    );
}

/// A root whose journal needs recovery is refused before anything is written.
#[test]
fn ext4_needing_journal_recovery_is_refused() {
    if !tools_ok() {
        return;
    }
    let dir = util::tmpdir();
    let tree = dir.path().join("tree");
    guest_tree(&tree);
    let part = dir.path().join("root.ext4");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&part)
        .arg(format!("{PART_MIB}M")));
    run(Command::new("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&part));
    let disk = dir.path().join("guest.raw");
    disk_with(&part, &disk);
    let before = util::sha256_file(&disk);
    let out = inject(&disk, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_ne!(out.status.code(), Some(101), "panic: {err}");
    assert!(err.contains("journal needs recovery"), "{err}");
    assert_eq!(util::sha256_file(&disk), before);
}

/// An XFS root: the plan is printed (dry run), a real run is refused with a message naming
/// XFS and the image stays as it was.
#[test]
fn xfs_root_is_planned_and_refused() {
    if !tools_ok() || !util::require("mkfs.xfs") {
        return;
    }
    let dir = util::tmpdir();
    let tree = dir.path().join("tree");
    guest_tree(&tree);
    // mkfs.xfs -p PROTOFILE: the tree's files (no links: protofile links need their targets).
    let proto = dir.path().join("proto");
    let f = |rel: &str| tree.join(rel).display().to_string();
    std::fs::write(
        &proto,
        format!(
            "/dev/null\n0 0\nd--755 0 0\n\
             etc d--755 0 0\n\
             os-release ---644 0 0 {}\n\
             fstab ---644 0 0 {}\n\
             udev d--755 0 0\nrules.d d--755 0 0\n\
             70-persistent-net.rules ---644 0 0 {}\n$\n$\n$\n\
             bin d--755 0 0\nsh ---755 0 0 {}\n$\n$\n",
            f("etc/os-release"),
            f("etc/fstab"),
            f("etc/udev/rules.d/70-persistent-net.rules"),
            f("bin/sh")
        ),
    )
    .unwrap();
    let part = dir.path().join("root.xfs");
    std::fs::File::create(&part)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-p"])
        .arg(&proto)
        .arg(&part));
    let disk = dir.path().join("guest.raw");
    disk_with(&part, &disk);
    let before = util::sha256_file(&disk);

    let out = inject(&disk, &["--dry-run", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["root"].as_str().unwrap().contains("Debian"), "{j:#}");
    let changes = j["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["path"] == "/etc/fstab"), "{j:#}");

    let out = inject(&disk, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_ne!(out.status.code(), Some(101), "panic: {err}");
    assert!(err.contains("XFS"), "{err}");
    assert!(err.contains("cannot be written yet"), "{err}");
    assert_eq!(util::sha256_file(&disk), before);
}
