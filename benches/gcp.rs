//! `cargo bench --bench gcp -- [--size 1G] [--runs N] [--workdir DIR] [--keep] [--json FILE]`
//!
//! The Compute Engine tarball of one realistic disk image (see `common/source.rs`), made three
//! ways in the same run:
//!
//! - `diskconv convert -f raw -O gcp SRC OUT.tar.gz` (deflate on all cores, written in order);
//! - `tar --format=oldgnu -Sczf OUT.tar.gz disk.raw`, what Google's import page tells people
//!   to run (GNU tar piping through one `gzip -6`);
//! - `tar --format=oldgnu -Scf - disk.raw | pigz -6`, the same tar compressed on all cores.
//!
//! `disk.raw` is a hard link to the source (GNU tar names the member after the file), whose
//! size is a whole GiB, so all three archive the same bytes. Each output is synced (fsync
//! after the child exits, counted in its time), and listed with `tar -tvzf` and tested with
//! `gzip -t`; diskconv's is also extracted with GNU tar and compared with the source
//! (`qemu-img compare`). Reported per tool: seconds (best of the runs), MB/s of virtual disk,
//! CPU seconds, peak RSS (of the largest process of a pipeline) and output size.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use common::measure::{self, Measured};
use common::source;
use common::target_dir;
use diskconv::util::human_bytes;
use serde::Serialize;
use serde_json::json;

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");

struct Args {
    size: u64,
    runs: u32,
    workdir: PathBuf,
    keep: bool,
    json: PathBuf,
}

const USAGE: &str = "usage: cargo bench --bench gcp -- [--size 1G] [--runs N] [--workdir DIR] \
[--keep] [--json FILE]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        runs: 3,
        workdir: target_dir().join("bench-work"),
        keep: false,
        json: target_dir().join("bench-gcp.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--size" => {
                let v = value("--size")?;
                let gib: u64 = v
                    .trim_end_matches(['G', 'g'])
                    .parse()
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or(format!("bad --size {v} (whole GiB: 1G, 2G, ...)"))?;
                a.size = gib << 30;
            }
            "--runs" => {
                let v = value("--runs")?;
                a.runs = v.parse().ok().filter(|&n| n > 0).ok_or("bad --runs")?;
            }
            "--workdir" => a.workdir = value("--workdir")?.into(),
            "--json" => a.json = value("--json")?.into(),
            "--keep" => a.keep = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}

/// One way of making the tarball.
struct Tool {
    name: &'static str,
    command: String,
    make: Box<dyn Fn(&Path) -> Command>,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    #[serde(flatten)]
    m: Measured,
    /// fsync(2) of the output after the child exited.
    sync_s: f64,
    out_len: u64,
}

impl Run {
    fn total_s(&self) -> f64 {
        self.m.wall_s + self.sync_s
    }
}

#[derive(Debug, Serialize)]
struct Result1 {
    tool: &'static str,
    command: String,
    runs: Vec<Run>,
    best: Option<usize>,
    verify: String,
}

