//! Block-by-block verification of a migrated disk, and the SHA-256 manifest.
//!
//! [`verify`] reads two images of the same size in blocks (64 KiB by default), in parallel
//! batches of bounded size (the walker it shares with [`compare`](crate::compare)), and
//! compares each block's bytes. Stretches that both
//! images map as zero or unallocated are equal without being read (unless a manifest is
//! written: the manifest hashes every block of the first image, a zero block by its known
//! hash). Mismatching blocks are merged into byte ranges.
//!
//! The manifest is a JSON object `{"source": ..., "size": N, "block_size": N, "algorithm":
//! "sha256", "blocks": ["hex", ...]}`, one SHA-256 per block of the first image (the last block
//! may be short: its hash covers only the bytes of the disk). It is written as the blocks are
//! hashed, so memory does not grow with the disk.

use std::io::Write;
use std::ops::{ControlFlow, Range};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bytes::hex;
use crate::compare::{BlockPair, walk};
use crate::error::{Error, Result};
use crate::image::{ImageReader, reads_as_zero};
use crate::util::is_zero;

/// Default verification block size (64 KiB).
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 10;
/// Smallest block size accepted.
pub const MIN_BLOCK_SIZE: u64 = 512;
/// Largest block size accepted (64 MiB).
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;
/// Bytes of disk handled per parallel batch (bounds memory: each worker holds two blocks).
const BATCH_BYTES: u64 = 16 << 20;
/// Mismatching ranges kept in the report; more are counted but not listed.
pub const MAX_RANGES: usize = 100_000;

/// Where to write the SHA-256 manifest of the first image.
pub struct Manifest<'a> {
    /// The JSON goes here, written as the blocks are hashed.
    pub out: &'a mut dyn Write,
    /// The source named in the manifest (its path, usually).
    pub source: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Every block is equal.
    pub equal: bool,
    /// Size of both disks in bytes.
    pub size: u64,
    /// Block size used.
    pub block_size: u64,
    /// Number of blocks.
    pub blocks: u64,
    /// Number of blocks that differ.
    pub mismatched_blocks: u64,
    /// The differing blocks as merged byte ranges, in ascending order (at most [`MAX_RANGES`]).
    pub mismatches: Vec<Range<u64>>,
    /// More mismatching ranges exist than are listed.
    pub mismatches_truncated: bool,
    /// Bytes read from each image and compared (stretches zero in both are not read).
    pub bytes_compared: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// The block sizes a block-by-block operation accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSizes {
    /// A multiple of 512 from [`MIN_BLOCK_SIZE`] to [`MAX_BLOCK_SIZE`] (verify, compare).
    Sectors,
    /// A power of two from 4 KiB to [`MAX_BLOCK_SIZE`] (sync: its fingerprints and bitmaps
    /// count whole blocks of the target's formats).
    PowersOfTwo,
}

/// Checks a block size against `rule`; the one check of every block size.
pub fn check_block_size(bs: u64, rule: BlockSizes) -> Result<()> {
    match rule {
        BlockSizes::Sectors => {
            if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || bs % 512 != 0 {
                return Err(Error::InvalidArgument(format!(
                    "block size {bs}: expected a multiple of 512 from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} bytes"
                )));
            }
        }
        BlockSizes::PowersOfTwo => {
            if !bs.is_power_of_two() || !(4096..=MAX_BLOCK_SIZE).contains(&bs) {
                return Err(Error::InvalidArgument(format!(
                    "block size {bs} must be a power of two between 4 KiB and 64 MiB"
                )));
            }
        }
    }
    Ok(())
}

/// How much larger than the source a target may be: the padding formats add when they round a
/// size up (qcow2 to a 512-byte sector, a fixed VHD to a whole MiB).
pub const MAX_PADDING: u64 = 1 << 20;

