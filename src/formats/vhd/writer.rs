//! Writing fixed (Azure-ready) and dynamic VHDs.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::files::Sink;
use crate::image::{Format, ImageWriter, WriteReport};
use crate::storage::Storage;

use super::dynamic::{HEADER_SIZE, MAX_BLOCK_SIZE, UNALLOCATED, VhdDynamicHeader};
use super::footer::{
    Chs, DiskType, FEATURES_RESERVED, FOOTER_SIZE, NO_DATA_OFFSET, VERSION_1_0, VHD_EPOCH,
    VhdFooter,
};

/// Which kind of VHD to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhdSubformat {
    /// Sparse: a BAT of blocks, each with a sector bitmap (qemu's default).
    #[default]
    Dynamic,
    /// Every byte stored, then a footer: what Azure accepts.
    Fixed,
}

/// How to write a VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdWriteOptions {
    /// Subformat.
    pub subformat: VhdSubformat,
    /// Block size of a dynamic VHD (power of two, default 2 MiB).
    pub block_size: u32,
    /// Round the virtual size up to a whole MiB (Azure's rule; default on). Off keeps the size
    /// exact, rounded up to a whole sector only.
    pub round_to_mib: bool,
}

impl Default for VhdWriteOptions {
    fn default() -> Self {
        VhdWriteOptions {
            subformat: VhdSubformat::Dynamic,
            block_size: 2 << 20,
            round_to_mib: true,
        }
    }
}

/// Creator application written into our footers. qemu's `vpc` driver takes the size from the
/// CHS geometry for every creator it does not know (and for `qemu`/`vpc `), which would
/// truncate a disk whose size is not a whole geometry; `qem2` (what qemu itself writes with
/// `force_size=on`) is on its list of creators whose `current_size` is authoritative, as are
/// `win `, `d2v `, `CTXS`, `tap\0`. Of those, `qem2` is the only one that does not pretend to
/// be a Microsoft or Citrix tool. Windows, Hyper-V and Azure always use `current_size`.
pub const CREATOR_APP: [u8; 4] = *b"qem2";
/// Creator version: 0.1 (ours; informational only).
pub const CREATOR_VERSION: u32 = 0x0000_0001;
/// Creator host OS "Wi2k", what Hyper-V and qemu write.
pub const CREATOR_OS: [u8; 4] = *b"Wi2k";
/// Largest dynamic disk: the specification's 2040 GiB.
pub const MAX_DYNAMIC_SIZE: u64 = 2040 << 30;
/// Largest fixed disk: Azure's 32 TiB limit (REFERENCE.md section 3) and far below any
/// arithmetic limit.
pub const MAX_FIXED_SIZE: u64 = 32 << 40;
/// Smallest block size written (see [`create`]).
pub const MIN_WRITE_BLOCK_SIZE: u32 = 4096;
const MIB: u64 = 1 << 20;

/// The virtual size written for a source of `size` bytes.
pub fn rounded_size(size: u64, round_to_mib: bool) -> u64 {
    if round_to_mib {
        size.div_ceil(MIB) * MIB
    } else {
        size.div_ceil(512) * 512
    }
}

/// A random version-4 GUID in the VHD's byte order (big-endian groups), from the OS-seeded
/// hasher of the standard library.
fn random_id() -> [u8; 16] {
    crate::bytes::Guid::random().to_be_bytes()
}

fn timestamp() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(VHD_EPOCH);
    now.saturating_sub(VHD_EPOCH).min(u32::MAX as u64) as u32
}

/// The footer of a new disk of `size` bytes.
pub fn new_footer(size: u64, disk_type: DiskType, data_offset: u64) -> VhdFooter {
    VhdFooter {
        features: FEATURES_RESERVED,
        version: VERSION_1_0,
        data_offset,
        timestamp: timestamp(),
        creator_app: CREATOR_APP,
        creator_version: CREATOR_VERSION,
        creator_os: CREATOR_OS,
        original_size: size,
        current_size: size,
        chs: Chs::for_sectors(size / 512),
        disk_type,
        checksum: 0,
        unique_id: random_id(),
        saved_state: 0,
    }
}

