//! [`VhdxReader`]: fixed, dynamic and differencing VHDX, with the log replayed in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bat::{self, BatEntry};
use super::header::{self, HEADER_OFFSETS, HEADER_SIZE, VhdxHeader};
use super::log::{self, LogOverlay, Sector};
use super::metadata::{self, VhdxMetadata};
use super::region::{self, REGION_OFFSETS, REGION_TABLE_SIZE, VhdxRegions};
use super::{Guid, MIB, corrupt, invalid, unsupported};
use crate::error::{Error, Result};
use crate::image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, SharedReader, check_read_range,
    map_through_parent, read_through_parent,
};
use crate::reference::OpenContext;
use crate::storage::{FileStorage, Storage};

/// Largest BAT read into memory (covers 64 TiB with 1 MiB blocks and 512-byte sectors).
const MAX_BAT_BYTES: u64 = 1 << 29;

/// The file as Hyper-V would see it after replaying the log: the stored bytes with the
/// replayed sectors laid over them; bytes past the end of the stored file read as zeros.
#[derive(Debug)]
pub(super) struct ReplayedFile {
    pub(super) inner: Arc<dyn Storage>,
    /// Length of the stored file (an updater that appends blocks moves it).
    pub(super) len: u64,
    overlay: LogOverlay,
}

impl ReplayedFile {
    fn size(&self) -> u64 {
        self.len.max(self.overlay.min_file_size)
    }

    fn read(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| {
                corrupt(
                    what,
                    offset,
                    format!(
                        "{:#x} bytes needed, the file ends at {:#x}",
                        buf.len(),
                        self.size()
                    ),
                )
            })?;
        let stored = end.min(self.len).saturating_sub(offset) as usize;
        if stored > 0 {
            self.inner
                .read_exact_at(&mut buf[..stored], offset)
                .map_err(|e| {
                    Error::io(
                        format!("reading {what}: {:#x} bytes at {offset:#x}", stored),
                        e,
                    )
                })?;
        }
        buf[stored..].fill(0);
        let first = offset & !(log::SECTOR as u64 - 1);
        for (&s, sector) in self.overlay.sectors.range(first..end) {
            let lo = s.max(offset);
            let hi = (s + log::SECTOR as u64).min(end);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match sector {
                Sector::Zero => dst.fill(0),
                Sector::Data(d) => dst.copy_from_slice(&d[(lo - s) as usize..(hi - s) as usize]),
            }
        }
        Ok(())
    }
}

/// A VHDX image opened for reading.
pub struct VhdxReader {
    pub(super) file: ReplayedFile,
    path: Option<PathBuf>,
    header: VhdxHeader,
    /// The header slot (0 or 1) `header` was read from.
    header_slot: usize,
    pub(super) regions: VhdxRegions,
    meta: VhdxMetadata,
    /// The BAT as reads see it (an updater changes it in place).
    pub(super) bat: Vec<BatEntry>,
    chunk_ratio: u64,
    parent: Option<SharedReader>,
    parent_name: Option<String>,
}

impl std::fmt::Debug for VhdxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxReader")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("meta", &self.meta)
            .field("bat_entries", &self.bat.len())
            .finish()
    }
}

fn locator_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Reads and chooses the current header of a VHDX file, and the slot it came from.
fn read_header(storage: &dyn Storage, len: u64) -> Result<(VhdxHeader, usize)> {
    if len < (REGION_OFFSETS[1] + REGION_TABLE_SIZE as u64) {
        return Err(invalid(
            "file",
            0,
            format!("truncated: {len:#x} bytes, at least 0x50000 expected"),
        )
        .into());
    }
    let mut first = vec![0u8; 0x50000];
    storage
        .read_exact_at(&mut first, 0)
        .map_err(|e| Error::io("reading the VHDX headers", e))?;
    header::check_file_signature(&first)?;
    let h = |o: u64| VhdxHeader::parse(&first[o as usize..o as usize + HEADER_SIZE], o);
    Ok(header::choose_slot(
        h(HEADER_OFFSETS[0]),
        h(HEADER_OFFSETS[1]),
    )?)
}

