//! Reading XFS file systems, read-only: version 4 (with or without the directory file type)
//! and version 5 (CRCs), the file systems of RHEL-family roots. No crate reads XFS, so this
//! module does, from the on-disk format (XFS Algorithms & Data Structures, 3rd edition).
//!
//! [`XfsVolume::open`] reads and checks the superblock and the headers of the allocation
//! groups (AGF, AGI); then files are found by absolute path through the directories:
//! short-form (inside the inode), block, leaf and node directories (whose data blocks hold
//! every entry: `dir.rs` reads them in order and does not need the hash index). File data comes
//! from the inode's extent list or its extent B+tree (`bmap.rs`); holes and unwritten extents
//! read as zeros. Symbolic links, local or in blocks, are followed inside the file system
//! (40 at most per path, like Linux). On v5 every metadata block read is checked: magic, CRC32C,
//! its own address and owner where the block records them.
//!
//! Everything read from disk is bounded before it is used: AG geometry, inode numbers,
//! extent counts (2^21 per fork), B+tree depth (9 levels) and block count (the inode's own),
//! symbolic link length (1024 bytes), directory data (2 GiB), every entry's length. A
//! malformed volume gives an [`Error::Typed`] holding a [`StructureError`] that names the
//! structure (superblock, AGF of allocation group 2, inode 131, directory block of inode 128,
//! ...), its byte offset on the volume and what was expected and found.
//!
//! [`XfsVolume::log_is_clean`] says whether the log needs replaying (`log.rs` documents what
//! is checked); the reader never replays it, it reads the file system as it is on disk.

mod bmap;
mod dir;
mod inode;
mod log;
mod sb;

use std::collections::VecDeque;

use crate::error::{Error, ErrorKind, Result, StructureError};
use crate::guest::disk::DiskRead;
use crate::guest::fs::{FileKind, GuestFs};

use bmap::Extent;
use inode::{Format, Inode, S_IFDIR, S_IFLNK, S_IFREG};
pub use log::LogState;
use sb::Superblock;

/// The format name in errors.
const FS: &str = "XFS";
/// AGF magic, "XAGF", and where its CRC32C lies (`offsetof(struct xfs_agf, agf_crc)`).
const AGF_MAGIC: u32 = 0x5841_4746;
const AGF_CRC_OFF: usize = 216;
/// AGI magic, "XAGI", and where its CRC32C lies.
const AGI_MAGIC: u32 = 0x5841_4749;
const AGI_CRC_OFF: usize = 312;
/// AG headers checked at open (the others are not read).
const MAX_AGS_CHECKED: u32 = 4096;
/// The most directory data read for one listing or lookup (2 GiB: some 40 million entries).
const MAX_DIR_BYTES: u64 = 2 << 30;
/// Symbolic links resolved for one path (Linux's `MAXSYMLINKS`).
const MAX_LINKS: u32 = 40;
/// The longest symbolic link target (`XFS_SYMLINK_MAXLEN`).
const SYMLINK_MAXLEN: u64 = 1024;
/// v5 symbolic link block magic, "XSLM", its header size and CRC offset.
const SYMLINK_MAGIC: u32 = 0x5853_4c4d;
const SYMLINK_HDR: usize = 56;
const SYMLINK_CRC_OFF: usize = 12;

/// A big-endian u16 at `at`; 0 past the end (callers check lengths first).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

/// A big-endian u32 at `at`; 0 past the end (callers check lengths first).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// A big-endian u64 at `at`; 0 past the end (callers check lengths first).
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// The bytes are not XFS (the superblock's magic or geometry).
pub(crate) fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::InvalidFormat,
        StructureError::invalid(FS, what, offset, detail),
    )
}

/// A structure of the file system is wrong or inconsistent.
pub(crate) fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::Corrupt,
        StructureError::corrupt(FS, what, offset, detail),
    )
}

pub(crate) fn unsupported(detail: String) -> Error {
    Error::Unsupported(detail)
}

