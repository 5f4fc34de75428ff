//! `$I30` indexes against ntfs-3g: folders filled by ntfs-3g (FUSE mount, or `ntfscp`) and the
//! real corpus volumes are read through `index::entries`/`lookup` (over a tiny read-only MFT
//! reader written here, independent of the volume code) and compared with `ntfsls`; the
//! `$LogFile` of real volumes is checked with `logfile::log_is_clean`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::ntfs::index::{self, IndexEntry, IndexStore};
use diskconv::guest::ntfs::upcase::UpCase;
use diskconv::guest::ntfs::{NtfsError, fixup, logfile, runlist};

use crate::util::{self, Rng, corpus, require, run, tmpdir};

/// Unwraps a test-reader result, naming what failed.
fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A minimal read-only NTFS reader for the tests: boot sector, `$MFT` runs, MFT records with
/// fixups, resident and non-resident attributes (no attribute lists).
struct Vol {
    file: File,
    cluster: u64,
    record: usize,
    total_clusters: u64,
    mft_runs: Vec<runlist::Run>,
}

/// One attribute of a record: type, name, and resident value or runs + data size.
struct Attr {
    ty: u32,
    name: String,
    resident: Option<Vec<u8>>,
    runs: Vec<runlist::Run>,
    size: u64,
}

impl Vol {
    fn open(path: &Path) -> Vol {
        let file = File::open(path).unwrap();
        let mut bs = [0u8; 512];
        file.read_exact_at(&mut bs, 0).unwrap();
        assert_eq!(&bs[3..11], b"NTFS    ", "{}: not NTFS", path.display());
        let sector = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
        let spc = u64::from(bs[13]);
        let cluster = sector * spc;
        let total_sectors = u64::from_le_bytes(bs[0x28..0x30].try_into().unwrap());
        let mft_lcn = u64::from_le_bytes(bs[0x30..0x38].try_into().unwrap());
        let cpr = bs[0x40] as i8;
        let record = if cpr < 0 {
            1usize << (-cpr)
        } else {
            cpr as usize * cluster as usize
        };
        let mut v = Vol {
            file,
            cluster,
            record,
            total_clusters: total_sectors / spc,
            mft_runs: vec![runlist::Run {
                vcn: 0,
                len: 64,
                lcn: Some(mft_lcn),
            }],
        };
        let attrs = v.record_attrs(0);
        let data = attrs
            .iter()
            .find(|a| a.ty == 0x80 && a.name.is_empty())
            .unwrap();
        v.mft_runs = data.runs.clone();
        v
    }

