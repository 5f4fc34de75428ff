//! The btrfs reader against btrfs-progs and the kernel: file systems made by `mkfs.btrfs
//! --rootdir` (inline, regular, sparse and empty files, a directory of many entries, symbolic
//! links; small nodes for deep trees; the CRC-32C, xxHash64 and SHA-256 checksums) are read
//! back byte for byte and name for name against the source folder, with the UUID and label
//! `btrfs inspect-internal dump-super` prints; a file system written by the kernel through a
//! loop mount (zlib, LZO and zstd compression, preallocated extents, nested subvolumes, a
//! default subvolume set with `btrfs subvolume set-default`) against what was written and what
//! `btrfs subvolume list` / `get-default` say; damaged superblocks and tree blocks give errors
//! naming the structure and its logical address, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::btrfs::BtrfsVolume;
use diskconv::guest::fs::{FileKind, GuestFs};
use diskconv::storage::MemStorage;
use diskconv::{ErrorKind, OpenOptions};

use crate::util::{self, Rng, run};

/// Opens the btrfs image file `img` through the image layer (a raw image).
fn open(img: &Path) -> diskconv::Result<BtrfsVolume> {
    let r = diskconv::open(img, &OpenOptions::default())?;
    BtrfsVolume::open(r)
}

/// What a folder on the host holds, as the reader should see it: path (from the folder, with a
/// leading `/`) to kind, content (files), target (links).
#[derive(Debug, PartialEq, Eq)]
enum Want {
    File(Vec<u8>),
    Dir(Vec<String>),
    Link(String),
    Other,
}

fn scan(root: &Path) -> BTreeMap<String, Want> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Want>) {
        let rel = format!("/{}", dir.strip_prefix(root).unwrap().display());
        let rel = if rel == "/" {
            rel
        } else {
            rel.trim_end_matches('/').to_string()
        };
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let p = e.path();
            let key = if rel == "/" {
                format!("/{name}")
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(key, Want::Link(t.to_str().unwrap().to_string()));
            } else if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                out.insert(key, Want::File(std::fs::read(&p).unwrap()));
            } else {
                out.insert(key, Want::Other);
            }
            names.push(name);
        }
        names.sort();
        out.insert(rel, Want::Dir(names));
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Checks every path of `want` (under `prefix` in the volume) with the reader.
fn compare(v: &BtrfsVolume, prefix: &str, want: &BTreeMap<String, Want>) {
    for (path, w) in want {
        let p = if path == "/" {
            prefix.to_string()
        } else {
            format!("{}{path}", prefix.trim_end_matches('/'))
        };
        let p = if p.is_empty() { "/".to_string() } else { p };
        match w {
            Want::File(data) => {
                assert_eq!(
                    v.lstat(&p).unwrap(),
                    Some(FileKind::File(data.len() as u64)),
                    "{p}"
                );
                let got = v.read_file(&p, 1 << 30).unwrap().unwrap();
                assert!(
                    got == *data,
                    "{p}: content differs ({} bytes read, {} expected)",
                    got.len(),
                    data.len()
                );
                let head = v.read_head(&p, 1000).unwrap().unwrap();
                assert_eq!(head[..], data[..data.len().min(1000)], "{p}");
            }
            Want::Dir(names) => {
                assert_eq!(v.lstat(&p).unwrap(), Some(FileKind::Dir), "{p}");
                let mut got = v.list_dir(&p, 100_000).unwrap().unwrap();
                got.sort();
                assert_eq!(&got, names, "{p}");
                if names.len() > 3 {
                    assert_eq!(v.list_dir(&p, 3).unwrap().unwrap().len(), 3);
                }
            }
            Want::Link(t) => {
                assert_eq!(v.lstat(&p).unwrap(), Some(FileKind::Symlink), "{p}");
                assert_eq!(v.read_link(&p).unwrap().as_deref(), Some(t.as_str()), "{p}");
            }
            Want::Other => assert_eq!(v.lstat(&p).unwrap(), Some(FileKind::Other), "{p}"),
        }
    }
}

