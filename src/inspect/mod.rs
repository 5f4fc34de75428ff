//! Looking inside a disk image: partition tables, file systems, and the installed guest OS.

pub mod partition;
pub mod windows;
