//! `cargo bench --bench sync -- [--size 1G] [--workdir DIR] [--json FILE] [--change-pct P]
//! [--baseline DISKCONV] [--runs N]`
//!
//! Incremental sync on the benchmark image (see `common/source.rs`), as a qcow2 source made by
//! `qemu-img convert`: a full first pass (`diskconv sync`), then P % of the 64 KiB blocks
//! rewritten with `qemu-io` while a persistent bitmap (`qemu-img bitmap --add`) records them,
//! an incremental pass from that bitmap (`--bitmap`), another P % rewritten, a fingerprint-scan
//! pass, and a plain read of the source through the same reader (in process) for comparison.
//! Prints seconds, MB/s, peak RSS of each `diskconv sync` child and the ratios: bitmap pass /
//! full pass (aim <= 5 %), scan pass / plain read (aim <= 1.2x), peak RSS (aim < 128 MiB).
//! The target is checked against the source with `qemu-img compare` after each pass.
//! `--baseline DISKCONV` runs the same sequence (same changed blocks) with another diskconv binary
//! too, alternating which goes first over `--runs N` rounds, and prints new / baseline per pass.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

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
    baseline: Option<PathBuf>,
    runs: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        workdir: target_dir().join("bench-work"),
        json: target_dir().join("bench-sync-results.json"),
        change_pct: 1.0,
        baseline: None,
        runs: 1,
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
            "--baseline" => a.baseline = Some(value("--baseline")?.into()),
            "--runs" => {
                let v = value("--runs")?;
                a.runs = v.parse().ok().filter(|&n| n > 0).ok_or("bad --runs")?;
            }
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other}\nusage: cargo bench --bench sync -- [--size 1G] \
                     [--workdir DIR] [--json FILE] [--change-pct P] [--baseline DISKCONV] [--runs N]"
                ));
            }
        }
    }
    Ok(a)
}

/// Rewrites `pct` % of the blocks of the qcow2 image with qemu-io, distinct random blocks.
fn change_blocks(img: &Path, size: u64, pct: f64, seed: u64) -> std::io::Result<u64> {
    let blocks = size / BS;
    let want = ((blocks as f64 * pct / 100.0) as u64).max(1);
    let mut rng = source::Rng::new(seed);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < want {
        picked.insert(rng.next_u64() % blocks);
    }
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2"]);
    for (i, b) in picked.iter().enumerate() {
        cmd.arg("-c")
            .arg(format!("write -P {} {} {BS}", 1 + i % 250, b * BS));
    }
    cmd.arg(img);
    measure::output(&mut cmd)?;
    Ok(want)
}

fn sync_run(
    bin: &Path,
    src: &Path,
    dst: &Path,
    extra: &[&str],
    log: &Path,
) -> std::io::Result<Measured> {
    let mut cmd = Command::new(bin);
    cmd.arg("sync").arg(src).arg(dst).args(extra);
    let m = measure::run(&mut cmd, log)?;
    if let Some(e) = &m.error {
        return Err(io_err(format!("diskconv sync failed: {e}")));
    }
    Ok(m)
}

fn compare(src: &Path, dst: &Path) -> std::io::Result<()> {
    measure::output(
        Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(src)
            .arg(dst),
    )
    .map(|_| ())
}

fn plain_read(src: &Path) -> std::io::Result<(f64, u64)> {
    let img = diskconv::open(src, &diskconv::OpenOptions::new()).map_err(io_err)?;
    let size = img.virtual_size();
    let mut buf = vec![0u8; 4 << 20];
    let t = Instant::now();
    let mut off = 0;
    let mut read = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        read += diskconv::image::read_skipping_holes(img.as_ref(), &mut buf[..n], off)
            .map_err(io_err)?;
        off += n as u64;
    }
    Ok((t.elapsed().as_secs_f64(), read))
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench sync: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The four timed passes of one sequence.
struct Passes {
    full: Measured,
    bitmap: Measured,
    scan: Measured,
    scan0: Measured,
    changed: [u64; 2],
}

