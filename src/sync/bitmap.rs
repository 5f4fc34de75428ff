//! A changed-block bitmap: one bit per block of a disk.

use crate::bytes::{le32, le64};
use crate::error::{Error, Result};

/// `DCBM`: magic of the on-disk form of a [`BlockBitmap`].
const MAGIC: &[u8; 4] = b"DCBM";

/// One bit per block of a disk of `disk_size` bytes cut into blocks of `block_size` bytes (the
/// last block may be short).
#[derive(Clone, PartialEq, Eq)]
pub struct BlockBitmap {
    block_size: u64,
    disk_size: u64,
    blocks: u64,
    words: Vec<u64>,
}

impl std::fmt::Debug for BlockBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBitmap")
            .field("block_size", &self.block_size)
            .field("disk_size", &self.disk_size)
            .field("blocks", &self.blocks)
            .field("set", &self.count())
            .finish()
    }
}

impl BlockBitmap {
    /// An empty bitmap. `block_size` must be a power of two of at least 512 bytes.
    pub fn new(disk_size: u64, block_size: u64) -> Result<BlockBitmap> {
        if block_size < 512 || !block_size.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "block size {block_size} is not a power of two of at least 512 bytes"
            )));
        }
        let blocks = disk_size.div_ceil(block_size);
        let words = usize::try_from(blocks.div_ceil(64))
            .map_err(|_| Error::InvalidArgument(format!("{blocks} blocks do not fit in memory")))?;
        Ok(BlockBitmap {
            block_size,
            disk_size,
            blocks,
            words: vec![0; words],
        })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// Size of the disk in bytes.
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }
    /// Number of blocks (bits).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// The byte range of block `i` (the last one may be short).
    pub fn block_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = i * self.block_size;
        start..(start + self.block_size).min(self.disk_size)
    }

    /// Whether block `i` is set (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.blocks && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets block `i` (ignored past the end).
    pub fn set(&mut self, i: u64) {
        if i < self.blocks {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
        }
    }
    /// Clears block `i`.
    pub fn clear(&mut self, i: u64) {
        if i < self.blocks {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }
    /// Sets every block.
    pub fn set_all(&mut self) {
        for w in &mut self.words {
            *w = u64::MAX;
        }
        self.trim();
    }
    /// Clears every block.
    pub fn clear_all(&mut self) {
        for w in &mut self.words {
            *w = 0;
        }
    }
    fn trim(&mut self) {
        let rem = self.blocks % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Sets every block that overlaps the byte range `range` (clipped to the disk).
    pub fn set_range(&mut self, range: std::ops::Range<u64>) {
        let end = range.end.min(self.disk_size);
        if range.start >= end {
            return;
        }
        let first = range.start / self.block_size;
        let last = (end - 1) / self.block_size;
        for i in first..=last {
            self.set(i);
        }
    }

    /// Number of set blocks.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
    /// Whether no block is set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    fn check_same_shape(&self, other: &BlockBitmap) -> Result<()> {
        if self.block_size != other.block_size || self.disk_size != other.disk_size {
            return Err(Error::InvalidArgument(format!(
                "bitmaps differ in shape: {} bytes in {}-byte blocks vs {} bytes in {}-byte blocks",
                self.disk_size, self.block_size, other.disk_size, other.block_size
            )));
        }
        Ok(())
    }
    /// `self |= other`.
    pub fn union_with(&mut self, other: &BlockBitmap) -> Result<()> {
        self.check_same_shape(other)?;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        Ok(())
    }
    /// `self &= other`.
    pub fn intersect_with(&mut self, other: &BlockBitmap) -> Result<()> {
        self.check_same_shape(other)?;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
        Ok(())
    }
    /// `self &= !other`.
    pub fn subtract(&mut self, other: &BlockBitmap) -> Result<()> {
        self.check_same_shape(other)?;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
        Ok(())
    }

    /// The set blocks in ascending order.
    pub fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(wi as u64 * 64 + b)
            })
        })
    }

    /// Runs of consecutive set blocks, as block-index ranges.
    pub fn runs(&self) -> Vec<std::ops::Range<u64>> {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for i in self.iter_set() {
            match out.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// The compact on-disk form: `DCBM`, version 1, block size, disk size, number of runs, then
    /// each run of set blocks as (first block, length) in LEB128 varints, deltas from the end of
    /// the previous run. A bitmap of a few scattered changes takes a few bytes per run; a full
    /// one, a handful of bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let runs = self.runs();
        let mut v = Vec::with_capacity(32 + runs.len() * 4);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&self.block_size.to_le_bytes());
        v.extend_from_slice(&self.disk_size.to_le_bytes());
        v.extend_from_slice(&(runs.len() as u64).to_le_bytes());
        let mut prev = 0u64;
        for r in runs {
            put_varint(&mut v, r.start - prev);
            put_varint(&mut v, r.end - r.start);
            prev = r.end;
        }
        v
    }

    /// Parses the form written by [`to_bytes`](Self::to_bytes); `what` names the file or field
    /// for error messages.
    pub fn from_bytes(b: &[u8], what: &str) -> Result<BlockBitmap> {
        let bad = |d: String| Error::Corrupt(format!("{what}: changed-block bitmap {d}"));
        if b.len() < 32 || &b[..4] != MAGIC {
            return Err(bad("has no 'DCBM' header".into()));
        }
        // b holds at least the 32-byte header (checked above).
        let version = le32(b, 4);
        if version != 1 {
            return Err(bad(format!("has version {version}, expected 1")));
        }
        let mut bm = BlockBitmap::new(le64(b, 16), le64(b, 8)).map_err(|e| bad(e.to_string()))?;
        let nruns = le64(b, 24);
        let mut pos = 32usize;
        let mut prev = 0u64;
        for n in 0..nruns {
            let (gap, p) =
                get_varint(b, pos).ok_or_else(|| bad(format!("run {n} is truncated")))?;
            let (len, p) = get_varint(b, p).ok_or_else(|| bad(format!("run {n} is truncated")))?;
            pos = p;
            let start = prev
                .checked_add(gap)
                .filter(|s| *s < bm.blocks)
                .ok_or_else(|| bad(format!("run {n} starts past the last block")))?;
            let end = start
                .checked_add(len)
                .filter(|e| *e <= bm.blocks && len > 0)
                .ok_or_else(|| bad(format!("run {n} ends past the last block or is empty")))?;
            for i in start..end {
                bm.set(i);
            }
            prev = end;
        }
        if pos != b.len() {
            return Err(bad(format!(
                "has {} bytes after its last run",
                b.len() - pos
            )));
        }
        Ok(bm)
    }
}

