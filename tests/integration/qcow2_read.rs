//! The qcow2 reader against qemu-img / qemu-io as oracle, the shared corpus, and bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::formats::qcow2::Qcow2Reader;
use diskconv::{ErrorKind, ExtentKind, Format, ImageReader, OpenOptions, ReferencePolicy};

use crate::contract::check_reader;
use crate::util::{self, qemu_img, qemu_io, run};

const MIB: u64 = 1 << 20;

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

/// `qemu-io -f qcow2 -c CMD...` on `img`.
fn write(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(p(img));
    qemu_io(&args);
}

/// A raw file of `size` bytes made by `util::make_raw`.
fn raw(dir: &Path, name: &str, size: u64, seed: u64) -> PathBuf {
    let r = dir.join(name);
    util::make_raw(&r, size, seed);
    r
}

/// A qcow2 image converted from a fresh raw file with `opts`, then written to with `cmds`.
fn converted(
    dir: &Path,
    name: &str,
    size: u64,
    opts: &str,
    extra: &[&str],
    cmds: &[&str],
) -> PathBuf {
    let src = raw(dir, &format!("{name}.src"), size, size ^ name.len() as u64);
    let img = dir.join(name);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", opts];
    args.extend_from_slice(extra);
    args.push(p(&src));
    args.push(p(&img));
    qemu_img(&args);
    if !cmds.is_empty() {
        write(&img, cmds);
    }
    img
}

/// The bytes qemu-img reads from `img` (optionally one snapshot), through `convert -O raw`.
fn oracle_bytes(img: &Path, snapshot: Option<&str>) -> Vec<u8> {
    let out = img.with_extension(format!(
        "oracle{}.raw",
        snapshot.map(|s| format!("-{s}")).unwrap_or_default()
    ));
    let mut cmd = Command::new("qemu-img");
    cmd.arg("convert").arg("-O").arg("raw");
    if let Some(s) = snapshot {
        cmd.arg("-l").arg(format!("snapshot.name={s}"));
    }
    cmd.arg(img).arg(&out);
    if let Some(dir) = img.parent() {
        // qemu resolves relative data file names against the current directory.
        cmd.current_dir(dir);
    }
    run(&mut cmd);
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

fn sha256(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    util::hex(&Sha256::digest(b))
}

fn open(img: &Path, opts: &OpenOptions) -> Box<dyn ImageReader> {
    diskconv::open(img, opts).unwrap_or_else(|e| panic!("opening {}: {}", img.display(), e.chain()))
}

/// Compares `map` with `qemu-img map --output=json`: allocation status, depth, compression and
/// host offsets of data.
fn compare_map(img: &Path, r: &dyn ImageReader) {
    let out = run(Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(img)
        .current_dir(img.parent().unwrap()));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for q in v.as_array().unwrap() {
        let start = q["start"].as_u64().unwrap();
        let len = q["length"].as_u64().unwrap();
        let present = q["present"].as_bool().unwrap();
        let data = q["data"].as_bool().unwrap();
        let depth = q["depth"].as_u64().unwrap() as u32;
        let compressed = q["compressed"].as_bool().unwrap_or(false);
        let mut off = start;
        while off < start + len {
            let e = r.map(off, start + len - off).unwrap();
            let what = format!("{}: ours {e:?}, qemu {q}", img.display());
            if data {
                assert_eq!(e.kind, ExtentKind::Data, "{what}");
                assert_eq!(e.depth, depth, "{what}");
                assert_eq!(e.compressed, compressed, "{what}");
                if let (Some(qo), false) = (q["offset"].as_u64(), compressed) {
                    assert_eq!(e.host_offset, Some(qo + (off - start)), "{what}");
                }
            } else if present {
                assert_eq!(e.kind, ExtentKind::Zero, "{what}");
            } else {
                assert_eq!(e.kind, ExtentKind::Unallocated, "{what}");
            }
            off = e.end();
        }
    }
}

/// The full check of one image: sha256 and the contract against qemu's bytes, and the map.
fn check(img: &Path, opts: &OpenOptions, snapshot: Option<&str>) -> Box<dyn ImageReader> {
    let expected = oracle_bytes(img, snapshot);
    let r = open(img, opts);
    assert_eq!(
        util::sha256_image(r.as_ref()),
        sha256(&expected),
        "{}",
        img.display()
    );
    check_reader(r.as_ref(), &expected);
    if snapshot.is_none() {
        compare_map(img, r.as_ref());
    }
    r
}

const PATTERNS: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 65024 3000",
    "write -z 196608 131072",
    "write -P 0x33 1000000 70000",
    "write -z 2097152 4096",
];

