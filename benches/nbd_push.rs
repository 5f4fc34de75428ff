//! `cargo bench --bench nbd_push -- [--size 1G] [--workdir DIR] [--json FILE] [--change-pct P]
//! [--link-mbit N]`
//!
//! Push sync over NBD, as a physical-to-cloud migration runs it: the benchmark image (see
//! `common/source.rs`) as a raw source, pushed by `diskconv sync SRC nbd+unix:///...` into a
//! qcow2 served writable, through an in-process proxy that counts the bytes crossing the socket
//! in each direction. One full pass, then P % of the 64 KiB blocks rewritten in the source and
//! an incremental pass. The same sequence runs against two target-side servers: `diskconv
//! serve --writable` and `qemu-nbd` (the peer). Prints seconds, MB/s, CPU, peak RSS of each
//! `diskconv sync` child, bytes moved over the socket per pass (both directions, headers
//! included), and the two aims of the issue: bytes moved in the incremental pass / changed
//! bytes (aim <= 1.05) and incremental / full pass time (aim <= 5 %). The target is compared
//! with the source (`qemu-img compare` through the server) after each pass.
//!
//! Each sequence runs twice: over the bare Unix socket, and with the proxy holding each
//! direction to 1000 Mbit/s, the link a migration usually has between datacenters (`--link-mbit
//! N` runs one link only; 0 is the bare socket). On the bare socket the full pass is bound by
//! the target's disk and the incremental pass by reading the source from the page cache, so
//! their ratio measures this machine's memory against its disk rather than the protocol.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::measure::{self, Measured};
use common::source;
use common::{io_err, target_dir};
use diskconv::util::{human_bytes, parse_size};
use serde_json::json;

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");
const BS: u64 = 65536;

struct Args {
    size: u64,
    workdir: PathBuf,
    json: PathBuf,
    change_pct: f64,
    /// Link speeds to run, Mbit/s per direction (0: the bare socket).
    links: Vec<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        workdir: target_dir().join("bench-work"),
        json: target_dir().join("bench-nbd-push-results.json"),
        change_pct: 1.0,
        links: vec![0, 1000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--size" => {
                let v = value("--size")?;
                a.size = parse_size(&v).ok_or(format!("bad --size {v} (e.g. 256M, 2G)"))?;
                if a.size < 16 << 20 {
                    return Err("--size must be at least 16M".into());
                }
            }
            "--workdir" => a.workdir = value("--workdir")?.into(),
            "--json" => a.json = value("--json")?.into(),
            "--change-pct" => {
                let v = value("--change-pct")?;
                a.change_pct = v
                    .parse()
                    .ok()
                    .filter(|p: &f64| *p > 0.0 && *p <= 50.0)
                    .ok_or(format!("bad --change-pct {v} (0 < P <= 50)"))?;
            }
            "--link-mbit" => {
                let v = value("--link-mbit")?;
                a.links = vec![v.parse().map_err(|_| format!("bad --link-mbit {v}"))?];
            }
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other}\nusage: cargo bench --bench nbd_push -- \
                     [--size 1G] [--workdir DIR] [--json FILE] [--change-pct P] [--link-mbit N]"
                ));
            }
        }
    }
    Ok(a)
}

