//! Creating and changing files safely: where an output path really leads, temporary names
//! beside the final file, the temporaries a killed run left behind, whole-file replacement, the
//! image lock and the undo journal of in-place edits.
//!
//! - [`resolve_output`] follows an output path through its symbolic links (also a dangling one:
//!   its target is created, as qemu-img does) and says what is there: a regular file (new or
//!   existing) or a block device. A directory, a character device, a FIFO or a socket is refused
//!   naming the path and what it is, and so is a file whose folder does not exist or cannot be
//!   written. It is called before a single block of the source is read.
//! - [`TempFile`] is the one file transaction every new or replaced file goes through: a new
//!   file `.<name>.diskconv-<pid>-<n>.tmp` in the folder of the final file, written, then
//!   [`commit`](TempFile::commit)ted (data synced, renamed over the final name, folder synced)
//!   or [`abandon`](TempFile::abandon)ed (removed; also what dropping it does). It holds an
//!   exclusive `flock` for as long as it exists, so a lock nobody holds proves a temporary
//!   stale. [`write_atomically`] is the whole transaction for bytes in memory.
//!   [`OutputFiles`] is the set of temporaries of one output (the target, files beside it,
//!   scratch files), committed together: the local-file [`Sink`].
//!   Its users: converted outputs and new sync targets ([`OutputFiles`]), the state of a sync,
//!   `hive save_as` and whole-file writes ([`replace_file`]), the undo journal, the manifest of
//!   `verify`.
//! - Stale temporaries: a run killed with SIGKILL (or a power cut) leaves its temporary behind.
//!   Creating a temporary for a final name first removes the temporaries of that same final
//!   name (and of its scratch files, `<name>.scratch<k>`) that match the naming scheme exactly,
//!   whose process is gone and whose lock nobody holds; never a live one, never another file.
//! - [`replace_file`] replaces a small file (a state file, a hive) whole, crash-safely.
//! - [`ImageLock`] is the exclusive lock of an image being changed in place; the undo journal
//!   ([`UndoJournal`]) keeps the original bytes of the ranges an edit changes until the edit is complete, and
//!   [`rollback`] puts them back after a crash.

mod journal;
mod lock;
mod sink;
mod temp;

pub use journal::{RollbackOutcome, UndoJournal, journal_path, rollback, rollback_unlocked};
pub use lock::{ImageLock, LockHolder, unix_time_iso8601};
pub use sink::{Sink, SinkCapabilities};
pub use temp::{OutputFiles, TempFile, remove_stale_temporaries, temp_of, write_atomically};

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::storage::FileStorage;

/// A refused output path or a failed file operation: the path, what is wrong (or what was being
/// done) and, for failures, the operating system's error. Converts into the crate's [`Error`]:
/// a refusal is an invalid argument, a failure an I/O error, both naming the path.
#[derive(Debug)]
pub struct FileError {
    /// The path the caller named.
    pub path: PathBuf,
    /// What is wrong with it, or what was being done when the system call failed.
    pub what: String,
    /// The operating system's error; `None` when the path was refused.
    pub source: Option<io::Error>,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<FileError> for Error {
    /// A refused path is an invalid argument, a failed system call an I/O error; both name the
    /// path.
    fn from(e: FileError) -> Self {
        match e.source {
            Some(source) => Error::io(e.what, source).in_file(e.path),
            None => Error::InvalidArgument(e.what).in_file(e.path),
        }
    }
}

impl FileError {
    pub(crate) fn refused(path: &Path, what: String) -> Self {
        FileError {
            path: path.to_path_buf(),
            what,
            source: None,
        }
    }

    pub(crate) fn io(path: &Path, what: impl Into<String>, e: io::Error) -> Self {
        FileError {
            path: path.to_path_buf(),
            what: what.into(),
            source: Some(e),
        }
    }
}

/// Result of this module.
pub type Result<T, E = FileError> = std::result::Result<T, E>;

/// Symbolic links followed at most when resolving an output path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Where an output path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A regular file to create or replace. `path` is where the bytes go: the end of the
    /// path's chain of symbolic links (the links themselves stay).
    File {
        /// The file's path, symbolic links resolved.
        path: PathBuf,
        /// Whether a file is there already (it is replaced only when the output is complete).
        exists: bool,
    },
    /// A block device, written in place.
    BlockDevice {
        /// The device node (symbolic links such as `/dev/disk/by-id/...` resolved).
        path: PathBuf,
        /// Its size in bytes, from the kernel.
        size: u64,
    },
    /// An NBD export (an `nbd://`, `nbds://` or `nbd+unix://` URI), written in place as raw.
    Nbd {
        /// The URI as given.
        uri: PathBuf,
    },
}

