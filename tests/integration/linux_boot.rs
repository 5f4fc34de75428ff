//! The Linux boot proof (issue 17): a guest whose initramfs lacks virtio boots under qemu from
//! an IDE disk but not from a virtio disk; with virtio modules appended to its initramfs (by
//! hand here, by `diskconv inject linux --target kvm` in the final test) it boots from virtio.
//! The fixture and the qemu runner are in [`crate::linux_fixture`]; the pieces come from
//! `.ci/boot-oracles`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::linux_fixture::{self as fx, BootOracles, Fixture, MARKER};
use crate::util;

/// The pieces and a built fixture in a fresh folder, or `None` when something is missing.
fn setup() -> Option<(BootOracles, tempfile::TempDir, Fixture)> {
    let o = BootOracles::get()?;
    if !fx::require_tools() {
        return None;
    }
    let dir = util::tmpdir();
    let f = fx::build(&o, dir.path());
    Some((o, dir, f))
}

/// Asserts the boot reached the root's init with the root on `dev` and powered off.
fn assert_booted(b: &fx::Boot, dev: &str) {
    let line = b
        .marker_line()
        .unwrap_or_else(|| panic!("no marker `{MARKER}` on the console of {}", b.tail()));
    assert!(
        line.contains(&format!("(root={dev} ")),
        "the root file system is not on {dev}: {line}\n{}",
        b.tail()
    );
    assert!(b.ended, "the guest did not power off: {}", b.tail());
}

/// Asserts the boot stopped in the initramfs because the root device never appeared.
fn assert_root_not_found(b: &fx::Boot) {
    assert!(
        b.marker_line().is_none(),
        "the root's init ran: {}",
        b.tail()
    );
    assert!(
        b.console
            .contains(&format!("ALERT!  UUID={} does not exist", fx::ROOT_UUID)),
        "initramfs-tools did not report the missing root: {}",
        b.tail()
    );
    assert!(b.ended, "panic=-1 did not end the boot: {}", b.tail());
}

