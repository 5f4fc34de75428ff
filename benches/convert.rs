//! `cargo bench --bench convert -- [--size 2G] [--runs N] [--workdir DIR] [--keep] [--json FILE]
//! [--only CASE[,CASE]] [--no-warmup]`
//!
//! Converts one realistic disk image (see `common/source.rs`) with the release `diskconv` binary
//! and, when it is on PATH, with `qemu-img convert`, case by case in the same run, and prints wall
//! time, MB/s of virtual disk, CPU time, peak RSS and output size, plus the diskconv/qemu-img
//! ratios. Every diskconv output is checked against the source with `qemu-img compare` (and
//! `qemu-img check` for qcow2). See `benches/README.md`.

mod common;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use common::measure::{self, Measured};
use common::source::{self, SourceImage};
use common::target_dir;
use diskconv::util::human_bytes;
use serde::Serialize;
use serde_json::json;

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");

/// One conversion to time.
struct Case {
    name: &'static str,
    title: &'static str,
    input: Input,
    out_fmt: &'static str,
    /// Options common to both tools (they spell these the same way).
    extra: &'static [&'static str],
}

#[derive(Clone, Copy, PartialEq)]
enum Input {
    /// The generated raw image.
    Raw,
    /// The qcow2 qemu-img made of it (case `raw-qcow2`), so both tools read the same file.
    QemuQcow2,
    /// The dynamic VDI qemu-img made of it, so both tools read the same file.
    QemuVdi,
}

const CASES: &[Case] = &[
    Case {
        name: "raw-qcow2",
        title: "raw->qcow2",
        input: Input::Raw,
        out_fmt: "qcow2",
        extra: &[],
    },
    Case {
        name: "raw-qcow2-zlib",
        title: "raw->qcow2 -c zlib",
        input: Input::Raw,
        out_fmt: "qcow2",
        extra: &["-c"],
    },
    Case {
        name: "raw-qcow2-zstd",
        title: "raw->qcow2 -c zstd",
        input: Input::Raw,
        out_fmt: "qcow2",
        extra: &["-c", "-o", "compression_type=zstd"],
    },
    Case {
        name: "raw-vmdk-stream",
        title: "raw->vmdk streamOptimized",
        input: Input::Raw,
        out_fmt: "vmdk",
        extra: &["-o", "subformat=streamOptimized,adapter_type=lsilogic"],
    },
    Case {
        name: "raw-vhd-fixed",
        title: "raw->vhd fixed",
        input: Input::Raw,
        out_fmt: "vpc",
        extra: &["-o", "subformat=fixed"],
    },
    Case {
        name: "raw-vhdx-dynamic",
        title: "raw->vhdx dynamic",
        input: Input::Raw,
        out_fmt: "vhdx",
        extra: &["-o", "subformat=dynamic"],
    },
    Case {
        name: "raw-vdi",
        title: "raw->vdi dynamic",
        input: Input::Raw,
        out_fmt: "vdi",
        extra: &[],
    },
    Case {
        name: "vdi-raw",
        title: "vdi->raw",
        input: Input::QemuVdi,
        out_fmt: "raw",
        extra: &[],
    },
    Case {
        name: "qcow2-raw",
        title: "qcow2->raw",
        input: Input::QemuQcow2,
        out_fmt: "raw",
        extra: &[],
    },
    Case {
        name: "raw-raw",
        title: "raw->raw",
        input: Input::Raw,
        out_fmt: "raw",
        extra: &[],
    },
];

#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Tool {
    Diskconv,
    QemuImg,
    /// Another diskconv binary (`--baseline PATH`), e.g. the build before a refactor.
    Baseline,
}

