//! The Compute Engine image tarball (`-O gcp`, `*.tar.gz`), read back by other people's code:
//! GNU tar lists and extracts it (`-xzS`), `gzip -t` tests the stream, Python's `gzip` and
//! `tarfile` read the stream and the sparse map, `qemu-img compare` compares the extracted
//! `disk.raw` with the source (the tail past the source's end must read as zeros) and
//! `qemu-img map` gives the source's data extents the sparse map must follow. GNU tar itself,
//! archiving the extracted file with `--format=oldgnu -S`, writes the same header.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diskconv::image::{Extent, ImageInfo};
use diskconv::{
    ConvertOptions, ErrorKind, Format, ImageReader, OpenOptions, OutputOptions, convert_file,
};

use crate::util::{corpus, diskconv, make_raw, qemu_compare, qemu_img, require, run, tmpdir};

const GIB: u64 = 1 << 30;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tools() -> bool {
    require("qemu-img") && require("tar") && require("gzip") && require("python3")
}

/// Runs `diskconv ARGS`, without panicking on failure.
fn dc(args: &[&str]) -> Output {
    diskconv().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The data extents of an image as `qemu-img map` sees them, adjacent ones merged.
fn qemu_data(img: &Path, fmt: &str) -> Vec<Range<u64>> {
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", "-f", fmt, s(img)])).unwrap();
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in map.as_array().unwrap() {
        if e["data"].as_bool() != Some(true) {
            continue;
        }
        let start = e["start"].as_u64().unwrap();
        let end = start + e["length"].as_u64().unwrap();
        match out.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => out.push(start..end),
        }
    }
    out
}

/// The data regions of the sparse map GNU tar's old format holds for `data`: each extent
/// widened to 512-byte blocks, touching ones merged. (The zero-length end marker that follows
/// is checked against GNU tar's own header: Python's tarfile drops it from extended headers.)
fn want_map(data: &[Range<u64>]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in data {
        let (a, b) = (r.start / 512 * 512, r.end.div_ceil(512) * 512);
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= a => last.1 = b - last.0,
            _ => out.push((a, b - a)),
        }
    }
    out
}

/// What Python's `gzip` and `tarfile` read: the decompressed length, and per member its name,
/// type, size and sparse map's data regions (zero-length entries dropped).
fn python_view(tgz: &Path) -> serde_json::Value {
    let script = r#"
import gzip, json, sys, tarfile
with gzip.open(sys.argv[1], "rb") as f:
    n = 0
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        n += len(b)
t = tarfile.open(sys.argv[1], "r:gz")
members = []
for m in t.getmembers():
    sparse = [list(e) for e in (m.sparse or []) if e[1] != 0]
    members.append({"name": m.name, "type": m.type.decode(), "size": m.size, "sparse": sparse})
print(json.dumps({"tar_len": n, "members": members}))
"#;
    let o = run(Command::new("python3").arg("-c").arg(script).arg(tgz));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Checks the tarball `tgz` made from `src` (format `fmt`) with every oracle; returns the
/// extracted `disk.raw`.
fn check_tarball(tgz: &Path, src: &Path, fmt: &str) -> PathBuf {
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", "-f", fmt, s(src)])).unwrap();
    let vsize = info["virtual-size"].as_u64().unwrap();
    let raw_size = vsize.div_ceil(GIB).max(1) * GIB;

    // gzip: one valid stream.
    run(Command::new("gzip").arg("-t").arg(tgz));

    // GNU tar lists exactly one member, disk.raw, of the rounded size.
    let o = run(Command::new("tar").arg("-tvzf").arg(tgz));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{listing}");
    let cols: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(cols.last(), Some(&"disk.raw"), "{listing}");
    assert_eq!(cols[2], raw_size.to_string(), "{listing}");

    // Python: the stream, the member, its sparse map (the source's data extents).
    let py = python_view(tgz);
    let members = py["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{py}");
    let m = &members[0];
    assert_eq!(m["name"], "disk.raw");
    assert_eq!(m["type"], "S", "an old GNU sparse member");
    assert_eq!(m["size"].as_u64(), Some(raw_size));
    let map: Vec<(u64, u64)> = m["sparse"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_u64().unwrap(), e[1].as_u64().unwrap()))
        .collect();
    assert_eq!(map, want_map(&qemu_data(src, fmt)), "{py}");
    // The tar holds the header blocks, the data regions, the end: padded to 10 KiB records.
    let data: u64 = map.iter().map(|e| e.1).sum();
    let tar_len = py["tar_len"].as_u64().unwrap();
    assert_eq!(tar_len % 10240, 0);
    assert!(
        tar_len >= 512 + data + 1024
            && tar_len < 512 + data + 1024 + 10240 + 512 * (map.len() as u64 / 21 + 1)
    );

    // GNU tar extracts it, sparse: equal to the source, the tail past it zeros.
    let dir = tgz.with_extension("x");
    std::fs::create_dir_all(&dir).unwrap();
    run(Command::new("tar")
        .arg("-xzSf")
        .arg(tgz)
        .arg("-C")
        .arg(&dir));
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1);
    let raw = dir.join("disk.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), raw_size);
    assert!(
        qemu_compare(&raw, "raw", src, fmt),
        "disk.raw differs from the source"
    );
    assert!(
        qemu_img(&["info", "--output=json", "-f", "raw", s(&raw)])
            .contains(&format!("\"virtual-size\": {raw_size}"))
    );
    raw
}