    fn read_vcn_bytes(&self, runs: &[runlist::Run], off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let vcn = pos / self.cluster;
            let within = pos % self.cluster;
            let n = ((self.cluster - within) as usize).min(len - done);
            if let Some(lcn) = runlist::vcn_to_lcn(runs, vcn) {
                self.file
                    .read_exact_at(&mut out[done..done + n], lcn * self.cluster + within)
                    .unwrap();
            }
            done += n;
        }
        out
    }

    /// The attributes of record `rec` and of its extension records (through
    /// `$ATTRIBUTE_LIST`), pieces of one non-resident attribute merged.
    fn attrs(&self, rec: u64) -> Vec<Attr> {
        let mut base = self.record_attrs(rec);
        let Some(list) = base.iter().find(|a| a.ty == 0x20) else {
            return base;
        };
        let list = match &list.resident {
            Some(v) => v.clone(),
            None => self.read_vcn_bytes(&list.runs, 0, list.size as usize),
        };
        // Entries: type u32, length u16, name length u8, name offset u8, lowest VCN u64,
        // MFT reference u64, attribute id u16, name.
        let mut exts = Vec::new();
        let mut pos = 0;
        while pos + 0x1A <= list.len() {
            let len = u16::from_le_bytes([list[pos + 4], list[pos + 5]]) as usize;
            let r = u64::from_le_bytes(list[pos + 0x10..pos + 0x18].try_into().unwrap())
                & 0xFFFF_FFFF_FFFF;
            if r != rec && !exts.contains(&r) {
                exts.push(r);
            }
            if len == 0 {
                break;
            }
            pos += len;
        }
        base.retain(|a| a.ty != 0x20);
        for r in exts {
            for a in self.record_attrs(r) {
                match base
                    .iter_mut()
                    .find(|b| b.ty == a.ty && b.name == a.name && b.resident.is_none())
                {
                    Some(b) if a.resident.is_none() => {
                        b.runs.extend(a.runs);
                        b.runs.sort_by_key(|r| r.vcn);
                    }
                    _ => base.push(a),
                }
            }
        }
        base
    }

    fn record_attrs(&self, rec: u64) -> Vec<Attr> {
        let mut b = self.read_vcn_bytes(&self.mft_runs, rec * self.record as u64, self.record);
        assert_eq!(&b[0..4], b"FILE", "MFT record {rec}");
        ok(
            fixup::remove(&mut b, &format!("MFT record {rec}"), 0),
            "record fixups",
        );
        let mut pos = u16::from_le_bytes([b[0x14], b[0x15]]) as usize;
        let mut out = Vec::new();
        loop {
            let ty = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap());
            if ty == 0xFFFF_FFFF {
                break;
            }
            let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
            let a = &b[pos..pos + len];
            let nlen = a[9] as usize;
            let noff = u16::from_le_bytes([a[10], a[11]]) as usize;
            let name: Vec<u16> = a[noff..noff + 2 * nlen]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let name = String::from_utf16(&name).unwrap();
            if a[8] == 0 {
                let vlen = u32::from_le_bytes(a[16..20].try_into().unwrap()) as usize;
                let voff = u16::from_le_bytes([a[20], a[21]]) as usize;
                out.push(Attr {
                    ty,
                    name,
                    resident: Some(a[voff..voff + vlen].to_vec()),
                    runs: Vec::new(),
                    size: vlen as u64,
                });
            } else {
                let first = u64::from_le_bytes(a[16..24].try_into().unwrap());
                let rl = u16::from_le_bytes([a[32], a[33]]) as usize;
                let runs = ok(
                    runlist::decode(&a[rl..], first, self.total_clusters, 0),
                    "mapping pairs",
                );
                // Only the first piece (lowest VCN 0) carries the sizes.
                let size = if first == 0 {
                    u64::from_le_bytes(a[48..56].try_into().unwrap())
                } else {
                    0
                };
                out.push(Attr {
                    ty,
                    name,
                    resident: None,
                    runs,
                    size,
                });
            }
            pos += len;
        }
        out
    }

    fn data(&self, rec: u64, ty: u32, name: &str) -> Option<Vec<u8>> {
        let attrs = self.attrs(rec);
        let a = attrs.iter().find(|a| a.ty == ty && a.name == name)?;
        Some(match &a.resident {
            Some(v) => v.clone(),
            None => self.read_vcn_bytes(&a.runs, 0, a.size as usize),
        })
    }

    fn upcase(&self) -> UpCase {
        ok(
            UpCase::from_bytes(&self.data(10, 0x80, "").unwrap()),
            "$UpCase",
        )
    }

    /// The `$I30` of folder record `rec`, read-only.
    fn dir(&self, rec: u64) -> DirStore<'_> {
        let attrs = self.attrs(rec);
        let root = attrs
            .iter()
            .find(|a| a.ty == 0x90 && a.name == "$I30")
            .and_then(|a| a.resident.clone())
            .unwrap_or_else(|| panic!("record {rec} has no $INDEX_ROOT $I30"));
        let alloc = attrs
            .iter()
            .find(|a| a.ty == 0xA0 && a.name == "$I30")
            .map(|a| a.runs.clone())
            .unwrap_or_default();
        let block_size = u32::from_le_bytes(root[8..12].try_into().unwrap());
        DirStore {
            vol: self,
            root,
            alloc,
            block_size,
        }
    }
}

