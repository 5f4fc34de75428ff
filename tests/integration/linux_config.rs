//! Linux guest configuration (`diskconv::guest::linuxcfg`): guest trees in the shape of a
//! RHEL 7 VMware guest (separate `/boot`, device paths in fstab and GRUB, ifcfg and udev
//! rules bound to MACs, VMware tools started by systemd and SysV links) and an Ubuntu cloud
//! guest (netplan, NetworkManager keyfile, open-vm-tools), built into ext4 file systems by
//! `mke2fs -d`, joined into an MBR disk by sfdisk with a swap area from mkswap, read through
//! our partition and ext4 readers. The UUIDs the plan writes must be the ones `blkid -p`
//! reads from each volume; the links and files the report names must be the ones e2fsprogs'
//! `debugfs` lists. The plan is then applied to the trees, the file systems rebuilt, read
//! again: planning again finds nothing to change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use diskconv::guest::disk::Window;
use diskconv::guest::ext4::Ext4Volume;
use diskconv::guest::fsdetect::{PROBE_LEN, linux_fs};
use diskconv::guest::linuxcfg::{
    ChangeAction, FileChange, FixOptions, FsRole, LinuxConfig, VolumeMap, plan_fixes, read_config,
};
use diskconv::guest::partition::find_volumes;
use diskconv::image::ImageReader;

use crate::util::{self, run};

/// `mke2fs -t ext4 -d TREE` into an image of `mib` MiB.
fn mkfs(tree: &Path, img: &Path, mib: u32) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(tree)
        .arg(img)
        .arg(format!("{mib}M")));
}

/// libblkid's own probe of the UUID of the volume in `img`.
fn blkid_uuid(img: &Path) -> String {
    let out = run(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID"])
        .arg(img));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `debugfs -R CMD` on an image.
fn debugfs(img: &Path, cmd: &str) -> String {
    let out = run(Command::new("debugfs").arg("-R").arg(cmd).arg(img));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// Applies the changes on `role` to the host tree `root` (what the ext4 writer will do in the
/// image), checking each file still holds what the plan read.
fn apply(root: &Path, role: FsRole, changes: &[FileChange]) {
    for c in changes.iter().filter(|c| c.fs == role) {
        let p = root.join(c.path.trim_start_matches('/'));
        match &c.action {
            ChangeAction::Replace { before, after } => {
                assert_eq!(&std::fs::read_to_string(&p).unwrap(), before, "{}", c.path);
                std::fs::write(&p, after).unwrap();
            }
            ChangeAction::Remove { before } => {
                assert_eq!(&std::fs::read_to_string(&p).unwrap(), before, "{}", c.path);
                std::fs::remove_file(&p).unwrap();
            }
            ChangeAction::RemoveLink { target } => {
                assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from(target));
                std::fs::remove_file(&p).unwrap();
            }
            ChangeAction::Add { content } => {
                assert!(!p.exists(), "{}", c.path);
                std::fs::write(&p, content).unwrap();
            }
        }
    }
}

/// A disk image of the images `parts` as MBR partitions 1, 2, ... (sfdisk), 1 MiB aligned.
fn mbr_disk(parts: &[(&Path, &str)], disk: &Path) {
    let mut script = String::from("label: dos\n");
    let mut at = 1u64 << 20;
    let mut places = Vec::new();
    for (img, kind) in parts {
        let len = std::fs::metadata(img).unwrap().len();
        script.push_str(&format!(
            "start={}, size={}, type={kind}\n",
            at / 512,
            len / 512
        ));
        places.push(at);
        at += len.div_ceil(1 << 20) << 20;
    }
    let f = std::fs::File::create(disk).unwrap();
    f.set_len(at + (1 << 20)).unwrap();
    drop(f);
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{Seek, SeekFrom, Write};
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    for ((img, _), at) in parts.iter().zip(places) {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&std::fs::read(img).unwrap()).unwrap();
    }
}