#[test]
fn compat_and_cluster_size_matrix() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    for compat in ["0.10", "1.1"] {
        for cs in ["512", "4k", "64k", "2M"] {
            let size = if cs == "2M" { 16 * MIB } else { 3 * MIB };
            let name = format!("m-{compat}-{cs}.qcow2");
            let img = converted(
                dir.path(),
                &name,
                size,
                &format!("compat={compat},cluster_size={cs}"),
                &[],
                PATTERNS,
            );
            let r = check(&img, &OpenOptions::new(), None);
            let info = r.info();
            let sub = if compat == "0.10" {
                "compat 0.10"
            } else {
                "compat 1.1"
            };
            assert_eq!(info.subformat.as_deref(), Some(sub));
            assert_eq!(info.format, Format::Qcow2);
            assert!(info.file_size.unwrap() > 0);
        }
    }
}

#[test]
fn compressed_zlib_and_zstd() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    for (ty, cs) in [
        ("zlib", "64k"),
        ("zstd", "64k"),
        ("zlib", "4k"),
        ("zstd", "2M"),
    ] {
        let size = if cs == "2M" { 16 * MIB } else { 3 * MIB };
        let img = converted(
            dir.path(),
            &format!("c-{ty}-{cs}.qcow2"),
            size,
            &format!("compression_type={ty},cluster_size={cs}"),
            &["-c"],
            // Overwrite parts of compressed clusters: qemu decompresses and reallocates them.
            &["write -P 0x44 70000 5000", "write -z 0 4096"],
        );
        let r = check(&img, &OpenOptions::new(), None);
        assert_eq!(r.info().compression.as_deref(), Some(ty));
        let mut saw_compressed = false;
        let mut off = 0;
        while off < r.virtual_size() {
            let e = r.map(off, u64::MAX).unwrap();
            saw_compressed |= e.compressed;
            off = e.end();
        }
        assert!(saw_compressed, "{ty}: no compressed extent");
    }
}

#[test]
fn extended_l2_subclusters() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    for cs in ["64k", "32k"] {
        let img = dir.path().join(format!("x-{cs}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("extended_l2=on,cluster_size={cs}"),
            p(&img),
            "3M",
        ]);
        // Subcluster-sized writes (2 KiB subclusters for 64 KiB clusters, 1 KiB for 32 KiB).
        write(
            &img,
            &[
                "write -P 0x51 0 1k",
                "write -P 0x52 4096 2048",
                "write -P 0x53 10240 1024",
                "write -z 65536 8192",
                "write -P 0x54 67584 2048",
                "write -P 0x55 1048576 100000",
                "write -z 1050624 2048",
            ],
        );
        let r = check(&img, &OpenOptions::new(), None);
        assert!(r.info().flags.iter().any(|f| f == "extended_l2"));
    }
    // With a backing file: unallocated subclusters come from below.
    let _base = converted(
        dir.path(),
        "xb.qcow2",
        2 * MIB,
        "cluster_size=64k",
        &[],
        &[],
    );
    let top = dir.path().join("xt.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "-b",
        "xb.qcow2",
        "-F",
        "qcow2",
        p(&top),
        "2M",
    ]);
    write(&top, &["write -P 0x61 2048 2048", "write -z 8192 2048"]);
    check(&top, &OpenOptions::new(), None);
}

