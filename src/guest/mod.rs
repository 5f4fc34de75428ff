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
//! - [`extfs`]: writing ext2/ext3/ext4 file systems offline ([`Ext4Writer`](extfs::Ext4Writer)).
//! - [`btrfs`]: reading btrfs file systems (read-only; the default subvolume's files, the
//!   subvolumes).
//! - [`iso9660`]: ISO 9660 / Joliet images (driver ISOs).
//! - [`kmod`]: kernel modules for early boot: the index files, each target's drivers, their
//!   status and the extra initramfs archive that provides them.
//! - [`compress`]: the compressed streams of initramfs archives and kernel modules.
//! - [`initramfs`]: reading initramfs images (cpio segments, compressed or not) and writing a
//!   newc archive to append to one.
//! - [`linuxcfg`]: a Linux guest's configuration that breaks on another platform (fstab, boot
//!   loader, MAC-bound network, guest tools), and the file changes that fix it.
//! - [`xfs`]: reading XFS v4 and v5 file systems (read-only, our own reader).

pub mod btrfs;
pub mod compress;
pub mod disk;
pub mod ext4;
pub mod extfs;
pub mod fs;
pub mod fsdetect;
pub mod hive;
pub mod initramfs;
pub mod iso9660;
pub mod kmod;
pub mod linuxcfg;
pub mod lvm;
pub mod ntfs;
pub mod partition;
pub mod volume;
pub mod xfs;
