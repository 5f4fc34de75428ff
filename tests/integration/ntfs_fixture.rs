//! Test fixtures built from scratch for the NTFS and Windows-injection tests (never committed):
//! NTFS volumes made by `mkntfs` and populated by ntfs-3g (folders through its FUSE mount,
//! files with `ntfscp`), GPT (ESP + MSR + NTFS, `sgdisk`) and MBR (active NTFS, `sfdisk`) disks
//! holding them, SYSTEM / SOFTWARE hives (corpus hives, or built with our hive library from
//! virt-v2v's `.reg` facts), and fake virtio-win trees (folder and `xorriso` ISO) laid out like
//! the real ISO's file list.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::hive::reg::{self, ParseOptions};
use diskconv::guest::hive::{Hive, RegData};

use crate::util::{self, Rng, run};

/// Every tool the fixtures use; false (skip) when one is missing outside CI.
pub(crate) fn require_tools() -> bool {
    [
        "mkntfs",
        "ntfscp",
        "ntfscat",
        "ntfsls",
        "ntfsfix",
        "ntfsinfo",
        "ntfs-3g",
        "umount",
        "dd",
        "sgdisk",
        "sfdisk",
        "qemu-img",
        "hivexregedit",
        "hivexget",
        "xorriso",
    ]
    .iter()
    .all(|t| util::require(t))
}

/// Makes an NTFS volume file of `size` bytes with `mkntfs` (quick format, `cluster` bytes per
/// cluster, label `label`), recording `start_sector` as its partition offset (hidden sectors).
pub(crate) fn mkntfs(path: &Path, size: u64, cluster: u32, label: &str, start_sector: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    run(Command::new("mkntfs")
        .args(["-F", "-Q", "-q", "-s", "512", "-H", "255", "-S", "63"])
        .args(["-c", &cluster.to_string(), "-L", label])
        .args(["-p", &start_sector.to_string()])
        .arg(path));
}

/// Creates folders (`/`-separated, parents first) on the NTFS volume file `vol` through the
/// ntfs-3g FUSE mount (ntfscp cannot create folders).
pub(crate) fn ntfs_mkdirs(vol: &Path, dirs: &[&str]) {
    let mnt = util::tmpdir();
    run(Command::new("ntfs-3g").arg(vol).arg(mnt.path()));
    let res = std::panic::catch_unwind(|| {
        for d in dirs {
            std::fs::create_dir_all(mnt.path().join(d)).unwrap();
        }
    });
    run(Command::new("umount").arg(mnt.path()));
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
}

/// Copies `data` to `dest` (`/`-separated; its folder must exist) on the volume with `ntfscp`.
pub(crate) fn ntfs_put(vol: &Path, dest: &str, data: &[u8]) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), data).unwrap();
    run(Command::new("ntfscp")
        .arg("-f")
        .arg(vol)
        .arg(tmp.path())
        .arg(dest));
}

/// The content of `path` (`/`-separated) on the volume, read with `ntfscat`.
pub(crate) fn ntfs_cat(vol: &Path, path: &str) -> Vec<u8> {
    run(Command::new("ntfscat").arg(vol).arg(path)).stdout
}

/// The names in a folder of the volume, listed by `ntfsls` (DOS names omitted).
pub(crate) fn ntfs_ls(vol: &Path, dir: &str) -> Vec<String> {
    let out = run(Command::new("ntfsls").arg("-p").arg(dir).arg(vol));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "." && l != "..")
        .collect()
}

/// Asserts that `ntfsfix -n` (no-action check) and `ntfsinfo -m` accept the volume.
pub(crate) fn assert_ntfs_sound(vol: &Path) {
    let out = Command::new("ntfsfix").arg("-n").arg(vol).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ntfsfix -n failed: {text}");
    assert!(
        text.contains("processed successfully"),
        "ntfsfix -n: {text}"
    );
    let out = Command::new("ntfsinfo")
        .arg("-m")
        .arg(vol)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ntfsinfo -m failed: {text}");
    assert!(text.contains("Volume Flags: 0x0000"), "ntfsinfo -m: {text}");
}