impl Passes {
    fn all(&self) -> [(&'static str, &Measured); 4] {
        [
            ("full", &self.full),
            ("bitmap (1%)", &self.bitmap),
            ("scan (1%)", &self.scan),
            ("scan (no change)", &self.scan0),
        ]
    }

    /// Keeps the faster of each pass.
    fn best_of(self, other: Passes) -> Passes {
        let pick = |a: Measured, b: Measured| if b.wall_s < a.wall_s { b } else { a };
        Passes {
            full: pick(self.full, other.full),
            bitmap: pick(self.bitmap, other.bitmap),
            scan: pick(self.scan, other.scan),
            scan0: pick(self.scan0, other.scan0),
            changed: self.changed,
        }
    }
}

/// Full pass, bitmap pass, scan pass and no-change scan with `bin`, in `out` (made afresh).
fn sequence(bin: &Path, raw: &Path, size: u64, pct: f64, out: &Path) -> std::io::Result<Passes> {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let src = out.join("src.qcow2");
    let dst = out.join("dst.img");
    eprintln!("{}: making the qcow2 source ...", bin.display());
    measure::output(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(&src),
    )?;
    source::warm_cache(&src)?;
    let full = sync_run(bin, &src, &dst, &[], &out.join("full.log"))?;
    compare(&src, &dst)?;

    measure::output(
        Command::new("qemu-img")
            .args(["bitmap", "--add"])
            .arg(&src)
            .arg("b0"),
    )?;
    let n1 = change_blocks(&src, size, pct, 11)?;
    source::warm_cache(&src)?;
    let bitmap = sync_run(
        bin,
        &src,
        &dst,
        &["--bitmap", "b0"],
        &out.join("bitmap.log"),
    )?;
    compare(&src, &dst)?;

    let n2 = change_blocks(&src, size, pct, 12)?;
    source::warm_cache(&src)?;
    let scan = sync_run(bin, &src, &dst, &[], &out.join("scan.log"))?;
    compare(&src, &dst)?;

    // The same scan with nothing to write: the cost of reading and hashing alone.
    source::warm_cache(&src)?;
    let scan0 = sync_run(bin, &src, &dst, &[], &out.join("scan0.log"))?;
    Ok(Passes {
        full,
        bitmap,
        scan,
        scan0,
        changed: [n1, n2],
    })
}

fn real_main() -> std::io::Result<()> {
    let args = parse_args().map_err(io_err)?;
    fs::create_dir_all(&args.workdir)?;
    let img = source::source_image(&args.workdir, args.size)?;
    let size = img.virtual_size;
    let mb = |s: f64| size as f64 / 1e6 / s;
    let new_bin = PathBuf::from(DISKCONV);
    let mut bins = vec![("new", new_bin)];
    if let Some(b) = &args.baseline {
        if !b.is_file() {
            return Err(io_err(format!("--baseline {}: no such file", b.display())));
        }
        bins.push(("baseline", b.clone()));
    }
    let mut best: Vec<Option<Passes>> = bins.iter().map(|_| None).collect();
    for round in 0..args.runs {
        let mut order: Vec<usize> = (0..bins.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (tag, bin) = &bins[i];
            let p = sequence(
                bin,
                &img.path,
                size,
                args.change_pct,
                &args.workdir.join(format!("sync-{tag}")),
            )?;
            best[i] = Some(match best[i].take() {
                Some(b) => b.best_of(p),
                None => p,
            });
        }
    }
    let best: Vec<Passes> = best.into_iter().flatten().collect();
    let new = &best[0];

    source::warm_cache(&img.path)?;
    let qcow = args.workdir.join("sync-new").join("src.qcow2");
    source::warm_cache(&qcow)?;
    let (read_s, read_bytes) = plain_read(&qcow)?;

    let peak = new
        .full
        .max_rss
        .max(new.bitmap.max_rss)
        .max(new.scan.max_rss)
        .max(new.scan0.max_rss);
    let [n1, n2] = new.changed;
    println!(
        "sync on {} ({}, {} allocated), {} % of 64 KiB blocks changed ({n1} then {n2} blocks), \
         best of {} run(s)",
        source::size_tag(size),
        img.content,
        human_bytes(img.allocated),
        args.change_pct,
        args.runs
    );
    println!(
        "{:<22} {:>8} {:>9} {:>8} {:>10} {:>9} {:>8}",
        "pass", "wall s", "MB/s", "CPU s", "peak RSS", "base s", "vs base"
    );
    for (k, (name, m)) in new.all().into_iter().enumerate() {
        let (base_s, ratio) = match best.get(1) {
            Some(b) => {
                let bm = b.all()[k].1;
                (
                    format!("{:.2}", bm.wall_s),
                    format!("{:.3}x", m.wall_s / bm.wall_s.max(1e-9)),
                )
            }
            None => (String::new(), String::new()),
        };
        println!(
            "{:<22} {:>8.2} {:>9.0} {:>8.2} {:>10} {:>9} {:>8}",
            name,
            m.wall_s,
            mb(m.wall_s),
            m.cpu_s(),
            human_bytes(m.max_rss),
            base_s,
            ratio
        );
    }
    println!(
        "{:<22} {:>8.2} {:>9.0} {:>8} {:>10}",
        "plain read (in proc)",
        read_s,
        mb(read_s),
        "-",
        "-"
    );
    let r_bitmap = new.bitmap.wall_s / new.full.wall_s;
    let r_scan = new.scan.wall_s / read_s;
    let r_scan0 = new.scan0.wall_s / read_s;
    println!(
        "bitmap / full = {:.1} % (aim <= 5 %); scan / plain read = {:.2}x with 1 % to write, \
         {:.2}x with nothing to write (aim <= 1.2x); peak RSS {} (aim < 128 MiB)",
        r_bitmap * 100.0,
        r_scan,
        r_scan0,
        human_bytes(peak)
    );
    let baseline = best.get(1).map(|b| {
        json!({
            "binary": args.baseline,
            "full": b.full,
            "bitmap": b.bitmap,
            "scan": b.scan,
            "scan_no_change": b.scan0,
            "ratio_new_over_baseline": b.all().iter().zip(new.all()).map(|((n, bm), (_, m))| {
                json!({"pass": n, "wall": m.wall_s / bm.wall_s.max(1e-9)})
            }).collect::<Vec<_>>(),
        })
    });
    let j = json!({
        "size": size,
        "content": img.content,
        "change_pct": args.change_pct,
        "changed_blocks": [n1, n2],
        "runs": args.runs,
        "full": new.full,
        "bitmap": new.bitmap,
        "scan": new.scan,
        "scan_no_change": new.scan0,
        "ratio_scan_no_change_read": r_scan0,
        "plain_read_s": read_s,
        "plain_read_bytes": read_bytes,
        "ratio_bitmap_full": r_bitmap,
        "ratio_scan_read": r_scan,
        "peak_rss": peak,
        "baseline": baseline,
    });
    fs::write(
        &args.json,
        serde_json::to_string_pretty(&j).map_err(io_err)?,
    )?;
    eprintln!("results in {}", args.json.display());
    Ok(())
}