/// The number of bytes [`verify`] compares: the size of `a` (the source), when `b` (the target)
/// has the same size or is larger by less than [`MAX_PADDING`] bytes that all read as zeros
/// (a sync target in a format that rounds sizes up). Anything else is an error giving both
/// sizes, naming the images `a_name` and `b_name`.
pub fn compared_size(
    a: &dyn ImageReader,
    b: &dyn ImageReader,
    a_name: &str,
    b_name: &str,
) -> Result<u64> {
    let (sa, sb) = (a.virtual_size(), b.virtual_size());
    let differ = |why: &str| {
        Error::InvalidArgument(format!(
            "the images differ in size: {a_name} is {sa} bytes, {b_name} is {sb} bytes{why}"
        ))
    };
    if sb == sa {
        return Ok(sa);
    }
    if sb < sa || sb - sa >= MAX_PADDING {
        return Err(differ(""));
    }
    let extra = sb - sa;
    if !reads_as_zero(b, sa, extra)? {
        // Less than 1 MiB: read it.
        let mut tail = vec![0u8; extra as usize];
        b.read_at(&mut tail, sa)?;
        if !is_zero(&tail) {
            return Err(differ(&format!(
                ", and {b_name}'s last {extra} bytes are not all zeros"
            )));
        }
    }
    Ok(sa)
}

/// One block's outcome.
struct BlockResult {
    equal: bool,
    read: bool,
    sha: Option<[u8; 32]>,
}

/// Compares one block of the walk (a side that was not read is zeros) and, when a manifest is
/// written, hashes the first image's bytes (a block it maps as zero by the known hash of zeros).
fn check_block(p: &BlockPair<'_>, want_sha: bool, zero_sha: &[u8; 32]) -> BlockResult {
    let (equal, read) = match (p.a, p.b) {
        (None, None) => (true, false),
        (Some(x), None) | (None, Some(x)) => (is_zero(x), true),
        (Some(x), Some(y)) => (x == y, true),
    };
    let sha = want_sha.then(|| match p.a {
        Some(x) => Sha256::digest(x).into(),
        None => *zero_sha,
    });
    BlockResult { equal, read, sha }
}

fn mio(e: std::io::Error) -> Error {
    Error::io("writing the manifest", e)
}

/// Compares `a` and `b` block by block (`block_size` bytes, see [`BlockSizes::Sectors`]) and,
/// when `manifest` is given, writes the SHA-256 of every block of `a` to it. The sizes must be
/// equal (the error names both).
pub fn verify(
    a: &dyn ImageReader,
    b: &dyn ImageReader,
    block_size: u64,
    manifest: Option<Manifest<'_>>,
) -> Result<VerifyReport> {
    verify_cancellable(a, b, block_size, manifest, None)
}

