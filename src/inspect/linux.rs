//! Finding Linux guests, read-only: [`find_linux`] looks at every volume of a disk (partitions
//! or the whole disk, and the logical volumes of the LVM2 volume groups found on them), tells
//! which Linux file system each holds, and on every ext2/ext3/ext4, XFS or btrfs one (the
//! default subvolume) that has `/etc` with an os-release or older release file reads the
//! distribution, the architecture and the kernels under `/boot` ([`LinuxRoot`]).
//!
//! What cannot be read is still reported, so that a caller can tell a Linux guest is probably
//! there: LUKS containers (not opened), logical volumes that are striped, thin, RAID or on PVs
//! that are not on this disk, file systems whose reader refused them (the note says why).
//!
//! ```no_run
//! # fn main() -> diskconv::Result<()> {
//! use std::sync::Arc;
//! use diskconv::guest::partition::find_volumes;
//! use diskconv::image::ImageReader;
//! let disk: Arc<dyn ImageReader> = diskconv::open("guest.qcow2", &Default::default())?.into();
//! let volumes = find_volumes(&disk)?;
//! let linux = diskconv::inspect::linux::find_linux(disk.clone(), &volumes);
//! for (v, root) in linux.roots() {
//!     println!("{}: {}", v.location, root.describe());
//! }
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::guest::btrfs::BtrfsVolume;
use crate::guest::disk::{DiskRead, Window};
use crate::guest::ext4::Ext4Volume;
use crate::guest::fs::{FileKind, GuestFs};
use crate::guest::fsdetect::{LinuxFs, LinuxFsKind, PROBE_LEN, linux_fs};
use crate::guest::initramfs::Initramfs;
use crate::guest::kmod::{
    ExistingInitramfs, InitramfsFlavour, KernelModules, ModuleStatus, ModuleTarget, boot_drivers,
    guest_status,
};
use crate::guest::linuxcfg::{LinuxConfig, read_config};
use crate::guest::lvm::{LvDisk, VgInfo, VolumeLayout, parse_metadata, read_pv};
use crate::guest::partition::{FsKind, Volume};
use crate::guest::xfs::XfsVolume;
use crate::inspect::boot::{BootFs, KernelFiles, kernel_files};

/// The largest release file read (os-release files are a few hundred bytes).
const MAX_RELEASE_FILE: usize = 64 << 10;
/// The most entries of `/boot` looked at.
const MAX_BOOT_ENTRIES: usize = 4096;

/// A Linux distribution as its release files describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Distribution {
    /// Machine-readable id (`ID=` of os-release: `debian`, `ubuntu`, `rhel`, `centos`, `sles`).
    pub id: String,
    /// Its name (`NAME=`: `Debian GNU/Linux`).
    pub name: String,
    /// Its version (`VERSION_ID=`: `12`, `22.04`, `7.9.2009`), when known.
    pub version: Option<String>,
    /// The name to show (`PRETTY_NAME=`), when known.
    pub pretty_name: Option<String>,
    /// Related distributions (`ID_LIKE=`).
    pub id_like: Vec<String>,
    /// The file it was read from (`/etc/os-release`, `/etc/redhat-release`, ...).
    pub source: String,
}

impl Distribution {
    /// The pretty name, or the name and version.
    pub fn describe(&self) -> String {
        match (&self.pretty_name, &self.version) {
            (Some(p), _) => p.clone(),
            (None, Some(v)) => format!("{} {v}", self.name),
            (None, None) => self.name.clone(),
        }
    }
}

/// A Linux root file system: one with `/etc` holding an os-release or release file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinuxRoot {
    /// The distribution, from its release file.
    pub distribution: Distribution,
    /// The architecture (`x86_64`, `aarch64`, ...), from the ELF header of `/bin/sh` (or
    /// `/usr/bin/env`), when it could be read.
    pub arch: Option<String>,
    /// The kernel versions installed: the `vmlinuz-*` (and `vmlinux-*`) under `/boot`, sorted.
    pub kernels: Vec<String>,
    /// The volume of its separate `/boot` (found through `/etc/fstab`), if any.
    pub boot_volume: Option<String>,
    /// Each kernel (on the root or the separate `/boot`) with its initramfs and the drivers
    /// of [`reported_drivers`]: built in, in the initramfs, a module on disk, or absent.
    pub kernel_files: Vec<KernelReport>,
    /// What of its configuration breaks on another platform: fstab, boot loader, network
    /// bound to MAC addresses, guest tools, cloud-init, SELinux.
    pub config: Option<LinuxConfig>,
    /// What could not be read of the above.
    pub notes: Vec<String>,
}

