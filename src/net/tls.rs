//! TLS for the NBD transport: pre-shared keys (TLS-PSK) and X.509 certificates, through the
//! system OpenSSL (cargo feature `tls`, on by default).
//!
//! # PSK
//!
//! [`PskFile`] reads psktool's format (`identity:hexkey` lines), the file qemu-nbd
//! (`tls-creds-psk`), nbdkit (`--tls-psk=FILE`) and libnbd (`tls-psk-file=`) read. Those tools
//! use GnuTLS, which may pick TLS 1.3 or a TLS 1.2 (EC)DHE-PSK suite: both are enabled, with
//! TLS 1.2 as the minimum. Keys are wiped from memory when dropped and appear in no `Debug`
//! output, message or error.
//!
//! # Concurrency
//!
//! An OpenSSL session must not be used by two threads at once, and a blocking read holding its
//! lock would stop every writer. So the session runs over memory buffers, never touching the
//! socket itself:
//!
//! - the read half reads ciphertext from (its own handle on) the socket **without** any lock,
//!   then takes the session lock, feeds the bytes in and drains the plaintext;
//! - the write half takes the socket-write lock, then the session lock just long enough to
//!   encrypt (at most 256 KiB per call) into the outgoing buffer, releases it and writes the
//!   ciphertext to the socket; holding the socket-write lock keeps records in order.
//!
//! Output the session produces while *reading* (a TLS 1.3 KeyUpdate answer, an alert) is sent
//! by the reader only when the socket-write lock is free at that moment (`try_lock`: the reader
//! never waits for a writer); otherwise the writer holding the lock sends it, because a writer
//! looks for such output, under the session lock, before it lets go of the socket-write lock.
//! Lock order is always socket-write, then session; the reader only ever tries the former.
//!
//! Renegotiation is off, so writing never needs to read.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// Longest PSK identity accepted (OpenSSL's limit is 256 bytes with the terminating NUL).
pub const MAX_PSK_IDENTITY_LEN: usize = 255;
/// Longest PSK key accepted, in bytes (OpenSSL's `PSK_MAX_PSK_LEN`).
pub const MAX_PSK_KEY_LEN: usize = 512;

/// Errors of TLS set-up and handshakes. None holds or prints key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A line of a PSK file is malformed.
    #[error("PSK file {} line {line}: {detail}", path.display())]
    PskFileLine {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong (never the key).
        detail: String,
    },
    /// A PSK file cannot be used as a whole (unreadable, empty, no such identity).
    #[error("PSK file {}: {detail}", path.display())]
    PskFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A PSK file could not be read.
    #[error("cannot read PSK file {}", path.display())]
    PskFileRead {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A bad TLS setting: a certificate, key or CA file that cannot be used, a bad PSK.
    #[error("{0}")]
    Config(String),
    /// The TLS handshake failed.
    #[error("TLS handshake with {peer} failed: {detail}")]
    Handshake {
        /// The peer.
        peer: String,
        /// Why.
        detail: String,
    },
    /// TLS was asked for on a transport that is already TLS.
    #[error("the connection to {peer} is already TLS")]
    AlreadyTls {
        /// The peer.
        peer: String,
    },
    /// This build has no TLS (cargo feature `tls` off).
    #[error("built without TLS support (the cargo feature `tls`)")]
    NotBuilt,
}

impl TlsError {
    /// The crate error kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TlsError::PskFileLine { .. } | TlsError::PskFile { .. } | TlsError::Config(_) => {
                ErrorKind::InvalidArgument
            }
            TlsError::AlreadyTls { .. } => ErrorKind::InvalidArgument,
            TlsError::PskFileRead { .. } | TlsError::Handshake { .. } => ErrorKind::Io,
            TlsError::NotBuilt => ErrorKind::Unsupported,
        }
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Error {
        Error::typed(e.kind(), e)
    }
}

pub(crate) fn already_tls(peer: &str) -> Error {
    TlsError::AlreadyTls {
        peer: peer.to_string(),
    }
    .into()
}

/// One identity and its key.
struct PskEntry {
    identity: String,
    key: Zeroizing<Vec<u8>>,
}

/// The keys of a PSK file in psktool's format: one `identity:hexkey` line per identity.
pub struct PskFile {
    path: PathBuf,
    entries: Vec<PskEntry>,
}

