//! Reading and writing files on an NTFS volume offline, through any [`DiskIo`] (a partition of
//! an image inside a [`TxDisk`](crate::inject::disk::TxDisk), a file, memory).
//!
//! What it writes: overwrite a file's data in place, grow or shrink a file, create a file in an
//! existing folder, create a folder; MFT records and clusters come from the `$MFT` and `$Bitmap`
//! bitmaps, names go into the parent's `$I30` index (collated with `$UpCase`, node splits),
//! every record and index block gets its update-sequence fixups, and `$MFTMirr` follows the
//! first records. A volume that is dirty, has a non-empty `$LogFile`, is hibernated (Fast
//! Startup) or BitLocker-encrypted is refused before anything is written.

mod error;
pub mod fixup;
pub mod index;
pub mod logfile;
pub mod runlist;
pub mod upcase;

pub use error::NtfsError;

use crate::error::Result;
use crate::inject::disk::DiskIo;

/// How to open a volume.
#[derive(Debug, Clone, Default)]
pub struct NtfsOpenOptions {
    /// Open for reading only: a dirty, hibernated or not-cleanly-logged volume opens (its
    /// [`VolumeState`] says why it is not writable) and every write fails with
    /// [`NtfsError::NotWritable`].
    pub read_only: bool,
}

/// Why a volume can or cannot be written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VolumeState {
    /// NTFS version from `$Volume` (major, minor), e.g. (3, 1).
    pub version: (u8, u8),
    /// Volume label from `$Volume`.
    pub label: String,
    /// The dirty flag of `$VOLUME_INFORMATION` is set (chkdsk pending, or not unmounted).
    pub dirty: bool,
    /// `$LogFile` holds no pending transactions (empty or clean restart area).
    pub log_clean: bool,
    /// `hiberfil.sys` holds a hibernation or Fast Startup image.
    pub hibernated: bool,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Total clusters.
    pub total_clusters: u64,
    /// Free clusters per `$Bitmap`.
    pub free_clusters: u64,
}

impl VolumeState {
    /// Why the volume must not be written, or `None` when it may.
    pub fn not_writable_reason(&self) -> Option<String> {
        if self.hibernated {
            return Some(
                "Windows is hibernated or was shut down with Fast Startup (hiberfil.sys holds a \
                 hibernation image); boot it and shut down fully (shutdown /s /t 0, or disable \
                 Fast Startup)"
                    .into(),
            );
        }
        if self.dirty {
            return Some(
                "the volume is marked dirty (not cleanly unmounted, or chkdsk is pending); run \
                 chkdsk in Windows (or ntfsfix) first"
                    .into(),
            );
        }
        if !self.log_clean {
            return Some(
                "$LogFile holds transactions not yet applied (the volume was not cleanly shut \
                 down); boot Windows and shut down fully first"
                    .into(),
            );
        }
        None
    }
}

/// One entry of a folder, or the result of [`NtfsVolume::stat`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    /// The long (Win32 or POSIX) name as stored.
    pub name: String,
    /// MFT record number.
    pub record: u64,
    /// Whether it is a folder.
    pub is_dir: bool,
    /// Size of the unnamed `$DATA` stream (0 for folders).
    pub size: u64,
}

/// An open NTFS volume.
pub struct NtfsVolume<D: DiskIo> {
    disk: D,
    read_only: bool,
}

impl<D: DiskIo> NtfsVolume<D> {
    /// Opens the volume on `disk` (its boot sector at offset 0). Checks the boot sector, `$MFT`,
    /// `$MFTMirr`, `$Volume`, `$LogFile`, `$UpCase` and `hiberfil.sys`; unless
    /// `opts.read_only`, refuses a volume that must not be written ([`NtfsError::NotWritable`]).
    pub fn open(disk: D, opts: &NtfsOpenOptions) -> Result<NtfsVolume<D>> {
        let _ = (&disk, opts);
        unimplemented!("NtfsVolume::open: helper A")
    }

    /// The state read at open.
    pub fn state(&self) -> &VolumeState {
        unimplemented!("NtfsVolume::state: helper A")
    }

    /// Gives the disk back (after [`flush`](Self::flush)).
    pub fn into_inner(self) -> D {
        self.disk
    }

    /// The entry at `path` (`\` or `/` separated, relative to the root, case-insensitive per
    /// `$UpCase`); `None` when any component is missing.
    pub fn stat(&self, path: &str) -> Result<Option<DirEntry>> {
        let _ = path;
        unimplemented!("NtfsVolume::stat: helper A")
    }

    /// The entries of the folder at `path` in index order (DOS 8.3 duplicates omitted).
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let _ = path;
        unimplemented!("NtfsVolume::read_dir: helper A")
    }

    /// The whole unnamed `$DATA` stream of the file at `path` (resident, non-resident or
    /// sparse; compressed and encrypted files are refused). Files over `max_len` are refused.
    pub fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>> {
        let _ = (path, max_len);
        unimplemented!("NtfsVolume::read_file: helper A")
    }

    /// Creates the file at `path` (its folder must exist) or replaces its whole content,
    /// growing or shrinking it. Returns `true` if the file was created.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<bool> {
        let _ = (path, data, self.read_only);
        unimplemented!("NtfsVolume::write_file: helper A")
    }

    /// Overwrites `data` at `offset` in the existing file at `path`, growing it when the write
    /// ends past its end.
    pub fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (path, offset, data);
        unimplemented!("NtfsVolume::write_at: helper A")
    }

    /// Sets the size of the existing file at `path` (new bytes read as zeros; clusters past
    /// the new end are freed).
    pub fn set_len(&mut self, path: &str, len: u64) -> Result<()> {
        let _ = (path, len);
        unimplemented!("NtfsVolume::set_len: helper A")
    }

    /// Creates the folder at `path` (its parent must exist). Returns `false` if it already
    /// existed as a folder; an existing file of that name is an error.
    pub fn create_dir(&mut self, path: &str) -> Result<bool> {
        let _ = path;
        unimplemented!("NtfsVolume::create_dir: helper A")
    }

    /// Creates the folder at `path` and any missing parents.
    pub fn create_dir_all(&mut self, path: &str) -> Result<()> {
        let _ = path;
        unimplemented!("NtfsVolume::create_dir_all: helper A")
    }

    /// Writes every cached structure (bitmaps, records, `$MFTMirr`) to the disk. Call before
    /// [`into_inner`](Self::into_inner); without it the disk may be inconsistent.
    pub fn flush(&mut self) -> Result<()> {
        unimplemented!("NtfsVolume::flush: helper A")
    }
}
