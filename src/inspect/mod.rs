//! Looking inside a disk image: partition tables, file systems, and the installed guest OS.
//!
//! [`inspect_image`] opens an image read-only, reads its partition table, opens every NTFS
//! volume (read-only: a dirty or hibernated volume is still read, and its state says why it
//! could not be written) and, on the volumes that hold `Windows\System32\config\SYSTEM`, reads
//! the SYSTEM and SOFTWARE hives (a dirty hive is replayed from its `.LOG1`/`.LOG2` in memory;
//! the image is never written) to tell which Windows is installed. [`linux`] finds the Linux
//! volumes (ext2/3/4, XFS, btrfs, swap, LUKS, LVM2 PVs and their logical volumes) and reads the
//! distribution, architecture and kernels of each ext2/3/4 Linux root; [`boot`] finds each
//! kernel's initramfs and module tree.

pub mod boot;
pub mod linux;
pub mod windows;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::guest::disk::DiskRead;
use crate::guest::hive::Hive;
use crate::guest::ntfs::{NtfsOpenOptions, NtfsVolume, VolumeState};
use crate::guest::partition::{self, FsKind, PartitionTable, Volume};
use crate::guest::volume::open_ntfs;
use crate::image::{Format, ImageReader};
use crate::open::OpenOptions;
use linux::LinuxReport;
use windows::WindowsInfo;

/// The SYSTEM hive's path on a Windows volume, from the root of the volume.
pub const SYSTEM_HIVE: &str = "Windows\\System32\\config\\SYSTEM";

/// The largest hive (or hive log) read from a volume: 1 GiB. Real SOFTWARE hives reach a few
/// hundred MiB; anything larger is not a hive.
pub const MAX_HIVE_SIZE: u64 = 1 << 30;

/// A hive read from a volume.
pub struct LoadedHive {
    /// The hive (logs replayed when it was dirty).
    pub hive: Hive,
    /// Its path on the volume.
    pub path: String,
    /// Whether its transaction logs were replayed.
    pub replayed: bool,
}

/// Reads the hive `name` (`SYSTEM`, `SOFTWARE`) from `<root>\System32\config` on `vol`, with
/// its `.LOG`, `.LOG1` and `.LOG2` from the same folder; a dirty hive is replayed from them in
/// memory. A dirty hive whose logs cannot be used is an error saying why (the recovery notes).
pub fn read_hive<D: DiskRead>(vol: &NtfsVolume<D>, root: &str, name: &str) -> Result<LoadedHive> {
    let path = format!("{root}\\System32\\config\\{name}");
    let bytes = vol
        .read_file(&path, MAX_HIVE_SIZE)
        .map_err(|e| e.in_file(&path))?;
    let mut logs: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for ext in ["LOG", "LOG1", "LOG2"] {
        let p = format!("{path}.{ext}");
        if let Some(e) = vol.stat(&p)? {
            if !e.is_dir && e.size > 0 {
                let data = vol
                    .read_file(&p, MAX_HIVE_SIZE)
                    .map_err(|err| err.in_file(&p))?;
                logs.push((PathBuf::from(&p), data));
            }
        }
    }
    let hive = Hive::from_bytes_with_logs(bytes, &logs, false).map_err(|e| e.in_file(&path))?;
    if hive.is_read_only() {
        let r = hive.recovery();
        let why = if r.notes.is_empty() {
            "no usable log entry".to_string()
        } else {
            r.notes.join("; ")
        };
        return Err(Error::Corrupt(format!(
            "the hive is dirty (its transaction logs hold changes not yet written to it) and \
             the logs beside it cannot be replayed ({} log file(s) found: {why}); boot Windows \
             and shut it down cleanly first",
            logs.len()
        ))
        .in_file(&path));
    }
    let replayed = hive.recovery().was_dirty && hive.recovery().entries_applied > 0;
    Ok(LoadedHive {
        hive,
        path,
        replayed,
    })
}

/// The name of the Windows folder on `vol` as stored (`Windows`, `WINDOWS`), when it holds a
/// SYSTEM hive.
pub fn windows_root<D: DiskRead>(vol: &NtfsVolume<D>) -> Result<Option<String>> {
    match vol.stat(SYSTEM_HIVE)? {
        Some(e) if !e.is_dir => {}
        _ => return Ok(None),
    }
    Ok(vol
        .stat("Windows")?
        .map(|e| e.name)
        .or_else(|| Some("Windows".into())))
}

/// The Windows installation found on a volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FoundWindows {
    /// What it is.
    pub info: WindowsInfo,
    /// Hives whose transaction logs were replayed (in memory) to read them.
    pub replayed_hives: Vec<String>,
}

