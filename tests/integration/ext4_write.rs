//! The ext4 writer (`diskconv::guest::extfs::Ext4Writer`) against e2fsprogs: file systems made
//! by `mke2fs -d` (ext4 with and without metadata_csum and 64bit, ext3, ext2, 1 KiB and 4 KiB
//! blocks, htree directories indexed by `e2fsck -fyD`, nearly full ones), changed through an
//! in-memory disk, then checked after every operation with `e2fsck -fn` (must exit 0) and read
//! back with `debugfs` (`cat`, `stat`, `ls -l`).

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::extfs::Ext4Writer;
use diskconv::storage::MemStorage;

use crate::util::{self, Rng, run};

fn tools() -> bool {
    util::require("mke2fs") && util::require("e2fsck") && util::require("debugfs")
}

/// `mke2fs -q -F ARGS -d TREE IMG SIZE_KIB`.
fn mkfs(img: &Path, tree: &Path, args: &[&str], kib: u64) {
    run(Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg("-d")
        .arg(tree)
        .arg(img)
        .arg(format!("{kib}k"))
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf"));
}

/// `e2fsck -fn` must find nothing; its output is shown otherwise.
fn assert_fsck(img: &Path, after: &str) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("e2fsck runs");
    assert!(
        out.status.success(),
        "e2fsck -fn after {after}: exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs(img: &Path, cmd: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(img)
        .output()
        .expect("debugfs runs");
    out.stdout
}

fn debugfs_text(img: &Path, cmd: &str) -> String {
    String::from_utf8_lossy(&debugfs(img, cmd)).into_owned()
}

/// A file system image on disk and the writer over its bytes in memory; every operation is
/// written back to the file and checked with e2fsck.
struct Fx {
    img: PathBuf,
    w: Option<Ext4Writer<MemStorage>>,
}

impl Fx {
    fn open(img: &Path) -> Fx {
        let bytes = std::fs::read(img).unwrap();
        let w = Ext4Writer::open(MemStorage::from_vec(bytes)).unwrap();
        Fx {
            img: img.to_path_buf(),
            w: Some(w),
        }
    }

    fn w(&mut self) -> &mut Ext4Writer<MemStorage> {
        self.w.as_mut().unwrap()
    }

    /// Writes the bytes back and runs e2fsck.
    fn check(&mut self, after: &str) {
        let w = self.w.take().unwrap();
        let mem = w.into_inner();
        std::fs::write(&self.img, mem.to_vec()).unwrap();
        assert_fsck(&self.img, after);
        self.w = Some(Ext4Writer::open(mem).unwrap());
    }

    fn cat(&self, path: &str) -> Vec<u8> {
        debugfs(&self.img, &format!("cat {path}"))
    }

    fn stat(&self, path: &str) -> String {
        debugfs_text(&self.img, &format!("stat {path}"))
    }
}

fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("etc/dracut.conf.d")).unwrap();
    std::fs::create_dir_all(t.join("boot")).unwrap();
    std::fs::write(t.join("etc/fstab"), b"/dev/sda1 / ext4 defaults 0 1\n").unwrap();
    std::fs::write(t.join("etc/hostname"), b"guest\n").unwrap();
    let mut rng = Rng::new(7);
    std::fs::write(t.join("boot/initrd.img"), rng.bytes(300_000)).unwrap();
    std::fs::write(t.join("boot/small"), rng.bytes(5000)).unwrap();
    std::os::unix::fs::symlink("initrd.img", t.join("boot/initrd.link")).unwrap();
    t
}