fn put_varint(v: &mut Vec<u8>, mut x: u64) {
    loop {
        let byte = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            v.push(byte);
            return;
        }
        v.push(byte | 0x80);
    }
}

fn get_varint(b: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(pos)?;
        pos += 1;
        x |= ((byte & 0x7f) as u64).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some((x, pos));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_ranges_and_ops() {
        let mut a = BlockBitmap::new(10 * 65536 + 100, 65536).unwrap();
        assert_eq!(a.blocks(), 11);
        a.set_range(65535..65537); // touches blocks 0 and 1
        a.set_range(10 * 65536..u64::MAX); // the short last block
        assert_eq!(a.iter_set().collect::<Vec<_>>(), vec![0, 1, 10]);
        assert_eq!(a.block_range(10), 655360..655460);
        let mut b = BlockBitmap::new(10 * 65536 + 100, 65536).unwrap();
        b.set(1);
        b.set(5);
        let mut u = a.clone();
        u.union_with(&b).unwrap();
        assert_eq!(u.count(), 4);
        let mut i = a.clone();
        i.intersect_with(&b).unwrap();
        assert_eq!(i.iter_set().collect::<Vec<_>>(), vec![1]);
        let mut d = a.clone();
        d.subtract(&b).unwrap();
        assert_eq!(d.iter_set().collect::<Vec<_>>(), vec![0, 10]);
        let other = BlockBitmap::new(100, 512).unwrap();
        assert!(a.union_with(&other).is_err());
        let mut f = BlockBitmap::new(130 * 512, 512).unwrap();
        f.set_all();
        assert_eq!(f.count(), 130);
        assert!(BlockBitmap::new(100, 1000).is_err());
    }

    #[test]
    fn on_disk_form_round_trips_and_rejects_damage() {
        let mut a = BlockBitmap::new(1 << 30, 65536).unwrap();
        for i in [0, 1, 2, 100, 16383, 5000] {
            a.set(i);
        }
        let bytes = a.to_bytes();
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
        assert_eq!(BlockBitmap::from_bytes(&bytes, "t").unwrap(), a);
        let mut full = BlockBitmap::new(1 << 40, 65536).unwrap();
        full.set_all();
        assert!(full.to_bytes().len() < 48);
        for cut in 0..bytes.len() {
            assert!(
                BlockBitmap::from_bytes(&bytes[..cut], "t").is_err(),
                "cut {cut}"
            );
        }
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(BlockBitmap::from_bytes(&bad, "t").is_err());
        let mut bad = bytes.clone();
        bad[33] = 0x7f; // a run past the end
        assert!(BlockBitmap::from_bytes(&bad, "t").is_err());
    }
}
