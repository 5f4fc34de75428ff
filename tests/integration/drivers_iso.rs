//! ISO 9660 reading (ISOs made by xorriso and genisoimage, read back file by file) and driver
//! selection from fake virtio-win trees recreated from the corpus's file lists of a real
//! installed tree and a real ISO, as folders and as ISOs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use diskconv::guest::iso9660::Iso9660;
use diskconv::inject::drivers::DriverSource;
use diskconv::inspect::windows::WinArch;

use crate::util::{Rng, corpus, require, run, tmpdir};

/// Every file under `root`: relative path -> content.
fn tree_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Every file of an ISO read through our reader (walking its folders).
fn iso_files(iso: &Iso9660) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(d) = stack.pop() {
        for e in iso.read_dir(&d).unwrap() {
            let p = if d.is_empty() {
                e.name.clone()
            } else {
                format!("{d}/{}", e.name)
            };
            if e.is_dir {
                stack.push(p);
            } else {
                let data = iso.read_file(&p, 64 << 20).unwrap();
                assert_eq!(data.len() as u64, e.size, "{p}");
                out.insert(p, data);
            }
        }
    }
    out
}

fn make_iso(tool: &str, src: &Path, out: &Path, extra: &[&str]) {
    let mut c = Command::new(tool);
    if tool == "xorriso" {
        c.args(["-as", "mkisofs"]);
    }
    c.args(extra).arg("-quiet").arg("-o").arg(out).arg(src);
    run(&mut c);
}

/// A tree with long and mixed-case names, spaces, non-ASCII, deep folders, empty files, a file
/// over 1 MiB and a folder with enough entries to span several sectors.
fn sample_tree(root: &Path) {
    let mut rng = Rng::new(42);
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("README.txt", b"hello");
    w("Mixed Case Name With Spaces.Inf", b"[Version]\n");
    w(
        "a_rather_long_file_name_that_is_longer_than_eight_dot_three.sys",
        &rng.bytes(5000),
    );
    w("ünïcödé-ñame.txt", "ünï".as_bytes());
    w("empty.cat", b"");
    w("big/over_a_mebibyte.bin", &rng.bytes((1 << 20) + 12345));
    let mut deep = String::new();
    for i in 0..12 {
        deep.push_str(&format!("Level{i}/"));
    }
    w(&format!("{deep}bottom.txt"), b"deep");
    w(&format!("{deep}empty"), b"");
    for i in 0..150 {
        w(
            &format!("many/file number {i:03} with a longish name.dat"),
            format!("file {i}").as_bytes(),
        );
    }
}

#[test]
fn drivers_iso_xorriso_and_genisoimage_read_back_equal() {
    let dir = tmpdir();
    let src = dir.path().join("src");
    sample_tree(&src);
    let truth = tree_files(&src);
    let mut made = 0;
    for (tool, extra) in [
        ("xorriso", &["-J", "-R"][..]),
        ("xorriso", &["-J", "-joliet-long"][..]),
        ("genisoimage", &["-J", "-R"][..]),
    ] {
        if !require(tool) {
            continue;
        }
        let iso_path = dir.path().join(format!("{tool}{made}.iso"));
        make_iso(tool, &src, &iso_path, extra);
        made += 1;
        let iso = Iso9660::open(&iso_path).unwrap();
        assert!(iso.is_joliet());
        let got = iso_files(&iso);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            truth.keys().collect::<Vec<_>>(),
            "{tool} {extra:?}: names"
        );
        for (k, v) in &truth {
            assert!(got[k] == *v, "{tool} {extra:?}: content of {k}");
        }
        // Case-insensitive lookups; size limits; missing paths; a file is not a folder.
        assert_eq!(iso.read_file("readme.TXT", 100).unwrap(), b"hello");
        let e = iso
            .read_file("big/over_a_mebibyte.bin", 1 << 20)
            .unwrap_err();
        assert!(format!("{e:?}").contains("allowed"), "{e:?}");
        assert!(iso.read_file("nope/x", 10).is_err());
        assert!(iso.read_dir("README.txt").is_err());
        assert!(iso.read_file("big", 10).is_err());
    }
}

#[test]
fn drivers_iso_without_joliet_uses_iso9660_names() {
    if !require("genisoimage") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("VIOSTOR/W10/AMD64")).unwrap();
    std::fs::write(src.join("VIOSTOR/W10/AMD64/VIOSTOR.SYS"), b"sys").unwrap();
    std::fs::write(src.join("NOEXT"), b"n").unwrap();
    let iso_path = dir.path().join("plain.iso");
    make_iso("genisoimage", &src, &iso_path, &[]);
    let iso = Iso9660::open(&iso_path).unwrap();
    assert!(!iso.is_joliet());
    assert_eq!(
        iso.read_file("viostor/w10/amd64/viostor.sys", 10).unwrap(),
        b"sys"
    );
    let names: Vec<String> = iso
        .read_dir("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"NOEXT".to_string()), "{names:?}");
}

