//! The NBD wire format: constants, headers and option/reply payloads, encoded and decoded
//! without I/O so that the server and the client share one bounded, fuzzable parser.
//!
//! Source: the protocol description of the NetworkBlockDevice project (`doc/proto.md`):
//! fixed newstyle negotiation, structured replies, metadata contexts (`base:allocation`,
//! and qemu's `qemu:dirty-bitmap:NAME`, described in qemu's `docs/interop/nbd.rst`).
//! Extended headers (64-bit lengths) are not used by either side.
//!
//! Every decoder checks lengths before it reads and returns a [`WireError`] naming the field
//! that is wrong; nothing here panics on hostile bytes.

use std::fmt;

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second magic of the newstyle greeting, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a (compact) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag (server): fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag (server): the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be omitted.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags: what an export supports (16 bits, sent with the export's size).
pub mod tflag {
    /// Always set: the other flags are meaningful.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// The medium is rotational (a scheduling hint).
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` is supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections see each other's completed writes, and a flush on one covers all.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_RESIZE` is supported.
    pub const SEND_RESIZE: u16 = 1 << 9;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option numbers of the negotiation phase.
pub mod opt {
    /// Chooses the export and ends negotiation (old style: no error reply possible).
    pub const EXPORT_NAME: u32 = 1;
    /// Ends the negotiation without an export.
    pub const ABORT: u32 = 2;
    /// Lists the exports.
    pub const LIST: u32 = 3;
    /// Upgrades the connection to TLS.
    pub const STARTTLS: u32 = 5;
    /// Asks about an export without choosing it.
    pub const INFO: u32 = 6;
    /// Chooses an export and ends negotiation (with info replies and error replies).
    pub const GO: u32 = 7;
    /// Asks for structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// Lists the metadata contexts matching queries.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Selects the metadata contexts `NBD_CMD_BLOCK_STATUS` reports.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Asks for extended (64-bit) headers: not supported here.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// The option is done.
    pub const ACK: u32 = 1;
    /// One export, in answer to `NBD_OPT_LIST`.
    pub const SERVER: u32 = 2;
    /// One piece of information about an export (`NBD_OPT_INFO`/`GO`).
    pub const INFO: u32 = 3;
    /// One metadata context (id and name).
    pub const META_CONTEXT: u32 = 4;
    /// Bit set in every error reply type.
    pub const FLAG_ERROR: u32 = 1 << 31;
    /// The option is not known to the server.
    pub const ERR_UNSUP: u32 = FLAG_ERROR | 1;
    /// Forbidden by the server's policy.
    pub const ERR_POLICY: u32 = FLAG_ERROR | 2;
    /// Syntactically or semantically invalid.
    pub const ERR_INVALID: u32 = FLAG_ERROR | 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = FLAG_ERROR | 4;
    /// TLS is required before this option.
    pub const ERR_TLS_REQD: u32 = FLAG_ERROR | 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = FLAG_ERROR | 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = FLAG_ERROR | 7;
    /// The export needs block size information the client did not ask for.
    pub const ERR_BLOCK_SIZE_REQD: u32 = FLAG_ERROR | 8;
    /// The request or reply would be too large.
    pub const ERR_TOO_BIG: u32 = FLAG_ERROR | 9;
    /// Extended headers are required.
    pub const ERR_EXT_HEADER_REQD: u32 = FLAG_ERROR | 10;
}

/// `NBD_INFO_*` types of `NBD_REP_INFO`.
pub mod info {
    /// Size and transmission flags (always sent by `NBD_OPT_GO`/`INFO`).
    pub const EXPORT: u16 = 0;
    /// The canonical export name.
    pub const NAME: u16 = 1;
    /// A description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect (no reply).
    pub const DISC: u16 = 2;
    /// Flush written data to stable storage.
    pub const FLUSH: u16 = 3;
    /// Discard (a hint; the data becomes unspecified).
    pub const TRIM: u16 = 4;
    /// Prefetch.
    pub const CACHE: u16 = 5;
    /// Write zeroes (may punch a hole unless `NO_HOLE`).
    pub const WRITE_ZEROES: u16 = 6;
    /// Report the status of a range in the selected metadata contexts.
    pub const BLOCK_STATUS: u16 = 7;
    /// Resize.
    pub const RESIZE: u16 = 8;
}

/// Command flags.
pub mod cflag {
    /// Force unit access: the write is durable when it is acknowledged.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES`: do not deallocate.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ`: do not fragment the reply.
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS`: one extent per context is enough.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES`: fail rather than be slow.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers only.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// Flag: the last chunk of the reply.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// No payload (only with `FLAG_DONE`).
    pub const NONE: u16 = 0;
    /// Offset (u64) followed by data.
    pub const OFFSET_DATA: u16 = 1;
    /// Offset (u64) and length (u32) of a range that reads as zeros.
    pub const OFFSET_HOLE: u16 = 2;
    /// Context id (u32) followed by (length u32, flags u32) descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// Bit set in every error chunk type.
    pub const FLAG_ERROR: u16 = 1 << 15;
    /// Error (u32), message length (u16), message.
    pub const ERROR: u16 = FLAG_ERROR | 1;
    /// As `ERROR`, followed by the offset (u64) the error is about.
    pub const ERROR_OFFSET: u16 = FLAG_ERROR | 2;
}

/// Errors carried by replies: the Linux errno values the protocol names.
pub mod errno {
    /// Operation not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
    /// Value too large (a request past the end of the export, or too long).
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;

    /// A short name for messages.
    pub fn name(e: u32) -> &'static str {
        match e {
            EPERM => "EPERM (operation not permitted)",
            EIO => "EIO (input/output error)",
            ENOMEM => "ENOMEM (out of memory)",
            EINVAL => "EINVAL (invalid argument)",
            ENOSPC => "ENOSPC (no space left)",
            EOVERFLOW => "EOVERFLOW (value too large)",
            ENOTSUP => "ENOTSUP (not supported)",
            ESHUTDOWN => "ESHUTDOWN (server shutting down)",
            _ => "unknown error",
        }
    }
}

/// `base:allocation` status flags.
pub mod alloc {
    /// Unallocated (a hole).
    pub const HOLE: u32 = 1 << 0;
    /// Reads as zeros.
    pub const ZERO: u32 = 1 << 1;
}

/// `qemu:dirty-bitmap:NAME` status flag: the range is dirty.
pub const DIRTY: u32 = 1 << 0;

/// The metadata context of allocation status.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Prefix of qemu's dirty-bitmap contexts.
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// Longest string (export name, description, context name) either side accepts: the
/// protocol's own limit.
pub const MAX_STRING: usize = 4096;
/// Largest option payload a server reads (a `SET_META_CONTEXT` with many queries stays far
/// below); larger options are refused with `NBD_REP_ERR_TOO_BIG` after being skipped.
pub const MAX_OPTION_PAYLOAD: u32 = 64 << 10;
/// Largest option reply a client reads.
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Most metadata-context queries accepted in one option.
pub const MAX_META_QUERIES: u32 = 128;
/// Largest payload of a request or a read reply: 32 MiB, as qemu-nbd and the reference
/// server use.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Bytes of the server's initial greeting (`NBDMAGIC`, `IHAVEOPT`, flags).
pub const GREETING_LEN: usize = 18;
/// Bytes of an option request header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;

/// A protocol violation: what was wrong, for the error reply or the connection's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for std::io::Error {
    fn from(e: WireError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.0)
    }
}

