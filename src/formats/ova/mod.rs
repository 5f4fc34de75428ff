//! OVA packages (a tar archive holding an OVF descriptor, an optional `.mf` manifest and
//! streamOptimized VMDK disks): the public surface (errors, writer options) over [`reader`]
//! (reading a package: members, manifest, OVF, disks), [`ovf`] (the OVF descriptor),
//! [`manifest`] (the `.mf` manifest) and [`writer`] (writing one).

pub mod manifest;
mod options;
pub mod ovf;
pub mod reader;
pub mod writer;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Hint, Result};
use crate::reference::OpenContext;
use crate::storage::Storage;

pub use reader::{OvaPackage, OvaReader};

/// The USTAR magic "ustar" of a tar header (POSIX.1-1988 `magic` field), at
/// [`TAR_MAGIC_OFFSET`] of every member header: an OVA is a tar archive whose first member is
/// its OVF descriptor (DSP0243, "OVF package").
pub const TAR_MAGIC: &[u8; 5] = b"ustar";
/// Offset of [`TAR_MAGIC`] in a tar header block.
pub const TAR_MAGIC_OFFSET: usize = 257;

/// Opens one disk of the OVA package in `storage`: the one `OpenOptions::package.disk`
/// selects, the first by default (see [`reader`]).
pub fn open_ova(
    storage: Arc<dyn Storage>,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<OvaReader> {
    reader::open_ova(storage, path, ctx)
}

/// Opens every disk of the OVA package in `storage`, in the OVF's order (see
/// [`reader::open_ova_disks`]).
pub fn open_ova_disks(
    storage: Arc<dyn Storage>,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<Vec<OvaReader>> {
    reader::open_ova_disks(storage, path, ctx)
}

/// What is wrong with an OVA package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OvaError {
    /// A member's digest differs from the one its manifest records.
    #[error(
        "OVA member '{member}' does not match the manifest {manifest} (line {line}): {algorithm} \
         recorded {expected}, computed {found}; the package was altered or damaged"
    )]
    ManifestMismatch {
        /// The member.
        member: String,
        /// The manifest's member name.
        manifest: String,
        /// Its line recording the digest.
        line: usize,
        /// The algorithm of that line.
        algorithm: manifest::DigestAlgorithm,
        /// The digest the manifest records (hex).
        expected: String,
        /// The digest of the member's bytes (hex).
        found: String,
    },
    /// The manifest lists a file the archive does not hold.
    #[error(
        "the manifest {manifest} (line {line}) lists '{name}', which the OVA does not contain: \
         the package is incomplete"
    )]
    ManifestMissingMember {
        /// The manifest's member name.
        manifest: String,
        /// The line.
        line: usize,
        /// The file it names.
        name: String,
    },
    /// A manifest line does not parse.
    #[error("OVA manifest {manifest} line {line}: {detail}")]
    ManifestSyntax {
        /// The manifest's member name.
        manifest: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The OVF descriptor is not usable XML or not an OVF envelope.
    #[error("OVF descriptor '{file}': {detail}")]
    Ovf {
        /// The descriptor's member name.
        file: String,
        /// What is wrong, with the line where known.
        detail: String,
    },
    /// A disk's virtual size differs from the capacity the OVF declares for it.
    #[error(
        "OVA disk {index} ('{member}'): the OVF declares a capacity of {declared} bytes \
         ({declared_text}) but the disk holds {actual} bytes"
    )]
    CapacityMismatch {
        /// The disk's 1-based number in the OVF's order.
        index: usize,
        /// The member holding it.
        member: String,
        /// The declared capacity in bytes.
        declared: u64,
        /// The declared capacity as written.
        declared_text: String,
        /// The disk's virtual size.
        actual: u64,
    },
    /// A disk number outside the package.
    #[error(
        "the OVA has {count} disk(s); there is no disk {requested} (disks are numbered from 1 in the order the OVF lists them)"
    )]
    NoSuchDisk {
        /// The number asked for.
        requested: usize,
        /// The disks in the package.
        count: usize,
    },
    /// The package's structure is wrong (no OVF, a member the OVF names is missing, ...).
    #[error("{0}")]
    Package(String),
}

impl OvaError {
    /// The message without the hint of the option that overrides the check, for a warning
    /// when the caller chose to accept it.
    pub fn as_warning(&self) -> String {
        match self {
            OvaError::CapacityMismatch {
                index,
                member,
                declared,
                declared_text,
                actual,
            } => format!(
                "OVA disk {index} ('{member}'): the OVF declares a capacity of {declared} bytes \
                 ({declared_text}) but the disk holds {actual} bytes"
            ),
            other => other.to_string(),
        }
    }

    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OvaError::ManifestMismatch { .. }
            | OvaError::ManifestMissingMember { .. }
            | OvaError::CapacityMismatch { .. }
            | OvaError::Package(_) => ErrorKind::Corrupt,
            OvaError::ManifestSyntax { .. } | OvaError::Ovf { .. } => ErrorKind::InvalidFormat,
            OvaError::NoSuchDisk { .. } => ErrorKind::InvalidArgument,
        }
    }
}

impl From<OvaError> for Error {
    fn from(e: OvaError) -> Self {
        let hint = match &e {
            OvaError::ManifestMismatch { .. } | OvaError::ManifestMissingMember { .. } => {
                Some(Hint::SkipManifestCheck)
            }
            OvaError::CapacityMismatch { .. } => Some(Hint::AllowCapacityMismatch),
            _ => None,
        };
        let err = Error::typed(e.kind(), e);
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
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

/// Creates the OVA writer over the output files (see [`writer`]).
pub fn create_writer(
    files: &mut dyn crate::files::Sink,
    size: u64,
    vmdk: &crate::formats::vmdk::VmdkWriteOptions,
    ova: &OvaOptions,
) -> crate::error::Result<Box<dyn crate::image::ImageWriter>> {
    Ok(Box::new(writer::OvaWriter::create(files, size, vmdk, ova)?))
}

/// Whether the first sector (`head`) is a tar header whose member is an OVF descriptor: an OVA
/// package.
pub fn probe(head: &[u8], _len: u64) -> bool {
    if head.len() >= TAR_MAGIC_OFFSET + 6
        && head[TAR_MAGIC_OFFSET..TAR_MAGIC_OFFSET + TAR_MAGIC.len()] == *TAR_MAGIC
    {
        let name = head[..100].split(|&b| b == 0).next().unwrap_or(&[]);
        return name.to_ascii_lowercase().ends_with(b".ovf");
    }
    false
}
