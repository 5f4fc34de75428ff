//! Reading and writing files on an NTFS volume offline. Reading needs only a [`DiskRead`] (an
//! image opened read-only, a partition [`Window`](crate::guest::disk::Window) of one, memory);
//! writing needs a [`DiskIo`] (a partition of an image inside a
//! [`TxDisk`](crate::guest::disk::TxDisk), memory).
//!
//! What it writes: overwrite a file's data in place, grow or shrink a file, create a file in an
//! existing folder, create a folder; MFT records and clusters come from the `$MFT` and `$Bitmap`
//! bitmaps, names go into the parent's `$I30` index (collated with `$UpCase`, node splits),
//! every record and index block gets its update-sequence fixups, and `$MFTMirr` follows the
//! first records. A volume that is dirty, has a non-empty `$LogFile`, is hibernated (Fast
//! Startup) or BitLocker-encrypted is refused before anything is written.

mod attribute;
mod bitmap;
mod boot;
mod dir;
mod error;
mod file;
pub mod fixup;
pub mod index;
pub mod logfile;
mod record;
pub mod runlist;
pub mod upcase;
mod volume;

pub use error::NtfsError;

use std::sync::Arc;

use crate::bytes::le16;
use crate::error::Result;
use crate::guest::disk::{DiskIo, DiskRead};
use bitmap::Bitmap;
use boot::Boot;
use upcase::UpCase;
use volume::Stream;

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
///
/// Every change is written through to the disk as it is made (records, index blocks, the
/// changed bytes of the bitmaps, `$MFTMirr`), so the in-memory state always matches the disk
/// and an error never leaves a half-edited structure behind in a cache; [`flush`](Self::flush)
/// only checks that `$MFTMirr` still matches. Atomicity of a whole operation comes from the
/// caller's [`TxDisk`](crate::guest::disk::TxDisk).
pub struct NtfsVolume<D: DiskRead> {
    disk: D,
    read_only: bool,
    boot: Boot,
    state: VolumeState,
    upcase: Arc<UpCase>,
    /// `$MFT`'s unnamed `$DATA`.
    mft: Stream,
    /// `$MFT`'s `$DATA` is spread over extension records (attribute list): read only.
    mft_has_list: bool,
    /// `$MFTMirr`'s `$DATA` and how many records it mirrors.
    mirr: Stream,
    mirr_records: u64,
    /// `$MFT`'s `$BITMAP` (non-resident) and its bits, one per record.
    mft_bitmap: Option<(Stream, Bitmap)>,
    /// `$Bitmap`'s `$DATA` and its bits, one per cluster.
    cluster_stream: Stream,
    clusters: Bitmap,
}

/// The first MFT record handed out to new files (0-15 are system files, 16-23 reserved).
const FIRST_USER_RECORD: u64 = 24;
/// Root folder record.
const ROOT: u64 = 5;
/// Largest metadata file read whole at open (`$LogFile`, `$UpCase`, `$Bitmap`, attribute lists).
const MAX_META: u64 = 512 << 20;

impl<D: DiskRead> NtfsVolume<D> {
    /// Opens the volume on `disk` (its boot sector at offset 0). Checks the boot sector, `$MFT`,
    /// `$MFTMirr`, `$Volume`, `$LogFile`, `$UpCase` and `hiberfil.sys`; unless
    /// `opts.read_only`, refuses a volume that must not be written ([`NtfsError::NotWritable`]).
    pub fn open(disk: D, opts: &NtfsOpenOptions) -> Result<NtfsVolume<D>> {
        let mut sector = vec![0u8; 512];
        if disk.len() < 512 {
            return Err(NtfsError::invalid(
                "boot sector",
                0,
                format!(
                    "the volume is {} bytes, smaller than a boot sector",
                    disk.len()
                ),
            )
            .into());
        }
        disk.read_at(&mut sector, 0)?;
        let boot = Boot::parse(&sector, disk.len())?;
        let mut vol = NtfsVolume {
            disk,
            read_only: opts.read_only,
            state: VolumeState {
                cluster_size: boot.cluster_size as u32,
                total_clusters: boot.total_clusters,
                ..VolumeState::default()
            },
            upcase: Arc::new(UpCase::default_table()),
            mft: Stream::contiguous(boot.mft_lcn, 1, boot.cluster_size),
            mft_has_list: false,
            mirr: Stream::contiguous(boot.mftmirr_lcn, 1, boot.cluster_size),
            mirr_records: 0,
            mft_bitmap: None,
            cluster_stream: Stream::default(),
            clusters: Bitmap {
                bytes: Vec::new(),
                bits: 0,
            },
            boot,
        };
        vol.load_mft()?;
        vol.read_volume_information()?;
        vol.load_upcase_and_bitmap()?;
        vol.read_log_and_hibernation()?;
        if !opts.read_only {
            vol.check_may_write()?;
        }
        Ok(vol)
    }

