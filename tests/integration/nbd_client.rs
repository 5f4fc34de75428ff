//! The NBD client (`nbd://`, `nbd+unix://` URIs) against real servers: qemu-nbd (qcow2 and raw
//! exports, a dirty bitmap), nbdkit (memory, file and sparse-random plugins; the delay and
//! error filters; a server killed and restarted mid-convert) and nbd-server; and against a
//! hostile fake server. Every server is started by the test on a Unix socket in a temporary
//! folder or a free loopback port, and killed by a guard.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diskconv::net::proto::{self, ChunkPayload, Request};
use diskconv::net::{NbdOptions, NbdStorage, NbdUri};
use diskconv::storage::Storage;

use crate::util::*;

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Server {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    Server(child)
}

fn wait_unix(sock: &Path) {
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} never came up",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_tcp(port: u16) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "port {port} never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// `qemu-nbd -r -t` serving `img` as `fmt` on a Unix socket (several clients, one after the
/// other or at once).
fn qemu_nbd(img: &Path, fmt: &str, sock: &Path, extra: &[&str]) -> Server {
    let s = spawn(
        Command::new("qemu-nbd")
            .args(["-f", fmt, "-r", "-t", "-e", "8", "-k"])
            .arg(sock)
            .args(extra)
            .arg(img),
    );
    wait_unix(sock);
    s
}

fn nbdkit_unix(sock: &Path, args: &[&str]) -> Server {
    let s = spawn(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(sock)
            .args(args),
    );
    wait_unix(sock);
    s
}

fn nbdkit_tcp(port: u16, args: &[&str]) -> Server {
    let s = spawn(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(args),
    );
    wait_tcp(port);
    s
}

/// A qcow2 image with data, a zeroed range and holes.
fn make_source(dir: &Path) -> PathBuf {
    let src = dir.join("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "48M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0xab 1M 3M",
        "-c",
        "write -z 8M 1M",
        "-c",
        "write -P 0x11 40M 64k",
        "-c",
        "write -P 0x5a 47M 1M",
        src.to_str().unwrap(),
    ]);
    src
}

fn dc(args: &[&str]) -> std::process::Output {
    diskconv().args(args).output().expect("running diskconv")
}

fn ok(args: &[&str]) -> String {
    let o = dc(args);
    assert!(
        o.status.success(),
        "diskconv {args:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The data ranges of `qemu-img map --output=json` of `img`, merged.
fn qemu_data_ranges(args: &[&str]) -> Vec<(u64, u64)> {
    let mut a = vec!["map", "--output=json"];
    a.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(&qemu_img(&a)).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        if e["data"].as_bool() == Some(true) && e["zero"].as_bool() != Some(true) {
            let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = s + l,
                _ => out.push((s, s + l)),
            }
        }
    }
    out
}

/// The data ranges of `diskconv map --json`, merged.
fn our_data_ranges(uri: &str) -> Vec<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(&ok(&["map", "--json", uri])).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        if e["kind"].as_str() == Some("data") {
            let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = s + l,
                _ => out.push((s, s + l)),
            }
        }
    }
    out
}

