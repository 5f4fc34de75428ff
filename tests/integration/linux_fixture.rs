//! The Linux boot fixture: a small Debian-like guest whose initramfs lacks virtio, and the qemu
//! runner that boots it (see tests/README.md, "The Linux boot fixture").
//!
//! The pieces come from `.ci/boot-oracles` (condition `boot-oracles` of tests/oracles/tools.txt):
//! `qemu-system-x86_64` unpacked from Debian's packages with its firmware, the Debian kernel
//! (vmlinuz and modules) and a host-only initramfs made by initramfs-tools' `mkinitramfs`
//! (MODULES=list: ahci, sd_mod, ata_piix, ext4; zstd). [`build`] makes the disk:
//!
//! - a merged-/usr root (`bin`, `sbin`, `lib` -> `usr/...`) built with `mke2fs -t ext4 -d`:
//!   busybox-static as `/usr/bin/busybox` with a few links, `/sbin/init` a busybox shell script
//!   that prints [`MARKER`] and the root device on the serial console and powers off,
//!   `/etc/fstab` naming the root by device path (`/dev/sda1`), `/etc/os-release` (Debian 12),
//!   `/boot/vmlinuz-VER`, `/boot/initrd.img-VER` and `/lib/modules/VER` trimmed to the modules
//!   [`KEPT_MODULES`] need (`modprobe --show-depends`), indexed again with `depmod -b`;
//! - written at 1 MiB into a raw disk with one MBR partition (`sfdisk`), then converted to qcow2
//!   (`qemu-img convert`).
//!
//! The guest has no boot loader: [`boot`] plays its part, reading `/boot/vmlinuz-VER` and
//! `/boot/initrd.img-VER` out of the image itself (`debugfs dump`), so what boots is what the
//! image holds, and passing `root=UUID=...` as GRUB would.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::util;

/// What the fixture's `/sbin/init` prints on the console once the root file system runs it.
pub const MARKER: &str = "DISKCONV-BOOT-FIXTURE-7f3c: /sbin/init of the root file system runs";

/// The UUID of the fixture's ext4 root (`root=UUID=` on the kernel command line).
pub const ROOT_UUID: &str = "5d1b7c2e-8a4f-4e61-9b0d-3c2a1f6e9d47";

/// Byte offset of the root partition in the disk (sector 2048).
pub const PART_OFFSET: u64 = 1 << 20;

/// Size of the root file system (and of its partition).
pub const ROOT_SIZE: u64 = 64 << 20;

/// The modules kept in the guest's `/lib/modules/VER`, with what they depend on: the storage
/// and file system drivers of the host-only initramfs, and the virtio drivers an adaptation for
/// KVM adds to it.
pub const KEPT_MODULES: &[&str] = &[
    "ahci",
    "ata_piix",
    "sd_mod",
    "ext4",
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "virtio_net",
];

/// The busybox applets linked in `/usr/bin` (what `/sbin/init` uses, and a few to look around).
const APPLETS: &[&str] = &[
    "sh", "mount", "awk", "cat", "ls", "sync", "poweroff", "uname", "sleep",
];

/// What `.ci/boot-oracles` made.
#[derive(Debug, Clone)]
pub struct BootOracles {
    /// Its folder (`$DISKCONV_BOOT_ORACLES`, else target/boot-oracles).
    pub dir: PathBuf,
    /// The kernel version (`6.1.0-NN-amd64`).
    pub version: String,
}

