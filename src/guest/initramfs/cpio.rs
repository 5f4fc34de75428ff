//! The newc ("new ASCII", `070701`) and crc (`070702`) cpio formats as the kernel's
//! `init/initramfs.c` reads them: the 110-byte header of hexadecimal fields, the NUL-terminated
//! name, the data, each of header+name and data padded to a multiple of 4 bytes, the archive
//! ending with the entry `TRAILER!!!`.

use std::ops::Range;

use crate::error::{Error, ErrorKind, Result, StructureError};

/// Header magic of the newc format (cpio(5): "New ASCII Format").
pub(crate) const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Header magic of the crc format (newc with a sum of the data bytes in `check`).
pub(crate) const CRC_MAGIC: &[u8; 6] = b"070702";
/// The portable ASCII (odc) magic, which the kernel refuses ("use -H newc").
const ODC_MAGIC: &[u8; 6] = b"070707";
/// Size of a newc header: the magic and 13 fields of 8 hex digits.
pub(crate) const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
pub(crate) const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode` (`S_IFMT`) and the types (`S_IFREG`, ...).
pub(crate) const S_IFMT: u32 = 0o170000;
/// A socket.
pub(crate) const S_IFSOCK: u32 = 0o140000;
/// A symbolic link.
pub(crate) const S_IFLNK: u32 = 0o120000;
/// A regular file.
pub(crate) const S_IFREG: u32 = 0o100000;
/// A block device.
pub(crate) const S_IFBLK: u32 = 0o060000;
/// A directory.
pub(crate) const S_IFDIR: u32 = 0o040000;
/// A character device.
pub(crate) const S_IFCHR: u32 = 0o020000;
/// A FIFO.
pub(crate) const S_IFIFO: u32 = 0o010000;

/// The 13 fields of a newc header, in their order.
pub(crate) const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

/// A parsed newc header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Inode number (hard links share it).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Number of links.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Length of the data.
    pub filesize: u32,
    /// Device of the file (major), part of the hard-link key.
    pub devmajor: u32,
    /// Device of the file (minor), part of the hard-link key.
    pub devminor: u32,
    /// Device a device node stands for (major).
    pub rdevmajor: u32,
    /// Device a device node stands for (minor).
    pub rdevminor: u32,
    /// Length of the name including its NUL.
    pub namesize: u32,
}

/// Rounds `n` up to a multiple of 4.
pub(crate) fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// Where a stream's bytes came from, for messages: the whole input (`None`) or the decompressed
/// data of a compressed segment (its compression and input offset).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    /// The compressed segment holding the bytes, if any: its compression name and offset.
    pub stream: Option<(&'static str, u64)>,
}

impl Place {
    /// An error about `what` at byte `pos` of this place's bytes.
    pub fn error(&self, kind: ErrorKind, what: &str, pos: usize, detail: String) -> Error {
        let what = match self.stream {
            None => what.to_string(),
            Some((name, off)) => {
                format!("{what} in the {name} stream at {off:#x} (offset into its data)")
            }
        };
        Error::typed(
            kind,
            StructureError {
                kind,
                format: "initramfs",
                what,
                offset: pos as u64,
                detail,
            },
        )
    }
}

/// Parses the header at `pos` of `buf`.
pub(crate) fn parse_header(buf: &[u8], pos: usize, place: &Place) -> Result<Header> {
    let h = buf
        .get(pos..)
        .and_then(|b| b.get(..HEADER_LEN))
        .ok_or_else(|| {
            place.error(
                ErrorKind::Corrupt,
                "cpio header",
                pos,
                format!(
                    "truncated: {} of its {HEADER_LEN} bytes are there",
                    buf.len().saturating_sub(pos)
                ),
            )
        })?;
    let magic = &h[..6];
    if magic != NEWC_MAGIC && magic != CRC_MAGIC {
        let detail = if magic == ODC_MAGIC {
            "portable ASCII (odc, 070707) cpio; the kernel reads only newc (070701) and crc (070702)"
                .to_string()
        } else {
            format!(
                "expected magic 070701 or 070702, found {:?}",
                String::from_utf8_lossy(magic)
            )
        };
        return Err(place.error(ErrorKind::InvalidFormat, "cpio header", pos, detail));
    }
    let mut v = [0u32; 13];
    for (i, field) in FIELDS.iter().enumerate() {
        let at = 6 + 8 * i;
        let digits = &h[at..at + 8];
        let text = std::str::from_utf8(digits).ok();
        v[i] = text
            .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| {
                place.error(
                    ErrorKind::Corrupt,
                    "cpio header",
                    pos,
                    format!(
                        "field {field} (byte {at}) is not 8 hex digits: {:?}",
                        String::from_utf8_lossy(digits)
                    ),
                )
            })?;
    }
    Ok(Header {
        ino: v[0],
        mode: v[1],
        uid: v[2],
        gid: v[3],
        nlink: v[4],
        mtime: v[5],
        filesize: v[6],
        devmajor: v[7],
        devminor: v[8],
        rdevmajor: v[9],
        rdevminor: v[10],
        namesize: v[11],
    })
}

/// One member of an archive as found, before paths are normalised.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    /// The header.
    pub header: Header,
    /// The name as stored (up to its first NUL).
    pub name: Vec<u8>,
    /// Where the data lies in the parsed buffer.
    pub data: Range<usize>,
}

/// Parses the one archive starting at `start` of `buf` (a multiple of 4), up to and including
/// its `TRAILER!!!`; returns its members and the end of the trailer's padding (at most
/// `buf.len()`). `max_name` caps name lengths; `room` is how many more members may be added.
pub(crate) fn parse_archive(
    buf: &[u8],
    start: usize,
    place: &Place,
    max_name: usize,
    room: usize,
) -> Result<(Vec<RawEntry>, usize)> {
    let mut out = Vec::new();
    let mut pos = start;
    loop {
        if pos >= buf.len() {
            return Err(place.error(
                ErrorKind::Corrupt,
                "cpio archive",
                start,
                format!("ends at byte {:#x} without its {TRAILER} entry", buf.len()),
            ));
        }
        let header = parse_header(buf, pos, place)?;
        let namesize = header.namesize as usize;
        if namesize == 0 || namesize > max_name.saturating_add(1) {
            return Err(place.error(
                ErrorKind::Corrupt,
                "cpio header",
                pos,
                format!(
                    "name size {namesize}, expected 1 to {} (the name cap and its NUL)",
                    max_name.saturating_add(1)
                ),
            ));
        }
        let name_start = pos + HEADER_LEN;
        let name_end = name_start + namesize;
        let name = buf.get(name_start..name_end).ok_or_else(|| {
            place.error(
                ErrorKind::Corrupt,
                "cpio entry name",
                name_start,
                format!("truncated: the archive ends inside the {namesize}-byte name"),
            )
        })?;
        if name[namesize - 1] != 0 {
            return Err(place.error(
                ErrorKind::Corrupt,
                "cpio entry name",
                name_start,
                format!(
                    "not NUL-terminated: byte {} of the name is {:#04x}",
                    namesize - 1,
                    name[namesize - 1]
                ),
            ));
        }
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(namesize - 1)];
        // name_end <= buf.len() here, so neither addition overflows.
        let data_start = align4(name_end).unwrap_or(usize::MAX);
        let data_end = data_start.saturating_add(header.filesize as usize);
        if name == TRAILER.as_bytes() {
            let end = align4(data_end).unwrap_or(usize::MAX).min(buf.len());
            return Ok((out, end));
        }
        if data_end > buf.len() {
            return Err(place.error(
                ErrorKind::Corrupt,
                "cpio entry data",
                data_start.min(buf.len()),
                format!(
                    "truncated: {:?} has {} bytes of data, the archive ends {} bytes after its name",
                    String::from_utf8_lossy(name),
                    header.filesize,
                    buf.len().saturating_sub(data_start)
                ),
            ));
        }
        if out.len() >= room {
            return Err(place.error(
                ErrorKind::Unsupported,
                "cpio entry",
                pos,
                "more entries than the cap on entries".to_string(),
            ));
        }
        out.push(RawEntry {
            header,
            name: name.to_vec(),
            data: data_start..data_end,
        });
        pos = align4(data_end).unwrap_or(usize::MAX);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A newc header for `name` (+ NUL) and `size` bytes of data, the fields given.
    pub fn header(ino: u32, mode: u32, nlink: u32, size: usize, name: &str) -> Vec<u8> {
        let mut h = b"070701".to_vec();
        for v in [
            ino,                   // ino
            mode,                  // mode
            0,                     // uid
            0,                     // gid
            nlink,                 // nlink
            0x5f00_0000,           // mtime
            size as u32,           // filesize
            0,                     // devmajor
            0,                     // devminor
            0,                     // rdevmajor
            0,                     // rdevminor
            name.len() as u32 + 1, // namesize
            0,                     // check
        ] {
            h.extend_from_slice(format!("{v:08x}").as_bytes());
        }
        h
    }

    /// Appends one member: header, name, NUL, padding, data, padding.
    pub fn member(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) {
        out.extend(header(ino, mode, nlink, data.len(), name));
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

    /// Appends the trailer.
    pub fn trailer(out: &mut Vec<u8>) {
        member(out, 0, 0, 1, TRAILER, b"");
    }

    const TOP: Place = Place { stream: None };

    #[test]
    fn parses_members_and_stops_at_the_trailer() {
        let mut a = Vec::new();
        member(&mut a, 1, S_IFDIR | 0o755, 2, "etc", b"");
        member(&mut a, 2, S_IFREG | 0o644, 1, "etc/hostname", b"box\n");
        member(&mut a, 3, S_IFLNK | 0o777, 1, "bin", b"usr/bin");
        trailer(&mut a);
        let end = a.len();
        a.extend_from_slice(&[0; 12]);
        let (entries, e) = parse_archive(&a, 0, &TOP, 4096, 100).unwrap();
        assert_eq!(e, end);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].name, b"etc/hostname");
        assert_eq!(&a[entries[1].data.clone()], b"box\n");
        assert_eq!(entries[2].header.mode & S_IFMT, S_IFLNK);
    }

    #[test]
    fn bad_headers_are_named() {
        let mut a = Vec::new();
        member(&mut a, 1, S_IFREG | 0o644, 1, "x", b"data");
        trailer(&mut a);
        // Missing trailer: the archive is cut after the first member.
        let e = parse_archive(&a[..116], 0, &TOP, 4096, 100).unwrap_err();
        assert!(e.to_string().contains("without its TRAILER!!!"), "{e}");
        // A bad hex digit in filesize (field 7, bytes 54..62).
        let mut b = a.clone();
        b[56] = b'g';
        let e = parse_archive(&b, 0, &TOP, 4096, 100).unwrap_err();
        assert!(e.to_string().contains("field filesize"), "{e}");
        // odc magic.
        let mut c = a.clone();
        c[5] = b'7';
        let e = parse_archive(&c, 0, &TOP, 4096, 100).unwrap_err();
        assert!(e.to_string().contains("odc"), "{e}");
        assert_eq!(e.kind(), ErrorKind::InvalidFormat);
        // Data past the end.
        let e = parse_archive(&a[..114], 0, &TOP, 4096, 100).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // A name without its NUL.
        let mut d = a.clone();
        d[111] = b'y';
        let e = parse_archive(&d, 0, &TOP, 4096, 100).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        // Entry cap.
        let e = parse_archive(&a, 0, &TOP, 4096, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        // Name cap.
        let e = parse_archive(&a, 0, &TOP, 0, 10).unwrap_err();
        assert!(e.to_string().contains("name size 2"), "{e}");
    }
}
