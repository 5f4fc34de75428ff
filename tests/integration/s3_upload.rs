//! `convert ... s3://BUCKET/KEY` and `verify IMG s3://...` against two independent S3 servers
//! started on loopback by the tests: s3s-fs (objects stored as plain files, read back from its
//! folder) and moto in server mode (boto3 as the client that makes buckets, lists pending
//! multipart uploads and downloads objects; its request log counts the parts sent).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Rng, diskconv, make_raw, qemu_compare, qemu_img, require, sha256_file, tmpdir};

/// Access key and secret of the test servers. The secret is recognisable, so a test can
/// search every output for it.
const KEY: &str = "diskconvtestkey";
const SECRET: &str = "S3cretNeverPrinted-7f3a9c";

/// A server process, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
    /// s3s-fs: the folder it stores into; moto: its request log.
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the S3 server exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the S3 server did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// s3s-fs serving `root` with a bucket `bkt`.
fn s3s_fs(root: &Path) -> Server {
    std::fs::create_dir_all(root.join("bkt")).unwrap();
    let port = free_port();
    let mut child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting s3s-fs");
    wait_listening(port, &mut child);
    Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        path: root.to_path_buf(),
    }
}

/// moto in server mode, its request log in `log`, with a bucket `bkt`.
fn moto(log: &Path) -> Server {
    let port = free_port();
    let f = std::fs::File::create(log).unwrap();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("starting moto");
    wait_listening(port, &mut child);
    let s = Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        path: log.to_path_buf(),
    };
    boto(&s, "s3.create_bucket(Bucket='bkt')");
    s
}

/// Runs `script` in python3 with `s3`, a boto3 client of the server; returns its stdout.
fn boto(s: &Server, script: &str) -> String {
    let prelude = format!(
        "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{KEY}', \
         aws_secret_access_key='{SECRET}', region_name='us-east-1')\n",
        s.endpoint
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pending multipart uploads of the moto server (ListMultipartUploads, by boto3).
fn moto_pending(s: &Server) -> usize {
    boto(
        s,
        "print(len(s3.list_multipart_uploads(Bucket='bkt').get('Uploads', [])))",
    )
    .trim()
    .parse()
    .unwrap()
}

/// Whether moto has the object `key`.
fn moto_has(s: &Server, key: &str) -> bool {
    boto(
        s,
        &format!(
            "print(any(o['Key'] == '{key}' for o in s3.list_objects_v2(Bucket='bkt').get('Contents', [])))"
        ),
    )
    .trim()
        == "True"
}

/// Pending multipart uploads s3s-fs keeps in its folder (it has no ListMultipartUploads).
fn s3s_pending(s: &Server) -> Vec<String> {
    std::fs::read_dir(&s.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload"))
        .collect()
}

/// `diskconv ARGS` with the server's credentials, its state (upload records) under `state` and
/// no AWS settings of the machine.
fn dc(s: &Server, state: &Path, sub: &str) -> Command {
    let mut c = diskconv();
    for v in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_DEFAULT_REGION",
    ] {
        c.env_remove(v);
    }
    c.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("XDG_STATE_HOME", state)
        .env("HOME", state)
        .arg(sub)
        .arg("--endpoint")
        .arg(&s.endpoint);
    c
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "diskconv failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn no_secret(out: &Output) {
    for text in [&out.stdout, &out.stderr] {
        let t = String::from_utf8_lossy(text);
        assert!(!t.contains(SECRET), "the secret key was printed: {t}");
    }
}

/// The upload part of `convert --json`'s output.
fn upload_report(stdout: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("convert --json");
    v["upload"].clone()
}

#[test]
fn s3s_fs_every_format_round_trips_and_verifies() {
    if !require("s3s-fs") || !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let server = s3s_fs(&d.path().join("store"));
    let src = d.path().join("src.raw");
    make_raw(&src, 10 << 20, 7);
    for (ext, fmt) in [
        ("raw", "raw"),
        ("vmdk", "vmdk"),
        ("qcow2", "qcow2"),
        ("vhdx", "vhdx"),
    ] {
        let url = format!("s3://bkt/disks/img.{ext}");
        let out = dc(&server, d.path(), "convert")
            .arg("--json")
            .arg(&src)
            .arg(&url)
            .output()
            .unwrap();
        no_secret(&out);
        let report = upload_report(&ok(&out));
        // The object, read back from the server's folder by qemu-img.
        let obj = server.path.join("bkt/disks").join(format!("img.{ext}"));
        assert!(
            qemu_compare(&src, "raw", &obj, fmt),
            "{ext}: content differs"
        );
        let sha = sha256_file(&obj);
        assert_eq!(report["sha256"], sha, "{ext}");
        assert_eq!(report["size"], std::fs::metadata(&obj).unwrap().len());
        // s3s-fs keeps the user metadata in a JSON file of its own: the SHA-256 is there.
        let meta = std::fs::read_dir(&server.path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
            .any(|p| std::fs::read_to_string(p).unwrap().contains(&sha));
        assert!(meta, "{ext}: no metadata with the SHA-256");
        let out = dc(&server, d.path(), "verify")
            .arg(&src)
            .arg(&url)
            .output()
            .unwrap();
        let text = ok(&out);
        assert!(text.contains("matches the stored one"), "{text}");
        assert!(text.contains("Images are identical."), "{text}");
    }
    assert!(s3s_pending(&server).is_empty());
    // qemu-img's own check of the uploaded qcow2.
    qemu_img(&[
        "check",
        server.path.join("bkt/disks/img.qcow2").to_str().unwrap(),
    ]);

    // A changed source: verify says so (exit 1).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 4 << 20))
        .unwrap();
    let out = dc(&server, d.path(), "verify")
        .arg(&src)
        .arg("s3://bkt/disks/img.vmdk")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Images differ"));
}

/// The parts sent (UploadPart requests) in moto's request log.
fn parts_in_log(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"PUT /bkt/") && l.contains("partNumber="))
        .count()
}

/// Parts recorded in the local upload record under `state`.
fn recorded_parts(state: &Path) -> usize {
    let dir = state.join("diskconv/s3");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v["parts"].as_array().map_or(0, |a| a.len()))
        .sum()
}

