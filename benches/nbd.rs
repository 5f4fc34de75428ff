//! `cargo bench --bench nbd -- [--size 1G] [--workdir DIR] [--json FILE] [--runs N]`
//!
//! Loopback NBD read throughput: `diskconv serve` against `qemu-nbd -r -f qcow2`, both serving
//! the same qcow2 image (the benchmark image of `common/source.rs`, converted by qemu-img) on a
//! Unix socket, read whole by `nbdcopy ... null:` (libnbd's copier: block status first, then
//! reads of the data extents with many requests in flight). Two client set-ups: nbdcopy's
//! default (several connections when the server allows multi-conn) and one connection. Printed:
//! wall seconds and MB/s of virtual disk for nbdcopy, CPU seconds and peak RSS of the server
//! (from `wait4` after it was stopped), and diskconv / qemu-nbd ratios. Before the runs, each
//! server's export is compared with the image by `qemu-img compare` over NBD.

mod common;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::measure::{self, Measured};
use common::source;
use common::{io_err, target_dir};
use diskconv::util::{human_bytes, parse_size};
use serde_json::json;

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");

struct Args {
    size: u64,
    workdir: PathBuf,
    json: PathBuf,
    runs: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        workdir: target_dir().join("bench-work"),
        json: target_dir().join("bench-nbd-results.json"),
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--size" => {
                let v = value("--size")?;
                a.size = parse_size(&v).ok_or(format!("bad --size {v} (e.g. 256M, 1G)"))?;
                if a.size < 16 << 20 {
                    return Err("--size must be at least 16M".into());
                }
            }
            "--workdir" => a.workdir = value("--workdir")?.into(),
            "--json" => a.json = value("--json")?.into(),
            "--runs" => {
                let v = value("--runs")?;
                a.runs = v.parse().ok().filter(|&n| n > 0).ok_or("bad --runs")?;
            }
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other}\nusage: cargo bench --bench nbd -- [--size 1G] \
                     [--workdir DIR] [--json FILE] [--runs N]"
                ));
            }
        }
    }
    Ok(a)
}

/// A server child process on a Unix socket.
struct Server {
    child: Option<Child>,
    socket: PathBuf,
}

