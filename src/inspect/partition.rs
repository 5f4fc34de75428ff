//! MBR and GPT partition tables, and the file systems found in the partitions.

use crate::error::Result;
use crate::inject::disk::DiskRead;

/// The partitioning of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// A DOS partition table (primary and logical partitions).
    Mbr,
    /// A GUID partition table (behind a protective MBR).
    Gpt,
    /// No partition table: the whole disk is one volume (or unknown).
    None,
}

/// The type of a partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionType {
    /// MBR partition type byte.
    Mbr(u8),
    /// GPT partition type GUID, upper-case text form.
    Gpt(String),
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based number as Linux names it (MBR logical partitions from 5).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Its type.
    pub kind: PartitionType,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// MBR active flag, or GPT legacy-BIOS-bootable attribute.
    pub bootable: bool,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionTable {
    /// MBR, GPT or none.
    pub scheme: Scheme,
    /// Logical sector size used to read the table (512 or 4096).
    pub sector_size: u32,
    /// The partitions in table order.
    pub partitions: Vec<Partition>,
}

/// The file system (or encryption) found at the start of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// NTFS boot sector (`NTFS    ` OEM id).
    Ntfs,
    /// BitLocker-encrypted volume (`-FVE-FS-` OEM id).
    BitLocker,
    /// FAT12/16/32 (an EFI System Partition, usually).
    Fat,
    /// ext2/3/4.
    Ext,
    /// XFS.
    Xfs,
    /// Linux swap.
    Swap,
    /// Anything else.
    Unknown,
}

/// A volume: a partition (or the whole disk) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// The partition, or `None` for a whole-disk volume.
    pub partition: Option<Partition>,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it holds.
    pub fs: FsKind,
}

/// Reads the partition table: GPT (primary header, or the backup when the primary is damaged;
/// CRCs checked; any entry size >= 128) behind a protective MBR, else an MBR with its
/// extended-partition chain (bounded: loops are errors). A disk with neither is
/// [`Scheme::None`].
pub fn read_partition_table(disk: &dyn DiskRead) -> Result<PartitionTable> {
    let _ = disk;
    unimplemented!("read_partition_table: helper C")
}

/// Every volume on the disk with its file system kind: each partition (except extended
/// containers), or the whole disk when there is no partition table.
pub fn find_volumes(disk: &dyn DiskRead) -> Result<Vec<Volume>> {
    let _ = disk;
    unimplemented!("find_volumes: helper C")
}