/// One volume of the image and what is on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VolumeReport {
    /// Where it is and its file system kind.
    pub volume: Volume,
    /// For NTFS: its state (version, label, dirty, log, hibernation, clusters).
    pub ntfs: Option<VolumeState>,
    /// Why the volume could be written, or not (NTFS only).
    pub not_writable: Option<String>,
    /// The Windows installed on it.
    pub windows: Option<FoundWindows>,
    /// What went wrong while looking inside it (the inspection goes on with the next volume).
    pub error: Option<String>,
}

/// What [`inspect_image`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InspectReport {
    /// The image file.
    pub path: PathBuf,
    /// Its container format.
    pub format: Format,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// The partition table.
    pub partition_table: PartitionTable,
    /// Every volume.
    pub volumes: Vec<VolumeReport>,
    /// The Linux volumes (file systems, LVM2 PVs and logical volumes, swap, LUKS) and the
    /// Linux roots read from them.
    pub linux: LinuxReport,
}

impl InspectReport {
    /// The Windows installations found, with the partition number of their volume.
    pub fn windows(&self) -> impl Iterator<Item = (Option<u32>, &FoundWindows)> {
        self.volumes.iter().filter_map(|v| {
            v.windows
                .as_ref()
                .map(|w| (v.volume.partition.as_ref().map(|p| p.number), w))
        })
    }
}

fn fs_name(fs: FsKind) -> &'static str {
    match fs {
        FsKind::Ntfs => "ntfs",
        FsKind::BitLocker => "bitlocker",
        FsKind::Fat => "fat",
        FsKind::Ext => "ext",
        FsKind::Xfs => "xfs",
        FsKind::Swap => "swap",
        FsKind::Btrfs => "btrfs",
        FsKind::Luks => "luks",
        FsKind::Lvm => "lvm2-pv",
        FsKind::Unknown => "unknown",
    }
}

/// A short name for a volume in messages: `partition 2 (ntfs, 0x100000, 64.0 MiB)`.
pub fn describe_volume(v: &Volume) -> String {
    let what = match &v.partition {
        Some(p) => format!("partition {}", p.number),
        None => "the whole disk".to_string(),
    };
    format!(
        "{what} ({}, at {:#x}, {})",
        fs_name(v.fs),
        v.start,
        crate::util::human_bytes(v.len)
    )
}

fn inspect_volume(disk: &dyn ImageReader, v: &Volume) -> VolumeReport {
    let mut r = VolumeReport {
        volume: v.clone(),
        ntfs: None,
        not_writable: None,
        windows: None,
        error: None,
    };
    if !matches!(v.fs, FsKind::Ntfs | FsKind::BitLocker) {
        return r;
    }
    let res = (|| -> Result<()> {
        let vol = open_ntfs(disk, v, &NtfsOpenOptions { read_only: true })?;
        r.ntfs = Some(vol.state().clone());
        r.not_writable = vol.state().not_writable_reason();
        let Some(root) = windows_root(&vol)? else {
            return Ok(());
        };
        let system = read_hive(&vol, &root, "SYSTEM")?;
        let software = read_hive(&vol, &root, "SOFTWARE")?;
        let info = windows::windows_info(&system.hive, &software.hive, &root)?;
        let replayed_hives = [&system, &software]
            .iter()
            .filter(|h| h.replayed)
            .map(|h| h.path.clone())
            .collect();
        r.windows = Some(FoundWindows {
            info,
            replayed_hives,
        });
        Ok(())
    })();
    if let Err(e) = res {
        r.error = Some(e.chain());
    }
    r
}

/// Opens the image at `path` read-only and reports its format, size, partitions, volumes and
/// the Windows installed on them. Nothing is written to the image.
pub fn inspect_image(path: &Path, opts: &OpenOptions) -> Result<InspectReport> {
    let reader: std::sync::Arc<dyn ImageReader> = crate::open(path, opts)?.into();
    let format = reader.format();
    let virtual_size = reader.virtual_size();
    if virtual_size == 0 {
        return Err(crate::Error::InvalidArgument(format!(
            "the {format} image is empty (0 bytes): no partition table or volume to inspect"
        ))
        .in_file(path));
    }
    // Read-only all the way: the image is read as a DiskRead, its volumes opened read-only.
    let disk: &dyn ImageReader = reader.as_ref();
    let partition_table = partition::read_partition_table(&disk).map_err(|e| e.in_file(path))?;
    let found = partition::find_volumes(&disk).map_err(|e| e.in_file(path))?;
    let volumes = found.iter().map(|v| inspect_volume(disk, v)).collect();
    let linux = linux::find_linux(reader.clone(), &found);
    Ok(InspectReport {
        path: path.to_path_buf(),
        format,
        virtual_size,
        partition_table,
        volumes,
        linux,
    })
}
