//! Writing ext2/ext3/ext4 file systems offline: replace a file's content, create files,
//! symbolic links and directories, remove files, keeping every piece of metadata consistent
//! (bitmaps, group descriptors and their flags, free counts, checksums), so that `e2fsck -fn`
//! finds nothing to fix.
//!
//! [`Ext4Writer::open`] takes any [`DiskIo`] (usually a partition [`Window`] of a [`TxDisk`],
//! so that nothing reaches the image before the caller commits the transaction). It refuses file
//! systems that must not be changed offline (journal needing recovery, errors recorded, orphan
//! inodes in progress) and features it does not write (inline_data, encrypt, casefold,
//! bigalloc, verity, meta_bg, quota, ...).
//!
//! Every operation is planned and staged in memory first (allocations, metadata blocks, data):
//! when it fails (no space, a corrupt structure, a full htree leaf) **nothing** has been written
//! to the disk and the writer is as before. Only when the whole operation has succeeded are its
//! blocks written, data first, then metadata, then the group descriptors and the superblock.
//! Nothing is written to the journal: the file system must be clean before, and is after.
//!
//! The read side of the crate is [`Ext4Volume`](crate::guest::ext4::Ext4Volume) (the
//! `ext4-view` crate); this module parses the structures it changes itself, one file per
//! on-disk structure.
//!
//! [`Window`]: crate::guest::disk::Window
//! [`TxDisk`]: crate::guest::disk::TxDisk

mod alloc;
mod csum;
mod dir;
mod extent;
mod group;
mod inode;
mod superblock;

use std::collections::{BTreeSet, HashMap};

use crate::error::{Error, ErrorKind, StructureError};
use crate::guest::disk::{DiskIo, DiskRead};

use csum::inode_seed;
use dir::{FT_DIR, FT_REG, FT_SYMLINK};
use extent::{Mapping, Run};
use group::GroupDesc;
use inode::{
    FL_ENCRYPT, FL_EXTENTS, FL_HUGE_FILE, FL_INDEX, FL_INLINE_DATA, FL_VERITY, Inode, S_IFDIR,
    S_IFLNK, S_IFMT, S_IFREG,
};
use superblock::{
    COMPAT_DIR_INDEX, INCOMPAT_EXTENTS, INCOMPAT_FILETYPE, INCOMPAT_LARGEDIR, RO_COMPAT_DIR_NLINK,
    RO_COMPAT_LARGE_FILE, SB_OFFSET, SB_SIZE, Superblock,
};

/// The root directory's inode.
const ROOT_INO: u32 = 2;
/// Most links a directory may have before `dir_nlink` counts it as 1.
const LINK_MAX: u16 = 65000;
/// Most symbolic links followed while resolving one path.
const MAX_SYMLINKS: u32 = 40;
/// Largest write issued to the disk at once.
const WRITE_CHUNK: usize = 4 << 20;

/// An error of the ext4 writer: a structure that is invalid or inconsistent, a file system
/// that must not be written, no space, or a path that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtfsError {
    /// A structure ("superblock", "group descriptor 3", "inode 12 extent root", ...) is not what
    /// it should be or is inconsistent (its [`kind`](StructureError::kind) says which); the
    /// offset is the absolute byte offset on the volume (0 when not known).
    #[error(transparent)]
    Structure(StructureError),
    /// The file system must not be written now; `reason` says why and what to do.
    #[error("the ext4 file system cannot be written: {reason}")]
    NotWritable {
        /// Which condition, with the remedy.
        reason: String,
    },
    /// Not enough free blocks or inodes; nothing was written.
    #[error("no space left on the ext4 file system: {detail}")]
    NoSpace {
        /// What was needed and what is free.
        detail: String,
    },
    /// A path does not exist, or leads through something that is not a directory.
    #[error("{0}")]
    NotFound(String),
    /// A path exists already, or is of the wrong type.
    #[error("{0}")]
    Exists(String),
    /// A bad argument (name too long, empty path, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Something this writer does not do (a feature, a full htree leaf, ...).
    #[error("unsupported by the ext4 writer: {0}")]
    Unsupported(String),
}

impl ExtfsError {
    /// The crate-level kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExtfsError::Structure(e) => e.kind,
            ExtfsError::NotWritable { .. } | ExtfsError::Unsupported(_) => ErrorKind::Unsupported,
            ExtfsError::NoSpace { .. } => ErrorKind::Io,
            ExtfsError::NotFound(_) | ExtfsError::Exists(_) | ExtfsError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
        }
    }

    /// The bytes at absolute `offset` are not the structure `what`.
    pub(crate) fn invalid(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        ExtfsError::Structure(StructureError::invalid("ext4", what, offset, detail))
    }

    /// The structure `what` at absolute `offset` is inconsistent with the rest.
    pub(crate) fn corrupt(what: impl Into<String>, offset: u64, detail: impl Into<String>) -> Self {
        ExtfsError::Structure(StructureError::corrupt("ext4", what, offset, detail))
    }
}

impl From<ExtfsError> for Error {
    fn from(e: ExtfsError) -> Self {
        Error::typed(e.kind(), e)
    }
}

/// Wraps a disk error (I/O) as a writer error while keeping its message.
fn io_err(e: Error, what: &str) -> ExtfsError {
    ExtfsError::corrupt(what, 0, format!("cannot be read: {e}"))
}

/// An ext2/3/4 file system opened for writing. See the [module documentation](self).
pub struct Ext4Writer<D> {
    disk: D,
    sb: Superblock,
    gds: Vec<GroupDesc>,
    /// Descriptor table blocks plus reserved GDT blocks (what follows each superblock copy).
    gdt_blocks: u64,
}

impl<D> std::fmt::Debug for Ext4Writer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Writer")
            .field("block_size", &self.sb.block_size)
            .field("blocks", &self.sb.blocks_count)
            .field("free_blocks", &self.sb.free_blocks)
            .field("free_inodes", &self.sb.free_inodes)
            .finish_non_exhaustive()
    }
}