/// The log replayed in memory when its GUID is set (an empty overlay otherwise).
fn replay_log(storage: &dyn Storage, len: u64, header: &VhdxHeader) -> Result<LogOverlay> {
    if header.log_guid.is_nil() {
        return Ok(LogOverlay::default());
    }
    let log_end = header.log_offset + u64::from(header.log_length);
    if header.log_length > log::MAX_LOG {
        return Err(unsupported(format!(
            "a log of {:#x} bytes (at most {:#x} are replayed)",
            header.log_length,
            log::MAX_LOG
        ))
        .into());
    }
    if log_end > len {
        return Err(corrupt(
            "log",
            header.log_offset,
            format!(
                "{:#x} bytes, past the end of the file ({len:#x})",
                header.log_length
            ),
        )
        .into());
    }
    let mut bytes = vec![0u8; header.log_length as usize];
    storage
        .read_exact_at(&mut bytes, header.log_offset)
        .map_err(|e| Error::io("reading the VHDX log", e))?;
    Ok(log::replay(&bytes, header.log_offset, &header.log_guid)?)
}

/// The region tables (the first valid copy), read as the log left them.
fn read_regions(file: &ReplayedFile) -> Result<VhdxRegions> {
    let mut first = vec![0u8; 0x50000];
    file.read(&mut first, 0, "region tables")?;
    let rt = |o: u64| region::parse(&first[o as usize..o as usize + REGION_TABLE_SIZE], o);
    Ok(match rt(REGION_OFFSETS[0]) {
        Ok(r) => r,
        Err(e @ crate::formats::error::FormatError::Unsupported { .. }) => return Err(e.into()),
        Err(e) => rt(REGION_OFFSETS[1]).map_err(|_| e)?,
    })
}

/// A named stretch of the file holding metadata: (name, offset, length).
type Area = (&'static str, u64, u64);

/// The log, the metadata region and the BAT region, checked not to overlap each other and
/// (but for the BAT region) to fit in a file of `size` bytes.
fn check_areas(header: &VhdxHeader, regions: &VhdxRegions, size: u64) -> Result<[Area; 3]> {
    let areas = [
        ("log", header.log_offset, u64::from(header.log_length)),
        (
            "metadata region",
            regions.metadata.offset,
            u64::from(regions.metadata.length),
        ),
        (
            "BAT region",
            regions.bat.offset,
            u64::from(regions.bat.length),
        ),
    ];
    for (i, a) in areas.iter().enumerate() {
        if a.2 > 0 && a.1 + a.2 > size && a.0 != "BAT region" {
            return Err(corrupt(
                a.0,
                a.1,
                format!("{:#x} bytes, past the end of the file ({size:#x})", a.2),
            )
            .into());
        }
        for b in &areas[i + 1..] {
            if a.2 > 0 && b.2 > 0 && a.1 < b.1 + b.2 && b.1 < a.1 + a.2 {
                return Err(
                    corrupt(b.0, b.1, format!("overlaps the {} at {:#x}", a.0, a.1)).into(),
                );
            }
        }
    }
    Ok(areas)
}

/// Validates every allocated block of `bat_table`: inside the file, after the metadata
/// structures (`areas`), no two blocks overlapping.
fn check_bat(
    bat_table: &[BatEntry],
    meta: &VhdxMetadata,
    regions: &VhdxRegions,
    areas: &[Area],
    file_size: u64,
) -> Result<()> {
    let chunk_ratio = meta.chunk_ratio();
    let mut used: Vec<(u64, u64, usize)> = Vec::new();
    for (i, e) in bat_table.iter().enumerate() {
        let is_bitmap = (i as u64 + 1) % (chunk_ratio + 1) == 0;
        let state = e.state();
        let present = if is_bitmap {
            match state {
                0 => false,
                6 => meta.has_parent,
                s => {
                    return Err(corrupt(
                        "BAT",
                        regions.bat.offset + 8 * i as u64,
                        format!("sector bitmap entry {i}: state {s}, 0 or 6 expected"),
                    )
                    .into());
                }
            }
        } else {
            match state {
                0..=3 => false,
                6 => true,
                7 if meta.has_parent => true,
                s => {
                    return Err(corrupt(
                        "BAT",
                        regions.bat.offset + 8 * i as u64,
                        format!("entry {i}: payload state {s} is not valid here"),
                    )
                    .into());
                }
            }
        };
        if !present {
            continue;
        }
        let block = i as u64 - i as u64 / (chunk_ratio + 1);
        let blen = if is_bitmap {
            MIB
        } else {
            u64::from(meta.block_size).min(meta.virtual_size - block * u64::from(meta.block_size))
        };
        let off = e.offset();
        if off < MIB || off.checked_add(blen).is_none_or(|end| end > file_size) {
            return Err(corrupt(
                "BAT",
                regions.bat.offset + 8 * i as u64,
                format!(
                    "entry {i} points at {off:#x} (+{blen:#x}), outside the file (1 MiB..{:#x})",
                    file_size
                ),
            )
            .into());
        }
        for a in areas {
            if a.2 > 0 && off < a.1 + a.2 && a.1 < off + blen {
                return Err(corrupt(
                    "BAT",
                    regions.bat.offset + 8 * i as u64,
                    format!("entry {i} at {off:#x} overlaps the {} at {:#x}", a.0, a.1),
                )
                .into());
            }
        }
        used.push((off, blen, i));
    }
    used.sort_unstable();
    for w in used.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(corrupt(
                "BAT",
                regions.bat.offset + 8 * w[1].2 as u64,
                format!(
                    "entry {} at {:#x} overlaps entry {} at {:#x}",
                    w[1].2, w[1].0, w[0].2, w[0].0
                ),
            )
            .into());
        }
    }
    Ok(())
}

