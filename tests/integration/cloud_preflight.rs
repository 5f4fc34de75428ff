//! `diskconv preflight` and `convert --target`: target artifacts checked with qemu-img (and the
//! VHD footer read byte by byte), refusals with their exit codes, the 4 KiB-sector, boot-mode,
//! backing-file and hibernation checks, and Windows fixtures (mkntfs / ntfs-3g volumes with
//! corpus hives) that fail for want of the target's boot driver and pass after
//! `diskconv inject windows`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::inject_windows::build_case;
use crate::ntfs_fixture::{self as fx, Layout, WinHives};
use crate::util::{self, diskconv, qemu_compare, qemu_img, run};

const MIB: u64 = 1 << 20;

/// A raw disk of `size` bytes partitioned by `sfdisk` from `script`.
pub fn partitioned(path: &Path, size: u64, script: &str) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub const GPT_UEFI: &str = "label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=10240, size=20480, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n";
const MBR_BIOS: &str = "label: dos\nstart=2048, size=20480, type=7, bootable\n";

/// Runs `diskconv preflight IMG --target T ARGS --json`: the exit code and the report.
fn preflight(img: &Path, target: &str, args: &[&str]) -> (i32, Value) {
    let out = diskconv()
        .arg("preflight")
        .arg(img)
        .args(["--target", target, "--json"])
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "preflight --json is not JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The exit code follows the report.
    assert_eq!(code == 3, v["status"] == "fail", "{v}");
    assert!(code == 0 || code == 3, "exit {code}: {v}");
    (code, v)
}

/// The check `id` of a report.
fn check<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {r}"))
}

fn status(r: &Value, id: &str) -> String {
    check(r, id)["status"].as_str().unwrap().to_string()
}

fn convert(args: &[&str]) -> Output {
    diskconv().arg("convert").args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The VHD footer (last 512 bytes): cookie, disk type and current size, checksum valid.
fn vhd_footer(p: &Path) -> (u32, u64) {
    let b = std::fs::read(p).unwrap();
    let f = &b[b.len() - 512..];
    assert_eq!(&f[..8], b"conectix");
    let disk_type = u32::from_be_bytes(f[60..64].try_into().unwrap());
    let current = u64::from_be_bytes(f[48..56].try_into().unwrap());
    let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
    let sum: u32 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, &x)| u32::from(x))
        .sum();
    assert_eq!(stored, !sum, "footer checksum");
    (disk_type, current)
}