fn sync_file(p: &Path) -> std::io::Result<f64> {
    let t = std::time::Instant::now();
    fs::File::open(p)?.sync_all()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `gzip -t` and a GNU tar listing of exactly one member `disk.raw` of `size` bytes.
fn check_archive(out: &Path, size: u64) -> Result<String, String> {
    measure::output(Command::new("gzip").arg("-t").arg(out)).map_err(|e| e.to_string())?;
    let listing =
        measure::output(Command::new("tar").arg("-tvzf").arg(out)).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = listing.lines().collect();
    let ok = lines.len() == 1
        && lines[0].ends_with(" disk.raw")
        && lines[0].split_whitespace().nth(2) == Some(size.to_string().as_str());
    if ok {
        Ok("gzip -t ok, tar lists disk.raw".into())
    } else {
        Err(format!("unexpected listing: {listing}"))
    }
}

/// Extracts `disk.raw` with GNU tar and compares it with the source.
fn extract_and_compare(out: &Path, src: &Path, dir: &Path) -> Result<String, String> {
    let x = dir.join("extract");
    let _ = fs::remove_dir_all(&x);
    fs::create_dir_all(&x).map_err(|e| e.to_string())?;
    measure::output(Command::new("tar").arg("-xzSf").arg(out).arg("-C").arg(&x))
        .map_err(|e| e.to_string())?;
    let r = measure::output(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(src)
            .arg(x.join("disk.raw")),
    );
    let _ = fs::remove_dir_all(&x);
    r.map(|_| "extracted disk.raw identical (qemu-img compare)".into())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    for t in ["tar", "gzip"] {
        if !on_path(t) {
            eprintln!("{t} is not on PATH: nothing to compare with");
            return ExitCode::FAILURE;
        }
    }
    let have_pigz = on_path("pigz");
    let have_qemu = on_path("qemu-img");
    if let Err(e) = fs::create_dir_all(&args.workdir) {
        eprintln!("{}: {e}", args.workdir.display());
        return ExitCode::FAILURE;
    }
    let src = match source::source_image(&args.workdir, args.size) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("source image: {e}");
            return ExitCode::FAILURE;
        }
    };
    // GNU tar names the member after the file: a hard link named disk.raw.
    let dir = args.workdir.join("gcp");
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::create_dir_all(&dir).and_then(|()| {
        fs::hard_link(&src.path, dir.join("disk.raw"))
            .or_else(|_| std::os::unix::fs::symlink(&src.path, dir.join("disk.raw")))
    }) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let srcp = src.path.clone();
    let d2 = dir.clone();
    let d3 = dir.clone();
    let mut tools = vec![
        Tool {
            name: "diskconv",
            command: "diskconv convert -f raw -O gcp SRC OUT.tar.gz".into(),
            make: Box::new(move |out| {
                let mut c = Command::new(DISKCONV);
                c.args(["convert", "-f", "raw", "-O", "gcp"])
                    .arg(&srcp)
                    .arg(out);
                c
            }),
        },
        Tool {
            name: "tar -Sczf",
            command: "tar --format=oldgnu -Sczf OUT.tar.gz disk.raw".into(),
            make: Box::new(move |out| {
                let mut c = Command::new("tar");
                c.args(["--format=oldgnu", "-hSczf"])
                    .arg(out)
                    .arg("-C")
                    .arg(&d2)
                    .arg("disk.raw");
                c
            }),
        },
    ];
    if have_pigz {
        tools.push(Tool {
            name: "tar | pigz",
            command: "tar --format=oldgnu -Scf - disk.raw | pigz -6 > OUT.tar.gz".into(),
            make: Box::new(move |out| {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("tar --format=oldgnu -hScf - -C \"$1\" disk.raw | pigz -6 > \"$2\"")
                    .arg("sh")
                    .arg(&d3)
                    .arg(out);
                c
            }),
        });
    } else {
        eprintln!("NOTE: pigz is not on PATH (apt-get install pigz): its row is left out");
    }

    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "source: {} ({} virtual, {} allocated), {} runs each, {nproc} cores",
        src.description,
        human_bytes(src.virtual_size),
        human_bytes(src.allocated),
        args.runs
    );
    let _ = source::warm_cache(&src.path);
    let mut results = Vec::new();
    for t in &tools {
        let out = dir.join(format!("{}.tar.gz", t.name.replace([' ', '|', '-'], "_")));
        let err_file = dir.join("stderr.txt");
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let _ = fs::remove_file(&out);
            let m = match measure::run(&mut (t.make)(&out), &err_file) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("{}: {e}", t.name);
                    break;
                }
            };
            let sync_s = sync_file(&out).unwrap_or(0.0);
            let out_len = fs::metadata(&out).map_or(0, |m| m.len());
            runs.push(Run { m, sync_s, out_len });
        }
        let best = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.m.error.is_none())
            .min_by(|a, b| a.1.total_s().total_cmp(&b.1.total_s()))
            .map(|(i, _)| i);
        let mut verify = match check_archive(&out, src.virtual_size) {
            Ok(v) => v,
            Err(e) => format!("FAILED: {e}"),
        };
        if t.name == "diskconv" && have_qemu && best.is_some() {
            verify += &match extract_and_compare(&out, &src.path, &dir) {
                Ok(v) => format!(", {v}"),
                Err(e) => format!(", FAILED: {e}"),
            };
        }
        if !args.keep {
            let _ = fs::remove_file(&out);
        }
        results.push(Result1 {
            tool: t.name,
            command: t.command.clone(),
            runs,
            best,
            verify,
        });
    }
    let _ = fs::remove_file(dir.join("disk.raw"));

    println!(
        "\nGCP tarball of a {} disk ({}), best of {} runs, output synced:\n",
        human_bytes(src.virtual_size),
        src.content,
        args.runs
    );
    println!(
        "| tool | seconds | MB/s | CPU s | peak RSS | output | check |\n|---|---:|---:|---:|---:|---:|---|"
    );
    let mut failed = false;
    for r in &results {
        match r.best.map(|i| &r.runs[i]) {
            Some(b) => println!(
                "| {} | {:.2} | {:.0} | {:.2} | {} | {} ({} B) | {} |",
                r.tool,
                b.total_s(),
                src.virtual_size as f64 / b.total_s().max(1e-9) / 1e6,
                b.m.cpu_s(),
                human_bytes(b.m.max_rss),
                human_bytes(b.out_len),
                b.out_len,
                r.verify
            ),
            None => {
                failed = true;
                let why = r
                    .runs
                    .iter()
                    .find_map(|x| x.m.error.clone())
                    .unwrap_or_else(|| "did not run".into());
                println!("| {} | failed: {why} | | | | | |", r.tool);
            }
        }
        failed |= r.verify.contains("FAILED");
    }
    let report = json!({
        "benchmark": "gcp",
        "source": src,
        "nproc": nproc,
        "runs": args.runs,
        "results": results,
    });
    if let Err(e) = fs::write(
        &args.json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    ) {
        eprintln!("{}: {e}", args.json.display());
    } else {
        eprintln!("results: {}", args.json.display());
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
