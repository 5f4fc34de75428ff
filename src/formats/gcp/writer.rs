//! The GCP tarball writer: the tar header with the sparse map, then the data regions' bytes, then
//! the end of the archive, all through one [`ParallelGzip`] stream appended to the output.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::GcpWriteOptions;
use super::gzip::ParallelGzip;
use super::tar::{SparseMap, end_of_archive};
use crate::error::{Error, Result};
use crate::image::{Format, ImageWriter, WriteReport};
use crate::storage::Storage;
use crate::util::is_zero;

/// Compute Engine sizes disks in whole GiB.
pub const GIB: u64 = 1 << 30;

/// The size of `disk.raw` for a source of `virtual_size` bytes: rounded up to a whole GiB, at
/// least 1 GiB. Google's "Manually import boot disks" page: the raw disk's size must be a
/// multiple of 1 GB (GiB: Compute Engine's sizes are binary), and an image is made into disks of
/// whole GiB.
pub fn raw_size(virtual_size: u64) -> u64 {
    virtual_size.div_ceil(GIB).max(1) * GIB
}

/// Writes a GCP image tarball: see the [module documentation](super).
pub struct GcpWriter {
    out: Arc<dyn Storage>,
    source_size: u64,
    raw_size: u64,
    opts: GcpWriteOptions,
    /// The data layout, once given (or assumed at the first write).
    map: Option<SparseMap>,
    /// The map's data regions.
    regions: Vec<Range<u64>>,
    /// The region `pos` is in or before.
    region: usize,
    gzip: Option<ParallelGzip>,
    /// The next offset of `disk.raw` expected.
    pos: u64,
    /// Bytes of tar written into the gzip stream so far.
    tar_len: u64,
    /// Bytes of the tar header and extended sparse headers.
    header_len: u64,
}

impl fmt::Debug for GcpWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpWriter")
            .field("raw_size", &self.raw_size)
            .field("pos", &self.pos)
            .field("tar_len", &self.tar_len)
            .finish_non_exhaustive()
    }
}

impl GcpWriter {
    /// A writer of the tarball of a `virtual_size`-byte disk, appending to `out` (empty).
    pub fn create(
        out: Arc<dyn Storage>,
        virtual_size: u64,
        opts: &GcpWriteOptions,
    ) -> Result<Self> {
        Ok(GcpWriter {
            out,
            source_size: virtual_size,
            raw_size: raw_size(virtual_size),
            opts: opts.clone(),
            map: None,
            regions: Vec::new(),
            region: 0,
            gzip: None,
            pos: 0,
            tar_len: 0,
            header_len: 0,
        })
    }

    /// The size of the source's disk (the raw disk is [`ImageWriter::virtual_size`]).
    pub fn source_size(&self) -> u64 {
        self.source_size
    }

    /// Starts the archive with the map of `data`: the gzip header, the tar header and its
    /// extended sparse headers.
    fn start(&mut self, data: &[Range<u64>]) -> Result<()> {
        if self.map.is_some() {
            return Err(Error::Internal(
                "internal error: the data layout of a GCP tarball was given after writing began"
                    .into(),
            ));
        }
        let map = SparseMap::new(data, self.raw_size)?;
        let mut gzip = ParallelGzip::new(
            self.out.clone(),
            0,
            self.opts.level,
            (rayon::current_num_threads() * 2).max(4),
        )?;
        let header = map.header_blocks();
        gzip.write(&header)?;
        self.tar_len = header.len() as u64;
        self.header_len = self.tar_len;
        self.regions = map.regions().collect();
        self.map = Some(map);
        self.gzip = Some(gzip);
        Ok(())
    }

    /// The gzip stream, starting the archive first when no layout was given: then every byte of
    /// the disk is data (correct, only not sparse).
    fn gzip(&mut self) -> Result<&mut ParallelGzip> {
        if self.map.is_none() {
            let whole = std::iter::once(0..self.raw_size).collect::<Vec<_>>();
            self.start(&whole)?;
        }
        self.gzip
            .as_mut()
            .ok_or_else(|| Error::Internal("internal error: the gzip stream is gone".into()))
    }

    fn check_next(&self, offset: u64, len: u64) -> Result<()> {
        if offset != self.pos {
            return Err(Error::InvalidArgument(format!(
                "a GCP tarball is written in order: expected offset {:#x}, got {offset:#x}",
                self.pos
            )));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.raw_size) {
            return Err(Error::InvalidArgument(format!(
                "write of {len} bytes at {offset:#x} past the end of the {}-byte disk",
                self.raw_size
            )));
        }
        Ok(())
    }