/// Azure: an odd size is reported as rounded, and the converted VHD is fixed, a whole number
/// of MiB (qemu-img reads it as vpc of that size; the footer says type 2), equal to the source
/// with zeros after it; a 1 MiB source becomes 20 MiB. AWS: a streamOptimized VMDK (and an
/// OVA with `-O ova`).
#[test]
fn azure_and_aws_artifacts() {
    if !util::require("qemu-img") || !util::require("sfdisk") || !util::require("tar") {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("odd.raw");
    partitioned(&src, 64 * MIB + 512, MBR_BIOS);
    util::qemu_io(&["-f", "raw", "-c", "write -P 0x5a 1M 64k", s(&src)]);

    let (code, r) = preflight(&src, "azure", &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(status(&r, "size"), "warn");
    let reason = check(&r, "size")["reason"].as_str().unwrap();
    assert!(reason.contains("68157440 bytes (65 MiB)"), "{reason}");
    assert_eq!(status(&r, "boot-mode"), "pass", "{r}");
    assert_eq!(status(&r, "format"), "warn");

    let vhd = dir.path().join("out.vhd");
    let out = convert(&["--target", "azure", s(&src), s(&vhd)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("preflight of"), "the report is printed: {err}");
    let info: Value =
        serde_json::from_str(&qemu_img(&["info", "-f", "vpc", "--output=json", s(&vhd)])).unwrap();
    assert_eq!(info["virtual-size"], 65 * MIB);
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), 65 * MIB + 512);
    assert_eq!(vhd_footer(&vhd), (2, 65 * MIB), "fixed, 65 MiB");
    assert!(qemu_compare(&src, "raw", &vhd, "vpc"));

    let tiny = dir.path().join("tiny.raw");
    util::make_raw(&tiny, MIB, 7);
    let tvhd = dir.path().join("tiny.vhd");
    let out = convert(&["--target", "azure", s(&tiny), s(&tvhd)]);
    assert!(out.status.success());
    assert_eq!(vhd_footer(&tvhd), (2, 20 * MIB));
    assert!(qemu_compare(&tiny, "raw", &tvhd, "vpc"));

    let vmdk = dir.path().join("out.vmdk");
    let out = convert(&["--target", "aws", s(&src), s(&vmdk)]);
    assert!(out.status.success());
    let info = util::qemu_info(&vmdk);
    assert_eq!(info["format"], "vmdk");
    assert_eq!(
        info["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    assert!(qemu_compare(&src, "raw", &vmdk, "vmdk"));
    let ova = dir.path().join("out.ova");
    let out = convert(&["--target", "aws", "-O", "ova", s(&src), s(&ova)]);
    assert!(out.status.success());
    let list = run(Command::new("tar").arg("tf").arg(&ova));
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(names.lines().next().unwrap().ends_with(".ovf"), "{names}");

    // An explicit -o wins, with a warning naming the rule it breaks.
    let dynamic = dir.path().join("dyn.vhd");
    let out = convert(&[
        "--target",
        "azure",
        "-o",
        "subformat=dynamic",
        s(&src),
        s(&dynamic),
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: --target azure: -o subformat=dynamic overrides"),
        "{err}"
    );
    assert_eq!(vhd_footer(&dynamic).0, 3, "dynamic as asked");
}

/// Boot modes: a GPT/UEFI disk for a BIOS-only target (Hyper-V generation 1, which is what a
/// VHD boots on Hyper-V; Azure with --boot-mode bios, its generation 1) fails with exit 3, and
/// convert stops before writing anything unless --no-preflight; the same disk for a VHDX passes
/// (generation 2, with a warning to declare it).
#[test]
fn bios_only_targets_refuse_uefi_disks() {
    if !util::require("qemu-img") || !util::require("sfdisk") {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("uefi.raw");
    partitioned(&src, 32 * MIB, GPT_UEFI);
    let (code, r) = preflight(&src, "azure", &["--boot-mode", "bios"]);
    assert_eq!(code, 3);
    assert_eq!(status(&r, "boot-mode"), "fail");
    assert!(
        check(&r, "boot-mode")["fix"]
            .as_str()
            .unwrap()
            .contains("--boot-mode uefi")
    );
    let (code, r) = preflight(&src, "azure", &["--boot-mode", "uefi"]);
    assert_eq!((code, status(&r, "boot-mode").as_str()), (0, "pass"));
    let (code, r) = preflight(&src, "azure", &[]);
    assert_eq!((code, status(&r, "boot-mode").as_str()), (0, "warn"));

    let vhd = dir.path().join("gen1.vhd");
    let out = convert(&["--target", "hyperv", "-O", "vpc", s(&src), s(&vhd)]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FAIL  boot-mode"), "{err}");
    assert!(err.contains("generation 1"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!vhd.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary left"
    );
    let out = convert(&[
        "--target",
        "hyperv",
        "-O",
        "vpc",
        "--no-preflight",
        s(&src),
        s(&vhd),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAIL  boot-mode"));
    assert!(qemu_compare(&src, "raw", &vhd, "vpc"));
    let vhdx = dir.path().join("gen2.vhdx");
    let out = convert(&["--target", "hyperv", s(&src), s(&vhdx)]);
    assert!(out.status.success());
    assert_eq!(util::qemu_info(&vhdx)["format"], "vhdx");

    // A BIOS/MBR disk is fine for generation 1.
    let mbr = dir.path().join("bios.raw");
    partitioned(&mbr, 32 * MIB, MBR_BIOS);
    let (code, r) = preflight(&mbr, "hyperv", &["-f", "raw", "--boot-mode", "bios"]);
    assert_eq!((code, status(&r, "boot-mode").as_str()), (0, "pass"), "{r}");
    // A bad target or boot mode is a usage error.
    let out = diskconv()
        .args(["preflight", s(&mbr), "--target", "ec2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target 'ec2'"));
}

/// OpenStack: a qcow2 naming a backing file fails (Glance refuses it) and the fix, `convert
/// --target openstack`, writes a qcow2 naming no other file that reads the same.
#[test]
fn backing_file_for_openstack() {
    if !util::require("qemu-img") || !util::require("sfdisk") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("base.raw");
    partitioned(&raw, 16 * MIB, MBR_BIOS);
    let base = dir.path().join("base.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&base)]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    util::qemu_io(&["-c", "write -P 0x33 4M 64k", s(&top)]);
    let (code, r) = preflight(&top, "openstack", &[]);
    assert_eq!(code, 3);
    let c = check(&r, "references");
    assert_eq!(c["status"], "fail");
    assert!(c["reason"].as_str().unwrap().contains("base.qcow2"), "{c}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("diskconv convert --target openstack"),
        "{c}"
    );
    let out_img = dir.path().join("flat.qcow2");
    let out = convert(&["--target", "openstack", s(&top), s(&out_img)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = util::qemu_info(&out_img);
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert!(qemu_compare(&top, "qcow2", &out_img, "qcow2"));
    let (code, r) = preflight(&out_img, "openstack", &[]);
    assert_eq!((code, status(&r, "references").as_str()), (0, "pass"));
}

/// A disk laid out for 4096-byte sectors (GPT written through a 4 KiB loop device) in a VHDX
/// that records 4096-byte logical sectors: Hyper-V takes it, KVM warns, 512-byte targets fail.
#[test]
fn four_k_sectors() {
    if !util::require("qemu-img") || !util::require("sfdisk") || !util::require("loop-device") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("k4.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let out = run(Command::new("losetup")
        .args(["-b", "4096", "-f", "--show"])
        .arg(&raw));
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let guard = Detach(dev.clone());
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&dev)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=256, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=2304, size=8192, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    drop(guard);
    let vhdx = dir.path().join("k4.vhdx");
    let out = convert(&[
        "-O",
        "vhdx",
        "-o",
        "logical_sector_size=4096",
        s(&raw),
        s(&vhdx),
    ]);
    assert!(out.status.success());
    for (target, want) in [
        ("hyperv", "pass"),
        ("kvm", "warn"),
        ("azure", "fail"),
        ("aws", "fail"),
    ] {
        let (_, r) = preflight(&vhdx, target, &[]);
        assert_eq!(status(&r, "sector-size"), want, "{target}: {r}");
        assert_eq!(status(&r, "partition-table"), "pass", "{r}");
    }
    // The raw file: the partition table alone says 4096.
    let (code, r) = preflight(&raw, "vsphere", &[]);
    assert_eq!((code, status(&r, "sector-size").as_str()), (3, "fail"));
    // Converting it for Hyper-V with 512-byte sectors would lose the table.
    let out = convert(&["--target", "hyperv", s(&raw), s(&dir.path().join("x.vhdx"))]);
    assert_eq!(out.status.code(), Some(3));
    let out = convert(&[
        "--target",
        "hyperv",
        "-o",
        "logical_sector_size=4096",
        s(&raw),
        s(&dir.path().join("y.vhdx")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Windows 10 (corpus hives) without the AWS Nitro NVMe binding or virtio drivers: aws and
/// kvm fail on the boot driver, with the inject command as the fix; after `diskconv inject
/// windows --target aws-nitro` (and `--drivers` for kvm) the same checks pass.
#[test]
fn windows_boot_driver_before_and_after_inject() {
    if !fx::require_tools() {
        return;
    }
    let Some(w10) = fx::win10_hives() else {
        return;
    };
    let case = build_case(Layout::Mbr, "qcow2", &w10, 64 << 20, &[]);
    let img = &case.img;
    let (code, r) = preflight(img, "aws", &[]);
    assert_eq!(code, 3, "{r}");
    let os = check(&r, "os");
    assert_eq!(os["status"], "pass");
    assert!(
        os["reason"].as_str().unwrap().contains("build 17763"),
        "{os}"
    );
    assert_eq!(r["operating_systems"][0]["windows"]["arch"], "amd64");
    assert_eq!(status(&r, "ntfs"), "pass");
    let d = check(&r, "boot-driver");
    assert_eq!(d["status"], "fail", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("stornvme"), "{d}");
    let fix = d["fix"].as_str().unwrap().to_string();
    assert!(
        fix.contains("inject windows") && fix.contains("--target aws-nitro"),
        "{fix}"
    );
    let (code, r) = preflight(img, "kvm", &[]);
    assert_eq!((code, status(&r, "boot-driver").as_str()), (3, "fail"));

    let inj = diskconv()
        .args(["inject", "windows"])
        .arg(img)
        .args(["--target", "aws-nitro"])
        .output()
        .unwrap();
    assert!(
        inj.status.success(),
        "{}",
        String::from_utf8_lossy(&inj.stderr)
    );
    let (code, r) = preflight(img, "aws", &[]);
    assert_eq!(status(&r, "boot-driver"), "pass", "{r}");
    assert_eq!(status(&r, "free-space"), "pass", "{r}");
    assert_eq!(code, 0, "{r}");

    let tree = case.dir.path().join("virtio-win");
    fx::fake_virtio_tree(&tree, &|r: &str| r.starts_with("viostor/"), 4_000).unwrap();
    let inj = diskconv()
        .args(["inject", "windows"])
        .arg(img)
        .arg("--drivers")
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        inj.status.success(),
        "{}",
        String::from_utf8_lossy(&inj.stderr)
    );
    let (code, r) = preflight(img, "kvm", &[]);
    assert_eq!(
        (code, status(&r, "boot-driver").as_str()),
        (0, "pass"),
        "{r}"
    );
    assert!(
        check(&r, "boot-driver")["reason"]
            .as_str()
            .unwrap()
            .contains("viostor")
    );
    // And convert --target kvm goes through.
    let out_img = case.dir.path().join("kvm.qcow2");
    let out = convert(&["--target", "kvm", s(img), s(&out_img)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(qemu_compare(img, "qcow2", &out_img, "qcow2"));
}

/// A hibernated Windows (hiberfil.sys starting with `hibr`) fails the NTFS check with the
/// shutdown advice; a dirty one too.
#[test]
fn windows_hibernated_and_dirty() {
    if !fx::require_tools() {
        return;
    }
    let Some(software) = fx::software_hive(&[], &[]) else {
        return;
    };
    let hives = WinHives {
        system: fx::small_system_hive("AMD64", true, 0),
        system_logs: Vec::new(),
        software,
    };
    let dir = util::tmpdir();
    let vol = dir.path().join("hiber.ntfs");
    let mut hiber = b"hibr".to_vec();
    hiber.resize(64 << 10, 0);
    fx::windows_volume(&vol, 8 << 20, 2048, &hives, &[("hiberfil.sys", hiber)]);
    let disk = dir.path().join("hiber.raw");
    fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let (code, r) = preflight(&disk, "kvm", &[]);
    assert_eq!(code, 3);
    let c = check(&r, "ntfs");
    assert_eq!(c["status"], "fail");
    assert!(c["reason"].as_str().unwrap().contains("hibernated"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("powercfg /h off"),
        "{c}"
    );

    let vol = dir.path().join("dirty.ntfs");
    fx::windows_volume(&vol, 8 << 20, 2048, &hives, &[]);
    fx::set_ntfs_dirty(&vol);
    let disk = dir.path().join("dirty.raw");
    fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let (code, r) = preflight(&disk, "azure", &[]);
    assert_eq!(code, 3);
    let c = check(&r, "ntfs");
    assert!(c["reason"].as_str().unwrap().contains("dirty"), "{c}");
    // Text output names every check.
    let out = diskconv()
        .args(["preflight", s(&disk), "--target", "azure"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("preflight of "), "{text}");
    assert!(text.contains("FAIL  ntfs"), "{text}");
    assert!(text.contains("fix: "), "{text}");
}

/// `sync --export --target azure`: the export is a fixed VHD of whole MiB; `--export` with
/// neither a format nor a target is a usage error.
#[test]
fn sync_export_for_a_target() {
    if !util::require("qemu-img") || !util::require("sfdisk") {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("src.raw");
    partitioned(&src, 24 * MIB + 512, MBR_BIOS);
    let work = dir.path().join("work.qcow2");
    let vhd = dir.path().join("final.vhd");
    let out = diskconv()
        .args([
            "sync",
            s(&src),
            s(&work),
            "--export",
            s(&vhd),
            "--target",
            "azure",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vhd_footer(&vhd), (2, 25 * MIB));
    assert!(qemu_compare(&src, "raw", &vhd, "vpc"));
    let out = diskconv()
        .args([
            "sync",
            s(&src),
            s(&work),
            "--export",
            s(&dir.path().join("x.vhd")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--export-format FMT or --target"));
}

/// Real images from the corpus: VMware's VMDK variants against AWS's rules (streamOptimized
/// passes, monolithicSparse warns, descriptors naming extent files fail), Windows-made VHD and
/// VHDX against Azure and Hyper-V, and an NTFS volume without a partition table.
#[test]
fn corpus_images() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (image, target, check, status)
        (
            "images/vmdk-rs/streamOptimized.vmdk",
            "aws",
            "format",
            "pass",
        ),
        (
            "images/vmdk-rs/streamOptimized.vmdk",
            "aws",
            "references",
            "pass",
        ),
        (
            "images/vmdk-rs/monolithicSparse.vmdk",
            "aws",
            "format",
            "warn",
        ),
        (
            "images/vmdk-rs/twoGbMaxExtentSparse.vmdk",
            "aws",
            "references",
            "fail",
        ),
        (
            "images/vmdk-rs/monolithicFlat.vmdk",
            "vsphere",
            "references",
            "fail",
        ),
        ("images/dissect_fixed.vhd", "azure", "format", "pass"),
        ("images/dissect_fixed.vhd", "azure", "size", "warn"),
        (
            "images/dissect_hyperv_dynamic.vhdx",
            "hyperv",
            "format",
            "pass",
        ),
        (
            "images/dissect_hyperv_dynamic.vhdx",
            "hyperv",
            "sector-size",
            "pass",
        ),
        (
            "images/dfvfs/windows_volume.qcow2",
            "kvm",
            "partition-table",
            "warn",
        ),
        ("images/dfvfs/windows_volume.qcow2", "kvm", "os", "warn"),
    ];
    for (rel, target, id, want) in cases {
        let Some(img) = util::corpus(rel) else {
            return;
        };
        let (_, r) = preflight(&img, target, &[]);
        assert_eq!(&status(&r, id), want, "{rel} {target} {id}: {r}");
    }
}