#[test]
fn qemu_nbd_qcow2_export_converts_maps_and_compares() {
    if !require("qemu-nbd") {
        return;
    }
    let d = tmpdir();
    let src = make_source(d.path());
    let sock = d.path().join("s.sock");
    let _srv = qemu_nbd(&src, "qcow2", &sock, &[]);
    let uri = unix_uri(&sock);

    // convert, then qemu-img compares the output with the image qemu-nbd serves.
    let out = d.path().join("out.qcow2");
    ok(&["convert", &uri, out.to_str().unwrap()]);
    assert!(qemu_compare(&src, "qcow2", &out, "qcow2"));
    assert_qemu_check(&out);

    // map: block status gives the same data ranges qemu-img sees in the image.
    assert_eq!(
        our_data_ranges(&uri),
        qemu_data_ranges(&["-f", "qcow2", src.to_str().unwrap()])
    );

    // info names the URI and the export's size.
    let info = ok(&["info", &uri]);
    assert!(info.contains(&format!("image: {uri}")), "{info}");
    assert!(info.contains("(50331648 bytes)"), "{info}");

    // verify and compare, both ways round.
    ok(&["verify", &uri, src.to_str().unwrap()]);
    let c = ok(&["compare", src.to_str().unwrap(), &uri]);
    assert!(c.contains("identical"), "{c}");
    let o = dc(&[
        "compare",
        &uri,
        d.path().join("other.raw").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

#[test]
fn qemu_nbd_raw_export_holding_a_qcow2_and_inspect() {
    if !require("qemu-nbd") || !require("sfdisk") {
        return;
    }
    let d = tmpdir();
    // A raw disk with an MBR: inspect over NBD says what inspect of the file says.
    let raw = d.path().join("disk.raw");
    make_raw(&raw, 16 << 20, 3);
    let mut sf = Command::new("sfdisk");
    sf.arg("-q").arg(&raw).stdin(Stdio::piped());
    let mut child = sf.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=8192, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let sock = d.path().join("raw.sock");
    let srv = qemu_nbd(&raw, "raw", &sock, &[]);
    let uri = unix_uri(&sock);
    let remote = ok(&["inspect", "--json", &uri]);
    let local = ok(&["inspect", "--json", raw.to_str().unwrap()]);
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        if let Some(o) = v.as_object_mut() {
            o.remove("image");
            o.remove("path");
            o.remove("format");
        }
        v
    };
    assert_eq!(strip(&remote), strip(&local));
    drop(srv);

    // A qcow2 file served as raw bytes: -f qcow2 reads the container inside the export.
    let src = make_source(d.path());
    let sock = d.path().join("q.sock");
    let _srv = qemu_nbd(&src, "raw", &sock, &[]);
    let uri = unix_uri(&sock);
    let info = ok(&["info", "-f", "qcow2", &uri]);
    assert!(info.contains("file format: qcow2"), "{info}");
    let out = d.path().join("out.raw");
    ok(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        &uri,
        out.to_str().unwrap(),
    ]);
    assert!(qemu_compare(&src, "qcow2", &out, "raw"));
}

#[test]
fn qemu_nbd_dirty_bitmap_matches_nbdinfo() {
    if !require("qemu-nbd") || !require("nbdinfo") {
        return;
    }
    let d = tmpdir();
    let src = make_source(d.path());
    let s = src.to_str().unwrap();
    qemu_img(&["bitmap", "--add", s, "b0"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x77 2M 128k",
        "-c",
        "write -P 0x78 30M 1M",
        s,
    ]);
    let sock = d.path().join("b.sock");
    let _srv = qemu_nbd(&src, "qcow2", &sock, &["-B", "b0"]);
    let uri = unix_uri(&sock);

    let opts = NbdOptions {
        dirty_bitmap: Some("b0".into()),
        ..NbdOptions::default()
    };
    let st = NbdStorage::connect(&NbdUri::parse(&uri).unwrap(), &opts).unwrap();
    let ours: Vec<(u64, u64)> = st
        .dirty_ranges("b0", 0..st.len().unwrap())
        .unwrap()
        .into_iter()
        .map(|r| (r.start, r.end))
        .collect();

    // nbdinfo --map prints "offset length type description" lines; type 1 is dirty.
    let o = run(Command::new("nbdinfo")
        .arg("--map=qemu:dirty-bitmap:b0")
        .arg(&uri));
    let mut theirs: Vec<(u64, u64)> = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[2] == "1" {
            let (s, l): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            match theirs.last_mut() {
                Some(last) if last.1 == s => last.1 = s + l,
                _ => theirs.push((s, s + l)),
            }
        }
    }
    assert!(!ours.is_empty());
    assert_eq!(ours, theirs);
    // The writes after the bitmap was added are inside the dirty ranges.
    for (a, b) in [
        (2u64 << 20, (2u64 << 20) + (128 << 10)),
        (30 << 20, 31 << 20),
    ] {
        assert!(
            ours.iter().any(|r| r.0 <= a && b <= r.1),
            "{a:#x}..{b:#x}: {ours:?}"
        );
    }
    // A bitmap the server does not have is refused by name.
    let e = NbdStorage::connect(
        &NbdUri::parse(&uri).unwrap(),
        &NbdOptions {
            dirty_bitmap: Some("nope".into()),
            ..NbdOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("qemu:dirty-bitmap:nope"), "{e}");
}

#[test]
fn nbdkit_memory_export_as_a_raw_target() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let src = make_source(d.path());
    let port = free_port();
    let _srv = nbdkit_tcp(port, &["memory", "48M"]);
    let uri = format!("nbd://127.0.0.1:{port}/");
    ok(&["convert", "-O", "raw", src.to_str().unwrap(), &uri]);
    // Read back by qemu-img (an independent client) and by diskconv.
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        src.to_str().unwrap(),
        &uri,
    ]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("identical"));
    assert!(ok(&["compare", &uri, src.to_str().unwrap()]).contains("identical"));

    // Refusals before anything is written: a container format, a too small export.
    let o = dc(&["convert", "-O", "qcow2", src.to_str().unwrap(), &uri]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("only raw output"));
    let port2 = free_port();
    let _small = nbdkit_tcp(port2, &["memory", "16M"]);
    let o = dc(&[
        "convert",
        "-O",
        "raw",
        src.to_str().unwrap(),
        &format!("nbd://127.0.0.1:{port2}/"),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("less than the 50331648 bytes"), "{err}");
}

