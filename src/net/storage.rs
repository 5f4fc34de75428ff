//! An NBD export as a [`Storage`]: reads and writes become `NBD_CMD_READ` / `WRITE` split at
//! the server's maximum request size and sent in parallel; holes come from `BLOCK_STATUS`
//! on `base:allocation` (cached per region, so the raw reader's extent walk asks once).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::client::{Done, ExportInfo, NbdClient, NbdOptions};
use super::proto::{self, Request, cmd, tflag};
use super::uri::NbdUri;
use crate::storage::{Segment, Storage};

/// Largest range one `BLOCK_STATUS` request asks about.
const STATUS_SPAN: u64 = 1 << 30;

/// An NBD export as positional bytes.
pub struct NbdStorage {
    client: Arc<NbdClient>,
    /// Known extents of `base:allocation`: start -> (end, data).
    status: Mutex<BTreeMap<u64, (u64, bool)>>,
}

impl fmt::Debug for NbdStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdStorage")
            .field("uri", &self.client.uri().to_string())
            .field("size", &self.client.info().size)
            .finish()
    }
}

fn req(command: u16, flags: u16, offset: u64, length: u32) -> Request {
    Request {
        flags,
        command,
        cookie: 0,
        offset,
        length,
    }
}

impl NbdStorage {
    /// Connects to the export `uri` names.
    pub fn connect(uri: &NbdUri, opts: &NbdOptions) -> io::Result<NbdStorage> {
        Ok(Self::new(Arc::new(NbdClient::connect(uri, opts)?)))
    }

    /// Wraps a connected client.
    pub fn new(client: Arc<NbdClient>) -> NbdStorage {
        NbdStorage {
            client,
            status: Mutex::new(BTreeMap::new()),
        }
    }

    /// The client.
    pub fn client(&self) -> &Arc<NbdClient> {
        &self.client
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        self.client.info()
    }

    fn size(&self) -> u64 {
        self.info().size
    }

    /// Splits `range` into requests of at most the maximum size.
    fn pieces(&self, range: Range<u64>) -> Vec<(u64, u32)> {
        let max = self.info().max_request as u64;
        let mut out = Vec::new();
        let mut o = range.start;
        while o < range.end {
            let n = (range.end - o).min(max);
            out.push((o, n as u32));
            o += n;
        }
        out
    }

    fn check_range(&self, offset: u64, len: u64, what: &str) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} of {len} bytes at {offset:#x} goes past the end of the {}-byte export",
                    self.size()
                ),
            ));
        }
        Ok(())
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.info().read_only() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the NBD export is read-only (the server refuses writes)",
            ));
        }
        Ok(())
    }

    fn check_aligned(&self, offset: u64, len: u64, what: &str) -> io::Result<()> {
        let min = self.info().min_block as u64;
        if offset % min != 0 || len % min != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} of {len} bytes at {offset:#x} is not aligned to the export's \
                     {min}-byte minimum block size"
                ),
            ));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at an offset aligned to the minimum block size.
    fn read_aligned(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.client.settle()?;
        let pieces = self.pieces(offset..offset + buf.len() as u64);
        let reqs: Vec<(Request, Option<&[u8]>)> = pieces
            .iter()
            .map(|&(o, n)| (req(cmd::READ, 0, o, n), None))
            .collect();
        let done = self.client.execute_many(&reqs)?;
        for ((o, n), d) in pieces.iter().zip(done) {
            let a = (o - offset) as usize;
            buf[a..a + *n as usize].copy_from_slice(&d.data);
        }
        Ok(())
    }

    /// Asks for the `base:allocation` status from `offset` and caches it.
    fn fetch_status(&self, offset: u64) -> io::Result<()> {
        self.client.settle()?;
        let min = self.info().min_block as u64;
        let start = offset / min * min;
        let len = (self.size() - start).min(STATUS_SPAN);
        let Some(ctx) = self.info().context_id(proto::BASE_ALLOCATION) else {
            return Ok(());
        };
        let d = self
            .client
            .execute(req(cmd::BLOCK_STATUS, 0, start, len as u32), None)?;
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let mut o = start;
        for (c, extents) in d.extents {
            if c != ctx {
                continue;
            }
            for (l, flags) in extents {
                let end = (o + l as u64).min(start + len);
                if end <= o {
                    break;
                }
                let data = flags & (proto::alloc::HOLE | proto::alloc::ZERO) == 0;
                map.insert(o, (end, data));
                o = end;
            }
        }
        Ok(())
    }

    fn cached_segment(&self, offset: u64) -> Option<Segment> {
        let map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let (_, &(mut end, data)) = map.range(..=offset).next_back()?;
        if end <= offset {
            return None;
        }
        // Join the following extents of the same kind.
        while let Some(&(e, d)) = map.get(&end) {
            if d != data {
                break;
            }
            end = e;
        }
        Some(Segment {
            data,
            len: end - offset,
        })
    }

    /// Ranges within `range` that a `qemu:dirty-bitmap:NAME` context (selected when the
    /// client connected, see [`NbdOptions::dirty_bitmap`]) marks dirty, merged.
    pub fn dirty_ranges(&self, name: &str, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        let cname = format!("{}{name}", proto::DIRTY_BITMAP_PREFIX);
        let ctx = self.info().context_id(&cname).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the context {cname} was not selected on this connection"),
            )
        })?;
        self.client.settle()?;
        let end = range.end.min(self.size());
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut o = range.start;
        while o < end {
            let len = (end - o).min(STATUS_SPAN);
            let d: Done = self
                .client
                .execute(req(cmd::BLOCK_STATUS, 0, o, len as u32), None)?;
            let mut p = o;
            for (c, extents) in d.extents {
                if c != ctx {
                    continue;
                }
                for (l, flags) in extents {
                    let e = (p + l as u64).min(end);
                    if e <= p {
                        break;
                    }
                    if flags & proto::DIRTY != 0 {
                        match out.last_mut() {
                            Some(last) if last.end == p => last.end = e,
                            _ => out.push(p..e),
                        }
                    }
                    p = e;
                }
            }
            if p <= o {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the server reported no {cname} status at {o:#x}"),
                ));
            }
            o = p;
        }
        Ok(out)
    }
}