/// The `--baseline` binary, when given.
static BASELINE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Diskconv => "diskconv",
            Tool::QemuImg => "qemu-img",
            Tool::Baseline => "baseline",
        }
    }

    fn command(self, in_fmt: &str, case: &Case, src: &Path, dst: &Path) -> Command {
        let mut c = match self {
            Tool::Diskconv => Command::new(DISKCONV),
            Tool::QemuImg => Command::new("qemu-img"),
            Tool::Baseline => Command::new(BASELINE.get().map_or(Path::new("?"), |p| p.as_path())),
        };
        c.args(["convert", "-f", in_fmt, "-O", case.out_fmt])
            .args(case.extra)
            .arg(src)
            .arg(dst);
        c
    }
}

struct Args {
    size: u64,
    runs: Option<u32>,
    workdir: PathBuf,
    keep: bool,
    json: PathBuf,
    only: Option<Vec<String>>,
    warmup: bool,
    baseline: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo bench --bench convert -- [--size 2G] [--runs N] [--workdir DIR] \
[--keep] [--json FILE] [--only CASE[,CASE...]] [--no-warmup] [--baseline DISKCONV]
cases: raw-qcow2 raw-qcow2-zlib raw-qcow2-zstd qcow2-raw raw-raw";

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match s[i..].to_ascii_uppercase().trim_end_matches(['I', 'B']) {
                "K" => 1u64 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                "" => 1,
                _ => return None,
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    // Whole MiB, at least 16 MiB (room for the GPT and a file system).
    let bytes = ((v * mult as f64) as u64).div_ceil(1 << 20) << 20;
    (bytes >= 16 << 20).then_some(bytes)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 2 << 30,
        runs: None,
        workdir: target_dir().join("bench-work"),
        keep: false,
        json: target_dir().join("bench-results.json"),
        only: None,
        warmup: true,
        baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--size" => {
                let v = value("--size")?;
                a.size = parse_size(&v).ok_or(format!("bad --size {v} (e.g. 256M, 2G)"))?;
            }
            "--runs" => {
                let v = value("--runs")?;
                a.runs = Some(v.parse().ok().filter(|&n| n > 0).ok_or("bad --runs")?);
            }
            "--workdir" => a.workdir = value("--workdir")?.into(),
            "--json" => a.json = value("--json")?.into(),
            "--keep" => a.keep = true,
            "--baseline" => a.baseline = Some(value("--baseline")?.into()),
            "--warmup" => a.warmup = true,
            "--no-warmup" => a.warmup = false,
            "--only" => {
                let v = value("--only")?;
                let names: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
                for n in &names {
                    if !CASES.iter().any(|c| c.name == n) {
                        return Err(format!("unknown case {n}"));
                    }
                }
                a.only = Some(names);
            }
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

fn machine() -> serde_json::Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "nproc": nproc,
        "cpu_model": model,
        "kernel": kernel.trim(),
        "memory": mem_kib * 1024,
    })
}

/// One run of one tool on one case.
#[derive(Debug, Clone, Serialize)]
struct Run {
    #[serde(flatten)]
    m: Measured,
    /// fsync(2) of the output after the child exited.
    sync_s: f64,
    /// Allocated bytes of the output (st_blocks x 512) and its length.
    out_alloc: u64,
    out_len: u64,
}

impl Run {
    /// Time until the output is on disk: the child's wall time plus the fsync after it.
    fn total_s(&self) -> f64 {
        self.m.wall_s + self.sync_s
    }
}

/// All runs of one tool on one case.
#[derive(Debug, Serialize)]
struct ToolResult {
    case: &'static str,
    title: &'static str,
    tool: Tool,
    command: String,
    virtual_size: u64,
    runs: Vec<Run>,
    /// Index into `runs` of the fastest successful run.
    best: Option<usize>,
    /// Why the tool could not run at all (e.g. no input).
    error: Option<String>,
    /// Result of comparing the output with the source (diskconv only).
    verify: Option<String>,
    verify_ok: Option<bool>,
}

