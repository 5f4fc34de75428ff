//! How a file system is named (`/etc/fstab` first fields, `root=` and `resume=` values), whether
//! that name survives a move to another platform, and the [`VolumeMap`] that turns a
//! platform-dependent name into the UUID of the file system it named.

use std::collections::{BTreeMap, BTreeSet};

/// How a device specification names its file system or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// `UUID=...` (the file system UUID).
    Uuid,
    /// `LABEL=...`.
    Label,
    /// `PARTUUID=...` (the GPT partition GUID, or the MBR signature and number).
    PartUuid,
    /// `PARTLABEL=...` (the GPT partition name).
    PartLabel,
    /// A udev link by property: `/dev/disk/by-uuid|by-label|by-partuuid|by-partlabel|by-id/...`.
    DiskLink,
    /// A device-mapper name: `/dev/mapper/...` (LVM, LUKS, multipath).
    Mapper,
    /// An LVM logical volume by volume group: `/dev/<vg>/<lv>`.
    Lvm,
    /// A software RAID array: `/dev/md*`, `/dev/md/<name>`.
    Md,
    /// A kernel disk name that depends on the controller and the probe order: `/dev/sd*`,
    /// `/dev/hd*`, `/dev/vd*`, `/dev/xvd*`, `/dev/nvme*n*[p*]`, `/dev/mmcblk*`.
    KernelName,
    /// A udev link by bus position: `/dev/disk/by-path/...` (changes with the controller).
    ByPath,
    /// A device-mapper minor number: `/dev/dm-N` (changes with the activation order).
    DmNumber,
    /// A removable drive: `/dev/sr*`, `/dev/cdrom*`, `/dev/fd*`, `/dev/scd*` (not fixed).
    Removable,
    /// Another name under `/dev` (not judged).
    OtherDevice,
    /// Not a block device: `proc`, `tmpfs`, `none`, a network share (`host:/path`, `//host/s`).
    NotDevice,
}

impl Naming {
    /// Whether the name stays valid on another platform: `Some(true)` for stable names,
    /// `Some(false)` for names that change ([`Naming::KernelName`], [`Naming::ByPath`],
    /// [`Naming::DmNumber`]), `None` when the question does not apply (removable drives,
    /// names not judged, things that are not block devices).
    pub fn stable(self) -> Option<bool> {
        match self {
            Naming::Uuid
            | Naming::Label
            | Naming::PartUuid
            | Naming::PartLabel
            | Naming::DiskLink
            | Naming::Mapper
            | Naming::Lvm
            | Naming::Md => Some(true),
            Naming::KernelName | Naming::ByPath | Naming::DmNumber => Some(false),
            Naming::Removable | Naming::OtherDevice | Naming::NotDevice => None,
        }
    }
}

/// Strips one pair of matching quotes.
pub(crate) fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

/// `s` is a non-empty run of ASCII digits.
fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `letters` then optional digits: `a`, `ab1`, `c12`.
fn letters_then_digits(s: &str) -> bool {
    let l = s.bytes().take_while(|b| b.is_ascii_lowercase()).count();
    l > 0 && (l == s.len() || digits(&s[l..]))
}

/// `nvme<N>n<N>[p<N>]`, `mmcblk<N>[p<N>]` after their prefix.
fn nvme_like(rest: &str) -> bool {
    let (disk, part) = match rest.split_once('p') {
        Some((d, p)) => (d, Some(p)),
        None => (rest, None),
    };
    part.is_none_or(digits)
        && match disk.split_once('n') {
            Some((c, n)) => digits(c) && digits(n),
            None => false,
        }
}

