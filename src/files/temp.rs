//! Temporary files beside their final name, and the set of them one output makes.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FileError, Result, folder_of, follow_links, resolve_output_file, sync_dir};
use crate::error::Error;
use crate::storage::{FileStorage, Storage};

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

    /// Commits the file: its data is synced to disk, the temporary is renamed over the final
    /// name, then the folder is synced (so the new name is durable). A crash at any moment
    /// leaves either the old file (or none) or the whole new one under the final name.
    pub fn commit(mut self) -> Result<()> {
        self._lock
            .sync_all()
            .map_err(|e| FileError::io(&self.temp, "syncing the new file to disk", e))?;
        fs::rename(&self.temp, &self.target).map_err(|e| {
            FileError::io(
                &self.target,
                format!("renaming the temporary {} into place", self.temp.display()),
                e,
            )
        })?;
        self.committed = true;
        sync_dir(&self.target)
    }

    /// Abandons the file: the temporary is removed and the final name left as it was (what
    /// dropping it does; this says so at the call site).
    pub fn abandon(self) {
        drop(self)
    }
}

/// Writes `bytes` as the new content of the file `target` (symbolic links already resolved)
/// through a [`TempFile`]: written under a temporary name beside it, synced, renamed over
/// `target`, the folder synced. On an error the temporary is removed and `target` untouched.
/// `what` names the content in error messages.
pub fn write_atomically(target: &Path, bytes: &[u8], what: &str) -> crate::error::Result<()> {
    let (temp, storage) = TempFile::create(target)?;
    storage.write_all_at(bytes, 0).map_err(|e| {
        Error::io(
            format!("writing the new {what} to {}", temp.temp_path().display()),
            e,
        )
        .in_file(target)
    })?;
    drop(storage);
    Ok(temp.commit()?)
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Removed while still locked: the name never exists unlocked.
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The files of one output: the target itself, final files beside it (a flat VMDK's extent) and
/// scratch files. All are created under temporary names in the target's folder (the folder of
/// the file a symbolic link leads to: the link stays); [`commit`] renames the final ones into
/// place (beside-files first, the target last), and dropping an uncommitted set removes
/// everything it created. Each final path is checked before its temporary is created (see
/// [`resolve_output`](crate::files::resolve_output)): a directory, a device, a FIFO, a missing or
/// read-only folder is an error.
///
/// [`commit`]: OutputFiles::commit
///
/// A target that exists already is an image another diskconv process may be changing in place
/// (a `sync` target): its [`ImageLock`](super::ImageLock) is taken when the main output is
/// created and held until the set is committed or dropped, so that process's writes are not
/// lost to the rename (and it cannot start meanwhile).
#[derive(Debug)]
pub struct OutputFiles {
    target: PathBuf,
    /// The lock of the existing file the target replaces.
    replaced: Option<super::ImageLock>,
    main: Option<TempFile>,
    siblings: Vec<TempFile>,
    scratch: Vec<TempFile>,
}

impl OutputFiles {
    /// An empty set for `target`; nothing is created yet. A symbolic link is followed to the
    /// path it leads to, which becomes [`target`](Self::target).
    pub fn new(target: &Path) -> Self {
        OutputFiles {
            target: follow_links(target).unwrap_or_else(|_| target.to_path_buf()),
            replaced: None,
            main: None,
            siblings: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The final path of the output (symbolic links resolved).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Stale temporaries of these outputs left by killed runs and removed when the new
    /// temporaries were created.
    pub fn stale_removed(&self) -> Vec<PathBuf> {
        self.main
            .iter()
            .chain(&self.siblings)
            .chain(&self.scratch)
            .flat_map(|t| t.stale_removed().iter().cloned())
            .collect()
    }

    /// Creates the (temporary) storage that becomes the target. Once per set.
    pub fn main(&mut self) -> crate::error::Result<Arc<dyn Storage>> {
        if self.main.is_some() {
            return Err(Error::InvalidArgument(
                "the main output was already created".into(),
            ));
        }
        let path = resolve_output_file(&self.target)?;
        if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            self.replaced = Some(super::ImageLock::acquire(&path)?);
        }
        let (t, s) = TempFile::create(&path)?;
        self.main = Some(t);
        Ok(Arc::new(s))
    }

    /// Creates the storage of another final file, `file_name`, in the target's folder. The name
    /// must be a plain file name (no folders).
    pub fn sibling(&mut self, file_name: &str) -> crate::error::Result<Arc<dyn Storage>> {
        if file_name.is_empty()
            || file_name.contains('/')
            || file_name == "."
            || file_name == ".."
            || file_name.contains('\0')
        {
            return Err(Error::InvalidArgument(format!(
                "'{file_name}' is not a plain file name"
            )));
        }
        let path = self.dir().join(file_name);
        if path == self.target || self.siblings.iter().any(|t| t.target() == path) {
            return Err(Error::InvalidArgument(format!(
                "output file {} is named twice",
                path.display()
            )));
        }
        let path = resolve_output_file(&path)?;
        let (t, s) = TempFile::create(&path)?;
        self.siblings.push(t);
        Ok(Arc::new(s))
    }

    /// Creates a scratch file in the target's folder, removed when the set is committed or
    /// dropped.
    pub fn scratch(&mut self) -> crate::error::Result<Arc<dyn Storage>> {
        let n = self.scratch.len();
        let name = format!(
            "{}.scratch{n}",
            self.target
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let (t, s) = TempFile::create(&self.dir().join(name))?;
        self.scratch.push(t);
        Ok(Arc::new(s))
    }

    fn dir(&self) -> PathBuf {
        folder_of(&self.target)
    }

    /// Commits the final files (each synced, renamed into place and its folder synced: see
    /// [`TempFile::commit`]; beside-files first, the target last) and removes the scratch
    /// files.
    pub fn commit(self) -> crate::error::Result<()> {
        let OutputFiles {
            target: _,
            replaced,
            main,
            siblings,
            scratch,
        } = self;
        for t in siblings {
            t.commit()?;
        }
        if let Some(m) = main {
            m.commit()?;
        }
        drop(scratch);
        drop(replaced);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn output_files_commit_siblings_and_drop_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.vmdk");
        let mut files = OutputFiles::new(&target);
        let main = files.main().unwrap();
        let ext = files.sibling("disk-flat.vmdk").unwrap();
        let scratch = files.scratch().unwrap();
        assert!(files.sibling("../x").is_err());
        assert!(files.sibling("disk-flat.vmdk").is_err());
        assert!(files.main().is_err());
        main.write_all_at(b"desc", 0).unwrap();
        ext.write_all_at(b"data", 0).unwrap();
        scratch.write_all_at(b"tmp", 0).unwrap();
        // Nothing is visible under the final names before the commit.
        assert!(!target.exists());
        files.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"desc");
        assert_eq!(
            std::fs::read(dir.path().join("disk-flat.vmdk")).unwrap(),
            b"data"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        // A set dropped without a commit leaves nothing behind.
        let other = dir.path().join("other.vmdk");
        let mut files = OutputFiles::new(&other);
        files.main().unwrap();
        files.sibling("other-flat.vmdk").unwrap();
        files.scratch().unwrap();
        drop(files);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
