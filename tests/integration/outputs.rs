//! Output handling (issue 13, "output handling that destroys or leaks data"): block devices as
//! raw targets of `convert` and `sync` (loop devices), character devices, FIFOs and folders
//! refused before anything is read, symbolic links written through, SIGINT/SIGTERM at random
//! moments leaving no temporary file, a SIGKILLed run's temporary removed by the next run, and a
//! closed standard output ending a command quietly.
//!
//! Oracles: `qemu-img compare` (a device, a file behind a link, an interrupted and resumed sync
//! equal to the source), sha256 of targets that must stay untouched, the folder listing (no
//! temporary left, nothing created), `losetup` and the kernel's idea of the node (still a block
//! device), a counting reader (nothing read before an output is refused).

use std::os::unix::fs::{FileTypeExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diskconv::image::{Extent, ImageInfo};
use diskconv::{ConvertOptions, Format, ImageReader, OpenOptions, OutputOptions, convert_file};

use crate::util::{Rng, diskconv, make_raw, qemu_compare, qemu_img, require, sha256_file, tmpdir};

fn p(x: &Path) -> &str {
    x.to_str().expect("utf-8 path")
}

fn run(args: &[&str]) -> Output {
    diskconv().args(args).output().expect("running diskconv")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Temporary or scratch files of diskconv in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.contains(".diskconv") || n.ends_with(".tmp") || n.ends_with(".part"))
        .collect()
}

