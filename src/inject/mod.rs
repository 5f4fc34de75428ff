//! Offline adaptation of a guest: driver sources ([`drivers`]), the Windows adaptation
//! ([`windows`], [`adapt`]) and the Linux one ([`linux`]), built on the guest layer ([`guest`](crate::guest): byte access with
//! transactions, the registry hive editor, the NTFS writer, ISO 9660).

pub mod adapt;
pub mod drivers;
pub mod linux;
pub mod windows;