/// The staged state of one operation: working copies of the superblock and descriptors,
/// metadata blocks read or changed, changed inodes and the data to write.
pub(crate) struct Tx<'a, D> {
    disk: &'a D,
    sb: Superblock,
    gds: Vec<GroupDesc>,
    gdt_blocks: u64,
    cache: HashMap<u64, Vec<u8>>,
    dirty: BTreeSet<u64>,
    dirty_groups: BTreeSet<u32>,
    /// Groups whose block / inode bitmap changed (their checksums are recomputed).
    bb_groups: BTreeSet<u32>,
    ib_groups: BTreeSet<u32>,
    inodes: HashMap<u32, Inode>,
    /// Data runs: (first block, byte offset into the operation's data, blocks).
    data: Vec<(u64, usize, u64)>,
    now: (u32, u32),
}

/// What a finished transaction writes.
struct Writes {
    data: Vec<(u64, usize, u64)>,
    blocks: Vec<(u64, Vec<u8>)>,
    sb: Vec<u8>,
    gds: Vec<GroupDesc>,
    sb_state: Superblock,
}

impl<D: DiskRead> Tx<'_, D> {
    fn bs(&self) -> usize {
        self.sb.block_size as usize
    }

    fn gd_offset(&self, g: u32) -> u64 {
        gdt_offset(&self.sb) + u64::from(g) * u64::from(self.sb.desc_size)
    }

    /// Block `n` (through the cache).
    fn read_block(&mut self, n: u64) -> Result<Vec<u8>, ExtfsError> {
        if let Some(b) = self.cache.get(&n) {
            return Ok(b.clone());
        }
        if n >= self.sb.blocks_count {
            return Err(ExtfsError::corrupt(
                "block reference",
                0,
                format!(
                    "block {n} lies past the end ({} blocks)",
                    self.sb.blocks_count
                ),
            ));
        }
        let mut b = vec![0u8; self.bs()];
        self.disk
            .read_at(&mut b, n * u64::from(self.sb.block_size))
            .map_err(|e| io_err(e, &format!("block {n}")))?;
        self.cache.insert(n, b.clone());
        Ok(b)
    }

    fn write_block(&mut self, n: u64, b: Vec<u8>) {
        self.cache.insert(n, b);
        self.dirty.insert(n);
    }

    fn inode_location(&self, ino: u32) -> Result<(u64, usize), ExtfsError> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(ExtfsError::corrupt(
                "inode reference",
                0,
                format!("inode {ino} is outside 1..={}", self.sb.inodes_count),
            ));
        }
        let ipg = self.sb.inodes_per_group;
        let g = (ino - 1) / ipg;
        let idx = u64::from((ino - 1) % ipg);
        let byte = idx * u64::from(self.sb.inode_size);
        let bs = u64::from(self.sb.block_size);
        let blk = self.gds[g as usize].inode_table + byte / bs;
        Ok((blk, (byte % bs) as usize))
    }

    /// Inode `ino`, checking its checksum (metadata_csum).
    fn inode(&mut self, ino: u32) -> Result<Inode, ExtfsError> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        let (blk, off) = self.inode_location(ino)?;
        let b = self.read_block(blk)?;
        let raw = b[off..off + usize::from(self.sb.inode_size)].to_vec();
        let i = Inode { raw };
        if self.sb.metadata_csum() && !i.csum_ok(self.sb.csum_seed, ino) {
            return Err(ExtfsError::invalid(
                format!("inode {ino}"),
                blk * u64::from(self.sb.block_size) + off as u64,
                "inode checksum does not match",
            ));
        }
        if i.extra_isize() > 0 && usize::from(i.extra_isize()) + 128 > i.raw.len() {
            return Err(ExtfsError::invalid(
                format!("inode {ino}"),
                blk * u64::from(self.sb.block_size) + off as u64 + 0x80,
                format!("i_extra_isize {} exceeds the inode size", i.extra_isize()),
            ));
        }
        Ok(i)
    }

    fn put_inode(&mut self, ino: u32, i: Inode) {
        self.inodes.insert(ino, i);
    }

    fn ino_seed(&self, ino: u32, i: &Inode) -> u32 {
        inode_seed(self.sb.csum_seed, ino, i.generation())
    }

    /// The data mapping of inode `ino`.
    fn mapping(&mut self, ino: u32, i: &Inode) -> Result<Mapping, ExtfsError> {
        let flags = i.flags();
        if flags & (FL_INLINE_DATA | FL_ENCRYPT | FL_VERITY) != 0 {
            return Err(ExtfsError::Unsupported(format!(
                "inode {ino} uses inline data, encryption or verity (i_flags {flags:#x})"
            )));
        }
        let iblock = i.i_block().to_vec();
        let count = self.sb.blocks_count;
        let bs = self.bs();
        let mut read = |n: u64| self.read_block(n);
        if flags & FL_EXTENTS != 0 {
            extent::read_extents(&iblock, ino, count, &mut read)
        } else {
            extent::read_blockmap(&iblock, ino, bs, count, &mut read)
        }
    }

    /// Gives inode `ino` the data runs `runs` (contiguous from logical 0 for block maps):
    /// frees the old tree or indirect blocks `old_meta`, allocates and writes new ones,
    /// stores the root in `i_block` and returns the number of metadata blocks.
    fn set_mapping(
        &mut self,
        ino: u32,
        i: &mut Inode,
        runs: &[Run],
        old_meta: &[u64],
    ) -> Result<u64, ExtfsError> {
        for &m in old_meta {
            self.mark_blocks(m, 1, false)?;
        }
        let goal = (ino - 1) / self.sb.inodes_per_group;
        let bs = self.bs();
        if i.flags() & FL_EXTENTS != 0 {
            let ext = extent::split_runs(runs);
            let need = extent::tree_blocks(ext.len(), bs);
            let blocks = self.alloc_list(need, goal)?;
            let seed = self.sb.metadata_csum().then(|| self.ino_seed(ino, i));
            let (root, tree) = extent::build_extents(&ext, &blocks, bs, seed);
            i.i_block_mut().copy_from_slice(&root);
            for (b, bytes) in tree {
                self.write_block(b, bytes);
            }
            Ok(need)
        } else {
            let data: Vec<u64> = runs
                .iter()
                .flat_map(|r| (0..u64::from(r.len)).map(move |k| r.phys + k))
                .collect();
            let need = extent::blockmap_meta(data.len() as u64, bs).ok_or_else(|| {
                ExtfsError::Unsupported(format!(
                    "{} blocks do not fit a block map (inode {ino})",
                    data.len()
                ))
            })?;
            if data.iter().any(|&d| d > u64::from(u32::MAX)) {
                return Err(ExtfsError::Unsupported(format!(
                    "inode {ino} uses a block map, which cannot point past block 2^32"
                )));
            }
            let meta = self.alloc_list(need, goal)?;
            let (root, blocks) = extent::build_blockmap(&data, &meta, bs);
            i.i_block_mut().copy_from_slice(&root);
            for (b, bytes) in blocks {
                self.write_block(b, bytes);
            }
            Ok(need)
        }
    }

    fn alloc_list(&mut self, n: u64, goal: u32) -> Result<Vec<u64>, ExtfsError> {
        Ok(self
            .alloc_blocks(n, goal)?
            .into_iter()
            .flat_map(|(s, l)| s..s + l)
            .collect())
    }

    /// Allocates blocks for `len` bytes of data at `data_off` in the operation's data, records
    /// the data writes and returns the runs (logical from 0).
    fn alloc_data(
        &mut self,
        len: usize,
        data_off: usize,
        goal: u32,
    ) -> Result<Vec<Run>, ExtfsError> {
        let bs = self.bs();
        let n = len.div_ceil(bs) as u64;
        if n > u64::from(u32::MAX) {
            return Err(ExtfsError::InvalidArgument(format!(
                "{len} bytes is too large a file"
            )));
        }
        let mut runs = Vec::new();
        let mut logical = 0u64;
        for (s, l) in self.alloc_blocks(n, goal)? {
            self.data.push((s, data_off + (logical as usize) * bs, l));
            runs.push(Run {
                logical: logical as u32,
                phys: s,
                len: l as u32,
            });
            logical += l;
        }
        Ok(runs)
    }

    /// Looks `name` up in directory `dir`: its inode and entry file type.
    fn lookup(&mut self, dir: u32, name: &[u8]) -> Result<Option<u32>, ExtfsError> {
        if name == b".." || name == b"." {
            let di = self.inode(dir)?;
            let m = self.mapping(dir, &di)?;
            let Some(b0) = m.lookup(0) else {
                return Err(ExtfsError::corrupt(
                    format!("directory inode {dir}"),
                    0,
                    "no block 0",
                ));
            };
            let b = self.read_block(b0)?;
            let off = if name == b"." { 0 } else { 12 };
            return Ok(Some(u32::from_le_bytes([
                b[off],
                b[off + 1],
                b[off + 2],
                b[off + 3],
            ])));
        }
        Ok(self.find_entry(dir, name)?.map(|(_, _, ino)| ino))
    }

    /// Finds `name` in directory `dir`: (logical block, entry index, inode).
    fn find_entry(
        &mut self,
        dir: u32,
        name: &[u8],
    ) -> Result<Option<(u32, usize, u32)>, ExtfsError> {
        let di = self.inode(dir)?;
        let m = self.mapping(dir, &di)?;
        let bs = self.bs();
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let indexed = di.flags() & FL_INDEX != 0 && self.sb.compat & COMPAT_DIR_INDEX != 0;
        let nblocks = di.size().div_ceil(bs as u64);
        for l in 0..nblocks.min(u64::from(u32::MAX)) as u32 {
            let Some(p) = m.lookup(l) else { continue };
            let b = self.read_block(p)?;
            if indexed && (l == 0 || is_dx_node(&b)) {
                continue;
            }
            let ents = dir::entries(
                &b,
                filetype,
                &format!("directory inode {dir} block {l}"),
                p * bs as u64,
            )?;
            if let Some((k, e)) = ents
                .iter()
                .enumerate()
                .find(|(_, e)| e.inode != 0 && e.name == name)
            {
                return Ok(Some((l, k, e.inode)));
            }
        }
        Ok(None)
    }

    /// Resolves the directory holding the last component of `path` (following symbolic links
    /// on the way) and returns it with that last name.
    fn resolve_parent(&mut self, path: &str) -> Result<(u32, Vec<u8>), ExtfsError> {
        let comps: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let Some((last, dirs)) = comps.split_last() else {
            return Err(ExtfsError::InvalidArgument(format!(
                "'{path}' names no file (the root or an empty path)"
            )));
        };
        if *last == ".." {
            return Err(ExtfsError::InvalidArgument(format!(
                "'{path}' ends in '..'"
            )));
        }
        let mut hops = 0;
        let dir = self.walk_dirs(ROOT_INO, dirs, path, &mut hops)?;
        Ok((dir, last.as_bytes().to_vec()))
    }

    fn walk_dirs(
        &mut self,
        start: u32,
        comps: &[&str],
        path: &str,
        hops: &mut u32,
    ) -> Result<u32, ExtfsError> {
        let mut cur = start;
        for c in comps {
            let Some(next) = self.lookup(cur, c.as_bytes())? else {
                return Err(ExtfsError::NotFound(format!(
                    "'{path}': '{c}' does not exist"
                )));
            };
            let ni = self.inode(next)?;
            match ni.kind() {
                S_IFDIR => cur = next,
                S_IFLNK => {
                    *hops += 1;
                    if *hops > MAX_SYMLINKS {
                        return Err(ExtfsError::NotFound(format!(
                            "'{path}': more than {MAX_SYMLINKS} symbolic links"
                        )));
                    }
                    let target = self.link_target(next, &ni)?;
                    let t = String::from_utf8_lossy(&target).into_owned();
                    let from = if t.starts_with('/') { ROOT_INO } else { cur };
                    let parts: Vec<&str> = t
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .collect();
                    cur = self.walk_dirs(from, &parts, path, hops)?;
                }
                _ => {
                    return Err(ExtfsError::NotFound(format!(
                        "'{path}': '{c}' is not a directory"
                    )));
                }
            }
        }
        Ok(cur)
    }

    fn link_target(&mut self, ino: u32, i: &Inode) -> Result<Vec<u8>, ExtfsError> {
        let size = i.size();
        if size < 60 {
            return Ok(i.i_block()[..size as usize].to_vec());
        }
        if size >= u64::from(self.sb.block_size) {
            return Err(ExtfsError::corrupt(
                format!("symbolic link inode {ino}"),
                0,
                format!("target of {size} bytes is longer than a block"),
            ));
        }
        let m = self.mapping(ino, i)?;
        let Some(p) = m.lookup(0) else {
            return Err(ExtfsError::corrupt(
                format!("symbolic link inode {ino}"),
                0,
                "no data block",
            ));
        };
        let b = self.read_block(p)?;
        Ok(b[..size as usize].to_vec())
    }

    /// Adds entry `name` -> `ino` to directory `dir`.
    fn add_entry(&mut self, dir: u32, name: &[u8], ino: u32, ft: u8) -> Result<(), ExtfsError> {
        let mut di = self.inode(dir)?;
        let m = self.mapping(dir, &di)?;
        let bs = self.bs();
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let ftype = filetype.then_some(ft);
        let csum = self.sb.metadata_csum();
        let seed = self.ino_seed(dir, &di);
        let indexed = di.flags() & FL_INDEX != 0 && self.sb.compat & COMPAT_DIR_INDEX != 0;
        let nblocks = (di.size().div_ceil(bs as u64)).min(u64::from(u32::MAX)) as u32;
        let dx = if indexed {
            Some(self.dx_leaf(dir, &m, name)?)
        } else {
            None
        };
        let candidates: Vec<u32> = match &dx {
            Some(d) => vec![d.leaf],
            None => (0..nblocks).collect(),
        };
        for l in candidates.iter().copied() {
            let Some(p) = m.lookup(l) else { continue };
            let mut b = self.read_block(p)?;
            let where_ = format!("directory inode {dir} block {l}");
            let ents = dir::entries(&b, filetype, &where_, p * bs as u64)?;
            if csum && !dir::has_tail(&b) {
                return Err(ExtfsError::Unsupported(format!(
                    "{where_} has no checksum tail although metadata_csum is on"
                )));
            }
            if dir::insert(&mut b, &ents, ino, name, ftype) {
                if csum {
                    dir::set_leaf_csum(&mut b, seed);
                }
                self.write_block(p, b);
                di.touch_mc(self.now.0, self.now.1);
                self.put_inode(dir, di);
                return Ok(());
            }
        }
        if let Some(d) = dx {
            self.dx_split(dir, &mut di, &m, &d, name, ino, ft)?;
            self.put_inode(dir, di);
            return Ok(());
        }
        // A new block at the end of the directory.
        let goal = (dir - 1) / self.sb.inodes_per_group;
        let (p, _) = self.alloc_blocks(1, goal)?[0];
        let mut b = dir::empty_block(bs, csum);
        let ents = dir::entries(&b, filetype, "new directory block", p * bs as u64)?;
        dir::insert(&mut b, &ents, ino, name, ftype);
        if csum {
            dir::set_leaf_csum(&mut b, seed);
        }
        self.write_block(p, b);
        self.append_dir_block(dir, &mut di, &m, p, nblocks)?;
        self.put_inode(dir, di);
        Ok(())
    }

    /// Where `name` belongs in an indexed directory: the leaf (logical block), the dx node
    /// pointing to it and the hash version used.
    fn dx_leaf(&mut self, dir: u32, m: &Mapping, name: &[u8]) -> Result<DxPath, ExtfsError> {
        let bs = self.bs() as u64;
        let Some(p0) = m.lookup(0) else {
            return Err(ExtfsError::corrupt(
                format!("directory inode {dir}"),
                0,
                "no block 0",
            ));
        };
        let b = self.read_block(p0)?;
        let max_levels = if self.sb.incompat & INCOMPAT_LARGEDIR != 0 {
            3
        } else {
            2
        };
        let root = dir::dx_root(&b, p0 * bs, max_levels)?;
        let mut version = root.hash_version;
        if version <= 2 && self.sb.unsigned_hash {
            version += 3;
        }
        let hash = dir::name_hash(name, version, &self.sb.hash_seed).ok_or_else(|| {
            ExtfsError::Unsupported(format!(
                "directory inode {dir} uses hash version {}",
                root.hash_version
            ))
        })?;
        let mut pos = dx_pos(&root.entries, hash);
        let mut blk = root.entries[pos].1;
        let mut node = (p0, 0x20usize);
        for _ in 0..root.levels {
            let Some(p) = m.lookup(blk) else {
                return Err(ExtfsError::corrupt(
                    format!("directory inode {dir} htree"),
                    p0 * bs,
                    format!("index points to unmapped block {blk}"),
                ));
            };
            let nb = self.read_block(p)?;
            let ents =
                dir::dx_entries(&nb, 8, &format!("directory inode {dir} htree node"), p * bs)?;
            pos = dx_pos(&ents, hash);
            blk = ents[pos].1;
            node = (p, 8);
        }
        Ok(DxPath {
            leaf: blk,
            node: node.0,
            count_off: node.1,
            pos,
            version,
        })
    }

    /// Splits the full leaf of `path` in an indexed directory: its entries and the new one,
    /// ordered by hash, go half to the leaf, half to a new block appended to the directory,
    /// whose first hash joins the dx node after the leaf's entry.
    #[allow(clippy::too_many_arguments)]
    fn dx_split(
        &mut self,
        dir: u32,
        di: &mut Inode,
        m: &Mapping,
        path: &DxPath,
        name: &[u8],
        ino: u32,
        ft: u8,
    ) -> Result<(), ExtfsError> {
        let bs = self.bs();
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let csum = self.sb.metadata_csum();
        let seed = self.ino_seed(dir, di);
        let full = |what: &str| {
            ExtfsError::Unsupported(format!(
                "the htree of directory inode {dir} cannot take '{}': {what}",
                String::from_utf8_lossy(name)
            ))
        };
        let Some(lp) = m.lookup(path.leaf) else {
            return Err(ExtfsError::corrupt(
                format!("directory inode {dir} htree"),
                0,
                format!("the index points to unmapped block {}", path.leaf),
            ));
        };
        let b = self.read_block(lp)?;
        let where_ = format!("directory inode {dir} block {}", path.leaf);
        let mut all: Vec<(u32, u32, Vec<u8>, u8)> = Vec::new();
        for e in dir::entries(&b, filetype, &where_, lp * bs as u64)? {
            if e.inode != 0 {
                let h = dir::name_hash(&e.name, path.version, &self.sb.hash_seed).unwrap_or(0);
                all.push((h, e.inode, e.name, e.ftype));
            }
        }
        let h = dir::name_hash(name, path.version, &self.sb.hash_seed).unwrap_or(0);
        all.push((h, ino, name.to_vec(), ft));
        all.sort_by_key(|e| e.0);
        // Split in the middle, never between two equal hashes.
        let mut k = all.len() / 2;
        while k < all.len() && k > 0 && all[k].0 == all[k - 1].0 {
            k += 1;
        }
        if k == all.len() {
            k = all.len() / 2;
            while k > 1 && all[k].0 == all[k - 1].0 {
                k -= 1;
            }
        }
        if k == 0 || k >= all.len() || all[k].0 == all[k - 1].0 {
            return Err(full("its leaf holds names of one hash only"));
        }
        let split_hash = all[k].0;
        let pack = |v: &[(u32, u32, Vec<u8>, u8)]| {
            let ents: Vec<(u32, Vec<u8>, u8)> = v.iter().map(|e| (e.1, e.2.clone(), e.3)).collect();
            dir::pack_leaf(&ents, bs, csum, filetype)
        };
        let (Some(mut lo), Some(mut hi)) = (pack(&all[..k]), pack(&all[k..])) else {
            return Err(full("the halves of the split leaf do not fit a block"));
        };
        let mut node = self.read_block(path.node)?;
        let nblocks = (di.size().div_ceil(bs as u64)).min(u64::from(u32::MAX)) as u32;
        if !dir::dx_insert(&mut node, path.count_off, path.pos, split_hash, nblocks) {
            return Err(full(
                "its index node is full (growing the index is not implemented)",
            ));
        }
        if csum && !dir::set_dx_csum(&mut node, path.count_off, seed) {
            return Err(ExtfsError::corrupt(
                format!("directory inode {dir} htree node"),
                path.node * bs as u64,
                "no room for the dx tail",
            ));
        }
        let goal = (dir - 1) / self.sb.inodes_per_group;
        let (p, _) = self.alloc_blocks(1, goal)?[0];
        if csum {
            dir::set_leaf_csum(&mut lo, seed);
            dir::set_leaf_csum(&mut hi, seed);
        }
        self.write_block(path.node, node);
        self.write_block(lp, lo);
        self.write_block(p, hi);
        self.append_dir_block(dir, di, m, p, nblocks)
    }

    /// Appends physical block `p` as logical block `nblocks` of directory `dir`.
    fn append_dir_block(
        &mut self,
        dir: u32,
        di: &mut Inode,
        m: &Mapping,
        p: u64,
        nblocks: u32,
    ) -> Result<(), ExtfsError> {
        let bs = self.bs() as u64;
        let mut runs = m.runs.clone();
        match runs.last_mut() {
            Some(r) if r.phys + u64::from(r.len) == p && r.logical + r.len == nblocks => r.len += 1,
            _ => runs.push(Run {
                logical: nblocks,
                phys: p,
                len: 1,
            }),
        }
        let meta = self.set_mapping(dir, di, &runs, &m.meta)?;
        di.set_size(u64::from(nblocks + 1) * bs);
        self.set_blocks(di, m.data_blocks() + 1 + meta);
        di.touch_mc(self.now.0, self.now.1);
        Ok(())
    }

    /// Stores `i_blocks` for `n` file-system blocks (plus the xattr block if any).
    fn set_blocks(&self, i: &mut Inode, n: u64) {
        let acl = u64::from(i.file_acl() != 0);
        i.set_blocks_512((n + acl) * (u64::from(self.sb.block_size) / 512));
    }

    /// Frees a file's data and metadata blocks.
    fn free_mapping(&mut self, m: &Mapping) -> Result<(), ExtfsError> {
        for r in &m.runs {
            self.mark_blocks(r.phys, u64::from(r.len), false)?;
        }
        for &b in &m.meta {
            self.mark_blocks(b, 1, false)?;
        }
        Ok(())
    }

    /// Everything to write, checksums recomputed.
    fn finish(mut self) -> Result<Writes, ExtfsError> {
        let csum = self.sb.metadata_csum();
        let inodes: Vec<(u32, Inode)> = self.inodes.drain().collect();
        for (ino, mut i) in inodes {
            if csum {
                i.set_csum(self.sb.csum_seed, ino);
            }
            let (blk, off) = self.inode_location(ino)?;
            let mut b = self.read_block(blk)?;
            b[off..off + i.raw.len()].copy_from_slice(&i.raw);
            self.write_block(blk, b);
        }
        for g in self.bb_groups.clone() {
            let blk = self.gds[g as usize].block_bitmap;
            let bits = self.read_block(blk)?;
            self.gds[g as usize].set_block_bitmap_csum(&self.sb, &bits);
            self.dirty.insert(blk);
        }
        for g in self.ib_groups.clone() {
            let blk = self.gds[g as usize].inode_bitmap;
            let bits = self.read_block(blk)?;
            self.gds[g as usize].set_inode_bitmap_csum(&self.sb, &bits);
            self.dirty.insert(blk);
        }
        // Descriptor table blocks.
        let bs = u64::from(self.sb.block_size);
        let ds = u64::from(self.sb.desc_size);
        for g in self.dirty_groups.clone() {
            let off = self.gd_offset(g);
            let blk = off / bs;
            let mut b = self.read_block(blk)?;
            let o = (off % bs) as usize;
            let bytes = self.gds[g as usize].to_bytes(&self.sb, g);
            b[o..o + ds as usize].copy_from_slice(&bytes);
            self.write_block(blk, b);
        }
        let mut blocks = Vec::new();
        for n in &self.dirty {
            if let Some(b) = self.cache.remove(n) {
                blocks.push((*n, b));
            }
        }
        Ok(Writes {
            data: self.data,
            blocks,
            sb: self.sb.to_bytes(),
            gds: self.gds,
            sb_state: self.sb,
        })
    }
}

