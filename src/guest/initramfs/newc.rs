//! Writing a newc cpio archive that can be appended to any initramfs.

use crate::error::{Error, Result};

use super::cpio::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, TRAILER};
use super::normalize;

/// The longest name the writer accepts (the kernel's `PATH_MAX` less the NUL).
const MAX_NAME: usize = 4095;

/// One member of an archive to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewcFile {
    /// The path inside the archive, relative (a leading `/` or `./` is removed).
    pub path: String,
    /// Type and permission bits: `0o100644` for a file, `0o040755` for a directory,
    /// `0o120777` for a symbolic link.
    pub mode: u32,
    /// The file's contents, or a symbolic link's target; empty for a directory.
    pub data: Vec<u8>,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
}

impl NewcFile {
    /// A regular file with permission bits `perm` (e.g. `0o644`).
    pub fn file(path: impl Into<String>, perm: u32, data: impl Into<Vec<u8>>) -> Self {
        NewcFile {
            path: path.into(),
            mode: S_IFREG | (perm & 0o7777),
            data: data.into(),
            mtime: 0,
        }
    }

    /// A directory with permission bits `perm` (e.g. `0o755`).
    pub fn dir(path: impl Into<String>, perm: u32) -> Self {
        NewcFile {
            path: path.into(),
            mode: S_IFDIR | (perm & 0o7777),
            data: Vec::new(),
            mtime: 0,
        }
    }

    /// A symbolic link to `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        NewcFile {
            path: path.into(),
            mode: S_IFLNK | 0o777,
            data: target.into().into_bytes(),
            mtime: 0,
        }
    }

    /// The same member with modification time `mtime`.
    pub fn with_mtime(mut self, mtime: u32) -> Self {
        self.mtime = mtime;
        self
    }
}

/// Appends one newc member: the header, the name and its NUL padded to a multiple of 4, the
/// data padded to a multiple of 4.
fn push_member(out: &mut Vec<u8>, fields: [u32; 13], name: &str, data: &[u8]) {
    out.extend_from_slice(super::cpio::NEWC_MAGIC);
    for v in fields {
        out.extend_from_slice(format!("{v:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Writes `files`, in their order, as one newc archive ending in `TRAILER!!!` and padded with
/// zeros to a multiple of 512 bytes, so that it can be appended to an initramfs (the kernel
/// skips the zeros between archives).
///
/// Every member gets its own inode number (1, 2, ...), link count 1 (2 for directories), owner
/// root, device 0. Only the members given are written: the kernel does not create missing
/// parent directories, so list them first. Note that a directory member replaces whatever the
/// path already names in the initramfs: writing `lib` where `lib` is a symbolic link to
/// `usr/lib` (merged /usr) removes the link; write under the resolved path instead
/// ([`Initramfs::resolve`](super::Initramfs::resolve)).
///
/// Errors ([`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument)): an empty
/// path or one with a NUL byte or longer than 4095 bytes, a mode that is not a regular file,
/// directory or symbolic link, a directory with data, a symbolic link without a target, data of
/// 4 GiB or more.
pub fn write_newc(files: &[NewcFile]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let bad =
            |why: String| Error::InvalidArgument(format!("newc member {i} {:?}: {why}", f.path));
        let path = normalize(&f.path);
        if path.is_empty() || f.path.contains('\0') || path.len() > MAX_NAME {
            return Err(bad(format!(
                "the path must be 1 to {MAX_NAME} bytes after removing leading / and ./, without NUL"
            )));
        }
        let kind = f.mode & S_IFMT;
        let nlink = match kind {
            S_IFREG => 1,
            S_IFDIR if f.data.is_empty() => 2,
            S_IFDIR => return Err(bad("a directory has no data".into())),
            S_IFLNK if !f.data.is_empty() && !f.data.contains(&0) => 1,
            S_IFLNK => return Err(bad("a symbolic link needs a target without NUL".into())),
            _ => {
                return Err(bad(format!(
                    "mode {:#o} is not a regular file, directory or symbolic link",
                    f.mode
                )));
            }
        };
        let size = u32::try_from(f.data.len()).map_err(|_| {
            bad(format!(
                "{} bytes of data, newc holds less than 4 GiB",
                f.data.len()
            ))
        })?;
        let ino = u32::try_from(i + 1).map_err(|_| bad("too many members".into()))?;
        push_member(
            &mut out,
            [
                ino,
                f.mode,
                0,
                0,
                nlink,
                f.mtime,
                size,
                0,
                0,
                0,
                0,
                path.len() as u32 + 1,
                0,
            ],
            &path,
            &f.data,
        );
    }
    push_member(
        &mut out,
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, TRAILER.len() as u32 + 1, 0],
        TRAILER,
        b"",
    );
    out.resize(out.len().div_ceil(512) * 512, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn layout_of_one_file() {
        let a = write_newc(&[NewcFile::file("/etc/x", 0o644, b"hello".to_vec()).with_mtime(7)])
            .unwrap();
        assert_eq!(a.len(), 512);
        assert_eq!(&a[..6], b"070701");
        // ino 1, mode 0100644, uid 0, gid 0, nlink 1, mtime 7, filesize 5.
        assert_eq!(
            &a[6..62],
            b"00000001000081a4000000000000000000000001000000070000000500000000"[..56].as_ref()
        );
        // namesize 6 ("etc/x" + NUL), at field 11 (bytes 94..102).
        assert_eq!(&a[94..102], b"00000006");
        assert_eq!(&a[110..116], b"etc/x\0");
        // 110 + 6 = 116, already a multiple of 4: the data follows at once.
        assert_eq!(&a[116..121], b"hello");
        assert_eq!(&a[121..124], &[0, 0, 0]);
        assert_eq!(&a[124..130], b"070701");
        assert_eq!(&a[234..245], b"TRAILER!!!\0");
        assert!(a[248..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_what_newc_cannot_hold() {
        for f in [
            NewcFile::file("", 0o644, b"x".to_vec()),
            NewcFile::file("./", 0o644, b"x".to_vec()),
            NewcFile::file("a\0b", 0o644, b"x".to_vec()),
            NewcFile::symlink("l", ""),
            NewcFile {
                path: "d".into(),
                mode: S_IFDIR | 0o755,
                data: b"x".to_vec(),
                mtime: 0,
            },
            NewcFile {
                path: "dev".into(),
                mode: 0o020644,
                data: Vec::new(),
                mtime: 0,
            },
            NewcFile::file("x".repeat(5000), 0o644, Vec::new()),
        ] {
            let e = write_newc(&[f]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        }
    }
}
