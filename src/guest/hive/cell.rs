//! Hive bins and cells: parsing the bins, bounds-checked cell access, the free-cell allocator
//! and the tracking of touched pages.
//!
//! A hive bin (Suhanov, "Hive bin") starts with a 32-byte header:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | signature `hbin` |
//! | 4 | 4 | offset of this bin relative to the first bin |
//! | 8 | 4 | size of this bin (a multiple of 4096) |
//! | 12 | 8 | reserved |
//! | 20 | 8 | timestamp (only meaningful in the first bin) |
//! | 28 | 4 | spare |
//!
//! and is followed by cells: an `i32` size (negative when the cell is allocated, positive when
//! it is free; the absolute value is a multiple of 8 and includes the size field) and the cell's
//! data. A cell never crosses the end of its bin.

use std::collections::{BTreeMap, BTreeSet};

use super::HiveError;
use crate::bytes::get_le32;

/// `hbin`: the hive-bin signature.
pub const HBIN_SIGNATURE: &[u8; 4] = b"hbin";
/// Size of a hive-bin header.
pub const HBIN_HEADER_SIZE: u32 = 32;
/// Bins are multiples of this size; pages are tracked in this unit too.
pub const PAGE_SIZE: u32 = 4096;
/// Largest hive this module accepts (Windows limits hives to 2 GiB).
pub const MAX_BINS_SIZE: u32 = 0x7FFF_F000;

/// The absolute file offset of bin offset `off` (bins start after the 4096-byte base block).
pub fn abs(off: u32) -> u64 {
    4096 + u64::from(off)
}

/// The hive bins in memory with their bin table, free cells and touched pages.
#[derive(Debug, Default, Clone)]
pub struct Cells {
    /// All hive bins (the file from offset 4096 on).
    pub bytes: Vec<u8>,
    /// Start offsets of the bins, ascending.
    bin_starts: Vec<u32>,
    /// Free cells: offset → size (bytes, size field included).
    free: BTreeMap<u32, u32>,
    /// Touched 4096-byte pages (index relative to the start of the bins).
    pub dirty: BTreeSet<u32>,
    /// Size of the bins when opened or last saved (everything past it was appended).
    pub saved_len: usize,
    /// Timestamp put into new bins' headers.
    pub now: u64,
}

impl Cells {
    /// Parses and validates every bin and cell of `bytes` (exactly `hive_bins_size` bytes).
    pub fn parse(bytes: Vec<u8>) -> Result<Cells, HiveError> {
        let total = bytes.len();
        if total == 0 || total % PAGE_SIZE as usize != 0 || total > MAX_BINS_SIZE as usize {
            return Err(HiveError::invalid(
                "base block",
                40,
                format!(
                    "hive bins size must be a non-zero multiple of 4096 below 2 GiB, found {total:#x}"
                ),
            ));
        }
        let mut cells = Cells {
            bytes,
            saved_len: total,
            ..Cells::default()
        };
        let mut pos = 0usize;
        while pos < total {
            let p32 = pos as u32; // pos < total <= MAX_BINS_SIZE
            let b = &cells.bytes;
            if b.get(pos..pos + 4) != Some(&HBIN_SIGNATURE[..]) {
                return Err(HiveError::invalid(
                    "bin",
                    abs(p32),
                    format!(
                        "expected signature 'hbin', found {:02x?}",
                        b.get(pos..pos + 4).unwrap_or(&[])
                    ),
                ));
            }
            let off_field = get_le32(b, pos + 4).unwrap_or(u32::MAX);
            if off_field != p32 {
                return Err(HiveError::invalid(
                    "bin",
                    abs(p32),
                    format!("offset field says {off_field:#x}, the bin lies at {p32:#x}"),
                ));
            }
            let size = get_le32(b, pos + 8).unwrap_or(0);
            if size == 0 || size % PAGE_SIZE != 0 {
                return Err(HiveError::invalid(
                    "bin",
                    abs(p32),
                    format!("size must be a non-zero multiple of 4096, found {size:#x}"),
                ));
            }
            let end = pos.checked_add(size as usize).filter(|&e| e <= total).ok_or_else(|| {
                HiveError::corrupt(
                    "bin",
                    abs(p32),
                    format!(
                        "size {size:#x} runs past the end of the hive bins ({total:#x} bytes): the hive is truncated"
                    ),
                )
            })?;
            cells.bin_starts.push(p32);
            let mut c = pos + HBIN_HEADER_SIZE as usize;
            while c < end {
                let raw = get_le32(&cells.bytes, c).unwrap_or(0) as i32;
                let len = raw.unsigned_abs();
                if len < 8 || len % 8 != 0 || c + len as usize > end {
                    return Err(HiveError::corrupt(
                        "cell",
                        abs(c as u32),
                        format!(
                            "size {raw} is invalid: expected a non-zero multiple of 8 ending within its bin ({:#x}..{:#x})",
                            abs(p32),
                            abs(end as u32)
                        ),
                    ));
                }
                if raw > 0 {
                    cells.free.insert(c as u32, len);
                }
                c += len as usize;
            }
            pos = end;
        }
        Ok(cells)
    }