impl BootOracles {
    /// The folder `.ci/boot-oracles` fills.
    pub fn folder() -> PathBuf {
        match std::env::var_os("DISKCONV_BOOT_ORACLES") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boot-oracles"),
        }
    }

    /// The pieces when they are all there, else what is missing.
    pub fn find() -> Result<BootOracles, String> {
        let dir = Self::folder();
        let ready = std::fs::read_to_string(dir.join("READY"))
            .map_err(|e| format!("has no {}: {e}", dir.join("READY").display()))?;
        let version = ready
            .lines()
            .find_map(|l| l.strip_prefix("kernel "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("{}: no `kernel VER` line", dir.join("READY").display()))?;
        let o = BootOracles { dir, version };
        for p in [
            o.qemu(),
            o.vmlinuz(),
            o.initrd(),
            o.modules().join("modules.dep"),
        ] {
            if !p.is_file() {
                return Err(format!("lacks {}", p.display()));
            }
        }
        Ok(o)
    }

    /// The pieces, or `None` (skipping with a reason; in CI a panic) when they are missing.
    pub fn get() -> Option<BootOracles> {
        if !util::require("boot-oracles") {
            return None;
        }
        Some(Self::find().expect("boot-oracles checked"))
    }

    /// The unpacked `qemu-system-x86_64`.
    pub fn qemu(&self) -> PathBuf {
        self.dir.join("qemu/usr/bin/qemu-system-x86_64")
    }

    /// qemu's loadable modules (TCG is one), for `QEMU_MODULE_DIR`.
    pub fn module_dir(&self) -> PathBuf {
        self.dir.join("qemu/usr/lib/x86_64-linux-gnu/qemu")
    }

    /// A qemu command with the firmware folders (`-L`) and the module folder.
    pub fn qemu_command(&self) -> Command {
        let mut cmd = Command::new(self.qemu());
        cmd.env("QEMU_MODULE_DIR", self.module_dir())
            .arg("-L")
            .arg(self.dir.join("qemu/usr/share/qemu"))
            .arg("-L")
            .arg(self.dir.join("qemu/usr/share/seabios"))
            .stdin(Stdio::null());
        cmd
    }

    /// The Debian kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join(format!("kernel/boot/vmlinuz-{}", self.version))
    }

    /// The kernel's whole `lib/modules/VER`, indexed.
    pub fn modules(&self) -> PathBuf {
        self.dir
            .join(format!("kernel/lib/modules/{}", self.version))
    }

    /// The host-only initramfs without virtio.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join(format!("initrd.img-{}", self.version))
    }
}

/// The tools the fixture and the boot tests run (each skips, or in CI fails, when missing).
pub fn require_tools() -> bool {
    [
        "busybox",
        "mke2fs",
        "sfdisk",
        "qemu-img",
        "debugfs",
        "e2fsck",
        "depmod",
        "modprobe",
        "lsinitramfs",
        "unmkinitramfs",
        "cpio",
    ]
    .iter()
    .all(|t| util::require(t))
}

/// A built fixture.
pub struct Fixture {
    /// The kernel version.
    pub version: String,
    /// The root tree the file system was made from.
    pub tree: PathBuf,
    /// The raw disk.
    pub raw: PathBuf,
    /// The same disk as qcow2.
    pub qcow2: PathBuf,
}

impl Fixture {
    /// `/boot/initrd.img-VER` in the guest.
    pub fn initrd_path(&self) -> String {
        format!("/boot/initrd.img-{}", self.version)
    }

    /// The guest's `/lib/modules/VER` in the tree it was made from.
    pub fn modules(&self) -> PathBuf {
        self.tree.join("usr/lib/modules").join(&self.version)
    }
}

/// Where a tool is on PATH.
fn which(tool: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH"))
}

/// The module files (relative to `modules`, the kernel's `lib/modules/VER`) that `names` need,
/// with their dependencies, as `modprobe --show-depends` resolves them.
pub fn module_closure(modules: &Path, version: &str, names: &[&str]) -> Vec<PathBuf> {
    // `modprobe -d ROOT` wants the folder that holds lib/modules.
    let root = modules
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("ROOT/lib/modules/VER");
    let canon = std::fs::canonicalize(modules).expect("modules folder");
    let mut out = Vec::new();
    for name in names {
        let o = util::run(Command::new("modprobe").arg("-d").arg(root).args([
            "-S",
            version,
            "--show-depends",
            name,
        ]));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                assert!(
                    !line.starts_with("builtin "),
                    "{name} is built into the kernel: {line}"
                );
                continue;
            };
            let path = std::fs::canonicalize(path.trim()).expect("module file");
            let rel = path
                .strip_prefix(&canon)
                .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), canon.display()))
                .to_path_buf();
            if !out.contains(&rel) {
                out.push(rel);
            }
        }
    }
    out
}

/// Copies `from` to `to`, making the parent folders.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}

