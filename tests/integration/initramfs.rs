//! Initramfs reading and the newc writer, against GNU cpio, the gzip/xz/zstd/lz4/bzip2 command
//! line tools and initramfs-tools' lsinitramfs.
//!
//! Archives are made by `cpio -o -H newc` from a folder tree built here, compressed by the
//! command-line tools, concatenated in the shapes real initramfs images have (an uncompressed
//! early-microcode archive first, then the compressed main archive, then an appended archive),
//! and our listing and file contents are compared with `cpio -t` / `cpio -i` of the same bytes.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use diskconv::guest::compress::{self, Compression};
use diskconv::guest::initramfs::{EntryKind, Initramfs, KernelModule, NewcFile, write_newc};

use crate::util::{self, Rng, require, run};

/// The kernel version of the module tree.
const KVER: &str = "6.1.0-13-amd64";

/// Runs `cmd` with `input` on its standard input; its standard output.
fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every path under `root` (relative, parents first, sorted), `.` first.
fn walk(root: &Path) -> Vec<String> {
    fn rec(root: &Path, rel: &str, out: &mut Vec<String>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let p = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            out.push(format!("./{p}"));
            let md = std::fs::symlink_metadata(root.join(&p)).unwrap();
            if md.is_dir() {
                rec(root, &p, out);
            }
        }
    }
    let mut out = vec![".".to_string()];
    rec(root, "", &mut out);
    out
}

/// `cpio -o -H newc` of the tree at `root`.
fn cpio_create(root: &Path) -> Vec<u8> {
    let names = walk(root).join("\n") + "\n";
    pipe(
        Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(root),
        names.as_bytes(),
    )
}

/// `cpio -it` of `archive`: the names, normalised as ours are.
fn cpio_list(archive: &[u8]) -> Vec<String> {
    let out = pipe(Command::new("cpio").args(["-it", "--quiet"]), archive);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(normalize)
        .collect()
}

/// `cpio -id` of `archive` into a new folder under `dir`.
fn cpio_extract(archive: &[u8], dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    pipe(
        Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&to),
        archive,
    );
    to
}