impl VhdxReader {
    /// Opens the image in `storage` (found at `path`); parents go through `ctx`.
    pub fn open(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        ctx: &OpenContext<'_>,
    ) -> Result<Self> {
        let mut r = Self::open_layout(storage, path)?;
        if r.meta.has_parent {
            r.open_parent(ctx)?;
        }
        Ok(r)
    }

    /// Opens the image in `storage` without looking for its parent: the headers, the log
    /// (replayed in memory), the regions, the metadata and the BAT, each validated.
    pub(super) fn open_layout(storage: Arc<dyn Storage>, path: Option<&Path>) -> Result<Self> {
        let len = storage
            .len()
            .map_err(|e| Error::io("getting the file size", e))?;
        let (header, header_slot) = read_header(storage.as_ref(), len)?;
        let overlay = replay_log(storage.as_ref(), len, &header)?;
        let file = ReplayedFile {
            inner: storage,
            len,
            overlay,
        };
        let regions = read_regions(&file)?;
        // Regions must not overlap each other, the log or the first MiB, and must fit the file.
        let areas = check_areas(&header, &regions, file.size())?;

        let mut md = vec![0u8; regions.metadata.length as usize];
        file.read(&mut md, regions.metadata.offset, "metadata region")?;
        let meta = metadata::parse(&md, regions.metadata.offset)?;
        let chunk_ratio = meta.chunk_ratio();
        let data_blocks = meta.virtual_size.div_ceil(u64::from(meta.block_size));
        let entries = bat::entry_count(data_blocks, chunk_ratio, meta.has_parent);
        let bat_bytes = entries * 8;
        if bat_bytes > u64::from(regions.bat.length) {
            return Err(corrupt(
                "BAT region",
                regions.bat.offset,
                format!(
                    "{:#x} bytes, {entries} entries ({bat_bytes:#x} bytes) needed for the disk",
                    regions.bat.length
                ),
            )
            .into());
        }
        if bat_bytes > MAX_BAT_BYTES {
            return Err(unsupported(format!("a BAT of {bat_bytes:#x} bytes")).into());
        }
        let mut raw = vec![0u8; bat_bytes as usize];
        file.read(&mut raw, regions.bat.offset, "BAT")?;
        let bat_table = bat::decode(&raw, entries as usize);
        check_bat(&bat_table, &meta, &regions, &areas, file.size())?;

        Ok(VhdxReader {
            file,
            path: path.map(Path::to_path_buf),
            header,
            header_slot,
            regions,
            meta,
            bat: bat_table,
            chunk_ratio,
            parent: None,
            parent_name: None,
        })
    }