/// Sets the dirty flag (0x0001) of `$VOLUME_INFORMATION` in MFT record 3 (`$Volume`) of the
/// volume file, as Windows leaves it when the volume was not unmounted cleanly. The byte is
/// not one that fixups cover, so the record stays valid.
pub(crate) fn set_ntfs_dirty(vol: &Path) {
    set_ntfs_dirty_at(vol, 0);
    // ntfsinfo refuses a dirty volume unless forced (-f).
    let out = Command::new("ntfsinfo")
        .args(["-f", "-m"])
        .arg(vol)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Volume Flags: 0x0001"), "{text}");
}

/// Like [`set_ntfs_dirty`] for the volume at byte `base` of the file (a partition of a disk).
/// Record 3 is one of the records `$MFTMirr` mirrors: both copies are patched, as Windows does.
pub(crate) fn set_ntfs_dirty_at(img: &Path, base: usize) {
    let mut b = std::fs::read(img).unwrap();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let lcn = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let cluster = u16_at(&b, base + 11) * b[base + 13] as usize;
    let rec_size = match b[base + 64] as i8 {
        n if n < 0 => 1usize << (-n),
        n => n as usize * cluster,
    };
    let mft = base + lcn(&b, base + 48) * cluster;
    let mirr = base + lcn(&b, base + 56) * cluster;
    for table in [mft, mirr] {
        let rec = table + 3 * rec_size;
        assert_eq!(&b[rec..rec + 4], b"FILE", "MFT record 3 at {rec:#x}");
        let mut a = rec + u16_at(&b, rec + 0x14);
        loop {
            let t = u32_at(&b, a);
            assert_ne!(t, 0xffff_ffff, "$Volume has no $VOLUME_INFORMATION");
            if t == 0x70 {
                let v = a + u16_at(&b, a + 0x14);
                b[v + 10] |= 1;
                break;
            }
            let len = u32_at(&b, a + 4) as usize;
            assert!(
                len >= 16 && a + len < rec + rec_size,
                "attribute at {a:#x} has length {len}"
            );
            a += len;
        }
    }
    std::fs::write(img, b).unwrap();
}

/// The hives of a Windows installation to put in `Windows/System32/config`.
pub(crate) struct WinHives {
    /// SYSTEM.
    pub system: Vec<u8>,
    /// Its transaction logs (file name, content), e.g. `SYSTEM.LOG1`.
    pub system_logs: Vec<(String, Vec<u8>)>,
    /// SOFTWARE.
    pub software: Vec<u8>,
}

impl WinHives {
    /// The SYSTEM hive as our library sees it (logs replayed), to compare against.
    pub fn system_replayed(&self) -> Hive {
        let logs: Vec<(PathBuf, Vec<u8>)> = self
            .system_logs
            .iter()
            .map(|(n, d)| (PathBuf::from(n), d.clone()))
            .collect();
        Hive::from_bytes_with_logs(self.system.clone(), &logs, false).unwrap()
    }
}

/// A SOFTWARE hive built with our hive library from the facts of virt-v2v's
/// `win10-software.reg` (Windows 10 Enterprise 1809, build 17763), with `overrides` of
/// `Microsoft\Windows NT\CurrentVersion` values set on top (and `remove` values deleted).
pub(crate) fn software_hive(overrides: &[(&str, RegData)], remove: &[&str]) -> Option<Vec<u8>> {
    let reg_file = util::corpus("hives/virt-v2v/win10-software.reg")?;
    let text = std::fs::read(reg_file).unwrap();
    let ops = reg::parse_with(
        &text,
        &ParseOptions {
            require_header: false,
        },
    )
    .unwrap();
    let mut h = Hive::new("ROOT").unwrap();
    reg::import(&mut h, &ops, "HKEY_LOCAL_MACHINE\\SOFTWARE").unwrap();
    let cv = h
        .create_key("Microsoft\\Windows NT\\CurrentVersion")
        .unwrap();
    for (n, d) in overrides {
        h.set_data(cv, n, d).unwrap();
    }
    for n in remove {
        h.delete_value(cv, n).unwrap();
    }
    Some(h.to_bytes())
}