/// The drivers [`LinuxRoot::kernel_files`] reports for each kernel: every module any target
/// needs ([`boot_drivers`]: virtio, NVMe, ENA, Hyper-V VMBus/storvsc/netvsc, Xen front ends,
/// PVSCSI, VMXNET3...), each once.
pub fn reported_drivers() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in ModuleTarget::ALL {
        for m in boot_drivers(t).modules() {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// One kernel of a Linux root, its initramfs and where the target drivers stand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    /// The kernel version.
    pub version: String,
    /// The kernel image, as the guest sees its path.
    pub kernel: String,
    /// Its initramfs, if one of the usual names exists.
    pub initramfs: Option<String>,
    /// Which tool built that initramfs.
    pub initramfs_builder: Option<InitramfsFlavour>,
    /// How the initramfs is stored: its segments' compressions (`none` for a plain archive).
    pub initramfs_segments: Vec<String>,
    /// Its module tree, if present.
    pub modules_dir: Option<String>,
    /// Each of [`reported_drivers`]: built in, in the initramfs, on disk only, or absent.
    pub drivers: Vec<ModuleStatus>,
    /// What could not be read.
    pub note: Option<String>,
}

impl LinuxRoot {
    /// One line: `Debian GNU/Linux 12 (bookworm), x86_64, kernels 6.1.0-18-amd64`.
    pub fn describe(&self) -> String {
        let mut s = self.distribution.describe();
        if let Some(a) = &self.arch {
            s.push_str(&format!(", {a}"));
        }
        if !self.kernels.is_empty() {
            s.push_str(&format!(", kernels {}", self.kernels.join(" ")));
        }
        s
    }
}

/// A volume (partition, whole disk or logical volume) that holds a Linux file system, an LVM2
/// PV, swap or LUKS, and what was found on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinuxVolume {
    /// Where it is: `partition 2`, `whole disk`, `LV vg0/root (on partition 2)`.
    pub location: String,
    /// Its partition number (0: the whole disk); `None` for a logical volume.
    pub partition: Option<u32>,
    /// The volume group it belongs to (a PV's or an LV's).
    pub vg: Option<String>,
    /// For a logical volume: `vg/lv`.
    pub lv: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// What it holds; `None` when that could not be read (a logical volume that is not read,
    /// a volume whose first bytes could not be read: the note says why).
    pub fs: Option<LinuxFs>,
    /// The Linux root read from it.
    pub root: Option<LinuxRoot>,
    /// The kernels at the top of a file system that is not a root (a separate `/boot`).
    pub boot_kernels: Vec<String>,
    /// Why it was not read, or what reading it found wrong (the search goes on).
    pub note: Option<String>,
    /// Where its bytes lie on the disk (`None` for a logical volume that could not be
    /// mapped), to open it again: [`VolumeLayout::on`].
    #[serde(skip)]
    pub layout: Option<VolumeLayout>,
}

/// What [`find_linux`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LinuxReport {
    /// The Linux volumes, in disk order, each logical volume after the PVs of its group.
    pub volumes: Vec<LinuxVolume>,
}

impl LinuxReport {
    /// The Linux roots found, with their volume.
    pub fn roots(&self) -> impl Iterator<Item = (&LinuxVolume, &LinuxRoot)> {
        self.volumes
            .iter()
            .filter_map(|v| v.root.as_ref().map(|r| (v, r)))
    }

    /// One line for a report (a preflight check): the first root found (`Debian GNU/Linux 12
    /// (bookworm), x86_64, kernels 6.1.0-18-amd64 on partition 2`), else the first Linux
    /// volume that could not be read and why (`XFS (v5) on partition 3: Linux file system
    /// found, not read yet (XFS (v5))`); `None` when there is no sign of Linux.
    pub fn describe(&self) -> Option<String> {
        if let Some((v, r)) = self.roots().next() {
            return Some(format!("{} on {}", r.describe(), v.location));
        }
        self.volumes
            .iter()
            .find(|v| v.fs.as_ref().is_none_or(|f| f.kind != LinuxFsKind::Swap))
            .map(|v| {
                let kind = v.fs.as_ref().map(|f| f.kind.name()).unwrap_or("a volume");
                match &v.note {
                    Some(n) => format!("{kind} on {}: {n}", v.location),
                    None => format!("{kind} on {}", v.location),
                }
            })
    }

    /// Whether a Linux guest is probably there: a root was read, or a Linux file system,
    /// LUKS container or LVM volume group was found (swap alone does not count).
    pub fn probably_linux(&self) -> bool {
        self.volumes
            .iter()
            .any(|v| v.fs.as_ref().is_none_or(|f| f.kind != LinuxFsKind::Swap))
    }
}

/// Reads at most [`PROBE_LEN`] bytes from the start of `d`.
fn probe_head(d: &dyn DiskRead) -> Result<Vec<u8>> {
    let n = d.len().min(PROBE_LEN as u64) as usize;
    let mut b = vec![0u8; n];
    d.read_at(&mut b, 0)?;
    Ok(b)
}

