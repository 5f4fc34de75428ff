//! The exclusive lock of an image that is being changed in place.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// An exclusive advisory lock (`flock`) on an image file, so that two in-place changes (or a
/// change and a rollback) cannot run on one image at once. Held until dropped.
#[derive(Debug)]
pub struct ImageLock {
    _file: File,
}

impl ImageLock {
    /// Locks the image at `path`. A lock another process holds is waited for briefly (a child
    /// forked for an unrelated command may hold it for a moment between its fork and its exec),
    /// then refused, naming the image.
    pub fn acquire(path: &Path) -> Result<ImageLock> {
        let f = File::open(path)
            .map_err(|e| Error::io("opening the image for an edit", e).in_file(path))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(ImageLock { _file: f }),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK && attempt <= 40 => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    return Err(Error::Busy(
                        "the image is being edited by another diskconv process (it holds the \
                         image's lock)"
                            .into(),
                    )
                    .in_file(path));
                }
                Err(e) => return Err(Error::io("locking the image", e.into()).in_file(path)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_image_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        std::fs::write(&p, b"x").unwrap();
        let held = ImageLock::acquire(&p).unwrap();
        let e = ImageLock::acquire(&p).unwrap_err();
        let msg = e.chain();
        assert!(
            msg.contains("disk.img") && msg.contains("another diskconv process"),
            "{msg}"
        );
        assert_eq!(e.kind(), crate::ErrorKind::Busy);
        drop(held);
        ImageLock::acquire(&p).unwrap();
        // A missing image: an I/O error naming it.
        let e = ImageLock::acquire(&d.path().join("none.img")).unwrap_err();
        assert!(e.chain().contains("none.img"), "{}", e.chain());
    }
}