/// The way from the dx root to the leaf a name belongs in.
struct DxPath {
    /// The leaf's logical block.
    leaf: u32,
    /// The physical block of the dx node (root or interior) pointing to the leaf.
    node: u64,
    /// Where that node's count and limit are (0x20 in the root, 8 in an interior node).
    count_off: usize,
    /// The index of the leaf's entry in that node.
    pos: usize,
    /// The hash version (unsigned variants included).
    version: u8,
}

/// The index of the last dx entry whose hash is <= `hash`.
fn dx_pos(entries: &[(u32, u32)], hash: u32) -> usize {
    let mut pos = 0;
    for (k, &(h, _)) in entries.iter().enumerate().skip(1) {
        if h <= hash {
            pos = k;
        } else {
            break;
        }
    }
    pos
}

/// Whether a directory block is an htree interior node (a fake entry spanning the block).
fn is_dx_node(b: &[u8]) -> bool {
    let rec = u16::from_le_bytes([b[4], b[5]]) as usize;
    b[0..4] == [0, 0, 0, 0] && (rec == b.len() || (b.len() == 65536 && rec == 65535))
}

/// Byte offset of the group descriptor table.
fn gdt_offset(sb: &Superblock) -> u64 {
    (u64::from(sb.first_data_block) + 1) * u64::from(sb.block_size)
}