impl ToolResult {
    fn best(&self) -> Option<&Run> {
        self.best.map(|i| &self.runs[i])
    }
    fn mbps(&self) -> Option<f64> {
        self.best()
            .map(|r| self.virtual_size as f64 / r.total_s().max(1e-9) / 1e6)
    }
    fn error_text(&self) -> Option<String> {
        if self.best.is_some() {
            return None;
        }
        self.error
            .clone()
            .or_else(|| self.runs.iter().find_map(|r| r.m.error.clone()))
    }
}

fn remove(p: &Path) {
    if let Err(e) = fs::remove_file(p) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("warning: removing {}: {e}", p.display());
        }
    }
}

/// The `fmt` (qcow2 or vdi) input of `qcow2-raw` / `vdi-raw`: qemu-img's conversion of the
/// source, cached next to it.
fn qemu_input_path(src: &SourceImage, fmt: &str) -> PathBuf {
    src.path.with_extension(format!("qemu.{fmt}"))
}

fn ensure_qemu_input(src: &SourceImage, fmt: &str, have_qemu: bool) -> Result<PathBuf, String> {
    let p = qemu_input_path(src, fmt);
    if p.exists() {
        return Ok(p);
    }
    let tmp = p.with_extension(format!("{fmt}.tmp"));
    let mut cmd = if have_qemu {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "raw", "-O", fmt]);
        c
    } else {
        // No qemu-img: the best we can do is our own image (then both rows read it anyway).
        let mut c = Command::new(DISKCONV);
        c.args(["convert", "-f", "raw", "-O", fmt]);
        c
    };
    eprintln!("making the {fmt} input of {fmt}-raw ...");
    measure::output(cmd.arg(&src.path).arg(&tmp)).map_err(|e| format!("no qcow2 input: {e}"))?;
    fs::rename(&tmp, &p).map_err(|e| e.to_string())?;
    Ok(p)
}

/// Compares `out` with the source: `qemu-img compare` (and `check` for qcow2) when available,
/// else `diskconv compare`. Returns (text, ok).
fn verify(src: &Path, out: &Path, out_fmt: &str, have_qemu: bool) -> (String, bool) {
    let mut cmd = if have_qemu {
        let mut c = Command::new("qemu-img");
        c.args(["compare", "-f", "raw", "-F", out_fmt]);
        c
    } else {
        let mut c = Command::new(DISKCONV);
        c.args(["compare", "-f", "raw", "-F", out_fmt]);
        c
    };
    let by = if have_qemu { "qemu-img" } else { "diskconv" };
    let (mut text, mut ok) = match cmd.arg(src).arg(out).output() {
        Ok(o) if o.status.success() => (format!("identical ({by} compare)"), true),
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stdout).trim().to_owned()
                + String::from_utf8_lossy(&o.stderr).trim();
            (format!("MISMATCH ({by} compare): {msg}"), false)
        }
        Err(e) => (format!("MISMATCH? could not run {by} compare: {e}"), false),
    };
    if have_qemu && matches!(out_fmt, "qcow2" | "vmdk" | "vhdx" | "vdi") {
        match Command::new("qemu-img")
            .args(["check", "-f", out_fmt])
            .arg(out)
            .output()
        {
            Ok(o) if o.status.success() => text += ", check clean",
            Ok(o) => {
                ok = false;
                let last = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&o.stderr).lines())
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_owned();
                text += &format!(", CHECK FAILED (exit {:?}): {last}", o.status.code());
            }
            Err(e) => text += &format!(", check not run: {e}"),
        }
    }
    (text, ok)
}