/// The common sequence on one flavour of file system.
fn exercise(args: &[&str], label: &str) {
    let dir = util::tmpdir();
    let t = tree(dir.path());
    let img = dir.path().join("fs.img");
    mkfs(&img, &t, args, 32 * 1024);
    assert_fsck(&img, "mke2fs");
    let mut fx = Fx::open(&img);
    let mut rng = Rng::new(11);

    // Grow a file (300 kB -> 2 MB), then shrink another.
    let big = rng.bytes(2_000_000);
    fx.w().replace_file("/boot/initrd.img", &big).unwrap();
    fx.check(&format!("{label}: replace_file grow"));
    assert_eq!(fx.cat("/boot/initrd.img"), big);
    let st = fx.stat("/boot/initrd.img");
    assert!(st.contains("Size: 2000000"), "{st}");
    fx.w()
        .replace_file("/etc/fstab", b"UUID=x / ext4 defaults 0 1\n")
        .unwrap();
    fx.check(&format!("{label}: replace_file shrink"));
    assert_eq!(fx.cat("/etc/fstab"), b"UUID=x / ext4 defaults 0 1\n");
    // Through a symbolic link in the path? (none here) and to zero bytes.
    fx.w().replace_file("/boot/small", b"").unwrap();
    fx.check(&format!("{label}: replace_file empty"));
    assert!(fx.cat("/boot/small").is_empty());

    // New files, in an existing and in a new directory.
    fx.w()
        .create_file(
            "/etc/dracut.conf.d/virtio.conf",
            b"add_drivers+=\" virtio_blk \"\n",
            0o644,
            0,
            0,
        )
        .unwrap();
    fx.check(&format!("{label}: create_file"));
    assert_eq!(
        fx.cat("/etc/dracut.conf.d/virtio.conf"),
        b"add_drivers+=\" virtio_blk \"\n"
    );
    let st = fx.stat("/etc/dracut.conf.d/virtio.conf");
    assert!(
        st.contains("Mode:  0644") && st.contains("Links: 1"),
        "{st}"
    );
    fx.w().mkdir("/etc/modules-load.d", 0o755).unwrap();
    fx.check(&format!("{label}: mkdir"));
    let payload = rng.bytes(70_000);
    fx.w()
        .create_file(
            "/etc/modules-load.d/virtio.conf",
            &payload,
            0o600,
            1000,
            1001,
        )
        .unwrap();
    fx.check(&format!("{label}: create_file in the new directory"));
    assert_eq!(fx.cat("/etc/modules-load.d/virtio.conf"), payload);
    let st = fx.stat("/etc/modules-load.d/virtio.conf");
    assert!(
        st.contains("User:  1000") && st.contains("Group:  1001") && st.contains("Mode:  0600"),
        "{st}"
    );
    let st = fx.stat("/etc/modules-load.d");
    assert!(
        st.contains("Type: directory") && st.contains("Links: 2"),
        "{st}"
    );

    // Symbolic links: fast and slow.
    fx.w()
        .create_symlink("/boot/vmlinuz", "vmlinuz-6.1.0-18-amd64")
        .unwrap();
    let long = format!("/usr/lib/modules/{}", "x".repeat(120));
    fx.w().create_symlink("/boot/long-link", &long).unwrap();
    fx.check(&format!("{label}: create_symlink"));
    let st = fx.stat("/boot/vmlinuz");
    assert!(
        st.contains("Fast link dest: \"vmlinuz-6.1.0-18-amd64\""),
        "{st}"
    );
    let st = fx.stat("/boot/long-link");
    assert!(
        st.contains("Type: symlink") && st.contains(&format!("Size: {}", long.len())),
        "{st}"
    );

    // Many entries: the directory grows by blocks.
    for k in 0..300 {
        fx.w()
            .create_file(
                &format!("/etc/many-{k:04}-with-a-long-name.conf"),
                b"x",
                0o644,
                0,
                0,
            )
            .unwrap();
    }
    fx.check(&format!("{label}: 300 files in /etc"));
    assert_eq!(fx.cat("/etc/many-0299-with-a-long-name.conf"), b"x");

    // Removals: free blocks must come back (e2fsck checks the counts).
    let (free_before, _) = fx.w().free();
    fx.w().unlink("/boot/initrd.img").unwrap();
    fx.w().unlink("/boot/vmlinuz").unwrap();
    fx.w().unlink("/boot/long-link").unwrap();
    fx.w().unlink("/boot/initrd.link").unwrap();
    for k in (0..300).step_by(2) {
        fx.w()
            .unlink(&format!("/etc/many-{k:04}-with-a-long-name.conf"))
            .unwrap();
    }
    fx.check(&format!("{label}: unlink"));
    let (free_after, _) = fx.w().free();
    assert!(
        free_after > free_before + 2_000_000 / 4096,
        "{free_before} -> {free_after}"
    );
    let ls = debugfs_text(&img, "ls -l /boot");
    assert!(
        !ls.contains("initrd.img") && !ls.contains("vmlinuz"),
        "{ls}"
    );
    // The freed space is reusable.
    let again = rng.bytes(2_500_000);
    fx.w()
        .create_file("/boot/initrd.img", &again, 0o644, 0, 0)
        .unwrap();
    fx.check(&format!("{label}: reuse"));
    assert_eq!(fx.cat("/boot/initrd.img"), again);
    // Errors: no such file, exists, wrong type.
    assert!(fx.w().replace_file("/nope/x", b"").is_err());
    assert!(
        fx.w()
            .create_file("/etc/hostname", b"", 0o644, 0, 0)
            .is_err()
    );
    assert!(fx.w().unlink("/etc").is_err());
    assert!(fx.w().replace_file("/etc", b"").is_err());
}