    /// Reads `$MFT` (bootstrapped from the boot sector), its `$BITMAP` and `$MFTMirr`, and checks
    /// the system records and the mirror.
    fn load_mft(&mut self) -> Result<()> {
        // Bootstrap: the first record of $MFT sits at the boot sector's LCN; enough clusters
        // to hold it are mapped until its own run list is read.
        let rs = u64::from(self.boot.record_size);
        let first = rs.div_ceil(self.boot.cluster_size).max(1);
        self.mft = Stream::contiguous(self.boot.mft_lcn, first, self.boot.cluster_size);
        let rec0 = self.read_record(0)?;
        self.mft = self.load_stream(&rec0, record::AT_DATA, &[], "$MFT")?;
        self.mft_has_list = rec0.find(record::AT_ATTRIBUTE_LIST, &[])?.is_some();
        if self.mft.size < 16 * rs || self.mft.size % rs != 0 {
            return Err(NtfsError::corrupt(
                "MFT record 0 ($MFT)",
                rec0.offset,
                format!(
                    "$MFT is {} bytes: expected a multiple of the {rs}-byte record size holding at least 16 records",
                    self.mft.size
                ),
            )
            .into());
        }
        self.check_system_records()?;
        // $MFT's $BITMAP.
        if let Some(a) = rec0.find(record::AT_BITMAP, &[])? {
            if a.non_resident {
                let s = self.load_stream(&rec0, record::AT_BITMAP, &[], "$MFT:$BITMAP")?;
                let bytes = self.read_stream(&s, "$MFT:$BITMAP", MAX_META)?;
                let bits = (bytes.len() as u64 * 8).min(self.mft.size / rs);
                self.mft_bitmap = Some((s, Bitmap { bytes, bits }));
            }
        } else {
            return Err(NtfsError::corrupt(
                "MFT record 0 ($MFT)",
                rec0.offset,
                "no $BITMAP attribute",
            )
            .into());
        }
        // $MFTMirr.
        let rec1 = self.read_record(1)?;
        self.mirr = self.load_stream(&rec1, record::AT_DATA, &[], "$MFTMirr")?;
        self.mirr_records = (self.mirr.size / rs).min(self.mft.size / rs);
        self.check_mirror()?;
        Ok(())
    }

    /// Reads `$Volume`: the label, the NTFS version and the dirty flag.
    fn read_volume_information(&mut self) -> Result<()> {
        // $Volume.
        let rec3 = self.read_record(3)?;
        if let Some(a) = rec3.find(record::AT_VOLUME_NAME, &[])? {
            let v = rec3.value(&a)?;
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            self.state.label = String::from_utf16_lossy(&units);
        }
        let Some(a) = rec3.find(record::AT_VOLUME_INFORMATION, &[])? else {
            return Err(NtfsError::corrupt(
                "MFT record 3 ($Volume)",
                rec3.offset,
                "no $VOLUME_INFORMATION attribute",
            )
            .into());
        };
        let v = rec3.value(&a)?;
        if v.len() < 12 {
            return Err(NtfsError::corrupt(
                "MFT record 3 ($Volume)",
                rec3.offset + a.pos as u64,
                format!("$VOLUME_INFORMATION is {} bytes, expected 12", v.len()),
            )
            .into());
        }
        self.state.version = (v[8], v[9]);
        self.state.dirty = le16(v, 10) & VOLUME_IS_DIRTY != 0;
        Ok(())
    }

