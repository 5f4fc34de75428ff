//! The NBD transport (src/net/transport.rs, src/net/tls.rs): our TLS client and server with each
//! other (PSK and X.509, TCP and Unix sockets, many threads on split halves), and with GnuTLS,
//! the TLS library of qemu-nbd, nbdkit and libnbd: gnutls-serv, gnutls-cli and nbdkit itself.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diskconv::net::tls::{PskFile, TlsClientConfig, TlsServerConfig, X509ClientConfig};
use diskconv::net::transport::{Address, Listener, Socket, Transport};

use crate::util::{self, require};

const TIMEOUT: Duration = Duration::from_secs(20);
/// A fixed test key (hex), as psktool writes it.
const KEY_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Kills a child process when dropped.
struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loopback() -> Address {
    Address::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    }
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local address").port()
}

/// Connects to `address`, retrying while the server starts (the wait decides nothing: a
/// server that never comes up fails the test with its own output).
fn connect_when_up(address: &Address, server: &mut Killer) -> Socket {
    let start = Instant::now();
    loop {
        match Socket::connect(address, TIMEOUT) {
            Ok(s) => return s,
            Err(e) => {
                if let Ok(Some(status)) = server.0.try_wait() {
                    panic!("the server exited ({status}) before accepting: {e}");
                }
                assert!(start.elapsed() < TIMEOUT, "no server on {address}: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn write_psk(dir: &Path, identity: &str, hex: &str) -> PathBuf {
    let p = dir.join(format!("{identity}.psk"));
    std::fs::write(&p, format!("{identity}:{hex}\n")).expect("write PSK file");
    p
}

fn key() -> Vec<u8> {
    (0..KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&KEY_HEX[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Accepts one connection on `listener` in a thread, upgrades it with `config` and runs
/// `serve` on it; the thread's result is the server's outcome.
fn serve_one(
    listener: Listener,
    config: TlsServerConfig,
    serve: impl FnOnce(Transport) + Send + 'static,
) -> thread::JoinHandle<diskconv::Result<()>> {
    thread::spawn(move || {
        let sock = listener.accept().expect("accept");
        let t = Transport::Plain(sock).start_tls_server(&config)?;
        serve(t);
        Ok(())
    })
}

/// Echoes everything back until the peer ends its side, then ends ours.
fn echo(t: Transport) {
    let (mut r, mut w) = t.split().expect("split");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(n) => n,
            // gnutls-cli closes the socket without close_notify when its input ends.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => panic!("echo read: {e}"),
        };
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).expect("echo write");
    }
    w.shutdown().expect("echo shutdown");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

/// Four writer threads send 16 MiB each in 1 MiB messages (8-byte header: thread, sequence)
/// through one shared write half while the reader thread takes the echoes and checks every
/// byte: the NBD client's shape (writers send requests, a reader demultiplexes replies).
fn four_writers_and_a_reader(t: Transport) {
    const MSG: usize = 1 << 20;
    const PER_THREAD: usize = 16;
    let (mut r, w) = t.split().expect("split");
    let w = Arc::new(Mutex::new(w));
    let writers: Vec<_> = (0..4u32)
        .map(|id| {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                for seq in 0..PER_THREAD as u32 {
                    let mut msg = Vec::with_capacity(8 + MSG);
                    msg.extend_from_slice(&id.to_be_bytes());
                    msg.extend_from_slice(&seq.to_be_bytes());
                    msg.extend_from_slice(&pattern(u64::from(id) << 32 | u64::from(seq), MSG));
                    w.lock().expect("lock").write_all(&msg).expect("write");
                }
            })
        })
        .collect();
    let mut next = [0u32; 4];
    let mut msg = vec![0u8; 8 + MSG];
    for _ in 0..4 * PER_THREAD {
        r.read_exact(&mut msg).expect("read an echo");
        let id = u32::from_be_bytes(msg[..4].try_into().expect("4 bytes"));
        let seq = u32::from_be_bytes(msg[4..8].try_into().expect("4 bytes"));
        assert!(id < 4, "bad thread id {id}");
        assert_eq!(
            seq, next[id as usize],
            "messages of thread {id} out of order"
        );
        next[id as usize] += 1;
        assert!(
            msg[8..] == pattern(u64::from(id) << 32 | u64::from(seq), MSG),
            "echo of thread {id} message {seq} differs"
        );
    }
    for t in writers {
        t.join().expect("writer");
    }
    w.lock().expect("lock").shutdown().expect("shutdown");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("read to the end");
    assert!(rest.is_empty(), "{} bytes after the last echo", rest.len());
}

/// Our client and server with a PSK, over TCP and a Unix socket: a plain exchange first (the
/// NBD option haggling before STARTTLS), then the upgrade on the same socket, then 64 MiB from
/// four threads echoed back while they write.
#[test]
fn psk_client_and_server_over_tcp_and_unix_with_many_writers() {
    let dir = util::tmpdir();
    let psk = write_psk(dir.path(), "alice", KEY_HEX);
    for address in [loopback(), Address::Unix(dir.path().join("nbd.sock"))] {
        let listener = Listener::bind(&address).expect("bind");
        let at = listener.local_address().clone();
        let config = TlsServerConfig::psk(PskFile::load(&psk).expect("PSK file"));
        let server = thread::spawn(move || {
            let mut sock = listener.accept().expect("accept");
            // Plain phase: read the "STARTTLS" the client sends, answer "OK".
            let mut b = [0u8; 8];
            sock.read_exact(&mut b).expect("plain read");
            assert_eq!(&b, b"STARTTLS");
            sock.write_all(b"OK").expect("plain write");
            let t = Transport::Plain(sock).start_tls_server(&config)?;
            assert!(t.is_tls());
            echo(t);
            diskconv::Result::<()>::Ok(())
        });
        let mut sock = Socket::connect(&at, TIMEOUT).expect("connect");
        sock.write_all(b"STARTTLS").expect("plain write");
        let mut ok = [0u8; 2];
        sock.read_exact(&mut ok).expect("plain read");
        assert_eq!(&ok, b"OK");
        let client = PskFile::load(&psk)
            .expect("PSK file")
            .client_config(Some("alice"))
            .expect("identity");
        let t = Transport::Plain(sock)
            .start_tls_client(&client)
            .expect("TLS handshake");
        four_writers_and_a_reader(t);
        server.join().expect("server thread").expect("server");
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, made by GnuTLS's certtool:
/// (certificate, key).
fn certtool_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}-key.pem"));
    let cert = dir.join(format!("{name}-cert.pem"));
    let tmpl = dir.join(format!("{name}.tmpl"));
    std::fs::write(
        &tmpl,
        format!(
            "cn = {name}\ndns_name = localhost\nip_address = 127.0.0.1\nexpiration_days = 2\n\
             ca\ncert_signing_key\nsigning_key\nencryption_key\ntls_www_server\ntls_www_client\n"
        ),
    )
    .expect("template");
    util::run(
        Command::new("certtool")
            .args([
                "--generate-privkey",
                "--key-type",
                "rsa",
                "--sec-param",
                "medium",
            ])
            .arg("--outfile")
            .arg(&key),
    );
    util::run(
        Command::new("certtool")
            .arg("--generate-self-signed")
            .arg("--load-privkey")
            .arg(&key)
            .arg("--template")
            .arg(&tmpl)
            .arg("--outfile")
            .arg(&cert),
    );
    (cert, key)
}

/// X.509: a client that trusts the server's certificate connects (by name and by address);
/// one that trusts another CA, or asks for another name, fails with "certificate verify
/// failed"; a server that wants client certificates gets one.
#[test]
fn x509_certificates_verify_and_fail_clearly() {
    if !require("certtool") {
        return;
    }
    let dir = util::tmpdir();
    let (cert, key) = certtool_cert(dir.path(), "server");
    let (other, other_key) = certtool_cert(dir.path(), "other");
    let run = |server: TlsServerConfig, client: X509ClientConfig| {
        let listener = Listener::bind(&loopback()).expect("bind");
        let at = listener.local_address().clone();
        let s = serve_one(listener, server, echo);
        let sock = Socket::connect(&at, TIMEOUT).expect("connect");
        let r = Transport::Plain(sock).start_tls_client(&TlsClientConfig::x509(client));
        let r = r.map_err(|e| e.to_string()).and_then(|mut t| {
            // With TLS 1.3 the server checks a client certificate after the client's
            // handshake ended: a refusal shows on the first read.
            t.write_all(b"ping").map_err(|e| e.to_string())?;
            let (mut rd, mut w) = t.split().map_err(|e| e.to_string())?;
            w.shutdown().map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            rd.read_to_end(&mut back).map_err(|e| e.to_string())?;
            assert_eq!(back, b"ping");
            Ok(())
        });
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.join()));
        if r.is_ok() {
            served
                .expect("server")
                .expect("server thread")
                .expect("server");
        }
        r
    };
    let trusting = |name: &str, ca: &Path| X509ClientConfig {
        ca_file: Some(ca.to_path_buf()),
        ..X509ClientConfig::new(name)
    };
    for name in ["localhost", "127.0.0.1"] {
        run(
            TlsServerConfig::x509(&cert, &key, None),
            trusting(name, &cert),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let e = run(
        TlsServerConfig::x509(&cert, &key, None),
        trusting("localhost", &other),
    )
    .expect_err("a certificate of an untrusted CA");
    assert!(
        e.contains("certificate verify failed") && e.contains("TLS handshake with 127.0.0.1:"),
        "{e}"
    );
    let e = run(
        TlsServerConfig::x509(&cert, &key, None),
        trusting("example.org", &cert),
    )
    .expect_err("a certificate for another name");
    assert!(e.contains("certificate verify failed"), "{e}");
    // Client certificates: required by the server, presented by the client.
    let mut with_cert = trusting("localhost", &cert);
    with_cert.cert_file = Some(other.clone());
    with_cert.key_file = Some(other_key.clone());
    run(
        TlsServerConfig::x509(&cert, &key, Some(other.clone())),
        with_cert,
    )
    .unwrap_or_else(|e| panic!("client certificate: {e}"));
    let e = run(
        TlsServerConfig::x509(&cert, &key, Some(other.clone())),
        trusting("localhost", &cert),
    )
    .expect_err("no client certificate");
    // The refusal reaches the client as the server's alert, or, when the server closed first,
    // as the failed write of the first bytes.
    assert!(
        e.contains("certificate required") || e.contains("Broken pipe") || e.contains("reset"),
        "{e}"
    );
}

/// A wrong key or an unknown identity fails the handshake on both sides with a clear message
/// that holds no key; a bad PSK file names its line.
#[test]
fn wrong_psk_and_bad_psk_file_fail_clearly() {
    let dir = util::tmpdir();
    let psk = write_psk(dir.path(), "alice", KEY_HEX);
    let mut wrong = key();
    wrong[0] ^= 1;
    for (identity, k) in [("alice", wrong.clone()), ("mallory", key())] {
        let listener = Listener::bind(&loopback()).expect("bind");
        let at = listener.local_address().clone();
        let config = TlsServerConfig::psk(PskFile::load(&psk).expect("PSK file"));
        let s = serve_one(listener, config, echo);
        let sock = Socket::connect(&at, TIMEOUT).expect("connect");
        let client = TlsClientConfig::psk(identity, &k).expect("config");
        let e = Transport::Plain(sock)
            .start_tls_client(&client)
            .expect_err("a wrong PSK must fail");
        let server_err = s
            .join()
            .expect("server thread")
            .expect_err("server fails too");
        for msg in [e.chain(), server_err.chain()] {
            assert!(msg.contains("TLS handshake with"), "{msg}");
            assert!(!msg.to_lowercase().contains(&KEY_HEX[..16]), "{msg}");
        }
        if identity == "mallory" {
            assert!(
                server_err
                    .chain()
                    .contains("unknown PSK identity 'mallory'"),
                "{}",
                server_err.chain()
            );
        }
    }
    let bad = dir.path().join("bad.psk");
    std::fs::write(&bad, format!("alice:{KEY_HEX}\nbob:{}zz\n", &KEY_HEX[..10])).unwrap();
    let e = PskFile::load(&bad).expect_err("a bad line");
    let msg = e.chain();
    assert!(
        msg.contains("bad.psk line 2") && msg.contains("not hexadecimal"),
        "{msg}"
    );
    assert!(!msg.contains(&KEY_HEX[..10]), "{msg}");
    assert_eq!(e.kind(), diskconv::ErrorKind::InvalidArgument);
}

/// gnutls-serv with a PSK file, with TLS 1.3 and limited to TLS 1.2 with the (EC)DHE-PSK
/// suites (both, ECDHE-PSK only, DHE-PSK only): our client connects to each, gets its line
/// echoed, and a wrong key fails.
#[test]
fn our_client_with_gnutls_serv_psk_tls13_and_tls12() {
    if !require("gnutls-serv") {
        return;
    }
    let dir = util::tmpdir();
    let psk = write_psk(dir.path(), "alice", KEY_HEX);
    for (priority, version, suite) in [
        ("NORMAL:+PSK:+ECDHE-PSK:+DHE-PSK", "TLSv1.3", "TLS_"),
        (
            "NORMAL:-VERS-TLS1.3:+PSK:+ECDHE-PSK:+DHE-PSK",
            "TLSv1.2",
            "",
        ),
        ("NORMAL:-VERS-TLS1.3:+ECDHE-PSK", "TLSv1.2", "ECDHE-PSK-"),
        ("NORMAL:-VERS-TLS1.3:+DHE-PSK", "TLSv1.2", "DHE-PSK-"),
    ] {
        let port = free_port();
        let mut server = Killer(
            Command::new("gnutls-serv")
                .args(["--echo", "--pskpasswd"])
                .arg(&psk)
                .args(["-p", &port.to_string(), "--priority", priority])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gnutls-serv"),
        );
        let at = Address::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let sock = connect_when_up(&at, &mut server);
        let client = TlsClientConfig::psk("alice", &key()).expect("config");
        let t = Transport::Plain(sock)
            .start_tls_client(&client)
            .unwrap_or_else(|e| panic!("{priority}: {}", e.chain()));
        match &t {
            Transport::Tls(s) => {
                assert_eq!(s.version(), version, "{priority}: {}", s.cipher());
                assert!(s.cipher().starts_with(suite), "{priority}: {}", s.cipher());
                assert!(
                    version == "TLSv1.3" || s.cipher().contains("DHE-PSK-"),
                    "{priority}: {}",
                    s.cipher()
                );
            }
            Transport::Plain(_) => panic!("not TLS"),
        }
        let (mut r, mut w) = t.split().expect("split");
        w.write_all(b"hello over PSK\n").expect("write");
        let mut back = [0u8; 15];
        r.read_exact(&mut back).expect("echo");
        assert_eq!(&back, b"hello over PSK\n", "{priority}");
        // A wrong key against the same server fails.
        let sock = Socket::connect(&at, TIMEOUT).expect("connect");
        let mut k = key();
        k[5] ^= 0x40;
        let e = Transport::Plain(sock)
            .start_tls_client(&TlsClientConfig::psk("alice", &k).expect("config"))
            .expect_err("wrong key");
        assert!(
            e.to_string().contains("TLS handshake with 127.0.0.1:"),
            "{e}"
        );
    }
}

/// gnutls-cli (TLS 1.3) against our PSK server, which echoes: what
/// gnutls-cli sends comes back on its output.
#[test]
fn gnutls_cli_psk_against_our_server() {
    if !require("gnutls-cli") {
        return;
    }
    let dir = util::tmpdir();
    let psk = write_psk(dir.path(), "alice", KEY_HEX);
    for priority in [
        "NORMAL:+PSK:+ECDHE-PSK:+DHE-PSK",
        // Not TLS 1.2: gnutls-cli 3.7.9 (Debian 12) dies of SIGSEGV right after the handshake
        // of a TLS 1.2 ECDHE-PSK or DHE-PSK session, against gnutls-serv itself too
        // (`--priority NORMAL:-VERS-TLS1.3:+ECDHE-PSK` on both sides). Our TLS 1.2 (EC)DHE-PSK
        // with GnuTLS is checked the other way round, our client with gnutls-serv.
    ] {
        let listener = Listener::bind(&loopback()).expect("bind");
        let port = match listener.local_address() {
            Address::Tcp { port, .. } => *port,
            Address::Unix(_) => unreachable!("TCP"),
        };
        let config = TlsServerConfig::psk(PskFile::load(&psk).expect("PSK file"));
        let s = serve_one(listener, config, echo);
        let mut cli = Killer(
            Command::new("gnutls-cli")
                .args(["--pskusername", "alice", "--pskkey", KEY_HEX])
                .args(["--priority", priority, "-p", &port.to_string(), "127.0.0.1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("gnutls-cli"),
        );
        let line = format!("sent by gnutls-cli with {priority}\n");
        let out = Arc::new(Mutex::new(String::new()));
        let reader = {
            let out = Arc::clone(&out);
            let mut stdout = cli.0.stdout.take().expect("stdout");
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let mut stdin = cli.0.stdin.take().expect("stdin");
        stdin.write_all(line.as_bytes()).expect("to gnutls-cli");
        // Keep its input open until the echo is back (it quits when its input ends).
        let start = Instant::now();
        while !out.lock().expect("lock").contains(line.trim_end())
            && start.elapsed() < TIMEOUT
            && cli.0.try_wait().is_ok_and(|s| s.is_none())
        {
            thread::sleep(Duration::from_millis(20));
        }
        drop(stdin);
        reader.join().expect("stdout reader");
        let out = out.lock().expect("lock").clone();
        let mut err = String::new();
        let _ = cli
            .0
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        s.join()
            .expect("server thread")
            .unwrap_or_else(|e| panic!("{priority}: {}\n{out}\n{err}", e.chain()));
        let status = cli.0.wait().expect("gnutls-cli status");
        assert!(
            out.contains("PSK authentication") && out.contains(line.trim_end()),
            "{priority}: gnutls-cli ({status}) printed:\n{out}\n{err}"
        );
        let want = if priority.contains("-VERS-TLS1.3") {
            "(TLS1.2-"
        } else {
            "(TLS1.3-"
        };
        assert!(out.contains(want), "{priority}: want {want}:\n{out}");
    }
}

/// nbdkit --tls=require --tls-psk: the NBD fixed-newstyle greeting, NBD_OPT_STARTTLS, our TLS
/// client on the same socket, then NBD_OPT_GO inside TLS, whose NBD_INFO_EXPORT reply must
/// give the export's size (1 MiB): interop with the server TLS-PSK users run.
#[test]
fn nbdkit_psk_starttls_by_hand() {
    if !require("nbdkit") {
        return;
    }
    let dir = util::tmpdir();
    let psk = write_psk(dir.path(), "alice", KEY_HEX);
    let sock_path = dir.path().join("nbdkit.sock");
    let mut server = Killer(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "--tls=require"])
            .arg(format!("--tls-psk={}", psk.display()))
            .arg("-U")
            .arg(&sock_path)
            .args(["memory", "1M"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nbdkit"),
    );
    let at = Address::Unix(sock_path.clone());
    let start = Instant::now();
    while !sock_path.exists() {
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("nbdkit exited: {st}");
        }
        assert!(start.elapsed() < TIMEOUT, "nbdkit made no socket");
        thread::sleep(Duration::from_millis(20));
    }
    for (k, should_work) in [
        (key(), true),
        (
            {
                let mut k = key();
                k[31] ^= 1;
                k
            },
            false,
        ),
    ] {
        let mut sock = connect_when_up(&at, &mut server);
        let mut greeting = [0u8; 18];
        sock.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        // Client flags: FIXED_NEWSTYLE | NO_ZEROES.
        sock.write_all(&3u32.to_be_bytes()).expect("flags");
        send_option(&mut sock, 5, &[]); // NBD_OPT_STARTTLS
        let (opt, typ, data) = read_reply(&mut sock);
        assert_eq!((opt, typ), (5, 1), "NBD_REP_ACK to STARTTLS, data {data:?}");
        let client = TlsClientConfig::psk("alice", &k).expect("config");
        let r = Transport::Plain(sock).start_tls_client(&client);
        if !should_work {
            let e = r.expect_err("a wrong key");
            assert!(e.to_string().contains("TLS handshake with unix:"), "{e}");
            continue;
        }
        let mut t = r.unwrap_or_else(|e| panic!("TLS with nbdkit: {}", e.chain()));
        // NBD_OPT_GO, default export: name length 0, no info requests.
        send_option(&mut t, 7, &[0, 0, 0, 0, 0, 0]);
        let mut size = None;
        loop {
            let (opt, typ, data) = read_reply(&mut t);
            assert_eq!(opt, 7);
            match typ {
                1 => break, // NBD_REP_ACK
                3 => {
                    // NBD_REP_INFO; NBD_INFO_EXPORT is type 0, size u64, flags u16.
                    if data.len() == 12 && data[..2] == [0, 0] {
                        size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                    }
                }
                t => panic!("unexpected reply type {t:#x} to NBD_OPT_GO: {data:?}"),
            }
        }
        assert_eq!(size, Some(1 << 20), "export size from nbdkit over TLS");
        // NBD_CMD_DISC: magic, flags 0, type 2, handle, offset 0, length 0.
        let mut disc = Vec::new();
        disc.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        disc.extend_from_slice(&0u16.to_be_bytes());
        disc.extend_from_slice(&2u16.to_be_bytes());
        disc.extend_from_slice(&[0u8; 20]);
        t.write_all(&disc).expect("disconnect");
    }
}

/// Sends an NBD option: "IHAVEOPT", option, length, data.
fn send_option(w: &mut impl Write, option: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m).expect("send option");
}

/// Reads an option reply: (option, reply type, data).
fn read_reply(r: &mut impl Read) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    r.read_exact(&mut h).expect("option reply");
    let magic = u64::from_be_bytes(h[..8].try_into().expect("8"));
    assert_eq!(magic, 0x0003_e889_0455_65a9, "option reply magic");
    let opt = u32::from_be_bytes(h[8..12].try_into().expect("4"));
    let typ = u32::from_be_bytes(h[12..16].try_into().expect("4"));
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
    assert!(len < 1 << 16, "reply length {len}");
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).expect("reply data");
    (opt, typ, data)
}

/// Both ends of a PSK connection send 32 MiB (in one `write_all` each) while reading the
/// other's 32 MiB: each split half works while the other blocks, so this ends instead of
/// deadlocking, and every byte arrives.
#[test]
fn tls_both_directions_32_mib_at_once() {
    const LEN: usize = 32 << 20;
    let dir = util::tmpdir();
    let psk = write_psk(dir.path(), "alice", KEY_HEX);
    let listener = Listener::bind(&loopback()).expect("bind");
    let at = listener.local_address().clone();
    let config = TlsServerConfig::psk(PskFile::load(&psk).expect("PSK file"));
    let side = |t: Transport, seed: u64, peer: u64| {
        let (mut r, mut w) = t.split().expect("split");
        let writer = thread::spawn(move || {
            w.write_all(&pattern(seed, LEN)).expect("write 32 MiB");
            w.shutdown().expect("shutdown");
        });
        let mut got = Vec::with_capacity(LEN);
        r.read_to_end(&mut got).expect("read 32 MiB");
        writer.join().expect("writer");
        assert!(got == pattern(peer, LEN), "bytes from side {peer} differ");
    };
    let server = serve_one(listener, config, move |t| side(t, 2, 1));
    let sock = Socket::connect(&at, TIMEOUT).expect("connect");
    let t = Transport::Plain(sock)
        .start_tls_client(&TlsClientConfig::psk("alice", &key()).expect("config"))
        .expect("handshake");
    side(t, 1, 2);
    server.join().expect("server thread").expect("server");
}