const RHEL_FSTAB: &str = "\n#\n# /etc/fstab\n# Created by anaconda on Mon Jan  8 10:00:00 2018\n#\n\
# Accessible filesystems, by reference, are maintained under '/dev/disk'\n#\n\
/dev/sda2               /                       ext4    defaults        1 1\n\
/dev/sda1               /boot                   ext4    defaults        1 2\n\
/dev/sda3               swap                    swap    defaults        0 0\n\
tmpfs                   /dev/shm                tmpfs   defaults        0 0\n\
/dev/sdb1               /data                   xfs     defaults,nofail 0 0\n";

const RHEL_GRUB_CFG: &str = "#\n# DO NOT EDIT THIS FILE\n#\n\
### BEGIN /etc/grub.d/10_linux ###\n\
menuentry 'Red Hat Enterprise Linux Server (3.10.0-1160.el7.x86_64) 7.9 (Maipo)' --class red {\n\
\tload_video\n\tset gfxpayload=keep\n\tinsmod gzio\n\tinsmod part_msdos\n\tinsmod ext2\n\
\tset root='hd0,msdos1'\n\
\tlinux16 /vmlinuz-3.10.0-1160.el7.x86_64 root=/dev/sda2 ro crashkernel=auto resume=/dev/sda3 rhgb quiet LANG=en_US.UTF-8\n\
\tinitrd16 /initramfs-3.10.0-1160.el7.x86_64.img\n}\n";

const RHEL_DEFAULT_GRUB: &str = "GRUB_TIMEOUT=5\n\
GRUB_DISTRIBUTOR=\"$(sed 's, release .*$,,g' /etc/system-release)\"\n\
GRUB_DEFAULT=saved\nGRUB_DISABLE_SUBMENU=true\nGRUB_TERMINAL_OUTPUT=\"console\"\n\
GRUB_CMDLINE_LINUX=\"crashkernel=auto resume=/dev/sda3 rhgb quiet\"\n\
GRUB_DISABLE_RECOVERY=\"true\"\n";

const RHEL_IFCFG: &str = "TYPE=Ethernet\nBOOTPROTO=none\nDEFROUTE=yes\nNAME=ens192\n\
UUID=8d5b7c3a-7d5f-4f7e-9c5d-2f4a1b3c4d5e\nDEVICE=ens192\nONBOOT=yes\nIPADDR=10.20.30.40\n\
PREFIX=24\nGATEWAY=10.20.30.1\nHWADDR=00:50:56:8e:12:34\n";

const UDEV_RULES: &str = "# PCI device 0x15ad:0x07b0 (vmxnet3)\n\
SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:50:56:8e:12:34\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"ens192\"\n";