/// The file paths `lsinitramfs` lists in `initrd`.
fn lsinitramfs(initrd: &Path) -> Vec<String> {
    let out = util::run(Command::new("lsinitramfs").arg(initrd));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The fixture is what it claims: its initramfs (read out of the image) holds the IDE/AHCI
/// and ext4 modules and no virtio module, the kernel has virtio_blk as a module (not built in)
/// and the guest's /lib/modules has it; and it boots from an IDE disk to its root's init.
#[test]
fn fixture_boots_from_ide() {
    let Some((o, dir, f)) = setup() else { return };
    let initrd = dir.path().join("initrd.img");
    fx::dump(&f.raw, &f.initrd_path(), &initrd);
    let files = lsinitramfs(&initrd);
    for m in ["ahci.ko", "ata_piix.ko", "sd_mod.ko", "ext4.ko"] {
        assert!(
            files.iter().any(|p| p.ends_with(&format!("/{m}"))),
            "the initramfs lacks {m}"
        );
    }
    let virtio: Vec<&String> = files.iter().filter(|p| p.contains("virtio")).collect();
    assert!(virtio.is_empty(), "the initramfs has virtio: {virtio:?}");
    let builtin = fx::debugfs(
        &f.raw,
        false,
        &format!("cat /lib/modules/{}/modules.builtin", f.version),
    );
    assert!(
        builtin.contains("kernel/fs/unicode/utf8data.ko"),
        "{builtin}"
    );
    assert!(!builtin.contains("virtio"), "virtio is built in: {builtin}");
    let ls = fx::debugfs(
        &f.raw,
        false,
        &format!("ls /lib/modules/{}/kernel/drivers/block", f.version),
    );
    assert!(ls.contains("virtio_blk.ko"), "{ls}");
    let fstab = fx::debugfs(&f.raw, false, "cat /etc/fstab");
    assert!(fstab.contains("/dev/sda1 / ext4"), "{fstab}");

    let b = fx::boot(&o, &f.qcow2, "qcow2", "ide", dir.path(), "ide", &[]);
    assert_booted(&b, "/dev/sda1");
}

/// The same disk on virtio: the initramfs has no driver for it, waits for the root and gives
/// up (initramfs-tools' `ALERT! ... does not exist`); the root's init never runs.
#[test]
fn fixture_does_not_boot_from_virtio() {
    let Some((o, dir, f)) = setup() else { return };
    let b = fx::boot(&o, &f.qcow2, "qcow2", "virtio", dir.path(), "virtio", &[]);
    assert_root_not_found(&b);
}

/// What is appended to the initramfs: a newc archive (GNU
/// `cpio -o -H newc`, which pads it to 512 bytes) of the virtio modules the guest's
/// /lib/modules has (with their dependencies), the guest's modules.* indexes and a
/// conf/modules that is the initramfs's own plus virtio_pci and virtio_blk. Paths are under
/// `usr/lib/modules` and there is no `lib` entry: the initramfs is merged-/usr (`lib ->
/// usr/lib`), and a `lib` folder entry would replace that link (the kernel's `clean_path`
/// removes an existing entry of another type; not tried here).
fn virtio_archive(f: &Fixture, initrd: &Path, work: &Path) -> Vec<u8> {
    let unpacked = work.join("unpacked");
    util::run(Command::new("unmkinitramfs").arg(initrd).arg(&unpacked));
    // One archive unpacks into the folder itself, several into early/, main/...
    let conf = [
        unpacked.join("conf/modules"),
        unpacked.join("main/conf/modules"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("conf/modules in the initramfs");
    let mut modules_list = std::fs::read_to_string(conf).unwrap();
    modules_list.push_str("virtio_pci\nvirtio_blk\n");

    let extra = work.join("extra");
    let mods = Path::new("usr/lib/modules").join(&f.version);
    for rel in fx::module_closure(&f.modules(), &f.version, &["virtio_pci", "virtio_blk"]) {
        let to = extra.join(&mods).join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f.modules().join(&rel), to).unwrap();
    }
    for e in std::fs::read_dir(f.modules()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("modules.") {
            std::fs::copy(e.path(), extra.join(&mods).join(&name)).unwrap();
        }
    }
    std::fs::create_dir_all(extra.join("conf")).unwrap();
    std::fs::write(extra.join("conf/modules"), modules_list).unwrap();

    // Every path, parents first, for cpio's stdin.
    let mut names: Vec<PathBuf> = Vec::new();
    let mut stack = vec![PathBuf::from("usr"), PathBuf::from("conf")];
    while let Some(rel) = stack.pop() {
        let p = extra.join(&rel);
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        names.push(rel);
    }
    names.sort();
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(&extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio");
    let mut stdin = cpio.stdin.take().unwrap();
    let list: String = names.iter().map(|n| format!("{}\n", n.display())).collect();
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()).unwrap());
    let out = cpio.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "cpio: {out:?}");
    assert_eq!(out.stdout.len() % 512, 0, "GNU cpio pads to 512 bytes");
    out.stdout
}

/// How the virtio archive is appended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Append {
    /// Uncompressed, after zero bytes up to a multiple of 4.
    Aligned,
    /// Uncompressed, at an offset that is not a multiple of 4.
    Unaligned,
    /// Compressed as one zstd frame (libzstd, through the zstd crate), right after the main
    /// archive (the kernel takes a compressed stream at any offset).
    Zstd,
}