#[test]
fn three_deep_backing_chain() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let _base = converted(
        dir.path(),
        "base.qcow2",
        2 * MIB,
        "cluster_size=64k",
        &[],
        &[],
    );
    let mid = dir.path().join("mid.qcow2");
    // The middle image is larger than the base; the top larger still (reads past the end of a
    // backing file are zeros).
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        p(&mid),
        "3M",
    ]);
    write(
        &mid,
        &[
            "write -P 0x71 4096 8192",
            "write -z 65536 65536",
            "write -P 0x72 2500000 9000",
        ],
    );
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        p(&top),
        "4M",
    ]);
    write(
        &top,
        &["write -P 0x73 8192 4096", "write -P 0x74 3500000 1000"],
    );
    let r = check(&top, &OpenOptions::new(), None);
    let info = r.info();
    assert_eq!(info.backing_file.as_deref(), Some("mid.qcow2"));
    assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
    let b = info.backing.as_ref().expect("backing info");
    assert_eq!(b.backing_file.as_deref(), Some("base.qcow2"));
    assert!(b.backing.is_some());
    // Data only in the base is reported at depth 2.
    let e = r.map(1 << 20, 4096).unwrap();
    assert_eq!((e.kind, e.depth), (ExtentKind::Data, 2));
}

#[test]
fn external_data_file() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    for raw_flag in ["off", "on"] {
        let img = dir.path().join(format!("d-{raw_flag}.qcow2"));
        let data = format!("d-{raw_flag}.data");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("data_file={data},data_file_raw={raw_flag}"))
            .arg(&img)
            .arg("3M")
            .current_dir(dir.path()));
        run(Command::new("qemu-io")
            .args(["-f", "qcow2"])
            .args(PATTERNS.iter().flat_map(|c| ["-c", c]))
            .arg(&img)
            .current_dir(dir.path()));
        let r = check(&img, &OpenOptions::new(), None);
        let info = r.info();
        assert_eq!(info.data_file.as_deref(), Some(data.as_str()));
        assert_eq!(
            info.flags.iter().any(|f| f == "data_file_raw"),
            raw_flag == "on",
            "{:?}",
            info.flags
        );
    }
}

#[test]
fn preallocation_modes() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    for mode in ["metadata", "falloc", "full"] {
        let img = dir.path().join(format!("p-{mode}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("preallocation={mode}"),
            p(&img),
            "3M",
        ]);
        write(&img, PATTERNS);
        check(&img, &OpenOptions::new(), None);
    }
}

#[test]
fn internal_snapshots() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let img = converted(dir.path(), "s.qcow2", 3 * MIB, "cluster_size=64k", &[], &[]);
    qemu_img(&["snapshot", "-c", "s1", p(&img)]);
    write(&img, PATTERNS);
    qemu_img(&["snapshot", "-c", "second one", p(&img)]);
    write(&img, &["write -P 0x99 0 1M"]);
    let r = check(&img, &OpenOptions::new(), None);
    let snaps = r.info().snapshots;
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "second one"]);
    assert_eq!(snaps[0].virtual_size, 3 * MIB);
    assert!(snaps[0].date_sec > 1_600_000_000);
    for s in ["s1", "second one"] {
        check(&img, &OpenOptions::new().snapshot(s), Some(s));
    }
    // By id too.
    let expected = oracle_bytes(&img, Some("s1"));
    let r = open(&img, &OpenOptions::new().snapshot(snaps[0].id.clone()));
    assert_eq!(util::sha256_image(r.as_ref()), sha256(&expected));
    // Unknown snapshot.
    let err = open_err(&img, &OpenOptions::new().snapshot("nope"));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let m = err.chain();
    assert!(
        m.contains("'nope'") && m.contains("'s1'") && m.contains("'second one'"),
        "{m}"
    );
}

