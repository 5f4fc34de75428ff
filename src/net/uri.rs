//! NBD URIs, as the NetworkBlockDevice project's `doc/uri.md` defines them and qemu, libnbd
//! (`nbdinfo`, `nbdcopy`) and nbdkit accept them:
//!
//! - `nbd://host[:port]/export` (TCP, default port 10809; IPv6 hosts in brackets: `[::1]`),
//! - `nbds://...` (the same over TLS),
//! - `nbd+unix:///export?socket=PATH` and `nbds+unix:///export?socket=PATH` (a Unix socket).
//!
//! The export name is the path without its leading `/`, percent-decoded (`nbd://h/` and
//! `nbd://h` name the default export, the empty name). The query takes `socket=`,
//! `tls-psk-file=` (a key file in `psktool`'s `username:hexkey` format), `tls-username=`
//! (default: the user name given before `@` in the authority, else the login name, as libnbd
//! does), `tls-certificates=` (a folder holding `ca-cert.pem`, as nbdinfo takes it) or
//! `tls-ca-file=` (a CA file), and `tls-verify-peer=` (`true`/`false`). Unknown keys are
//! refused by name. A URI never holds key material, and [`NbdUri`]'s `Display` prints the
//! URI without a password (one in the authority is refused anyway).

use std::fmt;
use std::path::{Path, PathBuf};

/// The TCP port NBD servers listen on by default.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    /// A TCP host (name or IP address, without IPv6 brackets) and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddress::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            NbdAddress::Tcp { host, port } => write!(f, "{host}:{port}"),
            NbdAddress::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What TLS asks of the connection (`nbds` URIs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NbdTls {
    /// A pre-shared key file (`psktool` format: one `username:hexkey` line per user).
    pub psk_file: Option<PathBuf>,
    /// The PSK identity (user name).
    pub username: String,
    /// A CA certificate file the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Whether the server's certificate is verified (default `true`).
    pub verify_peer: bool,
}

/// A parsed NBD URI.
#[derive(Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub address: NbdAddress,
    /// The export name (may be empty: the server's default export).
    pub export: String,
    /// TLS settings when the scheme is `nbds` / `nbds+unix`.
    pub tls: Option<NbdTls>,
    /// The URI as written (without query secrets: URIs hold none), for messages.
    text: String,
}