/// A path as our entries spell it.
fn normalize(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Compresses `data` with the command-line tool of `kind`.
fn compress_cli(kind: Compression, data: &[u8]) -> Vec<u8> {
    let (tool, args): (&str, &[&str]) = match kind {
        Compression::Gzip => ("gzip", &["-c", "-n"]),
        Compression::Xz => ("xz", &["-c", "-0", "--check=crc32"]),
        Compression::Lzma => ("xz", &["-c", "-0", "--format=lzma"]),
        Compression::Zstd => ("zstd", &["-q", "-c"]),
        Compression::Lz4Legacy => ("lz4", &["-q", "-c", "-l"]),
        Compression::Lz4Frame => ("lz4", &["-q", "-c", "--content-size", "-BD"]),
        Compression::Bzip2 => ("bzip2", &["-c", "-1"]),
    };
    pipe(Command::new(tool).args(args), data)
}

/// Decompresses with the command-line tool of `kind` (the oracle for what a stream holds).
fn decompress_cli(kind: Compression, data: &[u8]) -> Vec<u8> {
    let (tool, args): (&str, &[&str]) = match kind {
        Compression::Gzip => ("gzip", &["-dc"]),
        Compression::Xz => ("xz", &["-dc"]),
        Compression::Lzma => ("xz", &["-dc", "--format=lzma"]),
        Compression::Zstd => ("zstd", &["-qdc"]),
        Compression::Lz4Legacy | Compression::Lz4Frame => ("lz4", &["-qdc"]),
        Compression::Bzip2 => ("bzip2", &["-dc"]),
    };
    pipe(Command::new(tool).args(args), data)
}

/// The tools the tests of this module need, all present (or skipped/failed as `require` says).
fn tools() -> bool {
    ["cpio", "gzip", "xz", "zstd", "lz4", "bzip2"]
        .iter()
        .all(|t| require(t))
}

/// All the compressions.
const ALL: [Compression; 7] = [
    Compression::Gzip,
    Compression::Xz,
    Compression::Lzma,
    Compression::Zstd,
    Compression::Lz4Legacy,
    Compression::Lz4Frame,
    Compression::Bzip2,
];

/// The module files of the main tree: (path under lib/modules/KVER, plain contents,
/// compression).
fn module_files() -> Vec<(&'static str, Vec<u8>, Option<Compression>)> {
    vec![
        (
            "kernel/drivers/block/virtio_blk.ko.xz",
            b"\x7fELF virtio_blk module body ".repeat(300),
            Some(Compression::Xz),
        ),
        (
            "kernel/drivers/nvme/host/nvme-core.ko.zst",
            b"\x7fELF nvme-core module body ".repeat(200),
            Some(Compression::Zstd),
        ),
        (
            "kernel/drivers/scsi/virtio_scsi.ko.gz",
            b"\x7fELF virtio_scsi ".repeat(100),
            Some(Compression::Gzip),
        ),
        (
            "kernel/drivers/net/virtio_net.ko",
            b"\x7fELF virtio_net ".repeat(50),
            None,
        ),
    ]
}

/// Builds the main tree: folders, files (one over 8 MiB, so lz4's legacy format needs two
/// blocks), an empty file, symbolic links (merged /usr), a hard link and kernel modules.
fn main_tree(root: &Path) {
    let d = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let f = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    for p in ["etc", "usr/bin", "usr/sbin", "usr/lib/modules"] {
        d(p);
    }
    f("etc/hostname", b"guest\n");
    f("etc/empty", b"");
    f("etc/with space", b"a name with a space\n");
    std::fs::set_permissions(
        root.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut rng = Rng::new(17);
    // Compressible but not trivial: bytes from a small alphabet.
    let big: Vec<u8> = (0..(8 << 20) + 300_000)
        .map(|_| b"abcdefgh"[rng.below(8) as usize])
        .collect();
    f("usr/bin/big", &big);
    f("usr/bin/busybox", b"busybox binary");
    std::fs::hard_link(root.join("usr/bin/busybox"), root.join("usr/bin/sh")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("hostname", root.join("etc/link")).unwrap();
    let mdir = format!("usr/lib/modules/{KVER}");
    for (rel, plain, kind) in module_files() {
        let p = format!("{mdir}/{rel}");
        d(Path::new(&p).parent().unwrap().to_str().unwrap());
        let bytes = match kind {
            Some(k) => compress_cli(k, &plain),
            None => plain,
        };
        f(&p, &bytes);
    }
    f(
        &format!("{mdir}/modules.dep"),
        b"kernel/drivers/block/virtio_blk.ko.xz:\n",
    );
}

/// The early-microcode tree.
fn early_tree(root: &Path) {
    std::fs::create_dir_all(root.join("kernel/x86/microcode")).unwrap();
    std::fs::write(
        root.join("kernel/x86/microcode/GenuineIntel.bin"),
        b"microcode update blob",
    )
    .unwrap();
}

/// Checks that every member of `ir` from segment `seg` matches the extracted tree `x`: regular
/// files byte for byte (the final member of each path), symbolic link targets, directories.
fn assert_matches_tree(ir: &Initramfs, seg: usize, x: &Path) {
    let mut seen = 0;
    for e in ir.entries().iter().filter(|e| e.segment == seg) {
        let last = ir.lookup(&e.path).unwrap();
        if last != e {
            continue;
        }
        let on_disk = x.join(if e.path.is_empty() { "." } else { &e.path });
        let md = std::fs::symlink_metadata(&on_disk)
            .unwrap_or_else(|err| panic!("{}: {err}", on_disk.display()));
        match e.kind {
            EntryKind::File => {
                assert!(md.is_file(), "{}", e.path);
                assert_eq!(
                    ir.data(e),
                    &std::fs::read(&on_disk).unwrap()[..],
                    "contents of {}",
                    e.path
                );
                assert_eq!(e.mode & 0o7777, md.mode() & 0o7777, "mode of {}", e.path);
            }
            EntryKind::Symlink => {
                let t = std::fs::read_link(&on_disk).unwrap();
                assert_eq!(e.symlink_target.as_deref(), t.to_str(), "{}", e.path);
            }
            EntryKind::Dir => assert!(md.is_dir(), "{}", e.path),
            other => panic!("unexpected {other:?} {}", e.path),
        }
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} members checked");
}

/// Our member paths of segment `seg`, in order.
fn our_names(ir: &Initramfs, seg: usize) -> Vec<String> {
    ir.entries()
        .iter()
        .filter(|e| e.segment == seg)
        .map(|e| e.path.clone())
        .collect()
}

#[test]
fn every_compression_after_an_early_archive_with_an_appended_archive() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let (early_dir, main_dir) = (dir.path().join("early"), dir.path().join("main"));
    early_tree(&early_dir);
    main_tree(&main_dir);
    let early = cpio_create(&early_dir);
    let main = cpio_create(&main_dir);
    let early_names = cpio_list(&early);
    let main_names = cpio_list(&main);
    assert!(main_names.len() > 15);
    let main_x = cpio_extract(&main, dir.path(), "main-x");
    let early_x = cpio_extract(&early, dir.path(), "early-x");
    let appended = write_newc(&[
        NewcFile::dir("etc/appended", 0o755),
        NewcFile::file("etc/hostname", 0o644, b"replaced\n".to_vec()),
    ])
    .unwrap();

    for kind in ALL {
        let z = compress_cli(kind, &main);
        assert_eq!(compress::detect(&z), Some(kind));
        // The tool's own decompression is the oracle for what the stream holds.
        assert_eq!(
            decompress_cli(kind, &z),
            main,
            "{kind} round trip of the tool"
        );
        let d = compress::decompress(kind, &z, 0, 1 << 30).unwrap();
        assert_eq!(d.data, main, "{kind}");
        assert_eq!(d.consumed, z.len(), "{kind}");

        let mut img = early.clone();
        let main_at = img.len();
        img.extend_from_slice(&z);
        let app_at = img.len().next_multiple_of(4);
        img.resize(app_at, 0);
        img.extend_from_slice(&appended);

        let ir = Initramfs::parse(&img).unwrap_or_else(|e| panic!("{kind}: {}", e.chain()));
        let segs = ir.segments();
        assert_eq!(segs.len(), 3, "{kind}: {segs:?}");
        assert_eq!((segs[0].offset, segs[0].compression), (0, None));
        assert_eq!(segs[1].offset, main_at as u64, "{kind}");
        assert_eq!(segs[1].length, z.len() as u64, "{kind}");
        assert_eq!(segs[1].compression, Some(kind));
        assert_eq!(segs[1].data_len, main.len() as u64, "{kind}");
        assert_eq!(segs[2].offset, app_at as u64);
        assert_eq!(our_names(&ir, 0), early_names, "{kind}");
        assert_eq!(our_names(&ir, 1), main_names, "{kind}");
        assert_eq!(segs[1].entries, main_names.len());
        assert_eq!(our_names(&ir, 2), cpio_list(&appended));
        assert_matches_tree(&ir, 0, &early_x);
        // The appended archive replaces etc/hostname: compare the rest with the tree.
        assert_eq!(ir.file("etc/hostname"), Some(&b"replaced\n"[..]));
        assert_eq!(ir.file("etc/link"), Some(&b"replaced\n"[..]));
        assert_eq!(ir.file("usr/bin/sh"), Some(&b"busybox binary"[..]));
        assert_eq!(ir.file("bin/sh"), Some(&b"busybox binary"[..]));
        assert_eq!(
            ir.file("usr/bin/big").map(<[u8]>::len),
            Some(std::fs::metadata(main_x.join("usr/bin/big")).unwrap().len() as usize)
        );
        if kind == Compression::Gzip {
            let mut only_main = early.clone();
            only_main.extend_from_slice(&z);
            let ir = Initramfs::parse(&only_main).unwrap();
            assert_matches_tree(&ir, 1, &main_x);
        }
    }
}

#[test]
fn kernel_modules_are_found_and_decompress() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    main_tree(dir.path());
    let main = cpio_create(dir.path());
    let img = compress_cli(Compression::Zstd, &main);
    let ir = Initramfs::parse(&img).unwrap();
    let mods = ir.kernel_modules();
    let mut want: Vec<KernelModule> = module_files()
        .iter()
        .map(|(rel, _, _)| KernelModule {
            kernel_version: KVER.into(),
            name: compress::module_name(rel).unwrap(),
            path: format!("usr/lib/modules/{KVER}/{rel}"),
        })
        .collect();
    want.sort();
    assert_eq!(mods, want);
    assert!(mods.iter().any(|m| m.name == "nvme_core"));
    for (rel, plain, kind) in module_files() {
        // Through the merged-/usr link, as a kernel sees it.
        let bytes = ir.file(&format!("/lib/modules/{KVER}/{rel}")).unwrap();
        assert_eq!(compress::module_compression(rel), Some(kind));
        let got = match kind {
            Some(k) => compress::decompress(k, bytes, 0, 1 << 20).unwrap().data,
            None => bytes.to_vec(),
        };
        assert_eq!(got, plain, "{rel}");
    }
}

#[test]
fn several_archives_in_one_stream_and_several_streams() {
    if !tools() {
        return;
    }
    // dracut-like: early cpio, then one gzip stream holding two archives (zero padding
    // between), then an xz stream, zero padding, a zstd stream; later members replace earlier.
    let dir = util::tmpdir();
    let mk = |name: &str, files: &[(&str, &[u8])]| {
        let root = dir.path().join(name);
        for (p, data) in files {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        cpio_create(&root)
    };
    let early = mk("e", &[("kernel/x86/microcode/AuthenticAMD.bin", b"amd")]);
    let a1 = mk("a1", &[("init", b"#!/bin/sh\n"), ("etc/v", b"1")]);
    let a2 = mk("a2", &[("etc/v", b"2")]);
    let b = mk("b", &[("etc/v", b"3"), ("etc/w", b"w")]);
    let c = mk("c", &[("etc/c", b"c")]);
    let mut two = a1.clone();
    two.extend_from_slice(&[0; 512]);
    two.extend_from_slice(&a2);
    let mut img = early.clone();
    img.extend(compress_cli(Compression::Gzip, &two));
    img.resize(img.len().next_multiple_of(4) + 8, 0);
    img.extend(compress_cli(Compression::Xz, &b));
    img.extend_from_slice(&[0; 4]);
    img.extend(compress_cli(Compression::Zstd, &c));
    let ir = Initramfs::parse(&img).unwrap();
    let kinds: Vec<_> = ir.segments().iter().map(|s| s.compression).collect();
    assert_eq!(
        kinds,
        vec![
            None,
            Some(Compression::Gzip),
            Some(Compression::Xz),
            Some(Compression::Zstd)
        ]
    );
    assert_eq!(ir.segments()[1].archives, 2);
    assert_eq!(ir.file("etc/v"), Some(&b"3"[..]));
    assert_eq!(ir.file("etc/w"), Some(&b"w"[..]));
    assert_eq!(ir.file("etc/c"), Some(&b"c"[..]));
    assert_eq!(ir.file("init"), Some(&b"#!/bin/sh\n"[..]));
    let mut all = cpio_list(&early);
    all.extend(cpio_list(&a1));
    all.extend(cpio_list(&a2));
    all.extend(cpio_list(&b));
    all.extend(cpio_list(&c));
    let ours: Vec<String> = ir.entries().iter().map(|e| e.path.clone()).collect();
    assert_eq!(ours, all);
}

#[test]
fn written_archive_is_read_by_cpio() {
    if !require("cpio") {
        return;
    }
    let mut rng = Rng::new(5);
    let big = rng.bytes(70_001);
    let files = vec![
        NewcFile::dir("usr", 0o755),
        NewcFile::dir("usr/lib", 0o755),
        NewcFile::dir("/usr/lib/modules", 0o755),
        NewcFile::dir("usr/lib/modules/6.1.0-13-amd64", 0o700).with_mtime(1_600_000_000),
        NewcFile::file(
            "./usr/lib/modules/6.1.0-13-amd64/virtio_blk.ko",
            0o644,
            big.clone(),
        )
        .with_mtime(1_650_000_000),
        NewcFile::file("usr/lib/odd", 0o4751, b"x".to_vec()),
        NewcFile::file("usr/lib/empty", 0o600, Vec::new()),
        NewcFile::file("usr/lib/n1", 0o644, b"1".to_vec()),
        NewcFile::file("usr/lib/n12", 0o644, b"12".to_vec()),
        NewcFile::file("usr/lib/n123", 0o644, b"123".to_vec()),
        NewcFile::symlink("usr/lib/link", "../lib/odd"),
    ];
    let w = write_newc(&files).unwrap();
    assert_eq!(w.len() % 512, 0);
    let names = cpio_list(&w);
    let want: Vec<String> = files.iter().map(|f| normalize(&f.path)).collect();
    assert_eq!(names, want);
    let dir = util::tmpdir();
    let x = cpio_extract(&w, dir.path(), "x");
    for f in &files {
        let p = x.join(normalize(&f.path));
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o170000, f.mode & 0o170000, "{}", f.path);
        if md.is_file() {
            assert_eq!(std::fs::read(&p).unwrap(), f.data, "{}", f.path);
            assert_eq!(md.mode() & 0o7777, f.mode & 0o7777, "{}", f.path);
            assert_eq!(md.mtime(), i64::from(f.mtime), "{}", f.path);
        } else if md.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&p).unwrap().to_str().unwrap().as_bytes(),
                &f.data[..]
            );
        }
    }
    // `cpio -it` of GNU cpio prints the member count with -v; the inode numbers are unique.
    let ir = Initramfs::parse(&w).unwrap();
    let mut inos: Vec<u32> = ir.entries().iter().map(|e| e.ino).collect();
    inos.sort_unstable();
    inos.dedup();
    assert_eq!(inos.len(), files.len());
}

