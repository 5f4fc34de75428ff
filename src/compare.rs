//! Content comparison of two images of any formats (`diskconv compare`).
//!
//! Work is cut into chunks compared on the rayon pool, a batch at a time so memory stays
//! bounded; stretches that both images map as zero or unallocated are not read at all.

use rayon::prelude::*;

use crate::error::Result;
use crate::image::{ImageReader, read_skipping_holes, reads_as_zero};

/// Bytes compared per unit of parallel work.
const CHUNK: u64 = 1 << 20;

/// The outcome of [`compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Same contents (a longer image's extra part reads as zeros, unless strict).
    Same,
    /// The contents differ; the first differing byte is at `offset`.
    Differ {
        /// Offset of the first differing byte.
        offset: u64,
    },
    /// Strict mode: the sizes differ.
    SizeDiffers {
        /// Size of the first image.
        a: u64,
        /// Size of the second image.
        b: u64,
    },
}

/// First differing offset inside one chunk, `None` when equal. `b` may be `None` for the part
/// of the longer image past the end of the shorter one, which must read as zeros.
fn compare_chunk(
    a: &dyn ImageReader,
    b: Option<&dyn ImageReader>,
    offset: u64,
    len: u64,
) -> Result<Option<u64>> {
    let a_hole = reads_as_zero(a, offset, len)?;
    let b_hole = match b {
        Some(b) => reads_as_zero(b, offset, len)?,
        None => true,
    };
    if a_hole && b_hole {
        return Ok(None);
    }
    let mut ba = vec![0u8; len as usize];
    if !a_hole {
        read_skipping_holes(a, &mut ba, offset)?;
    }
    let mut bb = vec![0u8; len as usize];
    if let (Some(b), false) = (b, b_hole) {
        read_skipping_holes(b, &mut bb, offset)?;
    }
    if ba == bb {
        return Ok(None);
    }
    // Find the first differing byte: whole 4 KiB blocks first, then bytes.
    let first = ba
        .chunks(4096)
        .zip(bb.chunks(4096))
        .position(|(x, y)| x != y)
        .map(|blk| {
            let s = blk * 4096;
            s + ba[s..]
                .iter()
                .zip(&bb[s..])
                .position(|(x, y)| x != y)
                .unwrap_or(0)
        })
        .unwrap_or(0);
    Ok(Some(offset + first as u64))
}

/// Compares the virtual disks of `a` and `b`.
///
/// With `strict`, images of different sizes are reported as such; otherwise the extra part of
/// the longer one must read as zeros (as `qemu-img compare` does).
pub fn compare(a: &dyn ImageReader, b: &dyn ImageReader, strict: bool) -> Result<Comparison> {
    let (sa, sb) = (a.virtual_size(), b.virtual_size());
    if strict && sa != sb {
        return Ok(Comparison::SizeDiffers { a: sa, b: sb });
    }
    let common = sa.min(sb);
    let (longer, long_size): (&dyn ImageReader, u64) = if sa >= sb { (a, sa) } else { (b, sb) };
    let batch = (rayon::current_num_threads() * 4).max(4) as u64;
    let mut pos = 0u64;
    while pos < long_size {
        let ranges: Vec<(u64, u64)> = (0..batch)
            .map(|i| pos + i * CHUNK)
            .take_while(|&o| o < long_size)
            .map(|o| {
                // Chunks never straddle the end of the shorter image.
                let end = if o < common {
                    (o + CHUNK).min(common)
                } else {
                    (o + CHUNK).min(long_size)
                };
                (o, end - o)
            })
            .collect();
        let results: Vec<Result<Option<u64>>> = ranges
            .par_iter()
            .map(|&(o, l)| {
                if o < common {
                    compare_chunk(a, Some(b), o, l)
                } else {
                    compare_chunk(longer, None, o, l)
                }
            })
            .collect();
        for r in results {
            if let Some(offset) = r? {
                return Ok(Comparison::Differ { offset });
            }
        }
        let (last_off, last_len) = ranges[ranges.len() - 1];
        pos = last_off + last_len;
    }
    Ok(Comparison::Same)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::RawReader;
    use crate::storage::MemStorage;
    use std::sync::Arc;

    fn raw(v: Vec<u8>) -> RawReader {
        RawReader::new(Arc::new(MemStorage::from_vec(v)), None).unwrap()
    }

    #[test]
    fn finds_first_difference_and_handles_sizes() {
        let a = vec![5u8; 3 << 20];
        let mut b = a.clone();
        assert_eq!(
            compare(&raw(a.clone()), &raw(b.clone()), false).unwrap(),
            Comparison::Same
        );
        b[(2 << 20) + 12345] = 0;
        b[(2 << 20) + 99999] = 0;
        assert_eq!(
            compare(&raw(a.clone()), &raw(b), false).unwrap(),
            Comparison::Differ {
                offset: (2 << 20) + 12345
            }
        );
        let mut longer = a.clone();
        longer.extend(vec![0u8; 5000]);
        assert_eq!(
            compare(&raw(a.clone()), &raw(longer.clone()), false).unwrap(),
            Comparison::Same
        );
        assert!(matches!(
            compare(&raw(a.clone()), &raw(longer.clone()), true).unwrap(),
            Comparison::SizeDiffers { .. }
        ));
        *longer.last_mut().unwrap() = 1;
        assert_eq!(
            compare(&raw(longer.clone()), &raw(a), false).unwrap(),
            Comparison::Differ {
                offset: longer.len() as u64 - 1
            }
        );
    }
}
