//! `cargo bench --bench s3_upload -- [--size 2G] [--format vmdk] [--workdir DIR] [--json FILE]`
//!
//! Streaming upload into an S3 store: the benchmark image (see `common/source.rs`) converted
//! and uploaded at once (`diskconv convert SRC s3://bench/KEY`) to a local s3s-fs server,
//! against the two-step way: converting to a local file (`diskconv convert SRC FILE`) and
//! uploading that file with the same client (`upload_file`, this client's `aws s3 cp`, run
//! in a child of this benchmark). Prints seconds, MB/s of virtual disk, CPU and peak RSS of
//! each child, and the aim of the issue: streaming <= conversion alone + 10 %. The uploaded
//! file is compared with the local one (SHA-256), the streamed object with the source
//! (`qemu-img compare`).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::measure::{self, Measured};
use common::source;
use common::{io_err, target_dir};
use diskconv::util::parse_size;
use serde_json::json;

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");
const KEY: &str = "benchkey";
const SECRET: &str = "benchsecret";

struct Args {
    size: u64,
    format: String,
    workdir: PathBuf,
    json: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 2 << 30,
        format: "vmdk".into(),
        workdir: target_dir().join("bench-work"),
        json: target_dir().join("bench-s3-upload-results.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--size" => a.size = parse_size(&val()?).ok_or("--size: not a size")?,
            "--format" => a.format = val()?,
            "--workdir" => a.workdir = PathBuf::from(val()?),
            "--json" => a.json = PathBuf::from(val()?),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// The child mode: `s3_upload --upload-file FILE s3://BUCKET/KEY ENDPOINT`.
fn upload_child(file: &str, url: &str, endpoint: &str) -> ExitCode {
    use diskconv::cloud::s3::{S3Config, S3ConfigOptions, S3UploadOptions, S3Url, upload_file};
    let r = (|| {
        let cfg = S3Config::from_env(&S3ConfigOptions {
            endpoint: Some(endpoint.into()),
            path_style: true,
        })?;
        upload_file(
            Path::new(file),
            &S3Url::parse(url)?,
            cfg,
            &S3UploadOptions::default(),
        )
    })();
    match r {
        Ok(rep) => {
            println!("{}", rep.sha256);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upload failed: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

fn sha256(p: &Path) -> std::io::Result<String> {
    let out = measure::output(Command::new("sha256sum").arg(p))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn line(what: &str, m: &Measured, size: u64) {
    println!(
        "{what:<44} {:>7.2} s {:>7.0} MB/s  cpu {:>6.2} s  peak RSS {:>4} MiB{}",
        m.wall_s,
        size as f64 / m.wall_s / 1e6,
        m.cpu_s(),
        m.max_rss >> 20,
        m.error
            .as_ref()
            .map(|e| format!("  FAILED: {e}"))
            .unwrap_or_default()
    );
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 5 && argv[1] == "--upload-file" {
        return upload_child(&argv[2], &argv[3], &argv[4]);
    }
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("s3_upload: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3_upload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> std::io::Result<()> {
    std::fs::create_dir_all(&a.workdir)?;
    let img = source::source_image(&a.workdir, a.size)?;
    let store = a.workdir.join("s3-store");
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(store.join("bench"))?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io_err(format!("starting s3s-fs (cargo install s3s-fs): {e}")))?;
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            return Err(io_err("s3s-fs did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    // The server's CPU seconds so far (utime + stime of /proc/PID/stat): it runs on the same
    // cores as the conversion, so its share is printed beside each step.
    let server_pid = server.id();
    let server_cpu = move || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{server_pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz.max(1.0)
    };
    let state = a.workdir.join("s3-state");
    let env = |c: &mut Command| {
        c.env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("XDG_STATE_HOME", &state);
    };
    let r = (|| {
        let ext = a.format.as_str();
        let file = a.workdir.join(format!("s3-bench-out.{ext}"));
        let _ = std::fs::remove_file(&file);
        source::warm_cache(&img.path)?;
        let err = a.workdir.join("s3-bench-stderr.txt");
        // 1. Conversion alone, to a local file.
        let conv = measure::run(
            Command::new(DISKCONV)
                .args(["convert", "-O", ext])
                .arg(&img.path)
                .arg(&file),
            &err,
        )?;
        // 2. The file uploaded with the same client.
        let cpu0 = server_cpu();
        let mut c = Command::new(std::env::current_exe()?);
        c.arg("--upload-file")
            .arg(&file)
            .arg(format!("s3://bench/file.{ext}"))
            .arg(&endpoint);
        env(&mut c);
        let up = measure::run(&mut c, &err)?;
        let up_server_cpu = server_cpu() - cpu0;
        let cpu0 = server_cpu();
        // 3. Converted and uploaded at once.
        let mut c = Command::new(DISKCONV);
        c.args(["convert", "-O", ext])
            .arg(&img.path)
            .arg(format!("s3://bench/stream.{ext}"))
            .args(["--endpoint", &endpoint]);
        env(&mut c);
        let stream = measure::run(&mut c, &err)?;
        let stream_server_cpu = server_cpu() - cpu0;
        // The uploaded file is the file byte for byte; the streamed object is another run of
        // the conversion (a VMDK's descriptor carries a random CID), so its content is compared
        // with the source by qemu-img.
        let file_equal = sha256(&file)? == sha256(&store.join(format!("bench/file.{ext}")))?;
        let qfmt = if ext == "vhd" { "vpc" } else { ext };
        let stream_equal = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", qfmt])
            .arg(&img.path)
            .arg(store.join(format!("bench/stream.{ext}")))
            .status()
            .is_ok_and(|s| s.success());
        println!(
            "s3_upload: {} {} source ({}), {ext} output of {} bytes, s3s-fs on loopback",
            source::size_tag(a.size),
            img.content,
            img.description,
            std::fs::metadata(&file)?.len()
        );
        line("convert to a local file", &conv, a.size);
        line("upload the file (same client)", &up, a.size);
        let two_step = conv.wall_s + up.wall_s;
        println!(
            "{:<44} {:>7.2} s {:>7.0} MB/s",
            "convert, then upload (sum)",
            two_step,
            a.size as f64 / two_step / 1e6
        );
        line("convert and upload at once (streaming)", &stream, a.size);
        let ratio = stream.wall_s / conv.wall_s;
        println!(
            "s3s-fs CPU: {up_server_cpu:.2} s while the file was uploaded, {stream_server_cpu:.2} s \
             while streaming (the same cores the conversion uses)"
        );
        println!(
            "streaming / conversion alone: {ratio:.3} (aim <= 1.10: {}); uploaded file equal \
             to the local one: {file_equal}; streamed object equal to the source (qemu-img \
             compare): {stream_equal}",
            if ratio <= 1.10 { "met" } else { "NOT met" },
        );
        let v = json!({
            "size": a.size,
            "format": ext,
            "source": img.description,
            "convert": conv,
            "upload_file": up,
            "stream": stream,
            "stream_over_convert": ratio,
            "server_cpu_upload_file_s": up_server_cpu,
            "server_cpu_stream_s": stream_server_cpu,
            "file_object_equal": file_equal,
            "stream_object_equal": stream_equal,
        });
        std::fs::write(&a.json, serde_json::to_string_pretty(&v)?)?;
        let _ = std::fs::remove_file(&file);
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&store);
    r
}
