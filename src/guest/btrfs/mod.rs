//! Reading btrfs file systems, read-only: [`BtrfsVolume::open`] over any [`DiskRead`] (a
//! partition [`Window`](crate::guest::disk::Window), a logical volume), then the files of the
//! default subvolume by absolute path ([`GuestFs`]), the subvolumes by name.
//!
//! [`BtrfsVolume::use_subvolume`] makes paths resolve in another subvolume (a root mounted
//! with `subvol=`).
//!
//! What is read: the primary superblock (64 KiB; CRC-32C, xxHash64 or SHA-256 checksums;
//! BLAKE2b is refused), the chunk tree (SINGLE, DUP and RAID1-style chunks; RAID0/10/5/6 are
//! refused when a read reaches them), the root tree and the subvolume trees (every tree block's
//! checksum, address, UUID and level checked; a DUP or mirrored block whose first copy is bad
//! is read from the next one), inodes, directories (hash lookups, index listings), inline,
//! regular, preallocated and sparse extents, zlib, LZO and zstd compression. A path crossing
//! into another subvolume follows it.
//!
//! What is not: file systems on several devices (refused at open), the fsync log tree (files
//! fsynced after the last commit read as of that commit), data checksums (the checksum tree is
//! not consulted), the superblock mirrors.
//!
//! Files: [`superblock`] the superblock, [`chunk`] logical to physical addresses, [`tree`]
//! tree blocks and key searches, [`inode`] inode and root items, [`dir`] directory entries,
//! [`extent`] file extents and decompression.

pub mod chunk;
pub mod dir;
pub mod extent;
pub mod inode;
pub mod superblock;
pub mod tree;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use crate::error::{Error, ErrorKind, Result, StructureError};
use crate::guest::disk::DiskRead;
use crate::guest::fs::{FileKind, GuestFs};

use chunk::{CHUNK_ITEM_KEY, ChunkMap, parse_chunk};
use dir::{DIR_INDEX_KEY, DIR_ITEM_KEY, DirEntry, name_hash, parse_entries};
use extent::{Compression, EXTENT_DATA_KEY, ExtentData, MAX_UNCOMPRESSED, decompress};
use inode::{
    INODE_ITEM_KEY, INODE_REF_KEY, Inode, InodeKind, ROOT_BACKREF_KEY, ROOT_ITEM_KEY, RootItem,
    parse_inode_ref, parse_root_ref,
};
use superblock::{SUPER_OFFSET, SUPER_SIZE, Superblock};
use tree::{BlockReader, Key, Node, lookup, search};

/// The top-level subvolume (`BTRFS_FS_TREE_OBJECTID`).
pub const FS_TREE: u64 = 5;
/// The root tree's own id (`BTRFS_ROOT_TREE_OBJECTID`).
const ROOT_TREE: u64 = 1;
/// Ids of subvolumes start here (`BTRFS_FIRST_FREE_OBJECTID`).
const FIRST_FREE: u64 = 256;
/// Symbolic links followed while resolving one path, as Linux allows.
const MAX_LINKS: u32 = 40;
/// The longest symbolic link target read (`PATH_MAX`).
const MAX_LINK_TARGET: u64 = 4096;
/// Tree blocks kept in memory.
const CACHE_BLOCKS: usize = 2048;
/// How deep subvolumes may nest (and how many directories a subvolume's path may have).
const MAX_NESTING: usize = 1024;

/// Reads a little-endian u16 at `at`; the caller has checked that `b` holds it.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Reads a little-endian u32 at `at`; the caller has checked that `b` holds it.
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads a little-endian u64 at `at`; the caller has checked that `b` holds it.
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// An invalid btrfs structure (bad magic, checksum, impossible field).
pub(crate) fn invalid(what: &str, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::InvalidFormat,
        StructureError::invalid("btrfs", what, offset, detail),
    )
}