/// The RHEL 7 root tree and its /boot tree.
fn rhel_trees(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    let boot = dir.join("boot");
    write(&root, "/etc/fstab", RHEL_FSTAB);
    write(&root, "/etc/default/grub", RHEL_DEFAULT_GRUB);
    write(
        &root,
        "/etc/os-release",
        "NAME=\"Red Hat Enterprise Linux Server\"\nID=\"rhel\"\nVERSION_ID=\"7.9\"\n",
    );
    write(
        &root,
        "/etc/sysconfig/network-scripts/ifcfg-ens192",
        RHEL_IFCFG,
    );
    write(
        &root,
        "/etc/sysconfig/network-scripts/ifcfg-lo",
        "DEVICE=lo\nIPADDR=127.0.0.1\n",
    );
    write(
        &root,
        "/etc/udev/rules.d/70-persistent-net.rules",
        UDEV_RULES,
    );
    write(
        &root,
        "/etc/selinux/config",
        "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
    );
    write(&root, "/usr/bin/vmtoolsd", "not an ELF");
    write(
        &root,
        "/usr/lib/systemd/system/vmtoolsd.service",
        "[Unit]\n",
    );
    write(&root, "/usr/lib/systemd/system/sshd.service", "[Unit]\n");
    link(
        &root,
        "/etc/systemd/system/multi-user.target.wants/vmtoolsd.service",
        "/usr/lib/systemd/system/vmtoolsd.service",
    );
    link(
        &root,
        "/etc/systemd/system/multi-user.target.wants/sshd.service",
        "/usr/lib/systemd/system/sshd.service",
    );
    write(&root, "/etc/rc.d/init.d/vmware-tools", "#!/bin/sh\n");
    link(
        &root,
        "/etc/rc.d/rc3.d/S03vmware-tools",
        "../init.d/vmware-tools",
    );
    link(
        &root,
        "/etc/rc.d/rc0.d/K99vmware-tools",
        "../init.d/vmware-tools",
    );
    std::fs::create_dir_all(root.join("boot")).unwrap();
    write(&boot, "/grub2/grub.cfg", RHEL_GRUB_CFG);
    write(
        &boot,
        "/grub2/device.map",
        "# this device map was generated by anaconda\n(hd0)      /dev/sda\n",
    );
    write(&boot, "/vmlinuz-3.10.0-1160.el7.x86_64", "kernel");
    (root, boot)
}

/// The file systems of `disk` read through our readers: (partition number, ext4 volume or
/// `None`, UUID our probe reads).
fn volumes_of(disk: &Path) -> Vec<(u32, Option<Ext4Volume>, Option<String>)> {
    let img: Arc<dyn ImageReader> = diskconv::open(disk, &Default::default()).unwrap().into();
    let mut out = Vec::new();
    for v in find_volumes(&img).unwrap() {
        let number = v.partition.as_ref().map_or(0, |p| p.number);
        let w = Window::new(img.clone(), v.start, v.len).unwrap();
        let mut head = vec![0u8; (v.len.min(PROBE_LEN as u64)) as usize];
        use diskconv::guest::disk::DiskRead;
        w.read_at(&mut head, 0).unwrap();
        let uuid = linux_fs(&head).and_then(|f| f.uuid);
        let fs = Ext4Volume::open(w).ok();
        out.push((number, fs, uuid));
    }
    out
}

fn after_of(plan: &[FileChange], fs: FsRole, path: &str) -> String {
    match &plan
        .iter()
        .find(|c| c.fs == fs && c.path == path)
        .unwrap_or_else(|| panic!("no change of {path}: {plan:#?}"))
        .action
    {
        ChangeAction::Replace { after, .. } => after.clone(),
        a => panic!("{path}: {a:?}"),
    }
}

