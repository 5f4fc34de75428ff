//! Finding the NTFS volume of a disk: which of its volumes to work on ([`select_ntfs`]) and
//! opening the file system on it ([`open_ntfs`]). `inspect`, `inject` and the `ntfs` command
//! all open NTFS volumes through here.

use crate::error::{Error, Hint, Result};
use crate::guest::disk::{DiskRead, Window};
use crate::guest::ntfs::{NtfsOpenOptions, NtfsVolume};
use crate::guest::partition::{FsKind, Volume};
use crate::util::human_bytes;

/// A volume in a few words, as the `ntfs` command names it: `partition 2 (NTFS, 64 MiB)`,
/// `whole disk (NTFS, 1 GiB)`.
pub fn summary(v: &Volume) -> String {
    let fs = match v.fs {
        FsKind::Ntfs => "NTFS",
        FsKind::BitLocker => "BitLocker",
        FsKind::Fat => "FAT",
        FsKind::Ext => "ext",
        FsKind::Xfs => "XFS",
        FsKind::Swap => "swap",
        FsKind::Btrfs => "btrfs",
        FsKind::Luks => "LUKS",
        FsKind::Lvm => "LVM2 PV",
        FsKind::Unknown => "unknown",
    };
    match &v.partition {
        Some(p) => format!("partition {} ({fs}, {})", p.number, human_bytes(v.len)),
        None => format!("whole disk ({fs}, {})", human_bytes(v.len)),
    }
}

/// The partition number of a volume as Linux names it; 0 for a volume over the whole disk.
pub fn partition_number(v: &Volume) -> u32 {
    v.partition.as_ref().map(|p| p.number).unwrap_or(0)
}

/// The NTFS volume to work on among `volumes` (from
/// [`find_volumes`](crate::guest::partition::find_volumes)): the one on partition `partition`
/// (0: the whole disk), or else the only NTFS volume. No such partition, no NTFS volume, more
/// than one, or a chosen volume that is not NTFS (BitLocker-encrypted, another file system)
/// are errors listing what the disk has; more than one carries [`Hint::ChoosePartition`].
pub fn select_ntfs(volumes: &[Volume], partition: Option<u32>) -> Result<Volume> {
    let all = || volumes.iter().map(summary).collect::<Vec<_>>().join(", ");
    let v = match partition {
        Some(n) => volumes
            .iter()
            .find(|v| partition_number(v) == n)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("the disk has no partition {n}; it has: {}", all()))
            })?
            .clone(),
        None => {
            let ntfs: Vec<&Volume> = volumes.iter().filter(|v| v.fs == FsKind::Ntfs).collect();
            match ntfs.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    let hint = if volumes.iter().any(|v| v.fs == FsKind::BitLocker) {
                        " (a BitLocker-encrypted volume cannot be read offline)"
                    } else {
                        ""
                    };
                    return Err(Error::InvalidArgument(format!(
                        "no NTFS volume on the disk{hint}; it has: {}",
                        all()
                    )));
                }
                many => {
                    return Err(Error::InvalidArgument(format!(
                        "{} NTFS volumes on the disk ({})",
                        many.len(),
                        many.iter()
                            .map(|v| summary(v))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .with_hint(Hint::ChoosePartition));
                }
            }
        }
    };
    match v.fs {
        FsKind::Ntfs => Ok(v),
        FsKind::BitLocker => Err(Error::Unsupported(format!(
            "{} is BitLocker-encrypted; it cannot be read or written offline",
            summary(&v)
        ))),
        _ => Err(Error::InvalidArgument(format!(
            "{} does not hold an NTFS volume",
            summary(&v)
        ))),
    }
}

/// Opens the NTFS file system on volume `v` of `disk` (reading needs only a [`DiskRead`];
/// writing needs `D` to be a [`DiskIo`](crate::guest::disk::DiskIo) and `opts.read_only`
/// unset).
pub fn open_ntfs<D: DiskRead>(
    disk: D,
    v: &Volume,
    opts: &NtfsOpenOptions,
) -> Result<NtfsVolume<Window<D>>> {
    let window = Window::new(disk, v.start, v.len)?;
    NtfsVolume::open(window, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::partition::{Partition, PartitionType};

    fn vol(number: Option<u32>, fs: FsKind) -> Volume {
        let start = u64::from(number.unwrap_or(0)) << 20;
        Volume {
            partition: number.map(|n| Partition {
                number: n,
                start,
                len: 1 << 20,
                kind: PartitionType::Mbr(7),
                name: String::new(),
                bootable: false,
            }),
            start,
            len: 1 << 20,
            fs,
        }
    }

    #[test]
    fn the_only_ntfs_volume_or_the_named_partition() {
        let vols = [vol(Some(1), FsKind::Fat), vol(Some(2), FsKind::Ntfs)];
        assert_eq!(select_ntfs(&vols, None).unwrap(), vols[1]);
        assert_eq!(select_ntfs(&vols, Some(2)).unwrap(), vols[1]);
        let e = select_ntfs(&vols, Some(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "partition 1 (FAT, 1 MiB) does not hold an NTFS volume"
        );
        let e = select_ntfs(&vols, Some(3)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the disk has no partition 3; it has: partition 1 (FAT, 1 MiB), partition 2 (NTFS, 1 MiB)"
        );
        let whole = [vol(None, FsKind::Ntfs)];
        assert_eq!(select_ntfs(&whole, Some(0)).unwrap(), whole[0]);
        assert_eq!(summary(&whole[0]), "whole disk (NTFS, 1 MiB)");
    }

    #[test]
    fn none_or_several_or_encrypted() {
        let e = select_ntfs(&[vol(Some(1), FsKind::BitLocker)], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no NTFS volume on the disk (a BitLocker-encrypted volume cannot be read offline); \
             it has: partition 1 (BitLocker, 1 MiB)"
        );
        let e = select_ntfs(&[vol(Some(1), FsKind::BitLocker)], Some(1)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let e = select_ntfs(&[], None).unwrap_err();
        assert_eq!(e.to_string(), "no NTFS volume on the disk; it has: ");
        let two = [vol(Some(1), FsKind::Ntfs), vol(Some(2), FsKind::Ntfs)];
        let e = select_ntfs(&two, None).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "2 NTFS volumes on the disk (partition 1 (NTFS, 1 MiB), partition 2 (NTFS, 1 MiB))"
            ),
            "{e}"
        );
    }
}