impl fmt::Debug for PskFile {
    /// The path and the number of identities; never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskFile")
            .field("path", &self.path)
            .field("identities", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl PskFile {
    /// Reads the file. Errors name the file and the line, never a key.
    pub fn load(path: impl AsRef<Path>) -> Result<PskFile> {
        let path = path.as_ref();
        let bytes =
            Zeroizing::new(std::fs::read(path).map_err(|source| TlsError::PskFileRead {
                path: path.to_path_buf(),
                source,
            })?);
        PskFile::parse(&bytes, path)
    }

    /// Parses the bytes of a PSK file; `path` is for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<PskFile> {
        let line_err = |line: usize, detail: String| TlsError::PskFileLine {
            path: path.to_path_buf(),
            line,
            detail,
        };
        let mut entries: Vec<PskEntry> = Vec::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let Some(colon) = raw.iter().position(|&b| b == b':') else {
                return Err(line_err(
                    line,
                    "no ':' between the identity and the key (want identity:hexkey)".into(),
                )
                .into());
            };
            let (id, hex) = (&raw[..colon], &raw[colon + 1..]);
            let identity = std::str::from_utf8(id)
                .map_err(|_| line_err(line, "the identity is not UTF-8".into()))?;
            if identity.is_empty() {
                return Err(line_err(line, "the identity is empty".into()).into());
            }
            if identity.len() > MAX_PSK_IDENTITY_LEN {
                return Err(line_err(
                    line,
                    format!(
                        "the identity is {} bytes long, more than {MAX_PSK_IDENTITY_LEN}",
                        identity.len()
                    ),
                )
                .into());
            }
            let key = decode_hex(hex).map_err(|detail| line_err(line, detail))?;
            if key.is_empty() {
                return Err(line_err(line, format!("the key of '{identity}' is empty")).into());
            }
            if key.len() > MAX_PSK_KEY_LEN {
                return Err(line_err(
                    line,
                    format!(
                        "the key of '{identity}' is {} bytes long, more than {MAX_PSK_KEY_LEN}",
                        key.len()
                    ),
                )
                .into());
            }
            if entries.iter().any(|e| e.identity == identity) {
                return Err(
                    line_err(line, format!("identity '{identity}' is listed twice")).into(),
                );
            }
            entries.push(PskEntry {
                identity: identity.to_string(),
                key,
            });
        }
        if entries.is_empty() {
            return Err(TlsError::PskFile {
                path: path.to_path_buf(),
                detail: "no identity in it (want identity:hexkey lines)".into(),
            }
            .into());
        }
        Ok(PskFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identities, in file order.
    pub fn identities(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.identity.as_str())
    }

    /// The key of `identity`, if the file has it.
    pub fn key(&self, identity: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.identity == identity)
            .map(|e| e.key.as_slice())
    }

    /// Client credentials from the file: the key of `identity`, or with `None` the first
    /// identity of the file (as libnbd takes the only one of a one-line file).
    pub fn client_config(&self, identity: Option<&str>) -> Result<TlsClientConfig> {
        let entry = match identity {
            Some(id) => self.entries.iter().find(|e| e.identity == id),
            None => self.entries.first(),
        };
        match entry {
            Some(e) => TlsClientConfig::psk(&e.identity, &e.key),
            None => Err(TlsError::PskFile {
                path: self.path.clone(),
                detail: format!("no identity '{}' in it", identity.unwrap_or_default()),
            }
            .into()),
        }
    }
}

/// Decodes hexadecimal digits; the error never shows them.
fn decode_hex(hex: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let hex = hex.trim_ascii();
    if hex.len() % 2 != 0 {
        return Err(format!(
            "the key has an odd number of hexadecimal digits ({})",
            hex.len()
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => {
                return Err(format!(
                    "the key is not hexadecimal (at key character {})",
                    if digit(pair[0]).is_none() {
                        2 * i + 1
                    } else {
                        2 * i + 2
                    }
                ));
            }
        }
    }
    Ok(out)
}

/// How the client authenticates and checks the server.
#[derive(Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum ClientKind {
    Psk {
        identity: String,
        key: Zeroizing<Vec<u8>>,
    },
    X509(X509ClientConfig),
}

/// Client-side TLS settings: a pre-shared key, or X.509 certificates.
#[derive(Clone)]
pub struct TlsClientConfig {
    kind: ClientKind,
}

impl fmt::Debug for TlsClientConfig {
    /// The identity or the certificate files; never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ClientKind::Psk { identity, .. } => f
                .debug_struct("TlsClientConfig::Psk")
                .field("identity", identity)
                .finish_non_exhaustive(),
            ClientKind::X509(x) => f.debug_tuple("TlsClientConfig::X509").field(x).finish(),
        }
    }
}

/// X.509 settings of a TLS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509ClientConfig {
    /// PEM file of the certificate authorities to trust; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// The name (or IP address) the server's certificate must be for; also sent as SNI.
    pub server_name: String,
    /// PEM certificate (chain) to present to a server that asks for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Whether to check the server's certificate (default true). False accepts any server:
    /// only for tests.
    pub verify: bool,
}