fn run_case(
    case: &Case,
    src: &SourceImage,
    args: &Args,
    runs: u32,
    have_qemu: bool,
    outdir: &Path,
) -> Vec<ToolResult> {
    let mut tools: Vec<Tool> = if have_qemu {
        vec![Tool::Diskconv, Tool::QemuImg]
    } else {
        vec![Tool::Diskconv]
    };
    if args.baseline.is_some() {
        tools.insert(1, Tool::Baseline);
    }
    let (input, in_fmt) = match case.input {
        Input::Raw => (Ok(src.path.clone()), "raw"),
        Input::QemuQcow2 => (ensure_qemu_input(src, "qcow2", have_qemu), "qcow2"),
        Input::QemuVdi => (ensure_qemu_input(src, "vdi", have_qemu), "vdi"),
    };
    let ext = if matches!(case.out_fmt, "qcow2" | "vdi") {
        case.out_fmt
    } else {
        "raw"
    };
    let dst = |t: Tool| outdir.join(format!("{}.{}.{ext}", case.name, t.name()));
    let mut results: Vec<ToolResult> = tools
        .iter()
        .map(|&t| {
            let cmd = t.command(
                in_fmt,
                case,
                input.as_deref().unwrap_or(Path::new("?")),
                &dst(t),
            );
            ToolResult {
                case: case.name,
                title: case.title,
                tool: t,
                command: format!("{cmd:?}").replace('"', ""),
                virtual_size: src.virtual_size,
                runs: Vec::new(),
                best: None,
                error: input.as_ref().err().cloned(),
                verify: None,
                verify_ok: None,
            }
        })
        .collect();
    let Ok(input) = input else {
        return results;
    };

    let total = runs + u32::from(args.warmup);
    for run in 0..total {
        let warmup = args.warmup && run == 0;
        // Alternate which tool goes first, so neither always gets the warmer cache.
        let mut order: Vec<usize> = (0..tools.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let r = &mut results[i];
            // A tool that failed once will fail again: do not waste the time.
            if r.runs.iter().any(|x| x.m.error.is_some()) {
                continue;
            }
            let out = dst(r.tool);
            remove(&out);
            // Flush the previous run's dirty pages, then make sure the input is in the cache.
            // SAFETY: sync(2) has no arguments and cannot fail.
            unsafe { libc::sync() };
            if let Err(e) = source::warm_cache(&input) {
                eprintln!("warning: reading {}: {e}", input.display());
            }
            let stderr = outdir.join(format!("{}.{}.stderr", case.name, r.tool.name()));
            eprint!(
                "  {:<20} {:<9} {}",
                case.title,
                r.tool.name(),
                if warmup {
                    "warm-up".to_owned()
                } else {
                    format!("run {}/{runs}", run + 1 - u32::from(args.warmup))
                }
            );
            let mut cmd = r.tool.command(in_fmt, case, &input, &out);
            let m = match measure::run(&mut cmd, &stderr) {
                Ok(m) => m,
                Err(e) => Measured {
                    wall_s: 0.0,
                    user_s: 0.0,
                    sys_s: 0.0,
                    max_rss: 0,
                    error: Some(format!("could not start: {e}")),
                },
            };
            match &m.error {
                None => eprint!(" {:.2} s", m.wall_s),
                Some(e) => eprintln!(" FAILED: {e}"),
            }
            // qemu-img convert writes with cache=unsafe (no fsync); diskconv syncs in finish.
            // Time an fsync of the output after the child exits, so both are measured to the
            // point where the data is on disk.
            let t = std::time::Instant::now();
            let sync_s = match fs::File::open(&out).and_then(|f| f.sync_all()) {
                Ok(()) => t.elapsed().as_secs_f64(),
                Err(_) => 0.0,
            };
            let (out_alloc, out_len) = fs::metadata(&out)
                .map(|md| (md.blocks() * 512, md.len()))
                .unwrap_or((0, 0));
            if m.error.is_none() {
                eprintln!(" + fsync {sync_s:.2} s");
            }
            if warmup && m.error.is_none() {
                continue;
            }
            r.runs.push(Run {
                m,
                sync_s,
                out_alloc,
                out_len,
            });
        }
    }
    for r in &mut results {
        r.best = r
            .runs
            .iter()
            .enumerate()
            .filter(|(_, x)| x.m.error.is_none())
            .min_by(|a, b| a.1.total_s().total_cmp(&b.1.total_s()))
            .map(|(i, _)| i);
        let out = dst(r.tool);
        if matches!(r.tool, Tool::Diskconv | Tool::Baseline) && r.best.is_some() {
            let (text, ok) = verify(&src.path, &out, case.out_fmt, have_qemu);
            if !ok {
                eprintln!("!!! {} {}: {text}", case.title, r.tool.name());
            }
            r.verify = Some(text);
            r.verify_ok = Some(ok);
        }
        // qemu-img's plain qcow2 and dynamic VDI are the inputs of qcow2-raw and vdi-raw: keep
        // them rather than make them again.
        if r.tool == Tool::QemuImg
            && matches!(case.name, "raw-qcow2" | "raw-vdi")
            && r.best.is_some()
        {
            let cached = qemu_input_path(src, case.out_fmt);
            if !cached.exists() {
                let _ = fs::copy(&out, &cached);
            }
        }
        if !args.keep {
            remove(&out);
        }
    }
    results
}