/// A guest-like tree: small (inline) and large files, a sparse file, an empty file, a
/// directory of 2000 entries, nested folders, symbolic links of every kind.
fn make_tree(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    let w = |p: &str, d: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    };
    w(
        "etc/os-release",
        b"NAME=\"openSUSE Leap\"\nVERSION_ID=\"15.6\"\nID=opensuse-leap\n",
    );
    w(
        "etc/fstab",
        b"UUID=abc / btrfs defaults 0 0\nUUID=abc /home btrfs subvol=@/home 0 0\n",
    );
    w("etc/empty", b"");
    w("boot/vmlinuz-6.4.0", &rng.bytes(3 << 20 | 123));
    // Compressible-looking but random enough: a fake initramfs of several MiB.
    let text: Vec<u8> = (0..(5 << 20))
        .map(|i| b"lib/modules/6.4.0/kernel/"[i % 25] ^ (rng.below(4) as u8))
        .collect();
    w("boot/initrd-6.4.0", &text);
    w(
        "lib/modules/6.4.0/modules.dep",
        b"kernel/drivers/block/virtio_blk.ko.zst:\n",
    );
    for i in 0..2000 {
        w(
            &format!("usr/share/many/entry-{i:05}.conf"),
            format!("value {i}\n").as_bytes(),
        );
    }
    for i in 0..40 {
        let n = rng.below(9000) as usize;
        w(&format!("var/small/f{i}"), &rng.bytes(n));
    }
    // Sparse: data, a 2 MiB hole, data, a hole to the end.
    let sparse = root.join("var/sparse.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.write_all(&rng.bytes(10000)).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&rng.bytes(5000)).unwrap();
        f.set_len(6 << 20).unwrap();
    }
    let l = |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at)).unwrap();
    l("../usr/lib", "etc/lib-rel");
    l("/boot/vmlinuz-6.4.0", "boot/vmlinuz");
    l("vmlinuz", "boot/vmlinuz-chain");
    l("/lib/modules", "boot/mods");
    l("/nowhere/at/all", "etc/dangling");
    l("loop-b", "etc/loop-a");
    l("loop-a", "etc/loop-b");
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    w("usr/lib/os-release", b"ID=opensuse-leap\n");
}

fn mkfs(img: &Path, mib: u64, src: &Path, extra: &[&str]) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-L", "guest-root", "--rootdir"])
        .arg(src)
        .args(extra)
        .arg(img));
}

fn dump_super(img: &Path) -> (String, String) {
    let out = run(Command::new("btrfs")
        .args(["inspect-internal", "dump-super"])
        .arg(img));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|r| r.trim().to_string()))
            .unwrap_or_default()
    };
    (field("fsid"), field("label"))
}