/// Builds the fixture in `dir` (a fresh folder): the root tree, `disk.raw` and `disk.qcow2`.
pub fn build(o: &BootOracles, dir: &Path) -> Fixture {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let v = &o.version;
    let tree = dir.join("root");
    for d in [
        "usr/bin", "usr/sbin", "usr/lib", "etc", "boot", "dev", "proc", "sys", "run", "tmp",
        "root", "var",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    for (link, to) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        symlink(to, tree.join(link)).unwrap();
    }
    copy(&which("busybox"), &tree.join("usr/bin/busybox"));
    for a in APPLETS {
        symlink("busybox", tree.join("usr/bin").join(a)).unwrap();
    }
    let init = tree.join("usr/sbin/init");
    std::fs::write(
        &init,
        format!(
            "#!/bin/sh\n\
             # The diskconv boot fixture: prove the root file system was reached, then stop.\n\
             mount -t proc proc /proc 2>/dev/null\n\
             root=$(awk '$2 == \"/\" && $1 != \"rootfs\" {{ print $1 }}' /proc/mounts)\n\
             echo \"{MARKER} (root=$root kernel=$(uname -r))\" >/dev/console\n\
             sync\n\
             poweroff -f\n\
             sleep 60\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        tree.join("etc/fstab"),
        "# <file system> <mount point> <type> <options> <dump> <pass>\n\
         /dev/sda1 / ext4 errors=remount-ro 0 1\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
    )
    .unwrap();
    std::fs::write(tree.join("etc/hostname"), "bootfixture\n").unwrap();
    copy(&o.vmlinuz(), &tree.join(format!("boot/vmlinuz-{v}")));
    copy(&o.initrd(), &tree.join(format!("boot/initrd.img-{v}")));
    // /lib/modules/VER: the kept modules and the kernel's lists, indexed again by depmod.
    let modules = tree.join("usr/lib/modules").join(v);
    for rel in module_closure(&o.modules(), v, KEPT_MODULES) {
        copy(&o.modules().join(&rel), &modules.join(&rel));
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        copy(&o.modules().join(f), &modules.join(f));
    }
    util::run(Command::new("depmod").arg("-b").arg(&tree).arg(v));

    // The root file system, then the disk around it.
    let fs = dir.join("root.ext4");
    util::run(
        Command::new("mke2fs")
            .args([
                "-q", "-F", "-t", "ext4", "-L", "root", "-U", ROOT_UUID, "-d",
            ])
            .arg(&tree)
            .arg(&fs)
            .arg(format!("{}k", ROOT_SIZE >> 10)),
    );
    let raw = dir.join("disk.raw");
    {
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(PART_OFFSET + ROOT_SIZE + (1 << 20)).unwrap();
    }
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--label", "dos"])
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "start={}, size={}, type=83, bootable\n",
                PART_OFFSET / 512,
                ROOT_SIZE / 512
            )
            .as_bytes(),
        )
        .unwrap();
    let out = sfdisk.wait_with_output().unwrap();
    assert!(out.status.success(), "sfdisk: {out:?}");
    {
        let mut src = std::fs::File::open(&fs).unwrap();
        let mut dst = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        dst.seek(SeekFrom::Start(PART_OFFSET)).unwrap();
        std::io::copy(&mut src, &mut dst).unwrap();
    }
    std::fs::remove_file(&fs).unwrap();
    let qcow2 = dir.join("disk.qcow2");
    to_qcow2(&raw, &qcow2);
    Fixture {
        version: v.clone(),
        tree,
        raw,
        qcow2,
    }
}

