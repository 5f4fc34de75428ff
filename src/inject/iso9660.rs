//! A reader for ISO 9660 images (the virtio-win driver ISO): primary and Joliet supplementary
//! volume descriptors, folders, files; Joliet (UCS-2) names preferred, `;1` versions stripped.

use std::path::Path;

use crate::error::Result;

/// One entry of an ISO folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// Name (Joliet when present, else ISO 9660 without `;1`).
    pub name: String,
    /// Whether it is a folder.
    pub is_dir: bool,
    /// Size in bytes (files).
    pub size: u64,
    /// First logical block (2048 bytes).
    pub extent: u32,
}

/// An open ISO image.
pub struct Iso9660 {
    file: std::fs::File,
}

impl Iso9660 {
    /// Opens and checks the volume descriptors (`CD001`), preferring a Joliet tree.
    pub fn open(path: &Path) -> Result<Iso9660> {
        let _ = path;
        unimplemented!("Iso9660::open: helper C")
    }

    /// The entries of the folder at `path` (`/`-separated, case-insensitive; "" for the root).
    pub fn read_dir(&self, path: &str) -> Result<Vec<IsoEntry>> {
        let _ = (path, &self.file);
        unimplemented!("Iso9660::read_dir: helper C")
    }

    /// The content of the file at `path`; files over `max_len` are refused.
    pub fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>> {
        let _ = (path, max_len);
        unimplemented!("Iso9660::read_file: helper C")
    }
}
