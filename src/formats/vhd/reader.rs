//! Reading fixed, dynamic and differencing VHDs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::formats::error::FormatError;
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, SharedReader, check_read_range,
    map_through_parent, read_through_parent,
};
use crate::reference::OpenContext;
use crate::storage::Storage;

use super::dynamic::{
    HEADER_SIZE, MAX_BAT_ENTRIES, MAX_LOCATOR_LEN, UNALLOCATED, VhdDynamicHeader, decode_locator,
    platform,
};
use super::footer::{DiskType, FOOTER_SIZE, OLD_FOOTER_SIZE, VhdFooter, fourcc};
use crate::bytes::Guid;

/// Bitmaps kept in memory at most (512 bytes each for 2 MiB blocks).
const BITMAP_CACHE: usize = 4096;
/// Blocks looked at by one `map` call while merging runs.
const MAX_MERGE_BLOCKS: u64 = 65536;

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

fn read_exact(s: &dyn Storage, buf: &mut [u8], offset: u64) -> Result<()> {
    s.read_exact_at(buf, offset).map_err(io(format!(
        "reading {} bytes at offset {offset:#x}",
        buf.len()
    )))
}

/// Where a stretch of virtual disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Stored in this file at this offset.
    Host(u64),
    /// Not stored here: zeros (dynamic) or the parent (differencing).
    Absent,
}

#[derive(Debug)]
pub(super) struct Sparse {
    pub(super) header: VhdDynamicHeader,
    header_offset: u64,
    /// The BAT as reads see it (an updater changes it in place).
    pub(super) bat: Vec<u32>,
    /// Entries that point somewhere impossible, with the reason (reported when used).
    bad: HashMap<u32, String>,
    bitmaps: Mutex<HashMap<u32, Arc<Vec<u8>>>>,
    /// Sector bitmaps changed by an updater and not yet written: reads see these, never a
    /// cached or stored older copy.
    pending: BTreeMap<u32, Arc<Vec<u8>>>,
}

impl Sparse {
    /// The changed sector bitmap of `block`, starting from `stored` (its bytes on disk) the
    /// first time: from now on reads see this copy, until [`Sparse::take_pending`].
    pub(super) fn pending_bitmap(&mut self, block: u32, stored: Vec<u8>) -> &mut Vec<u8> {
        self.bitmaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&block);
        Arc::make_mut(
            self.pending
                .entry(block)
                .or_insert_with(|| Arc::new(stored)),
        )
    }

    /// The changed sector bitmap of `block`, when there is one.
    pub(super) fn pending(&self, block: u32) -> Option<&[u8]> {
        self.pending.get(&block).map(|b| b.as_slice())
    }

    /// How many changed sector bitmaps wait to be written.
    pub(super) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The changed sector bitmaps, handed over to be written (reads use the stored ones
    /// again afterwards).
    pub(super) fn take_pending(&mut self) -> BTreeMap<u32, Arc<Vec<u8>>> {
        std::mem::take(&mut self.pending)
    }
}

/// A VHD opened for reading.
pub struct VhdReader {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) footer: VhdFooter,
    pub(super) size: u64,
    pub(super) file_len: u64,
    /// Bytes of the footer in use at the end of the file (512, 511 for an old one, 0 when
    /// the copy at offset 0 is used).
    pub(super) footer_len: u64,
    pub(super) sparse: Option<Sparse>,
    parent: Option<SharedReader>,
    parent_name: Option<String>,
    flags: Vec<String>,
    filename: Option<String>,
}

impl std::fmt::Debug for VhdReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdReader")
            .field("footer", &self.footer)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Reads the footer of a VHD: the one at the end (512 or 511 bytes), else the copy at