/// Windows 10 (1809, amd64): the corpus's dirty `SYSTEM_B` with its `.LOG1`/`.LOG2` (the
/// injection must replay them) and the SOFTWARE of [`software_hive`].
pub(crate) fn win10_hives() -> Option<WinHives> {
    let system = std::fs::read(util::corpus("hives/regipy/SYSTEM_B")?).unwrap();
    let log1 = std::fs::read(util::corpus("hives/regipy/SYSTEM_B.LOG1")?).unwrap();
    let log2 = std::fs::read(util::corpus("hives/regipy/SYSTEM_B.LOG2")?).unwrap();
    Some(WinHives {
        system,
        system_logs: vec![("SYSTEM.LOG1".into(), log1), ("SYSTEM.LOG2".into(), log2)],
        software: software_hive(&[], &[])?,
    })
}

/// Windows 7 (x86): the corpus's `SYSTEM` (no DriverDatabase) and a SOFTWARE that says 6.1
/// (no CurrentMajorVersionNumber, as Windows 7 writes it).
pub(crate) fn win7_hives() -> Option<WinHives> {
    let system = std::fs::read(util::corpus("hives/regipy/SYSTEM")?).unwrap();
    let software = software_hive(
        &[
            ("ProductName", RegData::Sz("Windows 7 Professional".into())),
            ("CurrentVersion", RegData::Sz("6.1".into())),
            ("CurrentBuild", RegData::Sz("7601".into())),
            ("CurrentBuildNumber", RegData::Sz("7601".into())),
            ("EditionID", RegData::Sz("Professional".into())),
        ],
        &["CurrentMajorVersionNumber", "CurrentMinorVersionNumber"],
    )?;
    Some(WinHives {
        system,
        system_logs: Vec::new(),
        software,
    })
}

/// A small SYSTEM hive built with our library: `Select\Current` = 1, `ControlSet001` with the
/// session environment (`arch`), `Setup` (SetupType `setup_type`), and a `DriverDatabase` when
/// `driver_database`.
pub(crate) fn small_system_hive(arch: &str, driver_database: bool, setup_type: u32) -> Vec<u8> {
    let mut h = Hive::new("ROOT").unwrap();
    let sel = h.create_key("Select").unwrap();
    h.set_data(sel, "Current", &RegData::Dword(1)).unwrap();
    h.create_key("ControlSet001\\Services").unwrap();
    let env = h
        .create_key("ControlSet001\\Control\\Session Manager\\Environment")
        .unwrap();
    h.set_data(env, "PROCESSOR_ARCHITECTURE", &RegData::Sz(arch.into()))
        .unwrap();
    let setup = h.create_key("Setup").unwrap();
    h.set_data(setup, "SetupType", &RegData::Dword(setup_type))
        .unwrap();
    h.set_data(setup, "CmdLine", &RegData::Sz(String::new()))
        .unwrap();
    if driver_database {
        h.create_key("DriverDatabase\\DriverInfFiles").unwrap();
        h.create_key("DriverDatabase\\DeviceIds").unwrap();
        h.create_key("DriverDatabase\\DriverPackages").unwrap();
    }
    h.to_bytes()
}

/// An NTFS volume file of `size` bytes holding `Windows\System32\config` with the hives, plus
/// `Windows\System32\drivers`, and `extra` files (path, content) whose folders are in `dirs`.
pub(crate) fn windows_volume(
    path: &Path,
    size: u64,
    start_sector: u64,
    hives: &WinHives,
    extra: &[(&str, Vec<u8>)],
) {
    mkntfs(path, size, 4096, "Windows", start_sector);
    ntfs_mkdirs(
        path,
        &["Windows/System32/config", "Windows/System32/drivers"],
    );
    ntfs_put(path, "Windows/System32/config/SYSTEM", &hives.system);
    for (name, data) in &hives.system_logs {
        ntfs_put(path, &format!("Windows/System32/config/{name}"), data);
    }
    ntfs_put(path, "Windows/System32/config/SOFTWARE", &hives.software);
    for (p, d) in extra {
        ntfs_put(path, p, d);
    }
}

/// The partitioning of a fixture disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// GPT: EFI System Partition, Microsoft Reserved, then the NTFS data partition (3).
    Gpt,
    /// MBR: one active NTFS partition (1).
    Mbr,
}

/// Where the NTFS partition of a fixture disk is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placed {
    /// Partition number.
    pub number: u32,
    /// Byte offset.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The start sector the NTFS partition of `layout` gets (for `mkntfs -p`).
