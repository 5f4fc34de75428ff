//! `$LogFile` and `hiberfil.sys`: whether Windows left work pending on the volume.

use super::NtfsError;

/// Whether `$LogFile`'s content (its whole unnamed `$DATA`) holds no transactions that would
/// have to be replayed: all 0xFF (emptied, as mkntfs and ntfs-3g leave it), or a valid restart
/// page (`RSTR`, fixups checked) whose current restart area says the volume is clean (the
/// clean flag set, or no client in use). A damaged restart page is an error naming it.
pub fn log_is_clean(data: &[u8]) -> Result<bool, NtfsError> {
    let _ = data;
    unimplemented!("logfile::log_is_clean: helper B")
}

/// Whether the first bytes of `hiberfil.sys` mark a hibernation / Fast Startup image (`hibr`,
/// `HIBR`, `wake`, `WAKE`, `RSTR` per ntfs-3g's rules; a zeroed header is not).
pub fn hiberfil_in_use(header: &[u8]) -> bool {
    let _ = header;
    unimplemented!("logfile::hiberfil_in_use: helper B")
}
