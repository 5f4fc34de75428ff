//! Reading a Linux initramfs, and writing a newc archive to append to one.
//!
//! [`Initramfs::parse`] reads what the kernel's `init/initramfs.c` accepts: a sequence of
//! segments, each either an uncompressed newc/crc cpio archive (magic `070701`/`070702`, at a
//! multiple of 4 bytes, ending in `TRAILER!!!`) or a compressed stream ([`Compression`]) whose
//! data holds one or more such archives; zero bytes between segments are padding. The usual
//! shapes: an uncompressed early-microcode archive, then the compressed main archive (Debian's
//! initramfs-tools: zstd by default, gzip/xz/lz4/bzip2 with `COMPRESS=`; dracut: an
//! uncompressed early cpio, then gzip/xz/zstd).
//!
//! As in the kernel, a later member replaces an earlier one of the same path
//! ([`Initramfs::file`], [`Initramfs::lookup`]), and hard links (newc members with a link count
//! of 2 or more and the same device and inode within one archive) share their data.
//!
//! [`write_newc`] writes an archive padded to 512 bytes that can be appended to any initramfs.

mod cpio;
mod newc;

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{Error, ErrorKind, Result, StructureError};
use crate::guest::compress::{self, Compression};

pub use crate::guest::compress::module_name;
pub use newc::{NewcFile, write_newc};

use cpio::{Place, RawEntry};

/// Caps on what [`Initramfs::parse_with_limits`] accepts: hostile input is an error, not an
/// allocation of its choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of archive data in all (decompressed streams and uncompressed archives
    /// together). Default 1 GiB.
    pub max_bytes: u64,
    /// The most members in all. Default 1,000,000.
    pub max_entries: usize,
    /// The longest member name in bytes (without its NUL). Default 4095 (the kernel's
    /// `PATH_MAX` less the NUL).
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_entries: 1_000_000,
            max_name_len: 4095,
        }
    }
}

/// One segment of an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset of the segment in the initramfs.
    pub offset: u64,
    /// Its length in the initramfs (the compressed length of a compressed stream; for an
    /// uncompressed archive up to the end of its trailer's padding).
    pub length: u64,
    /// The compression of the stream, `None` for an uncompressed archive.
    pub compression: Option<Compression>,
    /// The length of its archive data (decompressed).
    pub data_len: u64,
    /// How many cpio archives (each ending in `TRAILER!!!`) it holds.
    pub archives: usize,
    /// How many members (trailers not counted) it holds.
    pub entries: usize,
}

/// The type of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
    /// A mode whose type bits name no file type.
    Unknown,
}

impl EntryKind {
    /// The type of `mode`'s `S_IFMT` bits.
    pub fn from_mode(mode: u32) -> Self {
        match mode & cpio::S_IFMT {
            cpio::S_IFREG => EntryKind::File,
            cpio::S_IFDIR => EntryKind::Dir,
            cpio::S_IFLNK => EntryKind::Symlink,
            cpio::S_IFCHR => EntryKind::CharDevice,
            cpio::S_IFBLK => EntryKind::BlockDevice,
            cpio::S_IFIFO => EntryKind::Fifo,
            cpio::S_IFSOCK => EntryKind::Socket,
            _ => EntryKind::Unknown,
        }
    }
}

/// One member of an initramfs, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path, normalised: no leading `/` or `./`, no empty or `.` components, no trailing
    /// `/`; the root folder itself (`.`) is the empty path. Names that are not UTF-8 are read
    /// lossily.
    pub path: String,
    /// Type and permission bits.
    pub mode: u32,
    /// The type from `mode`.
    pub kind: EntryKind,
    /// The data length as stored in this member (a hard link's data may be in another member:
    /// [`Initramfs::file`] gives the shared data).
    pub size: u64,
    /// A symbolic link's target.
    pub symlink_target: Option<String>,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Link count.
    pub nlink: u32,
    /// Inode number.
    pub ino: u32,
    /// The device a device node stands for (major, minor).
    pub rdev: (u32, u32),
    /// The index of the segment in [`Initramfs::segments`].
    pub segment: usize,
    /// Where the data is: buffer index and range.
    data: (usize, Range<usize>),
    /// The hard-link group, if any.
    link: Option<usize>,
}