    /// Reads `$UpCase` and the cluster bitmap `$Bitmap`.
    fn load_upcase_and_bitmap(&mut self) -> Result<()> {
        // $UpCase.
        let rec10 = self.read_record(10)?;
        let s = self.load_stream(&rec10, record::AT_DATA, &[], "$UpCase")?;
        let table = self.read_stream(&s, "$UpCase", MAX_META)?;
        self.upcase = Arc::new(UpCase::from_bytes(&table)?);
        // $Bitmap.
        let rec6 = self.read_record(6)?;
        self.cluster_stream = self.load_stream(&rec6, record::AT_DATA, &[], "$Bitmap")?;
        let need = self.boot.total_clusters.div_ceil(8);
        if self.cluster_stream.size < need {
            return Err(NtfsError::corrupt(
                "MFT record 6 ($Bitmap)",
                rec6.offset,
                format!(
                    "$Bitmap is {} bytes, {need} needed for {} clusters",
                    self.cluster_stream.size, self.boot.total_clusters
                ),
            )
            .into());
        }
        let bytes = self.read_stream(&self.cluster_stream.clone(), "$Bitmap", MAX_META)?;
        self.clusters = Bitmap {
            bytes,
            bits: self.boot.total_clusters,
        };
        self.state.free_clusters = self.clusters.count_free();
        Ok(())
    }

    /// Reads whether `$LogFile` is clean and whether `hiberfil.sys` holds a hibernation
    /// image.
    fn read_log_and_hibernation(&mut self) -> Result<()> {
        // $LogFile.
        let rec2 = self.read_record(2)?;
        let s = self.load_stream(&rec2, record::AT_DATA, &[], "$LogFile")?;
        let log = self.read_stream(&s, "$LogFile", MAX_META)?;
        self.state.log_clean = logfile::log_is_clean(&log)?;
        // hiberfil.sys in the root.
        let name: Vec<u16> = "hiberfil.sys".encode_utf16().collect();
        if let Some(e) = self.lookup_child(ROOT, &name)? {
            let rec = self.read_record(e.file_ref & REF_MASK)?;
            if let Some(loc) = self.load(&rec, record::AT_DATA, &[], "hiberfil.sys")? {
                let mut head = vec![0u8; loc.size().min(4096) as usize];
                self.read_loc(&loc, 0, &mut head)?;
                self.state.hibernated = logfile::hiberfil_in_use(&head);
            }
        }
        Ok(())
    }

    /// Refuses a volume that must not be written ([`NtfsError::NotWritable`]).
    fn check_may_write(&self) -> Result<()> {
        if let Some(reason) = self.state.not_writable_reason() {
            return Err(NtfsError::NotWritable { reason }.into());
        }
        if self.state.version.0 < 3 {
            return Err(NtfsError::NotWritable {
                reason: format!(
                    "NTFS version {}.{} is older than 3.0 (Windows 2000); only 3.x volumes are written",
                    self.state.version.0, self.state.version.1
                ),
            }
            .into());
        }
        Ok(())
    }

    /// The state read at open.
    pub fn state(&self) -> &VolumeState {
        &self.state
    }

    /// Gives the disk back (after [`flush`](Self::flush)).
    pub fn into_inner(self) -> D {
        self.disk
    }

    /// The entry at `path` (`\` or `/` separated, relative to the root, case-insensitive per
    /// `$UpCase`); `None` when any component is missing.
    pub fn stat(&self, path: &str) -> Result<Option<DirEntry>> {
        let comps = components(path);
        if comps.is_empty() {
            return Ok(Some(DirEntry {
                name: String::new(),
                record: ROOT,
                is_dir: true,
                size: 0,
            }));
        }
        match self.resolve(&comps)? {
            Some(n) => Ok(Some(self.dir_entry(&n.entry)?)),
            None => Ok(None),
        }
    }

    /// The entries of the folder at `path` in index order (DOS 8.3 duplicates omitted).
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let dir = self.folder(path)?;
        let view = dir::Dir::open(self, dir)?;
        let mut out = Vec::new();
        for e in index::entries(&view)? {
            if e.namespace()? == attribute::NS_DOS {
                continue;
            }
            out.push(self.dir_entry(&e)?);
        }
        Ok(out)
    }

    /// The whole unnamed `$DATA` stream of the file at `path` (resident, non-resident or
    /// sparse; compressed and encrypted files are refused). Files over `max_len` are refused.
    pub fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>> {
        let node = self.file(path)?;
        let rec = self.read_record(node.record)?;
        let Some(loc) = self.load(&rec, record::AT_DATA, &[], path)? else {
            return Ok(Vec::new());
        };
        if loc.size() > max_len {
            return Err(NtfsError::InvalidArgument(format!(
                "{path} is {} bytes, more than the {max_len} allowed",
                loc.size()
            ))
            .into());
        }
        let mut buf = vec![0u8; loc.size() as usize];
        self.read_loc(&loc, 0, &mut buf)?;
        Ok(buf)
    }
}