fn wio(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

/// Creates the writer for `opts` over the output files. The virtual size is `size` rounded up
/// (see [`rounded_size`]); the convert engine writes the extra tail as zeros.
pub fn create(
    files: &mut dyn Sink,
    size: u64,
    opts: &VhdWriteOptions,
) -> Result<Box<dyn ImageWriter>> {
    let vsize = rounded_size(size, opts.round_to_mib);
    match opts.subformat {
        VhdSubformat::Fixed => {
            if vsize > MAX_FIXED_SIZE {
                return Err(Error::InvalidArgument(format!(
                    "a fixed VHD of {vsize} bytes is larger than 32 TiB"
                )));
            }
            let storage = files.main()?;
            Ok(Box::new(FixedWriter {
                storage,
                size: vsize,
                report: WriteReport::default(),
            }))
        }
        VhdSubformat::Dynamic => {
            let bs = opts.block_size;
            // The format allows 512-byte blocks, but qemu computes the bitmap of blocks under
            // 4 KiB as 0 bytes (it rounds down) and would misread them: write 4 KiB and up.
            if !bs.is_power_of_two() || !(MIN_WRITE_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
                return Err(Error::InvalidArgument(format!(
                    "VHD block size {bs} is not a power of two from {MIN_WRITE_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
                )));
            }
            if vsize > MAX_DYNAMIC_SIZE {
                return Err(Error::InvalidArgument(format!(
                    "a dynamic VHD of {vsize} bytes is larger than the format's 2040 GiB"
                )));
            }
            let entries = vsize.div_ceil(bs as u64);
            if entries > super::dynamic::MAX_BAT_ENTRIES {
                return Err(Error::InvalidArgument(format!(
                    "{entries} blocks of {bs} bytes are too many; use a larger block_size"
                )));
            }
            let storage = files.main()?;
            let bat_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
            let bat_bytes = (entries * 4).next_multiple_of(512);
            let bitmap = (bs as u64 / 512).div_ceil(8).next_multiple_of(512);
            Ok(Box::new(DynamicWriter {
                storage,
                size: vsize,
                block_size: bs as u64,
                bitmap,
                bat: vec![UNALLOCATED; entries as usize],
                bat_offset,
                next: bat_offset + bat_bytes,
                report: WriteReport::default(),
            }))
        }
    }
}

/// A fixed VHD: the disk's bytes, then a type-2 footer. Zeros are left as holes.
struct FixedWriter {
    storage: Arc<dyn Storage>,
    size: u64,
    report: WriteReport,
}

fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    if offset.checked_add(len).is_none_or(|e| e > size) {
        return Err(Error::InvalidArgument(format!(
            "write of {len} bytes at {offset:#x} past the end of the disk ({size:#x} bytes)"
        )));
    }
    Ok(())
}

impl ImageWriter for FixedWriter {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn granularity(&self) -> u64 {
        64 * 1024
    }
    fn needs_sequential(&self) -> bool {
        false
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.storage
            .write_all_at(buf, offset)
            .map_err(wio(format!("writing {} bytes at {offset:#x}", buf.len())))?;
        self.report.data += buf.len() as u64;
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        // The output is a new file: unwritten stretches are holes that read as zeros.
        check_range(offset, len, self.size)
    }
    fn finish(self: Box<Self>) -> Result<WriteReport> {
        let footer = new_footer(self.size, DiskType::Fixed, NO_DATA_OFFSET);
        self.storage
            .write_all_at(&footer.to_bytes(), self.size)
            .map_err(wio("writing the VHD footer".into()))?;
        self.storage
            .set_len(self.size + FOOTER_SIZE as u64)
            .map_err(wio("setting the file length".into()))?;
        self.storage.sync().map_err(wio("syncing".into()))?;
        let mut report = self.report;
        report.metadata += FOOTER_SIZE as u64;
        report.complete(&[self.storage.as_ref()])
    }
}

/// A dynamic VHD: footer copy, header, BAT, then the blocks that hold data in the order they
/// are first written (each with a full sector bitmap), then the footer.
struct DynamicWriter {
    storage: Arc<dyn Storage>,
    size: u64,
    block_size: u64,
    bitmap: u64,
    bat: Vec<u32>,
    bat_offset: u64,
    /// End of the file so far: where the next block goes.
    next: u64,
    /// Bytes written so far, by kind.
    report: WriteReport,
}