    /// Resolves and opens the parent named by the parent locator, checking its linkage.
    fn open_parent(&mut self, ctx: &OpenContext<'_>) -> Result<()> {
        let pairs = self.meta.parent_locator.clone().unwrap_or_default();
        let linkage = locator_value(&pairs, "parent_linkage")
            .and_then(Guid::parse)
            .ok_or_else(|| {
                corrupt(
                    "parent locator",
                    self.regions.metadata.offset,
                    "no valid parent_linkage",
                )
            })?;
        let names: Vec<String> = ["relative_path", "volume_path", "absolute_win32_path"]
            .iter()
            .filter_map(|k| locator_value(&pairs, k))
            .map(|v| v.replace('\\', "/").trim_start_matches("./").to_string())
            .collect();
        if names.is_empty() {
            return Err(corrupt(
                "parent locator",
                self.regions.metadata.offset,
                "no parent path (relative_path, volume_path, absolute_win32_path)",
            )
            .into());
        }
        let mut first_err = None;
        for name in &names {
            let resolved = match ctx.resolve_reference(self.path.as_deref(), "parent", name) {
                Ok(p) => p,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let ps = FileStorage::open_read_only(&resolved)
                .map_err(|e| Error::io("opening the parent read-only", e))?;
            let plen = ps
                .len()
                .map_err(|e| Error::io("getting the parent's size", e))?;
            let (ph, _) = read_header(&ps, plen)?;
            if ph.data_write_guid != linkage {
                return Err(Error::Corrupt(format!(
                    "parent '{name}' has DataWriteGuid {}, but the child's parent_linkage is {} (the parent changed after the child was made)",
                    ph.data_write_guid, linkage
                )));
            }
            let parent =
                ctx.open_reference(self.path.as_deref(), "parent", name, Some(Format::Vhdx))?;
            if parent.virtual_size() != self.meta.virtual_size {
                return Err(Error::Corrupt(format!(
                    "parent '{name}' is {:#x} bytes, the child {:#x}",
                    parent.virtual_size(),
                    self.meta.virtual_size
                )));
            }
            self.parent = Some(Arc::from(parent));
            self.parent_name = Some(name.clone());
            return Ok(());
        }
        Err(first_err.unwrap_or_else(|| Error::Corrupt("no parent found".into())))
    }

    /// The current header.
    pub fn header(&self) -> &VhdxHeader {
        &self.header
    }

    /// The metadata.
    pub fn metadata(&self) -> &VhdxMetadata {
        &self.meta
    }

    /// The header slot (0 or 1) the header in use was read from.
    pub fn header_slot(&self) -> usize {
        self.header_slot
    }

    /// Log entries replayed in memory at open.
    pub fn replayed_log_entries(&self) -> usize {
        self.file.overlay.entries
    }

    fn entry(&self, block: u64) -> BatEntry {
        self.bat[bat::payload_index(block, self.chunk_ratio) as usize]
    }

    /// Presence bits of sectors `first..last` of block `block` (state 7 blocks), read from
    /// the sector bitmap block in one I/O: `(bytes, bit index of sector `first`)`.
    fn sector_bits(&self, block: u64, first: u64, last: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let bm = self.bat[bat::bitmap_index(block, self.chunk_ratio) as usize];
        if bm.state() != bat::SB_PRESENT {
            return Ok(None);
        }
        let spb = u64::from(self.meta.block_size / self.meta.logical_sector_size);
        let bit0 = (block % self.chunk_ratio) * spb + first;
        let bit1 = (block % self.chunk_ratio) * spb + last;
        let mut bytes = vec![0u8; (bit1.div_ceil(8) - bit0 / 8) as usize];
        self.file
            .read(&mut bytes, bm.offset() + bit0 / 8, "sector bitmap")?;
        Ok(Some((bytes, bit0 % 8)))
    }

    /// Where the `n` bytes at `offset` (inside one block) come from: (kind, host offset,
    /// length, from parent).
    fn locate(&self, offset: u64, max: u64) -> Result<(ExtentKind, Option<u64>, u64, bool)> {
        let bs = u64::from(self.meta.block_size);
        let block = offset / bs;
        let within = offset % bs;
        let n = max.min(bs - within);
        let e = self.entry(block);
        let parent = self.parent.is_some();
        Ok(match e.state() {
            bat::PAYLOAD_FULLY_PRESENT => (ExtentKind::Data, Some(e.offset() + within), n, false),
            bat::PAYLOAD_PARTIALLY_PRESENT => {
                let lss = u64::from(self.meta.logical_sector_size);
                let s0 = within / lss;
                let s_end = (within + n).div_ceil(lss);
                let bits = self.sector_bits(block, s0, s_end)?;
                let present = |s: u64| {
                    bits.as_ref().is_some_and(|(b, shift)| {
                        let bit = s - s0 + shift;
                        b[(bit / 8) as usize] >> (bit % 8) & 1 != 0
                    })
                };
                let here = present(s0);
                let mut s = s0 + 1;
                while s < s_end && present(s) == here {
                    s += 1;
                }
                let len = (s * lss - within).min(n);
                if here {
                    (ExtentKind::Data, Some(e.offset() + within), len, false)
                } else {
                    (ExtentKind::Unallocated, None, len, true)
                }
            }
            bat::PAYLOAD_NOT_PRESENT | bat::PAYLOAD_UNDEFINED if parent => {
                (ExtentKind::Unallocated, None, n, true)
            }
            bat::PAYLOAD_NOT_PRESENT | bat::PAYLOAD_UNDEFINED => {
                (ExtentKind::Unallocated, None, n, false)
            }
            _ => (ExtentKind::Zero, None, n, false),
        })
    }
}

impl ImageReader for VhdxReader {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let size = self.meta.virtual_size;
        if offset >= size || max_len == 0 {
            return Ok(Extent::new(offset, 0, ExtentKind::Unallocated));
        }
        let max = max_len.min(size - offset);
        let (kind, host, mut len, from_parent) = self.locate(offset, max)?;
        if from_parent {
            return map_through_parent(self.parent.as_deref(), offset, len);
        }
        while offset + len < size && len < max {
            let (k2, h2, l2, p2) = self.locate(offset + len, max - len)?;
            if k2 != kind
                || p2
                || h2.is_some() != host.is_some()
                || host.is_some_and(|h| Some(h + len) != h2)
            {
                break;
            }
            len += l2;
        }
        let mut e = Extent::new(offset, len, kind);
        e.host_offset = host;
        Ok(e)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_read_range(offset, buf.len(), self.meta.virtual_size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (kind, host, len, from_parent) = self.locate(pos, (buf.len() - done) as u64)?;
            let dst = &mut buf[done..done + len as usize];
            if from_parent {
                read_through_parent(self.parent.as_deref(), dst, pos)?;
            } else if let (ExtentKind::Data, Some(h)) = (kind, host) {
                self.file.read(dst, h, "payload block")?;
            } else {
                dst.fill(0);
            }
            done += len as usize;
        }
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        let mut i = ImageInfo::new(Format::Vhdx, self.meta.virtual_size);
        i.filename = self.path.as_ref().map(|p| p.display().to_string());
        i.subformat = Some(
            if self.meta.has_parent {
                "differencing"
            } else if self.meta.leave_blocks_allocated {
                "fixed"
            } else {
                "dynamic"
            }
            .into(),
        );
        i.cluster_size = Some(u64::from(self.meta.block_size));
        i.file_size = Some(self.file.len);
        i.allocated_bytes = self.file.inner.allocated_bytes().ok().flatten();
        i.backing_file = self.parent_name.clone();
        i.backing_format = self.parent.as_ref().map(|_| "vhdx".into());
        i.backing = self.parent.as_ref().map(|p| Box::new(p.info()));
        i.flags.push(format!(
            "logical_sector_size={}",
            self.meta.logical_sector_size
        ));
        i.flags.push(format!(
            "physical_sector_size={}",
            self.meta.physical_sector_size
        ));
        if self.file.overlay.entries > 0 {
            i.flags.push(format!(
                "log_replayed_in_memory={}",
                self.file.overlay.entries
            ));
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vhdx::writer::{VhdxWriteOptions, VhdxWriter};
    use crate::image::ImageWriter;
    use crate::open::{OpenOptions, open_storage};
    use crate::storage::MemStorage;

    /// A 4-block dynamic image (1 MiB blocks) with every block written, then `states` applied.
    fn image(states: &[u8]) -> Result<Box<dyn ImageReader>> {
        let mem = Arc::new(MemStorage::new());
        let opts = VhdxWriteOptions {
            block_size: 1 << 20,
            ..Default::default()
        };
        let mut w = Box::new(VhdxWriter::new(mem.clone(), 4 << 20, &opts).unwrap());
        w.write_at(&vec![0x5a; 4 << 20], 0).unwrap();
        w.finish().unwrap();
        let mut b = mem.to_vec();
        for (i, &s) in states.iter().enumerate() {
            let at = 0x300000 + 8 * i;
            b[at] = (b[at] & !7) | s;
        }
        open_storage(
            Arc::new(MemStorage::from_vec(b)),
            &OpenOptions::new().format(Format::Vhdx),
        )
    }

    #[test]
    fn payload_states() {
        let img = image(&[6, 1, 2, 3]).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf[..1 << 20].iter().all(|&b| b == 0x5a));
        assert!(buf[1 << 20..].iter().all(|&b| b == 0));
        let kinds: Vec<_> = (0..4)
            .map(|i| img.map(i << 20, 1 << 20).unwrap().kind)
            .collect();
        assert_eq!(
            kinds,
            [
                ExtentKind::Data,
                ExtentKind::Unallocated,
                ExtentKind::Zero,
                ExtentKind::Zero
            ]
        );
        // Adjacent blocks of one kind merge into one extent.
        assert_eq!(img.map(2 << 20, 2 << 20).unwrap().len, 2 << 20);
        // Partially present needs a parent; 4 and 5 are reserved.
        for bad in [7, 4, 5] {
            let e = image(&[bad]).err().expect("an error");
            assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt, "{e}");
        }
    }
}
