//! Offline adaptation of a guest: driver sources ([`drivers`]) and the Windows adaptation
//! ([`windows`], [`adapt`]), built on the guest layer ([`guest`](crate::guest): byte access with
//! transactions, the registry hive editor, the NTFS writer, ISO 9660).

pub mod adapt;
pub mod drivers;
pub mod windows;
