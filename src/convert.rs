//! The convert engine: any [`ImageReader`] into any [`ImageWriter`].
//!
//! The calling thread plans the work by walking the source's extents: runs of zero or
//! unallocated disk become one "zeroes" item without reading anything; the rest is cut into
//! chunks (2 MiB by default, a whole number of the writer's granules). Chunks are read,
//! zero-detected granule by granule and, when the writer asks for it, compressed on worker
//! threads (one per core; they block when idle instead of spinning), with at most [`ConvertOptions::max_in_flight`] chunks in memory at once. The calling
//! thread hands the finished items to the writer strictly in ascending order, so sequential
//! formats (compressed qcow2, streamOptimized VMDK) work the same as random-access ones.
//!
//! [`convert_to_path`] adds the file handling: the output is written under a temporary name in
//! the target folder and renamed over the target only after [`ImageWriter::finish`] succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::files::{OutputFiles, Sink};
use crate::image::{
    Chunk, Compressor, ExtentKind, GranuleState, ImageReader, ImageWriter, NamedWriter,
    WriteReport, data_ranges, read_skipping_holes,
};
use crate::storage::Storage;
use crate::util::{align_down, is_zero};

/// Default size of one unit of parallel work.
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;

/// Progress of a conversion, as passed to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of virtual disk handed to the writer so far.
    pub done: u64,
    /// Size of the virtual disk.
    pub total: u64,
}

/// A progress callback; called on the thread that called [`convert`].
pub type ProgressFn<'a> = dyn FnMut(Progress) + 'a;

/// Tuning and control of a conversion.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Bytes of virtual disk per unit of parallel work (rounded up to the writer's granularity).
    pub chunk_size: u64,
    /// Chunks read or compressed but not yet written, at most. Bounds memory:
    /// about `max_in_flight x chunk_size x 2`.
    pub max_in_flight: usize,
    /// Set from any thread to stop the conversion with [`Error::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Worker threads (default: the size of the rayon pool, one per core unless configured).
    pub threads: Option<usize>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_in_flight: (rayon::current_num_threads() * 2).max(4),
            cancel: None,
            threads: None,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Size of the source's virtual disk.
    pub virtual_size: u64,
    /// Size of the output's virtual disk (larger when the format rounds the size up).
    pub output_size: u64,
    /// Bytes read from the source (zero and unallocated extents are not read).
    pub bytes_read: u64,
    /// Bytes of virtual disk written as data (compressed or not).
    pub data_bytes: u64,
    /// Bytes of virtual disk written as zeros (holes, zero clusters).
    pub zero_bytes: u64,
    /// Bytes after compression, for compressed granules.
    pub compressed_bytes: u64,
    /// What the writer put into the output files, by kind (compressed data, data stored as
    /// it is, zeros, metadata, and the unwritten rest of the files' length), as its
    /// [`ImageWriter::finish`] reported it. `output.file_length` is the length of the output
    /// files.
    pub output: WriteReport,
    /// Wall time.
    pub elapsed: Duration,
    /// Temporaries of the same output left by an interrupted (killed) run, removed.
    pub stale_temporaries_removed: Vec<PathBuf>,
    /// Bytes at the end of a block device target, past the image, left as they were.
    pub untouched_tail: u64,
}

/// One unit of ordered output.
enum Item {
    /// Known to read as zeros; nothing to read.
    Zeroes { offset: u64, len: u64 },
    /// A window of data, processed on a worker.
    Chunk(Chunk),
}