/// offset 0 of a dynamic or differencing disk. Returns the footer, its length at the end of the
/// file (0 when only the copy was usable) and info flags.
pub(crate) fn load_footer(storage: &dyn Storage) -> Result<(VhdFooter, u64, Vec<String>)> {
    let len = storage
        .len()
        .map_err(io("reading the length of the file".into()))?;
    if len < FOOTER_SIZE as u64 {
        return Err(FormatError::invalid(
            "VHD",
            "file",
            0,
            format!("{len} bytes is too short for a 512-byte footer"),
        )
        .into());
    }
    let mut end = [0u8; FOOTER_SIZE];
    read_exact(storage, &mut end, len - FOOTER_SIZE as u64)?;
    let end_err = match VhdFooter::parse(&end, len - FOOTER_SIZE as u64) {
        Ok(f) => return Ok((f, FOOTER_SIZE as u64, Vec::new())),
        Err(e) => e,
    };
    // An old 511-byte footer: the cookie sits one byte later.
    if end[1..9] == super::footer::COOKIE {
        return VhdFooter::parse(&end[1..], len - OLD_FOOTER_SIZE as u64)
            .map(|f| {
                (
                    f,
                    OLD_FOOTER_SIZE as u64,
                    vec!["511-byte footer".to_string()],
                )
            })
            .map_err(Error::from);
    }
    let mut head = [0u8; FOOTER_SIZE];
    read_exact(storage, &mut head, 0)?;
    match VhdFooter::parse(&head, 0) {
        Ok(f) if f.disk_type != DiskType::Fixed => Ok((
            f,
            0,
            vec![format!(
                "footer at the end is damaged, using the copy at offset 0 ({end_err})"
            )],
        )),
        // Only the end footer counts for a fixed disk; report what is wrong with it.
        _ => Err(end_err.into()),
    }
}