#[test]
fn read_only_export_refuses_writes_before_any_request() {
    if !require("qemu-nbd") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("ro.raw");
    make_raw(&raw, 8 << 20, 1);
    let before = sha256_file(&raw);
    let sock = d.path().join("ro.sock");
    let _srv = qemu_nbd(&raw, "raw", &sock, &[]);
    let src = make_source(d.path());
    let o = dc(&[
        "convert",
        "-O",
        "raw",
        src.to_str().unwrap(),
        &unix_uri(&sock),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(sha256_file(&raw), before);
}

#[test]
fn nbdkit_sparse_random_reads_only_the_data() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let sock = d.path().join("sr.sock");
    let _srv = nbdkit_unix(&sock, &["sparse-random", "256M", "seed=7", "percent=5"]);
    let uri = unix_uri(&sock);
    let out = d.path().join("sr.qcow2");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["convert", "--json", &uri, out.to_str().unwrap()])).unwrap();
    let read = v["bytes_read"].as_u64().unwrap();
    let size = v["virtual_size"].as_u64().unwrap();
    assert_eq!(size, 256 << 20);
    // Holes are skipped through block status: far less than the disk is read.
    assert!(read < size / 4, "read {read} of {size}");
    let o =
        run(Command::new("qemu-img").args(["compare", "-F", "qcow2", &uri, out.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("identical"));
}

#[test]
fn nbdkit_delay_filter_many_requests_in_flight() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("d.raw");
    make_raw(&raw, 24 << 20, 11);
    let sock = d.path().join("d.sock");
    let _srv = nbdkit_unix(
        &sock,
        &[
            "--filter=delay",
            "--filter=blocksize",
            "file",
            raw.to_str().unwrap(),
            "delay-read=20ms",
            "maxlen=1M",
        ],
    );
    let uri = unix_uri(&sock);
    let out = d.path().join("d.qcow2");
    ok(&["convert", &uri, out.to_str().unwrap()]);
    assert!(qemu_compare(&raw, "raw", &out, "qcow2"));
    // Unaligned reads straddling many requests, from many threads at once.
    let st = NbdStorage::connect(&NbdUri::parse(&uri).unwrap(), &NbdOptions::default()).unwrap();
    let want = std::fs::read(&raw).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (st, want) = (&st, &want);
            s.spawn(move || {
                let off = t * 2_900_001;
                let mut b = vec![0u8; 3_000_017];
                assert_eq!(st.read_at(&mut b, off).unwrap(), b.len());
                assert!(b == want[off as usize..off as usize + b.len()]);
            });
        }
    });
}

