//! `diskconv serve`: exports images over NBD (see `diskconv::net::server`).

use std::io::{self, ErrorKind as IoKind};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use diskconv::error::ResultExt;
use diskconv::files::ImageLock;
use diskconv::net::server::{
    ConnectionReport, Export, Server, ServerOptions, ServerStream, ServerTls, TlsUpgrade,
};
use diskconv::net::tls::{PskFile, TlsServerConfig};
use diskconv::net::transport::{Socket, Transport};
use diskconv::util::human_bytes;
use diskconv::{Error, ImageReader, ReferencePolicy, Result};

use crate::args::{Input, RefArgs};

/// Default TCP address: loopback, the port IANA assigned to NBD.
const DEFAULT_LISTEN: &str = "127.0.0.1:10809";
/// Most clients served at once; more are turned away (their connection is closed).
const MAX_CONNECTIONS: usize = 64;
/// How often a blocked read or accept checks whether the server is stopping.
const POLL: Duration = Duration::from_millis(200);
/// A client that takes no reply bytes for this long is dropped (its worker would otherwise
/// wait on it for ever, and so would the server when it stops).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// `diskconv serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP address to listen on (default 127.0.0.1:10809; port 0 picks a free port, printed at
    /// start). An address other than loopback needs TLS or --no-tls.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "socket")]
    pub listen: Option<String>,
    /// Listen on this Unix socket instead of TCP (created; removed at exit).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also export IMAGE under NAME (repeatable). IMAGE given alone is the default export
    /// (the empty name, which clients get when they name none).
    #[arg(long = "export", value_name = "NAME=IMAGE", action = clap::ArgAction::Append)]
    pub exports: Vec<String>,
    /// Let clients write: the image is changed in place (raw, qcow2, VHD, VHDX, VDI,
    /// monolithicSparse VMDK) through the same updater `sync` uses, flushed on FLUSH, on FUA
    /// and at exit.
    #[arg(long)]
    pub writable: bool,
    /// Require TLS with the pre-shared keys of FILE (psktool's format, `identity:hexkey` lines;
    /// clients: `nbds://...?tls-psk-file=...&tls-username=...`).
    #[arg(long = "tls-psk", value_name = "FILE", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_psk: Option<PathBuf>,
    /// Require TLS with this certificate (PEM, with its chain); needs --tls-key.
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen on an address other than loopback without TLS: anyone who can reach it reads
    /// (and with --writable changes) the image.
    #[arg(long = "no-tls", conflicts_with_all = ["tls_psk", "tls_cert", "tls_key"])]
    pub no_tls: bool,
    /// Offer the persistent dirty bitmap NAME of a qcow2 export as the metadata context
    /// `qemu:dirty-bitmap:NAME` (repeatable; read-only exports only).
    #[arg(long = "bitmap", value_name = "NAME", action = clap::ArgAction::Append)]
    pub bitmaps: Vec<String>,
    /// Exit when the first client has disconnected and no other is connected.
    #[arg(long)]
    pub once: bool,
    /// Print JSON lines (listening, each connection) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub input: Input,
    #[command(flatten)]
    pub refs: RefArgs,
    /// The image to export as the default export.
    pub image: Option<PathBuf>,
}

/// Where the server listens.
#[derive(Debug, Clone)]
enum Where {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The exports the command line names: (name, image).
fn exports(a: &ServeArgs) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    if let Some(i) = &a.image {
        out.push((String::new(), i.clone()));
    }
    for e in &a.exports {
        let Some((name, path)) = e.split_once('=') else {
            return Err(Error::InvalidArgument(format!(
                "--export {e}: expected NAME=IMAGE"
            )));
        };
        if path.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--export {e}: no image after '='"
            )));
        }
        if name.len() > diskconv::net::proto::MAX_STRING {
            return Err(Error::InvalidArgument(format!(
                "--export: the name '{name}' is longer than 4096 bytes"
            )));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidArgument(format!(
                "--export {e}: the export name '{name}' is given twice"
            )));
        }
        out.push((name.to_string(), PathBuf::from(path)));
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(
            "nothing to serve: give an IMAGE or --export NAME=IMAGE".into(),
        ));
    }
    Ok(out)
}

fn listen_address(a: &ServeArgs) -> Result<Where> {
    if let Some(p) = &a.socket {
        return Ok(Where::Unix(p.clone()));
    }
    let s = a.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let addr = s
        .to_socket_addrs()
        .map_err(|e| Error::InvalidArgument(format!("--listen {s}: {e}")))?
        .next()
        .ok_or_else(|| Error::InvalidArgument(format!("--listen {s}: no address")))?;
    Ok(Where::Tcp(addr))
}