/// Result of decoding.
pub type WireResult<T> = std::result::Result<T, WireError>;

fn wire(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

/// A bounded reader over a payload: every read checks the remaining length and names the
/// field it was reading when the payload is too short.
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Payload<'a> {
    /// Reads `buf`, described as `what` in errors ("NBD_OPT_GO payload").
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Payload { buf, pos: 0, what }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &str) -> WireResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(wire(format!(
                "{}: {field} needs {n} bytes at offset {} but only {} remain",
                self.what,
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A big-endian u16.
    pub fn u16(&mut self, field: &str) -> WireResult<u16> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian u32.
    pub fn u32(&mut self, field: &str) -> WireResult<u32> {
        let b = self.bytes(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian u64.
    pub fn u64(&mut self, field: &str) -> WireResult<u64> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A UTF-8 string of `len` bytes (at most [`MAX_STRING`]).
    pub fn string(&mut self, len: usize, field: &str) -> WireResult<String> {
        if len > MAX_STRING {
            return Err(wire(format!(
                "{}: {field} is {len} bytes, more than the {MAX_STRING} allowed",
                self.what
            )));
        }
        let b = self.bytes(len, field)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| wire(format!("{}: {field} is not valid UTF-8", self.what)))
    }

    /// A string preceded by its u32 length.
    pub fn string32(&mut self, field: &str) -> WireResult<String> {
        let n = self.u32(field)? as usize;
        self.string(n, field)
    }

    /// The rest of the payload.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// Fails when bytes are left over.
    pub fn finish(&self) -> WireResult<()> {
        if self.remaining() != 0 {
            return Err(wire(format!(
                "{}: {} unexpected bytes after the last field",
                self.what,
                self.remaining()
            )));
        }
        Ok(())
    }
}

fn put_string32(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

// ---- Negotiation ----

/// The server's first 18 bytes: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Decodes the greeting; returns the handshake flags. Old-style servers (magic
/// `0x00420281861253`) and non-NBD peers are refused.
pub fn decode_greeting(b: &[u8; GREETING_LEN]) -> WireResult<u16> {
    let magic = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
    if magic != NBD_MAGIC {
        return Err(wire(format!(
            "the peer is not an NBD server (greeting starts {:02x?})",
            &b[..8]
        )));
    }
    let second = u64::from_be_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    if second == 0x0000_4202_8186_1253 {
        return Err(wire(
            "the server speaks the old-style NBD handshake, which is not supported",
        ));
    }
    if second != IHAVEOPT {
        return Err(wire(format!(
            "unexpected second magic {second:#018x} in the server's greeting"
        )));
    }
    Ok(u16::from_be_bytes([b[16], b[17]]))
}

/// An option request header: `IHAVEOPT`, option, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option number (see [`opt`]).
    pub option: u32,
    /// Bytes of payload that follow.
    pub length: u32,
}

impl OptionHeader {
    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes 16 bytes; a wrong magic is an error (the server then closes the connection).
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> WireResult<OptionHeader> {
        let mut p = Payload::new(b, "option header");
        let magic = p.u64("magic")?;
        if magic != IHAVEOPT {
            return Err(wire(format!(
                "option request with magic {magic:#018x} instead of IHAVEOPT"
            )));
        }
        Ok(OptionHeader {
            option: p.u32("option")?,
            length: p.u32("length")?,
        })
    }
}

/// An option reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: u32,
    /// Reply type (see [`rep`]).
    pub reply_type: u32,
    /// Bytes of payload that follow.
    pub length: u32,
}

impl OptionReplyHeader {
    /// The 20 bytes on the wire.
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        let mut b = [0u8; OPTION_REPLY_HEADER_LEN];
        b[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        b[16..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes 20 bytes; checks the magic and that the payload is at most
    /// [`MAX_OPTION_REPLY`].
    pub fn decode(b: &[u8; OPTION_REPLY_HEADER_LEN]) -> WireResult<OptionReplyHeader> {
        let mut p = Payload::new(b, "option reply header");
        let magic = p.u64("magic")?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(wire(format!("option reply with magic {magic:#018x}")));
        }
        let h = OptionReplyHeader {
            option: p.u32("option")?,
            reply_type: p.u32("reply type")?,
            length: p.u32("length")?,
        };
        if h.length > MAX_OPTION_REPLY {
            return Err(wire(format!(
                "option reply of {} bytes (type {:#x}) is larger than the {MAX_OPTION_REPLY} accepted",
                h.length, h.reply_type
            )));
        }
        Ok(h)
    }

    /// Whether the reply is an error.
    pub fn is_error(&self) -> bool {
        self.reply_type & rep::FLAG_ERROR != 0
    }
}

/// A name for an option reply error type, for messages.
pub fn rep_error_name(t: u32) -> &'static str {
    match t {
        rep::ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        rep::ERR_POLICY => "NBD_REP_ERR_POLICY",
        rep::ERR_INVALID => "NBD_REP_ERR_INVALID",
        rep::ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        rep::ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        rep::ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        rep::ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        rep::ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        rep::ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        rep::ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD",
        _ => "an unknown error",
    }
}

/// A name for an option, for messages.
pub fn option_name(o: u32) -> String {
    match o {
        opt::EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        opt::ABORT => "NBD_OPT_ABORT".into(),
        opt::LIST => "NBD_OPT_LIST".into(),
        opt::STARTTLS => "NBD_OPT_STARTTLS".into(),
        opt::INFO => "NBD_OPT_INFO".into(),
        opt::GO => "NBD_OPT_GO".into(),
        opt::STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY".into(),
        opt::LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT".into(),
        opt::SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT".into(),
        opt::EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS".into(),
        n => format!("option {n}"),
    }
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and the info types requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRequest {
    /// Export name (may be empty: the default export).
    pub name: String,
    /// `NBD_INFO_*` types the client asks for.
    pub infos: Vec<u16>,
}

impl GoRequest {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.name.len() + 2 * self.infos.len());
        put_string32(&mut out, &self.name);
        out.extend_from_slice(&(self.infos.len() as u16).to_be_bytes());
        for i in &self.infos {
            out.extend_from_slice(&i.to_be_bytes());
        }
        out
    }

    /// Decodes and checks the payload.
    pub fn decode(b: &[u8]) -> WireResult<GoRequest> {
        let mut p = Payload::new(b, "NBD_OPT_GO/INFO payload");
        let name = p.string32("export name")?;
        let n = p.u16("number of info requests")?;
        let mut infos = Vec::with_capacity(n as usize);
        for _ in 0..n {
            infos.push(p.u16("info request")?);
        }
        p.finish()?;
        Ok(GoRequest { name, infos })
    }
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name.
    pub export: String,
    /// Context names or queries (`base:`, `qemu:dirty-bitmap:`...).
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string32(&mut out, &self.export);
        out.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            put_string32(&mut out, q);
        }
        out
    }

    /// Decodes and checks the payload (at most [`MAX_META_QUERIES`] queries).
    pub fn decode(b: &[u8]) -> WireResult<MetaContextRequest> {
        let mut p = Payload::new(b, "meta context option payload");
        let export = p.string32("export name")?;
        let n = p.u32("number of queries")?;
        if n > MAX_META_QUERIES {
            return Err(wire(format!(
                "meta context option payload: {n} queries, more than the {MAX_META_QUERIES} accepted"
            )));
        }
        let mut queries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            queries.push(p.string32("query")?);
        }
        p.finish()?;
        Ok(MetaContextRequest { export, queries })
    }
}

