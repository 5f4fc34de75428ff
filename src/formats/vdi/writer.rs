//! Writing dynamic and fixed VDIs, and their `-o key=value` options.
//!
//! The image is what VirtualBox makes today: pre-header, a version 1.1 header of 400 bytes
//! (`VDIHEADER1PLUS`, LCHS geometry left for the reader to compute, as VirtualBox does), a
//! fresh `uuidCreate` and `uuidModify`, blocks of 1 MiB with no extra data. The block map
//! follows the header at byte 512 and the data area starts at the next multiple of 1 MiB
//! (VirtualBox aligns both to 1 MiB; qemu aligns both to 512 bytes; any of these layouts is
//! read by both).
//!
//! - dynamic (default, VirtualBox's "normal" type 1): a block is stored, in the order blocks
//!   are first written, only when it holds data; blocks that read as zeros keep the free entry
//!   `0xffffffff`. Zeros inside a stored block are holes of the file.
//! - fixed (type 2): every block stored, block `i` of the disk as data block `i`, as VirtualBox
//!   and qemu (`static=on`) make them; zeros are holes, so the file is sparse.
//!
//! The block size is fixed at 1 MiB: qemu refuses any other, and VirtualBox makes 1 MiB
//! blocks unless told otherwise.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{Format, ImageWriter, WriteReport};
use crate::storage::Storage;

use super::blockmap::{FREE, encode};
use super::header::{Geometry, ImageType, MAX_BLOCKS, SECTOR, Uuid, VdiHeader};

/// Block size of the images written.
pub const BLOCK_SIZE: u32 = 1 << 20;
/// Alignment of the data area.
pub const DATA_ALIGN: u64 = 1 << 20;
/// Where the block map goes: the first sector after the pre-header and header.
pub const BLOCKS_OFFSET: u64 = 512;
/// Largest disk written: [`MAX_BLOCKS`] blocks of 1 MiB (64 TiB).
pub const MAX_SIZE: u64 = MAX_BLOCKS as u64 * BLOCK_SIZE as u64;
/// The pre-header text of our images (for eyes only; readers ignore it).
pub const TEXT: &str = "<<< diskconv VDI Disk Image >>>\n";
/// Unit of zero detection handed to the convert engine (divides the block size).
const GRANULARITY: u64 = 64 * 1024;

/// Which kind of VDI to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VdiSubformat {
    /// Blocks stored only when they hold data (VirtualBox's default).
    #[default]
    Dynamic,
    /// Every block stored (preallocated; zeros are holes of a sparse file).
    Fixed,
}

/// How to write a VDI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VdiWriteOptions {
    /// Dynamic or fixed.
    pub subformat: VdiSubformat,
}

impl VdiWriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static str = "subformat, static";

    /// Sets one `-o key=value` option: `subformat=dynamic|fixed`, or qemu-img's spelling
    /// `static=on|off`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "subformat" => {
                self.subformat = match value {
                    "dynamic" => VdiSubformat::Dynamic,
                    "fixed" => VdiSubformat::Fixed,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected dynamic or fixed"
                        )));
                    }
                };
            }
            "static" => {
                self.subformat = match value {
                    "on" | "true" | "yes" => VdiSubformat::Fixed,
                    "off" | "false" | "no" => VdiSubformat::Dynamic,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "static={other}: expected on or off"
                        )));
                    }
                };
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "option '{other}' does not apply to vdi output (vdi options: {})",
                    Self::KEYS
                )));
            }
        }
        Ok(())
    }
}

/// The virtual size written for a source of `size` bytes: whole sectors (a VDI's size is read
/// in whole sectors; the tail of a last partial sector is written as zeros).
pub fn rounded_size(size: u64) -> u64 {
    size.div_ceil(SECTOR) * SECTOR
}

