//! One standard gzip member (RFC 1952), compressed on all cores and written strictly in order.
//!
//! The input is cut into blocks of [`BLOCK_INPUT`] bytes. Each block is deflated by a rayon
//! task with a fresh compressor primed with the last 32 KiB of input before it (the deflate
//! window, as pigz does: matches may reach back into the previous block, which the decoder has
//! just produced) and ended with a sync flush, which closes the deflate data on a byte boundary
//! with an empty stored block and no "final" bit; the last block is finished instead (its last
//! deflate block carries the final bit). Raw deflate blocks ended that way concatenate into one
//! valid deflate stream. The CRC-32 of each block is computed by the same task and the
//! CRCs are combined in order (zlib's `crc32_combine`, through `flate2::Crc`), so the trailer
//! is the CRC of the whole input without a second pass. Anything that reads gzip reads the
//! result: `gzip -t`, `tar -xz`, Python's `gzip`, Go's `compress/gzip`.
//!
//! Memory stays flat: at most `max_in_flight` blocks are being compressed or waiting to be
//! written; when that many are out, feeding more input first waits for the oldest and writes
//! it. Output goes to the storage by appending at its end, in order, and nothing is ever
//! rewritten (the storage may be an append-only upload).

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Input bytes per independently deflated block.
pub const BLOCK_INPUT: usize = 1 << 20;

/// The gzip header (RFC 1952 section 2.3): magic 1f 8b, CM 8 (deflate), no flags, MTIME 0 (no
/// time stamp: the same input gives the same bytes), XFL 0, OS 3 (Unix).
pub const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// A compressed block: its deflate bytes and the CRC of its input.
struct Deflated {
    bytes: Vec<u8>,
    crc: Crc,
}

/// A block being compressed, or already known.
enum Pending {
    Running(mpsc::Receiver<Result<Deflated>>),
    Ready(Arc<Deflated>),
}

/// The deflate window: how much input before a block its matches may reach back into.
pub const WINDOW: usize = 32 * 1024;

/// Deflates `input` as one piece of a larger stream whose preceding input ends with `dict`
/// (at most [`WINDOW`] bytes): ended with a sync flush, or finished when `last`.
fn deflate_block(input: &[u8], dict: &[u8], level: u32, last: bool) -> Result<Deflated> {
    let mut c = Compress::new(Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict)
            .map_err(|e| Error::Internal(format!("internal error: deflate dictionary: {e}")))?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        let done_in = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
        let rest = input.get(done_in..).unwrap_or_default();
        if out.capacity() - out.len() < 4096 {
            out.reserve(rest.len() / 2 + 4096);
        }
        let status = c
            .compress_vec(rest, &mut out, flush)
            .map_err(|e| Error::Internal(format!("internal error: deflate failed: {e}")))?;
        let consumed = c.total_in() == input.len() as u64;
        match status {
            Status::StreamEnd => break,
            // A flush is complete once all input went in and the output had room to spare.
            Status::Ok | Status::BufError if !last && consumed && out.len() < out.capacity() => {
                break;
            }
            Status::Ok | Status::BufError => {}
        }
    }
    let mut crc = Crc::new();
    crc.update(input);
    Ok(Deflated { bytes: out, crc })
}

/// The writer of one gzip member: see the module documentation.
pub struct ParallelGzip {
    out: Arc<dyn Storage>,
    /// Where the next output byte goes (the storage's current end).
    out_pos: u64,
    level: u32,
    block: usize,
    /// Input not yet handed to a task.
    input: Vec<u8>,
    pending: VecDeque<Pending>,
    max_in_flight: usize,
    /// CRC and length of the input written out so far.
    crc: Crc,
    input_len: u64,
    /// Input buffers handed back by finished tasks.
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
    /// A block of zeros compressed once, without a dictionary (disks hold long runs of
    /// zeros).
    zero_block: Option<Arc<Deflated>>,
    /// The last [`WINDOW`] bytes of input handed to a task: the next block's dictionary.
    window: Vec<u8>,
}

impl std::fmt::Debug for ParallelGzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzip")
            .field("out_pos", &self.out_pos)
            .field("level", &self.level)
            .field("input_len", &self.input_len)
            .finish_non_exhaustive()
    }
}

impl ParallelGzip {
    /// Starts a gzip member at the current end of `out` (offset `out_pos`), deflating at
    /// `level` (1 to 9) with at most `max_in_flight` blocks in memory.
    pub fn new(
        out: Arc<dyn Storage>,
        out_pos: u64,
        level: u32,
        max_in_flight: usize,
    ) -> Result<Self> {
        Self::with_block(out, out_pos, level, max_in_flight, BLOCK_INPUT)
    }

