//! Offline adaptation of a guest: byte access with transactions ([`disk`]), the registry hive
//! editor ([`hive`]), the NTFS writer ([`ntfs`]), driver sources ([`drivers`], [`iso9660`]) and
//! the Windows adaptation built on them ([`windows`], [`adapt`]).

pub mod adapt;
pub mod disk;
pub mod drivers;
pub mod hive;
pub mod iso9660;
pub mod ntfs;
pub mod windows;
