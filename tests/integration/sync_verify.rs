//! `diskconv verify`: equal images of different formats (made by qemu-img), one changed byte
//! (the reported range is exactly its block), the manifest checked with `dd | sha256sum`, and
//! a size mismatch (exit 2 naming both sizes).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::util::{diskconv, make_raw, qemu_img, qemu_io, require, run, tmpdir};

fn verify(args: &[&str], a: &Path, b: &Path) -> Output {
    diskconv()
        .arg("verify")
        .args(args)
        .arg(a)
        .arg(b)
        .output()
        .expect("running diskconv verify")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const SIZE: u64 = (4 << 20) + 4608; // a short last block

#[test]
fn equal_images_of_different_formats() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("a.raw");
    let q = d.path().join("a.qcow2");
    let v = d.path().join("a.vmdk");
    make_raw(&raw, SIZE, 11);
    let (rs, qs, vs) = (
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
        v.to_str().unwrap(),
    );
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", rs, qs]);
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", rs, vs]);
    let out = verify(&[], &raw, &q);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));
    let out = verify(&["--json", "-f", "qcow2", "-F", "vmdk"], &q, &v);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j = json(&out);
    assert_eq!(j["equal"], true);
    assert_eq!(j["size"], SIZE);
    assert_eq!(j["blocks"], SIZE.div_ceil(65536));
    // make_raw leaves every fourth 64 KiB block a hole: those are zero in both and not read.
    assert!(j["bytes_compared"].as_u64().unwrap() < SIZE, "{j}");
}

#[test]
fn one_changed_byte_is_reported_as_exactly_its_block() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("a.raw");
    let q = d.path().join("a.qcow2");
    make_raw(&raw, SIZE, 5);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let at: u64 = 1_234_567;
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    let mut b = [0u8; 1];
    std::fs::File::open(&raw)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);
    for bs in [65536u64, 4096] {
        let out = verify(&["--json", "--block-size", &bs.to_string()], &raw, &q);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let j = json(&out);
        assert_eq!(j["equal"], false);
        assert_eq!(j["mismatched_blocks"], 1);
        let start = at / bs * bs;
        assert_eq!(
            j["mismatches"],
            serde_json::json!([{"offset": start, "length": bs}]),
            "block size {bs}"
        );
    }
    // The human output lists the range too.
    let out = verify(&[], &raw, &q);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0x120000..0x130000"), "{text}");
}

#[test]
fn manifest_matches_sha256sum_of_each_block() {
    if !require("qemu-img") || !require("sha256sum") || !require("dd") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("src.raw");
    let q = d.path().join("dst.qcow2");
    let m = d.path().join("manifest.json");
    make_raw(&raw, SIZE, 21);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let bs = 262144u64;
    let out = verify(
        &["--block-size", "256k", "--manifest", m.to_str().unwrap()],
        &raw,
        &q,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(j["algorithm"], "sha256");
    assert_eq!(j["size"], SIZE);
    assert_eq!(j["block_size"], bs);
    assert_eq!(j["source"], raw.to_str().unwrap());
    let blocks = j["blocks"].as_array().unwrap();
    assert_eq!(blocks.len() as u64, SIZE.div_ceil(bs));
    for (i, h) in blocks.iter().enumerate() {
        let dd = format!(
            "dd if='{}' bs={bs} skip={i} count=1 status=none | sha256sum",
            raw.display()
        );
        let o = run(Command::new("sh").args(["-c", &dd]));
        let want = String::from_utf8_lossy(&o.stdout);
        let want = want.split_whitespace().next().unwrap();
        assert_eq!(h.as_str().unwrap(), want, "block {i}");
    }
    assert!(!d.path().join("manifest.json.part").exists());
}

#[test]
fn size_mismatch_is_an_error_naming_both_sizes() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let a = d.path().join("a.raw");
    let b = d.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "raw", a.to_str().unwrap(), "4M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", b.to_str().unwrap(), "6M"]);
    let m = d.path().join("m.json");
    let out = verify(&["--manifest", m.to_str().unwrap()], &a, &b);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4194304") && err.contains("6291456"), "{err}");
    assert!(!m.exists(), "a manifest was written for a failed verify");
    // A bad block size is a usage error (64), not a failure.
    let out = verify(&["--block-size", "1000"], &a, &a);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("block size 1000"));
}

#[test]
fn a_target_padded_with_zeros_by_its_format_verifies_equal() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    // An odd-sized source: a qcow2 sync target rounds it up to a whole sector.
    let src = d.path().join("odd.raw");
    std::fs::write(
        &src,
        (0..1_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let dst = d.path().join("odd.qcow2");
    let out = crate::util::diskconv()
        .args(["sync", src.to_str().unwrap(), dst.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(crate::util::qemu_info(&dst)["virtual-size"], 1_000_448);
    let out = verify(&[], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Data in the padding is a difference in size, named.
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 7 1000000 448",
        dst.to_str().unwrap(),
    ]);
    let out = verify(&[], &src, &dst);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("last 448 bytes are not all zeros"), "{err}");
}