#[test]
fn lsinitramfs_reads_images_with_our_archive() {
    if !require("cpio") || !require("zstd") || !require("lsinitramfs") {
        return;
    }
    let dir = util::tmpdir();
    let (early_dir, main_dir) = (dir.path().join("early"), dir.path().join("main"));
    early_tree(&early_dir);
    std::fs::create_dir_all(main_dir.join("usr/lib/modules")).unwrap();
    std::fs::write(main_dir.join("init"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("usr/lib", main_dir.join("lib")).unwrap();
    let early = cpio_create(&early_dir);
    let main = compress_cli(Compression::Zstd, &cpio_create(&main_dir));
    let ours = write_newc(&[
        NewcFile::dir("usr/lib/modules/6.1.0-13-amd64", 0o755),
        NewcFile::file(
            "usr/lib/modules/6.1.0-13-amd64/virtio_blk.ko",
            0o644,
            b"module".to_vec(),
        ),
    ])
    .unwrap();
    let lsinitramfs = |img: &[u8], name: &str| -> Vec<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, img).unwrap();
        let out = run(Command::new("lsinitramfs").arg(&p));
        let mut v: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(normalize)
            .collect();
        v.sort();
        v
    };
    let mut base = early.clone();
    base.extend_from_slice(&main);
    let listed_base = lsinitramfs(&base, "base.img");
    assert!(listed_base.contains(&"init".to_string()));

    // Our archive as a second early (uncompressed) archive: unmkinitramfs splits the early
    // archives by their trailers and padding, and lists ours with the rest.
    let mut img = early.clone();
    img.extend_from_slice(&ours);
    img.extend_from_slice(&main);
    let listed = lsinitramfs(&img, "early.img");
    let mut want = listed_base.clone();
    want.extend(cpio_list(&ours));
    want.sort();
    assert_eq!(listed, want);
    let ir = Initramfs::parse(&img).unwrap();
    let mut mine: Vec<String> = ir.entries().iter().map(|e| e.path.clone()).collect();
    mine.sort();
    assert_eq!(mine, want);

    // Appended after the compressed main archive (what the kernel reads), compressed the same
    // way: lsinitramfs still lists the main archive. It does not list ours: zstd -d yields
    // both archives, and GNU cpio stops at the first trailer. We read all of it.
    let mut img = base.clone();
    img.extend(compress_cli(Compression::Zstd, &ours));
    assert_eq!(lsinitramfs(&img, "appended.img"), listed_base);
    let ir = Initramfs::parse(&img).unwrap();
    assert_eq!(
        ir.file("lib/modules/6.1.0-13-amd64/virtio_blk.ko"),
        Some(&b"module"[..])
    );
    assert_eq!(ir.kernel_modules().len(), 1);
}