/// A btrfs structure inconsistent with the rest of the file system.
pub(crate) fn corrupt(what: &str, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::Corrupt,
        StructureError::corrupt("btrfs", what, offset, detail),
    )
}

/// An inode of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    tree: u64,
    ino: u64,
}

/// A btrfs file system opened read-only.
pub struct BtrfsVolume {
    disk: Box<dyn DiskRead>,
    sb: Superblock,
    chunks: ChunkMap,
    cache: RefCell<HashMap<u64, Rc<Node>>>,
    roots: RefCell<HashMap<u64, RootItem>>,
    default_subvol: u64,
    /// The subvolume paths resolve in: the default one unless [`BtrfsVolume::use_subvolume`]
    /// chose another.
    root_subvol: u64,
}

impl std::fmt::Debug for BtrfsVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtrfsVolume")
            .field("uuid", &self.uuid())
            .field("label", &self.sb.label)
            .field("default_subvolume", &self.default_subvol)
            .finish_non_exhaustive()
    }
}

impl BlockReader for BtrfsVolume {
    fn node(&self, logical: u64, level: u8) -> Result<Rc<Node>> {
        if let Some(n) = self.cache.borrow().get(&logical) {
            if n.level == level {
                return Ok(n.clone());
            }
        }
        let size = u64::from(self.sb.nodesize);
        let (copies, n) = self.chunks.map(logical, size)?;
        if n != size {
            return Err(Error::Corrupt(format!(
                "btrfs: the tree block at logical {logical:#x} crosses the end of its chunk"
            )));
        }
        let mut first_err = None;
        for phys in copies {
            let r = self
                .read_phys(phys, size as usize, || {
                    format!("the tree block at logical {logical:#x}")
                })
                .and_then(|data| {
                    Node::parse(
                        data,
                        logical,
                        phys,
                        self.sb.csum_type,
                        &self.sb.metadata_uuid,
                        Some(level),
                    )
                });
            match r {
                Ok(node) => {
                    let node = Rc::new(node);
                    let mut c = self.cache.borrow_mut();
                    if c.len() >= CACHE_BLOCKS {
                        c.clear();
                    }
                    c.insert(logical, node.clone());
                    return Ok(node);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err
            .unwrap_or_else(|| Error::Corrupt(format!("btrfs: logical {logical:#x} has no copy"))))
    }
}

impl BtrfsVolume {
    /// Opens the btrfs file system on `disk`: its superblock, chunk tree, root tree and the
    /// default subvolume are read and checked.
    pub fn open<D: DiskRead + 'static>(disk: D) -> Result<BtrfsVolume> {
        let disk: Box<dyn DiskRead> = Box::new(disk);
        if disk.len() < SUPER_OFFSET + SUPER_SIZE as u64 {
            return Err(invalid(
                "superblock",
                SUPER_OFFSET,
                format!("the volume is {} bytes, too small to hold it", disk.len()),
            ));
        }
        let mut buf = vec![0u8; SUPER_SIZE];
        disk.read_at(&mut buf, SUPER_OFFSET)?;
        let sb = Superblock::parse(&buf, SUPER_OFFSET)?;
        let chunks = ChunkMap::from_sys_array(&sb.sys_chunk_array, sb.sys_chunk_array_offset)?;
        let mut v = BtrfsVolume {
            disk,
            sb,
            chunks,
            cache: RefCell::new(HashMap::new()),
            roots: RefCell::new(HashMap::new()),
            default_subvol: FS_TREE,
            root_subvol: FS_TREE,
        };
        // The chunk tree: every chunk, the bootstrap ones again among them.
        let mut found = Vec::new();
        search(
            &v,
            v.sb.chunk_root,
            v.sb.chunk_root_level,
            Key::new(256, CHUNK_ITEM_KEY, 0),
            Key::new(256, CHUNK_ITEM_KEY, u64::MAX),
            &mut |n, i| {
                let key = n.entries[i].0;
                found.push(parse_chunk(n.item(i), key.offset, n.logical)?);
                Ok(true)
            },
        )?;
        for c in found {
            v.chunks.insert(c)?;
        }
        v.cache.borrow_mut().clear();
        v.default_subvol = v.find_default()?;
        // The default subvolume must be readable.
        v.use_subvolume(v.default_subvol)?;
        Ok(v)
    }

    /// The file system UUID, as `blkid` prints it.
    pub fn uuid(&self) -> String {
        let h: String = self.sb.fsid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// The label.
    pub fn label(&self) -> String {
        self.sb.label.clone()
    }

    /// The id of the default subvolume (what mounting without `subvol=` shows): the root
    /// tree's "default" entry, or the top level ([`FS_TREE`], 5) when there is none.
    pub fn default_subvolume(&self) -> u64 {
        self.default_subvol
    }

    /// Makes paths resolve in subvolume `id` (from [`subvolumes`](Self::subvolumes), or
    /// [`FS_TREE`] for the top level) instead of the default one: a root mounted with
    /// `subvol=` (Fedora mounts `root` of a top level that stays the default). An error when
    /// the subvolume or its top directory cannot be read.
    pub fn use_subvolume(&mut self, id: u64) -> Result<()> {
        let r = self.tree_root(id)?;
        let loc = Loc {
            tree: id,
            ino: r.root_dirid,
        };
        match self.inode(loc)? {
            Some(i) if i.kind() == InodeKind::Dir => {
                self.root_subvol = id;
                Ok(())
            }
            _ => Err(Error::Corrupt(format!(
                "btrfs: subvolume {id} has no directory inode {} at its top",
                loc.ino
            ))),
        }
    }

    /// The subvolume paths resolve in (see [`use_subvolume`](Self::use_subvolume)).
    pub fn root_subvolume(&self) -> u64 {
        self.root_subvol
    }

    /// Every subvolume and snapshot (not the top level) with its path from the top level, as
    /// `btrfs subvolume list` prints it (`@/home`), sorted by id.
    pub fn subvolumes(&self) -> Result<Vec<(u64, String)>> {
        let mut refs: HashMap<u64, (u64, inode::NameRef)> = HashMap::new();
        let root = self.tree_root(ROOT_TREE)?;
        search(
            self,
            root.bytenr,
            root.level,
            Key::new(FIRST_FREE, 0, 0),
            Key::new(u64::MAX, u8::MAX, u64::MAX),
            &mut |n, i| {
                let key = n.entries[i].0;
                if key.ty == ROOT_BACKREF_KEY {
                    let what = format!("root back reference of subvolume {}", key.objectid);
                    refs.insert(
                        key.objectid,
                        (key.offset, parse_root_ref(n.item(i), &what, n.logical)?),
                    );
                }
                Ok(true)
            },
        )?;
        let mut out = Vec::new();
        let mut ids: Vec<u64> = refs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let mut parts: Vec<String> = Vec::new();
            let mut cur = id;
            let mut seen = HashSet::new();
            while let Some((parent, r)) = refs.get(&cur) {
                if !seen.insert(cur) || seen.len() > MAX_NESTING {
                    return Err(Error::Corrupt(format!(
                        "btrfs: the parents of subvolume {id} form a loop"
                    )));
                }
                parts.push(String::from_utf8_lossy(&r.name).into_owned());
                let mut dirs = self.dir_path(*parent, r.dirid)?;
                dirs.reverse();
                parts.extend(dirs);
                cur = *parent;
            }
            if cur != FS_TREE {
                // Its parent is being deleted: not reachable from the top level.
                continue;
            }
            parts.reverse();
            out.push((id, parts.join("/")));
        }
        Ok(out)
    }

    /// The names of the directories from tree `tree`'s top directory down to `dirid`.
    fn dir_path(&self, tree: u64, dirid: u64) -> Result<Vec<String>> {
        let top = self.tree_root(tree)?.root_dirid;
        let mut names = Vec::new();
        let mut cur = dirid;
        while cur != top {
            if names.len() > MAX_NESTING {
                return Err(Error::Corrupt(format!(
                    "btrfs: directory {dirid} of tree {tree} is more than {MAX_NESTING} deep (a loop?)"
                )));
            }
            let root = self.tree_root(tree)?;
            let mut found = None;
            search(
                self,
                root.bytenr,
                root.level,
                Key::new(cur, INODE_REF_KEY, 0),
                Key::new(cur, INODE_REF_KEY, u64::MAX),
                &mut |n, i| {
                    let what = format!("inode ref of inode {cur} in tree {tree}");
                    found = Some((
                        n.entries[i].0.offset,
                        parse_inode_ref(n.item(i), &what, n.logical)?,
                    ));
                    Ok(false)
                },
            )?;
            let (parent, r) = found.ok_or_else(|| {
                Error::Corrupt(format!(
                    "btrfs: directory {cur} of tree {tree} has no inode ref (no parent)"
                ))
            })?;
            names.push(String::from_utf8_lossy(&r.name).into_owned());
            cur = parent;
        }
        names.reverse();
        Ok(names)
    }

    fn find_default(&self) -> Result<u64> {
        let dir = self.sb.root_dir_objectid;
        let root = self.tree_root(ROOT_TREE)?;
        let key = Key::new(dir, DIR_ITEM_KEY, name_hash(b"default"));
        let Some(item) = lookup(self, root.bytenr, root.level, key)? else {
            return Ok(FS_TREE);
        };
        let e = parse_entries(&item, "the root tree's \"default\" dir item", root.bytenr)?;
        match e.into_iter().find(|e| e.name == b"default") {
            Some(e) if e.location.ty == ROOT_ITEM_KEY => Ok(e.location.objectid),
            Some(e) => Err(Error::Corrupt(format!(
                "btrfs: the root tree's \"default\" entry points at {:?}, not a subvolume",
                e.location
            ))),
            None => Ok(FS_TREE),
        }
    }

    /// Where tree `id` (the root tree, a subvolume) starts.
    fn tree_root(&self, id: u64) -> Result<RootItem> {
        if id == ROOT_TREE {
            return Ok(RootItem {
                bytenr: self.sb.root,
                level: self.sb.root_level,
                root_dirid: 0,
            });
        }
        if let Some(r) = self.roots.borrow().get(&id) {
            return Ok(*r);
        }
        let mut found = None;
        search(
            self,
            self.sb.root,
            self.sb.root_level,
            Key::new(id, ROOT_ITEM_KEY, 0),
            Key::new(id, ROOT_ITEM_KEY, u64::MAX),
            &mut |n, i| {
                found = Some(RootItem::parse(n.item(i), id, n.logical)?);
                Ok(false)
            },
        )?;
        let r = found.ok_or_else(|| {
            Error::Corrupt(format!(
                "btrfs: tree {id} has no root item in the root tree"
            ))
        })?;
        if r.level >= tree::MAX_LEVEL {
            return Err(Error::Corrupt(format!(
                "btrfs: the root item of tree {id} gives level {}, at most {}",
                r.level,
                tree::MAX_LEVEL - 1
            )));
        }
        self.roots.borrow_mut().insert(id, r);
        Ok(r)
    }

    /// Reads `len` bytes at device offset `phys`, checked against the device's size.
    fn read_phys(&self, phys: u64, len: usize, what: impl Fn() -> String) -> Result<Vec<u8>> {
        let end = phys
            .checked_add(len as u64)
            .filter(|&e| e <= self.disk.len());
        if end.is_none() {
            return Err(Error::Corrupt(format!(
                "btrfs: {} maps to device offset {phys:#x} (+{len}), past the end of the \
                 {} byte volume",
                what(),
                self.disk.len()
            )));
        }
        let mut buf = vec![0u8; len];
        self.disk.read_at(&mut buf, phys)?;
        Ok(buf)
    }

    /// Fills `buf` from logical address `logical` (data: the first copy).
    fn read_logical(&self, mut logical: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let (copies, n) = self.chunks.map(logical, buf.len() as u64)?;
            let n = n as usize; // <= buf.len()
            let phys = copies[0];
            if phys
                .checked_add(n as u64)
                .is_none_or(|e| e > self.disk.len())
            {
                return Err(Error::Corrupt(format!(
                    "btrfs: logical {logical:#x} maps to device offset {phys:#x} (+{n}), past \
                     the end of the {} byte volume",
                    self.disk.len()
                )));
            }
            let (now, rest) = buf.split_at_mut(n);
            self.disk.read_at(now, phys)?;
            buf = rest;
            logical += n as u64;
        }
        Ok(())
    }

