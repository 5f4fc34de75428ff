//! Placeholder: replaced by the VMDK writers.

/// Which kind of VMDK to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmdkSubformat {
    /// One file: compressed grains with markers (AWS, vSphere, OVA). The default.
    #[default]
    StreamOptimized,
    /// One file: hosted sparse extent with embedded descriptor (Workstation, VirtualBox).
    MonolithicSparse,
    /// Descriptor plus a flat `-flat.vmdk` extent (hosted products).
    MonolithicFlat,
    /// Descriptor plus a flat extent, `createType="vmfs"` (ESXi datastores).
    Vmfs,
}

/// The virtual disk controller the descriptor names (`ddb.adapterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// LSI Logic parallel SCSI (the default: what AWS and vSphere expect).
    #[default]
    LsiLogic,
    /// IDE.
    Ide,
    /// BusLogic SCSI.
    BusLogic,
    /// ESX legacy.
    LegacyEsx,
}

/// How to write a VMDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkWriteOptions {
    /// Subformat.
    pub subformat: VmdkSubformat,
    /// Adapter type.
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion`.
    pub hw_version: u32,
}

impl Default for VmdkWriteOptions {
    fn default() -> Self {
        VmdkWriteOptions {
            subformat: VmdkSubformat::StreamOptimized,
            adapter_type: AdapterType::LsiLogic,
            hw_version: 14,
        }
    }
}

/// Creates the writer for `opts.subformat` over the output files (placeholder).
pub fn create(
    _files: &mut crate::convert::OutputFiles,
    _size: u64,
    _opts: &VmdkWriteOptions,
) -> crate::error::Result<Box<dyn crate::image::ImageWriter>> {
    Err(crate::error::Error::Unsupported(
        "VMDK writer not built yet".into(),
    ))
}
