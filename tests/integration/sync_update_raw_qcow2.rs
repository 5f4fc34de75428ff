//! In-place updaters for raw and qcow2 targets (issue 6). Oracles: `qemu-img compare` against
//! a raw model that received the same writes, `qemu-img check` (no corruption, no leaks after
//! a flush), `qemu-img map` (holes), `qemu-io` reads, `qemu-img info` (bitmaps).

use std::os::unix::fs::FileExt;
use std::path::Path;

use diskconv::ImageUpdater;
use diskconv::sync::target::open_updater;

use crate::util::*;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Applies `ops` random writes and zeroings (unaligned, some spanning many clusters) to the
/// updater and to the raw model file alike.
fn random_ops(up: &mut dyn ImageUpdater, model: &Path, seed: u64, ops: usize, max_len: u64) {
    let size = up.virtual_size();
    let m = std::fs::OpenOptions::new().write(true).open(model).unwrap();
    let mut rng = Rng(seed | 1);
    for i in 0..ops {
        let len = 1 + rng.below(max_len.min(size));
        let off = rng.below(size - len + 1);
        if rng.below(4) == 0 {
            up.write_zeroes(off, len)
                .unwrap_or_else(|e| panic!("op {i}: zeroes {len}@{off:#x}: {}", e.chain()));
            m.write_all_at(&vec![0u8; len as usize], off).unwrap();
        } else {
            let fill = rng.next();
            let buf: Vec<u8> = (0..len)
                .map(|j| (fill.wrapping_add(j.wrapping_mul(0x9E37)) >> 8) as u8 | 1)
                .collect();
            up.write_at(&buf, off)
                .unwrap_or_else(|e| panic!("op {i}: write {len}@{off:#x}: {}", e.chain()));
            m.write_all_at(&buf, off).unwrap();
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn raw_random_updates_match_the_model() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let target = dir.path().join("t.raw");
    let model = dir.path().join("model.raw");
    make_raw(&target, 4 << 20, 11);
    std::fs::copy(&target, &model).unwrap();
    let mut up = open_updater(&target, None).unwrap();
    assert_eq!(up.virtual_size(), 4 << 20);
    random_ops(up.as_mut(), &model, 5, 300, 200_000);
    up.flush().unwrap();
    // Out of range: refused, nothing written.
    assert!(up.write_at(&[1, 2], (4 << 20) - 1).is_err());
    drop(up);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 4 << 20);
    assert!(qemu_compare(&target, "raw", &model, "raw"));
}

#[test]
fn raw_write_zeroes_punches_holes() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let target = dir.path().join("t.raw");
    std::fs::write(&target, vec![0xA5u8; 4 << 20]).unwrap();
    let mut up = open_updater(&target, Some(diskconv::Format::Raw)).unwrap();
    up.write_zeroes(1 << 20, 1 << 20).unwrap();
    up.flush().unwrap();
    drop(up);
    let map: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "raw",
        p(&target),
    ]))
    .unwrap();
    let hole = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["start"] == 1 << 20)
        .unwrap_or_else(|| panic!("no extent at 1 MiB: {map}"));
    let punched = hole["data"] == false && hole["zero"] == true && hole["length"] == 1 << 20;
    // A file system without hole punching gets zeros written instead; tmpfs and ext4 punch.
    let fs_punches = {
        let probe = dir.path().join("probe");
        std::fs::write(&probe, vec![1u8; 1 << 20]).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&probe)
            .unwrap();
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            1 << 20,
        )
        .is_ok()
    };
    if fs_punches {
        assert!(punched, "expected a hole at 1 MiB: {map}");
    }
    let out = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "read -P 0 1M 1M",
        "-c",
        "read -P 0xa5 0 1M",
        "-c",
        "read -P 0xa5 2M 2M",
        p(&target),
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
}