/// The header of a new image of `size` bytes (a multiple of 512) in `blocks` blocks.
fn new_header(size: u64, blocks: u32, image_type: ImageType) -> VdiHeader {
    let map_end = BLOCKS_OFFSET + u64::from(blocks) * 4;
    // Not calculated: VirtualBox computes a geometry from the size when it opens the image.
    let geometry = Geometry {
        sector_size: SECTOR as u32,
        ..Geometry::default()
    };
    VdiHeader {
        text: TEXT.into(),
        version: super::header::VERSION_1_1,
        header_size: super::header::HEADER1_PLUS_SIZE as u32,
        image_type,
        flags: 0,
        comment: String::new(),
        blocks_offset: BLOCKS_OFFSET,
        data_offset: map_end.div_ceil(DATA_ALIGN) * DATA_ALIGN,
        legacy_geometry: geometry,
        lchs_geometry: Some(geometry),
        disk_size: size,
        block_size: BLOCK_SIZE,
        block_extra: 0,
        blocks,
        blocks_allocated: 0,
        uuid_create: Uuid::random(),
        uuid_modify: Uuid::random(),
        uuid_linkage: Uuid::NIL,
        uuid_parent_modify: Uuid::NIL,
    }
}

/// Creates the writer of a VDI of `size` bytes (rounded up to a whole sector, see
/// [`rounded_size`]) over `storage`, a new empty file.
pub fn create(
    storage: Arc<dyn Storage>,
    size: u64,
    opts: &VdiWriteOptions,
) -> Result<Box<dyn ImageWriter>> {
    Ok(Box::new(VdiWriter::create(storage, size, opts)?))
}

/// Writes a new VDI; see the [module documentation](self).
pub struct VdiWriter {
    storage: Arc<dyn Storage>,
    header: VdiHeader,
    size: u64,
    /// One entry per block.
    map: Vec<u32>,
    report: WriteReport,
}

impl std::fmt::Debug for VdiWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiWriter")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl VdiWriter {
    /// See [`create`].
    pub fn create(storage: Arc<dyn Storage>, size: u64, opts: &VdiWriteOptions) -> Result<Self> {
        let vsize = rounded_size(size);
        if vsize == 0 {
            return Err(Error::InvalidArgument(
                "a VDI cannot hold an empty disk (VirtualBox refuses a disk size of 0)".into(),
            ));
        }
        if vsize > MAX_SIZE {
            return Err(Error::InvalidArgument(format!(
                "a VDI of {vsize} bytes is larger than the {} TiB this writer makes",
                MAX_SIZE >> 40
            )));
        }
        // At most MAX_BLOCKS (checked just above).
        let blocks = vsize.div_ceil(u64::from(BLOCK_SIZE)) as u32;
        let (image_type, map) = match opts.subformat {
            VdiSubformat::Dynamic => (ImageType::Dynamic, vec![FREE; blocks as usize]),
            VdiSubformat::Fixed => (ImageType::Fixed, (0..blocks).collect()),
        };
        let mut header = new_header(vsize, blocks, image_type);
        if image_type == ImageType::Fixed {
            header.blocks_allocated = blocks;
        }
        Ok(VdiWriter {
            storage,
            header,
            size: vsize,
            map,
            report: WriteReport::default(),
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::InvalidArgument(format!(
                "write of {len} bytes at {offset:#x} past the end of the disk ({:#x} bytes)",
                self.size
            )));
        }
        Ok(())
    }

    /// The file offset of block `b`'s data, storing the block on first use.
    fn block(&mut self, b: usize) -> u64 {
        if self.map[b] == FREE {
            self.map[b] = self.header.blocks_allocated;
            self.header.blocks_allocated += 1;
        }
        self.header.block_offset(self.map[b])
    }
}

fn wio(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(op, e)
}

