//! Push sync over NBD under faults: `diskconv sync SRC nbd+unix://...` into a writable
//! `diskconv serve` (and into qemu-nbd), with the sync process killed, the server killed and
//! restarted, and connections cut by a proxy at random moments; every round resumes and ends
//! with a target equal to the source (qemu-img compare through the server, and on the file once
//! the server is gone). Also `convert` from NBD with the server killed mid-copy.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{Rng, diskconv, make_raw, qemu_img, require, tmpdir};

/// A server process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(sock: &Path, child: &mut Child) {
    let start = Instant::now();
    loop {
        if UnixStream::connect(sock).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before listening on {}: {st}", sock.display());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `diskconv serve --writable --socket SOCK IMAGE`.
fn serve_writable(sock: &Path, image: &Path) -> Proc {
    let _ = std::fs::remove_file(sock);
    let mut c = diskconv()
        .args(["serve", "--writable", "--socket"])
        .arg(sock)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(sock, &mut c);
    Proc(c)
}

/// `qemu-nbd -f qcow2 -k SOCK IMAGE` (writable; the peer implementation of the target side).
fn qemu_nbd_writable(sock: &Path, image: &Path) -> Proc {
    let _ = std::fs::remove_file(sock);
    let mut c = Command::new("qemu-nbd")
        .args([
            "-f",
            "qcow2",
            "--persistent",
            "--shared=8",
            "--cache=writeback",
            "-k",
        ])
        .arg(sock)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(sock, &mut c);
    Proc(c)
}

fn uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// A Unix-socket proxy that forwards every connection to `upstream`, counts the bytes each way
/// and can cut every open connection at once.
struct Proxy {
    path: PathBuf,
    to_server: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(path: &Path, upstream: &Path) -> Proxy {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        let to_server = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (up, ts, cs, st) = (
            upstream.to_path_buf(),
            to_server.clone(),
            conns.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = c else { continue };
                let Ok(server) = UnixStream::connect(&up) else {
                    continue;
                };
                {
                    let mut g = cs.lock().unwrap();
                    g.push(client.try_clone().unwrap());
                    g.push(server.try_clone().unwrap());
                }
                let pump = |mut a: UnixStream, mut b: UnixStream, n: Option<Arc<AtomicU64>>| {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 256 << 10];
                        loop {
                            match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => {
                                    if b.write_all(&buf[..k]).is_err() {
                                        break;
                                    }
                                    if let Some(n) = &n {
                                        n.fetch_add(k as u64, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        let _ = a.shutdown(std::net::Shutdown::Both);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(ts.clone()),
                );
                pump(server, client, None);
            }
        });
        Proxy {
            path: path.to_path_buf(),
            to_server,
            conns,
            stop,
        }
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = UnixStream::connect(&self.path);
    }
}

/// Changes `n` random 64 KiB blocks of the raw file at `path` (a live source between passes).
fn mutate(path: &Path, rng: &mut Rng, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let blocks = f.metadata().unwrap().len() / 65536;
    for _ in 0..n {
        let b = rng.below(blocks);
        let data = if rng.below(4) == 0 {
            vec![0u8; 65536]
        } else {
            rng.bytes(65536)
        };
        f.write_all_at(&data, b * 65536).unwrap();
    }
}

fn sync_cmd(src: &Path, target: &str, state: &Path) -> Command {
    let mut c = diskconv();
    c.arg("sync")
        .arg(src)
        .arg(target)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs a sync to completion, retrying after failures the faults caused (at most `tries`).
fn sync_until_ok(src: &Path, target: &str, state: &Path, tries: usize) {
    let mut last = String::new();
    for _ in 0..tries {
        let o = sync_cmd(src, target, state).output().unwrap();
        if o.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        // A fault may leave the server restarting: give it a moment.
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sync to {target} did not complete after {tries} runs: {last}");
}

fn compare_through(src: &Path, sock: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(src)
        .arg(uri(sock))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "source and target differ through the server: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn compare_files(src: &Path, dst: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "source and target differ: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let chk = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        chk.status.success(),
        "qemu-img check of the target: {}",
        String::from_utf8_lossy(&chk.stdout)
    );
}

/// Dozens of rounds of push sync into `diskconv serve --writable`, each with one fault at a
/// random moment: the sync process killed, the server killed (and restarted), or the
/// connection cut. Between rounds the source changes like a live disk.
#[test]
fn push_sync_resumes_after_kills_and_cuts() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    let dst = d.path().join("dst.qcow2");
    let ssock = d.path().join("server.sock");
    let psock = d.path().join("proxy.sock");
    let state = d.path().join("web01.dcsync");
    const SIZE: u64 = 24 << 20;
    make_raw(&src, SIZE, 77);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        dst.to_str().unwrap(),
        &SIZE.to_string(),
    ]);
    let mut server = Some(serve_writable(&ssock, &dst));
    let proxy = Proxy::start(&psock, &ssock);
    let target = uri(&psock);
    let mut rng = Rng::new(0x005e_ed15);
    let rounds = 30;
    for round in 0..rounds {
        if round > 0 {
            let n = 1 + rng.below(40) as usize;
            mutate(&src, &mut rng, n);
        }
        let mut child = sync_cmd(&src, &target, &state).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        match round % 3 {
            0 => {
                let _ = child.kill();
            }
            1 => {
                drop(server.take());
                std::thread::sleep(Duration::from_millis(rng.below(200)));
                server = Some(serve_writable(&ssock, &dst));
            }
            _ => proxy.cut(),
        }
        let _ = child.wait();
        eprintln!("round {round}: fault {}", round % 3);
        sync_until_ok(&src, &target, &state, 6);
        compare_through(&src, &ssock);
    }
    drop(server.take());
    drop(proxy);
    compare_files(&src, &dst);
}

