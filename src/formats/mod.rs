//! Image formats, one module each, and the registry that ties them together.
//!
//! A format module knows nothing of the convert engine or of the other formats; it implements
//! [`ImageReader`](crate::image::ImageReader) and [`ImageWriter`](crate::image::ImageWriter)
//! (and, when it can, [`ImageUpdater`](crate::image::ImageUpdater)), and opens the files an
//! image names through the reference gate ([`crate::reference`]). The [`registry`] holds one
//! row per format (probe, reader, writer, updater, check, names, extensions, write options);
//! everything above the formats (open, output creation, sync targets, check) goes through it.
//!
//! Adding a format: a folder here, a variant of [`Format`] with its name below, a row in
//! [`registry::ROWS`], and, when it takes `-o` options, a field of its options type in
//! [`options::OutputOptions`].

use std::fmt;

use serde::Serialize;

pub mod check;
pub mod error;
pub mod gcp;
pub mod options;
pub mod ova;
pub mod qcow2;
pub mod raw;
pub mod registry;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

/// Image formats diskconv knows about. What each can do is in its [`registry`] row
/// ([`Format::row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Raw bytes: a plain file or a block device.
    Raw,
    /// QEMU copy-on-write version 2 or 3.
    Qcow2,
    /// VMware virtual disk.
    Vmdk,
    /// Microsoft Virtual PC / Hyper-V VHD, called `vpc` by qemu.
    Vhd,
    /// Microsoft Hyper-V VHDX.
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
    /// An OVA package (a tar holding an OVF descriptor, a manifest and VMDK disks).
    Ova,
    /// A Google Compute Engine image: `disk.raw` in a gzip-compressed GNU tar (written only).
    Gcp,
}

impl Format {
    /// The canonical name, as accepted by `-f` / `-O`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Ova => "ova",
            Format::Gcp => "gcp",
        }
    }

    /// Whether this is raw: the bytes of the disk as they are, the only format a block device
    /// holds.
    pub fn is_raw(self) -> bool {
        self == Format::Raw
    }
}

/// The format of a block device (and of anything taken byte for byte): raw.
pub const RAW: Format = Format::Raw;

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
