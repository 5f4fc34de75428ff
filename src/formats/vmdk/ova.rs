//! Placeholder: replaced by the OVA reader and writer.
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::open::OpenContext;
use crate::storage::Storage;

use super::VmdkReader;

/// Opens the first disk of the OVA package in `storage`.
pub fn open_ova(
    storage: Arc<dyn Storage>,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<VmdkReader> {
    super::ova_read::open_ova(storage, path, ctx)
}

/// Firmware declared in the OVF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// Legacy BIOS.
    #[default]
    Bios,
    /// UEFI.
    Efi,
}

/// The virtual machine an OVA describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaOptions {
    /// Virtual machine name (also the base name of the members).
    pub vm_name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// OVF operating system type (VMware guest id, e.g. `otherGuest64`, `windows9Server64Guest`).
    pub os_type: String,
    /// Firmware.
    pub firmware: Firmware,
}

impl Default for OvaOptions {
    fn default() -> Self {
        OvaOptions {
            vm_name: "vm".into(),
            cpus: 2,
            memory_mib: 4096,
            os_type: "otherGuest64".into(),
            firmware: Firmware::Bios,
        }
    }
}

/// Creates the OVA writer over the output files (see [`super::ova_write`]).
pub fn create_writer(
    files: &mut crate::convert::OutputFiles,
    size: u64,
    vmdk: &super::VmdkWriteOptions,
    ova: &OvaOptions,
) -> crate::error::Result<Box<dyn crate::image::ImageWriter>> {
    Ok(Box::new(super::ova_write::OvaWriter::create(
        files, size, vmdk, ova,
    )?))
}
