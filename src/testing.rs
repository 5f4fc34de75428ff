//! Contract checks for implementations of the image traits, shared by the unit tests of every
//! format and by the integration tests (and usable by whoever adds a format).
//!
//! [`random_operations`] is the one random-operations check of an [`ImageUpdater`]: seeded
//! random writes and zeroings (any alignment, spanning blocks, whole blocks, once the whole
//! window), applied alike to the updater and to a raw model, with reads back through the
//! updater (it is an [`ImageReader`](crate::image::ImageReader) of what it updates) compared with the model as it goes
//! and at the end.

use crate::image::{ImageUpdater, read_skipping_holes};
use crate::storage::Storage;

/// What [`random_operations`] does.
#[derive(Debug, Clone)]
pub struct RandomOps {
    /// Seed of the generator: the same seed gives the same operations.
    pub seed: u64,
    /// Number of operations.
    pub ops: usize,
    /// Longest write (and read), in bytes.
    pub max_len: u64,
    /// Longest zeroing, in bytes (at most an eighth of the window is zeroed at once).
    pub max_zero: u64,
    /// Operations stay below this offset (clipped to the disk): for huge, empty disks.
    pub window: u64,
    /// Size of the aligned whole-block zeroings (the format's block, grain or cluster); 0
    /// for none.
    pub block: u64,
    /// A flush after about one operation in this many; 0 never flushes (the caller decides,
    /// e.g. to test what a crash before the flush leaves).
    pub flush_one_in: u64,
    /// Zero the whole window once, a third of the way through.
    pub zero_window_once: bool,
}

impl RandomOps {
    /// `ops` operations from `seed`, writes and zeroings of up to `max_len` bytes anywhere on
    /// the disk, no whole-block zeroings, no flushes, no whole-window zeroing.
    pub fn new(seed: u64, ops: usize, max_len: u64) -> RandomOps {
        RandomOps {
            seed,
            ops,
            max_len,
            max_zero: max_len,
            window: u64::MAX,
            block: 0,
            flush_one_in: 0,
            zero_window_once: false,
        }
    }
}

/// A xorshift generator: deterministic and dependency free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Applies the operations `o` describes to `up` and to `model` (the raw bytes the image
/// must read as, at least [`virtual_size`](crate::image::ImageReader::virtual_size) long, updated here), and checks the
/// updater's contract on the way:
///
/// - every write and zeroing inside the disk succeeds, and reads back through the updater
///   (its own reads, and its map with [`read_skipping_holes`]) as the model;
/// - writes and zeroings past the end fail and change nothing;
/// - at the end the whole window reads as the model.
///
/// The error says which operation (and seed) went wrong.
pub fn random_operations(
    up: &mut dyn ImageUpdater,
    model: &dyn Storage,
    o: &RandomOps,
) -> Result<(), String> {
    let size = up.virtual_size();
    let window = o.window.min(size);
    if window == 0 {
        return Err("the disk (or the window) is empty".into());
    }
    let mut rng = Rng(o.seed | 1);
    let seed = o.seed;
    let fail = |i: usize, what: String| format!("seed {seed}, operation {i}: {what}");
    let model_write = |buf: &[u8], off: u64| {
        model
            .write_all_at(buf, off)
            .map_err(|e| format!("writing the model: {e}"))
    };
    for i in 0..o.ops {
        let (off, len) = if o.zero_window_once && i == o.ops / 3 {
            up.write_zeroes(0, window)
                .map_err(|e| fail(i, format!("zeroing the window: {}", e.chain())))?;
            model_write(&vec![0u8; window as usize], 0)?;
            (0, window.min(1 << 20))
        } else {
            match rng.below(16) {
                0..=8 => {
                    let len = 1 + rng.below(o.max_len.min(window));
                    let off = rng.below(window - len + 1);
                    let fill = rng.next();
                    let buf: Vec<u8> = (0..len)
                        .map(|k| ((fill.rotate_left((k % 64) as u32) as u8) ^ (k as u8)) | 1)
                        .collect();
                    up.write_at(&buf, off).map_err(|e| {
                        fail(
                            i,
                            format!("write of {len} bytes at {off:#x}: {}", e.chain()),
                        )
                    })?;
                    model_write(&buf, off)?;
                    (off, len)
                }
                9..=11 => {
                    // At most an eighth of the window, so zeroes do not wipe everything.
                    let len = 1 + rng.below(o.max_zero.min((window / 8).max(1)));
                    let off = rng.below(window - len + 1);
                    up.write_zeroes(off, len).map_err(|e| {
                        fail(i, format!("zeroing {len} bytes at {off:#x}: {}", e.chain()))
                    })?;
                    model_write(&vec![0u8; len as usize], off)?;
                    (off, len)
                }
                12 | 13 if o.block > 0 && window >= o.block => {
                    let blocks = window / o.block;
                    let first = rng.below(blocks);
                    let n = 1 + rng.below((blocks - first).min(2));
                    let (off, len) = (first * o.block, n * o.block);
                    up.write_zeroes(off, len).map_err(|e| {
                        fail(i, format!("zeroing blocks {first}+{n}: {}", e.chain()))
                    })?;
                    model_write(&vec![0u8; len as usize], off)?;
                    (off, len)
                }
                _ => {
                    // A read of any range, compared below.
                    let len = 1 + rng.below(o.max_len.min(window));
                    (rng.below(window - len + 1), len)
                }
            }
        };
        if o.flush_one_in > 0 && rng.below(o.flush_one_in) == 0 {
            up.flush()
                .map_err(|e| fail(i, format!("flush: {}", e.chain())))?;
        }
        compare(&*up, model, off, len.min(1 << 20)).map_err(|e| fail(i, e))?;
    }
    // Past the end: refused, nothing changed.
    if up.write_at(&[1, 2, 3], size - 2).is_ok() {
        return Err(format!("seed {seed}: a write across the end was accepted"));
    }
    if up.write_zeroes(size, 1).is_ok() {
        return Err(format!("seed {seed}: a zeroing past the end was accepted"));
    }
    let mut pos = 0;
    while pos < window {
        let n = (window - pos).min(8 << 20);
        compare(&*up, model, pos, n).map_err(|e| format!("seed {seed}, at the end: {e}"))?;
        pos += n;
    }
    Ok(())
}