/// Writing: needs a disk that can be written ([`DiskIo`]) and a volume opened for writing.
impl<D: DiskIo> NtfsVolume<D> {
    /// Creates the file at `path` (its folder must exist) or replaces its whole content,
    /// growing or shrinking it. Returns `true` if the file was created.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<bool> {
        self.check_writable()?;
        let comps = components(path);
        let Some((name, parent_comps)) = comps.split_last() else {
            return Err(NtfsError::InvalidArgument("write_file: empty path".into()).into());
        };
        if let Some(node) = self.resolve(&comps)? {
            if node.is_dir {
                return Err(NtfsError::Exists(format!("{path} is a folder, not a file")).into());
            }
            self.resize_file(node.record, data.len() as u64)?;
            self.write_data(node.record, 0, data)?;
            return Ok(false);
        }
        let parent = self.folder_of(parent_comps, path)?;
        let name = check_name(name)?;
        self.create(parent, &name, Some(data))?;
        Ok(true)
    }

    /// Overwrites `data` at `offset` in the existing file at `path`, growing it when the write
    /// ends past its end.
    pub fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        let node = self.file(path)?;
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| {
            NtfsError::InvalidArgument(format!("write_at {path}: offset {offset} overflows"))
        })?;
        let rec = self.read_record(node.record)?;
        let size = self
            .load(&rec, record::AT_DATA, &[], path)?
            .map(|l| l.size())
            .unwrap_or(0);
        if end > size {
            self.resize_file(node.record, end)?;
        }
        self.write_data(node.record, offset, data)
    }

    /// Sets the size of the existing file at `path` (new bytes read as zeros; clusters past
    /// the new end are freed).
    pub fn set_len(&mut self, path: &str, len: u64) -> Result<()> {
        self.check_writable()?;
        let node = self.file(path)?;
        self.resize_file(node.record, len)
    }

    /// Creates the folder at `path` (its parent must exist). Returns `false` if it already
    /// existed as a folder; an existing file of that name is an error.
    pub fn create_dir(&mut self, path: &str) -> Result<bool> {
        self.check_writable()?;
        let comps = components(path);
        let Some((name, parent_comps)) = comps.split_last() else {
            return Ok(false); // the root exists
        };
        if let Some(node) = self.resolve(&comps)? {
            if node.is_dir {
                return Ok(false);
            }
            return Err(NtfsError::Exists(format!("{path} exists and is a file")).into());
        }
        let parent = self.folder_of(parent_comps, path)?;
        let name = check_name(name)?;
        self.create(parent, &name, None)?;
        Ok(true)
    }

    /// Creates the folder at `path` and any missing parents.
    pub fn create_dir_all(&mut self, path: &str) -> Result<()> {
        self.check_writable()?;
        let comps = components(path);
        for i in 1..=comps.len() {
            self.create_dir(&comps[..i].join("/"))?;
        }
        Ok(())
    }

    /// Writes every cached structure (bitmaps, records, `$MFTMirr`) to the disk. Call before
    /// [`into_inner`](Self::into_inner); without it the disk may be inconsistent.
    ///
    /// This implementation writes every change through as it is made, so there is nothing
    /// left to write; `flush` checks that `$MFTMirr` matches the records it mirrors.
    pub fn flush(&mut self) -> Result<()> {
        self.check_mirror()
    }
}

/// `$VOLUME_INFORMATION` flag: dirty.
const VOLUME_IS_DIRTY: u16 = 0x0001;
/// The record-number bits of an MFT reference.
const REF_MASK: u64 = 0x0000_FFFF_FFFF_FFFF;

/// Path components (`/` or `\` separated; empty ones and `.` skipped).
fn components(path: &str) -> Vec<&str> {
    path.split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// A file name as UTF-16, refused when Windows could not use it.
fn check_name(name: &str) -> Result<Vec<u16>> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let bad = |why: &str| -> Result<Vec<u16>> {
        Err(NtfsError::InvalidArgument(format!("invalid file name {name:?}: {why}")).into())
    };
    if units.is_empty() || name == ".." {
        return bad("empty or a relative reference");
    }
    if units.len() > 255 {
        return bad("longer than 255 UTF-16 code units");
    }
    if let Some(c) = name
        .chars()
        .find(|c| (*c as u32) < 0x20 || "\"*:<>?|/\\".contains(*c))
    {
        return bad(&format!("contains {c:?}, which Windows does not allow"));
    }
    if name.ends_with(' ') || name.ends_with('.') {
        return bad("ends with a space or a dot, which Windows does not allow");
    }
    Ok(units)
}