#[test]
fn moto_upload_killed_at_random_points_resumes_and_sends_only_missing_parts() {
    if !require("moto") || !require("python3") {
        return;
    }
    let d = tmpdir();
    let log = d.path().join("moto.log");
    let server = moto(&log);
    let src = d.path().join("src.raw");
    make_raw(&src, 64 << 20, 11);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng::new(seed);
    // 8 parts of 8 MiB; killed twice, after a random number of finished parts each time.
    let mut killed = 0;
    for round in 0..2 {
        let at = 1 + rng.below(3) as usize + recorded_parts(d.path());
        let mut cmd = dc(&server, d.path(), "convert");
        cmd.args(["-O", "raw"]).arg(&src).arg("s3://bkt/disk.img");
        if round > 0 {
            cmd.arg("--resume");
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if recorded_parts(d.path()) >= at {
                let _ = child.kill();
                killed += 1;
                break;
            }
            if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.wait();
    }
    eprintln!("seed {seed}: killed {killed} times");
    let recorded = recorded_parts(d.path());
    // The killed runs' last requests may reach the log after the kill: wait until it is still.
    let mut before = parts_in_log(&log);
    loop {
        std::thread::sleep(Duration::from_millis(400));
        let now = parts_in_log(&log);
        if now == before {
            break;
        }
        before = now;
    }
    let out = dc(&server, d.path(), "convert")
        .args(["-O", "raw", "--resume", "--json"])
        .arg(&src)
        .arg("s3://bkt/disk.img")
        .output()
        .unwrap();
    let report = upload_report(&ok(&out));
    let sent = parts_in_log(&log) - before;
    assert_eq!(report["parts"], 8, "seed {seed}");
    assert_eq!(
        report["parts_sent"], sent as u64,
        "seed {seed}: the server's log"
    );
    assert_eq!(
        report["parts_reused"], recorded as u64,
        "seed {seed}: every recorded part is reused"
    );
    assert_eq!(
        sent + recorded,
        8,
        "seed {seed}: only the missing parts are sent"
    );
    // The object, downloaded by boto3, is the source; its metadata holds its SHA-256.
    let copy = d.path().join("copy.raw");
    boto(
        &server,
        &format!("s3.download_file('bkt', 'disk.img', '{}')", copy.display()),
    );
    let sha = sha256_file(&src);
    assert_eq!(sha256_file(&copy), sha);
    let meta = boto(
        &server,
        "print(s3.head_object(Bucket='bkt', Key='disk.img')['Metadata']['sha256'])",
    );
    assert_eq!(meta.trim(), sha);
    assert_eq!(moto_pending(&server), 0, "no upload left pending");
    assert_eq!(recorded_parts(d.path()), 0, "the record is removed");

    // Resuming with another source is an error, not a corrupt object.
    let mut cmd = dc(&server, d.path(), "convert");
    let mut child = cmd
        .args(["-O", "raw"])
        .arg(&src)
        .arg("s3://bkt/other.img")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while recorded_parts(d.path()) < 2 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    if recorded_parts(d.path()) >= 2 {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"X", 100))
            .unwrap();
        let out = dc(&server, d.path(), "convert")
            .args(["-O", "raw", "--resume"])
            .arg(&src)
            .arg("s3://bkt/other.img")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("differs from the part sent before"), "{err}");
        assert!(!moto_has(&server, "other.img"));
        assert_eq!(moto_pending(&server), 0);
    }
}