/// Copies the whole virtual disk of `src` into `dst` and finishes `dst`.
///
/// `progress` is called after every item written. Both images must have the same virtual size.
pub fn convert(
    src: &dyn ImageReader,
    mut dst: Box<dyn ImageWriter>,
    opts: &ConvertOptions,
    mut progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    let start = Instant::now();
    let size = src.virtual_size();
    // A writer may round the size up (a VHD for Azure is a whole number of MiB); the extra
    // tail reads as zeros. It may never be smaller.
    let out_size = dst.virtual_size();
    if out_size < size {
        return Err(Error::InvalidArgument(format!(
            "the output is {out_size} bytes but the source is {size} bytes"
        )));
    }
    let (granule, chunk_size) = chunk_geometry(dst.as_ref(), opts)?;
    if dst.wants_data_layout() {
        // The writer describes the data's place before the data (a sparse map written first to
        // an append-only destination): one walk over the source's extent map, no data read.
        let data = if size == 0 {
            Vec::new()
        } else {
            data_ranges(src, 0, size)?
        };
        dst.set_data_layout(data)?;
    }
    let compressor = dst.compressor();
    let max_in_flight = opts.max_in_flight.max(1);
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    let stop = AtomicBool::new(false);
    // Chunk buffers handed back by the writer loop for reuse by the workers.
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    let mut stats = ConvertStats {
        virtual_size: size,
        output_size: out_size,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel::<(u64, Result<Item>)>();
    let mut planner = Planner {
        src,
        size,
        granule,
        chunk_size,
        pos: 0,
    };

    // Dedicated worker threads that block when idle: on small machines a spinning pool takes
    // CPU time from the thread that issues the writes.
    let workers = opts
        .threads
        .unwrap_or_else(rayon::current_num_threads)
        .max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(max_in_flight);
    let job_rx = Mutex::new(job_rx);

    let result: Result<()> = std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (job_rx, stop, pool, compressor) = (&job_rx, &stop, &pool, compressor.clone());
            scope.spawn(move || {
                run_worker(src, granule, compressor.as_deref(), job_rx, stop, pool, tx)
            });
        }
        // Workers exit when this sender is dropped, whichever way the loop below ends.
        let job_tx = job_tx;
        let mut next_index = 0u64; // index of the next item to plan
        let mut next_write = 0u64; // index of the next item to hand to the writer
        let mut ready: BTreeMap<u64, Item> = BTreeMap::new();
        let mut running = 0usize;
        let mut done = 0u64;
        let mut failure: Option<Error> = None;

        loop {
            // Plan and launch while there is room.
            if let Err(e) = plan_more(
                &mut planner,
                &mut ready,
                &mut next_index,
                &mut running,
                &job_tx,
                max_in_flight,
                &cancelled,
            ) {
                failure = Some(e);
            }
            // Hand everything that is ready, in order, to the writer.
            while failure.is_none() {
                let Some(item) = ready.remove(&next_write) else {
                    break;
                };
                next_write += 1;
                match write_item(dst.as_mut(), item, &mut stats, &pool, max_in_flight) {
                    Ok(n) => done += n,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                if let Some(p) = progress.as_mut() {
                    p(Progress { done, total: size });
                }
            }
            if let Some(e) = failure.take() {
                // Let the running workers see the stop flag; the scope waits for them.
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            if running == 0 && ready.is_empty() && planner.pos >= size {
                return Ok(());
            }
            if running == 0 {
                continue;
            }
            // Wait for a worker.
            match rx.recv() {
                Ok((index, r)) => {
                    running -= 1;
                    match r {
                        Ok(item) => {
                            ready.insert(index, item);
                        }
                        Err(e) => failure = Some(e),
                    }
                }
                Err(_) => {
                    failure = Some(Error::Corrupt("a conversion worker vanished".into()));
                }
            }
            if let Some(e) = failure.take() {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    });
    result?;
    if out_size > size {
        dst.write_zeroes(size, out_size - size)?;
    }
    stats.output = dst.finish()?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Plans items and launches their jobs while fewer than `max_in_flight` items are running or
/// ready: a zero run goes straight to `ready`, a data chunk to a worker. Stops at the end of the
/// disk, on a cancellation or on an error (returned).
#[allow(clippy::too_many_arguments)]
fn plan_more(
    planner: &mut Planner<'_>,
    ready: &mut BTreeMap<u64, Item>,
    next_index: &mut u64,
    running: &mut usize,
    job_tx: &mpsc::SyncSender<Job>,
    max_in_flight: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    while *running + ready.len() < max_in_flight {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        match planner.next()? {
            None => break,
            Some(Planned::Zeroes { offset, len }) => {
                ready.insert(*next_index, Item::Zeroes { offset, len });
                *next_index += 1;
            }
            Some(Planned::Data { offset, len }) => {
                let job = Job {
                    index: *next_index,
                    offset,
                    len,
                };
                *next_index += 1;
                *running += 1;
                // Never blocks: fewer than `max_in_flight` jobs are outstanding.
                if job_tx.send(job).is_err() {
                    return Err(Error::Internal(
                        "internal error: the conversion workers stopped".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The writer's granule (at least 512 bytes, a power of two) and the chunk size: the requested
/// one rounded up to a whole number of granules.
fn chunk_geometry(dst: &dyn ImageWriter, opts: &ConvertOptions) -> Result<(u64, u64)> {
    let granule = dst.granularity().max(512);
    if !granule.is_power_of_two() {
        return Err(Error::InvalidArgument(format!(
            "writer granularity {granule} is not a power of two"
        )));
    }
    Ok((
        granule,
        opts.chunk_size.max(granule).div_ceil(granule) * granule,
    ))
}

/// A worker thread: takes jobs until the job channel closes (or the results' receiver is
/// gone), reads, zero-detects and compresses each chunk ([`prepare_chunk`]) and sends the result
/// with its index. Once `stop` is set, jobs are answered with [`Error::Cancelled`] unread.
fn run_worker(
    src: &dyn ImageReader,
    granule: u64,
    compressor: Option<&dyn Compressor>,
    job_rx: &Mutex<mpsc::Receiver<Job>>,
    stop: &AtomicBool,
    pool: &Mutex<Vec<Vec<u8>>>,
    tx: mpsc::Sender<(u64, Result<Item>)>,
) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match job_rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job { index, offset, len }) = job else {
            return; // channel closed: no more work
        };
        let r = if stop.load(Ordering::Relaxed) {
            Err(Error::Cancelled)
        } else {
            // A panic in a codec must not leave the writer loop waiting for a result that
            // never comes: turn it into an error.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let buf = pool.lock().ok().and_then(|mut p| p.pop());
                prepare_chunk(
                    src,
                    offset,
                    len,
                    granule,
                    compressor,
                    buf.unwrap_or_default(),
                )
            }))
            .unwrap_or_else(|p| {
                Err(Error::Internal(format!(
                    "internal error: a conversion worker panicked at offset {offset:#x}: {}",
                    panic_message(&p)
                )))
            })
        };
        if tx.send((index, r.map(Item::Chunk))).is_err() {
            return;
        }
    }
}

/// Hands one item to the writer and counts it in `stats`; a chunk's buffer goes back to `pool`
/// (up to `max_in_flight` buffers are kept). Returns the bytes of virtual disk it covered.
fn write_item(
    dst: &mut dyn ImageWriter,
    item: Item,
    stats: &mut ConvertStats,
    pool: &Mutex<Vec<Vec<u8>>>,
    max_in_flight: usize,
) -> Result<u64> {
    match item {
        Item::Zeroes { offset, len } => {
            stats.zero_bytes += len;
            dst.write_zeroes(offset, len)?;
            Ok(len)
        }
        Item::Chunk(c) => {
            account(stats, &c);
            let n = c.data.len() as u64;
            let r = dst.write_chunk(&c);
            // Recycle the buffer: fresh multi-megabyte allocations cost a page fault per 4 KiB
            // and a kernel-side clear on every chunk.
            if let Ok(mut p) = pool.lock() {
                if p.len() < max_in_flight {
                    p.push(c.data);
                }
            }
            r.map(|()| n)
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn account(stats: &mut ConvertStats, c: &Chunk) {
    for (i, s) in c.states.iter().enumerate() {
        let n = c.granule_range(i).len() as u64;
        match s {
            GranuleState::Zero => stats.zero_bytes += n,
            GranuleState::Data => stats.data_bytes += n,
            GranuleState::Compressed(v) => {
                stats.data_bytes += n;
                stats.compressed_bytes += v.len() as u64;
            }
        }
    }
    stats.bytes_read += c.data.len() as u64;
}

/// A chunk for a worker to read and prepare.
struct Job {
    index: u64,
    offset: u64,
    len: u64,
}

enum Planned {
    Zeroes { offset: u64, len: u64 },
    Data { offset: u64, len: u64 },
}

/// Walks the source's extents and cuts the disk into items. Positions stay granule-aligned.
struct Planner<'a> {
    src: &'a dyn ImageReader,
    size: u64,
    granule: u64,
    chunk_size: u64,
    pos: u64,
}

impl Planner<'_> {
    fn next(&mut self) -> Result<Option<Planned>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let pos = self.pos;
        let e = self.src.map(pos, self.size - pos)?;
        if e.len == 0 {
            return Err(Error::Corrupt(format!(
                "the source reports no extent at offset {pos:#x} inside the disk"
            )));
        }
        if e.kind != ExtentKind::Data {
            // Whole granules of zeros become one item; a partial granule goes with the data.
            let end = if e.end() >= self.size {
                self.size
            } else {
                align_down(e.end(), self.granule)
            };
            if end > pos {
                self.pos = end;
                return Ok(Some(Planned::Zeroes {
                    offset: pos,
                    len: end - pos,
                }));
            }
        }
        let end = (pos + self.chunk_size).min(self.size);
        self.pos = end;
        Ok(Some(Planned::Data {
            offset: pos,
            len: end - pos,
        }))
    }
}

/// Reads one chunk (skipping its zero extents), classifies its granules and compresses them.
/// `bytes_read` in the stats counts the whole chunk.
fn prepare_chunk(
    src: &dyn ImageReader,
    offset: u64,
    len: u64,
    granule: u64,
    compressor: Option<&dyn Compressor>,
    mut data: Vec<u8>,
) -> Result<Chunk> {
    // Every byte is overwritten below (data read, holes zero-filled), so a recycled buffer's
    // old contents never leak through.
    data.resize(len as usize, 0);
    read_skipping_holes(src, &mut data, offset)?;
    let count = len.div_ceil(granule) as usize;
    let mut chunk = Chunk {
        offset,
        data,
        granule,
        states: Vec::with_capacity(count),
    };
    for i in 0..count {
        let bytes = &chunk.data[chunk.granule_range(i)];
        let state = if is_zero(bytes) {
            GranuleState::Zero
        } else if let Some(c) = compressor {
            let mut out = Vec::new();
            if c.compress(bytes, &mut out)? {
                GranuleState::Compressed(out)
            } else {
                GranuleState::Data
            }
        } else {
            GranuleState::Data
        };
        chunk.states.push(state);
    }
    Ok(chunk)
}

/// Converts `src` into a new file at `target`.
///
/// `create` builds the writer over the (empty, temporary) output storage. The target appears
/// only when everything succeeded; on any error, or a cancellation, the temporary file is removed
/// and an existing target is left untouched.
pub fn convert_to_path(
    src: &dyn ImageReader,
    target: &Path,
    create: impl FnOnce(Arc<dyn Storage>) -> Result<Box<dyn ImageWriter>>,
    opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    convert_to_files(src, target, |files| create(files.main()?), opts, progress)
}

/// Converts `src` into the files of a new output at `target` (see [`OutputFiles`]): for formats
/// that write more than one file.
///
/// Errors name the file they are about: a failure to create or write the output names
/// `target` (the writer is wrapped in a [`NamedWriter`]); a failure to read the source names
/// the source when it was opened from a path ([`open`](crate::open()) names its readers).
pub fn convert_to_files(
    src: &dyn ImageReader,
    target: &Path,
    create: impl FnOnce(&mut dyn Sink) -> Result<Box<dyn ImageWriter>>,
    opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    convert_to_sink(
        src,
        Box::new(OutputFiles::new(target)),
        create,
        opts,
        progress,
    )
}

/// Converts `src` into a new output in `sink` (see [`Sink`]): `create` builds the writer over
/// the sink, the conversion runs, and the sink is committed only when the writer finished and
/// the conversion was not cancelled; on any error it is abandoned. Errors name the sink's
/// target.
pub fn convert_to_sink(
    src: &dyn ImageReader,
    mut sink: Box<dyn Sink>,
    create: impl FnOnce(&mut dyn Sink) -> Result<Box<dyn ImageWriter>>,
    opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    let target = sink.target().to_path_buf();
    // On an error the sink is dropped, which abandons it.
    let writer = create(sink.as_mut()).map_err(|e| e.in_file(&target))?;
    let writer = Box::new(NamedWriter::new(writer, &target));
    let mut stats = convert(src, writer, opts, progress)?;
    // A cancellation that came while the writer finished still leaves the old target as it was.
    if opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed))
    {
        sink.abandon();
        return Err(Error::Cancelled);
    }
    stats.stale_temporaries_removed = sink.stale_removed();
    sink.commit()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::{Preallocation, RawReader, RawWriter};
    use crate::storage::MemStorage;

    fn pattern(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // Data in some 64 KiB granules, zeros in others, a partial granule at the end.
        for (i, b) in v.iter_mut().enumerate() {
            let g = i / 65536;
            if g % 3 != 1 {
                *b = (i % 251) as u8 | 1;
            }
        }
        v
    }

    #[test]
    fn raw_to_raw_is_identical() {
        let src_bytes = pattern(5 * (1 << 20) + 4096 + 17);
        let src = RawReader::new(Arc::new(MemStorage::from_vec(src_bytes.clone())), None).unwrap();
        let out = Arc::new(MemStorage::new());
        let w = RawWriter::create(out.clone(), src_bytes.len() as u64, Preallocation::Off).unwrap();
        let mut calls = 0;
        let mut last = Progress { done: 0, total: 0 };
        let mut cb = |p: Progress| {
            calls += 1;
            last = p;
        };
        let opts = ConvertOptions {
            chunk_size: 1 << 20,
            max_in_flight: 3,
            cancel: None,
            threads: Some(2),
        };
        let stats = convert(&src, Box::new(w), &opts, Some(&mut cb)).unwrap();
        assert_eq!(out.to_vec(), src_bytes);
        assert!(calls >= 5);
        assert_eq!(last.done, src_bytes.len() as u64);
        assert_eq!(stats.data_bytes + stats.zero_bytes, src_bytes.len() as u64);
        assert!(stats.zero_bytes > 0);
    }

    #[test]
    fn cancellation_stops_and_size_mismatch_is_refused() {
        let src = RawReader::new(Arc::new(MemStorage::from_vec(pattern(4 << 20))), None).unwrap();
        let out = Arc::new(MemStorage::new());
        let w = RawWriter::create(out.clone(), 4 << 20, Preallocation::Off).unwrap();
        let cancel = Arc::new(AtomicBool::new(true));
        let opts = ConvertOptions {
            cancel: Some(cancel),
            ..Default::default()
        };
        let e = convert(&src, Box::new(w), &opts, None).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Cancelled);
        let w = RawWriter::create(Arc::new(MemStorage::new()), 1, Preallocation::Off).unwrap();
        let e = convert(&src, Box::new(w), &ConvertOptions::default(), None).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        // A larger output gets a zero tail.
        let out = Arc::new(MemStorage::new());
        let w = RawWriter::create(out.clone(), (4 << 20) + 4096, Preallocation::Full).unwrap();
        let stats = convert(&src, Box::new(w), &ConvertOptions::default(), None).unwrap();
        assert_eq!(stats.output_size, (4 << 20) + 4096);
        let v = out.to_vec();
        assert_eq!(&v[..4 << 20], &pattern(4 << 20)[..]);
        assert!(v[4 << 20..].iter().all(|&b| b == 0));
    }

    #[test]
    fn failed_conversion_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.raw");
        std::fs::write(&target, b"old").unwrap();
        let src = RawReader::new(Arc::new(MemStorage::from_vec(pattern(1 << 20))), None).unwrap();
        let e = convert_to_path(
            &src,
            &target,
            |s| Ok(Box::new(RawWriter::create(s, 5, Preallocation::Off)?)),
            &ConvertOptions::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        convert_to_path(
            &src,
            &target,
            |s| Ok(Box::new(RawWriter::create(s, 1 << 20, Preallocation::Off)?)),
            &ConvertOptions::default(),
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), pattern(1 << 20));
    }

    /// A raw writer whose compressor panics: the engine must report it, not hang.
    #[derive(Debug)]
    struct PanickyWriter(RawWriter);

    struct Boom;

    impl Compressor for Boom {
        fn compress(&self, _input: &[u8], _out: &mut Vec<u8>) -> Result<bool> {
            panic!("codec exploded");
        }
    }

    impl ImageWriter for PanickyWriter {
        fn format(&self) -> crate::Format {
            self.0.format()
        }
        fn virtual_size(&self) -> u64 {
            self.0.virtual_size()
        }
        fn granularity(&self) -> u64 {
            self.0.granularity()
        }
        fn needs_sequential(&self) -> bool {
            true
        }
        fn compressor(&self) -> Option<Arc<dyn Compressor>> {
            Some(Arc::new(Boom))
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
            self.0.write_at(buf, offset)
        }
        fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
            self.0.write_zeroes(offset, len)
        }
        fn finish(self: Box<Self>) -> Result<WriteReport> {
            Box::new(self.0).finish()
        }
    }

    #[test]
    fn a_panicking_worker_is_an_error_not_a_hang() {
        let src = RawReader::new(Arc::new(MemStorage::from_vec(pattern(4 << 20))), None).unwrap();
        let w =
            RawWriter::create(Arc::new(MemStorage::new()), 4 << 20, Preallocation::Off).unwrap();
        let e = convert(
            &src,
            Box::new(PanickyWriter(w)),
            &ConvertOptions::default(),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("codec exploded"), "{e}");
    }
}