#[test]
fn rootdir_trees_read_back_as_the_source() {
    if !(util::require("mkfs.btrfs") && util::require("btrfs")) {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("src");
    make_tree(&src, 17);
    let want = scan(&src);
    for (name, extra) in [
        ("default", &[][..]),
        ("small-nodes", &["--nodesize", "4096", "-m", "single"][..]),
        ("xxhash", &["--csum", "xxhash"][..]),
        ("sha256", &["--csum", "sha256", "--nodesize", "8192"][..]),
    ] {
        let img = dir.path().join(format!("{name}.img"));
        mkfs(&img, 160, &src, extra);
        run(Command::new("btrfs")
            .args(["check", "--readonly"])
            .arg(&img));
        let v = open(&img).unwrap_or_else(|e| panic!("{name}: {}", e.chain()));
        let (fsid, label) = dump_super(&img);
        assert_eq!(v.uuid(), fsid, "{name}");
        assert_eq!(v.label(), label, "{name}");
        assert_eq!(v.fs_name(), "btrfs");
        assert_eq!(v.default_subvolume(), 5);
        assert_eq!(v.subvolumes().unwrap(), vec![]);
        compare(&v, "/", &want);
        // Links followed inside the file system.
        let os = v.read_text("/etc/lib-rel/os-release", 100).unwrap();
        assert_eq!(os.as_deref(), Some("ID=opensuse-leap\n"), "{name}");
        assert_eq!(
            v.stat("/boot/vmlinuz-chain").unwrap(),
            Some(FileKind::File((3 << 20) + 123))
        );
        assert_eq!(v.stat("/boot/mods/6.4.0").unwrap(), Some(FileKind::Dir));
        assert_eq!(
            v.list_dir("/boot/mods/6.4.0", 10).unwrap(),
            Some(vec!["modules.dep".to_string()])
        );
        assert_eq!(v.stat("/etc/dangling").unwrap(), None);
        assert_eq!(v.stat("/etc/loop-a").unwrap(), None);
        assert_eq!(v.lstat("/etc/loop-a").unwrap(), Some(FileKind::Symlink));
        assert!(v.stat("/etc/../etc/./fstab").unwrap().is_some());
        assert_eq!(v.stat("/etc/fstab/").unwrap(), None);
        assert_eq!(v.stat("/boot/mods/").unwrap(), Some(FileKind::Dir));
        assert_eq!(v.lstat("/boot/mods/").unwrap(), Some(FileKind::Dir));
        assert_eq!(v.stat("/etc/nope").unwrap(), None);
        assert_eq!(v.stat("/etc/fstab/x").unwrap(), None);
        assert_eq!(v.read_link("/etc/fstab").unwrap(), None);
        assert_eq!(v.list_dir("/etc/fstab", 10).unwrap(), None);
        assert_eq!(v.stat("/..").unwrap(), Some(FileKind::Dir));
        let e = v.read_head("/etc", 10).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}

/// A mount point that is unmounted (and its loop device freed) when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(img: &Path, at: &Path, opts: &str) -> Option<Mounted> {
    std::fs::create_dir_all(at).unwrap();
    let out = Command::new("mount")
        .args(["-t", "btrfs", "-o", &format!("loop,{opts}")])
        .arg(img)
        .arg(at)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "skipping: cannot loop-mount a btrfs file system here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(Mounted(at.to_path_buf()))
}

fn btrfs(args: &[&str], at: &Path) -> String {
    String::from_utf8_lossy(&run(Command::new("btrfs").args(args).arg(at)).stdout).to_string()
}

#[test]
fn kernel_written_compression_prealloc_and_subvolumes() {
    if !(util::require("mkfs.btrfs")
        && util::require("btrfs")
        && util::require("loop-device")
        && util::require("mount")
        && util::require("fallocate"))
    {
        return;
    }
    let dir = util::tmpdir();
    let img = dir.path().join("k.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-L", "kern"])
        .arg(&img));
    let mnt = dir.path().join("mnt");
    let mut want_top: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Rng::new(99);
    let compressible = |rng: &mut Rng, n: usize| -> Vec<u8> {
        let words: [&[u8]; 6] = [
            b"virtio_blk ",
            b"nvme ",
            b"xen-blkfront ",
            b"hv_storvsc\n",
            b"lib/modules/",
            b"0123456789",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            v.extend_from_slice(words[rng.below(6) as usize]);
        }
        v.truncate(n);
        v
    };
    let default_id;
    {
        let Some(_m) = mount(&img, &mnt, "compress-force=zstd") else {
            return;
        };
        // Subvolumes as openSUSE lays them out: @, @/home, @/.snapshots/1/snapshot as default.
        btrfs(&["subvolume", "create"], &mnt.join("@"));
        btrfs(&["subvolume", "create"], &mnt.join("@/home"));
        std::fs::create_dir_all(mnt.join("@/.snapshots/1")).unwrap();
        btrfs(
            &["subvolume", "create"],
            &mnt.join("@/.snapshots/1/snapshot"),
        );
        let root = mnt.join("@/.snapshots/1/snapshot");
        for (alg, name) in [
            ("zstd", "zstd.bin"),
            ("zlib", "zlib.bin"),
            ("lzo", "lzo.bin"),
        ] {
            let d = root.join(alg);
            std::fs::create_dir_all(&d).unwrap();
            run(Command::new("btrfs")
                .args(["property", "set"])
                .arg(&d)
                .args(["compression", alg]));
            let data = compressible(&mut rng, (3 << 20) + 4567);
            std::fs::write(d.join(name), &data).unwrap();
            want_top.push((format!("/{alg}/{name}"), data));
            // A small file: an inline extent, compressed.
            let small = compressible(&mut rng, 2000);
            std::fs::write(d.join("small"), &small).unwrap();
            want_top.push((format!("/{alg}/small"), small));
        }
        // Random data: stored raw where compression does not shrink it.
        let raw = rng.bytes(1 << 20);
        std::fs::write(root.join("random.bin"), &raw).unwrap();
        want_top.push(("/random.bin".into(), raw));
        // Preallocated: 1 MiB allocated, 5000 bytes written in the middle.
        let pre = root.join("prealloc");
        run(Command::new("fallocate").args(["-l", "1048576"]).arg(&pre));
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&pre).unwrap();
            f.write_all_at(&[0xab; 5000], 300_000).unwrap();
        }
        let mut p = vec![0u8; 1 << 20];
        p[300_000..305_000].fill(0xab);
        want_top.push(("/prealloc".into(), p));
        // Sparse: a hole in the middle (no-holes: no hole extent item).
        let sp = root.join("sparse");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&sp).unwrap();
            f.write_all_at(&[1; 4096], 0).unwrap();
            f.write_all_at(&[2; 4096], 8 << 20).unwrap();
        }
        let mut s = vec![0u8; (8 << 20) + 4096];
        s[..4096].fill(1);
        s[8 << 20..].fill(2);
        want_top.push(("/sparse".into(), s));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/os-release"), b"ID=\"sles\"\n").unwrap();
        std::os::unix::fs::symlink("../home/user/.profile", root.join("etc/profile-link")).unwrap();
        // The home subvolume, reached through a path crossing into it: link it inside the
        // default one with a nested subvolume of its own.
        btrfs(&["subvolume", "create"], &root.join("home"));
        std::fs::create_dir_all(root.join("home/user")).unwrap();
        std::fs::write(root.join("home/user/.profile"), b"export A=1\n").unwrap();
        want_top.push(("/home/user/.profile".into(), b"export A=1\n".to_vec()));
        want_top.push(("/etc/profile-link".into(), b"export A=1\n".to_vec()));
        let id_line = btrfs(&["subvolume", "show"], &root);
        let id: u64 = id_line
            .lines()
            .find_map(|l| l.trim().strip_prefix("Subvolume ID:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        btrfs(&["subvolume", "set-default", &id.to_string()], &mnt);
        default_id = id;
    }
    // Unmounted (the guard dropped): read the image.
    let v = open(&img).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(v.default_subvolume(), default_id);
    // The kernel compressed with each algorithm (dump-tree says so).
    let tree = String::from_utf8_lossy(
        &run(Command::new("btrfs")
            .args([
                "inspect-internal",
                "dump-tree",
                "-t",
                &default_id.to_string(),
            ])
            .arg(&img))
        .stdout,
    )
    .to_string();
    for c in [
        "compression 1",
        "compression 2",
        "compression 3",
        "type 2 (prealloc)",
    ] {
        assert!(tree.contains(c), "dump-tree shows no {c:?} extent");
    }
    for (p, data) in &want_top {
        let got = v
            .read_file(p, 1 << 30)
            .unwrap_or_else(|e| panic!("{p}: {}", e.chain()))
            .unwrap_or_else(|| panic!("{p} not found"));
        assert!(
            got == *data,
            "{p}: content differs ({} bytes read, {} expected)",
            got.len(),
            data.len()
        );
    }
    assert_eq!(
        v.read_text("/etc/os-release", 100).unwrap().as_deref(),
        Some("ID=\"sles\"\n")
    );
    // The subvolumes, as `btrfs subvolume list` names them (mounted again to ask it).
    let mut got = v.subvolumes().unwrap();
    got.sort();
    let m = mount(&img, &mnt, "ro,subvolid=5").expect("mounted once already");
    let list = btrfs(&["subvolume", "list"], &mnt);
    let get_default = btrfs(&["subvolume", "get-default"], &mnt);
    drop(m);
    let mut want: Vec<(u64, String)> = list
        .lines()
        .map(|l| {
            // "ID 256 gen 9 top level 5 path @"
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].parse().unwrap(), w[8..].join(" "))
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(want.len(), 4);
    // Another subvolume as the root (a root mounted with `subvol=`), and the top level.
    let mut v = v;
    let at = want.iter().find(|(_, p)| p == "@").unwrap().0;
    v.use_subvolume(at).unwrap();
    assert_eq!(v.root_subvolume(), at);
    assert_eq!(
        v.read_text("/.snapshots/1/snapshot/home/user/.profile", 100)
            .unwrap()
            .as_deref(),
        Some("export A=1\n")
    );
    v.use_subvolume(5).unwrap();
    let mut top = v.list_dir("/", 10).unwrap().unwrap();
    top.sort();
    assert_eq!(top, vec!["@".to_string()]);
    assert!(v.use_subvolume(4242).is_err());
    assert_eq!(v.root_subvolume(), 5);
    assert!(
        get_default.starts_with(&format!("ID {default_id} ")),
        "{get_default}"
    );
}

