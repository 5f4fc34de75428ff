//! Sockets and the transport NBD runs over: TCP or a Unix socket, plain or TLS.
//!
//! A [`Transport`] is used in two phases. During the NBD handshake (option haggling) one thread
//! reads and writes it in turn through [`Read`] and [`Write`]; the STARTTLS option upgrades it in
//! place ([`Transport::start_tls_client`], [`Transport::start_tls_server`]) on the socket already
//! in use. Then [`Transport::split`] gives a [`ReadHalf`] and a [`WriteHalf`] that two threads
//! use at the same time: one blocks reading replies (or requests) while others send, which is
//! how many requests stay in flight on one connection. Over TLS the halves share one OpenSSL
//! session that is run over memory buffers, so that a reader waiting for bytes never holds the
//! lock a writer needs (see [`crate::net::tls`]).
//!
//! Nothing here speaks the NBD protocol.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::Result;
use crate::net::tls::{
    self, TlsClientConfig, TlsReadHalf, TlsServerConfig, TlsStream, TlsWriteHalf,
};

/// Where an NBD server listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP host (name or IP address) and port.
    Tcp {
        /// Host name or IP address (an IPv6 address without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    /// `host:port` (`[v6]:port` for an IPv6 address) or `unix:PATH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The connected stream of a [`Socket`].
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connected, blocking TCP or Unix stream socket.
#[derive(Debug)]
pub struct Socket {
    stream: Stream,
    /// What [`Socket::peer_description`] returns: the peer's address (TCP) or the socket's path.
    peer: String,
}

impl Socket {
    /// Connects to `address`. For TCP the host is resolved and each of its addresses is tried in
    /// turn, each with `timeout`; TCP_NODELAY is set (NBD sends small requests and waits).
    pub fn connect(address: &Address, timeout: Duration) -> io::Result<Socket> {
        match address {
            Address::Tcp { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot resolve host '{host}': {e}"))
                    })?
                    .collect();
                let mut last = None;
                for a in &addrs {
                    match TcpStream::connect_timeout(a, timeout) {
                        Ok(s) => return Socket::from_tcp(s),
                        Err(e) => last = Some((a, e)),
                    }
                }
                Err(match last {
                    Some((a, e)) => {
                        io::Error::new(e.kind(), format!("cannot connect to {address} ({a}): {e}"))
                    }
                    None => io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("host '{host}' has no address"),
                    ),
                })
            }
            Address::Unix(path) => match UnixStream::connect(path) {
                Ok(s) => Ok(Socket {
                    stream: Stream::Unix(s),
                    peer: format!("unix:{}", path.display()),
                }),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot connect to {address}: {e}"),
                )),
            },
        }
    }

    /// Wraps a connected TCP stream (sets TCP_NODELAY and blocking mode).
    pub fn from_tcp(stream: TcpStream) -> io::Result<Socket> {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(false)?;
        let peer = match stream.peer_addr() {
            Ok(a) => a.to_string(),
            Err(_) => "unknown TCP peer".to_string(),
        };
        Ok(Socket {
            stream: Stream::Tcp(stream),
            peer,
        })
    }

    /// Wraps a connected Unix stream (sets blocking mode).
    pub fn from_unix(stream: UnixStream) -> io::Result<Socket> {
        stream.set_nonblocking(false)?;
        let peer = stream
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .or_else(|| {
                stream
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            })
            .unwrap_or_else(|| "unix socket peer".to_string());
        Ok(Socket {
            stream: Stream::Unix(stream),
            peer,
        })
    }

    /// The peer, for messages: its `address:port` (TCP) or `unix:PATH`.
    pub fn peer_description(&self) -> String {
        self.peer.clone()
    }

    /// Whether the peer is on this machine: a loopback TCP address or a Unix socket.
    pub fn is_loopback_or_unix(&self) -> bool {
        match &self.stream {
            Stream::Unix(_) => true,
            Stream::Tcp(s) => s.peer_addr().is_ok_and(|a| match a {
                SocketAddr::V4(a) => a.ip().is_loopback(),
                SocketAddr::V6(a) => {
                    a.ip().is_loopback()
                        || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            }),
        }
    }

    /// A second handle on the same socket (for a reader and a writer thread).
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(Socket {
            stream: match &self.stream {
                Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
                Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            },
            peer: self.peer.clone(),
        })
    }

    /// Shuts down reading, writing or both (`shutdown(2)`), for every handle on the socket.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let r = match &self.stream {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
        match r {
            // The peer already closed: nothing is left to shut down.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        }
    }

    /// Sets a read timeout (`None`: block for ever, the default).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }
}