/// How `spec` names its device.
pub fn classify(spec: &str) -> Naming {
    let spec = unquote(spec.trim());
    for (prefix, naming) in [
        ("UUID=", Naming::Uuid),
        ("LABEL=", Naming::Label),
        ("PARTUUID=", Naming::PartUuid),
        ("PARTLABEL=", Naming::PartLabel),
    ] {
        if spec.starts_with(prefix) {
            return naming;
        }
    }
    let Some(dev) = spec.strip_prefix("/dev/") else {
        return Naming::NotDevice;
    };
    if let Some(link) = dev.strip_prefix("disk/") {
        return if link.starts_with("by-path/") {
            Naming::ByPath
        } else if [
            "by-uuid/",
            "by-label/",
            "by-partuuid/",
            "by-partlabel/",
            "by-id/",
        ]
        .iter()
        .any(|p| link.starts_with(p))
        {
            Naming::DiskLink
        } else {
            Naming::OtherDevice
        };
    }
    if dev.starts_with("mapper/") {
        return Naming::Mapper;
    }
    if dev.starts_with("md/") || dev.strip_prefix("md").is_some_and(digits) {
        return Naming::Md;
    }
    if dev.strip_prefix("dm-").is_some_and(digits) {
        return Naming::DmNumber;
    }
    if let Some((vg, lv)) = dev.split_once('/') {
        return if !vg.is_empty()
            && !lv.is_empty()
            && !lv.contains('/')
            && ![
                "disk", "block", "char", "cdrom", "input", "bus", "snd", "net", "pts", "shm",
            ]
            .contains(&vg)
        {
            Naming::Lvm
        } else {
            Naming::OtherDevice
        };
    }
    for p in ["sr", "fd", "scd"] {
        if dev.strip_prefix(p).is_some_and(digits) {
            return Naming::Removable;
        }
    }
    if dev.starts_with("cdrom") || dev.starts_with("dvd") || dev.starts_with("floppy") {
        return Naming::Removable;
    }
    for p in ["xvd", "sd", "hd", "vd"] {
        if dev.strip_prefix(p).is_some_and(letters_then_digits) {
            return Naming::KernelName;
        }
    }
    if dev.strip_prefix("nvme").is_some_and(nvme_like) {
        return Naming::KernelName;
    }
    if let Some(r) = dev.strip_prefix("mmcblk") {
        let (d, p) = r.split_once('p').unwrap_or((r, "0"));
        if digits(d) && digits(p) {
            return Naming::KernelName;
        }
    }
    Naming::OtherDevice
}

/// The kernel disk name suffix of disk `index` (0: `a`, 25: `z`, 26: `aa`).
fn disk_letters(index: u32) -> String {
    let mut n = u64::from(index) + 1;
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// What the caller knows of the file systems on the guest's disks: the device paths they had
/// on the old platform, and every file system UUID found.
///
/// ```
/// use diskconv::guest::linuxcfg::VolumeMap;
/// let mut m = VolumeMap::new();
/// // First disk, partition 1: /dev/sda1, /dev/vda1, /dev/xvda1, /dev/hda1, /dev/nvme0n1p1.
/// m.add_partition(0, 1, "0b3a6a0e-4b1c-4f7e-9d62-3a0f4b1d2c11");
/// assert_eq!(m.resolve("/dev/vda1"), Some("0b3a6a0e-4b1c-4f7e-9d62-3a0f4b1d2c11"));
/// assert_eq!(m.resolve("/dev/sdb1"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VolumeMap {
    devices: BTreeMap<String, String>,
    uuids: BTreeSet<String>,
}

impl VolumeMap {
    /// An empty map.
    pub fn new() -> VolumeMap {
        VolumeMap::default()
    }

    /// `device` (a path on the old platform: `/dev/sda1`, `/dev/disk/by-path/...`) held the
    /// file system `uuid`.
    pub fn insert(&mut self, device: &str, uuid: &str) {
        let uuid = uuid.to_ascii_lowercase();
        self.devices.insert(device.to_string(), uuid.clone());
        self.uuids.insert(uuid);
    }

    /// Partition `partition` (1-based; 0: the whole disk) of disk `disk` (0-based, in the
    /// order the old platform presented them) holds the file system `uuid`: every kernel
    /// name it may have had is mapped (`sd`, `hd`, `vd`, `xvd` with the disk's letters, and
    /// `nvme<disk>n1[p<partition>]`).
    pub fn add_partition(&mut self, disk: u32, partition: u32, uuid: &str) {
        let l = disk_letters(disk);
        let num = if partition == 0 {
            String::new()
        } else {
            partition.to_string()
        };
        for p in ["sd", "hd", "vd", "xvd"] {
            self.insert(&format!("/dev/{p}{l}{num}"), uuid);
        }
        let nvme = if partition == 0 {
            format!("/dev/nvme{disk}n1")
        } else {
            format!("/dev/nvme{disk}n1p{partition}")
        };
        self.insert(&nvme, uuid);
    }

