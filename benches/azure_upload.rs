//! `cargo bench --bench azure_upload -- [--size 500M] [--workdir DIR] [--json FILE] [--runs N]`
//!
//! Streaming a fixed VHD into an Azure page blob against converting to a local file: the
//! benchmark image (see `common/source.rs`) converted by `diskconv convert -O vpc -o
//! subformat=fixed SRC file.vhd` (plus an fsync of the output), and by `diskconv convert SRC
//! http://127.0.0.1:PORT/devstoreaccount1/bench/disk.vhd?SAS` into Azure's emulator Azurite
//! (blob service, in memory, started here on loopback; `npm install -g azurite`). Prints wall
//! seconds, MB/s of virtual disk, CPU seconds and peak RSS of each diskconv child, and the
//! upload's own line (bytes of pages sent, requests). Azurite is one Node.js process: on a
//! small machine it shares the cores with diskconv, so the upload's time here is mostly
//! Azurite's.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::measure::{self, Measured};
use common::source;
use common::{io_err, target_dir};
use diskconv::util::{human_bytes, parse_size};
use serde_json::json;
use sha2::{Digest, Sha256};

const DISKCONV: &str = env!("CARGO_BIN_EXE_diskconv");
/// Azurite's published development account key.
const KEY_B64: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const SV: &str = "2021-12-02";
const EXPIRY: &str = "2099-01-01T00:00:00Z";

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s.as_bytes().iter().filter(|&&c| c != b'=') {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn b64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sign(sts: &str) -> String {
    let key = b64_decode(KEY_B64);
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(&key);
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(sts.as_bytes())
        .finalize();
    let mac = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    pct(&b64_encode(&mac))
}

fn account_sas() -> String {
    let sts = format!("devstoreaccount1\nracwdl\nb\nsco\n\n{EXPIRY}\n\n\n{SV}\n\n");
    format!(
        "sv={SV}&ss=b&srt=sco&sp=racwdl&se={}&sig={}",
        pct(EXPIRY),
        sign(&sts)
    )
}

struct Azurite(Child);

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("azure_upload bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> std::io::Result<()> {
    // Azurite answers Copy Blob of a blob over 512 MiB with HTTP 500 (it reads the source
    // into one string to check the SAS): 500 MiB is the largest disk it copies.
    let mut size = 500u64 << 20;
    let mut runs = 1;
    let mut workdir = target_dir().join("bench-work");
    let mut json_path = target_dir().join("bench-azure-upload.json");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => {
                size = it
                    .next()
                    .and_then(|v| parse_size(&v))
                    .ok_or_else(|| io_err("--size SIZE"))?
            }
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| io_err("--runs N"))?
            }
            "--workdir" => {
                workdir = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| io_err("--workdir DIR"))?
            }
            "--json" => {
                json_path = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| io_err("--json FILE"))?
            }
            "--bench" => {}
            other => return Err(io_err(format!("unknown argument {other}"))),
        }
    }
    std::fs::create_dir_all(&workdir)?;
    let src = source::source_image(&workdir, size)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let az_dir = workdir.join("azurite");
    std::fs::create_dir_all(&az_dir)?;
    let _az = Azurite(
        Command::new("azurite-blob")
            .current_dir(&az_dir)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io_err(format!("azurite-blob (npm install -g azurite): {e}")))?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(io_err("azurite-blob did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = format!("http://127.0.0.1:{port}/devstoreaccount1/bench");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let r = agent
        .put(&format!("{base}?restype=container&{}", account_sas()))
        .header("x-ms-version", SV)
        .send(&[][..])
        .map_err(io_err)?;
    if r.status().as_u16() != 201 {
        return Err(io_err(format!(
            "creating the container: HTTP {}",
            r.status()
        )));
    }
    let url = format!("{base}/disk.vhd?{}", account_sas());
    let out_dir = workdir.join("out");
    std::fs::create_dir_all(&out_dir)?;
    let file = out_dir.join("azure-bench.vhd");
    let err_file = out_dir.join("azure-bench.stderr");
    let mut best: [Option<Measured>; 2] = [None, None];
    let mut upload_line = String::new();
    let version = measure::output(Command::new("azurite-blob").arg("--version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    for _ in 0..runs {
        let _ = std::fs::remove_file(&file);
        source::warm_cache(&src.path)?;
        let mut m = measure::run(
            Command::new(DISKCONV)
                .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
                .arg(&src.path)
                .arg(&file),
            &err_file,
        )?;
        let t = Instant::now();
        std::fs::File::open(&file)?.sync_all()?;
        m.wall_s += t.elapsed().as_secs_f64();
        if best[0].as_ref().is_none_or(|b| m.wall_s < b.wall_s) {
            best[0] = Some(m);
        }
        source::warm_cache(&src.path)?;
        let m = measure::run(
            Command::new(DISKCONV)
                .args(["convert", "-f", "raw"])
                .arg(&src.path)
                .arg(&url),
            &err_file,
        )?;
        if let Some(e) = &m.error {
            return Err(io_err(format!("upload failed: {e}")));
        }
        let mut s = String::new();
        std::fs::File::open(&err_file)?.read_to_string(&mut s)?;
        upload_line = s.lines().last().unwrap_or_default().to_string();
        if best[1].as_ref().is_none_or(|b| m.wall_s < b.wall_s) {
            best[1] = Some(m);
        }
    }
    let _ = std::fs::remove_file(&file);
    println!(
        "azure_upload: {} source ({} allocated), best of {runs}; Azurite {version}",
        human_bytes(size),
        human_bytes(src.allocated)
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>10}",
        "case", "wall s", "MB/s", "CPU s", "peak RSS"
    );
    let mut rows = Vec::new();
    for (name, m) in ["fixed VHD to a file", "fixed VHD into Azurite"]
        .iter()
        .zip(best.iter())
    {
        let Some(m) = m else { continue };
        println!(
            "{name:<28} {:>8.2} {:>8.0} {:>8.2} {:>10}",
            m.wall_s,
            size as f64 / m.wall_s / 1e6,
            m.cpu_s(),
            human_bytes(m.max_rss)
        );
        rows.push(json!({"case": name, "measured": m}));
    }
    // The upload's line never holds the SAS (it prints the URL without its query).
    println!("{upload_line}");
    if let (Some(f), Some(u)) = (&best[0], &best[1]) {
        println!("upload / file wall time: {:.2}", u.wall_s / f.wall_s);
    }
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "size": size,
            "allocated": src.allocated,
            "rows": rows,
            "upload": upload_line,
            "azurite": version,
        }))?,
    )?;
    Ok(())
}