/// [`verify`] that stops with [`Error::Cancelled`] between batches (16 MiB of disk) once
/// `cancel` is set.
pub fn verify_cancellable(
    a: &dyn ImageReader,
    b: &dyn ImageReader,
    block_size: u64,
    mut manifest: Option<Manifest<'_>>,
    cancel: Option<&AtomicBool>,
) -> Result<VerifyReport> {
    check_block_size(block_size, BlockSizes::Sectors)?;
    let started = Instant::now();
    let size = compared_size(a, b, "the first", "the second")?;
    let blocks = size.div_ceil(block_size);
    let want_sha = manifest.is_some();
    if let Some(m) = manifest.as_mut() {
        let src = serde_json::to_string(&m.source)
            .map_err(|e| Error::InvalidArgument(format!("manifest source name: {e}")))?;
        write!(
            m.out,
            "{{\"source\":{src},\"size\":{size},\"block_size\":{block_size},\"algorithm\":\"sha256\",\"blocks\":["
        )
        .map_err(mio)?;
    }
    let zero_full: [u8; 32] = Sha256::digest(vec![0u8; block_size as usize]).into();
    let last_len = size - (blocks.saturating_sub(1)) * block_size;
    let zero_last: [u8; 32] = Sha256::digest(vec![0u8; last_len as usize]).into();
    let batch = (BATCH_BYTES / block_size).max(1);
    let mut report = VerifyReport {
        equal: true,
        size,
        block_size,
        blocks,
        mismatched_blocks: 0,
        mismatches: Vec::new(),
        mismatches_truncated: false,
        bytes_compared: 0,
        elapsed: Duration::ZERO,
    };
    let check = |p: &BlockPair<'_>| {
        let z = if p.len == block_size {
            &zero_full
        } else {
            &zero_last
        };
        check_block(p, want_sha, z)
    };
    // The consumer never stops the walk: every block is compared.
    let _ = walk(
        a,
        Some(b),
        0..size,
        block_size,
        batch,
        cancel,
        check,
        |off, len, r: BlockResult| {
            if r.read {
                report.bytes_compared += len;
            }
            if !r.equal {
                report.equal = false;
                report.mismatched_blocks += 1;
                let full = report.mismatches.len() >= MAX_RANGES;
                match report.mismatches.last_mut() {
                    Some(last) if last.end == off => last.end = off + len,
                    _ if full => report.mismatches_truncated = true,
                    _ => report.mismatches.push(off..off + len),
                }
            }
            if let (Some(m), Some(sha)) = (manifest.as_mut(), r.sha) {
                let sep = if off == 0 { "" } else { "," };
                write!(m.out, "{sep}\"{}\"", hex(&sha)).map_err(mio)?;
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if let Some(m) = manifest.as_mut() {
        writeln!(m.out, "]}}").map_err(mio)?;
        m.out.flush().map_err(mio)?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    fn raw(bytes: Vec<u8>) -> Box<dyn ImageReader> {
        crate::open_storage(
            Arc::new(MemStorage::from_vec(bytes)),
            &crate::OpenOptions {
                format: Some(crate::formats::RAW),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn equal_and_different_blocks_and_ranges() {
        let mut a = vec![0u8; 10 * 4096 + 100];
        for (i, x) in a.iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        let mut b = a.clone();
        let r = verify(raw(a.clone()).as_ref(), raw(b.clone()).as_ref(), 4096, None).unwrap();
        assert!(r.equal);
        assert_eq!(r.blocks, 11);
        b[4096 * 3 + 5] ^= 1;
        b[4096 * 4] ^= 1;
        b[4096 * 10 + 99] ^= 1;
        let r = verify(raw(a).as_ref(), raw(b).as_ref(), 4096, None).unwrap();
        assert!(!r.equal);
        assert_eq!(r.mismatched_blocks, 3);
        assert_eq!(
            r.mismatches,
            vec![4096 * 3..4096 * 5, 4096 * 10..4096 * 10 + 100]
        );
    }

    #[test]
    fn manifest_hashes_every_block() {
        let mut a = vec![0u8; 3 * 1024 + 512];
        a[1500] = 7;
        let mut out = Vec::new();
        let r = verify(
            raw(a.clone()).as_ref(),
            raw(a.clone()).as_ref(),
            1024,
            Some(Manifest {
                out: &mut out,
                source: "a \"q\".raw".into(),
            }),
        )
        .unwrap();
        assert!(r.equal);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["source"], "a \"q\".raw");
        assert_eq!(v["size"], 3584);
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 4);
        for (i, h) in blocks.iter().enumerate() {
            let end = ((i + 1) * 1024).min(a.len());
            let want = hex(&Sha256::digest(&a[i * 1024..end]));
            assert_eq!(h.as_str().unwrap(), want, "block {i}");
        }
    }

    #[test]
    fn a_set_cancellation_flag_stops_verification() {
        let flag = AtomicBool::new(true);
        let mut out = Vec::new();
        let e = verify_cancellable(
            raw(vec![1; 8192]).as_ref(),
            raw(vec![1; 8192]).as_ref(),
            512,
            Some(Manifest {
                out: &mut out,
                source: "a".into(),
            }),
            Some(&flag),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Cancelled);
        flag.store(false, Ordering::Relaxed);
        let r = verify_cancellable(
            raw(vec![1; 8192]).as_ref(),
            raw(vec![1; 8192]).as_ref(),
            512,
            None,
            Some(&flag),
        )
        .unwrap();
        assert!(r.equal);
    }

    #[test]
    fn size_mismatch_and_bad_block_size_are_errors() {
        // A larger target whose extra bytes are zeros (a format's padding) compares the
        // source's size.
        let r = verify(
            raw(vec![1; 4096]).as_ref(),
            raw([vec![1; 4096], vec![0; 512]].concat()).as_ref(),
            512,
            None,
        )
        .unwrap();
        assert!(r.equal && r.size == 4096);
        // Data in the padding, a smaller target, or more than MAX_PADDING: errors with both sizes.
        for (a, b) in [
            (4096, [vec![0; 4096], vec![9; 512]].concat()),
            (8192, vec![0; 4096]),
            (4096, vec![0; 4096 + MAX_PADDING as usize]),
        ] {
            let e = verify(raw(vec![0; a]).as_ref(), raw(b.clone()).as_ref(), 512, None)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&a.to_string()) && e.contains(&b.len().to_string()),
                "{e}"
            );
        }
        let e = verify(
            raw(vec![0; 4096]).as_ref(),
            raw(vec![0; 4096]).as_ref(),
            1000,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("block size 1000"), "{e}");
    }
}
