//! `cargo bench --bench ntfs -- [--runs N] [--files N] [--workdir DIR]`
//!
//! Times the NTFS writer on a 256 MiB volume made by `mkntfs` (4 KiB clusters) in a raw image:
//! one transaction (`ImageTx` + `NtfsVolume`) that creates a folder, `--files` files of 64 KiB
//! in it (index splits), one 8 MiB file and one 12 MiB "hive" rewrite, then commits; against
//! ntfs-3g doing the same copies with one `ntfscp` per file (the tool people use for this
//! offline, each call a separate mount of the volume) on the same fresh image. Every result is
//! checked with `ntfsfix -n` and a read back with `ntfscat`. Prints min and median wall time,
//! MB/s of file data and the peak RSS of each. See `benches/README.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use diskconv::OpenOptions;
use diskconv::guest::disk::ImageTx;
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};

struct Args {
    runs: usize,
    files: usize,
    workdir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        runs: 5,
        files: 2000,
        workdir: root.join("target/bench-work/ntfs"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => a.runs = val("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--files" => {
                a.files = val("--files")?
                    .parse()
                    .map_err(|e| format!("--files: {e}"))?
            }
            "--workdir" => a.workdir = PathBuf::from(val("--workdir")?),
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other}\nusage: cargo bench --bench ntfs -- [--runs N] \
                     [--files N] [--workdir DIR]"
                ));
            }
        }
    }
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(a)
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deterministic file content.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Inputs {
    small: Vec<(String, Vec<u8>)>,
    big: Vec<u8>,
    hive: Vec<u8>,
}

impl Inputs {
    fn bytes(&self) -> u64 {
        (self.small.iter().map(|f| f.1.len()).sum::<usize>() + self.big.len() + self.hive.len())
            as u64
    }
}

fn fresh_volume(base: &Path, img: &Path) -> Result<(), String> {
    fs::copy(base, img).map_err(|e| format!("copying {}: {e}", base.display()))?;
    Ok(())
}

/// The timed side of diskconv, run in a child process (`--child IMG SRC N`) so its peak RSS is
/// its own: reads each input file from SRC (as ntfscp does) and writes it, in one transaction.
fn ours_child(img: &Path, src: &Path, files: usize) -> Result<(), String> {
    let rd = |p: PathBuf| fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
    let mut tx = ImageTx::open(img, &OpenOptions::default()).map_err(|e| e.chain())?;
    {
        let mut vol =
            NtfsVolume::open(&mut tx.disk, &NtfsOpenOptions::default()).map_err(|e| e.chain())?;
        vol.create_dir("bench").map_err(|e| e.chain())?;
        for i in 0..files {
            let name = small_name(i);
            let data = rd(src.join(&name))?;
            vol.write_file(&format!("bench\\{name}"), &data)
                .map_err(|e| e.chain())?;
        }
        vol.write_file("big.bin", &rd(src.join("big.bin"))?)
            .map_err(|e| e.chain())?;
        vol.write_file(
            "Windows\\System32\\config\\SYSTEM",
            &rd(src.join("SYSTEM"))?,
        )
        .map_err(|e| e.chain())?;
        vol.flush().map_err(|e| e.chain())?;
    }
    tx.commit().map_err(|e| e.chain())?;
    Ok(())
}

fn small_name(i: usize) -> String {
    format!("file-{i:05}-{}.dat", i * 7919 % 1000)
}

/// Runs `cmd` to completion; returns its wall time and peak RSS (KiB) from wait4.
fn timed(cmd: &mut Command) -> Result<(Duration, i64), String> {
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; both out-pointers are valid for the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let elapsed = t.elapsed();
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!("{cmd:?} failed (status {status:#x}): {err}"));
    }
    Ok((elapsed, ru.ru_maxrss))
}

fn theirs(img: &Path, src: &Path, inp: &Inputs) -> Result<(Duration, i64), String> {
    let vol = img.to_str().ok_or("non-UTF-8 path")?;
    let mut total = Duration::ZERO;
    let mut rss = 0;
    let mut add = |r: (Duration, i64)| {
        total += r.0;
        rss = rss.max(r.1);
    };
    for (name, _) in &inp.small {
        add(timed(
            Command::new("ntfscp")
                .args(["-f", "-q", vol])
                .arg(src.join(name))
                .arg(format!("/bench/{name}")),
        )?);
    }
    add(timed(
        Command::new("ntfscp")
            .args(["-f", "-q", vol])
            .arg(src.join("big.bin"))
            .arg("/big.bin"),
    )?);
    add(timed(
        Command::new("ntfscp")
            .args(["-f", "-q", vol])
            .arg(src.join("SYSTEM"))
            .arg("/Windows/System32/config/SYSTEM"),
    )?);
    Ok((total, rss))
}