/// Regression: `qemu-img snapshot -c` writes the snapshot table last, with its exact length,
/// so the file ends right after the last entry's name, without the padding to 8 bytes that
/// separates entries. The reader demanded that padding ("1 entries take 72 bytes, past the
/// end of the file"); qemu reads these images, so must we. Version 2 and 3, one snapshot and
/// three (entries padded between them), each with qemu's extra data (24 bytes).
#[test]
fn snapshot_table_at_the_end_of_the_file() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    for compat in ["0.10", "1.1"] {
        for names in [&["s1"][..], &["a", "bb", "ccc"][..]] {
            let img = dir
                .path()
                .join(format!("end-{compat}-{}.qcow2", names.len()));
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("compat={compat}"),
                p(&img),
                "4M",
            ]);
            write(&img, &["write -P 0x5a 0 1M"]);
            for (i, n) in names.iter().enumerate() {
                qemu_img(&["snapshot", "-c", n, p(&img)]);
                // Something different in each snapshot.
                write(
                    &img,
                    &[&format!("write -P {} {}k 4k", 0x60 + i, 64 * (i + 2))],
                );
            }
            // Taking the snapshots last leaves the table at the end of the file: check that
            // the file really ends after the last name, unpadded.
            qemu_img(&["snapshot", "-c", "last", p(&img)]);
            let bytes = std::fs::read(&img).unwrap();
            let table = u64::from_be_bytes(bytes[64..72].try_into().unwrap()) as usize;
            let mut pos = table;
            for _ in 0..=names.len() {
                pos = pos.next_multiple_of(8);
                let e = &bytes[pos..];
                let id = u16::from_be_bytes([e[12], e[13]]) as usize;
                let name = u16::from_be_bytes([e[14], e[15]]) as usize;
                let extra = u32::from_be_bytes(e[36..40].try_into().unwrap()) as usize;
                assert_eq!(extra, 24, "qemu's extra data");
                pos += 40 + extra + id + name;
            }
            assert_eq!(
                pos,
                bytes.len(),
                "{}: the table ends the file",
                img.display()
            );
            assert_ne!(pos % 8, 0, "{}: the last entry is unpadded", img.display());
            util::assert_qemu_check(&img);

            // The active layer and every snapshot read as qemu reads them.
            let r = check(&img, &OpenOptions::new(), None);
            let snaps = r.info().snapshots;
            let mut want: Vec<&str> = names.to_vec();
            want.push("last");
            let got: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(got, want);
            for s in &want {
                check(&img, &OpenOptions::new().snapshot(*s), Some(s));
            }
            // The CLI: info lists them, check finds nothing wrong, convert reads a snapshot.
            let out = run(util::diskconv().arg("info").arg(&img));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("ccc") || names.len() == 1, "{text}");
            assert!(text.contains("last"), "{text}");
            run(util::diskconv().arg("check").arg(&img));
            let raw = dir.path().join("snap.raw");
            run(util::diskconv()
                .args(["convert", "-O", "raw", "-l", names[0]])
                .arg(&img)
                .arg(&raw));
            assert_eq!(
                std::fs::read(&raw).unwrap(),
                oracle_bytes(&img, Some(names[0]))
            );
        }
    }
}

/// `qemu-io write -c` appends compressed data byte-exactly: the file ends inside a sector, so
/// the last compressed cluster's descriptor (whole sectors) runs past the end of the file.
/// qemu reads what exists; the reader and `diskconv check` must accept it too.
#[test]
fn compressed_cluster_at_the_end_of_the_file() {
    if !util::require("qemu-img") || !util::require("qemu-io") {
        return;
    }
    let dir = util::tmpdir();
    for compat in ["0.10", "1.1"] {
        let img = dir.path().join(format!("wc-{compat}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            p(&img),
            "4M",
        ]);
        write(
            &img,
            &["write -c -P 0x33 0 64k", "write -c -P 0x44 64k 64k"],
        );
        let len = std::fs::metadata(&img).unwrap().len();
        assert_ne!(len % 512, 0, "qemu padded the file ({len} bytes)");
        check(&img, &OpenOptions::new(), None);
        run(util::diskconv().arg("check").arg(&img));
    }
}

