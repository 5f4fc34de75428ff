//! Seeded random operation sequences on NTFS volumes made by mkntfs, against an in-memory model:
//! create folders and files, replace, overwrite in place, grow and shrink, in several
//! transactions (`ImageTx` over the volume file, committed). At the end ntfs-3g (`ntfsfix -n`,
//! `ntfsls`, `ntfscat`) and our own reader, re-opened, must both show exactly the model.
//! `NTFS_SEED=N` replays one sequence; `NTFS_OPS=N` makes runs longer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use diskconv::OpenOptions;
use diskconv::guest::disk::ImageTx;
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};

use crate::ntfs_fixture as fx;
use crate::util::{Rng, require, run, tmpdir};

#[derive(Default)]
struct Model {
    /// Folder paths (`\`-separated), the root being "".
    dirs: Vec<String>,
    /// File path -> content.
    files: BTreeMap<String, Vec<u8>>,
}

fn size(rng: &mut Rng, cluster: u64) -> usize {
    (match rng.below(6) {
        0 => rng.below(4),
        1 => 600 + rng.below(300), // around the resident limit of a 1 KiB record
        2 => cluster * (1 + rng.below(4)) + rng.below(3) - 1,
        3 => rng.below(64 << 10),
        4 => rng.below(1 << 20),
        _ => rng.below(4096),
    }) as usize
}

fn one_run(seed: u64, cluster: u32, ops: usize) {
    let dir = tmpdir();
    let vol = dir.path().join("m.ntfs");
    fx::mkntfs(&vol, 48 << 20, cluster, "Model", 0);
    let mut rng = Rng::new(seed);
    let mut m = Model {
        dirs: vec![String::new()],
        ..Model::default()
    };
    let mut n = 0usize;
    let mut done = 0;
    let mut full = false;
    while done < ops && !full {
        let mut tx = ImageTx::open(&vol, &OpenOptions::default()).unwrap();
        let before = (m.dirs.clone(), m.files.clone());
        let r: Result<(), String> = (|| {
            let mut v = NtfsVolume::open(&mut tx.disk, &NtfsOpenOptions::default())
                .unwrap_or_else(|e| panic!("seed {seed}: open: {}", e.chain()));
            // One transaction holds 1..40 operations.
            for _ in 0..1 + rng.below(40) {
                done += 1;
                n += 1;
                let what = rng.below(10);
                let ctx = |op: &str, e: diskconv::Error| -> String {
                    format!("seed {seed} op {done} ({op}): {}", e.chain())
                };
                match what {
                    0 => {
                        let parent = m.dirs[rng.below(m.dirs.len() as u64) as usize].clone();
                        let p = join(&parent, &format!("Dir_{n}"));
                        assert!(v.create_dir(&p).map_err(|e| ctx("mkdir", e))?);
                        m.dirs.push(p);
                    }
                    1..=4 => {
                        let parent = m.dirs[rng.below(m.dirs.len() as u64) as usize].clone();
                        let p = join(&parent, &format!("File_{n}.bin"));
                        let len = size(&mut rng, cluster as u64);
                        let data = rng.bytes(len);
                        let created = v.write_file(&p, &data).map_err(|e| ctx("create", e))?;
                        assert!(created);
                        m.files.insert(p, data);
                    }
                    _ if m.files.is_empty() => {}
                    5 => {
                        let p = pick(&mut rng, &m);
                        let len = size(&mut rng, cluster as u64);
                        let data = rng.bytes(len);
                        let created = v.write_file(&p, &data).map_err(|e| ctx("replace", e))?;
                        assert!(!created);
                        m.files.insert(p, data);
                    }
                    6 | 7 => {
                        let p = pick(&mut rng, &m);
                        let cur = m.files[&p].len() as u64;
                        let off = rng.below(cur + 2000);
                        let len = 1 + rng.below(20_000) as usize;
                        let data = rng.bytes(len);
                        // Upper-cased path: lookups ignore case.
                        v.write_at(&p.to_uppercase(), off, &data)
                            .map_err(|e| ctx("write_at", e))?;
                        let f = m.files.get_mut(&p).unwrap();
                        let end = off as usize + data.len();
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[off as usize..end].copy_from_slice(&data);
                    }
                    _ => {
                        let p = pick(&mut rng, &m);
                        let len = size(&mut rng, cluster as u64);
                        v.set_len(&p, len as u64).map_err(|e| ctx("set_len", e))?;
                        m.files.get_mut(&p).unwrap().resize(len, 0);
                    }
                }
                if done >= ops {
                    break;
                }
            }
            v.flush().map_err(|e| e.chain())
        })();
        match r {
            Ok(()) => {
                tx.commit().unwrap();
            }
            // A full volume fails the whole transaction: nothing of it may reach the file.
            Err(e) if e.contains("volume is full") => {
                drop(tx);
                (m.dirs, m.files) = before;
                full = true;
            }
            Err(e) => panic!("{e}"),
        }
    }
    check(&vol, &m, seed);
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}\\{name}")
    }
}