/// The payload of `NBD_REP_META_CONTEXT`: the id the server gave a context, and its name.
pub fn encode_meta_context_reply(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Decodes an `NBD_REP_META_CONTEXT` payload.
pub fn decode_meta_context_reply(b: &[u8]) -> WireResult<(u32, String)> {
    let mut p = Payload::new(b, "NBD_REP_META_CONTEXT payload");
    let id = p.u32("context id")?;
    let n = p.remaining();
    let name = p.string(n, "context name")?;
    Ok((id, name))
}

/// The payload of `NBD_REP_SERVER`: an export name and its description.
pub fn encode_server_reply(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_string32(&mut out, name);
    out.extend_from_slice(description.as_bytes());
    out
}

/// Decodes an `NBD_REP_SERVER` payload: (name, description).
pub fn decode_server_reply(b: &[u8]) -> WireResult<(String, String)> {
    let mut p = Payload::new(b, "NBD_REP_SERVER payload");
    let name = p.string32("export name")?;
    let n = p.remaining();
    let description = p.string(n, "export description")?;
    Ok((name, description))
}

/// One `NBD_REP_INFO` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Size in bytes.
        size: u64,
        /// Transmission flags (see [`tflag`]).
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload size.
        max: u32,
    },
    /// An info type this side does not know (ignored by clients, as the protocol says).
    Unknown(u16),
}

