//! The NBD client: negotiation (fixed newstyle, structured replies, metadata contexts,
//! `NBD_OPT_GO` with block sizes, `NBD_OPT_EXPORT_NAME` for old servers) and transmission with
//! many requests in flight on one connection.
//!
//! Callers on any thread send requests through a shared writer; one reader thread per
//! connection demultiplexes the replies (simple and structured) by cookie and hands each
//! finished reply to its caller. The number of requests in flight is bounded, and every
//! length or offset a server sends is checked against the request it answers before a byte
//! is placed: a hostile or broken server gives an error naming what it did wrong, never a
//! panic or a write outside the caller's buffer.
//!
//! A dropped connection is retried with backoff: the client reconnects (same export, same
//! size required) and the requests that were in flight are sent again (reads, writes,
//! zeroes, flushes and block-status queries are idempotent). Writes the server acknowledged
//! on a connection that was then lost, before a flush covered them, may be lost with it (a
//! server that died keeps nothing it had not made durable): the next flush then fails, saying
//! so, so that the caller writes them again (a sync pass rewrites its pending window). Errors
//! the server reports (`EIO`...) are final.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::proto::{self, ChunkPayload, ReplyHeader, Request, WireError, chunk, cmd, opt, rep};
use super::tls::{PskFile, TlsClientConfig, X509ClientConfig};
use super::transport::{Address, Socket, Transport, WriteHalf};
use super::uri::{NbdAddress, NbdTls, NbdUri};
use crate::util::human_bytes;

/// Settings of a client connection.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Also select `qemu:dirty-bitmap:NAME` (the changed blocks of a live VM).
    pub dirty_bitmap: Option<String>,
    /// Most requests in flight on the connection.
    pub max_in_flight: usize,
    /// How long a lost connection is retried before the request fails.
    pub retry_for: Duration,
    /// Timeout of one TCP connection attempt and of the negotiation.
    pub connect_timeout: Duration,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            dirty_bitmap: None,
            max_in_flight: 16,
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the server told about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (see [`proto::tflag`]).
    pub flags: u16,
    /// Minimum block size (requests are aligned to it).
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest request payload this client sends (the server's maximum, at most
    /// [`proto::MAX_PAYLOAD`]).
    pub max_request: u32,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Metadata contexts the server selected: (id, name).
    pub contexts: Vec<(u32, String)>,
}

impl ExportInfo {
    /// Whether the export refuses writes.
    pub fn read_only(&self) -> bool {
        self.flags & proto::tflag::READ_ONLY != 0
    }

    /// Whether a flag of [`proto::tflag`] is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The id of the context named `name`, when the server selected it.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }
}

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with an error.
    Server {
        /// errno value.
        error: u32,
        /// The server's message (may be empty).
        message: String,
    },
    /// The connection broke (EOF, reset): the request may be sent again on a new one.
    Lost(String),
    /// The server broke the protocol: the connection is closed and not retried.
    Protocol(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Server { error, message } if message.is_empty() => {
                f.write_str(proto::errno::name(*error))
            }
            Failure::Server { error, message } => {
                write!(f, "{} ({message})", proto::errno::name(*error))
            }
            Failure::Lost(m) => write!(f, "the connection to the server was lost: {m}"),
            Failure::Protocol(m) => write!(f, "the server broke the NBD protocol: {m}"),
        }
    }
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        Failure::Protocol(e.0)
    }
}

/// A finished reply.
#[derive(Debug, Default)]
pub struct Done {
    /// The data of a `READ` (holes filled with zeros).
    pub data: Vec<u8>,
    /// Block-status extents per context id: (length, flags), from the request's offset.
    pub extents: Vec<(u32, Vec<(u32, u32)>)>,
}

type Outcome = Result<Done, Failure>;

struct Pending {
    req: Request,
    data: Vec<u8>,
    covered: u64,
    extents: Vec<(u32, Vec<(u32, u32)>)>,
    error: Option<(u32, String)>,
    tx: mpsc::Sender<Outcome>,
}

/// The requests in flight on one connection, shared between the callers and the reader.
pub struct Inflight {
    map: HashMap<u64, Pending>,
    next_cookie: u64,
    closed: Option<Failure>,
    max: usize,
}

/// The requests in flight and the condition callers wait on for a free slot.
pub struct Demux {
    state: Mutex<Inflight>,
    freed: Condvar,
    /// Size of the export (replies past it are refused).
    export_size: u64,
    /// Whether structured replies were negotiated.
    structured: bool,
    /// Context ids the server selected.
    contexts: Vec<u32>,
}

/// A request sent, waiting for its reply.
pub struct Ticket {
    rx: mpsc::Receiver<Outcome>,
}