/// Looks for Linux on `volumes` (from [`find_volumes`](crate::guest::partition::find_volumes))
/// of `disk`, read-only. Problems with one volume become its [`LinuxVolume::note`]; the search
/// goes on with the next.
pub fn find_linux<D: DiskRead + Clone + 'static>(disk: D, volumes: &[Volume]) -> LinuxReport {
    let mut out = Vec::new();
    let mut pvs: Vec<FoundPv> = Vec::new();
    for v in volumes {
        if !matches!(
            v.fs,
            FsKind::Ext | FsKind::Xfs | FsKind::Btrfs | FsKind::Luks | FsKind::Lvm | FsKind::Swap
        ) {
            continue;
        }
        let number = v.partition.as_ref().map(|p| p.number).unwrap_or(0);
        let location = match number {
            0 => "whole disk".to_string(),
            n => format!("partition {n}"),
        };
        let window = match Window::new(disk.clone(), v.start, v.len) {
            Ok(w) => w,
            Err(e) => {
                out.push(unread(location, Some(number), v.len, e.chain()));
                continue;
            }
        };
        let fs = match probe_head(&window).map(|h| linux_fs(&h)) {
            Ok(Some(fs)) => fs,
            Ok(None) => continue,
            Err(e) => {
                out.push(unread(location, Some(number), v.len, e.chain()));
                continue;
            }
        };
        let mut lv = LinuxVolume {
            location: location.clone(),
            partition: Some(number),
            vg: None,
            lv: None,
            size: v.len,
            fs: Some(fs.clone()),
            root: None,
            boot_kernels: Vec::new(),
            note: None,
            layout: Some(VolumeLayout::contiguous(v.start, v.len)),
        };
        if fs.kind == LinuxFsKind::Lvm2Pv {
            match read_pv(&window) {
                Ok(Some(label)) => match label.metadata.as_deref().map(parse_metadata) {
                    Some(Ok(vg)) => {
                        lv.vg = Some(vg.name.clone());
                        pvs.push(FoundPv {
                            uuid: label.uuid.clone(),
                            location,
                            start: v.start,
                            len: v.len,
                            vg,
                        });
                    }
                    Some(Err(e)) => lv.note = Some(e.chain()),
                    None => lv.note = Some("no metadata area on this PV".into()),
                },
                Ok(None) => lv.note = Some("the LVM2 label could not be found again".into()),
                Err(e) => lv.note = Some(e.chain()),
            }
        } else {
            look_inside(window, fs.kind, &mut lv);
        }
        out.push(lv);
    }
    out.extend(logical_volumes(disk.clone(), &pvs));
    add_details(&disk, &mut out);
    LinuxReport { volumes: out }
}

/// The largest initramfs read for the report: 1 GiB.
const MAX_INITRAMFS: u64 = 1 << 30;

/// For each root: its separate `/boot`, its configuration and each kernel's initramfs and
/// drivers. What cannot be read becomes a note of the root.
fn add_details<D: DiskRead + Clone + 'static>(disk: &D, volumes: &mut [LinuxVolume]) {
    for i in 0..volumes.len() {
        if volumes[i].root.is_none() {
            continue;
        }
        let mut notes = Vec::new();
        let (boot_volume, config, kernels) = root_details(disk, volumes, &volumes[i], &mut notes);
        if let Some(r) = volumes[i].root.as_mut() {
            r.boot_volume = boot_volume;
            r.config = config;
            r.kernel_files = kernels;
            r.notes = notes;
        }
    }
}

/// Opens the file system of `v` on `disk`, with its layout.
pub fn open_volume<D: DiskRead + Clone + 'static>(
    disk: &D,
    v: &LinuxVolume,
) -> Result<Box<dyn GuestFs>> {
    let layout = v.layout.as_ref().ok_or_else(|| {
        Error::Unsupported(format!("{}: its bytes could not be located", v.location))
    })?;
    let Some(kind) = v.fs.as_ref().map(|f| f.kind) else {
        return Err(Error::Unsupported(format!(
            "{}: no file system",
            v.location
        )));
    };
    open_guest_fs(layout.on(disk.clone()), kind)?.ok_or_else(|| {
        Error::Unsupported(format!("{}: {} holds no files", v.location, kind.name()))
    })
}

type RootDetails = (Option<String>, Option<LinuxConfig>, Vec<KernelReport>);

fn root_details<D: DiskRead + Clone + 'static>(
    disk: &D,
    volumes: &[LinuxVolume],
    v: &LinuxVolume,
    notes: &mut Vec<String>,
) -> RootDetails {
    let root = match open_volume(disk, v) {
        Ok(f) => f,
        Err(e) => {
            notes.push(e.chain());
            return (None, None, Vec::new());
        }
    };
    let boot_vol = match read_config(root.as_ref(), None) {
        Ok(c) => boot_volume_of(volumes, v, &c),
        Err(e) => {
            notes.push(format!("configuration not read: {}", e.chain()));
            None
        }
    };
    let boot = match boot_vol.map(|b| open_volume(disk, b)) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            notes.push(format!("the separate /boot not read: {}", e.chain()));
            None
        }
        None => None,
    };
    let config = match read_config(root.as_ref(), boot.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            notes.push(format!("configuration not read: {}", e.chain()));
            None
        }
    };
    let fs = BootFs {
        root: root.as_ref(),
        boot: boot.as_deref(),
    };
    let kernels = match kernel_files(&fs) {
        Ok(k) => k.iter().map(|k| kernel_report(&fs, k)).collect(),
        Err(e) => {
            notes.push(format!("kernels not read: {}", e.chain()));
            Vec::new()
        }
    };
    (boot_vol.map(|b| b.location.clone()), config, kernels)
}