#[test]
fn ext4_default_4k() {
    if tools() {
        exercise(&["-t", "ext4", "-b", "4096"], "ext4 4k");
    }
}

#[test]
fn ext4_1k_blocks() {
    if tools() {
        exercise(&["-t", "ext4", "-b", "1024"], "ext4 1k");
    }
}

#[test]
fn ext4_without_metadata_csum() {
    if tools() {
        exercise(
            &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"],
            "ext4 ^metadata_csum",
        );
    }
}

#[test]
fn ext4_without_64bit() {
    if tools() {
        exercise(&["-t", "ext4", "-b", "4096", "-O", "^64bit"], "ext4 ^64bit");
    }
}

#[test]
fn ext3_block_maps() {
    if tools() {
        exercise(&["-t", "ext3", "-b", "4096"], "ext3");
    }
}

#[test]
fn ext2_1k_block_maps() {
    if tools() {
        exercise(&["-t", "ext2", "-b", "1024"], "ext2 1k");
    }
}

/// Free blocks of the image as e2fsprogs counts them (`debugfs stats`).
fn free_blocks(img: &Path) -> u64 {
    let s = debugfs_text(img, "stats");
    s.lines()
        .find_map(|l| l.strip_prefix("Free blocks:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no free block count in {s}"))
}