fn now() -> (u32, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    // The `_extra` fields: nanoseconds << 2, the low two bits extend the epoch past 2038.
    let epoch = ((secs >> 32) & 3) as u32;
    (secs as u32, (d.subsec_nanos() << 2) | epoch)
}

fn check_name(name: &[u8]) -> Result<(), ExtfsError> {
    if name.is_empty() || name.len() > 255 || name.contains(&0) || name.contains(&b'/') {
        return Err(ExtfsError::InvalidArgument(format!(
            "'{}' is not a valid file name (1 to 255 bytes, no '/' or NUL)",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

impl<D: DiskIo> Ext4Writer<D> {
    /// Opens the ext2/3/4 file system on `disk` for writing. Refused: a journal that needs
    /// recovery ("the ext4 journal needs recovery; mount and unmount it on the source or run
    /// e2fsck"), errors recorded, a file system not cleanly unmounted, orphan inodes in
    /// progress, unknown features and features this writer does not write (named in the
    /// error). A bad superblock or descriptor is an error naming it and its byte offset.
    pub fn open(disk: D) -> Result<Ext4Writer<D>, Error> {
        let len = disk.len();
        if len < SB_OFFSET + SB_SIZE as u64 {
            return Err(ExtfsError::invalid(
                "superblock",
                SB_OFFSET,
                format!("the volume has only {len} bytes"),
            )
            .into());
        }
        let mut raw = vec![0u8; SB_SIZE];
        disk.read_at(&mut raw, SB_OFFSET)?;
        let sb = Superblock::parse(&raw)?;
        let bs = u64::from(sb.block_size);
        let fs_len = sb.blocks_count.checked_mul(bs).filter(|&l| l <= len);
        if fs_len.is_none() {
            return Err(ExtfsError::invalid(
                "superblock s_blocks_count",
                SB_OFFSET + 4,
                format!(
                    "{} blocks of {bs} bytes do not fit the volume of {len} bytes (truncated?)",
                    sb.blocks_count
                ),
            )
            .into());
        }
        let ds = u64::from(sb.desc_size);
        let table = u64::from(sb.group_count) * ds;
        let off = gdt_offset(&sb);
        if off + table > len {
            return Err(ExtfsError::invalid(
                "group descriptor table",
                off,
                format!("{table} bytes do not fit the volume"),
            )
            .into());
        }
        let mut t = vec![0u8; table as usize];
        disk.read_at(&mut t, off)?;
        let mut gds = Vec::with_capacity(sb.group_count as usize);
        for g in 0..sb.group_count {
            let o = (u64::from(g) * ds) as usize;
            gds.push(GroupDesc::parse(
                &sb,
                g,
                &t[o..o + ds as usize],
                off + o as u64,
            )?);
        }
        let reserved = u64::from(u16::from_le_bytes([sb.raw[0xCE], sb.raw[0xCF]]));
        let gdt_blocks = table.div_ceil(bs) + reserved;
        let free: u64 = gds.iter().map(|g| u64::from(g.free_blocks)).sum();
        let free_i: u64 = gds.iter().map(|g| u64::from(g.free_inodes)).sum();
        // The kernel does not keep the superblock counts exact while mounted; e2fsck does.
        // Take the descriptors' sums (what e2fsck would write).
        let mut sb = sb;
        sb.free_blocks = free;
        sb.free_inodes = u32::try_from(free_i)
            .unwrap_or(u32::MAX)
            .min(sb.inodes_count);
        Ok(Ext4Writer {
            disk,
            sb,
            gds,
            gdt_blocks,
        })
    }

    /// The disk, given back.
    pub fn into_inner(self) -> D {
        self.disk
    }

    /// Free blocks and free inodes.
    pub fn free(&self) -> (u64, u32) {
        (self.sb.free_blocks, self.sb.free_inodes)
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }

    fn tx(&self) -> Tx<'_, D> {
        Tx {
            disk: &self.disk,
            sb: self.sb.clone(),
            gds: self.gds.clone(),
            gdt_blocks: self.gdt_blocks,
            cache: HashMap::new(),
            dirty: BTreeSet::new(),
            dirty_groups: BTreeSet::new(),
            bb_groups: BTreeSet::new(),
            ib_groups: BTreeSet::new(),
            inodes: HashMap::new(),
            data: Vec::new(),
            now: now(),
        }
    }

    /// Writes what a finished transaction staged: data, metadata blocks, the superblock.
    fn apply(&mut self, w: Writes, data: &[u8]) -> Result<(), Error> {
        let bs = self.sb.block_size as usize;
        for (blk, off, n) in &w.data {
            let mut start = *off;
            let end = off + (*n as usize) * bs;
            let mut at = blk * bs as u64;
            while start < end {
                let stop = (start + WRITE_CHUNK).min(end);
                if stop <= data.len() {
                    self.disk.write_at(&data[start..stop], at)?;
                } else {
                    let mut buf = vec![0u8; stop - start];
                    if start < data.len() {
                        buf[..data.len() - start].copy_from_slice(&data[start..]);
                    }
                    self.disk.write_at(&buf, at)?;
                }
                at += (stop - start) as u64;
                start = stop;
            }
        }
        for (blk, b) in &w.blocks {
            self.disk.write_at(b, blk * bs as u64)?;
        }
        self.disk.write_at(&w.sb, SB_OFFSET)?;
        self.sb = w.sb_state;
        self.gds = w.gds;
        Ok(())
    }

    /// Replaces the content of the regular file at `path` with `data` (larger or smaller):
    /// frees its old blocks, allocates new ones (one contiguous run in the inode's group when
    /// there is one), writes an extent tree (or a block map for ext2/ext3 files without
    /// extents). Mode, owner and times are kept but mtime and ctime, which become now.
    pub fn replace_file(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        let mut tx = self.tx();
        let (dir, name) = tx.resolve_parent(path)?;
        let Some(ino) = tx.lookup(dir, &name)? else {
            return Err(ExtfsError::NotFound(format!("'{path}' does not exist")).into());
        };
        let mut i = tx.inode(ino)?;
        if i.kind() != S_IFREG {
            return Err(ExtfsError::Exists(format!(
                "'{path}' is not a regular file (mode {:o})",
                i.mode()
            ))
            .into());
        }
        if i.flags() & FL_HUGE_FILE != 0 {
            return Err(ExtfsError::Unsupported(format!(
                "'{path}' (inode {ino}) counts i_blocks in file-system blocks (huge_file)"
            ))
            .into());
        }
        check_size(&tx.sb, data.len() as u64, path)?;
        let old = tx.mapping(ino, &i)?;
        tx.free_mapping(&old)?;
        let goal = (ino - 1) / tx.sb.inodes_per_group;
        let runs = tx.alloc_data(data.len(), 0, goal)?;
        let meta = tx.set_mapping(ino, &mut i, &runs, &[])?;
        i.set_size(data.len() as u64);
        let n: u64 = runs.iter().map(|r| u64::from(r.len)).sum();
        tx.set_blocks(&mut i, n + meta);
        i.touch_mc(tx.now.0, tx.now.1);
        tx.put_inode(ino, i);
        let w = tx.finish()?;
        self.apply(w, data)
    }

    /// Creates the regular file `path` (its directory must exist, the name must not) with
    /// `data`, permission bits `mode` (the file type bits are set here), owner `uid`:`gid`.
    pub fn create_file(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u16,
        uid: u32,
        gid: u32,
    ) -> Result<(), Error> {
        let mut tx = self.tx();
        let (dir, name) = tx.resolve_parent(path)?;
        check_name(&name)?;
        if tx.lookup(dir, &name)?.is_some() {
            return Err(ExtfsError::Exists(format!("'{path}' exists already")).into());
        }
        check_size(&tx.sb, data.len() as u64, path)?;
        let ino = tx.new_inode(dir, S_IFREG | (mode & !S_IFMT), uid, gid, false)?;
        let mut i = tx.inode(ino)?;
        let goal = (ino - 1) / tx.sb.inodes_per_group;
        let runs = tx.alloc_data(data.len(), 0, goal)?;
        let meta = tx.set_mapping(ino, &mut i, &runs, &[])?;
        i.set_size(data.len() as u64);
        let n: u64 = runs.iter().map(|r| u64::from(r.len)).sum();
        tx.set_blocks(&mut i, n + meta);
        tx.put_inode(ino, i);
        tx.add_entry(dir, &name, ino, FT_REG)?;
        let w = tx.finish()?;
        self.apply(w, data)
    }

    /// Creates the symbolic link `path` pointing to `target` (1 to block size - 1 bytes):
    /// a fast symlink (target in the inode) under 60 bytes, else one data block. Mode 0777,
    /// owner root.
    pub fn create_symlink(&mut self, path: &str, target: &str) -> Result<(), Error> {
        let t = target.as_bytes();
        let mut tx = self.tx();
        if t.is_empty() || t.len() >= tx.bs() || t.contains(&0) {
            return Err(ExtfsError::InvalidArgument(format!(
                "symbolic link target of {} bytes: expected 1 to {} bytes without NUL",
                t.len(),
                tx.bs() - 1
            ))
            .into());
        }
        let (dir, name) = tx.resolve_parent(path)?;
        check_name(&name)?;
        if tx.lookup(dir, &name)?.is_some() {
            return Err(ExtfsError::Exists(format!("'{path}' exists already")).into());
        }
        let ino = tx.new_inode(dir, S_IFLNK | 0o777, 0, 0, false)?;
        let mut i = tx.inode(ino)?;
        i.set_size(t.len() as u64);
        if t.len() < 60 {
            i.set_flags(i.flags() & !FL_EXTENTS);
            i.i_block_mut().fill(0);
            i.i_block_mut()[..t.len()].copy_from_slice(t);
            tx.set_blocks(&mut i, 0);
        } else {
            let goal = (ino - 1) / tx.sb.inodes_per_group;
            let runs = tx.alloc_data(t.len(), 0, goal)?;
            let meta = tx.set_mapping(ino, &mut i, &runs, &[])?;
            tx.set_blocks(&mut i, 1 + meta);
        }
        tx.put_inode(ino, i);
        tx.add_entry(dir, &name, ino, FT_SYMLINK)?;
        let w = tx.finish()?;
        self.apply(w, t)
    }

    /// Creates the directory `path` (its parent must exist) with permission bits `mode`,
    /// owner root.
    pub fn mkdir(&mut self, path: &str, mode: u16) -> Result<(), Error> {
        let mut tx = self.tx();
        let (dir, name) = tx.resolve_parent(path)?;
        check_name(&name)?;
        if tx.lookup(dir, &name)?.is_some() {
            return Err(ExtfsError::Exists(format!("'{path}' exists already")).into());
        }
        let mut parent = tx.inode(dir)?;
        let dir_nlink = tx.sb.ro_compat & RO_COMPAT_DIR_NLINK != 0;
        let plinks = parent.links();
        if plinks >= LINK_MAX - 1 && !dir_nlink {
            return Err(ExtfsError::NoSpace {
                detail: format!(
                    "directory inode {dir} has {plinks} links, the most without dir_nlink"
                ),
            }
            .into());
        }
        let ino = tx.new_inode(dir, S_IFDIR | (mode & !S_IFMT), 0, 0, true)?;
        let mut i = tx.inode(ino)?;
        let bs = tx.bs();
        let goal = (ino - 1) / tx.sb.inodes_per_group;
        let (p, _) = tx.alloc_blocks(1, goal)?[0];
        let filetype = tx.sb.incompat & INCOMPAT_FILETYPE != 0;
        let csum = tx.sb.metadata_csum();
        let mut b = dir::new_dir_block(bs, ino, dir, filetype, csum);
        if csum {
            dir::set_leaf_csum(&mut b, tx.ino_seed(ino, &i));
        }
        tx.write_block(p, b);
        let runs = [Run {
            logical: 0,
            phys: p,
            len: 1,
        }];
        let meta = tx.set_mapping(ino, &mut i, &runs, &[])?;
        i.set_size(bs as u64);
        i.set_links(2);
        tx.set_blocks(&mut i, 1 + meta);
        tx.put_inode(ino, i);
        tx.add_entry(dir, &name, ino, FT_DIR)?;
        parent = tx.inode(dir)?;
        let nl = if plinks >= LINK_MAX - 1 || plinks == 1 {
            1
        } else {
            plinks + 1
        };
        parent.set_links(nl);
        tx.put_inode(dir, parent);
        let w = tx.finish()?;
        self.apply(w, &[])
    }

    /// Removes the regular file or symbolic link `path`: its directory entry, one link; at no
    /// links left, its blocks, its extended attribute block (or one reference to a shared
    /// one) and its inode are freed (deletion time set).
    pub fn unlink(&mut self, path: &str) -> Result<(), Error> {
        let mut tx = self.tx();
        let (dir, name) = tx.resolve_parent(path)?;
        let Some((l, k, ino)) = tx.find_entry(dir, &name)? else {
            return Err(ExtfsError::NotFound(format!("'{path}' does not exist")).into());
        };
        let mut i = tx.inode(ino)?;
        let kind = i.kind();
        if kind != S_IFREG && kind != S_IFLNK {
            return Err(ExtfsError::Exists(format!(
                "'{path}' is not a regular file or symbolic link (mode {:o})",
                i.mode()
            ))
            .into());
        }
        let last = i.links() <= 1;
        // The entry.
        let di = tx.inode(dir)?;
        let m = tx.mapping(dir, &di)?;
        let Some(p) = m.lookup(l) else {
            return Err(
                ExtfsError::corrupt(format!("directory inode {dir}"), 0, "unmapped block").into(),
            );
        };
        let mut b = tx.read_block(p)?;
        let filetype = tx.sb.incompat & INCOMPAT_FILETYPE != 0;
        let bs = tx.bs() as u64;
        let ents = dir::entries(
            &b,
            filetype,
            &format!("directory inode {dir} block {l}"),
            p * bs,
        )?;
        dir::remove(&mut b, &ents, k);
        if tx.sb.metadata_csum() {
            if !dir::has_tail(&b) {
                return Err(ExtfsError::Unsupported(format!(
                    "directory inode {dir} block {l} has no checksum tail although metadata_csum is on"
                ))
                .into());
            }
            dir::set_leaf_csum(&mut b, tx.ino_seed(dir, &di));
        }
        tx.write_block(p, b);
        let mut di = di;
        di.touch_mc(tx.now.0, tx.now.1);
        tx.put_inode(dir, di);
        if last {
            let fast_link = kind == S_IFLNK && i.size() < 60;
            if !fast_link {
                let m = tx.mapping(ino, &i)?;
                tx.free_mapping(&m)?;
            }
            let acl = i.file_acl();
            if acl != 0 {
                tx.release_xattr_block(ino, acl)?;
            }
            i.set_links(0);
            i.set_dtime(tx.now.0);
            i.touch_c(tx.now.0, tx.now.1);
            tx.free_inode(ino, false)?;
        } else {
            i.set_links(i.links() - 1);
            i.touch_c(tx.now.0, tx.now.1);
        }
        tx.put_inode(ino, i);
        let w = tx.finish()?;
        self.apply(w, &[])
    }
}

impl<D: DiskRead> Tx<'_, D> {
    /// Drops inode `ino`'s reference to its extended attribute block `blk`: frees it at the
    /// last reference, else decrements `h_refcount` (and recomputes its checksum).
    fn release_xattr_block(&mut self, ino: u32, blk: u64) -> Result<(), ExtfsError> {
        let mut b = self.read_block(blk)?;
        let off = blk * u64::from(self.sb.block_size);
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let refs = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let nblocks = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if magic != 0xEA02_0000 || nblocks != 1 {
            return Err(ExtfsError::invalid(
                format!("extended attribute block of inode {ino}"),
                off,
                format!("expected magic 0xea020000 and 1 block, found {magic:#010x} and {nblocks}"),
            ));
        }
        if refs <= 1 {
            return self.mark_blocks(blk, 1, false);
        }
        b[4..8].copy_from_slice(&(refs - 1).to_le_bytes());
        if self.sb.metadata_csum() {
            b[0x10..0x14].fill(0);
            let c = csum::ext4_crc32c(self.sb.csum_seed, &blk.to_le_bytes());
            let c = csum::ext4_crc32c(c, &b);
            b[0x10..0x14].copy_from_slice(&c.to_le_bytes());
        }
        self.write_block(blk, b);
        Ok(())
    }

    /// Allocates and initialises a new inode near directory `dir`.
    fn new_inode(
        &mut self,
        dir: u32,
        mode: u16,
        uid: u32,
        gid: u32,
        is_dir: bool,
    ) -> Result<u32, ExtfsError> {
        let goal = (dir - 1) / self.sb.inodes_per_group;
        let ino = self.alloc_inode(goal, is_dir)?;
        let (s, ns) = self.now;
        let generation = s ^ ino.rotate_left(16) ^ ns;
        let extra = if self.sb.want_extra_isize != 0 {
            self.sb.want_extra_isize
        } else {
            32
        };
        let mut i = Inode::new(
            usize::from(self.sb.inode_size),
            mode,
            uid,
            gid,
            s,
            ns,
            generation,
            extra,
        );
        if self.sb.incompat & INCOMPAT_EXTENTS != 0 {
            i.set_flags(FL_EXTENTS);
        }
        self.put_inode(ino, i);
        Ok(ino)
    }
}

fn check_size(sb: &Superblock, len: u64, path: &str) -> Result<(), ExtfsError> {
    if len >= 1 << 31 && sb.ro_compat & RO_COMPAT_LARGE_FILE == 0 {
        return Err(ExtfsError::Unsupported(format!(
            "'{path}': {len} bytes need the large_file feature"
        )));
    }
    Ok(())
}