#[test]
fn drivers_iso_damaged_images_are_errors() {
    if !require("xorriso") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("src");
    sample_tree(&src);
    let iso_path = dir.path().join("a.iso");
    make_iso("xorriso", &src, &iso_path, &["-J"]);
    let good = std::fs::read(&iso_path).unwrap();
    let bad = dir.path().join("bad.iso");
    // Truncated: reading the big file runs past the end.
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let r = Iso9660::open(&bad).and_then(|iso| {
        let mut n = 0;
        let mut stack = vec![String::new()];
        while let Some(d) = stack.pop() {
            for e in iso.read_dir(&d)? {
                let p = format!("{d}/{}", e.name);
                if e.is_dir {
                    stack.push(p);
                } else {
                    iso.read_file(&p, 64 << 20)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    });
    assert!(r.is_err(), "a truncated ISO read completely: {r:?}");
    // Every byte of the descriptors and the root folder flipped in turn: never a panic.
    let iso = Iso9660::open(&iso_path).unwrap();
    let root_block = {
        // The Joliet root's extent, from the supplementary descriptor.
        let mut b = None;
        for s in 16..32 {
            let vd = &good[s * 2048..(s + 1) * 2048];
            if vd[0] == 2 {
                b = Some(u32::from_le_bytes(vd[158..162].try_into().unwrap()) as usize);
            }
        }
        b.unwrap()
    };
    drop(iso);
    let mut rng = Rng::new(9);
    for _ in 0..300 {
        let mut d = good.clone();
        let region = if rng.below(2) == 0 {
            16 * 2048 + rng.below(3 * 2048) as usize
        } else {
            root_block * 2048 + rng.below(2048) as usize
        };
        d[region] = rng.next() as u8;
        std::fs::write(&bad, &d).unwrap();
        if let Ok(iso) = Iso9660::open(&bad) {
            if let Ok(entries) = iso.read_dir("") {
                for e in entries.iter().filter(|e| !e.is_dir) {
                    let _ = iso.read_file(&e.name, 4 << 20);
                }
            }
        }
    }
    // Not an ISO at all.
    std::fs::write(&bad, vec![7u8; 100_000]).unwrap();
    assert!(Iso9660::open(&bad).is_err());
}

// ---------------------------------------------------------------------------------------------
// Driver selection.

/// Recreates a fake tree from a corpus file list (`prefix` stripped from each line); each file
/// gets distinct content. Returns the list of relative paths.
fn fake_tree(list: &Path, prefix: &str, root: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let text = std::fs::read_to_string(list).unwrap();
    let mut rels = Vec::new();
    for line in text.lines() {
        let Some(rel) = line.trim().strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() || !keep(rel) {
            continue;
        }
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            format!("fake content of {rel}\n").repeat(1 + rel.len() % 5),
        )
        .unwrap();
        rels.push(rel.to_string());
    }
    rels
}

/// The expected packages for `<driver>/<os>/<arch>/` rows of a list (paths under `base`):
/// driver (lower case) -> file names.
fn expected_per_driver(
    rels: &[String],
    base: &str,
    os: &str,
    arch: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rels {
        let Some(rest) = r.strip_prefix(base) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == 4 && parts[1] == os && parts[2] == arch {
            out.entry(parts[0].to_lowercase())
                .or_default()
                .insert(parts[3].to_string());
        }
    }
    out
}

fn arch_of(dir: &str) -> WinArch {
    match dir {
        "x86" | "i386" => WinArch::X86,
        "amd64" => WinArch::Amd64,
        "ARM64" => WinArch::Arm64,
        other => panic!("arch {other}"),
    }
}

/// Checks every (os, arch) of the per-driver rows against `select`, byte for byte.
fn check_all_per_driver(src: &DriverSource, root: &Path, rels: &[String], base: &str) -> usize {
    let mut pairs = BTreeSet::new();
    for r in rels {
        if let Some(rest) = r.strip_prefix(base) {
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() == 4 && ["x86", "amd64", "ARM64"].contains(&parts[2]) {
                pairs.insert((parts[1].to_string(), parts[2].to_string()));
            }
        }
    }
    for (os, arch) in &pairs {
        let set = src.select(&[os.as_str()], arch_of(arch)).unwrap();
        assert_eq!(&set.os_dir, os);
        let expected = expected_per_driver(rels, base, os, arch);
        let got: BTreeMap<String, BTreeSet<String>> = set
            .packages
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.files.iter().map(|f| f.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{os}/{arch}");
        for p in &set.packages {
            for f in &p.files {
                let on_disk = std::fs::read(root.join(base).join(&f.source)).unwrap_or_else(|_| {
                    // The source path names the folder as the source spells it (the ISO's
                    // Joliet names are the same as the tree's).
                    std::fs::read(root.join(&f.source)).unwrap()
                });
                assert!(on_disk == f.data, "{os}/{arch}: {}", f.source);
            }
        }
    }
    pairs.len()
}

#[test]
fn drivers_select_from_the_iso_layout_as_folder_and_iso() {
    let Some(list) = corpus("virtio-win/virt-v2v_virtio-win-iso-list.txt") else {
        return;
    };
    let dir = tmpdir();
    let root = dir.path().join("cd");
    let rels = fake_tree(&list, "cd/", &root, &|_| true);
    let folder = DriverSource::open(&root).unwrap();
    let n = check_all_per_driver(&folder, &root, &rels, "");
    assert!(n >= 16, "only {n} os/arch pairs");
    // The Windows versions virtio-win names, with the right architecture.
    let set = folder.select(&["2k19"], WinArch::Amd64).unwrap();
    let st = set.package("viostor").unwrap();
    assert_eq!(
        st.file("viostor.sys").unwrap().source,
        "viostor/2k19/amd64/viostor.sys"
    );
    assert!(set.package("netkvm").is_some());
    let x86 = folder.select(&["w10"], WinArch::X86).unwrap();
    assert!(
        x86.package("viostor")
            .unwrap()
            .files
            .iter()
            .all(|f| f.source.contains("/x86/"))
    );
    // Best first, falling back.
    let set = folder
        .select(&["w12", "w11", "w10"], WinArch::Amd64)
        .unwrap();
    assert_eq!(set.os_dir, "w11");
    let set = folder.select(&["w11", "w10"], WinArch::X86).unwrap();
    assert_eq!(set.os_dir, "w10");
    // Nothing for ARM64: the error lists what there is.
    let e = folder.select(&["w11"], WinArch::Arm64).unwrap_err();
    let msg = format!("{e:?}");
    assert!(
        msg.contains("w11") && msg.contains("2k19/amd64") && msg.contains("w10/x86"),
        "{msg}"
    );

    if !require("xorriso") {
        return;
    }
    let iso_path = dir.path().join("virtio-win.iso");
    make_iso("xorriso", &root, &iso_path, &["-J", "-R", "-joliet-long"]);
    let iso = DriverSource::open(&iso_path).unwrap();
    let n2 = check_all_per_driver(&iso, &root, &rels, "");
    assert_eq!(n, n2);
    let e = iso.select(&["2k8"], WinArch::Amd64).unwrap_err();
    assert!(format!("{e:?}").contains("2k8R2/amd64"), "{e:?}");
}

#[test]
fn drivers_select_from_the_installed_tree() {
    let Some(list) = corpus("virtio-win/virt-v2v_virtio-win-drivers-list.txt") else {
        return;
    };
    let dir = tmpdir();
    let root = dir.path().join("virtio-win");
    let rels = fake_tree(&list, "", &root, &|_| true);
    let src = DriverSource::open(&root).unwrap();
    // The by-driver view is the ISO layout.
    let n = check_all_per_driver(&src, &root, &rels, "drivers/by-driver/");
    assert!(n >= 12, "{n}");

    // Only the flattened drivers/<arch>/<WinXX>/ folders: packages grouped by .inf.
    let flat_root = dir.path().join("flat");
    let flat = fake_tree(&list, "", &flat_root, &|r| {
        !r.starts_with("drivers/by-driver/") && !r.starts_with("drivers/by-os/")
    });
    let src = DriverSource::open(&flat_root).unwrap();
    let cases = [
        ("w7", WinArch::Amd64, "amd64/Win7"),
        ("w7", WinArch::X86, "i386/Win7"),
        ("w8", WinArch::Amd64, "amd64/Win8"),
        ("w8", WinArch::X86, "i386/Win8"),
        ("w8.1", WinArch::Amd64, "amd64/Win8.1"),
        ("w8.1", WinArch::X86, "i386/Win8.1"),
        ("w10", WinArch::Amd64, "amd64/Win10"),
        ("w10", WinArch::X86, "i386/Win10"),
        ("w11", WinArch::Amd64, "amd64/Win11"),
        ("2k8R2", WinArch::Amd64, "amd64/Win2008R2"),
        ("2k12", WinArch::Amd64, "amd64/Win2012"),
        ("2k12R2", WinArch::Amd64, "amd64/Win2012R2"),
        ("2k16", WinArch::Amd64, "amd64/Win2016"),
        ("2k19", WinArch::Amd64, "amd64/Win2019"),
        ("2k22", WinArch::Amd64, "amd64/Win2022"),
        ("2k25", WinArch::Amd64, "amd64/Win2025"),
    ];
    for (os, arch, folder) in cases {
        let set = src.select(&[os], arch).unwrap();
        let prefix = format!("drivers/{folder}/");
        let files: BTreeSet<String> = flat
            .iter()
            .filter_map(|r| r.strip_prefix(&prefix))
            .map(|s| s.to_string())
            .collect();
        // One package per .inf, named after it.
        let infs: BTreeSet<String> = files
            .iter()
            .filter(|f| f.ends_with(".inf"))
            .map(|f| f.trim_end_matches(".inf").to_string())
            .collect();
        let names: BTreeSet<String> = set.packages.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, infs, "{os} {arch:?}");
        for p in &set.packages {
            for f in &p.files {
                assert_eq!(f.source, format!("drivers/{folder}/{}", f.name));
                assert!(std::fs::read(flat_root.join(&f.source)).unwrap() == f.data);
            }
            // Its .sys, .inf and .cat are there.
            for ext in ["sys", "inf", "cat"] {
                let n = format!("{}.{ext}", p.name);
                if files.contains(&n) {
                    assert!(p.file(&n).is_some(), "{os}: {n}");
                }
            }
        }
        // No file is in two packages.
        let mut seen = BTreeSet::new();
        for f in set.packages.iter().flat_map(|p| &p.files) {
            assert!(seen.insert(f.name.clone()), "{os}: {} twice", f.name);
        }
        if os == "w10" && arch == WinArch::Amd64 {
            let nk = set.package("netkvm").unwrap();
            assert!(nk.file("netkvmp.exe").is_some());
            assert!(
                set.package("viostor")
                    .unwrap()
                    .file("viostor.sys")
                    .is_some()
            );
        }
    }
    let e = src.select(&["2k8R2"], WinArch::X86).unwrap_err();
    let msg = format!("{e:?}");
    assert!(
        msg.contains("Win2008R2/amd64") && msg.contains("Win7/i386"),
        "{msg}"
    );
}

#[test]
fn drivers_flat_folder_files_go_to_the_longest_stem() {
    let dir = tmpdir();
    let f = dir.path().join("amd64/w10");
    std::fs::create_dir_all(&f).unwrap();
    for n in [
        "qxl.inf",
        "qxl.sys",
        "qxldd.dll",
        "qxldod.inf",
        "qxldod.sys",
        "qxldod.cat",
        "Readme.md",
    ] {
        std::fs::write(f.join(n), n.as_bytes()).unwrap();
    }
    // An INF naming a file without its prefix.
    std::fs::write(
        f.join("balloon.inf"),
        b"[SourceDisksFiles]\nblnsvr.exe=1\nballoon.sys=1\n",
    )
    .unwrap();
    std::fs::write(f.join("balloon.sys"), b"b").unwrap();
    std::fs::write(f.join("blnsvr.exe"), b"svc").unwrap();
    let set = DriverSource::open(dir.path())
        .unwrap()
        .select(&["w10"], WinArch::Amd64)
        .unwrap();
    let names = |p: &str| -> Vec<String> {
        set.package(p)
            .unwrap()
            .files
            .iter()
            .map(|f| f.name.clone())
            .collect()
    };
    assert_eq!(names("qxl"), ["qxl.inf", "qxl.sys", "qxldd.dll"]);
    assert_eq!(names("qxldod"), ["qxldod.cat", "qxldod.inf", "qxldod.sys"]);
    assert_eq!(
        names("balloon"),
        ["balloon.inf", "balloon.sys", "blnsvr.exe"]
    );
    assert_eq!(set.package("blnsvr.exe"), None);
}

#[test]
fn drivers_source_errors() {
    let dir = tmpdir();
    let f = dir.path().join("not-an-iso");
    std::fs::write(&f, vec![1u8; 50_000]).unwrap();
    let e = DriverSource::open(&f).unwrap_err();
    assert!(format!("{e:?}").contains("CD001"), "{e:?}");
    assert!(DriverSource::open(&dir.path().join("missing")).is_err());
    let empty = DriverSource::open(dir.path()).unwrap();
    let e = empty.select(&["w10"], WinArch::Amd64).unwrap_err();
    assert!(format!("{e:?}").contains("no virtio-win"), "{e:?}");
}