#[test]
fn rhel_vmware_guest_on_an_mbr_disk_to_kvm() {
    if !(util::require("mke2fs")
        && util::require("mkswap")
        && util::require("sfdisk")
        && util::require("blkid")
        && util::require("debugfs"))
    {
        return;
    }
    let dir = util::tmpdir();
    let (root_tree, boot_tree) = rhel_trees(dir.path());
    let (boot_img, root_img, swap_img) = (
        dir.path().join("boot.img"),
        dir.path().join("root.img"),
        dir.path().join("swap.img"),
    );
    mkfs(&boot_tree, &boot_img, 8);
    mkfs(&root_tree, &root_img, 16);
    std::fs::File::create(&swap_img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    run(Command::new("mkswap").arg("-q").arg(&swap_img));
    let (boot_uuid, root_uuid, swap_uuid) = (
        blkid_uuid(&boot_img),
        blkid_uuid(&root_img),
        blkid_uuid(&swap_img),
    );
    assert!(!boot_uuid.is_empty() && !root_uuid.is_empty() && !swap_uuid.is_empty());
    let disk = dir.path().join("disk.raw");
    mbr_disk(
        &[(&boot_img, "83"), (&root_img, "83"), (&swap_img, "82")],
        &disk,
    );

    // Our partition reader and probe; the volume map the caller builds from them.
    let vols = volumes_of(&disk);
    assert_eq!(vols.len(), 3);
    let mut map = VolumeMap::new();
    for (n, _, uuid) in &vols {
        map.add_partition(0, *n, uuid.as_deref().unwrap());
    }
    let uuids: Vec<&str> = vols.iter().map(|v| v.2.as_deref().unwrap()).collect();
    assert_eq!(uuids, vec![&boot_uuid[..], &root_uuid[..], &swap_uuid[..]]);
    let boot = vols[0].1.as_ref().expect("boot ext4");
    let root = vols[1].1.as_ref().expect("root ext4");

    let cfg: LinuxConfig = read_config(root, Some(boot)).unwrap();
    // The report: fstab as debugfs reads it.
    let fstab = debugfs(&root_img, "cat /etc/fstab");
    assert_eq!(fstab, RHEL_FSTAB);
    let f = cfg.fstab.as_ref().unwrap();
    let specs: Vec<(&str, Option<bool>)> = f
        .entries
        .iter()
        .map(|e| (e.spec.as_str(), e.stable))
        .collect();
    assert_eq!(
        specs,
        vec![
            ("/dev/sda2", Some(false)),
            ("/dev/sda1", Some(false)),
            ("/dev/sda3", Some(false)),
            ("tmpfs", None),
            ("/dev/sdb1", Some(false)),
        ]
    );
    // The boot files: grub.cfg and device.map on /boot, /etc/default/grub on the root.
    let files: Vec<(FsRole, &str)> = cfg.boot.iter().map(|b| (b.fs, b.path.as_str())).collect();
    assert_eq!(
        files,
        vec![
            (FsRole::Boot, "/grub2/grub.cfg"),
            (FsRole::Root, "/etc/default/grub"),
            (FsRole::Boot, "/grub2/device.map"),
        ]
    );
    assert!(debugfs(&boot_img, "cat /grub2/grub.cfg").contains("root=/dev/sda2"));
    // The network and the tools.
    assert_eq!(cfg.network.len(), 2, "{:#?}", cfg.network);
    assert!(cfg.network.iter().all(|n| n.macs == ["00:50:56:8e:12:34"]));
    let tools = &cfg.tools;
    assert_eq!(tools.len(), 1, "{tools:#?}");
    assert_eq!(tools[0].id, "vmware-tools");
    let wants = debugfs(&root_img, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(wants.contains("vmtoolsd.service"), "{wants}");
    let rc3 = debugfs(&root_img, "stat /etc/rc.d/rc3.d/S03vmware-tools");
    assert!(rc3.contains("../init.d/vmware-tools"), "{rc3}");
    assert_eq!(
        tools[0].start_links,
        vec![
            "/etc/systemd/system/multi-user.target.wants/vmtoolsd.service",
            "/etc/rc.d/rc3.d/S03vmware-tools"
        ]
    );
    assert_eq!(cfg.source_platform.map(|p| p.name()), Some("vmware"));
    assert_eq!(
        cfg.selinux.as_ref().unwrap().mode.as_deref(),
        Some("enforcing")
    );
    let j = serde_json::to_value(&cfg).unwrap();
    assert_eq!(j["fstab"]["entries"][0]["naming"], "kernel-name");
    assert_eq!(j["source_platform"], "vmware");

    // The plan, with blkid's UUIDs.
    let plan = plan_fixes(&cfg, &map, "kvm", &FixOptions::default()).unwrap();
    let fixed = after_of(&plan.changes, FsRole::Root, "/etc/fstab");
    assert_eq!(
        fixed,
        RHEL_FSTAB
            .replace("/dev/sda2     ", &format!("UUID={root_uuid}     "))
            .replace("/dev/sda1     ", &format!("UUID={boot_uuid}     "))
            .replace("/dev/sda3     ", &format!("UUID={swap_uuid}     "))
    );
    assert!(plan.unresolved.iter().any(|u| u.contains("/dev/sdb1")));
    let grub = after_of(&plan.changes, FsRole::Boot, "/grub2/grub.cfg");
    assert!(grub.contains(&format!(
        "root=UUID={root_uuid} ro crashkernel=auto resume=UUID={swap_uuid} rhgb"
    )));
    assert!(grub.contains("set root='hd0,msdos1'"));
    let dg = after_of(&plan.changes, FsRole::Root, "/etc/default/grub");
    assert!(dg.contains(&format!("resume=UUID={swap_uuid} rhgb")));
    let kinds: Vec<(&str, &str)> = plan
        .changes
        .iter()
        .map(|c| {
            (
                c.path.as_str(),
                match c.action {
                    ChangeAction::Replace { .. } => "replace",
                    ChangeAction::Remove { .. } => "remove",
                    ChangeAction::RemoveLink { .. } => "remove-link",
                    ChangeAction::Add { .. } => "add",
                },
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("/etc/fstab", "replace"),
            ("/grub2/grub.cfg", "replace"),
            ("/etc/default/grub", "replace"),
            ("/grub2/device.map", "remove"),
            ("/etc/udev/rules.d/70-persistent-net.rules", "remove"),
            ("/etc/sysconfig/network-scripts/ifcfg-ens192", "replace"),
            (
                "/etc/systemd/system/multi-user.target.wants/vmtoolsd.service",
                "remove-link"
            ),
            ("/etc/rc.d/rc3.d/S03vmware-tools", "remove-link"),
        ]
    );
    assert!(plan.tools[0].disabled);
    let pj = serde_json::to_value(&plan).unwrap();
    assert_eq!(pj["changes"][3]["action"]["kind"], "remove");
    assert_eq!(pj["target"], "kvm");

    // Applied to the trees and rebuilt: e2fsprogs reads the fixed files, and planning again
    // changes nothing.
    apply(&root_tree, FsRole::Root, &plan.changes);
    apply(&boot_tree, FsRole::Boot, &plan.changes);
    let (boot2, root2) = (dir.path().join("boot2.img"), dir.path().join("root2.img"));
    mkfs(&boot_tree, &boot2, 8);
    mkfs(&root_tree, &root2, 16);
    assert_eq!(debugfs(&root2, "cat /etc/fstab"), fixed);
    let open = |p: &Path| {
        let img: Arc<dyn ImageReader> = diskconv::open(p, &Default::default()).unwrap().into();
        let len = img.virtual_size();
        Ext4Volume::open(Window::new(img, 0, len).unwrap()).unwrap()
    };
    let (b, r) = (open(&boot2), open(&root2));
    let cfg2 = read_config(&r, Some(&b)).unwrap();
    assert!(cfg2.tools[0].start_links.is_empty());
    let again = plan_fixes(&cfg2, &map, "kvm", &FixOptions::default()).unwrap();
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
}

const NETPLAN: &str = "# This file is generated from information provided by the datasource.\n\
network:\n    ethernets:\n        ens160:\n            dhcp4: true\n            match:\n\
\x20               macaddress: 00:50:56:9a:01:02\n            set-name: ens160\n    version: 2\n";

const KEYFILE: &str = "[connection]\nid=Wired connection 1\ntype=ethernet\n\
interface-name=ens192\n\n[ethernet]\nmac-address=00:50:56:B1:22:33\n\n[ipv4]\nmethod=auto\n";

#[test]
fn ubuntu_guest_whole_disk_to_vmware_and_azure() {
    if !(util::require("mke2fs") && util::require("blkid") && util::require("debugfs")) {
        return;
    }
    let dir = util::tmpdir();
    let root = dir.path().join("root");
    let uuid_line = "UUID=2f6a1e8e-8d8e-4a8a-9a9b-0c1d2e3f4a5b";
    write(
        &root,
        "/etc/fstab",
        &format!(
            "LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,errors=remount-ro\t0 1\n{uuid_line} /boot/efi vfat umask=0077 0 1\n/swap.img\tnone\tswap\tsw\t0\t0\n"
        ),
    );
    write(
        &root,
        "/boot/grub/grub.cfg",
        "menuentry 'Ubuntu' {\n\tlinux\t/boot/vmlinuz-5.15.0-91-generic root=LABEL=cloudimg-rootfs ro console=tty1\n}\n",
    );
    write(&root, "/etc/netplan/50-cloud-init.yaml", NETPLAN);
    write(
        &root,
        "/etc/NetworkManager/system-connections/Wired connection 1.nmconnection",
        KEYFILE,
    );
    write(&root, "/etc/cloud/cloud.cfg", "users:\n  - default\n");
    write(&root, "/usr/bin/vmtoolsd", "x");
    write(
        &root,
        "/lib/systemd/system/open-vm-tools.service",
        "[Unit]\n",
    );
    link(
        &root,
        "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service",
        "/lib/systemd/system/open-vm-tools.service",
    );
    link(
        &root,
        "/etc/systemd/system/vmtoolsd.service",
        "/lib/systemd/system/open-vm-tools.service",
    );
    let img = dir.path().join("root.img");
    mkfs(&root, &img, 16);
    assert!(!blkid_uuid(&img).is_empty());
    let vols = volumes_of(&img);
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].0, 0);
    assert_eq!(vols[0].2.as_deref(), Some(blkid_uuid(&img).as_str()));
    let fs = vols[0].1.as_ref().unwrap();
    let cfg = read_config(fs, None).unwrap();
    let f = cfg.fstab.as_ref().unwrap();
    assert!(f.entries.iter().all(|e| e.stable != Some(false)));
    assert_eq!(cfg.boot.len(), 1);
    assert_eq!(cfg.boot[0].params[0].value, "LABEL=cloudimg-rootfs");
    assert_eq!(cfg.network.len(), 2);
    assert!(!cfg.cloud_init.installed.is_empty());
    assert!(!cfg.cloud_init.disabled);
    let ls = debugfs(&img, "ls -l /etc/NetworkManager/system-connections");
    assert!(ls.contains("Wired connection 1.nmconnection"), "{ls}");

    let mut map = VolumeMap::new();
    map.add_partition(0, 0, &blkid_uuid(&img));
    // Staying on VMware: only the MAC bindings go.
    let plan = plan_fixes(&cfg, &map, "vmware", &FixOptions::default()).unwrap();
    let paths: Vec<&str> = plan.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/etc/netplan/50-cloud-init.yaml",
            "/etc/NetworkManager/system-connections/Wired connection 1.nmconnection"
        ]
    );
    assert_eq!(
        after_of(
            &plan.changes,
            FsRole::Root,
            "/etc/netplan/50-cloud-init.yaml"
        ),
        NETPLAN.replace("macaddress: 00:50:56:9a:01:02", "name: \"e*\"")
    );
    assert!(!plan.tools[0].disabled);
    // To Azure: open-vm-tools is disabled as well (its alias link is not a start link).
    let plan = plan_fixes(&cfg, &map, "azure", &FixOptions::default()).unwrap();
    assert_eq!(plan.changes.len(), 3);
    assert_eq!(
        plan.changes[2].path,
        "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service"
    );
    assert!(plan.unresolved.is_empty(), "{:?}", plan.unresolved);
    apply(&root, FsRole::Root, &plan.changes);
    let img2 = dir.path().join("root2.img");
    mkfs(&root, &img2, 16);
    let vols = volumes_of(&img2);
    let cfg2 = read_config(vols[0].1.as_ref().unwrap(), None).unwrap();
    let again = plan_fixes(&cfg2, &map, "azure", &FixOptions::default()).unwrap();
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
}