impl X509ClientConfig {
    /// Checks the server's certificate against the system's authorities, for `server_name`.
    pub fn new(server_name: impl Into<String>) -> X509ClientConfig {
        X509ClientConfig {
            ca_file: None,
            server_name: server_name.into(),
            cert_file: None,
            key_file: None,
            verify: true,
        }
    }
}

impl TlsClientConfig {
    /// A pre-shared key for `identity` (the key as bytes, not hex).
    pub fn psk(identity: &str, key: &[u8]) -> Result<TlsClientConfig> {
        if identity.is_empty() || identity.len() > MAX_PSK_IDENTITY_LEN || identity.contains('\0') {
            return Err(TlsError::Config(format!(
                "a PSK identity must be 1 to {MAX_PSK_IDENTITY_LEN} bytes without NUL"
            ))
            .into());
        }
        if key.is_empty() || key.len() > MAX_PSK_KEY_LEN {
            return Err(TlsError::Config(format!(
                "a PSK key must be 1 to {MAX_PSK_KEY_LEN} bytes long, not {}",
                key.len()
            ))
            .into());
        }
        Ok(TlsClientConfig {
            kind: ClientKind::Psk {
                identity: identity.to_string(),
                key: Zeroizing::new(key.to_vec()),
            },
        })
    }

    /// X.509: check the server's certificate (see [`X509ClientConfig`]).
    pub fn x509(config: X509ClientConfig) -> TlsClientConfig {
        TlsClientConfig {
            kind: ClientKind::X509(config),
        }
    }
}

/// How the server authenticates.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum ServerKind {
    Psk(std::sync::Arc<PskFile>),
    X509 {
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
    },
}

/// Server-side TLS settings: the PSK file, or a certificate and key.
pub struct TlsServerConfig {
    kind: ServerKind,
}

impl fmt::Debug for TlsServerConfig {
    /// The files; never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ServerKind::Psk(p) => f.debug_tuple("TlsServerConfig::Psk").field(p).finish(),
            ServerKind::X509 {
                cert_file,
                key_file,
                client_ca_file,
            } => f
                .debug_struct("TlsServerConfig::X509")
                .field("cert_file", cert_file)
                .field("key_file", key_file)
                .field("client_ca_file", client_ca_file)
                .finish(),
        }
    }
}

impl TlsServerConfig {
    /// Clients authenticate with a key of this file.
    pub fn psk(file: PskFile) -> TlsServerConfig {
        TlsServerConfig {
            kind: ServerKind::Psk(std::sync::Arc::new(file)),
        }
    }

    /// The server presents `cert_file` (PEM, chain) with `key_file` (PEM); with
    /// `client_ca_file`, clients must present a certificate that authority signed.
    pub fn x509(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        client_ca_file: Option<PathBuf>,
    ) -> TlsServerConfig {
        TlsServerConfig {
            kind: ServerKind::X509 {
                cert_file: cert_file.into(),
                key_file: key_file.into(),
                client_ca_file,
            },
        }
    }
}

/// The socket under a TLS session, as the transport hands it over (this module does not name
/// the transport's types, so the two do not import each other).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) trait RawSocket: std::io::Read + std::io::Write + Send + fmt::Debug {
    /// A second handle on the same socket.
    fn try_clone_box(&self) -> std::io::Result<Box<dyn RawSocket>>;
    /// Shuts the socket down for writing (every handle).
    fn shutdown_write(&self) -> std::io::Result<()>;
    /// The peer, for messages.
    fn peer_description(&self) -> String;
}

#[cfg(feature = "tls")]
pub use imp::{TlsReadHalf, TlsStream, TlsWriteHalf};
#[cfg(feature = "tls")]
pub(crate) use imp::{client_handshake, server_handshake};

#[cfg(not(feature = "tls"))]
pub use none::{TlsReadHalf, TlsStream, TlsWriteHalf};
#[cfg(not(feature = "tls"))]
pub(crate) use none::{client_handshake, server_handshake};

/// Without the `tls` feature: the TLS types exist (so `Transport` is the same type) but none
/// can be made; the handshakes return [`TlsError::NotBuilt`].
#[cfg(not(feature = "tls"))]
mod none {
    use std::io::{self, Read, Write};

    use super::RawSocket;
    use super::{TlsClientConfig, TlsError, TlsServerConfig};
    use crate::error::Result;
    type Socket = Box<dyn RawSocket>;

    /// A TLS connection (none can exist in a build without TLS).
    #[derive(Debug)]
    pub enum TlsStream {}
    /// The reading half of a TLS connection (none can exist in a build without TLS).
    #[derive(Debug)]
    pub enum TlsReadHalf {}
    /// The writing half of a TLS connection (none can exist in a build without TLS).
    #[derive(Debug)]
    pub enum TlsWriteHalf {}