impl Server {
    fn start(which: &str, img: &Path, socket: &Path, log: &Path) -> std::io::Result<Server> {
        let _ = fs::remove_file(socket);
        let mut cmd = if which == "diskconv" {
            let mut c = Command::new(DISKCONV);
            c.arg("serve").arg("--socket").arg(socket).arg(img);
            c
        } else {
            // -e: as many clients as nbdcopy opens connections; -r advertises multi-conn.
            let mut c = Command::new("qemu-nbd");
            c.args(["-r", "-f", "qcow2", "-e", "16", "--socket"])
                .arg(socket)
                .arg(img);
            c
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log)?)
            .spawn()?;
        let mut s = Server {
            child: Some(child),
            socket: socket.to_path_buf(),
        };
        let t = Instant::now();
        while UnixStream::connect(socket).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                return Err(io_err(format!("{which} did not start listening")));
            }
            if let Some(c) = s.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    return Err(io_err(format!(
                        "{which} exited ({st}): {}",
                        fs::read_to_string(log).unwrap_or_default()
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// SIGTERM, then its CPU time and peak RSS from `wait4`: (user s, sys s, max rss bytes).
    fn stop(mut self) -> std::io::Result<(f64, f64, u64)> {
        let child = self.child.take().ok_or_else(|| io_err("no child"))?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; zeroed is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: valid pointers to locals; the pid is our own child, reaped here.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if r == pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        drop(child);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok((
            tv(ru.ru_utime),
            tv(ru.ru_stime),
            (ru.ru_maxrss as u64) * 1024,
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Run {
    server: &'static str,
    client: &'static str,
    copy: Measured,
    server_cpu_s: f64,
    server_rss: u64,
}

fn one_run(
    which: &'static str,
    client: &'static str,
    conns: &[&str],
    img: &Path,
    work: &Path,
) -> std::io::Result<Run> {
    source::warm_cache(img)?;
    let sock = work.join(format!("{which}.sock"));
    let srv = Server::start(which, img, &sock, &work.join(format!("{which}.log")))?;
    let mut cmd = Command::new("nbdcopy");
    cmd.args(conns).arg(srv.uri()).arg("null:");
    let copy = measure::run(&mut cmd, &work.join("nbdcopy.log"))?;
    let (u, s, rss) = srv.stop()?;
    if let Some(e) = &copy.error {
        return Err(io_err(format!("nbdcopy from {which} failed: {e}")));
    }
    Ok(Run {
        server: which,
        client,
        copy,
        server_cpu_s: u + s,
        server_rss: rss,
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench nbd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> std::io::Result<()> {
    let a = parse_args().map_err(io_err)?;
    for t in ["qemu-img", "qemu-nbd", "nbdcopy"] {
        if Command::new(t).arg("--version").output().is_err() {
            return Err(io_err(format!("{t} is needed (qemu-utils, libnbd-bin)")));
        }
    }
    fs::create_dir_all(&a.workdir)?;
    let src = source::source_image(&a.workdir, a.size)?;
    let img = a
        .workdir
        .join(format!("nbd-{}.qcow2", source::size_tag(a.size)));
    if !img.exists() {
        let tmp = img.with_extension("qcow2.tmp");
        measure::output(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&src.path)
                .arg(&tmp),
        )?;
        fs::rename(&tmp, &img)?;
    }
    let work = a.workdir.join("nbd");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let qv = measure::output(Command::new("qemu-nbd").arg("--version"))?;
    let nv = measure::output(Command::new("nbdcopy").arg("--version"))?;
    println!(
        "nbd bench: {} qcow2 ({}; {} allocated in the raw source), {} runs, best kept",
        human_bytes(a.size),
        src.content,
        human_bytes(src.allocated),
        a.runs
    );
    println!(
        "  {} / {}",
        qv.lines().next().unwrap_or("").trim(),
        nv.lines().next().unwrap_or("").trim()
    );
    // Each server's export must read as the image.
    for which in ["diskconv", "qemu-nbd"] {
        let sock = work.join(format!("{which}.sock"));
        let srv = Server::start(which, &img, &sock, &work.join(format!("{which}.log")))?;
        measure::output(
            Command::new("qemu-img")
                .args(["compare", "-f", "qcow2", "-F", "raw"])
                .arg(&img)
                .arg(srv.uri()),
        )
        .map_err(|e| io_err(format!("{which}'s export differs from the image: {e}")))?;
        srv.stop()?;
    }
    let clients: [(&'static str, &[&str]); 2] = [
        ("nbdcopy (default)", &[]),
        ("nbdcopy --connections=1", &["--connections=1"]),
    ];
    let mut best: Vec<Run> = Vec::new();
    let mut all = Vec::new();
    for (client, conns) in clients {
        for which in ["diskconv", "qemu-nbd"] {
            // Warm-up, unmeasured.
            one_run(which, client, conns, &img, &work)?;
        }
        let mut b: [Option<Run>; 2] = [None, None];
        for r in 0..a.runs {
            let order: [(usize, &'static str); 2] = if r % 2 == 0 {
                [(0, "diskconv"), (1, "qemu-nbd")]
            } else {
                [(1, "qemu-nbd"), (0, "diskconv")]
            };
            for (i, which) in order {
                let run = one_run(which, client, conns, &img, &work)?;
                all.push(json!({
                    "server": which, "client": client, "wall_s": run.copy.wall_s,
                    "client_cpu_s": run.copy.cpu_s(),
                    "server_cpu_s": run.server_cpu_s, "server_max_rss": run.server_rss,
                }));
                if b[i]
                    .as_ref()
                    .is_none_or(|x| run.copy.wall_s < x.copy.wall_s)
                {
                    b[i] = Some(run);
                }
            }
        }
        best.extend(b.into_iter().flatten());
    }
    println!("\n| client | server | wall s | MB/s | server CPU s | server peak RSS | t ratio |");
    println!("|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for pair in best.chunks(2) {
        let [d, q] = pair else { continue };
        for r in [d, q] {
            let ratio = if r.server == "diskconv" {
                format!("{:.2}", d.copy.wall_s / q.copy.wall_s)
            } else {
                String::new()
            };
            println!(
                "| {} | {} | {:.2} | {:.0} | {:.2} | {} | {} |",
                r.client,
                r.server,
                r.copy.wall_s,
                a.size as f64 / r.copy.wall_s / 1e6,
                r.server_cpu_s,
                human_bytes(r.server_rss),
                ratio
            );
        }
        ratios.push(json!({
            "client": d.client,
            "wall_diskconv_over_qemu_nbd": d.copy.wall_s / q.copy.wall_s,
            "cpu_diskconv_over_qemu_nbd": d.server_cpu_s / q.server_cpu_s,
        }));
    }
    let out = json!({
        "size": a.size,
        "source": src.content,
        "runs": all,
        "best": best.iter().map(|r| json!({
            "server": r.server, "client": r.client, "wall_s": r.copy.wall_s,
            "mb_s": a.size as f64 / r.copy.wall_s / 1e6,
            "server_cpu_s": r.server_cpu_s, "server_max_rss": r.server_rss,
        })).collect::<Vec<_>>(),
        "ratios": ratios,
    });
    fs::write(&a.json, serde_json::to_string_pretty(&out).map_err(io_err)?)?;
    println!("\nJSON: {}", a.json.display());
    let _ = fs::remove_dir_all(&work);
    Ok(())
}