/// `qemu-img convert -O qcow2 RAW OUT`.
pub fn to_qcow2(raw: &Path, out: &Path) {
    util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

/// The root file system of a raw disk as e2fsprogs opens it (`FILE?offset=N`).
pub fn root_fs(raw: &Path) -> String {
    format!("{}?offset={PART_OFFSET}", raw.display())
}

/// A raw copy of `img` (of format `format`) in `dir`.
pub fn raw_copy(img: &Path, format: &str, dir: &Path) -> PathBuf {
    let out = dir.join("copy.raw");
    util::qemu_img(&[
        "convert",
        "-f",
        format,
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

/// Runs debugfs request `req` on the root file system of raw disk `raw` (`-w`: writable),
/// failing when debugfs reports an error on stderr beyond its banner.
pub fn debugfs(raw: &Path, write: bool, req: &str) -> String {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let out = util::run(cmd.args(["-R", req]).arg(root_fs(raw)));
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(errors.is_empty(), "debugfs {req:?}: {}", errors.join("\n"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies guest file `guest` out of the root of raw disk `raw` into `out` (debugfs `dump`).
pub fn dump(raw: &Path, guest: &str, out: &Path) {
    debugfs(raw, false, &format!("dump {guest} {}", out.display()));
    assert!(out.is_file(), "debugfs wrote no {}", out.display());
}

/// Replaces guest file `guest` (in `/boot`-like folder `dir`, name `name`) of raw disk `raw`
/// with the local file `local` (debugfs `rm` then `write`), then checks the file system with
/// `e2fsck -fn` and reads the file back.
pub fn replace(raw: &Path, dir: &str, name: &str, local: &Path) {
    let mut cmds = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        cmds,
        "cd {dir}\nrm {name}\nwrite {} {name}",
        local.display()
    )
    .unwrap();
    let out = util::run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(cmds.path())
            .arg(root_fs(raw)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.lines()
            .any(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()),
        "debugfs rm/write: {err}"
    );
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(root_fs(raw))
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -fn after replacing {dir}/{name}: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let back = raw.with_extension("readback");
    dump(raw, &format!("{dir}/{name}"), &back);
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(local).unwrap(),
        "{dir}/{name} read back differs"
    );
    std::fs::remove_file(back).unwrap();
}

/// How a boot went.
#[derive(Debug)]
pub struct Boot {
    /// The serial console.
    pub console: String,
    /// Where it was written.
    pub log: PathBuf,
    /// Whether qemu ended by itself (guest power-off, or reboot with `-no-reboot`) rather than
    /// being killed at the timeout or after the marker.
    pub ended: bool,
    /// The seconds it took.
    pub secs: f64,
    /// Whether KVM was used (else TCG).
    pub kvm: bool,
}

impl Boot {
    /// The marker line, when the root's init printed it.
    pub fn marker_line(&self) -> Option<&str> {
        self.console.lines().find(|l| l.contains(MARKER))
    }

    /// The last lines of the console, for failure messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "{} ({:.1} s, {}, {}):\n{}",
            self.log.display(),
            self.secs,
            if self.kvm { "KVM" } else { "TCG" },
            if self.ended {
                "qemu ended"
            } else {
                "qemu killed"
            },
            lines[from..].join("\n")
        )
    }
}

/// One boot at a time: the machine has two cores, and a TCG boot needs one of them.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Whether KVM is used: `$DISKCONV_BOOT_ACCEL` (`kvm` or `tcg`) when set, else when /dev/kvm
/// opens and a probe boot (this kernel, no root: it panics and reboots at once) prints the
/// kernel's banner within 30 seconds. Some hosts have a /dev/kvm this qemu cannot use (nested
/// KVM on an AMD host here: `-cpu host` aborts on MSR 0x10a, other CPU models hang before
/// the kernel prints anything); the boots then use TCG.
pub fn kvm(o: &BootOracles) -> bool {
    static KVM: OnceLock<bool> = OnceLock::new();
    *KVM.get_or_init(|| {
        match std::env::var("DISKCONV_BOOT_ACCEL").as_deref() {
            Ok("kvm") => return true,
            Ok("tcg") => return false,
            _ => {}
        }
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            eprintln!("linux boot: no usable /dev/kvm, booting with TCG");
            return false;
        }
        let dir = util::tmpdir();
        let log = dir.path().join("probe.log");
        let mut cmd = o.qemu_command();
        cmd.args(["-M", "pc", "-m", "256", "-accel", "kvm", "-cpu", "host"])
            .args(QUIET_DEVICES)
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(o.vmlinuz())
            .args(["-append", "console=ttyS0 panic=-1 root=/dev/nothing"]);
        let run = run_qemu(&mut cmd, &log, Duration::from_secs(30), &["Kernel panic"]);
        let ok = run.console.contains("Linux version");
        if !ok {
            eprintln!(
                "linux boot: KVM does not boot this kernel here ({}; console: {:?}), booting with TCG",
                run.stderr.trim(),
                run.console.lines().last().unwrap_or("")
            );
        }
        ok
    })
}

/// The options that leave out what the boots do not need: no display, network or monitor,
/// and no reboot (a guest reboot ends qemu).
const QUIET_DEVICES: &[&str] = &[
    "-display",
    "none",
    "-vga",
    "none",
    "-nic",
    "none",
    "-monitor",
    "none",
    "-no-reboot",
];

/// What one qemu run left.
struct QemuRun {
    /// The serial console.
    console: String,
    /// qemu's stderr.
    stderr: String,
    /// Whether qemu ended by itself (else it was killed).
    ended: bool,
    /// How it ended, when it did.
    status: Option<std::process::ExitStatus>,
    /// The seconds it ran.
    secs: f64,
}

/// Runs qemu (`cmd`, serial console into `log`) until it ends, or kills it at `timeout` or
/// a few seconds after one of `stop` appears on the console.
fn run_qemu(cmd: &mut Command, log: &Path, timeout: Duration, stop: &[&str]) -> QemuRun {
    let err_path = log.with_extension("stderr");
    let err_file = std::fs::File::create(&err_path).unwrap();
    cmd.stdout(Stdio::null()).stderr(err_file);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut seen: Option<Instant> = None;
    let (ended, status) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (true, Some(status));
        }
        if seen.is_none() {
            let text = std::fs::read(log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            if stop.iter().any(|s| text.contains(s)) {
                seen = Some(Instant::now());
            }
        }
        let late = seen.is_some_and(|t| t.elapsed() > Duration::from_secs(5));
        if late || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break (false, None);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    QemuRun {
        console: String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        ended,
        status,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Boots disk image `disk` (format `format`, attached as `-drive if=IFACE`) with the kernel
/// and initramfs found in it (`/boot/vmlinuz-VER`, `/boot/initrd.img-VER`, read with debugfs,
/// as a boot loader would) and `root=UUID=ROOT_UUID`, the serial console in `work/NAME.log`.
/// qemu is killed at a timeout (longer under TCG), or a few seconds after the marker or one of
/// `stop` appears on the console.
pub fn boot(
    o: &BootOracles,
    disk: &Path,
    format: &str,
    iface: &str,
    work: &Path,
    name: &str,
    stop: &[&str],
) -> Boot {
    let raw = if format == "raw" {
        disk.to_path_buf()
    } else {
        raw_copy(disk, format, work)
    };
    let kernel = work.join(format!("{name}.vmlinuz"));
    let initrd = work.join(format!("{name}.initrd"));
    dump(&raw, &format!("/boot/vmlinuz-{}", o.version), &kernel);
    dump(&raw, &format!("/boot/initrd.img-{}", o.version), &initrd);
    if raw != disk {
        std::fs::remove_file(&raw).unwrap();
    }
    let log = work.join(format!("{name}.log"));
    let kvm = kvm(o);
    let mut cmd = o.qemu_command();
    cmd.args(["-M", "pc", "-m", "512", "-smp", "1"])
        .args(if kvm {
            ["-accel", "kvm", "-cpu", "host"]
        } else {
            ["-accel", "tcg", "-cpu", "max"]
        })
        .args(QUIET_DEVICES)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format={format},if={iface}",
            disk.display()
        ))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=UUID={ROOT_UUID} ro panic=-1 net.ifnames=0"
        ));
    let timeout = Duration::from_secs(if kvm { 120 } else { 400 });
    let mut stops = vec![MARKER];
    stops.extend_from_slice(stop);
    let _one = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_qemu(&mut cmd, &log, timeout, &stops);
    if let Some(status) = run.status {
        assert!(
            status.success(),
            "qemu failed ({status}): {}\n{cmd:?}",
            run.stderr
        );
    }
    Boot {
        console: run.console,
        log,
        ended: run.ended,
        secs: run.secs,
        kvm,
    }
}