impl Info {
    /// Encodes the payload of an `NBD_REP_INFO`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Info::Export { size, flags } => {
                out.extend_from_slice(&info::EXPORT.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
            Info::Name(s) => {
                out.extend_from_slice(&info::NAME.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Info::Description(s) => {
                out.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            } => {
                out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                out.extend_from_slice(&min.to_be_bytes());
                out.extend_from_slice(&preferred.to_be_bytes());
                out.extend_from_slice(&max.to_be_bytes());
            }
            Info::Unknown(t) => out.extend_from_slice(&t.to_be_bytes()),
        }
        out
    }

    /// Decodes the payload of an `NBD_REP_INFO`.
    pub fn decode(b: &[u8]) -> WireResult<Info> {
        let mut p = Payload::new(b, "NBD_REP_INFO payload");
        let t = p.u16("info type")?;
        let i = match t {
            info::EXPORT => Info::Export {
                size: p.u64("export size")?,
                flags: p.u16("transmission flags")?,
            },
            info::NAME => {
                let n = p.remaining();
                Info::Name(p.string(n, "export name")?)
            }
            info::DESCRIPTION => {
                let n = p.remaining();
                Info::Description(p.string(n, "export description")?)
            }
            info::BLOCK_SIZE => {
                let (min, preferred, max) = (
                    p.u32("minimum block size")?,
                    p.u32("preferred block size")?,
                    p.u32("maximum block size")?,
                );
                if !min.is_power_of_two()
                    || min > 64 << 10
                    || !preferred.is_power_of_two()
                    || preferred < min
                    || max < preferred.min(MAX_PAYLOAD)
                    || max % min != 0
                {
                    return Err(wire(format!(
                        "NBD_INFO_BLOCK_SIZE: inconsistent sizes (minimum {min}, preferred \
                         {preferred}, maximum {max})"
                    )));
                }
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                }
            }
            t => {
                p.rest();
                return Ok(Info::Unknown(t));
            }
        };
        p.finish()?;
        Ok(i)
    }
}

