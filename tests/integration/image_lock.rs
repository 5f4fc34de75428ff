//! The image lock: every writer of an existing image (`sync` to it, `inject`, `ntfs put` /
//! `mkdir`, an in-place hive save, a rollback) takes the image's exclusive lock, so a second
//! writer is refused (kind Busy) naming the process that holds it, and leaves the image as it
//! was. The lock is held here by the test process itself, through the library.

use std::path::Path;
use std::process::Output;

use diskconv::files::ImageLock;

use crate::util::{self, diskconv, make_raw, sha256_file, tmpdir};

/// Runs `diskconv ARGS` in a thread (refusals wait for the lock a moment first: running the
/// commands side by side keeps the test short).
fn spawn(args: Vec<String>) -> std::thread::JoinHandle<Output> {
    std::thread::spawn(move || diskconv().args(&args).output().unwrap())
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The command failed with exit code 1, saying the image is busy and naming this process as
/// the holder of the lock.
#[track_caller]
fn refused_by_us(what: &str, out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(
        err.contains("another diskconv process")
            && err.contains(&format!("pid {},", std::process::id()))
            && err.contains("running since"),
        "{what}: {err}"
    );
}

#[test]
fn writers_of_a_locked_image_are_refused_naming_the_holder() {
    let dir = tmpdir();
    let d = dir.path();
    // A sync target with its state (a first pass), an image for inject and ntfs, a hive.
    let src = d.join("src.raw");
    make_raw(&src, 4 << 20, 7);
    let target = d.join("target.qcow2");
    let first = diskconv()
        .args(["sync", &s(&src), &s(&target)])
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    make_raw(&src, 4 << 20, 8); // changed source: the next pass would write
    let state = d.join("target.qcow2.dcsync");
    assert!(state.exists());
    let disk = d.join("disk.raw");
    make_raw(&disk, 2 << 20, 9);
    let hive = d.join("SYSTEM");
    let made = diskconv()
        .args(["hive", "new", &s(&hive)])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let local = d.join("local.txt");
    std::fs::write(&local, b"hello").unwrap();

    let files = [&target, &state, &disk, &hive];
    let before: Vec<String> = files.iter().map(|p| sha256_file(p)).collect();
    let locks = [
        ImageLock::acquire(&target).unwrap(),
        ImageLock::acquire(&disk).unwrap(),
        ImageLock::acquire(&hive).unwrap(),
    ];
    let runs = vec![
        ("sync", spawn(vec!["sync".into(), s(&src), s(&target)])),
        (
            "convert over the target",
            spawn(vec![
                "convert".into(),
                "-O".into(),
                "qcow2".into(),
                s(&src),
                s(&target),
            ]),
        ),
        (
            "inject",
            spawn(vec![
                "inject".into(),
                "windows".into(),
                s(&disk),
                "--target".into(),
                "aws-nitro".into(),
            ]),
        ),
        (
            "ntfs put",
            spawn(vec![
                "ntfs".into(),
                "put".into(),
                s(&disk),
                s(&local),
                "x.txt".into(),
            ]),
        ),
        (
            "ntfs mkdir",
            spawn(vec!["ntfs".into(), "mkdir".into(), s(&disk), "dir".into()]),
        ),
        (
            "ntfs rollback",
            spawn(vec!["ntfs".into(), "rollback".into(), s(&disk)]),
        ),
        (
            "hive set",
            spawn(vec![
                "hive".into(),
                "set".into(),
                s(&hive),
                "".into(),
                "Locked".into(),
                "dword".into(),
                "1".into(),
            ]),
        ),
    ];
    for (what, h) in runs {
        refused_by_us(what, &h.join().unwrap());
    }
    let after: Vec<String> = files.iter().map(|p| sha256_file(p)).collect();
    assert_eq!(before, after, "a refused writer changed a file");
    assert!(!diskconv::files::journal_path(&disk).exists());
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".diskconv"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Released: the same sync and hive edit go through.
    drop(locks);
    let out = diskconv()
        .args(["sync", &s(&src), &s(&target)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = diskconv()
        .args(["hive", "set", &s(&hive), "", "Locked", "dword", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if util::require("qemu-img") {
        assert!(util::qemu_compare(&src, "raw", &target, "qcow2"));
    }
    if util::require("hivexget") {
        let o = std::process::Command::new("hivexget")
            .arg(&hive)
            .arg("\\")
            .arg("Locked")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    }
}

#[test]
fn library_writers_of_a_locked_image_are_busy() {
    let dir = tmpdir();
    let d = dir.path();
    let src = d.join("src.raw");
    make_raw(&src, 1 << 20, 3);
    let target = d.join("t.raw");
    let opts = diskconv::sync::SyncOptions::default();
    diskconv::sync::sync_pass(&src, &target, &opts).unwrap();
    make_raw(&src, 1 << 20, 4);
    let before = sha256_file(&target);
    let lock = ImageLock::acquire(&target).unwrap();
    let e = diskconv::sync::sync_pass(&src, &target, &opts).unwrap_err();
    assert_eq!(e.kind(), diskconv::ErrorKind::Busy, "{}", e.chain());
    assert!(e.chain().contains("t.raw"), "{}", e.chain());
    assert_eq!(sha256_file(&target), before);
    drop(lock);
    diskconv::sync::sync_pass(&src, &target, &opts).unwrap();
    assert_eq!(sha256_file(&target), sha256_file(&src));
}

#[test]
fn a_hive_opened_for_edit_holds_its_lock_from_read_to_save() {
    use diskconv::guest::hive::{Hive, HiveOpenOptions, RegData};
    let dir = tmpdir();
    let path = dir.path().join("SOFTWARE");
    let mut h = Hive::new("ROOT").unwrap();
    h.save_as(&path).unwrap();
    drop(h);
    let opts = HiveOpenOptions::default();
    let mut first = Hive::open_for_edit(&path, &opts).unwrap();
    // A second editor is refused before it reads, naming this process.
    let e = Hive::open_for_edit(&path, &opts).unwrap_err();
    assert_eq!(e.kind(), diskconv::ErrorKind::Busy, "{}", e.chain());
    assert!(
        e.chain().contains(&format!("pid {},", std::process::id())),
        "{}",
        e.chain()
    );
    // The holder saves (it does not lock itself out), and keeps the lock until dropped.
    let root = first.root();
    first.set_data(root, "First", &RegData::Dword(1)).unwrap();
    first.save().unwrap();
    let before = sha256_file(&path);
    let out = diskconv()
        .args(["hive", "set", &s(&path), "", "Second", "dword", "2"])
        .output()
        .unwrap();
    refused_by_us("hive set while a hive is open for edit", &out);
    assert_eq!(sha256_file(&path), before);
    drop(first);
    let mut second = Hive::open_for_edit(&path, &opts).unwrap();
    assert_eq!(
        second
            .value(second.root(), "First")
            .unwrap()
            .map(|v| v.data),
        Some(1u32.to_le_bytes().to_vec())
    );
    second
        .set_data(second.root(), "Second", &RegData::Dword(2))
        .unwrap();
    second.save().unwrap();
    drop(second);
    if util::require("hivexget") {
        for (name, want) in [("First", "1"), ("Second", "2")] {
            let o = std::process::Command::new("hivexget")
                .arg(&path)
                .arg("\\")
                .arg(name)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), want, "{name}");
        }
    }
}
