//! The NBD server: exports (a virtual disk, read-only or writable), the fixed newstyle
//! negotiation and the transmission phase of one connection.
//!
//! One connection is served by [`Server::handle`] on the caller's thread. During negotiation
//! that thread reads options and answers them in order. During transmission it reads requests
//! and hands them to a small pool of worker threads (scoped to the connection), which execute
//! them and write each reply whole under the connection's write lock; at most
//! [`ServerOptions::max_in_flight`] requests (and [`MAX_IN_FLIGHT_BYTES`] of payload) are in
//! flight at once, so memory stays flat whatever the client sends. `NBD_CMD_DISC`, the end of
//! the stream and the server's cancellation flag all stop the reading, let the requests in
//! flight finish and be answered, flush a writable export and end the connection.
//!
//! Nothing a client sends can panic the server or reach outside the export: every request is
//! checked (command, flags, range, length, read-only) before it touches the image, and a
//! protocol violation ends only that connection. Several connections are served by calling
//! [`Server::handle`] from several threads; they share the exports.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{ExtentKind, Format, ImageReader, ImageUpdater};
use crate::net::proto::{
    self, ChunkPayload, GoRequest, Info, MAX_OPTION_PAYLOAD, MAX_PAYLOAD, MAX_STRING,
    MetaContextRequest, OptionHeader, OptionReplyHeader, Request, SimpleReply, alloc, cflag, cmd,
    errno, opt, rep, tflag,
};
use crate::net::tls::TlsServerConfig;
use crate::net::transport::Transport;

/// Default number of requests in flight per connection (as qemu-nbd).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Default number of worker threads per connection.
pub const DEFAULT_WORKERS: usize = 4;
/// Most payload bytes (write data read, read data being built) in flight per connection: a
/// request larger than what is left waits until the others are answered.
pub const MAX_IN_FLIGHT_BYTES: u64 = 128 << 20;
/// Most options one connection may send before choosing an export.
pub const MAX_OPTIONS: u32 = 4096;
/// Most extents in one `NBD_CMD_BLOCK_STATUS` reply per context (the reply then covers less
/// than the request, which the protocol allows).
pub const MAX_STATUS_EXTENTS: usize = 1 << 16;
/// A worker's reply buffer is kept for the next request up to this capacity (larger ones,
/// for reads of up to [`MAX_PAYLOAD`], are freed after their reply).
const REUSED_BUFFER: usize = 8 << 20;
/// Id of the `base:allocation` context; dirty bitmap `i` of an export has id `2 + i`.
const ALLOCATION_ID: u32 = 1;

/// A stream a connection is served over: a TCP or Unix socket, a TLS session over one, or an
/// in-memory stream in tests.
///
/// A socket should have a read timeout (a fraction of a second): a read that times out is
/// retried after the cancellation flag was checked, which is how a blocked connection notices
/// that the server is stopping.
pub trait ServerStream: Read + Write + Send {
    /// Splits the stream into halves usable concurrently from two threads (transmission reads
    /// requests on one and writes replies on the other).
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)>;

    /// Whether the stream is encrypted (TLS).
    fn is_tls(&self) -> bool {
        false
    }

    /// The stream as a socket [`Transport`], for the TLS upgrade of [`ServerTls`]; `None` for
    /// streams that are not one.
    fn into_transport(self: Box<Self>) -> Option<Transport> {
        None
    }
}

impl ServerStream for Transport {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let (r, w) = Transport::split(*self)?;
        Ok((Box::new(r), Box::new(w)))
    }

    fn is_tls(&self) -> bool {
        Transport::is_tls(self)
    }

    fn into_transport(self: Box<Self>) -> Option<Transport> {
        Some(*self)
    }
}

impl ServerStream for std::net::TcpStream {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let r = self.try_clone()?;
        Ok((Box::new(r), self))
    }
}

impl ServerStream for std::os::unix::net::UnixStream {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let r = self.try_clone()?;
        Ok((Box::new(r), self))
    }
}

/// What upgrades a plain stream to TLS after `NBD_OPT_STARTTLS` (the server's side of the
/// handshake, with its certificate or pre-shared keys).
pub trait TlsUpgrade: Send + Sync {
    /// Runs the TLS handshake over `stream` and returns the encrypted stream.
    fn upgrade(&self, stream: Box<dyn ServerStream>) -> io::Result<Box<dyn ServerStream>>;
}

/// Longest wait for the client's part of the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS through the socket transport ([`Transport::start_tls_server`]): the server's
/// certificate or pre-shared keys.
pub struct ServerTls {
    config: TlsServerConfig,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.config)
            .finish()
    }
}

impl ServerTls {
    /// Upgrades with `config`. The socket's read timeout is [`TLS_HANDSHAKE_TIMEOUT`] during
    /// the handshake and `read_timeout` afterwards (the polling interval of the caller, see
    /// [`ServerStream`]).
    pub fn new(config: TlsServerConfig, read_timeout: Option<Duration>) -> ServerTls {
        ServerTls {
            config,
            read_timeout,
        }
    }
}

impl TlsUpgrade for ServerTls {
    fn upgrade(&self, stream: Box<dyn ServerStream>) -> io::Result<Box<dyn ServerStream>> {
        let t = stream.into_transport().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, "TLS needs a socket connection")
        })?;
        // A second handle on the socket sets its timeouts (they belong to the socket, shared
        // by every handle): the handshake may take longer than a polling interval.
        let handle = match &t {
            Transport::Plain(sock) => Some(sock.try_clone()?),
            Transport::Tls(_) => None,
        };
        if let Some(h) = &handle {
            h.set_read_timeout(Some(TLS_HANDSHAKE_TIMEOUT))?;
        }
        let t = t
            .start_tls_server(&self.config)
            .map_err(|e| io::Error::other(e.chain()))?;
        if let Some(h) = &handle {
            h.set_read_timeout(self.read_timeout)?;
        }
        Ok(Box::new(t))
    }
}

/// One persistent dirty bitmap offered as the `qemu:dirty-bitmap:NAME` context.
#[derive(Debug, Clone)]
struct DirtyBitmap {
    name: String,
    /// Dirty byte ranges, ascending, not overlapping.
    ranges: Vec<Range<u64>>,
}

enum Image {
    ReadOnly(Arc<dyn ImageReader>),
    Writable(RwLock<Box<dyn ImageUpdater>>),
}

/// A virtual disk offered under a name: read-only (any [`ImageReader`]) or writable (an
/// [`ImageUpdater`] shared by every connection to it, behind a lock: reads run in parallel,
/// writes one at a time).
pub struct Export {
    name: String,
    description: String,
    size: u64,
    format: Format,
    preferred_block: u32,
    image: Image,
    bitmaps: Vec<DirtyBitmap>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("format", &self.format)
            .field("writable", &self.is_writable())
            .finish()
    }
}

/// The preferred block size of an image: its cluster (block, grain) size when that is a
/// power of two from 4 KiB to 2 MiB, else 4 KiB.
fn preferred_block(img: &dyn ImageReader) -> u32 {
    match img.info().cluster_size {
        Some(c) if c.is_power_of_two() && (4096..=2 << 20).contains(&c) => c as u32,
        _ => 4096,
    }
}

impl Export {
    /// A read-only export of `image` named `name` (the empty name is the default export).
    pub fn read_only(name: impl Into<String>, image: Arc<dyn ImageReader>) -> Export {
        Export {
            name: name.into(),
            description: String::new(),
            size: image.virtual_size(),
            format: image.format(),
            preferred_block: preferred_block(image.as_ref()),
            image: Image::ReadOnly(image),
            bitmaps: Vec::new(),
        }
    }

    /// A writable export of the image `updater` changes in place.
    pub fn writable(name: impl Into<String>, updater: Box<dyn ImageUpdater>) -> Export {
        Export {
            name: name.into(),
            description: String::new(),
            size: updater.virtual_size(),
            format: updater.format(),
            preferred_block: preferred_block(updater.as_ref()),
            image: Image::Writable(RwLock::new(updater)),
            bitmaps: Vec::new(),
        }
    }

    /// Sets the description `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION` show (cut to
    /// [`MAX_STRING`] bytes).
    pub fn with_description(mut self, description: impl Into<String>) -> Export {
        let mut d: String = description.into();
        if d.len() > MAX_STRING {
            let mut cut = MAX_STRING;
            while !d.is_char_boundary(cut) {
                cut -= 1;
            }
            d.truncate(cut);
        }
        self.description = d;
        self
    }