/// A server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: a writable export flushes on a clean stop.
        // SAFETY: our own child's pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(kind: &str, sock: &Path, image: &Path) -> std::io::Result<Server> {
    let _ = fs::remove_file(sock);
    let mut cmd = match kind {
        "diskconv serve" => {
            let mut c = Command::new(DISKCONV);
            c.args(["serve", "--writable", "--socket"])
                .arg(sock)
                .arg(image);
            c
        }
        _ => {
            let mut c = Command::new("qemu-nbd");
            c.args(["-f", "qcow2", "--persistent", "--cache=writeback", "-k"])
                .arg(sock)
                .arg(image);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(io_err(format!("{kind} exited before listening: {st}")));
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err(io_err(format!("{kind} did not listen")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Server(child))
}

/// Bytes a proxy forwarded: client -> server, server -> client.
type Counters = Arc<(AtomicU64, AtomicU64)>;

/// Forwards connections from `listen` to `upstream`, counting the bytes each way and, with a
/// `link` speed (bytes/s), holding each direction to it.
fn proxy(listen: &Path, upstream: &Path, link: Option<f64>) -> std::io::Result<Counters> {
    let _ = fs::remove_file(listen);
    let l = UnixListener::bind(listen)?;
    let sent: Counters = Arc::default();
    let (up, counter) = (upstream.to_path_buf(), sent.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { continue };
            let Ok(server) = UnixStream::connect(&up) else {
                continue;
            };
            let pump = |mut a: UnixStream, mut b: UnixStream, n: Counters, up: bool| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 << 10];
                    let mut free_at = Instant::now();
                    while let Ok(k) = a.read(&mut buf) {
                        if k == 0 || b.write_all(&buf[..k]).is_err() {
                            break;
                        }
                        let c = if up { &n.0 } else { &n.1 };
                        c.fetch_add(k as u64, Ordering::Relaxed);
                        // The link carries these bytes once it is free, at its rate (idle
                        // time is not saved up); the next read waits until they are through.
                        if let Some(rate) = link {
                            let now = Instant::now();
                            free_at = free_at.max(now) + Duration::from_secs_f64(k as f64 / rate);
                            std::thread::sleep(free_at - now);
                        }
                    }
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            pump(c2, s2, counter.clone(), true);
            pump(server, client, counter.clone(), false);
        }
    });
    Ok(sent)
}