#[test]
fn persistent_bitmaps_and_dirty_ranges() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let img = dir.path().join("bm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "8M"]);
    qemu_img(&["bitmap", "--add", "-g", "65536", p(&img), "b64k"]);
    qemu_img(&["bitmap", "--add", "-g", "4096", p(&img), "b4k"]);
    qemu_img(&["bitmap", "--add", "--disable", p(&img), "off"]);
    // qemu-io opens the image read-write: the enabled (auto) bitmaps record the writes.
    write(
        &img,
        &[
            "write -P 1 100000 5000",
            "write -P 2 4194304 65536",
            "write -z 8384512 4096",
        ],
    );
    let opts = OpenOptions::new();
    let r = open(&img, &opts);
    let info = r.info();
    let names: Vec<(&str, u64, bool)> = info
        .bitmaps
        .iter()
        .map(|b| (b.name.as_str(), b.granularity, b.auto))
        .collect();
    assert_eq!(
        names,
        [
            ("b64k", 65536, true),
            ("b4k", 4096, true),
            ("off", 65536, false)
        ]
    );
    drop(r);
    let ctx_reader: Qcow2Reader = diskconv::open_qcow2(&img, &opts).unwrap();
    assert_eq!(
        ctx_reader.dirty_ranges("b64k").unwrap(),
        [65536..131072, 4194304..4259840, 8323072..8388608]
    );
    assert_eq!(
        ctx_reader.dirty_ranges("b4k").unwrap(),
        [98304..106496, 4194304..4259840, 8384512..8388608]
    );
    assert_eq!(ctx_reader.dirty_ranges("off").unwrap(), []);
    let err = ctx_reader.dirty_ranges("missing").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("'b4k'"), "{err}");

    // Bitmap table entries without data: 1 = all ones, 0 = all zeros; reserved bits = corrupt.
    let table = ctx_reader.bitmaps()[0].table_offset;
    drop(ctx_reader);
    for (entry, want) in [
        (1u64, Ok(std::iter::once(0..8 * MIB).collect::<Vec<_>>())),
        (0, Ok(vec![])),
        (2, Err(())),
    ] {
        patch(&img, table, &entry.to_be_bytes());
        let r = diskconv::open_qcow2(&img, &opts).unwrap();
        match (r.dirty_ranges("b64k"), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "entry {entry:#x}"),
            (Err(e), Err(())) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt);
                assert!(e.to_string().contains("bitmap table at"), "{e}");
                assert!(e.to_string().contains("reserved bits"), "{e}");
            }
            (got, want) => panic!("entry {entry:#x}: got {got:?}, want {want:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shared corpus.

fn corpus_sha(rel: &str, sha: &str) -> Option<Box<dyn ImageReader>> {
    let path = util::corpus(rel)?;
    let r = open(&path, &OpenOptions::new());
    assert_eq!(util::sha256_image(r.as_ref()), sha, "{rel}");
    Some(r)
}

#[test]
fn corpus_dissect_basic_and_zstd() {
    let sha = "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f";
    if let Some(r) = corpus_sha("images/dissect_qcow2/basic.qcow2", sha) {
        assert_eq!(r.info().compression.as_deref(), Some("zlib"));
    }
    if let Some(r) = corpus_sha("images/dissect_qcow2/basic-zstd.qcow2", sha) {
        assert_eq!(r.info().compression.as_deref(), Some("zstd"));
    }
}

#[test]
fn corpus_dissect_backing_chain() {
    corpus_sha(
        "images/dissect_qcow2/backing-chain-3.qcow2",
        "4a57a3a5c273c7c1144743ecafc7b23181f6e23c8abad104493a63a3599bd276",
    );
    corpus_sha(
        "images/dissect_qcow2/backing-chain-2.qcow2",
        "8e2e850f2a31828f6f053f70f1fbfa71a42ce0571c6d8cd2a7ca0e21e1db8341",
    );
    if let Some(r) = corpus_sha(
        "images/dissect_qcow2/backing-chain-1.qcow2",
        "186334af67c1acb54b08ded0b6a419571000755d4c810c8b768a30281e2ab074",
    ) {
        let info = r.info();
        assert_eq!(info.backing_file.as_deref(), Some("backing-chain-2.qcow2"));
        let mid = info.backing.expect("backing");
        assert_eq!(mid.backing_file.as_deref(), Some("backing-chain-3.qcow2"));
    }
}

#[test]
fn corpus_dissect_snapshots() {
    let Some(r) = corpus_sha(
        "images/dissect_qcow2/snapshot.qcow2",
        "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767",
    ) else {
        return;
    };
    let snaps = r.info().snapshots;
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["you can't see me", "confused"]);
    if !util::require("qemu-img") {
        return;
    }
    let path = util::corpus("images/dissect_qcow2/snapshot.qcow2").unwrap();
    let dir = util::tmpdir();
    for s in &snaps {
        // qemu by id, diskconv by name: the same snapshot.
        let out = dir.path().join(format!("snap{}.raw", s.id));
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            "-l",
            &format!("snapshot.id={}", s.id),
            p(&path),
            p(&out),
        ]);
        let r = open(&path, &OpenOptions::new().snapshot(s.name.clone()));
        assert_eq!(
            util::sha256_image(r.as_ref()),
            util::sha256_file(&out),
            "{}",
            s.name
        );
    }
}

