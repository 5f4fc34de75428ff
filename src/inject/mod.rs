//! Offline adaptation of a guest: the registry hive editor (and, later, the NTFS writer and the
//! Windows and Linux adaptation steps built on them).

pub mod hive;
pub mod windows;
