//! The qcow2 writer, checked by two independent readers: qemu-img (check, compare, info) and
//! the `imago` crate.

use std::path::Path;
use std::time::Instant;

use diskconv::{ConvertOptions, Format, OpenOptions, OutputOptions, convert_file};
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};

use crate::util;

/// Converts the raw image `src` to qcow2 at `dst` with qemu-img style options.
fn convert(src: &Path, dst: &Path, options: &str, compressed: bool) {
    let img = diskconv::open(src, &OpenOptions::default().format(Format::Raw)).unwrap();
    let out = OutputOptions::new(Format::Qcow2)
        .with_options(options)
        .unwrap()
        .compressed(compressed);
    convert_file(&*img, dst, &out, &ConvertOptions::default(), None)
        .unwrap_or_else(|e| panic!("{options} -c={compressed}: {}", e.chain()));
}

/// Reads the whole virtual disk of `img` with imago and compares it with the raw file.
fn assert_imago_reads(img: &Path, raw: &Path) {
    let expected = std::fs::read(raw).unwrap();
    let q = Qcow2::<ImagoFile>::builder_path(img)
        .open(PermissiveImplicitOpenGate::default())
        .unwrap_or_else(|e| panic!("imago cannot open {}: {e}", img.display()));
    let q = FormatAccess::new(q);
    // The writer rounds the size up to whole sectors, as qemu-img does.
    let padded = (expected.len() as u64).div_ceil(512) * 512;
    assert_eq!(q.size(), padded, "imago: virtual size");
    if padded > expected.len() as u64 {
        let mut tail = vec![0xFFu8; (padded - expected.len() as u64) as usize];
        q.read(&mut tail[..], expected.len() as u64).unwrap();
        assert!(tail.iter().all(|&b| b == 0), "imago: padding is not zero");
    }
    let mut buf = vec![0u8; 1 << 20];
    for (i, want) in expected.chunks(buf.len()).enumerate() {
        let got = &mut buf[..want.len()];
        q.read(&mut *got, (i << 20) as u64)
            .unwrap_or_else(|e| panic!("imago read at {:#x}: {e}", i << 20));
        if got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "imago reads different data in {} at {:#x}",
                img.display(),
                (i << 20) + at
            );
        }
    }
}

fn check_json(img: &Path) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Case {
    version: u32,
    cluster_size: u64,
    /// None, "zlib" or "zstd".
    compression: Option<&'static str>,
    prealloc: &'static str,
}

impl Case {
    fn options(&self) -> String {
        let mut s = format!(
            "compat={},cluster_size={},preallocation={}",
            if self.version == 2 { "0.10" } else { "1.1" },
            self.cluster_size,
            self.prealloc
        );
        if let Some(c) = self.compression {
            s.push_str(&format!(",compression_type={c}"));
        }
        s
    }
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for version in [2u32, 3] {
        for cluster_size in [512u64, 4096, 65536, 2 << 20] {
            let compressions: &[Option<&str>] = if version == 2 {
                &[None, Some("zlib")]
            } else {
                &[None, Some("zlib"), Some("zstd")]
            };
            for &compression in compressions {
                let preallocs: &[&str] = if compression.is_some() {
                    &["off"]
                } else {
                    &["off", "metadata", "falloc", "full"]
                };
                for &prealloc in preallocs {
                    cases.push(Case {
                        version,
                        cluster_size,
                        compression,
                        prealloc,
                    });
                }
            }
        }
    }
    cases
}