/// The CRC32C XFS stores little-endian at `off` of `b`, computed with that field zeroed.
fn crc_of(b: &[u8], off: usize) -> u32 {
    let c = crc32c::crc32c(&b[..off]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[off + 4..])
}

/// Checks the CRC32C of the structure `b` (at `offset` on the volume) stored at `off`.
pub(crate) fn check_crc(b: &[u8], off: usize, what: &str, offset: u64) -> Result<()> {
    if b.len() < off + 4 {
        return Err(corrupt(what, offset, "too short to hold its CRC"));
    }
    let stored = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
    let computed = crc_of(b, off);
    if stored != computed {
        return Err(corrupt(
            what,
            offset,
            format!("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(())
}

/// Stores the right CRC32C at `off` (tests build structures with it).
#[cfg(test)]
pub(crate) fn set_crc(b: &mut [u8], off: usize) {
    let c = crc_of(b, off);
    b[off..off + 4].copy_from_slice(&c.to_le_bytes());
}

/// How an inode's data fork is stored, as `xfs_db` prints `core.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XfsForkFormat {
    /// A device number (device files, FIFOs, sockets): `dev`.
    Dev,
    /// Inside the inode (short-form directories, short symbolic links): `local`.
    Local,
    /// An extent list inside the inode: `extents`.
    Extents,
    /// An extent B+tree rooted in the inode: `btree`.
    Btree,
}

/// What [`XfsVolume::inode_info`] tells about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XfsInodeInfo {
    /// The inode number.
    pub ino: u64,
    /// What the path names.
    pub kind: FileKind,
    /// How its data fork is stored.
    pub format: XfsForkFormat,
    /// Extents of the data fork, as the inode counts them.
    pub nextents: u64,
}

/// An XFS file system opened read-only.
pub struct XfsVolume {
    disk: Box<dyn DiskRead>,
    sb: Superblock,
}

impl std::fmt::Debug for XfsVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XfsVolume")
            .field("version", &self.sb.version)
            .field("blocksize", &self.sb.blocksize)
            .field("agcount", &self.sb.agcount)
            .finish_non_exhaustive()
    }
}

/// What a path resolved to.
enum Found {
    /// An inode.
    Inode(Inode),
    /// Nothing: missing, through a non-directory, a dangling link or a link loop.
    Missing,
}