impl Ticket {
    /// Waits for the reply.
    pub fn wait(self) -> Outcome {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(Failure::Lost("the connection was closed".into())))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Demux {
    /// A demultiplexer for an export of `export_size` bytes, with at most `max` requests in
    /// flight.
    pub fn new(export_size: u64, structured: bool, contexts: Vec<u32>, max: usize) -> Demux {
        Demux {
            state: Mutex::new(Inflight {
                map: HashMap::new(),
                next_cookie: 1,
                closed: None,
                max: max.max(1),
            }),
            freed: Condvar::new(),
            export_size,
            structured,
            contexts,
        }
    }

    /// Registers a request (waiting for a free slot); returns its cookie and the ticket.
    /// `req.cookie` is ignored.
    pub fn register(&self, mut req: Request) -> Result<(Request, Ticket), Failure> {
        let mut st = lock(&self.state);
        loop {
            if let Some(f) = &st.closed {
                return Err(f.clone());
            }
            if st.map.len() < st.max {
                break;
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        req.cookie = st.next_cookie;
        st.next_cookie = st.next_cookie.wrapping_add(1).max(1);
        let (tx, rx) = mpsc::channel();
        let data = if req.command == cmd::READ {
            vec![0u8; req.length as usize]
        } else {
            Vec::new()
        };
        st.map.insert(
            req.cookie,
            Pending {
                req,
                data,
                covered: 0,
                extents: Vec::new(),
                error: None,
                tx,
            },
        );
        Ok((req, Ticket { rx }))
    }

    /// Closes the connection's bookkeeping: every waiting request fails with `f`, and so does
    /// every later one.
    pub fn close(&self, f: Failure) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            st.closed = Some(f.clone());
        }
        let f = st.closed.clone().unwrap_or(f);
        for (_, p) in st.map.drain() {
            let _ = p.tx.send(Err(f.clone()));
        }
        drop(st);
        self.freed.notify_all();
    }

    fn finish(&self, p: Pending) {
        let out = match p.error {
            Some((error, message)) => Err(Failure::Server { error, message }),
            None => Ok(Done {
                data: p.data,
                extents: p.extents,
            }),
        };
        let _ = p.tx.send(out);
        self.freed.notify_one();
    }

    fn take(&self, cookie: u64, what: &str) -> Result<Pending, Failure> {
        lock(&self.state).map.remove(&cookie).ok_or_else(|| {
            Failure::Protocol(format!(
                "{what} for cookie {cookie:#x}, which no request in flight carries"
            ))
        })
    }

    fn put_back(&self, p: Pending) {
        lock(&self.state).map.insert(p.req.cookie, p);
    }

    /// Reads one reply (a simple reply or one structured chunk) from `r` and applies it.
    /// An I/O error is [`Failure::Lost`]; anything the server got wrong is
    /// [`Failure::Protocol`] (the caller then closes the connection).
    pub fn read_one(&self, r: &mut dyn Read) -> Result<(), Failure> {
        let lost = |e: io::Error| Failure::Lost(e.to_string());
        let mut hdr = [0u8; proto::STRUCTURED_REPLY_LEN];
        r.read_exact(&mut hdr[..4]).map_err(lost)?;
        let rest = proto::reply_header_rest([hdr[0], hdr[1], hdr[2], hdr[3]])?;
        r.read_exact(&mut hdr[4..4 + rest]).map_err(lost)?;
        match proto::decode_reply_header(&hdr[..4 + rest])? {
            ReplyHeader::Simple(s) => {
                let mut p = self.take(s.cookie, "a simple reply")?;
                let r = (|| {
                    if s.error != 0 {
                        p.error = Some((s.error, String::new()));
                    } else if p.req.command == cmd::READ {
                        // With structured replies only errors should come as simple replies;
                        // data is accepted anyway, its length being the request's own.
                        r.read_exact(&mut p.data).map_err(lost)?;
                        p.covered = p.req.length as u64;
                    } else if p.req.command == cmd::BLOCK_STATUS {
                        return Err(Failure::Protocol(
                            "a simple reply to NBD_CMD_BLOCK_STATUS without an error".into(),
                        ));
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => {
                        self.finish(p);
                        Ok(())
                    }
                    Err(f) => {
                        let _ = p.tx.send(Err(f.clone()));
                        Err(f)
                    }
                }
            }
            ReplyHeader::Chunk(h) => {
                if !self.structured {
                    return Err(Failure::Protocol(
                        "a structured reply chunk, but structured replies were not negotiated"
                            .into(),
                    ));
                }
                let mut p = self.take(h.cookie, "a reply chunk")?;
                match self.apply_chunk(&mut p, &h, r) {
                    Ok(true) => {
                        self.finish(p);
                        Ok(())
                    }
                    Ok(false) => {
                        self.put_back(p);
                        Ok(())
                    }
                    Err(f) => {
                        let _ = p.tx.send(Err(f.clone()));
                        Err(f)
                    }
                }
            }
        }
    }

    /// Applies one chunk to its request; `Ok(true)` when the reply is complete.
    fn apply_chunk(
        &self,
        p: &mut Pending,
        h: &proto::ChunkHeader,
        r: &mut dyn Read,
    ) -> Result<bool, Failure> {
        let lost = |e: io::Error| Failure::Lost(e.to_string());
        let req = p.req;
        let (start, end) = (req.offset, req.offset + req.length as u64);
        let cname = proto::command_name(req.command);
        if h.chunk_type == chunk::OFFSET_DATA {
            if req.command != cmd::READ {
                return Err(Failure::Protocol(format!(
                    "a data chunk in reply to {cname}"
                )));
            }
            let mut o = [0u8; 8];
            if h.length >= 8 {
                r.read_exact(&mut o).map_err(lost)?;
            }
            let (off, len) = proto::decode_offset(h, &o)?;
            let past = off.checked_add(len as u64).is_none_or(|e| e > end);
            if off < start || past {
                return Err(Failure::Protocol(format!(
                    "a data chunk of {len} bytes at {off:#x} lies outside the request \
                     ({} bytes at {start:#x})",
                    req.length
                )));
            }
            let a = (off - start) as usize;
            r.read_exact(&mut p.data[a..a + len as usize])
                .map_err(lost)?;
            p.covered += len as u64;
        } else {
            let mut payload = vec![0u8; h.length as usize];
            r.read_exact(&mut payload).map_err(lost)?;
            match proto::decode_chunk(h, &payload)? {
                ChunkPayload::None => {}
                ChunkPayload::Hole { offset, length } => {
                    if req.command != cmd::READ {
                        return Err(Failure::Protocol(format!(
                            "a hole chunk in reply to {cname}"
                        )));
                    }
                    let past = offset.checked_add(length as u64).is_none_or(|e| e > end);
                    if offset < start || past {
                        return Err(Failure::Protocol(format!(
                            "a hole chunk of {length} bytes at {offset:#x} lies outside \
                             the request ({} bytes at {start:#x})",
                            req.length
                        )));
                    }
                    let a = (offset - start) as usize;
                    p.data[a..a + length as usize].fill(0);
                    p.covered += length as u64;
                }
                ChunkPayload::BlockStatus { context, extents } => {
                    if req.command != cmd::BLOCK_STATUS {
                        return Err(Failure::Protocol(format!(
                            "a block-status chunk in reply to {cname}"
                        )));
                    }
                    if !self.contexts.contains(&context) {
                        return Err(Failure::Protocol(format!(
                            "block status for context id {context}, which was not \
                             selected"
                        )));
                    }
                    let total: u64 = extents.iter().map(|e| e.0 as u64).sum();
                    if start + total > self.export_size {
                        return Err(Failure::Protocol(format!(
                            "block status from {start:#x} describes {total} bytes, past \
                             the end of the {}-byte export",
                            self.export_size
                        )));
                    }
                    if p.extents.iter().any(|(c, _)| *c == context) {
                        return Err(Failure::Protocol(format!(
                            "two block-status chunks for context id {context}"
                        )));
                    }
                    p.extents.push((context, extents));
                }
                ChunkPayload::Error {
                    error,
                    message,
                    offset,
                } => {
                    if let Some(o) = offset {
                        if o < start || o >= end.max(start + 1) {
                            return Err(Failure::Protocol(format!(
                                "an error chunk about offset {o:#x}, outside the \
                                 request ({} bytes at {start:#x})",
                                req.length
                            )));
                        }
                    }
                    if p.error.is_none() {
                        let message = match offset {
                            Some(o) => format!("at {o:#x}: {message}"),
                            None => message,
                        };
                        p.error = Some((error, message));
                    }
                }
            }
        }
        if !h.done() {
            return Ok(false);
        }
        if p.error.is_none() && req.command == cmd::READ && p.covered != req.length as u64 {
            return Err(Failure::Protocol(format!(
                "the reply to NBD_CMD_READ of {} bytes at {start:#x} covered {} bytes",
                req.length, p.covered
            )));
        }
        if p.error.is_none() && req.command == cmd::BLOCK_STATUS && p.extents.is_empty() {
            return Err(Failure::Protocol(format!(
                "the reply to NBD_CMD_BLOCK_STATUS at {start:#x} has no extents"
            )));
        }
        Ok(true)
    }

    /// Reads replies until the stream ends or breaks, then closes: the reader thread's loop.
    pub fn run(&self, r: &mut dyn Read) -> Failure {
        loop {
            if let Err(f) = self.read_one(r) {
                self.close(f.clone());
                return f;
            }
        }
    }
}

fn neg_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn send_option(s: &mut dyn Write, option: u32, payload: &[u8]) -> io::Result<()> {
    let h = proto::OptionHeader {
        option,
        length: payload.len() as u32,
    };
    let mut b = h.encode().to_vec();
    b.extend_from_slice(payload);
    s.write_all(&b)?;
    s.flush()
}

fn read_option_reply(
    s: &mut dyn Read,
    option: u32,
) -> io::Result<(proto::OptionReplyHeader, Vec<u8>)> {
    let mut hb = [0u8; proto::OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut hb)?;
    let h = proto::OptionReplyHeader::decode(&hb)?;
    if h.option != option {
        return Err(neg_err(format!(
            "the server answered {} while {} was asked",
            proto::option_name(h.option),
            proto::option_name(option)
        )));
    }
    let mut payload = vec![0u8; h.length as usize];
    s.read_exact(&mut payload)?;
    Ok((h, payload))
}

fn refused(option: u32, h: &proto::OptionReplyHeader, payload: &[u8]) -> io::Error {
    let msg = proto::decode_error_message(payload);
    let hint = if h.reply_type == rep::ERR_TLS_REQD {
        " (the server requires TLS: use an nbds:// URI)"
    } else {
        ""
    };
    let kind = if h.reply_type == rep::ERR_UNKNOWN {
        io::ErrorKind::NotFound
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(
        kind,
        format!(
            "the server refused {}: {}{}{hint}",
            proto::option_name(option),
            proto::rep_error_name(h.reply_type),
            if msg.is_empty() {
                String::new()
            } else {
                format!(" ({msg})")
            }
        ),
    )
}

/// The first part of the handshake: the greeting and the client flags. Returns the server's
/// handshake flags.
pub fn handshake_start(s: &mut (impl Read + Write)) -> io::Result<u16> {
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g)?;
    let flags = proto::decode_greeting(&g)?;
    if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(neg_err(
            "the server does not speak the fixed newstyle handshake",
        ));
    }
    let mut cf = proto::CLIENT_FIXED_NEWSTYLE;
    if flags & proto::FLAG_NO_ZEROES != 0 {
        cf |= proto::CLIENT_NO_ZEROES;
    }
    s.write_all(&cf.to_be_bytes())?;
    s.flush()?;
    Ok(flags)
}

/// Asks for TLS (`NBD_OPT_STARTTLS`); after `Ok` the caller starts the TLS handshake.
pub fn request_starttls(s: &mut (impl Read + Write)) -> io::Result<()> {
    send_option(s, opt::STARTTLS, &[])?;
    let (h, p) = read_option_reply(s, opt::STARTTLS)?;
    if h.reply_type != rep::ACK {
        return Err(refused(opt::STARTTLS, &h, &p));
    }
    Ok(())
}

/// The rest of the handshake, after the greeting (and TLS): structured replies, metadata
/// contexts (`base:allocation`, and `qemu:dirty-bitmap:NAME` when asked) and the export.
pub fn handshake_finish(
    s: &mut (impl Read + Write),
    server_flags: u16,
    export: &str,
    dirty_bitmap: Option<&str>,
) -> io::Result<ExportInfo> {
    // Structured replies.
    send_option(s, opt::STRUCTURED_REPLY, &[])?;
    let (h, p) = read_option_reply(s, opt::STRUCTURED_REPLY)?;
    let structured = match h.reply_type {
        rep::ACK => true,
        t if t & rep::FLAG_ERROR != 0 => {
            if t == rep::ERR_TLS_REQD {
                return Err(refused(opt::STRUCTURED_REPLY, &h, &p));
            }
            false
        }
        t => {
            return Err(neg_err(format!(
                "unexpected reply type {t:#x} to NBD_OPT_STRUCTURED_REPLY"
            )));
        }
    };
    // Metadata contexts.
    let mut contexts = Vec::new();
    if structured {
        let mut queries = vec![proto::BASE_ALLOCATION.to_string()];
        if let Some(b) = dirty_bitmap {
            queries.push(format!("{}{b}", proto::DIRTY_BITMAP_PREFIX));
        }
        let m = proto::MetaContextRequest {
            export: export.to_string(),
            queries,
        };
        send_option(s, opt::SET_META_CONTEXT, &m.encode())?;
        loop {
            let (h, p) = read_option_reply(s, opt::SET_META_CONTEXT)?;
            match h.reply_type {
                rep::META_CONTEXT => {
                    let (id, name) = proto::decode_meta_context_reply(&p)?;
                    if contexts.len() >= 8 {
                        return Err(neg_err("the server selected more contexts than asked"));
                    }
                    contexts.push((id, name));
                }
                rep::ACK => break,
                rep::ERR_UNKNOWN => return Err(refused(opt::SET_META_CONTEXT, &h, &p)),
                t if t & rep::FLAG_ERROR != 0 => break,
                t => {
                    return Err(neg_err(format!(
                        "unexpected reply type {t:#x} to NBD_OPT_SET_META_CONTEXT"
                    )));
                }
            }
        }
    }
    if let Some(b) = dirty_bitmap {
        let name = format!("{}{b}", proto::DIRTY_BITMAP_PREFIX);
        if !contexts.iter().any(|(_, n)| *n == name) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the server does not offer the context {name} for this export"),
            ));
        }
    }
    // The export.
    let go = proto::GoRequest {
        name: export.to_string(),
        infos: vec![proto::info::BLOCK_SIZE],
    };
    send_option(s, opt::GO, &go.encode())?;
    let mut size_flags = None;
    let mut block = None;
    loop {
        let (h, p) = read_option_reply(s, opt::GO)?;
        match h.reply_type {
            rep::INFO => match proto::Info::decode(&p)? {
                proto::Info::Export { size, flags } => size_flags = Some((size, flags)),
                proto::Info::BlockSize {
                    min,
                    preferred,
                    max,
                } => block = Some((min, preferred, max)),
                _ => {}
            },
            rep::ACK => break,
            rep::ERR_UNSUP => {
                // An old server: NBD_OPT_EXPORT_NAME ends the negotiation.
                send_option(s, opt::EXPORT_NAME, export.as_bytes())?;
                let mut b = [0u8; 10];
                s.read_exact(&mut b).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "the server closed the connection after NBD_OPT_EXPORT_NAME \
                             (no export {export:?}?): {e}"
                        ),
                    )
                })?;
                if server_flags & proto::FLAG_NO_ZEROES == 0 {
                    let mut z = [0u8; 124];
                    s.read_exact(&mut z)?;
                }
                let size = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                let flags = u16::from_be_bytes([b[8], b[9]]);
                size_flags = Some((size, flags));
                // Without NBD_OPT_GO, the server picks no contexts it could report.
                contexts.clear();
                break;
            }
            t if t & rep::FLAG_ERROR != 0 => return Err(refused(opt::GO, &h, &p)),
            t => {
                return Err(neg_err(format!(
                    "unexpected reply type {t:#x} to NBD_OPT_GO"
                )));
            }
        }
    }
    let (size, flags) = size_flags
        .ok_or_else(|| neg_err("the server ended NBD_OPT_GO without the export's size"))?;
    if size > i64::MAX as u64 {
        return Err(neg_err(format!("the export's size {size} is impossible")));
    }
    let (min, preferred, max) = block.unwrap_or((1, 4096, proto::MAX_PAYLOAD));
    Ok(ExportInfo {
        size,
        flags,
        min_block: min,
        preferred_block: preferred,
        max_request: (max.min(proto::MAX_PAYLOAD) / min * min).max(min),
        structured,
        contexts,
    })
}