#[test]
fn truncated_and_damaged_images_are_errors_not_panics() {
    if !tools() {
        return;
    }
    let dir = util::tmpdir();
    let root = dir.path().join("t");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let mut rng = Rng::new(9);
    std::fs::write(root.join("etc/data"), rng.bytes(40_000)).unwrap();
    std::fs::write(root.join("etc/text"), b"hello ".repeat(5000)).unwrap();
    let main = cpio_create(&root);
    let early = cpio_create(&{
        let e = dir.path().join("e");
        early_tree(&e);
        e
    });
    for kind in ALL {
        let z = compress_cli(kind, &main);
        let mut img = early.clone();
        img.extend_from_slice(&z);
        assert!(Initramfs::parse(&img).is_ok(), "{kind}");
        // Cut inside the compressed stream: an error naming the stream's format or the
        // segment, at a sensible offset.
        for cut in [early.len() + 3, early.len() + z.len() / 3, img.len() - 5] {
            let e = Initramfs::parse(&img[..cut])
                .err()
                .unwrap_or_else(|| panic!("{kind}: cut at {cut} parsed"));
            let msg = e.chain();
            assert!(
                msg.contains(kind.name()) || msg.contains("initramfs"),
                "{kind} cut at {cut}: {msg}"
            );
        }
        // Flipped bytes: any outcome but a panic; a wrong checksum is an error.
        for i in 0..40 {
            let mut bad = img.clone();
            let at = early.len() + (rng.below(z.len() as u64) as usize);
            bad[at] ^= 1 << (i % 8);
            let _ = Initramfs::parse(&bad);
        }
    }
    // The uncompressed archive cut anywhere: errors.
    for cut in [1, 6, 109, 111, 200, 300] {
        assert!(Initramfs::parse(&early[..cut]).is_err(), "cut at {cut}");
    }
    // Cap on the decompressed size names the cap.
    let z = compress_cli(Compression::Zstd, &main);
    let limits = diskconv::guest::initramfs::Limits {
        max_bytes: 10_000,
        ..Default::default()
    };
    let e = Initramfs::parse_with_limits(&z, &limits).unwrap_err();
    assert!(e.to_string().contains("cap of 10000 bytes"), "{e}");
}
