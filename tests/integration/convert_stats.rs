//! `convert --stats` / `--json` and `ConvertStats::output`: the bytes written to the output, by
//! kind, add up to the length of the output files, for every output format.
//!
//! Regression for "`--stats` for `qcow2 -c` reports only the compressed clusters". Oracles:
//! the files' lengths and allocated blocks (`std::fs::metadata`), and for qcow2
//! `qemu-img check`'s cluster counts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use diskconv::{ConvertOptions, Format, OpenOptions, OutputOptions, WriteReport};

use crate::util::{self, diskconv, make_raw, tmpdir};

/// Odd size: a short last cluster / grain / block, and a VHD rounded up to whole MiB.
const SIZE: u64 = (12 << 20) + 12345;

struct Case {
    fmt: &'static str,
    args: &'static [&'static str],
    /// Files of the output besides the target itself.
    beside: &'static [&'static str],
    /// Data goes to the output uncompressed, as the engine saw it (`data == data_bytes`).
    plain: bool,
    /// Space reserved without being written (`allocated` exceeds what was written).
    falloc: bool,
}

const CASES: &[Case] = &[
    Case {
        fmt: "raw",
        args: &[],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "raw",
        args: &["-o", "preallocation=full"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "raw",
        args: &["-o", "preallocation=falloc"],
        beside: &[],
        plain: true,
        falloc: true,
    },
    Case {
        fmt: "qcow2",
        args: &[],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "qcow2",
        args: &["-c"],
        beside: &[],
        plain: false,
        falloc: false,
    },
    Case {
        fmt: "qcow2",
        args: &["-c", "-o", "compression_type=zstd,cluster_size=4k"],
        beside: &[],
        plain: false,
        falloc: false,
    },
    Case {
        fmt: "qcow2",
        args: &["-o", "compat=0.10,preallocation=full"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vmdk",
        args: &[],
        beside: &[],
        plain: false,
        falloc: false,
    },
    Case {
        fmt: "vmdk",
        args: &["-o", "subformat=monolithicSparse"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vmdk",
        args: &["-o", "subformat=monolithicFlat"],
        beside: &["out-flat.vmdk"],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vmdk",
        args: &["-o", "subformat=vmfs"],
        beside: &["out-flat.vmdk"],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vpc",
        args: &[],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vpc",
        args: &["-o", "subformat=fixed"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vhdx",
        args: &["-o", "block_size=1M"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vhdx",
        args: &["-o", "subformat=fixed"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vdi",
        args: &[],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "vdi",
        args: &["-o", "subformat=fixed"],
        beside: &[],
        plain: true,
        falloc: false,
    },
    Case {
        fmt: "ova",
        args: &[],
        beside: &[],
        plain: false,
        falloc: false,
    },
];

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Length and allocated bytes of the output files.
fn on_disk(files: &[PathBuf]) -> (u64, u64) {
    files.iter().fold((0, 0), |(l, a), f| {
        let m = std::fs::metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        (l + m.len(), a + m.blocks() * 512)
    })
}

/// The report's own invariants and its agreement with the files on disk.
fn check_report(what: &str, o: &WriteReport, files: &[PathBuf], falloc: bool) {
    let (len, allocated) = on_disk(files);
    assert_eq!(o.file_length, len, "{what}: file length {o:?}");
    assert_eq!(
        o.compressed + o.data + o.zeros + o.metadata + o.unwritten,
        len,
        "{what}: the kinds add up to the length: {o:?}"
    );
    assert_eq!(o.allocated, Some(allocated), "{what}: {o:?}");
    // What was written occupies blocks; what was not (holes) does not, up to the file
    // system's block rounding.
    let written = o.written();
    assert!(
        written <= allocated,
        "{what}: {written} bytes written but only {allocated} allocated: {o:?}"
    );
    if !falloc {
        // Partly written file system blocks: a few per table, and in a dynamic VHD two per
        // run of data (its blocks start 512 bytes after a 4 KiB boundary, after the bitmap).
        let slack = (256 << 10) + written / 50;
        assert!(
            allocated <= written + slack,
            "{what}: {allocated} bytes allocated for {written} written: {o:?}"
        );
    }
}

#[test]
fn stats_add_up_to_the_output_length_for_every_format() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, SIZE, 11);
    for c in CASES {
        let out = dir.path().join(format!(
            "out.{}",
            if c.fmt == "vpc" { "vhd" } else { c.fmt }
        ));
        let mut args = vec!["convert", "--json", "-O", c.fmt];
        args.extend_from_slice(c.args);
        let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
        args.extend_from_slice(&[s, o]);
        let r = diskconv().args(&args).output().unwrap();
        assert!(
            r.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&r.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&r.stdout)));
        let report: WriteReport = WriteReport {
            compressed: u(&v["output"], "compressed"),
            data: u(&v["output"], "data"),
            zeros: u(&v["output"], "zeros"),
            metadata: u(&v["output"], "metadata"),
            unwritten: u(&v["output"], "unwritten"),
            file_length: u(&v["output"], "file_length"),
            allocated: v["output"]["allocated"].as_u64(),
        };
        let mut files = vec![out.clone()];
        files.extend(c.beside.iter().map(|b| dir.path().join(b)));
        let what = format!("{} {:?}", c.fmt, c.args);
        check_report(&what, &report, &files, c.falloc);
        // Guest data is stored somewhere, as it is or compressed.
        assert!(u(&v, "data_bytes") > 0, "{what}");
        if c.plain {
            assert_eq!(report.data, u(&v, "data_bytes"), "{what}: {report:?}");
            assert_eq!(report.compressed, 0, "{what}");
        } else {
            assert!(report.compressed > 0, "{what}: {report:?}");
        }
        if c.fmt == "qcow2" {
            check_qcow2_against_qemu(&what, &out, &report, c.args.contains(&"-c"));
        }
        for f in &files {
            std::fs::remove_file(f).unwrap();
        }
    }
}

/// `qemu-img check` counts allocated and compressed clusters: every allocated cluster that is
/// not compressed holds plain data (or preallocated zeros) in our report.
fn check_qcow2_against_qemu(what: &str, img: &Path, o: &WriteReport, compressed: bool) {
    if !util::require("qemu-img") {
        return;
    }
    let out = std::process::Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{what}: qemu-img check");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let info = util::qemu_info(img);
    let cs = info["cluster-size"].as_u64().unwrap();
    let allocated = u(&v, "allocated-clusters");
    let comp = v["compressed-clusters"].as_u64().unwrap_or(0);
    assert_eq!(
        (allocated - comp) * cs,
        o.data + o.zeros,
        "{what}: plain clusters per qemu-img check: {v} ours {o:?}"
    );
    assert_eq!(compressed, comp > 0, "{what}: {v}");
    assert_eq!(
        u(&v, "image-end-offset"),
        o.file_length.next_multiple_of(cs),
        "{what}: {v}"
    );
}

/// The case, in the human form: `qcow2 -c` reports the compressed and the uncompressed
/// data and the metadata, and the file length printed is the file's.
#[test]
fn compressed_qcow2_stats_in_text() {
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, SIZE, 5);
    let out = dir.path().join("out.qcow2");
    let r = diskconv()
        .args(["convert", "--stats", "-c", "-O", "qcow2"])
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    let field = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no '{name}' line in {text}"));
        line[line.find(name).unwrap() + name.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number in '{line}'"))
    };
    let len = std::fs::metadata(&out).unwrap().len();
    assert_eq!(field("file length"), len, "{text}");
    let parts = field("compressed data")
        + field("uncompressed data")
        + field("zeros written")
        + field("metadata")
        + field("unwritten (holes)");
    assert_eq!(parts, len, "{text}");
    assert!(field("compressed data") > 0, "{text}");
    // make_raw's random blocks do not compress: they are stored as they are.
    assert!(field("uncompressed data") > 0, "{text}");
    assert!(field("metadata") > 0, "{text}");
}

/// The same through the library: `ConvertStats::output` of `convert_file`.
#[test]
fn library_reports_what_was_written() {
    let dir = tmpdir();
    let src_path = dir.path().join("src.raw");
    make_raw(&src_path, SIZE, 9);
    let src = diskconv::open(&src_path, &OpenOptions::new()).unwrap();
    for (fmt, opts, compress) in [
        (Format::Raw, "", false),
        (Format::Qcow2, "", true),
        (Format::Vmdk, "subformat=monolithicFlat", false),
        (Format::Vhdx, "", false),
        (Format::Ova, "", false),
    ] {
        let out = dir.path().join(format!("lib.{}", fmt.name()));
        let o = OutputOptions::new(fmt)
            .with_options(opts)
            .unwrap()
            .compressed(compress);
        let stats =
            diskconv::convert_file(src.as_ref(), &out, &o, &ConvertOptions::default(), None)
                .unwrap();
        let mut files = vec![out.clone()];
        if fmt == Format::Vmdk {
            files.push(dir.path().join("lib-flat.vmdk"));
        }
        check_report(
            &format!("library {fmt} {opts}"),
            &stats.output,
            &files,
            false,
        );
        assert!(stats.output.data + stats.output.compressed > 0);
    }
}