    /// Offers the dirty byte ranges `ranges` (as [`Qcow2Reader::dirty_ranges`] returns them)
    /// as the metadata context `qemu:dirty-bitmap:NAME`. Refused for a writable export (its
    /// writes would not be recorded in the bitmap, which would then lie) and for a name that
    /// is empty, too long or offered twice.
    ///
    /// [`Qcow2Reader::dirty_ranges`]: crate::formats::qcow2::Qcow2Reader::dirty_ranges
    pub fn with_dirty_bitmap(
        mut self,
        name: impl Into<String>,
        mut ranges: Vec<Range<u64>>,
    ) -> Result<Export> {
        let name = name.into();
        if self.is_writable() {
            return Err(Error::InvalidArgument(format!(
                "the dirty bitmap '{name}' cannot be offered on a writable export: writes \
                 through the export would not be recorded in it"
            )));
        }
        if name.is_empty() || proto::DIRTY_BITMAP_PREFIX.len() + name.len() > MAX_STRING {
            return Err(Error::InvalidArgument(format!(
                "'{name}' is not a usable bitmap name (empty or too long)"
            )));
        }
        if self.bitmaps.iter().any(|b| b.name == name) {
            return Err(Error::InvalidArgument(format!(
                "the dirty bitmap '{name}' is offered twice"
            )));
        }
        ranges.retain(|r| r.start < r.end);
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            let r = r.start.min(self.size)..r.end.min(self.size);
            if r.start >= r.end {
                continue;
            }
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.bitmaps.push(DirtyBitmap {
            name,
            ranges: merged,
        });
        Ok(self)
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The export's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Size of the virtual disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether clients may write.
    pub fn is_writable(&self) -> bool {
        matches!(self.image, Image::Writable(_))
    }

    /// Names of the dirty bitmaps offered.
    pub fn bitmap_names(&self) -> Vec<&str> {
        self.bitmaps.iter().map(|b| b.name.as_str()).collect()
    }

    /// Whether zeroing is fast (no data written): the formats whose updaters punch holes or
    /// mark zero clusters.
    fn fast_zero(&self) -> bool {
        matches!(self.format, Format::Raw | Format::Qcow2)
    }

    /// The transmission flags sent with the export.
    ///
    /// `NBD_FLAG_CAN_MULTI_CONN` is set for both kinds of export: a read-only export never
    /// changes, and a writable one is a single updater shared by every connection of this
    /// process behind one lock, so a write completed on one connection is seen by a read on
    /// any other, and a flush on any connection flushes that one updater, covering the
    /// completed writes of all of them (which is what the flag promises).
    pub fn flags(&self) -> u16 {
        let mut f = tflag::HAS_FLAGS | tflag::SEND_DF | tflag::SEND_CACHE | tflag::CAN_MULTI_CONN;
        if self.is_writable() {
            f |= tflag::SEND_FLUSH
                | tflag::SEND_FUA
                | tflag::SEND_TRIM
                | tflag::SEND_WRITE_ZEROES
                | tflag::SEND_FAST_ZERO;
        } else {
            f |= tflag::READ_ONLY;
        }
        f
    }

    /// Flushes a writable export (nothing to do for a read-only one).
    pub fn flush(&self) -> Result<()> {
        match &self.image {
            Image::ReadOnly(_) => Ok(()),
            Image::Writable(u) => lock_write(u).flush(),
        }
    }

    fn with_reader<T>(&self, f: impl FnOnce(&dyn ImageReader) -> T) -> T {
        match &self.image {
            Image::ReadOnly(r) => f(r.as_ref()),
            Image::Writable(u) => {
                let g = u.read().unwrap_or_else(|p| p.into_inner());
                f(g.as_ref())
            }
        }
    }
}

fn lock_write(
    u: &RwLock<Box<dyn ImageUpdater>>,
) -> std::sync::RwLockWriteGuard<'_, Box<dyn ImageUpdater>> {
    u.write().unwrap_or_else(|p| p.into_inner())
}

/// Tuning and policy of a [`Server`].
#[derive(Clone)]
pub struct ServerOptions {
    /// Upgrades connections on `NBD_OPT_STARTTLS`. When set, TLS is required: every option
    /// but `STARTTLS` and `ABORT` sent before it is refused with `NBD_REP_ERR_TLS_REQD`.
    pub tls: Option<Arc<dyn TlsUpgrade>>,
    /// Requests in flight per connection (at least 1).
    pub max_in_flight: usize,
    /// Worker threads per connection (at least 1).
    pub workers: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            workers: DEFAULT_WORKERS,
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("tls", &self.tls.is_some())
            .field("max_in_flight", &self.max_in_flight)
            .field("workers", &self.workers)
            .finish()
    }
}

/// What happened on one connection, for the server's log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionReport {
    /// The peer, as the caller described it.
    pub peer: String,
    /// The export the client chose (none when it left during negotiation).
    pub export: Option<String>,
    /// Whether the connection was upgraded to TLS.
    pub tls: bool,
    /// Bytes of export data sent to the client (reads).
    pub bytes_read: u64,
    /// Bytes of data the client wrote.
    pub bytes_written: u64,
    /// Transmission requests received.
    pub requests: u64,
    /// Why the connection ended abnormally (a protocol violation, an I/O error), if it did.
    pub error: Option<String>,
}

/// An NBD server: its exports and options. Share it between connection threads with an
/// [`Arc`]; [`Server::handle`] serves one connection.
pub struct Server {
    exports: Vec<Arc<Export>>,
    options: ServerOptions,
    cancel: Arc<AtomicBool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("exports", &self.exports)
            .field("options", &self.options)
            .finish()
    }
}

/// The chosen export and what was negotiated for it.
struct Session {
    export: Arc<Export>,
    structured: bool,
    /// Selected metadata contexts (ids).
    contexts: Vec<u32>,
}

enum Negotiated {
    Transmit(Session),
    Closed,
}

/// The end of a read that may be cancelled.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    Full,
    /// End of stream before the first byte.
    Eof,
    Cancelled,
}

/// Fills `buf`, retrying reads that time out (checking `cancel` in between: the stream's read
/// timeout is how a blocked connection notices the server is stopping).
fn read_full(
    r: &mut (impl Read + ?Sized),
    buf: &mut [u8],
    cancel: &AtomicBool,
) -> io::Result<ReadEnd> {
    let mut pos = 0;
    while pos < buf.len() {
        if pos == 0 && cancel.load(Ordering::Relaxed) {
            return Ok(ReadEnd::Cancelled);
        }
        match r.read(&mut buf[pos..]) {
            Ok(0) if pos == 0 => return Ok(ReadEnd::Eof),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the client closed the connection in the middle of a message ({pos} of \
                         {} bytes)",
                        buf.len()
                    ),
                ));
            }
            Ok(n) => pos += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                // Stopping: a message the client has not finished sending is dropped.
                if cancel.load(Ordering::Relaxed) {
                    return Ok(ReadEnd::Cancelled);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ReadEnd::Full)
}