    /// Splits `[pos, pos + len)` at the region boundaries and calls `data` for the pieces
    /// inside a data region and `hole` for the others, with their offset from `pos`.
    fn walk(
        &mut self,
        len: u64,
        mut data: impl FnMut(&mut ParallelGzip, u64, u64) -> Result<()>,
        mut hole: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let start = self.pos;
        let end = start + len;
        self.gzip()?;
        while self.pos < end {
            while self
                .regions
                .get(self.region)
                .is_some_and(|r| r.end <= self.pos)
            {
                self.region += 1;
            }
            let pos = self.pos;
            let (is_data, until) = match self.regions.get(self.region) {
                Some(r) if r.start <= pos => (true, r.end.min(end)),
                Some(r) => (false, r.start.min(end)),
                None => (false, end),
            };
            if is_data {
                let g = self.gzip.as_mut().ok_or_else(|| {
                    Error::Internal("internal error: the gzip stream is gone".into())
                })?;
                data(g, pos - start, until - pos)?;
                self.tar_len += until - pos;
            } else {
                hole(pos - start, until - pos)?;
            }
            self.pos = until;
        }
        Ok(())
    }
}

impl ImageWriter for GcpWriter {
    fn format(&self) -> Format {
        Format::Gcp
    }

    /// The size of `disk.raw`: the source's size rounded up to a whole GiB.
    fn virtual_size(&self) -> u64 {
        self.raw_size
    }

    fn granularity(&self) -> u64 {
        64 * 1024
    }

    fn needs_sequential(&self) -> bool {
        true
    }

    fn wants_data_layout(&self) -> bool {
        true
    }

    fn set_data_layout(&mut self, data: Vec<Range<u64>>) -> Result<()> {
        self.start(&data)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_next(offset, buf.len() as u64)?;
        self.walk(
            buf.len() as u64,
            |g, at, n| g.write(&buf[at as usize..(at + n) as usize]),
            |at, n| {
                // The layout said this reads as zeros: data here would be lost.
                if is_zero(&buf[at as usize..(at + n) as usize]) {
                    Ok(())
                } else {
                    Err(Error::Internal(format!(
                        "internal error: data at {:#x} of the disk lies outside the data layout \
                         given before writing began",
                        offset + at
                    )))
                }
            },
        )
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_next(offset, len)?;
        self.walk(len, |g, _, n| g.write_zeros(n), |_, _| Ok(()))
    }

    fn finish(mut self: Box<Self>) -> Result<WriteReport> {
        if self.pos < self.raw_size {
            // The engine writes the tail itself; a direct caller may stop early.
            let (pos, rest) = (self.pos, self.raw_size - self.pos);
            self.write_zeroes(pos, rest)?;
        }
        self.gzip()?;
        let declared = self.map.as_ref().map_or(0, SparseMap::data_len) + self.header_len;
        if self.tar_len != declared {
            return Err(Error::Internal(format!(
                "internal error: {} bytes of tar were written for a member declaring {declared}",
                self.tar_len
            )));
        }
        let pad = end_of_archive(self.tar_len);
        let mut gzip = self
            .gzip
            .take()
            .ok_or_else(|| Error::Internal("internal error: the gzip stream is gone".into()))?;
        gzip.write_zeros(pad)?;
        let len = gzip.finish()?;
        self.out
            .sync()
            .map_err(|e| Error::io("syncing the GCP tarball", e))?;
        // The whole file is one gzip stream: its header and trailer are metadata, the deflate
        // data (tar headers and disk data alike) is compressed.
        let framing = super::gzip::HEADER.len() as u64 + 8;
        WriteReport {
            compressed: len - framing,
            metadata: framing,
            ..WriteReport::default()
        }
        .complete(&[self.out.as_ref()])
    }
}