impl fmt::Debug for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdUri")
            .field("address", &self.address)
            .field("export", &self.export)
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `s` is written as an NBD URI (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`).
/// Only the scheme is looked at: a malformed URI with an NBD scheme is still one (and its
/// parse error says what is wrong, rather than "no such file").
pub fn is_nbd_uri(s: impl AsRef<std::ffi::OsStr>) -> bool {
    let Some(s) = s.as_ref().to_str() else {
        return false;
    };
    let lower = s.get(..12).unwrap_or(s).to_ascii_lowercase();
    ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// Whether the path is an NBD URI (see [`is_nbd_uri`]).
pub fn is_nbd_path(p: &Path) -> bool {
    is_nbd_uri(p.as_os_str())
}

/// Why a URI is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    /// The URI (without secrets).
    pub uri: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: not a valid NBD URI: {}", self.uri, self.reason)
    }
}

impl std::error::Error for UriError {}

fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in the {what} at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} is not UTF-8 once decoded"))
}

/// The login name, as libnbd takes it for the default TLS user name.
fn login_name() -> String {
    for v in ["LOGNAME", "USER"] {
        if let Ok(s) = std::env::var(v) {
            if !s.is_empty() {
                return s;
            }
        }
    }
    let uid = rustix::process::getuid().as_raw();
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 2 && f[2] == uid.to_string() {
                return f[0].to_string();
            }
        }
    }
    uid.to_string()
}

/// `s` with any password in its authority (`user:password@`) replaced by `***`.
fn redact(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{host}{}", &rest[end..])
        }
        _ => s.to_string(),
    }
}

impl NbdUri {
    /// Parses an NBD URI.
    pub fn parse(s: &str) -> Result<NbdUri, UriError> {
        let shown = redact(s);
        let err = |reason: String| UriError {
            uri: shown.clone(),
            reason,
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| err("no scheme (nbd://, nbds://, nbd+unix://...)".into()))?;
        let (tls, unix) = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            other => {
                return Err(err(format!(
                    "the scheme {other}:// is not one of nbd, nbds, nbd+unix, nbds+unix"
                )));
            }
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        if fragment.is_some() {
            return Err(err("a fragment (#...) is not allowed".into()));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut username = None;
        if let Some(u) = userinfo {
            if u.contains(':') {
                return Err(err(
                    "a password in the URI is not accepted (use tls-psk-file=)".into(),
                ));
            }
            username = Some(percent_decode(u, "user name").map_err(err)?);
        }
        let export = match path.strip_prefix('/') {
            Some(p) => percent_decode(p, "export name").map_err(err)?,
            None => String::new(),
        };
        if export.len() > super::proto::MAX_STRING {
            return Err(err("the export name is longer than 4096 bytes".into()));
        }

        let mut socket = None;
        let mut psk_file = None;
        let mut ca_file = None;
        let mut verify_peer = true;
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = percent_decode(k, "query key").map_err(err)?;
            let v = percent_decode(v, "query value").map_err(err)?;
            let tls_only = |k: &str| -> Result<(), UriError> {
                if tls {
                    Ok(())
                } else {
                    Err(err(format!(
                        "{k}= is a TLS setting, but {scheme}:// does not use TLS (nbds://)"
                    )))
                }
            };
            match k.as_str() {
                "socket" => socket = Some(PathBuf::from(v)),
                "tls-psk-file" => {
                    tls_only(&k)?;
                    psk_file = Some(PathBuf::from(v))
                }
                "tls-username" => {
                    tls_only(&k)?;
                    username = Some(v)
                }
                "tls-certificates" => {
                    tls_only(&k)?;
                    ca_file = Some(PathBuf::from(v).join("ca-cert.pem"))
                }
                "tls-ca-file" => {
                    tls_only(&k)?;
                    ca_file = Some(PathBuf::from(v))
                }
                "tls-verify-peer" => {
                    tls_only(&k)?;
                    verify_peer = match v.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" | "on" => true,
                        "false" | "0" | "no" | "off" => false,
                        _ => {
                            return Err(err(format!(
                                "tls-verify-peer={v}: expected true or false"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(err(format!(
                        "unknown query key {k:?} (known: socket, tls-psk-file, tls-username, \
                         tls-certificates, tls-ca-file, tls-verify-peer)"
                    )));
                }
            }
        }

        let address = if unix {
            if !hostport.is_empty() {
                return Err(err(format!(
                    "{scheme}:// takes no host ({hostport:?}); write {scheme}:///export?socket=PATH"
                )));
            }
            let socket = socket.ok_or_else(|| err(format!("{scheme}:// needs ?socket=PATH")))?;
            if socket.as_os_str().is_empty() {
                return Err(err("socket= is empty".into()));
            }
            NbdAddress::Unix(socket)
        } else {
            if socket.is_some() {
                return Err(err(format!(
                    "socket= is for nbd+unix:// URIs, not {scheme}://"
                )));
            }
            let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                let (h, after) = h
                    .split_once(']')
                    .ok_or_else(|| err("an IPv6 address without its closing ]".into()))?;
                let port =
                    match after {
                        "" => None,
                        p => Some(p.strip_prefix(':').ok_or_else(|| {
                            err(format!("unexpected {p:?} after the IPv6 address"))
                        })?),
                    };
                (h.to_string(), port)
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (hostport.to_string(), None),
                }
            };
            let host = percent_decode(&host, "host").map_err(err)?;
            if host.is_empty() {
                return Err(err("no host (nbd://HOST[:PORT]/EXPORT)".into()));
            }
            let port =
                match port {
                    None | Some("") => DEFAULT_PORT,
                    Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                        err(format!("port {p:?} is not a number from 1 to 65535"))
                    })?,
                };
            NbdAddress::Tcp { host, port }
        };

        let tls = tls.then(|| NbdTls {
            psk_file,
            username: username.unwrap_or_else(login_name),
            ca_file,
            verify_peer,
        });
        Ok(NbdUri {
            address,
            export,
            tls,
            text: s.to_string(),
        })
    }

    /// The URI at `path` when it is a well-formed NBD URI.
    pub fn parse_path(path: &Path) -> Option<NbdUri> {
        if !is_nbd_path(path) {
            return None;
        }
        NbdUri::parse(&path.to_string_lossy()).ok()
    }

    /// A stable identity of the export, free of credentials and TLS settings (for sync
    /// states): `nbd://host:port/export`, or `nbd+unix:///export?socket=PATH`.
    pub fn id(&self) -> String {
        match &self.address {
            NbdAddress::Unix(p) => format!("{}?socket={}", self.short(), p.display()),
            NbdAddress::Tcp { .. } => self.short(),
        }
    }

    /// A name for the export without the query (no socket path, no key file), for state files
    /// and logs: `nbd://host:port/export` or `nbd+unix:///export`.
    pub fn short(&self) -> String {
        let scheme = match (&self.address, self.tls.is_some()) {
            (NbdAddress::Tcp { .. }, false) => "nbd",
            (NbdAddress::Tcp { .. }, true) => "nbds",
            (NbdAddress::Unix(_), false) => "nbd+unix",
            (NbdAddress::Unix(_), true) => "nbds+unix",
        };
        match &self.address {
            NbdAddress::Tcp { .. } => format!("{scheme}://{}/{}", self.address, self.export),
            NbdAddress::Unix(_) => format!("{scheme}:///{}", self.export),
        }
    }
}

