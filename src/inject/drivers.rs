//! Finding the right Windows drivers in a virtio-win folder or ISO.
//!
//! Layouts understood: the ISO's `<driver>/<os>/<arch>/` (e.g. `viostor/2k19/amd64/`), its
//! flattened `<arch>/<os>/` folders, and the installed tree `drivers/<amd64|i386>/<Win10|
//! Win2019|...>/` (`/usr/share/virtio-win`).

use std::path::Path;

use crate::error::Result;
use crate::inspect::windows::WinArch;

/// One file of a driver package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFile {
    /// File name, e.g. "viostor.sys".
    pub name: String,
    /// Where it came from inside the source, for reports, e.g. "viostor/2k19/amd64/viostor.sys".
    pub source: String,
    /// Its content.
    pub data: Vec<u8>,
}

/// The files of one driver for one Windows version and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverPackage {
    /// Driver name (lower case), e.g. "viostor", "netkvm".
    pub name: String,
    /// Its files (.inf, .sys, .cat, ...).
    pub files: Vec<DriverFile>,
}

impl DriverPackage {
    /// The file with this name (case-insensitive).
    pub fn file(&self, name: &str) -> Option<&DriverFile> {
        self.files
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// The drivers chosen for one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSet {
    /// The virtio-win os folder used, e.g. "2k19".
    pub os_dir: String,
    /// The architecture.
    pub arch: WinArch,
    /// Every driver package found for them, by name.
    pub packages: Vec<DriverPackage>,
}

impl DriverSet {
    /// The package with this driver name (case-insensitive).
    pub fn package(&self, name: &str) -> Option<&DriverPackage> {
        self.packages
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// A virtio-win folder or ISO.
pub struct DriverSource {
    root: std::path::PathBuf,
}

impl DriverSource {
    /// Opens a folder or an ISO 9660 image (detected by content).
    pub fn open(path: &Path) -> Result<DriverSource> {
        let _ = path;
        unimplemented!("DriverSource::open: helper C")
    }

    /// The drivers for the first of `os_dirs` (virtio-win names, best first) that the source
    /// has for `arch`. No match is an error listing what the source does have.
    pub fn select(&self, os_dirs: &[&str], arch: WinArch) -> Result<DriverSet> {
        let _ = (os_dirs, arch, &self.root);
        unimplemented!("DriverSource::select: helper C")
    }
}
