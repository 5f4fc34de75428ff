//! `cargo bench --bench hive -- [--runs N] [--hive FILE] [--workdir DIR] [--driver viostor|vioscsi]`
//!
//! Times the offline adaptation of a real Windows SYSTEM hive (the 11 MiB
//! `hives/regipy/SYSTEM` of the shared corpus by default): open, apply the virtio boot-storage
//! edit set of `inject::windows` (service key plus CriticalDeviceDatabase or DriverDatabase
//! keys), save in place with `Hive::save`; then the same with `Hive::save_as` to a new file; and,
//! when it is on PATH, `hivexregedit --merge` of the equivalent `.reg` file on the same copy, as
//! a point of comparison. Each run starts from a fresh copy of the hive (the copy is not timed);
//! every result is read back and checked. Prints min and median wall time of each phase and the
//! bytes written. See `benches/README.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use diskconv::guest::hive::{Hive, HiveOpenOptions, RegData};
use diskconv::inject::windows::{
    BootStorageDriver, add_boot_storage_driver, plan_boot_storage_driver,
};
use diskconv::inspect::windows::current_control_set;

struct Args {
    runs: usize,
    hive: PathBuf,
    workdir: PathBuf,
    driver: BootStorageDriver,
}

fn usage() -> String {
    "usage: cargo bench --bench hive -- [--runs N] [--hive FILE] [--workdir DIR] \
     [--driver viostor|vioscsi]"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        runs: 10,
        hive: root.join("../shared/corpus/hives/regipy/SYSTEM"),
        workdir: root.join("target/bench-work/hive"),
        driver: BootStorageDriver::viostor(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => {
                a.runs = val("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?;
                if a.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--hive" => a.hive = PathBuf::from(val("--hive")?),
            "--workdir" => a.workdir = PathBuf::from(val("--workdir")?),
            "--driver" => {
                a.driver = match val("--driver")?.as_str() {
                    "viostor" => BootStorageDriver::viostor(),
                    "vioscsi" => BootStorageDriver::vioscsi(),
                    other => return Err(format!("unknown driver {other}")),
                }
            }
            // Passed by `cargo bench`.
            "--bench" => {}
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(a)
}

/// Timings of one run, in the order open, edit, save, total.
#[derive(Clone, Copy, Default)]
struct Run {
    open: Duration,
    edit: Duration,
    save: Duration,
    bytes_written: u64,
}

impl Run {
    fn total(&self) -> Duration {
        self.open + self.edit + self.save
    }
}

fn fresh_copy(src: &Path, dst: &Path) -> Result<(), String> {
    let _ = fs::remove_file(dst);
    fs::copy(src, dst)
        .map_err(|e| format!("copying {} to {}: {e}", src.display(), dst.display()))?;
    let mut perm = fs::metadata(dst).map_err(|e| e.to_string())?.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(dst, perm).map_err(|e| e.to_string())?;
    // Read it once so every run starts with the file in the page cache.
    fs::read(dst).map_err(|e| e.to_string())?;
    Ok(())
}

/// Reopens `path` with the library and checks the service key is there with Start = 0.
fn verify(path: &Path, drv: &BootStorageDriver) -> Result<(), String> {
    let h = Hive::open(path, &HiveOpenOptions::default()).map_err(|e| e.to_string())?;
    let cs = current_control_set(&h).map_err(|e| e.to_string())?;
    let key = format!("{cs}\\Services\\{}", drv.service);
    let k = h
        .open_key(&key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no {key} after the edit", path.display()))?;
    let start = h
        .value(k, "Start")
        .map_err(|e| e.to_string())?
        .map(|v| v.decoded());
    if start != Some(RegData::Dword(0)) {
        return Err(format!("{}: {key} Start is {start:?}", path.display()));
    }
    Ok(())
}

fn run_ours(args: &Args, work: &Path, save_as: bool) -> Result<Run, String> {
    fresh_copy(&args.hive, work)?;
    let out = work.with_extension("out");
    let _ = fs::remove_file(&out);
    let t0 = Instant::now();
    let mut h = Hive::open(work, &HiveOpenOptions::default()).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    add_boot_storage_driver(&mut h, &args.driver).map_err(|e| e.to_string())?;
    let t2 = Instant::now();
    let stats = if save_as { h.save_as(&out) } else { h.save() }.map_err(|e| e.to_string())?;
    let t3 = Instant::now();
    drop(h);
    verify(if save_as { &out } else { work }, &args.driver)?;
    Ok(Run {
        open: t1 - t0,
        edit: t2 - t1,
        save: t3 - t2,
        bytes_written: stats.bytes_written,
    })
}

fn run_hivex(args: &Args, work: &Path, reg: &Path) -> Result<Run, String> {
    fresh_copy(&args.hive, work)?;
    let t0 = Instant::now();
    let out = Command::new("hivexregedit")
        .args(["--merge", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM"])
        .arg(work)
        .arg(reg)
        .output()
        .map_err(|e| format!("hivexregedit: {e}"))?;
    let t1 = Instant::now();
    if !out.status.success() {
        return Err(format!(
            "hivexregedit --merge failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    verify(work, &args.driver)?;
    // hivex writes the whole file back; an external process is timed only as a whole (the
    // time is kept in `save`, and only the total is printed).
    let size_after = fs::metadata(work).map_err(|e| e.to_string())?.len();
    Ok(Run {
        open: Duration::ZERO,
        edit: Duration::ZERO,
        save: t1 - t0,
        bytes_written: size_after,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn min_median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let min = v.first().copied().unwrap_or_default();
    let med = if v.is_empty() {
        Duration::ZERO
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
    };
    (ms(min), ms(med))
}

fn print_row(name: &str, runs: &[Run], whole_only: bool) {
    let col = |f: fn(&Run) -> Duration| min_median(runs.iter().map(f).collect());
    let (to, tom) = col(|r| r.open);
    let (te, tem) = col(|r| r.edit);
    let (ts, tsm) = col(|r| r.save);
    let (tt, ttm) = col(|r| r.total());
    let bytes = runs.first().map_or(0, |r| r.bytes_written);
    if whole_only {
        println!(
            "{name:<26} {:>17} {:>17} {:>17} {:>8.2} / {:>8.2} {:>12}",
            "-", "-", "-", tt, ttm, bytes
        );
    } else {
        println!(
            "{name:<26} {to:>7.2} / {tom:>7.2} {te:>7.2} / {tem:>7.2} {ts:>7.2} / {tsm:>7.2} \
             {tt:>8.2} / {ttm:>8.2} {bytes:>12}"
        );
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hive bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if !args.hive.exists() {
        return Err(format!(
            "{} is absent (the shared corpus); name a SYSTEM hive with --hive",
            args.hive.display()
        ));
    }
    fs::create_dir_all(&args.workdir)
        .map_err(|e| format!("creating {}: {e}", args.workdir.display()))?;
    let work = args.workdir.join("SYSTEM");
    let size = fs::metadata(&args.hive).map_err(|e| e.to_string())?.len();

    // The equivalent .reg file, for hivexregedit.
    let h = Hive::open(&args.hive, &HiveOpenOptions::default()).map_err(|e| e.to_string())?;
    let plan = plan_boot_storage_driver(&h, &args.driver).map_err(|e| e.to_string())?;
    drop(h);
    let reg = args.workdir.join("edits.reg");
    fs::write(&reg, plan.to_reg("HKEY_LOCAL_MACHINE\\SYSTEM")).map_err(|e| e.to_string())?;
    let values: usize = plan.keys.iter().map(|k| k.values.len()).sum();

    println!(
        "hive: {} ({:.1} MiB), driver {}, {} keys / {} values in the edit set ({}), {} runs",
        args.hive.display(),
        size as f64 / 1048576.0,
        args.driver.service,
        plan.keys.len(),
        values,
        if plan
            .keys
            .iter()
            .any(|k| k.path.starts_with("DriverDatabase"))
        {
            "DriverDatabase"
        } else {
            "CriticalDeviceDatabase"
        },
        args.runs
    );

    let have_hivex = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| p.join("hivexregedit").is_file())
    });

    // One unmeasured warm-up of each, then alternate so drift hits all alike.
    run_ours(args, &work, false)?;
    run_ours(args, &work, true)?;
    if have_hivex {
        run_hivex(args, &work, &reg)?;
    }
    let (mut save, mut save_as, mut hivex) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        save.push(run_ours(args, &work, false)?);
        save_as.push(run_ours(args, &work, true)?);
        if have_hivex {
            hivex.push(run_hivex(args, &work, &reg)?);
        }
    }

    println!(
        "\n{:<26} {:>17} {:>17} {:>17} {:>19} {:>12}",
        "ms (min / median)", "open", "edit", "save", "total", "bytes written"
    );
    print_row("diskconv open+edit+save", &save, false);
    print_row("diskconv ... save_as", &save_as, false);
    if have_hivex {
        print_row("hivexregedit --merge", &hivex, true);
    } else {
        println!("hivexregedit is not on PATH: no comparison");
    }
    let _ = fs::remove_file(&work);
    let _ = fs::remove_file(work.with_extension("out"));
    Ok(())
}