/// GNU tar archiving the extracted file again (`--format=oldgnu -S`, its holes found with
/// SEEK_DATA) writes the header blocks we wrote, but for the time stamp and the checksum.
fn same_header_as_gnu_tar(tgz: &Path, raw: &Path) {
    let ours = {
        let o = run(Command::new("gzip").arg("-dc").arg(tgz));
        o.stdout
    };
    let reference = raw.with_extension("ref.tar");
    run(Command::new("tar")
        .args(["--format=oldgnu", "-Scf"])
        .arg(&reference)
        .arg("-C")
        .arg(raw.parent().unwrap())
        .arg("disk.raw"));
    let theirs = std::fs::read(&reference).unwrap();
    let blocks = 1 + {
        // Extended sparse headers follow while the previous block says so.
        let mut n = 0;
        let mut ext = theirs[482];
        while ext == 1 {
            n += 1;
            ext = theirs[512 * n + 504];
        }
        n
    };
    let (a, b) = (&ours[..512 * blocks], &theirs[..512 * blocks]);
    // name, mode, uid, gid, size; typeflag to the end (mtime 136..148 and chksum 148..156 differ).
    assert_eq!(a[..136], b[..136], "name..size");
    assert_eq!(a[156..512], b[156..512], "typeflag..realsize");
    assert_eq!(a[512..], b[512..], "extended sparse headers");
}