    /// A file system found on the disks (one that no old device path is known for).
    pub fn add_uuid(&mut self, uuid: &str) {
        self.uuids.insert(uuid.to_ascii_lowercase());
    }

    /// The UUID of the file system `device` named on the old platform.
    pub fn resolve(&self, device: &str) -> Option<&str> {
        self.devices.get(unquote(device.trim())).map(|s| s.as_str())
    }

    /// Whether `uuid` is one of the file systems found (case-insensitive).
    pub fn has_uuid(&self, uuid: &str) -> bool {
        self.uuids.contains(&uuid.to_ascii_lowercase())
    }

    /// Whether no file system is known.
    pub fn is_empty(&self) -> bool {
        self.uuids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_world_names() {
        for (spec, n) in [
            ("UUID=6f1d0c2e-1b9a-4a8e-9a55-0c2d5e7f9a10", Naming::Uuid),
            ("LABEL=cloudimg-rootfs", Naming::Label),
            ("PARTUUID=5a0b2c1d-01", Naming::PartUuid),
            ("PARTLABEL=root", Naming::PartLabel),
            ("/dev/disk/by-uuid/6f1d0c2e", Naming::DiskLink),
            ("/dev/disk/by-id/dm-uuid-LVM-abc", Naming::DiskLink),
            (
                "/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part1",
                Naming::ByPath,
            ),
            ("/dev/mapper/rhel-root", Naming::Mapper),
            ("/dev/mapper/centos_vm-swap", Naming::Mapper),
            ("/dev/vg00/lv_root", Naming::Lvm),
            ("/dev/md0", Naming::Md),
            ("/dev/md/boot", Naming::Md),
            ("/dev/sda1", Naming::KernelName),
            ("/dev/sdab12", Naming::KernelName),
            ("/dev/sdb", Naming::KernelName),
            ("/dev/hda2", Naming::KernelName),
            ("/dev/vda1", Naming::KernelName),
            ("/dev/xvda1", Naming::KernelName),
            ("/dev/nvme0n1p1", Naming::KernelName),
            ("/dev/nvme1n1", Naming::KernelName),
            ("/dev/mmcblk0p2", Naming::KernelName),
            ("/dev/dm-0", Naming::DmNumber),
            ("/dev/sr0", Naming::Removable),
            ("/dev/cdrom", Naming::Removable),
            ("/dev/fd0", Naming::Removable),
            ("proc", Naming::NotDevice),
            ("tmpfs", Naming::NotDevice),
            ("server:/export", Naming::NotDevice),
            ("/dev/shm/x", Naming::OtherDevice),
            ("/dev/root", Naming::OtherDevice),
            ("/dev/sd", Naming::OtherDevice),
            ("/dev/nvme0", Naming::OtherDevice),
            ("\"/dev/sda1\"", Naming::KernelName),
        ] {
            assert_eq!(classify(spec), n, "{spec}");
        }
        assert_eq!(Naming::KernelName.stable(), Some(false));
        assert_eq!(Naming::Mapper.stable(), Some(true));
        assert_eq!(Naming::NotDevice.stable(), None);
    }

    #[test]
    fn volume_map_names_every_kernel_alias() {
        assert_eq!(disk_letters(0), "a");
        assert_eq!(disk_letters(25), "z");
        assert_eq!(disk_letters(26), "aa");
        assert_eq!(disk_letters(27), "ab");
        let mut m = VolumeMap::new();
        m.add_partition(1, 2, "ABC");
        m.add_partition(0, 0, "whole");
        for d in [
            "/dev/sdb2",
            "/dev/vdb2",
            "/dev/xvdb2",
            "/dev/hdb2",
            "/dev/nvme1n1p2",
        ] {
            assert_eq!(m.resolve(d), Some("abc"), "{d}");
        }
        assert_eq!(m.resolve("/dev/sda"), Some("whole"));
        assert_eq!(m.resolve("/dev/nvme0n1"), Some("whole"));
        assert!(m.has_uuid("Abc"));
        assert!(!m.has_uuid("def"));
    }
}
