//! The NTFS writer against independent readers: volumes made by mkntfs and populated by
//! ntfscp, edited through `NtfsVolume`, then checked by ntfs-3g (`ntfsfix -n`, `ntfsinfo`,
//! `ntfsls`, `ntfscat`), sleuthkit (`fls`, `icat`) and Colin Finck's `ntfs` crate.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::disk::{DiskIo, DiskRead};
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};

use crate::util::{Rng, require, run, tmpdir};

/// A volume in a file, read and written in place (what the tests hand to `NtfsVolume`).
struct FileDisk {
    f: File,
    len: u64,
}

impl FileDisk {
    fn open(p: &Path) -> FileDisk {
        let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
        let len = f.metadata().unwrap().len();
        FileDisk { f, len }
    }
}

impl DiskRead for FileDisk {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> diskconv::error::Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(diskconv::error::Error::InvalidArgument(format!(
                "read past the end at {offset}"
            )));
        }
        self.f
            .read_exact_at(buf, offset)
            .map_err(|e| diskconv::error::Error::Io {
                op: format!("reading at {offset}"),
                source: e,
            })
    }
}

impl DiskIo for FileDisk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> diskconv::error::Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(diskconv::error::Error::InvalidArgument(format!(
                "write past the end at {offset}"
            )));
        }
        self.f
            .write_all_at(buf, offset)
            .map_err(|e| diskconv::error::Error::Io {
                op: format!("writing at {offset}"),
                source: e,
            })
    }
}

fn tools() -> bool {
    [
        "mkntfs", "ntfscp", "ntfscat", "ntfsls", "ntfsfix", "ntfsinfo", "fls", "icat",
    ]
    .iter()
    .all(|t| require(t))
}

/// A fresh volume of `mib` MiB made by mkntfs with `cluster` bytes per cluster.
fn mkntfs(dir: &Path, name: &str, mib: u64, sector: u32, cluster: u32) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(mib << 20).unwrap();
    run(Command::new("mkntfs")
        .args([
            "-F",
            "-f",
            "-q",
            "-s",
            &sector.to_string(),
            "-c",
            &cluster.to_string(),
            "-L",
            "x",
        ])
        .arg(&p));
    p
}

/// Copies `data` to `dest` on the volume with ntfscp.
fn ntfscp(vol: &Path, dest: &str, data: &[u8]) {
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), data).unwrap();
    run(Command::new("ntfscp")
        .arg("-f")
        .arg(vol)
        .arg(src.path())
        .arg(dest));
}

fn open_rw(p: &Path) -> NtfsVolume<FileDisk> {
    NtfsVolume::open(FileDisk::open(p), &NtfsOpenOptions::default()).unwrap()
}

fn finish(v: NtfsVolume<FileDisk>) {
    let mut v = v;
    v.flush().unwrap();
    drop(v.into_inner());
}

/// What the volume should hold: files (path -> bytes) and folders.
#[derive(Default, Clone)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// ntfsfix -n must find nothing to repair.
fn assert_ntfsfix_clean(vol: &Path) {
    let out = Command::new("ntfsfix").arg("-n").arg(vol).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "ntfsfix -n failed on {}:\n{text}",
        vol.display()
    );
    let lower = text.to_lowercase();
    for bad in ["corrupt", "error", "mismatch", "failed", "inconsist"] {
        assert!(!lower.contains(bad), "ntfsfix -n reports {bad:?}:\n{text}");
    }
}

/// Every oracle agrees with the model.
fn check(vol: &Path, m: &Model) {
    assert_ntfsfix_clean(vol);
    let info = stdout(Command::new("ntfsinfo").arg("-m").arg(vol));
    assert!(info.contains("Cluster Size"), "{info}");
    // ntfs-3g reads every byte.
    for (path, data) in &m.files {
        let out = run(Command::new("ntfscat").arg(vol).arg(path));
        assert!(
            out.stdout == *data,
            "ntfscat {path}: {} bytes, expected {}",
            out.stdout.len(),
            data.len()
        );
    }
    // ntfs-3g lists every name in its folder.
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in m.files.keys().chain(m.dirs.iter()) {
        let (parent, name) = p.rsplit_once('/').unwrap();
        children
            .entry(if parent.is_empty() {
                "/".into()
            } else {
                parent.to_string()
            })
            .or_default()
            .push(name.to_string());
    }
    for (dir, names) in &children {
        let ls = stdout(
            Command::new("ntfsls")
                .arg("-a")
                .arg("-l")
                .arg("-p")
                .arg(dir)
                .arg(vol),
        );
        for n in names {
            assert!(
                ls.lines().any(|l| l.ends_with(&format!(" {n}")) || l == n),
                "ntfsls -p {dir} misses {n}:\n{ls}"
            );
        }
    }
    // sleuthkit lists every path and reads every file by its inode.
    let fls = stdout(Command::new("fls").args(["-r", "-p", "-o", "0"]).arg(vol));
    let v = NtfsVolume::open(FileDisk::open(vol), &NtfsOpenOptions { read_only: true }).unwrap();
    for p in m.dirs.iter().chain(m.files.keys()) {
        let rel = p.trim_start_matches('/');
        assert!(
            fls.lines().any(|l| l.ends_with(&format!("\t{rel}"))),
            "fls misses {rel}"
        );
    }
    for (path, data) in &m.files {
        let e = v
            .stat(path)
            .unwrap()
            .unwrap_or_else(|| panic!("our stat misses {path}"));
        assert_eq!(e.size, data.len() as u64, "{path}");
        let out = run(Command::new("icat").arg(vol).arg(e.record.to_string()));
        assert!(out.stdout == *data, "icat {path} differs");
    }
    drop(v);
    // The ntfs crate reads every byte.
    let mut fs = BufReader::new(File::open(vol).unwrap());
    let mut ntfs = ntfs::Ntfs::new(&mut fs).unwrap();
    ntfs.read_upcase_table(&mut fs).unwrap();
    for (path, data) in &m.files {
        assert_eq!(&crate_read(&ntfs, &mut fs, path), data, "ntfs crate {path}");
    }
    for d in &m.dirs {
        let f = crate_find(&ntfs, &mut fs, d);
        assert!(f.is_directory(), "ntfs crate: {d} is not a folder");
    }
}