fn pick(rng: &mut Rng, m: &Model) -> String {
    let i = rng.below(m.files.len() as u64) as usize;
    m.files.keys().nth(i).unwrap().clone()
}

fn check(vol: &Path, m: &Model, seed: u64) {
    fx::assert_ntfs_sound(vol);
    // ntfs-3g: every folder lists exactly the model's names; every file reads back equal.
    for d in &m.dirs {
        let prefix = if d.is_empty() {
            String::new()
        } else {
            format!("{d}\\")
        };
        let mut want: Vec<String> = m
            .files
            .keys()
            .chain(m.dirs.iter())
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('\\'))
            .map(str::to_string)
            .collect();
        want.sort();
        let unix = format!("/{}", d.replace('\\', "/"));
        let out = run(Command::new("ntfsls").arg(vol).args(["-p", &unix]));
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|n| !n.starts_with('$') && n != "." && n != "..")
            .filter(|n| !d.is_empty() || n.starts_with("Dir_") || n.starts_with("File_"))
            .collect();
        got.sort();
        assert_eq!(got, want, "seed {seed}: ntfsls of {unix}");
    }
    for (p, data) in &m.files {
        let unix = format!("/{}", p.replace('\\', "/"));
        let out = run(Command::new("ntfscat").arg(vol).arg(&unix));
        assert!(
            out.stdout == *data,
            "seed {seed}: ntfscat {unix} differs ({} vs {} bytes)",
            out.stdout.len(),
            data.len()
        );
    }
    // Our reader, re-opened read-only on the committed file.
    let tx = ImageTx::open(vol, &OpenOptions::default()).unwrap();
    let mut disk = tx.disk;
    let v = NtfsVolume::open(&mut disk, &NtfsOpenOptions { read_only: true }).unwrap();
    for (p, data) in &m.files {
        let got = v.read_file(p, 64 << 20).unwrap();
        assert!(got == *data, "seed {seed}: our read of {p} differs");
        assert_eq!(
            v.stat(p).unwrap().unwrap().size,
            data.len() as u64,
            "seed {seed}: {p}"
        );
    }
}

#[test]
fn ntfs_model_random_operations() {
    if !(require("mkntfs") && require("ntfsls") && require("ntfscat") && require("ntfsfix")) {
        return;
    }
    let ops: usize = std::env::var("NTFS_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let seeds: Vec<u64> = match std::env::var("NTFS_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => vec![0x1001, 0x2002, 0x3003],
    };
    for seed in seeds {
        for cluster in [512u32, 4096, 65536] {
            one_run(seed ^ cluster as u64, cluster, ops);
        }
    }
}

/// Regression: thousands of files with data in one folder, in one transaction. Growing the index
/// and `$MFT` one block at a time between file data made one run per growth, until the folder's
/// record (or `$MFT`'s record 0) was full ("MFT record 31 is full ... attribute list").
#[test]
fn ntfs_thousands_of_files_with_data_in_one_folder() {
    if !(require("mkntfs") && require("ntfsls") && require("ntfsfix")) {
        return;
    }
    let dir = tmpdir();
    let vol = dir.path().join("many.ntfs");
    fx::mkntfs(&vol, 256 << 20, 4096, "Many", 0);
    let mut tx = ImageTx::open(&vol, &OpenOptions::default()).unwrap();
    {
        let mut v = NtfsVolume::open(&mut tx.disk, &NtfsOpenOptions::default()).unwrap();
        v.create_dir("many").unwrap();
        for i in 0..3300 {
            let data = vec![(i % 251) as u8; 65536 - i % 700];
            v.write_file(&format!("many\\file-{i:05}.bin"), &data)
                .unwrap_or_else(|e| panic!("file {i}: {}", e.chain()));
        }
        v.flush().unwrap();
    }
    tx.commit().unwrap();
    {
        let tx = ImageTx::open(&vol, &OpenOptions::default()).unwrap();
        let mut disk = tx.disk;
        let v = NtfsVolume::open(&mut disk, &NtfsOpenOptions { read_only: true }).unwrap();
        let mut seen = std::collections::HashMap::new();
        for i in 0..3300usize {
            let p = format!("many\\file-{i:05}.bin");
            let e = v.stat(&p).unwrap().unwrap();
            if let Some(prev) = seen.insert(e.record, i) {
                panic!("file {i} and file {prev} share MFT record {}", e.record);
            }
            let data = v.read_file(&p, 1 << 20).unwrap();
            assert!(
                data == vec![(i % 251) as u8; 65536 - i % 700],
                "our read of file {i} (record {})",
                e.record
            );
        }
    }
    fx::assert_ntfs_sound(&vol);
    let out = run(Command::new("ntfsls").arg(&vol).args(["-p", "/many"]));
    let names = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        names.lines().filter(|l| l.starts_with("file-")).count(),
        3300
    );
    let out = run(Command::new("ntfscat")
        .arg(&vol)
        .arg("/many/file-03299.bin"));
    assert!(out.stdout == vec![(3299 % 251) as u8; 65536 - 3299 % 700]);
}