/// Decompresses a module file (xz, zstd, gzip...) for its vermagic.
fn decompress_module(b: &[u8]) -> Result<Vec<u8>> {
    match crate::guest::compress::decompress_detected(b, 0, 64 << 20)? {
        Some(d) => Ok(d.data),
        None => Ok(b.to_vec()),
    }
}

fn kernel_report(fs: &BootFs, k: &KernelFiles) -> KernelReport {
    let mut r = KernelReport {
        version: k.version.clone(),
        kernel: k.kernel.clone(),
        initramfs: k.initramfs.clone(),
        initramfs_builder: None,
        initramfs_segments: Vec::new(),
        modules_dir: k.modules_dir.clone(),
        drivers: Vec::new(),
        note: None,
    };
    let mut in_initramfs: Vec<String> = Vec::new();
    if let Some(p) = &k.initramfs {
        let (ifs, ip) = fs.locate(p);
        match ifs
            .read_file(&ip, MAX_INITRAMFS)
            .and_then(|b| b.map(|b| Initramfs::parse(&b)).transpose())
        {
            Ok(Some(ird)) => {
                let ex = existing_initramfs(&ird);
                r.initramfs_builder = Some(ex.flavour);
                r.initramfs_segments = ird
                    .segments()
                    .iter()
                    .map(|s| {
                        s.compression
                            .map(|c| c.name())
                            .unwrap_or("none")
                            .to_string()
                    })
                    .collect();
                in_initramfs = ex.module_names;
            }
            Ok(None) => {}
            Err(e) => r.note = Some(format!("{p} not read: {}", e.chain())),
        }
    }
    match KernelModules::load(fs.root, &k.version) {
        Ok(Some(m)) => match guest_status(
            fs.root,
            &m,
            &in_initramfs,
            &reported_drivers(),
            Some(&decompress_module),
        ) {
            Ok(d) => r.drivers = d,
            Err(e) => r.note = Some(format!("drivers not read: {}", e.chain())),
        },
        Ok(None) => {
            if r.note.is_none() {
                r.note = Some(format!("no module tree for {}", k.version));
            }
        }
        Err(e) => r.note = Some(format!("module index not read: {}", e.chain())),
    }
    r
}

/// What an initramfs holds, as the early-boot module plan needs it: module names, the
/// initramfs-tools `conf/modules`, whether systemd-modules-load is inside, which tool built
/// it, its symbolic links.
pub fn existing_initramfs(ird: &Initramfs) -> ExistingInitramfs {
    let module_names = ird.kernel_modules().into_iter().map(|m| m.name).collect();
    let conf_modules = ird
        .file("conf/modules")
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let has = |p: &str| ird.lookup(p).is_some() || ird.resolve(p).is_some();
    let flavour = if has("scripts/init-top") || has("conf/initramfs.conf") {
        InitramfsFlavour::InitramfsTools
    } else if has("usr/lib/dracut") || has("etc/initrd-release") {
        InitramfsFlavour::Dracut
    } else {
        InitramfsFlavour::Unknown
    };
    let has_modules_load_d =
        has("usr/lib/systemd/systemd-modules-load") || has("lib/systemd/systemd-modules-load");
    let symlinks = ird
        .entries()
        .iter()
        .filter_map(|e| e.symlink_target.clone().map(|t| (e.path.clone(), t)))
        .collect();
    ExistingInitramfs {
        module_names,
        conf_modules,
        has_modules_load_d,
        flavour,
        symlinks,
    }
}

/// The separate `/boot` of the root on `root`: the volume its fstab mounts on `/boot`, when
/// that is another volume.
pub fn boot_volume_of<'a>(
    volumes: &'a [LinuxVolume],
    root: &LinuxVolume,
    cfg: &LinuxConfig,
) -> Option<&'a LinuxVolume> {
    cfg.fstab
        .as_ref()
        .and_then(|f| f.entries.iter().find(|e| e.mount_point == "/boot"))
        .and_then(|e| volume_for(volumes, &e.spec))
        .filter(|b| b.layout != root.layout)
}

/// The volume an fstab `spec` names: `UUID=`, `LABEL=`, `/dev/disk/by-uuid|by-label/`, an LVM
/// name (`/dev/VG/LV`, `/dev/mapper/VG-LV`), or a device path of the first disk (`/dev/sda2`,
/// `/dev/vda2`, `/dev/xvda2`, `/dev/hda2`, `/dev/nvme0n1p2`, `/dev/mmcblk0p2`).
pub fn volume_for<'a>(volumes: &'a [LinuxVolume], spec: &str) -> Option<&'a LinuxVolume> {
    let fs_is =
        |f: &dyn Fn(&LinuxFs) -> bool| volumes.iter().find(|v| v.fs.as_ref().is_some_and(f));
    let spec = spec.trim_matches('"');
    if let Some(u) = spec
        .strip_prefix("UUID=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-uuid/"))
    {
        let u = u.trim_matches('"');
        return fs_is(&|f| f.uuid.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(u)));
    }
    if let Some(l) = spec
        .strip_prefix("LABEL=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-label/"))
    {
        let l = l.trim_matches('"');
        return fs_is(&|f| f.label.as_deref() == Some(l));
    }
    for v in volumes {
        let Some((vg, name)) = v.lv.as_ref().and_then(|l| l.split_once('/')) else {
            continue;
        };
        let mapper = format!(
            "/dev/mapper/{}-{}",
            vg.replace('-', "--"),
            name.replace('-', "--")
        );
        if spec == format!("/dev/{vg}/{name}") || spec == mapper {
            return Some(v);
        }
    }
    let n = partition_of_device(spec)?;
    volumes.iter().find(|v| v.partition == Some(n))
}

