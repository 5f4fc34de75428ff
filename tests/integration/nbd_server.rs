//! `diskconv serve` against real NBD clients: nbdinfo (sizes, flags, export lists, allocation
//! and dirty-bitmap maps, compared with `qemu-img map` and with what qemu-nbd reports for the
//! same file), nbdcopy and `qemu-img convert` (the copies compared with the sources by
//! `qemu-img compare`), qemu-io writing through a writable export (the image compared with a
//! copy qemu-io changed directly), and a hand-written hostile client (exact error codes, and
//! the next client served normally).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diskconv::net::proto::{
    self, GoRequest, MetaContextRequest, OptionHeader, OptionReplyHeader, Request, cflag, cmd,
    errno, opt, rep,
};

use crate::util::{diskconv, make_raw, qemu_compare, qemu_img, qemu_io, require, tmpdir};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A `diskconv serve` on a Unix socket, killed when dropped.
struct Serve {
    child: Option<Child>,
    socket: PathBuf,
}

impl Serve {
    /// Starts `diskconv serve --socket DIR/NAME.sock ARGS` and waits until it accepts.
    fn start(dir: &Path, name: &str, args: &[&str]) -> Serve {
        let socket = dir.join(format!("{name}.sock"));
        let child = diskconv()
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting diskconv serve");
        let mut srv = Serve {
            child: Some(child),
            socket,
        };
        let t = Instant::now();
        while UnixStream::connect(&srv.socket).is_err() {
            if let Some(st) = srv.child.as_mut().unwrap().try_wait().unwrap() {
                let out = srv.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "diskconv serve {args:?} exited ({st}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(t.elapsed() < Duration::from_secs(20), "serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        srv
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// SIGTERM, then the exit code and the output.
    fn stop(mut self) -> (Option<i32>, String, String) {
        let mut c = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(20), "serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = c.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

fn ok_json(name: &str, args: &[&str]) -> serde_json::Value {
    let o = tool(name, args);
    assert!(
        o.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{name} {args:?}: {e}: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// (start, length, type) runs of an nbdinfo `--map --json`, adjacent equal types merged, with
/// `mask` applied to the types.
fn nbd_map(uri: &str, context: Option<&str>, mask: u64) -> Vec<(u64, u64, u64)> {
    let map_arg = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".to_string(),
    };
    let v = ok_json("nbdinfo", &[&map_arg, "--json", uri]);
    merge(
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["offset"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["type"].as_u64().unwrap() & mask,
                )
            })
            .collect(),
    )
}

fn merge(v: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (o, l, t) in v {
        match out.last_mut() {
            Some(last) if last.2 == t && last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l, t)),
        }
    }
    out
}

/// `qemu-img map` as NBD `base:allocation` types: data 0, allocated zeros 2 (ZERO), not
/// present 3 (HOLE|ZERO).
fn qemu_map(img: &Path, fmt: &str, mask: u64) -> Vec<(u64, u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", "-f", fmt, &s(img)])).unwrap();
    merge(
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let t = if e["data"].as_bool().unwrap() {
                    0
                } else if e["present"].as_bool().unwrap() {
                    2
                } else {
                    3
                };
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    t & mask,
                )
            })
            .collect(),
    )
}

