//! Reading ext2/ext3/ext4 file systems, read-only, through the `ext4-view` crate (see
//! Cargo.toml for why): [`Ext4Volume::open`] over any [`DiskRead`] (a partition
//! [`Window`](crate::guest::disk::Window), a logical volume), then files by absolute path,
//! symbolic links followed inside the file system.
//!
//! The crate's reader trait (`Ext4Read`: positional reads into a buffer) wraps our
//! [`DiskRead`]; its errors become crate errors (corrupt structures: [`Error::Corrupt`];
//! features it cannot read: [`Error::Unsupported`]). Every call into the crate runs under
//! `catch_unwind`, so that a bug of the crate on hostile bytes is an error of this volume, not
//! the end of the inspection.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use crate::error::{Error, Result};
use crate::guest::disk::DiskRead;
use crate::guest::fs::{FileKind, GuestFs};

/// Our disk as the crate's reader.
struct Reader<D>(D);

impl<D: DiskRead> Ext4Read for Reader<D> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_at(dst, start_byte).map_err(|e| e.into())
    }
}

/// An ext2/3/4 file system opened read-only.
pub struct Ext4Volume {
    fs: Ext4,
}

impl std::fmt::Debug for Ext4Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Volume").finish_non_exhaustive()
    }
}

fn convert(e: Ext4Error, what: &str) -> Error {
    match e {
        Ext4Error::Corrupt(c) => {
            Error::Corrupt(format!("{what}: the ext4 file system is corrupt: {c}"))
        }
        Ext4Error::Incompatible(i) => Error::Unsupported(format!(
            "{what}: the ext4 file system uses features the reader does not know: {i}"
        )),
        Ext4Error::Io(io) => match io.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::Internal(format!("{what}: {other}")),
        },
        other => Error::InvalidArgument(format!("{what}: {other}")),
    }
}

/// Runs `f`, turning a panic of the crate into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, Ext4Error>) -> Result<T> {
    optional(what, f)?.ok_or_else(|| Error::InvalidArgument(format!("{what}: no such file")))
}

/// Like [`guarded`], with a path that does not resolve as `None`: it does not exist, leads
/// through a non-directory, or through a link loop or a path too long.
fn optional<T>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, Ext4Error>,
) -> Result<Option<T>> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(
            Ext4Error::NotFound
            | Ext4Error::NotADirectory
            | Ext4Error::TooManySymlinks
            | Ext4Error::PathTooLong
            | Ext4Error::MalformedPath,
        )) => Ok(None),
        Ok(Err(e)) => Err(convert(e, what)),
        Err(_) => Err(Error::Corrupt(format!(
            "{what}: the ext4 reader stopped on malformed data (a panic inside ext4-view)"
        ))),
    }
}

/// What a path names (the name this module used before [`FileKind`] was shared).
pub type Ext4Kind = FileKind;

impl Ext4Volume {
    /// Opens the file system on `disk` (its superblock, group descriptors and journal are read
    /// and checked; a journal needing recovery is replayed in memory by the crate).
    pub fn open<D: DiskRead + 'static>(disk: D) -> Result<Ext4Volume> {
        let fs = guarded("opening ext4", || Ext4::load(Box::new(Reader(disk))))?;
        Ok(Ext4Volume { fs })
    }

    /// The file system label.
    pub fn label(&self) -> String {
        self.fs.label().to_str().unwrap_or("").to_string()
    }

    /// What `path` (absolute) names, following symbolic links; `None` when it does not exist
    /// or does not resolve (a dangling link, a link loop).
    pub fn stat(&self, path: &str) -> Result<Option<Ext4Kind>> {
        Ok(optional(path, || self.fs.metadata(path))?.map(|m| kind_of(&m)))
    }

    /// What `path` (absolute) names, not following a final symbolic link.
    pub fn lstat(&self, path: &str) -> Result<Option<Ext4Kind>> {
        Ok(optional(path, || self.fs.symlink_metadata(path))?.map(|m| kind_of(&m)))
    }

    /// The first `max` bytes (at most) of the file at `path`, symbolic links followed; `None`
    /// when it does not exist; an error when it is not a regular file.
    pub fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        optional(path, || {
            let mut f = self.fs.open(path)?;
            let want = f.metadata().len().min(max as u64) as usize;
            let mut out = vec![0u8; want];
            let mut got = 0;
            while got < want {
                let n = f.read_bytes(&mut out[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            out.truncate(got);
            Ok(out)
        })
    }

    /// The names in the directory `path` (without `.` and `..`); `None` when it does not
    /// exist. At most `max` names are returned.
    pub fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        optional(path, || {
            let mut names = Vec::new();
            for entry in self.fs.read_dir(path)? {
                let entry = entry?;
                let name = entry.file_name();
                let Ok(n) = name.as_str() else { continue };
                if n == "." || n == ".." {
                    continue;
                }
                names.push(n.to_string());
                if names.len() >= max {
                    break;
                }
            }
            Ok(names)
        })
    }
}

impl GuestFs for Ext4Volume {
    fn fs_name(&self) -> &'static str {
        "ext4"
    }
    fn stat(&self, path: &str) -> Result<Option<FileKind>> {
        Ext4Volume::stat(self, path)
    }
    fn lstat(&self, path: &str) -> Result<Option<FileKind>> {
        Ext4Volume::lstat(self, path)
    }
    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        Ext4Volume::read_head(self, path, max)
    }
    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        Ext4Volume::list_dir(self, path, max)
    }
    fn read_link(&self, path: &str) -> Result<Option<String>> {
        if Ext4Volume::lstat(self, path)? != Some(FileKind::Symlink) {
            return Ok(None);
        }
        optional(path, || self.fs.read_link(path))
            .map(|t| t.map(|t| String::from_utf8_lossy(t.as_ref()).into_owned()))
    }
}

fn kind_of(m: &ext4_view::Metadata) -> Ext4Kind {
    let t = m.file_type();
    if t.is_regular_file() {
        Ext4Kind::File(m.len())
    } else if t.is_dir() {
        Ext4Kind::Dir
    } else if t.is_symlink() {
        Ext4Kind::Symlink
    } else {
        Ext4Kind::Other
    }
}
