//! Content comparison of two images of any formats (`diskconv compare`), and the block walker
//! that [`compare`] and [`verify`](crate::verify) share.
//!
//! The walker (`walk`, crate-internal) cuts a range of two images into blocks handled on the
//! rayon pool, a batch at a time so memory stays bounded; stretches that an image maps as zero
//! or unallocated are not read at all, and the results come back in disk order.

use std::ops::{ControlFlow, Range};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::image::{ImageReader, read_skipping_holes, reads_as_zero};
use crate::util::is_zero;

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

/// One block of a [`walk`]: where it lies and what the two images hold there. `None` stands for
/// an image whose map says the whole block is zero or unallocated (it was not read), or for the
/// missing second image.
#[derive(Debug)]
pub(crate) struct BlockPair<'a> {
    /// Offset of the block on the virtual disk.
    pub offset: u64,
    /// Length of the block.
    pub len: u64,
    /// The first image's bytes.
    pub a: Option<&'a [u8]>,
    /// The second image's bytes.
    pub b: Option<&'a [u8]>,
}

/// Reads one block of both images (only the sides that hold data) and hands it to `check`.
fn read_pair<T>(
    a: &dyn ImageReader,
    b: Option<&dyn ImageReader>,
    offset: u64,
    len: u64,
    check: &(impl Fn(&BlockPair<'_>) -> T + Sync),
) -> Result<T> {
    let read = |img: &dyn ImageReader| -> Result<Option<Vec<u8>>> {
        if reads_as_zero(img, offset, len)? {
            return Ok(None);
        }
        // len <= the walker's block size, which its callers bound.
        let mut buf = vec![0u8; len as usize];
        read_skipping_holes(img, &mut buf, offset)?;
        Ok(Some(buf))
    };
    let ba = read(a)?;
    let bb = match b {
        Some(b) => read(b)?,
        None => None,
    };
    Ok(check(&BlockPair {
        offset,
        len,
        a: ba.as_deref(),
        b: bb.as_deref(),
    }))
}

/// Walks `range` of the images `a` and `b` (`None`: a second image that reads as zeros, e.g.
/// past the end of the shorter of two images) in blocks of `block_size` bytes (the last one
/// may be shorter), `batch` blocks at a time in parallel.
///
/// `check` runs on the rayon pool for every block; `consume` then gets each block's offset,
/// length and `check` result in disk order, and stops the walk by returning
/// [`ControlFlow::Break`]. A read error is returned when its block's turn comes. With `cancel`
/// set, the walk stops with [`Error::Cancelled`] before the next batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn walk<T: Send>(
    a: &dyn ImageReader,
    b: Option<&dyn ImageReader>,
    range: Range<u64>,
    block_size: u64,
    batch: u64,
    cancel: Option<&AtomicBool>,
    check: impl Fn(&BlockPair<'_>) -> T + Sync,
    mut consume: impl FnMut(u64, u64, T) -> Result<ControlFlow<()>>,
) -> Result<ControlFlow<()>> {
    let block_size = block_size.max(1);
    let mut pos = range.start;
    while pos < range.end {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let mut blocks = Vec::new();
        let mut at = pos;
        while at < range.end && (blocks.len() as u64) < batch.max(1) {
            let len = block_size.min(range.end - at);
            blocks.push((at, len));
            at += len;
        }
        let results: Vec<Result<T>> = blocks
            .par_iter()
            .map(|&(o, l)| read_pair(a, b, o, l, &check))
            .collect();
        for (&(o, l), r) in blocks.iter().zip(results) {
            if consume(o, l, r?)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        pos = at;
    }
    Ok(ControlFlow::Continue(()))
}

/// Offset of the first non-zero byte of `x`: whole 4 KiB blocks first, then bytes.
fn first_nonzero(x: &[u8]) -> Option<usize> {
    let blk = x.chunks(4096).position(|c| !is_zero(c))?;
    let s = blk * 4096;
    x[s..].iter().position(|&v| v != 0).map(|i| s + i)
}

/// The disk offset of the first byte where the two sides of `p` differ (a side that was not
/// read is zeros), `None` when they are equal.
fn first_difference(p: &BlockPair<'_>) -> Option<u64> {
    let first = match (p.a, p.b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => first_nonzero(x),
        (Some(x), Some(y)) if x == y => None,
        // Whole 4 KiB blocks first, then bytes.
        (Some(x), Some(y)) => x
            .chunks(4096)
            .zip(y.chunks(4096))
            .position(|(u, v)| u != v)
            .and_then(|blk| {
                let s = blk * 4096;
                x[s..]
                    .iter()
                    .zip(&y[s..])
                    .position(|(u, v)| u != v)
                    .map(|i| s + i)
            }),
    };
    first.map(|i| p.offset + i as u64)
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
    let mut found = None;
    let mut stop_at_first = |_offset, _len, diff: Option<u64>| {
        found = diff;
        Ok(if diff.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    };
    // The common part, then the longer image's extra part, which must read as zeros.
    let walked = walk(
        a,
        Some(b),
        0..common,
        CHUNK,
        batch,
        None,
        first_difference,
        &mut stop_at_first,
    )?;
    if walked.is_continue() {
        let _ = walk(
            longer,
            None,
            common..long_size,
            CHUNK,
            batch,
            None,
            first_difference,
            &mut stop_at_first,
        )?;
    }
    Ok(match found {
        Some(offset) => Comparison::Differ { offset },
        None => Comparison::Same,
    })
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

    #[test]
    fn the_longer_images_tail_after_an_unaligned_end_is_compared() {
        // The shorter image ends 512 KiB into a 1 MiB chunk; the longer one has data in the
        // rest of that chunk (the chunk after the shorter end was once skipped).
        let a = vec![5u8; 3 << 19];
        let mut b = a.clone();
        b.resize(3 << 20, 0);
        b[7 << 18] = 1;
        assert_eq!(
            compare(&raw(a.clone()), &raw(b.clone()), false).unwrap(),
            Comparison::Differ { offset: 7 << 18 }
        );
        assert_eq!(
            compare(&raw(b), &raw(a), false).unwrap(),
            Comparison::Differ { offset: 7 << 18 }
        );
    }
}