    fn inode(&self, loc: Loc) -> Result<Option<Inode>> {
        let root = self.tree_root(loc.tree)?;
        let mut out = None;
        search(
            self,
            root.bytenr,
            root.level,
            Key::new(loc.ino, INODE_ITEM_KEY, 0),
            Key::new(loc.ino, INODE_ITEM_KEY, 0),
            &mut |n, i| {
                out = Some(Inode::parse(n.item(i), loc.ino, n.logical)?);
                Ok(false)
            },
        )?;
        Ok(out)
    }

    /// The entry `name` of directory `dir`.
    fn lookup_name(&self, dir: Loc, name: &[u8]) -> Result<Option<DirEntry>> {
        let root = self.tree_root(dir.tree)?;
        let key = Key::new(dir.ino, DIR_ITEM_KEY, name_hash(name));
        let mut out = None;
        search(self, root.bytenr, root.level, key, key, &mut |n, i| {
            let what = format!("dir item of directory {} in tree {}", dir.ino, dir.tree);
            out = parse_entries(n.item(i), &what, n.logical)?
                .into_iter()
                .find(|e| e.name == name);
            Ok(false)
        })?;
        Ok(out)
    }

    /// Where a directory entry leads: an inode of the same tree or a subvolume's top.
    fn follow_entry(&self, dir: Loc, e: &DirEntry) -> Result<Loc> {
        match e.location.ty {
            INODE_ITEM_KEY => Ok(Loc {
                tree: dir.tree,
                ino: e.location.objectid,
            }),
            ROOT_ITEM_KEY => {
                let r = self.tree_root(e.location.objectid)?;
                Ok(Loc {
                    tree: e.location.objectid,
                    ino: r.root_dirid,
                })
            }
            t => Err(Error::Corrupt(format!(
                "btrfs: entry {:?} of directory {} in tree {} points at key type {t}",
                String::from_utf8_lossy(&e.name),
                dir.ino,
                dir.tree
            ))),
        }
    }