/// The partition number of a device path of the first disk, as the old platform named it.
fn partition_of_device(spec: &str) -> Option<u32> {
    let d = spec.strip_prefix("/dev/")?;
    let rest = match d
        .strip_prefix("nvme0n1p")
        .or_else(|| d.strip_prefix("mmcblk0p"))
    {
        Some(r) => r,
        None => ["sda", "vda", "xvda", "hda"]
            .iter()
            .find_map(|p| d.strip_prefix(p))?,
    };
    rest.parse().ok().filter(|n| *n > 0)
}

fn unread(location: String, partition: Option<u32>, size: u64, note: String) -> LinuxVolume {
    LinuxVolume {
        location,
        partition,
        vg: None,
        lv: None,
        size,
        fs: None,
        root: None,
        boot_kernels: Vec::new(),
        note: Some(note),
        layout: None,
    }
}

/// An LVM2 PV found on the disk.
struct FoundPv {
    uuid: String,
    location: String,
    start: u64,
    len: u64,
    vg: VgInfo,
}

fn plain_uuid(s: &str) -> String {
    s.chars().filter(|c| *c != '-').collect()
}

/// The logical volumes of the volume groups whose PVs are in `pvs` (each group's metadata from
/// the PV with the highest sequence number).
fn logical_volumes<D: DiskRead + Clone + 'static>(disk: D, pvs: &[FoundPv]) -> Vec<LinuxVolume> {
    let mut out = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for p in pvs {
        if done.contains(&p.vg.uuid.as_str()) {
            continue;
        }
        done.push(&p.vg.uuid);
        let Some(vg) = pvs
            .iter()
            .filter(|q| q.vg.uuid == p.vg.uuid)
            .map(|q| &q.vg)
            .max_by_key(|vg| vg.seqno)
        else {
            continue;
        };
        // Where each PV of the metadata is on this disk.
        let find = |name: &str| -> Option<&FoundPv> {
            let info = vg.pvs.iter().find(|i| i.name == name)?;
            pvs.iter()
                .find(|q| plain_uuid(&q.uuid) == plain_uuid(&info.uuid))
        };
        for lvi in vg.lvs.iter().filter(|l| l.visible) {
            let name = format!("{}/{}", vg.name, lvi.name);
            let mut on: Vec<&str> = Vec::new();
            for s in &lvi.segments {
                for st in &s.stripes {
                    if let Some(q) = find(&st.pv) {
                        if !on.contains(&q.location.as_str()) {
                            on.push(&q.location);
                        }
                    }
                }
            }
            let location = if on.is_empty() {
                format!("LV {name}")
            } else {
                format!("LV {name} (on {})", on.join(", "))
            };
            let mut v = LinuxVolume {
                location,
                partition: None,
                vg: Some(vg.name.clone()),
                lv: Some(name),
                size: lvi.size,
                fs: None,
                root: None,
                boot_kernels: Vec::new(),
                note: None,
                layout: None,
            };
            let lvd = LvDisk::new(disk.clone(), vg, lvi, |n| find(n).map(|q| (q.start, q.len)));
            let lvd = match lvd {
                Ok(d) => d,
                Err(e) => {
                    v.note = Some(format!("logical volume not read: {}", e.chain()));
                    out.push(v);
                    continue;
                }
            };
            v.layout = Some(lvd.layout());
            match probe_head(&lvd).map(|h| linux_fs(&h)) {
                Ok(Some(fs)) => {
                    let kind = fs.kind;
                    v.fs = Some(fs);
                    if kind == LinuxFsKind::Lvm2Pv {
                        v.note = Some("an LVM2 PV inside a logical volume: not read".into());
                    } else {
                        look_inside(lvd, kind, &mut v);
                    }
                }
                Ok(None) => v.note = Some("no Linux file system recognised on it".into()),
                Err(e) => v.note = Some(e.chain()),
            }
            out.push(v);
        }
    }
    out
}

/// Opens the file system of `kind` on `d` for reading: ext2/3/4, XFS or btrfs; `None` for the
/// kinds that hold no readable files (swap, LUKS, an LVM2 PV, an external journal).
pub fn open_guest_fs<D: DiskRead + 'static>(
    d: D,
    kind: LinuxFsKind,
) -> Result<Option<Box<dyn GuestFs>>> {
    Ok(match kind {
        k if k.is_ext() => Some(Box::new(Ext4Volume::open(d)?)),
        LinuxFsKind::XfsV4 | LinuxFsKind::XfsV5 | LinuxFsKind::XfsOther => {
            Some(Box::new(XfsVolume::open(d)?))
        }
        LinuxFsKind::Btrfs => Some(Box::new(BtrfsVolume::open(d)?)),
        _ => None,
    })
}