fn fmt_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

fn print_table(results: &[ToolResult]) {
    println!();
    println!(
        "{:<20} {:<9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>11} {:>11} {:>7} {:>7} {:>7}  check",
        "case",
        "tool",
        "wall s",
        "exit s",
        "MB/s",
        "CPU s",
        "RSS MiB",
        "out alloc",
        "out length",
        "t ratio",
        "sz ratio",
        "vs base"
    );
    println!("{}", "-".repeat(136));
    for r in results {
        let Some(b) = r.best() else {
            let e = r.error_text().unwrap_or_default();
            println!(
                "{:<20} {:<9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>11} {:>11} {:>7} {:>7} {:>7}  ERROR: {e}",
                r.title,
                r.tool.name(),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            );
            continue;
        };
        // Ratios diskconv / qemu-img on the diskconv row.
        let other = results
            .iter()
            .find(|o| o.case == r.case && o.tool == Tool::QemuImg && r.tool == Tool::Diskconv);
        let (tr, sr) = match other.and_then(|o| o.best()) {
            Some(q) => (
                format!("{:.2}x", b.total_s() / q.total_s().max(1e-9)),
                format!("{:.2}x", b.out_alloc as f64 / (q.out_alloc.max(1)) as f64),
            ),
            None => ("".into(), "".into()),
        };
        // diskconv / baseline wall time on the diskconv row.
        let base = results
            .iter()
            .find(|o| o.case == r.case && o.tool == Tool::Baseline && r.tool == Tool::Diskconv)
            .and_then(|o| o.best())
            .map_or(String::new(), |o| {
                format!("{:.3}x", b.total_s() / o.total_s().max(1e-9))
            });
        println!(
            "{:<20} {:<9} {:>8.2} {:>7.2} {:>7.0} {:>7.2} {:>8.1} {:>11} {:>11} {:>7} {:>7} {:>7}  {}",
            r.title,
            r.tool.name(),
            b.total_s(),
            b.m.wall_s,
            r.mbps().unwrap_or(0.0),
            b.m.cpu_s(),
            b.m.max_rss as f64 / (1u64 << 20) as f64,
            fmt_bytes(b.out_alloc),
            fmt_bytes(b.out_len),
            tr,
            sr,
            base,
            r.verify.as_deref().unwrap_or("")
        );
    }
    println!();
    println!(
        "wall s = until the output is on disk: the process plus an fsync of the output after it \
         exits (qemu-img convert does not sync, diskconv does); exit s = the process alone.\n\
         MB/s = virtual disk bytes / wall s / 1e6, best of the runs. Ratios (diskconv row) are \
         diskconv / qemu-img of wall s and out alloc: below 1 = diskconv better; vs base = \
         diskconv / the --baseline binary's wall s."
    );
}