struct DirStore<'a> {
    vol: &'a Vol,
    root: Vec<u8>,
    alloc: Vec<runlist::Run>,
    block_size: u32,
}

fn read_only() -> diskconv::error::Error {
    NtfsError::Unsupported("the test reader is read-only".into()).into()
}

impl IndexStore for DirStore<'_> {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn vcn_per_block(&self) -> u64 {
        if u64::from(self.block_size) >= self.vol.cluster {
            u64::from(self.block_size) / self.vol.cluster
        } else {
            u64::from(self.block_size) / 512
        }
    }
    fn root(&self) -> diskconv::error::Result<Vec<u8>> {
        Ok(self.root.clone())
    }
    fn root_capacity(&self) -> diskconv::error::Result<usize> {
        Ok(self.root.len())
    }
    fn set_root(&mut self, _: &[u8]) -> diskconv::error::Result<()> {
        Err(read_only())
    }
    fn read_block(&self, vcn: u64) -> diskconv::error::Result<Vec<u8>> {
        let unit = if u64::from(self.block_size) >= self.vol.cluster {
            self.vol.cluster
        } else {
            512
        };
        let mut b = self
            .vol
            .read_vcn_bytes(&self.alloc, vcn * unit, self.block_size as usize);
        fixup::remove(&mut b, &format!("index block at VCN {vcn}"), 0)?;
        Ok(b)
    }
    fn write_block(&mut self, _: u64, _: &[u8]) -> diskconv::error::Result<()> {
        Err(read_only())
    }
    fn allocate_block(&mut self) -> diskconv::error::Result<u64> {
        Err(read_only())
    }
}

fn w(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// Long-name entries (not DOS-only) as (name, record number), in index order.
fn listing(vol: &Vol, rec: u64) -> Vec<(String, u64)> {
    let store = vol.dir(rec);
    ok(index::entries(&store), "index::entries")
        .iter()
        .filter(|e| e.namespace().unwrap() != 2)
        .map(|e| {
            (
                String::from_utf16(&e.name().unwrap()).unwrap(),
                e.file_ref & 0xFFFF_FFFF_FFFF,
            )
        })
        // The root folder indexes itself as "."; readdir reports it separately.
        .filter(|(n, _)| n != ".")
        .collect()
}

/// `ntfsls -a -s -i -p PATH`, without `.` and `..`, as (name, record number), in its order.
fn ntfsls(img: &Path, path: &str) -> Vec<(String, u64)> {
    let out = run(Command::new("ntfsls")
        .args(["-a", "-s", "-i", "-p", path])
        .arg(img));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (num, name) = l.split_once(' ')?;
            (name != "." && name != "..").then(|| (name.to_string(), num.parse().unwrap()))
        })
        .collect()
}

/// Record number of `path` (folders separated by `/`), found with our `lookup` from the root.
fn resolve(vol: &Vol, up: &UpCase, path: &str) -> u64 {
    let mut rec = 5;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let store = vol.dir(rec);
        let e: IndexEntry = ok(index::lookup(&store, up, &w(part)), "lookup")
            .unwrap_or_else(|| panic!("{part} not found in record {rec}"));
        rec = e.file_ref & 0xFFFF_FFFF_FFFF;
    }
    rec
}

