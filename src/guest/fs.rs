//! The read-only view of a guest file system that [`inspect`](crate::inspect) and
//! [`inject`](crate::inject) use, whatever the file system: ext2/3/4
//! ([`Ext4Volume`](crate::guest::ext4::Ext4Volume)) today, XFS and btrfs as their readers land.
//!
//! Paths are absolute, `/`-separated, inside the file system; symbolic links are resolved
//! inside it (never on the host). A path that does not exist or does not resolve is `None`, not
//! an error; an error means the file system could not be read (corrupt, truncated, I/O).

use crate::error::{Error, Result};

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file of this many bytes.
    File(u64),
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// A guest file system opened for reading.
pub trait GuestFs {
    /// The file system's short name (`ext4`, `xfs`, `btrfs`), for messages.
    fn fs_name(&self) -> &'static str;

    /// What `path` names, following symbolic links; `None` when it does not exist or does not
    /// resolve (a dangling link, a link loop).
    fn stat(&self, path: &str) -> Result<Option<FileKind>>;

    /// What `path` names, not following a final symbolic link.
    fn lstat(&self, path: &str) -> Result<Option<FileKind>>;

    /// The first `max` bytes (at most) of the regular file at `path`, links followed; `None`
    /// when it does not exist; an error when it is not a regular file.
    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>>;

    /// The names in the directory `path` (without `.` and `..`), at most `max` of them; `None`
    /// when it does not exist.
    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>>;

    /// The target of the symbolic link at `path` (not followed); `None` when `path` does not
    /// exist or is not a symbolic link.
    fn read_link(&self, path: &str) -> Result<Option<String>>;

    /// The whole regular file at `path`, refused when it is larger than `max` bytes.
    fn read_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
        match self.stat(path)? {
            None => Ok(None),
            Some(FileKind::File(len)) if len > max => Err(Error::Unsupported(format!(
                "{path} on the guest's {} file system is {len} bytes, more than the {max} \
                 bytes read",
                self.fs_name()
            ))),
            Some(FileKind::File(len)) => self.read_head(path, len as usize),
            Some(_) => Ok(None),
        }
    }

    /// The regular file at `path` as text (invalid UTF-8 replaced), at most `max` bytes;
    /// `None` when it does not exist or is not a regular file.
    fn read_text(&self, path: &str, max: u64) -> Result<Option<String>> {
        Ok(self
            .read_file(path, max)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}