#[test]
fn qcow2_write_matrix_is_read_back_identically_by_qemu_and_imago() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let sizes = [3u64 << 20, (5 << 20) + 4097];
    let cases = matrix();
    assert_eq!(cases.len(), 44);
    for (si, &size) in sizes.iter().enumerate() {
        let src = dir.path().join(format!("src{si}.raw"));
        util::make_raw(&src, size, 7 + si as u64);
        for case in &cases {
            let opts = case.options();
            let dst = dir.path().join("out.qcow2");
            convert(&src, &dst, &opts, case.compression.is_some());
            let what = format!("{opts} (size {size})");

            util::assert_qemu_check(&dst);
            assert!(
                util::qemu_compare(&src, "raw", &dst, "qcow2"),
                "{what}: qemu-img compare differs"
            );

            let info = util::qemu_info(&dst);
            assert_eq!(info["format"], "qcow2", "{what}");
            assert_eq!(info["virtual-size"], size.div_ceil(512) * 512, "{what}");
            assert_eq!(info["cluster-size"], case.cluster_size, "{what}");
            let data = &info["format-specific"]["data"];
            let compat = if case.version == 2 { "0.10" } else { "1.1" };
            assert_eq!(data["compat"], compat, "{what}");
            let ctype = case.compression.unwrap_or("zlib");
            if case.version == 3 || !data["compression-type"].is_null() {
                assert_eq!(data["compression-type"], ctype, "{what}");
            }

            let check = check_json(&dst);
            let total = size.div_ceil(case.cluster_size);
            let allocated = check["allocated-clusters"].as_u64().unwrap_or(0);
            let compressed = check["compressed-clusters"].as_u64().unwrap_or(0);
            if case.compression.is_some() {
                assert!(compressed > 0, "{what}: no compressed clusters: {check}");
            } else {
                assert_eq!(compressed, 0, "{what}");
            }
            if case.prealloc == "off" {
                // make_raw leaves every fourth 64 KiB block a hole: clusters up to 64 KiB
                // there stay unallocated.
                if case.cluster_size <= 65536 {
                    assert!(
                        allocated < total,
                        "{what}: {allocated} of {total} allocated"
                    );
                }
            } else {
                assert_eq!(
                    allocated, total,
                    "{what}: preallocation must map every cluster"
                );
                let len = std::fs::metadata(&dst).unwrap().len();
                assert!(len >= size, "{what}: file of {len} bytes");
            }

            // imago 0.2 knows no zstd (it refuses incompatible feature bit 3); qemu-img
            // compare above is the oracle for those.
            if case.compression != Some("zstd") {
                assert_imago_reads(&dst, &src);
            }
            std::fs::remove_file(&dst).unwrap();
        }
    }
}

#[test]
fn qcow2_write_all_zero_image_allocates_no_data() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    // One source with holes only, one with written zero bytes.
    let sparse = dir.path().join("sparse.raw");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let written = dir.path().join("written.raw");
    std::fs::write(&written, vec![0u8; 8 << 20]).unwrap();
    for src in [&sparse, &written] {
        for compressed in [false, true] {
            let dst = dir.path().join("out.qcow2");
            convert(src, &dst, "", compressed);
            util::assert_qemu_check(&dst);
            assert!(util::qemu_compare(src, "raw", &dst, "qcow2"));
            let check = check_json(&dst);
            // qemu-img leaves the field out when it is 0.
            assert_eq!(
                check["allocated-clusters"].as_u64().unwrap_or(0),
                0,
                "{check}"
            );
            assert!(check["image-end-offset"].as_u64().is_some(), "{check}");
            // Header, L1 table, refcount table, one refcount block.
            let len = std::fs::metadata(&dst).unwrap().len();
            assert!(len <= 4 * 65536, "{} bytes", len);
            assert_imago_reads(&dst, src);
            std::fs::remove_file(&dst).unwrap();
        }
    }
}

#[test]
fn qcow2_write_large_sparse_image_is_small() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("big.raw");
    let size = 2u64 << 30;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(size).unwrap();
        // A few islands of data, one straddling an L2 boundary (512 MiB with 64 KiB clusters).
        for (i, off) in [0u64, 512 << 20, (512 << 20) - 3000, size - 5000]
            .into_iter()
            .enumerate()
        {
            f.write_all_at(&vec![0x5A ^ i as u8; 4096], off).unwrap();
        }
    }
    let dst = dir.path().join("big.qcow2");
    let start = Instant::now();
    convert(&src, &dst, "", false);
    eprintln!("2 GiB sparse image converted in {:?}", start.elapsed());
    util::assert_qemu_check(&dst);
    assert!(util::qemu_compare(&src, "raw", &dst, "qcow2"));
    let len = std::fs::metadata(&dst).unwrap().len();
    // 4 data islands touching at most 6 clusters, 3 L2 tables, header, L1, refcount table
    // and block.
    assert!(len <= 16 * 65536, "{len} bytes");
    let check = check_json(&dst);
    assert!(
        check["allocated-clusters"].as_u64().unwrap() <= 6,
        "{check}"
    );
}