fn convert_cli(src: &Path, out: &Path, explicit: bool) {
    let mut args = vec!["convert", s(src), s(out)];
    if explicit {
        args.extend(["-O", "gcp"]);
    }
    let o = dc(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn raw_with_holes_matches_gnu_tar() {
    if !tools() {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    // 64 KiB holes every 256 KiB. The size is a whole number of file system blocks, so that
    // GNU tar finds in the extracted file the extents we wrote (the tiny odd-sized source of
    // whole_gib_tiny_and_many_extents has its last block widened by the file system).
    make_raw(&src, (5 << 20) + 3 * 4096, 11);
    // By the extension alone, and with -O gcp.
    let out = d.path().join("disk.tar.gz");
    convert_cli(&src, &out, false);
    let raw = check_tarball(&out, &src, "raw");
    same_header_as_gnu_tar(&out, &raw);
    // The extracted file's holes are the source's.
    assert_eq!(qemu_data(&raw, "raw"), qemu_data(&src, "raw"));
    let out2 = d.path().join("image.gz");
    convert_cli(&src, &out2, true);
    // The same source gives the same bytes (no time stamp anywhere).
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn qcow2_and_vmdk_sources() {
    if !tools() {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("a.raw");
    make_raw(&raw, 7 << 20, 5);
    let q = d.path().join("a.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&q)]);
    let out = d.path().join("q.tar.gz");
    convert_cli(&q, &out, true);
    check_tarball(&out, &q, "qcow2");

    // A VMDK VMware made (vmware-vdiskmanager, monolithicSparse).
    if !require("corpus") {
        return;
    }
    let Some(v) = corpus("images/vmdk-rs/monolithicSparse.vmdk") else {
        return;
    };
    let out = d.path().join("v.tar.gz");
    convert_cli(&v, &out, true);
    check_tarball(&out, &v, "vmdk");
}

#[test]
fn whole_gib_tiny_and_many_extents() {
    if !tools() {
        return;
    }
    let d = tmpdir();
    // Exactly 1 GiB, data at both ends: the size stays, the map ends with data (no marker).
    let whole = d.path().join("whole.raw");
    let f = std::fs::File::create(&whole).unwrap();
    f.set_len(GIB).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x55; 4096], 0).unwrap();
    f.write_all_at(&[0xaa; 8192], GIB - 8192).unwrap();
    drop(f);
    let out = d.path().join("whole.tar.gz");
    convert_cli(&whole, &out, true);
    let raw = check_tarball(&out, &whole, "raw");
    same_header_as_gnu_tar(&out, &raw);
    std::fs::remove_dir_all(raw.parent().unwrap()).unwrap();

    // Tiny, and not a whole number of sectors: 100 KiB + 17 bytes.
    let tiny = d.path().join("tiny.raw");
    std::fs::write(
        &tiny,
        (0..102_417u32)
            .map(|i| (i % 251) as u8 | 1)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let out = d.path().join("tiny.tar.gz");
    convert_cli(&tiny, &out, true);
    let raw = check_tarball(&out, &tiny, "raw");
    std::fs::remove_dir_all(raw.parent().unwrap()).unwrap();

    // 150 data extents: 4 in the header, the rest in 7 extended sparse headers.
    let many = d.path().join("many.raw");
    let f = std::fs::File::create(&many).unwrap();
    f.set_len(150 * 65536 + 4096).unwrap();
    for i in 0..150u64 {
        f.write_all_at(&[(i as u8) | 1; 4096], i * 65536 + 8192)
            .unwrap();
    }
    drop(f);
    assert_eq!(qemu_data(&many, "raw").len(), 150);
    let out = d.path().join("many.tar.gz");
    convert_cli(&many, &out, true);
    let raw = check_tarball(&out, &many, "raw");
    same_header_as_gnu_tar(&out, &raw);
    let tar = run(Command::new("gzip").arg("-dc").arg(&out)).stdout;
    assert_eq!(tar[482], 1, "isextended");
    assert_eq!(qemu_data(&raw, "raw"), qemu_data(&many, "raw"));
}

/// A reader whose reads fail past `fail_at`: the conversion stops half-way.
struct FailingReader {
    inner: Box<dyn ImageReader>,
    fail_at: u64,
}

impl ImageReader for FailingReader {
    fn format(&self) -> Format {
        self.inner.format()
    }
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn map(&self, offset: u64, max_len: u64) -> diskconv::Result<Extent> {
        self.inner.map(offset, max_len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> diskconv::Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            return Err(diskconv::Error::Corrupt(format!(
                "test failure at {offset:#x}"
            )));
        }
        self.inner.read_at(buf, offset)
    }
    fn info(&self) -> ImageInfo {
        self.inner.info()
    }
}

#[test]
fn wrong_options_and_failures_leave_nothing() {
    if !tools() {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    make_raw(&src, 12 << 20, 3);
    let out = d.path().join("out.tar.gz");
    let listing = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    for (args, want) in [
        (
            vec!["-O", "gcp", "-o", "bogus=1"],
            "unknown option 'bogus' for gcp output (known: level)",
        ),
        (
            vec!["-O", "gcp", "-o", "subformat=fixed"],
            "option 'subformat' does not apply to gcp output",
        ),
        (
            vec!["-O", "gcp", "-o", "level=0"],
            "level=0: expected a deflate level from 1 to 9",
        ),
        (
            vec!["-O", "gcp", "-c"],
            "gcp output cannot be compressed with -c",
        ),
    ] {
        let mut a = vec!["convert", s(&src), s(&out)];
        a.extend(args.iter().copied());
        let o = dc(&a);
        assert_eq!(o.status.code(), Some(64), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert_eq!(listing(d.path()), ["src.raw"], "{args:?}");
    }
    // A level is taken; the smaller level makes no larger a file than the default.
    let o = dc(&["convert", s(&src), s(&out), "-O", "gcp", "-o", "level=1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    run(Command::new("gzip").arg("-t").arg(&out));
    std::fs::remove_file(&out).unwrap();

    // diskconv does not read the tarball: it says what the file is instead of calling it raw.
    let o = dc(&["convert", s(&src), s(&out), "-O", "gcp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dc(&["info", s(&out)]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("reading gcp images is not implemented"),
        "{}",
        stderr(&o)
    );
    let old = std::fs::read(&out).unwrap();

    // A conversion failing half-way leaves the old output as it was and no temporary.
    let failing = FailingReader {
        inner: diskconv::open(&src, &OpenOptions::default()).unwrap(),
        fail_at: 6 << 20,
    };
    let e = convert_file(
        &failing,
        &out,
        &OutputOptions::new(Format::Gcp),
        &ConvertOptions::default(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert_eq!(std::fs::read(&out).unwrap(), old);
    assert_eq!(listing(d.path()), ["out.tar.gz", "src.raw"]);

    // And through the CLI: a qcow2 cut short (its tables intact, clusters past the end) fails.
    let q = d.path().join("t.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&src), s(&q)]);
    let len = std::fs::metadata(&q).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&q)
        .unwrap()
        .set_len(len * 3 / 4)
        .unwrap();
    let t = d.path().join("t.tar.gz");
    let o = dc(&["convert", s(&q), s(&t), "-O", "gcp"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!t.exists(), "{}", stderr(&o));
    assert_eq!(listing(d.path()), ["out.tar.gz", "src.raw", "t.qcow2"]);
}

#[test]
fn library_convert_file_writes_the_same_tarball() {
    if !tools() {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    make_raw(&src, 3 << 20, 9);
    let img = diskconv::open(&src, &OpenOptions::default()).unwrap();
    let out = d.path().join("lib.tar.gz");
    let stats = convert_file(
        img.as_ref(),
        &out,
        &OutputOptions::new(Format::Gcp),
        &ConvertOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(stats.output_size, GIB);
    assert_eq!(
        stats.output.file_length,
        std::fs::metadata(&out).unwrap().len()
    );
    check_tarball(&out, &src, "raw");
    let cli = d.path().join("cli.tar.gz");
    convert_cli(&src, &cli, true);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&cli).unwrap());
}