/// What the command line alone says is wrong.
pub fn check_usage(a: &ServeArgs) -> Result<()> {
    exports(a)?;
    if let Some(f) = a.input.format.as_deref() {
        f.parse::<diskconv::Format>()
            .map_err(|e| Error::InvalidArgument(format!("-f {f}: {e}")))?;
    }
    if a.writable && !a.bitmaps.is_empty() {
        return Err(Error::InvalidArgument(
            "--bitmap with --writable: writes through the export would not be recorded in the \
             bitmap, which would then lie; serve read-only to offer a bitmap"
                .into(),
        ));
    }
    if a.writable && a.input.snapshot.is_some() {
        return Err(Error::InvalidArgument(
            "--snapshot with --writable: a snapshot cannot be written; serve it read-only".into(),
        ));
    }
    if let Where::Tcp(addr) = listen_address(a)? {
        if !addr.ip().is_loopback() && !a.no_tls && !tls_configured(a) {
            return Err(Error::InvalidArgument(format!(
                "--listen {addr} is not a loopback address and the server has no TLS: anyone \
                 who reaches it could read the image; listen on loopback or a Unix socket, or \
                 give --no-tls to accept that"
            )));
        }
    }
    Ok(())
}

fn tls_configured(a: &ServeArgs) -> bool {
    a.tls_psk.is_some() || a.tls_cert.is_some()
}

/// The TLS upgrade the flags ask for, if any (the PSK file is read now, so a bad one is an
/// error before the server starts).
fn tls(a: &ServeArgs) -> Result<Option<Arc<dyn TlsUpgrade>>> {
    let config = if let Some(p) = &a.tls_psk {
        TlsServerConfig::psk(PskFile::load(p)?)
    } else if let (Some(c), Some(k)) = (&a.tls_cert, &a.tls_key) {
        for f in [c, k] {
            std::fs::metadata(f).map_err(|e| Error::io("reading a TLS file", e).in_file(f))?;
        }
        TlsServerConfig::x509(c, k, None)
    } else {
        return Ok(None);
    };
    Ok(Some(Arc::new(ServerTls::new(config, Some(POLL)))))
}

/// The file name of an image, for export descriptions (clients see it: not the server's
/// folders).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Opens one export and takes the image's lock: exclusive for a writable export (other
/// diskconv writers are refused), shared for a read-only one (it may be read by others, but
/// no diskconv process changes it while it is served).
fn open_export(
    a: &ServeArgs,
    name: &str,
    path: &Path,
    policy: ReferencePolicy,
) -> Result<(Export, ImageLock)> {
    if a.writable {
        let lock = ImageLock::acquire(path)?;
        let format = a.input.format.as_deref().map(str::parse).transpose()?;
        let up = diskconv::sync::target::open_updater(path, format)?;
        let desc = format!(
            "{} ({}, {}, writable)",
            file_name(path),
            up.format(),
            human_bytes(up.virtual_size())
        );
        return Ok((Export::writable(name, up).with_description(desc), lock));
    }
    let lock = ImageLock::acquire_shared(path)?;
    let opts = crate::package::input_options(path, &a.input, policy)?;
    let img: Box<dyn ImageReader> = diskconv::open(path, &opts)?;
    crate::package::print_warnings(img.as_ref(), &opts);
    let desc = format!(
        "{} ({}, {}, read-only)",
        file_name(path),
        img.format(),
        human_bytes(img.virtual_size())
    );
    let mut ex = Export::read_only(name, Arc::from(img)).with_description(desc);
    if !a.bitmaps.is_empty() {
        let q = diskconv::open::open_qcow2(path, &opts).map_err(|e| {
            Error::InvalidArgument(format!(
                "--bitmap needs a qcow2 image with persistent bitmaps: {}",
                e.chain()
            ))
            .in_file(path)
        })?;
        for b in &a.bitmaps {
            let ranges = q.dirty_ranges(b).in_file(path)?;
            ex = ex.with_dirty_bitmap(b.clone(), ranges)?;
        }
    }
    Ok((ex, lock))
}

#[derive(Serialize)]
struct Listening<'a> {
    event: &'static str,
    address: String,
    uri: String,
    exports: Vec<ExportLine<'a>>,
}

#[derive(Serialize)]
struct ExportLine<'a> {
    name: &'a str,
    size: u64,
    writable: bool,
    description: &'a str,
}

#[derive(Serialize)]
struct ConnectionLine<'a> {
    event: &'static str,
    #[serde(flatten)]
    report: &'a ConnectionReport,
}

enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AnyListener {
    fn accept(&self) -> io::Result<(Box<dyn ServerStream>, String)> {
        match self {
            AnyListener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                s.set_read_timeout(Some(POLL))?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                let t = Transport::Plain(Socket::from_tcp(s)?);
                Ok((Box::new(t), peer.to_string()))
            }
            AnyListener::Unix(l, path) => {
                let (s, _) = l.accept()?;
                s.set_read_timeout(Some(POLL))?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                let t = Transport::Plain(Socket::from_unix(s)?);
                Ok((Box::new(t), format!("unix:{}", path.display())))
            }
        }
    }
}