impl tls::RawSocket for Socket {
    fn try_clone_box(&self) -> io::Result<Box<dyn tls::RawSocket>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn peer_description(&self) -> String {
        self.peer.clone()
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// The bound socket of a [`Listener`].
#[derive(Debug)]
enum Bound {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
        /// Device and inode of the socket file we created, so that dropping the listener
        /// removes that file and never one that replaced it.
        id: (u64, u64),
    },
}

impl Bound {
    fn shutdown_fd(&self) -> io::Result<()> {
        use rustix::net::{Shutdown as How, shutdown};
        let r = match self {
            Bound::Tcp(l) => shutdown(l, How::Both),
            Bound::Unix { listener, .. } => shutdown(listener, How::Both),
        };
        r.map_err(io::Error::from)
    }
}

/// A listening TCP or Unix socket.
#[derive(Debug)]
pub struct Listener {
    bound: Arc<Bound>,
    stopped: Arc<AtomicBool>,
    address: Address,
}

/// Stops a [`Listener`] from another thread (a signal handler's watcher, say): a blocked or
/// later [`Listener::accept`] returns an error of kind [`io::ErrorKind::ConnectionAborted`].
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    bound: Arc<Bound>,
    stopped: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Stops the listener: `shutdown(2)` on the listening socket wakes a blocked `accept`.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // An error here means the socket is already unusable, which is what we want.
        let _ = self.bound.shutdown_fd();
    }
}

impl Listener {
    /// Binds and listens on `address`. TCP port 0 takes a free port ([`Listener::local_address`]
    /// tells which). For a Unix socket, an existing socket file is removed only when nothing
    /// listens on it (a connection attempt is refused); an existing file that is not a socket
    /// is an error and stays.
    pub fn bind(address: &Address) -> io::Result<Listener> {
        let ctx = |e: io::Error, what: &str| -> io::Error {
            io::Error::new(e.kind(), format!("cannot {what} {address}: {e}"))
        };
        let (bound, address) = match address {
            Address::Tcp { host, port } => {
                let l =
                    TcpListener::bind((host.as_str(), *port)).map_err(|e| ctx(e, "listen on"))?;
                let port = l.local_addr().map_err(|e| ctx(e, "listen on"))?.port();
                (
                    Bound::Tcp(l),
                    Address::Tcp {
                        host: host.clone(),
                        port,
                    },
                )
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path).map_err(|e| ctx(e, "listen on"))?;
                let m = std::fs::symlink_metadata(path).map_err(|e| ctx(e, "listen on"))?;
                (
                    Bound::Unix {
                        listener,
                        path: path.clone(),
                        id: (m.dev(), m.ino()),
                    },
                    address.clone(),
                )
            }
        };
        Ok(Listener {
            bound: Arc::new(bound),
            stopped: Arc::new(AtomicBool::new(false)),
            address,
        })
    }

    /// The address it listens on, with the port chosen when port 0 was asked for.
    pub fn local_address(&self) -> &Address {
        &self.address
    }

    /// Waits for the next connection. After [`ShutdownHandle::shutdown`] it returns an error of
    /// kind [`io::ErrorKind::ConnectionAborted`].
    pub fn accept(&self) -> io::Result<Socket> {
        let stopped = || {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the listener on {} was shut down", self.address),
            )
        };
        if self.stopped.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        let r = match &*self.bound {
            Bound::Tcp(l) => l.accept().and_then(|(s, _)| Socket::from_tcp(s)),
            Bound::Unix { listener, path, .. } => listener.accept().and_then(|(s, _)| {
                let mut s = Socket::from_unix(s)?;
                s.peer = format!("unix:{}", path.display());
                Ok(s)
            }),
        };
        if self.stopped.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        r
    }

    /// A handle that stops this listener from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            bound: Arc::clone(&self.bound),
            stopped: Arc::clone(&self.stopped),
        }
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

