//! Reading dynamic, fixed and differencing VDIs.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result, ResultExt};
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, NamedReader, SharedReader,
    check_read_range, map_through_parent, read_through_parent,
};
use crate::reference::{OpenContext, OpenOptions};
use crate::storage::{FileStorage, Storage};

use super::blockmap::{self, Entry};
use super::header::{READ_SIZE, VdiHeader};
use super::{corrupt, parent};

/// Blocks looked at by one `map` call while merging runs.
const MAX_MERGE_BLOCKS: u64 = 65536;

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub(super) fn read_exact(s: &dyn Storage, buf: &mut [u8], offset: u64) -> Result<()> {
    s.read_exact_at(buf, offset).map_err(io(format!(
        "reading {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

/// Reads and validates the pre-header and header at the start of `storage`. Returns the header
/// and the length of the file.
pub(crate) fn read_header(storage: &dyn Storage) -> Result<(VdiHeader, u64)> {
    let file_len = storage
        .len()
        .map_err(io("reading the length of the file".into()))?;
    let mut head = vec![0u8; READ_SIZE];
    let n = storage
        .read_at(&mut head, 0)
        .map_err(io("reading the VDI header".into()))?;
    let header = VdiHeader::parse(&head[..n], 0)?;
    Ok((header, file_len))
}

/// Reads the block map of `h` in one I/O and validates every entry.
pub(crate) fn read_block_map(
    storage: &dyn Storage,
    h: &VdiHeader,
    file_len: u64,
) -> Result<Vec<u32>> {
    let len = h.map_len();
    if h.blocks_offset
        .checked_add(len)
        .is_none_or(|end| end > file_len)
    {
        return Err(corrupt(
            "block map",
            h.blocks_offset,
            format!(
                "{} entries ({len} bytes) run past the end of the file ({file_len:#x} bytes)",
                h.blocks
            ),
        )
        .into());
    }
    // At most MAX_BLOCKS * 4 bytes (header validation), and inside the file (just checked).
    let mut raw = vec![0u8; len as usize];
    read_exact(storage, &mut raw, h.blocks_offset)?;
    Ok(blockmap::parse(&raw, h, file_len)?)
}

/// Opens the differencing VDI at `path` with the parent at `parent` (a path as the caller
/// writes it, absolute or relative to the current folder) instead of searching for it: for a
/// parent kept somewhere the search does not look. The parent still goes through the reference
/// policy of `opts` (`ReferencePolicy::Anywhere` for one outside the image's folder), its UUIDs
/// are checked as [`VdiReader::open_with_parent`] does, and a parent that is itself
/// differencing has its own parent searched for as usual. Errors name `path`, as
/// [`open`](crate::open()) does.
pub fn open_with_parent(
    path: impl AsRef<Path>,
    parent: impl AsRef<Path>,
    opts: &OpenOptions,
) -> Result<Box<dyn ImageReader>> {
    let path = path.as_ref();
    let parent = parent.as_ref();
    let (ctx, canonical) = OpenContext::for_image(path, opts)?;
    let ctx = ctx.with_opener(&super::OPENER);
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| Error::io("opening the parent", e))
        .in_file(parent)?;
    let name = parent.to_str().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: the parent's path is not UTF-8",
            parent.display()
        ))
    })?;
    let storage = FileStorage::open_read_only(&canonical)
        .map_err(|e| Error::io("opening read-only", e))
        .in_file(path)?;
    let r = VdiReader::open_with_parent(Arc::new(storage), Some(&canonical), &ctx, name)
        .in_image(path)?;
    Ok(Box::new(NamedReader::new(Box::new(r), path)))
}

/// Where a stretch of virtual disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Stored in this file at this offset.
    Host(u64),
    /// A zero entry: zeros, whatever the parent holds.
    Zero,
    /// A free entry: the parent's data, or zeros without a parent.
    Free,
}

/// A VDI opened for reading. See the [module documentation](super) for how the parent of a
/// differencing image is found.
pub struct VdiReader {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) header: VdiHeader,
    /// One entry per block of the disk (`cBlocks` of them).
    pub(super) map: Vec<u32>,
    pub(super) file_len: u64,
    pub(super) size: u64,
    pub(super) parent: Option<SharedReader>,
    /// The parent as found, relative to this image's folder.
    pub(super) parent_name: Option<String>,
    pub(super) filename: Option<String>,
}

impl std::fmt::Debug for VdiReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiReader")
            .field("header", &self.header)
            .field("parent", &self.parent_name)
            .finish_non_exhaustive()
    }
}

