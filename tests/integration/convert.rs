//! `diskconv convert` end to end with qemu-img as the oracle: qemu-made inputs converted by
//! diskconv, diskconv-made outputs checked and compared by qemu-img.

use std::path::Path;

use crate::util::{
    self, assert_qemu_check, diskconv, make_raw, qemu_compare, qemu_img, qemu_info, qemu_io, tmpdir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn convert(args: &[&str]) {
    let out = diskconv().arg("convert").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "diskconv convert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn raw_to_qcow2_option_matrix() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, (5 << 20) + 4097, 42);
    let cases: &[(&str, bool, &str, &str)] = &[
        // (options, compress, expected compat, expected compression type)
        ("", false, "1.1", "zlib"),
        ("compat=0.10", false, "0.10", "zlib"),
        ("cluster_size=512", false, "1.1", "zlib"),
        ("cluster_size=4k,compat=0.10", false, "0.10", "zlib"),
        ("cluster_size=2M", false, "1.1", "zlib"),
        ("", true, "1.1", "zlib"),
        ("compression_type=zstd", true, "1.1", "zstd"),
        ("compat=0.10,cluster_size=4k", true, "0.10", "zlib"),
        ("preallocation=metadata", false, "1.1", "zlib"),
        ("preallocation=falloc,compat=0.10", false, "0.10", "zlib"),
        ("preallocation=full", false, "1.1", "zlib"),
    ];
    for (i, (opts, compress, compat, ctype)) in cases.iter().enumerate() {
        let dst = dir.path().join(format!("out{i}.qcow2"));
        let mut args = vec!["-O", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        if *compress {
            args.push("-c");
        }
        args.extend([s(&src), s(&dst)]);
        convert(&args);
        assert_qemu_check(&dst);
        assert!(
            qemu_compare(&src, "raw", &dst, "qcow2"),
            "{opts} -c={compress}: content differs"
        );
        let info = qemu_info(&dst);
        let spec = &info["format-specific"]["data"];
        assert_eq!(spec["compat"], *compat, "{opts}: {info}");
        if *compat == "1.1" {
            assert_eq!(spec["compression-type"], *ctype, "{opts}: {info}");
        }
        // diskconv's own check agrees, and its reader reads it back.
        let out = diskconv().args(["check", s(&dst)]).output().unwrap();
        assert!(
            out.status.success(),
            "diskconv check {opts}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let back = dir.path().join(format!("back{i}.raw"));
        convert(&["-O", "raw", s(&dst), s(&back)]);
        // qcow2 sizes are whole 512-byte sectors (as qemu-img makes them): the round trip
        // gives the source padded with zeros to the next sector.
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
        assert_eq!(
            b.len() as u64,
            (a.len() as u64).div_ceil(512) * 512,
            "{opts}"
        );
        assert!(b[..a.len()] == a[..], "{opts}: round trip differs");
        assert!(b[a.len()..].iter().all(|&x| x == 0), "{opts}: padding");
    }
}

#[test]
fn compressed_output_is_smaller_and_zero_image_allocates_nothing() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("src.raw");
    make_raw(&src, 8 << 20, 5);
    let plain = dir.path().join("plain.qcow2");
    let packed = dir.path().join("packed.qcow2");
    convert(&["-O", "qcow2", s(&src), s(&plain)]);
    convert(&["-O", "qcow2", "-c", s(&src), s(&packed)]);
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        len(&packed) < len(&plain),
        "{} >= {}",
        len(&packed),
        len(&plain)
    );

    let zero = dir.path().join("zero.raw");
    std::fs::File::create(&zero)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let out = dir.path().join("zero.qcow2");
    convert(&["-O", "qcow2", s(&zero), s(&out)]);
    assert_qemu_check(&out);
    // Header, L1, refcount table and block: a handful of clusters, no data.
    assert!(len(&out) <= 6 * 65536, "{} bytes", len(&out));
    let map = qemu_img(&["map", "--output=json", s(&out)]);
    assert!(!map.contains("\"data\": true"), "{map}");
}

#[test]
fn qemu_made_qcow2_inputs_convert_to_equal_raw() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let raw = dir.path().join("base.raw");
    make_raw(&raw, 6 << 20, 9);
    let base = dir.path().join("base.qcow2");
    qemu_img(&["convert", "-O", "qcow2", "-c", s(&raw), s(&base)]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    qemu_io(&[
        "-c",
        "write -P 0xab 1M 64k",
        "-c",
        "write -z 2M 128k",
        s(&top),
    ]);
    // Flatten the chain into raw and into qcow2; both equal what qemu reads.
    let out_raw = dir.path().join("flat.raw");
    convert(&[s(&top), s(&out_raw)]);
    assert!(qemu_compare(&top, "qcow2", &out_raw, "raw"));
    let out_q = dir.path().join("flat.qcow2");
    convert(&["-O", "qcow2", s(&top), s(&out_q)]);
    assert_qemu_check(&out_q);
    assert!(qemu_compare(&top, "qcow2", &out_q, "qcow2"));
    assert!(qemu_info(&out_q).get("backing-filename").is_none());
    // The compare command agrees with qemu-img.
    let st = diskconv()
        .args(["compare", s(&top), s(&out_q)])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let st = diskconv()
        .args(["compare", s(&base), s(&out_q)])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));
}

#[test]
fn corpus_qcow2_converts_to_reference_hashes() {
    let cases = [
        (
            "images/dissect_qcow2/basic-zstd.qcow2",
            "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f",
        ),
        (
            "images/dfvfs/windows_volume.qcow2",
            "44abe9deca9658f331a2bdba2deb53192d04f35d157a1fb3ba0597b03f0524f2",
        ),
    ];
    let dir = tmpdir();
    for (rel, want) in cases {
        let Some(src) = util::corpus(rel) else {
            return;
        };
        let before = util::sha256_file(&src);
        let dst = dir.path().join("out.raw");
        convert(&[s(&src), s(&dst)]);
        assert_eq!(util::sha256_file(&dst), want, "{rel}");
        // And through qcow2 again, compressed with zstd.
        let q = dir.path().join("out.qcow2");
        convert(&[
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            s(&src),
            s(&q),
        ]);
        let back = dir.path().join("back.raw");
        convert(&[s(&q), s(&back)]);
        assert_eq!(util::sha256_file(&back), want, "{rel} via zstd qcow2");
        assert_eq!(util::sha256_file(&src), before, "{rel} was modified");
        for p in [&dst, &q, &back] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
