//! Streaming upload of a fixed VHD into an Azure page blob, against Azure's own storage emulator
//! Azurite (its blob service, started on loopback by each test). The blobs are read back with
//! plain REST calls made here (Get Blob, Get Page Ranges, List Blobs), not with diskconv's
//! client, and compared with what diskconv writes to a local file and with qemu-img.
#![cfg(feature = "cloud")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::{diskconv, qemu_compare, qemu_io, require, sha256_file, tmpdir};

/// Azurite's well-known development account and key (published in its documentation).
const ACCOUNT: &str = "devstoreaccount1";
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
            b'/' => 63,
            _ => panic!("not base64: {c}"),
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
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// HMAC-SHA256 (RFC 2104) over sha2.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
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

/// A service SAS for `container` (sr=c) with permissions `sp` ("Create a service SAS",
/// string-to-sign of versions 2020-12-06 and later).
fn container_sas(container: &str, sp: &str) -> String {
    let sts = [
        sp,
        "",
        EXPIRY,
        &format!("/blob/{ACCOUNT}/{container}"),
        "",
        "",
        "",
        SV,
        "c",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let sig = b64_encode(&hmac_sha256(&b64_decode(KEY_B64), sts.as_bytes()));
    format!("sv={SV}&se={}&sr=c&sp={sp}&sig={}", pct(EXPIRY), pct(&sig))
}

/// An account SAS for the blob service (to create containers).
fn account_sas() -> String {
    let sp = "racwdl";
    let sts = format!("{ACCOUNT}\n{sp}\nb\nsco\n\n{EXPIRY}\n\n\n{SV}\n\n");
    let sig = b64_encode(&hmac_sha256(&b64_decode(KEY_B64), sts.as_bytes()));
    format!(
        "sv={SV}&ss=b&srt=sco&sp={sp}&se={}&sig={}",
        pct(EXPIRY),
        pct(&sig)
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Azurite's blob service on a free loopback port, in memory; killed when dropped.
struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

impl Azurite {
    /// Starts it, or `None` when azurite-blob is missing (outside CI).
    fn start() -> Option<Azurite> {
        if !require("azurite-blob") {
            return None;
        }
        let dir = tmpdir();
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new("azurite-blob")
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                // In memory (which excludes --location); started in a temporary folder, where
                // it may leave a debug or config file.
                .current_dir(dir.path())
                .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("azurite-blob runs");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Azurite {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("azurite-blob did not start listening");
    }

    fn base(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}/{ACCOUNT}")
    }

    fn create_container(&self, c: &str) {
        let url = format!(
            "{}/{c}?restype=container&{}",
            self.base(self.port),
            account_sas()
        );
        let r = agent()
            .put(&url)
            .header("x-ms-version", SV)
            .send(&[][..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "creating container {c}");
    }

    /// The URL of blob `name` with a container SAS, through `port` (Azurite's or a proxy's).
    fn blob_url(&self, port: u16, c: &str, name: &str) -> String {
        format!(
            "{}/{c}/{name}?{}",
            self.base(port),
            container_sas(c, "racwdl")
        )
    }

    fn get(&self, c: &str, name_query: &str) -> (u16, Vec<u8>) {
        let (name, q) = name_query.split_once('?').unwrap_or((name_query, ""));
        let mut url = format!("{}/{c}/{name}?{}", self.base(self.port), account_sas());
        if !q.is_empty() {
            url = format!("{url}&{q}");
        }
        let mut r = agent().get(&url).header("x-ms-version", SV).call().unwrap();
        let status = r.status().as_u16();
        let mut body = Vec::new();
        r.body_mut()
            .with_config()
            .limit(1 << 31)
            .reader()
            .read_to_end(&mut body)
            .unwrap();
        (status, body)
    }

    /// Names of the blobs in `c`.
    fn list(&self, c: &str) -> Vec<String> {
        let (s, body) = self.get(c, "?restype=container&comp=list&include=metadata");
        assert_eq!(s, 200);
        let t = String::from_utf8_lossy(&body).into_owned();
        t.split("<Name>")
            .skip(1)
            .map(|x| x.split("</Name>").next().unwrap().to_string())
            .collect()
    }

    fn download(&self, c: &str, name: &str, to: &Path) {
        let (s, body) = self.get(c, name);
        assert_eq!(s, 200, "downloading {name}");
        std::fs::write(to, body).unwrap();
    }

    /// Get Page Ranges, merged.
    fn page_ranges(&self, c: &str, name: &str) -> Vec<(u64, u64)> {
        let (s, body) = self.get(c, &format!("{name}?comp=pagelist"));
        assert_eq!(s, 200);
        let t = String::from_utf8_lossy(&body).into_owned();
        let field = |b: &str, tag: &str| -> u64 {
            b.split(&format!("<{tag}>"))
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in t.split("<PageRange>").skip(1) {
            let (a, z) = (field(b, "Start"), field(b, "End") + 1);
            match out.last_mut() {
                Some(l) if l.1 == a => l.1 = z,
                _ => out.push((a, z)),
            }
        }
        out
    }

    fn metadata_sha256(&self, c: &str, name: &str) -> Option<String> {
        let url = format!("{}/{c}/{name}?{}", self.base(self.port), account_sas());
        let r = agent()
            .head(&url)
            .header("x-ms-version", SV)
            .call()
            .unwrap();
        r.headers()
            .get("x-ms-meta-sha256")
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// The non-zero 512-byte sector runs of a file, merged.
fn nonzero_runs(p: &Path) -> Vec<(u64, u64)> {
    let b = std::fs::read(p).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, s) in b.chunks(512).enumerate() {
        if s.iter().any(|&x| x != 0) {
            let a = i as u64 * 512;
            let z = a + s.len() as u64;
            match out.last_mut() {
                Some(l) if l.1 == a => l.1 = z,
                _ => out.push((a, z)),
            }
        }
    }
    out
}

/// Asserts two fixed VHDs are byte-identical but for the footer's timestamp, checksum and
/// unique id (each run makes a new one).
fn assert_same_vhd(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(
        x.len(),
        y.len(),
        "lengths of {} and {}",
        a.display(),
        b.display()
    );
    let f = x.len() - 512;
    assert!(
        x[..f] == y[..f],
        "the disks of {} and {} differ",
        a.display(),
        b.display()
    );
    let mask = |v: &[u8]| {
        let mut v = v[f..].to_vec();
        v[24..28].fill(0); // timestamp
        v[64..84].fill(0); // checksum, unique id
        v
    };
    assert_eq!(
        mask(&x),
        mask(&y),
        "footers differ beyond timestamp, checksum, id"
    );
    assert_eq!(&y[f..f + 8], b"conectix");
    assert_eq!(u32::from_be_bytes(y[f + 60..f + 64].try_into().unwrap()), 2);
}

/// A 64 MiB raw source: data in whole 64 KiB granules, sector-sized pieces with zero sectors
/// between them inside one granule, and a sector at the very end.
fn make_source(dir: &Path) -> PathBuf {
    let src = dir.join("src.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let s = src.to_str().unwrap();
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1M 3M",
        "-c",
        "write -P 0x11 40M 512",
        "-c",
        "write -P 0x12 40961k 512",
        "-c",
        "write -P 0x13 50M 4096",
        "-c",
        "write -P 0x22 65535k 1024",
        s,
    ]);
    src
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn page_blob_equals_the_fixed_vhd_file_sends_only_data_and_verifies() {
    let Some(az) = Azurite::start() else { return };
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let state = d.path().join("state");
    let src = make_source(d.path());
    az.create_container("disks");
    let file = d.path().join("file.vhd");
    run_ok(
        diskconv()
            .args(["convert", "-O", "vpc", "-o", "subformat=fixed"])
            .arg(&src)
            .arg(&file),
    );
    let url = az.blob_url(az.port, "disks", "web01.vhd");
    let out = diskconv()
        .env("DISKCONV_STATE_DIR", &state)
        .args(["convert", "--json"])
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let sig = url.split("sig=").nth(1).unwrap();
    for text in [&stdout, &stderr] {
        assert!(!text.contains(sig) && !text.contains("sig="), "{text}");
    }
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        az.list("disks"),
        ["web01.vhd"],
        "only the final blob is left"
    );
    let down = d.path().join("down.vhd");
    az.download("disks", "web01.vhd", &down);
    assert_same_vhd(&file, &down);
    assert!(qemu_compare(&src, "raw", &down, "vpc"));
    // Only the non-zero sectors were written: the page ranges are exactly them.
    let ranges = az.page_ranges("disks", "web01.vhd");
    assert_eq!(ranges, nonzero_runs(&down));
    let page_bytes: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
    assert_eq!(json["bytes_sent"].as_u64().unwrap(), page_bytes);
    assert!(page_bytes < (4 << 20) + 8192, "{page_bytes}");
    // The SHA-256 of the whole file is in the metadata.
    let sha = sha256_file(&down);
    assert_eq!(
        az.metadata_sha256("disks", "web01.vhd").as_deref(),
        Some(sha.as_str())
    );
    assert_eq!(json["sha256"], sha.as_str());
    // No record is left behind.
    assert!(std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0) == 0);

    // verify: equal, then a changed page is found.
    let out = run_ok(diskconv().args(["verify", "--json"]).arg(&src).arg(&url));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["equal"], true, "{out}");
    assert!(!out.contains(sig));
    let put = format!(
        "{}/disks/web01.vhd?{}&comp=page",
        az.base(az.port),
        account_sas()
    );
    let r = agent()
        .put(&put)
        .header("x-ms-version", SV)
        .header("x-ms-page-write", "update")
        .header("x-ms-range", "bytes=2097152-2097663")
        .send(&[7u8; 512][..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let out = diskconv()
        .args(["verify", "--json"])
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sha256_matches"], false);
    assert_eq!(v["content_equal"], false);
    assert_eq!(v["mismatched_blocks"], 1);
}

/// A proxy on loopback in front of Azurite that stops passing requests on once `budget` bytes
/// went upstream (the connections then hang, like a network that died).
struct Proxy {
    port: u16,
    budget: Arc<AtomicU64>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let b = budget.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut client = client;
                    let mut server = server;
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n as u64,
                        };
                        // Wait while over budget (the test kills the client meanwhile).
                        loop {
                            let left = b.load(Ordering::SeqCst);
                            if left >= n {
                                if left != u64::MAX {
                                    b.fetch_sub(n, Ordering::SeqCst);
                                }
                                break;
                            }
                            b.store(0, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            if client.peek(&mut [0u8]).is_ok_and(|k| k == 0) {
                                return;
                            }
                        }
                        if server.write_all(&buf[..n as usize]).is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy { port, budget }
    }
}

#[test]
fn an_upload_killed_midway_resumes_to_the_same_blob() {
    let Some(az) = Azurite::start() else { return };
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let state = d.path().join("state");
    // 256 MiB: 12 MiB of data in each 64 MiB segment (the resume unit).
    let src = d.path().join("src.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let mut cmds = vec!["-f".to_string(), "raw".to_string()];
    for seg in 0..4u64 {
        cmds.push("-c".into());
        cmds.push(format!("write -P {} {}M 12M", 0x30 + seg, seg * 64 + 8));
    }
    cmds.push(src.to_str().unwrap().into());
    qemu_io(&cmds.iter().map(String::as_str).collect::<Vec<_>>());
    az.create_container("disks");
    let file = d.path().join("file.vhd");
    run_ok(
        diskconv()
            .args(["convert", "-O", "vpc", "-o", "subformat=fixed"])
            .arg(&src)
            .arg(&file),
    );

    let proxy = Proxy::start(az.port);
    let url = az.blob_url(proxy.port, "disks", "big.vhd");
    // About 1.5 segments of data pass, then the network hangs.
    proxy.budget.store(20 << 20, Ordering::SeqCst);
    let mut child = diskconv()
        .env("DISKCONV_STATE_DIR", &state)
        // One request at a time, so the budget lets whole requests through in order.
        .args(["convert", "--upload-threads", "1"])
        .arg(&src)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the record shows a finished segment.
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let rec = std::fs::read_dir(&state)
            .ok()
            .and_then(|mut r| r.next())
            .map(|e| e.unwrap().path());
        if let Some(p) = &rec {
            let lines = std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count();
            if lines >= 2 {
                break rec.unwrap();
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload ended before the kill"
        );
        assert!(Instant::now() < deadline, "no segment finished");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains("sig"), "the record holds no SAS: {text}");
    let left = az.list("disks");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("big.vhd.diskconv-partial-"), "{left:?}");

    proxy.budget.store(u64::MAX, Ordering::SeqCst);
    let out = run_ok(
        diskconv()
            .env("DISKCONV_STATE_DIR", &state)
            .args(["convert", "--resume", "--json"])
            .arg(&src)
            .arg(&url),
    );
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(json["segments_resumed"].as_u64().unwrap() >= 1, "{json}");
    assert!(json["bytes_sent"].as_u64().unwrap() < 48 << 20, "{json}");
    assert_eq!(az.list("disks"), ["big.vhd"]);
    assert!(!record.exists());
    let down = d.path().join("down.vhd");
    az.download("disks", "big.vhd", &down);
    assert_same_vhd(&file, &down);
    assert!(qemu_compare(&src, "raw", &down, "vpc"));
    assert_eq!(az.page_ranges("disks", "big.vhd"), nonzero_runs(&down));
    assert_eq!(
        az.metadata_sha256("disks", "big.vhd").as_deref(),
        Some(sha256_file(&down).as_str())
    );
    // --resume with nothing recorded is refused.
    let out = diskconv()
        .env("DISKCONV_STATE_DIR", &state)
        .args(["convert", "--resume"])
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no interrupted upload"));
}

#[test]
fn failures_leave_nothing_and_name_no_secret() {
    let Some(az) = Azurite::start() else { return };
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let state = d.path().join("state");
    az.create_container("disks");
    // A qcow2 source cut short: reading its data fails midway through the upload.
    let raw = d.path().join("r.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x44 0 60M",
        raw.to_str().unwrap(),
    ]);
    let q = d.path().join("cut.qcow2");
    crate::util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let f = std::fs::OpenOptions::new().write(true).open(&q).unwrap();
    f.set_len(30 << 20).unwrap();
    let url = az.blob_url(az.port, "disks", "cut.vhd");
    let sig = url.split("sig=").nth(1).unwrap().to_string();
    let run = |args: &[&str], src: &Path, dst: &str| {
        let out = diskconv()
            .env("DISKCONV_STATE_DIR", &state)
            .arg("convert")
            .args(args)
            .arg(src)
            .arg(dst)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains(&sig) && !err.contains("sig="), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = run(&[], &q, &url);
    assert!(
        err.contains("cut.qcow2") && err.contains("past the end"),
        "{err}"
    );
    assert!(az.list("disks").is_empty(), "{:?}", az.list("disks"));
    assert!(std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0) == 0);

    // Formats Azure does not take are refused before anything is sent.
    let err = run(&["-O", "qcow2"], &raw, &url);
    assert!(err.contains("fixed VHD"), "{err}");
    let err = run(&["-o", "subformat=dynamic"], &raw, &url);
    assert!(err.contains("fixed VHD"), "{err}");
    // A wrong signature, a missing container.
    let bad = url.replace(&sig, &pct(&b64_encode(&[9u8; 32])));
    let err = run(&[], &raw, &bad);
    assert!(err.contains("403") && err.contains("SAS"), "{err}");
    let nc = az.blob_url(az.port, "nosuch", "x.vhd");
    let err = run(&[], &raw, &nc);
    assert!(
        err.contains("container does not exist") || err.contains("ContainerNotFound"),
        "{err}"
    );
    // A blob SAS cannot hold the temporary blob beside the final one.
    let err = run(&[], &raw, &format!("{url}&sr=b").replace("sr=c&", ""));
    assert!(err.contains("sr=b"), "{err}");
    assert!(az.list("disks").is_empty());
}

#[test]
fn library_upload_pads_to_20_mib_and_a_cancelled_one_leaves_nothing() {
    use diskconv::cloud::azure::{
        PageBlobOptions, PageBlobUrl, convert_to_page_blob, verify_page_blob,
    };
    use diskconv::formats::vhd::VhdSubformat;
    let Some(az) = Azurite::start() else { return };
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    az.create_container("lib");
    // 10 MiB + 3 sectors: rounded up to Azure's 20 MiB minimum.
    let src = d.path().join("small.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len((10 << 20) + 1536)
        .unwrap();
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x77 4096 8192",
        src.to_str().unwrap(),
    ]);
    let reader = diskconv::open(&src, &diskconv::OpenOptions::new()).unwrap();
    let url = PageBlobUrl::parse(&az.blob_url(az.port, "lib", "small.vhd")).unwrap();
    let mut out = diskconv::OutputOptions::new(diskconv::Format::Vhd);
    out.vhd.subformat = VhdSubformat::Fixed;
    let opts = PageBlobOptions {
        state_dir: d.path().join("state"),
        ..PageBlobOptions::default()
    };
    let stats = convert_to_page_blob(
        reader.as_ref(),
        &url,
        &out,
        &opts,
        &diskconv::ConvertOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(stats.upload.blob_length, (20 << 20) + 512);
    assert_eq!(stats.upload.bytes_sent, 8192 + 512);
    let down = d.path().join("small.vhd");
    az.download("lib", "small.vhd", &down);
    assert_eq!(std::fs::metadata(&down).unwrap().len(), (20 << 20) + 512);
    assert!(qemu_compare(&src, "raw", &down, "vpc"));
    assert_eq!(stats.upload.sha256, sha256_file(&down));
    // verify reads it back; the 10 MiB of padding is more than verify's size tolerance.
    let e = verify_page_blob(reader.as_ref(), &url, 1 << 20, None).unwrap_err();
    assert!(e.to_string().contains("differ in size"), "{e}");

    // Cancelled before the first byte: an error, and nothing is left.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let url2 = PageBlobUrl::parse(&az.blob_url(az.port, "lib", "gone.vhd")).unwrap();
    let e = convert_to_page_blob(
        reader.as_ref(),
        &url2,
        &out,
        &opts,
        &diskconv::ConvertOptions {
            cancel: Some(cancel),
            ..Default::default()
        },
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind(), diskconv::ErrorKind::Cancelled);
    assert_eq!(az.list("lib"), ["small.vhd"]);
}