/// A loop device over a file, detached when dropped (also when a test panics).
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// `None` (the test skips) when not root or losetup fails outside CI.
    fn attach(file: &Path) -> Option<Loop> {
        if !require("losetup") {
            return None;
        }
        if !is_root() {
            assert!(!crate::util::in_ci(), "loop device tests need root in CI");
            eprintln!("skipping: loop devices need root");
            return None;
        }
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup");
        if !out.status.success() {
            assert!(
                !crate::util::in_ci(),
                "losetup failed in CI: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
                "skipping: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(Loop { dev })
    }

    fn path(&self) -> &str {
        p(&self.dev)
    }

    /// The node is still a block device (not replaced by a file).
    fn assert_still_a_device(&self) {
        let m = std::fs::symlink_metadata(&self.dev).unwrap();
        assert!(
            m.file_type().is_block_device(),
            "{} is no longer a block device",
            self.dev.display()
        );
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A file of `size` bytes of 0xEE: the "old data" a device holds.
fn old_data(path: &Path, size: u64) {
    std::fs::write(path, vec![0xEE; size as usize]).unwrap();
}

/// Files in /dev whose names start with the device's name followed by a dot (state files,
/// temporaries): there must be none.
fn dev_litter(dev: &Path) -> Vec<String> {
    let name = dev.file_name().unwrap().to_string_lossy().into_owned();
    listing(Path::new("/dev"))
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}.")) || n.starts_with(&format!(".{name}")))
        .collect()
}

#[test]
fn convert_writes_a_block_device_in_place() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 12 << 20;
    let src_raw = d.path().join("src.raw");
    make_raw(&src_raw, size, 41);
    // A qcow2 source too: its zero and unallocated clusters must become zeros on the device.
    let src = d.path().join("src.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&src_raw), p(&src)]);
    let backing = d.path().join("dev.img");
    old_data(&backing, size);
    let Some(lo) = Loop::attach(&backing) else {
        return;
    };

    // Formats other than raw, and raw options that mean nothing on a device: refused, the
    // device untouched.
    let before = sha256_file(&backing);
    for args in [
        &["convert", "-O", "qcow2", p(&src), lo.path()][..],
        &["convert", "-O", "vmdk", p(&src), lo.path()],
        &[
            "convert",
            "-O",
            "raw",
            "-o",
            "preallocation=full",
            p(&src),
            lo.path(),
        ],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("block device"), "{}", stderr(&o));
        lo.assert_still_a_device();
    }
    assert_eq!(sha256_file(&backing), before);

    let o = run(&["convert", "-O", "raw", p(&src), lo.path()]);
    assert!(o.status.success(), "{}", stderr(&o));
    lo.assert_still_a_device();
    assert!(dev_litter(&lo.dev).is_empty(), "{:?}", dev_litter(&lo.dev));
    assert!(qemu_compare(&src, "qcow2", &lo.dev, "raw"));
    // Through the file behind the device too (written, synced: no stale 0xEE anywhere).
    assert!(qemu_compare(&src_raw, "raw", &backing, "raw"));

    // A symbolic link to the device (as /dev/disk/by-id/... are) counts as the device.
    let link = d.path().join("by-id-disk");
    symlink(&lo.dev, &link).unwrap();
    old_data(&backing, size);
    let o = run(&["convert", "-O", "raw", p(&src_raw), p(&link)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    lo.assert_still_a_device();
    assert!(qemu_compare(&src_raw, "raw", &backing, "raw"));

    // A device smaller than the source: refused naming both sizes, nothing written.
    let small_file = d.path().join("small.img");
    old_data(&small_file, 4 << 20);
    let Some(small) = Loop::attach(&small_file) else {
        return;
    };
    let o = run(&["convert", "-O", "raw", p(&src), small.path()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&(4u64 << 20).to_string()) && e.contains(&size.to_string()),
        "{e}"
    );
    assert!(
        std::fs::read(&small_file)
            .unwrap()
            .iter()
            .all(|&b| b == 0xEE)
    );
    small.assert_still_a_device();

    // A larger device: the image at its start, the tail left as it was (and said so).
    let big_file = d.path().join("big.img");
    old_data(&big_file, size + (3 << 20));
    let Some(big) = Loop::attach(&big_file) else {
        return;
    };
    let o = run(&["convert", "-O", "raw", p(&src), big.path()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("left as they were"), "{}", stderr(&o));
    let bytes = std::fs::read(&big_file).unwrap();
    assert_eq!(
        &bytes[..size as usize],
        &std::fs::read(&src_raw).unwrap()[..]
    );
    assert!(bytes[size as usize..].iter().all(|&b| b == 0xEE));
}

#[test]
fn sync_to_a_block_device_keeps_its_state_out_of_dev() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let size: u64 = 8 << 20;
    let src = d.path().join("src.raw");
    make_raw(&src, size, 43);
    let backing = d.path().join("dev.img");
    old_data(&backing, size);
    let Some(lo) = Loop::attach(&backing) else {
        return;
    };
    let work = d.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let sync = |args: &[&str]| {
        diskconv()
            .arg("sync")
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap()
    };
    // -O other than raw, and a state in /dev: refused before anything is written.
    let o = sync(&[p(&src), lo.path(), "-O", "qcow2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = sync(&[p(&src), lo.path(), "--state", "/dev/diskconv-test.dcsync"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("/dev"), "{}", stderr(&o));
    assert!(std::fs::read(&backing).unwrap().iter().all(|&b| b == 0xEE));

    // Without --state: the state goes to the current folder, and the user is told.
    let o = sync(&[p(&src), lo.path()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = lo.dev.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr(&o).contains(&format!("{name}.dcsync")),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        listing(&work),
        vec![format!("{name}.dcsync"), format!("{name}.dcsync.fp")]
    );
    assert!(dev_litter(&lo.dev).is_empty(), "{:?}", dev_litter(&lo.dev));
    lo.assert_still_a_device();
    // Every block written (zeros over the old 0xEE too).
    assert!(qemu_compare(&src, "raw", &lo.dev, "raw"));
    assert!(qemu_compare(&src, "raw", &backing, "raw"));
    // An incremental pass writes what changed.
    crate::util::qemu_io(&["-f", "raw", "-c", "write -P 0x3c 1M 128k", p(&src)]);
    let o = sync(&[p(&src), lo.path(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(r["source"], "scan");
    assert_eq!(r["blocks_written"], 2, "{r}");
    assert!(qemu_compare(&src, "raw", &lo.dev, "raw"));

    // With --state somewhere else: nothing in the current folder, nothing in /dev.
    old_data(&backing, size);
    let elsewhere = d.path().join("state");
    std::fs::create_dir(&elsewhere).unwrap();
    let st = elsewhere.join("disk.dcsync");
    let before = listing(&work);
    let o = sync(&[p(&src), lo.path(), "--state", p(&st)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(st.exists());
    assert_eq!(listing(&work), before);
    assert!(dev_litter(&lo.dev).is_empty());
    assert!(qemu_compare(&src, "raw", &backing, "raw"));
    lo.assert_still_a_device();
}

#[test]
fn outputs_that_are_not_files_are_refused_before_reading() {
    let d = tmpdir();
    let src = d.path().join("src.raw");
    make_raw(&src, 2 << 20, 5);
    let folder = d.path().join("out.qcow2");
    std::fs::create_dir(&folder).unwrap();
    let fifo = d.path().join("fifo.raw");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RUSR).unwrap();
    std::fs::create_dir(d.path().join("disk-flat.vmdk")).unwrap();
    let before = listing(d.path());
    // The source does not exist: an output refused before the source is opened says so
    // about the output.
    let missing = d.path().join("no-such-source.raw");
    for (args, want) in [
        (
            vec!["-O", "qcow2", p(&missing), p(&folder)],
            "is a directory",
        ),
        (
            vec!["-O", "raw", p(&missing), "/dev/null"],
            "character device",
        ),
        (vec!["-O", "raw", p(&missing), p(&fifo)], "FIFO"),
        (
            vec![
                "-O",
                "vmdk",
                "-o",
                "subformat=monolithicFlat",
                p(&missing),
                p(&d.path().join("disk.vmdk")),
            ],
            "disk-flat.vmdk",
        ),
        (
            vec!["-O", "raw", p(&missing), p(&d.path().join("nowhere/x.raw"))],
            "does not exist",
        ),
    ] {
        let o = diskconv().arg("convert").args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("no-such-source"), "{args:?}: {e}");
    }
    assert_eq!(listing(d.path()), before);
    // /dev/null is still a character device.
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );

    // The library: nothing read from the source before the refusal.
    let inner = diskconv::open(&src, &OpenOptions::default()).unwrap();
    let counting = Counting {
        inner,
        calls: AtomicU64::new(0),
    };
    for (target, opts) in [
        (folder.clone(), OutputOptions::new(Format::Qcow2)),
        (fifo.clone(), OutputOptions::new(Format::Raw)),
        (
            d.path().join("disk.vmdk"),
            OutputOptions::new(Format::Vmdk)
                .with_options("subformat=vmfs")
                .unwrap(),
        ),
    ] {
        let e =
            convert_file(&counting, &target, &opts, &ConvertOptions::default(), None).unwrap_err();
        assert_eq!(e.kind(), diskconv::ErrorKind::InvalidArgument, "{e}");
        assert_eq!(counting.calls.load(Ordering::SeqCst), 0, "{}", e.chain());
    }
    assert_eq!(listing(d.path()), before);

    // `sync --export` and `verify --manifest` check their outputs before reading too.
    let o = run(&[
        "sync",
        p(&missing),
        p(&d.path().join("t.raw")),
        "--export",
        p(&folder),
        "--export-format",
        "qcow2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let o = run(&["verify", p(&src), p(&src), "--manifest", p(&folder)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    assert_eq!(listing(d.path()), before);
}

/// A reader that counts every call that would touch the source's data.
struct Counting {
    inner: Box<dyn ImageReader>,
    calls: AtomicU64,
}

impl ImageReader for Counting {
    fn format(&self) -> Format {
        self.inner.format()
    }
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn map(&self, offset: u64, max_len: u64) -> diskconv::Result<Extent> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.map(offset, max_len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> diskconv::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(buf, offset)
    }
    fn info(&self) -> ImageInfo {
        self.inner.info()
    }
}

#[test]
fn symbolic_link_outputs_are_written_through() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    make_raw(&src, 3 << 20, 7);
    let real_dir = d.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();

    // A link to an existing file, through a second link: the file is replaced, the links stay.
    let real = real_dir.join("disk.qcow2");
    std::fs::write(&real, b"old").unwrap();
    let link1 = d.path().join("link1.qcow2");
    symlink("real/disk.qcow2", &link1).unwrap();
    let link2 = d.path().join("link2.qcow2");
    symlink(&link1, &link2).unwrap();
    let o = run(&["convert", "-O", "qcow2", p(&src), p(&link2)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for l in [&link1, &link2] {
        assert!(std::fs::symlink_metadata(l).unwrap().is_symlink());
    }
    assert!(qemu_compare(&src, "raw", &real, "qcow2"));
    assert!(temporaries(d.path()).is_empty() && temporaries(&real_dir).is_empty());

    // A dangling link: its target is created, as qemu-img does.
    let dangling = d.path().join("new.raw");
    symlink("real/created.raw", &dangling).unwrap();
    let o = run(&["convert", "-O", "raw", p(&src), p(&dangling)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());
    assert!(qemu_compare(
        &src,
        "raw",
        &real_dir.join("created.raw"),
        "raw"
    ));

    // A flat VMDK through a link: descriptor and extent together in the folder of the file the
    // link leads to (the descriptor names its extent relative to its own folder; qemu resolves
    // it against the path it was given, so qemu-img reads it through the real path).
    let vlink = d.path().join("esx.vmdk");
    symlink("real/esx.vmdk", &vlink).unwrap();
    let o = run(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        p(&src),
        p(&vlink),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(real_dir.join("esx-flat.vmdk").is_file());
    assert!(!d.path().join("esx-flat.vmdk").exists());
    assert!(qemu_compare(
        &src,
        "raw",
        &real_dir.join("esx.vmdk"),
        "vmdk"
    ));
    let o = run(&["compare", p(&src), p(&vlink)]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A sync target and its export through links.
    let slink = d.path().join("sync.raw");
    symlink("real/sync-target.raw", &slink).unwrap();
    let elink = d.path().join("export.qcow2");
    symlink("real/export.qcow2", &elink).unwrap();
    let o = run(&[
        "sync",
        p(&src),
        p(&slink),
        "--export",
        p(&elink),
        "--export-format",
        "qcow2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&slink).unwrap().is_symlink());
    assert!(std::fs::symlink_metadata(&elink).unwrap().is_symlink());
    assert!(qemu_compare(
        &src,
        "raw",
        &real_dir.join("sync-target.raw"),
        "raw"
    ));
    assert!(qemu_compare(
        &src,
        "raw",
        &real_dir.join("export.qcow2"),
        "qcow2"
    ));
    assert!(temporaries(d.path()).is_empty() && temporaries(&real_dir).is_empty());
}

/// One command under test in the signal rounds.
struct Case {
    name: &'static str,
    /// Arguments after `diskconv`, with `SRC`, `DST` and `EXP` replaced.
    args: &'static [&'static str],
    /// `DST` file name and its qemu format (for the comparison with the source).
    dst: (&'static str, &'static str),
    /// For sync: the export file and its format.
    export: Option<(&'static str, &'static str)>,
    sync: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "convert qcow2 -c",
        args: &["convert", "-O", "qcow2", "-c", "SRC", "DST"],
        dst: ("out.qcow2", "qcow2"),
        export: None,
        sync: false,
    },
    Case {
        name: "convert vmdk",
        args: &["convert", "-O", "vmdk", "SRC", "DST"],
        dst: ("out.vmdk", "vmdk"),
        export: None,
        sync: false,
    },
    Case {
        name: "convert ova",
        args: &["convert", "-O", "ova", "SRC", "DST"],
        dst: ("out.ova", ""),
        export: None,
        sync: false,
    },
    Case {
        name: "sync",
        args: &["sync", "SRC", "DST"],
        dst: ("target.raw", "raw"),
        export: None,
        sync: true,
    },
    Case {
        name: "sync --export",
        args: &[
            "sync",
            "SRC",
            "DST",
            "--export",
            "EXP",
            "--export-format",
            "qcow2",
            "--export-compressed",
        ],
        dst: ("target.qcow2", "qcow2"),
        export: Some(("export.qcow2", "qcow2")),
        sync: true,
    },
];

fn case_command(c: &Case, src: &Path, dir: &Path) -> Command {
    let mut cmd = diskconv();
    for a in c.args {
        match *a {
            "SRC" => cmd.arg(src),
            "DST" => cmd.arg(dir.join(c.dst.0)),
            "EXP" => cmd.arg(dir.join(c.export.map_or("", |e| e.0))),
            other => cmd.arg(other),
        };
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// The output of a finished run equals the source.
fn assert_output_equals(c: &Case, src: &Path, dir: &Path) {
    if c.dst.1.is_empty() {
        // OVA: qemu-img does not open it; diskconv reads the disk inside, qemu-img checks
        // the streamOptimized member through a raw copy.
        let copy = dir.join("ova-check.raw");
        let o = run(&["convert", "-O", "raw", p(&dir.join(c.dst.0)), p(&copy)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(qemu_compare(src, "raw", &copy, "raw"), "{}", c.name);
        std::fs::remove_file(&copy).unwrap();
    } else {
        assert!(
            qemu_compare(src, "raw", &dir.join(c.dst.0), c.dst.1),
            "{}",
            c.name
        );
    }
    if let Some((e, f)) = c.export {
        assert!(qemu_compare(src, "raw", &dir.join(e), f), "{}", c.name);
    }
}

#[test]
fn sigint_and_sigterm_at_random_moments_leave_no_temporary() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let d = tmpdir();
    let interrupted: u64 = CASES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let dir = d.path().join(c.name.replace([' ', '-'], "_"));
            signal_rounds(c, &dir, 0x51_6e_a1 + i as u64)
        })
        .sum();
    // Not a pass/fail criterion of any single run, but the rounds must exercise the handler.
    assert!(interrupted > 0, "no round was interrupted");
}

/// Size of the source of the signal rounds: runs of 50 to 250 ms.
const SIGNAL_SRC_SIZE: u64 = 6 << 20;

/// Eight rounds of: change the source, start the command, send SIGINT or SIGTERM after a
/// seeded random delay, check the outcome. Returns how many rounds the signal interrupted.
fn signal_rounds(c: &Case, dir: &Path, seed: u64) -> u64 {
    const ROUNDS: u64 = 8;
    std::fs::create_dir(dir).unwrap();
    let src = dir.join("src.raw");
    make_raw(&src, SIGNAL_SRC_SIZE, seed);
    let mut rng = Rng::new(seed);
    let mut interrupted = 0;
    // Reference runs (the last one's duration scales the delays; it decides nothing): for
    // sync the second run is an incremental pass, like the rounds.
    let mut full = Duration::ZERO;
    for _ in 0..if c.sync { 2 } else { 1 } {
        let t = Instant::now();
        let o = case_command(c, &src, dir).output().unwrap();
        assert!(o.status.success(), "{}: {}", c.name, stderr(&o));
        full = t.elapsed();
        assert_output_equals(c, &src, dir);
    }
    for round in 0..ROUNDS {
        // The source changes a little each round (sync has something to copy).
        let off = rng.below(SIGNAL_SRC_SIZE >> 16) << 16;
        crate::util::qemu_io(&[
            "-f",
            "raw",
            "-c",
            &format!("write -P {} {off} 64k", rng.below(255) + 1),
            p(&src),
        ]);
        let before = sha256_file(&dir.join(c.dst.0));
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 11 / 10 + 1));
        let (sig, code) = if round % 2 == 0 {
            (libc::SIGINT, 130)
        } else {
            (libc::SIGTERM, 143)
        };
        let child = case_command(c, &src, dir).spawn().unwrap();
        std::thread::sleep(delay);
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child, not yet
        // waited for (so not reused).
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        let e = stderr(&o);
        let what = format!("{} round {round} ({delay:?}): {:?} {e}", c.name, o.status);
        assert!(!e.contains("panicked"), "{what}");
        assert!(
            temporaries(dir).is_empty(),
            "{what}: {:?}",
            temporaries(dir)
        );
        match (o.status.code(), o.status.signal()) {
            (Some(0), _) => {
                // The signal came after the work was done.
                assert_output_equals(c, &src, dir);
                continue;
            }
            (Some(x), _) if x == code => {
                interrupted += 1;
                let name = if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                assert!(e.contains(&format!("interrupted by {name}")), "{what}");
                if c.sync {
                    assert!(e.contains("next run") || e.contains("export"), "{what}");
                }
            }
            // Killed by the signal itself before the handlers were installed (nothing was
            // created yet).
            (None, Some(s)) if s == sig => {}
            _ => panic!("unexpected exit: {what}"),
        }
        if c.sync {
            // The next run resumes and ends equal to the source.
            let o = case_command(c, &src, dir).output().unwrap();
            assert!(o.status.success(), "{what}: resume: {}", stderr(&o));
            assert_output_equals(c, &src, dir);
        } else {
            assert_eq!(
                sha256_file(&dir.join(c.dst.0)),
                before,
                "{what}: the old target changed"
            );
        }
        assert!(temporaries(dir).is_empty(), "{what}");
    }
    eprintln!(
        "{}: {interrupted} of {ROUNDS} rounds interrupted (a clean run took {full:?})",
        c.name
    );
    interrupted
}

#[test]
fn a_sigkilled_runs_temporary_is_removed_by_the_next_run() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    make_raw(&src, 24 << 20, 9);
    let dst = d.path().join("out.qcow2");
    std::fs::write(&dst, b"old").unwrap();
    // Another output's temporary of a dead process: not ours to remove.
    let foreign = d.path().join(".other.qcow2.diskconv-2147483647-0.tmp");
    std::fs::write(&foreign, b"x").unwrap();
    let mut child = diskconv()
        .args(["convert", "-O", "qcow2", "-c", p(&src), p(&dst)])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prefix = ".out.qcow2.diskconv-";
    let deadline = Instant::now() + Duration::from_secs(20);
    let temp = loop {
        if let Some(n) = listing(d.path())
            .into_iter()
            .find(|n| n.starts_with(prefix))
        {
            break d.path().join(n);
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the conversion ended before its temporary was seen"
        );
        assert!(Instant::now() < deadline, "no temporary appeared");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(temp.exists(), "SIGKILL leaves the temporary");
    assert_eq!(std::fs::read(&dst).unwrap(), b"old");

    let o = run(&["convert", "-O", "qcow2", p(&src), p(&dst)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("removed a stale temporary left by an interrupted run")
            && e.contains(temp.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
    assert!(!temp.exists());
    assert!(foreign.exists());
    assert!(qemu_compare(&src, "raw", &dst, "qcow2"));
}

/// Runs `diskconv ARGS` with standard output (and, with `both`, standard error) on a pipe
/// whose reading end is already closed. Returns the status and what went to stderr when it
/// was captured.
fn with_closed_stdout(args: &[&str], both: bool) -> (std::process::ExitStatus, String) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    let mut cmd = diskconv();
    cmd.args(args).stdout(Stdio::from(w.try_clone().unwrap()));
    if both {
        cmd.stderr(Stdio::from(w));
    } else {
        drop(w);
        cmd.stderr(Stdio::piped());
    }
    let o = cmd.output().unwrap();
    (o.status, stderr(&o))
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("disk.raw");
    make_raw(&raw, 4 << 20, 3);
    let qcow = d.path().join("disk.qcow2");
    qemu_img(&["convert", "-O", "qcow2", p(&raw), p(&qcow)]);
    let hive = d.path().join("NEW.hive");
    let o = run(&["hive", "new", p(&hive)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (k, v) in [("A", "1"), ("B", "2")] {
        let o = run(&[
            "hive",
            "set",
            p(&hive),
            &format!("Software\\{k}"),
            "x",
            "sz",
            v,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let vol = d.path().join("vol.ntfs");
    let have_ntfs = require("mkntfs");
    if have_ntfs {
        crate::ntfs_fixture::mkntfs(&vol, 8 << 20, 4096, "T", 0);
    }
    let target = d.path().join("target.raw");
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["hive", "export", p(&hive)],
        vec!["hive", "ls", p(&hive), "Software"],
        vec!["hive", "get", p(&hive), "Software\\A", "x"],
        vec!["hive", "check", p(&hive)],
        vec!["info", p(&qcow)],
        vec!["info", "--json", p(&qcow)],
        vec!["map", p(&qcow)],
        vec!["map", "--json", p(&qcow)],
        vec!["check", p(&qcow)],
        vec!["compare", p(&raw), p(&qcow)],
        vec!["verify", p(&raw), p(&qcow)],
        vec!["inspect", p(&raw)],
        vec!["inspect", "--json", p(&raw)],
        vec!["sync", "--json", p(&raw), p(&target)],
    ];
    if have_ntfs {
        commands.push(vec!["ntfs", "ls", p(&vol), "/"]);
        commands.push(vec!["ntfs", "info", p(&vol)]);
        commands.push(vec!["ntfs", "cat", p(&vol), "/$UpCase"]);
    }
    for args in &commands {
        for both in [true, false] {
            let (status, err) = with_closed_stdout(args, both);
            assert_eq!(
                status.code(),
                Some(141),
                "{args:?} (stderr closed too: {both}): {status:?} {err}"
            );
            assert!(err.is_empty(), "{args:?}: {err}");
        }
    }
}