/// Directories of thousands of entries indexed by `e2fsck -fyD` (half-MD4 and TEA, signed
/// and unsigned hashes): new entries go to the leaf their hash names, e2fsck checks the order.
#[test]
fn htree_directories() {
    if !tools() {
        return;
    }
    for (alg, flags) in [
        ("half_md4", "1"),
        ("tea", "1"),
        ("half_md4", "2"),
        ("legacy", "1"),
    ] {
        let dir = util::tmpdir();
        let t = dir.path().join("tree");
        std::fs::create_dir_all(t.join("many")).unwrap();
        for k in 0..3000 {
            std::fs::write(t.join(format!("many/module-{k:05}.ko")), b"m").unwrap();
        }
        let img = dir.path().join("fs.img");
        mkfs(&img, &t, &["-t", "ext4", "-b", "1024"], 16 * 1024);
        run(Command::new("debugfs")
            .args(["-w", "-R", &format!("ssv def_hash_version {alg}")])
            .arg(&img));
        run(Command::new("debugfs")
            .args(["-w", "-R", &format!("ssv flags {flags}")])
            .arg(&img));
        // Index the directories (exit 1: "file system was modified").
        let st = Command::new("e2fsck")
            .args(["-fyD"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(st.status.code().unwrap_or(8) <= 1, "{st:?}");
        assert_fsck(&img, "e2fsck -fyD");
        let dump = debugfs_text(&img, "htree /many");
        assert!(dump.contains("Root node dump"), "not indexed: {dump}");
        let mut fx = Fx::open(&img);
        for k in 0..150 {
            let name = format!("/many/new-\u{e9}l\u{e8}ve-{k}-{alg}.conf");
            fx.w()
                .create_file(&name, name.as_bytes(), 0o644, 0, 0)
                .unwrap();
        }
        fx.check(&format!("htree {alg} flags {flags}: 150 creates"));
        let name = format!("/many/new-\u{e9}l\u{e8}ve-77-{alg}.conf");
        assert_eq!(fx.cat(&name), name.as_bytes());
        for k in (0..3000).step_by(3) {
            fx.w().unlink(&format!("/many/module-{k:05}.ko")).unwrap();
        }
        fx.check(&format!("htree {alg}: 1000 unlinks"));
        assert!(!fx.stat("/many/module-00003.ko").contains("Type: regular"));
        let st = fx.stat("/many/module-00004.ko");
        assert!(st.contains("Type: regular"), "{st}");
        assert_eq!(fx.cat("/many/module-02999.ko"), b"m");
        fx.w()
            .create_symlink("/many/a-link", "module-00004.ko")
            .unwrap();
        fx.w().mkdir("/many/sub", 0o700).unwrap();
        fx.check(&format!("htree {alg}: symlink and mkdir"));
    }
}

/// A 64 MiB file replacing a 30 MiB one on a file system whose free space is fragmented:
/// many extents, so an extent tree of depth 1 with index blocks.
#[test]
fn large_file_fragmented() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let t = dir.path().join("tree");
    std::fs::create_dir_all(t.join("frag")).unwrap();
    let mut rng = Rng::new(3);
    std::fs::create_dir_all(t.join("boot")).unwrap();
    std::fs::write(t.join("boot/initrd.img"), rng.bytes(30 << 20)).unwrap();
    for k in 0..1400 {
        std::fs::write(t.join(format!("frag/f{k:04}")), vec![k as u8; 64 << 10]).unwrap();
    }
    let img = dir.path().join("fs.img");
    mkfs(&img, &t, &["-t", "ext4", "-b", "4096"], 200 * 1024);
    let mut fx = Fx::open(&img);
    // Fill all but 1 MiB, then free every other small file.
    let free = free_blocks(&img);
    let filler = vec![0x5a; ((free - 256) * 4096) as usize];
    fx.w().create_file("/filler", &filler, 0o644, 0, 0).unwrap();
    drop(filler);
    for k in (0..1400).step_by(2) {
        fx.w().unlink(&format!("/frag/f{k:04}")).unwrap();
    }
    fx.check("fragmenting");
    let big = rng.bytes(64 << 20);
    fx.w().replace_file("/boot/initrd.img", &big).unwrap();
    fx.check("64 MiB over 30 MiB, fragmented");
    assert!(fx.cat("/boot/initrd.img") == big, "content differs");
    let st = fx.stat("/boot/initrd.img");
    assert!(
        st.contains("(ETB0)"),
        "expected an extent tree of depth >= 1: {st}"
    );
    // And back down to a small file: the tree blocks are freed (e2fsck counts them).
    fx.w().replace_file("/boot/initrd.img", b"small").unwrap();
    fx.check("shrinking the fragmented file");
    assert!(!fx.stat("/boot/initrd.img").contains("(ETB0)"));
}

/// A nearly full file system: a clear error and no byte changed; what fits still works.
#[test]
fn full_file_system() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let t = dir.path().join("tree");
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::write(t.join("etc/data"), vec![1u8; 100_000]).unwrap();
    let img = dir.path().join("fs.img");
    mkfs(
        &img,
        &t,
        &["-t", "ext4", "-b", "1024", "-N", "64"],
        4 * 1024,
    );
    let free = free_blocks(&img);
    let bytes = std::fs::read(&img).unwrap();
    let mut w = Ext4Writer::open(MemStorage::from_vec(bytes.clone())).unwrap();
    let too_big = vec![2u8; ((free + 200) * 1024) as usize];
    let e = w
        .create_file("/etc/big", &too_big, 0o644, 0, 0)
        .unwrap_err();
    assert!(e.to_string().contains("no space"), "{e}");
    let e = w.replace_file("/etc/data", &too_big).unwrap_err();
    assert!(e.to_string().contains("no space"), "{e}");
    let mem = w.into_inner();
    assert!(mem.to_vec() == bytes, "a failed operation changed the disk");
    // Exactly what is free (minus the tree blocks a few extents may need) fits.
    let mut w = Ext4Writer::open(mem).unwrap();
    let fits = vec![3u8; ((free - 2) * 1024) as usize];
    w.create_file("/etc/fits", &fits, 0o644, 0, 0).unwrap();
    std::fs::write(&img, w.into_inner().to_vec()).unwrap();
    assert_fsck(&img, "filling the file system");
    assert!(debugfs(&img, "cat /etc/fits") == fits);
    // Out of inodes.
    let mut w = Ext4Writer::open(MemStorage::from_vec(std::fs::read(&img).unwrap())).unwrap();
    let mut err = None;
    for k in 0..100 {
        if let Err(e) = w.create_symlink(&format!("/etc/l{k}"), "x") {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("64 inodes run out");
    assert!(
        e.to_string().contains("no space") || e.to_string().contains("inode"),
        "{e}"
    );
    std::fs::write(&img, w.into_inner().to_vec()).unwrap();
    assert_fsck(&img, "running out of inodes");
}

/// Refused: a journal needing recovery, features the writer does not write.
#[test]
fn refusals() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let t = tree(dir.path());
    let img = dir.path().join("fs.img");
    mkfs(&img, &t, &["-t", "ext4"], 8 * 1024);
    run(Command::new("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&img));
    let bytes = std::fs::read(&img).unwrap();
    let e = Ext4Writer::open(MemStorage::from_vec(bytes.clone())).unwrap_err();
    assert!(
        e.to_string().contains(
            "the ext4 journal needs recovery; mount and unmount it on the source or run e2fsck"
        ),
        "{e}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), bytes);
    for (feature, name) in [
        ("inline_data", "inline_data"),
        ("bigalloc", "bigalloc"),
        ("quota", "quota"),
        ("encrypt", "encrypt"),
        ("casefold", "casefold"),
    ] {
        let img = dir.path().join(format!("{feature}.img"));
        mkfs(&img, &t, &["-t", "ext4", "-O", feature], 8 * 1024);
        let e = Ext4Writer::open(MemStorage::from_vec(std::fs::read(&img).unwrap())).unwrap_err();
        assert!(e.to_string().contains(name), "{feature}: {e}");
    }
    // Errors recorded.
    let img = dir.path().join("errors.img");
    mkfs(&img, &t, &["-t", "ext4"], 8 * 1024);
    run(Command::new("debugfs")
        .args(["-w", "-R", "ssv state 3"])
        .arg(&img));
    let e = Ext4Writer::open(MemStorage::from_vec(std::fs::read(&img).unwrap())).unwrap_err();
    assert!(e.to_string().contains("errors"), "{e}");
}

/// Truncated or damaged superblock and descriptors: errors naming them, never a panic; random
/// damage to the metadata never panics either.
#[test]
fn damaged_metadata() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let t = tree(dir.path());
    let img = dir.path().join("fs.img");
    mkfs(&img, &t, &["-t", "ext4", "-b", "4096"], 8 * 1024);
    let good = std::fs::read(&img).unwrap();
    let e = Ext4Writer::open(MemStorage::from_vec(good[..1500].to_vec())).unwrap_err();
    assert!(e.to_string().contains("superblock"), "{e}");
    let e = Ext4Writer::open(MemStorage::from_vec(good[..good.len() / 2].to_vec())).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let mut b = good.clone();
    b[1024 + 0x38] ^= 0xff;
    let e = Ext4Writer::open(MemStorage::from_vec(b)).unwrap_err();
    assert!(e.to_string().contains("superblock magic"), "{e}");
    let mut b = good.clone();
    b[4096 + 0xC] ^= 0x01; // descriptor 0, free blocks count
    let e = Ext4Writer::open(MemStorage::from_vec(b)).unwrap_err();
    assert!(e.to_string().contains("group descriptor 0 checksum"), "{e}");
    // Random damage in the metadata area, on a file system without metadata_csum so that the
    // damage reaches the parsers instead of failing a checksum.
    let img = dir.path().join("nocsum.img");
    mkfs(
        &img,
        &t,
        &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"],
        8 * 1024,
    );
    let good = std::fs::read(&img).unwrap();
    let mut rng = Rng::new(99);
    for round in 0..300 {
        let mut b = good.clone();
        for _ in 0..8 {
            let off = 4096 + rng.below(300_000) as usize;
            b[off] = rng.next() as u8;
        }
        if round % 2 == 0 {
            // Undo the superblock damage half the time so the descriptor and inode parsers
            // see the bytes.
            b[..4096].copy_from_slice(&good[..4096]);
        }
        if let Ok(mut w) = Ext4Writer::open(MemStorage::from_vec(b)) {
            let _ = w.replace_file("/boot/initrd.img", &[1; 50_000]);
            let _ = w.create_file("/etc/new", b"x", 0o644, 0, 0);
            let _ = w.unlink("/etc/hostname");
            let _ = w.mkdir("/etc/d", 0o755);
            let _ = w.create_symlink("/boot/l", "initrd.img");
        }
    }
}

/// The real path: a qcow2 image opened as an `ImageTx`, the writer on its transaction disk;
/// dropping the transaction leaves the image as it was, committing it gives e2fsck a clean
/// file system with the new files.
#[test]
fn through_an_image_transaction() {
    if !(tools() && util::require("qemu-img")) {
        return;
    }
    use diskconv::OpenOptions;
    use diskconv::guest::disk::ImageTx;
    let dir = util::tmpdir();
    let t = tree(dir.path());
    let raw = dir.path().join("fs.img");
    mkfs(&raw, &t, &["-t", "ext4", "-b", "4096"], 16 * 1024);
    let qcow = dir.path().join("fs.qcow2");
    util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    let before = util::sha256_file(&qcow);
    {
        let mut tx = ImageTx::open(&qcow, &OpenOptions::default()).unwrap();
        let mut w = Ext4Writer::open(&mut tx.disk).unwrap();
        w.create_file("/etc/dropped", b"never", 0o644, 0, 0)
            .unwrap();
        // Dropped without commit.
    }
    assert_eq!(
        util::sha256_file(&qcow),
        before,
        "an uncommitted edit reached the image"
    );
    let mut tx = ImageTx::open(&qcow, &OpenOptions::default()).unwrap();
    {
        let mut w = Ext4Writer::open(&mut tx.disk).unwrap();
        w.create_file(
            "/etc/dracut.conf.d/virtio.conf",
            b"add_drivers+=\" virtio_scsi \"\n",
            0o644,
            0,
            0,
        )
        .unwrap();
        w.replace_file("/etc/fstab", b"UUID=abc / ext4 defaults 0 1\n")
            .unwrap();
    }
    tx.commit().unwrap();
    let back = dir.path().join("back.img");
    util::qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        qcow.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert_fsck(&back, "commit through ImageTx");
    assert_eq!(
        debugfs(&back, "cat /etc/dracut.conf.d/virtio.conf"),
        b"add_drivers+=\" virtio_scsi \"\n"
    );
    assert_eq!(
        debugfs(&back, "cat /etc/fstab"),
        b"UUID=abc / ext4 defaults 0 1\n"
    );
    assert!(debugfs(&back, "cat /etc/dropped").is_empty());
}

/// Files with an extended attribute block (set by debugfs `ea_set`, too large for the inode):
/// unlinking frees the block; e2fsck checks the bitmaps and counts.
#[test]
fn unlink_with_xattr_block() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let t = tree(dir.path());
    let img = dir.path().join("fs.img");
    mkfs(&img, &t, &["-t", "ext4", "-b", "4096"], 16 * 1024);
    let value = dir.path().join("value");
    std::fs::write(&value, vec![b'v'; 1500]).unwrap();
    run(Command::new("debugfs")
        .args([
            "-w",
            "-R",
            &format!("ea_set -f {} /etc/hostname user.big", value.display()),
        ])
        .arg(&img));
    let st = debugfs_text(&img, "stat /etc/hostname");
    assert!(
        st.contains("File ACL: ") && !st.contains("File ACL: 0"),
        "{st}"
    );
    assert_fsck(&img, "ea_set");
    let free_before = free_blocks(&img);
    let mut fx = Fx::open(&img);
    fx.w().unlink("/etc/hostname").unwrap();
    fx.check("unlink of a file with an xattr block");
    // The data block and the xattr block came back.
    assert_eq!(free_blocks(&img), free_before + 2);
}