#[test]
fn corpus_dissect_data_file() {
    let (Some(img), Some(gz)) = (
        util::corpus("images/dissect_qcow2/data-file.qcow2"),
        util::corpus("images/dissect_qcow2/data-file.bin.gz"),
    ) else {
        return;
    };
    let dir = util::tmpdir();
    let copy = dir.path().join("data-file.qcow2");
    std::fs::copy(&img, &copy).unwrap();
    gunzip_sparse(&gz, &dir.path().join("data-file.bin"));
    let r = open(&copy, &OpenOptions::new());
    assert_eq!(
        util::sha256_image(r.as_ref()),
        "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f"
    );
    assert_eq!(r.info().data_file.as_deref(), Some("data-file.bin"));
}

/// Decompresses a gzip file, leaving holes for zero blocks.
fn gunzip_sparse(gz: &Path, out: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut d = flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap());
    let mut f = std::fs::File::create(out).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = d.read(&mut buf[n..]).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            f.write_all(&buf[..n]).unwrap();
        }
        total += n as u64;
    }
    f.set_len(total).unwrap();
}

#[test]
fn corpus_dfvfs() {
    if let Some(r) = corpus_sha(
        "images/dfvfs/image-v2.qcow2",
        "a9c0220b1dadd1812fc4bbe137f495d2c3b88c7b33b5a4de545d201fd31b3bc0",
    ) {
        assert_eq!(r.info().subformat.as_deref(), Some("compat 0.10"));
    }
    corpus_sha(
        "images/dfvfs/windows_volume.qcow2",
        "44abe9deca9658f331a2bdba2deb53192d04f35d157a1fb3ba0597b03f0524f2",
    );
}