#[test]
fn nbdinfo_reports_sizes_flags_exports_and_maps() {
    if !require("nbdinfo") || !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    // A sparse raw (holes between data), and a qcow2 with data, zero clusters and holes.
    let raw = d.join("sparse.raw");
    make_raw(&raw, 8 << 20, 3);
    let q = d.join("z.qcow2");
    qemu_img(&["create", "-f", "qcow2", &s(&q), "16M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 1M 2M",
        "-c",
        "write -z 4M 1M",
        "-c",
        "write -P 0x22 12M 64k",
        &s(&q),
    ]);
    let srv = Serve::start(
        d,
        "info",
        &[
            "--export",
            &format!("raw={}", s(&raw)),
            "--export",
            &format!("q={}", s(&q)),
        ],
    );
    // Sizes and flags.
    for (name, size) in [("raw", 8u64 << 20), ("q", 16 << 20)] {
        let v = ok_json("nbdinfo", &["--json", &srv.uri(name)]);
        let e = &v["exports"][0];
        assert_eq!(e["export-size"].as_u64(), Some(size), "{v}");
        assert_eq!(e["is_read_only"].as_bool(), Some(true), "{v}");
        assert_eq!(e["can_multi_conn"].as_bool(), Some(true), "{v}");
        assert_eq!(e["can_trim"].as_bool(), Some(false), "{v}");
        assert_eq!(v["structured"].as_bool(), Some(true), "{v}");
    }
    // The list.
    let v = ok_json("nbdinfo", &["--list", "--json", &srv.uri("")]);
    let mut names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["q", "raw"]);
    // --can: nbdinfo exits 0 for true, 2 for false.
    assert_eq!(
        tool("nbdinfo", &["--can", "read", &srv.uri("q")])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        tool("nbdinfo", &["--can", "write", &srv.uri("q")])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        tool("nbdinfo", &["--can", "multi-conn", &srv.uri("q")])
            .status
            .code(),
        Some(0)
    );
    // Maps: the qcow2's exactly (data, zero clusters, holes); the raw's data/zero split (a
    // hole of a raw file is reported as zero, qemu-img calls it allocated zeros).
    assert_eq!(nbd_map(&srv.uri("q"), None, 3), qemu_map(&q, "qcow2", 3));
    assert_eq!(nbd_map(&srv.uri("raw"), None, 2), qemu_map(&raw, "raw", 2));
    let m = nbd_map(&srv.uri("q"), None, 3);
    assert!(m.iter().any(|e| e.2 == 2) && m.iter().any(|e| e.2 == 3) && m.iter().any(|e| e.2 == 0));
    // The text lines: where it listens, then one line per connection at stop.
    let (code, out, err) = srv.stop();
    assert_eq!(code, Some(143), "{err}");
    assert!(out.starts_with("listening on unix:"), "{out}");
    assert!(
        out.contains("connection from unix:") && out.contains("export 'q', plain"),
        "{out}"
    );
}

#[test]
fn nbdinfo_dirty_bitmap_map_matches_qemu_nbd() {
    if !require("nbdinfo") || !require("qemu-nbd") || !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let q = d.join("bm.qcow2");
    qemu_img(&["create", "-f", "qcow2", &s(&q), "32M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 4M", &s(&q)]);
    qemu_img(&["bitmap", "--add", "-g", "65536", &s(&q), "b0"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 2 1M 64k",
        "-c",
        "write -P 3 8M 300k",
        "-c",
        "write -z 20M 1M",
        &s(&q),
    ]);
    let ctx = "qemu:dirty-bitmap:b0";
    let ours = {
        let srv = Serve::start(d, "bm", &["--bitmap", "b0", &s(&q)]);
        let m = nbd_map(&srv.uri(""), Some(ctx), u64::MAX);
        // base:allocation is offered next to it.
        let v = ok_json("nbdinfo", &["--json", &srv.uri("")]);
        let ctxs = v["exports"][0]["contexts"].to_string();
        assert!(
            ctxs.contains(ctx) && ctxs.contains("base:allocation"),
            "{v}"
        );
        m
    };
    let sock = d.join("qemu.sock");
    let mut qn = Command::new("qemu-nbd")
        .args(["-r", "-f", "qcow2", "-B", "b0", "--socket"])
        .arg(&sock)
        .arg(&q)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let theirs = nbd_map(
        &format!("nbd+unix:///?socket={}", sock.display()),
        Some(ctx),
        u64::MAX,
    );
    let _ = qn.kill();
    let _ = qn.wait();
    assert_eq!(ours, theirs);
    assert!(ours.iter().filter(|e| e.2 == 1).count() >= 3, "{ours:?}");
}