/// Every folder of the volume (recursively): our listing equals ntfsls's, names and order, and
/// `lookup` finds each name in another case. Returns how many entries were compared.
fn compare_tree(img: &Path, vol: &Vol, up: &UpCase, path: &str, depth: usize) -> usize {
    let rec = resolve(vol, up, path);
    let ours = listing(vol, rec);
    let theirs = ntfsls(img, if path.is_empty() { "/" } else { path });
    // ntfsls lists in block order, not tree order: compare sorted copies; our order is
    // checked against the collation below.
    let (mut a, mut b) = (ours.clone(), theirs.clone());
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len(), "{path}: entry count");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "{path}: sorted entry {i}");
    }
    for pair in ours.windows(2) {
        assert_eq!(
            up.compare_full(&w(&pair[0].0), &w(&pair[1].0)),
            std::cmp::Ordering::Less,
            "{path}: {:?} before {:?}",
            pair[0].0,
            pair[1].0
        );
    }
    let store = vol.dir(rec);
    let mut count = ours.len();
    let names: Vec<Vec<u16>> = ours.iter().map(|(n, _)| w(n)).collect();
    for (name, r) in &ours {
        let u = w(name);
        let flipped: Vec<u16> = u
            .iter()
            .map(|&c| {
                if up.upcase(c) == c {
                    // Lower-case where an ASCII letter (both spellings collate equal).
                    if (b'A' as u16..=b'Z' as u16).contains(&c) {
                        c + 32
                    } else {
                        c
                    }
                } else {
                    up.upcase(c)
                }
            })
            .collect();
        let e = ok(index::lookup(&store, up, &flipped), "lookup")
            .unwrap_or_else(|| panic!("{path}: {name} not found by lookup"));
        let twins = names.iter().filter(|n| up.eq_ignore_case(n, &u)).count();
        if twins == 1 {
            assert_eq!(e.file_ref & 0xFFFF_FFFF_FFFF, *r, "{path}/{name}");
        } else {
            assert!(up.eq_ignore_case(&e.name().unwrap(), &u));
        }
    }
    if depth < 4 {
        let attrs_of = |r: u64| vol.attrs(r);
        for (name, r) in &ours {
            if name.starts_with('$') {
                continue;
            }
            if attrs_of(*r)
                .iter()
                .any(|a| a.ty == 0x90 && a.name == "$I30")
            {
                count += compare_tree(img, vol, up, &format!("{path}/{name}"), depth + 1);
            }
        }
    }
    count
}

fn have_ntfs3g_tools() -> bool {
    require("mkntfs") && require("ntfsls") && require("ntfscp")
}

/// Random names valid for Windows: letters of both cases, digits, punctuation, Latin-1,
/// Greek, Cyrillic, CJK, an emoji now and then.
fn random_name(rng: &mut Rng, max: u64) -> String {
    let len = 1 + rng.below(max);
    let mut s = String::new();
    for _ in 0..len {
        let c = match rng.below(14) {
            0..=4 => char::from(b'a' + rng.below(26) as u8),
            5..=7 => char::from(b'A' + rng.below(26) as u8),
            8 => char::from(b'0' + rng.below(10) as u8),
            9 => ['.', '_', '-', ' ', '~', '$', '#', '(', ')'][rng.below(9) as usize],
            10 => char::from_u32(0xC0 + rng.below(0x3F) as u32).unwrap(),
            11 => char::from_u32(0x3B1 + rng.below(24) as u32).unwrap(),
            12 => char::from_u32(0x430 + rng.below(32) as u32).unwrap(),
            _ => ['中', '文', '😀', 'ß', 'Ω', 'ǅ'][rng.below(6) as usize],
        };
        s.push(c);
    }
    let s = s.trim_start().trim_end_matches([' ', '.']).to_string();
    if s.is_empty() { "x".into() } else { s }
}

/// Makes an mkntfs volume of `mib` MiB with cluster size `cluster`.
fn mkntfs(dir: &Path, mib: u64, cluster: u32) -> PathBuf {
    let img = dir.join("v.img");
    File::create(&img).unwrap().set_len(mib << 20).unwrap();
    run(Command::new("mkntfs")
        .args(["-F", "-q", "-f", "-c", &cluster.to_string()])
        .arg(&img));
    img
}