/// A kernel module file found in an initramfs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelModule {
    /// The kernel version: the folder under `lib/modules/` or `usr/lib/modules/`.
    pub kernel_version: String,
    /// The module name (`virtio_blk`: `-` written `_`), see [`module_name`].
    pub name: String,
    /// The path of the file in the initramfs.
    pub path: String,
}

/// A parsed initramfs (every segment decompressed and its members indexed).
#[derive(Debug, Clone)]
pub struct Initramfs {
    segments: Vec<Segment>,
    entries: Vec<Entry>,
    /// Archive data: one buffer per segment.
    bufs: Vec<Vec<u8>>,
    /// The last member of each path.
    index: HashMap<String, usize>,
    /// Hard-link groups: the members sharing one inode, in order.
    links: Vec<Vec<usize>>,
}

/// `path` without leading `/` and `./`, empty and `.` components or a trailing `/`.
pub(crate) fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// An initramfs-level error at `offset` of the input.
fn top_error(kind: ErrorKind, what: &str, offset: usize, detail: String) -> Error {
    Error::typed(
        kind,
        StructureError {
            kind,
            format: "initramfs",
            what: what.into(),
            offset: offset as u64,
            detail,
        },
    )
}

/// Parses the archives of a decompressed stream: archives at multiples of 4, zeros between,
/// anything else is junk (the kernel's "junk within compressed archive").
fn stream_archives(
    data: &[u8],
    place: &Place,
    limits: &Limits,
    room: usize,
) -> Result<Vec<Vec<RawEntry>>> {
    let mut out: Vec<Vec<RawEntry>> = Vec::new();
    let mut count = 0;
    let mut pos = 0;
    while pos < data.len() {
        if data[pos] == 0 {
            pos += 1;
            continue;
        }
        if data[pos] != b'0' || pos % 4 != 0 {
            return Err(place.error(
                ErrorKind::Corrupt,
                "archive data",
                pos,
                format!(
                    "expected a cpio archive at a multiple of 4 or zero padding, found byte {:#04x}",
                    data[pos]
                ),
            ));
        }
        let (entries, end) =
            cpio::parse_archive(data, pos, place, limits.max_name_len, room - count)?;
        count += entries.len();
        out.push(entries);
        pos = end;
    }
    Ok(out)
}

impl Initramfs {
    /// Parses an initramfs with the default [`Limits`].
    pub fn parse(bytes: &[u8]) -> Result<Initramfs> {
        Initramfs::parse_with_limits(bytes, &Limits::default())
    }