#[test]
fn failed_or_interrupted_runs_leave_no_object_and_no_pending_upload() {
    if !require("moto") || !require("s3s-fs") || !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let moto = moto(&d.path().join("moto.log"));
    let s3s = s3s_fs(&d.path().join("store"));
    // A source whose second half cannot be read: a qcow2 cut short.
    let raw = d.path().join("src.raw");
    make_raw(&raw, 32 << 20, 3);
    let q = d.path().join("cut.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let len = std::fs::metadata(&q).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&q)
        .unwrap()
        .set_len(len * 2 / 3)
        .unwrap();
    for server in [&moto, &s3s] {
        let out = dc(server, d.path(), "convert")
            .args(["-O", "raw"])
            .arg(&q)
            .arg("s3://bkt/failed.raw")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        no_secret(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cut.qcow2"),
            "the error names the source: {err}"
        );
    }
    assert!(!moto_has(&moto, "failed.raw"));
    assert_eq!(moto_pending(&moto), 0);
    assert!(!s3s.path.join("bkt/failed.raw").exists());
    assert!(s3s_pending(&s3s).is_empty(), "{:?}", s3s_pending(&s3s));

    // Ctrl-C (SIGINT) in the middle of an upload: aborted, nothing under the key.
    let child = dc(&moto, d.path(), "convert")
        .args(["-O", "raw"])
        .arg(&raw)
        .arg("s3://bkt/cancelled.raw")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while recorded_parts(d.path()) < 1 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid, which it has not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(130) {
        assert!(!moto_has(&moto, "cancelled.raw"));
    }
    assert_eq!(moto_pending(&moto), 0);
    assert_eq!(recorded_parts(d.path()), 0);
}

#[test]
fn wrong_credentials_missing_bucket_and_bad_urls_are_clear_errors_without_the_secret() {
    if !require("s3s-fs") {
        return;
    }
    let d = tmpdir();
    let server = s3s_fs(&d.path().join("store"));
    let src = d.path().join("src.raw");
    make_raw(&src, 1 << 20, 5);
    let run = |cmd: &mut Command| -> String {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{out:?}");
        no_secret(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A wrong secret: the server refuses the signature.
    let err = run(dc(&server, d.path(), "convert")
        .env("AWS_SECRET_ACCESS_KEY", format!("{SECRET}-wrong"))
        .arg(&src)
        .arg("s3://bkt/x.raw"));
    assert!(err.contains("check the credentials"), "{err}");
    assert!(!err.contains(&format!("{SECRET}-wrong")));
    // No credentials at all.
    let err = run(dc(&server, d.path(), "convert")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .arg(&src)
        .arg("s3://bkt/x.raw"));
    assert!(err.contains("no S3 credentials"), "{err}");
    // A missing bucket.
    let err = run(dc(&server, d.path(), "convert")
        .arg(&src)
        .arg("s3://nosuchbucket/x.raw"));
    assert!(err.contains("nosuchbucket"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // Bad URLs.
    let err = run(dc(&server, d.path(), "convert").arg(&src).arg("s3://bkt/"));
    assert!(err.contains("not an S3 object URL"), "{err}");
    let err = run(diskconv()
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .args(["convert", "--endpoint", "localhost:9"])
        .arg(&src)
        .arg("s3://bkt/x.raw"));
    assert!(err.contains("is not a usable URL"), "{err}");
    // Nothing listens there: a network error naming the endpoint.
    let port = free_port();
    let err = run(diskconv()
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("XDG_STATE_HOME", d.path())
        .args(["convert", "--endpoint", &format!("http://127.0.0.1:{port}")])
        .arg(&src)
        .arg("s3://bkt/x.raw"));
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(s3s_pending(&server).is_empty());
}

#[test]
fn large_objects_get_their_metadata_through_upload_part_copy() {
    use diskconv::cloud::s3::{
        S3Config, S3ConfigOptions, S3UploadOptions, S3Url, convert_to_s3, verify_s3,
    };
    if !require("moto") || !require("python3") {
        return;
    }
    let d = tmpdir();
    let server = moto(&d.path().join("moto.log"));
    let src = d.path().join("src.raw");
    make_raw(&src, 16 << 20, 9);
    let img = diskconv::open(&src, &diskconv::OpenOptions::new()).unwrap();
    let env = |k: &str| -> Option<String> {
        match k {
            "AWS_ACCESS_KEY_ID" => Some(KEY.into()),
            "AWS_SECRET_ACCESS_KEY" => Some(SECRET.into()),
            "HOME" => Some(d.path().display().to_string()),
            _ => None,
        }
    };
    let cfg = S3Config::resolve(
        &S3ConfigOptions {
            endpoint: Some(server.endpoint.clone()),
            path_style: false,
        },
        &env,
    )
    .unwrap();
    let url = S3Url::parse("s3://bkt/big.vmdk").unwrap();
    let opts = diskconv::OutputOptions::new(diskconv::image::Format::Vmdk);
    // Copies of more than 5 MiB go through UploadPartCopy parts of 5 MiB.
    let upload = S3UploadOptions {
        copy_limit: 5 << 20,
        ..S3UploadOptions::default()
    };
    let (_, report) = convert_to_s3(
        img.as_ref(),
        &url,
        cfg.clone(),
        &opts,
        &upload,
        &diskconv::ConvertOptions::default(),
        None,
    )
    .unwrap();
    assert!(report.size > 5 << 20, "{}", report.size);
    let meta = boto(
        &server,
        "print(s3.head_object(Bucket='bkt', Key='big.vmdk')['Metadata']['sha256'])",
    );
    assert_eq!(meta.trim(), report.sha256);
    let v = verify_s3(img.as_ref(), &url, cfg, None, 1 << 20, None).unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(moto_pending(&server), 0);
}

/// `convert --target T SRC s3://...`: the preflight runs first, the target's artifact streams
/// into the bucket (the gcp tarball straight, sized to a whole GiB), and a failing preflight
/// uploads nothing.
#[test]
fn target_artifacts_stream_into_the_bucket() {
    if !require("s3s-fs") || !require("qemu-img") || !require("tar") {
        return;
    }
    let d = tmpdir();
    let server = s3s_fs(&d.path().join("store"));
    let src = d.path().join("src.raw");
    make_raw(&src, 10 << 20, 11);

    // gcp: disk.raw in a gzip'd sparse tar, extracted by GNU tar equal to the source, 1 GiB.
    let out = dc(&server, d.path(), "convert")
        .args(["--target", "gcp", "--no-preflight"])
        .arg(&src)
        .arg("s3://bkt/images/web01.tar.gz")
        .output()
        .unwrap();
    no_secret(&out);
    ok(&out);
    let obj = server.path.join("bkt/images/web01.tar.gz");
    let x = d.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let t = Command::new("tar")
        .arg("-xzf")
        .arg(&obj)
        .arg("-C")
        .arg(&x)
        .output()
        .unwrap();
    assert!(t.status.success(), "{t:?}");
    let raw = x.join("disk.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 30);
    assert!(
        qemu_compare(&src, "raw", &raw, "raw"),
        "gcp: content differs"
    );

    // aws: a streamOptimized VMDK.
    let out = dc(&server, d.path(), "convert")
        .args(["--target", "aws", "--no-preflight"])
        .arg(&src)
        .arg("s3://bkt/images/web01.vmdk")
        .output()
        .unwrap();
    ok(&out);
    let vmdk = server.path.join("bkt/images/web01.vmdk");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&vmdk)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(info.contains("streamOptimized"), "{info}");
    assert!(qemu_compare(&src, "raw", &vmdk, "vmdk"));

    // A failing preflight (a GPT/UEFI disk for Hyper-V generation 1, which boots BIOS only)
    // exits 3 and uploads nothing.
    if require("sfdisk") {
        let gpt = d.path().join("uefi.raw");
        crate::cloud_preflight::partitioned(&gpt, 32 << 20, crate::cloud_preflight::GPT_UEFI);
        let out = dc(&server, d.path(), "convert")
            .args(["--target", "hyperv", "-O", "vpc"])
            .arg(&gpt)
            .arg("s3://bkt/images/gen1.vhd")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("FAIL  boot-mode"));
        assert!(!server.path.join("bkt/images/gen1.vhd").exists());
        assert!(s3s_pending(&server).is_empty());
    }
    // An unknown target is a usage error, before anything is sent.
    let out = dc(&server, d.path(), "convert")
        .args(["--target", "mars"])
        .arg(&src)
        .arg("s3://bkt/images/x.raw")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!server.path.join("bkt/images/x.raw").exists());
}