impl DynamicWriter {
    /// The file offset of the data of block `b`, allocating it on first use.
    fn block(&mut self, b: usize) -> Result<u64> {
        if self.bat[b] == UNALLOCATED {
            let sector = self.next / 512;
            if sector >= UNALLOCATED as u64 {
                return Err(Error::InvalidArgument(
                    "the dynamic VHD grew past 2 TiB of file".into(),
                ));
            }
            let bitmap = vec![0xffu8; self.bitmap as usize];
            self.storage
                .write_all_at(&bitmap, self.next)
                .map_err(wio(format!("writing a sector bitmap at {:#x}", self.next)))?;
            self.report.metadata += bitmap.len() as u64;
            self.bat[b] = sector as u32;
            self.next += self.bitmap + self.block_size;
        }
        Ok(self.bat[b] as u64 * 512 + self.bitmap)
    }
}

impl ImageWriter for DynamicWriter {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn granularity(&self) -> u64 {
        self.block_size.min(64 * 1024)
    }
    fn needs_sequential(&self) -> bool {
        false
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let b = (pos / self.block_size) as usize;
            let in_block = pos % self.block_size;
            let n = ((self.block_size - in_block) as usize).min(buf.len() - done);
            let host = self.block(b)? + in_block;
            self.storage
                .write_all_at(&buf[done..done + n], host)
                .map_err(wio(format!("writing {n} bytes at {host:#x}")))?;
            self.report.data += n as u64;
            done += n;
        }
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)?;
        // Blocks not yet allocated read as zeros. In an allocated block (a partial earlier
        // write) the bytes were never written, so they are holes in the file: zeros too,
        // unless the caller overwrites data, which the engine never does.
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let b = (pos / self.block_size) as usize;
            let in_block = pos % self.block_size;
            let n = (self.block_size - in_block).min(end - pos);
            if self.bat[b] != UNALLOCATED {
                let host = self.bat[b] as u64 * 512 + self.bitmap + in_block;
                self.storage
                    .write_zeroes(host, n)
                    .map_err(wio(format!("zeroing {n} bytes at {host:#x}")))?;
            }
            pos += n;
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<WriteReport> {
        let footer = new_footer(self.size, DiskType::Dynamic, FOOTER_SIZE as u64);
        let header = VhdDynamicHeader {
            table_offset: self.bat_offset,
            max_table_entries: self.bat.len() as u32,
            block_size: self.block_size as u32,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: Vec::new(),
        };
        let mut bat = vec![0xffu8; ((self.bat.len() * 4) as u64).next_multiple_of(512) as usize];
        for (i, e) in self.bat.iter().enumerate() {
            bat[i * 4..i * 4 + 4].copy_from_slice(&e.to_be_bytes());
        }
        let fb = footer.to_bytes();
        let hb = header.to_bytes();
        let s = &self.storage;
        s.write_all_at(&bat, self.bat_offset)
            .map_err(wio("writing the BAT".into()))?;
        s.write_all_at(&hb, FOOTER_SIZE as u64)
            .map_err(wio("writing the dynamic header".into()))?;
        s.write_all_at(&fb, 0)
            .map_err(wio("writing the footer copy".into()))?;
        s.write_all_at(&fb, self.next)
            .map_err(wio("writing the footer".into()))?;
        s.set_len(self.next + FOOTER_SIZE as u64)
            .map_err(wio("setting the file length".into()))?;
        s.sync().map_err(wio("syncing".into()))?;
        let mut report = self.report;
        report.metadata += (bat.len() + hb.len() + 2 * fb.len()) as u64;
        report.complete(&[s.as_ref()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        let mib = 1 << 20;
        assert_eq!(rounded_size(20 * mib + 12345, true), 21 * mib);
        assert_eq!(rounded_size(33 * mib + 1, true), 34 * mib);
        assert_eq!(rounded_size(20 * mib, true), 20 * mib);
        assert_eq!(rounded_size(20 * mib + 12345, false), 20 * mib + 12800);
        assert_eq!(rounded_size(0, true), 0);
    }

    #[test]
    fn footer_of_a_new_disk() {
        let f = new_footer(21 << 20, DiskType::Fixed, NO_DATA_OFFSET);
        let b = f.to_bytes();
        let p = VhdFooter::parse(&b, 0).unwrap();
        assert_eq!(p.virtual_size(), 21 << 20);
        assert!(!p.uses_chs());
        assert!(p.chs.size() <= 21 << 20);
        assert_ne!(random_id(), random_id());
    }
}