#[test]
fn nbdkit_error_filter_failure_names_server_and_request() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("e.raw");
    make_raw(&raw, 8 << 20, 5);
    let sock = d.path().join("e.sock");
    let _srv = nbdkit_unix(
        &sock,
        &[
            "--filter=error",
            "file",
            raw.to_str().unwrap(),
            "error=EIO",
            "error-pread-rate=100%",
        ],
    );
    let uri = unix_uri(&sock);
    let out = d.path().join("e.qcow2");
    let o = dc(&["convert", &uri, out.to_str().unwrap()]);
    assert!(!o.status.success() && o.status.code() != Some(101), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&uri), "{err}");
    assert!(err.contains("NBD_CMD_READ of"), "{err}");
    assert!(err.contains("EIO"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
}

#[test]
fn nbdkit_killed_and_restarted_mid_convert_is_resumed() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("k.raw");
    make_raw(&raw, 32 << 20, 9);
    let sock = d.path().join("k.sock");
    let args = [
        "--filter=delay",
        "--filter=blocksize",
        "file",
        raw.to_str().unwrap(),
        "delay-read=30ms",
        "maxlen=256k",
    ];
    let srv = nbdkit_unix(&sock, &args);
    let uri = unix_uri(&sock);
    let out = d.path().join("k.qcow2");
    let child = diskconv()
        .args(["convert", &uri, out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(srv);
    let _ = std::fs::remove_file(&sock);
    std::thread::sleep(Duration::from_millis(500));
    let _srv = nbdkit_unix(&sock, &args);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(qemu_compare(&raw, "raw", &out, "qcow2"));

    // Deterministically: a client whose server went away and came back reconnects and
    // reads; one whose server stays away fails, naming the request and the attempts.
    let want = std::fs::read(&raw).unwrap();
    let opts = NbdOptions {
        retry_for: Duration::from_secs(1),
        ..NbdOptions::default()
    };
    let st = NbdStorage::connect(&NbdUri::parse(&uri).unwrap(), &opts).unwrap();
    let mut b = vec![0u8; 1 << 20];
    st.read_exact_at(&mut b, 0).unwrap();
    drop(_srv);
    let _ = std::fs::remove_file(&sock);
    let _srv = nbdkit_unix(&sock, &args);
    st.read_exact_at(&mut b, 5 << 20).unwrap();
    assert!(b == want[5 << 20..6 << 20]);
    drop(_srv);
    let _ = std::fs::remove_file(&sock);
    let e = st.read_exact_at(&mut b, 0).unwrap_err().to_string();
    assert!(e.contains("NBD_CMD_READ of"), "{e}");
    assert!(e.contains("reconnecting failed"), "{e}");
}

#[test]
fn nbd_server_export_reads_and_compares() {
    if !require("nbd-server") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("n.raw");
    make_raw(&raw, 8 << 20, 13);
    let port = free_port();
    let conf = d.path().join("nbd-server.conf");
    std::fs::write(
        &conf,
        format!(
            "[generic]\n    listenaddr = 127.0.0.1\n    port = {port}\n\
             [disk]\n    exportname = {}\n    readonly = true\n",
            raw.display()
        ),
    )
    .unwrap();
    // nbd-server forks into the background (its -d mode serves one client): killed through
    // its PID file.
    let pidfile = d.path().join("nbd-server.pid");
    run(Command::new("nbd-server")
        .arg("-C")
        .arg(&conf)
        .arg("-p")
        .arg(&pidfile));
    struct Pid(PathBuf);
    impl Drop for Pid {
        fn drop(&mut self) {
            let pid = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    let _srv = Pid(pidfile);
    wait_tcp(port);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    assert!(ok(&["compare", &uri, raw.to_str().unwrap()]).contains("identical"));
    let out = d.path().join("n.qcow2");
    ok(&["convert", &uri, out.to_str().unwrap()]);
    assert!(qemu_compare(&raw, "raw", &out, "qcow2"));
    // An export the server does not have.
    let o = dc(&["info", &format!("nbd://127.0.0.1:{port}/nope")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("NBD_REP_ERR_UNKNOWN") || err.contains("nope"),
        "{err}"
    );
}

/// What the fake server does after a correct handshake, on the first request.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    BadGreeting,
    WrongCookie,
    OversizedChunk,
    DataPastRequest,
    BadMagic,
}

/// A fake server on a free port: negotiates structured replies and `base:allocation`, then
/// answers the first request as `how` says.
fn hostile_server(how: Hostile) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = serve_hostile(&mut s, how);
    });
    port
}

fn serve_hostile(s: &mut TcpStream, how: Hostile) -> std::io::Result<()> {
    if let Hostile::BadGreeting = how {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")?;
        return Ok(());
    }
    s.write_all(&proto::encode_greeting(
        proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES,
    ))?;
    let mut cf = [0u8; 4];
    s.read_exact(&mut cf)?;
    loop {
        let mut h = [0u8; proto::OPTION_HEADER_LEN];
        s.read_exact(&mut h)?;
        let h = proto::OptionHeader::decode(&h).unwrap();
        let mut p = vec![0u8; h.length as usize];
        s.read_exact(&mut p)?;
        let reply = |s: &mut TcpStream, t: u32, payload: &[u8]| {
            let r = proto::OptionReplyHeader {
                option: h.option,
                reply_type: t,
                length: payload.len() as u32,
            };
            s.write_all(&r.encode())?;
            s.write_all(payload)
        };
        match h.option {
            proto::opt::STRUCTURED_REPLY => reply(s, proto::rep::ACK, &[])?,
            proto::opt::SET_META_CONTEXT => {
                reply(
                    s,
                    proto::rep::META_CONTEXT,
                    &proto::encode_meta_context_reply(1, proto::BASE_ALLOCATION),
                )?;
                reply(s, proto::rep::ACK, &[])?;
            }
            proto::opt::GO => {
                let i = proto::Info::Export {
                    size: 1 << 20,
                    flags: proto::tflag::HAS_FLAGS | proto::tflag::READ_ONLY,
                };
                reply(s, proto::rep::INFO, &i.encode())?;
                reply(s, proto::rep::ACK, &[])?;
                break;
            }
            _ => reply(s, proto::rep::ERR_UNSUP, &[])?,
        }
    }
    let mut r = [0u8; proto::REQUEST_LEN];
    s.read_exact(&mut r)?;
    let mut req = Request::decode(&r).unwrap();
    if let Hostile::DataPastRequest = how {
        // Block status is answered honestly (all data), so that a read follows.
        while req.command == proto::cmd::BLOCK_STATUS {
            s.write_all(&proto::encode_chunk(
                req.cookie,
                true,
                &ChunkPayload::BlockStatus {
                    context: 1,
                    extents: vec![(req.length, 0)],
                },
            ))?;
            s.read_exact(&mut r)?;
            req = Request::decode(&r).unwrap();
        }
    }
    let out = match how {
        Hostile::BadGreeting => unreachable!(),
        Hostile::WrongCookie => proto::encode_chunk(req.cookie ^ 0xdead, true, &ChunkPayload::None),
        Hostile::OversizedChunk => proto::ChunkHeader {
            flags: proto::chunk::FLAG_DONE,
            chunk_type: proto::chunk::BLOCK_STATUS,
            cookie: req.cookie,
            length: 0x7fff_ffff,
        }
        .encode()
        .to_vec(),
        Hostile::DataPastRequest => {
            let mut b = proto::encode_data_chunk(req.cookie, true, req.offset + 512, req.length);
            b.extend(vec![0x41u8; req.length as usize]);
            b
        }
        Hostile::BadMagic => b"\xde\xad\xbe\xef0123456789abcdef".to_vec(),
    };
    s.write_all(&out)?;
    // Keep the connection open until the client gives up on it.
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    Ok(())
}

#[test]
fn hostile_server_gives_clear_errors_not_panics() {
    for (how, want) in [
        (Hostile::BadGreeting, "not an NBD server"),
        (Hostile::WrongCookie, "which no request in flight carries"),
        (Hostile::OversizedChunk, "more than the"),
        (Hostile::DataPastRequest, "outside the request"),
        (Hostile::BadMagic, "unknown magic"),
    ] {
        // Through the library: a read of the first 4 KiB.
        let port = hostile_server(how);
        let uri = NbdUri::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap();
        let opts = NbdOptions {
            retry_for: Duration::from_millis(200),
            ..NbdOptions::default()
        };
        let e = match NbdStorage::connect(&uri, &opts) {
            Err(e) => e.to_string(),
            Ok(st) => {
                let mut b = vec![0u8; 4096];
                let e = st.read_at(&mut b, 0).unwrap_err().to_string();
                assert!(e.contains("NBD_CMD_READ of 4 KiB at 0x0"), "{how:?}: {e}");
                e
            }
        };
        assert!(e.contains(want), "{how:?}: {e}");
        // Through the CLI: an error exit with the message, never a panic (101), no output.
        let port = hostile_server(how);
        let d = tmpdir();
        let out = d.path().join("h.raw");
        let o = dc(&[
            "convert",
            &format!("nbd://127.0.0.1:{port}/"),
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && o.status.code() != Some(101),
            "{how:?}: {err}"
        );
        assert!(!out.exists());
        assert!(err.contains(want), "{how:?}: {err}");
    }
}

#[test]
fn bad_uris_are_refused_by_name() {
    for (uri, want) in [
        ("nbd://127.0.0.1:1/?bogus=1", "unknown query key \"bogus\""),
        ("nbd+unix:///x", "needs ?socket=PATH"),
        ("nbd://u:pw@127.0.0.1/", "password"),
    ] {
        let o = dc(&["info", uri]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(want), "{uri}: {err}");
        assert!(!err.contains("pw@"), "{err}");
    }
    // Nothing listening: the error says where it tried.
    let port = free_port();
    let o = dc(&["info", &format!("nbd://127.0.0.1:{port}/")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
}

/// `qemu-nbd` serving `img` writable (no `-r`).
fn qemu_nbd_writable(img: &Path, sock: &Path) -> Server {
    let s = spawn(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "-t", "-e", "4", "-k"])
            .arg(sock)
            .arg(img),
    );
    wait_unix(sock);
    s
}

fn sync_json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn sync_pushes_to_an_nbd_export() {
    if !require("qemu-nbd") {
        return;
    }
    let d = tmpdir();
    let src = make_source(d.path());
    let s = src.to_str().unwrap();
    let dst = d.path().join("dst.raw");
    make_raw(&dst, 48 << 20, 77);
    let sock = d.path().join("w.sock");
    let srv = qemu_nbd_writable(&dst, &sock);
    let uri = unix_uri(&sock);
    let state = d.path().join("push.dcsync");
    let st = state.to_str().unwrap();
    let r = sync_json(&["sync", "--json", "--state", st, s, &uri]);
    assert_eq!(r["source"], "full");
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x3c 20M 64k", s]);
    let r = sync_json(&["sync", "--json", "--state", st, s, &uri]);
    assert_eq!(r["blocks_changed"], 1, "{r}");
    assert_eq!(r["bytes_written"], 65536, "{r}");
    drop(srv);
    assert!(qemu_compare(&src, "qcow2", &dst, "raw"));

    // The state belongs to that export: another one is refused, naming both.
    let other = d.path().join("other.raw");
    make_raw(&other, 48 << 20, 78);
    let sock2 = d.path().join("other.sock");
    let _srv2 = qemu_nbd_writable(&other, &sock2);
    let o = dc(&["sync", "--state", st, s, &unix_uri(&sock2)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("w.sock"), "{err}");
    // A read-only export is refused before anything is written.
    let sock3 = d.path().join("ro.sock");
    let _srv3 = qemu_nbd(&other, "raw", &sock3, &[]);
    let o = dc(&["sync", "--state", st, s, &unix_uri(&sock3)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("read-only"), "{err}");
}

#[test]
fn sync_pulls_from_an_nbd_source_through_its_dirty_bitmap() {
    if !require("qemu-nbd") {
        return;
    }
    let d = tmpdir();
    let src = make_source(d.path());
    let s = src.to_str().unwrap();
    qemu_img(&["bitmap", "--add", s, "b0"]);
    let dst = d.path().join("dst.qcow2");
    let state = d.path().join("pull.dcsync");
    let st = state.to_str().unwrap();
    let sock = d.path().join("b.sock");
    let uri = unix_uri(&sock);
    {
        let _srv = qemu_nbd(&src, "qcow2", &sock, &["-B", "b0"]);
        let r = sync_json(&["sync", "--json", "--state", st, &uri, dst.to_str().unwrap()]);
        assert_eq!(r["source"], "full");
    }
    // The "live VM" writes; the bitmap records it.
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x61 6M 128k", s]);
    let _srv = qemu_nbd(&src, "qcow2", &sock, &["-B", "b0"]);
    let r = sync_json(&[
        "sync",
        "--json",
        "--state",
        st,
        "--bitmap",
        "b0",
        &uri,
        dst.to_str().unwrap(),
    ]);
    // Only the dirty blocks are read (the bitmap's granularity may round up to 64 KiB).
    let read = r["bytes_read"].as_u64().unwrap();
    assert!(read <= 256 << 10, "{r}");
    assert!(r["blocks_changed"].as_u64().unwrap() >= 2, "{r}");
    assert!(qemu_compare(&src, "qcow2", &dst, "qcow2"));
    // A bitmap the server does not export is refused by name.
    let o = dc(&[
        "sync",
        "--state",
        st,
        "--bitmap",
        "nope",
        &uri,
        dst.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("qemu:dirty-bitmap:nope"),
        "{err}"
    );
}

#[test]
fn nbdkit_tls_psk() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("t.raw");
    make_raw(&raw, 8 << 20, 21);
    let key = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
    let psk = d.path().join("keys.psk");
    std::fs::write(&psk, format!("alice:{key}\n")).unwrap();
    let sock = d.path().join("t.sock");
    let psk_arg = format!("--tls-psk={}", psk.display());
    let _srv = nbdkit_unix(
        &sock,
        &["--tls=require", &psk_arg, "file", raw.to_str().unwrap()],
    );
    let uri = format!(
        "nbds+unix:///?socket={}&tls-psk-file={}&tls-username=alice",
        sock.display(),
        psk.display()
    );
    let out = d.path().join("t.qcow2");
    ok(&["convert", &uri, out.to_str().unwrap()]);
    assert!(qemu_compare(&raw, "raw", &out, "qcow2"));
    assert!(ok(&["compare", &uri, raw.to_str().unwrap()]).contains("identical"));

    // Without TLS the server refuses, and says TLS is needed.
    let o = dc(&["info", &unix_uri(&sock)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nbds://"), "{err}");

    // A wrong key fails clearly, without printing either key.
    let wrong = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let bad = d.path().join("bad.psk");
    std::fs::write(&bad, format!("alice:{wrong}\n")).unwrap();
    let uri = format!(
        "nbds+unix:///?socket={}&tls-psk-file={}&tls-username=alice",
        sock.display(),
        bad.display()
    );
    let o = dc(&["info", &uri]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.status.code() != Some(101), "{err}");
    assert!(err.contains("TLS") || err.contains("tls"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(key), "{err}");
    // An identity the key file lacks is named.
    let uri = format!(
        "nbds+unix:///?socket={}&tls-psk-file={}&tls-username=bob",
        sock.display(),
        psk.display()
    );
    let o = dc(&["info", &uri]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bob"), "{err}");
    assert!(!err.contains(key), "{err}");

    // `--tls-psk FILE` instead of the query keys (the file's only identity is used), on a
    // source and on a sync target alike.
    let bare = format!("nbds+unix:///?socket={}", sock.display());
    let psk_s = psk.to_str().unwrap();
    assert!(
        ok(&["compare", "--tls-psk", psk_s, &bare, raw.to_str().unwrap()]).contains("identical")
    );
    // Refused before connecting: the flag without an nbds URI, or with the URI's own key file.
    for args in [
        vec!["info", "--tls-psk", psk_s, raw.to_str().unwrap()],
        vec!["info", "--tls-psk", psk_s, &uri],
    ] {
        let o = dc(&args);
        assert_eq!(o.status.code(), Some(64), "{args:?}");
    }
}

#[test]
fn nbdkit_restarted_mid_write_is_resumed() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("src.raw");
    make_raw(&raw, 16 << 20, 31);
    let dst = d.path().join("dst.raw");
    make_raw(&dst, 16 << 20, 32);
    let sock = d.path().join("w.sock");
    let args = [
        "--filter=delay",
        "--filter=blocksize",
        "file",
        dst.to_str().unwrap(),
        "delay-write=30ms",
        "maxlen=256k",
    ];
    let srv = nbdkit_unix(&sock, &args);
    let uri = unix_uri(&sock);
    let child = diskconv()
        .args(["convert", "-O", "raw", raw.to_str().unwrap(), &uri])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(250));
    drop(srv);
    let _ = std::fs::remove_file(&sock);
    std::thread::sleep(Duration::from_millis(300));
    let _srv = nbdkit_unix(&sock, &args);
    let o = child.wait_with_output().unwrap();
    if !o.status.success() {
        // Writes the dead server had acknowledged but not flushed may be lost: the client
        // says so at the flush instead of reporting success, and a rerun writes them again.
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("must be written again"), "{err}");
        let o = diskconv()
            .args(["convert", "-O", "raw", raw.to_str().unwrap(), &uri])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Writes in flight when the server died were sent again on the new connection.
    assert!(qemu_compare(&raw, "raw", &dst, "raw"));
}

#[test]
fn ntfs_put_edits_a_remote_disk_in_place() {
    if !require("qemu-nbd") || !require("mkntfs") || !require("ntfscat") {
        return;
    }
    let d = tmpdir();
    let vol = d.path().join("vol.ntfs");
    std::fs::File::create(&vol)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run(Command::new("mkntfs")
        .args([
            "-F", "-q", "-Q", "-s", "512", "-H", "0", "-S", "0", "-L", "NBD",
        ])
        .arg(&vol));
    let local = d.path().join("hello.txt");
    std::fs::write(&local, b"written over NBD\n").unwrap();
    let sock = d.path().join("n.sock");
    let srv = qemu_nbd_writable(&vol, &sock);
    let uri = unix_uri(&sock);
    // The undo journal is kept in the current folder while the commit runs.
    let o = diskconv()
        .current_dir(d.path())
        .args(["ntfs", "put", &uri, local.to_str().unwrap(), "/hello.txt"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(srv);
    let o = run(Command::new("ntfscat").arg(&vol).arg("/hello.txt"));
    assert_eq!(o.stdout, b"written over NBD\n");
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("diskconv-undo"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A read-only export is refused before anything is written.
    let _ro = qemu_nbd(&vol, "raw", &sock, &[]);
    let o = diskconv()
        .current_dir(d.path())
        .args(["ntfs", "put", &uri, local.to_str().unwrap(), "/again.txt"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("read-only"), "{err}");
}

/// A self-signed certificate (also its own CA) for localhost and 127.0.0.1, made by certtool
/// into `dir` as nbdkit's `--tls-certificates` folder wants it: `ca-cert.pem`,
/// `server-cert.pem`, `server-key.pem`.
fn certtool_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("server-key.pem");
    let cert = dir.join("server-cert.pem");
    let tmpl = dir.join("server.tmpl");
    std::fs::write(
        &tmpl,
        "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\nexpiration_days = 2\n\
         ca\ncert_signing_key\nsigning_key\nencryption_key\ntls_www_server\n",
    )
    .unwrap();
    run(Command::new("certtool")
        .args([
            "--generate-privkey",
            "--key-type",
            "rsa",
            "--sec-param",
            "medium",
        ])
        .arg("--outfile")
        .arg(&key));
    run(Command::new("certtool")
        .arg("--generate-self-signed")
        .arg("--load-privkey")
        .arg(&key)
        .arg("--template")
        .arg(&tmpl)
        .arg("--outfile")
        .arg(&cert));
    std::fs::copy(&cert, dir.join("ca-cert.pem")).unwrap();
}

#[test]
fn nbdkit_tls_x509_certificates() {
    if !require("nbdkit") || !require("certtool") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("x.raw");
    make_raw(&raw, 4 << 20, 41);
    let pki = d.path().join("pki");
    certtool_pki(&pki);
    let other = d.path().join("other");
    certtool_pki(&other);
    let port = free_port();
    let certs = format!("--tls-certificates={}", pki.display());
    let _srv = nbdkit_tcp(
        port,
        &["--tls=require", &certs, "file", raw.to_str().unwrap()],
    );
    let uri = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        pki.display()
    );
    assert!(ok(&["compare", &uri, raw.to_str().unwrap()]).contains("identical"));
    // A CA that did not sign the server's certificate: refused, saying why.
    let uri = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        other.display()
    );
    let o = dc(&["info", &uri]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("TLS handshake failed"),
        "{err}"
    );
}

/// nbdkit's `retry` filter over its `error` filter: reads that fail inside the server are
/// retried there (reopening the plugin), so the client sees slow replies but no error, and
/// the copy is exact.
#[test]
fn nbdkit_retry_filter_over_injected_errors() {
    if !require("nbdkit") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("r.raw");
    make_raw(&raw, 4 << 20, 41);
    let sock = d.path().join("r.sock");
    let _srv = nbdkit_unix(
        &sock,
        &[
            "--filter=retry",
            "--filter=error",
            "file",
            raw.to_str().unwrap(),
            "error-pread-rate=20%",
            "retries=20",
            "retry-delay=1",
            "retry-exponential=no",
        ],
    );
    let out = d.path().join("r.qcow2");
    ok(&["convert", &unix_uri(&sock), out.to_str().unwrap()]);
    assert!(qemu_compare(&raw, "raw", &out, "qcow2"));
}