    /// As [`new`](Self::new) with `block` input bytes per deflate block.
    pub fn with_block(
        out: Arc<dyn Storage>,
        out_pos: u64,
        level: u32,
        max_in_flight: usize,
        block: usize,
    ) -> Result<Self> {
        let mut g = ParallelGzip {
            out,
            out_pos,
            level,
            block: block.max(1),
            input: Vec::new(),
            pending: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            crc: Crc::new(),
            input_len: 0,
            buffers: Arc::new(Mutex::new(Vec::new())),
            zero_block: None,
            window: Vec::with_capacity(WINDOW),
        };
        g.append(&HEADER)?;
        Ok(g)
    }

    /// Bytes written to the storage so far.
    pub fn output_len(&self) -> u64 {
        self.out_pos
    }

    /// Compresses `data` as the next input bytes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.input.capacity() == 0 {
                self.input = self.take_buffer();
            }
            let n = (self.block - self.input.len()).min(data.len());
            self.input.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.input.len() == self.block {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Compresses `len` zero bytes as the next input bytes.
    pub fn write_zeros(&mut self, mut len: u64) -> Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while len > 0 {
            if self.input.is_empty() && len >= self.block as u64 {
                // A whole block of zeros: the same compressed bytes every time. Compressed
                // without a dictionary, so that it is right after whatever came before (its
                // matches reach only into its own zeros).
                let z = match &self.zero_block {
                    Some(z) => z.clone(),
                    None => {
                        let zeros = vec![0; self.block];
                        let z = Arc::new(deflate_block(&zeros, &[], self.level, false)?);
                        self.zero_block = Some(z.clone());
                        z
                    }
                };
                self.push(Pending::Ready(z))?;
                self.window.clear();
                self.window.resize(WINDOW.min(self.block), 0);
                len -= self.block as u64;
                continue;
            }
            let room = (self.block - self.input.len()) as u64;
            let n = len.min(room).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .lock()
            .ok()
            .and_then(|mut b| b.pop())
            .unwrap_or_else(|| Vec::with_capacity(self.block))
    }

    /// Hands the buffered input to a task.
    fn submit(&mut self) -> Result<()> {
        let input = std::mem::take(&mut self.input);
        let window = tail(&self.window, &input);
        let dict = std::mem::replace(&mut self.window, window);
        let (tx, rx) = mpsc::channel();
        let (level, buffers) = (self.level, self.buffers.clone());
        rayon::spawn(move || {
            let r = std::panic::catch_unwind(|| deflate_block(&input, &dict, level, false))
                .unwrap_or_else(|_| {
                    Err(Error::Internal(
                        "internal error: a deflate task panicked".into(),
                    ))
                });
            let mut input = input;
            input.clear();
            if let Ok(mut b) = buffers.lock() {
                b.push(input);
            }
            // The receiver is gone only when the writer was dropped: nothing to tell.
            let _ = tx.send(r);
        });
        self.push(Pending::Running(rx))
    }

    /// Queues a block, first writing out the oldest while too many are out.
    fn push(&mut self, p: Pending) -> Result<()> {
        while self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        self.pending.push_back(p);
        Ok(())
    }

    fn write_oldest(&mut self) -> Result<()> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let d = match p {
            Pending::Ready(d) => d,
            Pending::Running(rx) => Arc::new(rx.recv().map_err(|_| {
                Error::Internal("internal error: a deflate task vanished".into())
            })??),
        };
        self.append(&d.bytes)?;
        self.input_len += u64::from(d.crc.amount());
        self.crc.combine(&d.crc);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all_at(bytes, self.out_pos)
            .map_err(|e| Error::io("writing the gzip stream", e))?;
        self.out_pos += bytes.len() as u64;
        Ok(())
    }

    /// Compresses the rest of the input as the final block, writes the trailer (CRC-32 and the
    /// input length modulo 2^32) and returns the total length written.
    pub fn finish(mut self) -> Result<u64> {
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let last = deflate_block(&self.input, &self.window, self.level, true)?;
        self.append(&last.bytes)?;
        self.input_len += self.input.len() as u64;
        self.crc.combine(&last.crc);
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE: the input length modulo 2^32 (the truncation is the format's).
        trailer[4..].copy_from_slice(&(self.input_len as u32).to_le_bytes());
        self.append(&trailer)?;
        Ok(self.out_pos)
    }
}