impl ImageWriter for VdiWriter {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        GRANULARITY
    }

    fn needs_sequential(&self) -> bool {
        false
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let bs = u64::from(BLOCK_SIZE);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let host = self.block((pos / bs) as usize) + within;
            self.storage
                .write_all_at(&buf[done..done + n], host)
                .map_err(wio(format!("writing {n} bytes at {host:#x}")))?;
            self.report.data += n as u64;
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if self.header.image_type == ImageType::Fixed {
            // A new file: what was never written is a hole, reading as zeros.
            return Ok(());
        }
        // Free blocks read as zeros. In a stored block (a partial earlier write) the range was
        // never written, so it is a hole too, unless a direct caller overwrites data, which
        // the punch below covers; the engine never does.
        let bs = u64::from(BLOCK_SIZE);
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let b = (pos / bs) as usize;
            let within = pos % bs;
            let n = (bs - within).min(end - pos);
            if self.map[b] != FREE {
                let host = self.header.block_offset(self.map[b]) + within;
                self.storage
                    .write_zeroes(host, n)
                    .map_err(wio(format!("zeroing {n} bytes at {host:#x}")))?;
            }
            pos += n;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<WriteReport> {
        let s = &self.storage;
        let map = encode(&self.map);
        s.write_all_at(&map, self.header.blocks_offset)
            .map_err(wio("writing the block map".into()))?;
        let head = self.header.to_bytes(BLOCKS_OFFSET as usize);
        s.write_all_at(&head, 0)
            .map_err(wio("writing the VDI header".into()))?;
        // Every stored block is whole in the file, the last one too.
        s.set_len(self.header.data_end())
            .map_err(wio("setting the file length".into()))?;
        s.sync().map_err(wio("syncing".into()))?;
        let mut report = self.report;
        report.metadata += (map.len() + head.len()) as u64;
        report.complete(&[s.as_ref()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ExtentKind;
    use crate::open::{OpenOptions, open_storage};
    use crate::storage::MemStorage;

    fn write(sub: VdiSubformat, size: u64, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mem = Arc::new(MemStorage::new());
        let mut w =
            VdiWriter::create(mem.clone(), size, &VdiWriteOptions { subformat: sub }).unwrap();
        for (off, data) in writes {
            w.write_at(data, *off).unwrap();
        }
        Box::new(w).finish().unwrap();
        mem.to_vec()
    }

    #[test]
    fn writes_what_the_reader_reads() {
        let size = 3 * u64::from(BLOCK_SIZE) + 1000;
        let writes = vec![
            (100, vec![0x11u8; 300]),
            (2 * (1 << 20) + 5, vec![0x22; (1 << 20) + 500]),
        ];
        let mut want = vec![0u8; rounded_size(size) as usize];
        for (off, d) in &writes {
            want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        for sub in [VdiSubformat::Dynamic, VdiSubformat::Fixed] {
            let bytes = write(sub, size, &writes);
            let h = VdiHeader::parse(&bytes, 0).unwrap();
            assert_eq!(
                h.virtual_size(),
                3 * (1 << 20) + 1024,
                "rounded to a sector"
            );
            assert_eq!(h.blocks, 4);
            assert_eq!((h.blocks_offset, h.data_offset), (512, 1 << 20));
            assert_eq!(h.header_size, 400);
            let r = open_storage(
                Arc::new(MemStorage::from_vec(bytes.clone())),
                &OpenOptions::new().format(Format::Vdi),
            )
            .unwrap();
            let mut got = vec![0u8; want.len()];
            r.read_at(&mut got, 0).unwrap();
            assert_eq!(got, want, "{sub:?}");
            let e = r.map(1 << 20, u64::MAX).unwrap();
            match sub {
                // Block 1 was never written: free; blocks 0, 2, 3 stored in write order.
                VdiSubformat::Dynamic => {
                    assert_eq!(h.blocks_allocated, 3);
                    assert_eq!(e.kind, ExtentKind::Unallocated);
                    assert_eq!(bytes.len() as u64, (1 << 20) + 3 * (1 << 20));
                }
                VdiSubformat::Fixed => {
                    assert_eq!(h.blocks_allocated, 4);
                    assert_eq!(h.image_type, ImageType::Fixed);
                    assert_eq!(bytes.len() as u64, (1 << 20) + 4 * (1 << 20));
                }
            }
        }
    }

    #[test]
    fn options_parse() {
        let mut o = VdiWriteOptions::default();
        o.set("subformat", "fixed").unwrap();
        assert_eq!(o.subformat, VdiSubformat::Fixed);
        o.set("static", "off").unwrap();
        assert_eq!(o.subformat, VdiSubformat::Dynamic);
        let e = o.set("subformat", "split").unwrap_err().to_string();
        assert!(e.contains("expected dynamic or fixed"), "{e}");
        let e = o.set("block_size", "2M").unwrap_err().to_string();
        assert!(
            e.contains("does not apply to vdi output (vdi options: subformat, static)"),
            "{e}"
        );
    }

    #[test]
    fn refuses_empty_and_huge_disks() {
        let mem = Arc::new(MemStorage::new());
        assert!(VdiWriter::create(mem.clone(), 0, &VdiWriteOptions::default()).is_err());
        assert!(VdiWriter::create(mem, MAX_SIZE + 1, &VdiWriteOptions::default()).is_err());
    }
}
