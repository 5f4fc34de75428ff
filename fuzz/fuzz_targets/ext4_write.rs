//! Fuzzes the ext4 writer: a small ext4 file system made once by `mke2fs -d` (e2fsprogs must be
//! installed; nothing is committed as a blob; metadata_csum off so that patched bytes reach the
//! parsers behind the checksums) is patched with the input, read as 4-byte records (24-bit
//! offset, new byte value), then opened for writing and changed (replace, create, symlink,
//! mkdir, unlink). Any panic or endless loop is a bug; errors are fine.
#![no_main]

use std::process::Command;
use std::sync::OnceLock;

use diskconv::guest::extfs::Ext4Writer;
use diskconv::storage::MemStorage;
use libfuzzer_sys::fuzz_target;

fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ext4-fuzz-{}", std::process::id()));
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("etc/d")).expect("temp dir");
        std::fs::write(tree.join("etc/fstab"), b"/dev/sda1 / ext4 defaults 0 1\n").expect("file");
        std::fs::write(tree.join("etc/big"), vec![7u8; 40_000]).expect("file");
        for k in 0..40 {
            std::fs::write(tree.join(format!("etc/d/f{k}")), b"x").expect("file");
        }
        let img = dir.join("t.img");
        let ok = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-O", "^metadata_csum", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("1024k")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mke2fs (e2fsprogs) is needed to build the template file system");
        let bytes = std::fs::read(&img).expect("template bytes");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = template().to_vec();
    for rec in data.chunks_exact(4).take(256) {
        let off = (u32::from_le_bytes([rec[0], rec[1], rec[2], 0]) as usize) % bytes.len();
        bytes[off] = rec[3];
    }
    if let Ok(mut w) = Ext4Writer::open(MemStorage::from_vec(bytes)) {
        let _ = w.replace_file("/etc/fstab", &[0x41; 3000]);
        let _ = w.replace_file("/etc/big", b"short");
        let _ = w.create_file("/etc/d/new", &[1; 5000], 0o644, 0, 0);
        let _ = w.create_symlink("/etc/link", "fstab");
        let _ = w.mkdir("/etc/e", 0o755);
        let _ = w.create_file("/etc/e/x", b"y", 0o644, 0, 0);
        let _ = w.unlink("/etc/d/f3");
        let _ = w.unlink("/etc/link");
    }
});