#[test]
fn qemu_img_and_nbdcopy_read_qcow2_vmdk_vhdx_exports() {
    if !require("nbdcopy") || !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let raw = d.join("src.raw");
    make_raw(&raw, 6 << 20, 11);
    let mut args = Vec::new();
    let mut sources = Vec::new();
    for (fmt, ext) in [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vhdx", "vhdx")] {
        let p = d.join(format!("src.{ext}"));
        qemu_img(&["convert", "-f", "raw", "-O", fmt, &s(&raw), &s(&p)]);
        args.push("--export".to_string());
        args.push(format!("{fmt}={}", s(&p)));
        sources.push((fmt, p));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = Serve::start(d, "copy", &a);
    for (fmt, p) in &sources {
        let size = qemu_img(&["info", "--output=json", &s(p)]);
        let size: serde_json::Value = serde_json::from_str(&size).unwrap();
        let size = size["virtual-size"].as_u64().unwrap();
        let out = d.join(format!("qemu-{fmt}.raw"));
        qemu_img(&["convert", "-f", "raw", &srv.uri(fmt), "-O", "raw", &s(&out)]);
        assert!(
            qemu_compare(&out, "raw", p, fmt),
            "qemu-img convert of {fmt}"
        );
        let out2 = d.join(format!("nbdcopy-{fmt}.raw"));
        std::fs::File::create(&out2).unwrap().set_len(size).unwrap();
        let o = tool("nbdcopy", &[&srv.uri(fmt), &s(&out2)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(qemu_compare(&out2, "raw", p, fmt), "nbdcopy of {fmt}");
    }
    let (_, out, _) = srv.stop();
    // Each copy read the whole data of its export: at least the raw's non-zero bytes.
    assert!(out.contains("export 'vhdx', plain, read "), "{out}");
}

/// Runs the same qemu-io commands through a writable export and directly on a copy; the two
/// images end equal.
/// qemu-io writes through a writable export (over TLS-PSK when `tls`), the same commands
/// applied directly to a copy, then the two images compared.
fn writes_through_export(fmt: &str, tls: bool) {
    let dir = tmpdir();
    let d = dir.path();
    let img = d.join(format!("w.{fmt}"));
    let raw = d.join("seed.raw");
    make_raw(&raw, 4 << 20, 5);
    qemu_img(&["convert", "-f", "raw", "-O", fmt, &s(&raw), &s(&img)]);
    let copy = d.join(format!("copy.{fmt}"));
    std::fs::copy(&img, &copy).unwrap();
    let cmds = [
        "write -P 0xaa 0 64k",
        "write -P 0xbb 100000 5000",
        "write -z 1M 300k",
        "write -z -u 2M 1M",
        "discard 3M 64k",
        "write -P 0xcc 4128768 65536",
        "flush",
        "aio_write -P 0xdd 512k 128k",
        "aio_write -P 0xee 640k 4k",
        "aio_flush",
    ];
    let mut args: Vec<String> = Vec::new();
    for c in cmds {
        args.push("-c".into());
        args.push(c.into());
    }
    // qemu's tls-creds-psk object reads DIR/keys.psk.
    let keys = d.join("keys");
    std::fs::create_dir(&keys).unwrap();
    let psk = keys.join("keys.psk");
    std::fs::write(&psk, format!("alice:{PSK_HEX}\n")).unwrap();
    let mut serve_args = vec!["--writable".to_string(), s(&img)];
    if tls {
        serve_args.splice(0..0, ["--tls-psk".to_string(), s(&psk)]);
    }
    let sa: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let srv = Serve::start(d, "w", &sa);
    let info_uri = if tls {
        format!(
            "nbds+unix://alice@/?socket={}&tls-psk-file={}",
            srv.socket.display(),
            psk.display()
        )
    } else {
        srv.uri("")
    };
    let v = ok_json("nbdinfo", &["--json", &info_uri]);
    let e = &v["exports"][0];
    assert_eq!(e["is_read_only"].as_bool(), Some(false), "{v}");
    assert_eq!(e["can_multi_conn"].as_bool(), Some(true), "{v}");
    assert_eq!(e["can_flush"].as_bool(), Some(true), "{v}");
    assert_eq!(e["can_zero"].as_bool(), Some(true), "{v}");
    let mut nbd_args = if tls {
        vec![
            "--object".to_string(),
            format!(
                "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
                keys.display()
            ),
            "--image-opts".to_string(),
        ]
    } else {
        vec!["-f".to_string(), "raw".to_string()]
    };
    nbd_args.extend(args.iter().cloned());
    nbd_args.push(if tls {
        format!(
            "driver=raw,file.driver=nbd,file.path={},file.tls-creds=tls0",
            srv.socket.display()
        )
    } else {
        srv.uri("")
    });
    let a: Vec<&str> = nbd_args.iter().map(String::as_str).collect();
    qemu_io(&a);
    // While served, another diskconv writer is refused by the lock.
    let o = diskconv()
        .args(["sync", &s(&raw), &s(&img)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another diskconv process"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (code, out, err) = srv.stop();
    assert_eq!(code, Some(143), "{err}");
    assert!(out.contains("wrote "), "{out}");
    let mut direct = vec!["-f".to_string(), fmt.to_string()];
    direct.extend(args);
    direct.push(s(&copy));
    let a: Vec<&str> = direct.iter().map(String::as_str).collect();
    qemu_io(&a);
    assert!(qemu_compare(&img, fmt, &copy, fmt), "{fmt}: images differ");
    if fmt == "qcow2" {
        crate::util::assert_qemu_check(&img);
    }
}

#[test]
fn writable_raw_export_takes_qemu_io_writes() {
    if !require("qemu-io") || !require("qemu-img") || !require("nbdinfo") {
        return;
    }
    writes_through_export("raw", false);
}

#[test]
fn writable_qcow2_export_takes_qemu_io_writes() {
    if !require("qemu-io") || !require("qemu-img") || !require("nbdinfo") {
        return;
    }
    writes_through_export("qcow2", false);
}

/// The same through a TLS-PSK export: qemu-io (GnuTLS) with a `tls-creds-psk` object.
#[test]
fn writable_qcow2_export_takes_qemu_io_writes_over_tls_psk() {
    if !require("qemu-io") || !require("qemu-img") || !require("nbdinfo") {
        return;
    }
    writes_through_export("qcow2", true);
}

// ---- A hand-written client for hostile requests ----

struct Raw {
    s: UnixStream,
}

impl Raw {
    fn connect(sock: &Path) -> Raw {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = [0u8; proto::GREETING_LEN];
        s.read_exact(&mut g).unwrap();
        assert_eq!(proto::decode_greeting(&g).unwrap() & 3, 3);
        s.write_all(&(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
        Raw { s }
    }

    fn option(&mut self, option: u32, payload: &[u8]) {
        let h = OptionHeader {
            option,
            length: payload.len() as u32,
        };
        self.s.write_all(&h.encode()).unwrap();
        self.s.write_all(payload).unwrap();
    }

    /// Reads option replies up to the final one (ACK or an error): (type, payload) of each.
    fn replies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
            self.s.read_exact(&mut h).unwrap();
            let h = OptionReplyHeader::decode(&h).unwrap();
            let mut p = vec![0u8; h.length as usize];
            self.s.read_exact(&mut p).unwrap();
            let last = h.reply_type == rep::ACK || h.is_error();
            out.push((h.reply_type, p));
            if last {
                return out;
            }
        }
    }

    fn last_reply(&mut self, option: u32, payload: &[u8]) -> u32 {
        self.option(option, payload);
        self.replies().last().unwrap().0
    }

    /// GO to `name` (with structured replies and base:allocation first when `structured`).
    fn go(&mut self, name: &str, structured: bool) {
        if structured {
            assert_eq!(self.last_reply(opt::STRUCTURED_REPLY, &[]), rep::ACK);
            let m = MetaContextRequest {
                export: name.into(),
                queries: vec![proto::BASE_ALLOCATION.into()],
            };
            assert_eq!(
                self.last_reply(opt::SET_META_CONTEXT, &m.encode()),
                rep::ACK
            );
        }
        let g = GoRequest {
            name: name.into(),
            infos: vec![],
        };
        assert_eq!(self.last_reply(opt::GO, &g.encode()), rep::ACK);
    }

    fn request(&mut self, command: u16, flags: u16, offset: u64, length: u32, data: &[u8]) {
        let r = Request {
            flags,
            command,
            cookie: 0x1234,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).unwrap();
        self.s.write_all(data).unwrap();
    }

    /// The error of a simple reply (after the data of a successful simple read).
    fn simple_error(&mut self, read_len: usize) -> u32 {
        let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h).unwrap();
        let e = u32::from_be_bytes(h[4..8].try_into().unwrap());
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            proto::SIMPLE_REPLY_MAGIC
        );
        if e == 0 && read_len > 0 {
            let mut b = vec![0u8; read_len];
            self.s.read_exact(&mut b).unwrap();
        }
        e
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn hostile_requests_get_exact_errors_and_others_are_served() {
    let dir = tmpdir();
    let d = dir.path();
    let img = d.join("h.raw");
    make_raw(&img, 1 << 20, 9);
    let srv = Serve::start(d, "hostile", &[&s(&img)]);
    let size = 1u64 << 20;

    // Negotiation: unknown option, malformed GO, unknown export, option too big, LIST with a
    // payload, meta contexts before structured replies, STARTTLS without TLS configured.
    let mut c = Raw::connect(&srv.socket);
    assert_eq!(c.last_reply(77, b"xyz"), rep::ERR_UNSUP);
    assert_eq!(c.last_reply(opt::GO, &[0, 0, 0, 9, b'a']), rep::ERR_INVALID);
    let g = GoRequest {
        name: "nope".into(),
        infos: vec![],
    };
    assert_eq!(c.last_reply(opt::GO, &g.encode()), rep::ERR_UNKNOWN);
    let big = vec![0u8; proto::MAX_OPTION_PAYLOAD as usize + 1];
    assert_eq!(c.last_reply(opt::INFO, &big), rep::ERR_TOO_BIG);
    assert_eq!(c.last_reply(opt::LIST, b"x"), rep::ERR_INVALID);
    let m = MetaContextRequest {
        export: String::new(),
        queries: vec![proto::BASE_ALLOCATION.into()],
    };
    assert_eq!(
        c.last_reply(opt::SET_META_CONTEXT, &m.encode()),
        rep::ERR_INVALID
    );
    assert_eq!(c.last_reply(opt::STARTTLS, &[]), rep::ERR_UNSUP);
    assert_eq!(c.last_reply(opt::EXTENDED_HEADERS, &[]), rep::ERR_UNSUP);
    // Then a normal GO still works on this connection.
    c.go("", false);
    // Transmission, simple replies.
    c.request(cmd::READ, 0, size - 512, 1024, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "read past the end");
    c.request(cmd::READ, 0, u64::MAX - 10, 100, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "offset overflow");
    c.request(cmd::READ, 0, 0, 0, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "length 0");
    c.request(cmd::READ, 0, 0, u32::MAX, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "huge read");
    c.request(99, 0, 0, 512, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "unknown command");
    c.request(cmd::READ, 1 << 12, 0, 512, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "unknown flag");
    c.request(cmd::READ, cflag::DF, 0, 512, &[]);
    assert_eq!(
        c.simple_error(0),
        errno::EINVAL,
        "DF without structured replies"
    );
    c.request(cmd::WRITE, 0, 0, 4, b"evil");
    assert_eq!(
        c.simple_error(0),
        errno::EPERM,
        "write to a read-only export"
    );
    c.request(cmd::TRIM, 0, 0, 4096, &[]);
    assert_eq!(
        c.simple_error(0),
        errno::EPERM,
        "trim of a read-only export"
    );
    c.request(cmd::WRITE_ZEROES, 0, 0, 4096, &[]);
    assert_eq!(
        c.simple_error(0),
        errno::EPERM,
        "zeroes on a read-only export"
    );
    c.request(cmd::BLOCK_STATUS, 0, 0, 4096, &[]);
    assert_eq!(
        c.simple_error(0),
        errno::EINVAL,
        "block status without a context"
    );
    c.request(cmd::READ, 0, 4096, 4096, &[]);
    assert_eq!(c.simple_error(4096), 0, "a good read still works");
    // A huge write: an error, and the connection is closed (its payload is not taken in).
    c.request(cmd::WRITE, 0, 0, u32::MAX, &[]);
    assert_eq!(c.simple_error(0), errno::EINVAL, "huge write");
    assert!(c.closed());

    // Bad magic in transmission: the connection is closed.
    let mut c = Raw::connect(&srv.socket);
    c.go("", true);
    c.s.write_all(&[0xde; proto::REQUEST_LEN]).unwrap();
    assert!(c.closed());
    // Bad option magic: closed.
    let mut c = Raw::connect(&srv.socket);
    c.s.write_all(&[0x55; 16]).unwrap();
    assert!(c.closed());
    // EXPORT_NAME of an unknown export: closed (no error reply exists for it).
    let mut c = Raw::connect(&srv.socket);
    c.option(opt::EXPORT_NAME, b"nope");
    assert!(c.closed());
    // Unknown client flags: closed.
    let mut c = UnixStream::connect(&srv.socket).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    c.read_exact(&mut g).unwrap();
    c.write_all(&0xffu32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));

    // Structured replies: errors come as error chunks.
    let mut c = Raw::connect(&srv.socket);
    c.go("", true);
    c.request(cmd::READ, 0, size, 512, &[]);
    let mut h = [0u8; proto::STRUCTURED_REPLY_LEN];
    c.s.read_exact(&mut h).unwrap();
    let proto::ReplyHeader::Chunk(ch) = proto::decode_reply_header(&h).unwrap() else {
        panic!("a simple reply to a structured read")
    };
    let mut p = vec![0u8; ch.length as usize];
    c.s.read_exact(&mut p).unwrap();
    match proto::decode_chunk(&ch, &p).unwrap() {
        proto::ChunkPayload::Error { error, message, .. } => {
            assert_eq!(error, errno::EINVAL);
            assert!(message.contains("past the end"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(ch.done());
    c.request(cmd::DISC, 0, 0, 0, &[]);
    assert!(c.closed());

    // After all that, a real client is served normally.
    if require("nbdinfo") {
        let v = ok_json("nbdinfo", &["--json", &srv.uri("")]);
        assert_eq!(v["exports"][0]["export-size"].as_u64(), Some(size));
    }
    let (_, out, _) = srv.stop();
    assert!(out.contains("ended by an error"), "{out}");
}

#[test]
fn serve_refuses_unsafe_or_meaningless_command_lines() {
    let dir = tmpdir();
    let d = dir.path();
    let img = d.join("u.raw");
    make_raw(&img, 1 << 20, 1);
    let cases: &[&[&str]] = &[
        &["serve", "--listen", "0.0.0.0:0", "IMG"],
        &["serve", "--writable", "--bitmap", "b0", "IMG"],
        &["serve"],
        &["serve", "--export", "noequals", "IMG"],
        &["serve", "--export", "a=IMG", "--export", "a=IMG"],
    ];
    for c in cases {
        let args: Vec<String> = c.iter().map(|a| a.replace("IMG", &s(&img))).collect();
        let o = diskconv().args(&args).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = diskconv().args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit codes:"));
    // --bitmap on a raw image: a failure naming the image.
    let o = diskconv()
        .args(["serve", "--bitmap", "b0", "--socket"])
        .arg(d.join("x.sock"))
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("u.raw"));
}

#[test]
fn once_exits_after_the_client_and_a_tcp_port_is_printed() {
    if !require("nbdinfo") {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("o.raw");
    make_raw(&img, 1 << 20, 2);
    let mut child = diskconv()
        .args(["serve", "--once", "--json", "--listen", "127.0.0.1:0"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["event"], "listening");
    let uri = v["uri"].as_str().unwrap().to_string();
    assert!(uri.starts_with("nbd://127.0.0.1:"), "{uri}");
    let info = ok_json("nbdinfo", &["--json", &uri]);
    assert_eq!(info["exports"][0]["export-size"].as_u64(), Some(1 << 20));
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "--once did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(0));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let v: serde_json::Value = serde_json::from_str(rest.lines().next().unwrap()).unwrap();
    assert_eq!(v["event"], "disconnected");
    assert_eq!(v["tls"], false);
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

// ---- TLS ----

const PSK_HEX: &str = "8a3b0c9e5f1d2a4b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d";

#[test]
fn tls_psk_serves_nbds_clients_and_refuses_plain_ones_and_downgrades() {
    if !require("nbdinfo") || !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let img = d.join("t.qcow2");
    let raw = d.join("t.raw");
    make_raw(&raw, 2 << 20, 4);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &s(&raw), &s(&img)]);
    let psk = d.join("keys.psk");
    std::fs::write(&psk, format!("alice:{PSK_HEX}\n")).unwrap();
    let srv = Serve::start(d, "tls", &["--tls-psk", &s(&psk), &s(&img)]);
    let tls_uri = format!(
        "nbds+unix://alice@/?socket={}&tls-psk-file={}",
        srv.socket.display(),
        psk.display()
    );
    let v = ok_json("nbdinfo", &["--json", &tls_uri]);
    assert_eq!(v["TLS"].as_bool(), Some(true), "{v}");
    assert_eq!(v["exports"][0]["export-size"].as_u64(), Some(2 << 20));
    // The data over TLS equals the image.
    if require("nbdcopy") {
        let out = d.join("copy.raw");
        std::fs::File::create(&out)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let o = tool("nbdcopy", &[&tls_uri, &s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(qemu_compare(&out, "raw", &img, "qcow2"));
    }
    // A plain client is refused.
    let o = tool("nbdinfo", &["--json", &srv.uri("")]);
    assert!(
        !o.status.success(),
        "plain nbdinfo was served over a TLS-only server"
    );
    // Downgrade attempts by hand: every option but STARTTLS/ABORT before TLS is refused.
    let mut c = Raw::connect(&srv.socket);
    let g = GoRequest {
        name: String::new(),
        infos: vec![],
    };
    assert_eq!(c.last_reply(opt::GO, &g.encode()), rep::ERR_TLS_REQD);
    assert_eq!(c.last_reply(opt::INFO, &g.encode()), rep::ERR_TLS_REQD);
    assert_eq!(c.last_reply(opt::LIST, &[]), rep::ERR_TLS_REQD);
    assert_eq!(c.last_reply(opt::STRUCTURED_REPLY, &[]), rep::ERR_TLS_REQD);
    assert_eq!(c.last_reply(opt::STARTTLS, b"junk"), rep::ERR_INVALID);
    // EXPORT_NAME before TLS: the connection is closed.
    c.option(opt::EXPORT_NAME, b"");
    assert!(c.closed());
    // A TLS client is still served afterwards.
    let v = ok_json("nbdinfo", &["--json", &tls_uri]);
    assert_eq!(v["TLS"].as_bool(), Some(true), "{v}");
    let (_, out, _) = srv.stop();
    assert!(out.contains(", TLS, "), "{out}");
    assert!(out.contains("before TLS"), "{out}");
    // A wrong key fails the handshake (and does not stop the server: tested above by the
    // clients that followed the refused ones).
    let bad = d.join("bad.psk");
    std::fs::write(&bad, "alice:00112233445566778899aabbccddeeff\n").unwrap();
    let srv = Serve::start(d, "tls2", &["--tls-psk", &s(&psk), &s(&img)]);
    let o = tool(
        "nbdinfo",
        &[&format!(
            "nbds+unix://alice@/?socket={}&tls-psk-file={}",
            srv.socket.display(),
            bad.display()
        )],
    );
    assert!(!o.status.success());
    let v = ok_json(
        "nbdinfo",
        &["--json", &tls_uri.replace("tls.sock", "tls2.sock")],
    );
    assert_eq!(v["TLS"].as_bool(), Some(true), "{v}");
}

#[test]
fn tls_x509_certificate_serves_nbdinfo_over_tcp() {
    if !require("nbdinfo") || !require("certtool") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let img = d.join("x.raw");
    make_raw(&img, 1 << 20, 6);
    // A self-signed certificate for localhost (its own CA), made by certtool.
    let key = d.join("server-key.pem");
    let certs = d.join("certs");
    std::fs::create_dir(&certs).unwrap();
    let cert = certs.join("ca-cert.pem");
    let tmpl = d.join("server.tmpl");
    std::fs::write(
        &tmpl,
        "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\nexpiration_days = 2\n\
         ca\ncert_signing_key\nsigning_key\nencryption_key\ntls_www_server\n",
    )
    .unwrap();
    crate::util::run(
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
    crate::util::run(
        Command::new("certtool")
            .arg("--generate-self-signed")
            .arg("--load-privkey")
            .arg(&key)
            .arg("--template")
            .arg(&tmpl)
            .arg("--outfile")
            .arg(&cert),
    );
    let mut child = diskconv()
        .args(["serve", "--json", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let addr = v["address"].as_str().unwrap().to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let uri = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        certs.display()
    );
    let o = tool("nbdinfo", &["--json", &uri]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["TLS"].as_bool(), Some(true), "{v}");
    assert_eq!(v["exports"][0]["export-size"].as_u64(), Some(1 << 20));
}