/// Rewrites `pct` % of the 64 KiB blocks of the raw file with new pseudo-random data.
fn change_blocks(raw: &Path, size: u64, pct: f64, seed: u64) -> std::io::Result<u64> {
    let blocks = size / BS;
    let want = ((blocks as f64 * pct / 100.0) as u64).max(1);
    let mut rng = source::Rng::new(seed);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < want {
        picked.insert(rng.next_u64() % blocks);
    }
    let f = fs::OpenOptions::new().write(true).open(raw)?;
    let mut buf = vec![0u8; BS as usize];
    for b in &picked {
        for w in buf.chunks_mut(8) {
            w.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        f.write_all_at(&buf, b * BS)?;
    }
    f.sync_all()?;
    Ok(want)
}

fn compare(src: &Path, sock: &Path) -> std::io::Result<()> {
    measure::output(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(src)
            .arg(format!("nbd+unix:///?socket={}", sock.display())),
    )
    .map(|_| ())
}

struct Sequence {
    full: Measured,
    incr: Measured,
    full_sent: u64,
    incr_sent: u64,
    changed: u64,
}

fn sequence(
    kind: &str,
    raw: &Path,
    size: u64,
    pct: f64,
    link: Option<f64>,
    out: &Path,
) -> std::io::Result<Sequence> {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let src = out.join("src.raw");
    let dst = out.join("dst.qcow2");
    let ssock = out.join("server.sock");
    let psock = out.join("proxy.sock");
    let state = out.join("push.dcsync");
    // A private copy: the incremental pass changes it.
    measure::output(Command::new("cp").arg("--sparse=always").arg(raw).arg(&src))?;
    measure::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&dst)
            .arg(size.to_string()),
    )?;
    let server = start_server(kind, &ssock, &dst)?;
    let sent = proxy(&psock, &ssock, link)?;
    let uri = format!("nbd+unix:///?socket={}", psock.display());
    let moved = || sent.0.load(Ordering::Relaxed) + sent.1.load(Ordering::Relaxed);
    let run = |log: &str| -> std::io::Result<(Measured, u64)> {
        source::warm_cache(&src)?;
        // Both directions: the blocks sent, and what the client reads back (the sample of
        // target blocks it checks), with every request and reply header.
        let before = moved();
        let mut cmd = Command::new(DISKCONV);
        cmd.arg("sync")
            .arg(&src)
            .arg(&uri)
            .arg("--state")
            .arg(&state);
        let m = measure::run(&mut cmd, &out.join(log))?;
        if let Some(e) = &m.error {
            return Err(io_err(format!("diskconv sync into {kind} failed: {e}")));
        }
        Ok((m, moved() - before))
    };
    eprintln!("{kind}: full pass ...");
    let (full, full_sent) = run("full.log")?;
    compare(&src, &ssock)?;
    let changed = change_blocks(&src, size, pct, 21)?;
    eprintln!("{kind}: incremental pass ({changed} blocks changed) ...");
    let (incr, incr_sent) = run("incr.log")?;
    compare(&src, &ssock)?;
    drop(server);
    let _ = fs::remove_dir_all(out);
    Ok(Sequence {
        full,
        incr,
        full_sent,
        incr_sent,
        changed,
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench nbd_push: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> std::io::Result<()> {
    let args = parse_args().map_err(io_err)?;
    fs::create_dir_all(&args.workdir)?;
    let img = source::source_image(&args.workdir, args.size)?;
    let size = img.virtual_size;
    let mb = |s: f64| size as f64 / 1e6 / s;
    println!(
        "push sync over NBD (Unix socket) on {} ({}, {} allocated), {} % of 64 KiB blocks \
         changed",
        source::size_tag(size),
        img.content,
        human_bytes(img.allocated),
        args.change_pct
    );
    println!(
        "{:<16} {:<10} {:<12} {:>8} {:>9} {:>8} {:>10} {:>12} {:>10}",
        "server", "link", "pass", "wall s", "MB/s", "CPU s", "peak RSS", "moved", "moved/chg"
    );
    let mut results = Vec::new();
    let runs = args
        .links
        .iter()
        .flat_map(|&l| ["diskconv serve", "qemu-nbd"].map(|k| (l, k)));
    for (mbit, kind) in runs {
        let link = (mbit > 0).then(|| mbit as f64 * 1e6 / 8.0);
        let link_name = if mbit > 0 {
            format!("{mbit} Mbit")
        } else {
            "socket".to_string()
        };
        let s = sequence(
            kind,
            &img.path,
            size,
            args.change_pct,
            link,
            &args.workdir.join("nbd-push"),
        )?;
        let changed_bytes = s.changed * BS;
        let sent_ratio = s.incr_sent as f64 / changed_bytes as f64;
        let time_ratio = s.incr.wall_s / s.full.wall_s;
        for (name, m, sent, ratio) in [
            ("full", &s.full, s.full_sent, String::new()),
            (
                "incremental",
                &s.incr,
                s.incr_sent,
                format!("{sent_ratio:.3}x"),
            ),
        ] {
            println!(
                "{:<16} {:<10} {:<12} {:>8.2} {:>9.0} {:>8.2} {:>10} {:>12} {:>10}",
                kind,
                link_name,
                name,
                m.wall_s,
                mb(m.wall_s),
                m.cpu_s(),
                human_bytes(m.max_rss),
                human_bytes(sent),
                ratio
            );
        }
        println!(
            "{kind} ({link_name}): incremental moved {:.3}x the changed bytes over the socket, both ways (aim \
             <= 1.05x); incremental / full = {:.1} % (aim <= 5 %)",
            sent_ratio,
            time_ratio * 100.0
        );
        results.push(json!({
            "server": kind,
            "link_mbit": mbit,
            "full": s.full,
            "incremental": s.incr,
            "full_moved_bytes": s.full_sent,
            "incremental_moved_bytes": s.incr_sent,
            "changed_blocks": s.changed,
            "changed_bytes": changed_bytes,
            "ratio_moved_changed": sent_ratio,
            "ratio_incremental_full": time_ratio,
        }));
    }
    let j = json!({
        "size": size,
        "content": img.content,
        "change_pct": args.change_pct,
        "results": results,
    });
    fs::write(
        &args.json,
        serde_json::to_string_pretty(&j).map_err(io_err)?,
    )?;
    eprintln!("results in {}", args.json.display());
    Ok(())
}