impl Drop for Bound {
    /// Removes the socket file of a Unix listener, if it is still the one we created.
    fn drop(&mut self) {
        if let Bound::Unix { path, id, .. } = self {
            if let Ok(m) = std::fs::symlink_metadata(&*path) {
                if (m.dev(), m.ino()) == *id {
                    let _ = std::fs::remove_file(&*path);
                }
            }
        }
    }
}

/// Removes a Unix socket file at `path` that nothing listens on; refuses any other file.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot check {}: {e}", path.display()),
            ));
        }
    };
    if !m.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: not replacing it",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a server already listens on {}", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot remove the stale socket {}: {e}", path.display()),
                )
            }),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot check the socket {}: {e}", path.display()),
        )),
    }
}

/// A connection, plain or TLS. See the module documentation for its two phases.
#[derive(Debug)]
pub enum Transport {
    /// No encryption.
    Plain(Socket),
    /// TLS over the socket.
    Tls(TlsStream),
}

impl Transport {
    /// Upgrades a plain transport to TLS as the client (NBD STARTTLS): the handshake runs on the
    /// socket already in use. Fails for a transport that is already TLS. On failure the
    /// connection is gone (the error says why the handshake failed, never a key).
    pub fn start_tls_client(self, config: &TlsClientConfig) -> Result<Transport> {
        match self {
            Transport::Plain(s) => tls::client_handshake(Box::new(s), config).map(Transport::Tls),
            Transport::Tls(t) => Err(tls::already_tls(&t.peer_description())),
        }
    }

    /// Upgrades a plain transport to TLS as the server (NBD STARTTLS), as
    /// [`Transport::start_tls_client`] does for the client.
    pub fn start_tls_server(self, config: &TlsServerConfig) -> Result<Transport> {
        match self {
            Transport::Plain(s) => tls::server_handshake(Box::new(s), config).map(Transport::Tls),
            Transport::Tls(t) => Err(tls::already_tls(&t.peer_description())),
        }
    }

    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The peer, for messages.
    pub fn peer_description(&self) -> String {
        match self {
            Transport::Plain(s) => s.peer_description(),
            Transport::Tls(t) => t.peer_description(),
        }
    }

    /// Splits into halves that two threads use at the same time.
    pub fn split(self) -> io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Transport::Plain(s) => {
                let w = s.try_clone()?;
                Ok((ReadHalf::Plain(s), WriteHalf::Plain(w)))
            }
            Transport::Tls(t) => {
                let (r, w) = t.split()?;
                Ok((ReadHalf::Tls(r), WriteHalf::Tls(w)))
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// The reading half of a split [`Transport`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Plain socket.
    Plain(Socket),
    /// TLS.
    Tls(TlsReadHalf),
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Plain(s) => s.read(buf),
            ReadHalf::Tls(t) => t.read(buf),
        }
    }
}

/// The writing half of a split [`Transport`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Plain socket.
    Plain(Socket),
    /// TLS.
    Tls(TlsWriteHalf),
}