/// The last [`WINDOW`] bytes of `before` followed by `block`.
fn tail(before: &[u8], block: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(WINDOW);
    let from_block = block.len().min(WINDOW);
    let from_before = (WINDOW - from_block).min(before.len());
    v.extend_from_slice(&before[before.len() - from_before..]);
    v.extend_from_slice(&block[block.len() - from_block..]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use flate2::read::{GzDecoder, MultiGzDecoder};
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut x = 0x1234_5678u32;
        for (i, b) in v.iter_mut().enumerate() {
            // Text-like in places, random in others, zeros in the rest.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = match (i / 5000) % 3 {
                0 => b"the quick brown fox "[i % 20],
                1 => x as u8,
                _ => 0,
            };
        }
        v
    }

    fn gzip_of(pieces: &[&[u8]], zeros_after: u64, block: usize, inflight: usize) -> Vec<u8> {
        let out = Arc::new(MemStorage::new());
        let mut g = ParallelGzip::with_block(out.clone(), 0, 6, inflight, block).unwrap();
        for p in pieces {
            g.write(p).unwrap();
        }
        g.write_zeros(zeros_after).unwrap();
        let n = g.finish().unwrap();
        let v = out.to_vec();
        assert_eq!(n, v.len() as u64);
        v
    }

    #[test]
    fn one_member_that_inflates_to_the_input() {
        let data = sample(300_000);
        let gz = gzip_of(&[&data[..1000], &data[1000..]], 70_000, 64 * 1024, 3);
        assert_eq!(&gz[..10], &HEADER);
        // A single-member decoder reads it all: one member, not several glued together.
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        let mut want = data.clone();
        want.resize(370_000, 0);
        assert_eq!(back, want);
        let mut multi = Vec::new();
        MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut multi)
            .unwrap();
        assert_eq!(multi, want);
        // Trailer: CRC-32 of the whole input, ISIZE.
        let t = &gz[gz.len() - 8..];
        let mut crc = Crc::new();
        crc.update(&want);
        assert_eq!(u32::from_le_bytes(t[..4].try_into().unwrap()), crc.sum());
        assert_eq!(u32::from_le_bytes(t[4..].try_into().unwrap()), 370_000);
    }

    #[test]
    fn block_boundaries_do_not_change_the_content() {
        let data = sample(200_000);
        for block in [1, 511, 4096, 65536, 1 << 20] {
            let gz = gzip_of(&[&data], 0, block, 2);
            let mut back = Vec::new();
            GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "block {block}");
        }
        // The same input gives the same bytes.
        assert_eq!(gzip_of(&[&data], 5, 4096, 2), gzip_of(&[&data], 5, 4096, 7));
    }

    #[test]
    fn empty_input_and_zero_blocks() {
        let gz = gzip_of(&[], 0, 4096, 2);
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
        // Whole zero blocks come from the cached block: still the right content and CRC.
        let gz = gzip_of(&[b"x"], 5 * 4096 + 3, 4096, 2);
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        let mut want = vec![b'x'];
        want.resize(1 + 5 * 4096 + 3, 0);
        assert_eq!(back, want);
        // A zero block right after incompressible bytes, and data right after zero blocks.
        let noise = sample(20_000);
        let gz = gzip_of(&[&noise[5000..10000]], 4 * 4096, 4096, 2);
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        let mut want = noise[5000..10000].to_vec();
        want.resize(5000 + 4 * 4096, 0);
        assert_eq!(back, want);
        let gz = gzip_of(&[], 8 * 4096, 4096, 2);
        assert!(gz.len() < 400, "{}", gz.len());
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![0; 8 * 4096]);
    }

    /// The dictionary carries the window across blocks, also when blocks are smaller than
    /// the window, and when zero blocks and data blocks alternate.
    #[test]
    fn the_window_reaches_back_across_blocks() {
        let text: Vec<u8> = b"a line of text that repeats every so often\n"
            .iter()
            .copied()
            .cycle()
            .take(300_000)
            .collect();
        for block in [1000, 4096, 40_000, 1 << 20] {
            let out = Arc::new(MemStorage::new());
            let mut g = ParallelGzip::with_block(out.clone(), 0, 6, 3, block).unwrap();
            let mut want = Vec::new();
            for i in 0..6 {
                g.write(&text[..50_000 + i * 1000]).unwrap();
                want.extend_from_slice(&text[..50_000 + i * 1000]);
                g.write_zeros(3 * block as u64 + 7).unwrap();
                want.resize(want.len() + 3 * block + 7, 0);
            }
            g.finish().unwrap();
            let gz = out.to_vec();
            let mut back = Vec::new();
            GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
            assert!(back == want, "block {block}");
        }
        // With the window, repeated text costs next to nothing after the first block.
        let small = gzip_of(&[&text], 0, 4096, 2);
        assert!(small.len() < 4000, "{}", small.len());
    }

    #[test]
    fn a_truncated_stream_is_refused_by_a_reader() {
        let gz = gzip_of(&[&sample(100_000)], 0, 16384, 2);
        let mut back = Vec::new();
        assert!(
            GzDecoder::new(&gz[..gz.len() - 9])
                .read_to_end(&mut back)
                .is_err()
        );
    }
}