impl Drop for AnyListener {
    fn drop(&mut self) {
        if let AnyListener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn bind(w: &Where) -> Result<AnyListener> {
    match w {
        Where::Tcp(addr) => {
            let l = TcpListener::bind(addr)
                .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::io("setting up the listening socket", e))?;
            Ok(AnyListener::Tcp(l))
        }
        Where::Unix(p) => {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                if !m.file_type().is_socket() {
                    return Err(Error::InvalidArgument(format!(
                        "{} exists and is not a socket; choose another --socket path",
                        p.display()
                    )));
                }
                // A socket nobody listens on is left over from a killed server: replace it.
                if UnixStream::connect(p).is_ok() {
                    return Err(Error::Busy(format!(
                        "{}: another server listens on this socket",
                        p.display()
                    )));
                }
                std::fs::remove_file(p)
                    .map_err(|e| Error::io("removing a stale socket", e).in_file(p))?;
            }
            let l = UnixListener::bind(p)
                .map_err(|e| Error::io("listening on the Unix socket", e).in_file(p))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::io("setting up the listening socket", e))?;
            Ok(AnyListener::Unix(l, p.clone()))
        }
    }
}

fn print_connection(json: bool, r: &ConnectionReport) {
    if json {
        if let Ok(s) = serde_json::to_string(&ConnectionLine {
            event: "disconnected",
            report: r,
        }) {
            let _ = outln!("{s}");
        }
        return;
    }
    let mut line = format!(
        "connection from {}: export {}, {}, read {} bytes, wrote {} bytes, {} requests",
        r.peer,
        match &r.export {
            Some(n) => format!("'{n}'"),
            None => "none".to_string(),
        },
        if r.tls { "TLS" } else { "plain" },
        r.bytes_read,
        r.bytes_written,
        r.requests
    );
    if let Some(e) = &r.error {
        line.push_str(&format!(", ended by an error: {e}"));
    }
    let _ = outln!("{line}");
}

/// Runs `diskconv serve`.
pub fn run(a: ServeArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let list = exports(&a)?;
    let place = listen_address(&a)?;
    let cancel = crate::term::cancel_on_signals()?;
    let mut locks = Vec::new();
    let mut exs = Vec::new();
    for (name, path) in &list {
        let (e, l) = open_export(&a, name, path, policy)?;
        exs.push(e);
        locks.push(l);
    }
    let options = ServerOptions {
        tls: tls(&a)?,
        ..ServerOptions::default()
    };
    let server = Arc::new(Server::new(exs, options)?.with_cancel(cancel.clone()));
    let listener = bind(&place)?;
    let scheme = if tls_configured(&a) { "nbds" } else { "nbd" };
    let (address, uri) = match (&listener, &place) {
        (AnyListener::Tcp(l), _) => {
            let a = l
                .local_addr()
                .map_err(|e| Error::io("reading the listening address", e))?;
            (a.to_string(), format!("{scheme}://{a}/"))
        }
        (AnyListener::Unix(_, p), _) => (
            format!("unix:{}", p.display()),
            format!("{scheme}+unix:///?socket={}", p.display()),
        ),
    };
    if a.json {
        let l = Listening {
            event: "listening",
            address: address.clone(),
            uri: uri.clone(),
            exports: server
                .exports()
                .iter()
                .map(|e| ExportLine {
                    name: e.name(),
                    size: e.size(),
                    writable: e.is_writable(),
                    description: e.description(),
                })
                .collect(),
        };
        outln!(
            "{}",
            serde_json::to_string(&l).map_err(|e| Error::Internal(e.to_string()))?
        )?;
    } else {
        outln!("listening on {address} ({uri})")?;
        for e in server.exports() {
            // The description says the file, format, size and whether it is writable.
            outln!(
                "export '{}': {}, {} bytes",
                e.name(),
                e.description(),
                e.size()
            )?;
        }
    }

    let active = Arc::new(AtomicUsize::new(0));
    let served_one = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<ConnectionReport>();
    let mut threads = Vec::new();
    let json = a.json;
    loop {
        while let Ok(r) = done_rx.try_recv() {
            print_connection(json, &r);
        }
        threads.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        if a.once && served_one.load(Ordering::SeqCst) && active.load(Ordering::SeqCst) == 0 {
            break;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    errln!("diskconv: turned away {peer}: {MAX_CONNECTIONS} clients are connected");
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (server, active, served_one, done) = (
                    server.clone(),
                    active.clone(),
                    served_one.clone(),
                    done_tx.clone(),
                );
                let t = std::thread::Builder::new()
                    .name(format!("nbd {peer}"))
                    .spawn(move || {
                        let r = server.handle(stream, &peer);
                        let _ = done.send(r);
                        served_one.store(true, Ordering::SeqCst);
                        active.fetch_sub(1, Ordering::SeqCst);
                    })
                    .map_err(|e| Error::io("starting a connection thread", e))?;
                threads.push(t);
            }
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::Interrupted) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                errln!("diskconv: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(listener);
    // Every connection sees the flag within POLL, answers what is in flight and ends.
    cancel.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    drop(done_tx);
    while let Ok(r) = done_rx.recv() {
        print_connection(json, &r);
    }
    server.flush_all()?;
    drop(locks);
    if crate::term::signal_received().is_some() {
        return Ok(crate::term::interrupted(
            "the server stopped (requests in flight were answered, exports flushed)",
        ));
    }
    Ok(ExitCode::SUCCESS)
}