/// diskconv / `other` per case (wall, CPU, peak RSS, allocated output), for the JSON report.
fn ratios_over(results: &[ToolResult], other: Tool) -> Vec<serde_json::Value> {
    results
        .iter()
        .filter(|r| r.tool == Tool::Diskconv)
        .filter_map(|d| {
            let q = results
                .iter()
                .find(|q| q.case == d.case && q.tool == other)?;
            let (db, qb) = (d.best()?, q.best()?);
            Some(json!({
                "case": d.case,
                "wall": db.total_s() / qb.total_s().max(1e-9),
                "cpu": db.m.cpu_s() / qb.m.cpu_s().max(1e-9),
                "rss": db.m.max_rss as f64 / qb.m.max_rss.max(1) as f64,
                "out_alloc": db.out_alloc as f64 / qb.out_alloc.max(1) as f64,
            }))
        })
        .collect()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("convert bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("convert bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> io::Result<ExitCode> {
    fs::create_dir_all(&args.workdir)?;
    let outdir = args.workdir.join("out");
    fs::create_dir_all(&outdir)?;
    let have_qemu = on_path("qemu-img");
    let qemu_version = if have_qemu {
        measure::output(Command::new("qemu-img").arg("--version"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
    } else {
        None
    };
    let machine = machine();
    println!(
        "machine: {} x {} ({}, {} RAM)",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        human_bytes(machine["memory"].as_u64().unwrap_or(0))
    );
    println!(
        "qemu-img: {}",
        qemu_version
            .as_deref()
            .unwrap_or("NOT FOUND (diskconv only; outputs self-checked with diskconv compare)")
    );
    println!("diskconv: {DISKCONV}");
    if let Some(b) = &args.baseline {
        if !b.is_file() {
            return Err(io::Error::other(format!(
                "--baseline {}: no such file",
                b.display()
            )));
        }
        println!("baseline: {}", b.display());
        let _ = BASELINE.set(b.clone());
    }

    let src = source::source_image(&args.workdir, args.size)?;
    println!(
        "source: {} ({} virtual, {} allocated)\n        {}",
        src.path.display(),
        human_bytes(src.virtual_size),
        human_bytes(src.allocated),
        src.description
    );
    let runs = args
        .runs
        .unwrap_or(if args.size >= 1 << 30 { 1 } else { 3 });
    println!(
        "runs per case: {runs} (best kept){}; source re-read into the page cache and sync(2) \
         before every run; tool order alternates",
        if args.warmup {
            ", plus one warm-up each"
        } else {
            ""
        }
    );

    let mut results = Vec::new();
    for case in CASES {
        if let Some(only) = &args.only {
            if !only.iter().any(|n| n == case.name) {
                continue;
            }
        }
        results.extend(run_case(case, &src, args, runs, have_qemu, &outdir));
    }
    print_table(&results);

    let mismatches: Vec<&ToolResult> = results
        .iter()
        .filter(|r| r.verify_ok == Some(false))
        .collect();
    for r in &mismatches {
        println!(
            "!!! OUTPUT MISMATCH: {} {}: {}",
            r.title,
            r.tool.name(),
            r.verify.as_deref().unwrap_or("")
        );
    }

    let commit = measure::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_default();
    let ratios = ratios_over(&results, Tool::QemuImg);
    let base_ratios = ratios_over(&results, Tool::Baseline);
    let cases: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["mbps"] = json!(r.mbps());
            v["best_run"] = json!(r.best());
            v["error_text"] = json!(r.error_text());
            v
        })
        .collect();
    let report = json!({
        "machine": machine,
        "qemu_img": qemu_version,
        "diskconv_commit": commit,
        "source": src,
        "runs_per_case": runs,
        "warmup": args.warmup,
        "results": cases,
        "ratios_diskconv_over_qemu": ratios,
        "baseline": args.baseline,
        "ratios_diskconv_over_baseline": base_ratios,
    });
    if let Some(dir) = args.json.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", args.json.display());
    if !args.keep {
        println!(
            "(outputs removed; the source image stays cached in {})",
            args.workdir.display()
        );
    } else {
        println!("outputs kept in {}", outdir.display());
    }
    Ok(if mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