/// Finds the device offsets of the tree block at `logical` (its header names its address).
fn copies_of(img: &[u8], logical: u64, nodesize: usize) -> Vec<usize> {
    (0..img.len() / nodesize)
        .map(|i| i * nodesize)
        .filter(|&o| img[o + 0x30..o + 0x38] == logical.to_le_bytes() && o >= 0x20000)
        .collect()
}

fn root_of(img: &Path) -> u64 {
    let out = run(Command::new("btrfs")
        .args(["inspect-internal", "dump-super"])
        .arg(img));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("root\t").or_else(|| l.strip_prefix("root ")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn damage_gives_errors_naming_the_structure() {
    if !(util::require("mkfs.btrfs") && util::require("btrfs")) {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os-release"), b"ID=fedora\n").unwrap();
    std::fs::write(src.join("big"), vec![7u8; 300_000]).unwrap();
    let img = dir.path().join("s.img");
    mkfs(&img, 120, &src, &["-m", "single"]);
    let good = std::fs::read(&img).unwrap();
    let open_bytes = |b: Vec<u8>| BtrfsVolume::open(MemStorage::from_vec(b));
    assert!(open_bytes(good.clone()).is_ok());

    // The superblock: a flipped byte, a wrong magic, cut short.
    let mut b = good.clone();
    b[0x10000 + 0x300] ^= 0x40;
    let e = open_bytes(b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    assert!(
        e.to_string()
            .contains("btrfs superblock at 0x10000: checksum"),
        "{e}"
    );
    let mut b = good.clone();
    b[0x10040] = b'X';
    let e = open_bytes(b).unwrap_err().to_string();
    assert!(e.contains("superblock at 0x10040: magic"), "{e}");
    let e = open_bytes(good[..68_000].to_vec()).unwrap_err().to_string();
    assert!(e.contains("superblock") && e.contains("too small"), "{e}");

    // The root tree's root block: a flipped byte is a checksum error naming its address.
    let root = root_of(&img);
    let at = copies_of(&good, root, 16384);
    assert_eq!(at.len(), 1, "-m single: one copy");
    let mut b = good.clone();
    b[at[0] + 2000] ^= 1;
    let e = open_bytes(b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    assert!(
        e.to_string().contains(&format!(
            "tree block (logical {root:#x}) at {:#x}: checksum",
            at[0]
        )),
        "{e}"
    );
    // The image cut in the middle of its trees: an error, no panic.
    for cut in [at[0] + 100, good.len() / 2, good.len() - 4096] {
        let r = open_bytes(good[..cut].to_vec()).and_then(|v| v.read_file("/big", 1 << 20));
        if let Err(e) = r {
            assert!(!e.to_string().is_empty());
        }
    }
    // Random damage anywhere in the metadata: errors or reads, never a panic.
    let meta: Vec<usize> = (0x20000..good.len())
        .step_by(16384)
        .filter(|&o| good[o + 0x20..o + 0x30] == good[0x10020..0x10030])
        .collect();
    assert!(meta.len() > 3);
    let good = std::sync::Arc::new(good);
    let mut rng = Rng::new(5);
    for _ in 0..300 {
        let blk = meta[rng.below(meta.len() as u64) as usize];
        let mut block = good[blk..blk + 16384].to_vec();
        for _ in 0..1 + rng.below(4) {
            let o = 0x20 + rng.below(16384 - 0x20) as usize;
            block[o] = rng.next() as u8;
        }
        // Re-seal the checksum half the time, so the parsers see the damage.
        if rng.below(2) == 0 {
            let c = crc32c_of(&block[0x20..]);
            block[..4].copy_from_slice(&c.to_le_bytes());
        }
        let disk = Patched {
            base: good.clone(),
            at: blk,
            block,
        };
        if let Ok(v) = BtrfsVolume::open(disk) {
            let _ = v.read_file("/big", 1 << 20);
            let _ = v.list_dir("/etc", 100);
            let _ = v.read_text("/etc/os-release", 100);
            let _ = v.subvolumes();
        }
    }
}

/// An image with one tree block replaced, without copying the image.
struct Patched {
    base: std::sync::Arc<Vec<u8>>,
    at: usize,
    block: Vec<u8>,
}

impl diskconv::guest::disk::DiskRead for Patched {
    fn len(&self) -> u64 {
        self.base.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> diskconv::Result<()> {
        let o = offset as usize;
        let end = o + buf.len();
        assert!(
            end <= self.base.len(),
            "the reader checks reads against the size"
        );
        buf.copy_from_slice(&self.base[o..end]);
        let (bs, be) = (self.at, self.at + self.block.len());
        let (from, to) = (o.max(bs), end.min(be));
        if from < to {
            buf[from - o..to - o].copy_from_slice(&self.block[from - bs..to - bs]);
        }
        Ok(())
    }
}

/// CRC-32C (Castagnoli), bit by bit: the tests' own, independent of the crate's.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn dup_metadata_survives_a_bad_first_copy() {
    if !(util::require("mkfs.btrfs") && util::require("btrfs")) {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"hello").unwrap();
    let img = dir.path().join("d.img");
    mkfs(&img, 120, &src, &["-m", "dup"]);
    let good = std::fs::read(&img).unwrap();
    let root = root_of(&img);
    let at = copies_of(&good, root, 16384);
    assert_eq!(at.len(), 2, "DUP: two copies");
    let mut b = good.clone();
    b[at[0] + 3000] ^= 1;
    let v = BtrfsVolume::open(MemStorage::from_vec(b.clone())).unwrap();
    assert_eq!(v.read_text("/f", 10).unwrap().as_deref(), Some("hello"));
    b[at[1] + 3000] ^= 1;
    let e = BtrfsVolume::open(MemStorage::from_vec(b))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("tree block (logical {root:#x})")),
        "{e}"
    );
}

#[test]
fn several_devices_are_refused() {
    if !util::require("mkfs.btrfs") {
        return;
    }
    let dir = util::tmpdir();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    for p in [&a, &b] {
        std::fs::File::create(p)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
    }
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-d", "single", "-m", "single"])
        .arg(&a)
        .arg(&b));
    let e = open(&a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("2 devices"), "{e}");
}

/// The LZO1X blocks of an lzop file (its format: magic, header, then blocks of decoded length,
/// stored length, checksums and data; a block whose stored length equals its decoded length
/// is not compressed): (decoded length, bytes, whether compressed) of each block.
fn lzop_blocks(f: &[u8]) -> Vec<(usize, Vec<u8>, bool)> {
    let be32 = |at: usize| u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
    assert_eq!(&f[..9], b"\x89LZO\x00\r\n\x1a\n", "lzop magic");
    let version = u16::from_be_bytes([f[9], f[10]]);
    let mut at = 13; // version, library version
    if version >= 0x0940 {
        at += 2; // version needed
    }
    at += 1; // method
    if version >= 0x0940 {
        at += 1; // level
    }
    let flags = be32(at);
    at += 4;
    if flags & 0x800 != 0 {
        at += 4; // filter
    }
    at += 8; // mode, mtime low
    if version >= 0x0940 {
        at += 4; // mtime high
    }
    let name_len = f[at] as usize;
    at += 1 + name_len + 4; // name, header checksum
    assert_eq!(flags & 0x40, 0, "no extra field");
    let mut out = Vec::new();
    loop {
        let dst = be32(at) as usize;
        at += 4;
        if dst == 0 {
            break;
        }
        let src = be32(at) as usize;
        at += 4;
        if flags & 0x1 != 0 {
            at += 4; // adler32 of the decoded data
        }
        if flags & 0x100 != 0 {
            at += 4; // crc32 of the decoded data
        }
        if src < dst {
            if flags & 0x2 != 0 {
                at += 4; // adler32 of the compressed data
            }
            if flags & 0x200 != 0 {
                at += 4; // crc32 of the compressed data
            }
        }
        out.push((dst, f[at..at + src].to_vec(), src < dst));
        at += src;
    }
    out
}

#[test]
fn lzo1x_blocks_made_by_lzop_decode() {
    use diskconv::guest::btrfs::extent::lzo1x_decompress;
    if !util::require("lzop") {
        return;
    }
    let dir = util::tmpdir();
    let mut rng = Rng::new(3);
    // Text with long and short repeats, runs of zeros and random stretches.
    let mut text = Vec::new();
    while text.len() < 700_000 {
        match rng.below(4) {
            0 => text.extend_from_slice(b"/lib/modules/6.4.0-150600/kernel/drivers/"),
            1 => text.extend(std::iter::repeat_n(0u8, rng.below(3000) as usize)),
            2 => {
                let n = rng.below(200) as usize;
                text.extend(rng.bytes(n))
            }
            _ => text.extend(format!("virtio_{} ", rng.below(1000)).bytes()),
        }
    }
    let src = dir.path().join("t.bin");
    std::fs::write(&src, &text).unwrap();
    for level in ["-1", "-9"] {
        let out = run(Command::new("lzop").args([level, "-c"]).arg(&src));
        let blocks = lzop_blocks(&out.stdout);
        assert!(
            blocks.iter().any(|b| b.2),
            "lzop {level} compressed nothing"
        );
        let mut decoded = Vec::new();
        for (dst, data, compressed) in &blocks {
            if *compressed {
                let mut buf = vec![0u8; *dst];
                let n = lzo1x_decompress(data, &mut buf)
                    .unwrap_or_else(|e| panic!("lzop {level}: {e}"));
                assert_eq!(n, *dst);
                decoded.extend_from_slice(&buf);
            } else {
                decoded.extend_from_slice(data);
            }
        }
        assert!(decoded == text, "lzop {level}: the decoded stream differs");
        let blocks: Vec<(usize, Vec<u8>)> = blocks
            .into_iter()
            .filter(|b| b.2)
            .map(|b| (b.0, b.1))
            .collect();
        // A cut block is an error, not a panic.
        let (dst, data) = &blocks[0];
        for cut in [1, data.len() / 2, data.len() - 1] {
            assert!(lzo1x_decompress(&data[..cut], &mut vec![0u8; *dst]).is_err());
        }
    }
}