/// Reads what `kind` allows from `d`: the root of an ext2/3/4, XFS or btrfs file system (the
/// default subvolume of btrfs); a note for the rest.
fn look_inside<D: DiskRead + 'static>(d: D, kind: LinuxFsKind, v: &mut LinuxVolume) {
    let fs = match open_guest_fs(d, kind) {
        Ok(Some(fs)) => fs,
        Ok(None) => {
            v.note = match kind {
                LinuxFsKind::Luks1 | LinuxFsKind::Luks2 | LinuxFsKind::LuksOther => Some(format!(
                    "encrypted ({}): not opened; a Linux guest probably lies inside",
                    kind.name()
                )),
                LinuxFsKind::ExtJournal => Some("an external ext3/4 journal".into()),
                _ => None,
            };
            return;
        }
        Err(e) => {
            v.note = Some(format!("{} not read: {}", kind.name(), e.chain()));
            return;
        }
    };
    match read_root(fs.as_ref()) {
        Ok(Found::Root(r)) => v.root = Some(*r),
        Ok(Found::NotRoot(kernels)) => {
            v.boot_kernels = kernels;
            v.note = Some(format!(
                "{} file system without /etc/os-release or a release file: not a Linux root",
                kind.name()
            ));
        }
        Err(e) => v.note = Some(format!("{} not read: {}", kind.name(), e.chain())),
    }
}

pub(crate) enum Found {
    Root(Box<LinuxRoot>),
    NotRoot(Vec<String>),
}

/// The release, architecture and kernels of the root file system `fs`, or the kernels of a
/// file system that is not a root (a separate `/boot`).
pub(crate) fn read_root(fs: &dyn GuestFs) -> Result<Found> {
    let Some(distribution) = distribution(fs)? else {
        return Ok(Found::NotRoot(kernels(fs, "/")?));
    };
    Ok(Found::Root(Box::new(LinuxRoot {
        distribution,
        arch: arch(fs),
        kernels: kernels(fs, "/boot")?,
        boot_volume: None,
        kernel_files: Vec::new(),
        config: None,
        notes: Vec::new(),
    })))
}