/// The same push sync into qemu-nbd (the field's usual target-side server): kills of the sync
/// process and connection cuts, then a comparison on the file.
#[test]
fn push_sync_into_qemu_nbd_resumes() {
    if !require("qemu-img") || !require("qemu-nbd") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    let dst = d.path().join("dst.qcow2");
    let ssock = d.path().join("qemu.sock");
    let psock = d.path().join("proxy.sock");
    let state = d.path().join("db01.dcsync");
    const SIZE: u64 = 16 << 20;
    make_raw(&src, SIZE, 5);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        dst.to_str().unwrap(),
        &SIZE.to_string(),
    ]);
    let server = qemu_nbd_writable(&ssock, &dst);
    let proxy = Proxy::start(&psock, &ssock);
    let target = uri(&psock);
    let mut rng = Rng::new(99);
    for round in 0..12 {
        if round > 0 {
            let n = 1 + rng.below(30) as usize;
            mutate(&src, &mut rng, n);
        }
        let mut child = sync_cmd(&src, &target, &state).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        if round % 2 == 0 {
            let _ = child.kill();
        } else {
            proxy.cut();
        }
        let _ = child.wait();
        sync_until_ok(&src, &target, &state, 6);
        compare_through(&src, &ssock);
    }
    // Only the changed blocks cross the socket in an incremental pass.
    mutate(&src, &mut rng, 8);
    let before = proxy.to_server.load(Ordering::Relaxed);
    sync_until_ok(&src, &target, &state, 1);
    let sent = proxy.to_server.load(Ordering::Relaxed) - before;
    assert!(
        sent <= 8 * 65536 + 64 * 1024,
        "an incremental pass with at most 8 changed blocks sent {sent} bytes"
    );
    // --until-converged over the network: passes until one changes fewer than 4 blocks.
    mutate(&src, &mut rng, 20);
    let o = sync_cmd(&src, &target, &state)
        .args(["--until-converged", "--max-changed", "4", "--interval", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    compare_through(&src, &ssock);
    drop(proxy);
    drop(server);
    compare_files(&src, &dst);
}

/// `convert` from an NBD source while the server is killed and restarted: the run either
/// completes (the client reconnected) or fails leaving nothing under the output name; a rerun
/// gives an output equal to the source.
#[test]
fn convert_from_nbd_survives_server_restarts() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.qcow2");
    let raw = d.path().join("src.raw");
    let sock = d.path().join("s.sock");
    make_raw(&raw, 32 << 20, 3);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let mut rng = Rng::new(4);
    for round in 0..12 {
        let out = d.path().join(format!("out{round}.qcow2"));
        let mut server = Some(serve_read_only(&sock, &src));
        let mut child = diskconv()
            .args(["convert", "-O", "qcow2"])
            .arg(uri(&sock))
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(80)));
        drop(server.take());
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        server = Some(serve_read_only(&sock, &src));
        let st = child.wait().unwrap();
        if !st.success() {
            assert!(
                !out.exists(),
                "a failed convert left {} under its final name",
                out.display()
            );
            let o = diskconv()
                .args(["convert", "-O", "qcow2"])
                .arg(uri(&sock))
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        drop(server);
        let c = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&out)
            .output()
            .unwrap();
        assert!(c.status.success(), "round {round}: output differs");
        std::fs::remove_file(&out).unwrap();
    }
}

fn serve_read_only(sock: &Path, image: &Path) -> Proc {
    let _ = std::fs::remove_file(sock);
    let mut c = diskconv()
        .args(["serve", "--socket"])
        .arg(sock)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(sock, &mut c);
    Proc(c)
}