/// Fills folders through an ntfs-3g FUSE mount (as root), or `None` when mounting is not
/// possible here.
fn fill_with_mount(img: &Path, dir: &Path, folders: &[(&str, Vec<String>)]) -> Option<()> {
    if !require("ntfs-3g") || !Path::new("/dev/fuse").exists() {
        return None;
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("ntfs-3g").arg(img).arg(&mnt).output().ok()?;
    if !st.status.success() {
        eprintln!(
            "ntfs-3g mount failed, using ntfscp: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        return None;
    }
    let result = std::panic::catch_unwind(|| {
        for (folder, names) in folders {
            let d = mnt.join(folder);
            std::fs::create_dir_all(&d).unwrap();
            for (i, n) in names.iter().enumerate() {
                std::fs::write(d.join(n), format!("{folder}/{i}\n")).unwrap();
            }
        }
    });
    run(Command::new("umount").arg(&mnt));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    Some(())
}

/// Same through `ntfscp` (one process per file; folders made by a mount-free route: ntfscp
/// cannot make folders, so only the root folder is used).
fn fill_with_ntfscp(img: &Path, dir: &Path, names: &[String]) {
    let src = dir.join("src.txt");
    std::fs::write(&src, b"hello\n").unwrap();
    for n in names {
        run(Command::new("ntfscp").arg(img).arg(&src).arg(n));
    }
}

/// Names for a folder: `n` distinct names ignoring case, plus (when `twins`) a few pairs equal
/// ignoring case, which ntfs-3g (POSIX semantics) accepts.
fn names(rng: &mut Rng, n: usize, twins: bool) -> Vec<String> {
    let up = UpCase::default_table();
    let mut out: Vec<String> = Vec::new();
    let mut seen: HashMap<Vec<u16>, ()> = HashMap::new();
    while out.len() < n {
        let max = if rng.below(8) == 0 { 120 } else { 24 };
        let s = random_name(rng, max);
        let key: Vec<u16> = w(&s).iter().map(|&c| up.upcase(c)).collect();
        if key.len() > 255 || seen.insert(key, ()).is_some() {
            continue;
        }
        out.push(s);
    }
    if twins {
        for i in 0..5 {
            out.push(format!("Twin{i}"));
            out.push(format!("tWIN{i}"));
        }
    }
    out
}

#[test]
fn ntfs_index_reads_folders_filled_by_ntfs3g() {
    if !have_ntfs3g_tools() || !require("ntfs-3g") || !require("umount") {
        return;
    }
    let dir = tmpdir();
    let img = mkntfs(dir.path(), 48, 4096);
    let mut rng = Rng::new(0x1D3C_5E70);
    let big = names(&mut rng, 3000, true);
    let folders: Vec<(&str, Vec<String>)> = vec![
        ("big", big.clone()),
        ("a", names(&mut rng, 300, false)),
        ("b/c", names(&mut rng, 400, true)),
        ("Ünïcødé", names(&mut rng, 250, false)),
    ];
    let mounted = fill_with_mount(&img, dir.path(), &folders).is_some();
    if !mounted {
        if util::in_ci() {
            panic!("CI must be able to mount ntfs-3g (root, /dev/fuse)");
        }
        fill_with_ntfscp(&img, dir.path(), &big[..600]);
    }
    let vol = Vol::open(&img);
    let up = vol.upcase();
    let compared = compare_tree(&img, &vol, &up, "", 0);
    let want = if mounted {
        folders.iter().map(|(_, n)| n.len()).sum::<usize>()
    } else {
        600
    };
    assert!(
        compared >= want,
        "compared {compared} entries, expected at least {want}"
    );
    if mounted {
        // The big folder's index really has several levels of blocks.
        let rec = resolve(&vol, &up, "big");
        let store = vol.dir(rec);
        assert!(store.alloc.iter().map(|r| r.len).sum::<u64>() > 20);
        // Every name we created is there, exactly once, and nothing else.
        let mut ours: Vec<String> = listing(&vol, rec).into_iter().map(|(n, _)| n).collect();
        let mut made = big.clone();
        ours.sort();
        made.sort();
        assert_eq!(ours, made);
    }
}

#[test]
fn ntfs_index_reads_the_corpus_volumes_like_ntfsls() {
    if !require("ntfsls") {
        return;
    }
    for rel in [
        "ntfs/colinfinck_testfs1.img",
        "ntfs/dfvfs_windows_volume_ntfs.raw",
    ] {
        let Some(img) = corpus(rel) else { return };
        let vol = Vol::open(&img);
        let up = vol.upcase();
        // Both volumes carry the table mkntfs and Windows 8+ write.
        assert_eq!(
            up.to_bytes(),
            UpCase::default_table().to_bytes(),
            "{rel}: $UpCase"
        );
        let n = compare_tree(&img, &vol, &up, "", 0);
        assert!(n > 10, "{rel}: {n} entries");
    }
}

#[test]
fn ntfs_index_logfile_of_real_volumes() {
    if !require("ntfscat") || !require("mkntfs") {
        return;
    }
    let cat = |img: &Path| run(Command::new("ntfscat").arg(img).arg("$LogFile")).stdout;
    // mkntfs leaves the log emptied (all 0xFF).
    let dir = tmpdir();
    let img = mkntfs(dir.path(), 8, 4096);
    let log = cat(&img);
    assert!(log.len() >= 1 << 20);
    assert!(ok(logfile::log_is_clean(&log), "mkntfs log"));
    // Our own reader gets the same bytes.
    assert_eq!(Vol::open(&img).data(2, 0x80, "").unwrap(), log);
    for rel in [
        "ntfs/dfvfs_windows_volume_ntfs.raw",
        "ntfs/colinfinck_testfs1.img",
    ] {
        let Some(img) = corpus(rel) else { return };
        let log = cat(&img);
        assert_eq!(Vol::open(&img).data(2, 0x80, "").unwrap(), log);
        assert!(ok(logfile::log_is_clean(&log), rel), "{rel}");
        // A log record page where the first restart page should be: not clean, an error.
        let mut bad = log.clone();
        bad[..4].copy_from_slice(b"RCRD");
        assert!(logfile::log_is_clean(&bad).is_err(), "{rel}");
    }
}

/// Creates `names` in folder `folder` through `NtfsVolume` on a volume held in memory.
fn create_through_volume(img: &Path, folders: &[(String, Vec<String>)]) {
    use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};
    use diskconv::storage::MemStorage;
    let bytes = std::fs::read(img).unwrap();
    let mut vol = ok(
        NtfsVolume::open(MemStorage::from_vec(bytes), &NtfsOpenOptions::default()),
        "open",
    );
    for (folder, names) in folders {
        ok(vol.create_dir_all(folder), "create_dir_all");
        for (i, n) in names.iter().enumerate() {
            let data = format!("{folder}/{n} #{i}\n");
            let created = ok(vol.write_file(&format!("{folder}/{n}"), data.as_bytes()), n);
            assert!(created, "{folder}/{n} was new");
        }
    }
    ok(vol.flush(), "flush");
    std::fs::write(img, vol.into_inner().into_vec()).unwrap();
}

/// Names distinct ignoring case (the volume refuses twins: Windows semantics).
fn distinct_names(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut v = names(rng, n, false);
    v.retain(|s| !s.starts_with('$') && !s.contains(['/', '\\']));
    v
}

#[test]
fn ntfs_index_thousands_of_files_created_by_us_are_found_by_ntfs3g_and_sleuthkit() {
    if !have_ntfs3g_tools() || !require("ntfsfix") || !require("ntfscat") || !require("fls") {
        return;
    }
    for (cluster, big_n, small_n) in [(4096u32, 3000usize, 300usize), (512, 1200, 200)] {
        let dir = tmpdir();
        let img = mkntfs(dir.path(), 40, cluster);
        let mut rng = Rng::new(0xB16_F01D + u64::from(cluster));
        let mut folders = vec![("big".to_string(), distinct_names(&mut rng, big_n))];
        for f in ["one", "two/deeper", "Ελληνικά"] {
            folders.push((f.to_string(), distinct_names(&mut rng, small_n)));
        }
        create_through_volume(&img, &folders);
        // ntfs-3g: the volume is consistent.
        let out = run(Command::new("ntfsfix").arg("-n").arg(&img));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("processed successfully"), "{text}");
        // ntfs-3g lists every name of every folder, and nothing else.
        let vol = Vol::open(&img);
        let up = vol.upcase();
        for (folder, made) in &folders {
            let mut theirs: Vec<String> =
                ntfsls(&img, folder).into_iter().map(|(n, _)| n).collect();
            let mut made = made.clone();
            theirs.sort();
            made.sort();
            assert_eq!(theirs, made, "{cluster}: ntfsls {folder}");
        }
        // Our reader agrees with ntfsls everywhere (also checks the collation order).
        compare_tree(&img, &vol, &up, "", 0);
        let big = resolve(&vol, &up, "big");
        assert!(vol.dir(big).alloc.iter().map(|r| r.len).sum::<u64>() >= 8);
        // sleuthkit finds them all too.
        let out = run(Command::new("fls").args(["-r", "-p"]).arg(&img));
        let fls = String::from_utf8_lossy(&out.stdout);
        let found: std::collections::HashSet<&str> = fls
            .lines()
            .filter_map(|l| l.split_once(":\t").map(|(_, p)| p))
            .collect();
        for (folder, made) in &folders {
            for n in made {
                let p = format!("{folder}/{n}");
                assert!(found.contains(p.as_str()), "{cluster}: fls misses {p}");
            }
        }
        // ntfscat reads some back.
        for (folder, made) in &folders {
            for i in [0, made.len() / 2, made.len() - 1] {
                let n = &made[i];
                let out = run(Command::new("ntfscat")
                    .arg(&img)
                    .arg(format!("{folder}/{n}")));
                assert_eq!(
                    String::from_utf8(out.stdout).unwrap(),
                    format!("{folder}/{n} #{i}\n")
                );
            }
        }
    }
}