impl WriteHalf {
    /// Ends the sending direction: TLS sends close_notify first; then the socket is shut down
    /// for writing, so the peer reads end-of-stream. The read half keeps working.
    pub fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.shutdown(Shutdown::Write),
            WriteHalf::Tls(t) => t.shutdown(),
        }
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(s) => s.write(buf),
            WriteHalf::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.flush(),
            WriteHalf::Tls(t) => t.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn loopback() -> Address {
        Address::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        }
    }

    /// A connected (client, server) pair over `address`.
    fn pair(address: &Address) -> (Socket, Socket) {
        let l = Listener::bind(address).expect("bind");
        let at = l.local_address().clone();
        let t = thread::spawn(move || Socket::connect(&at, TIMEOUT).expect("connect"));
        let server = l.accept().expect("accept");
        (t.join().expect("client thread"), server)
    }

    /// Deterministic test bytes: a counter mixed with `seed`.
    pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn address_display_never_hides_the_port_and_brackets_v6() {
        let a = Address::Tcp {
            host: "::1".into(),
            port: 10809,
        };
        assert_eq!(a.to_string(), "[::1]:10809");
        assert_eq!(
            Address::Unix("/run/nbd.sock".into()).to_string(),
            "unix:/run/nbd.sock"
        );
    }

    #[test]
    fn tcp_pair_talks_both_ways_and_is_loopback() {
        let (mut c, mut s) = pair(&loopback());
        assert!(c.is_loopback_or_unix() && s.is_loopback_or_unix());
        assert!(c.peer_description().starts_with("127.0.0.1:"));
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong");
    }

    #[test]
    fn unix_socket_pair_and_stale_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        let address = Address::Unix(path.clone());
        {
            let (mut c, mut s) = pair(&address);
            assert!(c.is_loopback_or_unix());
            assert_eq!(c.peer_description(), format!("unix:{}", path.display()));
            c.write_all(b"hello").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"hello");
        }
        // The listener removed its socket file when dropped.
        assert!(!path.exists());
        // A stale socket file (nothing listens) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = Listener::bind(&address).expect("stale socket replaced");
        // A live one is not.
        let e = Listener::bind(&address).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(l);
        // Nor is a file that is not a socket.
        std::fs::write(&path, b"precious").unwrap();
        let e = Listener::bind(&address).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn shutdown_handle_stops_a_blocked_accept() {
        for address in [loopback(), {
            let dir = tempfile::tempdir().unwrap().keep();
            Address::Unix(dir.join("s.sock"))
        }] {
            let l = Listener::bind(&address).unwrap();
            let h = l.shutdown_handle();
            let t = thread::spawn(move || l.accept().map(|_| ()));
            // Whether the thread is already blocked in accept or not, it must return.
            thread::sleep(Duration::from_millis(50));
            h.shutdown();
            let e = t.join().unwrap().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
            if let Address::Unix(p) = &address {
                let _ = std::fs::remove_dir_all(p.parent().unwrap());
            }
        }
    }

    #[test]
    fn connect_failure_names_the_address() {
        // Bind then drop to get a port nothing listens on.
        let port = {
            let l = Listener::bind(&loopback()).unwrap();
            match l.local_address() {
                Address::Tcp { port, .. } => *port,
                _ => unreachable!(),
            }
        };
        let a = Address::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let e = Socket::connect(&a, TIMEOUT).unwrap_err();
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }

    /// Both directions at once on split plain halves: each side sends 16 MiB while reading
    /// the other's 16 MiB. Would deadlock if a half blocked the other.
    #[test]
    fn plain_split_halves_carry_both_directions_at_once() {
        let (c, s) = pair(&loopback());
        let (c, s) = (Transport::Plain(c), Transport::Plain(s));
        exchange(c, s, 16 << 20);
    }

    /// Runs a simultaneous exchange of `len` bytes each way between two transports.
    pub(crate) fn exchange(a: Transport, b: Transport, len: usize) {
        let run = |t: Transport, seed: u64, peer_seed: u64| {
            thread::spawn(move || {
                let (mut r, mut w) = t.split().expect("split");
                let writer = thread::spawn(move || {
                    let data = pattern(seed, len);
                    for chunk in data.chunks(1 << 20) {
                        w.write_all(chunk).expect("write");
                    }
                    w.shutdown().expect("shutdown");
                });
                let mut got = Vec::with_capacity(len);
                r.read_to_end(&mut got).expect("read");
                writer.join().expect("writer thread");
                assert!(got == pattern(peer_seed, len), "received bytes differ");
            })
        };
        let ta = run(a, 1, 2);
        let tb = run(b, 2, 1);
        ta.join().expect("side a");
        tb.join().expect("side b");
    }
}