/// The payload of an option error reply: an optional human-readable message.
pub fn decode_error_message(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_STRING)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

// ---- Transmission ----

/// A transmission request (compact header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (see [`cflag`]).
    pub flags: u16,
    /// Command (see [`cmd`]).
    pub command: u16,
    /// The cookie the reply carries back (the protocol's "handle").
    pub cookie: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length (bytes of payload for `WRITE`).
    pub length: u32,
}

impl Request {
    /// The 28 bytes on the wire.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes 28 bytes. Only the magic is checked here: the server validates the command,
    /// flags and range against the export.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> WireResult<Request> {
        let mut p = Payload::new(b, "request");
        let magic = p.u32("magic")?;
        if magic != REQUEST_MAGIC {
            return Err(wire(format!(
                "request with magic {magic:#010x} instead of {REQUEST_MAGIC:#010x}"
            )));
        }
        Ok(Request {
            flags: p.u16("flags")?,
            command: p.u16("command")?,
            cookie: p.u64("cookie")?,
            offset: p.u64("offset")?,
            length: p.u32("length")?,
        })
    }
}

/// A name for a command, for messages.
pub fn command_name(c: u16) -> String {
    match c {
        cmd::READ => "NBD_CMD_READ".into(),
        cmd::WRITE => "NBD_CMD_WRITE".into(),
        cmd::DISC => "NBD_CMD_DISC".into(),
        cmd::FLUSH => "NBD_CMD_FLUSH".into(),
        cmd::TRIM => "NBD_CMD_TRIM".into(),
        cmd::CACHE => "NBD_CMD_CACHE".into(),
        cmd::WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES".into(),
        cmd::BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS".into(),
        cmd::RESIZE => "NBD_CMD_RESIZE".into(),
        n => format!("command {n}"),
    }
}

/// A simple reply header: error (0 = success) and cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// errno value (see [`errno`]), 0 on success.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut b = [0u8; SIMPLE_REPLY_LEN];
        b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Chunk flags (see [`chunk::FLAG_DONE`]).
    pub flags: u16,
    /// Chunk type (see [`chunk`]).
    pub chunk_type: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Bytes of payload that follow.
    pub length: u32,
}

impl ChunkHeader {
    /// The 20 bytes on the wire.
    pub fn encode(&self) -> [u8; STRUCTURED_REPLY_LEN] {
        let mut b = [0u8; STRUCTURED_REPLY_LEN];
        b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.chunk_type.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Whether this is the last chunk of its reply.
    pub fn done(&self) -> bool {
        self.flags & chunk::FLAG_DONE != 0
    }
}

/// The start of a reply, as read by a client: the magic decides how many bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (for `READ`, the data follows when `error == 0`).
    Simple(SimpleReply),
    /// A structured reply chunk.
    Chunk(ChunkHeader),
}

/// Which reply a 4-byte magic starts, and how many more header bytes to read.
pub fn reply_header_rest(magic: [u8; 4]) -> WireResult<usize> {
    match u32::from_be_bytes(magic) {
        SIMPLE_REPLY_MAGIC => Ok(SIMPLE_REPLY_LEN - 4),
        STRUCTURED_REPLY_MAGIC => Ok(STRUCTURED_REPLY_LEN - 4),
        m => Err(wire(format!("reply with unknown magic {m:#010x}"))),
    }
}

/// Decodes a whole reply header (16 or 20 bytes, as [`reply_header_rest`] said). A chunk
/// payload larger than `MAX_PAYLOAD + 8` is refused: no chunk this client asks for is
/// larger.
pub fn decode_reply_header(b: &[u8]) -> WireResult<ReplyHeader> {
    let mut p = Payload::new(b, "reply header");
    match p.u32("magic")? {
        SIMPLE_REPLY_MAGIC => {
            let h = SimpleReply {
                error: p.u32("error")?,
                cookie: p.u64("cookie")?,
            };
            p.finish()?;
            Ok(ReplyHeader::Simple(h))
        }
        STRUCTURED_REPLY_MAGIC => {
            let h = ChunkHeader {
                flags: p.u16("flags")?,
                chunk_type: p.u16("type")?,
                cookie: p.u64("cookie")?,
                length: p.u32("length")?,
            };
            p.finish()?;
            if h.length > MAX_PAYLOAD + 8 {
                return Err(wire(format!(
                    "reply chunk of type {:#x} announces {} bytes of payload, more than the \
                     {} accepted",
                    h.chunk_type,
                    h.length,
                    MAX_PAYLOAD + 8
                )));
            }
            Ok(ReplyHeader::Chunk(h))
        }
        m => Err(wire(format!("reply with unknown magic {m:#010x}"))),
    }
}