impl std::str::FromStr for NbdUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NbdUri::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_forms() {
        let u = NbdUri::parse("nbd://example.com/disk%201").unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "example.com".into(),
                port: 10809
            }
        );
        assert_eq!(u.export, "disk 1");
        assert!(u.tls.is_none());
        let u = NbdUri::parse("nbd://127.0.0.1:1234").unwrap();
        assert_eq!(u.export, "");
        assert_eq!(u.address.to_string(), "127.0.0.1:1234");
        let u = NbdUri::parse("nbd://[::1]:99/").unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        assert_eq!(u.address.to_string(), "[::1]:99");
        let u = NbdUri::parse("nbd://[fe80::1]/a/b").unwrap();
        assert_eq!(u.export, "a/b");
        assert_eq!(u.short(), "nbd://[fe80::1]:10809/a/b");
        assert_eq!(u.id(), "nbd://[fe80::1]:10809/a/b");
        let u = NbdUri::parse("nbds+unix:///e?socket=/s&tls-psk-file=/k.psk").unwrap();
        assert_eq!(u.id(), "nbds+unix:///e?socket=/s");
    }

    #[test]
    fn unix_and_tls_forms() {
        let u = NbdUri::parse("nbd+unix:///?socket=/tmp/s%20x.sock").unwrap();
        assert_eq!(u.address, NbdAddress::Unix("/tmp/s x.sock".into()));
        assert_eq!(u.export, "");
        let u = NbdUri::parse(
            "nbds://alice@host:10810/web01?tls-psk-file=/k.psk&tls-verify-peer=false",
        )
        .unwrap();
        let t = u.tls.clone().unwrap();
        assert_eq!(t.username, "alice");
        assert_eq!(t.psk_file, Some("/k.psk".into()));
        assert!(!t.verify_peer);
        let u = NbdUri::parse("nbds+unix:///e?socket=/s&tls-username=bob&tls-certificates=/pki")
            .unwrap();
        let t = u.tls.unwrap();
        assert_eq!(t.username, "bob");
        assert_eq!(t.ca_file, Some("/pki/ca-cert.pem".into()));
        let u = NbdUri::parse("nbds://h/").unwrap();
        assert!(!u.tls.unwrap().username.is_empty());
    }

    #[test]
    fn refusals() {
        for (s, what) in [
            ("nbd://h/?foo=1", "unknown query key \"foo\""),
            ("nbd+unix:///e", "needs ?socket"),
            ("nbd+unix://host/e?socket=/s", "takes no host"),
            ("nbd://h:0/", "port"),
            ("nbd://h:99999/", "port"),
            ("nbd://h:x/", "port"),
            ("nbd:///e", "no host"),
            ("nbd://h/?socket=/s", "for nbd+unix"),
            ("nbd://h/?tls-psk-file=/k", "does not use TLS"),
            ("nbd://u:secret@h/", "password"),
            ("nbd://h/%zz", "percent"),
            ("nbd://[::1/", "closing"),
            ("nbds://h/?tls-verify-peer=maybe", "true or false"),
            ("http://h/", "scheme"),
        ] {
            let e = NbdUri::parse(s).unwrap_err().to_string();
            assert!(e.contains(what), "{s}: {e}");
        }
        // A password is never echoed back.
        let e = NbdUri::parse("nbd://u:secret@h/x").unwrap_err().to_string();
        assert!(!e.contains("secret") && e.contains("u:***@h/x"), "{e}");
        assert!(is_nbd_uri("NBD://h/"));
        assert!(is_nbd_uri("nbds+unix:///x?socket=/s"));
        assert!(!is_nbd_uri("disk.qcow2"));
        assert!(!is_nbd_uri("nbd:/x"));
    }
}
