//! Fuzzes the XFS reader: a small v5 volume made once by `mkfs.xfs -p` (xfsprogs must be
//! installed; nothing is committed as a blob: short-form and block directories, a file, short
//! and long symbolic links) is patched with the input, read as 4-byte records (24-bit offset,
//! new byte value), then opened and walked (every directory two levels deep, every file read,
//! links read, the log state). Any panic or endless loop is a bug; errors are fine.
#![no_main]

use std::process::Command;
use std::sync::OnceLock;

use diskconv::guest::fs::{FileKind, GuestFs};
use diskconv::guest::xfs::XfsVolume;
use diskconv::storage::MemStorage;
use libfuzzer_sys::fuzz_target;

fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("xfs-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let data = dir.join("data");
        std::fs::write(&data, vec![b'x'; 5000]).expect("source file");
        let mut proto = String::from("fuzz\n0 0\nd--755 0 0\netc d--755 0 0\n");
        proto.push_str(&format!("os-release ---644 0 0 {}\n$\nmany d--755 0 0\n", data.display()));
        for i in 0..60 {
            proto.push_str(&format!("n{i} ---644 0 0 {}\n", data.display()));
        }
        proto.push_str("$\nshort l--777 0 0 etc/os-release\n$\n");
        let p = dir.join("proto");
        std::fs::write(&p, proto).expect("protofile");
        let vol = dir.join("t.xfs");
        let f = std::fs::File::create(&vol).expect("template file");
        f.set_len(16 << 20).expect("template size");
        drop(f);
        let ok = Command::new("mkfs.xfs")
            .env("TEST_DIR", "1")
            .env("TEST_DEV", "1")
            .env("QA_CHECK_FS", "1")
            .args(["-q", "-f", "-b", "size=1024", "-p"])
            .arg(&p)
            .arg(&vol)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mkfs.xfs (xfsprogs) is needed to build the template volume");
        let bytes = std::fs::read(&vol).expect("template read");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fn walk(vol: &XfsVolume, path: &str, depth: u32) {
    let Ok(Some(names)) = vol.list_dir(path, 200) else {
        return;
    };
    for n in names {
        let p = format!("{}/{n}", path.trim_end_matches('/'));
        let _ = vol.read_link(&p);
        match vol.stat(&p) {
            Ok(Some(FileKind::File(_))) => {
                let _ = vol.read_head(&p, 1 << 20);
            }
            Ok(Some(FileKind::Dir)) if depth > 0 => walk(vol, &p, depth - 1),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut img = template().to_vec();
    for r in data.chunks_exact(4) {
        let at = (usize::from(r[0]) << 16) | (usize::from(r[1]) << 8) | usize::from(r[2]);
        if let Some(b) = img.get_mut(at) {
            *b = r[3];
        }
    }
    let Ok(vol) = XfsVolume::open(MemStorage::from_vec(img)) else {
        return;
    };
    let _ = vol.log_is_clean();
    walk(&vol, "/", 2);
});
