//! Sync targets and sources: where a pass writes (a local image file, a block device, or a
//! remote raw disk handed in as [`Storage`]) and where it reads (a path, or an opened reader),
//! and opening a target for in-place updates, whatever its format.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::formats::registry::{self, detect};
use crate::formats::{RAW, raw};
use crate::image::{Format, ImageReader, ImageUpdater, NamedUpdater};
use crate::storage::{FileStorage, Storage};
use crate::sync::state::{StatePlace, is_block_device, state_path_for};

/// Where a sync pass writes.
#[derive(Clone)]
pub enum SyncTarget {
    /// A local image file (created by the first pass when missing) or block device.
    Path(PathBuf),
    /// A raw disk of fixed size reached through `storage` (a remote disk, say): never
    /// created, written whole by the first pass, like a block device.
    Storage {
        /// The disk's bytes (written in place; `sync` makes writes durable).
        storage: Arc<dyn Storage>,
        /// A stable identity without credentials, such as `nbd://host:10809/web01`: recorded
        /// in the sync state, used in messages and for the default state file name.
        id: String,
    },
}

impl fmt::Debug for SyncTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncTarget::Path(p) => f.debug_tuple("Path").field(p).finish(),
            SyncTarget::Storage { id, .. } => f
                .debug_struct("Storage")
                .field("id", id)
                .finish_non_exhaustive(),
        }
    }
}

impl SyncTarget {
    /// The target `path` names: an NBD URI (`nbd://`, `nbds://`, `nbd+unix://`) is connected
    /// to and becomes [`SyncTarget::Storage`] with the URI's credential-free identity (a
    /// read-only export is refused here); anything else is [`SyncTarget::Path`].
    pub fn for_path(path: &Path) -> Result<SyncTarget> {
        if !crate::net::is_nbd_path(path) {
            return Ok(SyncTarget::Path(path.to_path_buf()));
        }
        let uri = crate::net::NbdUri::parse(&path.to_string_lossy())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let storage = crate::net::NbdStorage::connect(&uri, &crate::net::NbdOptions::default())
            .map_err(|e| Error::io("connecting to the NBD server", e).in_file(path))?;
        if storage.info().read_only() {
            return Err(Error::InvalidArgument(
                "the NBD export is read-only: a sync target must be writable".into(),
            )
            .in_file(path));
        }
        Ok(SyncTarget::Storage {
            storage: Arc::new(storage),
            id: uri.id(),
        })
    }

    /// The target's name in messages: its path, or its id.
    pub fn name(&self) -> String {
        match self {
            SyncTarget::Path(p) => p.display().to_string(),
            SyncTarget::Storage { id, .. } => id.clone(),
        }
    }

    /// Whether the target is a raw disk of fixed size whose old content is unknown (a block
    /// device or a [`SyncTarget::Storage`]): never created, written whole by the first pass.
    pub fn is_fixed_disk(&self) -> bool {
        match self {
            SyncTarget::Path(p) => is_block_device(p),
            SyncTarget::Storage { .. } => true,
        }
    }
}

/// Where a sync pass reads.
pub enum SyncSource {
    /// An image file or block device, opened by each pass (see [`crate::open()`]).
    Path(PathBuf),
    /// An image already opened by the caller (a remote disk, say).
    Reader {
        /// The source's contents (and, for `--bitmap` passes, its
        /// [`dirty_ranges`](ImageReader::dirty_ranges)).
        reader: Box<dyn ImageReader>,
        /// A stable identity without credentials, such as `nbd://host:10809/web01`: recorded
        /// in the sync state, which refuses to be used with another source.
        id: String,
    },
}

impl fmt::Debug for SyncSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncSource::Path(p) => f.debug_tuple("Path").field(p).finish(),
            SyncSource::Reader { id, .. } => f
                .debug_struct("Reader")
                .field("id", id)
                .finish_non_exhaustive(),
        }
    }
}