pub(crate) fn ntfs_start_sector(layout: Layout) -> u64 {
    match layout {
        Layout::Gpt => 2048 + 4096 + 4096, // after a 2 MiB ESP and a 2 MiB MSR
        Layout::Mbr => 2048,
    }
}

/// Writes a raw disk at `disk` holding the NTFS volume file `vol` in the partition `layout`
/// puts it in (tables made by `sgdisk` / `sfdisk`, the volume copied in with `dd
/// conv=notrunc`), and returns where it went (read back with `sfdisk --json`).
pub(crate) fn disk_with_volume(layout: Layout, disk: &Path, vol: &Path) -> Placed {
    let vol_len = std::fs::metadata(vol).unwrap().len();
    assert_eq!(vol_len % 512, 0);
    let start = ntfs_start_sector(layout);
    // Room after the partition for the backup GPT.
    let disk_len = (start * 512 + vol_len + (1 << 20)).div_ceil(1 << 20) << 20;
    let f = std::fs::File::create(disk).unwrap();
    f.set_len(disk_len).unwrap();
    drop(f);
    let sectors = vol_len / 512;
    let number = match layout {
        Layout::Gpt => {
            run(Command::new("sgdisk")
                .args([
                    "-n",
                    "1:2048:+2M",
                    "-t",
                    "1:ef00",
                    "-c",
                    "1:EFI system partition",
                ])
                .args([
                    "-n",
                    "2:0:+2M",
                    "-t",
                    "2:0c01",
                    "-c",
                    "2:Microsoft reserved partition",
                ])
                .args([
                    "-n",
                    &format!("3:{start}:{}", start + sectors - 1),
                    "-t",
                    "3:0700",
                    "-c",
                    "3:Basic data partition",
                ])
                .arg(disk));
            3
        }
        Layout::Mbr => {
            use std::io::Write;
            let mut child = Command::new("sfdisk")
                .arg("--no-reread")
                .arg("--no-tell-kernel")
                .arg(disk)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(
                    format!("label: dos\nstart={start}, size={sectors}, type=7, bootable\n")
                        .as_bytes(),
                )
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "sfdisk: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            1
        }
    };
    let out = run(Command::new("sfdisk").arg("--json").arg(disk));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = j["partitiontable"]["partitions"].as_array().unwrap();
    let p = &parts[number as usize - 1];
    let placed = Placed {
        number,
        start: p["start"].as_u64().unwrap() * 512,
        len: p["size"].as_u64().unwrap() * 512,
    };
    assert_eq!(placed.start, start * 512);
    assert_eq!(placed.len, vol_len);
    run(Command::new("dd")
        .arg(format!("if={}", vol.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", placed.start))
        .arg("oflag=seek_bytes"));
    placed
}

/// Converts the raw disk to `fmt` (`raw` copies) with `qemu-img convert`.
pub(crate) fn convert_to(raw: &Path, fmt: &str, out: &Path) {
    util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        fmt,
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

/// Converts an image of format `fmt` to a raw file with `qemu-img convert`.
pub(crate) fn convert_to_raw(img: &Path, fmt: &str, out: &Path) {
    util::qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

/// Extracts the partition `p` of the image `img` (format `fmt`) to the file `out`: `qemu-img
/// convert` to raw, then `dd skip`.
pub(crate) fn extract_partition(img: &Path, fmt: &str, p: Placed, out: &Path) {
    let dir = util::tmpdir();
    let raw = dir.path().join("disk.raw");
    util::qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=1M", "status=none", "iflag=skip_bytes,count_bytes"])
        .arg(format!("skip={}", p.start))
        .arg(format!("count={}", p.len)));
    assert_eq!(std::fs::metadata(out).unwrap().len(), p.len);
}

/// Content for a fake driver file: an INF text for `.inf`, pseudo-random bytes otherwise
/// (`size` of them, seeded by the path).
fn fake_content(rel: &str, size: usize) -> Vec<u8> {
    if rel.to_ascii_lowercase().ends_with(".inf") {
        return format!(
            "; fake INF for tests: {rel}\r\n[Version]\r\nSignature=\"$WINDOWS NT$\"\r\n\
             Class=SCSIAdapter\r\nClassGUID={{4D36E97B-E325-11CE-BFC1-08002BE10318}}\r\n"
        )
        .into_bytes();
    }
    let seed = rel.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    Rng::new(seed).bytes(size)
}

/// Builds a fake virtio-win tree at `root` from the real ISO's file list (corpus
/// `virtio-win/virt-v2v_virtio-win-iso-list.txt`, paths under `cd/`), keeping the files
/// `keep` accepts; `.sys` files get `sys_size` bytes, others a few KiB. Returns the relative
/// paths written.
pub(crate) fn fake_virtio_tree(
    root: &Path,
    keep: &dyn Fn(&str) -> bool,
    sys_size: usize,
) -> Option<Vec<String>> {
    let list = util::corpus("virtio-win/virt-v2v_virtio-win-iso-list.txt")?;
    let text = std::fs::read_to_string(list).unwrap();
    let mut written = Vec::new();
    for line in text.lines() {
        let Some(rel) = line.trim().strip_prefix("cd/") else {
            continue;
        };
        if rel.is_empty() || !keep(rel) {
            continue;
        }
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let size = if rel.to_ascii_lowercase().ends_with(".sys") {
            sys_size
        } else {
            1000 + rel.len() * 37
        };
        std::fs::write(&p, fake_content(rel, size)).unwrap();
        written.push(rel.to_string());
    }
    Some(written)
}

/// The storage and network drivers of the real ISO (its `<driver>/<os>/<arch>/` folders of
/// viostor, vioscsi and NetKVM, every os and arch), enough for the injection tests.
pub(crate) fn keep_storage_and_net(rel: &str) -> bool {
    ["viostor/", "vioscsi/", "NetKVM/"]
        .iter()
        .any(|p| rel.starts_with(p))
}

/// Makes an ISO 9660 image with Joliet and Rock Ridge names of the folder `tree` with
/// `xorriso` (as the real virtio-win ISO is).
pub(crate) fn make_iso(tree: &Path, iso: &Path) {
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-J", "-R", "-V", "virtio-win", "-o"])
        .arg(iso)
        .arg(tree));
}

/// The fixtures themselves, checked with the tools that made them and with sleuthkit.
#[test]
fn ntfs_fixture_builds_windows_disks() {
    if !require_tools() || !util::require("fls") {
        return;
    }
    let Some(hives) = win10_hives() else { return };
    let dir = util::tmpdir();
    for layout in [Layout::Gpt, Layout::Mbr] {
        let vol = dir.path().join("vol.ntfs");
        let disk = dir.path().join("disk.raw");
        windows_volume(
            &vol,
            40 << 20,
            ntfs_start_sector(layout),
            &hives,
            &[("Windows/System32/drivers/x.sys", b"x".to_vec())],
        );
        assert_ntfs_sound(&vol);
        let placed = disk_with_volume(layout, &disk, &vol);
        // sleuthkit finds the hives inside the partition of the disk.
        let out = run(Command::new("fls")
            .args(["-r", "-p", "-o", &(placed.start / 512).to_string()])
            .arg(&disk));
        let listing = String::from_utf8_lossy(&out.stdout);
        for f in [
            "Windows/System32/config/SYSTEM",
            "Windows/System32/config/SYSTEM.LOG1",
            "Windows/System32/config/SOFTWARE",
            "Windows/System32/drivers/x.sys",
        ] {
            assert!(listing.contains(f), "{layout:?}: {f} missing:\n{listing}");
        }
        let qcow = dir.path().join("disk.qcow2");
        convert_to(&disk, "qcow2", &qcow);
        let back = dir.path().join("back.ntfs");
        extract_partition(&qcow, "qcow2", placed, &back);
        assert_eq!(
            ntfs_cat(&back, "Windows/System32/config/SYSTEM"),
            hives.system,
            "{layout:?}"
        );
        assert!(ntfs_ls(&back, "/Windows/System32").contains(&"config".to_string()));
    }
    let tree = dir.path().join("tree");
    let files = fake_virtio_tree(&tree, &keep_storage_and_net, 3000).unwrap();
    assert!(files.contains(&"viostor/w10/amd64/viostor.sys".to_string()));
    let iso = dir.path().join("virtio.iso");
    make_iso(&tree, &iso);
    let out = run(Command::new("xorriso").args(["-indev"]).arg(&iso).args([
        "-find",
        "/viostor/w7/x86",
        "-type",
        "f",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("viostor.sys"), "{text}");
}