    /// Parses an initramfs: every segment, compressed or not, and every member.
    ///
    /// Errors name the structure and offset: [`ErrorKind::InvalidFormat`] when a segment starts
    /// with neither a cpio magic nor a known compression (or the input holds no segment),
    /// [`ErrorKind::Corrupt`] for truncated or inconsistent archives and streams,
    /// [`ErrorKind::Unsupported`] for lzo streams and for input beyond `limits`.
    pub fn parse_with_limits(bytes: &[u8], limits: &Limits) -> Result<Initramfs> {
        let mut me = Initramfs {
            segments: Vec::new(),
            entries: Vec::new(),
            bufs: Vec::new(),
            index: HashMap::new(),
            links: Vec::new(),
        };
        let mut budget = limits.max_bytes;
        let mut pos = 0usize;
        while pos < bytes.len() {
            if bytes[pos] == 0 {
                pos += 1;
                continue;
            }
            let room = limits.max_entries.saturating_sub(me.entries.len());
            if bytes[pos] == b'0' && pos % 4 == 0 {
                let place = Place { stream: None };
                let (raw, end) =
                    cpio::parse_archive(bytes, pos, &place, limits.max_name_len, room)?;
                let len = end - pos;
                if len as u64 > budget {
                    return Err(top_error(
                        ErrorKind::Unsupported,
                        "cpio archive",
                        pos,
                        format!(
                            "{len} bytes would pass the cap of {} bytes of archive data",
                            limits.max_bytes
                        ),
                    ));
                }
                budget -= len as u64;
                let buf = bytes[pos..end].to_vec();
                me.add_segment(
                    Segment {
                        offset: pos as u64,
                        length: len as u64,
                        compression: None,
                        data_len: len as u64,
                        archives: 1,
                        entries: raw.len(),
                    },
                    vec![raw],
                    buf,
                    pos,
                );
                pos = end;
                continue;
            }
            let Some(kind) = compress::detect(&bytes[pos..]) else {
                let head = &bytes[pos..bytes.len().min(pos + 8)];
                if let Some(name) = compress::detect_unsupported(head) {
                    return Err(top_error(
                        ErrorKind::Unsupported,
                        "compressed stream",
                        pos,
                        format!("{name} compression is not supported"),
                    ));
                }
                let hint = if bytes[pos] == b'0' {
                    " (a cpio archive must start at a multiple of 4 bytes)"
                } else {
                    ""
                };
                return Err(top_error(
                    ErrorKind::InvalidFormat,
                    "segment",
                    pos,
                    format!(
                        "expected a cpio archive (070701) or a compressed stream, found bytes {}{hint}",
                        head.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ));
            };
            let decoded = compress::decompress(kind, &bytes[pos..], pos as u64, budget)?;
            budget -= decoded.data.len() as u64;
            let place = Place {
                stream: Some((kind.name(), pos as u64)),
            };
            let archives = stream_archives(&decoded.data, &place, limits, room)?;
            if archives.is_empty() {
                return Err(top_error(
                    ErrorKind::Corrupt,
                    "compressed stream",
                    pos,
                    format!("the {kind} stream holds no cpio archive"),
                ));
            }
            me.add_segment(
                Segment {
                    offset: pos as u64,
                    length: decoded.consumed as u64,
                    compression: Some(kind),
                    data_len: decoded.data.len() as u64,
                    archives: archives.len(),
                    entries: archives.iter().map(Vec::len).sum(),
                },
                archives,
                decoded.data,
                0,
            );
            // A stream uses at least its magic, so this always moves on.
            pos += decoded.consumed.max(1);
        }
        if me.segments.is_empty() {
            return Err(top_error(
                ErrorKind::InvalidFormat,
                "initramfs",
                0,
                format!(
                    "no cpio archive or compressed stream in {} bytes",
                    bytes.len()
                ),
            ));
        }
        Ok(me)
    }

    /// Adds a segment, its archives' members (their data ranges relative to `buf` once `base`
    /// is taken off) and its data.
    fn add_segment(
        &mut self,
        seg: Segment,
        archives: Vec<Vec<RawEntry>>,
        buf: Vec<u8>,
        base: usize,
    ) {
        let segment = self.segments.len();
        let b = self.bufs.len();
        for raw in archives {
            // The kernel keys hard links by (device, inode) and forgets them at each trailer.
            let mut groups: HashMap<(u32, u32, u32), usize> = HashMap::new();
            for r in raw {
                let h = r.header;
                let kind = EntryKind::from_mode(h.mode);
                let data = (r.data.start - base)..(r.data.end - base);
                let path = normalize(&String::from_utf8_lossy(&r.name));
                let symlink_target = (kind == EntryKind::Symlink)
                    .then(|| String::from_utf8_lossy(&buf[data.clone()]).into_owned());
                let idx = self.entries.len();
                let link = if kind == EntryKind::File && h.nlink >= 2 {
                    let g = *groups
                        .entry((h.devmajor, h.devminor, h.ino))
                        .or_insert_with(|| {
                            self.links.push(Vec::new());
                            self.links.len() - 1
                        });
                    self.links[g].push(idx);
                    Some(g)
                } else {
                    None
                };
                self.index.insert(path.clone(), idx);
                self.entries.push(Entry {
                    path,
                    mode: h.mode,
                    kind,
                    size: u64::from(h.filesize),
                    symlink_target,
                    uid: h.uid,
                    gid: h.gid,
                    mtime: h.mtime,
                    nlink: h.nlink,
                    ino: h.ino,
                    rdev: (h.rdevmajor, h.rdevminor),
                    segment,
                    data: (b, data),
                    link,
                });
            }
        }
        self.bufs.push(buf);
        self.segments.push(seg);
    }

    /// The segments, in input order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Every member, in archive order (a path may appear more than once; the last one wins).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The member that `path` names at the end (the last one of that path), not following
    /// symbolic links. `path` is normalised as [`Entry::path`] is.
    pub fn lookup(&self, path: &str) -> Option<&Entry> {
        self.index.get(&normalize(path)).map(|&i| &self.entries[i])
    }

    /// The member paths at the end, sorted (each path once).
    pub fn paths(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(|s| s.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// The data of a member (hard links: the data of the group, that is of its last member
    /// with data, as the kernel writes each member's data into the one shared file).
    pub fn data(&self, entry: &Entry) -> &[u8] {
        let e = match entry.link {
            Some(g) => self.links[g]
                .iter()
                .rev()
                .map(|&i| &self.entries[i])
                .find(|e| e.size > 0)
                .unwrap_or(entry),
            None => entry,
        };
        let (b, r) = &e.data;
        &self.bufs[*b][r.clone()]
    }

    /// The contents of the regular file at `path`, following symbolic links (in every
    /// component); `None` when it does not resolve to a regular file.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        let resolved = self.resolve(path)?;
        let e = self.lookup(&resolved)?;
        (e.kind == EntryKind::File).then(|| self.data(e))
    }

    /// `path` with every symbolic link in it followed (targets relative to the link's folder,
    /// or absolute to the initramfs root), normalised; `None` when a link loops (more than 40
    /// links) or leaves the root. Components that do not exist are kept as they are, so the
    /// result is where a new member should be written.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut todo: Vec<String> = normalize(path)
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop()?;
                continue;
            }
            done.push(c);
            let here = done.join("/");
            let Some(e) = self.lookup(&here) else {
                continue;
            };
            if let Some(target) = &e.symlink_target {
                links += 1;
                if links > 40 {
                    return None;
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .rev()
                        .map(str::to_string),
                );
            }
        }
        Some(done.join("/"))
    }

    /// The kernel module files (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`) under
    /// `lib/modules/<version>/` and `usr/lib/modules/<version>/`, each path once (its last
    /// member), sorted by version, name and path.
    pub fn kernel_modules(&self) -> Vec<KernelModule> {
        let mut out: Vec<KernelModule> = self
            .index
            .iter()
            .filter(|&(_, &i)| self.entries[i].kind == EntryKind::File)
            .filter_map(|(path, _)| {
                let rest = path
                    .strip_prefix("lib/modules/")
                    .or_else(|| path.strip_prefix("usr/lib/modules/"))?;
                let (version, file) = rest.split_once('/')?;
                let name = module_name(file)?;
                Some(KernelModule {
                    kernel_version: version.to_string(),
                    name,
                    path: path.clone(),
                })
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::cpio::tests::{member, trailer};
    use super::cpio::{S_IFDIR, S_IFLNK, S_IFREG};
    use super::*;
    use std::io::Write;

    /// An archive with the members (name, mode, data).
    fn archive(members: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut a = Vec::new();
        for (i, (name, mode, data)) in members.iter().enumerate() {
            member(&mut a, i as u32 + 1, *mode, 1, name, data);
        }
        trailer(&mut a);
        a
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn microcode_then_compressed_main_and_later_members_win() {
        let early = archive(&[
            ("kernel", S_IFDIR | 0o755, b""),
            (
                "kernel/x86/microcode/GenuineIntel.bin",
                S_IFREG | 0o644,
                b"ucode",
            ),
        ]);
        let main = archive(&[
            (".", S_IFDIR | 0o755, b""),
            (
                "./usr/lib/modules/6.1.0-9-amd64/kernel/virtio-blk.ko.xz",
                S_IFREG | 0o644,
                b"m1",
            ),
            ("lib", S_IFLNK | 0o777, b"usr/lib"),
            ("etc/x", S_IFREG | 0o644, b"old"),
        ]);
        let more = archive(&[("etc/x", S_IFREG | 0o600, b"new")]);
        let mut stream = main.clone();
        stream.extend_from_slice(&[0; 8]);
        stream.extend_from_slice(&more);
        let mut img = early.clone();
        img.extend_from_slice(&[0; 4]);
        let main_at = img.len();
        img.extend(gz(&stream));
        let appended_at = img.len().next_multiple_of(4);
        img.resize(appended_at, 0);
        img.extend(archive(&[("etc/y", S_IFREG | 0o644, b"appended")]));

        let ir = Initramfs::parse(&img).unwrap();
        let segs = ir.segments();
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].compression, None);
        assert_eq!(segs[0].entries, 2);
        assert_eq!(segs[1].offset, main_at as u64);
        assert_eq!(segs[1].compression, Some(Compression::Gzip));
        assert_eq!(segs[1].archives, 2);
        assert_eq!(segs[1].entries, 5);
        assert_eq!(segs[2].offset, appended_at as u64);
        assert_eq!(ir.entries()[2].path, "");
        assert_eq!(ir.file("etc/x"), Some(&b"new"[..]));
        assert_eq!(ir.lookup("/etc/x").unwrap().mode, S_IFREG | 0o600);
        assert_eq!(ir.file("./etc/y"), Some(&b"appended"[..]));
        assert_eq!(
            ir.resolve("lib/modules/6.1.0-9-amd64").unwrap(),
            "usr/lib/modules/6.1.0-9-amd64"
        );
        assert_eq!(
            ir.file("/lib/modules/6.1.0-9-amd64/kernel/virtio-blk.ko.xz"),
            Some(&b"m1"[..])
        );
        assert_eq!(
            ir.kernel_modules(),
            vec![KernelModule {
                kernel_version: "6.1.0-9-amd64".into(),
                name: "virtio_blk".into(),
                path: "usr/lib/modules/6.1.0-9-amd64/kernel/virtio-blk.ko.xz".into(),
            }]
        );
    }

    #[test]
    fn hard_links_share_the_data_of_the_member_that_has_it() {
        let mut a = Vec::new();
        // GNU cpio writes every link but the last with size 0.
        member(&mut a, 9, S_IFREG | 0o755, 2, "bin/a", b"");
        member(&mut a, 9, S_IFREG | 0o755, 2, "bin/b", b"shared");
        trailer(&mut a);
        let ir = Initramfs::parse(&a).unwrap();
        assert_eq!(ir.file("bin/a"), Some(&b"shared"[..]));
        assert_eq!(ir.file("bin/b"), Some(&b"shared"[..]));
    }

    #[test]
    fn bad_segments_are_named() {
        let a = archive(&[("x", S_IFREG | 0o644, b"1")]);
        // Unaligned archive after a compressed stream.
        let e = Initramfs::parse(&[b"\x01\x02\x03"[..].to_vec()].concat()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidFormat);
        assert!(e.to_string().contains("01 02 03"), "{e}");
        let mut un = vec![0u8];
        un.extend_from_slice(&a);
        let e = Initramfs::parse(&un).unwrap_err();
        assert!(e.to_string().contains("multiple of 4"), "{e}");
        assert!(Initramfs::parse(&[0u8; 64]).is_err());
        assert!(Initramfs::parse(b"").is_err());
        // Junk inside a compressed stream.
        let mut j = a.clone();
        j.extend_from_slice(b"junk");
        let e = Initramfs::parse(&gz(&j)).unwrap_err();
        assert!(e.to_string().contains("gzip stream at 0x0"), "{e}");
        // A compressed stream cut short.
        let g = gz(&a);
        let e = Initramfs::parse(&g[..g.len() - 4]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        // lzo.
        let e = Initramfs::parse(b"\x89LZO\0\r\n\x1a\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        // Caps.
        let limits = Limits {
            max_bytes: 100,
            ..Limits::default()
        };
        let e = Initramfs::parse_with_limits(&gz(&a), &limits).unwrap_err();
        assert!(e.to_string().contains("cap of 100 bytes"), "{e}");
        let e = Initramfs::parse_with_limits(&a, &limits).unwrap_err();
        assert!(e.to_string().contains("cap of 100 bytes"), "{e}");
    }

    #[test]
    fn written_archive_reads_back_and_appends() {
        let files = vec![
            NewcFile::dir("usr/lib/modules/6.1", 0o755),
            NewcFile::file("usr/lib/modules/6.1/nvme.ko", 0o644, vec![1u8, 2, 3]),
            NewcFile::symlink("sbin", "usr/sbin").with_mtime(1_700_000_000),
        ];
        let w = write_newc(&files).unwrap();
        assert_eq!(w.len() % 512, 0);
        let mut img = gz(&archive(&[("init", S_IFREG | 0o755, b"#!/bin/sh\n")]));
        img.resize(img.len().next_multiple_of(4), 0);
        img.extend_from_slice(&w);
        let ir = Initramfs::parse(&img).unwrap();
        assert_eq!(ir.segments().len(), 2);
        assert_eq!(
            ir.file("usr/lib/modules/6.1/nvme.ko"),
            Some(&[1u8, 2, 3][..])
        );
        let l = ir.lookup("sbin").unwrap();
        assert_eq!(l.symlink_target.as_deref(), Some("usr/sbin"));
        assert_eq!(l.mtime, 1_700_000_000);
        let inos: std::collections::HashSet<u32> =
            ir.entries()[1..].iter().map(|e| e.ino).collect();
        assert_eq!(inos.len(), 3);
        assert_eq!(ir.kernel_modules()[0].name, "nvme");
    }
}