    /// Offset just past the bin holding `off`, if `off` lies in a bin's cell area.
    fn bin_of(&self, off: u32) -> Option<(u32, u32)> {
        let i = self
            .bin_starts
            .partition_point(|&s| s <= off)
            .checked_sub(1)?;
        let start = self.bin_starts[i]; // i < len by partition_point
        let end = self
            .bin_starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.bytes.len() as u32);
        (off >= start + HBIN_HEADER_SIZE && off < end).then_some((start, end))
    }

    /// The data range (start, length) of the allocated cell at `off`; `what` names the structure
    /// expected there for the error message.
    pub fn cell(&self, off: u32, what: &str) -> Result<(usize, usize), HiveError> {
        if off % 8 != 0 {
            return Err(HiveError::corrupt(
                what,
                abs(off),
                "cell offset is not a multiple of 8",
            ));
        }
        let (_, end) = self.bin_of(off).ok_or_else(|| {
            HiveError::corrupt(
                what,
                abs(off),
                format!(
                    "cell offset {off:#x} lies outside the cells of the hive bins ({:#x} bytes)",
                    self.bytes.len()
                ),
            )
        })?;
        let raw = get_le32(&self.bytes, off as usize).unwrap_or(0) as i32;
        if raw >= 0 {
            return Err(HiveError::corrupt(
                what,
                abs(off),
                format!("expected an allocated cell (negative size), found size {raw}"),
            ));
        }
        let len = raw.unsigned_abs();
        if len < 8 || u64::from(off) + u64::from(len) > u64::from(end) {
            return Err(HiveError::corrupt(
                what,
                abs(off),
                format!(
                    "cell size {len} crosses the end of its bin at {:#x}",
                    abs(end)
                ),
            ));
        }
        Ok((off as usize + 4, len as usize - 4))
    }

    /// The data of the allocated cell at `off`.
    pub fn data(&self, off: u32, what: &str) -> Result<&[u8], HiveError> {
        let (s, l) = self.cell(off, what)?;
        // cell() checked s + l <= bin end <= bytes.len().
        Ok(&self.bytes[s..s + l])
    }

    /// Marks the pages of `start..start+len` as touched.
    pub fn touch(&mut self, start: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = start / PAGE_SIZE as usize;
        let last = (start + len - 1) / PAGE_SIZE as usize;
        for p in first..=last {
            self.dirty.insert(p as u32);
        }
    }

    /// Writes `data` at byte `off` of the data of the allocated cell `cell`.
    pub fn write(&mut self, cell: u32, off: usize, data: &[u8]) -> Result<(), HiveError> {
        let (s, l) = self.cell(cell, "cell")?;
        if off.checked_add(data.len()).is_none_or(|e| e > l) {
            return Err(HiveError::corrupt(
                "cell",
                abs(cell),
                format!(
                    "write of {} bytes at {off} does not fit the cell's {l} bytes",
                    data.len()
                ),
            ));
        }
        self.bytes[s + off..s + off + data.len()].copy_from_slice(data);
        self.touch(s + off, data.len());
        Ok(())
    }

    /// Writes a little-endian u32 into cell data.
    pub fn write_u32(&mut self, cell: u32, off: usize, v: u32) -> Result<(), HiveError> {
        self.write(cell, off, &v.to_le_bytes())
    }

    /// Writes a little-endian u16 into cell data.
    pub fn write_u16(&mut self, cell: u32, off: usize, v: u16) -> Result<(), HiveError> {
        self.write(cell, off, &v.to_le_bytes())
    }

    fn set_size_field(&mut self, off: u32, v: i32) {
        let o = off as usize;
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
        self.touch(o, 4);
    }

    /// Allocates a cell with room for `len` data bytes and fills it with `data` (zero-padded);
    /// returns its offset. First fit in the free cells; appends a bin when nothing fits.
    pub fn alloc(&mut self, data: &[u8]) -> Result<u32, HiveError> {
        let need = data
            .len()
            .checked_add(4 + 7)
            .map(|n| n & !7)
            .filter(|&n| n <= (MAX_BINS_SIZE - HBIN_HEADER_SIZE) as usize)
            .ok_or_else(|| {
                HiveError::InvalidArgument(format!("a cell of {} bytes is too big", data.len()))
            })? as u32;
        let found = self
            .free
            .iter()
            .find(|&(_, &size)| size >= need)
            .map(|(&o, &s)| (o, s));
        let (off, size) = match found {
            Some(f) => f,
            None => self.append_bin(need)?,
        };
        self.free.remove(&off);
        let rest = size - need;
        let used = if rest >= 8 {
            self.free.insert(off + need, rest);
            self.set_size_field(off + need, rest as i32);
            need
        } else {
            size
        };
        self.set_size_field(off, -(used as i32));
        let o = off as usize + 4;
        let l = used as usize - 4;
        self.bytes[o..o + l].fill(0);
        self.bytes[o..o + data.len()].copy_from_slice(data);
        self.touch(o, l);
        Ok(off)
    }

    /// Appends a bin big enough for a cell of `need` bytes; returns its free cell.
    fn append_bin(&mut self, need: u32) -> Result<(u32, u32), HiveError> {
        let size = (need + HBIN_HEADER_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let start = self.bytes.len();
        if start + size as usize > MAX_BINS_SIZE as usize {
            return Err(HiveError::InvalidArgument(
                "the hive would grow beyond 2 GiB".into(),
            ));
        }
        let start32 = start as u32;
        self.bytes.resize(start + size as usize, 0);
        let mut h = [0u8; HBIN_HEADER_SIZE as usize];
        h[..4].copy_from_slice(HBIN_SIGNATURE);
        h[4..8].copy_from_slice(&start32.to_le_bytes());
        h[8..12].copy_from_slice(&size.to_le_bytes());
        h[20..28].copy_from_slice(&self.now.to_le_bytes());
        self.bytes[start..start + h.len()].copy_from_slice(&h);
        self.bin_starts.push(start32);
        let cell = start32 + HBIN_HEADER_SIZE;
        let csize = size - HBIN_HEADER_SIZE;
        self.set_size_field(cell, csize as i32);
        self.free.insert(cell, csize);
        self.touch(start, size as usize);
        Ok((cell, csize))
    }

    /// Frees the allocated cell at `off`, merging it with free neighbours in the same bin.
    pub fn free(&mut self, off: u32) -> Result<(), HiveError> {
        let (s, l) = self.cell(off, "cell")?;
        let (bin_start, bin_end) = self.bin_of(off).unwrap_or((0, 0));
        let mut start = off;
        let mut size = (l + 4) as u32;
        let _ = s;
        // The cell's own size field turns positive even when it merges into a preceding free
        // cell, so a stale reference to it never looks like an allocated cell.
        self.set_size_field(off, size as i32);
        // Merge with the following cell.
        let next = off + size;
        if next < bin_end {
            if let Some(ns) = self.free.remove(&next) {
                size += ns;
            }
        }
        // Merge with the preceding free cell.
        if let Some((&po, &ps)) = self.free.range(..off).next_back() {
            if po + ps == off && po >= bin_start {
                self.free.remove(&po);
                start = po;
                size += ps;
            }
        }
        self.free.insert(start, size);
        self.set_size_field(start, size as i32);
        Ok(())
    }

    /// Number of hive bins.
    pub fn bin_count(&self) -> usize {
        self.bin_starts.len()
    }

    /// Number of bytes in free cells (for tests and statistics).
    pub fn free_bytes(&self) -> u64 {
        self.free.values().map(|&s| u64::from(s)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(start: u32, size: u32) -> Vec<u8> {
        let mut b = vec![0u8; size as usize];
        b[..4].copy_from_slice(HBIN_SIGNATURE);
        b[4..8].copy_from_slice(&start.to_le_bytes());
        b[8..12].copy_from_slice(&size.to_le_bytes());
        b[32..36].copy_from_slice(&((size - 32) as i32).to_le_bytes());
        b
    }

    #[test]
    fn alloc_split_free_coalesce() {
        let mut c = Cells::parse(bin(0, 4096)).unwrap();
        assert_eq!(c.free_bytes(), 4064);
        let a = c.alloc(&[1; 10]).unwrap();
        let b = c.alloc(&[2; 20]).unwrap();
        assert_eq!(a, 32);
        assert_eq!(b, 48);
        assert_eq!(c.data(a, "x").unwrap()[..10], [1; 10]);
        assert_eq!(c.free_bytes(), 4064 - 16 - 24);
        c.free(a).unwrap();
        c.free(b).unwrap();
        assert_eq!(c.free_bytes(), 4064);
        assert_eq!(c.free.len(), 1, "coalesced into one free cell");
        let d = c.alloc(&[3; 5000]).unwrap();
        assert_eq!(d, 4096 + 32, "a new bin is appended");
        assert_eq!(c.bytes.len(), 8192 + 4096);
        // The whole thing parses back.
        let again = Cells::parse(c.bytes.clone()).unwrap();
        assert_eq!(again.free_bytes(), c.free_bytes());
        assert!(c.data(d, "x").unwrap().starts_with(&[3; 5000]));
    }

    #[test]
    fn bad_bins_and_cells() {
        let mut b = bin(0, 4096);
        b[0] = b'x';
        let e = Cells::parse(b).unwrap_err().to_string();
        assert!(e.contains("hbin") && e.contains("0x1000"), "{e}");
        let mut b = bin(0, 4096);
        b[32..36].copy_from_slice(&0i32.to_le_bytes());
        let e = Cells::parse(b).unwrap_err().to_string();
        assert!(e.contains("cell at 0x1020"), "{e}");
        let mut b = bin(0, 4096);
        b[32..36].copy_from_slice(&(-8192i32).to_le_bytes());
        assert!(Cells::parse(b).is_err());
        let mut b = bin(0, 4096);
        b[32..36].copy_from_slice(&i32::MIN.to_le_bytes());
        assert!(Cells::parse(b).is_err());
        let mut b = bin(0, 4096);
        b[8..12].copy_from_slice(&8192u32.to_le_bytes());
        let e = Cells::parse(b).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut b = bin(0, 4096);
        b.extend(bin(0, 4096));
        let e = Cells::parse(b).unwrap_err().to_string();
        assert!(e.contains("0x2000") && e.contains("offset field"), "{e}");
        let c = Cells::parse(bin(0, 4096)).unwrap();
        assert!(c.cell(32, "key node").is_err(), "free cell");
        assert!(c.cell(8192, "key node").is_err(), "outside");
        assert!(c.cell(8, "key node").is_err(), "in the header");
        assert!(c.cell(33, "key node").is_err(), "unaligned");
    }
}