fn crate_find<'n>(
    ntfs: &'n ntfs::Ntfs,
    fs: &mut BufReader<File>,
    path: &str,
) -> ntfs::NtfsFile<'n> {
    let mut cur = ntfs.root_directory(fs).unwrap();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let index = cur.directory_index(fs).unwrap();
        let mut finder = index.finder();
        let e = ntfs::indexes::NtfsFileNameIndex::find(&mut finder, ntfs, fs, c)
            .unwrap_or_else(|| panic!("ntfs crate: {c} of {path} not found"))
            .unwrap();
        cur = e.to_file(ntfs, fs).unwrap();
    }
    cur
}

fn crate_read(ntfs: &ntfs::Ntfs, fs: &mut BufReader<File>, path: &str) -> Vec<u8> {
    let f = crate_find(ntfs, fs, path);
    let item = f.data(fs, "").unwrap().unwrap();
    let attr = item.to_attribute().unwrap();
    let mut value = attr.value(fs).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = ntfs::NtfsReadSeek::read(&mut value, fs, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn ntfs_write_create_overwrite_grow_shrink() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let vol = mkntfs(dir.path(), "v.img", 16, 512, 4096);
    let mut rng = Rng::new(7);
    let mut m = Model::default();
    let pre = rng.bytes(20000);
    ntfscp(&vol, "/pre.bin", &pre);
    m.files.insert("/pre.bin".into(), pre);
    let mut v = open_rw(&vol);
    assert!(v.state().log_clean && !v.state().dirty && !v.state().hibernated);
    assert_eq!(v.state().label, "x");
    // A small (resident) and a large (non-resident) file in the root.
    let small = b"hello, ntfs".to_vec();
    assert!(v.write_file("/small.txt", &small).unwrap());
    let big = rng.bytes(300_000);
    assert!(v.write_file("big.bin", &big).unwrap());
    assert_eq!(v.read_file("/SMALL.TXT", 1 << 20).unwrap(), small);
    assert_eq!(v.read_file("/big.bin", 1 << 20).unwrap(), big);
    assert_eq!(
        v.read_file("/pre.bin", 1 << 20).unwrap(),
        m.files["/pre.bin"]
    );
    m.files.insert("/small.txt".into(), small);
    m.files.insert("/big.bin".into(), big);
    // Folders and nested files.
    assert!(v.create_dir("/Windows").unwrap());
    assert!(!v.create_dir("/windows").unwrap());
    v.create_dir_all("/Windows/System32/drivers").unwrap();
    let sys = rng.bytes(70_000);
    v.write_file("/Windows/System32/drivers/viostor.sys", &sys)
        .unwrap();
    m.files
        .insert("/Windows/System32/drivers/viostor.sys".into(), sys);
    for d in ["/Windows", "/Windows/System32", "/Windows/System32/drivers"] {
        m.dirs.push(d.into());
    }
    // Overwrite in place, grow across the resident boundary, grow by many clusters, shrink.
    let mut pre = m.files["/pre.bin"].clone();
    v.write_at("/pre.bin", 100, b"PATCHED").unwrap();
    pre[100..107].copy_from_slice(b"PATCHED");
    m.files.insert("/pre.bin".into(), pre);
    let grown = rng.bytes(5000);
    assert!(!v.write_file("/small.txt", &grown).unwrap()); // resident -> non-resident
    m.files.insert("/small.txt".into(), grown);
    let mut big = m.files["/big.bin"].clone();
    let tail = rng.bytes(1_000_000);
    v.write_at("/big.bin", big.len() as u64 + 4096, &tail)
        .unwrap(); // hole reads as zeros
    big.resize(big.len() + 4096, 0);
    big.extend_from_slice(&tail);
    m.files.insert("/big.bin".into(), big);
    v.set_len("/pre.bin", 300).unwrap(); // non-resident -> resident
    m.files.get_mut("/pre.bin").unwrap().truncate(300);
    v.set_len("/Windows/System32/drivers/viostor.sys", 10_000)
        .unwrap();
    m.files
        .get_mut("/Windows/System32/drivers/viostor.sys")
        .unwrap()
        .truncate(10_000);
    v.set_len("/Windows/System32/drivers/viostor.sys", 20_000)
        .unwrap(); // zeros after
    m.files
        .get_mut("/Windows/System32/drivers/viostor.sys")
        .unwrap()
        .resize(20_000, 0);
    for (p, d) in &m.files {
        assert_eq!(&v.read_file(p, 1 << 30).unwrap(), d, "{p}");
    }
    let names: Vec<String> = v
        .read_dir("/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"Windows".to_string()) && names.contains(&"$MFT".to_string()));
    let free_before = v.state().free_clusters;
    finish(v);
    check(&vol, &m);
    // Free clusters were counted right: reopen and compare.
    let v = open_rw(&vol);
    assert_eq!(v.state().free_clusters, free_before);
}
