//! `cargo bench --bench nbd_client -- [--size 1G] [--workdir DIR] [--json FILE] [--keep]`
//!
//! The NBD client against qemu-img's: one `qemu-nbd -r` server on a Unix socket serves the
//! benchmark image (see `common/source.rs`, raw), and `diskconv convert nbd+unix:///... out.qcow2`
//! and `qemu-img convert -O qcow2 nbd+unix:///... out.qcow2` read it in turn (a warm-up run of
//! each first, then one measured run each, diskconv first). Wall time runs until the output is
//! on disk (the child plus an fsync of its output: qemu-img does not sync); MB/s of virtual
//! disk, CPU s, peak RSS of the child, and diskconv / qemu-img wall. Both outputs are checked
//! against the source with `qemu-img compare`.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::measure::{self, Measured};
use common::source;
use common::target_dir;
use diskconv::util::{human_bytes, parse_size};
use serde_json::json;

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");

struct Args {
    size: u64,
    workdir: PathBuf,
    json: PathBuf,
    keep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        workdir: target_dir().join("bench-work"),
        json: target_dir().join("bench-nbd-client-results.json"),
        keep: false,
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
            "--keep" => a.keep = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// The qemu-nbd server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One measured conversion: the child, then an fsync of its output.
fn convert(cmd: &mut Command, out: &Path, log: &Path) -> Result<(Measured, f64), String> {
    let _ = fs::remove_file(out);
    let m = measure::run(cmd, log).map_err(|e| e.to_string())?;
    if let Some(e) = &m.error {
        return Err(e.clone());
    }
    let t = Instant::now();
    File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync {}: {e}", out.display()))?;
    Ok((m.clone(), m.wall_s + t.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nbd_client bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbd_client bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    fs::create_dir_all(a.workdir.join("out")).map_err(|e| e.to_string())?;
    let src = source::source_image(&a.workdir, a.size).map_err(|e| e.to_string())?;
    let sock = a.workdir.join("nbd-bench.sock");
    let _ = fs::remove_file(&sock);
    let server = Server(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "-r", "-t", "-e", "4", "-k"])
            .arg(&sock)
            .arg(&src.path)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting qemu-nbd: {e}"))?,
    );
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("qemu-nbd did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out_d = a.workdir.join("out/nbd-diskconv.qcow2");
    let out_q = a.workdir.join("out/nbd-qemu-img.qcow2");
    let log = a.workdir.join("out/nbd-bench.stderr");
    source::warm_cache(&src.path).map_err(|e| e.to_string())?;
    println!(
        "source: {} ({}, {} allocated), served by qemu-nbd -r on a Unix socket",
        src.path.display(),
        human_bytes(src.virtual_size),
        human_bytes(src.allocated)
    );

    let ours = || {
        let mut c = Command::new(DISKCONV);
        c.args(["convert", "-O", "qcow2", &uri]).arg(&out_d);
        c
    };
    let theirs = || {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-O", "qcow2", &uri]).arg(&out_q);
        c
    };
    // Warm-up (unmeasured), then one measured run each.
    convert(&mut ours(), &out_d, &log)?;
    convert(&mut theirs(), &out_q, &log)?;
    let (md, wd) = convert(&mut ours(), &out_d, &log)?;
    let (mq, wq) = convert(&mut theirs(), &out_q, &log)?;
    for out in [&out_d, &out_q] {
        measure::output(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "qcow2"])
                .arg(&src.path)
                .arg(out),
        )
        .map_err(|e| format!("{} differs from the source: {e}", out.display()))?;
    }
    drop(server);
    let mbps = |w: f64| src.virtual_size as f64 / w / 1e6;
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>10}",
        "tool", "wall s", "MB/s", "CPU s", "peak RSS"
    );
    for (name, m, w) in [("diskconv", &md, wd), ("qemu-img", &mq, wq)] {
        println!(
            "{name:<10} {w:>8.2} {:>8.0} {:>8.2} {:>10}",
            mbps(w),
            m.cpu_s(),
            human_bytes(m.max_rss)
        );
    }
    println!("diskconv / qemu-img wall: {:.2}", wd / wq);
    let j = json!({
        "source": { "path": src.path, "virtual_size": src.virtual_size, "allocated": src.allocated,
                    "content": src.content },
        "server": "qemu-nbd -f raw -r (Unix socket)",
        "diskconv": { "wall_s": wd, "mb_s": mbps(wd), "run": md },
        "qemu_img": { "wall_s": wq, "mb_s": mbps(wq), "run": mq },
        "ratio_diskconv_over_qemu_img_wall": wd / wq,
    });
    fs::write(
        &a.json,
        serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    if !a.keep {
        let _ = fs::remove_file(&out_d);
        let _ = fs::remove_file(&out_q);
    }
    Ok(())
}