#[test]
fn corpus_virtnbdbackup_bitmaps() {
    let Some(r) = corpus_sha(
        "images/virtnbdbackup_vm5-sda_bitmaps.qcow2",
        "41a218f0aaf1b278462aaf0a1f3486e8cd9942e9beec620e74ac7aac3d57241d",
    ) else {
        return;
    };
    let bitmaps: Vec<(String, u64, bool)> = r
        .info()
        .bitmaps
        .into_iter()
        .map(|b| (b.name, b.granularity, b.auto))
        .collect();
    assert_eq!(
        bitmaps,
        [
            ("virtnbdbackup".to_string(), 65536, true),
            ("virtnbdbackup.0".to_string(), 65536, true)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: clear errors, never a panic.

/// The error of opening `img`, which must fail.
fn open_err(img: &Path, opts: &OpenOptions) -> diskconv::Error {
    match diskconv::open(img, opts) {
        Ok(_) => panic!("{} opened without error", img.display()),
        Err(e) => e,
    }
}

fn forced() -> OpenOptions {
    OpenOptions::new().format(Format::Qcow2)
}

/// Opens `img` and reads the whole disk; returns the first error.
fn open_and_read(img: &Path, opts: &OpenOptions) -> Result<(), diskconv::Error> {
    let r = diskconv::open(img, opts)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < r.virtual_size() {
        let n = (r.virtual_size() - off).min(buf.len() as u64);
        r.map(off, n)?;
        r.read_at(&mut buf[..n as usize], off)?;
        off += n;
    }
    Ok(())
}

fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn read_be64(img: &Path, offset: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    std::fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn truncated_files_give_errors() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let img = converted(
        dir.path(),
        "t.qcow2",
        3 * MIB,
        "cluster_size=4k",
        &[],
        PATTERNS,
    );
    let bytes = std::fs::read(&img).unwrap();
    let len = bytes.len();
    for cut in [
        0,
        50,
        71,
        100,
        4096,
        4100,
        3 * 4096 + 8,
        len / 2,
        len - 4096,
        len - 1,
    ] {
        let t = dir.path().join(format!("cut{cut}.qcow2"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let err = open_and_read(&t, &forced()).expect_err(&format!(
            "file cut at {cut} of {len} bytes read without error"
        ));
        assert!(
            matches!(err.kind(), ErrorKind::InvalidFormat | ErrorKind::Corrupt),
            "cut at {cut}: {:?}: {}",
            err.kind(),
            err.chain()
        );
        assert!(
            err.chain().contains("qcow2") || err.chain().contains("ends at"),
            "{}",
            err.chain()
        );
    }
}

#[test]
fn bad_header_fields() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let good = converted(dir.path(), "h.qcow2", MIB, "cluster_size=64k", &[], &[]);
    let cases: &[(&str, u64, &[u8], &str)] = &[
        ("huge-l1", 36, &0x7fff_ffffu32.to_be_bytes(), "l1_size"),
        (
            "cluster-bits",
            20,
            &30u32.to_be_bytes(),
            "cluster_bits is 30",
        ),
        (
            "refcount-order",
            96,
            &7u32.to_be_bytes(),
            "refcount_order is 7",
        ),
    ];
    for (name, off, bytes, msg) in cases {
        let img = dir.path().join(format!("{name}.qcow2"));
        std::fs::copy(&good, &img).unwrap();
        patch(&img, *off, bytes);
        let err = open_and_read(&img, &forced()).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidFormat,
            "{name}: {}",
            err.chain()
        );
        assert!(err.chain().contains(msg), "{name}: {}", err.chain());
    }
}

#[test]
fn table_entries_past_eof_fail_where_used() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    // 4 KiB clusters: one L2 table covers 2 MiB, so a 4 MiB disk has two L1 entries.
    let img = converted(dir.path(), "e.qcow2", 4 * MIB, "cluster_size=4k", &[], &[]);
    let expected = oracle_bytes(&img, None);
    let l1 = read_be64(&img, 40);
    let l2 = read_be64(&img, l1) & 0x00ff_ffff_ffff_fe00;
    // L2 entry 3 (guest cluster 3) and L1 entry 1 (guest 2-4 MiB) point far past the end.
    patch(&img, l2 + 3 * 8, &(0x8000_0000_7fff_0000u64).to_be_bytes());
    patch(&img, l1 + 8, &(0x8000_0000_7ff0_0000u64).to_be_bytes());
    let r = open(&img, &OpenOptions::new());
    let mut buf = vec![0u8; 3 * 4096];
    r.read_at(&mut buf, 0).unwrap();
    assert!(buf[..] == expected[..3 * 4096]);
    let err = r.read_at(&mut buf[..4096], 3 * 4096).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let m = err.chain();
    assert!(
        m.contains(&format!("L2 table at {l2:#x}")) && m.contains("entry 3"),
        "{m}"
    );
    assert!(
        m.contains("0x7fff0000") && m.contains("past the end"),
        "{m}"
    );
    assert!(r.map(3 * 4096, 1).is_err());
    let err = r.map(2 * MIB, 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let m = err.chain();
    assert!(
        m.contains("L1 table") && m.contains("entry 1") && m.contains("0x7ff00000"),
        "{m}"
    );
    // Everything after the bad cluster in the first table still reads.
    let mut rest = vec![0u8; 2 * MIB as usize - 4 * 4096];
    r.read_at(&mut rest, 4 * 4096).unwrap();
    assert!(rest[..] == expected[4 * 4096..2 * MIB as usize]);
}

#[test]
fn compressed_garbage_is_corrupt() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    for ty in ["zlib", "zstd"] {
        let img = converted(
            dir.path(),
            &format!("g-{ty}.qcow2"),
            MIB,
            &format!("cluster_size=64k,compression_type={ty}"),
            &["-c"],
            &[],
        );
        let l1 = read_be64(&img, 40);
        let l2 = read_be64(&img, l1) & 0x00ff_ffff_ffff_fe00;
        // Guest cluster 2 holds make_raw's repetitive pattern, which compresses.
        let entry = read_be64(&img, l2 + 2 * 8);
        assert!(entry & (1 << 62) != 0, "cluster 2 is not compressed");
        // 64 KiB clusters: x = 62 - 8 = 54 bits of host offset.
        let host = entry & ((1 << 54) - 1);
        patch(&img, host, &[0xff; 64]);
        let r = open(&img, &OpenOptions::new());
        let mut buf = vec![0u8; 512];
        let err = r.read_at(&mut buf, 2 * 65536 + 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{ty}");
        assert!(
            err.chain()
                .contains(&format!("compressed cluster at {host:#x}")),
            "{}",
            err.chain()
        );
        // The rest of the disk still reads.
        r.read_at(&mut buf, 0).unwrap();
        r.read_at(&mut buf, 3 * 65536).unwrap();
    }
}

#[test]
fn backing_chain_loop_is_refused() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&a), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        p(&b),
        "1M",
    ]);
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a)]);
    let err = open_err(&a, &OpenOptions::new());
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{}", err.chain());
    assert!(err.chain().contains("loops"), "{}", err.chain());
}