/// Compares `len` bytes at `off` of `img` (read directly, and through its map) with `model`.
fn compare(img: &dyn ImageUpdater, model: &dyn Storage, off: u64, len: u64) -> Result<(), String> {
    let mut want = vec![0u8; len as usize];
    model
        .read_exact_at(&mut want, off)
        .map_err(|e| format!("reading the model: {e}"))?;
    let mut got = vec![0u8; len as usize];
    img.read_at(&mut got, off)
        .map_err(|e| format!("reading {len} bytes at {off:#x}: {}", e.chain()))?;
    if let Some(k) = got.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!(
            "reading {len} bytes at {off:#x}: byte {:#x} is {:#04x}, the model has {:#04x}",
            off + k as u64,
            got[k],
            want[k]
        ));
    }
    got.fill(0xa5);
    read_skipping_holes(img, &mut got, off)
        .map_err(|e| format!("mapping {len} bytes at {off:#x}: {}", e.chain()))?;
    if let Some(k) = got.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!(
            "through the map, byte {:#x} is {:#04x}, the model has {:#04x}",
            off + k as u64,
            got[k],
            want[k]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::formats::{qcow2, raw, vdi, vhdx};
    use crate::image::ImageWriter;
    use crate::open::{OpenOptions, open_storage};
    use crate::storage::MemStorage;

    const SIZE: u64 = 6 << 20;

    /// Runs the check on `up` (over `mem`, whose disk first reads as `initial`), flushes,
    /// and reads the storage again with a new reader: it must read as the model.
    fn check(mem: &Arc<MemStorage>, mut up: Box<dyn ImageUpdater>, initial: Vec<u8>, block: u64) {
        let model = MemStorage::from_vec(initial);
        let o = RandomOps {
            block,
            flush_one_in: 10,
            zero_window_once: true,
            ..RandomOps::new(0x5eed ^ block, 250, 300_000)
        };
        random_operations(up.as_mut(), &model, &o).unwrap();
        up.flush().unwrap();
        drop(up);
        let r = open_storage(mem.clone(), &OpenOptions::default()).unwrap();
        let mut got = vec![0u8; r.virtual_size() as usize];
        r.read_at(&mut got, 0).unwrap();
        assert!(
            got == model.to_vec()[..got.len()],
            "the stored image differs"
        );
    }

    /// An empty image written by `w` into `mem`.
    fn empty(w: Box<dyn ImageWriter>) {
        w.finish().unwrap();
    }

    #[test]
    fn raw_updater_keeps_the_contract() {
        let initial: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let mem = Arc::new(MemStorage::from_vec(initial.clone()));
        let up = raw::open_storage(mem.clone()).unwrap();
        check(&mem, Box::new(up), initial, 0);
    }

    #[test]
    fn qcow2_updater_keeps_the_contract() {
        for cluster_bits in [9, 12, 16] {
            let mem = Arc::new(MemStorage::new());
            let opts = qcow2::Qcow2WriteOptions {
                cluster_bits,
                ..Default::default()
            };
            empty(Box::new(
                qcow2::Qcow2Writer::create(mem.clone(), SIZE, &opts).unwrap(),
            ));
            let up = qcow2::update::open_storage(mem.clone()).unwrap();
            check(
                &mem,
                Box::new(up),
                vec![0; SIZE as usize],
                1 << cluster_bits,
            );
        }
    }

    #[test]
    fn vhdx_updater_keeps_the_contract() {
        for subformat in [vhdx::VhdxSubformat::Dynamic, vhdx::VhdxSubformat::Fixed] {
            let mem = Arc::new(MemStorage::new());
            let opts = vhdx::VhdxWriteOptions {
                subformat,
                block_size: 1 << 20,
                ..Default::default()
            };
            empty(Box::new(
                vhdx::writer::VhdxWriter::new(mem.clone(), SIZE, &opts).unwrap(),
            ));
            let up = vhdx::update::open_storage(mem.clone()).unwrap();
            check(&mem, Box::new(up), vec![0; SIZE as usize], 1 << 20);
        }
    }

    #[test]
    fn vdi_updater_keeps_the_contract() {
        for subformat in [vdi::VdiSubformat::Dynamic, vdi::VdiSubformat::Fixed] {
            let mem = Arc::new(MemStorage::new());
            let opts = vdi::VdiWriteOptions { subformat };
            empty(Box::new(
                vdi::writer::VdiWriter::create(mem.clone(), SIZE, &opts).unwrap(),
            ));
            let up = vdi::VdiUpdater::open_storage(mem.clone()).unwrap();
            check(&mem, Box::new(up), vec![0; SIZE as usize], 1 << 20);
        }
    }
}