/// Reads and drops `n` bytes.
fn skip(r: &mut (impl Read + ?Sized), mut n: u64, cancel: &AtomicBool) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        match read_full(r, &mut buf[..k], cancel)? {
            ReadEnd::Full => n -= k as u64,
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn option_reply(
    w: &mut (impl Write + ?Sized),
    option: u32,
    reply_type: u32,
    payload: &[u8],
) -> io::Result<()> {
    let h = OptionReplyHeader {
        option,
        reply_type,
        length: payload.len() as u32,
    };
    let mut b = Vec::with_capacity(proto::OPTION_REPLY_HEADER_LEN + payload.len());
    b.extend_from_slice(&h.encode());
    b.extend_from_slice(payload);
    w.write_all(&b)?;
    w.flush()
}

fn option_error(
    w: &mut (impl Write + ?Sized),
    option: u32,
    reply_type: u32,
    message: &str,
) -> io::Result<()> {
    let m = &message.as_bytes()[..message.len().min(MAX_STRING)];
    option_reply(w, option, reply_type, m)
}

/// A transmission-phase error: errno and message.
struct CmdError(u32, String);

impl CmdError {
    fn new(e: u32, msg: impl Into<String>) -> Self {
        CmdError(e, msg.into())
    }
    fn from_error(what: &str, e: &Error) -> Self {
        let mut code = errno::EIO;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(x) = cur {
            if let Some(io) = x.downcast_ref::<io::Error>() {
                code = proto::errno_of(io);
                break;
            }
            cur = x.source();
        }
        CmdError(code, format!("{what}: {}", e.chain()))
    }
}

/// Payload accounting of the requests in flight.
struct InFlight {
    state: Mutex<(usize, u64)>,
    cv: Condvar,
    max_count: usize,
}

impl InFlight {
    fn acquire(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.0 > 0 && (s.0 >= self.max_count || s.1 + bytes > MAX_IN_FLIGHT_BYTES) {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.0 += 1;
        s.1 += bytes;
    }
    fn release(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_sub(1);
        s.1 = s.1.saturating_sub(bytes);
        self.cv.notify_all();
    }
}

struct Job {
    req: Request,
    payload: Vec<u8>,
    weight: u64,
}

/// Counters of one connection.
#[derive(Default)]
struct Counters {
    read: AtomicU64,
    written: AtomicU64,
    requests: AtomicU64,
}

impl Server {
    /// A server of `exports` (names must be distinct; the first is also the default export,
    /// the one an empty name selects when no export is named "").
    pub fn new(exports: Vec<Export>, mut options: ServerOptions) -> Result<Server> {
        if exports.is_empty() {
            return Err(Error::InvalidArgument(
                "an NBD server needs at least one export".into(),
            ));
        }
        for (i, e) in exports.iter().enumerate() {
            if e.name.len() > MAX_STRING {
                return Err(Error::InvalidArgument(format!(
                    "export name of {} bytes is longer than the {MAX_STRING} allowed",
                    e.name.len()
                )));
            }
            if exports[..i].iter().any(|o| o.name == e.name) {
                return Err(Error::InvalidArgument(format!(
                    "the export name '{}' is given twice",
                    e.name
                )));
            }
        }
        options.max_in_flight = options.max_in_flight.max(1);
        options.workers = options.workers.clamp(1, options.max_in_flight);
        Ok(Server {
            exports: exports.into_iter().map(Arc::new).collect(),
            options,
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The exports.
    pub fn exports(&self) -> &[Arc<Export>] {
        &self.exports
    }

    /// The flag that stops every connection: set it (from a signal handler, or when the
    /// server shuts down) and each connection stops reading, answers the requests in flight,
    /// flushes its export and ends.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Uses `cancel` as the cancellation flag (see [`Server::cancel_flag`]).
    pub fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> Server {
        self.cancel = cancel;
        self
    }

    /// Flushes every writable export.
    pub fn flush_all(&self) -> Result<()> {
        for e in &self.exports {
            e.flush()?;
        }
        Ok(())
    }

    fn find(&self, name: &str) -> Option<Arc<Export>> {
        if let Some(e) = self.exports.iter().find(|e| e.name == name) {
            return Some(e.clone());
        }
        if name.is_empty() {
            return self.exports.first().cloned();
        }
        None
    }

    /// Serves one connection to its end; `peer` describes the client in the report. Never
    /// panics on what the client sends; a protocol violation or an I/O error ends this
    /// connection only and is recorded in the report.
    pub fn handle(&self, stream: Box<dyn ServerStream>, peer: &str) -> ConnectionReport {
        let mut report = ConnectionReport {
            peer: peer.to_string(),
            ..ConnectionReport::default()
        };
        let (stream, outcome) = match self.negotiate(stream, &mut report) {
            Ok(x) => x,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        };
        let Negotiated::Transmit(session) = outcome else {
            return report;
        };
        report.export = Some(session.export.name.clone());
        let (r, w) = match stream.split() {
            Ok(x) => x,
            Err(e) => {
                report.error = Some(format!("splitting the connection: {e}"));
                return report;
            }
        };
        let counters = Counters::default();
        if let Err(e) = self.transmit(&session, r, w, &counters) {
            report.error = Some(e);
        }
        report.bytes_read = counters.read.load(Ordering::Relaxed);
        report.bytes_written = counters.written.load(Ordering::Relaxed);
        report.requests = counters.requests.load(Ordering::Relaxed);
        if let Err(e) = session.export.flush() {
            let msg = format!("flushing the export at disconnect: {}", e.chain());
            report.error = Some(match report.error.take() {
                Some(prev) => format!("{prev}; {msg}"),
                None => msg,
            });
        }
        report
    }

    // ---- Negotiation ----

    fn negotiate(
        &self,
        mut s: Box<dyn ServerStream>,
        report: &mut ConnectionReport,
    ) -> io::Result<(Box<dyn ServerStream>, Negotiated)> {
        let cancel = self.cancel.clone();
        s.write_all(&proto::encode_greeting(
            proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES,
        ))?;
        s.flush()?;
        let mut cf = [0u8; 4];
        if read_full(&mut s, &mut cf, &cancel)? != ReadEnd::Full {
            return Ok((s, Negotiated::Closed));
        }
        let client_flags = u32::from_be_bytes(cf);
        if client_flags & !(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES) != 0 {
            return Err(invalid(format!(
                "the client sent unknown handshake flags {client_flags:#x}"
            )));
        }
        let no_zeroes = client_flags & proto::CLIENT_NO_ZEROES != 0;
        let mut structured = false;
        // The export name the selected contexts belong to, and their ids.
        let mut meta: Option<(String, Vec<u32>)> = None;
        for _ in 0..MAX_OPTIONS {
            let mut hb = [0u8; proto::OPTION_HEADER_LEN];
            if read_full(&mut s, &mut hb, &cancel)? != ReadEnd::Full {
                return Ok((s, Negotiated::Closed));
            }
            let h = OptionHeader::decode(&hb)?;
            let o = h.option;
            if h.length > MAX_OPTION_PAYLOAD {
                if o == opt::EXPORT_NAME {
                    return Err(invalid(format!(
                        "NBD_OPT_EXPORT_NAME with a name of {} bytes",
                        h.length
                    )));
                }
                if !skip(&mut s, h.length as u64, &cancel)? {
                    return Ok((s, Negotiated::Closed));
                }
                option_error(
                    &mut s,
                    o,
                    rep::ERR_TOO_BIG,
                    &format!(
                        "{} payload of {} bytes is larger than the {MAX_OPTION_PAYLOAD} accepted",
                        proto::option_name(o),
                        h.length
                    ),
                )?;
                continue;
            }
            let mut payload = vec![0u8; h.length as usize];
            if read_full(&mut s, &mut payload, &cancel)? != ReadEnd::Full && !payload.is_empty() {
                return Ok((s, Negotiated::Closed));
            }
            if self.options.tls.is_some() && !s.is_tls() {
                match o {
                    opt::STARTTLS | opt::ABORT => {}
                    opt::EXPORT_NAME => {
                        return Err(invalid(
                            "NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS",
                        ));
                    }
                    _ => {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_TLS_REQD,
                            &format!("{}: this server requires TLS first", proto::option_name(o)),
                        )?;
                        continue;
                    }
                }
            }
            match o {
                opt::EXPORT_NAME => {
                    let name = match std::str::from_utf8(&payload) {
                        Ok(n) if n.len() <= MAX_STRING => n.to_string(),
                        _ => return Err(invalid("NBD_OPT_EXPORT_NAME with an invalid name")),
                    };
                    let Some(export) = self.find(&name) else {
                        return Err(invalid(format!(
                            "NBD_OPT_EXPORT_NAME for the unknown export '{name}'"
                        )));
                    };
                    let mut b = Vec::with_capacity(134);
                    b.extend_from_slice(&export.size.to_be_bytes());
                    b.extend_from_slice(&export.flags().to_be_bytes());
                    if !no_zeroes {
                        b.extend_from_slice(&[0u8; 124]);
                    }
                    s.write_all(&b)?;
                    s.flush()?;
                    let contexts = take_contexts(&mut meta, &export.name);
                    return Ok((
                        s,
                        Negotiated::Transmit(Session {
                            export,
                            structured,
                            contexts,
                        }),
                    ));
                }
                opt::ABORT => {
                    // The client may already be gone: a failed acknowledgement is no error.
                    let _ = option_reply(&mut s, o, rep::ACK, &[]);
                    return Ok((s, Negotiated::Closed));
                }
                opt::LIST => {
                    if !payload.is_empty() {
                        option_error(&mut s, o, rep::ERR_INVALID, "NBD_OPT_LIST takes no payload")?;
                        continue;
                    }
                    for e in &self.exports {
                        option_reply(
                            &mut s,
                            o,
                            rep::SERVER,
                            &proto::encode_server_reply(&e.name, &e.description),
                        )?;
                    }
                    option_reply(&mut s, o, rep::ACK, &[])?;
                }
                opt::STARTTLS => {
                    let Some(tls) = self.options.tls.clone() else {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_UNSUP,
                            "this server is not configured for TLS",
                        )?;
                        continue;
                    };
                    if s.is_tls() {
                        option_error(&mut s, o, rep::ERR_INVALID, "TLS is already in use")?;
                        continue;
                    }
                    if !payload.is_empty() {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_INVALID,
                            "NBD_OPT_STARTTLS takes no payload",
                        )?;
                        continue;
                    }
                    option_reply(&mut s, o, rep::ACK, &[])?;
                    s = tls.upgrade(s).map_err(|e| {
                        io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))
                    })?;
                    report.tls = true;
                    // Nothing negotiated before TLS carries over.
                    structured = false;
                    meta = None;
                }
                opt::INFO | opt::GO => {
                    let g = match GoRequest::decode(&payload) {
                        Ok(g) => g,
                        Err(e) => {
                            option_error(&mut s, o, rep::ERR_INVALID, &e.0)?;
                            continue;
                        }
                    };
                    let Some(export) = self.find(&g.name) else {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_UNKNOWN,
                            &format!("no export named '{}'", g.name),
                        )?;
                        continue;
                    };
                    let mut infos = vec![
                        Info::Export {
                            size: export.size,
                            flags: export.flags(),
                        },
                        Info::BlockSize {
                            min: 1,
                            preferred: export.preferred_block,
                            max: MAX_PAYLOAD,
                        },
                    ];
                    if g.infos.contains(&proto::info::NAME) {
                        infos.push(Info::Name(export.name.clone()));
                    }
                    if g.infos.contains(&proto::info::DESCRIPTION) && !export.description.is_empty()
                    {
                        infos.push(Info::Description(export.description.clone()));
                    }
                    for i in infos {
                        option_reply(&mut s, o, rep::INFO, &i.encode())?;
                    }
                    option_reply(&mut s, o, rep::ACK, &[])?;
                    if o == opt::GO {
                        let contexts = take_contexts(&mut meta, &g.name);
                        return Ok((
                            s,
                            Negotiated::Transmit(Session {
                                export,
                                structured,
                                contexts,
                            }),
                        ));
                    }
                }
                opt::STRUCTURED_REPLY => {
                    if !payload.is_empty() {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_INVALID,
                            "NBD_OPT_STRUCTURED_REPLY takes no payload",
                        )?;
                    } else if structured {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_INVALID,
                            "structured replies are already negotiated",
                        )?;
                    } else {
                        structured = true;
                        option_reply(&mut s, o, rep::ACK, &[])?;
                    }
                }
                opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                    if !structured {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_INVALID,
                            "metadata contexts need structured replies (NBD_OPT_STRUCTURED_REPLY) first",
                        )?;
                        continue;
                    }
                    let m = match MetaContextRequest::decode(&payload) {
                        Ok(m) => m,
                        Err(e) => {
                            option_error(&mut s, o, rep::ERR_INVALID, &e.0)?;
                            continue;
                        }
                    };
                    let Some(export) = self.find(&m.export) else {
                        option_error(
                            &mut s,
                            o,
                            rep::ERR_UNKNOWN,
                            &format!("no export named '{}'", m.export),
                        )?;
                        continue;
                    };
                    let set = o == opt::SET_META_CONTEXT;
                    let ids = match_contexts(&export, &m.queries, set);
                    for id in &ids {
                        let name = context_name(&export, *id);
                        option_reply(
                            &mut s,
                            o,
                            rep::META_CONTEXT,
                            &proto::encode_meta_context_reply(*id, &name),
                        )?;
                    }
                    option_reply(&mut s, o, rep::ACK, &[])?;
                    if set {
                        meta = Some((m.export, ids));
                    }
                }
                _ => {
                    option_error(
                        &mut s,
                        o,
                        rep::ERR_UNSUP,
                        &format!("{} is not supported", proto::option_name(o)),
                    )?;
                }
            }
        }
        Err(invalid(format!(
            "more than {MAX_OPTIONS} options without choosing an export"
        )))
    }

    // ---- Transmission ----

    fn transmit(
        &self,
        session: &Session,
        mut r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        counters: &Counters,
    ) -> std::result::Result<(), String> {
        let writer = Mutex::new(w);
        let broken = AtomicBool::new(false);
        let inflight = InFlight {
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            max_count: self.options.max_in_flight,
        };
        let (tx, rx) = mpsc::sync_channel::<Job>(self.options.max_in_flight);
        let rx = Mutex::new(rx);
        let write_reply = |b: &[u8]| {
            if broken.load(Ordering::Relaxed) {
                return;
            }
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.write_all(b).and_then(|_| w.flush()).is_err() {
                broken.store(true, Ordering::Relaxed);
            }
        };
        std::thread::scope(|scope| {
            for _ in 0..self.options.workers {
                scope.spawn(|| {
                    // The reply buffer, reused from request to request: no allocation (and no
                    // fresh pages to fault in) per read.
                    let mut out = Vec::new();
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        let Ok(job) = job else { break };
                        self.execute(session, &job.req, &job.payload, counters, &mut out);
                        drop(job.payload);
                        write_reply(&out);
                        inflight.release(job.weight);
                        if out.capacity() > REUSED_BUFFER {
                            out = Vec::new();
                        }
                    }
                });
            }
            let result = (|| {
                loop {
                    if broken.load(Ordering::Relaxed) {
                        return Err("the client stopped reading replies".to_string());
                    }
                    let mut hb = [0u8; proto::REQUEST_LEN];
                    match read_full(&mut r, &mut hb, &self.cancel) {
                        Ok(ReadEnd::Full) => {}
                        Ok(_) => return Ok(()),
                        Err(e) => return Err(format!("reading a request: {e}")),
                    }
                    let req = Request::decode(&hb).map_err(|e| e.0)?;
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    if req.command == cmd::DISC {
                        return Ok(());
                    }
                    let mut payload = Vec::new();
                    let weight = match req.command {
                        cmd::WRITE => {
                            if req.length > MAX_PAYLOAD {
                                // The payload cannot be taken in, and skipping up to 4 GiB to
                                // stay in step is not worth it: refuse and close.
                                let e = CmdError::new(
                                    errno::EINVAL,
                                    format!(
                                        "NBD_CMD_WRITE of {} bytes is longer than the {MAX_PAYLOAD} allowed",
                                        req.length
                                    ),
                                );
                                write_reply(&self.error_reply(session, &req, e));
                                return Err(format!(
                                    "NBD_CMD_WRITE of {} bytes (more than {MAX_PAYLOAD}): connection closed",
                                    req.length
                                ));
                            }
                            req.length as u64
                        }
                        cmd::READ => (req.length.min(MAX_PAYLOAD)) as u64,
                        _ => 0,
                    };
                    inflight.acquire(weight);
                    if req.command == cmd::WRITE {
                        payload = vec![0u8; req.length as usize];
                        match read_full(&mut r, &mut payload, &self.cancel) {
                            Ok(ReadEnd::Full) => {}
                            Ok(ReadEnd::Cancelled) => {
                                inflight.release(weight);
                                return Ok(());
                            }
                            Ok(ReadEnd::Eof) => {
                                inflight.release(weight);
                                return Err(
                                    "the client closed the connection before the data of a write"
                                        .into(),
                                );
                            }
                            Err(e) => {
                                inflight.release(weight);
                                return Err(format!("reading the data of a write: {e}"));
                            }
                        }
                    }
                    if tx
                        .send(Job {
                            req,
                            payload,
                            weight,
                        })
                        .is_err()
                    {
                        return Err("the worker threads stopped".into());
                    }
                }
            })();
            drop(tx);
            result
        })
    }

    fn simple(&self, cookie: u64, error: u32) -> Vec<u8> {
        SimpleReply { error, cookie }.encode().to_vec()
    }

    fn error_reply(&self, s: &Session, req: &Request, e: CmdError) -> Vec<u8> {
        if s.structured && matches!(req.command, cmd::READ | cmd::BLOCK_STATUS) {
            proto::encode_chunk(
                req.cookie,
                true,
                &ChunkPayload::Error {
                    error: e.0,
                    message: e.1,
                    offset: None,
                },
            )
        } else {
            self.simple(req.cookie, e.0)
        }
    }

    /// Executes one request and puts its whole reply in `out`.
    fn execute(&self, s: &Session, req: &Request, payload: &[u8], c: &Counters, out: &mut Vec<u8>) {
        out.clear();
        match self.run(s, req, payload, c, out) {
            Ok(None) => {}
            Ok(Some(reply)) => *out = reply,
            Err(e) => {
                out.clear();
                out.extend_from_slice(&self.error_reply(s, req, e));
            }
        }
    }

    fn run(
        &self,
        s: &Session,
        req: &Request,
        payload: &[u8],
        c: &Counters,
        out: &mut Vec<u8>,
    ) -> std::result::Result<Option<Vec<u8>>, CmdError> {
        let ex = &s.export;
        let name = proto::command_name(req.command);
        let allowed = match req.command {
            cmd::READ => cflag::FUA | if s.structured { cflag::DF } else { 0 },
            cmd::WRITE | cmd::TRIM | cmd::FLUSH | cmd::CACHE => cflag::FUA,
            cmd::WRITE_ZEROES => cflag::FUA | cflag::NO_HOLE | cflag::FAST_ZERO,
            cmd::BLOCK_STATUS => cflag::REQ_ONE,
            _ => {
                return Err(CmdError::new(
                    errno::EINVAL,
                    format!("{name} is not supported"),
                ));
            }
        };
        if req.flags & !allowed != 0 {
            return Err(CmdError::new(
                errno::EINVAL,
                format!(
                    "{name} with unknown or inapplicable flags {:#x}",
                    req.flags & !allowed
                ),
            ));
        }
        let writes = matches!(req.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if writes && !ex.is_writable() {
            return Err(CmdError::new(
                errno::EPERM,
                format!("{name}: the export is read-only"),
            ));
        }
        if req.command != cmd::FLUSH {
            if req.length == 0 {
                return Err(CmdError::new(errno::EINVAL, format!("{name} of length 0")));
            }
            let past_end = req
                .offset
                .checked_add(req.length as u64)
                .is_none_or(|end| end > ex.size);
            if past_end {
                let e = if matches!(req.command, cmd::WRITE | cmd::WRITE_ZEROES) {
                    errno::ENOSPC
                } else {
                    errno::EINVAL
                };
                return Err(CmdError::new(
                    e,
                    format!(
                        "{name} of {} bytes at offset {} goes past the end of the export ({} bytes)",
                        req.length, req.offset, ex.size
                    ),
                ));
            }
        }
        if req.command == cmd::READ && req.length > MAX_PAYLOAD {
            return Err(CmdError::new(
                errno::EINVAL,
                format!(
                    "{name} of {} bytes is longer than the {MAX_PAYLOAD} allowed",
                    req.length
                ),
            ));
        }
        let fua = req.flags & cflag::FUA != 0;
        match req.command {
            cmd::READ => {
                self.read(s, req, out)?;
                c.read.fetch_add(req.length as u64, Ordering::Relaxed);
                Ok(None)
            }
            cmd::WRITE => {
                self.write(ex, |u| u.write_at(payload, req.offset), fua, "writing")?;
                c.written.fetch_add(payload.len() as u64, Ordering::Relaxed);
                Ok(Some(self.simple(req.cookie, 0)))
            }
            cmd::TRIM => {
                self.write(
                    ex,
                    |u| u.write_zeroes(req.offset, req.length as u64),
                    fua,
                    "trimming",
                )?;
                Ok(Some(self.simple(req.cookie, 0)))
            }
            cmd::WRITE_ZEROES => {
                let no_hole = req.flags & cflag::NO_HOLE != 0;
                if req.flags & cflag::FAST_ZERO != 0 && (no_hole || !ex.fast_zero()) {
                    return Err(CmdError::new(
                        errno::ENOTSUP,
                        format!(
                            "{name}: zeroing this range is not fast on a {} export",
                            ex.format
                        ),
                    ));
                }
                let (off, len) = (req.offset, req.length as u64);
                self.write(
                    ex,
                    |u| {
                        if !no_hole {
                            return u.write_zeroes(off, len);
                        }
                        // Keep the range allocated: write zeros.
                        let zeros = vec![0u8; len.min(1 << 20) as usize];
                        let mut done = 0;
                        while done < len {
                            let n = (len - done).min(zeros.len() as u64) as usize;
                            u.write_at(&zeros[..n], off + done)?;
                            done += n as u64;
                        }
                        Ok(())
                    },
                    fua,
                    "writing zeros",
                )?;
                Ok(Some(self.simple(req.cookie, 0)))
            }
            cmd::FLUSH => {
                ex.flush()
                    .map_err(|e| CmdError::from_error("flushing", &e))?;
                Ok(Some(self.simple(req.cookie, 0)))
            }
            cmd::CACHE => Ok(Some(self.simple(req.cookie, 0))),
            cmd::BLOCK_STATUS => self.block_status(s, req).map(Some),
            _ => Err(CmdError::new(
                errno::EINVAL,
                format!("{name} is not supported"),
            )),
        }
    }

    fn write(
        &self,
        ex: &Export,
        f: impl FnOnce(&mut dyn ImageUpdater) -> Result<()>,
        fua: bool,
        what: &str,
    ) -> std::result::Result<(), CmdError> {
        let Image::Writable(u) = &ex.image else {
            return Err(CmdError::new(errno::EPERM, "the export is read-only"));
        };
        let mut g = lock_write(u);
        f(g.as_mut()).map_err(|e| CmdError::from_error(what, &e))?;
        if fua {
            g.flush()
                .map_err(|e| CmdError::from_error("flushing", &e))?;
        }
        Ok(())
    }

    /// Puts the whole reply of a read in `out` (empty on entry).
    fn read(
        &self,
        s: &Session,
        req: &Request,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), CmdError> {
        let (off, len) = (req.offset, req.length as u64);
        let what =
            |e: &Error| CmdError::from_error(&format!("reading {len} bytes at offset {off}"), e);
        s.export.with_reader(|img| {
            if !s.structured {
                out.extend_from_slice(
                    &SimpleReply {
                        error: 0,
                        cookie: req.cookie,
                    }
                    .encode(),
                );
                out.resize(proto::SIMPLE_REPLY_LEN + len as usize, 0);
                img.read_at(&mut out[proto::SIMPLE_REPLY_LEN..], off)
                    .map_err(|e| what(&e))?;
                return Ok(());
            }
            if req.flags & cflag::DF != 0 {
                out.extend_from_slice(&proto::encode_data_chunk(req.cookie, true, off, len as u32));
                let h = out.len();
                out.resize(h + len as usize, 0);
                img.read_at(&mut out[h..], off).map_err(|e| what(&e))?;
                return Ok(());
            }
            // Runs of data and of zeros, from the image's map.
            let mut runs: Vec<(bool, u64, u64)> = Vec::new();
            let mut pos = off;
            let end = off + len;
            while pos < end {
                let e = img.map(pos, end - pos).map_err(|e| what(&e))?;
                if e.len == 0 || e.offset != pos {
                    return Err(CmdError::new(
                        errno::EIO,
                        format!("the image's map returned no extent at offset {pos}"),
                    ));
                }
                let n = e.len.min(end - pos);
                let data = e.kind == ExtentKind::Data;
                match runs.last_mut() {
                    Some(last) if last.0 == data => last.2 += n,
                    _ => runs.push((data, pos, n)),
                }
                pos += n;
            }
            out.reserve(
                runs.iter()
                    .map(|r| 32 + if r.0 { r.2 as usize } else { 0 })
                    .sum(),
            );
            let last = runs.len() - 1;
            for (i, (data, at, n)) in runs.into_iter().enumerate() {
                if data {
                    out.extend_from_slice(&proto::encode_data_chunk(
                        req.cookie,
                        i == last,
                        at,
                        n as u32,
                    ));
                    let h = out.len();
                    out.resize(h + n as usize, 0);
                    img.read_at(&mut out[h..], at).map_err(|e| what(&e))?;
                } else {
                    out.extend_from_slice(&proto::encode_chunk(
                        req.cookie,
                        i == last,
                        &ChunkPayload::Hole {
                            offset: at,
                            length: n as u32,
                        },
                    ));
                }
            }
            Ok(())
        })
    }

    fn block_status(&self, s: &Session, req: &Request) -> std::result::Result<Vec<u8>, CmdError> {
        if s.contexts.is_empty() {
            return Err(CmdError::new(
                errno::EINVAL,
                "NBD_CMD_BLOCK_STATUS without a metadata context selected (NBD_OPT_SET_META_CONTEXT)",
            ));
        }
        let one = req.flags & cflag::REQ_ONE != 0;
        let max = if one { 1 } else { MAX_STATUS_EXTENTS };
        let (off, end) = (req.offset, req.offset + req.length as u64);
        let mut out = Vec::new();
        for (i, &id) in s.contexts.iter().enumerate() {
            let extents = if id == ALLOCATION_ID {
                allocation_extents(&s.export, off, end, max)?
            } else {
                let b = (id as usize)
                    .checked_sub(2)
                    .and_then(|k| s.export.bitmaps.get(k))
                    .ok_or_else(|| CmdError::new(errno::EINVAL, "unknown metadata context"))?;
                dirty_extents(&b.ranges, off, end, max)
            };
            out.extend_from_slice(&proto::encode_chunk(
                req.cookie,
                i + 1 == s.contexts.len(),
                &ChunkPayload::BlockStatus {
                    context: id,
                    extents,
                },
            ));
        }
        Ok(out)
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The contexts selected for `export`, if the selection was made for that export name.
fn take_contexts(meta: &mut Option<(String, Vec<u32>)>, export: &str) -> Vec<u32> {
    match meta.take() {
        Some((name, ids)) if name == export => ids,
        _ => Vec::new(),
    }
}

fn context_name(export: &Export, id: u32) -> String {
    if id == ALLOCATION_ID {
        return proto::BASE_ALLOCATION.to_string();
    }
    let b = (id as usize)
        .checked_sub(2)
        .and_then(|k| export.bitmaps.get(k));
    match b {
        Some(b) => format!("{}{}", proto::DIRTY_BITMAP_PREFIX, b.name),
        None => String::new(),
    }
}

/// The context ids `queries` match: exact names, and for `LIST` (or any query of `SET` that
/// is a namespace alone, which the protocol leaves to the server) the namespaces `base:`,
/// `qemu:` and `qemu:dirty-bitmap:`. No query at all lists every context (`LIST`) and selects
/// none (`SET`).
fn match_contexts(export: &Export, queries: &[String], set: bool) -> Vec<u32> {
    let mut all = vec![ALLOCATION_ID];
    all.extend((0..export.bitmaps.len()).map(|i| i as u32 + 2));
    if queries.is_empty() {
        return if set { Vec::new() } else { all };
    }
    let mut ids = Vec::new();
    for q in queries {
        for &id in &all {
            let name = context_name(export, id);
            let hit = if set {
                *q == name
            } else {
                *q == name
                    || (q == "base:" && id == ALLOCATION_ID)
                    || ((q == "qemu:" || q == proto::DIRTY_BITMAP_PREFIX) && id != ALLOCATION_ID)
            };
            if hit && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// `base:allocation` extents of `[off, end)`: data 0, zero `ZERO`, unallocated `HOLE|ZERO`;
/// adjacent extents of one status merged; at most `max` of them.
fn allocation_extents(
    ex: &Export,
    off: u64,
    end: u64,
    max: usize,
) -> std::result::Result<Vec<(u32, u32)>, CmdError> {
    ex.with_reader(|img| {
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut pos = off;
        while pos < end {
            let e = img
                .map(pos, end - pos)
                .map_err(|e| CmdError::from_error(&format!("mapping offset {pos}"), &e))?;
            if e.len == 0 || e.offset != pos {
                return Err(CmdError::new(
                    errno::EIO,
                    format!("the image's map returned no extent at offset {pos}"),
                ));
            }
            let n = e.len.min(end - pos);
            let flags = match e.kind {
                ExtentKind::Data => 0,
                ExtentKind::Zero => alloc::ZERO,
                ExtentKind::Unallocated => alloc::HOLE | alloc::ZERO,
            };
            match out.last_mut() {
                Some(last) if last.1 == flags => last.0 += n as u32,
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push((n as u32, flags));
                }
            }
            pos += n;
        }
        Ok(out)
    })
}

/// `qemu:dirty-bitmap` extents of `[off, end)` from sorted, disjoint dirty ranges.
fn dirty_extents(ranges: &[Range<u64>], off: u64, end: u64, max: usize) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let push = |len: u64, flags: u32, out: &mut Vec<(u32, u32)>| -> bool {
        if len == 0 {
            return true;
        }
        if let Some(last) = out.last_mut() {
            if last.1 == flags {
                last.0 += len as u32;
                return true;
            }
        }
        if out.len() == max {
            return false;
        }
        out.push((len as u32, flags));
        true
    };
    let mut pos = off;
    let first = ranges.partition_point(|r| r.end <= off);
    for r in &ranges[first..] {
        if r.start >= end || pos >= end {
            break;
        }
        let s = r.start.max(pos);
        if !push(s - pos, 0, &mut out) {
            return out;
        }
        let e = r.end.min(end);
        if !push(e - s, proto::DIRTY, &mut out) {
            return out;
        }
        pos = e;
    }
    if pos < end {
        push(end - pos, 0, &mut out);
    }
    out
}

/// An in-memory [`ServerStream`]: the server reads a fixed script of client bytes and what it
/// writes is collected. For tests and the fuzz target (no socket, no timing).
#[derive(Debug)]
pub struct ScriptedStream {
    input: io::Cursor<Vec<u8>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl ScriptedStream {
    /// A stream whose client sends `input` and then closes its side.
    pub fn new(input: Vec<u8>) -> ScriptedStream {
        ScriptedStream {
            input: io::Cursor::new(input),
            output: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// What the server wrote (shared: still readable after the stream was consumed).
    pub fn output(&self) -> Arc<Mutex<Vec<u8>>> {
        self.output.clone()
    }
}

impl Read for ScriptedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for ScriptedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct SharedOutput(Arc<Mutex<Vec<u8>>>);

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ServerStream for ScriptedStream {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok((Box::new(self.input), Box::new(SharedOutput(self.output))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Extent, ImageInfo};
    use crate::net::proto::{ChunkHeader, ReplyHeader, chunk};
    use std::sync::atomic::AtomicUsize;

    /// A disk in memory whose map follows its content: 4 KiB blocks of zeros are zero
    /// (even blocks) or unallocated (odd blocks), the others data. Counts its flushes.
    struct TestDisk {
        data: Vec<u8>,
        format: Format,
        flushes: Arc<AtomicUsize>,
    }

    const B: u64 = 4096;

    impl TestDisk {
        fn new(data: Vec<u8>, format: Format) -> (TestDisk, Arc<AtomicUsize>) {
            let f = Arc::new(AtomicUsize::new(0));
            (
                TestDisk {
                    data,
                    format,
                    flushes: f.clone(),
                },
                f,
            )
        }
        fn kind(&self, block: u64) -> ExtentKind {
            let s = (block * B) as usize;
            let e = (s + B as usize).min(self.data.len());
            if self.data[s..e].iter().any(|&b| b != 0) {
                ExtentKind::Data
            } else if block % 2 == 0 {
                ExtentKind::Zero
            } else {
                ExtentKind::Unallocated
            }
        }
    }

    impl ImageReader for TestDisk {
        fn format(&self) -> Format {
            self.format
        }
        fn virtual_size(&self) -> u64 {
            self.data.len() as u64
        }
        fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
            let size = self.data.len() as u64;
            let end = (offset + max_len).min(size);
            if offset >= end {
                return Ok(Extent::new(offset, 0, ExtentKind::Data));
            }
            let k = self.kind(offset / B);
            let mut pos = (offset / B + 1) * B;
            while pos < end && self.kind(pos / B) == k {
                pos += B;
            }
            Ok(Extent::new(offset, pos.min(end) - offset, k))
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            crate::image::check_read_range(offset, buf.len(), self.data.len() as u64)?;
            buf.copy_from_slice(&self.data[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn info(&self) -> ImageInfo {
            ImageInfo::new(self.format, self.data.len() as u64)
        }
    }

    impl ImageUpdater for TestDisk {
        fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
            self.data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
            self.data[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        for (i, b) in d.iter_mut().enumerate() {
            let block = i as u64 / B;
            // Blocks 1, 2, 3 and 6 are zeros; the rest data.
            if ![1, 2, 3, 6].contains(&block) {
                *b = (i % 251) as u8 | 1;
            }
        }
        d
    }

    /// What a client sends.
    #[derive(Default)]
    struct Script(Vec<u8>);

    impl Script {
        fn new() -> Script {
            let mut s = Script::default();
            s.0.extend_from_slice(
                &(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES).to_be_bytes(),
            );
            s
        }
        fn option(mut self, option: u32, payload: &[u8]) -> Script {
            let h = OptionHeader {
                option,
                length: payload.len() as u32,
            };
            self.0.extend_from_slice(&h.encode());
            self.0.extend_from_slice(payload);
            self
        }
        fn go(self, name: &str, structured: bool, contexts: &[&str]) -> Script {
            let mut s = self;
            if structured {
                s = s.option(opt::STRUCTURED_REPLY, &[]);
            }
            if !contexts.is_empty() {
                let m = MetaContextRequest {
                    export: name.into(),
                    queries: contexts.iter().map(|c| c.to_string()).collect(),
                };
                s = s.option(opt::SET_META_CONTEXT, &m.encode());
            }
            let g = GoRequest {
                name: name.into(),
                infos: vec![proto::info::NAME],
            };
            s.option(opt::GO, &g.encode())
        }
        fn req(mut self, command: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Script {
            let r = Request {
                flags,
                command,
                cookie,
                offset,
                length: len,
            };
            self.0.extend_from_slice(&r.encode());
            self
        }
        fn data(mut self, d: &[u8]) -> Script {
            self.0.extend_from_slice(d);
            self
        }
    }

    /// What the server answered: option replies (option, type), then transmission replies.
    struct Answer {
        options: Vec<(u32, u32, Vec<u8>)>,
        replies: Vec<Reply>,
        report: ConnectionReport,
    }

    #[derive(Debug)]
    enum Reply {
        Simple(u64, u32, Vec<u8>),
        Chunk(ChunkHeader, Vec<u8>),
    }

    /// Serves `script` and parses the answer; `reads` gives the data length of each simple
    /// read reply in order (by cookie).
    fn serve(server: &Server, script: Script, read_len: impl Fn(u64) -> usize) -> Answer {
        let st = ScriptedStream::new(script.0);
        let out = st.output();
        let report = server.handle(Box::new(st), "test");
        let out = out.lock().unwrap().clone();
        let mut p = Payload::new(&out, "answer");
        let g = p.bytes(proto::GREETING_LEN, "greeting").unwrap();
        assert_eq!(
            proto::decode_greeting(g.try_into().unwrap()).unwrap(),
            proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES
        );
        let mut options = Vec::new();
        let mut in_transmission = false;
        while p.remaining() > 0 && !in_transmission {
            let h = p.bytes(proto::OPTION_REPLY_HEADER_LEN, "h").unwrap();
            let h = OptionReplyHeader::decode(h.try_into().unwrap()).unwrap();
            let pl = p.bytes(h.length as usize, "payload").unwrap().to_vec();
            if h.option == opt::GO && h.reply_type == rep::ACK {
                in_transmission = true;
            }
            options.push((h.option, h.reply_type, pl));
        }
        let mut replies = Vec::new();
        while p.remaining() > 0 {
            let m = p.bytes(4, "magic").unwrap();
            let rest = proto::reply_header_rest(m.try_into().unwrap()).unwrap();
            let mut h = m.to_vec();
            h.extend_from_slice(p.bytes(rest, "header").unwrap());
            match proto::decode_reply_header(&h).unwrap() {
                ReplyHeader::Simple(s) => {
                    let n = if s.error == 0 { read_len(s.cookie) } else { 0 };
                    let d = p.bytes(n, "data").unwrap().to_vec();
                    replies.push(Reply::Simple(s.cookie, s.error, d));
                }
                ReplyHeader::Chunk(c) => {
                    let d = p.bytes(c.length as usize, "chunk").unwrap().to_vec();
                    replies.push(Reply::Chunk(c, d));
                }
            }
        }
        Answer {
            options,
            replies,
            report,
        }
    }

    use crate::net::proto::Payload;

    fn one_worker() -> ServerOptions {
        ServerOptions {
            workers: 1,
            max_in_flight: 4,
            ..ServerOptions::default()
        }
    }

    #[test]
    fn structured_reads_send_holes_and_data_that_rebuild_the_disk() {
        let data = pattern(10 * B as usize);
        let (disk, _) = TestDisk::new(data.clone(), Format::Raw);
        let ex = Export::read_only("d", Arc::new(disk));
        let server = Server::new(vec![ex], one_worker()).unwrap();
        let script = Script::new()
            .go("d", true, &[])
            .req(cmd::READ, 0, 1, 0, 10 * B as u32)
            .req(cmd::READ, cflag::DF, 2, 100, 9000)
            .req(cmd::CACHE, 0, 3, 0, 4096)
            .req(cmd::DISC, 0, 0, 0, 0);
        let a = serve(&server, script, |_| 0);
        assert!(a.report.error.is_none(), "{:?}", a.report.error);
        assert_eq!(a.report.export.as_deref(), Some("d"));
        assert_eq!(a.report.requests, 4);
        assert_eq!(a.report.bytes_read, 10 * B + 9000);
        // NBD_INFO_NAME was asked for and sent.
        assert!(a.options.iter().any(|(o, t, p)| *o == opt::GO
            && *t == rep::INFO
            && Info::decode(p).unwrap() == Info::Name("d".into())));
        let mut rebuilt = vec![0xffu8; data.len()];
        let mut holes = 0;
        let mut df = None;
        for r in &a.replies {
            let Reply::Chunk(h, p) = r else {
                if let Reply::Simple(3, 0, _) = r {
                    continue;
                }
                panic!("{r:?}")
            };
            match h.chunk_type {
                chunk::OFFSET_DATA if h.cookie == 1 => {
                    let off = u64::from_be_bytes(p[..8].try_into().unwrap()) as usize;
                    rebuilt[off..off + p.len() - 8].copy_from_slice(&p[8..]);
                }
                chunk::OFFSET_DATA => {
                    assert!(h.done());
                    df = Some(p.clone());
                }
                _ => match proto::decode_chunk(h, p).unwrap() {
                    ChunkPayload::Hole { offset, length } => {
                        holes += 1;
                        rebuilt[offset as usize..(offset + length as u64) as usize].fill(0);
                    }
                    c => panic!("{c:?}"),
                },
            }
        }
        assert_eq!(rebuilt, data);
        assert_eq!(holes, 2, "blocks 1-3 and 6 are sent as holes");
        let df = df.unwrap();
        assert_eq!(u64::from_be_bytes(df[..8].try_into().unwrap()), 100);
        assert_eq!(&df[8..], &data[100..9100]);
    }

    #[test]
    fn simple_reads_and_block_status_of_allocation_and_dirty_bitmap() {
        let data = pattern(10 * B as usize);
        let (disk, _) = TestDisk::new(data.clone(), Format::Qcow2);
        let ex = Export::read_only("", Arc::new(disk))
            .with_dirty_bitmap("b0", vec![8192..12288, 0..100, 30000..50000])
            .unwrap();
        assert!(
            Export::read_only("", Arc::new(TestDisk::new(vec![0; 10], Format::Raw).0))
                .with_dirty_bitmap("", vec![])
                .is_err()
        );
        let server = Server::new(vec![ex], one_worker()).unwrap();
        // Simple replies.
        let a = serve(
            &server,
            Script::new()
                .go("", false, &[])
                .req(cmd::READ, 0, 7, 4000, 200),
            |_| 200,
        );
        match &a.replies[..] {
            [Reply::Simple(7, 0, d)] => assert_eq!(&d[..], &data[4000..4200]),
            r => panic!("{r:?}"),
        }
        // Block status over both contexts, then REQ_ONE.
        let a = serve(
            &server,
            Script::new()
                .go(
                    "",
                    true,
                    &[proto::BASE_ALLOCATION, "qemu:dirty-bitmap:b0", "x:y"],
                )
                .req(cmd::BLOCK_STATUS, 0, 1, 0, 10 * B as u32)
                .req(cmd::BLOCK_STATUS, cflag::REQ_ONE, 2, 5000, 20000),
            |_| 0,
        );
        let metas: Vec<(u32, String)> = a
            .options
            .iter()
            .filter(|o| o.1 == rep::META_CONTEXT)
            .map(|o| proto::decode_meta_context_reply(&o.2).unwrap())
            .collect();
        assert_eq!(
            metas,
            [
                (1, "base:allocation".to_string()),
                (2, "qemu:dirty-bitmap:b0".to_string())
            ]
        );
        let mut got = Vec::new();
        for r in &a.replies {
            let Reply::Chunk(h, p) = r else {
                panic!("{r:?}")
            };
            got.push((h.cookie, h.done(), proto::decode_chunk(h, p).unwrap()));
        }
        let bs = |context, extents: &[(u32, u32)]| ChunkPayload::BlockStatus {
            context,
            extents: extents.to_vec(),
        };
        let b = B as u32;
        assert_eq!(
            got,
            [
                (
                    1,
                    false,
                    bs(
                        1,
                        &[
                            (b, 0),
                            (b, alloc::HOLE | alloc::ZERO),
                            (b, alloc::ZERO),
                            (b, alloc::HOLE | alloc::ZERO),
                            (2 * b, 0),
                            (b, alloc::ZERO),
                            (3 * b, 0)
                        ]
                    )
                ),
                (
                    1,
                    true,
                    bs(2, &[(100, 1), (8092, 0), (4096, 1), (17712, 0), (10960, 1)])
                ),
                (2, false, bs(1, &[(3192, alloc::HOLE | alloc::ZERO)])),
                (2, true, bs(2, &[(3192, 0)])),
            ]
        );
    }

    #[test]
    fn dirty_extents_clip_merge_and_stop_at_the_limit() {
        let r = vec![0..10, 20..30, 40..50];
        assert_eq!(
            dirty_extents(&r, 0, 60, 100),
            [(10, 1), (10, 0), (10, 1), (10, 0), (10, 1), (10, 0)]
        );
        assert_eq!(dirty_extents(&r, 5, 25, 100), [(5, 1), (10, 0), (5, 1)]);
        assert_eq!(dirty_extents(&r, 12, 18, 100), [(6, 0)]);
        assert_eq!(dirty_extents(&r, 0, 60, 2), [(10, 1), (10, 0)]);
        assert_eq!(dirty_extents(&[], 0, 60, 1), [(60, 0)]);
    }

    #[test]
    fn writable_export_writes_zeroes_trims_and_flushes() {
        let (disk, flushes) = TestDisk::new(vec![0x11; 64 << 10], Format::Vdi);
        let ex = Export::writable("w", Box::new(disk));
        assert!(ex.flags() & tflag::READ_ONLY == 0);
        assert!(ex.flags() & tflag::CAN_MULTI_CONN != 0);
        assert!(
            Export::writable("w", Box::new(TestDisk::new(vec![0; 10], Format::Raw).0))
                .with_dirty_bitmap("b", vec![])
                .is_err()
        );
        let server = Arc::new(Server::new(vec![ex], one_worker()).unwrap());
        let a = serve(
            &server,
            Script::new()
                .go("w", false, &[])
                .req(cmd::WRITE, 0, 1, 10, 5)
                .data(b"hello")
                .req(cmd::WRITE, cflag::FUA, 2, 1000, 3)
                .data(b"abc")
                .req(cmd::WRITE_ZEROES, 0, 3, 4096, 100)
                .req(cmd::WRITE_ZEROES, cflag::NO_HOLE, 4, 8192, 10)
                .req(cmd::WRITE_ZEROES, cflag::FAST_ZERO, 5, 0, 10)
                .req(cmd::TRIM, 0, 6, 20000, 50)
                .req(cmd::FLUSH, 0, 7, 0, 0)
                .req(cmd::WRITE, 0, 8, (64 << 10) - 2, 4)
                .data(b"over")
                .req(cmd::TRIM, 0, 9, 1 << 20, 1)
                .req(cmd::WRITE, 0, 10, 30000, 2)
                .data(b"ok"),
            |_| 0,
        );
        let errs: Vec<(u64, u32)> = a
            .replies
            .iter()
            .map(|r| match r {
                Reply::Simple(c, e, _) => (*c, *e),
                r => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(
            errs,
            [
                (1, 0),
                (2, 0),
                (3, 0),
                (4, 0),
                (5, errno::ENOTSUP),
                (6, 0),
                (7, 0),
                (8, errno::ENOSPC),
                (9, errno::EINVAL),
                (10, 0)
            ]
        );
        assert_eq!(a.report.bytes_written, 10);
        // FUA, FLUSH, and the flush at disconnect.
        assert_eq!(flushes.load(Ordering::SeqCst), 3);
        let mut want = vec![0x11u8; 64 << 10];
        want[10..15].copy_from_slice(b"hello");
        want[1000..1003].copy_from_slice(b"abc");
        want[4096..4196].fill(0);
        want[8192..8202].fill(0);
        want[20000..20050].fill(0);
        want[30000..30002].copy_from_slice(b"ok");
        let mut got = vec![0u8; want.len()];
        server.exports()[0]
            .with_reader(|r| r.read_at(&mut got, 0))
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn many_workers_answer_every_request_once() {
        let data = pattern(64 << 10);
        let (disk, _) = TestDisk::new(data.clone(), Format::Raw);
        let server = Server::new(
            vec![Export::read_only("", Arc::new(disk))],
            ServerOptions {
                workers: 4,
                max_in_flight: 8,
                ..ServerOptions::default()
            },
        )
        .unwrap();
        let mut s = Script::new().go("", false, &[]);
        for i in 0..200u64 {
            s = s.req(cmd::READ, 0, i, i * 300, 100 + i as u32);
        }
        let a = serve(&server, s, |c| 100 + c as usize);
        assert_eq!(a.replies.len(), 200);
        let mut seen = [false; 200];
        for r in &a.replies {
            let Reply::Simple(c, 0, d) = r else {
                panic!("{r:?}")
            };
            let c = *c as usize;
            assert!(!seen[c]);
            seen[c] = true;
            assert_eq!(&d[..], &data[c * 300..c * 300 + 100 + c]);
        }
    }

    /// A "TLS" that only marks the stream encrypted: the negotiation rules around STARTTLS
    /// without a real handshake.
    struct MarkTls;
    struct Marked(Box<dyn ServerStream>);
    impl Read for Marked {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Marked {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    impl ServerStream for Marked {
        fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
            self.0.split()
        }
        fn is_tls(&self) -> bool {
            true
        }
    }
    impl TlsUpgrade for MarkTls {
        fn upgrade(&self, s: Box<dyn ServerStream>) -> io::Result<Box<dyn ServerStream>> {
            Ok(Box::new(Marked(s)))
        }
    }

    #[test]
    fn with_tls_every_option_before_starttls_is_refused() {
        let (disk, _) = TestDisk::new(vec![1; 8192], Format::Raw);
        let server = Server::new(
            vec![Export::read_only("t", Arc::new(disk))],
            ServerOptions {
                tls: Some(Arc::new(MarkTls)),
                ..one_worker()
            },
        )
        .unwrap();
        let g = GoRequest {
            name: "t".into(),
            infos: vec![],
        }
        .encode();
        let a = serve(
            &server,
            Script::new()
                .option(opt::LIST, &[])
                .option(opt::STRUCTURED_REPLY, &[])
                .option(opt::GO, &g)
                .option(opt::INFO, &g)
                .option(opt::STARTTLS, b"x")
                .option(opt::STARTTLS, &[])
                .option(opt::STARTTLS, &[])
                .go("t", false, &[])
                .req(cmd::READ, 0, 1, 0, 8),
            |_| 8,
        );
        let types: Vec<(u32, u32)> = a.options.iter().map(|o| (o.0, o.1)).collect();
        assert_eq!(
            &types[..7],
            [
                (opt::LIST, rep::ERR_TLS_REQD),
                (opt::STRUCTURED_REPLY, rep::ERR_TLS_REQD),
                (opt::GO, rep::ERR_TLS_REQD),
                (opt::INFO, rep::ERR_TLS_REQD),
                (opt::STARTTLS, rep::ERR_INVALID),
                (opt::STARTTLS, rep::ACK),
                (opt::STARTTLS, rep::ERR_INVALID),
            ]
        );
        assert!(a.report.tls);
        assert_eq!(a.report.export.as_deref(), Some("t"));
        assert!(matches!(&a.replies[..], [Reply::Simple(1, 0, d)] if d == &[1; 8]));
        // EXPORT_NAME before TLS closes the connection without an answer.
        let a = serve(&server, Script::new().option(opt::EXPORT_NAME, b"t"), |_| 0);
        assert!(a.options.is_empty() && a.replies.is_empty());
        assert!(a.report.error.unwrap().contains("before TLS"));
    }

    #[test]
    fn export_name_lists_and_meta_context_listing() {
        let (d1, _) = TestDisk::new(vec![0; 4096], Format::Raw);
        let (d2, _) = TestDisk::new(vec![0; 8192], Format::Qcow2);
        let e2 = Export::read_only("two", Arc::new(d2))
            .with_description("second")
            .with_dirty_bitmap("a", vec![])
            .unwrap()
            .with_dirty_bitmap("b", vec![])
            .unwrap();
        assert!(Server::new(vec![], ServerOptions::default()).is_err());
        let server = Server::new(
            vec![Export::read_only("one", Arc::new(d1)), e2],
            ServerOptions::default(),
        )
        .unwrap();
        let list = |q: &[&str]| {
            MetaContextRequest {
                export: "two".into(),
                queries: q.iter().map(|s| s.to_string()).collect(),
            }
            .encode()
        };
        let mut s = Script::new()
            .option(opt::LIST, &[])
            .option(opt::STRUCTURED_REPLY, &[])
            .option(opt::STRUCTURED_REPLY, &[])
            .option(opt::LIST_META_CONTEXT, &list(&[]))
            .option(opt::LIST_META_CONTEXT, &list(&["qemu:dirty-bitmap:"]))
            .option(opt::SET_META_CONTEXT, &list(&[]))
            .option(opt::EXPORT_NAME, b"two");
        s = s.req(cmd::BLOCK_STATUS, 0, 1, 0, 100);
        let st = ScriptedStream::new(s.0);
        let out = st.output();
        let r = server.handle(Box::new(st), "p");
        assert_eq!(r.export.as_deref(), Some("two"));
        let out = out.lock().unwrap().clone();
        let mut p = Payload::new(&out[proto::GREETING_LEN..], "answer");
        let mut names = Vec::new();
        let mut kinds = Vec::new();
        for _ in 0..13 {
            let h =
                OptionReplyHeader::decode(p.bytes(20, "h").unwrap().try_into().unwrap()).unwrap();
            let pl = p.bytes(h.length as usize, "p").unwrap();
            kinds.push(h.reply_type);
            match h.reply_type {
                rep::SERVER => names.push(proto::decode_server_reply(pl).unwrap().0),
                rep::META_CONTEXT => names.push(proto::decode_meta_context_reply(pl).unwrap().1),
                _ => {}
            }
        }
        assert_eq!(
            names,
            [
                "one",
                "two",
                "base:allocation",
                "qemu:dirty-bitmap:a",
                "qemu:dirty-bitmap:b",
                "qemu:dirty-bitmap:a",
                "qemu:dirty-bitmap:b"
            ]
        );
        assert_eq!(kinds[3..5], [rep::ACK, rep::ERR_INVALID]);
        // EXPORT_NAME reply: size and flags, no zeroes (the client asked for none).
        let size = p.u64("size").unwrap();
        let flags = p.u16("flags").unwrap();
        assert_eq!((size, flags & tflag::READ_ONLY), (8192, tflag::READ_ONLY));
        // SET with no query selected nothing: block status is refused.
        let h = p.bytes(20, "chunk").unwrap();
        let ReplyHeader::Chunk(c) = proto::decode_reply_header(h).unwrap() else {
            panic!()
        };
        let e = proto::decode_chunk(&c, p.bytes(c.length as usize, "c").unwrap()).unwrap();
        assert!(
            matches!(
                e,
                ChunkPayload::Error {
                    error: errno::EINVAL,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