/// One live connection: the writer half, the requests in flight, and the reader thread.
struct Conn {
    generation: u64,
    info: ExportInfo,
    demux: Arc<Demux>,
    writer: Mutex<WriteHalf>,
    /// The socket under the transport: shut down to wake the reader thread.
    control: Socket,
}

/// The TLS settings of an `nbds` URI: a PSK file (the identity the URI names), else X.509
/// with the CA the URI names (or the system's).
fn tls_config(uri: &NbdUri, tls: &NbdTls) -> io::Result<TlsClientConfig> {
    let cfg = match &tls.psk_file {
        Some(file) => PskFile::load(file).and_then(|f| f.client_config(Some(&tls.username))),
        None => {
            let host = match &uri.address {
                NbdAddress::Tcp { host, .. } => host.clone(),
                NbdAddress::Unix(_) => "localhost".to_string(),
            };
            let mut x = X509ClientConfig::new(host);
            x.ca_file = tls.ca_file.clone();
            x.verify = tls.verify_peer;
            Ok(TlsClientConfig::x509(x))
        }
    };
    cfg.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.chain()))
}

impl Conn {
    fn open(uri: &NbdUri, opts: &NbdOptions, generation: u64) -> io::Result<Conn> {
        let address = match &uri.address {
            NbdAddress::Tcp { host, port } => Address::Tcp {
                host: host.clone(),
                port: *port,
            },
            NbdAddress::Unix(p) => Address::Unix(p.clone()),
        };
        let tls = match &uri.tls {
            Some(t) => Some(tls_config(uri, t)?),
            None => None,
        };
        let mut sock = Socket::connect(&address, opts.connect_timeout)?;
        sock.set_read_timeout(Some(opts.connect_timeout.max(Duration::from_secs(1)) * 3))?;
        let control = sock.try_clone()?;
        let flags = handshake_start(&mut sock)?;
        let mut t = match &tls {
            None => Transport::Plain(sock),
            Some(cfg) => {
                request_starttls(&mut sock)?;
                Transport::Plain(sock).start_tls_client(cfg).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("the TLS handshake failed: {}", e.chain()),
                    )
                })?
            }
        };
        let info = handshake_finish(&mut t, flags, &uri.export, opts.dirty_bitmap.as_deref())?;
        control.set_read_timeout(None)?;
        let (mut reader, writer) = t.split()?;
        let demux = Arc::new(Demux::new(
            info.size,
            info.structured,
            info.contexts.iter().map(|c| c.0).collect(),
            opts.max_in_flight,
        ));
        let d = demux.clone();
        let ctl = control.try_clone()?;
        std::thread::Builder::new()
            .name("nbd-reader".into())
            .spawn(move || {
                let f = d.run(&mut reader);
                let _ = ctl.shutdown(Shutdown::Both);
                f
            })?;
        Ok(Conn {
            generation,
            info,
            demux,
            writer: Mutex::new(writer),
            control,
        })
    }

    fn start(&self, req: Request, payload: Option<&[u8]>) -> Result<Ticket, Failure> {
        let (req, ticket) = self.demux.register(req)?;
        let mut w = lock(&self.writer);
        let r = w
            .write_all(&req.encode())
            .and_then(|_| match payload {
                Some(p) => w.write_all(p),
                None => Ok(()),
            })
            .and_then(|_| w.flush());
        drop(w);
        if let Err(e) = r {
            // The reader sees the socket die and fails every request in flight, this one too.
            self.demux
                .close(Failure::Lost(format!("sending a request: {e}")));
            let _ = self.control.shutdown(Shutdown::Both);
        }
        Ok(ticket)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let disc = Request {
            flags: 0,
            command: cmd::DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        {
            let mut w = lock(&self.writer);
            let _ = w.write_all(&disc.encode()).and_then(|_| w.flush());
            let _ = w.shutdown();
        }
        self.demux
            .close(Failure::Lost("the client disconnected".into()));
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

/// A client connection to one NBD export, usable from many threads at once.
pub struct NbdClient {
    uri: NbdUri,
    opts: NbdOptions,
    conn: RwLock<Arc<Conn>>,
    /// Held while reconnecting; holds the error of the last reconnection that failed (the
    /// generation it tried to replace and why), so that the callers waiting behind it fail at
    /// once instead of each retrying for the whole budget.
    reconnecting: Mutex<Option<(u64, String)>>,
    /// The oldest connection generation on which a write (`WRITE`, `WRITE_ZEROES`, `TRIM`
    /// without FUA) was acknowledged since the last flush that succeeded.
    unflushed: Mutex<Option<u64>>,
    /// Writes sent by [`NbdClient::write_behind`] whose replies were not yet collected, oldest
    /// first.
    behind: Mutex<VecDeque<Behind>>,
    info: ExportInfo,
}

/// A write sent without waiting for its reply: what is needed to collect the reply, or to send
/// it again if its connection is lost.
struct Behind {
    req: Request,
    payload: Vec<u8>,
    generation: u64,
    ticket: Result<Ticket, Failure>,
}

/// Most writes [`NbdClient::write_behind`] leaves unanswered; the next one first collects the
/// reply of the oldest.
const MAX_BEHIND: usize = 32;

impl Drop for NbdClient {
    fn drop(&mut self) {
        // Writes still in flight are waited for (not retried): their errors have no one left
        // to report to, but the connection is not closed under them.
        let q = std::mem::take(&mut *lock(&self.behind));
        for b in q {
            let _ = b.ticket.and_then(Ticket::wait);
        }
    }
}

impl fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdClient")
            .field("uri", &self.uri)
            .field("info", &self.info)
            .finish()
    }
}