/// The file names to try for a parent named `names` (locators and header name, best first):
/// Windows paths get slashes; an absolute path with a drive letter cannot name a file here, so
/// only its last component is tried (beside the child). Duplicates and empty names are dropped.
pub(crate) fn parent_candidates(names: &[String]) -> Vec<String> {
    let mut candidates: Vec<String> = Vec::new();
    for n in names {
        let unix = n.replace('\\', "/");
        let unix = unix.strip_prefix("./").unwrap_or(&unix).to_string();
        let bytes = unix.as_bytes();
        let drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
        let c = if drive {
            unix.rsplit('/').next().unwrap_or("").to_string()
        } else {
            unix
        };
        if !c.is_empty() && !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    candidates
}

fn corrupt(what: &str, offset: u64, detail: String) -> Error {
    FormatError::corrupt("VHD", what, offset, detail).into()
}

impl VhdReader {
    /// Opens the image in `storage` (found at `path`); parents go through `ctx`.
    pub fn open(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<Self> {
        let (footer, footer_len, mut flags) = load_footer(storage.as_ref())?;
        let file_len = storage
            .len()
            .map_err(io("reading the length of the file".into()))?;
        let size = footer.virtual_size();
        let mut reader = VhdReader {
            storage,
            size,
            file_len,
            footer_len,
            sparse: None,
            parent: None,
            parent_name: None,
            flags: Vec::new(),
            filename: path.map(|p| p.display().to_string()),
            footer,
        };
        if reader.footer.saved_state != 0 {
            flags.push("saved_state".into());
        }
        if reader.footer.disk_type == DiskType::Fixed {
            let data_end = file_len - footer_len;
            if footer_len == 0 || data_end < size {
                return Err(corrupt(
                    "fixed disk",
                    0,
                    format!(
                        "the file holds {data_end} bytes of data before its footer but the disk is {size} bytes (truncated?)"
                    ),
                ));
            }
        } else {
            reader.sparse = Some(reader.open_sparse()?);
        }
        if reader.footer.disk_type == DiskType::Differencing {
            reader.open_parent(path, ctx)?;
        }
        reader.flags = flags;
        Ok(reader)
    }

    fn open_sparse(&self) -> Result<Sparse> {
        let hoff = self.footer.data_offset;
        if hoff
            .checked_add(HEADER_SIZE as u64)
            .is_none_or(|e| e > self.file_len)
        {
            return Err(corrupt(
                "footer",
                self.file_len.saturating_sub(512),
                format!(
                    "dynamic header offset {hoff:#x} is past the end of the file ({:#x} bytes)",
                    self.file_len
                ),
            ));
        }
        let mut hb = vec![0u8; HEADER_SIZE];
        read_exact(self.storage.as_ref(), &mut hb, hoff)?;
        let header = VhdDynamicHeader::parse(&hb, hoff)?;
        let bs = header.block_size as u64;
        let needed = self.size.div_ceil(bs);
        if (header.max_table_entries as u64) < needed {
            return Err(corrupt(
                "dynamic header",
                hoff,
                format!(
                    "the BAT has {} entries but a {}-byte disk needs {needed} blocks of {bs} bytes",
                    header.max_table_entries, self.size
                ),
            ));
        }
        if needed > MAX_BAT_ENTRIES {
            return Err(FormatError::Unsupported {
                format: "VHD",
                detail: format!(
                    "a BAT of {needed} entries (more than {MAX_BAT_ENTRIES}); use larger blocks"
                ),
            }
            .into());
        }
        let bat_bytes = needed * 4;
        let toff = header.table_offset;
        if toff
            .checked_add(bat_bytes)
            .is_none_or(|e| e > self.file_len)
        {
            return Err(corrupt(
                "BAT",
                toff,
                format!(
                    "{bat_bytes} bytes of table run past the end of the file ({:#x} bytes)",
                    self.file_len
                ),
            ));
        }
        let mut raw = vec![0u8; bat_bytes as usize];
        read_exact(self.storage.as_ref(), &mut raw, toff)?;
        let bat: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // Validate every entry once; a bad one is reported when the block is used.
        let span = header.bitmap_size() + bs;
        let meta = [
            (0u64, 512u64, "the footer copy"),
            (hoff, HEADER_SIZE as u64, "the dynamic header"),
            (toff, bat_bytes.next_multiple_of(512), "the BAT"),
        ];
        let mut bad = HashMap::new();
        let mut used: Vec<(u64, u32)> = Vec::new();
        for (i, &e) in bat.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let start = e as u64 * 512;
            let end = start + span;
            if end > self.file_len {
                bad.insert(
                    i as u32,
                    format!(
                        "entry {i} points at {start:#x}, a block of {span} bytes there runs past the end of the file ({:#x} bytes)",
                        self.file_len
                    ),
                );
                continue;
            }
            if let Some((_, _, what)) = meta.iter().find(|(o, l, _)| start < o + l && *o < end) {
                bad.insert(
                    i as u32,
                    format!("entry {i} points at {start:#x}, overlapping {what}"),
                );
                continue;
            }
            used.push((start, i as u32));
        }
        used.sort_unstable();
        for w in used.windows(2) {
            if w[1].0 < w[0].0 + span {
                for &(_, i) in w {
                    bad.insert(
                        i,
                        format!(
                            "entries {} and {} point at overlapping blocks ({:#x} and {:#x})",
                            w[0].1, w[1].1, w[0].0, w[1].0
                        ),
                    );
                }
            }
        }
        Ok(Sparse {
            header,
            header_offset: hoff,
            bat,
            bad,
            bitmaps: Mutex::new(HashMap::new()),
            pending: BTreeMap::new(),
        })
    }

    fn open_parent(&mut self, path: Option<&Path>, ctx: &OpenContext<'_>) -> Result<()> {
        // Only sparse disks have a dynamic header (and so a parent).
        let Some(sparse) = &self.sparse else {
            return Ok(());
        };
        let header = sparse.header.clone();
        let hoff = sparse.header_offset;
        // Candidate names, best first: relative locators, absolute ones, the parent's name.
        let mut names: Vec<String> = Vec::new();
        let mut locs = header.locators.clone();
        locs.sort_by_key(|l| match l.code {
            platform::W2RU => 0,
            platform::WI2R => 1,
            platform::MACX => 2,
            platform::W2KU => 3,
            platform::WI2K => 4,
            _ => 5,
        });
        for l in &locs {
            let len = l.data_len.min(MAX_LOCATOR_LEN) as u64;
            if len == 0
                || l.data_offset
                    .checked_add(len)
                    .is_none_or(|e| e > self.file_len)
            {
                continue;
            }
            let mut data = vec![0u8; len as usize];
            read_exact(self.storage.as_ref(), &mut data, l.data_offset)?;
            if let Some(name) = decode_locator(l.code, &data) {
                names.push(name);
            }
        }
        if !header.parent_name.is_empty() {
            names.push(header.parent_name.clone());
        }
        let candidates = parent_candidates(&names);
        if candidates.is_empty() {
            return Err(corrupt(
                "dynamic header",
                hoff,
                "differencing disk without a usable parent locator or parent name".into(),
            ));
        }
        let mut first_err: Option<Error> = None;
        for c in &candidates {
            match self.try_parent(path, ctx, c, &header.parent_unique_id, hoff) {
                Ok(()) => return Ok(()),
                // The policy said no, or the parent is there but wrong: stop here.
                Err(e) if e.kind() != ErrorKind::Io => return Err(e),
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        // `candidates` is not empty and every failed try stored its error or returned.
        let e = first_err.expect("at least one candidate was tried");
        Err(Error::Corrupt(format!(
            "the parent of this differencing VHD was not found (tried {}): {}",
            candidates.join(", "),
            e.chain()
        )))
    }

    fn try_parent(
        &mut self,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
        name: &str,
        expected: &[u8; 16],
        hoff: u64,
    ) -> Result<()> {
        let pstorage = ctx.open_reference_storage(path, "parent", name)?;
        let resolved: PathBuf = ctx.resolve_reference(path, "parent", name)?;
        let (pfooter, _, _) =
            load_footer(pstorage.as_ref()).map_err(|e| e.in_file(resolved.clone()))?;
        if pfooter.unique_id != *expected {
            return Err(corrupt(
                "dynamic header",
                hoff,
                format!(
                    "{} expects a parent with unique id {:x}, but its parent {} has unique id {:x}",
                    path.map_or("this image".into(), |p| p.display().to_string()),
                    Guid::from_be_bytes(*expected),
                    resolved.display(),
                    Guid::from_be_bytes(pfooter.unique_id)
                ),
            ));
        }
        let parent = ctx.open_reference(path, "parent", name, Some(Format::Vhd))?;
        self.parent = Some(Arc::from(parent));
        self.parent_name = Some(name.to_string());
        Ok(())
    }

    /// The footer in use.
    pub fn footer(&self) -> &VhdFooter {
        &self.footer
    }

    fn bitmap(&self, s: &Sparse, block: u32, host: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = s.pending.get(&block) {
            return Ok(b.clone());
        }
        if let Some(b) = s
            .bitmaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&block)
        {
            return Ok(b.clone());
        }
        let mut buf = vec![0u8; s.header.bitmap_size() as usize];
        read_exact(self.storage.as_ref(), &mut buf, host)?;
        let b = Arc::new(buf);
        let mut cache = s.bitmaps.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= BITMAP_CACHE {
            cache.clear();
        }
        cache.insert(block, b.clone());
        Ok(b)
    }

    /// What is at `pos` (inside the disk) and for how many bytes (at most `max`, within one
    /// block).
    fn locate(&self, pos: u64, max: u64) -> Result<(u64, Loc)> {
        let Some(s) = &self.sparse else {
            return Ok((max, Loc::Host(pos)));
        };
        let bs = s.header.block_size as u64;
        let block = pos / bs;
        let in_block = pos % bs;
        let len = max.min(bs - in_block);
        // `block` < bat.len() because pos < size and the BAT covers the size.
        let entry = s.bat[block as usize];
        if entry == UNALLOCATED {
            return Ok((len, Loc::Absent));
        }
        if let Some(why) = s.bad.get(&(block as u32)) {
            return Err(corrupt("BAT", s.header.table_offset, why.clone()));
        }
        let host = entry as u64 * 512;
        let bitmap = self.bitmap(s, block as u32, host)?;
        let bit = |sector: u64| bitmap[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0;
        let first = in_block / 512;
        let set = bit(first);
        let end = in_block + len;
        let mut sector = first + 1;
        while sector * 512 < end && bit(sector) == set {
            sector += 1;
        }
        let run = (sector * 512).min(end) - in_block;
        let loc = if set {
            Loc::Host(host + s.header.bitmap_size() + in_block)
        } else {
            Loc::Absent
        };
        Ok((run, loc))
    }
}

impl ImageReader for VhdReader {
    fn format(&self) -> Format {
        Format::Vhd
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        if offset >= self.size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Data));
        }
        let max = max_len.min(self.size - offset);
        if self.sparse.is_none() {
            // A fixed disk is raw data: report the file's holes as zeros.
            let seg = self
                .storage
                .segment(offset)
                .map_err(io(format!("looking for holes at {offset:#x}")))?;
            let len = if seg.len == 0 { max } else { seg.len.min(max) };
            return Ok(if seg.data {
                let mut e = Extent::new(offset, len, ExtentKind::Data);
                e.host_offset = Some(offset);
                e
            } else {
                Extent::new(offset, len, ExtentKind::Zero)
            });
        }
        let (len, loc) = self.locate(offset, max)?;
        if loc == Loc::Absent && self.parent.is_some() {
            return map_through_parent(self.parent.as_deref(), offset, len);
        }
        // Merge following runs of the same kind (and, for data, contiguous in the file).
        let mut total = len;
        let mut blocks = 0;
        while total < max && blocks < MAX_MERGE_BLOCKS {
            let (n, next) = self.locate(offset + total, max - total)?;
            let same = match (loc, next) {
                (Loc::Host(a), Loc::Host(b)) => b == a + total,
                (Loc::Absent, Loc::Absent) => self.parent.is_none(),
                _ => false,
            };
            if !same {
                break;
            }
            total += n;
            blocks += 1;
        }
        Ok(match loc {
            Loc::Host(h) => {
                let mut e = Extent::new(offset, total, ExtentKind::Data);
                e.host_offset = Some(h);
                e
            }
            Loc::Absent => Extent::new(offset, total, ExtentKind::Unallocated),
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (n, loc) = self.locate(pos, (buf.len() - done) as u64)?;
            let dst = &mut buf[done..done + n as usize];
            match loc {
                Loc::Host(h) => read_exact(self.storage.as_ref(), dst, h)?,
                Loc::Absent => read_through_parent(self.parent.as_deref(), dst, pos)?,
            }
            done += n as usize;
        }
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::new(Format::Vhd, self.size);
        info.filename = self.filename.clone();
        info.subformat = Some(self.footer.disk_type.name().to_string());
        info.file_size = Some(self.file_len);
        info.allocated_bytes = self.storage.allocated_bytes().ok().flatten();
        if let Some(s) = &self.sparse {
            info.cluster_size = Some(s.header.block_size as u64);
        }
        if self.footer.disk_type == DiskType::Differencing {
            info.backing_file = self
                .parent_name
                .clone()
                .or_else(|| self.sparse.as_ref().map(|s| s.header.parent_name.clone()));
            info.backing_format = Some("vpc".into());
            info.backing = self.parent.as_ref().map(|p| Box::new(p.info()));
        }
        info.flags = self.flags.clone();
        info.flags.push(format!(
            "creator {:?} {:#x} on {:?}",
            fourcc(&self.footer.creator_app),
            self.footer.creator_version,
            fourcc(&self.footer.creator_os)
        ));
        info.flags.push(if self.footer.uses_chs() {
            format!(
                "size from CHS {}/{}/{}",
                self.footer.chs.cylinders, self.footer.chs.heads, self.footer.chs.sectors
            )
        } else {
            "size from current_size".into()
        });
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vhd::dynamic::tests::sample as header;
    use crate::formats::vhd::footer::tests::sample as footer;
    use crate::image::ExtentKind;
    use crate::open::{OpenOptions, open_storage};
    use crate::storage::MemStorage;

    const BS: usize = 4096;

    /// A dynamic disk of 3 blocks of 4 KiB: block 0 has sectors 1 and 2 present (0x11),
    /// block 1 is unallocated, block 2 is fully present (0x22).
    fn image() -> (Vec<u8>, Vec<u8>) {
        let size = 3 * BS as u64;
        let f = footer(3, b"win ", size, (1, 4, 17));
        let h = header(1536, 3, BS as u32);
        let mut img = vec![0u8; 2048];
        img[0..512].copy_from_slice(&f); // footer copy
        img[512..1536].copy_from_slice(&h); // header
        // BAT at 1536: block 0 at sector 4, block 1 unallocated, block 2 at sector 13.
        for (i, e) in [4u32, u32::MAX, 13].iter().enumerate() {
            img[1536 + 4 * i..1540 + 4 * i].copy_from_slice(&e.to_be_bytes());
        }
        let mut b0 = vec![0u8; 512 + BS];
        b0[0] = 0b0110_0000;
        b0[512 + 512..512 + 1536].fill(0x11);
        let mut b2 = vec![0x22u8; 512 + BS];
        b2[..512].fill(0);
        b2[0] = 0xff;
        img.extend_from_slice(&b0);
        img.extend_from_slice(&b2);
        img.extend_from_slice(&f);
        let mut want = vec![0u8; 3 * BS];
        want[512..1536].fill(0x11);
        want[2 * BS..].fill(0x22);
        (img, want)
    }

    fn open(bytes: Vec<u8>) -> Result<Box<dyn ImageReader>> {
        let s = Arc::new(MemStorage::from_vec(bytes));
        open_storage(s, &OpenOptions::new().format(Format::Vhd))
    }

    #[test]
    fn reads_a_dynamic_disk() {
        let (img, want) = image();
        let r = open(img).unwrap();
        assert_eq!(r.virtual_size(), 3 * BS as u64);
        let mut got = vec![0xa5u8; 3 * BS];
        r.read_at(&mut got, 0).unwrap();
        assert_eq!(got, want);
        // Extents: 512 absent, 1024 data, then absent up to block 2 (merged across block 1).
        let e = r.map(0, u64::MAX).unwrap();
        assert_eq!((e.len, e.kind), (512, ExtentKind::Unallocated));
        let e = r.map(512, u64::MAX).unwrap();
        assert_eq!(
            (e.len, e.kind, e.host_offset),
            (1024, ExtentKind::Data, Some(2048 + 1024))
        );
        let e = r.map(1536, u64::MAX).unwrap();
        assert_eq!((e.end(), e.kind), (2 * BS as u64, ExtentKind::Unallocated));
        let e = r.map(2 * BS as u64, u64::MAX).unwrap();
        assert_eq!((e.len, e.kind), (BS as u64, ExtentKind::Data));
        assert_eq!(r.map(3 * BS as u64, 10).unwrap().len, 0);
        let info = r.info();
        assert_eq!(info.subformat.as_deref(), Some("dynamic"));
        assert_eq!(info.cluster_size, Some(BS as u64));
    }

    /// Every single-byte change of the metadata either opens and reads, or fails cleanly.
    #[test]
    fn damaged_metadata_never_panics() {
        let (img, _) = image();
        let n = img.len();
        let meta: Vec<usize> = (0..2048 + 512).chain(n - 512..n).collect();
        for &at in &meta {
            for v in [0x00u8, 0xff, 0x01, 0x80] {
                let mut b = img.clone();
                b[at] = v;
                if let Ok(r) = open(b) {
                    let size = r.virtual_size().min(1 << 20) as usize;
                    let mut buf = vec![0u8; size];
                    let _ = r.read_at(&mut buf, 0);
                    let _ = r.map(0, u64::MAX);
                    let _ = r.info();
                }
            }
        }
        // Truncations too.
        for len in (0..n).step_by(97) {
            if let Ok(r) = open(img[..len].to_vec()) {
                let mut buf = vec![0u8; r.virtual_size().min(1 << 20) as usize];
                let _ = r.read_at(&mut buf, 0);
            }
        }
    }

    #[test]
    fn differencing_without_a_folder_is_denied() {
        let (mut img, _) = image();
        let n = img.len();
        // The same disk as type 4 (differencing); its header names "parent.vhd".
        let f = footer(4, b"win ", 3 * BS as u64, (1, 4, 17));
        img[0..512].copy_from_slice(&f);
        img[n - 512..].copy_from_slice(&f);
        let Err(e) = open(img) else {
            panic!("a differencing disk opened from memory found a parent");
        };
        assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{}", e.chain());
    }
}