/// The initramfs of the fixture with the virtio archive appended (`how`), put in place of
/// `/boot/initrd.img-VER` in the raw disk (debugfs `rm` + `write`, `e2fsck -fn`). The
/// appended archive is listed with `cpio -t`.
fn append_virtio(f: &Fixture, work: &Path, how: Append) {
    let initrd = work.join("initrd.orig");
    fx::dump(&f.raw, &f.initrd_path(), &initrd);
    let mut bytes = std::fs::read(&initrd).unwrap();
    let archive = virtio_archive(f, &initrd, work);
    match how {
        Append::Aligned => bytes.resize(bytes.len().next_multiple_of(4), 0),
        // Zero bytes are skipped (and counted) by the kernel: two of them put the archive at
        // an offset that is 2 mod 4.
        Append::Unaligned if bytes.len() % 4 == 0 => bytes.extend_from_slice(&[0, 0]),
        Append::Unaligned | Append::Zstd => {}
    }
    let at = bytes.len();
    if how == Append::Zstd {
        bytes.extend_from_slice(&zstd::encode_all(&archive[..], 3).unwrap());
    } else {
        bytes.extend_from_slice(&archive);
    }
    let new = work.join("initrd.new");
    std::fs::write(&new, &bytes).unwrap();
    // The appended part as GNU cpio reads it (lsinitramfs cannot: initramfs-tools'
    // unmkinitramfs pipes everything after the early archives through one decompressor, which
    // stops at the end of the zstd frame, and fails).
    let mut cpio = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio");
    let mut stdin = cpio.stdin.take().unwrap();
    let tail = if how == Append::Zstd {
        zstd::decode_all(&bytes[at..]).unwrap()
    } else {
        bytes[at..].to_vec()
    };
    let writer = std::thread::spawn(move || stdin.write_all(&tail).unwrap());
    let out = cpio.wait_with_output().unwrap();
    writer.join().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("drivers/block/virtio_blk.ko"),
        "cpio -t of the appended archive: {listed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if how == Append::Zstd {
        // initramfs-tools reads it (the main archive only), where it fails on the others.
        let files = lsinitramfs(&new);
        assert!(files.iter().any(|p| p == "conf/modules"), "{files:?}");
    }
    let name = f.initrd_path();
    let (dir, file) = name.rsplit_once('/').unwrap();
    fx::replace(&f.raw, dir, file, &new);
}

/// By hand, the mechanism `inject linux` uses: a newc archive with the virtio modules, the
/// module indexes and conf/modules, appended (4-byte aligned) after the zstd-compressed main
/// archive of the guest's initramfs; the disk (converted to qcow2) then boots from virtio.
#[test]
fn appended_newc_archive_boots_from_virtio() {
    let Some((o, dir, f)) = setup() else { return };
    append_virtio(&f, dir.path(), Append::Aligned);
    let qcow2 = dir.path().join("appended.qcow2");
    fx::to_qcow2(&f.raw, &qcow2);
    let b = fx::boot(&o, &qcow2, "qcow2", "virtio", dir.path(), "appended", &[]);
    assert_booted(&b, "/dev/vda1");
    assert!(
        !b.console.contains("Initramfs unpacking failed"),
        "{}",
        b.tail()
    );
}

/// The same archive appended at an offset that is not a multiple of 4: the kernel
/// (init/initramfs.c) only takes a cpio header at a 4-byte aligned offset, so it reports `Initramfs unpacking failed: invalid magic at start of
/// compressed archive`, and keeps only what it unpacked before (no virtio). The boot is
/// stopped at that message.
#[test]
fn unaligned_appended_archive_is_ignored() {
    let Some((o, dir, f)) = setup() else { return };
    append_virtio(&f, dir.path(), Append::Unaligned);
    let failed = "Initramfs unpacking failed: invalid magic at start of compressed archive";
    let b = fx::boot(
        &o,
        &f.raw,
        "raw",
        "virtio",
        dir.path(),
        "unaligned",
        &[failed],
    );
    assert!(b.console.contains(failed), "{}", b.tail());
    assert!(b.marker_line().is_none(), "{}", b.tail());
}