impl OutputTarget {
    /// The resolved path.
    pub fn path(&self) -> &Path {
        match self {
            OutputTarget::File { path, .. } | OutputTarget::BlockDevice { path, .. } => path,
            OutputTarget::Nbd { uri } => uri,
        }
    }
}

/// The folder holding `path` (`.` for a bare file name).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Follows the symbolic links of `path` (the last component, link after link) to the path
/// they end at, which may not exist (a dangling link). Relative link contents are taken from
/// the link's folder, as the kernel does.
pub fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(&p)?;
                p = if to.is_absolute() {
                    to
                } else {
                    folder_of(&p).join(to)
                };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("more than {MAX_LINKS} levels of symbolic links"),
    ))
}

/// What a non-regular, non-block file is, in words.
fn describe(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// An error about the output `given`, which resolved to `resolved`.
fn output_error(given: &Path, resolved: &Path, why: String) -> FileError {
    let why = if given == resolved {
        why
    } else {
        format!("{why} (the symbolic link leads to {})", resolved.display())
    };
    FileError::refused(given, why)
}

/// Checks that a new file can be created in the folder of `path`: the folder exists, is a
/// folder, and this process may write and search it (a read-only file system counts).
fn check_folder(given: &Path, resolved: &Path) -> Result<()> {
    let dir = folder_of(resolved);
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(output_error(
                given,
                resolved,
                format!("{} is not a folder", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(output_error(
                given,
                resolved,
                format!("the folder {} does not exist", dir.display()),
            ));
        }
        Err(e) => {
            return Err(FileError::io(
                given,
                format!("looking at the folder {}", dir.display()),
                e,
            ));
        }
    }
    use rustix::fs::{Access, access};
    access(&dir, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| {
        output_error(
            given,
            resolved,
            format!(
                "cannot create files in the folder {}: {}",
                dir.display(),
                io::Error::from(e)
            ),
        )
    })
}

/// Says where the output path `path` leads, before anything is read or written (see the
/// module documentation). Block devices are sized; everything but regular files and block
/// devices is refused.
pub fn resolve_output(path: &Path) -> Result<OutputTarget> {
    if path.as_os_str().is_empty() {
        return Err(FileError::refused(path, "the output path is empty".into()));
    }
    let resolved = follow_links(path)
        .map_err(|e| FileError::io(path, "following the output's symbolic links", e))?;
    match fs::metadata(&resolved) {
        Ok(m) => {
            let ft = m.file_type();
            if ft.is_file() {
                check_folder(path, &resolved)?;
                Ok(OutputTarget::File {
                    path: resolved,
                    exists: true,
                })
            } else if ft.is_block_device() {
                let size = FileStorage::open_read_only(&resolved)
                    .and_then(|s| crate::storage::Storage::len(&s))
                    .map_err(|e| FileError::io(path, "finding the size of the block device", e))?;
                Ok(OutputTarget::BlockDevice {
                    path: resolved,
                    size,
                })
            } else {
                Err(output_error(
                    path,
                    &resolved,
                    format!(
                        "is {}; the output must be a regular file or a block device",
                        describe(&ft)
                    ),
                ))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if path.as_os_str().as_bytes().ends_with(b"/") {
                return Err(output_error(
                    path,
                    &resolved,
                    "ends with '/': give a file name for the output".into(),
                ));
            }
            check_folder(path, &resolved)?;
            Ok(OutputTarget::File {
                path: resolved,
                exists: false,
            })
        }
        Err(e) => Err(FileError::io(path, "looking at the output", e)),
    }
}

/// [`resolve_output`] for outputs that must be files (sibling files, state files, manifests):
/// a block device is refused too. Returns the resolved path.
pub fn resolve_output_file(path: &Path) -> Result<PathBuf> {
    match resolve_output(path)? {
        OutputTarget::File { path, .. } => Ok(path),
        OutputTarget::BlockDevice { path: dev, .. } => Err(output_error(
            path,
            &dev,
            "is a block device; this output must be a regular file".into(),
        )),
        // resolve_output never returns it (URIs are recognised by the caller).
        OutputTarget::Nbd { uri } => Err(output_error(
            path,
            &uri,
            "is an NBD export; this output must be a regular file".into(),
        )),
    }
}

/// Fsyncs the folder holding `path` (so a rename or a new file in it is durable).
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = folder_of(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io(&dir, "syncing the folder", e))
}

/// Replaces the file at `path` with `bytes` so that a crash at any moment leaves either the old
/// or the new content: [`write_atomically`] (a temporary file beside it, written and synced,
/// renamed over `path`, the folder synced). A symbolic link is written through (the file it
/// leads to is replaced, the link stays). On an error the temporary file is removed and `path`
/// is untouched. `what` names the content in error messages.
pub fn replace_file(path: &Path, bytes: &[u8], what: &str) -> crate::error::Result<()> {
    let resolved =
        follow_links(path).map_err(|e| Error::io("following symbolic links", e).in_file(path))?;
    if resolved.file_name().is_none() {
        return Err(Error::InvalidArgument(format!(
            "'{}' is not a file name",
            resolved.display()
        )));
    }
    write_atomically(&resolved, bytes, what).map_err(|e| e.in_image(path))
}

/// Writes `bytes` to the output `path` a command was given (`-o FILE` of `ntfs cat`, `hive
/// export`): a regular file, new or existing (symbolic links followed), is replaced whole through
/// [`replace_file`], so a failed or killed run leaves no half-written file under its name; any
/// other file (`/dev/stdout`, a FIFO) is written directly. `what` names the content in error
/// messages.
pub fn write_output(path: &Path, bytes: &[u8], what: &str) -> crate::error::Result<()> {
    let regular_or_new = match fs::metadata(path) {
        Ok(m) => m.is_file(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    };
    if regular_or_new {
        replace_file(path, bytes, what)
    } else {
        fs::write(path, bytes)
            .map_err(|e| Error::io(format!("writing the {what}"), e).in_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_follows_links_and_refuses_what_is_not_a_file() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.img");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link.img");
        symlink("real.img", &link).unwrap();
        let link2 = d.path().join("link2.img");
        symlink(&link, &link2).unwrap();
        assert_eq!(
            resolve_output(&link2).unwrap(),
            OutputTarget::File {
                path: d.path().join("real.img"),
                exists: true
            }
        );
        // A dangling link: its target is where the output goes.
        let dangling = d.path().join("dangling.img");
        symlink("sub/new.img", &dangling).unwrap();
        let e = resolve_output(&dangling).unwrap_err().to_string();
        assert!(
            e.contains("does not exist") && e.contains("leads to"),
            "{e}"
        );
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert_eq!(
            resolve_output(&dangling).unwrap(),
            OutputTarget::File {
                path: d.path().join("sub/new.img"),
                exists: false
            }
        );
        let e = resolve_output(&d.path().join("sub"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = resolve_output(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/null") && e.contains("character device"),
            "{e}"
        );
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RUSR).unwrap();
        let e = resolve_output(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let looped = d.path().join("loop");
        symlink("loop", &looped).unwrap();
        let e = resolve_output(&looped).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
        let e = resolve_output(&d.path().join("nowhere/x.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn write_output_replaces_files_whole_and_writes_devices_directly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.reg");
        write_output(&p, b"one", "test").unwrap();
        write_output(&p, b"two", "test").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        write_output(Path::new("/dev/null"), b"x", "test").unwrap();
        let e = write_output(&d.path().join("none/x"), b"x", "test")
            .unwrap_err()
            .chain();
        assert!(e.contains("none"), "{e}");
    }

    #[test]
    fn replace_file_swaps_content_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        std::fs::write(&p, b"old").unwrap();
        replace_file(&p, b"new content", "test").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A folder where the file should be: an error naming it, the folder untouched.
        let dir = d.path().join("sub");
        std::fs::create_dir(&dir).unwrap();
        let e = replace_file(&dir, b"x", "test").unwrap_err().chain();
        assert!(e.contains("sub"), "{e}");
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
