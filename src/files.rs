//! Creating output files safely: where an output path really leads, temporary names beside the
//! final file, and the temporaries a killed run left behind.
//!
//! - [`resolve_output`] follows an output path through its symbolic links (also a dangling one:
//!   its target is created, as qemu-img does) and says what is there: a regular file (new or
//!   existing) or a block device. A directory, a character device, a FIFO or a socket is refused
//!   naming the path and what it is, and so is a file whose folder does not exist or cannot be
//!   written. It is called before a single block of the source is read.
//! - [`TempFile`] is a new file `.<name>.diskconv-<pid>-<n>.tmp` in the folder of the final
//!   file. It holds an exclusive `flock` for as long as it exists (from its creation until it is
//!   renamed over the final name or removed), so a lock nobody holds proves a temporary stale.
//! - Stale temporaries: a run killed with SIGKILL (or a power cut) leaves its temporary behind.
//!   Creating a temporary for a final name first removes the temporaries of that same final
//!   name (and of its scratch files, `<name>.scratch<k>`) that match the naming scheme exactly,
//!   whose process is gone and whose lock nobody holds; never a live one, never another file.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::storage::FileStorage;

/// A refused output path or a failed file operation: the path, what is wrong (or what was being
/// done) and, for failures, the operating system's error. Converts into the crate's
/// [`Error`](crate::Error): a refusal is an invalid argument, a failure an I/O error, both naming
/// the path. (This module does not use the crate error itself, so it stays a leaf below it.)
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

impl FileError {
    fn refused(path: &Path, what: String) -> Self {
        FileError {
            path: path.to_path_buf(),
            what,
            source: None,
        }
    }

    fn io(path: &Path, what: impl Into<String>, e: io::Error) -> Self {
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
}

impl OutputTarget {
    /// The resolved path.
    pub fn path(&self) -> &Path {
        match self {
            OutputTarget::File { path, .. } | OutputTarget::BlockDevice { path, .. } => path,
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
    }
}

/// Fsyncs the folder holding `path` (so a rename or a new file in it is durable).
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = folder_of(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io(&dir, "syncing the folder", e))
}

/// A temporary file beside its final name (see the module documentation): created new,
/// locked while it exists, renamed over the final name by [`commit`](TempFile::commit),
/// removed when dropped uncommitted.
#[derive(Debug)]
pub struct TempFile {
    temp: PathBuf,
    target: PathBuf,
    /// A descriptor of the temporary holding its exclusive `flock` (shared with the storage
    /// handed out, so the lock lasts until both are closed).
    _lock: File,
    stale_removed: Vec<PathBuf>,
    committed: bool,
}

/// The temporary name of attempt `n` for the file `name`.
fn temp_name(name: &[u8], pid: u32, n: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 32);
    v.push(b'.');
    v.extend_from_slice(name);
    v.extend_from_slice(format!(".diskconv-{pid}-{n}.tmp").as_bytes());
    v
}

fn all_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// If `file` is a temporary of the final name `name` (or of one of its scratch files,
/// `<name>.scratch<k>`) in the exact naming scheme, the process id in it.
pub fn temp_of(file: &[u8], name: &[u8]) -> Option<u32> {
    let rest = file.strip_prefix(b".")?.strip_prefix(name)?;
    let rest = match rest.strip_prefix(b".scratch") {
        Some(r) => {
            let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            &r[digits..]
        }
        None => rest,
    };
    let ids = rest.strip_prefix(b".diskconv-")?.strip_suffix(b".tmp")?;
    let dash = ids.iter().position(|&b| b == b'-')?;
    let (pid, n) = (&ids[..dash], &ids[dash + 1..]);
    if !all_digits(pid) || !all_digits(n) {
        return None;
    }
    std::str::from_utf8(pid).ok()?.parse().ok()
}

/// Whether the process `pid` may still be running (unknown counts as running).
fn process_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Removes the stale temporaries of the final file `target` (see the module documentation);
/// returns their paths.
pub fn remove_stale_temporaries(target: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Some(name) = target.file_name() else {
        return removed;
    };
    let dir = folder_of(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return removed;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = temp_of(file.as_bytes(), name.as_bytes()) else {
            continue;
        };
        // A temporary of this process, or of one that may be alive, is never touched (a
        // live one is locked, except between its creation and its lock).
        if pid == me || process_alive(pid) {
            continue;
        }
        let path = dir.join(&file);
        if remove_if_unlocked(&path) {
            removed.push(path);
        }
    }
    removed
}

/// Removes `path` if it is a regular file nobody holds a `flock` on.
fn remove_if_unlocked(path: &Path) -> bool {
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = f.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    use rustix::fs::{FlockOperation, flock};
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    // Still the same file under that name?
    match fs::symlink_metadata(path) {
        Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => fs::remove_file(path).is_ok(),
        _ => false,
    }
}