/// The same archive compressed with zstd and appended as a second compressed stream also
/// boots from virtio (this keeps initramfs-tools' `lsinitramfs` working on the result, though it
/// lists only the main archive).
#[test]
fn appended_zstd_archive_boots_from_virtio() {
    let Some((o, dir, f)) = setup() else { return };
    append_virtio(&f, dir.path(), Append::Zstd);
    let b = fx::boot(&o, &f.raw, "raw", "virtio", dir.path(), "zstd", &[]);
    assert_booted(&b, "/dev/vda1");
    assert!(
        !b.console.contains("Initramfs unpacking failed"),
        "{}",
        b.tail()
    );
}

/// The final proof: `diskconv inject linux IMG.qcow2 --target kvm` on the fixture, which then
/// boots from a virtio disk to its root's init.
#[test]
fn inject_linux_kvm_boots_with_virtio() {
    let Some((o, dir, f)) = setup() else { return };
    // Before: the preflight fails on the boot driver and names the fix; inspect says where
    // virtio_blk is (a module on disk, not in the initramfs).
    let (code, j) = preflight_json(&f.qcow2);
    assert_eq!(code, Some(3), "{j:#}");
    let c = check(&j, "boot-driver");
    assert_eq!(c["status"], "fail", "{j:#}");
    assert!(
        c["fix"].as_str().unwrap().contains("diskconv inject linux"),
        "{c:#}"
    );
    assert_eq!(virtio_blk_state(&f.qcow2), "on-disk");
    let out = util::diskconv()
        .args(["inject", "linux"])
        .arg(&f.qcow2)
        .args(["--target", "kvm"])
        .output()
        .expect("diskconv");
    assert!(
        out.status.success(),
        "diskconv inject linux --target kvm failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    util::assert_qemu_check(&f.qcow2);
    let raw = fx::raw_copy(&f.qcow2, "qcow2", dir.path());
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(fx::root_fs(&raw))
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -fn after inject: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // What the boot reads is the proof; here only that the initramfs changed.
    let before = dir.path().join("initrd.before");
    fx::dump(&f.raw, &f.initrd_path(), &before);
    let after = dir.path().join("initrd.injected");
    fx::dump(&raw, &f.initrd_path(), &after);
    assert_ne!(
        std::fs::read(&before).unwrap(),
        std::fs::read(&after).unwrap(),
        "inject linux left {} as it was",
        f.initrd_path()
    );
    // After: in the initramfs; the preflight's boot-driver check passes.
    assert_eq!(virtio_blk_state(&f.qcow2), "in-initramfs");
    let (_, j) = preflight_json(&f.qcow2);
    assert_eq!(check(&j, "boot-driver")["status"], "pass", "{j:#}");
    let b = fx::boot(&o, &f.qcow2, "qcow2", "virtio", dir.path(), "injected", &[]);
    assert_booted(&b, "/dev/vda1");
}

/// `diskconv preflight --target kvm --json IMG`: its exit code and report.
fn preflight_json(img: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = util::diskconv()
        .args(["preflight", "--target", "kvm", "--json"])
        .arg(img)
        .output()
        .expect("diskconv preflight");
    let j = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "preflight JSON: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), j)
}

/// The first check with this id.
fn check<'a>(j: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no {id} check: {j:#}"))
}

/// Where `diskconv inspect --json` says virtio_blk stands for the fixture's kernel.
fn virtio_blk_state(img: &std::path::Path) -> String {
    let out = util::diskconv()
        .args(["inspect", "--json"])
        .arg(img)
        .output()
        .expect("diskconv inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = j["linux"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["root"].as_object())
        .unwrap_or_else(|| panic!("no Linux root: {j:#}"));
    let k = &root["kernel_files"][0];
    k["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "virtio_blk")
        .unwrap_or_else(|| panic!("virtio_blk not reported: {k:#}"))["state"]["state"]
        .as_str()
        .unwrap_or_else(|| panic!("{k:#}"))
        .to_string()
}