impl XfsVolume {
    /// Opens the XFS file system on `disk`: reads and checks the superblock (magic, geometry,
    /// features, CRC on v5), that the volume holds all its blocks, and the AGF and AGI headers
    /// of the first 4096 allocation groups (magic, number, length, CRC on v5). A file system
    /// whose mkfs did not finish (`sb_inprogress`) is refused; a dirty log is not (see
    /// [`XfsVolume::log_is_clean`]).
    pub fn open<D: DiskRead + 'static>(disk: D) -> Result<XfsVolume> {
        let len = disk.len();
        let head_len = len.min(32 * 1024) as usize;
        let mut head = vec![0u8; head_len];
        disk.read_at(&mut head, 0)?;
        let sb = Superblock::parse(&head)?;
        if sb.inprogress {
            return Err(corrupt(
                "superblock",
                126,
                "sb_inprogress is set: mkfs did not finish making this file system",
            ));
        }
        let size = sb.dblocks.checked_mul(u64::from(sb.blocksize));
        if size.is_none_or(|s| s > len) {
            let size = u128::from(sb.dblocks) * u128::from(sb.blocksize);
            return Err(corrupt(
                "superblock",
                8,
                format!(
                    "the file system is {size} bytes ({} blocks of {}) but the volume only {len}: \
                     truncated",
                    sb.dblocks, sb.blocksize
                ),
            ));
        }
        let vol = XfsVolume {
            disk: Box::new(disk),
            sb,
        };
        for agno in 0..vol.sb.agcount.min(MAX_AGS_CHECKED) {
            vol.check_ag(agno)?;
        }
        Ok(vol)
    }

    /// Checks the AGF and AGI of allocation group `agno`.
    fn check_ag(&self, agno: u32) -> Result<()> {
        let sb = &self.sb;
        let start = u64::from(agno) * u64::from(sb.agblocks);
        let want_len = (sb.dblocks - start).min(u64::from(sb.agblocks));
        let base = start << sb.blocklog;
        let sect = u64::from(sb.sectsize);
        for (name, magic, crc_off, at) in [
            ("AGF", AGF_MAGIC, AGF_CRC_OFF, base + sect),
            ("AGI", AGI_MAGIC, AGI_CRC_OFF, base + 2 * sect),
        ] {
            let what = format!("{name} of allocation group {agno}");
            let b = self.read(&what, at, sb.sectsize as usize)?;
            let got = be32(&b, 0);
            if got != magic {
                return Err(corrupt(
                    &what,
                    at,
                    format!("magic is {got:#010x}, expected {magic:#010x}"),
                ));
            }
            if sb.has_crc() {
                check_crc(&b, crc_off, &what, at)?;
            }
            let version = be32(&b, 4);
            let seqno = be32(&b, 8);
            let length = u64::from(be32(&b, 12));
            if version != 1 || seqno != agno || length != want_len {
                return Err(corrupt(
                    &what,
                    at,
                    format!(
                        "version {version}, group {seqno}, {length} blocks: expected version 1, \
                         group {agno}, {want_len} blocks"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`, an error naming `what` when they reach past the volume.
    fn read(&self, what: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        b.try_reserve_exact(len)
            .map_err(|_| corrupt(what, offset, format!("{len} bytes cannot be allocated")))?;
        b.resize(len, 0);
        self.read_into(what, offset, &mut b)?;
        Ok(b)
    }

    fn read_into(&self, what: &str, offset: u64, b: &mut [u8]) -> Result<()> {
        match offset.checked_add(b.len() as u64) {
            Some(end) if end <= self.disk.len() => self.disk.read_at(b, offset),
            _ => Err(corrupt(
                what,
                offset,
                format!(
                    "{} bytes reach past the end of the volume ({} bytes)",
                    b.len(),
                    self.disk.len()
                ),
            )),
        }
    }

    /// The version of the superblock: 4 or 5 (CRCs).
    pub fn version(&self) -> u8 {
        self.sb.version
    }

    /// The file system UUID as `blkid` prints it (lower-case, hyphenated).
    pub fn uuid(&self) -> String {
        let u = &self.sb.uuid;
        let h =
            |r: std::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
        format!(
            "{}-{}-{}-{}-{}",
            h(0..4),
            h(4..6),
            h(6..8),
            h(8..10),
            h(10..16)
        )
    }

    /// The label (up to 12 bytes; empty when there is none).
    pub fn label(&self) -> &str {
        &self.sb.label
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.sb.blocksize
    }

    /// Whether directory entries carry a file type byte (v5 always; v4 with `-n ftype=1`).
    pub fn has_ftype(&self) -> bool {
        self.sb.ftype
    }

    /// Whether the log is clean (nothing to replay): its last record is an unmount record
    /// that ends at the head, so its tail equals its head. Checked: the head (the cycle
    /// numbers of the log's blocks, by binary search), the nearest record header before it,
    /// and that this record is a one-operation unmount record (`XLOG_UNMOUNT_TRANS`) ending
    /// exactly at the head, as the kernel's recovery decides; a log that was never written
    /// (cycle 0) is clean. Not checked: torn writes of in-flight log buffers and record CRCs
    /// (they cannot make a dirty log look clean). An external log device cannot be
    /// checked from the data volume: an [`Error::Unsupported`].
    pub fn log_is_clean(&self) -> Result<bool> {
        Ok(self.log_state()?.clean)
    }

    /// The log's head, last record and cleanliness.
    pub fn log_state(&self) -> Result<LogState> {
        let sb = &self.sb;
        if sb.logstart == 0 {
            return Err(unsupported(
                "the XFS log is on an external device: its state cannot be read from the data \
                 volume"
                    .to_string(),
            ));
        }
        let start = sb.fsb_to_byte(sb.logstart).ok_or_else(|| {
            corrupt(
                "superblock",
                48,
                format!(
                    "the log starts at block {}, outside the file system",
                    sb.logstart
                ),
            )
        })?;
        let len = u64::from(sb.logblocks) << sb.blocklog;
        let last = sb.logstart + u64::from(sb.logblocks).saturating_sub(1);
        if sb.logblocks == 0 || sb.fsb_to_byte(last) != Some(start + len - u64::from(sb.blocksize))
        {
            return Err(corrupt(
                "superblock",
                96,
                format!(
                    "a log of {} blocks from block {} does not lie inside one allocation group",
                    sb.logblocks, sb.logstart
                ),
            ));
        }
        let bbs = len / 512;
        log::state(bbs, start, &mut |bb, n| {
            self.read("log", start + bb * 512, (n * 512) as usize)
        })
    }

    /// Reads and checks inode `ino`.
    fn inode(&self, ino: u64) -> Result<Inode> {
        let what = format!("inode {ino}");
        let offset = self.sb.ino_to_byte(ino).ok_or_else(|| {
            corrupt(
                &what,
                0,
                format!(
                    "the number lies outside the file system's {} allocation groups of {} blocks",
                    self.sb.agcount, self.sb.agblocks
                ),
            )
        })?;
        let b = self.read(&what, offset, self.sb.inodesize as usize)?;
        Inode::parse(&b, ino, offset, self.sb.has_crc())
    }

    /// The extents of a file's data fork, in file order.
    fn extents(&self, ip: &Inode) -> Result<Vec<Extent>> {
        let v5 = self.sb.has_crc();
        let fork_at = ip.fork_offset(v5);
        let what = format!("inode {}", ip.ino);
        match ip.format {
            Format::Extents => {
                let mut out = Vec::new();
                bmap::decode_list(&ip.fork, ip.nextents, fork_at, &what, &mut out)?;
                Ok(out)
            }
            Format::Btree => {
                let max_blocks = ip.nblocks.min(bmap::MAX_EXTENTS);
                let bs = self.sb.blocksize as usize;
                bmap::walk_btree(
                    &ip.fork,
                    fork_at,
                    ip.ino,
                    v5,
                    ip.nextents,
                    max_blocks,
                    &mut |fsb| {
                        let what = format!("extent B+tree block {fsb} of inode {}", ip.ino);
                        let at = self.sb.fsb_to_byte(fsb).ok_or_else(|| {
                            corrupt(&what, fork_at, "the block lies outside the file system")
                        })?;
                        Ok((self.read(&what, at, bs)?, at))
                    },
                )
            }
            Format::Dev | Format::Local => Err(corrupt(
                what,
                ip.offset + 5,
                format!("a {:?} data fork where extents are expected", ip.format),
            )),
        }
    }

    /// The volume byte offset where extent `e` starts, checking that it lies inside one
    /// allocation group of the file system.
    fn extent_start(&self, ip: &Inode, e: &Extent) -> Result<u64> {
        let bad = || {
            corrupt(
                format!("inode {}", ip.ino),
                ip.offset,
                format!(
                    "an extent of {} blocks at block {} lies outside the file system",
                    e.blockcount, e.startblock
                ),
            )
        };
        let start = self.sb.fsb_to_byte(e.startblock).ok_or_else(bad)?;
        let last = e.startblock.checked_add(e.blockcount - 1).ok_or_else(bad)?;
        match self.sb.fsb_to_byte(last) {
            Some(at) if at == start + ((e.blockcount - 1) << self.sb.blocklog) => Ok(start),
            _ => Err(bad()),
        }
    }

    /// Fills `buf` with the file's bytes from byte `pos`: holes and unwritten extents as zeros.
    fn read_data(&self, ip: &Inode, ext: &[Extent], pos: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        let end = pos + buf.len() as u64;
        let bl = self.sb.blocklog;
        // Extents before `pos` are skipped by a binary search on their end.
        // Sorted and disjoint (checked when decoded), so the predicate is monotone.
        let bs = u64::from(self.sb.blocksize);
        let first = ext.partition_point(|e| {
            (e.startoff + e.blockcount)
                .checked_mul(bs)
                .is_some_and(|x| x <= pos)
        });
        for e in &ext[first..] {
            let Some(e_start) = e.startoff.checked_mul(u64::from(self.sb.blocksize)) else {
                break;
            };
            if e_start >= end {
                break;
            }
            let e_end = e_start.saturating_add(e.blockcount << bl);
            let from = e_start.max(pos);
            let to = e_end.min(end);
            if from >= to || e.unwritten {
                continue;
            }
            let phys = self.extent_start(ip, e)? + (from - e_start);
            let what = format!("data of inode {}", ip.ino);
            self.read_into(
                &what,
                phys,
                &mut buf[(from - pos) as usize..(to - pos) as usize],
            )?;
        }
        Ok(())
    }

    /// The volume byte offset of the file's block `lblock`, if mapped.
    fn map_block(&self, ip: &Inode, ext: &[Extent], lblock: u64) -> Result<Option<u64>> {
        let i = ext.partition_point(|e| e.startoff + e.blockcount <= lblock);
        match ext.get(i) {
            Some(e) if e.startoff <= lblock => Ok(Some(
                self.extent_start(ip, e)? + ((lblock - e.startoff) << self.sb.blocklog),
            )),
            _ => Ok(None),
        }
    }

    /// Calls `visit(name, ino)` for every entry of directory `ip` (`.` and `..` skipped)
    /// until it returns `true`.
    fn dir_entries(&self, ip: &Inode, visit: &mut dyn FnMut(&[u8], u64) -> bool) -> Result<()> {
        let v5 = self.sb.has_crc();
        if ip.format == Format::Local {
            let (entries, _parent) =
                dir::parse_shortform(&ip.fork, ip.size, ip.fork_offset(v5), self.sb.ftype, ip.ino)?;
            for (name, ino) in entries {
                if visit(&name, ino) {
                    break;
                }
            }
            return Ok(());
        }
        let ext = self.extents(ip)?;
        let dbs = u64::from(self.sb.dirblksize());
        let fsb_per_dirblk = 1u64 << self.sb.dirblklog;
        let leaf_blk = dir::LEAF_OFFSET / dbs; // first directory block of the leaf section
        let mut buf = vec![0u8; dbs as usize];
        let mut last_done: Option<u64> = None;
        let mut read_bytes = 0u64;
        for e in &ext {
            let first = e.startoff / fsb_per_dirblk;
            let end = (e.startoff + e.blockcount)
                .div_ceil(fsb_per_dirblk)
                .min(leaf_blk);
            for d in first..end {
                if last_done.is_some_and(|l| l >= d) {
                    continue;
                }
                last_done = Some(d);
                read_bytes += dbs;
                if read_bytes > MAX_DIR_BYTES {
                    return Err(unsupported(format!(
                        "the XFS directory of inode {} holds more than {MAX_DIR_BYTES} bytes of \
                         entries, more than this reader reads",
                        ip.ino
                    )));
                }
                let lblock = d * fsb_per_dirblk;
                let Some(at) = self.map_block(ip, &ext, lblock)? else {
                    return Err(corrupt(
                        format!("directory of inode {}", ip.ino),
                        ip.offset,
                        format!("directory block {d} starts in a hole"),
                    ));
                };
                self.read_data(ip, &ext, lblock << self.sb.blocklog, &mut buf)?;
                for (name, ino) in dir::parse_data_block(&buf, at, v5, self.sb.ftype, ip.ino)? {
                    if name == b"." || name == b".." {
                        continue;
                    }
                    if visit(&name, ino) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The target of symbolic link `ip`.
    fn symlink_target(&self, ip: &Inode) -> Result<Vec<u8>> {
        let v5 = self.sb.has_crc();
        let what = format!("symbolic link inode {}", ip.ino);
        if ip.size == 0 || ip.size > SYMLINK_MAXLEN {
            return Err(corrupt(
                &what,
                ip.offset + 56,
                format!(
                    "target of {} bytes, expected 1 to {SYMLINK_MAXLEN}",
                    ip.size
                ),
            ));
        }
        let size = ip.size as usize; // at most 1024: checked above
        match ip.format {
            Format::Local => ip.fork.get(..size).map(<[u8]>::to_vec).ok_or_else(|| {
                corrupt(
                    &what,
                    ip.fork_offset(v5),
                    format!("a {size}-byte target in a fork of {} bytes", ip.fork.len()),
                )
            }),
            Format::Extents | Format::Btree => {
                let ext = self.extents(ip)?;
                if !v5 {
                    let mut out = vec![0u8; size];
                    self.read_data(ip, &ext, 0, &mut out)?;
                    return Ok(out);
                }
                // v5: every block starts with a header naming the target bytes it holds.
                let bs = self.sb.blocksize as usize;
                let mut out = Vec::with_capacity(size);
                let mut lblock = 0u64;
                while out.len() < size {
                    let at = self.map_block(ip, &ext, lblock)?.ok_or_else(|| {
                        corrupt(&what, ip.offset, format!("block {lblock} is a hole"))
                    })?;
                    let b = self.read(&what, at, bs)?;
                    let bwhat = format!("symbolic link block of inode {}", ip.ino);
                    let magic = be32(&b, 0);
                    if magic != SYMLINK_MAGIC {
                        return Err(corrupt(
                            &bwhat,
                            at,
                            format!("magic is {magic:#010x}, expected {SYMLINK_MAGIC:#010x}"),
                        ));
                    }
                    check_crc(&b, SYMLINK_CRC_OFF, &bwhat, at)?;
                    let off = be32(&b, 4) as usize;
                    let n = be32(&b, 8) as usize;
                    let owner = be64(&b, 32);
                    if off != out.len() || n == 0 || n > bs - SYMLINK_HDR || n > size - out.len() {
                        return Err(corrupt(
                            &bwhat,
                            at,
                            format!(
                                "holds {n} bytes at target offset {off}: expected offset {} and \
                                 1 to {} bytes",
                                out.len(),
                                (bs - SYMLINK_HDR).min(size - out.len())
                            ),
                        ));
                    }
                    if owner != ip.ino {
                        return Err(corrupt(
                            &bwhat,
                            at + 32,
                            format!("belongs to inode {owner}, expected {}", ip.ino),
                        ));
                    }
                    out.extend_from_slice(&b[SYMLINK_HDR..SYMLINK_HDR + n]);
                    lblock += 1;
                }
                Ok(out)
            }
            Format::Dev => Err(corrupt(&what, ip.offset + 5, "a device data fork")),
        }
    }

    /// Looks `name` up in directory `dir`.
    fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<u64>> {
        let mut found = None;
        self.dir_entries(dir, &mut |n, ino| {
            if n == name {
                found = Some(ino);
                true
            } else {
                false
            }
        })?;
        Ok(found)
    }

    /// Resolves the absolute `path`, following a final symbolic link when `follow`.
    fn resolve(&self, path: &str, follow: bool) -> Result<Found> {
        let root = self.inode(self.sb.rootino)?;
        if root.file_type() != S_IFDIR {
            return Err(corrupt(
                "root directory inode",
                root.offset,
                format!("mode {:#o} is not a directory", root.mode),
            ));
        }
        let mut stack = vec![root];
        let mut todo: VecDeque<Vec<u8>> = split(path.as_bytes()).collect();
        let mut links = 0u32;
        while let Some(c) = todo.pop_front() {
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            // `stack` is never empty: it starts with the root and `..` keeps it.
            let Some(cur) = stack.last() else {
                return Ok(Found::Missing);
            };
            if cur.file_type() != S_IFDIR {
                return Ok(Found::Missing);
            }
            let Some(ino) = self.lookup(cur, &c)? else {
                return Ok(Found::Missing);
            };
            let child = self.inode(ino)?;
            if child.file_type() == S_IFLNK && (follow || !todo.is_empty()) {
                links += 1;
                if links > MAX_LINKS {
                    return Ok(Found::Missing);
                }
                let target = self.symlink_target(&child)?;
                if target.first() == Some(&b'/') {
                    stack.truncate(1);
                }
                for part in split(&target).collect::<Vec<_>>().into_iter().rev() {
                    todo.push_front(part);
                }
                continue;
            }
            stack.push(child);
        }
        // Not empty: see above.
        Ok(stack.pop().map_or(Found::Missing, Found::Inode))
    }

    fn kind(ip: &Inode) -> FileKind {
        match ip.file_type() {
            S_IFREG => FileKind::File(ip.size),
            S_IFDIR => FileKind::Dir,
            S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }

    fn found(&self, path: &str, follow: bool) -> Result<Option<Inode>> {
        Ok(match self.resolve(path, follow)? {
            Found::Inode(i) => Some(i),
            Found::Missing => None,
        })
    }

    /// The inode number, kind and data fork format of `path` (a final symbolic link not
    /// followed); `None` when it does not exist.
    pub fn inode_info(&self, path: &str) -> Result<Option<XfsInodeInfo>> {
        Ok(self.found(path, false)?.map(|ip| XfsInodeInfo {
            ino: ip.ino,
            kind: Self::kind(&ip),
            format: match ip.format {
                Format::Dev => XfsForkFormat::Dev,
                Format::Local => XfsForkFormat::Local,
                Format::Extents => XfsForkFormat::Extents,
                Format::Btree => XfsForkFormat::Btree,
            },
            nextents: ip.nextents,
        }))
    }
}

/// The components of a path: empty ones and `.` dropped.
fn split(p: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    p.split(|&c| c == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

impl GuestFs for XfsVolume {
    fn fs_name(&self) -> &'static str {
        "xfs"
    }

    fn stat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.found(path, true)?.map(|i| Self::kind(&i)))
    }

    fn lstat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.found(path, false)?.map(|i| Self::kind(&i)))
    }

    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(ip) = self.found(path, true)? else {
            return Ok(None);
        };
        if ip.file_type() != S_IFREG {
            return Err(Error::InvalidArgument(format!(
                "{path} on the guest's xfs file system is not a regular file"
            )));
        }
        let want = ip.size.min(max as u64) as usize;
        if want == 0 {
            return Ok(Some(Vec::new()));
        }
        let ext = self.extents(&ip)?;
        let what = format!("data of inode {}", ip.ino);
        let mut out = Vec::new();
        out.try_reserve_exact(want).map_err(|_| {
            corrupt(
                &what,
                ip.offset,
                format!("{want} bytes cannot be allocated"),
            )
        })?;
        out.resize(want, 0);
        self.read_data(&ip, &ext, 0, &mut out)?;
        Ok(Some(out))
    }

    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        let Some(ip) = self.found(path, true)? else {
            return Ok(None);
        };
        if ip.file_type() != S_IFDIR {
            return Ok(None);
        }
        let mut names = Vec::new();
        if max > 0 {
            self.dir_entries(&ip, &mut |n, _| {
                names.push(String::from_utf8_lossy(n).into_owned());
                names.len() >= max
            })?;
        }
        Ok(Some(names))
    }

    fn read_link(&self, path: &str) -> Result<Option<String>> {
        match self.found(path, false)? {
            Some(ip) if ip.file_type() == S_IFLNK => Ok(Some(
                String::from_utf8_lossy(&self.symlink_target(&ip)?).into_owned(),
            )),
            _ => Ok(None),
        }
    }
}