    pub(crate) fn client_handshake(_: Socket, _: &TlsClientConfig) -> Result<TlsStream> {
        Err(TlsError::NotBuilt.into())
    }

    pub(crate) fn server_handshake(_: Socket, _: &TlsServerConfig) -> Result<TlsStream> {
        Err(TlsError::NotBuilt.into())
    }

    impl TlsStream {
        /// The peer, for messages.
        pub fn peer_description(&self) -> String {
            match *self {}
        }
        /// Splits into halves.
        pub fn split(self) -> io::Result<(TlsReadHalf, TlsWriteHalf)> {
            match self {}
        }
    }

    impl TlsWriteHalf {
        /// Sends close_notify and shuts the socket down for writing.
        pub fn shutdown(&mut self) -> io::Result<()> {
            match *self {}
        }
    }

    impl Read for TlsStream {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            match *self {}
        }
    }
    impl Write for TlsStream {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            match *self {}
        }
        fn flush(&mut self) -> io::Result<()> {
            match *self {}
        }
    }
    impl Read for TlsReadHalf {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            match *self {}
        }
    }
    impl Write for TlsWriteHalf {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            match *self {}
        }
        fn flush(&mut self) -> io::Result<()> {
            match *self {}
        }
    }
}

/// The OpenSSL implementation.
#[cfg(feature = "tls")]
mod imp {
    use std::collections::VecDeque;
    use std::fmt;
    use std::io::{self, Read, Write};
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

    use super::RawSocket;
    use super::{ClientKind, ServerKind, TlsClientConfig, TlsError, TlsServerConfig};
    use crate::error::Result;
    type Socket = Box<dyn RawSocket>;
    use openssl::dh::Dh;
    use openssl::error::ErrorStack;
    use openssl::ssl::{
        ErrorCode, Ssl, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslStream,
        SslVerifyMode, SslVersion,
    };
    use openssl::x509::{X509Name, X509VerifyResult};

    /// TLS 1.2 suites for PSK: ephemeral (EC)DH with the key, as GnuTLS offers them
    /// (`+ECDHE-PSK:+DHE-PSK`); no plain PSK (no forward secrecy).
    const PSK_TLS12_CIPHERS: &str = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:\
        ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:\
        DHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA:ECDHE-PSK-AES128-CBC-SHA:\
        DHE-PSK-AES256-CBC-SHA384:DHE-PSK-AES128-CBC-SHA256";
    /// TLS 1.3 suites for PSK: OpenSSL's PSK callbacks take the key as a SHA-256 one, so only
    /// SHA-256 suites can use it.
    const PSK_TLS13_SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
    /// RFC 7919 ffdhe2048, the group of the DHE-PSK suites.
    const FFDHE2048: &[u8] = b"-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";
    /// Most plaintext encrypted under one hold of the session lock.
    const WRITE_CHUNK: usize = 256 * 1024;
    /// Size of one raw read from the socket.
    const READ_CHUNK: usize = 64 * 1024;

    /// The memory "socket" OpenSSL reads ciphertext from and writes ciphertext to.
    #[derive(Default)]
    struct MemIo {
        incoming: VecDeque<u8>,
        outgoing: Vec<u8>,
        /// The socket reached end-of-stream.
        eof: bool,
    }

    impl Read for MemIo {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.incoming.is_empty() {
                if self.eof {
                    return Ok(0);
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.incoming.read(buf)
        }
    }

    impl Write for MemIo {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.outgoing.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What both halves share.
    struct Shared {
        /// The session; never held while waiting on the socket.
        ssl: Mutex<SslStream<MemIo>>,
        /// The socket's write side; taken before `ssl` (see the module docs).
        sock: Mutex<Socket>,
        peer: String,
    }

    fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
        m.lock()
            .map_err(|_| io::Error::other("TLS session unusable: a thread panicked while using it"))
    }

    /// A TLS connection, used by one thread at a time until [`TlsStream::split`].
    pub struct TlsStream {
        read: TlsReadHalf,
        write: TlsWriteHalf,
    }

    /// The reading half of a TLS connection (see the module docs).
    pub struct TlsReadHalf {
        shared: Arc<Shared>,
        /// Our own handle on the socket, read without any lock.
        sock: Socket,
        buf: Box<[u8]>,
    }

    /// The writing half of a TLS connection (see the module docs).
    pub struct TlsWriteHalf {
        shared: Arc<Shared>,
    }