#[cfg(test)]
// Layouts of one range are what these tests are about.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn raw_size_is_whole_gib() {
        assert_eq!(raw_size(0), GIB);
        assert_eq!(raw_size(1), GIB);
        assert_eq!(raw_size(GIB), GIB);
        assert_eq!(raw_size(GIB + 512), 2 * GIB);
        assert_eq!(raw_size(10 * GIB - 1), 10 * GIB);
    }

    fn gunzip(v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(v).read_to_end(&mut out).unwrap();
        out
    }

    /// Writes a disk by hand (as the convert engine does) and reads the tar back.
    #[test]
    fn member_holds_the_regions_in_order() {
        let out = Arc::new(MemStorage::new());
        let mut w =
            Box::new(GcpWriter::create(out.clone(), 3 << 20, &GcpWriteOptions::default()).unwrap());
        w.set_data_layout(vec![4096..8192, (2 << 20)..(2 << 20) + 100])
            .unwrap();
        // Zeros over a hole and into a region, then data, then a hole with zeros read.
        w.write_zeroes(0, 6000).unwrap();
        w.write_at(&[7u8; 2192], 6000).unwrap();
        let mut buf = vec![0u8; (2 << 20) - 8192 + 512];
        buf[(2 << 20) - 8192..].fill(9);
        w.write_at(&buf, 8192).unwrap();
        // Data where the layout said hole is an error, not a silent loss.
        let mut probe = GcpWriter::create(
            Arc::new(MemStorage::new()),
            1 << 20,
            &GcpWriteOptions::default(),
        )
        .unwrap();
        probe.set_data_layout(vec![0..512]).unwrap();
        let e = probe.write_at(&[1u8; 1024], 0).unwrap_err().to_string();
        assert!(e.contains("outside the data layout"), "{e}");
        // Out of order is refused.
        let e = w.write_at(&[1], 0).unwrap_err().to_string();
        assert!(e.contains("written in order"), "{e}");
        let report = w.finish().unwrap();
        let gz = out.to_vec();
        assert_eq!(report.file_length, gz.len() as u64);
        let tar = gunzip(&gz);
        assert_eq!(tar.len() as u64 % super::super::tar::RECORD, 0);
        let h = &tar[..512];
        assert_eq!(h[156], b'S');
        // Region 1: 4096..8192 (zeros to 6000, then sevens); region 2: one block of nines
        // (100 bytes of data widened to 512).
        let data = &tar[512..512 + 4096 + 512];
        assert!(data[..6000 - 4096].iter().all(|&b| b == 0));
        assert!(data[6000 - 4096..4096].iter().all(|&b| b == 7));
        assert!(data[4096..].iter().all(|&b| b == 9));
        assert!(tar[512 + 4608..].iter().all(|&b| b == 0));
    }

    /// Storage that takes only appends at its end and cannot be read back, like an upload.
    #[derive(Debug, Default)]
    struct AppendOnly(std::sync::Mutex<Vec<u8>>);

    impl Storage for AppendOnly {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<usize> {
            Err(std::io::Error::other(
                "an append-only stream cannot be read",
            ))
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let mut v = self.0.lock().unwrap();
            if offset != v.len() as u64 {
                return Err(std::io::Error::other(format!(
                    "write at {offset:#x}, the end is {:#x}",
                    v.len()
                )));
            }
            v.extend_from_slice(buf);
            Ok(())
        }
        fn set_len(&self, _: u64) -> std::io::Result<()> {
            Err(std::io::Error::other(
                "an append-only stream cannot be resized",
            ))
        }
    }

    /// The convert engine into an append-only storage: the layout comes first, every write is
    /// an append, the sparse map is the source's data.
    #[test]
    fn the_engine_streams_into_append_only_storage() {
        use crate::convert::{ConvertOptions, convert};
        use crate::formats::raw::RawReader;
        // 3 MiB + 100 bytes: data, a zero stretch the source stores as data, data.
        let mut disk = vec![0u8; (3 << 20) + 100];
        disk[..65536].fill(1);
        disk[(2 << 20)..].fill(2);
        let src = RawReader::new(Arc::new(MemStorage::from_vec(disk.clone())), None).unwrap();
        let out = Arc::new(AppendOnly::default());
        let w =
            GcpWriter::create(out.clone(), disk.len() as u64, &GcpWriteOptions::default()).unwrap();
        let opts = ConvertOptions {
            chunk_size: 1 << 20,
            max_in_flight: 3,
            ..Default::default()
        };
        let stats = convert(&src, Box::new(w), &opts, None).unwrap();
        assert_eq!(stats.output_size, GIB);
        let tar = gunzip(&out.0.lock().unwrap());
        // Memory storage has no holes: the whole source is one data region (its zeros stay
        // data), then the hole up to the GiB.
        assert_eq!(&tar[386..398], b"00000000000\0");
        assert_eq!(&tar[398..410], b"00014001000\0"); // 3 MiB + 100 widened to 3 MiB + 512
        assert_eq!(&tar[512..512 + disk.len()], &disk[..]);
        assert!(tar[512 + disk.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn without_a_layout_everything_is_data() {
        let out = Arc::new(MemStorage::new());
        let mut w =
            Box::new(GcpWriter::create(out.clone(), 1000, &GcpWriteOptions::default()).unwrap());
        w.write_at(b"boot", 0).unwrap();
        w.finish().unwrap();
        let tar = gunzip(&out.to_vec());
        // One region of the whole GiB, then the end marker.
        assert_eq!(&tar[386..410], b"00000000000\x0010000000000\0");
        assert_eq!(&tar[410..434], b"10000000000\x0000000000000\0");
        assert_eq!(&tar[512..516], b"boot");
        assert_eq!(tar.len() as u64, end_of_archive(512 + GIB) + 512 + GIB);
    }
}