impl VdiReader {
    /// Opens the image in `storage` (found at `path`). The parent of a differencing image is
    /// looked for beside it (see the [module documentation](super)) under the reference
    /// policy of `ctx`.
    ///
    /// To update the image afterwards ([`VdiReader::into_updater`]), `storage` must be open for
    /// writing.
    pub fn open(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<Self> {
        let mut r = Self::open_alone(storage, path)?;
        if r.header.image_type.has_parent() {
            match parent::locate(ctx, path, &r.header)? {
                parent::Lookup::Found(name) => r.attach_parent(ctx, path, name)?,
                parent::Lookup::Missing(e) => return Err(e),
            }
        }
        Ok(r)
    }

    /// Opens the image in `storage` (found at `path`) with the parent the caller names, as
    /// written inside an image would be: relative to the folder of `path`, under the reference
    /// policy of `ctx`. Its `uuidCreate` must be this image's `uuidLinkage` and its
    /// `uuidModify` this image's `uuidParentModify` (when recorded). An image that is not
    /// differencing has no parent: naming one is an error.
    pub fn open_with_parent(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
        parent: &str,
    ) -> Result<Self> {
        let mut r = Self::open_alone(storage, path)?;
        if !r.header.image_type.has_parent() {
            return Err(Error::InvalidArgument(format!(
                "a parent ({parent}) was named for a {} VDI, which has none",
                r.header.image_type.name()
            )));
        }
        parent::check_named(ctx, path, parent, &r.header)?;
        r.attach_parent(ctx, path, parent.to_string())?;
        Ok(r)
    }

    /// Parses the header and the block map; no parent yet.
    fn open_alone(storage: Arc<dyn Storage>, path: Option<&Path>) -> Result<Self> {
        let (header, file_len) = read_header(storage.as_ref())?;
        let map = read_block_map(storage.as_ref(), &header, file_len)?;
        Ok(VdiReader {
            size: header.virtual_size(),
            storage,
            header,
            map,
            file_len,
            parent: None,
            parent_name: None,
            filename: path.map(|p| p.display().to_string()),
        })
    }

    fn attach_parent(
        &mut self,
        ctx: &OpenContext<'_>,
        path: Option<&Path>,
        name: String,
    ) -> Result<()> {
        let p = ctx.open_reference(path, "parent", &name, Some(Format::Vdi))?;
        self.parent = Some(Arc::from(p));
        self.parent_name = Some(name);
        Ok(())
    }

    /// The parsed header.
    pub fn header(&self) -> &VdiHeader {
        &self.header
    }

    /// The block map entries (`cBlocks` of them, see [`blockmap`]).
    pub fn block_map(&self) -> &[u32] {
        &self.map
    }

    /// The parent, for a differencing image, and its name relative to this image's folder.
    pub fn parent(&self) -> Option<(&str, &dyn ImageReader)> {
        match (&self.parent_name, &self.parent) {
            (Some(n), Some(p)) => Some((n.as_str(), p.as_ref())),
            _ => None,
        }
    }

    /// What is at `pos` (inside the disk) and for how many bytes (at most `max`, within one
    /// block).
    fn locate(&self, pos: u64, max: u64) -> (u64, Loc) {
        let bs = u64::from(self.header.block_size);
        let block = pos / bs;
        let within = pos % bs;
        let len = max.min(bs - within);
        // `block` < cBlocks: pos < size <= cBlocks * cbBlock (header validation).
        let loc = match Entry::from_u32(self.map[block as usize]) {
            Entry::Free => Loc::Free,
            Entry::Zero => Loc::Zero,
            Entry::Block(i) => {
                Loc::Host(self.header.block_offset(i) + u64::from(self.header.block_extra) + within)
            }
        };
        (len, loc)
    }

    /// The length of the run starting with `(first, loc)` at `offset`: following blocks of the
    /// same kind (for stored data, contiguous in the file), at most `max` bytes.
    fn run(&self, offset: u64, first: u64, loc: Loc, max: u64) -> u64 {
        let mut total = first;
        let mut blocks = 0;
        while total < max && blocks < MAX_MERGE_BLOCKS {
            let (n, next) = self.locate(offset + total, max - total);
            let same = match (loc, next) {
                (Loc::Host(a), Loc::Host(b)) => b == a + total,
                (Loc::Zero, Loc::Zero) => true,
                (Loc::Free, Loc::Free) => self.parent.is_none(),
                _ => false,
            };
            if !same {
                break;
            }
            total += n;
            blocks += 1;
        }
        total
    }
}

impl ImageReader for VdiReader {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        if offset >= self.size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Data));
        }
        let max = max_len.min(self.size - offset);
        let (len, loc) = self.locate(offset, max);
        if loc == Loc::Free && self.parent.is_some() {
            return map_through_parent(self.parent.as_deref(), offset, len);
        }
        let total = self.run(offset, len, loc, max);
        Ok(match loc {
            Loc::Free => Extent::new(offset, total, ExtentKind::Unallocated),
            Loc::Zero => Extent::new(offset, total, ExtentKind::Zero),
            Loc::Host(h) => {
                // Holes of the file inside stored blocks read as zeros (a sparse fixed image,
                // or the zeros of a block diskconv wrote).
                let seg = self
                    .storage
                    .segment(h)
                    .map_err(io(format!("looking for holes at {h:#x}")))?;
                let n = if seg.len == 0 {
                    total
                } else {
                    seg.len.min(total)
                };
                if seg.data {
                    let mut e = Extent::new(offset, n, ExtentKind::Data);
                    e.host_offset = Some(h);
                    e
                } else {
                    Extent::new(offset, n, ExtentKind::Zero)
                }
            }
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let left = (buf.len() - done) as u64;
            let (first, loc) = self.locate(pos, left);
            // Stored blocks contiguous in the file are read in one I/O.
            let n = match loc {
                Loc::Host(_) | Loc::Zero => self.run(pos, first, loc, left),
                Loc::Free => first,
            } as usize;
            let dst = &mut buf[done..done + n];
            match loc {
                Loc::Host(h) => read_exact(self.storage.as_ref(), dst, h)?,
                Loc::Zero => dst.fill(0),
                Loc::Free => read_through_parent(self.parent.as_deref(), dst, pos)?,
            }
            done += n;
        }
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let mut info = ImageInfo::new(Format::Vdi, self.size);
        info.filename = self.filename.clone();
        info.subformat = Some(h.image_type.name().to_string());
        info.file_size = Some(self.file_len);
        info.allocated_bytes = self.storage.allocated_bytes().ok().flatten();
        info.cluster_size = Some(u64::from(h.block_size));
        if h.image_type.has_parent() {
            info.backing_file = Some(
                self.parent_name
                    .clone()
                    .unwrap_or_else(|| format!("{{{:x}}}", h.uuid_linkage)),
            );
            info.backing_format = Some("vdi".into());
            info.backing = self.parent.as_ref().map(|p| Box::new(p.info()));
        }
        info.flags
            .push(format!("version {}.{}", h.major(), h.version & 0xffff));
        info.flags.push(format!("uuid {:x}", h.uuid_create));
        info.flags
            .push(format!("modification uuid {:x}", h.uuid_modify));
        if h.image_type.has_parent() {
            info.flags.push(format!("parent uuid {:x}", h.uuid_linkage));
            if !h.uuid_parent_modify.is_nil() {
                info.flags.push(format!(
                    "parent modification uuid {:x}",
                    h.uuid_parent_modify
                ));
            }
        }
        info.flags.push(format!(
            "{} of {} blocks allocated",
            h.blocks_allocated, h.blocks
        ));
        if h.nil_uuids() {
            info.flags
                .push("nil uuid (VirtualBox refuses this image; old qemu wrote such)".into());
        }
        if h.block_extra != 0 {
            info.flags
                .push(format!("{} bytes of extra data per block", h.block_extra));
        }
        if h.disk_size != self.size {
            info.flags.push(format!(
                "disk size {} rounded down to whole sectors",
                h.disk_size
            ));
        }
        if !h.comment.is_empty() {
            info.flags.push(format!("comment {:?}", h.comment));
        }
        info
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::formats::vdi::blockmap::{FREE, ZERO, encode};
    use crate::formats::vdi::header::tests::v1;
    use crate::open::{OpenOptions, open_storage};
    use crate::storage::MemStorage;

    const BS: usize = 4096;

    /// A dynamic image of 4 blocks of 4 KiB plus half a block (disk 18 KiB), with
    /// `extra` bytes in front of each stored block: block 0 stored as data block 1 (0x11),
    /// block 1 free, block 2 zero, block 3 stored as data block 0 (0x33), block 4 (the half
    /// block) stored as data block 2 (0x44). Returns the image and its expected content.
    pub(crate) fn image(extra: u32) -> (Vec<u8>, Vec<u8>) {
        let disk = 4 * BS + BS / 2;
        let mut img = v1(disk as u64, BS as u32, 3);
        // cbBlockExtra
        img[72 + 308..72 + 312].copy_from_slice(&extra.to_le_bytes());
        // Map at 512 (5 entries), data at 1024.
        img.extend_from_slice(&encode(&[1, FREE, ZERO, 0, 2]));
        img.resize(1024, 0);
        for fill in [0x33u8, 0x11, 0x44] {
            img.extend(std::iter::repeat_n(0xee, extra as usize)); // extra data
            img.extend(std::iter::repeat_n(fill, BS));
        }
        let mut want = vec![0u8; disk];
        want[..BS].fill(0x11);
        want[3 * BS..4 * BS].fill(0x33);
        want[4 * BS..].fill(0x44);
        (img, want)
    }

    pub(crate) fn open(bytes: Vec<u8>) -> Result<Box<dyn ImageReader>> {
        let s = Arc::new(MemStorage::from_vec(bytes));
        open_storage(s, &OpenOptions::new().format(Format::Vdi))
    }

    fn open_err(bytes: Vec<u8>) -> Error {
        match open(bytes) {
            Ok(_) => panic!("opened"),
            Err(e) => e,
        }
    }

    #[test]
    fn reads_free_zero_and_stored_blocks() {
        for extra in [0, 512] {
            let (img, want) = image(extra);
            let r = open(img).unwrap();
            assert_eq!(r.virtual_size(), want.len() as u64);
            let mut got = vec![0xa5u8; want.len()];
            r.read_at(&mut got, 0).unwrap();
            assert_eq!(got, want, "extra {extra}");
            let e = r.map(0, u64::MAX).unwrap();
            let d0 = 1024 + u64::from(extra) * 2 + BS as u64;
            assert_eq!(
                (e.len, e.kind, e.host_offset),
                (BS as u64, ExtentKind::Data, Some(d0))
            );
            let e = r.map(BS as u64, u64::MAX).unwrap();
            assert_eq!((e.len, e.kind), (BS as u64, ExtentKind::Unallocated));
            let e = r.map(2 * BS as u64, u64::MAX).unwrap();
            assert_eq!(
                (e.len, e.kind, e.host_offset),
                (BS as u64, ExtentKind::Zero, None)
            );
            let e = r.map(3 * BS as u64 + 10, u64::MAX).unwrap();
            assert_eq!(
                (e.len, e.host_offset),
                (BS as u64 - 10, Some(1024 + u64::from(extra) + 10))
            );
            let e = r.map(4 * BS as u64, u64::MAX).unwrap();
            assert_eq!(e.len, BS as u64 / 2, "the half block ends with the disk");
            assert_eq!(r.map(want.len() as u64, 1).unwrap().len, 0);
            let info = r.info();
            assert_eq!(info.subformat.as_deref(), Some("dynamic"));
            assert_eq!(info.cluster_size, Some(BS as u64));
            assert!(info.flags.iter().any(|f| f == "3 of 5 blocks allocated"));
        }
    }

    #[test]
    fn contiguous_blocks_merge_into_one_extent() {
        // Blocks 0 and 1 stored as data blocks 0 and 1: one extent, one host offset.
        let mut img = v1(2 * BS as u64, BS as u32, 2);
        img.extend_from_slice(&encode(&[0, 1]));
        img.resize(1024 + 2 * BS, 0x5a);
        let r = open(img).unwrap();
        let e = r.map(0, u64::MAX).unwrap();
        assert_eq!((e.len, e.host_offset), (2 * BS as u64, Some(1024)));
    }

    #[test]
    fn hostile_block_maps_are_errors_naming_the_entry() {
        let (img, _) = image(0);
        // Entry 4 past cBlocksAllocated.
        let mut b = img.clone();
        b[512 + 16..512 + 20].copy_from_slice(&7u32.to_le_bytes());
        let e = open_err(b);
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(
            e.chain().contains("entry 4 (at 0x210) names block 7"),
            "{}",
            e.chain()
        );
        // The file cut in the last block.
        let e = open_err(img[..img.len() - 1].to_vec());
        assert!(
            e.chain().contains("run past the end of the file"),
            "{}",
            e.chain()
        );
        // A map that runs past the end of the file.
        let e = open_err(img[..520].to_vec());
        assert!(
            e.chain()
                .starts_with("VDI block map at 0x200: 5 entries (20 bytes) run past the end"),
            "{}",
            e.chain()
        );
    }

    /// Every single-byte change of the metadata either opens and reads, or fails cleanly.
    #[test]
    fn damaged_metadata_never_panics() {
        let (img, _) = image(0);
        for at in 0..1024 {
            for v in [0x00u8, 0xff, 0x01, 0x80, 0x7f] {
                let mut b = img.clone();
                b[at] = v;
                if let Ok(r) = open(b) {
                    let mut buf = vec![0u8; r.virtual_size().min(1 << 20) as usize];
                    let _ = r.read_at(&mut buf, 0);
                    let _ = r.map(0, u64::MAX);
                    let _ = r.info();
                }
            }
        }
        for len in (0..img.len()).step_by(101) {
            if let Ok(r) = open(img[..len].to_vec()) {
                let mut buf = vec![0u8; r.virtual_size().min(1 << 20) as usize];
                let _ = r.read_at(&mut buf, 0);
            }
        }
    }

    #[test]
    fn differencing_without_a_folder_is_denied() {
        let (mut img, _) = image(0);
        img[72 + 4..72 + 8].copy_from_slice(&4u32.to_le_bytes()); // differencing
        img[72 + 352..72 + 368].fill(0x33); // uuidLinkage
        let e = open_err(img);
        assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{}", e.chain());
    }
}
