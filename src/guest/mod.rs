//! The guest layer: what lies inside a virtual disk, below [`inspect`](crate::inspect) and
//! [`inject`](crate::inject), which both build on it.
//!
//! - [`disk`]: byte access to a disk or volume ([`DiskRead`](disk::DiskRead) /
//!   [`DiskIo`](disk::DiskIo); an opened image is a `DiskRead`), a [`Window`](disk::Window)
//!   onto one partition, an in-memory disk, and [`TxDisk`](disk::TxDisk) / [`ImageTx`](disk::ImageTx), the transaction that
//!   keeps every write in memory until it is committed to the image.
//! - [`partition`]: MBR and GPT partition tables and what each volume holds.
//! - [`hive`]: the Windows registry hive library (regf): read, edit, create, transaction logs,
//!   `.reg` files, structural check.
//! - [`ntfs`]: the NTFS reader and writer.
//! - [`volume`]: which volume of a disk holds the NTFS file system to work on, and opening it.
//! - [`fs`]: [`GuestFs`](fs::GuestFs), the read-only file access every guest file system
//!   reader offers (ext4 today), used by inspection and adaptation.
//! - [`fsdetect`]: which file system a volume holds, and the details of the Linux ones.
//! - [`lvm`]: LVM2 physical volumes, their metadata, and reading a logical volume.
//! - [`ext4`]: reading ext2/ext3/ext4 file systems (read-only, through the `ext4-view` crate).
//! - [`iso9660`]: ISO 9660 / Joliet images (driver ISOs).
//! - [`xfs`]: reading XFS v4 and v5 file systems (read-only, our own reader).

pub mod disk;
pub mod ext4;
pub mod fs;
pub mod fsdetect;
pub mod hive;
pub mod iso9660;
pub mod lvm;
pub mod ntfs;
pub mod partition;
pub mod volume;
pub mod xfs;