/// "NBD_CMD_READ of 4 MiB at 0x100000".
fn describe(req: &Request) -> String {
    let name = proto::command_name(req.command);
    if req.command == cmd::FLUSH {
        name
    } else {
        format!(
            "{name} of {} at {:#x}",
            human_bytes(req.length as u64),
            req.offset
        )
    }
}

impl NbdClient {
    /// Connects to the export `uri` names and negotiates.
    pub fn connect(uri: &NbdUri, opts: &NbdOptions) -> io::Result<NbdClient> {
        let conn = Conn::open(uri, opts, 0)?;
        let info = conn.info.clone();
        Ok(NbdClient {
            uri: uri.clone(),
            opts: opts.clone(),
            conn: RwLock::new(Arc::new(conn)),
            reconnecting: Mutex::new(None),
            unflushed: Mutex::new(None),
            behind: Mutex::new(VecDeque::new()),
            info,
        })
    }

    /// The URI connected to.
    pub fn uri(&self) -> &NbdUri {
        &self.uri
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn current(&self) -> Arc<Conn> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the connection `generation` (which was lost) by a new one, retrying with
    /// backoff for `retry_for`. Another caller may have done it already.
    fn reconnect(&self, generation: u64, why: &Failure) -> io::Result<()> {
        let mut failed = lock(&self.reconnecting);
        if self.current().generation != generation {
            return Ok(());
        }
        if let Some((g, why)) = &*failed {
            if *g == generation {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why.clone(),
                ));
            }
        }
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = Conn::open(&self.uri, &self.opts, generation + 1).and_then(|c| {
                if c.info.size != self.info.size || c.info.read_only() != self.info.read_only() {
                    Err(io::Error::other(format!(
                        "after reconnecting, the export is {} bytes{} where it was {} bytes{}",
                        c.info.size,
                        if c.info.read_only() {
                            ", read-only"
                        } else {
                            ""
                        },
                        self.info.size,
                        if self.info.read_only() {
                            ", read-only"
                        } else {
                            ""
                        },
                    )))
                } else {
                    Ok(c)
                }
            });
            match r {
                Ok(c) => {
                    *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
                    return Ok(());
                }
                Err(e) => {
                    if start.elapsed() + delay > self.opts.retry_for {
                        let msg = format!(
                            "{why}; reconnecting failed {attempts} times over {:.0} s: {e}",
                            start.elapsed().as_secs_f64()
                        );
                        *failed = Some((generation, msg.clone()));
                        return Err(io::Error::new(io::ErrorKind::ConnectionAborted, msg));
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn error(req: &Request, f: &Failure) -> io::Error {
        let kind = match f {
            Failure::Server { error, .. } => match *error {
                proto::errno::EPERM => io::ErrorKind::PermissionDenied,
                proto::errno::EINVAL | proto::errno::EOVERFLOW => io::ErrorKind::InvalidInput,
                proto::errno::ENOTSUP => io::ErrorKind::Unsupported,
                _ => io::ErrorKind::Other,
            },
            Failure::Lost(_) => io::ErrorKind::ConnectionAborted,
            Failure::Protocol(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, format!("{}: {f}", describe(req)))
    }

    /// Records a completed request: a write not yet durable, or a flush that made the writes
    /// of its connection durable. A flush on a newer connection than a write it should cover
    /// is an error: that write went to a connection that was lost and may be lost too.
    fn completed(&self, req: &Request, generation: u64) -> io::Result<()> {
        let mut u = lock(&self.unflushed);
        match req.command {
            cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM if req.flags & proto::cflag::FUA == 0 => {
                *u = Some(u.map_or(generation, |g| g.min(generation)));
            }
            cmd::FLUSH => {
                if let Some(g) = u.take() {
                    if g < generation {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!(
                                "{}: the connection to {} was lost after the server had \
                                 acknowledged writes it had not yet made durable; they may \
                                 be lost (the server may have restarted) and must be written \
                                 again",
                                describe(req),
                                self.uri
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends `req` (with `payload` for a write), waits for the reply, and retries on a new
    /// connection when the connection is lost.
    pub fn execute(&self, req: Request, payload: Option<&[u8]>) -> io::Result<Done> {
        loop {
            let c = self.current();
            let r = c.start(req, payload).and_then(Ticket::wait);
            match r {
                Ok(d) => {
                    self.completed(&req, c.generation)?;
                    return Ok(d);
                }
                Err(f @ Failure::Lost(_)) => {
                    self.reconnect(c.generation, &f).map_err(|e| {
                        io::Error::new(e.kind(), format!("{}: {e}", describe(&req)))
                    })?;
                }
                Err(f) => return Err(Self::error(&req, &f)),
            }
        }
    }

    /// Sends a write (or write-zeroes, or trim) without waiting for its reply, so that the
    /// caller goes on while it is in flight; at most [`MAX_BEHIND`] are left unanswered (the
    /// oldest is collected first). A write overlapping one still unanswered first collects
    /// every reply: the protocol does not order requests in flight. Errors of these writes
    /// are reported by a later `write_behind` or by [`NbdClient::settle`], which whoever
    /// reads, flushes or needs the writes done must call first.
    pub fn write_behind(&self, req: Request, payload: Vec<u8>) -> io::Result<()> {
        let mut q = lock(&self.behind);
        let (s, e) = (req.offset, req.offset + req.length as u64);
        if q.iter()
            .any(|b| b.req.offset < e && s < b.req.offset + b.req.length as u64)
        {
            self.settle_queue(&mut q)?;
        }
        while q.len() >= MAX_BEHIND {
            if let Some(b) = q.pop_front() {
                if let Err(e) = self.collect(b) {
                    // The others are still in flight: collect them too before failing.
                    let _ = self.settle_queue(&mut q);
                    return Err(e);
                }
            }
        }
        let c = self.current();
        let p = (!payload.is_empty()).then_some(&payload[..]);
        let ticket = c.start(req, p);
        q.push_back(Behind {
            req,
            payload,
            generation: c.generation,
            ticket,
        });
        Ok(())
    }

    /// Collects the replies of every write [`NbdClient::write_behind`] sent, sending again the
    /// ones whose connection was lost; returns the first error.
    pub fn settle(&self) -> io::Result<()> {
        let mut q = lock(&self.behind);
        if q.is_empty() {
            return Ok(());
        }
        self.settle_queue(&mut q)
    }

    fn settle_queue(&self, q: &mut VecDeque<Behind>) -> io::Result<()> {
        let mut first = None;
        while let Some(b) = q.pop_front() {
            if let Err(e) = self.collect(b) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn collect(&self, b: Behind) -> io::Result<()> {
        match b.ticket.and_then(Ticket::wait) {
            Ok(_) => self.completed(&b.req, b.generation),
            Err(Failure::Lost(_)) => {
                let p = (!b.payload.is_empty()).then_some(&b.payload[..]);
                self.execute(b.req, p).map(drop)
            }
            Err(f) => Err(Self::error(&b.req, &f)),
        }
    }

    /// Sends several requests at once (bounded by the in-flight limit) and waits for all;
    /// each lost one is sent again. Returns the replies in order.
    pub fn execute_many(&self, reqs: &[(Request, Option<&[u8]>)]) -> io::Result<Vec<Done>> {
        let c = self.current();
        let mut tickets = Vec::with_capacity(reqs.len());
        for (req, payload) in reqs {
            tickets.push(c.start(*req, *payload));
        }
        let mut out = Vec::with_capacity(reqs.len());
        let mut first_err = None;
        for (t, (req, payload)) in tickets.into_iter().zip(reqs) {
            match t.and_then(Ticket::wait) {
                Ok(d) => match self.completed(req, c.generation) {
                    Ok(()) => out.push(d),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                },
                Err(Failure::Lost(_)) => match self.execute(*req, *payload) {
                    Ok(d) => out.push(d),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                },
                Err(f) => {
                    first_err.get_or_insert(Self::error(req, &f));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ChunkHeader;

    fn read_req(offset: u64, length: u32) -> Request {
        Request {
            flags: 0,
            command: cmd::READ,
            cookie: 0,
            offset,
            length,
        }
    }

    fn chunk_data(cookie: u64, done: bool, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = proto::encode_data_chunk(cookie, done, offset, data.len() as u32);
        b.extend_from_slice(data);
        b
    }

    /// Server bytes to read; what the client writes is kept.
    struct Script {
        input: std::io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Script {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn rep(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = proto::OptionReplyHeader {
            option,
            reply_type,
            length: payload.len() as u32,
        }
        .encode()
        .to_vec();
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn negotiation_falls_back_to_export_name_without_go() {
        // An old server: no structured replies, no NBD_OPT_GO, zeroes after the export info.
        let mut input = proto::encode_greeting(proto::FLAG_FIXED_NEWSTYLE).to_vec();
        input.extend(rep(opt::STRUCTURED_REPLY, rep::ERR_UNSUP, b""));
        input.extend(rep(opt::GO, rep::ERR_UNSUP, b""));
        input.extend_from_slice(&(5u64 << 20).to_be_bytes());
        input.extend_from_slice(&(proto::tflag::HAS_FLAGS | proto::tflag::READ_ONLY).to_be_bytes());
        input.extend_from_slice(&[0u8; 124]);
        let mut s = Script {
            input: std::io::Cursor::new(input),
            written: Vec::new(),
        };
        let flags = handshake_start(&mut s).unwrap();
        let info = handshake_finish(&mut s, flags, "disk", None).unwrap();
        assert_eq!(info.size, 5 << 20);
        assert!(info.read_only() && !info.structured && info.contexts.is_empty());
        assert_eq!(info.max_request, proto::MAX_PAYLOAD);
        // The client sent NBD_OPT_EXPORT_NAME "disk" last.
        assert!(s.written.ends_with(b"disk"));

        // A server with GO: block sizes are respected, an unknown export is named.
        let mut input = proto::encode_greeting(3).to_vec();
        input.extend(rep(opt::STRUCTURED_REPLY, rep::ACK, b""));
        input.extend(rep(
            opt::SET_META_CONTEXT,
            rep::META_CONTEXT,
            &proto::encode_meta_context_reply(9, proto::BASE_ALLOCATION),
        ));
        input.extend(rep(opt::SET_META_CONTEXT, rep::ACK, b""));
        let bs = proto::Info::BlockSize {
            min: 512,
            preferred: 4096,
            max: 1 << 20,
        };
        input.extend(rep(opt::GO, rep::INFO, &bs.encode()));
        let ex = proto::Info::Export {
            size: 1 << 30,
            flags: proto::tflag::HAS_FLAGS,
        };
        input.extend(rep(opt::GO, rep::INFO, &ex.encode()));
        input.extend(rep(opt::GO, rep::ACK, b""));
        let mut s = Script {
            input: std::io::Cursor::new(input),
            written: Vec::new(),
        };
        let flags = handshake_start(&mut s).unwrap();
        let info = handshake_finish(&mut s, flags, "", None).unwrap();
        assert_eq!((info.min_block, info.max_request), (512, 1 << 20));
        assert_eq!(info.context_id(proto::BASE_ALLOCATION), Some(9));

        let mut input = proto::encode_greeting(3).to_vec();
        input.extend(rep(opt::STRUCTURED_REPLY, rep::ACK, b""));
        input.extend(rep(opt::SET_META_CONTEXT, rep::ACK, b""));
        input.extend(rep(opt::GO, rep::ERR_UNKNOWN, b"no such export"));
        let mut s = Script {
            input: std::io::Cursor::new(input),
            written: Vec::new(),
        };
        let flags = handshake_start(&mut s).unwrap();
        let e = handshake_finish(&mut s, flags, "x", None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "the server refused NBD_OPT_GO: NBD_REP_ERR_UNKNOWN (no such export)"
        );
    }

    #[test]
    fn demux_structured_read_with_hole_and_out_of_order_replies() {
        let d = Demux::new(1 << 20, true, vec![1], 16);
        let (a, ta) = d.register(read_req(0, 8)).unwrap();
        let (b, tb) = d.register(read_req(100, 4)).unwrap();
        let mut s = Vec::new();
        s.extend(chunk_data(b.cookie, true, 100, b"wxyz"));
        s.extend(chunk_data(a.cookie, false, 4, b"5678"));
        s.extend(proto::encode_chunk(
            a.cookie,
            true,
            &ChunkPayload::Hole {
                offset: 0,
                length: 4,
            },
        ));
        let mut r = &s[..];
        for _ in 0..3 {
            d.read_one(&mut r).unwrap();
        }
        assert_eq!(tb.wait().unwrap().data, b"wxyz");
        assert_eq!(ta.wait().unwrap().data, b"\0\0\0\x005678");
    }

    #[test]
    fn demux_hostile_replies_are_protocol_errors() {
        type Make = Box<dyn Fn(u64) -> Vec<u8>>;
        let cases: Vec<(Make, &str)> = vec![
            (
                Box::new(|c| chunk_data(c, true, 8, b"0123456789")),
                "outside the request",
            ),
            (
                Box::new(|c| chunk_data(c + 1, true, 0, b"01")),
                "no request",
            ),
            (
                Box::new(|c| {
                    ChunkHeader {
                        flags: 1,
                        chunk_type: chunk::OFFSET_DATA,
                        cookie: c,
                        length: u32::MAX,
                    }
                    .encode()
                    .to_vec()
                }),
                "more than",
            ),
            (Box::new(|_| b"\x12\x34\x56\x78".to_vec()), "unknown magic"),
            (
                Box::new(|c| chunk_data(c, true, 0, b"0123")),
                "covered 4 bytes",
            ),
            (
                Box::new(|c| {
                    proto::encode_chunk(
                        c,
                        true,
                        &ChunkPayload::BlockStatus {
                            context: 1,
                            extents: vec![(4, 0)],
                        },
                    )
                }),
                "block-status chunk in reply to NBD_CMD_READ",
            ),
        ];
        for (make, want) in cases {
            let d = Demux::new(1 << 20, true, vec![1], 16);
            let (a, ta) = d.register(read_req(0, 8)).unwrap();
            let s = make(a.cookie);
            let f = d.run(&mut &s[..]);
            assert!(
                matches!(&f, Failure::Protocol(m) if m.contains(want)),
                "{want}: {f:?}"
            );
            assert!(ta.wait().is_err());
            assert!(d.register(read_req(0, 1)).is_err());
        }
    }

    #[test]
    fn demux_block_status_past_the_end_and_errors() {
        let d = Demux::new(4096, true, vec![7], 16);
        let (q, t) = d
            .register(Request {
                flags: 0,
                command: cmd::BLOCK_STATUS,
                cookie: 0,
                offset: 0,
                length: 4096,
            })
            .unwrap();
        let s = proto::encode_chunk(
            q.cookie,
            true,
            &ChunkPayload::BlockStatus {
                context: 7,
                extents: vec![(4096, 0), (512, 3)],
            },
        );
        let f = d.run(&mut &s[..]);
        assert!(
            matches!(&f, Failure::Protocol(m) if m.contains("past the end")),
            "{f:?}"
        );
        assert!(t.wait().is_err());

        let d = Demux::new(1 << 20, true, vec![], 16);
        let (a, ta) = d.register(read_req(0, 8)).unwrap();
        let mut s = proto::encode_chunk(
            a.cookie,
            true,
            &ChunkPayload::Error {
                error: proto::errno::EIO,
                message: "bad sector".into(),
                offset: Some(4),
            },
        );
        let (b, tb) = d.register(read_req(0, 4)).unwrap();
        s.extend(
            proto::SimpleReply {
                error: 0,
                cookie: b.cookie,
            }
            .encode(),
        );
        s.extend(b"abcd");
        let mut r = &s[..];
        d.read_one(&mut r).unwrap();
        d.read_one(&mut r).unwrap();
        let e = ta.wait().unwrap_err();
        assert_eq!(
            e.to_string(),
            "EIO (input/output error) (at 0x4: bad sector)"
        );
        assert_eq!(tb.wait().unwrap().data, b"abcd");
        // The end of the stream is a lost connection (retried), not a protocol error.
        assert!(matches!(d.read_one(&mut r), Err(Failure::Lost(_))));
    }
}