    /// The top directory of the subvolume paths resolve in.
    fn top(&self) -> Result<(Loc, Inode)> {
        let r = self.tree_root(self.root_subvol)?;
        let loc = Loc {
            tree: self.root_subvol,
            ino: r.root_dirid,
        };
        let ino = self.inode(loc)?.ok_or_else(|| {
            Error::Corrupt(format!(
                "btrfs: subvolume {} has no inode for its top directory {}",
                loc.tree, loc.ino
            ))
        })?;
        Ok((loc, ino))
    }

    /// Resolves `path` in the default subvolume; a final symbolic link is followed when
    /// `follow` is set. `None`: it does not exist or does not resolve.
    /// A trailing `/` asks for a directory (a final link is followed), as on Linux.
    fn resolve(&self, path: &str, follow: bool) -> Result<Option<(Loc, Inode)>> {
        let want_dir = path.ends_with('/');
        let follow = follow || want_dir;
        let top = self.top()?;
        let mut stack = vec![top];
        let mut queue: VecDeque<Vec<u8>> = path
            .as_bytes()
            .split(|&c| c == b'/')
            .map(<[u8]>::to_vec)
            .collect();
        let mut links = 0u32;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            // The stack is never empty: the top is never popped.
            let (dir, dir_inode) = *stack.last().unwrap_or(&top);
            if dir_inode.kind() != InodeKind::Dir {
                return Ok(None);
            }
            let Some(e) = self.lookup_name(dir, &c)? else {
                return Ok(None);
            };
            let loc = self.follow_entry(dir, &e)?;
            let inode = self.inode(loc)?.ok_or_else(|| {
                Error::Corrupt(format!(
                    "btrfs: entry {:?} of directory {} in tree {} names inode {}, which does \
                     not exist",
                    String::from_utf8_lossy(&c),
                    dir.ino,
                    dir.tree,
                    loc.ino
                ))
            })?;
            let more = queue.iter().any(|c| !c.is_empty() && c != b".");
            if inode.kind() == InodeKind::Symlink && (more || follow) {
                links += 1;
                if links > MAX_LINKS {
                    return Ok(None);
                }
                let target = self.read_data(loc, &inode, MAX_LINK_TARGET)?;
                if target.is_empty() {
                    return Ok(None);
                }
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                for part in target.split(|&c| c == b'/').rev() {
                    queue.push_front(part.to_vec());
                }
                continue;
            }
            stack.push((loc, inode));
        }
        let last = stack.last().copied();
        if want_dir && last.is_some_and(|(_, i)| i.kind() != InodeKind::Dir) {
            return Ok(None);
        }
        Ok(last)
    }

    /// The first `max` bytes (at most) of inode `loc`'s data.
    fn read_data(&self, loc: Loc, inode: &Inode, max: u64) -> Result<Vec<u8>> {
        let want = inode.size.min(max);
        let mut out = vec![0u8; want as usize];
        if want == 0 {
            return Ok(out);
        }
        let root = self.tree_root(loc.tree)?;
        let mut err: Option<Error> = None;
        search(
            self,
            root.bytenr,
            root.level,
            Key::new(loc.ino, EXTENT_DATA_KEY, 0),
            Key::new(loc.ino, EXTENT_DATA_KEY, want - 1),
            &mut |n, i| {
                let file_off = n.entries[i].0.offset;
                let e = ExtentData::parse(n.item(i), loc.ino, n.logical)?;
                if let Err(e) = self.fill(loc, file_off, &e, &mut out) {
                    err = Some(e);
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Copies the part of extent `e` (at file offset `file_off`) that lies in `out`.
    fn fill(&self, loc: Loc, file_off: u64, e: &ExtentData, out: &mut [u8]) -> Result<()> {
        let what = || {
            format!(
                "extent at file offset {file_off} of inode {} in tree {}",
                loc.ino, loc.tree
            )
        };
        let want = out.len() as u64;
        let sector = self.sb.sectorsize as usize;
        // `file_off < want` (the search's range), so it fits in usize.
        let start = file_off as usize;
        match e {
            ExtentData::Inline {
                data,
                compression,
                ram_bytes,
            } => {
                let decoded;
                let bytes: &[u8] = if *compression == Compression::None {
                    data
                } else {
                    if *ram_bytes > MAX_UNCOMPRESSED {
                        return Err(Error::Corrupt(format!(
                            "btrfs: inline {} decodes to {ram_bytes} bytes, more than {MAX_UNCOMPRESSED}",
                            what()
                        )));
                    }
                    decoded = decompress(*compression, data, *ram_bytes as usize, sector, &what())?;
                    &decoded
                };
                let n = bytes.len().min(out.len() - start);
                out[start..start + n].copy_from_slice(&bytes[..n]);
            }
            ExtentData::Prealloc { .. } => {}
            ExtentData::Regular {
                disk_bytenr,
                disk_num_bytes,
                offset,
                num_bytes,
                ram_bytes,
                compression,
            } => {
                if *disk_bytenr == 0 || *num_bytes == 0 {
                    return Ok(()); // a hole
                }
                let n = (*num_bytes).min(want - file_off) as usize;
                let limit = if *compression == Compression::None {
                    *disk_num_bytes
                } else {
                    *ram_bytes
                };
                if offset.checked_add(*num_bytes).is_none_or(|e| e > limit) {
                    return Err(Error::Corrupt(format!(
                        "btrfs: {} uses {num_bytes} bytes from offset {offset} of an extent of \
                         {limit} bytes",
                        what()
                    )));
                }
                if *compression == Compression::None {
                    let at = disk_bytenr.checked_add(*offset).ok_or_else(|| {
                        Error::Corrupt(format!("btrfs: {} lies past 2^64", what()))
                    })?;
                    self.read_logical(at, &mut out[start..start + n])?;
                } else {
                    if *ram_bytes > MAX_UNCOMPRESSED || *disk_num_bytes > MAX_UNCOMPRESSED {
                        return Err(Error::Corrupt(format!(
                            "btrfs: compressed {} holds {disk_num_bytes} bytes decoding to \
                             {ram_bytes}, more than the {MAX_UNCOMPRESSED} btrfs writes",
                            what()
                        )));
                    }
                    let mut raw = vec![0u8; *disk_num_bytes as usize];
                    self.read_logical(*disk_bytenr, &mut raw)?;
                    let dec = decompress(*compression, &raw, *ram_bytes as usize, sector, &what())?;
                    let o = *offset as usize; // <= ram_bytes, checked above
                    out[start..start + n].copy_from_slice(&dec[o..o + n]);
                }
            }
        }
        Ok(())
    }

    fn kind(inode: &Inode) -> FileKind {
        match inode.kind() {
            InodeKind::File => FileKind::File(inode.size),
            InodeKind::Dir => FileKind::Dir,
            InodeKind::Symlink => FileKind::Symlink,
            InodeKind::Other => FileKind::Other,
        }
    }
}

impl GuestFs for BtrfsVolume {
    fn fs_name(&self) -> &'static str {
        "btrfs"
    }

    fn stat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.resolve(path, true)?.map(|(_, i)| Self::kind(&i)))
    }

    fn lstat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.resolve(path, false)?.map(|(_, i)| Self::kind(&i)))
    }

    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let Some((loc, inode)) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if inode.kind() != InodeKind::File {
            return Err(Error::InvalidArgument(format!(
                "{path} on the guest's btrfs file system is not a regular file"
            )));
        }
        self.read_data(loc, &inode, max as u64).map(Some)
    }

    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        let Some((loc, inode)) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if inode.kind() != InodeKind::Dir {
            return Ok(None);
        }
        let root = self.tree_root(loc.tree)?;
        let mut names = Vec::new();
        if max == 0 {
            return Ok(Some(names));
        }
        search(
            self,
            root.bytenr,
            root.level,
            Key::new(loc.ino, DIR_INDEX_KEY, 0),
            Key::new(loc.ino, DIR_INDEX_KEY, u64::MAX),
            &mut |n, i| {
                let what = format!("dir index of directory {} in tree {}", loc.ino, loc.tree);
                for e in parse_entries(n.item(i), &what, n.logical)? {
                    names.push(String::from_utf8_lossy(&e.name).into_owned());
                }
                Ok(names.len() < max)
            },
        )?;
        names.truncate(max);
        Ok(Some(names))
    }

    fn read_link(&self, path: &str) -> Result<Option<String>> {
        let Some((loc, inode)) = self.resolve(path, false)? else {
            return Ok(None);
        };
        if inode.kind() != InodeKind::Symlink {
            return Ok(None);
        }
        let t = self.read_data(loc, &inode, MAX_LINK_TARGET)?;
        Ok(Some(String::from_utf8_lossy(&t).into_owned()))
    }
}