/// A decoded structured reply chunk payload (data chunks are decoded by the reader, which
/// places the data directly in its buffer: see [`decode_offset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkPayload {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: `length` bytes at `offset` read as zeros.
    Hole {
        /// Offset in the export.
        offset: u64,
        /// Length in bytes.
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`: a context and its extents (length, flags).
    BlockStatus {
        /// The context id from `NBD_OPT_SET_META_CONTEXT`.
        context: u32,
        /// (length, status flags) descriptors, in order from the request's offset.
        extents: Vec<(u32, u32)>,
    },
    /// `NBD_REPLY_TYPE_ERROR` / `ERROR_OFFSET`.
    Error {
        /// errno value.
        error: u32,
        /// The server's message.
        message: String,
        /// The offset the error is about (`ERROR_OFFSET`).
        offset: Option<u64>,
    },
}

/// Decodes a chunk payload other than `OFFSET_DATA`. Unknown non-error types are an error
/// (the protocol allows the client to drop the connection); unknown error types are
/// reported as errors with their message.
pub fn decode_chunk(h: &ChunkHeader, b: &[u8]) -> WireResult<ChunkPayload> {
    let mut p = Payload::new(b, "reply chunk");
    let c = match h.chunk_type {
        chunk::NONE => {
            if !h.done() {
                return Err(wire("NBD_REPLY_TYPE_NONE chunk without the DONE flag"));
            }
            ChunkPayload::None
        }
        chunk::OFFSET_HOLE => {
            let offset = p.u64("hole offset")?;
            let length = p.u32("hole length")?;
            if length == 0 {
                return Err(wire("NBD_REPLY_TYPE_OFFSET_HOLE of length 0"));
            }
            ChunkPayload::Hole { offset, length }
        }
        chunk::BLOCK_STATUS => {
            let context = p.u32("context id")?;
            if p.remaining() == 0 || p.remaining() % 8 != 0 {
                return Err(wire(format!(
                    "NBD_REPLY_TYPE_BLOCK_STATUS with {} bytes of descriptors (a non-zero \
                     multiple of 8 expected)",
                    p.remaining()
                )));
            }
            let mut extents = Vec::with_capacity(p.remaining() / 8);
            while p.remaining() > 0 {
                let len = p.u32("extent length")?;
                let flags = p.u32("extent flags")?;
                if len == 0 {
                    return Err(wire("NBD_REPLY_TYPE_BLOCK_STATUS extent of length 0"));
                }
                extents.push((len, flags));
            }
            ChunkPayload::BlockStatus { context, extents }
        }
        t if t & chunk::FLAG_ERROR != 0 => {
            let error = p.u32("error")?;
            let n = p.u16("message length")? as usize;
            let msg = p.bytes(n, "message")?;
            let message = decode_error_message(msg);
            let offset = if t == chunk::ERROR_OFFSET {
                Some(p.u64("error offset")?)
            } else {
                p.rest();
                None
            };
            if error == 0 {
                return Err(wire("error chunk with error 0"));
            }
            ChunkPayload::Error {
                error,
                message,
                offset,
            }
        }
        t => {
            return Err(wire(format!("reply chunk of unknown type {t}")));
        }
    };
    p.finish()?;
    Ok(c)
}

/// The offset at the start of an `OFFSET_DATA` chunk payload, and the data length after it.
pub fn decode_offset(h: &ChunkHeader, first8: &[u8]) -> WireResult<(u64, u32)> {
    if h.length < 9 {
        return Err(wire(format!(
            "NBD_REPLY_TYPE_OFFSET_DATA of {} bytes (an offset and data expected)",
            h.length
        )));
    }
    let mut p = Payload::new(first8, "data chunk");
    Ok((p.u64("data offset")?, h.length - 8))
}

/// Encodes an `OFFSET_DATA` chunk header and its offset (the data follows).
pub fn encode_data_chunk(cookie: u64, done: bool, offset: u64, data_len: u32) -> Vec<u8> {
    let h = ChunkHeader {
        flags: if done { chunk::FLAG_DONE } else { 0 },
        chunk_type: chunk::OFFSET_DATA,
        cookie,
        length: data_len + 8,
    };
    let mut out = Vec::with_capacity(STRUCTURED_REPLY_LEN + 8);
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Encodes a whole chunk (header and payload) other than `OFFSET_DATA`.
pub fn encode_chunk(cookie: u64, done: bool, c: &ChunkPayload) -> Vec<u8> {
    let mut payload = Vec::new();
    let chunk_type = match c {
        ChunkPayload::None => chunk::NONE,
        ChunkPayload::Hole { offset, length } => {
            payload.extend_from_slice(&offset.to_be_bytes());
            payload.extend_from_slice(&length.to_be_bytes());
            chunk::OFFSET_HOLE
        }
        ChunkPayload::BlockStatus { context, extents } => {
            payload.extend_from_slice(&context.to_be_bytes());
            for (l, f) in extents {
                payload.extend_from_slice(&l.to_be_bytes());
                payload.extend_from_slice(&f.to_be_bytes());
            }
            chunk::BLOCK_STATUS
        }
        ChunkPayload::Error {
            error,
            message,
            offset,
        } => {
            let m = &message.as_bytes()[..message.len().min(MAX_STRING)];
            payload.extend_from_slice(&error.to_be_bytes());
            payload.extend_from_slice(&(m.len() as u16).to_be_bytes());
            payload.extend_from_slice(m);
            match offset {
                Some(o) => {
                    payload.extend_from_slice(&o.to_be_bytes());
                    chunk::ERROR_OFFSET
                }
                None => chunk::ERROR,
            }
        }
    };
    let h = ChunkHeader {
        flags: if done { chunk::FLAG_DONE } else { 0 },
        chunk_type,
        cookie,
        length: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(STRUCTURED_REPLY_LEN + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(&payload);
    out
}

/// The errno a server reports for an I/O error of its own.
pub fn errno_of(e: &std::io::Error) -> u32 {
    match e.raw_os_error() {
        Some(1) | Some(13) => errno::EPERM,
        Some(12) => errno::ENOMEM,
        Some(22) => errno::EINVAL,
        Some(27) | Some(28) | Some(122) => errno::ENOSPC,
        Some(75) => errno::EOVERFLOW,
        Some(95) => errno::ENOTSUP,
        _ => match e.kind() {
            std::io::ErrorKind::InvalidInput => errno::EINVAL,
            std::io::ErrorKind::Unsupported => errno::ENOTSUP,
            std::io::ErrorKind::PermissionDenied => errno::EPERM,
            std::io::ErrorKind::OutOfMemory => errno::ENOMEM,
            _ => errno::EIO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trip_and_refusals() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(decode_greeting(&g), Ok(3));
        let mut bad = g;
        bad[0] = b'X';
        assert!(
            decode_greeting(&bad)
                .unwrap_err()
                .0
                .contains("not an NBD server")
        );
        let mut old = g;
        old[8..16].copy_from_slice(&0x0000_4202_8186_1253u64.to_be_bytes());
        assert!(decode_greeting(&old).unwrap_err().0.contains("old-style"));
    }

    #[test]
    fn headers_round_trip() {
        let o = OptionHeader {
            option: opt::GO,
            length: 12,
        };
        assert_eq!(OptionHeader::decode(&o.encode()), Ok(o));
        let r = OptionReplyHeader {
            option: opt::GO,
            reply_type: rep::ERR_UNKNOWN,
            length: 5,
        };
        assert_eq!(OptionReplyHeader::decode(&r.encode()), Ok(r));
        assert!(r.is_error());
        let q = Request {
            flags: cflag::FUA,
            command: cmd::WRITE,
            cookie: 0x1122_3344_5566_7788,
            offset: 1 << 40,
            length: 65536,
        };
        assert_eq!(Request::decode(&q.encode()), Ok(q));
        let s = SimpleReply {
            error: errno::EIO,
            cookie: 7,
        };
        assert_eq!(decode_reply_header(&s.encode()), Ok(ReplyHeader::Simple(s)));
        let c = ChunkHeader {
            flags: chunk::FLAG_DONE,
            chunk_type: chunk::OFFSET_HOLE,
            cookie: 9,
            length: 12,
        };
        assert_eq!(decode_reply_header(&c.encode()), Ok(ReplyHeader::Chunk(c)));
    }

    #[test]
    fn option_payloads_round_trip() {
        let g = GoRequest {
            name: "web01".into(),
            infos: vec![info::BLOCK_SIZE, info::NAME],
        };
        assert_eq!(GoRequest::decode(&g.encode()), Ok(g.clone()));
        let mut long = g.encode();
        long.push(0);
        assert!(
            GoRequest::decode(&long)
                .unwrap_err()
                .0
                .contains("unexpected")
        );
        let m = MetaContextRequest {
            export: "".into(),
            queries: vec![BASE_ALLOCATION.into(), "qemu:dirty-bitmap:b0".into()],
        };
        assert_eq!(MetaContextRequest::decode(&m.encode()), Ok(m));
        let (id, n) =
            decode_meta_context_reply(&encode_meta_context_reply(3, "base:allocation")).unwrap();
        assert_eq!((id, n.as_str()), (3, "base:allocation"));
        let (n, d) = decode_server_reply(&encode_server_reply("a", "disk a")).unwrap();
        assert_eq!((n.as_str(), d.as_str()), ("a", "disk a"));
        for i in [
            Info::Export {
                size: 1 << 30,
                flags: tflag::HAS_FLAGS | tflag::READ_ONLY,
            },
            Info::Name("x".into()),
            Info::Description("d".into()),
            Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: 32 << 20,
            },
        ] {
            assert_eq!(Info::decode(&i.encode()), Ok(i));
        }
        assert_eq!(Info::decode(&[0, 99, 1, 2]), Ok(Info::Unknown(99)));
    }

    #[test]
    fn hostile_option_payloads_are_errors() {
        // A name longer than the payload.
        let mut b = vec![0, 0, 0x10, 0];
        b.extend_from_slice(b"abc");
        assert!(GoRequest::decode(&b).unwrap_err().0.contains("export name"));
        // A name longer than MAX_STRING.
        let mut b = (5000u32).to_be_bytes().to_vec();
        b.extend(vec![b'a'; 5000]);
        b.extend_from_slice(&[0, 0]);
        assert!(GoRequest::decode(&b).unwrap_err().0.contains("more than"));
        // Too many queries.
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&(100_000u32).to_be_bytes());
        assert!(
            MetaContextRequest::decode(&b)
                .unwrap_err()
                .0
                .contains("queries")
        );
        // Not UTF-8.
        let mut b = vec![0, 0, 0, 2, 0xff, 0xfe, 0, 0];
        assert!(GoRequest::decode(&b).unwrap_err().0.contains("UTF-8"));
        b.clear();
        assert!(GoRequest::decode(&b).is_err());
        // Bad block sizes.
        let bs = Info::BlockSize {
            min: 3,
            preferred: 4096,
            max: 1 << 20,
        };
        assert!(Info::decode(&bs.encode()).is_err());
    }

    #[test]
    fn chunks_round_trip_and_hostile_chunks() {
        for c in [
            ChunkPayload::Hole {
                offset: 4096,
                length: 8192,
            },
            ChunkPayload::BlockStatus {
                context: 1,
                extents: vec![(65536, alloc::HOLE | alloc::ZERO), (4096, 0)],
            },
            ChunkPayload::Error {
                error: errno::EIO,
                message: "bad sector".into(),
                offset: Some(512),
            },
            ChunkPayload::Error {
                error: errno::EINVAL,
                message: String::new(),
                offset: None,
            },
        ] {
            let b = encode_chunk(5, true, &c);
            let ReplyHeader::Chunk(h) = decode_reply_header(&b[..STRUCTURED_REPLY_LEN]).unwrap()
            else {
                panic!("not a chunk")
            };
            assert_eq!(decode_chunk(&h, &b[STRUCTURED_REPLY_LEN..]), Ok(c));
        }
        let h = |t, len| ChunkHeader {
            flags: 0,
            chunk_type: t,
            cookie: 1,
            length: len,
        };
        assert!(decode_chunk(&h(chunk::BLOCK_STATUS, 7), &[0; 7]).is_err());
        assert!(decode_chunk(&h(chunk::BLOCK_STATUS, 12), &[0; 12]).is_err());
        assert!(decode_chunk(&h(chunk::OFFSET_HOLE, 12), &[0; 12]).is_err());
        assert!(decode_chunk(&h(chunk::NONE, 0), &[]).is_err());
        assert!(decode_chunk(&h(77, 0), &[]).is_err());
        let mut e = vec![0, 0, 0, 5, 0, 200];
        e.extend_from_slice(b"short");
        assert!(decode_chunk(&h(chunk::ERROR, e.len() as u32), &e).is_err());
        let big = ChunkHeader {
            flags: 0,
            chunk_type: chunk::OFFSET_DATA,
            cookie: 1,
            length: u32::MAX,
        };
        assert!(decode_reply_header(&big.encode()).is_err());
        assert!(decode_offset(&h(chunk::OFFSET_DATA, 8), &[0; 8]).is_err());
        assert_eq!(
            decode_offset(&h(chunk::OFFSET_DATA, 108), &4096u64.to_be_bytes()),
            Ok((4096, 100))
        );
        assert!(reply_header_rest([1, 2, 3, 4]).is_err());
    }
}
