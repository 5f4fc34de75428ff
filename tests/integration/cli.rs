//! The `diskconv` command end to end: exit codes, messages, temporary outputs.

use std::path::Path;

use crate::util::{self, diskconv, make_raw, tmpdir};

fn run_ok(args: &[&str]) -> String {
    let out = diskconv().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "diskconv {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and expects exit `code`; returns stderr.
fn run_code(args: &[&str], code: i32) -> String {
    let out = diskconv().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "diskconv {args:?}: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn raw_round_trip_through_the_cli() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, (3 << 20) + 4097, 7);
    let dst = dir.path().join("dst.raw");
    run_ok(&["convert", "-O", "raw", s(&src), s(&dst)]);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    let out = run_ok(&["compare", s(&src), s(&dst)]);
    assert!(out.contains("identical"), "{out}");
    // The output is sparse where the source had zeros.
    let json = run_ok(&["map", "--json", s(&dst)]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"data"), "{kinds:?}");
    let info: serde_json::Value =
        serde_json::from_str(&run_ok(&["info", "--json", s(&dst)])).unwrap();
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual_size"], (3u64 << 20) + 4097);
}

#[test]
fn compare_reports_first_difference_and_exit_codes() {
    let dir = tmpdir();
    let a = dir.path().join("a.raw");
    make_raw(&a, 2 << 20, 1);
    let b = dir.path().join("b.raw");
    std::fs::copy(&a, &b).unwrap();
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[1_000_001] ^= 0xff;
    std::fs::write(&b, &bytes).unwrap();
    let out = diskconv().args(["compare", s(&a), s(&b)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("offset 1000001"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = run_code(&["compare", s(&a), "/nonexistent/x.raw"], 2);
    assert!(err.contains("/nonexistent/x.raw"), "{err}");
}

#[test]
fn bad_options_and_inputs_fail_cleanly() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 1 << 20, 3);
    let dst = dir.path().join("out.qcow2");
    for (args, needle) in [
        (
            vec!["convert", "-O", "qcow2", "-o", "cluster_size=3k"],
            "cluster_size",
        ),
        (vec!["convert", "-O", "qcow2", "-o", "bogus=1"], "bogus"),
        (vec!["convert", "-O", "nope"], "unknown format"),
        (
            vec!["convert", "-O", "raw", "-o", "compat=1.1"],
            "does not apply",
        ),
        (vec!["convert", "-O", "raw", "-c"], "cannot be compressed"),
        (
            vec![
                "convert",
                "-O",
                "qcow2",
                "-o",
                "compat=0.10,compression_type=zstd",
            ],
            "compat=1.1",
        ),
        (
            vec!["convert", "--references", "sometimes"],
            "reference policy",
        ),
        (vec!["convert", "-f", "qcow2"], "qcow2"),
    ] {
        let mut a: Vec<&str> = args.clone();
        a.push(s(&src));
        a.push(s(&dst));
        // A wrong command line is a usage error (64); a source that is not what -f says is
        // found only by opening it: a failure (1).
        let code = if args.contains(&"-f") { 1 } else { 64 };
        let err = run_code(&a, code);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!dst.exists(), "{args:?} left an output behind");
    }
    // Converting a file onto itself is refused and the source is untouched.
    let before = util::sha256_file(&src);
    let err = run_code(&["convert", s(&src), s(&src)], 1);
    assert!(err.contains("source itself"), "{err}");
    assert_eq!(util::sha256_file(&src), before);
    // A directory is not an image.
    let err = run_code(&["info", s(dir.path())], 1);
    assert!(err.contains("directory"), "{err}");
    // Only the source is left in the folder: no temporary files.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_failed_conversion_keeps_the_old_target() {
    let dir = tmpdir();
    let src = dir.path().join("src.qcow2");
    // Starts like a qcow2 image but is cut short: opening it fails.
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(40, 0);
    std::fs::write(&src, &bytes).unwrap();
    let dst = dir.path().join("dst.raw");
    std::fs::write(&dst, b"previous").unwrap();
    let err = run_code(&["convert", s(&src), s(&dst)], 1);
    assert!(err.contains("src.qcow2"), "{err}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"previous");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn check_refuses_non_qcow2() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 1 << 20, 3);
    let err = run_code(&["check", s(&src)], 1);
    assert!(err.contains("only qcow2"), "{err}");
}

#[test]
fn progress_without_a_terminal_prints_lines() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 4 << 20, 3);
    let dst = dir.path().join("dst.raw");
    let out = diskconv()
        .args(["convert", "-p", s(&src), s(&dst)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("100%"), "{err}");
}

/// Detaches a loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn block_device_source() {
    if !util::require("loop-device") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("disk.raw");
    make_raw(&src, 6 << 20, 11);
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", "-r", s(&src)])
        .output()
        .unwrap();
    if !out.status.success() {
        // Containers without loop devices: nothing to exercise here.
        eprintln!(
            "skipping: losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let info: serde_json::Value =
        serde_json::from_str(&run_ok(&["info", "--json", &dev.0])).unwrap();
    assert_eq!(info["virtual_size"], 6u64 << 20, "size from the kernel");
    let dst = dir.path().join("copy.raw");
    run_ok(&["convert", &dev.0, s(&dst)]);
    assert_eq!(util::sha256_file(&src), util::sha256_file(&dst));
}

#[test]
fn raw_reader_meets_the_contract_on_a_sparse_file() {
    let dir = tmpdir();
    let src = dir.path().join("sparse.raw");
    make_raw(&src, (4 << 20) + 123, 5);
    let img = diskconv::open(&src, &diskconv::OpenOptions::default()).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    crate::contract::check_reader(img.as_ref(), &bytes);
    // Holes are reported without reading them (on file systems that report holes).
    let e = img.map(65536, u64::MAX).unwrap();
    assert_eq!(e.offset, 65536);
}

/// `convert` refuses an output that is the source itself under another name (a hard link, a
/// symbolic link), before writing anything (`util::same_file`).
#[test]
fn convert_refuses_the_source_as_output_under_another_name() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 1 << 20, 7);
    let before = std::fs::read(&src).unwrap();
    let hard = dir.path().join("hard.raw");
    std::fs::hard_link(&src, &hard).unwrap();
    let sym = dir.path().join("sym.raw");
    std::os::unix::fs::symlink(&src, &sym).unwrap();
    for out in [&hard, &sym] {
        let o = diskconv()
            .args(["convert", "-O", "raw"])
            .arg(&src)
            .arg(out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(
            err,
            format!(
                "diskconv: the output {} is the source itself; choose another name\n",
                out.display()
            )
        );
    }
    assert_eq!(std::fs::read(&src).unwrap(), before);
}