impl Storage for NbdStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.size())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        let buf = &mut buf[..n];
        let min = self.info().min_block as u64;
        let (a, e) = (offset / min * min, (offset + n as u64).div_ceil(min) * min);
        let e = e.min(size);
        if a == offset && e == offset + n as u64 {
            self.read_aligned(buf, offset)?;
        } else {
            let mut tmp = vec![0u8; (e - a) as usize];
            self.read_aligned(&mut tmp, a)?;
            let s = (offset - a) as usize;
            buf.copy_from_slice(&tmp[s..s + n]);
        }
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64, "a write")?;
        self.check_aligned(offset, buf.len() as u64, "a write")?;
        // Sent without waiting for the replies: the caller goes on (a sync pass scans on)
        // while they are in flight. Reads, zeroes, block status and flushes collect them
        // first, so errors surface there at the latest, and always before a flush succeeds.
        for (o, n) in self.pieces(offset..offset + buf.len() as u64) {
            let a = (o - offset) as usize;
            self.client
                .write_behind(req(cmd::WRITE, 0, o, n), buf[a..a + n as usize].to_vec())?;
        }
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    fn segment(&self, offset: u64) -> io::Result<Segment> {
        let size = self.size();
        if offset >= size {
            return Ok(Segment { data: true, len: 0 });
        }
        if self.info().context_id(proto::BASE_ALLOCATION).is_none() {
            return Ok(Segment {
                data: true,
                len: size - offset,
            });
        }
        if let Some(s) = self.cached_segment(offset) {
            return Ok(s);
        }
        let whole = Segment {
            data: true,
            len: (size - offset).min(STATUS_SPAN),
        };
        match self.fetch_status(offset) {
            Ok(()) => Ok(self.cached_segment(offset).unwrap_or(whole)),
            // A lost connection (after the retries) or a server that broke the protocol is an
            // error; a server that refuses block status for this range is read as data.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::InvalidData
                ) =>
            {
                Err(e)
            }
            Err(_) => Ok(whole),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len, "writing zeroes")?;
        self.check_aligned(offset, len, "writing zeroes")?;
        self.client.settle()?;
        if self.info().has(tflag::SEND_WRITE_ZEROES) {
            let pieces = self.pieces(offset..offset + len);
            let reqs: Vec<(Request, Option<&[u8]>)> = pieces
                .iter()
                .map(|&(o, n)| (req(cmd::WRITE_ZEROES, 0, o, n), None))
                .collect();
            for batch in reqs.chunks(64) {
                self.client.execute_many(batch)?;
            }
        } else {
            let max = (self.info().max_request as u64).min(4 << 20);
            let zeros = vec![0u8; max as usize];
            let mut o = offset;
            while o < offset + len {
                let n = (offset + len - o).min(max) as usize;
                self.write_all_at(&zeros[..n], o)?;
                o += n as u64;
            }
        }
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len == self.size() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "an NBD export cannot be resized (it is {} bytes, {len} asked)",
                self.size()
            ),
        ))
    }

    fn sync(&self) -> io::Result<()> {
        self.client.settle()?;
        if self.info().read_only() || !self.info().has(tflag::SEND_FLUSH) {
            return Ok(());
        }
        self.client.execute(req(cmd::FLUSH, 0, 0, 0), None)?;
        Ok(())
    }
}