    impl fmt::Debug for TlsStream {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "TlsStream({})", self.read.shared.peer)
        }
    }
    impl fmt::Debug for TlsReadHalf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "TlsReadHalf({})", self.shared.peer)
        }
    }
    impl fmt::Debug for TlsWriteHalf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "TlsWriteHalf({})", self.shared.peer)
        }
    }

    impl TlsStream {
        /// The peer, for messages.
        pub fn peer_description(&self) -> String {
            self.read.shared.peer.clone()
        }

        /// Splits into halves that two threads use at the same time.
        pub fn split(self) -> io::Result<(TlsReadHalf, TlsWriteHalf)> {
            Ok((self.read, self.write))
        }

        /// The negotiated protocol version ("TLSv1.3", "TLSv1.2").
        pub fn version(&self) -> String {
            match self.read.shared.ssl.lock() {
                Ok(s) => s.ssl().version_str().to_string(),
                Err(_) => "unknown".into(),
            }
        }

        /// The negotiated cipher suite, by OpenSSL's name.
        pub fn cipher(&self) -> String {
            match self.read.shared.ssl.lock() {
                Ok(s) => s
                    .ssl()
                    .current_cipher()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default(),
                Err(_) => "unknown".into(),
            }
        }
    }

    impl Read for TlsStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.read.read(buf)
        }
    }

    impl Write for TlsStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.write.flush()
        }
    }

    /// Sends whatever the session has queued, then lets go of the socket-write lock. The
    /// check for queued output and the release happen under the session lock, so output a
    /// reader queues afterwards finds the socket-write lock free (and the reader sends it).
    fn send_pending_and_release(
        shared: &Shared,
        mut sock: MutexGuard<'_, Socket>,
    ) -> io::Result<()> {
        loop {
            let mut ssl = lock(&shared.ssl)?;
            let out = std::mem::take(&mut ssl.get_mut().outgoing);
            if out.is_empty() {
                drop(sock);
                drop(ssl);
                return Ok(());
            }
            drop(ssl);
            sock.write_all(&out)?;
        }
    }

    /// The session's view of an error, as an I/O error (no key material: OpenSSL's reasons).
    fn ssl_io_error(e: openssl::ssl::Error, what: &str) -> io::Error {
        match e.into_io_error() {
            Ok(io) => io,
            Err(e) => io::Error::other(format!("TLS {what} failed: {}", describe(&e))),
        }
    }

    /// OpenSSL's reasons for an error, without file names and codes.
    fn describe(e: &openssl::ssl::Error) -> String {
        if let Some(stack) = e.ssl_error() {
            let reasons = describe_stack(stack);
            if !reasons.is_empty() {
                return reasons;
            }
        }
        if let Some(io) = e.io_error() {
            return io.to_string();
        }
        match e.code() {
            ErrorCode::SYSCALL => "the peer closed the connection".into(),
            ErrorCode::ZERO_RETURN => "the peer closed the TLS session".into(),
            c => format!("OpenSSL error code {}", c.as_raw()),
        }
    }

    fn describe_stack(stack: &ErrorStack) -> String {
        let mut reasons: Vec<String> = Vec::new();
        for err in stack.errors() {
            let mut r = err.reason().unwrap_or("unknown reason").to_string();
            if let Some(data) = err.data() {
                r = format!("{r} ({data})");
            }
            if !reasons.contains(&r) {
                reasons.push(r);
            }
        }
        reasons.join("; ")
    }

    impl Read for TlsReadHalf {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            loop {
                {
                    let mut ssl = lock(&self.shared.ssl)?;
                    let mut got = 0;
                    let mut end = None;
                    // Drain as much plaintext as is ready, under one hold of the lock.
                    while got < buf.len() {
                        match ssl.ssl_read(&mut buf[got..]) {
                            Ok(n) => got += n,
                            Err(e) => {
                                end = Some(e);
                                break;
                            }
                        }
                    }
                    let eof = ssl.get_ref().eof;
                    let pending = !ssl.get_ref().outgoing.is_empty();
                    if pending {
                        self.send_queued(ssl)?;
                    } else {
                        drop(ssl);
                    }
                    if got > 0 {
                        return Ok(got);
                    }
                    if let Some(e) = end {
                        match e.code() {
                            ErrorCode::ZERO_RETURN => return Ok(0),
                            ErrorCode::WANT_READ if !eof => {}
                            _ if eof => {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    format!(
                                        "{} closed the connection without ending the TLS session",
                                        self.shared.peer
                                    ),
                                ));
                            }
                            _ => return Err(ssl_io_error(e, "read")),
                        }
                    }
                }
                // Wait for ciphertext holding no lock: writers go on meanwhile.
                let n = loop {
                    match self.sock.read(&mut self.buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                let mut ssl = lock(&self.shared.ssl)?;
                let io = ssl.get_mut();
                if n == 0 {
                    io.eof = true;
                } else {
                    io.incoming.extend(&self.buf[..n]);
                }
            }
        }
    }

    impl TlsReadHalf {
        /// Sends output the session queued while reading, if the socket-write lock is free now;
        /// else a writer holds it and sends it before letting go (see the module docs).
        /// Lets go of the session lock.
        fn send_queued(&self, mut ssl: MutexGuard<'_, SslStream<MemIo>>) -> io::Result<()> {
            let sock = match self.shared.sock.try_lock() {
                Ok(g) => g,
                Err(TryLockError::WouldBlock) => return Ok(()),
                Err(TryLockError::Poisoned(_)) => {
                    return Err(io::Error::other(
                        "TLS session unusable: a thread panicked while writing",
                    ));
                }
            };
            let out = std::mem::take(&mut ssl.get_mut().outgoing);
            drop(ssl);
            let mut sock = sock;
            sock.write_all(&out)?;
            send_pending_and_release(&self.shared, sock)
        }
    }

    impl Write for TlsWriteHalf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            let chunk = &buf[..buf.len().min(WRITE_CHUNK)];
            let mut sock = lock(&self.shared.sock)?;
            let out = {
                let mut ssl = lock(&self.shared.ssl)?;
                let mut done = 0;
                while done < chunk.len() {
                    match ssl.ssl_write(&chunk[done..]) {
                        Ok(n) => done += n,
                        Err(e) => return Err(ssl_io_error(e, "write")),
                    }
                }
                std::mem::take(&mut ssl.get_mut().outgoing)
            };
            sock.write_all(&out)?;
            send_pending_and_release(&self.shared, sock)?;
            Ok(chunk.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            // Every write sent its ciphertext before returning.
            Ok(())
        }
    }

    impl TlsWriteHalf {
        /// Sends close_notify and shuts the socket down for writing; the read half goes on
        /// until the peer ends its side.
        pub fn shutdown(&mut self) -> io::Result<()> {
            let mut sock = lock(&self.shared.sock)?;
            let out = {
                let mut ssl = lock(&self.shared.ssl)?;
                // An error means the session is already broken: the socket is shut down anyway.
                let _ = ssl.shutdown();
                std::mem::take(&mut ssl.get_mut().outgoing)
            };
            let sent = sock.write_all(&out);
            let shut = sock.shutdown_write();
            sent.and(shut)
        }
    }

    /// Runs the handshake of `stream` over `sock` (the plain socket already in use).
    fn handshake(
        mut sock: Socket,
        mut stream: SslStream<MemIo>,
        explain: impl Fn(&SslStream<MemIo>, String) -> String,
    ) -> Result<TlsStream> {
        let peer = sock.peer_description();
        let fail = |detail: String| TlsError::Handshake {
            peer: peer.clone(),
            detail,
        };
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let r = stream.do_handshake();
            // Send what the session produced, alerts of a failure too.
            let out = std::mem::take(&mut stream.get_mut().outgoing);
            if !out.is_empty() {
                if let Err(e) = sock.write_all(&out) {
                    if r.is_ok() {
                        return Err(fail(format!("sending: {e}")).into());
                    }
                }
            }
            match r {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ && !stream.get_ref().eof => {
                    let n = loop {
                        match sock.read(&mut buf) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            r => break r,
                        }
                    }
                    .map_err(|e| fail(format!("receiving: {e}")))?;
                    if n == 0 {
                        stream.get_mut().eof = true;
                    } else {
                        stream.get_mut().incoming.extend(&buf[..n]);
                    }
                }
                Err(e) => {
                    let detail = if stream.get_ref().eof && e.ssl_error().is_none() {
                        "the peer closed the connection during the handshake".to_string()
                    } else {
                        describe(&e)
                    };
                    return Err(fail(explain(&stream, detail)).into());
                }
            }
        }
        let wsock = sock
            .try_clone_box()
            .map_err(|e| fail(format!("cloning the socket: {e}")))?;
        let shared = Arc::new(Shared {
            ssl: Mutex::new(stream),
            sock: Mutex::new(wsock),
            peer,
        });
        Ok(TlsStream {
            read: TlsReadHalf {
                shared: Arc::clone(&shared),
                sock,
                buf: buf.into_boxed_slice(),
            },
            write: TlsWriteHalf { shared },
        })
    }

    fn config_error(what: String) -> impl FnOnce(ErrorStack) -> crate::error::Error {
        move |e| TlsError::Config(format!("{what}: {}", describe_stack(&e))).into()
    }

    fn common(b: &mut SslContextBuilder) -> Result<()> {
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(config_error("cannot set the minimum TLS version".into()))?;
        b.set_options(SslOptions::NO_RENEGOTIATION);
        Ok(())
    }

    fn psk_suites(b: &mut SslContextBuilder) -> Result<()> {
        b.set_cipher_list(PSK_TLS12_CIPHERS)
            .map_err(config_error("cannot set the TLS 1.2 PSK suites".into()))?;
        b.set_ciphersuites(PSK_TLS13_SUITES)
            .map_err(config_error("cannot set the TLS 1.3 PSK suites".into()))
    }

    fn file_check(path: &std::path::Path, what: &str) -> Result<()> {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| TlsError::Config(format!("{what} {}: {e}", path.display())).into())
    }

    /// The client side of the handshake on `sock`.
    pub(crate) fn client_handshake(sock: Socket, config: &TlsClientConfig) -> Result<TlsStream> {
        let mut b = SslContextBuilder::new(SslMethod::tls_client())
            .map_err(config_error("cannot create a TLS context".into()))?;
        common(&mut b)?;
        let mut psk = false;
        match &config.kind {
            ClientKind::Psk { identity, key } => {
                psk = true;
                psk_suites(&mut b)?;
                b.set_verify(SslVerifyMode::NONE);
                let identity = identity.clone();
                let key = key.clone();
                b.set_psk_client_callback(move |_, _hint, id_buf, psk_buf| {
                    let id = identity.as_bytes();
                    if id.len() >= id_buf.len() || key.len() > psk_buf.len() {
                        return Ok(0);
                    }
                    id_buf[..id.len()].copy_from_slice(id);
                    id_buf[id.len()] = 0;
                    psk_buf[..key.len()].copy_from_slice(&key);
                    Ok(key.len())
                });
            }
            ClientKind::X509(x) => {
                if x.verify {
                    b.set_verify(SslVerifyMode::PEER);
                    match &x.ca_file {
                        Some(ca) => {
                            file_check(ca, "cannot read the CA file")?;
                            b.set_ca_file(ca).map_err(config_error(format!(
                                "cannot use the CA file {}",
                                ca.display()
                            )))?;
                        }
                        None => b
                            .set_default_verify_paths()
                            .map_err(config_error("cannot load the system's CAs".into()))?,
                    }
                } else {
                    b.set_verify(SslVerifyMode::NONE);
                }
                match (&x.cert_file, &x.key_file) {
                    (Some(cert), Some(key)) => {
                        file_check(cert, "cannot read the certificate file")?;
                        file_check(key, "cannot read the key file")?;
                        b.set_certificate_chain_file(cert)
                            .map_err(config_error(format!(
                                "cannot use the certificate file {}",
                                cert.display()
                            )))?;
                        b.set_private_key_file(key, SslFiletype::PEM)
                            .map_err(config_error(format!(
                                "cannot use the key file {}",
                                key.display()
                            )))?;
                        b.check_private_key().map_err(config_error(format!(
                            "the key file {} does not match the certificate {}",
                            key.display(),
                            cert.display()
                        )))?;
                    }
                    (None, None) => {}
                    _ => {
                        return Err(TlsError::Config(
                            "a client certificate needs both the certificate and the key file"
                                .into(),
                        )
                        .into());
                    }
                }
            }
        }
        let ctx = b.build();
        let mut ssl = Ssl::new(&ctx).map_err(config_error("cannot create a TLS session".into()))?;
        if let ClientKind::X509(x) = &config.kind {
            if let Ok(ip) = x.server_name.parse::<IpAddr>() {
                if x.verify {
                    ssl.param_mut()
                        .set_ip(ip)
                        .map_err(config_error("cannot set the server's address".into()))?;
                }
            } else {
                ssl.set_hostname(&x.server_name)
                    .map_err(config_error("cannot set the server name".into()))?;
                if x.verify {
                    ssl.param_mut()
                        .set_host(&x.server_name)
                        .map_err(config_error("cannot set the server name".into()))?;
                }
            }
        }
        ssl.set_connect_state();
        let stream = SslStream::new(ssl, MemIo::default())
            .map_err(config_error("cannot create a TLS session".into()))?;
        handshake(sock, stream, |s, detail| {
            let v = s.ssl().verify_result();
            if v != X509VerifyResult::OK {
                format!("certificate verify failed: {}", v.error_string())
            } else if psk && detail.contains("alert") {
                format!("{detail} (is the PSK identity or key wrong?)")
            } else {
                detail
            }
        })
    }

    /// The server side of the handshake on `sock`.
    pub(crate) fn server_handshake(sock: Socket, config: &TlsServerConfig) -> Result<TlsStream> {
        let mut b = SslContextBuilder::new(SslMethod::tls_server())
            .map_err(config_error("cannot create a TLS context".into()))?;
        common(&mut b)?;
        // No session tickets: clients reconnect rarely, and tickets are post-handshake traffic.
        b.set_num_tickets(0)
            .map_err(config_error("cannot turn session tickets off".into()))?;
        let unknown: Arc<Mutex<Option<String>>> = Arc::default();
        match &config.kind {
            ServerKind::Psk(file) => {
                psk_suites(&mut b)?;
                let dh = Dh::params_from_pem(FFDHE2048)
                    .map_err(config_error("cannot load the DH group".into()))?;
                b.set_tmp_dh(&dh)
                    .map_err(config_error("cannot set the DH group".into()))?;
                let file = Arc::clone(file);
                let unknown = Arc::clone(&unknown);
                b.set_psk_server_callback(move |_, identity, psk_buf| {
                    let id = String::from_utf8_lossy(identity.unwrap_or_default()).into_owned();
                    match file.key(&id) {
                        Some(key) if key.len() <= psk_buf.len() => {
                            psk_buf[..key.len()].copy_from_slice(key);
                            Ok(key.len())
                        }
                        _ => {
                            if let Ok(mut u) = unknown.lock() {
                                *u = Some(id);
                            }
                            Ok(0)
                        }
                    }
                });
            }
            ServerKind::X509 {
                cert_file,
                key_file,
                client_ca_file,
            } => {
                file_check(cert_file, "cannot read the certificate file")?;
                file_check(key_file, "cannot read the key file")?;
                b.set_certificate_chain_file(cert_file)
                    .map_err(config_error(format!(
                        "cannot use the certificate file {}",
                        cert_file.display()
                    )))?;
                b.set_private_key_file(key_file, SslFiletype::PEM)
                    .map_err(config_error(format!(
                        "cannot use the key file {}",
                        key_file.display()
                    )))?;
                b.check_private_key().map_err(config_error(format!(
                    "the key file {} does not match the certificate {}",
                    key_file.display(),
                    cert_file.display()
                )))?;
                if let Some(ca) = client_ca_file {
                    file_check(ca, "cannot read the client CA file")?;
                    b.set_ca_file(ca).map_err(config_error(format!(
                        "cannot use the client CA file {}",
                        ca.display()
                    )))?;
                    let names = X509Name::load_client_ca_file(ca).map_err(config_error(
                        format!("cannot read the client CA file {}", ca.display()),
                    ))?;
                    b.set_client_ca_list(names);
                    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
                }
            }
        }
        let ctx = b.build();
        let mut ssl = Ssl::new(&ctx).map_err(config_error("cannot create a TLS session".into()))?;
        ssl.set_accept_state();
        let stream = SslStream::new(ssl, MemIo::default())
            .map_err(config_error("cannot create a TLS session".into()))?;
        handshake(sock, stream, |s, detail| {
            if let Some(id) = unknown.lock().ok().and_then(|u| u.clone()) {
                return format!("unknown PSK identity '{id}'");
            }
            let v = s.ssl().verify_result();
            if v != X509VerifyResult::OK {
                format!("client certificate verify failed: {}", v.error_string())
            } else {
                detail
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn psk_file_reads_psktool_lines_and_hides_keys() {
        let text = format!("alice:{KEY}\r\n\nbob:{}\n", KEY.to_uppercase());
        let f = PskFile::parse(text.as_bytes(), Path::new("keys.psk")).unwrap();
        assert_eq!(f.identities().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(f.key("alice").unwrap()[..2], [0x00, 0x11]);
        assert_eq!(f.key("bob"), f.key("alice"));
        assert!(f.key("carol").is_none());
        let c = f.client_config(None).unwrap();
        for shown in [format!("{f:?}"), format!("{c:?}")] {
            assert!(
                !shown.contains("2233") && !shown.contains("34, 51"),
                "{shown}"
            );
        }
        let e = f.client_config(Some("carol")).unwrap_err();
        assert!(e.to_string().contains("no identity 'carol'"), "{e}");
    }

    #[test]
    fn psk_file_errors_name_the_line_never_the_key() {
        for (text, line, what) in [
            (format!("alice:{KEY}\nbob{KEY}\n"), 2, "no ':'"),
            (format!("alice:{}\n", &KEY[1..]), 1, "odd number"),
            (
                format!("alice:{}zz\n", &KEY[2..])[..].to_string(),
                1,
                "not hexadecimal",
            ),
            (format!(":{KEY}\n"), 1, "identity is empty"),
            ("alice:\n".to_string(), 1, "key of 'alice' is empty"),
            (format!("a:{KEY}\n\na:{KEY}\n"), 3, "listed twice"),
        ] {
            let e = PskFile::parse(text.as_bytes(), Path::new("k.psk")).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("k.psk line {line}")) && msg.contains(what),
                "{msg}"
            );
            assert!(!msg.contains(&KEY[2..10]), "{msg}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        let e = PskFile::parse(b"\n\n", Path::new("k.psk")).unwrap_err();
        assert!(e.to_string().contains("no identity"), "{e}");
    }
}