/// The distribution from the release files, in the order of trust: `/etc/os-release` (often a
/// symbolic link to `../usr/lib/os-release`), `/usr/lib/os-release`, then the files that came
/// before os-release. `None` when `/etc` holds none of them.
fn distribution(fs: &dyn GuestFs) -> Result<Option<Distribution>> {
    if fs.stat("/etc")? != Some(FileKind::Dir) {
        return Ok(None);
    }
    let read = |p: &str| -> Result<Option<String>> {
        // A path that does not resolve (a dangling link into a /usr that is another file
        // system, a link loop) is a file that is not there: the next one is tried.
        match fs.stat(p)? {
            Some(FileKind::File(_)) => {}
            _ => return Ok(None),
        }
        Ok(fs
            .read_head(p, MAX_RELEASE_FILE)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    // /usr/lib/os-release counts only with an /etc/os-release pointing at it (a dangling link
    // when /usr is another file system) or, on its own, when /etc holds nothing else.
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(t) = read(p)? {
            if let Some(d) = parse_os_release(&t, p) {
                return Ok(Some(d));
            }
        }
    }
    for p in ["/etc/redhat-release", "/etc/centos-release"] {
        if let Some(t) = read(p)? {
            return Ok(Some(parse_redhat_release(&t, p)));
        }
    }
    if let Some(t) = read("/etc/SuSE-release")? {
        return Ok(Some(parse_suse_release(&t)));
    }
    // lsb-release before debian_version: an older Ubuntu has both, and its debian_version
    // names the Debian release it was cut from (`squeeze/sid`).
    if let Some(t) = read("/etc/lsb-release")? {
        if let Some(d) = parse_lsb_release(&t) {
            return Ok(Some(d));
        }
    }
    if let Some(t) = read("/etc/debian_version")? {
        let v = t.trim().to_string();
        return Ok(Some(Distribution {
            id: "debian".into(),
            name: "Debian GNU/Linux".into(),
            pretty_name: Some(format!("Debian GNU/Linux {v}")),
            version: (!v.is_empty()).then_some(v),
            id_like: Vec::new(),
            source: "/etc/debian_version".into(),
        }));
    }
    Ok(None)
}

/// `KEY=value` lines with shell quoting, as os-release(5) and lsb-release use them.
fn shell_vars(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            let mut s = String::new();
            let mut esc = false;
            for c in inner.chars() {
                if esc {
                    s.push(c);
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            inner.to_string()
        } else {
            v.to_string()
        };
        out.push((k.trim().to_string(), v));
    }
    out
}

/// Parses an os-release file; `None` when it has neither `ID=` nor `NAME=`.
pub fn parse_os_release(text: &str, source: &str) -> Option<Distribution> {
    let vars = shell_vars(text);
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let id = get("ID");
    let name = get("NAME");
    if id.is_none() && name.is_none() {
        return None;
    }
    Some(Distribution {
        // os-release(5): ID defaults to "linux", NAME to "Linux".
        id: id.unwrap_or_else(|| "linux".into()),
        name: name.unwrap_or_else(|| "Linux".into()),
        version: get("VERSION_ID").or_else(|| get("VERSION")),
        pretty_name: get("PRETTY_NAME"),
        id_like: get("ID_LIKE")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        source: source.into(),
    })
}

/// Parses `/etc/redhat-release` (or `centos-release`): `CentOS Linux release 7.9.2009 (Core)`.
pub fn parse_redhat_release(text: &str, source: &str) -> Distribution {
    let line = text.lines().next().unwrap_or("").trim().to_string();
    let (name, version) = match line.split_once(" release ") {
        Some((n, rest)) => (
            n.trim().to_string(),
            rest.split_whitespace().next().map(str::to_string),
        ),
        None => (line.clone(), None),
    };
    let lower = name.to_ascii_lowercase();
    let id = [
        ("red hat", "rhel"),
        ("centos", "centos"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("almalinux", "almalinux"),
        ("oracle", "ol"),
        ("scientific", "scientific"),
        ("cloudlinux", "cloudlinux"),
    ]
    .iter()
    .find(|(k, _)| lower.contains(k))
    .map(|(_, id)| id.to_string())
    .unwrap_or_else(|| {
        lower
            .split_whitespace()
            .next()
            .unwrap_or("linux")
            .to_string()
    });
    Distribution {
        id,
        name,
        version,
        pretty_name: (!line.is_empty()).then_some(line),
        id_like: vec!["rhel".into()],
        source: source.into(),
    }
}

/// Parses `/etc/SuSE-release`: `SUSE Linux Enterprise Server 11 (x86_64)`, `VERSION = 11`,
/// `PATCHLEVEL = 4`.
pub fn parse_suse_release(text: &str) -> Distribution {
    let first = text.lines().next().unwrap_or("").trim().to_string();
    let field = |k: &str| {
        text.lines().find_map(|l| {
            let (a, b) = l.split_once('=')?;
            (a.trim() == k).then(|| b.trim().to_string())
        })
    };
    let version = match (field("VERSION"), field("PATCHLEVEL")) {
        (Some(v), Some(p)) if p != "0" => Some(format!("{v}.{p}")),
        (v, _) => v,
    };
    let name = first
        .split(" (")
        .next()
        .unwrap_or("")
        .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .to_string();
    let id = if first.contains("Enterprise") {
        if first.contains("Desktop") {
            "sled"
        } else {
            "sles"
        }
    } else {
        "opensuse"
    };
    Distribution {
        id: id.into(),
        name,
        version,
        pretty_name: (!first.is_empty()).then_some(first),
        id_like: vec!["suse".into()],
        source: "/etc/SuSE-release".into(),
    }
}

/// Parses `/etc/lsb-release` (`DISTRIB_ID=Ubuntu`, `DISTRIB_RELEASE=12.04`,
/// `DISTRIB_DESCRIPTION="Ubuntu 12.04.5 LTS"`); `None` without `DISTRIB_ID`.
pub fn parse_lsb_release(text: &str) -> Option<Distribution> {
    let vars = shell_vars(text);
    let get = |k: &str| {
        vars.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let name = get("DISTRIB_ID")?;
    Some(Distribution {
        id: name.to_ascii_lowercase(),
        version: get("DISTRIB_RELEASE"),
        pretty_name: get("DISTRIB_DESCRIPTION"),
        name,
        id_like: Vec::new(),
        source: "/etc/lsb-release".into(),
    })
}

/// The architecture an ELF header names (`e_ident` class and data, `e_machine`).
pub fn elf_arch(h: &[u8]) -> Option<&'static str> {
    if h.get(..4)? != b"\x7fELF" {
        return None;
    }
    let class64 = *h.get(4)? == 2;
    let le = *h.get(5)? == 1;
    let m = h.get(18..20)?;
    let machine = if le {
        u16::from_le_bytes([m[0], m[1]])
    } else {
        u16::from_be_bytes([m[0], m[1]])
    };
    Some(match (machine, class64) {
        (0x03, _) => "i386",
        (0x3E, true) => "x86_64",
        (0x3E, false) => "x32",
        (0xB7, _) => "aarch64",
        (0x28, _) => "arm",
        (0x08, true) => "mips64",
        (0x08, false) => "mips",
        (0x14, _) => "ppc",
        (0x15, _) if le => "ppc64le",
        (0x15, _) => "ppc64",
        (0x16, true) => "s390x",
        (0x16, false) => "s390",
        (0xF3, true) => "riscv64",
        (0xF3, false) => "riscv32",
        (0x102, _) => "loongarch64",
        _ => return None,
    })
}

/// The architecture from the ELF header of the first of `/bin/sh`, `/usr/bin/env`, `/bin/ls`
/// that can be read (symbolic links followed inside the file system).
fn arch(fs: &dyn GuestFs) -> Option<String> {
    ["/bin/sh", "/usr/bin/env", "/bin/ls"].iter().find_map(|p| {
        let head = fs.read_head(p, 64).ok()??;
        elf_arch(&head).map(str::to_string)
    })
}

/// The kernel versions of the `vmlinuz-*` and `vmlinux-*` files in `dir`, sorted.
fn kernels(fs: &dyn GuestFs, dir: &str) -> Result<Vec<String>> {
    let Some(names) = fs.list_dir(dir, MAX_BOOT_ENTRIES)? else {
        return Ok(Vec::new());
    };
    let mut k: Vec<String> = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix("vmlinuz-")
                .or_else(|| n.strip_prefix("vmlinux-"))
        })
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    k.sort();
    k.dedup();
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_with_quotes_comments_and_defaults() {
        let t = "# comment\nNAME=\"Debian GNU/Linux\"\nVERSION_ID='12'\nID=debian\n\
                 PRETTY_NAME=\"Debian GNU/Linux 12 (book\\\"worm)\"\nID_LIKE=\"a b\"\n";
        let d = parse_os_release(t, "/etc/os-release").unwrap();
        assert_eq!(d.id, "debian");
        assert_eq!(d.name, "Debian GNU/Linux");
        assert_eq!(d.version.as_deref(), Some("12"));
        assert_eq!(
            d.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (book\"worm)")
        );
        assert_eq!(d.id_like, ["a", "b"]);
        let d = parse_os_release("NAME=Foo\n", "x").unwrap();
        assert_eq!((d.id.as_str(), d.describe()), ("linux", "Foo".to_string()));
        assert_eq!(parse_os_release("garbage\n\0\u{1}", "x"), None);
    }

    #[test]
    fn older_release_files() {
        let d = parse_redhat_release(
            "CentOS Linux release 7.9.2009 (Core)\n",
            "/etc/centos-release",
        );
        assert_eq!(d.id, "centos");
        assert_eq!(d.name, "CentOS Linux");
        assert_eq!(d.version.as_deref(), Some("7.9.2009"));
        let d = parse_redhat_release(
            "Red Hat Enterprise Linux Server release 6.10 (Santiago)",
            "/etc/redhat-release",
        );
        assert_eq!(
            (d.id.as_str(), d.version.as_deref()),
            ("rhel", Some("6.10"))
        );
        let d = parse_suse_release(
            "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4\n",
        );
        assert_eq!(d.id, "sles");
        assert_eq!(d.name, "SUSE Linux Enterprise Server");
        assert_eq!(d.version.as_deref(), Some("11.4"));
        let d = parse_lsb_release(
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=12.04\nDISTRIB_DESCRIPTION=\"Ubuntu 12.04.5 LTS\"\n",
        )
        .unwrap();
        assert_eq!(d.id, "ubuntu");
        assert_eq!(d.describe(), "Ubuntu 12.04.5 LTS");
        assert_eq!(parse_lsb_release("X=1"), None);
        // Empty and odd inputs: no panic.
        let _ = parse_redhat_release("", "x");
        let _ = parse_suse_release("=\n=");
    }

    #[test]
    fn one_line_descriptions() {
        let vol =
            |fs: Option<LinuxFsKind>, root: Option<LinuxRoot>, note: Option<&str>| LinuxVolume {
                location: "partition 2".into(),
                partition: Some(2),
                vg: None,
                lv: None,
                size: 1 << 20,
                fs: fs.map(|kind| LinuxFs {
                    kind,
                    uuid: None,
                    label: None,
                    needs_recovery: false,
                }),
                root,
                boot_kernels: Vec::new(),
                note: note.map(str::to_string),
                layout: None,
            };
        let swap_only = LinuxReport {
            volumes: vec![vol(Some(LinuxFsKind::Swap), None, None)],
        };
        assert_eq!(swap_only.describe(), None);
        assert!(!swap_only.probably_linux());
        let xfs = LinuxReport {
            volumes: vec![vol(Some(LinuxFsKind::XfsV5), None, Some("not read yet"))],
        };
        assert_eq!(
            xfs.describe().as_deref(),
            Some("XFS (v5) on partition 2: not read yet")
        );
        assert!(xfs.probably_linux());
        let root = LinuxRoot {
            distribution: parse_os_release("NAME=Debian\nVERSION_ID=12\n", "x").unwrap(),
            arch: Some("x86_64".into()),
            kernels: vec!["6.1".into()],
            boot_volume: None,
            kernel_files: Vec::new(),
            config: None,
            notes: Vec::new(),
        };
        let r = LinuxReport {
            volumes: vec![
                vol(Some(LinuxFsKind::XfsV5), None, Some("not read yet")),
                vol(Some(LinuxFsKind::Ext4), Some(root), None),
            ],
        };
        assert_eq!(
            r.describe().as_deref(),
            Some("Debian 12, x86_64, kernels 6.1 on partition 2")
        );
    }

    #[test]
    fn elf_headers() {
        let mut h = vec![0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // ELFDATA2LSB
        h[18] = 0x3E; // EM_X86_64
        assert_eq!(elf_arch(&h), Some("x86_64"));
        h[18] = 0xB7; // EM_AARCH64
        assert_eq!(elf_arch(&h), Some("aarch64"));
        h[5] = 2; // big-endian: e_machine 0xB700
        assert_eq!(elf_arch(&h), None);
        assert_eq!(elf_arch(&h[..19]), None);
        assert_eq!(elf_arch(b"#!/bin/sh"), None);
    }
}