#[test]
fn backing_file_outside_the_folder() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    converted(
        dir.path(),
        "outside.qcow2",
        MIB,
        "cluster_size=64k",
        &[],
        &[],
    );
    let top = sub.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "../outside.qcow2",
        "-F",
        "qcow2",
        p(&top),
    ]);
    write(&top, &["write -P 0x12 0 4096"]);
    let err = open_err(&top, &OpenOptions::new());
    assert_eq!(err.kind(), ErrorKind::ReferenceDenied);
    assert_eq!(
        err.hint(),
        Some(diskconv::Hint::AllowReferences),
        "{}",
        err.chain()
    );
    // The CLI says which flag allows it.
    let out = util::diskconv().arg("info").arg(&top).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("outside")
            && stderr
                .trim_end()
                .ends_with("; pass --references=anywhere to allow it"),
        "{stderr}"
    );
    check(
        &top,
        &OpenOptions::new().references(ReferencePolicy::Anywhere),
        None,
    );
}

#[test]
fn missing_backing_file_is_named() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let base = converted(dir.path(), "gone.qcow2", MIB, "cluster_size=64k", &[], &[]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        p(&top),
    ]);
    std::fs::remove_file(&base).unwrap();
    let err = open_err(&top, &OpenOptions::new());
    assert!(err.chain().contains("gone.qcow2"), "{}", err.chain());
    assert_eq!(err.kind(), ErrorKind::Io, "{}", err.chain());
}