fn check(img: &Path, inp: &Inputs) -> Result<(), String> {
    let vol = img.to_str().ok_or("non-UTF-8 path")?;
    sh(Command::new("ntfsfix").args(["-n", vol]))?;
    let (name, data) = &inp.small[inp.small.len() / 2];
    let out = Command::new("ntfscat")
        .args([vol, &format!("/bench/{name}")])
        .output()
        .map_err(|e| e.to_string())?;
    if out.stdout != *data {
        return Err(format!(
            "ntfscat of /bench/{name} differs from what was written"
        ));
    }
    let out = Command::new("ntfscat")
        .args([vol, "/Windows/System32/config/SYSTEM"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.stdout != inp.hive {
        return Err("ntfscat of the hive differs from what was written".into());
    }
    Ok(())
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn run() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 5 && argv[1] == "--child" {
        let files = argv[4].parse().map_err(|e| format!("--child: {e}"))?;
        return ours_child(Path::new(&argv[2]), Path::new(&argv[3]), files);
    }
    let a = parse_args()?;
    for tool in ["mkntfs", "ntfscp", "ntfsfix", "ntfscat"] {
        if sh(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            return Err(format!("{tool} (ntfs-3g) is needed for this benchmark"));
        }
    }
    fs::create_dir_all(&a.workdir).map_err(|e| e.to_string())?;
    let base = a.workdir.join("base.img");
    let src = a.workdir.join("src");
    fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let inp = Inputs {
        small: (0..a.files)
            .map(|i| (small_name(i), content(i as u64, 65536)))
            .collect(),
        big: content(1_000_001, 8 << 20),
        hive: content(1_000_002, 12 << 20),
    };
    for (name, data) in &inp.small {
        fs::write(src.join(name), data).map_err(|e| e.to_string())?;
    }
    fs::write(src.join("big.bin"), &inp.big).map_err(|e| e.to_string())?;
    fs::write(src.join("SYSTEM"), &inp.hive).map_err(|e| e.to_string())?;

    // The base volume: a 256 MiB mkntfs volume with Windows\System32\config\SYSTEM (an 11 MiB
    // file that both sides replace with 12 MiB).
    let f = fs::File::create(&base).map_err(|e| e.to_string())?;
    f.set_len(256 << 20).map_err(|e| e.to_string())?;
    drop(f);
    sh(Command::new("mkntfs")
        .args(["-F", "-f", "-q", "-c", "4096"])
        .arg(&base))?;
    let old = a.workdir.join("old-system");
    fs::write(&old, content(7, 11 << 20)).map_err(|e| e.to_string())?;
    {
        let mut tx = ImageTx::open(&base, &OpenOptions::default()).map_err(|e| e.chain())?;
        {
            let mut vol = NtfsVolume::open(&mut tx.disk, &NtfsOpenOptions::default())
                .map_err(|e| e.chain())?;
            vol.create_dir_all("Windows\\System32\\config")
                .map_err(|e| e.chain())?;
            vol.write_file(
                "Windows\\System32\\config\\SYSTEM",
                &fs::read(&old).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.chain())?;
            vol.flush().map_err(|e| e.chain())?;
        }
        tx.commit().map_err(|e| e.chain())?;
    }
    sh(Command::new("ntfsfix").args(["-n"]).arg(&base))?;

    let img = a.workdir.join("run.img");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut t_ours = Vec::new();
    let mut t_theirs = Vec::new();
    let (mut rss_ours, mut rss_theirs) = (0, 0);
    for _ in 0..a.runs {
        fresh_volume(&base, &img)?;
        let (t, rss) = timed(
            Command::new(&exe)
                .arg("--child")
                .arg(&img)
                .arg(&src)
                .arg(a.files.to_string()),
        )?;
        t_ours.push(t);
        rss_ours = rss_ours.max(rss);
        check(&img, &inp)?;

        fresh_volume(&base, &img)?;
        // ntfscp does not create folders: make /bench with our writer first (untimed).
        {
            let mut tx = ImageTx::open(&img, &OpenOptions::default()).map_err(|e| e.chain())?;
            {
                let mut vol = NtfsVolume::open(&mut tx.disk, &NtfsOpenOptions::default())
                    .map_err(|e| e.chain())?;
                vol.create_dir("bench").map_err(|e| e.chain())?;
                vol.flush().map_err(|e| e.chain())?;
            }
            tx.commit().map_err(|e| e.chain())?;
        }
        let (t, rss) = theirs(&img, &src, &inp)?;
        t_theirs.push(t);
        rss_theirs = rss_theirs.max(rss);
        check(&img, &inp)?;
    }
    let mb = inp.bytes() as f64 / 1e6;
    let (omin, omed) = stats(t_ours);
    let (tmin, tmed) = stats(t_theirs);
    println!(
        "volume 256 MiB, 4 KiB clusters; {} files of 64 KiB + 8 MiB + 12 MiB = {:.1} MB per run, {} runs",
        a.files, mb, a.runs
    );
    println!(
        "diskconv (one transaction, commit):  min {:>8.3} s  median {:>8.3} s  {:>7.1} MB/s  peak RSS {} MiB",
        omin.as_secs_f64(),
        omed.as_secs_f64(),
        mb / omin.as_secs_f64(),
        rss_ours / 1024
    );
    println!(
        "ntfs-3g ntfscp (one call per file):   min {:>8.3} s  median {:>8.3} s  {:>7.1} MB/s  peak RSS {} MiB",
        tmin.as_secs_f64(),
        tmed.as_secs_f64(),
        mb / tmin.as_secs_f64(),
        rss_theirs / 1024
    );
    println!(
        "ratio (ntfs-3g time / diskconv time, min): {:.2}x",
        tmin.as_secs_f64() / omin.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntfs bench: {e}");
            ExitCode::FAILURE
        }
    }
}