#[test]
fn ntfs_index_inserts_into_corpus_folders() {
    if !have_ntfs3g_tools() || !require("ntfsfix") {
        return;
    }
    // A Windows-made folder whose index is still all in its root (it moves into a block), and
    // an mkntfs-made folder of 512 entries already in index blocks (512-byte clusters: 8 VCNs
    // per block).
    for (rel, folder, n) in [
        (
            "ntfs/dfvfs_windows_volume_ntfs.raw",
            "Windows/System32",
            400usize,
        ),
        ("ntfs/colinfinck_testfs1.img", "many_subdirs", 300),
    ] {
        let Some(src) = corpus(rel) else { return };
        let dir = tmpdir();
        let img = dir.path().join("v.img");
        std::fs::copy(&src, &img).unwrap();
        let mut perm = std::fs::metadata(&img).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&img, perm).unwrap();
        let before: Vec<(String, u64)> = ntfsls(&img, folder);
        let mut rng = Rng::new(n as u64);
        let mut made = distinct_names(&mut rng, n);
        // No clash with what is there already.
        let up = UpCase::default_table();
        made.retain(|m| !before.iter().any(|(b, _)| up.eq_ignore_case(&w(b), &w(m))));
        create_through_volume(&img, &[(folder.to_string(), made.clone())]);
        let out = run(Command::new("ntfsfix").arg("-n").arg(&img));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("processed successfully"), "{rel}: {text}");
        let mut theirs: Vec<String> = ntfsls(&img, folder).into_iter().map(|(n, _)| n).collect();
        let mut want: Vec<String> = before.into_iter().map(|(n, _)| n).chain(made).collect();
        theirs.sort();
        want.sort();
        assert_eq!(theirs, want, "{rel}: {folder}");
        let vol = Vol::open(&img);
        let up = vol.upcase();
        compare_tree(&img, &vol, &up, folder, 3);
    }
}