impl TempFile {
    /// Creates a new, empty, locked temporary file in the folder of `target` (a path whose
    /// symbolic links are already resolved), after removing that target's stale temporaries.
    pub fn create(target: &Path) -> Result<(Self, FileStorage)> {
        let dir = folder_of(target);
        let name = target
            .file_name()
            .ok_or_else(|| FileError::refused(target, "is not a file name".into()))?;
        let stale_removed = remove_stale_temporaries(target);
        let pid = std::process::id();
        for attempt in 0..100u32 {
            let temp = dir.join(std::ffi::OsStr::from_bytes(&temp_name(
                name.as_bytes(),
                pid,
                attempt,
            )));
            match FileStorage::create_new(&temp) {
                Ok(s) => {
                    let locked = s.file().try_clone().and_then(|f| {
                        use rustix::fs::{FlockOperation, flock};
                        flock(&f, FlockOperation::NonBlockingLockExclusive)?;
                        Ok(f)
                    });
                    let lock = match locked {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = fs::remove_file(&temp);
                            return Err(FileError::io(&temp, "locking the temporary output", e));
                        }
                    };
                    return Ok((
                        TempFile {
                            temp,
                            target: target.to_path_buf(),
                            _lock: lock,
                            stale_removed,
                            committed: false,
                        },
                        s,
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(FileError::io(&temp, "creating the temporary output", e));
                }
            }
        }
        Err(FileError::refused(
            target,
            "could not find a free temporary name beside it".into(),
        ))
    }

    /// The temporary path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Stale temporaries of the same final file removed before this one was created.
    pub fn stale_removed(&self) -> &[PathBuf] {
        &self.stale_removed
    }

    /// Renames the temporary file over the final name (the folder is not synced: see
    /// [`sync_dir`]).
    pub fn commit(mut self) -> Result<()> {
        fs::rename(&self.temp, &self.target).map_err(|e| {
            FileError::io(
                &self.target,
                format!("renaming the temporary {} into place", self.temp.display()),
                e,
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Removed while still locked: the name never exists unlocked.
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert_eq!(temp_of(b".a.raw.diskconv-12-0.tmp", b"a.raw"), Some(12));
        assert_eq!(
            temp_of(b".a.raw.scratch0.diskconv-7-3.tmp", b"a.raw"),
            Some(7)
        );
        for other in [
            &b".a.raw.diskconv-12-0.tmpx"[..],
            b".a.raw.diskconv-12.tmp",
            b".a.raw.diskconv--0.tmp",
            b".a.raw.diskconv-1x-0.tmp",
            b"a.raw.diskconv-12-0.tmp",
            b".b.raw.diskconv-12-0.tmp",
            b".a.rawx.diskconv-12-0.tmp",
            b".a.raw.scratch.diskconv-12-0.tmp",
            b".a.raw.diskconv.tmp",
            b".a.raw.diskconv-99999999999-0.tmp",
        ] {
            assert_eq!(temp_of(other, b"a.raw"), None, "{}", other.escape_ascii());
        }
    }

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
    fn temp_files_are_locked_and_stale_ones_removed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out.qcow2");
        // A stale temporary of a dead process (pid 2^31-1 is above any pid_max), one of its
        // scratch files, a file that only looks similar, and another output's temporary.
        let stale = d.path().join(".out.qcow2.diskconv-2147483647-0.tmp");
        let stale_scratch = d
            .path()
            .join(".out.qcow2.scratch0.diskconv-2147483647-1.tmp");
        let similar = d.path().join(".out.qcow2.diskconv-2147483647-0.tmp.keep");
        let other = d.path().join(".other.qcow2.diskconv-2147483647-0.tmp");
        for p in [&stale, &stale_scratch, &similar, &other] {
            std::fs::write(p, b"old").unwrap();
        }
        // A temporary whose (dead) process name still holds a lock is left alone.
        let held = d.path().join(".out.qcow2.diskconv-2147483646-0.tmp");
        std::fs::write(&held, b"old").unwrap();
        let holder = File::open(&held).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();

        let (t, s) = TempFile::create(&target).unwrap();
        let mut removed = t.stale_removed().to_vec();
        removed.sort();
        assert_eq!(removed, vec![stale.clone(), stale_scratch.clone()]);
        assert!(similar.exists() && other.exists() && held.exists());
        // The new temporary is locked: another run would not remove it.
        assert!(!remove_if_unlocked(t.temp_path()));
        crate::storage::Storage::write_all_at(&s, b"new", 0).unwrap();
        let temp = t.temp_path().to_path_buf();
        t.commit().unwrap();
        assert!(!temp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        drop(holder);
        // Dropped uncommitted: removed.
        let (t, _s) = TempFile::create(&target).unwrap();
        assert_eq!(t.stale_removed(), &[held.clone()][..]);
        let temp = t.temp_path().to_path_buf();
        drop(t);
        assert!(!temp.exists());
    }
}
