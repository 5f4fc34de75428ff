//! Fuzzes the NTFS volume reader and writer: a small volume made once by `mkntfs` (ntfs-3g must
//! be installed; nothing is committed as a blob) is patched with the input, read as 4-byte
//! records (24-bit offset, new byte value), then opened read-only and walked (folders two levels
//! deep, every file read), then opened for writing and edited (a folder, a file, a resize). Any
//! panic or endless loop is a bug; errors are fine.
#![no_main]

use std::process::Command;
use std::sync::OnceLock;

use diskconv::storage::MemStorage;
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};
use libfuzzer_sys::fuzz_target;

fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ntfs-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let vol = dir.join("t.ntfs");
        let f = std::fs::File::create(&vol).expect("template file");
        f.set_len(2 << 20).expect("template size");
        drop(f);
        let ok = Command::new("mkntfs")
            .args(["-F", "-Q", "-q", "-s", "512", "-c", "1024", "-L", "fuzz"])
            .arg(&vol)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mkntfs (ntfs-3g) is needed to build the template volume");
        let bytes = std::fs::read(&vol).expect("template bytes");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fn walk<D: diskconv::guest::disk::DiskIo>(v: &NtfsVolume<D>, path: &str, depth: u32) {
    let Ok(entries) = v.read_dir(path) else {
        return;
    };
    for e in entries.iter().take(64) {
        let p = if path.is_empty() {
            e.name.clone()
        } else {
            format!("{path}\\{}", e.name)
        };
        if e.is_dir {
            if depth < 2 {
                walk(v, &p, depth + 1);
            }
        } else {
            let _ = v.read_file(&p, 1 << 20);
            let _ = v.stat(&p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = template().to_vec();
    for rec in data.chunks_exact(4).take(256) {
        let off = (u32::from_le_bytes([rec[0], rec[1], rec[2], 0]) as usize) % bytes.len();
        bytes[off] = rec[3];
    }
    if let Ok(v) = NtfsVolume::open(MemStorage::from_vec(bytes.clone()), &NtfsOpenOptions { read_only: true }) {
        walk(&v, "", 0);
    }
    if let Ok(mut v) = NtfsVolume::open(MemStorage::from_vec(bytes), &NtfsOpenOptions::default()) {
        let _ = v.create_dir("Fz");
        let _ = v.write_file("Fz\\a.bin", &[0xa5; 3000]);
        let _ = v.write_file("b.txt", b"small");
        let _ = v.set_len("Fz\\a.bin", 70_000);
        let _ = v.write_at("b.txt", 100, &[1; 5000]);
        let _ = v.flush();
        walk(&v, "", 0);
    }
});