/// Where the state of a sync to `dst` lives: `explicit` when given; for a path, see
/// [`state_path_for`]; for a [`SyncTarget::Storage`], `./<last path segment of its id>.dcsync`
/// in the current folder (say so to the user: [`StatePlace::in_current_folder`]).
pub fn state_place(dst: &SyncTarget, explicit: Option<&Path>) -> Result<StatePlace> {
    match dst {
        SyncTarget::Path(p) => state_path_for(p, explicit),
        SyncTarget::Storage { id, .. } => match explicit {
            Some(p) => Ok(StatePlace {
                path: p.to_path_buf(),
                in_current_folder: false,
            }),
            None => {
                let seg = id
                    .trim_end_matches('/')
                    .rsplit(['/', ':'])
                    .next()
                    .unwrap_or("");
                let ok = !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && !seg.starts_with('.')
                    && !seg.contains('\0');
                if !ok {
                    return Err(Error::InvalidArgument(format!(
                        "the sync target {id} has no name to call its state file after; give \
                         the state file"
                    ))
                    .with_hint(crate::error::Hint::StatePath));
                }
                Ok(StatePlace {
                    path: Path::new(".").join(format!("{seg}.dcsync")),
                    in_current_folder: true,
                })
            }
        },
    }
}

/// Opens the image at `path` for in-place updates, detecting its format from the content (or
/// using `format` when given). Formats that cannot be updated in place (streamOptimized VMDK,
/// OVA) are refused with the reason.
pub fn open_updater(path: &Path, format: Option<Format>) -> Result<Box<dyn ImageUpdater>> {
    let format = match format {
        Some(f) => f,
        None => {
            let st = FileStorage::open_read_only(path)
                .map_err(|e| Error::io("opening the sync target", e).in_file(path))?;
            detect(&st).map_err(|e| e.in_file(path))?
        }
    };
    let up = registry::open_updater(path, format)?;
    // Every later error (a write, a flush) names the target too.
    Ok(Box::new(NamedUpdater::new(up, path)))
}

/// Opens `dst` for in-place updates: a path as [`open_updater`] does, a
/// [`SyncTarget::Storage`] as a raw disk (its flushes go to [`Storage::sync`]).
pub fn open_target(dst: &SyncTarget, format: Option<Format>) -> Result<Box<dyn ImageUpdater>> {
    match dst {
        SyncTarget::Path(p) => open_updater(p, format),
        SyncTarget::Storage { storage, id } => {
            if let Some(f) = format.filter(|f| *f != RAW) {
                return Err(Error::InvalidArgument(format!(
                    "the sync target {id} is a raw disk, not a {f} image"
                )));
            }
            let up = raw::open_storage(storage.clone()).map_err(|e| e.in_file(id))?;
            Ok(Box::new(NamedUpdater::new(Box::new(up), id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn remote(id: &str) -> SyncTarget {
        SyncTarget::Storage {
            storage: Arc::new(MemStorage::from_vec(vec![0; 4096])),
            id: id.into(),
        }
    }

    #[test]
    fn state_of_a_storage_target_defaults_to_the_current_folder() {
        let p = state_place(&remote("nbd://target:10809/web01"), None).unwrap();
        assert_eq!(p.path, Path::new("./web01.dcsync"));
        assert!(p.in_current_folder);
        let p = state_place(&remote("nbd://h/a/b/"), None).unwrap();
        assert_eq!(p.path, Path::new("./b.dcsync"));
        let given = Path::new("/x/s.dcsync");
        let p = state_place(&remote("nbd://h/a"), Some(given)).unwrap();
        assert_eq!((p.path.as_path(), p.in_current_folder), (given, false));
        for bad in ["nbd://h/..", "nbd://h/.hidden", ""] {
            let e = state_place(&remote(bad), None).unwrap_err();
            assert_eq!(e.hint(), Some(crate::error::Hint::StatePath), "{bad}");
        }
        assert_eq!(remote("nbd://h/a").name(), "nbd://h/a");
        assert!(remote("nbd://h/a").is_fixed_disk());
    }

    #[test]
    fn a_storage_target_opens_as_raw_and_refuses_other_formats() {
        let t = remote("nbd://h/a");
        let mut up = open_target(&t, None).unwrap();
        assert_eq!((up.format(), up.virtual_size()), (RAW, 4096));
        up.write_at(&[1, 2, 3], 10).unwrap();
        up.flush().unwrap();
        let mut b = [0u8; 3];
        up.read_at(&mut b, 10).unwrap();
        assert_eq!(b, [1, 2, 3]);
        let Err(e) = open_target(&t, Some(Format::Qcow2)) else {
            panic!("a storage target opened as qcow2");
        };
        assert!(e.to_string().contains("raw disk"), "{e}");
        // Errors name the target.
        let e = up.write_at(&[0; 8], 4090).unwrap_err();
        assert!(e.to_string().contains("nbd://h/a"), "{e}");
    }
}
